"""Deep SSMs of the zoo against references written from their papers (DESIGN §7, link 1).

HiPPO-LegS (M41), LSSL (M44), S4 (M45), DSS (M46), S5 (M48), Liquid-S4 (M49), DLR (M51), LaughingHyena
(M58) and the REM heads of RSA (M24). Every reference below is built from the paper's equations, never
from the spec or the interpreter, and where the paper has one it takes a different computation path than
the interpreter's step loop: convolution kernels (matrix powers, Vandermonde products, S4's generating
function with Cauchy kernels and Woodbury), the unrolled liquid-kernel expansion, S5's parallel scan,
RSA's REM matrices. Comparisons are in fp64 to 1e-10 (max error relative to the peak, oracles.rel_err).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import oracles as O
import seqdsl
from zoo_common import C128, EXAMPLES, F64, TOL, gen, our_ref, randn, uniform  # noqa: F401

SHAPES = [(2, 1, False), (2, 13, True), (1, 24, False), (1, 24, True)]       # (B, T, with an initial state)
CU_SEQLENS = [0, 1, 6, 13, 22]


def causal_conv(K: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """y_t = sum_{l <= t} K[:, l] u_{t-l} per channel, by FFT. K [d, >= T] real, u [b, T, d]."""
    T = u.shape[1]
    n = 2 * max(T, 1)
    y = torch.fft.irfft(torch.fft.rfft(u.transpose(1, 2), n=n) * torch.fft.rfft(K[:, :T], n=n), n=n)[..., :T]
    return y.transpose(1, 2)


def spec(name: str):
    """Put the model's name in the test id: `seqdsl zoo` finds a model's tests by its name in the node id."""
    return pytest.mark.parametrize("spec", [name])


def shape_ids(model: str, shapes) -> list[str]:
    return [f"{model}-B{B}-T{T}-{'h0' if h else 'zero_h0'}" for B, T, h in shapes]


def check(model: str, ours, theirs, what: str, tol: float = TOL) -> float:
    return O.assert_matches(model, ours, theirs, tol, what)


def split_by(fn, inputs, streams, h0, cu):
    """Run a reference sequence by sequence (varlen): the references know only dense batches."""
    outs, finals = [], []
    for i, (lo, hi) in enumerate(zip(cu[:-1], cu[1:])):
        seg = {k: (v[:, lo:hi] if k in streams else v) for k, v in inputs.items()}
        o, ht = fn(seg, None if h0 is None else O.select_state(h0, i))
        outs.append(o)
        finals.append(O.flatten(ht))
    o = tuple(torch.cat(p, 1) for p in zip(*outs)) if isinstance(outs[0], tuple) else torch.cat(outs, 1)
    return o, tuple(torch.cat(p) for p in zip(*finals))


def run_op_case(model, hparams, make, reference, B, T, with_h0, seed=0, cu=None):
    """Our fp64 interpreter (the op) and the paper reference on the same inputs; compare outputs and final state."""
    ref = our_ref(model, **hparams)
    n_seq = B if cu is None else len(cu) - 1
    inputs, h0 = make(ref, gen(seed), B, T, n_seq)
    h0 = h0 if with_h0 else None
    assert set(inputs) == set(ref.inputs), f"the op takes {ref.inputs}"
    o, ht = ref(**inputs, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    if cu is None:
        o_ref, ht_ref = reference(inputs, h0)
    else:
        o_ref, ht_ref = split_by(reference, inputs, set(ref.checked.op_streams), h0, cu)
    check(model, o, o_ref, "output")
    check(model, ht, ht_ref, "final state")


def with_op_cases(model, hparams, make, reference):
    """The standard grid for one model: shapes x initial state, and varlen."""

    @pytest.mark.parametrize("B,T,with_h0", SHAPES, ids=shape_ids(model, SHAPES))
    def test_op(B, T, with_h0):
        run_op_case(model, hparams, make, reference, B, T, with_h0)

    @pytest.mark.parametrize("with_h0", [False, True], ids=[f"{model}-zero_h0", f"{model}-h0"])
    def test_varlen(with_h0):
        run_op_case(model, hparams, make, reference, 1, CU_SEQLENS[-1], with_h0, seed=1, cu=CU_SEQLENS)

    return test_op, test_varlen


# ================================================================== HiPPO-LegS (M41)
def legs_paper(n: int):
    """HiPPO-LegS (Gu et al. 2020, Thm. 2 / survey Eq. 39 without the 1/t): A[i, k] = sqrt(2i+1) sqrt(2k+1) (i > k),
    i + 1 (i = k), 0 (i < k); B_i = sqrt(2i+1). The ODE is dc/dt = -(1/t) A c + (1/t) B f."""
    A = torch.zeros(n, n, dtype=F64)
    for i in range(n):
        for k in range(i + 1):
            A[i, k] = math.sqrt((2 * i + 1) * (2 * k + 1)) if i > k else i + 1
    return A, torch.tensor([math.sqrt(2 * i + 1) for i in range(n)], dtype=F64)


HIPPO = dict(d_model=3, n=5)


def make_hippo(ref, g, B, T, N):
    t0 = 4                                                       # continue a sequence that started earlier
    pos = (torch.arange(T, dtype=F64) + 1 + t0).expand(B, T)
    params = ref.init_params(0)
    return dict(u=randn(g, B, T, HIPPO["d_model"]), pos=pos.contiguous(), A=params["A"], B=params["B"]), \
        randn(g, N, HIPPO["d_model"], HIPPO["n"])


def hippo_euler(inputs, h0):
    """The paper's discrete LegS recurrence (forward Euler): c_k = (I - A/k) c_{k-1} + (1/k) B f_k."""
    A, Bv = legs_paper(HIPPO["n"])
    u, pos = inputs["u"], inputs["pos"]
    c = torch.zeros(u.shape[0], u.shape[2], HIPPO["n"], dtype=F64) if h0 is None else h0.clone()
    out = []
    for t in range(u.shape[1]):
        k = pos[:, t, None, None]
        c = c - (c @ A.T) / k + Bv * u[:, t, :, None] / k
        out.append(c)
    return torch.stack(out, 1) if out else c.new_zeros(u.shape[0], 0, *c.shape[1:]), c


