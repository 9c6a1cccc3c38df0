"""Stacks: language models assembled from blocks, written as specs.

    stack hybrid(d_model = 64, vocab = 64, depth = 2):
      blocks:
        gdn = cell("../gated_deltanet.seq", heads = 2)    # a cell spec (path relative to this file)
        attn = attention(heads = 2, window = 32)          # causal softmax attention, optional window
        mlp = swiglu(expand = 4)                          # or mlp(expand = 4)
      layers = ([gdn, mlp] * 3 + [attn, mlp]) * depth
      segments = memory_tokens(length = 64, tokens = 4, bptt = 2)   # optional (RMT)

Every layer is a pre-norm residual block ``x + block(rmsnorm(x))`` between a token embedding and a
linear head (a block module with ``own_residual = True`` is called as ``block(x)``: its output already
includes the residual; one with ``reads_embedding = True`` also gets the token embedding). ``build_stack`` returns an nn.Module with ``forward(tokens)``, a generation ``step``
carrying every layer's state, ``state_size()`` and ``num_parameters()``.

``segments = memory_tokens(length = L, tokens = m[, bptt = k])`` runs the whole stack segment by segment
(the Recurrent Memory Transformer): m learned memory vectors M_0 are placed before (read) and after (write)
each segment of L tokens, the layers run on [M_s | segment | M_s], and the last layer's outputs at the
write positions are the next segment's memory M_{s+1}. Gradient flows through the carries into the last k
segments (bptt = 0: every carry is stop-gradient; no bptt: through all of them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from seqdsl import ir
from seqdsl.errors import SpecError
from seqdsl.frontend import parse

MAX_LAYERS = 1024


@dataclass(frozen=True)
class BlockKind:
    """One kind of block a stack can use: ``name(option = value, ...)``.

    ``options`` maps option names to defaults (``None``: required). ``build(d_model, options, seed, shared)``
    returns an ``nn.Module`` whose ``forward(x [B, T, d], cache) -> (y [B, T, d], cache)`` (cache is
    None during training; a dict when generating) and whose ``state_size(seq_len)`` counts the numbers
    it carries per sequence. ``parse(call, ctx)``, if given, replaces the default option parsing (whole
    numbers only); ``ctx`` is a ``ParseContext``. ``shared`` is a dict owned by the model being built:
    a kind whose module is reused at several layers (weight sharing) stores it there under its own key.
    """

    name: str
    usage: str
    options: dict
    build: Callable
    parse: Callable | None = None


@dataclass(frozen=True)
class ParseContext:
    values: dict                  # the stack's hyper-parameters
    blocks: dict                  # blocks defined above this one (name -> BlockSpec)
    base: str                     # the folder of the stack file (cell paths are relative to it)
    block: str = ""               # the name of the block being parsed (for messages)

    def number(self, e, what: str):
        return _number(e, self.values, what)


BLOCK_REGISTRY: dict[str, BlockKind] = {}


def register_block(kind: BlockKind) -> BlockKind:
    """Add a block kind (modules defining kinds call this at import; see seqdsl/blocks/)."""
    BLOCK_REGISTRY[kind.name] = kind
    return kind


def _ensure_kinds() -> dict[str, BlockKind]:
    import seqdsl.blocks  # noqa: F401  (registers the built-in kinds)

    return BLOCK_REGISTRY


@dataclass(frozen=True)
class BlockSpec:
    name: str
    kind: str
    options: dict = field(default_factory=dict)
    model: object = None          # cell: the loaded seqdsl.Model


@dataclass(frozen=True)
class CheckedStack:
    ir: ir.Stack
    path: str | None
    values: dict
    blocks: dict[str, BlockSpec]
    layers: tuple[str, ...]
    segments: dict | None = None  # memory_tokens(...): {"length", "tokens", "bptt" (None: all)}

    @property
    def name(self) -> str:
        return self.ir.name

    @property
    def d_model(self) -> int:
        return int(self.values["d_model"])


def _number(e: ir.Expr, values: dict, what: str):
    if isinstance(e, ir.Num):
        return e.value
    if isinstance(e, ir.Unary) and e.op == "-":
        return -_number(e.operand, values, what)
    if isinstance(e, ir.Name) and e.id in values:
        return values[e.id]
    if isinstance(e, ir.Binary) and e.op in ("+", "-", "*", "/"):
        a, b = _number(e.left, values, what), _number(e.right, values, what)
        if e.op == "/":
            if b == 0:
                raise SpecError.at(f"division by zero in {what}", e.span)
            return a // b if isinstance(a, int) and isinstance(b, int) and a % b == 0 else a / b
        return a + b if e.op == "+" else a - b if e.op == "-" else a * b
    if isinstance(e, ir.Name):
        raise SpecError.at(f"unknown name '{e.id}' in {what}", e.span)
    raise SpecError.at(f"{what} must be a number", e.span)


def check_stack(s: ir.Stack, path: str | None = None, overrides: dict | None = None) -> CheckedStack:
    """Validate a stack: hyper-parameters, blocks (loading cell specs) and the layer sequence."""
    from seqdsl.api import load

    overrides = dict(overrides or {})
    values: dict = {}
    import keyword

    for name, span in [(s.name, s.span)] + [(h.name, h.span) for h in s.hparams] + [(b.name, b.span) for b in s.blocks]:
        if keyword.iskeyword(name) or name.startswith("_") or len(name) > 64:
            raise SpecError.at(f"'{name}' cannot name a stack, hyper-parameter or block (a Python keyword, a "
                               "leading '_' or over 64 characters)", span)
    for h in s.hparams:
        if h.name in values:
            raise SpecError.at(f"duplicate name '{h.name}'", h.span)
        v = overrides.pop(h.name, None)
        values[h.name] = v if v is not None else _number(h.default, values, f"the default of '{h.name}'")
        if h.type == "int" or (h.type is None and isinstance(values[h.name], int)):
            values[h.name] = int(values[h.name])
    if overrides:
        raise SpecError.at(f"unknown hyper-parameter {', '.join(sorted(overrides))}; the stack has "
                           f"{', '.join(values) or 'none'}", s.span)
    if "d_model" not in values:
        raise SpecError.at("a stack needs a d_model hyper-parameter", s.span)
    base = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    blocks: dict[str, BlockSpec] = {}
    for b in s.blocks:
        if b.name in blocks or b.name in values:
            raise SpecError.at(f"duplicate name '{b.name}'", b.span)
        call = b.value
        kinds = _ensure_kinds()
        if not isinstance(call, ir.Call) or call.func not in kinds:
            raise SpecError.at(f"the block '{b.name}' must be one of {', '.join(kinds)}", b.span)
        kind = kinds[call.func]
        ctx = ParseContext(values, dict(blocks), base, b.name)
        options = kind.parse(call, ctx) if kind.parse else parse_whole_number_options(kind, call, ctx)
        blocks[b.name] = BlockSpec(b.name, call.func, options, options.get("model"))
    layers = tuple(_layer_list(s.layers, values, blocks))
    if not layers:
        raise SpecError.at("the stack has no layers", s.layers.span)
    segments = _segments(s.segments, values) if s.segments is not None else None
    return CheckedStack(s, path, values, blocks, layers, segments)


SEGMENTS_USAGE = ("segments = memory_tokens(length = L, tokens = m[, bptt = k]): the stack runs on segments of L "
                  "tokens with m memory tokens read before and written after each segment (gradient through the "
                  "last k carries; all if bptt is not given)")


def _segments(e: ir.Expr, values: dict) -> dict:
    """``memory_tokens(length = L, tokens = m, bptt = k)`` -> {"length": L, "tokens": m, "bptt": k or None}."""
    if not isinstance(e, ir.Call) or e.func != "memory_tokens" or e.args:
        raise SpecError.at(SEGMENTS_USAGE, e.span)
    least = {"length": 1, "tokens": 1, "bptt": 0}
    out: dict = {"bptt": None}
    for kw in e.kwargs:
        if kw.name in out and kw.name != "bptt" or kw.name == "bptt" and out["bptt"] is not None:
            raise SpecError.at(f"memory_tokens(): the option '{kw.name}' is given twice", kw.span or e.span)
        if kw.name not in least:
            raise SpecError.at(f"memory_tokens() has no option '{kw.name}' (options: length, tokens, bptt)",
                               kw.span or e.span)
        v = _number(kw.value, values, f"the option '{kw.name}'")
        if isinstance(v, float) and not v.is_integer() or int(v) < least[kw.name]:
            raise SpecError.at(f"memory_tokens(): {kw.name} must be a whole number >= {least[kw.name]}; got {v}",
                               kw.span or e.span)
        out[kw.name] = int(v)
    for name in ("length", "tokens"):
        if name not in out:
            raise SpecError.at(f"memory_tokens() needs {name} = ...; {SEGMENTS_USAGE}", e.span)
    return out


def whole_number_options(kind: str, usage: str, defaults: dict, least: dict, call: ir.Call, ctx: ParseContext,
                         flags: tuple = (), reals: tuple = (), cells: tuple = ()) -> dict:
    """Options by name: whole numbers >= least[name] (default 1); ``flags`` are 0 or 1; ``reals`` are positive
    numbers; ``cells`` are ``cell("path.seq", ...)`` calls (loaded with load_cell_block); a default None is
    required. Raises SpecError at the option (or the call) for anything else."""
    if call.args:
        raise SpecError.at(f"{usage} (options by name)", call.span)
    given: dict = {}
    for kw in call.kwargs:
        if kw.name not in defaults:
            raise SpecError.at(f"{kind}() has no option '{kw.name}' (options: {', '.join(defaults)})",
                               kw.span or call.span)
        if kw.name in given:
            raise SpecError.at(f"{kind}(): the option '{kw.name}' is given twice", kw.span or call.span)
        given[kw.name] = kw
    out = {}
    for name, default in defaults.items():
        kw = given.get(name)
        span = kw.span or call.span if kw is not None else call.span
        if name in cells:
            out[name] = _nested_cell(kind, name, kw, call, ctx)
            continue
        value = default if kw is None else ctx.number(kw.value, f"the option '{name}'")
        if value is None:
            raise SpecError.at(f"{kind}() needs {name} = ...; {usage}", call.span)
        if name in reals:
            if not value > 0:
                raise SpecError.at(f"{kind}(): {name} must be positive; got {value}", span)
            out[name] = value
            continue
        if isinstance(value, float) and not value.is_integer():
            raise SpecError.at(f"{kind}(): {name} must be a whole number; got {value}", span)
        value = int(value)
        if name in flags and value not in (0, 1):
            raise SpecError.at(f"{kind}(): {name} is 0 or 1; got {value}", span)
        if value < least.get(name, 0 if name in flags else 1):
            raise SpecError.at(f"{kind}(): {name} must be at least {least.get(name, 1)}; got {value}", span)
        out[name] = value
    d = ctx.values["d_model"]
    if "heads" in out and d % out["heads"]:
        raise SpecError.at(f"{kind}(): d_model = {d} is not divisible by heads = {out['heads']}", call.span)
    return out


def _nested_cell(kind: str, name: str, kw, call: ir.Call, ctx: ParseContext) -> dict:
    """The option ``name = cell("path.seq", ...)`` of a block, loaded (see load_cell_block)."""
    if kw is None:
        raise SpecError.at(f'{kind}() needs {name} = cell("path.seq", ...)', call.span)
    if not isinstance(kw.value, ir.Call) or kw.value.func != "cell":
        raise SpecError.at(f'{kind}(): {name} must be a cell spec: {name} = cell("path.seq", ...)',
                           kw.span or call.span)
    return load_cell_block(kw.value, ctx)


def parse_whole_number_options(kind: BlockKind, call: ir.Call, ctx: ParseContext) -> dict:
    """The default option parsing: every option a whole number (``window`` may be 0, others >= 1)."""
    return whole_number_options(call.func, kind.usage, kind.options, {"window": 0}, call, ctx)


def load_cell_block(call: ir.Call, ctx: ParseContext, what: str = "cell") -> dict:
    """``cell("path.seq", hparam = value, ...)``: load the model spec at d_model = the stack's."""
    from seqdsl.api import load

    if len(call.args) != 1 or not isinstance(call.args[0], ir.Str):
        raise SpecError.at(f'{what}() takes the path of a spec: {what}("gla.seq", heads = 2)', call.span)
    rel = call.args[0].value
    spec_path = os.path.join(ctx.base, rel)
    if not os.path.isfile(spec_path):
        raise SpecError.at(f"the spec '{rel}' does not exist (looked in {ctx.base})", call.args[0].span)
    hp = {k.name: ctx.number(k.value, f"the option '{k.name}'") for k in call.kwargs}
    hp["d_model"] = ctx.values["d_model"]
    try:
        with open(spec_path, encoding="utf-8", errors="replace") as f:
            is_stack = isinstance(parse(f.read(), spec_path), ir.Stack)
    except OSError as e:
        raise SpecError.at(f"cannot read the spec '{rel}': {e.strerror}", call.span) from None
    except SpecError as e:
        raise SpecError.at(f"in the block '{ctx.block}': {e}", call.span) from None
    if is_stack:   # checked before loading it: a stack that names itself would recurse
        raise SpecError.at(f"the block '{ctx.block}' names a stack spec; {what}() takes a model spec "
                           "(a stack cannot be a block)", call.args[0].span)
    try:
        model = load(spec_path, **hp)
    except SpecError as e:
        raise SpecError.at(f"in the block '{ctx.block}': {e}", call.span) from None
    if not model.ir.outs:
        raise SpecError.at(f"the spec of block '{ctx.block}' has no 'out' section producing y", call.span)
    return {**hp, "model": model}


