"""Compare our training results with the published numbers of benchmarks.md §2-3 (RESULTS.md's tables).

    python benchmarks/compare_published.py results/          # the result lines kept in the repository

Reads every results.jsonl / result.json under the given paths, names each run by its mixer (the
``blocks.mixer`` edit: attention, gla, deltanet, ...), and prints, per setting, our accuracy beside
the published or calibration number, and the Spearman rank correlation of the two orderings over
the mixers present in both. Seeds of one configuration are pooled (the mean, with the worst and best
seed in brackets); of a mixer's configurations (lr, steps) the best mean is shown. The published
numbers below are copied from ../shared/reference/benchmarks.md (Zoology MQAR calibration runs §3.3;
MAD table as printed in the DeltaNet paper §2.2).
"""

from __future__ import annotations

import json
import re
import sys

sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), ".."))

from seqdsl.report import load_results, pool_seeds  # noqa: E402

# published / calibration accuracies (0-1) per setting and mixer
PUBLISHED = {
    ("mqar", 128, 16, 64): {"source": "benchmarks.md §3.3 calibration (2-core CPU, lr 1e-3, ~2k steps)",
                            "values": {"attention": 0.991, "deltanet": 0.929, "linear_attention": 0.960,
                                       "gla": 0.986, "mamba2": 0.977, "s4d": 0.040}},
    ("mqar", 128, 32, 32): {"source": "benchmarks.md §3.3 calibration (d = 32, 3-minute budget)",
                            "values": {"attention": 0.993, "linear_attention": 0.66, "mamba2": 0.55,
                                       "deltanet": 0.27, "gla": 0.08}},
}
# expected orderings (benchmarks.md §3.3 and §5, the "expected qualitative results"), as ranks
# (higher = better; ties share a rank)
_CAPACITY_ORDER = ("attention ≈ 1.0 > delta rule > GLA / Mamba-2 > linear attention",
                   {"attention": 4, "deltanet": 3, "gated_deltanet": 3, "gla": 2, "mamba2": 2, "linear_attention": 1})
EXPECTED = {
    ("mqar", 128, 32, 32): _CAPACITY_ORDER,
    ("mqar", 256, 64, 64): _CAPACITY_ORDER,   # the second capacity-bound setting (benchmarks.md §5 T3)
    ("mqar", 128, 16, 64): ("every content-selective mixer solves it; LTI SSMs stay near chance",
                            {"attention": 2, "deltanet": 2, "gated_deltanet": 2, "gla": 2, "mamba2": 2,
                             "linear_attention": 2, "mamba": 2, "gated_deltanet+attention_window": 2,
                             "mamba+attention": 2, "s4d": 1}),
    ("parity",): ("only negative / complex-eigenvalue or nonlinear cells solve parity",
                  {"deltanet_negeig": 2, "lstm": 2, "lru": 2, "gla": 1, "mamba2": 1, "deltanet": 1, "attention": 1}),
}
MAD = {   # DeltaNet paper's MAD table (benchmarks.md §2.2), accuracy in %; Mamba-2 has no published row;
          # hyena: the single-head Hyena row (our hyena block has one head)
    "compression": {"attention": 51.6, "mamba": 52.7, "gla": 38.8, "deltanet": 42.2, "hyena": 45.2},
    "fuzzy_in_context_recall": {"attention": 29.8, "mamba": 6.7, "gla": 6.9, "deltanet": 35.7, "hyena": 7.9},
    "in_context_recall": {"attention": 94.1, "mamba": 90.4, "gla": 80.8, "deltanet": 100.0, "hyena": 81.7},
    "memorization": {"attention": 85.2, "mamba": 89.5, "gla": 63.3, "deltanet": 52.8, "hyena": 89.5},
    "noisy_in_context_recall": {"attention": 86.8, "mamba": 90.1, "gla": 81.6, "deltanet": 100.0, "hyena": 78.8},
    "selective_copying": {"attention": 99.6, "mamba": 86.3, "gla": 88.6, "deltanet": 100.0, "hyena": 93.1},
}


