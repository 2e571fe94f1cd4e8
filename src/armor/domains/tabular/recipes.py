"""Adversarial training against constrained PGD: PGD-AT whose inner attack switches categories and moves
integers by whole units, as the evaluation's attacker does.

The plain ``pgd-at`` recipe also works with a tabular threat (its projection repairs every iterate), but its
attack cannot switch a category or move an integer: on a table with categorical or integer features it
trains against a weaker attacker than the one it is evaluated against.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...threat import ThreatModel
from ...training.recipes import PGDAT
from .attacks import constrained_pgd

if TYPE_CHECKING:  # pragma: no cover
    from ...training.trainer import StepContext


class ConstrainedPGDAT(PGDAT):
    """PGD-AT against constrained PGD. Its parameters are pgd-at's declared ones (adv_ratio, steps, step_size,
    random_start), inherited with their defaults: ``armor train --recipe cpgd-at --steps 20`` and a config's
    ``steps = 20`` reach it like any recipe's options."""

    name = "cpgd-at"
    description = ("PGD-AT with constrained PGD as the attack (tabular threats): categories switch and integers "
                   "move by whole units; adv_ratio mixes clean and adversarial CE like pgd-at")

    def _pgd(self, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, ctx: "StepContext") -> torch.Tensor:
        # Training maximises the loss on every point, so no early stop; the categorical polish only runs on
        # points the steps did not fool.
        return constrained_pgd(ctx.attack_model, x, y, threat, steps=self.steps, step_size=self.step_size,
                               random_start=self.random_start, early_stop=False, generator=ctx.generator)


__all__ = ["ConstrainedPGDAT"]
