"""Parsing, printing, JSON round-trips, validation results and the analysis of every example."""

import json

import pytest
from conftest import EXAMPLES

import seqdsl
from seqdsl import ir
from seqdsl.frontend import parse
from seqdsl.printer import print_model


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_print_then_parse_is_identity(path):
    m = parse(path.read_text(), str(path))
    text = print_model(m)
    again = parse(text)
    assert again == m and hash(again) == hash(m)
    assert print_model(again) == text            # canonical text is a fixed point


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_json_round_trip_keeps_spans(path):
    m = parse(path.read_text(), str(path))
    back = ir.Model.model_validate_json(m.model_dump_json())
    assert back == m
    assert back.streams[0].span == m.streams[0].span if m.streams else True


def test_equality_ignores_spans_but_not_content():
    a = parse("model m(d_model = 4):\n  streams:\n    q: [d_model] = x\n  cell:\n    state S: [d_model] = 0\n"
              "    S <- S + q\n    o = S\n")
    b = parse("\n\nmodel m(d_model = 4):\n  streams:\n      q: [d_model] = x\n  cell:\n      state S: [d_model] = 0\n"
              "      S <- S + q\n      o = S\n")
    c = parse("model m(d_model = 4):\n  streams:\n    q: [d_model] = x\n  cell:\n    state S: [d_model] = 0\n"
              "    S <- S - q\n    o = S\n")
    assert a == b and a.span != b.span
    assert a != c


def test_ir_is_frozen():
    m = parse(EXAMPLES[0].read_text())
    with pytest.raises(Exception):
        m.name = "other"


def test_operator_precedence_and_power_associativity():
    m = parse("model m(d_model = 4):\n  streams:\n    q: [d_model] = -x ** 2 ** 3 * 2 + 1\n")
    e = m.streams[0].value
    # ((-(x ** (2 ** 3))) * 2) + 1
    assert e.op == "+" and e.left.op == "*"
    neg = e.left.left
    assert isinstance(neg, ir.Unary) and neg.operand.op == "**" and neg.operand.right.op == "**"
    assert print_model(m).splitlines()[2].strip() == "q: [d_model] = -x ** 2 ** 3 * 2 + 1"


def test_numeric_literals():
    m = parse("model m(a = 1e-3, b = .5, c = 2.5E+2, d = 7):\n  dims:\n    e = d\n")
    assert [h.default.value for h in m.hparams] == [1e-3, 0.5, 250.0, 7]
    assert isinstance(m.hparams[3].default.value, int)


EXPECTED_CLASSES = {
    # example: (class, forms, data_dependent, complex)
    "linear_attention": ("identity", ("recurrent", "scan", "chunk"), False, False),
    "retnet": ("scalar", ("recurrent", "scan", "chunk"), False, False),
    "gla": ("diagonal", ("recurrent", "scan", "chunk"), True, False),
    "mamba": ("diagonal", ("recurrent", "scan", "chunk"), True, False),
    "mamba2": ("scalar", ("recurrent", "scan", "chunk"), True, False),
    "deltanet": ("lowrank", ("recurrent", "chunk"), True, False),
    "gated_deltanet": ("lowrank", ("recurrent", "chunk"), True, False),
    "lru": ("diagonal", ("recurrent", "scan", "chunk"), False, True),
    "s4d": ("diagonal", ("recurrent", "scan", "chunk"), False, True),
    "lstm": ("nonlinear", ("recurrent",), True, False),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_CLASSES))
def test_examples_classify_as_their_paper_says(name):
    a = seqdsl.load(f"examples/{name}.seq").analysis()
    cls, forms, dd, cplx = EXPECTED_CLASSES[name]
    assert (a.cls, a.forms, a.data_dependent, a.complex) == (cls, forms, dd, cplx)
    for form in ("recurrent", "scan", "chunk"):
        assert (form in a.forms) != (form in a.not_forms)


def test_every_example_is_listed_with_an_expected_class():
    assert {p.stem for p in EXAMPLES} >= set(EXPECTED_CLASSES)


def test_diagonal_axis_and_lowrank_details():
    gla = seqdsl.load("examples/gla.seq").analysis()
    assert gla.states[0].axes == ("dk",)
    gdn = seqdsl.load("examples/gated_deltanet.seq").analysis().states[0]
    assert (gdn.base, gdn.rank) == ("scalar", 1)
    dn = seqdsl.load("examples/deltanet.seq").analysis().states[0]
    assert (dn.base, dn.rank) == ("identity", 1)


