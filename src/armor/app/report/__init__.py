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
from markupsafe import Markup, escape

from ...metrics import MASKING_REGISTRY
from ...plugins import domains
from ..claims import (CLAIMS, INTERVAL_METHODS, accuracy_interval, attack_label, claim_intervals, column_labels,
                      contains_zero, recommend, threat_text, verdict_line)
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


def _ci(p: Any, n: Any) -> Markup:
    """An accuracy and, after it, its 95% Wilson interval in a smaller type: ``79.6% [76.0, 82.8]``."""
    iv = accuracy_interval(p, n)
    if iv is None:
        return Markup(escape(_pct(p)))
    return Markup('{}<span class="ci"> [{:.1f}, {:.1f}]</span>').format(_pct(p), iv[0] * 100, iv[1] * 100)


def _claim_cards(claims: dict[str, Any], models: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    intervals = dict(claims.get("intervals") or {})
    if not intervals.get("claims") and claims.get("baseline") in models and claims.get("hardened") in models:
        intervals = claim_intervals(models, claims["baseline"], claims["hardened"])  # a results.json from before
    per_claim = intervals.get("claims") or {}
    cards = []
    for c in CLAIMS:
        value = claims.get(c.key)
        if not isinstance(value, (int, float)):
            continue
        iv = per_claim.get(c.key)
        iv = (float(iv[0]), float(iv[1])) if isinstance(iv, (list, tuple)) and len(iv) == 2 else None
        cls = c.verdict(value, iv)
        if c.good_if_positive is None:
            note = "exact counts: no interval" if c.key == "pass_ratio" else "one timing each: no interval"
        elif iv is None:
            note = "no interval: its number of points is not recorded"
        elif contains_zero(iv):
            note = "within noise: the 95% interval contains 0"
        else:
            note = "the 95% interval excludes 0"
        cards.append({"label": c.label, "value": c.format(value).replace("x", "×"), "detail": c.detail, "cls": cls,
                      "interval": c.format_interval(iv).replace("x", "×") if iv else "", "note": note})
    return cards


def _attacked_label(entry: dict[str, Any]) -> str:
    """What the calibration's attacked set is: ``PGD-10 (linf eps=0.1)``, from the calibration entry."""
    cal = entry.get("calibration") or {}
    info = cal.get("attack") or {}
    name = info.get("name")
    tm = info.get("threat_model") or {}
    budget = f"{tm.get('norm')} eps={tm['eps']:g}" if isinstance(tm.get("eps"), (int, float)) else threat_text(entry)
    if name == "pgd":
        steps = (info.get("kwargs") or {}).get("steps", 10)
        return f"PGD-{steps} ({budget})"
    if name == "given":
        return "given adversarial inputs"
    return f"{name} ({budget})" if name else "attacked"


def _curve_suite(models: dict[str, dict[str, Any]]) -> str:
    names: list[str] = []
    for m in models.values():
        for p in m.get("curve") or []:
            names += [a for a in p.get("per_attack") or {} if a not in names]
    return ", ".join(names)


def _expected_random_cosine(d: int) -> float:
    """E|cos| between a fixed vector and a uniformly random direction in d dimensions (about sqrt(2 / (pi d)))."""
    return math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)


def _interp_figures(entry: dict[str, Any], art: dict[str, Any]) -> dict[str, Any]:
    info = entry.get("interpretability") or {}
    align = info.get("alignment", art.get("alignment"))
    cos = info.get("cosine_alignment", art.get("cosine_alignment"))
    out: dict[str, Any] = {"alignment": None if align is None else float(align),
                           "cosine": None if cos is None else float(cos)}
    x = art.get("x")
    if x is not None and np.asarray(x).ndim >= 2 and len(x):
        out["dim"] = int(np.prod(np.asarray(x).shape[1:]))
    if x is not None and art.get("saliency") is not None and len(x):
        k = min(8, len(x))
        sal = np.abs(np.asarray(art["saliency"][:k])).sum(axis=1, keepdims=True) if np.asarray(x).ndim == 4 else art["saliency"][:k]
        labels = art.get("y")
        out["saliency"] = plots.image_grid(
            [("input", np.asarray(x[:k])), ("saliency", np.asarray(sal))],
            [[f"true {int(labels[i])}" for i in range(k)] if labels is not None else [], []], ["gray", "heat"])
    xa = art.get("gallery_x_adv")
    if xa is not None and len(xa):
        k = min(8, len(xa))
        gx = np.asarray(art["gallery_x"][:k])
        gxa = np.asarray(xa[:k])
        pc, pa = art["gallery_pred_clean"], art["gallery_pred_adv"]
        conf = art.get("gallery_conf_adv")
        gy = art.get("gallery_y")
        truth = [f"true {int(gy[i])}, " if gy is not None and len(gy) > i else "" for i in range(k)]
        out["gallery"] = plots.image_grid(
            [("clean", gx), ("adversarial", gxa), ("perturbation", gxa - gx)],
            [[f"{truth[i]}pred {int(pc[i])}" for i in range(k)],
             [f"pred {int(pa[i])}" + (f" ({float(conf[i]):.0%})" if conf is not None else "") for i in range(k)], []],
            ["gray", "gray", "diverging"])
        out["gallery_has_truth"] = gy is not None
    return out


