"""THE op table: every function a .seq expression may call, with its typing rule and its rendering.

Each backend renders IR through this table, so the reference interpreter, the generated torch code
and the generated Triton code cannot drift. Rendering templates take positional operands ``{0}``,
``{1}``... and keyword options ``{eps}``; runtime tensors keep named dims last, so "last axis" is
``dim=-1``. Importing this module does not import torch.

Kinds (how the type checker treats an op):
    unary      elementwise, shape-preserving            exp(x)
    binary     elementwise, named-axis broadcast         max(a, b)
    ternary    elementwise, three operands                lerp(a, b, mu)
    lastaxis   shape-preserving, normalises the last axis l2norm(x)
    norm       like lastaxis, with a learned weight in streams / out (plain in the cell)
    reduce     drops the last axis                        sum(x)
    outer      a[i] b[j] -> [i, j]                        outer(k, v)
    transpose  [i, j] -> [j, i]
    inverse    [n, n] -> [n, n] function of a square matrix (inv, expm)
    eye        eye(axis) -> [axis, axis]
    rename     rename(x, a, b): x's axis a called b, the numbers unchanged (equal sizes; streams and out only)
    complex    complex(re, im)
    token      needs the time axis or a learned weight: streams and out only (linear, conv, ...)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Op:
    name: str
    kind: str
    torch: str                       # torch expression template
    arity: int = 1                   # positional operands (tensors)
    real_only: bool = True           # operands must be real
    complex_ok: bool = False         # accepts complex operands (then real_only is False)
    returns_real: bool = False       # result is real even for complex operands (abs, real, imag)
    options: dict = field(default_factory=dict)   # keyword options and their defaults
    doc: str = ""
    triton: str = ""                 # Triton expression template on register blocks ("": no Triton form)
    triton_complex: tuple = ()       # complex operands: (real, imaginary) templates over {0.re} {0.im}
    triton_grad: tuple = ()          # real operands: the adjoint of each operand (Triton, see _TRITON_GRAD)


def _unary(name, torch, doc, complex_ok=False, returns_real=False):
    return Op(name, "unary", torch, real_only=not complex_ok, complex_ok=complex_ok,
              returns_real=returns_real, doc=doc)


OPS: dict[str, Op] = {op.name: op for op in [
    # -- elementwise math
    _unary("exp", "torch.exp({0})", "e^x", complex_ok=True),
    _unary("log", "torch.log({0})", "natural log", complex_ok=True),
    _unary("sqrt", "torch.sqrt({0})", "square root", complex_ok=True),
    _unary("abs", "torch.abs({0})", "|x| (modulus for complex)", complex_ok=True, returns_real=True),
    _unary("real", "torch.real({0})", "real part", complex_ok=True, returns_real=True),
    _unary("imag", "torch.imag({0})", "imaginary part", complex_ok=True, returns_real=True),
    _unary("conj", "torch.conj({0})", "complex conjugate", complex_ok=True),
    _unary("cos", "torch.cos({0})", "cosine"),
    _unary("sin", "torch.sin({0})", "sine"),
    _unary("tanh", "torch.tanh({0})", "hyperbolic tangent"),
    _unary("sigmoid", "torch.sigmoid({0})", "logistic sigmoid"),
    _unary("logsigmoid", "torch.nn.functional.logsigmoid({0})", "log(sigmoid(x)), a log-space gate"),
    _unary("silu", "torch.nn.functional.silu({0})", "x * sigmoid(x) (swish)"),
    _unary("relu", "torch.relu({0})", "max(x, 0)"),
    _unary("relu2", "torch.square(torch.relu({0}))", "squared ReLU (RWKV channel mix)"),
    _unary("elu1", "(torch.nn.functional.elu({0}) + 1)", "elu(x) + 1, the Linear Transformer feature map"),
    _unary("elu", "torch.nn.functional.elu({0})", "exponential linear unit"),
    _unary("gelu", "torch.nn.functional.gelu({0})", "Gaussian error linear unit (erf form)"),
    _unary("softplus", "torch.nn.functional.softplus({0})", "log(1 + e^x)"),
    _unary("inv_softplus", "({0} + torch.log(-torch.expm1(-{0})))", "inverse of softplus (x > 0)"),
    Op("max", "binary", "torch.maximum({0}, {1})", arity=2, doc="elementwise maximum"),
    Op("min", "binary", "torch.minimum({0}, {1})", arity=2, doc="elementwise minimum"),
    Op("lerp", "ternary", "({0} + ({1} - {0}) * {2})", arity=3, doc="a + (b - a) * mu (token shift mixing)"),
    Op("complex", "complex", "_ops.make_complex({0}, {1})", arity=2, doc="re + i im"),
    # -- last-axis functions
    Op("l2norm", "lastaxis", "({0} * torch.rsqrt(({0} * {0}).sum(-1, keepdim=True) + {eps}))",
       options={"eps": 1e-6}, doc="x / ||x|| over the last axis"),
    Op("softmax", "lastaxis", "torch.softmax({0}, dim=-1)", doc="softmax over the last axis"),
    Op("rmsnorm", "norm", "({0} * torch.rsqrt(({0} * {0}).mean(-1, keepdim=True) + {eps}))",
       options={"eps": 1e-5}, doc="RMSNorm over the last axis (learned scale in streams / out)"),
    Op("layernorm", "norm",
       "(({0} - {0}.mean(-1, keepdim=True)) * torch.rsqrt({0}.var(-1, unbiased=False, keepdim=True) + {eps}))",
       options={"eps": 1e-5}, doc="LayerNorm over the last axis (learned scale and bias in streams / out)"),
    Op("sum", "reduce", "{0}.sum(-1)", complex_ok=True, real_only=False, doc="sum over the last axis"),
    Op("mean", "reduce", "{0}.mean(-1)", complex_ok=True, real_only=False, doc="mean over the last axis"),
    # -- products
    Op("outer", "outer", "({0}[..., :, None] * {1}[..., None, :])", arity=2, complex_ok=True, real_only=False,
       doc="outer(a, b)[i, j] = a[i] b[j]"),
    Op("transpose", "transpose", "{0}.transpose(-1, -2)", complex_ok=True, real_only=False,
       doc="swap the two axes of a matrix"),
    Op("inv", "inverse", "torch.linalg.inv({0})", complex_ok=True, real_only=False,
       doc="inverse of a square matrix (bilinear discretisation of dense SSMs)"),
    Op("expm", "inverse", "torch.linalg.matrix_exp({0})", complex_ok=True, real_only=False,
       doc="matrix exponential of a square matrix (zero-order-hold discretisation of dense SSMs)"),
    Op("eye", "eye", "_ops.eye({0}, like)", arity=1, doc="eye(axis): the [axis, axis] identity matrix"),
    Op("rename", "rename", "{0}", arity=3, complex_ok=True, real_only=False,
       doc="rename(x, a, b): x with its axis a called b (a dim of the same size; streams and out only), e.g. "
           "mLSTM's conv branch [heads, dk] added to its readout [heads, dv] where dv = dk"),
    # -- token-parallel operators with learned weights or a time axis (streams / out only)
    Op("linear", "token", "", options={"bias": False},
       doc="linear(x[, [dims]], bias=0|1): a learned projection to the declared (or given) shape"),
    Op("lowrank", "token", "", arity=2, options={"bias": False},
       doc="lowrank(x, r[, [dims]]): linear(linear(x, [r])), a rank-r projection"),
    Op("conv", "token", "", arity=2, doc="conv(x, w): causal depthwise convolution over w tokens"),
    Op("shift", "token", "", options={"n": 1}, doc="shift(x[, n=1]): the value n tokens earlier (0 before t=0)"),
    Op("position", "token", "", arity=0, doc="position(): the token's index in its sequence, 0, 1, 2, ... (a scalar)"),
]}

# Triton templates (codegen/triton_render.py), filled into the entries above. Operands are register
# blocks padded to powers of two: ``{m}`` is the mask of the operand's last axis, ``{ax}`` its index and
# ``{n}`` its true size (for ``inv``: ``{o}`` the lane offsets, ``{m}`` the mask of its axis, ``{n}`` its
# size); ``_tlib`` is ``seqdsl.runtime.triton_lib`` (``_tlib.add``: tl.sum's combine function, so a
# sum is ``tl.reduce(x, axis, _tlib.add)``; helpers for rare functions). ``triton_complex``:
# for complex operands, (real, imaginary) templates over the parts ``{0.re}``, ``{0.im}`` (one template:
# the result is real), "parts" (the op is real-linear: the real template applies to each part) or
# "product" (a product of its operands: complex operands multiply as complex numbers).
_TRITON: dict[str, tuple[str, object]] = {
    "exp": ("tl.exp({0})", ("tl.exp({0.re}) * tl.cos({0.im})", "tl.exp({0.re}) * tl.sin({0.im})")),
    "log": ("tl.log({0})", ("(0.5 * tl.log({0.re} * {0.re} + {0.im} * {0.im}))", "_tlib.atan2({0.im}, {0.re})")),
    "sqrt": ("tl.sqrt({0})", ("_tlib.csqrt_re({0.re}, {0.im})", "_tlib.csqrt_im({0.re}, {0.im})")),
    "abs": ("tl.abs({0})", ("tl.sqrt({0.re} * {0.re} + {0.im} * {0.im})",)),
    "real": ("{0}", ("{0.re}",)),
    "imag": ("({0} * 0.0)", ("{0.im}",)),
    "conj": ("{0}", ("{0.re}", "(-{0.im})")),
    "cos": ("tl.cos({0})", ()),
    "sin": ("tl.sin({0})", ()),
    "tanh": ("(2.0 / (1.0 + tl.exp(-2.0 * {0})) - 1.0)", ()),
    "sigmoid": ("(1.0 / (1.0 + tl.exp(-{0})))", ()),
    "logsigmoid": ("(tl.minimum({0}, 0.0) - tl.log(1.0 + tl.exp(-tl.abs({0}))))", ()),
    "silu": ("({0} / (1.0 + tl.exp(-{0})))", ()),
    "relu": ("tl.maximum({0}, 0.0)", ()),
    "relu2": ("(tl.maximum({0}, 0.0) * tl.maximum({0}, 0.0))", ()),
    "elu1": ("tl.where({0} > 0, {0} + 1.0, tl.exp(tl.minimum({0}, 0.0)))", ()),
    "elu": ("tl.where({0} > 0, {0}, tl.exp(tl.minimum({0}, 0.0)) - 1.0)", ()),
    "gelu": ("(0.5 * {0} * (1.0 + tl.erf({0} * 0.7071067811865476)))", ()),
    "softplus": ("(tl.maximum({0}, 0.0) + tl.log(1.0 + tl.exp(-tl.abs({0}))))", ()),
    "inv_softplus": ("({0} + tl.log(1.0 - tl.exp(-{0})))", ()),
    "max": ("tl.maximum({0}, {1})", ()),
    "min": ("tl.minimum({0}, {1})", ()),
    "lerp": ("({0} + ({1} - {0}) * {2})", ()),
    "complex": ("", ("{0}", "{1}")),
    "l2norm": ("({0} * tl.rsqrt(tl.reduce(tl.where({m}, {0} * {0}, 0.0), {ax}, _tlib.add, keep_dims=True) + {eps}))",
               ()),
    "softmax": ("_tlib.softmax({0}, {m}, {ax})", ()),
    "rmsnorm": ("({0} * tl.rsqrt(tl.reduce(tl.where({m}, {0} * {0}, 0.0), {ax}, _tlib.add, keep_dims=True) / {n} "
                "+ {eps}))", ()),
    "layernorm": ("_tlib.layernorm({0}, {m}, {ax}, {n}, {eps})", ()),
    "sum": ("tl.reduce(tl.where({m}, {0}, 0.0), {ax}, _tlib.add)", "parts"),
    "mean": ("(tl.reduce(tl.where({m}, {0}, 0.0), {ax}, _tlib.add) / {n})", "parts"),
    "outer": ("({0}[:, None] * {1}[None, :])", "product"),
    "transpose": ("tl.trans({0})", "parts"),
    "inv": ("_tlib.inv({0}, {o}, {m}, {n})", ()),
    "expm": ("_tlib.expm({0}, {o}, {m}, {n})", ()),
}
for _name, (_template, _complex) in _TRITON.items():
    OPS[_name] = replace(OPS[_name], triton=_template, triton_complex=_complex)

# Derivative rules for the Triton backward of the recurrent form (codegen/triton_backward.py): for each
# real operand, its adjoint given the adjoint ``{g}`` of the result ``{y}`` and the operands ``{0}``,
# ``{1}``, ... (all aligned to the result's dims; binary and ternary results are reduced back to each
# operand's dims by the generator). Lastaxis / norm rules sum over the last axis with
# ``_tlib.lastsum(x, {m}, {ax})`` (masked, keeping the axis) and take ``{n}``, ``{eps}`` as their forward.
# Ops without an entry (sum, mean, outer, transpose, inv, expm (via _tlib.expm_frechet), complex: written by the
# generator; token ops: none) have no rule here.
_LASTSUM = "_tlib.lastsum({x}, {{m}}, {{ax}})"


def _s(x: str) -> str:
    return _LASTSUM.format(x=x)


_TRITON_GRAD: dict[str, tuple[str, ...]] = {
    "exp": ("{g} * {y}",),
    "log": ("{g} / {0}",),
    "sqrt": ("{g} * 0.5 / {y}",),
    "abs": ("tl.where({0} >= 0, {g}, -{g})",),
    "real": ("{g}",),
    "conj": ("{g}",),
    "imag": ("({g} * 0.0)",),
    "cos": ("(-{g} * tl.sin({0}))",),
    "sin": ("{g} * tl.cos({0})",),
    "tanh": ("{g} * (1.0 - {y} * {y})",),
    "sigmoid": ("{g} * {y} * (1.0 - {y})",),
    "logsigmoid": ("{g} / (1.0 + tl.exp({0}))",),
    "silu": ("{g} * (1.0 + {0} * (1.0 - 1.0 / (1.0 + tl.exp(-{0})))) / (1.0 + tl.exp(-{0}))",),
    "relu": ("tl.where({0} > 0, {g}, 0.0)",),
    "relu2": ("{g} * 2.0 * tl.maximum({0}, 0.0)",),
    "elu1": ("tl.where({0} > 0, {g}, {g} * {y})",),
    "elu": ("tl.where({0} > 0, {g}, {g} * ({y} + 1.0))",),
    "gelu": ("{g} * (0.5 * (1.0 + tl.erf({0} * 0.7071067811865476)) + {0} * 0.3989422804014327 "
             "* tl.exp(-0.5 * {0} * {0}))",),
    "softplus": ("{g} / (1.0 + tl.exp(-{0}))",),
    "inv_softplus": ("{g} / (1.0 - tl.exp(-{0}))",),
    "max": ("tl.where({0} >= {1}, {g}, 0.0)", "tl.where({0} >= {1}, 0.0, {g})"),
    "min": ("tl.where({0} <= {1}, {g}, 0.0)", "tl.where({0} <= {1}, 0.0, {g})"),
    "lerp": ("{g} * (1.0 - {2})", "{g} * {2}", "{g} * ({1} - {0})"),
    # y = x r, r = (sum x^2 + eps)^-1/2:  dx = r (g - y sum(g y))
    "l2norm": (f"tl.rsqrt({_s('{0} * {0}')} + {{eps}}) * ({{g}} - {{y}} * {_s('{g} * {y}')})",),
    "softmax": (f"{{y}} * ({{g}} - {_s('{g} * {y}')})",),
    # y = x r, r = (mean x^2 + eps)^-1/2:  dx = r (g - y mean(g y))
    "rmsnorm": (f"tl.rsqrt({_s('{0} * {0}')} / {{n}} + {{eps}}) * ({{g}} - {{y}} * {_s('{g} * {y}')} / {{n}})",),
    # y = (x - mean x) r, r = (var x + eps)^-1/2:  dx = r (g - mean(g) - y mean(g y))
    "layernorm": (f"tl.rsqrt(_tlib.lastvar({{0}}, {{m}}, {{ax}}, {{n}}) + {{eps}}) "
                  f"* ({{g}} - {_s('{g}')} / {{n}} - {{y}} * {_s('{g} * {y}')} / {{n}})",),
}
for _name, _rules in _TRITON_GRAD.items():
    OPS[_name] = replace(OPS[_name], triton_grad=_rules)

# Functions of parameter initialisers (``A_log: [heads] ~ log(uniform(1, 16))``). Elementwise math
# from OPS is also allowed there; these produce values of the parameter's shape.
INITIALISERS: dict[str, str] = {
    "uniform": "uniform(a, b): independent samples in [a, b)",
    "log_uniform": "log_uniform(a, b): exp of uniform(log a, log b)",
    "normal": "normal(mean, std): Gaussian samples",
    "zeros": "zeros(): 0",
    "ones": "ones(): 1",
    "index": "index(axis): 0, 1, ... along the named axis of the parameter",
    "xavier": "xavier(): uniform with the Glorot bound for a [out, in] matrix",
    "orthogonal": "orthogonal(): a random orthogonal [n, n] matrix",
    "hippo_legs": "hippo_legs(): the HiPPO-LegS state matrix A for an [n, n] parameter",
    "hippo_legs_b": "hippo_legs_b(): the HiPPO-LegS input vector B for an [n] parameter",
    "legt": ("legt(): the LegT / LMU state matrix A for an [n, n] parameter (Voelker et al. 2019, the translated "
             "Legendre measure of HiPPO-LegT in the LMU's scaling): A[i, j] = (2i+1) (-1 if i < j else (-1)^(i-j+1))"),
    "legt_b": "legt_b(): the LegT / LMU input vector B for an [n] parameter: B_i = (2i+1) (-1)^i",
    "reservoir": ("reservoir(density, radius): a sparse random [n, n] matrix (each entry nonzero with probability "
                  "density, uniform in [-1, 1)) scaled to spectral radius radius (echo state network reservoirs)"),
    "hippo_n_imag": ("hippo_n_imag(): imaginary parts of the eigenvalues of HiPPO-N, the normal part of the 2N x 2N "
                     "HiPPO-LegS matrix (-1/2 I + skew; real parts -1/2): the N positive ones, largest first, along "
                     "the parameter's last axis (DSS skew-HiPPO, S4D-LegS, S5 HiPPO-N initialisation)"),
}
INITIALISER_ARITY = {"uniform": 2, "log_uniform": 2, "normal": 2, "zeros": 0, "ones": 0, "index": 1,
                     "xavier": 0, "orthogonal": 0, "hippo_legs": 0, "hippo_legs_b": 0,
                     "hippo_n_imag": 0, "legt": 0, "legt_b": 0, "reservoir": 2}

CONSTANTS = {"pi": 3.141592653589793}

# The layer input. Streams read it as a [d_model] vector per token.
LAYER_INPUT = "x"
