"""results.json: the file organisations keep, compare across runs and gate CI on.

One model's entry holds ``clean_accuracy``, ``robust_accuracy``, ``per_attack``, ``threat_model``, ``curve``,
``calibration``, ``shift``, ``masking_flags``, ``train_seconds``, ``eval_seconds`` and ``n``, and with a
certificate ``certified_accuracy`` (a lower bound next to ``robust_accuracy``, the attacked upper bound; also in
each ``curve`` point) and ``certificate`` (method, classifier, seconds, gap). A file is
either one entry at the top level (``armor evaluate``) or ``{"models": {name: entry}, "claims": {...}}``
(``armor demo``). Both carry ``schema`` and ``armor_version``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

SCHEMA = "armor.results/1"
REQUIRED = ("clean_accuracy", "robust_accuracy", "per_attack", "threat_model", "n")


def stamp(obj: dict[str, Any]) -> dict[str, Any]:
    from .. import __version__

    return {"schema": SCHEMA, "armor_version": __version__, **obj}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fraction(where: str, key: str, v: Any, optional: bool = False) -> None:
    if v is None and optional:
        return
    if not _is_number(v) or not 0 <= v <= 1:
        raise ValueError(f"{where}: {key} must be a number in [0, 1], got {v!r}; the file is damaged or was "
                         "edited by hand: re-run `armor evaluate`")


def validate_entry(name: str, entry: Any, where: str) -> None:
    """Check one model's entry against the schema; ``ValueError`` names the model, the key and the value."""
    at = f"{where}: model {name!r}"
    if not isinstance(entry, dict):
        raise ValueError(f"{at} must be an object of figures, got {type(entry).__name__}")
    if entry.get("domain") is not None:  # an entry of a workflow domain (agents: returns, not accuracies)
        from ..plugins import workflow_of

        workflow = workflow_of(entry["domain"])
        if workflow is None:
            raise ValueError(f"{at} was measured by the {entry['domain']!r} domain, which is not installed here: "
                             "install the package that provides it")
        if workflow.validate is not None:
            workflow.validate(name, entry, where)
        return
    missing = [k for k in REQUIRED if k not in entry]
    if missing:
        raise ValueError(f"{at} lacks {', '.join(missing)}; the file is damaged or partial")
    _fraction(at, "clean_accuracy", entry["clean_accuracy"])
    _fraction(at, "robust_accuracy", entry["robust_accuracy"])
    if not isinstance(entry["n"], int) or isinstance(entry["n"], bool) or entry["n"] < 1:
        raise ValueError(f"{at}: n must be a positive integer, got {entry['n']!r}")
    per_attack = entry["per_attack"]
    if not isinstance(per_attack, dict):
        raise ValueError(f"{at}: per_attack must map attack names to their figures, got {per_attack!r:.80}")
    for attack, rec in per_attack.items():
        if not isinstance(rec, dict):
            raise ValueError(f"{at}: per_attack[{attack!r}] must be an object, got {rec!r:.80}")
        _fraction(f"{at}, attack {attack!r}", "accuracy", rec.get("accuracy"), optional=True)
        _fraction(f"{at}, attack {attack!r}", "cumulative_accuracy", rec.get("cumulative_accuracy"), optional=True)
    tm = entry["threat_model"]
    if not isinstance(tm, dict) or tm.get("norm") not in ("linf", "l2", "l1"):
        raise ValueError(f"{at}: threat_model must be an object with norm linf, l2 or l1, got {tm!r:.80}")
    eps = tm.get("eps")
    if not (_is_number(eps) and eps >= 0) and not (isinstance(eps, list) and eps
                                                   and all(_is_number(e) and e >= 0 for e in eps)):
        raise ValueError(f"{at}: threat_model.eps must be a number >= 0 or a list of them, got {eps!r:.80}")
    for key in ("curve", "masking_flags"):
        if key in entry and not isinstance(entry[key], list):
            raise ValueError(f"{at}: {key} must be a list, got {entry[key]!r:.80}")
    for key in ("calibration", "shift", "cost", "certificate"):
        if entry.get(key) is not None and not isinstance(entry[key], dict):
            raise ValueError(f"{at}: {key} must be an object, got {entry[key]!r:.80}")
    _validate_certificate(at, entry)


