"""The .seq grammar, shipped inside the package as ``seqdsl.grammar``."""

from importlib.resources import files

GRAMMAR_TEXT = (files(__package__) / "seq.lark").read_text(encoding="utf-8")
