"""tests/zoo: per-family reference tests. Puts tests/ on sys.path (oracles, seqdsl.testing helpers) and
defines EXAMPLES like tests/conftest.py, so ``from conftest import EXAMPLES`` works whichever of the two
``conftest`` modules Python resolves."""

import pathlib
import sys

_TESTS = pathlib.Path(__file__).resolve().parent.parent
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

ROOT = _TESTS.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.seq"))
