"""Generated sources on disk: content-hashed names, atomic writes, import by path.

Triton reads kernel source with ``inspect``, so generated code must live in real files. A file's
name is the hash of everything that determines its content (the spec's canonical IR, its resolved
hyper-parameters, the backend, seqdsl's and torch's versions and the generators' own source), so a
cache hit is always up to date. ``SEQDSL_CACHE_DIR`` overrides the default ``~/.cache/seqdsl``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pathlib
import sys
import tempfile

_PASS_FILES = ("plan.py", "analysis.py")   # the passes whose results the generators render


def cache_dir() -> pathlib.Path:
    root = os.environ.get("SEQDSL_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "seqdsl")
    path = pathlib.Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _generator_fingerprint() -> str:
    """A hash of every generator source (each .py file of the codegen package, wherever it is installed) and of
    the passes they render: a change to any of them names new files."""
    here = pathlib.Path(__file__).resolve().parent
    h = hashlib.sha256()
    for folder in (here.parent / "codegen", here / "codegen"):
        for f in sorted(folder.glob("*.py")) if folder.is_dir() else ():
            h.update(f.name.encode() + f.read_bytes())
    for name in _PASS_FILES:
        h.update((here / name).read_bytes())
    return h.hexdigest()


def spec_hash(checked, backend: str) -> str:
    """A stable hash of everything the generated code depends on."""
    import torch

    from seqdsl import __version__

    model = checked.model.model_dump(mode="json", exclude={"span"})
    payload = json.dumps({"ir": _strip_spans(model), "values": checked.values, "backend": backend,
                          "seqdsl": __version__, "torch": torch.__version__, "gen": _generator_fingerprint()},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _strip_spans(obj):
    if isinstance(obj, dict):
        return {k: _strip_spans(v) for k, v in obj.items() if k != "span"}
    if isinstance(obj, list):
        return [_strip_spans(v) for v in obj]
    return obj


def write_atomic(path: pathlib.Path, text: str) -> None:
    """Write text so that readers (and concurrent writers) never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def import_path(path: pathlib.Path, module_name: str):
    """Import a generated file as a module (cached in sys.modules under its hashed name)."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
