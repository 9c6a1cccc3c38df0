"""Bytes a compiled op moves outside its Triton kernels, counted on the CPU at fla's benchmark shapes.

    python benchmarks/memory_traffic.py [--shapes 4,2048,16,128 ...] [--ops simple_gla gla ...] [--backward]
                                        [--fla] [--verbose]

At fla's shapes the chunk forms are memory-bound on a GPU, so every pass over a [B, T, H, D] tensor outside
the kernels (a cast of the inputs to fp32, a scaling of q, a cast of the output back) costs time that fla does
not spend. This script needs no GPU and measures no time: it calls the op on CPU tensors with every Triton
launch replaced by nothing (the outputs are garbage), under the GPU launch policy (bf16 tl.dot operands and
states for bf16 inputs, as on an H100), and counts

* torch glue: every aten op the call runs, with the bytes of its tensor inputs (read) and outputs (written);
  views and allocations move nothing and are not counted;
* kernels: the launches, and the bytes of the distinct tensors each is handed (an estimate of what it touches:
  a tensor read by several tile programs counts once).

bf16 inputs, as gpu_vs_fla.py times them (the log gates in fp32, as fla takes them; Mamba with d_inner = H * D
channels and n = 16, its scan form by default, as gpu_vs_fla.py compares it with mamba_ssm's selective scan; HGRN's
recurrence h_t = exp(g_t) h_{t-1} + i_t over H * D channels, its scan form by default, with ``--fla`` beside fla's
``fused_recurrent_hgrn`` and ``chunk_hgrn``).
One row per op, form and shape; forward, or forward and backward with ``--backward`` (the backward's gradient of
the output is bf16 ones).

``--fla``: a row for fla's chunk function beside each chunk op's (fla-core; imported as on an H100, whose autotune
lists it picks at import; each autotuned launch counted once, with its first configuration), counted the same way.
The kernel bytes are an estimate for both sides: a tensor handed to a kernel counts whole, once per launch, whether
the kernel reads all of it or (a pointer used only under a compile-time flag) none. ``--verbose`` lists the
aten ops that move the most bytes and every launch with the bytes of its tensors.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "0"       # real JIT functions, whose launches are replaced below

import argparse  # noqa: E402
import contextlib  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_vs_fla import HGRN, SHAPES, SIMPLE_GLA  # noqa: E402

_ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh"}


def _bytes(x) -> int:
    """The bytes of the distinct elements a tensor view holds (a broadcast axis, stride 0, counts once)."""
    if not isinstance(x, torch.Tensor):
        return 0
    n = 1
    for size, stride in zip(x.shape, x.stride()):
        n *= size if stride != 0 else 1
    return n * x.element_size()


def _tensors(tree) -> list[torch.Tensor]:
    return [x for x in tree_leaves(tree) if isinstance(x, torch.Tensor)]


class GlueCounter(TorchDispatchMode):
    """Counts the bytes every aten op reads (tensor inputs) and writes (tensor outputs); views and allocations
    are skipped."""

    def __init__(self):
        super().__init__()
        self.bytes = 0
        self.by_op: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if not func.is_view and name not in _ALLOCATIONS:
            moved = sum(_bytes(t) for t in _tensors(list(args) + list((kwargs or {}).values()))) + \
                sum(_bytes(t) for t in _tensors(out))
            self.bytes += moved
            self.by_op[name] += moved
        return out


@contextlib.contextmanager
def gpu_launch_policy():
    """Inside: the launch policy answers as for a CUDA device, whatever the tensors' device."""
    from seqdsl.runtime import triton_runtime

    policy = triton_runtime.launch_config

    def gpu_policy(form, tiled_size, state_numel, device=None, low_precision_inputs=None, **policy_kw):
        return policy(form, tiled_size, state_numel, torch.device("cuda"), low_precision_inputs, **policy_kw)

    triton_runtime.launch_config = gpu_policy
    try:
        yield
    finally:
        triton_runtime.launch_config = policy


@contextlib.contextmanager
def autotuners_untimed():
    """Inside: fla's autotuned launches (``triton.autotune``) look their choice up as on a GPU, the first of their
    configurations chosen untimed on a key's first call, and run it through the kernel's own launch."""
    from triton.runtime import autotuner

    saved = (autotuner.Autotuner._bench, autotuner.Autotuner.check_disk_cache)
    autotuner.Autotuner._bench = lambda self, *a, config, **k: [1.0, 1.0, 1.0]
    autotuner.Autotuner.check_disk_cache = lambda self, key, configs, bench: bench() and False   # no disk cache
    try:
        yield
    finally:
        autotuner.Autotuner._bench, autotuner.Autotuner.check_disk_cache = saved


