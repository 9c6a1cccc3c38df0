"""Compile and run one example: print its analysis, run the layer on random input, print shapes.

    python examples/demo.py examples/gla.seq
"""

from __future__ import annotations

import sys
import time

import torch

import seqdsl
from seqdsl.cli import explain_text


def main(path: str) -> int:
    try:
        model = seqdsl.load(path)
    except seqdsl.SpecError as e:
        print(e.render(), file=sys.stderr)
        return 2
    sys.stdout.write(explain_text(model))
    ref = seqdsl.reference(model)
    params = ref.init_params(seed=0)
    d_model = model.checked.dim_sizes["d_model"]
    x = torch.randn(2, 64, d_model, dtype=torch.float64)
    start = time.perf_counter()
    y, state = ref.layer(x, params, output_final_state=True)
    ms = (time.perf_counter() - start) * 1e3
    states = state if isinstance(state, tuple) else (state,)
    print(f"\nreference layer (fp64 interpreter): x {tuple(x.shape)} -> y {tuple(y.shape)} in {ms:.1f} ms")
    print("final state: " + ", ".join(str(tuple(s.shape)) for s in states))
    print(f"parameters: {sum(p.numel() for p in params.values()):,} in {len(params)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "examples/gla.seq"))
