"""Torch modules of the built-in block kinds. Every block: forward(x [B, T, d], cache) -> (y, cache);
state_size(seq_len) -> numbers carried per sequence while generating."""

from __future__ import annotations

import math

import torch
from torch import nn


class Attention(nn.Module):
    """Causal multi-head softmax attention (no positional encoding); sliding window if window > 0."""

    def __init__(self, d: int, options: dict, seed: int):
        super().__init__()
        self.heads, self.window = options["heads"], options["window"]
        self.d = d
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x, cache=None):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        past = 0
        if cache is not None and cache.get("k") is not None:
            past = cache["k"].shape[2]
            k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
        i = torch.arange(T, device=x.device)[:, None] + past
        j = torch.arange(k.shape[2], device=x.device)[None, :]
        allowed = j <= i
        if self.window:
            allowed = allowed & (i - j < self.window)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        new_cache = None
        if cache is not None:
            keep = self.window if self.window else k.shape[2]
            new_cache = {"k": k[:, :, -keep:], "v": v[:, :, -keep:]} if self.window else {"k": k, "v": v}
            if self.window:   # positions are relative: the kept window starts at 0 next time
                new_cache = {"k": k[:, :, -(self.window - 1):] if self.window > 1 else k[:, :, :0],
                             "v": v[:, :, -(self.window - 1):] if self.window > 1 else v[:, :, :0]}
        return self.out(o.transpose(1, 2).reshape(B, T, D)), new_cache

    def state_size(self, seq_len: int) -> int:
        """The KV cache: 2 d numbers per kept token."""
        return 2 * self.d * (min(seq_len, self.window) if self.window else seq_len)

class MLP(nn.Module):
    def __init__(self, d: int, options: dict, seed: int, gated: bool):
        super().__init__()
        expand = options["expand"]
        self.gated = gated
        self.up = nn.Linear(d, expand * d, bias=False)
        self.gate = nn.Linear(d, expand * d, bias=False) if gated else None
        self.down = nn.Linear(expand * d, d, bias=False)

    def forward(self, x, cache=None):
        h = torch.nn.functional.silu(self.gate(x)) * self.up(x) if self.gated else \
            torch.nn.functional.gelu(self.up(x))
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
