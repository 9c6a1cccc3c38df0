"""Shared test machinery: the one tolerance table, ``assert_close``, and realistic op inputs.

Tolerances are relative RMS errors ``||out - ref|| / ||ref||`` per dtype (fla's convention): a tensor
passes if its max-abs error is below ``ATOL`` or its relative RMS error is below ``RTOL[dtype]``.
"""

from __future__ import annotations

import torch

RTOL = {torch.float64: 1e-9, torch.complex128: 1e-9, torch.float32: 2e-4, torch.complex64: 2e-4,
        torch.bfloat16: 2e-2, torch.float16: 5e-3}
ATOL = 1e-12
# chunkwise / scan forms reassociate sums; allow this factor more than the recurrent form
FORM_FACTOR = {"recurrent": 1.0, "scan": 10.0, "chunk": 10.0, "conv": 10.0}

# Small dims for fast tests (applied where a spec has the hyper-parameter); K != V on purpose.
SMALL_HPARAMS = {"d_model": 16, "heads": 2, "dk": 8, "dv": 12, "n": 6, "hidden": 8, "headdim": 4, "expand": 2,
                 "dt_rank": 3, "gate_rank": 4}


def rel_rms(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.detach(), out.detach().to(ref.dtype)
    denom = ref.abs().pow(2).mean().sqrt().item()
    err = (ref - out).abs().pow(2).mean().sqrt().item()
    return err / denom if denom > 0 else err


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, dtype: torch.dtype, factor: float = 1.0) -> None:
    """Fail with the tensor's name and its errors unless out matches ref within the table's tolerance."""
    assert tuple(ref.shape) == tuple(out.shape), f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    out_ref = out.detach().to(ref.dtype)
    assert torch.isfinite(out_ref.abs()).all(), f"{name}: non-finite values"
    max_abs = (ref.detach() - out_ref).abs().max().item() if ref.numel() else 0.0
    if max_abs <= ATOL:
        return
    err = rel_rms(ref, out)
    tol = RTOL[dtype] * factor
    assert err < tol, f"{name}: relative RMS error {err:.3g} > {tol:.3g} (max abs {max_abs:.3g})"


def small_hparams(model) -> dict:
    """The SMALL_HPARAMS a model's header has."""
    names = {h.name for h in model.ir.hparams}
    return {k: v for k, v in SMALL_HPARAMS.items() if k in names}


def at_dims(model, dims: dict, fallback_d_model: int):
    """The model at ``dims`` (those its header has), else with d_model = fallback_d_model, else at
    SMALL_HPARAMS: the first the spec accepts and whose sampled inputs are finite."""
    import seqdsl
    from seqdsl.errors import SpecError

    names = {h.name for h in model.ir.hparams}
    for candidate in (dims, {**dims, "d_model": fallback_d_model}, small_hparams(model)):
        try:
            sized = model.with_hparams(**{k: v for k, v in candidate.items() if k in names})
        except SpecError:
            continue
        inputs = sample_inputs(seqdsl.reference(sized), 1, 2)
        if all(torch.isfinite(torch.view_as_real(v) if v.is_complex() else v).all() for v in inputs.values()):
            return sized
    return model.with_hparams(**small_hparams(model))


def sample_inputs(ref, batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Realistic op inputs: the spec's own streams computed from random x with initialised params (fp64)."""
    g = torch.Generator().manual_seed(seed)
    params = ref.init_params(seed)
    d_model = ref.checked.dim_sizes["d_model"]
    x = torch.randn(batch, length, d_model, generator=g, dtype=torch.float64)
    return ref.op_inputs(x, params)


def random_state(op_or_ref, n: int, seed: int = 1, scale: float = 0.5):
    """A random initial state for every state of the cell (tuple, or one tensor), fp64 / complex128."""
    g = torch.Generator().manual_seed(seed)
    c = op_or_ref.checked
    axis = c.cell_axis
    out = []
    for st in c.model.cell.states:
        t = c.cell_types[st.name]
        shape = (n,) + ((c.dim_sizes[axis],) if axis else ()) + tuple(c.dim_sizes[d] for d in t.dims)
        value = torch.randn(shape, generator=g, dtype=torch.float64) * scale
        if t.complex:
            value = torch.complex(value, torch.randn(shape, generator=g, dtype=torch.float64) * scale)
        out.append(value)
    return out[0] if len(out) == 1 else tuple(out)


def projected_grads(fn, inputs: dict, h0) -> dict:
    """Gradients of a fixed random projection of (outputs, final states) w.r.t. every input and initial state.

    fn(inputs, initial_state) -> (o, final state) as an op returns them (tuples or single tensors); complex
    outputs contribute their real and imaginary parts. Returns {input name or "h0[i]": gradient or None}.
    """
    def flat(x):
        return x if isinstance(x, tuple) else (x,)

    xs = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    hs = tuple(h.detach().clone().requires_grad_(True) for h in flat(h0))
    o, ht = fn(xs, hs if len(hs) > 1 else hs[0])
    g = torch.Generator().manual_seed(0)
    loss = 0
    for t in flat(o) + flat(ht):
        w = torch.randn(t.shape, generator=g, dtype=torch.float64)
        loss = loss + (t.real * w).sum() + ((t.imag * w).sum() if t.is_complex() else 0)
    loss.backward()
    return {**{k: v.grad for k, v in xs.items()}, **{f"h0[{i}]": h.grad for i, h in enumerate(hs)}}