def hippo_gbt_unrolled(alpha):
    """The paper's GBT discretisation, unrolled: c_t = sum_j Phi(t, j) Bbar_j f_j + Phi(t, -1) c_0, Phi the
    product of the transitions Abar_k = (I + alpha A/k)^-1 (I - (1 - alpha) A/k), Bbar_k = (I + alpha A/k)^-1 B/k
    (triangular solves)."""

    def reference(inputs, h0):
        A, Bv = legs_paper(HIPPO["n"])
        I = torch.eye(HIPPO["n"], dtype=F64)
        u, pos = inputs["u"], inputs["pos"][0]
        Ab, Bb = [], []
        for k in pos.tolist():
            M = I + alpha * A / k
            Ab.append(torch.linalg.solve_triangular(M, I - (1 - alpha) * A / k, upper=False))
            Bb.append(torch.linalg.solve_triangular(M, (Bv / k)[:, None], upper=False)[:, 0])
        out = []
        for t in range(u.shape[1]):
            Phi, acc = I, 0
            for j in range(t, -1, -1):
                acc = acc + torch.einsum("nm,m,bd->bdn", Phi, Bb[j], u[:, j])
                Phi = Phi @ Ab[j]
            if h0 is not None:
                acc = acc + h0 @ Phi.T
            out.append(acc)
        o = torch.stack(out, 1)
        return o, o[:, -1]

    return reference


@pytest.mark.parametrize("B,T,with_h0", SHAPES, ids=shape_ids("hippo_legs", SHAPES))
def test_hippo_forward_euler_is_the_papers_recurrence(B, T, with_h0):
    run_op_case("hippo_legs", dict(HIPPO, alpha=0.0), make_hippo, hippo_euler, B, T, with_h0)


@pytest.mark.parametrize("alpha", [0.5, 1.0], ids=["bilinear", "backward_euler"])
@pytest.mark.parametrize("B,T,with_h0", SHAPES[1:3], ids=shape_ids("hippo_legs", SHAPES[1:3]))
def test_hippo_gbt_matches_unrolled_transition_products(alpha, B, T, with_h0):
    run_op_case("hippo_legs", dict(HIPPO, alpha=alpha), make_hippo, hippo_gbt_unrolled(alpha), B, T, with_h0)


@spec("hippo_legs")
def test_hippo_varlen(spec):
    run_op_case("hippo_legs", HIPPO, make_hippo, hippo_gbt_unrolled(0.5), 1, CU_SEQLENS[-1], True, seed=1,
                cu=CU_SEQLENS)


@spec("hippo_legs")
def test_hippo_spec_matrices_are_the_papers(spec):
    p = our_ref("hippo_legs", **HIPPO).init_params()
    A, Bv = legs_paper(HIPPO["n"])
    check("hippo_legs", (p["A"], p["B"]), (-A, Bv), "A, B", 1e-15)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@spec("hippo_legs")
def test_hippo_constant_signal_is_a_fixed_point(spec, alpha):
    """For f = const the LegS projection is exactly f e_0 (g_0 = 1); the discrete dynamics keep it (A e_0 = B)."""
    ref = our_ref("hippo_legs", **HIPPO, alpha=alpha)
    p = ref.init_params()
    f = torch.tensor([0.7, -1.3, 2.0], dtype=F64)
    T = 9
    c0 = torch.zeros(1, 3, HIPPO["n"], dtype=F64)
    c0[..., 0] = f
    o, _ = ref(u=f.expand(1, T, 3).contiguous(), pos=(torch.arange(T, dtype=F64) + 3)[None], A=p["A"], B=p["B"],
               initial_state=c0)
    check("hippo_legs", o, c0[:, None].expand(1, T, 3, HIPPO["n"]), "fixed point")


@spec("hippo_legs")
def test_hippo_coefficients_approximate_the_legendre_projection(spec):
    """Eq. (35)-(37): c_n(t) = int_0^t f(x) sqrt(2n+1) P_n(2x/t - 1) dx/t, here by Gauss-Legendre quadrature, for
    f(x) = g(x/T) with g a cubic. The bilinear recurrence over T samples approximates it, with error O(1/T)."""
    n = 5
    ref = our_ref("hippo_legs", d_model=1, n=n, alpha=0.5)
    p = ref.init_params()
    g = np.polynomial.Polynomial([0.3, -1.0, 2.0, -6.0])
    nodes, weights = np.polynomial.legendre.leggauss(16)
    x = (nodes + 1) / 2                                            # [0, 1]
    exact = torch.tensor([np.sum(weights / 2 * g(x) * math.sqrt(2 * k + 1)
                                 * np.polynomial.legendre.legval(2 * x - 1, [0] * k + [1])) for k in range(n)])
    assert abs(exact[3]) > 0.1 and abs(exact[4]) < 1e-12           # a cubic: degree 3 present, degree 4 absent
    errs = []
    for T in (200, 800):
        s = (np.arange(T) + 1) / T
        o, _ = ref(u=torch.tensor(g(s), dtype=F64)[None, :, None], pos=torch.arange(1, T + 1, dtype=F64)[None],
                   A=p["A"], B=p["B"])
        errs.append((o[0, -1, 0] - exact).abs().max().item())
    assert errs[1] < 1e-2 and errs[1] < 0.3 * errs[0], f"HiPPO-LegS vs the Legendre projection: errors {errs}"


