"""train / search / report end to end, at toy sizes: results, checkpoints, resuming, strategies, Ray."""

import io
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from seqdsl.report import report
from seqdsl.search import candidates, load_search, read_results, search
from seqdsl.train import train

TINY = {"d_model": 16}
TASK = {"seq_len": 16, "num_kv_pairs": 2, "vocab_size": 32}


def test_train_writes_result_and_checkpoint(tmp_path):
    r = train(str(ROOT / "examples/stacks/gla.seq"), "mqar", steps=3, batch_size=4, out_dir=str(tmp_path),
              task_settings=TASK, stack_hparams=TINY, progress=False)
    assert 0.0 <= r["eval_accuracy"] <= 1.0 and r["num_parameters"] > 0 and r["state_size"] > 0
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["eval_accuracy"] == r["eval_accuracy"] and (tmp_path / "checkpoint.pt").exists()
    assert [row[0] for row in r["curve"]] == [1, 2, 3] and r["curve"][-1][1] == round(r["train_loss"], 4)


def test_train_records_the_loss_curve_at_every_fiftieth_step(tmp_path, capsys):
    r = train(str(ROOT / "examples/stacks/gla.seq"), "mqar", steps=100, batch_size=2, task_settings=TASK,
              stack_hparams=TINY, progress="  run x")
    assert [row[0] for row in r["curve"]] == list(range(2, 101, 2))
    assert all(len(row) == 3 and 0.0 <= row[2] <= 1.0 for row in r["curve"])
    lines = capsys.readouterr().err.splitlines()     # a labelled line at every tenth of the steps
    assert [line.split()[2] for line in lines] == [f"{s}/100" for s in range(10, 101, 10)], lines
    assert all(line.startswith("  run x ") and "ETA" in line for line in lines)


