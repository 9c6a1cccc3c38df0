"""Chunkwise gated linear attention and delta rule as Triton kernels, in fla's stage structure.

    S_t = exp(g_t) exp(gk_t)[:, None] ⊙ S_{t-1} + k_t v_t^T,    o_t = S_t^T q_t

for a scalar log gate g ([B, T, H]), a key-axis log gate gk ([B, T, H, K]) or none. Stages:

1. ``chunk_local_cumsum_kernel``: G = the cumulative sums of the log gates within each chunk.
2. ``chunk_fwd_h_kernel``: the state entering every chunk, h[c] ([B, H, NT, K, V]), sequentially
   over the chunks: h[c+1] = exp(G_last) ⊙ h[c] + (k ⊙ exp(G_last - G))^T v.
3. ``chunk_intra_gk_kernel`` (key gates only): the causal intra-chunk scores
   A_ts = sum_i q_ti k_si exp(G_ti - G_si), by secondary chunking into sub-chunks of BC tokens: an
   off-diagonal sub-block uses the first row of its query sub-chunk as the reference point, so
   both exponentials are of non-positive numbers; a diagonal sub-block goes column by column (or,
   with DIAG_3D, as one [BC, BC, BK] product: the launch policy's choice under the interpreter).
4. ``chunk_fwd_o_kernel``: o = (q ⊙ exp(G)) h[c] + A v, with A computed here for a scalar gate
   (A = (q k^T) ⊙ exp(G_t - G_s), causal) or read from stage 3.

The delta rule (``chunk_delta``: S = exp(g_t) S; S += beta_t k_t (v_t - S^T k_t)^T) adds two stages between
1 and 4: ``chunk_delta_wy_kernel`` (per chunk, the UT transform: the inverse of I + tril(diag(beta) K K^T ⊙ D, -1)
in 16 x 16 blocks, ``unit_lower_inverse``, then W and U) and ``chunk_delta_fwd_h_kernel`` in place of stage 2 (the
states entering the chunks from the corrected values v_new = U - W S, every key channel of a V tile in one program,
as up to four 64-row register blocks), then stage 4 with v_new for v.

Every kernel takes ``cu_seqlens`` and ``IS_VARLEN`` (compile time): packed sequences (B = 1, N sequences of any
lengths) run in the same launches as equal-length rows, one program row per sequence, tokens at bos + t
(``triton_lib.sequence_bounds``), the chunk states h [N, H, NT, K, V] with NT the longest sequence's chunk count.
Layouts are fla's: ``[B, T, H, D]``, contiguous; for decaying gates (log gates <= 0) every exponential is of a
non-positive number, so nothing overflows. That includes the rows past T of a sequence's last chunk (with packed
sequences, the next sequence's rows), which load their log gate as 0: exp(G_t - G_s) of such a row t and a real row
s would be exp(-G_s), inf once the chunk's decay passes e^-88, and inf times the row's zeros is NaN, which a product
over rows (A^T q, the WY inverse's blocks) would carry into the real rows. So the masks of pairwise exponents
(``causal``, ``strict``) also require a real row t (before 2026-12-06 they did not: NaN gradients from a chunk's
log decay of about -90 on, and for the delta rule NaN outputs too). Growing gates (log gates > 0, e.g. Liquid-S4's input-dependent
transition) are exact as long as their products over a chunk stay in range: a pairwise exponent is only
taken at causal (t >= s) entries, the others are masked before the exp, never clamped.
Accumulation in fp32 (fp64 for fp64 inputs). Inputs are read in their own dtypes (bf16 / fp16 converted as they
are loaded; the query scale applied to what q's products give, so that q goes to tl.dot straight from memory), o is stored in the op's output dtype where the op asks for it
(``op.readout_dtype``), and the backward kernels store dq, dk, dv (and dbeta) in their inputs' dtypes.
Backward (gated chunk; Triton kernels too): ``chunk_bwd_dh_kernel`` carries the state gradient from the
last chunk to the first (dS_c = exp(G_last) ⊙ dS_{c+1} + (q ⊙ exp(G))^T do); for key gates
``chunk_bwd_intra_gk_kernel`` computes the intra-chunk dq, dk by the forward's sub-chunks; then
``chunk_bwd_dqk_kernel`` (per K tile, looping over V tiles) adds the inter-chunk terms of dq, dk and gives the
log-gate gradient (a reverse cumulative sum within the chunk), ``chunk_bwd_dv_kernel`` (per V tile, looping over
K tiles) dv. The delta rule's backward: ``chunk_delta_bwd_dhu_kernel`` carries the state
gradient back and gives the gradient of the corrected values v_new; ``chunk_delta_bwd_kernel`` then does each
chunk's outputs, state passing and WY / UT stage in reverse (with the inverse the forward stored, as fla does).
"""

from __future__ import annotations

import triton
import triton.language as tl
import torch

from seqdsl.runtime import triton_lib as _tlib
from seqdsl.runtime import triton_runtime as _rt
from seqdsl.runtime import triton_tune as _tt
from seqdsl.runtime.op import low_precision_of
from seqdsl.runtime.op import low_precision_inputs as _op_low_precision
from seqdsl.runtime.op import packed_bounds as _packed_bounds
from seqdsl.runtime.op import readout_dtype as _op_readout_dtype
from seqdsl.runtime.op import readouts_in as _readouts_in
from seqdsl.runtime.op import is_zero_initial_state as _op_zero_initial_state

GATE_NONE, GATE_SCALAR, GATE_KEY = 0, 1, 2


