#!/usr/bin/env bash
# Every GPU check in one go, for a machine with a CUDA GPU, its own torch and triton, and no network:
#
#   OUT=/tmp/gpu bash benchmarks/gpu_session.sh                   # every stage (about 13 minutes)
#   OUT=/tmp/gpu STAGES="1 2 3 4" bash benchmarks/gpu_session.sh  # a lent machine: under 10 minutes a call,
#   OUT=/tmp/gpu STAGES="5 6" bash benchmarks/gpu_session.sh      # then the rest on the same warm machine
#
# The stages, most decisive first (a lease is short, and a stage cut off loses only what comes after it):
# 1. benchmarks/gpu_vs_fla.py at two of fla's shapes (B4 T2048 H16 D128, B8 T1024 H8 D64): the chunk and scan forms
#    against fla (and mamba_ssm where installed), each with a row of how far our results are from theirs;
# 2. benchmarks/gpu_check.py: every Triton form of every example compiled for the GPU vs fp64;
# 3. the tests marked `gpu` (larger shapes, bf16);
# 4. benchmarks/gpu_diag_inv.py (the in-kernel inverse and contraction variants);
# 5. gpu_vs_fla.py at every shape and form (the recurrent forms too), under the launch policy alone;
# 6. seqdsl's chunk and scan rows again at the two shapes with the launch-time tuner (its choices printed).
# Each stage has a time limit (FOCUS_S, CHECK_S, TESTS_S, DIAG_S, BENCH_S, TUNE_S seconds) and writes one file under
# $OUT; every stage's stderr goes to $OUT/stderr.txt (a device call brings back at most 8 files: these are 7).
# Python packages the machine lacks (lark, pydantic, fla-core) are installed from wheels in .whl/ if present: make
# them here with `bash benchmarks/fetch_gpu_wheels.sh` (where pip reaches PyPI) and name .whl in the device call's carry.
set -u
OUT=${OUT:-/tmp/seqdsl_gpu}
STAGES=" ${STAGES:-1 2 3 4 5 6} "
mkdir -p "$OUT"
ERR="$OUT/stderr.txt"
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

stage() {   # stage N: whether this call runs stage N (and a header in stderr.txt)
    case "$STAGES" in *" $1 "*) echo "== stage $1 ($(date +%T))" >> "$ERR"; return 0 ;; *) return 1 ;; esac
}

if stage 1; then
    echo "== 1. gpu_vs_fla at two shapes, chunk and scan forms, against the references (limit ${FOCUS_S:-210} s)"
    SEQDSL_AUTOTUNE=0 timeout "${FOCUS_S:-210}" python3 benchmarks/gpu_vs_fla.py --shapes 2 4 --reps "${REPS:-10}" \
        --max-ms "${MAX_MS:-1000}" --forms chunk scan --budget-s "$(( ${FOCUS_S:-210} - 15 ))" \
        > "$OUT/gpu_vs_fla_focus.md" 2>> "$ERR"
    echo "gpu_vs_fla exit $?"
    cat "$OUT/gpu_vs_fla_focus.md"
fi

if stage 2; then
    echo "== 2. gpu_check (limit ${CHECK_S:-150} s)"
    # the launch policy's configurations only: timing alternatives (compiling each) would eat the stage's minutes;
    # every alternative is checked under the interpreter (tests/test_triton_tune.py)
    SEQDSL_AUTOTUNE=0 timeout "${CHECK_S:-150}" python3 benchmarks/gpu_check.py --workers "${WORKERS:-12}" \
        > "$OUT/gpu_check.md" 2>> "$ERR"
    echo "gpu_check exit $?"; tail -3 "$OUT/gpu_check.md"; grep -c FAIL "$OUT/gpu_check.md"
fi

if stage 3; then
    echo "== 3. tests marked gpu (limit ${TESTS_S:-90} s)"
    # the launch policy's configurations (tests/test_triton_tune.py's gpu test compiles every tuning candidate itself)
    SEQDSL_AUTOTUNE=0 timeout "${TESTS_S:-90}" python3 -m pytest -q -p no:cacheprovider -m gpu \
        tests/test_triton_backend.py tests/test_triton_tune.py > "$OUT/gpu_tests.txt" 2>&1
    echo "pytest exit $?"; tail -3 "$OUT/gpu_tests.txt"
fi

if stage 4; then
    echo "== 4. in-kernel inverse and contraction variants (limit ${DIAG_S:-60} s)"
    timeout "${DIAG_S:-60}" python3 benchmarks/gpu_diag_inv.py > "$OUT/gpu_diag_inv.md" 2>> "$ERR"
    cat "$OUT/gpu_diag_inv.md"
fi

if stage 5; then
    # the launch policy's configurations at every shape (SEQDSL_AUTOTUNE=0: each kernel compiles once), against fla
    echo "== 5. gpu_vs_fla, every shape and form, launch policy (limit ${BENCH_S:-300} s)"
    SEQDSL_AUTOTUNE=0 timeout "${BENCH_S:-300}" python3 benchmarks/gpu_vs_fla.py --shapes ${SHAPES:-0 3 1 5 2 4} \
        --reps "${REPS:-10}" --max-ms "${MAX_MS:-1000}" --backward-forms ${BACKWARD_FORMS:-chunk scan recurrent} \
        --budget-s "$(( ${BENCH_S:-300} - 20 ))" > "$OUT/gpu_vs_fla.md" 2>> "$ERR"
    echo "gpu_vs_fla exit $?"
    cat "$OUT/gpu_vs_fla.md"
fi

if stage 6; then
    # seqdsl's rows again with the launch-time tuner (every candidate compiles and is timed on the first call at a
    # key, so fewer shapes): what it chooses, and what that gains over stage 1's rows. Choices print as they are made
    echo "== 6. gpu_vs_fla, tuned (limit ${TUNE_S:-150} s)"
    SEQDSL_PRINT_TUNING=1 timeout "${TUNE_S:-150}" python3 benchmarks/gpu_vs_fla.py --shapes ${TUNE_SHAPES:-2 4} \
        --reps "${REPS:-10}" --max-ms "${MAX_MS:-1000}" --forms chunk scan --no-reference \
        --budget-s "$(( ${TUNE_S:-150} - 20 ))" > "$OUT/gpu_vs_fla_tuned.md" 2>> "$ERR"
    echo "gpu_vs_fla tuned exit $?"
    cat "$OUT/gpu_vs_fla_tuned.md"; grep "seqdsl tuning" "$ERR" | head -40
fi
