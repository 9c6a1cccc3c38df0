"""The op a compiled spec returns: fla-compatible calling conventions around a generated module.

    o, final_state = op(q=q, k=k, v=v, g=g, initial_state=None, output_final_state=True,
                        mode="chunk", cu_seqlens=None, scale=None)

Streams are ``[B, T, *dims]`` (the cell axis first among dims: fla's ``[B, T, H, D]``), params their
declared shape. States are ``[N, H, *dims]`` (``[N, *dims]`` for a cell over no axis), one tensor or
a tuple in declaration order, returned in fp32 (fp64 for fp64 inputs; complex for complex states).
Computation runs in fp32 for fp32/bf16/fp16 inputs and in fp64 for fp64 inputs; outputs come back
in the dtype of the first stream. bf16 / fp16 inputs that a Triton form hands to its kernels unchanged
(the module's ``PASSTHROUGH_INPUTS``) reach them as given; the kernels convert them as they load them.
As fla's functions, the op moves no bytes for what the caller does not ask for: an initial state not given (and
declared ``= 0``) is one broadcast zero that the chunk kernels do not read (``is_zero_initial_state``), and without
``output_final_state`` a form that takes ``final_state`` (the chunk forms) is told not to store the final states.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect

import torch


LARGE_VECTOR_STATE = 1024   # numbers per sequence above which vector states run as a loop by default


_LOW_PRECISION_INPUTS = contextvars.ContextVar("seqdsl_low_precision_inputs", default=None)


def is_low_precision(t) -> bool:
    """Whether a tensor (or None) is bf16 / fp16: inputs the op computes in fp32 but whose rounding is coarser."""
    return t is not None and t.dtype in (torch.bfloat16, torch.float16)


def low_precision_of(*tensors) -> torch.dtype | None:
    """The low-precision dtype among these tensors (None entries allowed): bf16 if any is bf16, else fp16 if any
    is fp16, else None."""
    found = {t.dtype for t in tensors if is_low_precision(t)}
    return torch.bfloat16 if torch.bfloat16 in found else torch.float16 if found else None


def low_precision_inputs() -> torch.dtype | None:
    """bf16 / fp16 if the op running now was given inputs of that dtype (``low_precision_of``), else None. The op
    computes in fp32, so its forms only see fp32 tensors; the Triton chunk kernels' launch policy asks this to
    round their tl.dot operands as fla does for such inputs."""
    return _LOW_PRECISION_INPUTS.get()


@contextlib.contextmanager
def _setting(var: contextvars.ContextVar, value):
    """Inside: ``var`` holds ``value``; restored after."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def _inputs_precision(low: torch.dtype | None):
    return _setting(_LOW_PRECISION_INPUTS, low)


_READOUT_DTYPE = contextvars.ContextVar("seqdsl_readout_dtype", default=None)


def readout_dtype() -> torch.dtype | None:
    """bf16 / fp16 if the op running now returns its readouts in that dtype and its form returns them untouched
    from its kernels (the module's DIRECT_READOUT_FORMS: the fused recurrent kernel, a chunk form with one
    chunk call and nothing after it): the kernels may then store them in that dtype (the one rounding the op's
    cast would do), else None."""
    return _READOUT_DTYPE.get()


def readouts_in(dtype: torch.dtype | None):
    """A context inside which ``readout_dtype()`` is ``dtype`` (None: the compute dtype)."""
    return _setting(_READOUT_DTYPE, dtype)


_ZERO_INITIAL_STATES = contextvars.ContextVar("seqdsl_zero_initial_states", default=())


def _in_compute_precision(state: torch.Tensor, compute: torch.dtype) -> torch.Tensor:
    """A final state in the call's compute precision (fp32 / complex64 for fp32 inputs): the forms of cells whose
    matrices are computed in fp64 (``_ops.eye``: an exact identity before an inverse) return fp64 states."""
    if compute == torch.float32 and state.dtype in (torch.float64, torch.complex128):
        return state.to(torch.complex64 if state.is_complex() else torch.float32)
    return state


def is_zero_initial_state(t) -> bool:
    """Whether ``t`` is one of the initial states that the op running now made as zeros (no initial_state given, a
    state declared ``= 0``): a form's kernels may start from zero without reading it, as fla's initial_state=None."""
    return t is not None and any(t is z for z in _ZERO_INITIAL_STATES.get())


def _zero_initial_states(states: tuple):
    """A context inside which ``is_zero_initial_state`` is true of exactly these tensors."""
    return _setting(_ZERO_INITIAL_STATES, tuple(states))


