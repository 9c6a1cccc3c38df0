"""``seqdsl.build``: the nn.Module of a spec (streams, the op, the output), with generation ``step``.

    layer = seqdsl.build(model, d_model=256)        # [B, T, d_model] -> [B, T, d_model]
    y = layer(x)
    y, cache = layer(x, output_final_state=True)    # cache: recurrent states + conv/shift states
    y_t, cache = layer.step(x_t, cache)             # one token, O(1) in the sequence length
"""

from __future__ import annotations

import torch
from torch import nn

from seqdsl.errors import SpecError


class Layer(nn.Module):
    """A sequence-mixing layer generated from a spec. Parameters are initialised as the spec says."""

    def __init__(self, model, backend: str = "torch", seed: int = 0, dtype: torch.dtype = torch.float32,
                 mode: str | None = None):
        super().__init__()
        from seqdsl.api import compile as compile_op
        from seqdsl.interpreter import Reference

        c = model.checked
        if not c.model.outs or "x" not in c.types:
            raise SpecError(f"{model.name} has no 'out' section producing y from x; it is an op, not a layer",
                            path=model.path)
        self.model = model
        self.op = compile_op(model, backend)
        self.module = self.op.module if backend == "torch" else compile_op(model, "torch").module
        self.mode = mode
        self.d_model = c.dim_sizes["d_model"]
        self._reference = Reference(c)       # the params' initialisers, and initial states that read params
        values = self._reference.init_params(seed)
        fixed = {p.name for p in c.model.params if p.fixed}
        for name, value in values.items():
            value = value.to(torch.complex64 if value.is_complex() and dtype == torch.float32 else
                             torch.complex128 if value.is_complex() else dtype)
            if name in fixed:
                self.register_buffer(name, value)
            else:
                self.register_parameter(name, nn.Parameter(value))

    def extra_repr(self) -> str:
        return f"{self.model.name}, d_model={self.d_model}, modes={self.op.modes}"

    def _params(self) -> dict[str, torch.Tensor]:
        out = dict(self.named_parameters(recurse=False))
        out.update(dict(self.named_buffers(recurse=False)))
        return out

    def forward(self, x: torch.Tensor, cache: dict | None = None, output_final_state: bool = False,
                mode: str | None = None, cu_seqlens=None):
        """x [B, T, d_model] -> y [B, T, d_model] (and the cache for continuing, if asked)."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"{self.model.name}: x must be [B, T, {self.d_model}]; got {list(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError(f"{self.model.name}: x has no tokens (T = 0); a layer needs at least one")
        P = self._params()
        c = self.model.checked
        cache = cache or {}
        if cu_seqlens is not None:   # token-parallel parts must not see across sequence boundaries
            bounds = [int(b) for b in cu_seqlens]
            pieces = list(zip(bounds[:-1], bounds[1:]))
            parts = [self.module.streams(x[:, lo:hi], P, None)[0] for lo, hi in pieces]
            streams = {k: torch.cat([p[k] for p in parts], dim=1) for k in parts[0]}
        else:
            streams, conv_cache = self.module.streams(x, P, cache.get("conv"))
        inputs = {n: streams[n] for n in c.op_streams}
        inputs.update({n: P[n] for n in c.op_params})
        state = cache.get("state")
        if state is None:   # states whose declared initial value reads params (a learned h0): the op takes no such input
            n = x.shape[0] if cu_seqlens is None else len(cu_seqlens) - 1
            state = self._reference.initial_states(n, P)     # fp64: the op casts states to its compute dtype
        o, final = self.op(**inputs, initial_state=state, output_final_state=output_final_state,
                           mode=mode or self.mode, cu_seqlens=cu_seqlens)   # not asked for: not stored
        readouts = o if isinstance(o, tuple) else (o,)
        readouts = tuple(r.to(x.dtype) if not r.is_complex() else r for r in readouts)
        if cu_seqlens is not None:
            y = torch.cat([self.module.outputs(x[:, lo:hi], P, {k: v[:, lo:hi] for k, v in streams.items()},
                                               *(r[:, lo:hi] for r in readouts))[0] for lo, hi in pieces], dim=1)
            y = self._in_dtype_of(y, x)
            return y if not output_final_state else (y, {"state": final, "conv": {}, "out": {}})
        y, out_cache = self.module.outputs(x, P, streams, *readouts, cache=cache.get("out"))
        y = self._in_dtype_of(y, x)
        if not output_final_state:
            return y
        return y, {"state": final, "conv": conv_cache, "out": out_cache}

    @staticmethod
    def _in_dtype_of(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """y in x's dtype, as any layer returns it: a bf16 layer whose cell is complex computes its states and readouts
        in fp32 (torch has no complex bf16), and they would otherwise carry fp32 into y. Under autocast, autocast
        decides."""
        if y.dtype == x.dtype or torch.is_autocast_enabled(x.device.type):
            return y
        return y.to(x.dtype)

    def step(self, x_t: torch.Tensor, cache: dict | None = None):
        """One token: x_t [B, d_model] -> (y_t [B, d_model], cache). Start with cache=None."""
        y, cache = self.forward(x_t.unsqueeze(1), cache, output_final_state=True, mode="recurrent")
        return y[:, 0], cache

    def state_size(self) -> int:
        """Numbers carried per sequence between tokens (complex counts 2): the recurrent states plus the
        caches of conv() and shift() in the streams and the out section -- counted from the cache a
        forward pass returns, so every kind of carried value is included."""
        params = list(self._params().values())
        with torch.no_grad():   # 64 tokens: longer than any conv width or shift in the examples
            x = torch.zeros(1, 64, self.d_model, dtype=params[0].dtype if params else torch.float32)
            _, cache = self.forward(x, output_final_state=True, mode="recurrent")

        def count(v) -> int:
            if torch.is_tensor(v):
                return v[0].numel() * (2 if v.is_complex() else 1) if v.dim() else 0
            if isinstance(v, dict):
                return sum(count(x) for x in v.values())
            if isinstance(v, (tuple, list)):
                return sum(count(x) for x in v)
            return 0

        return count(cache)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build(model, backend: str = "torch", seed: int = 0, dtype: torch.dtype = torch.float32, mode: str | None = None,
          **hparams) -> Layer:
    """The layer of a spec as an nn.Module. Header hyper-parameters can be overridden (``d_model=256``)."""
    from seqdsl.api import Model, load

    if isinstance(model, str):
        model = load(model)
    if not isinstance(model, Model):
        raise TypeError("build() takes a seqdsl.Model (from seqdsl.load) or a path")
    if hparams:
        model = model.with_hparams(**hparams)
    return Layer(model, backend=backend, seed=seed, dtype=dtype, mode=mode)
