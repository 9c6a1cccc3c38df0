"""Analysis of the recurrence: linearise each state update in the state and classify the transition.

Each update ``S <- e`` is read as ``S_new = A(S) + B`` where B does not depend on any state.
``A`` is described by the *terms* through which the states enter e:

    id                 S itself
    scale(dims)        c * S, c without state; dims () = scalar, a subset of S's dims = diagonal
    lowrank            outer(a, w @ S) (or its mirror): a rank-1 correction, as in the delta rule
    dense              M @ S with a full matrix M
    read               a linear function of S that is not S-shaped (k @ S, sum(S)): fine in a
                       readout; inside an update it is a general linear map (dense)
Anything else (S * S, tanh(S), max(S, ...)) makes the cell nonlinear.

The updates of one step compose; the class of the step is the join of its updates' classes, and
the class of the cell is the join over its states (coupled states make it dense). The class
decides the computation forms (DESIGN §3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from seqdsl import ir
from seqdsl.codegen.ops import OPS
from seqdsl.typecheck import Checked, Dim, Ty, broadcast, matmul_dims

CLASSES = ("identity", "scalar", "diagonal", "lowrank", "dense", "nonlinear")
FORMS = ("recurrent", "scan", "chunk")
DEFAULT_CHUNK = 64

# Elementwise functions that are linear in their operand (over the reals).
_LINEAR_FUNCS = {"real", "imag", "conj", "sum", "mean", "transpose"}


@dataclass(frozen=True)
class Term:
    state: str
    kind: str                       # id | scale | lowrank | dense | read
    dims: tuple[Dim, ...] = ()      # for scale: the dims the coefficient varies along


@dataclass(frozen=True)
class Lin:
    """Abstract value of a cell expression: how it depends on the states."""

    ty: Ty
    terms: frozenset[Term] = frozenset()
    nonlinear: frozenset[str] = frozenset()   # states entering nonlinearly
    data_dependent: bool = False              # some coefficient of a state term depends on streams
    complex_coef: bool = False

    @property
    def const(self) -> bool:
        return not self.terms and not self.nonlinear


@dataclass(frozen=True)
class StateClass:
    """The transition of one state over one step."""

    state: str
    cls: str                        # one of CLASSES
    axes: tuple[Dim, ...] = ()      # diagonal: the axes the decay varies along
    rank: int = 0                   # lowrank: the number of rank-1 corrections per step
    base: str = ""                  # lowrank: identity | scalar | diagonal, the part besides the low rank
    data_dependent: bool = False
    complex: bool = False
    coupled_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class Analysis:
    """Everything ``seqdsl explain`` prints, as data."""

    cls: str
    states: tuple[StateClass, ...]
    forms: tuple[str, ...]
    not_forms: dict[str, str]               # form -> why not
    hoisted: tuple[str, ...]                # names computed token-parallel
    core: tuple[str, ...]                   # names inside the recurrence
    state_size_per_head: int                # real numbers per cell-axis element (complex counts 2)
    state_size_per_token: int               # per sequence and layer (all cell-axis elements)
    flops_per_token: dict[str, int] = field(default_factory=dict)
    description: str = ""

    @property
    def data_dependent(self) -> bool:
        return any(s.data_dependent for s in self.states)

    @property
    def complex(self) -> bool:
        return any(s.complex for s in self.states)


class _Linearizer:
    def __init__(self, c: Checked):
        self.c = c
        self.env: dict[str, Lin] = {}
        self.stream_dependent: set[str] = set(c.op_streams)

    def depends_on_streams(self, e: ir.Expr) -> bool:
        return any(n.id in self.stream_dependent for n in ir.names_in(e))

    def lin(self, e: ir.Expr) -> Lin:
        out = self._lin(e)
        recorded = self.c.expr_types.get(id(e))
        if recorded is not None and recorded != out.ty:
            out = Lin(recorded, out.terms, out.nonlinear, out.data_dependent, out.complex_coef)
        return out

    def _lin(self, e: ir.Expr) -> Lin:
        c = self.c
        if isinstance(e, (ir.Num, ir.Imag)):
            return Lin(Ty((), isinstance(e, ir.Imag)))
        if isinstance(e, ir.Name):
            if e.id in self.env:
                return self.env[e.id]
            t = c.cell_types.get(e.id)
            if t is None:
                t = c.types.get(e.id, Ty())
                axis = c.cell_axis
                if axis and t.dims[:1] == (axis,):
                    t = Ty(t.dims[1:], t.complex)
            return Lin(t)
        if isinstance(e, ir.Unary):
            inner = self.lin(e.operand)
            return self.scaled(inner, Ty(), False, False) if not inner.const else inner
        if isinstance(e, ir.Binary):
            return self.binary(e)
        if isinstance(e, ir.Index):
            inner = self.lin(e.target)
            return self.as_read(inner, Ty(inner.ty.dims[1:], inner.ty.complex))
        if isinstance(e, ir.Call):
            return self.call(e)
        return Lin(Ty())

    def scaled(self, lin: Lin, coef: Ty, dd: bool, cplx: bool) -> Lin:
        terms = set()
        for t in lin.terms:
            if t.kind in ("id", "scale"):
                dims = tuple(dict.fromkeys(t.dims + coef.dims))
                terms.add(Term(t.state, "scale", dims))
            else:
                terms.add(t)
        return Lin(Ty(broadcast(lin.ty.dims, coef.dims) or lin.ty.dims, lin.ty.complex or coef.complex),
                   frozenset(terms), lin.nonlinear, lin.data_dependent or dd, lin.complex_coef or cplx)

    def as_read(self, lin: Lin, ty: Ty) -> Lin:
        terms = frozenset(Term(t.state, "read") for t in lin.terms)
        return Lin(ty, terms, lin.nonlinear, lin.data_dependent, lin.complex_coef)

    def nonlin(self, ty: Ty, *parts: Lin) -> Lin:
        states = set()
        for p in parts:
            states |= {t.state for t in p.terms} | set(p.nonlinear)
        return Lin(ty, frozenset(), frozenset(states), any(p.data_dependent for p in parts))

    def binary(self, e: ir.Binary) -> Lin:
        a, b = self.lin(e.left), self.lin(e.right)
        if e.op in ("+", "-"):
            ty = Ty(broadcast(a.ty.dims, b.ty.dims) or a.ty.dims, a.ty.complex or b.ty.complex)
            return Lin(ty, a.terms | b.terms, a.nonlinear | b.nonlinear, a.data_dependent or b.data_dependent,
                       a.complex_coef or b.complex_coef)
        if e.op in ("*", "/"):
            if a.const and b.const:
                return Lin(Ty(broadcast(a.ty.dims, b.ty.dims) or (), a.ty.complex or b.ty.complex))
            if e.op == "/" and not b.const:
                return self.nonlin(a.ty, a, b)
            if not a.const and not b.const:
                return self.nonlin(Ty(broadcast(a.ty.dims, b.ty.dims) or a.ty.dims), a, b)
            lin, coef_expr, coef = (a, e.right, b) if not a.const else (b, e.left, a)
            if lin.nonlinear:
                return self.nonlin(lin.ty, lin)
            return self.scaled(lin, coef.ty, self.depends_on_streams(coef_expr), coef.ty.complex)
        if e.op == "**":
            if a.const and b.const:
                return Lin(a.ty)
            return self.nonlin(a.ty, a, b)
        # matmul
        dims = matmul_dims(a.ty.dims, b.ty.dims) or ()
        ty = Ty(dims, a.ty.complex or b.ty.complex)
        if a.const and b.const:
            return Lin(ty)
        if not a.const and not b.const:
            return self.nonlin(ty, a, b)
        lin, coef_expr, coef = (b, e.left, a) if a.const else (a, e.right, b)
        if lin.nonlinear:
            return self.nonlin(ty, lin)
        dd = lin.data_dependent or self.depends_on_streams(coef_expr)
        state_shaped = all(t.kind in ("id", "scale") for t in lin.terms)
        if state_shaped and dims == lin.ty.dims and len(coef.ty.dims) == 2:
            structured_lowrank = isinstance(coef_expr, ir.Call) and coef_expr.func == "outer"
            kind = "lowrank" if structured_lowrank else "dense"
            terms = frozenset(Term(t.state, kind) for t in lin.terms)
            return Lin(ty, terms, lin.nonlinear, dd, lin.complex_coef or coef.ty.complex)
        return Lin(ty, frozenset(Term(t.state, "read") for t in lin.terms), lin.nonlinear, dd,
                   lin.complex_coef or coef.ty.complex)

    def call(self, e: ir.Call) -> Lin:
        parts = [self.lin(a) for a in e.args]
        op = OPS.get(e.func)
        ty = self.c_type_of_call(e, parts)
        if all(p.const for p in parts):
            return Lin(ty)
        if e.func == "outer":
            a, b = parts
            if not a.const and not b.const:
                return self.nonlin(ty, a, b)
            lin, coef_expr = (b, e.args[0]) if a.const else (a, e.args[1])
            if lin.nonlinear:
                return self.nonlin(ty, lin)
            dd = lin.data_dependent or self.depends_on_streams(coef_expr)
            kind = "lowrank" if all(t.kind == "read" for t in lin.terms) else "read"
            return Lin(ty, frozenset(Term(t.state, kind) for t in lin.terms), frozenset(), dd, lin.complex_coef)
        if op is not None and e.func in _LINEAR_FUNCS and len(parts) == 1:
            return self.as_read(parts[0], ty)
        return self.nonlin(ty, *parts)

    def c_type_of_call(self, e: ir.Call, parts: list[Lin]) -> Ty:
        op = OPS.get(e.func)
        if not parts:
            return Ty()
        first = parts[0].ty
        if op is None:
            return first
        if op.kind == "reduce":
            return Ty(first.dims[:-1], first.complex)
        if op.kind == "outer" and len(parts) == 2:
            return Ty(first.dims + parts[1].ty.dims, first.complex or parts[1].ty.complex)
        if op.kind == "transpose":
            return Ty(first.dims[::-1], first.complex)
        if op.kind in ("binary", "ternary", "complex"):
            dims: tuple = ()
            for p in parts:
                dims = broadcast(dims, p.ty.dims) or dims
            return Ty(dims, op.kind == "complex")
        return Ty(first.dims, first.complex and not op.returns_real)


def _classify_update(state: str, state_ty: Ty, lin: Lin) -> StateClass:
    """Class of one update ``state <- value`` from the abstract value of its right-hand side."""
    if state in lin.nonlinear or lin.nonlinear:
        return StateClass(state, "nonlinear", data_dependent=True, coupled_to=tuple(sorted(lin.nonlinear - {state})))
    own = [t for t in lin.terms if t.state == state]
    others = tuple(sorted({t.state for t in lin.terms if t.state != state}))
    kinds = {t.kind for t in own}
    scale_dims: tuple[Dim, ...] = ()
    for t in own:
        if t.kind == "scale":
            scale_dims = tuple(dict.fromkeys(scale_dims + t.dims))
    common = dict(data_dependent=lin.data_dependent, complex=lin.complex_coef, coupled_to=others)
    if others or "dense" in kinds or "read" in kinds:
        return StateClass(state, "dense", **common)
    if not own:
        # S <- B: the transition is zero, a (fixed) scalar gate of 0
        return StateClass(state, "scalar", **common)
    if "lowrank" in kinds:
        base = "diagonal" if scale_dims else "scalar" if "scale" in kinds else "identity"
        return StateClass(state, "lowrank", axes=scale_dims, rank=1, base=base, **common)
    if kinds == {"id"}:
        return StateClass(state, "identity", **common)
    if not scale_dims:
        return StateClass(state, "scalar", **common)
    return StateClass(state, "diagonal", axes=scale_dims, **common)


def _join(a: StateClass, b: StateClass) -> StateClass:
    """Class of the composition of two successive updates of the same state."""
    order = {c: i for i, c in enumerate(CLASSES)}
    cls = max(a.cls, b.cls, key=order.__getitem__)
    axes = tuple(dict.fromkeys(a.axes + b.axes))
    if cls in ("scalar", "identity") and axes:
        cls = "diagonal"
    if cls == "identity" and "scalar" in (a.cls, b.cls):
        cls = "scalar"
    bases = [s.base or s.cls for s in (a, b) if (s.base or s.cls) in ("identity", "scalar", "diagonal")]
    base = max(bases, key=order.__getitem__) if cls == "lowrank" and bases else ""
    if base and axes:
        base = "diagonal"
    return StateClass(a.state, cls, axes=axes, rank=a.rank + b.rank, base=base, data_dependent=a.data_dependent or b.data_dependent,
                      complex=a.complex or b.complex, coupled_to=tuple(sorted(set(a.coupled_to) | set(b.coupled_to))))


def _forms(cls: str, states: tuple[StateClass, ...]) -> tuple[tuple[str, ...], dict[str, str]]:
    why: dict[str, str] = {}
    diag_axes = {ax for s in states for ax in s.axes}
    if cls == "nonlinear":
        why["scan"] = "the update is nonlinear in the state, so steps do not compose associatively"
        why["chunk"] = "the update is nonlinear in the state; only a sequential recurrence computes it"
    elif cls == "dense":
        why["chunk"] = ("a dense transition has no chunkwise matmul form (the chunk's transition product is a "
                        "dense matrix per token pair)")
    elif cls == "lowrank":
        why["scan"] = ("composing identity-plus-low-rank transitions gives dense d_k x d_k matrices; the "
                       "chunkwise WY/UT form is the parallel one")
    elif cls == "diagonal" and any(len(s.axes) > 1 for s in states):
        why["chunk"] = (f"the decay varies along several axes ({', '.join(map(str, sorted(diag_axes, key=str)))}); "
                        "the chunkwise form needs it along one axis of the state")
    forms = tuple(f for f in FORMS if f not in why)
    return forms, why


def _expr_flops(e: ir.Expr, lz: _Linearizer, sizes: dict) -> int:
    """FLOPs of one evaluation of a cell expression (elementwise ops count 1 per element)."""
    total = 0
    for node in ir.walk(e):
        if isinstance(node, (ir.Num, ir.Imag, ir.Name, ir.ListExpr)):
            continue
        ty = lz.lin(node).ty
        n = math.prod(sizes[d] for d in ty.dims)
        if isinstance(node, ir.Binary) and node.op == "@":
            contracted = lz.lin(node.left).ty.dims[-1:] or (1,)
            n *= 2 * math.prod(sizes.get(d, 1) for d in contracted)
        elif isinstance(node, ir.Call) and node.func in OPS and OPS[node.func].kind in ("lastaxis", "norm", "reduce"):
            n *= 3
        total += n * (4 if ty.complex else 1)
    return total


def analyse(c: Checked, chunk_size: int = DEFAULT_CHUNK) -> Analysis:
    """Classify the cell of a checked model and derive its forms, sizes and costs."""
    from seqdsl.graph import build_graph

    m = c.model
    g = build_graph(c)
    hoisted = tuple(d["name"] for n, d in g.nodes(data=True) if d["hoisted"] and d["kind"] in ("stream", "local", "param"))
    core = tuple(dict.fromkeys(d["name"] for n, d in g.nodes(data=True)
                               if not d["hoisted"] and d["kind"] in ("state", "update", "local")))
    if m.cell is None:
        return Analysis("none", (), (), {"recurrent": "the model has no cell"}, hoisted, core, 0, 0, {},
                        "no recurrence")
    lz = _Linearizer(c)
    per_state: dict[str, StateClass] = {}
    for st in m.cell.body:
        if isinstance(st, ir.StateDecl):
            ty = c.cell_types[st.name]
            lz.env[st.name] = Lin(ty, frozenset({Term(st.name, "id")}))
        elif isinstance(st, ir.Local):
            lz.env[st.name] = lz.lin(st.value)
            if lz.depends_on_streams(st.value):       # a local computed from streams varies per token
                lz.stream_dependent.add(st.name)
        elif isinstance(st, ir.Update):
            ty = c.cell_types[st.target]
            sc = _classify_update(st.target, ty, lz.lin(st.value))
            per_state[st.target] = sc if st.target not in per_state else _join(per_state[st.target], sc)
            lz.env[st.target] = Lin(ty, frozenset({Term(st.target, "id")}))
    states = tuple(per_state[s.name] for s in m.cell.states)
    order = {k: i for i, k in enumerate(CLASSES)}
    cls = max((s.cls for s in states), key=order.__getitem__)
    if cls != "nonlinear" and any(s.coupled_to for s in states):
        cls = "dense"
    forms, why = _forms(cls, states)
    sizes = dict(c.dim_sizes)
    axis_size = c.dim_sizes[c.cell_axis] if c.cell_axis else 1
    per_head = sum(c.size(c.cell_types[s.name].dims) * (2 if c.cell_types[s.name].complex else 1)
                   for s in m.cell.states)
    flops = _flops(c, lz, states, cls, forms, sizes, axis_size, chunk_size)
    return Analysis(cls, states, forms, why, hoisted, core, per_head, per_head * axis_size, flops,
                    describe(cls, states))


def _flops(c: Checked, lz: _Linearizer, states, cls, forms, sizes, axis_size, chunk) -> dict[str, int]:
    """Per-token FLOP estimates of each available form (whole layer width: all cell-axis elements)."""
    m = c.model
    step = sum(_expr_flops(st.value, lz, sizes) for st in m.cell.body if isinstance(st, (ir.Update, ir.Local)))
    out = {"recurrent": step * axis_size}
    # the biggest state sets the matmul sizes of the parallel forms
    big = max(m.cell.states, key=lambda s: c.size(c.cell_types[s.name].dims))
    dims = c.cell_types[big.name].dims
    k = sizes[dims[0]] if dims else 1
    v = math.prod(sizes[d] for d in dims[1:]) if len(dims) > 1 else 1
    cplx = 4 if any(s.complex for s in states) else 1
    if "scan" in forms:
        if cls == "dense":
            combine = 2 * k ** 3 + 2 * k * k * v
        else:
            combine = 3 * k * v
        out["scan"] = (2 * combine * cplx + (step - 2 * k * v if step > 2 * k * v else 0)) * axis_size
    if "chunk" in forms:
        per = chunk * (k + v) + 4 * k * v                          # intra-chunk attention + state read/write
        if cls == "lowrank":
            rank = max(s.rank for s in states)
            per += rank * (chunk * k + chunk * chunk // 3 + 2 * chunk * (k + v) + 2 * k * v)   # WY/UT stage
        out["chunk"] = per * cplx * axis_size
    return out


def describe(cls: str, states: tuple[StateClass, ...]) -> str:
    """One line per state: ``S: diagonal on dk, data-dependent, real``."""
    parts = []
    for s in states:
        what = s.cls
        if s.cls == "diagonal":
            what += " on " + ", ".join(map(str, s.axes))
        if s.cls == "lowrank":
            what = f"{s.base} plus rank-{s.rank} (delta rule / DPLR)"
            if s.axes:
                what += f", decay on {', '.join(map(str, s.axes))}"
        if s.cls != "identity":
            what += ", data-dependent" if s.data_dependent else ", fixed"
        what += ", complex" if s.complex else ", real"
        if s.coupled_to:
            what += f", coupled to {', '.join(s.coupled_to)}"
        parts.append(f"{s.state}: {what}")
    return "; ".join(parts)
