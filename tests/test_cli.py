"""Every command through typer's CliRunner: happy paths on a tiny digits run, and clear errors."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from armor.app.cli import app
from armor.app.results import SCHEMA

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits-pgd"
    r = invoke("train", "--dataset", "digits", "--model", "small-cnn", "--recipe", "pgd-at", "--eps", "0.1",
               "--epochs", "2", "--steps", "3", "--quiet", "--out", out)
    assert r.exit_code == 0, r.output
    return out


def test_help_lists_every_command():
    r = invoke("--help")
    assert r.exit_code == 0
    for cmd in ("list", "train", "attack", "evaluate", "report", "check", "demo"):
        assert cmd in r.output


@pytest.mark.parametrize("what, expect", [("attacks", "apgd-t"), ("datasets", "fashion-mnist"),
                                          ("models", "preact-resnet18"), ("recipes", "trades"),
                                          ("suites", "standard")])
def test_list(what, expect):
    r = invoke("list", what)
    assert r.exit_code == 0 and expect in r.output


def test_attack_writes_adversarial_examples(run_dir, tmp_path):
    out = tmp_path / "adv.npz"
    r = invoke("attack", run_dir, "--attack", "pgd", "--eps", "0.1", "--n", "64", "--out", out)
    assert r.exit_code == 0, r.output
    z = np.load(out)
    assert z["x_adv"].shape == z["x"].shape == (64, 1, 8, 8)
    assert np.abs(z["x_adv"] - z["x"]).max() <= np.float32(0.1)
    assert (z["pred_adv"] != z["y"]).sum() >= (z["pred_clean"] != z["y"]).sum()


def test_evaluate_report_check_round_trip(run_dir, tmp_path):
    ev = tmp_path / "eval"
    r = invoke("evaluate", run_dir, "--suite", "fast", "--n", "120", "--eps-grid", "0,0.05,0.1,0.2",
               "--out", ev)
    assert r.exit_code == 0, r.output
    res = json.loads((ev / "results.json").read_text())
    assert res["schema"] == SCHEMA
    for key in ("clean_accuracy", "robust_accuracy", "per_attack", "threat_model", "curve", "calibration",
                "shift", "masking_flags", "train_seconds", "eval_seconds", "n"):
        assert key in res, key
    assert [p["eps"] for p in res["curve"]] == [0.0, 0.05, 0.1, 0.2]
    html = tmp_path / "r.html"
    r = invoke("report", ev, "--out", html)
    assert r.exit_code == 0, r.output
    assert "<html" in html.read_text()
    robust = res["robust_accuracy"]
    assert invoke("check", ev / "results.json", "--min-robust-accuracy", max(0.0, robust - 0.01)).exit_code == 0
    r = invoke("check", ev / "results.json", "--min-robust-accuracy", min(1.0, robust + 0.01))
    assert r.exit_code == 1 and "robust accuracy" in r.output and "below the floor" in r.output


def test_check_clean_drop_against_a_baseline(tmp_path):
    def write(name, clean, robust):
        p = tmp_path / name
        p.write_text(json.dumps({"schema": SCHEMA, "armor_version": "x", "clean_accuracy": clean,
                                 "robust_accuracy": robust, "per_attack": {}, "threat_model": {}, "n": 10}))
        return p

    base, hard = write("base.json", 0.99, 0.0), write("hard.json", 0.95, 0.6)
    assert invoke("check", hard, "--max-clean-drop", "0.05", "--baseline", base).exit_code == 0
    r = invoke("check", hard, "--max-clean-drop", "0.02", "--baseline", base)
    assert r.exit_code == 1 and "clean accuracy dropped" in r.output
    r = invoke("check", hard, "--max-clean-drop", "0.02")
    assert r.exit_code == 2 and "needs a baseline" in r.output


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    (json.dumps({"schema": "armor.results/0", "armor_version": "0.0.1"}), "schema"),
    (json.dumps({"schema": SCHEMA, "clean_accuracy": 0.5}), "lacks"),
])
def test_check_rejects_damaged_or_foreign_results(tmp_path, content, match):
    p = tmp_path / "results.json"
    p.write_text(content)
    r = invoke("check", p, "--min-robust-accuracy", "0.5")
    assert r.exit_code == 2 and match in r.output and "Traceback" not in r.output


def test_bad_inputs_get_clear_errors_not_tracebacks(run_dir, tmp_path):
    r = invoke("evaluate", run_dir, "--eps-grid", "0,-0.1", "--out", tmp_path / "e")
    assert r.exit_code == 2 and "negative" in r.output
    r = invoke("evaluate", tmp_path, "--out", tmp_path / "e")
    assert r.exit_code == 2 and "error" in r.output and "Traceback" not in r.output
    r = invoke("attack", run_dir, "--attack", "nope", "--out", tmp_path / "a.npz")
    assert r.exit_code == 2 and "unknown attack 'nope'" in r.output
    r = invoke("attack", run_dir, "--eps", "-1", "--out", tmp_path / "a.npz")
    assert r.exit_code == 2 and "eps" in r.output
    r = invoke("check", tmp_path / "missing.json", "--min-robust-accuracy", "0.5")
    assert r.exit_code == 2 and "does not exist" in r.output
    r = invoke("check", tmp_path / "missing.json", "--min-robust-accuracy", "5")
    assert r.exit_code == 2 and "fraction" in r.output