def block_name(m: str) -> str:
    """A block definition's short name: attention[_window][_rope], the cell spec's file stem with its header edits
    other than layout (``cell("../gla.seq", heads = 2, gate_norm = 1.0)`` -> "gla (gate_norm=1.0)"), or the
    block kind (``hyena(order = 2)`` -> hyena)."""
    if m.startswith("attention"):
        return "attention" + ("_window" if "window" in m else "") + ("_rope" if re.search(r"rope = 1", m) else "")
    found = re.search(r'cell\("(?:[^"]*/)?([A-Za-z0-9_]+)\.seq"', m)
    kind = re.match(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", m)
    name = found.group(1) if found else kind.group(1) if kind else m
    edits = [f"{k}={v}" for k, v in re.findall(r"\b([A-Za-z_]\w*) = ([^,)]+)", m) if k not in _LAYOUT_EDITS]
    return name + (f" ({', '.join(edits)})" if edits and found else "")


# A cell's header parameters that only set its layout (how the width is split into heads): not in its name.
_LAYOUT_EDITS = {"heads", "dk", "dv", "headdim", "expand"}
# The edits with which a row still stands for the paper's model (the state size, a hyper-parameter of it), so it
# is compared with the published numbers and the expected ordering; any other edit (gate_norm = 1.0: a paper
# constant changed) makes the row a variant, shown but not compared.
_COMPARABLE_EDITS = {"n"}


def comparable(name: str) -> str | None:
    """The published row a table row stands for ("mamba2 (n=64)" -> mamba2), or None (a variant, + conv)."""
    if name.endswith(" + conv"):
        return None
    base, _, edits = name.partition(" (")
    keys = {e.split("=")[0] for e in edits.rstrip(")").split(", ") if e}
    return base if keys <= _COMPARABLE_EDITS else None


def mixer(r: dict) -> str:
    """The run's mixer: the ``blocks.mixer`` edit, or for a ``layers`` edit the mixers of the pattern joined
    with + (hybrids: "gated_deltanet+attention_window"); short convolutions and MLPs are not mixers. The
    MQAR base has a short convolution before each mixer; the MAD base has none, so a MAD run that adds one
    is its own row ("gla + conv")."""
    cand = r.get("candidate") or {}
    if "layers" in cand:
        names, convs = [], False
        for block in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", cand["layers"]):
            definition = cand.get(f"blocks.{block}")
            convs = convs or bool(definition and definition.startswith("shortconv"))
            if definition and not definition.startswith(("shortconv", "mlp", "swiglu")):
                name = block_name(definition)
                names += [name] if name not in names else []
        if not names and "blocks.mixer" in cand:
            names = [block_name(cand["blocks.mixer"])]
        return "+".join(names or ["?"]) + (" + conv" if convs and r.get("task") in MAD else "")
    return block_name(cand.get("blocks.mixer", r.get("stack", "?")))


def ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb) if va and vb else None


def setting(r: dict) -> tuple:
    ts = r.get("task_settings") or {}
    d = int((r.get("candidate") or {}).get("hparams.d_model", 64))
    if r["task"] == "mqar":
        return ("mqar", ts.get("seq_len"), ts.get("num_kv_pairs"), d)
    return (r["task"],)


