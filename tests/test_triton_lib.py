"""The Triton helpers generated kernels call (seqdsl.runtime.triton_lib), one program each, against torch in fp64.

Runs under ``TRITON_INTERPRET=1`` (set by conftest); the same kernels run on a GPU where one is present
(benchmarks/gpu_diag_inv.py times them there at the sizes the examples use). Blocks are padded to a power
of two and the padded lanes are loaded as NaN, so a helper that lets them take part fails.
"""

import math

import pytest
import torch
import triton
import triton.language as tl

from seqdsl.interpreter import hippo_legs
from seqdsl.runtime import triton_chunk
from seqdsl.runtime import triton_lib as _tlib

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@triton.jit
def _mm_kernel(a, b, out, M, P, N: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BP: tl.constexpr):
    o_m, o_n, o_p = tl.arange(0, BM), tl.arange(0, BN), tl.arange(0, BP)
    b_a = tl.load(a + o_m[:, None] * N + o_n[None, :], mask=(o_m[:, None] < M) & (o_n[None, :] < N),
                  other=float("nan"))
    b_b = tl.load(b + o_n[:, None] * P + o_p[None, :], mask=(o_n[:, None] < N) & (o_p[None, :] < P),
                  other=float("nan"))
    c = _tlib.mm(b_a, b_b, o_n, N)
    tl.store(out + o_m[:, None] * P + o_p[None, :], c, mask=(o_m[:, None] < M) & (o_p[None, :] < P))


@triton.jit
def _inv_kernel(a, out, N: tl.constexpr, BN: tl.constexpr):
    o = tl.arange(0, BN)
    m = o < N
    b_a = tl.load(a + o[:, None] * N + o[None, :], mask=m[:, None] & m[None, :], other=float("nan"))
    tl.store(out + o[:, None] * N + o[None, :], _tlib.inv(b_a, o, m, N), mask=m[:, None] & m[None, :])


@triton.jit
def _expm_kernel(a, out, N: tl.constexpr, BN: tl.constexpr):
    o = tl.arange(0, BN)
    m = o < N
    b_a = tl.load(a + o[:, None] * N + o[None, :], mask=m[:, None] & m[None, :], other=float("nan"))
    tl.store(out + o[:, None] * N + o[None, :], _tlib.expm(b_a, o, m, N), mask=m[:, None] & m[None, :])


@triton.jit
def _expm_frechet_kernel(a, e, out, N: tl.constexpr, BN: tl.constexpr):
    o = tl.arange(0, BN)
    m = o < N
    mm = m[:, None] & m[None, :]
    b_a = tl.load(a + o[:, None] * N + o[None, :], mask=mm, other=float("nan"))
    b_e = tl.load(e + o[:, None] * N + o[None, :], mask=mm, other=float("nan"))
    tl.store(out + o[:, None] * N + o[None, :], _tlib.expm_frechet(b_a, b_e, o, m, N), mask=mm)


def _block(n: int) -> int:
    return max(2, triton.next_power_of_2(n))


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    (M, N), P = a.shape, b.shape[1]
    out = torch.empty(M, P, dtype=a.dtype, device=a.device)
    _mm_kernel[(1,)](a.contiguous(), b.contiguous(), out, M, P, N=N, BM=_block(M), BN=_block(N), BP=_block(P),
                     num_warps=1)
    return out


def _inv(a: torch.Tensor) -> torch.Tensor:
    n = a.shape[0]
    out = torch.empty_like(a)
    _inv_kernel[(1,)](a.contiguous(), out, N=n, BN=_block(n), num_warps=1)
    return out


def _hippo_bilinear(n: int, dt: float) -> torch.Tensor:
    """I - dt/2 A for HiPPO-LegS's A (the spec initialiser ``hippo_legs()``): what hippo_legs, hippo_rnn, lssl
    and s4 invert. At dt = 1 partial pivoting swaps rows."""
    return torch.eye(n, dtype=torch.float64) - dt / 2 * hippo_legs(n).double()


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double().cpu() - ref).norm() / ref.norm())


@pytest.mark.parametrize("M,N,P", [(3, 3, 3), (4, 5, 6), (16, 16, 16), (20, 20, 20), (32, 32, 32), (1, 7, 2)])
def test_mm_matches_torch_and_ignores_padded_lanes(M, N, P):
    g = torch.Generator().manual_seed(M * 100 + N * 10 + P)
    a, b = torch.randn(M, N, generator=g, dtype=torch.float64), torch.randn(N, P, generator=g, dtype=torch.float64)
    got = _mm(a.float().to(DEVICE), b.float().to(DEVICE))
    assert _rel(got, a @ b) < 1e-6


@pytest.mark.parametrize("n", [3, 16, 20, 32])
@pytest.mark.parametrize("kind", ["random", "rows reversed", "hippo dt=1", "hippo dt=0.1"])
def test_inv_matches_torch_with_and_without_row_swaps(n, kind):
    g = torch.Generator().manual_seed(n)
    if kind.startswith("hippo"):
        a = _hippo_bilinear(n, float(kind.split("=")[1]))
    else:
        a = torch.eye(n, dtype=torch.float64) + 0.3 * torch.randn(n, n, generator=g, dtype=torch.float64) / math.sqrt(n)
        if kind == "rows reversed":   # every pivot is off the diagonal: a row swap at almost every step
            a = a.flip(0)
    got = _inv(a.float().to(DEVICE))
    ref = torch.linalg.inv(a)
    # fp32 Gauss-Jordan: error ~ condition number x 6e-8
    assert _rel(got, ref) < 1e-6 * max(1.0, float(torch.linalg.cond(a)))


