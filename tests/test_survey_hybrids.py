"""The survey's hybrid models written as stacks (examples/stacks/survey): Griffin, Hawk, Jamba, Zamba, xLSTM and
the full RWKV-4/5/6/7 models.

The new parts are checked in fp64 against plain-torch transcriptions written here with the model's own weights:
local multi-query attention with rotary positions (explicit softmax over the window, rotations written per pair
of channels), the RG-LRU block of Griffin §2.4 (token by token, the paper's a_t and sqrt(1 - a_t^2) form),
GeGLU / SwiGLU / GELU MLPs, the MoE layer (a per-token loop over the experts sorted by router probability),
Zamba's shared block (one weight set at every use) and the whole-block residual layout of RWKV. Cells that
come from other specs (Mamba, mLSTM, sLSTM, RWKV blocks) are checked against their papers in the zoo tests;
here they are called as they are. Then every stack: decoding against the forward, state and parameter counts,
a few training steps, and located errors for bad options.
"""

import math

import pytest
import torch
from conftest import ROOT, training_losses
from test_survey_blocks import direct_causal_conv, linear
from torch.nn import functional as F

import seqdsl
from seqdsl.frontend import parse
from seqdsl.printer import print_model
from seqdsl.stack import build_stack

SURVEY = ROOT / "examples" / "stacks" / "survey"
HYBRIDS = ["griffin", "hawk_lm", "jamba", "zamba", "xlstm", "rwkv4_lm", "rwkv5_lm", "rwkv6_lm", "rwkv7_lm"]
SCALED = 1e-10      # max error relative to the reference's largest entry


def model_of(stem: str, seed: int = 0, **hparams):
    """A survey stack in fp64 with every parameter perturbed (zero-initialised biases and gates matter)."""
    model = build_stack(seqdsl.load(SURVEY / f"{stem}.seq", **hparams), seed=seed).double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def close(a, b):
    assert a.shape == b.shape
    assert (a - b).abs().max() <= SCALED * max(1.0, b.abs().max().item()), (a - b).abs().max().item()


def tokens_for(model, B: int = 2, T: int = 21, seed: int = 0):
    return torch.randint(0, model.vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def rms(h, weight):
    """RMSNorm as torch.nn.RMSNorm with eps=None: h / sqrt(mean(h^2) + eps(dtype)) * w."""
    return h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + torch.finfo(h.dtype).eps) * weight


# ------------------------------------------------------------------------------------ reference parts
def rotary(x, t: int, base: float = 10000.0):
    """RoPE for one position t of x [..., dh]: channel pairs (i, i + dh/2) rotated by t * base^(-i / (dh/2))."""
    half = x.shape[-1] // 2
    out = x.clone()
    for i in range(half):
        angle = t * base ** (-i / half)
        c, s = math.cos(angle), math.sin(angle)
        out[..., i] = x[..., i] * c - x[..., i + half] * s
        out[..., i + half] = x[..., i] * s + x[..., i + half] * c
    return out


def attention_reference(block, u):
    """Causal softmax attention of u [B, T, d] by explicit loops: query head h reads key/value head
    h // (heads / kv_heads); keys s with t - window < s <= t (all s <= t without a window); RoPE if set."""
    B, T, d = u.shape
    H, G, dh = block.heads, block.kv_heads, d // block.heads
    Wq, Wk, Wv = block.qkv.weight.split([d, G * dh, G * dh], 0)
    q = (u @ Wq.T).view(B, T, H, dh)
    k, v = ((u @ W.T).view(B, T, G, dh) for W in (Wk, Wv))
    if block.rope:
        q = torch.stack([rotary(q[:, t], t) for t in range(T)], 1)
        k = torch.stack([rotary(k[:, t], t) for t in range(T)], 1)
    o = torch.zeros(B, T, H, dh, dtype=u.dtype)
    for t in range(T):
        first = max(0, t - block.window + 1) if block.window else 0
        for h in range(H):
            g = h // (H // G)
            scores = torch.einsum("bd,bsd->bs", q[:, t, h], k[:, first:t + 1, g]) / math.sqrt(dh)
            o[:, t, h] = torch.einsum("bs,bsd->bd", torch.softmax(scores, -1), v[:, first:t + 1, g])
    return o.reshape(B, T, d) @ block.out.weight.T


def mlp_reference(block, u):
    """GELU MLP, or gated: (act(u W_g) * u W_up) W_down with act = the block's (gelu: GeGLU, silu: SwiGLU)."""
    if block.gate is None:
        return F.gelu(u @ block.up.weight.T) @ block.down.weight.T
    assert block.act in (F.gelu, F.silu)
    return (block.act(u @ block.gate.weight.T) * (u @ block.up.weight.T)) @ block.down.weight.T


