"""benchmarks/gpu_vs_fla.py on the CPU: its agreement rows (seqdsl against the reference kernel on the same inputs)
measure what they claim, and the script's seqdsl rows run (``--smoke``: the interpreter at a tiny shape)."""

import pathlib
import shutil
import subprocess
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_vs_fla  # noqa: E402


def _maker(scale_out: float = 1.0, grad_noise: float = 0.0, second_output: bool = False):
    """make(seed) -> (run, leaves) of y = (x @ w) * scale_out: inputs drawn from the seed, as the script's makers."""
    def make(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(4, 8, 16, generator=g, dtype=torch.bfloat16).requires_grad_(True)
        w = torch.randn(16, 16, generator=g).requires_grad_(True)
        noise = torch.randn(16, 16, generator=torch.Generator().manual_seed(99)) * grad_noise

        def run():
            y = (x.float() @ w) * scale_out + (x.float() @ noise - (x.float() @ noise).detach())
            return (y, None) if second_output else y
        return run, (x, w)
    return make


def test_agreement_is_zero_for_the_same_computation_and_reports_differences():
    o, grads = gpu_vs_fla.agreement(_maker(), _maker(second_output=True))
    assert o == "0.0e+00" and grads.startswith("0.0e+00 (input "), (o, grads)
    o, grads = gpu_vs_fla.agreement(_maker(scale_out=1.01), _maker())
    assert abs(float(o) - 0.01) < 1e-4, o
    # the outputs agree, one input's gradient does not: the gradient column names it
    o, grads = gpu_vs_fla.agreement(_maker(grad_noise=0.05), _maker())
    assert o == "0.0e+00" and float(grads.split()[0]) > 1e-2 and grads.endswith("(input 0)"), (o, grads)


def test_agreement_reports_errors_and_shape_mismatches_instead_of_raising():
    def broken(seed):
        def run():
            raise RuntimeError("out of memory\nmore")
        return run, ()
    assert gpu_vs_fla.agreement(broken, _maker()) == ("error: RuntimeError: out of memory", "-")

    def transposed(seed):
        run, leaves = _maker()(seed)
        return (lambda: run().transpose(1, 2)), leaves
    assert gpu_vs_fla.agreement(transposed, _maker())[0].startswith("shapes differ")


def test_script_says_so_without_a_gpu():
    env = {"PATH": "/usr/bin:/bin", "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_vs_fla.py")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    if not torch.cuda.is_available():
        assert "no CUDA GPU here" in out.stdout


def _smoke_rows(tmp_path, *args) -> list[list[str]]:
    """The table rows (cells) of ``gpu_vs_fla.py --smoke --reps 1 --no-backward *args`` (the interpreter, one tiny
    shape), run in a subprocess."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "SEQDSL_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_vs_fla.py"), "--smoke", "--reps", "1",
                          "--no-backward", *args], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return [line.split(" | ") for line in out.stdout.splitlines() if line.startswith("| 1, 40, 2, 16 |")]


def test_smoke_run_times_every_chunk_op(tmp_path):
    """``--smoke`` (the interpreter, one tiny shape): the script reaches every op's chunk row and SDPA's, as it would
    on a GPU up to the reference rows (fla's kernels need one)."""
    rows = _smoke_rows(tmp_path, "--forms", "chunk")
    timed = {(r[1], r[3]) for r in rows if r[2] == "seqdsl"}
    assert {(op, "chunk") for op in ("simple_gla", "gla", "deltanet", "gated_deltanet", "mamba", "hgrn")} <= timed, rows
    assert all(not r[4].startswith(("error", "not run")) for r in rows), rows
    assert any(r[1] == "attention" for r in rows)


def test_gpu_session_runs_the_stages_it_is_given(tmp_path):
    """benchmarks/gpu_session.sh runs exactly the stages in STAGES (a lease splits it in two calls) and writes one
    file per stage and one stderr log under OUT: a device call brings back at most 8 files. Run here on a copy of
    the tree (the script links grammar/ and codegen/ into seqdsl/ where no install did); without a GPU,
    gpu_vs_fla's stages say so and exit 0."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".git", ".venv", ".whl", ".seqdsl_cache", "__pycache__"))
    out = tmp_path / "out"
    env = {"PATH": f"{pathlib.Path(sys.executable).parent}:/usr/bin:/bin", "OUT": str(out), "STAGES": "1 6",
           "SEQDSL_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run(["bash", "benchmarks/gpu_session.sh"], cwd=tree, capture_output=True, text=True, env=env,
                         timeout=300)
    assert "== 1. gpu_vs_fla" in run.stdout and "== 6. gpu_vs_fla, tuned" in run.stdout, run.stdout + run.stderr
    assert "== 2." not in run.stdout and "== 5." not in run.stdout
    assert sorted(p.name for p in out.iterdir()) == ["gpu_vs_fla_focus.md", "gpu_vs_fla_tuned.md", "stderr.txt"]
    stages = [line.split()[2] for line in (out / "stderr.txt").read_text().splitlines() if line.startswith("== stage")]
    assert stages == ["1", "6"]
    for name in ("gpu_session.sh", "fetch_gpu_wheels.sh"):
        assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / name)]).returncode == 0, name
    script = (ROOT / "benchmarks/gpu_session.sh").read_text()
    files = {w for w in script.replace('"', " ").split() if w.startswith("$OUT/")}
    assert len(files) == 7, files


def test_unfused_matrix_state_scans_are_not_run_past_the_memory_cap(tmp_path):
    """A scan form that is not one fused kernel materialises every token's state in torch: GLA's [K, V] state at
    fla's B 4, T 2048, H 16, D 128 is 8.6 GB per tensor (B1 T8192 H96: 52 GB), an out-of-memory error after
    minutes of a short lease. Such rows say so instead of running (``--max-scan-gb``); fused scans always run."""
    rows = {r[1]: r[4] for r in _smoke_rows(tmp_path, "--forms", "scan", "--max-scan-gb", "0") if r[2] == "seqdsl"}
    assert set(rows) == {"simple_gla", "gla", "mamba", "hgrn"}, rows       # the delta rule has no scan form
    assert rows["simple_gla"].startswith("not run: the unfused scan") and rows["gla"].startswith("not run"), rows
    assert float(rows["mamba"]) > 0 and float(rows["hgrn"]) > 0, rows

    import seqdsl

    gla = seqdsl.compile(seqdsl.load(ROOT / "examples/gla.seq").with_hparams(heads=16, dk=128, dv=128),
                         backend="triton")
    assert abs(gpu_vs_fla.unfused_scan_gb(gla, "scan", 4, 2048) - 8.59) < 0.01
    assert gpu_vs_fla.unfused_scan_gb(gla, "chunk", 4, 2048) == 0.0
