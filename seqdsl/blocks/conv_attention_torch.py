"""Torch modules of the conv_attention block kinds (Hyena, MEGA, FLASH, GAU).

Every block: ``forward(x [B, T, d], cache) -> (y [B, T, d], cache)``; ``cache`` is None in training and a
dict while generating (``{}`` at the first call), so a prompt can be read in one call and continued a token at
a time. ``state_size(seq_len)`` counts the numbers carried per sequence after seq_len tokens.
The stack supplies the pre-norm and the residual: a block returns what is added to x.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from seqdsl.runtime.torch_ops import causal_conv


def fft_causal_conv(u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Causal long convolution by FFT: u [B, T, C], h [L, C] (lags 0..L-1, zero beyond) -> y [B, T, C],

        y_t = sum_{m = 0}^{min(t, L - 1)} h_m u_{t - m}.

    Both are zero-padded to 2T before the real FFT, so the circular convolution has no wrap-around.
    """
    T = u.shape[1]
    n = 2 * T
    spectrum = torch.fft.rfft(u, n=n, dim=1) * torch.fft.rfft(h[:T].to(u.dtype), n=n, dim=0)
    return torch.fft.irfft(spectrum, n=n, dim=1)[:, :T]


def _lag_bias(bias: torch.Tensor, lag: torch.Tensor) -> torch.Tensor:
    """A learned bias per lag (bias [L]); lags past L - 1 share the last entry; lag [Tq, Tk] -> [Tq, Tk]."""
    return bias[lag.clamp(0, bias.shape[0] - 1)]


# ------------------------------------------------------------------------------------------------ Hyena
class Sine(nn.Module):
    """sin(w ⊙ x) with learned frequencies w [width] (initialised to 1)."""

    def __init__(self, width: int):
        super().__init__()
        self.freq = nn.Parameter(torch.ones(width))

    def forward(self, x):
        return torch.sin(self.freq * x)


