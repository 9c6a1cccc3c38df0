"""IR -> canonical .seq text. ``parse(print_model(m)) == m`` for every model the parser produces."""

from __future__ import annotations

from seqdsl import ir

# Binding strength of each grammar level (higher binds tighter).
_SUM, _PRODUCT, _UNARY, _POWER, _POSTFIX, _ATOM = range(1, 7)
_BINARY_PREC = {"+": _SUM, "-": _SUM, "*": _PRODUCT, "/": _PRODUCT, "@": _PRODUCT}


def _num(value: int | float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def expr(e: ir.Expr) -> str:
    """Canonical text of an expression, with the fewest parentheses the grammar needs."""
    return _expr(e)[0]


def _wrap(e: ir.Expr, need: int) -> str:
    text, prec = _expr(e)
    return f"({text})" if prec < need else text


def _expr(e: ir.Expr) -> tuple[str, int]:
    if isinstance(e, ir.Num):
        return (_num(e.value), _ATOM) if e.value >= 0 else (f"({_num(e.value)})", _ATOM)
    if isinstance(e, ir.Imag):
        return (f"{_num(e.value)}j", _ATOM) if e.value >= 0 else (f"(-{_num(-e.value)}j)", _ATOM)
    if isinstance(e, ir.Name):
        return e.id, _ATOM
    if isinstance(e, ir.Unary):
        return f"{e.op}{_wrap(e.operand, _UNARY)}", _UNARY
    if isinstance(e, ir.Binary):
        if e.op == "**":
            return f"{_wrap(e.left, _POSTFIX)} ** {_wrap(e.right, _UNARY)}", _POWER
        prec = _BINARY_PREC[e.op]
        return f"{_wrap(e.left, prec)} {e.op} {_wrap(e.right, prec + 1)}", prec
    if isinstance(e, ir.Call):
        parts = [expr(a) for a in e.args] + [f"{k.name}={expr(k.value)}" for k in e.kwargs]
        return f"{e.func}({', '.join(parts)})", _POSTFIX
    if isinstance(e, ir.Index):
        return f"{_wrap(e.target, _POSTFIX)}[{e.index}]", _POSTFIX
    if isinstance(e, ir.ListExpr):
        return "[" + ", ".join(expr(i) for i in e.items) + "]", _ATOM
    if isinstance(e, ir.Str):
        return f'"{e.value}"', _ATOM
    raise TypeError(f"cannot print {type(e).__name__}")


def type_shape(t: ir.TypeShape) -> str:
    return ("complex" if t.complex else "") + "[" + ", ".join(str(d) for d in t.dims) + "]"


def print_model(m: ir.Model | ir.Stack) -> str:
    """The model as canonical .seq text (sections in the order dims, params, streams, cell, out)."""
    if isinstance(m, ir.Stack):
        return print_stack(m)
    header = ", ".join(f"{h.name}{': ' + h.type if h.type else ''} = {expr(h.default)}" for h in m.hparams)
    lines = [f"model {m.name}({header}):"]
    if m.dims:
        lines.append("  dims:")
        lines += [f"    {d.name} = {expr(d.value)}" for d in m.dims]
    if m.params:
        lines.append("  params:")
        lines += [f"    {p.name}: {type_shape(p.type)} {'=' if p.fixed else '~'} {expr(p.init)}" for p in m.params]
    if m.streams:
        lines.append("  streams:")
        lines += [f"    {s.name}: {type_shape(s.type)} = {expr(s.value)}" for s in m.streams]
    if m.cell is not None:
        lines.append("  cell" + (f" over {m.cell.over}" if m.cell.over else "") + ":")
        for st in m.cell.body:
            if isinstance(st, ir.StateDecl):
                lines.append(f"    state {st.name}: {type_shape(st.type)} = {expr(st.init)}")
            elif isinstance(st, ir.CellArg):
                lines.append(f"    arg {st.name} = {expr(st.default)}")
            elif isinstance(st, ir.Update):
                lines.append(f"    {st.target} <- {expr(st.value)}")
            else:
                lines.append(f"    {st.name} = {expr(st.value)}")
    if m.outs:
        lines.append("  out:")
        lines += [f"    {o.name} = {expr(o.value)}" for o in m.outs]
    return "\n".join(lines) + "\n"


def print_stack(s: ir.Stack) -> str:
    """A stack as canonical .seq text."""
    header = ", ".join(f"{h.name}{': ' + h.type if h.type else ''} = {expr(h.default)}" for h in s.hparams)
    lines = [f"stack {s.name}({header}):"]
    if s.blocks:
        lines.append("  blocks:")
        lines += [f"    {b.name} = {expr(b.value)}" for b in s.blocks]
    lines.append(f"  layers = {expr(s.layers)}")
    if s.segments is not None:
        lines.append(f"  segments = {expr(s.segments)}")
    return "\n".join(lines) + "\n"
