"""Figures for the report, rendered with matplotlib (Agg) and embedded as base64 PNG data URIs."""

from __future__ import annotations

import base64
import io
from typing import Any, Optional, Sequence

import numpy as np

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


def attack_bars(models: dict[str, dict[str, Any]]) -> str:
    """Grouped bars per model: clean, cumulative accuracy after each attack, and the worst case."""
    plt = _plt()
    names = list(models)
    attacks: list[str] = []
    for m in models.values():
        for a in m.get("per_attack", {}):
            if a not in attacks:
                attacks.append(a)
    cols = ["clean"] + attacks + ["worst case"]
    fig, ax = plt.subplots(figsize=(max(5.5, 1.2 * len(cols) * max(1, len(names)) / 2), 3.2))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        m = models[name]
        vals = [m.get("clean_accuracy", np.nan)]
        vals += [m.get("per_attack", {}).get(a, {}).get("cumulative_accuracy", np.nan) for a in attacks]
        vals += [m.get("robust_accuracy", np.nan)]
        xs = np.arange(len(cols)) + (i - (len(names) - 1) / 2) * width
        bars = ax.bar(xs, vals, width, label=name, color=PALETTE[i % len(PALETTE)])
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.0%}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(np.arange(len(cols)), cols)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy")
    ax.legend(frameon=False, fontsize=8, ncols=min(4, len(names)))
    return to_data_uri(fig)


def curves(models: dict[str, dict[str, Any]]) -> Optional[str]:
    plt = _plt()
    if not any(m.get("curve") for m in models.values()):
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for i, (name, m) in enumerate(models.items()):
        pts = m.get("curve") or []
        if pts:
            ax.plot([p["eps"] for p in pts], [p["robust_accuracy"] for p in pts], "o-", ms=3, label=name,
                    color=PALETTE[i % len(PALETTE)])
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


def reliability(models: dict[str, dict[str, Any]]) -> Optional[str]:
    """Reliability diagrams: one panel per model, clean and attacked curves against the diagonal."""
    plt = _plt()
    items = [(n, m["calibration"]) for n, m in models.items() if m.get("calibration")]
    if not items:
        return None
    fig, axes = plt.subplots(1, len(items), figsize=(3.0 * len(items), 3.0), squeeze=False)
    for ax, (name, cal) in zip(axes[0], items):
        ax.plot([0, 1], [0, 1], color="#9ca3af", lw=1, ls="--")
        for key, color in (("clean", PALETTE[0]), ("attacked", PALETTE[1])):
            rel = (cal.get(key) or {}).get("reliability")
            if not rel:
                continue
            conf, acc, cnt = (np.asarray(rel.get(k, []), dtype=float) for k in ("confidence", "accuracy", "count"))
            keep = cnt > 0
            ece = (cal.get(key) or {}).get("ece")
            label = f"{key} (ECE {ece:.3f})" if isinstance(ece, (int, float)) else key
            ax.plot(conf[keep], acc[keep], "o-", ms=3, color=color, label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(frameon=False, fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("accuracy")
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
