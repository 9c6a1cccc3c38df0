"""Every Triton form of every example, generated for the triton backend, against the fp64 interpreter.

Runs on CPU under ``TRITON_INTERPRET=1`` (set by conftest). The interpreter executes the kernels in
the dtype they are given, so fp64 inputs run fp64 kernels and are checked at fp64 tolerance (the
kernel's arithmetic is checked exactly, not blurred by fp32 rounding); fp32 inputs run fp32 kernels,
checked at fp32 tolerance. Outputs, final states and gradients (the recurrent form's Triton backward
kernel where the cell is real, else recomputed through the torch twin); T in {1, 33, 100}; K != V and sizes that are not powers of two (padded blocks); initial
states; varlen; the tiled state axis; decode steps. Interpreted Triton is slow (every program, every
step, every op is Python), so the dims are tiny. Larger shapes and bf16 run only on a GPU (``gpu``).
"""

import atexit
import functools
import shutil
import tempfile

import pytest
import torch
from conftest import EXAMPLES

import seqdsl
from seqdsl.errors import SpecError
from seqdsl.runtime import torch_forms, triton_chunk, triton_runtime, triton_scan, triton_tune
from seqdsl.testing import (FORM_FACTOR, assert_close, at_dims, projected_grads, random_state, rel_rms,
                            sample_inputs)

# padded lanes of a block may divide by zero or overflow; they are masked, and numpy says so
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning",
                                        "ignore:overflow encountered:RuntimeWarning")

MODELS = {p.stem: p for p in EXAMPLES}
# Tiny dims for the interpreter: few programs (cell-axis elements), K != V, sizes not powers of two.
TINY = {"d_model": 2, "heads": 2, "dk": 4, "dv": 6, "n": 3, "hidden": 4, "headdim": 2, "expand": 2, "dt_rank": 2,
        "gate_rank": 2, "m": 6, "mix_rank": 4, "decay_rank": 4, "iclr_rank": 4}
CUDA = torch.cuda.is_available()


def tiny(name):
    """The example at TINY dims (or d_model = 4, or the shared small dims, where those do not fit it)."""
    return at_dims(seqdsl.load(MODELS[name]), TINY, 4)


_OPS = {}
_CACHE = tempfile.mkdtemp(prefix="seqdsl_triton_test_")   # generated files from the current generators
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


def compiled(name):
    """(model, Triton op, fp64 interpreter) of an example at tiny dims, generated once per session."""
    if name not in _OPS:
        m = tiny(name)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SEQDSL_CACHE_DIR", _CACHE)
            _OPS[name] = (m, seqdsl.compile(m, backend="triton"), seqdsl.reference(m))
    return _OPS[name]


def nan_filled_buffers(monkeypatch):
    """The kernels' output buffers (triton_runtime.empty) start as NaN: an output or gradient element that no
    program writes shows up as NaN in what is checked."""
    def empty(shape, dtype, device, complex_=False):
        return torch.full(tuple(shape) + ((2,) if complex_ else ()), float("nan"), dtype=dtype, device=device)
    monkeypatch.setattr(triton_runtime, "empty", empty)


def assert_within_one_bf16_ulp(tag, a, b):
    """a (rounded to bf16 by a kernel under the interpreter, which truncates) is within one bf16 ulp of b."""
    ulp = torch.exp2(torch.floor(torch.log2(b.abs().clamp_min(1e-30))) - 7)
    assert ((a - b).abs() <= ulp).all(), (tag, ((a - b).abs() / ulp).max())


def cases():
    for name in sorted(MODELS):
        for mode in compiled(name)[1].modes:
            yield pytest.param(name, mode, id=f"{name}-{mode}")


CASES = list(cases())


def _flat(x):
    return x if isinstance(x, tuple) else (x,)


def _check(tag, ref_out, out, dtype, factor=1.0):
    (o_ref, ht_ref), (o, ht) = ref_out, out
    for i, (a, b) in enumerate(zip(_flat(o_ref), _flat(o))):
        assert_close(f"{tag}/o{i}", a, b, dtype, factor)
    for i, (a, b) in enumerate(zip(_flat(ht_ref), _flat(ht))):
        assert_close(f"{tag}/final state {i}", a, b, dtype, factor)


@pytest.mark.parametrize("name,mode", CASES)
@pytest.mark.parametrize("T,B", [(1, 2), (33, 1), (100, 1)])
def test_forward_matches_interpreter(name, mode, T, B):
    m, op, ref = compiled(name)
    inputs = sample_inputs(ref, B, T, seed=T)
    h0 = random_state(ref, B)
    expected = ref(**inputs, initial_state=h0, output_final_state=True)
    got = op(**inputs, initial_state=h0, output_final_state=True, mode=mode, chunk_size=16)
    _check(f"{name}/triton {mode} T={T}", expected, got, torch.float64, FORM_FACTOR[mode])


@pytest.mark.parametrize("name,mode", CASES)
def test_float32_within_tolerance(name, mode):
    m, op, ref = compiled(name)
    inputs = sample_inputs(ref, 1, 12, seed=3)
    expected = ref(**inputs, output_final_state=True)
    low = {k: (v.to(torch.complex64) if v.is_complex() else v.float()) for k, v in inputs.items()}
    o, ht = op(**low, output_final_state=True, mode=mode, chunk_size=16)
    for t in _flat(o) + _flat(ht):
        assert t.dtype in (torch.float32, torch.complex64)
    _check(f"{name}/triton {mode} fp32", expected, (o, ht), torch.float32, FORM_FACTOR[mode])


@pytest.mark.parametrize("name,mode", CASES)
def test_gradients_match_interpreter(name, mode):
    m, op, ref = compiled(name)
    inputs = sample_inputs(ref, 1, 13, seed=5)
    h0 = random_state(ref, 1, scale=0.3)

    g_ref = projected_grads(lambda xs, h: ref(**xs, initial_state=h, output_final_state=True), inputs, h0)
    g_op = projected_grads(lambda xs, h: op(**xs, initial_state=h, output_final_state=True, mode=mode,
                                            chunk_size=16), inputs, h0)
    for k in g_ref:
        if g_ref[k] is None:
            assert g_op[k] is None or g_op[k].abs().max() == 0, f"{name}/{mode}: unexpected gradient for {k}"
            continue
        assert g_op[k] is not None, f"{name}/{mode}: no gradient for {k}"
        assert_close(f"{name}/triton {mode} d{k}", g_ref[k], g_op[k], torch.float64, FORM_FACTOR[mode] * 10)


def _projection_grads(outputs, leaves: dict) -> dict:
    """Gradients of a fixed random projection of ``outputs`` (a tuple of tensors) w.r.t. ``leaves``: {name: grad,
    zeros where unused}."""
    g = torch.Generator().manual_seed(0)
    loss = sum(((t.real * torch.randn(t.shape, generator=g, dtype=torch.float64)).sum() for t in outputs))
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {k: torch.zeros_like(x) if gr is None else gr for (k, x), gr in zip(leaves.items(), grads)}


CHUNK_CASES = [c for c in CASES if c.values[1] == "chunk"]


@pytest.mark.parametrize("name,mode", CHUNK_CASES)
def test_chunk_form_without_initial_or_final_state_matches_interpreter(name, mode):
    """The op's defaults (no initial state, no final state) let the chunk kernels skip reading the op's zero initial
    state and storing the final state (fla's initial_state=None, output_final_state=False), and the backward then
    reads no final-state gradient and stores no initial-state gradient. Checked: outputs and gradients with the
    defaults; and the other way round, with an initial state that needs no gradient and only the final state used
    (no gradient reaches the outputs: autograd hands the kernels' backward none for them)."""
    m, op, ref = compiled(name)
    inputs = sample_inputs(ref, 2, 21, seed=11)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    o, ht = op(**leaves, mode=mode, chunk_size=16)
    assert ht is None
    o_ref, _ = ref(**leaves)
    for i, (a, b) in enumerate(zip(_flat(o_ref), _flat(o))):
        assert_close(f"{name}/defaults o{i}", a, b, torch.float64, FORM_FACTOR[mode])
    got, want = _projection_grads(_flat(o), leaves), _projection_grads(_flat(o_ref), leaves)
    for k in want:
        assert_close(f"{name}/defaults d{k}", want[k], got[k], torch.float64, FORM_FACTOR[mode] * 10)

    h0 = random_state(ref, 2, scale=0.3)
    _, ht = op(**leaves, initial_state=h0, output_final_state=True, mode=mode, chunk_size=16)
    _, ht_ref = ref(**leaves, initial_state=h0, output_final_state=True)
    _check(f"{name}/final state only", ((), ht_ref), ((), ht), torch.float64, FORM_FACTOR[mode])
    got, want = _projection_grads(_flat(ht), leaves), _projection_grads(_flat(ht_ref), leaves)
    for k in want:
        assert_close(f"{name}/final state only d{k}", want[k], got[k], torch.float64, FORM_FACTOR[mode] * 10)


def _unused(arg) -> bool:
    """An argument standing for a buffer the kernel does not touch: None, or the one zero whose address a load that
    reads nothing takes (``triton_runtime.unread_address``)."""
    return arg is None or any(arg is t for t in triton_runtime._UNREAD.values())


FUSED_STATE_CASES = [("gla", "recurrent"), ("lstm", "recurrent"), ("s4d", "recurrent"), ("mamba", "scan"),
                     ("lru", "scan"), ("hgrn", "scan")]


@pytest.mark.parametrize("name,mode", FUSED_STATE_CASES)
def test_fused_kernels_store_no_unasked_final_state(name, mode, monkeypatch):
    """The fused recurrent and scan kernels as the chunk kernels: with the op's defaults (no initial state, no final
    state) the forward launch is handed no initial or final state buffer (STORE_FINAL_STATE off), and the backward
    launch neither a final-state gradient (nothing used the final state: autograd gives None, not zeros) nor an
    initial-state gradient buffer (no initial state needs one). Checked against the interpreter: outputs and
    gradients with the defaults; then an initial state that needs no gradient with only the final state used (the
    backward reads its gradient, stores none for the initial state); then both used, every gradient stored."""
    m, op, ref = compiled(name)
    if mode == "scan":
        assert op.module.SCAN == "fused", op.module.SCAN
    launches = []
    launch = triton_tune.launch
    monkeypatch.setattr(triton_tune, "launch",
                        lambda kernel, grid, args, meta, *a: launches.append((args, meta)) or launch(kernel, grid, args,
                                                                                                      meta, *a))
    n_states = len(_flat(random_state(ref, 1)))
    inputs = sample_inputs(ref, 2, 21, seed=11)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    o, ht = op(**leaves, mode=mode)
    assert ht is None
    (args, meta), = launches
    assert (meta["USE_INITIAL_STATE"], meta["STORE_FINAL_STATE"]) == (False, False), meta
    assert sum(_unused(a) for a in args) == 2 * n_states, f"{name}: buffers made for unused states"
    o_ref, _ = ref(**leaves)
    for i, (a, b) in enumerate(zip(_flat(o_ref), _flat(o))):
        assert_close(f"{name}/{mode} defaults o{i}", a, b, torch.float64, FORM_FACTOR[mode])
    launches.clear()
    got, want = _projection_grads(_flat(o), leaves), _projection_grads(_flat(o_ref), leaves)
    (args, meta), = launches
    assert (meta["USE_INITIAL_STATE"], meta["USE_FINAL_STATE_GRADIENT"], meta["STORE_INITIAL_STATE_GRADIENT"]) == \
        (False, False, False), meta
    assert sum(_unused(a) for a in args) == 3 * n_states, f"{name}: backward buffers made for unused states"
    for k in want:
        assert_close(f"{name}/{mode} defaults d{k}", want[k], got[k], torch.float64, FORM_FACTOR[mode] * 10)

    h0 = random_state(ref, 2, scale=0.3)
    launches.clear()
    _, ht = op(**leaves, initial_state=h0, output_final_state=True, mode=mode)
    assert launches[0][1]["STORE_FINAL_STATE"] and launches[0][1]["USE_INITIAL_STATE"]
    _, ht_ref = ref(**leaves, initial_state=h0, output_final_state=True)
    _check(f"{name}/{mode} final state only", ((), ht_ref), ((), ht), torch.float64, FORM_FACTOR[mode])
    launches.clear()
    got, want = _projection_grads(_flat(ht), leaves), _projection_grads(_flat(ht_ref), leaves)
    meta = launches[0][1]
    assert meta["USE_FINAL_STATE_GRADIENT"] and not meta["STORE_INITIAL_STATE_GRADIENT"], meta
    for k in want:
        assert_close(f"{name}/{mode} final state only d{k}", want[k], got[k], torch.float64, FORM_FACTOR[mode] * 10)

    g_ref = projected_grads(lambda xs, h: ref(**xs, initial_state=h, output_final_state=True), inputs, h0)
    g_op = projected_grads(lambda xs, h: op(**xs, initial_state=h, output_final_state=True, mode=mode), inputs, h0)
    for k in g_ref:
        if g_ref[k] is not None:
            assert_close(f"{name}/{mode} initial and final state d{k}", g_ref[k], g_op[k], torch.float64,
                         FORM_FACTOR[mode] * 10)


