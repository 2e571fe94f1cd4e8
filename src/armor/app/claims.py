"""The claims section of a multi-model results.json: what adversarial training bought, measured on the same
points, and the "trained against attack A, tested against attack B" matrix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


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

    def verdict(self, value: Any) -> str:
        """"pos", "neg" or "" (neutral, zero or not a number): the colour the report gives the figure."""
        if not isinstance(value, (int, float)) or self.good_if_positive is None or value == 0:
            return ""
        return "pos" if (value > 0) == self.good_if_positive else "neg"


# The one list the CLI's table and the report's cards are drawn from, in the order people read them.
CLAIMS = (
    Claim("robustness_gain", "robustness gain", "worst-case robust accuracy, hardened − baseline"),
    Claim("shift_gain", "gain under shift", "mean accuracy on corrupted inputs, hardened − baseline"),
    Claim("equipment_gain", "gain across equipment", "accuracy on other devices, hardened − baseline"),
    Claim("ece_change", "ECE change", "clean calibration error, hardened − baseline (lower is better)", "delta",
          good_if_positive=False),
    Claim("cost_ratio", "cost ratio (train time)", "training wall time, hardened ÷ baseline", "ratio", None),
    Claim("pass_ratio", "cost ratio (passes)", "forward + backward passes, hardened ÷ baseline", "ratio", None),
    Claim("clean_accuracy_change", "clean-accuracy change", "clean accuracy, hardened − baseline"),
)


def claims(models: dict[str, dict[str, Any]], baseline: str, hardened: str) -> dict[str, Any]:
    """The claims section: hardened minus baseline on the same points, and the train-A/test-B matrix."""
    b, h = models[baseline], models[hardened]

    def diff(get):
        try:
            return get(h) - get(b)
        except (KeyError, TypeError):
            return None

    columns = []
    for m in models.values():
        columns += [a for a in m["per_attack"] if a not in columns]
    rows = {}
    for name, m in models.items():
        row = {a: r.get("accuracy") for a, r in m["per_attack"].items()}
        row["worst case"] = m["robust_accuracy"]
        if "l2_robust_accuracy" in m:
            row["apgd-ce (l2)"] = m["l2_robust_accuracy"]
        rows[f"{name}: {_trained_with(m)}"] = row
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
        "attack_matrix": {"columns": columns, "rows": rows},
    }


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
