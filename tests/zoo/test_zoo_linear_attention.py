"""Zoo: the kernelised / gated linear attentions, AFT, Infini-attention, the delta-rule variants and RWKV-4..7
against independent references (DESIGN §7, link 1 of the oracle chain).

Each op case feeds the same random fp64 inputs (in their realistic ranges) to ``reference(model)`` and to a
reference that does not use seqdsl: flash-linear-attention's ``naive_*`` code run in float64 where fla has
the family, otherwise a few lines written here from the paper's equations, along another computation path
than a step loop where the paper gives one (summed / unrolled / quadratic forms). Outputs and final states
must agree to 1e-10 (max error relative to the peak), on odd shapes with K != V, T = 1, an initial state
and varlen. The layer tests run ``ref.layer(x, params)`` against the paper's block written here in plain
torch (with fla's RWKV-7 torch references for that block), and the RWKV initialisers against the reference
code's loops.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import oracles as O
import seqdsl

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
H, K, V = 2, 5, 4            # heads, key and value dims (K != V)
TOL = 1e-10
F64 = torch.float64


def our_op(spec: str, **hparams):
    return seqdsl.reference(seqdsl.load(EXAMPLES / f"{spec}.seq", **hparams))


def randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=F64)


def uniform(g, lo, hi, *shape):
    return torch.rand(*shape, generator=g, dtype=F64) * (hi - lo) + lo


def hf(x):
    """[B, T, H, ...] <-> [B, H, T, ...] (fla's head-first naive references)."""
    return x.transpose(1, 2)


def shift(x):
    """x_{t-1} along dim 1, zero before the first token (RWKV's time_shift = ZeroPad2d((0, 0, 1, -1)))."""
    return F.pad(x, (0, 0, 1, -1))


# ------------------------------------------------------------------ fla's naive code in fp64
@contextlib.contextmanager
def _factories_in_fp64():
    """torch.zeros / empty / ones / full asked for float32 give float64 (fla's naive code allocates with them)."""
    saved = {n: getattr(torch, n) for n in ("zeros", "empty", "ones", "full")}

    def factory(name):
        def make(*args, **kwargs):
            if kwargs.get("dtype") is torch.float32:
                kwargs["dtype"] = F64
            return saved[name](*args, **kwargs)
        return make

    try:
        for n in saved:
            setattr(torch, n, factory(n))
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch, n, fn)


def fla64(fn, *args, **kwargs):
    """An fla naive function run in fp64 (tests/oracles.py's patch plus the torch factories); fp64 out."""
    with O.fla_in_fp64() as count, _factories_in_fp64():
        out = fn(*args, **kwargs)
    assert count.casts > 0, f"{fn.__name__}: no fp32 cast intercepted (did fla change?)"
    for t in O.flatten(out):
        assert t.dtype is F64, f"{fn.__name__} returned {t.dtype}"
    return out


def fla_linear(q, k, v, h0):
    """fla naive_recurrent_linear_attn(normalize=False, scale=1): (o_t = S_t^T q_t, S_T), S_t = S_{t-1} + k v^T."""
    from fla.ops.linear_attn.naive import naive_recurrent_linear_attn

    return fla64(naive_recurrent_linear_attn, q, k, v, scale=1.0, initial_state=h0, output_final_state=True)


def fla_linear_normaliser(q, k, z0):
    """The normaliser z_t^T q_t and z_T as the same linear attention with v = 1 (z is S with V = 1)."""
    ones = q.new_ones(q.shape[:-1] + (1,))
    d, zT = fla_linear(q, k, ones, None if z0 is None else z0.unsqueeze(-1))
    return d[..., 0], zT[..., 0]


def fla_simple_gla(q, k, v, g, h0):
    from fla.ops.simple_gla.naive import naive_recurrent_simple_gla

    return fla64(naive_recurrent_simple_gla, q, k, v, g, scale=1.0, initial_state=h0, output_final_state=True)


def pick(h0, i):
    return None if h0 is None else h0[i]


# ------------------------------------------------------------------ references, one per model
def ref_performer(inp, h0):
    """Performer (FAVOR+) causal linear attention: o_t = S_t^T phi(q_t) / (z_t^T phi(q_t))."""
    num, S = fla_linear(inp["q"], inp["k"], inp["v"], pick(h0, 0))
    den, z = fla_linear_normaliser(inp["q"], inp["k"], pick(h0, 1))
    return num / den[..., None], (S, z)


def ref_transnormer(inp, h0):
    """NormAttention's linear part (Q (K^T V), causal): fla's linear attention without normaliser, scale 1."""
    return fla_linear(inp["q"], inp["k"], inp["v"], h0)


def ref_cosformer(inp, h0):
    """cosFormer: (cos block + sin block) / clamp_min(denominators, 1e-6) as the reference code."""
    nc, Sc = fla_linear(inp["q_cos"], inp["k_cos"], inp["v"], pick(h0, 0))
    ns, Ss = fla_linear(inp["q_sin"], inp["k_sin"], inp["v"], pick(h0, 1))
    dc, zc = fla_linear_normaliser(inp["q_cos"], inp["k_cos"], pick(h0, 2))
    ds, zs = fla_linear_normaliser(inp["q_sin"], inp["k_sin"], pick(h0, 3))
    return (nc + ns) / torch.clamp_min(dc + ds, 1e-6)[..., None], (Sc, Ss, zc, zs)


def ref_rfa(inp, h0):
    """RFA-Gate via fla's simple GLA per feature block: S_t = g_t S_{t-1} + ((1 - g_t) phi(k_t)) v_t^T."""
    g = inp["g"]
    gate = (1 - torch.exp(g))[..., None]
    ones = inp["v"].new_ones(inp["v"].shape[:-1] + (1,))
    ns, Ss = fla_simple_gla(inp["q_sin"], gate * inp["k_sin"], inp["v"], g, pick(h0, 0))
    nc, Sc = fla_simple_gla(inp["q_cos"], gate * inp["k_cos"], inp["v"], g, pick(h0, 1))
    z0s, z0c = (None, None) if h0 is None else (h0[2].unsqueeze(-1), h0[3].unsqueeze(-1))
    ds, zs = fla_simple_gla(inp["q_sin"], gate * inp["k_sin"], ones, g, z0s)
    dc, zc = fla_simple_gla(inp["q_cos"], gate * inp["k_cos"], ones, g, z0c)
    return (ns + nc) / (ds + dc), (Ss, Sc, zs[..., 0], zc[..., 0])