@spec("hippo_legs")
def test_hippo_layer_reads_the_coefficients_linearly(spec):
    ref = our_ref("hippo_legs", **HIPPO)
    p = ref.init_params(2)
    x = randn(gen(2), 2, 7, HIPPO["d_model"])
    y, _ = ref.layer(x, p)
    c, _ = hippo_gbt_unrolled(0.5)(dict(u=x, pos=(torch.arange(7, dtype=F64) + 1).expand(2, 7)), None)
    check("hippo_legs", y, c.flatten(2) @ p["y_proj"].T, "layer")


# ================================================================== LSSL (M44) and S4 (M45)
def bilinear(A, B, dt):
    """Eq. (44)/(47): Abar = (I - dt/2 A)^-1 (I + dt/2 A), Bbar = (I - dt/2 A)^-1 dt B, by linear solves."""
    I = torch.eye(A.shape[-1], dtype=A.dtype)
    back = I - dt / 2 * A
    return torch.linalg.solve(back, I + dt / 2 * A), torch.linalg.solve(back, (dt * B)[:, None])[:, 0]


def lti_from_kernel(K, Abar, Bbar, C, D, u, h0):
    """y = K * u + D u (+ C Abar^(t+1) h0); final state Abar^T h0 + sum_l Abar^(T-1-l) Bbar u_l, per channel.
    K [d, T]; Abar [d, n, n]; Bbar [d, n]; C [d, n]; u [b, T, d]; h0 [b, d, n] or None."""
    b, T, d = u.shape
    y = causal_conv(K, u) + D * u
    powers = [torch.eye(Abar.shape[-1], dtype=F64).expand_as(Abar)]
    for _ in range(T):
        powers.append(powers[-1] @ Abar)
    P = torch.stack(powers, 1)                                       # [d, T+1, n, n] = Abar^l
    state = torch.einsum("dlnm,dm,bld->bdn", P[:, :T].flip(1), Bbar, u)
    if h0 is not None:
        y = y + torch.einsum("dn,dtnm,bdm->btd", C, P[:, 1:], h0)
        state = state + torch.einsum("dnm,bdm->bdn", P[:, T], h0)
    return y, state


LSSL = dict(d_model=3, n=6)


def make_lssl(ref, g, B, T, N):
    p = ref.init_params(1)
    p["A"] = p["A"] + 0.3 * randn(g, LSSL["n"], LSSL["n"])           # LSSL learns A: leave the HiPPO structure
    p["log_dt"] = torch.log(uniform(g, 0.05, 0.5, LSSL["d_model"]))
    inputs = {k: p[k] for k in ("A", "B", "log_dt", "C", "D")}
    inputs["u"] = randn(g, B, T, LSSL["d_model"])
    return inputs, randn(g, N, LSSL["d_model"], LSSL["n"])


def lssl_kernel(inputs, h0):
    """LSSL Eq. (45): p_l = C Abar^l Bbar (Krylov by repeated products), y = p * u + D u."""
    dt = torch.exp(inputs["log_dt"])
    T = inputs["u"].shape[1]
    Ab, Bb = zip(*(bilinear(inputs["A"], inputs["B"], dt[i]) for i in range(len(dt))))
    Ab, Bb = torch.stack(Ab), torch.stack(Bb)
    K, v = [], Bb
    for _ in range(T):
        K.append(torch.einsum("dn,dn->d", inputs["C"], v))
        v = torch.einsum("dnm,dm->dn", Ab, v)
    K = torch.stack(K, 1) if K else torch.zeros(len(dt), 0, dtype=F64)
    return lti_from_kernel(K, Ab, Bb, inputs["C"], inputs["D"], inputs["u"], h0)


test_lssl_op_vs_kernel, test_lssl_varlen_vs_kernel = with_op_cases("lssl", LSSL, make_lssl, lssl_kernel)


@spec("lssl")
def test_lssl_init_is_hippo_legs_and_layer_applies_gelu_then_linear(spec):
    ref = our_ref("lssl", **LSSL)
    p = ref.init_params(3)
    A, Bv = legs_paper(LSSL["n"])
    check("lssl", (p["A"], p["B"]), (-A, Bv), "HiPPO init", 1e-15)
    x = randn(gen(3), 2, 9, LSSL["d_model"])
    y, _ = ref.layer(x, p)
    o, _ = lssl_kernel(dict(u=x, **{k: p[k] for k in ("A", "B", "log_dt", "C", "D")}), None)
    check("lssl", y, F.gelu(o) @ p["y_proj"].T, "layer")


S4 = dict(d_model=3, n=6)


def make_s4(ref, g, B, T, N):
    p = ref.init_params(2)
    d, n = S4["d_model"], S4["n"]
    p["J"] = p["J"] + 0.3 * randn(g, n, n)                          # away from the init: a general NPLR matrix
    p["P"] = p["P"] + 0.2 * randn(g, d, n)
    p["B"] = p["B"] + 0.2 * randn(g, d, n)
    p["log_re"] = torch.log(uniform(g, 0.2, 1.0, d))
    p["log_dt"] = torch.log(uniform(g, 0.05, 0.5, d))
    inputs = {k: p[k] for k in ("J", "log_re", "P", "B", "log_dt", "C", "D")}
    inputs["u"] = randn(g, B, T, d)
    return inputs, randn(g, N, d, n)


