"""CPU timings of the generated torch forms next to fla-core's torch references and SDPA.

    python benchmarks/cpu_forms.py [--lengths 1024 4096 16384] [--models gla retnet gated_deltanet mamba rwkv7]

Prints a markdown table: forward and forward+backward milliseconds and tokens/s per form at
B=1, H=4, K=V=64 (mamba: d_inner=256 channels with n=16, the paper's setting), the same for
fla-core's naive references of the family and causal scaled_dot_product_attention, the measured fp32
matmul rate, the chunk form's FLOP-limited time (its matmul FLOPs / that rate), and the issue's
targets: chunk >= 10x faster than fla's fastest torch reference at T=4096, within 4x of the
FLOP-limited time, and 16384 vs 4096 <= 4.5x.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore")

B, H, K, V = 1, 4, 64, 64


def matmul_gflops() -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    runs = []
    for _ in range(10):
        t = time.perf_counter()
        a @ b
        runs.append(time.perf_counter() - t)
    return 2 * 1024 ** 3 / statistics.median(runs) / 1e9


def timeit(fn, budget_s: float = 3.0, max_runs: int = 7) -> float:
    """Median milliseconds of fn() (one warm-up; fewer runs for slow functions)."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    n = max(1, min(max_runs, int(budget_s / max(first, 1e-6))))
    runs = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs) * 1e3


def inputs_for(name: str, T: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    randn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    if name == "mamba":
        D, n = 256, 16
        return {"u": randn(B, T, D), "delta": torch.nn.functional.softplus(randn(B, T, D) - 4),
                "B": randn(B, T, n), "C": randn(B, T, n), "A_log": torch.log(torch.arange(1, n + 1.0)).repeat(D, 1),
                "D": torch.ones(D)}
    if name == "rwkv7":   # the op's inputs at RWKV-7's ranges: a = -kh, b = kh ⊙ iclr, w in [-exp(-0.5), 0]
        kh = torch.nn.functional.normalize(randn(B, T, H, K), dim=-1)
        return {"r": randn(B, T, H, K), "w": -0.6065 * torch.sigmoid(randn(B, T, H, K)), "k": randn(B, T, H, K),
                "v": randn(B, T, H, V), "a": -kh, "b": kh * torch.sigmoid(randn(B, T, H, K))}
    x = {"q": randn(B, T, H, K), "k": randn(B, T, H, K), "v": randn(B, T, H, V)}
    if name == "gla":
        x["gk"] = torch.nn.functional.logsigmoid(randn(B, T, H, K)) / 16
    if name == "retnet":
        x["g_gamma"] = torch.log(1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float32)))
    if name == "gated_deltanet":
        x["k"] = torch.nn.functional.normalize(x["k"], dim=-1)
        x["g"] = torch.nn.functional.logsigmoid(randn(B, T, H))
        x["beta"] = torch.sigmoid(randn(B, T, H))
    return x


def fla_refs(name: str, x: dict):
    """fla-core's torch references for the family: {label: fn}."""
    out = {}
    try:
        if name == "gla":
            from fla.ops.gla.naive import naive_recurrent_gla

            out["fla naive_recurrent_gla"] = lambda: naive_recurrent_gla(x["q"], x["k"], x["v"], x["gk"])
        if name == "retnet":
            from fla.ops.simple_gla import naive as sg

            g = x["g_gamma"].expand(B, x["q"].shape[1], H).contiguous()
            out["fla naive_recurrent_simple_gla"] = lambda: sg.naive_recurrent_simple_gla(x["q"], x["k"], x["v"], g)
            if hasattr(sg, "naive_chunk_simple_gla"):
                out["fla naive_chunk_simple_gla"] = lambda: sg.naive_chunk_simple_gla(x["q"], x["k"], x["v"], g)
        if name == "gated_deltanet":
            from fla.ops.gated_delta_rule import naive as gd

            out["fla naive_recurrent_gated_delta_rule"] = lambda: gd.naive_recurrent_gated_delta_rule(
                x["q"], x["k"], x["v"], x["beta"], x["g"])
            if hasattr(gd, "naive_chunk_gated_delta_rule"):
                out["fla naive_chunk_gated_delta_rule"] = lambda: gd.naive_chunk_gated_delta_rule(
                    x["q"], x["k"], x["v"], x["g"], x["beta"])
        if name == "rwkv7":
            from fla.ops.generalized_delta_rule.dplr import naive as dp

            hf = lambda t: t.transpose(1, 2)  # noqa: E731  (head-first)
            args = [hf(x[n]) for n in ("r", "k", "v", "a", "b", "w")]
            out["fla dplr_recurrence"] = lambda: dp.dplr_recurrence(*args)
            out["fla dplr_chunkwise"] = lambda: dp.dplr_chunkwise(*args, chunk_size=64)
    except ImportError as e:   # fla-core is a test dependency; the benchmark still runs without it
        print(f"(fla-core not importable: {e})", file=sys.stderr)
    return out


