"""seqdsl's chunk kernels beside fla's, compiled for an H100 on a machine without a GPU: tensor-core instructions,
registers, spills and shared memory of every kernel each side launches.

    python benchmarks/sass_vs_fla.py [--dim 128] [--ops simple_gla gla deltanet gated_deltanet] [--arch 90]
                                     [--fla-configs N] [--no-fla] [--json out.json]

What it is for. The one GPU run found seqdsl's chunk forward 2.6x slower than fla's at B4 T2048 H16 D128, and no
GPU has been lent since. Some causes of such a gap are visible in the compiled code without running it: a kernel
that falls off Hopper's warpgroup MMA (``wgmma``, SASS ``HGMMA``) onto the older ``mma.sync`` (``HMMA``) where
fla's kernel for the same stage uses wgmma, or one that spills registers where fla's does not. Nothing here says
how fast anything is: that is ``gpu_vs_fla.py``'s, on a GPU.

How. Each op runs forward and backward on small CPU tensors (B 1, T 128, H 2, K = V = ``--dim``; gpu_vs_fla's
inputs: bf16, log gates fp32), seqdsl's compiled op in its chunk form and fla's chunk function, with every
Triton launch replaced by a compile for ``sm_<arch>`` (``gpu_compile_check.compile_only``). seqdsl's launches
compile the launch policy's configuration (what runs on a GPU when tuning is off). fla's autotuned launches
compile every configuration of their autotune lists (the first ``--fla-configs`` of each, if given), which fla
would time on its first call; fla is imported as on an H100 (its lists depend on the device it finds at import,
so the script presents one: device name, capability and shared memory). The SASS is read with the cuobjdump that
ships with Triton.

Printed per op: one row per seqdsl kernel (its configuration, registers, spilled bytes per thread, shared memory,
HGMMA and HMMA instructions), then one row per fla kernel summarising its configurations (how many compile to
HGMMA, to HMMA, how many spill; registers' range). Needs fla-core for fla's rows (``--no-fla``: seqdsl's alone).
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "0"       # real JIT functions, compiled in place of their launches

import argparse  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_compile_check import (SHARED_LIMIT, Recorder, _Driver, _usage,  # noqa: E402
                                          compile_only, compiling_without_a_gpu)
from benchmarks.host_overhead import OPS, fla_call  # noqa: E402
from benchmarks.memory_traffic import compiled, op_inputs  # noqa: E402

SHOWN = ("BT", "BK", "BV", "BC", "GATE", "PREC", "num_warps", "num_stages")


def sass_opcodes(cubin: bytes) -> collections.Counter:
    """How many times each SASS opcode (``HGMMA.64x64x16.F32.BF16`` counts as ``HGMMA``) occurs in a cubin."""
    import triton

    tool = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(tool), "-sass", f.name], capture_output=True, text=True).stdout
    found = collections.Counter()
    for line in text.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", line)
        if m:
            found[m.group(1)] += 1
    return found


class SassRecorder(Recorder):
    """gpu_compile_check's recorder, with every compiled kernel's configuration, tensor-core instructions and
    owner (``self.owner``: "seqdsl" or "fla") kept, each compile a row (fla's configurations included)."""

    def __init__(self, arch: int):
        super().__init__(arch)
        self.owner = "seqdsl"
        self.op = ""
        self.compiled: list[dict] = []
        self.seen: set = set()

    def add(self, fn, kernel, kwargs: dict) -> None:
        variant = (self.op, self.owner, fn.__name__, repr(sorted((k, v) for k, v in kwargs.items()
                                                                 if isinstance(v, (int, float, bool, str)))))
        if variant in self.seen:            # the same kernel and constexprs compiled again (another launch)
            return
        self.seen.add(variant)
        ops = sass_opcodes(kernel.asm["cubin"])
        shown = {k: (v if isinstance(v, (int, float, bool)) else str(v)) for k, v in kwargs.items() if k in SHOWN}
        shown.setdefault("num_warps", 4)
        self.compiled.append({"op": self.op, "owner": self.owner, "kernel": fn.__name__, "config": shown,
                              "shared": int(kernel.metadata.shared), "hgmma": ops["HGMMA"], "hmma": ops["HMMA"],
                              "instructions": sum(ops.values()), **_usage(kernel)})


@contextlib.contextmanager
def every_fla_config(limit: int | None):
    """Inside: an autotuned launch (fla's) compiles each configuration of its list (the first ``limit``) through
    the kernel's own launch (replaced by a compile) instead of timing them."""
    from triton.runtime import autotuner

    run = autotuner.Autotuner.run

    def compile_each(self, *args, **kwargs):
        for config in self.configs[:limit]:
            self.fn.run(*args, **{**kwargs, **config.all_kwargs()})

    autotuner.Autotuner.run = compile_each
    try:
        yield
    finally:
        autotuner.Autotuner.run = run


def import_fla_as_on(arch: int):
    """fla.ops, imported as on a GPU of compute capability arch / 10 with that GPU's shared memory: fla reads the
    device at import to choose its autotune lists (e.g. larger tiles where shared memory allows). The device
    queries it makes stay answered so for the rest of the process (this script's only)."""
    import torch
    from triton.runtime import driver

    class Utils:
        def get_device_properties(self, i):
            return {"max_shared_mem": SHARED_LIMIT.get(arch, 101376), "multiprocessor_count": 132,
                    "max_num_regs": 65536, "warpSize": 32}

    class Driver(_Driver):
        utils = Utils()

    driver.set_active(Driver(arch))
    torch.cuda.get_device_name = lambda *a, **k: {90: "NVIDIA H100 80GB HBM3", 80: "NVIDIA A100"}.get(arch, "GPU")
    torch.cuda.get_device_capability = lambda *a, **k: (arch // 10, arch % 10)
    torch.cuda.device_count = lambda: 1
    torch.cuda.current_device = lambda: 0
    import fla.ops

    return fla.ops


def op_calls(name: str, dim: int, with_fla: bool):
    """(seqdsl's call, fla's call or None) of op ``name``, forward then backward, on the inputs gpu_vs_fla gives it
    (``memory_traffic.op_inputs``: bf16; log gates fp32) at B 1, T 128, H 2: seqdsl's compiled op in its chunk form,
    fla's chunk function (``host_overhead.fla_call``)."""
    B, T, H = 1, 128, 2
    op, inputs = compiled(name, H, dim), op_inputs(name, B, T, H, dim)
    theirs = fla_call(name, inputs) if with_fla else None

    def forward_backward(call):
        def run():
            out = call()
            (out[0] if isinstance(out, tuple) else out).float().sum().backward()
        return run

    return (forward_backward(lambda: op(**inputs, mode="chunk")),
            None if theirs is None else forward_backward(theirs))


def fla_summary(rows: list[dict]) -> dict:
    """One fla kernel's configurations, summarised."""
    return {"configs": len(rows), "hgmma": sum(1 for r in rows if r["hgmma"]), "hmma": sum(1 for r in rows if r["hmma"]),
            "spilling": sum(1 for r in rows if r["local"]),
            "regs": f"{min(r['regs'] for r in rows)}-{max(r['regs'] for r in rows)}"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=128, help="head dims K = V (fla's benchmark shapes: 64, 128, 256)")
    parser.add_argument("--ops", nargs="*", default=list(OPS), choices=OPS)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100 / H200)")
    parser.add_argument("--fla-configs", type=int, default=None,
                        help="compile only the first N configurations of each fla autotune list (default: all)")
    parser.add_argument("--no-fla", action="store_true", help="seqdsl's kernels alone")
    parser.add_argument("--json", help="write every compiled kernel's row here too")
    args = parser.parse_args(argv)
    if not compiling_without_a_gpu("sass_vs_fla", "time the kernels there with benchmarks/gpu_vs_fla.py"):
        return 0
    with_fla = not args.no_fla
    if with_fla:
        try:
            import_fla_as_on(args.arch)
        except ImportError:
            print("fla-core is not installed: seqdsl's kernels alone (pip install fla-core for fla's rows)")
            with_fla = False
    rec = SassRecorder(args.arch)
    start = time.time()
    print(f"# Chunk kernels compiled for sm_{args.arch} without a GPU: seqdsl beside fla "
          f"(B 1, T 128, H 2, K = V = {args.dim}, bf16, forward and backward)\n")
    with compile_only(rec), every_fla_config(args.fla_configs):
        for name in args.ops:
            ours, theirs = op_calls(name, args.dim, with_fla)
            rec.op = name
            for owner, call in (("seqdsl", ours), ("fla", theirs)):
                if call is None:
                    continue
                rec.owner, t0 = owner, time.time()
                try:
                    call()
                except Exception as e:  # noqa: BLE001 - the host code failing is a finding too
                    rec.failures.append({"kernel": "-", "case": f"{owner} {name}", "num_warps": "-",
                                         "error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"})
                print(f"[{name}] {owner}: {sum(1 for r in rec.compiled if r['op'] == name and r['owner'] == owner)} "
                      f"kernels compiled, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    for name in args.ops:
        mine = [r for r in rec.compiled if r["op"] == name and r["owner"] == "seqdsl"]
        print(f"## {name}\n\n| seqdsl kernel | configuration | registers | spilled B | shared B | HGMMA | HMMA |")
        print("|---|---|---|---|---|---|---|")
        for r in mine:
            config = ", ".join(f"{k}={v}" for k, v in r["config"].items())
            print(f"| {r['kernel']} | {config} | {r['regs']} | {r['local']} | {r['shared']} | {r['hgmma']} | "
                  f"{r['hmma']} |")
        by_kernel = collections.defaultdict(list)
        for r in rec.compiled:
            if r["op"] == name and r["owner"] == "fla":
                by_kernel[r["kernel"]].append(r)
        if by_kernel:
            print("\n| fla kernel | configurations | with HGMMA | with HMMA | spilling | registers |")
            print("|---|---|---|---|---|---|")
            for kernel, rows in by_kernel.items():
                s = fla_summary(rows)
                print(f"| {kernel} | {s['configs']} | {s['hgmma']} | {s['hmma']} | {s['spilling']} | {s['regs']} |")
        print()
    for f in rec.failures:
        print(f"FAILED: {f['kernel']} ({f['case']}, {f['num_warps']} warps): {f['error']}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"rows": rec.compiled, "failures": rec.failures}, indent=1))
    print(f"{len(rec.compiled)} kernels compiled for sm_{args.arch} in {time.time() - start:.0f} s, "
          f"{len(rec.failures)} failures")
    return 1 if rec.failures else 0


if __name__ == "__main__":
    sys.exit(main())