def _layer_list(e: ir.Expr, values: dict, blocks: dict) -> list[str]:
    if isinstance(e, ir.ListExpr):
        out = []
        for item in e.items:
            out += _layer_list(item, values, blocks)
        return out
    if isinstance(e, ir.Name) and e.id in blocks:
        return [e.id]
    if isinstance(e, ir.Binary) and e.op == "+":
        return _layer_list(e.left, values, blocks) + _layer_list(e.right, values, blocks)
    if isinstance(e, ir.Binary) and e.op == "*":
        lst, times = (e.left, e.right) if not isinstance(e.left, (ir.Num,)) else (e.right, e.left)
        n = _number(times, values, "a repetition count")
        if not isinstance(n, int) or n < 0:
            raise SpecError.at(f"a repetition count must be a non-negative integer; got {n}", e.span)
        if n > MAX_LAYERS:
            raise SpecError.at(f"a stack has at most {MAX_LAYERS} layers; this repeats {n} times", e.span)
        return _layer_list(lst, values, blocks) * n
    if isinstance(e, ir.Name):
        raise SpecError.at(f"'{e.id}' is not a block of this stack (blocks: {', '.join(blocks) or 'none'})", e.span)
    raise SpecError.at("layers are lists of block names joined with + and repeated with * n", e.span)


