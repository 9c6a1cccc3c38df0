"""Segment-level recurrent models (survey §3.3): each block and stack against an independent plain-torch
transcription of its paper's equations, with the module's weights, in fp64; generation against the forward;
state accounting; a few training steps; bad options."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, training_losses

import seqdsl
from seqdsl.frontend import parse
from seqdsl.printer import print_model
from seqdsl.stack import build_stack

SEGMENT = ROOT / "examples" / "stacks" / "segment"
SPECS = sorted(SEGMENT.glob("*.seq"))
TOL = dict(atol=1e-10, rtol=1e-9)     # step vs forward, element-wise
SCALED = 1e-10                        # against the references: max error relative to the tensor's largest entry
GROWING = {"ran", "arn"}   # state grows with the sequence: one GPC per window (RAN), every input's keys (ARN)


def stack(name: str, **hp):
    cs = seqdsl.load(SEGMENT / f"{name}.seq", **hp)
    return cs, build_stack(cs, seed=0).double()


def randomise(module, seed: int = 1):
    """Non-trivial values for every parameter (zero-initialised biases and gates would hide terms)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def inputs(B: int, T: int, d: int, seed: int = 2):
    return torch.randn(B, T, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64,
                       requires_grad=True)


def grads(out, wrt):
    return torch.autograd.grad(out, wrt, torch.ones_like(out), allow_unused=True, retain_graph=True)


def close(a, b, elementwise: bool = False):
    assert a.shape == b.shape
    if elementwise:
        assert torch.allclose(a, b, **TOL), (a - b).abs().max().item()
    else:
        assert (a - b).abs().max() <= SCALED * max(1.0, b.abs().max().item()), (a - b).abs().max().item()


def close_grads(ga, gb):
    for a, b in zip(ga, gb):
        assert (a is None) == (b is None)
        if a is not None:
            close(a, b)


# ---------------------------------------------------------------------------------------- every spec
@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_spec_round_trips_builds_and_generates_like_forward(path):
    s = parse(path.read_text())
    assert parse(print_model(s)) == s
    header = path.read_text().split("\nstack ")[0]
    assert "arXiv" in header and "record M" in header and "# oracle:" in header
    cs, model = stack(path.stem)
    vocab = int(cs.values["vocab"])
    tokens = torch.randint(0, vocab, (2, 37), generator=torch.Generator().manual_seed(0))
    logits = model(tokens)
    assert logits.shape == (2, 37, vocab) and torch.isfinite(logits).all()
    cache, steps = None, []
    with torch.no_grad():
        for t in range(tokens.shape[1]):
            out, cache = model.step(tokens[:, t], cache)
            steps.append(out)
    close(torch.stack(steps, 1), logits, elementwise=True)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_spec_state_size_is_bounded_and_training_reduces_loss(path):
    cs, model = stack(path.stem)
    if path.stem in GROWING:
        assert 0 < model.state_size(1) < model.state_size(64) < model.state_size(10_000)
    else:
        assert 0 < model.state_size(1) <= model.state_size(64) == model.state_size(10_000)
    model = model.float()
    vocab = int(cs.values["vocab"])
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, vocab, (4, 33), generator=g)
    losses = training_losses(model, tokens, steps=6, lr=3e-3)
    assert losses[-1] < losses[0] - 0.05, losses