def s4_generating_function_kernel(inputs, h0):
    """S4's kernel algorithm (Gu et al. 2021, Alg. 1 and App. C): in the eigenbasis of the normal part
    S = -a I + (J - J^T) = V Lambda V*, A = Lambda - Pt Pt* (Pt = V* P). At the roots of unity z_k of an odd
    length L >= T, the truncated generating function
        Khat(z) = Ct (I - Abar^L) (2 / (1 + z)) [R Bt - R Pt (1 + Pt* R Pt)^-1 Pt* R Bt],
        R = (g(z) - Lambda)^-1 (a Cauchy kernel), g(z) = (2/dt) (1 - z) / (1 + z)   (Woodbury),
    then K = inverse FFT of Khat; y = K * u + D u."""
    J, P, Bv, C = inputs["J"], inputs["P"], inputs["B"], inputs["C"]
    dt, a = torch.exp(inputs["log_dt"]), torch.exp(inputs["log_re"])
    T = inputs["u"].shape[1]
    L = T if T % 2 else T + 1
    n = J.shape[0]
    w, V = torch.linalg.eigh(1j * (J - J.T).to(C128))              # i (J - J^T) is Hermitian
    z = torch.exp(-2j * math.pi * torch.arange(L, dtype=F64) / L)
    Ks, Abars, Bbars = [], [], []
    for i in range(len(dt)):
        Lam = -a[i] - 1j * w                                      # eigenvalues of S
        Pt, Bt = V.conj().T @ P[i].to(C128), V.conj().T @ Bv[i].to(C128)
        A_dense = -a[i] * torch.eye(n, dtype=F64) + J - J.T - torch.outer(P[i], P[i])
        Abar, Bbar = bilinear(A_dense, Bv[i], dt[i])
        Ct = (C[i] - C[i] @ torch.linalg.matrix_power(Abar, L)).to(C128) @ V
        R = 1 / ((2 / dt[i]) * (1 - z) / (1 + z))[:, None].sub(Lam[None, :])       # [L, n] Cauchy
        k00, k01 = (Ct * R) @ Bt, (Ct * R) @ Pt
        k10, k11 = (Pt.conj() * R) @ Bt, (Pt.conj() * R) @ Pt
        Khat = 2 / (1 + z) * (k00 - k01 * k10 / (1 + k11))
        K = torch.fft.ifft(Khat)
        assert K.imag.abs().max() < 1e-9 * max(1.0, K.real.abs().max().item())
        Ks.append(K.real[:T])
        Abars.append(Abar)
        Bbars.append(Bbar)
    return lti_from_kernel(torch.stack(Ks), torch.stack(Abars), torch.stack(Bbars), C, inputs["D"], inputs["u"], h0)


test_s4_op_vs_generating_function, test_s4_varlen_vs_generating_function = with_op_cases(
    "s4", S4, make_s4, s4_generating_function_kernel)


@spec("s4")
def test_s4_nplr_init_is_hippo_legs(spec):
    """At initialisation A = -exp(log_re) I + (J - J^T) - P P^T is exactly HiPPO-LegS for every channel."""
    p = our_ref("s4", **S4).init_params(4)
    A_legs, B_legs = legs_paper(S4["n"])
    n = S4["n"]
    for i in range(S4["d_model"]):
        A = -torch.exp(p["log_re"][i]) * torch.eye(n, dtype=F64) + p["J"] - p["J"].T - torch.outer(p["P"][i], p["P"][i])
        check("s4", (A, p["B"][i]), (-A_legs, B_legs), "NPLR init", 1e-13)


@spec("s4")
def test_s4_kernel_matches_matrix_powers(spec):
    """The two kernel views agree: S4's generating-function kernel and C Abar^l Bbar (LSSL Eq. 45)."""
    ref = our_ref("s4", **S4)
    inputs, _ = make_s4(ref, gen(5), 1, 17, 1)
    inputs["u"] = torch.zeros(1, 17, S4["d_model"], dtype=F64)
    inputs["u"][:, 0] = 1.0                                           # an impulse: y = K + D delta
    y, _ = s4_generating_function_kernel(inputs, None)
    A = [-torch.exp(inputs["log_re"][i]) * torch.eye(S4["n"], dtype=F64) + inputs["J"] - inputs["J"].T
         - torch.outer(inputs["P"][i], inputs["P"][i]) for i in range(S4["d_model"])]
    K = torch.stack([torch.stack([inputs["C"][i] @ torch.linalg.matrix_power(Ab, l) @ Bb for l in range(17)])
                     for i, (Ab, Bb) in enumerate(bilinear(A[i], inputs["B"][i], torch.exp(inputs["log_dt"][i]))
                                                  for i in range(S4["d_model"]))])
    y_pow = K.T[None] + inputs["D"] * inputs["u"]
    check("s4", y, y_pow, "generating function vs powers")


# ================================================================== DSS (M46) and DLR (M51)
def skew_hippo_evals(N: int) -> torch.Tensor:
    """DSS's init (Gupta et al. 2022, its hippo_skew_evals): eigenvalues of the skew part of HiPPO-LegS, by numpy."""
    x = np.sqrt(2 * np.arange(N) + 1.0)
    H = np.tril(np.outer(x, x), -1)
    ev = np.linalg.eigvals((H - H.T) / 2)
    return torch.tensor(ev[np.argsort(-ev.imag)], dtype=C128)


DSS = dict(d_model=3, n=5)


def make_dss(ref, g, B, T, N):
    p = ref.init_params(5)
    p["Lambda_log_neg_re"] = torch.log(uniform(g, 0.1, 1.0, DSS["n"]))
    p["log_dt"] = torch.log(uniform(g, 0.01, 0.5, DSS["d_model"]))
    inputs = {k: v for k, v in p.items() if k in ref.inputs}
    inputs["u"] = randn(g, B, T, DSS["d_model"])
    return inputs, randn(g, N, DSS["d_model"], DSS["n"], dtype=C128)