def test_train_cli_shows_progress(tmp_path):
    out = subprocess.run([sys.executable, "-m", "seqdsl", "train", "examples/stacks/transformer.seq", "--task",
                          "parity", "--steps", "4", "--batch-size", "4", "--set", "seq_len=12", "-D", "d_model=16",
                          "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "loss" in out.stderr and "tok/s" in out.stderr and "ETA" in out.stderr
    assert "eval_accuracy" in out.stdout


def test_train_rejects_bad_task_settings(tmp_path):
    out = subprocess.run([sys.executable, "-m", "seqdsl", "train", "examples/stacks/gla.seq", "--task", "mqar",
                          "--set", "nope=3", "--steps", "1"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "nope" in out.stderr and "Traceback" not in out.stderr


def write_search(tmp_path, strategy='kind = "grid"', extra=""):
    f = tmp_path / "s.toml"
    f.write_text(f'''name = "t"
base = "{ROOT / 'examples/stacks/gla.seq'}"
task = "mqar"
task_settings = {{ seq_len = 16, num_kv_pairs = 2, vocab_size = 32 }}
steps = 2
batch_size = 4
[space]
"hparams.d_model" = [16]
"blocks.mixer" = ['cell("../gla.seq", heads = 2, dk = 8, dv = 8)', 'attention(heads = 2)']
{extra}
[strategy]
{strategy}
''')
    return str(f)


def test_grid_search_saves_resolved_specs_and_resumes(tmp_path):
    path = write_search(tmp_path)
    out = str(tmp_path / "out")
    log = io.StringIO()
    results = search(path, out=out, workers=1, log=log)
    rows = read_results(results)
    assert len(rows) == 2 and all("eval_accuracy" in r for r in rows)
    for r in rows:   # the log names each run before it starts and when it finishes
        assert f"  run {r['id'][:8]}: " in log.getvalue() and f"run {r['id'][:8]} {r['candidate']} ->" in log.getvalue()
    for r in rows:
        spec = open(r["spec_path"]).read()
        assert "stack gla_lm(" in spec and os.path.isabs(spec.split('cell("')[1].split('"')[0]) \
            if 'cell("' in spec else "attention" in spec
    # a killed search: the last line cut in half; rerunning redoes only that run
    text = open(results).read().splitlines()
    with open(results, "w") as f:
        f.write(text[0] + "\n" + text[1][: len(text[1]) // 2])
    search(path, out=out, workers=1)
    rows = read_results(results)
    assert len(rows) == 2 and {r["id"] for r in rows} == {json.loads(line)["id"] for line in text}
    search(path, out=out, workers=1)                    # nothing left to do
    assert len(read_results(results)) == 2


def test_random_and_halving_strategies(tmp_path):
    s = load_search(write_search(tmp_path, 'kind = "random"\nsamples = 3', 'lr = [0.001, 0.003]'))
    assert len(candidates(s)) == 3
    path = write_search(tmp_path, 'kind = "halving"\nrungs = [1, 2]\neta = 2')
    rows = read_results(search(path, out=str(tmp_path / "h"), workers=1))
    assert sorted(r["rung"] for r in rows) == [0, 0, 1]
    assert all(r["train"]["steps"] == (1 if r["rung"] == 0 else 2) for r in rows)


def test_local_pool_of_workers(tmp_path):
    rows = read_results(search(write_search(tmp_path), out=str(tmp_path / "p"), workers=2))
    assert len(rows) == 2 and not any("error" in r for r in rows)


def test_ray_executor_on_a_local_instance(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'seqdsl[ray]')")
    try:
        rows = read_results(search(write_search(tmp_path), out=str(tmp_path / "r"), workers=2, executor="ray"))
    finally:
        ray.shutdown()
    assert len(rows) == 2 and not any("error" in r for r in rows)


def test_report_leaderboard_and_plots(tmp_path):
    results = search(write_search(tmp_path), out=str(tmp_path / "out"), workers=1)
    md, term, pngs = report(results, out=str(tmp_path / "rep"))
    assert md.startswith("| task | rank | model |") and md.count("| mqar |") == 2
    assert "mixer=" in term and len(pngs) == 2 and all(os.path.getsize(p) > 1000 for p in pngs)


def test_report_pools_seeds_of_one_configuration(tmp_path):
    """Three seeds of one configuration are one row (mean, worst and best seed); a different lr or step count
    is its own row; another task setting is its own ranking; failed runs are left out."""
    def line(seed, acc, lr=1e-3, steps=100):
        return {"task": "mqar", "candidate": {"blocks.mixer": "gla"}, "stack": "s", "task_settings": {"seq_len": 64},
                "steps": steps, "lr": lr, "batch_size": 8, "schedule": "constant", "seed": seed,
                "eval_accuracy": acc, "num_parameters": 10, "state_size": 5, "seconds": 2.0 * (seed + 1)}
    longer = {**line(0, 0.99), "task_settings": {"seq_len": 128}}     # another setting: its own ranking
    rows = [line(0, 0.5), line(1, 0.9), line(2, 0.7), line(0, 0.95, lr=3e-3), line(0, 0.2, steps=50), longer,
            {"task": "mqar", "candidate": {"blocks.mixer": "gla"}, "seed": 3, "error": "boom"}]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    md, term, _ = report(str(path), out=str(tmp_path / "rep"), make_plots=False)
    assert md.count("| mqar seq_len=128 | 1 | mixer=gla | 0.990 (accuracy) |") == 1
    lines = [ln for ln in md.splitlines() if ln.startswith("| mqar seq_len=64 |")]
    assert len(lines) == 3
    assert lines[0].startswith("| mqar seq_len=64 | 1 | mixer=gla | 0.950 (accuracy) | 1 |") and "| 0.003 |" in lines[0]
    assert lines[1].startswith("| mqar seq_len=64 | 2 | mixer=gla | 0.700 [0.500, 0.900] (accuracy) | 3 |")
    assert lines[1].endswith("| 100 | 0.001 | 4 |")          # mean of 2, 4 and 6 seconds
    assert lines[2].startswith("| mqar seq_len=64 | 3 | mixer=gla | 0.200 (accuracy) | 1 |") and "| 50 |" in lines[2]
    assert "  0.700     3 " in term


def test_bad_search_file_is_a_clear_error(tmp_path):
    import seqdsl

    f = tmp_path / "bad.toml"
    f.write_text('base = "x.seq"\ntask = "mqar"\n[space]\n"wat.x" = [1]\n')
    with pytest.raises(seqdsl.SpecError, match="unknown edit 'wat.x'"):
        load_search(str(f))


def test_the_task_is_an_edit_with_its_own_settings(tmp_path):
    f = tmp_path / "tasks.toml"
    f.write_text(f'''base = "{ROOT / 'examples/stacks/gla.seq'}"
steps = 2
batch_size = 4
[task_settings.mqar]
seq_len = 16
num_kv_pairs = 2
vocab_size = 32
[space]
"hparams.d_model" = [16]
task = ["mqar", "compression"]
"blocks.mixer" = ['attention(heads = 2)']
''')
    rows = read_results(search(str(f), out=str(tmp_path / "out"), workers=1))
    assert sorted(r["task"] for r in rows) == ["compression", "mqar"]
    by_task = {r["task"]: r for r in rows}
    assert by_task["mqar"]["task_settings"] == {"seq_len": 16, "num_kv_pairs": 2, "vocab_size": 32}
    assert by_task["compression"]["task_settings"] == {}
    bad = tmp_path / "bad_task.toml"
    bad.write_text('base = "x.seq"\n[space]\ntask = ["mqar", "sorting"]\n')
    import seqdsl

    with pytest.raises(seqdsl.SpecError, match=r"space.task: unknown task\(s\) \['sorting'\]"):
        load_search(str(bad))


def test_constant_schedule_is_recorded_and_bad_schedules_are_clear_errors(tmp_path):
    import seqdsl

    path = write_search(tmp_path)
    text = open(path).read().replace('batch_size = 4\n', 'batch_size = 4\nschedule = "constant"\n')
    open(path, "w").write(text)
    rows = read_results(search(path, out=str(tmp_path / "c"), workers=1))
    assert rows and all(r["schedule"] == "constant" and r["train"]["schedule"] == "constant" for r in rows)
    open(path, "w").write(text.replace('"constant"', '"linear"'))
    with pytest.raises(seqdsl.SpecError, match="schedule must be one of cosine, constant; got 'linear'"):
        load_search(path)


@pytest.mark.parametrize("path", sorted((ROOT / "examples/searches").glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_search_file_resolves_to_stacks_that_check(path):
    """RESULTS.md gives these files as the commands that reproduce its numbers: each must still load, and
    every candidate's resolved stack (its cells included) must pass the checker."""
    from seqdsl.api import loads
    from seqdsl.search import resolve

    s = load_search(str(path))
    cands = candidates(s)
    assert cands, path
    for cand in cands:
        spec_text, _ = resolve(s, cand)
        loads(spec_text, path=f"{path.stem}:{cand.as_dict()}")
