"""User data from files (.npz arrays, .csv tables)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from .base import Dataset


def _resolve(kind: str, split: str, data_dir) -> Path:
    """A file is used as given, whatever the split; a directory must hold ``{split}.{kind}``."""
    if data_dir is None:
        raise ValueError(f"dataset {kind!r} reads your own file: pass --data-dir FILE.{kind} "
                         f"(or a directory holding train.{kind} and test.{kind})")
    path = Path(data_dir)
    if path.is_dir():
        path = path / f"{split}.{kind}"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass --data-dir FILE.{kind} or a directory holding "
                                f"train.{kind} and test.{kind}")
    return path


def _check_range(x: np.ndarray, where: str, columns: list[str] | None = None) -> None:
    if not np.isfinite(x).all():
        raise ValueError(f"{where}: x contains NaN or infinite values; remove or impute them")
    if x.size and (x.min() < 0 or x.max() > 1):
        if columns is not None:
            bad = int(np.flatnonzero((x < 0).any(0) | (x > 1).any(0))[0])
            where, x = f"{where}: column {columns[bad]!r}", x[:, bad]
        raise ValueError(f"{where}: values must lie in [0, 1] (normalisation belongs inside the model), got "
                         f"[{x.min():g}, {x.max():g}]; scale them first, e.g. min-max or divide uint8 images by 255")


def _num_classes(y: np.ndarray, given, where: str) -> int:
    n = int(given) if given is not None else int(y.max()) + 1 if y.size else 0
    if n < 2:
        raise ValueError(f"{where}: need at least 2 classes, got num_classes={n}; pass num_classes=")
    if y.size and (y.min() < 0 or y.max() >= n):
        raise ValueError(f"{where}: labels must lie in [0, {n}), got [{y.min()}, {y.max()}]")
    return n


def load_npz(split: str, data_dir=None, num_classes: int | None = None) -> Dataset:
    """Arrays ``x`` (N×D or N×C×H×W, in [0, 1]) and ``y`` (N integer labels); optional ``num_classes`` and
    ``feature_names``. Loaded with allow_pickle=False, so no code in the file can run."""
    path = _resolve("npz", split, data_dir)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable .npz of plain arrays ({e})") from None
    missing = {"x", "y"} - arrays.keys()
    if missing:
        raise ValueError(f"{path}: missing array(s) {sorted(missing)}; save with np.savez(path, x=x, y=y)")
    x, y = arrays["x"], arrays["y"]
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x) or x.ndim < 2:
        raise ValueError(f"{path}: x must be a real numeric array with N×D or N×C×H×W shape, got {x.dtype} {x.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),):
        raise ValueError(f"{path}: y must be {len(x)} integer labels, got {y.dtype} {y.shape}; "
                         "use y.astype(np.int64)")
    _check_range(x, str(path))
    if num_classes is None and "num_classes" in arrays:
        num_classes = int(arrays["num_classes"])
    names = [str(s) for s in arrays["feature_names"]] if "feature_names" in arrays else None
    return Dataset(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64)),
                   _num_classes(y, num_classes, str(path)), "npz", names)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def load_csv(split: str, data_dir=None, label: str | int = -1, num_classes: int | None = None) -> Dataset:
    """One row per point; ``label`` (a header name or column index, default the last column) holds integer
    classes, every other column a numeric feature in [0, 1]. Without a header row, columns are named x0, x1, ..."""
    path = _resolve("csv", split, data_dir)
    with open(path, newline="") as f:
        reader = csv.reader(f)
        rows = [(reader.line_num, r) for r in reader if r]  # line_num: messages point at the file's real line
    if not rows:
        raise ValueError(f"{path}: empty CSV")
    has_header = not all(_is_number(c) for c in rows[0][1])
    header = [c.strip() for c in rows[0][1]] if has_header else [f"x{i}" for i in range(len(rows[0][1]))]
    body = rows[1:] if has_header else rows
    if isinstance(label, str) and not _is_number(label):
        if label not in header:
            raise ValueError(f"{path}: no label column {label!r}; columns are {header}")
        li = header.index(label)
    else:
        li = int(label)
        if not -len(header) <= li < len(header):
            raise ValueError(f"{path}: label column index {li} out of range for {len(header)} columns")
        li %= len(header)
    feats = [i for i in range(len(header)) if i != li]
    x = np.empty((len(body), len(feats)), np.float64)
    y = np.empty(len(body), np.int64)
    for r, (line, row) in enumerate(body):
        if len(row) != len(header):
            raise ValueError(f"{path}: line {line} has {len(row)} fields, the header has {len(header)}")
        for j, i in enumerate(feats + [li]):
            cell = row[i].strip()
            v = float(cell) if _is_number(cell) else None
            if v is None or not math.isfinite(v):
                what = ("missing value" if cell.lower() in ("", "nan", "na", "null") else
                        f"non-numeric value {cell!r}" if v is None else f"non-finite value {cell!r}")
                raise ValueError(f"{path}: {what} at line {line}, column {header[i]!r}; "
                                 "fill or drop it before loading")
            if i == li:
                if v != int(v):
                    raise ValueError(f"{path}: label {cell!r} at line {line}, column {header[i]!r} is not an "
                                     "integer class index")
                y[r] = int(v)
            else:
                x[r, j] = v
    _check_range(x, str(path), [header[i] for i in feats])
    return Dataset(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y), _num_classes(y, num_classes, str(path)),
                   "csv", [header[i] for i in feats])
