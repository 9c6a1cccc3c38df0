"""Forward-time micro-benchmark of the torch form library (seqdsl.runtime) on CPU.

    python benchmarks/torch_forms_bench.py [--threads 2] [--T 1024 4096 16384] [--repeats 5] [--families dplr ...]

Times the chunkwise forms at B=1, H=4, K=V=64 (fp32, no autograd) next to flash-linear-attention's
pure-torch references for the same family, and compares them with the FLOP-limited time: the
chunk algorithm's matmul FLOPs divided by this machine's measured fp32 matmul rate (a 2048^3
matmul; the rate on 64^3 batched matmuls, the chunk algorithm's shape, is printed as well).
Timings are wall-clock minima over --repeats runs after a warm-up (--stat median for medians).
On a shared machine they are noisy, and with --threads 2 a busy second core stalls every
parallel op, so check the printed load average; --threads 1 --clock cpu measures this process's
CPU time, which other load disturbs much less.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from seqdsl.runtime import chunk_delta, chunk_dplr, chunk_gated

B, H, K, V, C = 1, 4, 64, 64, 64


def timeit(fn, repeats: int, warmup: int = 1) -> float:
    """Wall-clock seconds of fn(): the minimum over repeats (the least disturbed run on a shared
    machine; set --stat median for the median)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return STAT(times)


STAT = min
CLOCK = time.perf_counter


def matmul_rate(repeats: int) -> tuple[float, float]:
    """fp32 GFLOP/s of one 2048^3 matmul and of 256 batched 64^3 matmuls."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    big = 2 * 2048**3 / timeit(lambda: a @ b, 2 * repeats, warmup=2) / 1e9
    x, y = torch.randn(256, 64, 64), torch.randn(256, 64, 64)
    small = 2 * 256 * 64**3 / timeit(lambda: torch.bmm(x, y), repeats * 4, warmup=2) / 1e9
    return big, small


# Matmul FLOPs of the chunk algorithms in seqdsl.runtime.torch_forms, for B * H heads.
def flops_gla(T: int) -> float:
    intra = T * K * (C - 1)              # recursive halving: the causal half of Q K^T
    return B * H * (intra + 2 * T * C * V + 2 * T * K * V + 2 * T * K * V)


def flops_simple_gla(T: int) -> float:
    return B * H * (2 * T * C * K + 2 * T * C * V + 4 * T * K * V)


def flops_gdn(T: int) -> float:
    inverse = 2 * T * (C * C - 1) / 3    # recursive doubling of (I + A)^-1
    wu = 2 * T * C * (K + V)
    loop = 4 * T * K * V                 # v_new = U - W S;  S += K^T v_new
    out = 2 * T * C * K + 2 * T * C * V + 2 * T * K * V
    return B * H * (2 * T * C * K + inverse + wu + loop + out)


def flops_dplr(T: int) -> float:
    scores = 4 * T * K * (C - 1)         # A_qb, A_qk and the strictly causal L_ab, L_ak, by recursive halving
    inverse = 2 * T * (C * C - 1) / 3
    wu = 2 * T * C * K + 2 * T * C * V + 2 * T * C * V      # W = T Ã;  U0 = T (L_ak V)
    loop = 6 * T * K * V                 # u = W S + U0;  S = Γ S + B^T u + K^T V
    out = 4 * T * C * V + 2 * T * K * V
    return B * H * (scores + inverse + wu + loop + out)


def inputs(T: int):
    torch.manual_seed(0)
    q, k = torch.randn(B, T, H, K), torch.randn(B, T, H, K)
    v = torch.randn(B, T, H, V)
    gk = F.logsigmoid(torch.randn(B, T, H, K)) / 16          # GLA's gate normaliser
    g = F.logsigmoid(torch.randn(B, T, H))
    beta = torch.rand(B, T, H).sigmoid()
    kn = F.normalize(k, dim=-1)
    return q, k, v, gk, g, beta, kn


def references():
    """fla's pure-torch references, by family (missing ones are skipped)."""
    refs = {"gla": {}, "simple_gla": {}, "gdn": {}, "dplr": {}}
    try:
        from fla.ops.gla.naive import naive_recurrent_gla
        refs["gla"]["fla naive_recurrent_gla"] = lambda q, k, v, gk, g, beta, kn: naive_recurrent_gla(q, k, v, gk)
    except ImportError:
        pass
    try:
        from fla.ops.simple_gla import naive as sg
        refs["simple_gla"]["fla naive_recurrent_simple_gla"] = (
            lambda q, k, v, gk, g, beta, kn: sg.naive_recurrent_simple_gla(q, k, v, g, output_final_state=False))
        if hasattr(sg, "naive_chunk_simple_gla"):
            refs["simple_gla"]["fla naive_chunk_simple_gla"] = (
                lambda q, k, v, gk, g, beta, kn: sg.naive_chunk_simple_gla(q, k, v, g, chunk_size=C))
    except ImportError:
        pass
    try:
        from fla.ops.gated_delta_rule import naive as gd
        refs["gdn"]["fla naive_recurrent_gated_delta_rule"] = (
            lambda q, k, v, gk, g, beta, kn: gd.naive_recurrent_gated_delta_rule(q, kn, v, beta, g))
        if hasattr(gd, "naive_chunk_gated_delta_rule"):
            refs["gdn"]["fla naive_chunk_gated_delta_rule"] = (
                lambda q, k, v, gk, g, beta, kn: gd.naive_chunk_gated_delta_rule(q, kn, v, g, beta, chunk_size=C))
    except ImportError:
        pass
    try:
        from fla.ops.generalized_delta_rule.dplr import naive as dp
        hf = lambda x: x.transpose(1, 2)       # fla's naive dplr references are head-first
        refs["dplr"]["fla dplr_recurrence"] = (
            lambda q, k, v, gk, g, beta, kn: dp.dplr_recurrence(hf(q), hf(k), hf(v), hf(-kn), hf(kn * 0.5), hf(gk)))
        refs["dplr"]["fla dplr_chunkwise"] = (
            lambda q, k, v, gk, g, beta, kn: dp.dplr_chunkwise(hf(q), hf(k), hf(v), hf(-kn), hf(kn * 0.5), hf(gk),
                                                               chunk_size=C))
    except ImportError:
        pass
    return refs