def packed_bounds(cu_seqlens, B: int, T: int, allow_empty: bool = True, who: str = "") -> list[int]:
    """cu_seqlens as ints, checked (the one validator of every form, Triton kernels included): the batch size is
    1 and the bounds rise from 0 to T, strictly where ``allow_empty`` is False. ``who`` prefixes the error."""
    prefix = f"{who}: " if who else ""
    if B != 1:
        raise ValueError(f"{prefix}with cu_seqlens the batch size must be 1; got {B}")
    bounds = [int(b) for b in cu_seqlens]
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != T or any(n < 0 for n in lengths) or (
            not allow_empty and 0 in lengths):
        rising = "rise from 0 to T" if allow_empty else "rise strictly from 0 to T (no empty sequences)"
        raise ValueError(f"{prefix}cu_seqlens must {rising} = {T}; got {bounds}")
    return bounds


def per_sequence(fn, states: tuple, inputs: list, is_stream: list[bool], bounds: list[int], kwargs: dict) -> tuple:
    """Run a form on packed sequences one call each: ((readouts [1, T, ...]), (final states [N, ...])).

    fn(states, *inputs, **kwargs) is a generated form; inputs are lifted (streams [1, T, H, ...], cut at
    ``bounds``, the cu_seqlens as ints; params whole); states [N, H, ...], one row per sequence.
    """
    pieces, finals_list = [], []
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        h0 = tuple(s[i:i + 1] for s in states)
        if hi == lo and (pieces or hi < bounds[-1]):   # empty: keeps its state (forms need one token)
            finals_list.append(h0)
            continue
        seq = [x[:, lo:hi] if stream else x for x, stream in zip(inputs, is_stream)]
        o, ht = fn(h0, *seq, **kwargs)
        pieces.append(o)
        finals_list.append(ht)
    outs = tuple(torch.cat([p[j] for p in pieces], dim=1) for j in range(len(pieces[0])))
    return outs, tuple(torch.cat([f[j] for f in finals_list]) for j in range(len(states)))


