"""benchmarks/gpu_compile_check.py: the kernels the ops launch, compiled by Triton's own CUDA compiler for an
H100 / H200 (sm_90) on this CPU-only machine, within the GPU's shared memory.

The interpreter tests execute the kernels as numpy and never meet the GPU compiler, nor the per-block
shared-memory limit a launch is refused past; this runs the GPU launch policy through both. It runs the script
in a subprocess: Triton decides between interpreted and compiled kernels when a kernel module is imported,
and conftest sets TRITON_INTERPRET=1 for every other test.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="with a GPU, benchmarks/gpu_check.py compiles and runs the kernels there")


def test_kernels_compile_for_sm90_within_its_shared_memory(tmp_path):
    out = tmp_path / "report.json"
    env = {**os.environ, "TRITON_INTERPRET": "0", "SEQDSL_CACHE_DIR": str(tmp_path / "seqdsl"),
           "TRITON_CACHE_DIR": str(tmp_path / "triton")}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_compile_check.py"), "--only", "gla", "lssl",
                          "--chunk-dims", "128", "256", "--json", str(out)],
                         env=env, capture_output=True, text=True, timeout=1500)
    assert out.exists(), run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads(out.read_text())
    compiled = {row["kernel"] for row in report["rows"]}
    # recurrent (with _tlib.inv and _tlib.mm), scan (diagonal and dense), and every chunk stage (gated, delta rule
    # and diagonal plus rank 1, both directions)
    assert {"lssl_recurrent_fwd_kernel", "lssl_recurrent_bwd_kernel", "gla_recurrent_fwd_kernel",
            "scan_diagonal_kernel", "chunk_fwd_h_kernel", "chunk_fwd_o_kernel", "chunk_intra_gk_kernel", "chunk_bwd_intra_gk_kernel",
            "chunk_bwd_dh_kernel", "chunk_bwd_dqk_kernel", "chunk_bwd_dv_kernel", "chunk_delta_wy_kernel",
            "chunk_delta_fwd_h_kernel", "chunk_delta_bwd_dhu_kernel", "chunk_delta_bwd_kernel",
            "dplr_chunk_intra_kernel", "dplr_chunk_fwd_h_kernel", "dplr_chunk_fwd_o_kernel", "dplr_chunk_bwd_dh_kernel",
            "dplr_chunk_bwd_dv_kernel", "dplr_chunk_bwd_intra_kernel", "scan_dense_reduce_kernel",
            "scan_dense_carry_kernel", "scan_dense_apply_kernel"} <= compiled, \
        sorted(compiled)
    assert report["failures"] == []
    # at K = V = 256 with fp32 inputs, the gated delta rule's backward state pass needed 288 KB at its 64-wide V tiles
    too_big = [(r["kernel"], r["case"], r["shared"]) for r in report["rows"] if r["too_much_shared"]]
    assert too_big == []
    assert run.returncode == 0, run.stdout[-2000:]


def _sass_vs_fla(tmp_path, *args) -> tuple[str, list[dict]]:
    """(stdout, the kernel rows of --json) of benchmarks/sass_vs_fla.py run with args in a subprocess."""
    out = tmp_path / "sass.json"
    env = {**os.environ, "TRITON_INTERPRET": "0", "SEQDSL_CACHE_DIR": str(tmp_path / "seqdsl"),
           "TRITON_CACHE_DIR": str(tmp_path / "triton")}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sass_vs_fla.py"), *args, "--json", str(out)],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0 and out.exists(), run.stdout[-2000:] + run.stderr[-2000:]
    return run.stdout, json.loads(out.read_text())["rows"]


def test_chunk_kernels_use_hoppers_warpgroup_mma_beside_fla(tmp_path):
    """benchmarks/sass_vs_fla.py: seqdsl's simple-GLA chunk kernels at bf16, compiled for sm_90 under the launch
    policy, use wgmma (SASS HGMMA) and do not spill, as fla's output kernel does (its first configuration)."""
    pytest.importorskip("fla")
    stdout, rows = _sass_vs_fla(tmp_path, "--ops", "simple_gla", "--dim", "64", "--fla-configs", "1")
    ours = {r["kernel"]: r for r in rows if r["owner"] == "seqdsl"}
    theirs = {r["kernel"]: r for r in rows if r["owner"] == "fla"}
    for kernel in ("chunk_fwd_h_kernel", "chunk_fwd_o_kernel", "chunk_bwd_dh_kernel", "chunk_bwd_dqk_kernel",
                   "chunk_bwd_dv_kernel"):
        assert ours[kernel]["hgmma"] > 0 and ours[kernel]["hmma"] == 0, ours[kernel]
        assert ours[kernel]["local"] == 0, ours[kernel]
    assert theirs["chunk_fwd_kernel_o"]["hgmma"] > 0, theirs      # the SASS count itself, on fla's kernel
    assert "| chunk_fwd_o_kernel |" in stdout and "| chunk_fwd_kernel_o |" in stdout