OURS = {   # family: (name, fn(q, k, v, gk, g, beta, kn), FLOP count)
    "gla": ("seqdsl chunk_gated(gk)",
            lambda q, k, v, gk, g, beta, kn: chunk_gated(q, k, v, gk=gk, chunk_size=C), flops_gla),
    "simple_gla": ("seqdsl chunk_gated(g)",
                   lambda q, k, v, gk, g, beta, kn: chunk_gated(q, k, v, g=g, chunk_size=C), flops_simple_gla),
    "gdn": ("seqdsl chunk_delta(g)",
            lambda q, k, v, gk, g, beta, kn: chunk_delta(q, kn, v, beta, g, chunk_size=C), flops_gdn),
    "dplr": ("seqdsl chunk_dplr(gk) (RWKV-7)",
             lambda q, k, v, gk, g, beta, kn: chunk_dplr(q, -kn, kn * 0.5, k, v, gk=gk, chunk_size=C), flops_dplr),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--T", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--families", nargs="+", choices=sorted(OURS), default=list(OURS),
                        help="which families to time (all by default)")
    parser.add_argument("--ref-max-T", type=int, default=4096, help="skip fla references above this T")
    parser.add_argument("--stat", choices=["min", "median"], default="min")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this process's CPU time, robust to other load (use with --threads 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global STAT, CLOCK
    STAT = min if args.stat == "min" else statistics.median
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    big, small = matmul_rate(args.repeats)
    print(f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.2f}")
    print(f"fp32 matmul: {big:.1f} GFLOP/s (2048^3), {small:.1f} GFLOP/s (256 x 64^3 batched)")
    print(f"B={B} H={H} K={K} V={V} chunk={C}, forward only, {args.stat} {args.clock} time of {args.repeats} runs\n")

    refs = references()
    header = f"{'family':<11} {'implementation':<38} {'T':>6} {'ms':>10} {'tok/s':>10} {'GFLOP':>7} {'xFLOPlim':>8} {'speedup':>8}"
    print(header)
    print("-" * len(header))
    summary = {}
    with torch.no_grad():
        for family, (name, fn, flops) in ((f, OURS[f]) for f in args.families):
            for T in args.T:
                x = inputs(T)
                ours = timeit(lambda: fn(*x), args.repeats)
                ref_times = {}
                if T <= args.ref_max_T:
                    for rname, rfn in refs[family].items():
                        ref_times[rname] = timeit(lambda: rfn(*x), 1 if T > 4096 else max(1, args.repeats // 2), warmup=0 if T > 4096 else 1)
                fastest = min(ref_times.values()) if ref_times else float("nan")
                lim = flops(T) / (big * 1e9)
                summary[family, T] = (ours, fastest, lim)
                print(f"{family:<11} {name:<38} {T:>6} {ours * 1e3:>10.2f} {B * T / ours:>10.0f} "
                      f"{flops(T) / 1e9:>7.3f} {ours / lim:>8.2f} {fastest / ours:>8.1f}")
                for rname, t in ref_times.items():
                    print(f"{'':<11} {rname:<38} {T:>6} {t * 1e3:>10.2f} {B * T / t:>10.0f}")
            print()

    print("xFLOPlim: time / (matmul FLOPs / measured 2048^3 rate); speedup: fastest fla reference / ours")
    if 4096 in args.T and 16384 in args.T:
        for family in args.families:
            t4, t16 = summary[family, 4096][0], summary[family, 16384][0]
            print(f"{family}: T=16384 / T=4096 time ratio {t16 / t4:.2f} (linear = 4)")


if __name__ == "__main__":
    main()