def chunk_flops(name: str, T: int, C: int = 64) -> float:
    """Matmul FLOPs of the chunkwise algorithm (per token: intra-chunk QK^T and AV, state read and write)."""
    if name == "mamba":
        k, v, heads = 16, 1, 256
    else:
        k, v, heads = K, V, H
    per_token = 2 * C * (k + v) / 2 * 2 + 4 * k * v          # causal intra-chunk (half of C^2), inter-chunk
    if name == "gated_deltanet":
        per_token += 2 * C * k + 2 * C * (k + v) + 2 * k * v  # K K^T, W and U, W @ S
    if name == "rwkv7":   # two more score matrices, the inverse, W and U0, and two more state products
        per_token += 2 * C * k + 2 * C * C / 3 + 2 * C * (k + 2 * v) + 4 * k * v
    return per_token * T * heads * B


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--models", nargs="+", default=["gla", "retnet", "gated_deltanet", "mamba"])
    p.add_argument("--budget", type=float, default=3.0, help="seconds per measurement (median of runs)")
    p.add_argument("--skip-slow", action="store_true", help="skip the recurrent and scan forms and fla's recurrent "
                   "references at the longest length")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    import seqdsl

    rate = matmul_gflops()
    print(f"# CPU forms benchmark: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"fp32 matmul {rate:.1f} GFLOP/s\n")
    print("| model | T | implementation | fwd ms | fwd tok/s | fwd+bwd ms |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for name in args.models:
        overrides = {"d_model": 128} if name == "mamba" else {"heads": H, "dk": K, "dv": V}
        op = seqdsl.compile(seqdsl.load(f"examples/{name}.seq", **overrides))
        for T in args.lengths:
            g = torch.Generator().manual_seed(0)
            x = inputs_for(name, T, g)
            rows = []
            impls = {f"seqdsl {m}": (lambda m=m: op(**xx, mode=m)[0]) for m in op.modes for xx in [x]}
            impls.update(fla_refs(name, x))
            if name != "mamba":
                impls["sdpa causal (attention)"] = lambda: torch.nn.functional.scaled_dot_product_attention(
                    *(x[n].transpose(1, 2) for n in ("q" if "q" in x else "r", "k", "v")), is_causal=True)
            for label, fn in impls.items():
                slow = ("recurrent" in label or "scan" in label) and T == max(args.lengths)
                if args.skip_slow and slow:
                    continue
                if "scan" in label and name != "mamba" and T > 4096:
                    continue   # materialises [T, K, V] states: memory-bound by design, not a target
                with torch.no_grad():
                    fwd = timeit(fn, args.budget)

                def fwd_bwd(fn=fn, label=label):
                    xs = {n: t.detach().requires_grad_(t.is_floating_point()) for n, t in x.items()}
                    x.update(xs)
                    out = fn()
                    (out[0] if isinstance(out, tuple) else out).float().sum().backward()

                both = timeit(fwd_bwd, args.budget) if "sdpa" in label or "seqdsl" in label else float("nan")
                for n, t in x.items():
                    x[n] = t.detach()
                rows.append((label, fwd, both))
                print(f"| {name} | {T} | {label} | {fwd:.1f} | {B * T / fwd * 1e3:,.0f} | "
                      f"{'-' if both != both else f'{both:.1f}'} |", flush=True)
            summary[(name, T)] = {label: fwd for label, fwd, _ in rows}
    print("\n## Targets (forward)\n")
    print("| model | chunk ms T=4096 | fastest fla ref ms | speed-up (>= 10x) | FLOP-limited ms | ratio (<= 4x) | "
          "16384 / 4096 (<= 4.5x) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        row = summary.get((name, 4096), {})
        chunk = row.get("seqdsl chunk")
        if chunk is None:
            continue
        refs = [v for k, v in row.items() if k.startswith("fla")]
        best = min(refs) if refs else float("nan")
        limit = chunk_flops(name, 4096) / (rate * 1e9) * 1e3
        long = summary.get((name, 16384), {}).get("seqdsl chunk")
        growth = f"{long / chunk:.2f}x" if long else "-"
        print(f"| {name} | {chunk:.1f} | {best:.1f} | {best / chunk:.1f}x | {limit:.2f} | {chunk / limit:.1f}x | "
              f"{growth} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
