"""armor.adaptive's parts against independent references: seeded draws, the EOT wrapper and the expected
accuracy (closed forms), the finder of non-differentiable layers, BPDA (a hand-written straight-through model),
the tabulated smoothing (the Gaussian CDF), the transfer surrogate, the evaluator's scores and starts, a resumed
escalation, and measure's results entry."""

import math

import pytest
import torch
from torch import nn

import armor
from armor.adaptive import (Expectation, ExpectedCorrect, escalate, find_nondifferentiable,
                            fit_smooth, prepare_layers, seeded, straight_through, train_surrogate, triggers)
from armor.evaluate import evaluate
from test_adaptive_zoo import DCTQuantise, IdentityBackward, RandomShiftNoise, Thermometer, _mlp

THREAT = armor.ThreatModel("linf", 0.1)


class NoisyThreshold(nn.Module):
    """Class 1 when the mean pixel plus N(0, std^2) noise exceeds 0.5: P(class 1) = Phi((mean - 0.5) / std)."""

    def __init__(self, std=0.1):
        super().__init__()
        self.std = std
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        s = x.flatten(1).mean(1) - 0.5 + self.std * torch.randn(x.shape[0])
        return torch.stack([-s, s], 1) * 50 * self.w


def _phi(z):
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def test_seeded_draws_depend_on_the_input_only_and_leave_the_global_generator_alone():
    x = torch.rand(4, 3)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    with seeded(x, 1):
        a = torch.rand(5)
    with seeded(x.clone(), 1):
        b = torch.rand(5)
    with seeded(x + 1e-3, 1):
        c = torch.rand(5)
    with seeded(x, 2):
        d = torch.rand(5)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)
    assert torch.equal(torch.get_rng_state(), before)


def test_expected_correct_matches_the_closed_form():
    """ExpectedCorrect with 4000 draws against Phi((mean - 0.5) / std). Its estimate is binomial with standard
    error at most 0.008; the draws are seeded, so the measured largest gap (0.0135) is fixed, and the bound of
    0.03 is 4 standard errors."""
    model = NoisyThreshold()
    x = torch.linspace(0.3, 0.7, 21).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    y = torch.ones(21, dtype=torch.long)
    got = ExpectedCorrect(4000)(model, x, y)
    exact = _phi((x.flatten(1).mean(1) - 0.5) / 0.1).double()
    assert (got - exact).abs().max() <= 0.03


def test_expectation_of_a_deterministic_model_is_its_log_softmax_and_its_gradient_the_ce_gradient(digits_model,
                                                                                                  digits):
    _, _, x, y = digits
    x = x[:20].clone().requires_grad_(True)
    eot = Expectation(digits_model, draws=3)
    out = eot(x)
    ref = torch.log_softmax(digits_model(x), 1)
    assert torch.allclose(out, ref, atol=1e-5)
    g1 = torch.autograd.grad(nn.functional.cross_entropy(out, y[:20]), x)[0]
    g2 = torch.autograd.grad(nn.functional.cross_entropy(digits_model(x), y[:20]), x)[0]
    assert torch.allclose(g1, g2, atol=1e-6)


def test_the_finder_finds_exactly_the_non_differentiable_layers(digits_model, digits):
    _, _, x, _ = digits
    dct = nn.Sequential(DCTQuantise(), digits_model)
    thermo = nn.Sequential(Thermometer(16), _mlp(16 * 64))
    noisy = nn.Sequential(RandomShiftNoise(), digits_model)
    assert [f.name for f in find_nondifferentiable(dct, x, THREAT)] == ["0"]
    found = find_nondifferentiable(thermo, x, THREAT)
    assert [f.name for f in found] == ["0"] and "zero or absent" in found[0].reason
    assert find_nondifferentiable(digits_model, x, THREAT) == []  # Linear and ReLU agree with finite differences
    assert find_nondifferentiable(noisy, x, THREAT) == []  # random, but differentiable: not BPDA's business


