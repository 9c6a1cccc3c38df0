"""The fp64 reference interpreter: executes any spec step by step in float64 / complex128.

It is the oracle every generated form is compared with, so it is written for obviousness, not
speed: a Python loop over time, one IR statement at a time, rendering each operation through the
op table (``seqdsl.codegen.ops``).

Runtime values are named tensors ``(tensor, names)``: the tensor's leading axes are the context's
*lead* axes (``[B, T]`` for streams and outputs, ``[B, H]`` in a cell over an axis of size H,
``[B]`` in a cell over nothing), followed by one axis per name. Elementwise operations align
operands by name with the same rule the type checker uses (``typecheck.broadcast``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from seqdsl import ir
from seqdsl.codegen.ops import CONSTANTS, LAYER_INPUT, OPS
from seqdsl.errors import SpecError
from seqdsl.typecheck import Checked, ImplicitParam, broadcast, check
from seqdsl.runtime.op import packed_bounds

REAL = torch.float64
COMPLEX = torch.complex128


@dataclass
class NT:
    """A named tensor: ``t`` has ``lead`` leading axes, then one axis per entry of ``names``."""

    t: torch.Tensor
    names: tuple


def _align(v: NT, target: tuple, nlead: int) -> torch.Tensor:
    """v's tensor with its named axes permuted and unsqueezed to the order of ``target``."""
    if v.names == target:
        return v.t
    t = v.t
    while t.dim() < nlead + len(v.names):      # scalars without lead axes
        t = t.unsqueeze(0)
    perm = list(range(nlead)) + [nlead + v.names.index(n) for n in target if n in v.names]
    t = t.permute(perm)
    shape = list(t.shape[:nlead])
    i = nlead
    for n in target:
        if n in v.names:
            shape.append(t.shape[i])
            i += 1
        else:
            shape.append(1)
    return t.reshape(shape)


_CALLABLES: dict[str, object] = {}


def op_callable(name: str):
    """A Python function of the op table's torch template (built once per op)."""
    if name not in _CALLABLES:
        op = OPS[name]
        params = [f"_a{i}" for i in range(op.arity)]
        opts = {k: k for k in op.options}
        body = op.torch.format(*params, **opts)
        sig = ", ".join(params + [f"{k}={v!r}" for k, v in op.options.items()])
        _CALLABLES[name] = eval(f"lambda {sig}: {body}", {"torch": torch})  # noqa: S307 - our own table
    return _CALLABLES[name]


