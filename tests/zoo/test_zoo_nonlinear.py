"""Zoo: nonlinear recurrent cells against independent references (DESIGN §7, link 1).

Elman (M01), Jordan (M02), CT-RNN (M03), GRU, UR-LSTM (M63), IndRNN (M59), SRU (M61), sLSTM (M66),
Recurrent DeltaNet (M11), SRWM (M12), HiPPO-RNN (M42), LMU (M43), LTC (M71), LipschitzRNN (M73),
coRNN (M74) and the echo state network (M80).

Elman and GRU run against ``torch.nn.RNN`` / ``torch.nn.GRU`` with the weights copied in. Every other
reference is written here in plain torch from the original paper's equations (never from the spec or the
interpreter), where possible in another form than the spec's: the refine gate as 2 r f + (1 - 2 r) f^2,
SRWM as one stacked weight matrix with a per-block rate, the LMU's zero-order hold by the exponential of
the augmented matrix [[A, B], [0, 0]] (Taylor series with squaring), HiPPO's GBT step by triangular solves,
coRNN's explicit variant as the released cell (one nn.Linear over [u, z, y]). Each case runs the whole layer
``ref.layer(x, params)`` with every parameter randomised (so that each one counts), with and without an
initial state, and compares the output and every final state in fp64 to 1e-10 (max error relative to
the peak, oracles.rel_err). Extra checks: the CT-RNN discretiser converges to an RK4 solution of its ODE at
first order, LTC's fused solver stops at the ODE's equilibrium, the sLSTM stabiliser leaves h unchanged,
and the spec initialisers are the papers' (HiPPO-LegS, LegT / LMU, uniform gate initialisation, the ESN
reservoir's spectral radius and density).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import oracles as O
import seqdsl
from zoo_common import EXAMPLES, F64, TOL, gen, our_ref, randn  # noqa: F401

B, T = 2, 13


def lin(x, w, b=None):
    return x @ w.T if b is None else x @ w.T + b


def spec(name: str):
    """Put the model's name in the test id: `seqdsl zoo` finds a model's tests by its name in the node id."""
    return pytest.mark.parametrize("spec", [name])


def check(model: str, ours, theirs, what: str, tol: float = TOL) -> float:
    return O.assert_matches(model, ours, theirs, tol, what)


def randomised(ref, seed: int, positive=()) -> dict:
    """init_params with every learned tensor moved by N(0, 0.3^2) (zero biases and zero-initialised weights
    count too); the names in ``positive`` are kept > 0. Fixed tensors (buffers) stay as the spec makes them."""
    g = gen(seed)
    fixed = {p.name for p in ref.model.params if p.fixed}
    params = ref.init_params(seed)
    for k, v in params.items():
        if k not in fixed:
            v = v + 0.3 * randn(g, *v.shape)
            params[k] = v.abs() + 0.5 if k in positive else v
    return params


def initial_states(ref, seed: int, positive=()) -> dict:
    """A random initial value for every state, by name ([B, (H), *dims])."""
    g = gen(seed)
    c = ref.checked
    out = {}
    for st in ref.model.cell.states:
        axis = (c.dim_sizes[c.cell_axis],) if c.cell_axis else ()
        dims = axis + tuple(c.dim_sizes[d] for d in c.cell_types[st.name].dims)
        v = 0.5 * randn(g, B, *dims)
        out[st.name] = v.abs() + 0.5 if st.name in positive else v
    return out


def run_layer_case(model, hparams, reference, with_h0, seed=0, positive_params=(), positive_states=()):
    """ref.layer(x, params) against reference(x, params, h0 | None) -> (y, final states in declaration order)."""
    ref = our_ref(model, **hparams)
    params = randomised(ref, seed, positive_params)
    x = randn(gen(seed + 100), B, T, ref.checked.dim_sizes["d_model"])
    h0 = initial_states(ref, seed + 200, positive_states) if with_h0 else None
    order = [s.name for s in ref.model.cell.states]
    y, ht = ref.layer(x, params, initial_state=None if h0 is None else tuple(h0[s] for s in order),
                      output_final_state=True)
    y_ref, ht_ref = reference(x, params, h0, ref.checked.values)
    check(model, y, y_ref, "layer output")
    check(model, ht, ht_ref, "final state")


def state(h0, name, *shape):
    return torch.zeros(*shape, dtype=F64) if h0 is None else h0[name].clone()


# ================================================================== the references
def elman_torch_rnn(x, P, h0, hp):
    """torch.nn.RNN (tanh), weights copied in, then the linear head."""
    rnn = torch.nn.RNN(hp["d_model"], hp["hidden"], nonlinearity="tanh", batch_first=True, dtype=F64)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(P["xh_proj"])
        rnn.bias_ih_l0.copy_(P["xh_proj_bias"])
        rnn.weight_hh_l0.copy_(P["W_h"])
        rnn.bias_hh_l0.copy_(P["b_h"])
        out, h_n = rnn(x, None if h0 is None else h0["h"][None])
    return out @ P["y_proj"].T, h_n[0]


def gru_torch_gru(x, P, h0, hp):
    """torch.nn.GRU: gates r, z, n stacked in that order; b_hn inside r * (W_hn h + b_hn)."""
    H = hp["hidden"]
    gru = torch.nn.GRU(hp["d_model"], H, batch_first=True, dtype=F64)
    with torch.no_grad():
        gru.weight_ih_l0.copy_(torch.cat([P["xr_proj"], P["xz_proj"], P["xn_proj"]]))
        gru.bias_ih_l0.copy_(torch.cat([P["xr_proj_bias"], P["xz_proj_bias"], P["xn_proj_bias"]]))
        gru.weight_hh_l0.copy_(torch.cat([P["U_r"], P["U_z"], P["U_n"]]))
        gru.bias_hh_l0.copy_(torch.cat([torch.zeros(2 * H, dtype=F64), P["b_hn"]]))
        out, h_n = gru(x, None if h0 is None else h0["h"][None])
    return out @ P["y_proj"].T, h_n[0]


def jordan_paper(x, P, h0, hp):
    """Jordan (1986): state units s_t = mu s_{t-1} + y_{t-1}; hidden and output units logistic."""
    s, yo = state(h0, "s", B, hp["d_model"]), state(h0, "out_units", B, hp["d_model"])
    ys = []
    for t in range(x.shape[1]):
        s = hp["mu"] * s + yo
        hidden = torch.sigmoid(lin(x[:, t], P["xh_proj"], P["xh_proj_bias"]) + s @ P["W_s"].T)
        yo = torch.sigmoid(hidden @ P["W_y"].T + P["b_y"])
        ys.append(yo)
    return torch.stack(ys, 1), (s, yo)


def ctrnn_theta_step(x, P, h0, hp):
    """Survey Eq. (3), dx/dt = -x + tanh(A x + B u + b), one step of size dt per token: the drive explicit,
    the linear leak by the theta-method x_t = x_{t-1} + dt ((1 - a)(-x_{t-1}) + a (-x_t) + drive)."""
    dt, a = hp["dt"], hp["alpha"]
    h = state(h0, "h", B, hp["hidden"])
    hs = []
    for t in range(x.shape[1]):
        drive = torch.tanh(h @ P["A"].T + lin(x[:, t], P["bu_proj"], P["bu_proj_bias"]))
        h = (h + dt * ((1 - a) * -h + drive)) / (1 + a * dt)       # the implicit -a dt x_t moved to the left
        hs.append(h)
    o = torch.stack(hs, 1)
    return torch.tanh(lin(o, P["y_proj"], P["y_proj_bias"]) + x @ P["y_proj1"].T), h


def ur_lstm_paper(x, P, h0, hp):
    """Gu et al. 2020, UR-LSTM: refine gate with bias -b_f, effective gate 2 r f + (1 - 2 r) f^2 (the paper's
    listing), input gate tied to 1 - g."""
    c, h = state(h0, "c", B, hp["hidden"]), state(h0, "h", B, hp["hidden"])
    hs = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        f = torch.sigmoid(xt @ P["xf_proj"].T + h @ P["U_f"].T + P["b_f"])
        r = torch.sigmoid(xt @ P["xr_proj"].T + h @ P["U_r"].T - P["b_f"])
        g = 2 * r * f + (1 - 2 * r) * f ** 2
        u = torch.tanh(lin(xt, P["xu_proj"], P["xu_proj_bias"]) + h @ P["U_u"].T)
        o = torch.sigmoid(lin(xt, P["xo_proj"], P["xo_proj_bias"]) + h @ P["U_o"].T)
        c = g * c + (1 - g) * u
        h = o * torch.tanh(c)
        hs.append(h)
    return torch.stack(hs, 1) @ P["y_proj"].T, (c, h)


def indrnn_paper(x, P, h0, hp):
    """Li et al. 2018: h_t = relu(W x_t + u * h_{t-1} + b)."""
    h = state(h0, "h", B, hp["hidden"])
    hs = []
    for t in range(x.shape[1]):
        h = F.relu(lin(x[:, t], P["xh_proj"], P["xh_proj_bias"]) + P["u"] * h)
        hs.append(h)
    return torch.stack(hs, 1) @ P["y_proj"].T, h


def sru_paper(x, P, h0, hp):
    """Lei et al. 2018, Eq. (3)-(6) with both gates reading c_{t-1}; highway scaled by sqrt(1 + 2 e^0)."""
    alpha = math.sqrt(1 + 2 * math.exp(0.0))
    c = state(h0, "c", B, hp["d_model"])
    hs = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        f = torch.sigmoid(xt @ P["W_f"].T + P["v_f"] * c + P["b_f"])
        r = torch.sigmoid(xt @ P["W_r"].T + P["v_r"] * c + P["b_r"])
        c = f * c + (1 - f) * (xt @ P["W"].T)
        hs.append(r * c + (1 - r) * xt * alpha)
    return torch.stack(hs, 1), c


def slstm_paper(x, P, h0, hp):
    """xLSTM §2.2 sLSTM with the stabiliser, in the released sLSTMLayer (conv4 + SiLU for i and f, per-head
    GroupNorm); also the unstabilised cell (c / n with exp gates), which must give the same h."""
    H, D = hp["heads"], hp["d_model"]
    dk = D // H
    w = P["xc_conv"]                                                   # [D, width]
    xc = F.silu(F.conv1d(F.pad(x.transpose(1, 2), (w.shape[1] - 1, 0)), w[:, None, :], groups=D).transpose(1, 2))
    heads = lambda v: v.reshape(B, -1, H, dk)                          # noqa: E731
    i_pre = heads(lin(xc, P["i_proj"], P["i_proj_bias"]))
    f_pre = heads(xc @ P["f_proj"].T) + P["f_bias"]
    z_pre = heads(lin(x, P["z_proj"], P["z_proj_bias"]))
    o_pre = heads(lin(x, P["og_proj"], P["og_proj_bias"]))
    rec = lambda R, h: torch.einsum("hij,bhj->bhi", R, h)              # noqa: E731  block-diagonal R h_{t-1}
    c, n, m, h = (state(h0, s, B, H, dk) for s in "cnmh")
    cu, nu, hu = c * torch.exp(m), n * torch.exp(m), h.clone()       # the unstabilised cell: c_true = c e^m
    hs, hs_u = [], []
    for t in range(x.shape[1]):
        it = i_pre[:, t] + rec(P["R_i"], h)
        logf = F.logsigmoid(f_pre[:, t] + rec(P["R_f"], h))
        m_new = torch.maximum(logf + m, it)
        i_s, f_s = torch.exp(it - m_new), torch.exp(logf + m - m_new)
        c = f_s * c + i_s * torch.tanh(z_pre[:, t] + rec(P["R_z"], h))
        n = f_s * n + i_s
        m = m_new
        h = torch.sigmoid(o_pre[:, t] + rec(P["R_o"], h)) * c / n
        hs.append(h)
        ig, fg = torch.exp(i_pre[:, t] + rec(P["R_i"], hu)), torch.sigmoid(f_pre[:, t] + rec(P["R_f"], hu))
        cu = fg * cu + ig * torch.tanh(z_pre[:, t] + rec(P["R_z"], hu))
        nu = fg * nu + ig
        hu = torch.sigmoid(o_pre[:, t] + rec(P["R_o"], hu)) * cu / nu
        hs_u.append(hu)
    check("slstm", torch.stack(hs, 1), torch.stack(hs_u, 1), "stabilised h = unstabilised h")
    hseq = torch.stack(hs, 1).reshape(-1, D)
    normed = F.group_norm(hseq, H, weight=P["norm_w"].reshape(D), eps=1e-5).reshape(B, -1, D)
    return normed @ P["y_proj"].T, (c, n, m, h)


def recurrent_deltanet_paper(x, P, h0, hp):
    """Irie et al. 2021, RDN: q, k, v, beta fed tanh(y_{t-1}) through R_q, R_k, R_v, r_b; phi = softmax;
    delta rule on the fast weights; y_t = W_t phi(q_t). LayerNorm on the input, an output projection."""
    H, dk, dv = hp["heads"], hp["dk"], hp["dv"]
    xn = F.layer_norm(x, (hp["d_model"],), P["xn_norm"], P["xn_norm_bias"], eps=1e-5)
    q_x = (xn @ P["qx_proj"].T).reshape(B, -1, H, dk)
    k_x = (xn @ P["kx_proj"].T).reshape(B, -1, H, dk)
    v_x = (xn @ P["vx_proj"].T).reshape(B, -1, H, dv)
    b_x = xn @ P["bx_proj"].T
    W, y = state(h0, "S", B, H, dk, dv), state(h0, "y_prev", B, H, dv)
    ys = []
    for t in range(x.shape[1]):
        s = torch.tanh(y)
        q = torch.softmax(q_x[:, t] + torch.einsum("bhe,hem->bhm", s, P["R_q"]), -1)
        k = torch.softmax(k_x[:, t] + torch.einsum("bhe,hem->bhm", s, P["R_k"]), -1)
        v = v_x[:, t] + torch.einsum("bhe,hem->bhm", s, P["R_v"])
        beta = torch.sigmoid(b_x[:, t] + (P["r_b"] * s).sum(-1))
        v_old = torch.einsum("bhkv,bhk->bhv", W, k)
        W = W + beta[..., None, None] * k[..., :, None] * (v - v_old)[..., None, :]
        y = torch.einsum("bhkv,bhk->bhv", W, q)
        ys.append(y)
    return torch.stack(ys, 1).flatten(2) @ P["y_proj"].T, (W, y)


def srwm_paper(x, P, h0, hp):
    """Irie et al. 2022, SRWM on the whole matrix W = [W_y, W_q, W_k, W_b] ([in, out] per head):
    [y, q, k, beta] = x W_{t-1}, q, k softmax, beta sigmoid (one rate per block, as the released kernel);
    W_t = W_{t-1} + phi(k) (rate * (phi(q) W_{t-1} - phi(k) W_{t-1}))."""
    H, dk, dv = hp["heads"], hp["dk"], hp["dv"]
    sizes = [dv, dk, dk, 4]
    W0 = torch.cat([P["Wy0"], P["Wq0"], P["Wk0"], P["Wb0"]], -1).expand(B, H, dk, sum(sizes))
    shift = 0 if h0 is None else torch.cat([h0["Dy"], h0["Dq"], h0["Dk"], h0["Db"]], -1)
    Wm = W0 + shift
    u = (x @ P["u_proj"].T).reshape(B, -1, H, dk)
    ys = []
    for t in range(x.shape[1]):
        y, q, k, b = torch.split(torch.einsum("bhi,bhio->bho", u[:, t], Wm), sizes, -1)
        q, k, b = torch.softmax(q, -1), torch.softmax(k, -1), torch.sigmoid(b)
        rate = torch.cat([b[..., j:j + 1].expand(B, H, n) for j, n in enumerate(sizes)], -1)
        diff = torch.einsum("bhi,bhio->bho", q, Wm) - torch.einsum("bhi,bhio->bho", k, Wm)
        Wm = Wm + k[..., :, None] * (rate * diff)[..., None, :]
        ys.append(y)
    return torch.stack(ys, 1).flatten(2) @ P["y_proj"].T, tuple(torch.split(Wm - W0, sizes, -1))


def legs_paper(n: int):
    """HiPPO-LegS (Gu et al. 2020, Thm. 2), positive convention: dc/dt = -(1/t) A c + (1/t) B f."""
    A = torch.zeros(n, n, dtype=F64)
    for i in range(n):
        for k in range(i + 1):
            A[i, k] = math.sqrt((2 * i + 1) * (2 * k + 1)) if i > k else i + 1
    return A, torch.tensor([math.sqrt(2 * i + 1) for i in range(n)], dtype=F64)


def hippo_rnn_paper(x, P, h0, hp):
    """HiPPO-RNN (gated cell of the release): f from (x_t, h_{t-1}), the LegS memory by the GBT step (by
    triangular solves), the gated update reading the new memory."""
    n, a = hp["n"], hp["alpha"]
    A, Bv = legs_paper(n)
    I = torch.eye(n, dtype=F64)
    c, h = state(h0, "c", B, n), state(h0, "h", B, hp["hidden"])
    hs = []
    for t in range(x.shape[1]):
        k = t + 1.0
        f = x[:, t] @ P["w_x"] + P["b_f"] + h @ P["w_h"]
        rhs = c @ (I - (1 - a) * A / k).T + f[:, None] * Bv / k
        c = torch.linalg.solve_triangular(I + a * A / k, rhs.T, upper=False).T
        g = torch.sigmoid(lin(x[:, t], P["gx_proj"], P["gx_proj_bias"]) + c @ P["W_gc"].T)
        h = (1 - g) * h + g * torch.tanh(lin(x[:, t], P["hx_proj"], P["hx_proj_bias"]) + c @ P["W_c"].T)
        hs.append(h)
    return torch.stack(hs, 1) @ P["y_proj"].T, (c, h)


def lmu_matrices(n: int):
    """Voelker et al. 2019, Eq. (2): A[i, j] = (2i+1) * (-1 if i < j else (-1)^(i-j+1)), B_i = (2i+1) (-1)^i."""
    A = torch.tensor([[(2 * i + 1) * (-1.0 if i < j else (-1.0) ** (i - j + 1)) for j in range(n)] for i in range(n)],
                     dtype=F64)
    return A, torch.tensor([(2 * i + 1) * (-1.0) ** i for i in range(n)], dtype=F64)


def expm_taylor(M: torch.Tensor) -> torch.Tensor:
    """exp(M) by scaling and squaring a 30-term Taylor series (no torch.linalg.matrix_exp)."""
    s = max(0, int(math.ceil(math.log2(max(M.abs().sum(-1).max().item(), 1e-300)))) + 1)
    Ms = M / 2 ** s
    out, term = torch.eye(M.shape[0], dtype=F64), torch.eye(M.shape[0], dtype=F64)
    for k in range(1, 30):
        term = term @ Ms / k
        out = out + term
    for _ in range(s):
        out = out @ out
    return out


def lmu_zoh(n: int, theta: float):
    """ZOH with a unit step of theta m' = A m + B u, from exp([[A, B], [0, 0]] / theta) (Abar, Bbar blocks)."""
    A, Bv = lmu_matrices(n)
    aug = torch.zeros(n + 1, n + 1, dtype=F64)
    aug[:n, :n], aug[:n, n] = A / theta, Bv / theta
    E = expm_taylor(aug)
    return E[:n, :n], E[:n, n]


