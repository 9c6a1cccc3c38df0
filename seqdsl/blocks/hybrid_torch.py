"""Torch modules of the hybrid block kinds (seqdsl/blocks/hybrid.py). Every block: forward(x [B, T, d], cache)
-> (y, cache); state_size(seq_len) -> numbers carried per sequence while generating."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from seqdsl.blocks.builtin_torch import MLP, Attention, CellBlock


class MixtureOfExperts(nn.Module):
    """Top-k routed SwiGLU experts (Jamba's MoE layer; Mixtral's with normalize = 1).

    p = softmax(x W_router) over E experts; for the k largest p_e: y = sum_e w_e (silu(x G_e) * (x U_e)) D_e with
    w_e = p_e (or p_e / sum of the k). Each expert sees only its tokens. x [B, T, d] -> y [B, T, d]."""

    def __init__(self, d: int, options: dict, seed: int, shared: dict):
        super().__init__()
        E, hidden = options["experts"], math.ceil(options["expand"] * d)
        self.top_k, self.normalize = options["top_k"], bool(options["normalize"])
        self.router = nn.Linear(d, E, bias=False)
        bound_in, bound_hidden = 1 / math.sqrt(d), 1 / math.sqrt(hidden)
        self.gate = nn.Parameter(torch.empty(E, d, hidden).uniform_(-bound_in, bound_in))
        self.up = nn.Parameter(torch.empty(E, d, hidden).uniform_(-bound_in, bound_in))
        self.down = nn.Parameter(torch.empty(E, hidden, d).uniform_(-bound_hidden, bound_hidden))

    def routing(self, x):
        """x [N, d] -> (weights [N, k], experts [N, k]): each token's k experts and their weights."""
        probs = torch.softmax(self.router(x), -1)
        weights, experts = probs.topk(self.top_k, -1)
        if self.normalize:
            weights = weights / weights.sum(-1, keepdim=True)
        return weights, experts

    def forward(self, x, cache=None):
        B, T, D = x.shape
        flat = x.reshape(B * T, D)
        weights, experts = self.routing(flat)
        out = torch.zeros_like(flat)
        for e in range(self.gate.shape[0]):
            rows, slot = (experts == e).nonzero(as_tuple=True)
            if rows.numel():
                h = flat[rows]
                y = (F.silu(h @ self.gate[e]) * (h @ self.up[e])) @ self.down[e]
                out = out.index_add(0, rows, y * weights[rows, slot, None])
        return out.view(B, T, D), cache

    def state_size(self, seq_len: int) -> int:
        return 0


class _ZambaCore(nn.Module):
    """The shared weights of a Zamba block: pre-norm attention and a pre-norm GELU MLP over width 2 d."""

    def __init__(self, width: int, heads: int, expand: float):
        super().__init__()
        self.attn_norm, self.mlp_norm = nn.RMSNorm(width), nn.RMSNorm(width)
        self.attn = Attention(width, {"heads": heads, "window": 0}, 0)
        self.mlp = MLP(width, {"expand": expand}, 0, gated=False)


class ZambaShared(nn.Module):
    """Zamba's shared attention block: z = [x; e] (e the token embedding), z += attn(norm(z)),
    z += mlp(norm(z)), y = z W_out. The attention and MLP weights are ONE module for every layer naming the
    block (kept in the model's ``shared`` dict); W_out [2d -> d] is this layer's own.
    Cache: the attention's KV cache of this use (width 2 d)."""

    reads_embedding = True

    def __init__(self, d: int, options: dict, seed: int, shared: dict):
        super().__init__()
        key = ("zamba_shared", options["block"])
        if key not in shared:
            shared[key] = _ZambaCore(2 * d, options["heads"], options["expand"])
        self.core = shared[key]
        self.out = nn.Linear(2 * d, d, bias=False)

    def forward(self, x, cache=None, embedding=None):
        z = torch.cat([x, embedding], -1)
        a, attn_cache = self.core.attn(self.core.attn_norm(z), None if cache is None else cache.get("attn", {}))
        z = z + a
        z = z + self.core.mlp(self.core.mlp_norm(z))[0]
        return self.out(z), (None if cache is None else {"attn": attn_cache})

    def state_size(self, seq_len: int) -> int:
        return self.core.attn.state_size(seq_len)


class WholeBlock(CellBlock):
    """A cell spec whose out section is a whole residual block (the RWKV specs: LN, time mix, residual, LN,
    channel mix, residual): the stack calls it without a norm and without adding a residual."""

    own_residual = True

    def __init__(self, d: int, options: dict, seed: int, shared: dict):
        super().__init__(d, options, seed)
