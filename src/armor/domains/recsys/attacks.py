"""Attacks on a recommender's embeddings, within an :class:`~.threat.EmbeddingThreat`.

Every attack returns ``delta = (delta_users, delta_items)``, one row per ego embedding, inside the threat's
per-row L2 balls (checked by :func:`run_attack`). Untargeted attacks lower the ranking metrics:

============  ===============================================================================================
``random``    each row moved by its full radius in a uniformly random direction (APR's "random" noise)
``fgsm``      one step: radius x the row's L2-normalised gradient of the training BPR loss (APR's adversary)
``pgd``       ``steps`` normalised-gradient steps on the training BPR loss, projected onto the balls
``pgd-rank``  PGD on a smooth count of the items that outrank each user's held-out item: an oracle attacker who
              knows the held-out interactions (reported apart from the worst case: it bounds the damage)
============  ===============================================================================================

:func:`promote_item` is the targeted attack: it moves one item's embedding (within its radius) to raise that
item in every user's ranking, and reports the rank shift.

The model's parameters are never changed, and their ``.grad`` is left untouched (gradients are taken with
``torch.autograd.grad`` with respect to ``delta`` only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import positions
from .threat import EmbeddingThreat

Delta = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True, eq=False)
class Context:
    """What an attack may use: the training interactions, the training mask and the held-out items."""

    train_user: torch.Tensor
    train_item: torch.Tensor
    train_mask: torch.Tensor
    test_item: torch.Tensor

    @classmethod
    def from_split(cls, split: Any) -> "Context":
        return cls(torch.from_numpy(split.train_user), torch.from_numpy(split.train_item), split.train_matrix(),
                   torch.from_numpy(split.test_item))


# ============================================================================================ objectives
def bpr_objective(ctx: Context, generator: torch.Generator) -> Callable[[Any, Delta], torch.Tensor]:
    """The training BPR loss (summed) over every training pair with one negative each, drawn once."""
    from .train import sample_negatives

    neg = sample_negatives(ctx.train_user, ctx.train_mask, generator)

    def loss(model: Any, delta: Delta) -> torch.Tensor:
        U, I = model.final(delta)
        u = U[ctx.train_user]
        return F.softplus(-((u * I[ctx.train_item]).sum(-1) - (u * I[neg]).sum(-1))).sum()

    return loss


def rank_objective(ctx: Context, generator: Optional[torch.Generator] = None) -> Callable[[Any, Delta], torch.Tensor]:
    """``sum_u log(1 + sum_j sigmoid(s_uj - s_ut))`` over candidates ``j`` (not in training, not ``t``): a smooth
    count of the items outranking each user's held-out item ``t``; the log weighs users ranked high most."""
    rows = torch.arange(ctx.test_item.numel())
    other = ~ctx.train_mask
    other[rows, ctx.test_item] = False

    def loss(model: Any, delta: Delta) -> torch.Tensor:
        U, I = model.final(delta)
        s = U @ I.T
        t = s[rows, ctx.test_item][:, None]
        return torch.log1p((torch.sigmoid(s - t) * other).sum(1)).sum()

    return loss


OBJECTIVES = {"bpr": bpr_objective, "rank": rank_objective}


# ============================================================================================ attacks
def _zeros(model: Any) -> Delta:
    return (torch.zeros_like(model.user_emb, requires_grad=False), torch.zeros_like(model.item_emb))


def _grad(model: Any, loss_fn: Callable[[Any, Delta], torch.Tensor], delta: Delta) -> Delta:
    d = tuple(x.detach().requires_grad_(True) for x in delta)
    loss = loss_fn(model, d)
    return torch.autograd.grad(loss, d)  # type: ignore[return-value]


def random_attack(model: Any, threat: EmbeddingThreat, ctx: Context, *, generator: torch.Generator, **_: Any) -> Delta:
    """Every row moved by its full radius in a uniformly random direction."""
    radii = threat.radii(model)
    out = []
    for table, r in zip((model.user_emb, model.item_emb), radii):
        direction = torch.randn(table.shape, generator=generator, dtype=table.dtype)
        out.append(F.normalize(direction, dim=1) * r[:, None])
    return out[0], out[1]


