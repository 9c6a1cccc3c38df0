"""Generate the torch module of a spec: ``step`` and the forms its plan admits (recurrent, scan, chunk).

The generated file is plain, readable PyTorch (autograd through it). Spec-specific math is rendered
from the IR by ``torch_render``; tiling lives in the runtime library ``seqdsl.runtime.torch_forms``.
Conventions inside generated functions (the op wrapper ``seqdsl.runtime.op`` prepares them):
streams are ``[B, T, H, *dims]`` (H = 1 when the cell runs over no axis), params ``[1, 1, H, *dims]``
(H = 1 when they lack the cell axis), states ``[B, H, *dims]``; ``step`` sees ``[B, H, *dims]``.
"""

from __future__ import annotations

import math

from seqdsl import ir
from seqdsl.analysis import Analysis
from seqdsl.codegen.torch_render import Code, TorchRenderer, align
from seqdsl.plan import Factor, KernelPlan, StatePlan
from seqdsl.typecheck import Checked, Ty

INDENT = "    "


class _Lines:
    def __init__(self):
        self.lines: list[str] = []

    def add(self, text: str = "", level: int = 0) -> None:
        self.lines.append(INDENT * level + text if text else "")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def varlen_forms(p: KernelPlan) -> tuple[str, ...]:
    """The parallel forms whose generated function takes ``cu_seqlens`` and runs packed sequences in one call:
    scan and chunk, unless a readout reads a state before its update (S_{t-1} comes from shifting the whole
    packed time axis, which would cross sequence boundaries; those run sequence by sequence in the op)."""
    if any(rd.before for rd in p.reads):
        return ()
    return tuple(f for f in ("scan", "chunk") if f in p.modes)


