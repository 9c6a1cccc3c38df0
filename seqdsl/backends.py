"""Code generators by name. ``emit(model, backend, folder)`` writes generated sources, returns their paths."""

from __future__ import annotations

from seqdsl.errors import SpecError

BACKENDS = ("torch", "triton", "none")


def emit(model, backend: str, folder: str) -> list[str]:
    """Write the generated code of ``model`` for ``backend`` into ``folder``."""
    if backend == "none":
        return []
    if backend not in BACKENDS:
        raise SpecError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    raise SpecError(f"the {backend} backend is not available yet in this version; use --backend none")