def rg_lru_block_reference(layer, x, c: float = 8.0):
    """Hawk's recurrent block (Griffin Fig. 2, §2.4): u = Conv1D_4(W_2 x + b); r_t = sigmoid(W_a u_t + b_a),
    i_t = sigmoid(W_x u_t + b_x), a_t = sigmoid(Lambda)^(c r_t), h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t u_t);
    y = W_out (gelu(W_1 x + b_1) * h) + b_out."""
    P = dict(layer.named_parameters())
    u = direct_causal_conv(x @ P["u_proj"].T + P["u_proj_bias"], P["u_conv"], taps_reversed=True)
    a_base = torch.sigmoid(P["Lambda"])
    h = torch.zeros(x.shape[0], a_base.shape[0], dtype=x.dtype)
    hs = []
    for t in range(x.shape[1]):
        r = torch.sigmoid(u[:, t] @ P["g_proj"].T + P["g_proj_bias"])
        i = torch.sigmoid(u[:, t] @ P["i_proj"].T + P["i_proj_bias"])
        a = a_base ** (c * r)
        h = a * h + torch.sqrt(1 - a ** 2) * (i * u[:, t])
        hs.append(h)
    gate = F.gelu(x @ P["y_proj"].T + P["y_proj_bias"])
    return (gate * torch.stack(hs, 1)) @ P["y_proj1"].T + P["y_proj_bias1"]


def moe_reference(block, u):
    """Per token: p = softmax(router(u_n)); the top_k experts by p (sorted in Python); y_n = sum_e w_e
    SwiGLU_e(u_n), w_e = p_e (or renormalised over the chosen)."""
    B, T, d = u.shape
    flat = u.reshape(-1, d)
    out = torch.zeros_like(flat)
    for n in range(flat.shape[0]):
        p = torch.softmax(flat[n] @ block.router.weight.T, -1)
        chosen = sorted(range(p.shape[0]), key=lambda e: -p[e].item())[:block.top_k]
        total = sum(p[e] for e in chosen) if block.normalize else 1.0
        for e in chosen:
            expert = (F.silu(flat[n] @ block.gate[e]) * (flat[n] @ block.up[e])) @ block.down[e]
            out[n] = out[n] + p[e] / total * expert
    return out.view(B, T, d)


def zamba_reference(block, u, embedding):
    """Zamba's shared block: z = [u; e], z += attn(rms(z)), z += gelu-MLP(rms(z)), y = z W_out."""
    core = block.core
    z = torch.cat([u, embedding], -1)
    z = z + attention_reference(core.attn, rms(z, core.attn_norm.weight))
    z = z + mlp_reference(core.mlp, rms(z, core.mlp_norm.weight))
    return z @ block.out.weight.T


def stack_reference(model, tokens):
    """The stack written out: embedding, for each layer x + part(rms(x)) (a whole block: x = block(x)), final
    RMSNorm, head. New parts by the references above; cells from other specs called as they are."""
    from seqdsl.blocks.builtin_torch import MLP, Attention, CellBlock
    from seqdsl.blocks.hybrid_torch import MixtureOfExperts, WholeBlock, ZambaShared

    x = embedding = model.embed.weight[tokens]
    for norm, block in zip(model.norms, model.blocks):
        if isinstance(block, WholeBlock):
            x = block(x)[0]
            continue
        u = rms(x, norm.weight)
        if isinstance(block, Attention):
            y = attention_reference(block, u)
        elif isinstance(block, MLP):
            y = mlp_reference(block, u)
        elif isinstance(block, MixtureOfExperts):
            y = moe_reference(block, u)
        elif isinstance(block, ZambaShared):
            y = zamba_reference(block, u, embedding)
        elif isinstance(block, CellBlock) and block.layer.model.name == "hawk":
            y = rg_lru_block_reference(block.layer, u)
        else:
            assert isinstance(block, CellBlock), type(block)
            y = block(u)[0]
        x = x + y
    return rms(x, model.final_norm.weight) @ model.head.weight.T


# ------------------------------------------------------------------------------------------ the checks
@pytest.mark.parametrize("stem", HYBRIDS)
def test_stack_matches_its_written_out_reference(stem):
    model = model_of(stem)
    tokens = tokens_for(model, T=13 if stem in ("jamba", "zamba") else 21)
    close(model(tokens), stack_reference(model, tokens))


