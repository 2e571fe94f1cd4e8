"""Accuracy-versus-eps curves: the worst-case evaluator run once per budget, for one norm at a time."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from ..evaluate import evaluate
from ..threat import ThreatModel
from ._common import accuracy_of


def default_eps_grid(eps: float, n_points: int = 9) -> list[float]:
    """``n_points`` evenly spaced budgets from 0 (clean) to twice ``eps`` (the training or evaluation eps).

    Arguments:
        eps: the reference budget, > 0. n_points: number of grid points, >= 2.
    Returns:
        A list of floats starting at 0.0 and ending at ``2 * eps``.
    """
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"the reference eps must be a finite number > 0 to build a default grid, got {eps!r}; "
                         "pass an explicit eps_grid instead")
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2, got {n_points}")
    return [round(2 * eps * i / (n_points - 1), 12) for i in range(n_points)]


def check_eps_grid(eps_grid: Sequence[float]) -> list[float]:
    """Validate a grid of budgets and return it as sorted, de-duplicated floats."""
    try:
        values = [float(e) for e in eps_grid]
    except (TypeError, ValueError):
        raise ValueError(f"eps_grid must be a sequence of numbers, got {eps_grid!r}") from None
    if not values:
        raise ValueError("eps_grid is empty: pass at least one eps, e.g. [0, 0.05, 0.1]")
    bad = [e for e in values if not math.isfinite(e)]
    if bad:
        raise ValueError(f"eps_grid contains a non-finite value ({bad[0]}): every eps must be a finite number")
    negative = [e for e in values if e < 0]
    if negative:
        raise ValueError(f"eps_grid contains a negative eps ({negative[0]:g}): eps is the radius of the "
                         "perturbation ball and must be >= 0")
    return sorted(set(values))


def robustness_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                     eps_grid: Optional[Sequence[float]] = None, suite: Union[str, Sequence[str]] = "fast", *,
                     n: Optional[int] = None, batch_size: int = 500, seed: int = 0,
                     attack_kwargs: Optional[dict[str, dict[str, Any]]] = None,
                     progress: Optional[Callable[[float, int, int], None]] = None) -> list[dict[str, Any]]:
    """Worst-case robust accuracy at each eps of a grid, with :func:`armor.evaluate` (the results.json ``curve``).

    Every budget is evaluated independently with the same seed, so the curve shows what the attacks find; a
    curve that rises with eps is itself a sign of gradient masking (see :func:`armor.metrics.masking_checks`).
    At eps = 0 no attack runs and the robust accuracy is the clean accuracy.

    Arguments:
        model: returns logits. x, y: inputs in the threat's bounds and labels.
        threat: gives the norm, bounds and constraints; its eps is the reference for the default grid.
        eps_grid: budgets in input units (sorted and de-duplicated); default: 9 points from 0 to 2 * eps.
            A negative or non-finite eps raises ``ValueError``.
        suite: evaluator suite (``"fast"``, ``"standard"`` or attack names). n: evaluate the first n points.
        batch_size, seed, attack_kwargs: passed to :func:`armor.evaluate`.
        progress: called as ``progress(eps, i, len(grid))`` after each budget.
    Returns:
        ``[{"eps", "robust_accuracy", "clean_accuracy", "per_attack", "seconds", "n"}, ...]`` in increasing eps;
        ``per_attack`` maps each attack to its cumulative accuracy at that eps.
    """
    if not isinstance(threat, ThreatModel):
        raise ValueError(f"threat must be an armor.ThreatModel, got {type(threat).__name__}")
    threat.check_inputs(x, y)
    grid = check_eps_grid(default_eps_grid(threat.eps_scalar) if eps_grid is None else eps_grid)
    if n is not None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        x, y = x[:n], y[:n]
    clean = accuracy_of(model, x, y, batch_size)
    curve = []
    for i, eps in enumerate(grid):
        if eps == 0:
            point = {"eps": 0.0, "robust_accuracy": clean, "clean_accuracy": clean, "per_attack": {},
                     "seconds": 0.0, "n": int(x.shape[0])}
        else:
            r = evaluate(model, (x, y), threat.with_eps(eps), suite, batch_size=batch_size, seed=seed,
                         attack_kwargs=attack_kwargs)
            point = {"eps": eps, "robust_accuracy": r.robust_accuracy, "clean_accuracy": r.clean_accuracy,
                     "per_attack": {k: v["cumulative_accuracy"] for k, v in r.per_attack.items()},
                     "seconds": r.seconds, "n": r.n}
        curve.append(point)
        if progress is not None:
            progress(eps, i + 1, len(grid))
    return curve
