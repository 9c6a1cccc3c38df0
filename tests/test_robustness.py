"""No input, however malformed, gets past the front end as anything but a ``seqdsl.SpecError``.

Fuzz and edge cases for ``seqdsl.load`` / ``seqdsl.loads``: empty and blank text, random bytes (through
the UTF-8 decode path), random mutations of every example spec, huge files, very deep nesting, very long
lines, tabs, NUL bytes, directories and missing files. Every case is seeded, so a failure reproduces.
Each error must also be well formed: a one-line message, a position inside the text (or none), and a
``render()`` that does not fail.
"""

from __future__ import annotations

import random
import re
import string
from pathlib import Path

import pytest

import seqdsl
from seqdsl import SpecError

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.seq"))
SOURCES = [p.read_text() for p in EXAMPLES]
TOKEN = re.compile(r"\s+|[A-Za-z_][A-Za-z0-9_]*|[0-9.]+[jJ]?|\*\*|<-|.", re.S)


def _check_error(err: SpecError, text: str | None = None) -> None:
    """The error is well formed: what the CLI prints can be printed."""
    assert isinstance(err, SpecError)
    assert err.message and "\n" not in err.message, repr(err.message)
    assert err.message == err.message.strip()
    if err.line is not None:
        assert isinstance(err.line, int) and err.line >= 1
        if text is not None:
            assert err.line <= text.count("\n") + 1, (err.line, err.message)
        assert err.column is None or (isinstance(err.column, int) and err.column >= 1)
    rendered = err.render()
    assert rendered.split("\n")[0] == str(err)
    assert len(rendered) < 2000


def _loads_fails_cleanly(text: str) -> None:
    try:
        seqdsl.loads(text)
    except SpecError as e:
        _check_error(e, text)


def _load_fails_cleanly(path: Path) -> None:
    try:
        seqdsl.load(path)
    except SpecError as e:
        _check_error(e)
        assert e.path == str(path)


def _mutate(rng: random.Random, text: str) -> str:
    """One to three random edits: delete, duplicate or replace characters; delete, duplicate or swap tokens."""
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(6)
        if kind < 3:
            i = rng.randrange(len(text))
            j = min(len(text), i + rng.randint(1, 4))
            if kind == 0:
                text = text[:i] + text[j:]
            elif kind == 1:
                text = text[:i] + text[i:j] * 2 + text[i:]
            else:
                text = text[:i] + text[rng.randrange(len(text))] + text[i + 1:]
        else:
            tokens = TOKEN.findall(text)
            i, k = rng.randrange(len(tokens)), rng.randrange(len(tokens))
            if kind == 3:
                del tokens[i]
            elif kind == 4:
                tokens.insert(i, tokens[k])
            else:
                tokens[i], tokens[k] = tokens[k], tokens[i]
            text = "".join(tokens)
        if not text:
            break
    return text


# ------------------------------------------------------------------ the examples themselves load
def test_examples_load():
    assert len(EXAMPLES) >= 10
    for path in EXAMPLES:
        seqdsl.load(path)


# ------------------------------------------------------------------ empty and blank
@pytest.mark.parametrize("text", ["", " ", "\n", "\n\n\n", "   \t  \n\t\n", "\r\n\r\n", "\f", "# only a comment\n",
                                  "#\n#\n   # indented comment\n"])
def test_empty_and_blank(text: str, tmp_path: Path):
    with pytest.raises(SpecError) as info:
        seqdsl.loads(text)
    _check_error(info.value, text)
    assert "empty" in info.value.message
    path = tmp_path / "blank.seq"
    path.write_text(text)
    with pytest.raises(SpecError):
        seqdsl.load(path)


# ------------------------------------------------------------------ random input
def test_random_bytes_files(tmp_path: Path):
    rng = random.Random(1234)
    path = tmp_path / "junk.seq"
    for case in range(300):
        size = rng.choice([1, 2, 7, 64, 512, 4096])
        if case % 3 == 0:       # mostly ASCII, so that some of it reaches the lexer and parser
            data = bytes(rng.choice(b"model()[]:=~<-+*/@,._ \n\t#abcxyzSq0123456789\x00\x80") for _ in range(size))
        else:
            data = rng.randbytes(size)
        path.write_bytes(data)
        with pytest.raises(SpecError):
            seqdsl.load(path)
        _load_fails_cleanly(path)


def test_random_token_soup():
    """Random sequences of the language's own tokens and layout (reaches deep into the parser)."""
    rng = random.Random(99)
    words = ["model", "m", "(", ")", "[", "]", ":", "=", "~", "<-", "+", "-", "*", "/", "@", "**", ",", "x", "S",
             "d_model", "64", "0.5", "2j", "state", "cell", "over", "arg", "out", "params", "dims", "streams",
             "linear", "exp", "outer", "complex", '"a.seq"', "stack", "blocks", "layers", "\n", "\n  ", "\n    ", " "]
    for _ in range(300):
        _loads_fails_cleanly("".join(rng.choice(words) for _ in range(rng.randint(1, 60))))


