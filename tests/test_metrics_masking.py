"""Gradient-masking checks: deliberately masked models must be flagged, sound ones must not.

Runtime ~20 s on 2 busy cores. The black-box check's numbers quoted below come from bench/masking_black_box.py
(its "fixtures" family trains these very models), attack seeds 0, 1 and 2.
"""

import json
import math

import pytest
import torch
from torch import nn

import armor
import armor.metrics.masking as masking_module
from armor.attacks import pgd
from armor.metrics import MASKING_CHECKS, MASKING_REGISTRY, masking_checks
from armor.metrics.masking import BLACK_BOX_ALPHA, black_box_decision
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


class Rounded(nn.Module):
    """``x.round()``-style preprocessing: inputs rounded to 17 levels (digits' own k/16 grid, so clean inputs are
    unchanged); torch.round has a zero gradient."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 16) / 16)


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
    # measured: all gradients zero; PGD-50 at eps 0.5 leaves 0.78; Square alone fooled 26 of the 36 points any
    # attack fooled (noise bound 15; attack seeds 1, 2: 36 of 41, 37 of 42)
    assert {"zero_gradients", "black_box_beats_white_box", "no_convergence_at_large_eps"} <= _flags(r)
    assert r["checks"]["zero_gradients"]["evidence"]["share_zero"] == 1.0
    assert "Square" in next(f["message"] for f in r["flags"] if f["name"] == "black_box_beats_white_box")


def test_saturated_logits_are_flagged(model, digits):
    _, _, x, y = digits
    r = masking_checks(Saturated(model), x, y, THREAT, **BUDGET)
    _check_structure(r)
    # measured: zero gradient on every correctly classified point (94%); Square alone fooled 80 of the 83
    # points any attack fooled (noise bound 29)
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


# --- black_box_beats_white_box: per-point evidence against a measured noise level -------------------------------

BLACK_BOX = dict(checks=["black_box_beats_white_box"], strong_steps=50, strong_restarts=2, square_queries=300)


def _black_box(model, x, y, threat=THREAT, **kw):
    r = masking_checks(model, x, y, threat, **{**BLACK_BOX, **kw})
    return r, r["checks"]["black_box_beats_white_box"]["evidence"]


def test_black_box_rule_on_counts():
    # The bound is the (1 - alpha) quantile of Binomial(fooled, noise_rate): exact, checked against a direct sum.
    def tail(k, n, p):
        return sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k, n + 1))

    for fooled in (0, 1, 7, 30, 100, 400):
        d = black_box_decision(0, fooled)
        c = d["noise_bound"]
        assert tail(c + 1, fooled, 0.2) <= BLACK_BOX_ALPHA and (c == 0 or tail(c, fooled, 0.2) > BLACK_BOX_ALPHA)
        if c + 1 <= fooled and c + 1 >= 5:
            above = black_box_decision(c + 1, fooled)
            assert above["fires"] and above["p_value"] == pytest.approx(tail(c + 1, fooled, 0.2), rel=1e-9)
            assert not black_box_decision(c, fooled)["fires"]
    nothing = black_box_decision(0, 0)
    assert not nothing["fires"] and nothing["noise_bound"] == 0 and nothing["p_value"] == 1.0
    # the floor: 4 of 4 is improbable at a 20% miss rate (p = 0.2 ** 4 = 0.0016 < alpha 0.01), but 4 < 5 points
    assert black_box_decision(4, 4, alpha=0.01)["p_value"] == pytest.approx(0.2 ** 4)
    assert not black_box_decision(4, 4, alpha=0.01)["fires"]
    assert black_box_decision(4, 4, alpha=0.01, min_points=3)["fires"]
    with pytest.raises(ValueError, match="only_square"):
        black_box_decision(5, 4)


def _fooling(which):
    """A stand-in attack that fools exactly the points ``which(i)`` picks (i = index in the data; one batch):
    it moves feature 0 across the toy model's decision boundary at 0.5."""

    def attack(model, x, y, threat, *, generator=None, **kwargs):
        out = x.clone()
        pick = torch.tensor([bool(which(i)) for i in range(x.shape[0])])
        out[pick, 0] = torch.where(x[pick, 0] < 0.5, x[pick, 0] + 0.08, x[pick, 0] - 0.08)
        return out

    return attack


