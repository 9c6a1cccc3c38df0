"""Triton helpers that generated kernels call (``_tlib.<name>`` in codegen/ops.py's Triton templates).

``add`` is the combine function of ``tl.sum``: kernels sum with ``tl.reduce(x, axis, _tlib.add)``,
which compiles to exactly what ``tl.sum`` does, and which ``TRITON_INTERPRET=1`` evaluates with one
numpy call (``tl.sum`` is itself a jit function, and the interpreter re-patches the language on
every nested jit call: about 1.5 ms each, per step of a recurrence). For the same reason the
templates write elementwise functions inline; the helpers here are for rarer operations: functions
Triton's core lacks (``libdevice`` does not run under the interpreter) and reductions over the last
axis of a register block padded to a power of two (``m``: the mask of the real lanes, broadcastable
to ``x``; ``AXIS``: the reduced axis).
"""

import triton
import triton.language as tl


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


@triton.jit
def _min(a, b):
    return tl.minimum(a, b)


add = getattr(tl.standard, "_sum_combine", _add)                # tl.reduce(x, axis, add) == tl.sum
largest = getattr(tl.standard, "_elementwise_max", _max)       # tl.reduce(x, axis, largest) == tl.max
smallest = getattr(tl.standard, "_elementwise_min", _min)      # tl.reduce(x, axis, smallest) == tl.min


@triton.jit
def softmax(x, m, AXIS: tl.constexpr):
    top = tl.reduce(tl.where(m, x, -float("inf")), AXIS, largest, keep_dims=True)
    e = tl.where(m, tl.exp(x - top), 0.0)
    return e / tl.reduce(e, AXIS, add, keep_dims=True)


@triton.jit
def layernorm(x, m, AXIS: tl.constexpr, N, eps):
    mean = tl.reduce(tl.where(m, x, 0.0), AXIS, add, keep_dims=True) / N
    d = tl.where(m, x - mean, 0.0)
    var = tl.reduce(d * d, AXIS, add, keep_dims=True) / N
    return (x - mean) * tl.rsqrt(var + eps)


@triton.jit
def lastsum(x, m, AXIS: tl.constexpr):
    """Sum over the real lanes of the last axis, keeping it (the derivative rules of codegen/ops.py)."""
    return tl.reduce(tl.where(m, x, 0.0), AXIS, add, keep_dims=True)


@triton.jit
def lastvar(x, m, AXIS: tl.constexpr, N):
    """Biased variance over the real lanes of the last axis, keeping it (as ``layernorm`` computes it)."""
    mean = tl.reduce(tl.where(m, x, 0.0), AXIS, add, keep_dims=True) / N
    d = tl.where(m, x - mean, 0.0)
    return tl.reduce(d * d, AXIS, add, keep_dims=True) / N


@triton.jit
def csqrt_re(re, im):
    """Real part of the principal square root of re + i im."""
    r = tl.sqrt(re * re + im * im)
    return tl.sqrt(tl.maximum((r + re) * 0.5, 0.0))


@triton.jit
def csqrt_im(re, im):
    """Imaginary part of the principal square root of re + i im (the sign of im)."""
    r = tl.sqrt(re * re + im * im)
    b = tl.sqrt(tl.maximum((r - re) * 0.5, 0.0))
    return tl.where(im < 0, -b, b)


@triton.jit
def atan2(y, x):
    """The angle of x + i y in (-pi, pi] (0 at the origin).

    A coarse octant-reduced guess (error < 4e-3) refined by three Newton steps on
    f(a) = x sin(a) - y cos(a), whose root is the angle: full precision in fp32 and fp64.
    """
    ax = tl.abs(x)
    ay = tl.abs(y)
    big = tl.maximum(ax, ay)
    z = tl.minimum(ax, ay) / tl.where(big > 0, big, 1.0)
    a = z * (0.7853981633974483 + 0.273 * (1.0 - z))
    a = tl.where(ay > ax, 1.5707963267948966 - a, a)
    a = tl.where(x < 0, 3.141592653589793 - a, a)
    a = tl.where(y < 0, -a, a)
    for _ in tl.static_range(3):
        s = tl.sin(a)
        c = tl.cos(a)
        den = x * c + y * s
        a = a - (x * s - y * c) / tl.where(den == 0, 1.0, den)
    a = tl.where(a > 3.141592653589793, a - 6.283185307179586, a)
    a = tl.where(a <= -3.141592653589793, a + 6.283185307179586, a)
    return tl.where(big > 0, a, 0.0)


