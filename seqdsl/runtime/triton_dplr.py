"""Chunkwise diagonal-plus-rank-1 recurrence (RWKV-7, the key-gated delta rule) as Triton kernels, forward and
backward:

    S_t = exp(gk_t) ⊙ S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T,    o_t = S_t^T (scale q_t)

(``torch_forms.chunk_dplr``'s arguments and results). Each chunk is done as ``torch_forms.chunk_dplr`` does it:
with G the chunk-local cumulative log gate (G⁻ = G - gk, the gate before the token) and S_0 the state entering the
chunk, the corrections' reads u_t = a_t^T S_{t-1} solve U = (I - L_ab)^-1 ((a ⊙ e^G⁻) S_0 + L_ak V), then

    o = scale ((q ⊙ e^G) S_0 + A_qb U + A_qk V),    S_C = e^G_C ⊙ S_0 + (b ⊙ e^(G_C - G))^T U + (k ⊙ e^(G_C - G))^T V

with the causal scores A_xy[t, s] = sum_i x_ti y_si exp(G_ti - G_si) (s <= t) and the strictly causal
L_ay[t, s] = sum_i a_ti y_si exp(G⁻_ti - G_si) (s < t). The scores are computed as exact [BT, BT, K] products of
masked pairwise exponentials (every exponent is of a sum of log gates over tokens between s and t, <= 0 for decaying
gates: nothing overflows, whatever the decay), which is why the chunks are BT = 16 tokens whatever ``chunk_size``
(the torch form's tiling; 16 keeps the [16, 16, K] products in registers). The unit lower triangular inverse is
``triton_chunk.unit_lower_inverse``.

The forward is in fla's stage structure, three launches:
``dplr_chunk_intra_kernel`` (a program per chunk and head, every chunk at once): the four scores (key channels in
blocks of 32), the inverse T = (I - L_ab)^-1, and what the state passes need from them: w = T (a ⊙ e^G⁻),
M = T L_ak, the decayed q ⊙ e^G, b ⊙ e^(G_C - G), k ⊙ e^(G_C - G), A_qb, A_qk;
``dplr_chunk_fwd_h_kernel`` (a program per V tile of 32 value channels and head, the chunks in order, its [K, 32]
slice of the state in registers, K <= 256): U = w S_0 + M V, S_C from it, storing U and the state entering each
chunk (h [N, H, NT, K, V]); ``dplr_chunk_fwd_o_kernel`` (a program per V tile, chunk and head): the outputs.

The backward has the same stages, four launches: the intra-chunk results again (``_intra``: recomputed, every
chunk at once); ``dplr_chunk_bwd_dh_kernel`` (a program per V tile and head, the chunks in reverse) carries the
state's gradient dS back (dU = A_qb^T do + bg dS_C, dS_0 = qg^T do + e^G_C ⊙ dS_C + w^T dU), storing dU and the
gradient of the state leaving each chunk; ``dplr_chunk_bwd_dv_kernel`` (a program per V tile, chunk and head): dv and
each V tile's part of the gradients of the intra-chunk results (the value columns of the recurrence are independent,
so only these key-side parts need a sum over the tiles, done after the launch); ``dplr_chunk_bwd_intra_kernel`` (a
program per chunk and head): back through the inverse and the scores to dq, da, db, dk and the log gate's gradient
(through the scores: dx_t = sum_s dA_ts y_s e^(G_t - G_s), dG_t += x_t ⊙ dx_t, dG_s -= y_s ⊙ dy_s; then a reverse
cumulative sum over the chunk).
"""

from __future__ import annotations

import triton
import triton.language as tl
import torch

from seqdsl.runtime import triton_lib as _tlib
from seqdsl.runtime import triton_runtime as _rt
from seqdsl.runtime.torch_forms import _dplr_gate
from seqdsl.runtime.triton_chunk import (_ASK, _Rows, _grad_dtypes, _low_precision, _output_gradient, _setup,
                                         _unless_zero, _wants_grad, unit_lower_inverse)
from seqdsl.runtime.op import readout_dtype as _op_readout_dtype

DPLR_CHUNK = 16          # tokens per chunk of these kernels
DPLR_MAX_DIM = 256       # K: the state passes hold every key channel of their V tile in one program (sm_90: spills
                         # 72-376 B per thread at 256, none at 128)
DPLR_VALUE_TILE = 32     # value channels per program
DPLR_INTRA_KEY_BLOCK = 32   # key channels per [16, 16, BK] score product of the intra-chunk kernels
DPLR_BWD_INTRA_KEY_BLOCK = 16   # the same of its backward (four [16, 16, BK] score gradients at once)
DPLR_DV_KEY_BLOCK = 32      # key channels per step of dplr_chunk_fwd_o_kernel and dplr_chunk_bwd_dv_kernel
DPLR_WARPS = 8           # on a GPU (the policy's warps follow the state tile; the scores need more)


@triton.jit
def _pair_exp(gx, gy, mask):
    """[BT, BT, BK]: exp(gx_t - gy_s) where mask[t, s], else 0 (the exponent is masked before the exp)."""
    m3 = mask[:, :, None]
    return tl.where(m3, tl.exp(tl.where(m3, gx[:, None, :] - gy[None, :, :], 0.0)), 0.0)


