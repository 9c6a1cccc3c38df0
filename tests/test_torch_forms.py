"""Tests of the torch form library (seqdsl.runtime.torch_forms).

Every parallel form is checked against the step loops (fp64, tight) and against
flash-linear-attention's independent naive references (they compute in fp32), on odd shapes,
with initial state, final state, packed sequences, gradients, complex and bf16 inputs, and the
extreme-gate stability case.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqdsl.runtime import (
    causal_conv_fft,
    chunk_delta,
    chunk_dplr,
    chunk_gated,
    recurrent_delta,
    recurrent_dplr,
    recurrent_gated,
    scan_dense,
    scan_diagonal,
    scan_gated,
    conv_lti,
)

F64, F32 = torch.float64, torch.float32
TOL = {torch.float64: 1e-10, torch.complex128: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-2}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative RMS error of a against the reference b."""
    a, b = a.detach().to(torch.complex128 if a.is_complex() or b.is_complex() else F64), b.detach()
    b = b.to(a.dtype)
    return ((a - b).abs().norm() / b.abs().norm().clamp_min(1e-300)).item()


def assert_close(a, b, tol, what=""):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert torch.isfinite(torch.view_as_real(a) if a.is_complex() else a).all(), f"{what}: non-finite"
    err = rel_err(a, b)
    assert err < tol, f"{what}: relative error {err:.3g} >= {tol}"