@triton.jit
def inv(a, o, m, N: tl.constexpr):
    """Inverse of the [N, N] matrix held in a padded [BLOCK, BLOCK] block ``a``.

    Gauss-Jordan elimination with partial pivoting; ``o`` are the lane offsets, ``m`` the real lanes.
    Padded lanes are treated as the identity, so the result's padded part is the identity too.
    """
    eye = o[:, None] == o[None, :]
    real = m[:, None] & m[None, :]
    a = tl.where(real, a, tl.where(eye, 1.0, 0.0))
    b = tl.where(eye, 1.0, 0.0) + a * 0.0
    for k in range(N):
        col = tl.reduce(tl.where(o[None, :] == k, a, 0.0), 1, add)                 # a[:, k]
        cand = tl.where(m & (o >= k), tl.abs(col), -1.0)
        p = tl.reduce(tl.where(cand == tl.reduce(cand, 0, largest), o, N), 0, smallest)   # pivot row
        row_k = tl.reduce(tl.where(o[:, None] == k, a, 0.0), 0, add)
        row_p = tl.reduce(tl.where(o[:, None] == p, a, 0.0), 0, add)
        brow_k = tl.reduce(tl.where(o[:, None] == k, b, 0.0), 0, add)
        brow_p = tl.reduce(tl.where(o[:, None] == p, b, 0.0), 0, add)
        a = tl.where(o[:, None] == k, row_p[None, :], tl.where(o[:, None] == p, row_k[None, :], a))
        b = tl.where(o[:, None] == k, brow_p[None, :], tl.where(o[:, None] == p, brow_k[None, :], b))
        piv = tl.reduce(tl.where(o == k, row_p, 0.0), 0, add)
        r = row_p / piv
        rb = brow_p / piv
        col = tl.reduce(tl.where(o[None, :] == k, a, 0.0), 1, add)
        col = tl.where(o == k, 0.0, col)
        a = a - col[:, None] * r[None, :]
        b = b - col[:, None] * rb[None, :]
        a = tl.where(o[:, None] == k, r[None, :], a)
        b = tl.where(o[:, None] == k, rb[None, :], b)
    return b