@triton.jit
def _scores(x, y, gx, gy, mask):
    """A[t, s] = sum_i x_ti y_si exp(gx_ti - gy_si) where mask[t, s] (x, gx, y, gy: [BT, BK])."""
    return tl.sum(x[:, None, :] * y[None, :, :] * _pair_exp(gx, gy, mask), axis=2)


@triton.jit
def _scores_grad(dA, x, y, gx, gy, mask):
    """(dx, dy) of _scores for the scores' gradient dA [BT, BT]; the log gates' gradients are x ⊙ dx (for gx) and
    -y ⊙ dy (for gy)."""
    p = dA[:, :, None] * _pair_exp(gx, gy, mask)                     # [BT, BT, BK]
    return tl.sum(p * y[None, :, :], axis=1), tl.sum(p * x[:, None, :], axis=0)


@triton.jit
def _chunk_rows(bos, i_t, T, i_h, H: tl.constexpr, BT: tl.constexpr):
    """(m_t [BT]: which of chunk i_t's rows are tokens, rows [BT, 1]: their rows in a flat [B * T, H] view)."""
    o_c = tl.arange(0, BT)
    return i_t * BT + o_c < T, (bos + i_t * BT + o_c[:, None]) * H + i_h


@triton.jit
def _rows_of(x, rows, cols, width, mask, DTYPE: tl.constexpr):
    """The [BT, len(cols)] block of x [..., width] at the token rows ``rows`` [BT, 1] (masked lanes 0), in DTYPE."""
    return tl.load(x + rows * width + cols[None, :], mask=mask, other=0.0).to(DTYPE)


@triton.jit
def _chunk_keys(q, a, b, k, gk, bos, i_t, T, i_h, i_k, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
                BK: tl.constexpr, DTYPE: tl.constexpr):
    """Chunk i_t's key-side blocks (key channels i_k * BK + [0, BK)): q, a, b, k, G, G⁻ [BT, BK], the chunk's total
    log gate G_C [BK], its rows' mask m_t [BT] and offsets. Rows past T load zeros (log gate 0: G stays G_C there)."""
    o_c = tl.arange(0, BT)
    o_t = i_t * BT + o_c
    m_t = o_t < T
    o_k = i_k * BK + tl.arange(0, BK)
    m_tk = m_t[:, None] & (o_k < K)[None, :]
    p_k = ((bos + o_t[:, None]) * H + i_h) * K + o_k[None, :]
    b_q = tl.load(q + p_k, mask=m_tk, other=0.0).to(DTYPE)
    b_a = tl.load(a + p_k, mask=m_tk, other=0.0).to(DTYPE)
    b_b = tl.load(b + p_k, mask=m_tk, other=0.0).to(DTYPE)
    b_k = tl.load(k + p_k, mask=m_tk, other=0.0).to(DTYPE)
    b_g = tl.load(gk + p_k, mask=m_tk, other=0.0).to(DTYPE)
    b_G = tl.cumsum(b_g, axis=0)
    b_Gl = tl.sum(b_g, axis=0)                                       # G_C: the chunk's total log gate
    return b_q, b_a, b_b, b_k, b_G, b_G - b_g, b_Gl, o_c, m_t, p_k, m_tk


@triton.jit
def _chunk_inputs(q, a, b, k, v, gk, bos, i_t, T, i_h, o_v, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                  BT: tl.constexpr, BK: tl.constexpr, DTYPE: tl.constexpr):
    """_chunk_keys, and v [BT, BV] (the value channels o_v) with its offsets and mask."""
    b_q, b_a, b_b, b_k, b_G, b_Gx, b_Gl, o_c, m_t, p_k, m_tk = _chunk_keys(q, a, b, k, gk, bos, i_t, T, i_h, 0, H,
                                                                          K, BT, BK, DTYPE)
    m_tv = m_t[:, None] & (o_v < V)[None, :]
    p_v = ((bos + i_t * BT + o_c[:, None]) * H + i_h) * V + o_v[None, :]
    b_v = tl.load(v + p_v, mask=m_tv, other=0.0).to(DTYPE)
    return b_q, b_a, b_b, b_k, b_v, b_G, b_Gx, b_Gl, o_c, m_t, p_k, p_v, m_tk, m_tv


