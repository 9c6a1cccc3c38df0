"""The built-in block kinds: cell(...), attention, mlp, swiglu, shortconv."""

from __future__ import annotations

from seqdsl.stack import BlockKind, load_cell_block, register_block


def _build(class_name: str, **fixed):
    def build(d: int, options: dict, seed: int, shared: dict):
        from seqdsl.blocks import builtin_torch

        return getattr(builtin_torch, class_name)(d, options, seed, **fixed)
    return build


def _parse_attention(call, ctx):
    from seqdsl.errors import SpecError
    from seqdsl.stack import parse_whole_number_options

    options = parse_whole_number_options(ATTENTION, call, ctx)
    if ctx.values["d_model"] % options["heads"]:
        raise SpecError.at(f"attention: d_model = {ctx.values['d_model']} is not divisible by heads = "
                           f"{options['heads']}", call.span)
    return options


register_block(BlockKind("cell", 'cell("path.seq", hparam = value, ...): the layer of a cell spec (d_model is the '
                         "stack's)", {}, _build("CellBlock"), parse=load_cell_block))
ATTENTION = register_block(BlockKind("attention", "attention(heads = h[, window = w]): causal softmax attention, "
                                     "sliding window if given", {"heads": None, "window": 0}, _build("Attention"),
                                     parse=_parse_attention))
register_block(BlockKind("mlp", "mlp(expand = 4): Linear, GELU, Linear", {"expand": 4}, _build("MLP", gated=False)))
register_block(BlockKind("swiglu", "swiglu(expand = 4): (silu(x W1) * x W3) W2", {"expand": 4},
                         _build("MLP", gated=True)))
register_block(BlockKind("shortconv", "shortconv(width = 4): a depthwise causal convolution over the last width "
                         "tokens", {"width": 4}, _build("ShortConv")))
