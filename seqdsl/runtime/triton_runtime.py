"""Host side of generated Triton modules: launch policy, argument layout, autograd, the torch twin.

Generated Triton modules (``codegen/triton_module.py``) call these helpers around their kernels:

* ``launch_config``: the launch policy, kept outside the kernels. Under ``TRITON_INTERPRET=1`` (or
  without a GPU) it returns exactly one configuration; ``override_launch`` forces one (tests). On a GPU,
  ``launch_alternatives`` lists the few other configurations of a forward kernel that the launch-time tuner
  (``triton_tune``) times against it on the first call at each key.
* ``stream`` / ``param`` / ``state_in`` / ``cell_args``: kernel arguments in the layout the kernels
  index. Streams keep their strides (a stream without the cell axis is broadcast over it with stride
  0); complex tensors are passed as real views ``[..., 2]`` (real part, imaginary part at +1).
* ``FormFunction``: the autograd wrapper. Forward runs the kernels; backward runs the form's Triton
  backward kernel where the module has one (the recurrent form of real cells:
  ``codegen/triton_backward.py``), else RECOMPUTES the forward through the *torch twin* (the torch
  backend's generated module of the same spec) under autograd and backpropagates through it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import warnings

import torch

from seqdsl.runtime.op import is_low_precision, is_zero_initial_state, packed_bounds, per_sequence, readout_dtype

_OVERRIDE: dict | None = None


def interpreting() -> bool:
    """Whether Triton kernels run under the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@contextlib.contextmanager
def override_launch(**config):
    """Force launch settings (e.g. ``block=4`` to split the tiled state axis) inside the block."""
    global _OVERRIDE
    saved, _OVERRIDE = _OVERRIDE, dict(config)
    try:
        yield
    finally:
        _OVERRIDE = saved


