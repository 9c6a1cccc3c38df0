"""Torch modules of the segment-recurrence block kinds (see segment.py). Every block:
forward(x [B, T, d], cache) -> (y [B, T, d], cache); state_size(seq_len) -> numbers carried per sequence.

Shapes: B batch, T tokens, d = H * D (H heads of D channels), L the segment length, m the memory length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6   # Infini-attention: keeps the first memory read (z_0 = 0, so 0 / 0) at zero


def split_heads(t, heads: int):
    """[B, T, H * D] -> [B, H, T, D]."""
    B, T, _ = t.shape
    return t.view(B, T, heads, -1).transpose(1, 2)


def merge_heads(t):
    """[B, H, T, D] -> [B, T, H * D]."""
    B, H, T, D = t.shape
    return t.transpose(1, 2).reshape(B, T, H * D)


def softmax_attend(scores, allowed, v):
    """scores [B, H, Tq, Tk] (scaled), allowed [Tq, Tk] bool (every row allows one key), v [B, H, Tk, D]."""
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v


def sinusoid(n: int, d: int, device=None, dtype=None):
    """Transformer-XL's relative position embeddings R_0 .. R_{n-1}: [n, d] = [sin(p f), cos(p f)],
    f_i = 10000^(-2i/d)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2, device=device, dtype=torch.float64) / d))
    angle = torch.arange(n, device=device, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat([angle.sin(), angle.cos()], -1)[:, :d].to(dtype or torch.get_default_dtype())


# ------------------------------------------------------------------------------------------ Transformer-XL
class XLAttention(nn.Module):
    """Transformer-XL attention (Dai et al. 2019): the sequence is cut into segments of L tokens; queries come
    from the current segment, keys and values from [sg(memory) | segment], where the memory is this layer's
    input at the m positions before the segment (stop-gradient unless grad = 1). With relative = 1 the score is
    (q_i + u)^T k_j + (q_i + v)^T W_R R_{i-j} (the paper's terms a + b + c + d)."""

    def __init__(self, d: int, options: dict, seed: int):
        super().__init__()
        self.heads, self.L, self.m = options["heads"], options["segment"], options["memory"]
        self.grad, self.relative = bool(options["grad"]), bool(options["relative"])
        self.d, self.D = d, d // self.heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        if self.relative:
            self.r_net = nn.Linear(d, d, bias=False)                   # W_{k,R}
            self.u = nn.Parameter(0.02 * torch.randn(self.heads, self.D))  # content bias
            self.v = nn.Parameter(0.02 * torch.randn(self.heads, self.D))  # position bias

    def scores(self, q, k, pq, pk):
        """q [B, H, Tq, D], k [B, H, Tk, D] at absolute positions pq [Tq], pk [Tk] -> (scores, allowed [Tq, Tk])."""
        dist = pq[:, None] - pk[None, :]
        allowed = (dist >= 0) & (pk[None, :] >= (pq[:, None] // self.L) * self.L - self.m)
        if not self.relative:
            return (q @ k.transpose(-1, -2)) / math.sqrt(self.D), allowed
        n = self.m + self.L                                              # distances 0 .. m + L - 1
        r = split_heads(self.r_net(sinusoid(n, self.d, q.device, q.dtype))[None], self.heads)  # [1, H, n, D]
        content = (q + self.u[:, None]) @ k.transpose(-1, -2)           # [B, H, Tq, Tk]
        by_distance = (q + self.v[:, None]) @ r.transpose(-1, -2)       # [B, H, Tq, n]
        index = dist.clamp(0, n - 1).expand(*by_distance.shape[:2], -1, -1)
        return (content + by_distance.gather(-1, index)) / math.sqrt(self.D), allowed

    def attend(self, q, k, v, pq, pk):
        s, allowed = self.scores(q, k, pq, pk)
        return softmax_attend(s, allowed, v)

    def forward(self, x, cache=None):
        if cache is not None:
            return self.forward_cached(x, cache)
        B, T, _ = x.shape
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, -1))
        # the memory's keys and values: the same weights on the stopped input (weights still get gradient)
        k_mem, v_mem = k, v
        if not self.grad:
            k_mem, v_mem = (split_heads(t, self.heads) for t in self.qkv(x.detach()).chunk(3, -1)[1:])
        pos = torch.arange(T, device=x.device)
        outs = []
        for start in range(0, T, self.L):
            end, lo = min(T, start + self.L), max(0, start - self.m)
            kc = torch.cat([k_mem[:, :, lo:start], k[:, :, start:end]], 2)
            vc = torch.cat([v_mem[:, :, lo:start], v[:, :, start:end]], 2)
            outs.append(self.attend(q[:, :, start:end], kc, vc, pos[start:end], pos[lo:end]))
        return self.out(merge_heads(torch.cat(outs, 2))), None

    def forward_cached(self, x, cache):
        """Generation: the cache keeps the keys and values of the memory and of the current segment so far.
        cache = {"k", "v": [B, H, n, D], "pos": absolute position of x[:, 0]}."""
        B, T, _ = x.shape
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, -1))
        p0 = cache.get("pos", 0)
        if cache.get("k") is not None:
            k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
        pk = torch.arange(p0 + T - k.shape[2], p0 + T, device=x.device)
        o = self.attend(q, k, v, torch.arange(p0, p0 + T, device=x.device), pk)
        keep = pk >= ((p0 + T) // self.L) * self.L - self.m          # what the next position may still see
        return self.out(merge_heads(o)), {"k": k[:, :, keep], "v": v[:, :, keep], "pos": p0 + T}

    def state_size(self, seq_len: int) -> int:
        """Keys and values of at most m + L - 1 positions (the memory and the current segment so far)."""
        return 2 * self.d * min(seq_len, self.m + self.L - 1)


# ---------------------------------------------------------------------------------------- Infini-attention
class InfiniAttention(nn.Module):
    """Infini-attention (Munkhdalai et al. 2024), per head, per segment s of L tokens (s = elu + 1):
        A_mem = s(Q) M_{s-1} / (s(Q) z_{s-1}),   A_dot = causal softmax(Q K^T / sqrt(D)) V within the segment,
        A = sigmoid(beta) A_mem + (1 - sigmoid(beta)) A_dot,
        M_s = M_{s-1} + s(K)^T V (linear) or s(K)^T (V - s(K) M_{s-1} / (s(K) z_{s-1})) (delta = 1),
        z_s = z_{s-1} + sum_t s(K_t).
    The memory (M [B, H, D, D], z [B, H, D]) is carried with gradient unless grad = 0."""

    def __init__(self, d: int, options: dict, seed: int):
        super().__init__()
        self.heads, self.L = options["heads"], options["segment"]
        self.delta, self.grad = bool(options["delta"]), bool(options["grad"])
        self.d, self.D = d, d // self.heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.beta = nn.Parameter(torch.zeros(self.heads))

    def empty_state(self, x):
        B, H, D = x.shape[0], self.heads, self.D
        zeros = x.new_zeros
        return {"M": zeros(B, H, D, D), "z": zeros(B, H, D), "k": zeros(B, H, 0, D), "v": zeros(B, H, 0, D), "pos": 0}

    def read(self, sq, M, z):
        """sq [B, H, n, D] (feature-mapped), M [B, H, D, D], z [B, H, D] -> [B, H, n, D]."""
        return (sq @ M) / ((sq @ z[..., None]) + EPS)

    def piece(self, q, k, v, state):
        """Tokens q, k, v [B, H, n, D] of one segment (after the state's buffered k, v) -> (A, new state)."""
        kb, vb = torch.cat([state["k"], k], 2), torch.cat([state["v"], v], 2)
        n, past = q.shape[2], state["k"].shape[2]
        i = torch.arange(n, device=q.device)[:, None] + past
        allowed = torch.arange(past + n, device=q.device)[None, :] <= i
        a_dot = softmax_attend((q @ kb.transpose(-1, -2)) / math.sqrt(self.D), allowed, vb)
        a_mem = self.read(F.elu(q) + 1, state["M"], state["z"])
        g = torch.sigmoid(self.beta)[:, None, None]
        a = g * a_mem + (1 - g) * a_dot
        pos = state["pos"] + n
        if pos % self.L:   # the segment is not complete: buffer its keys and values
            return a, {**state, "k": kb, "v": vb, "pos": pos}
        M, z = self.write(F.elu(kb) + 1, vb, state["M"], state["z"])
        return a, {"M": M, "z": z, "k": kb[:, :, :0], "v": vb[:, :, :0], "pos": pos}

    def write(self, sk, v, M, z):
        """The segment's sk = s(K), V [B, H, L, D] into (M, z)."""
        if self.delta:
            v = v - self.read(sk, M, z)
        M, z = M + sk.transpose(-1, -2) @ v, z + sk.sum(2)
        return (M, z) if self.grad else (M.detach(), z.detach())

    def forward(self, x, cache=None):
        T = x.shape[1]
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, -1))
        state = self.empty_state(q) if cache is None or "M" not in cache else cache
        outs, t = [], 0
        while t < T:     # pieces end at segment boundaries
            n = min(T - t, self.L - state["pos"] % self.L)
            a, state = self.piece(q[:, :, t:t + n], k[:, :, t:t + n], v[:, :, t:t + n], state)
            outs.append(a)
            t += n
        return self.out(merge_heads(torch.cat(outs, 2))), (state if cache is not None else None)

    def state_size(self, seq_len: int) -> int:
        """The memory (M, z) per head and the current segment's keys and values (at most L - 1 tokens)."""
        return self.heads * (self.D * self.D + self.D) + 2 * self.d * min(seq_len, self.L - 1)