def test_random_mutations_of_examples():
    rng = random.Random(2024)
    for _ in range(600):
        _loads_fails_cleanly(_mutate(rng, rng.choice(SOURCES)))


def test_random_mutations_through_files(tmp_path: Path):
    """The same through load(): the text on disk, including mutations that break UTF-8 sequences."""
    rng = random.Random(7)
    path = tmp_path / "mutant.seq"
    for _ in range(100):
        data = bytearray(_mutate(rng, rng.choice(SOURCES)).encode("utf-8"))
        if data and rng.random() < 0.3:
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        _load_fails_cleanly(path)


def test_every_prefix_of_an_example():
    """A spec cut off anywhere (a truncated download, an editor crash)."""
    text = next(s for p, s in zip(EXAMPLES, SOURCES) if p.stem == "gated_deltanet")
    for cut in range(0, len(text), 7):
        _loads_fails_cleanly(text[:cut])


# ------------------------------------------------------------------ size
def test_ten_megabyte_file(tmp_path: Path):
    path = tmp_path / "big.seq"
    path.write_bytes(SOURCES[0].encode() + b"# " + b"x" * (10 * 1024 * 1024) + b"\n")
    with pytest.raises(SpecError) as info:
        seqdsl.load(path)
    _check_error(info.value)
    assert "bytes" in info.value.message


