"""Zoo: gated and decayed recurrences against independent references (DESIGN §7, link 1).

FLASH's global linear attention (M34), MEGA's damped EMA (M35), TransNormerLLM (M37), GateLoop (M38), H3
(M52), GSS (M55), RG-LRU in Hawk's block (M56), QRNN f-pooling (M60), HGRN (M64) and mLSTM, stabilised and
unstabilised (M67).

Op cases feed the same random fp64 inputs (in their realistic ranges) to ``reference(model)`` and to a
reference that does not use seqdsl: flash-linear-attention's ``naive_*`` code run in float64 (complex128
for HGRN) where fla has the family, otherwise the paper's equations along another computation path than a
step loop (convolution kernels, GateLoop's associative scan, mLSTM's parallel D-matrix form). Outputs and
final states agree to 1e-10 (max error relative to the peak), on odd shapes, T = 1, an initial state and
varlen. Layer tests run ``ref.layer(x, params)`` against the paper's block written here in plain torch from
the papers (never from the spec), with biases and norm parameters randomised so that each one counts.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F

import oracles as O
import seqdsl
from zoo_common import C128, EXAMPLES, F64, TOL, gen, our_ref, randn, uniform  # noqa: F401

SHAPES = [(2, 1, False), (2, 13, True), (1, 24, False), (1, 24, True)]       # (B, T, with an initial state)
CU_SEQLENS = [0, 1, 6, 13, 22]


def check(model: str, ours, theirs, what: str, tol: float = TOL) -> float:
    return O.assert_matches(model, ours, theirs, tol, what)


def causal_conv(K: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """y_t = sum_{l <= t} K[c, l] u_{t-l, c} per channel c, by FFT. K [C, >= T] real, u [B, T, C] real."""
    T = u.shape[1]
    n = 2 * max(T, 1)
    y = torch.fft.irfft(torch.fft.rfft(u.transpose(1, 2), n=n) * torch.fft.rfft(K[:, :T], n=n), n=n)[..., :T]
    return y.transpose(1, 2)


def depthwise_causal_conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A causal depthwise Conv1D (torch.nn.functional.conv1d, left padding): x [B, T, C], w [C, width]."""
    width = w.shape[1]
    return F.conv1d(F.pad(x.transpose(1, 2), (width - 1, 0)), w[:, None, :], groups=w.shape[0]).transpose(1, 2)


def randomised(params: dict, g, names) -> dict:
    """Params with the named (zero / one initialised) tensors replaced by random ones, so that each one counts."""
    out = dict(params)
    for n in names:
        out[n] = randn(g, *params[n].shape) * 0.5 + (1.0 if "norm" in n and n.endswith("_w") else 0.0)
    return out


# ------------------------------------------------------------------ fla's naive HGRN in fp64 / complex128
@contextlib.contextmanager
def _complex_stays_wide():
    """Within fla_in_fp64: complex128.float() (fla's upcast) keeps the tensor instead of dropping its imaginary part."""
    saved = torch.Tensor.float

    def float_(self, *args, **kwargs):
        return self if self.dtype is C128 else saved(self, *args, **kwargs)

    torch.Tensor.float = float_
    try:
        yield
    finally:
        torch.Tensor.float = saved


def fla_hgrn(x: torch.Tensor, g: torch.Tensor, h0):
    """fla-core ``naive_recurrent_hgrn``: h_t = exp(g_t) h_{t-1} + x_t, [B, T, D], run in fp64 (or complex128).

    fla adds ``initial_state`` into a float32 buffer, which would round it; the initial state enters instead as
    an extra first token (x = h0, g = 0) whose output is dropped.
    """
    from fla.ops.hgrn.naive import naive_recurrent_hgrn

    if h0 is not None:
        x = torch.cat([h0[:, None].to(x.dtype), x], 1)
        g = torch.cat([torch.zeros_like(g[:, :1]), g], 1)
    with O.fla_in_fp64() as count, _complex_stays_wide():
        o, ht = naive_recurrent_hgrn(x, g, output_final_state=True)
    assert x.is_complex() or count.casts > 0, "no fp32 cast intercepted (did fla change?)"
    assert o.dtype is x.dtype and ht.dtype is x.dtype, f"fla returned {o.dtype}, {ht.dtype}"
    return (o[:, 1:] if h0 is not None else o), ht


def hgrn_streams(inputs, h0):
    return fla_hgrn(inputs["i"], inputs["g"], h0)


# ------------------------------------------------------------------ references written from the papers
def gateloop_scan(inputs, h0):
    """GateLoop (Katsch 2023, Algorithm 1): y_t = Re(q_t^T S_t) with (A, S) = associative_scan(op, (a, k v^T)),
    op((a_i, kv_i), (a_j, kv_j)) = (a_j a_i, a_j kv_i + kv_j), a_t = exp(gk_t) on the key axis. The scan is a
    Hillis-Steele (log-depth) inclusive scan over time; an initial state is a first element (1, S_0)."""
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    a = torch.exp(inputs["gk"])[..., None]                                    # [b, t, h, K, 1]
    kv = torch.einsum("bthk,bthv->bthkv", k, v).to(C128)
    if h0 is not None:
        a = torch.cat([torch.ones_like(a[:, :1]), a], 1)
        kv = torch.cat([h0[:, None], kv], 1)
    A, S = a, kv
    step = 1
    while step < A.shape[1]:
        A, S = (torch.cat([A[:, :step], A[:, step:] * A[:, :-step]], 1),
                torch.cat([S[:, :step], A[:, step:] * S[:, :-step] + S[:, step:]], 1))
        step *= 2
    if h0 is not None:
        S = S[:, 1:]
    y = torch.einsum("bthk,bthkv->bthv", q.to(C128), S).real
    return y, S[:, -1]


