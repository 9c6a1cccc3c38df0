"""The fp64 interpreter against independent implementations, for every example (DESIGN §7, link 1).

Each case feeds the same random fp64 inputs (gates in a realistic range) to ``reference(model)`` and
to a reference from ``oracles.py`` (fla's naive code run in fp64, torch.nn.LSTM, or the paper's
equations along another computation path) and requires outputs and final states to agree to 1e-10
(max error relative to the peak), on odd shapes with K != V, T = 1, an initial state and varlen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pathlib

import pytest
import torch
import torch.nn.functional as F

import oracles as O
import seqdsl

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
H, K, V = 3, 8, 5            # heads, key and value dims (K != V) for the attention-like models
TOL = 1e-10


def our_op(spec: str, **hparams):
    return seqdsl.reference(seqdsl.load(EXAMPLES / f"{spec}.seq", **hparams))


# ------------------------------------------------------------------ random inputs, one maker per model
def randn(g, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=g, dtype=dtype)


def uniform(g, lo, hi, *shape):
    return torch.rand(*shape, generator=g, dtype=torch.float64) * (hi - lo) + lo


def make_linear_attention(g, B, T, N):
    q, k = (F.elu(randn(g, B, T, H, K)) + 1 for _ in range(2))       # phi = elu + 1 > 0
    inputs = dict(q=q, k=k, v=randn(g, B, T, H, V))
    h0 = (randn(g, N, H, K, V), uniform(g, 0.5, 3.0, N, H, K))         # (S, z), z > 0 like a sum of phi(k)
    return inputs, {}, h0


def make_retnet(g, B, T, N):
    inputs = dict(q=randn(g, B, T, H, K), k=randn(g, B, T, H, K), v=randn(g, B, T, H, V),
                  g_gamma=O.retnet_log_decay(H))
    return inputs, {}, randn(g, N, H, K, V)


def make_gla(g, B, T, N):
    inputs = dict(q=randn(g, B, T, H, K), k=randn(g, B, T, H, K), v=randn(g, B, T, H, V),
                  gk=F.logsigmoid(randn(g, B, T, H, K)))
    return inputs, {}, randn(g, N, H, K, V)


def make_deltanet(g, B, T, N):
    inputs = dict(q=O.l2norm(randn(g, B, T, H, K)), k=O.l2norm(randn(g, B, T, H, K)), v=randn(g, B, T, H, V),
                  beta=torch.sigmoid(randn(g, B, T, H)))
    return inputs, {}, randn(g, N, H, K, V)


def make_gated_deltanet(g, B, T, N):
    inputs, extra, h0 = make_deltanet(g, B, T, N)
    inputs["g"] = F.logsigmoid(randn(g, B, T, H) + 2)
    return inputs, extra, h0


MAMBA2 = dict(d_model=15, expand=1, headdim=5, n=6)       # heads = 3, P = 5, N = 6


def make_mamba2(g, B, T, N):
    P, n = MAMBA2["headdim"], MAMBA2["n"]
    inputs = dict(u=randn(g, B, T, H, P), B=randn(g, B, T, n), C=randn(g, B, T, n),
                  dt=F.softplus(randn(g, B, T, H) - 1), A_log=torch.log(uniform(g, 1, 16, H)), D=randn(g, H))
    return inputs, {}, randn(g, N, H, n, P)


MAMBA = dict(d_model=7, expand=1, n=4)                    # d_inner = 7 channels, n = 4


def make_mamba(g, B, T, N):
    d, n = MAMBA["d_model"], MAMBA["n"]
    inputs = dict(u=randn(g, B, T, d), delta=F.softplus(randn(g, B, T, d) - 1), B=randn(g, B, T, n),
                  C=randn(g, B, T, n), A_log=torch.log(uniform(g, 0.5, 8, d, n)), D=randn(g, d))
    return inputs, {}, randn(g, N, d, n)


LRU = dict(d_model=6, n=9, r_min=0.4, r_max=0.99)


def make_lru(g, B, T, N):
    n = LRU["n"]
    r, phase = uniform(g, LRU["r_min"], LRU["r_max"], n), uniform(g, 0, 2 * math.pi, n)
    inputs = dict(bu=randn(g, B, T, n, dtype=torch.complex128), nu_log=torch.log(-torch.log(r)),
                  theta_log=torch.log(phase))
    return inputs, {}, randn(g, N, n, dtype=torch.complex128)


S4D = dict(d_model=5, n=7)


def make_s4d(g, B, T, N):
    d, n = S4D["d_model"], S4D["n"]
    inputs = dict(u=randn(g, B, T, d), log_dt=torch.log(uniform(g, 0.01, 0.5, d)),
                  A_log_re=torch.log(uniform(g, 0.1, 1.0, d, n)),
                  A_im=math.pi * torch.arange(n) + uniform(g, 0, 1, d, n),        # S4D-Lin, jittered
                  C_re=randn(g, d, n), C_im=randn(g, d, n), D=randn(g, d))
    return inputs, {}, randn(g, N, d, n, dtype=torch.complex128)


LINEAR_RNN = dict(d_model=6, n=7)


def make_linear_rnn(g, B, T, N):
    q, _ = torch.linalg.qr(randn(g, LINEAR_RNN["n"], LINEAR_RNN["n"]))
    inputs = dict(bu=randn(g, B, T, LINEAR_RNN["n"]), A=0.95 * q @ torch.diag(uniform(g, 0.5, 1.0, LINEAR_RNN["n"])))
    return inputs, {}, randn(g, N, LINEAR_RNN["n"])


LSTM = dict(d_model=6, hidden=7)


def make_lstm(g, B, T, N):
    lstm = torch.nn.LSTM(LSTM["d_model"], LSTM["hidden"], batch_first=True, dtype=torch.float64)
    bound = 3 / math.sqrt(LSTM["hidden"])          # 3x torch's init, so that the gates saturate sometimes
    with torch.no_grad():
        for p in lstm.parameters():
            p.copy_(uniform(g, -bound, bound, *p.shape))
    x = randn(g, B, T, LSTM["d_model"])
    with torch.no_grad():
        inputs = O.lstm_streams(lstm, x)
    h0 = (randn(g, N, LSTM["hidden"]), randn(g, N, LSTM["hidden"]))       # (c, h), our declaration order
    return inputs, dict(x=x, lstm=lstm), h0


# ------------------------------------------------------------------ the comparisons
@dataclass(frozen=True)
class Case:
    model: str                   # the example spec
    oracle: str                  # readable name of the independent reference
    make: object                 # make(g, B, T, N) -> (inputs, extra, h0)
    ref: object                  # the reference: ref(inputs, extra, h0, scale) -> (o, final state)
    hparams: dict = field(default_factory=dict)
    op_kwargs: dict = field(default_factory=dict)   # args passed to our op (scale is also given to the oracle)
    stateless: bool = False      # the oracle takes no initial state and returns none


HKV = dict(heads=H, dk=K, dv=V)
CASES = [
    Case("linear_attention", "fla_naive_recurrent_linear_attn", make_linear_attention, O.fla_linear_attention, HKV,
         dict(scale=0.3, eps=1e-10)),                               # fla's normaliser: (q s)^T z + 1e-10
    Case("retnet", "fla_naive_recurrent_simple_gla", make_retnet, O.fla_retnet_simple_gla, HKV, dict(scale=0.3)),
    Case("retnet", "fla_naive_retention", make_retnet, O.fla_retnet_naive_retention, HKV, stateless=True),
    Case("gla", "fla_naive_recurrent_gla", make_gla, O.fla_gla, HKV),                # scale: both default K^-0.5
    Case("deltanet", "fla_delta_rule_recurrence", make_deltanet, O.fla_deltanet, HKV),
    Case("gated_deltanet", "fla_naive_recurrent_gated_delta_rule", make_gated_deltanet, O.fla_gated_deltanet, HKV,
         dict(scale=0.3)),
    Case("mamba2", "fla_naive_recurrent_simple_gla", make_mamba2, O.fla_mamba2, MAMBA2),
    Case("mamba2", "ssd_quadratic_form", make_mamba2, O.ssd_mamba2, MAMBA2),
    Case("mamba", "selective_scan_paper", make_mamba, O.selective_scan_mamba, MAMBA),
    Case("lru", "powers_of_lambda_paper", make_lru, O.lru_powers, LRU),
    Case("s4d", "convolution_kernel_fft", make_s4d, O.s4d_convolution, S4D),
    Case("linear_rnn", "matrix_powers", make_linear_rnn, O.linear_rnn_powers, LINEAR_RNN),
    Case("lstm", "torch_nn_LSTM", make_lstm, O.torch_lstm, LSTM),
]
SHAPES = [(2, 1), (2, 13), (1, 37)]


def run_both(case: Case, B: int, T: int, with_h0: bool, seed: int = 0, cu_seqlens=None):
    g = torch.Generator().manual_seed(seed)
    n_states = B if cu_seqlens is None else len(cu_seqlens) - 1
    inputs, extra, h0 = case.make(g, B, T, n_states)
    h0 = h0 if with_h0 else None
    op = our_op(case.model, **case.hparams)
    assert set(op.inputs) == set(inputs), f"the op takes {op.inputs}"
    ours = op(**inputs, **case.op_kwargs, initial_state=h0, output_final_state=True, cu_seqlens=cu_seqlens)
    scale = case.op_kwargs.get("scale")
    if cu_seqlens is None:
        theirs = case.ref(inputs, extra, h0, scale)
    else:                   # the references know no varlen: run each sequence alone with its own state
        streams = set(op.checked.op_streams)
        outs, finals = [], []
        for i, (lo, hi) in enumerate(zip(cu_seqlens[:-1], cu_seqlens[1:])):
            seg = {n: t[:, lo:hi] if n in streams else t for n, t in inputs.items()}
            seg_extra = {n: t[:, lo:hi] if isinstance(t, torch.Tensor) else t for n, t in extra.items()}
            seg_h0 = None if h0 is None else O.select_state(h0, i)
            o, ht = case.ref(seg, seg_extra, seg_h0, scale)
            outs.append(o)
            finals.append(O.flatten(ht))
        theirs = (torch.cat(outs, dim=1), tuple(torch.cat(parts) for parts in zip(*finals)))
    return ours, theirs


def case_params(shapes, h0_options):
    for case in CASES:
        for B, T in shapes:
            for with_h0 in h0_options:
                if with_h0 and case.stateless:
                    continue
                yield pytest.param(case, B, T, with_h0,
                                   id=f"{case.model}-vs-{case.oracle}-B{B}T{T}-{'h0' if with_h0 else 'zero_h0'}")


@pytest.mark.parametrize("case, B, T, with_h0", list(case_params(SHAPES, (False, True))))
def test_op_matches_independent_reference(case, B, T, with_h0):
    (o, ht), (o_ref, ht_ref) = run_both(case, B, T, with_h0)
    O.assert_matches(case.model, o, o_ref, TOL, "output")
    if not case.stateless:
        O.assert_matches(case.model, ht, ht_ref, TOL, "final state")


CU_SEQLENS = [0, 1, 6, 13, 24]      # lengths 1, 5, 7, 11


@pytest.mark.parametrize("case", [c for c in CASES if not c.stateless], ids=lambda c: f"{c.model}-vs-{c.oracle}")
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_h0", "h0"])
def test_varlen_matches_reference_per_sequence(case, with_h0):
    (o, ht), (o_ref, ht_ref) = run_both(case, 1, CU_SEQLENS[-1], with_h0, seed=1, cu_seqlens=CU_SEQLENS)
    O.assert_matches(case.model, o, o_ref, TOL, "varlen output")
    O.assert_matches(case.model, ht, ht_ref, TOL, "varlen final state")


# ------------------------------------------------------------------ whole layers and initialisers
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_h0", "h0"])
def test_lru_layer_matches_paper_equations(with_h0):
    ref = our_op("lru", **LRU)
    params = ref.init_params(seed=3)
    g = torch.Generator().manual_seed(3)
    x = randn(g, 2, 13, LRU["d_model"])
    h0 = randn(g, 2, LRU["n"], dtype=torch.complex128) if with_h0 else None
    y, ht = ref.layer(x, params, initial_state=h0, output_final_state=True)
    y_ref, ht_ref = O.lru_layer(x, params, h0)
    O.assert_matches("lru", (y, ht), (y_ref, ht_ref), TOL, "layer")


@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_h0", "h0"])
def test_lstm_layer_matches_torch_lstm_and_linear(with_h0):
    ref = our_op("lstm", **LSTM)
    g = torch.Generator().manual_seed(4)
    params = ref.init_params(seed=4)
    for gate in "ifgo":                                 # init_params zeroes biases; make them count
        params[f"x{gate}_proj_bias"] = randn(g, LSTM["hidden"])
    lstm = torch.nn.LSTM(LSTM["d_model"], LSTM["hidden"], batch_first=True, dtype=torch.float64)
    head = torch.nn.Linear(LSTM["hidden"], LSTM["d_model"], bias=False, dtype=torch.float64)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.cat([params[f"x{gate}_proj"] for gate in "ifgo"]))
        lstm.bias_ih_l0.copy_(torch.cat([params[f"x{gate}_proj_bias"] for gate in "ifgo"]))
        lstm.bias_hh_l0.zero_()
        lstm.weight_hh_l0.copy_(torch.cat([params[f"U_{gate}"] for gate in "ifgo"]))
        head.weight.copy_(params["y_proj"])
    x = randn(g, 2, 13, LSTM["d_model"])
    c0, h0 = randn(g, 2, LSTM["hidden"]), randn(g, 2, LSTM["hidden"])
    y, ht = ref.layer(x, params, initial_state=(c0, h0) if with_h0 else None, output_final_state=True)
    with torch.no_grad():
        out, (h_n, c_n) = lstm(x, (h0[None], c0[None]) if with_h0 else None)
        y_ref = head(out)
    O.assert_matches("lstm", (y, ht), (y_ref, (c_n[0], h_n[0])), TOL, "layer")


def test_retnet_spec_decay_is_the_papers():
    """The spec's fixed g_gamma is log(1 - 2^(-5-h)) (RetNet §2.2), computed here independently."""
    ref = our_op("retnet", heads=8)
    O.assert_matches("retnet", ref.init_params()["g_gamma"], O.retnet_log_decay(8), 1e-15, "g_gamma init")