@contextlib.contextmanager
def launches_recorded(record: list):
    """Inside: a Triton launch runs nothing and appends (kernel name, bytes of its distinct tensor arguments);
    the launch policy answers as for a CUDA device."""
    from triton.runtime.jit import JITFunction

    run = JITFunction.run

    def record_instead(self, *args, grid, warmup, **kwargs):
        seen = {}
        for t in list(args) + list(kwargs.values()):
            if isinstance(t, torch.Tensor):
                seen[t.data_ptr()] = max(seen.get(t.data_ptr(), 0), _bytes(t))
        record.append((self.fn.__name__, sum(seen.values())))

    JITFunction.run = record_instead
    try:
        with gpu_launch_policy():
            yield
    finally:
        JITFunction.run = run


MAMBA_N = 16
DEFAULT_FORM = {"mamba": "scan", "hgrn": "scan"}      # the others: chunk


def op_inputs(name: str, B: int, T: int, H: int, D: int) -> dict:
    """The inputs gpu_vs_fla.py gives each op (bf16; log gates fp32), requiring gradients."""
    g = torch.Generator().manual_seed(0)

    def rnd(*s, dtype=torch.bfloat16):
        return torch.randn(*s, generator=g, dtype=dtype)

    if name == "mamba":
        Dn = H * D
        inputs = {"u": rnd(B, T, Dn), "delta": F.softplus(rnd(B, T, Dn).float() - 4).to(torch.bfloat16),
                  "B": rnd(B, T, MAMBA_N), "C": rnd(B, T, MAMBA_N),
                  "A_log": torch.log(torch.arange(1, MAMBA_N + 1.0)).repeat(Dn, 1), "D": torch.ones(Dn)}
        return {n: t.requires_grad_(True) for n, t in inputs.items()}
    if name == "hgrn":
        inputs = {"i": rnd(B, T, H * D), "g": F.logsigmoid(rnd(B, T, H * D).float()).to(torch.bfloat16)}
        return {n: t.requires_grad_(True) for n, t in inputs.items()}
    inputs = {"q": rnd(B, T, H, D), "k": rnd(B, T, H, D), "v": rnd(B, T, H, D)}
    if name == "simple_gla":
        inputs["g"] = F.logsigmoid(rnd(B, T, H, dtype=torch.float32))
    elif name == "gla":
        inputs["gk"] = F.logsigmoid(rnd(B, T, H, D, dtype=torch.float32)) / 16
    else:
        inputs["k"] = F.normalize(inputs["k"].float(), dim=-1).to(torch.bfloat16)
        inputs["beta"] = torch.sigmoid(rnd(B, T, H))
        if name == "gated_deltanet":
            inputs["g"] = F.logsigmoid(rnd(B, T, H, dtype=torch.float32))
    return {n: t.requires_grad_(True) for n, t in inputs.items()}


