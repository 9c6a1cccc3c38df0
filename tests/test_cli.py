"""The command line: help, check/explain/graph/compile, exit codes, and no torch import for quick commands."""

import json
import subprocess
import sys

import pytest
from conftest import EXAMPLES, ROOT

from seqdsl.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "seqdsl", *args], capture_output=True, text=True, cwd=ROOT)


def test_help_documents_every_command():
    out = run("--help").stdout
    for cmd in ("check", "explain", "graph", "compile"):
        assert cmd in out
        assert run(cmd, "--help").returncode == 0


def test_check_all_examples(capsys):
    assert main(["check", *map(str, EXAMPLES)]) == 0
    assert capsys.readouterr().out.count("ok ") == len(EXAMPLES)


def test_bad_spec_prints_location_line_and_caret_and_exits_2(tmp_path):
    bad = tmp_path / "bad.seq"
    bad.write_text("model m(d_model = 4):\n  streams:\n    q: [d_model] = linear(y)\n")
    r = run("check", str(bad))
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert lines[0] == f"{bad}:3:27: unknown name 'y'"
    assert lines[1].strip() == "q: [d_model] = linear(y)"
    assert lines[2].index("^") == lines[1].index("y)")
    assert "Traceback" not in r.stderr


def test_missing_file_is_a_clean_error():
    r = run("explain", "no/such/file.seq")
    assert r.returncode == 2 and "cannot read the spec" in r.stderr and "Traceback" not in r.stderr


def test_explain_reports_class_forms_sizes_and_flops(capsys):
    assert main(["explain", "examples/gated_deltanet.seq"]) == 0
    out = capsys.readouterr().out
    assert "transition class: lowrank" in out and "hoisted (token-parallel): " in out
    assert "recurrent yes" in out and "chunk     yes" in out and "scan      no" in out
    assert "16,384 per sequence and layer" in out and "FLOPs/token" in out


