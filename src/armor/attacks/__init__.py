"""The attack suite: pure functions ``attack(model, x, y, threat, *, ..., generator=None) -> x_adv``.

``ATTACKS`` maps a name to an :class:`AttackSpec` (function, fixed keyword arguments, norms, description);
domains add theirs through :mod:`armor.plugins`, and :func:`all_attacks` is the union. :func:`get_attack` turns
a name into a ready callable. The evaluator, the trainer and the CLI all go through it, so a new attack is one
entry here (or in a domain).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

from ._core import (attack_mode, ce_loss, check_logits, default_generator, dlr_loss, get_loss, is_fooled,
                    loss_and_grad, margin_loss, prepare)
from .cw import cw_l2
from .decision import RaySResult, rays, rays_search
from .fab import fab_t, fab_t_minimal, hyperplane_step
from .gradient import apgd, apgd_t, fgsm, fgsm_t, pgd, top_targets
from .square import square
from ..plugins import contributions

AttackFn = Callable[..., Any]


@dataclass(frozen=True)
class AttackSpec:
    fn: AttackFn
    kwargs: dict[str, Any] = field(default_factory=dict)
    norms: tuple[str, ...] = ("linf", "l2", "l1")
    description: str = ""
    white_box: bool = True


ATTACKS: dict[str, AttackSpec] = {
    "fgsm": AttackSpec(fgsm, {}, description="one steepest-ascent step of size eps (Goodfellow et al. 2015)"),
    "fgsm-t": AttackSpec(fgsm_t, {"n_target_classes": 9},
                         description="targeted FGSM on the logit margin from the clean point, one eps step towards "
                                     "each of the 9 most likely other classes"),
    "pgd": AttackSpec(pgd, {"steps": 10}, description="PGD-10, CE loss, random start (Madry et al. 2018)"),
    "pgd-20": AttackSpec(pgd, {"steps": 20}, description="PGD-20, CE loss, random start"),
    "pgd-margin": AttackSpec(pgd, {"steps": 20, "loss": "margin"}, description="PGD-20 on the C&W margin loss"),
    "apgd-ce": AttackSpec(apgd, {"loss": "ce", "steps": 100}, description="APGD with CE loss, 100 steps (Croce & Hein 2020)"),
    "apgd-dlr": AttackSpec(apgd, {"loss": "dlr", "steps": 100}, description="APGD with the DLR loss, 100 steps"),
    # give_up=8: a point still correct at APGD's step-size checkpoints whose margin is over 8 times what it would
    # lose at its rate since the previous checkpoint (and over a tenth of its margin at the random start) stops
    # there (bench/RESULTS.md "Issue 13, target 1": APGD-T's CPU time -68% on both Fashion-MNIST CNNs, the same
    # points broken). apgd-t-full and attack_kwargs={"apgd-t": {"give_up": None}} spend the whole budget.
    "apgd-t": AttackSpec(apgd_t, {"steps": 100, "n_target_classes": 9, "give_up": 8.0},
                         description="targeted APGD-DLR over the 9 most likely other classes; gives up on a point "
                                     "whose margin shows no progress (give_up=8)"),
    "apgd-t-full": AttackSpec(apgd_t, {"steps": 100, "n_target_classes": 9},
                              description="targeted APGD-DLR over the 9 most likely other classes, the whole budget "
                                          "on every point (AutoAttack+)"),
    "apgd-ce-x5": AttackSpec(apgd, {"loss": "ce", "steps": 100, "restarts": 5},
                             description="APGD-CE, 100 steps, 5 random restarts (AutoAttack+)"),
    "apgd-dlr-x5": AttackSpec(apgd, {"loss": "dlr", "steps": 100, "restarts": 5},
                              description="APGD-DLR, 100 steps, 5 random restarts (AutoAttack+)"),
    "fab-t": AttackSpec(fab_t, {"steps": 100, "n_target_classes": 9},
                        description="targeted FAB over the 9 most likely other classes, 100 steps, from the clean "
                                    "point (Croce & Hein 2020)"),
    "fab-t-10": AttackSpec(fab_t, {"steps": 10, "n_target_classes": 9},
                           description="FAB-T with 10 steps per target: the clean-point start of FAB-T at a tenth "
                                       "of its cost"),
    "cw-l2": AttackSpec(cw_l2, {}, description="Carlini & Wagner L2, binary search over c, then projected"),
    # give_up=4: a point still correct at 5/10/20/40/80% of the budget whose margin is over 4x the progress it
    # would make at its recent rate stops there (bench/RESULTS.md "Attacks", issue 13 target 1: Square's time
    # in the standard suite 289 s -> 82 s on 1000 Fashion-MNIST points, every point broken as before plus one).
    # square-x5 and square-1k, and attack_kwargs={"square": {"give_up": None}}, spend the whole budget.
    "square": AttackSpec(square, {"n_queries": 5000, "give_up": 4.0}, ("linf", "l2"),
                         "Square Attack, score-based black box, 5000 queries (Andriushchenko et al. 2020); gives up "
                         "on a point whose margin shows no progress (give_up=4)", False),
    "square-1k": AttackSpec(square, {"n_queries": 1000}, ("linf", "l2"), "Square Attack with 1000 queries", False),
    "square-x5": AttackSpec(square, {"n_queries": 5000, "restarts": 5}, ("linf", "l2"),
                            "Square Attack, 5000 queries, 5 restarts (AutoAttack+)", False),
    "rays": AttackSpec(rays, {"n_queries": 10000}, ("linf",),
                       "RayS, decision-based (hard-label) black box: uses only the predicted labels, 10000 queries "
                       "(Chen & Gu 2020); for models that expose no scores: --suite rays", False),
    "rays-1k": AttackSpec(rays, {"n_queries": 1000}, ("linf",), "RayS with 1000 label queries", False),
}


def all_attacks() -> dict[str, AttackSpec]:
    """Every attack: armor's own (:data:`ATTACKS`) and those the domains contribute (:mod:`armor.plugins`)."""
    return contributions("attacks", ATTACKS)


def attack_spec(name: str) -> AttackSpec:
    """The :class:`AttackSpec` registered as ``name``; ``ValueError`` lists the known ones."""
    known = all_attacks()
    if name not in known:
        raise ValueError(f"unknown attack {name!r}: choose one of {', '.join(sorted(known))} "
                         f"(see `armor list attacks`)")
    return known[name]


def get_attack(name: str, **overrides: Any) -> AttackFn:
    """The attack called ``name``, with its registered defaults and any ``overrides`` bound."""
    spec = attack_spec(name)
    return functools.partial(spec.fn, **{**spec.kwargs, **overrides})


__all__ = ["ATTACKS", "AttackSpec", "all_attacks", "apgd", "apgd_t", "attack_mode", "attack_spec", "ce_loss",
           "check_logits", "cw_l2", "RaySResult", "rays", "rays_search", "default_generator", "dlr_loss", "fab_t", "fab_t_minimal", "fgsm", "fgsm_t", "get_attack", "get_loss", "is_fooled",
           "loss_and_grad", "hyperplane_step", "margin_loss", "pgd", "prepare", "square", "top_targets"]