class HyenaFilter(nn.Module):
    """Hyena's implicit filters: ``count`` long filters of d channels, h^n_t = FFN(PE(t))^n ⊙ Window(t), plus a
    per-channel bias D^n (the filter's direct term: (h * u)_t + D u_t).

    PE(t) = [t / l_max, cos(2 pi k t / l_max), sin(2 pi k t / l_max) for k = 0..K-1], K = (emb_dim - 1) / 2;
    FFN = Linear(emb_dim, F), Sine, Linear(F, F), Sine, Linear(F, F), Sine, Linear(F, count d, no bias),
    F = filter_order;
    Window_c(t) = exp(-alpha_c t / l_max), alpha_c from ln(100) / 1.5 to ln(100) / 0.3 across the d channels
    (the filter has decayed to 1% at 150% .. 30% of l_max). Lags t >= l_max: h_t = 0.
    """

    def __init__(self, count: int, d: int, filter_order: int, emb_dim: int, l_max: int):
        super().__init__()
        self.count, self.d, self.emb_dim, self.l_max = count, d, emb_dim, l_max
        F_ = filter_order
        self.ffn = nn.Sequential(nn.Linear(emb_dim, F_), Sine(F_), nn.Linear(F_, F_), Sine(F_), nn.Linear(F_, F_),
                                 Sine(F_), nn.Linear(F_, count * d, bias=False))
        self.D = nn.Parameter(torch.randn(count, d))

    def positional_encoding(self, t: torch.Tensor) -> torch.Tensor:
        """PE(t) for lags t [L, 1]: [L, emb_dim]."""
        k = torch.arange((self.emb_dim - 1) // 2, dtype=t.dtype, device=t.device)[None, :]
        angle = 2 * math.pi * k * t / self.l_max
        return torch.cat([t / self.l_max, torch.cos(angle), torch.sin(angle)], dim=1)

    def forward(self, L: int):
        """The first L lags (L <= l_max): h [L, count, d] and D [count, d]."""
        t = torch.arange(L, dtype=self.D.dtype, device=self.D.device)[:, None]
        alpha = torch.linspace(math.log(100) / 1.5, math.log(100) / 0.3, self.d, dtype=t.dtype, device=t.device)
        window = torch.exp(-alpha * t / self.l_max)                             # [L, d]
        h = self.ffn(self.positional_encoding(t)).view(L, self.count, self.d) * window[:, None]
        return h, self.D


class Hyena(nn.Module):
    """The Hyena operator of order N (Poli et al. 2023, Definition 3.1), per channel:

        v, x^1..x^N = split(shortconv(W_in u + b_in))          (N + 1 projections, depthwise causal conv)
        z^1 = v,   z^{n+1} = x^n ⊙ (h^n * z^n + D^n z^n),       y = W_out z^{N+1} + b_out

    with h^n the implicit filters (HyenaFilter) and * a causal convolution over time (by FFT). With
    first_filter = 0, h^1 is the identity (z^2 = x^1 ⊙ v), as in the released code whose order 2 is
    y = q ⊙ (h * (k ⊙ v)) (survey erratum E37). Decoding carries the last l_max - 1 inputs of each long
    convolution and the short convolution's window.
    """

    def __init__(self, d: int, options: dict, seed: int):
        super().__init__()
        self.d, self.order, self.l_max = d, options["order"], options["l_max"]
        self.first_filter = bool(options["first_filter"])
        self.width = options["short_conv"]
        n_proj = (self.order + 1) * d
        self.in_proj = nn.Linear(d, n_proj)
        self.short_weight = nn.Parameter(torch.randn(n_proj, self.width) / math.sqrt(self.width))
        self.short_bias = nn.Parameter(torch.zeros(n_proj))
        self.n_long = self.order if self.first_filter else self.order - 1
        self.filter = HyenaFilter(self.n_long, d, options["filter_order"], options["emb_dim"], self.l_max)
        self.out_proj = nn.Linear(d, d)

    def projections(self, x, conv_cache=None):
        """x [B, T, d] -> ([v, x^1, ..., x^N] each [B, T, d], short conv cache)."""
        p, conv_cache = causal_conv(self.in_proj(x), 1, self.short_weight, conv_cache)
        return (p + self.short_bias).split(self.d, dim=-1), conv_cache

    def forward(self, x, cache=None):
        T = x.shape[1]
        (v, *gates), conv_cache = self.projections(x, None if cache is None else cache.get("conv"))
        history = (cache or {}).get("history") or [None] * self.n_long
        past = 0 if history[0] is None else history[0].shape[1]
        h, D = self.filter(min(past + T, self.l_max))
        z, kept, f = v, [], 0
        for n, gate in enumerate(gates):
            if n == 0 and not self.first_filter:
                z = gate * z
                continue
            full = z if history[f] is None else torch.cat([history[f], z], dim=1)
            z = gate * (fft_causal_conv(full, h[:, f]) + D[f] * full)[:, -T:]
            kept.append(full[:, max(0, full.shape[1] - (self.l_max - 1)):])
            f += 1
        y = self.out_proj(z)
        return y, (None if cache is None else {"conv": conv_cache, "history": kept})

    def state_size(self, seq_len: int) -> int:
        """The long convolutions' inputs (the last l_max - 1 tokens) and the short convolution's window."""
        return self.n_long * self.d * min(seq_len, self.l_max - 1) + (self.order + 1) * self.d * (self.width - 1)


# ------------------------------------------------------------------------------------------------- MEGA
class Mega(nn.Module):
    """MEGA's moving-average gated attention (Ma et al. 2022, §3.2-3.3), single head:

        X' = EMA(X)                                       (the ema cell: silu(damped EMA(X) + omega ⊙ X))
        V = silu(X W_v + b_v)                             [T, e]   e = expand d
        Z = silu(X' W_z + b_z)                            [T, zdim]
        Q = kappa_q ⊙ Z + mu_q,   K = kappa_k ⊙ Z + mu_k
        O = softmax(Q K^T / sqrt(zdim) + b_rel + causal mask) V
        gamma = silu(X' W_gamma + b_gamma)                [T, e]   (reset gate)
        phi = sigmoid(X' W_phi + b_phi)                   [T, d]   (update gate)
        H = silu(X' W_h + (gamma ⊙ O) U_h + b_h)
        Y = phi ⊙ H + (1 - phi) ⊙ X

    b_rel[i, j] = w[i - j], a learned bias per lag (lags past l_max - 1 share the last). With chunk = C > 0
    attention stays within chunks of C tokens (MEGA-chunk; the EMA carries context across them). The block
    returns Y - X = phi ⊙ (H - X): the stack adds X back (its residual is the un-normalised x).
    W_phi, W_z, W_gamma, W_h are one projection of X' (as in the MEGA code), in that order.
    """

    def __init__(self, d: int, options: dict, seed: int):
        super().__init__()
        from seqdsl.blocks.builtin_torch import CellBlock

        self.d, self.zdim, self.e = d, options["zdim"], options["expand"] * d
        self.chunk, self.l_max = options["chunk"], options["l_max"]
        self.ema = CellBlock(d, options["ema"], seed)
        self.v_proj = nn.Linear(d, self.e)
        self.mx_proj = nn.Linear(d, d + self.zdim + self.e + d)
        self.qk_scale = nn.Parameter(torch.randn(2, self.zdim) * 0.02)
        self.qk_offset = nn.Parameter(torch.zeros(2, self.zdim))
        self.rel_bias = nn.Parameter(torch.randn(self.l_max) * 0.02)
        self.h_proj = nn.Linear(self.e, d, bias=False)

    def attention(self, q, k, v, pos0: int):
        """q [B, T, z] at positions pos0.., k [B, S, z], v [B, S, e] at positions pos0 + T - S.. -> [B, T, e]."""
        T, S = q.shape[1], k.shape[1]
        qpos = torch.arange(pos0, pos0 + T, device=q.device)
        kpos = torch.arange(pos0 + T - S, pos0 + T, device=q.device)
        lag = qpos[:, None] - kpos[None, :]
        allowed = lag >= 0
        if self.chunk:
            allowed = allowed & (qpos[:, None] // self.chunk == kpos[None, :] // self.chunk)
        scores = q @ k.transpose(1, 2) / math.sqrt(self.zdim) + _lag_bias(self.rel_bias, lag)
        return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v

    def forward(self, x, cache=None):
        xe, ema_cache = self.ema(x, None if cache is None else cache.get("ema", {}))
        v = F.silu(self.v_proj(x))
        phi, zr, hx = self.mx_proj(xe).split([self.d, self.zdim + self.e, self.d], dim=-1)
        z, gamma = F.silu(zr).split([self.zdim, self.e], dim=-1)
        q, k = (z[..., None, :] * self.qk_scale + self.qk_offset).unbind(-2)
        pos0 = 0 if cache is None else cache.get("pos", 0)
        if cache is not None and "k" in cache:
            k, v = torch.cat([cache["k"], k], dim=1), torch.cat([cache["v"], v], dim=1)
        o = self.attention(q, k, v, pos0)
        h = F.silu(hx + self.h_proj(gamma * o))
        y = torch.sigmoid(phi) * (h - x)
        if cache is None:
            return y, None
        end = pos0 + x.shape[1]
        keep = end - (end // self.chunk) * self.chunk if self.chunk else k.shape[1]
        return y, {"ema": ema_cache, "k": k[:, k.shape[1] - keep:], "v": v[:, v.shape[1] - keep:], "pos": end}

    def state_size(self, seq_len: int) -> int:
        """The EMA's state and the keys and values attended to (at most chunk - 1 tokens when chunked)."""
        kept = min(seq_len, self.chunk - 1) if self.chunk else seq_len
        return self.ema.state_size(seq_len) + (self.zdim + self.e) * kept


# ----------------------------------------------------------------------------------------- FLASH and GAU
class _GatedUnit(nn.Module):
    """GAU's projections (Hua et al. 2022, Eq. 26): u, v = silu(x W_uv + b) (width e = expand d each), the shared
    z = silu(x W_z + b) (width s) and ``heads`` per-dimension scale-and-offset copies of z; y = (u ⊙ o) W_o + b."""

    def __init__(self, d: int, options: dict, heads: int):
        super().__init__()
        self.e, self.s = options["expand"] * d, options["s"]
        self.uv = nn.Linear(d, 2 * self.e)
        self.z = nn.Linear(d, self.s)
        self.gamma = nn.Parameter(torch.randn(heads, self.s) * 0.02)
        self.beta = nn.Parameter(torch.zeros(heads, self.s))
        self.out = nn.Linear(self.e, d)

    def project(self, x):
        """x [B, T, d] -> u, v [B, T, e] and the heads' copies of z, each [B, T, s]."""
        u, v = F.silu(self.uv(x)).chunk(2, dim=-1)
        z = F.silu(self.z(x))
        return u, v, (z[..., None, :] * self.gamma + self.beta).unbind(-2)


class Flash(_GatedUnit):
    """FLASH's mixed chunk attention (Hua et al. 2022, §3.2, Eq. 27), chunks of C tokens; for token i of chunk c:

        local_i  = sum_{j in chunk c, j <= i} relu(qq_i . kq_j / C + b_{i-j})^2 v_j
        global_i = ql_i^T (sum_{chunks h < c} sum_{j in h} kl_j v_j^T) / C
        y_i = W_o (u_i ⊙ (local_i + global_i)) + b_o

    qq, kq, ql, kl: the four scale-and-offset copies of z. The global sum covers the previous chunks only (an
    exclusive chunk-level prefix). Decoding carries the sum over completed chunks [s, e] and the current
    chunk's kq, kl, v.
    """

    def __init__(self, d: int, options: dict, seed: int):
        super().__init__(d, options, heads=4)
        self.chunk = options["chunk"]
        self.rel_bias = nn.Parameter(torch.zeros(self.chunk))

    def forward(self, x, cache=None):
        B, T, _ = x.shape
        C = self.chunk
        u, v, (qq, kq, ql, kl) = self.project(x)
        cache_in = cache or {}
        pos0 = cache_in.get("pos", 0)
        if "kq" in cache_in:                # the current chunk's earlier tokens (their queries are not needed)
            zeros = qq.new_zeros(B, cache_in["kq"].shape[1], self.s)
            qq, ql = torch.cat([zeros, qq], 1), torch.cat([zeros, ql], 1)
            kq, kl, v = (torch.cat([cache_in[n], t], 1) for n, t in (("kq", kq), ("kl", kl), ("v", v)))
        n = kq.shape[1]                     # tokens from the start of a chunk
        G = -(-n // C)
        qq, kq, ql, kl, v = (F.pad(t, (0, 0, 0, G * C - n)).view(B, G, C, -1) for t in (qq, kq, ql, kl, v))
        i = torch.arange(C, device=x.device)
        lag = i[:, None] - i[None, :]
        scores = torch.einsum("bgis,bgjs->bgij", qq, kq) / C + self.rel_bias[lag.clamp(min=0)]
        local = (F.relu(scores) ** 2 * (lag >= 0)) @ v
        kv = torch.einsum("bgcs,bgce->bgse", kl, v) / C                      # [B, G, s, e]
        start = cache_in.get("S", kv.new_zeros(B, self.s, self.e))
        earlier = torch.cat([torch.zeros_like(kv[:, :1]), kv[:, :-1]], dim=1)
        prefix = start[:, None] + earlier.cumsum(1)                          # the chunks before each chunk
        glob = torch.einsum("bgcs,bgse->bgce", ql, prefix)
        o = (local + glob).reshape(B, G * C, self.e)[:, n - T:n]
        y = self.out(u * o)
        if cache is None:
            return y, None
        done = n // C
        rest = n - done * C
        flat = [t.reshape(B, G * C, -1)[:, done * C:n] for t in (kq, kl, v)]
        new = {"S": start + kv[:, :done].sum(1), "pos": pos0 + T}
        if rest:
            new.update(kq=flat[0], kl=flat[1], v=flat[2])
        return y, new

    def state_size(self, seq_len: int) -> int:
        """The sum over completed chunks (s e) and at most C - 1 tokens' kq, kl, v."""
        return self.s * self.e + (2 * self.s + self.e) * min(seq_len, self.chunk - 1)


class GAU(_GatedUnit):
    """The gated attention unit (Hua et al. 2022, Eq. 26, erratum E17), causal:

        o_i = sum_{j <= i} relu(q_i . k_j / l_max + b_{i-j})^2 v_j,     y_i = W_o (u_i ⊙ o_i) + b_o

    q, k: the two scale-and-offset copies of z. GAU scales by 1/n, n the sequence length; a causal decoder
    needs a fixed n: l_max. b: a learned bias per lag (lags past l_max - 1 share the last). Decoding carries
    every token's k and v.
    """

    def __init__(self, d: int, options: dict, seed: int):
        super().__init__(d, options, heads=2)
        self.l_max = options["l_max"]
        self.rel_bias = nn.Parameter(torch.zeros(self.l_max))

    def forward(self, x, cache=None):
        T = x.shape[1]
        u, v, (q, k) = self.project(x)
        cache_in = cache or {}
        pos0 = cache_in.get("pos", 0)
        if "k" in cache_in:
            k, v = torch.cat([cache_in["k"], k], 1), torch.cat([cache_in["v"], v], 1)
        S = k.shape[1]
        lag = torch.arange(pos0, pos0 + T, device=x.device)[:, None] - \
            torch.arange(pos0 + T - S, pos0 + T, device=x.device)[None, :]
        scores = q @ k.transpose(1, 2) / self.l_max + _lag_bias(self.rel_bias, lag)
        o = (F.relu(scores) ** 2 * (lag >= 0)) @ v
        y = self.out(u * o)
        return y, (None if cache is None else {"k": k, "v": v, "pos": pos0 + T})

    def state_size(self, seq_len: int) -> int:
        return (self.s + self.e) * seq_len