def dss_exp_kernel(inputs, h0):
    """DSS-exp (Prop. 1): K = Re(W . Lambda^-1 (exp(Lambda dt) - I) . exp(P)), P[n, k] = lambda_n k dt."""
    lam = -torch.exp(inputs["Lambda_log_neg_re"]) + 1j * inputs["Lambda_im"]               # [n]
    dtl = torch.exp(inputs["log_dt"])[:, None] * lam                                       # [d, n]
    W = torch.complex(inputs["W_re"], inputs["W_im"])
    u, T = inputs["u"], inputs["u"].shape[1]
    Pm = dtl[..., None] * torch.arange(T, dtype=F64)                                       # [d, n, T]
    Wt = W * (torch.exp(dtl) - 1) / lam
    K = torch.einsum("dn,dnk->dk", Wt, torch.exp(Pm)).real
    y = causal_conv(K, u) + inputs["D"] * u
    state = torch.einsum("dnk,bkd->bdn", torch.exp(Pm).flip(-1), u.to(C128)) * (torch.exp(dtl) - 1) / lam
    if h0 is not None:
        decay = torch.exp(dtl[..., None] * (torch.arange(T, dtype=F64) + 1))              # exp(dt lambda (t+1))
        y = y + torch.einsum("dn,dnt,bdn->btd", W, decay, h0).real
        state = state + torch.exp(dtl * T) * h0
    return y, state


test_dss_op_vs_kernel, test_dss_varlen_vs_kernel = with_op_cases("dss", DSS, make_dss, dss_exp_kernel)


@spec("dss")
def test_dss_init_is_skew_hippo(spec):
    p = our_ref("dss", **DSS).init_params()
    ev = skew_hippo_evals(2 * DSS["n"])[: DSS["n"]]
    half = torch.full((DSS["n"],), -0.5, dtype=F64)
    check("dss", (p["Lambda_im"], -torch.exp(p["Lambda_log_neg_re"])), (ev.imag, half), "skew-HiPPO init", 1e-12)


DLR = dict(d_model=3, n=7)


def make_dlr(ref, g, B, T, N):
    p = ref.init_params(6)
    p["Lambda_log_neg_re"] = uniform(g, 0.05, 0.6, DLR["n"])
    inputs = {k: v for k, v in p.items() if k in ref.inputs}
    inputs["u"] = randn(g, B, T, DLR["d_model"])
    return inputs, randn(g, N, DLR["d_model"], DLR["n"], dtype=C128)


def dlr_kernel(inputs, h0):
    """DLR (Gupta, Mehta, Berant 2022): K_k = Re(sum_n W_n lambda_n^k), lambda_n^k = exp(k Lambda_n),
    Lambda = -r^2 + i theta; y = K * u + D u."""
    Lam = -inputs["Lambda_log_neg_re"] ** 2 + 1j * inputs["Lambda_im"]
    W = torch.complex(inputs["W_re"], inputs["W_im"])
    u, T = inputs["u"], inputs["u"].shape[1]
    V = torch.exp(Lam[:, None] * torch.arange(T + 1, dtype=F64))                           # [n, T+1] powers
    K = (W @ V[:, :T]).real
    y = causal_conv(K, u) + inputs["D"] * u
    state = torch.einsum("nk,bkd->bdn", V[:, :T].flip(-1), u.to(C128))
    if h0 is not None:
        y = y + torch.einsum("dn,nt,bdn->btd", W, V[:, 1:], h0).real
        state = state + V[:, T] * h0
    return y, state


test_dlr_op_vs_kernel, test_dlr_varlen_vs_kernel = with_op_cases("dlr", DLR, make_dlr, dlr_kernel)


@spec("dlr")
def test_dlr_init_is_the_omega_ring(spec):
    p = our_ref("dlr", **DLR).init_params(7)
    n = DLR["n"]
    check("dlr", p["Lambda_im"], 2 * math.pi * torch.arange(n, dtype=F64) / n, "omega init", 1e-15)
    dt = 2 * p["Lambda_log_neg_re"] ** 2                              # Re Lambda = -dt/2
    assert ((dt >= 1e-4) & (dt <= 0.1)).all()


# ================================================================== S5 (M48)
S5 = dict(d_model=4, n=5)


def make_s5(ref, g, B, T, N):
    p = ref.init_params(8)
    p["log_dt"] = torch.log(uniform(g, 0.01, 0.5, S5["n"]))
    bu = randn(g, B, T, S5["n"], dtype=C128)
    return dict(bu=bu, Lambda_re=p["Lambda_re"] + 0.1 * randn(g, S5["n"]), Lambda_im=p["Lambda_im"],
                log_dt=p["log_dt"]), randn(g, N, S5["n"], dtype=C128)


def s5_parallel_scan(inputs, h0):
    """S5 (Smith et al. 2022), its parallel scan: inclusive scan of c_t = (Lambdabar, Bbar bu_t) with the operator
    (M, v) . (N, u) = (N M, N v + u), by recursive doubling. A prefix of k elements is (Lambdabar^k, x_k) (survey
    erratum E30), checked here; x_t = M_t x_0 + v_t carries the initial state."""
    lam = torch.complex(inputs["Lambda_re"], inputs["Lambda_im"])
    dt = torch.exp(inputs["log_dt"])
    Lb = torch.exp(lam * dt)
    Bb = (Lb - 1) / lam
    bu = inputs["bu"]
    T = bu.shape[1]
    M = Lb.expand(bu.shape).clone()
    v = Bb * bu
    offset = 1
    while offset < T:
        M_prev, v_prev = M[:, :-offset], v[:, :-offset]
        M, v = (torch.cat([M[:, :offset], M[:, offset:] * M_prev], 1),
                torch.cat([v[:, :offset], M[:, offset:] * v_prev + v[:, offset:]], 1))
        offset *= 2
    k = torch.arange(1, T + 1, dtype=F64)[:, None]
    check("s5", M, torch.exp(k * lam * dt).expand(M.shape), "scan prefix = Lambdabar^k (E30)")
    x = v if h0 is None else M * h0[:, None] + v
    return x, x[:, -1]


