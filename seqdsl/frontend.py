"""Text -> IR: the lark LALR parser and the tree -> IR transformer (one method per rule)."""

from __future__ import annotations

import re

from lark import Lark, Token, Transformer_NonRecursive, v_args
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError
from lark.indenter import Indenter

from seqdsl import ir
from seqdsl.errors import SpecError
from seqdsl.grammar import GRAMMAR_TEXT

MAX_SOURCE_BYTES = 1 << 20   # a spec is twenty lines; refuse megabytes before lexing them
MAX_INT_DIGITS = 18          # integer literals stay below 10**18 (Python refuses to convert huge digit strings)
MAX_TOKENS = 20_000         # the largest example has under 1000; lark parses ~20k tokens a second
MAX_DEPTH = 64               # expression nesting; deeper is certainly a mistake (and would overflow recursion)

# What the parser's terminal names mean to a person reading an error.
_TOKEN_WORDS = {
    "NAME": "a name", "NUMBER": "a number", "INT": "an integer", "IMAG": "an imaginary number", "STRING": "a string",
    "_NL": "end of line", "_INDENT": "an indented block", "_DEDENT": "end of block", "$END": "end of file",
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "COLON": "':'", "COMMA": "','",
    "EQUAL": "'='", "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'", "SLASH": "'/'", "AT": "'@'",
    "TILDE": "'~'", "DTYPE": "'complex'", "__ANON_0": "'<-'", "__ANON_1": "'**'", "_OVER": "'over'",
}


class _SeqIndenter(Indenter):
    NL_type = "_NL"
    OPEN_PAREN_types = ["LPAR", "LSQB"]
    CLOSE_PAREN_types = ["RPAR", "RSQB"]
    INDENT_type = "_INDENT"
    DEDENT_type = "_DEDENT"
    tab_len = 8

    def process(self, stream):
        return super().process(self._counted(stream))

    @staticmethod
    def _counted(stream):
        """Refuse absurdly long token streams before lark spends seconds on them."""
        for n, token in enumerate(stream, 1):
            if n > MAX_TOKENS:
                raise SpecError(f"the spec has more than {MAX_TOKENS} tokens; a spec is a short file",
                                token.line, token.column)
            yield token

    def handle_NL(self, token: Token):
        if self.paren_level > 0:
            return
        yield token
        indent_str = token.rsplit("\n", 1)[1]
        indent = indent_str.count(" ") + indent_str.count("\t") * self.tab_len
        if indent > self.indent_level[-1]:
            self.indent_level.append(indent)
            yield Token.new_borrow_pos(self.INDENT_type, indent_str, token)
        else:
            while indent < self.indent_level[-1]:
                self.indent_level.pop()
                yield Token.new_borrow_pos(self.DEDENT_type, indent_str, token)
            if indent != self.indent_level[-1]:
                line = token.end_line if token.end_line is not None else token.line
                tabs = " (a tab counts as 8 spaces; indent with spaces)" if "\t" in indent_str else ""
                raise SpecError(f"this line's indentation matches no enclosing block; line it up with the lines "
                                f"above{tabs}", line, len(indent_str) + 1)


def _span(meta_or_token) -> ir.Span | None:
    line = getattr(meta_or_token, "line", None)
    col = getattr(meta_or_token, "column", None)
    if line is None or col is None:
        return None
    return ir.Span(line=line, column=col)


def _sp(tok: Token) -> ir.Span:
    return ir.Span(line=tok.line, column=tok.column)


def _int(tok: Token) -> int:
    """An integer literal, refusing absurd lengths before converting them."""
    text = str(tok)
    if len(text.lstrip("0")) > MAX_INT_DIGITS:
        raise SpecError(f"the integer {text[:12]}... has more than {MAX_INT_DIGITS} digits; use a smaller number",
                        tok.line, tok.column)
    return int(text)


