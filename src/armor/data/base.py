"""The in-memory dataset type shared by every loader, and a DataLoader-free batch iterator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence, Union

import torch


@dataclass
class Dataset:
    """Inputs in [0, 1] (float32, N×C×H×W images or N×D tabular) with int64 labels in [0, num_classes).

    ``split_source`` says where this split's points come from, for results: ``"file: ..."`` when the data
    holds the split itself, ``"held-out 30% of x.npz (fixed stratified split)"`` when armor made it (see
    :func:`split_description`); ``None`` when the loader does not say.
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    name: str
    feature_names: list[str] | None = None
    split_source: str | None = None

    def __post_init__(self) -> None:
        if self.x.dtype != torch.float32 or self.y.dtype != torch.int64:
            raise ValueError(f"dataset {self.name!r}: x must be float32 and y int64, got {self.x.dtype} and "
                             f"{self.y.dtype}; convert them before building a Dataset")
        if self.x.dim() < 2 or self.y.dim() != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"dataset {self.name!r}: x must be N×... and y N, got {tuple(self.x.shape)} and "
                             f"{tuple(self.y.shape)}")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise ValueError(f"dataset {self.name!r}: labels must lie in [0, {self.num_classes}), got "
                             f"[{self.y.min().item()}, {self.y.max().item()}]")
        if self.feature_names is not None and len(self.feature_names) != self.x[0].numel():
            raise ValueError(f"dataset {self.name!r}: {len(self.feature_names)} feature names for "
                             f"{self.x[0].numel()} features")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, n_or_indices: Union[int, Sequence[int], torch.Tensor]) -> "Dataset":
        """The first ``n`` points (all of them if there are fewer), or the points at the given indices."""
        if isinstance(n_or_indices, int):
            if n_or_indices < 0:
                raise ValueError(f"subset size must be >= 0, got {n_or_indices}")
            idx = slice(0, n_or_indices)
        else:
            idx = torch.as_tensor(n_or_indices, dtype=torch.long)
        return Dataset(self.x[idx], self.y[idx], self.num_classes, self.name, self.feature_names, self.split_source)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False,
            generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) minibatches; the last one may be short. Shuffling draws only from ``generator``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
    order = torch.randperm(x.shape[0], generator=generator) if shuffle else None
    for i in range(0, x.shape[0], batch_size):
        if order is None:
            yield x[i:i + batch_size], y[i:i + batch_size]
        else:
            b = order[i:i + batch_size]
            yield x[b], y[b]


SPLIT_SEED = 0  # fixed, not the run's seed: a different seed must never move test points into train
TEST_SIZE = 0.3  # share of the points held out for test when the data do not come split


def split_description(source: str, split: str, test_size: float = TEST_SIZE) -> str:
    """The ``split_source`` of a split made by :func:`stratified_split` from ``source`` (a file or dataset name)."""
    pct = round(test_size * 100)
    if split == "test":
        return f"held-out {pct}% of {source} (fixed stratified split)"
    return f"{100 - pct}% of {source}, the other {pct}% held out for test (fixed stratified split)"


def stratified_split(y, split: str, test_size: float = TEST_SIZE):
    """Indices of ``split`` in a stratified train/test split that is identical in every run."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(np.arange(len(y)), test_size=test_size, random_state=SPLIT_SEED, stratify=y)
    return np.sort(train if split == "train" else test)
