"""Block kinds of the survey's hybrid models (survey §8.1, catalog §14); modules in ``hybrid_torch.py``.

- ``moe(experts = E, top_k = k, expand = 4, normalize = 0)``: a mixture of SwiGLU experts with a softmax
  router, each token sent to its k best experts (Jamba: E = 16, k = 2; Mixtral renormalises the k weights);
- ``zamba_shared(heads = h, expand = 4)``: Zamba's shared block: attention and an MLP over the concatenation
  of the residual stream and the token embedding (width 2 d_model), ONE set of weights for every layer that
  names the block, each use with its own output projection to d_model;
- ``whole_block(cell("rwkv6.seq", ...))``: a cell spec whose out section is already a whole residual block
  (it reads x and adds its own residual, as the RWKV specs do): the stack applies no norm or residual around it.

Griffin's local multi-query attention is ``attention(heads, kv_heads = 1, window = w, rope = 1)`` and its gated
MLP ``geglu(expand = 3)``; xLSTM's blocks are the mlstm / slstm cells and ``geglu(expand = 4 / 3)`` (builtin).
"""

from __future__ import annotations

from seqdsl import ir
from seqdsl.errors import SpecError
from seqdsl.stack import BlockKind, load_cell_block, register_block, whole_number_options


def _build(class_name: str):
    def build(d: int, options: dict, seed: int, shared: dict):
        from seqdsl.blocks import hybrid_torch

        return getattr(hybrid_torch, class_name)(d, options, seed, shared)
    return build


# ------------------------------------------------------------------------------------ mixture of experts
MOE_USAGE = ("moe(experts = E, top_k = k, expand = 4, normalize = 0): E SwiGLU experts (hidden ceil(expand * "
             "d_model)), a softmax router over the experts, each token summed over its k best experts weighted by "
             "their router probabilities (renormalised over the k if normalize = 1)")
MOE_DEFAULTS = {"experts": None, "top_k": 2, "expand": 4, "normalize": 0}


def _parse_moe(call: ir.Call, ctx) -> dict:
    o = whole_number_options("moe", MOE_USAGE, MOE_DEFAULTS, {}, call, ctx, flags=("normalize",), reals=("expand",))
    if o["top_k"] > o["experts"]:
        raise SpecError.at(f"moe(): top_k = {o['top_k']} is more than experts = {o['experts']}", call.span)
    return o


register_block(BlockKind("moe", MOE_USAGE, MOE_DEFAULTS, _build("MixtureOfExperts"), parse=_parse_moe))

# ---------------------------------------------------------------------------------- Zamba's shared block
ZAMBA_USAGE = ("zamba_shared(heads = h, expand = 4): causal softmax attention then a GELU MLP over [x; embedding] "
               "(width 2 d_model), weights shared by every layer naming this block, a per-layer output projection")
ZAMBA_DEFAULTS = {"heads": None, "expand": 4}


def _parse_zamba(call: ir.Call, ctx) -> dict:
    o = whole_number_options("zamba_shared", ZAMBA_USAGE, ZAMBA_DEFAULTS, {}, call, ctx, reals=("expand",))
    return {**o, "block": ctx.block}       # the key of the shared weights


register_block(BlockKind("zamba_shared", ZAMBA_USAGE, ZAMBA_DEFAULTS, _build("ZambaShared"), parse=_parse_zamba))

# ------------------------------------------------------------------------------ cells that are whole blocks
WHOLE_USAGE = ('whole_block(cell("path.seq", hparam = value, ...)): a cell whose out section is a whole residual '
               "block (y includes x): no norm and no residual around it")


def _parse_whole(call: ir.Call, ctx) -> dict:
    if call.kwargs or len(call.args) != 1 or not isinstance(call.args[0], ir.Call) or call.args[0].func != "cell":
        raise SpecError.at(WHOLE_USAGE, call.span)
    return load_cell_block(call.args[0], ctx)


register_block(BlockKind("whole_block", WHOLE_USAGE, {}, _build("WholeBlock"), parse=_parse_whole))