def ref_aft_simple(inp, h0):
    """AFT-simple, causal Eq. (17): sigma(q_t) o sum_{i<=t} e^{k_i} v_i / sum_{i<=t} e^{k_i}, as masked matmuls."""
    q, k, v = inp["q"], inp["k"], inp["v"]
    T = q.shape[1]
    causal = torch.ones(T, T, dtype=F64).tril()
    num = torch.einsum("ts,bsc->btc", causal, torch.exp(k) * v)
    den = torch.einsum("ts,bsc->btc", causal, torch.exp(k))
    if h0 is not None:
        num, den = num + h0[0][:, None], den + h0[1][:, None]
    a = num[:, -1] if T else h0[0]
    b = den[:, -1] if T else h0[1]
    return torch.sigmoid(q) * num / den, (a, b)


def ref_decaying_fast_weights(inp, h0):
    """Mao's Eq. (14) unrolled: o_t = sum_{i<=t} (q_t o A_it)^T k_i (v_i o B_it) with A_it = prod_{i<j<=t} a_j."""
    q, k, v = inp["q"], inp["k"], inp["v"]
    ca, cb = inp["gk"].cumsum(1), inp["gv"].cumsum(1)                     # log prefix products [b,t,h,*]
    T = q.shape[1]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    la = (ca[:, :, None] - ca[:, None]).masked_fill(~mask[None, :, :, None, None], -math.inf)   # [b,t,i,h,k]
    lb = (cb[:, :, None] - cb[:, None]).masked_fill(~mask[None, :, :, None, None], -math.inf)
    o = torch.einsum("bthk,btihk,bihk,bihv,btihv->bthv", q, torch.exp(la), k, v, torch.exp(lb))
    Sa, Sb = torch.exp(ca[:, -1:] - ca), torch.exp(cb[:, -1:] - cb)
    S = torch.einsum("bihk,bihk,bihv,bihv->bhkv", Sa, k, v, Sb)
    if h0 is not None:
        o = o + torch.einsum("bthk,bthk,bhkv,bthv->bthv", q, torch.exp(ca), h0, torch.exp(cb))
        S = S + torch.exp(ca[:, -1])[..., None] * h0 * torch.exp(cb[:, -1])[..., None, :]
    return o, S


def relit_flat(a1, a2):
    """ReLiT's flattened eta = 2 feature axis: flatten(x (x) [w_1, w_2]) = index i * 2 + j, as the reference."""
    return torch.stack([a1, a2], dim=-1).flatten(-2)


def relit_recurrence(phi_q, phi_k, gamma, beta, v, C0=None, s0=None):
    """ReLiT/GaLiTe in the paper's layout C [dv, d_ker]: C = (1 - beta gamma^T) o C + (beta o v)(gamma o phi_k)^T."""
    Bn, T, Hn, D = phi_k.shape
    C = torch.zeros(Bn, Hn, v.shape[-1], D, dtype=F64) if C0 is None else C0.clone()
    s = torch.zeros(Bn, Hn, D, dtype=F64) if s0 is None else s0.clone()
    out = []
    for t in range(T):
        gam, bet = gamma[:, t], beta[:, t]
        C = (1 - bet[..., :, None] * gam[..., None, :]) * C + (bet * v[:, t])[..., :, None] * (gam * phi_k[:, t])[..., None, :]
        s = (1 - gam) * s + gam * phi_k[:, t]
        out.append(torch.einsum("bhvd,bhd->bhv", C, phi_q[:, t]) / ((s * phi_q[:, t]).sum(-1) + 1e-10)[..., None])
    return torch.stack(out, 1) if out else v.new_zeros(v.shape), C, s


def ref_relit(inp, h0):
    def unflat(x):                                      # [.., 2 dk] (index i * 2 + j) -> blocks j = 1, 2
        return x[..., 0::2], x[..., 1::2]

    C0 = s0 = None
    if h0 is not None:                                  # our blocks [dk, dv] -> the paper's [dv, 2 dk]
        C0 = relit_flat(h0[0].transpose(-1, -2), h0[1].transpose(-1, -2))
        s0 = relit_flat(h0[2], h0[3])
    o, C, s = relit_recurrence(relit_flat(inp["q1"], inp["q2"]), relit_flat(inp["k1"], inp["k2"]),
                               relit_flat(inp["gamma1"], inp["gamma2"]), inp["beta"], inp["v"], C0, s0)
    C1, C2 = unflat(C)
    s1, s2 = unflat(s)
    return o, (C1.transpose(-1, -2), C2.transpose(-1, -2), s1, s2)


def ref_infini(inp, h0, eps=1e-6):
    """Infini-attention, paper §2.1.2 with one-token segments: retrieve from M_{s-1}, delta update, gate with v."""
    q, k, v = inp["q"], inp["k"], inp["v"]
    Bn, T = q.shape[:2]
    M = torch.zeros(Bn, H, K, V, dtype=F64) if h0 is None else h0[0].clone()
    z = torch.zeros(Bn, H, K, dtype=F64) if h0 is None else h0[1].clone()
    gate = torch.sigmoid(inp["beta"])[:, None]
    out = []
    for t in range(T):
        sq, sk = q[:, t], k[:, t]
        a_mem = torch.einsum("bhk,bhkv->bhv", sq, M) / ((sq * z).sum(-1, keepdim=True) + eps)
        retrieved = torch.einsum("bhk,bhkv->bhv", sk, M) / ((sk * z).sum(-1, keepdim=True) + eps)
        M = M + sk[..., :, None] * (v[:, t] - retrieved)[..., None, :]
        z = z + sk
        out.append(gate * a_mem + (1 - gate) * v[:, t])
    return (torch.stack(out, 1) if out else v.new_zeros(v.shape)), (M, z)


def ref_deltaproduct(inp, h0):
    """fla naive_recurrent_gated_delta_product (num_householder = 2, no gate): keys / values / betas interleaved."""
    from fla.ops.gated_delta_product.naive import naive_recurrent_gated_delta_product

    def interleave(a, b):                                # [B, T, ...] x 2 -> [B, 2T, ...], token-major
        return torch.stack([a, b], dim=2).flatten(1, 2)

    q = inp["q"]
    o, S = fla64(naive_recurrent_gated_delta_product, q, interleave(inp["k1"], inp["k2"]),
                 interleave(inp["v1"], inp["v2"]), None, interleave(inp["beta1"], inp["beta2"]),
                 scale=q.shape[-1] ** -0.5, initial_state=None if h0 is None else h0.clone(),
                 output_final_state=True, num_householder=2)
    return o, S


