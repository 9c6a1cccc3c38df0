#!/usr/bin/env bash
# The wheels benchmarks/gpu_session.sh needs on a lent GPU machine, which reaches no package index and lacks them:
# lark and pydantic (the compiler's), fla-core (the reference kernels). Its image has torch, triton, einops, numpy,
# networkx and typing-extensions (/work/.library/device/KINDS.md). Run here, in the repo's root, where pip reaches
# PyPI; the wheels land in .whl/ (kept out of git through .git/info/exclude), about 3 MB:
#
#   bash benchmarks/fetch_gpu_wheels.sh
#
# then name .whl in the device call's carry; gpu_session.sh installs them into /tmp/site before anything else.
# The versions are this venv's (pip show), for the machine's Python 3.12.
set -eu
PY=${PYTHON:-python3}
version() { "$PY" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
mkdir -p .git/info
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl
for name in lark pydantic pydantic-core annotated-types typing-inspection fla-core; do
    v=$(version "$name")
    [ -n "$v" ] || { echo "fetch_gpu_wheels: $name is not installed here (run make install first)" >&2; exit 2; }
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl "$name==$v"
done
ls .whl
