"""``seqdsl search``: architecture search by editing a stack spec.

A search file (TOML) names a base stack, a task and a space of edits:

    name = "mqar-mixers"
    base = "examples/stacks/gla.seq"          # relative to the search file
    task = "mqar"
    task_settings = { seq_len = 64, num_kv_pairs = 8 }
    steps = 300
    batch_size = 32
    seeds = [0]

    [space]                                   # every key is one edit of the base spec
    "blocks.mixer" = ['cell("../gla.seq", heads = 2)', 'cell("../mamba.seq")', 'attention(heads = 2)']
    "hparams.d_model" = [32, 64]              # a stack hyper-parameter
    "layers" = ["[mixer, mlp] * depth", "[mixer, mixer, mlp]"]   # the layer pattern
    lr = [1e-3, 3e-3]                         # training settings are edits too (lr, steps, batch_size,
                                              # schedule = "cosine" | "constant"; also top-level keys)
    task = ["mqar", "selective_copying"]       # and so is the task (then `task = ...` above is optional);
                                              # per-task settings: [task_settings.selective_copying]

    [strategy]
    kind = "grid"                             # grid | random | halving
    samples = 8                               # random: how many candidates
    rungs = [100, 300]                        # halving: steps per rung; keep the best 1/eta each rung
    eta = 2

Every candidate's fully resolved stack spec is saved beside its result (cell paths made absolute).
Results are appended atomically, one JSON line per run, to ``<out>/results.jsonl``; a rerun skips
runs already there, so a killed search loses nothing. Runs go to local worker processes
(``--workers``) or, with ``--executor ray``, to a Ray cluster (``pip install 'seqdsl[ray]'``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import re
import sys
import tomllib
from dataclasses import dataclass

from seqdsl.errors import SpecError

TRAIN_KEYS = ("lr", "steps", "batch_size", "schedule")


@dataclass(frozen=True)
class Candidate:
    edits: tuple[tuple[str, object], ...]

    def as_dict(self) -> dict:
        return dict(self.edits)


@dataclass
class SearchSpec:
    name: str
    path: str
    base: str
    task: str
    task_settings: dict
    steps: int
    batch_size: int
    lr: float
    seeds: list
    space: dict
    strategy: dict
    schedule: str = "cosine"                  # learning-rate schedule (seqdsl.train.SCHEDULES)


def load_search(path: str) -> SearchSpec:
    """Read and validate a search file (errors name the file and the key)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise SpecError(f"cannot read the search file: {e.strerror}", path=path) from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"not valid TOML: {e}", path=path) from None
    if isinstance(data.get("space", {}).get("task"), list) and data["space"]["task"] and "task" not in data:
        data["task"] = data["space"]["task"][0]
    for key in ("base", "task"):
        if key not in data:
            raise SpecError(f"the search file needs '{key} = ...'", path=path)
    base = os.path.join(os.path.dirname(os.path.abspath(path)), data["base"])
    space = data.get("space", {})
    for key, values in space.items():
        if not isinstance(values, list) or not values:
            raise SpecError(f"space.{key} must be a non-empty list of alternatives", path=path)
        if not (key in TRAIN_KEYS or key in ("layers", "task") or key.startswith(("blocks.", "hparams.", "cell."))):
            raise SpecError(f"unknown edit '{key}': use blocks.NAME, hparams.NAME, cell.BLOCK.HPARAM, layers, task, "
                            f"or one of {', '.join(TRAIN_KEYS)}", path=path)
        if key == "task":
            from seqdsl.tasks import TASKS

            unknown = [t for t in values if str(t).strip().lower().replace("-", "_") not in TASKS]
            if unknown:
                raise SpecError(f"space.task: unknown task(s) {unknown}; available: {', '.join(TASKS)}", path=path)
    from seqdsl.train import SCHEDULES

    for sched in [data.get("schedule", "cosine")] + list(space.get("schedule", [])):
        if sched not in SCHEDULES:
            raise SpecError(f"schedule must be one of {', '.join(SCHEDULES)}; got {sched!r}", path=path)
    strategy = data.get("strategy", {"kind": "grid"})
    if strategy.get("kind", "grid") not in ("grid", "random", "halving"):
        raise SpecError(f"strategy.kind must be grid, random or halving; got {strategy.get('kind')!r}", path=path)
    return SearchSpec(data.get("name", os.path.splitext(os.path.basename(path))[0]), path, base, data["task"],
                      data.get("task_settings", {}), int(data.get("steps", 300)), int(data.get("batch_size", 32)),
                      float(data.get("lr", 1e-3)), list(data.get("seeds", [0])), space, strategy,
                      str(data.get("schedule", "cosine")))