def test_ten_megabyte_text():
    text = SOURCES[0] + ("    # padding\n" * (10 * 1024 * 1024 // 14))
    with pytest.raises(SpecError) as info:
        seqdsl.loads(text)
    _check_error(info.value)


def test_very_long_lines():
    base = SOURCES[0]
    cases = [
        base + "# " + "x" * 500_000 + "\n",                                      # a long comment: still valid
        base.replace("model ", "model " + "m" * 300_000, 1),                     # a long model name
        base + " " * 500_000 + "\n",                                             # trailing blanks
        "model m(d_model = 4):\n  streams:\n    q: [d_model] = " + " + ".join(["x"] * 100_000) + "\n",
        "model m(d_model = 4):\n  streams:\n    q: [d_model] = linear(" + "x, " * 100_000 + "x)\n",
        "model m(d_model = 4):\n  dims:\n    d = " + "9" * 200_000 + "\n",          # a huge integer literal
        "model m(" + ", ".join(f"h{i} = {i}" for i in range(20_000)) + "):\n  streams:\n    q: [h1] = x\n",
    ]
    for text in cases:
        _loads_fails_cleanly(text)


# ------------------------------------------------------------------ nesting
HEAD = "model m(d_model = 64):\n  streams:\n    q: [d_model] = "


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deep_parentheses(depth: int):
    _loads_fails_cleanly(HEAD + "(" * depth + "x" + ")" * depth + "\n")
    _loads_fails_cleanly(HEAD + "(" * depth + "x\n")                          # and never closed
    _loads_fails_cleanly(HEAD + "[" * depth + "x" + "]" * depth + "\n")


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_deep_unary_and_calls(depth: int):
    for text in (HEAD + "-" * depth + "x\n", HEAD + "- " * depth + "x\n", HEAD + "+-" * (depth // 2) + "x\n",
                 HEAD + "exp(" * depth + "x" + ")" * depth + "\n", HEAD + "x ** " * depth + "x\n",
                 HEAD + "x[0]" + "[0]" * depth + "\n"):
        with pytest.raises(SpecError) as info:
            seqdsl.loads(text)
        _check_error(info.value, text)


def test_deep_compile_time_arithmetic():
    """Numbers the checker evaluates: huge powers and products fail fast instead of hanging."""
    for expr in ["10 ** 10 ** 10", "2 ** 4096", "(2 ** 999) * (2 ** 999)", "9 ** 9 ** 9 ** 9", "1e308 * 1e308",
                 "-(-8) ** 0.5", "0 ** -1", "exp(exp(exp(10)))", "log(0)", "sqrt(-1)", "1 / 0", "7 / 2",
                 " * ".join(["999999999999999999"] * 64)]:
        text = f"model m(d_model = 4, h = {expr}):\n  streams:\n    q: [d_model] = x\n"
        _loads_fails_cleanly(text)


# ------------------------------------------------------------------ odd characters and layout
def test_tabs_mixed_with_spaces():
    base = next(s for p, s in zip(EXAMPLES, SOURCES) if p.stem == "retnet")
    lines = base.split("\n")
    rng = random.Random(5)
    for _ in range(60):
        mixed = list(lines)
        i = rng.randrange(len(mixed))
        indent = len(mixed[i]) - len(mixed[i].lstrip(" "))
        mixed[i] = rng.choice(["\t", " \t", "\t ", "\t\t", "  \t  "]) + mixed[i][indent:]
        _loads_fails_cleanly("\n".join(mixed))
    _loads_fails_cleanly(base.replace("    ", "\t"))          # tabs throughout: consistent, may well load


def test_nul_and_control_bytes(tmp_path: Path):
    base = SOURCES[0]
    path = tmp_path / "nul.seq"
    for junk in ["\x00", "\x00" * 100, "\x07", "\x1b[31m", "\x0b", "\x1c", "\r", "\x7f", "\ufeff", "\u2028",
                 "\x85", "\ud800"]:
        for pos in (0, len(base) // 3, len(base) - 1):
            text = base[:pos] + junk + base[pos:]
            _loads_fails_cleanly(text)
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError:          # a lone surrogate: only reachable through loads()
                continue
            path.write_bytes(data)
            _load_fails_cleanly(path)
    path.write_bytes(b"\x00" * 1000)
    with pytest.raises(SpecError):
        seqdsl.load(path)


def test_crlf_line_endings_load():
    for text in SOURCES[:3]:
        seqdsl.loads(text.replace("\n", "\r\n"))


def test_line_numbers_ignore_unicode_line_separators():
    """Positions count '\\n' only, as the parser does, even with form feeds or U+2028 in comments."""
    base = next(s for p, s in zip(EXAMPLES, SOURCES) if p.stem == "retnet")
    bad = base.replace("o = (q * scale) @ S", "o = (q * scale) @ SS")
    expected_line = bad.split("\n").index(next(ln for ln in bad.split("\n") if "@ SS" in ln)) + 1
    for junk in ["\f", "\u2028", "\x85"]:
        with pytest.raises(SpecError) as info:
            seqdsl.loads("# a" + junk + "b\n" + bad)
        assert info.value.line == expected_line + 1
        assert "@ SS" in info.value.render().split("\n")[1]


# ------------------------------------------------------------------ the file system
def test_directory_and_missing_files(tmp_path: Path):
    for path in (tmp_path, tmp_path / "missing.seq", tmp_path / "no" / "such" / "dir.seq", Path("")):
        with pytest.raises(SpecError) as info:
            seqdsl.load(path)
        _check_error(info.value)
        assert "cannot read" in info.value.message


# ------------------------------------------------------------------ stacks (specs that load other specs)
STACKS = sorted((Path(__file__).parent.parent / "examples" / "stacks").glob("*.seq"))


@pytest.fixture
def zoo_copy(tmp_path: Path) -> Path:
    """The examples copied to a scratch directory, so mutated stacks resolve their cell("../x.seq") paths."""
    for p in EXAMPLES:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "stacks").mkdir()
    for p in STACKS:
        (tmp_path / "stacks" / p.name).write_bytes(p.read_bytes())
    return tmp_path / "stacks"


def test_random_mutations_of_stacks(zoo_copy: Path):
    rng = random.Random(11)
    sources = [p.read_text() for p in STACKS]
    path = zoo_copy / "mutant.seq"
    for _ in range(80):
        path.write_text(_mutate(rng, rng.choice(sources)))
        _load_fails_cleanly(path)


STACK = """stack lm(d_model = 64, vocab = 64):
  blocks:
    mixer = cell("../gla.seq", heads = 2, dk = 32, dv = 32)
    attn = attention(heads = 2, window = 32)
    mlp = swiglu(expand = 4)
  layers = [mixer, mlp, attn, mlp] * 2
"""


@pytest.mark.parametrize("old, new", [
    ('cell("../gla.seq"', 'cell("../missing.seq"'),
    ('cell("../gla.seq"', 'cell(".."'),
    ('cell("../gla.seq"', 'cell(""'),
    ('cell("../gla.seq", heads = 2', 'cell("../gla.seq", head = 2'),
    ("heads = 2, window", "heads = 3, window"),
    ("* 2", "* 2.5"),
    ("* 2", "* -1"),
    ("vocab = 64", "vocab = 64 / 0"),
    ("[mixer, mlp, attn, mlp] * 2", "[]"),
    ("[mixer, mlp, attn, mlp]", "[mixer, mlp, attn, mlpp]"),
    ("swiglu(expand = 4)", "swiglu(4)"),
    ("swiglu(expand = 4)", "swiglu(expand = x)"),
    ("swiglu(expand = 4)", "transformer()"),
    ("d_model = 64, ", ""),
])
def test_stack_mistakes(zoo_copy: Path, old: str, new: str):
    assert old in STACK
    path = zoo_copy / "lm.seq"
    path.write_text(STACK.replace(old, new, 1))
    with pytest.raises(SpecError) as info:
        seqdsl.load(path)
    _check_error(info.value)


@pytest.mark.parametrize("old, new", [
    ("heads = 2, window", "heads = 0, window"),
    ('cell("../gla.seq", heads = 2, dk = 32, dv = 32)', 'cell("gla.seq")'),
    ('cell("../gla.seq", heads = 2, dk = 32, dv = 32)', 'cell("lm.seq")'),
])
def test_stack_mistakes_caught_before_building(zoo_copy: Path, old: str, new: str):
    (zoo_copy / "gla.seq").write_text("stack inner(d_model = 64):\n  blocks:\n    m = mlp()\n  layers = [m]\n")
    path = zoo_copy / "lm.seq"
    path.write_text(STACK.replace(old, new, 1))
    with pytest.raises(SpecError) as info:
        seqdsl.load(path)
    _check_error(info.value)
