"""The launch-time tuner (seqdsl.runtime.triton_tune) of the chunk kernels and the generated forward kernels.

On a GPU the tuner times the policy's configuration and a few alternatives (other blocks, warps, stages) and keeps
the fastest. Whatever it keeps must compute the same thing: every candidate of every tuned chunk kernel runs here
under the interpreter, against autograd of the fp64 step loop (outputs, final state, every gradient), and every
candidate of the generated recurrent and fused scan forward kernels against the fp64 interpreter. Blocks change
the kernels' grids and loops (K and V split in 32, 64 or 128 channels), so a candidate that indexed its tiles wrong
would fail. The choice itself (fastest kept, failing alternatives skipped, one timing per key) is checked with a
fake clock, as there is no GPU here.
"""

import pytest
import torch

from seqdsl.runtime import torch_forms, triton_chunk, triton_runtime, triton_tune
from seqdsl.testing import FORM_FACTOR, assert_close

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:overflow encountered:RuntimeWarning")

# K = 72 and V = 80: by default two tiles of 64 each; the alternatives' blocks of 32 make three tiles, of 128 one.
# Two chunks of 64, the last one partial.
B, T, H, K, V = 1, 70, 2, 72, 80
CASES = ["none", "scalar", "key", "delta", "gated-delta"]


def _inputs(case: str):
    """(positional inputs, keyword gates): fp64 leaves requiring grad."""
    g = torch.Generator().manual_seed(len(case))

    def leaf(t):
        return t.requires_grad_(True)

    q, v, h0 = (leaf(torch.randn(*s, generator=g, dtype=torch.float64)) for s in ((B, T, H, K), (B, T, H, V),
                                                                                 (B, H, K, V)))
    k = torch.randn(B, T, H, K, generator=g, dtype=torch.float64)
    args = [q, leaf(torch.nn.functional.normalize(k, dim=-1) if "delta" in case else 0.3 * k), v]
    if "delta" in case:
        args.append(leaf(torch.rand(B, T, H, generator=g, dtype=torch.float64)))        # beta
    gates = {}
    if case in ("scalar", "gated-delta"):
        gates["g"] = leaf(-torch.rand(B, T, H, generator=g, dtype=torch.float64))
    if case == "key":
        gates["gk"] = leaf(-0.5 * torch.rand(B, T, H, K, generator=g, dtype=torch.float64))
    return args, gates, h0


