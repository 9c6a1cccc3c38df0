"""The Triton backward kernel of the recurrent form (codegen/triton_backward.py), against the fp64 interpreter.

The reference is torch autograd through the fp64 interpreter (seqdsl.reference), which shares nothing
with the generated kernels but the spec. The torch twin, the fallback backward, is made unusable in these
tests, so a gradient can only come from the kernel. Runs under ``TRITON_INTERPRET=1`` at tiny dims.
"""

import pytest
import torch
from test_triton_backend import MODELS, compiled, nan_filled_buffers

import seqdsl
from seqdsl.codegen.ops import OPS
from seqdsl.testing import assert_close, random_state, sample_inputs

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning",
                                        "ignore:overflow encountered:RuntimeWarning")


class _NoTwin:
    """Stands in for the torch twin: the backward must not recompute through it."""

    @property
    def module(self):
        raise AssertionError("the recurrent backward recomputed through the torch twin")


def _flat(x):
    return x if isinstance(x, tuple) else (x,)


def _grads(fn, inputs, h0, only_final=False):
    xs = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    hs = tuple(h.detach().clone().requires_grad_(True) for h in _flat(h0))
    o, ht = fn(xs, hs if len(hs) > 1 else hs[0])
    g = torch.Generator().manual_seed(0)
    loss = 0
    for t in (() if only_final else _flat(o)) + _flat(ht):
        w = torch.randn(t.shape, generator=g, dtype=torch.float64)
        loss = loss + (t.real * w).sum()
    loss.backward()
    return {**{k: v.grad for k, v in xs.items()}, **{f"h0[{i}]": h.grad for i, h in enumerate(hs)}}


def _check_kernel_gradients(tag, m, op, ref, B, T, monkeypatch, only_final=False, mode="recurrent"):
    monkeypatch.setattr(op.module, "_TWIN", _NoTwin())
    nan_filled_buffers(monkeypatch)
    inputs = sample_inputs(ref, B, T, seed=T + 1)
    h0 = random_state(ref, B, scale=0.3)
    expected = _grads(lambda xs, h: ref(**xs, initial_state=h, output_final_state=True), inputs, h0, only_final)
    got = _grads(lambda xs, h: op(**xs, initial_state=h, output_final_state=True, mode=mode),
                 inputs, h0, only_final)
    for k, want in expected.items():
        if want is None:
            assert got[k] is None or got[k].abs().max() == 0, f"{tag}: unexpected gradient for {k}"
            continue
        assert got[k] is not None, f"{tag}: no gradient for {k}"
        assert_close(f"{tag} d{k}", want, got[k], torch.float64, 10)


BACKWARD_CASES = [n for n in sorted(MODELS) if getattr(compiled(n)[1].module, "BACKWARD", None) == "triton"]


def test_every_cell_with_a_recurrent_kernel_gets_a_triton_backward():
    """Real and complex cells, nonlinear ones and those with an in-cell matrix inverse included."""
    missing = {name: compiled(name)[1].module.BACKWARD for name in sorted(MODELS)
               if "recurrent" in compiled(name)[1].modes and compiled(name)[1].module.BACKWARD != "triton"}
    assert not missing, f"recurrent forms without a Triton backward: {missing}"
    complex_cells = [n for n in BACKWARD_CASES if any(t.complex for t in compiled(n)[0].checked.cell_types.values())]
    assert len(complex_cells) >= 10 and len(BACKWARD_CASES) >= 60, (complex_cells, len(BACKWARD_CASES))


@pytest.mark.parametrize("name", BACKWARD_CASES)
def test_backward_kernel_matches_the_interpreter(name, monkeypatch):
    """Two sequences of 33 steps: checkpoints every 6 steps, the last chunk partial."""
    m, op, ref = compiled(name)
    _check_kernel_gradients(f"{name} T=33", m, op, ref, 2, 33, monkeypatch)


@pytest.mark.parametrize("name", ["gla", "lstm", "mamba", "deltanet", "rwkv7", "slstm"])
def test_backward_kernel_one_step_and_final_state_only(name, monkeypatch):
    m, op, ref = compiled(name)
    _check_kernel_gradients(f"{name} T=1", m, op, ref, 1, 1, monkeypatch)
    _check_kernel_gradients(f"{name} final state only", m, op, ref, 1, 9, monkeypatch, only_final=True)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("name, mode", [("mamba", "recurrent"), ("mamba", "scan"), ("mamba2", "recurrent"),
                                        ("hippo_legs", "recurrent")])
