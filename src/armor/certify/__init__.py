"""Certified lower bounds on robust accuracy, to put next to the attacked upper bound.

An attack shows that a point *can* be broken; a certificate proves that it *cannot*. Between the two lies the
true robust accuracy: ``certified <= true <= attacked``, and the gap says how far the evaluation can be trusted.

* Bound propagation (:func:`certify`, :func:`output_bounds`, :func:`margin_lower_bounds`): IBP, CROWN-IBP and
  CROWN for models made of Linear, Conv2d, ReLU, Flatten and armor's Normalize (armor's ``mlp`` and
  ``small-cnn``), under linf, l2 and l1 threats. Other layers are refused with ``ValueError``; a bound is never
  returned for a function other than the one the model computes. The certificate is about the model itself.
* Randomized smoothing (:func:`smoothed_certify`, :func:`smoothed_predict`): Cohen et al. 2019, for any model,
  certifying the *smoothed* classifier in l2.

    >>> cert = armor.certify.certify(model, x, y, armor.ThreatModel("linf", 0.1), method="crown")
    >>> cert.accuracy            # a lower bound on the model's robust accuracy on (x, y)
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..threat import Norm, ThreatModel
from .bounds import (METHODS, Certificate, certify, check_method, margin_lower_bounds, output_bounds)
from .network import SUPPORTED, chain
from .smoothing import (ABSTAIN, SmoothingCertificate, certified_radius, clopper_pearson_lower, sample_counts,
                        smoothed_certify, smoothed_predict)


def smoothing_radius(threat: ThreatModel, dim: int) -> float:
    """The l2 radius a smoothing certificate needs to cover ``threat``'s ball in ``dim`` input dimensions:
    eps for l2 and l1 (an l1 ball lies inside the l2 ball of the same radius), ``eps * sqrt(dim)`` for linf."""
    eps = threat.eps_scalar
    return eps * math.sqrt(dim) if threat.norm is Norm.LINF else eps


def bound_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, eps_grid: Sequence[float],
                method: str = "crown", *, batch_size: int = 100) -> list[dict[str, float]]:
    """Certified accuracy by bound propagation at each eps of ``eps_grid``: ``[{eps, certified_accuracy}]``.

    The budgets are visited in increasing order and each one tries only the points certified at the previous
    one: a point whose smaller ball could not be certified is counted uncertified at the larger ones, where
    the bounds only get looser, and stops costing CROWN passes. Every value is a sound lower bound (it may sit a
    little below what :func:`certify` alone finds at that eps).
    """
    ops = chain(model, x.shape[1:])
    found: dict[float, float] = {}
    alive = None
    for eps in sorted({float(e) for e in eps_grid}):
        cert = certify(model, x, y, threat.with_eps(eps), method, batch_size=batch_size, ops=ops, only=alive)
        alive = cert.certified
        found[eps] = cert.accuracy
    return [{"eps": float(e), "certified_accuracy": found[float(e)]} for e in eps_grid]


__all__ = ["ABSTAIN", "Certificate", "METHODS", "SUPPORTED", "SmoothingCertificate", "bound_curve", "certified_radius",
           "certify", "chain", "check_method", "clopper_pearson_lower", "margin_lower_bounds", "output_bounds",
           "sample_counts", "smoothed_certify", "smoothed_predict", "smoothing_radius"]
