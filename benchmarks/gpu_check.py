"""Every Triton form of every example, compiled for a real GPU, against the fp64 interpreter on the CPU.

    python benchmarks/gpu_check.py [--workers 8] [--only gla mamba ...] [--json out.json]

The CI tests run the same kernels under ``TRITON_INTERPRET=1``; this script is the GPU half: the
kernels compiled by Triton for the device, at medium dims (heads 2, dk 32, dv 48: a value dim that is
not a power of two), T = 100 with chunk boundaries inside, and for each form:

* ``fwd``: outputs and final state from an initial state, fp32 inputs (tf32 dots), against fp64;
* ``varlen``: three packed sequences (cu_seqlens 0, 37, 38, 100) with initial states;
* ``grad``: gradients of every input and of the initial state (T = 65);
* ``bf16``: bf16 inputs (the fp64 reference gets the same rounded values), the same forward at bf16
  tolerance;
* ``tiles``: where the form's kernels split a state axis across programs (the module's ``TILED_AXIS`` /
  ``SCAN_TILED_AXIS``), ``grad`` again with tiles of 16 (at these dims the GPU policy's tiles of 64 would leave
  one): the tiles' atomic adds of the gradients of what lacks the axis ("-": the form is not split).

Each cell prints the relative RMS error of the worst tensor, or the first line of the failure. The
examples are shared among worker processes (Triton compiles on the CPU, so 16 cores compile in
parallel). Without a CUDA GPU it says so and exits 0. It sets ``SEQDSL_TRUST_GPU_KERNELS=1``, so ops
whose kernels carry a GPU caveat (an in-kernel inverse) are checked through those kernels, not their
torch fallback.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
import multiprocessing

ROOT = pathlib.Path(__file__).resolve().parent.parent
MEDIUM = {"d_model": 32, "heads": 2, "dk": 32, "dv": 48, "n": 16, "hidden": 24, "headdim": 16, "expand": 2,
          "dt_rank": 4, "gate_rank": 4, "m": 8, "mix_rank": 8, "decay_rank": 8, "iclr_rank": 8}
# Check the compiled kernels themselves, also those the op would replace by their torch form on a GPU
# (``gpu_caveat``: the cells with an in-kernel inverse); workers inherit the environment.
os.environ.setdefault("SEQDSL_TRUST_GPU_KERNELS", "1")
DEVICE = os.environ.get("SEQDSL_GPU_CHECK_DEVICE", "cuda")   # "cpu": try the script under the interpreter
TF32_FACTOR = 4.0      # fp32 dots run as tf32 on the device (Triton's default)
CHECKS = ("fwd", "varlen", "grad", "bf16", "tiles")


def _flat(x):
    return x if isinstance(x, tuple) else (x,)


def _worst(pairs, dtype, factor):
    """Largest relative RMS error over (ref, out) pairs; raises AssertionError past tolerance."""
    from seqdsl.testing import assert_close, rel_rms

    worst = 0.0
    for tag, ref, out in pairs:
        out = out.detach().cpu()
        assert_close(tag, ref, out, dtype, factor)
        if ref.numel():
            worst = max(worst, rel_rms(ref, out.to(ref.dtype)))
    return worst


def _medium(path):
    import seqdsl
    from seqdsl.testing import at_dims

    return at_dims(seqdsl.load(path), MEDIUM, 64)


def check_example(path: str) -> list[dict]:
    """Rows {name, mode, fwd, varlen, grad, bf16, seconds} for every Triton form of one example."""
    os.environ["SEQDSL_CACHE_DIR"] = tempfile.mkdtemp(prefix="seqdsl_gpu_check_")
    import torch

    import seqdsl
    from seqdsl.testing import FORM_FACTOR, random_state, sample_inputs

    torch.set_num_threads(1)               # many workers share the cores; the references are small
    name = pathlib.Path(path).stem
    try:
        m = _medium(path)
        op, ref = seqdsl.compile(m, backend="triton"), seqdsl.reference(m)
    except Exception as e:  # noqa: BLE001 - reported in the table
        return [{"name": name, "mode": "-", "fwd": f"FAIL compile: {type(e).__name__}: {str(e)[:120]}"}]
    rows = []

    def cuda(xs, dtype=torch.float32):
        return {k: (v.to(torch.complex64) if v.is_complex() else v.to(dtype)).to(DEVICE) for k, v in xs.items()}

    def states(h, dtype=torch.float32):
        hs = tuple((s.to(torch.complex64) if s.is_complex() else s.to(dtype)).to(DEVICE) for s in _flat(h))
        return hs if len(hs) > 1 else hs[0]

    for mode in op.modes:
        factor = FORM_FACTOR[mode] * TF32_FACTOR
        row = {"name": name, "mode": mode}
        start = time.time()

        def fwd(B=2, T=100, dtype=torch.float32, cu=None, seed=1):
            xs = sample_inputs(ref, B if cu is None else 1, T, seed=seed)
            if dtype != torch.float32:      # the reference sees what the kernel sees: the rounded inputs
                xs = {k: (v if v.is_complex() else v.to(dtype).double()) for k, v in xs.items()}
            h0 = random_state(ref, B if cu is None else len(cu) - 1)
            kw = {} if cu is None else {"cu_seqlens": torch.tensor(cu)}
            o_ref, h_ref = ref(**xs, initial_state=h0, output_final_state=True, **kw)
            if cu is not None:
                kw = {"cu_seqlens": kw["cu_seqlens"].to(DEVICE)}
            o, h = op(**cuda(xs, dtype), initial_state=states(h0), output_final_state=True, mode=mode, **kw)
            pairs = [(f"o{i}", a, b) for i, (a, b) in enumerate(zip(_flat(o_ref), _flat(o)))]
            pairs += [(f"h{i}", a, b) for i, (a, b) in enumerate(zip(_flat(h_ref), _flat(h)))]
            tol_dtype = torch.float32 if dtype == torch.float32 else dtype
            return _worst(pairs, tol_dtype, factor if dtype == torch.float32 else FORM_FACTOR[mode])

        def grad():
            xs = sample_inputs(ref, 1, 65, seed=5)
            h0 = random_state(ref, 1, scale=0.3)

            def run(fn, device):
                leaves = {k: v.detach().clone() for k, v in xs.items()}
                if device == DEVICE:
                    leaves = {k: (v.to(torch.complex64) if v.is_complex() else v.float()).to(device)
                              for k, v in leaves.items()}
                leaves = {k: v.requires_grad_(True) for k, v in leaves.items()}
                hs = tuple(h.detach().clone() for h in _flat(h0))
                if device == DEVICE:
                    hs = tuple((h.to(torch.complex64) if h.is_complex() else h.float()).to(device) for h in hs)
                hs = tuple(h.requires_grad_(True) for h in hs)
                o, ht = fn(leaves, hs if len(hs) > 1 else hs[0])
                g = torch.Generator().manual_seed(0)
                loss = 0
                for t in _flat(o) + _flat(ht):
                    w = torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device, t.real.dtype)
                    loss = loss + (t.real * w).sum() + ((t.imag * w).sum() if t.is_complex() else 0)
                loss.backward()
                return {**{k: v.grad for k, v in leaves.items()}, **{f"h0[{i}]": h.grad for i, h in enumerate(hs)}}

            g_ref = run(lambda xs_, h: ref(**xs_, initial_state=h, output_final_state=True), "reference")
            g_op = run(lambda xs_, h: op(**xs_, initial_state=h, output_final_state=True, mode=mode), DEVICE)
            pairs = []
            for k, a in g_ref.items():
                if a is None:
                    continue
                assert g_op[k] is not None, f"no gradient for {k}"
                pairs.append((f"d{k}", a, g_op[k]))
            return _worst(pairs, torch.float32, factor * 10)

        def tiles():
            from seqdsl.runtime import triton_runtime

            axis = {"recurrent": "TILED_AXIS", "scan": "SCAN_TILED_AXIS"}.get(mode)
            if axis is None or getattr(op.module, axis, None) is None:
                return None
            with triton_runtime.override_launch(block=16, block_t=64, num_warps=4):
                return grad()

        tests = {"fwd": fwd, "varlen": lambda: fwd(T=100, cu=[0, 37, 38, 100]), "grad": grad,
                 "bf16": lambda: fwd(dtype=torch.bfloat16), "tiles": tiles}
        for key, test in tests.items():
            try:
                got = test()
                row[key] = "-" if got is None else f"{got:.1e}"
            except Exception as e:  # noqa: BLE001 - reported in the table
                msg = (str(e).splitlines() or [""])[0]
                row[key] = f"FAIL {type(e).__name__}: {msg[:110]}"
        row["seconds"] = round(time.time() - start, 1)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--only", nargs="*", help="example names (default: every examples/*.seq)")
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args(argv)
    if DEVICE == "cuda" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("gpu_check: TRITON_INTERPRET is set; unset it to compile for the GPU.")
        return 0
    import torch

    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; the CPU half of these checks is tests/test_triton_backend.py.")
        return 0
    sys.path.insert(0, str(ROOT))
    paths = sorted(str(p) for p in (ROOT / "examples").glob("*.seq") if not args.only or p.stem in args.only)
    rows, start = [], time.time()
    where = torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE
    print(f"# Triton forms compiled on {where} vs the fp64 interpreter (relative RMS error of the worst "
          f"tensor; rows in the order they finish)\n")
    print("| example | form | " + " | ".join(CHECKS) + " | s |")
    print("|---|---|" + "---|" * len(CHECKS) + "---|", flush=True)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
        futures = {pool.submit(check_example, p): p for p in paths}
        for fut in as_completed(futures):
            try:
                got = fut.result()
            except Exception as e:  # noqa: BLE001 - a crashed worker is a row too
                got = [{"name": pathlib.Path(futures[fut]).stem, "mode": "-", "fwd": f"FAIL worker: {e}"}]
            rows += got
            for r in got:
                print(f"| {r['name']} | {r['mode']} | " + " | ".join(str(r.get(c, "-")) for c in CHECKS)
                      + f" | {r.get('seconds', '-')} |", flush=True)
            if args.json:
                pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"\n{len(paths)} examples in {time.time() - start:.0f} s")
    cells = [str(r.get(c, "")) for r in rows for c in CHECKS]
    failing = sum(c.startswith("FAIL") for c in cells)
    print(f"\n{len(rows)} forms, {failing} failing checks of {sum(bool(c) and c != '-' for c in cells)}")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