def mega_ema_kernel(inputs, h0):
    """MEGA's EMA (Ma et al. 2022, Eq. 2-3) as a convolution, per channel d and EMA dimension:
    alpha = sigmoid(.), delta = sigmoid(.), q = 1 - alpha delta, K_l = sum_n eta_n / sqrt(n) alpha_n beta_n q_n^l,
    y = K * u; an initial state adds sum_n eta_n / sqrt(n) q_n^(t+1) h0_n; h_T = sum_s q^(T-1-s) alpha beta u_s + q^T h0."""
    u = inputs["u"]                                                           # [b, t, d]
    alpha, delta = torch.sigmoid(inputs["alpha_logit"]), torch.sigmoid(inputs["delta_logit"])   # [d, n]
    qd = 1 - alpha * delta
    w = inputs["eta"] / math.sqrt(qd.shape[1])
    T = u.shape[1]
    vander = torch.exp(torch.arange(T, dtype=F64) * torch.log(qd)[..., None])  # [d, n, l] = q^l
    K = torch.einsum("dn,dnl->dl", w * alpha * inputs["beta"], vander)
    y = causal_conv(K, u)
    h = torch.einsum("dnl,bld->bdn", vander.flip(-1), u) * alpha * inputs["beta"]
    if h0 is not None:
        y = y + torch.einsum("dn,dnt,bdn->btd", w, vander * qd[..., None], h0)
        h = h + qd ** T * h0
    return y, h


def gss_dss_kernel(inputs, h0):
    """GSS's simplified DSS (Mehta et al. 2022, Fig. 1 pseudo-code): lambda = -exp(Lambda_re) + i exp(Lambda_im),
    K[c, l] = Re(sum_n W[c, n] (exp(lambda_n) - 1) / lambda_n exp(l lambda_n)), y = K * u + D u (by FFT); an initial
    state adds Re(W exp((t+1) lambda) h0), h_T = sum_s exp((T-1-s) lambda) (exp(lambda) - 1) / lambda u_s + exp(T lambda) h0."""
    u = inputs["u"]                                                           # [b, t, c]
    lam = torch.complex(-torch.exp(inputs["Lambda_re"]), torch.exp(inputs["Lambda_im"]))
    W = torch.complex(inputs["W_re"], inputs["W_im"])
    B = (torch.exp(lam) - 1) / lam
    T = u.shape[1]
    S = torch.exp(lam[:, None] * torch.arange(T, dtype=F64))                 # [n, l]
    K = torch.einsum("cn,nl->cl", W * B, S).real
    y = causal_conv(K, u) + inputs["D"] * u
    h = torch.einsum("nl,blc->bcn", S.flip(-1), u.to(C128)) * B
    if h0 is not None:
        y = y + torch.einsum("cn,nt,bcn->btc", W, S * torch.exp(lam)[:, None], h0).real
        h = h + torch.exp(lam * T) * h0
    return y, h


def h3_diag_ssm(inputs, h0):
    """H3's diagonal SSM (S4D-Lin, zero-order hold) on kv through its Vandermonde convolution kernel (the S4D
    oracle of tests/oracles.py), read out as q ⊙ SSM_diag(kv) (Fu et al. 2023, Algorithm 1, head dim 1)."""
    s4d_inputs = {n: inputs[n] for n in ("log_dt", "A_log_re", "A_im", "C_re", "C_im", "D")}
    y, h = O.s4d_convolution(dict(s4d_inputs, u=inputs["kv"]), {}, h0, None)
    return inputs["q"] * y, h


