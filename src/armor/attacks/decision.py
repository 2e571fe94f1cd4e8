"""Decision-based (hard-label) black-box attacks: they see only the model's predicted label, never a score.

RayS (Chen & Gu, KDD 2020) for linf: the adversarial point is sought along rays ``x + d * s / ||s||_2`` with
``s`` a sign vector, so the search is over directions only. For each direction the distance to the decision
boundary along the ray is found by a binary search on the label; a direction is kept when its boundary is
nearer. Directions are refined hierarchically: the sign of the whole input is flipped, then of each half, each
quarter, ... (each block once per level), keeping a flip only if it brings the boundary nearer. It is
deterministic (no random numbers), so the same points give the same result whatever the batch.

For a robust accuracy the search stops, per point, as soon as its boundary lies inside the eps-ball (the paper's
early stopping), and a point that is not fooled within the budget is returned inside the ball.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..threat import Norm, ThreatModel
from ._core import attack_mode, check_logits, prepare


@dataclass
class RaySResult:
    """What :func:`rays_search` found, per point: the nearest adversarial point on a ray (``x_best``; the input's
    opposite corner when none was found), its linf distance (``inf`` when none), and the queries spent."""

    x_best: torch.Tensor
    distance: torch.Tensor
    queries: torch.Tensor


def _labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return logits.argmax(1)


def rays_search(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                n_queries: int = 10000, tol: float = 1e-3, stop_inside: bool = True) -> RaySResult:
    """The RayS search on a batch, with the paper's defaults (tolerance ``tol`` on the ray length in l2 units).

    ``stop_inside``: stop a point's search once its adversarial point lies inside the threat's eps-ball (the
    robust-accuracy mode); ``False`` runs every point to its budget (the decision-boundary distance of the
    paper's ADBD figure). A point is
    searched while it has queries left, so its last binary search may end a few queries past ``n_queries``,
    as in the reference implementation.
    """
    prepare(model, x, y, threat)
    if threat.norm is not Norm.LINF:
        raise ValueError(f"rays searches sign directions, an linf attack; it does not support {threat.norm.value} "
                         "(use square or apgd for l2)")
    if threat.constraints is not None:
        raise ValueError("rays does not support domain constraints: its rays leave the constrained set")
    if n_queries < 1 or not tol > 0:
        raise ValueError(f"n_queries must be >= 1 and tol > 0, got {n_queries} and {tol}")
    n, shape = x.shape[0], x.shape
    dim = x[0].numel()
    device = x.device
    view = (n,) + (1,) * (x.dim() - 1)

    with attack_mode(model), torch.no_grad():
        check_logits(model(x[:1]), y[:1])
        queries = torch.zeros(n, dtype=torch.long, device=device)
        sign = torch.ones(n, dim, dtype=x.dtype, device=device)
        d_best = torch.full((n,), math.inf, dtype=x.dtype, device=device)
        unit_len = math.sqrt(dim)  # ||s||_2 of any sign vector
        lo, hi = (torch.as_tensor(b, dtype=x.dtype, device=device) for b in threat.bounds)
        span = float(hi.max() - lo.min())  # the whole box, from any corner
        if not math.isfinite(span):
            raise ValueError("rays needs finite bounds (its rays run to the corners of the box): set the threat's "
                             "bounds")
        max_len = torch.full((n,), unit_len * span, dtype=x.dtype, device=device)

        def point(idx: torch.Tensor, s: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
            ray = (s / unit_len).view((idx.numel(),) + shape[1:])
            return threat.clamp_bounds(x[idx] + d.view((idx.numel(),) + view[1:]) * ray)

        def fooled(idx: torch.Tensor, s: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
            queries[idx] += 1
            return _labels(model, point(idx, s, d)) != y[idx]

        def inside(idx: torch.Tensor) -> torch.Tensor:  # exactly: the projection leaves the point where it is
            if not stop_inside:
                return torch.zeros(idx.numel(), dtype=torch.bool, device=device)
            return (threat.project(x_best[idx], x[idx]) == x_best[idx]).flatten(1).all(1)

        everyone = torch.arange(n, device=device)
        x_best = point(everyone, sign, d_best)
        distance = torch.full((n,), math.inf, dtype=x.dtype, device=device)
        stopped = inside(everyone)  # updated when a point's best moves: the only time it can change
        level, block = 0, 0
        for _ in range(n_queries):
            idx = ((queries < n_queries) & ~stopped).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            size = math.ceil(dim / 2 ** level)
            start, end = block * size, min(dim, (block + 1) * size)
            attempt = sign[idx].clone()
            attempt[:, start:end] *= -1
            # the boundary on the new ray, if it is nearer than the best so far: first a query at that distance
            near = fooled(idx, attempt, d_best[idx])
            search, s_search = idx[near], attempt[near]
            d_lo = torch.zeros(search.numel(), dtype=x.dtype, device=device)
            d_hi = torch.minimum(d_best[search], max_len[search])
            todo = torch.arange(search.numel(), device=device)
            while todo.numel():
                mid = (d_lo[todo] + d_hi[todo]) / 2
                hit = fooled(search[todo], s_search[todo], mid)
                d_hi[todo[hit]] = mid[hit]
                d_lo[todo[~hit]] = mid[~hit]
                todo = todo[(d_hi[todo] - d_lo[todo]) > tol]
            better = d_hi < d_best[search]
            won, s_won, d_won = search[better], s_search[better], d_hi[better]
            if won.numel():
                d_best[won] = d_won
                sign[won] = s_won
                x_best[won] = point(won, s_won, d_won)
                distance[won] = (x_best[won] - x[won]).flatten(1).abs().amax(1)
                stopped[won] = inside(won)
            block += 1
            if block == 2 ** level or end == dim:
                level, block = level + 1, 0
    return RaySResult(x_best.detach(), distance, queries)


def rays(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *, n_queries: int = 10000,
         tol: float = 1e-3, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """RayS (Chen & Gu 2020), the hard-label linf attack: only the model's predicted labels are used.

    Arguments:
        n_queries: label queries per point (10000 in the paper). tol: binary-search tolerance on the ray length.
        generator: unused (RayS is deterministic); accepted like every attack's.
    Returns:
        ``x_adv`` inside the threat model: the nearest adversarial point found on a ray if it lies in the
        eps-ball, else the best ray's point at distance eps (not adversarial).
    """
    found = rays_search(model, x, y, threat, n_queries=n_queries, tol=tol, stop_inside=True)
    x_adv = threat.project(found.x_best, x)
    return x_adv.detach()


__all__ = ["RaySResult", "rays", "rays_search"]
