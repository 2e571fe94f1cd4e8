"""Agents domain: evaluate_agent's bookkeeping (per-episode worst case, summaries, curves, seed aggregation) on a
fake environment whose returns are known in closed form, and reproducibility on the CartPole fixture."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import distributions as D
from torch import nn

gym = pytest.importorskip("gymnasium")
pytest.importorskip("stable_baselines3")

from armor.domains.agents.attacks import RobustSarsa, run_episode  # noqa: E402
from armor.domains.agents.envs import env_threat, fit_normalizer, load_sb3  # noqa: E402
from armor.domains.agents.evaluate import (aggregate_seeds, curve_area, evaluate_agent,  # noqa: E402
                                           return_curve)
from armor.domains.agents.policy import PolicyAdapter  # noqa: E402
from armor.domains.agents.threat import ObsNormalizer, observation_threat  # noqa: E402

torch.set_num_threads(1)
FIXTURES = Path(__file__).parent / "fixtures" / "agents"


class EchoEnv(gym.Env):
    """Episode of seed s: observation o = s % 3 - 1 (in {-1, 0, 1}) at every step, length L = 1 + s % 4,
    reward = the action. With an agent that acts what it sees, the return is (what it saw) * L."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-10.0, 10.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.o, self.length, self.t = float(seed % 3 - 1), 1 + seed % 4, 0
        return np.array([self.o], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.o], np.float32), float(np.asarray(action).reshape(-1)[0]), self.t >= self.length, False, \
            {"crashed": self.o > 0}


def echo_agent():
    return PolicyAdapter(lambda obs: D.Normal(obs, torch.ones_like(obs)), None, False, nn.Linear(1, 1))


def shift(c):
    def attack(adapter, normalizer, threat, obs, *, generator=None):
        return obs + c
    return attack


def flip(adapter, normalizer, threat, obs, *, generator=None):
    return -obs


def minus_eps(adapter, normalizer, threat, obs, *, generator=None):
    return obs - threat.eps_scalar


IDENTITY = ObsNormalizer(torch.zeros(1), torch.ones(1))


def expected(seed, seen):
    o, length = seed % 3 - 1, 1 + seed % 4
    return float(seen(o) * length)


def test_worst_case_is_per_episode_min_and_summaries_match_hand_computation():
    threat = observation_threat(IDENTITY, "linf", 2.0)
    ev = evaluate_agent(echo_agent(), EchoEnv, IDENTITY, threat, {"up": shift(0.5), "flip": flip}, episodes=12,
                        seed=5, threshold=0.0)
    seeds = list(range(5, 17))
    assert ev.seeds == seeds
    up = [expected(s, lambda o: o + 0.5) for s in seeds]
    fl = [expected(s, lambda o: -o) for s in seeds]
    assert ev.clean == [expected(s, lambda o: o) for s in seeds]
    assert ev.returns == {"up": up, "flip": fl}
    worst = [min(a, b) for a, b in zip(up, fl)]
    assert ev.worst == worst
    assert all(w <= r[i] for r in ev.returns.values() for i, w in enumerate(ev.worst))
    # the worst attack differs between episodes, so the worst case is not one attack's column
    assert set(ev.worst_attack) == {"up", "flip"}
    assert worst != up and worst != fl
    s = ev.summary()
    for key, vals in (("up", up), ("flip", fl)):
        q25, q50, q75 = np.percentile(vals, [25, 50, 75])
        assert s["attacks"][key]["median"] == pytest.approx(q50)
        assert s["attacks"][key]["iqr"] == pytest.approx([q25, q75])
        assert s["attacks"][key]["mean"] == pytest.approx(np.mean(vals))
        assert s["attacks"][key]["failure_share"] == pytest.approx(np.mean(np.array(vals) < 0))
    assert s["worst"]["median"] == pytest.approx(np.median(worst))
    assert s["worst"]["median"] < min(s["attacks"]["up"]["median"], s["attacks"]["flip"]["median"])
    assert ev.in_budget == {"up": True, "flip": True}
    json.dumps(ev.to_dict())  # JSON-ready