def test_griffin_local_attention_is_multi_query_with_rotary_positions_over_its_window():
    model = model_of("griffin", window=5)
    local = model.blocks[4]
    assert (local.heads, local.kv_heads, local.window, local.rope) == (4, 1, 5, True)
    assert local.qkv.weight.shape == (48 + 2 * 12, 48)          # one key and one value head of 12
    u = torch.randn(2, 17, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    close(local(u)[0], attention_reference(local, u))
    # rotary positions make the scores relative: the same inputs shifted by 3 tokens give the same outputs
    shifted = torch.cat([torch.randn(2, 3, 48, dtype=torch.float64), u], 1)
    assert not torch.allclose(local(shifted)[0][:, 3:][:, :4], local(u)[0][:, :4])   # the window sees the prefix
    close(local(shifted)[0][:, 3 + 5:], local(u)[0][:, 5:])                          # past the window: identical


def test_rg_lru_block_keeps_a_in_the_papers_init_range():
    """a^c = sigmoid(Lambda)^c uniform in [0.9, 0.999] at init (Griffin §2.4), before any perturbation."""
    model = build_stack(seqdsl.load(SURVEY / "griffin.seq"), seed=0)
    a_c = torch.sigmoid(model.blocks[0].layer.get_parameter("Lambda")) ** 8
    assert 0.9 <= a_c.min() and a_c.max() <= 0.999 and a_c.std() > 0.01


@pytest.mark.parametrize("normalize", [0, 1])
@pytest.mark.parametrize("experts,top_k", [(8, 2), (4, 1), (3, 3)])
def test_moe_matches_a_per_token_loop_over_its_best_experts(experts, top_k, normalize, tmp_path):
    spec = tmp_path / "moe.seq"
    spec.write_text(f"stack m(d_model = 12, vocab = 9):\n  blocks:\n    moe = moe(experts = {experts}, top_k = {top_k},"
                    f" expand = 2.5, normalize = {normalize})\n  layers = [moe]\n")
    model = build_stack(seqdsl.load(spec)).double()
    block = model.blocks[0]
    assert block.up.shape == (experts, 12, 30)
    u = torch.randn(3, 7, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(experts), requires_grad=True)
    y = block(u)[0]
    close(y, moe_reference(block, u))
    y.square().sum().backward()
    assert block.router.weight.grad.abs().max() > 0       # the router learns through the weights of its choices
    if top_k == experts and normalize:                    # every expert, weights summing to one: a dense mixture
        p = torch.softmax(u @ block.router.weight.T, -1)
        dense = sum(p[..., e:e + 1] * ((F.silu(u @ block.gate[e]) * (u @ block.up[e])) @ block.down[e])
                    for e in range(experts))
        close(y, dense)


def test_zamba_shares_one_weight_set_between_its_uses():
    model = model_of("zamba")
    first, second = model.blocks[3], model.blocks[7]
    assert first.core is second.core and first.out is not second.out
    assert first.core.attn.qkv.weight.shape == (3 * 64, 64)            # attention over [x; embedding]
    core = sum(p.numel() for p in first.core.parameters())
    per_use = sum(p.numel() for p in first.parameters()) - core
    unshared = sum(p.numel() for b in model.blocks for p in b.parameters()) - 2 * core
    assert model.num_parameters() == (unshared + core + model.embed.weight.numel() + model.head.weight.numel()
                                      + sum(p.numel() for p in model.norms.parameters())
                                      + model.final_norm.weight.numel())
    assert per_use == 64 * 32
    names = [n for n, _ in model.named_parameters()]
    assert sum("core.attn.qkv" in n for n in names) == 1          # listed once: one tensor, trained once


def test_rwkv_whole_blocks_get_no_stack_norm_or_residual_and_per_layer_init():
    model = model_of("rwkv6_lm")
    assert all(isinstance(n, torch.nn.Identity) for n in model.norms)
    fresh = build_stack(seqdsl.load(SURVEY / "rwkv6_lm.seq"))
    mu0 = fresh.blocks[0].layer.get_parameter("mu_k")
    mu1 = fresh.blocks[1].layer.get_parameter("mu_k")
    assert not torch.allclose(mu0, mu1)                           # layer_id 0 and 1 initialise differently
    tokens = tokens_for(model)
    x = model.embed(tokens)
    close(model.hidden(tokens), model.blocks[1](model.blocks[0](x)[0])[0])


def test_xlstm_is_m_blocks_of_mlstm_per_slstm_block_with_a_4_3_gated_ffn():
    cs = seqdsl.load(SURVEY / "xlstm.seq", m_blocks=7, repeats=2)
    assert cs.layers == (("mlstm",) * 7 + ("slstm", "ffn")) * 2
    model = build_stack(seqdsl.load(SURVEY / "xlstm.seq"))
    ffn = model.blocks[4]
    assert ffn.up.weight.shape == (math.ceil(32 * 4 / 3), 32) and ffn.act is F.gelu


def test_jamba_layout_is_one_attention_in_eight_mixers_and_moe_every_other_layer():
    cs = seqdsl.load(SURVEY / "jamba.seq", repeats=2)
    mixers = [name for name in cs.layers if name in ("mamba", "attn")]
    ffns = [name for name in cs.layers if name in ("mlp", "moe")]
    assert len(mixers) == len(ffns) == 16 and mixers.count("attn") == 2 and mixers[4] == mixers[12] == "attn"
    assert ffns == ["mlp", "moe"] * 8


# -------------------------------------------------------------------------------------- every stack
@pytest.mark.parametrize("stem", HYBRIDS)
def test_spec_round_trips_and_has_its_header(stem):
    path = SURVEY / f"{stem}.seq"
    s = parse(path.read_text())
    assert parse(print_model(s)) == s
    header = path.read_text().split("\nstack ")[0]
    assert "arXiv" in header and "record M" in header and "# oracle:" in header and "Errata applied:" in header


@pytest.mark.parametrize("stem", HYBRIDS)
def test_generation_matches_forward(stem):
    """Token by token, and a prompt read in one call then continued, both equal the forward (Griffin: past its
    window)."""
    model = model_of(stem, **({"window": 6} if stem == "griffin" else {}))
    tokens = tokens_for(model, T=17)
    with torch.no_grad():
        logits = model(tokens)
        cache, steps = None, []
        for t in range(17):
            out, cache = model.step(tokens[:, t], cache)
            steps.append(out)
        close(torch.stack(steps, 1), logits)
        x, caches = model.run_layers_cached(model.embed(tokens[:, :7]), [{} for _ in model.blocks])
        close(model.head(model.final_norm(x)), logits[:, :7])
        for t in range(7, 17):
            out, caches = model.step(tokens[:, t], caches)
            close(out, logits[:, t])


@pytest.mark.parametrize("stem", HYBRIDS)
def test_state_size_and_a_few_training_steps(stem):
    cs = seqdsl.load(SURVEY / f"{stem}.seq")
    model = build_stack(cs, seed=0)
    grows = any(cs.blocks[n].kind in ("attention", "zamba_shared") and not cs.blocks[n].options.get("window")
                for n in cs.layers)
    s1, s100 = model.state_size(1), model.state_size(100)
    assert 0 < s1 <= s100
    if grows:
        assert model.state_size(200) > s100
    else:                                            # recurrent states, Griffin's window
        assert model.state_size(10_000) == s100
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 64, (4, 17), generator=g)
    losses = training_losses(model, tokens, steps=6, lr=3e-3)
    assert losses[-1] < losses[0] - 0.05, losses


