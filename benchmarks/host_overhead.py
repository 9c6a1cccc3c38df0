"""Host time of one op call, without a GPU: what Python spends around the kernels, seqdsl's op against fla's.

    python benchmarks/host_overhead.py [--reps 300] [--backward]

gpu_vs_fla.py times one call between two CUDA events after a synchronize, so the host time before the first
kernel launch (argument checks, lifting, buffers, the launch policy, Triton's own argument binding) is GPU time
that the table counts; at fla's smallest shapes a forward is ~0.3 ms of kernels. This script measures that host
time on the CPU: every Triton launch is replaced by nothing (JITFunction.run: neither side pays Triton's argument
binding, the same for both), fla's autotuners and seqdsl's tuner (``triton_tune``) look their choice up per call as
on a GPU (the choice made on the first call, untimed), the launch policy answers as for a CUDA device, and the tensors are tiny CPU ones (B 1, T 64, H 2, D 16; bf16 as gpu_vs_fla gives them).
Reported: the best of 5 means over ``--reps`` calls, microseconds, forward (no_grad) and with ``--backward`` forward
and backward. fla's rows need fla-core (``pip install fla-core``); without it, seqdsl's rows alone.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "0"       # real JIT functions, whose launches are replaced below

import argparse  # noqa: E402
import contextlib  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.memory_traffic import autotuners_untimed, compiled, gpu_launch_policy, op_inputs  # noqa: E402

OPS = ("simple_gla", "gla", "deltanet", "gated_deltanet")


@contextlib.contextmanager
def launches_stubbed():
    """Inside: Triton launches do nothing; fla's autotuners and seqdsl's tuner look their choices up as on a GPU
    (made on the first call, untimed); the launch policy answers as for a CUDA device."""
    from triton.runtime.jit import JITFunction

    from seqdsl.runtime import triton_tune

    saved = (JITFunction.run, triton_tune.tuning_on, triton_tune._choose)
    JITFunction.run = lambda self, *a, **k: None
    # seqdsl's launches look their tuned configuration up as on a GPU (the choice made: the policy's, untimed)
    triton_tune.tuning_on = lambda device: True
    triton_tune._choose = lambda kernel, key, meta, configs, run: meta
    try:
        with gpu_launch_policy(), autotuners_untimed():     # fla's autotuners: as on a GPU, their first choice
            yield
    finally:
        JITFunction.run, triton_tune.tuning_on, triton_tune._choose = saved


def host_us(fn, reps: int) -> float:
    """Best of 5 mean host times of fn(), microseconds, after 10 warm-up calls."""
    for _ in range(10):
        fn()
    means = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        means.append((time.perf_counter() - start) / reps * 1e6)
    return min(means)


def fla_call(name: str, inputs: dict):
    """fla's chunk function of op ``name`` on gpu_vs_fla's inputs, or None without fla-core."""
    try:
        import fla.ops as fla_ops
    except ImportError:
        return None
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    return {"simple_gla": lambda: fla_ops.chunk_simple_gla(q, k, v, g=inputs.get("g")),
            "gla": lambda: fla_ops.chunk_gla(q, k, v, g=inputs.get("gk")),
            "deltanet": lambda: fla_ops.chunk_delta_rule(q, k, v, inputs.get("beta")),
            "gated_deltanet": lambda: fla_ops.chunk_gated_delta_rule(q, k, v, inputs.get("g"), inputs.get("beta")),
            }[name]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument("--backward", action="store_true", help="also time forward + backward")
    parser.add_argument("--ops", nargs="*", default=list(OPS), choices=OPS)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    B, T, H, D = 1, 64, 2, 16
    print(f"# Host time of one call, launches replaced by nothing (B {B}, T {T}, H {H}, D {D}, bf16; us)\n")
    print("| op | implementation | fwd | fwd+bwd |\n|---|---|---|---|")
    with launches_stubbed():
        for name in args.ops:
            op = compiled(name, H, D)
            inputs = op_inputs(name, B, T, H, D)
            rows = [("seqdsl op(mode='chunk')", lambda: op(**inputs, mode="chunk"))]
            theirs = fla_call(name, inputs)
            if theirs is not None:
                fla_name = {"deltanet": "delta_rule", "gated_deltanet": "gated_delta_rule"}.get(name, name)
                rows.append((f"fla chunk_{fla_name}", theirs))
            for label, call in rows:
                with torch.no_grad():
                    fwd = f"{host_us(call, args.reps):.0f}"
                both = "-"
                if args.backward:
                    def step(call=call):
                        out = call()
                        (out[0] if isinstance(out, tuple) else out).float().sum().backward()
                    both = f"{host_us(step, max(1, args.reps // 5)):.0f}"
                print(f"| {name} | {label} | {fwd} | {both} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