def _validate_certificate(at: str, entry: dict[str, Any]) -> None:
    """A certified accuracy of the model itself is a lower bound on its robust accuracy: it may never exceed what
    the attacks left, overall or at any eps of the curve (a smoothing certificate is about another classifier)."""
    if "certified_accuracy" not in entry:
        return
    _fraction(at, "certified_accuracy", entry["certified_accuracy"])
    cert = entry.get("certificate") or {}
    if not isinstance(cert.get("method"), str):
        raise ValueError(f"{at}: certified_accuracy needs a certificate object naming its method; the file is "
                         "damaged or was edited by hand: re-run `armor evaluate`")
    if cert.get("classifier", "model") != "model":
        return
    if entry["certified_accuracy"] > entry["robust_accuracy"] + 1e-9:
        raise ValueError(f"{at}: certified_accuracy {entry['certified_accuracy']:.4f} is above the attacked "
                         f"robust_accuracy {entry['robust_accuracy']:.4f}, which no sound certificate can be: the file "
                         "is damaged or was edited by hand: re-run `armor evaluate`")
    for point in entry.get("curve") or []:
        if isinstance(point, dict) and "certified_accuracy" in point:
            _fraction(f"{at}, curve at eps {point.get('eps')!r}", "certified_accuracy", point["certified_accuracy"])
            if _is_number(point.get("robust_accuracy")) and point["certified_accuracy"] > point["robust_accuracy"] + 1e-9:
                raise ValueError(f"{at}: at eps {point.get('eps')!r} the curve's certified_accuracy is above its "
                                 "robust_accuracy, which no sound certificate can be: re-run `armor evaluate`")


