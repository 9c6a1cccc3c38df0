"""Every form of every example, generated for the torch backend, against the fp64 interpreter.

Outputs, final states and gradients (of every input and of the initial state); odd lengths,
K != V; varlen packing; splitting a sequence in two and carrying the state; decode steps.
"""

import pytest
import torch
from conftest import EXAMPLES

import seqdsl
from seqdsl.testing import (FORM_FACTOR, assert_close, projected_grads, random_state, sample_inputs,
                            small_hparams)

MODELS = {p.stem: p for p in EXAMPLES}


def small(name):
    m = seqdsl.load(MODELS[name])
    return m.with_hparams(**small_hparams(m))


_OPS = {}


def compiled(name):
    if name not in _OPS:
        m = small(name)
        _OPS[name] = (m, seqdsl.compile(m, backend="torch"), seqdsl.reference(m))
    return _OPS[name]


def cases():
    for name in sorted(MODELS):
        m = small(name)
        from seqdsl.plan import plan

        for mode in plan(m.checked, m.analysis()).modes:
            yield pytest.param(name, mode, id=f"{name}-{mode}")


def _flat(x):
    return x if isinstance(x, tuple) else (x,)


@pytest.mark.parametrize("name,mode", list(cases()))
@pytest.mark.parametrize("T", [1, 63, 65])
def test_forward_matches_interpreter(name, mode, T):
    m, op, ref = compiled(name)
    inputs = sample_inputs(ref, 2, T, seed=T)
    h0 = random_state(ref, 2)
    o_ref, ht_ref = ref(**inputs, initial_state=h0, output_final_state=True)
    o, ht = op(**inputs, initial_state=h0, output_final_state=True, mode=mode, chunk_size=16)
    for i, (a, b) in enumerate(zip(_flat(o_ref), _flat(o))):
        assert_close(f"{name}/{mode}/o{i}", a, b, torch.float64, FORM_FACTOR[mode])
    for s, a, b in zip(op.states, _flat(ht_ref), _flat(ht)):
        assert_close(f"{name}/{mode}/final {s}", a, b, torch.float64, FORM_FACTOR[mode])


@pytest.mark.parametrize("name,mode", list(cases()))
def test_float32_within_tolerance(name, mode):
    m, op, ref = compiled(name)
    inputs = sample_inputs(ref, 1, 40, seed=3)
    o_ref, ht_ref = ref(**inputs, output_final_state=True)
    low = {k: (v.to(torch.complex64) if v.is_complex() else v.float()) for k, v in inputs.items()}
    o, ht = op(**low, output_final_state=True, mode=mode, chunk_size=16)
    for a, b in zip(_flat(o_ref), _flat(o)):
        assert b.dtype in (torch.float32, torch.complex64)
        assert_close(f"{name}/{mode}/o fp32", a, b, torch.float32, FORM_FACTOR[mode])
    for a, b in zip(_flat(ht_ref), _flat(ht)):
        assert_close(f"{name}/{mode}/state fp32", a, b, torch.float32, FORM_FACTOR[mode])


@pytest.mark.parametrize("name,mode", list(cases()))
def test_gradients_match_interpreter(name, mode):
    m, op, ref = compiled(name)
    inputs = sample_inputs(ref, 1, 21, seed=5)
    h0 = random_state(ref, 1, scale=0.3)

    g_ref = projected_grads(lambda xs, h: ref(**xs, initial_state=h, output_final_state=True), inputs, h0)
    g_op = projected_grads(lambda xs, h: op(**xs, initial_state=h, output_final_state=True, mode=mode,
                                            chunk_size=8), inputs, h0)
    for k in g_ref:
        if g_ref[k] is None:
            assert g_op[k] is None or g_op[k].abs().max() == 0, f"{name}/{mode}: unexpected gradient for {k}"
            continue
        assert g_op[k] is not None, f"{name}/{mode}: no gradient for {k}"
        assert_close(f"{name}/{mode}/d{k}", g_ref[k], g_op[k], torch.float64, FORM_FACTOR[mode] * 10)


