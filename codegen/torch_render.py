"""Render IR expressions to torch source text, through the op table.

Generated values are tensors whose *leading* axes are the context's lead axes ([B, H] inside a step,
[B, T, H] when vectorised over time) and whose *trailing* axes are the value's named dims. Because
the lead axes are always written as ``...``, the same rendered text runs per step and vectorised.
Elementwise operands are aligned statically: the renderer knows every node's named dims and emits
``x[..., :, None]`` (or a permutation) so that torch's right-aligned broadcasting matches the
language's by-name broadcasting. Plain numbers (literals, hyper-parameters, cell args) stay Python
floats.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from seqdsl import ir
from seqdsl.codegen.ops import CONSTANTS, OPS
from seqdsl.typecheck import Checked, Ty, broadcast, matmul_dims


@dataclass(frozen=True)
class Code:
    """Rendered text of an expression, its named dims, whether it is complex, whether a plain number."""

    text: str
    dims: tuple
    complex: bool = False
    plain: bool = False


def align(code: Code, target: tuple) -> str:
    """Text of ``code`` with its trailing axes arranged as ``target`` (a superset of its dims)."""
    if code.plain or code.dims == target:
        return code.text
    src = list(code.dims)
    order = [d for d in target if d in src]
    text = code.text
    if order != src:
        perm = [src.index(d) for d in order]
        n = len(src)
        text = f"{text}.permute(*range({text}.dim() - {n}), *[{text}.dim() - {n} + i for i in {perm}])"
    index = ", ".join(":" if d in src else "None" for d in target)
    return f"{text}[..., {index}]"


_BINOPS = {"+": "+", "-": "-", "*": "*", "/": "/", "**": "**"}


class TorchRenderer:
    """Renders expressions of one context.

    resolve(name) -> Code for every name the context can read; ``subst`` maps id(node) to a variable
    that already holds that node's value (reads of a state computed by a parallel form).
    ``token(call, operand_codes)`` renders token-parallel operators (only streams / out have them).
    ``device_of`` names a tensor of the context whose device new constants take (``_state[0]`` in the cell
    functions, ``x`` in streams / out).
    """

    def __init__(self, checked: Checked, resolve: Callable[[str], Code], subst: dict[int, str] | None = None,
                 token: Callable | None = None, norm_weights: Callable | None = None, device_of: str = "_state[0]"):
        self.c = checked
        self.device_of = device_of
        self.resolve = resolve
        self.subst = subst or {}
        self.token = token
        self.norm_weights = norm_weights

    def ty(self, e: ir.Expr) -> Ty:
        t = self.c.expr_types.get(id(e))
        if t is not None:
            return t
        # synthetic nodes made by the planner: infer from the children
        if isinstance(e, ir.Num):
            return Ty()
        if isinstance(e, ir.Imag):
            return Ty((), True)
        if isinstance(e, ir.Name):
            r = self.resolve(e.id)
            return Ty(r.dims, r.complex)
        if isinstance(e, ir.Unary):
            return self.ty(e.operand)
        if isinstance(e, ir.Binary):
            a, b = self.ty(e.left), self.ty(e.right)
            dims = matmul_dims(a.dims, b.dims) if e.op == "@" else broadcast(a.dims, b.dims)
            return Ty(dims or (), a.complex or b.complex)
        if isinstance(e, ir.Call) and e.args:
            t = self.ty(e.args[0])
            op = OPS.get(e.func)
            return Ty(t.dims, t.complex and not (op and op.returns_real))
        return Ty()

    def __call__(self, e: ir.Expr) -> Code:
        return self.render(e)

    def render(self, e: ir.Expr) -> Code:
        if id(e) in self.subst:
            t = self.ty(e)
            return Code(self.subst[id(e)], t.dims, t.complex)
        if isinstance(e, ir.Num):
            return Code(repr(float(e.value)) if not isinstance(e.value, int) else f"{e.value}.0", (), plain=True)
        if isinstance(e, ir.Imag):
            return Code(f"{e.value!r}j", (), True, plain=True)
        if isinstance(e, ir.Name):
            if e.id in CONSTANTS:
                return Code(repr(CONSTANTS[e.id]), (), plain=True)
            if self.c.kinds.get(e.id) in ("hparam", "dim"):
                return Code(repr(float(self.c.values[e.id])), (), plain=True)
            return self.resolve(e.id)
        if isinstance(e, ir.Unary):
            v = self.render(e.operand)
            return Code(f"(-{v.text})" if e.op == "-" else v.text, v.dims, v.complex, v.plain)
        if isinstance(e, ir.Binary):
            return self.binary(e)
        if isinstance(e, ir.Index):
            v = self.render(e.target)
            rest = ", ".join([":"] * (len(v.dims) - 1))
            return Code(f"{v.text}[..., {e.index}{', ' + rest if rest else ''}]", v.dims[1:], v.complex)
        if isinstance(e, ir.Call):
            return self.call(e)
        raise NotImplementedError(f"cannot render {type(e).__name__}")

    def binary(self, e: ir.Binary) -> Code:
        a, b = self.render(e.left), self.render(e.right)
        cplx = a.complex or b.complex
        if e.op == "@":
            letters = "ij"[: len(a.dims)]
            rhs = letters[-1] + ("k" if len(b.dims) == 2 else "")
            out = letters[:-1] + rhs[1:]
            return Code(f"_ops.einsum('...{letters},...{rhs}->...{out}', {a.text}, {b.text})",
                        a.dims[:-1] + b.dims[1:], cplx)
        if a.plain and b.plain:
            return Code(f"({a.text} {_BINOPS[e.op]} {b.text})", (), cplx, plain=True)
        dims = broadcast(a.dims, b.dims)
        return Code(f"({align(a, dims)} {_BINOPS[e.op]} {align(b, dims)})", dims, cplx)

    def call(self, e: ir.Call) -> Code:
        op = OPS[e.func]
        if op.kind == "token":
            return self.token(e, self)
        if op.kind == "eye":
            n = self.c.dim_sizes[e.args[0].id]
            return Code(f"_ops.eye({n}, {self.device_of})", (e.args[0].id, e.args[0].id))
        if op.kind == "rename":
            a, old, new = self.render(e.args[0]), e.args[1].id, e.args[2].id
            return Code(a.text, tuple(new if d == old else d for d in a.dims), a.complex, a.plain)
        if op.kind == "inverse":
            a = self.render(e.args[0])
            return Code(op.torch.format(a.text), a.dims, a.complex)
        args = [self.render(a) for a in e.args]
        opts = {k: k for k in op.options}
        for kw in e.kwargs:
            opts[kw.name] = self.render(kw.value).text
        for k, default in op.options.items():
            if opts[k] == k:
                opts[k] = repr(default)
        if op.kind == "complex" and sum(a.plain for a in args) == 1:   # torch.complex needs equal dtypes
            tensor = next(a for a in args if not a.plain)
            args = [Code(f"torch.full_like({tensor.text}, {a.text})", tensor.dims) if a.plain else a for a in args]
        if any(a.plain for a in args):      # a function of plain numbers: make it a tensor first
            # fp64 / complex128 0-dim tensors: exact constants that do not promote the other operands
            args = [Code(f"torch.tensor({a.text}, dtype=torch.{'complex128' if a.complex else 'float64'})",
                         a.dims, a.complex) if a.plain else a for a in args]
        if op.kind in ("unary", "lastaxis", "norm", "reduce", "transpose"):
            a = args[0]
            text = op.torch.format(a.text, **opts)
            dims = a.dims[:-1] if op.kind == "reduce" else a.dims[::-1] if op.kind == "transpose" else a.dims
            if op.kind == "norm" and self.norm_weights is not None:
                text = self.norm_weights(e, text)
            return Code(text, dims, a.complex and not op.returns_real)
        if op.kind == "outer":
            a, b = args
            return Code(op.torch.format(a.text, b.text), a.dims + b.dims, a.complex or b.complex)
        dims: tuple = ()
        for a in args:
            dims = broadcast(dims, a.dims)
        texts = [align(a, dims) for a in args]
        return Code(op.torch.format(*texts, **opts), dims, op.kind == "complex" or any(a.complex for a in args))