def lmu_paper(x, P, h0, hp):
    """Voelker et al. 2019, Eq. (5)-(7): u from x, h_{t-1}, m_{t-1}; m_t = Abar m + Bbar u; h from m_t."""
    Abar, Bbar = lmu_zoh(hp["n"], hp["theta"])
    m, h = state(h0, "m", B, hp["n"]), state(h0, "h", B, hp["hidden"])
    hs = []
    for t in range(x.shape[1]):
        u = x[:, t] @ P["e_x"] + h @ P["e_h"] + m @ P["e_m"]
        m = m @ Abar.T + u[:, None] * Bbar
        h = torch.tanh(x[:, t] @ P["W_x"].T + h @ P["W_h"].T + m @ P["W_m"].T)
        hs.append(h)
    return torch.stack(hs, 1) @ P["y_proj"].T, (m, h)


def ltc_fused_solver(x, P, h0, hp, unfolds=6):
    """Hasani et al. 2021, Eq. (1) with the fused solver Eq. (3), unfolded L times per input (Algorithm 1)."""
    dt = hp["dt"]
    h = state(h0, "h", B, hp["hidden"])
    hs = []
    for t in range(x.shape[1]):
        inp = lin(x[:, t], P["fi_proj"], P["fi_proj_bias"])
        for _ in range(unfolds):
            f = torch.sigmoid(h @ P["W_r"].T + inp)
            h = (h + dt * f * P["A"]) / (1 + dt * (1 / P["tau"] + f))
        hs.append(h)
    return torch.stack(hs, 1) @ P["y_proj"].T, h


