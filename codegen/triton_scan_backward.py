"""Generate the backward kernel of the fused scan form: the adjoint recurrence as a reverse associative scan.

The fused scan kernel (``triton_module``, ``scan=True``) runs a cell of gated vector states BLOCK_T tokens at a
time: h_t = a_t h_{t-1} + b_t scanned over each block. Its gradient is a diagonal recurrence of the same kind
run backwards in time. With lam_t the adjoint of h_t (readouts and later tokens together) and g_t the part
that comes from the readouts of token t,

    lam_t = g_t + conj(a_{t+1}) lam_{t+1},    da_t = lam_t conj(h_{t-1}),    db_t = lam_t,

from lam after the last token = the final state's gradient; dh0 = conj(a_0) lam_0. With nu_t = conj(a_t) lam_t
(what token t hands to h_{t-1}), nu_t = conj(a_t) (g_t + nu_{t+1}): a reverse scan of the pairs
(conj(a_t), conj(a_t) g_t), whose "all but the last step" part (``compose_with_previous``) gives nu_{t+1}, hence
lam_t, without shifting a block by one token. The forward states h_t and h_{t-1} come the same way from the
state entering the block. ``tl.associative_scan(..., reverse=True)`` is the scan of the flipped block with the
same combine (the interpreter flips; Triton's own GPU test of a linear recurrence, test_scan2d, checks it
against that), so the reverse scan composes the same (a, b) pairs as the forward one.

The kernel (grid ``(B, H)``, like the forward):

1. walk the sequence block by block from the initial state, storing the state entering each block
   (``[B, H, NB, *state]``: T / BLOCK_T states per sequence, not one per token);
2. for every block, last first: recompute its states from that checkpoint on a *tape* (the cell rendered for
   the block's tokens, ``TimeTapeRenderer``); push the readouts' gradients back through the tape to the states
   (g), the streams and the params; scan the adjoint recurrence over the block (the carry nu from the block
   after it); push da and db back through the tapes of a and b (``TimeAdjoints``: ``Adjoints`` with the
   time-batched contraction); store the block's stream gradients, accumulate the param gradients;
3. store dh0 (the carry left after the first block) and the param gradients (per program; the host sums).

Everything else (signature, params, loop-invariant locals and their adjoints, the launcher) is the recurrent
backward kernel's (``BackwardKernel``). What it cannot express raises ``Unsupported``; the scan form's backward
is then the recurrent backward kernel.
"""

from __future__ import annotations

from seqdsl import ir
from seqdsl.codegen import triton_module as tm
from seqdsl.codegen.triton_backward import Adjoints, BackwardKernel, TapeRenderer, _conj, _part
from seqdsl.codegen.triton_render import TIME, TimeBatchedRenderer, TimeBlocks, Val, index_at, without_time
from seqdsl.plan import product_expr


class TimeTapeRenderer(TapeRenderer, TimeBatchedRenderer):
    """The tape of a step rendered for a block of tokens: TapeRenderer's recording, TimeBatchedRenderer's
    shapes."""


class TimeAdjoints(Adjoints):
    """Adjoints with the block-of-tokens contraction: ``a @ b`` of per-token vectors ``[BLOCK_T, d]`` (either may
    lack the token axis) is a sum over d for each token, adj(a) = g conj(b), adj(b) = g conj(a), per token."""

    def matmul(self, e: ir.Binary, g) -> None:
        a, b = self.r.vals[id(e.left)], self.r.vals[id(e.right)]
        if TIME not in a.dims and TIME not in b.dims:
            super().matmul(e, g)
            return
        frame = (TIME, without_time(a.dims)[0])
        g = self.bound(_part("{}[:, None]", g))
        A, B = _conj(self.value(e.left, frame)), _conj(self.value(e.right, frame))
        self.to_child(e.left, self.mul(g, B), frame)
        self.to_child(e.right, self.mul(g, A), frame)


