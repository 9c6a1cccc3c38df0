"""Independent references for the fp64 interpreter (DESIGN §7, link 1 of the oracle chain).

Nothing here uses seqdsl: each reference is either flash-linear-attention's ``naive_*`` code run in
float64 (see ``fla_in_fp64``), ``torch.nn.LSTM``, or a few lines written from the model's paper,
computed along a different path than the interpreter's step loop where one exists (the SSD
quadratic form for Mamba-2, the convolution kernel for S4D, powers of lambda for LRU).

All references take and return our layout: streams ``[B, T, (H), *dims]``, states ``[N, (H), *dims]``.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

F64, C128 = torch.float64, torch.complex128
_NARROW = {torch.float64: torch.float32, torch.complex128: torch.complex64}


# ------------------------------------------------------------------ running fla's naive code in fp64
class _WidenCount:
    casts = 0


@contextlib.contextmanager
def fla_in_fp64():
    """Within the block, a float64 (complex128) tensor asked to become float32 (complex64) stays wide.

    fla's naive references upcast their inputs with ``.float()`` / ``.to(torch.float32)`` and create
    buffers with ``new_zeros(..., dtype=torch.float32)`` / ``new_tensor(..., dtype=torch.float)``;
    patched here, the same code runs in float64. Yields a counter of the casts it widened, so a test
    can check the patch was in effect (and the output dtype tells whether anything escaped it).
    """
    T = torch.Tensor
    saved = {name: getattr(T, name) for name in ("float", "to", "new_zeros", "new_ones", "new_empty", "new_tensor",
                                                 "new_full")}
    count = _WidenCount()

    def widen(self, dtype):
        if _NARROW.get(self.dtype) is dtype:
            count.casts += 1
            return self.dtype
        return dtype

    def float_(self, *args, **kwargs):
        if self.dtype is torch.float64:
            count.casts += 1
            return self
        return saved["float"](self, *args, **kwargs)

    def to(self, *args, **kwargs):
        args = list(args)
        for i, a in enumerate(args):
            if isinstance(a, torch.dtype):
                args[i] = widen(self, a)
        if args and isinstance(args[0], torch.Tensor) and _NARROW.get(self.dtype) is args[0].dtype:
            count.casts += 1
            args[0:1] = [args[0].device, self.dtype]
        if "dtype" in kwargs:
            kwargs["dtype"] = widen(self, kwargs["dtype"])
        return saved["to"](self, *args, **kwargs)

    def factory(name):
        def new(self, *args, **kwargs):
            if "dtype" in kwargs:
                kwargs["dtype"] = widen(self, kwargs["dtype"])
            return saved[name](self, *args, **kwargs)
        return new

    try:
        T.float = float_
        T.to = to
        for name in ("new_zeros", "new_ones", "new_empty", "new_tensor", "new_full"):
            setattr(T, name, factory(name))
        yield count
    finally:
        for name, fn in saved.items():
            setattr(T, name, fn)


def _fla(fn, *args, **kwargs):
    """Call an fla naive function in fp64; assert the patch was needed and every output is fp64."""
    with fla_in_fp64() as count:
        out = fn(*args, **kwargs)
    assert count.casts > 0, f"{fn.__name__}: no fp32 cast intercepted (did fla change?)"
    for t in (out if isinstance(out, tuple) else (out,)):
        for x in (t if isinstance(t, tuple) else (t,)):
            assert x is None or x.dtype is F64, f"{fn.__name__} returned {x.dtype}, not float64"
    return out


def head_first(x: torch.Tensor) -> torch.Tensor:
    """[B, T, H, ...] -> [B, H, T, ...]"""
    return x.transpose(1, 2)


# ------------------------------------------------------------------ fla-based references
def fla_linear_attention(inputs, extra, h0, scale):
    """fla ``naive_recurrent_linear_attn(normalize=True)``: o = (S^T q s) / (z^T q s + 1e-10)."""
    from fla.ops.linear_attn.naive import naive_recurrent_linear_attn

    init = None if h0 is None else (h0[0], h0[1].unsqueeze(1))       # fla's z is [B, 1, H, K]
    o, (S, z) = _fla(naive_recurrent_linear_attn, inputs["q"], inputs["k"], inputs["v"], scale=scale,
                     initial_state=init, output_final_state=True, normalize=True)
    return o, (S, z.squeeze(1))


def fla_simple_gla(q, k, v, g, scale, h0):
    from fla.ops.simple_gla.naive import naive_recurrent_simple_gla

    return _fla(naive_recurrent_simple_gla, q, k, v, g, scale=scale, initial_state=h0, output_final_state=True)


def retnet_log_decay(heads: int) -> torch.Tensor:
    """RetNet's multi-scale decay (Sun et al. 2023, §2.2): gamma_h = 1 - 2^(-5-h), in log space."""
    return torch.tensor([math.log(1 - 2.0 ** (-5 - h)) for h in range(heads)], dtype=F64)


