"""Tabular robustness under domain constraints: schemas, exact repair, constrained attacks, metrics.

An adversarial example that breaks the domain (a negative amount, a changed age, a half-set one-hot
category) proves nothing. Here a schema (TOML) declares bounds, immutable, integer and monotone features,
one-hot categories and linear relations; :func:`threat_from_schema` turns it into a linf
:class:`armor.ThreatModel` in raw units whose projection repairs every candidate into the feasible set.

    >>> from armor import tabular
    >>> data = tabular.load_tabular("fraud")                  # SYNTHETIC, says so in its name
    >>> threat = data.threat(eps=0.25)                        # budgets in standard deviations per feature
    >>> x_adv = tabular.constrained_pgd(model, x, y, threat)   # every row satisfies every constraint
    >>> tabular.recall_under_attack(model, x, y, threat, positive=1)["recall_under_attack"]
"""

from __future__ import annotations

from .attacks import TABULAR_ATTACKS, constrained_pgd, constrained_search
from .attacks import register as register_attacks
from .constraints import (TabularConstraints, constraints_from_dict, feature_eps, relaxed_threat,
                          threat_from_schema)
from .datasets import (TABULAR_DATASETS, TabularData, load_tabular, make_synthetic_fraud, mlp_spec, read_table,
                       schema_path)
from .datasets import register as register_datasets
from .metrics import (constrained_robust_accuracy, moved_feature_stats, recall_under_attack, tabular_summary,
                      unconstrained_robust_accuracy)
from .recipes import ConstrainedPGDAT
from .recipes import register as register_recipes
from .schema import Feature, Group, Relation, Schema, as_schema, load_schema


def register() -> None:
    """Make the tabular attacks, datasets and the ``cpgd-at`` recipe known by name to :mod:`armor.attacks`,
    :mod:`armor.data` and :mod:`armor.training` (idempotent; existing entries are kept)."""
    register_attacks()
    register_datasets()
    register_recipes()


__all__ = ["ConstrainedPGDAT", "Feature", "Group", "Relation", "Schema", "TABULAR_ATTACKS", "TABULAR_DATASETS", "TabularConstraints",
           "TabularData", "as_schema", "constrained_pgd", "constrained_robust_accuracy", "constrained_search",
           "constraints_from_dict", "feature_eps", "load_schema", "load_tabular", "make_synthetic_fraud",
           "mlp_spec", "moved_feature_stats", "read_table", "recall_under_attack", "register",
           "register_attacks", "register_datasets", "register_recipes", "relaxed_threat", "schema_path", "tabular_summary",
           "threat_from_schema", "unconstrained_robust_accuracy"]
