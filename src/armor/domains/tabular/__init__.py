"""Tabular robustness under domain constraints: schemas, exact repair, constrained attacks, metrics.

An adversarial example that breaks the domain (a negative amount, a changed age, a half-set one-hot
category) proves nothing. Here a schema (TOML) declares bounds, immutable, integer and monotone features,
one-hot categories and linear relations; :func:`threat_from_schema` turns it into a linf
:class:`armor.ThreatModel` in raw units whose projection repairs every candidate into the feasible set.

    >>> from armor.domains import tabular
    >>> data = tabular.load_tabular("fraud")                  # SYNTHETIC, says so in its name
    >>> threat = data.threat(eps=0.25)                        # budgets in standard deviations per feature
    >>> x_adv = tabular.constrained_pgd(model, x, y, threat)   # every row satisfies every constraint
    >>> tabular.recall_under_attack(model, x, y, threat, positive=1)["recall_under_attack"]

As a plug-in (:data:`DOMAIN`) it contributes the datasets (``--eps`` in standard deviations per feature, the
same unit at training and evaluation time), the ``cpgd``/``cpgd-margin``/``csearch`` attacks and the
``tabular`` suite, the ``cpgd-at`` recipe, the decoder of saved constraints, the tabular measurement
(constraint satisfaction, recall under attack, constrained vs unconstrained, features moved), its report
section and the ``breast-cancer`` and ``fraud`` demos.
"""

from __future__ import annotations

from typing import Any, Optional

from ...plugins import DatasetSpec, Domain, Measurement, ReportSection, lazy
from ...threat import ThreatModel
from .attacks import TABULAR_ATTACKS, constrained_pgd, constrained_search
from .constraints import (TabularConstraints, constraints_from_dict, feature_eps, relaxed_threat,
                          threat_from_schema)
from .datasets import (TABULAR_DATASETS, TabularData, load_tabular, make_synthetic_fraud, mlp_spec, read_table,
                       schema_path)
from .metrics import (CONSTRAINED_SUITE, constrained_robust_accuracy, moved_feature_stats, recall_from_robust,
                      recall_under_attack, tabular_summary, unconstrained_robust_accuracy)
from .recipes import ConstrainedPGDAT
from .schema import Feature, Group, Relation, Schema, as_schema, load_schema

EPS_UNIT = "standard deviations per feature"


def _dataset_spec(name: str, description: str) -> DatasetSpec:
    def loader(split: str, data_dir: Any = None):
        data = load_tabular(name, data_dir)
        return data.train if split == "train" else data.test

    def threat(norm: str, eps: float, data_dir: Any = None) -> ThreatModel:
        if str(norm).lower() not in ("linf", "inf"):
            raise ValueError(f"tabular datasets use per-feature linf budgets ({EPS_UNIT}); got --norm {norm}")
        return load_tabular(name, data_dir).threat(eps)

    def model_options(train, data_dir: Any = None) -> dict:
        spec = load_tabular(name, data_dir).model_spec()  # standardise with the schema's fitted statistics
        return {"mean": spec["mean"], "std": spec["std"]}

    loader.__name__ = f"load_{name.replace('-', '_')}"
    return DatasetSpec(loader, description, default_model="mlp", threat=threat, eps_unit=EPS_UNIT,
                       model_options=model_options, default_suite="tabular")


def _measure(model, x, y, threat, *, result=None, seed: int = 0, batch_size: int = 500,
             **_: Any) -> tuple[dict, dict]:
    """The results.json ``tabular`` entry, from the worst-case evaluation already run (no second run of the
    constrained suite): constraint satisfaction, recall under attack, constrained vs unconstrained accuracy."""
    cons = threat.constraints
    if not isinstance(cons, TabularConstraints) or result is None or result.x_adv is None:
        return {}, {}
    ok = cons.satisfied(result.x_adv, x) & threat.contains(result.x_adv, x)
    satisfaction = float(ok.float().mean())
    positive = cons.schema.positive_class
    summary = tabular_summary(model, x, y, threat, positive=positive, seed=seed, result=result)
    recall = summary.get("recall") or {}
    tab = {
        "constraint_satisfaction": satisfaction,
        "recall_clean": recall.get("clean_recall"),
        "recall_attacked": recall.get("recall_under_attack"),
        "positive_class": positive,
        "n_positive": int((y == positive).sum()) if positive is not None else None,
        "constrained_robust_accuracy": summary["constrained_robust_accuracy"],
        "unconstrained_robust_accuracy": summary["unconstrained_robust_accuracy"],
        "moved": [{"feature": f, "share_moved": v["moved"], "mean_abs_change": v["mean_abs_std"],
                   "max_abs_change": v["max_abs_std"]}
                  for f, v in (summary["moved_features"].get("per_feature") or {}).items()],
        "categorical_switches": summary["moved_features"].get("categorical_switches"),
        "synthetic": "SYNTHETIC" in (cons.schema.name or "").upper(),
    }
    return {"constraint_satisfaction": satisfaction, "tabular": tab}, {}


