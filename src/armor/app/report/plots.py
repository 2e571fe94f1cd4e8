"""Figures for the report, rendered with matplotlib (Agg) and embedded as base64 PNG data URIs."""

from __future__ import annotations

import base64
import io
from typing import Any, Optional, Sequence

import numpy as np

from ..claims import accuracy_interval

PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "axes.grid": True, "grid.alpha": 0.25, "figure.dpi": 110})
    return plt


def to_data_uri(fig) -> str:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def curve_figure(curves: dict[str, Sequence[dict]], y_key: str, xlabel: str, ylabel: str,
                 x_key: str = "eps") -> Optional[str]:
    """One line per model of ``curves`` (name -> points, each a dict with ``x_key`` and ``y_key``), as a data URI;
    ``None`` when no model has a curve. What a domain's report section draws for its figure against eps."""
    curves = {name: pts for name, pts in curves.items() if pts}
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, (name, pts) in enumerate(curves.items()):
        ax.plot([p[x_key] for p in pts], [p[y_key] for p in pts], marker="o", color=PALETTE[i % len(PALETTE)],
                label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return to_data_uri(fig)


def _yerr(vals: Sequence[float], n: Any) -> Optional[np.ndarray]:
    """Asymmetric 95% Wilson error bars (2, len) for accuracies on n points; None when n is unknown."""
    lo, hi = [], []
    for v in vals:
        iv = accuracy_interval(float(v), n) if np.isfinite(v) else None
        lo.append(max(0.0, v - iv[0]) if iv else 0.0)
        hi.append(max(0.0, iv[1] - v) if iv else 0.0)
    return np.array([lo, hi]) if isinstance(n, int) and n > 0 else None


def attack_bars(models: dict[str, dict[str, Any]], threat: str = "") -> str:
    """Grouped bars per model: clean, cumulative accuracy after each attack, and the worst case, with 95% Wilson
    error bars on the n test points."""
    plt = _plt()
    names = list(models)
    attacks: list[str] = []
    for m in models.values():
        for a in m.get("per_attack", {}):
            if a not in attacks:
                attacks.append(a)
    cols = ["clean"] + [a if i == 0 else f"+ {a}" for i, a in enumerate(attacks)] + ["worst case"]
    fig, ax = plt.subplots(figsize=(max(5.5, 1.2 * len(cols) * max(1, len(names)) / 2), 3.2))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        m = models[name]
        vals = [m.get("clean_accuracy", np.nan)]
        vals += [m.get("per_attack", {}).get(a, {}).get("cumulative_accuracy", np.nan) for a in attacks]
        vals += [m.get("robust_accuracy", np.nan)]
        vals = [np.nan if v is None else float(v) for v in vals]
        xs = np.arange(len(cols)) + (i - (len(names) - 1) / 2) * width
        bars = ax.bar(xs, vals, width, label=name, color=PALETTE[i % len(PALETTE)],
                      yerr=_yerr(vals, m.get("n")), error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#374151"})
        for b, v in zip(bars, vals):
            if np.isfinite(v):  # inside the bar's foot, or above a bar too short to hold it
                low = v < 0.12
                ax.text(b.get_x() + b.get_width() / 2, v + 0.05 if low else 0.02, f"{v:.0%}", ha="center",
                        va="bottom", fontsize=7, color="#111827" if low else "white")
    ax.set_xticks(np.arange(len(cols)), cols)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("accuracy (cumulative over the attacks so far)")
    if threat:
        ax.set_title(f"{threat}; error bars: 95% Wilson intervals", fontsize=8, color="#4b5563")
    ax.legend(frameon=False, fontsize=8, ncols=min(4, len(names)), loc="upper right")
    return to_data_uri(fig)


def curves(models: dict[str, dict[str, Any]]) -> Optional[str]:
    """Accuracy vs eps per model: the attacked curve (solid, 95% Wilson band) and, where the entry carries a
    certificate of the model itself, the certified curve (dashed) with the gap between the two hatched."""
    plt = _plt()
    if not any(m.get("curve") for m in models.values()):
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for i, (name, m) in enumerate(models.items()):
        pts = m.get("curve") or []
        color = PALETTE[i % len(PALETTE)]
        if pts:
            eps = [p["eps"] for p in pts]
            acc = [p["robust_accuracy"] for p in pts]
            certified = [p.get("certified_accuracy") for p in pts]
            ax.plot(eps, acc, "o-", ms=3, label=f"{name} (attacked)" if any(c is not None for c in certified)
                    else name, color=color)
            band = [accuracy_interval(a, p.get("n", m.get("n"))) for a, p in zip(acc, pts)]
            if all(b is not None for b in band):
                ax.fill_between(eps, [b[0] for b in band], [b[1] for b in band], color=color, alpha=0.15, lw=0)
            if all(c is not None for c in certified):
                method = (m.get("certificate") or {}).get("method", "certified")
                ax.plot(eps, certified, "s--", ms=3, color=color, label=f"{name} (certified, {method})")
                ax.fill_between(eps, certified, acc, facecolor="none", edgecolor=color, hatch="//", lw=0,
                                alpha=0.5)
        train_eps = (m.get("threat_model") or {}).get("eps")
        if isinstance(train_eps, (int, float)) and i == 0:
            ax.axvline(train_eps, color="#9ca3af", ls="--", lw=1)
            ax.text(train_eps, 1.02, " evaluated eps", color="#6b7280", fontsize=7)
    per_feature = any(isinstance((m.get("threat_model") or {}).get("eps"), list) for m in models.values())
    ax.set_xlabel("largest per-feature eps (raw feature units)" if per_feature else "eps (input units)")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(0, 1.08)
    ax.legend(frameon=False, fontsize=8)
    return to_data_uri(fig)


def radius_curves(models: dict[str, dict[str, Any]]) -> Optional[str]:
    """Randomized smoothing: certified accuracy of each smoothed classifier against the l2 radius."""
    found = {n: (m.get("certificate") or {}) for n, m in models.items()}
    found = {n: c for n, c in found.items() if c.get("radius_curve")}
    if not found:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.0))
    for i, (name, c) in enumerate(found.items()):
        pts = c["radius_curve"]
        ax.step([p["radius"] for p in pts], [p["certified_accuracy"] for p in pts], where="post",
                color=PALETTE[i % len(PALETTE)], label=f"{name} ({c.get('classifier', 'smoothed')})")
        if isinstance(c.get("l2_radius_needed"), (int, float)):
            ax.axvline(c["l2_radius_needed"], color="#9ca3af", ls="--", lw=1)
    ax.set_xlabel("certified l2 radius (input units)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(frameon=False, fontsize=8)
    return to_data_uri(fig)


def merge_sparse_bins(rel: dict[str, Any], min_count: int = 20) -> list[dict[str, Any]]:
    """Reliability bins merged with their neighbours until each holds at least ``min_count`` points.

    Walks the (equal-width) bins from low to high confidence, pooling counts, confidence sums and correct counts
    until the pool reaches ``min_count``; a last pool that stays short joins the one before it (or stands alone
    when it is the only one). Empty bins disappear. The pooled bin's confidence and accuracy are count-weighted
    means, so nothing is re-measured: ECE, computed on the original bins, is unchanged.
    Returns ``[{"lower", "upper", "count", "confidence", "accuracy"}, ...]``.
    """
    lowers, uppers = rel.get("bin_lower") or [], rel.get("bin_upper") or []
    out: list[dict[str, Any]] = []
    pool: Optional[dict[str, Any]] = None
    for b, (c, conf, acc) in enumerate(zip(rel.get("count", []), rel.get("confidence", []), rel.get("accuracy", []))):
        if not c or conf is None or acc is None:
            continue
        lo = lowers[b] if b < len(lowers) else None
        hi = uppers[b] if b < len(uppers) else None
        if pool is None:
            pool = {"lower": lo, "upper": hi, "count": 0, "conf_sum": 0.0, "correct": 0.0}
        pool["upper"] = hi
        pool["count"] += int(c)
        pool["conf_sum"] += conf * c
        pool["correct"] += acc * c
        if pool["count"] >= min_count:
            out.append(pool)
            pool = None
    if pool is not None:
        if out:
            last = out[-1]
            last["upper"] = pool["upper"]
            for k in ("count", "conf_sum", "correct"):
                last[k] += pool[k]
        else:
            out.append(pool)
    return [{"lower": p["lower"], "upper": p["upper"], "count": p["count"], "confidence": p["conf_sum"] / p["count"],
             "accuracy": p["correct"] / p["count"]} for p in out]


MIN_BIN = 20  # points per bin of a reliability diagram


def reliability(models: dict[str, dict[str, Any]], attacked_labels: Optional[dict[str, str]] = None,
                min_count: int = MIN_BIN) -> Optional[str]:
    """Reliability diagrams: one panel per model, clean and attacked curves against the diagonal.

    Each point is a bin of at least ``min_count`` points (:func:`merge_sparse_bins`) at its mean confidence,
    with a 95% Wilson interval on its accuracy; ``attacked_labels`` names each model's attacked set.
    """
    plt = _plt()
    items = [(n, m["calibration"]) for n, m in models.items() if m.get("calibration")]
    if not items:
        return None
    fig, axes = plt.subplots(1, len(items), figsize=(3.4 * len(items), 3.9), squeeze=False)
    for ax, (name, cal) in zip(axes[0], items):
        ax.plot([0, 1], [0, 1], color="#9ca3af", lw=1, ls="--")
        for key, color in (("clean", PALETTE[0]), ("attacked", PALETTE[1])):
            rel = (cal.get(key) or {}).get("reliability")
            if not rel:
                continue
            bins = merge_sparse_bins(rel, min_count)
            if not bins:
                continue
            conf = np.array([b["confidence"] for b in bins])
            acc = np.array([b["accuracy"] for b in bins])
            ivs = [accuracy_interval(float(a), b["count"]) for a, b in zip(acc, bins)]
            yerr = np.clip([[a - iv[0] for a, iv in zip(acc, ivs)], [iv[1] - a for a, iv in zip(acc, ivs)]], 0, None)
            ece = (cal.get(key) or {}).get("ece")
            what = "clean" if key == "clean" else "under " + (attacked_labels or {}).get(name, "attack")
            label = f"{what} (ECE {ece:.3f}, {len(bins)} bins)" if isinstance(ece, (int, float)) else what
            ax.errorbar(conf, acc, yerr=yerr, fmt="o-", ms=3, lw=1.2, elinewidth=0.8, capsize=2, color=color,
                        label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("confidence (bin mean)")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.legend(frameon=False, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=1)
    axes[0][0].set_ylabel("accuracy in the bin")
    return to_data_uri(fig)


def shift_bars(models: dict[str, dict[str, Any]]) -> Optional[str]:
    """Accuracy per corruption (mean over severities), one bar per model."""
    plt = _plt()
    items = [(n, m["shift"]) for n, m in models.items() if m.get("shift", {}).get("per_corruption")]
    if not items:
        return None
    corrs = list(items[0][1]["per_corruption"])
    fig, ax = plt.subplots(figsize=(max(6, 0.75 * len(corrs) * max(1, len(items)) / 1.5), 3.2))
    width = 0.8 / len(items)
    for i, (name, sh) in enumerate(items):
        vals = []
        for c in corrs:
            sev = sh["per_corruption"].get(c, {})
            v = [float(a) for a in (sev.values() if isinstance(sev, dict) else sev)]
            vals.append(float(np.mean(v)) if v else np.nan)
        xs = np.arange(len(corrs)) + (i - (len(items) - 1) / 2) * width
        ax.bar(xs, vals, width, label=name, color=PALETTE[i % len(PALETTE)])
    ax.set_xticks(np.arange(len(corrs)), [c.replace("_", " ") for c in corrs], rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (mean over severities)")
    ax.legend(frameon=False, fontsize=8, ncols=min(4, len(items)))
    return to_data_uri(fig)


def grouped_bars(title_by_group: dict[str, dict[str, float]], ylabel: str, ylim: Optional[tuple] = (0, 1.05),
                 fmt: str = "{:.0%}") -> Optional[str]:
    """Generic grouped bars: {series: {category: value}}."""
    plt = _plt()
    if not title_by_group:
        return None
    series = list(title_by_group)
    cats: list[str] = []
    for d in title_by_group.values():
        cats += [c for c in d if c not in cats]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(cats) * max(1, len(series)) / 1.5), 3.0))
    width = 0.8 / len(series)
    for i, s in enumerate(series):
        vals = [title_by_group[s].get(c, np.nan) for c in cats]
        xs = np.arange(len(cats)) + (i - (len(series) - 1) / 2) * width
        bars = ax.bar(xs, vals, width, label=s, color=PALETTE[i % len(PALETTE)])
        for b, v in zip(bars, vals):
            if v is not None and np.isfinite(v):
                ax.text(b.get_x() + b.get_width() / 2, v, fmt.format(v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(np.arange(len(cats)), cats, rotation=20 if len(cats) > 5 else 0, ha="right" if len(cats) > 5 else "center")
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False, fontsize=8, ncols=min(4, len(series)))
    return to_data_uri(fig)


def _img(a: np.ndarray) -> np.ndarray:
    """(C,H,W) or (D,) -> something imshow can draw."""
    a = np.asarray(a)
    if a.ndim == 3:
        return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))
    return a


def image_grid(rows: Sequence[tuple[str, np.ndarray]], titles: Sequence[Sequence[str]], cmap_rows: Sequence[str]) -> str:
    """A grid of images: one row per (label, images[N,...]) entry, with per-image titles."""
    plt = _plt()
    n = len(rows[0][1])
    fig, axes = plt.subplots(len(rows), n, figsize=(1.15 * n + 0.8, 1.3 * len(rows)), squeeze=False)
    for r, ((label, imgs), cmap) in enumerate(zip(rows, cmap_rows)):
        for c in range(n):
            ax = axes[r][c]
            img = _img(imgs[c])
            if cmap == "diverging":
                lim = max(float(np.abs(img).max()), 1e-8)
                ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
            elif cmap == "heat":
                ax.imshow(img, cmap="inferno")
            else:
                ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if titles[r]:
                ax.set_title(titles[r][c], fontsize=7)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.tight_layout()
    return to_data_uri(fig)