def h3_shift_ssm(k: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """H3's shift SSM (Fu et al. 2023, §3.1) run as a state-space recurrence, per channel: A the shift matrix,
    B = e_1 (s_t = [k_t, s_{t-1}[:-1]]), output C^T s_t. k [b, t, d], C [d, m] (C[:, j] reads k_{t-j})."""
    s = torch.zeros(k.shape[0], k.shape[2], C.shape[1], dtype=F64)
    out = []
    for t in range(k.shape[1]):
        s = torch.cat([k[:, t, :, None], s[..., :-1]], -1)
        out.append((s * C).sum(-1))
    return torch.stack(out, 1)


def mlstm_parallel(inputs, h0, eps: float, initial_column: bool = True):
    """mLSTM's parallel form (Beck et al. 2024, App. A.3) with the D-matrix stabiliser, per head:
    log D[t, s] = sum_{s<j<=t} log f_j + log i_s (s <= t), m_t = max_s log D[t, s], W = exp(log D - m),
    h_t = sum_s W[t, s] (q_t . k_s / sqrt(d)) v_s / (max(|sum_s W[t, s] q_t . k_s / sqrt(d)|, exp(-m_t)) + eps).
    ``initial_column``: the initial state (C_0, n_0, m_0) (zero if none) is the column s = 0 with
    log D[t, 0] = sum_{j<=t} log f_j + m_0; then m_t is the recurrent stabiliser and the final
    (C_T, n_T, m_T) are column sums of row T. Without it this is the paper's form exactly (zero state)."""
    q, k, v, li, lf = (inputs[n] for n in ("q", "k", "v", "i", "f"))         # [b,t,h,d] ... [b,t,h]
    b, T, H, d = q.shape
    ks = k / math.sqrt(d)
    Fc = lf.cumsum(1)                                                         # [b, t, h]
    logD = Fc[:, :, None] - Fc[:, None, :] + li[:, None, :]                   # [b, t, s, h]
    logD = logD.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril()[None, :, :, None], -math.inf)
    qk = torch.einsum("bthd,bshd->btsh", q, ks)
    if initial_column:
        C0, n0, m0 = h0 if h0 is not None else (torch.zeros(b, H, d, d, dtype=F64), torch.zeros(b, H, d, dtype=F64),
                                                 torch.zeros(b, H, dtype=F64))
        logD = torch.cat([(Fc + m0[:, None])[:, :, None], logD], 2)         # column 0: the initial state
        qk = torch.cat([torch.einsum("bthd,bhd->bth", q, n0)[:, :, None], qk], 2)
        C0q = torch.einsum("bthd,bhde->bthe", q, C0)
    m = logD.max(2).values                                                    # [b, t, h]
    W = torch.exp(logD - m[:, :, None])
    Wqk = W * qk
    den = Wqk.sum(2)
    num = torch.einsum("btsh,bshe->bthe", Wqk[:, :, 1:] if initial_column else Wqk, v)
    if initial_column:
        num = num + W[:, :, 0, :, None] * C0q
    h = num / (torch.maximum(den.abs(), torch.exp(-m))[..., None] + eps)
    if not initial_column:
        return h, None
    WT = W[:, -1]                                                             # [b, s, h] row T
    C_T = torch.einsum("bsh,bshd,bshe->bhde", WT[:, 1:], ks, v) + WT[:, 0, :, None, None] * C0
    n_T = torch.einsum("bsh,bshd->bhd", WT[:, 1:], ks) + WT[:, 0, :, None] * n0
    return h, (C_T, n_T, m[:, -1])


def mlstm_stabilised(inputs, h0):
    return mlstm_parallel(inputs, h0, eps=0.0)


def mlstm_paper_parallel(inputs, h0):
    assert h0 is None
    return mlstm_parallel(inputs, None, eps=0.0, initial_column=False)


def mlstm_exp_reference(inputs, h0):
    """The unstabilised cell's states are the stabilised ones times exp(m): run the parallel form with m_0 = 0."""
    if h0 is not None:
        h0 = (h0[0], h0[1], torch.zeros(h0[1].shape[:2], dtype=F64))
    h, (C, n, m) = mlstm_parallel(inputs, h0, eps=0.0)
    return h, (C * torch.exp(m)[..., None, None], n * torch.exp(m)[..., None])


def alibi_log_decay(heads: int, layer: float, layers: int) -> torch.Tensor:
    """TransNormerLLM's decay (released code, _build_slope_tensor): ALiBi slopes start^(h+1) with
    start = 2^(-2^-(log2 H - 3)), times (1 - l / (L - 1) + 1e-5); log lambda = -slope. H a power of two."""
    start = 2 ** (-(2 ** -(math.log2(heads) - 3)))
    slopes = torch.tensor([start * start ** h for h in range(heads)], dtype=F64)
    return -slopes * (1 - layer / (layers - 1) + 1e-5)


# ------------------------------------------------------------------ op cases
QRNN = dict(d_model=5)
HAWK = dict(d_model=4, hidden=6)
HGRN = dict(d_model=5, layer_idx=6.0)
FLASH = dict(d_model=4, expand=2, dk=5, chunk=4)                # dv = 8
TNL = dict(d_model=4, heads=2, dk=5, dv=3, layer_idx=3.0, num_layers=8)
GATELOOP = dict(d_model=4, heads=2, dk=5, dv=3)
MEGA = dict(d_model=3, n=4)
GSS = dict(d_model=4, expand=2, hidden=3, n=5)
H3 = dict(d_model=3, n=4)
MLSTM = dict(d_model=4, heads=2, expand=2)                     # d_inner = 8, dk = 4


def make_hgrn_family(d):
    def make(g, B, T, N):
        return dict(g=F.logsigmoid(randn(g, B, T, d) + 1), i=randn(g, B, T, d)), randn(g, N, d)
    return make


def make_hawk(g, B, T, N):
    d = HAWK["hidden"]
    log_a = -8 * F.softplus(randn(g, d)) * torch.sigmoid(randn(g, B, T, d))   # -c softplus(-Lambda) r_t
    return dict(g=log_a, i=randn(g, B, T, d)), randn(g, N, d)


def make_hgrn(g, B, T, N):
    d = HGRN["d_model"]
    lam = uniform(g, 0.3, 0.99, B, T, d)
    theta = uniform(g, 0, math.pi, d)
    return (dict(i=randn(g, B, T, d, dtype=C128), g=torch.complex(torch.log(lam), theta.expand(B, T, d))),
            randn(g, N, d, dtype=C128))


def make_flash(g, B, T, N):
    K, V = FLASH["dk"], FLASH["expand"] * FLASH["d_model"]
    return dict(q=randn(g, B, T, K), k=randn(g, B, T, K), v=randn(g, B, T, V)), randn(g, N, K, V)


