"""The Trainer's weight average (``ema_decay``): the average is the hand-computed one, it is what is validated,
selected, saved and returned, a crashed run resumes to the same bytes, and bad values are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from armor.training import Trainer, load_weights
from armor.training.checkpoint import STATE, WEIGHTS, load_state


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def trainer(digits, **kw) -> Trainer:
    xtr, ytr, _, _ = digits
    # 1400 images, batch 256: 6 optimizer steps per epoch
    kw = {"recipe": "standard", "epochs": 2, "batch_size": 256, "lr": 0.5, "val_fraction": 0.0, **kw}
    return Trainer(tiny(), (xtr, ytr), quiet=True, **kw)


def test_average_equals_the_hand_computed_one(digits):
    # decay 0.5: the warm-up (1 + t) / (10 + t) is below it for steps 1-7 and above it from step 8 on, so both
    # branches of d = min(decay, (1 + t) / (10 + t)) are used.
    t = trainer(digits, ema_decay=0.5)
    start = {k: v.clone() for k, v in t.model.state_dict().items()}
    raw_after_step: list[dict[str, torch.Tensor]] = []
    step = t.recipe.step

    def recording(model, *a, **k):
        out = step(model, *a, **k)
        raw_after_step.append({k_: v.detach().clone() for k_, v in model.state_dict().items()})
        return out

    t.recipe.step = recording
    result = t.fit()
    assert len(raw_after_step) == 12
    avg = start
    for i, w in enumerate(raw_after_step, start=1):
        d = min(0.5, (1 + i) / (10 + i))
        avg = {k: d * avg[k] + (1 - d) * w[k] for k in avg}
    got = result.model.state_dict()
    for k in avg:
        torch.testing.assert_close(got[k], avg[k], rtol=0, atol=1e-6)
        # the average is not the last raw weights (lr 0.5 moves them far between steps)
        assert (got[k] - raw_after_step[-1][k]).abs().max() > 1e-3


def test_the_average_is_validated_selected_and_saved(digits, tmp_path):
    t = trainer(digits, ema_decay=0.9, val_fraction=0.2, out_dir=tmp_path / "run")
    result = t.fit()
    avg = result.model.state_dict()
    for name in ("last", "best"):
        saved = load_weights(tmp_path / "run" / WEIGHTS[name])
        for k in avg:
            assert torch.equal(saved[k], avg[k]), (name, k)
    raw = load_state(tmp_path / "run" / STATE)["model"]
    assert any(not torch.equal(raw[k], avg[k]) for k in avg)  # the state keeps the raw weights apart
    with torch.no_grad():
        acc = int((result.model(t.val_x).argmax(1) == t.val_y).sum()) / len(t.val_y)
        raw_model = tiny()
        raw_model.load_state_dict(raw)
        raw_acc = int((raw_model(t.val_x).argmax(1) == t.val_y).sum()) / len(t.val_y)
    assert result.history[-1]["val_clean_acc"] == acc != raw_acc  # validated: the average, not the raw weights
    assert load_state(tmp_path / "run" / STATE)["hparams"]["ema_decay"] == 0.9


def test_resume_with_another_decay_fails(digits, tmp_path):
    trainer(digits, out_dir=tmp_path / "run", ema_decay=0.9, epochs=1).fit()
    with pytest.raises(ValueError, match="ema_decay"):
        trainer(digits, out_dir=tmp_path / "run", ema_decay=0.99, epochs=1, resume=True).fit()


@pytest.mark.parametrize("bad", [0, 0.0, 1, 1.0, -0.5, 1.5, float("nan"), True, "0.9"])
def test_bad_decay_is_refused(digits, bad):
    with pytest.raises(ValueError, match="ema_decay must be a number in \\(0, 1\\)"):
        trainer(digits, ema_decay=bad)


def test_no_average_leaves_the_configuration_as_before(digits):
    # runs saved before the option existed have no "ema_decay" in their configuration: they still resume
    assert "ema_decay" not in trainer(digits).hparams()
