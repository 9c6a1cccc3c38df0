"""Hand-written form algorithms that generated seqdsl modules call (plain torch, usable alone).

    from seqdsl.runtime import chunk_gated, chunk_delta, scan_diagonal
    o, S = chunk_gated(q, k, v, gk=gk, scale=K ** -0.5, output_final_state=True)

See torch_forms for the conventions (fla-compatible layouts, log-space gates, fp32 states).
"""

from seqdsl.runtime.torch_forms import (
    chunk_delta,
    chunk_dplr,
    chunk_gated,
    recurrent_delta,
    recurrent_dplr,
    recurrent_gated,
    scan_dense,
    scan_diagonal,
    scan_gated,
    causal_conv_fft,
    conv_lti,
)

__all__ = [
    "chunk_delta",
    "chunk_dplr",
    "chunk_gated",
    "recurrent_delta",
    "recurrent_dplr",
    "recurrent_gated",
    "scan_dense",
    "scan_diagonal",
    "scan_gated",
    "causal_conv_fft",
    "conv_lti",
]