@pytest.mark.parametrize("block,message", [
    ("attention(heads = 4, kv_heads = 3)", "not a multiple of kv_heads"),
    ("attention(heads = 4, kv_heads = 0, rope = 1)", "even head dimension"),
    ("attention(heads = 2, rope = 2)", "rope is 0 or 1"),
    ("moe(experts = 2, top_k = 3)", "more than experts"),
    ("moe(experts = 4, expand = 0)", "expand must be positive"),
    ("moe(top_k = 1)", "needs experts"),
    ("geglu(expand = -1)", "expand must be positive"),
    ("swiglu(width = 2)", "no option 'width'"),
    ("zamba_shared(heads = 5)", "not divisible"),
    ("whole_block(mlp())", "whole_block"),
    ('whole_block(cell("nope.seq"))', "does not exist"),
], ids=["kv-heads", "rope-odd", "rope-flag", "moe-top-k", "moe-expand", "moe-experts", "geglu-expand",
        "swiglu-option", "zamba-heads", "whole-not-cell", "whole-missing"])
def test_bad_block_options_are_located_errors(tmp_path, block, message):
    spec = tmp_path / "s.seq"
    spec.write_text(f"stack s(d_model = 12, vocab = 8):\n  blocks:\n    b = {block}\n  layers = [b]\n")
    with pytest.raises(seqdsl.SpecError, match=message) as e:
        seqdsl.load(spec)
    assert e.value.line == 3 and e.value.column is not None
