"""Regenerate the small SB3 agents the agents-domain tests load (tests/fixtures/agents/).

    .venv/bin/python bench/agents_fixtures.py               # both fixtures
    .venv/bin/python bench/agents_fixtures.py cartpole      # one of them
    .venv/bin/python bench/agents_fixtures.py measure [cartpole|pendulum] [--quick]
                                                            # returns under each attack (JSON to stdout)

Deterministic: one torch thread, fixed seeds, DummyVecEnv, CPU; the same torch / SB3 / gymnasium versions give
the same weights. Small networks (32-32) so each zip stays a few tens of KB (SB3 also saves the Adam state).

* ``cartpole_ppo.zip``: PPO on CartPole-v1, the rl-baselines3-zoo hyper-parameters (8 envs, n_steps 32,
  batch 256, gae 0.8, gamma 0.98, 20 epochs, linear lr 1e-3 and clip 0.2), 2e5 steps (1e5 gives 336 with 32-32
  nets). Deterministic return 500 on all 10 check episodes.
* ``pendulum_ppo.zip``: PPO on Pendulum-v1, the zoo's settings (4 envs, n_steps 1024, gae 0.95, gamma 0.9,
  10 epochs, lr 1e-3, gSDE), 1e5 steps: median deterministic return about -195 over 10 check episodes.

Each run prints the deterministic return of the saved agent over 10 seeded episodes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "agents"


def _linear(v: float):
    return lambda progress: progress * v


def _eval(model, env_id: str, episodes: int = 10) -> list[float]:
    import gymnasium as gym

    env = gym.make(env_id)
    out = []
    for i in range(episodes):
        obs, _ = env.reset(seed=1000 + i)
        done, ret = False, 0.0
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, r, term, trunc, _ = env.step(action)
            ret += float(r)
            done = term or trunc
        out.append(ret)
    return out


def train_cartpole(steps: int = 200_000):
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env("CartPole-v1", n_envs=8, seed=0)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
                ent_coef=0.0, learning_rate=_linear(1e-3), clip_range=_linear(0.2),
                policy_kwargs={"net_arch": [32, 32]}, seed=0, device="cpu", verbose=0)
    model.learn(steps)
    return model


def train_pendulum(steps: int = 100_000):
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env("Pendulum-v1", n_envs=4, seed=0)
    model = PPO("MlpPolicy", env, n_steps=1024, gae_lambda=0.95, gamma=0.9, n_epochs=10, ent_coef=0.0,
                learning_rate=1e-3, clip_range=0.2, use_sde=True, sde_sample_freq=4,
                policy_kwargs={"net_arch": [32, 32]}, seed=0, device="cpu", verbose=0)
    model.learn(steps)
    return model


FIXTURES = {"cartpole": ("CartPole-v1", train_cartpole, "cartpole_ppo.zip"),
            "pendulum": ("Pendulum-v1", train_pendulum, "pendulum_ppo.zip")}


MEASURE = {  # env, eps grid in normalised (z) units, and whether to add linf 0.2 in raw units (the case)
    "cartpole": ("CartPole-v1", [0.2, 0.3], True),
    "pendulum": ("Pendulum-v1", [0.3, 1.0], False),
}


def measure(names: list[str], quick: bool = False) -> None:
    """Clean return and return under each attack (median, IQR over 10 episodes, seeds 0..9), wall and CPU time
    per attack (fitting included), for the fixtures. The normaliser comes from 5 clean episodes (seeds 0..4)."""
    import json

    from armor.domains.agents.attacks import LearnedAdversary, RobustSarsa
    from armor.domains.agents.envs import env_threat, fit_normalizer, load_sb3
    from armor.domains.agents.evaluate import evaluate_agent
    from armor.domains.agents.policy import PolicyAdapter
    from armor.domains.agents.threat import ObsNormalizer, raw_eps

    torch.set_num_threads(1)
    episodes = 3 if quick else 10
    for name in names or list(MEASURE):
        env_id, grid, raw = MEASURE[name]
        adapter = PolicyAdapter.from_sb3(load_sb3(OUT / FIXTURES[name][2]))
        normalizer = fit_normalizer(env_id, adapter, episodes=5, seed=0)
        identity = ObsNormalizer(torch.zeros_like(normalizer.mean), torch.ones_like(normalizer.scale))
        cases = [("z", e, normalizer) for e in grid] + ([("raw", 0.2, identity)] if raw else [])
        for unit, eps, norm in cases:
            threat = env_threat(env_id, norm, "linf", eps)
            suite = [("random", "random"), ("critic", "critic"), ("mad", "mad"), ("rs", RobustSarsa()),
                     ("optimal", LearnedAdversary(timesteps=2_000 if quick else 10_000))]
            ev = evaluate_agent(adapter, env_id, norm, threat, suite, episodes=episodes, seed=0)
            s = ev.summary()
            row = {"agent": name, "unit": unit, "eps": eps, "raw_eps": [round(v, 4) for v in raw_eps(norm, eps)],
                   "clean": s["clean"], "attacks": s["attacks"], "worst": s["worst"],
                   "seconds": {k: round(v, 1) for k, v in ev.seconds.items()},
                   "cpu_seconds": {k: round(v, 1) for k, v in ev.cpu_seconds.items()},
                   "optimal_search": ev.fit.get("optimal", {}).get("search"), "rs_fit": ev.fit.get("rs")}
            print(json.dumps(row), flush=True)


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    for name in names or list(FIXTURES):
        env_id, train, file = FIXTURES[name]
        t0 = time.time()
        model = train()
        path = OUT / file
        model.save(path)
        rets = _eval(model, env_id)
        print(f"{name}: {time.time() - t0:.0f} s, {path.stat().st_size / 1024:.0f} KB, deterministic return "
              f"median {np.median(rets):.1f} (min {min(rets):.1f}, max {max(rets):.1f}) over 10 episodes", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["measure"]:
        measure([a for a in sys.argv[2:] if not a.startswith("--")], "--quick" in sys.argv)
    else:
        main(sys.argv[1:])