@triton.jit
def dplr_chunk_intra_kernel(
    q, a, b, k, gk,          # [B, T, H, K]
    qg, w, bg, kg,           # [B, T, H, K]: q e^G, (I - L_ab)^-1 (a e^G⁻), b e^(G_C - G), k e^(G_C - G)
    M, Aqb, Aqk,             # [B, T, H, BT]: each token's row of (I - L_ab)^-1 L_ak, A_qb, A_qk within its chunk
    T, cu_seqlens, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, DTYPE: tl.constexpr,
    PREC: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """One program per (chunk, sequence x head): everything of a chunk that does not need the state entering it.
    The key channels in blocks of BK (the scores are sums over them; each block's gates are its own cumulative
    sums), twice: the four score matrices, then, with (I - L_ab)^-1 known, the decayed keys."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    bos, T = _tlib.sequence_bounds(cu_seqlens, i_b, T, IS_VARLEN)
    if i_t * BT < T:                         # packed sequences: chunk slots past this one's end do nothing
        o_c = tl.arange(0, BT)
        causal = o_c[:, None] >= o_c[None, :]
        strict = o_c[:, None] > o_c[None, :]
        L_ab = tl.zeros([BT, BT], dtype=DTYPE)
        L_ak = tl.zeros([BT, BT], dtype=DTYPE)
        A_qb = tl.zeros([BT, BT], dtype=DTYPE)
        A_qk = tl.zeros([BT, BT], dtype=DTYPE)
        for i_k in range(0, tl.cdiv(K, BK)):
            b_q, b_a, b_b, b_k, b_G, b_Gx, b_Gl, o_c, m_t, p_k, m_tk = _chunk_keys(q, a, b, k, gk, bos, i_t, T,
                                                                                  i_h, i_k, H, K, BT, BK, DTYPE)
            L_ab += _scores(b_a, b_b, b_Gx, b_G, strict)
            L_ak += _scores(b_a, b_k, b_Gx, b_G, strict)
            A_qb += _scores(b_q, b_b, b_G, b_G, causal)
            A_qk += _scores(b_q, b_k, b_G, b_G, causal)
        b_Tinv = unit_lower_inverse(-L_ab, o_c, BT, DTYPE, PREC)
        p_c = ((bos + i_t * BT + o_c[:, None]) * H + i_h) * BT + o_c[None, :]
        m_c = (i_t * BT + o_c < T)[:, None] & (o_c < BT)[None, :]
        tl.store(M + p_c, _tlib.dot_fp32(b_Tinv, L_ak, PREC), mask=m_c)
        tl.store(Aqb + p_c, A_qb, mask=m_c)
        tl.store(Aqk + p_c, A_qk, mask=m_c)
        for i_k in range(0, tl.cdiv(K, BK)):
            b_q, b_a, b_b, b_k, b_G, b_Gx, b_Gl, o_c, m_t, p_k, m_tk = _chunk_keys(q, a, b, k, gk, bos, i_t, T,
                                                                                  i_h, i_k, H, K, BT, BK, DTYPE)
            rev = tl.where(m_t[:, None], tl.exp(b_Gl[None, :] - b_G), 0.0)              # e^(G_C - G), real rows
            tl.store(qg + p_k, b_q * tl.exp(b_G), mask=m_tk)
            tl.store(w + p_k, _tlib.dot_fp32(b_Tinv, b_a * tl.exp(b_Gx), PREC), mask=m_tk)
            tl.store(bg + p_k, b_b * rev, mask=m_tk)
            tl.store(kg + p_k, b_k * rev, mask=m_tk)


@triton.jit
def dplr_chunk_fwd_h_kernel(
    w, bg, kg, M, v, gk,     # from dplr_chunk_intra_kernel; v [B, T, H, V]; gk the log gate [B, T, H, K]
    h, h0, ht, u,            # h [N, H, NT, K, V]: the state entering each chunk; h0, ht [N, H, K, V]; u [B, T, H, V]
    T, cu_seqlens, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, USE_INITIAL_STATE: tl.constexpr, STORE_FINAL_STATE: tl.constexpr, DTYPE: tl.constexpr,
    PREC: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """One program per (V tile, sequence x head) walks the chunks in order: the corrections' reads
    u = w S_0 + M v, then S_C = e^G_C ⊙ S_0 + bg^T u + kg^T v."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)
    bos, T = _tlib.sequence_bounds(cu_seqlens, i_b, T, IS_VARLEN)
    o_c = tl.arange(0, BT)
    o_k, o_v = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_kv = (o_k < K)[:, None] & (o_v < V)[None, :]
    p_kv = o_k[:, None] * V + o_v[None, :]
    b_h = tl.zeros([BK, BV], dtype=DTYPE)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + i_bh * K * V + p_kv, mask=m_kv, other=0.0).to(DTYPE)
    for i_t in range(0, tl.cdiv(T, BT)):
        tl.store(h + (i_bh * NT + i_t) * K * V + p_kv, b_h.to(h.dtype.element_ty), mask=m_kv)
        m_t, rows = _chunk_rows(bos, i_t, T, i_h, H, BT)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        b_w = _rows_of(w, rows, o_k, K, m_tk, DTYPE)
        b_bg = _rows_of(bg, rows, o_k, K, m_tk, DTYPE)
        b_kg = _rows_of(kg, rows, o_k, K, m_tk, DTYPE)
        b_Gl = tl.sum(_rows_of(gk, rows, o_k, K, m_tk, DTYPE), axis=0)
        b_M = _rows_of(M, rows, o_c, BT, m_t[:, None], DTYPE)
        b_v = _rows_of(v, rows, o_v, V, m_tv, DTYPE)
        b_u = _tlib.dot(b_w, b_h, PREC) + _tlib.dot(b_M, b_v, PREC)
        tl.store(u + rows * V + o_v[None, :], b_u.to(u.dtype.element_ty), mask=m_tv)
        b_h = tl.exp(b_Gl)[:, None] * b_h + _tlib.dot(tl.trans(b_bg), b_u, PREC) + _tlib.dot(tl.trans(b_kg), b_v, PREC)
    if STORE_FINAL_STATE:
        tl.store(ht + i_bh * K * V + p_kv, b_h.to(ht.dtype.element_ty), mask=m_kv)