def fla_flash(inputs, h0):
    """fla ``naive_recurrent_linear_attn(normalize=False)`` with one head and FLASH's scale 1/C."""
    from fla.ops.linear_attn.naive import naive_recurrent_linear_attn

    q, k, v = (inputs[n][:, :, None] for n in "qkv")
    o, S = O._fla(naive_recurrent_linear_attn, q, k, v, scale=1.0 / FLASH["chunk"],
                  initial_state=None if h0 is None else h0[:, None], output_final_state=True)
    return o[:, :, 0], S[:, 0]


def make_tnl(g, B, T, N):
    H, K, V = TNL["heads"], TNL["dk"], TNL["dv"]
    inputs = dict(q=F.silu(randn(g, B, T, H, K)), k=F.silu(randn(g, B, T, H, K)), v=randn(g, B, T, H, V),
                  g_gamma=alibi_log_decay(H, TNL["layer_idx"], TNL["num_layers"]))
    return inputs, randn(g, N, H, K, V)


def fla_tnl(inputs, h0):
    q = inputs["q"]
    g = inputs["g_gamma"].expand(q.shape[0], q.shape[1], -1)
    return O.fla_simple_gla(q, inputs["k"], inputs["v"], g, 1.0, h0)           # no 1/sqrt(d) scale


def make_gateloop(g, B, T, N):
    H, K, V = GATELOOP["heads"], GATELOOP["dk"], GATELOOP["dv"]
    inputs = dict(q=randn(g, B, T, H, K), k=randn(g, B, T, H, K), v=randn(g, B, T, H, V),
                  gk=torch.complex(F.logsigmoid(randn(g, B, T, H, K) + 1), 2 * randn(g, B, T, H, K)))
    return inputs, randn(g, N, H, K, V, dtype=C128)


def make_mega(g, B, T, N):
    d, n = MEGA["d_model"], MEGA["n"]
    inputs = dict(u=randn(g, B, T, d), alpha_logit=randn(g, d, n), delta_logit=randn(g, d, n), beta=randn(g, d, n),
                  eta=randn(g, d, n))
    return inputs, randn(g, N, d, n)


def make_gss(g, B, T, N):
    c, n = GSS["hidden"], GSS["n"]
    inputs = dict(u=randn(g, B, T, c), Lambda_re=randn(g, n), Lambda_im=randn(g, n), W_re=randn(g, c, n),
                  W_im=randn(g, c, n), D=randn(g, c))
    return inputs, randn(g, N, c, n, dtype=C128)


def make_h3(g, B, T, N):
    d, n = H3["d_model"], H3["n"]
    inputs = dict(q=randn(g, B, T, d), kv=randn(g, B, T, d), log_dt=torch.log(uniform(g, 0.01, 0.5, d)),
                  A_log_re=torch.log(uniform(g, 0.1, 1.0, d, n)), A_im=math.pi * torch.arange(n) + uniform(g, 0, 1, d, n),
                  C_re=randn(g, d, n), C_im=randn(g, d, n), D=randn(g, d))
    return inputs, randn(g, N, d, n, dtype=C128)


def make_mlstm(stabilised):
    def make(g, B, T, N):
        H, d = MLSTM["heads"], MLSTM["expand"] * MLSTM["d_model"] // MLSTM["heads"]
        inputs = dict(q=randn(g, B, T, H, d), k=randn(g, B, T, H, d), v=randn(g, B, T, H, d),
                      i=3 * randn(g, B, T, H), f=F.logsigmoid(2 * randn(g, B, T, H) + 2))   # gates in log space
        h0 = (randn(g, N, H, d, d), randn(g, N, H, d))
        return inputs, (h0 + (randn(g, N, H),) if stabilised else h0)
    return make


@dataclass(frozen=True)
class Case:
    model: str
    oracle: str
    hparams: dict
    make: object                     # make(g, B, T, N) -> (inputs, h0)
    reference: object                # reference(inputs, h0) -> (o, final state)
    op_kwargs: dict = field(default_factory=dict)
    stateless: bool = False          # the reference takes no initial state and returns none


CASES = [
    Case("qrnn", "fla_naive_recurrent_hgrn", QRNN, make_hgrn_family(QRNN["d_model"]), hgrn_streams),
    Case("hawk", "fla_naive_recurrent_hgrn", HAWK, make_hawk, hgrn_streams),
    Case("hgrn", "fla_naive_recurrent_hgrn_complex128", HGRN, make_hgrn, hgrn_streams),
    Case("flash", "fla_naive_recurrent_linear_attn", FLASH, make_flash, fla_flash),
    Case("transnormer_llm", "fla_naive_recurrent_simple_gla", TNL, make_tnl, fla_tnl),
    Case("gateloop", "associative_scan_algorithm1", GATELOOP, make_gateloop, gateloop_scan),
    Case("mega_ema", "ema_convolution_kernel", MEGA, make_mega, mega_ema_kernel),
    Case("gss", "simplified_dss_kernel", GSS, make_gss, gss_dss_kernel),
    Case("h3", "s4d_vandermonde_kernel", H3, make_h3, h3_diag_ssm),
    Case("mlstm", "parallel_form_with_initial_column", MLSTM, make_mlstm(True), mlstm_stabilised, dict(eps=0.0)),
    Case("mlstm", "paper_parallel_form", MLSTM, make_mlstm(True), mlstm_paper_parallel, dict(eps=0.0), True),
    Case("mlstm_exp", "parallel_form_rescaled", MLSTM, make_mlstm(False), mlstm_exp_reference),
    Case("mlstm_exp", "paper_parallel_form", MLSTM, make_mlstm(False), mlstm_paper_parallel, stateless=True),
]


