"""What every attack shares: the model context, the losses, and one input-gradient routine."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..threat import ThreatModel, check_inputs, warn_if_probabilities

LossFn = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


@contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode with parameter gradients off, and restore both afterwards.

    Freezing ``requires_grad`` means autograd never builds dW nodes during an attack: the backward pass
    computes only the input gradient, and parameters' ``.grad`` are never touched.
    """
    was_training = model.training
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)


def _other_max(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)


def _true_logit(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, y[:, None]).squeeze(1)


def ce_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample cross-entropy to maximise (targeted: minus the CE towards ``target``)."""
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


def margin_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """C&W margin to maximise: best other logit minus the true one (> 0 means misclassified)."""
    if target is None:
        return _other_max(logits, y) - _true_logit(logits, y)
    return _true_logit(logits, target) - _true_logit(logits, y)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020): shift- and scale-invariant, to maximise."""
    top = logits.sort(dim=1, descending=True).values
    if target is None:
        return (_other_max(logits, y) - _true_logit(logits, y)) / (top[:, 0] - top[:, 2] + 1e-12)
    return (_true_logit(logits, target) - _true_logit(logits, y)) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "margin": margin_loss, "cw": margin_loss, "dlr": dlr_loss}


def get_loss(name: str | LossFn) -> LossFn:
    if callable(name):
        return name
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}: use one of {sorted(LOSSES)}")
    return LOSSES[name]


def loss_and_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                  target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward-backward pass: per-sample loss, logits and the input gradient (nothing else)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        try:
            loss = loss_fn(logits, y, target)
        except (IndexError, RuntimeError) as e:  # free on the happy path; a clear message on the bad one
            check_logits(logits, y)
            raise e
        if loss.requires_grad:
            (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
        else:
            grad = None
    if grad is None:  # the model cut the graph (a hard threshold, rounding): its input gradient is zero
        grad = torch.zeros_like(x)
    return loss.detach(), logits.detach(), grad


ROW_CHUNK = 512  # rows per forward-backward for attacks that expand a batch into rows (one per target)


def loss_and_grad_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                       target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`loss_and_grad` in chunks of :data:`ROW_CHUNK` rows, for the row batches of FAB-T and FGSM-T
    (points x targets). Each row's values are the same as in one call; a batch that no longer fits the CPU's
    caches costs about twice as much per row (4500 rows: 0.76-0.87 s against 0.42-0.44 s in chunks of 500 on
    the bench's small CNN; bench/RESULTS.md "Issue 13, target 1")."""
    n = x.shape[0]
    if n <= ROW_CHUNK:
        return loss_and_grad(model, x, y, loss_fn, target)
    parts = [loss_and_grad(model, x[i:i + ROW_CHUNK], y[i:i + ROW_CHUNK], loss_fn,
                           None if target is None else target[i:i + ROW_CHUNK]) for i in range(0, n, ROW_CHUNK)]
    return tuple(torch.cat(p) for p in zip(*parts))  # type: ignore[return-value]


def is_fooled(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    pred = logits.argmax(dim=1)
    return pred != y if target is None else pred == target


def prepare(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> None:
    """Validate inputs once per attack call (cheap compared with the attack itself)."""
    if not isinstance(threat, ThreatModel):
        raise ValueError(f"threat must be an armor.ThreatModel, got {type(threat).__name__}")
    check_inputs(x, y, None, threat)


def check_logits(logits: torch.Tensor, y: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"the model must return logits of shape (N, classes), got {tuple(logits.shape)}")
    if y.numel() and int(y.max()) >= logits.shape[1]:
        raise ValueError(f"label {int(y.max())} is out of range for a model with {logits.shape[1]} outputs")
    warn_if_probabilities(logits)


def default_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """A generator on the right device; seeded from torch's global RNG when none is given."""
    if generator is not None:
        return generator
    g = torch.Generator(device=device)
    g.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    return g
