"""The built-in checks of `hookloop doctor`: the seed's "loss doesn't decrease" checklist.

Each check is a small function `check(subject) -> Finding` over a `Subject` (a model, its
optimizer, a few real batches, the loss function). A finding is PASS, WARN or FAIL with the
number behind it. Checks that train (one optimizer step, overfitting one batch) work on a
deep copy of the model and optimizer, so the subject is left as it was. Checks that need to
know a plugin (the lr schedule) belong to that plugin, through the `doctor_checks` hook;
`hookloop.lm.doctor` runs both.

Batches are `(inputs, targets)` pairs of token ids, `(B, T)` each; the model maps inputs to
logits `(B, T, V)`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from hookloop.findings import FAIL, PASS, WARN, Check, Finding, Subject

__all__ = [
    "CHECKS",
    "batch_shapes",
    "causal_mask",
    "frozen_parameters",
    "grad_norm_range",
    "gradients",
    "initial_loss",
    "learning_rate",
    "logits_range",
    "optimizer_step",
    "overfit_one_batch",
    "peak_lrs",
    "targets_shifted",
    "token_range",
]

# --- helpers -------------------------------------------------------------------------------


def _names(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()  # dropout off: the checks measure the model, not its noise
    try:
        yield
    finally:
        model.train(was)


def _logits(s: Subject, inputs: torch.Tensor) -> torch.Tensor:
    with _eval_mode(s.model), torch.no_grad():
        return s.model(inputs).float()


def _vocab(s: Subject) -> int:
    return s.vocab_size or int(_logits(s, s.batches[0][0][:1]).shape[-1])


def _backward(s: Subject, model: torch.nn.Module, batch: Any) -> float:
    model.zero_grad(set_to_none=True)
    with _eval_mode(model):
        loss = s.loss_fn(model, batch)
        loss.backward()
    return float(loss.detach())


def _grad_norm(model: torch.nn.Module) -> float:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def _copy(s: Subject) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A model and optimizer pair to train without touching the subject's (one deepcopy,
    so the copied optimizer holds the copied parameters)."""
    return copy.deepcopy((s.model, s.optimizer))


def peak_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    """Each parameter group's peak lr: `initial_lr` when a schedule recorded it, else `lr`."""
    return [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]


# --- data --------------------------------------------------------------------------------


def batch_shapes(s: Subject) -> Finding:
    """Inputs and targets are integer tensors of one shape `(B, T)`."""
    inputs, targets = s.batches[0]
    desc = (
        f"inputs {tuple(inputs.shape)} {str(inputs.dtype)[6:]}, "
        f"targets {tuple(targets.shape)} {str(targets.dtype)[6:]}"
    )
    if inputs.shape != targets.shape or inputs.dim() != 2:
        return Finding("batch_shapes", FAIL, f"{desc}: expected two (B, T) tensors of one shape")
    if inputs.is_floating_point() or targets.is_floating_point():
        bad = int(
            (~torch.isfinite(inputs.float())).sum() + (~torch.isfinite(targets.float())).sum()
        )
        extra = f", {bad} NaN/inf values" if bad else ""
        return Finding("batch_shapes", FAIL, f"{desc}{extra}: token ids must be integers")
    return Finding("batch_shapes", PASS, f"{desc}, {len(s.batches)} batches")


def token_range(s: Subject) -> Finding:
    """Every token id lies in `[0, vocab_size)` (targets may use -100 to mean ignore)."""
    vocab = _vocab(s)
    ids = torch.cat([t.flatten() for b in s.batches for t in b]).double()
    if not bool(torch.isfinite(ids).all()):
        return Finding(
            "token_range",
            FAIL,
            f"{int((~torch.isfinite(ids)).sum())} NaN/inf values in the batches",
        )
    ids = ids[ids != -100]
    low, high = int(ids.min()), int(ids.max())
    status = PASS if low >= 0 and high < vocab else FAIL
    return Finding("token_range", status, f"ids in [{low}, {high}], vocab {vocab}")