def run_case(case: Case, B: int, T: int, with_h0: bool, seed: int = 0, cu=None):
    ref = our_ref(case.model, **case.hparams)
    n_seq = B if cu is None else len(cu) - 1
    inputs, h0 = case.make(gen(seed), B, T, n_seq)
    h0 = h0 if with_h0 else None
    assert set(inputs) == set(ref.inputs), f"the op takes {ref.inputs}"
    o, ht = ref(**inputs, **case.op_kwargs, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    if cu is None:
        o_ref, ht_ref = case.reference(inputs, h0)
    else:                      # the references know no varlen: run each sequence alone with its own state
        streams = set(ref.checked.op_streams)
        outs, finals = [], []
        for i, (lo, hi) in enumerate(zip(cu[:-1], cu[1:])):
            seg = {n: (t[:, lo:hi] if n in streams else t) for n, t in inputs.items()}
            o_i, ht_i = case.reference(seg, None if h0 is None else O.select_state(h0, i))
            outs.append(o_i)
            finals.append(O.flatten(ht_i))
        o_ref, ht_ref = torch.cat(outs, 1), tuple(torch.cat(p) for p in zip(*finals))
    check(case.model, o, o_ref, "output")
    if not case.stateless:
        check(case.model, ht, ht_ref, "final state")


def _params(shapes, h0_options):
    for case in CASES:
        for B, T, with_h0 in shapes:
            if with_h0 in h0_options and not (with_h0 and case.stateless):
                yield pytest.param(case, B, T, with_h0, id=f"{case.model}-vs-{case.oracle}-B{B}T{T}-"
                                                           f"{'h0' if with_h0 else 'zero_h0'}")


@pytest.mark.parametrize("case, B, T, with_h0", list(_params(SHAPES, (False, True))))
def test_op_matches_independent_reference(case, B, T, with_h0):
    run_case(case, B, T, with_h0)


@pytest.mark.parametrize("case", [c for c in CASES if not c.stateless], ids=lambda c: f"{c.model}-vs-{c.oracle}")
def test_varlen_with_initial_state_matches_reference_per_sequence(case):
    run_case(case, 1, CU_SEQLENS[-1], True, seed=1, cu=CU_SEQLENS)


def test_mlstm_default_eps_matches_parallel_form_with_the_recurrent_stabiliser():
    """With eps > 0 the stabilised cell depends on m_t; the initial-column parallel form has the same m_t."""
    ref = our_ref("mlstm", **MLSTM)
    inputs, h0 = make_mlstm(True)(gen(7), 2, 13, 2)
    o, ht = ref(**inputs, initial_state=h0, output_final_state=True)
    check("mlstm", (o, ht), mlstm_parallel(inputs, h0, eps=ref.args["eps"]), "eps = 1e-6")


# ------------------------------------------------------------------ whole layers against the papers' blocks
def test_qrnn_layer_matches_masked_convolution_and_f_pooling():
    """QRNN (Bradbury et al. 2017, Eq. 1-3): Z = tanh(W_z * X), F = sigma(W_f * X) with masked width-2 filter banks
    (conv1d over [x_{t-1}, x_t]), f-pooling h_t = f_t h_{t-1} + (1 - f_t) z_t; the layer output is h."""
    D = QRNN["d_model"]
    ref = our_ref("qrnn", **QRNN)
    g = gen(3)
    p = randomised(ref.init_params(3), g, ["z_proj_bias", "g_proj_bias"])
    x, h0 = randn(g, 2, 13, D), randn(g, 2, D)
    xp = F.pad(x.transpose(1, 2), (1, 0))
    Z = torch.tanh(F.conv1d(xp, torch.stack([p["z_proj1"], p["z_proj"]], -1), p["z_proj_bias"])).transpose(1, 2)
    Fg = torch.sigmoid(F.conv1d(xp, torch.stack([p["g_proj1"], p["g_proj"]], -1), p["g_proj_bias"])).transpose(1, 2)
    h, hs = h0, []
    for t in range(x.shape[1]):
        h = Fg[:, t] * h + (1 - Fg[:, t]) * Z[:, t]
        hs.append(h)
    y, ht = ref.layer(x, p, initial_state=h0, output_final_state=True)
    check("qrnn", (y, ht), (torch.stack(hs, 1), h), "layer")


def test_hawk_block_matches_griffin_equations():
    """Hawk's recurrent block (De et al. 2024, Fig. 2 and §2.4): y = W_out(gelu(W_1 x) ⊙ RG-LRU(Conv1D(W_2 x)));
    r = sigma(W_a u + b_a), i = sigma(W_x u + b_x), a = sigma(Lambda)^(c r), h = a h + sqrt(1 - a^2) (i u)."""
    c = 8.0
    ref = our_ref("hawk", **HAWK)
    g = gen(4)
    p = randomised(ref.init_params(4), g, ["u_proj_bias", "g_proj_bias", "i_proj_bias", "y_proj_bias", "y_proj_bias1"])
    x, h0 = randn(g, 2, 13, HAWK["d_model"]), randn(g, 2, HAWK["hidden"])
    branch = F.gelu(x @ p["y_proj"].T + p["y_proj_bias"])
    u = depthwise_causal_conv(x @ p["u_proj"].T + p["u_proj_bias"], p["u_conv"])
    r = torch.sigmoid(u @ p["g_proj"].T + p["g_proj_bias"])
    i = torch.sigmoid(u @ p["i_proj"].T + p["i_proj_bias"])
    a = torch.sigmoid(p["Lambda"]) ** (c * r)
    h, hs = h0, []
    for t in range(x.shape[1]):
        h = a[:, t] * h + torch.sqrt(1 - a[:, t] ** 2) * (i[:, t] * u[:, t])
        hs.append(h)
    y_ref = (branch * torch.stack(hs, 1)) @ p["y_proj1"].T + p["y_proj_bias1"]
    y, ht = ref.layer(x, p, initial_state=h0, output_final_state=True)
    check("hawk", (y, ht), (y_ref, h), "block")


def test_hawk_lambda_init_makes_a_to_the_c_uniform_in_0_9_0_999():
    """Griffin §2.4: Lambda is initialised so that a^c = sigmoid(Lambda)^c is uniform in [0.9, 0.999]."""
    p = our_ref("hawk", d_model=4, hidden=2000).init_params(0)
    ac = torch.sigmoid(p["Lambda"]) ** 8
    assert 0.9 - 1e-12 <= ac.min() and ac.max() <= 0.999 + 1e-12
    hist = torch.histc(ac, bins=5, min=0.9, max=0.999) / ac.numel()       # uniform: 0.2 per bin (+- 0.009)
    assert (hist - 0.2).abs().max() < 0.04, hist


def test_hgrn_layer_matches_the_papers_real_arithmetic():
    """HGRN (Qin et al. 2023, §3; the released Hgru1d.forward_naive): lambda = gamma + (1 - gamma) sigma(.),
    recurrence on (Re, Im) pairs with gamma_t = lambda (cos theta, sin theta), input (1 - lambda) silu(.),
    y = W_o (LayerNorm([Re h, Im h]) ⊙ silu(W_g x + b)) + b_o."""
    ref = our_ref("hgrn", **HGRN)
    g = gen(5)
    names = ["lam_proj_bias", "i_proj_bias", "i_proj_bias1", "gated_re_proj_bias", "gated_im_proj_bias", "y_proj_bias",
             "norm_re_w", "norm_re_b", "norm_im_w", "norm_im_b"]
    p = randomised(ref.init_params(5), g, names)
    D = HGRN["d_model"]
    x, h0 = randn(g, 2, 13, D), randn(g, 2, D, dtype=C128)
    lb = p["lower_bound"]
    assert torch.allclose(lb, torch.full((D,), 6.0 / 24, dtype=F64))
    lam = lb + (1 - lb) * torch.sigmoid(x @ p["lam_proj"].T + p["lam_proj_bias"])
    c_re = F.silu(x @ p["i_proj"].T + p["i_proj_bias"])
    c_im = F.silu(x @ p["i_proj1"].T + p["i_proj_bias1"])
    g_re, g_im = lam * torch.cos(p["theta"]), lam * torch.sin(p["theta"])
    in_re, in_im = (1 - lam) * c_re, (1 - lam) * c_im
    h_re, h_im, feats = h0.real, h0.imag, []
    for t in range(x.shape[1]):
        h_re, h_im = (g_re[:, t] * h_re - g_im[:, t] * h_im + in_re[:, t],
                      g_re[:, t] * h_im + g_im[:, t] * h_re + in_im[:, t])
        feats.append(torch.cat([h_re, h_im], -1))
    feature = F.layer_norm(torch.stack(feats, 1), (2 * D,), torch.cat([p["norm_re_w"], p["norm_im_w"]]),
                           torch.cat([p["norm_re_b"], p["norm_im_b"]]), eps=1e-5)
    gate = F.silu(torch.cat([x @ p["gated_re_proj"].T + p["gated_re_proj_bias"],
                             x @ p["gated_im_proj"].T + p["gated_im_proj_bias"]], -1))
    y_ref = (feature * gate) @ torch.cat([p["y_proj"], p["y_proj1"]], 1).T + p["y_proj_bias"]
    y, ht = ref.layer(x, p, initial_state=h0, output_final_state=True)
    check("hgrn", (y, ht), (y_ref, torch.complex(h_re, h_im)), "layer")


def test_hgrn_theta_init_is_hgru1d():
    p = our_ref("hgrn", d_model=8).init_params()
    check("hgrn", p["theta"], 10000 ** (-2 / 8 * torch.arange(8, dtype=F64)), "theta init", 1e-15)


def test_flash_layer_matches_gau_global_linear_attention():
    """GAU / FLASH (Hua et al. 2022, Eq. 26-27 and its code): z = silu(W_z x + b), Q, K = per-dim scale and offset
    of z, V = silu(W_v x + b), U = silu(W_u x + b); the global causal term (Q K^T ⊙ M) V / C (token granularity);
    y = W_o (U ⊙ V̂) + b_o."""
    ref = our_ref("flash", **FLASH)
    g = gen(6)
    p = randomised(ref.init_params(6), g, ["beta_q", "beta_k", "z_proj_bias", "v_proj_bias", "y_proj_bias",
                                           "y_proj_bias1"])
    p["gamma_q"], p["gamma_k"] = randn(g, FLASH["dk"]), randn(g, FLASH["dk"])
    x = randn(g, 2, 13, FLASH["d_model"])
    z = F.silu(x @ p["z_proj"].T + p["z_proj_bias"])
    Q, K = z * p["gamma_q"] + p["beta_q"], z * p["gamma_k"] + p["beta_k"]
    V = F.silu(x @ p["v_proj"].T + p["v_proj_bias"])
    U = F.silu(x @ p["y_proj"].T + p["y_proj_bias"])
    T = x.shape[1]
    A = (Q @ K.transpose(1, 2)) * torch.ones(T, T, dtype=F64).tril() / FLASH["chunk"]
    y_ref = (U * (A @ V)) @ p["y_proj1"].T + p["y_proj_bias1"]
    y, ht = ref.layer(x, p, output_final_state=True)
    check("flash", (y, ht), (y_ref, torch.einsum("btk,btv->bkv", K, V)), "layer")


def test_transnormer_llm_layer_matches_the_masked_quadratic_form():
    """TransNormerLLM (Qin et al. 2023, §3): O = SRMSNorm((Q K^T ⊙ D) V) ⊙ U, D[s, t] = lambda_h^(s-t) (s >= t),
    Q = silu(X W_q), K = silu(X W_k), V = X W_v, U = X W_u, y = O W_o; SRMSNorm over all heads, eps 1e-6."""
    H, Kd, V = TNL["heads"], TNL["dk"], TNL["dv"]
    ref = our_ref("transnormer_llm", **TNL)
    g = gen(7)
    p = ref.init_params(7)
    x = randn(g, 2, 13, TNL["d_model"])
    B, T = x.shape[:2]
    q = F.silu(x @ p["q_proj"].T).view(B, T, H, Kd)
    k = F.silu(x @ p["k_proj"].T).view(B, T, H, Kd)
    v = (x @ p["v_proj"].T).view(B, T, H, V)
    lag = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).to(F64)
    decay = torch.exp(lag[None] * alibi_log_decay(H, TNL["layer_idx"], TNL["num_layers"])[:, None, None])
    decay = decay * (lag >= 0)                                                # [h, t, s]
    o = torch.einsum("bthk,bshk,hts,bshv->bthv", q, k, decay, v).reshape(B, T, H * V)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-6)
    y_ref = (o * (x @ p["y_proj"].T)) @ p["y_proj1"].T
    y, _ = ref.layer(x, p)
    check("transnormer_llm", y, y_ref, "layer")


