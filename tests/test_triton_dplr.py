"""The Triton DPLR chunk kernels (seqdsl.runtime.triton_dplr, RWKV-7's chunk form) under the interpreter, against
the torch step loop recurrent_dplr (itself checked against explicit transition matrices and fla's dplr_recurrence in
test_torch_forms.py): outputs, final states and the gradients of every input and of the initial state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT

from seqdsl.codegen import triton_module
from seqdsl.runtime import recurrent_dplr, triton_dplr
from seqdsl.runtime.triton_chunk import chunk_dplr

F64, F32 = torch.float64, torch.float32


def make(B, T, H, K, V, dtype, strength=2.0, seed=0, gates=("gk",)):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=F64)  # noqa: E731
    kh = F.normalize(r(B, T, H, K), dim=-1)
    x = dict(q=r(B, T, H, K), a=-kh, b=kh * torch.sigmoid(r(B, T, H, K)), k=r(B, T, H, K), v=r(B, T, H, V))
    if "gk" in gates:
        x["gk"] = -strength * torch.rand(B, T, H, K, generator=gen, dtype=F64)
    if "g" in gates:
        x["g"] = F.logsigmoid(r(B, T, H) + 2)
    return {n: t.to(dtype) for n, t in x.items()}


def run(fn, x, h0, weights, **kw):
    """(o, S, gradients) of sum(o * w_o) + sum(S * w_S)."""
    xs = {n: t.clone().requires_grad_() for n, t in x.items()}
    hs = None if h0 is None else h0.clone().requires_grad_()
    o, S = fn(**xs, initial_state=hs, output_final_state=True, **kw)
    ((o * weights[0].to(o.dtype)).sum() + (S * weights[1].to(S.dtype)).sum()).backward()
    grads = {n: t.grad for n, t in xs.items()}
    if hs is not None:
        grads["h0"] = hs.grad
    return o.detach(), S.detach(), grads


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("B,T,H,K,V,gates,h0", [
    (1, 1, 1, 5, 3, ("gk",), True),            # one token, dims below the 16-wide blocks
    (2, 33, 2, 8, 12, ("gk",), True),          # a partial last chunk, K != V
    (1, 40, 2, 7, 9, ("g", "gk"), False),      # both gates, no initial state, non-powers of two
    (1, 20, 1, 8, 8, ("g",), True),            # a scalar gate only
    (1, 20, 1, 8, 8, (), True),                # no gate
    (2, 21, 1, 8, 70, ("gk",), True),          # three value tiles of 32 (the key-side gradients summed over them)
    (1, 20, 1, 40, 8, ("gk",), True),          # two key blocks of 32 in the intra-chunk stage, the second partial
    (1, 18, 1, 130, 8, ("gk",), False),        # K past 128: a [256, BV] state block in the state passes
])
def test_fp64_forward_and_gradients_match_the_step_loop(B, T, H, K, V, gates, h0):
    x = make(B, T, H, K, V, F64, gates=gates)
    gen = torch.Generator().manual_seed(7)
    h = torch.randn(B, H, K, V, generator=gen, dtype=F64) if h0 else None
    weights = (torch.randn(B, T, H, V, generator=gen, dtype=F64), torch.randn(B, H, K, V, generator=gen, dtype=F64))
    o_ref, S_ref, g_ref = run(recurrent_dplr, x, h, weights, scale=0.6)
    o, S, grads = run(chunk_dplr, x, h, weights, scale=0.6)
    assert rel(o, o_ref) < 1e-12 and rel(S, S_ref) < 1e-12
    for n in g_ref:
        assert rel(grads[n], g_ref[n]) < 1e-11, n


def test_fp32_under_strong_decays_stays_finite_and_accurate():
    """Log decays down to -100 per token and K = V = 64 (RWKV-7's head): every exponent the kernels take is of a
    sum of log gates between two tokens, so nothing overflows."""
    x = make(2, 70, 2, 64, 64, F32, strength=100.0, seed=3)
    gen = torch.Generator().manual_seed(8)
    h = torch.randn(2, 2, 64, 64, generator=gen)
    weights = (torch.randn(2, 70, 2, 64, generator=gen, dtype=F64), torch.randn(2, 2, 64, 64, generator=gen, dtype=F64))
    o_ref, S_ref, g_ref = run(recurrent_dplr, {n: t.double() for n, t in x.items()}, h.double(), weights, scale=0.5)
    o, S, grads = run(chunk_dplr, x, h, weights, scale=0.5)
    assert rel(o, o_ref) < 1e-5 and rel(S, S_ref) < 1e-5
    for n in g_ref:
        assert torch.isfinite(grads[n]).all(), n
        assert rel(grads[n], g_ref[n]) < 2e-4, n


def test_packed_sequences_equal_separate_runs_with_their_gradients():
    lens = [7, 1, 23, 16]
    x = make(1, sum(lens), 2, 8, 40, F64, gates=("g", "gk"))      # two value tiles
    h0 = torch.randn(len(lens), 2, 8, 40, dtype=F64)
    cu = torch.tensor([0] + lens).cumsum(0)
    gen = torch.Generator().manual_seed(9)
    weights = (torch.randn(1, sum(lens), 2, 40, generator=gen, dtype=F64),
               torch.randn(len(lens), 2, 8, 40, generator=gen, dtype=F64))
    o, S, grads = run(chunk_dplr, x, h0, weights, cu_seqlens=cu)

    def separately(**x_):                                  # the step loop, one sequence at a time
        outs, finals = [], []
        for i in range(len(lens)):
            part = {n: t[:, cu[i]:cu[i + 1]] for n, t in x_.items() if n != "initial_state"}
            o_i, S_i = recurrent_dplr(**part, initial_state=x_["initial_state"][i:i + 1], output_final_state=True)
            outs.append(o_i)
            finals.append(S_i)
        return torch.cat(outs, 1), torch.cat(finals, 0)

    o_ref, S_ref, g_ref = run(lambda output_final_state, **x_: separately(**x_), x, h0, weights)
    assert rel(o, o_ref) < 1e-12 and rel(S, S_ref) < 1e-12
    for n in g_ref:
        assert rel(grads[n], g_ref[n]) < 1e-11, n


def test_states_past_the_kernels_limit_are_a_clear_error():
    x = make(1, 4, 1, 260, 8, F32)
    with pytest.raises(NotImplementedError, match="K <= 256"):
        chunk_dplr(**x)
    assert triton_module.DPLR_MAX_DIM == triton_dplr.DPLR_MAX_DIM     # codegen's copy of the limit


@pytest.mark.parametrize("dk,offered", [(256, True), (320, False)])
def test_the_triton_backend_offers_rwkv7s_chunk_form_up_to_the_limit(dk, offered):
    """RWKV-7 with wider heads: the Triton op has the chunk form up to DPLR_MAX_DIM key channels, and past it says
    why not (the torch backend keeps it)."""
    import seqdsl

    m = seqdsl.load(ROOT / "examples" / "rwkv7.seq", dk=dk, dv=32, heads=1, d_model=dk)
    assert "chunk" in seqdsl.compile(m, backend="torch").modes
    op = seqdsl.compile(m, backend="triton")
    assert ("chunk" in op.modes) == offered
    if not offered:
        assert f"{dk} key channels" in op.module.WHY_NOT["chunk"] and "at most 256" in op.module.WHY_NOT["chunk"]