def test_explain_json_and_hparam_override(capsys):
    assert main(["explain", "examples/gla.seq", "--json", "-D", "heads=2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["class"] == "diagonal" and data["state_size_per_token"] == 2 * 32 * 64


@pytest.mark.parametrize("fmt", ["dot", "json"])
def test_graph_formats(tmp_path, fmt):
    out = tmp_path / f"g.{fmt}"
    assert main(["graph", "examples/gla.seq", "--format", fmt, "-o", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("digraph") if fmt == "dot" else "nodes" in json.loads(text)


def test_compile_writes_ir_graph_and_analysis(tmp_path):
    assert main(["compile", "examples/retnet.seq", "-o", str(tmp_path), "--backend", "none"]) == 0
    from seqdsl import ir

    m = ir.Model.model_validate_json((tmp_path / "retnet.ir.json").read_text())
    assert m.name == "retnet"
    assert json.loads((tmp_path / "retnet.analysis.json").read_text())["class"] == "scalar"


def test_quick_commands_do_not_import_torch():
    code = ("import sys; from seqdsl.cli import main; main(['explain', 'examples/gla.seq']); "
            "main(['graph', 'examples/gla.seq']); main(['check', 'examples/gla.seq']); "
            "assert 'torch' not in sys.modules and 'triton' not in sys.modules, 'imported torch'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_compile_writes_the_generated_module(tmp_path):
    assert main(["compile", "examples/gla.seq", "-o", str(tmp_path), "-D", "heads=2"]) == 0
    source = (tmp_path / "gla_torch.py").read_text()
    assert "def chunk(" in source and "def streams(" in source and "do not edit" in source
    compile(source, "gla_torch.py", "exec")     # it is valid Python


def test_zoo_table_has_model_and_stack_rows_with_test_outcomes(tmp_path):
    """`seqdsl zoo`: one row per model spec and per survey/segment stack spec, with recorded outcomes."""
    import shutil

    from seqdsl.zoo import render

    ex = tmp_path / "examples"
    (ex / "stacks" / "survey").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "gla.seq", ex / "gla.seq")
    (ex / "stacks" / "survey" / "tiny_hybrid.seq").write_text(
        "# Tiny hybrid (Someone 2024, arXiv 0000.00000). Survey §9, record M99.\n"
        "# oracle: a loop written in the test\n"
        "stack tiny_hybrid(d_model = 16, vocab = 8):\n  blocks:\n    mixer = cell(\"../../gla.seq\", heads = 2)\n"
        "    mlp = swiglu(expand = 2)\n  layers = [mixer, mlp]\n")
    results = {"tests/test_survey_blocks.py::test_block[tiny_hybrid]": "passed",
               "tests/zoo/test_zoo_gated.py::test_x[gla]": "failed"}
    text = render(ex, results, "r.json")
    gla_row = next(line for line in text.splitlines() if "[gla](gla.seq)" in line)
    stack_row = next(line for line in text.splitlines() if "tiny_hybrid" in line)
    assert "**1 failing** / 1" in gla_row and "chunk" in gla_row
    assert stack_row.startswith("| M99 | [tiny_hybrid](stacks/survey/tiny_hybrid.seq) | Tiny hybrid")
    assert "stack: cell, swiglu" in stack_row and "a loop written in the test" in stack_row
    assert "test_survey_blocks.py::test_block" in stack_row and "1/1 pass" in stack_row


def test_the_cache_key_covers_every_generator_file(monkeypatch):
    """Generated modules are cached under a hash of what determines them, the generators' source included: an
    edit to any file of the codegen package (triton_backward.py and passthrough.py too) must name new files,
    or a stale kernel would be imported."""
    import pathlib

    from seqdsl import cache

    import seqdsl

    checked = seqdsl.load(ROOT / "examples" / "gla.seq").checked
    base = cache.spec_hash(checked, "triton")
    real = pathlib.Path.read_bytes
    for name in ("triton_backward.py", "passthrough.py", "torch_module.py", "plan.py"):
        with monkeypatch.context() as mp:
            mp.setattr(pathlib.Path, "read_bytes", lambda self, _n=name: real(self) + (b"#" if self.name == _n else b""))
            assert cache.spec_hash(checked, "triton") != base, name
    assert cache.spec_hash(checked, "triton") == base


def test_explain_says_which_admitted_forms_are_not_generated(capsys, tmp_path):
    """explain lists the forms seqdsl.compile generates: a delta rule decayed along its value axis is in a class that
    admits a chunk form no backend generates, and a value-gated state has a torch chunk form the Triton kernels lack.
    explain used to print 'chunk yes' from the class alone (RWKV-7's, before the DPLR chunk form existed)."""
    spec = tmp_path / "value_delta.seq"
    spec.write_text("""model value_delta(d_model = 8, heads = 2, dk = 4, dv = 6):
  streams:
    k: [heads, dk] = l2norm(linear(x))
    v: [heads, dv] = linear(x)
    gv: [heads, dv] = logsigmoid(linear(x))
  cell over heads:
    state S: [dk, dv] = 0
    S <- exp(gv) * S
    S <- S + outer(k, v - k @ S)
    o = k @ S
  out:
    y = linear(o)
""")
    assert main(["explain", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "chunk     no    the lowrank class admits it; not generated yet" in out, out
    assert main(["explain", str(spec), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "chunk" in data["forms"] and data["generated_forms"] == ["recurrent"] and "chunk" in data["not_generated"]
    assert main(["explain", "examples/rwkv7.seq"]) == 0
    out = capsys.readouterr().out
    assert "chunk     yes" in out and "not in the Triton backend" not in out
    spec = tmp_path / "value_gate.seq"
    spec.write_text("""model value_gate(d_model = 8, heads = 2, dk = 4, dv = 6):
  streams:
    q: [heads, dk] = linear(x)
    k: [heads, dk] = linear(x)
    v: [heads, dv] = linear(x)
    gv: [heads, dv] = logsigmoid(linear(x))
  cell over heads:
    state S: [dk, dv] = 0
    S <- exp(gv) * S + outer(k, v)
    o = q @ S
  out:
    y = linear(o)
""")
    assert main(["explain", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "chunk     yes" in out and "(not in the Triton backend: the state S decays along its value axis" in out