# ------------------------------------------------------------------------------------------ Transformer-XL
def sinusoid_reference(n: int, d: int):
    """R_p = [sin(p / 10000^(2k/d)) for k] ++ [cos(p / 10000^(2k/d)) for k], written out."""
    rows = [[math.sin(p / 10000 ** (2 * k / d)) for k in range(d // 2)] +
            [math.cos(p / 10000 ** (2 * k / d)) for k in range(d // 2)] for p in range(n)]
    return torch.tensor(rows, dtype=torch.float64)


def xl_reference(block, x, L: int, m: int, stop_gradient: bool):
    """One masked attention over the whole sequence: query i (segment s = i // L) sees key j iff j <= i and
    j >= s L - m; keys and values of positions before s L come from the detached input (the memory sg(h)).
    Score per head: (a) q_i k_j + (b) q_i W_R R_{i-j} + (c) u k_j + (d) v W_R R_{i-j}, over sqrt(D)."""
    B, T, d = x.shape
    H = block.heads
    D = d // H
    Wq, Wk, Wv = block.qkv.weight.split(d, 0)
    past = x.detach() if stop_gradient else x
    q = (x @ Wq.T).view(B, T, H, D)
    k_now, v_now = (x @ Wk.T).view(B, T, H, D), (x @ Wv.T).view(B, T, H, D)
    k_mem, v_mem = (past @ Wk.T).view(B, T, H, D), (past @ Wv.T).view(B, T, H, D)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    same = (i // L) == (j // L)
    allowed = (j <= i) & (j >= (i // L) * L - m)
    k = torch.where(same[None, :, :, None, None], k_now[:, None], k_mem[:, None])   # [B, Tq, Tk, H, D]
    v = torch.where(same[None, :, :, None, None], v_now[:, None], v_mem[:, None])
    WR = (sinusoid_reference(T, d) @ block.r_net.weight.T).view(T, H, D)
    rel = WR[(i - j).clamp(min=0)]                                                 # [Tq, Tk, H, D]
    a = torch.einsum("bihd,bijhd->bhij", q, k)
    b = torch.einsum("bihd,ijhd->bhij", q, rel)
    c = torch.einsum("hd,bijhd->bhij", block.u, k)
    dd = torch.einsum("hd,ijhd->hij", block.v, rel)[None]
    scores = ((a + b + c + dd) / math.sqrt(D)).masked_fill(~allowed, float("-inf"))
    o = torch.einsum("bhij,bijhd->bihd", torch.softmax(scores, -1), v)
    return o.reshape(B, T, d) @ block.out.weight.T


@pytest.mark.parametrize("segment,memory", [(16, 16), (8, 12), (8, 4), (8, 0)])
def test_transformer_xl_block_matches_masked_attention_with_stop_gradient(segment, memory):
    _, model = stack("transformer_xl", segment=segment, memory=memory)
    block = randomise(model.blocks[0])
    x = inputs(2, 37, 32)
    y, _ = block(x)
    ref = xl_reference(block, x, segment, memory, stop_gradient=True)
    close(y, ref)
    params = list(block.parameters())
    close_grads(grads(y, [x] + params), grads(ref, [x] + params))


def test_transformer_xl_stop_gradient_is_what_grad_0_means():
    _, model = stack("transformer_xl", segment=8, memory=8)
    block = randomise(model.blocks[0])
    x = inputs(1, 24, 32)
    y, _ = block(x)
    stopped = grads(y[:, 8:16], [x])[0]
    assert stopped[:, :8].abs().max() == 0 and stopped[:, 8:16].abs().max() > 0   # the memory passes no gradient
    block.grad = True                                                                 # xl_attention(grad = 1)
    y1, _ = block(x)
    close(y1, y)
    through = grads(y1[:, 8:16], [x])[0]
    assert through[:, :8].abs().max() > 1e-3
    close(through, grads(xl_reference(block, x, 8, 8, stop_gradient=False)[:, 8:16], [x])[0])


def test_transformer_xl_stack_reaches_depth_times_memory_and_its_cache_stays_bounded():
    _, model = stack("transformer_xl", segment=8, memory=8)
    tokens = torch.randint(0, 64, (1, 40), generator=torch.Generator().manual_seed(4))
    base = model(tokens)
    changed = tokens.clone()
    changed[0, 7] = (tokens[0, 7] + 1) % 64
    moved = (model(changed) - base).abs().amax(-1)[0]
    # position 7 (segment 0) reaches segment 1 directly and segment 2 through the second layer's memory
    assert moved[16:24].max() > 1e-8 and moved[24:].max() == 0
    cache = None
    with torch.no_grad():
        for t in range(40):
            _, cache = model.step(tokens[:, t], cache)
            assert all(c["k"].shape[2] <= 8 + 8 - 1 for c in cache[0::2])


# ---------------------------------------------------------------------------------------- Infini-attention
def infini_reference(block, x, L: int, delta: bool, carry_gradient: bool = True):
    """The paper's §2.1 per token: query t of segment s reads the memory M_{s-1}, attends softmax over the
    segment's tokens up to t; at a segment's end M and z absorb each token's s(k) (v - retrieved)^T."""
    B, T, d = x.shape
    H = block.heads
    D = d // H
    Wq, Wk, Wv = block.qkv.weight.split(d, 0)
    q, k, v = ((x @ W.T).view(B, T, H, D) for W in (Wq, Wk, Wv))
    phi = lambda t: F.elu(t) + 1  # noqa: E731
    gate = torch.sigmoid(block.beta)[None, :, None]                # [1, H, 1]
    M = x.new_zeros(B, H, D, D)
    z = x.new_zeros(B, H, D)
    outs = []
    for t in range(T):
        start = (t // L) * L
        sq = phi(q[:, t])                                           # [B, H, D]
        a_mem = torch.einsum("bhk,bhkv->bhv", sq, M) / (torch.einsum("bhk,bhk->bh", sq, z)[..., None] + 1e-6)
        w = torch.softmax(torch.einsum("bhd,bshd->bhs", q[:, t], k[:, start:t + 1]) / math.sqrt(D), -1)
        a_dot = torch.einsum("bhs,bshd->bhd", w, v[:, start:t + 1])
        outs.append(gate * a_mem + (1 - gate) * a_dot)
        if t + 1 == T or (t + 1) % L:
            continue
        new_M, new_z = M.clone(), z.clone()
        for s in range(start, t + 1):
            sk = phi(k[:, s])
            target = v[:, s]
            if delta:
                target = target - torch.einsum("bhk,bhkv->bhv", sk, M) / (
                    torch.einsum("bhk,bhk->bh", sk, z)[..., None] + 1e-6)
            new_M = new_M + sk[..., :, None] * target[..., None, :]
            new_z = new_z + sk
        M, z = (new_M, new_z) if carry_gradient else (new_M.detach(), new_z.detach())
    return torch.stack(outs, 1).reshape(B, T, d) @ block.out.weight.T


@pytest.mark.parametrize("delta", [1, 0], ids=["delta", "linear"])
@pytest.mark.parametrize("segment", [8, 5, 1])
def test_infini_attention_block_matches_per_token_paper_equations(delta, segment):
    _, model = stack("infini_attention", segment=segment, delta=delta)
    block = randomise(model.blocks[0])
    x = inputs(2, 23, 32)
    y, _ = block(x)
    ref = infini_reference(block, x, segment, bool(delta))
    close(y, ref)
    params = list(block.parameters())
    close_grads(grads(y, [x] + params), grads(ref, [x] + params))


def test_infini_attention_grad_0_stops_gradient_through_the_memory():
    _, model = stack("infini_attention", segment=8)
    block = randomise(model.blocks[0])
    x = inputs(1, 16, 32)
    through = grads(block(x)[0][:, 8:], [x])[0]
    assert through[:, :8].abs().max() > 1e-3
    block.grad = False                                               # infini_attention(grad = 0)
    y, _ = block(x)
    close(y, infini_reference(block, x, 8, True, carry_gradient=False))
    assert grads(y[:, 8:], [x])[0][:, :8].abs().max() == 0


def test_infini_attention_one_token_segments_match_the_cell_spec():
    """segment = 1 is examples/infini_attention.seq (local attention of one token = v_t), run by seqdsl's own
    fp64 reference interpreter on the block's projections."""
    _, model = stack("infini_attention", segment=1)
    block = randomise(model.blocks[0])
    x = inputs(2, 9, 32)
    cell = seqdsl.load(ROOT / "examples" / "infini_attention.seq", d_model=32, heads=2, dk=16, dv=16)
    Wq, Wk, Wv = block.qkv.weight.split(32, 0)
    q, k, v = ((x @ W.T).view(2, 9, 2, 16) for W in (Wq, Wk, Wv))
    o = seqdsl.reference(cell)(q=F.elu(q) + 1, k=F.elu(k) + 1, v=v, beta=block.beta.detach())
    o = o[0] if isinstance(o, tuple) else o
    close(block(x)[0], o.reshape(2, 9, 32) @ block.out.weight.T)


# --------------------------------------------------------------------------------------------------- RMT
def rms(h, w):
    return h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + torch.finfo(h.dtype).eps) * w


def plain_transformer(model, h):
    """Pre-norm residual causal attention + SwiGLU, written out from the stack's weights: h [B, n, d]."""
    for norm, block in zip(model.norms, model.blocks):
        u = rms(h, norm.weight)
        if hasattr(block, "qkv"):
            B, n, d = u.shape
            H = block.heads
            q, k, v = ((u @ W.T).view(B, n, H, d // H).transpose(1, 2) for W in block.qkv.weight.split(d, 0))
            s = (q @ k.transpose(-1, -2)) / math.sqrt(d // H)
            s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
            y = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, n, d) @ block.out.weight.T
        else:
            y = (F.silu(u @ block.gate.weight.T) * (u @ block.up.weight.T)) @ block.down.weight.T
        h = h + y
    return h


def rmt_reference(model, x, L: int, m: int, bptt):
    """An explicit loop over segments: [M_s | x_s | M_s] through the Transformer (write memory always
    appended), M_{s+1} = the outputs at the write positions, detached unless among the last bptt carries."""
    B, T, _ = x.shape
    n = -(-T // L)
    M = model.memory[None].expand(B, m, -1)
    outs = []
    for s in range(n):
        x_s = x[:, s * L:(s + 1) * L]
        h = plain_transformer(model, torch.cat([M, x_s, M], 1))
        outs.append(h[:, m:m + x_s.shape[1]])
        M = h[:, m + x_s.shape[1]:]
        if bptt is not None and s + 1 < n - bptt:
            M = M.detach()
    return torch.cat(outs, 1)


@pytest.mark.parametrize("bptt", [None, 0, 1])
def test_rmt_segment_loop_matches_explicit_memory_token_reference(bptt):
    _, model = stack("rmt", segment=8, memory=3)
    model.spec.segments["bptt"] = bptt
    randomise(model)
    x = inputs(2, 29, 32)
    h = model.segment_hidden(x)
    ref = rmt_reference(model, x, 8, 3, bptt)
    close(h, ref)
    params = list(model.parameters())
    close_grads(grads(h, [x] + params), grads(ref, [x] + params))


def test_rmt_bptt_truncates_gradient_through_the_memory_carry():
    cs, model = stack("rmt", segment=8, memory=3)
    assert cs.segments == {"length": 8, "tokens": 3, "bptt": 2}
    x = inputs(1, 24, 32)
    model.spec.segments["bptt"] = 1                 # carries into segment 2 only
    g = grads(model.segment_hidden(x)[:, 16:], [x])[0]
    assert g[:, :8].abs().max() == 0 and g[:, 8:16].abs().max() > 0
    model.spec.segments["bptt"] = None
    g = grads(model.segment_hidden(x)[:, 16:], [x])[0]
    assert g[:, :8].abs().max() > 0


# ------------------------------------------------------------------------------- chunk-level recurrences
def attend_one(q, K, V, heads: int):
    """One query q [B, d] over keys and values K, V [B, n, d]: per head softmax(q_h . k_h / sqrt(D)) v_h."""
    D = q.shape[-1] // heads
    out = []
    for h in range(heads):
        c = slice(h * D, (h + 1) * D)
        w = torch.softmax(torch.einsum("bd,bnd->bn", q[:, c], K[:, :, c]) / math.sqrt(D), -1)
        out.append(torch.einsum("bn,bnd->bd", w, V[:, :, c]))
    return torch.cat(out, -1)


def proj(x, layer):
    """x W^T (+ b) from a Linear's tensors."""
    y = x @ layer.weight.T
    return y if layer.bias is None else y + layer.bias


def halves(layer, x):
    """A Linear(d, 2d) producing keys and values, applied with its two weight halves."""
    Wk, Wv = layer.weight.split(layer.weight.shape[1], 0)
    return x @ Wk.T, x @ Wv.T


def tlb_reference(block, x, C: int, carry_gradient: bool = True):
    """Per chunk: h_i = x_i + SelfAttn(x_i -> x_<=i), y_i = h_i + CrossAttn(h_i -> X); then
    X_j <- X_j + CrossAttn(X_j -> y) for each state vector j, once the chunk is complete."""
    B, T, d = x.shape
    H = block.heads
    Wq, Wk, Wv = block.self_qkv.weight.split(d, 0)
    X = block.X0[None].expand(B, -1, -1)
    outs = []
    for start in range(0, T, C):
        xc = x[:, start:start + C]
        n = xc.shape[1]
        h = torch.stack([xc[:, i] + proj(attend_one(xc[:, i] @ Wq.T, xc[:, :i + 1] @ Wk.T, xc[:, :i + 1] @ Wv.T, H),
                                         block.self_out) for i in range(n)], 1)
        KX, VX = halves(block.read_kv, X)
        y = torch.stack([h[:, i] + proj(attend_one(proj(h[:, i], block.read_q), KX, VX, H), block.read_out)
                         for i in range(n)], 1)
        outs.append(y - xc)
        if n == C:
            Ky, Vy = halves(block.write_kv, y)
            X = X + torch.stack([proj(attend_one(proj(X[:, j], block.write_q), Ky, Vy, H), block.write_out)
                                 for j in range(X.shape[1])], 1)
            X = X if carry_gradient else X.detach()
    return torch.cat(outs, 1)


def brt_reference(block, x, W: int, segment: int):
    """Per block of W tokens: vertical y_i = W_v [SelfAttn(x_i -> prev block + x_<=i) | CrossAttn(x_i -> S)],
    horizontal z_j = W_h [SelfAttn(S_j -> S) | CrossAttn(S_j -> block)], then the two fixed gates. The previous
    block's keys and the states are stop-gradient where a segment starts."""
    B, T, d = x.shape
    H = block.heads
    S = block.S0[None].expand(B, -1, -1)
    g1, g2 = torch.sigmoid(block.gate1), torch.sigmoid(block.gate2)
    outs = []
    for start in range(0, T, W):
        xc = x[:, start:start + W]
        n = xc.shape[1]
        Kp, Vp = halves(block.tok_kv, x[:, max(0, start - W):start])
        if segment and start % segment == 0:
            Kp, Vp = Kp.detach(), Vp.detach()
        Kt, Vt = halves(block.tok_kv, xc)
        nS = rms(S + block.ids, block.state_norm.weight)
        Ks, Vs = halves(block.st_kv, nS)
        rows = []
        for i in range(n):
            K, V = torch.cat([Kp, Kt[:, :i + 1]], 1), torch.cat([Vp, Vt[:, :i + 1]], 1)
            a_self = attend_one(proj(xc[:, i], block.tok_q_self), K, V, H)
            a_cross = attend_one(proj(xc[:, i], block.tok_q_cross), Ks, Vs, H)
            rows.append(proj(torch.cat([a_self, a_cross], -1), block.tok_out))
        outs.append(torch.stack(rows, 1))
        if n < W:
            break
        z = torch.stack([proj(torch.cat([attend_one(proj(nS[:, j], block.st_q_self), Ks, Vs, H),
                                         attend_one(proj(nS[:, j], block.st_q_cross), Kt, Vt, H)], -1), block.st_out)
                         for j in range(S.shape[1])], 1)
        S = S * g1 + z * (1 - g1)
        up, down = block.mlp[0], block.mlp[2]
        S = S * g2 + proj(F.gelu(proj(rms(S, block.mlp_norm.weight), up)), down) * (1 - g2)
        if segment and (start + W) % segment == 0:
            S = S.detach()
    return torch.cat(outs, 1)


def ran_reference(block, x, W: int):
    """Per window: O_i = SelfAttn over [g_{w-1} | window]_<=i, g_w = O at the last token;
    y_i = O_i + CrossAttn(O_i -> [g_0 .. g_{w-1}])."""
    B, T, d = x.shape
    H = block.heads
    Wq, Wk, Wv = block.qkv.weight.split(d, 0)
    G = [block.g0[0][None].expand(B, -1)]
    outs = []
    for start in range(0, T, W):
        z = torch.cat([G[-1][:, None], x[:, start:start + W]], 1)
        O = [proj(attend_one(z[:, i] @ Wq.T, z[:, :i + 1] @ Wk.T, z[:, :i + 1] @ Wv.T, H), block.out)
             for i in range(1, z.shape[1])]
        KG, VG = halves(block.review_kv, torch.stack(G, 1))
        outs += [o + proj(attend_one(proj(o, block.review_q), KG, VG, H), block.review_out) for o in O]
        if len(O) == W:
            G.append(O[-1])
    return torch.stack(outs, 1)


def gru_reference(cell, c, h):
    """The GRU update as torch defines its weights (rows r, z, n): n = tanh(W_in c + b_in + r (W_hn h + b_hn)),
    h' = (1 - z) n + z h."""
    ir_, iz, in_ = (c @ cell.weight_ih.T + cell.bias_ih).chunk(3, -1)
    hr, hz, hn = (h @ cell.weight_hh.T + cell.bias_hh).chunk(3, -1)
    r, z = torch.sigmoid(ir_ + hr), torch.sigmoid(iz + hz)
    return (1 - z) * torch.tanh(in_ + r * hn) + z * h


def arn_reference(block, u):
    """Per token: c_t = Attn(x_{t-1} -> u_<=t), x_t = GRU(c_t, x_{t-1}), a_t = SelfAttn(u_t -> u_<=t),
    y_t = g x_t + (1 - g) a_t with g = sigmoid(W_g [x_t | a_t] + b_g)."""
    B, T, d = u.shape
    H = block.heads
    Wq, Wk, Wv = block.qkv.weight.split(d, 0)
    x = u.new_zeros(B, d)
    outs = []
    for t in range(T):
        K, V = halves(block.att_kv, u[:, :t + 1])
        c = proj(attend_one(proj(x, block.att_q), K, V, H), block.att_out)
        x = gru_reference(block.cell, c, x)
        a = proj(attend_one(u[:, t] @ Wq.T, u[:, :t + 1] @ Wk.T, u[:, :t + 1] @ Wv.T, H), block.out)
        g = torch.sigmoid(proj(torch.cat([x, a], -1), block.fuse))
        outs.append(g * x + (1 - g) * a)
    return torch.stack(outs, 1)


def check_against(block, reference, x):
    y, _ = block(x)
    ref = reference(x)
    close(y, ref)
    params = list(block.parameters())
    close_grads(grads(y, [x] + params), grads(ref, [x] + params))
    return y


@pytest.mark.parametrize("chunk", [8, 5])
def test_tlb_block_matches_chunk_loop_reference(chunk):
    _, model = stack("tlb", chunk=chunk)
    block = randomise(model.blocks[0])
    check_against(block, lambda x: tlb_reference(block, x, chunk), inputs(2, 21, 32))


def test_tlb_grad_0_stops_gradient_through_the_slow_state():
    _, model = stack("tlb", chunk=8)
    block = randomise(model.blocks[0])
    x = inputs(1, 16, 32)
    assert grads(block(x)[0][:, 8:], [x])[0][:, :8].abs().max() > 1e-3
    block.grad = False                                               # tlb(grad = 0)
    y = check_against(block, lambda x: tlb_reference(block, x, 8, carry_gradient=False), x)
    assert grads(y[:, 8:], [x])[0][:, :8].abs().max() == 0


@pytest.mark.parametrize("segment", [16, 0])
def test_block_recurrent_block_matches_block_loop_reference(segment):
    _, model = stack("block_recurrent", segment=segment)
    block = randomise(model.blocks[2])
    check_against(block, lambda x: brt_reference(block, x, 8, segment), inputs(2, 37, 32))


def test_block_recurrent_segment_boundary_is_stop_gradient():
    _, model = stack("block_recurrent", segment=16)
    block = randomise(model.blocks[2])
    x = inputs(1, 32, 32)
    y, _ = block(x)
    assert grads(y[:, 16:], [x])[0][:, :16].abs().max() == 0      # a new segment: no gradient into the last
    assert grads(y[:, 8:16], [x])[0][:, :8].abs().max() > 1e-3      # inside a segment: through S and the keys
    block.segment = 0
    assert grads(block(x)[0][:, 16:], [x])[0][:, :16].abs().max() > 1e-3


@pytest.mark.parametrize("window", [8, 3])
def test_ran_block_matches_window_loop_reference(window):
    _, model = stack("ran", window=window)
    block = randomise(model.blocks[0])
    check_against(block, lambda x: ran_reference(block, x, window), inputs(2, 19, 32))


def test_arn_block_matches_token_loop_reference_with_gru_written_out():
    _, model = stack("arn")
    block = randomise(model.blocks[0])
    check_against(block, lambda u: arn_reference(block, u), inputs(2, 13, 32))


# ------------------------------------------------------------------------------------------------ bad specs
BAD = [
    ("xl_attention(heads = 2)", "xl_attention() needs segment"),
    ("xl_attention(heads = 3, segment = 8)", "not divisible by heads"),
    ("xl_attention(heads = 2, segment = 8, grad = 2)", "grad is 0 or 1"),
    ("xl_attention(heads = 2, segment = 8, memory = -1)", "memory must be at least 0"),
    ("xl_attention(heads = 2, segment = 8, mem = 4)", "has no option 'mem'"),
    ("infini_attention(heads = 2, segment = 0)", "segment must be at least 1"),
    ("infini_attention(heads = 2, segment = 8, delta = 1.5)", "delta must be a whole number"),
    ("infini_attention(heads = 2, segment = 8, segment = 4)", "given twice"),
    ("tlb(heads = 2, chunk = 8)", "tlb() needs states"),
    ("tlb(heads = 2, chunk = 8, states = 4, grad = -1)", "grad is 0 or 1"),
    ("block_recurrent(heads = 2, block = 8, states = 4, segment = 12)", "not a multiple of block = 8"),
    ("block_recurrent(heads = 2, block = 8, states = 0)", "states must be at least 1"),
    ("ran(heads = 2)", "ran() needs window"),
    ("arn(heads = 5)", "not divisible by heads"),
    ("arn(2)", "options by name"),
]


@pytest.mark.parametrize("block,message", BAD, ids=[b for b, _ in BAD])
def test_bad_segment_block_options_raise_located_spec_errors(block, message):
    text = f"stack s(d_model = 32, vocab = 16):\n  blocks:\n    a = {block}\n  layers = [a]\n"
    with pytest.raises(seqdsl.SpecError) as info:
        seqdsl.loads(text)
    assert message in str(info.value) and info.value.line == 3


BAD_SEGMENTS = [
    ("memory_tokens(length = 0, tokens = 2)", "length must be a whole number >= 1"),
    ("memory_tokens(length = 8)", "needs tokens"),
    ("memory_tokens(length = 8, tokens = 2, depth = 3)", "has no option 'depth'"),
    ("memory_tokens(length = 8, tokens = 2, bptt = -1)", "bptt must be a whole number >= 0"),
    ("memory_tokens(length = 8, length = 4, tokens = 2)", "given twice"),
    ("recurrent(length = 8)", "segments = memory_tokens("),
    ("memory_tokens(length = x, tokens = 2)", "unknown name 'x'"),
]


@pytest.mark.parametrize("segments,message", BAD_SEGMENTS, ids=[s for s, _ in BAD_SEGMENTS])
def test_rmt_bad_segments_section_raises_located_spec_errors(segments, message):
    text = (f"stack s(d_model = 32, vocab = 16):\n  blocks:\n    a = attention(heads = 2)\n  layers = [a]\n"
            f"  segments = {segments}\n")
    with pytest.raises(seqdsl.SpecError) as info:
        seqdsl.loads(text)
    assert message in str(info.value) and info.value.line == 5


def test_rmt_segments_section_twice_is_a_spec_error():
    text = ("stack s(d_model = 32, vocab = 16):\n  blocks:\n    a = attention(heads = 2)\n  layers = [a]\n"
            "  segments = memory_tokens(length = 8, tokens = 2)\n  segments = memory_tokens(length = 8, tokens = 2)\n")
    with pytest.raises(seqdsl.SpecError, match="appears twice"):
        seqdsl.loads(text)