def fla_retnet_simple_gla(inputs, extra, h0, scale):
    q = inputs["q"]
    g = inputs["g_gamma"].expand(q.shape[0], q.shape[1], -1)                  # [B, T, H]
    return fla_simple_gla(q, inputs["k"], inputs["v"], g, scale, h0)


def fla_retnet_naive_retention(inputs, extra, h0, scale):
    """fla ``naive_retention`` (head-first, quadratic form): computes gamma itself, scale K^-0.5, no state."""
    from fla.ops.retention.naive import naive_retention

    assert h0 is None
    o = _fla(naive_retention, *(head_first(inputs[n]) for n in ("q", "k", "v")))
    return head_first(o), None


def fla_gla(inputs, extra, h0, scale):
    """fla ``naive_recurrent_gla`` (hard-codes scale K^-0.5)."""
    from fla.ops.gla.naive import naive_recurrent_gla

    return _fla(naive_recurrent_gla, inputs["q"], inputs["k"], inputs["v"], inputs["gk"],
                initial_state=h0, output_final_state=True)


def fla_deltanet(inputs, extra, h0, scale):
    """fla ``delta_rule_recurrence`` (head-first; scales q by K^-0.5 itself)."""
    from fla.ops.delta_rule.naive import delta_rule_recurrence

    o, S = _fla(delta_rule_recurrence, *(head_first(inputs[n]) for n in ("q", "k", "v", "beta")),
                initial_state=h0, output_final_state=True)
    return head_first(o), S


def fla_gated_deltanet(inputs, extra, h0, scale):
    """fla ``naive_recurrent_gated_delta_rule(q, k, v, beta, g)``."""
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

    return _fla(naive_recurrent_gated_delta_rule, inputs["q"], inputs["k"], inputs["v"], inputs["beta"], inputs["g"],
                scale=scale, initial_state=h0, output_final_state=True)


def fla_mamba2(inputs, extra, h0, scale):
    """Mamba-2 as fla's simple GLA: q = C, k = B (one group, shared by heads), v = dt u, g = -exp(A_log) dt."""
    u, dt = inputs["u"], inputs["dt"]
    H = u.shape[2]
    q = inputs["C"].unsqueeze(2).expand(-1, -1, H, -1)
    k = inputs["B"].unsqueeze(2).expand(-1, -1, H, -1)
    g = -torch.exp(inputs["A_log"]) * dt
    o, S = fla_simple_gla(q, k, dt.unsqueeze(-1) * u, g, 1.0, h0)
    return o + inputs["D"][:, None] * u, S


# ------------------------------------------------------------------ references from the papers
def ssd_mamba2(inputs, extra, h0, scale):
    """Mamba-2's SSD in its quadratic (attention-like) form (Dao & Gu 2024, §4-5):

    y = (L o C B^T) (dt u) + D u,  L[t, s] = exp(sum_{s < r <= t} dt_r A)  (t >= s, else 0),  A = -exp(A_log),
    plus the initial-state term C_t^T exp(sum_{r <= t} dt_r A) S_0; the final state is the same sum at t = T.
    """
    u, B_, C_, dt = inputs["u"], inputs["B"], inputs["C"], inputs["dt"]        # [b,t,h,p] [b,t,n] [b,t,n] [b,t,h]
    a = -torch.exp(inputs["A_log"]) * dt                                      # [b, t, h] log decay
    cum = a.cumsum(1)
    T = u.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()                        # [t, s]
    seg = cum[:, :, None, :] - cum[:, None, :, :]                            # [b, t, s, h]
    L = torch.exp(seg.masked_fill(~causal[None, :, :, None], -math.inf))
    x = dt.unsqueeze(-1) * u
    y = torch.einsum("btn,bsn,btsh,bshp->bthp", C_, B_, L, x)
    from_end = torch.exp(cum[:, -1:] - cum)                                   # [b, s, h]
    S = torch.einsum("bsh,bsn,bshp->bhnp", from_end, B_, x)
    if h0 is not None:
        y = y + torch.einsum("btn,bth,bhnp->bthp", C_, torch.exp(cum), h0)
        S = S + torch.exp(cum[:, -1])[..., None, None] * h0
    return y + inputs["D"][:, None] * u, S


