"""Compile every Triton kernel the ops launch for a GPU, on a machine without one, and report what a launch
would meet: compile errors, registers per thread, spills, shared memory beyond the GPU's limit.

    python benchmarks/gpu_compile_check.py [--arch 90] [--only gla mamba ...] [--chunk-dims 64 128 256]
                                           [--no-examples] [--json out.json] [--launch num_warps=8]

The CI tests run the kernels under ``TRITON_INTERPRET=1``, which executes them as numpy and accepts
programs a GPU compiler rejects (and says nothing of registers or shared memory). This script runs the ops
on CPU tensors with Triton's own CUDA compiler (its bundled ptxas) in place of every launch: each launch
compiles its kernel for ``sm_<arch>`` with the launch policy's GPU configuration (num_warps, tl.dot
precision) and launches nothing, so outputs are garbage and only the compiled programs are looked at.

Cases: every Triton form of every example at its own default dims (B 1, T 80; fp32 forward and backward with an
initial and a final state, bf16 forward and backward with the op's defaults (no initial state, no final state: the
chunk kernels' low-precision policy, and what training runs), packed sequences forward), then the chunk kernels
alone at fla's head dims (K = V = each of ``--chunk-dims``; gated with no, scalar and key gates, the delta
rule plain and gated, the DPLR chunk up to 128; forward and backward, fp32 and bf16 policies).

Prints one row per distinct compiled kernel (name, the constexprs that tell its variants apart, num_warps,
registers, spilled bytes, shared memory) and the failures; exits 1 if a kernel fails to compile or needs more
shared memory than the GPU has (its launch would fail); spills are reported, not failed (slow, not wrong).
Needs no GPU: it refuses to run where one is present (run gpu_check.py there instead, which executes the
kernels).
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "0"       # before any kernel module is imported: real JIT functions

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Shared memory a block may use (opt-in maximum), bytes: sm_80 (A100) 163 KB, sm_90 (H100 / H200) 227 KB.
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}


class _Driver:
    """Enough of a Triton driver for the JIT to pick a target and compile (never to launch)."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def is_active(self):
        return True


def _usage(kernel) -> dict:
    """Registers, spilled (local) bytes and static shared memory of a compiled kernel, by cuobjdump."""
    import triton

    tool = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        text = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True).stdout
    found = dict(re.findall(r"(REG|LOCAL|STACK):(\d+)", text))
    return {"regs": int(found.get("REG", -1)), "local": int(found.get("LOCAL", 0)) + int(found.get("STACK", 0))}


class Recorder:
    """Every distinct kernel compiled inside ``compile_only`` with its resources, and every failure."""

    def __init__(self, arch: int):
        self.arch = arch
        self.rows: dict[tuple, dict] = {}
        self.failures: list[dict] = []
        self.case = ""
        self.alternative = False       # the launch compiling now is a tuner's alternative, not the policy's choice

    def add(self, fn, kernel, kwargs: dict) -> None:
        names = {fn.arg_names[i] for i in fn.constexprs} | {"num_stages"}     # what tells its compiled variants apart
        constexprs = {k: (str(v) if not isinstance(v, (int, float, bool)) else v)
                      for k, v in kwargs.items() if k in names}
        key = (fn.__name__, json.dumps(constexprs, sort_keys=True), kwargs.get("num_warps", 4))
        if key in self.rows:
            return
        row = {"kernel": fn.__name__, "variant": constexprs, "num_warps": kwargs.get("num_warps", 4),
               "shared": int(kernel.metadata.shared), "case": self.case, "alternative": self.alternative,
               **_usage(kernel)}
        limit = SHARED_LIMIT.get(self.arch, 101376)
        row["too_much_shared"] = row["shared"] > limit          # the launch would fail (OutOfResources)
        fails = "tuner skips it: shared memory" if self.alternative else "LAUNCH FAILS: shared memory"
        row["problem"] = "; ".join(([f"{fails} {row['shared']} B > {limit} B"]
                                    if row["too_much_shared"] else []) +
                                   ([f"spills {row['local']} B (slow)"] if row["local"] else []))
        self.rows[key] = row

    def fail(self, fn, error: Exception, kwargs: dict) -> None:
        first = (str(error).strip().splitlines() or [""])[-1]
        self.failures.append({"kernel": getattr(fn, "__name__", str(fn)), "case": self.case,
                              "num_warps": kwargs.get("num_warps", 4), "alternative": self.alternative,
                              "error": f"{type(error).__name__}: {first[:300]}"})