class _Gen:
    def __init__(self, c: Checked, a: Analysis, p: KernelPlan):
        self.c, self.a, self.p = c, a, p
        self.cell = c.model.cell
        self.states = [s.name for s in self.cell.states]
        self.inputs = list(c.op_inputs)
        self.args = [x.name for x in self.cell.args]

    # ------------------------------------------------------------------ name resolution
    def cell_ty(self, name: str) -> Ty:
        t = self.c.cell_types.get(name)
        if t is not None:
            return t
        t = self.c.types[name]
        axis = self.c.cell_axis
        if axis and t.dims[:1] == (axis,):
            return Ty(t.dims[1:], t.complex)
        return t

    def resolver(self, extra: dict[str, Code] | None = None):
        extra = extra or {}

        def resolve(name: str) -> Code:
            if name in extra:
                return extra[name]
            if name in self.args:
                return Code(name, (), plain=True)
            t = self.cell_ty(name)
            return Code(name, t.dims, t.complex)

        return resolve

    def renderer(self, subst=None) -> TorchRenderer:
        return TorchRenderer(self.c, self.resolver(), subst=subst)

    def signature(self, with_state: bool = True) -> str:
        parts = (["_state"] if with_state else []) + self.inputs
        kw = ", ".join(self.args)
        return ", ".join(parts) + (f", *, {kw}" if kw else "")

    # ------------------------------------------------------------------ step
    def gen_step(self, out: _Lines) -> None:
        r = self.renderer()
        out.add(f"def step({self.signature()}):")
        out.add('"""One token. Streams [B, H, *dims] at time t, params [1, H, *dims], state: tuple of [B, H, *dims].',
                1)
        out.add("", 0)
        out.add(f"Returns ((readouts...), (new states...)). Readouts: {', '.join(self.c.readouts)}.", 1)
        out.add('"""', 1)
        out.add(f"{', '.join(self.states)}, = _state", 1)
        for st in self.cell.body:
            if isinstance(st, ir.Local):
                code = r(st.value)
                out.add(f"{st.name} = {code.text}", 1)
            elif isinstance(st, ir.Update):
                t = self.c.cell_types[st.target]
                code = r(st.value)
                text = align(code, t.dims) if not code.plain else code.text
                if code.dims != t.dims or code.plain:
                    text = f"torch.broadcast_to({text}, {st.target}.shape)"
                out.add(f"{st.target} = {text}", 1)
        out.add(f"return ({', '.join(self.c.readouts)},), ({', '.join(self.states)},)", 1)

    def gen_recurrent(self, out: _Lines) -> None:
        out.add(f"def recurrent({self.signature()}):")
        out.add('"""The recurrence, one step at a time (every class). Returns ((readouts [B, T, H, ...]), states)."""', 1)
        first_stream = self.c.op_streams[0]
        out.add(f"_T = {first_stream}.shape[1]", 1)
        out.add(f"_outputs = [[] for _ in range({len(self.c.readouts)})]", 1)
        out.add("for _t in range(_T):", 1)
        call_args = []
        for n in self.inputs:
            call_args.append(f"{n}[:, _t]" if n in self.c.op_streams else f"{n}[:, 0]")
        kws = "".join(f", {a}={a}" for a in self.args)
        out.add(f"_readouts, _state = step(_state, {', '.join(call_args)}{kws})", 2)
        out.add("for _acc, _value in zip(_outputs, _readouts):", 2)
        out.add("_acc.append(_value)", 3)
        out.add("return tuple(torch.stack(_acc, dim=1) for _acc in _outputs), _state", 1)

    # ------------------------------------------------------------------ parallel forms
    def log_gate(self, r: TorchRenderer, sp: StatePlan, dims: tuple) -> str:
        """Sum of the logs of the decay factors, aligned to ``dims`` (the gate's axes)."""
        terms = []
        for f in sp.factors:
            terms.append(self.log_factor(r, f, dims))
        return " + ".join(terms)

    def log_factor(self, r: TorchRenderer, f: Factor, dims: tuple) -> str:
        """The log of one decay factor, aligned to ``dims``: always a tensor (a constant factor such as ``0.9 * S``
        becomes a 0-d tensor of the state's real dtype, so the chunk form can expand it like any gate)."""
        e = f.expr
        if isinstance(e, ir.Name) and e.id in self.p.hoisted_locals:
            definition = next(st.value for st in self.cell.body if isinstance(st, ir.Local) and st.name == e.id)
            if isinstance(definition, ir.Call) and definition.func == "exp":
                e = definition

        def tensor(code: Code) -> str:
            return f"_ops.real_tensor({code.text}, _state[0])" if code.plain else align(code, dims)

        if isinstance(e, ir.Call) and e.func == "exp":
            text = tensor(r(e.args[0]))
        elif isinstance(e, ir.Call) and e.func == "sigmoid":
            text = f"torch.nn.functional.logsigmoid({tensor(r(e.args[0]))})"
        elif isinstance(e, ir.Num):
            text = f"_ops.real_tensor({math.log(e.value)!r}, _state[0])"
        else:
            text = f"torch.log({tensor(r(e))})"
        return f"(-{text})" if f.divide else text

    def gate_product(self, r: TorchRenderer, sp: StatePlan, sdims: tuple) -> str:
        texts = []
        for f in sp.factors:
            code = r(f.expr)
            t = align(code, sdims) if not code.plain else code.text
            texts.append(f"(1.0 / {t})" if f.divide else t)
        return " * ".join(texts) if texts else "1.0"

    def cu_arg(self, steps: int = 1) -> str:
        """The ``cu_seqlens`` argument of a form call in a varlen form function ('' elsewhere); with several
        sub-steps per token (interleaved), the boundaries scale with them."""
        if not getattr(self, "varlen", False):
            return ""
        return ", cu_seqlens=cu_seqlens" if steps == 1 else \
            f", cu_seqlens=(None if cu_seqlens is None else cu_seqlens * {steps})"

    def gen_parallel(self, out: _Lines, form: str) -> None:
        self.varlen = form in varlen_forms(self.p)
        cu = ", cu_seqlens=None" if self.varlen else ""
        out.add(f"def {form}({self.signature()}, chunk_size=64, final_state=True{cu}):" if form == "chunk" else
                f"def {form}({self.signature()}{cu}):")
        doc = {"chunk": "Chunkwise form: intra-chunk matmuls, inter-chunk state passing.",
               "scan": "Parallel-scan form: a log-depth associative scan over time.",
               "conv": "Convolution form (time-invariant system): impulse responses, then FFT convolutions."}[form]
        if self.varlen:
            doc += " cu_seqlens (B = 1): packed sequences, one initial state each."
        if form == "chunk":
            doc += " final_state=False: a state whose chunk call can leave its final state out returns None."
        out.add(f'"""{doc} Returns ((readouts [B, T, H, ...]), states)."""', 1)
        first = self.c.op_streams[0]
        out.add(f"_B, _T, _H = {first}.shape[0], {first}.shape[1], {first}.shape[2]", 1)
        r = self.renderer()
        for name in self.p.hoisted_locals:
            value = next(st.value for st in self.cell.body if isinstance(st, ir.Local) and st.name == name)
            out.add(f"{name} = {r(value).text}", 1)
        finals: dict[str, str] = {}
        read_vars: dict[int, str] = {}
        for i, sp in enumerate(self.p.states):
            idx = self.states.index(sp.state)
            sdims = self.c.cell_types[sp.state].dims
            sizes = [self.c.dim_sizes[d] for d in sdims]
            out.add(f"# {sp.state}: {sp.kind}, decay {sp.gate_axis}", 1)
            reads = [rd for rd in self.p.reads if rd.state == sp.state]
            if form == "chunk":
                self.gen_chunk_state(out, r, sp, idx, sdims, sizes, reads, finals, read_vars)
            elif form == "conv":
                self.gen_conv_state(out, r, sp, idx, sdims, sizes, reads, finals, read_vars)
            else:
                self.gen_scan_state(out, r, sp, idx, sdims, sizes, reads, finals, read_vars)
        r2 = TorchRenderer(self.c, self.resolver(), subst=read_vars)
        for name in self.p.readout_locals:
            value = next(st.value for st in self.cell.body if isinstance(st, ir.Local) and st.name == name)
            out.add(f"{name} = {r2(value).text}", 1)
        out.add(f"return ({', '.join(self.c.readouts)},), ({', '.join(finals[s] for s in self.states)},)", 1)

    def _full(self, text: str, dims_sizes: list[int]) -> str:
        return f"({text}).expand(_B, _T, _H{''.join(f', {s}' for s in dims_sizes)})"

    def gen_chunk_state(self, out, r, sp, idx, sdims, sizes, reads, finals, read_vars) -> None:
        n = sp.state
        gate_kw = ""
        if sp.gate_axis == "scalar":
            out.add(f"_{n}_g = {self._full(self.log_gate(r, sp, ()), [])}", 1)
            gate_kw = f", g=_{n}_g"
        elif sp.gate_axis in ("key", "value"):
            gdims = (sdims[0],) if sp.gate_axis == "key" else (sdims[1],)
            size = self.c.dim_sizes[gdims[0]]
            out.add(f"_{n}_g = {self._full(self.log_gate(r, sp, gdims), [size])}", 1)
            gate_kw = f", gk=_{n}_g" if sp.gate_axis == "key" else f", gv=_{n}_g"
        k = r(sp.k)
        out.add(f"_{n}_k = {self._full(align(k, (sdims[0],)), [sizes[0]])}", 1)
        if sp.vector:
            out.add(f"_{n}_v = _{n}_k.new_ones(_B, _T, _H, 1)", 1)
            h0 = f"_state[{idx}][..., None]"
        else:
            v = r(sp.v)
            out.add(f"_{n}_v = {self._full(align(v, (sdims[1],)), [sizes[1]])}", 1)
            h0 = f"_state[{idx}]"
        if sp.kind == "dplr":     # S_t = diag(exp(g_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T
            for part, e in (("a", sp.read), ("b", sp.correct)):
                out.add(f"_{n}_{part} = {self._full(align(r(e), (sdims[0],)), [sizes[0]])}", 1)
        if sp.kind == "delta":
            beta = r(sp.beta)
            out.add(f"_{n}_beta = {self._full(beta.text if not beta.plain else f'torch.tensor({beta.text}, device=_state[0].device)', [])}", 1)
        steps = 1 + len(sp.more)
        if steps > 1:
            # n delta updates per token = one delta rule over n sub-steps per token: the gate acts at the
            # first sub-step, the readout reads after the last (DeltaProduct's Householder products)
            ks, vs, bs = [f"_{n}_k"], [f"_{n}_v"], [f"_{n}_beta"]
            for j, (k2, v2, b2) in enumerate(sp.more, 1):
                kc, vc, bc = r(k2), r(v2), r(b2)
                out.add(f"_{n}_k{j} = {self._full(align(kc, (sdims[0],)), [sizes[0]])}", 1)
                out.add(f"_{n}_v{j} = {self._full(align(vc, (sdims[1],)), [sizes[1]])}", 1)
                out.add(f"_{n}_beta{j} = {self._full(bc.text if not bc.plain else f'torch.tensor({bc.text}, device=_state[0].device)', [])}", 1)
                ks.append(f"_{n}_k{j}")
                vs.append(f"_{n}_v{j}")
                bs.append(f"_{n}_beta{j}")
            out.add(f"_{n}_k = _ops.interleave([{', '.join(ks)}])", 1)
            out.add(f"_{n}_v = _ops.interleave([{', '.join(vs)}])", 1)
            out.add(f"_{n}_beta = _ops.interleave([{', '.join(bs)}])", 1)
            if gate_kw:
                out.add(f"_{n}_g = _ops.interleave([_{n}_g] + [torch.zeros_like(_{n}_g)] * {steps - 1})", 1)
        if any(rd.before for rd in reads):
            # S_{t-1} is the state of the same recurrence fed one step late (decay 1, write 0 at t = 0)
            out.add(f"_{n}_kp, _{n}_vp = _ops.shift_time(_{n}_k), _ops.shift_time(_{n}_v)", 1)
            if sp.gate_axis != "none":
                out.add(f"_{n}_gp = _ops.shift_time(_{n}_g)", 1)
        for j, rd in enumerate(reads):
            var = f"_{n}_read{j}"
            if rd.q is None:   # the whole vector state: one head per element, K = V = 1
                suffix = "p" if rd.before else ""
                self.whole_vector_read(out, sp, sizes[0], idx, var, suffix)
                if rd.before:   # one more step from S_{T-2} gives the final state
                    decay = "1.0" if sp.gate_axis == "none" else (
                        f"torch.exp(_{n}_g[:, -1])" if sp.gate_axis == "key" else f"torch.exp(_{n}_g[:, -1])[..., None]")
                    out.add(f"_{n}_last = {decay} * _{n}_lastp + _{n}_k[:, -1]", 1)
                read_vars[rd.node] = var
                continue
            if rd.before:
                q = r(rd.q)
                qtext = self._full(align(q, (sdims[0],)), [sizes[0]])
                gp = gate_kw.replace(f"_{n}_g", f"_{n}_gp")
                out.add(f"{var}, _{n}_lastp = _forms.chunk_gated({qtext}, _{n}_kp, _{n}_vp{gp}, initial_state={h0}, "
                        f"output_final_state=True, chunk_size=chunk_size{self.cu_arg()})", 1)
                axis = sp.gate_axis if sp.gate_axis != "none" else "none"
                gate = f"_{n}_g[:, -1]" if sp.gate_axis != "none" else "None"
                out.add(f"_{n}_last = _ops.gated_step(_{n}_lastp, {gate}, {axis!r}, _{n}_k[:, -1], _{n}_v[:, -1])", 1)
                if sp.vector:
                    out.add(f"{var} = {var}[..., 0]", 1)
                    out.add(f"_{n}_last = _{n}_last[..., 0]", 1)
                read_vars[rd.node] = var
                continue
            q_expr, q_scale = self.query_and_scale(rd.q)
            q = r(q_expr)
            qtext = self._full(align(q, (sdims[0],)), [sizes[0]])
            scale_kw = "" if q_scale is None else f", scale={r(q_scale).text}"
            if steps > 1:
                qtext = f"_ops.interleave([torch.zeros_like({qtext})] * {steps - 1} + [{qtext}])"
            final = "True" if sp.vector else "final_state"    # a vector state's final state is indexed below
            if sp.kind == "dplr":
                call = (f"_forms.chunk_dplr({qtext}, _{n}_a, _{n}_b, _{n}_k, _{n}_v{gate_kw}{scale_kw}, "
                        f"initial_state={h0}, output_final_state={final}, chunk_size=chunk_size{self.cu_arg()})")
            elif sp.kind == "delta":
                call = (f"_forms.chunk_delta({qtext}, _{n}_k, _{n}_v, _{n}_beta{gate_kw}{scale_kw}, "
                        f"initial_state={h0}, output_final_state={final}, chunk_size=chunk_size{self.cu_arg(steps)})")
            else:
                call = (f"_forms.chunk_gated({qtext}, _{n}_k, _{n}_v{gate_kw}{scale_kw}, initial_state={h0}, "
                        f"output_final_state={final}, chunk_size=chunk_size{self.cu_arg(steps)})")
            out.add(f"{var}, _{n}_last = {call}", 1)
            if steps > 1:
                out.add(f"{var} = {var}[:, {steps - 1}::{steps}]", 1)
            if sp.vector:
                out.add(f"{var}, _{n}_last = {var}[..., 0], _{n}_last[..., 0]", 1)
            read_vars[rd.node] = var
        if not reads:
            raise AssertionError("a state without reads has no parallel form")
        finals[n] = f"_{n}_last"

    def query_and_scale(self, q: ir.Expr) -> tuple[ir.Expr, ir.Expr | None]:
        """A read's query split as (query, scalar factor): ``q * scale`` or ``scale * q`` with the factor a number
        or a cell arg gives (q, scale), handed to the chunk form as its ``scale`` argument (the Triton kernels
        apply it to q's products, so q itself reaches them unconverted); anything else gives (q, None)."""
        if isinstance(q, ir.Binary) and q.op == "*":
            for query, factor in ((q.left, q.right), (q.right, q.left)):
                if isinstance(factor, ir.Num) or (isinstance(factor, ir.Name) and factor.id in self.args):
                    return query, factor
        return q, None

    def whole_vector_read(self, out: _Lines, sp: StatePlan, size: int, idx: int, var: str, suffix: str) -> None:
        """Read a whole vector state h [n] by running each element as a head with K = V = 1.

        suffix "p" uses the time-shifted inputs (reads of h_{t-1}); the final state is left in
        ``_<state>_last<suffix>`` as [B, H, n].
        """
        n = sp.state
        out.add(f"_{n}_ones = _{n}_k.new_ones(_B, _T, _H * {size}, 1)", 1)
        gk = ""
        if sp.gate_axis != "none":
            g = f"_{n}_g{suffix}"
            gsrc = g if sp.gate_axis == "key" else f"{g}[..., None].expand(_B, _T, _H, {size})"
            gk = f", gk={gsrc}.reshape(_B, _T, _H * {size}, 1)"
        out.add(f"{var}, _{n}_last{suffix} = _forms.chunk_gated(_{n}_ones, _{n}_k{suffix}.reshape(_B, _T, _H * {size}, 1), "
                f"_{n}_ones{gk}, initial_state=_state[{idx}].reshape(_state[{idx}].shape[0], _H * {size}, 1, 1), "
                f"output_final_state=True, chunk_size=chunk_size{self.cu_arg()})", 1)
        out.add(f"{var} = {var}.reshape(_B, _T, _H, {size})", 1)
        out.add(f"_{n}_last{suffix} = _{n}_last{suffix}.reshape(-1, _H, {size})", 1)

    def gen_conv_state(self, out, r, sp, idx, sdims, sizes, reads, finals, read_vars) -> None:
        """h_t = a ⊙ h_{t-1} + c u_t^T with fixed a, c: _forms.conv_lti per read (see plan.ConvPlan)."""
        n = sp.state
        cp = next(x for x in self.p.conv if x.state == sp.state)
        key = (sdims[0],)
        K = sizes[0]

        def fixed(text: str) -> str:      # a time-invariant value as [H, K]
            return f"_ops.lti_coefficient({text}, _H, {K}, _state[0])"

        factors = [(align(r(f.expr), key) if not r(f.expr).plain else r(f.expr).text, f.divide) for f in sp.factors]
        a = " * ".join(f"(1.0 / {t})" if d else t for t, d in factors) or "1.0"
        out.add(f"_{n}_a = {fixed(a)}", 1)
        c = r(cp.coefficient)
        out.add(f"_{n}_c = {fixed(align(c, key) if not c.plain else c.text)}", 1)
        u = r(cp.value)
        if sp.vector:
            out.add(f"_{n}_u = {self._full(u.text if not u.plain else f'torch.tensor({u.text}, device=_state[0].device)', [])}[..., None]", 1)
            h0 = f"_state[{idx}][..., None]"
        else:
            out.add(f"_{n}_u = {self._full(align(u, (sdims[1],)), [sizes[1]])}", 1)
            h0 = f"_state[{idx}]"
        for j, rd in enumerate(reads):
            var = f"_{n}_read{j}"
            q = "None" if rd.q is None else fixed(align(r(rd.q), key) if not r(rd.q).plain else r(rd.q).text)
            last = f"_{n}_last" if j == 0 else "_"
            out.add(f"{var}, {last} = _forms.conv_lti(_{n}_a, _{n}_c, _{n}_u, q={q}, initial_state={h0}, "
                    f"output_final_state={j == 0})", 1)
            if sp.vector:
                out.add(f"{var} = {var}[..., 0]", 1)
            read_vars[rd.node] = var
        if sp.vector:
            out.add(f"_{n}_last = _{n}_last[..., 0]", 1)
        finals[n] = f"_{n}_last"

    def gen_scan_state(self, out, r, sp, idx, sdims, sizes, reads, finals, read_vars) -> None:
        n = sp.state
        k = r(sp.k)
        if sp.kind == "dense":
            out.add(f"_{n}_b = {self._full(align(k, sdims), sizes)}", 1)
            m = r(sp.dense)
            out.add(f"_{n}_all, _{n}_last = _forms.scan_dense({m.text}, _{n}_b, initial_state=_state[{idx}], "
                    f"output_final_state=True{self.cu_arg()})", 1)
        else:
            if sp.vector:
                out.add(f"_{n}_b = {self._full(align(k, sdims), sizes)}", 1)
            else:
                v = r(sp.v)
                out.add(f"_{n}_b = {self._full(align(k, (sdims[0],)), [sizes[0]])}[..., :, None] * "
                        f"{self._full(align(v, (sdims[1],)), [sizes[1]])}[..., None, :]", 1)
            a = self.gate_product(r, sp, sdims)
            out.add(f"_{n}_a = {a}", 1)
            out.add(f"_{n}_all, _{n}_last = _forms.scan_diagonal(a=_ops.as_tensor_like(_{n}_a, _{n}_b), b=_{n}_b, "
                    f"initial_state=_state[{idx}], output_final_state=True{self.cu_arg()})", 1)
        if any(rd.before for rd in reads):   # S_{t-1}: the initial state, then every state but the last
            out.add(f"_{n}_prev = torch.cat([_state[{idx}].to(_{n}_all.dtype)[:, None], "
                    f"_{n}_all[:, :-1]], dim=1)", 1)
        for j, rd in enumerate(reads):
            var = f"_{n}_read{j}"
            states_var = f"_{n}_prev" if rd.before else f"_{n}_all"
            if rd.q is None:
                out.add(f"{var} = {states_var}", 1)
            else:
                q = r(rd.q)
                spec = "'...i,...i->...'" if sp.vector else "'...i,...ij->...j'"
                out.add(f"{var} = _ops.einsum({spec}, {align(q, (sdims[0],))}, {states_var})", 1)
            read_vars[rd.node] = var
        finals[n] = f"_{n}_last"

    # ------------------------------------------------------------------ layer parts: streams and out ([B, T] lead)
    def token_renderer(self, visible: dict[str, Code]) -> TorchRenderer:
        c = self.c
        implicit = {p.name: p for p in c.implicit}

        def resolve(name: str) -> Code:
            if name in visible:
                return visible[name]
            t = c.types[name]
            return Code(f"P[{name!r}]", t.dims, t.complex)

        def token(e: ir.Call, r: TorchRenderer) -> Code:
            owned = c.implicit_of.get(id(e), ())
            if e.func == "position":
                return Code("_ops.position(x, cache, new_cache)", ())
            src = r(e.args[0])
            n_in = len(src.dims)
            if e.func in ("linear", "lowrank"):
                out_dims = implicit[owned[0] if e.func == "linear" else owned[1]].groups[0]
                sizes = tuple(c.dim_sizes[d] for d in out_dims)
                bias = [n for n in owned if implicit[n].role == "bias"]
                btext = f", P[{bias[0]!r}]" if bias else ""
                if e.func == "linear":
                    text = f"_ops.linear({src.text}, {n_in}, P[{owned[0]!r}], {sizes}{btext})"
                else:
                    text = f"_ops.lowrank({src.text}, {n_in}, P[{owned[0]!r}], P[{owned[1]!r}], {sizes}{btext})"
                return Code(text, out_dims)
            if e.func == "conv":
                return Code(f"_ops.conv({src.text}, {n_in}, P[{owned[0]!r}], cache, new_cache, {owned[0]!r})",
                            src.dims, src.complex)
            if e.func == "shift":
                n = next((int(k.value.value) for k in e.kwargs if k.name == "n"), 1)
                key = self.shift_keys.setdefault((src.text, n), f"shift{len(self.shift_keys)}")  # one cache per input
                return Code(f"_ops.shifted({src.text}, {n}, cache, new_cache, {key!r})", src.dims, src.complex)
            raise NotImplementedError(e.func)

        def norm_weights(e: ir.Call, text: str) -> str:
            owned = c.implicit_of.get(id(e), ())
            if not owned:
                return text
            extra = f", P[{owned[1]!r}]" if len(owned) > 1 else ""
            return f"_ops.norm_affine({text}, P[{owned[0]!r}]{extra})"

        return TorchRenderer(c, resolve, token=token, norm_weights=norm_weights, device_of="x")

    def gen_layer_parts(self, out: _Lines) -> None:
        c = self.c
        self.shift_keys: dict[tuple[str, int], str] = {}   # (input code, n) -> cache key
        visible: dict[str, Code] = {"x": Code("x", c.types["x"].dims)} if "x" in c.types else {}
        out.add("def streams(x, P, cache=None):")
        out.add('"""Token-parallel streams of the layer: x [B, T, d_model] -> ({name: [B, T, *dims]}, new cache).', 1)
        out.add("", 0)
        out.add("P: the layer's parameters by name. cache: convolution / shift states from a previous call.", 1)
        out.add('"""', 1)
        out.add("new_cache = {}", 1)
        r = self.token_renderer(visible)
        for s in c.model.streams:
            code = r(s.value)
            t = c.types[s.name]
            sizes = tuple(c.dim_sizes[d] for d in t.dims)
            text = align(code, t.dims) if not code.plain else code.text
            out.add(f"{s.name} = torch.broadcast_to({text}, (x.shape[0], x.shape[1]) + {sizes})", 1)
            visible[s.name] = Code(s.name, t.dims, t.complex)
        names = ", ".join(f"{s.name!r}: {s.name}" for s in c.model.streams)
        out.add(f"return {{{names}}}, new_cache", 1)
        out.add()
        out.add()
        readouts = ", ".join(c.readouts)
        stream_names = ", ".join(s.name for s in c.model.streams)
        out.add(f"def outputs(x, P, S, {readouts}, cache=None):")
        out.add('"""The layer output y [B, T, d_model] from the readouts, the streams S and x; returns (y, new cache)."""',
                1)
        out.add("new_cache = {}", 1)
        if stream_names:
            out.add(f"{stream_names}, = (S[name] for name in {tuple(s.name for s in c.model.streams)!r})", 1)
        for rname in c.readouts:
            t = c.types[rname]
            visible[rname] = Code(rname, t.dims, t.complex)
        r = self.token_renderer(visible)
        for od in c.model.outs:
            code = r(od.value)
            out.add(f"{od.name} = {code.text}", 1)
            t = c.types[od.name]
            visible[od.name] = Code(od.name, t.dims, t.complex)
        out.add("return y, new_cache", 1)

    # ------------------------------------------------------------------ module
    def module(self, header: str) -> str:
        out = _Lines()
        out.add(f'"""{header}"""')
        out.add()
        out.add("import torch")
        out.add()
        out.add("from seqdsl.runtime import torch_forms as _forms  # noqa: F401")
        out.add("from seqdsl.runtime import torch_ops as _ops  # noqa: F401")
        out.add()
        c = self.c
        out.add(f"MODEL = {c.model.name!r}")
        out.add(f"INPUTS = {tuple(self.inputs)!r}")
        out.add(f"STREAMS = {tuple(c.op_streams)!r}")
        out.add(f"PARAMS = {tuple(c.op_params)!r}")
        out.add(f"ARGS = {({a: float(c.values[a]) for a in self.args})!r}")
        out.add(f"STATES = {tuple(self.states)!r}")
        out.add(f"READOUTS = {tuple(c.readouts)!r}")
        out.add(f"MODES = {tuple(self.p.modes)!r}")
        out.add(f"VARLEN_FORMS = {varlen_forms(self.p)!r}  # forms taking cu_seqlens (others: one call per sequence)")
        out.add(f"CLASS = {self.a.cls!r}")
        out.add()
        out.add()
        self.gen_step(out)
        out.add()
        out.add()
        self.gen_recurrent(out)
        for form in ("scan", "chunk", "conv"):
            if form in self.p.modes:
                out.add()
                out.add()
                self.gen_parallel(out, form)
        if self.c.model.outs and "x" in self.c.types:
            out.add()
            out.add()
            self.gen_layer_parts(out)
        return out.text()


def generate(c: Checked, a: Analysis, p: KernelPlan, header: str) -> str:
    """Source text of the torch module of a checked model."""
    return _Gen(c, a, p).module(header)