def load_results(path: Path | str) -> dict[str, Any]:
    """Read and validate a results.json; ``ValueError`` says what is wrong with a damaged or foreign file."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.exists():
        raise ValueError(f"{path} does not exist: run `armor evaluate RUN_DIR --out DIR` to create DIR/results.json")
    try:
        data = json.loads(path.read_text())  # NaN and Infinity parse; validate_entry refuses them by name
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); it may be truncated: re-run `armor evaluate`") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold an armor results object")
    schema = data.get("schema")
    if schema != SCHEMA:
        raise ValueError(f"{path} has schema {schema!r}, this armor ({_version()}) reads {SCHEMA!r}: "
                         f"it was written by armor {data.get('armor_version', 'unknown')} or another tool; "
                         "re-run `armor evaluate` with this version")
    if "models" in data and (not isinstance(data["models"], dict) or not data["models"]):
        raise ValueError(f"{path}: 'models' must be a non-empty object of name -> figures")
    if data.get("claims") is not None and not isinstance(data["claims"], dict):
        raise ValueError(f"{path}: 'claims' must be an object, got {data['claims']!r:.80}")
    for name, entry in models_of(data).items():
        validate_entry(name, entry, str(path))
    return data


def models_of(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    if "models" in data:
        if not isinstance(data["models"], dict) or not data["models"]:
            raise ValueError("results: 'models' must be a non-empty mapping of name -> entry")
        return data["models"]
    return {data.get("name", "model"): data}


def _version() -> str:
    from .. import __version__

    return __version__


def threat_label(entry: dict[str, Any]) -> str:
    """The threat model of an entry as people write it: "linf eps=0.1 (input units)"."""
    spec = entry.get("threat") if isinstance(entry.get("threat"), dict) else None
    tm = entry.get("threat_model") if isinstance(entry.get("threat_model"), dict) else {}
    if spec and _is_number(spec.get("eps")):
        return f"{spec.get('norm', tm.get('norm'))} eps={spec['eps']:g} ({spec.get('eps_unit', 'input units')})"
    eps = tm.get("eps")
    if isinstance(eps, list):
        return f"{tm.get('norm')} eps=per-feature (largest {max(eps):.4g} in raw units)"
    return f"{tm.get('norm')} eps={eps:g}" if _is_number(eps) else f"{tm.get('norm')} eps={eps!r}"


def threat_key(entry: dict[str, Any]) -> str:
    """Two entries were measured under the same threat model iff their keys are equal."""
    tm = entry.get("threat_model") if isinstance(entry.get("threat_model"), dict) else {}
    spec = entry.get("threat") if isinstance(entry.get("threat"), dict) else {}
    return json.dumps({"norm": tm.get("norm", spec.get("norm")), "eps": tm.get("eps", spec.get("eps")),
                       "bounds": tm.get("bounds"), "constraints": tm.get("constraints"),
                       "unit": spec.get("eps_unit") if not tm else None, "domain": entry.get("domain")},
                      sort_keys=True)


def _eps_matches(entry: dict[str, Any], eps: float) -> bool:
    spec = entry.get("threat") if isinstance(entry.get("threat"), dict) else {}
    value = spec.get("eps") if _is_number(spec.get("eps")) else (entry.get("threat_model") or {}).get("eps")
    return _is_number(value) and math.isclose(value, eps, rel_tol=1e-9, abs_tol=1e-12)


def check(data: dict[str, Any], min_robust_accuracy: Optional[float] = None, max_clean_drop: Optional[float] = None,
          baseline: Optional[dict[str, Any]] = None, model: Optional[str] = None, *, norm: Optional[str] = None,
          eps: Optional[float] = None, passes: Optional[list[str]] = None,
          floors: Optional[dict[str, float]] = None) -> list[str]:
    """The CI gate: a list of failures (empty means pass), each naming the model, threat, figure and bound.

    ``norm`` / ``eps`` pin the threat model: results measured under another one fail the gate (a model is not
    robust at eps 0.1 because it held at 0.02). ``max_clean_drop`` compares clean accuracy with a baseline: the
    demo's ``claims`` baseline model, or the ``baseline`` results (a standard model's results.json) when given.
    ``floors`` adds figures of any entry (e.g. ``{"robust_return": 150}`` for an agent); a model without that
    figure fails. ``passes``, if given, receives one line per bound that held.
    """
    models = models_of(data)
    if model is not None:
        if model not in models:
            raise ValueError(f"no model {model!r} in the results; it has {', '.join(models)}")
        models = {model: models[model]}
    elif isinstance(data.get("claims"), dict) and data["claims"].get("hardened") in models:
        models = {data["claims"]["hardened"]: models[data["claims"]["hardened"]]}
    floors = {**({"robust_accuracy": min_robust_accuracy} if min_robust_accuracy is not None else {}),
              **(floors or {})}
    failures: list[str] = []
    held = passes if passes is not None else []
    for name, m in models.items():
        label = f"{name} under {threat_label(m)}, n={m['n']}"
        tm_norm = (m.get("threat") or m.get("threat_model") or {}).get("norm")
        if norm is not None and tm_norm != norm:
            failures.append(f"{label}: measured under the {tm_norm} norm, the gate asks for {norm}")
            continue
        if eps is not None and not _eps_matches(m, eps):
            failures.append(f"{label}: measured at another eps than the gate's eps={eps:g}; evaluate at that eps "
                            f"(`armor evaluate RUN --eps {eps:g}`)")
            continue
        for key, floor in floors.items():
            what = key.replace("_", " ")
            value = m.get(key)
            if not _is_number(value):
                failures.append(f"{label}: has no certified accuracy: evaluate it with a certificate "
                                "(`armor evaluate RUN --certify crown`)" if key == "certified_accuracy" else
                                f"{label}: has no {what} figure (this gate is for another kind of model)")
                continue
            if key == "certified_accuracy":
                cert = m.get("certificate") or {}
                what = f"certified accuracy ({cert.get('method')}" + (
                    f", of the {cert['classifier']} classifier)" if cert.get("classifier", "model") != "model" else ")")
            line = f"{label}: {what} {value:.4f} {'>=' if value >= floor else 'is below'} the floor {floor:.4f}"
            (held if value >= floor else failures).append(line)
        if max_clean_drop is not None:
            if baseline is not None:
                base = next(iter(models_of(baseline).values()))["clean_accuracy"]
            elif isinstance(data.get("claims"), dict) and data["claims"].get("baseline") in data.get("models", {}):
                base = data["models"][data["claims"]["baseline"]]["clean_accuracy"]
            else:
                raise ValueError("--max-clean-drop needs a baseline: pass --baseline STANDARD_RESULTS.json "
                                 "(or check a demo results.json, whose claims name the baseline)")
            drop = base - m["clean_accuracy"]
            line = (f"{label}: clean accuracy dropped by {drop:.4f} ({base:.4f} -> {m['clean_accuracy']:.4f}), "
                    f"{'within' if drop <= max_clean_drop else 'more than'} the allowed {max_clean_drop:.4f}")
            (held if drop <= max_clean_drop else failures).append(line)
    return failures
