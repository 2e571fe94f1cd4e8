"""Datasets as in-memory tensors: images N×C×H×W in [0, 1], tables N×D in the threat's bounds, int64 labels.

    >>> ds = load_dataset("digits", "test")
    >>> ds.x.shape, ds.num_classes
    (torch.Size([540, 1, 8, 8]), 10)

The library itself knows only your own files (``npz``, ``csv``); every named dataset comes from a domain
(:mod:`armor.plugins`: digits, Fashion-MNIST, MNIST and CIFAR-10 from ``vision``; breast cancer, German credit
and fraud from ``tabular``). Nothing is downloaded: built-in datasets come from sklearn, from files a system
package installed, or from ``data_dir``.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from ..plugins import DatasetSpec, contributions
from .base import Dataset, batches, stratified_split
from .files import load_csv, load_npz

DATASETS: dict[str, DatasetSpec] = {
    "npz": DatasetSpec(load_npz, "your arrays: --data-dir FILE.npz with x in [0, 1] and integer y"),
    "csv": DatasetSpec(load_csv, "your table: --data-dir FILE.csv, features in [0, 1], label column last (or label=)"),
}


def all_datasets() -> dict[str, DatasetSpec]:
    """Every dataset: armor's own file loaders and every domain's (see :mod:`armor.plugins`)."""
    return contributions("datasets", DATASETS)


def dataset_spec(name: str) -> DatasetSpec:
    """The :class:`~armor.plugins.DatasetSpec` of ``name``; ``ValueError`` lists the known ones."""
    known = all_datasets()
    if name not in known:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(known)} (see `armor list datasets`)")
    return known[name]


def list_datasets() -> list[tuple[str, str]]:
    return [(name, spec.description) for name, spec in all_datasets().items()]


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None, *, seed: int = 0,
                 **options) -> Dataset:
    """Load ``split`` ("train" or "test") of dataset ``name``; ``options`` go to the loader (e.g. csv ``label``).

    ``seed`` is accepted for loaders that sample; the built-in train/test splits are fixed on purpose, so
    that no seed can ever move a test point into training."""
    loader = dataset_spec(name).loader
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    params = inspect.signature(loader).parameters
    unknown = set(options) - set(params) - {"split", "data_dir"}
    if unknown:
        allowed = [p for p in params if p not in ("split", "data_dir", "seed")]
        raise ValueError(f"dataset {name!r} has no option(s) {sorted(unknown)}; it accepts {allowed or 'none'}")
    if "seed" in params:
        options["seed"] = seed
    return loader(split, data_dir, **options)


__all__ = ["DATASETS", "Dataset", "DatasetSpec", "all_datasets", "batches", "dataset_spec", "list_datasets",
           "load_dataset", "stratified_split"]
