"""Triton kernel of the scan form of diagonal recurrences: ``h_t = a_t ⊙ h_{t-1} + b_t``.

``scan_diagonal`` has the arguments and results of ``torch_forms.scan_diagonal``, so a generated
module whose scan form calls only ``_forms.scan_diagonal`` runs that scan on Triton by importing this module
as its ``_forms`` (``triton_runtime.with_triton_forms``). That is the unfused scan form (torch prepares a_t and
b_t, this kernel scans them): matrix states (GLA, RetNet, ...) and readouts of S_{t-1} (RWKV). Cells whose
states are gated vectors (Mamba, LRU, S4D, ...) get a fused scan kernel generated from the cell instead
(``codegen/triton_module.py``, the module's ``SCAN == "fused"``); their backward recomputes through this one
only where the cell has no Triton backward kernel.

The kernel: one program per (sequence, block of BC state channels); it walks the sequence in blocks of
BT steps, scans each block with ``tl.associative_scan`` over the pairs (a, b) composed as
``(a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2)``, applies the result to the state carried from the
previous block, and carries the block's last state on. Complex states are carried as real and
imaginary parts (Triton has no complex dtype). Compute in fp32 (fp64 for fp64 inputs).

Backward (``_ScanDiagonal``): the same kernel on the time-reversed gradients (the adjoint of a diagonal
recurrence is a diagonal recurrence), packed sequences (cu_seqlens) included.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from seqdsl.runtime import torch_forms as _torch_forms
from seqdsl.runtime import triton_lib as _tlib
from seqdsl.runtime import triton_runtime as _rt


@triton.jit
def scan_diagonal_kernel(a, b, h, h0, ht, cu_seqlens, T, C, DTYPE: tl.constexpr, BT: tl.constexpr,
                         BC: tl.constexpr, COMPLEX: tl.constexpr, USE_INITIAL_STATE: tl.constexpr,
                         IS_VARLEN: tl.constexpr):
    """a, b, h: [rows, C] (rows = B * T, or the packed tokens with cu_seqlens), complex as [rows, C, 2];
    h0, ht: [N, C] (complex [N, C, 2]). Program (i_n, i_c): sequence i_n, channels i_c * BC + [0, BC)."""
    i_n, i_c = tl.program_id(0), tl.program_id(1)
    bos, n = _tlib.sequence_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    bos = bos.to(tl.int64)      # rows * C can pass 2^31 (e.g. Mamba's C = d_inner * N)
    eos = bos + n
    P: tl.constexpr = 2 if COMPLEX else 1
    o_c = i_c * BC + tl.arange(0, BC)
    m_c = o_c < C
    o_t = tl.arange(0, BT)
    last = o_t[:, None] == BT - 1
    state = (i_n * C + o_c) * P
    carry_r = tl.zeros([BC], dtype=DTYPE)
    carry_i = tl.zeros([BC], dtype=DTYPE)
    if USE_INITIAL_STATE:
        carry_r = tl.load(h0 + state, mask=m_c, other=0.0).to(DTYPE)
        if COMPLEX:
            carry_i = tl.load(h0 + state + 1, mask=m_c, other=0.0).to(DTYPE)
    for t0 in range(bos, eos, BT):
        rows = t0 + o_t
        m = (rows < eos)[:, None] & m_c[None, :]
        off = (rows[:, None] * C + o_c[None, :]) * P
        # padded steps are the identity (a = 1, b = 0): the block's last row is the state at its last token
        ar = tl.load(a + off, mask=m, other=1.0).to(DTYPE)
        br = tl.load(b + off, mask=m, other=0.0).to(DTYPE)
        if COMPLEX:
            ai = tl.load(a + off + 1, mask=m, other=0.0).to(DTYPE)
            bi = tl.load(b + off + 1, mask=m, other=0.0).to(DTYPE)
            Ar, Ai, Br, Bi = tl.associative_scan((ar, ai, br, bi), 0, _tlib.compose_complex)
            hr = Ar * carry_r[None, :] - Ai * carry_i[None, :] + Br
            hi = Ar * carry_i[None, :] + Ai * carry_r[None, :] + Bi
            tl.store(h + off, hr, mask=m)
            tl.store(h + off + 1, hi, mask=m)
            carry_i = tl.reduce(tl.where(last, hi, 0.0), 0, _tlib.add)
        else:
            A, Bs = tl.associative_scan((ar, br), 0, _tlib.compose_real)
            hr = A * carry_r[None, :] + Bs
            tl.store(h + off, hr, mask=m)
        carry_r = tl.reduce(tl.where(last, hr, 0.0), 0, _tlib.add)
    tl.store(ht + state, carry_r, mask=m_c)
    if COMPLEX:
        tl.store(ht + state + 1, carry_i, mask=m_c)


def _blocks(C: int, complex_: bool = False) -> tuple[int, int]:
    """(BT, BC): the launch policy, outside the kernel. Small blocks under the interpreter. A complex state's block
    of 64 tokens carries four [BT, BC] blocks through the scan where a real one carries two: compiled for sm_90 at 4
    warps it spilled (GateLoop's scan form: 32 B per thread, 280 B with packed sequences), so it takes 32 tokens."""
    if _rt.interpreting():
        return 16, min(16, _rt.next_pow2(C))
    return (32 if complex_ else 64), min(64, _rt.next_pow2(C))


def _launch(decay: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, cu_seqlens) -> tuple:
    """The kernel on decay and b [B, T, *S] (one compute dtype, decay broadcastable to b), h0 [N, *S] or
    None: (all states [B, T, *S], final states [N, *S]) in that dtype."""
    B, T = b.shape[:2]
    state_shape = tuple(b.shape[2:])
    C = math.prod(state_shape)
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    complex_ = b.is_complex()
    flat = (lambda t: torch.view_as_real(t.resolve_conj().contiguous())) if complex_ else (lambda t: t.contiguous())
    a_rows = flat(decay.expand(b.shape).reshape(B, T, C))
    b_rows = flat(b.reshape(B, T, C))
    h = torch.empty_like(b_rows)
    ht = torch.empty_like(flat(torch.zeros(N, C, dtype=b.dtype, device=b.device)))
    h0_rows = flat(h0.reshape(N, C)) if h0 is not None else ht
    BT, BC = _blocks(C, complex_)
    scan_diagonal_kernel[(N, triton.cdiv(C, BC))](
        a_rows, b_rows, h, h0_rows, ht, cu_seqlens if cu_seqlens is not None else b_rows, T, C,
        DTYPE=_rt.tl_dtype(_rt.real_dtype(b_rows)), BT=BT, BC=BC, COMPLEX=complex_,
        USE_INITIAL_STATE=h0 is not None, IS_VARLEN=cu_seqlens is not None,
        num_warps=1 if _rt.interpreting() else 4)
    if complex_:
        h, ht = torch.view_as_complex(h), torch.view_as_complex(ht)
    return h.reshape(b.shape), ht.reshape(N, *state_shape)


class _ScanDiagonal(torch.autograd.Function):
    """h = scan(a, b, h0) with a Triton backward: the gradient of a diagonal recurrence is the same
    recurrence run backwards, lam_t = dh_t + conj(a_{t+1}) lam_{t+1} from lam_T = dht, so the backward is
    the forward kernel on the time-reversed inputs; then db = lam, da = lam conj(h_{t-1}),
    dh0 = conj(a_0) lam_0 (torch's conjugate convention for complex values). Packed sequences (cu_seqlens,
    B = 1): flipping the packed time axis reverses every sequence and their order, so the backward is one
    varlen launch on the mirrored boundaries, with a_{t+1} taken as 1 at each sequence's last token."""

    @staticmethod
    def forward(ctx, decay, b, h0, cu_seqlens):
        h, ht = _launch(decay, b, h0, cu_seqlens)
        ctx.save_for_backward(decay, h, h0, cu_seqlens)
        return h, ht

    @staticmethod
    def backward(ctx, dh, dht):
        decay, h, h0, cu = ctx.saved_tensors
        a = decay.expand(h.shape)
        T = h.shape[1]
        next_a = torch.cat([a[:, 1:], torch.ones_like(a[:, :1])], 1)      # a_{t+1}; 1 after the last token
        starts = torch.zeros(1, dtype=torch.long, device=h.device) if cu is None else cu[:-1].long()
        if cu is not None:
            next_a[:, cu[1:].long() - 1] = 1                               # no a_{t+1} across a boundary
        mirrored = None if cu is None else (T - cu).flip(0)
        dht_rev = None if dht is None else (dht if cu is None else dht.flip(0))
        lam_rev, _ = _launch(next_a.flip(1).conj(), dh.flip(1).contiguous(), dht_rev, mirrored)
        lam = lam_rev.flip(1)
        h_prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], 1)
        if cu is None:
            h_prev[:, 0] = h0 if h0 is not None else 0
        else:
            h_prev[:, starts] = h0[None] if h0 is not None else 0
        da = lam * h_prev.conj()
        dh0 = None
        if h0 is not None and ctx.needs_input_grad[2]:
            dh0 = a[:, 0].conj() * lam[:, 0] if cu is None else (a[:, starts].conj() * lam[:, starts])[0]
        return da, lam, dh0, None