def ref_deltanet_negeig(inp, h0):
    """fla delta_rule_recurrence (head-first, q scaled by K^-0.5) with beta in (0, 2)."""
    return O.fla_deltanet(inp, {}, h0, None)


def ref_rwkv4_sum(k, v, w, u, h0):
    """RWKV-4 Eq. (21) summed: weights e^{-(t-1-i) e^w + k_i} over i < t and e^{u + k_t} for the current token;
    an initial state (a, b) enters as e^{-t e^w} (a, b). Returns wkv and the final (a, b)."""
    lam = torch.exp(w)                                                      # the decay rate per step
    T = k.shape[1]
    t = torch.arange(T, dtype=F64)
    lag = t[:, None] - 1 - t[None, :]                                       # t - 1 - i
    wgt = torch.exp(-lag.clamp(min=0)[None, :, :, None] * lam + k[:, None]) * (lag >= 0)[None, :, :, None]
    now = torch.exp(u + k)
    num = torch.einsum("btic,bic->btc", wgt, v) + now * v
    den = wgt.sum(2) + now
    fin = torch.exp(-(T - 1 - t)[None, :, None] * lam + k)                  # weights in the final state
    a, b = (fin * v).sum(1), fin.sum(1)
    if h0 is not None:
        decay = torch.exp(-t[None, :, None] * lam)
        num, den = num + decay * h0[0][:, None], den + decay * h0[1][:, None]
        a, b = a + torch.exp(-T * lam) * h0[0], b + torch.exp(-T * lam) * h0[1]
    return num / den, (a, b)


def ref_rwkv4(inp, h0):
    return ref_rwkv4_sum(inp["k"], inp["v"], inp["w"], inp["u"], h0)


def fla_rwkv6(r, k, v, logw, u, h0):
    """fla naive_recurrent_rwkv6 (head-first), scale 1: o_t = (S_{t-1} + diag(u) k v^T)^T r, S = e^w o S + k v^T."""
    from fla.ops.rwkv6.recurrent_naive import naive_recurrent_rwkv6

    o, S = fla64(naive_recurrent_rwkv6, hf(r), hf(k), hf(v), hf(logw), u, scale=1.0, initial_state=h0,
                 output_final_state=True)
    return hf(o), S


def ref_rwkv5_fla(inp, h0):
    r = inp["r"]
    logw = (-torch.exp(inp["w"])).expand(r.shape)                           # fixed decay, broadcast over time
    return fla_rwkv6(r, inp["k"], inp["v"], logw, inp["u"], h0)


def ref_rwkv5_sum(inp, h0):
    """Eagle Eq. (23) (with E10, E11): wkv_t = diag(u) k_t v_t^T + sum_{i<t} diag(w)^{t-1-i} k_i v_i^T, o = wkv^T r."""
    r, k, v = inp["r"], inp["k"], inp["v"]
    logw = -torch.exp(inp["w"])                                             # [H, K]
    T = r.shape[1]
    t = torch.arange(T, dtype=F64)
    lag = t[:, None] - 1 - t[None, :]
    pw = torch.exp(lag.clamp(min=0)[:, :, None, None] * logw) * (lag >= 0)[:, :, None, None]   # [t, i, H, K]
    o = torch.einsum("bthk,tihk,bihk,bihv->bthv", r, pw, k, v) + (r * inp["u"] * k).sum(-1, keepdim=True) * v
    fin = torch.exp((T - 1 - t)[:, None, None] * logw)                      # [i, H, K]
    S = torch.einsum("ihk,bihk,bihv->bhkv", fin, k, v)
    if h0 is not None:
        o = o + torch.einsum("bthk,thk,bhkv->bthv", r, torch.exp(t[:, None, None] * logw), h0)
        S = S + torch.exp(T * logw)[..., None] * h0
    return o, S


def ref_rwkv6(inp, h0):
    return fla_rwkv6(inp["r"], inp["k"], inp["v"], inp["w"], inp["u"], h0)


def ref_rwkv7(inp, h0):
    """fla dplr_recurrence (head-first; it scales q by K^-0.5, so r is pre-scaled by K^0.5 to get scale 1)."""
    from fla.ops.generalized_delta_rule.dplr.naive import dplr_recurrence

    r = inp["r"]
    o, S = fla64(dplr_recurrence, hf(r * r.shape[-1] ** 0.5), hf(inp["k"]), hf(inp["v"]), hf(inp["a"]),
                 hf(inp["b"]), hf(inp["w"]), initial_state=h0, output_final_state=True)
    return hf(o), S


# ------------------------------------------------------------------ random op inputs, realistic ranges
def l2n(x):
    return F.normalize(x, dim=-1)


def make_performer(g, B, T, N):
    M_ = 7
    inp = dict(q=torch.exp(0.5 * randn(g, B, T, H, M_)), k=torch.exp(0.5 * randn(g, B, T, H, M_)),
               v=randn(g, B, T, H, V))
    return inp, (randn(g, N, H, M_, V), uniform(g, 0.5, 3.0, N, H, M_))


def make_transnormer(g, B, T, N):
    inp = dict(q=F.elu(randn(g, B, T, H, K)), k=F.elu(randn(g, B, T, H, K)), v=randn(g, B, T, H, V))
    return inp, randn(g, N, H, K, V)


def make_cosformer(g, B, T, N):
    M_ = 40.0
    pos = torch.arange(T, dtype=F64)[None, :, None, None]
    ang = math.pi / 2 * (pos + 1) / M_
    qr, kr = torch.relu(randn(g, B, T, H, K)), torch.relu(randn(g, B, T, H, K))
    inp = dict(v=randn(g, B, T, H, V), q_cos=qr * torch.cos(ang), q_sin=qr * torch.sin(ang),
               k_cos=kr * torch.cos(ang), k_sin=kr * torch.sin(ang))
    h0 = (randn(g, N, H, K, V), randn(g, N, H, K, V), uniform(g, 0.5, 3, N, H, K), uniform(g, 0.0, 0.5, N, H, K))
    return inp, h0


def make_rfa(g, B, T, N):
    D, sig = 9, 0.6
    omega = randn(g, K, D)

    def feats(x):
        proj = sig * l2n(x) @ omega
        return torch.sin(proj) / D ** 0.5, torch.cos(proj) / D ** 0.5

    q_sin, q_cos = feats(randn(g, B, T, H, K))
    k_sin, k_cos = feats(randn(g, B, T, H, K))
    z_sin, z_cos = (sum(f) for f in zip(*(feats(randn(g, N, H, K)) for _ in range(3))))   # 3 earlier keys
    inp = dict(q_sin=q_sin, q_cos=q_cos, k_sin=k_sin, k_cos=k_cos, v=randn(g, B, T, H, V),
               g=F.logsigmoid(randn(g, B, T, H) + 1))
    return inp, (randn(g, N, H, D, V), randn(g, N, H, D, V), z_sin, z_cos)


