"""Gradient-masking checks: deliberately masked models must be flagged, sound ones must not.

Runtime ~8 s on 2 busy cores.
"""

import json

import pytest
import torch
from torch import nn

import armor
import armor.metrics.masking as masking_module
from armor.attacks import pgd
from armor.metrics import MASKING_CHECKS, MASKING_REGISTRY, masking_checks
from conftest import DigitsNet, _train


# Modest budgets keep the file fast; the flags below fire by wide margins at these budgets.
BUDGET = dict(n=200, strong_steps=50, strong_restarts=2, square_queries=300, large_eps_steps=50, curve_steps=10)
THREAT = armor.ThreatModel("linf", 0.1)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


class Quantized(nn.Module):
    """Rounds inputs to 4 levels before the network: the input gradient is zero almost everywhere."""

    def __init__(self, net, levels=4):
        super().__init__()
        self.net, self.steps = net, levels - 1

    def forward(self, x):
        return self.net(torch.round(x * self.steps) / self.steps)


class Saturated(nn.Module):
    """Logits times 1e4: the softmax is exactly one-hot in float32, so CE gradients vanish."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x) * 1e4


class Noisy(nn.Module):
    """Gaussian noise on the input in every forward pass, also in eval mode."""

    def __init__(self, net, std=0.1):
        super().__init__()
        self.net, self.std = net, std

    def forward(self, x):
        return self.net(x + self.std * torch.randn_like(x))


@pytest.fixture(scope="module")
def robust_model(digits_pgd_model):
    return digits_pgd_model


@pytest.fixture(scope="module")
def quantized_model(digits):
    xtr, ytr, _, _ = digits
    torch.manual_seed(0)
    return Quantized(_train(DigitsNet(), torch.round(xtr * 3) / 3, ytr))


def _flags(result):
    return {f["name"] for f in result["flags"]}


def _check_structure(result):
    json.loads(json.dumps(result))
    assert set(result["checks"]) == set(MASKING_CHECKS)
    for f in result["flags"]:
        assert set(f) == {"name", "message", "evidence"} and len(f["message"]) > 80
        assert result["checks"][f["name"]]["passed"] is False
    passed = {k for k, v in result["checks"].items() if v["passed"]}
    assert passed.isdisjoint(_flags(result))


def test_quantized_inputs_are_flagged(quantized_model, digits):
    _, _, x, y = digits
    r = masking_checks(quantized_model, x, y, THREAT, **BUDGET)
    _check_structure(r)
    # measured: all gradients zero; Square 0.77 vs PGD 0.91; PGD-50 at eps 0.5 leaves 0.78
    assert {"zero_gradients", "black_box_beats_white_box", "no_convergence_at_large_eps"} <= _flags(r)
    assert r["checks"]["zero_gradients"]["evidence"]["share_zero"] == 1.0
    assert "Square" in next(f["message"] for f in r["flags"] if f["name"] == "black_box_beats_white_box")


def test_saturated_logits_are_flagged(model, digits):
    _, _, x, y = digits
    r = masking_checks(Saturated(model), x, y, THREAT, **BUDGET)
    _check_structure(r)
    # measured: zero gradient on every correctly classified point (94%); Square 0.53 vs PGD 0.94
    assert {"zero_gradients", "black_box_beats_white_box", "no_convergence_at_large_eps"} <= _flags(r)
    assert r["checks"]["zero_gradients"]["evidence"]["share_zero"] > 0.9


def test_randomized_model_is_flagged(model, digits):
    _, _, x, y = digits
    r = masking_checks(Noisy(model), x, y, THREAT, checks=["randomized_outputs", "zero_gradients"], n=200)
    assert _flags(r) == {"randomized_outputs"}
    assert r["checks"]["randomized_outputs"]["evidence"]["max_abs_logit_difference"] > 0.1
    dropout = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    class AlwaysDropout(nn.Module):
        def forward(self, x):
            return nn.functional.dropout(dropout(x), 0.3, training=True)

    r = masking_checks(AlwaysDropout(), x, y, THREAT, checks=["randomized_outputs"])
    assert _flags(r) == {"randomized_outputs"}


def test_probability_outputs_are_flagged(model, digits):
    _, _, x, y = digits
    r = masking_checks(nn.Sequential(model, nn.Softmax(dim=1)), x, y, THREAT, checks=["probability_outputs"])
    assert _flags(r) == {"probability_outputs"}
    assert masking_checks(model, x, y, THREAT, checks=["probability_outputs"])["flags"] == []


def test_adversarially_trained_model_is_not_flagged(robust_model, digits):
    _, _, x, y = digits
    r = masking_checks(robust_model, x, y, THREAT, **BUDGET)
    _check_structure(r)
    assert r["flags"] == [], [f["message"] for f in r["flags"]]
    assert all(v["passed"] for v in r["checks"].values())
    ev = r["checks"]
    # measured: PGD-10 0.71, PGD-50x2 0.69, Square-300 0.67, 0% at eps 0.5 (same at training seeds 1 and 2)
    assert 0.5 < ev["more_iterations_help"]["evidence"]["strong_accuracy"] < ev["accuracy_not_decreasing_with_eps"][
        "evidence"]["accuracy"][0]
    assert ev["no_convergence_at_large_eps"]["evidence"]["accuracy"] == 0.0


@pytest.mark.parametrize("norm, eps", [("linf", 0.03), ("l2", 0.3)])
def test_standard_model_at_small_eps_is_not_flagged(model, digits, norm, eps):
    _, _, x, y = digits
    r = masking_checks(model, x, y, armor.ThreatModel(norm, eps), **BUDGET)
    assert r["flags"] == [], [f["message"] for f in r["flags"]]


def test_l1_skips_square_and_says_why(model, digits):
    _, _, x, y = digits
    r = masking_checks(model, x, y, armor.ThreatModel("l1", 1.0), checks=["black_box_beats_white_box"],
                       n=50, strong_steps=20, strong_restarts=1)
    assert r["checks"]["black_box_beats_white_box"]["passed"] is None and r["flags"] == []
    assert "Square" in r["checks"]["black_box_beats_white_box"]["evidence"]["skipped"]


def test_a_rising_curve_is_flagged(model, digits):
    _, _, x, y = digits
    curve = [{"eps": 0.0, "robust_accuracy": 0.95}, {"eps": 0.1, "robust_accuracy": 0.40},
             {"eps": 0.2, "robust_accuracy": 0.55}]
    r = masking_checks(model, x, y, THREAT, checks=["accuracy_not_decreasing_with_eps"], curve=curve)
    flag = r["flags"][0]
    assert flag["name"] == "accuracy_not_decreasing_with_eps"
    assert flag["evidence"]["largest_rise"] == pytest.approx(0.15)
    assert "40.0% at eps=0.1 to 55.0% at eps=0.2" in flag["message"]
    ok = masking_checks(model, x, y, THREAT, checks=["accuracy_not_decreasing_with_eps"],
                        curve=[{"eps": 0.0, "robust_accuracy": 0.9}, {"eps": 0.1, "robust_accuracy": 0.92}])
    assert ok["flags"] == []  # a rise within the tolerance is sampling noise


def _budget_dependent_pgd(works_when):
    """A stand-in attack: real PGD when ``works_when(steps)``, otherwise returns the clean input."""

    def attack(model, x, y, threat, *, steps=10, restarts=1, generator=None):
        if works_when(steps):
            return pgd(model, x, y, threat, steps=steps, restarts=restarts, generator=generator)
        return x.clone()

    return attack


def test_iteration_checks_fire_in_each_direction(model, digits, monkeypatch):
    _, _, x, y = digits
    kw = dict(checks=["stronger_attack_weaker", "more_iterations_help"], n=100, strong_steps=30, strong_restarts=1)
    monkeypatch.setattr(masking_module, "pgd", _budget_dependent_pgd(lambda steps: steps <= 10))
    assert _flags(masking_checks(model, x, y, THREAT, **kw)) == {"stronger_attack_weaker"}
    monkeypatch.setattr(masking_module, "pgd", _budget_dependent_pgd(lambda steps: steps > 10))
    r = masking_checks(model, x, y, THREAT, **kw)
    assert _flags(r) == {"more_iterations_help"}
    ev = r["checks"]["more_iterations_help"]["evidence"]
    assert ev["weak_accuracy"] - ev["strong_accuracy"] > 0.3


def test_bad_arguments_are_rejected(model, digits):
    _, _, x, y = digits
    with pytest.raises(ValueError, match="unknown masking check 'foo'"):
        masking_checks(model, x, y, THREAT, checks=["foo"])
    with pytest.raises(ValueError, match="tol"):
        masking_checks(model, x, y, THREAT, tol=-1)
    with pytest.raises(ValueError, match="bounds"):
        masking_checks(model, x * 2, y, THREAT)


def test_the_registry_drives_the_selection(model, digits, monkeypatch):
    _, _, x, y = digits
    assert MASKING_CHECKS == tuple(MASKING_REGISTRY)

    def fires(ctx):
        return masking_module.Outcome(False, {"points": int(ctx.x.shape[0])}, "this test check always fires")

    check = masking_module.Check("always_fires", fires, "A check registered by the test.", run_order=0)
    monkeypatch.setitem(masking_module._REGISTRY, "always_fires", check)
    r = masking_checks(model, x, y, THREAT, checks=["always_fires", "probability_outputs"], n=20)
    assert list(r["checks"]) == ["probability_outputs", "always_fires"]  # registry order, not the order asked
    assert r["flags"] == [{"name": "always_fires", "message": "this test check always fires",
                           "evidence": {"points": 20}}]
    with pytest.raises(ValueError, match="unknown masking check 'foo'") as err:
        masking_checks(model, x, y, THREAT, checks=["probability_outputs", "foo"])
    listed = str(err.value).split("choose from ", 1)[1].split(", ")
    assert listed == list(MASKING_REGISTRY) and "always_fires" in listed


def test_every_check_has_one_explanation_and_the_report_uses_it():
    from armor.app.report import CHECK_HELP

    for name, check in MASKING_REGISTRY.items():
        assert check.name == name and callable(check.fn)
        assert len(check.explanation) > 60 and "  " not in check.explanation and "\n" not in check.explanation
    assert CHECK_HELP == {name: check.explanation for name, check in MASKING_REGISTRY.items()}


def test_each_attack_runs_once_on_its_own_stream(model, digits, monkeypatch):
    """Shared results (the PGD pair, Square) are computed once; the streams are part of reproducibility."""
    _, _, x, y = digits
    runs = []
    engine_correct_after = masking_module.correct_after

    def recording(model, attack, *args, stream, name, **kwargs):
        runs.append((stream, name, attack.keywords))
        return engine_correct_after(model, attack, *args, stream=stream, name=name, **kwargs)

    monkeypatch.setattr(masking_module, "correct_after", recording)
    r = masking_checks(model, x, y, THREAT, n=40, eps_factors=(0.5, 1.0), curve_steps=2, large_eps_steps=2,
                       weak_steps=2, strong_steps=3, strong_restarts=1, square_queries=5)
    assert set(r["checks"]) == set(MASKING_CHECKS)
    assert runs == [(1, "pgd", {"steps": 2}), (2, "pgd", {"steps": 3, "restarts": 1}),
                    (3, "square", {"n_queries": 5}), (10, "pgd", {"steps": 2}), (11, "pgd", {"steps": 2}),
                    (4, "pgd", {"steps": 2})]
