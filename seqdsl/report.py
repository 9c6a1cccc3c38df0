"""``seqdsl report RESULTS``: a leaderboard (markdown and terminal) and plots from search or train results.

RESULTS is a results.jsonl of ``seqdsl search``, a result.json of ``seqdsl train``, or a folder holding
either. Runs that differ only in their seed are one row: the mean over seeds, with the worst and best
seed beside it. Plots (matplotlib PNGs): accuracy vs state size and accuracy vs parameters, one per
task (a bar from the worst to the best seed where there are several).
"""

from __future__ import annotations

import json
import os
import re

from seqdsl.search import read_results


def load_results(path: str) -> list[dict]:
    if os.path.isdir(path):
        found = []
        for root, _, files in os.walk(path):
            for f in files:
                if f in ("results.jsonl", "result.json"):
                    found += load_results(os.path.join(root, f))
        return found
    if path.endswith(".jsonl"):
        return read_results(path)
    with open(path, encoding="utf-8") as f:
        return [json.load(f)]


def _label(r: dict) -> str:
    cand = r.get("candidate")
    if cand:
        return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in cand.items())
    return r.get("stack", "?")


def _setting(r: dict) -> tuple:
    """Everything that defines a run except its seed: runs equal here are seeds of one configuration."""
    train = r.get("train") or {}
    return (r.get("task", "?"), _label(r), r.get("stack", ""), json.dumps(r.get("task_settings") or {}, sort_keys=True),
            r.get("steps", train.get("steps")), r.get("lr", train.get("lr")), r.get("batch_size", train.get("batch_size")),
            r.get("schedule", train.get("schedule", "cosine")))


def _task_names(results: list[dict]) -> dict[tuple, str]:
    """(task, settings JSON) -> the task's name, with the settings that differ between its runs
    ("mqar seq_len=256 num_kv_pairs=64"), so that one leaderboard ranks only runs of the same setting."""
    by_task: dict[str, list[dict]] = {}
    for r in results:
        by_task.setdefault(r.get("task", "?"), []).append(r.get("task_settings") or {})
    names = {}
    for task, settings in by_task.items():
        keys = sorted({k for s in settings for k in s})
        varying = [k for k in keys if len({json.dumps(s.get(k)) for s in settings}) > 1]
        for s in settings:
            names[(task, json.dumps(s, sort_keys=True))] = " ".join([task] + [f"{k}={s.get(k)}" for k in varying])
    return names


def pool_seeds(results: list[dict], key, score=lambda r: r["eval_accuracy"]) -> list[dict]:
    """Runs with equal ``key(run)`` are seeds of one configuration: one dict per configuration, its first run
    with ``score`` the mean of ``score(run)`` over the seeds, ``low`` / ``high`` the worst and best seed,
    ``seeds`` how many, ``seconds`` the mean wall time."""
    groups: dict = {}
    for r in results:
        groups.setdefault(key(r), []).append(r)
    pooled = []
    for runs in groups.values():
        scores = [score(r) for r in runs]
        pooled.append({**runs[0], "score": sum(scores) / len(scores), "low": min(scores), "high": max(scores),
                       "seeds": len(runs), "seconds": sum(r.get("seconds", 0.0) for r in runs) / len(runs)})
    return pooled


def _score_of(r: dict) -> float:
    return r["eval_accuracy"] if r.get("eval_accuracy") is not None else -r.get("eval_mse", float("nan"))


def leaderboard(results: list[dict]) -> list[dict]:
    """One row per configuration, its seeds pooled: score is the mean over seeds, ``low`` / ``high`` the
    worst and best seed, ``seeds`` how many there were (failed runs are left out). A task run at several
    settings is one task per setting (``mqar seq_len=256``). Rows are sorted by task, then by mean score
    (best first)."""
    pooled = pool_seeds([r for r in results if "error" not in r], _setting, _score_of)
    names = _task_names(pooled)
    rows = []
    for p in pooled:
        task, model, stack, settings, steps, lr, _, _ = _setting(p)
        rows.append({"task": names[(task, settings)], "model": model, "stack": stack,
                     "score": p["score"], "low": p["low"], "high": p["high"], "seeds": p["seeds"],
                     "metric": "accuracy" if p.get("eval_accuracy") is not None else "-mse",
                     "params": p.get("num_parameters", 0), "state": p.get("state_size", 0),
                     "steps": steps, "lr": lr, "seconds": p["seconds"]})
    rows.sort(key=lambda x: (x["task"], -x["score"]))
    return rows


def _score(r: dict) -> str:
    """mean, with the range over seeds when there is more than one."""
    spread = f" [{r['low']:.3f}, {r['high']:.3f}]" if r.get("seeds", 1) > 1 else ""
    return f"{r['score']:.3f}{spread}"


def markdown(rows: list[dict]) -> str:
    lines = ["| task | rank | model | score | seeds | parameters | state size | steps | lr | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    rank, last = 0, None
    for r in rows:
        rank = rank + 1 if r["task"] == last else 1
        last = r["task"]
        lines.append(f"| {r['task']} | {rank} | {r['model']} | {_score(r)} ({r['metric']}) | {r.get('seeds', 1)} | "
                     f"{r['params']:,} | {r['state']:,} | {r['steps']} | {r['lr']} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def terminal(rows: list[dict]) -> str:
    width = max([18] + [len(r["task"]) for r in rows])
    head = f"{'task':{width}s} {'#':>2s} {'score':>7s} {'seeds':>5s} {'params':>9s} {'state':>9s}  model"
    out = [head, "-" * len(head)]
    rank, last = 0, None
    for r in rows:
        rank = rank + 1 if r["task"] == last else 1
        last = r["task"]
        out.append(f"{r['task']:{width}s} {rank:2d} {r['score']:7.3f} {r.get('seeds', 1):5d} {r['params']:9,d} {r['state']:9,d}  {r['model']}")
    return "\n".join(out) + "\n"


def plots(rows: list[dict], folder: str) -> list[str]:
    """accuracy vs state size and vs parameters, per task; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    paths = []
    for task in sorted({r["task"] for r in rows}):
        sub = [r for r in rows if r["task"] == task]
        for key, label in (("state", "state size (numbers per sequence)"), ("params", "parameters")):
            fig, ax = plt.subplots(figsize=(6, 4))
            for r in sub:
                x = max(r[key], 1)
                ax.scatter(x, r["score"])
                if r.get("seeds", 1) > 1:
                    ax.vlines(x, r["low"], r["high"], linewidth=1)
                ax.annotate(r["model"][:30], (x, r["score"]), fontsize=6)
            ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel(sub[0]["metric"])
            ax.set_title(f"{task}: {sub[0]['metric']} vs {key}")
            fig.tight_layout()
            p = os.path.join(folder, f"{re.sub(r'[^A-Za-z0-9_=-]+', '_', task)}_{key}.png")
            fig.savefig(p, dpi=120)
            plt.close(fig)
            paths.append(p)
    return paths


def report(path: str, out: str | None = None, make_plots: bool = True) -> tuple[str, str, list[str]]:
    """(markdown, terminal table, plot paths); writes leaderboard.md and plots under ``out``."""
    rows = leaderboard(load_results(path))
    md, term = markdown(rows), terminal(rows)
    folder = out or (path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path)))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "leaderboard.md"), "w", encoding="utf-8") as f:
        f.write(md)
    pngs = plots(rows, os.path.join(folder, "plots")) if make_plots and rows else []
    return md, term, pngs