# ------------------------------------------------------------------------------- chunk-level recurrences
def heads_attend(q, k, v, heads: int, allowed=None):
    """Multi-head softmax attention on projected inputs: q [B, Tq, d], k, v [B, Tk, d], allowed [Tq, Tk] or
    None (every key) -> [B, Tq, d]."""
    q, k, v = (split_heads(t, heads) for t in (q, k, v))
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    return merge_heads(torch.softmax(s, -1) @ v)


def causal(n: int, past: int = 0, device=None):
    """[n, past + n] bool: query i (after past keys) sees keys 0 .. past + i."""
    return torch.arange(past + n, device=device)[None, :] <= torch.arange(n, device=device)[:, None] + past


class ChunkRecurrence(nn.Module):
    """A block that runs chunks of ``length`` tokens in order with a carry: ``chunk(x_c, carry, complete)``
    maps x_c [B, n <= length, d] and the carry to (y_c [B, n, d], the next carry if complete), y causal in x_c.
    Generation buffers the inputs of the current chunk and recomputes its outputs from the carry (exact;
    O(length) per token); the carry advances when the chunk completes.

    Subclasses define ``length``, ``d``, ``initial(x) -> carry``, ``chunk(x_c, carry, complete)`` and
    ``carry_size(seq_len)``."""

    def advance(self, carry: dict, index: int) -> dict:
        """The carry into chunk ``index`` (subclasses cut the gradient here)."""
        return carry

    def forward(self, x, cache=None):
        if cache is not None:
            return self.forward_cached(x, cache)
        carry, outs = self.initial(x), []
        for i, start in enumerate(range(0, x.shape[1], self.length)):
            x_c = x[:, start:start + self.length]
            y, new = self.chunk(x_c, carry, complete=x_c.shape[1] == self.length)
            outs.append(y)
            carry = self.advance(new, i + 1) if new is not None else carry
        return torch.cat(outs, 1), None

    def forward_cached(self, x, cache):
        """cache = {"carry", "buffer": the current chunk's inputs [B, n, d], "index": chunks completed}."""
        carry = cache["carry"] if "carry" in cache else self.initial(x)
        buffer, index = cache.get("buffer", x[:, :0]), cache.get("index", 0)
        outs, t = [], 0
        while t < x.shape[1]:
            n = min(x.shape[1] - t, self.length - buffer.shape[1])
            buffer = torch.cat([buffer, x[:, t:t + n]], 1)
            complete = buffer.shape[1] == self.length
            y, new = self.chunk(buffer, carry, complete)
            outs.append(y[:, -n:])
            if complete:
                index += 1
                carry, buffer = self.advance(new, index), buffer[:, :0]
            t += n
        return torch.cat(outs, 1), {"carry": carry, "buffer": buffer, "index": index}

    def state_size(self, seq_len: int) -> int:
        """The carry and the buffered inputs of the current chunk (at most length - 1 tokens)."""
        return self.carry_size(seq_len) + self.d * min(seq_len, self.length - 1)