@triton.jit
def chunk_rows(i_t, i_bh, T, cu_seqlens, H: tl.constexpr, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Where chunk i_t of program row i_bh (= i_b * H + i_h) lies: (i_h, NT, bos, T, o_c, o_t, m_t, last) =
    the head, the chunk slots per sequence in h / dh (this chunk's: i_bh * NT + i_t), the sequence's first
    row and length, the chunk's local offsets [BT], its time steps, which of them exist, and its last step."""
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)
    bos, T = _tlib.sequence_bounds(cu_seqlens, i_b, T, IS_VARLEN)
    o_c = tl.arange(0, BT)
    o_t = i_t * BT + o_c
    m_t = o_t < T
    last = tl.minimum(i_t * BT + BT, T) - 1
    return i_h, NT, bos, T, o_c, o_t, m_t, last


@triton.jit
def chunk_local_cumsum_kernel(g, gc, T, cu_seqlens, H: tl.constexpr, D: tl.constexpr, BT: tl.constexpr,
                              BD: tl.constexpr, REVERSE: tl.constexpr, IS_VARLEN: tl.constexpr):
    """gc[b, t, h, :] = sum of g[b, s, h, :] for s from t's chunk start to t (REVERSE: from t to the chunk's end).
    g, gc: [B, T, H, D]."""
    i_d, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    bos, T = _tlib.sequence_bounds(cu_seqlens, i_b, T, IS_VARLEN)
    o_t = i_t * BT + tl.arange(0, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    m = (o_t < T)[:, None] & (o_d < D)[None, :]
    p = ((bos + o_t[:, None]) * H + i_h) * D + o_d[None, :]
    b_g = tl.load(g + p, mask=m, other=0.0).to(gc.dtype.element_ty)         # [BT, BD], in gc's dtype
    b_c = tl.cumsum(b_g, axis=0)
    if REVERSE:
        b_c = tl.reduce(b_g, 0, _tlib.add)[None, :] - b_c + b_g
    tl.store(gc + p, b_c, mask=m)


@triton.jit
def chunk_fwd_h_kernel(
    k, v, gc,            # [B, T, H, K], [B, T, H, V], G: [B, T, H] (scalar) or [B, T, H, K] (key)
    h, h0, ht,           # h: [B, H, NT, K, V] the state entering each chunk; h0, ht: [B, H, K, V]
    T, cu_seqlens, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, STORE_FINAL_STATE: tl.constexpr, DTYPE: tl.constexpr, PREC: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    """h[c+1] = exp(G_last) ⊙ h[c] + (k ⊙ exp(G_last - G))^T v, chunk after chunk, for one (K, V) tile (the delta
    rule's: ``chunk_delta_fwd_h_kernel``)."""
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)                    # chunks per row of h (the longest sequence's)
    bos, T = _tlib.sequence_bounds(cu_seqlens, i_b, T, IS_VARLEN)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = o_k[:, None] * V + o_v[None, :]
    b_h = tl.zeros([BK, BV], dtype=DTYPE)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + i_bh * K * V + p_kv, mask=m_kv, other=0.0).to(DTYPE)
    for i_t in range(0, tl.cdiv(T, BT)):
        tl.store(h + (i_bh * NT + i_t) * K * V + p_kv, b_h.to(h.dtype.element_ty), mask=m_kv)
        o_t = i_t * BT + tl.arange(0, BT)
        m_t = o_t < T
        last = tl.minimum(i_t * BT + BT, T) - 1
        b_k = tl.load(k + ((bos + o_t[:, None]) * H + i_h) * K + o_k[None, :],
                      mask=m_t[:, None] & m_k[None, :], other=0.0).to(DTYPE)              # [BT, BK]
        p_v = ((bos + o_t[:, None]) * H + i_h) * V + o_v[None, :]
        b_v = tl.load(v + p_v, mask=m_t[:, None] & m_v[None, :], other=0.0).to(DTYPE)    # [BT, BV]
        if GATE == 1:
            b_g = tl.load(gc + (bos + o_t) * H + i_h, mask=m_t, other=0.0).to(DTYPE)  # [BT]
            b_glast = tl.load(gc + (bos + last) * H + i_h).to(DTYPE)
            b_h *= tl.exp(b_glast)
            b_v = b_v * tl.exp(b_glast - b_g)[:, None]
        if GATE == 2:
            b_gk = tl.load(gc + ((bos + o_t[:, None]) * H + i_h) * K + o_k[None, :],
                           mask=m_t[:, None] & m_k[None, :], other=0.0).to(DTYPE)         # [BT, BK]
            b_gklast = tl.load(gc + ((bos + last) * H + i_h) * K + o_k, mask=m_k, other=0.0).to(DTYPE)
            b_h *= tl.exp(b_gklast)[:, None]
            b_k = tl.where(m_t[:, None], b_k * tl.exp(b_gklast[None, :] - b_gk), 0.0)
        b_h += _tlib.dot(tl.trans(b_k), b_v, PREC)
    if STORE_FINAL_STATE:
        tl.store(ht + i_bh * K * V + p_kv, b_h.to(ht.dtype.element_ty), mask=m_kv)


@triton.jit
def chunk_intra_gk_kernel(
    q, k, gc, A,         # [B, T, H, K] x3; A: [B, T, H, BT] the causal scores within each chunk
    scale,               # the queries' scale: A is stored times it
    T, cu_seqlens, H: tl.constexpr, K: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, DIAG_3D: tl.constexpr, DTYPE: tl.constexpr,
    PREC: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    bos, T = _tlib.sequence_bounds(cu_seqlens, i_b, T, IS_VARLEN)
    NC: tl.constexpr = BT // BC
    o_c = tl.arange(0, BC)
    for i_i in tl.static_range(NC):
        o_i = i_t * BT + i_i * BC + o_c                                       # query rows
        m_i = o_i < T
        ref = tl.minimum(i_t * BT + i_i * BC, T - 1)                          # reference row
        for i_j in tl.static_range(i_i + 1):
            o_j = i_t * BT + i_j * BC + o_c                                   # key rows
            m_j = o_j < T
            b_A = tl.zeros([BC, BC], dtype=DTYPE)
            for i_k in range(0, tl.cdiv(K, BK)):
                o_k = i_k * BK + tl.arange(0, BK)
                m_k = o_k < K
                m_ik, m_jk = m_i[:, None] & m_k[None, :], m_j[:, None] & m_k[None, :]
                p_i = ((bos + o_i[:, None]) * H + i_h) * K + o_k[None, :]           # [BC, BK] query rows
                p_j = ((bos + o_j[:, None]) * H + i_h) * K + o_k[None, :]           # [BC, BK] key rows
                b_q = tl.load(q + p_i, mask=m_ik, other=0.0).to(DTYPE)
                b_gi = tl.load(gc + p_i, mask=m_ik, other=0.0).to(DTYPE)
                if i_i > i_j:
                    b_k = tl.load(k + p_j, mask=m_jk, other=0.0).to(DTYPE)
                    b_gj = tl.load(gc + p_j, mask=m_jk, other=0.0).to(DTYPE)
                    b_gr = tl.load(gc + ((bos + ref) * H + i_h) * K + o_k, mask=m_k, other=0.0).to(DTYPE)
                    b_qg = tl.where(m_ik, b_q * tl.exp(b_gi - b_gr[None, :]), 0.0)
                    b_kg = tl.where(m_jk, b_k * tl.exp(b_gr[None, :] - b_gj), 0.0)
                    b_A += _tlib.dot(b_qg, tl.trans(b_kg), PREC)
                elif DIAG_3D:       # the diagonal sub-block at once: a [BC, BC, BK] product
                    b_k = tl.load(k + p_j, mask=m_jk, other=0.0).to(DTYPE)
                    b_gj = tl.load(gc + p_j, mask=m_jk, other=0.0).to(DTYPE)
                    causal = (o_i[:, None, None] >= o_j[None, :, None]) & m_i[:, None, None]
                    b_e = tl.exp(tl.where(causal, b_gi[:, None, :] - b_gj[None, :, :], 0.0))
                    b_a = tl.reduce(b_q[:, None, :] * b_k[None, :, :] * b_e, 2, _tlib.add)
                    b_A += tl.where(o_i[:, None] >= o_j[None, :], b_a, 0.0)
                else:               # column by column (fewer registers)
                    for j in range(0, BC):
                        s = i_t * BT + i_j * BC + j
                        s_in = tl.minimum(s, T - 1)       # rows past T only meet rows past T (not stored)
                        p_s = ((bos + s_in) * H + i_h) * K + o_k
                        b_ks = tl.load(k + p_s, mask=m_k, other=0.0).to(DTYPE)
                        b_gs = tl.load(gc + p_s, mask=m_k, other=0.0).to(DTYPE)
                        b_e = tl.exp(tl.where(((o_i >= s) & m_i)[:, None], b_gi - b_gs[None, :], 0.0))
                        b_a = tl.reduce(b_q * b_ks[None, :] * b_e, 1, _tlib.add)
                        b_a = tl.where(o_i >= s, b_a, 0.0)                    # [BC]: column j
                        b_A += tl.where(o_c[None, :] == j, b_a[:, None], 0.0)
            p_A = A + ((bos + o_i[:, None]) * H + i_h) * BT + i_j * BC + o_c[None, :]
            tl.store(p_A, (b_A * scale).to(A.dtype.element_ty), mask=m_i[:, None] & m_j[None, :])


def intra_scores_buffer(shape: tuple, dtype: torch.dtype, device) -> torch.Tensor:
    """The key-gated chunk's intra-chunk scores A [B, T, H, BT], left unfilled: chunk_intra_gk_kernel writes the
    causal sub-blocks (rows < T) and its readers (chunk_fwd_o_kernel, chunk_bwd_dv_kernel) mask the rest."""
    return torch.empty(shape, dtype=dtype, device=device)


@triton.jit
def chunk_fwd_o_kernel(
    q, k, v, gc, h, A, o,   # q, k [B, T, H, K], v, o [B, T, H, V], h [B, H, NT, K, V], A [B, T, H, BT]
    scale,                  # the queries' scale (applied to the products, not to q: a dot operand straight
                            # from memory keeps its shared-memory pipeline)
    T, cu_seqlens, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, DTYPE: tl.constexpr,
    PREC: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)
    bos, T = _tlib.sequence_bounds(cu_seqlens, i_b, T, IS_VARLEN)
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < T
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    b_o = tl.zeros([BT, BV], dtype=DTYPE)
    b_A = tl.zeros([BT, BT], dtype=DTYPE)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        b_q = tl.load(q + ((bos + o_t[:, None]) * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0).to(DTYPE)
        b_h = tl.load(h + (i_bh * NT + i_t) * K * V + o_k[:, None] * V + o_v[None, :],
                      mask=m_k[:, None] & m_v[None, :], other=0.0).to(DTYPE)               # [BK, BV]
        if GATE == 2:
            b_gk = tl.load(gc + ((bos + o_t[:, None]) * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0).to(DTYPE)
            b_o += _tlib.dot(b_q * tl.exp(b_gk), b_h, PREC)
        else:
            b_o += _tlib.dot(b_q, b_h, PREC)
            b_k = tl.load(k + ((bos + o_t[:, None]) * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0).to(DTYPE)
            b_A += _tlib.dot(b_q, tl.trans(b_k), PREC)
    b_o = b_o * scale
    b_A = b_A * scale           # (a key gate's A, read below, is stored scaled)
    causal = (o_t[:, None] >= o_t[None, :]) & m_t[:, None]     # real rows only (module docstring)
    if GATE == 2:
        b_A = tl.load(A + ((bos + o_t[:, None]) * H + i_h) * BT + tl.arange(0, BT)[None, :],
                      mask=m_t[:, None], other=0.0).to(DTYPE)
    if GATE == 1:
        b_g = tl.load(gc + (bos + o_t) * H + i_h, mask=m_t, other=0.0).to(DTYPE)
        b_o = b_o * tl.exp(b_g)[:, None]
        b_A = b_A * tl.exp(tl.where(causal, b_g[:, None] - b_g[None, :], 0.0))
    b_A = tl.where(causal, b_A, 0.0)
    b_v = tl.load(v + ((bos + o_t[:, None]) * H + i_h) * V + o_v[None, :],
                  mask=m_t[:, None] & m_v[None, :], other=0.0).to(DTYPE)
    b_o += _tlib.dot(b_A, b_v, PREC)
    tl.store(o + ((bos + o_t[:, None]) * H + i_h) * V + o_v[None, :], b_o.to(o.dtype.element_ty),
             mask=m_t[:, None] & m_v[None, :])


@triton.jit
def unit_lower_inverse(b_A, o_c, BT: tl.constexpr, DTYPE: tl.constexpr, PREC: tl.constexpr):
    """(I + A)^-1 for a strictly lower-triangular A [BT, BT], in blocks of 16 (fla's solve_tril in one register
    block). Split I + A = Dg + E into its diagonal 16 x 16 blocks Dg and the blocks below them E. Dg^-1: forward
    substitution in every diagonal block at once (row r of Dg^-1 is e_r - sum_{j<r} A_rj (Dg^-1)_j, j in r's
    block), 15 steps whatever BT. Then (I + A)^-1 = (I + N)^-1 Dg^-1 with N = Dg^-1 E strictly block-lower, so
    nilpotent with N^(BT/16) = 0: (I + N)^-1 = (I - N)(I + N^2)(I + N^4)... up to N^(BT/32), by dots to fp32
    accuracy (``triton_lib.dot_fp32``, on tensor cores; fla's merge uses fp32 "ieee" dots), fp64 blocks in fp64.
    Padded rows (A's rows and columns zero there) stay unit rows. The 63 steps of forward substitution over a
    [64, 64] block were two reductions across the warps each; these are 15, and 4 products of [64, 64] blocks."""
    SB: tl.constexpr = 16 if BT > 16 else BT
    eye = o_c[:, None] == o_c[None, :]
    same = (o_c[:, None] // SB) == (o_c[None, :] // SB)          # the diagonal blocks
    b_Ad = tl.where(same, b_A, 0.0)
    b_Di = tl.where(eye, 1.0, 0.0).to(DTYPE)
    for i in range(1, SB):
        at_i = (o_c % SB) == i                                   # row i of every diagonal block
        b_a = tl.reduce(tl.where(at_i[:, None], b_Ad, 0.0), 0, _tlib.add)    # [BT]: at j, A[16 blk(j) + i, j]
        b_row = tl.reduce(b_a[:, None] * b_Di, 0, _tlib.add)                 # at c: c's block's row i times Dg^-1
        b_Di = tl.where(at_i[:, None] & same, b_Di - b_row[None, :], b_Di)
    if BT > SB:
        b_N = _tlib.dot_fp32(b_Di, tl.where(same, 0.0, b_A).to(DTYPE), PREC)     # Dg^-1 E
        b_P = tl.where(eye, 1.0, 0.0).to(DTYPE) - b_N                            # I - N
        for j in tl.static_range(2, 8):                         # (I + N^2)(I + N^4) ... while N^(2^(j-1)) != 0
            if (SB << j) <= BT:
                b_N = _tlib.dot_fp32(b_N, b_N, PREC)
                b_P = b_P + _tlib.dot_fp32(b_P, b_N, PREC)
        b_Di = _tlib.dot_fp32(b_P, b_Di, PREC)
    return b_Di


@triton.jit
def chunk_delta_wy_kernel(
    k, v, beta, gc, w, u, tm,   # k, w [B, T, H, K]; v, u [B, T, H, V]; beta, G [B, T, H]; out: tm [B, T, H, BT]
    T, cu_seqlens, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATED: tl.constexpr, DTYPE: tl.constexpr,
    PREC: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    """The WY / UT stage of the delta rule for one chunk: with A = tril(diag(beta) K K^T ⊙ D, -1),
    D_ts = exp(G_t - G_s), the inverse Tm = (I + A)^-1 (``unit_lower_inverse``; stored in tm, row t of the chunk's
    Tm at token t, for the backward), then W = Tm diag(beta exp(G)) K and U = Tm diag(beta) V.
    Rows past T load zeros (beta = 0): their rows of Tm are unit rows and of W, U zero."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    bos, T = _tlib.sequence_bounds(cu_seqlens, i_b, T, IS_VARLEN)
    o_t = i_t * BT + tl.arange(0, BT)
    o_c = tl.arange(0, BT)
    m_t = o_t < T
    o_k = tl.arange(0, BK)
    m_tk = m_t[:, None] & (o_k < K)[None, :]
    p_k = ((bos + o_t[:, None]) * H + i_h) * K + o_k[None, :]
    b_k = tl.load(k + p_k, mask=m_tk, other=0.0).to(DTYPE)                          # [BT, BK]
    b_beta = tl.load(beta + (bos + o_t) * H + i_h, mask=m_t, other=0.0).to(DTYPE)  # [BT]
    b_kb = b_k * b_beta[:, None]
    b_A = _tlib.dot(b_kb, tl.trans(b_k), PREC)                         # [BT, BT]
    if GATED:
        b_g = tl.load(gc + (bos + o_t) * H + i_h, mask=m_t, other=0.0).to(DTYPE)
        b_A = b_A * tl.exp(tl.where((o_c[:, None] > o_c[None, :]) & m_t[:, None], b_g[:, None] - b_g[None, :], 0.0))
    b_A = tl.where(o_c[:, None] > o_c[None, :], b_A, 0.0)
    b_Tm = unit_lower_inverse(b_A, o_c, BT, DTYPE, PREC)
    tl.store(tm + ((bos + o_t[:, None]) * H + i_h) * BT + o_c[None, :], b_Tm.to(tm.dtype.element_ty),
             mask=m_t[:, None])
    if GATED:
        b_kb = b_kb * tl.exp(b_g)[:, None]
    tl.store(w + p_k, _tlib.dot(b_Tm, b_kb, PREC).to(w.dtype.element_ty), mask=m_tk)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        p_v = ((bos + o_t[:, None]) * H + i_h) * V + o_v[None, :]
        b_v = tl.load(v + p_v, mask=m_tv, other=0.0).to(DTYPE) * b_beta[:, None]
        tl.store(u + p_v, _tlib.dot(b_Tm, b_v, PREC).to(u.dtype.element_ty), mask=m_tv)


@triton.jit
def chunk_bwd_dh_kernel(
    q, do, gc,           # q [B, T, H, K] (times scale), do [B, T, H, V], G [B, T, H]
    dh, dht, dh0,        # dh [B, H, NT, K, V]: the gradient w.r.t. the state after each chunk; dht, dh0 [B, H, K, V]
    scale,
    T, cu_seqlens, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
    USE_FINAL_STATE_GRADIENT: tl.constexpr, STORE_INITIAL_STATE_GRADIENT: tl.constexpr, DTYPE: tl.constexpr,
    PREC: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """The state gradients, chunk after chunk from the last: dS_c = exp(G_last) dS_{c+1} + (q ⊙ exp(G))^T do
    over chunk c, starting from the final state's gradient (dht; zeros without USE_FINAL_STATE_GRADIENT); what is
    left at the start is dh0 (stored with STORE_INITIAL_STATE_GRADIENT)."""
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)                    # chunks per row of dh (the longest sequence's)
    bos, T = _tlib.sequence_bounds(cu_seqlens, i_b, T, IS_VARLEN)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    p_kv = o_k[:, None] * V + o_v[None, :]
    b_dh = tl.zeros([BK, BV], dtype=DTYPE)
    if USE_FINAL_STATE_GRADIENT:
        b_dh += tl.load(dht + i_bh * K * V + p_kv, mask=m_k[:, None] & m_v[None, :], other=0.0).to(DTYPE)
    NT_seq = tl.cdiv(T, BT)
    for i in range(0, NT_seq):
        i_t = NT_seq - 1 - i
        tl.store(dh + (i_bh * NT + i_t) * K * V + p_kv, b_dh.to(dh.dtype.element_ty), mask=m_k[:, None] & m_v[None, :])
        o_t = i_t * BT + tl.arange(0, BT)
        m_t = o_t < T
        b_q = tl.load(q + ((bos + o_t[:, None]) * H + i_h) * K + o_k[None, :],
                      mask=m_t[:, None] & m_k[None, :], other=0.0).to(DTYPE)               # [BT, BK]
        b_do = tl.load(do + ((bos + o_t[:, None]) * H + i_h) * V + o_v[None, :],
                       mask=m_t[:, None] & m_v[None, :], other=0.0).to(DTYPE)              # [BT, BV]
        if GATE == 1:
            last = tl.minimum(i_t * BT + BT, T) - 1
            b_g = tl.load(gc + (bos + o_t) * H + i_h, mask=m_t, other=0.0).to(DTYPE)
            b_dh *= tl.exp(tl.load(gc + (bos + last) * H + i_h).to(DTYPE))
            b_q = b_q * tl.exp(b_g)[:, None]
        if GATE == 2:
            last = tl.minimum(i_t * BT + BT, T) - 1
            b_gk = tl.load(gc + ((bos + o_t[:, None]) * H + i_h) * K + o_k[None, :],
                           mask=m_t[:, None] & m_k[None, :], other=0.0).to(DTYPE)         # [BT, BK]
            b_gklast = tl.load(gc + ((bos + last) * H + i_h) * K + o_k, mask=m_k, other=0.0).to(DTYPE)
            b_dh *= tl.exp(b_gklast)[:, None]
            b_q = b_q * tl.exp(b_gk)
        b_dh += _tlib.dot(tl.trans(b_q), b_do, PREC) * scale
    if STORE_INITIAL_STATE_GRADIENT:
        tl.store(dh0 + i_bh * K * V + p_kv, b_dh.to(dh0.dtype.element_ty), mask=m_k[:, None] & m_v[None, :])


@triton.jit
def chunk_bwd_intra_gk_kernel(
    q, k, v, gc, do,     # q (times scale), k, G [B, T, H, K]; v, do [B, T, H, V]
    dq, dk,              # out: the intra-chunk parts of dq (w.r.t. the scaled q), dk [B, T, H, K]
    scale,
    T, cu_seqlens, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DTYPE: tl.constexpr, PREC: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    """The intra-chunk gradients of a key-gated chunk, with dA_ts = do_t . v_s (causal):
        dq_t = sum_{s <= t} dA_ts k_s ⊙ exp(G_t - G_s),   dk_s = sum_{t >= s} dA_ts q_t ⊙ exp(G_t - G_s),
    by sub-chunks of BC rows, as in the forward's stage 3: an off-diagonal pair factors the decay through a
    reference row between them (the first row of the query sub-chunk for dq, the last row of the key
    sub-chunk for dk), so every exponential is of a non-positive number; a diagonal pair goes column by column.
    All K (BK >= K) and V (BV >= V) channels in one block."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    bos, T = _tlib.sequence_bounds(cu_seqlens, i_b, T, IS_VARLEN)
    NC: tl.constexpr = BT // BC
    o_c = tl.arange(0, BC)
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    for i_i in tl.static_range(NC):                                          # dq of query sub-chunk i
        o_i = i_t * BT + i_i * BC + o_c
        m_i = o_i < T
        m_ik = m_i[:, None] & m_k[None, :]
        p_ik = ((bos + o_i[:, None]) * H + i_h) * K + o_k[None, :]
        b_do = tl.load(do + ((bos + o_i[:, None]) * H + i_h) * V + o_v[None, :],
                       mask=m_i[:, None] & m_v[None, :], other=0.0).to(DTYPE)              # [BC, BV]
        b_gi = tl.load(gc + p_ik, mask=m_ik, other=0.0).to(DTYPE)                          # [BC, BK]
        ref = tl.minimum(i_t * BT + i_i * BC, T - 1)
        b_gr = tl.load(gc + ((bos + ref) * H + i_h) * K + o_k, mask=m_k, other=0.0).to(DTYPE)
        b_off = tl.zeros([BC, BK], dtype=DTYPE)
        for i_j in tl.static_range(i_i):
            o_j = i_t * BT + i_j * BC + o_c
            m_jk = (o_j < T)[:, None] & m_k[None, :]
            p_jk = ((bos + o_j[:, None]) * H + i_h) * K + o_k[None, :]
            b_v = tl.load(v + ((bos + o_j[:, None]) * H + i_h) * V + o_v[None, :],
                          mask=(o_j < T)[:, None] & m_v[None, :], other=0.0).to(DTYPE)     # [BC, BV]
            b_k = tl.load(k + p_jk, mask=m_jk, other=0.0).to(DTYPE)
            b_gj = tl.load(gc + p_jk, mask=m_jk, other=0.0).to(DTYPE)
            b_kg = tl.where(m_jk, b_k * tl.exp(b_gr[None, :] - b_gj), 0.0)
            b_off += _tlib.dot(_tlib.dot(b_do, tl.trans(b_v), PREC), b_kg, PREC)
        b_dq = tl.where(m_ik, b_off * tl.exp(b_gi - b_gr[None, :]), 0.0)
        for j in range(0, BC):                                               # the diagonal sub-block
            s = tl.minimum(i_t * BT + i_i * BC + j, T - 1)   # rows past T only meet rows past T (not stored)
            p_s = ((bos + s) * H + i_h) * K + o_k
            b_vs = tl.load(v + ((bos + s) * H + i_h) * V + o_v, mask=m_v, other=0.0).to(DTYPE)
            b_ks = tl.load(k + p_s, mask=m_k, other=0.0).to(DTYPE)
            b_gs = tl.load(gc + p_s, mask=m_k, other=0.0).to(DTYPE)
            causal = (o_i >= i_t * BT + i_i * BC + j) & m_i
            b_da = tl.where(causal, tl.reduce(b_do * b_vs[None, :], 1, _tlib.add), 0.0)
            b_dq += b_da[:, None] * b_ks[None, :] * tl.exp(tl.where(causal[:, None], b_gi - b_gs[None, :], 0.0))
        tl.store(dq + p_ik, b_dq.to(dq.dtype.element_ty), mask=m_ik)
    for i_j in tl.static_range(NC):                                          # dk of key sub-chunk j
        o_j = i_t * BT + i_j * BC + o_c
        m_j = o_j < T
        m_jk = m_j[:, None] & m_k[None, :]
        p_jk = ((bos + o_j[:, None]) * H + i_h) * K + o_k[None, :]
        b_v = tl.load(v + ((bos + o_j[:, None]) * H + i_h) * V + o_v[None, :],
                      mask=m_j[:, None] & m_v[None, :], other=0.0).to(DTYPE)               # [BC, BV]
        b_gj = tl.load(gc + p_jk, mask=m_jk, other=0.0).to(DTYPE)
        ref = tl.minimum(i_t * BT + i_j * BC + BC - 1, T - 1)
        b_gr = tl.load(gc + ((bos + ref) * H + i_h) * K + o_k, mask=m_k, other=0.0).to(DTYPE)
        b_off = tl.zeros([BC, BK], dtype=DTYPE)
        for i_i in tl.static_range(i_j + 1, NC):
            o_i = i_t * BT + i_i * BC + o_c
            m_ik = (o_i < T)[:, None] & m_k[None, :]
            p_ik = ((bos + o_i[:, None]) * H + i_h) * K + o_k[None, :]
            b_do = tl.load(do + ((bos + o_i[:, None]) * H + i_h) * V + o_v[None, :],
                           mask=(o_i < T)[:, None] & m_v[None, :], other=0.0).to(DTYPE)    # [BC, BV]
            b_q = tl.load(q + p_ik, mask=m_ik, other=0.0).to(DTYPE)
            b_gi = tl.load(gc + p_ik, mask=m_ik, other=0.0).to(DTYPE)
            b_qg = tl.where(m_ik, b_q * tl.exp(b_gi - b_gr[None, :]), 0.0)
            b_off += _tlib.dot(_tlib.dot(b_v, tl.trans(b_do), PREC), b_qg, PREC)
        b_dk = tl.where(m_jk, b_off * tl.exp(b_gr[None, :] - b_gj), 0.0)
        p_i = ((bos + o_j[:, None]) * H + i_h) * K + o_k[None, :]       # the diagonal: query rows = o_j
        b_q = tl.load(q + p_i, mask=m_jk, other=0.0).to(DTYPE)
        b_do = tl.load(do + ((bos + o_j[:, None]) * H + i_h) * V + o_v[None, :],
                       mask=m_j[:, None] & m_v[None, :], other=0.0).to(DTYPE)
        for j in range(0, BC):
            s = i_t * BT + i_j * BC + j
            s_in = tl.minimum(s, T - 1)
            b_vs = tl.load(v + ((bos + s_in) * H + i_h) * V + o_v, mask=m_v, other=0.0).to(DTYPE)
            b_gs = tl.load(gc + ((bos + s_in) * H + i_h) * K + o_k, mask=m_k, other=0.0).to(DTYPE)
            b_da = tl.where((o_j >= s) & m_j, tl.reduce(b_do * b_vs[None, :], 1, _tlib.add), 0.0)   # [BC] over t
            b_row = tl.reduce(b_da[:, None] * b_q * tl.exp(tl.where(((o_j >= s) & m_j)[:, None], b_gj - b_gs[None, :],
                                                                    0.0)),
                              0, _tlib.add)
            b_dk += tl.where(o_c[:, None] == j, b_row[None, :], 0.0)
        tl.store(dk + p_jk, (b_dk * scale).to(dk.dtype.element_ty), mask=m_jk)      # linear in q


@triton.jit
def chunk_bwd_dqk_kernel(
    q, k, v, gc, h, do, dh,  # q (times scale), k [B, T, H, K]; v, do [B, T, H, V]; G; h, dh [N, H, NT, K, V]
    dqi, dki,                # key gates: the intra-chunk parts of dq (w.r.t. the scaled q), dk [B, T, H, K]
    dq, dk, dg,              # out: dq (w.r.t. the unscaled q), dk [B, T, H, K] (any float dtype: stored once);
                             # dg: key gate [B, T, H, K] (the raw log gate's gradient); scalar gate [B, T, H, NK]
                             # (this K tile's part of dG, before the reverse cumsum)
    scale,
    T, cu_seqlens, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, DTYPE: tl.constexpr, PREC: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    """dq, dk of one chunk for one K tile, looping over V tiles. With S the state entering the chunk, dS' the
    gradient w.r.t. the state after it, D_ts = exp(G_t - G_s) and E_s = exp(G_last - G_s):
        dq = dq_intra + exp(G) ⊙ do S^T,   dk = dk_intra + E ⊙ v dS'^T,
        dG_t = q_t ⊙ dq_t - k_t ⊙ dk_t (+ at the last row: exp(G_last) ⊙ rowsum(dS' ⊙ S) + sum_s k_s ⊙ dk_inter_s).
    A scalar gate (or none) computes the intra parts here from dA = (do v^T) ⊙ D (causal): dq_intra = dA k,
    dk_intra = dA^T q, and stores this tile's sum of dG over its K channels; a key gate reads the intra parts
    (dqi, dki) from ``chunk_bwd_intra_gk_kernel`` and stores dg = the reverse cumsum of dG within the chunk."""
    i_k, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_h, NT, bos, T, o_c, o_t, m_t, last = chunk_rows(i_t, i_bh, T, cu_seqlens, H, BT, IS_VARLEN)
    NK = tl.cdiv(K, BK)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    p_k = ((bos + o_t[:, None]) * H + i_h) * K + o_k[None, :]
    b_q = tl.load(q + p_k, mask=m_tk, other=0.0).to(DTYPE)
    b_k = tl.load(k + p_k, mask=m_tk, other=0.0).to(DTYPE)
    b_qh = tl.zeros([BT, BK], dtype=DTYPE)                                                # do S^T
    b_vdh = tl.zeros([BT, BK], dtype=DTYPE)                                               # v dS'^T
    b_hdh = tl.zeros([BK], dtype=DTYPE)                                                   # rowsum(dS' ⊙ S)
    b_dA = tl.zeros([BT, BT], dtype=DTYPE)                                                # do v^T
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv, m_kv = m_t[:, None] & (o_v < V)[None, :], m_k[:, None] & (o_v < V)[None, :]
        p_v = ((bos + o_t[:, None]) * H + i_h) * V + o_v[None, :]
        p_h = (i_bh * NT + i_t) * K * V + o_k[:, None] * V + o_v[None, :]
        b_v = tl.load(v + p_v, mask=m_tv, other=0.0).to(DTYPE)
        b_do = tl.load(do + p_v, mask=m_tv, other=0.0).to(DTYPE)
        b_h = tl.load(h + p_h, mask=m_kv, other=0.0).to(DTYPE)                            # [BK, BV]
        b_dh = tl.load(dh + p_h, mask=m_kv, other=0.0).to(DTYPE)
        b_qh += _tlib.dot(b_do, tl.trans(b_h), PREC)
        b_vdh += _tlib.dot(b_v, tl.trans(b_dh), PREC)
        b_hdh += tl.reduce(b_dh * b_h, 1, _tlib.add)
        if GATE != 2:
            b_dA += _tlib.dot(b_do, tl.trans(b_v), PREC)
    if GATE == 2:
        b_g = tl.load(gc + p_k, mask=m_tk, other=0.0).to(DTYPE)                         # [BT, BK]
        b_glast = tl.load(gc + ((bos + last) * H + i_h) * K + o_k, mask=m_k, other=0.0).to(DTYPE)
        b_decay = tl.where(m_tk, tl.exp(b_glast[None, :] - b_g), 0.0)                   # E [BT, BK]
        b_dq = tl.load(dqi + p_k, mask=m_tk, other=0.0).to(DTYPE) + b_qh * tl.exp(b_g)
        b_dk_inter = b_vdh * b_decay
        b_dk = tl.load(dki + p_k, mask=m_tk, other=0.0).to(DTYPE) + b_dk_inter
        b_dG = (b_q * scale) * b_dq - b_k * b_dk                                           # [BT, BK]
        carry = tl.exp(b_glast) * b_hdh + tl.reduce(b_k * b_dk_inter, 0, _tlib.add)        # [BK]
        b_dG = tl.where((o_t == last)[:, None], b_dG + carry[None, :], b_dG)
        b_dG = tl.where(m_tk, b_dG, 0.0)
        b_dg = tl.reduce(b_dG, 0, _tlib.add)[None, :] - tl.cumsum(b_dG, axis=0) + b_dG     # sum over s >= t
        tl.store(dg + p_k, b_dg.to(dg.dtype.element_ty), mask=m_tk)
    else:
        causal = (o_c[:, None] >= o_c[None, :]) & m_t[:, None]     # real rows only (module docstring)
        if GATE == 1:
            b_g = tl.load(gc + (bos + o_t) * H + i_h, mask=m_t, other=0.0).to(DTYPE)
            b_glast = tl.load(gc + (bos + last) * H + i_h).to(DTYPE)
            b_D = tl.where(causal, tl.exp(tl.where(causal, b_g[:, None] - b_g[None, :], 0.0)), 0.0)
            b_decay = tl.where(m_t, tl.exp(b_glast - b_g), 0.0)
            b_qh = b_qh * tl.exp(b_g)[:, None]
        else:
            b_D = tl.where(causal, 1.0, 0.0).to(DTYPE)
            b_decay = tl.where(m_t, 1.0, 0.0).to(DTYPE)
        b_dA = b_dA * b_D
        b_dq = _tlib.dot(b_dA, b_k, PREC) + b_qh
        b_dk_inter = b_vdh * b_decay[:, None]
        b_dk = _tlib.dot(tl.trans(b_dA), b_q, PREC) * scale + b_dk_inter
        if GATE == 1:
            b_dG = tl.reduce((b_q * scale) * b_dq - b_k * b_dk, 1, _tlib.add)              # [BT]
            carry = tl.exp(b_glast) * tl.reduce(b_hdh, 0, _tlib.add) + \
                tl.reduce(tl.reduce(b_k * b_dk_inter, 1, _tlib.add), 0, _tlib.add)
            b_dG = tl.where(o_t == last, b_dG + carry, b_dG)
            tl.store(dg + ((bos + o_t) * H + i_h) * NK + i_k, b_dG.to(dg.dtype.element_ty), mask=m_t)
    tl.store(dq + p_k, (b_dq * scale).to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + p_k, b_dk.to(dk.dtype.element_ty), mask=m_tk)


@triton.jit
def chunk_bwd_dv_kernel(
    q, k, gc, dh, do, A, dv,  # q (times scale), k [B, T, H, K]; G; dh [N, H, NT, K, V]; do, dv [B, T, H, V];
                              # A [B, T, H, BT] (key gates: the forward's intra-chunk scores)
    scale,
    T, cu_seqlens, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, DTYPE: tl.constexpr, PREC: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    """dv = A^T do + (k ⊙ E) dS' of one chunk for one V tile, looping over K tiles (A = (q k^T) ⊙ D causal,
    recomputed here for a scalar gate or none; read from the forward for a key gate)."""
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_h, NT, bos, T, o_c, o_t, m_t, last = chunk_rows(i_t, i_bh, T, cu_seqlens, H, BT, IS_VARLEN)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    m_tv = m_t[:, None] & m_v[None, :]
    p_v = ((bos + o_t[:, None]) * H + i_h) * V + o_v[None, :]
    b_dv = tl.zeros([BT, BV], dtype=DTYPE)
    b_A = tl.zeros([BT, BT], dtype=DTYPE)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        p_k = ((bos + o_t[:, None]) * H + i_h) * K + o_k[None, :]
        b_k = tl.load(k + p_k, mask=m_tk, other=0.0).to(DTYPE)
        b_dh = tl.load(dh + (i_bh * NT + i_t) * K * V + o_k[:, None] * V + o_v[None, :],
                       mask=m_k[:, None] & m_v[None, :], other=0.0).to(DTYPE)            # [BK, BV]
        if GATE == 2:
            b_g = tl.load(gc + p_k, mask=m_tk, other=0.0).to(DTYPE)
            b_glast = tl.load(gc + ((bos + last) * H + i_h) * K + o_k, mask=m_k, other=0.0).to(DTYPE)
            b_k = tl.where(m_tk, b_k * tl.exp(b_glast[None, :] - b_g), 0.0)                # k ⊙ E
        else:
            b_q = tl.load(q + p_k, mask=m_tk, other=0.0).to(DTYPE)
            b_A += _tlib.dot(b_q, tl.trans(b_k), PREC)
        b_dv += _tlib.dot(b_k, b_dh, PREC)
    causal = (o_c[:, None] >= o_c[None, :]) & m_t[:, None]         # real rows only (module docstring)
    if GATE == 2:           # the forward's scores: only their causal part is written (the rest: any value)
        b_A = tl.load(A + ((bos + o_t[:, None]) * H + i_h) * BT + o_c[None, :], mask=m_t[:, None] & m_t[None, :],
                      other=0.0).to(DTYPE)
    else:
        b_A = b_A * scale
        if GATE == 1:
            b_g = tl.load(gc + (bos + o_t) * H + i_h, mask=m_t, other=0.0).to(DTYPE)
            b_glast = tl.load(gc + (bos + last) * H + i_h).to(DTYPE)
            b_A = b_A * tl.exp(tl.where(causal, b_g[:, None] - b_g[None, :], 0.0))
            b_dv = b_dv * tl.where(m_t, tl.exp(b_glast - b_g), 0.0)[:, None]
    b_A = tl.where(causal, b_A, 0.0)
    b_do = tl.load(do + p_v, mask=m_tv, other=0.0).to(DTYPE)
    b_dv += _tlib.dot(tl.trans(b_A), b_do, PREC)
    tl.store(dv + p_v, b_dv.to(dv.dtype.element_ty), mask=m_tv)


@triton.jit
def _load_state_block(ptr, base, j, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, o_v, m_v,
                      DTYPE: tl.constexpr):
    """Key rows j * BK ... of a [K, V] state at ptr + base, V tile o_v, in DTYPE (rows past K: zeros): [BK, BV]."""
    o_k = j * BK + tl.arange(0, BK)
    return tl.load(ptr + base + o_k[:, None] * V + o_v[None, :], mask=(o_k < K)[:, None] & m_v[None, :],
                   other=0.0).to(DTYPE)


@triton.jit
def _state_block_or_zeros(ptr, base, j, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, o_v,
                          m_v, LOAD: tl.constexpr, DTYPE: tl.constexpr):
    """Key rows j * BK ... of a [K, V] state at ptr + base (an initial state, a final state's gradient), or zeros
    without LOAD (ptr is then not read: it may be None): [BK, BV]."""
    b_x = tl.zeros([BK, BV], dtype=DTYPE)
    if LOAD:
        b_x += _load_state_block(ptr, base, j, K, V, BK, o_v, m_v, DTYPE)
    return b_x


@triton.jit
def _store_state_block(ptr, base, j, b_x, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, o_v, m_v):
    """Stores b_x [BK, BV] as key rows j * BK ... of a [K, V] state at ptr + base, V tile o_v."""
    o_k = j * BK + tl.arange(0, BK)
    tl.store(ptr + base + o_k[:, None] * V + o_v[None, :], b_x.to(ptr.dtype.element_ty),
             mask=(o_k < K)[:, None] & m_v[None, :])


@triton.jit
def _state_blocks_or_zeros(ptr, base, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, o_v, m_v,
                           LOAD: tl.constexpr, DTYPE: tl.constexpr):
    """A [K, V] state at ptr + base, V tile o_v, as four register blocks of BK key rows (K <= 4 BK), each [BK, BV]:
    zeros past K and without LOAD (ptr is then not read: it may be None). A kernel updates only the blocks below K
    (``if K > j * BK``), so the others stay constant zeros, which the compiler drops."""
    b_1 = _state_block_or_zeros(ptr, base, 0, K, V, BK, BV, o_v, m_v, LOAD, DTYPE)
    b_2 = _state_block_or_zeros(ptr, base, 1, K, V, BK, BV, o_v, m_v, LOAD and K > BK, DTYPE)
    b_3 = _state_block_or_zeros(ptr, base, 2, K, V, BK, BV, o_v, m_v, LOAD and K > 2 * BK, DTYPE)
    b_4 = _state_block_or_zeros(ptr, base, 3, K, V, BK, BV, o_v, m_v, LOAD and K > 3 * BK, DTYPE)
    return b_1, b_2, b_3, b_4


@triton.jit
def _store_state_blocks(ptr, base, b_1, b_2, b_3, b_4, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, o_v, m_v):
    """Stores the register blocks of a [K, V] state (``_state_blocks_or_zeros``) below K at ptr + base, V tile o_v."""
    _store_state_block(ptr, base, 0, b_1, K, V, BK, o_v, m_v)
    if K > BK:
        _store_state_block(ptr, base, 1, b_2, K, V, BK, o_v, m_v)
    if K > 2 * BK:
        _store_state_block(ptr, base, 2, b_3, K, V, BK, o_v, m_v)
    if K > 3 * BK:
        _store_state_block(ptr, base, 3, b_4, K, V, BK, o_v, m_v)


@triton.jit
def _key_block(x, p_t, m_t, j, K: tl.constexpr, BK: tl.constexpr, DTYPE: tl.constexpr, PREC: tl.constexpr):
    """Key channels j * BK ... of a [B, T, H, K] input at the chunk's rows p_t ((bos + t) * H + head) [BT], in the
    dots' operand dtype (rows past the sequence and channels past K: zeros): [BT, BK]."""
    o_k = j * BK + tl.arange(0, BK)
    b_x = tl.load(x + p_t[:, None] * K + o_k[None, :], mask=m_t[:, None] & (o_k < K)[None, :], other=0.0)
    return _tlib.operand(b_x, DTYPE, PREC)


@triton.jit
def _delta_h_step(k, p_t, m_t, j, b_h, b_v, b_glast, K: tl.constexpr, BK: tl.constexpr, GATED: tl.constexpr,
                  DTYPE: tl.constexpr, PREC: tl.constexpr):
    """Key block j of the state after a chunk, exp(G_last) S + k^T v~ (b_v: the decayed corrected values [BT, BV]
    as a dot operand; b_glast read when GATED)."""
    if GATED:
        b_h = b_h * tl.exp(b_glast)
    b_k = _key_block(k, p_t, m_t, j, K, BK, DTYPE, PREC)
    return b_h + _tlib.dot(tl.trans(b_k), b_v, PREC)


@triton.jit
def chunk_delta_fwd_h_kernel(
    k, u, w, gc,         # k, W [B, T, H, K]; U [B, T, H, V]; G [B, T, H] (GATED)
    h, h0, ht, v_new,    # out: h [B, H, NT, K, V] (the state entering each chunk), ht; in: h0 [B, H, K, V];
                         # out: v_new [B, T, H, V], the corrected values U - W S
    T, cu_seqlens, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATED: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, STORE_FINAL_STATE: tl.constexpr, DTYPE: tl.constexpr, PREC: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    """The delta rule's states, chunk after chunk, for one V tile (all K channels): with S the state entering
    chunk c, v_new = U - W S (stored), then S' = exp(G_last) S + k^T (v_new ⊙ exp(G_last - G)). S is held as
    up to four register blocks of BK key rows (K <= 4 BK = 256; fla's blockdim64), k and W read a key block at a
    time, as the backward state pass (``chunk_delta_bwd_dhu_kernel``) does."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)                    # chunks per row of h (the longest sequence's)
    bos, T = _tlib.sequence_bounds(cu_seqlens, i_b, T, IS_VARLEN)
    o_v = i_v * BV + tl.arange(0, BV)
    o_c = tl.arange(0, BT)
    m_v = o_v < V
    b_h1, b_h2, b_h3, b_h4 = _state_blocks_or_zeros(h0, i_bh * K * V, K, V, BK, BV, o_v, m_v, USE_INITIAL_STATE,
                                                    DTYPE)
    for i_t in range(0, tl.cdiv(T, BT)):
        _store_state_blocks(h, (i_bh * NT + i_t) * K * V, b_h1, b_h2, b_h3, b_h4, K, V, BK, o_v, m_v)
        o_t = i_t * BT + o_c
        m_t = o_t < T
        p_t = (bos + o_t) * H + i_h
        m_tv = m_t[:, None] & m_v[None, :]
        p_v = p_t[:, None] * V + o_v[None, :]
        b_v = tl.load(u + p_v, mask=m_tv, other=0.0).to(DTYPE)                                # [BT, BV]
        b_v -= _tlib.dot(_key_block(w, p_t, m_t, 0, K, BK, DTYPE, PREC), _tlib.operand(b_h1, DTYPE, PREC), PREC)
        if K > BK:
            b_v -= _tlib.dot(_key_block(w, p_t, m_t, 1, K, BK, DTYPE, PREC), _tlib.operand(b_h2, DTYPE, PREC), PREC)
        if K > 2 * BK:
            b_v -= _tlib.dot(_key_block(w, p_t, m_t, 2, K, BK, DTYPE, PREC), _tlib.operand(b_h3, DTYPE, PREC), PREC)
        if K > 3 * BK:
            b_v -= _tlib.dot(_key_block(w, p_t, m_t, 3, K, BK, DTYPE, PREC), _tlib.operand(b_h4, DTYPE, PREC), PREC)
        tl.store(v_new + p_v, b_v.to(v_new.dtype.element_ty), mask=m_tv)
        if GATED:
            last = tl.minimum(i_t * BT + BT, T) - 1
            b_g = tl.load(gc + p_t, mask=m_t, other=0.0).to(DTYPE)
            b_glast = tl.load(gc + (bos + last) * H + i_h).to(DTYPE)
            b_v = b_v * tl.where(m_t, tl.exp(b_glast - b_g), 0.0)[:, None]
        else:
            b_glast = tl.zeros([1], dtype=DTYPE)
        b_v = _tlib.operand(b_v, DTYPE, PREC)
        b_h1 = _delta_h_step(k, p_t, m_t, 0, b_h1, b_v, b_glast, K, BK, GATED, DTYPE, PREC)
        if K > BK:
            b_h2 = _delta_h_step(k, p_t, m_t, 1, b_h2, b_v, b_glast, K, BK, GATED, DTYPE, PREC)
        if K > 2 * BK:
            b_h3 = _delta_h_step(k, p_t, m_t, 2, b_h3, b_v, b_glast, K, BK, GATED, DTYPE, PREC)
        if K > 3 * BK:
            b_h4 = _delta_h_step(k, p_t, m_t, 3, b_h4, b_v, b_glast, K, BK, GATED, DTYPE, PREC)
    if STORE_FINAL_STATE:
        _store_state_blocks(ht, i_bh * K * V, b_h1, b_h2, b_h3, b_h4, K, V, BK, o_v, m_v)


@triton.jit
def _dhu_scores(q, k, p_t, m_t, j, b_dh, b_decay, K: tl.constexpr, BK: tl.constexpr, GATED: tl.constexpr,
                DTYPE: tl.constexpr, PREC: tl.constexpr):
    """Key block j's share of a chunk's scores q k^T [BT, BT] and of (k ⊙ E) dS' [BT, BV] (b_dh: that block of
    dS', b_decay: E [BT], read when GATED)."""
    b_q = _key_block(q, p_t, m_t, j, K, BK, DTYPE, PREC)
    b_k = _key_block(k, p_t, m_t, j, K, BK, DTYPE, PREC)
    b_A = _tlib.dot(b_q, tl.trans(b_k), PREC)
    if GATED:
        b_k = _tlib.operand(b_k.to(DTYPE) * b_decay[:, None], DTYPE, PREC)
    return b_A, _tlib.dot(b_k, b_dh, PREC)


@triton.jit
def _dhu_step(q, w, p_t, m_t, j, b_dh, b_do, b_dv, b_eg, b_glast, scale, K: tl.constexpr, BK: tl.constexpr,
              GATED: tl.constexpr, DTYPE: tl.constexpr, PREC: tl.constexpr):
    """Key block j of dS = exp(G_last) dS' + (q ⊙ exp(G))^T do - W^T dv_new (b_eg: exp(G) [BT], read when GATED)."""
    b_q = _key_block(q, p_t, m_t, j, K, BK, DTYPE, PREC)
    if GATED:
        b_dh = b_dh * tl.exp(b_glast)
        b_q = _tlib.operand(b_q.to(DTYPE) * b_eg[:, None], DTYPE, PREC)
    b_w = _key_block(w, p_t, m_t, j, K, BK, DTYPE, PREC)
    return b_dh + _tlib.dot(tl.trans(b_q), b_do, PREC) * scale - _tlib.dot(tl.trans(b_w), b_dv, PREC)


@triton.jit
def chunk_delta_bwd_dhu_kernel(
    q, k, w, gc, do,     # q (times scale), k, w [B, T, H, K]; G [B, T, H]; do [B, T, H, V]
    dh, dht, dh0, dv_new,  # out: dh [B, H, NT, K, V] (w.r.t. the state after each chunk), dh0; in: dht [B, H, K, V];
                           # out: dv_new [B, T, H, V], the gradient w.r.t. the corrected values v_new = U - W S
    scale,
    T, cu_seqlens, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATED: tl.constexpr,
    USE_FINAL_STATE_GRADIENT: tl.constexpr, STORE_INITIAL_STATE_GRADIENT: tl.constexpr, DTYPE: tl.constexpr,
    PREC: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """The delta rule's state gradients, chunk after chunk from the last, for one V tile (all K channels), from
    the final state's gradient dht (zeros without USE_FINAL_STATE_GRADIENT) to dh0 (stored with
    STORE_INITIAL_STATE_GRADIENT).
    With S the state entering chunk c, dS' the gradient w.r.t. the state after it, E_s = exp(G_last - G_s) and
    A = (q k^T) ⊙ D causal:  dv_new = A^T do + (k ⊙ E) dS',  dS = exp(G_last) dS' + (q ⊙ exp(G))^T do - W^T dv_new.
    dS' is held as up to four register blocks of BK key rows (K <= 4 BK = 256; fla's blockdim64), each chunk's q, k,
    w read a key block at a time: one [K, BV] block with [BT, K] inputs beside it spilled 0.4-1 KB per thread at
    K = 256 (compiled for sm_90, bf16)."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)                    # chunks per row of dh (the longest sequence's)
    bos, T = _tlib.sequence_bounds(cu_seqlens, i_b, T, IS_VARLEN)
    o_v = i_v * BV + tl.arange(0, BV)
    o_c = tl.arange(0, BT)
    m_v = o_v < V
    b_dh1, b_dh2, b_dh3, b_dh4 = _state_blocks_or_zeros(dht, i_bh * K * V, K, V, BK, BV, o_v, m_v,
                                                        USE_FINAL_STATE_GRADIENT, DTYPE)
    causal = o_c[:, None] >= o_c[None, :]
    NT_seq = tl.cdiv(T, BT)
    for i in range(0, NT_seq):
        i_t = NT_seq - 1 - i
        _store_state_blocks(dh, (i_bh * NT + i_t) * K * V, b_dh1, b_dh2, b_dh3, b_dh4, K, V, BK, o_v, m_v)
        o_t = i_t * BT + o_c
        m_t = o_t < T
        p_t = (bos + o_t) * H + i_h
        m_tv = m_t[:, None] & m_v[None, :]
        p_v = p_t[:, None] * V + o_v[None, :]
        if GATED:
            last = tl.minimum(i_t * BT + BT, T) - 1
            b_g = tl.load(gc + p_t, mask=m_t, other=0.0).to(DTYPE)
            b_glast = tl.load(gc + (bos + last) * H + i_h).to(DTYPE)
            b_decay = tl.where(m_t, tl.exp(b_glast - b_g), 0.0)
            b_eg = tl.exp(b_g)
        else:
            b_g = tl.zeros([BT], dtype=DTYPE)
            b_glast = tl.zeros([1], dtype=DTYPE)
            b_decay = b_g
            b_eg = b_g
        b_A, b_dv = _dhu_scores(q, k, p_t, m_t, 0, b_dh1, b_decay, K, BK, GATED, DTYPE, PREC)
        if K > BK:
            b_a, b_d = _dhu_scores(q, k, p_t, m_t, 1, b_dh2, b_decay, K, BK, GATED, DTYPE, PREC)
            b_A, b_dv = b_A + b_a, b_dv + b_d
        if K > 2 * BK:
            b_a, b_d = _dhu_scores(q, k, p_t, m_t, 2, b_dh3, b_decay, K, BK, GATED, DTYPE, PREC)
            b_A, b_dv = b_A + b_a, b_dv + b_d
        if K > 3 * BK:
            b_a, b_d = _dhu_scores(q, k, p_t, m_t, 3, b_dh4, b_decay, K, BK, GATED, DTYPE, PREC)
            b_A, b_dv = b_A + b_a, b_dv + b_d
        b_A = b_A * scale
        if GATED:
            b_A = b_A * tl.exp(tl.where(causal & m_t[:, None], b_g[:, None] - b_g[None, :], 0.0))
        b_A = _tlib.operand(tl.where(causal, b_A, 0.0), DTYPE, PREC)
        b_do = _tlib.operand(tl.load(do + p_v, mask=m_tv, other=0.0), DTYPE, PREC)
        b_dv += _tlib.dot(tl.trans(b_A), b_do, PREC)
        tl.store(dv_new + p_v, b_dv.to(dv_new.dtype.element_ty), mask=m_tv)
        b_dh1 = _dhu_step(q, w, p_t, m_t, 0, b_dh1, b_do, b_dv, b_eg, b_glast, scale, K, BK, GATED, DTYPE, PREC)
        if K > BK:
            b_dh2 = _dhu_step(q, w, p_t, m_t, 1, b_dh2, b_do, b_dv, b_eg, b_glast, scale, K, BK, GATED, DTYPE, PREC)
        if K > 2 * BK:
            b_dh3 = _dhu_step(q, w, p_t, m_t, 2, b_dh3, b_do, b_dv, b_eg, b_glast, scale, K, BK, GATED, DTYPE, PREC)
        if K > 3 * BK:
            b_dh4 = _dhu_step(q, w, p_t, m_t, 3, b_dh4, b_do, b_dv, b_eg, b_glast, scale, K, BK, GATED, DTYPE, PREC)
    if STORE_INITIAL_STATE_GRADIENT:
        _store_state_blocks(dh0, i_bh * K * V, b_dh1, b_dh2, b_dh3, b_dh4, K, V, BK, o_v, m_v)


@triton.jit
def chunk_delta_bwd_kernel(
    q, k, v, beta, gc, h, dh, do, v_new, dv_new,   # q (times scale), k [B, T, H, K]; v, do, v_new, dv_new
    tm,                                            # [B, T, H, V]; beta, G [B, T, H]; h, dh [N, H, NT, K, V];
                                                   # tm [B, T, H, BT]: the forward's (I + A)^-1 per chunk
    dq, dk, dv, dbeta, dg,                         # out: dq (w.r.t. the unscaled q), dk, dv, dbeta, dg (raw log gate)
    scale,
    T, cu_seqlens, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATED: tl.constexpr, DTYPE: tl.constexpr,
    PREC: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """One chunk's input gradients for the delta rule, S the state entering the chunk and dS' the gradient
    w.r.t. the state after it, D_ts = exp(G_t - G_s), E_s = exp(G_last - G_s). Outputs and state passing (as
    the gated chunk, with v_new for v):
        dq = (do v_new^T ⊙ D) k + exp(G) ⊙ do S^T,   dk = (do v_new^T ⊙ D)^T q + E ⊙ v_new dS'^T,   dW = -dv_new S^T.
    Then the WY / UT stage backward, W = Tm Kb and U = Tm Vb with Kb = diag(beta exp(G)) K, Vb = diag(beta) V,
    Tm = (I + A)^-1 (the forward's, read from tm), A = tril(diag(beta) K K^T ⊙ D, -1) (recomputed), dU = dv_new:
        dTm = dW Kb^T + dU Vb^T,  dKb = Tm^T dW,  dVb = Tm^T dU,  dA = -tril(Tm^T dTm Tm^T, -1),
        dk += dKb ⊙ beta exp(G) + diag(beta) (dA ⊙ D) K + (dA ⊙ D)^T diag(beta) K,   dv = dVb ⊙ beta,
        dbeta = rowsum(dVb ⊙ V) + exp(G) ⊙ rowsum(dKb ⊙ K) + rowsum(dA ⊙ D ⊙ K K^T),
    and dG_t = q_t . dq_t - k_t . dk_t (output part) + rowsum(dKb ⊙ Kb) + rowsum(dA ⊙ A) - colsum(dA ⊙ A)
    (+ at the last row exp(G_last) <dS', S> + sum_s k_s . dk_inter_s), dg its reverse cumsum in the chunk.
    Tiled: only [BT, BT] matrices and [BT, BK], [BT, BV], [BK, BV] tiles live at once. Pass 1 over K tiles
    builds K K^T (then A); pass 2 over V tiles gives dv, do v_new^T and the dU Vb^T part of dTm;
    pass 3 over K tiles (each looping over V tiles for dW) the dW Kb^T part; pass 4 over K tiles (recomputing
    dW) gives dq, dk and the K-side sums of dbeta and dG."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_h, NT, bos, T, o_c, o_t, m_t, last = chunk_rows(i_t, i_bh, T, cu_seqlens, H, BT, IS_VARLEN)
    p_hc = (i_bh * NT + i_t) * K * V                                   # this chunk's [K, V] state in h, dh
    causal = (o_c[:, None] >= o_c[None, :]) & m_t[:, None]         # real rows only (module docstring)
    strict = (o_c[:, None] > o_c[None, :]) & m_t[:, None]
    b_beta = tl.load(beta + (bos + o_t) * H + i_h, mask=m_t, other=0.0).to(DTYPE)
    if GATED:
        b_g = tl.load(gc + (bos + o_t) * H + i_h, mask=m_t, other=0.0).to(DTYPE)
        b_glast = tl.load(gc + (bos + last) * H + i_h).to(DTYPE)
        b_D = tl.where(causal, tl.exp(tl.where(causal, b_g[:, None] - b_g[None, :], 0.0)), 0.0)
        b_eg = tl.where(m_t, tl.exp(b_g), 0.0)
        b_decay = tl.where(m_t, tl.exp(b_glast - b_g), 0.0)
    else:
        b_D = tl.where(causal, 1.0, 0.0).to(DTYPE)
        b_eg = tl.where(m_t, 1.0, 0.0).to(DTYPE)
        b_decay = b_eg
    # pass 1: K K^T, then A; Tm = (I + A)^-1 as the forward stored it (rows past T: unit rows, as it made them)
    b_kk = tl.zeros([BT, BT], dtype=DTYPE)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        b_k = tl.load(k + ((bos + o_t[:, None]) * H + i_h) * K + o_k[None, :], mask=m_t[:, None] & (o_k < K)[None, :],
                      other=0.0).to(DTYPE)
        b_kk += _tlib.dot(b_k, tl.trans(b_k), PREC)
    b_A = tl.where(strict, b_kk * b_beta[:, None] * b_D, 0.0)
    b_Tm = tl.load(tm + ((bos + o_t[:, None]) * H + i_h) * BT + o_c[None, :], mask=m_t[:, None],
                   other=0.0).to(DTYPE)
    b_Tm = tl.where(m_t[:, None], b_Tm, tl.where(o_c[:, None] == o_c[None, :], 1.0, 0.0))
    # pass 2 over V tiles: dv = (Tm^T dU) ⊙ beta, dbeta's V part, do v_new^T, dU Vb^T
    b_dAqk = tl.zeros([BT, BT], dtype=DTYPE)
    b_dTm = tl.zeros([BT, BT], dtype=DTYPE)
    b_dbeta = tl.zeros([BT], dtype=DTYPE)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        p_v = ((bos + o_t[:, None]) * H + i_h) * V + o_v[None, :]
        b_v = tl.load(v + p_v, mask=m_tv, other=0.0).to(DTYPE)
        b_do = tl.load(do + p_v, mask=m_tv, other=0.0).to(DTYPE)
        b_vn = tl.load(v_new + p_v, mask=m_tv, other=0.0).to(DTYPE)
        b_dvn = tl.load(dv_new + p_v, mask=m_tv, other=0.0).to(DTYPE)
        b_dAqk += _tlib.dot(b_do, tl.trans(b_vn), PREC)
        b_dTm += _tlib.dot(b_dvn, tl.trans(b_v * b_beta[:, None]), PREC)
        b_dvb = _tlib.dot(tl.trans(b_Tm), b_dvn, PREC)
        b_dbeta += tl.reduce(b_dvb * b_v, 1, _tlib.add)
        tl.store(dv + p_v, (b_dvb * b_beta[:, None]).to(dv.dtype.element_ty), mask=m_tv)
    b_dAqk = b_dAqk * b_D
    # pass 3 over K tiles: dW Kb^T (dW = -dU S^T, over V tiles)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        b_k = tl.load(k + ((bos + o_t[:, None]) * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0).to(DTYPE)
        b_dw = tl.zeros([BT, BK], dtype=DTYPE)
        for i_v in range(0, tl.cdiv(V, BV)):
            o_v = i_v * BV + tl.arange(0, BV)
            b_dvn = tl.load(dv_new + ((bos + o_t[:, None]) * H + i_h) * V + o_v[None, :],
                            mask=m_t[:, None] & (o_v < V)[None, :], other=0.0).to(DTYPE)
            b_h = tl.load(h + p_hc + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & (o_v < V)[None, :],
                          other=0.0).to(DTYPE)
            b_dw -= _tlib.dot(b_dvn, tl.trans(b_h), PREC)
        b_dTm += _tlib.dot(b_dw, tl.trans(b_k * (b_beta * b_eg)[:, None]), PREC)
    b_dA = _tlib.dot(_tlib.dot(tl.trans(b_Tm), b_dTm, PREC), tl.trans(b_Tm), PREC)
    b_dA = tl.where(strict, -b_dA, 0.0)
    b_M = b_dA * b_D                                                                     # dA ⊙ D, strictly lower
    b_dbeta += tl.reduce(b_M * b_kk, 1, _tlib.add)
    b_dAA = b_dA * b_A
    b_dG = tl.reduce(b_dAA, 1, _tlib.add) - tl.reduce(b_dAA, 0, _tlib.add)
    carry_h = tl.zeros([1], dtype=DTYPE)                                               # <dS', S>
    carry_k = tl.zeros([1], dtype=DTYPE)                                               # sum_s k_s . dk_inter_s
    # pass 4 over K tiles: dq, dk, and the K-side sums of dbeta and dG
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        p_k = ((bos + o_t[:, None]) * H + i_h) * K + o_k[None, :]
        b_q = tl.load(q + p_k, mask=m_tk, other=0.0).to(DTYPE)
        b_k = tl.load(k + p_k, mask=m_tk, other=0.0).to(DTYPE)
        b_dw = tl.zeros([BT, BK], dtype=DTYPE)
        b_qh = tl.zeros([BT, BK], dtype=DTYPE)                                          # do S^T
        b_vdh = tl.zeros([BT, BK], dtype=DTYPE)                                         # v_new dS'^T
        for i_v in range(0, tl.cdiv(V, BV)):
            o_v = i_v * BV + tl.arange(0, BV)
            m_tv, m_kv = m_t[:, None] & (o_v < V)[None, :], m_k[:, None] & (o_v < V)[None, :]
            p_v = ((bos + o_t[:, None]) * H + i_h) * V + o_v[None, :]
            b_do = tl.load(do + p_v, mask=m_tv, other=0.0).to(DTYPE)
            b_vn = tl.load(v_new + p_v, mask=m_tv, other=0.0).to(DTYPE)
            b_dvn = tl.load(dv_new + p_v, mask=m_tv, other=0.0).to(DTYPE)
            b_h = tl.load(h + p_hc + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0).to(DTYPE)
            b_dh = tl.load(dh + p_hc + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0).to(DTYPE)
            b_dw -= _tlib.dot(b_dvn, tl.trans(b_h), PREC)
            b_qh += _tlib.dot(b_do, tl.trans(b_h), PREC)
            b_vdh += _tlib.dot(b_vn, tl.trans(b_dh), PREC)
            if GATED:
                carry_h += tl.reduce(tl.reduce(b_dh * b_h, 1, _tlib.add), 0, _tlib.add)
        b_dq = _tlib.dot(b_dAqk, b_k, PREC) + b_qh * b_eg[:, None]
        b_dk_inter = b_vdh * b_decay[:, None]
        b_dk = _tlib.dot(tl.trans(b_dAqk), b_q, PREC) * scale + b_dk_inter
        b_dG += tl.reduce((b_q * scale) * b_dq - b_k * b_dk, 1, _tlib.add)
        b_kbeta = b_k * b_beta[:, None]
        b_kb = b_kbeta * b_eg[:, None]                                                  # Kb [BT, BK]
        b_dkb = _tlib.dot(tl.trans(b_Tm), b_dw, PREC)
        b_dk += b_dkb * (b_beta * b_eg)[:, None] + _tlib.dot(b_M, b_k, PREC) * b_beta[:, None] + \
            _tlib.dot(tl.trans(b_M), b_kbeta, PREC)
        b_dbeta += b_eg * tl.reduce(b_dkb * b_k, 1, _tlib.add)
        b_dG += tl.reduce(b_dkb * b_kb, 1, _tlib.add)
        if GATED:
            carry_k += tl.reduce(tl.reduce(b_k * b_dk_inter, 1, _tlib.add), 0, _tlib.add)
        tl.store(dq + p_k, (b_dq * scale).to(dq.dtype.element_ty), mask=m_tk)
        tl.store(dk + p_k, b_dk.to(dk.dtype.element_ty), mask=m_tk)
    tl.store(dbeta + (bos + o_t) * H + i_h, b_dbeta.to(dbeta.dtype.element_ty), mask=m_t)
    if GATED:
        carry = tl.exp(b_glast) * tl.reduce(carry_h, 0, _tlib.add) + tl.reduce(carry_k, 0, _tlib.add)
        b_dG = tl.where(o_t == last, b_dG + carry, b_dG)
        b_dG = tl.where(m_t, b_dG, 0.0)
        b_dg = tl.reduce(b_dG, 0, _tlib.add) - tl.cumsum(b_dG, axis=0) + b_dG               # sum over s >= t
        tl.store(dg + (bos + o_t) * H + i_h, b_dg.to(dg.dtype.element_ty), mask=m_t)


def _block(n: int, cap: int = 64) -> int:
    return min(cap, max(16, _rt.next_pow2(n)))


def chunk_gated(q, k, v, g=None, gk=None, gv=None, scale=1.0, initial_state=None, output_final_state=False,
                cu_seqlens=None, chunk_size=64):
    """Chunkwise S_t = exp(g_t) exp(gk_t)[:, None] ⊙ S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t (Triton).

    q, k [B, T, H, K], v [B, T, H, V], g [B, T, H] and / or gk [B, T, H, K] log gates (or neither),
    initial_state [B, H, K, V]. Returns (o [B, T, H, V], final state [B, H, K, V] or None), computed
    in fp32 (fp64 for fp64 inputs). The arguments of ``torch_forms.chunk_gated``; value-axis gates are not
    supported here. cu_seqlens (B = 1, N packed non-empty sequences, initial_state [N, H, K, V]) runs every
    sequence in the same launches (IS_VARLEN). Complex values run on the same real kernels (see
    ``_complex_chunk_gated``). chunk_size is rounded up to a power of two >= 16. Differentiable through Triton
    backward kernels: the state gradients chunk by chunk from
    the last, then (key gates) the intra-chunk dq, dk by sub-chunks, then every chunk's dq, dk, dv, dg.
    Of the backward kernels only the key-gated intra-chunk one keeps all K and V channels of a chunk in one block.
    """
    if gv is not None:
        raise NotImplementedError("the Triton chunk kernels take scalar or key-axis gates")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    rows = _Rows(q.shape[0], q.shape[1], cu_seqlens)
    initial_state = _unless_zero(initial_state)
    if any(t is not None and t.is_complex() for t in (q, k, v, g, gk, initial_state)):
        return _complex_chunk_gated(q, k, v, g, gk, float(scale), initial_state, output_final_state, chunk_size,
                                    rows)
    if _wants_grad(q, k, v, g, gk, initial_state):
        o, ht = _ChunkGated.apply(q, k, v, g, gk, initial_state, float(scale), chunk_size, rows, output_final_state)
    else:
        o, ht, _ = _chunk_gated_forward(q, k, v, g, gk, initial_state, scale, chunk_size, rows, output_final_state)
    return o, ht


def _complex_chunk_gated(q, k, v, g, gk, scale: float, initial_state, output_final_state: bool, chunk_size: int,
                         rows: "_Rows"):
    """chunk_gated for complex q, k, v, gates or state, on the real kernels (torch_forms' convention: the state
    is written k v^T and read S^T q without conjugation; a complex log gate's real part is the log decay).

    A complex log gate a + ib splits into a real decay exp(a) and a rotation e^{ib}. The rotations of
    steps s+1..t multiply to e^{i(Phi_t - Phi_s)} with Phi the cumulative phase, so they move onto the
    queries and keys: q~_t = q_t e^{i Phi_t}, k~_s = k_s e^{-i Phi_s} (modulus 1: nothing grows). What is
    left, R_t = sum_s exp(A_t - A_s) k~_s v_s^T + exp(A_t) h0, has a real gate, and S_t = e^{i Phi_t} ⊙ R_t.
    R is realified into one real state X [2K, 2V] written by keys [Re k~, Im k~] and values [Re v, Im v]
    (R = X_tl - X_br + i (X_tr + X_bl)); two real queries, [Re q~, -Im q~] and [Im q~, Re q~], read the
    real and imaginary parts of the output from it. The two queries share X, so they run as a doubled
    batch of one real chunk_gated call: four times the real work of a K x V state. Phi is summed in fp64
    and reduced mod 2 pi, so long sequences of fast rotations keep their phase. Differentiable: the
    real stages by their Triton backward kernels, the (elementwise) rotations and splits through torch.
    Packed sequences (rows.varlen): Phi restarts at each sequence's first token.
    Returns (o [B, T, H, V] complex, final state [B or N, H, K, V] complex or None).
    """
    T, K = q.shape[1], q.shape[3]
    V = v.shape[-1]
    wide = any(t is not None and t.dtype in (torch.float64, torch.complex128) for t in (q, k, v, g, gk, initial_state))
    cdt, rdt = (torch.complex128, torch.float64) if wide else (torch.complex64, torch.float32)
    q, k, v = (x.to(cdt) for x in (q, k, v))
    if g is not None and gk is not None:
        gk, g = gk + g[..., None], None
    gate = gk if gk is not None else (g[..., None] if g is not None else None)      # [B, T, H, K or 1]
    rot = None
    if gate is not None and gate.is_complex():
        phase = torch.cumsum(gate.imag.to(torch.float64), dim=1)
        if rows.varlen:   # subtract the phase accumulated before each sequence's first token
            starts = rows.cu.to(device=phase.device, dtype=torch.long)
            lengths = (starts[1:] - starts[:-1]).tolist()
            before = torch.cat([torch.zeros_like(phase[:, :1]), phase[:, :-1]], 1)[:, starts[:-1]]
            phase = phase - torch.repeat_interleave(before, torch.tensor(lengths, device=phase.device), dim=1)
        phase = phase.remainder(2 * torch.pi)
        rot = torch.complex(torch.cos(phase), torch.sin(phase)).to(cdt)              # e^{i Phi_t}
        q, k, gate = q * rot, k * rot.conj(), gate.real
    real_gate = None if gate is None else gate.to(rdt)
    keys = torch.cat([k.real, k.imag], -1)
    values = torch.cat([v.real, v.imag], -1)
    q_re = torch.cat([q.real, -q.imag], -1)                                       # reads Re o
    q_im = torch.cat([q.imag, q.real], -1)                                        # reads Im o
    gates = {}
    if real_gate is not None:
        gates = {"g": real_gate[..., 0]} if gk is None else {"gk": torch.cat([real_gate, real_gate], -1)}
    h0 = None
    if initial_state is not None:
        h0 = initial_state.to(cdt)
        top = torch.cat([h0.real, h0.imag], -1)                                       # [N, H, K, 2V]
        h0 = torch.cat([top, torch.zeros_like(top)], -2)
        h0 = torch.cat([h0, h0], 0)
    # The two queries share X: one call on a doubled batch (packed sequences: twice as many sequences).
    axis = 1 if rows.varlen else 0
    twice = lambda x: torch.cat([x, x], axis).to(rdt)                             # noqa: E731
    cu2 = torch.cat([rows.cu, rows.cu[1:] + T]) if rows.varlen else None
    with _readouts_in(None):    # the real parts are combined below: in the compute dtype
        o2, X = chunk_gated(torch.cat([q_re, q_im], axis).to(rdt), twice(keys), twice(values), scale=scale,
                            initial_state=h0, output_final_state=output_final_state, cu_seqlens=cu2,
                            chunk_size=chunk_size, **{n: twice(x) for n, x in gates.items()})
    o_re, o_im = o2.chunk(2, axis)
    o = torch.complex(o_re[..., :V] - o_im[..., V:], o_re[..., V:] + o_im[..., :V])
    if not output_final_state:
        return o, None
    X = X[:rows.N]
    ht = torch.complex(X[..., :K, :V] - X[..., K:, V:], X[..., :K, V:] + X[..., K:, :V])
    if rot is not None:   # the rotation at each sequence's last token
        last = rot[0, rows.cu[1:].long() - 1] if rows.varlen else rot[:, -1]
        ht = ht * last[:, :, :, None]
    return o, ht


def _unless_zero(initial_state):
    """None for an initial state the op running now made as zeros (``op.is_zero_initial_state``), whose kernels then
    start from zero without reading it (fla's initial_state=None); else the state as given."""
    return None if _op_zero_initial_state(initial_state) else initial_state


def _wants_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _Rows:
    """How the kernels find the sequences: B equal-length rows of T tokens, or (cu_seqlens, B = 1) N packed
    sequences, one program row each. ``T`` is the kernels' T argument (the longest sequence: h has NT =
    cdiv(T, BT) chunk slots per sequence), ``N`` the sequence count."""

    def __init__(self, B: int, T: int, cu_seqlens=None):
        self.varlen = cu_seqlens is not None
        if not self.varlen:
            self.N, self.T, self.cu = B, T, None
            return
        bounds = _packed_bounds(cu_seqlens, B, T, allow_empty=False, who="the Triton chunk kernels")
        lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        self.N, self.T, self.cu = len(lengths), max(lengths), cu_seqlens

    def kwargs(self) -> dict:
        """cu_seqlens and IS_VARLEN of the launches: without packed sequences cu_seqlens is None (the kernels read
        it only under IS_VARLEN, a constexpr; as fla's)."""
        return dict(cu_seqlens=self.cu if self.varlen else None, IS_VARLEN=self.varlen)


def _low_precision(*tensors) -> torch.dtype | None:
    """bf16 / fp16 if the inputs are (the launch policy then rounds the tl.dot operands to it), else None: the
    inputs of the op running now (it hands its forms fp32 copies; ``op.low_precision_inputs``), or these."""
    return _op_low_precision() or low_precision_of(*tensors)


_ASK = object()    # _setup's low: find it from the tensors and the op running now


def _setup(chunk_size: int, K: int, V: int, T: int, device, *tensors, low=_ASK, whole_key: bool = False):
    """(dtype, BT, BK, BV, NT, cfg, common kernel kwargs) of a chunk launch (T: the kernels' T, _Rows.T).
    whole_key: some of the launches hold every key channel in one block (the delta rule), which the launch
    policy sizes for."""
    dtype = torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
    BT = max(16, _rt.next_pow2(chunk_size))       # tl.dot needs blocks of at least 16
    BK, BV = _block(K), _block(V)
    low = _low_precision(*tensors) if low is _ASK else low
    state_block = (max(16, _rt.next_pow2(K)) if whole_key else BK) * BV
    cfg = _rt.launch_config("chunk", tiled_size=None, state_numel=state_block, device=device,
                            low_precision_inputs=low)
    prec = "ieee" if dtype == torch.float64 else cfg.get("precision", "tf32x3")
    launch = {k: cfg[k] for k in ("num_warps", "num_stages") if k in cfg}
    return dtype, BT, BK, BV, triton.cdiv(T, BT), cfg, dict(DTYPE=_rt.tl_dtype(dtype), PREC=prec, **launch)


# What the tuner (triton_tune) may change in the policy's configuration on a GPU, per kind of kernel: fla autotunes
# its chunk kernels over blocks, warps and stages where ``_setup`` picks one configuration. Only alternatives that
# leave each kernel's buffers as they are (its grid may change; its outputs' shapes may not); a handful each, as
# every candidate compiles on the first call at a key.
TUNING = {
    # chunk_fwd_h (gated), chunk_bwd_dh: sequential over the chunks, a program per (K, V) tile and head; smaller
    # tiles give more programs at few heads (fla's fwd_h tunes BK, BV in {32, 64})
    "state_pass": ({"num_stages": 3}, {"BV": 32, "num_warps": 4}, {"BK": 32, "BV": 32, "num_warps": 4},
                   {"BK": 32, "BV": 32, "num_warps": 2}),
    # the delta rule's state passes (chunk_delta_fwd_h, chunk_delta_bwd_dhu): every key channel in one program
    # (the policy's V tile: _whole_key_value_tile)
    "delta_state_pass": ({"BV": 32}, {"BV": 64}, {"num_stages": 2}),
    # chunk_fwd_o: a program per (V tile, chunk, head), looping over K tiles (fla: 128 x 128 at 8 warps, 64 x 64 at 4)
    "output": ({"num_warps": 4, "num_stages": 3}, {"BK": 128, "BV": 128, "num_warps": 8, "num_stages": 2},
               {"BV": 32, "num_warps": 4}),
    # chunk_bwd_dqk (its K tiles fix the scalar gate's dg buffer: only BV), chunk_bwd_dv (compiled for sm_90 at
    # K = V = 128, bf16: dqk spills 24-248 B at 4 warps, dv does not)
    "per_chunk": ({"num_warps": 4}, {"num_warps": 8}, {"BV": 32}),
    # the delta rule's per-chunk backward (its key tiles only tile its own loops)
    "delta_per_chunk": ({"BK": 64}, {"num_warps": 4}, {"num_warps": 8}),
    # the rest (intra-chunk scores and their backward, the WY stage)
    "warps": ({"num_warps": 4}, {"num_warps": 8}),
}

# The key tile of the delta rule's per-chunk backward (chunk_delta_bwd_kernel; the policy's BK for it, at most).
# Compiled for sm_90 at 8 warps with bf16 operands, its 64-wide tiles spilled 800 B per thread (gated) and 184 B
# (plain) at K = 64, where its passes over the key tiles are one iteration each and the compiler keeps the blocks
# they load alike (k, dv_new, do, v_new, h) live from the first pass to the last; 32-wide tiles spill nothing there,
# and less at K = 128 (gated 176 -> 72 B) and 256 (256 -> 96 B). The same total work, in smaller dots.
DELTA_BWD_KEY_TILE = 32


def _fitting(meta: dict, alternatives) -> list[dict]:
    """The alternatives whose blocks fit the kernel: 16 <= BK <= K's power of two, the same for BV (a block past
    the dims would only be padding)."""
    def fits(alt: dict) -> bool:
        return all(16 <= alt[b] <= max(16, _rt.next_pow2(meta[d])) for b, d in (("BK", "K"), ("BV", "V")) if b in alt)
    return [alt for alt in alternatives if fits(alt)]


def _whole_key_value_tile(BK: int, BV: int) -> int:
    """The V tile of the delta rule's state passes (``chunk_delta_fwd_h_kernel``, ``chunk_delta_bwd_dhu_kernel``:
    every key channel of a V tile in one program): 32 where the key blocks reach 256 (BK: K's power of two), else BV.
    Compiled for sm_90 at K = V = 256 (8 warps, the benchmark's calls: no initial or final state), V tiles of 64
    spill with bf16 operands (forward 40 B per thread, gated 32; backward 208, 192) and tiles of 32 do not (141-255
    registers), with twice the programs; with fp32 inputs the gated backward pass at 64 needed 288 KB of shared
    memory, past the H100's 227 KB. 64 stays among the tuner's alternatives."""
    return min(BV, 32) if BK >= 256 else BV


def _launch(kernel, grid, args: tuple, tuning: str, **meta) -> None:
    """kernel[grid(meta)](*args, cu_seqlens, **meta): the policy's configuration, or on a GPU the fastest of it and
    the ``TUNING[tuning]`` alternatives that fit (``triton_tune.launch``). grid: a function of the configuration.
    args end with the kernel's T; cu_seqlens (in meta, from ``_Rows.kwargs``) follows it positionally, so that
    meta holds no tensor (the tuner's key is made of meta's values)."""
    args = (*args, meta.pop("cu_seqlens"))
    _tt.launch(kernel, grid, args, meta, lambda: _fitting(meta, TUNING[tuning]))


def _states_dtype(common: dict, dtype: torch.dtype) -> torch.dtype:
    """The dtype of the per-chunk states h [N, H, NT, K, V] (and of their gradients dh), and of the delta rule's
    W, U, v_new [B, T, H, K or V] (and of v_new's gradient): the dot operands' for bf16 / fp16 inputs, as fla
    stores them, else the compute dtype. Every kernel reading h, W, v_new or its gradient rounds them to that
    dtype for its dots anyway: stored so, they are the same numbers in half the bytes. U is not a dot operand
    (v_new = U - W S is computed in the compute dtype): stored in bf16 / fp16 it is rounded once more than in
    fp32, as in fla (its recompute_w_u stores U in v's dtype)."""
    operand_dtypes = {name: low for low, name in _rt.DOT_OPERANDS.items()}
    return operand_dtypes.get(common["PREC"], dtype)


def _local_cumsum(graw, BT: int, NT: int, cfg, rows: _Rows, dtype: torch.dtype, reverse: bool = False):
    """The chunk-local cumulative sums, in ``dtype`` (the compute dtype), of log gates graw [B, T, H, D]
    (contiguous, any float dtype: converted as loaded); reverse: the sums from each token to its chunk's end (the
    backward's gate gradient)."""
    H, D = graw.shape[2], graw.shape[3]
    gc = torch.empty(graw.shape, dtype=dtype, device=graw.device)
    BD = 1 if D == 1 else _block(D)
    chunk_local_cumsum_kernel[(triton.cdiv(D, BD), NT, rows.N * H)](graw, gc, rows.T, H=H, D=D, BT=BT, BD=BD,
                                                                   REVERSE=reverse, num_warps=cfg["num_warps"],
                                                                   **rows.kwargs())
    return gc


def _query_scale(q, scale: float, dtype: torch.dtype):
    """(q, the scale the kernels apply to q's products). The kernels take it as an fp32 scalar, which is exact for
    fp32 computation; fp64 computation scales q here instead (kernel scale 1)."""
    if dtype == torch.float64 and scale != 1.0:
        return q * scale, 1.0
    return q, scale


def _chunk_gated_forward(q, k, v, g, gk, initial_state, scale, chunk_size, rows: _Rows, store_final: bool = True):
    """The forward stages. q, k, v, g, gk are read in their own dtypes (bf16 / fp16 inputs are converted as the
    kernels load them: no fp32 copies); the computation is in the compute dtype (``_setup``). Returns (o, final
    state (None without ``store_final``: not stored), saved) with saved = (q, k, v, G, h, A, gate, kernel scale) for
    the backward (q as the kernels read it, times the kernel scale; h [N, H, NT, K, V]: the state entering each
    chunk; A [B, T, H, BT]: the intra-chunk scores of a key gate, else None)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    dtype, BT, BK, BV, NT, cfg, common = _setup(chunk_size, K, V, rows.T, q.device, q, k, v, g, gk, initial_state)
    common.update(rows.kwargs())
    N = rows.N
    if g is not None and gk is not None:
        gk, g = gk.to(dtype) + g[..., None].to(dtype), None      # in the compute dtype
    q, kscale = _query_scale(q, scale, dtype)
    q, k, v = (x.contiguous() for x in (q, k, v))
    gate, gc = GATE_NONE, q
    if g is not None or gk is not None:
        gate = GATE_SCALAR if g is not None else GATE_KEY
        gc = _local_cumsum((g[..., None] if g is not None else gk).contiguous(), BT, NT, cfg, rows, dtype)
    h = (torch.zeros if rows.varlen else torch.empty)(N, H, NT, K, V, dtype=_states_dtype(common, dtype),
                                                       device=q.device)
    ht = torch.empty(N, H, K, V, dtype=dtype, device=q.device) if store_final else None
    h0 = initial_state.to(dtype).contiguous() if initial_state is not None else None
    _launch(chunk_fwd_h_kernel, lambda m: (triton.cdiv(K, m["BK"]), triton.cdiv(V, m["BV"]), N * H),
            (k, v, gc, h, h0, ht, rows.T), "state_pass", H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, GATE=gate,
            USE_INITIAL_STATE=h0 is not None, STORE_FINAL_STATE=store_final, **common)
    A = q
    if gate == GATE_KEY:
        A = intra_scores_buffer((B, T, H, BT), dtype, q.device)
        _launch(chunk_intra_gk_kernel, lambda m: (NT, N * H), (q, k, gc, A, kscale, rows.T), "warps", H=H, K=K,
                BT=BT, BC=16, BK=BK, DIAG_3D=cfg.get("diag_3d", False), **common)
    o = torch.empty(B, T, H, V, dtype=_op_readout_dtype() or dtype, device=q.device)
    _launch(chunk_fwd_o_kernel, lambda m: (triton.cdiv(V, m["BV"]), NT, N * H), (q, k, v, gc, h, A, o, kscale, rows.T),
            "output", H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, GATE=gate, **common)
    return o, ht, (q, k, v, gc, h, A if gate == GATE_KEY else None, gate, kscale)


def _grad_dtypes(dtype: torch.dtype, *inputs: torch.dtype | None) -> list[torch.dtype]:
    """The dtypes the backward kernels store the gradients of these inputs in: a bf16 / fp16 input's own (each
    such gradient is stored once, from the fp32 accumulators: the rounding autograd would do after), else the
    compute dtype. fp64 computation keeps fp64 (its dq is scaled after the kernels)."""
    low = (torch.bfloat16, torch.float16)
    return [d if d in low and dtype != torch.float64 else dtype for d in inputs]


def _chunk_gated_backward(saved, do, dht, scale: float, chunk_size: int, rows: _Rows, low=None, grad_dtypes=(),
                          want_dh0: bool = True):
    """Gradients (dq, dk, dv, dG or None, dh0) of the chunk form, in the compute dtype or, for dq, dk, dv, in
    ``grad_dtypes`` (the inputs' dtypes; see ``_grad_dtypes``); dG is [B, T, H] for a scalar gate, [B, T, H, K]
    for a key gate (the gradient of the raw log gate, not of its cumulative sums). do in any float dtype; dht
    None: the final state's gradient is zero (it is not read); dh0 None unless ``want_dh0``."""
    q, k, v, gc, h, A, gate, kscale = saved
    B, T, H, K = q.shape
    V = v.shape[-1]
    dtype, BT, BK, BV, NT, cfg, common = _setup(chunk_size, K, V, rows.T, q.device, gc, h, low=low)
    common.update(rows.kwargs())
    N = rows.N
    do = do.contiguous()                         # converted as loaded
    dht = None if dht is None else dht.to(dtype).contiguous()
    dh = torch.zeros_like(h) if rows.varlen else torch.empty_like(h)
    dh0 = torch.empty(N, H, K, V, dtype=dtype, device=q.device) if want_dh0 else None
    _launch(chunk_bwd_dh_kernel, lambda m: (triton.cdiv(K, m["BK"]), triton.cdiv(V, m["BV"]), N * H),
            (q, do, gc, dh, dht, dh0, kscale, rows.T), "state_pass", H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, GATE=gate,
            USE_FINAL_STATE_GRADIENT=dht is not None, STORE_INITIAL_STATE_GRADIENT=want_dh0, **common)
    dq, dk, dv = (torch.empty(x.shape, dtype=gd, device=x.device)
                  for x, gd in zip((q, k, v), _grad_dtypes(dtype, *grad_dtypes) if grad_dtypes else [dtype] * 3))
    BK_all, BV_all = max(16, _rt.next_pow2(K)), max(16, _rt.next_pow2(V))
    dqi, dki = dq, dk                            # the intra-chunk parts (key gates), in the compute dtype
    if gate == GATE_KEY:
        dqi, dki = (torch.empty(x.shape, dtype=dtype, device=x.device) for x in (q, k))
        _launch(chunk_bwd_intra_gk_kernel, lambda m: (NT, N * H), (q, k, v, gc, do, dqi, dki, kscale, rows.T),
                "warps", H=H, K=K, V=V, BT=BT, BC=16, BK=BK_all, BV=BV_all, **common)
    NK = triton.cdiv(K, BK)
    dg = dq                                      # a pointer the kernel does not write without a gate
    if gate == GATE_KEY:
        dg = torch.empty(gc.shape, dtype=dtype, device=q.device)
    elif gate == GATE_SCALAR:                    # each K tile's part of dG, summed below
        dg = torch.empty(B, T, H, NK, dtype=dtype, device=q.device)
    _launch(chunk_bwd_dqk_kernel, lambda m: (NK, NT, N * H),
            (q, k, v, gc, h, do, dh, dqi, dki, dq, dk, dg, kscale, rows.T), "per_chunk", H=H, K=K, V=V, BT=BT, BK=BK,
            BV=BV, GATE=gate, **common)
    _launch(chunk_bwd_dv_kernel, lambda m: (triton.cdiv(V, m["BV"]), NT, N * H),
            (q, k, gc, dh, do, A if A is not None else q, dv, kscale, rows.T), "per_chunk", H=H, K=K, V=V, BT=BT,
            BK=BK, BV=BV, GATE=gate, **common)
    if gate == GATE_SCALAR:
        dg = _local_cumsum(dg.sum(-1, keepdim=True).contiguous(), BT, NT, cfg, rows, dtype, reverse=True)[..., 0]
    if kscale != scale:       # q was scaled before the kernels (fp64): they gave the scaled q's gradient
        dq = dq * scale
    return dq, dk, dv, (dg if gate != GATE_NONE else None), dh0


def _output_gradient(do, q, v):
    """The gradient of o [B, T, H, V] as the backward kernels read it: zeros where autograd gave None (only the
    final state was used; the Functions do not materialize unused gradients)."""
    if do is not None:
        return do
    return torch.zeros(*q.shape[:3], v.shape[-1], dtype=v.dtype, device=v.device)


class _ChunkGated(torch.autograd.Function):
    """chunk_gated, forward and backward as Triton kernels. A scalar gate given with a key gate is folded into
    it (gk + g); its gradient is then the key gate's summed over K."""

    @staticmethod
    def forward(ctx, q, k, v, g, gk, initial_state, scale, chunk_size, rows, store_final):
        o, ht, saved = _chunk_gated_forward(q, k, v, g, gk, initial_state, scale, chunk_size, rows, store_final)
        ctx.set_materialize_grads(False)        # an unused final state's gradient stays None: not read
        ctx.save_for_backward(*saved[:6])
        ctx.gate, ctx.kscale, ctx.scale, ctx.chunk_size, ctx.rows = saved[6], saved[7], scale, chunk_size, rows
        ctx.low = _low_precision(q, k, v, g, gk, initial_state)
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (q, k, v, g, gk, initial_state))
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        saved = (*ctx.saved_tensors, ctx.gate, ctx.kscale)
        dq, dk, dv, dG, dh0 = _chunk_gated_backward(saved, _output_gradient(do, saved[0], saved[2]), dht, ctx.scale,
                                                    ctx.chunk_size, ctx.rows, ctx.low, ctx.dtypes[:3],
                                                    want_dh0=ctx.needs_input_grad[5])
        has_g, has_gk = ctx.dtypes[3] is not None, ctx.dtypes[4] is not None
        dg = (dG.sum(-1) if has_gk else dG) if has_g else None
        dgk = dG if has_gk else None
        grads = (dq, dk, dv, dg, dgk, dh0)
        out = tuple(None if gr is None or dt is None else gr.to(dt) for gr, dt in zip(grads, ctx.dtypes))
        return (*out, None, None, None, None)


def chunk_delta(q, k, v, beta, g=None, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None,
                chunk_size=64):
    """Chunkwise (gated) delta rule as Triton kernels, fla's stage structure, forward and backward:
        S = exp(g_t) S;  S = S + beta_t k_t (v_t - S^T k_t)^T;  o_t = S^T (scale q_t).

    q, k [B, T, H, K], v [B, T, H, V], beta [B, T, H], g [B, T, H] (log decay, optional), initial_state
    [B, H, K, V]. Forward stages: chunk-local cumsum of g; the WY / UT stage per chunk (``chunk_delta_wy_kernel``:
    the inverse of I + tril(diag(beta) K K^T ⊙ D, -1) in 16 x 16 blocks, stored for the backward, then W and U);
    the state entering each chunk with the corrected values v_new = U - W S (``chunk_delta_fwd_h_kernel``); the
    outputs o = (q ⊙ exp(G)) S + (q k^T ⊙ D) v_new (the gated chunk's output kernel). Backward:
    ``chunk_delta_bwd_dhu_kernel`` (state gradients and dv_new from the last chunk to the first), then
    ``chunk_delta_bwd_kernel`` per chunk (dq, dk, dv, dbeta, dg, through the WY stage with the forward's inverse).
    The arguments and results of ``torch_forms.chunk_delta`` (cu_seqlens: N packed non-empty sequences in the same
    launches); complex values are not supported here; K up to 256 (the WY stage holds every key channel in one
    block, the state passes up to four blocks of 64 rows).
    Computed in fp32 (fp64 for fp64).
    """
    if any(t is not None and t.is_complex() for t in (q, k, v, beta, g, initial_state)):
        raise NotImplementedError("the Triton chunk kernels are real")
    K = q.shape[-1]
    if K > 256:
        raise NotImplementedError(f"the Triton delta chunk kernels take K <= 256 key channels (their WY stage holds "
                                  f"them in one block); got K = {K}")
    if scale is None:
        scale = K ** -0.5
    rows = _Rows(q.shape[0], q.shape[1], cu_seqlens)
    initial_state = _unless_zero(initial_state)
    if _wants_grad(q, k, v, beta, g, initial_state):
        o, ht = _ChunkDelta.apply(q, k, v, beta, g, initial_state, float(scale), chunk_size, rows, output_final_state)
    else:
        o, ht, _, _ = _chunk_delta_forward(q, k, v, beta, g, initial_state, scale, chunk_size, rows,
                                           output_final_state)
    return o, ht


def _chunk_delta_forward(q, k, v, beta, g, initial_state, scale, chunk_size, rows: _Rows, store_final: bool = True):
    """The forward stages (inputs read in their own dtypes and the final state only with ``store_final``, as
    ``_chunk_gated_forward``). Returns (o, final state, saved, kernel scale) with saved = (q, k, v, beta, G, w, h,
    v_new, tm) for the backward (q as the kernels read it, times the kernel scale; h [N, H, NT, K, V]: the state
    entering each chunk; G None without a gate; tm [B, T, H, BT]: each chunk's (I + A)^-1, read by the backward
    instead of inverting again)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    dtype, BT, _, BV, NT, cfg, common = _setup(chunk_size, K, V, rows.T, q.device, q, k, v, beta, g, initial_state,
                                               whole_key=True)
    common.update(rows.kwargs())
    N = rows.N
    BK = max(16, _rt.next_pow2(K))                   # the WY stage: every key channel in one block
    q, kscale = _query_scale(q, scale, dtype)
    q, k, v, beta = (x.contiguous() for x in (q, k, v, beta))
    gc = None
    if g is not None:
        gc = _local_cumsum(g[..., None].contiguous(), BT, NT, cfg, rows, dtype)
    gcp = gc if gc is not None else beta             # a pointer the kernels do not read without a gate
    stored = _states_dtype(common, dtype)            # of h, W, U, v_new and tm (bf16 for bf16 inputs, as fla)
    w, u = (torch.empty(x.shape, dtype=stored, device=x.device) for x in (k, v))
    tm = torch.empty(*beta.shape, BT, dtype=stored, device=q.device)
    _launch(chunk_delta_wy_kernel, lambda m: (NT, N * H), (k, v, beta, gcp, w, u, tm, rows.T), "warps", H=H, K=K,
            V=V, BT=BT, BK=BK, BV=BV, GATED=g is not None, **common)
    h = (torch.zeros if rows.varlen else torch.empty)(N, H, NT, K, V, dtype=stored, device=q.device)
    v_new = torch.empty_like(u)
    ht = torch.empty(N, H, K, V, dtype=dtype, device=q.device) if store_final else None
    h0 = initial_state.to(dtype).contiguous() if initial_state is not None else None
    gate = GATE_SCALAR if g is not None else GATE_NONE
    _launch(chunk_delta_fwd_h_kernel, lambda m: (triton.cdiv(V, m["BV"]), N * H),
            (k, u, w, gcp, h, h0, ht, v_new, rows.T), "delta_state_pass", H=H, K=K, V=V, BT=BT, BK=_block(K),
            BV=_whole_key_value_tile(BK, BV), GATED=g is not None,
            USE_INITIAL_STATE=h0 is not None, STORE_FINAL_STATE=store_final, **common)
    o = torch.empty(B, T, H, V, dtype=_op_readout_dtype() or dtype, device=q.device)
    _launch(chunk_fwd_o_kernel, lambda m: (triton.cdiv(V, m["BV"]), NT, N * H),
            (q, k, v_new, gcp, h, q, o, kscale, rows.T), "output", H=H, K=K, V=V, BT=BT, BK=_block(K), BV=BV,
            GATE=gate, **common)
    return o, ht, (q, k, v, beta, gc, w, h, v_new, tm), kscale


def _chunk_delta_backward(saved, do, dht, scale: float, kscale: float, chunk_size: int, rows: _Rows, low=None,
                          grad_dtypes=(), want_dh0: bool = True):
    """Gradients (dq, dk, dv, dbeta, dg or None, dh0) of the (gated) delta rule's chunk form, in the compute
    dtype or, for dq, dk, dv, dbeta, in ``grad_dtypes`` (see ``_grad_dtypes``); kscale: the scale the kernels
    apply to the saved q. do in any float dtype; dht None: zero (not read); dh0 None unless ``want_dh0``."""
    q, k, v, beta, gc, w, h, v_new, tm = saved
    H, K = q.shape[2], q.shape[3]
    V = v.shape[-1]
    dtype, BT, BK_tile, BV, NT, _, common = _setup(chunk_size, K, V, rows.T, q.device, w, low=low, whole_key=True)
    common.update(rows.kwargs())
    N = rows.N
    BK = max(16, _rt.next_pow2(K))               # the state-gradient pass holds every key channel (in 64-row blocks)
    gated = gc is not None
    gcp = gc if gated else beta
    do = do.contiguous()                         # converted as loaded
    dht = None if dht is None else dht.to(dtype).contiguous()
    dh = (torch.zeros_like if rows.varlen else torch.empty_like)(h)
    dh0 = torch.empty(N, H, K, V, dtype=dtype, device=q.device) if want_dh0 else None
    dv_new = torch.empty_like(v_new)
    _launch(chunk_delta_bwd_dhu_kernel, lambda m: (triton.cdiv(V, m["BV"]), N * H),
            (q, k, w, gcp, do, dh, dht, dh0, dv_new, kscale, rows.T), "delta_state_pass", H=H, K=K, V=V, BT=BT,
            BK=_block(K), BV=_whole_key_value_tile(BK, BV), GATED=gated,
            USE_FINAL_STATE_GRADIENT=dht is not None, STORE_INITIAL_STATE_GRADIENT=want_dh0, **common)
    dq, dk, dv, dbeta = (torch.empty(x.shape, dtype=gd, device=x.device) for x, gd in zip(
        (q, k, v, beta), _grad_dtypes(dtype, *grad_dtypes) if grad_dtypes else [dtype] * 4))
    dg = torch.empty(beta.shape, dtype=dtype, device=beta.device) if gated else dbeta
    _launch(chunk_delta_bwd_kernel, lambda m: (NT, N * H),
            (q, k, v, beta, gcp, h, dh, do, v_new, dv_new, tm, dq, dk, dv, dbeta, dg, kscale, rows.T),
            "delta_per_chunk", H=H, K=K, V=V, BT=BT, BK=min(BK_tile, DELTA_BWD_KEY_TILE), BV=BV, GATED=gated, **common)
    if kscale != scale:       # q was scaled before the kernels (fp64): they gave the scaled q's gradient
        dq = dq * scale
    return dq, dk, dv, dbeta, (dg if gated else None), dh0


class _ChunkDelta(torch.autograd.Function):
    """chunk_delta, forward and backward as Triton kernels."""

    @staticmethod
    def forward(ctx, q, k, v, beta, g, initial_state, scale, chunk_size, rows, store_final):
        o, ht, saved, kscale = _chunk_delta_forward(q, k, v, beta, g, initial_state, scale, chunk_size, rows,
                                                    store_final)
        ctx.set_materialize_grads(False)        # an unused final state's gradient stays None: not read
        ctx.save_for_backward(*saved)
        ctx.scale, ctx.kscale, ctx.chunk_size, ctx.rows = scale, kscale, chunk_size, rows
        ctx.low = _low_precision(q, k, v, beta, g, initial_state)
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (q, k, v, beta, g, initial_state))
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        saved = ctx.saved_tensors
        grads = _chunk_delta_backward(saved, _output_gradient(do, saved[0], saved[2]), dht, ctx.scale, ctx.kscale,
                                      ctx.chunk_size, ctx.rows, ctx.low, ctx.dtypes[:4],
                                      want_dh0=ctx.needs_input_grad[5])
        out = tuple(None if gr is None or dt is None else gr.to(dt) for gr, dt in zip(grads, ctx.dtypes))
        return (*out, None, None, None, None)


def chunk_dplr(q, a, b, k, v, g=None, gk=None, scale=1.0, initial_state=None, output_final_state=False,
               cu_seqlens=None, chunk_size=64):
    """The diagonal-plus-rank-1 chunk form (RWKV-7) as Triton kernels: ``triton_dplr.chunk_dplr``, here so that the
    generated chunk forms find every chunk algorithm in this module."""
    from seqdsl.runtime.triton_dplr import chunk_dplr as run

    return run(q, a, b, k, v, g=g, gk=gk, scale=scale, initial_state=initial_state,
               output_final_state=output_final_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)
