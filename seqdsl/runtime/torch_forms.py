"""Form algorithms in plain PyTorch: recurrent, chunkwise and scan forms of linear recurrences.

Generated modules hold the spec-specific math (projections, gates) and call these functions, which
own the tiling, the way flash-linear-attention's shared stages do (chunk_local_cumsum ->
chunk_fwd_h -> chunk_fwd_o; WY / UT transform for delta rules).

Conventions (flash-linear-attention compatible):
    q, k            [B, T, H, K]
    v               [B, T, H, V]
    g, beta         [B, T, H]       per-head scalar gate (log space: decay = exp(g)), delta-rule beta
    gk              [B, T, H, K]    key-axis gate (log space)
    gv              [B, T, H, V]    value-axis gate (log space)
    state S         [B, H, K, V]    written k v^T, read S^T q
    initial_state   [N, H, K, V]    N = B, or the number of sequences with cu_seqlens
    cu_seqlens      LongTensor [N + 1], B == 1: packed sequences, each starts from its own state
Every function returns (o, final_state or None); o has the inputs' dtype, the state is fp32 for
fp32 / bf16 / fp16 inputs and fp64 for fp64 ones (complex64 / complex128 for complex inputs).
Arithmetic runs in fp32 for low-precision inputs and in fp64 for fp64 inputs. Everything is plain
torch ops, so autograd works through every function.

Complex inputs (LRU, S4D) are supported by the gated and scan functions: the state is written
k v^T and read S^T q without conjugation, and a complex log-gate's real part is the log-decay.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = [
    "recurrent_gated",
    "chunk_gated",
    "recurrent_delta",
    "chunk_delta",
    "recurrent_dplr",
    "chunk_dplr",
    "scan_diagonal",
    "scan_gated",
    "scan_dense",
]


# ----------------------------------------------------------------------------------------------
# dtypes


_WIDE = (torch.float64, torch.complex128)

# Elements of one [B, H, chunks, C, D] temporary per slab of the chunk forms (see
# _ChunkLayout.slabs): 2^18 fp32 = 1 MiB, about one core's L2.
_SLAB_ELEMENTS = 1 << 18


def _compute_dtype(*tensors: Optional[Tensor], state: Optional[Tensor] = None) -> torch.dtype:
    """fp32 (or complex64) unless a data input is 64-bit; complex if any input or the state is."""
    dts = [t.dtype for t in tensors if t is not None]
    is_complex = any(d.is_complex for d in dts) or (state is not None and state.dtype.is_complex)
    wide = any(d in _WIDE for d in dts)
    if is_complex:
        return torch.complex128 if wide else torch.complex64
    return torch.float64 if wide else torch.float32


def _output_dtype(compute: torch.dtype, *tensors: Optional[Tensor]) -> torch.dtype:
    """The promoted dtype of the data inputs (bf16 stays bf16), made complex if the math is."""
    out = tensors[0].dtype
    for t in tensors[1:]:
        if t is not None:
            out = torch.promote_types(out, t.dtype)
    if compute.is_complex and not out.is_complex:
        out = compute
    return out


def _default_scale(scale: Optional[float], K: int) -> float:
    return K ** -0.5 if scale is None else scale


# ----------------------------------------------------------------------------------------------
# varlen helpers


def _seq_bounds(cu_seqlens: Tensor) -> list[tuple[int, int]]:
    cu = cu_seqlens.tolist()
    return list(zip(cu[:-1], cu[1:]))


def _check_varlen(B: int, cu_seqlens: Optional[Tensor], initial_state: Optional[Tensor]) -> None:
    if cu_seqlens is None:
        return
    if B != 1:
        raise ValueError(f"cu_seqlens needs a batch of 1 packed sequence, got B={B}")
    N = cu_seqlens.numel() - 1
    if initial_state is not None and initial_state.shape[0] != N:
        raise ValueError(f"initial_state has {initial_state.shape[0]} states for {N} sequences")


def _per_sequence(run, cu_seqlens, initial_state, output_final_state, seq_inputs):
    """Runs `run(*inputs_of_one_sequence, h0)` per packed sequence and concatenates the results.

    seq_inputs: tensors [1, T, ...] (or None); run returns (o [1, L, ...], final [1, ...])."""
    outs, finals = [], []
    for i, (bos, eos) in enumerate(_seq_bounds(cu_seqlens)):
        h0 = None if initial_state is None else initial_state[i : i + 1]
        o, S = run(*[None if x is None else x[:, bos:eos] for x in seq_inputs], h0)
        outs.append(o)
        finals.append(S)
    final = torch.cat(finals, 0) if output_final_state else None
    return torch.cat(outs, 1), final


class _ChunkLayout:
    """Where each token sits in a [B, H, NC, C, D] chunked layout (zero padded), and the
    sequential pass over the chunks (start / advance / final_state).

    Dense batches pad T at the end. With cu_seqlens every sequence is padded to a whole number of
    chunks and the sequences are laid end to end, so no chunk straddles two sequences; the
    chunk loop restarts from a sequence's own initial state at its first chunk. Zero padding is
    inert: k = v = beta = 0 writes nothing and a log-gate of 0 decays nothing. The chunk forms
    process the chunks in slabs (see slabs), advancing the state slab after slab.
    """

    def __init__(self, B: int, T: int, H: int, chunk_size: int, cu_seqlens: Optional[Tensor], device):
        if chunk_size < 1 or chunk_size & (chunk_size - 1):
            raise ValueError(f"chunk_size must be a power of two, got {chunk_size}")
        self.B, self.T, self.H, self.C, self.device = B, T, H, chunk_size, device
        C = chunk_size
        if cu_seqlens is None:
            self.num_chunks = -(-T // C)
            self.slots = None
            self.start_of = {0: None} if self.num_chunks else {}   # chunk -> sequence (None: all)
            self.end_of = {self.num_chunks - 1: None} if self.num_chunks else {}
            self.num_seqs = None
        else:
            bounds = _seq_bounds(cu_seqlens)
            self.num_seqs = len(bounds)
            self.start_of, self.end_of, slots = {}, {}, []
            first = 0
            for i, (bos, eos) in enumerate(bounds):
                n = -(-(eos - bos) // C)
                if n:
                    self.start_of[first] = i
                    self.end_of[first + n - 1] = i
                    slots.append(torch.arange(eos - bos, device=device) + first * C)
                first += n
            self.num_chunks = first
            self.slots = torch.cat(slots) if slots else torch.zeros(0, dtype=torch.long, device=device)

    def to_chunks(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        """[B, T, H, *D] -> [B, H, NC, C, *D] in dtype, zero padded."""
        B, T, H, *D = x.shape
        x = x.movedim(1, 2).to(dtype)
        L = self.num_chunks * self.C
        if self.slots is None:
            x = F.pad(x, (0, 0) * len(D) + (0, L - T)) if L > T else x.contiguous()
        else:
            x = x.new_zeros(B, H, L, *D).index_copy(2, self.slots, x)
        return x.view(B, H, self.num_chunks, self.C, *D)

    def slicer(self, x: Optional[Tensor], dtype: torch.dtype) -> Callable[[int, int], Optional[Tensor]]:
        """(c0, c1) -> chunks c0..c1-1 of x [B, T, H, *D] as [B, H, c1 - c0, C, *D] in dtype.

        Dense batches are laid out slab by slab (no sequence-long copy); packed sequences are
        packed once."""
        if x is None:
            return lambda c0, c1: None
        if self.slots is not None:
            packed = self.to_chunks(x, dtype)
            return lambda c0, c1: packed[:, :, c0:c1]
        B, T, H, *D = x.shape

        def get(c0: int, c1: int) -> Tensor:
            t0, t1 = c0 * self.C, min(c1 * self.C, T)
            part = x[:, t0:t1].movedim(1, 2).to(dtype)
            pad = (c1 - c0) * self.C - (t1 - t0)
            part = F.pad(part, (0, 0) * len(D) + (0, pad)) if pad else part.contiguous()
            return part.view(B, H, c1 - c0, self.C, *D)

        return get

    def assemble(self, slab: Callable[[int, int], Tensor], width: int, shape, dtype, in_place: bool) -> Tensor:
        """Runs slab(c0, c1) -> [B, H, n, C, *D] over all slabs, in order, and returns the output
        [B, T, H, *D] (shape) in dtype. in_place (no autograd): dense slab outputs are copied
        straight into the output; otherwise they are concatenated at the end."""
        if self.num_chunks == 0:
            return torch.zeros(shape, dtype=dtype, device=self.device)
        if in_place and self.slots is None:
            out = torch.empty(shape, dtype=dtype, device=self.device)
            for c0, c1 in self.slabs(width):
                y = slab(c0, c1)
                t0, t1 = c0 * self.C, min(c1 * self.C, self.T)
                y = y.reshape(*y.shape[:2], -1, *y.shape[4:])[:, :, : t1 - t0]
                out[:, t0:t1].copy_(y.movedim(2, 1))
            return out
        return self.from_chunks([slab(c0, c1) for c0, c1 in self.slabs(width)], dtype)

    def slabs(self, width: int):
        """(c0, c1) ranges of consecutive chunks covering all chunks, each about _SLAB_ELEMENTS
        elements for a [B, H, c1 - c0, C, width] tensor. The chunk forms work slab by slab:
        temporaries stay cache-sized and the allocator reuses them instead of paging in fresh
        memory for every sequence-long intermediate."""
        n = max(1, _SLAB_ELEMENTS // (self.B * self.H * self.C * width))
        return [(c0, min(c0 + n, self.num_chunks)) for c0 in range(0, self.num_chunks, n)]

    def from_chunks(self, pieces: list[Tensor], dtype: torch.dtype) -> Tensor:
        """Slab outputs [B, H, n, C, *D], in chunk order -> [B, T, H, *D] in dtype (one copy)."""
        if self.slots is None:
            flat = [y.reshape(*y.shape[:2], -1, *y.shape[4:]) for y in pieces]    # [B, H, n C, *D]
            extra = self.num_chunks * self.C - self.T
            if extra:
                flat[-1] = flat[-1][:, :, : flat[-1].shape[2] - extra]
            y = torch.cat([x.movedim(2, 1) for x in flat], 1) if len(flat) > 1 else flat[0].movedim(2, 1)
        else:
            y = torch.cat(pieces, 2)
            y = y.reshape(*y.shape[:2], -1, *y.shape[4:]).index_select(2, self.slots).movedim(2, 1)
        return y.to(dtype, memory_format=torch.contiguous_format)

    def start(self, init: Callable[[Optional[int]], Tensor]) -> None:
        """Begins the sequential pass over the chunks; init(i) is sequence i's initial state."""
        self._init, self._S, self._finals = init, None, {}

    def advance(self, c0: int, c1: int, step: Callable[[int, Tensor], Tensor]) -> Tensor:
        """Runs S <- step(c - c0, S) over chunks c0..c1-1, (re)starting each sequence from its
        initial state at its first chunk. Returns the states entering these chunks, stacked
        along dim 2: [B, H, c1 - c0, ...]."""
        states = []
        for c in range(c0, c1):
            if c in self.start_of:
                self._S = self._init(self.start_of[c])
            states.append(self._S)
            self._S = step(c - c0, self._S)
            if c in self.end_of:
                self._finals[self.end_of[c]] = self._S
        return torch.stack(states, 2)

    def final_state(self) -> Tensor:
        """The state after each sequence's last chunk: [B, ...] dense, [N, ...] varlen."""
        if self.num_seqs is None:
            return self._finals[None] if None in self._finals else self._init(None)
        return torch.cat([self._finals[i] if i in self._finals else self._init(i)
                          for i in range(self.num_seqs)], 0)