@contextlib.contextmanager
def compile_only(recorder: Recorder):
    """Inside: every Triton launch compiles its kernel for the recorder's GPU target and launches nothing;
    the launch policy answers as for a CUDA device."""
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    import torch

    from seqdsl.runtime import triton_runtime

    run, policy = JITFunction.run, triton_runtime.launch_config

    def compile_instead(self, *args, grid, warmup, **kwargs):
        try:
            kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        except Exception as e:  # noqa: BLE001 - a failure is a row of the report
            recorder.fail(self, e, kwargs)
            return None
        recorder.add(self, kernel, kwargs)
        return kernel

    def gpu_policy(form, tiled_size, state_numel, device=None, low_precision_inputs=None, **policy_kw):
        return policy(form, tiled_size, state_numel, torch.device("cuda"), low_precision_inputs, **policy_kw)

    saved = driver._active                 # None without a GPU: nothing to reset to
    driver.set_active(_Driver(recorder.arch))
    JITFunction.run, triton_runtime.launch_config = compile_instead, gpu_policy
    try:
        yield
    finally:
        JITFunction.run, triton_runtime.launch_config = run, policy
        driver._active = saved


def example_cases(only: list[str] | None):
    """(label, thunk) for every Triton form of every example: fp32 forward + backward with an initial and a final state,
    bf16 forward + backward with the op's defaults (none given, none asked for: what training runs), varlen."""
    import torch

    import seqdsl
    from seqdsl.testing import random_state, sample_inputs

    for path in sorted((ROOT / "examples").glob("*.seq")):
        if only and path.stem not in only:
            continue
        try:
            model = seqdsl.load(path)
            op, ref = seqdsl.compile(model, backend="triton"), seqdsl.reference(model)
        except Exception as e:  # noqa: BLE001
            yield path.stem, _raiser(e)
            continue
        for mode in op.modes:
            def fwd_bwd(op=op, ref=ref, mode=mode):
                xs = {k: v.to(torch.complex64 if v.is_complex() else torch.float32).requires_grad_(True)
                      for k, v in sample_inputs(ref, 1, 80).items()}
                o, h = op(**xs, initial_state=_cast(random_state(ref, 1)), output_final_state=True, mode=mode)
                loss = sum((t.real if t.is_complex() else t).float().sum() for t in _flat(o) + _flat(h))
                loss.backward()

            def bf16(op=op, ref=ref, mode=mode):     # the op's defaults: no initial state given, no final state
                xs = {k: (v.to(torch.complex64) if v.is_complex() else v.to(torch.bfloat16)).requires_grad_(True)
                      for k, v in sample_inputs(ref, 1, 80).items()}
                o, _ = op(**xs, mode=mode)
                sum((t.real if t.is_complex() else t).float().sum() for t in _flat(o)).backward()

            def varlen(op=op, ref=ref, mode=mode):
                xs = {k: v.to(torch.complex64 if v.is_complex() else torch.float32)
                      for k, v in sample_inputs(ref, 1, 80).items()}
                op(**xs, initial_state=_cast(random_state(ref, 3)), output_final_state=True, mode=mode,
                   cu_seqlens=torch.tensor([0, 30, 31, 80]))

            for tag, fn in (("fp32 fwd+bwd", fwd_bwd), ("bf16 fwd+bwd, defaults", bf16), ("varlen fwd", varlen)):
                yield f"{path.stem} {mode} {tag}", fn