class Threshold(nn.Module):
    def forward(self, x):
        return torch.stack([0.5 - x[:, 0], x[:, 0] - 0.5], dim=1) * 10


def test_black_box_reads_points_not_accuracies(monkeypatch):
    """The issue: Square's accuracy far below each PGD run's is no evidence when the PGD runs together fooled the
    same points. Weak PGD fools every third point, strong PGD the next third, Square both thirds: Square's
    accuracy (33%) is 33 points below each PGD run's (67%), which the old accuracy rule flagged, but Square
    alone fooled nothing. When the PGD runs fool only every tenth point and Square three more in ten, Square
    alone fooled 90 of the 120 points any attack fooled: that fires."""
    n = 300
    x = torch.tensor([[0.46 if i % 2 else 0.54, 0.5] for i in range(n)])
    y = (x[:, 0] > 0.5).long()
    threat = armor.ThreatModel("linf", 0.1)

    def use(weak, strong, sq):
        monkeypatch.setattr(masking_module, "pgd", lambda model, x, y, threat, *, steps, generator=None, **kw:
                            _fooling(weak if steps == 10 else strong)(model, x, y, threat))
        monkeypatch.setattr(masking_module, "square", _fooling(sq))
        return _black_box(Threshold(), x, y, threat)

    r, ev = use(lambda i: i % 3 == 0, lambda i: i % 3 == 1, lambda i: i % 3 < 2)
    assert ev["square_accuracy"] == pytest.approx(1 / 3) and ev["white_box_accuracy"] == pytest.approx(2 / 3)
    assert ev["fooled_only_by_square"] == 0 and ev["fooled_by_any_attack"] == 200
    assert r["flags"] == []
    r, ev = use(lambda i: i % 10 == 0, lambda i: i % 10 == 0, lambda i: i % 10 < 4)
    assert ev["fooled_only_by_square"] == 90 and ev["fooled_by_any_attack"] == 120
    assert ev["worst_case_accuracy"] == pytest.approx(0.6) and ev["white_box_accuracy"] == pytest.approx(0.9)
    assert _flags(r) == {"black_box_beats_white_box"}
    msg = r["flags"][0]["message"]
    assert "fooled 90 points that both PGD attacks" in msg and "75.0% of the 120 points any attack fooled" in msg
    assert f"explains at most {ev['noise_bound']}" in msg and "60.0%" in msg and "is not real" not in msg


# Honest models, every size: measured Square-alone counts (k), points any attack fooled, noise bound, attack seeds
# 0/1/2 (p-values 0.8..1 throughout). The assertion p > 0.1 leaves k room for ~3x its spread over seeds.
#   standard linf 0.1:  n=50 k 0..1 of 24..25 (bound 11..12); n=200 k 0..1 of 93 (31); n=397 k 0..1 of 166..167 (50)
#   pgd-at   linf 0.1:  n=50 k 1..2 of 13..14 (8);  n=200 k 5..7 of 49..51 (19..20); n=397 k 9 of 87..89 (30)
#   pgd-at   linf 0.2:  n=397 k 17..18 of 277..282 (77..78): the most any honest model gave at these budgets;
#                       at the defaults (Square-1000, PGD-100 x 3) k 24..25 of 287..289 (bound 79..80).
HONEST = [("model", 0.1, 50), ("model", 0.1, 200), ("model", 0.1, 397),
          ("robust_model", 0.1, 50), ("robust_model", 0.1, 200), ("robust_model", 0.1, 397),
          ("robust_model", 0.2, 397)]