def selective_scan_mamba(inputs, extra, h0, scale):
    """Mamba's S6 (Gu & Dao 2023, Alg. 2 and §3.5): per channel d, with A = -exp(A_log),

    h_t = exp(delta_t A_d) h_{t-1} + delta_t B_t u_t,   y_t = C_t^T h_t + D_d u_t.
    """
    u, delta, B_, C_ = inputs["u"], inputs["delta"], inputs["B"], inputs["C"]  # [b,t,d] [b,t,d] [b,t,n] [b,t,n]
    A = -torch.exp(inputs["A_log"])                                           # [d, n]
    dA = torch.exp(torch.einsum("btd,dn->btdn", delta, A))
    dBu = torch.einsum("btd,btn,btd->btdn", delta, B_, u)
    h = torch.zeros(u.shape[0], u.shape[2], A.shape[1], dtype=F64) if h0 is None else h0
    ys = []
    for t in range(u.shape[1]):
        h = dA[:, t] * h + dBu[:, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C_[:, t]))
    y = torch.stack(ys, dim=1) if ys else u.new_zeros(u.shape)
    return y + inputs["D"] * u, h


def lru_lambda_gamma(nu_log, theta_log):
    """LRU (Orvieto et al. 2023, §3.3): lambda = exp(-exp(nu) + i exp(theta)), gamma = sqrt(1 - |lambda|^2)."""
    lam = torch.exp(torch.complex(-torch.exp(nu_log), torch.exp(theta_log)))
    return lam, torch.sqrt(1 - lam.abs() ** 2)


def lru_powers(inputs, extra, h0, scale):
    """LRU unrolled: h_t = lambda^(t+1) h_0 + sum_{s <= t} lambda^(t-s) gamma (B u)_s, powers as exp(k log lambda)."""
    bu = inputs["bu"]                                                         # [b, t, n] complex
    lam, gamma = lru_lambda_gamma(inputs["nu_log"], inputs["theta_log"])
    log_lam = torch.complex(-torch.exp(inputs["nu_log"]), torch.exp(inputs["theta_log"]))
    T = bu.shape[1]
    lag = torch.arange(T, dtype=F64)[:, None] - torch.arange(T, dtype=F64)[None, :]       # t - s
    powers = torch.exp(lag[..., None].clamp(min=0) * log_lam) * (lag >= 0)[..., None]     # [t, s, n]
    h = torch.einsum("tsn,bsn->btn", powers, gamma * bu)
    if h0 is not None:
        h = h + torch.exp((torch.arange(T, dtype=F64)[:, None] + 1) * log_lam) * h0[:, None]
    final = h[:, -1] if T else h0
    return h, final


def lru_layer(x, p, h0=None):
    """The LRU layer from the paper's equations: y = Re(C h) + D x, h_t = lambda h_{t-1} + gamma (B x_t)."""
    lam, gamma = lru_lambda_gamma(p["nu_log"], p["theta_log"])
    Bc, Cc = torch.complex(p["B_re"], p["B_im"]), torch.complex(p["C_re"], p["C_im"])
    bu = x.to(C128) @ Bc.T                                                   # [b, t, n]
    h = torch.zeros(x.shape[0], Bc.shape[0], dtype=C128) if h0 is None else h0
    ys = []
    for t in range(x.shape[1]):
        h = lam * h + gamma * bu[:, t]
        ys.append((h @ Cc.T).real + p["D"] * x[:, t])
    return torch.stack(ys, dim=1), h


