"""The CI gate never fails open, the report never mixes threat models, outputs are checked before any compute,
evaluation states are keyed by what they evaluate, and bad counts are refused (each case a regression test)."""

import json
import math
import os
import time

import pytest
from typer.testing import CliRunner

from armor.app.cli import app
from armor.app.results import SCHEMA

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gate") / "run"
    r = invoke("train", "--dataset", "digits", "--model", "mlp", "--recipe", "standard", "--eps", "0.1",
               "--epochs", "1", "--n-train", "128", "--quiet", "--out", out)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def evaluated(run, tmp_path_factory):
    """The run evaluated at eps 0.1 and at eps 0.02 (fast suite, 40 points, no extras)."""
    base = tmp_path_factory.mktemp("evals")
    outs = {}
    for eps in ("0.1", "0.02"):
        out = base / f"e{eps}"
        r = invoke("evaluate", run, "--eps", eps, "--suite", "fast", "--n", "40", "--no-extras", "--out", out)
        assert r.exit_code == 0, r.output
        outs[eps] = out
    return outs


def _results(tmp_path, **changes):
    entry = {"name": "m", "clean_accuracy": 0.9, "robust_accuracy": 0.6, "n": 100,
             "per_attack": {"pgd": {"accuracy": 0.6, "cumulative_accuracy": 0.6, "seconds": 1.0, "n": 90}},
             "threat_model": {"norm": "linf", "eps": 0.1, "bounds": [0.0, 1.0]},
             "threat": {"norm": "linf", "eps": 0.1, "eps_unit": "input units"}}
    entry.update(changes)
    p = tmp_path / "results.json"
    p.write_text(json.dumps({"schema": SCHEMA, "armor_version": "0.1.0", **entry}))
    return p


# ---------------------------------------------------------------------------------------------- the gate
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1.7, -0.1, "0.9", None, True])
def test_the_gate_fails_closed_on_figures_it_cannot_trust(tmp_path, value):
    p = _results(tmp_path, robust_accuracy=value)
    r = invoke("check", p, "--min-robust-accuracy", "0.5")
    assert r.exit_code == 2, r.output
    assert "robust_accuracy" in r.output and "PASS" not in r.output


@pytest.mark.parametrize("changes,match", [
    ({"claims": "yes"}, "claims"),
    ({"per_attack": "pgd"}, "per_attack"),
    ({"per_attack": {"pgd": "0.5"}}, "per_attack"),
    ({"threat_model": "linf"}, "threat_model"),
    ({"threat_model": {"norm": "linf", "eps": "big"}}, "eps"),
    ({"n": 0}, "n must be"),
    ({"curve": "flat"}, "curve"),
])
def test_damaged_results_are_clear_errors_not_tracebacks(tmp_path, changes, match):
    p = _results(tmp_path, **changes)
    for args in (("check", p, "--min-robust-accuracy", "0.5"), ("report", p, "--out", tmp_path / "r.html")):
        r = invoke(*args)
        assert r.exit_code == 2 and match in r.output and "Traceback" not in r.output, r.output
        assert r.exception is None or isinstance(r.exception, SystemExit)


def test_a_models_entry_that_is_not_an_object_is_refused(tmp_path):
    p = tmp_path / "results.json"
    p.write_text(json.dumps({"schema": SCHEMA, "models": {"a": "broken"}}))
    r = invoke("check", p, "--min-robust-accuracy", "0.5")
    assert r.exit_code == 2 and "model 'a' must be an object" in r.output


def test_pass_and_fail_lines_name_model_threat_figure_and_floor(tmp_path):
    p = _results(tmp_path)
    r = invoke("check", p, "--min-robust-accuracy", "0.5")
    assert r.exit_code == 0
    assert "PASS m under linf eps=0.1 (input units), n=100: robust accuracy 0.6000 >= the floor 0.5000" in r.output
    r = invoke("check", p, "--min-robust-accuracy", "0.7")
    assert r.exit_code == 1 and "FAIL m under linf eps=0.1" in r.output and "below the floor 0.7000" in r.output