test_s5_op_vs_parallel_scan, test_s5_varlen_vs_parallel_scan = with_op_cases("s5", S5, make_s5, s5_parallel_scan)


@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_h0", "h0"])
@spec("s5")
def test_s5_layer_is_a_mimo_convolution(spec, with_h0):
    """y_t = sum_l K_l u_{t-l} + D u_t with the MIMO kernel K_l = 2 Re(Ctilde diag(Lambdabar^l) Bbar Btilde) [H, H]."""
    ref = our_ref("s5", **S5)
    p = ref.init_params(9)
    g = gen(9)
    H, n, T = S5["d_model"], S5["n"], 11
    x = randn(g, 2, T, H)
    h0 = randn(g, 2, n, dtype=C128) if with_h0 else None
    y, ht = ref.layer(x, p, initial_state=h0, output_final_state=True)
    lam = torch.complex(p["Lambda_re"], p["Lambda_im"])
    dt = torch.exp(p["log_dt"])
    Bt, Ct = torch.complex(p["B_re"], p["B_im"]), torch.complex(p["C_re"], p["C_im"])
    Lpow = torch.exp(lam * dt * torch.arange(T + 1, dtype=F64)[:, None])                  # [T+1, n]
    Bbar = ((torch.exp(lam * dt) - 1) / lam)[:, None] * Bt                                 # [n, H]
    K = 2 * torch.einsum("hn,ln,nj->lhj", Ct, Lpow[:T], Bbar).real                          # [T, H, H]
    y_ref = torch.zeros(2, T, H, dtype=F64)
    for t in range(T):
        for l in range(t + 1):
            y_ref[:, t] += x[:, t - l] @ K[l].T
    y_ref = y_ref + p["D"] * x
    state = torch.einsum("ln,nj,blj->bn", Lpow[:T].flip(0), Bbar, x.to(C128))
    if h0 is not None:
        y_ref = y_ref + 2 * torch.einsum("hn,tn,bn->bth", Ct, Lpow[1:], h0).real
        state = state + Lpow[T] * h0
    check("s5", (y, ht), (y_ref, state), "layer")


@spec("s5")
def test_s5_init_is_hippo_n(spec):
    p = our_ref("s5", **S5).init_params()
    ev = skew_hippo_evals(2 * S5["n"])[: S5["n"]]
    check("s5", (p["Lambda_re"], p["Lambda_im"]), (torch.full((S5["n"],), -0.5, dtype=F64), ev.imag), "HiPPO-N", 1e-12)


# ================================================================== Liquid-S4 (M49)
LIQUID = dict(d_model=2, n=3)
LIQUID_SHAPES = [(2, 1, False), (2, 6, True), (1, 9, False), (1, 9, True)]


def make_liquid(ref, g, B, T, N):
    p = ref.init_params(10)
    d, n = LIQUID["d_model"], LIQUID["n"]
    p["log_dt"] = torch.log(uniform(g, 0.05, 0.5, d))
    p["B_re"], p["B_im"] = p["B_re"] + 0.3 * randn(g, d, n), 0.3 * randn(g, d, n)
    inputs = {k: v for k, v in p.items() if k in ref.inputs}
    inputs["u"] = randn(g, B, T, d)
    return inputs, randn(g, N, d, n, dtype=C128)


def elementary_symmetric(xs: list[torch.Tensor], m: int, like: torch.Tensor) -> torch.Tensor:
    """e_m(x_1, ..., x_k): the sum over all m-subsets of the products (e_0 = 1)."""
    total = torch.zeros_like(like)
    for subset in itertools.combinations(xs, m):
        prod = torch.ones_like(like)
        for x in subset:
            prod = prod * x
        total = total + prod
    return total


def liquid_kernel_expansion(inputs, h0):
    """Liquid-S4 (Hasani et al. 2022): unrolling x_k = (Abar + Bbar u_k) x_{k-1} + Bbar u_k gives
        y_k = C x_k + D u_k,  x_k = sum_{j <= k} sum_m Abar^(k-j-m) Bbar^(m+1) u_j e_m(u_{j+1}, ..., u_k)
              + sum_m Abar^(k+1-m) Bbar^m e_m(u_0, ..., u_k) x_{-1},
    the S4 kernel (m = 0) plus the liquid kernels of every input-correlation order m (diagonal A: all commute).
    Bilinear: Abar = (1 + dt/2 A) / (1 - dt/2 A), Bbar = dt B / (1 - dt/2 A); output 2 Re(C x) + D u."""
    dt = torch.exp(inputs["log_dt"])[:, None]
    A = torch.complex(-torch.exp(inputs["A_log_re"]), inputs["A_im"])
    Bv, C = torch.complex(inputs["B_re"], inputs["B_im"]), torch.complex(inputs["C_re"], inputs["C_im"])
    Ab, Bb = (1 + dt / 2 * A) / (1 - dt / 2 * A), dt * Bv / (1 - dt / 2 * A)               # [d, n]
    u = inputs["u"]
    b, T, d = u.shape
    us = [u[:, t, :, None].to(C128) for t in range(T)]                                   # [b, d, 1] each
    xs = []
    for k in range(T):
        x = torch.zeros(b, d, Ab.shape[-1], dtype=C128)
        for j in range(k + 1):
            later = us[j + 1:k + 1]
            for m in range(len(later) + 1):
                x = x + Ab ** (k - j - m) * Bb ** (m + 1) * us[j] * elementary_symmetric(later, m, us[j])
        if h0 is not None:
            for m in range(k + 2):
                x = x + Ab ** (k + 1 - m) * Bb ** m * elementary_symmetric(us[:k + 1], m, us[0]) * h0
        xs.append(x)
    y = torch.stack([2 * torch.einsum("dn,bdn->bd", C, x).real for x in xs], 1) + inputs["D"] * u
    return y, xs[-1]


