"""The bad-spec corpus: every file in tests/bad_specs/ has one mistake and the exact error it must give.

Each file's first line is ``# expect: LINE:COL: MESSAGE``, the text of ``str(err)`` without the leading
``path:``. Loading the file must raise ``seqdsl.SpecError`` with exactly that position and message, and
``err.render()`` (what the CLI prints) must show the offending source line with a caret under the column.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import seqdsl

CORPUS = Path(__file__).parent / "bad_specs"
FILES = sorted(CORPUS.glob("*.seq"))
EXPECT = re.compile(rb"# expect: (\d+):(\d+): (.+)\r?\n")


def _expectation(path: Path) -> tuple[int, int, str]:
    first = path.read_bytes().split(b"\n", 1)[0] + b"\n"
    m = EXPECT.fullmatch(first)
    assert m, f"{path.name}: the first line must be '# expect: LINE:COL: MESSAGE'"
    return int(m[1]), int(m[2]), m[3].decode("utf-8")


def test_corpus_size():
    assert len(FILES) >= 40, f"the bad-spec corpus has {len(FILES)} files; it needs at least 40"


def test_corpus_names_are_distinct():
    assert all(re.fullmatch(r"\d{2,3}_[a-z0-9_]+\.seq", f.name) for f in FILES)
    stems = [f.name.split("_", 1)[1] for f in FILES]
    assert len(set(stems)) == len(stems), "two corpus files describe the same mistake"


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_bad_spec(path: Path):
    line, column, message = _expectation(path)
    with pytest.raises(seqdsl.SpecError) as info:
        seqdsl.load(path)
    err = info.value
    assert f"{err.line}:{err.column}: {err.message}" == f"{line}:{column}: {message}"
    assert str(err) == f"{path}:{line}:{column}: {message}"

    rendered = err.render().split("\n")
    assert rendered[0] == str(err)
    assert len(rendered) == 3, "render() shows the location and message, the source line and a caret"
    source_line, caret_line = rendered[1], rendered[2]
    assert caret_line.strip() == "^"
    # the shown line is the offending one (long lines are cut to a window around the column)
    raw = path.read_bytes().decode("utf-8", "replace").split("\n")[line - 1].rstrip("\r")
    shown = source_line[2:]
    visible = "".join(c if c.isprintable() else " " for c in raw)
    window = shown.removeprefix("... ").removesuffix(" ...")
    assert window and window in visible
    # the caret sits under the reported column
    caret = len(caret_line) - 3          # 0-based, after the two-space indent
    offset = visible.index(window) - (4 if shown.startswith("... ") else 0)
    assert caret + offset == column - 1 or (column - 1 >= len(visible) and caret == len(shown))


def test_error_from_loads_carries_the_same_position():
    """loads() reports the same position and message as load() (no file involved)."""
    path = CORPUS / next(f.name for f in FILES if "unknown_name" in f.name)
    line, column, message = _expectation(path)
    with pytest.raises(seqdsl.SpecError) as info:
        seqdsl.loads(path.read_text(), name="spec")
    err = info.value
    assert (err.line, err.column, err.message) == (line, column, message)
    assert str(err).startswith("<spec>:")
