"""The ``seqdsl`` command line. Thin: parses arguments and calls the API.

Errors in a spec print ``file:line:col: message``, the source line and a caret, and exit 2.
``check``, ``explain`` and ``graph`` never import torch or triton, so they answer at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from seqdsl.errors import SpecError

EXIT_SPEC_ERROR = 2


def _hparams(pairs: list[str]) -> dict[str, int | float]:
    out: dict[str, int | float] = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not sep:
            raise SpecError(f"-D takes NAME=VALUE; got '{pair}'")
        try:
            out[name.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            raise SpecError(f"-D {name}: '{value}' is not a number") from None
    return out


def _load(path: str, hparams: dict):
    from seqdsl.api import load

    return load(path, **hparams)


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def explain_text(model) -> str:
    """The human-readable analysis ``seqdsl explain`` prints."""
    a = model.analysis()
    c = model.checked
    axis = c.cell_axis
    lines = [f"model {model.name}  ({model.path})"]
    if model.ir.cell is None:
        lines.append("  no cell: nothing recurrent")
        return "\n".join(lines) + "\n"
    lines.append(f"transition class: {a.cls}")
    lines.append(f"  {a.description}")
    over = f" over {axis} ({c.dim_sizes[axis]})" if axis else ""
    lines.append(f"cell{over}:")
    for st in model.ir.cell.states:
        t = c.cell_types[st.name]
        lines.append(f"  state {st.name}: {t.show()}")
    lines.append(f"  op inputs: {', '.join(c.op_inputs)}"
                 + (f"   args: {', '.join(f'{x.name}={c.values[x.name]:g}' for x in model.ir.cell.args)}"
                    if model.ir.cell.args else ""))
    lines.append(f"  readout: {', '.join(c.readouts)}")
    lines.append(f"hoisted (token-parallel): {', '.join(a.hoisted) or '-'}")
    lines.append(f"recurrent core: {', '.join(a.core) or '-'}")
    per_head = f"per element of {axis}" if axis else "per layer"
    lines.append(f"state size: {_fmt_int(a.state_size_per_head)} numbers {per_head}, "
                 f"{_fmt_int(a.state_size_per_token)} per sequence and layer (complex counts 2)")
    from seqdsl.codegen.triton_module import triton_chunk_gap
    from seqdsl.plan import plan

    lines.append("forms (what seqdsl.compile generates; the Triton backend's gaps under it):")
    p = plan(c, a)
    for form in ("recurrent", "scan", "chunk"):
        if form in p.modes:
            lines.append(f"  {form:9s} yes   ~{_fmt_int(a.flops_per_token[form])} FLOPs/token")
            gap = triton_chunk_gap(c, p) if form == "chunk" else None
            if gap:
                lines.append(f"  {'':9s}       (not in the Triton backend: {gap})")
        elif form in a.forms:
            lines.append(f"  {form:9s} no    the {a.cls} class admits it; {p.why_not.get(form, 'not generated')}")
        else:
            lines.append(f"  {form:9s} no    {a.not_forms.get(form, '')}")
    return "\n".join(lines) + "\n"


def cmd_check(args) -> int:
    status = 0
    for path in args.specs:
        try:
            m = _load(path, _hparams(args.define))
            if hasattr(m, "layers"):
                print(f"ok  {path}: stack {m.name}, {len(m.layers)} layers ({', '.join(m.layers)})")
            else:
                print(f"ok  {path}: model {m.name}, inputs {', '.join(m.inputs) or '-'}")
        except SpecError as e:
            print(e.located(path, None).render(), file=sys.stderr)
            status = EXIT_SPEC_ERROR
    return status


def cmd_explain(args) -> int:
    m = _load(args.spec, _hparams(args.define))
    if args.json:
        print(json.dumps(analysis_json(m), indent=2))
    else:
        sys.stdout.write(explain_text(m))
    return 0


def analysis_json(m) -> dict:
    """The analysis as JSON-ready data (``explain --json`` and ``compile`` write it). "forms": what the transition
    class admits; "generated_forms": what seqdsl.compile generates (a form the class admits can be missing where the
    planner does not take the cell's way of writing it: "not_generated" says why)."""
    from seqdsl.codegen.triton_module import triton_chunk_gap
    from seqdsl.plan import plan

    a = m.analysis()
    p = plan(m.checked, a) if m.ir.cell is not None else None
    generated = [f for f in p.modes if f in a.forms] if p is not None else []
    return {
        "model": m.name,
        "class": a.cls,
        "description": a.description,
        "states": [{"state": s.state, "class": s.cls, "axes": [str(x) for x in s.axes], "rank": s.rank,
                    "base": s.base, "data_dependent": s.data_dependent, "complex": s.complex,
                    "coupled_to": list(s.coupled_to)} for s in a.states],
        "forms": list(a.forms),
        "not_forms": a.not_forms,
        "generated_forms": generated,
        "not_generated": {f: p.why_not.get(f, "") for f in a.forms if f not in generated} if p is not None else {},
        "triton_chunk_gap": triton_chunk_gap(m.checked, p) if p is not None else None,
        "inputs": list(m.inputs),
        "hoisted": list(a.hoisted),
        "core": list(a.core),
        "state_size_per_head": a.state_size_per_head,
        "state_size_per_token": a.state_size_per_token,
        "flops_per_token": a.flops_per_token,
    }


def cmd_graph(args) -> int:
    from seqdsl.graph import build_graph, to_dot, to_json

    m = _load(args.spec, _hparams(args.define))
    g = build_graph(m.checked)
    text = to_dot(g, m.name) if args.format == "dot" else json.dumps(to_json(g), indent=2) + "\n"
    if args.output:
        _write(args.output, text)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _write(path: str, text: str) -> None:
    """Write a file atomically (a reader never sees half of it)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def cmd_compile(args) -> int:
    from seqdsl.graph import build_graph, to_json

    m = _load(args.spec, _hparams(args.define))
    out = args.output
    os.makedirs(out, exist_ok=True)
    written = {
        f"{m.name}.ir.json": m.ir.model_dump_json(indent=2) + "\n",
        f"{m.name}.graph.json": json.dumps(to_json(build_graph(m.checked)), indent=2) + "\n",
        f"{m.name}.analysis.json": json.dumps(analysis_json(m), indent=2) + "\n",
    }
    for name, text in written.items():
        _write(os.path.join(out, name), text)
        print(f"wrote {os.path.join(out, name)}")
    from seqdsl import backends

    for path in backends.emit(m, args.backend, out):
        print(f"wrote {path}")
    return 0


def _settings(pairs) -> dict:
    out = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not sep:
            raise SpecError(f"--set takes NAME=VALUE; got '{pair}'")
        try:
            out[name] = int(value)
        except ValueError:
            try:
                out[name] = float(value)
            except ValueError:
                out[name] = value
    return out


def cmd_train(args) -> int:
    from seqdsl.train import train

    out = args.out or os.path.join("runs", f"{os.path.splitext(os.path.basename(args.stack))[0]}-{args.task}")
    try:
        result = train(args.stack, args.task, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                       seed=args.seed, out_dir=out, task_settings=_settings(args.set),
                       stack_hparams=_hparams(args.define), threads=args.threads, schedule=args.schedule)
    except (ValueError, FloatingPointError) as e:
        print(f"seqdsl train: {e}", file=sys.stderr)
        return 2
    metric = "eval_accuracy" if "eval_accuracy" in result else "eval_mse"
    print(f"{result['stack']} on {result['task']}: {metric} {result[metric]:.4f}, train loss "
          f"{result['train_loss']:.4f}, {result['num_parameters']:,} parameters, state {result['state_size']:,}, "
          f"{result['seconds']:.0f} s ({result['tokens_per_s']:,.0f} tok/s)")
    print(f"wrote {out}/result.json and {out}/checkpoint.pt")
    return 0


def cmd_search(args) -> int:
    from seqdsl.search import search

    path = search(args.search, out=args.out, workers=args.workers, executor=args.executor, threads=args.threads)
    print(f"results: {path} (rerun the same command to resume; `seqdsl report {path}` for the leaderboard)")
    return 0


def cmd_report(args) -> int:
    from seqdsl.report import report

    if not os.path.exists(args.results):
        raise SpecError(f"no results at {args.results}")
    md, term, pngs = report(args.results, out=args.out, make_plots=not args.no_plots)
    sys.stdout.write(md if args.markdown else term)
    for p in pngs:
        print(f"wrote {p}")
    return 0


def cmd_zoo(args) -> int:
    from seqdsl import zoo

    if args.run_tests:
        import subprocess

        if os.path.exists(args.results):
            os.remove(args.results)   # outcomes of renamed or removed tests must not survive
        status = subprocess.call([sys.executable, "-m", "pytest", "-q", "tests"])
        if status not in (0, 1):
            print(f"pytest exited with {status}", file=sys.stderr)
    text = zoo.main(args.examples, args.output, args.results)
    if args.output:
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seqdsl",
        description="seqdsl: compile .seq specs of recurrent sequence models into recurrent, scan and chunkwise forms.",
        epilog="Errors in a spec print file:line:col, the source line and a caret, and exit with status 2.")
    p.add_argument("--version", action="version", version="seqdsl 0.1.0")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def spec_cmd(name, help_text, func, many=False):
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if many:
            sp.add_argument("specs", nargs="+", metavar="SPEC", help=".seq files")
        else:
            sp.add_argument("spec", metavar="SPEC", help="a .seq file")
        sp.add_argument("-D", dest="define", action="append", metavar="NAME=VALUE",
                        help="override a header hyper-parameter (repeatable), e.g. -D heads=8")
        sp.set_defaults(func=func)
        return sp

    spec_cmd("check", "parse and validate specs; print one line per spec", cmd_check, many=True)
    sp = spec_cmd("explain", "print the analysis: transition class, hoisted streams, recurrent core, state size, "
                  "forms with FLOPs per token, and why a form is not available", cmd_explain)
    sp.add_argument("--json", action="store_true", help="print the analysis as JSON")
    sp = spec_cmd("graph", "write the dependency graph (a node per definition, an edge per read)", cmd_graph)
    sp.add_argument("--format", choices=("dot", "json"), default="dot", help="output format (default dot)")
    sp.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    sp = spec_cmd("compile", "write the IR (JSON), the graph, the analysis and the generated code into a folder",
                  cmd_compile)
    sp.add_argument("-o", "--output", metavar="DIR", required=True, help="folder to write into")
    sp.add_argument("--backend", choices=("torch", "triton", "none"), default="torch",
                    help="code generator (default torch; none writes only IR, graph and analysis)")
    sp = sub.add_parser("train", help="train a stack on a synthetic task (CPU), evaluate, save checkpoint and result",
                        description="Train a stack spec on a synthetic task with a progress bar (loss, accuracy, "
                                    "tokens/s, ETA); evaluate; write checkpoint.pt and result.json.")
    sp.add_argument("stack", metavar="STACK", help="a stack .seq file")
    sp.add_argument("--task", required=True, help="mqar, in_context_recall, fuzzy_in_context_recall, "
                    "noisy_in_context_recall, selective_copying, compression, memorization, induction_heads, "
                    "parity, adding")
    sp.add_argument("--steps", type=int, default=1000)
    sp.add_argument("--lr", type=float, default=1e-3)
    sp.add_argument("--batch-size", type=int, default=32)
    sp.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                    help="learning-rate schedule after the warmup: cosine decay to 0, or constant")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    sp.add_argument("--out", help="output folder (default runs/STACK-TASK)")
    sp.add_argument("--set", action="append", metavar="NAME=VALUE", help="a task setting, e.g. --set num_kv_pairs=16")
    sp.add_argument("-D", dest="define", action="append", metavar="NAME=VALUE",
                    help="override a stack hyper-parameter, e.g. -D d_model=128")
    sp.set_defaults(func=cmd_train)
    sp = sub.add_parser("search", help="architecture search by editing a stack spec (grid, random, successive halving)",
                        description="Run or resume a search file (TOML: base stack, task, space of spec edits, "
                                    "strategy). Results are appended to OUT/results.jsonl; rerunning skips finished runs.")
    sp.add_argument("search", metavar="SEARCH_SPEC", help="a search .toml file")
    sp.add_argument("--out", help="output folder (default runs/search-NAME)")
    sp.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    sp.add_argument("--threads", type=int, help="torch threads per run (default: cores / workers)")
    sp.add_argument("--executor", choices=("local", "ray"), default="local",
                    help="local processes, or a Ray cluster (RAY_ADDRESS, else a local Ray instance)")
    sp.set_defaults(func=cmd_search)
    sp = sub.add_parser("report", help="leaderboard (terminal or markdown) and plots from search or train results",
                        description="Render a leaderboard and matplotlib plots (accuracy vs state size and vs "
                                    "parameters, per task) from results.jsonl, result.json, or a folder of them.")
    sp.add_argument("results", metavar="RESULTS")
    sp.add_argument("--out", help="folder for leaderboard.md and plots/ (default: beside the results)")
    sp.add_argument("--markdown", action="store_true", help="print markdown instead of the terminal table")
    sp.add_argument("--no-plots", action="store_true")
    sp.set_defaults(func=cmd_report)
    sp = sub.add_parser("zoo", help="regenerate the model table (examples/README.md) from the specs and test results",
                        description="Regenerate the table of examples/README.md from the specs' headers, their "
                                    "analysis and the latest test results.")
    sp.add_argument("--examples", default="examples", help="folder of .seq specs (default examples)")
    sp.add_argument("-o", "--output", default="examples/README.md", help="file to write ('' prints it)")
    sp.add_argument("--results", default=".seqdsl_cache/test-results.json",
                    help="test outcomes recorded by the test suite (default .seqdsl_cache/test-results.json)")
    sp.add_argument("--run-tests", action="store_true", help="run the test suite first to refresh the results")
    sp.set_defaults(func=cmd_zoo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except SpecError as e:
        print(e.render(), file=sys.stderr)
        return EXIT_SPEC_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