@triton.jit
def _unit_lower_inverse_kernel(a, out, BT: tl.constexpr, DTYPE: tl.constexpr, PREC: tl.constexpr):
    o = tl.arange(0, BT)
    b_a = tl.load(a + o[:, None] * BT + o[None, :]).to(DTYPE)
    tl.store(out + o[:, None] * BT + o[None, :], triton_chunk.unit_lower_inverse(b_a, o, BT, DTYPE, PREC))


@pytest.mark.parametrize("dtype,prec", [(torch.float64, "ieee"), (torch.float32, "ieee"), (torch.float32, "fp16")],
                         ids=["fp64", "fp32", "fp32-fp16-split-dots"])
@pytest.mark.parametrize("BT", [16, 32, 64, 128])
def test_unit_lower_inverse_matches_torch(BT, dtype, prec):
    """The delta rule's (I + A)^-1 (triton_chunk.unit_lower_inverse: 16 x 16 diagonal blocks by forward substitution,
    then the blocks below them by products of dots to fp32 accuracy) against torch.linalg.inv in fp64, for A as the
    WY stage makes it: tril(diag(beta) K K^T, -1) with unit-norm keys and beta in (0, 2) (negative eigenvalues), so
    that every block below the diagonal is dense. The rows past a sequence's end are zero rows of A (beta = 0 there).
    With the fp16 policy's PREC the products are three fp16 dots of split halves each (``triton_lib.dot_fp32``;
    bf16 is the same code, compiled by tests/test_gpu_compile_check.py: the interpreter's bf16 dots are wrong)."""
    g = torch.Generator().manual_seed(BT)
    k = torch.nn.functional.normalize(torch.randn(BT, 24, generator=g, dtype=torch.float64), dim=-1)
    beta = 2 * torch.rand(BT, generator=g, dtype=torch.float64)
    beta[BT - 3:] = 0.0                                     # a partial last chunk
    A = torch.tril(beta[:, None] * (k @ k.T), -1)
    expected = torch.linalg.inv(torch.eye(BT, dtype=torch.float64) + A)
    out = torch.empty(BT, BT, dtype=dtype, device=DEVICE)
    _unit_lower_inverse_kernel[(1,)](A.to(dtype).to(DEVICE), out, BT=BT,
                                     DTYPE=tl.float64 if dtype == torch.float64 else tl.float32, PREC=prec,
                                     num_warps=4)
    err = (out.double().cpu() - expected).norm() / expected.norm()
    assert err < (1e-12 if dtype == torch.float64 else 1e-5), err


@pytest.mark.parametrize("n", [3, 16, 20])
@pytest.mark.parametrize("kind", ["zero", "norm 0.1", "norm 3", "norm 40", "hippo dt=0.5"])
def test_expm_matches_torch(n, kind):
    """_tlib.expm (scaling and squaring of a degree-12 Taylor polynomial) against torch.linalg.matrix_exp in fp64:
    matrices that need no squaring, a few, and many (1-norm 40: 2^7), and HiPPO-LegS's dt A, which the zero-order hold
    of a dense SSM exponentiates."""
    g = torch.Generator().manual_seed(n)
    if kind == "zero":
        a = torch.zeros(n, n, dtype=torch.float64)
    elif kind.startswith("hippo"):
        a = 0.5 * hippo_legs(n).double()
    else:
        a = torch.randn(n, n, generator=g, dtype=torch.float64)
        a = a * float(kind.split()[1]) / a.abs().sum(0).max()
    out = torch.empty(n, n, dtype=torch.float32, device=DEVICE)
    _expm_kernel[(1,)](a.float().to(DEVICE).contiguous(), out, N=n, BN=_block(n), num_warps=1)
    ref = torch.linalg.matrix_exp(a)
    # within 10x of what torch's own fp32 matrix_exp reaches (squaring amplifies fp32 rounding), and 2e-6
    floor = _rel(torch.linalg.matrix_exp(a.float()), ref)
    assert _rel(out, ref) < max(2e-6, 10 * floor), (_rel(out, ref), floor)


@pytest.mark.parametrize("n", [3, 16, 20])
@pytest.mark.parametrize("norm", [0.1, 3.0, 40.0])
def test_expm_frechet_is_the_gradient_of_matrix_exp(n, norm):
    """_tlib.expm_frechet(A^T, G), what the recurrent backward takes for expm(), against torch autograd through
    torch.linalg.matrix_exp in fp64: the gradient of <G, expm(A)> with respect to A."""
    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    a = a * norm / a.abs().sum(0).max()
    cot = torch.randn(n, n, generator=g, dtype=torch.float64)
    leaf = a.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(torch.linalg.matrix_exp(leaf), leaf, cot)
    out = torch.empty(n, n, dtype=torch.float32, device=DEVICE)
    _expm_frechet_kernel[(1,)](a.T.contiguous().float().to(DEVICE), cot.float().to(DEVICE), out, N=n, BN=_block(n),
                               num_warps=1)
    # fp32: 4e-8 to 3e-7 at norms 0.1 and 3, up to 7e-6 at 40 (7 squarings)
    assert _rel(out, ref) < (1e-6 if norm < 10 else 3e-5), _rel(out, ref)
