"""Calibration metrics against independent references (sklearn, numpy loops) and known cases.

Runtime ~3 s on 2 busy cores.
"""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss, log_loss

import armor
from armor.metrics import (CalibrationMeter, brier_score, calibration_metrics, calibration_report,
                           expected_calibration_error, negative_log_likelihood, reliability_diagram)
from conftest import accuracy


def _random_logits(n=600, k=7, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    # Mixed temperatures spread the confidences over every bin.
    temp = torch.rand(n, 1, generator=g) * scale + 0.1
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * temp
    y = torch.randint(0, k, (n,), generator=g)
    return logits, y


def _softmax_np(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _ece_reference(probs, y, n_bins=15):
    """Straightforward numpy loop: top-label confidence, equal-width bins (lo, hi]."""
    conf = probs.max(axis=1)
    pred = probs.argmax(axis=1)
    edges = np.linspace(0, 1, n_bins + 1)
    ece, rows = 0.0, []
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        in_bin = (conf > lo) & (conf <= hi) if b > 0 else (conf >= lo) & (conf <= hi)
        if in_bin.sum() == 0:
            rows.append((None, None, 0))
            continue
        acc = (pred[in_bin] == y[in_bin]).mean()
        avg = conf[in_bin].mean()
        ece += in_bin.mean() * abs(acc - avg)
        rows.append((avg, acc, int(in_bin.sum())))
    return ece, rows


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nll_matches_sklearn_log_loss(seed, dtype):
    logits, y = _random_logits(seed=seed)
    logits = logits.to(dtype)
    probs = _softmax_np(logits.double().numpy())
    ref = log_loss(y.numpy(), probs, labels=list(range(logits.shape[1])))
    assert negative_log_likelihood(logits, y) == pytest.approx(ref, rel=1e-10)
    assert negative_log_likelihood(torch.from_numpy(probs), y, from_logits=False) == pytest.approx(ref, rel=1e-10)
    # and it is the cross-entropy loss
    ce = torch.nn.functional.cross_entropy(logits.double(), y).item()
    assert negative_log_likelihood(logits, y) == pytest.approx(ce, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_brier_matches_sklearn_and_numpy_multiclass(seed):
    logits, y = _random_logits(seed=seed)
    probs = _softmax_np(logits.numpy())
    onehot = np.eye(probs.shape[1])[y.numpy()]
    ref_np = ((probs - onehot) ** 2).sum(axis=1).mean()
    ref_sk = brier_score_loss(y.numpy(), probs, labels=list(range(probs.shape[1])), scale_by_half=False)
    assert brier_score(logits, y) == pytest.approx(ref_np, rel=1e-12)
    assert brier_score(logits, y) == pytest.approx(ref_sk, rel=1e-10)
    assert 0.0 <= brier_score(logits, y) <= 2.0


def test_binary_brier_is_twice_sklearns_binary_convention():
    logits, y = _random_logits(n=400, k=2, seed=4)
    p1 = _softmax_np(logits.numpy())[:, 1]
    assert brier_score(logits, y) == pytest.approx(2 * brier_score_loss(y.numpy(), p1), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("n_bins", [15, 10, 1])
def test_ece_and_reliability_match_a_numpy_loop(seed, n_bins):
    logits, y = _random_logits(n=2000, seed=seed)
    probs = _softmax_np(logits.numpy())
    ref, rows = _ece_reference(probs, y.numpy(), n_bins)
    assert expected_calibration_error(logits, y, n_bins=n_bins) == pytest.approx(ref, abs=1e-12)
    rel = reliability_diagram(logits, y, n_bins=n_bins)
    assert rel["count"] == [r[2] for r in rows] and sum(rel["count"]) == 2000
    for (conf, acc, _), c, a in zip(rows, rel["confidence"], rel["accuracy"]):
        if conf is None:
            assert c is None and a is None
        else:
            assert c == pytest.approx(conf, abs=1e-12) and a == pytest.approx(acc, abs=1e-12)
    assert rel["bin_lower"][0] == 0.0 and rel["bin_upper"][-1] == 1.0


def test_perfectly_calibrated_predictor_has_ece_near_zero():
    g = torch.Generator().manual_seed(0)
    n, k = 200_000, 5
    conf = torch.rand(n, generator=g, dtype=torch.float64) * (1 - 1 / k) + 1 / k  # top label above 1/k
    pred = torch.randint(0, k, (n,), generator=g)
    probs = torch.full((n, k), 0.0, dtype=torch.float64) + ((1 - conf) / (k - 1))[:, None]
    probs[torch.arange(n), pred] = conf
    right = torch.rand(n, generator=g, dtype=torch.float64) < conf  # correct with probability = confidence
    other = (pred + torch.randint(1, k, (n,), generator=g)) % k
    y = torch.where(right, pred, other)
    ece = expected_calibration_error(probs, y, from_logits=False)
    assert ece < 0.006  # sampling noise only: measured 0.0021 at this seed
    # Halving the accuracy at every confidence leaves a gap of conf / 2 in each bin: ECE = E[conf] / 2 = 0.3.
    y_bad = torch.where(right & (torch.rand(n, generator=g) < 0.5), other, y)
    assert expected_calibration_error(probs, y_bad, from_logits=False) == pytest.approx(0.3, abs=0.006)


def test_overconfident_predictor_has_ece_equal_to_its_gap():
    n, k = 1000, 4
    probs = torch.full((n, k), 0.1 / (k - 1), dtype=torch.float64)
    probs[:, 0] = 0.9
    y = torch.zeros(n, dtype=torch.long)
    y[600:] = 2  # 60% right at 90% confidence
    assert expected_calibration_error(probs, y, from_logits=False) == pytest.approx(0.3, abs=1e-12)
    # two groups: conf .95 / acc .75 and conf .65 / acc .55 -> ECE = .5 * .2 + .5 * .1
    probs2 = torch.full((n, 2), 0.0, dtype=torch.float64)
    probs2[:500] = torch.tensor([0.95, 0.05], dtype=torch.float64)
    probs2[500:] = torch.tensor([0.65, 0.35], dtype=torch.float64)
    y2 = torch.ones(n, dtype=torch.long)
    y2[:375] = 0
    y2[500:775] = 0
    assert expected_calibration_error(probs2, y2, from_logits=False) == pytest.approx(0.15, abs=1e-12)


def test_meter_accumulated_over_batches_equals_one_call():
    logits, y = _random_logits(n=1003, seed=5)
    whole = calibration_metrics(logits, y)
    meter = CalibrationMeter()
    for i in range(0, 1003, 97):
        meter.update(logits[i:i + 97].float(), y[i:i + 97])
    acc = meter.compute()
    whole32 = calibration_metrics(logits.float(), y)
    for key in ("ece", "nll", "brier", "accuracy", "mean_confidence"):
        assert acc[key] == pytest.approx(whole32[key], abs=1e-12)
        assert acc[key] == pytest.approx(whole[key], abs=1e-6)
    assert acc["reliability"]["count"] == whole32["reliability"]["count"]
    assert acc["n"] == 1003 and whole["accuracy"] == pytest.approx((logits.argmax(1) == y).double().mean().item())
    meter.reset()
    with pytest.raises(ValueError, match="no samples"):
        meter.compute()


@pytest.mark.parametrize("scores, y, kw, match", [
    (torch.randn(5, 3), torch.tensor([0, 1, 2, 0]), {}, "4 labels but scores has 5"),
    (torch.randn(4, 3), torch.tensor([0, 1, 3, 0]), {}, r"labels must lie in \[0, 2\]"),
    (torch.randn(4, 3), torch.tensor([0.0, 1, 2, 0]), {}, "integer"),
    (torch.rand(4, 3), torch.tensor([0, 1, 2, 0]), {"from_logits": False}, "probabilities"),
    (torch.full((4, 3), float("nan")), torch.tensor([0, 1, 2, 0]), {}, "NaN"),
    (torch.randn(4), torch.tensor([0, 1, 2, 0]), {}, r"shape \(N, classes\)"),
    (torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), {"n_bins": 0}, "n_bins"),
])
def test_bad_inputs_get_clear_errors(scores, y, kw, match):
    with pytest.raises(ValueError, match=match):
        calibration_metrics(scores, y, **kw)


def test_report_on_a_model_clean_and_attacked(model, digits):
    _, _, x, y = digits
    x, y = x[:200], y[:200]
    threat = armor.ThreatModel("linf", 0.1)
    rep = calibration_report(model, x, y, threat, attack_kwargs={"steps": 10})
    json.dumps(rep)
    assert rep["clean"]["accuracy"] == pytest.approx(accuracy(model, x, y))
    assert rep["clean"]["n"] == rep["attacked"]["n"] == 200
    # An undefended model under attack is confidently wrong: accuracy falls and every error measure grows.
    assert rep["attacked"]["accuracy"] < rep["clean"]["accuracy"] - 0.2
    for key in ("ece", "nll", "brier"):
        assert rep["attacked"][key] > rep["clean"][key]
    # passing the same adversarial inputs gives the same numbers
    g = torch.Generator().manual_seed(0)
    x_adv = armor.attacks.pgd(model, x, y, threat, steps=10, generator=g)
    given = calibration_report(model, x, y, x_adv=x_adv)
    assert given["attacked"]["ece"] == pytest.approx(rep["attacked"]["ece"], abs=1e-12)
    assert calibration_report(model, x, y)["attacked"] is None
