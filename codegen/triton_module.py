"""Generate the Triton module of a spec: a fused recurrent kernel, its launcher and its autograd wrapper.

The RECURRENT form (every class, nonlinear cells included): one ``@triton.jit`` kernel per spec,
grid ``(B, H, tiles)``; each program keeps the states of one sequence and one cell-axis element (and
one tile of the state's value axis, where the cell allows splitting it) in registers, walks the
sequence, loads each token's stream values, evaluates the cell's statements (rendered from the IR by
``triton_render`` through the op table) and writes the readouts of every token and the final states.
The template below owns pointers, masks and the time loop; the rendered fragments own the math.

The SCAN form of cells whose states are gated vectors (Mamba, LRU, S4D, ...): the same template with
``scan=True`` (``scan_fwd_kernel``, grid ``(B, H)``): the time loop steps BLOCK_T tokens at a time, the
stream values of the block are loaded as ``[BLOCK_T, *dims]`` blocks, the cell is rendered for all of them
at once (``TimeBatchedRenderer``: per-token values carry the leading dim TIME), and each state's update
``h_t = a_t h_{t-1} + b_t`` (a, b from the plan) is a ``tl.associative_scan`` over the block, the carried
state applied, the last row carried on. Its backward is a third generated kernel
(``codegen/triton_scan_backward.py``: the adjoint recurrence as a reverse scan over each block; the module's
``SCAN_BACKWARD`` says which backward runs, the recurrent backward kernel where that one cannot be generated).
What it cannot
express (matrix states, reads of S_{t-1}, products needing 3-d blocks) keeps the unfused scan: the torch
twin's scan with ``triton_scan`` (``SCAN`` in the module says which, and why).

Backward: a second generated kernel (``codegen/triton_backward.py``): reverse-mode differentiation of
the cell's step through the op table's derivative rules, the states recomputed from checkpoints every
~sqrt(T) steps. A cell it cannot differentiate (``BACKWARD`` in the module says why) keeps the
fallback: an ``autograd.Function`` whose
backward recomputes the forward through the torch twin (the torch backend's module of the same spec,
embedded as source) under autograd and backpropagates through it.

Conventions are those of the torch module (the op wrapper ``seqdsl.runtime.op`` prepares them):
streams ``[B, T, H, *dims]`` (H = 1 when the cell runs over no axis or the stream lacks it), params
``[1, 1, H, *dims]``, states ``[B, H, *dims]``; computation in the inputs' dtype (fp32, or fp64 for
fp64 inputs), complex values as (real, imaginary) register pairs.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import re

from seqdsl import ir
from seqdsl.analysis import Analysis
from seqdsl.codegen.lift import lift_invariant_subexpressions
from seqdsl.codegen.ops import OPS
from seqdsl.codegen.passthrough import direct_readout, passthrough_inputs
from seqdsl.codegen.torch_module import varlen_forms
from seqdsl.codegen.triton_render import (TIME, Blocks, TimeBatchedRenderer, TimeBlocks, TritonRenderer, Unsupported,
                                          Val, dim_id, index_at, index_for, number)
from seqdsl.plan import KernelPlan, product_expr
from seqdsl.typecheck import Checked, Ty

INDENT = "    "
_INTERNAL = {"T", "H", "t", "i_b", "i_h", "i_v", "first_tile", "args", "DTYPE", "USE_INITIAL_STATE",
             "STORE_FINAL_STATE", "IS_VARLEN", "cu_seqlens", "seq_row", "seq_t0", "seq_len", "tl", "triton", "torch",
             "_tlib", "_rt",
             # the backward kernel's own names (codegen/triton_backward.py)
             "CHUNK", "NC", "n_chunks", "i_c", "c0", "n_steps", "j", "jj", "SPLIT"}
_TORCH_FORMS_IMPORT = "from seqdsl.runtime import torch_forms as _forms"
# The most key channels the Triton DPLR chunk kernels take (seqdsl.runtime.triton_dplr.DPLR_MAX_DIM, which a test
# keeps equal; codegen does not import the runtime's Triton modules).
DPLR_MAX_DIM = 256
_TEMP = re.compile(r"^_(?:t|c|inv)\d+$")      # the renderer's temporaries
# the fused scan kernel's own names (TimeBlocks' o_t, m_t, BLOCK_T; its loop's t0)
SCAN_NAMES = ("t0", "o_t", "m_t", "BLOCK_T", "SEQ_LEN")
# the sequence a program row runs: its batch row, first token and length (packed sequences: IS_VARLEN)
SEQUENCE_ROWS = "seq_row, seq_t0, seq_len = _tlib.sequence_rows(cu_seqlens, i_b, T, IS_VARLEN)"


class _Lines:
    def __init__(self):
        self.lines: list[str] = []

    def add(self, text: str = "", level: int = 0) -> None:
        self.lines.append(INDENT * level + text if text else "")

    def extend(self, texts, level: int) -> None:
        for t in texts:
            self.add(t, level)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    def section(self, lines: list[str]) -> None:
        """Top-level source lines (a kernel), then two blank lines."""
        self.extend(lines, 0)
        self.add()
        self.add()

    def kernels(self, forward: list[str], launcher, backward: list[str] | None, backward_launcher) -> None:
        """A form's kernel and its launcher, then its backward kernel and launcher if it has one (each writes
        into this and is followed by two blank lines)."""
        self.section(forward)
        launcher(self)
        self.section([])
        if backward is not None:
            self.section(backward)
            backward_launcher(self)
            self.section([])


def _mentions(e: ir.Expr, names: set[str]) -> bool:
    return any(n.id in names for n in ir.names_in(e))


def block_offsets(blocks: Blocks, ds: tuple, strides: list[str]) -> str:
    """Element offsets of a [*ds] register block in a tensor with the given strides (names or "1")."""
    terms = [f"{blocks.offset(d)}{index_at(i, len(ds))}{'' if s == '1' else ' * ' + s}"
             for i, (d, s) in enumerate(zip(ds, strides))]
    return " + ".join(terms) if terms else "0"


def block_mask(blocks: Blocks, ds: tuple, extra: str = "") -> str | None:
    """The mask of a [*ds] block's real lanes (None: no lane is padding)."""
    ms = [f"{blocks.mask(d)}{index_at(i, len(ds))}" for i, d in enumerate(ds) if blocks.padded(d)]
    if extra:
        ms.append(extra)
    return " & ".join(ms) if ms else None


def contiguous_offsets(blocks: Blocks, ds: tuple, cplx: bool) -> tuple[str, str]:
    """(offsets, numel) of a contiguous [..., *ds] block (complex: real view, x2)."""
    strides = []
    for i in range(len(ds)):
        rest = [blocks.size(d) for d in ds[i + 1:]]
        strides.append(" * ".join(rest) if rest else "1")
    offs = block_offsets(blocks, ds, strides)
    numel = " * ".join(blocks.size(d) for d in ds) or "1"
    if cplx:
        offs, numel = f"({offs}) * 2", f"{numel} * 2" if ds else "2"
    return offs, numel


def token_pointers(p: str, dims: tuple, step: str) -> str:
    """Pointers of a value of ``dims`` at the current token: ``p`` itself; for a block of tokens (``dims`` led by
    TIME), ``p`` at the block's BLOCK_T tokens, ``step`` elements apart."""
    if dims[:1] != (TIME,):
        return p
    return f"{p}{index_for(dims[1:], dims)} + (o_t * {step}){index_at(0, len(dims))}"


