"""Survey blocks written as stacks (examples/stacks/survey): H3, GSS, Hyena, MEGA, FLASH, GAU.

Each block is checked in fp64 against a plain-torch transcription of its paper's equations written here with
the block's own weights (loops over tokens, O(T^2) sums, no FFT), then every stack is built and run: forward,
the generation loop (token by token, and a prompt read at once then continued) against the forward, state and
parameter counts, a few training steps, and located errors for bad options.
"""

import math

import pytest
import torch
from conftest import ROOT, training_losses
from torch.nn import functional as F

import seqdsl
from seqdsl.blocks.conv_attention_torch import fft_causal_conv
from seqdsl.stack import build_stack

SURVEY = ROOT / "examples" / "stacks" / "survey"
STACKS = ["h3_lm", "h3_attention", "gss_lm", "hyena", "mega", "flash_chunk", "gau"]


def block_of(stem: str, seed: int = 0, **hparams):
    """The first block of a survey stack at small size, fp64, every parameter perturbed (so zero-initialised
    biases and offsets matter in the comparisons)."""
    model = build_stack(seqdsl.load(SURVEY / f"{stem}.seq", **hparams), seed=seed).double()
    block = model.blocks[0]
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in block.parameters():
            if not p.is_complex():
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return block


def inputs(B: int, T: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, T, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def linear(x, lin):
    """x W^T + b with the weights of an nn.Linear."""
    return x @ lin.weight.T + (lin.bias if lin.bias is not None else 0)


def direct_causal_conv(u, h, taps_reversed=False):
    """The O(T^2) causal convolution y_t = sum_{m <= t} h_{t-m} u_m, u [B, T, C], h [L, C] (zero past L).
    taps_reversed: h [C, W] in convolution-weight layout (the last tap multiplies u_t)."""
    if taps_reversed:
        h = h.T.flip(0)
    B, T, C = u.shape
    y = torch.zeros_like(u)
    for t in range(T):
        for m in range(max(0, t - h.shape[0] + 1), t + 1):
            y[:, t] += h[t - m] * u[:, m]
    return y


# -------------------------------------------------------------------------------------------- H3 and GSS
def h3_reference(layer, x):
    """H3 (Fu et al. 2023, Algorithm 1, head dimension 1): q = W_Q x, k = W_K x, v = W_V x;
    o = q ⊙ SSM_diag(SSM_shift(k) ⊙ v); y = W_O o. SSM_shift: 2n taps; SSM_diag: S4D-Lin with ZOH."""
    P = dict(layer.named_parameters())
    q = x @ P["q_proj"].T
    k_shifted = direct_causal_conv(x @ P["kv_proj"].T, P["kv_conv"], taps_reversed=True)
    u = k_shifted * (x @ P["kv_proj1"].T)
    A = torch.complex(-torch.exp(P["A_log_re"]), P["A_im"])               # [d, n]
    dA = torch.exp(torch.exp(P["log_dt"])[:, None] * A)
    C = torch.complex(P["C_re"], P["C_im"])
    h = torch.zeros(x.shape[0], *A.shape, dtype=A.dtype)
    out = []
    for t in range(x.shape[1]):
        h = dA * h + (dA - 1) / A * u[:, t, :, None]
        out.append(2 * (C * h).sum(-1).real + P["D"] * u[:, t])
    return (q * torch.stack(out, 1)) @ P["y_proj"].T


def gss_reference(layer, x):
    """GSS (Mehta et al. 2022, Fig. 1): u = LayerNorm(gelu(W_u x)); DSS-exp per channel, step 1:
    h_t = exp(lam) h_{t-1} + (exp(lam) - 1) / lam u_t, o = Re(W^T h) + D u; y = W_o ((W_g o) ⊙ gelu(W_v x)) + b."""
    P = dict(layer.named_parameters())
    u = F.layer_norm(F.gelu(x @ P["u_proj"].T), (P["u_norm"].shape[0],), P["u_norm"], P["u_norm_bias"])
    lam = torch.complex(-torch.exp(P["Lambda_re"]), torch.exp(P["Lambda_im"]))  # [n]
    W = torch.complex(P["W_re"], P["W_im"])                                   # [hidden, n]
    h = torch.zeros(x.shape[0], *W.shape, dtype=W.dtype)
    out = []
    for t in range(x.shape[1]):
        h = torch.exp(lam) * h + (torch.exp(lam) - 1) / lam * u[:, t, :, None]
        out.append((W * h).sum(-1).real + P["D"] * u[:, t])
    gated = (torch.stack(out, 1) @ P["y_proj"].T) * F.gelu(x @ P["y_proj1"].T)
    return gated @ P["y_proj2"].T + P["y_proj_bias"]


@pytest.mark.parametrize("stem,reference", [("h3_lm", h3_reference), ("h3_attention", h3_reference),
                                            ("gss_lm", gss_reference)], ids=["h3_lm", "h3_attention", "gss_lm"])
def test_cell_layer_of_the_stack_matches_the_paper(stem, reference):
    small = dict(n=4) if stem.startswith("h3") else dict(hidden=8, n=6, expand=2)
    block = block_of(stem, d_model=16, **small)
    x = inputs(2, 24, 16)
    y, _ = block(x)
    assert torch.allclose(y, reference(block.layer, x), atol=1e-12, rtol=1e-10)


# ------------------------------------------------------------------------------------------------ Hyena
@pytest.mark.parametrize("stem", ["hyena"])
def test_fft_causal_conv_matches_a_direct_loop(stem):
    g = torch.Generator().manual_seed(3)
    u = torch.randn(2, 37, 5, generator=g, dtype=torch.float64)
    for L in (1, 9, 37):                                  # a filter shorter than, and as long as, the input
        h = torch.randn(L, 5, generator=g, dtype=torch.float64)
        assert torch.allclose(fft_causal_conv(u, h), direct_causal_conv(u, h), atol=1e-12)
    h = torch.randn(50, 5, generator=g, dtype=torch.float64)   # longer than the input: lags past T unused
    assert torch.allclose(fft_causal_conv(u, h), direct_causal_conv(u, h[:37]), atol=1e-12)


def hyena_reference(block, x):
    """Hyena of order N (Poli et al. 2023, Definition 3.1, E37) with every convolution a direct causal sum:
    v, x^1..x^N = shortconv(W_in u + b); z^1 = v; z^{n+1} = x^n ⊙ (h^n * z^n + D^n z^n); y = W_out z^{N+1} + b.
    h^n_t = FFN(PE(t))^n exp(-alpha t / l_max), PE(t) = [t / l_max, cos(2 pi k t / l_max), sin(2 pi k t / l_max)],
    FFN: three (Linear, sin(w .)) then a Linear without bias; alpha from ln(100) / 1.5 to ln(100) / 0.3."""
    d, N, l_max = block.d, block.order, block.l_max
    T = x.shape[1]
    p = direct_causal_conv(linear(x, block.in_proj), block.short_weight, taps_reversed=True) + block.short_bias
    v, gates = p[..., :d], [p[..., (n + 1) * d:(n + 2) * d] for n in range(N)]
    ffn = block.filter.ffn
    t = torch.arange(T, dtype=torch.float64)[:, None]
    k = torch.arange((ffn[0].in_features - 1) // 2, dtype=torch.float64)[None, :]
    a = torch.cat([t / l_max, torch.cos(2 * math.pi * k * t / l_max), torch.sin(2 * math.pi * k * t / l_max)], 1)
    for lin, sine in ((ffn[0], ffn[1]), (ffn[2], ffn[3]), (ffn[4], ffn[5])):
        a = torch.sin(sine.freq * linear(a, lin))
    alpha = torch.linspace(math.log(100) / 1.5, math.log(100) / 0.3, d, dtype=torch.float64)
    filters = (a @ ffn[6].weight.T).view(T, -1, d) * torch.exp(-alpha * t / l_max)[:, None]
    filters = filters * (t < l_max)[:, :, None]
    z, f = v, 0
    for n in range(N):
        if n == 0 and not block.first_filter:
            z = gates[0] * z
            continue
        z = gates[n] * (direct_causal_conv(z, filters[:, f]) + block.filter.D[f] * z)
        f += 1
    return linear(z, block.out_proj)


@pytest.mark.parametrize("options", [dict(order=2), dict(order=3, l_max=9, emb_dim=5), dict(order=2, first_filter=0)],
                         ids=["hyena-order2", "hyena-order3-short-lmax", "hyena-first-filter-identity"])
def test_hyena_block_matches_definition_3_1(tmp_path, options):
    opts = ", ".join(f"{k} = {v}" for k, v in dict(filter_order=12, **options).items())
    spec = tmp_path / "h.seq"
    spec.write_text(f"stack h(d_model = 8, vocab = 8):\n  blocks:\n    h = hyena({opts})\n  layers = [h]\n")
    model = build_stack(seqdsl.load(spec)).double()
    block = model.blocks[0]
    x = inputs(2, 21, 8)
    assert torch.allclose(block(x)[0], hyena_reference(block, x), atol=1e-12, rtol=1e-10)


# ------------------------------------------------------------------------------------------------- MEGA
def mega_reference(block, x):
    """MEGA (Ma et al. 2022, Eq. 28 with E19, §3.2-3.3), single head: X' = silu(EMA(X) + omega ⊙ X) with
    h_t = alpha ⊙ beta x_t + (1 - alpha ⊙ delta) ⊙ h_{t-1}, EMA_t = eta^T h_t / sqrt(n) per channel;
    Z = silu(X' W_z + b), Q, K = kappa ⊙ Z + mu; V = silu(X W_v + b); O = softmax(Q K^T / sqrt(z) + b_rel) V
    (causal, within a chunk); gamma = silu(X' W_g + b), phi = sigmoid(X' W_phi + b);
    H = silu(X' W_h + (gamma ⊙ O) U_h + b_h); Y = phi ⊙ H + (1 - phi) ⊙ X."""
    P = dict(block.ema.layer.named_parameters())
    alpha, delta = torch.sigmoid(P["alpha_logit"]), torch.sigmoid(P["delta_logit"])   # [d, n]
    B, T, d = x.shape
    n = alpha.shape[1]
    h = torch.zeros(B, d, n, dtype=x.dtype)
    ema = []
    for t in range(T):
        h = alpha * P["beta"] * x[:, t, :, None] + (1 - alpha * delta) * h
        ema.append((P["eta"] * h).sum(-1) / math.sqrt(n))
    xe = F.silu(torch.stack(ema, 1) + P["omega"] * x)
    z_dim, e = block.zdim, block.e
    W = linear(xe, block.mx_proj)
    phi, z, gamma, hx = torch.sigmoid(W[..., :d]), F.silu(W[..., d:d + z_dim]), \
        F.silu(W[..., d + z_dim:d + z_dim + e]), W[..., d + z_dim + e:]
    q, k = z * block.qk_scale[0] + block.qk_offset[0], z * block.qk_scale[1] + block.qk_offset[1]
    v = F.silu(linear(x, block.v_proj))
    C = block.chunk or T
    o = torch.zeros(B, T, e, dtype=x.dtype)
    for i in range(T):
        js = [j for j in range(i + 1) if j // C == i // C]
        scores = torch.stack([(q[:, i] * k[:, j]).sum(-1) / math.sqrt(z_dim)
                              + block.rel_bias[min(i - j, block.l_max - 1)] for j in js], -1)
        weights = torch.softmax(scores, -1)
        o[:, i] = sum(weights[:, a, None] * v[:, j] for a, j in enumerate(js))
    H = F.silu(hx + (gamma * o) @ block.h_proj.weight.T)
    return phi * H + (1 - phi) * x


@pytest.mark.parametrize("chunk", [0, 5], ids=["mega-full", "mega-chunk"])
def test_mega_block_matches_the_paper(chunk):
    block = block_of("mega", d_model=16, n=4, zdim=8, chunk=chunk)
    x = inputs(2, 17, 16)
    assert torch.allclose(block(x)[0] + x, mega_reference(block, x), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("stem", ["mega"])
def test_mega_relative_bias_is_clamped_past_l_max(tmp_path, stem):
    spec = tmp_path / "m.seq"
    ema = ROOT / "examples" / "mega_ema.seq"
    spec.write_text(f'stack m(d_model = 8, vocab = 8):\n  blocks:\n    m = mega(ema = cell("{ema}", n = 2), zdim = 4, '
                    'l_max = 3)\n  layers = [m]\n')
    block = build_stack(seqdsl.load(spec)).double().blocks[0]
    x = inputs(1, 10, 8)
    assert torch.allclose(block(x)[0] + x, mega_reference(block, x), atol=1e-12)


# ----------------------------------------------------------------------------------------- FLASH and GAU
def gau_projections(block, x, heads):
    uv = F.silu(linear(x, block.uv))
    e = uv.shape[-1] // 2
    z = F.silu(linear(x, block.z))
    return uv[..., :e], uv[..., e:], [z * block.gamma[h] + block.beta[h] for h in range(heads)]


def flash_reference(block, x):
    """FLASH mixed chunk attention (Hua et al. 2022, Eq. 27, E17, E18) token by token: for i in chunk c,
    o_i = sum_{j in c, j <= i} relu(qq_i.kq_j / C + b_{i-j})^2 v_j + sum_{j in chunks before c} (ql_i.kl_j / C) v_j,
    y_i = W_o (u_i ⊙ o_i) + b."""
    u, v, (qq, kq, ql, kl) = gau_projections(block, x, 4)
    C = block.chunk
    o = torch.zeros_like(v)
    for i in range(x.shape[1]):
        for j in range(i + 1):
            if j // C == i // C:
                w = F.relu((qq[:, i] * kq[:, j]).sum(-1) / C + block.rel_bias[i - j]) ** 2
            else:
                w = (ql[:, i] * kl[:, j]).sum(-1) / C
            o[:, i] += w[:, None] * v[:, j]
    return linear(u * o, block.out)


def gau_reference(block, x):
    """GAU (Hua et al. 2022, Eq. 26, E17), causal: o_i = sum_{j <= i} relu(q_i.k_j / n + b_{i-j})^2 v_j, n = l_max."""
    u, v, (q, k) = gau_projections(block, x, 2)
    o = torch.zeros_like(v)
    for i in range(x.shape[1]):
        for j in range(i + 1):
            w = F.relu((q[:, i] * k[:, j]).sum(-1) / block.l_max + block.rel_bias[min(i - j, block.l_max - 1)]) ** 2
            o[:, i] += w[:, None] * v[:, j]
    return linear(u * o, block.out)


@pytest.mark.parametrize("T", [20, 24], ids=["flash_chunk-partial", "flash_chunk-whole"])
def test_flash_block_matches_per_token_masked_attention(T):
    block = block_of("flash_chunk", d_model=16, s=8, chunk=6)
    x = inputs(2, T, 16)
    assert torch.allclose(block(x)[0], flash_reference(block, x), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("stem", ["flash_chunk"])
def test_flash_global_term_reads_previous_chunks_only(stem):
    """Causality: changing token 5 (chunk 1 of 4-token chunks) leaves outputs 0..4 bit for bit unchanged and
    changes output 5 (the local term) and all of chunk 2 (the global term)."""
    block = block_of("flash_chunk", d_model=16, s=8, chunk=4)
    x = inputs(1, 12, 16)
    y = block(x)[0]
    x2 = x.clone()
    x2[:, 5] += 1.0
    y2 = block(x2)[0]
    assert torch.equal(y[:, :5], y2[:, :5])
    changed = (y - y2).abs().amax(-1)[0]
    assert changed[5] > 0 and changed[8:].min() > 0       # (a ReLU^2 weight may be 0 inside chunk 1)


@pytest.mark.parametrize("stem", ["gau"])
def test_gau_block_matches_token_by_token_attention(stem):
    block = block_of("gau", d_model=16, s=8, l_max=10)     # lags past l_max - 1 share the last bias
    x = inputs(2, 19, 16)
    assert torch.allclose(block(x)[0], gau_reference(block, x), atol=1e-12, rtol=1e-10)


# ------------------------------------------------------------------------------------------------ stacks
SMALL = {"h3_lm": dict(n=4), "h3_attention": dict(n=4, half=3), "gss_lm": dict(hidden=8, n=8, depth=2),
         "hyena": dict(filter_order=16, l_max=12), "mega": dict(n=4, zdim=8, chunk=5),
         "flash_chunk": dict(s=8, chunk=4, depth=2), "gau": dict(s=8, depth=2)}


def small_stack(stem: str):
    cs = seqdsl.load(SURVEY / f"{stem}.seq", d_model=16, vocab=11, **SMALL[stem])
    return cs, build_stack(cs, seed=0).double()


@pytest.mark.parametrize("stem", STACKS)
def test_stack_generation_matches_forward(stem):
    """Token by token, and a prompt read in one call then continued, both equal the forward (past l_max and
    across chunk boundaries)."""
    cs, model = small_stack(stem)
    tokens = torch.randint(0, 11, (2, 19), generator=torch.Generator().manual_seed(0))
    logits = model(tokens)
    assert logits.shape == (2, 19, 11)
    with torch.no_grad():
        cache, steps = None, []
        for t in range(19):
            out, cache = model.step(tokens[:, t], cache)
            steps.append(out)
        assert torch.allclose(torch.stack(steps, 1), logits, atol=1e-9, rtol=1e-7)
        x = model.embed(tokens[:, :7])
        caches = []
        for norm, block in zip(model.norms, model.blocks):
            y, c = block(norm(x), {})
            x = x + y
            caches.append(c if c is not None else {})
        assert torch.allclose(model.head(model.final_norm(x)), logits[:, :7], atol=1e-9, rtol=1e-7)
        for t in range(7, 19):
            out, caches = model.step(tokens[:, t], caches)
            assert torch.allclose(out, logits[:, t], atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("stem", STACKS)
def test_stack_builds_at_spec_size_with_sane_counts(stem):
    cs = seqdsl.load(SURVEY / f"{stem}.seq")
    model = build_stack(cs)
    assert model.num_parameters() == sum(p.numel() for p in model.parameters()) > 0
    s1, s100 = model.state_size(1), model.state_size(100)
    assert 0 < s1 <= s100
    grows = any(b.kind in ("gau", "attention") or (b.kind == "mega" and not b.options["chunk"])
                for b in (cs.blocks[n] for n in cs.layers))
    if grows:                                                    # a KV cache grows with the length
        assert model.state_size(200) > s100
    else:                                                        # bounded (Hyena: by l_max) or constant
        assert model.state_size(100_000) == model.state_size(10 * 100_000)
    tokens = torch.randint(0, int(cs.values["vocab"]), (1, 8))
    assert torch.isfinite(model(tokens)).all()


@pytest.mark.parametrize("stem", ["hyena", "mega", "flash_chunk", "gau"])
def test_block_state_size_counts_its_cache(stem):
    """The numbers in the generation cache after T tokens (position counters aside): what the block carries;
    state_size(T) counts them (chunked blocks: at most chunk - 1 tokens, the worst case)."""
    _, model = small_stack(stem)
    block = model.blocks[0]
    x = inputs(1, 23, 16)
    for T in (1, 6, 23):                       # past hyena's l_max = 12 and across chunk boundaries
        _, cache = block(x[:, :T], {})
        carried = cache_numbers(cache)
        if stem == "hyena":                    # 2 long convolutions' inputs (l_max - 1 kept), short conv windows
            assert carried == block.state_size(T) == 2 * 16 * min(T, 11) + 3 * 16 * 2
        elif stem == "mega":                   # the EMA state and the current chunk's (5 tokens) keys and values
            ema = cache_numbers(cache["ema"])
            assert carried - ema == (8 + 32) * (T % 5)
            assert block.state_size(T) == ema + (8 + 32) * min(T, 4)
        elif stem == "flash_chunk":            # the sum over completed chunks and the current chunk's kq, kl, v
            assert carried == 8 * 32 + (2 * 8 + 32) * (T % 4)
            assert block.state_size(T) == 8 * 32 + (2 * 8 + 32) * min(T, 3)
        else:                                  # every token's key and value
            assert carried == block.state_size(T) == (8 + 32) * T


def cache_numbers(cache) -> int:
    """Numbers in a (nested) cache, complex counted twice; ints (positions) not counted."""
    if torch.is_tensor(cache):
        return cache[0].numel() * (2 if cache.is_complex() else 1)
    if isinstance(cache, dict):
        return sum(cache_numbers(v) for v in cache.values())
    if isinstance(cache, (list, tuple)):
        return sum(cache_numbers(v) for v in cache)
    return 0


@pytest.mark.parametrize("stem", ["hyena", "mega", "flash_chunk", "gau"])
def test_a_few_training_steps_reduce_the_loss(stem):
    cs = seqdsl.load(SURVEY / f"{stem}.seq", d_model=16, vocab=11, depth=1, **{
        k: v for k, v in SMALL[stem].items() if k != "depth"})
    model = build_stack(cs, seed=0)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 11, (4, 16), generator=g)
    losses = training_losses(model, tokens, steps=12, lr=1e-2)
    assert losses[-1] < 0.8 * losses[0]


# -------------------------------------------------------------------------------------------- bad specs
@pytest.mark.parametrize("block,message", [
    ("hyena(order = 0)", "order must be at least 1"),
    ("hyena(emb_dim = 4)", "emb_dim must be odd"),
    ("hyena(first_filter = 2)", "first_filter is 0"),
    ("hyena(order = 1, first_filter = 0)", "no long convolution"),
    ("hyena(orders = 2)", "no option 'orders'"),
    ("hyena(l_max = 2.5)", "whole number"),
    ("hyena(2)", "options by name"),
    ("mega(zdim = 4)", "needs ema = cell"),
    ("mega(ema = mlp(), zdim = 4)", "must be a cell spec"),
    ('mega(ema = cell("nope.seq"), zdim = 4)', "does not exist"),
    ('mega(ema = cell("MEGA_EMA", n = 2), chunk = -1)', "chunk must be at least 0"),
    ("flash(chunk = 0)", "chunk must be at least 1"),
    ("flash(s = unknown_name)", "unknown name 'unknown_name'"),
    ("gau(l_max = 0)", "l_max must be at least 1"),
], ids=["hyena-order", "hyena-emb_dim", "hyena-first_filter", "hyena-no-long-conv", "hyena-unknown-option",
        "hyena-fraction", "hyena-positional", "mega-no-ema", "mega-ema-not-cell", "mega-missing-spec",
        "mega-negative-chunk", "flash_chunk-chunk", "flash_chunk-unknown-name", "gau-l_max"])
def test_bad_block_options_are_located_errors(tmp_path, block, message):
    block = block.replace("MEGA_EMA", str(ROOT / "examples" / "mega_ema.seq"))
    spec = tmp_path / "s.seq"
    spec.write_text(f"stack s(d_model = 8, vocab = 8):\n  blocks:\n    b = {block}\n  layers = [b]\n")
    with pytest.raises(seqdsl.SpecError, match=message) as e:
        seqdsl.load(spec)
    assert e.value.line == 3 and e.value.column is not None
