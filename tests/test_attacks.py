"""The attack suite on an undefended digits model: strength, exact bounds, determinism, no side effects."""

import warnings

import pytest
import torch
from torch import nn

import armor
from armor.attacks import ATTACKS, apgd, apgd_t, cw_l2, fgsm, get_attack, pgd, square
from conftest import accuracy

FAST = {"apgd-ce": {"steps": 20}, "apgd-dlr": {"steps": 20}, "apgd-t": {"steps": 10, "n_target_classes": 3},
        "cw-l2": {"steps": 20, "binary_steps": 3}, "square": {"n_queries": 200}, "square-1k": {"n_queries": 200},
        "apgd-ce-x5": {"steps": 10, "restarts": 2}, "apgd-dlr-x5": {"steps": 10, "restarts": 2},
        "square-x5": {"n_queries": 100, "restarts": 2}, "fab-t": {"steps": 20},
        "rays": {"n_queries": 200}, "rays-1k": {"n_queries": 200}}
EPS = {"linf": 0.1, "l2": 0.6, "l1": 2.0}
# Image-domain attacks; the constrained tabular ones (armor.domains.tabular) are tested on random schemas there.
CORE = sorted(n for n, s in ATTACKS.items() if not s.fn.__module__.startswith("armor.domains.tabular"))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", CORE)
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_every_attack_respects_eps_and_bounds_exactly(model, digits, name, norm):
    if norm not in ATTACKS[name].norms:
        pytest.skip(f"{name} does not support {norm}")
    _, _, x, y = digits
    x, y = x[:64], y[:64]
    threat = armor.ThreatModel(norm, EPS[norm])
    x_adv = get_attack(name, **FAST.get(name, {}))(model, x, y, threat, generator=_gen())
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert ((x_adv >= 0) & (x_adv <= 1)).all()
    assert (threat.norm_of(x_adv - x) <= EPS[norm]).all()
    if norm == "linf":
        assert ((x_adv - x).abs() <= EPS[norm]).all()
    assert accuracy(model, x_adv, y) < accuracy(model, x, y)  # and it does something


def test_pgd_breaks_an_undefended_model(model, digits):
    _, _, x, y = digits
    threat = armor.ThreatModel("linf", 0.3)
    assert accuracy(model, x, y) > 0.9
    assert accuracy(model, pgd(model, x, y, threat, steps=20, generator=_gen()), y) < 0.05


@pytest.mark.parametrize("norm,eps", [("linf", 0.08), ("l2", 0.5), ("l1", 1.5)])
def test_apgd_is_never_weaker_than_pgd_with_the_same_budget(model, digits, norm, eps):
    _, _, x, y = digits
    threat = armor.ThreatModel(norm, eps)
    acc_pgd = accuracy(model, pgd(model, x, y, threat, steps=50, generator=_gen()), y)
    acc_apgd = accuracy(model, apgd(model, x, y, threat, steps=50, generator=_gen()), y)
    assert 0.05 < acc_pgd < 0.95, "eps should leave room for the comparison to mean something"
    assert acc_apgd <= acc_pgd + 0.01


def test_more_restarts_and_targets_never_weaken_an_attack(model, digits):
    _, _, x, y = digits
    threat = armor.ThreatModel("linf", 0.06)
    one = pgd(model, x, y, threat, steps=10, restarts=1, generator=_gen(5))
    three = pgd(model, x, y, threat, steps=10, restarts=3, generator=_gen(5))
    with torch.no_grad():
        fooled_one = model(one).argmax(1) != y
        fooled_three = model(three).argmax(1) != y
    assert (fooled_three | ~fooled_one).all(), "a restart lost a sample the first run had fooled"
    t1 = apgd_t(model, x, y, threat, steps=20, n_target_classes=1, generator=_gen(5))
    t3 = apgd_t(model, x, y, threat, steps=20, n_target_classes=3, generator=_gen(5))
    assert accuracy(model, t3, y) <= accuracy(model, t1, y)


def test_square_breaks_it_without_gradients(model, digits):
    _, _, x, y = digits
    x, y = x[:200], y[:200]
    threat = armor.ThreatModel("linf", 0.3)

    class NoGrad(nn.Module):  # any gradient use would raise
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            assert not torch.is_grad_enabled() or not x.requires_grad, "square read a gradient"
            return self.m(x)

    acc = accuracy(model, square(NoGrad(model), x, y, threat, n_queries=1000, generator=_gen()), y)
    assert acc < 0.10
    acc_l2 = accuracy(model, square(NoGrad(model), x, y, armor.ThreatModel("l2", 1.5), n_queries=1000,
                                    generator=_gen()), y)
    assert acc_l2 < 0.5 * accuracy(model, x, y)


