"""seqdsl.build: the layer of each example against the interpreter's layer; step == forward; varlen; init."""

import math

import pytest
import torch
from conftest import EXAMPLES

import seqdsl
from seqdsl.interpreter import Reference
from seqdsl.testing import assert_close, rel_rms, small_hparams

LAYERS = [p for p in EXAMPLES]


def small_layer(path, **kw):
    m = seqdsl.load(path)
    return seqdsl.build(m.with_hparams(**small_hparams(m)), dtype=torch.float64, **kw)


@pytest.mark.parametrize("path", LAYERS, ids=lambda p: p.stem)
def test_layer_matches_interpreter_and_steps_match_forward(path):
    layer = small_layer(path)
    x = torch.randn(2, 19, layer.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = layer(x)
    ref = Reference(layer.model.checked)
    y_ref, _ = ref.layer(x, {k: v.detach() for k, v in layer._params().items()})
    assert y.shape == x.shape
    assert_close(f"{path.stem} layer", y_ref, y, torch.float64, 10)
    cache, steps = None, []
    for t in range(x.shape[1]):
        y_t, cache = layer.step(x[:, t], cache)
        steps.append(y_t)
    assert_close(f"{path.stem} step loop", y, torch.stack(steps, 1), torch.float64, 10)


@pytest.mark.parametrize("path", LAYERS, ids=lambda p: p.stem)
def test_layer_continues_from_its_cache(path):
    layer = small_layer(path)
    x = torch.randn(1, 20, layer.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = layer(x)
    y1, cache = layer(x[:, :7], output_final_state=True)
    y2, _ = layer(x[:, 7:], cache=cache, output_final_state=True)
    assert_close(f"{path.stem} continued", y, torch.cat([y1, y2], 1), torch.float64, 10)


@pytest.mark.parametrize("path", LAYERS, ids=lambda p: p.stem)
def test_layer_varlen_equals_separate_runs(path):
    layer = small_layer(path)
    x = torch.randn(1, 15, layer.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    cu = torch.tensor([0, 4, 15])
    y = layer(x, cu_seqlens=cu)
    for lo, hi in ((0, 4), (4, 15)):
        assert_close(f"{path.stem} varlen", layer(x[:, lo:hi]), y[:, lo:hi], torch.float64, 10)


@pytest.mark.parametrize("path", LAYERS, ids=lambda p: p.stem)
def test_layer_backward_reaches_every_parameter(path):
    layer = seqdsl.build(str(path), **small_hparams(seqdsl.load(path)))
    x = torch.randn(2, 9, layer.d_model, generator=torch.Generator().manual_seed(3))
    layer(x).square().mean().backward()
    missing = [n for n, p in layer.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


def test_spec_initialisers_are_applied():
    retnet = seqdsl.build("examples/retnet.seq")
    gamma = torch.exp(retnet.g_gamma)
    expected = 1 - 2.0 ** (-5 - torch.arange(4, dtype=torch.float32))
    assert torch.allclose(gamma, expected) and "g_gamma" in dict(retnet.named_buffers())
    mamba = seqdsl.build("examples/mamba.seq")
    assert torch.allclose(mamba.A_log[0], torch.log(torch.arange(1, 17, dtype=torch.float32)))
    dt = torch.nn.functional.softplus(mamba.dt_bias)
    assert dt.min() >= 0.001 - 1e-6 and dt.max() <= 0.1 + 1e-6
    lru = seqdsl.build("examples/lru.seq")
    radius = torch.exp(-torch.exp(lru.nu_log))
    assert radius.min() >= 0.9 - 1e-6 and radius.max() <= 0.999 + 1e-6


def test_state_size_and_parameter_count():
    gla = seqdsl.build("examples/gla.seq")
    assert gla.state_size() == 4 * 32 * 64
    gdn = seqdsl.build("examples/gated_deltanet.seq")
    conv = (4 * 64 + 4 * 64 + 4 * 64) * 3
    assert gdn.state_size() == 4 * 64 * 64 + conv
    assert gdn.num_parameters() == sum(p.numel() for p in gdn.parameters()) > 0
    # RWKV-4: numerator and denominator states [d], the max-exponent state [d], and the token shift of
    # the out section's receptance / key / value mixes: every carried number counts
    rwkv = seqdsl.build(seqdsl.load("examples/rwkv4.seq", d_model=16))
    _, cache = rwkv(torch.zeros(1, 3, 16), output_final_state=True)
    assert cache["out"] and rwkv.state_size() == sum(
        t[0].numel() for part in (cache["state"], tuple(cache["conv"].values()), tuple(cache["out"].values()))
        for t in (part if isinstance(part, tuple) else (part,)))


def test_bad_layer_input_is_a_clear_error():
    layer = seqdsl.build("examples/gla.seq")
    with pytest.raises(ValueError, match=r"x must be \[B, T, 256\]"):
        layer(torch.randn(1, 3, 10))
    with pytest.raises(ValueError, match=r"x has no tokens"):
        layer(torch.randn(2, 0, 256))


@pytest.mark.parametrize("name,gate", [("gla", "gk"), ("gated_deltanet", "g")])
def test_chunk_form_is_stable_with_extreme_log_gates(name, gate):
    """Log-gates down to -30 per step over T = 8192 must give no NaN/Inf and match the recurrent form."""
    m = seqdsl.load(f"examples/{name}.seq", heads=1, dk=16, dv=16, d_model=16)
    op = seqdsl.compile(m)
    g = torch.Generator().manual_seed(0)
    T = 8192
    inputs = {"q": torch.randn(1, T, 1, 16, generator=g), "k": torch.randn(1, T, 1, 16, generator=g),
              "v": torch.randn(1, T, 1, 16, generator=g)}
    if name == "gla":
        inputs["gk"] = -30 * torch.rand(1, T, 1, 16, generator=g)
    else:
        inputs["k"] = torch.nn.functional.normalize(inputs["k"], dim=-1)
        inputs["g"] = -30 * torch.rand(1, T, 1, generator=g)
        inputs["beta"] = torch.rand(1, T, 1, generator=g)
    o_chunk, s_chunk = op(**inputs, mode="chunk", output_final_state=True)
    o_rec, s_rec = op(**inputs, mode="recurrent", output_final_state=True)
    assert torch.isfinite(o_chunk).all() and torch.isfinite(s_chunk).all()
    assert_close(f"{name} chunk vs recurrent at log-gate -30", o_rec, o_chunk, torch.float32, 10)
    assert math.isfinite(float(s_chunk.abs().max()))


_ONE_DIM = """model one_dim(d_model = 16, heads = 2, dk = 4):
  params:
    skip: [heads, dk] ~ normal(0, 1)
  streams:
    q: [heads, dk] = linear(x)
    k: [heads, dk] = linear(x)
    v: [heads, dk] = linear(x)
  cell over heads:
    state S: [dk, dk] = 0
    S <- 0.9 * S + outer(k, v)
    o = q @ S
  out:
    y = linear(o + skip * q)
"""
_RENAMED = """model renamed(d_model = 16, heads = 2, dk = 4):
  dims:
    dv = dk
  params:
    skip: [heads, dv] ~ normal(0, 1)
  streams:
    q: [heads, dk] = linear(x)
    k: [heads, dk] = linear(x)
    v: [heads, dv] = linear(x)
  cell over heads:
    state S: [dk, dv] = 0
    S <- 0.9 * S + outer(k, v)
    o = q @ S
  out:
    y = linear(o + skip * rename(q, dk, dv))
"""


def test_rename_keeps_the_numbers():
    """A spec that gives the value axis its own name (dv = dk) and renames q's axis to add it to the readout computes
    what the spec with one name for both axes computes, with the same parameters: in the generated layer and in the
    interpreter. (The recurrent kernel can split a dv axis across programs; with [dk, dk] it cannot tell the axes
    apart.)"""
    one = seqdsl.build(seqdsl.loads(_ONE_DIM, name="one_dim"), dtype=torch.float64)
    renamed = seqdsl.build(seqdsl.loads(_RENAMED, name="renamed"), dtype=torch.float64)
    renamed.load_state_dict(one.state_dict())
    x = torch.randn(2, 11, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y = one(x)
    assert_close("renamed layer", y, renamed(x), torch.float64, 10)
    y_ref, _ = Reference(renamed.model.checked).layer(x, {k: v.detach() for k, v in renamed._params().items()})
    assert_close("renamed interpreter", y, y_ref, torch.float64, 10)
    # the renamed axis takes part: with q's numbers changed where it is read through rename(), the output moves
    with torch.no_grad():
        renamed.skip.mul_(2.0)
    assert (renamed(x) - y).abs().max() > 1e-3


_LEARNED_H0 = """model learned_h0(d_model = 8, heads = 2, dk = 4):
  params:
    h0: [heads, dk] ~ normal(0, 1)
  streams:
    u: [heads, dk] = linear(x)
    a: [heads, dk] = sigmoid(linear(x))
  cell over heads:
    state h: [dk] = 2 * h0 + 1
    h <- a * h + u
    o = h
  out:
    y = linear(o)
"""


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_state_initialised_from_a_param_is_learned(backend):
    """state h = 2 * h0 + 1 with h0 a param: the layer starts every sequence from it (the same as handing the layer a
    cache holding 2 * h0 + 1, written out here), step() from no cache too, and h0 gets a gradient. The layer used to
    fail ('non-constant initial value; pass initial_state')."""
    layer = seqdsl.build(seqdsl.loads(_LEARNED_H0, name="learned_h0"), backend=backend, dtype=torch.float64)
    x = torch.randn(3, 7, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    h_start = (2 * layer.h0.detach() + 1).expand(3, 2, 4)
    y = layer(x)
    assert_close("learned h0", layer(x, cache={"state": (h_start,)}), y, torch.float64, 10)
    y_ref, _ = Reference(layer.model.checked).layer(x, {k: v.detach() for k, v in layer._params().items()})
    assert_close("learned h0 interpreter", y_ref, y, torch.float64, 10)
    y_t, _ = layer.step(x[:, 0])
    assert_close("learned h0 step", y[:, 0], y_t, torch.float64, 10)
    cu = torch.tensor([0, 3, 7])
    packed = layer(x[:1], cu_seqlens=cu)
    assert_close("learned h0 varlen", torch.cat([layer(x[:1, :3]), layer(x[:1, 3:])], 1), packed, torch.float64, 10)
    y.square().sum().backward()
    assert layer.h0.grad is not None and layer.h0.grad.abs().max() > 0


@pytest.mark.parametrize("path", LAYERS, ids=lambda p: p.stem)
def test_a_layer_built_in_bf16_computes_in_bf16(path):
    """seqdsl.build(dtype=torch.bfloat16): y comes back in bf16, near the fp64 layer with the same (rounded)
    parameters (bf16 streams: ~1e-2; RFA's random features, cos of large arguments, ~0.15), with finite gradients.
    Complex cells (LRU, S5) failed here (torch.complex has no bf16), and some returned fp32."""
    m = seqdsl.load(path)
    m = m.with_hparams(**small_hparams(m))
    layer = seqdsl.build(m, dtype=torch.bfloat16)
    exact = seqdsl.build(m, dtype=torch.float64)
    exact.load_state_dict({k: v.to(torch.complex128 if v.is_complex() else torch.float64)
                           for k, v in layer.state_dict().items()})
    x = torch.randn(2, 19, layer.d_model, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    assert rel_rms(exact(x.double()), y.double()) < 0.25
    y.float().square().sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad.float()).all() for p in layer.parameters())