def s4d_convolution(inputs, extra, h0, scale):
    """S4D (Gu et al. 2022, §3) through its convolution kernel, per channel, with ZOH and B = 1:

    K_l = 2 Re(sum_n C_n (exp(dt A_n) - 1) / A_n exp(dt A_n)^l),  y = causal_conv(K, u) + D u (by FFT),
    plus 2 Re(sum_n C_n exp(dt A_n)^(t+1) h0_n); the final state sums the same powers at t = T.
    """
    u = inputs["u"]                                                           # [b, t, d]
    dt = torch.exp(inputs["log_dt"])                                          # [d]
    A = torch.complex(-torch.exp(inputs["A_log_re"]), inputs["A_im"])        # [d, n]
    C = torch.complex(inputs["C_re"], inputs["C_im"])
    dtA = dt[:, None] * A
    dB = (torch.exp(dtA) - 1) / A
    T = u.shape[1]
    ell = torch.arange(T, dtype=F64)
    vander = torch.exp(dtA[..., None] * ell)                                  # [d, n, l] = exp(dt A)^l
    K = 2 * torch.einsum("dn,dnl->dl", C * dB, vander).real                  # [d, l]
    n_fft = 2 * max(T, 1)
    y = torch.fft.irfft(torch.fft.rfft(u.transpose(1, 2), n=n_fft) * torch.fft.rfft(K, n=n_fft), n=n_fft)[..., :T]
    y = y.transpose(1, 2) + inputs["D"] * u
    h = torch.einsum("dnl,bld->bdn", vander.flip(-1), u.to(C128)) * dB       # sum_l exp(dt A)^(T-1-l) dB u_l
    if h0 is not None:
        decay = vander * torch.exp(dtA)[..., None]                            # exp(dt A)^(t+1)
        y = y + 2 * torch.einsum("dn,dnt,bdn->btd", C, decay, h0).real
        h = h + torch.exp(dtA * T) * h0
    return y, h


def linear_rnn_powers(inputs, extra, h0, scale):
    """Linear RNN (survey Eq. 2, sigma = id) unrolled: h_t = A^(t+1) h_0 + sum_{s <= t} A^(t-s) (B u)_s."""
    bu, A = inputs["bu"], inputs["A"]                                         # [b, t, n], [n, n]
    T = bu.shape[1]
    powers = [torch.eye(A.shape[0], dtype=F64)]
    for _ in range(T):
        powers.append(A @ powers[-1])
    P = torch.stack(powers)                                                   # P[k] = A^k
    lag = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    M = P[lag.clamp(min=0)] * (lag >= 0)[..., None, None]                     # [t, s, n, n]
    h = torch.einsum("tsij,bsj->bti", M, bu)
    if h0 is not None:
        h = h + torch.einsum("tij,bj->bti", P[1:], h0)
    return h, h[:, -1]


def torch_lstm(inputs, extra, h0, scale):
    """torch.nn.LSTM (fp64) on the raw input x; returns o = h_t and the final state (c, h)."""
    lstm = extra["lstm"]
    x = extra["x"]
    hx = None if h0 is None else (h0[1].unsqueeze(0), h0[0].unsqueeze(0))      # torch takes (h0, c0)
    out, (h_n, c_n) = lstm(x, hx)
    return out, (c_n[0], h_n[0])


def lstm_streams(lstm: torch.nn.LSTM, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The op's inputs from a torch LSTM: x W_ih^T + b_ih + b_hh split in torch's (i, f, g, o) order, U = W_hh."""
    gates = x @ lstm.weight_ih_l0.T + lstm.bias_ih_l0 + lstm.bias_hh_l0
    xs = gates.chunk(4, dim=-1)
    us = lstm.weight_hh_l0.chunk(4, dim=0)
    out = {f"x{g}": t for g, t in zip("ifgo", xs)}
    out.update({f"U_{g}": t for g, t in zip("ifgo", us)})
    return out


# ------------------------------------------------------------------ comparison
def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (max-abs error when expected is ~0)."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if actual.numel() == 0:
        return 0.0
    diff = (actual.to(C128 if actual.is_complex() or expected.is_complex() else F64) - expected).abs().max().item()
    peak = expected.abs().max().item()
    return diff / peak if peak > 1 else diff


def flatten(x):
    if x is None:
        return []
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in flatten(item)]
    return [x]


ERRORS: dict[str, float] = {}     # model -> worst error seen in this session (for the report)


def assert_matches(model: str, actual, expected, tol: float = 1e-10, what: str = "") -> float:
    """Compare (nested tuples of) tensors; every expected tensor must be fp64/complex128."""
    a, e = flatten(actual), flatten(expected)
    assert len(a) == len(e), f"{model} {what}: {len(a)} tensors vs {len(e)}"
    worst = 0.0
    for i, (x, y) in enumerate(zip(a, e)):
        assert y.dtype in (F64, C128), f"{model} {what}[{i}]: the reference is {y.dtype}, not fp64"
        err = rel_err(x, y)
        assert err <= tol, f"{model} {what}[{i}]: error {err:.3e} > {tol:.0e}"
        worst = max(worst, err)
    ERRORS[model] = max(ERRORS.get(model, 0.0), worst)
    return worst


def l2norm(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def select_state(state, i: int):
    """Sequence i of a state (or a tuple of states) with N first, keeping the N axis."""
    if isinstance(state, (tuple, list)):
        return tuple(s[i:i + 1] for s in state)
    return state[i:i + 1]