def test_cw_finds_small_l2_perturbations(model, digits):
    _, _, x, y = digits
    x, y = x[:100], y[:100]
    big = armor.ThreatModel("l2", 10.0)  # effectively unbounded: measures the minimum-norm search
    x_adv = cw_l2(model, x, y, big, steps=100, binary_steps=5)
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    assert fooled.float().mean() > 0.95
    assert (x_adv - x).flatten(1).norm(dim=1)[fooled].median() < 1.0


@pytest.mark.parametrize("name", ["fgsm", "pgd", "apgd-ce", "apgd-t", "cw-l2", "square"])
def test_fixed_seed_gives_identical_results(model, digits, name):
    _, _, x, y = digits
    x, y = x[:50], y[:50]
    threat = armor.ThreatModel("linf", 0.1)
    fn = get_attack(name, **FAST.get(name, {}))
    assert torch.equal(fn(model, x, y, threat, generator=_gen(7)), fn(model, x, y, threat, generator=_gen(7)))


@pytest.mark.parametrize("name", ["fgsm", "pgd", "apgd-ce", "apgd-t", "cw-l2", "square"])
@pytest.mark.parametrize("training", [True, False])
def test_attacks_leave_the_model_untouched(model, digits, name, training):
    _, _, x, y = digits
    x, y = x[:20], y[:20]
    model.train(training)
    params = list(model.parameters())
    params[0].requires_grad_(False)  # a partially frozen model must stay partially frozen
    for p in params[1:]:
        p.grad = torch.full_like(p, 0.5)
    before = [p.detach().clone() for p in params]
    get_attack(name, **FAST.get(name, {}))(model, x, y, armor.ThreatModel("linf", 0.1), generator=_gen())
    assert model.training is training
    assert [p.requires_grad for p in params] == [False] + [True] * (len(params) - 1)
    assert params[0].grad is None
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in params[1:])
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_attack_in_eval_mode_sees_no_dropout_randomness(digits):
    _, _, x, y = digits
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.Dropout(0.5), nn.Linear(64, 10)).train()
    threat = armor.ThreatModel("linf", 0.1)
    a = pgd(m, x[:30], y[:30], threat, generator=_gen(1))
    b = pgd(m, x[:30], y[:30], threat, generator=_gen(1))
    assert torch.equal(a, b) and m.training


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CORE)
def test_dtype_and_device_come_from_inputs(model, digits, name, device):
    """float64 inputs give float64 outputs on the inputs' device, for every attack and each norm it supports.

    The attack runs with torch's default device set to "meta": a tensor it creates without the inputs'
    device (``torch.zeros(shape)`` instead of ``torch.zeros_like(x)``) lands there and the attack fails, so a
    CPU-only machine catches that bug too. A float32 detour shows as a float32 output, a dtype error in the
    float64 model, or an output without float64 precision."""
    _, _, x, y = digits
    m64 = model.double().to(device)
    x64, y = x[:8].double().to(device), y[:8].to(device)
    for norm in ATTACKS[name].norms:
        threat = armor.ThreatModel(norm, EPS[norm])
        with torch.device("meta"):
            x_adv = get_attack(name, **FAST.get(name, {}))(m64, x64, y, threat,
                                                           generator=torch.Generator(device).manual_seed(0))
        assert x_adv.dtype == torch.float64 and x_adv.device == x64.device, (norm, x_adv.dtype, x_adv.device)
        assert x_adv.shape == x64.shape and bool(threat.contains(x_adv, x64).all()), norm
        assert not torch.equal(x_adv, x64), norm  # it attacked (8 points, an undefended model)
        if norm == "linf":  # computed in float64, not in float32 and cast back: x ± 0.1 is not a float32 number
            assert not torch.equal(x_adv, x_adv.float().double())


@pytest.mark.parametrize("mutate, match", [
    (lambda x, y: (x.clone().index_put_((torch.tensor([0]),), torch.tensor(float("nan"))), y), "NaN or inf"),
    (lambda x, y: (x.clone().index_put_((torch.tensor([0]),), torch.tensor(float("inf"))), y), "NaN or inf"),
    (lambda x, y: (x * 255, y), "outside the threat model's bounds"),
    (lambda x, y: ((x * 255).to(torch.uint8), y), "floating-point"),
    (lambda x, y: (x[0], y), "batched|shape"),
    (lambda x, y: (x, y.float()), "integer class indices"),
    (lambda x, y: (x, y[:-1]), "shape"),
    (lambda x, y: (x, y + 10), "out of range"),
    (lambda x, y: (x, y - 10), ">= 0"),
])
@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "square"])
def test_bad_input_gets_a_clear_error(model, digits, mutate, match, name):
    _, _, x, y = digits
    xb, yb = mutate(x[:8], y[:8])
    with pytest.raises(ValueError, match=match):
        get_attack(name, **FAST.get(name, {}))(model, xb, yb, armor.ThreatModel("linf", 0.1), generator=_gen())


