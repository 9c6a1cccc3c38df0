"""Launch-time tuning of kernel configurations on a GPU: the launch policy's second half.

flash-linear-attention autotunes its kernels (``triton.autotune`` over block sizes, warps and pipeline stages,
timed on the first call at each key) where our launch policy (``triton_runtime.launch_config``) picks one
configuration from the shapes. The decorator cannot sit on our kernels: with several configurations it fails
without a GPU, and under ``TRITON_INTERPRET=1`` exactly one configuration must run. So the choice is made here,
outside the kernels, at the call sites that opt in:

    triton_tune.launch(kernel, grid, args, meta, alternatives)

runs ``kernel[grid(cfg)](*args, **cfg)``. ``meta`` is the policy's configuration (the kernel's keyword
arguments, constexprs and ``num_warps`` / ``num_stages`` included); ``alternatives`` are partial dicts laid over
it (other blocks, warps, stages). On a CUDA device, the first launch at a key (the kernel, its constexprs and the
policy's blocks, its tensors' dtypes, the device; not T or the batch) times every candidate with
``triton.testing.do_bench`` and keeps the fastest for the process; candidates that fail to compile or to launch
(too much shared memory) are skipped, the policy's own failing is an error as before. Everywhere else (CPU,
the interpreter, ``SEQDSL_AUTOTUNE=0``, ``torch.use_deterministic_algorithms(True)``: a choice made by timings
would make the sums' order vary from process to process; inside a CUDA graph capture, where nothing can be timed)
the policy's configuration runs, untimed.

A call site may only offer alternatives that leave the kernel's outputs where they are (its grid may change with
its blocks; the shapes of its buffers may not). The candidates are timed on copies of the launch's tensors (made
once per key), so a kernel that adds into its buffers (atomics into zeroed gradients) is tuned as safely as one
that stores: the real launch then runs once, with the choice, on the real buffers.

Choices are kept on disk too, as fla's autotune cache does: ``<seqdsl cache dir>/tuning/<GPU>-triton<version>.json``
maps each key to what the chosen configuration changed in the policy's; a later process reuses an entry as long
as it is still one of the key's candidates (``SEQDSL_AUTOTUNE_CACHE=0``: neither read nor written).

``SEQDSL_PRINT_TUNING=1`` prints each choice to stderr; ``choices()`` returns them (benchmarks/gpu_vs_fla.py
prints them after its table). Tests run every candidate under the interpreter through ``choosing``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from typing import Callable

import torch

from seqdsl.runtime import triton_runtime as _rt

Config = dict          # a kernel's keyword arguments: constexprs (blocks included), num_warps, num_stages

EVERY = -1            # a chooser's answer (``choosing``): run every candidate in turn

_BEST: dict[tuple, Config] = {}
_CHOICES: list[dict] = []
_DISK: dict[str, dict[str, dict]] = {}     # file -> {key: what the choice changed}, as loaded or written
_CHOOSER: Callable[[str, list[Config]], int] | None = None


def _name(kernel) -> str:
    return getattr(getattr(kernel, "fn", kernel), "__name__", str(kernel))


def candidates(meta: Config, alternatives=()) -> list[Config]:
    """The policy's configuration, then each alternative laid over it, without repeats."""
    out: list[Config] = []
    for cfg in (meta, *({**meta, **alt} for alt in alternatives)):
        if cfg not in out:
            out.append(cfg)
    return out


def tuning_on(device: torch.device) -> bool:
    """Whether launches on ``device`` time their candidates (see the module docstring)."""
    return (device.type == "cuda" and not _rt.interpreting()
            and os.environ.get("SEQDSL_AUTOTUNE", "1") not in ("", "0")
            and not torch.are_deterministic_algorithms_enabled()
            and not _capturing())