def candidates(s: SearchSpec) -> list[Candidate]:
    """The candidates of the strategy (grid: all combinations; random: a seeded sample of them)."""
    keys = sorted(s.space)
    grid = [Candidate(tuple(zip(keys, combo))) for combo in itertools.product(*(s.space[k] for k in keys))]
    if s.strategy.get("kind") == "random":
        n = int(s.strategy.get("samples", 8))
        rng = random.Random(int(s.strategy.get("seed", 0)))
        grid = rng.sample(grid, min(n, len(grid)))
    return grid


def resolve(s: SearchSpec, cand: Candidate) -> tuple[str, dict]:
    """The candidate's full stack spec text (cell paths absolute) and its training settings."""
    from seqdsl import ir
    from seqdsl.frontend import parse
    from seqdsl.printer import expr

    with open(s.base, encoding="utf-8") as f:
        base = parse(f.read(), s.base)
    if not isinstance(base, ir.Stack):
        raise SpecError("the base of a search must be a stack spec", path=s.base)
    hparams = {h.name: expr(h.default) for h in base.hparams}
    blocks = {b.name: expr(b.value) for b in base.blocks}
    layers = expr(base.layers)
    train = {"lr": s.lr, "steps": s.steps, "batch_size": s.batch_size}
    if s.schedule != "cosine":          # (absent for the default, so earlier run ids stay valid)
        train["schedule"] = s.schedule
    for key, value in cand.edits:
        if key in TRAIN_KEYS:
            train[key] = value
        elif key == "layers":
            layers = str(value)
        elif key.startswith("hparams."):
            hparams[key.split(".", 1)[1]] = str(value)
        elif key.startswith("blocks."):
            blocks[key.split(".", 1)[1]] = str(value)
        elif key.startswith("cell."):
            _, block, hp = key.split(".", 2)
            if block not in blocks:
                raise SpecError(f"cell.{block}: no block '{block}' in the base stack", path=s.path)
            call = blocks[block].rstrip()
            blocks[block] = call[:-1] + f", {hp} = {value})"
    base_dir = os.path.dirname(os.path.abspath(s.base))

    def absolute(m: re.Match) -> str:
        p = m.group(1)
        return f'cell("{p if os.path.isabs(p) else os.path.normpath(os.path.join(base_dir, p))}"'

    blocks = {k: re.sub(r'cell\("([^"]*)"', absolute, v) for k, v in blocks.items()}
    header = ", ".join(f"{k} = {v}" for k, v in hparams.items())
    lines = [f"# resolved by seqdsl search '{s.name}' from {s.base}: {json.dumps(cand.as_dict())}",
             f"stack {base.name}({header}):", "  blocks:"]
    lines += [f"    {k} = {v}" for k, v in blocks.items()]
    lines.append(f"  layers = {layers}")
    return "\n".join(lines) + "\n", train


def task_of(s: SearchSpec, cand: Candidate) -> tuple[str, dict]:
    """The candidate's task and its settings: ``[task_settings.NAME]`` tables when the task is searched."""
    task = str(cand.as_dict().get("task", s.task))
    per_task = s.task_settings.get(task)
    if isinstance(per_task, dict):
        return task, dict(per_task)
    if any(isinstance(v, dict) for v in s.task_settings.values()):
        return task, {}
    return task, dict(s.task_settings) if task == s.task else {}


def run_id(spec_text: str, train: dict, task: str, task_settings: dict, seed: int) -> str:
    payload = json.dumps({"spec": spec_text.split("\n", 1)[1], "train": train, "task": task,
                          "task_settings": task_settings, "seed": seed}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _run_one(job: dict) -> dict:
    """Train one candidate (in a worker process). Never raises: failures become error results."""
    from seqdsl.api import loads
    from seqdsl.train import train

    try:
        cs = loads(job["spec_text"], path=job["spec_path"])
        result = train(cs, job["task"], steps=job["train"]["steps"], lr=job["train"]["lr"],
                       batch_size=job["train"]["batch_size"], seed=job["seed"], task_settings=job["task_settings"],
                       schedule=job["train"].get("schedule", "cosine"),
                       progress=f"  run {job['id'][:8]}", threads=job.get("threads"))
    except Exception as e:   # noqa: BLE001 - a failed candidate is a result, not a crash of the search
        result = {"error": f"{type(e).__name__}: {e}"}
    result.update(id=job["id"], candidate=job["candidate"], spec_path=job["spec_path"], rung=job.get("rung", 0),
                  train=job["train"], seed=job["seed"], task=job["task"])
    return result


def _append(path: str, record: dict) -> None:
    """Append one JSON line in a single write, flushed to disk (a kill loses at most the run in flight)."""
    line = json.dumps(record, sort_keys=True) + "\n"
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, "rb") as f:                 # a kill can leave half a line: start on a fresh one
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_results(path: str) -> list[dict]:
    out = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue   # a line cut by a kill: that run will be redone
    return out


