"""The claims section of a multi-model results.json: what adversarial training bought, measured on the same
points, how sure we are of it, which model to ship, and the "trained against attack A, tested against attack B"
matrix.

Uncertainty (95%, stated once, used by the claims, the CLI and the report):

* **One accuracy** (a share of ``n`` test points): the Wilson score interval (:func:`wilson_interval`).
* **A difference of two accuracies** (hardened − baseline, or a model − the best): Newcombe's hybrid score
  interval, method 10 of Newcombe (1998), built from the two Wilson intervals (:func:`difference_interval`).
  The two models were measured on the *same* points, but results.json keeps no per-point outcomes, so the
  pairing (the correlation between the two models' per-point outcomes) is unknown and the interval is the
  unpaired one. Two models nearly always get the same points right or wrong more often than chance, which
  makes the paired interval narrower: the unpaired one is conservative, never optimistic.
* **ECE change**: a Wald interval from the stored reliability bins (:func:`ece_standard_error`).
* **Cost ratios** are counts (passes) or one timing each: no interval.

A claim whose interval contains 0 is "within noise": the report shows it in a neutral colour, not as a gain or
a loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

Z95 = 1.959963984540054  # the two-sided 95% normal quantile
Interval = Optional[tuple[float, float]]


# --------------------------------------------------------------------------------------------------------------
# Intervals: small pure functions


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``p`` observed on ``n`` points (``p = k / n``).

    ``(p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n)``; unlike ``p ± z·sqrt(p(1−p)/n)`` it stays in
    [0, 1] and does not collapse to a point at 0% or 100%. Example: 50 of 100 gives [0.4038, 0.5962].
    """
    if not _is_num(p) or not 0 <= p <= 1:
        raise ValueError(f"p must be a proportion in [0, 1], got {p!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # at 0% (100%) the lower (upper) end is exactly 0 (1); clamping also keeps p inside despite rounding
    return (0.0 if p == 0 else min(p, max(0.0, centre - half))), (1.0 if p == 1 else max(p, min(1.0, centre + half)))


def difference_interval(p_a: float, n_a: int, p_b: float, n_b: int, z: float = Z95) -> tuple[float, float]:
    """Interval for ``p_b − p_a``: Newcombe's hybrid score interval (1998, method 10), unpaired.

    With ``(l, u)`` the Wilson interval of each proportion: ``[d − sqrt((p_b − l_b)² + (u_a − p_a)²),
    d + sqrt((u_b − p_b)² + (p_a − l_a)²)]``, ``d = p_b − p_a``. Newcombe's example: 56/70 vs 48/80 gives
    [0.0524, 0.3339] for 56/70 − 48/80. For two models measured on the same points this is conservative (see
    the module docstring): the per-point pairing it would need is not stored.
    """
    l_a, u_a = wilson_interval(p_a, n_a, z)
    l_b, u_b = wilson_interval(p_b, n_b, z)
    d = p_b - p_a
    return d - math.hypot(p_b - l_b, u_a - p_a), d + math.hypot(u_b - p_b, p_a - l_a)


def ece_standard_error(reliability: dict[str, Any]) -> Optional[float]:
    """Approximate standard error of an ECE from its reliability bins (a Wald / delta-method figure).

    Each bin's accuracy is a proportion of its ``n_b`` points; holding the bins and their mean confidences
    fixed, ``Var(ECE) ≈ sum_b (n_b / N)² · p_b(1 − p_b) / n_b`` with ``p_b = (k_b + 2) / (n_b + 4)`` (the
    Agresti–Coull shrinkage, so a bin at 0% or 100% does not claim zero variance). It ignores the variation of
    the bin counts and confidences and the bias of ECE near 0: an approximation, stated as such. ``None``
    without bin counts and accuracies.
    """
    counts, accs = (reliability or {}).get("count"), (reliability or {}).get("accuracy")
    if not counts or not accs or len(counts) != len(accs):
        return None
    total = sum(int(c) for c in counts)
    if total <= 0:
        return None
    var = 0.0
    for c, a in zip(counts, accs):
        if c and a is not None:
            p = (a * c + 2) / (c + 4)
            var += c * p * (1 - p)
    return math.sqrt(var) / total


def contains_zero(interval: Interval) -> bool:
    return interval is not None and interval[0] <= 0 <= interval[1]


def format_pct_interval(p: Any, interval: Interval) -> str:
    """``79.6% [76.0, 82.8]``: an accuracy and its 95% interval, both in percent."""
    if not _is_num(p):
        return "–"
    if interval is None:
        return f"{p:.1%}"
    return f"{p:.1%} [{interval[0] * 100:.1f}, {interval[1] * 100:.1f}]"


def accuracy_interval(p: Any, n: Any) -> Interval:
    """The Wilson interval of an accuracy, or ``None`` when the accuracy or its number of points is unknown."""
    if not _is_num(p) or not 0 <= p <= 1 or not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return None
    return wilson_interval(float(p), n)


# --------------------------------------------------------------------------------------------------------------
# The claims


@dataclass(frozen=True)
class Claim:
    """One figure of the claims section: its key, how people read it, and which sign is good."""

    key: str
    label: str
    detail: str
    kind: str = "pp"  # "pp": a difference of accuracies in points; "delta": a plain difference; "ratio"
    good_if_positive: Optional[bool] = True  # None: neither sign is good or bad (a cost)

    def format(self, value: Any) -> str:
        if not isinstance(value, (int, float)):
            return "-"
        if self.kind == "pp":
            return f"{value * 100:+.1f} pt"
        return f"{value:+.3f}" if self.kind == "delta" else f"{value:.2f}x"

    def format_interval(self, interval: Interval) -> str:
        """``[+1.2, +8.9] pt``: the 95% interval in the claim's own unit ("" when there is none)."""
        if interval is None:
            return ""
        lo, hi = interval
        if self.kind == "pp":
            return f"[{lo * 100:+.1f}, {hi * 100:+.1f}] pt"
        return f"[{lo:+.3f}, {hi:+.3f}]" if self.kind == "delta" else f"[{lo:.2f}, {hi:.2f}]x"

    def verdict(self, value: Any, interval: Interval = None) -> str:
        """"pos", "neg", "noise" (the interval contains 0) or "" (neutral: zero, a cost, or not a number): the
        colour the report gives the figure."""
        if not isinstance(value, (int, float)) or self.good_if_positive is None:
            return ""
        if contains_zero(interval):
            return "noise"
        if value == 0:
            return ""
        return "pos" if (value > 0) == self.good_if_positive else "neg"

    def describe(self, claims: dict[str, Any]) -> str:
        """The figure with its interval and verdict, as the CLI and the report write it:
        ``+0.7 pt [-2.7, +4.1] pt (within noise)``."""
        value = claims.get(self.key)
        interval = _interval_of(claims, self.key)
        text = self.format(value)
        if interval is not None:
            text += f" {self.format_interval(interval)}"
        if self.verdict(value, interval) == "noise":
            text += " (within noise)"
        return text


def _interval_of(claims: dict[str, Any], key: str) -> Interval:
    iv = ((claims.get("intervals") or {}).get("claims") or {}).get(key)
    return (float(iv[0]), float(iv[1])) if isinstance(iv, (list, tuple)) and len(iv) == 2 else None


# The one list the CLI's table and the report's cards are drawn from, in the order people read them.
CLAIMS = (
    Claim("robustness_gain", "robustness gain", "worst-case robust accuracy (over the whole attack suite), "
          "hardened − baseline"),
    Claim("shift_gain", "gain under shift", "mean accuracy on corrupted inputs, hardened − baseline"),
    Claim("equipment_gain", "gain across equipment", "accuracy on other devices, hardened − baseline"),
    Claim("ece_change", "ECE change", "clean calibration error, hardened − baseline (lower is better)", "delta",
          good_if_positive=False),
    Claim("cost_ratio", "cost ratio (train time)", "training wall time, hardened ÷ baseline", "ratio", None),
    Claim("pass_ratio", "cost ratio (passes)", "forward + backward passes, hardened ÷ baseline", "ratio", None),
    Claim("clean_accuracy_change", "clean-accuracy change", "clean accuracy, hardened − baseline"),
)

INTERVAL_METHODS = {
    "accuracy": "Wilson score interval on the n test points",
    "difference": "Newcombe hybrid score interval (method 10), unpaired: results.json keeps no per-point "
                  "outcomes, so the pairing of the two models on the same points is not used; conservative "
                  "when, as usual, both models tend to get the same points right",
    "ece_change": "Wald interval; each ECE's standard error from its reliability bins (bin accuracies as "
                  "binomial, bins and confidences held fixed), the two treated as independent",
    "shift_gain": "as 'difference', with n the test points (each corrupted accuracy is a mean over corruptions "
                  "of the same n points)",
    "cost": "no interval: pass counts are exact, times are one measurement each",
}


# --------------------------------------------------------------------------------------------------------------
# Per-model verdicts and the recommendation


def threat_text(entry: dict[str, Any]) -> str:
    """The norm and eps of an entry in a few characters, for column headers: ``linf eps=0.1``."""
    spec = entry.get("threat") if isinstance(entry.get("threat"), dict) else {}
    tm = entry.get("threat_model") or {}
    norm = spec.get("norm") or tm.get("norm") or "?"
    eps = spec.get("eps") if _is_num(spec.get("eps")) else tm.get("eps")
    unit = str(spec.get("eps_unit") or "")
    unit = " std" if unit.startswith("standard deviation") else ("" if unit in ("", "input units") else f" {unit}")
    if isinstance(eps, list):
        return f"{norm} eps=per-feature"
    return f"{norm} eps={eps:g}{unit}" if _is_num(eps) else f"{norm}"


def attack_label(attack: str, entry: dict[str, Any]) -> str:
    """An attack as a column names it, with its budget: ``apgd-ce (linf eps=0.1)``."""
    return f"{attack} ({threat_text(entry)})"


def _masking_names(entry: dict[str, Any]) -> list[str]:
    return [f.get("name", "?") if isinstance(f, dict) else str(f) for f in entry.get("masking_flags") or []]


def _cost_of(entry: dict[str, Any]) -> dict[str, Any]:
    cost = entry.get("cost") or {}
    return {"passes": cost.get("passes"), "pass_ratio": cost.get("pass_ratio"),
            "train_seconds": cost.get("train_seconds", entry.get("train_seconds")),
            "time_ratio": cost.get("time_ratio")}


def verdict_line(entry: dict[str, Any]) -> str:
    """One line a reader can act on: the worst case with its interval and threat, clean accuracy, the masking
    checks and the cost; e.g. "robust accuracy 79.6% [76.0, 82.8] (worst case over apgd-ce, apgd-t, square;
    n=540) under linf eps=0.1 (input units); clean 98.1% [96.6, 99.0]; no masking flags; costs 12.50x the
    passes (23.46x the time) of standard training"."""
    from .results import threat_label

    n = entry.get("n")
    robust, clean = entry.get("robust_accuracy"), entry.get("clean_accuracy")
    suite = ", ".join(entry.get("suite") or entry.get("per_attack") or []) or "the suite"
    parts = [f"robust accuracy {format_pct_interval(robust, accuracy_interval(robust, n))} (worst case over "
             f"{suite}; n={n}) under {threat_label(entry)}",
             f"clean {format_pct_interval(clean, accuracy_interval(clean, n))}"]
    flags = _masking_names(entry)
    if flags:
        parts.append(f"{len(flags)} masking flag{'s' if len(flags) != 1 else ''} ({', '.join(flags)}): do not "
                     "trust its robust accuracy until a stronger attack confirms it")
    elif entry.get("masking_checks"):
        parts.append("no masking flags")
    else:
        parts.append("masking checks not run")
    cost = _cost_of(entry)
    if entry.get("recipe") == "standard":
        parts.append("standard training (the cost reference)")
    elif _is_num(cost["pass_ratio"]) or _is_num(cost["time_ratio"]):
        bits = []
        if _is_num(cost["pass_ratio"]):
            bits.append(f"{cost['pass_ratio']:.2f}x the passes")
        if _is_num(cost["time_ratio"]):
            bits.append(f"{cost['time_ratio']:.2f}x the time")
        parts.append(f"costs {bits[0]}" + (f" ({bits[1]})" if len(bits) > 1 else "") + " of standard training")
    elif _is_num(cost["train_seconds"]):
        parts.append(f"trained in {cost['train_seconds']:.1f} s")
    return "; ".join(parts)


RECOMMENDATION_RULE = (
    "Among the models with no masking flag, the best is the one with the highest worst-case robust accuracy. "
    "A model is within noise of the best when the 95% interval of its difference from the best (Newcombe "
    "hybrid score, unpaired) contains 0. Recommended: the cheapest model within noise of the best, by "
    "forward+backward passes (training time where passes are not known for all of them); ties go to the "
    "higher robust accuracy. Clean accuracy is reported, not used by the rule.")


def recommend(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The cheapest model whose worst-case robust accuracy is within noise of the best (:data:`RECOMMENDATION_RULE`).

    Returns ``{"model", "best", "rule", "cost_measure", "text", "table"}``; ``table`` has one row per model:
    its robust accuracy and interval, its difference from the best with the interval, ``within_noise``,
    ``eligible`` (no masking flag), its cost and ``recommended``. ``model`` is ``None`` when every model is
    flagged.
    """
    rows = []
    for name, m in models.items():
        robust, n = m.get("robust_accuracy"), m.get("n")
        cost = _cost_of(m)
        rows.append({"model": name, "recipe": m.get("recipe"), "robust_accuracy": robust,
                     "robust_interval": _as_list(accuracy_interval(robust, n)), "n": n,
                     "clean_accuracy": m.get("clean_accuracy"), "masking_flags": _masking_names(m),
                     "eligible": not _masking_names(m) and accuracy_interval(robust, n) is not None,
                     "passes": cost["passes"], "pass_ratio": cost["pass_ratio"],
                     "train_seconds": cost["train_seconds"], "time_ratio": cost["time_ratio"]})
    eligible = [r for r in rows if r["eligible"]]
    out: dict[str, Any] = {"rule": RECOMMENDATION_RULE, "model": None, "best": None, "cost_measure": None,
                           "table": rows}
    for r in rows:
        r.update(difference_from_best=None, difference_interval=None, within_noise=False, recommended=False)
    if not eligible:
        out["text"] = ("No recommendation: every model has a masking flag (or no robust accuracy), so no robust "
                       "accuracy here can be trusted.")
        return out
    best = max(eligible, key=lambda r: r["robust_accuracy"])
    for r in rows:
        if r["robust_interval"] is None:
            continue
        iv = difference_interval(best["robust_accuracy"], best["n"], r["robust_accuracy"], r["n"])
        r.update(difference_from_best=r["robust_accuracy"] - best["robust_accuracy"], difference_interval=list(iv),
                 within_noise=r is best or iv[1] >= 0)
    close = [r for r in eligible if r["within_noise"]]  # flagged models may be within noise, never candidates
    measure = next((k for k in ("passes", "train_seconds") if all(_is_num(r[k]) for r in close)), None)
    pick = min(close, key=lambda r: ((r[measure] if measure else 0), -r["robust_accuracy"]))
    pick["recommended"] = True
    out.update(model=pick["model"], best=best["model"], cost_measure=measure)
    out["text"] = _recommendation_text(pick, best, close, measure)
    return out


_WHAT = {"passes": "forward+backward passes", "train_seconds": "training time"}


def _recommendation_text(pick: dict[str, Any], best: dict[str, Any], close: list[dict[str, Any]],
                         measure: Optional[str]) -> str:
    def acc(r):
        return format_pct_interval(r["robust_accuracy"], tuple(r["robust_interval"]))

    if pick is best and len(close) == 1:
        return (f"Recommended: {pick['model']}: its worst-case robust accuracy {acc(pick)} is above every other "
                f"model's by more than the noise.")
    if pick is best:
        others = ", ".join(f"{r['model']} {acc(r)}" + (f" at {r[measure] / pick[measure]:.2f}x its {_WHAT[measure]}"
                                                       if measure and pick[measure] else "")
                           for r in close if r is not pick)
        return (f"Recommended: {pick['model']}: the best worst-case robust accuracy, {acc(pick)}, and the cheapest "
                f"of the models within noise of it ({others}).")
    d = pick["difference_from_best"] * 100
    lo, hi = (v * 100 for v in pick["difference_interval"])
    cheaper = ""
    if measure and _is_num(best[measure]) and _is_num(pick[measure]) and pick[measure] > 0:
        cheaper = f" at {pick[measure] / best[measure]:.2f}x the {_WHAT[measure]} of {best['model']}"
    return (f"Recommended: {pick['model']}: its worst-case robust accuracy {acc(pick)} is within noise of the best, "
            f"{best['model']} {acc(best)} (difference {d:+.1f} pt [{lo:+.1f}, {hi:+.1f}]){cheaper}.")


def _as_list(iv: Interval) -> Optional[list[float]]:
    return None if iv is None else [iv[0], iv[1]]


# --------------------------------------------------------------------------------------------------------------
# claims()


def claims(models: dict[str, dict[str, Any]], baseline: str, hardened: str) -> dict[str, Any]:
    """The claims section: hardened minus baseline on the same points (with 95% intervals), a verdict line per
    model, the recommendation, and the train-A/test-B matrix."""
    b, h = models[baseline], models[hardened]

    def diff(get):
        try:
            return get(h) - get(b)
        except (KeyError, TypeError):
            return None

    columns = []
    for m in models.values():
        columns += [a for a in m["per_attack"] if a not in columns]
    rows, row_n = {}, {}
    for name, m in models.items():
        row = {a: r.get("accuracy") for a, r in m["per_attack"].items()}
        row["worst case"] = m["robust_accuracy"]
        if "l2_robust_accuracy" in m:
            row["apgd-ce (l2)"] = m["l2_robust_accuracy"]
        rows[f"{name}: {_trained_with(m)}"] = row
        row_n[f"{name}: {_trained_with(m)}"] = m.get("n")
    columns += ["worst case"] + (["apgd-ce (l2)"] if any("l2_robust_accuracy" in m for m in models.values()) else [])
    return {
        "baseline": baseline,
        "hardened": hardened,
        "robustness_gain": diff(lambda m: m["robust_accuracy"]),
        "shift_gain": diff(lambda m: m["shift"]["mean_accuracy"]),
        "equipment_gain": diff(lambda m: m["equipment"]["out_of_device_accuracy"]),
        "ece_change": diff(lambda m: m["calibration"]["clean"]["ece"]),
        "cost_ratio": (h["train_seconds"] / b["train_seconds"]) if b.get("train_seconds") else None,
        "pass_ratio": h.get("cost", {}).get("pass_ratio"),
        "clean_accuracy_change": diff(lambda m: m["clean_accuracy"]),
        "attack_matrix": {"columns": columns, "rows": rows, "labels": column_labels(columns, models),
                          "n": row_n, "cells": "each attack's own accuracy on all n points; 'worst case': "
                                               "per point, over the whole suite"},
        "intervals": claim_intervals(models, baseline, hardened),
        "verdicts": {name: verdict_line(m) for name, m in models.items()},
        "recommendation": recommend(models),
    }


def column_labels(columns: Sequence[str], models: dict[str, dict[str, Any]],
                  l2_eps: Optional[float] = None) -> dict[str, str]:
    """Each matrix column with its budget: ``apgd-ce (linf eps=0.1)``, ``worst case (linf eps=0.1)``,
    ``apgd-ce (l2 eps=0.5)``; the l2 eps comes from the entries' ``l2_eps`` or the argument."""
    first = next(iter(models.values()))
    l2 = l2_eps if _is_num(l2_eps) else next((m["l2_eps"] for m in models.values() if _is_num(m.get("l2_eps"))), None)
    labels = {}
    for col in columns:
        if col == "apgd-ce (l2)":
            labels[col] = f"apgd-ce (l2 eps={l2:g})" if l2 is not None else "apgd-ce (l2, eps not recorded)"
        else:
            labels[col] = attack_label(col, first)
    return labels


def claim_intervals(models: dict[str, dict[str, Any]], baseline: str, hardened: str) -> dict[str, Any]:
    """95% intervals: per model (clean and worst-case robust accuracy, Wilson) and per claim (hardened −
    baseline; Newcombe for accuracies, Wald for ECE; none for costs). ``None`` where a figure or its n is
    missing."""
    b, h = models[baseline], models[hardened]

    def acc_diff(get, n_of):
        try:
            pb, ph, nb, nh = get(b), get(h), n_of(b), n_of(h)
        except (KeyError, TypeError, AttributeError):
            return None
        if accuracy_interval(pb, nb) is None or accuracy_interval(ph, nh) is None:
            return None
        return list(difference_interval(pb, nb, ph, nh))

    def ece_diff():
        try:
            cb, ch = b["calibration"]["clean"], h["calibration"]["clean"]
            d = ch["ece"] - cb["ece"]
        except (KeyError, TypeError):
            return None
        se_b, se_h = ece_standard_error(cb.get("reliability")), ece_standard_error(ch.get("reliability"))
        if se_b is None or se_h is None:
            return None
        half = Z95 * math.hypot(se_b, se_h)
        return [d - half, d + half]

    def n_equipment(m):
        return m["equipment"].get("n_test") or m["n"]

    def n_shift(m):
        return m["shift"].get("n") or m["n"]

    per_claim = {
        "robustness_gain": acc_diff(lambda m: m["robust_accuracy"], lambda m: m["n"]),
        "clean_accuracy_change": acc_diff(lambda m: m["clean_accuracy"], lambda m: m["n"]),
        "shift_gain": acc_diff(lambda m: m["shift"]["mean_accuracy"], n_shift),
        "equipment_gain": acc_diff(lambda m: m["equipment"]["out_of_device_accuracy"], n_equipment),
        "ece_change": ece_diff(),
        "cost_ratio": None,
        "pass_ratio": None,
    }
    per_model = {name: {"clean_accuracy": _as_list(accuracy_interval(m.get("clean_accuracy"), m.get("n"))),
                        "robust_accuracy": _as_list(accuracy_interval(m.get("robust_accuracy"), m.get("n")))}
                 for name, m in models.items()}
    return {"level": 0.95, "methods": dict(INTERVAL_METHODS), "claims": per_claim, "models": per_model,
            "within_noise": {k: contains_zero(tuple(v) if v else None) for k, v in per_claim.items() if v}}


def _trained_with(entry: dict[str, Any]) -> str:
    """How a model was trained, in attack terms, for the rows of the train-A/test-B matrix."""
    recipe, params = entry.get("recipe"), entry.get("recipe_params") or {}
    norm = entry.get("threat_model", {}).get("norm", "")
    if recipe == "standard":
        return "no attack"
    if recipe == "fast-at":
        return f"FGSM-RS {norm}"
    if recipe == "pgd-at":
        ratio = params.get("adv_ratio")
        mix = f", {ratio:.0%} adv" if ratio is not None else ""
        return f"PGD-{params.get('steps', 10)} {norm}{mix}"
    return recipe or "?"


def against_baseline(models: dict[str, dict[str, Any]], baseline: str, figures: dict[str, str]) -> dict[str, Any]:
    """A workflow demo's claims: every model's ``cost`` gains ``time_ratio`` (its train time ÷ the baseline's,
    ``None`` when either is unknown), and each claim ``name -> key`` of ``figures`` is ``{model: its figure −
    the baseline's}`` for every model but the baseline."""
    base = models[baseline]
    for m in models.values():
        m["cost"] = {**(m.get("cost") or {}), "time_ratio": (m["train_seconds"] / base["train_seconds"])
                     if m.get("train_seconds") and base.get("train_seconds") else None}
    return {"baseline": baseline, **{name: {n: m[key] - base[key] for n, m in models.items() if n != baseline}
                                     for name, key in figures.items()}}
