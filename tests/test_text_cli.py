"""The text domain through the application: `armor train --domain text`, `armor evaluate RUN` (per-sentence
worst case over recipes, the threat saved in results.json), `armor check --min-robust-accuracy`, `armor report`
with the text section and its escaped gallery, refusals, and a killed run that resumes to the same weights."""

import json

import pytest
import torch
from typer.testing import CliRunner

from armor.app.cli import app
from armor.domains.text.train import STATE, WEIGHTS, train_text
from armor.training.checkpoint import load_weights

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("textcli") / "std"
    r = invoke("train", "--domain", "text", "--out", out, "--text-epochs", 2, "--train-sentences", 1500,
               "--eps", 0.15, "--min-similarity", 0, "--seed", 1, "--quiet")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def evaluated(run):
    r = invoke("evaluate", run, "--n", 30, "--suite", "pwws,deepwordbug")
    assert r.exit_code == 0, r.output
    return run / "eval" / "results.json"


def test_evaluate_writes_the_worst_case_and_the_threat(evaluated):
    res = json.loads(evaluated.read_text())
    assert res["domain"] == "text" and res["n"] == 30 and res["suite"] == ["pwws", "deepwordbug"]
    assert res["threat"]["max_change"] == 0.15 and res["threat"]["min_similarity"] == 0
    assert res["threat"]["eps_unit"] == "share of words changed"
    per = res["per_attack"]
    assert res["robust_accuracy"] <= min(r["accuracy"] for r in per.values()) <= res["clean_accuracy"]
    for name, rows in res["gallery"].items():
        for g in rows:
            changed = [i for i, (a, b) in enumerate(zip(g["original"], g["adversarial"])) if a != b]
            assert changed == g["changed"]


def test_the_gate_reads_robust_accuracy(evaluated):
    robust = json.loads(evaluated.read_text())["robust_accuracy"]
    r = invoke("check", evaluated, "--min-robust-accuracy", max(0.0, robust - 0.01), "--eps", 0.15)
    assert r.exit_code == 0 and "robust accuracy" in r.output, r.output
    r = invoke("check", evaluated, "--min-robust-accuracy", min(1.0, robust + 0.01))
    assert r.exit_code == 1 and "is below the floor" in r.output
    r = invoke("check", evaluated, "--min-robust-accuracy", 0.0, "--eps", 0.3)
    assert r.exit_code == 1 and "another eps" in r.output


def test_report_has_the_text_section_with_an_escaped_gallery(evaluated, tmp_path):
    data = json.loads(evaluated.read_text())
    name, rows = next((n, r) for n, r in data["gallery"].items() if r)
    rows[0]["adversarial"][rows[0]["changed"][0]] = "<script>x</script>"
    (tmp_path / "results.json").write_text(json.dumps(data))
    r = invoke("report", tmp_path / "results.json", "--out", tmp_path / "r.html")
    assert r.exit_code == 0, r.output
    html = (tmp_path / "r.html").read_text()
    assert "Text: accuracy under word and character attacks" in html and "<mark>" in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html and "<script>x</script>" not in html


def test_damaged_text_results_are_clear_errors(evaluated, tmp_path):
    data = json.loads(evaluated.read_text())
    data["robust_accuracy"] = data["clean_accuracy"] + 0.1
    (tmp_path / "results.json").write_text(json.dumps(data))
    r = invoke("check", tmp_path / "results.json", "--min-robust-accuracy", 0.1)
    assert r.exit_code == 2 and "exceeds clean_accuracy" in r.output


@pytest.mark.parametrize("args, words", [
    (["--norm", "linf"], "--norm does not apply"),
    (["--recipe", "trades"], "unknown text training recipe"),
    (["--recipe", "standard", "--radius", "0.1"], "does not apply to text recipe"),
    (["--eps", "1.5"], "share of words"),
    (["--corpus", "imdb"], "unknown text corpus"),
])
def test_train_refusals_name_the_problem(tmp_path, args, words):
    r = invoke("train", "--domain", "text", "--out", tmp_path / "x", "--text-epochs", 1, "--train-sentences", 50,
               *args)
    assert r.exit_code != 0 and words in r.output, r.output
    assert "Traceback" not in r.output


def test_evaluate_refuses_unknown_recipes(run):
    r = invoke("evaluate", run, "--n", 5, "--suite", "pwws,hotflip")
    assert r.exit_code != 0 and "unknown text attack recipe 'hotflip'" in r.output


@pytest.mark.parametrize("recipe", ["a2t", "embed-pgd"])
def test_a_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch, recipe):
    opts = dict(recipe=recipe, epochs=2, n_train=200, seed=3, batch_size=32)
    train_text(tmp_path / "full", **opts)
    calls = {"n": 0}
    real = torch.optim.Adam.step

    def dying_step(self, *a, **k):  # killed during the second epoch, after the first epoch's checkpoint
        calls["n"] += 1
        if calls["n"] > 9:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train_text(tmp_path / "killed", **opts)
    monkeypatch.setattr(torch.optim.Adam, "step", real)
    assert (tmp_path / "killed" / STATE).exists()
    train_text(tmp_path / "killed", resume=True, **opts)
    a, b = load_weights(tmp_path / "full" / WEIGHTS), load_weights(tmp_path / "killed" / WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "killed" / "metadata.json").read_text())
    assert meta["status"] == "finished" and [e["epoch"] for e in meta["epoch_log"]] == [1, 2]