# ---------------------------------------------------------------------------------------------- modules
def _torch_modules():
    import torch
    from torch import nn

    class StackModel(nn.Module):
        """tokens [B, T] -> logits [B, T, vocab] (or [N, vocab] at the given positions)."""

        def __init__(self, cs: CheckedStack, vocab: int, seed: int = 0, input_dim: int | None = None,
                     output_dim: int | None = None):
            super().__init__()
            torch.manual_seed(seed)
            d = cs.d_model
            self.spec = cs
            self.vocab = vocab
            self.embed = nn.Linear(input_dim, d) if input_dim else nn.Embedding(vocab, d)
            kinds = _ensure_kinds()
            shared: dict = {}    # blocks that reuse one module at several layers (e.g. Zamba) keep it here
            self.blocks = nn.ModuleList(kinds[cs.blocks[name].kind].build(d, cs.blocks[name].options, seed + i, shared)
                                        for i, name in enumerate(cs.layers))
            self.norms = nn.ModuleList(nn.Identity() if getattr(b, "own_residual", False) else nn.RMSNorm(d)
                                       for b in self.blocks)
            self.final_norm = nn.RMSNorm(d)
            self.head = nn.Linear(d, output_dim or vocab, bias=False)
            self.memory = None   # RMT: the memory tokens M_0 [tokens, d] of a segments section
            if cs.segments is not None:
                self.memory = nn.Parameter(torch.randn(cs.segments["tokens"], d))

        def apply_block(self, i: int, x, cache, embedding):
            """Layer i on the residual stream: x + block(norm(x)) (a whole block: block(x)); blocks that read
            the token embedding (Zamba's shared block) get it. Returns (x', the block's new cache)."""
            block = self.blocks[i]
            extra = {"embedding": embedding} if getattr(block, "reads_embedding", False) else {}
            y, cache = block(self.norms[i](x), cache, **extra)
            return (y if getattr(block, "own_residual", False) else x + y), cache

        def run_layers(self, x):
            """The residual stream through every block: x [B, T, d] (the embedded tokens) -> [B, T, d]."""
            embedding = x
            for i in range(len(self.blocks)):
                x = self.apply_block(i, x, None, embedding)[0]
            return x

        def run_layers_cached(self, x, caches):
            """The same with each block's generation cache: (x [B, T, d], caches) -> (y, new caches)."""
            embedding, new = x, []
            for i, c in enumerate(caches):
                x, c = self.apply_block(i, x, c, embedding)
                new.append(c if c is not None else {})
            return x, new

        def hidden(self, tokens):
            """The last block's output [B, T, d_model] (before the final norm and the head)."""
            x = self.embed(tokens)
            return self.run_layers(x) if self.memory is None else self.segment_hidden(x)

        def segment_hidden(self, x):
            """RMT: x [B, T, d] -> [B, T, d], the layers run on [M_s | x_s | M_s] for each segment x_s of
            ``length`` tokens; the outputs at the write positions are M_{s+1}. The last segment (maybe
            shorter) writes nothing: causal layers make its outputs independent of the write positions."""
            seg = self.spec.segments
            B, T, _ = x.shape
            L, m = seg["length"], seg["tokens"]
            n = -(-T // L)
            memory = self.memory.expand(B, -1, -1)
            outs = []
            for s in range(n):
                x_s = x[:, s * L:(s + 1) * L]
                last = s == n - 1
                h = self.run_layers(torch.cat([memory, x_s] if last else [memory, x_s, memory], 1))
                outs.append(h[:, m:m + x_s.shape[1]])
                if not last:
                    memory = h[:, m + x_s.shape[1]:]
                    if seg["bptt"] is not None and s + 1 < n - seg["bptt"]:   # a carry outside the last bptt
                        memory = memory.detach()
            return torch.cat(outs, 1)

        def forward(self, tokens, positions=None):
            """tokens [B, T] (or floats [B, T, input_dim]); positions (b_idx, t_idx): the head only there."""
            x = self.hidden(tokens)
            if positions is not None:
                x = x[positions[0], positions[1]]
            return self.head(self.final_norm(x))

        def enable_autoencoder(self, seq_len: int) -> None:
            """Compression (MAD): rebuild every token from the last position's vector plus a position embedding."""
            d = self.spec.d_model
            self.decode_pos = nn.Embedding(seq_len, d)
            self.decode = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))

        def reconstruct(self, tokens, positions):
            """Autoencoder readout at positions (b_idx, t_idx): only h[:, -1] carries the sequence."""
            last = self.final_norm(self.hidden(tokens)[:, -1])           # [B, d]
            z = last[positions[0]] + self.decode_pos(positions[1])
            return self.head(self.final_norm(self.decode(z)))

        def step(self, token, cache=None):
            """One token [B] -> (logits [B, vocab], cache carrying every layer's state)."""
            if self.memory is not None:
                return self.segment_step(token, cache)
            if cache is None:
                cache = [{} for _ in self.blocks]
            x, new = self.run_layers_cached(self.embed(token.unsqueeze(1)), cache)
            return self.head(self.final_norm(x))[:, 0], new

        def segment_step(self, token, cache=None):
            """RMT generation, exact w.r.t. forward: at a segment start the read memory M_s goes through the
            blocks' caches, each token is one cached step, and after ``length`` tokens the write memory is run
            on the same caches; its outputs become M_{s+1} and the caches restart.
            cache = {"memory": M_s [B, m, d], "pos": tokens of the segment seen, "layers": block caches}."""
            x = self.embed(token.unsqueeze(1))
            if cache is None:
                cache = {"memory": self.memory.expand(x.shape[0], -1, -1), "pos": 0, "layers": None}
            memory, pos, caches = cache["memory"], cache["pos"], cache["layers"]
            if pos == 0:
                _, caches = self.run_layers_cached(memory, [{} for _ in self.blocks])
            h, caches = self.run_layers_cached(x, caches)
            pos += 1
            if pos == self.spec.segments["length"]:
                memory, _ = self.run_layers_cached(memory, caches)
                pos, caches = 0, None
            return self.head(self.final_norm(h))[:, 0], {"memory": memory, "pos": pos, "layers": caches}

        def state_size(self, seq_len: int = 1) -> int:
            """Numbers carried per sequence during generation after seq_len tokens (attention: its KV cache)."""
            if self.memory is None:
                return sum(int(block.state_size(seq_len)) for block in self.blocks)
            m = self.memory.shape[0]   # RMT: the memory, and the caches of a segment read with it
            held = m + min(seq_len, self.spec.segments["length"])
            return self.memory.numel() + sum(int(block.state_size(held)) for block in self.blocks)

        def num_parameters(self) -> int:
            return sum(p.numel() for p in self.parameters())

    return StackModel


def build_stack(cs: CheckedStack, vocab: int | None = None, seed: int = 0, input_dim: int | None = None,
                output_dim: int | None = None):
    """The nn.Module of a checked stack (vocab defaults to the stack's ``vocab`` hyper-parameter)."""
    vocab = vocab or int(cs.values.get("vocab", 0))
    if not vocab and not output_dim:
        raise SpecError("the stack needs a vocab (a 'vocab' hyper-parameter or the task's)", path=cs.path)
    StackModel = _torch_modules()
    return StackModel(cs, vocab, seed=seed, input_dim=input_dim, output_dim=output_dim)