class ScanBackwardKernel(BackwardKernel):
    """Source of the fused scan's backward kernel and its launcher (``gen``: triton_module's generator, after its
    recurrent and scan kernels were generated)."""

    FORM = "scan"
    LAUNCH = "scan_backward"
    TILED_BY = "scan_tiled"
    BLOCKS = TimeBlocks
    RESERVED = tm.SCAN_NAMES + ("i_k", "n_blocks")
    Tape = TimeTapeRenderer
    CHECKPOINTS = "the state entering every block"
    LOOP_ARGS = "cu_seqlens, T, NB,  # packed sequences (IS_VARLEN); the buffers' T; blocks per sequence (slots)"
    CONSTEXPRS = ("BLOCK_T",)

    def __init__(self, gen):
        super().__init__(gen)
        self.kernel_name = f"{gen.name}_scan_bwd_kernel"
        self.plans = {sp.state: sp for sp in gen.p.states}

    # ------------------------------------------------------------------ pieces
    def block_offsets(self, n: str, shared: bool = False) -> tuple[str, str | None]:
        """(offset, mask) of a value of the block's tokens in a contiguous [B, T, H, *dims] buffer (complex: real
        view): a ``[BLOCK_T, *dims]`` block; ``shared``: in a [B, T, 1, *dims] buffer every head's program shares."""
        t = self.g.cell_ty(n)
        frame = (TIME,) + t.dims
        offs, numel = tm.contiguous_offsets(self.blocks, t.dims, t.complex)
        row = "(seq_row * T + seq_t0 + t0 + o_t)" if shared else "((seq_row * T + seq_t0 + t0 + o_t) * H + i_h)"
        token = f"({row} * {numel}){index_at(0, len(frame))}"
        inner = f" + ({offs}){tm.index_for(t.dims, frame)}" if t.dims else ""
        return token + inner, tm.block_mask(self.blocks, frame)

    def load_block_streams(self, out, level: int, env: dict) -> None:
        """The streams of the block's tokens, ``[BLOCK_T, *dims]`` blocks (zeros beyond the sequence)."""
        for n in self.c.op_streams:
            t = self.g.cell_ty(n)
            st = self.N["stride"][n]
            frame = (TIME,) + t.dims
            offs = f" + {tm.block_offsets(self.blocks, t.dims, st[3:])}" if t.dims else ""
            p = f"({self.N['ptr'][n]} + seq_row * {st[0]} + (seq_t0 + t0) * {st[1]} + i_h * {st[2]}{offs})"
            ptr = tm.token_pointers(p, frame, st[1])
            self.assign(out, level, self.var(n), self.load(ptr, tm.block_mask(self.blocks, frame), t.complex))
            env[n] = Val(self.var(n)[0], frame, self.var(n)[1])

    def block_step(self, out, level: int, r: TimeTapeRenderer, env: dict, recompute: bool) -> list[tuple]:
        """The cell's step for the block's tokens (statements outside the loop-invariant locals) into ``out``.

        Each state update is scanned from the state entering the block (in ``self.var(s)``): with ``recompute``
        (the backward pass) into h_t and h_{t-1} for every token, leaving the carry alone; else into h_t, the
        carry moved to the block's last token. Returns [(statement, value, tape start, tape end, variable)], a
        state update's entry (statement, its scan, start, end, None) with its scan a dict of the pieces."""
        g, c = self.g, self.c
        segs = []
        for s in g.states:
            env.pop(s, None)           # a state is read only after its update (the fused scan's condition)
        for st in g.cell.body:
            if not isinstance(st, (ir.Local, ir.Update)) or (isinstance(st, ir.Local) and st.name in g.invariant):
                continue
            start = len(r.tape)
            if isinstance(st, ir.Local):
                v = r.render(st.value)
                out.extend(r.take_lines(), level)
                if v.plain:
                    env[st.name] = v
                    segs.append((st, v, start, len(r.tape), None))
                    continue
                target = self.var(st.name)
                self.assign(out, level, target, (v.re, v.im))
                env[st.name] = Val(target[0], v.dims, target[1])
                segs.append((st, v, start, len(r.tape), target[0]))
                continue
            name = st.target
            sp = tm.scanned_state_plan(self.plans, name, updated=name in env)
            t = c.cell_types[name]
            a_root, b_root = product_expr(sp.factors), sp.k
            a = tm.token_block(r, r.render(a_root), t, 1.0, name)
            b = tm.token_block(r, r.render(b_root), t, 0.0, name)
            out.extend(r.take_lines(), level)
            carry = Val(self.var(name)[0], t.dims, self.var(name)[1])
            lines, h, prev = tm.linear_scan(a, b, tm.aligned_to_block(carry, t.dims), f"{self.buf['ds', name]}_fw",
                                            previous=recompute)
            out.extend(lines, level)
            if not recompute:
                out.extend(tm.row_of_block(self.var(name), h, "BLOCK_T - 1", len(t.dims) + 1), level)
            env[name] = Val(h[0], (TIME,) + t.dims, h[1])
            scan = {"a": a, "prev": prev, "a_root": a_root, "b_root": b_root, "h": h}
            segs.append((st, scan, start, len(r.tape), None))
        return segs

    def adjoint_scan(self, adj: TimeAdjoints, st: ir.Update, scan: dict) -> None:
        """The adjoint recurrence of one state over the block (into ``adj.lines``), then da and db into the tapes
        of a and b. The state's adjoint carry (``ds``: nu after the block's last token) becomes nu at its first."""
        name = st.target
        t = self.c.cell_types[name]
        frame = (TIME,) + t.dims
        rows = f"m_t{index_at(0, len(frame))}"
        zeros = f"tl.zeros([{', '.join(self.blocks.block(d) for d in frame)}], dtype=DTYPE)"
        got = adj.adj.get(("v", scan["h"][0]))
        g = (zeros, zeros if t.complex else None) if got is None else got
        g = (adj.temp(f"tl.where({rows}, {g[0]}, 0.0)"),
             None if not t.complex else adj.temp(f"tl.where({rows}, {g[1] if g[1] is not None else zeros}, 0.0)"))
        ca = adj.bound(_conj(scan["a"]))
        carry = self.acc("ds", name, t.complex)
        index = tm.index_for(t.dims, frame)
        lines, nu, nu_next = tm.linear_scan(ca, adj.mul(ca, g), (carry[0] + index, None if carry[1] is None else
                                                                   carry[1] + index),
                                            f"{self.buf['ds', name]}_bw", reverse=True, previous=True)
        adj.lines += lines
        lam = (adj.temp(f"{g[0]} + {nu_next[0]}"), None if not t.complex else adj.temp(f"{g[1]} + {nu_next[1]}"))
        adj.lines += tm.row_of_block(carry, nu, "0", len(frame))
        da = adj.mul(lam, _conj(scan["prev"]))
        da = (f"tl.where({rows}, {da[0]}, 0.0)", None if da[1] is None else f"tl.where({rows}, {da[1]}, 0.0)")
        adj.to_child(scan["a_root"], da, frame)
        adj.to_child(scan["b_root"], (f"tl.where({rows}, {lam[0]}, 0.0)",
                                      None if lam[1] is None else f"tl.where({rows}, {lam[1]}, 0.0)"), frame)

    def walk(self, adj: TimeAdjoints, r: TimeTapeRenderer, segs: list[tuple]) -> None:
        """The statements backwards: locals as the recurrent backward pushes them, state updates by their
        adjoint scan, each through its tape."""
        for st, v, start, end, target in reversed(segs):
            if isinstance(st, ir.Update):
                self.adjoint_scan(adj, st, v)
                for e in reversed(r.tape[start:end]):
                    adj.back(e)
            else:
                self.backward(adj, r, [(st, v, start, end, target)])

    # ------------------------------------------------------------------ the kernel
    def kernel(self) -> list[str]:
        g, c, blocks = self.g, self.c, self.blocks
        out = tm._Lines()
        env: dict[str, Val] = {}
        renderer, done = self.renderers(env)
        r_inv, inv_segs, accumulated = self.prologue(out, env, renderer, done)
        L = 1
        out.add("o_t = tl.arange(0, BLOCK_T)  # the tokens of a block", L)

        out.add("# 1. the forward scan, storing the state entering every block", L)
        self.initial_states(out, L, env)
        out.add("for t0 in range(0, seq_len, BLOCK_T):", L)
        self.store_states(out, L + 1, "ck", ("NB", "t0 // BLOCK_T"))
        out.add("m_t = (t0 + o_t) < seq_len", L + 1)
        self.load_block_streams(out, L + 1, env)
        r1 = renderer()
        self.block_step(out, L + 1, r1, env, recompute=False)
        done(r1)

        out.add("# 2. the blocks, last first: recompute the block's states, then its adjoints", L)
        self.accumulators(out, L, env, accumulated)
        out.add("n_blocks = (seq_len + BLOCK_T - 1) // BLOCK_T", L)
        out.add("for i_k in range(0, n_blocks):", L)
        L2 = L + 1
        out.add("t0 = (n_blocks - 1 - i_k) * BLOCK_T", L2)
        out.add("m_t = (t0 + o_t) < seq_len", L2)
        self.load_states(out, L2, env, "ck", ("NB", "n_blocks - 1 - i_k"))
        self.load_block_streams(out, L2, env)
        r2 = renderer()
        segs = self.block_step(out, L2, r2, env, recompute=True)
        done(r2)
        wanted = ({self.var(n)[0] for n in list(c.op_streams) + accumulated}
                  | {seg[4] for seg in segs if seg[4] is not None}
                  | {seg[1]["h"][0] for seg in segs if isinstance(seg[0], ir.Update)})
        adj = TimeAdjoints(r2, blocks, wanted)
        for n in accumulated:
            adj.adj["v", env[n].re] = self.acc("gp", n, env[n].complex)
        for o in c.readouts:
            v = env.get(o)
            if v is None or v.plain:
                continue
            ptr, m = self.block_offsets(o)
            frame = (TIME,) + g.cell_ty(o).dims
            do = self.seed(o, self.load(f"{self.buf['do', o]} + {ptr}", m, g.cell_ty(o).complex))
            adj.add(("v", v.re), (adj.reduce_to(v.dims, do[0], frame),
                                  None if do[1] is None else adj.reduce_to(v.dims, do[1], frame)))
        self.walk(adj, r2, segs)
        out.extend(adj.lines, L2)
        for n in c.op_streams:
            t = g.cell_ty(n)
            frame = (TIME,) + t.dims
            got = adj.adj.get(("v", self.var(n)[0]))
            zeros = f"tl.zeros([{', '.join(blocks.block(d) for d in frame)}], dtype=DTYPE)"
            got = (zeros, zeros if t.complex else None) if got is None else got
            self.store_stream_grad(out, L2, n, got, self.block_offsets, frame)
        for n in accumulated:
            self.write_back(out, L2, self.acc("gp", n, env[n].complex), adj.adj["v", env[n].re])
        self.epilogue(out, env, adj._n, r_inv, inv_segs, accumulated)
        return tm.inline_single_use_temporaries(tm.drop_dead_temporaries(out.lines))