def test_the_gate_can_pin_the_threat_model(tmp_path):
    p = _results(tmp_path)
    assert invoke("check", p, "--min-robust-accuracy", "0.5", "--eps", "0.1", "--norm", "linf").exit_code == 0
    r = invoke("check", p, "--min-robust-accuracy", "0.5", "--eps", "0.3")
    assert r.exit_code == 1 and "another eps" in r.output
    r = invoke("check", p, "--min-robust-accuracy", "0.5", "--norm", "l2")
    assert r.exit_code == 1 and "linf norm, the gate asks for l2" in r.output


def test_evaluate_records_the_threat_the_gate_pins(evaluated):
    res = json.loads((evaluated["0.02"] / "results.json").read_text())
    assert res["threat"] == {"norm": "linf", "eps": 0.02, "eps_unit": "input units"}
    assert invoke("check", evaluated["0.02"], "--min-robust-accuracy", "0", "--eps", "0.02").exit_code == 0
    assert invoke("check", evaluated["0.02"], "--min-robust-accuracy", "0", "--eps", "0.1").exit_code == 1


# ---------------------------------------------------------------------------------------------- the report
def test_the_report_refuses_to_compare_different_threat_models(evaluated, tmp_path):
    r = invoke("report", evaluated["0.1"], evaluated["0.02"], "--out", tmp_path / "r.html")
    assert r.exit_code == 2 and "different threat models" in r.output
    assert "eps=0.1" in r.output and "eps=0.02" in r.output and not (tmp_path / "r.html").exists()


def test_the_report_shows_evaluation_time_and_the_threat(evaluated, tmp_path):
    r = invoke("report", evaluated["0.1"], "--out", tmp_path / "r.html")
    assert r.exit_code == 0, r.output
    html = (tmp_path / "r.html").read_text()
    total = json.loads((evaluated["0.1"] / "results.json").read_text())["eval_seconds"]["total"]
    cost = html[html.index('id="cost"'):html.index('id="masking"')]
    assert f"{total:.1f} s" in cost
    assert "linf eps=0.1 (input units)" in html


# ---------------------------------------------------------------------------------------------- outputs first
@pytest.mark.parametrize("cmd", ["evaluate", "attack", "report"])
def test_unwritable_outputs_fail_before_any_compute(run, evaluated, tmp_path, cmd):
    target = {"evaluate": [run], "attack": [run], "report": [evaluated["0.1"]]}[cmd]
    for out in ("/proc/armor-test/x", "/proc/x.npz"):
        t0 = time.perf_counter()
        r = invoke(cmd, *target, "--out", out)
        assert r.exit_code == 2 and "cannot write" in r.output, r.output
        assert time.perf_counter() - t0 < 5  # refused up front: a full evaluation takes longer than this