class CompiledOp:
    """A generated op. ``modes`` lists its forms; ``inputs`` the tensors it takes (streams, then params)."""

    def __init__(self, module, checked, plan, backend: str, path: str):
        self.module = module
        self.checked = checked
        self.plan = plan
        self.backend = backend
        self.path = path
        self.name = checked.model.name
        self.modes: tuple[str, ...] = tuple(module.MODES)
        self.inputs: tuple[str, ...] = tuple(module.INPUTS)
        self.args: dict[str, float] = dict(module.ARGS)
        self.states: tuple[str, ...] = tuple(module.STATES)
        self.axis = checked.cell_axis
        self.axis_size = checked.dim_sizes[self.axis] if self.axis else 1
        # what every call looks up, worked out once (the host time of a call counts at fla's shapes, where the
        # kernels of a forward take a few hundred microseconds)
        self._input_dims = {n: tuple(checked.dim_sizes[d] for d in checked.types[n].dims) for n in self.inputs}
        self._has_axis_of = {n: bool(self.axis) and checked.types[n].dims[:1] == (self.axis,) for n in self.inputs}
        lead = (self.axis_size,) if self.axis else ()
        self._state_shapes = {s: lead + tuple(checked.dim_sizes[d] for d in checked.cell_types[s].dims)
                              for s in self.states}
        self._constant_inits = self._declared_inits(checked)
        self._passthrough = getattr(module, "PASSTHROUGH_INPUTS", {})
        self._direct_readout_forms = getattr(module, "DIRECT_READOUT_FORMS", ())
        self._optional_final_state_forms = tuple(      # forms that can leave the final states out (None) when unused
            m for m in self.modes if "final_state" in inspect.signature(getattr(module, m)).parameters)

    def __repr__(self) -> str:
        return f"<seqdsl op {self.name} ({self.backend}) modes={self.modes} inputs={self.inputs}>"

    # ------------------------------------------------------------------ shapes
    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sequence shape of each state: (H, *dims) or (*dims,) without a cell axis."""
        return dict(self._state_shapes)

    def _dims(self, name: str) -> tuple[int, ...]:
        return self._input_dims[name]

    def _has_axis(self, name: str) -> bool:
        return self._has_axis_of[name]

    # ------------------------------------------------------------------ call
    def default_mode(self, on_gpu: bool = False) -> str:
        """conv for time-invariant systems (FFT, independent of the state size); else chunk for matrix states
        (matmul-rich) and scan for vector states (chunking K x 1 states wastes work) -- except vector states
        with many numbers per token (Mamba: d_inner x n), whose scan materialises [B, T, state] tensors in
        every level: the sequential loop, which keeps one state, is then faster on the CPU (measured:
        Mamba d_model 64, B 64, T 128: recurrent 0.6 s vs scan 2.0 s forward+backward). A fused scan kernel
        (the Triton module's ``SCAN == "fused"``) materialises nothing, and its sequential depth is T / BLOCK_T
        blocks rather than T steps: it is the default wherever it exists. On a GPU (``on_gpu``: the call's streams
        are CUDA tensors), an op whose compiled kernels carry a caveat there (the Triton module's ``GPU_CAVEAT``:
        they run their torch form instead) takes its scan form where it has one: the torch recurrent form is a
        Python loop over the tokens, and a scan form run by triton_scan has no caveat (S4, LSSL, HiPPO-LegS)."""
        if on_gpu and getattr(self.module, "GPU_CAVEAT", None) and "scan" in self.modes:
            return "scan"
        vector_only = all(len(self.checked.cell_types[s].dims) <= 1 for s in self.states)
        if getattr(self.module, "SCAN", None) == "fused" and "scan" in self.modes:
            return next(m for m in ("conv", "scan") if m in self.modes)
        if vector_only and self.state_numbers_per_sequence() > LARGE_VECTOR_STATE:
            order = ("conv", "recurrent")
        else:
            order = ("conv", "scan", "chunk") if vector_only else ("conv", "chunk", "scan")
        return next((m for m in order if m in self.modes), "recurrent")

    def state_numbers_per_sequence(self) -> int:
        """Numbers in all states of one sequence (every cell-axis element; complex counts 2)."""
        total = 0
        for s, shape in self.state_shapes().items():
            n = 1
            for d in shape:
                n *= d
            total += n * (2 if self.checked.cell_types[s].complex else 1)
        return total

    def __call__(self, initial_state=None, output_final_state: bool = False, mode: str | None = None,
                 cu_seqlens=None, chunk_size: int = 64, **kwargs):
        if mode is None:
            first_stream = kwargs.get(self.checked.op_streams[0]) if self.checked.op_streams else None
            mode = self.default_mode(on_gpu=isinstance(first_stream, torch.Tensor) and first_stream.is_cuda)
        if mode not in self.modes:
            why = getattr(self.module, "WHY_NOT", {}).get(mode) or self.plan.why_not.get(mode, "it is not generated")
            raise ValueError(f"{self.name}: mode '{mode}' is not available for the {self.module.CLASS} class "
                             f"({why}); available: {', '.join(self.modes)}")
        if mode == "chunk" and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
                                or chunk_size & (chunk_size - 1)):
            raise ValueError(f"{self.name}: chunk_size must be a positive power of two (fla's: 64); got {chunk_size!r}")
        args = self._take_args(kwargs)
        missing = [n for n in self.inputs if n not in kwargs]
        unknown = [n for n in kwargs if n not in self.inputs]
        if missing or unknown:
            raise TypeError(f"{self.name}: takes {', '.join(self.inputs)} (and {', '.join(args) or 'no args'}); "
                            f"missing {missing}, unknown {unknown}")
        inputs = {n: kwargs[n] for n in self.inputs}
        first = inputs[self.checked.op_streams[0]]
        if first.dim() < 2:
            raise ValueError(f"{self.name}: streams are [B, T, ...]; '{self.checked.op_streams[0]}' has shape "
                             f"{tuple(first.shape)}")
        B, T = first.shape[0], first.shape[1]
        for n in self.checked.op_streams:
            expected = (B, T) + self._dims(n)
            if tuple(inputs[n].shape) != expected:
                raise ValueError(f"{self.name}: '{n}' must have shape {list(expected)} ([B, T, "
                                 f"{', '.join(map(str, self.checked.types[n].dims))}]); got {list(inputs[n].shape)}")
        for n in self.checked.op_params:
            if tuple(inputs[n].shape) != self._dims(n):
                raise ValueError(f"{self.name}: '{n}' must have shape {list(self._dims(n))}; got {list(inputs[n].shape)}")
        out_dtype = first.dtype
        compute = torch.float64 if any(t.dtype in (torch.float64, torch.complex128) for t in inputs.values()) \
            else torch.float32
        passthrough = self._passthrough.get(mode, ())
        lifted = {n: self._lift(n, t, compute, keep_low_precision=n in passthrough) for n, t in inputs.items()}
        bounds = None if cu_seqlens is None else packed_bounds(cu_seqlens, B, T, who=self.name)
        states = self._initial_states(initial_state, B if bounds is None else len(bounds) - 1, compute, first.device,
                                      {n: inputs[n] for n in self.checked.op_params}, args)
        if T == 0:    # no token: empty readouts, the states as given (the forms index the last token)
            return self._no_tokens(B, out_dtype, compute, first.device, states, output_final_state)
        zeros = tuple(st for st, zero in zip(states, self._made_as_zeros(initial_state)) if zero)
        fn = getattr(self.module, mode)
        extra = {"chunk_size": chunk_size} if mode == "chunk" else {}
        if mode in self._optional_final_state_forms:
            extra["final_state"] = output_final_state
        low = low_precision_of(*inputs.values())
        direct = mode in self._direct_readout_forms and compute == torch.float32 \
            and is_low_precision(first)
        with _inputs_precision(low), readouts_in(out_dtype if direct else None), _zero_initial_states(zeros):
            if cu_seqlens is None:
                outs, finals = fn(states, *[lifted[n] for n in self.inputs], **args, **extra)
            else:
                one_call = mode in getattr(self.module, "VARLEN_FORMS", ()) and (   # chunk / scan: no empty ones
                    mode == "recurrent" or all(b > a for a, b in zip(bounds, bounds[1:])))
                if one_call:
                    cu = torch.as_tensor(bounds, dtype=torch.long, device=first.device)
                    outs, finals = fn(states, *[lifted[n] for n in self.inputs], **args, **extra, cu_seqlens=cu)
                else:   # one call per sequence (forms reading S_{t-1}, torch recurrent loops, empty sequences)
                    extra.pop("final_state", None)    # the final states carry empty sequences' states through
                    outs, finals = self._per_sequence(fn, bounds, lifted, states, {**args, **extra})
        outs = tuple(self._unlift_output(o, out_dtype) for o in outs)
        o = outs[0] if len(outs) == 1 else outs
        if not output_final_state:
            return o, None
        finals = tuple(self._unlift_state(_in_compute_precision(s, compute)) for s in finals)
        return o, finals[0] if len(finals) == 1 else finals

    def _no_tokens(self, B: int, out_dtype, compute, device, states: tuple, output_final_state: bool):
        """What a call on sequences of no tokens returns: readouts [B, 0, ...] and the initial states."""
        outs = []
        for r in self.checked.readouts:
            ty = self.checked.cell_types[r]
            dtype = (torch.complex128 if compute == torch.float64 else torch.complex64) if ty.complex else compute
            shape = (B, 0, self.axis_size) + tuple(self.checked.dim_sizes[d] for d in ty.dims)
            outs.append(self._unlift_output(torch.zeros(shape, dtype=dtype, device=device), out_dtype))
        o = outs[0] if len(outs) == 1 else tuple(outs)
        if not output_final_state:
            return o, None
        finals = tuple(self._unlift_state(s).clone() for s in states)      # new tensors, as after any call
        return o, finals[0] if len(finals) == 1 else finals

    def _per_sequence(self, fn, bounds: list[int], lifted: dict, states: tuple, kwargs: dict) -> tuple:
        """Packed sequences one call each: ((readouts [1, T, ...]), (final states [N, ...]))."""
        is_stream = [n in self.checked.op_streams for n in self.inputs]
        return per_sequence(fn, states, [lifted[n] for n in self.inputs], is_stream, bounds, kwargs)

    def decode(self, state, **kwargs):
        """One token (O(1) per token generation): streams [B, *dims] -> (o [B, *dims], new state).

        ``state`` is what a previous call returned as the final state (None: zeros).
        """
        args = self._take_args(kwargs)
        seq = {n: (t.unsqueeze(1) if n in self.checked.op_streams else t) for n, t in kwargs.items()}
        o, final = self(initial_state=state, output_final_state=True, mode="recurrent", **seq, **args)
        if isinstance(o, tuple):
            return tuple(x[:, 0] for x in o), final
        return o[:, 0], final

    def _take_args(self, kwargs: dict) -> dict[str, float]:
        """The cell's scalar args: its defaults, overridden by (and removed from) kwargs where given (None: default)."""
        args = dict(self.args)
        for name in list(kwargs):
            if name in args:
                value = kwargs.pop(name)
                if value is not None:
                    args[name] = float(value)
        return args

    # ------------------------------------------------------------------ layout helpers
    def _lift(self, name: str, t: torch.Tensor, compute: torch.dtype, keep_low_precision: bool = False) -> torch.Tensor:
        """Streams -> [B, T, H, *dims]; params -> [1, 1, H, *dims] (H = 1 without the cell axis), in the compute
        dtype -- except, with ``keep_low_precision``, a bf16 / fp16 input of an fp32 computation: the form's
        kernels read it as given (the module's PASSTHROUGH_INPUTS) and convert it as they load it, so the op
        makes no fp32 copy (same numbers: the conversion is exact)."""
        if t.is_complex():
            t = t.to(torch.complex128 if compute == torch.float64 else torch.complex64)
        elif not (keep_low_precision and compute == torch.float32 and is_low_precision(t)):
            t = t.to(compute)
        if name in self.checked.op_streams:
            return t if self._has_axis(name) else t.unsqueeze(2)
        t = t if self._has_axis(name) else t.unsqueeze(0)
        return t.reshape((1, 1) + tuple(t.shape))

    def _initial_states(self, initial_state, n: int, compute, device, params: dict | None = None,
                        args: dict | None = None) -> tuple[torch.Tensor, ...]:
        """The initial states the forms get, [n, H, *dims] each: the given ones, else the declared initial values
        (params: the call's param inputs and args, for initial values that read them)."""
        shapes = self._state_shapes
        c = self.checked
        given = initial_state
        if given is not None and not isinstance(given, (tuple, list)):
            given = (given,)
        if given is not None and len(given) != len(self.states):
            raise ValueError(f"{self.name}: initial_state needs {len(self.states)} tensor(s) ({', '.join(self.states)}); "
                             f"got {len(given)}")
        out = []
        for i, s in enumerate(self.states):
            cplx = c.cell_types[s].complex
            dtype = (torch.complex128 if compute == torch.float64 else torch.complex64) if cplx else compute
            if given is None or given[i] is None:
                value = self._state_init(s, n, dtype, device, params or {}, {**self.args, **(args or {})})
            else:
                value = given[i]
                if tuple(value.shape) != (n,) + shapes[s]:
                    raise ValueError(f"{self.name}: initial state '{s}' must have shape {[n, *shapes[s]]}; "
                                     f"got {list(value.shape)}")
                value = value.to(dtype)
            out.append(value if self.axis else value.unsqueeze(1))
        return tuple(out)

    def _declared_inits(self, checked) -> dict[str, "torch.Tensor | str | None"]:
        """Each state's declared initial value for one sequence ([H, *dims], fp64), evaluated once where it can be:
        None where it is zero (``= 0``), the tensor where it is another constant, "per call" where it reads params or
        args (evaluated with the call's own: ``_state_init``)."""
        from seqdsl import ir
        from seqdsl.interpreter import Reference

        self._reference = Reference(checked)
        out: dict = {}
        for st in checked.model.cell.states:
            if any(checked.kinds.get(n.id) in ("param", "arg") for n in ir.names_in(st.init)):
                out[st.name] = "per call"
                continue
            value = self._reference.state_init(st.name)
            out[st.name] = None if not value.any() else value
        return out

    def _made_as_zeros(self, initial_state) -> tuple[bool, ...]:
        """For each state: whether ``_initial_states`` makes it as zeros (not given, declared zero)."""
        given = initial_state if isinstance(initial_state, (tuple, list)) or initial_state is None else (initial_state,)
        return tuple((given is None or given[i] is None) and self._constant_inits[s] is None
                     for i, s in enumerate(self.states))

    def _state_init(self, s: str, n: int, dtype, device, params: dict, args: dict) -> torch.Tensor:
        shape = (n,) + self._state_shapes[s]
        value = self._constant_inits[s]
        if isinstance(value, str):     # reads params or args: the call's (ValueError for a param the op does not take)
            value = self._reference.state_init(s, params, args)
        if value is None and not dtype.is_complex:
            # one broadcast number: kernels that skip a zero initial state (is_zero_initial_state) move no byte for it
            return torch.zeros((), dtype=dtype, device=device).expand(shape)
        if value is None:
            return torch.zeros(shape, dtype=dtype, device=device)
        return value.to(dtype=dtype, device=device).expand(shape).contiguous()

    def _unlift_output(self, o: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if not self.axis:
            o = o.squeeze(2)
        if o.is_complex():
            return o
        return o.to(dtype) if dtype.is_floating_point else o

    def _unlift_state(self, s: torch.Tensor) -> torch.Tensor:
        return s if self.axis else s.squeeze(1)