@triton.jit
def dplr_chunk_fwd_o_kernel(
    qg, Aqb, Aqk, u, v, h, o, scale, T, cu_seqlens, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DTYPE: tl.constexpr, PREC: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    """One program per (V tile, chunk, sequence x head): o = scale (qg S_0 + A_qb u + A_qk v), the key channels in
    blocks of BK."""
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)
    bos, T = _tlib.sequence_bounds(cu_seqlens, i_b, T, IS_VARLEN)
    if i_t * BT < T:
        o_c = tl.arange(0, BT)
        o_v = i_v * BV + tl.arange(0, BV)
        m_t, rows = _chunk_rows(bos, i_t, T, i_h, H, BT)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        b_Aqb = _rows_of(Aqb, rows, o_c, BT, m_t[:, None], DTYPE)
        b_Aqk = _rows_of(Aqk, rows, o_c, BT, m_t[:, None], DTYPE)
        b_u = _rows_of(u, rows, o_v, V, m_tv, DTYPE)
        b_v = _rows_of(v, rows, o_v, V, m_tv, DTYPE)
        b_o = _tlib.dot(b_Aqb, b_u, PREC) + _tlib.dot(b_Aqk, b_v, PREC)
        for i_k in range(0, tl.cdiv(K, BK)):
            o_k = i_k * BK + tl.arange(0, BK)
            m_kv = (o_k < K)[:, None] & (o_v < V)[None, :]
            b_h = tl.load(h + (i_bh * NT + i_t) * K * V + o_k[:, None] * V + o_v[None, :], mask=m_kv,
                          other=0.0).to(DTYPE)
            b_qg = _rows_of(qg, rows, o_k, K, m_t[:, None] & (o_k < K)[None, :], DTYPE)
            b_o += _tlib.dot(b_qg, b_h, PREC)
        tl.store(o + rows * V + o_v[None, :], (b_o * scale).to(o.dtype.element_ty), mask=m_tv)


