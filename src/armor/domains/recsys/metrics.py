"""Ranking metrics under full ranking: HR@K and NDCG@K of each user's held-out item.

Protocol (as APR's evaluation): for user ``u`` with held-out item ``t``, the candidates are every item ``u``
did not interact with in training (``t`` included); ``position`` is the number of other candidates scored
**at least** as high as ``t`` (ties count against it). Then

    HR@K   = 1 if position < K else 0
    NDCG@K = 1 / log2(position + 2) if position < K else 0

and the figures are means over users.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np
import torch

KS = (5, 10, 20)


def positions(scores: torch.Tensor, test_item: torch.Tensor, train_mask: torch.Tensor) -> torch.Tensor:
    """Per user, how many candidates (items not in training, other than the held-out one) score >= it.

    Arguments:
        scores: (n, n_items) scores of n users.
        test_item: (n,) each user's held-out item.
        train_mask: (n, n_items) bool, True where the user interacted in training.
    """
    target = scores.gather(1, test_item[:, None])
    beats = (scores >= target) & ~train_mask
    beats[torch.arange(scores.shape[0]), test_item] = False
    return beats.sum(1)


def hr_ndcg(pos: torch.Tensor | np.ndarray, ks: Iterable[int] = KS) -> dict[str, float]:
    """``{"hr@K": ..., "ndcg@K": ...}`` means over users from their positions."""
    p = torch.as_tensor(pos, dtype=torch.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = p < k
        out[f"hr@{k}"] = float(hit.double().mean())
        out[f"ndcg@{k}"] = float(torch.where(hit, 1.0 / torch.log2(p + 2), torch.zeros_like(p)).mean())
    return out


def per_user(pos: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hit, ndcg) per user at cutoff ``k``."""
    p = pos.double()
    hit = p < k
    return hit, torch.where(hit, 1.0 / torch.log2(p + 2), torch.zeros_like(p))


def all_positions(model: torch.nn.Module, test_item: torch.Tensor, train_mask: torch.Tensor, delta=None,
                  users: Optional[torch.Tensor] = None, chunk: int = 2048) -> torch.Tensor:
    """Positions of every user's (or ``users``') held-out item under the model (with ``delta`` added)."""
    users = torch.arange(train_mask.shape[0]) if users is None else users
    with torch.no_grad():
        U, I = model.final(delta)
        out = []
        for s in range(0, users.numel(), chunk):
            idx = users[s:s + chunk]
            out.append(positions(U[idx] @ I.T, test_item[idx], train_mask[idx]))
    return torch.cat(out)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median and spread (min, max, interquartile range) of one figure over seeds."""
    a = np.asarray(list(values), dtype=np.float64)
    if a.size == 0:
        raise ValueError("no values to summarise")
    q1, q3 = np.percentile(a, [25, 75])
    return {"median": float(np.median(a)), "min": float(a.min()), "max": float(a.max()),
            "iqr": [float(q1), float(q3)], "n": int(a.size), "values": [float(v) for v in a]}


__all__ = ["KS", "all_positions", "hr_ndcg", "per_user", "positions", "summarize"]