def lipschitz_paper(x, P, h0, hp):
    """Erichson et al. 2021, Eq. (3)-(4): A_beta, W_beta from M_A, M_W; forward Euler with step eps."""
    I = torch.eye(hp["hidden"], dtype=F64)

    def structured(M, gamma):
        return (1 - hp["beta"]) * (M + M.T) + hp["beta"] * (M - M.T) - gamma * I

    A, W = structured(P["M_A"], hp["gamma_a"]), structured(P["M_W"], hp["gamma_w"])
    h = state(h0, "h", B, hp["hidden"])
    hs = []
    for t in range(x.shape[1]):
        h = h + hp["eps"] * (h @ A.T + torch.tanh(h @ W.T + lin(x[:, t], P["ux_proj"], P["ux_proj_bias"])))
        hs.append(h)
    return lin(torch.stack(hs, 1), P["y_proj"], P["y_proj_bias"]), h


def cornn_paper(x, P, h0, hp):
    """Rusch & Mishra 2021, Eq. (3): IMEX, the damping implicit (nbar = n) or explicit (nbar = n - 1, then as
    the released coRNNCell: one nn.Linear over [u, z, y])."""
    dt, gamma, eps = hp["dt"], hp["gamma"], hp["epsilon"]
    y, z = state(h0, "hy", B, hp["hidden"]), state(h0, "hz", B, hp["hidden"])
    i2h = torch.nn.Linear(hp["d_model"] + 2 * hp["hidden"], hp["hidden"], dtype=F64)
    with torch.no_grad():
        i2h.weight.copy_(torch.cat([P["vu_proj"], P["W_z"], P["W"]], 1))
        i2h.bias.copy_(P["vu_proj_bias"])
    ys = []
    for t in range(x.shape[1]):
        if hp["implicit"] == 1:
            sigma = torch.tanh(y @ P["W"].T + z @ P["W_z"].T + lin(x[:, t], P["vu_proj"], P["vu_proj_bias"]))
            z = (z + dt * sigma - dt * gamma * y) / (1 + dt * eps)
        else:
            with torch.no_grad():
                z = z + dt * (torch.tanh(i2h(torch.cat((x[:, t], z, y), 1))) - gamma * y - eps * z)
        y = y + dt * z
        ys.append(y)
    return torch.stack(ys, 1) @ P["y_proj"].T, (y, z)


