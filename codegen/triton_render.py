"""Render IR expressions to Triton source text on register blocks, through the op table.

A value of named dims ``(a, b)`` is a register block ``[BLOCK_a, BLOCK_b]`` (block sizes are powers
of two, the real lanes masked by ``m_a``); a value without dims is a scalar. Operands are aligned
statically by name with ``x[:, None]`` / ``x[None, :]`` / ``tl.trans(x)``; contractions ``a @ b``
become sums (``tl.reduce(.., _tlib.add)``, i.e. ``tl.sum``) of a broadcast product over the
contracted axis, masked where it is padded, and so do the op table's reductions. Complex values are
carried as two real blocks (real and imaginary parts), bound to temporaries so that no text is
duplicated. Plain numbers (literals, hyper-parameters) are folded at generation time and stay Python
literals.

Rendering may need statements before the expression (temporaries): they collect in ``lines`` and the
caller writes them out before the statement that uses the returned text.
"""

from __future__ import annotations

import cmath
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from seqdsl import ir
from seqdsl.codegen.ops import CONSTANTS, OPS
from seqdsl.typecheck import Checked, broadcast, matmul_dims


class Unsupported(Exception):
    """The cell uses something the Triton renderer cannot express; the message says what."""


@dataclass(frozen=True)
class Val:
    """A rendered value: its text (the real part), named dims, imaginary part text, folded number."""

    re: str
    dims: tuple
    im: str | None = None
    value: float | complex | None = None

    @property
    def complex(self) -> bool:
        return self.im is not None

    @property
    def plain(self) -> bool:
        return self.value is not None


@dataclass(frozen=True)
class _Part:
    """The parts of a complex operand, for templates written with ``{0.re}`` / ``{0.im}``."""

    re: str
    im: str


def literal(x: float) -> str:
    """Python source of a float (also inf / nan)."""
    x = float(x)
    if math.isfinite(x):
        return repr(x)
    return f'float("{x}")'


def number(v: float | complex) -> Val:
    """A folded plain number."""
    if isinstance(v, complex):
        if v.imag == 0:
            v = v.real
        else:
            return Val(literal(v.real), (), literal(v.imag), v)
    return Val(literal(v), (), None, float(v))


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*$")
_FOLD = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b,
         "**": lambda a, b: a ** b}
_FOLD_CALL = {"exp": cmath.exp, "log": cmath.log, "sqrt": cmath.sqrt, "cos": cmath.cos, "sin": cmath.sin,
              "tanh": cmath.tanh, "abs": abs, "real": lambda z: complex(z).real, "imag": lambda z: complex(z).imag,
              "conj": lambda z: complex(z).conjugate()}


def dim_id(d) -> str:
    """The identifier part of a dim's names in kernels: ``SIZE_dk``, ``BLOCK_dk``, ``o_dk``, ``m_dk``."""
    return str(d)


class Blocks:
    """Names of the per-dim kernel values: true size, block size, lane offsets and mask.

    ``padded(d)``: whether the block of d may have lanes beyond the true size (then reductions mask).
    ``tiled``: the dim split across programs (its offsets are global; nothing may reduce over it, except where
    ``partial_sums``: in a backward kernel, whose reductions over it are partial sums that the programs of the
    other tiles complete by adding into the same gradient, as only values without that axis get them).
    """

    def __init__(self, sizes: dict, tiled=None, partial_sums: bool = False):
        self.sizes = sizes
        self.tiled = tiled
        self.partial_sums = partial_sums

    def across_tiles(self, d) -> bool:
        """Whether a reduction over d may not be rendered (d is split across programs, outside a backward)."""
        return d == self.tiled and not self.partial_sums

    def size(self, d) -> str:
        return f"SIZE_{dim_id(d)}"

    def block(self, d) -> str:
        return f"BLOCK_{dim_id(d)}"

    def offset(self, d) -> str:
        return f"o_{dim_id(d)}"

    def mask(self, d) -> str:
        return f"m_{dim_id(d)}"

    def padded(self, d) -> bool:
        n = self.sizes[d]
        return d == self.tiled or n & (n - 1) != 0


