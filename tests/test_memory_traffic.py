"""benchmarks/memory_traffic.py: with bf16 inputs the chunk forms move (almost) nothing outside their kernels.

The script counts the bytes every aten op of an op call reads and writes, with the Triton launches replaced by
nothing; it runs in a subprocess, as Triton decides between interpreted and compiled kernels when a kernel
module is imported (conftest sets TRITON_INTERPRET=1 for every other test). Before the chunk form read bf16
inputs as given, forward and backward made 32 passes over q (fp32 copies of q, k, v, the scaling of q, the
casts of o, do and the gradients); now what is left is the initial state and the gate's reduction. With
``--fla`` the script counts fla's chunk functions the same way, and the delta rule's kernels are compared with fla's.
"""

import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the script refuses to run beside a GPU")


def _table(tmp_path, script: str, *args) -> tuple[str, list[list[str]]]:
    """(stdout, the cells of its table rows) of ``benchmarks/<script>`` run with args in a subprocess."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "SEQDSL_CACHE_DIR": str(tmp_path / "seqdsl")}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return run.stdout, [[c.strip() for c in line.split("|")[1:-1]] for line in run.stdout.splitlines()
                        if line.startswith("| ") and not line.startswith("| B, T")]


def test_chunk_forms_make_no_fp32_copies_of_bf16_inputs(tmp_path):
    out, rows = _table(tmp_path, "memory_traffic.py", "--shapes", "2,2048,4,64", "--backward", "--ops", "simple_gla",
                       "deltanet", "gated_deltanet")
    passes = {cells[1]: float(cells[4]) for cells in rows}
    assert set(passes) == {"simple_gla", "deltanet", "gated_deltanet"}, out
    assert all(p < 1.0 for p in passes.values()), passes        # measured 0.1-0.2; d74a927: 32.3


def _mamba_passes(tmp_path, *flags) -> float:
    out, rows = _table(tmp_path, "memory_traffic.py", "--shapes", "1,2048,16,64", "--ops", "mamba", *flags)
    assert len(rows) == 1 and rows[0][1] == "mamba" and rows[0][2] == "scan", out
    return float(rows[0][4])


def test_mamba_scan_form_materialises_no_per_state_tensors(tmp_path):
    """Mamba's scan form is one fused kernel: a, b and the readout C . h are computed in registers, so nothing of
    [B, T, d_inner, n] is made in torch (the unfused form made 1.05 GB of it in the forward: 250 passes over u).
    Its backward is a fused kernel too (the adjoint recurrence scanned per block); what torch does there is sum
    the per-channel gradient rows of B and C (73 passes over u; the unfused form's backward: about 1500)."""
    forward = _mamba_passes(tmp_path)
    assert forward < 1.0, forward                      # measured 0.0
    both = _mamba_passes(tmp_path, "--backward")
    assert both < 100.0, both                          # measured 73.2


def test_host_overhead_script_times_seqdsl_and_fla_calls(tmp_path):
    """benchmarks/host_overhead.py (the host time of one call, launches replaced by nothing) runs and gives a row
    for seqdsl's op and for fla's function; the times themselves are machine-dependent and not checked."""
    out, rows = _table(tmp_path, "host_overhead.py", "--ops", "simple_gla", "--reps", "5", "--backward")
    rows = [r for r in rows if r[0] == "simple_gla"]
    assert [r[1] for r in rows] == ["seqdsl op(mode='chunk')", "fla chunk_simple_gla"], out
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows), out


def test_delta_rule_chunk_kernels_are_handed_fewer_bytes_than_flas(tmp_path):
    """``--fla`` counts fla's chunk functions the same way (launches replaced by nothing, fla imported as on an
    H100). The delta rule's chunk form keeps W, U, v_new and v_new's gradient in bf16 for bf16 inputs, as fla
    does: with them in fp32 (before 2026-12-05, late), the gated delta rule's forward kernels were handed about
    0.043 GB at this shape against fla's 0.036 (the forward also stores each chunk's (I + A)^-1 for the backward, as
    fla does: 0.0016 GB here). fla recomputes the forward's states in its backward; ours keeps
    them, so forward and backward together move less."""
    pytest.importorskip("fla")
    out, rows = _table(tmp_path, "memory_traffic.py", "--shapes", "2,2048,4,64", "--backward", "--fla", "--ops",
                       "deltanet", "gated_deltanet")
    total = {cells[1]: float(cells[6]) for cells in rows}
    forward = {cells[1]: float(cells[7]) for cells in rows}
    assert set(forward) == {"deltanet", "deltanet (fla)", "gated_deltanet", "gated_deltanet (fla)"}, out
    for name in ("deltanet", "gated_deltanet"):
        assert forward[name] <= forward[f"{name} (fla)"], (name, forward)      # measured 0.0318 vs 0.0441, 0.0321 vs 0.0361
        assert total[name] < total[f"{name} (fla)"], (name, total)             # measured 0.070 vs 0.124, 0.070 vs 0.117


def test_simple_gla_forward_kernels_are_handed_no_more_bytes_than_flas(tmp_path):
    """With no initial state given and the final state not asked for (the op's defaults), the chunk kernels neither
    read a zero initial state nor store the final state, as fla's with initial_state=None, output_final_state=False,
    and the op makes no [N, H, K, V] zeros for them (one broadcast number). Before (2026-12-05), the forward was handed
    2.5-3 % more bytes than fla's at fla's shapes: the op's zeros read as the initial state, the final state stored."""
    pytest.importorskip("fla")
    out, rows = _table(tmp_path, "memory_traffic.py", "--shapes", "2,2048,4,64", "--fla", "--ops", "simple_gla")
    forward = {cells[1]: float(cells[7]) for cells in rows}
    glue = {cells[1]: float(cells[3]) for cells in rows}
    assert set(forward) == {"simple_gla", "simple_gla (fla)"}, out
    assert forward["simple_gla"] <= forward["simple_gla (fla)"], forward
    assert glue["simple_gla"] == 0.0, glue


def test_hgrn_scan_kernels_are_handed_no_more_bytes_than_flas_fused_recurrent(tmp_path):
    """HGRN's recurrence (gpu_vs_fla's hgrn row) as the generated fused scan: forward and backward kernels are handed
    no more bytes than fla's fused_recurrent_hgrn, and no torch glue runs around them (fla's casts its gradients:
    6 passes over the input). The state is one number per channel, so the unasked final state that the fused kernels
    no longer store (2026-12-06) changed these bytes by 0.1 %. The difference is in the backward: fla's kernel is
    handed g, its output and do, and writes fp32 gradients that torch then casts (0.0147 GB and 0.013 GB of glue here,
    against our kernel's 0.0107 GB)."""
    pytest.importorskip("fla")
    out, rows = _table(tmp_path, "memory_traffic.py", "--shapes", "2,2048,4,64", "--backward", "--fla", "--ops", "hgrn")
    by = {(cells[1], cells[2]): cells for cells in rows}
    assert set(by) == {("hgrn", "scan"), ("hgrn (fla)", "fused_recurrent"), ("hgrn (fla)", "chunk")}, out
    ours, fla = by["hgrn", "scan"], by["hgrn (fla)", "fused_recurrent"]
    assert float(ours[7]) <= float(fla[7]), (ours, fla)          # forward: measured 0.0063 vs 0.0063
    assert float(ours[6]) < float(fla[6]), (ours, fla)           # forward + backward: measured 0.0170 vs 0.0210
    assert float(ours[3]) == 0.0, ours