def _results(case: str, form, **kw) -> list[torch.Tensor]:
    """[o, final state, the gradients of every input, gates and the initial state] of a loss on o and the state."""
    args, gates, h0 = _inputs(case)
    o, ht = form(*args, **gates, scale=0.7, initial_state=h0, output_final_state=True, **kw)
    g = torch.Generator().manual_seed(1)
    loss = (o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() \
        + (ht * torch.randn(ht.shape, generator=g, dtype=ht.dtype)).sum()
    return [o.detach(), ht.detach(), *torch.autograd.grad(loss, [*args, *gates.values(), h0])]


def _forms(case: str):
    if "delta" in case:
        return torch_forms.recurrent_delta, triton_chunk.chunk_delta
    return torch_forms.recurrent_gated, triton_chunk.chunk_gated


@pytest.mark.parametrize("case", CASES)
def test_every_configuration_the_tuner_may_choose_computes_the_same(case):
    reference, chunk = _forms(case)
    expected = _results(case, reference)
    offered: dict[str, list] = {}

    def record_and_pick(i):
        def chooser(name, configs):
            offered.setdefault(name, configs)
            return i
        return chooser

    most = max(len(alts) for alts in triton_chunk.TUNING.values()) + 1
    for i in range(most):
        with triton_tune.choosing(record_and_pick(i)):
            got = _results(case, chunk, chunk_size=64)
        for j, (a, b) in enumerate(zip(expected, got)):
            what = ["o", "final state"][j] if j < 2 else f"gradient {j - 2}"
            assert_close(f"{case} candidate {i}: {what}", a, b, torch.float64, FORM_FACTOR["chunk"])
    # the test covers alternatives: every tuned kernel was offered more than its policy configuration, and the
    # blocks varied where the table says they may
    assert offered and all(len(configs) > 1 for configs in offered.values()), offered
    blocks = {name: {(c.get("BK"), c.get("BV")) for c in configs} for name, configs in offered.items()}
    if "delta" in case:
        assert len(blocks["chunk_delta_fwd_h_kernel"]) == 2 and len(blocks["chunk_delta_bwd_dhu_kernel"]) == 2
    else:
        assert {(64, 64), (64, 32), (32, 32)} <= blocks["chunk_fwd_h_kernel"]
        assert {(64, 64), (32, 32)} <= blocks["chunk_bwd_dh_kernel"]
    assert (128, 128) in blocks["chunk_fwd_o_kernel"]


def test_the_tuner_keeps_the_fastest_and_skips_alternatives_that_fail():
    configs = [{"BV": 64}, {"BV": 32}, {"BV": 16}, {"BV": 128}]
    cost = {64: 3.0, 32: 2.0, 16: 1.0}
    ran = []

    def run(cfg):
        ran.append(cfg["BV"])
        if cfg["BV"] == 16:
            raise RuntimeError("out of resources: shared memory")

    def timer(fn):
        fn()
        return cost.get(ran[-1], 0.5)

    best, timings = triton_tune.fastest(configs, run, timer)
    assert best == {"BV": 128} and ran == [64, 32, 16, 128]
    assert isinstance(timings[2][1], RuntimeError) and timings[1][1] == 2.0
    # without the failing one being the fastest, the fastest timed one
    best, _ = triton_tune.fastest(configs[:3], run, timer)
    assert best == {"BV": 32}
    # the policy's configuration failing is the launch's error, as without tuning
    with pytest.raises(RuntimeError, match="shared memory"):
        triton_tune.fastest([{"BV": 16}, {"BV": 32}], run, timer)


def test_a_tuned_launch_times_each_key_once_and_runs_the_fastest(monkeypatch, tmp_path):
    """With tuning switched on as on a GPU (a fake clock: the last candidate fastest), the op runs the chosen
    configuration, records the choice, gives the reference's results, and times nothing on a second call, nor in a
    later process (the choices stored on disk), except where a stored choice is no longer a candidate."""
    import json

    monkeypatch.setenv("SEQDSL_CACHE_DIR", str(tmp_path))
    timed = []

    def clock(fn):
        fn()
        timed.append(1)
        return 10.0 - len(timed)          # every later candidate is faster

    monkeypatch.setattr(triton_tune, "tuning_on", lambda device: True)
    monkeypatch.setattr(triton_tune, "_cuda_ms", clock)
    monkeypatch.setattr(triton_tune.fastest, "__defaults__", (clock,))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a fake GPU")
    triton_tune.forget()
    try:
        expected = _results("scalar", torch_forms.recurrent_gated)
        got = _results("scalar", triton_chunk.chunk_gated, chunk_size=64)
        for j, (a, b) in enumerate(zip(expected, got)):
            assert_close(f"tuned result {j}", a, b, torch.float64, FORM_FACTOR["chunk"])
        made = triton_tune.choices()
        kernels = [c["kernel"] for c in made]
        assert {"chunk_fwd_h_kernel", "chunk_fwd_o_kernel", "chunk_bwd_dh_kernel", "chunk_bwd_dqk_kernel",
                "chunk_bwd_dv_kernel"} <= set(kernels), kernels
        for c in made:                    # the last candidate won (the clock says so), and each was timed
            assert c["chosen"] == c["ms"][-1][0] and c["chosen"], c
        n = len(timed)
        _results("scalar", triton_chunk.chunk_gated, chunk_size=64)
        assert len(timed) == n and len(triton_tune.choices()) == len(made)   # the same keys: no new timing
        # a later process: the choices come from the disk cache, untimed, and still give the reference's results
        (stored,) = (tmp_path / "tuning").glob("a_fake_GPU-triton*.json")
        triton_tune.forget()
        got = _results("scalar", triton_chunk.chunk_gated, chunk_size=64)
        for j, (a, b) in enumerate(zip(expected, got)):
            assert_close(f"stored choice result {j}", a, b, torch.float64, FORM_FACTOR["chunk"])
        assert len(timed) == n and {c["source"] for c in triton_tune.choices()} == {"stored"}
        assert [c["chosen"] for c in triton_tune.choices()] == [c["chosen"] for c in made]
        # an entry that is no longer a candidate (say, the table changed) is timed again; the others are not; and
        # what another process wrote meanwhile (here: an entry of a kernel this one never ran) is kept
        entries = json.loads(stored.read_text())
        stale = next(k for k in entries if "chunk_fwd_o_kernel" in k)
        stored.write_text(json.dumps({**entries, stale: {"BV": 8}}))
        triton_tune.forget()
        _results("scalar", triton_chunk.chunk_gated, chunk_size=64)     # reads the file (every entry but one used)
        stored.write_text(json.dumps({**json.loads(stored.read_text()), "another process's key": {"num_warps": 2}}))
        sources = {c["kernel"]: c["source"] for c in triton_tune.choices()}
        assert sources.pop("chunk_fwd_o_kernel") == "timed" and set(sources.values()) == {"stored"}, sources
        assert len(timed) > n
        triton_tune._store("a fake GPU", "one more key", {"num_warps": 4})
        final = json.loads(stored.read_text())
        assert final["another process's key"] == {"num_warps": 2} and final["one more key"] == {"num_warps": 4}
        assert final[stale] != {"BV": 8}
    finally:
        triton_tune.forget()


def test_tuning_is_off_where_one_configuration_must_run(monkeypatch):
    cuda = torch.device("cuda")
    assert not triton_tune.tuning_on(torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not triton_tune.tuning_on(cuda)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert triton_tune.tuning_on(cuda)
    monkeypatch.setenv("SEQDSL_AUTOTUNE", "0")
    assert not triton_tune.tuning_on(cuda)
    monkeypatch.delenv("SEQDSL_AUTOTUNE")
    monkeypatch.setenv("SEQDSL_AUTOTUNE_CACHE", "0")         # tuned, but choices neither read from nor written to disk
    assert triton_tune._disk_file("a GPU") is None
    monkeypatch.delenv("SEQDSL_AUTOTUNE_CACHE")
    assert triton_tune._disk_file("a GPU").name.startswith("a_GPU-triton")
    torch.use_deterministic_algorithms(True)
    try:
        assert not triton_tune.tuning_on(cuda)
    finally:
        torch.use_deterministic_algorithms(False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)    # a CUDA graph capture
    assert not triton_tune.tuning_on(cuda)


# Generated recurrent and fused scan forward kernels: their tuned launches (``_rt.launch_alternatives``: half the
# tile, other warps, other tokens per block). Dims where the split axis is 32 long, so that the interpreter's
# whole-axis tile has a half (two programs of 16).
GENERATED = {"gla": {"heads": 1, "dk": 4, "dv": 32, "d_model": 8, "gate_rank": 2},
             "hgrn": {"d_model": 32}, "mamba": {"d_model": 4, "n": 4, "dt_rank": 2}, "lstm": {"d_model": 4}}


def _flat(x) -> tuple:
    return x if isinstance(x, tuple) else (x,)


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_every_configuration_of_a_generated_kernel_computes_the_same(name, monkeypatch, tmp_path):
    import pathlib

    import seqdsl
    from seqdsl.testing import random_state, sample_inputs

    monkeypatch.setenv("SEQDSL_CACHE_DIR", str(tmp_path))
    examples = pathlib.Path(__file__).resolve().parent.parent / "examples"
    model = seqdsl.load(examples / f"{name}.seq").with_hparams(**GENERATED[name])
    op, ref = seqdsl.compile(model, backend="triton"), seqdsl.reference(model)
    inputs, h0 = sample_inputs(ref, 2, 33, seed=3), random_state(ref, 2)
    expected = ref(**inputs, initial_state=h0, output_final_state=True)
    forms = [f for f in ("recurrent", "scan") if f in op.modes and (f == "recurrent" or op.module.SCAN == "fused")]
    offered: dict[str, list] = {}
    for form in forms:
        for i in range(6):
            def chooser(kernel, configs, i=i):
                offered.setdefault(kernel, configs)
                return i
            with triton_tune.choosing(chooser):
                got = op(**inputs, initial_state=h0, output_final_state=True, mode=form)
            for j, (a, b) in enumerate(zip(_flat(expected[0]) + _flat(expected[1]), _flat(got[0]) + _flat(got[1]))):
                assert_close(f"{name} {form} candidate {i}: result {j}", a, b, torch.float64, FORM_FACTOR[form])
    assert len(offered) == len(forms) and all(len(c) > 1 for c in offered.values()), offered
    if name in ("gla", "hgrn"):      # the split state's tile was halved in some candidate of every kernel
        for kernel, configs in offered.items():
            tiles = {v for c in configs for k, v in c.items() if k.startswith("BLOCK_") and k != "BLOCK_T"
                     and v in (16, 32)}
            assert tiles == {16, 32}, (kernel, configs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or triton_tune._rt.interpreting(),
                    reason="needs a CUDA GPU and compiled Triton (run with TRITON_INTERPRET=0)")
@pytest.mark.parametrize("case", ["scalar", "delta"])
def test_gpu_every_candidate_compiled_for_the_gpu_computes_the_same(case, monkeypatch):
    """Each candidate the tuner may choose, compiled for the GPU (fp32 inputs, B 2, T 300, H 2, K = 128, V = 96: two
    or three tiles per axis), gives the fp64 step loop's outputs and gradients; then tuning proper picks one."""
    g = torch.Generator(device="cuda").manual_seed(0)
    B_, T_, H_, K_, V_ = 2, 300, 2, 128, 96

    def rnd(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, device="cuda", dtype=torch.float64)).requires_grad_(True)

    q, v, h0 = rnd(B_, T_, H_, K_, scale=K_ ** -0.5), rnd(B_, T_, H_, V_), rnd(B_, H_, K_, V_)
    k = torch.nn.functional.normalize(torch.randn(B_, T_, H_, K_, generator=g, device="cuda", dtype=torch.float64),
                                      dim=-1).requires_grad_(True)
    extra = [(0.5 * torch.rand(B_, T_, H_, generator=g, device="cuda", dtype=torch.float64)).requires_grad_(True)] \
        if case == "delta" else []
    gate = {} if case == "delta" else {"g": (-0.1 * torch.rand(B_, T_, H_, generator=g, device="cuda",
                                                                dtype=torch.float64)).requires_grad_(True)}
    reference, chunk = _forms(case)
    leaves = [q, k, v, *extra, *gate.values(), h0]

    def results(form, cast):
        xs = [t.detach().to(cast).requires_grad_(True) for t in leaves]
        n = 3 + len(extra)
        o, ht = form(*xs[:n], **dict(zip(gate, xs[n:n + len(gate)])), scale=1.0, initial_state=xs[-1],
                     output_final_state=True)
        loss = o.double().square().sum() + ht.double().square().sum()
        return [o.detach().double(), ht.detach().double(), *(d.double() for d in torch.autograd.grad(loss, xs))]

    expected = results(reference, torch.float64)
    for i in range(5):
        with triton_tune.choosing(lambda name, configs, i=i: i):
            got = results(chunk, torch.float32)
        for j, (a, b) in enumerate(zip(expected, got)):
            assert_close(f"{case} candidate {i} result {j} on the GPU", a, b, torch.float32, FORM_FACTOR["chunk"])
    monkeypatch.setenv("SEQDSL_AUTOTUNE", "1")          # gpu_session.sh runs the tests with the policy alone
    monkeypatch.setenv("SEQDSL_AUTOTUNE_CACHE", "0")
    triton_tune.forget()
    got = results(chunk, torch.float32)
    assert triton_tune.choices(), "no tuning happened on the GPU"
    triton_tune.forget()
    for j, (a, b) in enumerate(zip(expected, got)):
        assert_close(f"{case} tuned result {j} on the GPU", a, b, torch.float32, FORM_FACTOR["chunk"])


@pytest.mark.parametrize("name,mode", [("mamba", "scan"), ("mamba", "recurrent"), ("gla", "recurrent")])
def test_tuning_kernels_that_add_into_their_buffers_leaves_the_gradients_right(name, mode, monkeypatch, tmp_path):
    """Tuning switched on as on a GPU (a fake clock): every candidate of every launch (forward and backward) runs
    once or more before the chosen one. Mamba's backward adds each channel's B and C gradient rows into one
    zeroed buffer (atomics), GLA's recurrent backward tiles add their parts of dq, dk; the candidates are timed on
    copies of the buffers, so the gradients are the interpreter's (without the copies they come out counted as
    many times as there were candidates)."""
    import pathlib

    import seqdsl
    from seqdsl.testing import projected_grads, random_state, sample_inputs

    monkeypatch.setenv("SEQDSL_CACHE_DIR", str(tmp_path))
    timed = []

    def clock(fn):
        fn()
        timed.append(1)
        return float(len(timed) % 3)

    monkeypatch.setattr(triton_tune, "tuning_on", lambda device: True)
    monkeypatch.setattr(triton_tune.fastest, "__defaults__", (clock,))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a fake GPU")
    examples = pathlib.Path(__file__).resolve().parent.parent / "examples"
    model = seqdsl.load(examples / f"{name}.seq").with_hparams(**GENERATED[name])
    op, ref = seqdsl.compile(model, backend="triton"), seqdsl.reference(model)
    inputs, h0 = sample_inputs(ref, 2, 33, seed=5), random_state(ref, 2, scale=0.3)
    expected = projected_grads(lambda xs, h: ref(**xs, initial_state=h, output_final_state=True), inputs, h0)
    triton_tune.forget()
    try:
        with triton_runtime.override_launch(block=16, block_t=8):      # GLA: two tiles of its 32-long axis
            got = projected_grads(lambda xs, h: op(**xs, initial_state=h, output_final_state=True, mode=mode),
                                  inputs, h0)
        made = {c["kernel"] for c in triton_tune.choices()}
        assert any(k.endswith("_bwd_kernel") for k in made) and timed, made
    finally:
        triton_tune.forget()
    for k, want in expected.items():
        if want is not None:
            assert_close(f"{name} {mode} tuned d{k}", want, got[k], torch.float64, FORM_FACTOR[mode])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or triton_tune._rt.interpreting(),
                    reason="needs a CUDA GPU and compiled Triton (run with TRITON_INTERPRET=0)")
