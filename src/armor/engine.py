"""The one batch engine: predictions and attacks over a dataset in batches, with one seed rule.

Everything that attacks or predicts more than one batch goes through here: the evaluator, every metric, the
trainer's validation, ``armor attack`` and the demos. One rule derives each batch's generator,

    generator seed = seed * 1_000_003 + stream * 10_007 + batch

where ``stream`` tells the attacks of one measurement apart (the evaluator uses the attack's position in the
suite, the masking checks one number per check), so every (attack, batch) pair draws its own reproducible
random numbers and a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from .attacks import attack_mode
from .threat import ThreatModel

AttackFn = Callable[..., torch.Tensor]


def batch_seed(seed: int, stream: int, batch: int) -> int:
    """The seed of batch ``batch`` of stream ``stream`` (see the module docstring)."""
    return int(seed) * 1_000_003 + int(stream) * 10_007 + int(batch)


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    """Where the model's parameters live (``fallback`` for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return fallback


def as_xy(data: Any, what: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` from an ``(x, y)`` pair or anything with ``.x`` and ``.y`` (an armor Dataset)."""
    if hasattr(data, "x") and hasattr(data, "y"):
        return data.x, data.y
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    raise ValueError(f"{what} must be an (x, y) pair of tensors or an armor Dataset, got {type(data).__name__}")


def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode, batched, on the model's device, without touching its state."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(model, x.device)
    outs = []
    with attack_mode(model), torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            outs.append(model(x[i:i + batch_size].to(device)))
    if not outs:
        return torch.empty(0, 0, device=device)
    logits = torch.cat(outs)
    if logits.dim() != 2:
        raise ValueError(f"the model must return logits of shape (N, classes), got {tuple(logits.shape)}")
    return logits


def attack_batches(model: nn.Module, attack: AttackFn, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                   batch_size: int = 500, seed: int = 0, stream: int = 0, index: Optional[torch.Tensor] = None,
                   start: int = 0, generator: Optional[torch.Generator] = None,
                   name: str = "") -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """Run ``attack`` over ``x`` batch by batch; yields ``(batch, n_batches, idx, x_adv)`` per batch.

    Arguments:
        attack: ``attack(model, x, y, threat, generator=g) -> x_adv`` (e.g. from :func:`armor.attacks.get_attack`).
        index: the points to attack, in order (default all); batches are consecutive slices of it.
        start: the first batch to run (resume). generator: one generator for every batch instead of the seed
            rule (the trainer's validation carries its own stream).
        name: the attack's name, for the error raised if it ever leaves the threat model.
    Every batch's result is checked to lie inside the threat model; ``x_adv`` is on the model's device.
    """
    device = model_device(model, x.device)
    index = torch.arange(x.shape[0], device=x.device) if index is None else index
    n_batches = (index.numel() + batch_size - 1) // batch_size
    for b in range(start, n_batches):
        idx = index[b * batch_size:(b + 1) * batch_size]
        xb, yb = x[idx].to(device), y[idx].to(device)
        g = generator if generator is not None else torch.Generator(device=device).manual_seed(
            batch_seed(seed, stream, b))
        x_adv = attack(model, xb, yb, threat, generator=g)
        if not bool(threat.contains(x_adv, xb).all()):
            raise RuntimeError(f"attack {name or getattr(attack, '__name__', attack)!r} returned points outside "
                               "the threat model: this is a bug")
        yield b, n_batches, idx, x_adv


def attack_dataset(model: nn.Module, attack: AttackFn, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                   batch_size: int = 500, seed: int = 0, stream: int = 0,
                   progress: Optional[Callable[[int, int], None]] = None, name: str = "") -> torch.Tensor:
    """All of ``x`` attacked (see :func:`attack_batches`), on ``x``'s device; ``progress(done, total)`` per batch."""
    parts = []
    for b, n_batches, _, x_adv in attack_batches(model, attack, x, y, threat, batch_size=batch_size, seed=seed,
                                                 stream=stream, name=name):
        parts.append(x_adv.to(x.device))
        if progress is not None:
            progress(b + 1, n_batches)
    return torch.cat(parts) if parts else x.clone()


def correct_after(model: nn.Module, attack: AttackFn, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                  batch_size: int = 500, seed: int = 0, stream: int = 0, name: str = "") -> torch.Tensor:
    """Per point (on the CPU): is the model still right after ``attack``?"""
    out = []
    for _, _, idx, x_adv in attack_batches(model, attack, x, y, threat, batch_size=batch_size, seed=seed,
                                           stream=stream, name=name):
        out.append(predict_logits(model, x_adv, batch_size).argmax(1).cpu() == y[idx].cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


__all__ = ["as_xy", "attack_batches", "attack_dataset", "batch_seed", "correct_after", "model_device",
           "predict_logits"]