def _escalation(entry: dict[str, Any]) -> Optional[dict[str, Any]]:
    """What the adaptive escalation (armor.adaptive, run when a masking flag called for it) did, in words."""
    a = entry.get("adaptive")
    if not a:
        return None
    layers = [f"{lay['module'] or 'the input'} ({lay['backward']} backward)" for lay in a.get("layers") or []]
    how = []
    for esc in a.get("escalations") or []:
        if esc == "bpda" and layers:
            how.append("BPDA through " + ", ".join(layers))
        elif esc == "eot" and a.get("draws"):
            how.append(f"EOT over {a['draws'].get('eot')} draws per gradient")
        else:
            how.append({"bpda": "BPDA", "eot": "EOT", "transfer": "transfer from a surrogate"}.get(esc, esc))
    broke = [(name, rec.get("broke") or 0) for name, rec in (a.get("per_attack") or {}).items()]
    draws = (a.get("draws") or {}).get("score")
    return {"flags": ", ".join(a.get("triggered_by") or []) or "named modules", "how": "; ".join(how),
            "before": a.get("suite_robust_accuracy"), "after": a.get("robust_accuracy"),
            "broke": [f"{name} {b:g}" for name, b in broke],
            "expected": f"expected accuracy over {draws} draws at each point's worst input" if draws else None}


def render_report(results: dict[str, Any], artifacts: Optional[dict[str, dict[str, Any]]] = None,
                  title: str = "armor robustness report") -> str:
    """Render the report HTML from a results dict (``{"models": {...}, "claims": {...}}`` or one model entry)."""
    from ... import __version__

    every = results["models"] if "models" in results else {results.get("name", "model"): results}
    if not every:
        raise ValueError("the results hold no model to report on")
    # The core sections are about classifiers; entries of a workflow domain (agents: returns) appear in their
    # domain's own section only.
    models = {n: m for n, m in every.items() if m.get("domain") is None}
    artifacts = artifacts or {}
    claims = results.get("claims")
    env = Environment(loader=PackageLoader("armor.app", "report/templates"), autoescape=select_autoescape(["html", "j2"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.globals.update(pct=_pct, num=_num, secs=_secs, pp=_pp, ci=_ci)
    first = next(iter(models.values()), {})
    labels = sorted({threat_label(m) for m in every.values() if m.get("threat_model") or m.get("threat")})
    threat = "; ".join(labels)
    attacked = {n: _attacked_label(m) for n, m in models.items() if m.get("calibration")}
    figs = {"attacks": plots.attack_bars(models, threat), "curves": plots.curves(models),
            "radius": plots.radius_curves(models),
            "reliability": plots.reliability(models, attacked), "shift": plots.shift_bars(models)} if models else {}
    equipment = {n: m["equipment"] for n, m in models.items() if m.get("equipment")}
    if equipment:
        figs["equipment"] = plots.grouped_bars(
            {n: {str(k): v for k, v in e.get("per_device", {}).items()} for n, e in equipment.items()},
            "accuracy")
    interp = {n: _interp_figures(models[n], artifacts[n]) for n in models if n in artifacts}
    sections = []
    for domain in domains().values():
        for sec in domain.report:
            ctx = sec.context(every, artifacts)
            if ctx is not None:
                html = Markup(env.from_string(sec.template).render(**ctx))
                sections.append({"id": sec.id, "title": sec.title, "html": html})
    suite = ", ".join(first.get("suite", [])) or "–"
    matrix = None
    if claims and claims.get("attack_matrix"):
        mat = claims["attack_matrix"]
        l2_eps = ((results.get("demo") or {}).get("preset") or {}).get("l2_eps")
        row_n = mat.get("n") or {}
        matrix = {"columns": mat["columns"], "rows": mat["rows"],
                  "labels": column_labels(mat["columns"], models, l2_eps),
                  "n": {row: row_n.get(row, first.get("n")) for row in mat["rows"]}}
    return env.get_template("report.html.j2").render(
        title=title, version=__version__, generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        models=models, n_models=len(every), claims=claims, claim_cards=_claim_cards(claims, models) if claims else [], figs=figs,
        equipment=equipment, interp=interp, sections=sections, dataset=results.get("dataset") or first.get("dataset") or next(iter(every.values())).get("env"),
        threat=threat, suite=suite, check_help=CHECK_HELP, matrix=matrix, recommendation=recommend(models),
        verdicts={n: verdict_line(m) for n, m in models.items()}, attacked=attacked,
        attack_labels={n: {a: attack_label(a, m) for a in m.get("per_attack", {})} for n, m in models.items()},
        curve_suite=_curve_suite(models), methods=INTERVAL_METHODS, min_bin=plots.MIN_BIN,
        random_cosine={n: _expected_random_cosine(it["dim"]) for n, it in interp.items() if it.get("dim")},
        certified={n: m for n, m in models.items() if m.get("certified_accuracy") is not None},
        escalations={n: e for n, m in models.items() if (e := _escalation(m)) is not None})


def write_report(results: dict[str, Any], out: Path | str, artifacts: Optional[dict[str, dict[str, Any]]] = None,
                 title: str = "armor robustness report") -> Path:
    from ...utils import atomic_write_text

    out = Path(out)
    atomic_write_text(out, render_report(results, artifacts, title))
    return out