@triton.jit
def dplr_chunk_bwd_dh_kernel(
    qg, w, bg, Aqb, gk, do,  # from dplr_chunk_intra_kernel; do [B, T, H, V]; gk the log gate
    dht, dh, dh0, du,        # dh [N, H, NT, K, V]: the gradient of the state leaving each chunk; du [B, T, H, V]
    scale, T, cu_seqlens, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, USE_FINAL_STATE_GRADIENT: tl.constexpr, STORE_INITIAL_STATE_GRADIENT: tl.constexpr,
    DTYPE: tl.constexpr, PREC: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """One program per (V tile, sequence x head) walks the chunks in reverse: with dS the gradient of the state
    leaving the chunk, the corrections' reads get dU = A_qb^T do + bg dS, and the state entering it
    dS_0 = qg^T do + e^G_C ⊙ dS + w^T dU."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)
    bos, T = _tlib.sequence_bounds(cu_seqlens, i_b, T, IS_VARLEN)
    o_c = tl.arange(0, BT)
    o_k, o_v = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_kv = (o_k < K)[:, None] & (o_v < V)[None, :]
    p_kv = o_k[:, None] * V + o_v[None, :]
    b_dh = tl.zeros([BK, BV], dtype=DTYPE)
    if USE_FINAL_STATE_GRADIENT:
        b_dh += tl.load(dht + i_bh * K * V + p_kv, mask=m_kv, other=0.0).to(DTYPE)
    NTs = tl.cdiv(T, BT)
    for i_r in range(0, NTs):
        i_t = NTs - 1 - i_r
        tl.store(dh + (i_bh * NT + i_t) * K * V + p_kv, b_dh.to(dh.dtype.element_ty), mask=m_kv)
        m_t, rows = _chunk_rows(bos, i_t, T, i_h, H, BT)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        b_qg = _rows_of(qg, rows, o_k, K, m_tk, DTYPE)
        b_w = _rows_of(w, rows, o_k, K, m_tk, DTYPE)
        b_bg = _rows_of(bg, rows, o_k, K, m_tk, DTYPE)
        b_Gl = tl.sum(_rows_of(gk, rows, o_k, K, m_tk, DTYPE), axis=0)
        b_Aqb = _rows_of(Aqb, rows, o_c, BT, m_t[:, None], DTYPE)
        b_do = _rows_of(do, rows, o_v, V, m_tv, DTYPE) * scale
        b_du = _tlib.dot(tl.trans(b_Aqb), b_do, PREC) + _tlib.dot(b_bg, b_dh, PREC)
        tl.store(du + rows * V + o_v[None, :], b_du.to(du.dtype.element_ty), mask=m_tv)
        b_dh = _tlib.dot(tl.trans(b_qg), b_do, PREC) + tl.exp(b_Gl)[:, None] * b_dh \
            + _tlib.dot(tl.trans(b_w), b_du, PREC)
    if STORE_INITIAL_STATE_GRADIENT:
        tl.store(dh0 + i_bh * K * V + p_kv, b_dh.to(dh0.dtype.element_ty), mask=m_kv)


@triton.jit
def dplr_chunk_bwd_dv_kernel(
    kg, M, Aqk, v, u, h, dh, do, du,                 # the forward's (u: the corrections' reads), dh, du: bwd_dh's
    dv, dqg, dw, dbg, dkg, dAqb, dAqk, dM, dgc,      # dv [B, T, H, V]; the rest: this V tile's part (summed after)
    part_numel, part_c_numel, part_g_numel, scale, T, cu_seqlens, H: tl.constexpr, K: tl.constexpr,
    V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DTYPE: tl.constexpr, PREC: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    """One program per (V tile, chunk, sequence x head): with S_0 the state entering the chunk and dS the gradient
    of the one leaving it, dv = A_qk^T do + kg dS + M^T dU, and this V tile's part of the gradients of the intra
    stage's results: qg (do S_0^T), w (dU S_0^T), bg (U dS^T), kg (v dS^T), A_qb (do U^T), A_qk (do v^T),
    M (dU v^T), and of e^G_C (sum over the value channels of S_0 ⊙ dS). The key channels in blocks of BK."""
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)
    bos, T = _tlib.sequence_bounds(cu_seqlens, i_b, T, IS_VARLEN)
    if i_t * BT < T:
        o_c = tl.arange(0, BT)
        o_v = i_v * BV + tl.arange(0, BV)
        m_t, rows = _chunk_rows(bos, i_t, T, i_h, H, BT)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        b_M = _rows_of(M, rows, o_c, BT, m_t[:, None], DTYPE)
        b_Aqk = _rows_of(Aqk, rows, o_c, BT, m_t[:, None], DTYPE)
        b_v = _rows_of(v, rows, o_v, V, m_tv, DTYPE)
        b_u = _rows_of(u, rows, o_v, V, m_tv, DTYPE)
        b_do = _rows_of(do, rows, o_v, V, m_tv, DTYPE) * scale
        b_du = _rows_of(du, rows, o_v, V, m_tv, DTYPE)
        p_c = i_v.to(tl.int64) * part_c_numel + rows * BT + o_c[None, :]
        tl.store(dAqb + p_c, _tlib.dot(b_do, tl.trans(b_u), PREC), mask=m_t[:, None])
        tl.store(dAqk + p_c, _tlib.dot(b_do, tl.trans(b_v), PREC), mask=m_t[:, None])
        tl.store(dM + p_c, _tlib.dot(b_du, tl.trans(b_v), PREC), mask=m_t[:, None])
        b_dv = _tlib.dot(tl.trans(b_Aqk), b_do, PREC) + _tlib.dot(tl.trans(b_M), b_du, PREC)
        part = i_v.to(tl.int64) * part_numel
        for i_k in range(0, tl.cdiv(K, BK)):
            o_k = i_k * BK + tl.arange(0, BK)
            m_tk = m_t[:, None] & (o_k < K)[None, :]
            m_kv = (o_k < K)[:, None] & (o_v < V)[None, :]
            p_kv = (i_bh * NT + i_t) * K * V + o_k[:, None] * V + o_v[None, :]
            b_h = tl.load(h + p_kv, mask=m_kv, other=0.0).to(DTYPE)
            b_dh = tl.load(dh + p_kv, mask=m_kv, other=0.0).to(DTYPE)
            b_kg = _rows_of(kg, rows, o_k, K, m_tk, DTYPE)
            b_dv += _tlib.dot(b_kg, b_dh, PREC)
            p_k = part + rows * K + o_k[None, :]
            tl.store(dqg + p_k, _tlib.dot(b_do, tl.trans(b_h), PREC), mask=m_tk)
            tl.store(dw + p_k, _tlib.dot(b_du, tl.trans(b_h), PREC), mask=m_tk)
            tl.store(dbg + p_k, _tlib.dot(b_u, tl.trans(b_dh), PREC), mask=m_tk)
            tl.store(dkg + p_k, _tlib.dot(b_v, tl.trans(b_dh), PREC), mask=m_tk)
            tl.store(dgc + i_v.to(tl.int64) * part_g_numel + (i_bh * NT + i_t) * K + o_k,
                     tl.sum(b_h * b_dh, axis=1), mask=o_k < K)
        tl.store(dv + rows * V + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_tv)


@triton.jit
def dplr_chunk_bwd_intra_kernel(
    q, a, b, k, gk,                         # [B, T, H, K]
    dqg, dw, dbg, dkg, dAqb, dAqk, dM, dgc,  # the gradients of dplr_chunk_intra_kernel's results (dgc: of e^G_C / e^G_C)
    dq, da, db, dk, dg,                     # [B, T, H, K]
    T, cu_seqlens, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, DTYPE: tl.constexpr,
    PREC: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """One program per (chunk, sequence x head): back through dplr_chunk_intra_kernel to the inputs, the key
    channels in blocks of BK, twice: the scores L_ab, L_ak and the inverse's gradient (dT = dw (a ⊙ e^G⁻)^T +
    dM L_ak^T, dL_ab = T^T dT T^T, dL_ak = T^T dM), then every block's gradients (through the scores: dx_t =
    sum_s dA_ts y_s e^(G_t - G_s), dG_t += x_t ⊙ dx_t, dG_s -= y_s ⊙ dy_s; then a reverse cumulative sum over
    the chunk to the log gate)."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)
    bos, T = _tlib.sequence_bounds(cu_seqlens, i_b, T, IS_VARLEN)
    if i_t * BT < T:
        o_c = tl.arange(0, BT)
        causal = o_c[:, None] >= o_c[None, :]
        strict = o_c[:, None] > o_c[None, :]
        p_c = ((bos + i_t * BT + o_c[:, None]) * H + i_h) * BT + o_c[None, :]
        m_c = (i_t * BT + o_c < T)[:, None] & (o_c < BT)[None, :]
        dA_qb = tl.where(causal, tl.load(dAqb + p_c, mask=m_c, other=0.0).to(DTYPE), 0.0)
        dA_qk = tl.where(causal, tl.load(dAqk + p_c, mask=m_c, other=0.0).to(DTYPE), 0.0)
        b_dM = tl.load(dM + p_c, mask=m_c, other=0.0).to(DTYPE)
        L_ab = tl.zeros([BT, BT], dtype=DTYPE)
        L_ak = tl.zeros([BT, BT], dtype=DTYPE)
        b_dT = tl.zeros([BT, BT], dtype=DTYPE)
        for i_k in range(0, tl.cdiv(K, BK)):
            b_q, b_a, b_b, b_k, b_G, b_Gx, b_Gl, o_c, m_t, p_k, m_tk = _chunk_keys(q, a, b, k, gk, bos, i_t, T,
                                                                                  i_h, i_k, H, K, BT, BK, DTYPE)
            L_ab += _scores(b_a, b_b, b_Gx, b_G, strict)
            L_ak += _scores(b_a, b_k, b_Gx, b_G, strict)
            b_dw = tl.load(dw + p_k, mask=m_tk, other=0.0).to(DTYPE)
            b_dT += _tlib.dot(b_dw, tl.trans(b_a * tl.exp(b_Gx)), PREC)
        b_Tinv = unit_lower_inverse(-L_ab, o_c, BT, DTYPE, PREC)
        b_dT += _tlib.dot(b_dM, tl.trans(L_ak), PREC)
        dL_ab = tl.where(strict, _tlib.dot_fp32(tl.trans(b_Tinv), _tlib.dot_fp32(b_dT, tl.trans(b_Tinv), PREC),
                                                PREC), 0.0)
        dL_ak = tl.where(strict, _tlib.dot_fp32(tl.trans(b_Tinv), b_dM, PREC), 0.0)
        for i_k in range(0, tl.cdiv(K, BK)):
            b_q, b_a, b_b, b_k, b_G, b_Gx, b_Gl, o_c, m_t, p_k, m_tk = _chunk_keys(q, a, b, k, gk, bos, i_t, T,
                                                                                  i_h, i_k, H, K, BT, BK, DTYPE)
            b_dq, b_db = _scores_grad(dA_qb, b_q, b_b, b_G, b_G, causal)
            dq2, b_dk = _scores_grad(dA_qk, b_q, b_k, b_G, b_G, causal)
            b_dq += dq2
            b_da, db2 = _scores_grad(dL_ab, b_a, b_b, b_Gx, b_G, strict)
            da2, dk2 = _scores_grad(dL_ak, b_a, b_k, b_Gx, b_G, strict)
            b_db += db2
            b_da += da2
            b_dk += dk2
            b_dG = b_q * b_dq - b_b * b_db - b_k * b_dk          # the scores' own gate terms (x-side G for q)
            b_dGx = b_a * b_da
            # qg = q e^G, w = T (a e^G⁻), bg = b e^(G_C - G), kg = k e^(G_C - G)
            e_q, e_x = tl.exp(b_G), tl.exp(b_Gx)
            b_dqg = tl.load(dqg + p_k, mask=m_tk, other=0.0).to(DTYPE)
            b_dq += b_dqg * e_q
            b_dG += b_dqg * b_q * e_q
            b_dad = _tlib.dot_fp32(tl.trans(b_Tinv), tl.load(dw + p_k, mask=m_tk, other=0.0).to(DTYPE), PREC)
            b_da += b_dad * e_x
            b_dGx += b_dad * b_a * e_x
            rev = tl.where(m_t[:, None], tl.exp(b_Gl[None, :] - b_G), 0.0)
            b_dbg = tl.load(dbg + p_k, mask=m_tk, other=0.0).to(DTYPE)
            b_dkg = tl.load(dkg + p_k, mask=m_tk, other=0.0).to(DTYPE)
            b_db += b_dbg * rev
            b_dk += b_dkg * rev
            rest = b_dbg * b_b * rev + b_dkg * b_k * rev
            b_dG -= rest
            o_k = i_k * BK + tl.arange(0, BK)
            b_dgc = tl.load(dgc + (i_bh * NT + i_t) * K + o_k, mask=o_k < K, other=0.0).to(DTYPE)
            b_dGl = tl.sum(rest, axis=0) + tl.exp(b_Gl) * b_dgc
            # G = cumsum(gk), G⁻ = G - gk, G_C = sum(gk): back to gk by a reverse cumulative sum
            b_dG += b_dGx
            b_dg = tl.sum(b_dG, axis=0)[None, :] - tl.cumsum(b_dG, axis=0) + b_dG - b_dGx + b_dGl[None, :]
            tl.store(dq + p_k, b_dq.to(dq.dtype.element_ty), mask=m_tk)
            tl.store(da + p_k, b_da.to(da.dtype.element_ty), mask=m_tk)
            tl.store(db + p_k, b_db.to(db.dtype.element_ty), mask=m_tk)
            tl.store(dk + p_k, b_dk.to(dk.dtype.element_ty), mask=m_tk)
            tl.store(dg + p_k, b_dg.to(dg.dtype.element_ty), mask=m_tk)