@pytest.mark.parametrize("B,T,with_h0", LIQUID_SHAPES, ids=shape_ids("liquid_s4", LIQUID_SHAPES))
def test_liquid_s4_op_vs_liquid_kernel_expansion(B, T, with_h0):
    run_op_case("liquid_s4", LIQUID, make_liquid, liquid_kernel_expansion, B, T, with_h0)


@spec("liquid_s4")
def test_liquid_s4_varlen_vs_liquid_kernel_expansion(spec):
    run_op_case("liquid_s4", LIQUID, make_liquid, liquid_kernel_expansion, 1, 12, True, seed=1, cu=[0, 1, 5, 12])


@spec("liquid_s4")
def test_liquid_s4_small_inputs_reduce_to_the_s4_kernel(spec):
    """The liquid terms are O(u^2): for tiny inputs the model is the bilinear diagonal SSM, y = K * u + D u with
    K_k = 2 Re(C Abar^k Bbar) (the m = 0 term alone); at O(1) inputs the liquid terms matter."""
    ref = our_ref("liquid_s4", **LIQUID)
    inputs, _ = make_liquid(ref, gen(11), 1, 8, 1)
    tiny = dict(inputs, u=inputs["u"] * 1e-6)
    o_tiny, _ = ref(**tiny)
    dt = torch.exp(inputs["log_dt"])[:, None]
    A = torch.complex(-torch.exp(inputs["A_log_re"]), inputs["A_im"])
    Ab = (1 + dt / 2 * A) / (1 - dt / 2 * A)
    Bb = dt * torch.complex(inputs["B_re"], inputs["B_im"]) / (1 - dt / 2 * A)
    C = torch.complex(inputs["C_re"], inputs["C_im"])
    K = 2 * torch.einsum("dn,dnk->dk", C * Bb, Ab[..., None] ** torch.arange(8, dtype=F64)).real
    y_lin = causal_conv(K, tiny["u"]) + inputs["D"] * tiny["u"]
    check("liquid_s4", o_tiny, y_lin, "small-input limit", 1e-5)
    o, _ = ref(**inputs)
    assert O.rel_err(o, causal_conv(K, inputs["u"]) + inputs["D"] * inputs["u"]) > 1e-3


# ================================================================== LaughingHyena (M58)
HYENA = dict(d_model=3, n=4)


def make_hyena(ref, g, B, T, N):
    p = ref.init_params(12)
    inputs = {k: v for k, v in p.items() if k in ref.inputs}
    inputs["u"] = randn(g, B, T, HYENA["d_model"])
    return inputs, randn(g, N, HYENA["d_model"], HYENA["n"], dtype=C128)


def hyena_modal_filter(inputs, h0):
    """LaughingHyena (Massaroli et al. 2023): the distilled filter h_0 = D, h_t = Re(sum_n R_n lambda_n^(t-1))
    (t >= 1), y = h * u (FFT); the prefilled state after T tokens x_T = sum_{s<T} lambda^(T-1-s) u_s (Vandermonde)."""
    loglam = torch.complex(-torch.exp(inputs["nu_log"]), inputs["theta"])                  # [d, n]
    R = torch.complex(inputs["R_re"], inputs["R_im"])
    u, T = inputs["u"], inputs["u"].shape[1]
    t = torch.arange(T + 1, dtype=F64)
    Vt = torch.exp(loglam[..., None] * t)                                                  # lambda^t, [d, n, T+1]
    h = torch.einsum("dn,dnt->dt", R, Vt[..., :T]).real                                   # Re(R lambda^(t-1)) at t+1
    K = torch.cat([inputs["h0"][:, None], h[:, :T - 1]], 1) if T else h
    y = causal_conv(K, u)
    state = torch.einsum("dns,bsd->bdn", Vt[..., :T].flip(-1), u.to(C128))
    if h0 is not None:
        y = y + torch.einsum("dn,dnt,bdn->btd", R, Vt[..., :T], h0).real
        state = state + Vt[..., T] * h0
    return y, state


test_hyena_op_vs_modal_filter, test_hyena_varlen_vs_modal_filter = with_op_cases(
    "laughing_hyena", HYENA, make_hyena, hyena_modal_filter)


@spec("laughing_hyena")
def test_hyena_layer_is_q_times_filtered_k_v(spec):
    """The Hyena operator of order 2 (erratum E37): y = W_out (q * (h * (k * v))), q, k, v short-convolved
    projections."""
    ref = our_ref("laughing_hyena", **HYENA)
    p = ref.init_params(13)
    x = randn(gen(13), 2, 10, HYENA["d_model"])
    y, _ = ref.layer(x, p)

    def proj(name):
        z = (x @ p[f"{name}_proj"].T).transpose(1, 2)                                    # [b, d, T]
        w = p[f"{name}_conv"]
        return F.conv1d(F.pad(z, (w.shape[1] - 1, 0)), w[:, None, :], groups=w.shape[0]).transpose(1, 2)

    q, k, v = proj("q"), proj("k"), proj("v")
    o, _ = hyena_modal_filter(dict(u=k * v, **{n: p[n] for n in ("nu_log", "theta", "R_re", "R_im", "h0")}), None)
    check("laughing_hyena", y, (q * o) @ p["y_proj"].T, "layer")


