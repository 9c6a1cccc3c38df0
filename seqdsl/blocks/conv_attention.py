"""Block kinds: long convolutions and attention variants of the survey's blocks.

- ``hyena(order = 2, filter_order = 64, ...)``: Hyena's implicit long convolutions with data-controlled gates
  (survey record M57);
- ``mega(ema = cell("mega_ema.seq", n = 16), ...)``: MEGA's moving-average gated attention (record M35);
- ``flash(expand = 2, s = 128, chunk = 64)``: FLASH's mixed chunk attention (record M34);
- ``gau(expand = 2, s = 128, l_max = 512)``: the gated attention unit with causal ReLU^2 attention (record M34).

The modules are in ``conv_attention_torch.py`` (imported only when a stack is built).
"""

from __future__ import annotations

from seqdsl import ir
from seqdsl.errors import SpecError
from seqdsl.stack import BlockKind, register_block, whole_number_options


def _build(class_name: str):
    def build(d: int, options: dict, seed: int, shared: dict):
        from seqdsl.blocks import conv_attention_torch

        return getattr(conv_attention_torch, class_name)(d, options, seed)
    return build


def _whole_numbers(kind_name: str, usage: str, defaults: dict, least: dict, call: ir.Call, ctx,
                   nested: tuple = ()) -> dict:
    """Options by name, whole numbers >= least[name] (1 unless given); ``nested``: cell(...) options."""
    return whole_number_options(kind_name, usage, defaults, least, call, ctx, cells=nested)


# ------------------------------------------------------------------------------------------------ Hyena
HYENA_USAGE = ("hyena(order = 2, filter_order = 64, emb_dim = 33, l_max = 1024, short_conv = 3, first_filter = 1): "
               "Hyena's implicit long convolutions with data-controlled gates")
HYENA_DEFAULTS = {"order": 2, "filter_order": 64, "emb_dim": 33, "l_max": 1024, "short_conv": 3, "first_filter": 1}


def _parse_hyena(call: ir.Call, ctx) -> dict:
    o = _whole_numbers("hyena", HYENA_USAGE, HYENA_DEFAULTS, {"emb_dim": 3, "first_filter": 0}, call, ctx)
    if o["emb_dim"] % 2 == 0:
        raise SpecError.at(f"hyena(): emb_dim must be odd (t and pairs of cos, sin features); got {o['emb_dim']}",
                           call.span)
    if o["first_filter"] > 1:
        raise SpecError.at(f"hyena(): first_filter is 0 (h^1 is the identity) or 1; got {o['first_filter']}",
                           call.span)
    if o["order"] == 1 and o["first_filter"] == 0:
        raise SpecError.at("hyena(): order = 1 with first_filter = 0 has no long convolution", call.span)
    return o


register_block(BlockKind("hyena", HYENA_USAGE, HYENA_DEFAULTS, _build("Hyena"), parse=_parse_hyena))

# ------------------------------------------------------------------------------------------------- MEGA
MEGA_USAGE = ('mega(ema = cell("mega_ema.seq", n = 16), zdim = 64, expand = 2, chunk = 0, l_max = 1024): MEGA\'s '
              "moving-average gated attention (chunk = 0: attention over the whole prefix)")
MEGA_DEFAULTS = {"ema": None, "zdim": 64, "expand": 2, "chunk": 0, "l_max": 1024}


def _parse_mega(call: ir.Call, ctx) -> dict:
    return _whole_numbers("mega", MEGA_USAGE, MEGA_DEFAULTS, {"chunk": 0}, call, ctx, nested=("ema",))


register_block(BlockKind("mega", MEGA_USAGE, MEGA_DEFAULTS, _build("Mega"), parse=_parse_mega))

# ----------------------------------------------------------------------------------------- FLASH and GAU
FLASH_USAGE = ("flash(expand = 2, s = 128, chunk = 64): FLASH's mixed chunk attention (local ReLU^2 attention in a "
               "chunk plus global linear attention over the previous chunks)")
FLASH_DEFAULTS = {"expand": 2, "s": 128, "chunk": 64}
GAU_USAGE = ("gau(expand = 2, s = 128, l_max = 512): the gated attention unit (causal ReLU^2 attention scaled by "
             "1/l_max)")
GAU_DEFAULTS = {"expand": 2, "s": 128, "l_max": 512}


def _parse_flash(call: ir.Call, ctx) -> dict:
    return _whole_numbers("flash", FLASH_USAGE, FLASH_DEFAULTS, {}, call, ctx)


def _parse_gau(call: ir.Call, ctx) -> dict:
    return _whole_numbers("gau", GAU_USAGE, GAU_DEFAULTS, {}, call, ctx)


register_block(BlockKind("flash", FLASH_USAGE, FLASH_DEFAULTS, _build("Flash"), parse=_parse_flash))
register_block(BlockKind("gau", GAU_USAGE, GAU_DEFAULTS, _build("GAU"), parse=_parse_gau))
