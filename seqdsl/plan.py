"""Plan: lower the cell of a linear class to the canonical forms the parallel algorithms implement.

For each state S the updates of one step are matched against

    gated   S_t = a_t ⊙ S_{t-1} + k_t v_t^T          (identity / scalar / diagonal classes)
    delta   S_t = (I - beta_t k_t k_t^T) a_t S_{t-1} + beta_t k_t v_t^T     (low rank; a scalar or 1)
    dplr    S_t = (diag(a_t) + b_t c_t^T) S_{t-1} + k_t v_t^T             (diagonal plus rank 1; a along the key)
    dense   h_t = M_t h_{t-1} + b_t                   (vector state, dense transition)

where a_t is a product of factors (scalar, along the first axis "key" or the second "value"), k_t
and v_t are state-free expressions (a vector state h: [n] is the matrix case with V = 1: k_t = b_t).
Each readout reads states through ``q @ S`` (a vector over S's first axis) or, for a vector
state, ``h`` itself. Everything else in the cell is token-parallel and computed for all steps at
once. When a cell does not match, the plan says why and the parallel forms are not offered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from seqdsl import ir
from seqdsl.analysis import Analysis
from seqdsl.typecheck import Checked, Ty


class NoPlan(Exception):
    """The cell is linear but not in a form the parallel algorithms take; the message says why."""


@dataclass(frozen=True)
class Factor:
    """One multiplicative factor of a decay: ``expr`` (``divide``: 1 / expr)."""

    expr: ir.Expr
    divide: bool = False

    @property
    def value(self) -> ir.Expr:
        """The factor as one expression: expr, or 1 / expr."""
        return ir.Binary(op="/", left=ir.Num(value=1), right=self.expr) if self.divide else self.expr


@dataclass(frozen=True)
class StatePlan:
    state: str
    kind: str                                 # gated | delta | dplr | dense
    vector: bool                              # the state is a vector [n] (V = 1)
    gate_axis: str                            # none | scalar | key | value | both
    factors: tuple[Factor, ...] = ()          # the decay a_t = prod(factors)
    k: ir.Expr | None = None                  # write key (gated, delta) or b_t (vector state)
    v: ir.Expr | None = None                  # write value (None for a vector state)
    beta: ir.Expr | None = None               # delta rule strength
    dense: ir.Expr | None = None              # dense: the matrix M_t
    more: tuple[tuple[ir.Expr, ir.Expr, ir.Expr], ...] = ()   # delta: further (k, v, beta) updates in the step
    read: ir.Expr | None = None               # dplr: c_t, the vector the rank-1 correction reads S_{t-1} with
    correct: ir.Expr | None = None            # dplr: b_t, the vector the correction writes along the key axis


@dataclass(frozen=True)
class Correction:
    """One rank-1 correction term of an update, ``sign * prod(strength) * outer(key, value + read_sign * read @ (R *
    S))`` (value may be None); R = read_decay, the factors on the state where it is read."""

    update: ir.Update
    key: ir.Expr
    value: ir.Expr | None
    read: ir.Expr
    read_sign: int
    read_decay: tuple[Factor, ...]
    strength: tuple[Factor, ...]
    sign: int
    prior_decay: tuple[Factor, ...]           # the decays of earlier updates of the step (the state it sees)


@dataclass(frozen=True)
class Read:
    """A linear read of a state in a readout: ``q @ S`` (q: [K]) or the whole vector state."""

    node: int                                 # id() of the IR node replaced by the read's result
    state: str
    q: ir.Expr | None                         # None: the whole (vector) state
    before: bool = False                      # reads S_{t-1} (the readout precedes the update: RWKV's bonus)


@dataclass(frozen=True)
class ConvPlan:
    """A time-invariant state as a convolution: h_t = a ⊙ h_{t-1} + c u_t^T with a, c fixed.

    ``coefficient`` is c (a [K] vector, no time dependence) and ``value`` is u (a scalar per token
    for a vector state, the write value for a matrix state).
    """

    state: str
    coefficient: ir.Expr
    value: ir.Expr


@dataclass(frozen=True)
class KernelPlan:
    """Which forms the generated op offers and how each state maps onto the form algorithms."""

    modes: tuple[str, ...]
    why_not: dict[str, str]
    states: tuple[StatePlan, ...] = ()
    reads: tuple[Read, ...] = ()
    hoisted_locals: tuple[str, ...] = ()      # state-free cell locals (vectorised in parallel forms)
    readout_locals: tuple[str, ...] = ()      # state-dependent locals, in order
    extra: dict = field(default_factory=dict)
    conv: tuple[ConvPlan, ...] = ()           # the conv form's split of each state (when "conv" is a mode)


def _mentions(e: ir.Expr, names: set[str]) -> bool:
    return any(n.id in names for n in ir.names_in(e))


def _sum_terms(e: ir.Expr, sign: int = 1) -> list[tuple[int, ir.Expr]]:
    """Flatten a sum: a - (b + c) -> [(+1, a), (-1, b), (-1, c)]."""
    if isinstance(e, ir.Binary) and e.op in ("+", "-"):
        return _sum_terms(e.left, sign) + _sum_terms(e.right, sign if e.op == "+" else -sign)
    if isinstance(e, ir.Unary):
        return _sum_terms(e.operand, sign if e.op == "+" else -sign)
    return [(sign, e)]


def _neg(e: ir.Expr) -> ir.Expr:
    return ir.Unary(op="-", operand=e, span=e.span)


def _mul(a: ir.Expr | None, b: ir.Expr) -> ir.Expr:
    return b if a is None else ir.Binary(op="*", left=a, right=b, span=b.span)


def _add(a: ir.Expr | None, b: ir.Expr) -> ir.Expr:
    return b if a is None else ir.Binary(op="+", left=a, right=b, span=b.span)


class _Planner:
    def __init__(self, c: Checked, a: Analysis):
        self.c = c
        self.a = a
        cell = c.model.cell
        self.states = {s.name for s in cell.states}
        self.defs = {st.name: st.value for st in cell.body if isinstance(st, ir.Local)}
        # locals that depend (transitively) on a state
        self.state_locals: set[str] = set()
        for st in cell.body:
            if isinstance(st, ir.Local) and _mentions(st.value, self.states | self.state_locals):
                self.state_locals.add(st.name)

    def ty(self, e: ir.Expr) -> Ty:
        return self.c.expr_types.get(id(e), Ty())

    # ------------------------------------------------------------------ updates
    def factor_out(self, term: ir.Expr, state: str) -> tuple[list[Factor], ir.Expr]:
        """term = prod(factors) * core, where core is S, outer(..S..) or M @ S."""
        factors: list[Factor] = []
        e = term
        while True:
            if isinstance(e, ir.Binary) and e.op == "*":
                left_s, right_s = (_mentions(x, {state}) for x in (e.left, e.right))
                if left_s and right_s:
                    raise NoPlan(f"'{state}' is multiplied by itself")
                factors.append(Factor(e.right if left_s else e.left))
                e = e.left if left_s else e.right
            elif isinstance(e, ir.Binary) and e.op == "/" and not _mentions(e.right, {state}):
                factors.append(Factor(e.right, divide=True))
                e = e.left
            else:
                return factors, e

    def plan_state(self, st: ir.StateDecl) -> StatePlan:
        c, name = self.c, st.name
        sty = c.cell_types[name]
        if len(sty.dims) not in (1, 2):
            raise NoPlan(f"the state '{name}' has {len(sty.dims)} axes; parallel forms take vectors and matrices")
        vector = len(sty.dims) == 1
        decay: list[Factor] = []
        write: tuple[ir.Expr, ir.Expr | None] | None = None
        corrections: list[Correction] = []   # rank-1 corrections (several: DeltaProduct's Householder products)
        update_decays: dict[int, list[Factor]] = {}
        dense = None
        updates = [u for u in c.model.cell.body if isinstance(u, ir.Update) and u.target == name]
        for u in updates:
            if _mentions(u.value, self.state_locals):
                raise NoPlan(f"the update of '{name}' reads a cell value that depends on a state")
            others = {n.id for n in ir.names_in(u.value)} & (self.states - {name})
            if others:
                raise NoPlan(f"the update of '{name}' reads the state(s) {sorted(others)}")
            has_state = False
            inputs: list[tuple[int, ir.Expr]] = []
            prior = tuple(decay)
            update_decay: list[Factor] = []          # this update's factors of the state term
            for sign, term in _sum_terms(u.value):
                if not _mentions(term, {name}):
                    inputs.append((sign, term))
                    continue
                factors, core = self.factor_out(term, name)
                if isinstance(core, ir.Name) and core.id == name:
                    if has_state:
                        raise NoPlan(f"'{name}' appears twice in one update")
                    has_state = True
                    if sign < 0:
                        factors.append(Factor(ir.Num(value=-1)))
                    if factors and (write is not None or corrections):
                        raise NoPlan(f"'{name}' is decayed after it is written in the same step")
                    decay += factors
                    update_decay += factors
                elif isinstance(core, ir.Call) and core.func == "outer":
                    if write is not None or any(cr.update is u for cr in corrections):
                        raise NoPlan(f"'{name}' has more than one write in one update")
                    corrections.append(self.match_correction(name, u, sign, factors, core, prior))
                elif isinstance(core, ir.Binary) and core.op == "@" and isinstance(core.right, ir.Name) \
                        and core.right.id == name and vector:
                    if factors or sign < 0 or dense is not None:
                        raise NoPlan(f"the dense transition of '{name}' must be written M @ {name}")
                    dense = core.left
                    has_state = True
                else:
                    raise NoPlan(f"'{name}' enters its update in a form the parallel algorithms do not take")
            update_decays[id(u)] = update_decay
            if not has_state and not corrections:
                raise NoPlan(f"the update of '{name}' drops the previous state")
            if inputs:
                if write is not None or any(cr.value is not None for cr in corrections):
                    raise NoPlan(f"'{name}' has more than one write per step")
                write = self.match_write(name, vector, inputs)
        if dense is not None:
            if decay or corrections:
                raise NoPlan(f"'{name}' mixes a dense transition with other terms")
            b = write[0] if write else None
            return StatePlan(name, "dense", vector, "none", k=b, dense=dense)
        axis = self.gate_axis(name, sty, decay)
        if corrections:
            delta = [self.as_delta(name, cr, update_decays[id(cr.update)], axis) for cr in corrections]
            if all(d is not None for d in delta):
                (k, v, beta), more = delta[0], delta[1:]
                return StatePlan(name, "delta", vector, axis, tuple(decay), k=k, v=v, beta=beta, more=tuple(more))
            return self.dplr_plan(name, axis, tuple(decay), corrections, update_decays, write)
        if write is None:
            raise NoPlan(f"'{name}' is never written")
        return StatePlan(name, "gated", vector, axis, tuple(decay), k=write[0], v=write[1])

    def gate_axis(self, name: str, sty: Ty, decay: list[Factor]) -> str:
        axes: set[str] = set()
        for f in decay:
            for d in self.ty(f.expr).dims:
                if d not in sty.dims:
                    raise NoPlan(f"a decay of '{name}' varies along '{d}', which is not an axis of the state")
                axes.add("key" if d == sty.dims[0] else "value")
        if not decay:
            return "none"
        if not axes:
            return "scalar"
        return "both" if len(axes) == 2 else axes.pop()

    def match_write(self, name: str, vector: bool, inputs: list[tuple[int, ir.Expr]]):
        if vector:
            b = None
            for sign, term in inputs:
                b = _add(b, term if sign > 0 else _neg(term))
            return b, None
        if len(inputs) != 1:
            raise NoPlan(f"'{name}' gets {len(inputs)} writes per step; the parallel forms take one outer(k, v)")
        sign, term = inputs[0]
        factors, core = self.factor_out(term, "\0")
        if not (isinstance(core, ir.Call) and core.func == "outer"):
            raise NoPlan(f"the write into '{name}' must be outer(k, v) (times gates)")
        k, v = core.args
        sty = self.c.cell_types[name]
        for f in factors:
            dims = self.ty(f.expr).dims
            fe = f.value
            if set(dims) <= {sty.dims[1]} and dims:
                v = _mul(fe, v)
            elif set(dims) <= {sty.dims[0]}:
                k = _mul(fe, k)
            else:
                raise NoPlan(f"a gate on the write into '{name}' spans both axes")
        if sign < 0:
            k = _neg(k)
        return k, v

    @staticmethod
    def reads_decayed(read_decay: tuple[Factor, ...], update_decay: list[Factor]) -> bool | None:
        """Where a correction reads the state relative to its update's decay: False, before it (``outer(b, a @ S)``
        beside ``D * S``); True, after it (``k @ (D * S)``); None, under other factors (another transition)."""
        if not read_decay:
            return False
        rest = list(read_decay)
        for f in update_decay:
            if f not in rest:
                return None
            rest.remove(f)
        return True if not rest else None

    def as_delta(self, name: str, cr: Correction, update_decay: list[Factor], axis: str):
        """The delta rule ``beta * outer(k, v - k @ S)`` as (k, v, beta), or None where the correction is a more
        general rank-1 term (read and write vectors that differ, no target value, a strength along the key axis) or
        reads the state before its update's decay (``D * S + beta * outer(k, v - k @ S)``, i.e. (D - beta k k^T) S,
        the state corrected before its decay) or the decay runs along the key axis: the DPLR form takes those. The
        delta chunk form applies a step's decay first and corrects the decayed state (``S <- D * S`` then ``S <- S +
        beta * outer(k, v - k @ S)``, or ``k @ (D * S)`` in one update)."""
        if axis not in ("none", "scalar") or cr.value is None or cr.read_sign > 0 or cr.read != cr.key:
            return None
        if any(self.ty(f.expr).dims for f in cr.strength):
            return None
        if self.reads_decayed(cr.read_decay, update_decay) is not bool(update_decay):   # decayed first, if at all
            return None
        beta = None
        for f in cr.strength:
            beta = _mul(beta, f.value)
        if cr.sign < 0:
            beta = _neg(beta if beta is not None else ir.Num(value=1))
        return cr.key, cr.value, beta if beta is not None else ir.Num(value=1)

    def dplr_plan(self, name: str, axis: str, decay: tuple[Factor, ...], corrections: list[Correction],
                  update_decays: dict[int, list[Factor]], write) -> StatePlan:
        """A state decayed along its key axis (or by a scalar) with one general rank-1 correction,
        ``S_t = diag(a_t) S_{t-1} + b_t (c_t^T S_{t-1}) + k_t v_t^T`` (RWKV-7, the key-gated delta rule)."""
        sty = self.c.cell_types[name]
        if len(sty.dims) != 2:
            raise NoPlan(f"the rank-1 correction of '{name}' needs a matrix state")
        if len(corrections) > 1:
            raise NoPlan(f"'{name}' has {len(corrections)} rank-1 corrections per step; the chunk form of a decay "
                         "along the key axis (diagonal plus low rank) takes one")
        if sty.complex:
            raise NoPlan(f"'{name}' is complex; the diagonal-plus-low-rank chunk form is real")
        if axis not in ("none", "scalar", "key"):
            raise NoPlan(f"'{name}' decays along its {axis} axis; the diagonal-plus-low-rank chunk form takes decays "
                         "along the key axis")
        cr = corrections[0]
        after = self.reads_decayed(cr.read_decay, update_decays[id(cr.update)])
        if after is None:
            raise NoPlan(f"the correction of '{name}' reads it under other factors than its update decays it by")
        read = cr.read if cr.read_sign > 0 else _neg(cr.read)
        seen = cr.prior_decay + (tuple(update_decays[id(cr.update)]) if after else ())
        for f in seen:        # c^T (D S) = (c ⊙ d)^T S for a key-axis or scalar decay d
            read = _mul(read, f.value)
        correct = cr.key if cr.sign > 0 else _neg(cr.key)
        for f in cr.strength:
            if set(self.ty(f.expr).dims) - {sty.dims[0]}:
                raise NoPlan(f"the strength of the correction of '{name}' varies along its value axis")
            correct = _mul(correct, f.value)
        if cr.value is not None:
            k, v = correct, cr.value           # outer(b, v - c @ S) writes outer(b, v) too
        elif write is not None:
            k, v = write
        else:
            raise NoPlan(f"'{name}' is never written")
        return StatePlan(name, "dplr", False, axis, decay, k=k, v=v, read=read, correct=correct)

    def match_correction(self, name: str, update: ir.Update, sign: int, factors: list[Factor], core: ir.Call,
                         prior: tuple[Factor, ...]) -> Correction:
        """``strength * outer(key, value - q @ (R * S))`` (or ``+ q @ ...``, value optional) as a Correction."""
        key, rest = core.args
        if _mentions(key, {name}):
            raise NoPlan(f"the key of the delta rule of '{name}' depends on '{name}'")
        value = None
        read, read_sign, read_decay = None, 1, []
        for s, term in _sum_terms(rest):
            if _mentions(term, {name}):
                scalars, term = self.factor_out(term, name)      # (q @ S) / 2: scalar factors go onto the read
                read_factors, read_core = self.factor_out(term.right, name) \
                    if isinstance(term, ir.Binary) and term.op == "@" else ([], None)
                if (isinstance(read_core, ir.Name) and read_core.id == name and read is None
                        and not _mentions(term.left, {name}) and not any(self.ty(f.expr).dims for f in scalars)):
                    read, read_sign, read_decay = term.left, s, read_factors
                    for f in scalars:
                        read = _mul(read, f.value)
                else:
                    raise NoPlan(f"the correction of '{name}' must read it as k @ {name}")
            else:
                value = _add(value, term if s > 0 else _neg(term))
        if read is None:
            raise NoPlan(f"the correction of '{name}' must read it as k @ {name}")
        return Correction(update, key, value, read, read_sign, tuple(read_decay), tuple(factors), sign, prior)

    # ------------------------------------------------------------------ reads
    def reads(self) -> list[Read]:
        c = self.c
        out: list[Read] = []
        cell = c.model.cell
        updates: dict[str, list[int]] = {}
        for i, st in enumerate(cell.body):
            if isinstance(st, ir.Update):
                updates.setdefault(st.target, []).append(i)
        for i, st in enumerate(cell.body):
            if not (isinstance(st, ir.Local) and st.name in self.state_locals):
                continue
            for read in self._state_reads(st.value):
                at = updates.get(read.state, [])
                if at and at[0] < i < at[-1]:
                    raise NoPlan(f"'{st.name}' reads '{read.state}' between two of its updates")
                before = bool(at) and i < at[0]
                out.append(Read(read.node, read.state, read.q, before))
        return out

    def _state_reads(self, e: ir.Expr) -> list[Read]:
        """Find every read of a state inside e; fail if a state is used otherwise."""
        reads: list[Read] = []
        stack = [e]
        while stack:
            node = stack.pop()
            if isinstance(node, ir.Binary) and node.op == "@" and isinstance(node.right, ir.Name) \
                    and node.right.id in self.states:
                if _mentions(node.left, self.states | self.state_locals):
                    raise NoPlan("a readout multiplies two states")
                if len(self.ty(node.left).dims) != 1:
                    raise NoPlan("a readout reads a state with a matrix; parallel forms read q @ S")
                reads.append(Read(id(node), node.right.id, node.left))
                continue
            if isinstance(node, ir.Name) and node.id in self.states:
                if len(self.c.cell_types[node.id].dims) != 1:
                    raise NoPlan(f"a readout uses the whole matrix state '{node.id}'; read it with q @ {node.id}")
                reads.append(Read(id(node), node.id, None))
                continue
            if isinstance(node, ir.Binary) and node.op in ("*", "/", "**") and \
                    _mentions(node, self.states) and node.op != "*" and _mentions(node.right, self.states):
                pass
            stack.extend(ir.children(node))
        return reads


def _product(e: ir.Expr) -> list[Factor]:
    """Flatten a product: a * b / c -> [a, b, 1/c]; a leading minus becomes a factor -1."""
    if isinstance(e, ir.Binary) and e.op == "*":
        return _product(e.left) + _product(e.right)
    if isinstance(e, ir.Binary) and e.op == "/":
        return _product(e.left) + [Factor(e.right, divide=True)]
    if isinstance(e, ir.Unary) and e.op == "-":
        return [Factor(ir.Num(value=-1))] + _product(e.operand)
    return [Factor(e)]


def product_expr(factors) -> ir.Expr:
    """The product of factors as one expression (1 * f1 * f2 / f3 ...); no factors: 1."""
    out: ir.Expr = ir.Num(value=1)
    for f in factors:
        out = ir.Binary(op="/" if f.divide else "*", left=out, right=f.expr)
    return out


def conv_plan(p: "_Planner", states: tuple[StatePlan, ...], reads: tuple[Read, ...]) -> tuple[ConvPlan, ...]:
    """Split every state into a fixed impulse response and a time-varying input, or say why not (NoPlan).

    The conv form needs an LTI system: decays, write coefficients and read vectors that do not change
    with time (no stream in them), and a time-varying input that is a scalar per token for a vector
    state (SISO, as in S4/S4D/DSS) or the write value of a matrix state.
    """
    varying = set(p.c.op_streams)
    for st in p.c.model.cell.body:
        if isinstance(st, ir.Local) and _mentions(st.value, varying):
            varying.add(st.name)

    def fixed(e: ir.Expr) -> bool:
        return not _mentions(e, varying)

    out = []
    for sp in states:
        if sp.kind != "gated" or sp.gate_axis not in ("none", "scalar", "key"):
            raise NoPlan(f"'{sp.state}' is not a gated state with a scalar or key-axis decay")
        if not all(fixed(f.expr) for f in sp.factors):
            raise NoPlan(f"the decay of '{sp.state}' changes with time (it reads a stream)")
        for rd in reads:
            if rd.state == sp.state and (rd.before or (rd.q is not None and not fixed(rd.q))):
                raise NoPlan(f"a readout reads '{sp.state}' with a time-varying vector or before its update")
        if sp.vector:
            parts = _product(sp.k)
            coefficient = [f for f in parts if fixed(f.expr)]
            value = [f for f in parts if not fixed(f.expr)]
            if any(p.ty(f.expr).dims for f in value):
                raise NoPlan(f"the input of '{sp.state}' is not a fixed vector times a scalar per token (MIMO)")
            out.append(ConvPlan(sp.state, product_expr(coefficient), product_expr(value)))
        else:
            if not fixed(sp.k):
                raise NoPlan(f"the write key of '{sp.state}' changes with time")
            out.append(ConvPlan(sp.state, sp.k, sp.v))
    return tuple(out)


def plan(c: Checked, a: Analysis) -> KernelPlan:
    """The forms the torch/Triton backends generate for a checked, analysed model."""
    modes = list(a.forms)
    why = dict(a.not_forms)
    cell = c.model.cell
    if cell is None:
        return KernelPlan((), {"recurrent": "the model has no cell"})
    p = _Planner(c, a)
    hoisted = tuple(st.name for st in cell.body if isinstance(st, ir.Local) and st.name not in p.state_locals)
    readout_locals = tuple(st.name for st in cell.body if isinstance(st, ir.Local) and st.name in p.state_locals)
    parallel = [m for m in modes if m != "recurrent"]
    if not parallel:
        return KernelPlan(("recurrent",), why, hoisted_locals=hoisted, readout_locals=readout_locals)
    try:
        states = tuple(p.plan_state(s) for s in cell.states)
        reads = tuple(p.reads())
    except NoPlan as e:
        for m in parallel:
            why[m] = f"not generated yet: {e}"
        return KernelPlan(("recurrent",), why, hoisted_locals=hoisted, readout_locals=readout_locals)
    for sp in states:
        before = [r for r in reads if r.state == sp.state and r.before]
        if before and "chunk" in modes and sp.kind != "gated":
            modes.remove("chunk")
            why["chunk"] = (f"'{sp.state}' is read before its update; the chunk form takes such reads for gated "
                            "states (the scan form takes all)")
        if sp.gate_axis == "both" and "chunk" in modes:
            modes.remove("chunk")
            why["chunk"] = f"the decay of '{sp.state}' varies along both axes of the state"
        if sp.kind == "dense" and "chunk" in modes:
            modes.remove("chunk")
            why["chunk"] = "a dense transition has no chunkwise form"
        if sp.kind in ("delta", "dplr") and "scan" in modes:
            modes.remove("scan")
    conv: tuple[ConvPlan, ...] = ()
    try:
        conv = conv_plan(p, states, reads)
        modes.append("conv")
    except NoPlan as e:
        why["conv"] = f"not a time-invariant system: {e}"
    return KernelPlan(tuple(modes), why, states, reads, hoisted, readout_locals, conv=conv)
