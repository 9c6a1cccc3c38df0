"""``seqdsl train``: train a stack on a synthetic task on the CPU, evaluate, save a checkpoint and a result.

The loss and the accuracy are computed only on the task's scored positions, and the model's head is
evaluated only there. Progress (loss, accuracy, tokens/s, ETA) goes to stderr.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time


def _progress(step: int, steps: int, loss: float, acc: float, tok_s: float, elapsed: float,
              label: str | None = None, stream=None):
    """A progress bar (redrawn in place on a terminal), or with a ``label`` one plain line per call (the
    lines of several search workers sharing one log stay readable)."""
    stream = stream or sys.stderr
    eta = elapsed / max(step, 1) * (steps - step)
    stats = (f"{step}/{steps} loss {loss:.4f} acc {acc:.3f} {tok_s:,.0f} tok/s "
             f"ETA {int(eta // 60)}m{int(eta % 60):02d}s")
    if label is not None:
        stream.write(f"{label} {stats}\n")
    else:
        width = 24
        filled = int(width * step / steps)
        line = f"[{'#' * filled}{'.' * (width - filled)}] {stats}"
        if stream.isatty():                      # redraw in place; a newline only at the end
            stream.write("\r" + line + ("\n" if step == steps else ""))
        else:
            stream.write(line + "\n")
    stream.flush()


def _loss_and_acc(model, batch, regression: bool):
    import torch

    b_idx, t_idx = batch.mask.nonzero(as_tuple=True)
    if getattr(model, "decode_pos", None) is not None:
        out = model.reconstruct(batch.inputs, (b_idx, t_idx))
    else:
        out = model(batch.inputs, positions=(b_idx, t_idx))
    target = batch.targets[b_idx, t_idx]
    if regression:
        pred = out[..., 0]
        loss = torch.nn.functional.mse_loss(pred, target.to(pred.dtype))
        return loss, float(loss.detach())          # "accuracy" column reports the MSE for regression
    loss = torch.nn.functional.cross_entropy(out, target)
    acc = (out.argmax(-1) == target).float().mean()
    return loss, float(acc)


SCHEDULES = ("cosine", "constant")


def train(stack, task: str, steps: int = 1000, lr: float = 1e-3, batch_size: int = 32, seed: int = 0,
          out_dir: str | None = None, eval_batches: int = 8, weight_decay: float = 0.1, warmup: float = 0.05,
          progress: bool | str = True, task_settings: dict | None = None, stack_hparams: dict | None = None,
          threads: int | None = None, schedule: str = "cosine") -> dict:
    """Train a stack (a path or a CheckedStack) on a task; returns the result dict (also written as JSON).

    schedule: "cosine" (linear warmup, then cosine decay to 0 at the last step) or "constant" (linear
    warmup, then lr throughout, as in the MQAR calibration runs of benchmarks.md §3.3).
    progress: True, a bar on stderr (50 updates); a string, a line starting with it at every tenth of the
    steps (what ``seqdsl search`` prints per run); False, nothing. The result's ``curve`` holds the smoothed
    training loss and accuracy at every fiftieth of the steps: [[step, loss, accuracy], ...].
    """
    import torch

    from seqdsl.api import load
    from seqdsl.stack import build_stack
    from seqdsl.tasks import make_task

    if threads:
        torch.set_num_threads(threads)
    cs = load(stack, **(stack_hparams or {})) if isinstance(stack, (str, os.PathLike)) else stack
    t = make_task(task, **(task_settings or {}))
    g = torch.Generator().manual_seed(seed)
    probe = t.sample(2, torch.Generator().manual_seed(seed))
    regression = probe.targets.is_floating_point()
    input_dim = probe.inputs.shape[-1] if probe.inputs.is_floating_point() else None
    model = build_stack(cs, vocab=t.vocab_size, seed=seed, input_dim=input_dim,
                        output_dim=1 if regression else None)
    if getattr(t, "readout", "lm") == "autoencoder":
        model.enable_autoencoder(t.seq_len)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
    warm = max(1, int(warmup * steps))
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")

    def factor(s: int) -> float:
        ramp = min(1.0, (s + 1) / warm)
        if schedule == "constant":
            return ramp
        return ramp * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(steps, 1))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    start = time.perf_counter()
    tokens = 0
    loss_ema = acc_ema = None
    every = max(1, steps // 50)
    report_every = max(1, steps // 10) if isinstance(progress, str) else every
    curve = []
    for step in range(1, steps + 1):
        batch = t.sample(batch_size, g)
        loss, acc = _loss_and_acc(model, batch, regression)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        tokens += batch.inputs.shape[0] * batch.inputs.shape[1]
        lv = float(loss.detach())
        loss_ema = lv if loss_ema is None else 0.9 * loss_ema + 0.1 * lv
        acc_ema = acc if acc_ema is None else 0.9 * acc_ema + 0.1 * acc
        if not math.isfinite(lv):
            raise FloatingPointError(f"the loss became {lv} at step {step}; lower the learning rate")
        if step % every == 0 or step == steps:
            curve.append([step, round(loss_ema, 4), round(acc_ema, 4)])
        if progress and (step % report_every == 0 or step == steps):
            elapsed = time.perf_counter() - start
            _progress(step, steps, loss_ema, acc_ema, tokens / elapsed, elapsed,
                      label=progress if isinstance(progress, str) else None)
    seconds = time.perf_counter() - start
    model.eval()
    eval_gen = torch.Generator().manual_seed(10_000 + seed)
    accs, losses = [], []
    with torch.no_grad():
        for _ in range(eval_batches):
            batch = t.sample(batch_size, eval_gen)
            loss, acc = _loss_and_acc(model, batch, regression)
            accs.append(acc)
            losses.append(float(loss))
    result = {
        "stack": cs.name, "stack_path": cs.path, "task": task, "task_settings": dict(task_settings or {}),
        "stack_hparams": dict(stack_hparams or {}), "steps": steps, "lr": lr, "schedule": schedule,
        "batch_size": batch_size,
        "seed": seed, "train_loss": loss_ema, "eval_loss": sum(losses) / len(losses),
        ("eval_mse" if regression else "eval_accuracy"): sum(accs) / len(accs),
        "num_parameters": model.num_parameters(), "state_size": model.state_size(t.seq_len),
        "tokens_per_s": tokens / seconds, "seconds": seconds, "layers": list(cs.layers), "curve": curve,
    }
    if out_dir:
        import torch as _torch

        from seqdsl.cache import write_atomic
        from seqdsl.printer import print_model

        os.makedirs(out_dir, exist_ok=True)
        ckpt = os.path.join(out_dir, "checkpoint.pt")
        tmp = ckpt + ".tmp"
        _torch.save({"state_dict": model.state_dict(), "stack": print_model(cs.ir), "result": result}, tmp)
        os.replace(tmp, ckpt)
        result["checkpoint"] = ckpt
        write_atomic(__import__("pathlib").Path(out_dir) / "result.json", json.dumps(result, indent=2) + "\n")
    return result