def esn_paper(x, P, h0, hp):
    """Jaeger 2001 / Jaeger et al. 2007: leaky-integrator reservoir, linear readout of [1; u; r]."""
    a = hp["leak"]
    r = state(h0, "r", B, hp["n"])
    rs = []
    for t in range(x.shape[1]):
        r = (1 - a) * r + a * torch.tanh(x[:, t] @ P["W_in"].T + P["b_in"] + r @ P["W"].T)
        rs.append(r)
    return lin(torch.stack(rs, 1), P["y_proj"], P["y_proj_bias"]) + x @ P["y_proj1"].T, r


# ================================================================== the cases
SMALL = dict(d_model=5, hidden=7)
CASES = {   # model: (hparams, reference, params kept positive, states kept positive)
    "elman": (SMALL, elman_torch_rnn, (), ()),
    "jordan": (dict(SMALL, mu=0.5), jordan_paper, (), ()),
    "ctrnn": (dict(SMALL, dt=0.1, alpha=0.0), ctrnn_theta_step, (), ()),
    "gru": (SMALL, gru_torch_gru, (), ()),
    "ur_lstm": (SMALL, ur_lstm_paper, (), ()),
    "indrnn": (SMALL, indrnn_paper, (), ()),
    "sru": (dict(d_model=6), sru_paper, (), ()),
    "slstm": (dict(d_model=8, heads=2), slstm_paper, (), ("n",)),
    "recurrent_deltanet": (dict(d_model=6, heads=2, dk=3, dv=4), recurrent_deltanet_paper, (), ()),
    "srwm": (dict(d_model=6, heads=2, dk=3, dv=4), srwm_paper, (), ()),
    "hippo_rnn": (dict(SMALL, n=6), hippo_rnn_paper, (), ()),
    "lmu": (dict(SMALL, n=6, theta=9.0), lmu_paper, (), ()),
    "ltc": (SMALL, ltc_fused_solver, ("tau",), ()),
    "lipschitz_rnn": (dict(SMALL, eps=0.3, beta=0.75, gamma_a=0.2, gamma_w=0.1), lipschitz_paper, (), ()),
    "cornn": (dict(SMALL, implicit=1.0), cornn_paper, (), ()),
    "esn": (dict(d_model=5, n=12, density=0.4), esn_paper, (), ()),
}


