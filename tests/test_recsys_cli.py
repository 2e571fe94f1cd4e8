"""The recsys domain through the application: `armor train --domain recsys` on a u.data file, `armor evaluate
RUN`, results.json validation, the gate on hr@10 / robust_hr@10, `armor report` with the Recommenders section,
refusals of what does not apply, and the demo's plumbing on a tiny SYNTHETIC preset."""

import json

import pytest
from typer.testing import CliRunner

from armor.app.cli import app
from armor.app.results import check, load_results
from armor.domains.recsys.data import synthetic

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def udata(tmp_path_factory):
    d = synthetic(80, 60, 10, seed=5)
    path = tmp_path_factory.mktemp("recsys-data") / "u.data"
    path.write_text("".join(f"{u + 1}\t{i + 1}\t4\t{int(t * 1000)}\n" for u, i, t in zip(d.user, d.item, d.timestamp)))
    return path


@pytest.fixture(scope="module")
def run_dir(udata, tmp_path_factory):
    out = tmp_path_factory.mktemp("recsys-run") / "apr"
    r = invoke("train", "--domain", "recsys", "--interactions", udata, "--recipe", "apr", "--eps", "0.3",
               "--eps-unit", "relative", "--adv-start", "10", "--seed", "1", "--batch-size", "256", "--lr", "0.04",
               "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def evaluated(run_dir):
    r = invoke("evaluate", run_dir)
    assert r.exit_code == 0, r.output
    assert "recsys on" in r.output and "results.json" in r.output
    return run_dir / "eval" / "results.json"


def test_train_records_the_run(run_dir, udata):
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["domain"] == "recsys" and meta["status"] == "finished"
    assert meta["threat"] == {"norm": "l2", "eps": 0.3, "eps_unit": "relative (share of each embedding's L2 norm)",
                              "unit": "relative", "target": "both"}
    assert meta["recipe"]["params"] == {"adv_weight": 1.0, "adv_start": 10}
    assert meta["counts"] == {"users": 80, "items": 60, "interactions": 800}
    assert meta["config"]["data"]["source"] == str(udata)
    assert meta["cost"]["adversarial_epochs"] == 30 and meta["cost"]["epochs"] == 40
    assert (meta["config"]["batch_size"], meta["config"]["lr"]) == (256, 0.04)  # the classifier options it shares


def test_evaluate_writes_ranking_figures_under_the_trained_threat(evaluated):
    res = load_results(evaluated)  # validates through the domain's workflow
    assert res["domain"] == "recsys" and res["n"] == 80 and res["threat"]["eps"] == 0.3
    assert set(res["per_attack"]) == {"random", "fgsm", "pgd"} and set(res["oracle"]) == {"pgd-rank"}
    for k in (5, 10, 20):
        assert res[f"robust_hr@{k}"] == min(a[f"hr@{k}"] for a in res["per_attack"].values())
    assert [p["eps"] for p in res["curve"]] == [0.0, 0.15, 0.3, 0.6]
    assert res["curve"][0]["hr@10"] == res["hr@10"]
    assert res["promotion"]["n_targets"] == 3
    r = invoke("evaluate", evaluated.parent.parent, "--eps", "0.1", "--suite", "fgsm", "--no-extras", "--out",
               evaluated.parent.parent / "e01")
    assert r.exit_code == 0, r.output
    other = json.loads((evaluated.parent.parent / "e01" / "results.json").read_text())
    assert other["threat"]["eps"] == 0.1 and other["threat"]["unit"] == "relative" and "curve" not in other


def test_the_gate_reads_ranking_figures(evaluated):
    data = load_results(evaluated)
    robust = data["robust_hr@10"]
    passes = []
    assert check(data, floors={"robust_hr@10": robust - 0.01}, eps=0.3, passes=passes) == []
    assert "robust hr@10" in passes[0]
    failures = check(data, floors={"robust_hr@10": robust + 0.01})
    assert failures and "is below the floor" in failures[0]
    assert "measured at another eps" in check(data, floors={"hr@10": 0.0}, eps=0.5)[0]
    r = invoke("check", evaluated, "--min-robust-hr", f"{robust - 0.01:.4f}", "--eps", "0.3")  # the CLI gate
    assert r.exit_code == 0 and "PASS" in r.output, r.output
    r = invoke("check", evaluated, "--min-robust-hr", f"{robust + 0.01:.4f}")
    assert r.exit_code == 1 and "robust hr@10" in r.output, r.output


def test_damaged_results_are_clear_errors(evaluated, tmp_path):
    for key, value in (("robust_hr@10", 1.5), ("hr@10", "high"), ("n", 0)):
        data = json.loads(evaluated.read_text())
        data[key] = value
        p = tmp_path / f"{key}.json"
        p.write_text(json.dumps(data))
        r = invoke("check", p, "--min-robust-accuracy", "0.1")
        assert r.exit_code == 2 and key in r.output, r.output


def test_report_has_the_recommenders_section(evaluated, tmp_path):
    r = invoke("report", evaluated.parent.parent, "--out", tmp_path / "r.html")
    assert r.exit_code == 0, r.output
    html = (tmp_path / "r.html").read_text()
    assert "Recommenders: ranking quality under embedding perturbations" in html
    assert "worst-case HR@10" in html and "pgd-rank (oracle)" in html and "the suite's strongest attack" in html


@pytest.mark.parametrize("args,match", [
    (("--norm", "linf"), "L2 balls"), (("--steps", "3"), "--steps does not apply"),
    (("--interactions", "nowhere.csv"), "no interactions file"), (("--adv-weight", "2"), "apr only"),
    (("--recommender", "svd"), "unknown recommender"), (("--kappa", "0.1"), "--kappa do not apply to --domain recsys"),
])
def test_train_refuses_what_does_not_apply(args, match, tmp_path):
    r = invoke("train", "--domain", "recsys", *args, "--out", tmp_path / "x", "--quiet")
    assert r.exit_code == 2 and match in r.output.replace("\n", " "), r.output


def test_evaluate_refuses_n(run_dir, tmp_path):
    r = invoke("evaluate", run_dir, "--n", "5", "--out", tmp_path / "e")
    assert r.exit_code == 2 and "--n does not apply" in r.output


def test_the_demo_plumbing_on_a_tiny_preset(udata, tmp_path, monkeypatch):
    from armor.domains.recsys import demo

    monkeypatch.setitem(demo.PRESETS, "tiny", {**demo.PRESETS["recsys"], "data": str(udata), "epochs": 6,
                                               "eps": 0.3, "eps_unit": "relative", "eps_grid": (0.0, 0.3),
                                               "n_targets": 1, "injection": {"n_fake": 3, "n_filler": 5,
                                                                             "strategy": "popular"}})
    lines = []
    res = demo.run_demo("tiny", tmp_path / "demo", quiet=True, say=lines.append)
    data = load_results(tmp_path / "demo" / "results.json")
    assert set(data["models"]) == {"bpr", "apr"} and data["recsys_claims"]["seeds"] == 3
    summary = data["models"]["apr"]["seed_summary"]
    per_seed = data["demo"]["per_seed"]["apr"]
    assert summary["robust_hr@10"]["values"] == [per_seed[s]["robust_hr@10"] for s in ("0", "1", "2")]
    assert data["models"]["bpr"]["injection"]["budget"]["fake_users"] == 3
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "Over training seeds" in html and "Fake-profile injection" in html
    from armor.domains.recsys.workflow import summary as table

    title, columns, rows = table(data["models"])  # what `armor demo` prints: medians over the seeds
    assert "over training seeds" in title and columns[2] == "seeds" and rows[0][2] == "3"
    assert res["recsys_claims"]["robust_hr@10_gain"]["median"] == pytest.approx(
        summary["robust_hr@10"]["median"] - data["models"]["bpr"]["seed_summary"]["robust_hr@10"]["median"])


def test_resume_through_the_cli_uses_the_runs_own_settings(udata, run_dir, tmp_path):
    from armor.domains.recsys.train import train_recommender

    opts = {"recipe": "apr", "epochs": 6, "adv_start": 2, "eps": 0.2, "eps_unit": "relative", "seed": 3,
            "batch_size": 128}
    whole = train_recommender(str(udata), out_dir=tmp_path / "whole", **opts)

    def stop(epoch, record):
        if epoch == 3:
            raise KeyboardInterrupt  # what Ctrl-C does after the epoch-3 checkpoint

    with pytest.raises(KeyboardInterrupt):
        train_recommender(str(udata), out_dir=tmp_path / "killed", callback=stop, **opts)
    r = invoke("train", "--resume", tmp_path / "killed", "--eps", "0.3", "--quiet")
    assert r.exit_code == 2 and "settings differ" in r.output.replace("\n", " ")
    r = invoke("train", "--resume", tmp_path / "killed", "--quiet")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "whole" / "model.safetensors").read_bytes() == \
        (tmp_path / "killed" / "model.safetensors").read_bytes()
    assert whole.metadata["config"] == json.loads((tmp_path / "killed" / "metadata.json").read_text())["config"]
    before = (run_dir / "model.safetensors").read_bytes()  # a finished run resumed is returned as it is
    assert invoke("train", "--resume", run_dir, "--quiet").exit_code == 0
    assert (run_dir / "model.safetensors").read_bytes() == before
