"""Synthetic tasks that discriminate sequence mixers, generated in process and deterministic by seed.

Every task is re-implemented from the definitions in ``shared/reference/benchmarks.md`` §1 (the
section is cited in each class); the defaults are the CPU-sized settings of §3.2 / §5.

    task = make_task("mqar", seq_len=64, num_kv_pairs=4)
    batch = task.sample(32, torch.Generator().manual_seed(0))    # or task.sample(32, 0)
    b_idx, t_idx = scored_positions(batch)                        # compute the head only there
    acc = evaluate(logits_at_scored_positions, batch)

A :class:`Batch` holds ``inputs`` [B, T], ``targets`` [B, T] and ``mask`` [B, T]; ``mask`` marks the
scored positions, the only places where the loss and the accuracy are computed. Targets elsewhere
are ``IGNORE`` (-100) for token tasks and NaN for the regression task. ``T == task.seq_len`` always.

Token tasks have integer inputs in ``[0, task.vocab_size)``. The adding problem (the one regression
task) has float inputs [B, T, 2] (``task.input_dim == 2``) and float targets; ``task.regression`` and
``task.metric`` ("accuracy" or "mse") say which kind a task is. The compression task is MAD's
autoencoder task (``task.readout == "autoencoder"``): the model must rebuild every token from the
last position's state, so a causal LM head at each position would solve it by copying its input.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import torch

IGNORE = -100

__all__ = ["IGNORE", "Batch", "Task", "TASKS", "make_task", "scored_positions", "evaluate", "mse",
           "mqar_layout", "Segment"]


# --------------------------------------------------------------------------------------------------
# Batch and metrics


@dataclasses.dataclass
class Batch:
    """inputs [B, T] long (float [B, T, D] for regression), targets [B, T], mask [B, T] bool (scored)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(self.inputs.to(device), self.targets.to(device), self.mask.to(device))

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[0]

    @property
    def seq_len(self) -> int:
        return self.inputs.shape[1]


