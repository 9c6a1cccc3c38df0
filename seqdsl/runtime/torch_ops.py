"""Small torch helpers that generated modules call (kept out of generated code so it stays short)."""

from __future__ import annotations

import torch


def einsum(spec: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.einsum that promotes a real operand to the other's complex dtype."""
    if not torch.is_tensor(a):
        a = torch.as_tensor(a, dtype=b.dtype, device=b.device)
    if not torch.is_tensor(b):
        b = torch.as_tensor(b, dtype=a.dtype, device=a.device)
    if a.is_complex() != b.is_complex():
        target = a.dtype if a.is_complex() else b.dtype
        a, b = a.to(target), b.to(target)
    elif a.dtype != b.dtype:
        target = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(target), b.to(target)
    return torch.einsum(spec, a, b)


def eye(n: int, like: torch.Tensor) -> torch.Tensor:
    """The [n, n] identity in fp64 on like's device (exact; what it meets is computed in fp64 too)."""
    return torch.eye(n, dtype=torch.float64, device=like.device)


def linear(x: torch.Tensor, n_in: int, weight: torch.Tensor, out_shape: tuple, bias=None) -> torch.Tensor:
    """x [..., *in] (n_in trailing axes) -> [..., *out_shape] with weight [prod(out), prod(in)]."""
    flat = x.reshape(*x.shape[: x.dim() - n_in], -1) if n_in else x.unsqueeze(-1)
    y = torch.nn.functional.linear(flat, weight.to(flat.dtype), None if bias is None else bias.to(flat.dtype))
    return y.reshape(*y.shape[:-1], *out_shape)


def lowrank(x: torch.Tensor, n_in: int, a: torch.Tensor, b: torch.Tensor, out_shape: tuple, bias=None):
    """linear(linear(x, rank), out): x [..., *in] -> [..., *out_shape]; a [r, in], b [out, r]."""
    flat = x.reshape(*x.shape[: x.dim() - n_in], -1) if n_in else x.unsqueeze(-1)
    y = torch.nn.functional.linear(torch.nn.functional.linear(flat, a.to(flat.dtype)), b.to(flat.dtype),
                                   None if bias is None else bias.to(flat.dtype))
    return y.reshape(*y.shape[:-1], *out_shape)


def causal_conv(x: torch.Tensor, n_ch: int, weight: torch.Tensor, cache: torch.Tensor | None = None):
    """Depthwise causal convolution over time. x [B, T, *ch] (n_ch trailing axes), weight [C, W].

    ``cache`` [B, W-1, C] holds the previous W-1 inputs (zeros at the start); returns (y, new cache).
    y[t] = sum_j weight[:, j] * x[t + j - (W-1)], as nn.Conv1d(padding=W-1) cut to T.
    """
    B, T = x.shape[0], x.shape[1]
    flat = x.reshape(B, T, -1)
    width = weight.shape[-1]
    if cache is None:
        cache = flat.new_zeros(B, width - 1, flat.shape[-1])
    padded = torch.cat([cache.to(flat.dtype), flat], dim=1)
    y = torch.nn.functional.conv1d(padded.transpose(1, 2), weight.to(flat.dtype).unsqueeze(1),
                                   groups=flat.shape[-1]).transpose(1, 2)
    return y.reshape(x.shape), padded[:, padded.shape[1] - (width - 1):]


def shift(x: torch.Tensor, n: int, cache: torch.Tensor | None = None):
    """The value n tokens earlier: x [B, T, ...]; ``cache`` [B, n, ...] holds the last n inputs (zeros at start)."""
    if n == 0:
        return x, cache
    if cache is None:
        cache = x.new_zeros(x.shape[0], n, *x.shape[2:])
    padded = torch.cat([cache.to(x.dtype), x], dim=1)
    return padded[:, : x.shape[1]], padded[:, padded.shape[1] - n:]


def lti_coefficient(x, H: int, K: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """A time-invariant cell value (a number, or a tensor [1, 1, H or 1, K or 1]) as [H, K] (a number goes to
    like's device)."""
    device = like.device if like is not None else None
    t = torch.as_tensor(x, dtype=torch.get_default_dtype(), device=device) if not torch.is_tensor(x) else x
    t = t.reshape((1,) * max(0, 4 - t.dim()) + tuple(t.shape))
    if t.dim() != 4 or t.shape[0] != 1 or t.shape[1] != 1:
        raise ValueError(f"a time-invariant coefficient has a batch or time axis: shape {tuple(t.shape)}")
    return t.expand(1, 1, H, K)[0, 0]


def make_complex(re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
    """re + i im; bf16 / fp16 parts (a layer built in bf16, autocast) are made fp32 first: torch has no complex
    bf16, and complex32 lacks most operations."""
    half = (torch.bfloat16, torch.float16)
    return torch.complex(re.float() if re.dtype in half else re, im.float() if im.dtype in half else im)


def real_tensor(x: float, like: torch.Tensor) -> torch.Tensor:
    """A number as a 0-d tensor of like's real dtype, on like's device (a constant gate, e.g. log 0.9)."""
    dtype = like.real.dtype if like.is_complex() else like.dtype
    return torch.tensor(x, dtype=dtype if dtype.is_floating_point else torch.get_default_dtype(), device=like.device)


def as_tensor_like(a, b: torch.Tensor) -> torch.Tensor:
    """a (a tensor or a Python number) as a tensor of b's dtype family with b's number of dims."""
    if torch.is_tensor(a):
        a = a.to(b.dtype) if (b.is_complex() and not a.is_complex()) else a
    else:
        a = torch.as_tensor(a, dtype=b.dtype, device=b.device)
    return a.reshape((1,) * (b.dim() - a.dim()) + tuple(a.shape))


def conv(x: torch.Tensor, n_ch: int, weight: torch.Tensor, cache: dict | None, new_cache: dict, key: str):
    """causal_conv that reads its decoding cache from ``cache[key]`` and leaves the new one in ``new_cache``."""
    y, new_cache[key] = causal_conv(x, n_ch, weight, None if cache is None else cache.get(key))
    return y


def shifted(x: torch.Tensor, n: int, cache: dict | None, new_cache: dict, key: str):
    """shift with a decoding cache (see ``conv``)."""
    y, new_cache[key] = shift(x, n, None if cache is None else cache.get(key))
    return y


def norm_affine(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The learned scale (and bias) of rmsnorm / layernorm over the last axis."""
    y = y * weight.to(y.dtype)
    return y if bias is None else y + bias.to(y.dtype)


def position(x: torch.Tensor, cache: dict | None = None, new_cache: dict | None = None) -> torch.Tensor:
    """Token index within the sequence, [1, T], in x's dtype; continues from ``cache["position"]`` (the
    number of tokens a previous call processed) and leaves the count after this call in ``new_cache``."""
    start = 0 if cache is None else cache.get("position", 0)
    if new_cache is not None:
        new_cache["position"] = start + x.shape[1]
    return (torch.arange(x.shape[1], dtype=x.dtype, device=x.device) + start).unsqueeze(0)


def shift_time(x: torch.Tensor) -> torch.Tensor:
    """x [B, T, ...] delayed by one step along T, zeros first (a log-gate of 0 is a decay of 1)."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


def gated_step(state: torch.Tensor, g, axis: str, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One gated step S = exp(g) * S + k v^T on [B, H, K, V] states (g: None, [B, H], [B, H, K] or [B, H, V])."""
    if g is not None:
        decay = torch.exp(g).to(state.dtype)
        decay = decay[..., None, None] if axis == "scalar" else decay[..., :, None] if axis == "key" else decay[..., None, :]
        state = decay * state
    return state + (k[..., :, None] * v[..., None, :]).to(state.dtype)


def interleave(xs: list[torch.Tensor]) -> torch.Tensor:
    """[x1, x2, ...] each [B, T, ...] -> [B, n T, ...] with x1[t], x2[t], ... consecutive (sub-steps of token t)."""
    stacked = torch.stack(xs, dim=2)
    return stacked.reshape(stacked.shape[0], -1, *stacked.shape[3:])
