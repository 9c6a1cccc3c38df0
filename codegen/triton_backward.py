"""Generate the Triton backward kernel of the recurrent form: reverse-mode differentiation of the cell's step.

The step is rendered as in the forward kernel, but on a *tape* (``TapeRenderer``: every subexpression
bound to a temporary and recorded); ``Adjoints`` then walks the tape backwards and writes, for every
node, the adjoints of its operands from the op table's derivative rules (``codegen/ops.py``,
``triton_grad``; contractions, reductions, indexing and broadcasting are written here). The result is
Triton text that pushes the gradients of a step's results (its readouts, its final states) back to the
state before the step, the token's streams and the params.

The kernel (grid ``(B, H, tiles)``: a tile of the state per program, split as the forward kernel splits it, or
the whole state; ``CHUNK`` a runtime argument):

1. walk the sequence from the initial state, storing the state every CHUNK steps (checkpoints
   ``[B, H, NC, *state]``, NC = ceil(T / CHUNK));
2. for every chunk, last first: recompute its states from its checkpoint into a scratch buffer
   ``[B, H, CHUNK, *state]``, then walk its steps backwards, each time recomputing the step from the
   state before it (on the tape) and pushing the adjoints through it. The state's adjoint is carried in
   registers from step to step; stream gradients are stored per token; param gradients accumulate in
   registers (per program; the host sums over programs);
3. store the initial state's gradient and the param gradients.

The cell it differentiates has its step's loop-invariant subexpressions lifted into locals first
(``codegen/lift.py``, ``_Gen.with_lifted_invariants``): like the cell's own invariant locals, they are evaluated
once before the loops on a tape of their own, their adjoints summed over the sequence in registers, and pushed
back to the params once, in 3. (LSSL's ``back @ (eye(n) + dt / 2 * A)``: one n x n matrix product per kernel
instead of five per step.)

Split into tiles, a program holds whole what lacks the tiled axis (GLA's q and k), so its reductions over the
axis in the adjoints are partial sums: the gradients of such streams, params and states are added across the
tiles into zeroed buffers (``tl.atomic_add``, constexpr ``SPLIT``), and the gradients arriving for such
readouts and final states are taken by the first tile alone. Under ``torch.use_deterministic_algorithms(True)``
the launch is whole.

Memory: O(T / CHUNK + CHUNK) states per sequence, not one per step; compute: about three forward passes.
Complex values are (real, imaginary) pairs, and so are their adjoints (torch's convention: dL/dx + i dL/dy).
What has no rule (``expm`` or the inverse of a complex matrix, broadcasting between repeated dim names)
raises ``Unsupported``; the recurrent form's backward then stays the torch twin's (the module's
``BACKWARD`` says why).
"""

from __future__ import annotations

from seqdsl import ir
from seqdsl.codegen.ops import OPS
from seqdsl.codegen.triton_render import Blocks, TritonRenderer, Unsupported, Val, index_at, literal

INDENT = "    "


