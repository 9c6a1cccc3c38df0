"""What the zoo's reference tests share: the examples folder, fp64 tolerances, seeded random inputs and the
fp64 interpreter of a spec."""

from __future__ import annotations

from pathlib import Path

import torch

import seqdsl

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
F64, C128 = torch.float64, torch.complex128
TOL = 1e-10


def our_ref(name: str, **hparams):
    """The fp64 interpreter of examples/<name>.seq at the given hyper-parameters."""
    return seqdsl.reference(seqdsl.load(EXAMPLES / f"{name}.seq", **hparams))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(g, *shape, dtype=F64):
    return torch.randn(tuple(shape), generator=g, dtype=dtype)


def uniform(g, lo, hi, *shape):
    return torch.rand(*shape, generator=g, dtype=F64) * (hi - lo) + lo