def token_block(r: TritonRenderer, v: Val, t: Ty, identity: float, state: str) -> tuple[str, str | None]:
    """A state's per-token decay or write ``v`` as a ``[BLOCK_T, *state]`` block bound to temporaries (real, imaginary
    or None) whose padded tokens (beyond the sequence) are the identity step: ``identity`` (a = 1, b = 0)."""
    if v.complex and not t.complex:
        raise Unsupported(f"a complex update of the real state {state}")
    frame = (TIME,) + t.dims
    if set(v.dims) - set(frame):
        raise Unsupported(f"the update of {state} has dims {v.dims} beyond the state's {t.dims}")
    shape = ", ".join(r.blocks.block(d) for d in frame)
    rows = f"m_t{index_at(0, len(frame))}"

    def fit(text: str, pad: float) -> str:
        aligned = text if v.plain else r.align(text, v.dims, frame)
        return r.bind(f"tl.where({rows}, {aligned} + tl.zeros([{shape}], dtype=DTYPE), {pad})")

    return fit(v.re, identity), (fit(v.im, 0.0) if v.im is not None else None)


def triton_chunk_gap(c: Checked, p: KernelPlan) -> str | None:
    """Why the Triton chunk kernels cannot run a plan whose chunk form the torch backend generates (None: they can,
    or the plan has no chunk form). ``seqdsl explain`` prints it too."""
    if "chunk" not in p.modes:
        return None
    for sp in p.states:
        if sp.kind == "dplr":
            keys = c.dim_sizes[c.cell_types[sp.state].dims[0]]
            if keys > DPLR_MAX_DIM:
                return f"the state {sp.state} is diagonal plus rank 1 with {keys} key channels; the Triton DPLR " \
                       f"state passes hold every key channel in one program (at most {DPLR_MAX_DIM})"
            continue
        if sp.kind not in ("gated", "delta"):
            return f"the state {sp.state} is {sp.kind}; the Triton chunk kernels do gated and delta states"
        axes = ("none", "scalar", "key") if sp.kind == "gated" else ("none", "scalar")
        if sp.gate_axis not in axes:
            return f"the state {sp.state} decays along its {sp.gate_axis} axis; the Triton chunk kernels " \
                   f"take {' or '.join(axes[1:])} gates for {sp.kind} states"
        if c.cell_types[sp.state].complex and sp.kind != "gated":
            return f"the state {sp.state} is a complex delta-rule state; the Triton delta chunk kernels are real " \
                   "(complex gated states run on the real kernels through a phase rotation)"
    return None


def aligned_to_block(v: Val, dims: tuple) -> tuple[str, str | None]:
    """A state's value (of ``dims``) as (real, imaginary or None) texts broadcast over a block's tokens."""
    index = index_for(dims, (TIME,) + dims)
    return v.re + index, None if v.im is None else v.im + index


def scanned_state_plan(plans: dict, name: str, updated: bool):
    """The plan of a state the fused scan kernels can scan (gated, a vector, updated once per step), else
    Unsupported saying why."""
    sp = plans.get(name)
    if sp is None or sp.kind != "gated":
        raise Unsupported(f"the state {name} is not a gated (diagonal) state")
    if not sp.vector:
        raise Unsupported(f"the state {name} is a matrix; the fused scan kernel holds vector states "
                          "(a matrix state's scan: the unfused form, or the chunk form)")
    if updated:
        raise Unsupported(f"the state {name} is updated twice in a step")
    return sp


def row_of_block(targets: tuple, values: tuple, row: str, ndim: int) -> list[str]:
    """Lines setting each (non-None) target part to the row ``row`` (e.g. ``BLOCK_T - 1``: the block's last token)
    of the matching ``[BLOCK_T, ...]`` value of ``ndim`` dims."""
    pick = f"(o_t == {row}){index_at(0, ndim)}"
    return [f"{part} = tl.reduce(tl.where({pick}, {value}, 0.0), 0, _tlib.add)"
            for part, value in zip(targets, values) if part is not None]


def linear_scan(a: tuple, b: tuple, carry: tuple, names: str, reverse: bool = False,
                previous: bool = False) -> tuple[list[str], tuple, tuple | None]:
    """Lines computing x_t = a_t x_{t-1} + b_t for the tokens of a block (axis 0 of ``[BLOCK_T, ...]`` blocks) with
    ``tl.associative_scan``, from ``carry`` (x before the block's first token, aligned to the block); with
    ``reverse``, x_t = a_t x_{t+1} + b_t from the value after its last. ``previous``: also x_{t-1} (reverse:
    x_{t+1}), scanning (a, b, 1, 0) with ``compose_with_previous``. a, b, carry: (real, imaginary or None) texts
    (one complex operand makes the scan complex). Returns (lines, x (re, im or None), previous or None), held in
    variables named ``{names}_<part>``."""
    cplx = any(x[1] is not None for x in (a, b, carry))

    def parts(x: tuple) -> list[str]:
        return [x[0], x[1] if x[1] is not None else f"({x[0]} * 0.0)"] if cplx else [x[0]]

    one, zero = [f"({a[0]} * 0.0 + 1.0)", f"({a[0]} * 0.0)"], [f"({a[0]} * 0.0)"] * 2
    operands = parts(a) + parts(b) + ((one + zero if cplx else [one[0], zero[0]]) if previous else [])
    k = 2 if cplx else 1
    labels = ["a", "b", "p", "q"][:4 if previous else 2]
    results = [f"{names}_{x}{('_re', '_im')[i] if cplx else ''}" for x in labels for i in range(k)]
    combine = {(False, False): "compose_real", (True, False): "compose_complex",
               (False, True): "compose_with_previous", (True, True): "compose_with_previous_complex"}[cplx, previous]
    lines = [f"{', '.join(results)} = tl.associative_scan(({', '.join(operands)}), 0, _tlib.{combine}"
             f"{', reverse=True' if reverse else ''})"]
    c = parts(carry)

    def apply(m: list[str], v: list[str], target: str) -> tuple:
        """m * carry + v into ``{names}_{target}``."""
        if not cplx:
            lines.append(f"{names}_{target} = {m[0]} * {c[0]} + {v[0]}")
            return (f"{names}_{target}", None)
        lines.append(f"{names}_{target}_re = {m[0]} * {c[0]} - {m[1]} * {c[1]} + {v[0]}")
        lines.append(f"{names}_{target}_im = {m[0]} * {c[1]} + {m[1]} * {c[0]} + {v[1]}")
        return (f"{names}_{target}_re", f"{names}_{target}_im")

    x = apply(results[:k], results[k:2 * k], "x")
    prev = apply(results[2 * k:3 * k], results[3 * k:], "prev") if previous else None
    return lines, x, prev


def reads_nothing(shape: str, mask: str | None = None) -> str:
    """The mask of a load that reads nothing, over a block of ``shape`` (e.g. "BLOCK_dk, BLOCK_dv"; "" a scalar): false
    everywhere at run time (program ids are never negative), which the compiler cannot tell before it lays the block
    out. A state's declared initial values made by such a load take the layout of a loaded state
    (``triton_runtime.unread_address``). A full block, not a scalar broadcast: the interpreter takes no mask built
    from a broadcast scalar comparison."""
    never = f"(tl.zeros([{shape}], dtype=tl.int64) + i_b < 0)"
    return f"{mask} & {never}" if mask else never


def open_kernel(out: _Lines, name: str, signature: list[str]) -> None:
    """``@triton.jit def name(<signature lines>):`` and the program's batch and cell-axis indices."""
    out.add("@triton.jit")
    out.add(f"def {name}(")
    out.extend(signature, 1)
    out.add("):")
    out.add("i_b, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)", 1)