def _initial_state_fn(initial_state, B, H, K, V, dtype, device, varlen):
    """init(i) -> the state a sequence starts from: [B, H, K, V] (dense) or [1, H, K, V] (varlen)."""
    h0 = None if initial_state is None else initial_state.to(dtype)

    def init(i):
        if h0 is None:
            return torch.zeros(1 if varlen else B, H, K, V, dtype=dtype, device=device)
        return h0 if i is None else h0[i : i + 1]

    return init


# ----------------------------------------------------------------------------------------------
# 1. recurrent form of gated linear attention (the readable baseline)


def recurrent_gated(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Optional[Tensor] = None,
    gk: Optional[Tensor] = None,
    gv: Optional[Tensor] = None,
    scale: Optional[float] = 1.0,
    initial_state: Optional[Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[Tensor] = None,
) -> tuple[Tensor, Optional[Tensor]]:
    """Step loop of S_t = exp(g_t) exp(gk_t)[:, None] exp(gv_t)[None, :] ⊙ S_{t-1} + k_t v_t^T,
    o_t = S_t^T (scale q_t).

    q, k [B, T, H, K]; v [B, T, H, V]; g [B, T, H]; gk [B, T, H, K]; gv [B, T, H, V] (all gates
    optional, in log space); initial_state [N, H, K, V]. Returns o [B, T, H, V] and the final state
    [N, H, K, V] (or None). scale=None means K ** -0.5.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    _check_varlen(B, cu_seqlens, initial_state)
    cd = _compute_dtype(q, k, v, g, gk, gv, state=initial_state)
    out_dtype = _output_dtype(cd, q, k, v)
    scale = _default_scale(scale, K)

    def run(q, k, v, g, gk, gv, h0):
        q, k, v = (x.to(cd) for x in (q, k, v))
        q = q * scale
        S = torch.zeros(q.shape[0], H, K, V, dtype=cd, device=q.device) if h0 is None else h0.to(cd)
        outs = []
        for t in range(q.shape[1]):
            if g is not None:
                S = S * torch.exp(g[:, t].to(cd))[..., None, None]
            if gk is not None:
                S = S * torch.exp(gk[:, t].to(cd))[..., :, None]
            if gv is not None:
                S = S * torch.exp(gv[:, t].to(cd))[..., None, :]
            S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
            outs.append((q[:, t, :, :, None] * S).sum(-2))          # S^T q
        o = torch.stack(outs, 1) if outs else v.new_zeros(q.shape[0], 0, H, V, dtype=cd)
        return o, S

    if cu_seqlens is None:
        o, S = run(q, k, v, g, gk, gv, initial_state)
    else:
        o, S = _per_sequence(run, cu_seqlens, initial_state, True, (q, k, v, g, gk, gv))
    return o.to(out_dtype), (S if output_final_state else None)


# ----------------------------------------------------------------------------------------------
# 2. chunkwise form of gated linear attention


def _lower_left_blocks(A: Tensor, n: int) -> Tensor:
    """View [..., n, P, P] of the lower-left quarter of each of the n diagonal 2P-blocks of
    A [..., C, C] (rows of the block's second half, columns of its first half)."""
    *lead, C, _ = A.shape
    P = C // (2 * n)
    blocks = A.view(*lead, n, 2, P, n, 2, P)[..., :, 1, :, :, 0, :]               # [..., n, P, n, P]
    return torch.diagonal(blocks, dim1=-4, dim2=-2).movedim(-1, -3)


def _place_blocks(A: Tensor, X: Tensor) -> None:
    """Writes X [..., n, P, P] into the lower-left quarter of each diagonal 2P-block of A [..., C, C].

    In place on a fresh buffer (autograd records it as CopySlices)."""
    _lower_left_blocks(A, X.shape[-3]).copy_(X)


def _halve(x: Tensor, n: int) -> Tensor:
    """[..., C, D] -> [..., n, 2, C / 2n, D]: the two halves of each of the n blocks."""
    *lead, C, D = x.shape
    return x.view(*lead, n, 2, C // (2 * n), D)


def _decay_matrix(decay: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """D_ts = prod_{s<u<=t} decay_u = exp(G_t - G_s) for s <= t, 0 above, by recursive halving.

    decay [..., C] per-step decay exp(g) of a scalar gate, C a power of two. Returns D [..., C, C],
    fwd = exp(G_t) [..., C] (the decay since the chunk start, t included) and rev = exp(G_C - G_t)
    [..., C] (the decay from t to the chunk end).

    Built from products of per-step decays, never from differences of cumulative sums: every
    factor is <= 1 for decaying gates (no overflow whatever the gate), and a product keeps full
    relative precision where G_t - G_s would lose the small difference of two large sums. Within a
    block of 2P positions the off-diagonal quarter is the outer product of the forward decay
    within the second half and the reverse decay within the first half.
    """
    *lead, C = decay.shape
    D = decay.new_zeros(*lead, C, C)
    D.diagonal(dim1=-2, dim2=-1).fill_(1)
    fwd = decay[..., None]                     # product within each P-block up to t (inclusive)
    rev = torch.ones_like(fwd)                 # product within each P-block after t
    P = 1
    while P < C:
        n = C // (2 * P)
        f, r = _halve(fwd, n), _halve(rev, n)                                   # [..., n, 2, P, 1]
        _place_blocks(D, f[..., 1, :, :] * r[..., 0, :, :].transpose(-1, -2))
        total = f[..., -1:, :]                                                 # [..., n, 2, 1, 1]
        one = torch.ones_like(total[..., :1, :, :])
        fwd = (f * torch.cat([one, total[..., 0:1, :, :]], -3)).reshape(*lead, C, 1)
        rev = (r * torch.cat([total[..., 1:2, :, :], one], -3)).reshape(*lead, C, 1)
        P *= 2
    return D, fwd[..., 0], rev[..., 0]


def _matmul_add(o: Tensor, a: Tensor, b: Tensor, scale: float = 1.0) -> Tensor:
    """scale * (o + a @ b) for [..., m, k] @ [..., k, n] with equal leading dims, as one GEMM
    that accumulates into o (no temporary for a @ b, no separate passes for + and *)."""
    *lead, m, n = o.shape
    k = a.shape[-1]
    o3, a3, b3 = o.reshape(-1, m, n), a.reshape(-1, m, k), b.reshape(-1, k, n)
    return torch.baddbmm(o3, a3, b3, beta=scale, alpha=scale).view(*lead, m, n)


def _needs_grad(*tensors: Optional[Tensor]) -> bool:
    """Whether autograd records ops on these tensors (else in-place shortcuts are safe)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _scale_half(x: Tensor, n: int, half: int, factor: Tensor, inplace: bool) -> Tensor:
    """x [..., C, D] with the first (half=0) or second (half=1) half of each of its n blocks
    multiplied by factor [..., n, 1, D]. In place when no autograd history needs x (inference):
    that halves the memory traffic and skips a fresh allocation."""
    xh = _halve(x, n)
    if inplace:
        xh[..., half, :, :].mul_(factor)
        return x
    ones = torch.ones_like(factor)
    return (xh * torch.stack([ones, factor] if half else [factor, ones], -3)).view(x.shape)


def _key_gated_attention(q: Tensor, k: Tensor, decay: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A_ts = sum_i q_t,i k_s,i exp(G_t,i - G_s,i) for s <= t (0 above), by recursive halving.

    q, k [..., C, K]; decay = exp(gk) [..., C, K] per-step decays, C a power of two. Returns
    A [..., C, C], q ⊙ exp(G_t), k ⊙ exp(G_C - G_t) (both [..., C, K]) and exp(G_C) [..., 1, K].

    Secondary chunking (GLA paper §4.2) taken all the way down. A block of 2P positions is
    [[A1, 0], [X, A2]]: A1, A2 are its halves (recursively) and X is the second half's queries
    against the first half's keys, which factors through the split point r:
    exp(G_t - G_s) = exp(G_t - G_r) exp(G_r - G_s), both products of decays <= 1, so
    X = (q ⊙ fwd) (k ⊙ rev)^T is one matmul that cannot overflow. The decayed q and k are
    carried from level to level (fwd grows across the first half, rev across the second), so
    each level costs one elementwise pass over half of q and of k and one batched matmul; the
    last level leaves exactly the inter-chunk factors. The size-1 diagonal blocks are q_t . k_t.
    """
    *lead, C, K = q.shape
    inplace = not _needs_grad(q, k, decay)
    A = q.new_zeros(*lead, C, C)
    A.diagonal(dim1=-2, dim2=-1).copy_((q * k).sum(-1))
    qf = q * decay                          # q ⊙ decay within its P-block up to t (inclusive)
    kr = k.clone() if inplace else k        # k ⊙ decay within its P-block after t
    total = decay               # decay over each whole P-block: [..., C / P, K]
    P = 1
    while P < C:
        n = C // (2 * P)
        qh, kh = _halve(qf, n), _halve(kr, n)                                  # [..., n, 2, P, K]
        _place_blocks(A, qh[..., 1, :, :] @ kh[..., 0, :, :].transpose(-1, -2))
        t = total.view(*lead, n, 2, 1, K)
        qf = _scale_half(qf, n, 1, t[..., 0, :, :], inplace)
        kr = _scale_half(kr, n, 0, t[..., 1, :, :], inplace)
        total = (t[..., 0, :, :] * t[..., 1, :, :]).view(*lead, n, K)
        P *= 2
    return A, qf, kr, total.view(*lead, 1, K)


def _value_gated_apply(A: Tensor, v: Tensor, decay: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """o_t = sum_{s<=t} A_ts exp(G_t - G_s) ⊙ v_s for a value-axis gate, by recursive halving.

    A [..., C, C] lower triangular; v [..., C, V]; decay = exp(gv) [..., C, V]. Same split-point
    factorisation as _key_gated_attention, on the value side. Returns o [..., C, V],
    exp(G_t), v ⊙ exp(G_C - G_t) (both [..., C, V]) and exp(G_C) [..., 1, V]."""
    *lead, C, V = v.shape
    o = torch.diagonal(A, dim1=-2, dim2=-1)[..., None] * v
    fwd, vr, total = decay, v, decay
    P = 1
    while P < C:
        n = C // (2 * P)
        f, vh = _halve(fwd, n), _halve(vr, n)
        contrib = (_lower_left_blocks(A, n) @ vh[..., 0, :, :]) * f[..., 1, :, :]
        o = o + torch.stack([torch.zeros_like(contrib), contrib], -3).view(*lead, C, V)
        t = total.view(*lead, n, 2, 1, V)
        one = torch.ones_like(t[..., :1, :, :])
        fwd = (f * torch.cat([one, t[..., 0:1, :, :]], -3)).view(*lead, C, V)
        vr = (vh * torch.cat([t[..., 1:2, :, :], one], -3)).view(*lead, C, V)
        total = (t[..., 0, :, :] * t[..., 1, :, :]).view(*lead, n, V)
        P *= 2
    return o, fwd, vr, total.view(*lead, 1, V)


def chunk_gated(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Optional[Tensor] = None,
    gk: Optional[Tensor] = None,
    gv: Optional[Tensor] = None,
    scale: Optional[float] = 1.0,
    initial_state: Optional[Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[Tensor] = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Optional[Tensor]]:
    """Chunkwise form of recurrent_gated (same arguments and results), any mix of g / gk / gv.

    Per chunk of C tokens, batched over all chunks of a slab: the causal intra-chunk attention A
    with its decays (the pairwise decay matrix exp(G_t - G_s) for a scalar gate, secondary
    chunking by recursive halving for key- and value-axis gates, both built from products of
    per-step decays so that no gate value can overflow), applied to V, and the chunk's state
    update. A loop over the chunks then passes the state (S <- decay ⊙ S + update, elementwise)
    and one batched GEMM reads it out. chunk_size must be a power of two; T need not be a
    multiple of it.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    _check_varlen(B, cu_seqlens, initial_state)
    cd = _compute_dtype(q, k, v, g, gk, gv, state=initial_state)
    out_dtype = _output_dtype(cd, q, k, v)
    scale = _default_scale(scale, K)
    lay = _ChunkLayout(B, T, H, chunk_size, cu_seqlens, q.device)

    # A scalar gate rides on the key-axis gate when both are given (log gates add).
    if gk is not None and g is not None:
        gk, g = gk + g[..., None], None
    in_place = not _needs_grad(q, k, v, g, gk, gv, initial_state)
    chunks = {n: lay.slicer(x, cd) for n, x in dict(q=q, k=k, v=v, gk=gk, gv=gv).items()}
    if g is not None:   # a scalar gate's decays are small next to q, k, v: all chunks at once
        D_all, fwd_all, rev_all = _decay_matrix(torch.exp(lay.to_chunks(g, cd)))
    lay.start(_initial_state_fn(initial_state, B, H, K, V, cd, q.device, cu_seqlens is not None))

    def slab(c0: int, c1: int) -> Tensor:
        """Output of chunks c0..c1-1 ([B, H, n, C, V]); advances the state past them."""
        part = lambda x: None if x is None else x[:, :, c0:c1]
        q_, k_, v_ = (chunks[n](c0, c1) for n in "qkv")
        # Intra-chunk causal attention A with its decays, plus the inter-chunk factors: queries
        # see the entering state through exp(G_t), keys write the leaving state through
        # exp(G_C - G_t), and the state itself decays by exp(G_C) (decay_k, decay_v).
        decay_k = decay_v = None
        if gk is not None:
            A, qd, kd, total = _key_gated_attention(q_, k_, torch.exp(chunks["gk"](c0, c1)))
            decay_k = total.transpose(-1, -2)                                # [B, H, n, K, 1]
        elif g is not None:
            D, fwd, rev = part(D_all), part(fwd_all), part(rev_all)
            A = (q_ @ k_.transpose(-1, -2)) * D
            qd, kd = q_ * fwd[..., None], k_ * rev[..., None]
            decay_k = fwd[..., -1:, None]                                    # [B, H, n, 1, 1]
        else:
            A = (q_ @ k_.transpose(-1, -2)).tril()
            qd, kd = q_, k_
        if gv is None:
            o, vd = A @ v_, v_
        else:
            o, fwd_v, vd, decay_v = _value_gated_apply(A, v_, torch.exp(chunks["gv"](c0, c1)))
        decay = decay_k if decay_v is None else decay_v if decay_k is None else decay_k * decay_v
        update = kd.transpose(-1, -2) @ vd                                   # [B, H, n, K, V]

        # Inter-chunk: pass the state along the chunks (elementwise), read it out in one GEMM.
        updates = update.unbind(2)                       # per-chunk views, sliced once
        if decay is None:
            states = lay.advance(c0, c1, lambda c, S: S + updates[c])
        else:
            decays = decay.unbind(2)
            states = lay.advance(c0, c1, lambda c, S: torch.addcmul(updates[c], decays[c], S))
        # o is linear in q, so `scale` is applied to o here, inside the last GEMM.
        if gv is None:
            return _matmul_add(o, qd, states, scale)
        return (o + (qd @ states) * fwd_v) * scale

    o = lay.assemble(slab, max(lay.C, K, V), (B, T, H, V), out_dtype, in_place)
    return o, (lay.final_state() if output_final_state else None)


# ----------------------------------------------------------------------------------------------
# 3. (gated) delta rule


def _unit_lower_inverse(L: Tensor) -> Tensor:
    """(I + tril(L, -1))^-1 for L [..., C, C], C a power of two (only the strictly lower
    triangle of L is read), by recursive doubling:
        inv([[I + L11, 0], [L21, I + L22]]) = [[T1, 0], [-T2 L21 T1, T2]],
    T1, T2 the inverses of the diagonal blocks. Every level is two batched matmuls over all
    blocks of that size (small-batch LAPACK triangular solves are several times slower on CPU).
    """
    *lead, C, _ = L.shape
    inplace = not _needs_grad(L)
    if inplace:     # fill the lower-left quarters of an identity in place, level by level
        Tinv = torch.eye(C, dtype=L.dtype, device=L.device).expand(*lead, C, C).clone()
    else:           # blocks of the current size, [..., C / P, P, P], assembled functionally
        Tinv = torch.ones(*lead, C, 1, 1, dtype=L.dtype, device=L.device)
    P = 1
    while P < C:
        n = C // (2 * P)
        L21 = _lower_left_blocks(L, n)                                          # [..., n, P, P]
        if inplace:
            diag = torch.diagonal(Tinv.view(*lead, 2 * n, P, 2 * n, P), dim1=-4, dim2=-2)
            diag = diag.movedim(-1, -3).view(*lead, n, 2, P, P)                 # [..., n, 2, P, P]
            X = -(diag[..., 1, :, :] @ (L21 @ diag[..., 0, :, :]))
            _place_blocks(Tinv, X)
        else:
            Tb = Tinv.view(*lead, n, 2, P, P)
            T1, T2 = Tb[..., 0, :, :], Tb[..., 1, :, :]
            X = -(T2 @ (L21 @ T1))
            top = torch.cat([T1, torch.zeros_like(X)], -1)
            Tinv = torch.cat([top, torch.cat([X, T2], -1)], -2)                 # [..., n, 2P, 2P]
        P *= 2
    return Tinv.view(*lead, C, C)


def recurrent_delta(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Optional[Tensor] = None,
    scale: Optional[float] = 1.0,
    initial_state: Optional[Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[Tensor] = None,
) -> tuple[Tensor, Optional[Tensor]]:
    """Step loop of the (gated) delta rule, fla's gated_delta_rule:
        S = exp(g_t) S;  S = S + beta_t k_t (v_t - S^T k_t)^T;  o_t = S^T (scale q_t).

    q, k [B, T, H, K]; v [B, T, H, V]; beta, g [B, T, H] (g in log space, optional);
    initial_state [N, H, K, V]. Returns o [B, T, H, V] and the final state (or None).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    _check_varlen(B, cu_seqlens, initial_state)
    cd = _compute_dtype(q, k, v, beta, g)
    out_dtype = _output_dtype(cd, q, k, v)
    scale = _default_scale(scale, K)

    def run(q, k, v, beta, g, h0):
        q, k, v, beta = (x.to(cd) for x in (q, k, v, beta))
        q = q * scale
        S = torch.zeros(q.shape[0], H, K, V, dtype=cd, device=q.device) if h0 is None else h0.to(cd)
        outs = []
        for t in range(q.shape[1]):
            if g is not None:
                S = S * torch.exp(g[:, t].to(cd))[..., None, None]
            k_t = k[:, t]
            err = v[:, t] - (S * k_t[..., None]).sum(-2)                  # v - S^T k
            S = S + (beta[:, t, :, None] * k_t)[..., :, None] * err[..., None, :]
            outs.append((q[:, t, :, :, None] * S).sum(-2))
        o = torch.stack(outs, 1) if outs else v.new_zeros(q.shape[0], 0, H, V, dtype=cd)
        return o, S

    if cu_seqlens is None:
        o, S = run(q, k, v, beta, g, initial_state)
    else:
        o, S = _per_sequence(run, cu_seqlens, initial_state, True, (q, k, v, beta, g))
    return o.to(out_dtype), (S if output_final_state else None)


def chunk_delta(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Optional[Tensor] = None,
    scale: Optional[float] = 1.0,
    initial_state: Optional[Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[Tensor] = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Optional[Tensor]]:
    """Chunkwise (gated) delta rule via the WY / UT transform; same arguments as recurrent_delta.

    Per chunk, with D_ts = exp(G_t - G_s) (s <= t) and Γ_t = exp(G_t):
        T = (I + tril(diag(beta) K K^T ⊙ D, -1))^-1           (recursive doubling)
        W = T diag(beta Γ) K,   U = T diag(beta) V
    so that, from the state S entering the chunk, the chunk's corrected values are
        v_new = U - W S,   o = (Q K^T ⊙ D) v_new + (Q ⊙ Γ) S,
        S' = Γ_C S + (K ⊙ exp(G_C - G))^T v_new.
    Only v_new and S' run chunk by chunk; everything else is batched over the chunks of a slab.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    _check_varlen(B, cu_seqlens, initial_state)
    cd = _compute_dtype(q, k, v, beta, g, state=initial_state)
    out_dtype = _output_dtype(cd, q, k, v)
    scale = _default_scale(scale, K)
    lay = _ChunkLayout(B, T, H, chunk_size, cu_seqlens, q.device)
    C = chunk_size

    in_place = not _needs_grad(q, k, v, beta, g, initial_state)
    chunks = [lay.slicer(x, cd) for x in (q, k, v, beta)]
    if g is not None:   # the decays are small next to q, k, v: all chunks at once
        D_all, fwd_all, rev_all = _decay_matrix(torch.exp(lay.to_chunks(g, cd)))
    lay.start(_initial_state_fn(initial_state, B, H, K, V, cd, q.device, cu_seqlens is not None))
    BH = B * H

    def slab(c0: int, c1: int) -> Tensor:
        """Output of chunks c0..c1-1 ([B, H, n, C, V]); advances the state past them."""
        q_, k_, v_, beta_ = (get(c0, c1) for get in chunks)   # [B, H, n, C, D], beta [B, H, n, C]
        beta_ = beta_[..., None]
        kb = k_ * beta_
        if g is None:
            D = None
            qd, kbd, kd = q_, kb, k_
        else:
            D, fwd, rev = (x[:, :, c0:c1] for x in (D_all, fwd_all, rev_all))
            gamma = fwd[..., None]                            # exp(G_t) <= 1
            qd, kbd, kd = q_ * gamma, kb * gamma, k_ * rev[..., None]
            chunk_decay = gamma[..., -1:, :]                  # [B, H, n, 1, 1]

        KK = kb @ k_.transpose(-1, -2)
        if D is not None:
            KK = KK * D
        Tinv = _unit_lower_inverse(KK)                        # (I + tril(diag(beta) K K^T ⊙ D, -1))^-1
        W, U = Tinv @ kbd, Tinv @ (v_ * beta_)                # [B, H, n, C, K], [B, H, n, C, V]

        # The chunk loop works on [B * H, ...] matrices, sliced into per-chunk views once.
        n = c1 - c0
        Ws, Us = W.reshape(BH, n, C, K).unbind(1), U.reshape(BH, n, C, V).unbind(1)
        kd_ts = kd.reshape(BH, n, C, K).transpose(-1, -2).unbind(1)              # [B H, K, C]
        decays = None if D is None else chunk_decay.reshape(BH, n, 1, 1).unbind(1)
        v_new = []

        def step(c, S):                                      # S [B, H, K, V]
            S = S.reshape(BH, K, V)
            vn = torch.baddbmm(Us[c], Ws[c], S, alpha=-1)    # values minus what S predicts
            v_new.append(vn)
            S = S if decays is None else S * decays[c]
            return torch.baddbmm(S, kd_ts[c], vn).view(B, H, K, V)

        states = lay.advance(c0, c1, step)                    # [B, H, n, K, V]
        Aqk = q_ @ k_.transpose(-1, -2)
        Aqk = Aqk.tril() if D is None else Aqk * D
        # o is linear in q, so `scale` is applied to o here, inside the last GEMM.
        v_new = torch.stack(v_new, 1).view(B, H, n, C, V)
        return _matmul_add(Aqk @ v_new, qd, states, scale)

    o = lay.assemble(slab, max(C, K, V), (B, T, H, V), out_dtype, in_place)
    return o, (lay.final_state() if output_final_state else None)


# 3b. diagonal plus rank one (RWKV-7, the key-gated delta rule)


def _dplr_gate(g: Optional[Tensor], gk: Optional[Tensor], a: Tensor) -> Tensor:
    """The key-axis log gate [B, T, H, K] of a scalar g, a key gate gk, both (they add) or none (zeros)."""
    if gk is None:
        return torch.zeros_like(a) if g is None else g[..., None].expand_as(a)
    return gk if g is None else gk + g[..., None]


def recurrent_dplr(
    q: Tensor,
    a: Tensor,
    b: Tensor,
    k: Tensor,
    v: Tensor,
    g: Optional[Tensor] = None,
    gk: Optional[Tensor] = None,
    scale: Optional[float] = 1.0,
    initial_state: Optional[Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[Tensor] = None,
) -> tuple[Tensor, Optional[Tensor]]:
    """Step loop of the diagonal-plus-rank-1 recurrence (fla's dplr_delta_rule with its a, b):
        S_t = exp(gk_t) ⊙ S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T,   o_t = S_t^T (scale q_t).

    q, a, b, k [B, T, H, K]; v [B, T, H, V]; gk [B, T, H, K] and g [B, T, H] log gates (optional, they add);
    initial_state [N, H, K, V]. Returns o [B, T, H, V] and the final state (or None)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    _check_varlen(B, cu_seqlens, initial_state)
    cd = _compute_dtype(q, a, b, k, v, g, gk, state=initial_state)
    out_dtype = _output_dtype(cd, q, k, v)
    scale = _default_scale(scale, K)
    gk = _dplr_gate(g, gk, a)

    def run(q, a, b, k, v, gk, h0):
        q, a, b, k, v, gk = (x.to(cd) for x in (q, a, b, k, v, gk))
        S = torch.zeros(q.shape[0], H, K, V, dtype=cd, device=q.device) if h0 is None else h0.to(cd)
        outs = []
        for t in range(q.shape[1]):
            read = (a[:, t, :, :, None] * S).sum(-2)                           # a^T S_{t-1}: [B, H, V]
            S = torch.exp(gk[:, t])[..., None] * S + b[:, t, :, :, None] * read[..., None, :] \
                + k[:, t, :, :, None] * v[:, t, :, None, :]
            outs.append((q[:, t, :, :, None] * S).sum(-2) * scale)
        o = torch.stack(outs, 1) if outs else v.new_zeros(q.shape[0], 0, H, V, dtype=cd)
        return o, S

    if cu_seqlens is None:
        o, S = run(q, a, b, k, v, gk, initial_state)
    else:
        o, S = _per_sequence(run, cu_seqlens, initial_state, True, (q, a, b, k, v, gk))
    return o.to(out_dtype), (S if output_final_state else None)


def _shift_rows(x: Tensor, first: Tensor) -> Tensor:
    """x [..., C, D] moved one row down within its chunk, ``first`` [..., 1, D] in row 0."""
    return torch.cat([first, x[..., :-1, :]], -2)


def chunk_dplr(
    q: Tensor,
    a: Tensor,
    b: Tensor,
    k: Tensor,
    v: Tensor,
    g: Optional[Tensor] = None,
    gk: Optional[Tensor] = None,
    scale: Optional[float] = 1.0,
    initial_state: Optional[Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[Tensor] = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Optional[Tensor]]:
    """Chunkwise diagonal-plus-rank-1 recurrence; same arguments and results as recurrent_dplr.

    Within a chunk, with Γ_t = exp(G_t) the decay since the chunk start (t included) and S_0 the state entering
    it, every state is S_t = Γ_t (S_0 + sum_{s<=t} Γ_s^-1 (b_s u_s + k_s v_s^T)), where u_t = a_t^T S_{t-1} is
    what the correction reads. So the reads solve a unit lower triangular system,
        u_t = (a_t ⊙ Γ_{t-1})^T S_0 + sum_{s<t} [(a_t ⊙ Γ_{t-1}) . (b_s / Γ_s)] u_s + [(a_t ⊙ Γ_{t-1}) . (k_s / Γ_s)] v_s,
    i.e. U = W S_0 + U0 with T = (I - L_ab)^-1 (recursive doubling), W = T Ã, U0 = T L_ak V, and then
        o = (Q ⊙ Γ) S_0 + A_qb U + A_qk V,    S_C = Γ_C S_0 + (B ⊙ Γ_C / Γ)^T U + (K ⊙ Γ_C / Γ)^T V.
    The pairwise decays (Γ_t / Γ_s, and Γ_{t-1} / Γ_s for the strictly causal L) come from
    _key_gated_attention's recursive halving, products of per-step decays that cannot overflow: L is the
    causal score of the queries a_{t+1} (moved one row up) against the keys at t, moved back down. (Scoring
    the four pairs in one broadcast pass was slower on the CPU: 27 ms against 17-20 ms at T = 1024.)
    Only U and the state run chunk by chunk; everything else is batched over the chunks of a slab.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    _check_varlen(B, cu_seqlens, initial_state)
    cd = _compute_dtype(q, a, b, k, v, g, gk, state=initial_state)
    out_dtype = _output_dtype(cd, q, k, v)
    scale = _default_scale(scale, K)
    lay = _ChunkLayout(B, T, H, chunk_size, cu_seqlens, q.device)
    C = chunk_size
    gk = _dplr_gate(g, gk, a)
    in_place = not _needs_grad(q, a, b, k, v, gk, initial_state)
    chunks = {n: lay.slicer(x, cd) for n, x in dict(q=q, a=a, b=b, k=k, v=v, gk=gk).items()}
    lay.start(_initial_state_fn(initial_state, B, H, K, V, cd, q.device, cu_seqlens is not None))
    BH = B * H

    def slab(c0: int, c1: int) -> Tensor:
        """Output of chunks c0..c1-1 ([B, H, n, C, V]); advances the state past them."""
        q_, a_, b_, k_, v_ = (chunks[x](c0, c1) for x in "qabkv")          # [B, H, n, C, K or V]
        decay = torch.exp(chunks["gk"](c0, c1))
        a_next = torch.cat([a_[..., 1:, :], torch.zeros_like(a_[..., :1, :])], -2)     # a_{t+1} in row t
        L_ab, a_dec, b_rev, total = _key_gated_attention(a_next, b_, decay)
        L_ak, _, k_rev, _ = _key_gated_attention(a_next, k_, decay)
        A_qb, q_dec, _, _ = _key_gated_attention(q_, b_, decay)
        A_qk, _, _, _ = _key_gated_attention(q_, k_, decay)
        zero_row = torch.zeros_like(L_ab[..., :1, :])
        L_ab, L_ak = _shift_rows(L_ab, zero_row), _shift_rows(L_ak, zero_row)   # strictly causal: s < t
        a_dec = _shift_rows(a_dec, a_[..., :1, :])                              # a_t ⊙ Γ_{t-1}
        Tinv = _unit_lower_inverse(-L_ab)
        W, U0 = Tinv @ a_dec, Tinv @ (L_ak @ v_)                                # [.., C, K], [.., C, V]
        written = k_rev.transpose(-1, -2) @ v_                                  # [B, H, n, K, V]

        n = c1 - c0
        Ws, U0s = W.reshape(BH, n, C, K).unbind(1), U0.reshape(BH, n, C, V).unbind(1)
        b_ts = b_rev.reshape(BH, n, C, K).transpose(-1, -2).unbind(1)          # [B H, K, C]
        writes = written.reshape(BH, n, K, V).unbind(1)
        decays = total.transpose(-1, -2).reshape(BH, n, K, 1).unbind(1)         # Γ_C: [B H, K, 1]
        reads = []

        def step(c, S):                                      # S [B, H, K, V]
            S = S.reshape(BH, K, V)
            u = torch.baddbmm(U0s[c], Ws[c], S)              # the corrections' reads u_t = a_t^T S_{t-1}
            reads.append(u)
            return torch.baddbmm(torch.addcmul(writes[c], decays[c], S), b_ts[c], u).view(B, H, K, V)

        states = lay.advance(c0, c1, step)                    # [B, H, n, K, V]
        U = torch.stack(reads, 1).view(B, H, n, C, V)
        return _matmul_add(A_qb @ U + A_qk @ v_, q_dec, states, scale)

    o = lay.assemble(slab, max(C, K, V), (B, T, H, V), out_dtype, in_place)
    return o, (lay.final_state() if output_final_state else None)


# ----------------------------------------------------------------------------------------------
# 4-5. scans: h_t = A_t(h_{t-1}) + b_t in O(log T) depth


def _linear_scan(a: Tensor, b: Tensor, compose, apply) -> Tensor:
    """All h_t of h_t = apply(a_t, h_{t-1}) + b_t, h_{-1} = 0, along dim 1 of b (odd-even scan).

    a: [*, T or 1, ...] (T-size 1: time-invariant), b: [*, T, ...]. compose(a2, a1) is the map
    "a1 then a2". Pairs (2i, 2i+1) are combined into one step, the half-length problem is
    solved recursively (giving the odd positions) and the even positions are filled in from
    their odd predecessors: O(T) work, 2 log2(T) sequential levels (Blelloch style)."""
    T = b.shape[1]
    if T == 1:
        return b
    invariant = a.shape[1] == 1
    a_even = a if invariant else a[:, 0::2]
    a_odd = a if invariant else a[:, 1::2]
    b_even, b_odd = b[:, 0::2], b[:, 1::2]
    n_odd, n_even = b_odd.shape[1], b_even.shape[1]
    a_head = a_even if invariant else a_even[:, :n_odd]
    # step 2i then 2i+1: h_{2i+1} = a_{2i+1} (a_{2i} h_{2i-1} + b_{2i}) + b_{2i+1}
    h_odd = _linear_scan(compose(a_odd, a_head), apply(a_odd, b_even[:, :n_odd]) + b_odd, compose, apply)
    # h_0 = b_0;  h_{2i} = a_{2i} h_{2i-1} + b_{2i}
    a_tail = a_even if invariant else a_even[:, 1:]
    h_even = torch.cat([b_even[:, :1], apply(a_tail, h_odd[:, : n_even - 1]) + b_even[:, 1:]], 1)
    h = torch.stack([h_even[:, :n_odd], h_odd], 2).flatten(1, 2)
    return torch.cat([h, h_even[:, n_odd:]], 1) if n_even > n_odd else h


def _mul(a, b):
    return a * b


def _matvec(A, x):
    return (A @ x[..., None])[..., 0]


def _scan_with_state(a, b, initial_state, cu_seqlens, compose, apply, state_shape):
    """Shared driver of scan_diagonal / scan_dense, in the compute dtype of a and b.

    The initial state is folded into the first step (b_0 += a_0 h0); with cu_seqlens, a is zeroed
    at every sequence start, which cuts the recurrence there, and that sequence's h0 is folded in.
    Returns all h [B, T, ...] and the final states [B or N, ...]."""
    B, T = b.shape[:2]
    if cu_seqlens is None:
        if initial_state is not None and T > 0:
            a0 = a[:, :1]
            b = torch.cat([b[:, :1] + apply(a0, initial_state.to(b.dtype)[:, None]), b[:, 1:]], 1)
    else:
        bounds = _seq_bounds(cu_seqlens)
        starts = [bos for bos, eos in bounds if eos > bos]
        if T > 0:
            is_start = torch.zeros(T, dtype=torch.bool, device=b.device)
            is_start[starts] = True
            is_start = is_start.view(1, T, *([1] * (a.dim() - 2)))
            a_full = a.expand(a.shape[0], T, *a.shape[2:])
            if initial_state is not None:
                h0 = initial_state.to(b.dtype)[[i for i, (bos, eos) in enumerate(bounds) if eos > bos]]
                idx = torch.tensor(starts, device=b.device)
                b = b.index_add(1, idx, apply(a_full[:, idx], h0[None]))
            a = torch.where(is_start, 0, a_full)
    h = _linear_scan(a, b, compose, apply) if T > 0 else b

    # final states
    def h0_of(i):
        if initial_state is not None:
            return initial_state.to(b.dtype)[i]
        return torch.zeros(state_shape, dtype=b.dtype, device=b.device)

    if cu_seqlens is None:
        if T > 0:
            final = h[:, -1]
        elif initial_state is not None:
            final = initial_state.to(b.dtype)
        else:
            final = b.new_zeros(B, *state_shape)
    else:
        final = torch.stack([h[0, eos - 1] if eos > bos else h0_of(i) for i, (bos, eos) in enumerate(bounds)])
    return h, final


def scan_diagonal(
    b: Tensor,
    a_log: Optional[Tensor] = None,
    a: Optional[Tensor] = None,
    initial_state: Optional[Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[Tensor] = None,
) -> tuple[Tensor, Optional[Tensor]]:
    """h_t = a_t ⊙ h_{t-1} + b_t along dim 1, by a log-depth associative scan.

    b [B, T, *S]; exactly one of a (decay) or a_log (log-decay, a = exp(a_log)), with b's number
    of dims and broadcastable to it (size 1 anywhere, including T for a time-invariant decay),
    e.g. [B, T, H, 1, 1] scalar gates on matrix states. Real or complex. initial_state
    [B or N, *S]. Returns all states h [B, T, *S] (in the inputs' dtype) and the final state
    [B or N, *S] in the compute dtype (or None).
    """
    if (a is None) == (a_log is None):
        raise ValueError("scan_diagonal needs exactly one of a or a_log")
    gate = a if a is not None else a_log
    if gate.dim() != b.dim():
        raise ValueError(f"a must have b's {b.dim()} dims (broadcastable), got {tuple(gate.shape)}")
    _check_varlen(b.shape[0], cu_seqlens, initial_state)
    cd = _compute_dtype(b, gate, state=initial_state)
    out_dtype = _output_dtype(cd, b, gate)
    a = torch.exp(a_log.to(cd)) if a is None else a.to(cd)
    h, final = _scan_with_state(a, b.to(cd), initial_state, cu_seqlens, _mul, _mul, b.shape[2:])
    return h.to(out_dtype), (final if output_final_state else None)


def scan_gated(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Optional[Tensor] = None,
    gk: Optional[Tensor] = None,
    gv: Optional[Tensor] = None,
    scale: Optional[float] = 1.0,
    initial_state: Optional[Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[Tensor] = None,
) -> tuple[Tensor, Optional[Tensor]]:
    """Scan form of recurrent_gated (same arguments and results): materialises every k_t v_t^T
    ([B, T, H, K, V], memory heavy: for moderate T), runs scan_diagonal and reads S_t^T q_t."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    _check_varlen(B, cu_seqlens, initial_state)
    cd = _compute_dtype(q, k, v, g, gk, gv, state=initial_state)
    out_dtype = _output_dtype(cd, q, k, v)
    scale = _default_scale(scale, K)
    q, k, v = (x.to(cd) for x in (q, k, v))
    b = k[..., :, None] * v[..., None, :]                            # [B, T, H, K, V]
    a_log = None
    for gate, shape in ((g, (B, T, H, 1, 1)), (gk, (B, T, H, K, 1)), (gv, (B, T, H, 1, V))):
        if gate is not None:
            gate = gate.to(cd).reshape(shape)
            a_log = gate if a_log is None else a_log + gate
    a = torch.ones(1, 1, 1, 1, 1, dtype=cd, device=q.device) if a_log is None else torch.exp(a_log)
    S, final = _scan_with_state(a, b, initial_state, cu_seqlens, _mul, _mul, (H, K, V))
    o = torch.einsum("bthk,bthkv->bthv", q * scale, S)
    return o.to(out_dtype), (final if output_final_state else None)


def scan_dense(
    A: Tensor,
    b: Tensor,
    initial_state: Optional[Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[Tensor] = None,
) -> tuple[Tensor, Optional[Tensor]]:
    """h_t = A_t h_{t-1} + b_t along dim 1 with dense transition matrices, log-depth scan.

    A [B or 1, T or 1, ..., n, n] (T-size 1: time-invariant, e.g. a discretised S4 / linear RNN),
    b [B, T, ..., n], initial_state [B or N, ..., n]. Pairs combine as (A1, b1), (A2, b2) ->
    (A2 A1, A2 b1 + b2). Returns all h [B, T, ..., n] and the final state (or None).
    """
    if A.dim() != b.dim() + 1 or A.shape[-1] != A.shape[-2] or A.shape[-1] != b.shape[-1]:
        raise ValueError(f"A {tuple(A.shape)} must be [..., n, n] over b {tuple(b.shape)}")
    _check_varlen(b.shape[0], cu_seqlens, initial_state)
    cd = _compute_dtype(A, b, state=initial_state)
    out_dtype = _output_dtype(cd, b, A)
    h, final = _scan_with_state(A.to(cd), b.to(cd), initial_state, cu_seqlens, torch.matmul, _matvec, b.shape[2:])
    return h.to(out_dtype), (final if output_final_state else None)


# ---------------------------------------------------------------------------------------------- conv
def causal_conv_fft(kernel: Tensor, u: Tensor) -> Tensor:
    """o[:, t] = sum_{s <= t} kernel[t - s] * u[:, s], by FFT along time.

    kernel [T, *C] (time-invariant filter per channel), u [B, T, *C'] with C and C' broadcastable;
    returns [B, T, *broadcast(C, C')]. Real inputs use rfft; complex ones fft. Zero padding to a
    power of two >= 2T keeps the circular convolution causal.
    """
    T = u.shape[1]
    n = 1 << max(1, (2 * T - 1).bit_length())
    if kernel.is_complex() or u.is_complex():
        kf = torch.fft.fft(kernel, n=n, dim=0)
        uf = torch.fft.fft(u, n=n, dim=1)
        return torch.fft.ifft(kf.unsqueeze(0) * uf, n=n, dim=1)[:, :T]
    kf = torch.fft.rfft(kernel, n=n, dim=0)
    uf = torch.fft.rfft(u, n=n, dim=1)
    return torch.fft.irfft(kf.unsqueeze(0) * uf, n=n, dim=1)[:, :T]


def conv_lti(
    a: Tensor,
    c: Tensor,
    u: Tensor,
    q: Optional[Tensor] = None,
    initial_state: Optional[Tensor] = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Optional[Tensor]]:
    """Convolution form of a time-invariant (LTI) linear recurrence.

        h_t = a ⊙ h_{t-1} + c u_t^T          a, c: [H, K] (no time axis), u: [B, T, H, V]
        o_t = h_t^T q  (q [H, K]) -> [B, T, H, V],   or the whole state h_t -> [B, T, H, K, V]

    unrolls to o_t = sum_{s<=t} (q ⊙ a^{t-s} ⊙ c) u_s + (q ⊙ a^{t+1}) · h_0: one impulse response
    per head (and key, for whole-state reads) from the powers a^0..a^T (a cumulative product, so
    negative and complex decays work), then a causal FFT convolution, O(T log T) per channel and
    independent of the state size. initial_state [B, H, K, V]. Real or complex. Returns
    (o, final state [B, H, K, V] or None).
    """
    B, T, H, V = u.shape
    K = a.shape[-1]
    cd = _compute_dtype(a, c, u, q, state=initial_state)
    a, c, u = a.to(cd), c.to(cd), u.to(cd)
    if q is not None:
        q = q.to(cd)
        if q.is_complex() and not cd.is_complex:
            cd = q.dtype
    powers = torch.cat([torch.ones(1, H, K, dtype=a.dtype, device=a.device),
                        torch.cumprod(a.expand(T, H, K), dim=0)])            # [T + 1, H, K]: a^0 .. a^T
    h0 = None if initial_state is None else initial_state.to(torch.promote_types(initial_state.dtype, a.dtype))
    if q is not None:
        kernel = (q * powers[:T] * c).sum(-1, keepdim=True)                  # [T, H, 1]
        o = causal_conv_fft(kernel, u)                                       # [B, T, H, V]
        if h0 is not None:
            o = o + torch.einsum("thk,bhkv->bthv", q * powers[1:], h0)
    else:
        kernel = (powers[:T] * c)[..., None]                                 # [T, H, K, 1]
        o = causal_conv_fft(kernel, u[:, :, :, None, :])                     # [B, T, H, K, V]
        if h0 is not None:
            o = o + powers[1:][None, ..., None] * h0[:, None]
    final = None
    if output_final_state:
        weights = powers[:T].flip(0) * c                                     # a^{T-1-s} c
        final = torch.einsum("shk,bshv->bhkv", weights.to(torch.promote_types(weights.dtype, u.dtype)), u)
        if h0 is not None:
            final = final + powers[T][None, ..., None] * h0
    return o, final
