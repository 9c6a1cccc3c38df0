"""Block kinds: segment-level recurrence (survey §3.3). Each processes the sequence segment by segment with a
carry; the modules are in ``segment_torch.py`` (imported only when a stack is built).

- ``xl_attention(heads, segment, memory = segment, grad = 0, relative = 1)``: Transformer-XL attention
  (record M26): keys and values also from the layer's input at the m positions before the segment, carried
  with stop-gradient (grad = 0) and relative position encoding;
- ``infini_attention(heads, segment, delta = 1, grad = 1)``: Infini-attention (M28): local causal softmax
  attention in the segment plus a compressive memory read with the segment's queries and written once per
  segment (linear, or delta rule), mixed by a learned gate;
- ``tlb(heads, chunk, states, grad = 1)``: Temporal Latent Bottleneck (M29), a fast chunk stream reading N slow
  state vectors, which are written once per chunk by cross-attention;
- ``block_recurrent(heads, block, states, segment = 0)``: the Block-Recurrent Transformer cell (M30);
- ``ran(heads, window)``: Recurrent Attention Networks (M32), a global perception vector carried between windows;
- ``arn(heads)``: the Attentive Recurrent Network (M22), a GRU over attention reads of the layer's inputs.

RMT's memory tokens (M27) are a stack-level recurrence: ``segments = memory_tokens(...)`` (seqdsl/stack.py).
"""

from __future__ import annotations

from seqdsl import ir
from seqdsl.errors import SpecError
from seqdsl.stack import BlockKind, register_block, whole_number_options


def _build(class_name: str):
    def build(d: int, options: dict, seed: int, shared: dict):
        from seqdsl.blocks import segment_torch

        return getattr(segment_torch, class_name)(d, options, seed)
    return build


# ------------------------------------------------------------------------------------------ Transformer-XL
XL_USAGE = ("xl_attention(heads = h, segment = L, memory = m, grad = 0, relative = 1): Transformer-XL attention "
            "over the segment and the layer's input at the m positions before it (m = L if not given), "
            "stop-gradient through the memory unless grad = 1, relative position encoding unless relative = 0")
XL_DEFAULTS = {"heads": None, "segment": None, "memory": 0, "grad": 0, "relative": 1}


def _parse_xl(call: ir.Call, ctx) -> dict:
    o = whole_number_options("xl_attention", XL_USAGE, XL_DEFAULTS, {"memory": 0}, call, ctx,
                             flags=("grad", "relative"))
    if not any(kw.name == "memory" for kw in call.kwargs):
        o["memory"] = o["segment"]
    return o


register_block(BlockKind("xl_attention", XL_USAGE, XL_DEFAULTS, _build("XLAttention"), parse=_parse_xl))

# ---------------------------------------------------------------------------------------- Infini-attention
INFINI_USAGE = ("infini_attention(heads = h, segment = L, delta = 1, grad = 1): local causal softmax attention in "
                "segments of L tokens plus a compressive memory written once per segment (delta rule, or linear "
                "with delta = 0), gradient through the memory unless grad = 0")
INFINI_DEFAULTS = {"heads": None, "segment": None, "delta": 1, "grad": 1}


def _parse_infini(call: ir.Call, ctx) -> dict:
    return whole_number_options("infini_attention", INFINI_USAGE, INFINI_DEFAULTS, {}, call, ctx,
                                flags=("delta", "grad"))


register_block(BlockKind("infini_attention", INFINI_USAGE, INFINI_DEFAULTS, _build("InfiniAttention"),
                         parse=_parse_infini))

# ------------------------------------------------------------------------------- chunk-level recurrences
TLB_USAGE = ("tlb(heads = h, chunk = C, states = N, grad = 1): Temporal Latent Bottleneck: causal self-attention "
             "in chunks of C tokens reading N slow state vectors by cross-attention; the states cross-attend to "
             "the chunk once it is complete")
TLB_DEFAULTS = {"heads": None, "chunk": None, "states": None, "grad": 1}
BRT_USAGE = ("block_recurrent(heads = h, block = W, states = N, segment = 0): Block-Recurrent Transformer cell: "
             "blocks of W tokens attend to the previous block and to N recurrent states, which attend to the "
             "states and the block and update through fixed gates; stop-gradient every segment tokens (0: never)")
BRT_DEFAULTS = {"heads": None, "block": None, "states": None, "segment": 0}
RAN_USAGE = ("ran(heads = h, window = W): Recurrent Attention Network: causal self-attention over windows of W "
             "tokens after the previous window's global perception vector, and a memory review of all of them")
RAN_DEFAULTS = {"heads": None, "window": None}
ARN_USAGE = ("arn(heads = h): Attentive Recurrent Network: a GRU whose input attends over the layer's inputs with "
             "the previous state as query, gated with causal self-attention")
ARN_DEFAULTS = {"heads": None}


def _parse_tlb(call: ir.Call, ctx) -> dict:
    return whole_number_options("tlb", TLB_USAGE, TLB_DEFAULTS, {}, call, ctx, flags=("grad",))


def _parse_brt(call: ir.Call, ctx) -> dict:
    o = whole_number_options("block_recurrent", BRT_USAGE, BRT_DEFAULTS, {"segment": 0}, call, ctx)
    if o["segment"] % o["block"]:
        raise SpecError.at(f"block_recurrent(): segment = {o['segment']} is not a multiple of block = "
                           f"{o['block']}", call.span)
    return o


def _parse_ran(call: ir.Call, ctx) -> dict:
    return whole_number_options("ran", RAN_USAGE, RAN_DEFAULTS, {}, call, ctx)


def _parse_arn(call: ir.Call, ctx) -> dict:
    return whole_number_options("arn", ARN_USAGE, ARN_DEFAULTS, {}, call, ctx)


register_block(BlockKind("tlb", TLB_USAGE, TLB_DEFAULTS, _build("TemporalLatentBottleneck"), parse=_parse_tlb))
register_block(BlockKind("block_recurrent", BRT_USAGE, BRT_DEFAULTS, _build("BlockRecurrent"), parse=_parse_brt))
register_block(BlockKind("ran", RAN_USAGE, RAN_DEFAULTS, _build("RecurrentAttention"), parse=_parse_ran))
register_block(BlockKind("arn", ARN_USAGE, ARN_DEFAULTS, _build("AttentiveRecurrence"), parse=_parse_arn))
