"""The public API (DESIGN §5): load / loads / reference / explain; compile and build come with the backends.

The driver is the only place that knows the order of the passes:
    text --parse--> ir.Model --check--> Checked --analyse--> Analysis (--plan--> --codegen--> op)
"""

from __future__ import annotations

import os

from seqdsl import ir
from seqdsl.errors import SpecError
from seqdsl.frontend import decode, parse
from seqdsl.typecheck import Checked, check


class Model:
    """A parsed and validated spec: ``seqdsl.load("examples/gla.seq")``.

    Attributes:
        ir: the frozen IR (``seqdsl.ir.Model``).
        checked: names, types, dims and the op interface (``seqdsl.typecheck.Checked``).
        path, source: where the spec came from (for error messages).
    """

    def __init__(self, model_ir: ir.Model, checked: Checked, path: str | None, source: str | None):
        self.ir = model_ir
        self.checked = checked
        self.path = path
        self.source = source

    @property
    def name(self) -> str:
        return self.ir.name

    @property
    def inputs(self) -> tuple[str, ...]:
        """The streams and params the cell reads: the op's tensor inputs, e.g. ("q", "k", "v", "g")."""
        return self.checked.op_inputs

    def analysis(self, chunk_size: int = 64):
        """The transition class, forms, hoisted streams, state size and FLOPs (``seqdsl explain``)."""
        from seqdsl.analysis import analyse

        return analyse(self.checked, chunk_size)

    def with_hparams(self, **overrides) -> Model:
        """The same spec with some header hyper-parameters changed (re-validated)."""
        try:
            return Model(self.ir, check(self.ir, overrides), self.path, self.source)
        except SpecError as e:
            raise e.located(self.path, self.source) from None

    def __repr__(self) -> str:
        return f"seqdsl.Model({self.name!r}, inputs={self.inputs})"


def loads(text: str, name: str | None = None, path: str | None = None, **hparams):
    """Parse and validate spec text: a ``Model`` (or a ``CheckedStack`` for a stack). Raises SpecError."""
    where = path or (f"<{name}>" if name else "<string>")
    model_ir = parse(text, where)
    try:
        if isinstance(model_ir, ir.Stack):
            from seqdsl.stack import check_stack

            return check_stack(model_ir, path, hparams)
        return Model(model_ir, check(model_ir, hparams), where, text)
    except SpecError as e:
        raise e.located(where, text) from None


def load(path: str | os.PathLike, **hparams):
    """Parse and validate a .seq file: a ``Model``, or a ``CheckedStack`` for a stack spec. Raises SpecError."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SpecError(f"cannot read the spec: {e.strerror}", path=path) from None
    try:
        text = decode(data)
    except SpecError as e:
        raise e.located(path, None) from None
    return loads(text, path=path, **hparams)


def compile(model: Model | str, backend: str = "torch"):  # noqa: A001 - DESIGN §5 name
    """Generate the op of a spec for a backend ("torch" or "triton"); cached by content hash.

    Returns a ``CompiledOp``: ``op.modes``, ``op.inputs``, and
    ``o, final_state = op(**streams, initial_state=None, output_final_state=False, mode=None, cu_seqlens=None)``.
    """
    from seqdsl.backends import compile as compile_backend

    if isinstance(model, str):
        model = load(model)
    return compile_backend(model, backend)


def build(model: Model | str, backend: str = "torch", **kwargs):
    """The layer of a spec: an nn.Module [B, T, d_model] -> [B, T, d_model]; see ``seqdsl.layer.build``."""
    from seqdsl.layer import build as build_layer

    return build_layer(model, backend=backend, **kwargs)


def reference(model: Model | ir.Model | str, **hparams):
    """The fp64 step-by-step interpreter of a spec (the oracle); see ``seqdsl.interpreter.Reference``."""
    from seqdsl.interpreter import Reference

    if isinstance(model, str):
        model = load(model, **hparams)
        hparams = {}
    if isinstance(model, Model):
        return Reference(model.checked if not hparams else model.with_hparams(**hparams).checked)
    return Reference(model, **hparams)
