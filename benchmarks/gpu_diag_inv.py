"""Diagnose the in-kernel matrix inverse (``_tlib.inv``, Gauss-Jordan) compiled for the GPU.

    python benchmarks/gpu_diag_inv.py

Inverts [n, n] matrices in one program each, with the library's ``inv`` and with variants that localise
a miscompile (the same algorithm through ``tl.sum`` / ``tl.max`` / ``tl.min``; without pivoting), and
prints each one's relative error against ``torch.linalg.inv`` in fp64; and a @ a contracted as the
generated kernels do. Three kinds of matrices, with the row swaps partial pivoting makes (``swaps``):

* random, well conditioned (I + 0.3 G / sqrt(n)): no row swaps (run 2 of 2026-12-04 checked only these);
* the same with their rows reversed: a row swap at almost every step;
* HiPPO-LegS's bilinear matrix I - dt/2 A at dt = 0.1, what hippo_legs, hippo_rnn, lssl and s4 invert
  (the four cells that failed on the H200): lower triangular; pivoting swaps rows only for n >= 32.

The last variants compute lssl's whole loop-invariant transition inv(I - dt/2 A) @ (I + dt/2 A) from A in
registers, as its generated recurrent kernel does. Every variant runs at num_warps 1 (what the recurrent
kernels of these cells launch with) and 4 (what run 2 used).

Since 2026-12-05 generated kernels compute matrix @ matrix with ``_tlib.mm`` (rank-1 updates, 2-d blocks
only) instead of a 3-d product reduced over its middle axis: those four cells were the only kernels with 3-d
blocks. The "3-D product" rows are what they used before, the "_tlib.mm" rows what they use now: if the
former fail at one warp and the latter pass, the 3-d lowering was the cause; if the inverse rows fail, it
was the inverse.

"inv: no pivoting" is expected to fail on the reversed rows (zero-free but badly ordered pivots); every
other row should be ~1e-7. Runs under TRITON_INTERPRET=1 on the CPU too.
"""

import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), ".."))
from seqdsl.interpreter import hippo_legs  # noqa: E402
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
    elif WHICH == 4:                    # a @ a through tl.sum
        b = tl.sum(tl.where(m[None, :, None], a[:, :, None] * a[None, :, :], 0.0), 1)
    elif WHICH == 5:                    # lssl's transition from A (= a), as its kernel computed it up to 2026-12-05
        eye = (o[:, None] == o[None, :]).to(tl.float32)
        back = _tlib.inv(eye - (0.1 / 2.0) * a, o, m, N)
        b = tl.reduce(back[:, :, None] * (eye + (0.1 / 2.0) * a)[None, :, :], 1, _tlib.add)
    elif WHICH == 6:                    # a @ a as the generated kernels contract now: _tlib.mm, rank-1 updates
        b = _tlib.mm(a, a, o, N)
    else:                               # lssl's transition as its generated kernel computes it now (_tlib.mm)
        eye = (o[:, None] == o[None, :]).to(tl.float32)
        back = _tlib.inv(eye - (0.1 / 2.0) * a, o, m, N)
        b = _tlib.mm(back, eye + (0.1 / 2.0) * a, o, N)
    tl.store(y_ptr + ptrs, b, mask=mask)


def hippo_bilinear(n: int, dt: float) -> torch.Tensor:
    """I - dt/2 A with HiPPO-LegS's A (the spec initialiser ``hippo_legs()``)."""
    return torch.eye(n, dtype=torch.float64) - dt / 2 * hippo_legs(n).double()


def row_swaps(x: torch.Tensor) -> int:
    """Row swaps Gauss-Jordan with partial pivoting (as _tlib.inv does it) makes on one matrix."""
    a, swaps = x.clone(), 0
    for k in range(a.shape[0]):
        p = k + int(torch.argmax(a[k:, k].abs()))
        if p != k:
            a[[k, p]] = a[[p, k]]
            swaps += 1
        a[k] = a[k] / a[k, k]
        col = a[:, k].clone()
        col[k] = 0
        a = a - col[:, None] * a[k][None, :]
    return swaps


def matrices(n: int, g: torch.Generator) -> list[tuple[str, torch.Tensor]]:
    x = torch.eye(n, dtype=torch.float64) + 0.3 * torch.randn(64, n, n, generator=g, dtype=torch.float64) / n ** 0.5
    hippo = hippo_bilinear(n, 0.1).expand(64, n, n).contiguous()
    return [("random", x), ("random, rows reversed", x.flip(1).contiguous()), ("HiPPO-LegS I - dt/2 A, dt 0.1", hippo)]


NAMES = ("inv: _tlib.inv (tl.reduce + combine fns)", "inv: tl.sum / tl.max / tl.min", "inv: no pivoting",
         "a @ a: 3-D product, tl.reduce", "a @ a: 3-D product, tl.sum",
         "lssl's inv(I - dt/2 A) @ (I + dt/2 A) from A in registers, 3-D product",
         "a @ a: _tlib.mm (rank-1 updates, what kernels use now)",
         "lssl's inv(I - dt/2 A) @ (I + dt/2 A) from A in registers, _tlib.mm")


def run(which: int, x: torch.Tensor, n: int, warps: int, dev: str) -> torch.Tensor:
    y = torch.full((x.shape[0], n, n), float("nan"), device=dev)
    kernel[(x.shape[0],)](x.float().to(dev), y, N=n, BLOCK=triton.next_power_of_2(n), WHICH=which, num_warps=warps)
    return y.double().cpu()


def main() -> int:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = [int(a) for a in sys.argv[1:]] or [3, 16, 20, 32]
    g = torch.Generator().manual_seed(0)
    print("| n | matrices | swaps | variant | num_warps | rel err vs torch fp64 |")
    print("|---|---|---|---|---|---|")
    for n in sizes:
        cases = []
        for kind, x in matrices(n, g):
            swaps = row_swaps(x[0])
            refs = {0: torch.linalg.inv(x), 1: torch.linalg.inv(x), 2: torch.linalg.inv(x), 3: x @ x, 4: x @ x,
                    6: x @ x}
            for which, ref in refs.items():
                if which < 3 or kind == "random":
                    cases.append((kind, swaps, which, x, ref))
        a = hippo_legs(n).double().expand(64, n, n).contiguous()
        eye = torch.eye(n, dtype=torch.float64)
        for which in (5, 7):
            cases.append(("HiPPO-LegS A", row_swaps(eye - 0.05 * a[0]), which, a,
                          torch.linalg.inv(eye - 0.05 * a) @ (eye + 0.05 * a)))
        for kind, swaps, which, x, ref in cases:
            for warps in (1, 4):    # the recurrent kernels of these cells launch with num_warps = 1
                err = ((run(which, x, n, warps, dev) - ref).norm() / ref.norm()).item()
                print(f"| {n} | {kind} | {swaps} | {NAMES[which]} | {warps} | {err:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
