"""Triton kernels of the scan form: diagonal recurrences ``h_t = a_t ⊙ h_{t-1} + b_t`` (``scan_diagonal``) and
dense ones ``h_t = A_t h_{t-1} + b_t`` (``scan_dense``: chunked, see its section below).

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


# ---------------------------------------------------------------------------------------------- dense
# h_t = A_t h_{t-1} + b_t with dense n x n transition matrices (S4, HiPPO-LegS, LSSL, a linear RNN): a matrix
# combine has no tl.associative_scan (its combine function is elementwise), so the scan is the two-level one of
# GPU scans (reduce, then scan the reductions, then apply), parallel over chunks of BT tokens:
#   1. scan_dense_reduce_kernel, a program per (chunk, channel): the chunk's affine map from zero, P = A_last ... A_first
#      (BT matrix products) and p = the state it reaches from h = 0;
#   2. scan_dense_carry_kernel, a program per (sequence, channel): the state entering each chunk, x <- P x + p chunk
#      after chunk (a matrix-vector product per chunk), and the final state;
#   3. scan_dense_apply_kernel, a program per (chunk, channel): from its entering state, h_t = A_t h_{t-1} + b_t over
#      the chunk's tokens (a matrix-vector product per token), every state stored.
# Chunks are listed per sequence (``chunks`` [NC, 2]: sequence, chunk within it), so packed sequences of any lengths
# run in the same launches. Compute in fp32 (fp64 for fp64 inputs), matrix products at tl.dot's "ieee" precision.


@triton.jit
def _dense_chunk(chunks, chunk_offsets, cu_seqlens, i_c, T, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """(first flat row, first row of A's time axis, batch row of A, tokens) of chunk i_c."""
    i_n = tl.load(chunks + 2 * i_c)
    i_t = tl.load(chunks + 2 * i_c + 1)
    bos, n = _tlib.sequence_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    bos = bos.to(tl.int64)
    batch = i_n * 0 if IS_VARLEN else i_n.to(tl.int64)
    first = bos + i_t * BT
    return first, first - batch * T, batch, tl.minimum(n - i_t * BT, BT)


@triton.jit
def _dense_step_matrix(A, batch, time, i_ch, sAb, sAt, sAc, o_i, o_j, m2, NS: tl.constexpr, DTYPE: tl.constexpr):
    """A_t [BN, BN] of channel i_ch (sAb / sAt / sAc: A's strides along batch, time and channels, 0 where it
    broadcasts)."""
    p = A + batch * sAb + time * sAt + i_ch.to(tl.int64) * sAc + o_i[:, None] * NS + o_j[None, :]
    return tl.load(p, mask=m2, other=0.0).to(DTYPE)


@triton.jit
def scan_dense_reduce_kernel(A, b, P, p, chunks, chunk_offsets, cu_seqlens, T, C, sAb, sAt, sAc, NS: tl.constexpr,
                             BN: tl.constexpr, BT: tl.constexpr, DTYPE: tl.constexpr, IS_VARLEN: tl.constexpr):
    """A [BA, TA, C or 1, NS, NS], b [B, T, C, NS] (rows: B * T, or the packed tokens); P [NC, C, NS, NS],
    p [NC, C, NS].
    Program (chunk i_c, channel i_ch)."""
    i_c, i_ch = tl.program_id(0).to(tl.int64), tl.program_id(1)
    first, time, batch, steps = _dense_chunk(chunks, chunk_offsets, cu_seqlens, i_c, T, BT, IS_VARLEN)
    o_i = tl.arange(0, BN)
    o_j = tl.arange(0, BN)
    m_i = o_i < NS
    m2 = m_i[:, None] & (o_j < NS)[None, :]
    b_P = tl.where((o_i[:, None] == o_j[None, :]) & m2, 1.0, 0.0).to(DTYPE)
    b_p = tl.zeros([BN], dtype=DTYPE)
    for s in range(0, steps):
        b_A = _dense_step_matrix(A, batch, time + s, i_ch, sAb, sAt, sAc, o_i, o_j, m2, NS, DTYPE)
        b_b = tl.load(b + ((first + s) * C + i_ch) * NS + o_i, mask=m_i, other=0.0).to(DTYPE)
        b_P = tl.dot(b_A, b_P, input_precision="ieee")
        b_p = tl.reduce(b_A * b_p[None, :], 1, _tlib.add) + b_b
    base = i_c * C + i_ch
    tl.store(P + base * NS * NS + o_i[:, None] * NS + o_j[None, :], b_P, mask=m2)
    tl.store(p + base * NS + o_i, b_p, mask=m_i)


@triton.jit
def scan_dense_carry_kernel(P, p, x, h0, ht, chunk_offsets, C, NS: tl.constexpr, BN: tl.constexpr,
                            DTYPE: tl.constexpr, USE_INITIAL_STATE: tl.constexpr):
    """x [NC, C, NS]: the state entering each chunk; h0, ht [N, C, NS]. Program (sequence i_n, channel i_ch)."""
    i_n, i_ch = tl.program_id(0).to(tl.int64), tl.program_id(1)
    o_i = tl.arange(0, BN)
    o_j = tl.arange(0, BN)
    m_i = o_i < NS
    m2 = m_i[:, None] & (o_j < NS)[None, :]
    state = (i_n * C + i_ch) * NS + o_i
    b_x = tl.zeros([BN], dtype=DTYPE)
    if USE_INITIAL_STATE:
        b_x = tl.load(h0 + state, mask=m_i, other=0.0).to(DTYPE)
    c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    c1 = tl.load(chunk_offsets + i_n + 1).to(tl.int64)
    for i_c in range(c0, c1):
        base = i_c * C + i_ch
        tl.store(x + base * NS + o_i, b_x, mask=m_i)
        b_P = tl.load(P + base * NS * NS + o_i[:, None] * NS + o_j[None, :], mask=m2, other=0.0)
        b_x = tl.reduce(b_P * b_x[None, :], 1, _tlib.add) + tl.load(p + base * NS + o_i, mask=m_i, other=0.0)
    tl.store(ht + state, b_x, mask=m_i)


@triton.jit
def scan_dense_apply_kernel(A, b, x, h, chunks, chunk_offsets, cu_seqlens, T, C, sAb, sAt, sAc, NS: tl.constexpr,
                            BN: tl.constexpr, BT: tl.constexpr, DTYPE: tl.constexpr, IS_VARLEN: tl.constexpr):
    """h [B, T, C, NS]: every state, from the state entering each chunk (x). Program (chunk i_c, channel i_ch)."""
    i_c, i_ch = tl.program_id(0).to(tl.int64), tl.program_id(1)
    first, time, batch, steps = _dense_chunk(chunks, chunk_offsets, cu_seqlens, i_c, T, BT, IS_VARLEN)
    o_i = tl.arange(0, BN)
    o_j = tl.arange(0, BN)
    m_i = o_i < NS
    m2 = m_i[:, None] & (o_j < NS)[None, :]
    b_x = tl.load(x + (i_c * C + i_ch) * NS + o_i, mask=m_i, other=0.0)
    for s in range(0, steps):
        b_A = _dense_step_matrix(A, batch, time + s, i_ch, sAb, sAt, sAc, o_i, o_j, m2, NS, DTYPE)
        row = ((first + s) * C + i_ch) * NS + o_i
        b_x = tl.reduce(b_A * b_x[None, :], 1, _tlib.add) + tl.load(b + row, mask=m_i, other=0.0).to(DTYPE)
        tl.store(h + row, b_x, mask=m_i)


DENSE_CHUNK = 64        # tokens per chunk of the dense scan on a GPU (the interpreter: 16)


def _dense_chunk_table(lengths: list[int], BT: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(chunks [NC, 2] int32: (sequence, chunk within it), chunk_offsets [N + 1]: sequence i's chunks are
    chunk_offsets[i] .. chunk_offsets[i + 1] - 1)."""
    counts = [triton.cdiv(n, BT) for n in lengths]
    table = [(i, j) for i, c in enumerate(counts) for j in range(c)]
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    chunks = torch.tensor(table or [(0, 0)], dtype=torch.int32, device=device)
    return chunks, torch.tensor(offsets, dtype=torch.int64, device=device)


def _dense_launch(A: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, cu_seqlens) -> tuple:
    """The three dense scan kernels on A [BA, TA, *M, n, n] (BA in {1, B}, TA in {1, T}, M broadcastable to b's)
    and b [B, T, *M, n], one real compute dtype; h0 [N, *M, n] or None: (all states [B, T, *M, n], final states
    [N, *M, n])."""
    B, T = b.shape[:2]
    mids, n = tuple(b.shape[2:-1]), b.shape[-1]
    C = math.prod(mids)
    BA, TA = A.shape[:2]
    CA = 1 if all(m == 1 for m in A.shape[2:-2]) else C       # one matrix for every channel (HiPPO's), or C
    A_rows = A.expand(BA, TA, *(A.shape[2:-2] if CA == 1 else mids), n, n).reshape(BA, TA, CA, n, n).contiguous()
    sAb = TA * CA * n * n if BA > 1 else 0
    sAt = CA * n * n if TA > 1 else 0
    sAc = n * n if CA > 1 else 0
    b_rows = b.reshape(B, T, C, n).contiguous()
    if cu_seqlens is None:
        lengths, cu = [T] * B, b_rows
    else:
        lengths, cu = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist(), cu_seqlens
    N = len(lengths)
    BT = 16 if _rt.interpreting() else DENSE_CHUNK
    BN = max(16, _rt.next_pow2(n))
    chunks, offsets = _dense_chunk_table(lengths, BT, b.device)
    NC = int(offsets[-1])
    P = torch.empty(max(NC, 1), C, n, n, dtype=b.dtype, device=b.device)
    p = torch.empty(max(NC, 1), C, n, dtype=b.dtype, device=b.device)
    x = torch.empty_like(p)
    h = torch.empty_like(b_rows)
    ht = torch.empty(N, C, n, dtype=b.dtype, device=b.device)
    h0_rows = h0.reshape(N, C, n).contiguous() if h0 is not None else ht
    common = dict(NS=n, BN=BN, DTYPE=_rt.tl_dtype(b.dtype), num_warps=1 if _rt.interpreting() else 4)
    if NC:
        scan_dense_reduce_kernel[(NC, C)](A_rows, b_rows, P, p, chunks, offsets, cu, T, C, sAb, sAt, sAc, BT=BT,
                                          IS_VARLEN=cu_seqlens is not None, **common)
    scan_dense_carry_kernel[(N, C)](P, p, x, h0_rows, ht, offsets, C, USE_INITIAL_STATE=h0 is not None, **common)
    if NC:
        scan_dense_apply_kernel[(NC, C)](A_rows, b_rows, x, h, chunks, offsets, cu, T, C, sAb, sAt, sAc, BT=BT,
                                         IS_VARLEN=cu_seqlens is not None, **common)
    return h.reshape(b.shape), ht.reshape(N, *mids, n)


def _sum_to(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return x.sum_to_size(shape) if x.shape != shape else x


def _dense_grad_A(lam: torch.Tensor, h_prev: torch.Tensor, A_shape: torch.Size) -> torch.Tensor:
    """dA = sum of lam_t h_{t-1}^T over what A broadcasts along (lam, h_prev [B, T, *M, n]; A [BA, TA, *MA, n, n]),
    one contraction: no [B, T, *M, n, n] tensor where A is shared by the tokens, the batch or the channels."""
    B, T, n = lam.shape[0], lam.shape[1], lam.shape[-1]
    mids, A_mids = tuple(lam.shape[2:-1]), tuple(A_shape[2:-2])
    shared = all(m == 1 for m in A_mids)
    out = ("b" if A_shape[0] > 1 else "") + ("t" if A_shape[1] > 1 else "") + ("" if shared else "c") + "ij"
    dA = torch.einsum(f"btci,btcj->{out}", lam.reshape(B, T, -1, n), h_prev.reshape(B, T, -1, n))
    return _sum_to(dA.reshape(A_shape[0], A_shape[1], *(A_mids if shared else mids), n, n), A_shape)


class _ScanDense(torch.autograd.Function):
    """h = scan_dense(A, b, h0) with a Triton backward. The adjoint of h_t = A_t h_{t-1} + b_t is the recurrence
    lam_t = dh_t + A_{t+1}^T lam_{t+1} from lam_T = dht: the forward kernels on the time-reversed gradients with
    the transposed matrices shifted by one token (the final state's gradient added at each reversed sequence's
    first token, and no initial state, so the matrix at that token is never used). Then db = lam,
    dA_t = lam_t h_{t-1}^T (summed where A broadcasts), dh0 = A_0^T lam_0; a sequence with no tokens passes dht to
    its dh0. Packed sequences: the flipped packed axis reverses every sequence and their order (one varlen
    launch on the mirrored boundaries)."""

    @staticmethod
    def forward(ctx, A, b, h0, cu_seqlens):
        h, ht = _dense_launch(A, b, h0, cu_seqlens)
        ctx.save_for_backward(A, h, h0, cu_seqlens)
        return h, ht

    @staticmethod
    def backward(ctx, dh, dht):
        A, h, h0, cu = ctx.saved_tensors
        B, T = h.shape[:2]
        At = A.transpose(-1, -2)
        if A.shape[1] > 1:                  # A'_s = A_{T-s}^T on the reversed axis (s = 0: never used)
            rev = At.flip(1)
            At = torch.cat([rev[:, :1], rev[:, :-1]], 1)
        # each sequence with tokens: its row, its first token and its length (packed: empty ones left out)
        dev = h.device
        if cu is None:
            seqs = rows = torch.arange(B, device=dev)
            first, lengths = torch.zeros_like(seqs), torch.full_like(seqs, T)
            mirrored = None
        else:
            lengths = (cu[1:] - cu[:-1]).long()
            seqs = torch.nonzero(lengths).flatten()
            rows, first, lengths = torch.zeros_like(seqs), cu[:-1].long()[seqs], lengths[seqs]
            mirrored = (T - cu).flip(0)
        b_rev = dh.flip(1).clone()
        if dht is not None:                 # dht enters at each sequence's last token, the first one reversed
            b_rev[rows, T - first - lengths] += dht[seqs]
        lam = _dense_launch(At, b_rev, None, mirrored)[0].flip(1)
        h_prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], 1)
        h_prev[rows, first] = h0[seqs] if h0 is not None else 0
        dA = _dense_grad_A(lam, h_prev, A.shape) if ctx.needs_input_grad[0] else None
        dh0 = None
        if h0 is not None and ctx.needs_input_grad[2]:
            dh0 = dht.clone() if dht is not None else torch.zeros_like(h0)      # a sequence of no tokens: dht
            Af = A.expand(A.shape[0], A.shape[1], *h.shape[2:-1], *A.shape[-2:])
            A_first = Af[rows.clamp(max=Af.shape[0] - 1), first.clamp(max=Af.shape[1] - 1)]
            dh0[seqs] = (A_first.transpose(-1, -2) @ lam[rows, first][..., None])[..., 0]
        return dA, lam, dh0, None


def scan_dense(A, b, initial_state=None, output_final_state=False, cu_seqlens=None):
    """``torch_forms.scan_dense`` on the Triton kernels above (see there for shapes and dtypes): A [B or 1, T or 1,
    ..., n, n], b [B, T, ..., n]. Autograd: the Triton backward of ``_ScanDense``. Complex values run as the real
    recurrence of twice the size (``_realified``)."""
    if A.dim() != b.dim() + 1 or A.shape[-1] != A.shape[-2] or A.shape[-1] != b.shape[-1]:
        raise ValueError(f"A {tuple(A.shape)} must be [..., n, n] over b {tuple(b.shape)}")
    B, T = b.shape[:2]
    if A.shape[0] not in (1, B) or A.shape[1] not in (1, T):
        raise ValueError(f"A {tuple(A.shape)}: its batch and time sizes must be 1 or b's {(B, T)}")
    if T == 0:
        return _torch_forms.scan_dense(A, b, initial_state, output_final_state, cu_seqlens)
    _torch_forms._check_varlen(B, cu_seqlens, initial_state)
    cd = _torch_forms._compute_dtype(A, b, state=initial_state)
    out_dtype = _torch_forms._output_dtype(cd, b, A)
    if cd.is_complex:
        return _realified(A.to(cd), b.to(cd), initial_state, output_final_state, cu_seqlens, out_dtype)
    A, b = A.to(cd), b.to(cd)
    h0 = initial_state.to(cd) if initial_state is not None else None
    wants_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (A, b, h0))
    if wants_grad:
        h, ht = _ScanDense.apply(A, b, h0, cu_seqlens)
    else:
        h, ht = _dense_launch(A, b, h0, cu_seqlens)
    return h.to(out_dtype), (ht if output_final_state else None)


def _realified(A, b, initial_state, output_final_state, cu_seqlens, out_dtype):
    """The complex recurrence h_t = A_t h_{t-1} + b_t as a real one of twice the size: h = [Re h; Im h] and
    A = [[Re A, -Im A], [Im A, Re A]] (torch ops, so autograd gives the complex gradients in torch's convention)."""
    def stacked(x):
        return torch.cat([x.real, x.imag], -1)

    Ar = torch.cat([torch.cat([A.real, -A.imag], -1), torch.cat([A.imag, A.real], -1)], -2)
    h0 = None if initial_state is None else stacked(initial_state.to(b.dtype))
    h, ht = scan_dense(Ar, stacked(b), h0, output_final_state, cu_seqlens)
    n = b.shape[-1]
    h = torch.complex(h[..., :n], h[..., n:])
    return h.to(out_dtype), (torch.complex(ht[..., :n], ht[..., n:]) if output_final_state else None)