def chunk_cases(dims: list[int]):
    """(label, thunk): the chunk kernels alone at head dim K = V = d, as fla's benchmark shapes have them; under
    the bf16 policy with the dtypes gpu_vs_fla gives them (q, k, v, beta bf16; log gates and states fp32), and
    called as it calls them (no initial state, no final state: the variants that neither read nor store them; the
    output in the inputs' dtype, as the op has the kernels store it, so its gradient comes back in that dtype)."""
    import torch

    from seqdsl.runtime import op as _op
    from seqdsl.runtime import triton_chunk, triton_dplr

    B, T, H = 1, 128, 2
    for d in dims:
        for low in (None, torch.bfloat16):
            precision = "bf16 policy" if low else "fp32 policy"
            for gate in ("none", "scalar", "key"):
                def gated(d=d, low=low, gate=gate):
                    g = torch.Generator().manual_seed(0)
                    q, k, v = (torch.randn(B, T, H, d, generator=g).to(low or torch.float32).requires_grad_(True)
                               for _ in range(3))
                    kw = {}
                    if gate == "scalar":
                        kw["g"] = (-torch.rand(B, T, H, generator=g)).requires_grad_(True)
                    if gate == "key":
                        kw["gk"] = (-torch.rand(B, T, H, d, generator=g)).requires_grad_(True)
                    with _op._inputs_precision(low), _op.readouts_in(low):
                        o, _ = triton_chunk.chunk_gated(q, k, v, scale=d ** -0.5, **kw)
                        o.sum().backward()
                yield f"chunk_gated gate={gate} K=V={d} {precision}", gated
            for gated_delta in (False, True):
                def delta(d=d, low=low, gated_delta=gated_delta):
                    g = torch.Generator().manual_seed(0)
                    q, k, v = (torch.randn(B, T, H, d, generator=g).to(low or torch.float32).requires_grad_(True)
                               for _ in range(3))
                    beta = torch.rand(B, T, H, generator=g).to(low or torch.float32).requires_grad_(True)
                    kw = {"g": (-torch.rand(B, T, H, generator=g)).requires_grad_(True)} if gated_delta else {}
                    with _op._inputs_precision(low), _op.readouts_in(low):
                        o, _ = triton_chunk.chunk_delta(q, k, v, beta, scale=d ** -0.5, **kw)
                        o.sum().backward()
                yield f"chunk_delta {'gated' if gated_delta else 'plain'} K=V={d} {precision}", delta
            if d > triton_dplr.DPLR_MAX_DIM:
                continue      # the DPLR state passes hold every key channel of their V tile in one program

            def dplr(d=d, low=low):
                g = torch.Generator().manual_seed(0)
                q, a, b, k, v = (torch.randn(B, T, H, d, generator=g).to(low or torch.float32).requires_grad_(True)
                                 for _ in range(5))
                gk = (-torch.rand(B, T, H, d, generator=g)).requires_grad_(True)
                with _op._inputs_precision(low), _op.readouts_in(low):
                    o, _ = triton_chunk.chunk_dplr(q, a, b, k, v, gk=gk, scale=d ** -0.5)
                    o.sum().backward()
            yield f"chunk_dplr K=V={d} {precision}", dplr


def compiling_without_a_gpu(script: str, advice: str) -> bool:
    """Set a compile-only script up (warnings off, one CPU thread, a fresh seqdsl cache unless one is given) and
    say True; or, where a GPU is present, print what to run instead and say False."""
    import torch

    if torch.cuda.is_available():
        print(f"{script}: a GPU is present; {advice}.")
        return False
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    os.environ.setdefault("SEQDSL_CACHE_DIR", tempfile.mkdtemp(prefix=f"seqdsl_{script}_"))
    return True


def run_alternatives(rec: Recorder, thunk) -> None:
    """Run a case again once per alternative of its tuned launches (``triton_tune.choosing``), so that each is
    compiled: run i takes the i-th candidate of every tuned launch (the last where a launch has fewer), until the
    launch with the most candidates has had each."""
    from seqdsl.runtime import triton_tune

    most = 1                                   # candidates of the tuned launch with the most, as seen so far

    def chooser(name, configs):
        nonlocal most
        most = max(most, len(configs))
        rec.alternative = min(i, len(configs) - 1) > 0
        return i

    i = 1
    while i == 1 or i < most:
        try:
            with triton_tune.choosing(chooser):
                thunk()
        finally:
            rec.alternative = False
        i += 1


def _raiser(error):
    def thunk():
        raise error
    return thunk


def _cast(h):
    import torch

    hs = tuple(s.to(torch.complex64) if s.is_complex() else s.float() for s in _flat(h))
    return hs if len(hs) > 1 else hs[0]


