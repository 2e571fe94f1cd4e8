"""Accuracy-versus-eps curves built on armor.evaluate. Runtime ~3 s on 2 busy cores."""

import json

import pytest
import torch

import armor
from armor.evaluate import evaluate
from armor.metrics import check_eps_grid, default_eps_grid, robustness_curve
from conftest import accuracy


FAST_KW = {"apgd-ce": {"steps": 10}}


def test_default_grid_runs_from_zero_to_twice_the_eps():
    grid = default_eps_grid(0.1)
    assert len(grid) == 9 and grid[0] == 0.0 and grid[-1] == pytest.approx(0.2)
    assert all(b > a for a, b in zip(grid, grid[1:]))
    assert default_eps_grid(0.5, n_points=3) == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="> 0"):
        default_eps_grid(0.0)


@pytest.mark.parametrize("grid, match", [
    ([0.0, -0.05, 0.1], r"negative eps \(-0.05\).*must be >= 0"),
    ([0.1, float("nan")], "non-finite"),
    ([0.1, float("inf")], "non-finite"),
    ([], "empty"),
    (["a"], "sequence of numbers"),
])
def test_bad_grids_are_rejected_with_a_clear_message(model, digits, grid, match):
    _, _, x, y = digits
    with pytest.raises(ValueError, match=match):
        robustness_curve(model, x[:10], y[:10], armor.ThreatModel("linf", 0.1), grid)


def test_grid_is_sorted_and_deduplicated():
    assert check_eps_grid([0.2, 0, 0.1, 0.2]) == [0.0, 0.1, 0.2]


def test_curve_starts_at_clean_accuracy_falls_and_matches_evaluate(model, digits):
    _, _, x, y = digits
    x, y = x[:150], y[:150]
    threat = armor.ThreatModel("linf", 0.1)
    curve = robustness_curve(model, x, y, threat, default_eps_grid(0.1, 5), suite="fast", attack_kwargs=FAST_KW,
                             seed=3)
    json.dumps(curve)
    assert [p["eps"] for p in curve] == [0.0, 0.05, 0.1, 0.15, 0.2]
    clean = accuracy(model, x, y)
    assert curve[0]["robust_accuracy"] == pytest.approx(clean) and curve[0]["per_attack"] == {}
    accs = [p["robust_accuracy"] for p in curve]
    assert all(p["clean_accuracy"] == pytest.approx(clean) for p in curve)
    # Worst case over the fast suite on an undefended model: monotone here, and broken at twice the eps.
    assert all(b <= a for a, b in zip(accs, accs[1:]))
    assert accs[-1] < 0.05 < 0.8 < accs[1]
    # each point is exactly what armor.evaluate reports at that eps with the same seed
    r = evaluate(model, (x, y), threat.with_eps(curve[2]["eps"]), "fast", seed=3, attack_kwargs=FAST_KW)
    assert curve[2]["robust_accuracy"] == r.robust_accuracy
    assert curve[2]["per_attack"] == {k: v["cumulative_accuracy"] for k, v in r.per_attack.items()}


def test_l2_curve_with_explicit_grid_and_n(model, digits):
    _, _, x, y = digits
    threat = armor.ThreatModel("l2", 0.5)
    seen = []
    curve = robustness_curve(model, x, y, threat, [1.0, 0.0, 0.5], suite=["pgd"], n=60,
                             progress=lambda eps, i, total: seen.append((eps, i, total)))
    assert [p["eps"] for p in curve] == [0.0, 0.5, 1.0]
    assert all(p["n"] == 60 for p in curve)
    assert curve[2]["robust_accuracy"] < curve[1]["robust_accuracy"] < curve[0]["robust_accuracy"]
    assert seen == [(0.0, 1, 3), (0.5, 2, 3), (1.0, 3, 3)]


def test_per_feature_eps_scales_with_the_grid(model, digits):
    _, _, x, y = digits
    eps = torch.full((1, 8, 8), 0.1)
    eps[..., :4] = 0.05  # the left half gets half the budget
    threat = armor.ThreatModel("linf", eps)
    curve = robustness_curve(model, x[:60], y[:60], threat, [0.0, 0.2], suite=["pgd"])
    tensor_threat = armor.ThreatModel("linf", eps * 2)
    r = evaluate(model, (x[:60], y[:60]), tensor_threat, ["pgd"])
    assert curve[1]["robust_accuracy"] == r.robust_accuracy