@pytest.mark.parametrize("heads", [2, 4, 8])
def test_transnormer_llm_decay_is_the_released_codes(heads):
    p = our_ref("transnormer_llm", heads=heads, layer_idx=5.0, num_layers=12).init_params()
    check("transnormer_llm", p["g_gamma"], alibi_log_decay(heads, 5.0, 12), "g_gamma", 1e-14)


def test_gateloop_layer_matches_the_unrolled_form():
    """GateLoop (Katsch 2023, survey Eq. 31 unrolled): y_t = Re(sum_{m <= t} q_t^T (k_m v_m^T) prod_{m<j<=t} a_j),
    a_t = sigmoid(W_alpha x_t) e^{i W_beta x_t} on the key axis, per head; the product as exp of a segment sum of
    log a_t = logsigmoid(.) + i W_beta x_t; then the output projection."""
    H, K, V = GATELOOP["heads"], GATELOOP["dk"], GATELOOP["dv"]
    ref = our_ref("gateloop", **GATELOOP)
    g = gen(8)
    p = ref.init_params(8)
    x = randn(g, 2, 13, GATELOOP["d_model"])
    B, T = x.shape[:2]
    q, k = ((x @ p[n].T).view(B, T, H, K) for n in ("q_proj", "k_proj"))
    v = (x @ p["v_proj"].T).view(B, T, H, V)
    log_a = torch.complex(F.logsigmoid(x @ p["gk_proj"].T), x @ p["gk_proj1"].T).view(B, T, H, K)
    cum = log_a.cumsum(1)
    seg = torch.exp(cum[:, :, None] - cum[:, None, :])                       # [b, t, m, h, K]: prod_{m<j<=t} a_j
    seg = seg * torch.ones(T, T, dtype=F64).tril()[None, :, :, None, None]
    o = torch.einsum("bthk,btmhk,bmhk,bmhv->bthv", q.to(C128), seg, k.to(C128), v.to(C128)).real
    y_ref = o.reshape(B, T, H * V) @ p["y_proj"].T
    y, ht = ref.layer(x, p, output_final_state=True)
    S_T = torch.einsum("bmhk,bmhk,bmhv->bhkv", seg[:, -1], k.to(C128), v.to(C128))
    check("gateloop", (y, ht), (y_ref, S_T), "layer")