def launch_config(form: str, tiled_size: int | None, state_numel: int, device: torch.device | None = None,
                  low_precision_inputs: torch.dtype | None = None, backward: bool = False, param_numel: int = 0) -> dict:
    """The one launch configuration of a kernel call.

    form: "recurrent", "chunk", "scan" or "scan_backward" (the fused scan kernels: ``scan_launch``). tiled_size:
    the true size of the state axis split across programs
    (None: not tiled). state_numel: register elements of the whole state per program before tiling.
    param_numel: register elements of the params a recurrent program keeps for the whole sequence (a dense
    cell's matrices; a backward kernel also their gradients' accumulators), counted with the state's for the
    warps: at one warp, LSTM's and GRU's recurrent kernels spilled 0.7-4.4 KB per thread compiled for sm_90.
    backward: the call launches a backward kernel. Its programs keep three state-sized blocks live (the state, its
    adjoint, the recomputed previous state), which count for the warps: counted once, the recurrent backward kernels
    of 15 examples spilled (6.7 KB per thread summed, compiled for sm_90); three times, 8 (3.7 KB; what is left is
    at 8 warps already, or dense cells). Split into tiles, a backward kernel's programs add the
    gradients of what lacks the tiled axis atomically (their order varies from run to run), so under
    ``torch.use_deterministic_algorithms(True)`` it runs whole (block = the axis).
    low_precision_inputs: bf16 / fp16 if the op's inputs are (else None). Returns {"block": block of the tiled
    axis (0 when not tiled), "num_warps": ..., "precision": the tl.dot precision of the chunk kernels
    (``triton_lib.dot``), which accumulate in fp32: "tf32x3" (fp32-accurate) for fp32 inputs; for bf16 / fp16
    inputs "bf16" / "fp16", the operands rounded to the inputs' dtype as fla's kernels do (one tensor-core
    pass at twice tf32's rate, half the shared memory and registers per operand), "diag_3d": whether the key-gated
    intra-chunk kernel computes a diagonal sub-block as one 3-d product (fast to interpret) or column by
    column}; chunk launches on a GPU also get "num_stages" (``chunk_warps_and_stages``).
    """
    full = next_pow2(tiled_size) if tiled_size else 0
    if form in ("scan", "scan_backward"):
        return scan_launch(state_numel, device, backward=form == "scan_backward", tiled_size=tiled_size)
    if backward and tiled_size and torch.are_deterministic_algorithms_enabled():
        return {**launch_config(form, None, state_numel, device, low_precision_inputs, param_numel=param_numel),
                "block": full}
    if _OVERRIDE is not None:
        cfg = {"block": full, "num_warps": 1, "precision": "ieee", "diag_3d": True}
        cfg.update(_OVERRIDE)
        if tiled_size:
            cfg["block"] = min(next_pow2(cfg["block"]), full)
        else:
            cfg["block"] = 0
        return cfg
    if interpreting() or device is None or device.type != "cuda":
        return {"block": full, "num_warps": 1, "precision": "ieee", "diag_3d": True}
    if form == "chunk":
        return {"block": 0, **chunk_warps_and_stages(state_numel),
                "precision": DOT_OPERANDS.get(low_precision_inputs, "tf32x3"), "diag_3d": False}
    block = min(full, 64) if tiled_size else 0
    live = 3 if backward else 1            # state-sized blocks a program keeps (see ``backward`` above)
    numel = live * (state_numel * block // full if tiled_size else state_numel) + param_numel
    num_warps = 1 if numel <= 1024 else 2 if numel <= 4096 else 4 if numel <= 16384 else 8
    return {"block": block, "num_warps": num_warps}


def scan_launch(state_numel: int, device: torch.device | None, backward: bool = False,
                tiled_size: int | None = None) -> dict:
    """The fused scan kernels' launch: "block_t" tokens per block (a block holds block_t x the state's numbers
    per program), "block" of the state axis split across programs (``tiled_size``; 0: not split), "num_warps".
    The interpreter: 16 tokens (a sequence of 33 runs three blocks, the last one partly padded), the whole
    axis, one warp. A GPU: tiles of 64 (as the recurrent kernel); about 2048 numbers per block in the forward
    and 1024 in the backward (which keeps more of them live), 4 to 256 tokens; 4 warps, 8 from 4096 numbers per
    block on. Compiled for sm_90 (benchmarks/gpu_compile_check.py), that leaves no kernel of the examples
    spilling registers; with 16 tokens at least, the whole-vector states of Hawk (1024 numbers) and HGRN (512)
    spilled up to 704 B before they were split. A guess to be timed on a GPU (benchmarks/gpu_vs_fla.py runs the
    Mamba scan form against mamba_ssm and HGRN's against fla). ``override_launch(block_t=..., block=...)``
    forces the blocks; a backward under ``torch.use_deterministic_algorithms(True)`` runs whole (see
    ``launch_config``)."""
    full = next_pow2(tiled_size) if tiled_size else 0
    whole = backward and torch.are_deterministic_algorithms_enabled()
    if _OVERRIDE is not None and ("block_t" in _OVERRIDE or "block" in _OVERRIDE):
        block = min(next_pow2(_OVERRIDE.get("block", full)), full) if full and not whole else full
        return {"block_t": _OVERRIDE.get("block_t", 16), "block": block, "num_warps": _OVERRIDE.get("num_warps", 1)}
    if interpreting() or device is None or device.type != "cuda":
        return {"block_t": 16, "block": full, "num_warps": 1}
    block = full if whole else min(full, 64)
    numel = state_numel * block // full if full else state_numel
    target = 1024 if backward else 2048
    block_t = min(256, max(4, next_pow2(target // max(1, numel))))
    return {"block_t": block_t, "block": block, "num_warps": 4 if block_t * numel < 4096 else 8}


def launch_alternatives(form: str, cfg: dict, tiled_size: int | None) -> list[dict]:
    """Configurations besides the policy's ``cfg`` (``launch_config``) that the launch-time tuner
    (``triton_tune``) times on a GPU for a generated recurrent or fused scan forward kernel: half the tile of a
    split state (twice the programs, down to 16), twice the warps (up to 8) and, for the recurrent kernel, half
    (down to 1), and for the scan half and twice the tokens per block (4 to 256)."""
    alternatives = []
    if tiled_size and cfg["block"] >= 32:
        alternatives.append({**cfg, "block": cfg["block"] // 2})
    for warps in (cfg["num_warps"] * 2, cfg["num_warps"] // 2 if form == "recurrent" else 0):
        if 1 <= warps <= 8:
            alternatives.append({**cfg, "num_warps": warps})
    if form == "scan":
        for block_t in (cfg["block_t"] // 2, cfg["block_t"] * 2):
            if 4 <= block_t <= 256:
                alternatives.append({**cfg, "block_t": block_t})
    return alternatives


def warp_alternatives(cfg: dict) -> list[dict]:
    """What the tuner may change in a generated backward kernel's launch ``cfg``: its warps alone, twice and half
    (1 to 8), as partial configurations. Its tiles decide which of its buffers are summed, and its tokens per
    block the size of the states it keeps, so neither may change."""
    return [{"num_warps": w} for w in (cfg["num_warps"] * 2, cfg["num_warps"] // 2) if 1 <= w <= 8]


DOT_OPERANDS = {torch.bfloat16: "bf16", torch.float16: "fp16"}   # chunk kernels' tl.dot operands per input dtype
CHUNK_BIG_BLOCK = 64 * 64   # state-block elements from which a chunk launch takes 8 warps and, past it, 1 stage


def chunk_warps_and_stages(state_numel: int) -> dict:
    """num_warps and num_stages of the chunk kernels on a GPU, from the largest state block a program holds
    (BK x BV; the delta rule: every key channel x BV). Sized without a GPU by benchmarks/gpu_compile_check.py
    (registers, spills, shared memory compiled for sm_90; BENCHMARKS.md has the table): Triton's default of 3
    pipeline stages made the delta rule's kernels at K = 128 and 256 need 272-560 KB of shared memory, past
    the H100's 227 KB, so their launches would fail; one stage keeps them at 64-208 KB. Two stages for the
    64 x 64 blocks of the gated kernels stay within 160 KB. Eight warps for 64 x 64 blocks and up: at four,
    tf32 kernels spilled up to 370 B of registers per thread; at eight, none of the gated ones do."""
    big = state_numel >= CHUNK_BIG_BLOCK
    return {"num_warps": 8 if big else 4, "num_stages": 1 if state_numel > CHUNK_BIG_BLOCK else 2}


# ------------------------------------------------------------------ argument layout
def real_dtype(t: torch.Tensor) -> torch.dtype:
    """The real compute dtype of a (possibly complex, possibly bf16 / fp16) lifted tensor."""
    if is_low_precision(t):
        return torch.float32
    return {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(t.dtype, t.dtype)


def upcast(t: torch.Tensor) -> torch.Tensor:
    """A bf16 / fp16 tensor in fp32 (exact); any other as it is: what a torch twin computes on."""
    return t.float() if is_low_precision(t) else t


def tl_dtype(dtype: torch.dtype):
    import triton.language as tl

    return {torch.float32: tl.float32, torch.float64: tl.float64}[dtype]


def _real_view(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t.resolve_conj()) if t.is_complex() else t


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in the compute dtype (complex: its complex counterpart), except bf16 / fp16, which the recurrent
    kernels convert as they load (exact: the numbers of an fp32 copy, without the copy)."""
    if t.is_complex():
        return t.to({torch.float32: torch.complex64, torch.float64: torch.complex128}[dtype])
    if is_low_precision(t) and dtype == torch.float32:
        return t
    return t.to(dtype)


def stream(t: torch.Tensor, B: int, T: int, H: int, dims: tuple[int, ...], dtype: torch.dtype) -> tuple:
    """A lifted stream [B, T, 1 or H, *dims] -> (tensor, stride_b, stride_t, stride_h, *dim strides)."""
    t = _real_view(_as(t, dtype).expand(B, T, H, *dims))
    return (t, *t.stride()[: 3 + len(dims)])


def param(t: torch.Tensor, H: int, dims: tuple[int, ...], dtype: torch.dtype) -> tuple:
    """A lifted param [1, 1, 1 or H, *dims] -> (tensor, stride_h, *dim strides)."""
    t = _real_view(_as(t[0, 0], dtype).expand(H, *dims))
    return (t, *t.stride()[: 1 + len(dims)])


def state_in(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An initial state [B, H, *dims] as the contiguous (real view) tensor the kernel reads."""
    return _real_view(_as(t, dtype)).contiguous()


def empty(shape: tuple, dtype: torch.dtype, device, complex_: bool) -> torch.Tensor:
    """A contiguous output buffer (complex values: a real [..., 2] buffer)."""
    return torch.empty(tuple(shape) + ((2,) if complex_ else ()), dtype=dtype, device=device)


def readout_buffer(shape: tuple, dtype: torch.dtype, device, complex_: bool) -> torch.Tensor:
    """A recurrent kernel's readout buffer: in the op's output dtype where it asks (``op.readout_dtype``: bf16 /
    fp16; the kernel's store rounds once, as the op's cast would), else in ``dtype``; complex readouts (which
    the op returns as they are) in ``dtype``."""
    return empty(shape, (None if complex_ else readout_dtype()) or dtype, device, complex_)


def cell_args(values: list[float], dtype: torch.dtype, device) -> torch.Tensor:
    """The cell's scalar args as a tensor of the compute dtype (exact in fp64, unlike float kernel args)."""
    return torch.tensor(values, dtype=dtype, device=device)


def grad_in(g: torch.Tensor | None, shape: tuple, dtype: torch.dtype, device, complex_: bool = False) -> torch.Tensor:
    """A gradient arriving at an output, as the contiguous buffer a backward kernel reads (None: zeros;
    complex: a real [..., 2] view; bf16 / fp16, the gradient of a readout stored in that dtype, as given: the
    kernels convert as they load)."""
    if g is None:
        return zeros(shape, dtype, device, complex_)
    if complex_:
        return torch.view_as_real(_as(g, dtype).resolve_conj().expand(shape).contiguous())
    return _as(g, dtype).expand(shape).contiguous()


def stream_grad_buffer(x: torch.Tensor, shape: tuple, dtype: torch.dtype, complex_: bool,
                       split: bool = False) -> tuple:
    """The buffer a backward kernel writes the gradient of stream x (lifted: [B, T, 1 or H, *dims]) into, and
    whether the kernel sums it over the heads itself: (buffer, summed).

    A stream shared by every head (x's head axis is 1 while H > 1: Mamba's B and C, shared by all d_inner
    channels) gets a zeroed [B, T, 1, *dims] buffer that every head's program adds its rows into atomically,
    as mamba_ssm's backward does, instead of an H times larger buffer of rows that torch then sums. Atomic
    fp32 sums are not identical from run to run (their order varies), so where
    ``torch.use_deterministic_algorithms(True)`` asks for that, the kernels write the rows. ``split``: x lacks
    the state axis the launch splits across programs, so each tile's program adds its part of every row: a
    zeroed [B, T, H, *dims] buffer. Otherwise the buffer is the unfilled [B, T, H, *dims] of a row per head
    (every program writes all of its rows), in x's dtype where x is bf16 / fp16 of the buffer's whole shape
    (nothing left to sum: the kernel's store rounds once, as the cast after it would), else in ``dtype``."""
    B, T, H, *dims = shape
    summed = x.dim() >= 3 and x.shape[2] == 1 and H > 1 and not torch.are_deterministic_algorithms_enabled()
    if summed:
        return zeros((B, T, 1, *dims), dtype, x.device, complex_), True
    if split:
        return zeros(shape, dtype, x.device, complex_), False
    whole = tuple(x.shape) == tuple(shape) and is_low_precision(x) and dtype == torch.float32
    return empty(shape, x.dtype if whole else dtype, x.device, complex_), False


def zeros(shape: tuple, dtype: torch.dtype, device, complex_: bool = False) -> torch.Tensor:
    """A zero buffer (complex values: a real [..., 2] buffer)."""
    return torch.zeros(tuple(shape) + ((2,) if complex_ else ()), dtype=dtype, device=device)


_UNREAD: dict = {}


def unread_address(device) -> torch.Tensor:
    """What a generated kernel gets as an initial state it does not read (USE_INITIAL_STATE off): one zero per device,
    the base of a load whose mask is false at run time. The kernel makes the declared initial values by that load,
    which reads nothing, rather than by tl.zeros: a value that comes from a load takes the layout a loaded initial state
    takes, where a tl.zeros state took whatever layout the compiler chose for the loop (ReLiT's recurrent forward,
    compiled for sm_90, then converted layouts through shared memory every step: 32 registers, 2.7 KB spilled, against
    128 and none with a loaded state)."""
    key = str(device)
    if key not in _UNREAD:
        _UNREAD[key] = torch.zeros(1, dtype=torch.float32, device=device)
    return _UNREAD[key]


def checkpoint_every(T: int) -> int:
    """Steps between the states the recurrent backward keeps (about sqrt(T): memory O(sqrt(T)) per sequence)."""
    return max(1, int(round(T ** 0.5)))


class Packing:
    """How a recurrent launch finds its sequences: B equal rows of T tokens, or (cu_seqlens, B = 1) N packed
    sequences of any lengths (an empty one keeps its initial state). ``N``: program rows (sequences);
    ``cu``: the kernels' cu_seqlens argument (a dummy when not packed); ``varlen``: IS_VARLEN; ``longest``:
    the longest sequence (the backward's checkpoint spacing)."""

    def __init__(self, cu_seqlens, B: int, T: int, device):
        if cu_seqlens is None:
            self.N, self.cu, self.varlen, self.longest = B, torch.zeros(1, dtype=torch.int64, device=device), False, T
            return
        bounds = packed_bounds(cu_seqlens, B, T)
        self.N, self.varlen = len(bounds) - 1, True
        self.cu = torch.as_tensor(bounds, dtype=torch.int64, device=device)
        self.longest = max(1, max(b - a for a, b in zip(bounds, bounds[1:])))


def twin_per_sequence(fn, states: tuple, inputs: tuple, is_stream: tuple, kwargs: dict, cu_seqlens=None):
    """A torch twin's form on packed sequences (it takes no cu_seqlens): one call per sequence."""
    if cu_seqlens is None:
        return fn(tuple(states), *inputs, **kwargs)
    return per_sequence(fn, tuple(states), list(inputs), list(is_stream), [int(b) for b in cu_seqlens], kwargs)


# ------------------------------------------------------------------ the torch twin and autograd
_TORCH_FORMS_IMPORT = "from seqdsl.runtime import torch_forms as _forms"


def with_triton_forms(source: str, module: str = "triton_chunk") -> str:
    """A torch module's source with its form algorithms (``_forms.chunk_gated``, ``_forms.scan_diagonal``)
    taken from a Triton module of seqdsl.runtime (triton_chunk or triton_scan: same signatures)."""
    if _TORCH_FORMS_IMPORT not in source:
        raise ValueError("the torch module does not import its forms as expected")
    return source.replace(_TORCH_FORMS_IMPORT, f"from seqdsl.runtime import {module} as _forms  # Triton kernels")


class TorchTwin:
    """The torch backend's module of the same spec, from its source embedded in the Triton module.

    Written to the cache (a real file: readable tracebacks) and imported on first use.
    """

    def __init__(self, source: str, name: str):
        self.source = source
        self.name = name
        self._module = None

    @property
    def module(self):
        if self._module is None:
            from seqdsl.cache import cache_dir, import_path, write_atomic

            digest = hashlib.sha256(self.source.encode()).hexdigest()[:20]
            path = cache_dir() / f"{self.name}_torchtwin_{digest}.py"
            if not path.exists():
                write_atomic(path, self.source)
            self._module = import_path(path, f"seqdsl_generated_{self.name}_torchtwin_{digest}")
        return self._module


class FormFunction(torch.autograd.Function):
    """Forward: a form run by Triton kernels. Backward: the form's Triton backward where there is one,
    else recompute through the torch twin, then autograd.

    ``apply(forward, twin_form, backward, n_states, kwargs, *states, *inputs)`` returns readouts then
    final states (None where the forward did not store them). ``backward(states, *inputs, **kwargs,
    initial_state_gradient=..., _grads=...)`` (or None) returns ((state gradients), (input gradients)):
    the state gradients None where ``initial_state_gradient`` is False (no initial state needs one).
    Gradients of outputs that nothing used arrive as None (not zeros): the backward kernels then read
    no final-state gradient.
    """

    @staticmethod
    def forward(ctx, forward, twin_form, backward, n_states, kwargs, *tensors):
        states, inputs = tensors[:n_states], tensors[n_states:]
        outs, finals = forward(tuple(states), *inputs, **kwargs)
        ctx.forward_meta = (twin_form, backward, n_states, kwargs, len(outs))
        ctx.save_for_backward(*tensors)
        ctx.set_materialize_grads(False)
        return (*outs, *finals)

    @staticmethod
    def backward(ctx, *grads):
        twin_form, backward, n_states, kwargs, n_outs = ctx.forward_meta
        tensors = ctx.saved_tensors
        needs = ctx.needs_input_grad[5:]
        if backward is not None:
            d_states, d_inputs = backward(tuple(tensors[:n_states]), *tensors[n_states:], **kwargs,
                                          initial_state_gradient=any(needs[:n_states]), _grads=grads)
            result = [g if need else None for g, need in zip((*d_states, *d_inputs), needs)]
            return (None, None, None, None, None, *result)
        with torch.enable_grad():   # the twin computes in fp32: bf16 / fp16 inputs upcast (their grads cast back)
            xs = [upcast(t.detach()).requires_grad_(bool(need)) for t, need in zip(tensors, needs)]
            outs, finals = twin_form(tuple(xs[:n_states]), *xs[n_states:], **kwargs)
            ys = [*outs, *finals]
            pairs = [(y, g) for y, g in zip(ys, grads) if g is not None and y.requires_grad]
            wanted = [x for x in xs if x.requires_grad]
            got = torch.autograd.grad([y for y, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True) \
                if pairs and wanted else [None] * len(wanted)
        it = iter(got)
        result = [next(it) if x.requires_grad else None for x in xs]
        result = [g if g is None else g.to(t.dtype) for g, t in zip(result, tensors)]
        return (None, None, None, None, None, *result)


_WARNED: set[str] = set()


def trusting_gpu_kernels() -> bool:
    """Whether ``SEQDSL_TRUST_GPU_KERNELS=1`` asks to run compiled kernels on a GPU despite a ``gpu_caveat``
    (benchmarks/gpu_check.py sets it: it exists to check those kernels)."""
    return os.environ.get("SEQDSL_TRUST_GPU_KERNELS", "0") not in ("", "0")


def apply_form(forward, twin_form, states: tuple, inputs: tuple, kwargs: dict, n_outs: int,
               gpu_caveat: str | None = None, backward=None, final_state: bool = True):
    """Run a form under ``FormFunction``: ((readouts...), (final states...)).

    forward(states, *inputs, **kwargs, use_initial_state=True, store_final_state=True) runs Triton kernels (no
    autograd). Where the op made the initial states all as zeros (the kernel's declared initial values), forward
    and backward are told not to read them; with ``final_state=False`` the forward stores no final states (they
    come back as None). backward (if given) is the form's Triton backward; otherwise twin_form (same signature,
    plain torch) is what the backward differentiates, recomputing the forward. ``gpu_caveat``: why the compiled
    kernels are not trusted on a GPU; there the twin runs instead (with a warning, once), unless
    ``trusting_gpu_kernels()``.
    """
    if gpu_caveat and not interpreting() and not trusting_gpu_kernels() and any(
            t.is_cuda for t in (*states, *inputs)):
        if gpu_caveat not in _WARNED:
            _WARNED.add(gpu_caveat)
            warnings.warn(f"seqdsl: {gpu_caveat}; running the torch form instead", RuntimeWarning, stacklevel=3)
        return twin_form(tuple(states), *(upcast(x) for x in inputs), **kwargs)
    if states and all(is_zero_initial_state(s) for s in states):
        # the op's zeros (states declared = 0, none given): the kernels start from them without reading a copy
        forward = functools.partial(forward, use_initial_state=False)
        if backward is not None:
            backward = functools.partial(backward, use_initial_state=False)
    if not final_state:
        forward = functools.partial(forward, store_final_state=False)
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in (*states, *inputs)):
        return forward(tuple(states), *inputs, **kwargs)
    ys = FormFunction.apply(forward, twin_form, backward, len(states), kwargs, *states, *inputs)
    return tuple(ys[:n_outs]), tuple(ys[n_outs:])