def test_failure_flag_from_info_counts_as_failure():
    threat = observation_threat(IDENTITY, "linf", 2.0)
    ev = evaluate_agent(echo_agent(), EchoEnv, IDENTITY, threat, {"up": shift(0.5)}, episodes=6, seed=0,
                        failure_key="crashed")
    # crashed when o > 0, i.e. seed % 3 == 2: seeds 2 and 5 of 0..5
    assert ev.failed["up"] == [False, False, True, False, False, True]
    assert ev.summary()["attacks"]["up"]["failure_share"] == pytest.approx(2 / 6)


def test_out_of_budget_attack_is_refused_or_reported():
    threat = observation_threat(IDENTITY, "linf", 0.25)
    with pytest.raises(ValueError, match="'up'.*outside the budget"):
        evaluate_agent(echo_agent(), EchoEnv, IDENTITY, threat, {"up": shift(0.5)}, episodes=2)
    ev = evaluate_agent(echo_agent(), EchoEnv, IDENTITY, threat, {"up": shift(0.5), "small": shift(0.25)},
                        episodes=2, strict=False)
    assert ev.in_budget == {"up": False, "small": True}
    res = run_episode(EchoEnv(), echo_agent(), shift(0.5), IDENTITY, threat, seed=1)
    assert not res.in_budget and res.max_perturbation == pytest.approx(0.5)


def test_return_curve_and_area():
    threat = observation_threat(IDENTITY, "linf", 1.0)
    grid = [0.0, 0.5, 1.0]
    curve = return_curve(echo_agent(), EchoEnv, IDENTITY, threat, grid, {"down": minus_eps, "up": shift(0.0)},
                         episodes=6, seed=0)
    seeds = range(6)
    for k, e in enumerate(grid):
        down = [expected(s, lambda o: o - e) for s in seeds]
        assert curve["curves"]["down"][k] == pytest.approx(np.median(down))
        assert curve["curves"]["worst"][k] == pytest.approx(np.median([min(d, expected(s, lambda o: o))
                                                                       for d, s in zip(down, seeds)]))
    assert curve["area"]["down"] == pytest.approx(curve_area(grid, curve["curves"]["down"]))
    assert curve["clean"]["median"] == pytest.approx(np.median([expected(s, lambda o: o) for s in seeds]))
    json.dumps(curve)
    assert curve_area([0, 1, 2], [10, 6, 2]) == pytest.approx(6.0)
    assert curve_area([0.1, 0.3], [4, 4]) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        curve_area([0, 0], [1, 2])


def test_aggregate_seeds_median_of_medians():
    def summ(c, a):
        return {"clean": {"median": c}, "attacks": {"mad": {"median": a}}, "worst": {"median": a - 1}}

    out = aggregate_seeds([summ(500, 40), summ(480, 100), summ(500, 60), summ(300, 10)])
    assert out["clean"]["median_of_medians"] == pytest.approx(490)
    assert out["attacks"]["mad"]["median_of_medians"] == pytest.approx(50)
    assert out["attacks"]["mad"]["iqr"] == pytest.approx(list(np.percentile([40, 100, 60, 10], [25, 75])))
    assert out["worst"]["per_seed_medians"] == [39, 99, 59, 9]
    with pytest.raises(ValueError, match="different attack suites"):
        aggregate_seeds([summ(1, 1), {"clean": {"median": 1}, "attacks": {"rs": {"median": 1}}}])