def make_aft_simple(g, B, T, N):
    C = 6
    inp = dict(q=randn(g, B, T, C), k=randn(g, B, T, C), v=randn(g, B, T, C))
    return inp, (randn(g, N, C), uniform(g, 0.5, 3, N, C))


def make_decaying_fast_weights(g, B, T, N):
    inp = dict(q=randn(g, B, T, H, K), k=randn(g, B, T, H, K), v=randn(g, B, T, H, V),
               gk=F.logsigmoid(randn(g, B, T, H, K) + 2), gv=F.logsigmoid(randn(g, B, T, H, V) + 2))
    return inp, randn(g, N, H, K, V)


def make_relit(g, B, T, N):
    def feat():
        return torch.relu(randn(g, B, T, H, K)) * torch.relu(randn(g, B, T, H, 1))

    pg = torch.sigmoid(randn(g, B, T, H, K))
    inp = dict(q1=feat(), q2=feat(), k1=feat(), k2=feat(), gamma1=pg * torch.sigmoid(randn(g, B, T, H, 1)),
               gamma2=pg * torch.sigmoid(randn(g, B, T, H, 1)), beta=torch.sigmoid(randn(g, B, T, H, V)),
               v=randn(g, B, T, H, V))
    h0 = (randn(g, N, H, K, V), randn(g, N, H, K, V), uniform(g, 0.5, 2, N, H, K), uniform(g, 0.5, 2, N, H, K))
    return inp, h0


def make_infini(g, B, T, N):
    inp = dict(q=F.elu(randn(g, B, T, H, K)) + 1, k=F.elu(randn(g, B, T, H, K)) + 1, v=randn(g, B, T, H, V),
               beta=randn(g, H))
    return inp, (randn(g, N, H, K, V), uniform(g, 0.5, 3, N, H, K))


def make_deltaproduct(g, B, T, N):
    inp = dict(q=l2n(randn(g, B, T, H, K)), k1=l2n(randn(g, B, T, H, K)), k2=l2n(randn(g, B, T, H, K)),
               v1=randn(g, B, T, H, V), v2=randn(g, B, T, H, V), beta1=2 * torch.sigmoid(randn(g, B, T, H)),
               beta2=2 * torch.sigmoid(randn(g, B, T, H)))
    return inp, randn(g, N, H, K, V)


def make_deltanet_negeig(g, B, T, N):
    inp = dict(q=l2n(randn(g, B, T, H, K)), k=l2n(randn(g, B, T, H, K)), v=randn(g, B, T, H, V),
               beta=2 * torch.sigmoid(randn(g, B, T, H)))
    return inp, randn(g, N, H, K, V)


def make_rwkv4(g, B, T, N):
    C = 6
    inp = dict(k=randn(g, B, T, C), v=randn(g, B, T, C), w=uniform(g, -2.0, 1.0, C), u=randn(g, C))
    return inp, (randn(g, N, C), uniform(g, 0.5, 3, N, C))


def make_rwkv5(g, B, T, N):
    inp = dict(r=randn(g, B, T, H, K), k=randn(g, B, T, H, K), v=randn(g, B, T, H, V),
               w=uniform(g, -3.0, 1.0, H, K), u=randn(g, H, K))
    return inp, randn(g, N, H, K, V)


def make_rwkv6(g, B, T, N):
    inp = dict(r=randn(g, B, T, H, K), k=randn(g, B, T, H, K), v=randn(g, B, T, H, V),
               w=-torch.exp(0.7 * randn(g, B, T, H, K) - 1), u=randn(g, H, K))
    return inp, randn(g, N, H, K, V)


def make_rwkv7(g, B, T, N):
    kh, iclr = l2n(randn(g, B, T, H, K)), torch.sigmoid(randn(g, B, T, H, K))
    inp = dict(r=randn(g, B, T, H, K), w=-math.exp(-0.5) * torch.sigmoid(randn(g, B, T, H, K)),
               k=randn(g, B, T, H, K), v=randn(g, B, T, H, V), a=-kh, b=kh * iclr)
    return inp, randn(g, N, H, K, V)


# ------------------------------------------------------------------ the op comparisons
@dataclass(frozen=True)
class Case:
    model: str
    oracle: str
    make: object                 # make(g, B, T, N) -> (inputs, initial state)
    ref: object                  # ref(inputs, h0) -> (o, final state)
    hparams: dict = field(default_factory=dict)


HKV = dict(heads=H, dk=K, dv=V)
CASES = [
    Case("performer", "fla_linear_attn_num_and_den", make_performer, ref_performer, dict(HKV, m=7)),
    Case("rfa", "fla_simple_gla_per_feature_block", make_rfa, ref_rfa, dict(HKV, n=9)),
    Case("cosformer", "fla_linear_attn_cos_sin_blocks", make_cosformer, ref_cosformer, HKV),
    Case("transnormer", "fla_linear_attn_unnormalised", make_transnormer, ref_transnormer, HKV),
    Case("aft_simple", "aft_eq17_causal_masked", make_aft_simple, ref_aft_simple, dict(hidden=6)),
    Case("decaying_fast_weights", "mao_eq14_unrolled", make_decaying_fast_weights, ref_decaying_fast_weights, HKV),
    Case("relit", "relit_paper_flat_features", make_relit, ref_relit, HKV),
    Case("infini_attention", "infini_paper_one_token_segments", make_infini, ref_infini, HKV),
    Case("deltaproduct", "fla_naive_recurrent_gated_delta_product", make_deltaproduct, ref_deltaproduct, HKV),
    Case("deltanet_negeig", "fla_delta_rule_recurrence", make_deltanet_negeig, ref_deltanet_negeig, HKV),
    Case("rwkv4", "rwkv4_eq21_summed", make_rwkv4, ref_rwkv4, dict(d_model=6)),
    Case("rwkv5", "fla_naive_recurrent_rwkv6", make_rwkv5, ref_rwkv5_fla, HKV),
    Case("rwkv5", "eagle_eq23_summed", make_rwkv5, ref_rwkv5_sum, HKV),
    Case("rwkv6", "fla_naive_recurrent_rwkv6", make_rwkv6, ref_rwkv6, HKV),
    Case("rwkv7", "fla_dplr_recurrence", make_rwkv7, ref_rwkv7, HKV),
]
SHAPES = [(2, 1), (2, 13), (1, 37)]


