"""APGD's give-up rule (``give_up=k``): what it stops, what it must leave alone, and what it costs."""

import pytest
import torch
from torch import nn

import armor
from armor.attacks import apgd, apgd_t


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _counted(m: nn.Module) -> list:
    """Counts the rows ``m`` is queried on (forward passes, with or without a backward) in the returned list."""
    rows = [0]
    m.register_forward_hook(lambda mod, args, out: rows.__setitem__(0, rows[0] + args[0].shape[0]))
    return rows


class _Flat(nn.Module):
    """Logits that ignore the input (class 0 on top): no step can lower the margin."""

    def forward(self, x):
        return torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0]).expand(x.shape[0], 5) + 0 * x.flatten(1)[:, :1]


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.5), ("l1", 2.0)])
def test_give_up_stops_points_without_progress_at_the_first_checkpoint(norm, eps):
    # No progress since the reference (iteration 1 of 50): the extrapolated gain is 0, so every point stops at
    # APGD's first step-size checkpoint (int(0.22 * 50) = 11 iterations). Per target: 1 forward-backward at the
    # start plus 1 per iteration; apgd_t first ranks the targets with one forward.
    x = torch.rand(7, 1, 8, 8, generator=_gen())
    y = torch.zeros(7, dtype=torch.long)
    threat = armor.ThreatModel(norm, eps)
    flat = _Flat()
    rows = _counted(flat)
    a = apgd_t(flat, x, y, threat, steps=50, n_target_classes=2, generator=_gen())
    full, rows[0] = rows[0], 0
    b = apgd_t(flat, x, y, threat, steps=50, n_target_classes=2, give_up=1e6, generator=_gen())
    assert full == 7 + 2 * 7 * (1 + 50) and rows[0] == 7 + 2 * 7 * (1 + 11)
    for adv in (a, b):
        assert threat.contains(adv, x).all()
    rows[0] = 0
    apgd(flat, x, y, threat, steps=50, give_up=1e6, generator=_gen())
    assert rows[0] == 7 * (1 + 11)


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_give_up_spends_less_and_changes_nothing_before_the_stop(model, digits, loss):
    # A stopped point has followed the same iterates as in the full run up to its stop (the draws are made
    # once at the start, and other points leaving does not change its rows). So: whatever a run that gives up
    # fooled, the full run fooled at the same first adversarial iterate; a point it did not fool returns the
    # best iterate of a prefix of the full run's, whose loss is at most the full run's best. A vanishing
    # factor stops every point still correct at the first checkpoint; what it fooled, k = 4 fooled too.
    from armor.attacks import get_loss

    _, _, x, y = digits
    x, y = x[:120], y[:120]
    threat = armor.ThreatModel("linf", 0.05)
    rows = _counted(model)
    a = apgd(model, x, y, threat, loss=loss, steps=40, generator=_gen(3))
    full, rows[0] = rows[0], 0
    b = apgd(model, x, y, threat, loss=loss, steps=40, give_up=4.0, generator=_gen(3))
    gave_up = rows[0]
    first = apgd(model, x, y, threat, loss=loss, steps=40, give_up=1e-9, generator=_gen(3))
    with torch.no_grad():
        (la, lb, lf), (f_full, f_b, f_first) = zip(*((get_loss(loss)(o, y), o.argmax(1) != y)
                                                    for o in (model(a), model(b), model(first))))
    assert 40 * 20 < full - gave_up  # more than 20 points stopped before the end
    assert threat.contains(b, x).all() and threat.contains(first, x).all()
    assert f_first.any() and not (f_first & ~f_b).any() and not (f_b & ~f_full).any()
    assert torch.equal(b[f_b], a[f_b]) and torch.equal(first[f_first], a[f_first])
    assert (lb[~f_b] <= la[~f_b]).all() and (lf[~f_first] <= lb[~f_first]).all()


def test_give_up_none_runs_every_point_for_every_step(model, digits):
    # The default: a point still correct runs all its steps (one forward-backward each, one at the start).
    _, _, x, y = digits
    x, y = x[:50], y[:50]
    threat = armor.ThreatModel("linf", 0.001)  # too small to fool these points: every one runs to the end
    with torch.no_grad():
        still = int((model(x).argmax(1) == y).sum())
    rows = _counted(model)
    x_adv = apgd(model, x, y, threat, steps=30, generator=_gen())
    assert rows[0] == 50 + 30 * still
    with torch.no_grad():
        assert int((model(x_adv).argmax(1) == y).sum()) == still


@pytest.mark.parametrize("fn", [apgd, apgd_t])
def test_give_up_must_be_positive(model, digits, fn):
    _, _, x, y = digits
    with pytest.raises(ValueError, match="give_up"):
        fn(model, x[:4], y[:4], armor.ThreatModel("linf", 0.1), steps=5, give_up=0)


def test_row_chunks_give_every_row_the_values_of_one_call(model, digits):
    # FAB-T and FGSM-T expand a batch into rows (point x target) and take their gradients in chunks of
    # ROW_CHUNK rows: an exact speed-up, so each row's loss, logits and gradient equal one call's, bit for bit.
    from armor.attacks._core import ROW_CHUNK, loss_and_grad, loss_and_grad_rows, margin_loss

    _, _, x, y = digits
    rows = torch.arange(x.shape[0]).repeat(2)[: ROW_CHUNK * 2 + 37]
    xr, yr = x[rows], y[rows]
    target = (yr + 1 + rows % 3) % 10
    for t in (None, target):
        one = loss_and_grad(model, xr, yr, margin_loss, t)
        chunked = loss_and_grad_rows(model, xr, yr, margin_loss, t)
        assert all(torch.equal(a, b) for a, b in zip(one, chunked))