def test_unknown_attack_and_negative_eps_are_rejected():
    with pytest.raises(ValueError, match="unknown attack 'pgdd'"):
        get_attack("pgdd")
    with pytest.raises(ValueError, match="eps"):
        armor.ThreatModel("linf", -0.1)


def test_probability_outputs_get_a_warning(model, digits):
    _, _, x, y = digits
    probs = nn.Sequential(model, nn.Softmax(dim=1))
    with pytest.warns(UserWarning, match="probabilities"):
        pgd(probs, x[:8], y[:8], armor.ThreatModel("linf", 0.1), generator=_gen())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pgd(model, x[:8], y[:8], armor.ThreatModel("linf", 0.1), generator=_gen())


def test_a_model_that_cuts_the_graph_is_attacked_and_flagged_not_crashed():
    # A hard threshold has no input gradient: attacks must run (and stay in the ball) and the masking checks
    # must name the symptom, instead of autograd raising "does not require grad".
    from armor.metrics import masking_checks

    class Thresholded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.fc((x > 0.5).float().flatten(1))

    model = Thresholded()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g)
    threat = armor.ThreatModel("linf", 0.1)
    for name in ("pgd", "apgd-ce", "fgsm"):
        x_adv = get_attack(name)(model, x, y, threat, generator=torch.Generator().manual_seed(0))
        assert threat.contains(x_adv, x).all()
    checks = masking_checks(model, x, y, threat, checks=["zero_gradients"])
    assert [f["name"] for f in checks["flags"]] == ["zero_gradients"]


class _Flat(nn.Module):
    """Logits that ignore the input (class 0 on top): no query can lower the margin. Counts the rows queried."""

    def __init__(self):
        super().__init__()
        self.rows = 0

    def forward(self, x):
        self.rows += x.shape[0]
        return torch.tensor([2.0, 1.0, 0.0]).expand(x.shape[0], 3) + 0 * x.flatten(1)[:, :1]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_give_up_stops_points_without_progress_at_the_first_checkpoint(norm):
    # No progress since the reference point (2.5% of the budget): the extrapolated gain is 0, so every point
    # stops at the first checkpoint (5% = 10 of 200 queries): 1 initial + 10 queries per point instead of 200
    # (1 + 199), after the one clean forward that every run makes.
    x = torch.rand(7, 1, 8, 8, generator=_gen())
    y = torch.zeros(7, dtype=torch.long)
    threat = armor.ThreatModel(norm, EPS[norm])
    full, stopped = _Flat(), _Flat()
    a = square(full, x, y, threat, n_queries=200, generator=_gen())
    b = square(stopped, x, y, threat, n_queries=200, give_up=1e6, generator=_gen())
    assert full.rows == 7 + 7 * 200 and stopped.rows == 7 + 7 * 11
    for adv in (a, b):
        assert (threat.norm_of(adv - x) <= EPS[norm] + 1e-6).all() and ((adv >= 0) & (adv <= 1)).all()


def test_square_give_up_spends_less_and_keeps_early_successes(model, digits):
    # Before the first checkpoint nothing stops, so both runs draw the same squares for the same points: a
    # point fooled by then is fooled by both (each run returns its first fooling point, so those are equal too).
    _, _, x, y = digits
    x, y = x[:100], y[:100]
    threat = armor.ThreatModel("linf", 0.1)

    class Counting(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m, self.rows = m, 0

        def forward(self, x):
            self.rows += x.shape[0]
            return self.m(x)

    full, early, gave_up = Counting(model), Counting(model), Counting(model)
    a = square(full, x, y, threat, n_queries=400, generator=_gen())
    e = square(early, x, y, threat, n_queries=400, generator=_gen())  # same run, to check determinism
    b = square(gave_up, x, y, threat, n_queries=400, give_up=4.0, generator=_gen())
    assert torch.equal(a, e)
    with torch.no_grad():
        fooled_full, fooled_b = model(a).argmax(1) != y, model(b).argmax(1) != y
    assert gave_up.rows < full.rows
    assert (threat.norm_of(b - x) <= 0.1 + 1e-6).all()
    # A vanishing factor stops every point still correct at the first checkpoint: the full run cut at query 20,
    # with the same draws up to there. What it fooled, both longer runs fooled.
    first = square(model, x, y, threat, n_queries=400, give_up=1e-9, generator=_gen())
    with torch.no_grad():
        fooled_first = model(first).argmax(1) != y
    assert fooled_first.any() and not (fooled_first & ~fooled_b).any() and not (fooled_first & ~fooled_full).any()
    assert int(fooled_b.sum()) > int(fooled_first.sum())


def test_square_give_up_must_be_positive(model, digits):
    _, _, x, y = digits
    with pytest.raises(ValueError, match="give_up"):
        square(model, x[:4], y[:4], armor.ThreatModel("linf", 0.1), n_queries=10, give_up=0)