CLASSIFY_CASES = {
    # update of S: [n, m] (with a: [n], b: [m], c: [n, m], M: [n, n], s: scalar) -> class, axes, rank
    "S <- S + outer(a, b)": ("identity", (), 0),
    "S <- s * S + outer(a, b)": ("scalar", (), 0),
    "S <- exp(a) * S": ("diagonal", ("n",), 0),
    "S <- exp(b) * S": ("diagonal", ("m",), 0),
    "S <- c * S": ("diagonal", ("n", "m"), 0),
    "S <- M @ S + outer(a, b)": ("dense", (), 0),
    "S <- S - outer(a, a @ S)": ("lowrank", (), 1),
    "S <- (S - outer(a, a @ S)) + outer(a, b)\n    S <- S - outer(a, a @ S)": ("lowrank", (), 2),
    "S <- exp(a) * S - outer(a, a @ S)": ("lowrank", ("n",), 1),
    "S <- tanh(S)": ("nonlinear", (), 0),
    "S <- S * S": ("nonlinear", (), 0),
    "S <- max(S, c)": ("nonlinear", (), 0),
    "S <- outer(a, b)": ("scalar", (), 0),
}


@pytest.mark.parametrize("update", sorted(CLASSIFY_CASES))
def test_classification_of_single_updates(update):
    spec = ("model t(d_model = 4, n = 3, m = 5):\n  streams:\n    a: [n] = linear(x)\n    b: [m] = linear(x)\n"
            "    c: [n, m] = linear(x)\n    s: [] = sigmoid(linear(x))\n  params:\n    M: [n, n] ~ normal(0, 1)\n"
            f"  cell:\n    state S: [n, m] = 0\n    {update}\n    o = a @ S\n")
    state = seqdsl.loads(spec).analysis().states[0]
    assert (state.cls, state.axes, state.rank) == CLASSIFY_CASES[update]


def test_fixed_versus_data_dependent_decay():
    base = ("model t(d_model = 4, n = 3):\n  params:\n    lam: [n] ~ uniform(0, 1)\n  streams:\n    a: [n] = linear(x)\n"
            "  cell:\n    state h: [n] = 0\n    h <- {coef} * h + a\n    o = h\n")
    assert not seqdsl.loads(base.format(coef="lam")).analysis().states[0].data_dependent
    assert seqdsl.loads(base.format(coef="sigmoid(a)")).analysis().states[0].data_dependent


def test_hoisted_cell_locals_are_token_parallel():
    spec = ("model t(d_model = 4, n = 3):\n  streams:\n    a: [n] = linear(x)\n  cell:\n    state h: [n] = 0\n"
            "    g = sigmoid(a)\n    h <- g * h + a\n    o = h * 2\n")
    a = seqdsl.loads(spec).analysis()
    assert "g" in a.hoisted and "o" in a.core


def test_graph_has_a_node_per_definition_and_edges_per_read():
    from seqdsl.graph import build_graph, to_json

    m = seqdsl.load("examples/gated_deltanet.seq")
    g = build_graph(m.checked)
    assert g.has_edge("stream:k", "update:S#2") and g.has_edge("update:S#1", "update:S#2")
    assert g.has_edge("update:S#2", "state:S") and g.nodes["stream:q"]["hoisted"]
    assert not g.nodes["local:o"]["hoisted"]
    data = to_json(g)
    assert json.loads(json.dumps(data)) == data


def test_hyperparameter_overrides_revalidate():
    m = seqdsl.load("examples/mamba2.seq", d_model=32)
    assert m.checked.dim_sizes["heads"] == 4
    with pytest.raises(seqdsl.SpecError, match="not divisible"):
        seqdsl.load("examples/mamba2.seq", headdim=7)
    with pytest.raises(seqdsl.SpecError, match="unknown hyper-parameter"):
        seqdsl.load("examples/gla.seq", nope=3)


def test_implicit_parameters_are_named_after_their_owner():
    c = seqdsl.load("examples/gla.seq").checked
    names = [p.name for p in c.implicit]
    assert names[:3] == ["q_proj", "k_proj", "v_proj"]
    assert {"gk_lora_a", "gk_lora_b", "gk_proj_bias", "y_norm", "y_proj", "y_proj1"} <= set(names)


def test_shape_hint_comes_from_context_when_the_sibling_is_a_scalar():
    # logsigmoid(lowrank(x, r)) / 16: the scalar 16 must not make the projection a scalar
    c = seqdsl.load("examples/gla.seq").checked
    lora_b = next(p for p in c.implicit if p.name == "gk_lora_b")
    assert lora_b.groups[0] == ("heads", "dk")