@pytest.mark.parametrize("name,mode", [("gla", "recurrent"), ("mamba", "scan"), ("lstm", "recurrent")])
def test_fused_kernels_read_no_copy_of_the_ops_zero_initial_state(name, mode, monkeypatch):
    """The recurrent and fused scan kernels start from the states' declared zeros when the op made them (no
    initial_state given): no contiguous copy of the op's broadcast zero is made for them to read
    (``triton_runtime.state_in``), and the results and gradients match the interpreter's; a given initial state is
    read."""
    m, op, ref = compiled(name)
    copies = []
    state_in = triton_runtime.state_in
    monkeypatch.setattr(triton_runtime, "state_in", lambda t, dtype: copies.append(t) or state_in(t, dtype))
    inputs = sample_inputs(ref, 2, 9, seed=4)
    with torch.no_grad():
        got = op(**inputs, output_final_state=True, mode=mode)
    assert copies == [], f"{name}: {len(copies)} initial states copied for the kernel"
    _check(f"{name}/{mode} zero initial state", ref(**inputs, output_final_state=True), got, torch.float64,
           FORM_FACTOR[mode])
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    o, _ = op(**leaves, mode=mode)                     # the backward kernels are handed the zeros as given
    got, want = _projection_grads(_flat(o), leaves), _projection_grads(_flat(ref(**leaves)[0]), leaves)
    for k in want:
        assert_close(f"{name}/{mode} zero initial state d{k}", want[k], got[k], torch.float64, FORM_FACTOR[mode] * 10)
    copies.clear()
    h0 = random_state(ref, 2)
    with torch.no_grad():
        op(**inputs, initial_state=h0, output_final_state=True, mode=mode)
    assert len(copies) == len(_flat(h0)), f"{name}: the given initial state was not read"