@v_args(inline=True)
class _ToIR(Transformer_NonRecursive):
    """Builds IR nodes from the parse tree (iteratively: no recursion limit at any depth)."""

    # ---- expressions
    def number(self, tok):
        text = str(tok)
        value = _int(tok) if text.isdigit() else float(text)
        return ir.Num(value=value, span=_sp(tok))

    def imag(self, tok):
        return ir.Imag(value=float(str(tok)[:-1]), span=_sp(tok))

    def string(self, tok):
        return ir.Str(value=str(tok)[1:-1], span=_sp(tok))

    def name(self, tok):
        return ir.Name(id=str(tok), span=_sp(tok))

    def add(self, left, right):
        return ir.Binary(op="+", left=left, right=right, span=left.span)

    def sub(self, left, right):
        return ir.Binary(op="-", left=left, right=right, span=left.span)

    def mul(self, left, right):
        return ir.Binary(op="*", left=left, right=right, span=left.span)

    def div(self, left, right):
        return ir.Binary(op="/", left=left, right=right, span=left.span)

    def matmul(self, left, right):
        return ir.Binary(op="@", left=left, right=right, span=left.span)

    def pow(self, left, right):
        return ir.Binary(op="**", left=left, right=right, span=left.span)

    @v_args(inline=True, meta=True)
    def neg(self, meta, operand):
        return ir.Unary(op="-", operand=operand, span=_span(meta))

    @v_args(inline=True, meta=True)
    def pos(self, meta, operand):
        return ir.Unary(op="+", operand=operand, span=_span(meta))

    def call(self, func, arglist=None):
        args, kwargs = [], []
        for a in arglist or ():
            if isinstance(a, ir.KwArg):
                kwargs.append(a)
            elif kwargs:
                raise SpecError("a positional argument follows a keyword argument", a.span.line, a.span.column)
            else:
                args.append(a)
        return ir.Call(func=str(func), args=tuple(args), kwargs=tuple(kwargs), span=_sp(func))

    def kwarg(self, name, value):
        return ir.KwArg(name=str(name), value=value, span=_sp(name))

    def arglist(self, *items):
        return list(items)

    def exprlist(self, *items):
        return [i for i in items if i is not None]

    def index(self, target, i):
        return ir.Index(target=target, index=_int(i), span=target.span)

    @v_args(inline=True, meta=True)
    def list(self, meta, items=None):
        return ir.ListExpr(items=tuple(items or ()), span=_span(meta))

    # ---- types
    def dim_list(self, *dims):
        return [d for d in dims if d is not None]

    @v_args(inline=True, meta=True)
    def type_shape(self, meta, dtype, dims):
        out = []
        for d in dims or ():
            out.append(_int(d) if d.type == "INT" else str(d))
        return ir.TypeShape(complex=dtype is not None, dims=tuple(out), span=_span(meta))

    # ---- declarations
    def hparam(self, name, typ, default):
        if typ is not None and str(typ) not in ("int", "float"):
            raise SpecError(f"unknown type '{typ}' for hyper-parameter '{name}'; use int or float",
                            typ.line, typ.column)
        return ir.HParam(name=str(name), type=str(typ) if typ is not None else None, default=default, span=_sp(name))

    def hparams(self, *items):
        return [i for i in items if i is not None]

    def dim_def(self, name, value):
        return ir.DimDef(name=str(name), value=value, span=_sp(name))

    def learned_param(self, name, typ, init):
        return ir.ParamDef(name=str(name), type=typ, init=init, span=_sp(name))

    def fixed_param(self, name, typ, value):
        return ir.ParamDef(name=str(name), type=typ, init=value, fixed=True, span=_sp(name))

    def stream_def(self, name, typ, value):
        return ir.StreamDef(name=str(name), type=typ, value=value, span=_sp(name))

    def state_decl(self, name, typ, init):
        return ir.StateDecl(name=str(name), type=typ, init=init, span=_sp(name))

    def cell_arg(self, name, default):
        return ir.CellArg(name=str(name), default=default, span=_sp(name))

    def update(self, name, value):
        return ir.Update(target=str(name), value=value, span=_sp(name))

    def local(self, name, value):
        return ir.Local(name=str(name), value=value, span=_sp(name))

    def out_def(self, name, value):
        return ir.OutDef(name=str(name), value=value, span=_sp(name))

    # ---- sections: (keyword, span, payload)
    @v_args(inline=True, meta=True)
    def dims_section(self, meta, *defs):
        return ("dims", _span(meta), tuple(defs))

    @v_args(inline=True, meta=True)
    def params_section(self, meta, *defs):
        return ("params", _span(meta), tuple(defs))

    @v_args(inline=True, meta=True)
    def streams_section(self, meta, *defs):
        return ("streams", _span(meta), tuple(defs))

    @v_args(inline=True, meta=True)
    def out_section(self, meta, *defs):
        return ("out", _span(meta), tuple(defs))

    @v_args(inline=True, meta=True)
    def cell_section(self, meta, over, *stmts):
        cell = ir.Cell(over=str(over) if over is not None else None, body=tuple(stmts), span=_span(meta))
        return ("cell", _span(meta), cell)

    @v_args(inline=True, meta=True)
    def model(self, meta, name, hparams, *sections):
        fields: dict = {}
        order = ("dims", "params", "streams", "cell", "out")
        for key, span, payload in sections:
            if key in fields:
                raise SpecError(f"the section '{key}' appears twice; merge them", span.line, span.column)
            fields[key] = payload
        return ir.Model(name=str(name), hparams=tuple(hparams or ()), dims=fields.get("dims", ()),
                        params=fields.get("params", ()), streams=fields.get("streams", ()),
                        cell=fields.get("cell"), outs=fields.get("out", ()), span=_sp(name)), order

    def block_def(self, name, value):
        return ir.BlockDef(name=str(name), value=value, span=_sp(name))

    @v_args(inline=True, meta=True)
    def blocks_section(self, meta, *defs):
        return ("blocks", _span(meta), tuple(defs))

    @v_args(inline=True, meta=True)
    def layers_def(self, meta, value):
        return ("layers", _span(meta), value)

    @v_args(inline=True, meta=True)
    def segments_def(self, meta, value):
        return ("segments", _span(meta), value)

    @v_args(inline=True, meta=True)
    def stack(self, meta, name, hparams, *sections):
        fields: dict = {}
        for key, span, payload in sections:
            if key in fields:
                raise SpecError(f"the section '{key}' appears twice; merge them", span.line, span.column)
            fields[key] = payload
        if "layers" not in fields:
            raise SpecError("a stack needs 'layers = [...]'", name.line, name.column)
        return ir.Stack(name=str(name), hparams=tuple(hparams or ()), blocks=fields.get("blocks", ()),
                        layers=fields["layers"], segments=fields.get("segments"), span=_sp(name)), ()

    def start(self, model_and_order):
        return model_and_order[0]