@pytest.mark.parametrize("which, eps, n", HONEST)
def test_honest_models_do_not_fire_at_any_size(which, eps, n, request, digits):
    _, _, x, y = digits
    r, ev = _black_box(request.getfixturevalue(which), x, y, armor.ThreatModel("linf", eps), n=n)
    assert r["flags"] == [] and r["checks"]["black_box_beats_white_box"]["passed"] is True
    assert ev["points"] == n and ev["fooled_only_by_square"] <= ev["noise_bound"]
    assert ev["p_value"] > 0.1, ev


# Masked models, every size: measured k of fooled (bound), p-value, attack seeds 0/1/2.
#   quantized (4 levels, retrained): n=50 k 10..11 of 12..13 (7..8), p <= 2e-5; n=397 k 48..56 of 60..63 (22..23)
#   rounded (x.round() to 1/16):     n=50 k 29..30 of 31..32 (14), p <= 2e-18; n=397 k 208..214 of 216..221 (62..63)
#   saturated (logits x 1e4):        n=50 k 20..22 of 21..23 (10..11), p <= 3e-13; n=397 k 134..140 of 140..147
@pytest.mark.parametrize("n", [50, 397])
@pytest.mark.parametrize("which", ["quantized", "rounded", "saturated"])
def test_masked_models_fire_at_every_size(which, n, quantized_model, model, digits):
    _, _, x, y = digits
    masked = {"quantized": quantized_model, "rounded": Rounded(model), "saturated": Saturated(model)}[which]
    r, ev = _black_box(masked, x, y, n=n)
    assert _flags(r) == {"black_box_beats_white_box"}
    assert ev["fooled_only_by_square"] > ev["noise_bound"] + 1 and ev["p_value"] < BLACK_BOX_ALPHA / 10, ev
    assert ev["share_of_fooled_only_by_square"] > 0.6  # honest models above: at most 0.2
    msg = r["flags"][0]["message"]
    assert f"fooled {ev['fooled_only_by_square']} points" in msg
    assert f"of the {ev['fooled_by_any_attack']} points any attack fooled" in msg and "is not real" not in msg


def test_black_box_decision_is_deterministic(robust_model, quantized_model, digits):
    """Same seed, same evidence; the attacks draw from seeded per-batch streams, so nothing here is chance."""
    _, _, x, y = digits
    for m, fires in ((robust_model, False), (quantized_model, True)):
        first = _black_box(m, x, y, n=100, seed=1)
        again = _black_box(m, x, y, n=100, seed=1)
        assert first == again
        assert (first[0]["flags"] != []) is fires


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
    for bad in (dict(black_box_noise_rate=1.0), dict(black_box_noise_rate=-0.1), dict(black_box_alpha=0),
                dict(black_box_min_points=0), dict(black_box_min_points=2.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            masking_checks(model, x, y, THREAT, **bad)
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
        runs.append((stream, name, getattr(attack, "keywords", {})))
        return engine_correct_after(model, attack, *args, stream=stream, name=name, **kwargs)

    monkeypatch.setattr(masking_module, "correct_after", recording)
    r = masking_checks(model, x, y, THREAT, n=40, eps_factors=(0.5, 1.0), curve_steps=2, large_eps_steps=2,
                       weak_steps=2, strong_steps=3, strong_restarts=1, square_queries=5)
    assert set(r["checks"]) == set(MASKING_CHECKS)
    assert runs == [(1, "pgd", {"steps": 2}), (2, "pgd", {"steps": 3, "restarts": 1}),
                    (3, "square", {"n_queries": 5}), (10, "pgd", {"steps": 2}), (11, "pgd", {"steps": 2}),
                    (4, "pgd", {"steps": 2}), (5, "fgsm", {}), (7, "fgsm_t", {}),
                    (6, "fab_t", {"steps": 10})]