class _Eval:
    """Evaluates expressions of one context (streams, a cell step, outputs, or an initialiser)."""

    def __init__(self, checked: Checked, kind: str, nlead: int, lookup, params: dict[str, torch.Tensor] | None = None,
                 init_shape: tuple = (), generator: torch.Generator | None = None):
        self.c = checked
        self.kind = kind
        self.nlead = nlead
        self.lookup = lookup
        self.params = params or {}
        self.init_shape = init_shape
        self.gen = generator

    def number(self, e: ir.Expr) -> float:
        v = self.ev(e)
        return float(v.t.reshape(-1)[0].real)

    def ev(self, e: ir.Expr) -> NT:
        if isinstance(e, ir.Num):
            return NT(torch.tensor(float(e.value), dtype=REAL), ())
        if isinstance(e, ir.Imag):
            return NT(torch.tensor(complex(0.0, e.value), dtype=COMPLEX), ())
        if isinstance(e, ir.Name):
            if e.id in CONSTANTS:
                return NT(torch.tensor(CONSTANTS[e.id], dtype=REAL), ())
            if e.id in self.c.values and self.c.kinds.get(e.id) in ("hparam", "dim"):
                return NT(torch.tensor(float(self.c.values[e.id]), dtype=REAL), ())
            return self.lookup(e.id)
        if isinstance(e, ir.Unary):
            v = self.ev(e.operand)
            return NT(-v.t, v.names) if e.op == "-" else v
        if isinstance(e, ir.Binary):
            return self.binary(e)
        if isinstance(e, ir.Index):
            v = self.ev(e.target)
            return NT(v.t.select(self._lead(v) , e.index), v.names[1:])
        if isinstance(e, ir.Call):
            return self.call(e)
        raise SpecError.at(f"the interpreter cannot evaluate {type(e).__name__}", e.span)

    def _lead(self, v: NT) -> int:
        return v.t.dim() - len(v.names)

    def elementwise(self, fn, *vs: NT) -> NT:
        names: tuple = ()
        for v in vs:
            names = broadcast(names, v.names)
        nlead = max(self._lead(v) for v in vs)
        ts = [_align(self._lift(v, nlead), names, nlead) for v in vs]
        return NT(fn(*ts), names)

    def _lift(self, v: NT, nlead: int) -> NT:
        t = v.t
        while t.dim() - len(v.names) < nlead:
            t = t.unsqueeze(0)
        return NT(t, v.names)

    def binary(self, e: ir.Binary) -> NT:
        a, b = self.ev(e.left), self.ev(e.right)
        if e.op == "@":
            nlead = max(self._lead(a), self._lead(b))
            a, b = self._lift(a, nlead), self._lift(b, nlead)
            letters = "ijk"
            sa = letters[: len(a.names)]
            sb = sa[-1] + "l" if len(b.names) == 2 else sa[-1]
            out = sa[:-1] + sb[1:]
            ta, tb = a.t, b.t
            if ta.is_complex() != tb.is_complex():
                ta, tb = ta.to(COMPLEX), tb.to(COMPLEX)
            t = torch.einsum(f"...{sa},...{sb}->...{out}", ta, tb)
            return NT(t, a.names[:-1] + b.names[1:])
        fn = {"+": torch.add, "-": torch.sub, "*": torch.mul, "/": torch.div, "**": torch.pow}[e.op]
        return self.elementwise(fn, a, b)

    def call(self, e: ir.Call) -> NT:
        op = OPS.get(e.func)
        if op is None:
            return self.initialiser(e)
        if op.kind == "token":
            return self.token(e)
        if op.kind == "eye":
            n = self.c.dim_sizes[e.args[0].id]
            return NT(torch.eye(n, dtype=REAL), (e.args[0].id, e.args[0].id))
        if op.kind == "rename":
            v, old, new = self.ev(e.args[0]), e.args[1].id, e.args[2].id
            return NT(v.t, tuple(new if n == old else n for n in v.names))
        if op.kind == "inverse":
            v = self.ev(e.args[0])
            return NT(op_callable(e.func)(v.t), v.names)
        kwargs = {k.name: self.number(k.value) for k in e.kwargs}
        args = [self.ev(a) for a in e.args]
        fn = op_callable(e.func)
        if op.kind in ("unary", "lastaxis", "norm", "reduce", "transpose"):
            v = args[0]
            t = fn(v.t, **kwargs)
            names = v.names[:-1] if op.kind == "reduce" else v.names[::-1] if op.kind == "transpose" else v.names
            out = NT(t, names)
            if op.kind == "norm" and self.kind in ("stream", "out"):
                owned = self.c.implicit_of[id(e)]
                out = NT(out.t * self.params[owned[0]].to(out.t.dtype), out.names)
                if len(owned) > 1:
                    out = NT(out.t + self.params[owned[1]].to(out.t.dtype), out.names)
            return out
        if op.kind == "outer":
            a, b = args
            nlead = max(self._lead(a), self._lead(b))
            a, b = self._lift(a, nlead), self._lift(b, nlead)
            return NT(fn(a.t, b.t), a.names + b.names)
        if op.kind == "complex":
            return self.elementwise(lambda re, im: torch.complex(re.to(REAL), im.to(REAL)), *args)
        return self.elementwise(fn, *args)

    # -------------------------------------------------------------- token-parallel operators ([B, T] lead)
    def token(self, e: ir.Call) -> NT:
        owned = self.c.implicit_of.get(id(e), ())
        if e.func == "position":
            T = self.lookup(LAYER_INPUT).t.shape[1]
            return NT(torch.arange(T, dtype=REAL).reshape(1, T), ())
        v = self.ev(e.args[0])
        v = self._lift(v, self.nlead)
        B, T = v.t.shape[0], v.t.shape[1]
        if e.func in ("linear", "lowrank"):
            out_dims = self._out_dims(owned[0] if e.func == "linear" else owned[1])
            flat = v.t.expand(B, T, *v.t.shape[2:]).reshape(B, T, -1)
            if e.func == "linear":
                y = flat @ self.params[owned[0]].T
            else:
                y = (flat @ self.params[owned[0]].T) @ self.params[owned[1]].T
            bias = [n for n in owned if n.endswith("_bias") or "proj_bias" in n]
            if bias:
                y = y + self.params[bias[0]]
            sizes = [self.c.dim_sizes[d] for d in out_dims]
            return NT(y.reshape(B, T, *sizes), out_dims)
        if e.func == "conv":
            width = self.params[owned[0]].shape[-1]
            flat = v.t.reshape(B, T, -1)
            w = self.params[owned[0]]                       # [C, width]
            padded = torch.nn.functional.pad(flat, (0, 0, width - 1, 0))
            y = sum(padded[:, j:j + T] * w[:, j] for j in range(width))
            return NT(y.reshape(v.t.shape), v.names)
        if e.func == "shift":
            n = int(next((self.number(k.value) for k in e.kwargs if k.name == "n"), 1))
            if n == 0:
                return v
            y = torch.zeros_like(v.t)
            if n < T:
                y[:, n:] = v.t[:, : T - n]
            return NT(y, v.names)
        raise SpecError.at(f"no interpreter rule for {e.func}()", e.span)

    def _out_dims(self, name: str) -> tuple:
        p = next(p for p in self.c.implicit if p.name == name)
        return p.groups[0]

    # -------------------------------------------------------------- initialisers (no lead axes)
    def initialiser(self, e: ir.Call) -> NT:
        shape = self.init_shape
        sizes = [self.c.dim_sizes[d] for d in shape]
        args = [self.number(a) for a in e.args if not (e.func == "index")]
        g = self.gen
        if e.func == "uniform":
            return NT(torch.rand(sizes, generator=g, dtype=REAL) * (args[1] - args[0]) + args[0], shape)
        if e.func == "log_uniform":
            lo, hi = math.log(args[0]), math.log(args[1])
            return NT(torch.exp(torch.rand(sizes, generator=g, dtype=REAL) * (hi - lo) + lo), shape)
        if e.func == "normal":
            return NT(torch.randn(sizes, generator=g, dtype=REAL) * args[1] + args[0], shape)
        if e.func == "zeros":
            return NT(torch.zeros(sizes, dtype=REAL), shape)
        if e.func == "ones":
            return NT(torch.ones(sizes, dtype=REAL), shape)
        if e.func == "index":
            axis = e.args[0].id
            return NT(torch.arange(self.c.dim_sizes[axis], dtype=REAL), (axis,))
        if e.func == "xavier":
            bound = math.sqrt(6.0 / (sizes[0] + sizes[1]))
            return NT((torch.rand(sizes, generator=g, dtype=REAL) * 2 - 1) * bound, shape)
        if e.func == "orthogonal":
            q, r = torch.linalg.qr(torch.randn(sizes, generator=g, dtype=REAL))
            return NT(q * torch.sign(torch.diagonal(r)), shape)
        if e.func == "hippo_legs":
            return NT(hippo_legs(sizes[0]), shape)
        if e.func == "hippo_legs_b":
            return NT(torch.sqrt(2 * torch.arange(sizes[0], dtype=REAL) + 1), shape)
        if e.func == "hippo_n_imag":
            return NT(hippo_n_imag(sizes[-1]), shape[-1:])
        if e.func == "legt":
            return NT(legt(sizes[0]), shape)
        if e.func == "legt_b":
            i = torch.arange(sizes[0], dtype=REAL)
            return NT((2 * i + 1) * (-1.0) ** i, shape)
        if e.func == "reservoir":
            return NT(reservoir(sizes[0], args[0], args[1], g), shape)
        raise SpecError.at(f"unknown initialiser '{e.func}'", e.span)