def make(B=2, T=33, H=3, K=8, V=12, dtype=F64, gates=("g", "gk", "gv"), seed=0):
    """q, k, v and log-gates in a realistic range (decays in (0.35, 1))."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=F64)
    x = dict(q=r(B, T, H, K), k=r(B, T, H, K), v=r(B, T, H, V))
    if "g" in gates:
        x["g"] = F.logsigmoid(r(B, T, H) + 3)
    if "gk" in gates:
        x["gk"] = F.logsigmoid(r(B, T, H, K) + 2)
    if "gv" in gates:
        x["gv"] = F.logsigmoid(r(B, T, H, V) + 2)
    x["initial_state"] = r(B, H, K, V)
    return {n: t.to(dtype) for n, t in x.items()}


GATE_SETS = [(), ("g",), ("gk",), ("gv",), ("g", "gk"), ("gk", "gv"), ("g", "gv")]


# ---------------------------------------------------------------------------------------------
# chunk_gated / scan_gated vs the step loop


@pytest.mark.parametrize("gates", GATE_SETS, ids=lambda g: "+".join(g) or "none")
@pytest.mark.parametrize("T", [1, 63, 65, 200])
@pytest.mark.parametrize("H", [1, 3])
def test_chunk_gated_matches_recurrent(gates, T, H):
    x = make(T=T, H=H, gates=gates)
    ref_o, ref_S = recurrent_gated(**x, scale=0.7, output_final_state=True)
    for C in (16, 64):
        o, S = chunk_gated(**x, scale=0.7, output_final_state=True, chunk_size=C)
        assert_close(o, ref_o, 1e-10, f"o C={C}")
        assert_close(S, ref_S, 1e-10, f"S C={C}")


@pytest.mark.parametrize("gates", GATE_SETS, ids=lambda g: "+".join(g) or "none")
@pytest.mark.parametrize("T", [1, 63, 200])
def test_scan_gated_matches_recurrent(gates, T):
    x = make(T=T, gates=gates)
    ref_o, ref_S = recurrent_gated(**x, scale=0.7, output_final_state=True)
    o, S = scan_gated(**x, scale=0.7, output_final_state=True)
    assert_close(o, ref_o, 1e-10, "o")
    assert_close(S, ref_S, 1e-10, "S")


def test_without_initial_or_final_state():
    x = make(T=40, gates=("gk",))
    x.pop("initial_state")
    ref_o, _ = recurrent_gated(**x)
    for fn in (chunk_gated, scan_gated):
        o, S = fn(**x)
        assert S is None
        assert_close(o, ref_o, 1e-10, fn.__name__)


# ---------------------------------------------------------------------------------------------
# chunk_delta vs the step loop


def make_delta(B=2, T=33, H=3, K=8, V=12, dtype=F64, gated=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=F64)
    x = dict(q=r(B, T, H, K), k=F.normalize(r(B, T, H, K), dim=-1), v=r(B, T, H, V),
             beta=torch.sigmoid(r(B, T, H)), initial_state=r(B, H, K, V))
    if gated:
        x["g"] = F.logsigmoid(r(B, T, H) + 3)
    return {n: t.to(dtype) for n, t in x.items()}


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("T", [1, 63, 65, 200])
@pytest.mark.parametrize("H", [1, 3])
def test_chunk_delta_matches_recurrent(gated, T, H):
    x = make_delta(T=T, H=H, gated=gated)
    ref_o, ref_S = recurrent_delta(**x, scale=0.7, output_final_state=True)
    for C in (16, 64):
        o, S = chunk_delta(**x, scale=0.7, output_final_state=True, chunk_size=C)
        assert_close(o, ref_o, 1e-10, f"o C={C}")
        assert_close(S, ref_S, 1e-10, f"S C={C}")


# ---------------------------------------------------------------------------------------------
# against flash-linear-attention's naive references (fp32 inside)


def _load_fla_naive(relpath: str):
    """Loads one of fla's pure-torch naive.py files by path: they need only torch and einops,
    and skipping the fla package's __init__ (Triton kernels, models) saves ~10 s of imports."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("fla")
    if spec is None or spec.origin is None:
        pytest.skip("fla-core is not installed")
    path = Path(spec.origin).parent / relpath
    mod_spec = importlib.util.spec_from_file_location(f"_fla_naive_{path.parent.name}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fla_naive():
    pytest.importorskip("einops")
    return dict(gla=_load_fla_naive("ops/gla/naive.py").naive_recurrent_gla,
                sgla=_load_fla_naive("ops/simple_gla/naive.py"),
                gdn=_load_fla_naive("ops/gated_delta_rule/naive.py"))


@pytest.mark.parametrize("T", [65, 200])
def test_gla_matches_fla(fla_naive, T):
    x = make(T=T, K=16, V=32, gates=("gk",), dtype=F32)
    ref_o, ref_S = fla_naive["gla"](x["q"], x["k"], x["v"], x["gk"], x["initial_state"], True)
    for fn in (recurrent_gated, chunk_gated, scan_gated):
        o, S = fn(**x, scale=16 ** -0.5, output_final_state=True)
        assert_close(o, ref_o, 2e-5, f"{fn.__name__} o")
        assert_close(S, ref_S, 2e-5, f"{fn.__name__} S")


@pytest.mark.parametrize("T", [65, 200])
def test_simple_gla_matches_fla(fla_naive, T):
    x = make(T=T, K=16, V=32, gates=("g",), dtype=F32)
    q, k, v, g, h0 = x["q"], x["k"], x["v"], x["g"], x["initial_state"]
    ref_o, ref_S = fla_naive["sgla"].naive_recurrent_simple_gla(q, k, v, g, 0.3, h0, True)
    chunk_o, chunk_S = fla_naive["sgla"].naive_chunk_simple_gla(q, k, v, g, h0, True, 64, 0.3)
    assert_close(chunk_o, ref_o, 2e-5, "fla chunk vs fla recurrent")
    for C in (16, 64):
        o, S = chunk_gated(**x, scale=0.3, output_final_state=True, chunk_size=C)
        assert_close(o, ref_o, 2e-5, "o")
        assert_close(S, ref_S, 2e-5, "S")
        assert_close(o, chunk_o, 2e-5, "o vs fla chunk")


@pytest.mark.parametrize("T", [65, 200])
@pytest.mark.parametrize("gated", [False, True])
def test_gated_delta_rule_matches_fla(fla_naive, T, gated):
    x = make_delta(T=T, K=16, V=32, dtype=F32)
    if not gated:
        x["g"] = torch.zeros_like(x["g"])
    q, k, v, beta, g, h0 = (x[n] for n in ("q", "k", "v", "beta", "g", "initial_state"))
    ref_o, ref_S = fla_naive["gdn"].naive_recurrent_gated_delta_rule(q, k, v, beta, g, 0.4, h0, True)
    chunk_o, _ = fla_naive["gdn"].naive_chunk_gated_delta_rule(q, k, v, g, beta, 64, 0.4, h0, True)
    assert_close(chunk_o, ref_o, 2e-5, "fla chunk vs fla recurrent")
    if not gated:
        x.pop("g")                                  # the ungated (plain DeltaNet) path
    for fn, C in ((recurrent_delta, None), (chunk_delta, 16), (chunk_delta, 64)):
        kw = {} if C is None else {"chunk_size": C}
        o, S = fn(**x, scale=0.4, output_final_state=True, **kw)
        assert_close(o, ref_o, 2e-5, f"{fn.__name__} o")
        assert_close(S, ref_S, 2e-5, f"{fn.__name__} S")


# ---------------------------------------------------------------------------------------------
# chunk_dplr (diagonal plus rank 1: RWKV-7, the key-gated delta rule) vs the step loop and fla


def make_dplr(B=2, T=33, H=3, K=8, V=12, dtype=F64, gates=("gk",), seed=0, strength=-3.0):
    """RWKV-7's parametrisation: a = -kh, b = kh ⊙ iclr (kh unit norm, iclr in (0, 1)); log gates in
    [strength, 0] per step (strength -100: decays far below fp32's range within a chunk)."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=F64)
    kh = F.normalize(r(B, T, H, K), dim=-1)
    x = dict(q=r(B, T, H, K), a=-kh, b=kh * torch.sigmoid(r(B, T, H, K)), k=r(B, T, H, K), v=r(B, T, H, V),
             initial_state=r(B, H, K, V))
    if "gk" in gates:
        x["gk"] = strength * torch.rand(B, T, H, K, generator=gen, dtype=F64)
    if "g" in gates:
        x["g"] = F.logsigmoid(r(B, T, H) + 3)
    return {n: t.to(dtype) for n, t in x.items()}


def naive_dplr(q, a, b, k, v, gk, initial_state, scale):
    """S_t = (diag(exp(gk_t)) + b_t a_t^T) S_{t-1} + k_t v_t^T as explicit matrices, o_t = scale S_t^T q_t."""
    S, outs = initial_state.clone(), []
    for t in range(q.shape[1]):
        A = torch.diag_embed(torch.exp(gk[:, t])) + b[:, t, :, :, None] * a[:, t, :, None, :]
        S = A @ S + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, 1), S


@pytest.mark.parametrize("gates", [(), ("g",), ("gk",), ("g", "gk")], ids=lambda g: "+".join(g) or "none")
@pytest.mark.parametrize("T", [1, 63, 65, 200])
def test_chunk_dplr_matches_recurrent(gates, T):
    x = make_dplr(T=T, gates=gates)
    gk = x.get("gk", torch.zeros_like(x["a"])) + (x["g"][..., None] if "g" in x else 0)
    ref_o, ref_S = naive_dplr(x["q"], x["a"], x["b"], x["k"], x["v"], gk, x["initial_state"], 0.7)
    for fn, kw in ((recurrent_dplr, {}), (chunk_dplr, {"chunk_size": 16}), (chunk_dplr, {"chunk_size": 64})):
        o, S = fn(**x, scale=0.7, output_final_state=True, **kw)
        assert_close(o, ref_o, 1e-10, f"{fn.__name__} {kw} o")
        assert_close(S, ref_S, 1e-10, f"{fn.__name__} {kw} S")


def test_chunk_dplr_under_strong_decays():
    """Per-step log decays down to -100: the pairwise decays are products of per-step ones, never exp of a
    difference of cumulative sums, so nothing overflows (fp32 too)."""
    for dtype, tol in ((F64, 1e-10), (F32, 2e-5)):
        x = make_dplr(T=70, strength=-100.0, dtype=dtype)
        ref_o, ref_S = naive_dplr(*(x[n].double() for n in ("q", "a", "b", "k", "v", "gk", "initial_state")), 1.0)
        o, S = chunk_dplr(**x, output_final_state=True, chunk_size=32)
        assert torch.isfinite(o).all()
        assert_close(o, ref_o, tol, f"{dtype} o")
        assert_close(S, ref_S, tol, f"{dtype} S")


@pytest.mark.parametrize("T", [65, 200])
def test_dplr_matches_fla(T):
    """fla's naive dplr_recurrence (head-first, fp32 inside, q scaled by K^-0.5)."""
    fla = _load_fla_naive("ops/generalized_delta_rule/dplr/naive.py")
    x = make_dplr(T=T, K=16, V=32, dtype=F32)
    hf = lambda t: t.transpose(1, 2).contiguous()
    ref_o, ref_S = fla.dplr_recurrence(hf(x["q"]), hf(x["k"]), hf(x["v"]), hf(x["a"]), hf(x["b"]), hf(x["gk"]),
                                       x["initial_state"], True)
    for fn, kw in ((recurrent_dplr, {}), (chunk_dplr, {"chunk_size": 16}), (chunk_dplr, {"chunk_size": 64})):
        o, S = fn(**x, scale=16 ** -0.5, output_final_state=True, **kw)
        assert_close(o, hf(ref_o), 2e-5, f"{fn.__name__} o")
        assert_close(S, ref_S, 2e-5, f"{fn.__name__} S")


# ---------------------------------------------------------------------------------------------
# packed sequences (cu_seqlens) equal separate runs

LENS = [5, 64, 1, 0, 80]          # includes an empty sequence and a whole chunk


def _pack(x, lens):
    """Packs the first len(lens) batch rows, truncated to lens, into one row."""
    return torch.cat([x[i : i + 1, :n] for i, n in enumerate(lens)], 1)


def _check_varlen(run, seqs, lens, h0, packed_kwargs):
    """run(inputs..., initial_state, cu_seqlens) on packed == per-sequence runs."""
    cu = torch.tensor([0] + lens).cumsum(0)
    o, S = run(*[_pack(x, lens) for x in seqs], initial_state=h0, cu_seqlens=cu, **packed_kwargs)
    ref_o, ref_S = [], []
    for i, n in enumerate(lens):
        oi, Si = run(*[x[i : i + 1, :n] for x in seqs], initial_state=h0[i : i + 1], **packed_kwargs)
        ref_o.append(oi)
        ref_S.append(Si)
    assert_close(o, torch.cat(ref_o, 1), 1e-10, "o")
    assert_close(S, torch.cat(ref_S, 0), 1e-10, "S")


@pytest.mark.parametrize("fn", [recurrent_gated, chunk_gated, scan_gated], ids=lambda f: f.__name__)
@pytest.mark.parametrize("gates", [("g",), ("gk", "gv")], ids=lambda g: "+".join(g))
def test_varlen_gated(fn, gates):
    N = len(LENS)
    x = make(B=N, T=max(LENS), gates=gates)
    names = ["q", "k", "v", "g", "gk", "gv"]
    seqs = [x.get(n) for n in names]
    present = [n for n in names if n in x]

    def run(*ts, **kw):
        return fn(**dict(zip(present, [t for t in ts])), output_final_state=True, **kw)

    kw = {"chunk_size": 16} if fn is chunk_gated else {}
    _check_varlen(run, [t for t in seqs if t is not None], LENS, x["initial_state"], kw)


@pytest.mark.parametrize("fn", [recurrent_delta, chunk_delta], ids=lambda f: f.__name__)
def test_varlen_delta(fn):
    N = len(LENS)
    x = make_delta(B=N, T=max(LENS))
    names = ["q", "k", "v", "beta", "g"]

    def run(*ts, **kw):
        return fn(**dict(zip(names, ts)), output_final_state=True, **kw)

    kw = {"chunk_size": 16} if fn is chunk_delta else {}
    _check_varlen(run, [x[n] for n in names], LENS, x["initial_state"], kw)


@pytest.mark.parametrize("fn", [recurrent_dplr, chunk_dplr], ids=lambda f: f.__name__)
def test_varlen_dplr(fn):
    N = len(LENS)
    x = make_dplr(B=N, T=max(LENS), gates=("g", "gk"))
    names = ["q", "a", "b", "k", "v", "g", "gk"]

    def run(*ts, **kw):
        return fn(**dict(zip(names, ts)), output_final_state=True, **kw)

    kw = {"chunk_size": 16} if fn is chunk_dplr else {}
    _check_varlen(run, [x[n] for n in names], LENS, x["initial_state"], kw)


def test_varlen_scans():
    N, n = len(LENS), 4
    gen = torch.Generator().manual_seed(1)
    b = torch.randn(N, max(LENS), 3, n, generator=gen, dtype=F64)
    a_log = -torch.rand(N, max(LENS), 3, n, generator=gen, dtype=F64)
    A = 0.4 * torch.randn(N, max(LENS), 3, n, n, generator=gen, dtype=F64)
    h0 = torch.randn(N, 3, n, generator=gen, dtype=F64)
    _check_varlen(lambda b, a, **kw: scan_diagonal(b, a_log=a, output_final_state=True, **kw),
                  [b, a_log], LENS, h0, {})
    _check_varlen(lambda A, b, **kw: scan_dense(A, b, output_final_state=True, **kw), [A, b], LENS, h0, {})
    # a time-invariant transition broadcast over the packed sequences
    A0 = A[:1, :1]
    _check_varlen(lambda b, **kw: scan_dense(A0, b, output_final_state=True, **kw), [b], LENS, h0, {})


# ---------------------------------------------------------------------------------------------
# gradients


def test_gradcheck_chunk_gated():
    x = make(B=1, T=7, H=1, K=3, V=2, gates=("g", "gk", "gv"))
    names = list(x)
    x = {n: t.requires_grad_() for n, t in x.items()}

    def f(*ts):
        o, S = chunk_gated(**dict(zip(names, ts)), scale=0.8, output_final_state=True, chunk_size=4)
        return o, S

    assert torch.autograd.gradcheck(f, tuple(x.values()))


def test_gradcheck_chunk_gated_complex():
    x = make(B=1, T=5, H=1, K=2, V=2, gates=("gk",))
    gen = torch.Generator().manual_seed(3)
    x = {n: torch.complex(t, 0.3 * torch.randn(t.shape, generator=gen, dtype=F64)).requires_grad_()
         for n, t in x.items()}
    names = list(x)
    f = lambda *ts: chunk_gated(**dict(zip(names, ts)), output_final_state=True, chunk_size=2)
    assert torch.autograd.gradcheck(f, tuple(x.values()))


def test_gradcheck_chunk_delta():
    x = make_delta(B=1, T=6, H=1, K=2, V=2)
    names = list(x)
    x = {n: t.requires_grad_() for n, t in x.items()}
    f = lambda *ts: chunk_delta(**dict(zip(names, ts)), scale=0.8, output_final_state=True, chunk_size=4)
    assert torch.autograd.gradcheck(f, tuple(x.values()))


def test_gradcheck_chunk_dplr():
    x = make_dplr(B=1, T=7, H=1, K=3, V=2, gates=("g", "gk"))
    names = list(x)
    x = {n: t.requires_grad_() for n, t in x.items()}
    f = lambda *ts: chunk_dplr(**dict(zip(names, ts)), scale=0.8, output_final_state=True, chunk_size=4)
    assert torch.autograd.gradcheck(f, tuple(x.values()))


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_gradcheck_scan_diagonal(complex_):
    gen = torch.Generator().manual_seed(2)
    dt = torch.complex128 if complex_ else F64
    b = torch.randn(2, 6, 3, generator=gen, dtype=dt).requires_grad_()
    a_log = (-torch.rand(2, 6, 3, generator=gen, dtype=F64)).to(dt)
    if complex_:
        a_log = a_log + 1j * torch.randn(2, 6, 3, generator=gen, dtype=F64)
    a_log.requires_grad_()
    h0 = torch.randn(2, 3, generator=gen, dtype=dt).requires_grad_()
    f = lambda b, a, h: scan_diagonal(b, a_log=a, initial_state=h, output_final_state=True)
    assert torch.autograd.gradcheck(f, (b, a_log, h0))


def test_gradcheck_scan_dense():
    gen = torch.Generator().manual_seed(4)
    A = (0.5 * torch.randn(1, 5, 3, 3, generator=gen, dtype=F64)).requires_grad_()
    b = torch.randn(2, 5, 3, generator=gen, dtype=F64).requires_grad_()
    h0 = torch.randn(2, 3, generator=gen, dtype=F64).requires_grad_()
    f = lambda A, b, h: scan_dense(A, b, initial_state=h, output_final_state=True)
    assert torch.autograd.gradcheck(f, (A, b, h0))


def _grads(fn, x, **kw):
    x = {n: t.detach().clone().requires_grad_() for n, t in x.items()}
    o, S = fn(**x, output_final_state=True, **kw)
    gen = torch.Generator().manual_seed(5)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() + (S * S).sum()
    loss.backward()
    return {n: t.grad for n, t in x.items()}


def test_gradients_match_recurrent():
    x = make(T=70, gates=("g", "gk", "gv"))
    ref = _grads(recurrent_gated, x, scale=0.5)
    for fn, kw in ((chunk_gated, dict(chunk_size=16)), (scan_gated, {})):
        got = _grads(fn, x, scale=0.5, **kw)
        for n in ref:
            assert_close(got[n], ref[n], 1e-9, f"{fn.__name__} d{n}")
    x = make_delta(T=70)
    ref = _grads(recurrent_delta, x, scale=0.5)
    got = _grads(chunk_delta, x, scale=0.5, chunk_size=16)
    for n in ref:
        assert_close(got[n], ref[n], 1e-9, f"chunk_delta d{n}")


# ---------------------------------------------------------------------------------------------
# complex inputs (LRU / S4D-style diagonal SSMs)


def _complexify(x, gen):
    return {n: torch.complex(t, 0.5 * torch.randn(t.shape, generator=gen, dtype=t.dtype)) for n, t in x.items()}


@pytest.mark.parametrize("gates", [("g",), ("gk",), ("gk", "gv")], ids=lambda g: "+".join(g))
def test_complex_gated(gates):
    gen = torch.Generator().manual_seed(6)
    x = _complexify(make(T=70, gates=gates), gen)
    ref_o, ref_S = recurrent_gated(**x, output_final_state=True)
    assert ref_o.dtype == torch.complex128
    for fn, kw in ((chunk_gated, dict(chunk_size=16)), (scan_gated, {})):
        o, S = fn(**x, output_final_state=True, **kw)
        assert o.dtype == S.dtype == torch.complex128
        assert_close(o, ref_o, 1e-10, f"{fn.__name__} o")
        assert_close(S, ref_S, 1e-10, f"{fn.__name__} S")


def test_complex_gate_on_real_streams():
    """S4D-like: real q / v streams, complex k and a complex diagonal key gate, complex64."""
    gen = torch.Generator().manual_seed(7)
    x = make(T=50, gates=("gk",), dtype=F32)
    x["k"] = torch.complex(x["k"], torch.randn(x["k"].shape, generator=gen))
    x["gk"] = torch.complex(x["gk"], torch.randn(x["gk"].shape, generator=gen))
    x["initial_state"] = x["initial_state"].to(torch.complex64)
    ref_o, ref_S = recurrent_gated(**{n: t.to(torch.complex128) for n, t in x.items()}, output_final_state=True)
    o, S = chunk_gated(**x, output_final_state=True, chunk_size=16)
    assert o.dtype == S.dtype == torch.complex64
    assert_close(o, ref_o, 1e-5, "o")
    assert_close(S, ref_S, 1e-5, "S")


def test_complex_scan_diagonal_matches_loop():
    gen = torch.Generator().manual_seed(8)
    B, T, n = 2, 37, 5
    b = torch.randn(B, T, n, generator=gen, dtype=torch.complex128)
    a_log = torch.complex(-torch.rand(B, T, n, generator=gen, dtype=F64),
                          torch.randn(B, T, n, generator=gen, dtype=F64))
    h0 = torch.randn(B, n, generator=gen, dtype=torch.complex128)
    h, S = scan_diagonal(b, a_log=a_log, initial_state=h0, output_final_state=True)
    ref, state = [], h0
    for t in range(T):
        state = torch.exp(a_log[:, t]) * state + b[:, t]
        ref.append(state)
    assert_close(h, torch.stack(ref, 1), 1e-12, "h")
    assert_close(S, state, 1e-12, "S")


# ---------------------------------------------------------------------------------------------
# scans against loops


@pytest.mark.parametrize("T", [1, 2, 7, 64, 100])
def test_scan_diagonal_broadcast_gates(T):
    """[B, T, H, 1, 1] scalar and [1, 1, H, K, 1] time-invariant gates on [B, T, H, K, V] states."""
    gen = torch.Generator().manual_seed(9)
    b = torch.randn(2, T, 3, 4, 5, generator=gen, dtype=F64)
    for a in (torch.rand(2, T, 3, 1, 1, generator=gen, dtype=F64), torch.rand(1, 1, 3, 4, 1, generator=gen, dtype=F64)):
        h, S = scan_diagonal(b, a=a, output_final_state=True)
        ref, state = [], torch.zeros_like(b[:, 0])
        for t in range(T):
            state = a[:, t if a.shape[1] > 1 else 0] * state + b[:, t]
            ref.append(state)
        assert_close(h, torch.stack(ref, 1), 1e-12, "h")
        assert_close(S, state, 1e-12, "S")


@pytest.mark.parametrize("time_invariant", [False, True])
def test_scan_dense_matches_loop(time_invariant):
    gen = torch.Generator().manual_seed(10)
    B, T, H, n = 2, 45, 2, 4
    A = 0.5 * torch.randn(1 if time_invariant else B, 1 if time_invariant else T, H, n, n, generator=gen, dtype=F64)
    b = torch.randn(B, T, H, n, generator=gen, dtype=F64)
    h0 = torch.randn(B, H, n, generator=gen, dtype=F64)
    h, S = scan_dense(A, b, initial_state=h0, output_final_state=True)
    ref, state = [], h0
    for t in range(T):
        At = A[:, 0] if time_invariant else A[:, t]
        state = (At @ state[..., None])[..., 0] + b[:, t]
        ref.append(state)
    assert_close(h, torch.stack(ref, 1), 1e-12, "h")
    assert_close(S, state, 1e-12, "S")


# ---------------------------------------------------------------------------------------------
# dtypes


def test_bf16_inputs_accumulate_in_fp32():
    x32 = make(B=1, T=150, H=2, K=32, V=32, gates=("gk",), dtype=F32)
    x16 = {n: t.to(torch.bfloat16) for n, t in x32.items()}
    x16["initial_state"] = x32["initial_state"]
    ref_o, ref_S = chunk_gated(**{n: t.to(F32) for n, t in x16.items()}, output_final_state=True)
    o, S = chunk_gated(**x16, output_final_state=True)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert_close(o, ref_o, 1e-2, "gla o")
    assert_close(S, ref_S, 1e-5, "gla S")      # same bf16 values, fp32 arithmetic: near exact

    d32 = make_delta(B=1, T=150, H=2, K=32, V=32, dtype=F32)
    d16 = {n: t.to(torch.bfloat16) for n, t in d32.items()}
    ref_o, ref_S = chunk_delta(**{n: t.to(F32) for n, t in d16.items()}, output_final_state=True)
    o, S = chunk_delta(**d16, output_final_state=True)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert_close(o, ref_o, 1e-2, "delta o")
    assert_close(S, ref_S, 1e-5, "delta S")


def test_fp64_states_and_bad_arguments():
    x = make(T=10, gates=("g",))
    _, S = chunk_gated(**x, output_final_state=True)
    assert S.dtype == torch.float64
    with pytest.raises(ValueError):
        chunk_gated(**x, chunk_size=24)
    with pytest.raises(ValueError):
        chunk_gated(**x, cu_seqlens=torch.tensor([0, 4, 10]))       # B = 2
    with pytest.raises(ValueError):
        scan_diagonal(x["v"], a=torch.rand(2, 10), a_log=None)


# ---------------------------------------------------------------------------------------------
# stability: extreme gates never overflow


def test_gla_extreme_gates_long_sequence():
    """Key-axis log-gates uniform in [-30, 0], T = 8192: no NaN / Inf, matches the step loop."""
    gen = torch.Generator().manual_seed(11)
    B, T, H, K, V = 1, 8192, 1, 16, 16
    q, k, v = (torch.randn(B, T, H, D, generator=gen) for D in (K, K, V))
    gk = -30 * torch.rand(B, T, H, K, generator=gen)
    ref_o, ref_S = recurrent_gated(q.double(), k.double(), v.double(), gk=gk.double(), output_final_state=True)
    o, S = chunk_gated(q, k, v, gk=gk, output_final_state=True)
    assert_close(o, ref_o, 1e-5, "o")
    assert_close(S, ref_S, 1e-5, "S")


def test_scalar_and_delta_extreme_gates():
    gen = torch.Generator().manual_seed(12)
    B, T, H, K, V = 1, 1000, 2, 16, 16
    q, v = torch.randn(B, T, H, K, generator=gen), torch.randn(B, T, H, V, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    g = -30 * torch.rand(B, T, H, generator=gen)
    beta = torch.rand(B, T, H, generator=gen)
    ref_o, _ = recurrent_gated(q.double(), k.double(), v.double(), g=g.double())
    assert_close(chunk_gated(q, k, v, g=g)[0], ref_o, 1e-5, "scalar gate")
    ref_o, _ = recurrent_delta(q.double(), k.double(), v.double(), beta.double(), g.double())
    assert_close(chunk_delta(q, k, v, beta, g)[0], ref_o, 1e-5, "delta")


def test_extreme_gates_backward_is_finite():
    gen = torch.Generator().manual_seed(13)
    B, T, H, K, V = 1, 256, 1, 8, 8
    x = dict(q=torch.randn(B, T, H, K, generator=gen), k=torch.randn(B, T, H, K, generator=gen),
             v=torch.randn(B, T, H, V, generator=gen), gk=-30 * torch.rand(B, T, H, K, generator=gen),
             g=-30 * torch.rand(B, T, H, generator=gen))
    x = {n: t.requires_grad_() for n, t in x.items()}
    o, S = chunk_gated(**x, output_final_state=True)
    (o.sum() + S.sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in x.values())
    beta = torch.rand(B, T, H, generator=gen).requires_grad_()
    kn = F.normalize(x["k"].detach(), dim=-1).requires_grad_()
    o, S = chunk_delta(x["q"], kn, x["v"], beta, x["g"], output_final_state=True)
    (o.sum() + S.sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in (beta, kn, x["g"]))


# ---------------------------------------------------------------------------------------------
# slabs and edge cases


def test_many_slabs(monkeypatch):
    """The chunk forms work through the sequence in slabs of chunks; force a few chunks per
    slab (several slabs) and check dense and packed batches still match the step loop."""
    from seqdsl.runtime import torch_forms

    monkeypatch.setattr(torch_forms, "_SLAB_ELEMENTS", 2 * 16 * 16 * 12)
    x = make(T=150, gates=("g", "gk", "gv"))
    ref = recurrent_gated(**x, output_final_state=True)
    got = chunk_gated(**x, output_final_state=True, chunk_size=16)
    for a, b, n in zip(got, ref, "oS"):
        assert_close(a, b, 1e-10, f"gated {n}")
    d = make_delta(T=150)
    ref = recurrent_delta(**d, output_final_state=True)
    got = chunk_delta(**d, output_final_state=True, chunk_size=16)
    for a, b, n in zip(got, ref, "oS"):
        assert_close(a, b, 1e-10, f"delta {n}")
    test_varlen_gated(chunk_gated, ("gk", "gv"))
    test_varlen_delta(chunk_delta)


def test_empty_sequence():
    x = make(T=0, gates=("gk",))
    for fn in (recurrent_gated, chunk_gated, scan_gated):
        o, S = fn(**x, output_final_state=True)
        assert o.shape == (2, 0, 3, 12)
        assert_close(S, x["initial_state"], 1e-15, fn.__name__)
    d = make_delta(T=0)
    for fn in (recurrent_delta, chunk_delta):
        o, S = fn(**d, output_final_state=True)
        assert o.shape == (2, 0, 3, 12)
        assert_close(S, d["initial_state"], 1e-15, fn.__name__)


# ---------------------------------------------------------------------------------------------- conv
@pytest.mark.parametrize("kind", ["real", "negative", "complex"])
@pytest.mark.parametrize("T", [1, 37, 130])
def test_conv_lti_matches_the_step_loop(kind, T):
    """h_t = a h_{t-1} + c u_t^T, o_t = h_t^T q: FFT convolution form vs the plain loop (fp64)."""
    g = torch.Generator().manual_seed(T)
    B, H, K, V = 2, 3, 5, 4
    a = torch.rand(H, K, generator=g, dtype=F64) * 0.9 + 0.05
    if kind == "negative":
        a = a * torch.where(torch.rand(H, K, generator=g) < 0.5, -1.0, 1.0).to(F64)
    dt = torch.complex128 if kind == "complex" else F64
    if kind == "complex":
        a = a * torch.exp(1j * torch.rand(H, K, generator=g, dtype=F64) * 3)
    c = torch.randn(H, K, generator=g, dtype=F64).to(dt)
    q = torch.randn(H, K, generator=g, dtype=F64).to(dt)
    u = torch.randn(B, T, H, V, generator=g, dtype=F64)
    h0 = torch.randn(B, H, K, V, generator=g, dtype=F64).to(dt)
    h = h0.clone()
    outs, whole = [], []
    for t in range(T):
        h = a[None, :, :, None] * h + c[None, :, :, None] * u[:, t, :, None, :]
        outs.append(torch.einsum("bhkv,hk->bhv", h, q))
        whole.append(h)
    o, final = conv_lti(a, c, u, q=q, initial_state=h0, output_final_state=True)
    assert rel_err(o, torch.stack(outs, 1)) < 1e-12 and rel_err(final, h) < 1e-12
    o_whole, _ = conv_lti(a, c, u, q=None, initial_state=h0)
    assert rel_err(o_whole, torch.stack(whole, 1)) < 1e-12


def test_causal_conv_fft_is_causal_and_matches_direct_sums():
    g = torch.Generator().manual_seed(0)
    kernel, u = torch.randn(50, 3, generator=g, dtype=F64), torch.randn(2, 50, 3, generator=g, dtype=F64)
    direct = torch.stack([sum(kernel[t - s] * u[:, s] for s in range(t + 1)) for t in range(50)], 1)
    assert rel_err(causal_conv_fft(kernel, u), direct) < 1e-13