def _config(K: int, V: int, T: int, device, *tensors, low=_ASK):
    """(dtype, BK, BV, kernel kwargs) of a launch: the chunk launch policy's (``triton_chunk._setup``: compute dtype,
    dot precision, stages), every key channel in one program, the value channels in tiles of up to DPLR_VALUE_TILE
    (powers of two, at least 16 for tl.dot), and on a GPU DPLR_WARPS warps."""
    dtype, _, _, _, _, _, common = _setup(DPLR_CHUNK, K, V, T, device, *tensors, low=low, whole_key=True)
    if common.get("num_warps", 1) > 1:      # on a GPU: the [16, 16, K] score products, not the state, size them
        common["num_warps"] = DPLR_WARPS
    return dtype, max(16, _rt.next_pow2(K)), min(DPLR_VALUE_TILE, max(16, _rt.next_pow2(V))), common


def chunk_dplr(q, a, b, k, v, g=None, gk=None, scale=1.0, initial_state=None, output_final_state=False,
               cu_seqlens=None, chunk_size=64):
    """``torch_forms.chunk_dplr`` as Triton kernels (see the module's docstring); the same arguments and results.
    The kernels chunk by 16 tokens whatever ``chunk_size``; K <= 256; real inputs only."""
    if any(t is not None and t.is_complex() for t in (q, a, b, k, v, g, gk, initial_state)):
        raise NotImplementedError("the Triton DPLR chunk kernels are real")
    K, V = q.shape[-1], v.shape[-1]
    if K > DPLR_MAX_DIM:
        raise NotImplementedError(f"the Triton DPLR state passes hold every key channel in one program: K <= "
                                  f"{DPLR_MAX_DIM}, got K = {K} (the torch backend's chunk form has no limit)")
    if scale is None:
        scale = K ** -0.5
    rows = _Rows(q.shape[0], q.shape[1], cu_seqlens)
    initial_state = _unless_zero(initial_state)
    log_gate = _dplr_gate(g, gk, a).contiguous()
    if _wants_grad(q, a, b, k, v, log_gate, initial_state):
        o, ht = _ChunkDplr.apply(q, a, b, k, v, log_gate, initial_state, float(scale), rows,
                                          output_final_state)
    else:
        o, ht, _ = _dplr_forward(q, a, b, k, v, log_gate, initial_state, scale, rows, output_final_state)
    return o, ht


