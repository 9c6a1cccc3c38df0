"""The built-in block kinds: cell(...), attention, mlp, swiglu, geglu, shortconv."""

from __future__ import annotations

from seqdsl.errors import SpecError
from seqdsl.stack import BLOCK_REGISTRY, BlockKind, load_cell_block, register_block, whole_number_options


def _build(class_name: str, **fixed):
    def build(d: int, options: dict, seed: int, shared: dict):
        from seqdsl.blocks import builtin_torch

        return getattr(builtin_torch, class_name)(d, options, seed, **fixed)
    return build


def _parse_attention(call, ctx):
    options = whole_number_options("attention", ATTENTION_USAGE, ATTENTION.options, {"window": 0, "kv_heads": 0},
                                   call, ctx, flags=("rope",))
    heads, kv = options["heads"], options["kv_heads"] or options["heads"]
    if heads % kv:
        raise SpecError.at(f"attention(): heads = {heads} is not a multiple of kv_heads = {kv}", call.span)
    if options["rope"] and (ctx.values["d_model"] // heads) % 2:
        raise SpecError.at(f"attention(): rope = 1 needs an even head dimension; d_model / heads = "
                           f"{ctx.values['d_model'] // heads}", call.span)
    return {**options, "kv_heads": kv}


def _parse_mlp(call, ctx):
    """Options of mlp / swiglu / geglu: expand, a positive number (the hidden width is ceil(expand * d_model))."""
    kind = BLOCK_REGISTRY[call.func]
    return whole_number_options(call.func, kind.usage, kind.options, {}, call, ctx, reals=("expand",))


register_block(BlockKind("cell", 'cell("path.seq", hparam = value, ...): the layer of a cell spec (d_model is the '
                         "stack's)", {}, _build("CellBlock"), parse=load_cell_block))
ATTENTION_USAGE = ("attention(heads = h[, window = w, kv_heads = g, rope = 1]): causal softmax attention, sliding "
                   "window if given, g key/value heads shared by the query heads (1: multi-query), rotary "
                   "position encoding if rope = 1")
ATTENTION = register_block(BlockKind("attention", ATTENTION_USAGE, {"heads": None, "window": 0, "kv_heads": 0,
                                                                   "rope": 0},
                                     _build("Attention"), parse=_parse_attention))
register_block(BlockKind("mlp", "mlp(expand = 4): Linear, GELU, Linear (hidden width ceil(expand * d_model))",
                         {"expand": 4}, _build("MLP", gated=False), parse=_parse_mlp))
register_block(BlockKind("swiglu", "swiglu(expand = 4): (silu(x W_g) * x W_up) W_down", {"expand": 4},
                         _build("MLP", gated=True, act="silu"), parse=_parse_mlp))
register_block(BlockKind("geglu", "geglu(expand = 4): (gelu(x W_g) * x W_up) W_down (Griffin's and xLSTM's gated MLP)",
                         {"expand": 4}, _build("MLP", gated=True, act="gelu"), parse=_parse_mlp))
register_block(BlockKind("shortconv", "shortconv(width = 4): a depthwise causal convolution over the last width "
                         "tokens", {"width": 4}, _build("ShortConv")))
