"""Datasets as in-memory tensors in [0, 1]: images N×C×H×W, tables N×D, int64 labels.

    >>> ds = load_dataset("digits", "test")
    >>> ds.x.shape, ds.num_classes
    (torch.Size([540, 1, 8, 8]), 10)

Nothing is downloaded: built-in datasets come from sklearn or from local files (``data_dir``).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

from .base import Dataset, batches, stratified_split
from .files import load_csv, load_npz
from .vision import load_cifar10, load_digits, load_fashion_mnist, load_mnist, read_idx

DATASETS: dict[str, tuple[Callable[..., Dataset], str]] = {
    "digits": (load_digits, "sklearn 8×8 handwritten digits, 1×8×8, 10 classes (1257 train / 540 test)"),
    "fashion-mnist": (load_fashion_mnist, "Fashion-MNIST IDX files, 1×28×28, 10 classes (apt: dataset-fashion-mnist)"),
    "mnist": (load_mnist, "MNIST IDX files from --data-dir, 1×28×28, 10 classes"),
    "cifar10": (load_cifar10, "CIFAR-10 python batches from --data-dir, 3×32×32, 10 classes"),
    "npz": (load_npz, "your arrays: --data-dir FILE.npz with x in [0, 1] and integer y"),
    "csv": (load_csv, "your table: --data-dir FILE.csv, features in [0, 1], label column last (or label=)"),
}


def list_datasets() -> list[tuple[str, str]]:
    return [(name, desc) for name, (_, desc) in DATASETS.items()]


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None, *, seed: int = 0,
                 **options) -> Dataset:
    """Load ``split`` ("train" or "test") of dataset ``name``; ``options`` go to the loader (e.g. csv ``label``).

    ``seed`` is accepted for loaders that sample; the built-in train/test splits are fixed on purpose, so
    that no seed can ever move a test point into training."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    loader = DATASETS[name][0]
    params = inspect.signature(loader).parameters
    unknown = set(options) - set(params) - {"split", "data_dir"}
    if unknown:
        allowed = [p for p in params if p not in ("split", "data_dir", "seed")]
        raise ValueError(f"dataset {name!r} has no option(s) {sorted(unknown)}; it accepts {allowed or 'none'}")
    if "seed" in params:
        options["seed"] = seed
    return loader(split, data_dir, **options)


__all__ = ["DATASETS", "Dataset", "batches", "list_datasets", "load_dataset", "read_idx", "stratified_split"]