def hippo_legs(n: int) -> torch.Tensor:
    """HiPPO-LegS state matrix (Gu et al. 2020): A[i, j] = -sqrt(2i+1) sqrt(2j+1) (i > j), -(i+1) (i = j)."""
    i = torch.arange(n, dtype=REAL)
    r = torch.sqrt(2 * i + 1)
    a = -torch.tril(r[:, None] * r[None, :], diagonal=-1)
    return a - torch.diag(i + 1)


def legt(n: int) -> torch.Tensor:
    """LegT / LMU state matrix (Voelker et al. 2019): A[i, j] = (2i+1) * (-1 if i < j else (-1)^(i-j+1))."""
    i = torch.arange(n, dtype=REAL)
    sign = torch.where(i[:, None] < i[None, :], -1.0, (-1.0) ** (i[:, None] - i[None, :] + 1))
    return (2 * i[:, None] + 1) * sign


def reservoir(n: int, density: float, radius: float, g: torch.Generator) -> torch.Tensor:
    """A sparse random reservoir (Jaeger 2001): entries U[-1, 1) kept with probability density, rescaled to
    spectral radius ``radius`` (left unscaled if the draw is nilpotent, i.e. its spectral radius is 0)."""
    keep = torch.rand(n, n, generator=g, dtype=REAL) < density
    w = (torch.rand(n, n, generator=g, dtype=REAL) * 2 - 1) * keep
    rho = torch.linalg.eigvals(w).abs().max()
    return w * (radius / rho) if rho > 1e-12 else w