class _Gen:
    def __init__(self, c: Checked, a: Analysis, p: KernelPlan):
        self.c, self.a, self.p = c, a, p
        self.cell = c.model.cell
        self.states = [s.name for s in self.cell.states]
        self.inputs = list(c.op_inputs)
        self.args = [x.name for x in self.cell.args]
        self.name = c.model.name
        self.kernel_name = f"{self.name}_recurrent_fwd_kernel"
        self.scan_kernel_name = f"{self.name}_scan_fwd_kernel"
        self.axis_size = c.dim_sizes[c.cell_axis] if c.cell_axis else 1
        self.locals = [st for st in self.cell.body if isinstance(st, ir.Local)]
        invariant_sources = set(c.op_params) | set(self.args)
        self.invariant: list[str] = []
        for st in self.locals:
            names = {n.id for n in ir.names_in(st.value)}
            if all(n in invariant_sources or c.kinds.get(n) in ("hparam", "dim") or n not in c.kinds
                   or n in self.invariant for n in names):
                self.invariant.append(st.name)

    def is_invariant(self, e: ir.Expr) -> bool:
        """Whether e depends on params, args and constants only (the same at every step)."""
        sources = set(self.c.op_params) | set(self.args) | set(self.invariant)
        return all(n.id in sources or self.c.kinds.get(n.id) in ("hparam", "dim") or n.id not in self.c.kinds
                   for n in ir.names_in(e))

    def with_lifted_invariants(self) -> "_Gen":
        """This generator with the step's loop-invariant subexpressions lifted into invariant locals of the cell
        (``codegen/lift.py``): what the recurrent backward kernel differentiates, so that it evaluates them once
        and sums their adjoints over the sequence instead of recomputing both at every step. Itself where the
        step has none."""
        c = self.c

        def liftable(e: ir.Expr) -> bool:
            return id(e) in c.expr_types and self.is_invariant(e) and any(
                c.kinds.get(n.id) in ("param", "arg", "local") for n in ir.names_in(e))

        body, lifted, rebuilt = lift_invariant_subexpressions(self.cell.body, self.invariant, liftable)
        if not lifted:
            return self
        expr_types = dict(c.expr_types)
        expr_types.update({new: c.expr_types[id(old)] for new, old in rebuilt.items() if id(old) in c.expr_types})
        cell = self.cell.model_copy(update={"body": body})
        view = copy.copy(self)
        view.c = dataclasses.replace(
            c, model=c.model.model_copy(update={"cell": cell}), expr_types=expr_types,
            cell_types={**c.cell_types, **{n: c.expr_types[id(e)] for n, e in lifted.items()}},
            kinds={**c.kinds, **{n: "local" for n in lifted}})
        view.cell = cell
        view.locals = [st for st in body if isinstance(st, ir.Local)]
        invariant = set(self.invariant) | set(lifted)
        view.invariant = [st.name for st in view.locals if st.name in invariant]
        return view

    # ------------------------------------------------------------------ types and dims
    def cell_ty(self, name: str) -> Ty:
        t = self.c.cell_types.get(name)
        if t is not None:
            return t
        t = self.c.types[name]
        axis = self.c.cell_axis
        if axis and t.dims[:1] == (axis,):
            return Ty(t.dims[1:], t.complex)
        return t

    def cell_dims(self) -> list:
        """Every named dim a value of the cell has (the blocks the kernel needs), in first-seen order."""
        seen: list = []
        names = list(self.c.op_inputs) + self.states + [st.name for st in self.locals]
        tys = [self.cell_ty(n) for n in names]
        for st in self.cell.body:
            if isinstance(st, (ir.Local, ir.Update)):
                tys += [self.c.expr_types[id(e)] for e in ir.walk(st.value) if id(e) in self.c.expr_types]
        for t in tys:
            for d in t.dims:
                if d not in seen:
                    seen.append(d)
        return seen

    def tile_candidate(self):
        """The state axis the kernel may split across programs (else None): the value axis of the matrix states,
        when every matrix state ends with it; with vector states only, their one axis, when they all have the
        same (an elementwise cell such as HGRN's or Hawk's: without it, one program would hold the whole state
        of a sequence). Rendering raises ``Unsupported`` where the cell mixes the tiles (a reduction, contraction,
        index or matrix function over the axis), and the kernel is then not tiled."""
        dims = [self.c.cell_types[s].dims for s in self.states]
        if dims and all(len(d) == 1 for d in dims) and len(set(dims)) == 1:
            d = dims[0][0]
        else:
            lasts = {d[-1] for d in dims if len(d) == 2}
            if len(lasts) != 1:
                return None
            d = lasts.pop()
            if any(ds[:1] == (d,) for ds in dims):
                return None
        names = list(self.c.op_inputs) + self.states + [st.name for st in self.locals]
        tys = [self.cell_ty(n) for n in names] + list(self.c.expr_types.values())
        if any(list(t.dims).count(d) > 1 for t in tys):
            return None
        return d

    def state_numel(self) -> int:
        """Real numbers of the whole state of one sequence and head (complex counts 2), before any tiling."""
        return sum(self.c.size(self.c.cell_types[s].dims) * (2 if self.c.cell_types[s].complex else 1)
                   for s in self.states)

    def param_numel(self) -> int:
        """Real numbers of the params one program loads and keeps in registers for the whole sequence."""
        return sum(self.c.size(self.cell_ty(n).dims) * (2 if self.cell_ty(n).complex else 1) for n in self.c.op_params)

    def kernel_names(self, dims: list, reserved: tuple = ()) -> dict:
        """Every identifier the kernel gives a spec name, unique against the template's own names.

        Values are ``b_<name>`` (complex: ``b_<name>_re`` / ``b_<name>_im``), inputs are pointer
        arguments under their own names with strides ``s_<name>_<axis>``, running pointers ``p_<name>``,
        states ``h0_<s>`` / ``ht_<s>``, readouts ``out_<o>``; a clash appends ``_``.
        """
        taken = set(_INTERNAL) | set(reserved) | {f"{p}{dim_id(d)}" for d in dims
                                                  for p in ("o_", "m_", "SIZE_", "BLOCK_")}

        def fresh(want: str) -> str:
            while want in taken or _TEMP.match(want):
                want += "_"
            taken.add(want)
            return want

        values = list(self.c.op_inputs) + self.states + [st.name for st in self.locals] + self.args
        names: dict = {"value": {}, "ptr": {}, "stride": {}, "p": {}, "h0": {}, "ht": {}}
        for n in values:
            if self.cell_ty(n).complex:
                base = f"b_{n}"
                while {f"{base}_re", f"{base}_im"} & taken:
                    base += "_"
                names["value"][n] = (fresh(f"{base}_re"), fresh(f"{base}_im"))
            else:
                names["value"][n] = (fresh(f"b_{n}"), None)
        for n in self.c.op_inputs:
            names["ptr"][n] = fresh(n)
            dims_n = self.cell_ty(n).dims
            keys = [dim_id(d) for d in dims_n]
            if len(set(keys)) != len(keys):
                keys = [f"{k}{i}" for i, k in enumerate(keys)]
            lead = ["b", "t", "h"] if n in self.c.op_streams else ["h"]
            names["stride"][n] = [fresh(f"s_{n}_{k}") for k in lead + keys]
        for n in list(self.c.op_streams) + list(self.c.readouts):
            names["p"][n] = fresh(f"p_{n}")
        for s_ in self.states:
            names["h0"][s_], names["ht"][s_] = fresh(f"h0_{s_}"), fresh(f"ht_{s_}")
        for o in self.c.readouts:
            names["ptr"][o] = fresh(f"out_{o}")
        # the prefix of the fused scan's variables for each state (linear_scan): scan results, per-token states
        names["scan"] = {s_: fresh(f"scan_{s_}") for s_ in self.states}
        return names

    # ------------------------------------------------------------------ the kernel
    def kernel(self, tiled, scan: bool = False) -> list[str]:
        """Source lines of the recurrent kernel (raises Unsupported).

        ``scan``: the fused scan kernel instead (``scan_fwd_kernel``): the same template stepping BLOCK_T tokens
        at a time (values rendered by ``TimeBatchedRenderer``), each state's update an associative scan
        over the block (``scan_update``)."""
        c = self.c
        dims = self.cell_dims()
        sizes = {d: c.dim_sizes[d] for d in dims}
        blocks = TimeBlocks(sizes, tiled) if scan else Blocks(sizes, tiled)
        out = _Lines()
        env: dict[str, Val] = {}

        N = self.kernel_names(dims, SCAN_NAMES if scan else ())

        def var(name: str, ty: Ty) -> Val:
            re_, im = N["value"][name]
            return Val(re_, ty.dims, im if ty.complex else None)

        def resolve(name: str) -> Val:
            if name in env:
                return env[name]
            raise Unsupported(f"'{name}' is not available inside the kernel")

        r = (TimeBatchedRenderer if scan else TritonRenderer)(c, resolve, blocks)
        lead = (TIME,) if scan else ()       # the leading dim of per-token values

        def per_token(t: Ty) -> Ty:
            return Ty(lead + t.dims, t.complex)

        def offsets(ds: tuple, strides: list[str]) -> str:
            return block_offsets(blocks, ds, strides)

        def mask(ds: tuple, extra: str = "") -> str | None:
            return block_mask(blocks, ds, extra)

        def contiguous(ds: tuple, cplx: bool) -> tuple[str, str]:
            return contiguous_offsets(blocks, ds, cplx)

        def dims_text(t: Ty) -> str:
            return "".join(f", {d}" for d in t.dims)

        # ---- signature
        sig: list[str] = []
        for n in c.op_streams:
            t = self.cell_ty(n)
            sig.append(f"{', '.join([N['ptr'][n]] + N['stride'][n])},"
                       f"  # stream {n}: [B, T, H{dims_text(t)}]{' complex' if t.complex else ''}")
        for n in c.op_params:
            t = self.cell_ty(n)
            sig.append(f"{', '.join([N['ptr'][n]] + N['stride'][n])},"
                       f"  # param {n}: [H{dims_text(t)}]{' complex' if t.complex else ''}")
        for s in self.states:
            t = c.cell_types[s]
            sig.append(f"{N['h0'][s]}, {N['ht'][s]},  # state {s}: [B, H{dims_text(t)}] initial / final"
                       f"{' (complex: real view)' if t.complex else ''}")
        for o in c.readouts:
            t = self.cell_ty(o)
            sig.append(f"{N['ptr'][o]},  # readout {o}: [B, T, H{dims_text(t)}]"
                       f"{' (complex: real view)' if t.complex else ''}")
        if self.args:
            sig.append(f"args,  # cell args: {', '.join(self.args)}")
        sig.append("cu_seqlens, T,  # packed sequences: [N + 1] token offsets (IS_VARLEN); the buffers' T")
        sig.append(", ".join([f"{blocks.size(d)}: tl.constexpr, {blocks.block(d)}: tl.constexpr" for d in dims]
                             + ["BLOCK_T: tl.constexpr"] * scan) + ",")
        sig.append("DTYPE: tl.constexpr, USE_INITIAL_STATE: tl.constexpr, STORE_FINAL_STATE: tl.constexpr,"
                   " IS_VARLEN: tl.constexpr,")
        open_kernel(out, self.scan_kernel_name if scan else self.kernel_name, sig)
        L = 1
        if tiled is not None:
            out.add(f"i_v = tl.program_id(2)  # tile of the {tiled} axis", L)
            out.add("first_tile = (tl.zeros([1], dtype=tl.int32) + i_v) == 0  # stores the values without that axis", L)
        out.add("H = tl.num_programs(1)", L)
        out.add(SEQUENCE_ROWS, L)
        for d in dims:
            base = f"i_v * {blocks.block(d)} + " if d == tiled else ""
            out.add(f"{blocks.offset(d)} = {base}tl.arange(0, {blocks.block(d)})", L)
            out.add(f"{blocks.mask(d)} = {blocks.offset(d)} < {blocks.size(d)}", L)
        if scan:
            out.add("o_t = tl.arange(0, BLOCK_T)  # the tokens of a block", L)
        for i, a in enumerate(self.args):
            env[a] = var(a, Ty())
            out.add(f"{env[a].re} = tl.load(args + {i})", L)

        def load(dst: _Lines, level: int, ptr: str, t: Ty, m: str | None, name: str) -> None:
            """A stream's or param's value, converted to DTYPE (bf16 / fp16 inputs reach the kernel as given)."""
            opts = f", mask={m}, other=0.0" if m else ""
            target = var(name, t)
            dst.add(f"{target.re} = tl.load({ptr}{opts}).to(DTYPE)", level)
            if t.complex:
                dst.add(f"{target.im} = tl.load({ptr} + 1{opts}).to(DTYPE)", level)

        # ---- params: loaded once
        if c.op_params:
            out.add("# params (constant over time)", L)
        for n in c.op_params:
            t = self.cell_ty(n)
            st = N["stride"][n]
            ptr = f"{N['ptr'][n]} + i_h * {st[0]}" + (f" + {offsets(t.dims, st[1:])}" if t.dims else "")
            load(out, L, ptr, t, mask(t.dims), n)
            env[n] = var(n, t)

        def statement(dst: _Lines, st, level: int) -> None:
            if isinstance(st, ir.Local):
                v = r(st.value)
                dst.extend(r.take_lines(), level)
                if v.plain:
                    env[st.name] = v
                    if st.name not in c.readouts:
                        return
                    v = Val(f"tl.full([], {v.re}, DTYPE)", (), None if v.im is None else f"tl.full([], {v.im}, DTYPE)")
                target = var(st.name, Ty(v.dims, v.complex))
                dst.add(f"{target.re} = {v.re}", level)
                if v.complex:
                    dst.add(f"{target.im} = {v.im}", level)
                env[st.name] = target
            elif isinstance(st, ir.Update) and scan:
                scan_update(dst, st, level)
            elif isinstance(st, ir.Update):
                t = c.cell_types[st.target]
                v = r(st.value)
                dst.extend(r.take_lines(), level)
                if v.complex and not t.complex:
                    raise Unsupported(f"a complex value assigned to the real state {st.target}")
                target = var(st.target, t)

                def fit(text: str, vd: tuple) -> str:
                    if v.plain or vd != t.dims:
                        shape = ", ".join(blocks.block(d) for d in t.dims)
                        aligned = text if v.plain else r.align(text, vd, t.dims)
                        return f"{aligned} + tl.zeros([{shape}], dtype=DTYPE)"
                    return text

                dst.add(f"{target.re} = {fit(v.re, v.dims)}", level)
                if t.complex:
                    dst.add(f"{target.im} = {fit(v.im if v.im is not None else '0.0', v.dims)}", level)

        plans = {sp.state: sp for sp in self.p.states}
        carries: dict[str, Val] = {}       # the states (scan: the state after the last token so far)

        def scan_update(dst: _Lines, st: ir.Update, level: int) -> None:
            """The fused scan's update of a gated vector state, h_t = a_t * h_{t-1} + b_t for the block's tokens:
            a (the product of the plan's decay factors) and b (its write) as [BLOCK_T, *state] blocks, padded
            tokens the identity (a = 1, b = 0: the block's last row is the state after its last token), then
            ``tl.associative_scan`` over the tokens, the carried state applied, the last row carried on."""
            name = st.target
            sp = scanned_state_plan(plans, name, updated=name in env)
            t = c.cell_types[name]
            frame = (TIME,) + t.dims
            a = token_block(r, r(product_expr(sp.factors)), t, 1.0, name)
            b = token_block(r, r(sp.k), t, 0.0, name)
            dst.extend(r.take_lines(), level)
            carry = carries[name]
            lines, h, _ = linear_scan(a, b, aligned_to_block(carry, t.dims), N["scan"][name])
            dst.extend(lines, level)
            dst.extend(row_of_block((carry.re, carry.im), h, "BLOCK_T - 1", len(frame)), level)
            env[name] = Val(h[0], frame, h[1] if t.complex else None)

        # ---- loop-invariant locals
        inv = [st for st in self.locals if st.name in self.invariant]
        if inv:
            out.add("# cell locals that depend on params only", L)
        for st in inv:
            statement(out, st, L)

        # ---- states
        carried = " (each carried from block to block)" if scan else ""
        out.add(f"# states: registers for the whole sequence{carried}", L)
        state_offs = {}
        for s in self.states:
            t = c.cell_types[s]
            offs, numel = contiguous(t.dims, t.complex)
            shape = ", ".join(blocks.block(d) for d in t.dims)
            decl = next(d for d in self.cell.states if d.name == s)
            init = number(decl.init.value).re if isinstance(decl.init, ir.Num) else "0.0"
            base = f"(i_b * H + i_h) * {numel}"
            ptr_off = f"{base} + {offs}" if t.dims else base
            state_offs[s] = ptr_off
            m = mask(t.dims)
            opts = f", mask={m}, other=0.0" if m else ""
            tv = var(s, t)
            out.add("if USE_INITIAL_STATE:", L)
            out.add(f"{tv.re} = tl.load({N['h0'][s]} + {ptr_off}{opts})", L + 1)
            if t.complex:
                out.add(f"{tv.im} = tl.load({N['h0'][s]} + {ptr_off} + 1{opts})", L + 1)
            out.add("else:  # the declared values, by a load that reads nothing: a loaded state's layout (_rt.unread_address)", L)
            unread = f", mask={reads_nothing(shape, m)}, other=0.0).to(DTYPE)"
            out.add(f"{tv.re} = tl.load({N['h0'][s]} + {ptr_off}{unread}{'' if init == '0.0' else ' + ' + init}", L + 1)
            if t.complex:
                out.add(f"{tv.im} = tl.load({N['h0'][s]} + {ptr_off} + 1{unread}", L + 1)
            carries[s] = tv
            if not scan:
                env[s] = tv

        # ---- pointers at t = 0
        out.add("# pointers at t = 0", L)
        for n in c.op_streams:
            t = self.cell_ty(n)
            st = N["stride"][n]
            offs = f" + {offsets(t.dims, st[3:])}" if t.dims else ""
            out.add(f"{N['p'][n]} = {N['ptr'][n]} + seq_row * {st[0]} + seq_t0 * {st[1]} + i_h * {st[2]}{offs}", L)
        out_step = {}
        for o in c.readouts:
            t = self.cell_ty(o)
            offs, numel = contiguous(t.dims, t.complex)
            out.add(f"{N['p'][o]} = {N['ptr'][o]} + ((seq_row * T + seq_t0) * H + i_h)"
                    f"{'' if numel == '1' else ' * ' + numel}"
                    + (f" + {offs}" if t.dims else ""), L)
            out_step[o] = "H" if numel == "1" else f"H * {numel}"

        # ---- the time loop (its body first: loop-invariant subexpressions are hoisted before it)
        body = _Lines()
        lvl = L + 1
        if scan:
            body.add("m_t = (t0 + o_t) < seq_len", lvl)
        for n in c.op_streams:
            t = per_token(self.cell_ty(n))
            load(body, lvl, token_pointers(N["p"][n], t.dims, N["stride"][n][1]), t, mask(t.dims), n)
            env[n] = var(n, t)
        r.invariant = self.is_invariant
        for st in self.cell.body:
            if isinstance(st, ir.Local) and st.name in self.invariant:
                continue
            if isinstance(st, (ir.Local, ir.Update)):
                statement(body, st, lvl)
        r.invariant = None
        for o in c.readouts:
            t = per_token(self.cell_ty(o))
            v = env[o]
            whole = tiled is None or tiled in t.dims
            m = mask(t.dims, "" if whole else "first_tile" if t.dims else "i_v == 0")
            opts = f", mask={m}" if m else ""
            ptr = token_pointers(N["p"][o], t.dims, out_step[o])

            def fit(text: str, dims: tuple = v.dims, full: tuple = t.dims) -> str:
                if not scan or dims == full:
                    return text
                shape = ", ".join(blocks.block(d) for d in full)
                return f"{text if not dims else r.align(text, dims, full)} + tl.zeros([{shape}], dtype=DTYPE)"
            body.add(f"tl.store({ptr}, {fit(v.re)}{opts})", lvl)
            if t.complex:
                im = v.im if v.im is not None else f"{v.re} * 0.0"
                body.add(f"tl.store({ptr} + 1, {fit(im)}{opts})", lvl)
        step = "BLOCK_T * " if scan else ""
        for n in c.op_streams:
            body.add(f"{N['p'][n]} += {step}{N['stride'][n][1]}", lvl)
        for o in c.readouts:
            body.add(f"{N['p'][o]} += {step}{out_step[o]}", lvl)
        if r.hoisted:
            out.add("# loop-invariant parts of the step", L)
            out.extend(r.hoisted, L)
        out.add("for t0 in range(0, seq_len, BLOCK_T):" if scan else "for t in range(0, seq_len):", L)
        out.lines += body.lines

        # ---- final states
        out.add("if STORE_FINAL_STATE:", L)
        for s in self.states:
            t = c.cell_types[s]
            tv = carries[s]
            whole = tiled is None or tiled in t.dims
            m = mask(t.dims, "" if whole else "first_tile" if t.dims else "i_v == 0")
            opts = f", mask={m}" if m else ""
            ht = N["ht"][s]
            out.add(f"tl.store({ht} + {state_offs[s]}, {tv.re}{opts})", L + 1)
            if t.complex:
                out.add(f"tl.store({ht} + {state_offs[s]} + 1, {tv.im}{opts})", L + 1)
        if not scan:     # what the launcher and the backward kernel read of the recurrent kernel
            self.blocks = blocks
            self.dims = dims
            self.tiled = tiled
        return inline_single_use_temporaries(drop_dead_temporaries(out.lines))

    # ------------------------------------------------------------------ host side
    def signature(self, with_state: bool = True) -> str:
        parts = (["_state"] if with_state else []) + self.inputs
        kw = ", ".join(self.args)
        return ", ".join(parts) + (f", *, {kw}" if kw else "")

    def launcher(self, out: _Lines, form: str = "recurrent") -> None:
        """``_launch_<form>``: the recurrent or fused scan kernel's launch."""
        c = self.c
        first = c.op_streams[0]
        sizes = {d: c.dim_sizes[d] for d in self.dims}
        tiled = self.tiled if form == "recurrent" else self.scan_tiled
        out.add(f"def _launch_{form}({self.signature()}, use_initial_state=True, store_final_state=True, "
                "cu_seqlens=None):")
        out.add(f'"""The {form} kernel, no autograd: ((readouts [B, T, H, ...]), (final states [N, H, ...])).', 1)
        out.add("", 0)
        out.add("use_initial_state=False: start from the declared initial values (_state is not read);", 1)
        out.add("store_final_state=False: the final states are not stored (None).", 1)
        out.add("cu_seqlens: N packed sequences in one launch (B = 1), a program row each; else N = B.", 1)
        out.add('"""', 1)
        out.add(f"_B, _T, _H = {first}.shape[0], {first}.shape[1], AXIS_SIZE", 1)
        out.add(f"_dtype, _device = _rt.real_dtype({first}), {first}.device", 1)
        out.add("_pk = _rt.Packing(cu_seqlens, _B, _T, _device)", 1)
        for s in self.states:
            t = c.cell_types[s]
            shape = ", ".join(str(sizes[d]) for d in t.dims)
            out.add(f"_ht_{s} = _rt.empty((_pk.N, _H{', ' if shape else ''}{shape}), _dtype, _device, {t.complex}) "
                    "if store_final_state else None", 1)
        for o in c.readouts:
            t = self.cell_ty(o)
            shape = ", ".join(str(sizes[d]) for d in t.dims)
            out.add(f"_out_{o} = _rt.readout_buffer((_B, _T, _H{', ' if shape else ''}{shape}), _dtype, _device, "
                    f"{t.complex})", 1)
        state_numel = self.state_numel()
        tiled_size = sizes[tiled] if tiled is not None else None
        out.add(f"_cfg = _rt.launch_config({form!r}, tiled_size={tiled_size}, state_numel={state_numel}, "
                f"param_numel={self.param_numel()}, device=_device)", 1)
        block_name = self.blocks.block(tiled) if tiled is not None else None
        grid = "(_pk.N, _H)" if tiled is None else f"(_pk.N, _H, triton.cdiv({tiled_size}, _m[{block_name!r}]))"
        consts = []
        for d in self.dims:
            block = "_c['block']" if d == tiled else str(_next_pow2(sizes[d]))
            consts.append(f"{self.blocks.size(d)}={sizes[d]}, {self.blocks.block(d)}={block}")
        if form == "scan":
            consts.append("BLOCK_T=_c['block_t']")
        out.add("def _meta(_c):  # the kernel's keyword arguments under launch configuration _c", 1)
        out.add("return dict(", 2)
        for const in consts:
            out.add(const + ",", 3)
        out.add("DTYPE=_rt.tl_dtype(_dtype), USE_INITIAL_STATE=use_initial_state, STORE_FINAL_STATE=store_final_state, "
                "IS_VARLEN=_pk.varlen,", 3)
        out.add("num_warps=_c['num_warps'])", 3)
        out.add("_args = (", 1)
        for n in c.op_streams:
            dims = tuple(sizes[d] for d in self.cell_ty(n).dims)
            out.add(f"*_rt.stream({n}, _B, _T, _H, {dims}, _dtype),", 2)
        for n in c.op_params:
            dims = tuple(sizes[d] for d in self.cell_ty(n).dims)
            out.add(f"*_rt.param({n}, _H, {dims}, _dtype),", 2)
        for i, s in enumerate(self.states):
            out.add(f"_rt.state_in(_state[{i}], _dtype) if use_initial_state else _rt.unread_address(_device), _ht_{s},", 2)
        for o in c.readouts:
            out.add(f"_out_{o},", 2)
        if self.args:
            out.add(f"_rt.cell_args([{', '.join(self.args)}], _dtype, _device),", 2)
        out.add("_pk.cu, _T,", 2)
        out.add(")", 1)
        kernel = self.kernel_name if form == "recurrent" else self.scan_kernel_name
        out.add("# the policy's configuration, or on a GPU the fastest of it and a few alternatives (triton_tune)", 1)
        out.add(f"_tt.launch({kernel}, lambda _m: {grid}, _args, _meta(_cfg),", 1)
        out.add(f"lambda: [_meta(_c) for _c in _rt.launch_alternatives({form!r}, _cfg, {tiled_size})])", 3)
        outs = ", ".join(f"torch.view_as_complex(_out_{o})" if self.cell_ty(o).complex else f"_out_{o}"
                         for o in c.readouts)
        finals = ", ".join(f"(torch.view_as_complex(_ht_{s}) if store_final_state else None)"
                           if c.cell_types[s].complex else f"_ht_{s}" for s in self.states)
        out.add(f"return ({outs},), ({finals},)", 1)

    def fused_form(self, out: _Lines, form: str, doc: list[str]) -> None:
        """``def <form>(...)`` running the form's fused kernel (``_launch_<form>``) under ``_rt.apply_form``: its
        backward is the recurrent backward kernel where the cell has one, else the torch twin's (``_twin_<form>``)
        recomputed. ``doc``: the docstring's lines (its first line after the opening quotes)."""
        kwdict = "{" + "".join(f"{a!r}: {a}, " for a in self.args) + "'cu_seqlens': cu_seqlens}"
        out.add(f"def {form}({self.signature()}{', ' if self.args else ', *, '}cu_seqlens=None, final_state=True):")
        out.add('"""' + doc[0], 1)
        for line in doc[1:]:
            out.add(line, 1 if line else 0)
        out.add("final_state=False: the kernel does not store the final states (they come back as None).", 1)
        if form == "scan" and self.scan_backward is not None:
            out.add("Backward (autograd): the scan's Triton backward kernel (the adjoint recurrence as a reverse", 1)
            out.add("associative scan over each block, the states recomputed from the one entering it).", 1)
        elif self.backward_kernel is not None:
            out.add("Backward (autograd): the Triton backward kernel (reverse-mode through the cell's step,", 1)
            out.add("states recomputed from checkpoints every ~sqrt(T) steps).", 1)
        else:
            out.add("Backward (autograd): no Triton kernel for this cell (BACKWARD says why) -- it recomputes", 1)
            out.add(f"the forward through the torch twin's {form} form.", 1)
        out.add('"""', 1)
        caveat = self.gpu_caveat()
        backward = ", backward=_backward_scan" if form == "scan" and self.scan_backward is not None else \
            ", backward=_backward_recurrent" if self.backward_kernel is not None else ""
        out.add(f"return _rt.apply_form(_launch_{form}, _twin_{form}, tuple(_state), ({', '.join(self.inputs)},), "
                f"{kwdict}, n_outs={len(self.c.readouts)}{f', gpu_caveat={caveat!r}' if caveat else ''}"
                f"{backward}, final_state=final_state)", 1)

    def wrappers(self, out: _Lines) -> None:
        kws = ", ".join(f"{a}={a}" for a in self.args)
        self.fused_form(out, "recurrent", [
            "The recurrence as one fused Triton kernel: ((readouts [B, T, H, ...]), (states [N, H, ...])).", "",
            "Streams [B, T, H, *dims], params [1, 1, H, *dims], _state: tuple of [N, H, *dims] tensors.",
            "cu_seqlens ([N + 1] token offsets, B = 1): N packed sequences in one launch; else N = B."])
        out.add()
        out.add()
        out.add(f"def step({self.signature()}):")
        out.add('"""One token: streams [B, H, *dims], params [1, H, *dims], state: tuple of [B, H, *dims].', 1)
        out.add("", 0)
        out.add(f"Returns ((readouts...), (new states...)). Readouts: {', '.join(self.c.readouts)}.", 1)
        out.add('"""', 1)
        lifted = ", ".join(f"{n}[:, None]" for n in self.inputs)
        out.add(f"_readouts, _state = recurrent(_state, {lifted}{', ' + kws if kws else ''})", 1)
        out.add("return tuple(_r[:, 0] for _r in _readouts), _state", 1)
        out.add()
        out.add()
        streams = tuple(n in self.c.op_streams for n in self.inputs)
        out.add("def _twin_recurrent(_state, *inputs, cu_seqlens=None, **args):")
        out.add('"""The torch twin\'s recurrent form (the backward recomputes through it; packed sequences: one', 1)
        out.add('call each)."""', 1)
        out.add(f"return _rt.twin_per_sequence(_TWIN.module.recurrent, _state, inputs, {streams!r}, args, cu_seqlens)",
                1)

    def gpu_caveat(self) -> str | None:
        """Why the compiled recurrent kernel is not trusted on a GPU (None: it is). benchmarks/gpu_check.py
        on an H200 (Triton 3.6, 2026-12-04) found the kernels with an in-kernel matrix inverse 0.3-2 %
        off the fp64 reference (the interpreter: 4e-6); such ops run their torch form on a GPU."""
        for st in self.cell.body:
            for e in ir.walk(st.value) if hasattr(st, "value") else ():
                if isinstance(e, ir.Call) and e.func in OPS and OPS[e.func].kind == "inverse":
                    return f"{e.func}() inside the cell: its compiled Triton kernel disagrees with the reference " \
                           "on the GPU (benchmarks/gpu_check.py)"
        return None

    def stream_ranks(self) -> dict[str, int]:
        """The rank of each stream input as the forms receive it, [B, T, H, *dims], for the streams that are not
        broadcast over the cell axis (a stream without it gets H = 1, which a form expands to the heads)."""
        c = self.c
        if not c.cell_axis:
            return {n: 3 + len(c.types[n].dims) for n in c.op_streams}
        return {n: 2 + len(c.types[n].dims) for n in c.op_streams if c.types[n].dims[:1] == (c.cell_axis,)}

    # ------------------------------------------------------------------ chunk form
    def chunk_unsupported(self, twin_source: str) -> str | None:
        """Why the Triton chunk form is not offered (None: it is)."""
        gap = triton_chunk_gap(self.c, self.p)
        if gap is not None or "chunk" not in self.p.modes:
            return gap
        if _TORCH_FORMS_IMPORT not in twin_source:
            return "the torch module does not import its forms as the Triton chunk form expects"
        return None

    # ------------------------------------------------------------------ scan form
    def scan_unsupported(self, twin_source: str) -> str | None:
        """Why the Triton scan form is not offered (None: it is). The torch twin scans a dense state with
        scan_dense and every other state with scan_diagonal, both of which seqdsl.runtime.triton_scan runs."""
        if "scan" not in self.p.modes:
            return None
        if _TORCH_FORMS_IMPORT not in twin_source:
            return "the torch module does not import its forms as the Triton scan form expects"
        return None

    def fused_scan_kernel(self) -> tuple[list[str] | None, str | None]:
        """(the fused scan kernel's lines, None), or (None, why the scan form is not one fused kernel)."""
        self.scan_tiled = None
        if any(rd.before for rd in self.p.reads):
            return None, "a readout reads a state before its update"
        dense = [sp.state for sp in self.p.states if sp.kind == "dense"]
        if dense:
            return None, f"the state {dense[0]} is dense: a matrix combine, which tl.associative_scan cannot take"
        self.scan_tiled = self.tiled         # split across programs as the recurrent kernel is, if it can be
        if self.tiled is not None:
            try:
                return self.kernel(self.tiled, scan=True), None
            except Unsupported:
                self.scan_tiled = None
        try:
            return self.kernel(None, scan=True), None
        except Unsupported as e:
            return None, str(e)

    def fused_scan_wrapper(self, out: _Lines) -> None:
        self.fused_form(out, "scan", [
            "Parallel-scan form as one fused Triton kernel: ((readouts [B, T, H, ...]), (states [N, H, ...])).", "",
            "A program per sequence, cell-axis element and tile of the state (SCAN_TILED_AXIS) steps through",
            "time BLOCK_T tokens at a time: it loads",
            "their stream values, evaluates the cell for all of them at once, scans each state's update",
            "(tl.associative_scan), applies the state carried from the previous block and stores the readouts:",
            "nothing per token and state leaves the registers. cu_seqlens ([N + 1] token offsets, B = 1): N",
            "packed sequences in one launch."])
        out.add()
        out.add()
        out.add("def _twin_scan(_state, *inputs, **kwargs):")
        out.add('"""The torch twin\'s scan form on triton_scan\'s kernel: the fused scan\'s backward where the cell', 1)
        out.add('has no Triton backward kernel, and its stand-in on a GPU where the kernels carry a caveat."""', 1)
        out.add("return _SCAN_TWIN.module.scan(tuple(_state), *inputs, **kwargs)", 1)

    def twin_form_wrapper(self, out: _Lines, form: str, twin: str, doc: list[str], chunked: bool) -> None:
        """``def <form>(...)``: the torch twin's function of that form, its form algorithms run by Triton."""
        varlen = form in varlen_forms(self.p)
        kwdict = "{" + "".join(f"{a!r}: {a}, " for a in self.args) \
            + ("'chunk_size': chunk_size, 'final_state': final_state, " if chunked else "") \
            + ("'cu_seqlens': cu_seqlens" if varlen else "") + "}"
        out.add(f"def {form}({self.signature()}{', chunk_size=64, final_state=True' if chunked else ''}"
                f"{', cu_seqlens=None' if varlen else ''}):")
        out.add(f'"""{"Chunkwise" if chunked else "Parallel-scan"} form. Returns ((readouts [B, T, H, ...]), '
                '(states [B, H, ...])).', 1)
        out.add("", 0)
        for line in doc:
            out.add(line, 1)
        out.add('"""', 1)
        out.add(f"return {twin}.module.{form}(tuple(_state), {', '.join(self.inputs)}, **{kwdict})", 1)

    def scan_wrapper(self, out: _Lines) -> None:
        self.twin_form_wrapper(out, "scan", "_SCAN_TWIN", [
            "The torch twin's scan function (the spec's token-parallel preparation, rendered from the IR)",
            "with its recurrences run by the Triton kernels of seqdsl.runtime.triton_scan: a diagonal one by",
            "an associative scan over blocks of time, the state carried between blocks; a dense one by chunks",
            "(each chunk's matrix product, the states entering the chunks, then every state). Backward",
            "(autograd): the preparation through torch; the recurrence by the same kernels run backwards in",
            "time (packed sequences too: one launch on the mirrored boundaries)."], chunked=False)

    def chunk_wrapper(self, out: _Lines) -> None:
        self.twin_form_wrapper(out, "chunk", "_CHUNK_TWIN", [
            "The torch twin's chunk function (the spec's token-parallel preparation, rendered from the IR)",
            "with its chunk stages run by the Triton kernels of seqdsl.runtime.triton_chunk: chunk-local",
            "cumsum of the log gates, (delta rule: the WY / UT stage,) the state entering each chunk, the",
            "outputs (fla's stages). Backward (autograd): the preparation through torch; the chunk stages",
            "by Triton backward kernels (ungated, scalar- and key-gated states, the delta rule through its",
            "WY / UT stage). Complex gated states run on the same real kernels (a phase rotation of q and k,",
            "then a realified state of twice the size: triton_chunk._complex_chunk_gated). Diagonal-plus-",
            "rank-1 states (RWKV-7) run triton_chunk.chunk_dplr: the same stages with 16-token chunks scored",
            "exactly, forward and backward (seqdsl.runtime.triton_dplr)."],
            chunked=True)

    # ------------------------------------------------------------------ module
    def module(self, header: str, twin_source: str) -> str:
        c = self.c
        why_not = dict(self.p.why_not)
        kernel_lines = None
        try:
            candidate = self.tile_candidate()
            try:
                kernel_lines = self.kernel(candidate)
            except Unsupported:
                if candidate is None:
                    raise
                kernel_lines = self.kernel(None)
        except Unsupported as e:
            why_not["recurrent"] = f"the Triton backend cannot express the cell: {e}"
        self.backward_kernel, backward_lines = None, None
        no_backward = "no recurrent kernel"
        if kernel_lines is not None:
            from seqdsl.codegen.triton_backward import BackwardKernel

            try:
                bk = BackwardKernel(self.with_lifted_invariants())
                backward_lines = bk.kernel()
                self.backward_kernel, no_backward = bk, None
            except Unsupported as e:
                no_backward = f"the torch twin (no Triton backward: {e})"
        modes = ("recurrent",) if kernel_lines is not None else ()
        no_scan = self.scan_unsupported(twin_source)
        if "scan" in self.p.modes and no_scan is None:
            modes += ("scan",)
        elif "scan" in self.p.modes:
            why_not["scan"] = no_scan
        scan_lines, unfused_scan = None, None
        if "scan" in modes:
            scan_lines, unfused_scan = self.fused_scan_kernel() if kernel_lines is not None else \
                (None, "no recurrent kernel")
        self.scan_backward, scan_backward_lines, self.no_scan_backward = None, None, None
        if scan_lines is not None and self.backward_kernel is not None:
            from seqdsl.codegen.triton_scan_backward import ScanBackwardKernel

            try:
                sbk = ScanBackwardKernel(self)
                scan_backward_lines, self.scan_backward = sbk.kernel(), sbk
            except Unsupported as e:
                self.no_scan_backward = str(e)
        no_chunk = self.chunk_unsupported(twin_source)
        if "chunk" in self.p.modes and no_chunk is None:
            modes += ("chunk",)
        elif "chunk" in self.p.modes:
            why_not["chunk"] = no_chunk
        if "conv" in self.p.modes:
            why_not["conv"] = "the Triton backend does not generate the conv (FFT) form of time-invariant cells " \
                              "(use the torch backend, whose conv form runs torch.fft)"
        header = re.sub(r"Forms: [^.]*\.", f"Forms (Triton): {', '.join(modes) or 'none'}.", header, count=1)
        out = _Lines()
        out.add(f'"""{header}"""')
        out.add()
        out.add("import torch")
        out.add("import triton")
        out.add("import triton.language as tl")
        out.add()
        out.add("from seqdsl.runtime import triton_lib as _tlib  # noqa: F401")
        out.add("from seqdsl.runtime import triton_runtime as _rt")
        out.add("from seqdsl.runtime import triton_tune as _tt")
        out.add()
        out.add(f"MODEL = {c.model.name!r}")
        out.add(f"INPUTS = {tuple(self.inputs)!r}")
        out.add(f"STREAMS = {tuple(c.op_streams)!r}")
        out.add(f"PARAMS = {tuple(c.op_params)!r}")
        out.add(f"ARGS = {({a: float(c.values[a]) for a in self.args})!r}")
        out.add(f"STATES = {tuple(self.states)!r}")
        out.add(f"READOUTS = {tuple(c.readouts)!r}")
        out.add(f"MODES = {modes!r}")
        out.add(f"WHY_NOT = {why_not!r}")
        out.add(f"GPU_CAVEAT = {self.gpu_caveat()!r}  # why the fused kernels run their torch form on a GPU (None: "
                "they do not)")
        varlen = ("recurrent",) * bool(kernel_lines) + tuple(f for f in varlen_forms(self.p) if f in modes)
        out.add(f"VARLEN_FORMS = {varlen!r}  # forms taking cu_seqlens (others: one call per sequence)")
        passthrough = {"recurrent": tuple(self.inputs)} if kernel_lines is not None else {}
        if scan_lines is not None:
            passthrough["scan"] = tuple(self.inputs)
        if "chunk" in modes:
            passthrough["chunk"] = passthrough_inputs(twin_source, "chunk", self.stream_ranks())
        out.add(f"PASSTHROUGH_INPUTS = {passthrough!r}  # read by the kernels as given: bf16 / fp16 stay so")
        direct = ("recurrent",) * (kernel_lines is not None) + ("scan",) * (scan_lines is not None) + tuple(
            f for f in ("chunk",) if f in modes and direct_readout(twin_source, f))
        out.add(f"DIRECT_READOUT_FORMS = {direct!r}  # whose kernels may store the readout in the op's output dtype")
        out.add(f"CLASS = {self.a.cls!r}")
        out.add(f"AXIS_SIZE = {self.axis_size}")
        out.add(f"BACKWARD = {('triton' if no_backward is None else no_backward)!r}  # the recurrent form's backward")
        if "scan" in modes:
            scan_kind = "fused" if scan_lines is not None else f"torch preparation + triton_scan ({unfused_scan})"
            out.add(f"SCAN = {scan_kind!r}  # the scan form: one fused kernel, or why not")
        if scan_lines is not None:
            scan_backward = "triton scan" if self.scan_backward is not None else \
                f"the recurrent backward kernel ({self.no_scan_backward})" if self.backward_kernel is not None else \
                "the torch twin's scan (the cell has no Triton backward kernel)"
            out.add(f"SCAN_BACKWARD = {scan_backward!r}  # the fused scan's backward")
        if kernel_lines is not None:
            out.add(f"TILED_AXIS = {self.tiled!r}  # the state axis split across programs (None: whole state)")
            if scan_lines is not None:
                out.add(f"SCAN_TILED_AXIS = {self.scan_tiled!r}  # the same, of the fused scan kernels")
            out.add()
            out.add()
            out.kernels(kernel_lines, self.launcher, backward_lines,
                        self.backward_kernel.launcher if backward_lines is not None else None)
            self.wrappers(out)
        if scan_lines is not None:
            out.section([])
            out.kernels(scan_lines, lambda o: self.launcher(o, "scan"), scan_backward_lines,
                        self.scan_backward.launcher if scan_backward_lines is not None else None)
            self.fused_scan_wrapper(out)
        elif "scan" in modes:
            out.add()
            out.add()
            self.scan_wrapper(out)
        if "chunk" in modes:
            out.add()
            out.add()
            self.chunk_wrapper(out)
        if modes:
            out.add()
            out.add()
            out.add("# The torch backend's module of the same spec: the backward recomputes through it; with its")
            out.add("# form algorithms taken from seqdsl.runtime.triton_scan / triton_chunk it is the forward of")
            out.add("# the scan / chunk form.")
            out.add(f"_TWIN_SOURCE = {_source_literal(twin_source)}")
            out.add("_TWIN = _rt.TorchTwin(_TWIN_SOURCE, MODEL)")
            if "scan" in modes:
                out.add("_SCAN_TWIN = _rt.TorchTwin(_rt.with_triton_forms(_TWIN_SOURCE, 'triton_scan'), "
                        "MODEL + '_triton_scan')")
            if "chunk" in modes:
                out.add("_CHUNK_TWIN = _rt.TorchTwin(_rt.with_triton_forms(_TWIN_SOURCE), MODEL + '_triton_chunk')")
        return out.text()


