"""Generate the Triton backward kernel of the recurrent form: reverse-mode differentiation of the cell's step.

The step is rendered as in the forward kernel, but on a *tape* (``TapeRenderer``: every subexpression
bound to a temporary and recorded); ``Adjoints`` then walks the tape backwards and writes, for every
node, the adjoints of its operands from the op table's derivative rules (``codegen/ops.py``,
``triton_grad``; contractions, reductions, indexing and broadcasting are written here). The result is
Triton text that pushes the gradients of a step's results (its readouts, its final states) back to the
state before the step, the token's streams and the params.

The kernel (grid ``(B, H)``, the whole state in one program; ``CHUNK`` a runtime argument):

1. walk the sequence from the initial state, storing the state every CHUNK steps (checkpoints
   ``[B, H, NC, *state]``, NC = ceil(T / CHUNK));
2. for every chunk, last first: recompute its states from its checkpoint into a scratch buffer
   ``[B, H, CHUNK, *state]``, then walk its steps backwards, each time recomputing the step from the
   state before it (on the tape) and pushing the adjoints through it. The state's adjoint is carried in
   registers from step to step; stream gradients are stored per token; param gradients accumulate in
   registers (per program; the host sums over programs);
3. store the initial state's gradient and the param gradients.

Memory: O(T / CHUNK + CHUNK) states per sequence, not one per step; compute: about three forward passes.
Real cells only: a complex value, an in-cell matrix inverse, or broadcasting over a repeated dim name
raises ``Unsupported`` and the recurrent form's backward stays the torch twin's.
"""

from __future__ import annotations

from seqdsl import ir
from seqdsl.codegen.ops import OPS
from seqdsl.codegen.triton_render import Blocks, TritonRenderer, Unsupported, Val, index_at, literal

INDENT = "    "