def _dplr_forward(q, a, b, k, v, gk, initial_state, scale, rows: _Rows, store_final: bool):
    """(o, final state or None, saved for the backward: (q, a, b, k, v, gk, h, u) and the kernels' scale)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    dtype, BK, BV, common = _config(K, V, rows.T, q.device, q, a, b, k, v, gk, initial_state)
    kscale = scale
    if dtype == torch.float64 and scale != 1.0:      # the kernels take the scale as an fp32 scalar
        q, kscale = q * scale, 1.0
    q, a, b, k, v = (x.contiguous() for x in (q, a, b, k, v))
    N = rows.N
    NT = triton.cdiv(rows.T, DPLR_CHUNK)
    h = (torch.zeros if rows.varlen else torch.empty)(N, H, NT, K, V, dtype=dtype, device=q.device)
    h0 = initial_state.to(dtype).contiguous() if initial_state is not None else None
    ht = torch.empty(N, H, K, V, dtype=dtype, device=q.device) if store_final else None
    o = torch.empty(B, T, H, V, dtype=_op_readout_dtype() or dtype, device=q.device)
    BT, NV, cu, varlen = DPLR_CHUNK, triton.cdiv(V, BV), rows.kwargs()["cu_seqlens"], rows.varlen
    qg, w, bg, kg, M, Aqb, Aqk = _intra(q, a, b, k, gk, rows, BK, common)
    u = torch.empty(B, T, H, V, dtype=dtype, device=q.device)
    dplr_chunk_fwd_h_kernel[(NV, N * H)](w, bg, kg, M, v, gk, h, h0, ht, u, rows.T, cu, H=H, K=K, V=V, BT=BT, BK=BK,
                                         BV=BV, USE_INITIAL_STATE=h0 is not None, STORE_FINAL_STATE=store_final,
                                         IS_VARLEN=varlen, **common)
    dplr_chunk_fwd_o_kernel[(NV, NT, N * H)](qg, Aqb, Aqk, u, v, h, o, kscale, rows.T, cu, H=H, K=K, V=V, BT=BT,
                                             BK=min(BK, DPLR_DV_KEY_BLOCK), BV=BV, IS_VARLEN=varlen, **common)
    return o, ht, ((q, a, b, k, v, gk, h, u), kscale)


def _intra(q, a, b, k, gk, rows: _Rows, BK: int, common: dict) -> tuple:
    """dplr_chunk_intra_kernel's results (qg, w, bg, kg [B, T, H, K]; M, A_qb, A_qk [B, T, H, BT]), in the compute
    dtype of ``common``."""
    B, T, H, K = q.shape
    dtype = {tl.float32: torch.float32, tl.float64: torch.float64}[common["DTYPE"]]
    qg, w, bg, kg = (torch.empty(B, T, H, K, dtype=dtype, device=q.device) for _ in range(4))
    M, Aqb, Aqk = (torch.empty(B, T, H, DPLR_CHUNK, dtype=dtype, device=q.device) for _ in range(3))
    NT = triton.cdiv(rows.T, DPLR_CHUNK)
    dplr_chunk_intra_kernel[(NT, rows.N * H)](q, a, b, k, gk, qg, w, bg, kg, M, Aqb, Aqk, rows.T,
                                              rows.kwargs()["cu_seqlens"], H=H, K=K, BT=DPLR_CHUNK,
                                              BK=min(BK, DPLR_INTRA_KEY_BLOCK), IS_VARLEN=rows.varlen, **common)
    return qg, w, bg, kg, M, Aqb, Aqk


class _ChunkDplr(torch.autograd.Function):
    """chunk_dplr, forward and backward as Triton kernels; gradients of q, a, b, k, v, the key-axis log gate and
    the initial state."""

    @staticmethod
    def forward(ctx, q, a, b, k, v, gk, initial_state, scale, rows, store_final):
        o, ht, (saved, kscale) = _dplr_forward(q, a, b, k, v, gk, initial_state, scale, rows, store_final)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*saved)
        ctx.scale, ctx.kscale, ctx.rows = scale, kscale, rows
        ctx.low = _low_precision(q, a, b, k, v, gk, initial_state)   # the forward's dot precision, for the backward
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (q, a, b, k, v, gk, initial_state))
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, a, b, k, v, gk, h, u = ctx.saved_tensors
        rows = ctx.rows
        B, T, H, K = q.shape
        V = v.shape[-1]
        dtype, BK, BV, common = _config(K, V, rows.T, q.device, q, h, low=ctx.low)
        BT, N, NT, NV = DPLR_CHUNK, rows.N, triton.cdiv(rows.T, DPLR_CHUNK), triton.cdiv(V, BV)
        cu, varlen = rows.kwargs()["cu_seqlens"], rows.varlen
        do = _output_gradient(do, q, v).contiguous()
        dht = None if dht is None else dht.to(dtype).contiguous()
        want_dh0 = ctx.needs_input_grad[6]
        dh0 = torch.empty(N, H, K, V, dtype=dtype, device=q.device) if want_dh0 else None
        qg, w, bg, kg, M, Aqb, Aqk = _intra(q, a, b, k, gk, rows, BK, common)       # recomputed, every chunk at once
        dh = (torch.zeros if varlen else torch.empty)(N, H, NT, K, V, dtype=dtype, device=q.device)
        du = torch.empty(B, T, H, V, dtype=dtype, device=q.device)
        dplr_chunk_bwd_dh_kernel[(NV, N * H)](qg, w, bg, Aqb, gk, do, dht, dh, dh0, du, ctx.kscale, rows.T, cu, H=H,
                                              K=K, V=V, BT=BT, BK=BK, BV=BV, USE_FINAL_STATE_GRADIENT=dht is not None,
                                              STORE_INITIAL_STATE_GRADIENT=want_dh0, IS_VARLEN=varlen, **common)
        dv = torch.empty(v.shape, dtype=_grad_dtypes(dtype, ctx.dtypes[4])[0], device=v.device)
        key_parts = [torch.empty(NV, B, T, H, K, dtype=dtype, device=q.device) for _ in range(4)]
        chunk_parts = [torch.empty(NV, B, T, H, BT, dtype=dtype, device=q.device) for _ in range(3)]
        dgc = torch.zeros(NV, N, H, NT, K, dtype=dtype, device=q.device)
        dplr_chunk_bwd_dv_kernel[(NV, NT, N * H)](kg, M, Aqk, v, u, h, dh, do, du, dv, *key_parts, *chunk_parts,
                                                  dgc, q.numel(), B * T * H * BT, N * H * NT * K, ctx.kscale,
                                                  rows.T, cu, H=H, K=K, V=V, BT=BT, BK=min(BK, DPLR_DV_KEY_BLOCK),
                                                  BV=BV, IS_VARLEN=varlen, **common)
        summed = [x.sum(0) if NV > 1 else x[0] for x in key_parts + chunk_parts + [dgc]]
        dq, da, db, dk, dgk = (torch.empty(B, T, H, K, dtype=dtype, device=q.device) for _ in range(5))
        dplr_chunk_bwd_intra_kernel[(NT, N * H)](q, a, b, k, gk, *summed, dq, da, db, dk, dgk, rows.T, cu, H=H, K=K,
                                                 BT=BT, BK=min(BK, DPLR_BWD_INTRA_KEY_BLOCK), IS_VARLEN=varlen,
                                                 **common)
        grads = [dq, da, db, dk, dv, dgk]
        if ctx.kscale != ctx.scale:       # q was scaled before the kernels (fp64)
            grads[0] = grads[0] * ctx.scale
        out = [None if dt is None or gr is None else gr.to(dt) for gr, dt in zip(grads + [dh0], ctx.dtypes)]
        return (*out, None, None, None)