@pytest.mark.parametrize("mode", ["scan", "recurrent"])
def test_gpu_every_candidate_of_mamba_computes_the_same(mode):
    """Mamba (d_inner 128, n 16; B 2, T 300) compiled for the GPU, each candidate of its forward and backward
    launches in turn (other tokens per block, warps; the backward adding B's and C's gradients atomically), against
    the fp64 interpreter on the CPU: outputs' projections' gradients of every input and the initial state."""
    import pathlib

    import seqdsl
    from seqdsl.testing import projected_grads, random_state, sample_inputs

    examples = pathlib.Path(__file__).resolve().parent.parent / "examples"
    model = seqdsl.load(examples / "mamba.seq").with_hparams(d_model=64, n=16, dt_rank=4)
    op, ref = seqdsl.compile(model, backend="triton"), seqdsl.reference(model)
    inputs, h0 = sample_inputs(ref, 2, 300, seed=7), random_state(ref, 2, scale=0.3)
    expected = projected_grads(lambda xs, h: ref(**xs, initial_state=h, output_final_state=True), inputs, h0)

    def on_gpu(xs, h):
        o, ht = op(**{k: v.cuda() for k, v in xs.items()}, initial_state=h.cuda(), output_final_state=True, mode=mode)
        return o.cpu(), ht.cpu()

    for i in range(5):
        with triton_tune.choosing(lambda name, configs, i=i: i):
            got = projected_grads(on_gpu, inputs, h0)
        for k, want in expected.items():
            if want is not None:
                assert_close(f"mamba {mode} candidate {i} d{k} on the GPU", want, got[k], torch.float64,
                             FORM_FACTOR[mode])