def test_bpda_is_exact_forward_and_identity_backward(digits_model, digits):
    """Against a hand-written straight-through model: same outputs, same input gradients."""
    _, _, x, y = digits
    model = nn.Sequential(DCTQuantise(), digits_model).eval()
    hand = nn.Sequential(IdentityBackward(model[0]), model[1]).eval()
    layers = prepare_layers(model, x[:16], THREAT, ["0"], "test")
    assert layers[0].approx is None  # same shape: the identity
    xa = THREAT.random_init(x[:30], generator=torch.Generator().manual_seed(0))

    def grad(m, inp):
        inp = inp.clone().requires_grad_(True)
        out = m(inp)
        return out.detach(), torch.autograd.grad(nn.functional.cross_entropy(out, y[:30]), inp)[0]

    with straight_through(model, layers):
        o1, g1 = grad(model, xa)
    o2, g2 = grad(hand, xa)
    assert torch.equal(o1, o2) and torch.allclose(g1, g2, atol=1e-7)
    assert grad(model, xa)[1].abs().max() == 0  # the hooks are gone afterwards


def test_a_thermometer_gets_its_exact_gaussian_smoothing():
    """Per channel j, E[1{a + s z > t_j}] = Phi((a - t_j) / s): the tabulated backward against that closed form,
    values and slopes (the table's grid step, 1/4096 of the range, bounds the interpolation error)."""
    th = Thermometer(16)
    a = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    approx = fit_smooth(th, a, sigma=0.03)
    s = 0.03 * float(a.max() - a.min())
    v = torch.linspace(0.05, 0.95, 91).view(-1, 1, 1, 1).requires_grad_(True)
    got = approx(v)
    exact = _phi((v - th.t.view(1, -1, 1, 1)) / s)
    assert (got - exact).abs().max() < 2e-3
    g_got = torch.autograd.grad(got[:, 5].sum(), v)[0]
    g_exact = torch.autograd.grad(exact[:, 5].sum(), v)[0]
    assert (g_got - g_exact).abs().max() < 0.02 * g_exact.abs().max()