def run_both(case: Case, B: int, T: int, with_h0: bool, seed: int = 0, cu_seqlens=None):
    g = torch.Generator().manual_seed(seed)
    n_states = B if cu_seqlens is None else len(cu_seqlens) - 1
    inputs, h0 = case.make(g, B, T, n_states)
    h0 = h0 if with_h0 else None
    op = our_op(case.model, **case.hparams)
    assert set(op.inputs) == set(inputs), f"the op takes {op.inputs}"
    ours = op(**inputs, initial_state=h0, output_final_state=True, cu_seqlens=cu_seqlens)
    if cu_seqlens is None:
        return ours, case.ref(inputs, h0)
    streams = set(op.checked.op_streams)               # the references know no varlen: one sequence at a time
    outs, finals = [], []
    for i, (lo, hi) in enumerate(zip(cu_seqlens[:-1], cu_seqlens[1:])):
        seg = {n: t[:, lo:hi] if n in streams else t for n, t in inputs.items()}
        o, ht = case.ref(seg, None if h0 is None else O.select_state(h0, i))
        outs.append(o)
        finals.append(O.flatten(ht))
    return ours, (torch.cat(outs, dim=1), tuple(torch.cat(parts) for parts in zip(*finals)))


def case_params():
    for case in CASES:
        for B, T in SHAPES:
            for with_h0 in (False, True):
                yield pytest.param(case, B, T, with_h0,
                                   id=f"{case.model}-vs-{case.oracle}-B{B}T{T}-{'h0' if with_h0 else 'zero_h0'}")


@pytest.mark.parametrize("case, B, T, with_h0", list(case_params()))
def test_op_matches_independent_reference(case, B, T, with_h0):
    (o, ht), (o_ref, ht_ref) = run_both(case, B, T, with_h0)
    O.assert_matches(case.model, o, o_ref, TOL, "output")
    O.assert_matches(case.model, ht, ht_ref, TOL, "final state")


CU_SEQLENS = [0, 1, 6, 13, 24]      # lengths 1, 5, 7, 11


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.model}-vs-{c.oracle}")
def test_varlen_with_initial_state_matches_reference_per_sequence(case):
    (o, ht), (o_ref, ht_ref) = run_both(case, 1, CU_SEQLENS[-1], True, seed=1, cu_seqlens=CU_SEQLENS)
    O.assert_matches(case.model, o, o_ref, TOL, "varlen output")
    O.assert_matches(case.model, ht, ht_ref, TOL, "varlen final state")


# ------------------------------------------------------------------ whole layers, from the papers' blocks
def heads_(x, n=H):
    return x.reshape(*x.shape[:-1], n, -1)


def lin(x, p, name, bias=False):
    y = x @ p[name].T
    return y + p[name + "_bias"] if bias else y


def for_model(name):
    """Parametrise a test by the model it checks, so that its id names the model (examples/README.md)."""
    return pytest.mark.parametrize("spec", [name])


def layer_case(spec, seed, **hparams):
    ref = our_op(spec, **hparams)
    params = ref.init_params(seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    x = randn(g, 2, 11, ref.checked.dim_sizes["d_model"])
    return ref, params, x, g


def perturb(params, g, names, scale=0.3):
    """Replace zero / constant initialisations by random values, so that every path of the block counts."""
    for n in names:
        params[n] = params[n] + scale * randn(g, *params[n].shape)


@for_model("performer")
def test_performer_layer_matches_favor_plus(spec):
    """y = W_o concat_h D^-1 ((phi(Q) phi(K)^T o M) V), phi(x) = exp(w^T x - |x|^2 / 2) / sqrt(m) on x = q dk^-1/4."""
    ref, p, x, _ = layer_case(spec, 1, d_model=8, **HKV, m=7)
    y, _ = ref.layer(x, p)
    qs, ks = heads_(lin(x, p, "qs_proj")) * K ** -0.25, heads_(lin(x, p, "ks_proj")) * K ** -0.25
    v = heads_(lin(x, p, "v_proj"))

    def phi(u):
        return torch.exp(u @ p["omega"] - (u * u).sum(-1, keepdim=True) / 2) / 7 ** 0.5

    att = torch.einsum("bthm,bshm->bhts", phi(qs), phi(ks)) * torch.ones(11, 11, dtype=F64).tril()
    o = torch.einsum("bhts,bshv->bthv", att / att.sum(-1, keepdim=True), v)
    O.assert_matches("performer", y, lin(o.flatten(-2), p, "y_proj"), TOL, "layer")
    assert torch.equal(ref.init_params(seed=5)["omega"], ref.init_params(seed=5)["omega"])


@for_model("rfa")
def test_rfa_layer_matches_gated_random_feature_attention(spec):
    """RFA-Gate unrolled: weights prod_{i<j<=t} g_j (1 - g_i) phi(q_t).phi(k_i), phi = [sin, cos](sigma w^T x) / sqrt(D)."""
    ref, p, x, g = layer_case(spec, 2, d_model=8, **HKV, n=9)
    perturb(p, g, ["sigma", "g_proj_bias"])
    y, _ = ref.layer(x, p)
    sig = p["sigma"][:, None]

    def phi(u):                                          # l2-normalised as fla's l2norm (eps 1e-6 in the root)
        proj = sig * ((u * torch.rsqrt((u * u).sum(-1, keepdim=True) + 1e-6)) @ p["omega"])
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1) / 9 ** 0.5

    fq, fk = phi(heads_(lin(x, p, "qn_proj"))), phi(heads_(lin(x, p, "kn_proj")))
    v = heads_(lin(x, p, "v_proj"))
    gate = torch.sigmoid(lin(x, p, "g_proj", bias=True))                 # [b, t, h]
    cl = torch.log(gate).cumsum(1)
    T = x.shape[1]
    decay = torch.exp(cl[:, :, None] - cl[:, None]) * torch.ones(T, T, dtype=F64).tril()[None, :, :, None]
    wgt = torch.einsum("btsh,bsh,bthd,bshd->bhts", decay, 1 - gate, fq, fk)
    o = torch.einsum("bhts,bshv->bthv", wgt, v) / wgt.sum(-1)[..., None].transpose(1, 2)
    O.assert_matches("rfa", y, lin(o.flatten(-2), p, "y_proj"), TOL, "layer")