class TemporalLatentBottleneck(ChunkRecurrence):
    """TLB (Didolkar et al. 2022), per chunk i of C tokens with the slow state X_i [N, d]:
        h = x + SelfAttn_causal(x),  y = h + CrossAttn(h -> X_i)                    (fast stream; returns y - x)
        X_{i+1} = X_i + CrossAttn(X_i -> y)                                          (slow stream, once per chunk)
    X_0 is learned; gradient flows through X across chunks unless grad = 0."""

    def __init__(self, d: int, options: dict, seed: int):
        super().__init__()
        self.heads, self.length, self.grad = options["heads"], options["chunk"], bool(options["grad"])
        self.d = d
        self.X0 = nn.Parameter(torch.randn(options["states"], d) / math.sqrt(d))
        self.self_qkv, self.self_out = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.read_q, self.read_kv, self.read_out = (nn.Linear(d, d, bias=False), nn.Linear(d, 2 * d, bias=False),
                                                    nn.Linear(d, d, bias=False))
        self.write_q, self.write_kv, self.write_out = (nn.Linear(d, d, bias=False), nn.Linear(d, 2 * d, bias=False),
                                                       nn.Linear(d, d, bias=False))

    def initial(self, x):
        return {"X": self.X0.expand(x.shape[0], -1, -1)}

    def chunk(self, x_c, carry, complete):
        X = carry["X"]
        q, k, v = self.self_qkv(x_c).chunk(3, -1)
        h = x_c + self.self_out(heads_attend(q, k, v, self.heads, causal(x_c.shape[1], device=x_c.device)))
        y = h + self.read_out(heads_attend(self.read_q(h), *self.read_kv(X).chunk(2, -1), self.heads))
        if not complete:
            return y - x_c, None
        X = X + self.write_out(heads_attend(self.write_q(X), *self.write_kv(y).chunk(2, -1), self.heads))
        return y - x_c, {"X": X}

    def advance(self, carry, index):
        return carry if self.grad else {"X": carry["X"].detach()}

    def carry_size(self, seq_len: int) -> int:
        return self.X0.numel()


