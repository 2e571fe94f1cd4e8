"""Calibration: does a model's confidence match how often it is right, on clean and on attacked inputs?

Conventions (stated once, used everywhere):

* **ECE** is the top-label expected calibration error (Guo et al. 2017) with ``n_bins`` equal-width bins on
  [0, 1] (15 by default); bin ``b`` holds confidences in ``(b / B, (b + 1) / B]``, the first bin also holds 0.
  ``ECE = sum_b (n_b / N) * |accuracy_b - confidence_b|``.
* **NLL** is the mean negative log-likelihood of the true class, in nats (``sklearn.metrics.log_loss``).
* **Brier** is the multiclass Brier score: the squared error between the probability vector and the one-hot
  label, *summed over classes* and averaged over samples, so it lies in [0, 2]. For two classes this is twice
  the usual binary Brier score (``sklearn.metrics.brier_score_loss`` with its default ``scale_by_half``).

Every function takes ``scores`` of shape (N, K): logits by default, or probabilities with
``from_logits=False``. Sums are taken in float64, so batch-wise accumulation (:class:`CalibrationMeter`) gives
the same numbers as one call on the whole set.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..attacks import get_attack
from ..threat import ThreatModel
from ..engine import attack_dataset
from ._common import check_xy, predict_logits

DEFAULT_BINS = 15


def _probs(scores: Any, y: Any, from_logits: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if not torch.is_tensor(scores) or not scores.is_floating_point() or scores.dim() != 2:
        raise ValueError("scores must be a floating-point tensor of shape (N, classes): logits, or probabilities "
                         "with from_logits=False")
    if scores.shape[0] == 0:
        raise ValueError("scores is empty: calibration needs at least one sample")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf values")
    if not torch.is_tensor(y) or y.dtype.is_floating_point or y.dtype == torch.bool or y.dim() != 1:
        raise ValueError("y must be a 1-d integer tensor of class indices (int64)")
    if y.shape[0] != scores.shape[0]:
        raise ValueError(f"y has {y.shape[0]} labels but scores has {scores.shape[0]} rows")
    if y.min() < 0 or y.max() >= scores.shape[1]:
        raise ValueError(f"labels must lie in [0, {scores.shape[1] - 1}] for {scores.shape[1]} classes, "
                         f"got range [{int(y.min())}, {int(y.max())}]")
    s = scores.detach().double()
    if from_logits:
        return torch.softmax(s, dim=1), y.to(s.device)
    sums = s.sum(dim=1)
    if (s < 0).any() or not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        raise ValueError("with from_logits=False, scores must be probabilities (non-negative rows summing to 1); "
                         "pass logits with from_logits=True instead")
    return s / sums[:, None], y.to(s.device)


def _check_bins(n_bins: int) -> None:
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")


def _bin_index(confidence: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin ``b`` holds (b/B, (b+1)/B]; ceil(c * B) - 1 computes it, and 0 joins the first bin."""
    return (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)