@for_model("cosformer")
def test_cosformer_layer_matches_the_cos_reweighted_quadratic_form(spec):
    """sim(i, j) = relu(q_i).relu(k_j) cos(pi/2 (i - j) / M); o_i = sum_j sim v_j / clamp_min(sum_j sim, 1e-6)."""
    M_ = 16
    ref, p, x, _ = layer_case(spec, 3, d_model=8, **HKV, max_len=M_)
    y, _ = ref.layer(x, p)
    q, k = torch.relu(heads_(lin(x, p, "qr_proj", True))), torch.relu(heads_(lin(x, p, "kr_proj", True)))
    v = heads_(lin(x, p, "v_proj", True))
    i = torch.arange(x.shape[1], dtype=F64)
    reweight = torch.cos(math.pi / 2 * (i[:, None] - i[None, :]) / M_) * (i[:, None] >= i[None, :])
    sim = torch.einsum("bihd,bjhd->bhij", q, k) * reweight
    o = torch.einsum("bhij,bjhv->bihv", sim, v) / torch.clamp_min(sim.sum(-1), 1e-6).transpose(1, 2)[..., None]
    O.assert_matches("cosformer", y, lin(o.flatten(-2), p, "y_proj", True), TOL, "layer")


@for_model("transnormer")
def test_transnormer_layer_matches_norm_attention(spec):
    """NormAttention: SimpleRMSNorm over all heads of (elu(Q) elu(K)^T o M) V, then the output projection."""
    ref, p, x, _ = layer_case(spec, 4, d_model=8, **HKV)
    y, _ = ref.layer(x, p)
    q, k = F.elu(heads_(lin(x, p, "q_proj", True))), F.elu(heads_(lin(x, p, "k_proj", True)))
    v = heads_(lin(x, p, "v_proj", True))
    att = torch.einsum("bthd,bshd->bhts", q, k) * torch.ones(11, 11, dtype=F64).tril()
    o = torch.einsum("bhts,bshv->bthv", att, v).flatten(-2)
    o = o / (o.norm(dim=-1, keepdim=True) * o.shape[-1] ** -0.5 + 1e-8)      # fairseq-evo SimpleRMSNorm
    O.assert_matches("transnormer", y, lin(o, p, "y_proj", True), TOL, "layer")


@for_model("aft_simple")
def test_aft_simple_layer_matches_eq17(spec):
    ref, p, x, _ = layer_case(spec, 5, d_model=8, hidden=6)
    y, _ = ref.layer(x, p)
    q, k, v = (lin(x, p, f"{n}_proj", True) for n in "qkv")
    w = torch.softmax(k[:, None].expand(-1, 11, -1, -1).masked_fill(
        ~torch.ones(11, 11, dtype=torch.bool).tril()[None, :, :, None], -math.inf), dim=2)   # softmax over t' <= t
    o = torch.sigmoid(q) * torch.einsum("btsc,bsc->btc", w, v)
    O.assert_matches("aft_simple", y, lin(o, p, "y_proj", True), TOL, "layer")


@for_model("relit")
def test_relit_layer_matches_the_paper_with_flattened_features(spec):
    """phi(x) = flatten(relu(W_p x) (x) relu(w_p x)) with eta = 2 (the reference ParameteredProjection)."""
    ref, p, x, _ = layer_case(spec, 6, d_model=8, **HKV)
    y, _ = ref.layer(x, p)

    def pp(base, first, second, f):                      # [b, t, h, dk] (x) [b, t, h, 2], flattened i * 2 + j
        outer = f(heads_(lin(x, p, base, True)))[..., :, None] * f(torch.stack(
            [lin(x, p, first, True), lin(x, p, second, True)], dim=-1))[..., None, :]
        return outer.flatten(-2)

    o, _, _ = relit_recurrence(pp("pq_proj", "q1_proj", "q2_proj", torch.relu),
                               pp("pk_proj", "k1_proj", "k2_proj", torch.relu),
                               pp("pg_proj", "gamma1_proj", "gamma2_proj", torch.sigmoid),
                               torch.sigmoid(heads_(lin(x, p, "beta_proj", True))), heads_(lin(x, p, "v_proj", True)))
    O.assert_matches("relit", y, lin(o.flatten(-2), p, "y_proj", True), TOL, "layer")


@pytest.mark.parametrize("spec, names", [("deltanet_negeig", ["beta"]), ("deltaproduct", ["beta1", "beta2"])],
                         ids=["deltanet_negeig", "deltaproduct"])
def test_negative_eigenvalue_betas_are_two_sigmoids(spec, names):
    """The DeltaNet[-1, 1] and DeltaProduct beta streams are 2 sigmoid(W x): they exceed 1 (eigenvalue < 0)."""
    ref, p, x, g = layer_case(spec, 7, d_model=8, **HKV)
    for n in names:
        p[f"{n}_proj"] = 3 * p[f"{n}_proj"]
    streams = ref.op_inputs(x, p)
    for n in names:
        beta = 2 * torch.sigmoid(lin(x, p, f"{n}_proj"))
        O.assert_matches(spec, streams[n], beta, 1e-14, n)
        assert beta.max() > 1 and beta.min() < 1, "the test input must reach negative eigenvalues"


# ------------------------------------------------------------------ RWKV blocks
def layer_norm(x, p, name):
    return F.layer_norm(x, x.shape[-1:], p[name + "_norm"], p[name + "_norm_bias"], 1e-5)


@for_model("rwkv4")
def test_rwkv4_block_matches_the_paper(spec):
    """LN -> time mixing (Eq. (18)-(21), W_o (sigmoid(r) o wkv)) -> residual -> LN -> channel mixing -> residual."""
    ref, p, x, g = layer_case(spec, 8, d_model=6, hidden=10)
    perturb(p, g, ["mu_k", "mu_v", "mu_r", "cmu_k", "cmu_r", "xn_norm_bias"], 0.2)
    y, (a, b) = ref.layer(x, p, output_final_state=True)
    xn = layer_norm(x, p, "xn")

    def mix(u, mu):                                                         # mu u_t + (1 - mu) u_{t-1}
        return mu * u + (1 - mu) * shift(u)

    r, k, v = (lin(mix(xn, p[f"mu_{n}"]), p, f"{n}_proj") for n in "rkv")
    wkv, (a_ref, b_ref) = ref_rwkv4_sum(k, v, p["w"], p["u"], None)
    h = x + lin(torch.sigmoid(r) * wkv, p, "h_proj")
    hn = layer_norm(h, p, "hn")
    kk = torch.relu(lin(mix(hn, p["cmu_k"]), p, "y_proj1")) ** 2
    y_ref = h + torch.sigmoid(lin(mix(hn, p["cmu_r"]), p, "y_proj")) * lin(kk, p, "y_proj2")
    O.assert_matches("rwkv4", (y, a, b), (y_ref, a_ref, b_ref), TOL, "block")