def test_fp64_patch_widens_fla_and_restores_torch():
    x = torch.ones(2, dtype=torch.float64)
    with O.fla_in_fp64() as count:
        assert x.float().dtype is torch.float64 and x.to(torch.float32).dtype is torch.float64
        assert x.new_zeros(2, dtype=torch.float32).dtype is torch.float64
        assert x.to(torch.ones(1, dtype=torch.float32)).dtype is torch.float64
        assert torch.ones(1, dtype=torch.float32).double().float().dtype is torch.float64
    assert count.casts == 5
    assert x.float().dtype is torch.float32 and x.to(torch.float32).dtype is torch.float32


def test_every_example_has_an_independent_reference():
    """Each example names its oracle in its header and is checked here or in a tests/zoo/ file."""
    zoo_text = "".join(f.read_text() for f in (pathlib.Path(__file__).parent / "zoo").glob("test_*.py"))
    covered = {c.model for c in CASES}
    for p in EXAMPLES.glob("*.seq"):
        assert "# oracle:" in p.read_text(), f"{p.name} does not name its independent reference"
        assert p.stem in covered or f'"{p.stem}' in zoo_text or f"'{p.stem}" in zoo_text, \
            f"{p.name} is not checked against an independent reference"


def test_public_reference_stays_callable():
    """Regression: a submodule named seqdsl.reference once rebound seqdsl.reference to itself on first use."""
    for _ in range(2):
        seqdsl.reference(seqdsl.load(EXAMPLES / "gla.seq"))
    assert callable(seqdsl.reference)


def test_gla_gate_projection_is_per_key_channel():
    """Regression: gk = logsigmoid(lowrank(x, r)) / gate_norm once typed lowrank's output as a scalar."""
    shapes = our_op("gla", **HKV, gate_rank=4).parameter_shapes()
    assert shapes["gk_lora_a"] == (4, 256) and shapes["gk_lora_b"] == (H * K, 4) and shapes["gk_proj_bias"] == (H * K,)
