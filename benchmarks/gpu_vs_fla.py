"""GPU timings: seqdsl's generated Triton forms next to flash-linear-attention's kernels and SDPA.

    python benchmarks/gpu_vs_fla.py [--shapes 0 2 4] [--reps 10] [--no-backward] [--forms chunk]
                                    [--max-ms 2000] [--budget-s 300] [--no-agreement] [--smoke]

At fla's benchmark shapes (B, T, H, D) = (1, 8192, 96, 128), (2, 16384, 16, 128), (4, 2048, 16, 128),
(4, 4096, 64, 128), (8, 1024, 8, 64), (8, 2048, 32, 256), bf16 inputs, it times forward and
forward+backward (median of --reps runs, CUDA events) of:

* simple GLA (a data-dependent scalar gate, written below as a spec) vs fla ``chunk_simple_gla``;
* GLA (examples/gla.seq) vs fla ``chunk_gla``;
* DeltaNet / Gated DeltaNet (examples) vs fla ``chunk_delta_rule`` / ``chunk_gated_delta_rule``;
* RWKV-7's recurrence (examples/rwkv7.seq's op: diagonal plus rank 1) vs fla ``chunk_dplr_delta_rule``
  (not among the issue's targets: seqdsl's DPLR chunk kernel is a fused one, sized for correctness first);
* Mamba (examples/mamba.seq, d_inner = H * D channels, n = 16) vs mamba_ssm's ``selective_scan_fn``
  where it is installed;
* HGRN's recurrence h_t = exp(g_t) h_{t-1} + x_t (an elementwise gated vector state over H * D channels,
  written below as a spec; the class of Hawk, LRU, QRNN) vs fla ``fused_recurrent_hgrn`` and ``chunk_hgrn``:
  the generated fused scan and recurrent kernels against hand-written ones of the same class;
* causal ``torch.nn.functional.scaled_dot_product_attention`` at the same (B, T, H, D).

Beside each reference row, a row says how far seqdsl's timed form is from the reference kernel on the same inputs
(``agreement``: relative RMS difference of the output, and the worst over the input gradients of a random projection
of it), so that no row times a wrong result at these shapes (``--no-agreement`` leaves them out).

seqdsl runs every Triton form of each spec: the fused ``recurrent`` kernel, and ``chunk`` where the
Triton backend has one (gated classes, and the delta rule with a scalar gate or none; Mamba's vector
state runs it with one head per state element), and ``scan`` where the torch scan is a diagonal
recurrence: one fused kernel for vector states (Mamba, HGRN: the cell evaluated and scanned in registers, a block
of tokens at a time), else seqdsl.runtime.triton_scan over per-token updates made in torch (a matrix state's
scan, GLA's: timed for completeness where those fit in ``--max-scan-gb``). Backward: Triton kernels
for every chunk form's stages (ungated, scalar- and key-gated states, the delta rule through its WY / UT
stage), for the scan's recurrence (the same kernel backwards in time) and for the recurrent form (the
generated reverse-mode kernel, codegen/triton_backward.py); the token-parallel preparation of each spec
differentiates through torch. ``--backward-forms`` chooses which forms' forward+backward is timed. The op
computes in fp32 from bf16 inputs (DESIGN §6).

Without a CUDA GPU (or under TRITON_INTERPRET=1) it says so and exits 0. ``--smoke`` runs the seqdsl
and SDPA rows on CPU under the Triton interpreter at one tiny shape (a check that the script works;
the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore")

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHAPES = [(1, 8192, 96, 128), (2, 16384, 16, 128), (4, 2048, 16, 128), (4, 4096, 64, 128), (8, 1024, 8, 64),
          (8, 2048, 32, 256)]

SIMPLE_GLA = """
model simple_gla(d_model = 64, heads = 4, dk = 64, dv = 64):
  streams:
    q: [heads, dk] = linear(x)
    k: [heads, dk] = linear(x)
    v: [heads, dv] = linear(x)
    g: [heads] = logsigmoid(linear(x))
  cell over heads:
    arg scale = dk ** -0.5
    state S: [dk, dv] = 0
    S <- exp(g) * S + outer(k, v)
    o = (q * scale) @ S