def test_streams_shared_by_every_head_are_summed_in_the_kernel(name, mode, deterministic, monkeypatch):
    """Mamba's B and C (and HiPPO-LegS's input) have no head axis: every head's program adds its gradient rows
    into one [B, T, 1, ...] buffer, atomically, instead of writing a row per head that torch then sums; under
    ``torch.use_deterministic_algorithms(True)`` it writes the rows. Both against the fp64 interpreter (the
    packed-sequence tests run the atomic path too); which buffer each stream got is checked, so neither path
    passes for the other."""
    from seqdsl.runtime import triton_runtime as rt
    m, op, ref = compiled(name)
    got = []

    def recording(x, shape, dtype, complex_, **kw):
        buffer, summed = buffer_for(x, shape, dtype, complex_, **kw)
        assert buffer.shape[2] == (1 if summed else shape[2])
        got.append((x.shape[2] == 1, summed))
        return buffer, summed

    buffer_for = rt.stream_grad_buffer
    monkeypatch.setattr(rt, "stream_grad_buffer", recording)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        _check_kernel_gradients(f"{name} {mode}", m, op, ref, 2, 33, monkeypatch, mode=mode)
    finally:
        torch.use_deterministic_algorithms(was)
    shared = [summed for is_shared, summed in got if is_shared]
    assert shared, f"{name}: no stream shared by every head reached the backward"
    assert all(summed != deterministic for summed in shared), got
    assert not any(summed for is_shared, summed in got if not is_shared), got


def _tiled(name: str, form: str) -> tuple[str, int] | None:
    """(the axis the form's kernels split across programs, its size in the test dims), or None."""
    module = compiled(name)[1].module
    axis = getattr(module, "TILED_AXIS" if form == "recurrent" else "SCAN_TILED_AXIS", None)
    return None if axis is None else (axis, compiled(name)[1].checked.dim_sizes[axis])


TILED_BACKWARD = [(n, f) for n in BACKWARD_CASES for f in ("recurrent", "scan")
                  if _tiled(n, f) and (f == "recurrent" or compiled(n)[1].module.SCAN_BACKWARD == "triton scan")]


def test_which_backward_kernels_split_their_state_across_programs():
    """The backward kernels are split as their forward is: matrix states by their value axis, elementwise
    vector states (HGRN, Hawk, LRU, ...) by their axis, in the fused scan's backward too."""
    assert len([n for n, f in TILED_BACKWARD if f == "recurrent"]) >= 30, TILED_BACKWARD
    assert {"hgrn", "hawk", "lru", "qrnn", "aft_simple", "s5"} <= {n for n, f in TILED_BACKWARD if f == "scan"}