# ================================================================== RSA / REM (M24)
def rem_matrices(kind: str, T: int, d: int, lam=None, gamma=None, theta=None) -> torch.Tensor:
    """The paper's REMs entry by entry (s < t; dilation d: exponent (t-s)/d where d divides t-s, else 0)."""
    P = torch.zeros(T, T, dtype=F64)
    for t in range(T):
        for s in range(t):
            if (t - s) % d:
                continue
            m = (t - s) // d
            if kind == "R":
                P[t, s] = lam ** m
            elif kind == "C1":
                P[t, s] = gamma ** m * math.cos(m * theta)
            else:
                P[t, s] = gamma ** m * math.sin(m * theta)
    return P


RSA = dict(d_model=4, heads=3, dv=2, real_heads=1)


def make_rsa(dilation):
    def make(ref, g, B, T, N):
        p = ref.init_params(14)
        p["eta"] = torch.tensor([-0.8, 0.5, 1.1], dtype=F64)          # head 0 (real) has a negative lambda
        p["gate"] = randn(g, RSA["heads"])
        inputs = {k: v for k, v in p.items() if k in ref.inputs}
        inputs["v"] = randn(g, B, T, RSA["heads"], RSA["dv"])
        return inputs, randn(g, N, RSA["heads"], dilation, RSA["dv"], dtype=C128)

    return make


def rsa_rem_matrices(dilation):
    """o = sigmoid(mu) P V per head (RSA, Huang et al. 2023): P^R(lambda) for the real heads, P^C1 / P^C2
    (gamma, theta) for the cyclic ones; the state is checked through the d-th roots mu_k of the head's pole:
    S_T[k] = sum_s mu_k^(T-1-s) v_s (+ mu_k^T S_0[k]), with mu_k from the polar form."""

    def reference(inputs, h0):
        v = inputs["v"]
        B, T, H, dv = v.shape
        lam, gam, th = torch.tanh(inputs["eta"]), torch.sigmoid(inputs["g"]), inputs["theta"]
        gate = torch.sigmoid(inputs["gate"])
        o1, o2, finals = [], [], []
        for h in range(H):
            cyclic = h >= RSA["real_heads"]
            if cyclic:
                P1 = rem_matrices("C1", T, dilation, gamma=gam[h].item(), theta=th[h].item())
                P2 = rem_matrices("C2", T, dilation, gamma=gam[h].item(), theta=th[h].item())
                r, phi = gam[h].item(), th[h].item()
            else:
                P1, P2 = rem_matrices("R", T, dilation, lam=lam[h].item()), torch.zeros(T, T, dtype=F64)
                r, phi = abs(lam[h].item()), (math.pi if lam[h] < 0 else 0.0)
            a = gate[h] * torch.einsum("ts,bsv->btv", P1, v[:, :, h])
            b = gate[h] * torch.einsum("ts,bsv->btv", P2, v[:, :, h])
            mu = torch.tensor([r ** (1 / dilation) * complex(math.cos((phi + 2 * math.pi * k) / dilation),
                                                              math.sin((phi + 2 * math.pi * k) / dilation))
                               for k in range(dilation)], dtype=C128)
            powers = mu[:, None] ** torch.arange(T + 1, dtype=F64)                         # [k, T+1]
            S = torch.einsum("ks,bsv->bkv", powers[:, :T].flip(-1), v[:, :, h].to(C128))
            if h0 is not None:
                z0 = torch.einsum("kt,bkv->btv", powers[:, 1:], h0[:, h]) / dilation      # mean_k mu_k^(t+1) S_0[k]
                a, b = a + gate[h] * z0.real, b + gate[h] * z0.imag
                S = S + powers[:, T, None] * h0[:, h]
            o1.append(a)
            o2.append(b)
            finals.append(S)
        return (torch.stack(o1, 2), torch.stack(o2, 2)), torch.stack(finals, 1)

    return reference


@pytest.mark.parametrize("dilation", [1, 2, 3])
@pytest.mark.parametrize("B,T,with_h0", SHAPES, ids=shape_ids("rsa_rem", SHAPES))
def test_rsa_rem_op_vs_rem_matrices(dilation, B, T, with_h0):
    run_op_case("rsa_rem", dict(RSA, dilation=dilation), make_rsa(dilation), rsa_rem_matrices(dilation), B, T,
                with_h0)


@pytest.mark.parametrize("dilation", [1, 2])
@spec("rsa_rem")
def test_rsa_rem_varlen_vs_rem_matrices(spec, dilation):
    run_op_case("rsa_rem", dict(RSA, dilation=dilation), make_rsa(dilation), rsa_rem_matrices(dilation), 1,
                CU_SEQLENS[-1], True, seed=1, cu=CU_SEQLENS)


@pytest.mark.parametrize("mode", ["scan", "chunk"])
@spec("rsa_rem")
def test_rsa_rem_dilated_generated_forms_match(spec, mode):
    """The shared backend tests run the default (dilation 1); the dilated roots axis is checked here once."""
    m = seqdsl.load(EXAMPLES / "rsa_rem.seq", **RSA, dilation=3)
    ref = seqdsl.reference(m)
    inputs, h0 = make_rsa(3)(ref, gen(15), 2, 19, 2)
    op = seqdsl.compile(m, backend="torch")
    (a, b), ht = op(**inputs, initial_state=h0, output_final_state=True, mode=mode, chunk_size=8)
    (a_ref, b_ref), ht_ref = rsa_rem_matrices(3)(inputs, h0)
    check("rsa_rem", (a, b, ht), (a_ref, b_ref, ht_ref), f"{mode} form", 1e-9)