def test_outputs_of_the_wrong_kind_are_named(run, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    r = invoke("evaluate", run, "--out", afile)
    assert r.exit_code == 2 and "is a file" in r.output
    r = invoke("demo", "--out", afile)
    assert r.exit_code == 2 and "is a file" in r.output
    r = invoke("attack", run, "--out", tmp_path)
    assert r.exit_code == 2 and "is a directory" in r.output and "adv.npz" in r.output


def test_a_new_threat_into_the_same_directory_just_works(run, tmp_path):
    out = tmp_path / "e"
    for eps in ("0.1", "0.05", "0.1"):
        r = invoke("evaluate", run, "--eps", eps, "--suite", "fast", "--n", "20", "--no-extras", "--out", out)
        assert r.exit_code == 0, r.output
        assert json.loads((out / "results.json").read_text())["threat"]["eps"] == float(eps)
    assert not list(out.glob("eval-*.state"))  # a finished evaluation leaves no state behind


@pytest.mark.parametrize("n", ["0", "-5"])
def test_non_positive_counts_are_refused(run, tmp_path, n):
    for cmd in ("evaluate", "attack"):
        r = invoke(cmd, run, "--n", n, "--out", tmp_path / ("o.npz" if cmd == "attack" else "o"))
        assert r.exit_code == 2 and "--n must be a positive number" in r.output, r.output


def test_measuring_a_diverged_or_unfinished_run_warns(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    for status, words in (("diverged", "diverged during training"), ("running", "still training or was killed")):
        meta["status"] = status
        (copy / "metadata.json").write_text(json.dumps(meta))
        r = invoke("evaluate", copy, "--suite", "fast", "--n", "10", "--no-extras", "--out", tmp_path / "e")
        assert r.exit_code == 0 and words in r.output, r.output


def test_rich_markup_does_not_eat_bracketed_text(tmp_path):
    r = invoke("check", tmp_path / "[weird]" / "results.json", "--min-robust-accuracy", "0.5")
    assert r.exit_code == 2 and "[weird]" in r.output


def test_train_refuses_a_file_or_an_unknown_device_before_training(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    r = invoke("train", "--dataset", "digits", "--epochs", "1", "--out", afile)
    assert r.exit_code == 2 and "is a file" in r.output, r.output
    r = invoke("train", "--dataset", "digits", "--epochs", "1", "--device", "tpu", "--out", tmp_path / "r")
    assert r.exit_code == 2 and "unknown device 'tpu'" in r.output, r.output


def test_a_demo_run_twice_reuses_its_finished_runs_and_never_replaces_another(tmp_path):
    from armor.app.config import TrainConfig, train_or_reuse

    cfg = dict(dataset="digits", model="mlp", recipe="standard", epochs=1, n_train=64, quiet=True,
               out=str(tmp_path / "standard"))
    said: list[str] = []
    assert train_or_reuse(TrainConfig(**cfg), before=said.append) == "trained"
    assert said == ["training"]  # announced before the work, never for a reused run
    weights = (tmp_path / "standard" / "best.safetensors").read_bytes()
    assert train_or_reuse(TrainConfig(**cfg), before=said.append) == "reused"
    assert said == ["training"]
    assert (tmp_path / "standard" / "best.safetensors").read_bytes() == weights
    with pytest.raises(ValueError, match="another configuration.*epochs: 1 -> 2"):
        train_or_reuse(TrainConfig(**{**cfg, "epochs": 2}))
    meta_path = tmp_path / "standard" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["status"] = "running"  # as if killed after its last checkpoint
    meta_path.write_text(json.dumps(meta))
    assert train_or_reuse(TrainConfig(**cfg), before=said.append) == "resumed"
    assert said == ["training", "resuming"]
    assert json.loads(meta_path.read_text())["status"] == "finished"


def test_every_installed_workflow_gate_is_an_option_and_two_meanings_of_one_gate_are_refused():
    from armor.app.train_cli import workflow_gates
    from armor.plugins import Domain, Workflow, domains, registered

    gates = workflow_gates()
    for name, domain in domains().items():  # each gate a workflow declares is an `armor check --min-GATE` option
        for gate, key in (domain.workflow.gates.items() if domain.workflow else ()):
            assert gate == "robust-accuracy" or gates[gate][0] == key
            if gate != "robust-accuracy":
                assert f"--min-{gate}" in invoke("check", "--help").output
    wf = Workflow(train=lambda *a, **k: None, evaluate=lambda *a, **k: ({}, {}), gates={"robust-return": "other"})
    with registered(Domain(name="clash", workflow=wf)):
        with pytest.raises(ValueError, match="--min-robust-return means 'robust_return' for agents and 'other'"):
            workflow_gates()


def test_a_workflow_refuses_classifier_options_it_did_not_declare_and_other_domains_options(tmp_path):
    from armor.app.train_cli import train_workflow
    from armor.plugins import Domain, Option, Workflow, registered

    seen = {}
    wf = Workflow(train=lambda options, out, quiet: seen.update(options), evaluate=lambda *a, **k: ({}, {}),
                  options={"toy_size": Option(int, None, "toy: a size")}, shared=("epochs",))
    with registered(Domain(name="toyflow", workflow=wf)):
        with pytest.raises(ValueError, match="--lr do not apply to --domain toyflow"):
            train_workflow("toyflow", {"lr": 0.1, "out": str(tmp_path / "a")}, None)
        with pytest.raises(ValueError, match="--env do not apply to --domain toyflow"):  # an agents option
            train_workflow("toyflow", {"env": "CartPole-v1", "out": str(tmp_path / "a")}, None)
        train_workflow("toyflow", {"epochs": 3, "toy_size": 2, "out": str(tmp_path / "a")}, None)
    assert seen["epochs"] == 3 and seen["toy_size"] == 2