_SECTION = """
  <h2>Tabular: what the attacker moved</h2>
  <p class="lead">Every adversarial example satisfies the schema's constraints (bounds, immutable, integer, categorical, monotone, relations). The table shows which features moved and by how much.</p>
  {% for name, t in tabular.items() %}
  <h3>{{ name }}</h3>
  <table>
    <tr><th class="num">constraint satisfaction</th><th class="num">positive-class recall, clean</th><th class="num">under attack</th><th class="num">constrained robust acc.</th><th class="num">unconstrained robust acc.</th></tr>
    <tr><td class="num">{{ pct(t.constraint_satisfaction) }}</td><td class="num">{{ t.ci.recall_clean }}</td><td class="num">{{ t.ci.recall_attacked }}</td><td class="num">{{ t.ci.constrained_robust_accuracy }}</td><td class="num">{{ t.ci.unconstrained_robust_accuracy }}</td></tr>
  </table>
  <p class="muted">In brackets: 95% Wilson intervals over the {{ t.n }} test points (recall: over the {{ t.n_positive if t.n_positive is not none else "?" }} positives).</p>
  {% if t.moved %}
  <table>
    <tr><th>feature</th><th class="num">share of examples moved</th><th class="num">mean |change| (std)</th><th class="num">max |change| (std)</th></tr>
    {% for f in t.moved %}<tr><td>{{ f.feature }}</td><td class="num">{{ pct(f.share_moved) }}</td><td class="num">{{ num(f.mean_abs_change, 4) }}</td><td class="num">{{ num(f.max_abs_change, 4) }}</td></tr>{% endfor %}
  </table>
  {% endif %}
  {% endfor %}
"""


def _section_context(models: dict, artifacts: dict) -> Optional[dict]:
    from ...app.claims import accuracy_interval, format_pct_interval

    tabular = {}
    for name, m in models.items():
        t = m.get("tabular")
        if not isinstance(t, dict):
            continue
        n, n_pos = m.get("n"), t.get("n_positive")
        ci = {k: format_pct_interval(t.get(k), accuracy_interval(t.get(k), n))
              for k in ("constrained_robust_accuracy", "unconstrained_robust_accuracy")}
        ci.update({k: format_pct_interval(t.get(k), accuracy_interval(t.get(k), n_pos))
                   for k in ("recall_clean", "recall_attacked")})
        tabular[name] = {**t, "n": n, "ci": ci}
    return {"tabular": tabular} if tabular else None


DOMAIN = Domain(
    name="tabular",
    description="tables in raw units under domain constraints (schemas): fraud, credit, medical",
    datasets={name: _dataset_spec(name, desc) for name, (_, desc) in TABULAR_DATASETS.items()},
    attacks=TABULAR_ATTACKS,
    suites={"tabular": {"linf": list(CONSTRAINED_SUITE)}},
    recipes={ConstrainedPGDAT.name: ConstrainedPGDAT},
    constraints={"tabular": constraints_from_dict},
    measurements=(Measurement("tabular", _measure),),
    report=(ReportSection("tabular", "Tabular", _SECTION, _section_context),),
    demos={"breast-cancer": lazy("armor.domains.tabular.demo:run_tabular_demo", "breast-cancer", description=(
               "Wisconsin breast cancer under its schema's constraints: standard vs pgd-at vs cpgd-at (about 2 "
               "minutes)")),
           "fraud": lazy("armor.domains.tabular.demo:run_tabular_demo", "fraud", description=(
               "a SYNTHETIC imbalanced fraud table with realistic constraints: recall under attack (about 5 "
               "minutes)"))},
)

__all__ = ["ConstrainedPGDAT", "DOMAIN", "EPS_UNIT", "Feature", "Group", "Relation", "Schema", "TABULAR_ATTACKS",
           "TABULAR_DATASETS", "TabularConstraints", "TabularData", "as_schema", "constrained_pgd",
           "constrained_robust_accuracy", "constrained_search", "constraints_from_dict", "feature_eps",
           "load_schema", "load_tabular", "make_synthetic_fraud", "mlp_spec", "moved_feature_stats", "read_table",
           "recall_from_robust", "recall_under_attack", "relaxed_threat", "schema_path", "tabular_summary",
           "threat_from_schema", "unconstrained_robust_accuracy"]
