"""Compile and run one example: print its analysis, compile its forms, run the layer, print shapes.

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
    op = seqdsl.compile(model, backend="torch")
    print(f"\ncompiled: {op.path}\n  modes {op.modes}, inputs {op.inputs}")
    layer = seqdsl.build(model)
    x = torch.randn(2, 256, layer.d_model)
    for mode in op.modes:
        start = time.perf_counter()
        with torch.no_grad():
            y, cache = layer(x, mode=mode, output_final_state=True)
        ms = (time.perf_counter() - start) * 1e3
        print(f"  layer[{mode:9s}] x {tuple(x.shape)} -> y {tuple(y.shape)} in {ms:7.1f} ms")
    states = cache["state"] if isinstance(cache["state"], tuple) else (cache["state"],)
    print("final state: " + ", ".join(str(tuple(s.shape)) for s in states)
          + f"; state size per sequence {layer.state_size():,}; parameters {layer.num_parameters():,}")
    y_t, _ = layer.step(x[:, 0])
    print(f"decode step: x_t {tuple(x[:, 0].shape)} -> y_t {tuple(y_t.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "examples/gla.seq"))
