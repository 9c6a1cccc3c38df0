"""Torch modules of the built-in block kinds. Every block: forward(x [B, T, d], cache) -> (y, cache);
state_size(seq_len) -> numbers carried per sequence while generating."""

from __future__ import annotations

import math

import torch
from torch import nn


def rotate(x, positions, base: float = 10000.0):
    """Rotary position encoding (RoPE, rotate-half layout): x [B, H, T, dh] at positions [T] (dh even)."""
    half = x.shape[-1] // 2
    freq = base ** (-torch.arange(half, dtype=x.dtype, device=x.device) / half)
    angle = positions.to(x.dtype)[:, None] * freq                     # [T, half]
    cos, sin = torch.cos(angle), torch.sin(angle)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


class Attention(nn.Module):
    """Causal softmax attention: ``heads`` query heads sharing ``kv_heads`` key/value heads (multi-query
    with kv_heads = 1, grouped-query in between); a sliding window if window > 0; rotary position
    encoding of q and k if rope = 1 (otherwise no positional encoding).

    Generation cache: {"k", "v": [B, kv_heads, kept, dh] (rotated keys), "pos": tokens seen}."""

    def __init__(self, d: int, options: dict, seed: int):
        super().__init__()
        self.heads, self.window = options["heads"], options["window"]
        self.kv_heads = options.get("kv_heads") or self.heads
        self.rope = bool(options.get("rope", 0))
        self.d, self.dh = d, d // self.heads
        self.qkv = nn.Linear(d, d + 2 * self.kv_heads * self.dh, bias=False)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x, cache=None):
        B, T, D = x.shape
        q, k, v = self.qkv(x).split([D, self.kv_heads * self.dh, self.kv_heads * self.dh], -1)
        q = q.view(B, T, self.heads, self.dh).transpose(1, 2)
        k, v = (z.view(B, T, self.kv_heads, self.dh).transpose(1, 2) for z in (k, v))
        past = 0 if cache is None else cache.get("pos", 0)
        if self.rope:
            positions = torch.arange(past, past + T, device=x.device)
            q, k = rotate(q, positions), rotate(k, positions)
        kept = 0
        if cache is not None and cache.get("k") is not None:
            kept = cache["k"].shape[2]
            k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
        i = torch.arange(T, device=x.device)[:, None] + kept
        j = torch.arange(k.shape[2], device=x.device)[None, :]
        allowed = j <= i
        if self.window:
            allowed = allowed & (i - j < self.window)
        group = self.heads // self.kv_heads
        kx, vx = (z.repeat_interleave(group, 1) for z in (k, v)) if group > 1 else (k, v)
        o = torch.nn.functional.scaled_dot_product_attention(q, kx, vx, attn_mask=allowed)
        new_cache = None
        if cache is not None:   # a window keeps its last window - 1 tokens (the next query sees window tokens)
            start = max(0, k.shape[2] - (self.window - 1)) if self.window else 0
            new_cache = {"k": k[:, :, start:], "v": v[:, :, start:], "pos": past + T}
        return self.out(o.transpose(1, 2).reshape(B, T, D)), new_cache

    def state_size(self, seq_len: int) -> int:
        """The KV cache: 2 kv_heads dh numbers per kept token."""
        return 2 * self.kv_heads * self.dh * (min(seq_len, self.window) if self.window else seq_len)


class MLP(nn.Module):
    """Linear, activation, Linear (act = "gelu"), or gated: (act(x W_g) * x W_up) W_down (SwiGLU: silu,
    GeGLU: gelu). Hidden width ceil(expand * d)."""

    def __init__(self, d: int, options: dict, seed: int, gated: bool, act: str = "gelu"):
        super().__init__()
        hidden = math.ceil(options["expand"] * d)
        self.act = getattr(torch.nn.functional, act)
        self.up = nn.Linear(d, hidden, bias=False)
        self.gate = nn.Linear(d, hidden, bias=False) if gated else None
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x, cache=None):
        h = self.act(self.gate(x)) * self.up(x) if self.gate is not None else self.act(self.up(x))
        return self.down(h), cache

    def state_size(self, seq_len: int) -> int:
        return 0


class ShortConv(nn.Module):
    """Depthwise causal convolution (H3's shift SSM, the short conv of Zoology's mixers)."""

    def __init__(self, d: int, options: dict, seed: int):
        super().__init__()
        width = options["width"]
        self.weight = nn.Parameter(torch.randn(d, width) / math.sqrt(width))

    def forward(self, x, cache=None):
        from seqdsl.runtime.torch_ops import causal_conv

        y, new = causal_conv(x, 1, self.weight, None if cache is None else cache.get("conv"))
        return y, (None if cache is None else {"conv": new})

    def state_size(self, seq_len: int) -> int:
        return self.weight.shape[0] * (self.weight.shape[1] - 1)

class CellBlock(nn.Module):
    def __init__(self, d: int, options: dict, seed: int):
        super().__init__()
        from seqdsl.layer import Layer

        self.layer = Layer(options["model"], seed=seed)

    def forward(self, x, cache=None):
        if cache is None:
            return self.layer(x), None
        inner = cache.get("layer")
        y, inner = self.layer(x, cache=inner, output_final_state=True, mode="recurrent" if x.shape[1] == 1 else None)
        return y, {"layer": inner}

    def state_size(self, seq_len: int) -> int:
        return self.layer.state_size()