def _flat(x):
    return x if isinstance(x, tuple) else (x,)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100 / H200)")
    parser.add_argument("--only", nargs="*", help="example names (default: every examples/*.seq)")
    parser.add_argument("--no-examples", action="store_true", help="only the chunk kernels at --chunk-dims")
    parser.add_argument("--chunk-dims", nargs="*", type=int, default=[64, 128, 256])
    parser.add_argument("--json", help="write the rows and failures here too")
    parser.add_argument("--tuning-candidates", action="store_true",
                        help="also compile every alternative the launch-time tuner (seqdsl.runtime.triton_tune) may "
                             "time on a GPU; one that would not launch is reported (the tuner skips it), not failed")
    parser.add_argument("--launch", nargs="*", default=[], metavar="KEY=N",
                        help="force the recurrent kernels' launch settings instead of the policy's "
                             "(triton_runtime.override_launch), e.g. --launch num_warps=8, or block=32 num_warps=2: "
                             "what they would compile to under another configuration (the chunk kernels are "
                             "overridden too, with the interpreter's ieee dots: pair it with --chunk-dims and no "
                             "dims; the fused scans keep theirs)")
    args = parser.parse_args(argv)
    try:
        launch = {k: int(v) for k, v in (item.split("=", 1) for item in args.launch)}
    except ValueError:
        parser.error(f"--launch takes KEY=N pairs such as num_warps=8 (got {' '.join(args.launch)})")
    if not compiling_without_a_gpu("gpu_compile_check", "run benchmarks/gpu_check.py, which executes the kernels"):
        return 0
    rec = Recorder(args.arch)
    cases = ([] if args.no_examples else list(example_cases(args.only))) + list(chunk_cases(args.chunk_dims))
    start = time.time()
    print(f"# Triton kernels compiled for sm_{args.arch} without a GPU ({len(cases)} cases)\n", flush=True)
    from seqdsl.runtime import triton_runtime

    overridden = triton_runtime.override_launch(**launch) if launch else contextlib.nullcontext()
    with compile_only(rec), overridden:
        for i, (label, thunk) in enumerate(cases, 1):
            rec.case = label
            before, failed = len(rec.rows), len(rec.failures)
            t0 = time.time()
            try:
                thunk()
                if args.tuning_candidates:
                    run_alternatives(rec, thunk)
            except Exception as e:  # noqa: BLE001 - the host code failing is a finding too
                rec.failures.append({"kernel": "-", "case": label, "num_warps": "-",
                                     "error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"})
            print(f"[{i}/{len(cases)}] {label}: {len(rec.rows) - before} new kernels, "
                  f"{len(rec.failures) - failed} failures, {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
    rows = sorted(rec.rows.values(), key=lambda r: (r["kernel"], json.dumps(r["variant"], sort_keys=True)))
    print("| kernel | variant | num_warps | registers | spilled B | shared B | problem | first case |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        variant = ", ".join(f"{k}={v}" for k, v in sorted(r["variant"].items()))
        print(f"| {r['kernel']} | {variant} | {r['num_warps']} | {r['regs']} | {r['local']} | {r['shared']} | "
              f"{r['problem'] or 'ok'} | {r['case']} |")
    if rec.failures:
        print("\n## Failures\n\n| kernel | case | num_warps | error |\n|---|---|---|---|")
        for f in rec.failures:
            tag = "(a tuning alternative: skipped) " if f.get("alternative") else ""
            print(f"| {f['kernel']} | {f['case']} | {f['num_warps']} | {tag}{f['error'].replace('|', '/')} |")
    unlaunchable = [r for r in rows if r["too_much_shared"] and not r["alternative"]]
    failures = [f for f in rec.failures if not f.get("alternative")]
    if args.tuning_candidates:
        skipped = [r for r in rows if r["too_much_shared"] and r["alternative"]]
        alternatives = [r for r in rows if r["alternative"]]
        print(f"\nTuning alternatives: {len(alternatives)} distinct kernels, {len(skipped)} needing more shared memory "
              f"than the GPU has and {len(rec.failures) - len(failures)} failing to compile (the tuner skips "
              f"these), {sum(1 for r in alternatives if r['local'])} spilling")
    spilling = [r for r in rows if r["local"]]
    print(f"\n{len(rows)} distinct kernels compiled for sm_{args.arch} in {time.time() - start:.0f} s: "
          f"{len(failures)} failures, {len(unlaunchable)} needing more shared memory than the GPU has, "
          f"{len(spilling)} spilling registers (slow, not wrong)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"rows": rows, "failures": rec.failures}, indent=1))
    return 1 if unlaunchable or failures else 0


if __name__ == "__main__":
    sys.exit(main())
