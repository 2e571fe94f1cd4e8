"""Agents domain: every observation attack stays inside the budget (linf and l2, discrete CartPole and continuous
Pendulum), MAD beats random noise on the trained CartPole fixture, and bad inputs fail with clear messages."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

gym = pytest.importorskip("gymnasium")
pytest.importorskip("stable_baselines3")

from armor.domains.agents.attacks import (LearnedAdversary, RobustSarsa, _finish, critic_attack,  # noqa: E402
                                          mad_attack, make_attack, random_noise, run_episode)
from armor.domains.agents.envs import (collect_observations, env_threat, fit_normalizer, load_sb3,  # noqa: E402
                                       make_env, obs_bounds)
from armor.domains.agents.policy import PolicyAdapter  # noqa: E402
from armor.domains.agents.threat import ObsNormalizer, observation_threat  # noqa: E402

torch.set_num_threads(1)
FIXTURES = Path(__file__).parent / "fixtures" / "agents"
AGENTS = {"CartPole-v1": "cartpole_ppo.zip", "Pendulum-v1": "pendulum_ppo.zip"}


@pytest.fixture(scope="module", params=list(AGENTS))
def agent(request):
    """(env_id, adapter, normalizer, a batch of visited observations, the two learned attacks fitted cheaply)."""
    env_id = request.param
    adapter = PolicyAdapter.from_sb3(load_sb3(FIXTURES / AGENTS[env_id]))
    normalizer = fit_normalizer(env_id, adapter, episodes=2, seed=0, max_steps=600)
    obs = torch.as_tensor(collect_observations(env_id, adapter, episodes=1, seed=7, max_steps=400)[::5])
    threat = env_threat(env_id, normalizer, "linf", 0.3)
    # Tiny budgets: these fits only have to produce attacks whose outputs can be checked, not strong ones.
    rs = RobustSarsa(transitions=300, train_steps=60, steps=5).fit(adapter, env_id, normalizer, threat, seed=1)
    adv = LearnedAdversary(timesteps=128, configs=({"learning_rate": 1e-3}, {"learning_rate": 3e-3}),
                           heldout_episodes=1, n_steps=64, batch_size=32, n_epochs=2)
    adv.fit(adapter, env_id, normalizer, threat, seed=2, max_episode_steps=60)
    return env_id, adapter, normalizer, obs, {"rs": rs, "optimal": adv}


ATTACK_NAMES = ["random", "critic", "mad", "rs", "optimal"]


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 0.5), ("linf", 2.0)])
def test_every_attack_stays_in_budget(agent, norm, eps):
    env_id, adapter, normalizer, obs, fitted = agent
    threat = env_threat(env_id, normalizer, norm, eps)
    env = make_env(env_id)
    low, high = (torch.as_tensor(b) for b in obs_bounds(env))
    g = torch.Generator().manual_seed(0)
    z = normalizer.to_z(obs)
    for name in ATTACK_NAMES:
        attack = fitted.get(name) or make_attack(name)
        with adapter.frozen():
            adv = attack(adapter, normalizer, threat, obs, generator=g)
        assert adv.shape == obs.shape and adv.dtype == torch.float32 and torch.isfinite(adv).all()
        size = threat.norm_of(normalizer.to_z(adv.double()) - z.double())
        assert (size <= eps * (1 + 1e-5) + 1e-6).all(), (name, float(size.max()))
        # raw observations stay in the observation space (up to the float round-off of the z <-> raw maps)
        assert (adv.double() >= low - 1e-5).all() and (adv.double() <= high + 1e-5).all(), name
        if name != "random":
            assert (size > 0).any(), f"{name} never moved"
        # and every observation the agent sees in an episode, through the episode runner
        res = run_episode(env, adapter, attack, normalizer, threat, seed=11, max_steps=40)
        assert res.in_budget and res.attacked_steps == res.length and res.max_perturbation <= eps * (1 + 1e-5)
    env.close()
    if env_id == "Pendulum-v1" and eps == 2.0:  # the observation bounds (|cos|, |sin| <= 1) bind here
        adv = random_noise(adapter, normalizer, threat, obs, generator=g)
        assert ((adv[:, :2].abs() - 1).abs() < 1e-5).any()


def test_budget_check_can_fail():
    normalizer = ObsNormalizer(torch.zeros(2), torch.ones(2))
    threat = observation_threat(normalizer, "l2", 0.1)
    z = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="left the budget"):
        _finish("x", normalizer, threat, z + 0.2, z)
    assert torch.equal(_finish("x", normalizer, threat, z + 0.05, z), z + 0.05)


@pytest.fixture(scope="module")
def cartpole():
    adapter = PolicyAdapter.from_sb3(load_sb3(FIXTURES / "cartpole_ppo.zip"))
    normalizer = fit_normalizer("CartPole-v1", adapter, episodes=2, seed=0)
    return adapter, normalizer


def test_mad_is_stronger_than_random_noise_on_cartpole(cartpole):
    adapter, normalizer = cartpole
    threat = env_threat("CartPole-v1", normalizer, "linf", 0.3)
    seeds = range(4)
    clean = [run_episode("CartPole-v1", adapter, None, seed=s).ret for s in seeds]
    rand = [run_episode("CartPole-v1", adapter, random_noise, normalizer, threat, seed=s).ret for s in seeds]
    mad = [run_episode("CartPole-v1", adapter, mad_attack, normalizer, threat, seed=s).ret for s in seeds]
    rs = RobustSarsa(transitions=2000, train_steps=800).fit(adapter, "CartPole-v1", normalizer, threat, seed=0)
    rsr = [run_episode("CartPole-v1", adapter, rs, normalizer, threat, seed=s).ret for s in seeds]
    # Measured on this fixture (normaliser from 2 clean episodes, linf 0.3 normalised units, seeds 0-3):
    # clean 500 x4, random noise 500 x4, MAD (PGD-10 on the KL) 46 / 49 / 49 / 69; at 0.2: MAD 127-332 and
    # random 500 x4; at 0.1 both 500 x4. Robust Sarsa with this small budget (2000 transitions, 800 steps,
    # ~2 s CPU): 99 / 16 / 53 / 54 (fit seed 0), 67-104 (seed 1), 15-53 (seed 2). The margin asked below (200)
    # is less than half the measured gaps (~450 for MAD, ~400 for RS).
    assert min(clean) >= 450
    assert np.median(rand) >= 450
    assert np.median(mad) <= np.median(rand) - 200
    assert max(mad) < min(rand)
    assert np.median(rsr) <= np.median(rand) - 200


def test_bad_inputs_have_clear_messages():
    with pytest.raises(ValueError, match="unknown environment id 'CartPole-v9'.*'CartPole-v1'"):
        make_env("CartPole-v9")
    with pytest.raises(ValueError, match="unknown environment id 'NoSuchThingAtAll-v0'"):
        make_env("NoSuchThingAtAll-v0")
    with pytest.raises(ValueError, match="Discrete observation space.*only Box"):
        make_env("FrozenLake-v1")
    with pytest.raises(ValueError, match="Tuple observation space.*only Box"):
        make_env("Blackjack-v1")

    class DictEnv(gym.Env):
        observation_space = gym.spaces.Dict({"a": gym.spaces.Box(-1, 1, (2,))})
        action_space = gym.spaces.Discrete(2)

    with pytest.raises(ValueError, match="Dict observation space.*only Box"):
        make_env(DictEnv)
    with pytest.raises(ValueError, match="Dict observation space"):
        run_episode(DictEnv(), None)
    normalizer = ObsNormalizer(torch.zeros(4), torch.ones(4))
    for eps in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
            env_threat("CartPole-v1", normalizer, "linf", eps)
    with pytest.raises(ValueError, match="no action distribution armor can read"):
        PolicyAdapter.from_sb3(object())
    from stable_baselines3 import DQN

    with pytest.raises(ValueError, match="DQN has no action distribution armor can read"):
        PolicyAdapter.from_sb3(DQN("MlpPolicy", "CartPole-v1", device="cpu", seed=0))
    with pytest.raises(ValueError, match="normaliser has 4 dimensions but Pendulum-v1 observes 3"):
        env_threat("Pendulum-v1", normalizer, "linf", 0.1)
    no_critic = PolicyAdapter(lambda o: torch.distributions.Categorical(logits=o[:, :2]), None, True, nn.Linear(1, 1))
    threat = observation_threat(normalizer, "linf", 0.1)
    with pytest.raises(ValueError, match="needs the agent's value function"):
        critic_attack(no_critic, normalizer, threat, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="fitted first"):
        RobustSarsa()(no_critic, normalizer, threat, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="fitted first"):
        LearnedAdversary()(no_critic, normalizer, threat, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="observations have 3 dimensions"):
        random_noise(no_critic, normalizer, threat, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="agent's actions are discrete but Pendulum-v1"):
        run_episode("Pendulum-v1", PolicyAdapter(lambda o: torch.distributions.Categorical(logits=o), None, True,
                                                 nn.Linear(1, 1)))


def test_learned_adversary_env_and_search(agent):
    from armor.domains.agents.attacks import _adversary_env_class

    env_id, adapter, normalizer, obs, fitted = agent
    adv = fitted["optimal"]
    search = adv.info["search"]
    assert len(search) == 2 and all(len(s["heldout_victim_returns"]) == 1 for s in search)
    best = min(range(len(search)), key=lambda k: search[k]["score"])
    assert adv.info["chosen"] == search[best]["config"]
    # the adversary's environment: reward is minus the victim's, observations are clean z-values
    threat = env_threat(env_id, normalizer, "linf", 0.3)
    wrapped = _adversary_env_class()(env_id, adapter, normalizer, threat)
    victim = make_env(env_id)
    z0, _ = wrapped.reset(seed=5)
    o0, _ = victim.reset(seed=5)
    assert np.allclose(z0, normalizer.to_z(torch.as_tensor(o0)[None])[0].numpy(), atol=1e-6)
    action = np.zeros(wrapped.action_space.shape, np.float32)  # tanh(0) = 0: no perturbation
    _, r, *_ = wrapped.step(action)
    from armor.domains.agents.envs import to_action

    _, r_victim, *_ = victim.step(to_action(adapter, victim, torch.as_tensor(o0)[None]))
    assert r == pytest.approx(-r_victim)
    wrapped.close()
    victim.close()