@pytest.mark.parametrize("name", ["gla", "mamba", "lru"])
def test_empty_packed_sequences_keep_their_initial_state(name):
    """cu_seqlens with empty sequences (first, middle, last) in every form: those keep their initial state,
    the others match the interpreter (which runs sequence by sequence)."""
    m, op, ref = compiled(name)
    cu = torch.tensor([0, 0, 5, 5, 11, 11])
    inputs = sample_inputs(ref, 1, 11, seed=12)
    h0 = random_state(ref, 5)
    expected = ref(**inputs, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    for mode in op.modes:
        got = op(**inputs, initial_state=h0, output_final_state=True, cu_seqlens=cu, mode=mode, chunk_size=4)
        for a, b in zip(_flat(expected[0]), _flat(got[0])):
            assert_close(f"{name}/{mode}/empty sequences o", a, b, torch.float64, FORM_FACTOR[mode])
        for a, b, h in zip(_flat(expected[1]), _flat(got[1]), _flat(h0)):
            assert_close(f"{name}/{mode}/empty sequences state", a, b, torch.float64, FORM_FACTOR[mode])
            for i in (0, 2, 4):
                assert torch.equal(b[i].to(h.dtype), h[i]), f"{name}/{mode}: empty sequence {i} changed its state"


@pytest.mark.parametrize("name,mode", list(cases()))
def test_varlen_equals_separate_runs(name, mode):
    m, op, ref = compiled(name)
    lengths = [5, 1, 17]
    inputs = sample_inputs(ref, 1, sum(lengths), seed=9)
    h0 = random_state(ref, len(lengths))
    cu = torch.tensor([0, 5, 6, 23])
    o, ht = op(**inputs, initial_state=h0, output_final_state=True, cu_seqlens=cu, mode=mode, chunk_size=4)
    for i, (lo, hi) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        part = {k: (v[:, lo:hi] if k in op.checked.op_streams else v) for k, v in inputs.items()}
        hi0 = tuple(h[i:i + 1] for h in _flat(h0))
        o_i, ht_i = op(**part, initial_state=hi0 if len(hi0) > 1 else hi0[0], output_final_state=True, mode=mode)
        for a, b in zip(_flat(o_i), _flat(o)):
            assert_close(f"{name}/{mode}/varlen o seq{i}", a, b[:, lo:hi], torch.float64, FORM_FACTOR[mode])
        for a, b in zip(_flat(ht_i), _flat(ht)):
            assert_close(f"{name}/{mode}/varlen state seq{i}", a, b[i:i + 1], torch.float64, FORM_FACTOR[mode])


@pytest.mark.parametrize("name,mode", list(cases()))
def test_split_sequence_carrying_state_equals_one_pass(name, mode):
    m, op, ref = compiled(name)
    inputs = sample_inputs(ref, 2, 30, seed=11)
    o_full, ht_full = op(**inputs, output_final_state=True, mode=mode, chunk_size=8)
    first = {k: (v[:, :13] if k in op.checked.op_streams else v) for k, v in inputs.items()}
    second = {k: (v[:, 13:] if k in op.checked.op_streams else v) for k, v in inputs.items()}
    o1, h1 = op(**first, output_final_state=True, mode=mode, chunk_size=8)
    o2, h2 = op(**second, initial_state=h1, output_final_state=True, mode=mode, chunk_size=8)
    for a, b1, b2 in zip(_flat(o_full), _flat(o1), _flat(o2)):
        assert_close(f"{name}/{mode}/split o", a, torch.cat([b1, b2], dim=1), torch.float64, FORM_FACTOR[mode])
    for a, b in zip(_flat(ht_full), _flat(h2)):
        assert_close(f"{name}/{mode}/split state", a, b, torch.float64, FORM_FACTOR[mode])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_decode_steps_equal_a_full_pass(name):
    m, op, ref = compiled(name)
    inputs = sample_inputs(ref, 2, 6, seed=13)
    o_full, _ = op(**inputs, mode="recurrent")
    state = None
    for t in range(6):
        step_in = {k: (v[:, t] if k in op.checked.op_streams else v) for k, v in inputs.items()}
        o_t, state = op.decode(state, **step_in)
        for a, b in zip(_flat(o_full), _flat(o_t)):
            assert_close(f"{name}/decode t={t}", a[:, t], b, torch.float64)


def test_modes_follow_the_class_and_unavailable_mode_is_a_clear_error():
    _, op, _ = compiled("lstm")
    assert op.modes == ("recurrent",)
    inputs = sample_inputs(compiled("lstm")[2], 1, 3)
    with pytest.raises(ValueError, match="mode 'chunk' is not available for the nonlinear class"):
        op(**inputs, mode="chunk")
    assert compiled("gated_deltanet")[1].modes == ("recurrent", "chunk")
    assert compiled("gla")[1].modes == ("recurrent", "scan", "chunk")
    # time-invariant (LTI) systems get the convolution form, and use it by default
    assert compiled("s4d")[1].modes == ("recurrent", "scan", "chunk", "conv")
    assert compiled("s4d")[1].default_mode() == "conv"
    with pytest.raises(ValueError, match="mode 'conv' is not available.*decay of 'S' changes with time"):
        compiled("gla")[1](**sample_inputs(compiled("gla")[2], 1, 3), mode="conv")


def test_bad_inputs_are_clear_errors():
    _, op, ref = compiled("gla")
    inputs = sample_inputs(ref, 1, 4)
    with pytest.raises(TypeError, match="missing \\['gk'\\]"):
        op(**{k: v for k, v in inputs.items() if k != "gk"})
    bad = dict(inputs, q=inputs["q"][..., :3])
    with pytest.raises(ValueError, match="'q' must have shape"):
        op(**bad)
    for bad_cu in ([0, 2, 1, 4], [0, 3], [1, 4], [4]):   # falling, short of T, not from 0, no sequence
        with pytest.raises(ValueError, match=r"gla: cu_seqlens must rise from 0 to T = 4"):
            op(**inputs, cu_seqlens=torch.tensor(bad_cu))
        with pytest.raises(ValueError, match=r"gla: cu_seqlens must rise from 0 to T = 4"):
            ref(**inputs, cu_seqlens=torch.tensor(bad_cu))   # the interpreter checks them the same way
    with pytest.raises(ValueError, match="gla: with cu_seqlens the batch size must be 1; got 2"):
        op(**sample_inputs(ref, 2, 4), cu_seqlens=torch.tensor([0, 4]))


def test_generated_source_is_cached_readable_and_headed(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQDSL_CACHE_DIR", str(tmp_path))
    m = small("gla")
    op = seqdsl.compile(m)
    text = open(op.path).read()
    assert text.startswith('"""Generated by seqdsl') and "do not edit" in text and "Spec hash (sha256)" in text
    assert "def step(" in text and "def chunk(" in text and "def scan(" in text
    again = seqdsl.compile(m)
    assert again.path == op.path and len(list(tmp_path.glob("*.py"))) == 1
    other = seqdsl.compile(m.with_hparams(heads=4))
    assert other.path != op.path


def test_scale_arg_overrides_default():
    _, op, ref = compiled("gla")
    inputs = sample_inputs(ref, 1, 7)
    o1, _ = op(**inputs, scale=0.5)
    o2, _ = ref(**inputs, scale=0.5)
    assert_close("scale", o2, o1, torch.float64, 10)


BONUS_SPECS = {
    # RWKV-style: read the state before the update (plus a current-token bonus), key-axis decay
    "matrix": ("model bonus(d_model = 8, heads = 2, dk = 4, dv = 3):\n  streams:\n    q: [heads, dk] = linear(x)\n"
               "    k: [heads, dk] = linear(x)\n    v: [heads, dv] = linear(x)\n"
               "    w: [heads, dk] = -exp(linear(x))\n  cell over heads:\n    state S: [dk, dv] = 0\n"
               "    o = q @ S + sum(q * k) * v\n    S <- exp(w) * S + outer(k, v)\n  out:\n    y = linear(o)\n",
               ("recurrent", "scan", "chunk")),
    # a vector state read whole before its update (RWKV-4's numerator and denominator)
    "vector": ("model vbonus(d_model = 8, n = 5):\n  streams:\n    b: [n] = linear(x)\n    a: [n] = sigmoid(linear(x))\n"
               "  cell:\n    state h: [n] = 0\n    o = h * 2\n    h <- a * h + b\n  out:\n    y = linear(o)\n",
               ("recurrent", "scan", "chunk")),
}


@pytest.mark.parametrize("kind", sorted(BONUS_SPECS))
def test_reads_before_the_update_get_parallel_forms(kind):
    text, modes = BONUS_SPECS[kind]
    m = seqdsl.loads(text)
    op, ref = seqdsl.compile(m), seqdsl.reference(m)
    assert op.modes == modes
    inputs = sample_inputs(ref, 2, 29, seed=4)
    h0 = random_state(ref, 2)
    o_ref, ht_ref = ref(**inputs, initial_state=h0, output_final_state=True)
    for mode in op.modes:
        o, ht = op(**inputs, initial_state=h0, output_final_state=True, mode=mode, chunk_size=8)
        assert_close(f"{kind}/{mode}/o", o_ref, o, torch.float64, FORM_FACTOR[mode])
        assert_close(f"{kind}/{mode}/state", ht_ref, ht, torch.float64, FORM_FACTOR[mode])


_CONSTANT_DECAY = """model constant_decay(d_model = 8, heads = 2, dk = 4, dv = 6):
  streams:
    q: [heads, dk] = linear(x)
    k: [heads, dk] = linear(x)
    v: [heads, dv] = linear(x)
  cell over heads:
    state S: [dk, dv] = 0
    S <- {decay} + outer(k, v)
    o = q @ S
  out:
    y = linear(o)
"""


def _forms_match_the_interpreter(op, ref, label: str, modes, seed: int, grads: bool = True) -> None:
    """Each of ``modes`` of op against the fp64 interpreter at B 2, T 21 (chunks of 8) from a random initial state:
    readout, final state and (``grads``) the gradients of a random projection of them."""
    inputs = sample_inputs(ref, 2, 21, seed=seed)
    h0 = random_state(ref, 2, scale=0.3)
    o_ref, ht_ref = ref(**inputs, initial_state=h0, output_final_state=True)
    g_ref = projected_grads(lambda xs, h: ref(**xs, initial_state=h, output_final_state=True), inputs, h0) \
        if grads else {}
    for mode in modes:
        o, ht = op(**inputs, initial_state=h0, output_final_state=True, mode=mode, chunk_size=8)
        assert_close(f"{label}/{mode}/o", _flat(o_ref)[0], _flat(o)[0], torch.float64, FORM_FACTOR[mode])
        assert_close(f"{label}/{mode}/S", _flat(ht_ref)[0], _flat(ht)[0], torch.float64, FORM_FACTOR[mode])
        if grads:
            g_op = projected_grads(lambda xs, h: op(**xs, initial_state=h, output_final_state=True, mode=mode,
                                                    chunk_size=8), inputs, h0)
            for k in g_ref:
                assert_close(f"{label}/{mode}/d{k}", g_ref[k], g_op[k], torch.float64, FORM_FACTOR[mode] * 10)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("decay", ["0.9 * S", "exp(-0.1) * S", "sigmoid(2.0) * S", "S / 1.25"])
def test_a_constant_decay_runs_in_every_form(decay, backend):
    """A decay that is a number (RetNet's gamma written as a literal): every form against the interpreter, outputs,
    final state and gradients. The chunk form used to hand the number to torch as a Python float
    ('float' object has no attribute 'expand')."""
    m = seqdsl.loads(_CONSTANT_DECAY.format(decay=decay), name="constant_decay")
    op, ref = seqdsl.compile(m, backend=backend), seqdsl.reference(m)
    assert "chunk" in op.modes
    _forms_match_the_interpreter(op, ref, decay, op.modes, seed=8)


_ONE_LINE_DELTA = """model one_line_delta(d_model = 8, heads = 2, dk = 4, dv = 6):
  streams:
    q: [heads, dk] = linear(x)
    k: [heads, dk] = l2norm(linear(x))
    v: [heads, dv] = linear(x)
    beta: [heads] = sigmoid(linear(x))
    a: [heads] = softplus(linear(x))
  cell over heads:
    state S: [dk, dv] = 0
    S <- {update}
    o = q @ S
  out:
    y = linear(o)
"""


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("update,kind", [
    ("exp(-a) * S + beta * outer(k, v - k @ (exp(-a) * S))", "delta"),      # Gated DeltaNet as the paper writes it
    ("S / (1 + a) + beta * outer(k, v - (k * 2) @ (S / (1 + a)) / 2)", "dplr"),   # another key where it reads
    ("S / (1 + a) + beta * outer(k, v - k @ (S / (1 + a)))", "delta"),
    ("exp(-a) * S + beta * outer(k, v - k @ S)", "dplr"),      # (D - beta k k^T) S: corrected before the decay
])
def test_a_delta_rule_with_its_decay_in_one_update(update, kind, backend):
    """A delta rule whose decay is in the same update: the delta chunk form (decay, then the delta rule on the
    decayed state) is planned where the correction reads the decayed state, and only there; the others are the
    general diagonal-plus-rank-1 transition (chunk_dplr). The last case used to get a delta chunk form that
    silently computed the decay-first transition (0.2 relative error against the interpreter), then none."""
    m = seqdsl.loads(_ONE_LINE_DELTA.format(update=update), name="one_line_delta")
    op, ref = seqdsl.compile(m, backend=backend), seqdsl.reference(m)
    assert op.plan.states[0].kind == kind
    assert "chunk" in op.modes, op.modes
    _forms_match_the_interpreter(op, ref, update, op.modes, seed=9, grads=False)


_KEY_GATED_DELTA = """model key_gated_delta(d_model = 8, heads = 2, dk = 4, dv = 6):
  streams:
    q: [heads, dk] = linear(x)
    k: [heads, dk] = l2norm(linear(x))
    v: [heads, dv] = linear(x)
    beta: [heads] = sigmoid(linear(x))
    gk: [heads, dk] = -softplus(linear(x))
  cell over heads:
    state S: [dk, dv] = 0
{updates}
    o = q @ S
  out:
    y = linear(o)
"""


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("updates", [
    "    S <- exp(gk) * S\n    S <- S + beta * outer(k, v - k @ S)",           # Kimi Delta Attention's order
    "    S <- exp(gk) * S + beta * outer(k, v - k @ (exp(gk) * S))",          # the same, one update
    "    S <- exp(gk) * S + outer(beta * k, v - k @ S)",                      # corrected before the decay
])
def test_a_delta_rule_with_a_key_axis_decay_gets_the_dplr_chunk_form(updates, backend):
    """A delta rule decayed along the key axis (KDA) is a diagonal-plus-rank-1 transition: the chunk form
    (chunk_dplr, torch or Triton) matches the interpreter in outputs, final state and gradients. It used to have no
    parallel form."""
    m = seqdsl.loads(_KEY_GATED_DELTA.format(updates=updates), name="key_gated_delta")
    op, ref = seqdsl.compile(m, backend=backend), seqdsl.reference(m)
    assert op.plan.states[0].kind == "dplr" and "chunk" in op.modes, op.plan.why_not
    _forms_match_the_interpreter(op, ref, "key-gated delta", ("chunk",), seed=4)


_RANK_ONE = """model rank_one(d_model = 8, heads = 2, dk = 4, dv = 6):
  streams:
    q: [heads, dk] = linear(x)
    k: [heads, dk] = l2norm(linear(x))
    k2: [heads, dk] = l2norm(linear(x))
    v: [heads, dv] = linear(x)
    v2: [heads, dv] = linear(x)
    gk: [heads, dk] = -softplus(linear(x))
    gk2: [heads, dk] = -softplus(linear(x))
    gv: [heads, dv] = -softplus(linear(x))
  cell over heads:
    state S: [dk, dv] = 0
{updates}
    o = q @ S
  out:
    y = linear(o)
"""


@pytest.mark.parametrize("updates,why", [
    ("    S <- exp(gv) * S\n    S <- S + outer(k, v - k @ S)", "decays along its value axis"),
    ("    S <- exp(gk) * S\n    S <- S + outer(k, v - k @ S)\n    S <- S + outer(k2, v2 - k2 @ S)",
     "2 rank-1 corrections per step"),
    ("    S <- exp(gk) * S + outer(k2, q @ (exp(gk2) * S)) + outer(k, v)", "under other factors"),
    ("    S <- exp(gk) * S + outer(k2, q @ S) * exp(gv) + outer(k, v)", "varies along its value axis"),
])
def test_rank_one_corrections_outside_the_chunk_forms_say_why(updates, why):
    """Linear rank-1 corrections the chunk forms do not take run recurrent only, and the plan says why (explain
    prints it); the model still runs, matching the interpreter."""
    m = seqdsl.loads(_RANK_ONE.format(updates=updates), name="rank_one")
    op, ref = seqdsl.compile(m), seqdsl.reference(m)
    assert op.modes == ("recurrent",) and why in op.plan.why_not["chunk"], op.plan.why_not
    inputs = sample_inputs(ref, 1, 9, seed=2)
    assert_close("o", _flat(ref(**inputs))[0], _flat(op(**inputs))[0], torch.float64, FORM_FACTOR["recurrent"])


_DECLARED_INIT = """model declared_init(d_model = 8, heads = 2, dk = 4):
  params:
    h0: [heads, dk] ~ normal(0, 1)
  streams:
    u: [heads, dk] = linear(x)
    a: [heads, dk] = sigmoid(linear(x))
  cell over heads:
    arg c = 0.25
    state h: [dk] = {init}
    h <- a * h + u
    o = h * 2
  out:
    y = linear(o)
"""


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("init,value", [("-1", -1.0), ("0.5 * 3", 1.5), ("dk ** -0.5", 0.5), ("c", 0.25)])
def test_a_declared_initial_value_that_is_not_a_plain_number(init, value, backend):
    """A state declared = -1, = 0.5 * 3, = dk ** -0.5 or = an arg starts from that value when no initial_state is
    given, in every form: the same as the interpreter given that value, written out here, as initial_state. The op used
    to refuse every initial value but a plain number ('non-constant initial value; pass initial_state')."""
    m = seqdsl.loads(_DECLARED_INIT.format(init=init), name="declared_init")
    op, ref = seqdsl.compile(m, backend=backend), seqdsl.reference(m)
    inputs = sample_inputs(ref, 2, 9, seed=4)
    expected = ref(**inputs, initial_state=torch.full((2, 2, 4), value, dtype=torch.float64), output_final_state=True)
    for mode in op.modes:
        got = op(**inputs, output_final_state=True, mode=mode, chunk_size=4)
        assert_close(f"{init}/{mode}/o", expected[0], got[0], torch.float64, FORM_FACTOR[mode])
        assert_close(f"{init}/{mode}/h", expected[1], got[1], torch.float64, FORM_FACTOR[mode])
    if init == "c":    # an arg given at the call replaces the declared one, in the initial value too
        twice = ref(**inputs, initial_state=torch.full((2, 2, 4), 0.5, dtype=torch.float64))
        assert_close("c=0.5", twice[0], op(**inputs, c=0.5, mode="recurrent")[0], torch.float64, 1)


def test_an_initial_value_read_from_a_param_needs_the_initial_state_at_the_op():
    m = seqdsl.loads(_DECLARED_INIT.format(init="2 * h0 + 1"), name="declared_init")
    op = seqdsl.compile(m, backend="torch")
    inputs = sample_inputs(seqdsl.reference(m), 1, 3, seed=1)
    with pytest.raises(ValueError, match="reads the param 'h0', which the op does not take; pass initial_state"):
        op(**inputs)
    op(**inputs, initial_state=torch.zeros(1, 2, 4, dtype=torch.float64))


@pytest.mark.parametrize("name,mode", list(cases()))
def test_no_tokens_gives_empty_readouts_and_the_initial_state(name, mode):
    """T = 0 in every form: readouts [B, 0, ...], final states equal to the initial ones (the recurrent form's token
    loop used to stack an empty list: a raw RuntimeError)."""
    m, op, ref = compiled(name)
    inputs = {k: (v[:, :0] if k in m.checked.op_streams else v) for k, v in sample_inputs(ref, 2, 3, seed=1).items()}
    h0 = random_state(ref, 2)
    o, ht = op(**inputs, initial_state=h0, output_final_state=True, mode=mode, chunk_size=16)
    o_ref, _ = ref(**sample_inputs(ref, 2, 3, seed=1), initial_state=h0)
    for a, b in zip(_flat(o_ref), _flat(o)):
        assert b.shape == (a.shape[0], 0) + a.shape[2:], (b.shape, a.shape)
    for s, a, b in zip(op.states, _flat(h0), _flat(ht)):
        assert torch.equal(a.to(b.dtype), b), f"{name}/{mode}: the state {s} changed without a token"


def test_chunk_size_must_be_a_positive_power_of_two():
    m, op, ref = compiled("gla")
    inputs = sample_inputs(ref, 1, 5, seed=1)
    for bad in (0, -4, 3, 24, 16.0):
        with pytest.raises(ValueError, match="chunk_size must be a positive power of two"):
            op(**inputs, mode="chunk", chunk_size=bad)
