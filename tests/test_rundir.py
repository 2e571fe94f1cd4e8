"""One meaning of eps per threat model: a run records the exact threat it trained against, `armor evaluate RUN`
evaluates that threat, and `--eps` means the same unit at training and at evaluation time."""

import json

import pytest
import torch
from typer.testing import CliRunner

import armor
from armor.app.cli import app
from armor.app.rundir import RunDir, build_threat
from armor.domains.tabular import load_tabular

runner = CliRunner()


@pytest.fixture(scope="module")
def bc_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bc") / "run"
    r = runner.invoke(app, ["train", "--dataset", "breast-cancer", "--recipe", "pgd-at", "--eps", "0.5",
                            "--epochs", "1", "--n-train", "64", "--val-steps", "1", "--quiet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def _same(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_evaluate_without_eps_evaluates_the_trained_threat(bc_run, tmp_path):
    trained = json.loads((bc_run / "metadata.json").read_text())["threat_model"]
    for extra in ([], ["--eps", "0.5"]):
        out = tmp_path / ("given" if extra else "default")
        r = runner.invoke(app, ["evaluate", str(bc_run), "--suite", "cpgd", "--n", "10", "--no-extras",
                                "--out", str(out), *extra])
        assert r.exit_code == 0, r.output
        evaluated = json.loads((out / "results.json").read_text())["threat_model"]
        assert _same(evaluated, trained), "evaluate must use the exact threat the run trained against"


def test_tabular_eps_is_in_standard_deviations_at_train_and_evaluate_time(bc_run):
    run = RunDir(bc_run)
    expected = load_tabular("breast-cancer").threat(0.5)
    assert torch.equal(run.threat().eps, expected.eps)
    assert torch.equal(run.threat(eps=0.25).eps, load_tabular("breast-cancer").threat(0.25).eps)
    assert torch.allclose(run.threat(eps=0.25).eps * 2, run.threat().eps)  # half the budget, same unit
    assert run.metadata["threat"] == {"norm": "linf", "eps": 0.5, "eps_unit": "standard deviations per feature"}
    with pytest.raises(ValueError, match="linf"):
        build_threat("breast-cancer", "l2", 0.5)


def test_image_runs_keep_input_units_and_may_change_the_norm(tmp_path):
    out = tmp_path / "digits"
    r = runner.invoke(app, ["train", "--dataset", "digits", "--model", "mlp", "--recipe", "standard", "--eps", "0.1",
                            "--epochs", "1", "--n-train", "64", "--quiet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    run = RunDir(out)
    assert run.threat().eps == 0.1 and run.threat(eps=0.05).eps == 0.05
    assert run.threat(norm="l2", eps=0.5).norm is armor.Norm.L2
    assert run.eps_unit() == "input units"