def _bin_sums(probs: torch.Tensor, y: torch.Tensor, n_bins: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin (count, sum of confidences, number correct), float64."""
    confidence, pred = probs.max(dim=1)
    b = _bin_index(confidence, n_bins)
    count = torch.zeros(n_bins, dtype=torch.float64, device=probs.device).index_add_(0, b, torch.ones_like(confidence))
    conf_sum = torch.zeros_like(count).index_add_(0, b, confidence)
    correct = torch.zeros_like(count).index_add_(0, b, (pred == y).double())
    return count, conf_sum, correct


def _nll_sum(scores: torch.Tensor, probs: torch.Tensor, y: torch.Tensor, from_logits: bool) -> float:
    if from_logits:
        logp = torch.log_softmax(scores.detach().double().to(y.device), dim=1)
        return float(-logp.gather(1, y[:, None]).sum())
    # Clamp at the smallest positive float64 so that a zero probability gives a large finite NLL, not inf.
    p = probs.gather(1, y[:, None]).clamp_min(torch.finfo(torch.float64).tiny)
    return float(-p.log().sum())


def _brier_sum(probs: torch.Tensor, y: torch.Tensor) -> float:
    onehot = torch.zeros_like(probs).scatter_(1, y[:, None], 1.0)
    return float(((probs - onehot) ** 2).sum())


def _ece_from_sums(count: torch.Tensor, conf_sum: torch.Tensor, correct: torch.Tensor) -> float:
    n = count.sum()
    return float((conf_sum - correct).abs().sum() / n)  # sum_b n_b/N * |acc_b - conf_b|


def _reliability_from_sums(count: torch.Tensor, conf_sum: torch.Tensor, correct: torch.Tensor) -> dict[str, Any]:
    n_bins = count.numel()
    return {
        "bin_lower": [b / n_bins for b in range(n_bins)],
        "bin_upper": [(b + 1) / n_bins for b in range(n_bins)],
        # Empty bins have no confidence or accuracy: None (JSON null), never a made-up number.
        "confidence": [float(c) / k if k > 0 else None for c, k in zip(conf_sum.tolist(), count.tolist())],
        "accuracy": [float(a) / k if k > 0 else None for a, k in zip(correct.tolist(), count.tolist())],
        "count": [int(k) for k in count.tolist()],
    }


def expected_calibration_error(scores: torch.Tensor, y: torch.Tensor, *, n_bins: int = DEFAULT_BINS,
                               from_logits: bool = True) -> float:
    """Top-label expected calibration error with ``n_bins`` equal-width bins.

    Arguments:
        scores: (N, K) logits, or probabilities with ``from_logits=False``. y: (N,) true class indices.
        n_bins: number of equal-width confidence bins on [0, 1] (15 by default).
    Returns:
        ECE in [0, 1]: the count-weighted mean gap between accuracy and mean confidence per bin.
    """
    _check_bins(n_bins)
    probs, y = _probs(scores, y, from_logits)
    return _ece_from_sums(*_bin_sums(probs, y, n_bins))


def negative_log_likelihood(scores: torch.Tensor, y: torch.Tensor, *, from_logits: bool = True) -> float:
    """Mean negative log-likelihood of the true class, in nats (the cross-entropy loss, in float64).

    Arguments:
        scores: (N, K) logits, or probabilities with ``from_logits=False``. y: (N,) true class indices.
    Returns:
        The mean NLL; equals ``sklearn.metrics.log_loss(y, softmax(scores), labels=range(K))``.
    """
    probs, y = _probs(scores, y, from_logits)
    return _nll_sum(scores, probs, y, from_logits) / y.shape[0]


def brier_score(scores: torch.Tensor, y: torch.Tensor, *, from_logits: bool = True) -> float:
    """Multiclass Brier score: squared error to the one-hot label, summed over classes, mean over samples.

    Arguments:
        scores: (N, K) logits, or probabilities with ``from_logits=False``. y: (N,) true class indices.
    Returns:
        A value in [0, 2]; for K = 2 it is twice the binary Brier score of the positive class.
    """
    probs, y = _probs(scores, y, from_logits)
    return _brier_sum(probs, y) / y.shape[0]


def reliability_diagram(scores: torch.Tensor, y: torch.Tensor, *, n_bins: int = DEFAULT_BINS,
                        from_logits: bool = True) -> dict[str, Any]:
    """The data behind a reliability diagram: per-bin mean confidence, accuracy and count.

    Arguments:
        scores: (N, K) logits, or probabilities with ``from_logits=False``. y: (N,) true class indices.
        n_bins: number of equal-width confidence bins on [0, 1].
    Returns:
        ``{"bin_lower", "bin_upper", "confidence", "accuracy", "count"}``, each a list of ``n_bins`` values;
        empty bins have ``None`` confidence and accuracy.
    """
    _check_bins(n_bins)
    probs, y = _probs(scores, y, from_logits)
    return _reliability_from_sums(*_bin_sums(probs, y, n_bins))


def calibration_metrics(scores: torch.Tensor, y: torch.Tensor, *, n_bins: int = DEFAULT_BINS,
                        from_logits: bool = True) -> dict[str, Any]:
    """ECE, NLL, Brier score, accuracy and reliability-diagram data in one pass.

    Arguments:
        scores: (N, K) logits, or probabilities with ``from_logits=False``. y: (N,) true class indices.
        n_bins: number of equal-width confidence bins for ECE and the diagram.
    Returns:
        ``{"ece", "nll", "brier", "accuracy", "mean_confidence", "n", "n_bins", "reliability"}`` (JSON-ready).
    """
    meter = CalibrationMeter(n_bins=n_bins, from_logits=from_logits)
    meter.update(scores, y)
    return meter.compute()


class CalibrationMeter:
    """Accumulates calibration statistics batch by batch; ``compute()`` equals one call on all the data.

    Examples:
        >>> meter = CalibrationMeter()
        >>> for xb, yb in batches:
        ...     meter.update(model(xb), yb)
        >>> meter.compute()["ece"]
    """

    def __init__(self, n_bins: int = DEFAULT_BINS, from_logits: bool = True):
        _check_bins(n_bins)
        self.n_bins, self.from_logits = n_bins, from_logits
        self.reset()

    def reset(self) -> None:
        self.count = torch.zeros(self.n_bins, dtype=torch.float64)
        self.conf_sum = torch.zeros_like(self.count)
        self.correct = torch.zeros_like(self.count)
        self.nll_sum = 0.0
        self.brier_sum = 0.0
        self.n = 0
        self.num_classes: Optional[int] = None

    def update(self, scores: torch.Tensor, y: torch.Tensor) -> None:
        probs, y = _probs(scores, y, self.from_logits)
        if self.num_classes is not None and probs.shape[1] != self.num_classes:
            raise ValueError(f"this meter has seen {self.num_classes} classes, the new batch has {probs.shape[1]}")
        self.num_classes = probs.shape[1]
        count, conf_sum, correct = _bin_sums(probs, y, self.n_bins)
        self.count += count.cpu()
        self.conf_sum += conf_sum.cpu()
        self.correct += correct.cpu()
        self.nll_sum += _nll_sum(scores, probs, y, self.from_logits)
        self.brier_sum += _brier_sum(probs, y)
        self.n += int(y.shape[0])

    def compute(self) -> dict[str, Any]:
        if self.n == 0:
            raise ValueError("no samples seen: call update() with at least one batch before compute()")
        return {
            "ece": _ece_from_sums(self.count, self.conf_sum, self.correct),
            "nll": self.nll_sum / self.n,
            "brier": self.brier_sum / self.n,
            "accuracy": float(self.correct.sum()) / self.n,
            "mean_confidence": float(self.conf_sum.sum()) / self.n,
            "n": self.n,
            "n_bins": self.n_bins,
            "reliability": _reliability_from_sums(self.count, self.conf_sum, self.correct),
        }


def calibration_report(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Optional[ThreatModel] = None,
                       *, x_adv: Optional[torch.Tensor] = None, attack: str = "pgd",
                       attack_kwargs: Optional[dict[str, Any]] = None, n_bins: int = DEFAULT_BINS,
                       batch_size: int = 500, seed: int = 0) -> dict[str, Any]:
    """Calibration of ``model`` on clean inputs and on attacked inputs (the results.json ``calibration`` entry).

    The attacked set is ``x_adv`` when given; otherwise ``attack`` (a registry name, PGD-10 by default) is run
    on every point under ``threat``. Each point keeps the attack's final choice (its first adversarial iterate
    or its highest-loss one), so robust points also count with the confidence the attack left them.

    Arguments:
        model: returns logits. x: inputs (N, ...) in [0, 1]. y: (N,) labels.
        threat: the threat model for the attacked set; leave None (with no ``x_adv``) for clean only.
        x_adv: precomputed adversarial inputs, e.g. ``EvalResult.x_adv`` (which keeps the clean input where
            every attack failed, so robust points then count with their clean confidence). attack: registry name.
        attack_kwargs: overrides for the attack, e.g. ``{"steps": 20}``. n_bins: ECE bins.
        batch_size: points per forward pass and attack call. seed: seeds the attack's generator per batch.
    Returns:
        ``{"clean": calibration_metrics(...), "attacked": calibration_metrics(...) or None, "attack": ...}``.
    """
    check_xy(x, y)
    if x_adv is not None and x_adv.shape != x.shape:
        raise ValueError(f"x_adv has shape {tuple(x_adv.shape)}, x has {tuple(x.shape)}: they must match")
    clean = calibration_metrics(predict_logits(model, x, batch_size).cpu(), y.cpu(), n_bins=n_bins)
    attack_info: Optional[dict[str, Any]] = None
    if x_adv is None and threat is not None:
        x_adv = attack_dataset(model, get_attack(attack, **(attack_kwargs or {})), x, y, threat,
                               batch_size=batch_size, seed=seed, stream=0, name=attack).cpu()
        attack_info = {"name": attack, "kwargs": dict(attack_kwargs or {}), "threat_model": threat.to_dict()}
    elif x_adv is not None:
        attack_info = {"name": "given", "threat_model": None if threat is None else threat.to_dict()}
    attacked = None
    if x_adv is not None:
        attacked = calibration_metrics(predict_logits(model, x_adv, batch_size).cpu(), y.cpu(), n_bins=n_bins)
    return {"clean": clean, "attacked": attacked, "attack": attack_info}
