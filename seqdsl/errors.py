"""Errors that point into a .seq source: ``file:line:col: message``, the line and a caret."""

from __future__ import annotations


class SpecError(Exception):
    """A problem with a spec, located in its source.

    Attributes:
        message: what is wrong, in one sentence.
        line, column: 1-based position of the offending text (None when unknown).
        path: the spec file (or ``<string>``).
        source: the spec text, used to show the offending line.
    """

    def __init__(self, message: str, line: int | None = None, column: int | None = None,
                 path: str | None = None, source: str | None = None):
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.path = path
        self.source = source

    @classmethod
    def at(cls, message: str, span) -> SpecError:
        """An error at an IR span (or at no location if the span is None)."""
        if span is None:
            return cls(message)
        return cls(message, span.line, span.column)

    def located(self, path: str | None, source: str | None) -> SpecError:
        """Fill in the file and text once they are known (errors are raised deep in the passes)."""
        if self.path is None:
            self.path = path
        if self.source is None:
            self.source = source
        return self

    @property
    def position(self) -> str:
        """``line:col`` (or ``line`` or empty) of the error."""
        if self.line is None:
            return ""
        return f"{self.line}:{self.column}" if self.column is not None else f"{self.line}"

    def __str__(self) -> str:
        where = ":".join(p for p in (self.path or "<string>", self.position) if p)
        return f"{where}: {self.message}"

    def render(self) -> str:
        """The error as the CLI prints it: location and message, the source line, a caret."""
        out = [f"{self}"]
        if self.source is not None and self.line is not None:
            lines = [ln.rstrip("\r") for ln in self.source.split("\n")]   # as the parser counts lines
            if 1 <= self.line <= len(lines):
                raw = lines[self.line - 1]
                col = max(1, self.column or 1)
                start = 0 if col <= 160 else col - 80          # a long line: show a window around the column
                text = ("... " if start else "") + "".join(c if c.isprintable() else " " for c in raw[start:start + 200])
                if start + 200 < len(raw):
                    text += " ..."
                out.append(f"  {text}")
                col = min(col - start + (4 if start else 0), len(text) + 1)
                out.append("  " + " " * (col - 1) + "^")
        return "\n".join(out)
