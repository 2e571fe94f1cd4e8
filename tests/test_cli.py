"""Every command through typer's CliRunner: happy paths on a tiny digits run, and clear errors."""

import json
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from armor.app.cli import app
from armor.app.results import SCHEMA
from armor.data import load_dataset
from armor.training import load

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


COMMANDS = {"list", "train", "attack", "evaluate", "report", "check", "demo"}


def test_help_lists_every_command():
    """The Commands panel lists exactly these commands, each a row of its own. Most of their names are also
    words of the app's description ("Attack models, ... adversarial training, ... report it"), so the rows
    are parsed rather than searched for words: a command that is not registered has no row."""
    r = invoke("--help")
    assert r.exit_code == 0
    panel = r.output[r.output.index("Commands"):]
    # rich draws each row as "│ name   description │"; continuation lines are indented past the name column
    rows = re.findall(r"^│ (\S+) {2,}\S", panel, flags=re.M)
    assert set(rows) == COMMANDS and len(rows) == len(COMMANDS), rows
    for cmd in sorted(COMMANDS):  # and each one answers its own --help
        r = invoke(cmd, "--help")
        assert r.exit_code == 0 and re.search(rf"Usage: \S+ {cmd} ", r.output), (cmd, r.output)


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
    x, y, x_adv = (torch.from_numpy(z[k]) for k in ("x", "y", "x_adv"))
    assert x_adv.shape == x.shape == (64, 1, 8, 8)
    test = load_dataset("digits", "test")  # the first 64 test points, as asked
    assert torch.equal(x, test.x[:64]) and torch.equal(y, test.y[:64])
    assert (x_adv - x).abs().max() <= np.float32(0.1) and x_adv.min() >= 0 and x_adv.max() <= 1
    # the predictions stored are the run's model's (best checkpoint) on x and x_adv, recomputed here
    model = load(run_dir)
    with torch.no_grad():
        pred_clean, pred_adv = model(x).argmax(1), model(x_adv).argmax(1)
    assert np.array_equal(z["pred_clean"], pred_clean.numpy()) and np.array_equal(z["pred_adv"], pred_adv.numpy())
    # and the attack does its job (an attack returning x would fool none): of the points the model gets right,
    # PGD fools most, a random corner of the same ball next to none (measured on these 64 points, 2-epoch
    # model: 20 right, PGD fools 12, random signs 0)
    right = pred_clean == y
    fooled = int((right & (pred_adv != y)).sum())
    signs = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        noise_fooled = int((right & (model((x + 0.1 * signs).clamp(0, 1)).argmax(1) != y)).sum())
    assert right.sum() >= 10 and fooled >= 0.4 * int(right.sum()) and fooled >= noise_fooled + 5, (
        int(right.sum()), fooled, noise_fooled)
    acc_clean, acc_adv = right.float().mean().item(), (pred_adv == y).float().mean().item()
    assert f"accuracy {acc_clean:.1%} -> {acc_adv:.1%}" in " ".join(r.output.split())


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
                                 "robust_accuracy": robust, "per_attack": {},
                                 "threat_model": {"norm": "linf", "eps": 0.1}, "n": 10}))
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


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", ["attack", "evaluate"])
@pytest.mark.parametrize("device, match", [("cuda", "CUDA is not available here"), ("cuda:1", "CUDA is not available"),
                                           ("mps", "MPS (Apple GPUs) is not available here"),
                                           ("tpu", "is not a device"), ("meta", "is not supported")])
def test_device_that_is_not_here_is_a_clear_error(run_dir, tmp_path, command, device, match):
    out = tmp_path / ("a.npz" if command == "attack" else "e")
    r = invoke(command, run_dir, "--device", device, "--n", "8", "--out", out)
    assert r.exit_code == 2 and "error: --device" in r.output and match in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output and not out.exists()  # refused before any work


def test_bpda_names_a_layer_and_escalates_without_a_flag(run_dir, tmp_path):
    """`--bpda MODULE` on an honest model: no masking check runs (--no-extras), yet naming a layer escalates with
    BPDA through it (identity backward through a ReLU), and the summary says what the escalation did."""
    base = ["--suite", "fgsm", "--n", "30", "--batch-size", "30", "--no-extras", "--certify", "none", "--quiet",
            "--threads", "1"]
    r = invoke("evaluate", run_dir, *base, "--bpda", "net.1", "--out", tmp_path / "e")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "e" / "results.json").read_text())
    ad = res["adaptive"]
    assert ad["triggered_by"] == [] and ad["escalations"] == ["bpda"]
    assert [(la["module"], la["reason"]) for la in ad["layers"]] == [("net.1", "named by the user")]
    assert list(res["per_attack"]) == ["fgsm", "bpda-apgd-ce", "bpda-apgd-t"]
    # the worst case over suite and escalation: the last attack's cumulative figure, never above the suite's
    assert res["robust_accuracy"] == res["per_attack"]["bpda-apgd-t"]["cumulative_accuracy"]
    assert res["robust_accuracy"] <= res["suite_robust_accuracy"] == res["per_attack"]["fgsm"]["cumulative_accuracy"]
    # broke counts add up to the drop from the suite's number (30 points)
    broke = sum(res["per_attack"][a]["broke"] for a in ("bpda-apgd-ce", "bpda-apgd-t"))
    assert broke == round((res["suite_robust_accuracy"] - res["robust_accuracy"]) * 30)
    out = " ".join(r.output.split())
    assert (f"robust accuracy {res['suite_robust_accuracy']:.4f} -> {res['robust_accuracy']:.4f}" in out
            and "bpda-apgd-ce: broke" in out and "bpda-apgd-t: broke" in out), r.output
    # --no-adaptive: the suite's own number, nothing escalated (the same suite, the same seed)
    r = invoke("evaluate", run_dir, *base, "--no-adaptive", "--out", tmp_path / "s")
    assert r.exit_code == 0, r.output
    plain = json.loads((tmp_path / "s" / "results.json").read_text())
    assert "adaptive" not in plain and plain["robust_accuracy"] == res["suite_robust_accuracy"]
    assert "adaptive escalation" not in r.output


def test_bpda_with_a_wrong_name_is_a_clear_error(run_dir, tmp_path):
    out = tmp_path / "e"
    r = invoke("evaluate", run_dir, "--bpda", "net.99", "--n", "8", "--quiet", "--out", out)
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "error:" in text and "no submodule named 'net.99'" in text, r.output
    assert "'net.1'" in text and "Traceback" not in r.output and not (out / "results.json").exists()
    r = invoke("evaluate", run_dir, "--bpda", "net.1", "--no-adaptive", "--n", "8", "--quiet", "--out", out)
    assert r.exit_code == 2 and "--no-adaptive" in r.output
