"""What a generated form hands to its Triton form algorithms untouched, and takes back untouched (pure passes
over source text).

The op computes in fp32 and, by default, gives every form fp32 copies of bf16 / fp16 inputs. The Triton chunk
kernels convert what they load themselves, so an input that reaches them unchanged can stay in its own dtype:
no conversion pass and half the bytes read, the numbers being the same (bf16 -> fp32 is exact). An input that
takes part in a torch expression first (``dt * u``, ``-exp(A_log) * dt``) must not: torch would then compute in
bf16. ``passthrough_inputs`` reads the torch twin's form function and keeps the inputs of the first kind.
Likewise a form whose readout is the chunk call's output itself (``direct_readout``) can have the kernels store
it in the op's output dtype (bf16): the one rounding the op's cast would do after.
"""

from __future__ import annotations

import ast
from collections import Counter
from typing import Mapping

CHUNK_FORM_CALLS = frozenset({"chunk_gated", "chunk_delta"})   # seqdsl.runtime.triton_chunk, read as ``_forms.*``


def _form_function(source: str, form: str) -> ast.FunctionDef | None:
    tree = ast.parse(source)
    return next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == form), None)


def _is_form_call(node, calls: frozenset[str]) -> bool:
    f = getattr(node, "func", None)
    return isinstance(node, ast.Call) and isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
        and f.value.id == "_forms" and f.attr in calls


def passthrough_inputs(source: str, form: str, ranks: Mapping[str, int],
                       calls: frozenset[str] = CHUNK_FORM_CALLS) -> tuple[str, ...]:
    """The inputs that ``def <form>(...)`` of a generated torch module (its source) only hands, whole, to the form
    algorithms ``_forms.<call>`` (``calls``): every read of such an input is ``x.shape[...]``, or an argument of
    such a call, directly or through ``(x).expand(...)`` and single-assignment temporaries that are read only that
    way. ``ranks``: the candidates (streams) and their ranks as the form receives them; an ``expand`` must keep
    the rank, so that it broadcasts nothing (a broadcast input's gradient is a sum, which autograd would then take
    in bf16). Returns them in the order of ``ranks``; () if the function is absent."""
    fn = _form_function(source, form)
    if fn is None:
        return ()
    parent = {child: node for node in ast.walk(fn) for child in ast.iter_child_nodes(node)}
    names = [n for n in ast.walk(fn) if isinstance(n, ast.Name)]

    def loads(name: str) -> list[ast.Name]:
        return [n for n in names if n.id == name and isinstance(n.ctx, ast.Load)]

    def stores(name: str) -> int:
        return sum(1 for n in names if n.id == name and isinstance(n.ctx, ast.Store))

    def reaches_form_whole(node: ast.expr, rank: int, seen: frozenset[str] = frozenset()) -> bool:
        """Whether the value of ``node`` (an input of this rank, or a view of it) only ends up as a whole form
        argument."""
        up = parent.get(node)
        if _is_form_call(up, calls) and node in up.args:
            return True
        if isinstance(up, ast.keyword) and _is_form_call(parent.get(up), calls):
            return True
        call = parent.get(up)
        if isinstance(up, ast.Attribute) and up.attr == "expand" and isinstance(call, ast.Call) and call.func is up:
            return len(call.args) == rank and not call.keywords and reaches_form_whole(call, rank, seen)
        if isinstance(up, ast.Assign) and up.value is node and len(up.targets) == 1 \
                and isinstance(up.targets[0], ast.Name):
            temp = up.targets[0].id
            reads = loads(temp)
            return temp not in seen and stores(temp) == 1 and bool(reads) and all(
                reaches_form_whole(r, rank, seen | {temp}) for r in reads)
        return False

    def only_shape(node: ast.Name) -> bool:
        up = parent.get(node)
        return isinstance(up, ast.Attribute) and up.attr == "shape"

    return tuple(x for x, rank in ranks.items() if stores(x) == 0 and loads(x)
                 and all(only_shape(n) or reaches_form_whole(n, rank) for n in loads(x)))


def direct_readout(source: str, form: str, calls: frozenset[str] = CHUNK_FORM_CALLS) -> bool:
    """Whether ``def <form>(...)`` returns, as its only readout, the output of its only ``_forms.<call>`` call,
    untouched: ``R, S = _forms.chunk_gated(...)``, then ``o = R`` (or nothing), then ``return (o,), (...)``
    with R and o read nowhere else."""
    fn = _form_function(source, form)
    if fn is None:
        return False
    found = [n for n in ast.walk(fn) if _is_form_call(n, calls)]
    body = fn.body
    if len(found) != 1 or not body or not isinstance(body[-1], ast.Return):
        return False
    call_stmt = next((st for st in body if isinstance(st, ast.Assign) and st.value is found[0]), None)
    if call_stmt is None or len(call_stmt.targets) != 1 or not isinstance(call_stmt.targets[0], ast.Tuple):
        return False
    first = call_stmt.targets[0].elts[0]
    returned = body[-1].value
    if not (isinstance(first, ast.Name) and isinstance(returned, ast.Tuple) and returned.elts
            and isinstance(returned.elts[0], ast.Tuple) and len(returned.elts[0].elts) == 1
            and isinstance(returned.elts[0].elts[0], ast.Name)):
        return False
    read, out = first.id, returned.elts[0].elts[0].id
    names = [n for n in ast.walk(fn) if isinstance(n, ast.Name)]
    loads = Counter(n.id for n in names if isinstance(n.ctx, ast.Load))
    stores = Counter(n.id for n in names if isinstance(n.ctx, ast.Store))
    if read == out:
        return stores[read] == 1 and loads[read] == 1
    alias = [st for st in body if isinstance(st, ast.Assign) and len(st.targets) == 1
             and isinstance(st.targets[0], ast.Name) and st.targets[0].id == out]
    return (stores[read] == 1 and loads[read] == 1 and stores[out] == 1 and loads[out] == 1 and len(alias) == 1
            and isinstance(alias[0].value, ast.Name) and alias[0].value.id == read)
