"""User data from files (.npz arrays, .csv tables).

Where the train/test split comes from, in this order:

* a directory holding ``train.{npz,csv}`` and ``test.{npz,csv}``: each split is its own file;
* an .npz holding ``x_train``, ``y_train``, ``x_test``, ``y_test``: each split is its own pair of arrays;
* a single file (.npz with ``x`` and ``y``, or a .csv): armor holds out a fixed, stratified 30% of its rows
  for test (:func:`armor.data.base.stratified_split`, the same split in every run, whatever the seed), so that
  robustness is never measured on training points.

Every loaded :class:`~armor.data.base.Dataset` says which in ``split_source``. Every problem with a file
(unreadable, missing arrays, NaN, values outside [0, 1], labels that are not the classes 0..K-1, ...) is a
``ValueError`` (a missing file a ``FileNotFoundError``) naming the file and what to do.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .base import TEST_SIZE, Dataset, split_description, stratified_split

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first local file header, or an empty zip
_SPLITS = ("train", "test")


def _other(split: str) -> str:
    return "test" if split == "train" else "train"


def _resolve(kind: str, split: str, data_dir) -> tuple[Path, bool]:
    """The file to read, and whether it is the split's own file (``{split}.{kind}`` of a directory).

    A file passed directly holds every split: explicit ones (npz keys) or one armor holds out."""
    if data_dir is None:
        raise ValueError(f"dataset {kind!r} reads your own file: pass --data-dir FILE.{kind} "
                         f"(or a directory holding train.{kind} and test.{kind})")
    path = Path(data_dir)
    own = path.is_dir()
    if own:
        path = path / f"{split}.{kind}"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass --data-dir FILE.{kind} or a directory holding "
                                f"train.{kind} and test.{kind}")
    return path, own


def _head(path: Path, n: int = 8) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror or e})") from None


def _ranges(values, limit: int = 8) -> str:
    """Sorted integers as short runs: ``0..2, 5, 7..98``."""
    vals = sorted(int(v) for v in values)
    runs: list[list[int]] = []
    for v in vals:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    parts = [str(a) if a == b else f"{a}, {b}" if b == a + 1 else f"{a}..{b}" for a, b in runs]
    return ", ".join(parts[:limit]) + (f", ... ({len(parts) - limit} more)" if len(parts) > limit else "")


# ------------------------------------------------------------------------------------------------ checks
def _check_x(x: np.ndarray, where: str, columns: list[str] | None = None) -> None:
    """x is a real numeric N×D or N×C×H×W array, finite, in [0, 1], with at least one row."""
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x) or x.ndim < 2:
        raise ValueError(f"{where}: x must be a real numeric array with N×D or N×C×H×W shape, got {x.dtype} "
                         f"{x.shape}")
    if len(x) == 0:
        raise ValueError(f"{where}: x has no rows")
    if x[0].size == 0:
        raise ValueError(f"{where}: x has no features (shape {x.shape})")
    _check_range(x, where, columns)


def _check_range(x: np.ndarray, where: str, columns: list[str] | None = None) -> None:
    finite = np.isfinite(x)
    if not finite.all():
        r = int(np.flatnonzero(~finite.reshape(len(x), -1).all(1))[0])
        raise ValueError(f"{where}: x contains NaN or infinite values ({int((~finite).sum())} of them, the first "
                         f"in row {r}); remove or impute them")
    if x.size and (x.min() < 0 or x.max() > 1):
        flat = x.reshape(len(x), -1)
        r = int(np.flatnonzero(((flat < 0) | (flat > 1)).any(1))[0])
        if columns is not None:
            bad = int(np.flatnonzero((x < 0).any(0) | (x > 1).any(0))[0])
            where, x = f"{where}: column {columns[bad]!r}", x[:, bad]
        raise ValueError(f"{where}: values must lie in [0, 1] (normalisation belongs inside the model), got "
                         f"[{x.min():g}, {x.max():g}] (the first row outside is row {r}); scale them first, e.g. "
                         "min-max or divide uint8 images by 255")


def _check_y(y: np.ndarray, n: int, where: str, name: str = "y") -> None:
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}: {name} must hold integer class labels, got dtype {y.dtype}; use "
                         f"{name}.astype(np.int64)")
    if y.ndim != 1:
        raise ValueError(f"{where}: {name} must be one label per row (shape (N,)), got shape {y.shape}")
    if len(y) != n:
        raise ValueError(f"{where}: x has {n} rows but {name} has {len(y)} labels; they must match one to one")


def _num_classes(y: np.ndarray, given: Optional[int], where: str,
                 how_to_pass: str = "pass num_classes={n} to load_dataset") -> int:
    """The number of classes: ``given``, or inferred from the labels when they are exactly 0..K-1.

    Labels with gaps (0, 1, 2 and a stray 99) are refused unless ``given`` covers them: inferring K = max + 1
    would silently train a model with classes that have no examples."""
    if y.size and y.min() < 0:
        neg = np.unique(y[y < 0])
        raise ValueError(f"{where}: labels must be class indices >= 0, got negative label(s) {_ranges(neg)}; "
                         "relabel to 0..K-1, e.g. y = np.unique(y, return_inverse=True)[1]")
    if given is not None:
        if isinstance(given, bool) or int(given) != given:
            raise ValueError(f"{where}: num_classes must be an integer, got {given!r}")
        n = int(given)
        if n < 2:
            raise ValueError(f"{where}: need at least 2 classes, got num_classes={n}")
        if y.size and y.max() >= n:
            odd = np.unique(y[y >= n])
            raise ValueError(f"{where}: num_classes={n} but label(s) {_ranges(odd)} lie outside [0, {n}); "
                             f"pass a num_classes above {int(y.max())} or relabel")
        return n
    present = np.unique(y)
    if present.size < 2:
        raise ValueError(f"{where}: need at least 2 classes, but every label is {_ranges(present) or 'absent'}")
    n = int(present[-1]) + 1
    if present.size == n:
        return n
    missing = np.setdiff1d(np.arange(n), present)
    odd = present[present > missing[0]]  # the labels beyond the first gap
    counts = ", ".join(f"{int(v)} ({int((y == v).sum())} row{'s' if (y == v).sum() != 1 else ''})"
                       for v in odd[:5]) + (", ..." if odd.size > 5 else "")
    relabel = ("they look 1-based: use y - 1" if missing.tolist() == [0] else
               "e.g. y = np.unique(y, return_inverse=True)[1]")
    raise ValueError(f"{where}: labels are not the classes 0..K-1: found {present.size} distinct labels "
                     f"({_ranges(present)}) but none of {_ranges(missing)}, so inferring num_classes={n} would "
                     f"make {n - present.size} class{'es' if n - present.size > 1 else ''} without a single "
                     f"example; odd label(s): {counts}. Fix the labels (relabel to 0..{present.size - 1}; "
                     f"{relabel}), or, if those classes are meant to exist, "
                     f"{how_to_pass.format(n=n)}")


def _held_out(y: np.ndarray, split: str, where: str, explicit: str) -> np.ndarray:
    """Indices of ``split`` in the fixed stratified split of a single file; a clear error if it cannot be made."""
    values, counts = np.unique(y, return_counts=True)
    rare = values[counts < 2]
    pct = round(TEST_SIZE * 100)
    fix = f"or give the splits yourself ({explicit})"
    if rare.size:
        raise ValueError(f"{where}: armor holds out a stratified {pct}% of a single file for test, which needs "
                         f"at least 2 rows of every class, but class(es) {_ranges(rare)} have only 1; add rows "
                         f"{fix}")
    n_test = math.ceil(TEST_SIZE * len(y))
    if n_test < values.size or len(y) - n_test < values.size:
        raise ValueError(f"{where}: {len(y)} rows are too few to hold out a stratified {pct}% test split with "
                         f"every one of the {values.size} classes on both sides; add rows {fix}")
    return stratified_split(y, split)


# ------------------------------------------------------------------------------------------------ npz
def _read_npz(path: Path, only: Optional[tuple[str, ...]] = None) -> dict[str, np.ndarray]:
    """Every array of an .npz (or those named in ``only``), loaded with allow_pickle=False (no code in the file
    can run); anything wrong with the file is a one-line ``ValueError``."""
    head = _head(path)
    if head.startswith(_NPY_MAGIC):
        raise ValueError(f"{path}: a .npy file holds one array, but the npz dataset needs x and y together in an "
                         ".npz archive: np.savez('data.npz', x=x, y=y)")
    if not head:
        raise ValueError(f"{path}: empty file, not an .npz archive; save one with np.savez('data.npz', x=x, y=y)")
    if not head.startswith(_ZIP_MAGIC):
        raise ValueError(f"{path}: not an .npz archive (np.savez writes a zip of arrays; this file starts with "
                         f"{head[:4]!r}); save one with np.savez('data.npz', x=x, y=y)")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files if only is None or k in only}
    except MemoryError:
        raise
    except Exception as e:  # a damaged zip fails in many ways: BadZipFile, zlib.error, EOFError, ValueError, ...
        msg = " ".join(str(e).split())
        if "allow_pickle" in msg:
            raise ValueError(f"{path}: holds object (pickled) arrays, which armor does not load because they can "
                             "run code; save plain numeric arrays") from None
        raise ValueError(f"{path}: corrupt or truncated .npz ({type(e).__name__}: {msg[:200]}); save it again "
                         "with np.savez") from None


def _npz_xy(arrays: dict[str, np.ndarray], xk: str, yk: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    missing = [k for k in (xk, yk) if k not in arrays]
    if missing:
        raise ValueError(f"{where}: missing array(s) {missing} (it has {sorted(arrays) or 'none'}); save with "
                         f"np.savez(path, {xk}=x, {yk}=y)")
    x, y = arrays[xk], arrays[yk]
    _check_x(x, f"{where}: {xk}" if xk != "x" else where)
    _check_y(y, len(x), where, yk)
    return x, y


def _npz_num_classes(arrays: dict[str, np.ndarray], given: Optional[int], where: str) -> Optional[int]:
    if given is not None or "num_classes" not in arrays:
        return given
    v = arrays["num_classes"]
    if v.shape != () or not np.issubdtype(v.dtype, np.integer):
        raise ValueError(f"{where}: num_classes must be a single integer, got {v.dtype} {v.shape}")
    return int(v)


def load_npz(split: str, data_dir=None, num_classes: int | None = None) -> Dataset:
    """Arrays ``x`` (N×D or N×C×H×W, in [0, 1]) and ``y`` (N integer labels, the classes 0..K-1), or the explicit
    splits ``x_train``/``y_train``/``x_test``/``y_test``; optional ``num_classes`` and ``feature_names``. A file
    with ``x`` and ``y`` only is split by armor (see the module docstring). Loaded with allow_pickle=False, so
    no code in the file can run."""
    path, own = _resolve("npz", split, data_dir)
    where = str(path)
    arrays = _read_npz(path)
    keyed = [k for k in ("x_train", "y_train", "x_test", "y_test") if k in arrays]
    how = "store num_classes={n} in the file (np.savez(..., num_classes={n})) or pass num_classes={n} to load_dataset"
    if keyed:
        if "x" in arrays or "y" in arrays:
            raise ValueError(f"{where}: holds both x/y and {keyed}; keep one layout (x and y for armor to split, "
                             "or x_train, y_train, x_test, y_test)")
        x, y = _npz_xy(arrays, f"x_{split}", f"y_{split}", where)
        other = [_npz_xy(arrays, f"x_{s}", f"y_{s}", where)[1] for s in _SPLITS if s != split
                 and f"y_{s}" in arrays]
        pool = np.concatenate([y, *other])
        source = f"file: arrays x_{split}/y_{split} of {path.name}"
    else:
        x, y = _npz_xy(arrays, "x", "y", where)
        pool = y
        if own:
            sibling = path.with_name(f"{_other(split)}.npz")
            if sibling.is_file():  # the classes are those of both files: a small test file may lack one
                other_y = _read_npz(sibling, only=("y",)).get("y")
                if other_y is not None and np.issubdtype(other_y.dtype, np.integer) and other_y.ndim == 1:
                    pool = np.concatenate([y, other_y])  # unusable labels: reported when that split loads
            source = f"file: {path.parent.name}/{path.name}"
    n = _num_classes(pool, _npz_num_classes(arrays, num_classes, where), where, how)
    if not keyed and not own:
        idx = _held_out(y, split, where, "x_train, y_train, x_test, y_test in the .npz, or a directory holding "
                                         "train.npz and test.npz")
        x, y = x[idx], y[idx]
        source = split_description(path.name, split)
    names = None
    if "feature_names" in arrays:
        names = [str(s) for s in np.ravel(arrays["feature_names"])]
        if len(names) != x[0].size:
            raise ValueError(f"{where}: {len(names)} feature_names for {x[0].size} features")
    return Dataset(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64)), n, "npz", names,
                   source)


# ------------------------------------------------------------------------------------------------ csv
def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _read_csv(path: Path, label: str | int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(x float64, y int64, feature names)`` of a CSV file; every problem a ``ValueError`` naming its line."""
    head = _head(path)
    if head.startswith(_ZIP_MAGIC) or head.startswith(_NPY_MAGIC):
        raise ValueError(f"{path}: a binary .npz/.npy file, not a CSV table; use --dataset npz for it")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, r) for r in reader if r]  # line_num: messages point at the file's real line
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text CSV (undecodable byte at offset {e.start}); export it as "
                         "UTF-8 CSV") from None
    except csv.Error as e:
        raise ValueError(f"{path}: not a readable CSV ({e})") from None
    if not rows:
        raise ValueError(f"{path}: empty CSV (no rows); it needs one row per point, features then the label")
    has_header = not all(_is_number(c) for c in rows[0][1])
    header = [c.strip() for c in rows[0][1]] if has_header else [f"x{i}" for i in range(len(rows[0][1]))]
    body = rows[1:] if has_header else rows
    if not body:
        raise ValueError(f"{path}: a header row ({', '.join(header)[:100]}) but no data rows")
    if len(header) < 2:
        raise ValueError(f"{path}: only one column ({header[0]!r}); need at least one feature and the label")
    if isinstance(label, str) and not _is_number(label):
        if label not in header:
            raise ValueError(f"{path}: no label column {label!r}; columns are {header}")
        li = header.index(label)
    else:
        li = int(float(label))
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
    names = [header[i] for i in feats]
    _check_range(x, str(path), names)
    return x, y, names


def load_csv(split: str, data_dir=None, label: str | int = -1, num_classes: int | None = None) -> Dataset:
    """One row per point; ``label`` (a header name or column index, default the last column) holds integer
    classes 0..K-1, every other column a numeric feature in [0, 1]. Without a header row, columns are named
    x0, x1, ... A single file is split by armor (a fixed stratified 30% held out for test); a directory holds
    train.csv and test.csv."""
    path, own = _resolve("csv", split, data_dir)
    where = str(path)
    x, y, names = _read_csv(path, label)
    pool = y
    if own:
        sibling = path.with_name(f"{_other(split)}.csv")
        if sibling.is_file():  # the classes are those of both files: a small test file may lack one
            other_x, other_y, other_names = _read_csv(sibling, label)
            if other_names != names:
                raise ValueError(f"{where}: columns {names} differ from those of {sibling} ({other_names})")
            pool = np.concatenate([y, other_y])
    n = _num_classes(pool, num_classes, where)
    if own:
        source = f"file: {path.parent.name}/{path.name}"
    else:
        idx = _held_out(y, split, where, "a directory holding train.csv and test.csv")
        x, y = x[idx], y[idx]
        source = split_description(path.name, split)
    return Dataset(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y), n, "csv", names, source)