_PARSER: Lark | None = None


def _parser() -> Lark:
    global _PARSER
    if _PARSER is None:
        _PARSER = Lark(GRAMMAR_TEXT, parser="lalr", postlex=_SeqIndenter(),
                       propagate_positions=True, maybe_placeholders=True)
    return _PARSER


def _describe_expected(expected) -> str:
    words = sorted({_TOKEN_WORDS.get(t, f"'{t.lower()}'" if t.isalpha() else t) for t in expected})
    if len(words) > 6:
        words = words[:6] + ["..."]
    return ", ".join(words)


def _token_text(tok: Token) -> str:
    if tok.type == "_NL":
        return "end of line"
    if tok.type == "_INDENT":
        return "indentation"
    if tok.type == "_DEDENT":
        return "end of block"
    if tok.type == "$END":
        return "end of file"
    text = str(tok)
    return f"'{text}'" if len(text) <= 30 else f"'{text[:27]}...'"


def _brackets(text: str, line: int, col: int) -> tuple[list, list]:
    """The brackets open just before (line, col) and at the end of the text, as (char, line, col)."""
    stack: list[tuple[str, int, int]] = []
    at: list | None = None
    for ln, row in enumerate(text.split("\n"), 1):
        in_string = False
        for c, ch in enumerate(row, 1):
            if at is None and (ln, c) >= (line, col):
                at = list(stack)
            if in_string:
                in_string = ch != '"'
            elif ch == "#":
                break
            elif ch == '"':
                in_string = True
            elif ch in "([":
                stack.append((ch, ln, c))
            elif ch in ")]" and stack:
                stack.pop()
    return (at if at is not None else list(stack)), stack


def _end_of_text(text: str) -> tuple[int, int]:
    """line, column just after the last non-blank line."""
    lines = text.rstrip("\n").split("\n")
    return len(lines), len(lines[-1]) + 1


def _syntax_error(err: UnexpectedInput, text: str) -> SpecError:
    if isinstance(err, UnexpectedCharacters):
        ch = text[err.pos_in_stream] if 0 <= err.pos_in_stream < len(text) else "?"
        shown = repr(ch)[1:-1]
        return SpecError(f"unexpected character '{shown}'", err.line, err.column)
    if isinstance(err, UnexpectedToken):
        tok = err.token
        line, col = tok.line, tok.column
        what = _token_text(tok)
        if tok.type in ("_INDENT", "_DEDENT"):   # positioned on the newline before the new indent
            line, col = tok.end_line, tok.end_column
            if tok.end_pos is not None and not text[tok.end_pos:].strip():   # the blocks still open at the end
                what, line = "end of file", None
        if tok.type == "$END" or line is None:
            what = "end of file"
            line, col = _end_of_text(text)
        open_then, open_at_end = _brackets(text, line, col)
        if open_then and open_then[-1] in open_at_end and (open_then[-1][1] < line or what == "end of file"):
            ch, bline, bcol = open_then[-1]
            return SpecError(f"'{ch}' is never closed; add the matching '{')' if ch == '(' else ']'}'", bline, bcol)
        if tok.type in ("RPAR", "RSQB") and not open_then:
            return SpecError(f"'{tok}' closes nothing; remove it or add the matching '{'(' if tok == ')' else '['}'",
                             line, col)
        if "MODEL" in err.expected:
            return SpecError("a spec starts with 'model NAME(hyper = value, ...):' (or 'stack NAME(...):')", line, col)
        if tok.type == "_INDENT":
            tabs = " (a tab counts as 8 spaces; indent with spaces)" if "\t" in str(tok) else ""
            return SpecError(f"unexpected indentation; line it up with the lines above{tabs}", line, col)
        return SpecError(f"unexpected {what}; expected {_describe_expected(err.expected)}", line, col)
    if isinstance(err, UnexpectedEOF):
        return SpecError("unexpected end of file", *_end_of_text(text))
    return SpecError(str(err).splitlines()[0])