def test_bad_attack_specs():
    threat = observation_threat(IDENTITY, "linf", 1.0)
    with pytest.raises(ValueError, match="unknown agent attack"):
        evaluate_agent(echo_agent(), EchoEnv, IDENTITY, threat, ["nope"], episodes=1)
    with pytest.raises(ValueError, match="reserved"):
        evaluate_agent(echo_agent(), EchoEnv, IDENTITY, threat, {"worst": flip}, episodes=1)
    with pytest.raises(ValueError, match="attack_share"):
        evaluate_agent(echo_agent(), EchoEnv, IDENTITY, threat, {"f": flip}, episodes=1, attack_share=1.5)


@pytest.fixture(scope="module")
def cartpole():
    adapter = PolicyAdapter.from_sb3(load_sb3(FIXTURES / "cartpole_ppo.zip"))
    normalizer = fit_normalizer("CartPole-v1", adapter, episodes=2, seed=0)
    return adapter, normalizer


def test_same_seed_same_returns_on_cartpole(cartpole):
    adapter, normalizer = cartpole
    threat = env_threat("CartPole-v1", normalizer, "linf", 1.0)
    runs = [evaluate_agent(adapter, "CartPole-v1", normalizer, threat,
                           ["random", "mad", ("rs", RobustSarsa(transitions=200, train_steps=30, steps=3))],
                           episodes=2, seed=3, attack_share=0.5, max_steps=150) for _ in range(2)]
    a, b = (r.to_dict() for r in runs)
    assert a["returns"] == b["returns"] and a["clean"] == b["clean"] and a["lengths"] == b["lengths"]
    assert all(a["in_budget"].values())
    assert a["fit"]["rs"]["final_td_loss"] == b["fit"]["rs"]["final_td_loss"]
    # the share gate is seeded per episode: the same steps are attacked in both runs, about half of them
    from armor.domains.agents.attacks import random_noise

    r1, r2 = (run_episode("CartPole-v1", adapter, random_noise, normalizer, threat, seed=4, attack_share=0.5,
                          max_steps=100) for _ in range(2))
    assert r1.to_dict() == r2.to_dict()
    assert 0.3 * r1.length < r1.attacked_steps < 0.7 * r1.length


def test_lock_step_episodes_equal_one_by_one_for_a_deterministic_attack(cartpole):
    """run_episodes plays a batch in lock step (one attack and policy call per step); with an attack that draws
    nothing at random (critic PGD from the clean point) and the share gate drawn per episode, every episode must
    be the one run_episode plays alone: returns, lengths, attacked steps, largest perturbation. evaluate_agent
    uses the batch."""
    from functools import partial

    from armor.domains.agents.attacks import critic_attack, run_episodes
    from armor.domains.agents.envs import make_env

    adapter, normalizer = cartpole
    threat = env_threat("CartPole-v1", normalizer, "linf", 0.3)
    seeds = [0, 1, 2, 3]
    attack = partial(critic_attack, steps=3)
    for share, atk in ((1.0, None), (0.5, attack)):
        batch = run_episodes([make_env("CartPole-v1") for _ in seeds], adapter, atk, normalizer, threat, seeds,
                             attack_share=share, max_steps=120)
        alone = [run_episode("CartPole-v1", adapter, atk, normalizer, threat, seed=s, attack_share=share,
                             max_steps=120) for s in seeds]
        for b, a in zip(batch, alone):  # a batched matmul may differ from a single row's in the last bits
            assert (b.ret, b.length, b.attacked_steps, b.in_budget) == (a.ret, a.length, a.attacked_steps, a.in_budget)
            assert b.max_perturbation == pytest.approx(a.max_perturbation, rel=1e-5, abs=1e-7)
    assert any(r.attacked_steps > 0 for r in batch) and any(r.length < 120 for r in batch)  # episodes end apart
    ev = evaluate_agent(adapter, "CartPole-v1", normalizer, threat, {"critic": attack}, episodes=4, seed=0,
                        attack_share=0.5, max_steps=120)
    assert ev.returns["critic"] == [r.ret for r in alone] and ev.lengths["critic"] == [r.length for r in alone]