@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_h0", "h0"])
@pytest.mark.parametrize("model", list(CASES))
def test_layer_matches_the_paper(model, with_h0):
    hparams, reference, pos_params, pos_states = CASES[model]
    run_layer_case(model, hparams, reference, with_h0, positive_params=pos_params, positive_states=pos_states)


@pytest.mark.parametrize("mu", [0.0, 0.9], ids=["jordan-mu0", "jordan-mu0.9"])
def test_jordan_state_units(mu):
    """mu = 0 is the catalog's x_t = sigma(A y_{t-1} + B u_t), y_t = sigma(C x_t)."""
    run_layer_case("jordan", dict(SMALL, mu=mu), jordan_paper, True, seed=1)


@pytest.mark.parametrize("dt,alpha", [(0.1, 1.0), (0.7, 0.5), (2.0, 1.0)], ids=["ctrnn-semi_implicit",
                                                                                  "ctrnn-trapezoid_leak",
                                                                                  "ctrnn-stiff_step"])
def test_ctrnn_discretisers(dt, alpha):
    run_layer_case("ctrnn", dict(SMALL, dt=dt, alpha=alpha), ctrnn_theta_step, True, seed=2)


@spec("ctrnn")
def test_ctrnn_unit_euler_step_is_the_elman_rnn(spec):
    """Survey §2: with dt = 1 (forward Euler) Eq. (3) is Eq. (2); the cell output against torch.nn.RNN."""
    ref = our_ref("ctrnn", **SMALL, dt=1.0, alpha=0.0)
    P = randomised(ref, 3)
    x, h0 = randn(gen(3), B, T, 5), randn(gen(4), B, 7)
    o, ht = ref(**ref.op_inputs(x, P), initial_state=h0, output_final_state=True)
    rnn = torch.nn.RNN(5, 7, nonlinearity="tanh", batch_first=True, dtype=F64)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(P["bu_proj"])
        rnn.bias_ih_l0.copy_(P["bu_proj_bias"])
        rnn.weight_hh_l0.copy_(P["A"])
        rnn.bias_hh_l0.zero_()
        out, h_n = rnn(x, h0[None])
    check("ctrnn", (o, ht), (out, h_n[0]), "dt = 1 vs torch.nn.RNN")


