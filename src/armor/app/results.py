"""results.json: the file organisations keep, compare across runs and gate CI on.

One model's entry holds ``clean_accuracy``, ``robust_accuracy``, ``per_attack``, ``threat_model``, ``curve``,
``calibration``, ``shift``, ``masking_flags``, ``train_seconds``, ``eval_seconds`` and ``n``. A file is
either one entry at the top level (``armor evaluate``) or ``{"models": {name: entry}, "claims": {...}}``
(``armor demo``). Both carry ``schema`` and ``armor_version``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

SCHEMA = "armor.results/1"
REQUIRED = ("clean_accuracy", "robust_accuracy", "per_attack", "threat_model", "n")


def stamp(obj: dict[str, Any]) -> dict[str, Any]:
    from .. import __version__

    return {"schema": SCHEMA, "armor_version": __version__, **obj}


def load_results(path: Path | str) -> dict[str, Any]:
    """Read and validate a results.json; ``ValueError`` says what is wrong with a damaged or foreign file."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.exists():
        raise ValueError(f"{path} does not exist: run `armor evaluate RUN_DIR --out DIR` to create DIR/results.json")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); it may be truncated: re-run `armor evaluate`") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold an armor results object")
    schema = data.get("schema")
    if schema != SCHEMA:
        raise ValueError(f"{path} has schema {schema!r}, this armor ({_version()}) reads {SCHEMA!r}: "
                         f"it was written by armor {data.get('armor_version', 'unknown')} or another tool; "
                         "re-run `armor evaluate` with this version")
    for name, entry in models_of(data).items():
        missing = [k for k in REQUIRED if k not in entry]
        if missing:
            raise ValueError(f"{path}: model {name!r} lacks {', '.join(missing)}; the file is damaged or partial")
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


def check(data: dict[str, Any], min_robust_accuracy: Optional[float] = None, max_clean_drop: Optional[float] = None,
          baseline: Optional[dict[str, Any]] = None, model: Optional[str] = None) -> list[str]:
    """The CI gate: a list of failures (empty means pass), each naming the figure that fell short.

    ``max_clean_drop`` compares clean accuracy with a baseline: the demo's ``claims`` baseline model, or the
    ``baseline`` results (a standard model's results.json) when given.
    """
    models = models_of(data)
    if model is not None:
        if model not in models:
            raise ValueError(f"no model {model!r} in the results; it has {', '.join(models)}")
        models = {model: models[model]}
    elif "claims" in data and data["claims"].get("hardened") in models:
        models = {data["claims"]["hardened"]: models[data["claims"]["hardened"]]}
    failures = []
    for name, m in models.items():
        if min_robust_accuracy is not None and m["robust_accuracy"] < min_robust_accuracy:
            failures.append(f"{name}: robust accuracy {m['robust_accuracy']:.4f} is below the floor "
                            f"{min_robust_accuracy:.4f} (threat {m['threat_model']})")
        if max_clean_drop is not None:
            if baseline is not None:
                base = next(iter(models_of(baseline).values()))["clean_accuracy"]
            elif "claims" in data and data["claims"].get("baseline") in data.get("models", {}):
                base = data["models"][data["claims"]["baseline"]]["clean_accuracy"]
            else:
                raise ValueError("--max-clean-drop needs a baseline: pass --baseline STANDARD_RESULTS.json "
                                 "(or check a demo results.json, whose claims name the baseline)")
            drop = base - m["clean_accuracy"]
            if drop > max_clean_drop:
                failures.append(f"{name}: clean accuracy dropped by {drop:.4f} ({base:.4f} -> "
                                f"{m['clean_accuracy']:.4f}), more than the allowed {max_clean_drop:.4f}")
    return failures