_ASSIGN = re.compile(r"^\s*(_(?:t|c|inv)\d+) = ")


def drop_dead_temporaries(lines: list[str]) -> list[str]:
    """Remove assignments to rendering temporaries that nothing reads (e.g. the unused imaginary part)."""
    while True:
        text = "\n".join(lines)
        dead = set()
        for line in lines:
            m = _ASSIGN.match(line)
            if m and len(re.findall(rf"\b{m.group(1)}\b", text)) == 1:
                dead.add(m.group(1))
        if not dead:
            return lines
        lines = [line for line in lines if not ((m := _ASSIGN.match(line)) and m.group(1) in dead)]


_ANY_ASSIGN = re.compile(r"^\s*([A-Za-z_][A-Za-z_0-9]*)\s*(?:\+)?= ")


def inline_single_use_temporaries(lines: list[str]) -> list[str]:
    """Substitute a temporary read exactly once into its reader, when nothing it reads changes in between."""
    changed = True
    while changed:
        changed = False
        text = "\n".join(lines)
        for i, line in enumerate(lines):
            m = _ASSIGN.match(line)
            if not m:
                continue
            name = m.group(1)
            uses = [j for j, other in enumerate(lines) if j != i and re.search(rf"\b{name}\b", other)]
            if len(uses) != 1 or len(re.findall(rf"\b{name}\b", text)) != 2 or uses[0] < i:
                continue
            j = uses[0]
            if len(line) - len(line.lstrip()) != len(lines[j]) - len(lines[j].lstrip()):
                continue             # another block (e.g. hoisted before the loop, read inside it)
            expr = line[m.end():]
            reads = set(re.findall(r"\b[A-Za-z_][A-Za-z_0-9]*\b", expr))
            between = [_ANY_ASSIGN.match(x) for x in lines[i + 1:j]]
            if any(b and b.group(1) in reads for b in between):
                continue
            target = _ANY_ASSIGN.match(lines[j])
            whole = target is not None and lines[j][target.end():].strip() == name
            value = expr if whole or _atomic(expr) else f"({expr})"
            lines[j] = re.sub(rf"\b{name}\b", lambda _: value, lines[j])
            del lines[i]
            changed = True
            break
    return lines


def _atomic(expr: str) -> bool:
    """Whether an expression's text can replace a name anywhere without parentheses."""
    expr = expr.strip()
    if expr.startswith("("):
        depth = 0
        for i, ch in enumerate(expr):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return i == len(expr) - 1
    try:
        node = ast.parse(expr, mode="eval").body
    except SyntaxError:
        return False
    return isinstance(node, (ast.Name, ast.Call, ast.Attribute, ast.Subscript, ast.Constant))


def _source_literal(text: str) -> str:
    """A readable literal of generated source text (raw triple-quoted where that is exact)."""
    if "'''" not in text and not text.endswith("\\"):
        return "r'''" + text + "'''"
    return repr(text)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def generate(c: Checked, a: Analysis, p: KernelPlan, header: str) -> str:
    """Source text of the Triton module of a checked model (the recurrent form; see the module doc)."""
    from seqdsl.codegen.torch_module import generate as torch_generate

    twin_header = header.replace("(triton backend)", "(torch backend, twin of a Triton module)")
    return _Gen(c, a, p).module(header, torch_generate(c, a, p, twin_header))
