"""Tabular schemas: what each feature is and which values the domain allows, declared in TOML.

A schema lists the features in column order and the linear relations between them::

    name = "fraud"
    eps = 0.25                           # default budget, in standard deviations of each feature

    [[feature]]
    name = "account_age_days"
    type = "integer"                     # continuous (default) | integer | categorical
    lower = 0                            # a number or "observed" (fitted from data); omitted: unbounded
    mutable = false                      # immutable: the attacker cannot change it

    [[feature]]
    name = "n_prev_transactions"
    type = "integer"
    lower = 0
    monotone = "increase"                # the attacker can only add to it

    [[feature]]
    name = "merchant"
    type = "categorical"                 # expands to one-hot columns "merchant=grocery", ...
    categories = ["grocery", "travel"]   # a move switches the whole category

    [[relation]]
    type = "equality"                    # target = sum(coef * term) + constant
    target = "total"                     # the dependent feature: recomputed, never attacked directly
    terms = { goods = 1.0, shipping = 1.0 }

    [[relation]]
    type = "inequality"                  # sum(coef * term) <= bound  (sense = ">=" flips it)
    terms = { shipping = 1.0, goods = -1.0 }
    bound = 0.0

Per feature, ``eps_scale`` multiplies the budget and ``std`` fixes the unit of eps in raw units (fitted from
the training split when omitted). Inputs are raw feature values: the model standardises them itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import numpy as np

try:  # Python >= 3.11
    import tomllib as _toml
except ImportError:  # pragma: no cover - Python 3.10: tomli is a dependency there (pyproject.toml)
    import tomli as _toml  # type: ignore[no-redef]

OBSERVED = "observed"
KINDS = ("continuous", "integer", "categorical")
RELATION_TOL = 1e-5  # relative tolerance for linear relations: float32 sums of a few terms round by ~1e-7

_TOP_KEYS = {"name", "description", "label", "positive_class", "eps", "feature", "relation"}
_FEATURE_KEYS = {"name", "type", "lower", "upper", "mutable", "monotone", "eps_scale", "std", "categories"}
_RELATION_KEYS = {"type", "name", "target", "terms", "constant", "sense", "bound"}


@dataclass(frozen=True)
class Feature:
    """One model input column. Categorical features appear as their one-hot ``members`` (kind ``"onehot"``)."""

    name: str
    kind: str = "continuous"  # continuous | integer | onehot
    lower: Union[float, str] = -math.inf
    upper: Union[float, str] = math.inf
    mutable: bool = True
    monotone: int = 0  # +1: only up, -1: only down, 0: both ways
    eps_scale: float = 1.0
    std: Optional[float] = None
    group: Optional[str] = None  # the categorical feature a one-hot member belongs to


@dataclass(frozen=True)
class Group:
    """A categorical feature: its one-hot member columns (in order) and whether the attacker may switch it."""

    name: str
    categories: tuple[str, ...]
    members: tuple[str, ...]
    mutable: bool = True


@dataclass(frozen=True)
class Relation:
    """A linear relation. ``equality``: ``target = sum(coef * term) + constant``; ``inequality``:
    ``sum(coef * term) <= bound`` (a ``>=`` relation is stored negated)."""

    kind: str
    terms: tuple[tuple[str, float], ...]
    name: str = ""
    target: Optional[str] = None
    constant: float = 0.0
    bound: float = 0.0


def _err(source: str, msg: str) -> ValueError:
    return ValueError(f"schema {source}: {msg}")


def _number(v: Any, what: str, source: str, allow_observed: bool = False) -> Union[float, str]:
    if allow_observed and v == OBSERVED:
        return OBSERVED
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        extra = f' or "{OBSERVED}"' if allow_observed else ""
        raise _err(source, f"{what} must be a number{extra}, got {v!r}")
    f = float(v)
    if math.isnan(f):
        raise _err(source, f"{what} is NaN")
    return f


@dataclass(frozen=True)
class Schema:
    """Features (model input columns in order), categorical groups and linear relations of a table.

    Build one with :func:`load_schema` (TOML) or :meth:`from_dict`; every inconsistency is a ``ValueError``
    naming the feature or relation at fault. ``fit`` fills ``"observed"`` bounds and missing ``std`` from data.
    """

    name: str
    features: tuple[Feature, ...]
    groups: tuple[Group, ...] = ()
    relations: tuple[Relation, ...] = ()
    description: str = ""
    label: Optional[str] = None
    positive_class: Optional[int] = None
    eps: Optional[float] = None
    source: str = field(default="<dict>", compare=False)

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> "Schema":
        """Parse and validate a schema in the TOML layout (see the module docstring)."""
        if not isinstance(d, dict):
            raise _err(source, f"expected a table, got {type(d).__name__}")
        unknown = set(d) - _TOP_KEYS
        if unknown:
            raise _err(source, f"unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
        raw_features = d.get("feature")
        if not isinstance(raw_features, list) or not raw_features:
            raise _err(source, "declare at least one [[feature]] table")
        features: list[Feature] = []
        groups: list[Group] = []
        for i, f in enumerate(raw_features):
            _parse_feature(f, i, source, features, groups)
        names = [f.name for f in features]
        seen: set[str] = set()
        for n in names:
            if n in seen:
                raise _err(source, f"feature {n!r} is declared twice")
            seen.add(n)
        eps = d.get("eps")
        if eps is not None:
            eps = _number(eps, "eps", source)
            if not math.isfinite(eps) or eps < 0:
                raise _err(source, f"eps must be finite and >= 0, got {eps}")
        pos = d.get("positive_class")
        if pos is not None and (isinstance(pos, bool) or not isinstance(pos, int) or pos < 0):
            raise _err(source, f"positive_class must be a class index >= 0, got {pos!r}")
        label = d.get("label")
        if label is not None and not isinstance(label, str):
            raise _err(source, f"label must be a column name, got {label!r}")
        relations = tuple(_parse_relation(r, i, source, set(names)) for i, r in enumerate(d.get("relation", []) or []))
        schema = cls(str(d.get("name", Path(source).stem)), tuple(features), tuple(groups), relations,
                     str(d.get("description", "")), label, pos, eps, source)
        schema._check_relations()
        return schema

    # ------------------------------------------------------------------ structure
    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def n_features(self) -> int:
        return len(self.features)

    def index(self, name: str) -> int:
        try:
            return self.feature_names.index(name)
        except ValueError:
            raise ValueError(f"schema {self.source}: no feature {name!r}") from None

    def feature(self, name: str) -> Feature:
        return self.features[self.index(name)]

    @property
    def dependents(self) -> list[str]:
        """Features recomputed from others by an equality relation."""
        return [r.target for r in self.relations if r.kind == "equality" and r.target is not None]

    @property
    def is_fitted(self) -> bool:
        """True when every bound is a number (``"observed"`` ones have been fitted from data)."""
        return all(not isinstance(b, str) for f in self.features for b in (f.lower, f.upper))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds per feature (float64, +-inf where unbounded); needs a fitted schema."""
        self._require_fitted("bounds")
        return (np.array([f.lower for f in self.features], dtype=np.float64),
                np.array([f.upper for f in self.features], dtype=np.float64))

    def _require_fitted(self, what: str) -> None:
        if not self.is_fitted:
            missing = [f.name for f in self.features if isinstance(f.lower, str) or isinstance(f.upper, str)]
            raise ValueError(f"schema {self.source}: {what} needs numeric bounds, but {missing[:5]} use "
                             f"\"{OBSERVED}\"; call schema.fit(x_train) first")

    # ------------------------------------------------------------------ fitting
    def fit(self, x_train: Any, x_all: Any = None) -> "Schema":
        """A copy with ``"observed"`` bounds and missing ``std`` filled from data.

        Arguments:
            x_train: training rows (N×D, raw units); missing ``std`` values come from them (population std).
            x_all: rows whose range defines ``"observed"`` bounds (default ``x_train``). Bounds declare the
                domain, not a learned statistic, so loaders pass every row of the file: otherwise a test row
                outside the training range would lie outside the threat model's bounds.
        Returns:
            The fitted :class:`Schema` (relations re-checked against the new bounds).
        """
        xt = _as_array(x_train, self.n_features, f"schema {self.source}: x_train")
        xa = xt if x_all is None else _as_array(x_all, self.n_features, f"schema {self.source}: x_all")
        if xt.shape[0] == 0 or xa.shape[0] == 0:
            raise _err(self.source, "cannot fit on zero rows")
        std = xt.std(axis=0)
        lo, hi = xa.min(axis=0), xa.max(axis=0)
        out = []
        for j, f in enumerate(self.features):
            lower = float(lo[j]) if f.lower == OBSERVED else f.lower
            upper = float(hi[j]) if f.upper == OBSERVED else f.upper
            s = f.std if f.std is not None else (float(std[j]) if f.kind != "onehot" else 1.0)
            out.append(replace(f, lower=lower, upper=upper, std=s))
        fitted = replace(self, features=tuple(out))
        fitted._check_relations()
        return fitted

    # ------------------------------------------------------------------ data validation
    def validate(self, x: Any, where: str = "data", tol: float = RELATION_TOL) -> None:
        """Raise ``ValueError`` naming the first row and feature (or relation) the data violates.

        Checks bounds, integer values, one-hot groups and relations (to relative tolerance ``tol``);
        clean data must be feasible, since an attack's fallback is the clean point itself.
        """
        self._require_fitted("validate")
        x = _as_array(x, self.n_features, f"{where}")
        if not np.isfinite(x).all():
            r, c = np.argwhere(~np.isfinite(x))[0]
            raise ValueError(f"{where}: row {r}, feature {self.features[c].name!r} is not finite ({x[r, c]})")
        lo, hi = self.bounds()
        # data stored in float32 (as models see them) may round a declared bound such as 0.1 outwards
        lo = np.minimum(lo, lo.astype(np.float32).astype(np.float64))
        hi = np.maximum(hi, hi.astype(np.float32).astype(np.float64))
        checks = (((x < lo) | (x > hi), "outside its bounds"),
                  ((x != np.round(x)) & self._kind_mask("integer")[None, :], "not an integer, in"))
        for mask, what in checks:
            if mask.any():
                r, c = np.argwhere(mask)[0]
                f = self.features[c]
                raise ValueError(f"{where}: row {r}, feature {f.name!r} = {x[r, c]:g} is {what} "
                                 f"[{f.lower:g}, {f.upper:g}] ({self.source})")
        for g in self.groups:
            idx = [self.index(m) for m in g.members]
            block = x[:, idx]
            bad = ~(np.isin(block, (0.0, 1.0)).all(axis=1) & (block.sum(axis=1) == 1))
            if bad.any():
                r = int(np.flatnonzero(bad)[0])
                raise ValueError(f"{where}: row {r}, categorical {g.name!r} is not one-hot ({block[r].tolist()})")
        for rel, resid, scale in self._residuals(x):
            bad = (np.abs(resid) > tol * scale) if rel.kind == "equality" else (resid > tol * scale)
            if bad.any():
                r = int(np.flatnonzero(bad)[0])
                raise ValueError(f"{where}: row {r} violates relation {rel.name!r} (residual {resid[r]:.6g})")

    def _kind_mask(self, kind: str) -> np.ndarray:
        return np.array([f.kind == kind for f in self.features])

    def _residuals(self, x: np.ndarray) -> Iterable[tuple[Relation, np.ndarray, np.ndarray]]:
        """Per relation: the residual (equality: target - rhs; inequality: lhs - bound) and its scale."""
        for rel in self.relations:
            idx = [self.index(n) for n, _ in rel.terms]
            coef = np.array([c for _, c in rel.terms])
            contrib = x[:, idx] * coef
            if rel.kind == "equality":
                t = x[:, self.index(rel.target)]
                resid = t - contrib.sum(axis=1) - rel.constant
                scale = 1.0 + np.abs(t) + np.abs(contrib).sum(axis=1) + abs(rel.constant)
            else:
                resid = contrib.sum(axis=1) - rel.bound
                scale = 1.0 + np.abs(contrib).sum(axis=1) + abs(rel.bound)
            yield rel, resid, scale

    # ------------------------------------------------------------------ consistency of relations
    def _check_relations(self) -> None:
        """Structural rules, and a relation that no point inside the bounds can satisfy, are errors."""
        targets: set[str] = set()
        eq_terms: set[str] = set()
        for rel in self.relations:
            if rel.kind == "equality":
                eq_terms.update(n for n, _ in rel.terms)
        for rel in self.relations:
            if rel.kind != "equality":
                continue
            t = self.feature(rel.target)
            if rel.target in targets:
                raise _err(self.source, f"feature {rel.target!r} is the target of two equalities; keep one")
            targets.add(rel.target)
            if rel.target in eq_terms:
                raise _err(self.source, f"relation {rel.name!r}: dependent feature {rel.target!r} is also a term "
                                        "of an equality; write every equality in terms of independent features")
            if t.kind == "onehot":
                raise _err(self.source, f"relation {rel.name!r}: a one-hot column ({rel.target!r}) cannot be a "
                                        "dependent feature")
            if not t.mutable and any(self.feature(n).mutable for n, _ in rel.terms):
                raise _err(self.source, f"relation {rel.name!r}: dependent feature {rel.target!r} is immutable but "
                                        "its terms are not; mark it mutable (its move is implied by its terms) or "
                                        "make its terms immutable")
            integral = (all(self.feature(n).kind in ("integer", "onehot") and float(c).is_integer() for n, c in rel.terms)
                        and float(rel.constant).is_integer())
            if t.kind == "integer" and not integral:
                raise _err(self.source, f"relation {rel.name!r}: integer feature {rel.target!r} can only depend on "
                                        "integer features with integer coefficients and constant")
            if t.eps_scale != 1.0:
                raise _err(self.source, f"feature {rel.target!r}: a dependent feature's budget is implied by its "
                                        "terms; remove eps_scale")
        if self.is_fitted:
            self._check_each_relation()
        self._check_jointly()

    def _check_each_relation(self) -> None:
        """A relation that no point inside the (fitted) bounds can satisfy on its own is an error."""
        for rel in self.relations:
            lo_sum, hi_sum = 0.0, 0.0
            for n, c in rel.terms:
                f = self.feature(n)
                a, b = (f.lower * c, f.upper * c) if c > 0 else (f.upper * c, f.lower * c)
                lo_sum, hi_sum = lo_sum + a, hi_sum + b
            if rel.kind == "inequality":
                if lo_sum > rel.bound:
                    raise _err(self.source, f"relation {rel.name!r} cannot be satisfied: its smallest value "
                                            f"inside the bounds is {lo_sum:g} > {rel.bound:g}")
            else:
                t = self.feature(rel.target)
                if lo_sum + rel.constant > t.upper or hi_sum + rel.constant < t.lower:
                    raise _err(self.source, f"relation {rel.name!r} cannot be satisfied: its right-hand side ranges "
                                            f"over [{lo_sum + rel.constant:g}, {hi_sum + rel.constant:g}] but "
                                            f"{rel.target!r} is bounded to [{t.lower:g}, {t.upper:g}]")

    def _check_jointly(self) -> None:
        """Relations that each hold somewhere but never all at once (within the bounds, integers and one-hot
        groups) are an error naming a smallest conflicting set: otherwise every attack's repair would fall back
        to infeasible points. ``"observed"`` bounds count as unbounded until fitted."""
        conflict = _conflicting_relations(self)
        if conflict is None:
            return
        names = ", ".join(repr(r.name) for r in conflict)
        used = list(dict.fromkeys([n for r in conflict for n, _ in r.terms] +
                                  [r.target for r in conflict if r.target is not None]))
        extra = [g.name for g in self.groups if set(g.members) & set(used)]
        bounds = "; ".join(f"{n} in [{_fmt(self.feature(n).lower)}, {_fmt(self.feature(n).upper)}]"
                           + (" integer" if self.feature(n).kind == "integer" else "") for n in used[:6]
                           if self.feature(n).kind != "onehot")
        what = (f" and the one-hot group(s) {extra} (exactly one category set)" if extra else "")
        head = (f"relation {names} cannot hold: no point within the bounds{what} satisfies it" if len(conflict) == 1
                else f"relations {names} cannot all hold at once: no point within the bounds{what} satisfies them "
                     "together")
        raise _err(self.source, f"{head} ({bounds or 'no numeric features'}); fix or drop "
                                f"{'it' if len(conflict) == 1 else 'one of them'}")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form in the TOML layout (unbounded sides are omitted); ``from_dict`` inverts it."""
        feats: list[dict[str, Any]] = []
        done: set[str] = set()
        for f in self.features:
            if f.group is not None:
                if f.group in done:
                    continue
                done.add(f.group)
                g = next(g for g in self.groups if g.name == f.group)
                feats.append({"name": g.name, "type": "categorical", "categories": list(g.categories),
                              "mutable": g.mutable})
                continue
            d: dict[str, Any] = {"name": f.name, "type": f.kind, "mutable": f.mutable}
            for key in ("lower", "upper"):
                v = getattr(f, key)
                if isinstance(v, str) or math.isfinite(v):
                    d[key] = v
            if f.monotone:
                d["monotone"] = "increase" if f.monotone > 0 else "decrease"
            if f.eps_scale != 1.0:
                d["eps_scale"] = f.eps_scale
            if f.std is not None:
                d["std"] = f.std
            feats.append(d)
        rels = []
        for r in self.relations:
            d = {"type": r.kind, "name": r.name, "terms": dict(r.terms)}
            if r.kind == "equality":
                d.update(target=r.target, constant=r.constant)
            else:
                d.update(sense="<=", bound=r.bound)
            rels.append(d)
        out: dict[str, Any] = {"name": self.name, "description": self.description, "feature": feats,
                               "relation": rels}
        for key in ("label", "positive_class", "eps"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def _parse_feature(f: Any, i: int, source: str, features: list[Feature], groups: list[Group]) -> None:
    if not isinstance(f, dict):
        raise _err(source, f"feature #{i + 1} must be a table, got {f!r}")
    name = f.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _err(source, f"feature #{i + 1} needs a non-empty string name")
    unknown = set(f) - _FEATURE_KEYS
    if unknown:
        raise _err(source, f"feature {name!r}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_FEATURE_KEYS)}")
    kind = f.get("type", "continuous")
    if kind not in KINDS:
        raise _err(source, f"feature {name!r}: type must be one of {KINDS}, got {kind!r}")
    mutable = f.get("mutable", True)
    if not isinstance(mutable, bool):
        raise _err(source, f"feature {name!r}: mutable must be true or false, got {mutable!r}")
    if kind == "categorical":
        extra = set(f) - {"name", "type", "categories", "mutable"}
        if extra:
            raise _err(source, f"categorical feature {name!r} takes only categories and mutable, got {sorted(extra)}")
        cats = f.get("categories")
        if (not isinstance(cats, list) or len(cats) < 2 or not all(isinstance(c, str) for c in cats)
                or len(set(cats)) != len(cats)):
            raise _err(source, f"categorical feature {name!r}: categories must be a list of >= 2 distinct strings, "
                               f"got {cats!r}")
        members = tuple(f"{name}={c}" for c in cats)
        groups.append(Group(name, tuple(cats), members, mutable))
        features.extend(Feature(m, "onehot", 0.0, 1.0, mutable, 0, 1.0, 1.0, name) for m in members)
        return
    if "categories" in f:
        raise _err(source, f"feature {name!r}: categories need type = \"categorical\"")
    lower = _number(f.get("lower", -math.inf), f"feature {name!r}: lower", source, allow_observed=True)
    upper = _number(f.get("upper", math.inf), f"feature {name!r}: upper", source, allow_observed=True)
    if not isinstance(lower, str) and not isinstance(upper, str) and lower > upper:
        raise _err(source, f"feature {name!r}: contradictory bounds, lower {lower:g} > upper {upper:g}")
    if lower == math.inf or upper == -math.inf:
        raise _err(source, f"feature {name!r}: bounds [{lower}, {upper}] admit no value")
    mono = f.get("monotone")
    mono_map = {None: 0, "increase": 1, "decrease": -1}
    if mono not in mono_map:
        raise _err(source, f"feature {name!r}: monotone must be \"increase\" or \"decrease\", got {mono!r}")
    scale = _number(f.get("eps_scale", 1.0), f"feature {name!r}: eps_scale", source)
    if not math.isfinite(scale) or scale < 0:
        raise _err(source, f"feature {name!r}: eps_scale must be finite and >= 0, got {scale}")
    std = f.get("std")
    if std is not None:
        std = _number(std, f"feature {name!r}: std", source)
        if not math.isfinite(std) or std <= 0:
            raise _err(source, f"feature {name!r}: std must be finite and > 0, got {std}")
    if kind == "integer":
        for b in (lower, upper):
            if not isinstance(b, str) and math.isfinite(b) and not float(b).is_integer():
                raise _err(source, f"integer feature {name!r}: bounds must be whole numbers, got {b:g}")
    features.append(Feature(name, kind, lower, upper, mutable, mono_map[mono], scale, std))


def _parse_relation(r: Any, i: int, source: str, names: set[str]) -> Relation:
    if not isinstance(r, dict):
        raise _err(source, f"relation #{i + 1} must be a table, got {r!r}")
    label = str(r.get("name") or f"relation #{i + 1}")
    unknown = set(r) - _RELATION_KEYS
    if unknown:
        raise _err(source, f"{label}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_RELATION_KEYS)}")
    kind = r.get("type")
    if kind not in ("equality", "inequality"):
        raise _err(source, f"{label}: type must be \"equality\" or \"inequality\", got {kind!r}")
    terms = r.get("terms")
    if not isinstance(terms, dict) or not terms:
        raise _err(source, f"{label}: terms must be a non-empty table {{feature = coefficient}}")
    parsed = []
    for n, c in terms.items():
        if n not in names:
            raise _err(source, f"{label}: unknown feature {n!r} in terms (categorical columns are named "
                               f"\"feature=category\")")
        c = _number(c, f"{label}: coefficient of {n!r}", source)
        if not math.isfinite(c) or c == 0:
            raise _err(source, f"{label}: coefficient of {n!r} must be finite and non-zero, got {c}")
        parsed.append((n, float(c)))
    if kind == "equality":
        if set(r) & {"sense", "bound"}:
            raise _err(source, f"{label}: an equality takes target, terms and constant (not sense/bound)")
        target = r.get("target")
        if target not in names:
            raise _err(source, f"{label}: target must name a declared feature, got {target!r}")
        if target in dict(parsed):
            raise _err(source, f"{label}: target {target!r} also appears in its own terms")
        constant = _number(r.get("constant", 0.0), f"{label}: constant", source)
        if not math.isfinite(constant):
            raise _err(source, f"{label}: constant must be finite")
        return Relation("equality", tuple(parsed), label, target, float(constant))
    if set(r) & {"target", "constant"}:
        raise _err(source, f"{label}: an inequality takes terms, sense and bound (not target/constant)")
    sense = r.get("sense", "<=")
    if sense not in ("<=", ">="):
        raise _err(source, f"{label}: sense must be \"<=\" or \">=\", got {sense!r}")
    bound = _number(r.get("bound", 0.0), f"{label}: bound", source)
    if not math.isfinite(bound):
        raise _err(source, f"{label}: bound must be finite")
    if sense == ">=":
        parsed, bound = [(n, -c) for n, c in parsed], -bound
    return Relation("inequality", tuple(parsed), label, None, 0.0, float(bound))


def _fmt(b: Union[float, str]) -> str:
    return b if isinstance(b, str) else f"{b:g}"


def _conflicting_relations(schema: Schema) -> Optional[list[Relation]]:
    """``None`` if some point satisfies the bounds, integer features, one-hot groups and every relation at once
    (a mixed-integer feasibility problem, solved with scipy's HiGHS); otherwise a smallest set of relations
    that conflict (deletion filter: drop each relation whose removal keeps the rest infeasible)."""
    if not schema.relations:
        return None
    try:
        from scipy.optimize import linprog
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn; the per-relation check still runs
        return None
    d = schema.n_features
    bounds = [(None if isinstance(f.lower, str) or not math.isfinite(f.lower) else f.lower,
               None if isinstance(f.upper, str) or not math.isfinite(f.upper) else f.upper) for f in schema.features]
    integrality = np.array([f.kind in ("integer", "onehot") for f in schema.features], dtype=int)
    group_rows = []
    for g in schema.groups:
        row = np.zeros(d)
        row[[schema.index(m) for m in g.members]] = 1.0
        group_rows.append((row, 1.0))

    def rows(rel: Relation) -> tuple[np.ndarray, float]:
        a = np.zeros(d)
        for n, c in rel.terms:
            a[schema.index(n)] += c
        if rel.kind == "equality":  # target - sum(c * term) = constant
            a[schema.index(rel.target)] -= 1.0
            return -a, rel.constant
        return a, rel.bound + RELATION_TOL * (1 + abs(rel.bound))  # the tolerance data are validated with

    def feasible(rels: list[Relation]) -> bool:
        ub = [rows(r) for r in rels if r.kind == "inequality"]
        eq = [rows(r) for r in rels if r.kind == "equality"] + group_rows
        res = linprog(np.zeros(d), A_ub=np.array([a for a, _ in ub]) if ub else None,
                      b_ub=np.array([b for _, b in ub]) if ub else None,
                      A_eq=np.array([a for a, _ in eq]) if eq else None,
                      b_eq=np.array([b for _, b in eq]) if eq else None,
                      bounds=bounds, integrality=integrality, method="highs")
        return res.status != 2  # 2: infeasible; anything else (limits, numerical trouble) does not prove it

    core = list(schema.relations)
    if feasible(core):
        return None
    for rel in list(core):
        rest = [r for r in core if r is not rel]
        if not feasible(rest):
            core = rest
    return core or None  # bounds alone infeasible (non-integral data fitted into an integer's bounds): validate says


def _as_array(x: Any, d: int, where: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != d:
        raise ValueError(f"{where}: expected an N×{d} table, got shape {a.shape}")
    return a


def load_schema(path: Union[str, Path]) -> Schema:
    """Read and validate a schema TOML file.

    Arguments:
        path: the ``.toml`` file.
    Returns:
        The :class:`Schema`; syntax errors and inconsistencies are ``ValueError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"schema file {path} does not exist")
    try:
        with open(path, "rb") as f:
            data = _toml.load(f)
    except _toml.TOMLDecodeError as e:
        raise ValueError(f"schema {path}: not valid TOML ({e})") from None
    return Schema.from_dict(data, str(path))


def as_schema(schema: Union[Schema, str, Path, dict]) -> Schema:
    """Accept a :class:`Schema`, a TOML path or a dict."""
    if isinstance(schema, Schema):
        return schema
    if isinstance(schema, dict):
        return Schema.from_dict(schema)
    if isinstance(schema, (str, Path)):
        return load_schema(schema)
    raise ValueError(f"expected a Schema, a TOML path or a dict, got {type(schema).__name__}")


__all__ = ["Feature", "Group", "OBSERVED", "RELATION_TOL", "Relation", "Schema", "as_schema", "load_schema"]