def test_delta_rule_chunk_kernels_invert_on_tensor_cores_without_spilling(tmp_path):
    """The delta rule's WY stage inverts (I + A) in 16 x 16 blocks whose products are split-precision tensor-core dots
    (``triton_lib.dot_fp32``): compiled for sm_90 through the op with bf16 at K = 128, its kernel uses wgmma only and
    does not spill (with Triton's fp32 "ieee" dots there it spilled 728 B per thread, gated 1056 B). The per-chunk
    backward reads the forward's inverse rather than inverting again, and does not spill either (at the start of
    2026-12-05's night session, inverting by 63 steps of substitution, gated: 32 B)."""
    _, rows = _sass_vs_fla(tmp_path, "--ops", "deltanet", "gated_deltanet", "--dim", "128", "--no-fla")
    rows = [r for r in rows if r["owner"] == "seqdsl"]
    checked = [r for r in rows if r["kernel"] in ("chunk_delta_wy_kernel", "chunk_delta_bwd_kernel")]
    assert len(checked) == 4, rows                         # each kernel, plain and gated
    for r in checked:
        assert r["hgmma"] > 0 and r["hmma"] == 0 and r["local"] == 0, r


def test_a_zero_initial_state_compiles_like_a_loaded_one(tmp_path):
    """The op's default path (no initial state, no final state) made a recurrent kernel's states with tl.zeros, whose
    layout the compiler chose freely: ReLiT's forward, compiled for sm_90, then converted layouts through shared memory
    at every step, 32 registers and 2536 B spilled per thread, against 128 and none with a loaded initial state. The
    declared values now come from a load that reads nothing (codegen/triton_module.reads_nothing): every ReLiT kernel
    variant, given a state or not, compiles alike and spills at most its backward's 40 B."""
    out = tmp_path / "report.json"
    env = {**os.environ, "TRITON_INTERPRET": "0", "SEQDSL_CACHE_DIR": str(tmp_path / "seqdsl"),
           "TRITON_CACHE_DIR": str(tmp_path / "triton")}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_compile_check.py"), "--only", "relit",
                          "--chunk-dims", "--json", str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0 and out.exists(), run.stdout[-2000:] + run.stderr[-2000:]
    rows = [r for r in json.loads(out.read_text())["rows"] if r["kernel"].startswith("relit_recurrent")]
    forward = [r for r in rows if r["kernel"] == "relit_recurrent_fwd_kernel"]
    assert {r["variant"]["USE_INITIAL_STATE"] for r in forward} == {True, False}, rows
    assert all(r["local"] == 0 and r["regs"] >= 64 for r in forward), [(r["variant"], r["regs"], r["local"])
                                                                       for r in forward]
    assert all(r["local"] <= 64 for r in rows), [(r["kernel"], r["variant"], r["local"]) for r in rows]


def test_launch_settings_can_be_forced(tmp_path):
    """``--launch num_warps=8`` compiles the recurrent kernels at 8 warps instead of the policy's (GLA's: 2 forward,
    4 backward at its example's dims), so what another configuration compiles to can be read without editing the policy; a malformed setting is
    a usage error, not a traceback."""
    out = tmp_path / "report.json"
    env = {**os.environ, "TRITON_INTERPRET": "0", "SEQDSL_CACHE_DIR": str(tmp_path / "seqdsl"),
           "TRITON_CACHE_DIR": str(tmp_path / "triton")}
    script = str(ROOT / "benchmarks" / "gpu_compile_check.py")
    bad = subprocess.run([sys.executable, script, "--launch", "num_warps"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "--launch takes KEY=N pairs" in bad.stderr and "Traceback" not in bad.stderr
    run = subprocess.run([sys.executable, script, "--only", "gla", "--chunk-dims", "--launch", "num_warps=8",
                          "--json", str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0 and out.exists(), run.stdout[-2000:] + run.stderr[-2000:]
    rows = [r for r in json.loads(out.read_text())["rows"] if r["kernel"].startswith("gla_recurrent")]
    assert rows and {r["num_warps"] for r in rows} == {8}, [(r["kernel"], r["num_warps"]) for r in rows]