class BlockRecurrent(ChunkRecurrence):
    """Block-Recurrent Transformer cell (Hutchins et al. 2022), per block of W tokens with N states S [N, d]:
      vertical:   y = W_v [SelfAttn(x -> [prev block | block], causal) | CrossAttn(x -> S)]   (returned)
      horizontal: z = W_h [SelfAttn(S -> S) | CrossAttn(S -> block)],
                  S' = S g1 + z (1 - g1),  S'' = S' g2 + MLP(S') (1 - g2)   (fixed gates g = sigmoid(b))
    Keys and values of the token self-attention are shared with the states' cross-attention, and those of the
    states with the tokens' cross-attention; states are read through RMSNorm(S + learned ids). Within a
    segment of ``segment`` tokens the states and the previous block's keys carry gradient; at a segment
    boundary both are stop-gradient (segment = 0: one segment)."""

    def __init__(self, d: int, options: dict, seed: int):
        super().__init__()
        self.heads, self.length, self.segment = options["heads"], options["block"], options["segment"]
        self.d, N = d, options["states"]
        self.S0 = nn.Parameter(torch.randn(N, d) / math.sqrt(d))
        self.ids = nn.Parameter(torch.randn(N, d) / math.sqrt(d))
        self.state_norm, self.mlp_norm = nn.RMSNorm(d), nn.RMSNorm(d)
        lin = lambda i, o: nn.Linear(i, o, bias=False)  # noqa: E731
        self.tok_q_self, self.tok_q_cross, self.tok_kv = lin(d, d), lin(d, d), lin(d, 2 * d)   # vertical
        self.st_q_self, self.st_q_cross, self.st_kv = lin(d, d), lin(d, d), lin(d, 2 * d)      # horizontal
        self.tok_out, self.st_out = lin(2 * d, d), lin(2 * d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.gate1, self.gate2 = nn.Parameter(torch.ones(d)), nn.Parameter(torch.ones(d))

    def initial(self, x):
        B = x.shape[0]
        return {"S": self.S0.expand(B, -1, -1), "k": x.new_zeros(B, 0, self.d), "v": x.new_zeros(B, 0, self.d)}

    def chunk(self, x_c, carry, complete):
        S, n = carry["S"], x_c.shape[1]
        k, v = self.tok_kv(x_c).chunk(2, -1)
        kc, vc = torch.cat([carry["k"], k], 1), torch.cat([carry["v"], v], 1)
        nS = self.state_norm(S + self.ids)
        ks, vs = self.st_kv(nS).chunk(2, -1)
        a_self = heads_attend(self.tok_q_self(x_c), kc, vc, self.heads, causal(n, carry["k"].shape[1], x_c.device))
        a_cross = heads_attend(self.tok_q_cross(x_c), ks, vs, self.heads)
        y = self.tok_out(torch.cat([a_self, a_cross], -1))
        if not complete:
            return y, None
        z = self.st_out(torch.cat([heads_attend(self.st_q_self(nS), ks, vs, self.heads),
                                   heads_attend(self.st_q_cross(nS), k, v, self.heads)], -1))
        g1, g2 = torch.sigmoid(self.gate1), torch.sigmoid(self.gate2)
        S = S * g1 + z * (1 - g1)
        S = S * g2 + self.mlp(self.mlp_norm(S)) * (1 - g2)
        return y, {"S": S, "k": k, "v": v}

    def advance(self, carry, index):
        if self.segment and (index * self.length) % self.segment == 0:
            return {name: t.detach() for name, t in carry.items()}
        return carry

    def carry_size(self, seq_len: int) -> int:
        """The states and the previous block's keys and values."""
        return self.S0.numel() + 2 * self.d * min(seq_len, self.length)


class RecurrentAttention(ChunkRecurrence):
    """RAN (Li et al. 2023), causal: windows of W tokens; window w runs causal self-attention over
    [g_{w-1} | window] (g_0 learned); its output at the window's last token is the GPC vector g_w; the memory
    review lets every token cross-attend [g_0 .. g_{w-1}]: y = O + CrossAttn(O -> G)."""

    def __init__(self, d: int, options: dict, seed: int):
        super().__init__()
        self.heads, self.length, self.d = options["heads"], options["window"], d
        self.g0 = nn.Parameter(torch.randn(1, d) / math.sqrt(d))
        self.qkv, self.out = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.review_q, self.review_kv, self.review_out = (nn.Linear(d, d, bias=False), nn.Linear(d, 2 * d, bias=False),
                                                          nn.Linear(d, d, bias=False))

    def initial(self, x):
        return {"G": self.g0.expand(x.shape[0], -1, -1)}

    def chunk(self, x_c, carry, complete):
        G = carry["G"]
        z = torch.cat([G[:, -1:], x_c], 1)
        q, k, v = self.qkv(z).chunk(3, -1)
        o = self.out(heads_attend(q, k, v, self.heads, causal(z.shape[1], device=z.device)))[:, 1:]
        y = o + self.review_out(heads_attend(self.review_q(o), *self.review_kv(G).chunk(2, -1), self.heads))
        return y, ({"G": torch.cat([G, o[:, -1:]], 1)} if complete else None)

    def carry_size(self, seq_len: int) -> int:
        """One GPC vector per window (the memory review reads them all)."""
        return self.d * (1 + seq_len // self.length)


class AttentiveRecurrence(ChunkRecurrence):
    """ARN (Hao et al. 2019), causal, per token t: c_t = Attn(x_{t-1} -> u_1..u_t), x_t = GRU(c_t, x_{t-1})
    (x_0 = 0), fused with causal self-attention a_t by a gate: y_t = g x_t + (1 - g) a_t,
    g = sigmoid(W_g [x_t | a_t] + b_g)."""

    def __init__(self, d: int, options: dict, seed: int):
        super().__init__()
        self.heads, self.length, self.d = options["heads"], 1, d
        self.att_q, self.att_kv, self.att_out = (nn.Linear(d, d, bias=False), nn.Linear(d, 2 * d, bias=False),
                                                 nn.Linear(d, d, bias=False))
        self.cell = nn.GRUCell(d, d)
        self.qkv, self.out = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.fuse = nn.Linear(2 * d, d)

    def initial(self, x):
        B = x.shape[0]
        empty = x.new_zeros(B, 0, self.d)
        return {"x": x.new_zeros(B, self.d), "k": empty, "v": empty, "sk": empty, "sv": empty}

    def chunk(self, u, carry, complete):
        k, v = self.att_kv(u).chunk(2, -1)
        q, sk, sv = self.qkv(u).chunk(3, -1)
        k, v = torch.cat([carry["k"], k], 1), torch.cat([carry["v"], v], 1)
        sk, sv = torch.cat([carry["sk"], sk], 1), torch.cat([carry["sv"], sv], 1)
        c = self.att_out(heads_attend(self.att_q(carry["x"])[:, None], k, v, self.heads))[:, 0]
        h = self.cell(c, carry["x"])
        a = self.out(heads_attend(q, sk, sv, self.heads))[:, 0]
        g = torch.sigmoid(self.fuse(torch.cat([h, a], -1)))
        return (g * h + (1 - g) * a)[:, None], {"x": h, "k": k, "v": v, "sk": sk, "sv": sv}

    def carry_size(self, seq_len: int) -> int:
        """The recurrent state and keys and values of every input for ATT and for the self-attention."""
        return self.d + 4 * self.d * seq_len