def index_at(pos: int, ndim: int) -> str:
    """``[:, None]``-style index placing a 1-d block at axis ``pos`` of an ``ndim``-d block."""
    if ndim <= 1:
        return ""
    return "[" + ", ".join(":" if i == pos else "None" for i in range(ndim)) + "]"


def index_for(src: tuple, target: tuple) -> str:
    """``[:, None]``-style index placing the axes ``src`` (in order) among ``target``'s."""
    if not src or len(src) == len(target):
        return ""
    return "[" + ", ".join(":" if d in src else "None" for d in target) + "]"


class TritonRenderer:
    """Renders expressions of one kernel context.

    ``resolve(name) -> Val`` for every name the context reads; ``blocks`` names the per-dim values;
    ``dtype`` is the name of the compute dtype in the kernel (a ``tl.constexpr``).
    """

    def __init__(self, checked: Checked, resolve: Callable[[str], Val], blocks: Blocks, dtype: str = "DTYPE",
                 invariant: Callable[[ir.Expr], bool] | None = None):
        self.c = checked
        self.resolve = resolve
        self.blocks = blocks
        self.dtype = dtype
        self.invariant = invariant
        self.lines: list[str] = []
        self.hoisted: list[str] = []      # statements of loop-invariant subexpressions (before the loop)
        self._hoisted_values: dict[tuple, Val] = {}
        self._n = 0

    # ------------------------------------------------------------------ helpers
    def broadcast(self, a: tuple, b: tuple) -> tuple | None:
        """Dims of an elementwise result of operands of dims a and b (None: they do not broadcast)."""
        return broadcast(a, b)

    def take_lines(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines

    def bind(self, text: str, hint: str = "t") -> str:
        """A temporary holding ``text`` (or ``text`` itself when it is a name)."""
        if _IDENT.match(text) or _is_number(text):
            return text
        name = f"_{hint}{self._n}"
        self._n += 1
        self.lines.append(f"{name} = {text}")
        return name

    def bound(self, v: Val) -> Val:
        """v with its parts bound to temporaries (so they can be repeated in text)."""
        if v.plain:
            return v
        return Val(self.bind(v.re), v.dims, None if v.im is None else self.bind(v.im), None)

    def align(self, text: str, dims: tuple, target: tuple) -> str:
        """Text of a block of ``dims`` arranged as ``target`` (a superset of its dims)."""
        if not dims or dims == target:
            return text
        order = [d for d in target if d in dims]
        if list(dims) != order:
            if len(dims) != 2:
                raise Unsupported(f"cannot permute a {len(dims)}-d block {dims} to {target}")
            text = f"tl.trans({text})"
        return f"{text}{index_for(order, target)}"

    def parts(self, v: Val, target: tuple) -> tuple[str, str | None]:
        return (self.align(v.re, v.dims, target), None if v.im is None else self.align(v.im, v.dims, target))

    def last_axis(self, dims: tuple) -> dict:
        """Template keywords for a reduction over the last axis of a block of ``dims``."""
        if not dims:
            raise Unsupported("a last-axis function of a scalar")
        d = dims[-1]
        if self.blocks.across_tiles(d):
            raise Unsupported(f"a reduction over the tiled axis {d}")
        m = self.blocks.mask(d) + index_at(len(dims) - 1, len(dims))
        return {"m": m, "ax": len(dims) - 1, "n": float(self.c.dim_sizes[d])}

    # ------------------------------------------------------------------ expressions
    def __call__(self, e: ir.Expr) -> Val:
        return self.render(e)

    def render(self, e: ir.Expr) -> Val:
        """Val of e; inside the time loop, a loop-invariant subexpression is computed once before it."""
        if self.invariant is not None and isinstance(e, (ir.Binary, ir.Call, ir.Index)) and self.invariant(e):
            saved_lines, saved_test = self.lines, self.invariant
            self.lines, self.invariant = [], None
            try:
                v = self.render_here(e)
                if not v.plain:
                    key = (v.re, v.im, v.dims)
                    if key not in self._hoisted_values:
                        self._hoisted_values[key] = Val(self.bind(v.re, "inv"), v.dims,
                                                        None if v.im is None else self.bind(v.im, "inv"))
                    v = self._hoisted_values[key]
                self.hoisted += self.lines
            finally:
                self.lines, self.invariant = saved_lines, saved_test
            return v
        return self.render_here(e)

    def render_here(self, e: ir.Expr) -> Val:
        if isinstance(e, ir.Num):
            return number(e.value)
        if isinstance(e, ir.Imag):
            return number(complex(0.0, e.value))
        if isinstance(e, ir.Name):
            if e.id in CONSTANTS:
                return number(CONSTANTS[e.id])
            if self.c.kinds.get(e.id) in ("hparam", "dim"):
                return number(self.c.values[e.id])
            return self.resolve(e.id)
        if isinstance(e, ir.Unary):
            v = self.render(e.operand)
            if e.op == "+":
                return v
            if v.plain:
                return number(-v.value)
            return Val(f"(-{v.re})", v.dims, None if v.im is None else f"(-{v.im})")
        if isinstance(e, ir.Binary):
            return self.binary(e)
        if isinstance(e, ir.Index):
            return self.index(e)
        if isinstance(e, ir.Call):
            return self.call(e)
        raise Unsupported(f"cannot render {type(e).__name__} in a Triton kernel")

    def binary(self, e: ir.Binary) -> Val:
        a, b = self.render(e.left), self.render(e.right)
        if a.plain and b.plain and e.op in _FOLD:
            return number(_FOLD[e.op](a.value, b.value))
        if e.op == "@":
            return self.matmul(a, b)
        if b.plain and ((b.value == 1 and e.op in ("*", "/", "**")) or (b.value == 0 and e.op in ("+", "-"))):
            return a
        if a.plain and ((a.value == 1 and e.op == "*") or (a.value == 0 and e.op == "+")):
            return b
        dims = self.broadcast(a.dims, b.dims)
        if dims is None:
            raise Unsupported(f"operands of '{e.op}' with dims {a.dims} and {b.dims}")
        if e.op == "**":
            return self.power(a, b, dims)
        if not (a.complex or b.complex):
            return Val(f"({self.align(a.re, a.dims, dims)} {e.op} {self.align(b.re, b.dims, dims)})", dims)
        return self.complex_binary(e.op, a, b, dims)

    def power(self, a: Val, b: Val, dims: tuple) -> Val:
        if a.complex or b.complex:
            raise Unsupported("'**' of complex values")
        if b.plain:
            p = b.value
            if p == 0.5:
                return Val(f"tl.sqrt({a.re})", a.dims)
            if p == -0.5:
                return Val(f"tl.rsqrt({a.re})", a.dims)
            if float(p).is_integer() and 0 < abs(p) <= 4:
                base = self.bind(a.re)
                text = " * ".join([base] * int(abs(p)))
                return Val(f"({text})" if p > 0 else f"(1.0 / ({text}))", a.dims)
            if p == 0:
                return Val(f"({a.re} * 0.0 + 1.0)", a.dims)
        base = self.align(a.re, a.dims, dims) if not a.plain else f"tl.full([], {a.re}, {self.dtype})"
        return Val(f"tl.exp({self.align(b.re, b.dims, dims)} * tl.log({base}))", dims)

    def complex_binary(self, op: str, a: Val, b: Val, dims: tuple) -> Val:
        a, b = self.bound(a), self.bound(b)
        ar, ai = self.parts(a, dims)
        br, bi = self.parts(b, dims)
        if op in ("+", "-"):
            re_ = f"({ar} {op} {br})"
            if ai is None:
                im = bi if op == "+" else f"(-{bi})"
            elif bi is None:
                im = ai
            else:
                im = f"({ai} {op} {bi})"
        elif op == "*":
            if ai is None:
                re_, im = f"({ar} * {br})", f"({ar} * {bi})"
            elif bi is None:
                re_, im = f"({ar} * {br})", f"({ai} * {br})"
            else:
                re_, im = f"({ar} * {br} - {ai} * {bi})", f"({ar} * {bi} + {ai} * {br})"
        elif op == "/":
            if bi is None:
                re_, im = f"({ar} / {br})", f"({ai} / {br})"
            else:
                den = self.bind(f"({br} * {br} + {bi} * {bi})")
                if ai is None:
                    re_, im = f"({ar} * {br} / {den})", f"(-{ar} * {bi} / {den})"
                else:
                    re_, im = f"(({ar} * {br} + {ai} * {bi}) / {den})", f"(({ai} * {br} - {ar} * {bi}) / {den})"
        else:
            raise Unsupported(f"'{op}' of complex values")
        return Val(self.bind(re_, "c"), dims, self.bind(im, "c"))

    def contract(self, a: str, adims: tuple, b: str, bdims: tuple) -> str:
        """Text of ``a @ b`` for real blocks: contract a's last axis with b's first."""
        d = adims[-1]
        if self.blocks.across_tiles(d):
            raise Unsupported(f"a contraction over the tiled axis {d}")
        if len(adims) == 1 and len(bdims) == 1:
            prod, axis, frame = f"{a} * {b}", 0, (d,)
        elif len(adims) == 1:
            prod, axis, frame = f"{a}[:, None] * {b}", 0, (d, bdims[1])
        elif len(bdims) == 1:
            prod, axis, frame = f"{a} * {b}[None, :]", 1, (adims[0], d)
        else:   # matrix @ matrix: rank-1 updates, never a 3-d block (see triton_lib.mm)
            return f"_tlib.mm({a}, {b}, {self.blocks.offset(d)}, {self.blocks.size(d)})"
        if self.blocks.padded(d):
            where = [":" if i == axis else "None" for i in range(len(frame))]
            m = self.blocks.mask(d) + (f"[{', '.join(where)}]" if len(frame) > 1 else "")
            prod = f"tl.where({m}, {prod}, 0.0)"
        return f"tl.reduce({prod}, {axis}, _tlib.add)"

    def matmul(self, a: Val, b: Val) -> Val:
        dims = matmul_dims(a.dims, b.dims)
        if dims is None or a.plain or b.plain:
            raise Unsupported(f"'@' of dims {a.dims} and {b.dims}")
        if not (a.complex or b.complex):
            return Val(self.contract(a.re, a.dims, b.re, b.dims), dims)
        a, b = self.bound(a), self.bound(b)

        def c(x, y):
            return self.contract(x, a.dims, y, b.dims)

        if a.im is None:
            re_, im = c(a.re, b.re), c(a.re, b.im)
        elif b.im is None:
            re_, im = c(a.re, b.re), c(a.im, b.re)
        else:
            re_, im = f"({c(a.re, b.re)} - {c(a.im, b.im)})", f"({c(a.re, b.im)} + {c(a.im, b.re)})"
        return Val(self.bind(re_, "c"), dims, self.bind(im, "c"))

    def index(self, e: ir.Index) -> Val:
        return self.pick(self.render(e.target), e.index)

    def pick(self, v: Val, index: int) -> Val:
        """Element ``index`` of v's first axis."""
        if not v.dims:
            raise Unsupported("indexing a scalar")
        d = v.dims[0]
        if d == self.blocks.tiled:
            raise Unsupported(f"indexing the tiled axis {d}")
        sel = f"({self.blocks.offset(d)} == {index})" + index_at(0, len(v.dims))

        def select(text):
            return f"tl.reduce(tl.where({sel}, {text}, 0.0), 0, _tlib.add)"

        return Val(select(v.re), v.dims[1:], None if v.im is None else select(v.im))

    # ------------------------------------------------------------------ calls (the op table)
    def call(self, e: ir.Call) -> Val:
        op = OPS.get(e.func)
        if op is None or op.kind == "token":
            raise Unsupported(f"{e.func}() inside the cell")
        if op.kind == "inverse":
            a = self.render(e.args[0])
            if not op.triton:
                raise Unsupported(f"{e.func}() has no Triton form")
            if a.complex or len(a.dims) != 2 or a.dims[0] != a.dims[1]:
                raise Unsupported(f"{e.func}() of a complex or non-square value")
            d = a.dims[0]
            if d == self.blocks.tiled:
                raise Unsupported(f"{e.func}() over the tiled axis {d}")
            keys = {"o": self.blocks.offset(d), "m": self.blocks.mask(d), "n": self.blocks.size(d)}
            return Val(op.triton.format(a.re, **keys), a.dims)
        if op.kind == "eye":
            d = e.args[0].id
            if d == self.blocks.tiled:
                raise Unsupported(f"eye() over the tiled axis {d}")
            o = self.blocks.offset(d)
            return Val(f"({o}[:, None] == {o}[None, :]).to({self.dtype})", (d, d))
        args = [self.render(a) for a in e.args]
        opts = {k: float(v) if isinstance(v, (int, float)) else v for k, v in op.options.items()}
        for kw in e.kwargs:
            v = self.render(kw.value)
            opts[kw.name] = float(v.value) if v.plain and not v.complex else v.re
        if all(a.plain for a in args) and e.func in _FOLD_CALL:
            return number(_FOLD_CALL[e.func](args[0].value))
        if op.kind == "complex":
            if any(a.complex for a in args):
                raise Unsupported("complex() of complex values")
            if all(a.plain for a in args):
                return number(complex(args[0].value, args[1].value))
            dims = self.broadcast(args[0].dims, args[1].dims)
            re_t, im_t = op.triton_complex
            texts = [self.align(self.block_of(a), a.dims, dims) for a in args]
            return Val(self.bind(re_t.format(*texts), "c"), dims, self.bind(im_t.format(*texts), "c"))
        args = [Val(f"tl.full([], {a.re}, {self.dtype})", a.dims) if a.plain and not a.complex else a for a in args]
        if any(a.complex for a in args):
            return self.complex_call(e, op, args, opts)
        if not op.triton:
            raise Unsupported(f"{e.func}() has no Triton template")
        return self.apply(op, op.triton, args, opts)

    def block_of(self, v: Val) -> str:
        return f"tl.full([], {v.re}, {self.dtype})" if v.plain else v.re

    def apply(self, op, template: str, args: list[Val], opts: dict) -> Val:
        """Fill a real template with operands (aligned to their broadcast for elementwise kinds)."""
        kind = op.kind
        if kind in ("unary", "lastaxis", "norm", "reduce", "transpose"):
            a = args[0]
            if kind in ("lastaxis", "norm", "reduce"):
                opts = {**opts, **self.last_axis(a.dims)}
            if kind == "transpose" and len(a.dims) != 2:
                raise Unsupported("transpose of a non-matrix")
            text = a.re if template.count("{0}") < 2 else self.bind(a.re)
            dims = a.dims[:-1] if kind == "reduce" else a.dims[::-1] if kind == "transpose" else a.dims
            return Val(template.format(text, **{k: _opt(v) for k, v in opts.items()}), dims)
        if kind == "outer":
            a, b = args
            if len(a.dims) != 1 or len(b.dims) != 1:
                raise Unsupported("outer() of non-vectors")
            return Val(template.format(a.re, b.re), a.dims + b.dims)
        dims: tuple = ()
        for a in args:
            dims = self.broadcast(dims, a.dims)
        texts = []
        for i, a in enumerate(args):
            t = self.align(a.re, a.dims, dims)
            texts.append(t if template.count(f"{{{i}}}") < 2 else self.bind(t))
        return Val(template.format(*texts, **{k: _opt(v) for k, v in opts.items()}), dims)

    def complex_call(self, e: ir.Call, op, args: list[Val], opts: dict) -> Val:
        rule = op.triton_complex
        if not rule:
            raise Unsupported(f"{e.func}() of complex values has no Triton template")
        if rule == "product":          # outer(a, b) = a[:, None] * b[None, :] as complex numbers
            a, b = args
            if len(a.dims) != 1 or len(b.dims) != 1:
                raise Unsupported("outer() of non-vectors")
            dims = a.dims + b.dims
            return self.complex_binary("*", a, b, dims)
        a = self.bound(args[0])
        if rule == "parts":
            re_ = self.apply(op, op.triton, [Val(a.re, a.dims)], opts)
            im = self.apply(op, op.triton, [Val(a.im or "0.0", a.dims)], opts)
            return Val(self.bind(re_.re, "c"), re_.dims, self.bind(im.re, "c"))
        part = _Part(a.re, a.im if a.im is not None else f"({a.re} * 0.0)")
        if len(rule) == 1:
            return Val(rule[0].format(part), a.dims)
        return Val(self.bind(rule[0].format(part), "c"), a.dims, self.bind(rule[1].format(part), "c"))


def _opt(v) -> str:
    return literal(v) if isinstance(v, float) else str(v)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------- a block of tokens at once
TIME = "<time>"     # the leading dim of values rendered for a block of tokens (no spec dim can be named so)


def without_time(dims: tuple) -> tuple:
    return tuple(d for d in dims if d != TIME)


class TimeBlocks(Blocks):
    """Blocks of a kernel that steps through time BLOCK_T tokens at a time: TIME has offsets ``o_t`` (the
    block's tokens) and mask ``m_t`` (those inside the sequence)."""

    _NAMES = {"size": "SEQ_LEN", "block": "BLOCK_T", "offset": "o_t", "mask": "m_t"}

    def size(self, d) -> str:
        return self._NAMES["size"] if d == TIME else super().size(d)

    def block(self, d) -> str:
        return self._NAMES["block"] if d == TIME else super().block(d)

    def offset(self, d) -> str:
        return self._NAMES["offset"] if d == TIME else super().offset(d)

    def mask(self, d) -> str:
        return self._NAMES["mask"] if d == TIME else super().mask(d)

    def padded(self, d) -> bool:
        return True if d == TIME else super().padded(d)


class TimeBatchedRenderer(TritonRenderer):
    """Renders a cell's step for BLOCK_T tokens at once (the fused scan form): a value that changes from
    token to token carries the leading dim TIME (a stream [n] is a block [BLOCK_T, BLOCK_n]); params and
    what depends on them only do not, and broadcast over it. Contractions and reductions never run over TIME.
    What would need a block of three dims or more (a matrix times a per-token vector), indexing or
    transposing a per-token value, raises Unsupported: that cell keeps the unfused scan."""

    def broadcast(self, a: tuple, b: tuple) -> tuple | None:
        rest = broadcast(without_time(a), without_time(b))
        if rest is None:
            return None
        return ((TIME,) if TIME in a or TIME in b else ()) + rest

    def last_axis(self, dims: tuple) -> dict:
        if dims and dims[-1] == TIME:
            raise Unsupported("a last-axis function of a per-token scalar")
        return super().last_axis(dims)

    def pick(self, v: Val, index: int) -> Val:
        if TIME in v.dims:
            raise Unsupported("indexing a per-token value in a block of tokens")
        return super().pick(v, index)

    def apply(self, op, template: str, args: list[Val], opts: dict) -> Val:
        if op.kind in ("transpose", "outer") and any(TIME in a.dims for a in args):
            raise Unsupported(f"{op.kind} of a per-token value in a block of tokens")
        return super().apply(op, template, args, opts)

    def matmul(self, a: Val, b: Val) -> Val:
        if TIME not in a.dims and TIME not in b.dims:
            return super().matmul(a, b)
        ad, bd = without_time(a.dims), without_time(b.dims)
        if a.plain or b.plain or len(ad) != 1 or ad != bd:
            raise Unsupported(f"'@' of dims {ad} and {bd} for a block of tokens (only vector . vector)")
        d = ad[0]
        if self.blocks.across_tiles(d):
            raise Unsupported(f"a contraction over the tiled axis {d}")
        frame = (TIME, d)

        def dot(x: str, xd: tuple, y: str, yd: tuple) -> str:
            prod = f"{self.align(x, xd, frame)} * {self.align(y, yd, frame)}"
            if self.blocks.padded(d):
                prod = f"tl.where({self.blocks.mask(d)}[None, :], {prod}, 0.0)"
            return f"tl.reduce({prod}, 1, _tlib.add)"

        if not (a.complex or b.complex):
            return Val(dot(a.re, a.dims, b.re, b.dims), (TIME,))
        a, b = self.bound(a), self.bound(b)
        if a.im is None:
            re_, im = dot(a.re, a.dims, b.re, b.dims), dot(a.re, a.dims, b.im, b.dims)
        elif b.im is None:
            re_, im = dot(a.re, a.dims, b.re, b.dims), dot(a.im, a.dims, b.re, b.dims)
        else:
            re_ = f"({dot(a.re, a.dims, b.re, b.dims)} - {dot(a.im, a.dims, b.im, b.dims)})"
            im = f"({dot(a.re, a.dims, b.im, b.dims)} + {dot(a.im, a.dims, b.re, b.dims)})"
        return Val(self.bind(re_, "c"), (TIME,), self.bind(im, "c"))
