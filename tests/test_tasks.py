"""Task generators (seqdsl/tasks.py) against the definitions in benchmarks.md §1.

Each task: determinism by seed, shapes/dtypes/vocabulary bounds, the documented layout, the scored
positions, and where possible a hand-written oracle that reaches accuracy 1.0 through evaluate()
while a constant predictor stays near chance.
"""

import math

import pytest
import torch

from seqdsl.tasks import (IGNORE, TASKS, Batch, evaluate, make_task, mqar_layout, mse,
                          scored_positions)

ALL = sorted(TASKS)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def one_hot_logits(pred: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(pred.clamp(min=0), vocab).float()


def recall_oracle(batch: Batch) -> torch.Tensor:
    """Predict, at each scored position, the token that followed the latest earlier occurrence of its token."""
    pred = torch.zeros_like(batch.targets)
    for b, t in zip(*scored_positions(batch)):
        row = batch.inputs[b, :t].tolist()
        tok = int(batch.inputs[b, t])
        p = len(row) - 1 - row[::-1].index(tok)
        pred[b, t] = batch.inputs[b, p + 1]
    return pred


def best_constant_accuracy(batch: Batch) -> float:
    target = batch.targets[batch.mask]
    return float(torch.bincount(target).max()) / target.numel()


# ---------------------------------------------------------------------------------------------- common


@pytest.mark.parametrize("name", ALL)
def test_shapes_dtypes_bounds(name):
    task = make_task(name)
    b = task.sample(16, gen(0))
    B, T = 16, task.seq_len
    assert b.mask.shape == (B, T) and b.mask.dtype == torch.bool
    assert b.targets.shape == (B, T)
    assert b.mask.any(1).all(), "every example has a scored position"
    if task.regression:
        assert b.inputs.shape == (B, T, task.input_dim) and b.inputs.dtype == torch.float32
        assert b.targets.is_floating_point() and torch.isnan(b.targets[~b.mask]).all()
        assert not torch.isnan(b.targets[b.mask]).any()
        return
    assert b.inputs.shape == (B, T) and b.inputs.dtype == torch.long and b.targets.dtype == torch.long
    assert 0 <= int(b.inputs.min()) and int(b.inputs.max()) < task.vocab_size
    scored = b.targets[b.mask]
    assert 0 <= int(scored.min()) and int(scored.max()) < task.vocab_size
    assert (b.targets[~b.mask] == IGNORE).all()


@pytest.mark.parametrize("name", ALL)
def test_deterministic_by_seed(name):
    task = make_task(name)
    a, b, c = task.sample(8, gen(1)), task.sample(8, gen(1)), task.sample(8, gen(2))
    for x, y in ((a.inputs, b.inputs), (a.targets, b.targets), (a.mask, b.mask)):
        assert torch.equal(x.nan_to_num(), y.nan_to_num()) if x.is_floating_point() else torch.equal(x, y)
    assert not torch.equal(a.inputs, c.inputs)
    assert torch.equal(task.sample(8, 1).inputs, a.inputs), "an int seed is the same as a seeded generator"
    g = gen(3)
    assert not torch.equal(task.sample(8, g).inputs, task.sample(8, g).inputs), "the generator advances"


def test_make_task_validation():
    with pytest.raises(ValueError, match=r"unknown task 'mqr'.*mqar"):
        make_task("mqr")
    with pytest.raises(ValueError, match=r"mqar: unknown setting num_pairs; allowed settings: .*num_kv_pairs"):
        make_task("mqar", num_pairs=4)
    with pytest.raises(ValueError, match=r"num_kv_pairs=40 is invalid"):
        make_task("mqar", seq_len=128, num_kv_pairs=40)
    with pytest.raises(ValueError, match=r"seq_len=63 is invalid: must be even"):
        make_task("mqar", seq_len=63, num_kv_pairs=4)
    with pytest.raises(ValueError, match=r"vocab_size=16 is invalid"):
        make_task("mqar", vocab_size=16, seq_len=128, num_kv_pairs=16)
    with pytest.raises(ValueError, match=r"split='dev' is not allowed; choose one of test, train"):
        make_task("in_context_recall", split="dev")
    with pytest.raises(ValueError, match=r"seq_len='long' must be int"):
        make_task("parity", seq_len="long")
    with pytest.raises(ValueError, match=r"frac_noise"):
        make_task("noisy_in_context_recall", frac_noise=1.0)
    with pytest.raises(ValueError, match=r"num_tokens_to_copy"):
        make_task("selective_copying", num_tokens_to_copy=0)
    # CLI values arrive as int / float / str and are converted to the setting's type
    t = make_task("in-context-recall", seq_len="64", multi_query="false", frac_noise=0)
    assert t.seq_len == 64 and t.multi_query is False and t.settings["frac_noise"] == 0.0
    assert make_task("mqar", seq_len=64.0, num_kv_pairs="4.0").num_kv_pairs == 4
    with pytest.raises(ValueError, match=r"num_kv_pairs=4.5 must be int"):
        make_task("mqar", num_kv_pairs=4.5)
    assert repr(make_task("parity")).startswith("parity(seq_len=64")


# ---------------------------------------------------------------------------------------------- MQAR §1.1


def test_mqar_zoology_docstring_example():
    """multiquery_ar(vocab_size=12, num_kv_pairs=2, input_seq_len=16, random_non_queries=False)."""
    task = make_task("mqar", vocab_size=12, num_kv_pairs=2, seq_len=16)
    b = mqar_layout(torch.tensor([[2, 4]]), torch.tensor([[8, 7]]), torch.tensor([[4, 1]]), task.seq_len)
    doc_inputs = [2, 8, 4, 7, 0, 0, 4, 0, 0, 0, 0, 0, 2, 0, 0]
    doc_labels = [-100] * 6 + [7] + [-100] * 5 + [8, -100, -100]
    assert b.inputs.shape == (1, 16)
    assert b.inputs[0, :15].tolist() == doc_inputs and int(b.inputs[0, 15]) == 0   # docstring shows 15 of 16
    assert b.targets[0, :15].tolist() == doc_labels and int(b.targets[0, 15]) == IGNORE
    assert scored_positions(b)[1].tolist() == [6, 12]
    # the sampler produces this exact layout class: same vocab split and query slots
    s = task.sample(256, gen(0))
    assert (s.inputs[:, 0:4:2] >= 1).all() and (s.inputs[:, 0:4:2] < 6).all()
    assert (s.inputs[:, 1:4:2] >= 6).all() and (s.inputs[:, 1:4:2] < 12).all()
    q = s.mask.nonzero()[:, 1]
    assert ((q >= 4) & (q % 2 == 0) & (q <= 14)).all()


def test_mqar_layout_and_power_law():
    task = make_task("mqar", vocab_size=512, seq_len=128, num_kv_pairs=16)
    b = task.sample(128, gen(0))
    V, N, C = 512, 16, 32
    keys, vals = b.inputs[:, 0:C:2], b.inputs[:, 1:C:2]
    assert ((keys >= 1) & (keys < V // 2)).all() and ((vals >= V // 2) & (vals < V)).all()
    for r in range(b.batch_size):
        assert len(set(keys[r].tolist())) == N and len(set(vals[r].tolist())) == N
        q = b.mask[r].nonzero()[:, 0]
        assert len(q) == N and ((q >= C) & ((q - C) % 2 == 0)).all()
        assert sorted(b.inputs[r, q].tolist()) == sorted(keys[r].tolist()), "each key queried exactly once"
        lookup = dict(zip(keys[r].tolist(), vals[r].tolist()))
        assert [lookup[k] for k in b.inputs[r, q].tolist()] == b.targets[r, q].tolist()
        rest = torch.ones(128, dtype=torch.bool)
        rest[:C] = False
        rest[q] = False
        assert (b.inputs[r, rest] == 0).all(), "non-query positions hold the filler 0"
    # power law a=0.01 (p ∝ (g+1)^-0.99): queries cluster right after the context
    gaps = (b.mask.nonzero()[:, 1] - C) // 2
    uniform_mean = (48 - 1) / 2
    assert gaps.float().mean() < 0.75 * uniform_mean
    assert (gaps == 0).float().mean() > 1 / 48 * 2
    flat = make_task("mqar", vocab_size=512, seq_len=128, num_kv_pairs=16, power_a=1.0).sample(128, gen(0))
    assert ((flat.mask.nonzero()[:, 1] - C) // 2).float().mean() > gaps.float().mean()


def test_mqar_random_non_queries_and_passes():
    b = make_task("mqar", vocab_size=64, seq_len=64, num_kv_pairs=4, random_non_queries=True).sample(64, gen(0))
    filler = ~b.mask
    filler[:, :8] = False
    assert (b.inputs[filler] != 0).float().mean() > 0.9
    assert torch.equal(b.inputs[b.mask], b.inputs[b.mask].clamp(1, 31)), "queries are keys"
    t = make_task("mqar", vocab_size=64, seq_len=64, num_kv_pairs=4, num_passes=2)
    b = t.sample(8, gen(0))
    assert torch.equal(b.inputs[:, :8], b.inputs[:, 8:16])
    assert (b.mask[:, :16] == 0).all() and (b.mask.sum(1) == 4).all()


def test_mqar_oracle_and_constant():
    task = make_task("mqar")
    b = task.sample(64, gen(5))
    pred = recall_oracle(b)
    assert evaluate(one_hot_logits(pred, task.vocab_size), b) == 1.0
    assert evaluate(pred, b) == 1.0                                   # integer predictions [B, T]
    b_idx, t_idx = scored_positions(b)
    assert evaluate(one_hot_logits(pred[b_idx, t_idx], task.vocab_size), b) == 1.0   # gathered logits
    assert evaluate(pred, b, average="example") == 1.0
    assert best_constant_accuracy(b) < 4 / (task.vocab_size // 2) + 0.01   # chance = 1/256


# --------------------------------------------------------------------------------------- MAD recall §1.2


def check_recall_batch(b: Batch, num_keys: int):
    """Every scored key appeared earlier in a pair whose value is its target; values are fixed per key."""
    for r in range(b.batch_size):
        x = b.inputs[r].tolist()
        kv = {}
        for t in range(0, len(x) - 1, 2):
            if x[t] < num_keys:
                assert kv.setdefault(x[t], x[t + 1]) == x[t + 1], "one value per key in a sequence"
        for t in b.mask[r].nonzero()[:, 0].tolist():
            k = x[t]
            assert k < num_keys and k in x[:t], "the scored key appeared earlier"
            p = t - 1 - x[:t][::-1].index(k)
            assert x[p + 1] == int(b.targets[r, t]) == kv[k]


def test_in_context_recall_layout():
    task = make_task("in_context_recall")
    b = task.sample(32, gen(0))
    K = task.num_keys
    assert K == 8
    assert (b.inputs[:, 0::2] < K).all() and (b.inputs[:, 1::2] >= K).all()
    check_recall_batch(b, K)
    # scored = exactly the key positions whose key occurred in an earlier pair, plus the probe at L-2
    for r in range(8):
        x = b.inputs[r].tolist()
        expect = [t for t in range(0, 128, 2) if x[t] in x[0:t:2]]
        assert b.mask[r].nonzero()[:, 0].tolist() == expect and expect[-1] == 126
    pred = recall_oracle(b)
    assert evaluate(pred, b) == 1.0
    assert best_constant_accuracy(b) < 0.25                          # 8 values: chance 1/8


def test_in_context_recall_train_split_and_single_query():
    t = make_task("in_context_recall", split="train")
    b = t.sample(8, gen(0))
    assert torch.equal(b.targets[:, :-1], b.inputs[:, 1:]) and b.mask[:, :-1].all() and not b.mask[:, -1].any()
    test = make_task("in_context_recall", split="test").sample(8, gen(0))
    assert torch.equal(test.inputs, b.inputs), "the split changes the targets, not the sequences"
    sq = make_task("in_context_recall", multi_query=False)
    b = sq.sample(16, gen(0))
    assert sq.num_keys == 7                                          # V-1 = 15 key/value tokens
    assert (b.inputs[:, -2] == sq.vocab_size - 1).all(), "copy prefix before the probe key"
    assert (b.mask.sum(1) == 1).all() and b.mask[:, -1].all()
    check_recall_batch(Batch(b.inputs, b.targets, b.mask), sq.num_keys)


def test_noisy_in_context_recall():
    task = make_task("noisy_in_context_recall")
    b = task.sample(64, gen(0))
    S = task.vocab_size - task.noise_vocab_size                     # 16 key/value tokens, noise 16..31
    noise_slot = b.inputs[:, 0::2] >= S
    assert torch.equal(noise_slot, b.inputs[:, 1::2] >= S), "noise fills whole pair slots"
    frac = noise_slot[:, :-1].float().mean()
    assert abs(float(frac) - task.frac_noise) < 0.05
    assert not (b.mask & (b.inputs >= S)).any(), "noise is never scored"
    check_recall_batch(b, task.num_keys)
    assert evaluate(recall_oracle(b), b) == 1.0
    assert make_task("noisy_in_context_recall", split="train").sample(4, gen(0)).mask[:, :-1].all()


def test_fuzzy_in_context_recall():
    task = make_task("fuzzy_in_context_recall")
    b, segments = task.sample_segments(32, gen(0))
    assert torch.equal(b.inputs, task.sample(32, gen(0)).inputs)
    pad, K = task.vocab_size - 1, (task.vocab_size - 1) // 2
    for r, segs in enumerate(segments):
        x, targets = b.inputs[r].tolist(), b.targets[r].tolist()
        assert segs[0].kind == "pad" and segs[-1].kind == "final" and sum(s.kind == "probe" for s in segs) <= 1
        first = segs[1].start
        assert first >= 1 and x[:first] == [pad] * first, "left padding with V-1"
        shown = {}
        expect_scored = set()
        for s in segs[1:]:
            k, v = s.key, s.value
            assert len(k) == task.k_motif_size, "test split: keys at the maximum motif size"
            assert all(t < K for t in k) and all(K <= t < pad for t in v) and 1 <= len(v) <= 3
            assert x[s.start:s.start + len(k)] == list(k)
            assert x[s.start + len(k):s.start + len(k) + len(v)] == list(v)[:len(x) - s.start - len(k)]
            assert s.scored == (k in shown) or s.kind == "final"
            if s.scored:
                assert shown[k] == v, "a repeated key keeps its value"
                for j, tok in enumerate(v):
                    expect_scored.add(s.start + len(k) - 1 + j)
                    assert targets[s.start + len(k) - 1 + j] == tok
            shown[k] = v
        assert segs[-1].key in [s.key for s in segs[1:-1]], "the final probe key was shown before"
        assert set(b.mask[r].nonzero()[:, 0].tolist()) == expect_scored
    train = make_task("fuzzy_in_context_recall", split="train")
    tb, tsegs = train.sample_segments(16, gen(0))
    assert torch.equal(tb.targets[:, :-1], tb.inputs[:, 1:]) and tb.mask.all()
    assert {len(s.key) for segs in tsegs for s in segs[1:]} == {1, 2, 3}


# ----------------------------------------------------------------------------- copying, compression, memo


@pytest.mark.parametrize("placement", ["uniform", "mad"])
def test_selective_copying(placement):
    task = make_task("selective_copying", placement=placement)
    b = task.sample(64, gen(0))
    V, L, N = task.vocab_size, task.seq_len, task.num_tokens_to_copy
    blank, copy = V - 2, V - 1
    assert (b.inputs[:, L - N - 1] == copy).all() and (b.inputs[:, L - N:] == blank).all()
    assert (b.mask.sum(1) == N).all() and b.mask[:, L - N:].all()
    region = b.inputs[:, :L - N - 1]
    for r in range(b.batch_size):
        data = [t for t in region[r].tolist() if t != blank]
        assert data == b.targets[r, L - N:].tolist(), "targets = the non-noise tokens in order"
    assert (region != copy).all()
    oracle = torch.zeros_like(b.targets)
    for r in range(b.batch_size):
        oracle[r, L - N:] = region[r][region[r] != blank]
    assert evaluate(oracle, b) == 1.0
    assert best_constant_accuracy(b) < 3 / (V - 2)
    last_data_next_to_copy = (b.inputs[:, L - N - 2] != blank).float().mean()
    if placement == "mad":
        assert last_data_next_to_copy == 1.0                         # MAD's np.insert quirk
    else:
        assert last_data_next_to_copy < 0.5
        first = (region != blank).float().argmax(1)
        assert first.float().mean() > 2, "content is spread over the region"


def test_compression():
    task = make_task("compression")
    b = task.sample(16, gen(0))
    assert task.readout == "autoencoder"
    assert (b.inputs[:, -1] == task.vocab_size - 1).all() and (b.inputs[:, :-1] < task.vocab_size - 1).all()
    assert torch.equal(b.targets, b.inputs) and b.mask.all()


def test_memorization():
    task = make_task("memorization")
    V = task.vocab_size
    assert task.num_keys == 127 and len(set(task.kv_map.tolist())) == 127
    assert ((task.kv_map >= 127) & (task.kv_map < V - 1)).all()
    assert torch.equal(task.kv_map, make_task("memorization").kv_map), "fixed by kv_map_seed"
    assert not torch.equal(task.kv_map, make_task("memorization", kv_map_seed=1).kv_map)
    b = task.sample(32, gen(0))
    keys = b.inputs[:, 0::2]
    assert (keys < task.num_keys).all() and (b.inputs[:, 1::2] == V - 1).all()
    assert torch.equal(b.mask[:, 1::2], torch.ones_like(keys, dtype=torch.bool)) and not b.mask[:, 0::2].any()
    assert torch.equal(b.targets[:, 1::2], task.kv_map[keys])
    b2 = task.sample(32, gen(9))                                       # another seed, the same map
    assert torch.equal(b2.targets[:, 1::2], task.kv_map[b2.inputs[:, 0::2]])
    oracle = torch.zeros_like(b.targets)
    oracle[:, 1::2] = task.kv_map[keys]
    assert evaluate(oracle, b) == 1.0
    assert best_constant_accuracy(b) < 0.05


# ---------------------------------------------------------------------------------- induction, parity


def test_induction_heads_trigger():
    task = make_task("induction_heads", variant="trigger", seq_len=64)
    b = task.sample(128, gen(0))
    S = task.vocab_size - 1
    assert ((b.inputs == S).sum(1) == 2).all() and (b.inputs[:, -1] == S).all()
    assert (b.mask.sum(1) == 1).all() and b.mask[:, -1].all()
    first = (b.inputs == S).float().argmax(1)
    assert torch.equal(b.targets[:, -1], b.inputs[torch.arange(128), first + 1]), \
        "target after the trigger = the token that followed its first occurrence"
    assert first.max() > 50 and first.min() < 10, "the first trigger can be anywhere"
    assert evaluate(recall_oracle(b), b) == 1.0
    assert best_constant_accuracy(b) < 0.2


def test_induction_heads_repeat():
    task = make_task("induction_heads")
    b = task.sample(16, gen(0))
    n = task.seq_len // 2
    assert torch.equal(b.inputs[:, :n], b.inputs[:, n:])
    assert not b.mask[:, :n].any() and b.mask[:, n:-1].all() and not b.mask[:, -1].any()
    t = torch.arange(n, 2 * n - 1)
    assert torch.equal(b.targets[:, t], b.inputs[:, t - n + 1]) and torch.equal(b.targets[:, t], b.inputs[:, t + 1])
    oracle = torch.zeros_like(b.targets)
    oracle[:, t] = b.inputs[:, t - n + 1]
    assert evaluate(oracle, b) == 1.0
    assert make_task("induction_heads", seq_len=1024).sample(2, gen(0)).inputs.shape == (2, 1024)


def test_parity_running_and_final():
    task = make_task("parity")
    b = task.sample(32, gen(0))
    assert task.vocab_size == 2 and b.mask.all()
    xor = torch.zeros(32, dtype=torch.long)
    for t in range(task.seq_len):
        xor ^= b.inputs[:, t]
        assert torch.equal(b.targets[:, t], xor), "target = running xor"
    assert abs(best_constant_accuracy(b) - 0.5) < 0.05
    fin = make_task("parity", score="final")
    b = fin.sample(64, gen(0))
    assert fin.vocab_size == 3 and (b.inputs[:, -1] == 2).all() and (b.inputs[:, :-1] < 2).all()
    assert (b.mask.sum(1) == 1).all() and b.mask[:, -1].all()
    assert torch.equal(b.targets[:, -1], b.inputs[:, :-1].sum(1) % 2)
    m3 = make_task("parity", modulus=3).sample(8, gen(0))
    assert torch.equal(m3.targets, m3.inputs.cumsum(1) % 3)


# ---------------------------------------------------------------------------------------------- adding


def test_adding_problem():
    task = make_task("adding")
    assert task.regression and task.metric == "mse" and task.input_dim == 2 and task.vocab_size == 0
    b = task.sample(8_000, gen(0))
    L, h = task.seq_len, task.seq_len // 2
    u, marks = b.inputs[..., 0], b.inputs[..., 1]
    assert ((u >= 0) & (u < 1)).all()
    assert (marks[:, :h].sum(1) == 1).all() and (marks[:, h:].sum(1) == 1).all()
    assert set(marks.unique().tolist()) == {0.0, 1.0}
    assert torch.allclose(b.targets[:, -1], (u * marks).sum(1))
    assert b.mask[:, -1].all() and b.mask.sum() == 8_000
    baseline = mse(torch.ones(8_000, L), b)                          # always predict 1
    assert abs(baseline - 1 / 6) < 0.01 and math.isclose(task.baseline_mse, 1 / 6)
    assert mse(b.targets[:, -1:].expand(-1, L).unsqueeze(-1), b) == 0.0   # [B, T, 1]
    assert mse(b.targets[b.mask], b) == 0.0                              # gathered [N]
    with pytest.raises(ValueError, match="use mse"):
        evaluate(torch.zeros(8_000, L), b)


# ---------------------------------------------------------------------------------------------- metrics


def test_evaluate_scores_only_masked_positions():
    b = make_task("mqar", vocab_size=64, seq_len=64, num_kv_pairs=4).sample(16, gen(0))
    pred = torch.where(b.mask, b.targets, torch.randint(64, b.targets.shape, generator=gen(1)))
    assert evaluate(pred, b) == 1.0, "garbage at unscored positions does not count"
    half = pred.clone()
    half[:8][b.mask[:8]] = (half[:8][b.mask[:8]] + 1) % 64           # first 8 examples all wrong
    assert evaluate(half, b) == 0.5 and evaluate(half, b, average="example") == 0.5
    # micro vs per-example averaging differ when examples have different numbers of scored tokens
    r = make_task("in_context_recall").sample(8, gen(0))
    wrong = r.targets.clone()
    wrong[0][r.mask[0]] = (wrong[0][r.mask[0]] + 1) % 16
    micro = 1 - int(r.mask[0].sum()) / int(r.mask.sum())
    assert math.isclose(evaluate(wrong, r), micro) and math.isclose(evaluate(wrong, r, average="example"), 7 / 8)
    b_idx, t_idx = scored_positions(b)
    assert torch.equal(torch.stack([b_idx, t_idx], 1), b.mask.nonzero())
    with pytest.raises(ValueError, match="scored positions"):
        evaluate(torch.zeros(3, 64), b)
