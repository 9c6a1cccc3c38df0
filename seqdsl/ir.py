"""The typed, frozen IR of a .seq spec.

Glossary of the dims the examples use (they are ordinary names in the language):
    B batch, T time (never written in specs: every stream is per token),
    heads / H  the independent axis a cell runs over,
    dk / K     key (state row) size,   dv / V  value (state column) size,
    n          SSM state size,         d_model the layer width.

Every node carries a ``span`` (source position). Spans are ignored by ``==`` and ``hash`` so that
``parse(print(ir)) == ir`` holds although printing moves things around.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class Span(BaseModel):
    """1-based start position of a node in its source."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    line: int
    column: int


class Node(BaseModel):
    """Base of every IR node: frozen, no extra fields, span-insensitive equality."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    span: Span | None = None

    def _key(self) -> tuple:
        return (type(self),) + tuple(getattr(self, f) for f in type(self).model_fields if f != "span")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


# ---------------------------------------------------------------- expressions
class Num(Node):
    kind: Literal["num"] = "num"
    value: int | float


class Imag(Node):
    """An imaginary literal ``2j``."""

    kind: Literal["imag"] = "imag"
    value: float


class Name(Node):
    kind: Literal["name"] = "name"
    id: str


class Unary(Node):
    kind: Literal["unary"] = "unary"
    op: Literal["-", "+"]
    operand: Expr


class Binary(Node):
    kind: Literal["binary"] = "binary"
    op: Literal["+", "-", "*", "/", "@", "**"]
    left: Expr
    right: Expr


class KwArg(Node):
    name: str
    value: Expr


class Call(Node):
    kind: Literal["call"] = "call"
    func: str
    args: tuple[Expr, ...] = ()
    kwargs: tuple[KwArg, ...] = ()


class Index(Node):
    """``e[i]``: the i-th slice along the first axis of e."""

    kind: Literal["index"] = "index"
    target: Expr
    index: int


class Str(Node):
    """A string literal: the path of a spec in a stack, ``cell("gla.seq")``."""

    kind: Literal["str"] = "str"
    value: str


class ListExpr(Node):
    """``[a, b]``: a shape given as an argument (``linear(x, [heads, dk])``)."""

    kind: Literal["list"] = "list"
    items: tuple[Expr, ...] = ()


Expr = Annotated[Union[Num, Imag, Name, Unary, Binary, Call, Index, ListExpr, Str], Field(discriminator="kind")]


# ---------------------------------------------------------------- declarations
class TypeShape(Node):
    """``[heads, dk]`` or ``complex[n]``: a value per token (or per param), real unless complex."""

    complex: bool = False
    dims: tuple[str | int, ...] = ()


class HParam(Node):
    """A header hyper-parameter ``d_model: int = 256``."""

    name: str
    type: Literal["int", "float"] | None = None
    default: Expr


class DimDef(Node):
    name: str
    value: Expr


class ParamDef(Node):
    """``A: [n] ~ init`` (learned, initialised by init) or ``A: [n] = value`` (fixed buffer)."""

    name: str
    type: TypeShape
    init: Expr
    fixed: bool = False


class StreamDef(Node):
    name: str
    type: TypeShape
    value: Expr


class StateDecl(Node):
    kind: Literal["state"] = "state"
    name: str
    type: TypeShape
    init: Expr


class CellArg(Node):
    """``arg scale = dk ** -0.5``: a scalar the op takes as a keyword argument."""

    kind: Literal["arg"] = "arg"
    name: str
    default: Expr


class Update(Node):
    """``S <- expr``: replaces state S; later statements of the same step see the new value."""

    kind: Literal["update"] = "update"
    target: str
    value: Expr


class Local(Node):
    kind: Literal["local"] = "local"
    name: str
    value: Expr


CellStmt = Annotated[Union[StateDecl, CellArg, Update, Local], Field(discriminator="kind")]


class Cell(Node):
    over: str | None = None
    body: tuple[CellStmt, ...] = ()

    @property
    def states(self) -> tuple[StateDecl, ...]:
        return tuple(s for s in self.body if isinstance(s, StateDecl))

    @property
    def args(self) -> tuple[CellArg, ...]:
        return tuple(s for s in self.body if isinstance(s, CellArg))


class OutDef(Node):
    name: str
    value: Expr


class Model(Node):
    """A whole spec. Sections keep their source order; the printer writes them canonically."""

    name: str
    hparams: tuple[HParam, ...] = ()
    dims: tuple[DimDef, ...] = ()
    params: tuple[ParamDef, ...] = ()
    streams: tuple[StreamDef, ...] = ()
    cell: Cell | None = None
    outs: tuple[OutDef, ...] = ()


class BlockDef(Node):
    """``mixer = cell("gla.seq", heads = 2)``: a named block of a stack."""

    name: str
    value: Expr


class Stack(Node):
    """A stack spec: named blocks and the layer sequence (pre-norm residual blocks between an
    embedding and a head); ``segments``, if given, runs the stack segment by segment with a carry
    (``memory_tokens(length = 32, tokens = 4)``: RMT's memory tokens)."""

    name: str
    hparams: tuple[HParam, ...] = ()
    blocks: tuple[BlockDef, ...] = ()
    layers: Expr
    segments: Expr | None = None


for _cls in (BlockDef, Stack, Unary, Binary, KwArg, Call, Index, ListExpr, ParamDef, StreamDef, StateDecl, CellArg,
             Update, Local, Cell, OutDef, HParam, DimDef, Model):
    _cls.model_rebuild()


def children(e: Expr) -> tuple[Expr, ...]:
    """Direct sub-expressions of e, in evaluation order."""
    if isinstance(e, Unary):
        return (e.operand,)
    if isinstance(e, Binary):
        return (e.left, e.right)
    if isinstance(e, Call):
        return tuple(e.args) + tuple(k.value for k in e.kwargs)
    if isinstance(e, Index):
        return (e.target,)
    if isinstance(e, ListExpr):
        return tuple(e.items)
    return ()


def walk(e: Expr):
    """All sub-expressions of e (itself included), children before parents, left to right."""
    stack: list[tuple[Expr, bool]] = [(e, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            yield node
            continue
        stack.append((node, True))
        for c in reversed(children(node)):
            stack.append((c, False))


def names_in(e: Expr) -> list[Name]:
    """Every Name read by e, in order (function names of calls are not reads)."""
    return [n for n in walk(e) if isinstance(n, Name)]
