"""The worst-case evaluator: AutoAttack bookkeeping, JSON output, resume."""

import json

import pytest
import torch

import armor
from armor.evaluate import SUITES, evaluate, resolve_suite
from conftest import accuracy

FAST_KW = {"apgd-ce": {"steps": 20}, "apgd-t": {"steps": 10, "n_target_classes": 3}, "square": {"n_queries": 300}}


def test_worst_case_is_below_every_attack_and_cumulative_is_monotone(model, digits):
    _, _, x, y = digits
    threat = armor.ThreatModel("linf", 0.06)
    r = evaluate(model, (x, y), threat, suite="standard", individual=True, attack_kwargs=FAST_KW)
    assert r.clean_accuracy == pytest.approx(accuracy(model, x, y))
    own = [v["accuracy"] for v in r.per_attack.values()]
    cum = [v["cumulative_accuracy"] for v in r.per_attack.values()]
    assert r.robust_accuracy <= min(own)
    assert cum == sorted(cum, reverse=True) and cum[-1] == r.robust_accuracy
    assert 0.05 < r.robust_accuracy < r.clean_accuracy
    # the per-sample mask agrees with the headline number
    assert r.robust.float().mean().item() == pytest.approx(r.robust_accuracy)
    assert not (r.robust & ~r.clean_correct).any()


def test_successes_are_never_overwritten_and_adv_examples_are_real(model, digits):
    _, _, x, y = digits
    threat = armor.ThreatModel("linf", 0.06)
    r = evaluate(model, (x, y), threat, suite=["fgsm", "pgd", "apgd-ce"], keep_adv=True,
                 attack_kwargs={"apgd-ce": {"steps": 20}})
    with torch.no_grad():
        pred = model(r.x_adv).argmax(1)
    broken = r.clean_correct & ~r.robust
    assert (pred[broken] != y[broken]).all(), "a stored adversarial example does not fool the model"
    assert torch.equal(r.x_adv[r.robust], x[r.robust])
    assert threat.contains(r.x_adv, x).all()
    # later attacks only ran on what earlier ones left
    assert r.per_attack["pgd"]["n"] <= r.per_attack["fgsm"]["n"]


def test_result_is_json_serialisable(model, digits):
    _, _, x, y = digits
    r = evaluate(model, (x[:50], y[:50]), armor.ThreatModel("l2", 0.5), suite="fast")
    d = json.loads(r.to_json())
    assert set(d) >= {"clean_accuracy", "robust_accuracy", "per_attack", "threat_model", "n", "seconds", "suite"}
    assert d["threat_model"] == {"norm": "l2", "eps": 0.5, "bounds": [0.0, 1.0]}
    assert d["n"] == 50 and set(d["per_attack"]) == {"pgd", "apgd-ce"}
    assert all({"seconds", "n", "cumulative_accuracy"} <= set(v) for v in d["per_attack"].values())


def test_same_seed_same_result_and_n_subsets(model, digits):
    _, _, x, y = digits
    threat = armor.ThreatModel("linf", 0.06)
    a = evaluate(model, (x, y), threat, suite="fast", n=120, seed=3)
    b = evaluate(model, (x, y), threat, suite="fast", n=120, seed=3)
    assert a.n == 120 and torch.equal(a.robust, b.robust)


class _Interrupt(Exception):
    pass


def test_interrupted_evaluation_resumes_exactly(model, digits, tmp_path):
    _, _, x, y = digits
    threat = armor.ThreatModel("linf", 0.06)
    kw = dict(suite=["pgd", "apgd-ce", "apgd-t"], batch_size=40, seed=1, individual=True,
              attack_kwargs={"apgd-ce": {"steps": 20}, "apgd-t": {"steps": 10, "n_target_classes": 2}})
    full = evaluate(model, (x, y), threat, **kw)
    state = tmp_path / "eval.state"
    calls = {"n": 0}

    def stop_midway(name, batch, total):
        calls["n"] += 1
        if name == "apgd-ce" and batch == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        evaluate(model, (x, y), threat, state_path=state, progress=stop_midway, **kw)
    assert state.exists()
    seen = []
    resumed = evaluate(model, (x, y), threat, state_path=state, progress=lambda *a: seen.append(a), **kw)
    assert torch.equal(resumed.robust, full.robust)
    assert resumed.robust_accuracy == full.robust_accuracy
    for name in full.per_attack:
        assert resumed.per_attack[name]["accuracy"] == full.per_attack[name]["accuracy"]
        assert resumed.per_attack[name]["cumulative_accuracy"] == full.per_attack[name]["cumulative_accuracy"]
    assert seen[0][:2] == ("apgd-ce", 3), "resume must continue after the last finished batch, not restart"


def test_state_from_another_setting_is_refused(model, digits, tmp_path):
    _, _, x, y = digits
    state = tmp_path / "s"
    evaluate(model, (x[:30], y[:30]), armor.ThreatModel("linf", 0.1), suite="fast", state_path=state)
    with pytest.raises(ValueError, match="different model, data or suite"):
        evaluate(model, (x[:30], y[:30]), armor.ThreatModel("linf", 0.2), suite="fast", state_path=state)
    state.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="unreadable"):
        evaluate(model, (x[:30], y[:30]), armor.ThreatModel("linf", 0.1), suite="fast", state_path=state)


def test_suites_resolve_per_norm_and_reject_bad_names():
    assert resolve_suite("standard", armor.ThreatModel("linf", 0.1)) == SUITES["standard"]["linf"]
    assert "square" not in resolve_suite("standard", armor.ThreatModel("l1", 1.0))
    assert resolve_suite("pgd,apgd-ce", armor.ThreatModel("l2", 1.0)) == ["pgd", "apgd-ce"]
    with pytest.raises(ValueError, match="unknown attack 'nope'"):
        resolve_suite(["pgd", "nope"], armor.ThreatModel("linf", 0.1))
    with pytest.raises(ValueError, match="does not support the l1 norm"):
        resolve_suite(["square"], armor.ThreatModel("l1", 0.1))


def test_bad_data_is_rejected(model, digits):
    _, _, x, y = digits
    with pytest.raises(ValueError, match="outside the threat model's bounds"):
        evaluate(model, (x * 2, y), armor.ThreatModel("linf", 0.1), suite="fast")
    with pytest.raises(ValueError, match="out of range"):
        evaluate(model, (x, y + 10), armor.ThreatModel("linf", 0.1), suite="fast")
    with pytest.raises(ValueError, match="pair"):
        evaluate(model, x, armor.ThreatModel("linf", 0.1))