def test_mega_ema_layer_matches_the_ema_convolution():
    """MEGA's EMA sub-layer: y = silu(EMA(x) + omega ⊙ x), EMA by its convolution kernel (paper §3.1)."""
    ref = our_ref("mega_ema", **MEGA)
    g = gen(9)
    p = ref.init_params(9)
    x, h0 = randn(g, 2, 13, MEGA["d_model"]), randn(g, 2, MEGA["d_model"], MEGA["n"])
    ema, h = mega_ema_kernel(dict(p, u=x), h0)
    y, ht = ref.layer(x, p, initial_state=h0, output_final_state=True)
    check("mega_ema", (y, ht), (F.silu(ema + p["omega"] * x), h), "layer")


def test_mega_ema_init_is_the_mega_codes():
    p = our_ref("mega_ema", d_model=2000, n=6).init_params(0)
    signs = torch.tensor([1.0, -1.0] * 3, dtype=F64)
    assert (p["beta"] - signs).abs().max() < 0.2 and abs((p["beta"] - signs).std().item() - 0.02) < 2e-3
    assert abs(p["alpha_logit"].std().item() - 0.2) < 0.01 and abs(p["eta"].std().item() - 1.0) < 0.02


def test_gss_layer_matches_the_pseudo_code():
    """GSS (Mehta et al. 2022, Fig. 1): v = gelu(W_v x), u = gelu(W_u x), y = dss(u) with u = LayerNorm(u) inside,
    uc = W_g y, o = W_o (uc ⊙ v) + b_o."""
    ref = our_ref("gss", **GSS)
    g = gen(10)
    p = randomised(ref.init_params(10), g, ["u_norm", "u_norm_bias", "y_proj_bias"])
    x, h0 = randn(g, 2, 13, GSS["d_model"]), randn(g, 2, GSS["hidden"], GSS["n"], dtype=C128)
    u = F.layer_norm(F.gelu(x @ p["u_proj"].T), (GSS["hidden"],), p["u_norm"], p["u_norm_bias"], eps=1e-5)
    dss, h = gss_dss_kernel(dict(p, u=u), h0)
    y_ref = ((dss @ p["y_proj"].T) * F.gelu(x @ p["y_proj1"].T)) @ p["y_proj2"].T + p["y_proj_bias"]
    y, ht = ref.layer(x, p, initial_state=h0, output_final_state=True)
    check("gss", (y, ht), (y_ref, h), "layer")


