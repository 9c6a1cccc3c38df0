"""Text -> IR: the lark LALR parser and the tree -> IR transformer (one method per rule)."""

from __future__ import annotations

from lark import Lark, Token, Transformer_NonRecursive, v_args
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError
from lark.indenter import Indenter

from seqdsl import ir
from seqdsl.errors import SpecError
from seqdsl.grammar import GRAMMAR_TEXT

MAX_SOURCE_BYTES = 1 << 20   # a spec is twenty lines; refuse megabytes before lexing them
MAX_DEPTH = 64               # expression nesting; deeper is certainly a mistake (and would overflow recursion)

# What the parser's terminal names mean to a person reading an error.
_TOKEN_WORDS = {
    "NAME": "a name", "NUMBER": "a number", "INT": "an integer", "IMAG": "an imaginary number",
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
                raise SpecError(f"indentation does not match any outer block (column {indent + 1})",
                                line, indent + 1)


def _span(meta_or_token) -> ir.Span | None:
    line = getattr(meta_or_token, "line", None)
    col = getattr(meta_or_token, "column", None)
    if line is None or col is None:
        return None
    return ir.Span(line=line, column=col)


def _sp(tok: Token) -> ir.Span:
    return ir.Span(line=tok.line, column=tok.column)


@v_args(inline=True)
class _ToIR(Transformer_NonRecursive):
    """Builds IR nodes from the parse tree (iteratively: no recursion limit at any depth)."""

    # ---- expressions
    def number(self, tok):
        text = str(tok)
        value = int(text) if text.isdigit() else float(text)
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
        return ir.Index(target=target, index=int(i), span=target.span)

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
            out.append(int(d) if d.type == "INT" else str(d))
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
    def stack(self, meta, name, hparams, *sections):
        fields: dict = {}
        for key, span, payload in sections:
            if key in fields:
                raise SpecError(f"the section '{key}' appears twice; merge them", span.line, span.column)
            fields[key] = payload
        if "layers" not in fields:
            raise SpecError("a stack needs 'layers = [...]'", name.line, name.column)
        return ir.Stack(name=str(name), hparams=tuple(hparams or ()), blocks=fields.get("blocks", ()),
                        layers=fields["layers"], span=_sp(name)), ()

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
    return f"'{tok}'"


def _syntax_error(err: UnexpectedInput, text: str) -> SpecError:
    if isinstance(err, UnexpectedCharacters):
        ch = text[err.pos_in_stream] if 0 <= err.pos_in_stream < len(text) else "?"
        shown = repr(ch)[1:-1]
        return SpecError(f"unexpected character '{shown}'", err.line, err.column)
    if isinstance(err, UnexpectedToken):
        tok = err.token
        line, col = tok.line, tok.column
        if tok.type in ("_INDENT", "_DEDENT"):   # positioned on the newline before the new indent
            line, col = tok.end_line, tok.end_column
        if tok.type == "$END" or line is None:
            lines = text.rstrip("\n").splitlines() or [""]
            line, col = len(lines), len(lines[-1]) + 1
        return SpecError(f"unexpected {_token_text(tok)}; expected {_describe_expected(err.expected)}", line, col)
    if isinstance(err, UnexpectedEOF):
        lines = text.rstrip("\n").splitlines() or [""]
        return SpecError("unexpected end of file", len(lines), len(lines[-1]) + 1)
    return SpecError(str(err).splitlines()[0])


def decode(data: bytes) -> str:
    """Bytes of a spec file -> text, or a SpecError that says what is wrong with them."""
    if len(data) > MAX_SOURCE_BYTES:
        raise SpecError(f"the file has {len(data)} bytes; a spec may have at most {MAX_SOURCE_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise SpecError(f"the file is not UTF-8 text (byte 0x{data[e.start]:02x})", line, col) from None
    return text


def _check_text(text: str) -> None:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        raise SpecError(f"the text has more than {MAX_SOURCE_BYTES} bytes; a spec is a short file")
    for lineno, line in enumerate(text.splitlines(), 1):
        for col, ch in enumerate(line, 1):
            if ch == "\x00" or (ord(ch) < 32 and ch not in "\t\r\f"):
                raise SpecError(f"control character {ch!r} in the text; is this a binary file?", lineno, col)
    if not text.strip():
        raise SpecError("the spec is empty; it must define a model", 1, 1)


def _check_depth(model: ir.Model | ir.Stack) -> None:
    """Reject expressions nested deeper than MAX_DEPTH, iteratively (later passes recurse)."""
    roots: list[ir.Expr] = []
    if isinstance(model, ir.Stack):
        roots += [h.default for h in model.hparams] + [b.value for b in model.blocks] + [model.layers]
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
