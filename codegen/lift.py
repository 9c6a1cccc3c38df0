"""Lift the loop-invariant subexpressions of a cell's step into locals of their own (a pure IR pass).

The forward kernels hoist a loop-invariant subexpression (one that reads params, args and constants only) out of
the time loop as they render it. The recurrent backward kernel cannot do that inside its step: it differentiates
the step node by node, so an invariant subexpression written inline, such as LSSL's ``back @ (eye(n) + dt / 2 * A)``
in ``h <- back @ (eye(n) + dt / 2 * A) @ h + ...``, was recomputed at every step of its three walks, and its adjoint
pushed back through it at every step too: three n x n matrix products per step for LSSL (n = 32), where the
forward does one matrix-vector product.

An invariant *local* has none of that cost: the backward evaluates it once before the loop on a tape of its own,
sums its adjoint over the whole sequence, and pushes that sum back to the params once after the loop (the adjoint
is linear in what arrives, so the sum may be taken first). This pass makes every maximal invariant subexpression
of the step such a local: ``_lift0 = back @ (eye(n) + dt / 2 * A)`` before the statement that reads it, and the
statement reads ``_lift0``. Structurally equal subexpressions share one local.

What is lifted: a call, an operator or an index that reads at least one param, arg or invariant local and nothing
that changes from step to step (streams, states, the step's other locals). Constant subexpressions (``eye(n)``,
``2.0 * pi``) stay inline: the renderer folds them, and they have no adjoint to sum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from seqdsl import ir

LIFTED_PREFIX = "_lift"      # spec names cannot start with "_" (typecheck), so the lifted locals' names never clash

# The node kinds a lifted subexpression may be (a name or a number is already as cheap as a local).
_LIFTABLE = (ir.Binary, ir.Call, ir.Index, ir.Unary)


def with_children(e: ir.Expr, kids: Sequence[ir.Expr]) -> ir.Expr:
    """e with its direct subexpressions (``ir.children`` order) replaced by ``kids``; e itself where none changed."""
    old = ir.children(e)
    if all(a is b for a, b in zip(old, kids)):
        return e
    if isinstance(e, ir.Unary):
        return e.model_copy(update={"operand": kids[0]})
    if isinstance(e, ir.Binary):
        return e.model_copy(update={"left": kids[0], "right": kids[1]})
    if isinstance(e, ir.Index):
        return e.model_copy(update={"target": kids[0]})
    if isinstance(e, ir.ListExpr):
        return e.model_copy(update={"items": tuple(kids)})
    if isinstance(e, ir.Call):
        n = len(e.args)
        kwargs = tuple(k.model_copy(update={"value": v}) for k, v in zip(e.kwargs, kids[n:]))
        return e.model_copy(update={"args": tuple(kids[:n]), "kwargs": kwargs})
    raise TypeError(f"no children to replace in {type(e).__name__}")


def lift_invariant_subexpressions(
    body: Sequence[ir.Node],
    invariant_locals: Sequence[str],
    liftable: Callable[[ir.Expr], bool],
) -> tuple[tuple[ir.Node, ...], dict[str, ir.Expr], dict[int, ir.Expr]]:
    """(new body, {lifted local: its expression}, {id(new node): the node it replaces}).

    body: a cell's statements; invariant_locals: its locals that are already invariant (left as they are);
    liftable(e): whether e, a subexpression of a step statement, is loop-invariant and worth a local of its own.
    Each step statement (a local outside ``invariant_locals``, or an update) gets its maximal liftable
    subexpressions replaced by names of new locals, inserted right before it (the first statement that reads
    one). The lifted expressions are the original nodes, so whatever is keyed by their ids still holds; the
    third result maps each rebuilt ancestor to the node it stands for, for the same purpose."""
    lifted: dict[ir.Expr, str] = {}
    rebuilt: dict[int, ir.Expr] = {}
    out: list[ir.Node] = []

    def rewrite(e: ir.Expr, new_locals: list[ir.Local]) -> ir.Expr:
        if isinstance(e, _LIFTABLE) and liftable(e):
            name = lifted.get(e)
            if name is None:
                name = lifted[e] = f"{LIFTED_PREFIX}{len(lifted)}"
                new_locals.append(ir.Local(name=name, value=e, span=e.span))
            return ir.Name(id=name, span=e.span)
        new = with_children(e, [rewrite(k, new_locals) for k in ir.children(e)])
        if new is not e:
            rebuilt[id(new)] = e
        return new

    for st in body:
        step = isinstance(st, ir.Update) or (isinstance(st, ir.Local) and st.name not in invariant_locals)
        if not step:
            out.append(st)
            continue
        new_locals: list[ir.Local] = []
        value = rewrite(st.value, new_locals)
        out.extend(new_locals)
        out.append(st if value is st.value else st.model_copy(update={"value": value}))
    return tuple(out), {name: e for e, name in lifted.items()}, rebuilt