class TapeRenderer(TritonRenderer):
    """A TritonRenderer that binds every non-constant subexpression to a temporary and records it.

    ``tape``: the rendered nodes in evaluation order (children before parents); ``vals[id(node)]``: its
    value. No loop-invariant hoisting (the backward recomputes every step from its state).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tape: list[ir.Expr] = []
        self.vals: dict[int, Val] = {}

    def render(self, e: ir.Expr) -> Val:
        v = self.render_here(e)
        if v.complex:
            raise Unsupported("a complex value (the Triton backward is real)")
        if not v.plain:
            v = Val(self.bind(v.re), v.dims)
        self.vals[id(e)] = v
        self.tape.append(e)
        return v


class Adjoints:
    """Adjoint accumulation and the derivative rules, emitting Triton lines into ``lines``.

    Keys: ``("v", variable)`` for kernel variables (streams, params, states, locals: only those in
    ``wanted`` collect adjoints), ``("n", id(node))`` for intermediate nodes. Each accumulation binds a
    new temporary ``_g<k>`` (so no loop-carried value is overwritten by accident); ``adj[key]`` is the
    text holding the key's adjoint so far.
    """

    def __init__(self, r: TapeRenderer, blocks: Blocks, wanted: set[str]):
        self.r = r
        self.blocks = blocks
        self.wanted = wanted
        self.adj: dict[tuple, str] = {}
        self.lines: list[str] = []
        self._n = 0

    # ------------------------------------------------------------------ accumulation
    def add(self, key: tuple, text: str) -> None:
        name = f"_g{self._n}"
        self._n += 1
        self.lines.append(f"{name} = {text}" if key not in self.adj else f"{name} = {self.adj[key]} + {text}")
        self.adj[key] = name

    def temp(self, text: str) -> str:
        """A new temporary holding ``text``."""
        name = f"_g{self._n}"
        self._n += 1
        self.lines.append(f"{name} = {text}")
        return name

    def to_child(self, child: ir.Expr, text: str, frame: tuple) -> None:
        """Add ``text`` (a block of dims ``frame``) to the adjoint of ``child``, summed over broadcast axes."""
        cv = self.r.vals[id(child)]
        if cv.plain:
            return
        if isinstance(child, ir.Name):
            if cv.re not in self.wanted:
                return
            key = ("v", cv.re)
        else:
            key = ("n", id(child))
        self.add(key, self.reduce_to(cv.dims, text, frame))

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

    # ------------------------------------------------------------------ the rules
    def text(self, e: ir.Expr, frame: tuple) -> str:
        """A node's value aligned to ``frame`` (constants as literals)."""
        v = self.r.vals[id(e)]
        if v.plain:
            return literal(v.value)
        return self.r.align(v.re, v.dims, frame)

    def back(self, e: ir.Expr) -> None:
        """Push the adjoint of node e (already complete) to its operands."""
        g = self.adj.get(("n", id(e)))
        if g is None or isinstance(e, ir.Name):
            return
        y = self.r.vals[id(e)]
        frame = y.dims
        if isinstance(e, ir.Unary):
            self.to_child(e.operand, f"(-{g})" if e.op == "-" else g, frame)
        elif isinstance(e, ir.Binary):
            self.binary(e, g, y)
        elif isinstance(e, ir.Index):
            t = self.r.vals[id(e.target)]
            sel = f"({self.blocks.offset(t.dims[0])} == {e.index})" + index_at(0, len(t.dims))
            self.to_child(e.target, f"tl.where({sel}, {self.r.align(g, frame, t.dims)}, 0.0)", t.dims)
        elif isinstance(e, ir.Call):
            self.call(e, g, y)
        else:
            raise Unsupported(f"no derivative for {type(e).__name__}")

    def binary(self, e: ir.Binary, g: str, y: Val) -> None:
        a, b = self.r.vals[id(e.left)], self.r.vals[id(e.right)]
        if e.op == "@":
            self.matmul(e, g, a, b)
            return
        frame = y.dims
        A, B, Y = self.text(e.left, frame), self.text(e.right, frame), y.re
        if e.op == "+":
            da, db = g, g
        elif e.op == "-":
            da, db = g, f"(-{g})"
        elif e.op == "*":
            da, db = f"({g} * {B})", f"({g} * {A})"
        elif e.op == "/":
            da, db = f"({g} / {B})", f"(-{g} * {Y} / {B})"
        else:                                                   # '**'
            if b.plain:
                p = float(b.value)
                da = f"({g} * {literal(p)} * {_power(A, p - 1)})" if p != 0.5 else f"({g} * 0.5 / {Y})"
                db = None
            else:
                da, db = f"({g} * {B} * {Y} / {A})", f"({g} * {Y} * tl.log({A}))"
        self.to_child(e.left, da, frame)
        if db is not None:
            self.to_child(e.right, db, frame)

    def matmul(self, e: ir.Binary, g: str, a: Val, b: Val) -> None:
        """``a @ b`` contracts a's last axis with b's first (positionally, as the forward renders it)."""
        c = self.r.contract
        if a.plain or b.plain:
            raise Unsupported("'@' with a constant operand")
        A, B = a.re, b.re
        if len(a.dims) == 1 and len(b.dims) == 1:
            da, db = f"({g} * {B})", f"({g} * {A})"
        elif len(a.dims) == 1:                                  # (k) @ (k, j) -> (j)
            da = c(B, b.dims, g, b.dims[1:])
            db = f"({A}[:, None] * {g}[None, :])"
        elif len(b.dims) == 1:                                  # (i, k) @ (k) -> (i)
            da = f"({g}[:, None] * {B}[None, :])"
            db = c(g, a.dims[:1], A, a.dims)
        else:                                                   # (i, k) @ (k, j) -> (i, j)
            da = c(g, (a.dims[0], b.dims[1]), f"tl.trans({B})", (b.dims[1], b.dims[0]))
            db = c(f"tl.trans({A})", (a.dims[1], a.dims[0]), g, (a.dims[0], b.dims[1]))
        self.to_child(e.left, da, a.dims)
        self.to_child(e.right, db, b.dims)

    def call(self, e: ir.Call, g: str, y: Val) -> None:
        op = OPS[e.func]
        if op.kind == "eye":
            return
        if e.func == "inv":                                     # d inv(A) = -inv(A)^T g inv(A)^T
            a = self.r.vals[id(e.args[0])]
            yt = f"tl.trans({y.re})"
            left = self.temp(self.r.contract(yt, a.dims, g, a.dims))
            self.to_child(e.args[0], f"(-{self.r.contract(left, a.dims, yt, a.dims)})", a.dims)
            return
        if op.kind in ("complex", "inverse", "token"):
            raise Unsupported(f"no Triton derivative for {e.func}()")
        opts = {k: float(v) if isinstance(v, (int, float)) else v for k, v in op.options.items()}
        for kw in e.kwargs:
            v = self.r.vals[id(kw.value)]
            if not v.plain:
                raise Unsupported(f"a non-constant option {kw.name} of {e.func}()")
            opts[kw.name] = float(v.value)
        args = list(e.args)
        frame = y.dims
        if op.kind == "reduce":
            a = self.r.vals[id(args[0])]
            spread = f"({self.r.align(g, frame, a.dims)} + {self.zeros(a.dims)})"
            if e.func == "mean":
                spread = f"({spread} / {float(self.r.c.dim_sizes[a.dims[-1]])})"
            self.to_child(args[0], spread, a.dims)
            return
        if op.kind == "outer":
            a, b = (self.r.vals[id(x)] for x in args)
            self.to_child(args[0], self.r.contract(g, frame, b.re, b.dims) if not b.plain else "0.0", a.dims)
            self.to_child(args[1], self.r.contract(a.re, a.dims, g, frame) if not a.plain else "0.0", b.dims)
            return
        if op.kind == "transpose":
            self.to_child(args[0], f"tl.trans({g})", frame[::-1])
            return
        if not op.triton_grad:
            raise Unsupported(f"no Triton derivative for {e.func}()")
        keys = {"g": g, "y": y.re, **{k: literal(v) if isinstance(v, float) else v for k, v in opts.items()}}
        if op.kind in ("lastaxis", "norm"):
            keys.update(self.r.last_axis(frame))
            keys["n"] = literal(keys["n"])
        texts = [self.text(x, frame) for x in args]
        for i, (x, rule) in enumerate(zip(args, op.triton_grad)):
            self.to_child(x, "(" + rule.format(*texts, **keys) + ")", frame)


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
    after its forward kernel was generated: its names, dims and cell types are reused)."""

    def __init__(self, gen):
        from seqdsl.codegen import triton_module as tm

        self.tm = tm
        self.g = gen
        self.c = gen.c
        self.kernel_name = f"{gen.name}_recurrent_bwd_kernel"
        for s in gen.states:
            if self.c.cell_types[s].complex:
                raise Unsupported(f"the state {s} is complex (the Triton backward is real)")
        for n in list(self.c.op_inputs) + list(self.c.readouts):
            if gen.cell_ty(n).complex:
                raise Unsupported(f"'{n}' is complex (the Triton backward is real)")
        self.dims = gen.cell_dims()
        self.blocks = Blocks({d: self.c.dim_sizes[d] for d in self.dims}, None)
        self.N = gen.kernel_names(self.dims)
        taken = {v for kind in ("value", "ptr", "p", "h0", "ht") for x in self.N[kind].values()
                 for v in (x if isinstance(x, tuple) else (x,))}
        taken |= {v for strides in self.N["stride"].values() for v in strides}
        self.buf = {}
        for kind, names in (("do", self.c.readouts), ("dht", gen.states), ("dx", self.c.op_streams),
                            ("dp", self.c.op_params), ("dh0", gen.states), ("ck", gen.states), ("wk", gen.states),
                            ("gp", list(self.c.op_params) + gen.invariant), ("ds", gen.states)):
            for n in names:
                name = f"{kind}_{n}"
                if name in taken:
                    raise Unsupported(f"the kernel name {name} is taken by the spec")
                self.buf[kind, n] = name
                taken.add(name)

    # ------------------------------------------------------------------ pieces
    def var(self, name: str) -> str:
        return self.N["value"][name][0]

    def step(self, out, level: int, r: TapeRenderer, env: dict, versions: bool) -> list[tuple]:
        """The cell's step (statements outside the loop-invariant locals) rendered into ``out``.

        versions: every state update gets a fresh variable (the backward needs the state before the
        step and after it); else states are overwritten in place (forward recomputation).
        Returns [(statement, value, tape start, tape end, variable assigned or None)].
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
                out.add(f"{target} = {v.re}", level)
                env[st.name] = Val(target, v.dims)
            else:
                t = c.cell_types[st.target]
                target = self.var(st.target)
                if versions:
                    count[st.target] = count.get(st.target, 0) + 1
                    target = f"{target}_v{count[st.target]}"
                if v.plain or v.dims != t.dims:
                    aligned = v.re if v.plain else r.align(v.re, v.dims, t.dims)
                    text = f"{aligned} + {self.zeros(t.dims)}"
                else:
                    text = v.re
                out.add(f"{target} = {text}", level)
                env[st.target] = Val(target, t.dims)
            segs.append((st, v, start, len(r.tape), target))
        return segs

    def zeros(self, dims: tuple) -> str:
        return f"tl.zeros([{', '.join(self.blocks.block(d) for d in dims)}], dtype=DTYPE)"

    def state_offsets(self, s: str, slots: tuple[str, str] | None) -> tuple[str, str | None]:
        """(offset, mask) of state s in a contiguous [B, H, *state] buffer, or with ``slots = (count,
        slot)`` in a [B, H, count, *state] buffer at that slot."""
        t = self.c.cell_types[s]
        offs, numel = self.tm.contiguous_offsets(self.blocks, t.dims, False)
        base = "(i_b * H + i_h)" if slots is None else f"((i_b * H + i_h) * {slots[0]} + {slots[1]})"
        ptr = f"{base} * {numel}" + (f" + {offs}" if t.dims else "")
        return ptr, self.tm.block_mask(self.blocks, t.dims)

    def token_offsets(self, n: str) -> tuple[str, str | None]:
        """(offset, mask) of a value of token t in a contiguous [B, T, H, *dims] buffer."""
        t = self.g.cell_ty(n)
        offs, numel = self.tm.contiguous_offsets(self.blocks, t.dims, False)
        ptr = f"((i_b * T + t) * H + i_h) * {numel}" + (f" + {offs}" if t.dims else "")
        return ptr, self.tm.block_mask(self.blocks, t.dims)

    @staticmethod
    def load(ptr: str, m: str | None) -> str:
        return f"tl.load({ptr}, mask={m}, other=0.0)" if m else f"tl.load({ptr})"

    @staticmethod
    def store(ptr: str, value: str, m: str | None, dims: tuple) -> str:
        """A store of a [*dims] block; a value without dims is stored as a 1-element block (it may be a 0-d
        block, e.g. an accumulator that started as tl.zeros([]), which a scalar pointer does not take)."""
        if not dims:
            return f"tl.store({ptr} + tl.zeros([1], dtype=tl.int32), {value} + tl.zeros([1], dtype=DTYPE))"
        return f"tl.store({ptr}, {value}, mask={m})" if m else f"tl.store({ptr}, {value})"

    def load_streams(self, out, level: int, env: dict) -> None:
        """The streams of token t (loaded at ``t``, not through running pointers: the walk goes backwards)."""
        for n in self.c.op_streams:
            t = self.g.cell_ty(n)
            st = self.N["stride"][n]
            offs = f" + {self.tm.block_offsets(self.blocks, t.dims, st[3:])}" if t.dims else ""
            ptr = f"{self.N['ptr'][n]} + i_b * {st[0]} + t * {st[1]} + i_h * {st[2]}{offs}"
            out.add(f"{self.var(n)} = {self.load(ptr, self.tm.block_mask(self.blocks, t.dims))}", level)
            env[n] = Val(self.var(n), t.dims)

    # ------------------------------------------------------------------ the kernel
    def kernel(self) -> list[str]:
        tm, g, c, N, blocks = self.tm, self.g, self.c, self.N, self.blocks
        out = tm._Lines()
        env: dict[str, Val] = {}

        def resolve(name: str) -> Val:
            if name in env:
                return env[name]
            raise Unsupported(f"'{name}' is not available inside the kernel")

        def renderer() -> TapeRenderer:
            r = TapeRenderer(c, resolve, blocks)
            r._n = counter[0]
            return r

        counter = [0]

        def done(r: TapeRenderer) -> None:
            counter[0] = r._n

        sig = []
        for n in c.op_streams:
            sig.append(f"{', '.join([N['ptr'][n]] + N['stride'][n])},  # stream {n}")
        for n in c.op_params:
            sig.append(f"{', '.join([N['ptr'][n]] + N['stride'][n])},  # param {n}")
        for s in g.states:
            sig.append(f"{N['h0'][s]}, {self.buf['dht', s]}, {self.buf['dh0', s]}, {self.buf['ck', s]}, "
                       f"{self.buf['wk', s]},  # state {s}: initial, its gradient at the end / start, "
                       "checkpoints, scratch")
        for o in c.readouts:
            sig.append(f"{self.buf['do', o]},  # gradient of readout {o}: [B, T, H, ...]")
        for n in c.op_streams:
            sig.append(f"{self.buf['dx', n]},  # gradient of stream {n}: [B, T, H, ...]")
        for n in c.op_params:
            sig.append(f"{self.buf['dp', n]},  # gradient of param {n} per program: [B, H, ...]")
        if g.args:
            sig.append(f"args,  # cell args: {', '.join(g.args)}")
        sig.append("T, CHUNK, NC,")
        sig.append(", ".join(f"{blocks.size(d)}: tl.constexpr, {blocks.block(d)}: tl.constexpr"
                             for d in self.dims) + ",")
        sig.append("DTYPE: tl.constexpr, USE_INITIAL_STATE: tl.constexpr,")
        tm.open_kernel(out, self.kernel_name, sig)
        L = 1
        out.add("H = tl.num_programs(1)", L)
        for d in self.dims:
            out.add(f"{blocks.offset(d)} = tl.arange(0, {blocks.block(d)})", L)
            out.add(f"{blocks.mask(d)} = {blocks.offset(d)} < {blocks.size(d)}", L)
        for i, a in enumerate(g.args):
            out.add(f"{self.var(a)} = tl.load(args + {i})", L)
            env[a] = Val(self.var(a), ())
        for n in c.op_params:
            t = g.cell_ty(n)
            st = N["stride"][n]
            ptr = f"{N['ptr'][n]} + i_h * {st[0]}" + (f" + {tm.block_offsets(blocks, t.dims, st[1:])}" if t.dims else "")
            out.add(f"{self.var(n)} = {self.load(ptr, tm.block_mask(blocks, t.dims))}", L)
            env[n] = Val(self.var(n), t.dims)

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
            out.add(f"{self.var(st.name)} = {v.re}", L)
            env[st.name] = Val(self.var(st.name), v.dims)
            inv_segs.append((st, v, start, len(r_inv.tape), self.var(st.name)))
        done(r_inv)

        # 1. checkpoints every CHUNK steps
        out.add("# 1. the forward walk, storing the state every CHUNK steps", L)
        for s in g.states:
            t = c.cell_types[s]
            decl = next(d for d in g.cell.states if d.name == s)
            init = literal(decl.init.value) if isinstance(decl.init, ir.Num) else "0.0"
            ptr, m = self.state_offsets(s, None)
            out.add("if USE_INITIAL_STATE:", L)
            out.add(f"{self.var(s)} = {self.load(N['h0'][s] + ' + ' + ptr, m)} + {self.zeros(t.dims)}", L + 1)
            out.add("else:", L)
            out.add(f"{self.var(s)} = {self.zeros(t.dims)}{'' if init == '0.0' else ' + ' + init}", L + 1)
            env[s] = Val(self.var(s), t.dims)
        out.add("for t in range(0, T):", L)
        out.add("if t % CHUNK == 0:", L + 1)
        for s in g.states:
            ptr, m = self.state_offsets(s, ("NC", "t // CHUNK"))
            out.add(self.store(f"{self.buf['ck', s]} + {ptr}", self.var(s), m, c.cell_types[s].dims), L + 2)
        self.load_streams(out, L + 1, env)
        r1 = renderer()
        self.step(out, L + 1, r1, env, versions=False)
        done(r1)

        # 2. chunks backwards
        out.add("# 2. the chunks, last first: recompute the chunk's states, then walk its steps backwards", L)
        for n in list(c.op_params) + g.invariant:
            if n in env and not env[n].plain:
                out.add(f"{self.buf['gp', n]} = {self.zeros(env[n].dims)}", L)
        for s in g.states:
            t = c.cell_types[s]
            ptr, m = self.state_offsets(s, None)
            out.add(f"{self.buf['ds', s]} = {self.load(self.buf['dht', s] + ' + ' + ptr, m)} + {self.zeros(t.dims)}", L)
        out.add("for i_c in range(0, NC):", L)
        L2 = L + 1
        out.add("c0 = (NC - 1 - i_c) * CHUNK", L2)
        out.add("n_steps = tl.minimum(CHUNK, T - c0)", L2)
        for s in g.states:
            ptr, m = self.state_offsets(s, ("NC", "NC - 1 - i_c"))
            out.add(f"{self.var(s)} = {self.load(self.buf['ck', s] + ' + ' + ptr, m)}", L2)
            env[s] = Val(self.var(s), c.cell_types[s].dims)
        out.add("for j in range(0, n_steps):", L2)
        for s in g.states:
            ptr, m = self.state_offsets(s, ("CHUNK", "j"))
            out.add(self.store(f"{self.buf['wk', s]} + {ptr}", self.var(s), m, c.cell_types[s].dims), L2 + 1)
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
        before = {}
        for s in g.states:
            ptr, m = self.state_offsets(s, ("CHUNK", "j"))
            out.add(f"{self.var(s)} = {self.load(self.buf['wk', s] + ' + ' + ptr, m)}", L3)
            env[s] = before[s] = Val(self.var(s), c.cell_types[s].dims)
        self.load_streams(out, L3, env)
        r3 = renderer()
        segs = self.step(out, L3, r3, env, versions=True)
        done(r3)
        wanted = ({self.var(n) for n in c.op_streams} | {self.var(n) for n in c.op_params}
                  | {self.var(n) for n in g.invariant} | {v.re for v in before.values()}
                  | {seg[4] for seg in segs if seg[4] is not None})
        adj = Adjoints(r3, blocks, wanted)
        adj._n = 0
        for n in list(c.op_params) + g.invariant:
            if n in env and not env[n].plain:
                adj.adj["v", env[n].re] = self.buf["gp", n]
        for s in g.states:
            adj.adj["v", env[s].re] = self.buf["ds", s]
        for o in c.readouts:
            v = env.get(o)
            if v is None or v.plain:
                continue
            ptr, m = self.token_offsets(o)
            adj.add(("v", v.re), self.load(f"{self.buf['do', o]} + {ptr}", m))
        self.backward(adj, r3, segs)
        out.extend(adj.lines, L3)
        for n in c.op_streams:
            got = adj.adj.get(("v", self.var(n)))
            if got is not None:
                ptr, m = self.token_offsets(n)
                out.add(self.store(f"{self.buf['dx', n]} + {ptr}", got, m, g.cell_ty(n).dims), L3)
        for n in list(c.op_params) + g.invariant:
            got = adj.adj.get(("v", self.var(n)))
            if got is not None and got != self.buf["gp", n]:
                out.add(f"{self.buf['gp', n]} = {got}", L3)
        for s in g.states:
            got = adj.adj.get(("v", before[s].re))
            out.add(f"{self.buf['ds', s]} = {got if got is not None else self.zeros(c.cell_types[s].dims)}", L3)
        out.add("tl.debug_barrier()", L2)

        # 3. the invariant locals' adjoints to the params, then the stores
        out.add("# 3. gradients of the initial state and (per program) of the params", L)
        adj_inv = Adjoints(r_inv, blocks, {self.var(n) for n in c.op_params} | {self.var(n) for n in g.invariant})
        adj_inv._n = adj._n
        for n in list(c.op_params) + g.invariant:
            if n in env and not env[n].plain:
                adj_inv.adj["v", self.var(n)] = self.buf["gp", n]
        self.backward(adj_inv, r_inv, inv_segs)
        out.extend(adj_inv.lines, L)
        for s in g.states:
            ptr, m = self.state_offsets(s, None)
            out.add(self.store(f"{self.buf['dh0', s]} + {ptr}", self.buf["ds", s], m, c.cell_types[s].dims), L)
        for n in c.op_params:
            t = g.cell_ty(n)
            got = adj_inv.adj.get(("v", self.var(n)), self.buf["gp", n])
            offs, numel = tm.contiguous_offsets(blocks, t.dims, False)
            ptr = f"(i_b * H + i_h) * {numel}" + (f" + {offs}" if t.dims else "")
            out.add(self.store(f"{self.buf['dp', n]} + {ptr}", got, tm.block_mask(blocks, t.dims), t.dims), L)
        return tm.inline_single_use_temporaries(tm.drop_dead_temporaries(out.lines))

    @staticmethod
    def backward(adj: Adjoints, r: TapeRenderer, segs: list[tuple]) -> None:
        """Walk the statements backwards, pushing each assigned variable's adjoint through its tape."""
        for st, v, start, end, target in reversed(segs):
            if target is None or ("v", target) not in adj.adj or v.plain:
                continue
            g = adj.adj["v", target]
            if isinstance(st, ir.Update):
                t = r.c.cell_types[st.target]
                g = adj.reduce_to(v.dims, g, t.dims)
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

        n_outs = len(c.readouts)
        kw = "".join(f", {a}" for a in g.args)
        out.add(f"def _backward_recurrent(_state, {', '.join(g.inputs)}, *{kw}, _grads):")
        out.add('"""The Triton backward of the recurrent form: ((initial state grads), (input grads)).', 1)
        out.add("", 0)
        out.add("_grads: the gradients of (readouts..., final states...) as autograd gives them (None: zero).", 1)
        out.add("Checkpoints every _rt.checkpoint_every(T) steps; stream and param gradients are summed back", 1)
        out.add("to the inputs' (possibly broadcast) shapes.", 1)
        out.add('"""', 1)
        out.add(f"_B, _T, _H = {first}.shape[0], {first}.shape[1], AXIS_SIZE", 1)
        out.add(f"_dtype, _device = _rt.real_dtype({first}), {first}.device", 1)
        out.add("_chunk = _rt.checkpoint_every(_T)", 1)
        out.add("_nc = triton.cdiv(_T, _chunk)", 1)
        for i, s in enumerate(g.states):
            sh = shape(c.cell_types[s].dims)
            out.add(f"_ck_{s} = _rt.empty((_B, _H, _nc{sh}), _dtype, _device, False)", 1)
            out.add(f"_wk_{s} = _rt.empty((_B, _H, _chunk{sh}), _dtype, _device, False)", 1)
            out.add(f"_dh0_{s} = _rt.empty((_B, _H{sh}), _dtype, _device, False)", 1)
            out.add(f"_dht_{s} = _rt.grad_in(_grads[{n_outs + i}], (_B, _H{sh}), _dtype, _device)", 1)
        for i, o in enumerate(c.readouts):
            out.add(f"_do_{o} = _rt.grad_in(_grads[{i}], (_B, _T, _H{shape(g.cell_ty(o).dims)}), _dtype, _device)", 1)
        for n in c.op_streams:
            out.add(f"_dx_{n} = torch.zeros((_B, _T, _H{shape(g.cell_ty(n).dims)}), dtype=_dtype, device=_device)", 1)
        for n in c.op_params:
            out.add(f"_dp_{n} = torch.zeros((_B, _H{shape(g.cell_ty(n).dims)}), dtype=_dtype, device=_device)", 1)
        state_numel = sum(c.size(c.cell_types[s].dims) for s in g.states)
        out.add(f"_cfg = _rt.launch_config('recurrent', tiled_size=None, state_numel={state_numel}, device=_device)", 1)
        out.add(f"{self.kernel_name}[(_B, _H)](", 1)
        for n in c.op_streams:
            out.add(f"*_rt.stream({n}, _B, _T, _H, {tuple(sizes[d] for d in g.cell_ty(n).dims)}, _dtype),", 2)
        for n in c.op_params:
            out.add(f"*_rt.param({n}, _H, {tuple(sizes[d] for d in g.cell_ty(n).dims)}, _dtype),", 2)
        for i, s in enumerate(g.states):
            out.add(f"_rt.state_in(_state[{i}], _dtype), _dht_{s}, _dh0_{s}, _ck_{s}, _wk_{s},", 2)
        for o in c.readouts:
            out.add(f"_do_{o},", 2)
        for n in c.op_streams:
            out.add(f"_dx_{n},", 2)
        for n in c.op_params:
            out.add(f"_dp_{n},", 2)
        if g.args:
            out.add(f"_rt.cell_args([{', '.join(g.args)}], _dtype, _device),", 2)
        out.add("_T, _chunk, _nc,", 2)
        out.add(", ".join(f"{self.blocks.size(d)}={sizes[d]}, {self.blocks.block(d)}={_pow2(sizes[d])}"
                          for d in self.dims) + ",", 2)
        out.add("DTYPE=_rt.tl_dtype(_dtype), USE_INITIAL_STATE=True, num_warps=_cfg['num_warps'],", 2)
        out.add(")", 1)
        states = "".join(f"_dh0_{s}.to(_state[{i}].dtype), " for i, s in enumerate(g.states))
        grads = []
        for n in g.inputs:
            if n in c.op_streams:
                grads.append(f"_dx_{n}.sum_to_size({n}.shape).to({n}.dtype)")
            else:
                grads.append(f"_dp_{n}[:, None].sum_to_size({n}.shape).to({n}.dtype)")
        out.add(f"return ({states}), ({', '.join(grads)},)", 1)


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