@pytest.mark.parametrize("alpha", [0.0, 1.0], ids=["ctrnn-euler", "ctrnn-semi_implicit"])
def test_ctrnn_converges_to_the_ode(alpha):
    """The discretised CT-RNN fed u(t_k), t_k = k dt, approaches the ODE's solution on [0, 1] (RK4 with 4000
    steps of the continuous input u(t)) at first order: halving dt halves the error."""
    D, H = 2, 3
    ref0 = our_ref("ctrnn", d_model=D, hidden=H, dt=0.1, alpha=alpha)
    P = randomised(ref0, 5)
    A, W, b = P["A"], P["bu_proj"], P["bu_proj_bias"]
    u = lambda s: torch.stack([torch.sin(3 * s), torch.cos(2 * s) + s]).to(F64)   # noqa: E731

    def rhs(s, xs):
        return -xs + torch.tanh(A @ xs + W @ u(torch.tensor(s, dtype=F64)) + b)

    xs, n_fine = torch.zeros(H, dtype=F64), 4000
    hstep = 1.0 / n_fine
    for k in range(n_fine):
        s = k * hstep
        k1 = rhs(s, xs)
        k2 = rhs(s + hstep / 2, xs + hstep / 2 * k1)
        k3 = rhs(s + hstep / 2, xs + hstep / 2 * k2)
        k4 = rhs(s + hstep, xs + hstep * k3)
        xs = xs + hstep / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    errors = []
    for steps in (50, 100, 200):
        ref = our_ref("ctrnn", d_model=D, hidden=H, dt=1.0 / steps, alpha=alpha)
        tk = torch.arange(1, steps + 1, dtype=F64) / steps
        inputs = ref.op_inputs(u(tk).T[None], P)
        _, final = ref(**inputs, output_final_state=True)
        errors.append((final[0] - xs).abs().max().item())
    assert errors[2] < 0.6 * errors[1] < 0.36 * errors[0] and errors[2] < 2e-2, f"errors {errors}"