def test_h3_layer_matches_shift_and_diagonal_ssms():
    """H3 (Fu et al. 2023, Algorithm 1, head dim 1): o = q ⊙ SSM_diag(SSM_shift(k) ⊙ v), y = W_O o; the shift SSM as
    its shift-register recurrence (C_j taps k_{t-j}: the spec's conv weight read right to left), SSM_diag by its kernel."""
    ref = our_ref("h3", **H3)
    g = gen(11)
    p = ref.init_params(11)
    assert p["kv_conv"].shape == (H3["d_model"], 2 * H3["n"]), "the shift SSM has 2n states (H3's d_state)"
    x, h0 = randn(g, 2, 13, H3["d_model"]), randn(g, 2, H3["d_model"], H3["n"], dtype=C128)
    q, k, v = (x @ p[n].T for n in ("q_proj", "kv_proj", "kv_proj1"))
    kbar = h3_shift_ssm(k, p["kv_conv"].flip(-1))
    o, h = h3_diag_ssm(dict(p, q=q, kv=kbar * v), h0)
    y, ht = ref.layer(x, p, initial_state=h0, output_final_state=True)
    check("h3", (y, ht), (o @ p["y_proj"].T, h), "layer")


@pytest.mark.parametrize("model", ["mlstm", "mlstm_exp"])
def test_mlstm_block_matches_the_xlstm_block(model):
    """The mLSTM block (Beck et al. 2024, Fig. 10; xLSTM's mLSTMLayer): x_m = W_up x, x_c = swish(conv4(x_m)),
    q, k = W x_c, v = W x_m, i, f = W [q, k, v] + b, h = mLSTM (parallel form), per-head LayerNorm (scale, no bias),
    learnable skip, output gate swish(W_z x), down-projection."""
    ref = our_ref(model, **MLSTM)
    g = gen(12)
    p = randomised(ref.init_params(12), g, ["i_proj_bias", "skip", "norm_w"])
    x = randn(g, 2, 13, MLSTM["d_model"])
    B, T = x.shape[:2]
    H, d = MLSTM["heads"], MLSTM["expand"] * MLSTM["d_model"] // MLSTM["heads"]
    xm = x @ p["xm_proj"].T
    xc = F.silu(depthwise_causal_conv(xm, p["xc_conv"]))
    q, k, v = xc @ p["q_proj"].T, xc @ p["k_proj"].T, xm @ p["v_proj"].T
    qkv = torch.cat([q, k, v], -1)
    i = qkv @ torch.cat([p["i_proj"], p["i_proj1"], p["i_proj2"]], 1).T + p["i_proj_bias"]
    f = F.logsigmoid(qkv @ torch.cat([p["f_proj"], p["f_proj1"], p["f_proj2"]], 1).T + p["f_bias"])
    heads = dict(q=q.view(B, T, H, d), k=k.view(B, T, H, d), v=v.view(B, T, H, d), i=i, f=f)
    eps = ref.args.get("eps", 0.0)
    h, _ = mlstm_parallel(heads, None, eps=eps)
    normed = F.layer_norm(h, (d,), eps=1e-5) * p["norm_w"]
    out = (normed.reshape(B, T, H * d) + p["skip"].reshape(-1) * xc) * F.silu(x @ p["y_proj"].T)
    y, _ = ref.layer(x, p)
    check(model, y, out @ p["y_proj1"].T, "block")


def test_mlstm_forget_bias_init_is_linspace_3_6():
    p = our_ref("mlstm", d_model=8, heads=4).init_params()
    check("mlstm", p["f_bias"], torch.linspace(3, 6, 4, dtype=F64), "forget bias", 1e-15)


def test_mlstm_variants_agree():
    """The stabilised cell with eps = 0 and the unstabilised one compute the same outputs (paper App. A)."""
    inputs, _ = make_mlstm(False)(gen(13), 2, 17, 2)
    o1, _ = our_ref("mlstm", **MLSTM)(**inputs, eps=0.0)
    o2, _ = our_ref("mlstm_exp", **MLSTM)(**inputs)
    check("mlstm", o1, o2, "stabilised vs unstabilised")