def rwkv_channel_mix(h, p, cmu_k, cmu_r):
    """Finch / Eagle channel mixing with lerp(x_t, x_{t-1}, mu) token shift: sigmoid(r') o W'_v relu(k')^2."""
    xx = shift(h) - h
    kk = torch.relu(lin(h + xx * cmu_k, p, "y_proj1")) ** 2
    return torch.sigmoid(lin(h + xx * cmu_r, p, "y_proj")) * lin(kk, p, "y_proj2")


@for_model("rwkv5")
def test_rwkv5_block_matches_the_reference_code(spec):
    """Eagle x052 block; its GroupNorm of x / head_size_divisor (8) with eps 1e-5 is the spec's eps = 64e-5."""
    ref, p, x, g = layer_case(spec, 9, d_model=8, heads=2, dk=4, dv=4, hidden=12)
    perturb(p, g, ["ln_x_w", "ln_x_b", "xn_norm_bias", "u", "mu_k", "mu_v", "mu_r", "mu_g", "cmu_k", "cmu_r"], 0.2)
    y, S = ref.layer(x, p, output_final_state=True)
    xn = layer_norm(x, p, "xn")
    xk, xv, xr, xg = (torch.lerp(xn, shift(xn), p[f"mu_{n}"]) for n in "kvrg")
    r, k, v = (heads_(lin(u, p, f"{n}_proj")) for u, n in ((xr, "r"), (xk, "k"), (xv, "v")))
    gate = F.silu(lin(xg, p, "g_proj"))
    o, S_ref = ref_rwkv5_fla(dict(r=r, k=k, v=v, w=p["w"], u=p["u"]), None)
    Bn, T = x.shape[:2]
    o = F.group_norm(o.reshape(Bn * T, -1) / 8, 2, p["ln_x_w"].flatten(), p["ln_x_b"].flatten(), 1e-5)
    h = x + lin(o.reshape(Bn, T, -1) * gate, p, "h_proj")
    y_ref = h + rwkv_channel_mix(layer_norm(h, p, "hn"), p, p["cmu_k"], p["cmu_r"])
    O.assert_matches("rwkv5", (y, S), (y_ref, S_ref), TOL, "block")


@for_model("rwkv6")
def test_rwkv6_block_matches_the_reference_code(spec):
    """Finch x060: ddlerp token shift with five LoRAs, LoRA decay, wkv6 with bonus, GroupNorm, SiLU gate, CMix."""
    ref, p, x, g = layer_case(spec, 10, d_model=8, heads=2, dk=4, dv=4, hidden=12, mix_rank=3, decay_rank=5)
    perturb(p, g, [f"mix_a_{c}" for c in "wkvrg"] + [f"mix_b_{c}" for c in "wkvrg"] + [f"mu_{c}" for c in "xwkvrg"]
            + ["decay_a", "ln_x_w", "ln_x_b", "u", "xn_norm_bias", "cmu_k", "cmu_r"], 0.3)
    y, S = ref.layer(x, p, output_final_state=True)
    xn = layer_norm(x, p, "xn")
    xx = shift(xn) - xn
    xxx = xn + xx * p["mu_x"]
    mixed = {c: xn + xx * (p[f"mu_{c}"] + torch.tanh(xxx @ p[f"mix_a_{c}"].T) @ p[f"mix_b_{c}"].T) for c in "wkvrg"}
    r, k, v = (heads_(lin(mixed[c], p, f"{c}_proj")) for c in "rkv")
    gate = F.silu(lin(mixed["g"], p, "g_proj"))
    ww = torch.tanh(mixed["w"] @ p["decay_a"].T) @ p["w_proj"].T
    logw = heads_(-torch.exp(p["time_decay"].flatten() + ww))
    o, S_ref = fla_rwkv6(r, k, v, logw, p["u"], None)
    Bn, T = x.shape[:2]
    o = F.group_norm(o.reshape(Bn * T, -1), 2, p["ln_x_w"].flatten(), p["ln_x_b"].flatten(), 64e-5)
    h = x + lin(o.reshape(Bn, T, -1) * gate, p, "h_proj")
    y_ref = h + rwkv_channel_mix(layer_norm(h, p, "hn"), p, p["cmu_k"], p["cmu_r"])
    O.assert_matches("rwkv6", (y, S), (y_ref, S_ref), TOL, "block")


@for_model("rwkv7")
def test_rwkv7_block_matches_the_reference_code(spec):
    """Goose x070 (layer 0), with fla's RWKV-7 torch references for the token shift, the replacement key,
    the bonus-and-gate output and the channel mixing, F.normalize / F.group_norm and the dplr naive recurrence."""
    from fla.ops.generalized_delta_rule.dplr.naive import dplr_recurrence
    from fla.ops.rwkv7.channel_mixing import channel_mixing_rwkv7_torch
    from fla.ops.rwkv7.fused_addcmul import torch_addcmul_rwkv7
    from fla.ops.rwkv7.fused_k_update import k_update_ref
    from fla.ops.rwkv7.gate_output_correction import gate_output_correction_ref

    ref, p, x, g = layer_case(spec, 11, d_model=8, heads=2, dk=4, dv=4, hidden=12, decay_rank=3, iclr_rank=3,
                              gate_rank=5)
    perturb(p, g, ["w1", "a1", "g1", "ln_x_w", "ln_x_b", "r_k", "k_a", "xn_norm_bias", "cx_k"]
            + [f"x_{c}" for c in "rwkvag"], 0.3)
    y, S = ref.layer(x, p, output_final_state=True)
    xn = layer_norm(x, p, "xn")
    xr, xw, xk, xv, xa, xg = torch_addcmul_rwkv7(xn, shift(xn) - xn, *(p[f"x_{c}"] for c in "rwkvag"))
    r, k, v = lin(xr, p, "r_proj"), lin(xk, p, "key_proj"), lin(xv, p, "v_proj")
    d = p["w0"].flatten() + torch.tanh(xw @ p["w1"].T) @ p["w_proj"].T
    logw = -torch.exp(-F.softplus(-d) - 0.5)                                # soft clamp; decay = exp(-exp(.))
    a = torch.sigmoid(p["a0"].flatten() + (xa @ p["a1"].T) @ p["iclr_proj"].T)
    gate = torch.sigmoid(xg @ p["g1"].T) @ p["g_proj"].T
    kk = F.normalize(heads_(k * p["k_k"].flatten()), dim=-1, p=2.0)
    k = k_update_ref(k, a, p["k_a"].flatten())
    o, S_ref = fla64(dplr_recurrence, hf(heads_(r) * 2.0), hf(heads_(k)), hf(heads_(v)), hf(-kk),
                     hf(kk * heads_(a)), hf(heads_(logw)), output_final_state=True)    # r * K^0.5 (K = 4)
    Bn, T = x.shape[:2]
    o = F.group_norm(hf(o).reshape(Bn * T, -1), 2, p["ln_x_w"].flatten(), p["ln_x_b"].flatten(), 64e-5)
    o = gate_output_correction_ref(o.reshape(Bn, T, -1), heads_(r), heads_(k), p["r_k"], heads_(v), gate)
    h = x + lin(o, p, "h_proj")
    ffn, _ = channel_mixing_rwkv7_torch(layer_norm(h, p, "hn"), x.new_zeros(Bn, x.shape[-1]), p["cx_k"],
                                        p["y_proj"].T, p["y_proj1"].T)
    O.assert_matches("rwkv7", (y, S), (h + ffn, S_ref), TOL, "block")