def test_the_surrogate_learns_the_targets_decisions_in_the_balls(digits_model, digits):
    """Trained on 100 points and 4 random points of each ball, labelled by the target: it agrees with the target
    on fresh ball points: measured 0.85, 0.85, 0.82 for surrogate seeds 0, 1, 2 (this test uses seed 0); a
    surrogate trained on random labels agrees on 0.19."""
    _, _, x, _ = digits
    sur = train_surrogate(digits_model, x[:100], THREAT, epochs=15)
    fresh = THREAT.random_init(x[:100], generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        agree = (sur(fresh).argmax(1) == digits_model(fresh).argmax(1)).double().mean()
    assert agree >= 0.7


def test_scores_keep_each_points_lowest_and_start_is_respected(digits_model, digits):
    _, _, x, y = digits
    x, y = x[:60], y[:60]
    base = evaluate(digits_model, (x, y), THREAT, suite=["fgsm"])
    start = base.robust.clone()
    cont = evaluate(digits_model, (x, y), THREAT, suite=["apgd-ce"], start=start,
                    attack_kwargs={"apgd-ce": {"steps": 20}})
    assert not (cont.robust & ~start).any()  # never above where it started
    assert cont.per_attack["apgd-ce"]["n"] == int(start.sum())  # attacked only what was left
    assert cont.per_attack["apgd-ce"]["broke"] == int((start & ~cont.robust).sum())
    assert sorted(cont.broken_points()["apgd-ce"]) == (start & ~cont.robust).nonzero().squeeze(1).tolist()
    hard = evaluate(digits_model, (x, y), THREAT, suite=["fgsm"], score=lambda m, xb, yb: (
        m(xb).argmax(1) == yb).double())
    assert hard.robust_accuracy == base.robust_accuracy and torch.equal(hard.robust, base.robust)
    with pytest.raises(ValueError, match="one bool per point"):
        evaluate(digits_model, (x, y), THREAT, suite=["fgsm"], start=torch.ones(60))


class _Stop(Exception):
    pass


def test_a_resumed_eot_escalation_is_identical(digits_model, digits, tmp_path):
    _, _, x, y = digits
    x, y = x[:40], y[:40]
    model = nn.Sequential(RandomShiftNoise(), digits_model).eval()
    kw = dict(attack_kwargs={"apgd-ce": {"steps": 10}}, attacks=("apgd-ce",), draws=4, score_draws=8,
              transfer=False, batch_size=15)
    full = escalate(model, x, y, THREAT, ["randomized_outputs"], **kw)
    assert full.escalations == ["eot"] and full.draws == {"eot": 4, "score": 8}

    def stop(name, batch, total):
        if batch == 2:
            raise _Stop

    with pytest.raises(_Stop):
        escalate(model, x, y, THREAT, ["randomized_outputs"], state_path=tmp_path, progress=stop, **kw)
    again = escalate(model, x, y, THREAT, ["randomized_outputs"], state_path=tmp_path, **kw)
    assert torch.equal(again.result.score, full.result.score)
    assert again.robust_accuracy == full.robust_accuracy and again.result.robust_accuracy < full.clean_accuracy
    assert 0 < full.robust_accuracy < 1 and full.result.score.unique().numel() > 2  # expectations, not 0/1


def test_escalations_give_apgd_t_its_whole_budget_unless_told(monkeypatch, digits_model, digits):
    """The suite's APGD-T gives up on hopeless points; on a flagged model the escalation runs it in full."""
    import armor.adaptive as adaptive

    class _Plan(Exception):
        pass

    def capture(*a, **k):
        raise _Plan(k["attacks"])

    monkeypatch.setattr(adaptive, "evaluate", capture)
    _, _, x, y = digits
    model = nn.Sequential(RandomShiftNoise(), digits_model).eval()
    kw = dict(draws=2, score_draws=2, transfer=False)
    for overrides, want in ((None, None), ({"apgd-t": {"give_up": 3.0}}, 3.0)):
        with pytest.raises(_Plan) as plan:
            escalate(model, x[:10], y[:10], THREAT, ["randomized_outputs"], attack_kwargs=overrides, **kw)
        attacks = plan.value.args[0]
        assert set(attacks) == {"eot-apgd-ce", "eot-apgd-t"}
        assert attacks["eot-apgd-t"].fn.keywords["give_up"] == want
    assert armor.attacks.attack_spec("apgd-t").kwargs["give_up"] == 8.0  # what the escalation overrides


def test_no_flag_no_escalation(monkeypatch, digits_model, digits):
    import armor.adaptive as adaptive

    monkeypatch.setattr(adaptive, "evaluate", lambda *a, **k: pytest.fail("escalation ran without a flag"))
    monkeypatch.setattr(adaptive, "find_nondifferentiable", lambda *a, **k: pytest.fail("probed without a flag"))
    _, _, x, y = digits
    assert escalate(digits_model, x, y, THREAT, ["more_iterations_help", "probability_outputs"]) is None
    assert triggers([{"name": "zero_gradients"}, "more_iterations_help"]) == ["zero_gradients"]
    with pytest.raises(ValueError, match="no submodule named 'nope'"):
        escalate(digits_model, x[:10], y[:10], THREAT, [], modules=["nope"])


def test_measure_reports_the_escalated_worst_case(digits_model, digits):
    """The app's results entry: the suite's number kept, the escalated one reported, the adaptive attacks in
    per_attack with what they broke, and which points each broke."""
    from armor.app.measure import measure

    _, _, x, y = digits
    model = nn.Sequential(DCTQuantise(), digits_model).eval()
    entry, _ = measure(model, (x[:80], y[:80]), THREAT, suite=["fgsm", "apgd-ce"], n=80, eps_grid=[0.1],
                       curve_suite="fast", calibration=False, shift=False, interpret=False, masking_n=80,
                       attack_kwargs={"apgd-ce": {"steps": 20}})
    assert "zero_gradients" in [f["name"] for f in entry["masking_flags"]]
    ad = entry["adaptive"]
    assert "bpda" in ad["escalations"] and ad["layers"][0]["module"] == "0"
    assert entry["robust_accuracy"] < entry["suite_robust_accuracy"] - 0.1
    assert entry["per_attack"]["bpda-apgd-ce"]["broke"] == len(ad["broken_points"]["bpda-apgd-ce"]) > 0
    assert entry["per_attack"]["bpda-apgd-ce"]["cumulative_accuracy"] < entry["suite_robust_accuracy"]
