"""The agents domain through the application: `armor evaluate RUN` on an agents run directory, results.json
validation, `armor check --min-robust-return`, `armor report` with the agents section, and `armor train
--domain agents` refusing what does not apply. The run directory is made from the committed CartPole PPO
fixture (tests/fixtures/agents; regenerate with bench/agents_fixtures.py)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("stable_baselines3")

from armor.app.cli import app  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "agents" / "cartpole_ppo.zip"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def agent_run(tmp_path_factory):
    from stable_baselines3 import PPO

    from armor.domains.agents import PolicyAdapter
    from armor.domains.agents.envs import fit_normalizer

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("agents") / "cartpole"
    run.mkdir()
    shutil.copy(FIXTURE, run / "model.zip")
    model = PPO.load(run / "model.zip", device="cpu")
    normalizer = fit_normalizer("CartPole-v1", PolicyAdapter.from_sb3(model), episodes=2, seed=0)
    meta = {"domain": "agents", "env": "CartPole-v1", "status": "finished", "seed": 0,
            "recipe": {"name": "vanilla", "params": {}},
            "threat": {"norm": "linf", "eps": 0.2, "eps_unit": "normalised observation units"},
            "normalizer": normalizer.to_dict(), "files": {"model": "model.zip"}, "train_seconds": 1.0,
            "env_steps": 1000}
    (run / "metadata.json").write_text(json.dumps(meta))
    return run


@pytest.fixture(scope="module")
def evaluated(agent_run):
    r = invoke("evaluate", agent_run, "--n", "4", "--suite", "random,mad", "--no-extras")
    assert r.exit_code == 0, r.output
    return agent_run / "eval" / "results.json"


def test_evaluate_writes_returns_and_the_per_episode_worst_case(evaluated):
    res = json.loads(evaluated.read_text())
    assert res["domain"] == "agents" and res["n"] == 4 and res["suite"] == ["random", "mad"]
    eps = res["episodes"]
    worst = [min(eps["returns"]["random"][i], eps["returns"]["mad"][i]) for i in range(4)]
    assert eps["worst"] == worst  # the worst case is per episode, over the suite
    assert res["robust_return"] <= res["clean_return"] or res["robust_return"] <= max(eps["clean"])
    assert res["threat"] == {"norm": "linf", "eps": 0.2, "eps_unit": "normalised observation units"}
    assert res["clean_return"] >= 450  # the fixture balances the pole


def test_the_gate_reads_returns_and_refuses_accuracy_floors(evaluated):
    robust = json.loads(evaluated.read_text())["robust_return"]
    r = invoke("check", evaluated, "--min-robust-return", robust - 1, "--eps", "0.2")
    assert r.exit_code == 0 and "robust return" in r.output, r.output
    r = invoke("check", evaluated, "--min-robust-return", robust + 1)
    assert r.exit_code == 1 and "is below the floor" in r.output
    r = invoke("check", evaluated, "--min-robust-accuracy", "0.5")
    assert r.exit_code == 1 and "has no robust accuracy figure" in r.output


def test_damaged_agent_results_are_clear_errors(evaluated, tmp_path):
    data = json.loads(evaluated.read_text())
    data["robust_return"] = "high"
    p = tmp_path / "results.json"
    p.write_text(json.dumps(data))
    r = invoke("check", p, "--min-robust-return", "10")
    assert r.exit_code == 2 and "robust_return must be a finite number" in r.output


def test_the_report_shows_the_agents_section(evaluated, tmp_path):
    r = invoke("report", evaluated, "--out", tmp_path / "r.html")
    assert r.exit_code == 0, r.output
    html = (tmp_path / "r.html").read_text()
    assert 'id="agents"' in html and "worst-case return" in html and "CartPole-v1" in html
    assert 'id="summary"' not in html  # no classifier sections for an agents-only report


def test_train_refuses_what_does_not_apply(tmp_path):
    r = invoke("train", "--env", "CartPole-v1", "--out", tmp_path / "a")
    assert r.exit_code == 2 and "add --domain" in r.output
    r = invoke("train", "--domain", "agents", "--env", "CartPole-v1", "--dataset", "digits", "--out", tmp_path / "b")
    assert r.exit_code == 2 and "--dataset" in r.output and "do not apply" in r.output
    r = invoke("train", "--domain", "agents", "--out", tmp_path / "c")
    assert r.exit_code == 2 and "pass --env" in r.output
    r = invoke("train", "--domain", "vision", "--out", tmp_path / "d")
    assert r.exit_code == 2 and "no training workflow" in r.output
    r = invoke("train", "--domain", "agents", "--env", "Nope-v9", "--out", tmp_path / "e")
    assert r.exit_code == 2 and "unknown environment" in r.output


def test_the_filmstrip_is_stored_and_drawn_in_the_report(evaluated, tmp_path):
    import base64

    import numpy as np

    res = json.loads(evaluated.read_text())
    film = res["filmstrip"]
    medians = {a: res["per_attack"][a]["median"] for a in res["suite"]}
    assert film["attack"] == min(res["suite"], key=lambda a: (medians[a], res["suite"].index(a)))  # the strongest
    # the filmstrip replays the very episodes the evaluation scored (same seed, same attack)
    assert film["episodes"]["clean"]["return"] == res["episodes"]["clean"][0]
    assert film["episodes"][film["attack"]]["return"] == res["episodes"]["returns"][film["attack"]][0]
    with np.load(evaluated.parent / "artifacts.npz") as z:
        frames = {k: z[k] for k in z.files}
    for label in ("clean", film["attack"]):
        stack = frames[f"{res['name']}/film_{label}"]
        steps = film["episodes"][label]["steps"]
        assert stack.dtype == np.uint8 and stack.ndim == 4 and stack.shape[-1] == 3
        assert len(stack) == len(steps) <= 6 and stack.shape[2] <= 240  # small: a few downscaled frames
        assert steps[0] == 0 and steps[-1] == film["episodes"][label]["length"]
        assert stack.std() > 10  # a picture, not a blank
    r = invoke("report", evaluated, "--out", tmp_path / "r.html")
    assert r.exit_code == 0, r.output
    html = (tmp_path / "r.html").read_text()
    tag = html[html.index(f'alt="filmstrip of {res["name"]}'):]
    src = tag[tag.index('src="') + 5:]
    src = src[:src.index('"')]
    assert src.startswith("data:image/png;base64,")  # self-contained
    assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missing_filmstrip_is_a_note_not_a_crash(evaluated, tmp_path, monkeypatch):
    from armor.domains.agents import filmstrip
    from armor.domains.agents.envs import fit_normalizer, load_sb3
    from armor.domains.agents.policy import PolicyAdapter
    from armor.domains.agents.threat import observation_threat

    def no_pygame(*args, **kwargs):
        raise ImportError("pygame is not installed")

    monkeypatch.setattr(filmstrip, "make_env", no_pygame)
    adapter = PolicyAdapter.from_sb3(load_sb3(FIXTURE))
    normalizer = fit_normalizer("CartPole-v1", adapter, episodes=1, seed=0, max_steps=50)
    arrays, info = filmstrip.record_filmstrip(adapter, "CartPole-v1", normalizer,
                                              observation_threat(normalizer, "linf", 0.1), {"clean": None}, seed=0)
    assert arrays == {} and "not rendered" in info["note"] and "pygame" in info["note"]
    # results whose frames are absent (or were never rendered): the report says so and still renders
    data = json.loads(evaluated.read_text())
    data["filmstrip"] = {"attack": "mad", **info}
    (tmp_path / "results.json").write_text(json.dumps(data))
    r = invoke("report", tmp_path / "results.json", "--out", tmp_path / "r.html")
    assert r.exit_code == 0, r.output
    html = (tmp_path / "r.html").read_text()
    assert "not rendered" in html and 'alt="filmstrip' not in html


def test_frame_indices_and_downscale():
    import numpy as np

    from armor.domains.agents.filmstrip import downscale, frame_indices

    assert frame_indices(500, 6) == [0, 100, 200, 300, 400, 500]
    assert frame_indices(3, 6) == [0, 1, 2, 3] and frame_indices(7, 1) == [7]
    f = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    small = downscale(f, width=3)  # factor 2: each output pixel is the mean of a 2 x 2 block
    assert small.shape == (2, 3, 3)
    assert small[1, 2, 0] == round(np.mean([f[2, 4, 0], f[2, 5, 0], f[3, 4, 0], f[3, 5, 0]]))