def table(title: str, ours: dict[str, dict], published: dict[str, float], scale: float = 1.0,
          expected: tuple | None = None) -> str:
    lines = [f"### {title}", "", "| mixer | ours | published | seeds | steps | lr | schedule | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    both_ours, both_pub = [], []
    for name, r in sorted(ours.items(), key=lambda kv: -kv[1]["eval_accuracy"]):
        key = comparable(name)
        pub = published.get(key)
        spread = f" [{scale * r['low']:.3g}, {scale * r['high']:.3g}]" if r.get("seeds", 1) > 1 else ""
        lines.append(f"| {name} | {scale * r['eval_accuracy']:.3g}{spread} | {pub if pub is not None else '-'} | "
                     f"{r.get('seeds', 1)} | {r['train']['steps']} | {r['train']['lr']} | {r.get('schedule', 'cosine')} | {r.get('seconds', 0):.0f} |")
        if pub is not None and key not in [k for k, _ in both_ours]:
            both_ours.append((key, r["eval_accuracy"]))
            both_pub.append(pub)
    rho = spearman([v for _, v in both_ours], both_pub)
    lines += ["", f"Spearman rank correlation with the published numbers over {len(both_pub)} mixers: "
              + (f"{rho:+.2f}" if rho is not None else "n/a (fewer than 3)")]
    if expected:
        text, ranks_expected = expected
        names = [n for n in ours if comparable(n) in ranks_expected]
        rho = spearman([ours[n]["eval_accuracy"] for n in names], [ranks_expected[comparable(n)] for n in names])
        lines.append(f"Expected ordering: {text}; Spearman with it over {len(names)} mixers: "
                     + (f"{rho:+.2f}" if rho is not None else "n/a"))
    return "\n".join(lines + [""])


def result_files(paths: list[str]) -> list[str]:
    """The paths, with every folder among them replaced by the search result files (.jsonl) under it."""
    import pathlib

    out = []
    for p in map(pathlib.Path, paths):
        out += sorted(str(f) for f in p.rglob("*") if f.suffix == ".jsonl") if p.is_dir() else [str(p)]
    return out


def configuration(r: dict) -> tuple:
    """What defines a run except its seed: (setting, candidate, steps, lr, schedule)."""
    return (setting(r), json.dumps(r.get("candidate"), sort_keys=True), r["train"]["steps"], r["train"]["lr"],
            r.get("schedule", "cosine"))


def main(paths: list[str]) -> str:
    results = [r for p in result_files(paths) for r in load_results(p) if "eval_accuracy" in r]
    for r in results:
        if (r.get("train") or {}).get("lr") is None:
            r["train"] = {"steps": r.get("steps"), "lr": r.get("lr")}
    by_setting: dict[tuple, dict[str, dict]] = {}
    for r in pool_seeds(results, configuration):
        r["eval_accuracy"] = r["score"]            # the mean over seeds
        best = by_setting.setdefault(setting(r), {})
        name = mixer(r)
        if name not in best or r["eval_accuracy"] > best[name]["eval_accuracy"]:
            best[name] = r                         # a mixer's best configuration (lr, steps), by its mean over seeds
    out = []
    for key, ours in sorted(by_setting.items(), key=lambda kv: str(kv[0])):
        if key in PUBLISHED:
            p = PUBLISHED[key]
            out.append(table(f"MQAR L={key[1]}, N={key[2]}, d_model={key[3]} (published: {p['source']})",
                             ours, p["values"], expected=EXPECTED.get(key)))
        elif key[0] in MAD:
            out.append(table(f"MAD {key[0]} (published: DeltaNet paper's MAD table, %)", ours, MAD[key[0]], 100.0))
        else:
            name = f"MQAR L={key[1]}, N={key[2]}, d_model={key[3]}" if key[0] == "mqar" else " ".join(map(str, key))
            out.append(table(f"{name} (no published table)", ours, {}, expected=EXPECTED.get(key)))
    if any(k[0] in MAD for k in by_setting):
        names = sorted({mixer(r) for r in results if r["task"] in MAD})
        ours_avg, pub_avg = [], []
        for n in names:
            accs = [by_setting[(t,)][n]["eval_accuracy"] for t in MAD if (t,) in by_setting and n in by_setting[(t,)]]
            if len(accs) == len(MAD) and n in MAD["compression"]:
                ours_avg.append(100 * sum(accs) / len(accs))
                pub_avg.append(sum(MAD[t][n] for t in MAD) / len(MAD))
        rho = spearman(ours_avg, pub_avg)
        out.append(f"MAD average over the six tasks, Spearman over mixers with all six: "
                   f"{rho:+.2f}" if rho is not None else "MAD average: fewer than 3 mixers with all six tasks")
    return "\n".join(out)


if __name__ == "__main__":
    print(main(sys.argv[1:] or ["results"]))
