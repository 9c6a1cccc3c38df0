"""Diagnose the in-kernel matrix inverse (``_tlib.inv``, Gauss-Jordan) compiled for the GPU.

    python benchmarks/gpu_diag_inv.py

Inverts random well-conditioned [n, n] matrices (I + 0.3 G / sqrt(n)) in one program each, with the
library's ``inv`` and with variants that localise a miscompile (the same algorithm through
``tl.sum`` / ``tl.max`` / ``tl.min``; without pivoting), and prints each one's relative error
against ``torch.linalg.inv`` in fp64; and a @ a contracted as the generated kernels do. Runs under TRITON_INTERPRET=1 on the CPU too.
"""

import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), ".."))
from seqdsl.runtime import triton_lib as _tlib  # noqa: E402


@triton.jit
def inv_builtin(a, o, m, N: tl.constexpr):
    eye = o[:, None] == o[None, :]
    real = m[:, None] & m[None, :]
    a = tl.where(real, a, tl.where(eye, 1.0, 0.0))
    b = tl.where(eye, 1.0, 0.0) + a * 0.0
    for k in range(N):
        col = tl.sum(tl.where(o[None, :] == k, a, 0.0), 1)
        cand = tl.where(m & (o >= k), tl.abs(col), -1.0)
        p = tl.min(tl.where(cand == tl.max(cand, 0), o, N), 0)
        row_k = tl.sum(tl.where(o[:, None] == k, a, 0.0), 0)
        row_p = tl.sum(tl.where(o[:, None] == p, a, 0.0), 0)
        brow_k = tl.sum(tl.where(o[:, None] == k, b, 0.0), 0)
        brow_p = tl.sum(tl.where(o[:, None] == p, b, 0.0), 0)
        a = tl.where(o[:, None] == k, row_p[None, :], tl.where(o[:, None] == p, row_k[None, :], a))
        b = tl.where(o[:, None] == k, brow_p[None, :], tl.where(o[:, None] == p, brow_k[None, :], b))
        piv = tl.sum(tl.where(o == k, row_p, 0.0), 0)
        r = row_p / piv
        rb = brow_p / piv
        col = tl.sum(tl.where(o[None, :] == k, a, 0.0), 1)
        col = tl.where(o == k, 0.0, col)
        a = a - col[:, None] * r[None, :]
        b = b - col[:, None] * rb[None, :]
        a = tl.where(o[:, None] == k, r[None, :], a)
        b = tl.where(o[:, None] == k, rb[None, :], b)
    return b


@triton.jit
def inv_nopivot(a, o, m, N: tl.constexpr):
    eye = o[:, None] == o[None, :]
    real = m[:, None] & m[None, :]
    a = tl.where(real, a, tl.where(eye, 1.0, 0.0))
    b = tl.where(eye, 1.0, 0.0) + a * 0.0
    for k in range(N):
        row = tl.sum(tl.where(o[:, None] == k, a, 0.0), 0)
        brow = tl.sum(tl.where(o[:, None] == k, b, 0.0), 0)
        piv = tl.sum(tl.where(o == k, row, 0.0), 0)
        r = row / piv
        rb = brow / piv
        col = tl.sum(tl.where(o[None, :] == k, a, 0.0), 1)
        col = tl.where(o == k, 0.0, col)
        a = a - col[:, None] * r[None, :]
        b = b - col[:, None] * rb[None, :]
        a = tl.where(o[:, None] == k, r[None, :], a)
        b = tl.where(o[:, None] == k, rb[None, :], b)
    return b


@triton.jit
def kernel(x_ptr, y_ptr, N: tl.constexpr, BLOCK: tl.constexpr, WHICH: tl.constexpr):
    pid = tl.program_id(0)
    o = tl.arange(0, BLOCK)
    m = o < N
    ptrs = pid * N * N + o[:, None] * N + o[None, :]
    mask = m[:, None] & m[None, :]
    a = tl.load(x_ptr + ptrs, mask=mask, other=0.0)
    if WHICH == 0:
        b = _tlib.inv(a, o, m, N)
    elif WHICH == 1:
        b = inv_builtin(a, o, m, N)
    elif WHICH == 2:
        b = inv_nopivot(a, o, m, N)
    elif WHICH == 3:                    # a @ a as the generated kernels contract: a 3-D product, reduced
        b = tl.reduce(tl.where(m[None, :, None], a[:, :, None] * a[None, :, :], 0.0), 1, _tlib.add)
    else:                               # a @ a through tl.sum
        b = tl.sum(tl.where(m[None, :, None], a[:, :, None] * a[None, :, :], 0.0), 1)
    tl.store(y_ptr + ptrs, b, mask=mask)


def main() -> int:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    print("| n | variant | rel err vs torch fp64 |")
    print("|---|---|---|")
    for n in (3, 16, 20):
        x = torch.eye(n, dtype=torch.float64) + 0.3 * torch.randn(64, n, n, generator=g, dtype=torch.float64) / n ** 0.5
        refs = [torch.linalg.inv(x)] * 3 + [x @ x] * 2
        names = ("inv: _tlib.inv (tl.reduce + combine fns)", "inv: tl.sum / tl.max / tl.min", "inv: no pivoting",
                 "a @ a: 3-D product, tl.reduce", "a @ a: 3-D product, tl.sum")
        for which, (name, ref) in enumerate(zip(names, refs)):
            y = torch.full((64, n, n), float("nan"), device=dev)
            kernel[(64,)](x.float().to(dev), y, N=n, BLOCK=triton.next_power_of_2(n), WHICH=which)
            err = ((y.double().cpu() - ref).norm() / ref.norm()).item()
            print(f"| {n} | {name} | {err:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