def scored_positions(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(b_idx, t_idx) of the scored positions, row-major: ``model(x, positions=...)`` computes the head there."""
    return batch.mask.nonzero(as_tuple=True)


def _gather(output: torch.Tensor, batch: Batch, kind: str) -> torch.Tensor:
    """Output at the scored positions, accepting full [B, T, ...] or already gathered [N, ...] tensors."""
    B, T = batch.mask.shape
    n = int(batch.mask.sum())
    full_dims = 3 if kind == "logits" else 2
    if output.dim() == full_dims and tuple(output.shape[:2]) == (B, T):
        return output[batch.mask]
    if output.dim() == full_dims - 1 and output.shape[0] == n:
        return output
    raise ValueError(f"expected {kind} of shape [B, T{', V' if kind == 'logits' else ''}] = "
                     f"[{B}, {T}{', V' if kind == 'logits' else ''}] or gathered at the {n} scored positions; "
                     f"got {tuple(output.shape)}")


def evaluate(output: torch.Tensor, batch: Batch, average: str = "micro") -> float:
    """Accuracy on the scored positions only.

    ``output``: float logits [B, T, V] or [N, V] (already gathered at ``scored_positions``), or integer
    predictions [B, T] or [N]. ``average="micro"`` averages over all scored tokens (MAD, torchmetrics
    micro); ``"example"`` averages per example first (Zoology ``compute_metrics``); with a fixed number
    of scored positions per example (MQAR) the two agree. Regression tasks: use :func:`mse`.
    """
    if batch.targets.is_floating_point():
        raise ValueError("evaluate() computes token accuracy; this batch has float targets (a regression "
                         "task such as 'adding'): use mse()")
    if average not in ("micro", "example"):
        raise ValueError(f"average must be 'micro' or 'example'; got {average!r}")
    if output.is_floating_point():
        pred = _gather(output, batch, "logits").argmax(-1)
    else:
        pred = _gather(output, batch, "predictions")
    target = batch.targets[batch.mask]
    correct = (pred.to(target.device) == target).float()
    if correct.numel() == 0:
        raise ValueError("the batch has no scored positions")
    if average == "micro":
        return float(correct.mean())
    b_idx = scored_positions(batch)[0]
    per = torch.zeros(batch.mask.shape[0]).index_add_(0, b_idx.cpu(), correct.cpu())
    count = batch.mask.sum(1).cpu()
    keep = count > 0
    return float((per[keep] / count[keep]).mean())


def mse(predictions: torch.Tensor, batch: Batch) -> float:
    """Mean squared error on the scored positions (regression tasks).

    ``predictions``: [B, T], [B, T, 1], [N] or [N, 1] (gathered at ``scored_positions``).
    """
    if not batch.targets.is_floating_point():
        raise ValueError("mse() is for regression tasks (float targets); use evaluate() for token tasks")
    p = predictions
    if p.dim() == 3 or (p.dim() == 2 and p.shape[-1] == 1 and tuple(p.shape) != tuple(batch.mask.shape)):
        p = p[..., 0]                                          # drop a trailing output dimension of 1
    p = _gather(p, batch, "predictions")
    target = batch.targets[batch.mask]
    return float(((p.to(target.dtype) - target) ** 2).mean())


# --------------------------------------------------------------------------------------------------
# Settings, the Task base and the registry


def _coerce(task: str, name: str, value: Any, default: Any, choices: tuple | None) -> Any:
    """Convert a setting to its default's type (CLI values arrive as int, float or str)."""
    bad = ValueError(f"{task}: setting {name}={value!r} must be {type(default).__name__}"
                     + (f" (one of {', '.join(map(str, choices))})" if choices else ""))
    if isinstance(default, bool):
        if isinstance(value, bool):
            out = value
        elif isinstance(value, int) and value in (0, 1):
            out = bool(value)
        elif isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            out = value.strip().lower() in ("true", "1", "yes")
        else:
            raise bad
    elif isinstance(default, int):
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            out = value
        elif isinstance(value, float) and value.is_integer():
            out = int(value)
        elif isinstance(value, str):
            try:
                out = int(value)
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    raise bad from None
                if not f.is_integer():
                    raise bad from None
                out = int(f)
        else:
            raise bad
    elif isinstance(default, float):
        if isinstance(value, bool):
            raise bad
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise bad from None
    else:
        if not isinstance(value, str):
            raise bad
        out = value
    if choices is not None and out not in choices:
        raise ValueError(f"{task}: setting {name}={value!r} is not allowed; "
                         f"choose one of {', '.join(map(str, choices))}")
    return out


def _as_generator(generator) -> torch.Generator:
    if generator is None:
        return torch.default_generator
    if isinstance(generator, int):
        return torch.Generator().manual_seed(generator)
    return generator


class Task:
    """A synthetic task: ``sample(batch_size, generator) -> Batch`` with ``T == seq_len``.

    Subclasses declare ``name``, ``defaults`` (setting -> default value; its type is the setting's
    type) and ``choices`` (allowed values of string settings), implement ``_check`` (raise
    ``ValueError`` naming the setting) and ``_sample``. Settings become attributes.
    """

    name: ClassVar[str]
    section: ClassVar[str] = ""              # where benchmarks.md defines the task
    defaults: ClassVar[dict[str, Any]] = {}
    choices: ClassVar[dict[str, tuple]] = {}
    regression: ClassVar[bool] = False
    input_dim: ClassVar[int | None] = None    # float input features (regression tasks); None = token ids
    metric: ClassVar[str] = "accuracy"
    readout: ClassVar[str] = "lm"             # "lm": a head at each scored position; "autoencoder": see Compression

    vocab_size: int
    seq_len: int

    def __init__(self, **settings):
        unknown = sorted(set(settings) - set(self.defaults))
        if unknown:
            raise ValueError(f"{self.name}: unknown setting{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(unknown)}; allowed settings: {', '.join(self.defaults)}")
        resolved = {}
        for key, default in self.defaults.items():
            value = settings.get(key, default)
            resolved[key] = _coerce(self.name, key, value, default, self.choices.get(key))
        self.settings = resolved
        for key, value in resolved.items():
            setattr(self, key, value)
        self._check()

    def _require(self, ok: bool, setting: str, why: str) -> None:
        if not ok:
            raise ValueError(f"{self.name}: setting {setting}={self.settings.get(setting)!r} is invalid: {why}")

    def _check(self) -> None:
        pass

    def _sample(self, batch_size: int, g: torch.Generator) -> Batch:
        raise NotImplementedError

    def sample(self, batch_size: int, generator: torch.Generator | int | None = None) -> Batch:
        """A fresh batch; the same generator state (or int seed) gives the same batch.

        ``generator=None`` draws from torch's global generator.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        return self._sample(int(batch_size), _as_generator(generator))

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.settings.items())})"


TASKS: dict[str, type[Task]] = {}


def _register(cls):
    TASKS[cls.name] = cls
    return cls


def make_task(name: str, **settings) -> Task:
    """Build a registered task; hyphens in the name are accepted (``in-context-recall``)."""
    key = name.strip().lower().replace("-", "_")
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; available tasks: {', '.join(TASKS)}")
    return TASKS[key](**settings)


def _randperm_rows(batch: int, n: int, k: int, g: torch.Generator) -> torch.Tensor:
    """[batch, k]: the first k entries of an independent uniform permutation of range(n) per row."""
    return torch.rand(batch, n, generator=g).argsort(-1)[:, :k]


# --------------------------------------------------------------------------------------------------
# MQAR (benchmarks.md §1.1)


def mqar_layout(keys: torch.Tensor, values: torch.Tensor, gaps: torch.Tensor, seq_len: int,
                num_passes: int = 1) -> Batch:
    """The MQAR sequence for given draws (Zoology ``multiquery_ar`` without the random parts).

    keys, values, gaps: [B, N]. Context = ``k1 v1 ... kN vN`` repeated ``num_passes`` times; key i is
    queried at position ``context + 2 * gaps[:, i]``, where its target is ``values[:, i]``; every
    other position holds the filler 0 and is not scored.
    """
    B, N = keys.shape
    C = 2 * N * num_passes
    inputs = torch.zeros(B, seq_len, dtype=torch.long)
    pairs = torch.stack([keys, values], -1).reshape(B, 2 * N)
    inputs[:, :C] = pairs.repeat(1, num_passes)
    qpos = C + 2 * gaps
    inputs.scatter_(1, qpos, keys)
    targets = torch.full((B, seq_len), IGNORE, dtype=torch.long).scatter_(1, qpos, values)
    mask = torch.zeros(B, seq_len, dtype=torch.bool).scatter_(1, qpos, True)
    return Batch(inputs, targets, mask)


@_register
class MQAR(Task):
    """Multi-query associative recall (Zoology, Arora et al. 2023) — benchmarks.md §1.1.

    Keys are ``1 .. V//2-1``, values ``V//2 .. V-1``, token 0 is the filler. Each example draws
    ``num_kv_pairs`` distinct keys and distinct values; the context ``k1 v1 ... kN vN`` (times
    ``num_passes``) is followed by the query region, where each key appears once as a query at an
    even offset ``2*g``, the gaps g drawn without replacement from ``0 .. (L - context)/2 - 1`` with
    ``p(g) ∝ a (g+1)^(a-1)`` (``a = power_a``; 0.01 makes queries cluster after the context). The
    target at a query is the key's value; only the N query positions are scored. Filler positions
    are 0, or uniform random tokens from the whole vocabulary if ``random_non_queries``.

    Zoology's docstring example (V=12, N=2, L=16, fillers 0) is ``mqar_layout`` with keys (2, 4),
    values (8, 7), gaps (4, 1):  inputs ``2 8 4 7 0 0 4 0 0 0 0 0 2 0 0 0``, targets 7 at position 6
    and 8 at position 12 (the docstring prints the first 15 of the 16 positions).

    Defaults: §3.2 / §5 T2 (V=512, L=128, N=16; fillers 0 as in the Zoology Fig. 2 configs).
    Zoology's ``vocab_size > seq_len`` assert is not needed for correctness (§3.1) and not enforced.
    """

    name = "mqar"
    section = "§1.1"
    defaults = {"vocab_size": 512, "seq_len": 128, "num_kv_pairs": 16, "power_a": 0.01,
                "num_passes": 1, "random_non_queries": False}

    def _check(self):
        N, L = self.num_kv_pairs, self.seq_len
        self._require(N >= 1, "num_kv_pairs", "must be >= 1")
        self._require(self.num_passes >= 1, "num_passes", "must be >= 1")
        self._require(L >= 2 and L % 2 == 0, "seq_len", "must be even and >= 2")
        self._require(2 * N * (self.num_passes + 1) <= L, "num_kv_pairs",
                      f"needs 2*num_kv_pairs*(num_passes+1) <= seq_len={L} (context plus one query slot per key)")
        self._require(N <= self.vocab_size // 2 - 1 and N <= self.vocab_size - self.vocab_size // 2, "vocab_size",
                      f"needs vocab_size//2 - 1 >= num_kv_pairs={N} distinct keys")
        self._require(self.power_a > 0, "power_a", "must be > 0")

    def _sample(self, B, g):
        V, N, L = self.vocab_size, self.num_kv_pairs, self.seq_len
        half = V // 2
        keys = _randperm_rows(B, half - 1, N, g) + 1
        values = _randperm_rows(B, V - half, N, g) + half
        space = (L - 2 * N * self.num_passes) // 2
        a = self.power_a
        p = a * torch.arange(1, space + 1, dtype=torch.float64) ** (a - 1)
        gaps = torch.multinomial((p / p.sum()).expand(B, space), N, replacement=False, generator=g)
        batch = mqar_layout(keys, values, gaps, L, self.num_passes)
        if self.random_non_queries:
            fill = torch.randint(V, (B, L), generator=g)
            batch.inputs = torch.where(batch.inputs == 0, fill, batch.inputs)
        return batch


# --------------------------------------------------------------------------------------------------
# MAD suite (benchmarks.md §1.2): in-context recall, noisy and fuzzy variants, selective copying,
# compression, memorization


class _Recall(Task):
    """MAD in-context recall, optionally noisy (``generate_in_context_recall_instance``) — §1.2.

    Vocabulary: keys ``0 .. S/2-1``, values ``S/2 .. S-1`` with ``S = V - noise_vocab_size`` (minus one
    more, the copy prefix ``V-1``, when ``multi_query`` is off); noise tokens ``S .. S+noise-1``.
    The sequence is ``seq_len/2`` slots of two tokens: ``seq_len/2 - 1`` random pairs ``k v`` (keys drawn
    with replacement; each key keeps one value within the sequence, drawn uniformly with replacement
    over the value vocabulary) — each slot replaced by two noise tokens with probability
    ``frac_noise`` — then a final probe pair whose key is a uniformly chosen key shown earlier.

    Targets are the next token. ``split="test"`` (MAD's test targets, the default) scores, with
    ``multi_query``, every key position whose key appeared in an earlier pair (the target is its
    value; so the probe is always scored), and without ``multi_query`` only the probe (preceded by
    the copy prefix). ``split="train"`` is MAD's training target: every position that has a next
    token is scored (the full next-token shift). Noise is never scored in the test split.

    Layout detail: the inputs are the whole ``seq_len``-token sequence, the probe value included as an
    unscored last input (MAD drops it: ``inputs[:-1]``, T = seq_len - 1); for causal models this
    changes nothing. At least one slot is always a real pair (MAD can leave none, then fails).
    """

    section = "§1.2"
    choices = {"split": ("test", "train")}

    def _check(self):
        L = self.seq_len
        self._require(L >= 4 and L % 2 == 0, "seq_len", "must be even and >= 4")
        self._require(self.noise_vocab_size >= 0, "noise_vocab_size", "must be >= 0")
        self._require(0 <= self.frac_noise < 1, "frac_noise", "must be in [0, 1)")
        self._require(self.frac_noise == 0 or self.noise_vocab_size > 0, "noise_vocab_size",
                      "must be > 0 when frac_noise > 0")
        S = self.vocab_size - self.noise_vocab_size - (0 if self.multi_query else 1)
        self._require(S >= 2, "vocab_size", f"leaves {S} key/value tokens after noise_vocab_size="
                      f"{self.noise_vocab_size}{'' if self.multi_query else ' and the copy prefix'}; need >= 2")

    @property
    def num_keys(self) -> int:
        return self._kv_vocab() // 2

    def _kv_vocab(self) -> int:
        return self.vocab_size - self.noise_vocab_size - (0 if self.multi_query else 1)

    def _sample(self, B, g):
        L, S = self.seq_len, self._kv_vocab()
        K, NV = S // 2, S - S // 2
        J = L // 2 - 1                                             # random pairs before the probe
        ar = torch.arange(B)
        keys = torch.randint(K, (B, J), generator=g)
        kv = torch.randint(NV, (B, K), generator=g) + K            # each key's value in this sequence
        vals = kv.gather(1, keys)
        noise = torch.zeros(B, J, dtype=torch.bool)
        tok = torch.stack([keys, vals], -1)                        # [B, J, 2]
        if self.frac_noise > 0:
            noise = torch.rand(B, J, generator=g) < self.frac_noise
            noise[ar, torch.randint(J, (B,), generator=g)] = False  # at least one real pair
            ntok = torch.randint(self.noise_vocab_size, (B, J, 2), generator=g) + S
            tok = torch.where(noise[..., None], ntok, tok)
        onehot = torch.nn.functional.one_hot(keys, K) * (~noise)[..., None]
        seen = ((onehot.cumsum(1) - onehot).gather(2, keys[..., None])[..., 0] > 0) & ~noise
        presented = onehot.sum(1) > 0                              # [B, K]
        pk = torch.multinomial(presented.double(), 1, generator=g)[:, 0]
        pv = kv[ar, pk]
        tail = [pk[:, None], pv[:, None]]
        if not self.multi_query:
            tail.insert(0, torch.full((B, 1), self.vocab_size - 1))
        full = torch.cat([tok.reshape(B, 2 * J)] + tail, 1)        # L tokens (L + 1 without multi_query)
        inputs = full[:, :L].contiguous()
        targets = torch.full((B, L), IGNORE, dtype=torch.long)
        mask = torch.zeros(B, L, dtype=torch.bool)
        if self.split == "train":
            n = full.shape[1] - 1
            targets[:, :n] = full[:, 1:L + 1]
            mask[:, :n] = True
        else:
            if self.multi_query:
                targets[:, 0:2 * J:2] = torch.where(seen, vals, IGNORE)
                mask[:, 0:2 * J:2] = seen
            targets[:, L - 2 + (0 if self.multi_query else 1)] = pv
            mask[:, L - 2 + (0 if self.multi_query else 1)] = True
        return Batch(inputs, targets, mask)


@_register
class InContextRecall(_Recall):
    __doc__ = _Recall.__doc__ + """
    Defaults: MAD baseline / §3.2 lite (V=16, L=128, multi-query, no noise).
    """
    name = "in_context_recall"
    defaults = {"vocab_size": 16, "seq_len": 128, "multi_query": True, "noise_vocab_size": 0,
                "frac_noise": 0.0, "split": "test"}


@_register
class NoisyInContextRecall(_Recall):
    __doc__ = _Recall.__doc__ + """
    Defaults: MAD baseline vocabulary (V=32 of which 16 noise, so 8 keys and 8 values as in
    in_context_recall) with frac_noise 0.4 (§5 T5 / §3.2 lite), L=128.
    """
    name = "noisy_in_context_recall"
    defaults = {"vocab_size": 32, "seq_len": 128, "multi_query": True, "noise_vocab_size": 16,
                "frac_noise": 0.4, "split": "test"}


class Segment(NamedTuple):
    """One piece of a fuzzy-recall sequence (for tests and debugging)."""

    kind: str           # "pad", "pair", "probe" (mid-sequence probe), "final" (the closing probe)
    start: int          # position in the inputs of its first token
    key: tuple
    value: tuple
    scored: bool        # are its value tokens scored in the test split


class _Draws:
    """Uniform draws from a torch generator, fetched in chunks (for the sequential fuzzy generator)."""

    def __init__(self, g: torch.Generator, chunk: int = 1024):
        self.g, self.chunk, self.buf, self.i = g, chunk, [], 0

    def randint(self, n: int) -> int:
        if self.i == len(self.buf):
            self.buf, self.i = torch.rand(self.chunk, generator=self.g, dtype=torch.float64).tolist(), 0
        r = int(self.buf[self.i] * n)
        self.i += 1
        return r if r < n else n - 1

    def motif(self, first: int, n: int, size: int) -> tuple:
        """A uniform ordered tuple of ``size`` distinct tokens from ``first .. first+n-1``."""
        if size == 1:
            return (first + self.randint(n),)
        pool = list(range(first, first + n))
        return tuple(pool.pop(self.randint(n - i)) for i in range(size))


@_register
class FuzzyInContextRecall(Task):
    """MAD fuzzy in-context recall (``generate_fuzzy_in_context_recall_instance``) — benchmarks.md §1.2.

    Multi-query only (as in the MAD benchmark). Pad token ``V-1``; keys are ordered tuples of 1 ..
    ``k_motif_size`` distinct tokens of ``0 .. (V-1)//2 - 1``, values tuples of 1 .. ``v_motif_size``
    distinct tokens of the rest of ``0 .. V-2``; adjacent tuples have no delimiter ("fuzzy" keys).
    The sequence is a run of key-value pairs (each key keeps one value per sequence; a key size and
    a value size are drawn per pair) with one probe pair inserted at a random point, then the probe
    pair again at the end, left-padded to ``seq_len + 1`` and shifted (inputs drop the last token).
    ``split="test"``: every key has the maximum size; the value tokens of each pair whose key
    appeared before (and of the final probe) are scored, each predicted from the token before it.
    ``split="train"``: key sizes vary, and every position (pads included) is scored with the next
    token, as MAD trains.

    Decision: the mid-sequence probe is always inserted (its position is drawn from the part of the
    sequence the loop is sure to reach); MAD can draw a position past the end of the loop, and then
    the final probe's value is not predictable from the context.

    Defaults: MAD baseline / §3.2 / §5 T6 (V=16, L=128, motifs up to 3).
    """

    name = "fuzzy_in_context_recall"
    section = "§1.2"
    defaults = {"vocab_size": 16, "seq_len": 128, "k_motif_size": 3, "v_motif_size": 3, "split": "test"}
    choices = {"split": ("test", "train")}

    def _check(self):
        km, vm = self.k_motif_size, self.v_motif_size
        self._require(km >= 1, "k_motif_size", "must be >= 1")
        self._require(vm >= 1, "v_motif_size", "must be >= 1")
        S = self.vocab_size - 1
        self._require(S // 2 >= km and S - S // 2 >= vm, "vocab_size",
                      "needs (vocab_size-1)//2 >= k_motif_size and the rest >= v_motif_size "
                      "(distinct tokens per motif)")
        self._require(self.seq_len >= 4 * (km + vm), "seq_len",
                      f"must be >= 4*(k_motif_size+v_motif_size) = {4 * (km + vm)}")

    def _example(self, d: _Draws) -> tuple[list[int], list[int], list[Segment]]:
        L, km, vm = self.seq_len, self.k_motif_size, self.v_motif_size
        S = self.vocab_size - 1
        K, NV = S // 2, S - S // 2
        train = self.split == "train"

        def key_size():
            return 1 + d.randint(km) if train else km

        pk_size, pv_size = key_size(), 1 + d.randint(vm)
        pk, pv = d.motif(0, K, pk_size), d.motif(K, NV, pv_size)
        limit = L - (pk_size + pv_size) - (km + vm)      # the loop runs while len(tokens) < limit
        probe_at = d.randint(limit - (km + vm) + 1)     # <= limit - (km+vm): reached before the loop ends
        tokens, targets, segs = [], [], []
        kv: dict[tuple, tuple] = {}
        presented: set[tuple] = set()
        probe_added = False
        while len(tokens) < limit:
            ks, vs = key_size(), 1 + d.randint(vm)
            if len(tokens) >= probe_at and not probe_added:
                segs.append(Segment("probe", len(tokens), pk, pv, False))
                tokens += pk + pv
                targets += [IGNORE] * (len(pk) + len(pv))
                kv[pk] = pv
                presented.add(pk)
                probe_added = True
                continue
            k = d.motif(0, K, ks)
            if k == pk:
                v = pv
                probe_added = True
            elif k in kv:
                v = kv[k]
            else:
                v = kv[k] = d.motif(K, NV, vs)
            scored = k in presented
            segs.append(Segment("pair", len(tokens), k, v, scored))
            tokens += k + v
            targets += [IGNORE] * len(k) + (list(v) if scored else [IGNORE] * len(v))
            presented.add(k)
        segs.append(Segment("final", len(tokens), pk, pv, True))
        tokens += pk + pv
        targets += [IGNORE] * len(pk) + list(pv)
        n_pad = L + 1 - len(tokens)                      # >= 2 by construction
        tokens = [self.vocab_size - 1] * n_pad + tokens
        targets = [IGNORE] * n_pad + targets
        segs = [Segment("pad", 0, (), (), False)] + [s._replace(start=s.start + n_pad) for s in segs]
        if train:
            return tokens[:-1], tokens[1:], segs
        return tokens[:-1], targets[1:], segs

    def sample_segments(self, batch_size: int, generator=None) -> tuple[Batch, list[list[Segment]]]:
        """A batch and, per example, its segments (pad, pairs, probes) with their input positions."""
        d = _Draws(_as_generator(generator))
        rows = [self._example(d) for _ in range(batch_size)]
        inputs = torch.tensor([r[0] for r in rows], dtype=torch.long)
        targets = torch.tensor([r[1] for r in rows], dtype=torch.long)
        mask = targets != IGNORE
        return Batch(inputs, targets, mask), [r[2] for r in rows]

    def _sample(self, B, g):
        return self.sample_segments(B, g)[0]


@_register
class SelectiveCopying(Task):
    """Selective copying (Mamba §4.1.1 / App. E.1; MAD ``generate_selective_copying_instance``) — §1.2, §1.3.

    Content tokens ``0 .. V-3``, blank (noise) ``V-2``, copy token ``V-1``. ``num_tokens_to_copy``
    content tokens (uniform, with replacement) are placed in order among ``L - 2N - 1`` blanks, then
    come the copy token and N blanks. The targets of the last N positions are the N tokens in order
    (non-autoregressive: those inputs are blanks); only they are scored.

    ``placement="uniform"`` (default, the Mamba paper's "random positions"): the N positions are a
    uniform random subset of the first ``L - N - 1``. ``placement="mad"``: MAD's ``np.insert``
    scheme, each blank goes before a uniformly chosen content token, so the last content token
    always sits right before the copy token.

    Defaults: §5 T4 / §3.2 lite (V=16, L=128, 8 tokens to copy).
    """

    name = "selective_copying"
    section = "§1.2, §1.3"
    defaults = {"vocab_size": 16, "seq_len": 128, "num_tokens_to_copy": 8, "placement": "uniform"}
    choices = {"placement": ("uniform", "mad")}

    def _check(self):
        self._require(self.vocab_size >= 3, "vocab_size", "must be >= 3 (content, blank and copy tokens)")
        self._require(self.num_tokens_to_copy >= 1, "num_tokens_to_copy", "must be >= 1")
        self._require(self.seq_len > 2 * self.num_tokens_to_copy + 1, "seq_len",
                      f"must be > 2*num_tokens_to_copy + 1 = {2 * self.num_tokens_to_copy + 1}")

    def _sample(self, B, g):
        V, L, N = self.vocab_size, self.seq_len, self.num_tokens_to_copy
        R = L - N - 1                                          # the region holding content and blanks
        data = torch.randint(V - 2, (B, N), generator=g)
        if self.placement == "uniform":
            pos = _randperm_rows(B, R, N, g).sort(-1).values
        else:
            slot = torch.randint(N, (B, R - N), generator=g)   # each blank goes before content token `slot`
            counts = torch.zeros(B, N, dtype=torch.long).scatter_add_(1, slot, torch.ones_like(slot))
            pos = torch.arange(N) + counts.cumsum(1)
        inputs = torch.full((B, L), V - 2, dtype=torch.long)
        inputs.scatter_(1, pos, data)
        inputs[:, R] = V - 1
        targets = torch.full((B, L), IGNORE, dtype=torch.long)
        targets[:, R + 1:] = data
        mask = torch.zeros(B, L, dtype=torch.bool)
        mask[:, R + 1:] = True
        return Batch(inputs, targets, mask)


@_register
class Compression(Task):
    """MAD compression (``generate_compression_instance``, AutoEncoder backbone) — benchmarks.md §1.2.

    ``seq_len - 1`` uniform tokens from ``0 .. V-2`` then the compression token ``V-1``; targets are
    the inputs and every position is scored. ``readout == "autoencoder"``: MAD encodes the sequence,
    keeps only the **last** position's vector and decodes every position from it (a fixed 2-layer MLP
    fed that vector plus a sinusoidal position embedding). A training loop must use that readout; a
    per-position causal LM head would solve the task trivially by copying its own input.

    Defaults: MAD baseline / §3.2 / §5 T8 (V=16, L=32).
    """

    name = "compression"
    section = "§1.2"
    readout = "autoencoder"
    defaults = {"vocab_size": 16, "seq_len": 32}

    def _check(self):
        self._require(self.vocab_size >= 2, "vocab_size", "must be >= 2")
        self._require(self.seq_len >= 2, "seq_len", "must be >= 2")

    def _sample(self, B, g):
        V, L = self.vocab_size, self.seq_len
        inputs = torch.cat([torch.randint(V - 1, (B, L - 1), generator=g),
                            torch.full((B, 1), V - 1, dtype=torch.long)], 1)
        return Batch(inputs, inputs.clone(), torch.ones(B, L, dtype=torch.bool))


@_register
class Memorization(Task):
    """MAD memorization (``generate_memorization_instance``) — benchmarks.md §1.2.

    A key -> value map fixed for the whole task by ``kv_map_seed`` (12345 as in MAD), independent of
    the sampling generator: keys ``0 .. (V-1)//2 - 1``, each mapped to a distinct value of
    ``(V-1)//2 .. V-2`` (a random injection); the insert token is ``V-1``. A sequence is
    ``seq_len/2`` pairs ``k INSERT`` with keys drawn uniformly with replacement; the target at each
    INSERT position is ``kv_map[k]`` and only those positions are scored. The map must be stored in
    the weights: nothing in the context reveals it.

    Defaults: MAD baseline / §5 T7 (V=256, L=32). MAD trains on a fixed set of 256 examples; here
    every batch is fresh (the map is the same, so every key is seen).
    """

    name = "memorization"
    section = "§1.2"
    defaults = {"vocab_size": 256, "seq_len": 32, "kv_map_seed": 12345}

    def _check(self):
        self._require(self.vocab_size >= 4, "vocab_size", "must be >= 4")
        self._require(self.seq_len >= 2 and self.seq_len % 2 == 0, "seq_len", "must be even and >= 2")
        S = self.vocab_size - 1
        K = S // 2
        perm = torch.randperm(S - K, generator=torch.Generator().manual_seed(self.kv_map_seed))
        self.kv_map = perm[:K] + K                                # kv_map[k] = value of key k

    @property
    def num_keys(self) -> int:
        return self.kv_map.numel()

    def _sample(self, B, g):
        V, L = self.vocab_size, self.seq_len
        keys = torch.randint(self.num_keys, (B, L // 2), generator=g)
        inputs = torch.stack([keys, torch.full_like(keys, V - 1)], -1).reshape(B, L)
        targets = torch.stack([torch.full_like(keys, IGNORE), self.kv_map[keys]], -1).reshape(B, L)
        return Batch(inputs, targets, targets != IGNORE)


# --------------------------------------------------------------------------------------------------
# Induction heads (benchmarks.md §1.3, §3.2, §5 T9)


@_register
class InductionHeads(Task):
    """Induction heads — benchmarks.md §1.3 (Mamba / H3 layout) and §3.2 / §5 T9 (CPU lite).

    ``variant="repeat"`` (default; the CPU lite of §3.2 / §5 T9): a block of ``seq_len/2`` uniform
    tokens from ``0 .. V-1`` written twice. The positions of the second copy that have a next token
    are scored: the target at position t is the token that followed the same block position in the
    first copy (``inputs[t - L/2 + 1]``); ``seq_len/2 - 1`` scored positions per example. Train at
    L=128 and test at 256 .. 1024 for the length-extrapolation pattern of Mamba Table 11.

    ``variant="trigger"`` (Mamba §4.1.2 / H3 §3.1, one scored token per example): uniform tokens from
    ``0 .. V-2``; the special token ``S = V-1`` is planted once at a uniform position p in
    ``0 .. L-3`` and again at the last position; the target there is the token that followed its
    first occurrence (``inputs[p+1]``). Only the last position is scored (Mamba's setting: V=16,
    L=256).
    """

    name = "induction_heads"
    section = "§1.3, §5"
    defaults = {"vocab_size": 16, "seq_len": 128, "variant": "repeat"}
    choices = {"variant": ("repeat", "trigger")}

    def _check(self):
        if self.variant == "repeat":
            self._require(self.seq_len >= 4 and self.seq_len % 2 == 0, "seq_len", "must be even and >= 4")
            self._require(self.vocab_size >= 2, "vocab_size", "must be >= 2")
        else:
            self._require(self.seq_len >= 3, "seq_len", "must be >= 3")
            self._require(self.vocab_size >= 3, "vocab_size", "must be >= 3 (two content tokens and the trigger)")

    def _sample(self, B, g):
        V, L = self.vocab_size, self.seq_len
        targets = torch.full((B, L), IGNORE, dtype=torch.long)
        mask = torch.zeros(B, L, dtype=torch.bool)
        if self.variant == "repeat":
            n = L // 2
            block = torch.randint(V, (B, n), generator=g)
            inputs = torch.cat([block, block], 1)
            targets[:, n:L - 1] = block[:, 1:]
            mask[:, n:L - 1] = True
            return Batch(inputs, targets, mask)
        inputs = torch.randint(V - 1, (B, L), generator=g)
        p = torch.randint(L - 2, (B,), generator=g)
        ar = torch.arange(B)
        inputs[ar, p] = V - 1
        inputs[:, L - 1] = V - 1
        targets[:, L - 1] = inputs[ar, p + 1]
        mask[:, L - 1] = True
        return Batch(inputs, targets, mask)


# --------------------------------------------------------------------------------------------------
# Parity / modular counting (benchmarks.md §1.8, §5 T10) and the adding problem (§1.5, §5 T12)


@_register
class Parity(Task):
    """Parity / modular counting (state tracking; Zoology ``circuits.py``) — benchmarks.md §1.8, §5 T10.

    ``score="running"`` (default; Zoology ``cumulative_parity``): ``seq_len`` uniform digits
    ``0 .. modulus-1``; the target at every position t is ``(x_0 + ... + x_t) mod modulus`` (the
    running xor of the bits for modulus 2); every position is scored. Vocabulary ``modulus``.
    ``score="final"`` (Zoology ``parity``): ``seq_len - 1`` digits then an END token ``modulus``; only
    the END position is scored, with the sum mod ``modulus``. Vocabulary ``modulus + 1``.

    Default: running (dense supervision learns in a CPU budget; the final-only variant gives one bit
    of signal per sequence), L=64, modulus 2.
    """

    name = "parity"
    section = "§1.8, §5"
    defaults = {"seq_len": 64, "modulus": 2, "score": "running"}
    choices = {"score": ("running", "final")}

    def _check(self):
        self._require(self.modulus >= 2, "modulus", "must be >= 2")
        self._require(self.seq_len >= 2, "seq_len", "must be >= 2")
        self.vocab_size = self.modulus + (1 if self.score == "final" else 0)

    def _sample(self, B, g):
        L, m = self.seq_len, self.modulus
        if self.score == "running":
            x = torch.randint(m, (B, L), generator=g)
            return Batch(x, x.cumsum(1) % m, torch.ones(B, L, dtype=torch.bool))
        x = torch.randint(m, (B, L - 1), generator=g)
        inputs = torch.cat([x, torch.full((B, 1), m, dtype=torch.long)], 1)
        targets = torch.full((B, L), IGNORE, dtype=torch.long)
        targets[:, -1] = x.sum(1) % m
        mask = torch.zeros(B, L, dtype=torch.bool)
        mask[:, -1] = True
        return Batch(inputs, targets, mask)


@_register
class Adding(Task):
    """The adding problem (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016) — benchmarks.md §1.5.

    A regression task with float inputs ``[B, T, 2]``: feature 0 is ``u ~ U(0, 1)``, feature 1 a
    marker, 1 at exactly two positions — one uniform in the first half ``0 .. L/2-1`` and one in the
    second half — and 0 elsewhere. The target (float) is the sum of the two marked values, read at
    the last position, the only scored one (targets elsewhere are NaN). Metric: MSE (:func:`mse`);
    always predicting 1 gives MSE = Var(U1 + U2) = 1/6 ≈ 0.167 (survey catalog erratum E50: the
    survey's 0.1767 is a typo). ``vocab_size`` is 0; the model needs ``input_dim=2, output_dim=1``.

    Default: L=200 (§5 T12).
    """

    name = "adding"
    section = "§1.5"
    regression = True
    input_dim = 2
    metric = "mse"
    baseline_mse = 1.0 / 6.0
    defaults = {"seq_len": 200}

    def _check(self):
        self._require(self.seq_len >= 2, "seq_len", "must be >= 2")
        self.vocab_size = 0

    def _sample(self, B, g):
        L = self.seq_len
        h = L // 2
        u = torch.rand(B, L, generator=g)
        a = torch.randint(h, (B,), generator=g)
        b = h + torch.randint(L - h, (B,), generator=g)
        ar = torch.arange(B)
        marks = torch.zeros(B, L)
        marks[ar, a] = 1.0
        marks[ar, b] = 1.0
        targets = torch.full((B, L), float("nan"))
        targets[:, -1] = u[ar, a] + u[ar, b]
        mask = torch.zeros(B, L, dtype=torch.bool)
        mask[:, -1] = True
        return Batch(torch.stack([u, marks], -1), targets, mask)