def targets_shifted(s: Subject) -> Finding:
    """Targets are the inputs shifted one to the left (`targets[:, :-1] == inputs[:, 1:]`)."""
    shifted = same = pairs = total = 0
    for inputs, targets in s.batches:
        shifted += int((inputs[:, 1:] == targets[:, :-1]).sum())
        pairs += targets[:, :-1].numel()
        same += int((inputs == targets).sum())
        total += targets.numel()
    share = shifted / max(pairs, 1)
    if share >= 0.99:
        return Finding("targets_shifted", PASS, f"{share:.1%} of targets are the next input token")
    if same / total >= 0.99:
        return Finding(
            "targets_shifted",
            FAIL,
            f"targets equal the inputs at {same / total:.1%} of positions: not shifted by one",
        )
    return Finding("targets_shifted", FAIL, f"only {share:.1%} of targets are the next input token")


# --- forward -----------------------------------------------------------------------------


def logits_range(s: Subject) -> Finding:
    """Logits are finite, shaped `(B, T, V)`, and not huge at initialization."""
    inputs = s.batches[0][0]
    logits = _logits(s, inputs)
    shape = tuple(logits.shape)
    if not bool(torch.isfinite(logits).all()):
        return Finding(
            "logits_range",
            FAIL,
            f"{int((~torch.isfinite(logits)).sum())} non-finite logits of {logits.numel()}",
        )
    low, high = float(logits.min()), float(logits.max())
    detail = f"shape {shape}, range [{low:.3g}, {high:.3g}]"
    if logits.dim() != 3 or shape[:2] != tuple(inputs.shape):
        return Finding(
            "logits_range", FAIL, f"{detail}: expected (B, T, V) for inputs {tuple(inputs.shape)}"
        )
    return Finding("logits_range", PASS if max(-low, high) < 30 else WARN, detail)


def initial_loss(s: Subject) -> Finding:
    """The loss before training is close to ln(vocab_size), a uniform guess."""
    expected = math.log(_vocab(s))
    with _eval_mode(s.model), torch.no_grad():
        loss = sum(float(s.loss_fn(s.model, b)) for b in s.batches) / len(s.batches)
    detail = f"loss {loss:.4g}, ln(vocab) = {expected:.4g}"
    if not math.isfinite(loss):
        return Finding("initial_loss", FAIL, detail)
    off = abs(loss - expected) / expected
    return Finding(
        "initial_loss",
        PASS if off <= 0.15 else WARN if off <= 0.5 else FAIL,
        f"{detail} ({off:.0%} off)",
    )


def causal_mask(s: Subject) -> Finding:
    """Changing the tokens from position t on leaves the logits before t unchanged."""
    inputs = s.batches[0][0][:2]
    t = inputs.shape[1] // 2
    changed = inputs.clone()
    changed[:, t:] = (changed[:, t:] + 1) % _vocab(s)
    before, after = _logits(s, inputs), _logits(s, changed)
    leak = float((before[:, :t] - after[:, :t]).abs().max())
    moved = float((before[:, t:] - after[:, t:]).abs().max())
    detail = f"max change of logits before position {t} when later tokens change: {leak:.3g}"
    if leak > 1e-6 * (1.0 + float(before.abs().max())):  # a causal model gives exactly 0
        return Finding("causal_mask", FAIL, detail + ": earlier positions see the future")
    if moved == 0.0:
        return Finding("causal_mask", WARN, detail + "; later logits did not change either")
    return Finding("causal_mask", PASS, detail)


# --- backward ----------------------------------------------------------------------------


def gradients(s: Subject) -> Finding:
    """Every trainable parameter receives a gradient, and none is tiny (max |g| < 1e-8)."""
    _backward(s, s.model, s.batches[0])
    trainable = [(n, p) for n, p in s.model.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None]
    peaks = {n: float(p.grad.abs().max()) for n, p in trainable if p.grad is not None}
    s.model.zero_grad(set_to_none=True)
    if missing:
        return Finding(
            "gradients",
            FAIL,
            f"no gradient for {_names(missing)} ({len(missing)} of {len(trainable)} trainable "
            "tensors): detached from the graph or unused",
        )
    tiny = [n for n, v in peaks.items() if v < 1e-8]
    smallest = min(peaks, key=peaks.__getitem__)
    detail = (
        f"{len(peaks)} of {len(trainable)} trainable tensors get gradients; "
        f"smallest max|grad| {peaks[smallest]:.2g} ({smallest})"
    )
    if tiny:
        return Finding("gradients", WARN, f"{detail}; tiny: {_names(tiny)}")
    return Finding("gradients", PASS, detail)


