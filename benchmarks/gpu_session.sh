#!/usr/bin/env bash
# Every GPU check in one go, for a machine with a CUDA GPU, its own torch and triton, and no network:
#
#   OUT=/tmp/gpu bash benchmarks/gpu_session.sh
#
# 1. benchmarks/gpu_check.py: every Triton form of every example compiled for the GPU vs fp64;
# 2. the tests marked `gpu` (larger shapes, bf16), and benchmarks/gpu_diag_inv.py;
# 3. benchmarks/gpu_vs_fla.py: timings against fla and SDPA at fla's shapes, under the launch policy alone;
# 4. seqdsl's chunk and scan rows again at two shapes with the launch-time tuner (its choices in *_tuned.err).
# Each stage has a time limit (CHECK_S, TESTS_S, DIAG_S, BENCH_S, TUNE_S seconds) and writes under $OUT. Python
# packages the machine lacks (lark, pydantic, fla-core) are installed from wheels in .whl/ if present
# (pip download them where there is a network).
set -u
OUT=${OUT:-/tmp/seqdsl_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
# pyproject maps grammar/ and codegen/ into the seqdsl package; without an install, link them there
[ -e seqdsl/grammar ] || ln -s ../grammar seqdsl/grammar
[ -e seqdsl/codegen ] || ln -s ../codegen seqdsl/codegen
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi -L
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python3 -c "import fla; print('fla', fla.__version__)" || echo "fla not importable: no fla rows"

echo "== 1. gpu_check (limit ${CHECK_S:-150} s)"
# the launch policy's configurations only: timing alternatives (compiling each) would eat the stage's minutes;
# every alternative is checked under the interpreter (tests/test_triton_tune.py)
SEQDSL_AUTOTUNE=0 timeout "${CHECK_S:-150}" python3 benchmarks/gpu_check.py --workers "${WORKERS:-12}" --json "$OUT/gpu_check.json" \
    > "$OUT/gpu_check.md" 2> "$OUT/gpu_check.err"
echo "gpu_check exit $?"; tail -3 "$OUT/gpu_check.md"; grep -c FAIL "$OUT/gpu_check.md"

echo "== 2. tests marked gpu (limit ${TESTS_S:-90} s)"
# the launch policy's configurations (tests/test_triton_tune.py's gpu test compiles every tuning candidate itself)
SEQDSL_AUTOTUNE=0 timeout "${TESTS_S:-90}" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_triton_backend.py \
    tests/test_triton_tune.py \
    > "$OUT/gpu_tests.txt" 2>&1
echo "pytest exit $?"; tail -3 "$OUT/gpu_tests.txt"

echo "== 2b. in-kernel inverse and contraction variants (limit ${DIAG_S:-120} s)"
timeout "${DIAG_S:-120}" python3 benchmarks/gpu_diag_inv.py > "$OUT/gpu_diag_inv.md" 2>&1; cat "$OUT/gpu_diag_inv.md"

# 3. The launch policy's configurations at every shape (SEQDSL_AUTOTUNE=0: each kernel compiles once), against fla.
echo "== 3. gpu_vs_fla, launch policy (limit ${BENCH_S:-240} s)"
SEQDSL_AUTOTUNE=0 timeout "${BENCH_S:-240}" python3 benchmarks/gpu_vs_fla.py --shapes ${SHAPES:-2 4 0 3 1 5} --reps "${REPS:-10}" \
    --max-ms "${MAX_MS:-1000}" --backward-forms ${BACKWARD_FORMS:-chunk scan recurrent} --budget-s "$(( ${BENCH_S:-240} - 20 ))" > "$OUT/gpu_vs_fla.md" 2> "$OUT/gpu_vs_fla.err"
echo "gpu_vs_fla exit $?"
cat "$OUT/gpu_vs_fla.md"

# 4. seqdsl's rows again with the launch-time tuner (every candidate compiles and is timed on the first call at a
#    key, so fewer shapes): what it chooses, and what that gains over stage 3's rows. Choices print as they are made.
echo "== 4. gpu_vs_fla, tuned (limit ${TUNE_S:-150} s)"
SEQDSL_PRINT_TUNING=1 timeout "${TUNE_S:-150}" python3 benchmarks/gpu_vs_fla.py --shapes ${TUNE_SHAPES:-2 4} --reps "${REPS:-10}" \
    --max-ms "${MAX_MS:-1000}" --forms chunk scan --no-reference --budget-s "$(( ${TUNE_S:-150} - 20 ))" \
    > "$OUT/gpu_vs_fla_tuned.md" 2> "$OUT/gpu_vs_fla_tuned.err"
echo "gpu_vs_fla tuned exit $?"
cat "$OUT/gpu_vs_fla_tuned.md"; grep "seqdsl tuning" "$OUT/gpu_vs_fla_tuned.err" | head -40
