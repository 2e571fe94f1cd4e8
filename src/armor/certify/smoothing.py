"""Randomized smoothing (Cohen, Rosenfeld and Kolter, ICML 2019): a certified l2 radius for the smoothed
classifier ``g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c)``.

The procedures are the paper's, step for step:

* ``PREDICT`` (:func:`smoothed_predict`): draw ``n`` noisy copies, count the two most frequent classes ``nA``,
  ``nB``; return the top class if the two-sided binomial test of ``nA`` out of ``nA + nB`` at 1/2 has p-value
  <= ``alpha``, else abstain. It returns a wrong class with probability at most ``alpha``.
* ``CERTIFY`` (:func:`smoothed_certify`): guess the top class ``cA`` from ``n0`` samples, then count ``cA`` in
  ``n`` fresh samples; ``pA`` is the one-sided ``1 - alpha`` Clopper-Pearson lower bound of that proportion; if
  ``pA < 1/2`` abstain, else certify radius ``sigma * Phi^-1(pA)`` (the paper's ``sigma/2 (Phi^-1(pA) -
  Phi^-1(pB))`` with ``pB = 1 - pA``). With probability at least ``1 - alpha`` over the sampling, ``g``
  classifies every point within that l2 radius as ``cA``.

The certificate is about ``g``, not about the model ``f`` itself: it bounds the robust accuracy of the smoothed
classifier. The paper's settings are ``n0 = 100``, ``n = 100000``, ``alpha = 0.001``; they are the defaults.
Noise is added in input units and not clipped to the data bounds (as in the paper).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from ..attacks import attack_mode
from ..engine import batch_seed, model_device

ABSTAIN = -1


def _scipy():
    try:
        from scipy import stats
    except ImportError:  # pragma: no cover - scipy is a dependency of armor
        raise ImportError("randomized smoothing needs scipy: pip install scipy") from None
    return stats


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided ``1 - alpha`` Clopper-Pearson lower confidence bound of a proportion ``k / n``
    (``Beta(alpha; k, n - k + 1)``; 0 when ``k = 0``)."""
    if not 0 <= k <= n or n < 1:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    return 0.0 if k == 0 else float(_scipy().beta.ppf(alpha, k, n - k + 1))


def certified_radius(count: int, n: int, sigma: float, alpha: float) -> float:
    """The l2 radius CERTIFY gives for ``count`` hits of the guessed class in ``n`` samples; ``-1.0`` (abstain)
    when the lower bound of its probability is below 1/2."""
    p_lower = clopper_pearson_lower(count, n, alpha)
    if p_lower < 0.5:
        return -1.0
    return float(sigma * _scipy().norm.ppf(p_lower))


def _check(sigma: float, alpha: float, **counts: int) -> None:
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a number > 0 (the noise's standard deviation in input units), got {sigma!r}")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1) (the failure probability; 0.001 in Cohen et al.), got {alpha!r}")
    for name, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive number of noise samples, got {v!r}")


def sample_counts(model: nn.Module, x: torch.Tensor, sigma: float, n: int, *, batch_size: int = 1000,
                  seed: int = 0, stream: int = 0) -> torch.Tensor:
    """How often the model predicts each class on ``n`` Gaussian copies of each point: (points, classes) int64.

    Point ``i`` draws its noise from its own generator (``armor.engine.batch_seed(seed, stream, i)``), so a
    point's counts do not depend on the batch it was in.
    """
    device = model_device(model, x.device)
    out = []
    with attack_mode(model), torch.no_grad():
        for i in range(len(x)):
            gen = torch.Generator(device=device).manual_seed(batch_seed(seed, stream, i))
            xi = x[i:i + 1].to(device)
            counts: Optional[torch.Tensor] = None
            left = n
            while left > 0:
                m = min(batch_size, left)
                noise = torch.randn((m,) + tuple(xi.shape[1:]), generator=gen, device=device, dtype=xi.dtype)
                logits = model(xi + sigma * noise)
                c = torch.bincount(logits.argmax(1), minlength=logits.shape[1])
                counts = c if counts is None else counts + c
                left -= m
            out.append(counts.cpu())
    return torch.stack(out) if out else torch.zeros(0, 0, dtype=torch.long)


def smoothed_predict(model: nn.Module, x: torch.Tensor, sigma: float, *, n: int = 100, alpha: float = 0.001,
                     batch_size: int = 1000, seed: int = 0) -> torch.Tensor:
    """Cohen et al.'s PREDICT: the smoothed classifier's class for each point, or :data:`ABSTAIN` (-1)."""
    _check(sigma, alpha, n=n)
    counts = sample_counts(model, x, sigma, n, batch_size=batch_size, seed=seed, stream=2)
    stats = _scipy()
    out = torch.full((len(x),), ABSTAIN, dtype=torch.long)
    for i, c in enumerate(counts):
        top2 = c.topk(2)
        n_a, n_b = int(top2.values[0]), int(top2.values[1])
        if stats.binomtest(n_a, n_a + n_b, 0.5).pvalue <= alpha:
            out[i] = int(top2.indices[0])
    return out


@dataclass
class SmoothingCertificate:
    """What :func:`smoothed_certify` found. ``prediction``: (points,) class or -1 (abstain); ``radius``: (points,)
    certified l2 radius (-1 where it abstained); ``counts``: hits of the predicted class in the ``n`` samples."""

    prediction: torch.Tensor
    radius: torch.Tensor
    counts: torch.Tensor
    sigma: float
    n0: int
    n: int
    alpha: float
    seconds: float

    def certified(self, y: torch.Tensor, radius: float) -> torch.Tensor:
        """(points,) bool: predicted ``y`` with a certified radius of at least ``radius``."""
        return (self.prediction == y.cpu()) & (self.radius >= radius)

    def accuracy_at(self, y: torch.Tensor, radii: Sequence[float]) -> list[dict[str, float]]:
        """Certified accuracy of the smoothed classifier against each l2 radius: ``[{radius, certified_accuracy}]``."""
        return [{"radius": float(r), "certified_accuracy": float(self.certified(y, r).float().mean())} for r in radii]


def smoothed_certify(model: nn.Module, x: torch.Tensor, sigma: float, *, n0: int = 100, n: int = 100_000,
                     alpha: float = 0.001, batch_size: int = 1000, seed: int = 0) -> SmoothingCertificate:
    """Cohen et al.'s CERTIFY for each point of ``x``: the class and l2 radius the smoothed classifier holds with
    probability at least ``1 - alpha`` (defaults: the paper's n0 = 100, n = 100000, alpha = 0.001)."""
    _check(sigma, alpha, n0=n0, n=n)
    t0 = time.perf_counter()
    guess = sample_counts(model, x, sigma, n0, batch_size=batch_size, seed=seed, stream=0).argmax(1)
    counts = sample_counts(model, x, sigma, n, batch_size=batch_size, seed=seed, stream=1)
    hits = counts.gather(1, guess[:, None]).squeeze(1) if len(x) else torch.zeros(0, dtype=torch.long)
    radius = torch.tensor([certified_radius(int(k), n, sigma, alpha) for k in hits], dtype=torch.float64)
    prediction = torch.where(radius >= 0, guess, torch.full_like(guess, ABSTAIN))
    return SmoothingCertificate(prediction, radius, hits, float(sigma), n0, n, float(alpha),
                                round(time.perf_counter() - t0, 4))