@pytest.mark.parametrize("name, form", TILED_BACKWARD)
def test_backward_kernel_split_into_tiles_matches_the_interpreter(name, form, monkeypatch):
    """The state axis split into tiles of 2 (1 where the test dims make it 2 long; a GPU launch takes tiles of
    64): each tile's program recomputes its part of the states and adds its part of the gradients of what lacks
    the axis (GLA's q and k, HGRN's nothing, a param shared by the axis) into zeroed buffers. Against the fp64
    interpreter, every other buffer NaN-filled; the launches are checked to have had several tiles."""
    from seqdsl.runtime import triton_runtime as rt
    m, op, ref = compiled(name)
    axis, size = _tiled(name, form)
    block = 2 if size > 2 else 1
    tiles = []
    policy = rt.launch_config

    def recording(form_, tiled_size, *a, **kw):
        cfg = policy(form_, tiled_size, *a, **kw)
        if tiled_size and kw.get("backward"):
            tiles.append(-(-tiled_size // cfg["block"]))
        return cfg

    monkeypatch.setattr(rt, "launch_config", recording)
    with rt.override_launch(block=block):
        _check_kernel_gradients(f"{name} {form} tiles of {block}", m, op, ref, 2, 33, monkeypatch, mode=form)
    assert tiles and all(n == -(-size // block) > 1 for n in tiles), (tiles, size, block)


def test_a_split_backward_runs_whole_under_deterministic_algorithms(monkeypatch):
    """Tiles add their parts of a gradient atomically, in an order that varies from run to run on a GPU; under
    torch.use_deterministic_algorithms(True) the backward kernels run one program per sequence and head."""
    from seqdsl.runtime import triton_runtime as rt
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with rt.override_launch(block=2):
            assert rt.launch_config("recurrent", 6, 36, backward=True)["block"] == 8
            assert rt.launch_config("scan_backward", 6, 6, backward=True)["block"] == 8
            assert rt.launch_config("recurrent", 6, 36)["block"] == 2      # the forward still splits
        m, op, ref = compiled("gla")
        with rt.override_launch(block=2):
            _check_kernel_gradients("gla deterministic", m, op, ref, 2, 9, monkeypatch)
    finally:
        torch.use_deterministic_algorithms(was)


# ---------------------------------------------------------------- loop-invariant subexpressions (codegen/lift.py)
_LIFT_SPEC = """
model lifting(d_model = 4, n = 3):
  params:
    A: [n, n] ~ normal(0, 0.3)
    w: [n] ~ normal(0, 1)
  streams:
    u: [n] = linear(x)
  cell:
    state h: [n] = 0
    g = sigmoid(w) * u
    h <- (eye(n) + 0.5 * A) @ h + sigmoid(w) * u + 2.0 * pi * g
    o = sum(h * exp(-w))
"""


def test_lifting_makes_each_invariant_subexpression_one_local():
    """Maximal subexpressions reading params only become locals (one per distinct expression, placed before the
    first statement reading one); what reads a stream or the state, and constants, stay inline."""
    from seqdsl import printer
    from seqdsl.codegen.lift import lift_invariant_subexpressions

    c = seqdsl.loads(_LIFT_SPEC).checked

    def liftable(e):
        names = [n.id for n in seqdsl.ir.names_in(e)]
        return id(e) in c.expr_types and all(c.kinds.get(n) in ("param", "dim", "hparam") or n not in c.kinds
                                             for n in names) and any(c.kinds.get(n) == "param" for n in names)

    body, lifted, rebuilt = lift_invariant_subexpressions(c.model.cell.body, [], liftable)
    shown = [(type(st).__name__, getattr(st, "name", getattr(st, "target", None)), printer.expr(st.value))
             for st in body if hasattr(st, "value")]
    assert shown == [("Local", "_lift0", "sigmoid(w)"),
                     ("Local", "g", "_lift0 * u"),
                     ("Local", "_lift1", "eye(n) + 0.5 * A"),
                     ("Update", "h", "_lift1 @ h + _lift0 * u + 2.0 * pi * g"),
                     ("Local", "_lift2", "exp(-w)"),
                     ("Local", "o", "sum(h * _lift2)")]
    assert set(lifted) == {"_lift0", "_lift1", "_lift2"}
    # the lifted expressions are the spec's own nodes (their types are keyed by id); rebuilt ancestors map back
    assert all(id(e) in c.expr_types for e in lifted.values())
    assert all(id(old) in c.expr_types for old in rebuilt.values())


def test_lifted_locals_cannot_clash_with_spec_names():
    """The pass names its locals ``_lift<k>`` without looking at the spec's names: that is safe because the checker
    reserves names starting with "_" for generated code."""
    from seqdsl.errors import SpecError

    spec = _LIFT_SPEC.replace("g = sigmoid(w) * u", "_lift0 = u * u\n    g = sigmoid(w) * u")
    with pytest.raises(SpecError, match="'_lift0' starts with '_', which is reserved for generated code"):
        seqdsl.loads(spec, name="lifting").checked


def test_backward_kernels_evaluate_invariant_matrix_products_once(monkeypatch):
    """LSSL's step reads ``back @ (eye(n) + dt / 2 * A)``, a matrix product of params. Its backward kernel
    evaluates it before the time loops and sums its adjoint over the sequence, so no matrix product (``_tlib.mm``)
    is left inside a loop over the steps; the gradients still match the interpreter's."""
    m, op, ref = compiled("lssl")
    src = open(op.path).read()
    kernel = src[src.index("def lssl_recurrent_bwd_kernel("):src.index("def _backward_recurrent(")]
    loop_lines, depth = [], None
    for line in kernel.splitlines():
        indent = len(line) - len(line.lstrip())
        if depth is not None and line.strip() and indent <= depth:
            depth = None
        if line.strip().startswith("for ") and depth is None:
            depth = indent
        elif depth is not None:
            loop_lines.append(line)
    assert loop_lines and not [ln for ln in loop_lines if "_tlib.mm(" in ln], "a matrix product inside a loop"
    assert "_tlib.mm(" in kernel                                   # evaluated, and differentiated, outside
    _check_kernel_gradients("lssl lifted", m, op, ref, 2, 17, monkeypatch)


# ---------------------------------------------------------------- every derivative rule of the op table
_SPEC = """
model rule(d_model = 4, n = 3, m = 5):
  streams:
    a: [n] = linear(x)
    b: [n] = linear(x)
    c: [n] = linear(x)
    d: [m] = linear(x)
  cell:
    state h: [n] = 0
    state S: [n, m] = 0
    u = a + 0.1 * h
    h <- 0.5 * h + {expr}
    S <- 0.9 * S + outer(h, d)
    o = sum(h * b) + sum(c @ S)
"""
_POSITIVE = "softplus(u) + 0.5"
RULES = {
    **{f: f"{f}(u)" for f in ("exp", "abs", "cos", "sin", "tanh", "sigmoid", "logsigmoid", "silu", "relu", "relu2",
                              "elu1", "elu", "gelu", "softplus", "real", "conj", "l2norm", "softmax", "rmsnorm",
                              "layernorm")},
    **{f: f"{f}({_POSITIVE})" for f in ("log", "sqrt", "inv_softplus")},
    "max": "max(u, b)",
    "min": "min(u, b)",
    "lerp": "lerp(u, b, sigmoid(c))",
    "sum": "sum(u * c) * b",
    "mean": "mean(u * c) * b",
    "outer_transpose": "transpose(outer(d, u)) @ d / 5",
    "matmul_vector_matrix": "u @ outer(b, c) + (c @ u) * a",
    "inv": "inv(eye(n) + 0.1 * outer(u, u)) @ b",
    "power_divide_index": "u ** 2 / (softplus(b) + 1) + (softplus(u) + 0.5) ** sigmoid(c) + u[0] * c + "
                          "(softplus(c) + 1) ** 0.5 - u ** 3 / 4",
}


# complex values: holomorphic functions (adjoint g conj(f'(z))), products and quotients of complex values,
# complex contractions and outer products, and the real-valued functions of complex values
_COMPLEX_SPEC = """
model crule(d_model = 4, n = 3, m = 5):
  params:
    lam_re: [n] ~ uniform(-1, -0.2)
    lam_im: [n] ~ uniform(0, 3)
    W_re: [m, n] ~ normal(0, 0.5)
    W_im: [m, n] ~ normal(0, 0.5)
  streams:
    a: [n] = linear(x)
    b: [n] = linear(x)
    d: [m] = linear(x)
  cell:
    state h: complex[n] = 0
    state S: complex[n, m] = 0
    lam = exp(complex(lam_re, lam_im) * 0.3)
    z = complex(a, b) + 0.1 * h
    h <- lam * h + {expr}
    S <- 0.9 * S + outer(conj(h), complex(d, d * 0.5))
    o = real(sum(h * complex(b, a))) + imag(sum(complex(W_re, W_im) @ h)) + abs(sum(z @ S))
"""
COMPLEX_RULES = {
    "exp_product": "exp(z * 0.2) * complex(b, 0.5)",
    "log_sqrt": "log(z + 2) * 0.2 + sqrt(z + 3) * 0.1",
    "quotient_abs": "z / (z * z + 3) + abs(z) * 0.1 + 1j * real(z) * 0.1",
    "conj_imag": "conj(z) * 0.3 + imag(z * z) * 0.1",
    "matmul_mean": "(conj(S) @ complex(d, d)) * 0.05 + (complex(d, d) @ complex(W_re, W_im)) * 0.05 "
                   "+ mean(z * z) * 0.1 + complex(d, real(a @ S)) @ transpose(S) * 0.05",
}


def test_the_rule_specs_cover_every_op_with_a_derivative():
    """(imag() of a real value is not defined in torch, so the interpreter cannot check its rule.)"""
    covered = " ".join(RULES.values())
    for name, op in OPS.items():
        if (op.triton_grad or op.kind in ("reduce", "outer", "transpose")) and name != "imag":
            assert f"{name}(" in covered, f"no test spec uses {name}()"


RULE_CASES = [("rule", _SPEC, expr, name) for name, expr in sorted(RULES.items())] + \
    [("crule", _COMPLEX_SPEC, expr, f"complex {name}") for name, expr in sorted(COMPLEX_RULES.items())]


@pytest.mark.parametrize("model,spec,expr,rule", RULE_CASES, ids=[c[3] for c in RULE_CASES])
def test_derivative_rule_against_the_interpreter(model, spec, expr, rule, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQDSL_CACHE_DIR", str(tmp_path))
    m = seqdsl.loads(spec.format(expr=expr), name=model)
    op = seqdsl.compile(m, backend="triton")
    assert op.module.BACKWARD == "triton", op.module.BACKWARD
    _check_kernel_gradients(f"rule {rule}", m, op, seqdsl.reference(m), 1, 7, monkeypatch)


def test_a_wrong_rule_is_caught(tmp_path, monkeypatch):
    """The checks can fail: a sigmoid rule missing its (1 - y) factor gives wrong gradients."""
    import dataclasses

    from seqdsl.codegen import ops

    monkeypatch.setitem(ops.OPS, "sigmoid", dataclasses.replace(ops.OPS["sigmoid"], triton_grad=("{g} * {y}",)))
    monkeypatch.setenv("SEQDSL_CACHE_DIR", str(tmp_path))
    m = seqdsl.loads(_SPEC.format(expr="2 * sigmoid(u)"), name="rule")    # not the spec compiled above
    op = seqdsl.compile(m, backend="triton")
    assert "* (1.0 - " not in open(op.module.__file__).read().split("def rule_recurrent_bwd_kernel")[1]
    with pytest.raises(AssertionError):
        _check_kernel_gradients("broken sigmoid", m, op, seqdsl.reference(m), 1, 7, monkeypatch)