def fgsm_attack(model: Any, threat: EmbeddingThreat, ctx: Context, *, generator: torch.Generator,
                objective: str = "bpr", **_: Any) -> Delta:
    """One step of each row's full radius along its L2-normalised gradient (APR's adversary)."""
    radii = threat.radii(model)
    g = _grad(model, OBJECTIVES[objective](ctx, generator), _zeros(model))
    return tuple(F.normalize(gi, dim=1) * r[:, None] for gi, r in zip(g, radii))  # type: ignore[return-value]


def pgd_attack(model: Any, threat: EmbeddingThreat, ctx: Context, *, generator: torch.Generator,
               objective: str = "bpr", steps: int = 10, step_size: float = 0.25, **_: Any) -> Delta:
    """``steps`` steps of ``step_size`` x radius along each row's normalised gradient, projected each time."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    radii = threat.radii(model)
    loss_fn = OBJECTIVES[objective](ctx, generator)
    delta = _zeros(model)
    for _ in range(steps):
        g = _grad(model, loss_fn, delta)
        delta = threat.project(tuple(d + step_size * F.normalize(gi, dim=1) * r[:, None]
                                     for d, gi, r in zip(delta, g, radii)), radii)  # type: ignore[arg-type]
    return delta


@dataclass(frozen=True)
class RecAttack:
    fn: Callable[..., Delta]
    kwargs: dict
    description: str


ATTACKS = {
    "random": RecAttack(random_attack, {}, "random direction, full radius per row"),
    "fgsm": RecAttack(fgsm_attack, {"objective": "bpr"}, "one normalised-gradient step on the training BPR loss (APR)"),
    "pgd": RecAttack(pgd_attack, {"objective": "bpr", "steps": 10}, "10 projected steps on the training BPR loss"),
    "pgd-rank": RecAttack(pgd_attack, {"objective": "rank", "steps": 10},
                          "10 projected steps on a smooth rank of the held-out items (knows them)"),
}
#: The worst case is over attacks that need only what a model owner must assume an attacker has (the model and
#: its training data); ``pgd-rank`` also knows the held-out interactions, so it is reported apart, as an oracle.
DEFAULT_SUITE = ("random", "fgsm", "pgd")
ORACLE = ("pgd-rank",)


def run_attack(name: str, model: Any, threat: EmbeddingThreat, ctx: Context, *, seed: int = 0,
               **options: Any) -> tuple[Delta, float]:
    """``(delta, seconds)`` of attack ``name``; the perturbation is checked to lie within the budget."""
    from ...training.trainer import derive_seed

    if name not in ATTACKS:
        raise ValueError(f"unknown recsys attack {name!r}: choose from {', '.join(ATTACKS)}")
    spec = ATTACKS[name]
    gen = torch.Generator().manual_seed(derive_seed(seed, "recsys", "attack", name))
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    t0 = time.perf_counter()
    try:
        delta = spec.fn(model, threat, ctx, generator=gen, **{**spec.kwargs, **options})
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
    seconds = time.perf_counter() - t0
    delta = (delta[0].detach(), delta[1].detach())
    if not threat.contains(delta, threat.radii(model)):
        raise AssertionError(f"attack {name!r} left the threat's budget (a bug in the attack)")
    return delta, seconds


# ============================================================================================ promotion
def promote_item(model: Any, threat: EmbeddingThreat, ctx: Context, target: int, *, steps: int = 20,
                 step_size: float = 0.1, k: int = 10) -> dict[str, Any]:
    """Raise item ``target`` in every user's ranking by moving its embedding only (within its radius).

    The objective is ``sum_u log sigmoid(s_ut - s_u(k))`` with ``s_u(k)`` the user's k-th best score among the
    other candidates (recomputed at every step): push the target past each user's top-k. Users who
    interacted with the target in training are left out. Returns positions before and after (how many
    candidates outrank the target) and the share of users with the target in their top ``k``.
    """
    n_items = model.item_emb.shape[0]
    if not 0 <= int(target) < n_items:
        raise ValueError(f"target item {target} is out of range [0, {n_items})")
    users = (~ctx.train_mask[:, target]).nonzero().squeeze(1)
    tgt = torch.full((users.numel(),), int(target), dtype=torch.long)
    mask = ctx.train_mask[users]
    radius = threat.radii(model)[1][target]
    if threat.target == "users":
        raise ValueError("promote_item moves the target item's embedding: use a threat with target 'both' or 'items'")
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            before = positions(model.score_all(users), tgt, mask)
        row = torch.zeros(model.item_emb.shape[1])
        others = mask.clone()
        others[:, target] = True
        for _ in range(steps):
            r = row.detach().requires_grad_(True)
            di = torch.zeros_like(model.item_emb).index_put((torch.tensor([int(target)]),), r[None])
            s = model.score_all(users, (torch.zeros_like(model.user_emb), di))
            kth = s.detach().masked_fill(others, float("-inf")).topk(k, dim=1).values[:, -1]
            loss = F.logsigmoid(s[:, target] - kth).sum()
            (g,) = torch.autograd.grad(loss, r)
            row = row.detach() + step_size * radius * F.normalize(g, dim=0)
            row = row * torch.clamp(radius / row.norm().clamp_min(1e-30), max=1.0)
        with torch.no_grad():
            di = torch.zeros_like(model.item_emb)
            di[target] = row
            after = positions(model.score_all(users, (torch.zeros_like(model.user_emb), di)), tgt, mask)
    finally:
        for p, rq in zip(model.parameters(), requires):
            p.requires_grad_(rq)
    if float(row.norm()) > float(radius) * (1 + 1e-5) + 1e-7:
        raise AssertionError("promote_item left the budget (a bug)")
    return {"target": int(target), "users": int(users.numel()), "radius": float(radius),
            "position_before": _stats(before), "position_after": _stats(after),
            f"top{k}_before": float((before < k).double().mean()), f"top{k}_after": float((after < k).double().mean()),
            "median_rank_shift": float((before - after).double().median())}


def _stats(pos: torch.Tensor) -> dict[str, float]:
    p = pos.double()
    return {"mean": float(p.mean()), "median": float(p.median())}


def promotion_targets(ctx: Context, n: int, seed: int) -> list[int]:
    """``n`` target items drawn (seeded) from the less popular half of the items with training interactions:
    the items a seller would want promoted."""
    counts = np.bincount(ctx.train_item.numpy(), minlength=ctx.train_mask.shape[1])
    seen = np.flatnonzero(counts > 0)
    order = seen[np.argsort(counts[seen], kind="stable")]
    pool = order[: max(1, len(order) // 2)]
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.choice(pool, size=min(n, len(pool)), replace=False)]


def worst_case(metrics_by_attack: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The strongest single attack: per metric, the lowest value over the attacks, and which attack it was.

    An embedding attack is one perturbation of the whole system that every user then sees, so the worst case
    is the attack that hurts most, not a per-user union of different perturbations (which no attacker could
    apply at once, and which a random perturbation's reshuffling of near-ties alone drives towards zero)."""
    if not metrics_by_attack:
        raise ValueError("no attacks to take the worst case over")
    keys = [k for k in next(iter(metrics_by_attack.values())) if k.startswith(("hr@", "ndcg@"))]
    out: dict[str, Any] = {}
    for key in keys:
        name = min(metrics_by_attack, key=lambda a: metrics_by_attack[a][key])
        out[key] = metrics_by_attack[name][key]
        out.setdefault("attack", {})[key] = name
    return out


__all__ = ["ATTACKS", "Context", "DEFAULT_SUITE", "OBJECTIVES", "ORACLE", "RecAttack", "bpr_objective", "fgsm_attack",
           "pgd_attack", "promote_item", "promotion_targets", "random_attack", "rank_objective", "run_attack",
           "worst_case"]
