"""The self-contained HTML report: results.json (+ optional image artifacts) -> one HTML file.

Jinja2 ``PackageLoader`` with autoescape; every figure is a base64 PNG data URI, so the file has no external
URL and can be archived or mailed as it is.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from ...metrics import MASKING_REGISTRY
from ...plugins import domains
from ..results import threat_label

from . import plots

# What each masking check means, in general: the registry's explanations (a flag's message adds its numbers).
CHECK_HELP = {name: check.explanation for name, check in MASKING_REGISTRY.items()}


def _pct(v: Any) -> str:
    return "–" if not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)) else f"{v:.1%}"


def _num(v: Any, digits: int = 2) -> str:
    return "–" if not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _secs(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return "–"
    return f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"


def _pp(a: Any, b: Any) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return "–"
    return f"{(a - b) * 100:+.1f} pt"


def _claim_cards(claims: dict[str, Any]) -> list[dict[str, str]]:
    from ..claims import CLAIMS

    return [{"label": c.label, "value": c.format(claims[c.key]).replace("x", "×"), "detail": c.detail,
             "cls": c.verdict(claims[c.key])}
            for c in CLAIMS if isinstance(claims.get(c.key), (int, float))]


def _interp_figures(entry: dict[str, Any], art: dict[str, Any]) -> dict[str, Any]:
    align = (entry.get("interpretability") or {}).get("alignment", art.get("alignment"))
    out: dict[str, Any] = {"alignment": None if align is None else float(align)}
    x = art.get("x")
    if x is not None and art.get("saliency") is not None and len(x):
        k = min(8, len(x))
        sal = np.abs(np.asarray(art["saliency"][:k])).sum(axis=1, keepdims=True) if np.asarray(x).ndim == 4 else art["saliency"][:k]
        labels = art.get("y")
        out["saliency"] = plots.image_grid(
            [("input", np.asarray(x[:k])), ("saliency", np.asarray(sal))],
            [[f"label {int(labels[i])}" for i in range(k)] if labels is not None else [], []], ["gray", "heat"])
    xa = art.get("gallery_x_adv")
    if xa is not None and len(xa):
        k = min(8, len(xa))
        gx = np.asarray(art["gallery_x"][:k])
        gxa = np.asarray(xa[:k])
        pc, pa = art["gallery_pred_clean"], art["gallery_pred_adv"]
        conf = art.get("gallery_conf_adv")
        out["gallery"] = plots.image_grid(
            [("clean", gx), ("adversarial", gxa), ("perturbation", gxa - gx)],
            [[f"pred {int(pc[i])}" for i in range(k)],
             [f"pred {int(pa[i])}" + (f" ({float(conf[i]):.0%})" if conf is not None else "") for i in range(k)], []],
            ["gray", "gray", "diverging"])
    return out


def render_report(results: dict[str, Any], artifacts: Optional[dict[str, dict[str, Any]]] = None,
                  title: str = "armor robustness report") -> str:
    """Render the report HTML from a results dict (``{"models": {...}, "claims": {...}}`` or one model entry)."""
    from ... import __version__

    models = results["models"] if "models" in results else {results.get("name", "model"): results}
    if not models:
        raise ValueError("the results hold no model to report on")
    artifacts = artifacts or {}
    claims = results.get("claims")
    env = Environment(loader=PackageLoader("armor.app", "report/templates"), autoescape=select_autoescape(["html", "j2"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.globals.update(pct=_pct, num=_num, secs=_secs, pp=_pp)
    figs = {"attacks": plots.attack_bars(models), "curves": plots.curves(models),
            "reliability": plots.reliability(models), "shift": plots.shift_bars(models)}
    equipment = {n: m["equipment"] for n, m in models.items() if m.get("equipment")}
    if equipment:
        figs["equipment"] = plots.grouped_bars(
            {n: {str(k): v for k, v in e.get("per_device", {}).items()} for n, e in equipment.items()},
            "accuracy")
    interp = {n: _interp_figures(models[n], artifacts[n]) for n in models if n in artifacts}
    sections = []
    for domain in domains().values():
        for sec in domain.report:
            ctx = sec.context(models, artifacts)
            if ctx is not None:
                html = Markup(env.from_string(sec.template).render(**ctx))
                sections.append({"id": sec.id, "title": sec.title, "html": html})
    first = next(iter(models.values()))
    labels = sorted({threat_label(m) for m in models.values() if m.get("threat_model")})
    threat = "; ".join(labels)
    suite = ", ".join(first.get("suite", [])) or "–"
    return env.get_template("report.html.j2").render(
        title=title, version=__version__, generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        models=models, claims=claims, claim_cards=_claim_cards(claims) if claims else [], figs=figs,
        equipment=equipment, interp=interp, sections=sections, dataset=results.get("dataset") or first.get("dataset"),
        threat=threat, suite=suite, check_help=CHECK_HELP)


def write_report(results: dict[str, Any], out: Path | str, artifacts: Optional[dict[str, dict[str, Any]]] = None,
                 title: str = "armor robustness report") -> Path:
    from ...utils import atomic_write_text

    out = Path(out)
    atomic_write_text(out, render_report(results, artifacts, title))
    return out