@triton.jit
def dot(a, b, PREC: tl.constexpr):
    """``tl.dot(a, b)`` accumulated in fp32 (fp64 blocks in fp64) at the chunk kernels' precision: "bf16" / "fp16"
    round both operands to that dtype first (what fla's kernels do with bf16 / fp16 inputs), else PREC is
    tl.dot's input_precision ("ieee", "tf32", "tf32x3")."""
    if PREC == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), out_dtype=tl.float32)
    elif PREC == "fp16":
        return tl.dot(a.to(tl.float16), b.to(tl.float16), out_dtype=tl.float32)
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _split(x, HALF: tl.constexpr):
    """(hi, lo) with x ~ hi + lo: hi x rounded to HALF (bf16 / fp16; "tf32": x's mantissa cut to tf32's 10 bits,
    kept in fp32), lo what is left, in the same form."""
    if HALF == "tf32":
        hi = (x.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
        return hi, x - hi
    else:
        hi = x.to(HALF)
        return hi, (x - hi.to(tl.float32)).to(HALF)


@triton.jit
def dot_fp32(a, b, PREC: tl.constexpr):
    """a @ b for fp32 blocks to about fp32 accuracy, on tensor cores where the chunk kernels' PREC uses them: with
    a = a_hi + a_lo, b = b_hi + b_lo split into halves of PREC's operand dtype (bf16, fp16, or tf32 for "tf32" /
    "tf32x3"), a_hi b_hi + a_hi b_lo + a_lo b_hi (the a_lo b_lo term is below the halves' rounding). Compiled for
    sm_90, Triton's own fp32 dots of [64, 64] blocks ("ieee": FMA, "tf32x3") spilled 0.8-8 KB per thread where
    these split dots spill nothing. PREC "ieee" (fp64 blocks, the interpreter's fp32 policy): tl.dot as is."""
    if PREC == "ieee":
        return tl.dot(a, b, input_precision="ieee")
    else:
        if PREC == "bf16":
            HALF: tl.constexpr = tl.bfloat16
        elif PREC == "fp16":
            HALF: tl.constexpr = tl.float16
        else:
            HALF: tl.constexpr = "tf32"
        a_hi, a_lo = _split(a, HALF)
        b_hi, b_lo = _split(b, HALF)
        if HALF == "tf32":
            return tl.dot(a_hi, b_lo, input_precision="tf32") + tl.dot(a_lo, b_hi, input_precision="tf32") + \
                tl.dot(a_hi, b_hi, input_precision="tf32")
        else:
            return tl.dot(a_hi, b_lo) + tl.dot(a_lo, b_hi) + tl.dot(a_hi, b_hi)


@triton.jit
def operand(x, DTYPE: tl.constexpr, PREC: tl.constexpr):
    """A loaded block that feeds tl.dot: in the dots' operand dtype where ``dot`` rounds its operands to bf16 /
    fp16 anyway (half the registers of an fp32 copy, and the rounding happens once, here), else in DTYPE."""
    if PREC == "bf16":
        return x.to(tl.bfloat16)
    elif PREC == "fp16":
        return x.to(tl.float16)
    else:
        return x.to(DTYPE)


@triton.jit
def mm(a, b, o, N: tl.constexpr):
    """``a @ b`` of register blocks a [M, BLOCK] and b [BLOCK, P] contracted over an axis of N real lanes at
    offsets ``o`` [BLOCK]: N rank-1 updates (column j of a times row j of b), so no [M, BLOCK, P] block is
    ever formed. Padded lanes (j >= N) take no part. Generated kernels use this for matrix @ matrix.

    Why not ``tl.reduce(a[:, :, None] * b[None, :, :], 1, add)``: the four cells that used it (hippo_legs,
    hippo_rnn, lssl, s4; the only 3-d blocks in any generated recurrent kernel) were 0.3-2 % off on an H200
    at one warp, and Triton's lowering of 3-d layouts is thinly tested (its maintainers say so in
    triton-lang/triton#4116, a wrong 3-d reduction at one warp). Unconfirmed as the cause:
    benchmarks/gpu_diag_inv.py runs both on the next GPU.
    """
    acc = tl.zeros([a.shape[0], b.shape[1]], dtype=a.dtype)
    for j in range(N):
        col = tl.reduce(tl.where(o[None, :] == j, a, 0.0), 1, add)       # a[:, j]  [M]
        row = tl.reduce(tl.where(o[:, None] == j, b, 0.0), 0, add)       # b[j, :]  [P]
        acc += col[:, None] * row[None, :]
    return acc


@triton.jit
def _expm_scaled(a, real):
    """(a / 2^s with its padded lanes 0, s): s the fewest squarings that bring a's 1-norm (its largest column sum) to
    at most 1/2, for ``expm`` and ``expm_frechet``."""
    a = tl.where(real, a, 0.0)
    norm = tl.reduce(tl.reduce(tl.abs(a), 0, add), 0, largest)
    s = tl.maximum(tl.ceil(tl.log2(tl.maximum(norm, 1e-30) * 2.0)), 0.0)
    return a / tl.exp2(s), s


@triton.jit
def expm(a, o, m, N: tl.constexpr):
    """Matrix exponential of the [N, N] matrix held in a padded [BLOCK, BLOCK] block ``a`` (``o``: lane offsets,
    ``m``: the real lanes), by scaling and squaring: a / 2^s with its 1-norm at most 1/2, the Taylor polynomial of
    degree 12 (Horner; truncation below 2e-14 relative), squared s times. The padded part of the result is the
    identity, as ``inv``'s. Products are ``mm``'s rank-1 updates."""
    eye = tl.where(o[:, None] == o[None, :], 1.0, 0.0)
    real = m[:, None] & m[None, :]
    a, s = _expm_scaled(a, real)
    x = eye + a / 12.0
    for i in range(11):
        x = eye + mm(a, x, o, N) / (11.0 - i)
    for _ in range(s.to(tl.int32)):
        x = mm(x, x, o, N)
    return tl.where(real, x, eye)


@triton.jit
def expm_frechet(a, e, o, m, N: tl.constexpr):
    """L(a, e) = d/dt expm(a + t e) at t = 0, the Frechet derivative of ``expm`` at a in the direction e (both
    [N, N] in padded [BLOCK, BLOCK] blocks), by differentiating expm's own steps: with X the Horner iterate,
    X = I + a X / j gives dX = (e X + a dX) / j, and each squaring X = X X gives dX = dX X + X dX (a and e scaled
    by the same 2^-s). The backward of ``expm`` takes adj(a) = L(a^T, g) (the adjoint of L(a, .) is L(a^T, .)).
    The padded part of the result is 0."""
    eye = tl.where(o[:, None] == o[None, :], 1.0, 0.0)
    real = m[:, None] & m[None, :]
    a, s = _expm_scaled(a, real)
    e = tl.where(real, e, 0.0) / tl.exp2(s)
    x = eye + a / 12.0
    dx = e / 12.0
    for i in range(11):
        j = 11.0 - i
        dx = (mm(e, x, o, N) + mm(a, dx, o, N)) / j
        x = eye + mm(a, x, o, N) / j
    for _ in range(s.to(tl.int32)):
        dx = mm(dx, x, o, N) + mm(x, dx, o, N)
        x = mm(x, x, o, N)
    return tl.where(real, dx, 0.0)


@triton.jit
def compose_real(a1, b1, a2, b2):
    """The combine of ``tl.associative_scan`` over steps ``h -> a h + b``: (a1, b1) then (a2, b2)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def compose_complex(ar1, ai1, br1, bi1, ar2, ai2, br2, bi2):
    """``compose_real`` for complex a, b carried as (real, imaginary) parts."""
    return (ar1 * ar2 - ai1 * ai2, ar1 * ai2 + ai1 * ar2,
            ar2 * br1 - ai2 * bi1 + br2, ar2 * bi1 + ai2 * br1 + bi2)


@triton.jit
def compose_with_previous(a1, b1, p1, q1, a2, b2, p2, q2):
    """``compose_real`` that also composes all but the last step of a segment, (p, q): a scan of (a, b, 1, 0)
    gives at each token both h_t (a, b applied to the carry) and h_{t-1} (p, q applied to it), without
    shifting a block by one token. (p1, q1) are not needed: all but the last of S1 S2 is S1, then all but
    the last of S2."""
    return a1 * a2, a2 * b1 + b2, a1 * p2, p2 * b1 + q2


@triton.jit
def compose_with_previous_complex(ar1, ai1, br1, bi1, pr1, pi1, qr1, qi1, ar2, ai2, br2, bi2, pr2, pi2, qr2, qi2):
    """``compose_with_previous`` for complex values carried as (real, imaginary) parts."""
    return (ar1 * ar2 - ai1 * ai2, ar1 * ai2 + ai1 * ar2,
            ar2 * br1 - ai2 * bi1 + br2, ar2 * bi1 + ai2 * br1 + bi2,
            ar1 * pr2 - ai1 * pi2, ar1 * pi2 + ai1 * pr2,
            pr2 * br1 - pi2 * bi1 + qr2, pr2 * bi1 + pi2 * br1 + qi2)


@triton.jit
def sequence_rows(cu_seqlens, i_b, T, IS_VARLEN: tl.constexpr):
    """(batch row, first token, length) of sequence i_b in a recurrent kernel's [B, T, ...] buffers: equal
    lengths: row i_b from token 0, T tokens; packed (IS_VARLEN, B = 1): row 0 from cu_seqlens[i_b] to
    cu_seqlens[i_b + 1]."""
    if IS_VARLEN:
        row = i_b * 0
        t0 = tl.load(cu_seqlens + i_b).to(tl.int64)
        n = (tl.load(cu_seqlens + i_b + 1) - tl.load(cu_seqlens + i_b)).to(tl.int32)
    else:
        row = i_b
        t0 = i_b * 0
        n = T
    return row, t0, n


@triton.jit
def sequence_bounds(cu_seqlens, i_b, T, IS_VARLEN: tl.constexpr):
    """(bos, n) of sequence i_b in a flat [B * T, ...] view: the row of its first token and its length
    (``sequence_rows``). Kernels index tokens as bos + t and mask t < n, so one launch covers sequences of
    any lengths (programs past a sequence's end store nothing)."""
    row, t0, n = sequence_rows(cu_seqlens, i_b, T, IS_VARLEN)
    return row * T + t0, n