# ------------------------------------------------------------------ RWKV initialisers vs the reference code
def ddd(C):
    return torch.tensor([i / C for i in range(C)], dtype=F64)


def rwkv4_to_6_init(spec, layer_id, n_layer=12.0, C=8):
    """The reference code's initialisers (RWKV-v4neo RWKV_TimeMix / ChannelMix, RWKV-v5 x052 and x060)."""
    r01, r10 = layer_id / (n_layer - 1), 1.0 - layer_id / n_layer
    decay56 = torch.tensor([-6 + 5 * (n / (C - 1)) ** (0.7 + 1.3 * r01) for n in range(C)], dtype=F64).reshape(2, 4)
    faaaa = torch.tensor([r01 * (1 - n / (C - 1)) + ((n + 1) % 3 - 1) * 0.1 for n in range(C)], dtype=F64).reshape(2, 4)
    if spec == "rwkv4":
        return dict(w=torch.tensor([-5 + 8 * (h / (C - 1)) ** (0.7 + 1.3 * r01) for h in range(C)], dtype=F64),
                    u=torch.tensor([math.log(0.3) + ((i + 1) % 3 - 1) * 0.5 for i in range(C)], dtype=F64),
                    mu_k=ddd(C) ** r10, mu_v=ddd(C) ** r10 + 0.3 * r01, mu_r=ddd(C) ** (0.5 * r10),
                    cmu_k=ddd(C) ** r10, cmu_r=ddd(C) ** r10)
    if spec == "rwkv5":                                  # x052's time_mix m, here as lerp(x_t, x_{t-1}, 1 - m)
        return dict(w=decay56, u=faaaa, mu_k=1 - ddd(C) ** r10, mu_v=1 - (ddd(C) ** r10 + 0.3 * r01),
                    mu_r=1 - ddd(C) ** (0.5 * r10), mu_g=1 - ddd(C) ** (0.5 * r10), cmu_k=1 - ddd(C) ** r10,
                    cmu_r=1 - ddd(C) ** r10)
    return dict(time_decay=decay56, u=faaaa, mu_x=1 - ddd(C) ** r10, mu_w=1 - ddd(C) ** r10,
                mu_k=1 - ddd(C) ** r10, mu_v=1 - (ddd(C) ** r10 + 0.3 * r01), mu_r=1 - ddd(C) ** (0.5 * r10),
                mu_g=1 - ddd(C) ** (0.5 * r10), cmu_k=1 - ddd(C) ** (r10 ** 3), cmu_r=1 - ddd(C) ** (r10 ** 3),
                mix_a_w=torch.zeros(32, C, dtype=F64), decay_a=torch.zeros(64, C, dtype=F64))


@pytest.mark.parametrize("spec", ["rwkv4", "rwkv5", "rwkv6"])
@pytest.mark.parametrize("layer_id", [0.0, 3.0], ids=["layer0", "layer3"])
def test_rwkv4_to_6_initialisers_match_the_reference_code(spec, layer_id):
    shape = dict(d_model=8) if spec == "rwkv4" else dict(d_model=8, heads=2, dk=4, dv=4)
    params = our_op(spec, **shape, layer_id=layer_id, n_layer=12.0).init_params()
    for n, value in rwkv4_to_6_init(spec, layer_id).items():
        O.assert_matches(spec, params[n], value, 1e-13, f"init {n}")
    if spec == "rwkv6":
        assert params["mix_b_w"].abs().max() <= 0.01 and params["mix_b_w"].std() > 0


@for_model("rwkv7")
def test_rwkv7_initialisers_match_the_reference_code(spec):
    C, N = 8, 4
    p = our_op(spec, d_model=C, heads=2, dk=N, dv=N).init_params()
    lin_, zig, www = (torch.zeros(C, dtype=F64) for _ in range(3))
    for n in range(C):                                  # RWKV_Tmix_x070.__init__ with layer_id = 0
        lin_[n] = n / (C - 1) - 0.5
        zig[n] = ((n % N) - ((N - 1) / 2)) / ((N - 1) / 2)
        zig[n] = zig[n] * abs(zig[n])
        www[n] = -6 + 6 * (n / (C - 1)) ** (1 + 1 * 0.0 ** 0.3)
    expect = dict(x_r=1 - ddd(C) ** 0.2, x_w=1 - ddd(C) ** 0.9, x_k=1 - ddd(C) ** 0.7, x_v=1 - ddd(C) ** 0.7,
                  x_a=1 - ddd(C) ** 0.9, x_g=1 - ddd(C) ** 0.2, w0=(www + 0.5 + zig * 2.5).reshape(2, N),
                  a0=(-0.19 + zig * 0.3 + lin_ * 0.4).reshape(2, N), k_k=(0.71 - lin_ * 0.1).reshape(2, N),
                  k_a=torch.full((2, N), 1.02, dtype=F64), r_k=torch.full((2, N), -0.04, dtype=F64),
                  cx_k=1 - ddd(C) ** (1.0 ** 4), w1=torch.zeros(32, C, dtype=F64))
    for n, value in expect.items():
        O.assert_matches("rwkv7", p[n], value, 1e-13, f"init {n}")