"""


HGRN = """
model hgrn_core(d_model = 64):
  streams:
    i: [d_model] = linear(x)
    g: [d_model] = logsigmoid(linear(x))
  cell:
    state h: [d_model] = 0
    h <- exp(g) * h + i
    o = h
"""


def bench(fn, reps: int, max_ms: float = float("inf")) -> str:
    """Median milliseconds of fn() over reps runs, timed with CUDA events, after a warm-up call (which
    compiles). A call slower than max_ms is timed once and reported with '*' (one run)."""
    import torch

    fn()
    cuda = torch.cuda.is_available()

    def once() -> float:
        if not cuda:                               # --smoke
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)

    first = once()
    if first > max_ms:
        return f"{first:.0f}*"
    return f"{statistics.median([once() for _ in range(reps)]):.2f}"


def timed(make, reps: int, backward: bool, max_ms: float = float("inf")) -> tuple[str, str]:
    """(forward ms, forward+backward ms) of make() -> (run, inputs needing grads); errors reported."""
    import torch

    def fmt(f):
        try:
            return f()
        except Exception as e:  # noqa: BLE001 - report OOM / unsupported and go on
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return f"error: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:60]}"

    run, grads = make()

    def forward():
        with torch.no_grad():
            run()

    def both():
        out = run()
        out = out[0] if isinstance(out, tuple) else out
        out.float().sum().backward()
        for t in grads:
            t.grad = None

    fwd = fmt(lambda: bench(forward, reps, max_ms))
    bwd = fmt(lambda: bench(both, reps, max_ms)) if backward else "-"
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return fwd, bwd


def unfused_scan_gb(op, form: str, B: int, T: int) -> float:
    """GB of per-token states the ``form`` of a compiled op materialises in torch: B x T x the states of one
    sequence in fp32 for a scan that is not one fused kernel (``SCAN`` of the module), else 0. GLA's [K, V] state at
    B 4, T 2048, H 16, D 128: 8.6 GB per tensor, and the scan makes several."""
    if form != "scan" or getattr(op.module, "SCAN", None) == "fused":
        return 0.0
    return B * T * op.state_numbers_per_sequence() * 4 / 1e9


def agreement(make_ours, make_reference, seed: int = 7) -> tuple[str, str]:
    """How far seqdsl's results are from the reference kernel's on the same inputs: (relative RMS difference of the
    first output, the largest relative RMS difference over the input gradients, named). ``make_*(seed)`` -> (run,
    inputs needing grads), both drawing their inputs from a generator seeded with ``seed``; the gradients are of a
    fixed random projection of the first output. A timing is only worth as much as the result it times: at the
    benchmark's shapes nothing else compares the two (the GPU tests run smaller ones)."""
    import torch

    def results(make):
        run, leaves = make(seed)
        out = run()
        out = (out[0] if isinstance(out, tuple) else out).float()
        w = torch.randn(out.shape, generator=torch.Generator(device=out.device).manual_seed(seed + 1),
                        device=out.device)
        grads = torch.autograd.grad((out * w).sum(), list(leaves), allow_unused=True)
        return out.detach(), [None if gr is None else gr.float() for gr in grads]

    def rel(a, b) -> float:
        return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30)).item()

    try:
        o_ours, g_ours = results(make_ours)
        o_ref, g_ref = results(make_reference)
    except Exception as e:  # noqa: BLE001 - report and go on, as timed() does
        return f"error: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:60]}", "-"
    if o_ours.shape != o_ref.shape:
        return f"shapes differ: {tuple(o_ours.shape)} vs {tuple(o_ref.shape)}", "-"
    worst = max(((rel(a, b), i) for i, (a, b) in enumerate(zip(g_ours, g_ref)) if a is not None and b is not None),
                default=None)
    grads = "-" if worst is None else f"{worst[0]:.1e} (input {worst[1]})"
    return f"{rel(o_ours, o_ref):.1e}", grads


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", type=int, nargs="*", default=list(range(len(SHAPES))),
                        help="indices into the shape list (default: all)")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--forms", nargs="*", help="seqdsl forms to time (default: every form each op has)")
    parser.add_argument("--backward-forms", nargs="*",
                        help="seqdsl forms whose forward+backward is timed (default: all of --forms)")
    parser.add_argument("--max-ms", type=float, default=float("inf"),
                        help="a call slower than this is timed once and marked '*'")
    parser.add_argument("--budget-s", type=float, default=float("inf"),
                        help="stop timing after this many seconds (later rows say 'not run')")
    parser.add_argument("--no-reference", action="store_true",
                        help="only seqdsl's rows (and SDPA's): no fla or mamba_ssm rows (a second, tuned pass)")
    parser.add_argument("--max-scan-gb", type=float, default=4.0,
                        help="skip a scan form that is not one fused kernel where its per-token states (B x T x the "
                             "state, fp32) pass this many GB: at fla's shapes a matrix state's run out of memory")
    parser.add_argument("--no-agreement", action="store_true",
                        help="no rows comparing seqdsl's output and gradients with the reference kernel's")
    parser.add_argument("--smoke", action="store_true", help="tiny shape on CPU under TRITON_INTERPRET=1")
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"

    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_vs_fla: no CUDA GPU here; nothing to time (the Triton kernels are tested on CPU under "
              "TRITON_INTERPRET=1 by tests/test_triton_backend.py).")
        return 0
    if not args.smoke and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("gpu_vs_fla: TRITON_INTERPRET is set; unset it to time compiled kernels.")
        return 0

    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT))
    import seqdsl

    fla_ops = selective_scan_fn = None
    if not args.smoke:
        try:
            import fla.ops as fla_ops
        except ImportError:
            pass
    fla_note = ""
    if fla_ops is not None:
        # fla refuses its gated chunk backward on Hopper with Triton >= 3.4, < 3.7.1 (a Triton miscompile, fla
        # #640: wrong gradients). To time it anyway (the work is the same), lift the guard and say so.
        from fla.ops.common import chunk_o

        if getattr(chunk_o, "IS_NVIDIA_HOPPER", False) and getattr(chunk_o, "TRITON_ABOVE_3_4_0", False) \
                and not getattr(chunk_o, "TRITON_ABOVE_3_7_1", True):
            chunk_o.TRITON_ABOVE_3_7_1 = True
            fla_note = " †"
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        except ImportError:
            pass

    dev, bf16 = ("cpu" if args.smoke else "cuda"), torch.bfloat16
    shapes = [(1, 40, 2, 16)] if args.smoke else [SHAPES[i] for i in args.shapes]
    where = "CPU, TRITON_INTERPRET=1 (smoke run)" if args.smoke else torch.cuda.get_device_name()
    print(f"# seqdsl Triton forms vs fla and SDPA on {where} (bf16 inputs, median of {args.reps}, ms)\n")
    print("| B, T, H, D | op | implementation | form | fwd | fwd+bwd |")
    print("|---|---|---|---|---|---|")
    backward = not args.no_backward

    began = time.time()

    def measure(make, form=None, forward_only=False):
        if time.time() - began > args.budget_s:
            return "not run (budget)", "-"
        with_bwd = backward and not forward_only and (form is None or args.backward_forms is None
                                                      or form in args.backward_forms)
        fwd, bwd = timed(make, args.reps, with_bwd, args.max_ms)
        return fwd, (bwd if with_bwd or not backward else "not timed")

    def chosen(forms):
        return [f for f in forms if (not args.forms or f in args.forms) and phase == "seqdsl"]

    def row(shape, op, impl, form, times):
        print(f"| {shape} | {op} | {impl} | {form} | {times[0]} | {times[1]} |", flush=True)

    def ours(shape, name, op, forms, make, B, T):
        """seqdsl's rows of op ``name``: each chosen form timed (``make(True, form=form)`` -> (run, inputs)), but for
        a scan that is not one fused kernel where the per-token states it materialises would pass --max-scan-gb."""
        for form in chosen(forms):
            too_big = unfused_scan_gb(op, form, B, T)
            if too_big > args.max_scan_gb:
                row(shape, name, "seqdsl", form, (f"not run: the unfused scan materialises {too_big:.0f} GB of "
                                                  "per-token states (--max-scan-gb)", "-"))
                continue
            row(shape, name, "seqdsl", form, measure(lambda: make(True, form=form), form))

    def compare(shape, op, reference, form, make):
        """A row of how far seqdsl's ``form`` is from the reference kernel on the same inputs (``agreement``):
        make(ours) -> (run, inputs needing grads), drawing from the shape's generator ``g``."""
        if args.no_agreement or time.time() - began > args.budget_s:
            return
        def seeded(ours):
            return lambda seed: (g.manual_seed(seed), make(ours))[1]
        row(shape, op, f"seqdsl vs {reference}: rel. RMS difference of o | worst input gradient", form,
            agreement(seeded(True), seeded(False)))

    # seqdsl's rows (and SDPA) for every shape first, then the reference kernels: fla's first calls
    # autotune every configuration of every kernel, minutes that should not cost our rows
    for phase in ("seqdsl",) if args.no_reference else ("seqdsl", "reference"):
        for B, T, H, D in shapes:
            shape = f"{B}, {T}, {H}, {D}"
            g = torch.Generator(device=dev).manual_seed(0)

            def rnd(*s, dtype=bf16, grad=True):
                return torch.randn(*s, generator=g, device=dev, dtype=dtype).requires_grad_(grad)

            def qkv():
                q, k, v = rnd(B, T, H, D), rnd(B, T, H, D), rnd(B, T, H, D)
                return q, k, v

            def seqdsl_op(model):
                op = seqdsl.compile(model, backend="triton")
                return op, op.modes

            # ---- simple GLA
            m = seqdsl.loads(SIMPLE_GLA, name="simple_gla").with_hparams(heads=H, dk=D, dv=D)
            op, forms = seqdsl_op(m)

            def make_simple(ours=True, form="chunk"):
                q, k, v = qkv()
                gate = F.logsigmoid(rnd(B, T, H, dtype=torch.float32, grad=False)).requires_grad_(True)
                if ours:
                    return (lambda: op(q=q, k=k, v=v, g=gate, mode=form)), (q, k, v, gate)
                return (lambda: fla_ops.chunk_simple_gla(q, k, v, g=gate)), (q, k, v, gate)

            ours(shape, "simple_gla", op, forms, make_simple, B, T)
            if fla_ops and phase == "reference":
                row(shape, "simple_gla", "fla chunk_simple_gla" + fla_note, "chunk",
                    measure(lambda: make_simple(False)))
                compare(shape, "simple_gla", "fla", "chunk", make_simple)

            # ---- GLA
            m = seqdsl.load(ROOT / "examples/gla.seq").with_hparams(heads=H, dk=D, dv=D)
            op, forms = seqdsl_op(m)

            def make_gla(ours=True, form="chunk"):
                q, k, v = qkv()
                gk = (F.logsigmoid(rnd(B, T, H, D, dtype=torch.float32, grad=False)) / 16).requires_grad_(True)
                if ours:
                    return (lambda: op(q=q, k=k, v=v, gk=gk, mode=form)), (q, k, v, gk)
                return (lambda: fla_ops.chunk_gla(q, k, v, g=gk)), (q, k, v, gk)

            ours(shape, "gla", op, forms, make_gla, B, T)
            if phase == "seqdsl":
                # what the op's lift to fp32 alone costs: part of the recurrent and scan rows above (fla
                # reads bf16); the chunk form reads q, k, v as given (the module's PASSTHROUGH_INPUTS). The
                # backward casts their gradients back, about as much again
                def make_lift():
                    q, k, v = qkv()
                    return (lambda: (q.float(), k.float(), v.float())), ()

                row(shape, "gla", "seqdsl's bf16 -> fp32 input copies alone", "-",
                    measure(make_lift, forward_only=True))
            if fla_ops and phase == "reference":
                row(shape, "gla", "fla chunk_gla" + fla_note, "chunk", measure(lambda: make_gla(False)))
                compare(shape, "gla", "fla", "chunk", make_gla)

            # ---- DeltaNet / Gated DeltaNet
            for name in ("deltanet", "gated_deltanet"):
                m = seqdsl.load(ROOT / f"examples/{name}.seq").with_hparams(heads=H, dk=D, dv=D)
                op, forms = seqdsl_op(m)

                def make_delta(ours=True, name=name, op=op, form="recurrent"):
                    q, v = rnd(B, T, H, D), rnd(B, T, H, D)
                    k = F.normalize(rnd(B, T, H, D, grad=False).float(), dim=-1).to(bf16).requires_grad_(True)
                    beta = torch.sigmoid(rnd(B, T, H, grad=False)).requires_grad_(True)
                    gate = F.logsigmoid(rnd(B, T, H, dtype=torch.float32, grad=False)).requires_grad_(True)
                    extra = {"g": gate} if name == "gated_deltanet" else {}
                    grads = (q, k, v, beta) + tuple(extra.values())
                    if ours:
                        return (lambda: op(q=q, k=k, v=v, beta=beta, **extra, mode=form)), grads
                    if name == "deltanet":
                        return (lambda: fla_ops.chunk_delta_rule(q, k, v, beta)), grads
                    return (lambda: fla_ops.chunk_gated_delta_rule(q, k, v, gate, beta)), grads

                ours(shape, name, op, forms, make_delta, B, T)
                if fla_ops and phase == "reference":
                    fla_name = "chunk_delta_rule" if name == "deltanet" else "chunk_gated_delta_rule"
                    row(shape, name, f"fla {fla_name}" + fla_note, "chunk", measure(lambda: make_delta(False)))
                    compare(shape, name, "fla", "chunk", lambda ours: make_delta(ours, form="chunk"))

            # ---- Mamba (selective scan): d_inner = H * D channels, n = 16
            Dn, n = H * D, 16
            m = seqdsl.load(ROOT / "examples/mamba.seq").with_hparams(d_model=Dn // 2, n=n)
            op, forms = seqdsl_op(m)

            def make_mamba(ours=True, form="recurrent"):
                u = rnd(B, T, Dn)
                delta = F.softplus(rnd(B, T, Dn, grad=False).float() - 4).to(bf16).requires_grad_(True)
                Bm, Cm = rnd(B, T, n), rnd(B, T, n)
                A_log = torch.log(torch.arange(1, n + 1.0, device=dev)).repeat(Dn, 1).requires_grad_(True)
                Dp = torch.ones(Dn, device=dev, requires_grad=True)
                grads = (u, delta, Bm, Cm, A_log, Dp)
                if ours:
                    return (lambda: op(u=u, delta=delta, B=Bm, C=Cm, A_log=A_log, D=Dp, mode=form)), grads
                A = -torch.exp(A_log)
                return (lambda: selective_scan_fn(u.transpose(1, 2), delta.transpose(1, 2), A, Bm.transpose(1, 2)[:, None],
                                                  Cm.transpose(1, 2)[:, None], Dp).transpose(1, 2)), grads

            ours(shape, "mamba", op, forms, make_mamba, B, T)
            if phase == "seqdsl":
                pass
            elif selective_scan_fn is not None:
                row(shape, "mamba", "mamba_ssm selective_scan_fn", "scan",
                    measure(lambda: make_mamba(False)))
                compare(shape, "mamba", "mamba_ssm", "scan", lambda ours: make_mamba(ours, form="scan"))
            else:
                row(shape, "mamba", "mamba_ssm selective_scan_fn", "-", ("not installed", "-"))

            # ---- HGRN's recurrence: H * D channels, each an exp(g)-gated scalar state
            m = seqdsl.loads(HGRN, name="hgrn_core").with_hparams(d_model=H * D)
            op, forms = seqdsl_op(m)

            def make_hgrn(ours=True, form="scan", fla_kernel="chunk"):
                x = rnd(B, T, H * D)
                gate = F.logsigmoid(rnd(B, T, H * D, grad=False).float()).to(bf16).requires_grad_(True)
                if ours:
                    return (lambda: op(i=x, g=gate, mode=form)), (x, gate)
                from fla.ops.hgrn import chunk_hgrn, fused_recurrent_hgrn

                fn = chunk_hgrn if fla_kernel == "chunk" else fused_recurrent_hgrn
                return (lambda: fn(x, gate)), (x, gate)

            ours(shape, "hgrn", op, forms, make_hgrn, B, T)
            if fla_ops and phase == "reference":
                for kernel in ("fused_recurrent", "chunk"):
                    row(shape, "hgrn", f"fla {kernel}_hgrn", kernel,
                        measure(lambda: make_hgrn(False, fla_kernel=kernel)))
                compare(shape, "hgrn", "fla chunk_hgrn", "scan", make_hgrn)

            # ---- SDPA
            def make_sdpa():
                q, k, v = (t.transpose(1, 2) for t in qkv())
                return (lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)), ()

            if phase == "seqdsl":
                row(shape, "attention", "torch SDPA (causal)", "-", measure(make_sdpa))

            # ---- RWKV-7's recurrence (diagonal plus rank 1): the op of examples/rwkv7.seq
            m = seqdsl.load(ROOT / "examples/rwkv7.seq").with_hparams(heads=H, dk=D, dv=D)
            op, forms = seqdsl_op(m)

            def make_rwkv7(ours=True, form="chunk"):
                r, k, v = qkv()
                kh = F.normalize(rnd(B, T, H, D, grad=False).float(), dim=-1)
                a = (-kh).to(bf16).requires_grad_(True)
                b = (kh * torch.sigmoid(rnd(B, T, H, D, grad=False).float())).to(bf16).requires_grad_(True)
                w = (-0.6065 * torch.sigmoid(rnd(B, T, H, D, dtype=torch.float32, grad=False))).requires_grad_(True)
                grads = (r, k, v, a, b, w)
                if ours:
                    return (lambda: op(r=r, w=w, k=k, v=v, a=a, b=b, mode=form)), grads
                return (lambda: fla_ops.chunk_dplr_delta_rule(r, k, v, a, b, w, scale=1.0)), grads

            ours(shape, "rwkv7", op, forms, make_rwkv7, B, T)
            if fla_ops and phase == "reference":
                row(shape, "rwkv7", "fla chunk_dplr_delta_rule", "chunk", measure(lambda: make_rwkv7(False)))
                if "chunk" in forms:
                    compare(shape, "rwkv7", "fla", "chunk", make_rwkv7)
    print("\n'*': one run (slower than --max-ms). 'not timed': left out by --backward-forms. 'rel. RMS difference'"
          " rows: seqdsl's form and the reference kernel on the same bf16 inputs, the first output and the gradients of"
          " a random projection of it (inputs in the order the row's ops take them); bf16 rounding alone gives ~1e-3"
          " to 1e-2.")
    if fla_note:
        import triton

        print(f"†: fla's gated chunk backward raises on Hopper with Triton {triton.__version__} (>= 3.4, < 3.7.1 "
              "miscompiles it, fla #640); its guard was lifted to time it, so its gradients here may be wrong.")
    print_tuning()
    return 0


def print_tuning() -> None:
    """What seqdsl's launch-time tuner (seqdsl.runtime.triton_tune) chose on the warm-up calls, kernel by kernel:
    the next policy's defaults should come from these (SEQDSL_AUTOTUNE=0 times the policy alone)."""
    from seqdsl.runtime import triton_tune

    made = triton_tune.choices()
    if not made:
        print("\nseqdsl's tuner made no choice (SEQDSL_AUTOTUNE=0, or no tuned kernel ran).")
        return
    print(f"\n## seqdsl's launch-time tuning ({len(made)} choices; ms per candidate, 'policy' = the launch policy's)\n")
    print("| kernel | key | policy | chosen | candidates |\n|---|---|---|---|---|")
    for c in made:
        cands = ", ".join(f"{alt or 'policy'}: {ms if isinstance(ms, str) else f'{ms:.3f}'}" for alt, ms in c["ms"])
        cands = cands or f"({c['source']}: no timings)"
        print(f"| {c['kernel']} | {c['key']} | {c['policy']} | {c['chosen'] or 'policy'} | {cands} |")


if __name__ == "__main__":
    sys.exit(main())