def decode(data: bytes) -> str:
    """Bytes of a spec file -> text, or a SpecError that says what is wrong with them."""
    if len(data) > MAX_SOURCE_BYTES:
        raise SpecError(f"the file has {len(data)} bytes; a spec may have at most {MAX_SOURCE_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        line_start = data.rfind(b"\n", 0, e.start) + 1
        col = len(data[line_start: e.start].decode("utf-8", "replace")) + 1    # in characters, as the caret needs
        raise SpecError(f"the file is not UTF-8 text (byte 0x{data[e.start]:02x}); save it as UTF-8", line, col,
                        source=data.decode("utf-8", "replace")) from None
    return text


_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f]")    # all but tab, newline, form feed, carriage return


def _check_text(text: str) -> None:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        raise SpecError(f"the text has more than {MAX_SOURCE_BYTES} bytes; a spec is a short file")
    bad = _CONTROL.search(text)
    if bad:   # lines and columns as the parser counts them ('\n' only, not str.splitlines)
        pos = bad.start()
        line, col = text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
        raise SpecError(f"control character {bad.group()!r} in the text; is this a binary file?", line, col)
    if all(not line.strip() or line.lstrip().startswith("#") for line in text.split("\n")):
        raise SpecError("the spec is empty; it must define a model", 1, 1)


_NESTING = re.compile(r'[()\[\]#"\n]|(?:[-+][\t \f]*){%d,}' % (MAX_DEPTH + 1))


def _check_nesting(text: str) -> None:
    """Reject brackets or runs of signs nested deeper than MAX_DEPTH before the parser spends time on them."""
    depth, in_comment, in_string = 0, False, False
    for m in _NESTING.finditer(text):
        ch = m.group()
        if ch == "\n":
            in_comment = in_string = False
            continue
        if in_comment:
            continue
        if in_string:
            in_string = ch != '"'
            continue
        if ch == "#":
            in_comment = True
        elif ch == '"':
            in_string = True
        elif ch in ")]":
            depth = max(0, depth - 1)
        elif ch in "([":
            depth += 1
        if depth > MAX_DEPTH or len(ch) > 1:     # too many brackets open, or a run of more than MAX_DEPTH signs
            pos = m.start()
            line, col = text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
            raise SpecError(f"expression nested more than {MAX_DEPTH} levels deep", line, col)


def _check_depth(model: ir.Model | ir.Stack) -> None:
    """Reject expressions nested deeper than MAX_DEPTH, iteratively (later passes recurse)."""
    roots: list[ir.Expr] = []
    if isinstance(model, ir.Stack):
        roots += [h.default for h in model.hparams] + [b.value for b in model.blocks] + [model.layers]
        roots += [model.segments] if model.segments is not None else []
        model = ir.Model(name=model.name)
    roots += [h.default for h in model.hparams] + [d.value for d in model.dims]
    roots += [p.init for p in model.params] + [s.value for s in model.streams]
    if model.cell is not None:
        for st in model.cell.body:
            roots.append(st.init if isinstance(st, ir.StateDecl) else st.default if isinstance(st, ir.CellArg)
                         else st.value)
    roots += [o.value for o in model.outs]
    for root in roots:
        stack = [(root, 1)]
        while stack:
            e, depth = stack.pop()
            if depth > MAX_DEPTH:
                raise SpecError.at(f"expression nested more than {MAX_DEPTH} levels deep", e.span)
            stack.extend((c, depth + 1) for c in ir.children(e))


def parse(text: str, path: str | None = None) -> ir.Model | ir.Stack:
    """Parse .seq text into the IR (a model or a stack; no validation beyond syntax). Raises SpecError."""
    try:
        _check_text(text)
        _check_nesting(text)
        try:
            tree = _parser().parse(text if text.endswith("\n") else text + "\n")
            result = _ToIR().transform(tree)
        except VisitError as e:  # an error raised inside a transformer callback
            if isinstance(e.orig_exc, SpecError):
                raise e.orig_exc from None
            raise
        except UnexpectedInput as e:
            raise _syntax_error(e, text) from None
        except SpecError:
            raise
        except LarkError as e:
            raise SpecError(f"cannot parse: {str(e).splitlines()[0]}") from None
        except RecursionError:
            raise SpecError(f"the text is nested too deeply (at most {MAX_DEPTH} levels)") from None
        _check_depth(result)
        return result
    except SpecError as e:
        raise e.located(path, text) from None