def frozen_parameters(s: Subject) -> Finding:
    """No parameter is frozen (`requires_grad=False`) without the user knowing it."""
    params = list(s.model.named_parameters())
    frozen = [(n, p.numel()) for n, p in params if not p.requires_grad]
    if not frozen:
        return Finding("frozen_parameters", PASS, f"0 of {len(params)} tensors frozen")
    share = sum(k for _, k in frozen) / sum(p.numel() for _, p in params)
    return Finding(
        "frozen_parameters",
        WARN,
        f"frozen (requires_grad=False): {_names([n for n, _ in frozen])} "
        f"({len(frozen)} of {len(params)} tensors, {share:.0%} of weights)",
    )


def grad_norm_range(s: Subject) -> Finding:
    """The global gradient norm is finite and in a healthy range (seed: 0.1-1 normal, > 100 a
    warning, > 1000 critical)."""
    norms = [(_backward(s, s.model, b), _grad_norm(s.model))[1] for b in s.batches]
    s.model.zero_grad(set_to_none=True)
    low, high = min(norms), max(norms)
    detail = f"grad norm {low:.3g} to {high:.3g} over {len(norms)} batches"
    if not all(map(math.isfinite, norms)) or high >= 1000 or high == 0:
        return Finding("grad_norm_range", FAIL, detail)
    return Finding("grad_norm_range", WARN if high >= 100 or low < 1e-4 else PASS, detail)


# --- optimizer ---------------------------------------------------------------------------


def learning_rate(s: Subject) -> Finding:
    """Every parameter group has a non-zero (peak) learning rate."""
    lrs = peak_lrs(s.optimizer)
    detail = "lr " + ", ".join(f"{lr:.3g}" for lr in lrs) + f" ({len(lrs)} param groups)"
    if min(lrs) <= 0:
        return Finding("learning_rate", FAIL, detail + ": a zero lr never moves the weights")
    return Finding("learning_rate", WARN if min(lrs) < 1e-6 else PASS, detail)


def optimizer_step(s: Subject) -> Finding:
    """One optimizer step changes every trainable parameter that has a gradient."""
    model, optimizer = _copy(s)
    _backward(s, model, s.batches[0])
    named = [
        (n, p) for n, p in model.named_parameters() if p.grad is not None and bool(p.grad.any())
    ]
    before = [p.detach().clone() for _, p in named]
    optimizer.step()
    pairs = [(n, p.detach(), b) for (n, p), b in zip(named, before, strict=True)]
    still = [n for n, p, b in pairs if torch.equal(p, b)]
    moved = math.sqrt(sum(float((p - b).square().sum()) for _, p, b in pairs))
    size = math.sqrt(sum(float(b.square().sum()) for _, _, b in pairs))
    detail = (
        f"{len(named) - len(still)} of {len(named)} tensors with gradients changed; "
        f"update norm / weight norm {moved / max(size, 1e-12):.2g}"
    )
    if still:
        return Finding(
            "optimizer_step",
            FAIL,
            f"{detail}; unchanged: {_names(still)} (lr 0, or not in the optimizer)",
        )
    return Finding("optimizer_step", PASS, detail)


def overfit_one_batch(s: Subject) -> Finding:
    """Training on one batch (its first `overfit_rows` sequences) drives its loss below
    `overfit_fraction` of the start within `overfit_steps` steps, at the peak lr, dropout off."""
    model, optimizer = _copy(s)
    for group, lr in zip(optimizer.param_groups, peak_lrs(optimizer), strict=True):
        group["lr"] = lr
    batch = tuple(t[: s.overfit_rows] for t in s.batches[0])
    start = loss = _backward(s, model, batch)
    target = s.overfit_fraction * start
    for step in range(1, s.overfit_steps + 1):
        optimizer.step()
        loss = _backward(s, model, batch)
        if not math.isfinite(loss):
            break
        if loss < target:
            return Finding(
                "overfit_one_batch",
                PASS,
                f"loss {start:.4g} -> {loss:.4g} (< {target:.4g}) in {step} steps",
            )
    return Finding(
        "overfit_one_batch",
        FAIL,
        f"loss {start:.4g} -> {loss:.4g} after {s.overfit_steps} steps, target < {target:.4g}",
    )


CHECKS: tuple[Check, ...] = (
    batch_shapes,
    token_range,
    targets_shifted,
    logits_range,
    initial_loss,
    gradients,
    frozen_parameters,
    grad_norm_range,
    learning_rate,
    optimizer_step,
    causal_mask,
    overfit_one_batch,
)
"""The built-in checks, in the order the checklist prints them."""
