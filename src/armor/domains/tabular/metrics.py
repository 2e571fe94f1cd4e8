"""What a tabular evaluation reports: constrained robust accuracy, recall of the positive class (fraud,
malignancy, bad credit) under a one-directional attack, and which features the attacks moved.

The worst case over attacks is :func:`armor.evaluate`'s bookkeeping; these functions choose the points, the
attacks and the threat, and summarise.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from ...engine import predict_logits
from ...evaluate import EvalResult, evaluate
from ...threat import ThreatModel
from .constraints import TabularConstraints, relaxed_threat
from .schema import Schema

CONSTRAINED_SUITE = ("cpgd", "apgd-ce", "csearch")
UNCONSTRAINED_SUITE = ("apgd-ce", "pgd-margin")  # DLR needs >= 3 classes; these tables are binary


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    if x.shape[0] == 0:
        return torch.empty(0, dtype=torch.long)
    return predict_logits(model, x, batch_size).argmax(1).cpu()


def constrained_robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                                attacks: Sequence[str] = CONSTRAINED_SUITE, *, seed: int = 0,
                                attack_kwargs: Optional[dict[str, dict[str, Any]]] = None,
                                batch_size: int = 500) -> EvalResult:
    """Per-sample worst case over ``attacks`` under a tabular threat (every example satisfies the schema).

    Arguments:
        model: takes raw features. x, y: clean rows and labels. threat: from ``threat_from_schema``.
        attacks: attack names. seed, attack_kwargs,
            batch_size: as in :func:`armor.evaluate`.
    Returns:
        The :class:`armor.EvalResult` (``keep_adv``: ``x_adv`` holds the successful examples).
    """
    if not isinstance(threat.constraints, TabularConstraints):
        raise ValueError("constrained_robust_accuracy needs a threat from armor.domains.tabular.threat_from_schema")
    return evaluate(model, (x, y), threat, suite=list(attacks), seed=seed, attack_kwargs=attack_kwargs,
                    keep_adv=True, batch_size=batch_size)


def unconstrained_robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                                  attacks: Sequence[str] = UNCONSTRAINED_SUITE, *, seed: int = 0,
                                  batch_size: int = 500) -> EvalResult:
    """The same evaluation under :func:`relaxed_threat`: same ball and bounds, no domain constraints (what an
    unconstrained evaluation would claim)."""
    return evaluate(model, (x, y), relaxed_threat(threat), suite=list(attacks), seed=seed, keep_adv=True,
                    batch_size=batch_size)


def recall_under_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                        positive: int = 1, attacks: Sequence[str] = CONSTRAINED_SUITE, *, seed: int = 0,
                        attack_kwargs: Optional[dict[str, dict[str, Any]]] = None) -> dict[str, Any]:
    """One-directional attack: only rows of the ``positive`` class (fraud) are attacked, towards any other
    class (legitimate); other rows are left as they are, since their owners have no reason to move them.

    Arguments:
        positive: the class the attacker wants to leave. Others as in :func:`constrained_robust_accuracy`.
    Returns:
        A dict: ``n_positive``; ``clean_recall`` and ``recall_under_attack`` (share of positives still
        detected); ``clean_precision`` and ``precision_under_attack`` (negatives are not attacked, so only
        true positives change); ``directional_robust_accuracy`` (accuracy over all rows with positives
        attacked); ``per_attack`` (the evaluator's records on the positives); ``x_adv`` (positives' examples).
    """
    pos = y == positive
    if int(pos.sum()) == 0:
        raise ValueError(f"no rows of the positive class {positive}: nothing to attack")
    res = constrained_robust_accuracy(model, x[pos], y[pos], threat, attacks, seed=seed, attack_kwargs=attack_kwargs)
    out = recall_from_robust(_predict(model, x), y, pos.nonzero().squeeze(1), res.robust, positive)
    out.update(per_attack=res.per_attack, x_adv=res.x_adv)
    return out


def recall_from_robust(pred: torch.Tensor, y: torch.Tensor, pos_idx: torch.Tensor, pos_robust: torch.Tensor,
                       positive: int) -> dict[str, Any]:
    """Recall and precision before and under a one-directional attack, from the clean predictions of every
    row and the worst-case robustness of the positive rows (``pos_robust[i]`` for row ``pos_idx[i]``).

    Negatives are not attacked, so only true positives change."""
    pred, y = pred.cpu(), y.cpu()
    pos = y == positive
    n_pos = int(pos.sum())
    if n_pos == 0 or pos_idx.numel() != n_pos:
        raise ValueError(f"recall needs the robustness of every row of the positive class {positive}")
    neg_flagged = int(((pred == positive) & ~pos).sum())
    clean_tp = int(((pred == positive) & pos).sum())
    adv_tp = int(pos_robust.cpu().sum())
    neg_correct = int(((pred == y) & ~pos).sum())

    def ratio(a: int, b: int) -> Optional[float]:
        return a / b if b else None

    return {
        "positive_class": positive,
        "n_positive": n_pos,
        "n": int(y.numel()),
        "clean_recall": clean_tp / n_pos,
        "recall_under_attack": adv_tp / n_pos,
        "clean_precision": ratio(clean_tp, clean_tp + neg_flagged),
        "precision_under_attack": ratio(adv_tp, adv_tp + neg_flagged),
        "directional_robust_accuracy": (neg_correct + adv_tp) / int(y.numel()),
    }


def moved_feature_stats(x: torch.Tensor, x_adv: torch.Tensor, schema: Schema, top: Optional[int] = None) -> dict[str, Any]:
    """Which features the successful examples changed, and by how much in standard deviations.

    Arguments:
        x, x_adv: clean rows and their adversarial versions (rows equal to ``x`` count as not attacked).
        schema: a fitted schema (its ``std`` gives the unit). top: keep only the ``top`` most moved features.
    Returns:
        ``n_changed`` rows; ``features_moved_mean`` (features changed per changed row, a categorical switch
        counted once); ``per_feature``: name -> ``{"moved": share of changed rows, "mean_abs_std",
        "max_abs_std"}`` for numeric features that moved, most often moved first; ``categorical_switches``:
        group -> share of changed rows whose category switched.
    """
    if x.shape != x_adv.shape or x.dim() != 2 or x.shape[1] != schema.n_features:
        raise ValueError(f"x and x_adv must both be N×{schema.n_features}, got {tuple(x.shape)} and "
                         f"{tuple(x_adv.shape)}")
    delta = (x_adv.double() - x.double()).cpu()
    changed = (delta != 0).any(dim=1)
    d = delta[changed]
    m = int(changed.sum())
    std = torch.tensor([f.std if f.std else 1.0 for f in schema.features], dtype=torch.float64)
    per_feature: dict[str, dict[str, float]] = {}
    moved_count = torch.zeros(m, dtype=torch.float64)
    for j, f in enumerate(schema.features):
        if f.group is not None:
            continue
        moved = d[:, j] != 0
        moved_count += moved.double()
        if moved.any():
            a = d[moved, j].abs() / std[j]
            per_feature[f.name] = {"moved": float(moved.double().mean()), "mean_abs_std": float(a.mean()),
                                   "max_abs_std": float(a.max())}
    switches: dict[str, float] = {}
    for g in schema.groups:
        idx = [schema.index(n) for n in g.members]
        sw = (d[:, idx] != 0).any(dim=1)
        moved_count += sw.double()
        switches[g.name] = float(sw.double().mean()) if m else 0.0
    order = sorted(per_feature.items(), key=lambda kv: -kv[1]["moved"])
    if top is not None:
        order = order[:top]
    return {"n_changed": m, "features_moved_mean": float(moved_count.mean()) if m else 0.0,
            "per_feature": dict(order), "categorical_switches": switches}


def tabular_summary(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                    positive: Optional[int] = None, attacks: Sequence[str] = CONSTRAINED_SUITE,
                    unconstrained_attacks: Sequence[str] = UNCONSTRAINED_SUITE, seed: int = 0,
                    attack_kwargs: Optional[dict[str, dict[str, Any]]] = None,
                    result: Optional[EvalResult] = None) -> dict[str, Any]:
    """Everything a report section needs, JSON-serialisable.

    ``result``: a worst-case evaluation of the same rows under ``threat`` with ``keep_adv`` (e.g. the one
    ``armor evaluate`` already ran); it is reused, so the constrained suite runs once, and recall under attack
    is read from its positive rows (an untargeted attack on a binary task is the one-directional one).

    Returns:
        ``clean_accuracy``, ``constrained_robust_accuracy`` (also as ``robust_accuracy``),
        ``unconstrained_robust_accuracy`` (relaxed threat, no constraints; the worst case over both suites,
        since every constrained example is also an unconstrained one), ``per_attack``, ``moved_features`` (of the constrained successes),
        ``threat_model`` and, with ``positive``, ``recall`` (see :func:`recall_under_attack`, without x_adv).
    """
    cons = threat.constraints
    if not isinstance(cons, TabularConstraints):
        raise ValueError("tabular_summary needs a threat from armor.domains.tabular.threat_from_schema")
    res = result if result is not None else constrained_robust_accuracy(model, x, y, threat, attacks, seed=seed,
                                                                          attack_kwargs=attack_kwargs)
    if res.x_adv is None or res.robust is None:
        raise ValueError("tabular_summary needs an evaluation run with keep_adv=True")
    unc = unconstrained_robust_accuracy(model, x, y, threat, unconstrained_attacks, seed=seed)
    out: dict[str, Any] = {
        "dataset": cons.schema.name,
        "n": int(y.numel()),
        "clean_accuracy": res.clean_accuracy,
        "constrained_robust_accuracy": res.robust_accuracy,
        "robust_accuracy": res.robust_accuracy,  # the key results.json readers use for the worst case
        # per point, the worst case over both suites: every constrained example is also an unconstrained one
        "unconstrained_robust_accuracy": float((unc.robust.cpu() & res.robust.cpu()).double().mean()),
        "per_attack": res.per_attack,
        "unconstrained_per_attack": unc.per_attack,
        "moved_features": moved_feature_stats(x, res.x_adv, cons.schema, top=10),
        "threat_model": res.threat_model,
    }
    if positive is not None:
        pos_idx = (y.cpu() == positive).nonzero().squeeze(1)
        if pos_idx.numel():
            out["recall"] = recall_from_robust(_predict(model, x), y, pos_idx, res.robust.cpu()[pos_idx], positive)
    return out


__all__ = ["CONSTRAINED_SUITE", "UNCONSTRAINED_SUITE", "constrained_robust_accuracy", "moved_feature_stats",
           "recall_from_robust", "recall_under_attack", "tabular_summary", "unconstrained_robust_accuracy"]
