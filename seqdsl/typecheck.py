"""Validation with symbolic shapes: names, dims, shapes, causality, dtypes.

``check(model)`` either raises ``SpecError`` at the offending node or returns a ``Checked`` value:
the model with every name's type, the dims' sizes, the implicit parameters its token operators
create (``linear`` weights, conv kernels, norm scales) and the cell's op interface.

Shapes are tuples of dim *names* (or integer literals). Elementwise operands broadcast by name:
a scalar broadcasts to anything, and a shape whose names are a subset of the other's aligns by name
(so ``exp(gk) * S`` with gk: [dk] and S: [dk, dv] scales the rows of S). ``a @ b`` contracts the last
axis of a with the first axis of b, as in numpy.
"""

from __future__ import annotations

import keyword
import math
from dataclasses import dataclass, field

from seqdsl import ir
from seqdsl.codegen.ops import CONSTANTS, INITIALISER_ARITY, INITIALISERS, LAYER_INPUT, OPS
from seqdsl.errors import SpecError

Dim = str | int

# Names that generated code, the op signature or the language itself use.
OP_KEYWORDS = ("initial_state", "output_final_state", "cu_seqlens", "mode", "chunk_size")
GENERATED_NAMES = ("torch", "triton", "tl", "math", "F", "nn", "self", "cls", "super", "print")
RESERVED = set(OPS) | set(INITIALISERS) | set(CONSTANTS) | {LAYER_INPUT} | set(OP_KEYWORDS) | set(GENERATED_NAMES)
MAX_NAME_LENGTH = 64
# What each kind of name is, in words: "'n' is a float hyper-parameter".
KIND_WORDS = {"hparam": "a hyper-parameter", "dim": "a dim", "param": "a param", "stream": "a stream",
              "state": "a state", "arg": "a cell arg", "local": "a cell value", "out": "an output"}
_MAX_INT_BITS = 1000     # compile-time integers stay convertible to float (and quick to compute)
_NUMERIC_FUNCS = {"exp": math.exp, "log": math.log, "sqrt": math.sqrt, "abs": abs, "tanh": math.tanh,
                  "cos": math.cos, "sin": math.sin}


@dataclass(frozen=True)
class Ty:
    """The type of a per-token value: named dims and real/complex."""

    dims: tuple[Dim, ...] = ()
    complex: bool = False

    def show(self) -> str:
        return ("complex" if self.complex else "") + "[" + ", ".join(str(d) for d in self.dims) + "]"


SCALAR = Ty()


@dataclass(frozen=True)
class ImplicitParam:
    """A parameter created by a token operator: ``q_proj`` for ``q = linear(x)``.

    shape: the tensor's dims, e.g. (("heads", "dk"), ("d_model",)) for a linear weight is stored
    flattened as [prod(out), prod(in)] by the layer; ``groups`` keeps the symbolic grouping.
    """

    name: str
    owner: str
    role: str                                 # weight | bias | conv | norm | norm_bias | lora_a | lora_b
    groups: tuple[tuple[Dim, ...], ...]       # each group becomes one tensor axis (its dims multiplied)


@dataclass(frozen=True)
class Checked:
    """A validated model and everything the later passes need to know about its names."""

    model: ir.Model
    values: dict[str, int | float]            # hyper-parameters and dims, evaluated
    dim_sizes: dict[Dim, int]                 # every dim name (and int literal) -> size
    types: dict[str, Ty]                      # params, streams, outs, x: the per-token view
    cell_types: dict[str, Ty]                 # every name as the cell sees it (cell axis removed)
    implicit: tuple[ImplicitParam, ...]
    implicit_of: dict[int, tuple[str, ...]]   # id(Call node) -> names of the params it owns
    readouts: tuple[str, ...]                 # cell locals the layer output reads
    op_streams: tuple[str, ...]               # streams the cell reads (the op's tensor inputs)
    op_params: tuple[str, ...]                # params the cell reads (also op inputs)
    kinds: dict[str, str] = field(default_factory=dict)   # name -> hparam|dim|param|stream|state|arg|local|out|input
    expr_types: dict[int, Ty] = field(default_factory=dict)   # id(expression node) -> its type where evaluated

    def size(self, dims: tuple[Dim, ...]) -> int:
        return math.prod(self.dim_sizes[d] for d in dims)

    @property
    def cell_axis(self) -> str | None:
        return self.model.cell.over if self.model.cell else None

    @property
    def op_inputs(self) -> tuple[str, ...]:
        return self.op_streams + self.op_params


# ------------------------------------------------------------------ shape algebra (shared with the runtime)
def broadcast(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...] | None:
    """Result dims of an elementwise op on named shapes a and b, or None if they do not broadcast."""
    if a == b:
        return a
    if not a:
        return b
    if not b:
        return a
    if len(set(a)) == len(a) and len(set(b)) == len(b):
        if set(a) <= set(b):
            return b
        if set(b) <= set(a):
            return a
    return None


def matmul_dims(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...] | None:
    """Result dims of ``a @ b`` (contract a's last axis with b's first), or None."""
    if len(a) not in (1, 2) or len(b) not in (1, 2) or a[-1] != b[0]:
        return None
    return a[:-1] + b[1:]


