"""The Trainer's gradient clipping (``max_grad_norm``): a step moves the weights by exactly the clipped gradient,
a bound the gradient never reaches changes nothing, and bad values are refused."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from armor.training import Trainer


def one_step(digits, **kw) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The weights before and after one plain SGD step (no momentum, no decay, constant lr 0.5) on 256 images."""
    xtr, ytr, _, _ = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Trainer(model, (xtr[:256], ytr[:256]), recipe="standard", epochs=1, batch_size=256, optimizer="sgd", lr=0.5,
            momentum=0.0, weight_decay=0.0, lr_schedule="constant", val_fraction=0.0, quiet=True, **kw).fit()
    return before, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_clipped_step_is_the_gradient_scaled_to_the_bound(digits):
    w0, w_raw = one_step(digits)
    _, w_clip = one_step(digits, max_grad_norm=1e-3)
    raw = {k: w_raw[k] - w0[k] for k in w0}  # = -lr * gradient
    grad_norm = math.sqrt(sum(float((d / 0.5).pow(2).sum()) for d in raw.values()))
    assert grad_norm > 1e-2  # so the bound binds
    for k in w0:
        # atol: float32 differences of weights of size ~0.1
        torch.testing.assert_close(w_clip[k] - w0[k], raw[k] * (1e-3 / grad_norm), rtol=1e-3, atol=2e-8)
    moved = math.sqrt(sum(float((w_clip[k] - w0[k]).pow(2).sum()) for k in w0))
    assert moved == pytest.approx(0.5 * 1e-3, rel=1e-3)


def test_a_bound_the_gradient_never_reaches_changes_nothing(digits):
    _, w_raw = one_step(digits)
    _, w_loose = one_step(digits, max_grad_norm=1e6)
    assert all(torch.equal(w_raw[k], w_loose[k]) for k in w_raw)


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, float("inf"), float("nan"), True, "0.5"])
def test_bad_bounds_are_refused(digits, bad):
    xtr, ytr, _, _ = digits
    with pytest.raises(ValueError, match="max_grad_norm must be a positive finite number"):
        Trainer(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), (xtr, ytr), recipe="standard",
                max_grad_norm=bad)


def test_recorded_only_when_set(digits):
    xtr, ytr, _, _ = digits
    make = lambda **kw: Trainer(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), (xtr, ytr), recipe="standard",
                                 **kw)  # noqa: E731
    assert "max_grad_norm" not in make().hparams()  # older runs still resume
    assert make(max_grad_norm=0.5).hparams()["max_grad_norm"] == 0.5