@pytest.mark.parametrize("name,mode", CASES)
def test_varlen_matches_interpreter(name, mode):
    m, op, ref = compiled(name)
    cu = torch.tensor([0, 4, 5, 12])
    inputs = sample_inputs(ref, 1, 12, seed=9)
    h0 = random_state(ref, 3)
    expected = ref(**inputs, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    got = op(**inputs, initial_state=h0, output_final_state=True, cu_seqlens=cu, mode=mode, chunk_size=16)
    _check(f"{name}/triton {mode} varlen", expected, got, torch.float64, FORM_FACTOR[mode])


def test_packed_sequences_run_in_one_call_where_the_form_takes_cu_seqlens(monkeypatch):
    """The chunk and scan forms take cu_seqlens (one launch for all sequences) unless a readout reads S_{t-1}
    (RWKV's bonus: shifting the packed time axis would cross sequences), which runs one call per sequence."""
    fused = {name for name in MODELS if "chunk" in compiled(name)[1].modes
             and "chunk" in compiled(name)[1].module.VARLEN_FORMS}
    assert {"gla", "deltanet", "gated_deltanet", "mamba2", "s4d", "lru", "deltaproduct"} <= fused
    for name, expect_calls in [("gla", 1), ("rwkv6", 3)]:
        m, op, ref = compiled(name)
        calls = []
        chunk = op.module.chunk
        monkeypatch.setattr(op.module, "chunk", lambda *a, **kw: calls.append(kw.get("cu_seqlens")) or chunk(*a, **kw))
        inputs = sample_inputs(ref, 1, 12, seed=9)
        op(**inputs, cu_seqlens=torch.tensor([0, 4, 5, 12]), mode="chunk", chunk_size=16)
        assert len(calls) == expect_calls, (name, calls)
        monkeypatch.undo()


@pytest.mark.parametrize("name", ["gla", "mamba", "lru", "lstm", "deltanet"])
def test_recurrent_kernel_runs_packed_sequences_in_one_launch(name, monkeypatch):
    """cu_seqlens reaches the fused recurrent kernel and its Triton backward: one launch each for all the
    sequences (lengths 4, 0, 1, 9, 3: an empty one keeps its initial state and gets dh0 = dh_T), against
    the interpreter's sequence-by-sequence loop, forward and gradients."""
    m, op, ref = compiled(name)
    assert "recurrent" in op.module.VARLEN_FORMS and op.module.BACKWARD == "triton"
    nan_filled_buffers(monkeypatch)      # nothing a program should write is left unwritten
    cu = torch.tensor([0, 4, 4, 5, 14, 17])
    inputs = sample_inputs(ref, 1, 17, seed=21)
    h0 = random_state(ref, 5, scale=0.5)
    launches = {"forward": 0, "backward": 0}
    for key, fn in (("forward", "_launch_recurrent"), ("backward", "_backward_recurrent")):
        original = getattr(op.module, fn)

        def counted(*a, _original=original, _key=key, **kw):
            launches[_key] += 1
            return _original(*a, **kw)
        monkeypatch.setattr(op.module, fn, counted)
    expected = ref(**inputs, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    got = op(**inputs, initial_state=h0, output_final_state=True, cu_seqlens=cu, mode="recurrent")
    _check(f"{name}/packed recurrent", expected, got, torch.float64)
    if op.module.TILED_AXIS is not None:     # the state axis split across programs, as on a GPU
        with triton_runtime.override_launch(block=2):
            got = op(**inputs, initial_state=h0, output_final_state=True, cu_seqlens=cu, mode="recurrent")
        _check(f"{name}/packed recurrent, tiles of 2", expected, got, torch.float64)
    g_ref = projected_grads(lambda xs, h: ref(**xs, initial_state=h, output_final_state=True, cu_seqlens=cu), inputs, h0)
    g_op = projected_grads(lambda xs, h: op(**xs, initial_state=h, output_final_state=True, cu_seqlens=cu,
                                          mode="recurrent"), inputs, h0)
    assert launches == {"forward": 2 + (op.module.TILED_AXIS is not None), "backward": 1}, launches
    for k in g_ref:
        if g_ref[k] is not None:
            assert_close(f"{name}/packed recurrent d{k}", g_ref[k], g_op[k], torch.float64, 10)
    if op.module.TILED_AXIS is not None:     # the backward split as on a GPU, packed sequences too
        block = 2 if op.checked.dim_sizes[op.module.TILED_AXIS] > 2 else 1
        with triton_runtime.override_launch(block=block):
            g_op = projected_grads(lambda xs, h: op(**xs, initial_state=h, output_final_state=True, cu_seqlens=cu,
                                                  mode="recurrent"), inputs, h0)
        for k in g_ref:
            if g_ref[k] is not None:
                assert_close(f"{name}/packed recurrent, tiles of {block}, d{k}", g_ref[k], g_op[k], torch.float64, 10)


def test_recurrent_twin_backward_runs_packed_sequences_one_call_each():
    """Where the recurrent form has no Triton backward (or a GPU caveat), the torch twin recomputes packed
    sequences one call each: the kernel's forward with the twin's backward against the interpreter."""
    m, op, ref = compiled("gla")
    cu = [0, 3, 3, 10, 12]
    inputs = sample_inputs(ref, 1, 12, seed=4)
    h0 = random_state(ref, 4, scale=0.5)
    args = dict(op.args)

    def run(xs, h):
        lifted = [op._lift(n, xs[n], torch.float64) for n in op.inputs]
        states = op._initial_states(h, 4, torch.float64, torch.device("cpu"))
        outs, finals = triton_runtime.apply_form(
            op.module._launch_recurrent, op.module._twin_recurrent, states, tuple(lifted),
            {**args, "cu_seqlens": torch.tensor(cu)}, n_outs=len(op.checked.readouts), backward=None)
        return op._unlift_output(outs[0], torch.float64), op._unlift_state(finals[0])

    expected = ref(**inputs, initial_state=h0, output_final_state=True, cu_seqlens=torch.tensor(cu))
    _check("gla/twin packed", expected, run(inputs, h0), torch.float64)
    g_ref = projected_grads(lambda xs, h: ref(**xs, initial_state=h, output_final_state=True,
                                            cu_seqlens=torch.tensor(cu)), inputs, h0)
    g_twin = projected_grads(run, inputs, h0)
    for k in g_ref:
        assert_close(f"gla/twin packed d{k}", g_ref[k], g_twin[k], torch.float64, 10)


TILED = ["gla", "linear_attention", "deltanet", "mamba2", "rfa", "rsa_rem", "mlstm", "mlstm_exp",  # matrix states:
         # the value axis (mLSTM's since its C is [dk, dv], not [dk, dk])
         "hgrn", "hawk", "lru", "qrnn", "rwkv4", "indrnn", "aft_simple", "s5"]       # elementwise vector states


def test_which_examples_split_their_state_across_programs():
    """The fused recurrent kernel splits a state axis across programs where the cell keeps it apart: the value
    axis of matrix states, and the one axis of vector states that the cell treats elementwise (HGRN, Hawk, LRU:
    without it a program would hold the whole state of a sequence); not where the cell mixes it (the recurrent
    matrices of LSTM, GRU and Elman, the dense transitions of S4, LSSL and HiPPO-LegS)."""
    tiled = {n for n in MODELS if getattr(compiled(n)[1].module, "TILED_AXIS", None) is not None}
    assert set(TILED) <= tiled, sorted(set(TILED) - tiled)
    for name in ("lstm", "gru", "s4", "lssl", "elman", "hippo_legs"):
        assert compiled(name)[1].module.TILED_AXIS is None, name


@pytest.mark.parametrize("name", [n for n in TILED if n in MODELS])
def test_state_tiles_across_programs_match_one_program(name):
    """The recurrent kernel, and the fused scan where it is split too, with the state axis in tiles of 2 (1 where
    the test dims make it 2 long), against the interpreter."""
    m, op, ref = compiled(name)
    assert op.module.TILED_AXIS is not None, f"{name}: expected a tiled state axis"
    block = 2 if op.checked.dim_sizes[op.module.TILED_AXIS] > 2 else 1
    inputs = sample_inputs(ref, 2, 9, seed=2)
    h0 = random_state(ref, 2)
    expected = ref(**inputs, initial_state=h0, output_final_state=True)
    forms = ["recurrent"] + (["scan"] if getattr(op.module, "SCAN_TILED_AXIS", None) else [])
    for form in forms:
        with triton_runtime.override_launch(block=block):
            got = op(**inputs, initial_state=h0, output_final_state=True, mode=form)
        _check(f"{name}/triton {form}, tiles of {block}", expected, got, torch.float64)


@pytest.mark.parametrize("name", ["gla", "lstm", "s4d", "lru"])
def test_decode_steps_and_split_sequences_carry_the_state(name):
    m, op, ref = compiled(name)
    inputs = sample_inputs(ref, 2, 7, seed=13)
    o_full, h_full = op(**inputs, output_final_state=True, mode="recurrent")
    first = {k: (v[:, :3] if k in op.checked.op_streams else v) for k, v in inputs.items()}
    rest = {k: (v[:, 3:] if k in op.checked.op_streams else v) for k, v in inputs.items()}
    o1, h1 = op(**first, output_final_state=True, mode="recurrent")
    o2, h2 = op(**rest, initial_state=h1, output_final_state=True, mode="recurrent")
    for a, b1, b2 in zip(_flat(o_full), _flat(o1), _flat(o2)):
        assert_close(f"{name}/split o", a, torch.cat([b1, b2], dim=1), torch.float64)
    for a, b in zip(_flat(h_full), _flat(h2)):
        assert_close(f"{name}/split state", a, b, torch.float64)
    state = None
    for t in range(3):
        step_in = {k: (v[:, t] if k in op.checked.op_streams else v) for k, v in inputs.items()}
        o_t, state = op.decode(state, **step_in)
        for a, b in zip(_flat(o_full), _flat(o_t)):
            assert_close(f"{name}/decode t={t}", a[:, t], b, torch.float64)


@pytest.mark.parametrize("gate,diag_3d", [("none", True), ("scalar", True), ("key", True), ("key", False)])
def test_chunk_kernels_match_the_recurrence_with_strong_decays(gate, diag_3d):
    g = torch.Generator().manual_seed(0)
    B, T, H, K, V = 1, 40, 2, 5, 18

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    q, k, v, h0 = rnd(B, T, H, K), rnd(B, T, H, K), rnd(B, T, H, V), rnd(B, H, K, V)
    gates = {"none": {}, "scalar": {"g": -20 * rnd(B, T, H).abs()}, "key": {"gk": -20 * rnd(B, T, H, K).abs()}}[gate]
    expected = torch_forms.recurrent_gated(q, k, v, **gates, scale=1.0, initial_state=h0, output_final_state=True)
    with triton_runtime.override_launch(diag_3d=diag_3d):
        got = triton_chunk.chunk_gated(q, k, v, **gates, initial_state=h0, output_final_state=True, chunk_size=32)
    _check(f"chunk kernels {gate}", expected, got, torch.float64, FORM_FACTOR["chunk"])


def _delta_inputs(T: int, gated: bool, gate_scale: float, B: int = 2, H: int = 2, K: int = 5, V: int = 18):
    """(q, k, v, beta, h0, gate kwargs, rnd) for the delta chunk tests, fp64, by default B = H = 2, K = 5, V = 18
    (not powers of two): unit-norm keys, beta in (0, 2) (negative eigenvalues too), log decays -gate_scale |N(0, 1)|."""
    g = torch.Generator().manual_seed(T + K)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    q, v, h0 = rnd(B, T, H, K), rnd(B, T, H, V), rnd(B, H, K, V)
    k = torch.nn.functional.normalize(rnd(B, T, H, K), dim=-1)
    beta = 2 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    gate = {"g": -gate_scale * rnd(B, T, H).abs()} if gated else {}
    return q, k, v, beta, h0, gate, rnd


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated-delta"])
@pytest.mark.parametrize("T,chunk", [(40, 32), (16, 16), (7, 16)])
def test_delta_chunk_kernels_match_the_recurrence(gated, T, chunk):
    """The WY / UT stage (the blocked inverse), the chunk-state loop and the outputs against the step loop,
    with K and V not powers of two, a last partial chunk and strong decays."""
    q, k, v, beta, h0, gate, _ = _delta_inputs(T, gated, gate_scale=5.0)
    expected = torch_forms.recurrent_delta(q, k, v, beta, **gate, scale=0.7, initial_state=h0, output_final_state=True)
    got = triton_chunk.chunk_delta(q, k, v, beta, **gate, scale=0.7, initial_state=h0, output_final_state=True,
                                   chunk_size=chunk)
    _check(f"delta chunk kernels gated={gated}", expected, got, torch.float64, FORM_FACTOR["chunk"])


@pytest.mark.parametrize("gate", ["none", "scalar", "key", "scalar+key"])
@pytest.mark.parametrize("T,chunk", [(37, 16), (16, 16), (5, 32), (70, 64)])
def test_chunk_backward_kernels_match_autograd_of_the_recurrence(gate, T, chunk, monkeypatch):
    """dq, dk, dv, dg / dgk and the initial state's gradient from the Triton backward kernels, against torch
    autograd through the step loop, for gradients arriving at the outputs and at the final state. Key gates
    are strong (log gates down to -4 per step, so exp(G) spans e^-250 within a chunk of 64): the sub-chunk
    reference rows must keep every exponential of a non-positive number. The key gate's intra-chunk scores
    start as NaN: what the kernels read of them must be what they wrote."""
    monkeypatch.setattr(triton_chunk, "intra_scores_buffer",
                        lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device))
    g = torch.Generator().manual_seed(T)
    B, H, K, V = 2, 2, 5, 18

    def rnd(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_(True)

    q, k, v, h0 = rnd(B, T, H, K), rnd(B, T, H, K), rnd(B, T, H, V), rnd(B, H, K, V)
    gates = {}
    if "scalar" in gate:
        gates["g"] = (-3 * torch.rand(B, T, H, generator=g, dtype=torch.float64)).requires_grad_(True)
    if "key" in gate:
        gates["gk"] = (-4 * torch.rand(B, T, H, K, generator=g, dtype=torch.float64)).requires_grad_(True)
    wrt = [q, k, v, h0, *gates.values()]
    do, dht = torch.randn(B, T, H, V, generator=g, dtype=torch.float64), torch.randn(B, H, K, V, generator=g,
                                                                                     dtype=torch.float64)

    def loss(form, **kw):
        o, ht = form(q, k, v, **gates, scale=0.6, initial_state=h0, output_final_state=True, **kw)
        return (o * do).sum() + (ht * dht).sum()

    expected = torch.autograd.grad(loss(torch_forms.recurrent_gated), wrt)
    got = torch.autograd.grad(loss(triton_chunk.chunk_gated, chunk_size=chunk), wrt)
    for name, a, b in zip(["q", "k", "v", "h0", *gates], expected, got):
        assert_close(f"chunk backward {gate} d{name}", a, b, torch.float64, FORM_FACTOR["chunk"])


@pytest.mark.parametrize("case", ["none", "scalar", "key", "delta", "gated-delta"])
def test_chunk_kernels_with_half_precision_dot_operands(case, monkeypatch):
    """The policy for bf16 / fp16 inputs rounds every tl.dot operand of the chunk kernels to that dtype
    (``triton_lib.dot``, fla's numerics), forward and backward. Under the interpreter the fp16 path runs (Triton
    3.9's interpreter computes bf16 dots wrongly: 1e9 relative error on a plain 32 x 32 product; the bf16 path is
    the same code with the other dtype, compiled by tests/test_gpu_compile_check.py and run by the `gpu` tests).
    Against autograd through the fp64 step loop: within fp16's tolerance, and measurably coarser than fp32, so
    the rounding did happen. The per-chunk states h are stored in the operands' dtype too, as fla does."""
    stored = []
    states_dtype = triton_chunk._states_dtype
    monkeypatch.setattr(triton_chunk, "_states_dtype", lambda common, dtype: stored.append(
        states_dtype(common, dtype)) or stored[-1])
    g = torch.Generator().manual_seed(3)
    B, T, H, K, V = 1, 37, 2, 5, 18

    def rnd(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_(True)

    q, v, h0 = rnd(B, T, H, K), rnd(B, T, H, V), rnd(B, H, K, V, scale=0.5)
    delta = "delta" in case
    k = rnd(B, T, H, K)
    if delta:
        k = torch.nn.functional.normalize(k, dim=-1).detach().requires_grad_(True)
    gates = {}
    if case in ("scalar", "gated-delta"):
        gates["g"] = (-torch.rand(B, T, H, generator=g, dtype=torch.float64)).requires_grad_(True)
    if case == "key":
        gates["gk"] = (-torch.rand(B, T, H, K, generator=g, dtype=torch.float64)).requires_grad_(True)
    beta = torch.rand(B, T, H, generator=g, dtype=torch.float64).requires_grad_(True) if delta else None
    wrt = [q, k, v, h0, *gates.values()] + ([beta] if delta else [])
    do, dht = torch.randn(B, T, H, V, generator=g, dtype=torch.float64), torch.randn(B, H, K, V, generator=g,
                                                                                     dtype=torch.float64)

    def run(form, cast, **kw):
        xs = [x.float() if cast else x for x in (q, k, v, h0)]
        gs = {n: (x.float() if cast else x) for n, x in gates.items()}
        if delta:
            o, ht = form(xs[0], xs[1], xs[2], beta.float() if cast else beta, **gs, scale=0.6, initial_state=xs[3],
                         output_final_state=True, **kw)
        else:
            o, ht = form(*xs[:3], **gs, scale=0.6, initial_state=xs[3], output_final_state=True, **kw)
        loss = (o.double() * do).sum() + (ht.double() * dht).sum()
        return [o.double(), ht.double(), *torch.autograd.grad(loss, wrt)]

    names = ["o", "ht", "dq", "dk", "dv", "dh0", *(f"d{n}" for n in gates)] + (["dbeta"] if delta else [])
    reference = run(torch_forms.recurrent_delta if delta else torch_forms.recurrent_gated, cast=False)
    form = triton_chunk.chunk_delta if delta else triton_chunk.chunk_gated
    with triton_runtime.override_launch(precision="fp16"):
        half = run(form, cast=True, chunk_size=16)
    assert stored == [torch.float16]
    full = run(form, cast=True, chunk_size=16)
    assert stored == [torch.float16, torch.float32]
    for name, ref, a, b in zip(names, reference, half, full):
        assert_close(f"{case} fp16 operands {name}", ref, a, torch.float16)      # measured 1e-4 - 1.2e-3
        assert_close(f"{case} ieee {name}", ref, b, torch.float32, FORM_FACTOR["chunk"])
    coarser = [rel_rms(ref, a) > 3 * rel_rms(ref, b) for ref, a, b in zip(reference, half, full)]
    assert all(coarser), coarser


REAL_KERNEL_CASES = ["none", "scalar", "key", "scalar+key", "delta", "gated-delta"]
VARLEN_KERNEL_CASES = [pytest.param(case, 5, 7, id=case)
                       for case in REAL_KERNEL_CASES + ["complex key", "complex scalar"]]
# K = 70, V = 80: two K tiles and two V tiles of 64 in every backward kernel that loops over tiles
VARLEN_KERNEL_CASES += [pytest.param(case, 70, 80, id=f"{case}-K70-V80") for case in REAL_KERNEL_CASES]


@pytest.mark.parametrize("case,K,V", VARLEN_KERNEL_CASES)
def test_chunk_kernels_run_packed_sequences_in_one_launch(case, K, V):
    """cu_seqlens (IS_VARLEN): five packed sequences of lengths 5, 37, 16, 1, 20 (chunk 16: partial, full and
    one-token chunks; a sequence boundary inside a chunk) with their own initial states, forward and backward,
    against the torch step loop run on each sequence separately. With K = 70, V = 80 the backward kernels'
    loops over K and V tiles run twice (the tiles are at most 64 wide)."""
    g = torch.Generator().manual_seed(1)
    lengths = [5, 37, 16, 1, 20]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist())
    T, N, H = sum(lengths), len(lengths), 2
    complex_ = case.startswith("complex")

    def rnd(*shape, scale=1.0):
        x = scale * torch.randn(*shape, generator=g, dtype=torch.float64)
        return torch.complex(x, scale * torch.randn(*shape, generator=g, dtype=torch.float64)) if complex_ else x

    q, k, v, h0 = rnd(1, T, H, K), rnd(1, T, H, K), rnd(1, T, H, V), rnd(N, H, K, V)
    args = {}
    decay = lambda *shape: -torch.rand(*shape, generator=g, dtype=torch.float64)        # noqa: E731
    if case in ("scalar", "scalar+key", "gated-delta"):
        args["g"] = decay(1, T, H)
    if case in ("key", "scalar+key"):
        args["gk"] = decay(1, T, H, K)
    if complex_:
        shape = (1, T, H, K) if "key" in case else (1, T, H)
        args["gk" if "key" in case else "g"] = torch.complex(decay(*shape), 3 * torch.randn(*shape, generator=g,
                                                                                              dtype=torch.float64))
    if "delta" in case:
        k = torch.nn.functional.normalize(k, dim=-1)
        args["beta"] = 2 * torch.rand(1, T, H, generator=g, dtype=torch.float64)
    wrt = [t.requires_grad_(True) for t in (q, k, v, h0, *args.values())]
    form, ref = ((triton_chunk.chunk_delta, torch_forms.recurrent_delta) if "delta" in case
                 else (triton_chunk.chunk_gated, torch_forms.recurrent_gated))
    do, dht = rnd(1, T, H, V), rnd(N, H, K, V)

    def run(fn, **kw):
        o, ht = fn(q, k, v, **args, scale=0.6, initial_state=h0, output_final_state=True, cu_seqlens=cu, **kw)
        return (o, ht), (o * do).real.sum() + (ht * dht).real.sum()

    expected, loss_ref = run(ref)
    got, loss = run(form, chunk_size=16)
    _check(f"varlen chunk kernels {case}", expected, got, torch.float64, FORM_FACTOR["chunk"])
    for name, a, b in zip(["q", "k", "v", "h0", *args], torch.autograd.grad(loss_ref, wrt),
                          torch.autograd.grad(loss, wrt)):
        assert_close(f"varlen chunk backward {case} d{name}", a, b, torch.float64, FORM_FACTOR["chunk"])


def test_chunk_kernels_reject_bad_packing():
    q = torch.randn(1, 10, 1, 4, dtype=torch.float64)
    for cu, why in [([0, 4, 4, 10], "no empty"), ([0, 4, 9], r"rise strictly from 0 to T \(no empty sequences\) = 10")]:
        with pytest.raises(ValueError, match=why):
            triton_chunk.chunk_gated(q, q, q, cu_seqlens=torch.tensor(cu))
    with pytest.raises(ValueError, match="batch size must be 1"):
        triton_chunk.chunk_gated(q.expand(2, -1, -1, -1), q.expand(2, -1, -1, -1), q.expand(2, -1, -1, -1),
                                 cu_seqlens=torch.tensor([0, 10]))


def _complex_step_loop(q, k, v, g, gk, h0, scale):
    """S_t = exp(g_t) exp(gk_t)[:, None] S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t, complex, one step at a time."""
    S, outs = h0, []
    for t in range(q.shape[1]):
        decay = torch.ones_like(S[..., :1])
        if g is not None:
            decay = decay * torch.exp(g[:, t])[..., None, None]
        if gk is not None:
            decay = decay * torch.exp(gk[:, t])[..., None]
        S = decay * S + k[:, t, ..., None] * v[:, t, ..., None, :]
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, 1), S


@pytest.mark.parametrize("gate", ["none", "real key", "scalar", "key", "scalar+key", "growing key"])
@pytest.mark.parametrize("T,chunk", [(37, 16), (5, 32), (70, 64)])
def test_complex_chunk_matches_a_step_loop(gate, T, chunk):
    """Complex q, k, v, gates and state on the real chunk kernels (phase rotation + realification): outputs, final
    state and the gradients of every input against autograd through a complex step loop. Rotations are fast
    (imaginary log gates ~ N(0, 3) per step, so the cumulative phase runs over hundreds of radians); "growing key"
    has log-gate real parts up to +0.05 per step (Liquid-S4's input-dependent transition can exceed 1)."""
    g = torch.Generator().manual_seed(T)
    B, H, K, V = 2, 2, 5, 3

    def rnd(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g, dtype=torch.float64)

    def crnd(*shape):
        return torch.complex(rnd(*shape), rnd(*shape)).requires_grad_(True)

    def log_gate(*shape, low=-1.0, high=0.0):
        re = low + (high - low) * torch.rand(*shape, generator=g, dtype=torch.float64)
        return torch.complex(re, rnd(*shape, scale=3.0)).requires_grad_(True)

    q, k, v, h0 = crnd(B, T, H, K), crnd(B, T, H, K), crnd(B, T, H, V), crnd(B, H, K, V)
    gates = {}
    if "scalar" in gate:
        gates["g"] = log_gate(B, T, H)
    if gate in ("key", "scalar+key"):
        gates["gk"] = log_gate(B, T, H, K)
    if gate == "growing key":
        gates["gk"] = log_gate(B, T, H, K, low=-0.05, high=0.05)
    if gate == "real key":
        gates["gk"] = (-torch.rand(B, T, H, K, generator=g, dtype=torch.float64)).requires_grad_(True)
    wrt = [q, k, v, h0, *gates.values()]
    do, dht = torch.complex(rnd(B, T, H, V), rnd(B, T, H, V)), torch.complex(rnd(B, H, K, V), rnd(B, H, K, V))

    def loss(o, ht):
        return (o * do).real.sum() + (ht * dht).real.sum()

    expected = _complex_step_loop(q, k, v, gates.get("g"), gates.get("gk"), h0, 0.6)
    got = triton_chunk.chunk_gated(q, k, v, **gates, scale=0.6, initial_state=h0, output_final_state=True,
                                   chunk_size=chunk)
    assert got[0].dtype == got[1].dtype == torch.complex128
    _check(f"complex chunk {gate}", expected, got, torch.float64, FORM_FACTOR["chunk"])
    for name, a, b in zip(["q", "k", "v", "h0", *gates], torch.autograd.grad(loss(*expected), wrt),
                          torch.autograd.grad(loss(*got), wrt)):
        assert_close(f"complex chunk backward {gate} d{name}", a, b, torch.float64, FORM_FACTOR["chunk"])


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated-delta"])
@pytest.mark.parametrize("T,chunk", [(37, 16), (16, 16), (5, 32), (70, 64)])
def test_delta_chunk_backward_kernels_match_autograd_of_the_recurrence(gated, T, chunk):
    """dq, dk, dv, dbeta, dg and the initial state's gradient from the delta rule's Triton backward kernels (the
    state-gradient pass, then per chunk through the WY / UT stage), against torch autograd through the step loop;
    beta in (0, 2) (negative eigenvalues), K and V not powers of two, a last partial chunk."""
    q, k, v, beta, h0, gate, rnd = _delta_inputs(T, gated, gate_scale=2.0)
    wrt = [q, k, v, beta, h0, *gate.values()]
    for t in wrt:
        t.requires_grad_(True)
    do, dht = rnd(*v.shape), rnd(*h0.shape)

    def loss(form, **kw):
        o, ht = form(q, k, v, beta, **gate, scale=0.7, initial_state=h0, output_final_state=True, **kw)
        return (o * do).sum() + (ht * dht).sum()

    expected = torch.autograd.grad(loss(torch_forms.recurrent_delta), wrt)
    got = torch.autograd.grad(loss(triton_chunk.chunk_delta, chunk_size=chunk), wrt)
    for name, a, b in zip(["q", "k", "v", "beta", "h0", *gate], expected, got):
        assert_close(f"delta chunk backward gated={gated} d{name}", a, b, torch.float64, FORM_FACTOR["chunk"])


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated-delta"])
@pytest.mark.parametrize("K", [130, 200])
def test_delta_chunk_state_passes_hold_wide_keys_in_register_blocks(gated, K):
    """The state passes (chunk_delta_fwd_h_kernel, chunk_delta_bwd_dhu_kernel) hold the state and its gradient as up
    to four register blocks of 64 key rows: three at K = 130, four at K = 200 (the last partly past K in both).
    Outputs, final state, every gradient and the initial state's against the step loop and autograd through it
    (fp64; T = 70 with chunks of 32: three chunks, the last partial), unit-norm keys, beta in (0, 2)."""
    q, k, v, beta, h0, gate, rnd = _delta_inputs(70, gated, gate_scale=1.0, B=1, H=1, K=K, V=24)
    wrt = [q, k, v, beta, h0, *gate.values()]
    for t in wrt:
        t.requires_grad_(True)
    do, dht = rnd(*v.shape), rnd(*h0.shape)

    def loss(form, **kw):
        o, ht = form(q, k, v, beta, **gate, scale=K ** -0.5, initial_state=h0, output_final_state=True, **kw)
        return (o * do).sum() + (ht * dht).sum()

    with torch.no_grad():
        want = torch_forms.recurrent_delta(q, k, v, beta, **gate, scale=K ** -0.5, initial_state=h0,
                                           output_final_state=True)
        got = triton_chunk.chunk_delta(q, k, v, beta, **gate, scale=K ** -0.5, initial_state=h0,
                                       output_final_state=True, chunk_size=32)
    for name, a, b in zip(["o", "final state"], want, got):
        assert_close(f"delta chunk forward K={K} gated={gated} {name}", a, b, torch.float64, FORM_FACTOR["chunk"])
    expected = torch.autograd.grad(loss(torch_forms.recurrent_delta), wrt)
    got = torch.autograd.grad(loss(triton_chunk.chunk_delta, chunk_size=32), wrt)
    for name, a, b in zip(["q", "k", "v", "beta", "h0", *gate], expected, got):
        assert_close(f"delta chunk backward K={K} gated={gated} d{name}", a, b, torch.float64, FORM_FACTOR["chunk"])


def test_every_example_has_a_triton_recurrent_form():
    missing = {name: compiled(name)[1].module.WHY_NOT.get("recurrent") for name in sorted(MODELS)
               if "recurrent" not in compiled(name)[1].modes}
    assert not missing, f"examples without a Triton recurrent kernel: {missing}"


def test_chunk_form_where_the_class_admits_it_with_reasons_elsewhere():
    for name, expect_chunk in [("gla", True), ("retnet", True), ("mamba2", True), ("deltanet", True),
                               ("gated_deltanet", True), ("s4d", True), ("lru", True), ("lstm", False)]:
        if name not in MODELS:
            continue
        op = compiled(name)[1]
        assert ("chunk" in op.modes) == expect_chunk, (name, op.modes, op.module.WHY_NOT.get("chunk"))
        if not expect_chunk and "chunk" in op.plan.modes:
            assert op.module.WHY_NOT["chunk"]


def test_module_offers_only_what_it_generates_and_one_kernel_per_spec():
    m, op, ref = compiled("gla")
    assert op.modes == ("recurrent", "scan", "chunk") and op.backend == "triton"
    text = open(op.path).read()
    assert text.startswith('"""Generated by seqdsl') and "(triton backend)" in text
    assert text.count("@triton.jit") == 2 and "def gla_recurrent_fwd_kernel(" in text
    assert "def gla_recurrent_bwd_kernel(" in text and op.module.BACKWARD == "triton"
    assert callable(op.module.step) and callable(op.module.recurrent) and callable(op.module.chunk)
    assert callable(op.module.scan) and op.default_mode() == "chunk"
    dense = compiled("hippo_legs")[1]     # a dense transition: the chunked dense scan, not one fused kernel
    assert "scan" in dense.modes and "is dense" in dense.module.SCAN and "dense" in dense.module.scan.__doc__
    lstm_m, lstm, lstm_ref = compiled("lstm")
    assert lstm.modes == ("recurrent",) and lstm.default_mode() == "recurrent"
    with pytest.raises(ValueError, match="mode 'scan' is not available"):
        lstm(**sample_inputs(lstm_ref, 1, 2), mode="scan")
    s4d_m, s4d, s4d_ref = compiled("s4d")
    assert "conv" in seqdsl.compile(s4d_m, backend="torch").modes and "conv" not in s4d.modes
    with pytest.raises(ValueError, match="conv \\(FFT\\) form"):
        s4d(**sample_inputs(s4d_ref, 1, 2), mode="conv")
    mamba = compiled("mamba")[1]       # a fused scan kernel is the default (the torch op loops at Mamba's size)
    assert mamba.module.SCAN == "fused" and mamba.default_mode() == "scan"
    assert seqdsl.compile(seqdsl.load(MODELS["mamba"]), backend="torch").default_mode() == "recurrent"


@pytest.mark.parametrize("name", ["gla", "s4d", "lru"])
def test_scan_form_runs_the_triton_scan_kernels(name, monkeypatch):
    """A cell of gated vector states (S4D, LRU) runs its scan form as one fused kernel (``SCAN == 'fused'``), and
    its backward as one more (``SCAN_BACKWARD == 'triton scan'``: the adjoint recurrence scanned over each block,
    not the recurrent backward kernel). A matrix state (GLA) keeps
    the unfused form: torch prepares a_t and b_t and triton_scan's kernel scans them, once forward and once
    time-reversed for the backward."""
    m, op, ref = compiled(name)
    fused = name != "gla"
    assert (op.module.SCAN == "fused") == fused, op.module.SCAN
    inputs = sample_inputs(ref, 1, 5, seed=4)
    runs = {"unfused": 0, "fused": 0, "backward": 0, "recurrent": 0}
    kernels = [("unfused", triton_scan.scan_diagonal_kernel)]
    if fused:
        assert op.module.SCAN_BACKWARD == "triton scan", op.module.SCAN_BACKWARD
        kernels += [("fused", getattr(op.module, f"{m.name}_scan_fwd_kernel")),
                    ("backward", getattr(op.module, f"{m.name}_scan_bwd_kernel")),
                    ("recurrent", getattr(op.module, f"{m.name}_recurrent_bwd_kernel"))]
    for key, kernel in kernels:
        original = kernel.run

        def counted(*args, _key=key, _original=original, **kwargs):
            runs[_key] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(kernel, "run", counted)
    expected = ref(**inputs, output_final_state=True)
    _check(f"{name}/triton scan", expected, op(**inputs, output_final_state=True, mode="scan"), torch.float64,
           FORM_FACTOR["scan"])
    assert runs == {"unfused": 1 - fused, "fused": int(fused), "backward": 0, "recurrent": 0}, runs
    xs = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    o, _ = op(**xs, mode="scan")
    (o[0] if isinstance(o, tuple) else o).real.sum().backward()
    assert runs == ({"unfused": 0, "fused": 2, "backward": 1, "recurrent": 0} if fused else
                    {"unfused": 3, "fused": 0, "backward": 0, "recurrent": 0}), runs


FUSED_SCAN = ["aft_simple", "dlr", "dss", "gss", "h3", "hawk", "hgrn", "laughing_hyena", "liquid_s4", "lru", "mamba",
              "mega_ema", "qrnn", "s4d", "s5"]


def test_which_examples_have_a_fused_scan():
    """Every example whose states are all gated vectors, read after their update, gets the fused scan kernels; the
    others say why not (a matrix state; a readout of S_{t-1})."""
    fused = sorted(n for n in MODELS if getattr(compiled(n)[1].module, "SCAN", None) == "fused")
    assert fused == FUSED_SCAN
    assert all(compiled(n)[1].module.SCAN_BACKWARD == "triton scan" for n in fused)
    assert "is a matrix" in compiled("gla")[1].module.SCAN
    assert "before its update" in compiled("rwkv6")[1].module.SCAN


@pytest.mark.parametrize("name", FUSED_SCAN)
def test_fused_scan_does_not_depend_on_its_block_of_tokens(name, monkeypatch):
    """The fused scan kernel and its backward kernel give the interpreter's results and gradients whatever their
    block of tokens: 1 (the recurrence itself), 4 (many blocks, the last of a sequence padded), 64 (one block
    longer than every sequence); packed sequences of lengths 4, 1, 9, 3 in one launch, each from its initial
    state. Buffers start as NaN, so an element no program writes would show."""
    nan_filled_buffers(monkeypatch)
    m, op, ref = compiled(name)
    assert op.module.SCAN == "fused"
    kernel = getattr(op.module, f"{m.name}_scan_fwd_kernel")
    blocks = []
    original = kernel.run
    monkeypatch.setattr(kernel, "run", lambda *a, **kw: blocks.append(kw["BLOCK_T"]) or original(*a, **kw))
    cu = torch.tensor([0, 4, 5, 14, 17])
    inputs = sample_inputs(ref, 1, 17, seed=11)
    h0 = random_state(ref, 4, scale=0.5)
    expected = ref(**inputs, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    for block_t in (1, 4, 64):
        with triton_runtime.override_launch(block_t=block_t):
            got = op(**inputs, initial_state=h0, output_final_state=True, cu_seqlens=cu, mode="scan")
        _check(f"{name}/fused scan, blocks of {block_t}", expected, got, torch.float64, FORM_FACTOR["scan"])
    assert blocks == [1, 4, 64], blocks
    g_ref = projected_grads(lambda xs, h: ref(**xs, initial_state=h, output_final_state=True, cu_seqlens=cu),
                            inputs, h0)
    backward_blocks = []
    bwd = getattr(op.module, f"{m.name}_scan_bwd_kernel")
    original_bwd = bwd.run
    monkeypatch.setattr(bwd, "run", lambda *a, **kw: backward_blocks.append(kw["BLOCK_T"]) or original_bwd(*a, **kw))
    for block_t in (1, 4, 64):       # the backward kernel (SCAN_BACKWARD) steps through the same blocks
        with triton_runtime.override_launch(block_t=block_t):
            g_op = projected_grads(lambda xs, h: op(**xs, initial_state=h, output_final_state=True, cu_seqlens=cu,
                                                    mode="scan"), inputs, h0)
        for k in g_ref:
            if g_ref[k] is not None:
                assert_close(f"{name}/fused scan, blocks of {block_t}: d{k}", g_ref[k], g_op[k], torch.float64,
                             10 * FORM_FACTOR["scan"])
    assert backward_blocks == [1, 4, 64], backward_blocks


def test_fused_scan_of_two_states_read_together_with_a_cell_arg(tmp_path, monkeypatch):
    """A cell the examples do not have: two gated vector states scanned side by side, a readout that multiplies
    them (nonlinear in the states, so only the scan's per-token states can give it), a decay from a param and a
    stream, and a cell arg given at the call. Fused forward and backward against the interpreter, at blocks of
    1, 4, 16 and 64 tokens (T = 37: a padded last block), n = 3 (a padded state block)."""
    monkeypatch.setenv("SEQDSL_CACHE_DIR", str(tmp_path))
    spec = """
model two_states(d_model = 4, n = 3):
  params:
    w: [d_model, n] ~ normal(0, 0.2)
  streams:
    u: [d_model] = linear(x)
    g: [d_model] = sigmoid(linear(x))
    B: [n] = linear(x)
    C: [n] = linear(x)
  cell over d_model:
    arg beta = 0.5
    state s: [n] = 0
    state h: [n] = 0
    s <- g * s + beta * B
    h <- exp(-g * exp(w)) * h + B * u / (1 + g)
    o = sum(s * h) * beta + C @ h
"""
    m = seqdsl.loads(spec, name="two_states")
    op, ref = seqdsl.compile(m, backend="triton"), seqdsl.reference(m)
    assert op.module.SCAN == "fused" and op.module.SCAN_BACKWARD == "triton scan"
    inputs = sample_inputs(ref, 2, 37, seed=1)
    h0 = random_state(ref, 2, scale=0.5)

    def run(fn, **kw):
        return lambda xs, h: fn(**xs, initial_state=h, output_final_state=True, beta=0.7, **kw)

    expected = run(ref)(inputs, h0)
    g_ref = projected_grads(run(ref), inputs, h0)
    for block_t in (1, 4, 16, 64):
        with triton_runtime.override_launch(block_t=block_t):
            _check(f"two states, blocks of {block_t}", expected, run(op, mode="scan")(inputs, h0), torch.float64,
                   FORM_FACTOR["scan"])
            g_op = projected_grads(run(op, mode="scan"), inputs, h0)
        for k in g_ref:
            if g_ref[k] is not None:
                assert_close(f"two states, blocks of {block_t}: d{k}", g_ref[k], g_op[k], torch.float64,
                             10 * FORM_FACTOR["scan"])


def _dense_step_loop(A, b, h0, cu):
    """h_t = A_t h_{t-1} + b_t token by token (A broadcast to b's batch, time and channels): (all states, final
    states); cu: packed sequences (B = 1), each from its own h0 (zeros where h0 is None)."""
    B, T = b.shape[:2]
    A = A.expand(*b.shape, b.shape[-1])
    rows = [(i, 0, T) for i in range(B)] if cu is None else [(0, s, e) for s, e in zip(cu[:-1].tolist(),
                                                                                        cu[1:].tolist())]
    states, finals = [], []
    for i, (r, lo, hi) in enumerate(rows):
        h = h0[i] if h0 is not None else torch.zeros_like(b[0, 0])
        for t in range(lo, hi):
            h = (A[r, t] @ h[..., None])[..., 0] + b[r, t]
            states.append((r, t, h))
        finals.append(h)
    out = torch.stack([h for _, _, h in sorted(states, key=lambda x: x[:2])]).reshape(b.shape)
    return out, torch.stack(finals)


@pytest.mark.parametrize("A_shape,b_shape,cu", [
    ((2, 37, 3, 5, 5), (2, 37, 3, 5), None),                       # time-varying, n = 5: padded to a 16-block
    ((1, 1, 1, 20, 20), (2, 40, 3, 20), None),                     # time-invariant, shared by batch and channels
    ((2, 1, 3, 4, 4), (2, 16, 3, 4), None),                        # per batch row, one chunk exactly
    ((1, 45, 2, 3, 3), (1, 45, 2, 3), [0, 5, 5, 6, 23, 45]),       # packed: an empty and a one-token sequence
    ((1, 20, 2, 3, 3), (1, 20, 2, 3), [0, 4, 4, 20]),              # complex (below): realified, 2n = 6
    ((1, 30, 1, 6, 6), (2, 30, 4, 6), None),                       # time-varying, one matrix for every channel
    ((1, 1, 2, 1, 3, 3), (1, 20, 2, 4, 3), None),                  # two channel axes, A shared along one
], ids=["varying", "invariant", "per-row", "packed", "complex", "shared-varying", "partly-shared"])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zero-h0"])
def test_dense_scan_kernels_match_a_step_loop(A_shape, b_shape, cu, with_h0, request, monkeypatch):
    """The Triton dense scan (chunks of 16 tokens under the interpreter: several chunks per sequence, a partial last
    one) against a step loop in fp64: every state, the final states and the gradients of A (summed where it
    broadcasts), b and h0; three forward launches and three more for the backward (time-reversed). Complex values
    run as the real recurrence of twice the size; their gradients follow torch's convention, as the loop's."""
    g = torch.Generator().manual_seed(1)
    complex_ = "complex" in request.node.callspec.id

    def rnd(*shape):
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        return torch.complex(x, torch.randn(*shape, generator=g, dtype=torch.float64)) if complex_ else x

    cu = None if cu is None else torch.tensor(cu)
    N = b_shape[0] if cu is None else len(cu) - 1
    A = rnd(*A_shape) / A_shape[-1] ** 0.5
    b = rnd(*b_shape)
    h0 = rnd(N, *b_shape[2:]) if with_h0 else None
    wrt = [t.requires_grad_(True) for t in (A, b, h0) if t is not None]
    launches = []
    for kernel in (triton_scan.scan_dense_reduce_kernel, triton_scan.scan_dense_carry_kernel,
                   triton_scan.scan_dense_apply_kernel):
        monkeypatch.setattr(kernel, "run", functools.partial(
            lambda original, *args, **kwargs: launches.append(1) or original(*args, **kwargs), kernel.run))
    expected = _dense_step_loop(A, b, h0, cu)
    got = triton_scan.scan_dense(A, b, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    _check("dense scan kernels", expected, got, torch.float64, FORM_FACTOR["scan"])
    assert len(launches) == 3
    w1, w2 = rnd(*expected[0].shape), rnd(*expected[1].shape)
    loss = lambda h, ht: (h * w1).real.sum() + (ht * w2).real.sum()     # noqa: E731
    for name, x, y in zip(["A", "b", "h0"], torch.autograd.grad(loss(*expected), wrt),
                          torch.autograd.grad(loss(*got), wrt)):
        assert x.shape == y.shape, name
        assert_close(f"dense scan backward d{name}", x, y, torch.float64, FORM_FACTOR["scan"])
    assert len(launches) == 6


_COMPLEX_DENSE = """model complex_dense(d_model = 8, n = 4):
  params:
    A_re: [n, n] ~ 0.3 * orthogonal()
    A_im: [n, n] ~ 0.3 * orthogonal()
    B: [n, d_model] ~ xavier()
    C: [d_model, n] ~ xavier()
  streams:
    bu: [n] = B @ x
  cell:
    state h: complex[n] = 0
    h <- complex(A_re, A_im) @ h + complex(bu, bu)
    o = real(h)
  out:
    y = C @ o
"""


def test_a_complex_dense_state_has_the_triton_scan_form():
    """No example has a complex dense state; a spec with one gets the Triton scan form too (realified), with the
    interpreter's outputs, final state and gradients on packed sequences."""
    m = seqdsl.loads(_COMPLEX_DENSE, name="complex_dense")
    op, ref = seqdsl.compile(m, backend="triton"), seqdsl.reference(m)
    assert "scan" in op.modes and "is dense" in op.module.SCAN
    inputs = sample_inputs(ref, 1, 21, seed=1)
    h0 = random_state(ref, 3, scale=0.3)
    cu = torch.tensor([0, 5, 17, 21])
    run = lambda f: lambda xs, h: f(**xs, initial_state=h, output_final_state=True, cu_seqlens=cu)  # noqa: E731
    _check("complex dense scan", run(ref)(inputs, h0), run(functools.partial(op, mode="scan"))(inputs, h0),
           torch.float64, FORM_FACTOR["scan"])
    g_ref = projected_grads(run(ref), inputs, h0)
    g_op = projected_grads(run(functools.partial(op, mode="scan")), inputs, h0)
    for k in g_ref:
        if g_ref[k] is not None:
            assert_close(f"complex dense scan d{k}", g_ref[k], g_op[k], torch.float64, 10 * FORM_FACTOR["scan"])


def test_dense_scan_in_fp32_and_its_bad_input():
    """fp32 inputs scan in fp32 (states in fp32, within fp32's tolerance of the fp64 loop); a mis-shaped A is
    refused with a message naming it."""
    g = torch.Generator().manual_seed(2)
    A = torch.randn(1, 30, 2, 8, 8, generator=g, dtype=torch.float64) / 8 ** 0.5
    b = torch.randn(1, 30, 2, 8, generator=g, dtype=torch.float64)
    h, ht = triton_scan.scan_dense(A.float(), b.float(), output_final_state=True)
    assert h.dtype == ht.dtype == torch.float32
    _check("dense scan fp32", _dense_step_loop(A, b, None, None), (h, ht), torch.float32, FORM_FACTOR["scan"])
    with pytest.raises(ValueError, match=r"must be \[\.\.\., n, n\]"):
        triton_scan.scan_dense(A[..., :4], b)
    with pytest.raises(ValueError, match="batch and time sizes"):
        triton_scan.scan_dense(A[:, :7], b)


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zero-h0"])
def test_scan_kernel_backward_on_packed_sequences(complex_, with_h0, monkeypatch):
    """cu_seqlens with gradients stays on the Triton scan kernel (one forward, one time-reversed backward launch
    on the mirrored boundaries): states, final states and the gradients of b, the log decays and h0 against
    autograd through a step loop over each sequence (lengths 5, 1, 17, 17: a one-token sequence)."""
    g = torch.Generator().manual_seed(0)
    cu = torch.tensor([0, 5, 6, 23, 40])

    def rnd(*shape):
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        return torch.complex(x, torch.randn(*shape, generator=g, dtype=torch.float64)) if complex_ else x

    b, h0 = rnd(1, 40, 3, 4), rnd(4, 3, 4) if with_h0 else None
    a_log = -torch.rand(1, 40, 3, 4, generator=g, dtype=torch.float64)
    if complex_:
        a_log = torch.complex(a_log, torch.randn(1, 40, 3, 4, generator=g, dtype=torch.float64))
    wrt = [t.requires_grad_(True) for t in (b, a_log, h0) if t is not None]

    def step_loop():
        states, finals = [], []
        for n, (lo, hi) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
            h = h0[n] if h0 is not None else torch.zeros_like(b[0, 0])
            for t in range(lo, hi):
                h = torch.exp(a_log[0, t]) * h + b[0, t]
                states.append(h)
            finals.append(h)
        return torch.stack(states)[None], torch.stack(finals)

    runs = []
    original = triton_scan.scan_diagonal_kernel.run
    monkeypatch.setattr(triton_scan.scan_diagonal_kernel, "run",
                        lambda *args, **kwargs: runs.append(1) or original(*args, **kwargs))
    expected = step_loop()
    got = triton_scan.scan_diagonal(b, a_log=a_log, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    _check("varlen scan kernel", expected, got, torch.float64, FORM_FACTOR["scan"])
    w1, w2 = rnd(*expected[0].shape), rnd(*expected[1].shape)
    loss = lambda h, ht: (h * w1).real.sum() + (ht * w2).real.sum()     # noqa: E731
    for name, x, y in zip(["b", "a_log", "h0"], torch.autograd.grad(loss(*expected), wrt),
                          torch.autograd.grad(loss(*got), wrt)):
        assert_close(f"varlen scan backward d{name}", x, y, torch.float64, FORM_FACTOR["scan"])
    assert len(runs) == 2


def test_launch_policy_gives_one_config_under_the_interpreter(monkeypatch):
    assert triton_runtime.interpreting()
    cfg = triton_runtime.launch_config("recurrent", tiled_size=100, state_numel=64 * 100)
    assert cfg == {"block": 128, "num_warps": 1, "precision": "ieee", "diag_3d": True}
    monkeypatch.setattr(triton_runtime, "interpreting", lambda: False)
    gpu = triton_runtime.launch_config("recurrent", tiled_size=128, state_numel=128 * 128,
                                       device=torch.device("cuda"))
    assert gpu["block"] == 64 and gpu["num_warps"] in (1, 2, 4, 8)
    assert triton_runtime.launch_config("recurrent", tiled_size=None, state_numel=16,
                                        device=torch.device("cuda"))["block"] == 0
    # the params a program keeps (a dense cell's 64 x 64 matrix) count with its state for the warps
    dense = lambda params: triton_runtime.launch_config("recurrent", None, 64, device=torch.device("cuda"),  # noqa: E731
                                                        param_numel=params)["num_warps"]
    assert dense(0) == 1 and dense(64 * 64) == 4 and dense(4 * 64 * 64) == 8
    # a backward program keeps the state, its adjoint and the recomputed previous state: three times the state's
    # numbers (DeltaNet's 64 x 64 state: 2 warps forward, 4 backward, where 2 spilled 40 B compiled for sm_90)
    warps = lambda backward: triton_runtime.launch_config("recurrent", 64, 64 * 64, device=torch.device("cuda"),  # noqa: E731
                                                          backward=backward)["num_warps"]
    assert warps(False) == 2 and warps(True) == 4
    chunk = lambda low: triton_runtime.launch_config("chunk", None, 64 * 64, device=torch.device("cuda"),  # noqa: E731
                                                     low_precision_inputs=low)["precision"]
    assert chunk(None) == "tf32x3" and chunk(torch.bfloat16) == "bf16" and chunk(torch.float16) == "fp16"

    def stages(numel):
        cfg = triton_runtime.launch_config("chunk", None, numel, device=torch.device("cuda"))
        return {k: cfg[k] for k in ("num_warps", "num_stages")}

    # gla's 32 x 64 blocks; fla's 64 x 64 tiles; the delta rule's whole-key blocks at K = 128 (x BV 64): one stage,
    # which keeps them within an H100's shared memory (tests/test_gpu_compile_check.py compiles them)
    assert stages(32 * 64) == {"num_warps": 4, "num_stages": 2}
    assert stages(64 * 64) == {"num_warps": 8, "num_stages": 2}
    assert stages(128 * 64) == {"num_warps": 8, "num_stages": 1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("form", ["gated", "delta"])
def test_chunk_forward_and_backward_ask_the_policy_with_the_input_precision(monkeypatch, dtype, form):
    """bf16 / fp16 inputs get their dtype's tl.dot operands in every chunk launch, the backward's included (its
    tensors are fp32 by then, so it must be told)."""
    asked = []
    real = triton_runtime.launch_config

    def recording(form_, *args, **kwargs):
        asked.append(kwargs.get("low_precision_inputs"))
        return real(form_, *args, **kwargs)

    monkeypatch.setattr(triton_runtime, "launch_config", recording)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 20, 1, 8, generator=g).to(dtype).requires_grad_(True) for _ in range(3))
    if form == "gated":
        o, _ = triton_chunk.chunk_gated(q, k, v, g=-torch.rand(1, 20, 1, generator=g).to(dtype), chunk_size=16)
    else:
        beta = torch.rand(1, 20, 1, generator=g).to(dtype)
        o, _ = triton_chunk.chunk_delta(q, torch.nn.functional.normalize(k.float(), dim=-1).to(dtype), v, beta,
                                        chunk_size=16)
    n_forward = len(asked)
    o.float().sum().backward()
    assert n_forward > 0 and len(asked) > n_forward
    assert asked == [torch.bfloat16 if dtype == torch.bfloat16 else None] * len(asked)


@pytest.mark.parametrize("name", ["gla", "gated_deltanet"])
def test_the_op_tells_the_chunk_kernels_its_inputs_were_bf16(monkeypatch, name):
    """The op hands its forms fp32 copies of inputs that meet torch arithmetic first, and the backward's tensors
    are fp32, so the chunk kernels cannot always see that the user's inputs were bf16: the op says so
    (op.low_precision_inputs) and every chunk launch, the backward's included, is asked for bf16
    tl.dot operands; fp32 inputs keep the fp32-accurate one, and nothing leaks past the call."""
    from seqdsl.runtime import op as op_module

    asked = []
    real = triton_runtime.launch_config

    def recording(form_, *args, **kwargs):
        if form_ == "chunk":
            asked.append(kwargs.get("low_precision_inputs"))
        return real(form_, *args, **kwargs)

    monkeypatch.setattr(triton_runtime, "launch_config", recording)
    m, op, ref = compiled(name)
    for dtype in (torch.float32, torch.bfloat16):
        asked.clear()
        inputs = {n: t.to(dtype).requires_grad_(True) for n, t in sample_inputs(ref, 1, 20).items()}
        o, _ = op(**inputs, mode="chunk", chunk_size=16)
        n_forward = len(asked)
        o.float().sum().backward()
        assert n_forward > 0 and len(asked) > n_forward, asked
        assert asked == [torch.bfloat16 if dtype == torch.bfloat16 else None] * len(asked), (dtype, asked)
        assert not op_module.low_precision_inputs()


@pytest.mark.parametrize("name,kept,direct", [("gla", {"q", "k", "v", "gk"}, True), ("retnet", {"q", "k", "v"}, True),
                                              ("gated_deltanet", {"q", "k", "v", "beta", "g"}, True),
                                              ("mamba2", set(), False)])
def test_bf16_inputs_reach_the_chunk_kernels_without_fp32_copies(monkeypatch, name, kept, direct):
    """Inputs that the chunk form hands to its kernels unchanged (a query's scalar factor goes in as ``scale``)
    reach them in bf16: no fp32 copy. The others are converted, so torch never computes in bf16: mamba2's u and
    dt meet torch arithmetic first; retnet's g_gamma (a parameter) and mamba2's B and C (no head axis) are
    broadcast by the form, and a broadcast input's gradient, a sum, would be taken in bf16. Where the form returns
    the kernels' readout untouched (not mamba2's, which adds D u), the kernels store it in bf16, and the backward
    kernels store the kept inputs' gradients in bf16: each is rounded once, where the op's casts did it after.
    The numbers are those of fp32 copies. Under the interpreter (ieee dots, fp32 states) everything torch
    rounds equals, bit for bit, what the same op gives for the inputs upcast to fp32 (its output and gradients
    rounded to bf16 once, as the op's cast and autograd do); what the kernels store in bf16 is within one bf16
    ulp of it, because Triton 3.9's interpreter truncates fp32 -> bf16 where a GPU (and torch) round to nearest
    even (the same conversion, ``.to``, in either place)."""
    arrived, returned = [], []

    def recording(*a, _real, **kw):
        arrived.append([t.dtype for t in (*a, *kw.values()) if isinstance(t, torch.Tensor)])
        o, ht = _real(*a, **kw)
        returned.append(o.dtype)
        return o, ht

    for fn in ("chunk_gated", "chunk_delta"):
        monkeypatch.setattr(triton_chunk, fn, functools.partial(recording, _real=getattr(triton_chunk, fn)))
    m, op, ref = compiled(name)
    assert set(op.module.PASSTHROUGH_INPUTS["chunk"]) == kept
    assert ("chunk" in op.module.DIRECT_READOUT_FORMS) == direct
    base = sample_inputs(ref, 1, 37)
    g = torch.Generator().manual_seed(1)
    weights = None                                   # bf16 numbers: the same output gradient in both runs
    results = {}
    for dtype in (torch.bfloat16, torch.float32):
        inputs = {n: t.to(torch.bfloat16).to(dtype).requires_grad_(True) for n, t in base.items()}
        arrived.clear()
        returned.clear()
        o, ht = op(**inputs, mode="chunk", chunk_size=16, output_final_state=True)
        if weights is None:
            weights = [torch.randn(x.shape, generator=g).to(torch.bfloat16).float() for x in (o, ht)]
        loss = (o.float() * weights[0]).sum() + (ht * weights[1]).sum()
        grads = torch.autograd.grad(loss, list(inputs.values()))
        results[dtype] = [o.to(torch.bfloat16).float(), ht, *(gr.to(torch.bfloat16).float() for gr in grads)]
        if dtype == torch.bfloat16:
            assert arrived, "no chunk-form call"
            assert all(sum(d == torch.bfloat16 for d in seen) == len(kept) for seen in arrived), arrived
            assert returned == [torch.bfloat16 if direct else torch.float32] * len(returned), returned
    stored_by_kernels = {0} | {2 + i for i, n in enumerate(base) if n in kept} if direct else set()
    for i, (a, b) in enumerate(zip(results[torch.bfloat16], results[torch.float32])):
        if i in stored_by_kernels:   # o and the kept inputs' gradients: truncated by the interpreter
            assert_within_one_bf16_ulp((name, i), a, b)
            assert not torch.equal(a, b) or i > 0, "no rounding difference at all: was o stored by torch?"
        else:
            assert torch.equal(a, b), (name, i, (a - b).abs().max())


@pytest.mark.parametrize("name,mode", [("mamba", "recurrent"), ("gla", "recurrent"), ("lstm", "recurrent"),
                                       ("lru", "recurrent"), ("mamba", "scan"), ("lru", "scan")])
def test_bf16_inputs_reach_the_recurrent_kernels_without_fp32_copies(monkeypatch, name, mode):
    """The fused recurrent and scan kernels convert every stream and param as they load them (the module lists all
    its inputs in PASSTHROUGH_INPUTS["recurrent"] and ["scan"]), so the op hands them bf16 as given (complex inputs
    excepted),
    and store their real readouts in the op's output dtype (DIRECT_READOUT_FORMS). The backward kernels read the
    readouts' bf16 gradients as given and store the gradients of whole bf16 streams in bf16. The kernels compute
    in fp32, so final states and every other gradient equal, bit for bit, those of the same op given the inputs
    upcast to fp32 (rounded to bf16 once, as autograd does); what a kernel stores in bf16 is within one bf16 ulp
    of it (the interpreter truncates fp32 -> bf16 where a GPU rounds to nearest even)."""
    handed, readouts, grads_in, grad_buffers = [], [], [], []
    real_stream, real_param = triton_runtime.stream, triton_runtime.param
    real_readout, real_grad_in = triton_runtime.readout_buffer, triton_runtime.grad_in
    real_grad_buffer = triton_runtime.stream_grad_buffer
    monkeypatch.setattr(triton_runtime, "stream", lambda t, *a: handed.append(t.dtype) or real_stream(t, *a))
    monkeypatch.setattr(triton_runtime, "param", lambda t, *a: handed.append(t.dtype) or real_param(t, *a))
    monkeypatch.setattr(triton_runtime, "readout_buffer",
                        lambda *a: readouts.append(real_readout(*a)) or readouts[-1])
    monkeypatch.setattr(triton_runtime, "grad_in", lambda g, *a: grads_in.append(real_grad_in(g, *a)) or grads_in[-1])
    monkeypatch.setattr(triton_runtime, "stream_grad_buffer",
                        lambda x, *a, **kw: grad_buffers.append((x, real_grad_buffer(x, *a, **kw)))
                        or grad_buffers[-1][1])
    m, op, ref = compiled(name)
    assert set(op.module.PASSTHROUGH_INPUTS[mode]) == set(op.inputs)
    assert mode in op.module.DIRECT_READOUT_FORMS
    base = {n: t.to(torch.complex64) if t.is_complex() else t for n, t in sample_inputs(ref, 2, 23).items()}
    real = [n for n, t in base.items() if not t.is_complex()]
    direct = op.checked.op_streams[0] in real   # the op returns readouts in its first stream's dtype: lru's is complex
    g = torch.Generator().manual_seed(2)
    weights, results = None, {}
    for dtype in (torch.bfloat16, torch.float32):
        inputs = {n: (t.to(torch.bfloat16).to(dtype) if n in real else t).requires_grad_(True)
                  for n, t in base.items()}
        for seen in (handed, readouts, grads_in, grad_buffers):
            seen.clear()
        o, ht = op(**inputs, mode=mode, output_final_state=True)
        outs, finals = _flat(o), _flat(ht)
        if weights is None:
            weights = [torch.randn(x.shape, generator=g, dtype=x.dtype).to(torch.bfloat16).to(x.dtype)
                       if not x.is_complex() else torch.randn(x.shape, generator=g, dtype=x.dtype)
                       for x in (*outs, *finals)]
        loss = sum(((x.to(w.dtype) * w).real if x.is_complex() else (x.float() * w)).sum()
                   for x, w in zip((*outs, *finals), weights))
        grads = torch.autograd.grad(loss, list(inputs.values()))
        results[dtype] = [*(x.to(torch.bfloat16).float() if not x.is_complex() else x for x in outs), *finals,
                          *(gr.to(torch.bfloat16).float() if not gr.is_complex() else gr for gr in grads)]
        if dtype == torch.bfloat16:
            assert handed.count(torch.bfloat16) >= len(real), handed     # forward and backward launches
            want = torch.bfloat16 if direct else torch.float32
            assert readouts and all(r.dtype == want for r in readouts), [r.dtype for r in readouts]
            assert [g.dtype for g in grads_in[len(finals):]] == [want] * len(outs), grads_in   # after the states
            # the op hands the backward its inputs lifted (views: the same storage)
            whole = [buf.dtype for x, (buf, summed) in grad_buffers
                     if not summed and x.dtype == torch.bfloat16 and x.shape == buf.shape]
            assert (whole or not direct) and all(d == torch.bfloat16 for d in whole), grad_buffers
            in_bf16 = {i for i, x in enumerate(inputs.values())
                       if any(b.dtype == torch.bfloat16 and y.data_ptr() == x.data_ptr() for y, (b, _) in grad_buffers)}
            assert len(in_bf16) == len(whole), (in_bf16, whole)
    n_outs = len(outs) if direct else 0
    by_kernel = set(range(n_outs)) | {len(outs) + len(finals) + i for i in in_bf16}
    for i, (a, b) in enumerate(zip(results[torch.bfloat16], results[torch.float32])):
        if i in by_kernel:              # stored in bf16 by the kernel
            assert_within_one_bf16_ulp((name, i), a, b)
        else:
            assert torch.equal(a, b), (name, i, (a - b).abs().max())


def test_twin_recompute_and_fallback_run_in_fp32_for_bf16_inputs():
    """A form without a Triton backward differentiates its torch twin, and a form not trusted on a GPU runs it:
    the twin gets bf16 / fp16 inputs upcast to fp32 (torch never computes in bf16) and the gradients come back
    in the inputs' dtype."""
    seen = []

    def forward(states, x):
        return (x.float() * 3,), (states[0],)

    def twin(states, x):
        seen.append(x.dtype)
        return (x * 3,), (states[0] * 1,)

    x = torch.randn(2, 5, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16).requires_grad_(True)
    h0 = torch.zeros(2)
    outs, _ = triton_runtime.apply_form(forward, twin, (h0,), (x,), {}, n_outs=1)
    (dx,) = torch.autograd.grad(outs[0].sum(), [x])
    assert seen == [torch.float32] and dx.dtype == torch.bfloat16 and torch.equal(dx, torch.full_like(x, 3.0))


def test_passthrough_inputs_follow_every_read():
    """codegen.passthrough keeps an input only if every read of it ends, whole, in a chunk-form call."""
    from seqdsl.codegen.passthrough import passthrough_inputs

    source = """
def chunk(_state, q, k, v, u, g, w, p, *, scale, chunk_size=64):
    _B = q.shape[0]
    _S_k = (k).expand(_B, 4)
    _S_g = (g).expand(_B, 4)
    _S_p = (p).expand(_B, 4)
    _S_u = u * 2.0
    _S_w = (w).expand(_B, 4)
    _S_w2 = _ops.shift_time(_S_w)
    o, s = _forms.chunk_gated((q).expand(_B, 4), _S_k, v, gk=_S_g, g=_S_p, scale=scale, initial_state=_state[0])
    o2, s2 = _forms.chunk_gated(q, _S_k, _S_u, initial_state=_state[0])
    o3, s3 = _forms.chunk_gated(q, _S_w, v + 1.0, initial_state=_state[0])
    return (o + o2,), (s,)
"""
    # v: once whole, once in "v + 1.0"; u: multiplied; w: its view is also shifted by torch; p: of rank 1,
    # broadcast by its expand
    ranks = {"q": 2, "k": 2, "v": 2, "u": 2, "g": 2, "w": 2, "p": 1}
    assert passthrough_inputs(source, "chunk", ranks) == ("q", "k", "g")
    assert passthrough_inputs(source, "scan", {"q": 2}) == ()
    assert passthrough_inputs(source, "chunk", {"q": 2}, calls=frozenset({"chunk_delta"})) == ()


def test_direct_readout_only_when_the_form_returns_the_kernels_output_untouched():
    from seqdsl.codegen.passthrough import direct_readout

    def form(*lines: str) -> str:
        return "def chunk(_state, q, k, v):\n" + "".join(f"    {line}\n" for line in lines)

    call = "_S_read0, _S_last = _forms.chunk_gated(q, k, v, initial_state=_state[0])"
    assert direct_readout(form(call, "o = _S_read0", "return (o,), (_S_last,)"), "chunk")
    assert direct_readout(form(call, "return (_S_read0,), (_S_last,)"), "chunk")
    assert not direct_readout(form(call, "o = (_S_read0 + v)", "return (o,), (_S_last,)"), "chunk")
    assert not direct_readout(form(call, "o = _S_read0", "p = o * 2", "return (o,), (_S_last,)"), "chunk")
    assert not direct_readout(form(call, "o = _S_read0", "return (o, o), (_S_last,)"), "chunk")
    two = call.replace("_S_", "_T_")
    assert not direct_readout(form(call, two, "o = _S_read0", "return (o,), (_S_last, _T_last)"), "chunk")
    assert not direct_readout(form(call, "o = _S_read0", "return (o,), (_S_last,)"), "scan")


def test_unsupported_cell_falls_back_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQDSL_CACHE_DIR", str(tmp_path))
    spec = """
model odd(d_model = 8, n = 3):
  streams:
    u: [n] = linear(x)
  cell:
    state h: complex[n] = 0
    h <- complex(u, u) ** 2 + h
    o = real(h)
"""
    try:
        m = seqdsl.loads(spec, name="odd")
    except SpecError as e:      # the language may not allow this; the fallback is then untestable here
        pytest.skip(f"spec not accepted: {e}")
    op = seqdsl.compile(m, backend="triton")
    assert "recurrent" not in op.modes
    assert "'**' of complex values" in op.module.WHY_NOT["recurrent"]
    # the update is computed token-parallel by torch, so the scan and chunk forms (a diagonal recurrence) remain
    assert op.modes == ("scan", "chunk")
    ref = seqdsl.reference(m)
    inputs = sample_inputs(ref, 1, 6, seed=2)
    for mode in op.modes:
        _check(f"odd/triton {mode}", ref(**inputs, output_final_state=True),
               op(**inputs, output_final_state=True, mode=mode), torch.float64, FORM_FACTOR[mode])


# ---------------------------------------------------------------- GPU: larger shapes, bf16
GPU_CASES = [("gla", dict(heads=4, dk=64, dv=128)), ("gated_deltanet", dict(heads=4, dk=128, dv=128)),
             ("mamba2", dict(d_model=256)), ("mamba", dict(d_model=128, n=16)), ("lstm", dict(hidden=96)),
             ("s4d", dict(d_model=64, n=64))]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA or triton_runtime.interpreting(),
                    reason="needs a CUDA GPU and compiled Triton (run with TRITON_INTERPRET=0)")
@pytest.mark.parametrize("name,hparams", GPU_CASES, ids=[c[0] for c in GPU_CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_large_shapes_match_the_torch_backend(name, hparams, dtype):
    m = seqdsl.load(MODELS[name]).with_hparams(**hparams)
    op_t, op_ref = seqdsl.compile(m, backend="triton"), seqdsl.compile(m, backend="torch")
    ref = seqdsl.reference(m)
    inputs = {k: v.cuda() for k, v in sample_inputs(ref, 2, 512, seed=1).items()}
    h0 = tuple(h.cuda() for h in _flat(random_state(ref, 2)))
    h0 = h0 if len(h0) > 1 else h0[0]
    low = {k: (v.to(torch.complex64) if v.is_complex() else v.to(dtype)) for k, v in inputs.items()}
    # the fp64 reference gets the rounded inputs the kernel gets: the check is of the arithmetic
    rounded = {k: (v.to(torch.complex128) if v.is_complex() else v.double()) for k, v in low.items()}
    expected = op_ref(**rounded, initial_state=h0, output_final_state=True, mode="recurrent")
    fused_scan = ["scan"] if getattr(op_t.module, "SCAN", None) == "fused" else []
    for mode in ["recurrent"] + fused_scan:      # the fused scan: its blocks of tokens at the GPU's size
        got = op_t(**low, initial_state=h0, output_final_state=True, mode=mode)
        _check(f"{name}/gpu {mode} {dtype}", expected, got, dtype, 4.0 * FORM_FACTOR[mode])


CHUNK_GPU_CASES = ["scalar", "key", "delta", "gated-delta"]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA or triton_runtime.interpreting(),
                    reason="needs a CUDA GPU and compiled Triton (run with TRITON_INTERPRET=0)")
@pytest.mark.parametrize("case", CHUNK_GPU_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,T,H,K,V", [(2, 1000, 4, 128, 96), (1, 300, 2, 256, 256)], ids=["K128-V96", "K256-V256"])
def test_gpu_chunk_backward_kernels_at_large_shapes(case, dtype, B, T, H, K, V):
    """The compiled chunk kernels' gradients (B2 T1000 H4 K128 V96: partial last chunk, V not a power of two;
    K = V = 256: fla's largest head dim, four tiles each way) against fp64 autograd through the step loop on
    the rounded inputs."""
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, device="cuda")).to(dtype).double()

    q, k, v, h0 = rnd(B, T, H, K, scale=K ** -0.5), rnd(B, T, H, K), rnd(B, T, H, V), rnd(B, H, K, V)
    args = {}
    if case in ("delta", "gated-delta"):
        k = torch.nn.functional.normalize(k, dim=-1).to(dtype).double()
        args["beta"] = torch.rand(B, T, H, generator=g, device="cuda").to(dtype).double()
    if case in ("scalar", "gated-delta"):
        args["g"] = (-0.1 * torch.rand(B, T, H, generator=g, device="cuda")).to(dtype).double()
    if case == "key":
        args["gk"] = (-0.1 * torch.rand(B, T, H, K, generator=g, device="cuda")).to(dtype).double()
    form, ref = ((triton_chunk.chunk_delta, torch_forms.recurrent_delta) if "delta" in case
                 else (triton_chunk.chunk_gated, torch_forms.recurrent_gated))
    do, dht = rnd(B, T, H, V), rnd(B, H, K, V)
    exact = [t.requires_grad_(True) for t in (q, k, v, h0, *args.values())]
    low = [t.detach().to(dtype).requires_grad_(True) for t in exact]

    def loss(fn, ts):
        q_, k_, v_, h0_, *rest = ts
        o, ht = fn(q_, k_, v_, **dict(zip(args, rest)), scale=1.0, initial_state=h0_, output_final_state=True)
        return (o.double() * do).sum() + (ht.double() * dht).sum()

    expected = torch.autograd.grad(loss(ref, exact), exact)
    got = torch.autograd.grad(loss(form, low), low)
    for name, a, b in zip(["q", "k", "v", "h0", *args], expected, got):
        assert_close(f"chunk backward {case} {dtype} d{name}", a, b, dtype, 4.0)


def test_kernels_with_an_in_kernel_inverse_run_their_torch_form_on_a_gpu(monkeypatch):
    """gpu_check on an H200 found compiled kernels with inv() in the cell off the reference: on a GPU the
    op runs the torch twin (warning once), on fp32 copies of bf16 inputs (the recurrent kernels take them as
    given); the interpreter and other cells keep the Triton kernel."""
    src = {n: open(compiled(n)[1].path).read() for n in ("s4", "hippo_legs", "gla")}
    assert "gpu_caveat=" in src["s4"] and "gpu_caveat=" in src["hippo_legs"] and "gpu_caveat=" not in src["gla"]

    class OnGpu:            # a bf16 CUDA tensor, as far as apply_form looks
        is_cuda, requires_grad, dtype = True, False, torch.bfloat16

        def float(self):
            copy = OnGpu()
            copy.dtype = torch.float32
            return copy

    calls = []
    kernel = lambda states, *xs, **kw: calls.append("kernel")   # noqa: E731
    twin = lambda states, *xs, **kw: calls.append(("twin", [x.dtype for x in xs]))       # noqa: E731
    monkeypatch.setattr(triton_runtime, "interpreting", lambda: False)
    with pytest.warns(RuntimeWarning, match="inv\\(\\) inside the cell"):
        triton_runtime.apply_form(kernel, twin, (OnGpu(),), (OnGpu(),), {}, 1, gpu_caveat="inv() inside the cell: x")
    triton_runtime.apply_form(kernel, twin, (OnGpu(),), (OnGpu(),), {}, 1)
    monkeypatch.setattr(triton_runtime, "interpreting", lambda: True)
    triton_runtime.apply_form(kernel, twin, (OnGpu(),), (OnGpu(),), {}, 1, gpu_caveat="inv() inside the cell: x")
    monkeypatch.setattr(triton_runtime, "interpreting", lambda: False)
    monkeypatch.setenv("SEQDSL_TRUST_GPU_KERNELS", "1")    # what benchmarks/gpu_check.py sets
    triton_runtime.apply_form(kernel, twin, (OnGpu(),), (OnGpu(),), {}, 1, gpu_caveat="inv() inside the cell: x")
    assert calls == [("twin", [torch.float32]), "kernel", "kernel", "kernel"]


def test_ops_whose_kernels_carry_a_gpu_caveat_default_to_their_scan_on_a_gpu():
    """S4's recurrent kernel carries the caveat (its torch form on a GPU: a loop over the tokens); its scan form
    (the inverse in torch, the dense scan in triton_scan) does not, so on a GPU the op defaults to it. HiPPO-RNN has
    no scan and keeps its recurrent form; GLA has no caveat and keeps its default."""
    hippo_rnn, gla = (compiled(n)[1] for n in ("hippo_rnn", "gla"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEQDSL_CACHE_DIR", _CACHE)
        s4 = seqdsl.compile(seqdsl.load(MODELS["s4"]), backend="triton")    # its own size: 2,048 numbers of state
    assert s4.module.GPU_CAVEAT and hippo_rnn.module.GPU_CAVEAT and gla.module.GPU_CAVEAT is None
    assert s4.default_mode() == "recurrent" and s4.default_mode(on_gpu=True) == "scan"
    assert hippo_rnn.default_mode(on_gpu=True) == "recurrent"
    assert gla.default_mode(on_gpu=True) == gla.default_mode() == "chunk"


def test_no_generated_kernel_forms_a_3d_block():
    """matrix @ matrix renders as triton_lib.mm (rank-1 updates). The cells whose kernels formed [n, n, n]
    blocks with a 3-d product were exactly the four off the reference on an H200 (BENCHMARKS.md)."""
    for name in sorted(MODELS):
        src = open(compiled(name)[1].path).read().split("_TWIN_SOURCE")[0]   # the Triton part of the module
        assert "[:, :, None]" not in src and "[None, :, :]" not in src, name
    assert "_tlib.mm(" in open(compiled("hippo_legs")[1].path).read()


_ZOH_DENSE = """model zoh_dense(d_model = 4, n = 5):
  params:
    A: [n, n] ~ normal(0, 0.5)
    B: [n] ~ normal(0, 1)
  streams:
    u: [] = linear(x, [])
    dt: [] = softplus(linear(x, []))
  cell:
    state h: [n] = 0
    h <- expm(dt * A) @ h + dt * B * u
    o = h
  out:
    y = linear(o)
"""


def test_a_cell_with_a_matrix_exponential_has_a_triton_recurrent_kernel():
    """A dense SSM discretised by zero-order hold (expm(dt A) per token, dt from the input): the recurrent form is one
    Triton kernel (_tlib.expm), and so is its backward (_tlib.expm_frechet), outputs and gradients against the
    interpreter. The Triton backend used to offer no form at all for such a cell."""
    m = seqdsl.loads(_ZOH_DENSE, name="zoh_dense")
    op, ref = seqdsl.compile(m, backend="triton"), seqdsl.reference(m)
    source = open(op.path).read()
    assert "recurrent" in op.modes and "_tlib.expm(" in source and "_tlib.expm_frechet(" in source
    assert op.module.BACKWARD == "triton", op.module.BACKWARD
    inputs = sample_inputs(ref, 2, 11, seed=6)
    h0 = random_state(ref, 2, scale=0.3)
    _check("zoh_dense/triton recurrent", ref(**inputs, initial_state=h0, output_final_state=True),
           op(**inputs, initial_state=h0, output_final_state=True, mode="recurrent"), torch.float64)
    g_ref = projected_grads(lambda xs, h: ref(**xs, initial_state=h, output_final_state=True), inputs, h0)
    g_op = projected_grads(lambda xs, h: op(**xs, initial_state=h, output_final_state=True, mode="recurrent"),
                           inputs, h0)
    for k in g_ref:
        assert_close(f"zoh_dense d{k}", g_ref[k], g_op[k], torch.float64, 10)


@pytest.mark.parametrize("name", ["gla", "mamba", "lstm", "deltanet", "s4d", "rwkv4"])
def test_no_tokens_in_every_triton_form(name):
    """T = 0: readouts [B, 0, ...] and the initial states back, in every Triton form (the op answers it without
    launching anything)."""
    m, op, ref = compiled(name)
    inputs = {k: (v[:, :0] if k in m.checked.op_streams else v) for k, v in sample_inputs(ref, 2, 3, seed=1).items()}
    h0 = random_state(ref, 2)
    for mode in op.modes:
        o, ht = op(**inputs, initial_state=h0, output_final_state=True, mode=mode)
        for r in (o if isinstance(o, tuple) else (o,)):
            assert r.shape[:2] == (2, 0), (mode, r.shape)
        for a, b in zip(h0 if isinstance(h0, tuple) else (h0,), ht if isinstance(ht, tuple) else (ht,)):
            assert torch.equal(a.to(b.dtype), b), f"{name}/{mode}"


_SCALAR_GATED = """model scalar_gated(d_model = 8, heads = 2, dk = 16, dv = 16):
  streams:
    q: [heads, dk] = linear(x)
    k: [heads, dk] = linear(x)
    v: [heads, dv] = linear(x)
    g: [heads] = logsigmoid(linear(x))
  cell over heads:
    state S: [dk, dv] = 0
    S <- exp(g) * S + outer(k, v)
    o = q @ S
  out:
    y = linear(o)
"""


@pytest.mark.parametrize("name,gate", [("gla", "gk"), ("scalar_gated", "g"), ("gated_deltanet", "g")])
def test_chunk_kernels_stay_finite_under_strong_decays(name, gate):
    """Log gates down to -100 per token, T = 100 (a partial last chunk of 36 tokens) and packed sequences of 37 and
    63: the Triton chunk form's outputs, final state and gradients against the interpreter. The rows past a
    sequence's end loaded their log gate as 0, so exp(G_t - G_s) overflowed there (a chunk's decay past e^-709 in
    fp64), and inf times their zeros made NaN that products over rows carried into the real rows: every gradient
    of GLA and the scalar gate, and the delta rule's outputs too, were NaN."""
    if name == "scalar_gated":
        m = seqdsl.loads(_SCALAR_GATED, name=name)
        op, ref = seqdsl.compile(m, backend="triton"), seqdsl.reference(m)
    else:
        m, op, ref = compiled(name)
    inputs = sample_inputs(ref, 1, 100, seed=7)
    inputs[gate] = -100.0 * torch.rand_like(inputs[gate]) - 0.5
    h0 = random_state(ref, 1, scale=0.3)
    _check(f"{name}/strong decay", ref(**inputs, initial_state=h0, output_final_state=True),
           op(**inputs, initial_state=h0, output_final_state=True, mode="chunk"), torch.float64)
    g_ref = projected_grads(lambda xs, h: ref(**xs, initial_state=h, output_final_state=True), inputs, h0)
    g_op = projected_grads(lambda xs, h: op(**xs, initial_state=h, output_final_state=True, mode="chunk"), inputs, h0)
    for k in g_ref:
        assert torch.isfinite(g_op[k]).all(), f"{name}: d{k} is not finite"
        assert_close(f"{name}/strong decay d{k}", g_ref[k], g_op[k], torch.float64, FORM_FACTOR["chunk"] * 10)
    cu = torch.tensor([0, 37, 100])
    h0s = random_state(ref, 2, scale=0.3)
    _check(f"{name}/strong decay packed", ref(**inputs, initial_state=h0s, output_final_state=True, cu_seqlens=cu),
           op(**inputs, initial_state=h0s, output_final_state=True, mode="chunk", cu_seqlens=cu), torch.float64)
