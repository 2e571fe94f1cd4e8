"""What the measurement modules share: input checks and accuracy (batching comes from :mod:`armor.engine`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..engine import model_device, predict_logits  # noqa: F401  (re-exported for the metrics)


def check_xy(x: Any, y: Any, what: str = "x") -> None:
    """Validate a batch of inputs and labels; every failure is a ``ValueError`` that says how to fix it."""
    if not torch.is_tensor(x):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(x).__name__}; convert with torch.as_tensor")
    if not x.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor in [0, 1], got dtype {x.dtype}; "
                         "use x.float() / 255 for uint8 images")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty batch of shape (N, ...), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or inf values; clean or impute them first")
    if y is not None:
        if not torch.is_tensor(y) or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError("y must be an integer tensor of class indices (int64); use y.long()")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must have shape ({x.shape[0]},) to match {what}, got {tuple(y.shape)}")
        if y.min() < 0:
            raise ValueError(f"labels must be >= 0, got min label {int(y.min())}")


def check_images(x: Any, what: str = "x") -> None:
    """Corruptions and acquisition profiles work on image batches (N, C, H, W) with values in [0, 1]."""
    check_xy(x, None, what)
    if x.dim() != 4:
        raise ValueError(f"{what} must be an image batch of shape (N, C, H, W), got shape {tuple(x.shape)}; "
                         "add a channel dim with x[:, None] for (N, H, W) grayscale images")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"{what} must lie in [0, 1] (min {x.min().item():.4g}, max {x.max().item():.4g}); "
                         "armor keeps data in [0, 1] and puts normalisation inside the model")


def accuracy_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    logits = predict_logits(model, x, batch_size)
    return float((logits.argmax(1).cpu() == y.cpu()).double().mean())