def hippo_n_imag(n: int) -> torch.Tensor:
    """Imaginary parts of the eigenvalues of HiPPO-N (Gu et al. 2022, S4D; DSS's skew-HiPPO), descending.

    HiPPO-LegS of size 2n plus P P^T (P_i = sqrt(i + 1/2)) is normal: -1/2 I + S with S skew-symmetric,
    S[i, j] = -sqrt(2i+1) sqrt(2j+1) / 2 (i > j). Its eigenvalues are -1/2 +- i w_k; this returns the n
    positive w_k, largest first (the half kept with conjugate symmetry).
    """
    r = torch.sqrt(2 * torch.arange(2 * n, dtype=REAL) + 1)
    lower = torch.tril(r[:, None] * r[None, :], diagonal=-1) / 2
    skew = lower.T - lower
    w = torch.linalg.eigvalsh(1j * skew.to(COMPLEX))         # i S is Hermitian: S's eigenvalues are -i w
    return torch.sort(w, descending=True).values[:n].contiguous()


class Reference:
    """``seqdsl.reference(model)``: the step-by-step fp64 oracle of a spec.

    Calling it runs the cell (the op), exactly like a compiled op::

        o, final_state = ref(q=q, k=k, v=v, g=g, initial_state=None, output_final_state=True,
                             cu_seqlens=None, scale=None)

    Streams are ``[B, T, *dims]`` (the cell axis first among dims, fla's ``[B, T, H, D]``),
    params are their declared shape. The final state is ``[N, (H), *state dims]`` for one state and
    a tuple for several. ``layer(x, params)`` runs the whole layer; ``init_params(seed)`` samples
    parameters with the spec's initialisers.
    """

    def __init__(self, model: ir.Model | Checked, **overrides):
        self.checked = model if isinstance(model, Checked) else check(model, overrides)
        self.model = self.checked.model
        if self.model.cell is None:
            raise SpecError("the model has no cell to run")

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.checked.op_inputs

    @property
    def args(self) -> dict[str, float]:
        return {a.name: float(self.checked.values[a.name]) for a in self.model.cell.args}

    def __call__(self, initial_state=None, output_final_state: bool = False, cu_seqlens=None, mode=None, **inputs):
        c = self.checked
        args = self.args
        for name in list(inputs):
            if name in args:
                value = inputs.pop(name)
                if value is not None:
                    args[name] = float(value)
        missing = [n for n in c.op_inputs if n not in inputs]
        extra = [n for n in inputs if n not in c.op_inputs]
        if missing or extra:
            raise TypeError(f"{self.model.name}: expected inputs {c.op_inputs}; missing {missing}, unexpected {extra}")
        tensors = {n: self._fp64(t) for n, t in inputs.items()}
        streams = {n: tensors[n] for n in c.op_streams}
        params = {n: tensors[n] for n in c.op_params}
        if cu_seqlens is None:
            return self._run(streams, params, args, initial_state, output_final_state)
        any_stream = next(iter(streams.values()))
        bounds = packed_bounds(cu_seqlens, any_stream.shape[0], any_stream.shape[1], who=self.model.name)
        outs, finals = [], []
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            h0 = None if initial_state is None else self._index_state(initial_state, i)
            o, ht = self._run({n: s[:, lo:hi] for n, s in streams.items()}, params, args, h0, True)
            outs.append(o)
            finals.append(ht)
        o = _cat_outputs(outs)
        if not output_final_state:
            return o, None
        if isinstance(finals[0], tuple):
            return o, tuple(torch.cat([f[j] for f in finals]) for j in range(len(finals[0])))
        return o, torch.cat(finals)

    @staticmethod
    def _index_state(state, i):
        if isinstance(state, (tuple, list)):
            return tuple(s[i:i + 1] for s in state)
        return state[i:i + 1]

    @staticmethod
    def _fp64(t) -> torch.Tensor:
        t = torch.as_tensor(t)
        return t.to(COMPLEX) if t.is_complex() else t.to(REAL)

    def state_init(self, name: str, params: dict[str, torch.Tensor] | None = None,
                   args: dict[str, float] | None = None) -> torch.Tensor:
        """The declared initial value of the state ``name`` for one sequence: [H, *dims] with a cell axis, else
        [*dims] (fp64, complex128 for a complex state). It may read numbers, dims, args (``args``, default the
        cell's) and params, given as the op takes them (``[H, ...]``): a param it reads that ``params`` lacks
        raises ValueError naming it."""
        c, cell = self.checked, self.model.cell
        axis = cell.over
        nlead = 2 if axis else 1
        args = self.args if args is None else args
        params = params or {}
        st = next(d for d in cell.states if d.name == name)

        def lookup(n):
            if n in args:
                return NT(torch.tensor(args[n], dtype=REAL), ())
            if n in params:
                t, dims = self._fp64(params[n]), c.types[n].dims
                if axis and dims[:1] == (axis,):
                    return NT(t.unsqueeze(0), dims[1:])
                return NT(t.reshape((1,) * nlead + tuple(t.shape)), dims)
            raise ValueError(f"{self.model.name}: the initial value of the state '{name}' reads the param '{n}', "
                             f"which the op does not take; pass initial_state (a layer from seqdsl.build computes "
                             f"it from its params)")

        ty = c.cell_types[name]
        sizes = tuple(c.dim_sizes[d] for d in ty.dims)
        ev = _Eval(c, "state_init", nlead, lookup)
        value = _align(ev._lift(ev.ev(st.init), nlead), ty.dims, nlead).to(COMPLEX if ty.complex else REAL)
        return value.expand(((1, c.dim_sizes[axis]) if axis else (1,)) + sizes)[0]

    def initial_states(self, batch: int, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...] | None:
        """The states' declared initial values for ``batch`` sequences ([batch, H, *dims] each), or None when none of
        them reads a param (the op then makes them itself): what a layer passes as ``initial_state``."""
        reads = {n.id for st in self.model.cell.states for n in ir.names_in(st.init)}
        if not any(self.checked.kinds.get(n) == "param" for n in reads):
            return None
        values = (self.state_init(st.name, params) for st in self.model.cell.states)
        return tuple(v.expand((batch,) + tuple(v.shape)) for v in values)

    def _run(self, streams, params, args, initial_state, output_final_state):
        c, cell = self.checked, self.model.cell
        axis = cell.over
        any_stream = next(iter(streams.values()), None)
        if any_stream is None:
            raise ValueError("the op needs at least one stream")
        B, T = any_stream.shape[0], any_stream.shape[1]
        nlead = 2 if axis else 1
        H = c.dim_sizes[axis] if axis else None

        def cell_param(name):
            t = params[name]
            dims = c.types[name].dims
            if axis and dims[:1] == (axis,):
                return NT(t.unsqueeze(0), dims[1:])
            return NT(t.reshape((1,) * nlead + tuple(t.shape)), dims)

        def cell_stream(name, t_index):
            t = streams[name][:, t_index]
            dims = c.types[name].dims
            if axis and dims[:1] == (axis,):
                return NT(t, dims[1:])
            return NT(t.unsqueeze(1) if axis else t, dims)

        env: dict[str, NT] = {}
        step = {"t": 0}

        def lookup(name):
            if name in env:
                return env[name]
            if name in args:
                return NT(torch.tensor(args[name], dtype=REAL), ())
            if name in params:
                return cell_param(name)
            if name in streams:
                return cell_stream(name, step["t"])
            raise SpecError(f"the interpreter has no value for '{name}'")

        ev = _Eval(c, "cell", nlead, lookup)
        lead_shape = (B, H) if axis else (B,)
        states = [s.name for s in cell.states]
        h0 = initial_state
        if h0 is not None and not isinstance(h0, (tuple, list)):
            h0 = (h0,)
        if h0 is not None and len(h0) != len(states):
            raise ValueError(f"initial_state has {len(h0)} tensors; the cell has {len(states)} states {states}")
        for i, st in enumerate(cell.states):
            ty = c.cell_types[st.name]
            sizes = tuple(c.dim_sizes[d] for d in ty.dims)
            dtype = COMPLEX if ty.complex else REAL
            if h0 is not None:
                value = self._fp64(h0[i]).to(dtype)
                expected = lead_shape + sizes
                if tuple(value.shape) != expected:
                    raise ValueError(f"initial_state for '{st.name}' has shape {tuple(value.shape)}; expected {expected}")
            else:
                value = self.state_init(st.name, params, args)
                value = value.expand(lead_shape + sizes).clone()
            env[st.name] = NT(value, ty.dims)
        outputs: dict[str, list] = {r: [] for r in c.readouts}
        for t in range(T):
            step["t"] = t
            for stmt in cell.body:
                if isinstance(stmt, ir.Update):
                    ty = c.cell_types[stmt.target]
                    v = ev.ev(stmt.value)
                    v = _align(ev._lift(v, nlead), ty.dims, nlead)
                    sizes = tuple(c.dim_sizes[d] for d in ty.dims)
                    value = v.expand(lead_shape + sizes)
                    env[stmt.target] = NT(value.to(COMPLEX) if ty.complex else value, ty.dims)
                elif isinstance(stmt, ir.Local):
                    env[stmt.name] = ev.ev(stmt.value)
            for r in c.readouts:
                v = env[r]
                ty = c.cell_types[r]
                sizes = tuple(c.dim_sizes[d] for d in ty.dims)
                outputs[r].append(_align(ev._lift(v, nlead), ty.dims, nlead).expand(lead_shape + sizes))
            for stmt in cell.body:   # locals are per step
                if isinstance(stmt, ir.Local):
                    env.pop(stmt.name, None)
        outs = []
        for r in c.readouts:
            ty = c.cell_types[r]
            sizes = tuple(c.dim_sizes[d] for d in ty.dims)
            if outputs[r]:
                outs.append(torch.stack(outputs[r], dim=1))
            else:
                outs.append(torch.zeros((B, 0) + lead_shape[1:] + sizes,
                                        dtype=COMPLEX if ty.complex else REAL))
        o = outs[0] if len(outs) == 1 else tuple(outs)
        if not output_final_state:
            return o, None
        finals = tuple(env[s].t.clone() for s in states)
        return o, finals[0] if len(finals) == 1 else finals

    # -------------------------------------------------------------- whole layer
    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter of the layer (declared and implicit) and its tensor shape."""
        c = self.checked
        shapes = {p.name: tuple(c.dim_sizes[d] for d in c.types[p.name].dims) for p in self.model.params}
        for p in c.implicit:
            shapes[p.name] = implicit_shape(c, p)
        return shapes

    def init_params(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """Sample every parameter with the spec's initialisers (implicit ones: see ``implicit_init``)."""
        c = self.checked
        g = torch.Generator().manual_seed(seed)
        out: dict[str, torch.Tensor] = {}
        for p in self.model.params:
            dims = c.types[p.name].dims
            ev = _Eval(c, "init", 0, lambda n: (_ for _ in ()).throw(SpecError(f"'{n}' in an initialiser")),
                       init_shape=dims, generator=g)
            v = ev.ev(p.init)
            sizes = tuple(c.dim_sizes[d] for d in dims)
            t = _align(v, dims, 0).expand(sizes).clone()
            out[p.name] = t.to(COMPLEX) if c.types[p.name].complex else t.real if t.is_complex() else t
        for p in c.implicit:
            out[p.name] = implicit_init(c, p, g)
        return out

    def layer(self, x: torch.Tensor, params: dict[str, torch.Tensor], initial_state=None,
              output_final_state: bool = False, cu_seqlens=None):
        """Run the whole layer in fp64: x [B, T, d_model] -> y [B, T, d_model] (and the final state)."""
        c = self.checked
        x = self._fp64(x)
        if cu_seqlens is not None:
            bounds = [int(b) for b in cu_seqlens]
            ys, finals = [], []
            for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
                h0 = None if initial_state is None else self._index_state(initial_state, i)
                y, ht = self.layer(x[:, lo:hi], params, h0, True)
                ys.append(y)
                finals.append(ht)
            y = torch.cat(ys, dim=1)
            if not output_final_state:
                return y, None
            if isinstance(finals[0], tuple):
                return y, tuple(torch.cat([f[j] for f in finals]) for j in range(len(finals[0])))
            return y, torch.cat(finals)
        values, params = self._streams(x, params)
        if initial_state is None:   # states that start from a param: the op cannot make them
            initial_state = self.initial_states(x.shape[0], params)
        inputs = {n: values[n].t for n in c.op_streams}
        inputs.update({n: params[n] for n in c.op_params})
        o, final = self(initial_state=initial_state, output_final_state=output_final_state, **inputs)
        outs = (o,) if len(c.readouts) == 1 else o
        for r, t in zip(c.readouts, outs):
            values[r] = NT(t, c.types[r].dims)
        ev = _Eval(c, "out", 2, self._lookup(values, params), params=params)
        for od in self.model.outs:
            values[od.name] = ev.ev(od.value)
        y = values["y"]
        return _align(ev._lift(y, 2), c.types["y"].dims, 2), final

    def op_inputs(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The op's inputs (streams computed from x, and the params the cell reads), fp64."""
        values, params = self._streams(self._fp64(x), params)
        out = {n: values[n].t.contiguous() for n in self.checked.op_streams}
        out.update({n: params[n] for n in self.checked.op_params})
        return out

    def _lookup(self, values, params):
        c = self.checked

        def lookup(name):
            if name in values:
                return values[name]
            if name in params and name in c.types:
                dims = c.types[name].dims
                return NT(params[name].reshape((1, 1) + tuple(params[name].shape)), dims)
            raise SpecError(f"the interpreter has no value for '{name}'")

        return lookup

    def _streams(self, x, params):
        c = self.checked
        params = {n: self._fp64(t) for n, t in params.items()}
        values: dict[str, NT] = {LAYER_INPUT: NT(x, c.types[LAYER_INPUT].dims)}
        ev = _Eval(c, "stream", 2, self._lookup(values, params), params=params)
        for s in self.model.streams:
            v = ev.ev(s.value)
            ty = c.types[s.name]
            sizes = tuple(c.dim_sizes[d] for d in ty.dims)
            t = _align(ev._lift(v, 2), ty.dims, 2).expand(x.shape[:2] + sizes)
            values[s.name] = NT(t, ty.dims)
        return values, params

    def _unused(self, x, params, lookup_values):  # pragma: no cover - replaced by _streams
        raise NotImplementedError


def _cat_outputs(outs):
    if isinstance(outs[0], tuple):
        return tuple(torch.cat([o[j] for o in outs], dim=1) for j in range(len(outs[0])))
    return torch.cat(outs, dim=1)


def implicit_shape(c: Checked, p: ImplicitParam) -> tuple[int, ...]:
    """Tensor shape of an implicit parameter: each group of dims becomes one axis."""
    return tuple(c.size(g) for g in p.groups)


def implicit_init(c: Checked, p: ImplicitParam, g: torch.Generator) -> torch.Tensor:
    """Default initialisation of implicit parameters (as torch.nn does for the same layers).

    linear / lowrank weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (nn.Linear); biases 0;
    conv kernels: U(-1/sqrt(width), 1/sqrt(width)) (nn.Conv1d, depthwise); norm scales 1, norm biases 0.
    """
    shape = implicit_shape(c, p)
    if p.role in ("weight", "lora_a", "lora_b", "conv"):
        fan_in = shape[-1]
        bound = 1.0 / math.sqrt(fan_in)
        return (torch.rand(shape, generator=g, dtype=REAL) * 2 - 1) * bound
    if p.role == "norm":
        return torch.ones(shape, dtype=REAL)
    return torch.zeros(shape, dtype=REAL)