# ------------------------------------------------------------------ the checker
class _Checker:
    def __init__(self, model: ir.Model, overrides: dict[str, int | float]):
        self.m = model
        self.overrides = dict(overrides)
        self.values: dict[str, int | float] = {}
        self.dim_sizes: dict[Dim, int] = {}
        self.kinds: dict[str, str] = {}
        self.where: dict[str, ir.Span | None] = {}
        self.types: dict[str, Ty] = {}
        self.cell_types: dict[str, Ty] = {}
        self.implicit: list[ImplicitParam] = []
        self.implicit_of: dict[int, tuple[str, ...]] = {}
        self._hint_memo: dict[int, bool] = {}
        # every name the spec defines, wherever: errors about a name used before its definition say what it is
        self.spec_names: dict[str, tuple[str, ir.Span | None]] = {}
        body = model.cell.body if model.cell is not None else ()
        for kind, defs in (("hparam", model.hparams), ("dim", model.dims), ("param", model.params),
                           ("stream", model.streams), ("arg", [st for st in body if isinstance(st, ir.CellArg)]),
                           ("state", [st for st in body if isinstance(st, ir.StateDecl)]),
                           ("local", [st for st in body if isinstance(st, ir.Local)]), ("out", model.outs)):
            for d in defs:
                self.spec_names.setdefault(d.name, (kind, d.span))
        self.expr_types: dict[int, Ty] = {}

    # -------------------------------------------------------------- names
    def kind_of(self, name: str) -> str | None:
        """The kind of a name declared so far, else of a name the spec defines later, else None."""
        if name in self.kinds:
            return self.kinds[name]
        return self.spec_names[name][0] if name in self.spec_names else None

    def kind_words(self, name: str) -> str:
        """What a name is, in words: "a stream", "a float hyper-parameter"."""
        kind = self.kind_of(name)
        if kind == "hparam" and isinstance(self.values.get(name), float):
            return "a float hyper-parameter"
        return KIND_WORDS.get(kind, f"a {kind}")

    def declare(self, name: str, kind: str, span: ir.Span | None) -> None:
        if len(name) > MAX_NAME_LENGTH:
            raise SpecError.at(f"the name '{name[:20]}...' is longer than {MAX_NAME_LENGTH} characters", span)
        if keyword.iskeyword(name) or keyword.issoftkeyword(name):
            raise SpecError.at(f"'{name}' is a Python keyword and cannot name a value", span)
        if name.startswith("_"):
            raise SpecError.at(f"'{name}' starts with '_', which is reserved for generated code", span)
        if name in RESERVED:
            what = ("a built-in function" if name in OPS or name in INITIALISERS else
                    "the layer input" if name == LAYER_INPUT else
                    "an op keyword argument" if name in OP_KEYWORDS else
                    "a constant" if name in CONSTANTS else "a name generated code uses")
            raise SpecError.at(f"'{name}' is reserved ({what}); choose another name", span)
        implicit = next((p for p in self.implicit if p.name == name), None)
        if implicit is not None:
            raise SpecError.at(f"'{name}' is the name of the {implicit.role} parameter that '{implicit.owner}' creates; "
                               "choose another name", span)
        if name in self.kinds:
            first = self.where.get(name)
            at = f" (first defined at line {first.line})" if first else ""
            raise SpecError.at(f"duplicate name '{name}'{at}", span)
        self.kinds[name] = kind
        self.where[name] = span

    # -------------------------------------------------------------- numbers: hyper-parameters and dims
    def number(self, e: ir.Expr, what: str) -> int | float:
        """Evaluate a compile-time number (dims, defaults, scalar args)."""
        if isinstance(e, ir.Num):
            return e.value
        if isinstance(e, ir.Name):
            if e.id in CONSTANTS:
                return CONSTANTS[e.id]
            if e.id in self.values:
                return self.values[e.id]
            if self.kind_of(e.id) in ("hparam", "dim"):
                first = self.spec_names[e.id][1]
                at = f" (line {first.line})" if first and e.span and first.line != e.span.line else ""
                raise SpecError.at(f"'{e.id}' is used before it is defined{at}; define it first", e.span)
            if e.id in self.kinds or e.id in self.spec_names:
                raise SpecError.at(f"{what} must be a number known at compile time; '{e.id}' is {self.kind_words(e.id)}",
                                   e.span)
            raise SpecError.at(f"unknown name '{e.id}'", e.span)
        if isinstance(e, ir.Unary):
            v = self.number(e.operand, what)
            return -v if e.op == "-" else v
        if isinstance(e, ir.Call) and e.func in _NUMERIC_FUNCS and len(e.args) == 1 and not e.kwargs:
            v = self.number(e.args[0], what)
            try:
                return _NUMERIC_FUNCS[e.func](v)
            except ValueError:
                raise SpecError.at(f"{what}: {e.func}({v}) is undefined", e.span) from None
            except OverflowError:
                raise SpecError.at(f"{what}: {e.func}({v}) overflows", e.span) from None
        if isinstance(e, ir.Binary) and e.op != "@":
            a, b = self.number(e.left, what), self.number(e.right, what)
            try:
                if e.op == "+":
                    result = a + b
                elif e.op == "-":
                    result = a - b
                elif e.op == "*":
                    result = a * b
                elif e.op == "/":
                    if b == 0:
                        raise SpecError.at(f"division by zero in {what}", e.span)
                    if isinstance(a, int) and isinstance(b, int):
                        if a % b:
                            raise SpecError.at(f"{what}: {a} is not divisible by {b}", e.span)
                        result = a // b
                    else:
                        result = a / b
                else:
                    if isinstance(a, int) and isinstance(b, int) and abs(a) > 1 and b * math.log2(abs(a)) > _MAX_INT_BITS:
                        raise OverflowError   # 10 ** 10 ** 10 would take forever
                    result = a ** b
                    if isinstance(result, complex):
                        raise SpecError.at(f"{what}: {f'({a})' if a < 0 else a} ** {b} is not a real number", e.span)
                if isinstance(result, int) and result.bit_length() > _MAX_INT_BITS:
                    raise OverflowError
                return result
            except (OverflowError, ZeroDivisionError):
                raise SpecError.at(f"{what}: the arithmetic overflows", e.span) from None
        if isinstance(e, ir.Call) and e.func in _NUMERIC_FUNCS:
            if e.kwargs:
                raise SpecError.at(f"{e.func}() takes no options", e.kwargs[0].span)
            raise SpecError.at(f"{e.func}() takes 1 argument; got {len(e.args)}", e.span)
        if isinstance(e, ir.Call) and e.func not in OPS and e.func not in INITIALISERS:
            raise SpecError.at(f"unknown function '{e.func}'", e.span)
        if isinstance(e, ir.Call):
            raise SpecError.at(f"{what} must be a number known at compile time; {e.func}() is not evaluated there "
                               f"(use + - * / ** and {', '.join(_NUMERIC_FUNCS)})", e.span)
        raise SpecError.at(f"{what} must be a number known at compile time", e.span)

    def hparams_and_dims(self) -> None:
        for h in self.m.hparams:
            self.declare(h.name, "hparam", h.span)
            value = self.overrides.pop(h.name, None)
            if value is None:
                value = self.number(h.default, f"the default of '{h.name}'")
            typ = h.type or ("int" if isinstance(value, int) else "float")
            if typ == "int":
                if isinstance(value, float) and not value.is_integer():
                    raise SpecError.at(f"'{h.name}' is an int but its value is {value}", h.span)
                value = int(value)
            else:
                value = float(value)
            self.values[h.name] = value
            if typ == "int":
                self.set_dim(h.name, value, h.span)
        if self.overrides:
            unknown = ", ".join(sorted(self.overrides))
            known = ", ".join(h.name for h in self.m.hparams) or "none"
            raise SpecError.at(f"unknown hyper-parameter {unknown}; the model has {known}", self.m.span)
        for d in self.m.dims:
            self.declare(d.name, "dim", d.span)
            value = self.number(d.value, f"the dim '{d.name}'")
            if isinstance(value, float):
                if not value.is_integer():
                    raise SpecError.at(f"the dim '{d.name}' is {value}, not a whole number", d.span)
                value = int(value)
            self.values[d.name] = value
            self.set_dim(d.name, value, d.span)

    def set_dim(self, name: str, value: int, span) -> None:
        if value <= 0:
            raise SpecError.at(f"the dim '{name}' must be positive; it is {value}", span)
        self.dim_sizes[name] = value

    def shape(self, t: ir.TypeShape) -> Ty:
        for d in t.dims:
            if isinstance(d, int):
                if d <= 0:
                    raise SpecError.at(f"a dim must be positive; got {d}", t.span)
                self.dim_sizes[d] = d
            elif d not in self.dim_sizes:
                if d in self.kinds or d in self.spec_names:
                    raise SpecError.at(f"'{d}' is {self.kind_words(d)}, not an integer dim", t.span)
                raise SpecError.at(f"unknown dim '{d}'", t.span)
        return Ty(tuple(t.dims), t.complex)

    # -------------------------------------------------------------- expressions
    def needs_hint(self, e: ir.Expr) -> bool:
        """True if e's shape comes only from its context (a ``linear`` with no explicit shape)."""
        key = id(e)
        if key not in self._hint_memo:
            if isinstance(e, ir.Call) and e.func in ("linear", "lowrank"):
                shape_pos = 1 if e.func == "linear" else 2
                result = not (len(e.args) > shape_pos and isinstance(e.args[shape_pos], ir.ListExpr))
            elif isinstance(e, ir.Call) and e.func in OPS and OPS[e.func].kind in ("unary", "lastaxis", "norm", "token",
                                                                                   "rename"):
                result = bool(e.args) and self.needs_hint(e.args[0])
            elif isinstance(e, ir.Call) and e.func in OPS and OPS[e.func].kind in ("binary", "ternary"):
                result = bool(e.args) and all(self.needs_hint(a) for a in e.args)
            elif isinstance(e, ir.Unary):
                result = self.needs_hint(e.operand)
            elif isinstance(e, ir.Binary) and e.op != "@":
                result = self.needs_hint(e.left) and self.needs_hint(e.right)
            else:
                result = False
            self._hint_memo[key] = result
        return self._hint_memo[key]

    def infer(self, e: ir.Expr, ctx: _Ctx, hint: Ty | None = None) -> Ty:
        t = self._infer(e, ctx, hint)
        self.expr_types[id(e)] = t
        return t

    def _infer(self, e: ir.Expr, ctx: _Ctx, hint: Ty | None = None) -> Ty:
        if isinstance(e, ir.Num):
            return SCALAR
        if isinstance(e, ir.Imag):
            return Ty((), True)
        if isinstance(e, ir.Name):
            return ctx.lookup(e)
        if isinstance(e, ir.Unary):
            return self.infer(e.operand, ctx, hint)
        if isinstance(e, ir.Binary):
            return self.binary(e, ctx, hint)
        if isinstance(e, ir.Index):
            t = self.infer(e.target, ctx)
            if not t.dims:
                raise SpecError.at("cannot index a scalar", e.span)
            size = self.dim_sizes[t.dims[0]]
            if not 0 <= e.index < size:
                axis = f"axis '{t.dims[0]}'" if isinstance(t.dims[0], str) else "the first axis"
                raise SpecError.at(f"index {e.index} is out of range: {axis} has size {size} (indices start at 0)",
                                   e.span)
            return Ty(t.dims[1:], t.complex)
        if isinstance(e, ir.Str):
            raise SpecError.at("a string is only allowed as the spec path of a stack block, e.g. cell(\"gla.seq\")",
                               e.span)
        if isinstance(e, ir.ListExpr):
            raise SpecError.at("a list [...] is only allowed as a shape argument, e.g. linear(x, [heads, dk])", e.span)
        if isinstance(e, ir.Call):
            return self.call(e, ctx, hint)
        raise SpecError.at(f"unsupported expression {type(e).__name__}", e.span)

    def operands(self, es: tuple[ir.Expr, ...], ctx: _Ctx, hint: Ty | None) -> list[Ty]:
        """Types of elementwise operands: the ones that need a hint get a sibling's shape."""
        types: list[Ty | None] = [None if self.needs_hint(a) else self.infer(a, ctx) for a in es]
        known = [t for t in types if t is not None and t.dims]
        # a sibling with dims fixes the shape; a scalar sibling says nothing (it broadcasts): use the context's
        sibling = Ty(max(known, key=lambda t: len(t.dims)).dims) if known else hint
        return [t if t is not None else self.infer(a, ctx, sibling) for a, t in zip(es, types)]

    def binary(self, e: ir.Binary, ctx: _Ctx, hint: Ty | None) -> Ty:
        if e.op == "@":
            a, b = self.infer(e.left, ctx), self.infer(e.right, ctx)
            dims = matmul_dims(a.dims, b.dims)
            if dims is None:
                raise SpecError.at(f"cannot matmul {a.show()} @ {b.show()}: '@' contracts the last axis of the left "
                                   "operand with the first axis of the right one (1 or 2 axes each)", e.span)
            return Ty(dims, a.complex or b.complex)
        a, b = self.operands((e.left, e.right), ctx, hint)
        dims = broadcast(a.dims, b.dims)
        if dims is None:
            raise SpecError.at(f"shapes {a.show()} and {b.show()} do not broadcast for '{e.op}' (broadcasting aligns "
                               "dims by name; use outer(a, b) for an outer product)", e.span)
        return Ty(dims, a.complex or b.complex)

    def real(self, t: Ty, what: str, span) -> None:
        if t.complex:
            raise SpecError.at(f"{what} needs a real value; got complex (use real(), imag() or abs())", span)

    def call(self, e: ir.Call, ctx: _Ctx, hint: Ty | None) -> Ty:
        op = OPS.get(e.func)
        if op is None:
            if e.func in INITIALISERS and ctx.kind != "init":
                raise SpecError.at(f"'{e.func}' is a parameter initialiser; it is only allowed in params",
                                   e.span)
            if ctx.kind == "init" and e.func in INITIALISERS:
                return self.initialiser(e, ctx, hint)
            raise SpecError.at(f"unknown function '{e.func}'", e.span)
        allowed = set(op.options)
        for kw in e.kwargs:
            if kw.name not in allowed:
                opts = ", ".join(sorted(allowed)) or "none"
                raise SpecError.at(f"{e.func}() has no option '{kw.name}' (options: {opts})", kw.span)
            if not isinstance(kw.value, (ir.Num, ir.Unary)):
                raise SpecError.at(f"the option '{kw.name}' must be a number", kw.span)
        if op.kind == "token":
            return self.token_op(e, op, ctx, hint)
        if op.kind == "eye":
            if len(e.args) != 1 or not isinstance(e.args[0], ir.Name) or e.args[0].id not in self.dim_sizes:
                raise SpecError.at("eye() takes one dim name, e.g. eye(n)", e.span)
            return Ty((e.args[0].id, e.args[0].id))
        if op.kind == "rename":
            return self.rename(e, ctx, hint)
        n_args = op.arity
        if len(e.args) != n_args:
            raise SpecError.at(f"{e.func}() takes {n_args} argument{'s' if n_args != 1 else ''}; got {len(e.args)}",
                               e.span)
        if op.kind == "inverse":
            t = self.infer(e.args[0], ctx)
            if len(t.dims) != 2 or t.dims[0] != t.dims[1]:
                raise SpecError.at(f"{e.func}() needs a square matrix [n, n]; got {t.show()}", e.span)
            return t
        if op.kind in ("unary", "lastaxis", "norm", "reduce", "transpose"):
            t = self.infer(e.args[0], ctx, hint)
            if op.real_only:
                self.real(t, f"{e.func}()", e.span)
            if op.kind in ("lastaxis", "norm", "reduce") and not t.dims:
                raise SpecError.at(f"{e.func}() works over the last axis; got a scalar", e.span)
            if op.kind == "norm" and ctx.kind in ("stream", "out"):
                self.own(e, ctx, "norm", ((t.dims[-1],),))
                if e.func == "layernorm":
                    self.own(e, ctx, "norm_bias", ((t.dims[-1],),))
            if op.kind == "reduce":
                return Ty(t.dims[:-1], t.complex)
            if op.kind == "transpose":
                if len(t.dims) != 2:
                    raise SpecError.at(f"transpose() needs a matrix; got {t.show()}", e.span)
                return Ty((t.dims[1], t.dims[0]), t.complex)
            return Ty(t.dims, t.complex and not op.returns_real)
        if op.kind in ("binary", "ternary"):
            ts = self.operands(tuple(e.args), ctx, hint)
            dims: tuple[Dim, ...] | None = ()
            for t in ts:
                self.real(t, f"{e.func}()", e.span)
                dims = broadcast(dims, t.dims)
                if dims is None:
                    shown = ", ".join(t.show() for t in ts)
                    raise SpecError.at(f"the operands of {e.func}() do not broadcast: {shown}", e.span)
            return Ty(dims, False)
        if op.kind == "complex":
            re, im = self.operands(tuple(e.args), ctx, hint)
            self.real(re, "complex()", e.span)
            self.real(im, "complex()", e.span)
            dims = broadcast(re.dims, im.dims)
            if dims is None:
                raise SpecError.at(f"complex(): {re.show()} and {im.show()} do not broadcast", e.span)
            return Ty(dims, True)
        if op.kind == "outer":
            a, b = (self.infer(x, ctx) for x in e.args)
            if len(a.dims) != 1 or len(b.dims) != 1:
                raise SpecError.at(f"outer() takes two vectors; got {a.show()} and {b.show()}", e.span)
            return Ty(a.dims + b.dims, a.complex or b.complex)
        raise SpecError.at(f"no typing rule for '{e.func}'", e.span)

    def rename(self, e: ir.Call, ctx: _Ctx, hint: Ty | None) -> Ty:
        """``rename(x, a, b)``: x's type with its axis a called b. The numbers stay as they are, so the two dims must
        have one size, and x must have the axis a once (which of two would it be?) and no axis b already."""
        if len(e.args) != 3 or not all(isinstance(a, ir.Name) and a.id in self.dim_sizes for a in e.args[1:]):
            raise SpecError.at("rename() takes a value and two dim names, e.g. rename(x, dk, dv)", e.span)
        if ctx.kind not in ("stream", "out"):
            raise SpecError.at("rename() is only allowed in streams and out: give the cell's inputs the dims the "
                               "cell needs", e.span)
        old, new = e.args[1].id, e.args[2].id
        inner_hint = Ty(tuple(old if d == new else d for d in hint.dims), hint.complex) if hint is not None else None
        t = self.infer(e.args[0], ctx, inner_hint)
        if t.dims.count(old) != 1:
            has = "has no axis" if old not in t.dims else "has more than one axis"
            raise SpecError.at(f"rename(): the value {t.show()} {has} '{old}'", e.span)
        if new in t.dims and new != old:
            raise SpecError.at(f"rename(): the value {t.show()} already has an axis '{new}'", e.span)
        if self.dim_sizes[old] != self.dim_sizes[new]:
            raise SpecError.at(f"rename(): '{old}' has size {self.dim_sizes[old]} and '{new}' size "
                               f"{self.dim_sizes[new]}; a rename keeps the numbers, so the sizes must be equal",
                               e.span)
        return Ty(tuple(new if d == old else d for d in t.dims), t.complex)

    def own(self, e: ir.Call, ctx: _Ctx, role: str, groups) -> str:
        """Register an implicit parameter owned by call e inside definition ctx.owner."""
        suffix = {"weight": "proj", "bias": "proj_bias", "conv": "conv", "norm": "norm", "norm_bias": "norm_bias",
                  "lora_a": "lora_a", "lora_b": "lora_b"}[role]
        count = ctx.counters.get(suffix, 0)
        ctx.counters[suffix] = count + 1
        name = f"{ctx.owner}_{suffix}" + (str(count) if count else "")
        if name in self.kinds:
            raise SpecError.at(f"the implicit parameter '{name}' of {e.func}() clashes with a name in the spec", e.span)
        self.implicit.append(ImplicitParam(name, ctx.owner, role, tuple(tuple(g) for g in groups)))
        self.implicit_of[id(e)] = self.implicit_of.get(id(e), ()) + (name,)
        return name

    def token_op(self, e: ir.Call, op, ctx: _Ctx, hint: Ty | None) -> Ty:
        if ctx.kind not in ("stream", "out"):
            where = {"cell": "the cell", "init": "an initialiser", "state_init": "a state's initial value"}.get(
                ctx.kind, ctx.kind)
            raise SpecError.at(f"{e.func}() is a token-parallel operator; use it in streams or out, not in {where}",
                               e.span)
        args = e.args
        if e.func in ("linear", "lowrank"):
            rank_pos = 1 if e.func == "lowrank" else None
            shape_pos = 2 if e.func == "lowrank" else 1
            if not args or len(args) > shape_pos + 1:
                usage = "linear(x[, [dims]])" if e.func == "linear" else "lowrank(x, rank[, [dims]])"
                raise SpecError.at(f"{e.func}() takes {usage}", e.span)
            if rank_pos is not None and len(args) < 2:
                raise SpecError.at("lowrank() takes lowrank(x, rank[, [dims]])", e.span)
            src = self.infer(args[0], ctx)
            self.real(src, f"{e.func}()", e.span)
            if len(args) > shape_pos:
                shape_arg = args[shape_pos]
                if not isinstance(shape_arg, ir.ListExpr):
                    raise SpecError.at(f"the shape argument of {e.func}() must be a list like [heads, dk]", shape_arg.span)
                out = self.shape_list(shape_arg)
            elif hint is not None:
                out = hint.dims
            else:
                raise SpecError.at(f"cannot infer the output shape of {e.func}(); give it: {e.func}(x, [dims])", e.span)
            in_dims = src.dims
            if e.func == "lowrank":
                rank = self.int_arg(args[1], "the rank of lowrank()")
                self.dim_sizes[rank] = rank
                self.own(e, ctx, "lora_a", ((rank,), in_dims))
                self.own(e, ctx, "lora_b", (out, (rank,)))
            else:
                self.own(e, ctx, "weight", (out, in_dims))
            if any(k.name == "bias" and self.number(k.value, "bias") for k in e.kwargs):
                self.own(e, ctx, "bias", (out,))
            return Ty(out, False)
        if e.func == "conv":
            if len(args) != 2:
                raise SpecError.at("conv() takes conv(x, width)", e.span)
            t = self.infer(args[0], ctx, hint)
            self.real(t, "conv()", e.span)
            width = self.int_arg(args[1], "the width of conv()")
            self.dim_sizes[width] = width
            self.own(e, ctx, "conv", (t.dims, (width,)))
            return t
        if e.func == "position":
            if args or e.kwargs:
                raise SpecError.at("position() takes no arguments", e.span)
            return SCALAR
        if e.func == "shift":
            if len(args) != 1:
                raise SpecError.at("shift() takes shift(x[, n=1])", e.span)
            for kw in e.kwargs:
                n = self.number(kw.value, "shift's n")
                if not isinstance(n, int) or n < 0:
                    raise SpecError.at(f"shift(x, n={n}) reads the future; streams must be causal (n >= 0)", kw.span)
            return self.infer(args[0], ctx, hint)
        raise SpecError.at(f"no typing rule for '{e.func}'", e.span)

    def int_arg(self, e: ir.Expr, what: str) -> int:
        v = self.number(e, what)
        if not isinstance(v, int) or v <= 0:
            raise SpecError.at(f"{what} must be a positive integer; got {v}", e.span)
        return v

    def shape_list(self, e: ir.ListExpr) -> tuple[Dim, ...]:
        dims: list[Dim] = []
        for item in e.items:
            if isinstance(item, ir.Name) and item.id in self.dim_sizes:
                dims.append(item.id)
            elif isinstance(item, ir.Num) and isinstance(item.value, int) and item.value > 0:
                self.dim_sizes[item.value] = item.value
                dims.append(item.value)
            else:
                raise SpecError.at("a shape lists dim names or positive integers", item.span)
        return tuple(dims)

    def initialiser(self, e: ir.Call, ctx: _Ctx, hint: Ty | None) -> Ty:
        arity = INITIALISER_ARITY[e.func]
        if len(e.args) != arity or e.kwargs:
            usage = INITIALISERS[e.func].split(":")[0]
            if e.kwargs:
                raise SpecError.at(f"{e.func}() takes no options (usage: {usage})", e.kwargs[0].span)
            raise SpecError.at(f"{e.func}() takes {arity} argument{'s' if arity != 1 else ''}; got {len(e.args)} "
                               f"(usage: {usage})", e.span)
        if e.func == "index":
            axis = e.args[0]
            if not isinstance(axis, ir.Name) or axis.id not in ctx.param_dims:
                dims = ", ".join(str(d) for d in ctx.param_dims) or "none"
                raise SpecError.at(f"index() takes an axis of the parameter (its dims: {dims})", e.span)
            return Ty((axis.id,))
        for a in e.args:
            self.number(a, f"an argument of {e.func}()")
        if e.func in ("hippo_legs", "orthogonal", "xavier", "legt", "reservoir") and len(ctx.param_dims) != 2:
            raise SpecError.at(f"{e.func}() initialises a matrix; the parameter is {Ty(ctx.param_dims).show()}",
                               e.span)
        if e.func in ("hippo_legs", "orthogonal", "legt", "reservoir") and ctx.param_dims[0] != ctx.param_dims[1]:
            raise SpecError.at(f"{e.func}() initialises a square matrix", e.span)
        return Ty(ctx.param_dims)

    # -------------------------------------------------------------- sections
    def model_name(self) -> None:
        """The model's name names generated modules and classes: a plain identifier."""
        name, span = self.m.name, self.m.span
        if len(name) > MAX_NAME_LENGTH:
            raise SpecError.at(f"the model name '{name[:20]}...' is longer than {MAX_NAME_LENGTH} characters", span)
        if keyword.iskeyword(name) or keyword.issoftkeyword(name):
            raise SpecError.at(f"'{name}' is a Python keyword and cannot name the model", span)
        if name.startswith("_"):
            raise SpecError.at(f"the model name '{name}' starts with '_', which is reserved for generated code", span)
        if name in GENERATED_NAMES:
            raise SpecError.at(f"the model name '{name}' is reserved (a name generated code uses); choose another",
                               span)

    def run(self) -> Checked:
        m = self.m
        self.model_name()
        self.hparams_and_dims()
        params = {}
        for p in m.params:
            self.declare(p.name, "param", p.span)
            params[p.name] = self.shape(p.type)
        x_ty = Ty(("d_model",)) if "d_model" in self.dim_sizes else None
        self.types.update(params)
        for p in m.params:
            if True:
                ctx = _Ctx(self, "init", p.name, params[p.name].dims)
                t = self.infer(p.init, ctx, params[p.name])
                if broadcast(t.dims, params[p.name].dims) != params[p.name].dims:
                    raise SpecError.at(f"the initialiser of '{p.name}' has shape {t.show()}, not {params[p.name].show()}",
                                       p.init.span)
                if t.complex and not params[p.name].complex:
                    raise SpecError.at(f"the initialiser of '{p.name}' is complex but '{p.name}' is real", p.init.span)
        # streams
        for s in m.streams:
            self.declare(s.name, "stream", s.span)
        stream_names = [s.name for s in m.streams]
        for i, s in enumerate(m.streams):
            declared = self.shape(s.type)
            ctx = _Ctx(self, "stream", s.name, visible=set(stream_names[:i]), x=x_ty)
            t = self.infer(s.value, ctx, declared)
            self.assign(declared, t, f"the stream '{s.name}'", s.value.span)
            self.types[s.name] = declared
        if x_ty is not None:
            self.types[LAYER_INPUT] = x_ty
        readouts, op_streams, op_params = self.cell()
        self.outs(readouts)
        return Checked(model=m, values=dict(self.values), dim_sizes=dict(self.dim_sizes), types=dict(self.types),
                       cell_types=dict(self.cell_types), implicit=tuple(self.implicit),
                       implicit_of=dict(self.implicit_of), readouts=readouts, op_streams=op_streams,
                       op_params=op_params, kinds=dict(self.kinds), expr_types=dict(self.expr_types))

    def assign(self, declared: Ty, got: Ty, what: str, span, value: str = "its value") -> None:
        if got.complex and not declared.complex:
            raise SpecError.at(f"{what} is declared real but {value} is complex", span)
        if broadcast(got.dims, declared.dims) != declared.dims:
            raise SpecError.at(f"{what} is declared {declared.show()} but {value} has shape {got.show()}", span)

    def cell_view(self, name: str, t: Ty, axis: str | None, span) -> Ty:
        if axis is None or axis not in t.dims:
            return t
        if t.dims[0] != axis:
            raise SpecError.at(f"'{name}' has the cell axis '{axis}' at position {t.dims.index(axis) + 1}; "
                               "it must be the first axis", span)
        return Ty(t.dims[1:], t.complex)

    def cell(self) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        cell = self.m.cell
        if cell is None:
            return (), (), ()
        axis = cell.over
        if axis is not None and axis not in self.dim_sizes:
            raise SpecError.at(f"the cell runs over '{axis}', which is not a dim", cell.span)
        ctx = _Ctx(self, "cell", "cell")
        for name, t in self.types.items():
            if self.kinds.get(name) in ("param", "stream"):
                ctx.cell_visible[name] = t
        declared_later = {st.name: st for st in cell.body if isinstance(st, ir.StateDecl)}
        ctx.later_states = declared_later
        local_order: list[str] = []
        states: list[str] = []
        for st in cell.body:
            if isinstance(st, ir.CellArg):
                self.declare(st.name, "arg", st.span)
                v = self.number(st.default, f"the default of the arg '{st.name}'")
                self.values[st.name] = v
                ctx.cell_visible[st.name] = SCALAR
                self.cell_types[st.name] = SCALAR
            elif isinstance(st, ir.StateDecl):
                self.declare(st.name, "state", st.span)
                t = self.shape(st.type)
                if axis is not None and axis in t.dims:
                    raise SpecError.at(f"the state '{st.name}' must not include the cell axis '{axis}' "
                                       "(the cell already runs over it)", st.type.span)
                init_ctx = _Ctx(self, "state_init", st.name)
                init_ctx.cell_visible = {n: v for n, v in ctx.cell_visible.items() if self.kinds[n] in ("param", "arg")}
                self.assign(t, self.infer(st.init, init_ctx, t), f"the state '{st.name}'", st.init.span,
                            "its initial value")
                ctx.cell_visible[st.name] = t
                self.cell_types[st.name] = t
                states.append(st.name)
            elif isinstance(st, ir.Update):
                if st.target not in self.kinds:
                    if st.target in declared_later:
                        raise SpecError.at(f"the state '{st.target}' is updated before it is declared "
                                           f"(line {declared_later[st.target].span.line})", st.span)
                    raise SpecError.at(f"'{st.target}' is not a state; declare it with 'state {st.target}: [...] = 0'",
                                       st.span)
                if self.kinds[st.target] != "state":
                    raise SpecError.at(f"only states can be updated with '<-'; '{st.target}' is "
                                       f"{self.kind_words(st.target)}", st.span)
                t = self.cell_types[st.target]
                self.assign(t, self.infer(st.value, ctx, t), f"the state '{st.target}'", st.value.span,
                            "the update")
            elif isinstance(st, ir.Local):
                if self.kinds.get(st.name) == "state":
                    raise SpecError.at(f"'{st.name}' is a state; update it with '{st.name} <- ...', not '='", st.span)
                self.declare(st.name, "local", st.span)
                t = self.infer(st.value, ctx)
                ctx.cell_visible[st.name] = t
                self.cell_types[st.name] = t
                local_order.append(st.name)
        if not states:
            raise SpecError.at("the cell declares no state; add 'state S: [...] = 0'", cell.span)
        updated = {st.target for st in cell.body if isinstance(st, ir.Update)}
        for s in states:
            if s not in updated:
                raise SpecError.at(f"the state '{s}' is never updated; add '{s} <- ...'", self.where[s])
        read_by_out = [n.id for o in self.m.outs for n in ir.names_in(o.value)]
        if self.m.outs:
            readouts = tuple(n for n in local_order if n in read_by_out)
            if not readouts:
                raise SpecError.at("out reads nothing from the cell; read a cell value such as 'o'", self.m.outs[0].span)
        elif local_order:
            readouts = (local_order[-1],)
        else:
            raise SpecError.at("the cell has no readout: assign one, e.g. 'o = q @ S'", cell.span)
        self.cell_readouts_axis = axis
        for name in readouts:
            t = self.cell_types[name]
            self.types[name] = Ty(((axis,) if axis else ()) + t.dims, t.complex)
        op_streams = tuple(n for n in (s.name for s in self.m.streams) if n in ctx.read)
        op_params = tuple(n for n in (p.name for p in self.m.params) if n in ctx.read)
        return readouts, op_streams, op_params

    def outs(self, readouts: tuple[str, ...]) -> None:
        if not self.m.outs:
            return
        visible = {n for n, k in self.kinds.items() if k in ("param", "stream")} | set(readouts)
        for o in self.m.outs:
            self.declare(o.name, "out", o.span)
        for o in self.m.outs:
            ctx = _Ctx(self, "out", o.name, visible=set(visible), x=self.types.get(LAYER_INPUT))
            hint = Ty(("d_model",)) if o.name == "y" and "d_model" in self.dim_sizes else None
            t = self.infer(o.value, ctx, hint)
            if t.complex:
                raise SpecError.at(f"the output '{o.name}' is complex; take real() of it", o.value.span)
            self.types[o.name] = t
            visible.add(o.name)
        y = next((o for o in self.m.outs if o.name == "y"), None)
        if y is None:
            raise SpecError.at("out must define y, the layer output", self.m.outs[-1].span)
        if "d_model" in self.dim_sizes and self.types["y"].dims != ("d_model",):
            raise SpecError.at(f"the layer output y must be [d_model]; it is {self.types['y'].show()}", y.value.span)


