"""Shared test set-up: CPU-only Triton runs under the interpreter; fixed seeds; the examples list."""

import os
import pathlib
import warnings

os.environ.setdefault("TRITON_INTERPRET", "1")
warnings.filterwarnings("ignore", message=".*Triton is not supported on current platform.*")

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.seq"))