class TapeRenderer(TritonRenderer):
    """A TritonRenderer that binds every non-constant subexpression to a temporary and records it.

    ``tape``: the rendered nodes in evaluation order (children before parents); ``vals[id(node)]``: its
    value. No loop-invariant hoisting here: the invariant parts of the step are locals of their own by then
    (``codegen/lift.py``), rendered on a tape of their own before the loops.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tape: list[ir.Expr] = []
        self.vals: dict[int, Val] = {}

    def render(self, e: ir.Expr) -> Val:
        v = self.render_here(e)
        if not v.plain:
            v = Val(self.bind(v.re), v.dims, None if v.im is None else self.bind(v.im))
        self.vals[id(e)] = v
        self.tape.append(e)
        return v


Pair = tuple  # (real part text, imaginary part text or None: zero / a real value)


def _neg(x: str | None) -> str | None:
    return None if x is None else f"(-{x})"


def _conj(a: Pair) -> Pair:
    return (a[0], _neg(a[1]))


def _part(fmt: str, a: Pair) -> Pair:
    """``fmt`` (with ``{}``) applied to each part of a."""
    return (fmt.format(a[0]), None if a[1] is None else fmt.format(a[1]))


class Adjoints:
    """Adjoint accumulation and the derivative rules, emitting Triton lines into ``lines``.

    Adjoints are pairs of texts (real part, imaginary part or None). For a complex value z = x + iy the
    pair is (dL/dx, dL/dy), which is torch's gradient of a complex tensor; for a holomorphic f the
    rule is adj(z) = adj(f(z)) * conj(f'(z)), and a real operand takes the real part of what a
    complex one would get.

    Keys: ``("v", variable)`` for kernel variables (streams, params, states, locals: only those in
    ``wanted`` collect adjoints; a complex variable by its real part's name), ``("n", id(node))`` for
    intermediate nodes. Each accumulation binds new temporaries ``_g<k>`` (so no loop-carried value is
    overwritten by accident); ``adj[key]`` is the pair holding the key's adjoint so far.
    """

    def __init__(self, r: TapeRenderer, blocks: Blocks, wanted: set[str]):
        self.r = r
        self.blocks = blocks
        self.wanted = wanted
        self.adj: dict[tuple, Pair] = {}
        self.lines: list[str] = []
        self._n = 0

    # ------------------------------------------------------------------ accumulation
    def temp(self, text: str | None) -> str | None:
        """A new temporary holding ``text`` (None stays None)."""
        if text is None:
            return None
        name = f"_g{self._n}"
        self._n += 1
        self.lines.append(f"{name} = {text}")
        return name

    def add(self, key: tuple, pair: Pair) -> None:
        if key not in self.adj:
            self.adj[key] = (self.temp(pair[0]), self.temp(pair[1]))
            return
        (r, i), (pr, pi) = self.adj[key], pair
        im = i if pi is None else self.temp(pi if i is None else f"{i} + {pi}")
        self.adj[key] = (self.temp(f"{r} + {pr}"), im)

    def to_child(self, child: ir.Expr, pair: Pair, frame: tuple) -> None:
        """Add ``pair`` (blocks of dims ``frame``) to the adjoint of ``child``, summed over broadcast axes
        (a real child takes the real part)."""
        cv = self.r.vals[id(child)]
        if cv.plain:
            return
        if isinstance(child, ir.Name):
            if cv.re not in self.wanted:
                return
            key = ("v", cv.re)
        else:
            key = ("n", id(child))
        im = self.reduce_to(cv.dims, pair[1], frame) if cv.complex and pair[1] is not None else None
        self.add(key, (self.reduce_to(cv.dims, pair[0], frame), im))

    def zeros(self, dims: tuple) -> str:
        return f"tl.zeros([{', '.join(self.blocks.block(d) for d in dims)}], dtype=DTYPE)"

    def reduce_to(self, target: tuple, text: str, frame: tuple) -> str:
        """A block of dims ``frame`` summed over the axes ``target`` lacks and arranged as ``target``."""
        if tuple(target) == tuple(frame):
            return text
        if not target:                                          # a scalar: the sum over every axis
            for i in reversed(range(len(frame))):
                if self.blocks.padded(frame[i]):
                    text = f"tl.where({self.blocks.mask(frame[i])}{index_at(i, i + 1)}, {text}, 0.0)"
                text = f"tl.reduce({text}, {i}, _tlib.add)"
            return text
        if len(set(frame)) != len(frame) or len(set(target)) != len(target):
            raise Unsupported(f"broadcasting between {target} and {frame} (a repeated dim name) in the backward")
        if not set(target) <= set(frame):
            raise Unsupported(f"an adjoint of dims {frame} for a value of dims {target}")
        dims = list(frame)
        for i in reversed(range(len(dims))):
            if dims[i] in target:
                continue
            if self.blocks.padded(dims[i]):
                text = f"tl.where({self.blocks.mask(dims[i])}{index_at(i, len(dims))}, {text}, 0.0)"
            text = f"tl.reduce({text}, {i}, _tlib.add)"
            del dims[i]
        if tuple(dims) != tuple(target):
            if len(dims) != 2:
                raise Unsupported(f"permuting a {len(dims)}-d adjoint")
            text = f"tl.trans({text})"
        return text

    # ------------------------------------------------------------------ complex arithmetic on texts
    def bound(self, a: Pair) -> Pair:
        """a with each part bound to a temporary (so it can be repeated in text)."""
        return (a[0] if _simple(a[0]) else self.temp(a[0]), a[1] if a[1] is None or _simple(a[1]) else self.temp(a[1]))

    def mul(self, a: Pair, b: Pair) -> Pair:
        (ar, ai), (br, bi) = a, b
        re = f"({ar} * {br})" if ai is None or bi is None else f"({ar} * {br} - {ai} * {bi})"
        terms = ([f"{ar} * {bi}"] if bi is not None else []) + ([f"{ai} * {br}"] if ai is not None else [])
        return (re, f"({' + '.join(terms)})" if terms else None)

    def div(self, a: Pair, b: Pair) -> Pair:
        """a / b."""
        if b[1] is None:
            return (f"({a[0]} / {b[0]})", None if a[1] is None else f"({a[1]} / {b[0]})")
        b = self.bound(b)
        den = self.temp(f"({b[0]} * {b[0]} + {b[1]} * {b[1]})")
        re, im = self.mul(a, _conj(b))
        return (f"({re} / {den})", None if im is None else f"({im} / {den})")

    def contract(self, a: Pair, adims: tuple, b: Pair, bdims: tuple) -> Pair:
        """Complex ``a @ b`` (contract a's last axis with b's first) on parts."""
        c = self.r.contract
        re = c(a[0], adims, b[0], bdims)
        if a[1] is not None and b[1] is not None:
            re = f"({re} - {c(a[1], adims, b[1], bdims)})"
        terms = ([c(a[0], adims, b[1], bdims)] if b[1] is not None else []) + \
                ([c(a[1], adims, b[0], bdims)] if a[1] is not None else [])
        return (re, f"({' + '.join(terms)})" if terms else None)

    # ------------------------------------------------------------------ the rules
    def value(self, e: ir.Expr, frame: tuple) -> Pair:
        """A node's value aligned to ``frame`` (constants as literals)."""
        v = self.r.vals[id(e)]
        if v.plain:
            if isinstance(v.value, complex):
                return (literal(v.value.real), literal(v.value.imag))
            return (literal(v.value), None)
        return (self.r.align(v.re, v.dims, frame), None if v.im is None else self.r.align(v.im, v.dims, frame))

    def back(self, e: ir.Expr) -> None:
        """Push the adjoint of node e (already complete) to its operands."""
        g = self.adj.get(("n", id(e)))
        if g is None or isinstance(e, ir.Name):
            return
        y = self.r.vals[id(e)]
        frame = y.dims
        if isinstance(e, ir.Unary):
            self.to_child(e.operand, (_neg(g[0]), _neg(g[1])) if e.op == "-" else g, frame)
        elif isinstance(e, ir.Binary):
            self.binary(e, g, y)
        elif isinstance(e, ir.Index):
            t = self.r.vals[id(e.target)]
            sel = f"({self.blocks.offset(t.dims[0])} == {e.index})" + index_at(0, len(t.dims))
            pick = (f"tl.where({sel}, {self.r.align(g[0], frame, t.dims)}, 0.0)",
                    None if g[1] is None else f"tl.where({sel}, {self.r.align(g[1], frame, t.dims)}, 0.0)")
            self.to_child(e.target, pick, t.dims)
        elif isinstance(e, ir.Call):
            self.call(e, g, y)
        else:
            raise Unsupported(f"no derivative for {type(e).__name__}")

    def binary(self, e: ir.Binary, g: Pair, y: Val) -> None:
        if e.op == "@":
            self.matmul(e, g)
            return
        frame = y.dims
        A, B = self.value(e.left, frame), self.value(e.right, frame)
        Y = (y.re, y.im)
        db = None
        if e.op == "+":
            da, db = g, g
        elif e.op == "-":
            da, db = g, (_neg(g[0]), _neg(g[1]))
        elif e.op == "*":
            g, A, B = self.bound(g), self.bound(A), self.bound(B)
            da, db = self.mul(g, _conj(B)), self.mul(g, _conj(A))
        elif e.op == "/":                                       # da = g / conj(b), db = -g conj(y) / conj(b)
            g, B = self.bound(g), self.bound(B)
            da = self.div(g, _conj(B))
            q = self.bound(self.mul(g, _conj(Y)))
            db = self.div((_neg(q[0]), _neg(q[1])), _conj(B))
        else:                                                   # '**' (real: the forward has no complex power)
            b = self.r.vals[id(e.right)]
            G, A0, B0 = g[0], A[0], B[0]
            if b.plain:
                p = float(b.value)
                da = (f"({G} * {literal(p)} * {_power(A0, p - 1)})" if p != 0.5 else f"({G} * 0.5 / {y.re})", None)
            else:
                da = (f"({G} * {B0} * {y.re} / {A0})", None)
                db = (f"({G} * {y.re} * tl.log({A0}))", None)
        self.to_child(e.left, da, frame)
        if db is not None:
            self.to_child(e.right, db, frame)

    def matmul(self, e: ir.Binary, g: Pair) -> None:
        """``a @ b`` contracts a's last axis with b's first (positionally, as the forward renders it):
        adj(a) = g @ conj(b)^T, adj(b) = conj(a)^T @ g."""
        a, b = self.r.vals[id(e.left)], self.r.vals[id(e.right)]
        if a.plain or b.plain:
            raise Unsupported("'@' with a constant operand")
        g = self.bound(g)
        A, B = _conj((a.re, a.im)), _conj((b.re, b.im))
        if len(a.dims) == 1 and len(b.dims) == 1:
            da, db = self.mul(g, B), self.mul(g, A)
        elif len(a.dims) == 1:                                  # (k) @ (k, j) -> (j)
            da = self.contract(B, b.dims, g, b.dims[1:])
            db = self.mul(_part("{}[:, None]", A), _part("{}[None, :]", g))
        elif len(b.dims) == 1:                                  # (i, k) @ (k) -> (i)
            da = self.mul(_part("{}[:, None]", g), _part("{}[None, :]", B))
            db = self.contract(g, a.dims[:1], A, a.dims)
        else:                                                   # (i, k) @ (k, j) -> (i, j)
            da = self.contract(g, (a.dims[0], b.dims[1]), _part("tl.trans({})", B), (b.dims[1], b.dims[0]))
            db = self.contract(_part("tl.trans({})", A), (a.dims[1], a.dims[0]), g, (a.dims[0], b.dims[1]))
        self.to_child(e.left, da, a.dims)
        self.to_child(e.right, db, b.dims)

    def call(self, e: ir.Call, g: Pair, y: Val) -> None:
        op = OPS[e.func]
        args = list(e.args)
        frame = y.dims
        if op.kind == "eye":
            return
        if op.kind == "complex":                                # complex(re, im)
            self.to_child(args[0], (g[0], None), frame)
            if g[1] is not None:
                self.to_child(args[1], (g[1], None), frame)
            return
        if e.func == "inv":                                     # adj(A) = -inv(A)^T g inv(A)^T
            a = self.r.vals[id(args[0])]
            if a.complex:
                raise Unsupported("inv() of a complex matrix in the backward")
            yt = f"tl.trans({y.re})"
            left = self.temp(self.r.contract(yt, a.dims, g[0], a.dims))
            self.to_child(args[0], (f"(-{self.r.contract(left, a.dims, yt, a.dims)})", None), a.dims)
            return
        if e.func == "expm":                                    # adj(A) = L(A^T, g), expm's Frechet derivative
            a = self.r.vals[id(args[0])]
            if a.complex or g[1] is not None:
                raise Unsupported("expm() of a complex matrix in the backward")
            d = a.dims[0]
            keys = (self.r.blocks.offset(d), self.r.blocks.mask(d), self.r.blocks.size(d))
            adj = f"_tlib.expm_frechet(tl.trans({a.re}), {g[0]}, {keys[0]}, {keys[1]}, {keys[2]})"
            self.to_child(args[0], (adj, None), a.dims)
            return
        if op.kind in ("inverse", "token"):
            raise Unsupported(f"no Triton derivative for {e.func}()")
        opts = {k: float(v) if isinstance(v, (int, float)) else v for k, v in op.options.items()}
        for kw in e.kwargs:
            v = self.r.vals[id(kw.value)]
            if not v.plain:
                raise Unsupported(f"a non-constant option {kw.name} of {e.func}()")
            opts[kw.name] = float(v.value)
        if op.kind == "reduce":
            a = self.r.vals[id(args[0])]
            n = float(self.r.c.dim_sizes[a.dims[-1]])
            fmt = f"({{}} + {self.zeros(a.dims)})" if e.func == "sum" else f"(({{}} + {self.zeros(a.dims)}) / {n})"
            spread = (self.r.align(g[0], frame, a.dims), None if g[1] is None else self.r.align(g[1], frame, a.dims))
            self.to_child(args[0], _part(fmt, spread), a.dims)
            return
        if op.kind == "outer":                                  # adj(a) = g @ conj(b), adj(b) = conj(a) @ g
            a, b = (self.r.vals[id(x)] for x in args)
            if a.plain or b.plain:
                raise Unsupported("outer() with a constant operand")
            g = self.bound(g)
            self.to_child(args[0], self.contract(g, frame, _conj((b.re, b.im)), b.dims), a.dims)
            self.to_child(args[1], self.contract(_conj((a.re, a.im)), a.dims, g, frame), b.dims)
            return
        if op.kind == "transpose":
            self.to_child(args[0], _part("tl.trans({})", g), frame[::-1])
            return
        operands = [self.r.vals[id(x)] for x in args]
        if any(v.complex for v in operands):
            self.complex_unary(e, g, y)
            return
        if not op.triton_grad:
            raise Unsupported(f"no Triton derivative for {e.func}()")
        keys = {"g": g[0], "y": y.re, **{k: literal(v) if isinstance(v, float) else v for k, v in opts.items()}}
        if op.kind in ("lastaxis", "norm"):
            keys.update(self.r.last_axis(frame))
            keys["n"] = literal(keys["n"])
        texts = [self.value(x, frame)[0] for x in args]
        for x, rule in zip(args, op.triton_grad):
            self.to_child(x, ("(" + rule.format(*texts, **keys) + ")", None), frame)

    def complex_unary(self, e: ir.Call, g: Pair, y: Val) -> None:
        """Functions of one complex operand: holomorphic ones by adj = g conj(f'(z)); abs, real, imag, conj."""
        (x,) = e.args
        z = self.bound(self.value(x, y.dims))
        Y = (y.re, y.im)
        f = e.func
        if f == "exp":
            d = self.mul(g, _conj(Y))
        elif f == "log":                                        # g / conj(z)
            d = self.div(g, _conj(z))
        elif f == "sqrt":                                       # g conj(0.5 / y) = 0.5 g / conj(y)
            d = _part("(0.5 * {})", self.div(g, _conj(Y)))
        elif f == "abs":                                        # y = |z| real: g z / |z|
            d = (f"({g[0]} * {z[0]} / {y.re})", f"({g[0]} * {z[1]} / {y.re})")
        elif f == "real":
            d = (g[0], None)
        elif f == "imag":
            d = (f"({g[0]} * 0.0)", g[0])
        elif f == "conj":
            d = _conj(g)
        else:
            raise Unsupported(f"no Triton derivative for {f}() of a complex value")
        self.to_child(x, d, y.dims)


def _simple(text: str) -> bool:
    """Whether text is a name or a number (safe to repeat)."""
    import re as _re

    return bool(_re.match(r"^-?[A-Za-z_0-9.]+$", text))


def _power(base: str, p: float) -> str:
    """Text of base ** p (integer p by repeated products; others through exp / log)."""
    if p == 0:
        return "1.0"
    if float(p).is_integer() and abs(p) <= 4:
        prod = " * ".join([base] * int(abs(p)))
        return f"({prod})" if p > 0 else f"(1.0 / ({prod}))"
    return f"tl.exp({literal(p)} * tl.log({base}))"


# ---------------------------------------------------------------------------- the kernel
class BackwardKernel:
    """Source of the backward kernel and its launcher for one spec (``gen``: triton_module's generator,
    after its forward kernel was generated: its names, dims and cell types are reused). Complex values
    are (real, imaginary) register pairs, complex buffers real views with the imaginary part at +1."""

    def __init__(self, gen):
        from seqdsl.codegen import triton_module as tm

        self.tm = tm
        self.g = gen
        self.c = gen.c
        self.kernel_name = f"{gen.name}_recurrent_bwd_kernel"
        self.dims = gen.cell_dims()
        # split across programs as the forward kernel is (its cell never mixes the tiles); reductions over the
        # tiled axis here are the adjoints of values without it, completed across the tiles by atomic adds
        self.tiled = getattr(gen, self.TILED_BY)
        self.blocks = self.BLOCKS({d: self.c.dim_sizes[d] for d in self.dims}, self.tiled, partial_sums=True)
        self.N = gen.kernel_names(self.dims, self.RESERVED)
        taken = {v for kind in ("value", "ptr", "p", "h0", "ht") for x in self.N[kind].values()
                 for v in (x if isinstance(x, tuple) else (x,))}
        taken |= {v for strides in self.N["stride"].values() for v in strides}
        self.buf = {}
        for kind, names in (("do", self.c.readouts), ("dht", gen.states), ("dx", self.c.op_streams),
                            ("dp", self.c.op_params), ("dh0", gen.states), ("ck", gen.states), ("wk", gen.states),
                            ("gp", list(self.c.op_params) + gen.invariant), ("ds", gen.states),
                            ("SUM", self.c.op_streams)):
            for n in names:
                base = f"{kind}_{n}"
                while base in taken or f"{base}_im" in taken:
                    base += "_"
                taken |= {base, f"{base}_im"}
                self.buf[kind, n] = base

    # ------------------------------------------------------------------ pieces
    def var(self, name: str) -> Pair:
        """The (real, imaginary or None) variables of a spec value in the kernel."""
        return self.N["value"][name]

    def acc(self, kind: str, name: str, cplx: bool) -> Pair:
        """The (real, imaginary or None) variables of a gradient accumulator (``gp``, ``ds``)."""
        base = self.buf[kind, name]
        return (base, f"{base}_im" if cplx else None)

    def ty(self, name: str):
        return self.c.cell_types[name] if name in self.g.states else self.g.cell_ty(name)

    @staticmethod
    def assign(out, level: int, target: Pair, value: Pair) -> None:
        out.add(f"{target[0]} = {value[0]}", level)
        if target[1] is not None:
            out.add(f"{target[1]} = {value[1] if value[1] is not None else '0.0 * ' + target[0]}", level)

    def step(self, out, level: int, r: TapeRenderer, env: dict, versions: bool) -> list[tuple]:
        """The cell's step (statements outside the loop-invariant locals) rendered into ``out``.

        versions: every state update gets fresh variables (the backward needs the state before the
        step and after it); else states are overwritten in place (forward recomputation).
        Returns [(statement, value, tape start, tape end, real-part variable assigned or None)].
        """
        g, c = self.g, self.c
        segs = []
        count: dict[str, int] = {}
        for st in g.cell.body:
            if not isinstance(st, (ir.Local, ir.Update)) or (isinstance(st, ir.Local) and st.name in g.invariant):
                continue
            start = len(r.tape)
            v = r.render(st.value)
            out.extend(r.take_lines(), level)
            if isinstance(st, ir.Local):
                if v.plain:
                    env[st.name] = v
                    segs.append((st, v, start, len(r.tape), None))
                    continue
                target = self.var(st.name)
                self.assign(out, level, target, (v.re, v.im))
                env[st.name] = Val(target[0], v.dims, target[1])
            else:
                t = c.cell_types[st.target]
                target = self.var(st.target)
                if versions:
                    count[st.target] = count.get(st.target, 0) + 1
                    target = tuple(None if x is None else f"{x}_v{count[st.target]}" for x in target)

                def fit(text: str) -> str:
                    if v.plain or v.dims != t.dims:
                        aligned = text if v.plain else r.align(text, v.dims, t.dims)
                        return f"{aligned} + {self.zeros(t.dims)}"
                    return text

                self.assign(out, level, target, (fit(v.re), fit(v.im if v.im is not None else "0.0")))
                env[st.target] = Val(target[0], t.dims, target[1])
            segs.append((st, v, start, len(r.tape), target[0]))
        return segs

    def shape(self, dims: tuple) -> str:
        """The block shape of a value of ``dims``, as tl.zeros takes it ("" for a scalar)."""
        return ", ".join(self.blocks.block(d) for d in dims)

    def zeros(self, dims: tuple) -> str:
        return f"tl.zeros([{self.shape(dims)}], dtype=DTYPE)"

    def state_offsets(self, s: str, slots: tuple[str, str] | None) -> tuple[str, str | None]:
        """(offset, mask) of state s in a contiguous [B, H, *state] buffer, or with ``slots = (count,
        slot)`` in a [B, H, count, *state] buffer at that slot (complex: real view)."""
        t = self.c.cell_types[s]
        offs, numel = self.tm.contiguous_offsets(self.blocks, t.dims, t.complex)
        base = "(i_b * H + i_h)" if slots is None else f"((i_b * H + i_h) * {slots[0]} + {slots[1]})"
        ptr = f"{base} * {numel}" + (f" + {offs}" if t.dims else "")
        return ptr, self.tm.block_mask(self.blocks, t.dims)

    def token_offsets(self, n: str, shared: bool = False) -> tuple[str, str | None]:
        """(offset, mask) of a value of token t of the program's sequence in a contiguous [B, T, H, *dims] buffer
        (complex: real view); ``shared``: in a [B, T, 1, *dims] buffer that every head's program shares."""
        t = self.g.cell_ty(n)
        offs, numel = self.tm.contiguous_offsets(self.blocks, t.dims, t.complex)
        token = "(seq_row * T + seq_t0 + t)" if shared else "((seq_row * T + seq_t0 + t) * H + i_h)"
        ptr = f"{token} * {numel}" + (f" + {offs}" if t.dims else "")
        return ptr, self.tm.block_mask(self.blocks, t.dims)

    @staticmethod
    def load(ptr: str, m: str | None, cplx: bool = False) -> Pair:
        """Loads, converted to DTYPE (bf16 / fp16 streams and params reach the kernel as given)."""
        def one(p):
            return f"tl.load({p}, mask={m}, other=0.0).to(DTYPE)" if m else f"tl.load({p}).to(DTYPE)"
        return (one(ptr), one(f"{ptr} + 1") if cplx else None)

    @staticmethod
    def store(out, level: int, ptr: str, value: Pair, m: str | None, dims: tuple, add: bool = False) -> None:
        """Stores of a [*dims] value (complex: the imaginary part at +1; None: not stored). A value without
        dims is stored as a 1-element block (it may be a 0-d block, e.g. an accumulator that started as
        tl.zeros([]), which a scalar pointer does not take). ``add``: atomically added to what is there."""
        op = "tl.atomic_add" if add else "tl.store"
        order = ', sem="relaxed"' if add else ""
        for p, x in ((ptr, value[0]), (f"{ptr} + 1", value[1])):
            if x is None:
                continue
            if not dims:
                out.add(f"{op}({p} + tl.zeros([1], dtype=tl.int32), {x} + tl.zeros([1], dtype=DTYPE){order})", level)
            else:
                out.add(f"{op}({p}, {x}, mask={m}{order})" if m else f"{op}({p}, {x}{order})", level)

    def lacks_tiled_axis(self, n: str) -> bool:
        """Whether every tile's program holds n whole, and so only a part of its gradient (n lacks the tiled
        axis: a stream or param such as GLA's q, a state such as linear attention's normaliser)."""
        return self.tiled is not None and self.tiled not in self.ty(n).dims

    def seed(self, n: str, value: Pair) -> Pair:
        """An adjoint arriving from outside (a readout's or a final state's gradient), as a program takes it: for
        a value without the tiled axis, which every tile holds whole, the first tile alone (the tiles' parts are
        summed in the end)."""
        if not self.lacks_tiled_axis(n):
            return value
        return tuple(None if x is None else f"tl.where(i_v == 0, {x}, 0.0)" for x in value)

    def store_gradient(self, out, level: int, n: str, ptr: str, value: Pair, m: str | None, dims: tuple) -> None:
        """Store the gradient of n (a state's initial value, a param) at ``ptr``: where n lacks the tiled axis,
        each tile's program holds a part of it, added into a zeroed buffer where the launch splits the axis."""
        if not self.lacks_tiled_axis(n):
            self.store(out, level, ptr, value, m, dims)
            return
        out.add("if SPLIT:", level)
        self.store(out, level + 1, ptr, value, m, dims, add=True)
        out.add("else:", level)
        self.store(out, level + 1, ptr, value, m, dims)

    def store_stream_grad(self, out, level: int, n: str, value: Pair, offsets, dims: tuple) -> None:
        """Store stream n's gradient (``offsets(n, shared)``: its (offset, mask) in the buffer). Where the
        launch says the stream is shared by every head (constexpr ``SUM_<n>``), every head's program adds
        into one [B, T, 1, ...] buffer instead of writing a row of its own (``_rt.stream_grad_buffer``); a
        stream without the tiled axis gets a part of its gradient from each tile, added likewise where the
        launch splits that axis (``SPLIT``)."""
        dx = self.buf["dx", n]
        out.add(f"if {self.buf['SUM', n]}:", level)
        ptr, m = offsets(n, True)
        self.store(out, level + 1, f"{dx} + {ptr}", value, m, dims, add=True)
        ptr, m = offsets(n, False)
        if self.lacks_tiled_axis(n):
            out.add("elif SPLIT:", level)
            self.store(out, level + 1, f"{dx} + {ptr}", value, m, dims, add=True)
        out.add("else:", level)
        self.store(out, level + 1, f"{dx} + {ptr}", value, m, dims)

    def load_streams(self, out, level: int, env: dict) -> None:
        """The streams of token t (loaded at ``t``, not through running pointers: the walk goes backwards)."""
        for n in self.c.op_streams:
            t = self.g.cell_ty(n)
            st = self.N["stride"][n]
            offs = f" + {self.tm.block_offsets(self.blocks, t.dims, st[3:])}" if t.dims else ""
            ptr = f"{self.N['ptr'][n]} + seq_row * {st[0]} + (seq_t0 + t) * {st[1]} + i_h * {st[2]}{offs}"
            self.assign(out, level, self.var(n), self.load(ptr, self.tm.block_mask(self.blocks, t.dims), t.complex))
            env[n] = Val(self.var(n)[0], t.dims, self.var(n)[1])

    def load_states(self, out, level: int, env: dict, buf: str, slots) -> dict:
        for s in self.g.states:
            t = self.c.cell_types[s]
            ptr, m = self.state_offsets(s, slots)
            self.assign(out, level, self.var(s), self.load(f"{self.buf[buf, s]} + {ptr}", m, t.complex))
            env[s] = Val(self.var(s)[0], t.dims, self.var(s)[1])
        return {s: env[s] for s in self.g.states}

    def store_states(self, out, level: int, buf: str, slots) -> None:
        for s in self.g.states:
            ptr, m = self.state_offsets(s, slots)
            self.store(out, level, f"{self.buf[buf, s]} + {ptr}", self.var(s), m, self.c.cell_types[s].dims)

    # ------------------------------------------------------------------ the kernel
    FORM = "recurrent"           # the form whose backward this is (``_backward_<form>``)
    LAUNCH = "recurrent"         # its launch policy (``triton_runtime.launch_config``)
    TILED_BY = "tiled"           # the generator's attribute naming the forward kernel's tiled axis
    BLOCKS = Blocks              # the kernel's block names (the scan backward: TimeBlocks)
    RESERVED: tuple = ()         # names of the template that spec names must avoid
    Tape = TapeRenderer          # the renderer of the kernel's tapes (the scan backward: time-batched)
    CHECKPOINTS = "checkpoints, scratch"
    LOOP_ARGS = "cu_seqlens, T, CHUNK, NC,  # packed sequences (IS_VARLEN); the buffers' T; checkpoint spacing, slots"
    CONSTEXPRS: tuple = ()

    def renderers(self, env: dict):
        """(renderer(), done(r)): fresh tape renderers reading ``env``, their temporaries numbered apart."""
        counter = [0]

        def resolve(name: str) -> Val:
            if name in env:
                return env[name]
            raise Unsupported(f"'{name}' is not available inside the kernel")

        def renderer():
            r = self.Tape(self.c, resolve, self.blocks)
            r._n = counter[0]
            return r

        def done(r) -> None:
            counter[0] = r._n

        return renderer, done

    def prologue(self, out, env: dict, renderer, done) -> tuple:
        """The signature, the program's indices and masks, args, params and the loop-invariant locals (on their
        own tape, their adjoints accumulating over the whole sequence). Returns (their tape, their segments,
        the accumulated params and invariant locals)."""
        tm, g, c, N, blocks = self.tm, self.g, self.c, self.N, self.blocks

        def cplx(name: str) -> str:
            return " complex: real view" if self.ty(name).complex else ""

        sig = []
        for n in c.op_streams:
            sig.append(f"{', '.join([N['ptr'][n]] + N['stride'][n])},  # stream {n}{cplx(n)}")
        for n in c.op_params:
            sig.append(f"{', '.join([N['ptr'][n]] + N['stride'][n])},  # param {n}{cplx(n)}")
        for s in g.states:
            scratch = f"{self.buf['wk', s]}, " if "scratch" in self.CHECKPOINTS else ""
            sig.append(f"{N['h0'][s]}, {self.buf['dht', s]}, {self.buf['dh0', s]}, {self.buf['ck', s]}, "
                       f"{scratch} # state {s}: initial, its gradient at the end / start, "
                       f"{self.CHECKPOINTS}{cplx(s)}")
        for o in c.readouts:
            sig.append(f"{self.buf['do', o]},  # gradient of readout {o}: [B, T, H, ...]{cplx(o)}")
        for n in c.op_streams:
            sig.append(f"{self.buf['dx', n]},  # gradient of stream {n}: [B, T, H, ...]{cplx(n)}")
        for n in c.op_params:
            sig.append(f"{self.buf['dp', n]},  # gradient of param {n} per program: [N, H, ...]{cplx(n)}")
        if g.args:
            sig.append(f"args,  # cell args: {', '.join(g.args)}")
        sig.append(self.LOOP_ARGS)
        sig.append(", ".join([f"{blocks.size(d)}: tl.constexpr, {blocks.block(d)}: tl.constexpr" for d in self.dims]
                             + [f"{x}: tl.constexpr" for x in self.CONSTEXPRS]
                             + [f"{self.buf['SUM', n]}: tl.constexpr" for n in c.op_streams]
                             + ["SPLIT: tl.constexpr"] * (self.tiled is not None)) + ",")
        sig.append("DTYPE: tl.constexpr, USE_INITIAL_STATE: tl.constexpr, USE_FINAL_STATE_GRADIENT: tl.constexpr, "
                   "STORE_INITIAL_STATE_GRADIENT: tl.constexpr, IS_VARLEN: tl.constexpr,")
        tm.open_kernel(out, self.kernel_name, sig)
        L = 1
        if self.tiled is not None:
            out.add(f"i_v = tl.program_id(2)  # tile of the {self.tiled} axis (SPLIT: more than one)", L)
        out.add("H = tl.num_programs(1)", L)
        out.add(tm.SEQUENCE_ROWS, L)
        for d in self.dims:
            base = f"i_v * {blocks.block(d)} + " if d == self.tiled else ""
            out.add(f"{blocks.offset(d)} = {base}tl.arange(0, {blocks.block(d)})", L)
            out.add(f"{blocks.mask(d)} = {blocks.offset(d)} < {blocks.size(d)}", L)
        for i, a in enumerate(g.args):
            out.add(f"{self.var(a)[0]} = tl.load(args + {i})", L)
            env[a] = Val(self.var(a)[0], ())
        for n in c.op_params:
            t = g.cell_ty(n)
            st = N["stride"][n]
            ptr = f"{N['ptr'][n]} + i_h * {st[0]}" + (f" + {tm.block_offsets(blocks, t.dims, st[1:])}" if t.dims else "")
            self.assign(out, L, self.var(n), self.load(ptr, tm.block_mask(blocks, t.dims), t.complex))
            env[n] = Val(self.var(n)[0], t.dims, self.var(n)[1])

        # loop-invariant locals, on their own tape (their adjoints accumulate over the whole sequence)
        r_inv = renderer()
        inv_segs = []
        for st in g.locals:
            if st.name not in g.invariant:
                continue
            start = len(r_inv.tape)
            v = r_inv.render(st.value)
            out.extend(r_inv.take_lines(), L)
            if v.plain:
                env[st.name] = v
                continue
            self.assign(out, L, self.var(st.name), (v.re, v.im))
            env[st.name] = Val(self.var(st.name)[0], v.dims, self.var(st.name)[1])
            inv_segs.append((st, v, start, len(r_inv.tape), self.var(st.name)[0]))
        done(r_inv)
        accumulated = [n for n in list(c.op_params) + g.invariant if n in env and not env[n].plain]
        return r_inv, inv_segs, accumulated

    def kernel(self) -> list[str]:
        tm, g, c, N, blocks = self.tm, self.g, self.c, self.N, self.blocks
        out = tm._Lines()
        env: dict[str, Val] = {}
        renderer, done = self.renderers(env)
        r_inv, inv_segs, accumulated = self.prologue(out, env, renderer, done)
        L = 1

        # 1. checkpoints every CHUNK steps
        out.add("# 1. the forward walk, storing the state every CHUNK steps", L)
        self.initial_states(out, L, env)
        out.add("for t in range(0, seq_len):", L)
        out.add("if t % CHUNK == 0:", L + 1)
        self.store_states(out, L + 2, "ck", ("NC", "t // CHUNK"))
        self.load_streams(out, L + 1, env)
        r1 = renderer()
        self.step(out, L + 1, r1, env, versions=False)
        done(r1)

        # 2. chunks backwards
        out.add("# 2. the chunks, last first: recompute the chunk's states, then walk its steps backwards", L)
        self.accumulators(out, L, env, accumulated)
        out.add("n_chunks = (seq_len + CHUNK - 1) // CHUNK", L)
        out.add("for i_c in range(0, n_chunks):", L)
        L2 = L + 1
        out.add("c0 = (n_chunks - 1 - i_c) * CHUNK", L2)
        out.add("n_steps = tl.minimum(CHUNK, seq_len - c0)", L2)
        self.load_states(out, L2, env, "ck", ("NC", "n_chunks - 1 - i_c"))
        out.add("for j in range(0, n_steps):", L2)
        self.store_states(out, L2 + 1, "wk", ("CHUNK", "j"))
        out.add("t = c0 + j", L2 + 1)
        self.load_streams(out, L2 + 1, env)
        r2 = renderer()
        self.step(out, L2 + 1, r2, env, versions=False)
        done(r2)
        out.add("tl.debug_barrier()", L2)
        out.add("for jj in range(0, n_steps):", L2)
        L3 = L2 + 1
        out.add("j = n_steps - 1 - jj", L3)
        out.add("t = c0 + j", L3)
        before = self.load_states(out, L3, env, "wk", ("CHUNK", "j"))
        self.load_streams(out, L3, env)
        r3 = renderer()
        segs = self.step(out, L3, r3, env, versions=True)
        done(r3)
        wanted = ({self.var(n)[0] for n in list(c.op_streams) + accumulated} | {v.re for v in before.values()}
                  | {seg[4] for seg in segs if seg[4] is not None})
        adj = Adjoints(r3, blocks, wanted)
        for n in accumulated:
            adj.adj["v", env[n].re] = self.acc("gp", n, env[n].complex)
        for s in g.states:
            adj.adj["v", env[s].re] = self.acc("ds", s, c.cell_types[s].complex)
        for o in c.readouts:
            v = env.get(o)
            if v is None or v.plain:
                continue
            ptr, m = self.token_offsets(o)
            adj.add(("v", v.re), self.seed(o, self.load(f"{self.buf['do', o]} + {ptr}", m, g.cell_ty(o).complex)))
        self.backward(adj, r3, segs)
        out.extend(adj.lines, L3)
        for n in c.op_streams:
            got = adj.adj.get(("v", self.var(n)[0]))
            if got is not None:
                self.store_stream_grad(out, L3, n, got, self.token_offsets, g.cell_ty(n).dims)
        for n in accumulated:
            self.write_back(out, L3, self.acc("gp", n, env[n].complex), adj.adj["v", env[n].re])
        for s in g.states:
            t = c.cell_types[s]
            got = adj.adj.get(("v", before[s].re))
            self.write_back(out, L3, self.acc("ds", s, t.complex),
                            got if got is not None else (self.zeros(t.dims), self.zeros(t.dims)))
        out.add("tl.debug_barrier()", L2)
        self.epilogue(out, env, adj._n, r_inv, inv_segs, accumulated)
        return tm.inline_single_use_temporaries(tm.drop_dead_temporaries(out.lines))

    def initial_states(self, out, level: int, env: dict) -> None:
        """The states' registers at the start of the sequence (the initial state, or the declared constant)."""
        for s in self.g.states:
            t = self.c.cell_types[s]
            decl = next(d for d in self.g.cell.states if d.name == s)
            init = literal(decl.init.value) if isinstance(decl.init, ir.Num) else "0.0"
            ptr, m = self.state_offsets(s, None)
            out.add("if USE_INITIAL_STATE:", level)
            h0 = self.load(f"{self.N['h0'][s]} + {ptr}", m, t.complex)
            self.assign(out, level + 1, self.var(s), _part(f"{{}} + {self.zeros(t.dims)}", h0))
            out.add("else:  # the declared values, by a load that reads nothing: a loaded state's layout "
                    "(_rt.unread_address)", level)
            zero = self.load(f"{self.N['h0'][s]} + {ptr}", self.tm.reads_nothing(self.shape(t.dims), m), t.complex)
            zero = _part(f"{{}} + {self.zeros(t.dims)}", zero)
            self.assign(out, level + 1, self.var(s), (zero[0] if init == "0.0" else f"{zero[0]} + {init}", zero[1]))
            env[s] = Val(self.var(s)[0], t.dims, self.var(s)[1])

    def accumulators(self, out, level: int, env: dict, accumulated: list) -> None:
        """Registers summing the params' (and invariant locals') adjoints, and the states' adjoints (``ds``: from
        the final states' gradients; zeros where none was given, USE_FINAL_STATE_GRADIENT False)."""
        for n in accumulated:
            zeros = self.zeros(env[n].dims)
            self.assign(out, level, self.acc("gp", n, env[n].complex), (zeros, zeros))
        for s in self.g.states:
            t = self.c.cell_types[s]
            ptr, m = self.state_offsets(s, None)
            out.add("if USE_FINAL_STATE_GRADIENT:", level)
            dht = self.seed(s, self.load(f"{self.buf['dht', s]} + {ptr}", m, t.complex))
            self.assign(out, level + 1, self.acc("ds", s, t.complex), _part(f"{{}} + {self.zeros(t.dims)}", dht))
            out.add("else:  # zeros, by a load that reads nothing: a loaded gradient's layout (_rt.unread_address)", level)
            zero = self.load(f"{self.buf['dht', s]} + {ptr}", self.tm.reads_nothing(self.shape(t.dims), m), t.complex)
            self.assign(out, level + 1, self.acc("ds", s, t.complex), _part(f"{{}} + {self.zeros(t.dims)}", zero))

    def epilogue(self, out, env: dict, n_temps: int, r_inv, inv_segs: list, accumulated: list) -> None:
        """The invariant locals' adjoints to the params, then the stores of the initial states' gradients (the
        ``ds`` accumulators) and of the params' (per program)."""
        tm, g, c, blocks = self.tm, self.g, self.c, self.blocks
        L = 1
        out.add("# 3. gradients of the initial state and (per program) of the params", L)
        adj_inv = Adjoints(r_inv, blocks, {self.var(n)[0] for n in accumulated})
        adj_inv._n = n_temps
        for n in accumulated:
            adj_inv.adj["v", env[n].re] = self.acc("gp", n, env[n].complex)
        self.backward(adj_inv, r_inv, inv_segs)
        out.extend(adj_inv.lines, L)
        out.add("if STORE_INITIAL_STATE_GRADIENT:", L)
        for s in g.states:
            ptr, m = self.state_offsets(s, None)
            self.store_gradient(out, L + 1, s, f"{self.buf['dh0', s]} + {ptr}",
                                self.acc("ds", s, c.cell_types[s].complex), m, c.cell_types[s].dims)
        for n in c.op_params:
            t = g.cell_ty(n)
            if n not in accumulated:
                continue
            offs, numel = tm.contiguous_offsets(blocks, t.dims, t.complex)
            ptr = f"{self.buf['dp', n]} + (i_b * H + i_h) * {numel}" + (f" + {offs}" if t.dims else "")
            self.store_gradient(out, L, n, ptr, adj_inv.adj["v", env[n].re], tm.block_mask(blocks, t.dims), t.dims)

    @staticmethod
    def write_back(out, level: int, target: Pair, value: Pair) -> None:
        """Loop-carried accumulators take the step's result (parts that did not change are left alone)."""
        for t, v in zip(target, value):
            if t is not None and v is not None and v != t:
                out.add(f"{t} = {v}", level)

    @staticmethod
    def backward(adj: Adjoints, r: TapeRenderer, segs: list[tuple]) -> None:
        """Walk the statements backwards, pushing each assigned variable's adjoint through its tape."""
        for st, v, start, end, target in reversed(segs):
            if target is None or ("v", target) not in adj.adj or v.plain:
                continue
            g = adj.adj["v", target]
            if not v.complex:
                g = (g[0], None)
            if isinstance(st, ir.Update):
                t = r.c.cell_types[st.target]
                g = (adj.reduce_to(v.dims, g[0], t.dims), None if g[1] is None else adj.reduce_to(v.dims, g[1], t.dims))
            root = st.value
            if isinstance(root, ir.Name):
                adj.to_child(root, g, v.dims)
            else:
                adj.add(("n", id(root)), g)
            for e in reversed(r.tape[start:end]):
                adj.back(e)

    # ------------------------------------------------------------------ host side
    def launcher(self, out) -> None:
        """``_backward_recurrent(_state, *inputs, *, args, _grads)``: ((initial state grads), (input grads))."""
        g, c = self.g, self.c
        sizes = {d: c.dim_sizes[d] for d in self.dims}
        first = c.op_streams[0]

        def shape(dims) -> str:
            return "".join(f", {sizes[d]}" for d in dims)

        def as_complex(name: str, text: str) -> str:
            return f"torch.view_as_complex({text})" if self.ty(name).complex else text

        n_outs = len(c.readouts)
        kw = "".join(f", {a}" for a in g.args)
        scan = self.FORM == "scan"
        out.add(f"def _backward_{self.FORM}(_state, {', '.join(g.inputs)}, *{kw}, cu_seqlens=None, "
                "use_initial_state=True, initial_state_gradient=True, _grads):")
        out.add(f'"""The Triton backward of the {self.FORM} form: ((initial state grads), (input grads)).', 1)
        out.add("", 0)
        out.add("_grads: the gradients of (readouts..., final states...) as autograd gives them (None: zero;", 1)
        out.add("the kernel reads no final-state gradient where none is given). use_initial_state=False: the", 1)
        out.add("states start from their declared values (_state is not read); initial_state_gradient=False:", 1)
        out.add("the initial states' gradients are neither stored nor returned (None).", 1)
        out.add("The state entering every block of tokens is kept; stream and param gradients are summed back" if scan
                else "Checkpoints every _rt.checkpoint_every(T) steps; stream and param gradients are summed back", 1)
        out.add("to the inputs' (possibly broadcast) shapes. cu_seqlens: N packed sequences (B = 1), a program row each.", 1)
        out.add('"""', 1)
        out.add(f"_B, _T, _H = {first}.shape[0], {first}.shape[1], AXIS_SIZE", 1)
        out.add(f"_dtype, _device = _rt.real_dtype({first}), {first}.device", 1)
        out.add("_pk = _rt.Packing(cu_seqlens, _B, _T, _device)", 1)
        state_numel = g.state_numel()
        tiled_size = sizes[self.tiled] if self.tiled is not None else None
        out.add(f"_cfg = _rt.launch_config({self.LAUNCH!r}, tiled_size={tiled_size}, state_numel={state_numel}, "
                f"param_numel={2 * g.param_numel()}, device=_device, backward=True)", 1)   # params, their grads
        out.add(f"_tiles = triton.cdiv({tiled_size}, _cfg['block'])" if self.tiled is not None else "_tiles = 1", 1)
        if scan:
            out.add("_nc = triton.cdiv(_pk.longest, _cfg['block_t'])", 1)
        else:
            out.add("_chunk = _rt.checkpoint_every(_pk.longest)", 1)
            out.add("_nc = triton.cdiv(_pk.longest, _chunk)", 1)
        out.add(f"_use_dht = any(_g is not None for _g in _grads[{n_outs}:])", 1)
        for i, s in enumerate(g.states):
            sh, cx = shape(c.cell_types[s].dims), c.cell_types[s].complex
            out.add(f"_ck_{s} = _rt.empty((_pk.N, _H, _nc{sh}), _dtype, _device, {cx})", 1)
            if not scan:
                out.add(f"_wk_{s} = _rt.empty((_pk.N, _H, _chunk{sh}), _dtype, _device, {cx})", 1)
            alloc = "(_rt.zeros if _tiles > 1 else _rt.empty)" if self.lacks_tiled_axis(s) else "_rt.empty"
            out.add(f"_dh0_{s} = {alloc}((_pk.N, _H{sh}), _dtype, _device, {cx}) if initial_state_gradient else None",
                    1)
            out.add(f"_dht_{s} = _rt.grad_in(_grads[{n_outs + i}], (_pk.N, _H{sh}), _dtype, _device, {cx}) "
                    "if _use_dht else _rt.unread_address(_device)", 1)
        for i, o in enumerate(c.readouts):
            t = g.cell_ty(o)
            out.add(f"_do_{o} = _rt.grad_in(_grads[{i}], (_B, _T, _H{shape(t.dims)}), _dtype, _device, "
                    f"{t.complex})", 1)
        # every program stores each of its tokens' stream gradients, and its param gradients, once: no zero fill
        # (a full write pass per buffer; tests fill these buffers with NaN to check that nothing is left unwritten)
        for n in c.op_streams:
            t = g.cell_ty(n)
            split = ", split=_tiles > 1" if self.lacks_tiled_axis(n) else ""
            out.add(f"_dx_{n}, _sum_{n} = _rt.stream_grad_buffer({n}, (_B, _T, _H{shape(t.dims)}), _dtype, "
                    f"{t.complex}{split})", 1)
        for n in c.op_params:
            t = g.cell_ty(n)
            alloc = "(_rt.zeros if _tiles > 1 else _rt.empty)" if self.lacks_tiled_axis(n) else "_rt.empty"
            out.add(f"_dp_{n} = {alloc}((_pk.N, _H{shape(t.dims)}), _dtype, _device, {t.complex})", 1)
        out.add("_args = (", 1)
        for n in c.op_streams:
            out.add(f"*_rt.stream({n}, _B, _T, _H, {tuple(sizes[d] for d in g.cell_ty(n).dims)}, _dtype),", 2)
        for n in c.op_params:
            out.add(f"*_rt.param({n}, _H, {tuple(sizes[d] for d in g.cell_ty(n).dims)}, _dtype),", 2)
        for i, s in enumerate(g.states):
            out.add(f"_rt.state_in(_state[{i}], _dtype) if use_initial_state else _rt.unread_address(_device), "
                    f"_dht_{s}, _dh0_{s}, _ck_{s},"
                    f"{'' if scan else f' _wk_{s},'}", 2)
        buffers = [f"_do_{o}" for o in c.readouts] + [f"_dx_{n}" for n in c.op_streams] + \
            [f"_dp_{n}" for n in c.op_params]
        if buffers:
            out.add(", ".join(buffers) + ",", 2)
        if g.args:
            out.add(f"_rt.cell_args([{', '.join(g.args)}], _dtype, _device),", 2)
        out.add("_pk.cu, _T, _nc," if scan else "_pk.cu, _T, _chunk, _nc,", 2)
        out.add(")", 1)
        blocks = {d: "_cfg['block']" if d == self.tiled else _pow2(sizes[d]) for d in self.dims}
        out.add("_meta = dict(", 1)
        out.add(", ".join([f"{self.blocks.size(d)}={sizes[d]}, {self.blocks.block(d)}={blocks[d]}"
                           for d in self.dims] + ["BLOCK_T=_cfg['block_t']"] * scan
                          + [f"{self.buf['SUM', n]}=_sum_{n}" for n in c.op_streams]
                          + ["SPLIT=_tiles > 1"] * (self.tiled is not None)) + ",", 2)
        out.add("DTYPE=_rt.tl_dtype(_dtype), USE_INITIAL_STATE=use_initial_state, USE_FINAL_STATE_GRADIENT=_use_dht,", 2)
        out.add("STORE_INITIAL_STATE_GRADIENT=initial_state_gradient, IS_VARLEN=_pk.varlen, num_warps=_cfg['num_warps'],",
                2)
        out.add(")", 1)
        out.add("# the policy's warps, or on a GPU the fastest of them and twice or half as many (triton_tune)", 1)
        out.add(f"_tt.launch({self.kernel_name}, lambda _m: (_pk.N, _H, _tiles), _args, _meta,", 1)
        out.add("lambda: _rt.warp_alternatives(_cfg))", 3)
        states = "".join(f"{as_complex(s, f'_dh0_{s}')}.to(_state[{i}].dtype) if initial_state_gradient else None, "
                         for i, s in enumerate(g.states))
        grads = []
        for n in g.inputs:
            if n in c.op_streams:
                grads.append(f"{as_complex(n, f'_dx_{n}')}.sum_to_size({n}.shape).to({n}.dtype)")
            else:
                grads.append(f"{as_complex(n, f'_dp_{n}')}[:, None].sum_to_size({n}.shape).to({n}.dtype)")
        out.add(f"return ({states}), ({', '.join(grads)},)", 1)


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