class _Ctx:
    """Where an expression is evaluated: which names it may read and who owns its implicit params."""

    def __init__(self, checker: _Checker, kind: str, owner: str, param_dims: tuple = (), visible: set | None = None,
                 x: Ty | None = None):
        self.c = checker
        self.kind = kind              # init | stream | cell | state_init | out
        self.owner = owner
        self.param_dims = param_dims
        self.visible = visible or set()
        self.x = x
        self.counters: dict[str, int] = {}
        self.cell_visible: dict[str, Ty] = {}
        self.later_states: dict = {}
        self.read: set[str] = set()

    def lookup(self, e: ir.Name) -> Ty:
        c, name = self.c, e.id
        declared = name in c.kinds
        kind = c.kind_of(name)      # also for names the spec defines further down
        if name in CONSTANTS or kind in ("hparam", "dim"):
            return SCALAR
        if name == LAYER_INPUT:
            if self.kind in ("stream", "out"):
                if self.x is None:
                    raise SpecError.at("the layer input x is [d_model]; declare d_model in the model header", e.span)
                return self.x
            raise SpecError.at(f"the layer input x is not visible in {self._where()}; pass it through a stream", e.span)
        if kind is None:
            raise SpecError.at(f"unknown name '{name}'", e.span)
        if self.kind == "init":
            raise SpecError.at(f"an initialiser may use numbers and dims only; '{name}' is {c.kind_words(name)}",
                               e.span)
        if self.kind in ("cell", "state_init"):
            if name in self.cell_visible:
                self.read.add(name)
                t = self.cell_visible[name]
                return c.cell_view(name, t, c.m.cell.over, e.span) if kind in ("param", "stream") else t
            if kind == "out":
                raise SpecError.at(f"the cell cannot read the output '{name}'", e.span)
            if self.kind == "state_init" and (declared or kind != "arg"):
                raise SpecError.at(f"the initial value of the state '{self.owner}' may use numbers, dims, params and "
                                   f"args only; '{name}' is {c.kind_words(name)}", e.span)
            first = c.spec_names[name][1] if name in c.spec_names else None
            at = f" (line {first.line})" if first is not None else ""
            if kind == "state":
                raise SpecError.at(f"the state '{name}' is read before it is declared{at}", e.span)
            if kind == "local":
                raise SpecError.at(f"'{name}' is read before it is assigned{at}", e.span)
            if kind == "arg":
                raise SpecError.at(f"the cell arg '{name}' is used before it is declared{at}", e.span)
            raise SpecError.at(f"'{name}' is {c.kind_words(name)} and is not visible here", e.span)
        # stream / out
        if kind in ("state", "local", "arg") or (kind == "out" and self.kind == "stream"):
            what = {"state": "the state", "local": "the cell value", "arg": "the cell arg", "out": "the output"}[kind]
            if self.kind == "stream" and kind == "out":
                raise SpecError.at(f"the stream '{self.owner}' reads the output '{name}'; streams are computed before "
                                   "the cell and cannot read out", e.span)
            if self.kind == "stream":
                raise SpecError.at(f"the stream '{self.owner}' reads {what} '{name}'; streams are token-parallel and "
                                   "cannot depend on the recurrence (move it into the cell)", e.span)
            if kind == "state":
                raise SpecError.at(f"out reads the state '{name}'; read it through a cell value such as 'o = ...'",
                                   e.span)
            if kind == "arg":
                raise SpecError.at(f"out cannot read the cell arg '{name}'", e.span)
        if name not in self.visible and kind != "param":
            if kind == "stream":
                raise SpecError.at(f"the stream '{name}' is used before it is defined", e.span)
            if kind == "out":
                raise SpecError.at(f"the output '{name}' is used before it is defined", e.span)
            raise SpecError.at(f"'{name}' is not visible here", e.span)
        return c.types[name]

    def _where(self) -> str:
        return {"cell": "the cell", "init": "an initialiser", "state_init": "a state's initial value"}.get(self.kind,
                                                                                                          self.kind)


def check(model: ir.Model, overrides: dict[str, int | float] | None = None) -> Checked:
    """Validate a model (with hyper-parameters optionally overridden). Raises SpecError."""
    return _Checker(model, overrides or {}).run()
