"""Shared test set-up: CPU-only Triton runs under the interpreter; fixed seeds; the examples list."""

import os
import pathlib
import warnings

os.environ.setdefault("TRITON_INTERPRET", "1")
warnings.filterwarnings("ignore", message=".*Triton is not supported on current platform.*")

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.seq"))

# ---- record outcomes for `seqdsl zoo` (examples/README.md shows which tests check each model)
import json  # noqa: E402

RESULTS = ROOT / ".seqdsl_cache" / "test-results.json"
_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _outcomes[report.nodeid] = report.outcome


def pytest_sessionfinish(session, exitstatus):
    if not _outcomes:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    merged = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    merged.update(_outcomes)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=0, sort_keys=True))
    tmp.replace(RESULTS)


def training_losses(model, tokens, steps: int, lr: float) -> list:
    """Next-token cross-entropy of a stack on tokens [B, T] over a few Adam steps (the loss before each step)."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