@pytest.mark.parametrize("implicit", [0.0, 1.0], ids=["cornn-explicit_release", "cornn-implicit"])
def test_cornn_imex_variants(implicit):
    run_layer_case("cornn", dict(SMALL, implicit=implicit, dt=0.3), cornn_paper, True, seed=4)


@spec("ltc")
def test_ltc_fused_solver_stops_at_the_odes_equilibrium(spec):
    """Held input: the fused step's fixed point x = (x + dt f A) / (1 + dt (1/tau + f)) is where Eq. (1)'s
    right-hand side -(1/tau + f) x + f A vanishes; the cell gets there."""
    ref = our_ref("ltc", **SMALL)
    P = randomised(ref, 6, positive=("tau",))
    P["W_r"] = P["W_r"] * 0.3
    x = randn(gen(6), 1, 1, 5).expand(1, 300, 5).contiguous()
    inputs = ref.op_inputs(x, P)
    _, h = ref(**inputs, output_final_state=True)
    f = torch.sigmoid(h @ P["W_r"].T + inputs["fi"][:, -1])
    residual = -(1 / P["tau"] + f) * h + f * P["A"]
    assert residual.abs().max() < 1e-10 and h.abs().max() > 1e-3


@spec("slstm")
def test_slstm_stabiliser_keeps_h_at_large_gates(spec):
    """Input-gate preactivations of +-40 (exp(40) ~ 2e17): the stabilised cell's h still equals the
    unstabilised one's computed in fp64, and c, n stay bounded by the stabiliser."""
    ref = our_ref("slstm", d_model=8, heads=2)
    P = randomised(ref, 7)
    P["i_proj_bias"] = P["i_proj_bias"] + 40 * torch.sign(randn(gen(8), 8))
    x = randn(gen(7), B, T, 8)
    y, (c, n, m, h) = ref.layer(x, P, output_final_state=True)
    y_ref, _ = slstm_paper(x, P, None, ref.checked.values)
    check("slstm", y, y_ref, "large input gates")
    assert n.abs().max() < 1e3 and m.abs().max() > 30