def scan_diagonal(b, a_log=None, a=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """``torch_forms.scan_diagonal`` on the Triton kernel above (see there for shapes and dtypes).

    Autograd: the Triton backward of ``_ScanDiagonal`` (packed sequences too)."""
    if (a is None) == (a_log is None):
        raise ValueError("scan_diagonal needs exactly one of a or a_log")
    gate = a if a is not None else a_log
    if gate.dim() != b.dim():
        raise ValueError(f"a must have b's {b.dim()} dims (broadcastable), got {tuple(gate.shape)}")
    B, T = b.shape[:2]
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (b, gate, initial_state))
    if T == 0:
        return _torch_forms.scan_diagonal(b, a_log, a, initial_state, output_final_state, cu_seqlens)
    _torch_forms._check_varlen(B, cu_seqlens, initial_state)
    cd = _torch_forms._compute_dtype(b, gate, state=initial_state)
    out_dtype = _torch_forms._output_dtype(cd, b, gate)
    decay = torch.exp(a_log.to(cd)) if a is None else a.to(cd)
    h0 = initial_state.to(cd) if initial_state is not None else None
    if wants_grad:
        h, ht = _ScanDiagonal.apply(decay, b.to(cd), h0, cu_seqlens)
    else:
        h, ht = _launch(decay, b.to(cd), h0, cu_seqlens)
    return h.to(out_dtype), (ht if output_final_state else None)
