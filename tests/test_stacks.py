"""Stack specs: parsing and validation, the module's forward, generation step and state accounting."""

import pathlib

import pytest
import torch
from conftest import ROOT

import seqdsl
from seqdsl.frontend import parse
from seqdsl.printer import print_model
from seqdsl.stack import build_stack

STACKS = sorted((ROOT / "examples" / "stacks").glob("*.seq"))


@pytest.mark.parametrize("path", STACKS, ids=lambda p: p.stem)
def test_stack_round_trips_and_steps_match_forward(path):
    s = parse(path.read_text())
    assert parse(print_model(s)) == s
    cs = seqdsl.load(path)
    model = build_stack(cs, seed=0).double()
    tokens = torch.randint(0, int(cs.values["vocab"]), (2, 11), generator=torch.Generator().manual_seed(0))
    logits = model(tokens)
    assert logits.shape == (2, 11, int(cs.values["vocab"]))
    cache, steps = None, []
    with torch.no_grad():
        for t in range(tokens.shape[1]):
            out, cache = model.step(tokens[:, t], cache)
            steps.append(out)
    assert torch.allclose(torch.stack(steps, 1), logits, atol=1e-9, rtol=1e-7)


def test_head_only_at_scored_positions():
    model = build_stack(seqdsl.load(ROOT / "examples/stacks/gla.seq")).double()
    tokens = torch.randint(0, 64, (3, 9))
    b, t = torch.tensor([0, 2, 2]), torch.tensor([8, 1, 5])
    assert torch.allclose(model(tokens, positions=(b, t)), model(tokens)[b, t])


def test_sliding_window_attention_decodes_beyond_its_window(tmp_path):
    spec = tmp_path / "swa.seq"
    spec.write_text("stack swa(d_model = 16, vocab = 10):\n  blocks:\n    a = attention(heads = 2, window = 3)\n"
                    "  layers = [a, a]\n")
    model = build_stack(seqdsl.load(spec)).double()
    tokens = torch.randint(0, 10, (1, 12))
    logits = model(tokens)
    cache, steps = None, []
    with torch.no_grad():
        for t in range(12):
            out, cache = model.step(tokens[:, t], cache)
            steps.append(out)
    assert torch.allclose(torch.stack(steps, 1), logits, atol=1e-9)
    assert cache[0]["k"].shape[2] == 2          # the cache never grows past the window
    assert model.state_size(1000) == 2 * 2 * 16 * 3


def test_hybrid_pattern_and_state_size():
    cs = seqdsl.load(ROOT / "examples/stacks/mamba_attention.seq")
    assert cs.layers == ("mamba", "mlp") * 3 + ("attn", "mlp")
    model = build_stack(cs)
    mamba_state = model.blocks[0].layer.state_size()
    assert model.state_size(100) == 3 * mamba_state + 2 * 64 * 100
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("text,message", [
    ("stack s(d_model = 8):\n  layers = [a]\n", "'a' is not a block of this stack"),
    ("stack s(d_model = 8):\n  blocks:\n    a = conv(4)\n  layers = [a]\n", "must be one of cell, attention"),
    ("stack s(d_model = 8):\n  blocks:\n    a = cell(\"nope.seq\")\n  layers = [a]\n", "does not exist"),
    ("stack s(d_model = 8):\n  blocks:\n    a = attention(heads = 3)\n  layers = [a]\n", "not divisible"),
    ("stack s(d_model = 8):\n  blocks:\n    a = mlp(width = 3)\n  layers = [a]\n", "no option 'width'"),
    ("stack s(d_model = 8):\n  blocks:\n    a = mlp()\n  layers = [a] * -1\n", "non-negative integer"),
    ("stack s(vocab = 8):\n  blocks:\n    a = mlp()\n  layers = [a]\n", "needs a d_model"),
])
def test_bad_stacks_are_located_errors(tmp_path, text, message):
    f = tmp_path / "s.seq"
    f.write_text(text)
    with pytest.raises(seqdsl.SpecError, match=message) as e:
        seqdsl.load(f)
    assert e.value.line is not None and str(f) in str(e.value)


def test_cell_errors_name_the_block(tmp_path):
    f = tmp_path / "s.seq"
    gla = pathlib.Path(ROOT / "examples/gla.seq").resolve()
    f.write_text(f'stack s(d_model = 8):\n  blocks:\n    g = cell("{gla}", nope = 3)\n  layers = [g]\n')
    with pytest.raises(seqdsl.SpecError, match="in the block 'g'"):
        seqdsl.load(f)


@pytest.mark.parametrize("text,message", [
    ("stack s(d_model = 8):\n  blocks:\n    a = mlp()\n  layers = [a] * 1000000000\n", "at most 1024 layers"),
    ("stack class(d_model = 8):\n  blocks:\n    a = mlp()\n  layers = [a]\n", "cannot name a stack"),
    ("stack s(d_model = 8):\n  blocks:\n    a = attention(heads = 2.5)\n  layers = [a]\n", "whole number"),
])
def test_stack_limits_and_names(tmp_path, text, message):
    f = tmp_path / "s.seq"
    f.write_text(text)
    with pytest.raises(seqdsl.SpecError, match=message):
        seqdsl.load(f)