def _capturing() -> bool:
    """Whether a CUDA graph is being captured (nothing can be timed inside one)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _cuda_ms(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=5, rep=20, return_mode="median"))


def fastest(configs: list[Config], run: Callable[[Config], None],
            timer: Callable[[Callable[[], None]], float] = _cuda_ms) -> tuple[Config, list[tuple[Config, object]]]:
    """(the fastest of configs, [(config, milliseconds or the error that ruled it out)]). run(cfg) launches the
    kernel with cfg; timer(fn) -> milliseconds. configs[0] (the policy's) failing is raised; any other failing is
    skipped."""
    timings: list[tuple[Config, object]] = []
    for i, cfg in enumerate(configs):
        try:
            timings.append((cfg, timer(lambda cfg=cfg: run(cfg))))
        except Exception as e:  # noqa: BLE001 - an alternative out of resources (or not compiling) is skipped
            if i == 0:
                raise
            timings.append((cfg, e))
    timed = [(cfg, ms) for cfg, ms in timings if not isinstance(ms, Exception)]
    best = min(timed, key=lambda pair: pair[1])[0]
    return best, timings


def launch(kernel, grid: Callable[[Config], tuple], args: tuple, meta: Config,
           alternatives: Callable[[], list[Config]] = list) -> None:
    """kernel[grid(cfg)](*args, **cfg) with cfg the policy's ``meta`` or, where ``tuning_on``, the fastest of the
    candidates at this key (timed once per process). args: the positional arguments (tensors, T, ...);
    alternatives(): the partial configurations laid over meta, called only the first time a key is met (at fla's
    smallest shapes a forward's kernels take ~0.3 ms, so the few microseconds of host time per launch count: the
    steady state costs a key and a dict lookup, about 3 us, benchmarks/host_overhead.py)."""
    if _CHOOSER is None:                   # the path of every call: no closure, no candidate list
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        # meta's values in its keys' order (a call site passes them in one order, and no tensor: their hash is their
        # identity), the tensors' dtypes, the device. A key already tuned is looked up first (entries are only made
        # where tuning was on)
        key = (kernel, tuple(meta.values()), tuple([t.dtype for t in tensors]), tensors[0].device if tensors else None)
        best = _BEST.get(key)
        if best is None:
            if not tensors or not tuning_on(key[3]):
                kernel[grid(meta)](*args, **meta)
                return
            scratch = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
            best = _BEST[key] = _choose(kernel, key, meta, candidates(meta, alternatives()),
                                        lambda cfg: kernel[grid(cfg)](*scratch, **cfg))
            del scratch
        kernel[grid(best)](*args, **best)
        return
    configs = candidates(meta, alternatives())
    pick = _CHOOSER(_name(kernel), configs)
    for cfg in (configs if pick == EVERY else [configs[min(pick, len(configs) - 1)]]):
        kernel[grid(cfg)](*args, **cfg)


def _choose(kernel, key: tuple, meta: Config, configs: list[Config], run) -> Config:
    """The configuration for a key met the first time in this process: stored by an earlier one, else timed."""
    if len(configs) == 1:
        return configs[0]
    name = _name(kernel)
    disk_key = json.dumps([name, sorted(meta.items()), [str(d) for d in key[2]], str(key[3])], default=str)
    gpu = torch.cuda.get_device_name(key[3])
    stored = _stored(gpu, disk_key, meta, configs)
    if stored is not None:
        _record(name, meta, stored, [], source="stored")
        return stored
    best, timings = fastest(configs, run)
    _record(name, meta, best, timings)
    _store(gpu, disk_key, _differs(best, meta))
    return best


def _disk_file(gpu: str):
    """The file of this GPU (its name) and Triton version, or None where the disk cache is off."""
    if os.environ.get("SEQDSL_AUTOTUNE_CACHE", "1") in ("", "0"):
        return None
    import triton

    from seqdsl.cache import cache_dir

    gpu = re.sub(r"[^A-Za-z0-9._-]+", "_", gpu)
    return cache_dir() / "tuning" / f"{gpu}-triton{triton.__version__}.json"


def _entries(path) -> dict:
    if str(path) not in _DISK:
        try:
            _DISK[str(path)] = json.loads(path.read_text())
        except (OSError, ValueError):      # none yet, or unreadable: tune again
            _DISK[str(path)] = {}
    return _DISK[str(path)]


def _stored(gpu: str, disk_key: str, meta: Config, configs: list[Config]) -> Config | None:
    """The choice a previous process stored for the key, if it is still one of the candidates."""
    path = _disk_file(gpu)
    if path is None:
        return None
    changed = _entries(path).get(disk_key)
    if not isinstance(changed, dict):
        return None
    cfg = {**meta, **changed}
    return cfg if cfg in configs else None


def _store(gpu: str, disk_key: str, changed: dict) -> None:
    """Add the choice to the file. Its entries are read again first: processes tuning at the same time (a
    data-parallel run's ranks) keep each other's choices, the last writer's winning for a key both made."""
    path = _disk_file(gpu)
    if path is None:
        return
    from seqdsl.cache import write_atomic

    _DISK.pop(str(path), None)
    entries = _entries(path)
    entries[disk_key] = changed
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(entries, indent=1, sort_keys=True))
    except OSError as e:                   # a read-only cache only costs the next process a tuning
        print(f"seqdsl tuning: could not write {path}: {e}", file=sys.stderr)


def _differs(cfg: Config, meta: Config) -> dict:
    return {k: v for k, v in cfg.items() if meta.get(k) != v}


def _record(name: str, meta: Config, best: Config, timings, source: str = "timed") -> None:
    shown = {k: meta[k] for k in ("K", "V", "BT", "GATE", "DELTA", "GATED", "PREC") if k in meta}
    entry = {"kernel": name, "key": shown, "policy": {k: meta.get(k) for k in ("BK", "BV", "num_warps",
                                                                               "num_stages") if k in meta},
             "chosen": _differs(best, meta), "source": source,
             "ms": [(_differs(cfg, meta), ms if isinstance(ms, float) else f"{type(ms).__name__}")
                    for cfg, ms in timings]}
    _CHOICES.append(entry)
    if os.environ.get("SEQDSL_PRINT_TUNING", "0") not in ("", "0"):
        print(f"seqdsl tuning: {name} {shown}: {entry['chosen'] or 'the policy'} ({source}) of "
              + ", ".join(f"{c or 'policy'} {m if isinstance(m, str) else f'{m:.3f} ms'}" for c, m in entry["ms"]),
              file=sys.stderr)


def choices() -> list[dict]:
    """Every tuning made in this process: kernel, key, the policy's blocks and warps, what the tuner changed
    ({} = kept the policy's), its source ("timed" here, or "stored" by an earlier process: no timings) and each
    candidate's milliseconds (or why it was ruled out)."""
    return list(_CHOICES)


def forget() -> None:
    """Drop the choices held in memory (the next launch at each key reads the disk cache, else times again)."""
    _BEST.clear()
    _CHOICES.clear()
    _DISK.clear()


@contextlib.contextmanager
def choosing(chooser: Callable[[str, list[Config]], int]):
    """Inside, every tuned launch runs candidate ``chooser(kernel name, candidates)`` (clipped to the last; ``EVERY``:
    each in turn), on any device, untimed: tests run each candidate under the interpreter,
    benchmarks/gpu_compile_check.py compiles each for a GPU."""
    global _CHOOSER
    saved, _CHOOSER = _CHOOSER, chooser
    try:
        yield
    finally:
        _CHOOSER = saved