def _metric(r: dict) -> float:
    if "eval_accuracy" in r:
        return r["eval_accuracy"]
    if "eval_mse" in r:
        return -r["eval_mse"]
    return float("-inf")


def search(path: str, out: str | None = None, workers: int = 2, executor: str = "local", log=sys.stderr,
           threads: int | None = None) -> str:
    """Run (or resume) a search; returns the results file. ``threads``: torch threads per run (default:
    the cores divided among the workers; more threads than cores makes torch much slower, not faster)."""
    s = load_search(path)
    out = out or os.path.join("runs", f"search-{s.name}")
    os.makedirs(os.path.join(out, "specs"), exist_ok=True)
    results_path = os.path.join(out, "results.jsonl")
    done = {r["id"] for r in read_results(results_path) if "id" in r}
    cands = candidates(s)
    rungs = [int(x) for x in s.strategy.get("rungs", [])] if s.strategy.get("kind") == "halving" else [None]
    eta = int(s.strategy.get("eta", 2))
    threads = threads or max(1, (os.cpu_count() or 2) // max(1, workers))
    survivors = cands
    for rung, rung_steps in enumerate(rungs):
        jobs = []
        for cand in survivors:
            spec_text, train = resolve(s, cand)
            if rung_steps is not None:
                train = dict(train, steps=rung_steps)
            task, task_settings = task_of(s, cand)
            for seed in s.seeds:
                rid = run_id(spec_text, train, task, task_settings, seed)
                spec_path = os.path.join(out, "specs", f"{rid}.seq")
                if not os.path.exists(spec_path):
                    from seqdsl.cache import write_atomic
                    import pathlib

                    write_atomic(pathlib.Path(spec_path), spec_text)
                job = {"id": rid, "spec_text": spec_text, "spec_path": spec_path, "train": train, "seed": seed,
                       "task": task, "task_settings": task_settings, "candidate": cand.as_dict(), "rung": rung,
                       "threads": threads}
                if rid not in done:
                    jobs.append(job)
        total = len(survivors) * len(s.seeds)
        print(f"search {s.name}: rung {rung}: {total} runs, {total - len(jobs)} already done, {len(jobs)} to run "
              f"({executor}, {workers} workers)", file=log)
        for job in jobs:
            print(f"  run {job['id'][:8]}: {job['candidate']} seed {job['seed']}", file=log)
        for i, result in enumerate(_execute(jobs, workers, executor), 1):
            _append(results_path, result)
            done.add(result["id"])
            metric = "error" if "error" in result else f"{_metric(result):.3f}"
            print(f"  [{i}/{len(jobs)}] run {result['id'][:8]} {result['candidate']} -> {metric}", file=log)
        if rung_steps is not None and rung < len(rungs) - 1:
            by_cand = {}
            for r in read_results(results_path):
                if r.get("rung") == rung:
                    key = json.dumps(r["candidate"], sort_keys=True)
                    by_cand.setdefault(key, []).append(_metric(r))
            ranked = sorted(survivors, key=lambda c: -max(by_cand.get(json.dumps(c.as_dict(), sort_keys=True),
                                                                       [float("-inf")])))
            survivors = ranked[:max(1, len(ranked) // eta)]
    return results_path


def _execute(jobs: list[dict], workers: int, executor: str):
    if not jobs:
        return
    if executor == "ray":
        try:
            import ray
        except ImportError:
            raise SpecError("--executor ray needs Ray: pip install 'seqdsl[ray]'") from None
        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS") or None, num_cpus=None if os.environ.get("RAY_ADDRESS")
                     else workers, include_dashboard=False, log_to_driver=False)
        remote = ray.remote(num_cpus=1)(_run_one)
        pending = [remote.remote(j) for j in jobs]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])
        return
    if workers <= 1:
        for j in jobs:
            yield _run_one(j)
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_run_one, j) for j in jobs]
        for f in as_completed(futures):
            yield f.result()