# ------------------------------------------------------------------ the papers' initialisations
@spec("hippo_rnn")
def test_hippo_rnn_memory_is_hippo_legs(spec):
    p = our_ref("hippo_rnn", **SMALL, n=6).init_params()
    A, Bv = legs_paper(6)
    check("hippo_rnn", (p["A"], p["B"]), (-A, Bv), "HiPPO-LegS A, B", 1e-15)


@spec("lmu")
def test_lmu_matrices_and_zoh_are_the_papers(spec):
    theta = 9.0
    q = our_ref("lmu", **SMALL, n=6, theta=theta).init_params()
    Abar, Bbar = lmu_zoh(6, theta)
    A_lmu, B_lmu = lmu_matrices(6)
    check("lmu", q["B"], B_lmu, "LMU B", 1e-15)
    check("lmu", (q["Abar"], q["Bzoh"] @ q["B"]), (Abar, Bbar), "ZOH Abar, Bbar")
    # LegT is HiPPO-LegT up to a diagonal similarity: D S A S D^-1, S = diag((-1)^i), D = diag(1/sqrt(2i+1))
    i = torch.arange(6, dtype=F64)
    Dm, S = torch.diag((2 * i + 1) ** -0.5), torch.diag((-1.0) ** i)
    legt_hippo = -torch.sqrt((2 * i[:, None] + 1) * (2 * i[None, :] + 1)) * torch.where(
        i[:, None] < i[None, :], (-1.0) ** (i[:, None] - i[None, :]), torch.ones(6, 6, dtype=F64))
    check("lmu", Dm @ S @ A_lmu @ S @ torch.linalg.inv(Dm), legt_hippo, "LegT = HiPPO-LegT up to similarity", 1e-12)


@spec("ur_lstm")
def test_ur_lstm_uniform_gate_initialisation(spec):
    hidden = 50
    b_f = our_ref("ur_lstm", d_model=5, hidden=hidden).init_params(1)["b_f"]
    u = torch.sigmoid(b_f)                       # UGI: sigmoid(b_f) ~ U[1/d, 1 - 1/d]
    assert u.min() >= 1 / hidden - 1e-12 and u.max() <= 1 - 1 / hidden + 1e-12 and u.std() > 0.2


@spec("slstm")
def test_slstm_forget_bias_initialisation(spec):
    fb = our_ref("slstm", d_model=16, heads=2).init_params()["f_bias"]
    j = torch.arange(8, dtype=F64)
    check("slstm", fb, (5.0 - 12.0 * (j / 7) ** 0.3).expand(2, 8), "powerlaw_blockdependent forget bias", 1e-14)


@spec("sru")
def test_sru_initialisation(spec):
    p = our_ref("sru", d_model=40).init_params(2)
    assert p["W"].abs().max() <= math.sqrt(3 / 40) and p["W_f"].abs().max() <= math.sqrt(1.5 / 40)
    assert p["v_f"].abs().max() <= math.sqrt(1.5) and p["v_f"].abs().max() > 0.5


@spec("esn")
def test_esn_reservoir_is_fixed_sparse_and_scaled(spec):
    ref = our_ref("esn", d_model=4, n=100, density=0.1, radius=0.9)
    W = ref.init_params(3)["W"]
    rho = torch.linalg.eigvals(W).abs().max().item()
    assert abs(rho - 0.9) < 1e-10, rho
    assert abs((W != 0).double().mean().item() - 0.1) < 0.02
    layer = seqdsl.build(seqdsl.load(EXAMPLES / "esn.seq", d_model=4, n=30), dtype=F64)
    buffers, params = dict(layer.named_buffers()), dict(layer.named_parameters())
    assert {"W", "W_in", "b_in"} <= set(buffers) and not {"W", "W_in", "b_in"} & set(params)
    assert set(params) == {"y_proj", "y_proj_bias", "y_proj1"}


@spec("esn")
def test_esn_forgets_its_initial_state(spec):
    """The echo state property in practice (spectral radius 0.9): two initial states, same input, converge."""
    ref = our_ref("esn", d_model=3, n=40, density=0.2)
    P = ref.init_params(4)
    inputs = ref.op_inputs(randn(gen(4), 1, 150, 3), P)
    h0 = randn(gen(5), 2, 40)
    _, ht = ref(**{k: (v.expand(2, *v.shape[1:]) if k == "drive" else v) for k, v in inputs.items()},
                initial_state=h0, output_final_state=True)
    assert (ht[0] - ht[1]).abs().max() < 1e-6 * (h0[0] - h0[1]).abs().max()