def compiled(name: str, H: int, D: int):
    import seqdsl

    if name == "mamba":
        model = seqdsl.load(ROOT / "examples/mamba.seq").with_hparams(d_model=H * D // 2, n=MAMBA_N)
    elif name == "hgrn":
        model = seqdsl.loads(HGRN, name="hgrn_core").with_hparams(d_model=H * D)
    else:
        model = seqdsl.loads(SIMPLE_GLA, name="simple_gla") if name == "simple_gla" else \
            seqdsl.load(ROOT / f"examples/{name}.seq")
        model = model.with_hparams(heads=H, dk=D, dv=D)
    return seqdsl.compile(model, backend="triton")


def measure(call, backward: bool) -> dict:
    """What call() (returning the output, or a tuple starting with it) and, with backward, the output's backward
    move: {"glue": torch glue bytes, "by_op": per aten op, "launches": [(kernel, bytes)], "forward_launches": how
    many of them the forward made, "kernel_args": their bytes summed, "forward_kernel_args": the forward's}."""
    launches: list = []
    counters = [GlueCounter()]
    with launches_recorded(launches), autotuners_untimed():
        with counters[0]:
            o = call()
        o = o[0] if isinstance(o, tuple) else o
        forward_launches = len(launches)
        if backward:
            do = torch.ones(o.shape, dtype=o.dtype)          # made outside the count
            counters.append(GlueCounter())
            with counters[1]:
                o.backward(do)
    by_op = sum((c.by_op for c in counters), Counter())
    return {"glue": sum(c.bytes for c in counters), "by_op": by_op, "launches": launches,
            "forward_launches": forward_launches, "kernel_args": sum(b for _, b in launches),
            "forward_kernel_args": sum(b for _, b in launches[:forward_launches])}


def fla_functions():
    """host_overhead.fla_call, with fla imported as on an H100 (its autotune lists are chosen at import), or None
    without fla-core."""
    try:
        import fla  # noqa: F401
    except ImportError:
        return None
    from benchmarks.host_overhead import fla_call
    from benchmarks.sass_vs_fla import import_fla_as_on

    import_fla_as_on(90)
    return fla_call


def fla_hgrn(kernel: str, inputs: dict):
    """fla's fused_recurrent_hgrn or chunk_hgrn on hgrn's inputs, as gpu_vs_fla.py times them."""
    from fla.ops.hgrn import chunk_hgrn, fused_recurrent_hgrn

    fn = chunk_hgrn if kernel == "chunk" else fused_recurrent_hgrn
    return lambda: fn(inputs["i"], inputs["g"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="*", default=None, help="B,T,H,D (default: gpu_vs_fla's six shapes)")
    ap.add_argument("--ops", nargs="*", default=["simple_gla", "gla", "deltanet", "gated_deltanet"])
    ap.add_argument("--form", default=None, help="the form of every op (default: chunk; mamba: scan)")
    ap.add_argument("--backward", action="store_true", help="forward and backward")
    ap.add_argument("--fla", action="store_true",
                    help="a row for fla's chunk function beside each chunk op's (hgrn: its fused_recurrent and chunk)")
    ap.add_argument("--verbose", action="store_true",
                    help="the aten ops that move the most bytes and every launch's tensor bytes, per row")
    args = ap.parse_args(argv)
    if torch.cuda.is_available():
        print("memory_traffic.py: a GPU is present; time the ops there instead (benchmarks/gpu_vs_fla.py)")
        return 2
    fla_call = None
    if args.fla:
        fla_call = fla_functions()
        if fla_call is None:
            print("memory_traffic.py: --fla needs fla-core (pip install fla-core==0.6.0)")
            return 2
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    what = "forward + backward" if args.backward else "forward"
    print(f"Bytes moved per call ({what}, bf16 inputs), GB (1e9 bytes); kernels: the tensors they are handed\n")
    print("| B, T, H, D | op | form | torch glue GB | glue as passes over q (u) | launches | kernel tensors GB "
          "| of which forward |")
    print("|---|---|---|---|---|---|---|---|")
    for B, T, H, D in shapes:
        for name in args.ops:
            inputs = op_inputs(name, B, T, H, D)
            form = args.form or DEFAULT_FORM.get(name, "chunk")
            op = compiled(name, H, D)
            rows = [(name, form, lambda: op(**inputs, mode=form))]
            if fla_call is not None and form == "chunk" and name not in ("mamba", "hgrn"):
                rows.append((f"{name} (fla)", form, fla_call(name, inputs)))
            if fla_call is not None and name == "hgrn":
                rows += [("hgrn (fla)", kernel, fla_hgrn(kernel, inputs)) for kernel in ("fused_recurrent", "chunk")]
            for label, row_form, call in rows:
                r = measure(call, args.backward)
                passes = r["glue"] / _bytes(next(iter(inputs.values())))      # q, or Mamba's u
                print(f"| {B}, {T}, {H}, {D} | {label} | {row_form} | {r['glue'] / 1e9:.3f} | {passes:.1f} | "
                      f"{len(r['launches'])} | {r['kernel_args'] / 1e9:.4f} | {r['forward_kernel_args'] / 1e9:.4f} |",
                      flush=True)
                if args.verbose:
                    for op_name, n in r["by_op"].most_common(6):
                        print(f"|  |  |  | {op_name}: {n / 1e9:.3f} |  |  |  |  |")
                    for i, (kernel, n) in enumerate(r["launches"]):
                        phase = "fwd" if i < r["forward_launches"] else "bwd"
                        print(f"|  |  |  |  |  | {phase} {kernel} | {n / 1e9:.4f} |  |")
                for x in inputs.values():
                    x.grad = None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
