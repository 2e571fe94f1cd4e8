"""Robust training of agents (armor.domains.agents.recipes / train): every recipe writes a loadable run, inner
attacks stay in the budget, SA-PPO's regulariser is active, attacked-obs at ratio 0 is vanilla, runs reproduce
and resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")
pytest.importorskip("gymnasium")

from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402

from armor.domains.agents import train as agents_train  # noqa: E402
from armor.domains.agents.policy import PolicyAdapter  # noqa: E402
from armor.domains.agents.recipes import (SAPPO, AdversaryPerturbation, AdversaryVecEnv,  # noqa: E402
                                          ObservationAttackVecEnv, PolicyAttack, add_gradient, critic_pgd, mad_pgd)
from armor.domains.agents.threat import ObsNormalizer, adapter_in_z, observation_threat  # noqa: E402
from armor.domains.agents.train import (CHECKPOINT, load_adversary, load_agent, read_metadata,  # noqa: E402
                                        train_agent)

EPS = 0.2
SMALL = 1024  # two SB3 rollouts of CartPole's default 8 envs x 64 steps


def _weights(model):
    return {k: v.clone() for k, v in model.policy.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _cartpole_normalizer():
    return agents_train.estimate_normalizer("CartPole-v1", 500, 0)


@pytest.fixture(scope="module")
def vanilla_run(tmp_path_factory):
    return train_agent("CartPole-v1", "vanilla", eps=EPS, total_steps=SMALL, seed=0,
                       out_dir=tmp_path_factory.mktemp("agents") / "vanilla")


# ---------------------------------------------------------------------------------------------- run directories
@pytest.mark.parametrize("recipe,options", [("vanilla", {}), ("sa-ppo", {"kappa": 0.5}),
                                            ("attacked-obs", {"ratio": 0.5}), ("atla", {"rounds": 2})])
def test_every_recipe_writes_a_loadable_run(tmp_path, recipe, options, vanilla_run):
    if recipe == "vanilla":
        run = vanilla_run
    else:
        run = train_agent("CartPole-v1", recipe, eps=EPS, total_steps=SMALL, seed=0, out_dir=tmp_path / recipe,
                          **options)
    meta = read_metadata(run.run_dir)
    assert meta["domain"] == "agents" and meta["env"] == "CartPole-v1" and meta["status"] == "finished"
    assert meta["recipe"]["name"] == recipe
    for k, v in options.items():
        assert meta["recipe"]["params"][k] == v
    assert meta["threat"] == {**meta["threat"], "norm": "linf", "eps": EPS, "eps_unit": "normalised observation units"}
    assert meta["seed"] == 0 and meta["armor_version"] and meta["train_seconds"] > 0
    assert meta["env_steps"] >= SMALL and meta["cost"]["agent_env_steps"] == SMALL
    assert not (run.run_dir / CHECKPOINT).exists()  # a finished run keeps no checkpoint
    model, adapter, normalizer, meta2 = load_agent(run.run_dir)
    assert meta2 == meta and isinstance(model, PPO) and adapter.discrete
    assert normalizer.to_dict() == ObsNormalizer.from_dict(meta["normalizer"]).to_dict()
    assert meta["normalizer"]["source"].startswith("random-policy rollout")
    assert _same(_weights(model), _weights(run.model))
    # the zip is plain SB3, whatever the recipe
    plain = PPO.load(run.run_dir / "model.zip", device="cpu")
    obs = torch.zeros(3, 4)
    assert torch.equal(PolicyAdapter.from_sb3(plain).act(obs), adapter.act(obs))
    if recipe == "atla":
        adv = load_adversary(run.run_dir)
        assert adv.action_space.shape == (4,) and meta["cost"]["adversary_env_steps"] > 0
        assert meta["env_steps"] == meta["cost"]["agent_env_steps"] + meta["cost"]["adversary_env_steps"]
        assert [p["role"] for p in meta["schedule"]] == ["agent", "adversary", "agent"]
    else:
        with pytest.raises(ValueError, match="only atla runs"):
            load_adversary(run.run_dir)
    if recipe in ("sa-ppo", "attacked-obs"):  # attacks cost passes, recorded
        assert meta["cost"]["extra_forward"] > 0 and meta["cost"]["extra_backward"] > 0


@pytest.mark.parametrize("recipe", ["sa-ppo", "attacked-obs"])
def test_continuous_actions_on_pendulum(tmp_path, recipe):
    run = train_agent("Pendulum-v1", recipe, eps=EPS, total_steps=256, seed=0, out_dir=tmp_path / recipe,
                      ppo={"n_envs": 2, "n_steps": 64, "batch_size": 64, "n_epochs": 2})
    model, adapter, normalizer, meta = load_agent(run.run_dir)
    assert not adapter.discrete and meta["status"] == "finished" and meta["env_steps"] == 256
    assert meta["cost"]["extra_forward"] > 0
    dist = adapter.distribution(torch.zeros(2, 3))
    assert dist.mean.shape == (2, 1)


# ---------------------------------------------------------------------------------------------- inner attacks
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("discrete", [True, False])
def test_inner_attacks_stay_in_the_budget(norm, discrete):
    env_id = "CartPole-v1" if discrete else "Pendulum-v1"
    venv = make_vec_env(env_id, n_envs=1, seed=0)
    model = PPO("MlpPolicy", venv, seed=0, device="cpu")
    normalizer = agents_train.estimate_normalizer(env_id, 300, 0)
    space = venv.observation_space
    threat = observation_threat(normalizer, norm, 0.5, space.low, space.high)
    adapter = adapter_in_z(PolicyAdapter.from_sb3(model), normalizer)
    z = threat.clamp_bounds(normalizer.to_z(torch.randn(64, space.shape[0]) * normalizer.scale + normalizer.mean))
    with adapter.frozen():
        for attack in (mad_pgd, critic_pgd):
            z_adv = attack(adapter, z, threat, steps=5, generator=torch.Generator().manual_seed(0))
            assert threat.contains(z_adv, z).all()
            assert (z_adv - z).abs().max() > 0.05  # it moved
    # the attack ascends: MAD's KL beats a random point of the ball
    with adapter.frozen():
        z_mad = mad_pgd(adapter, z, threat, steps=10, generator=torch.Generator().manual_seed(1))
        z_rand = threat.random_init(z, torch.Generator().manual_seed(1))
        assert adapter.kl(z, z_mad).mean() > 1.5 * adapter.kl(z, z_rand).mean()
    # ATLA's learned adversary: any action maps into the ball
    adversary_env = AdversaryVecEnv(venv, model, normalizer, threat)
    adversary = PPO("MlpPolicy", adversary_env, seed=0, device="cpu")
    obs = venv.reset()
    seen = AdversaryPerturbation(adversary, normalizer, threat)(np.repeat(obs, 32, axis=0))
    z0 = normalizer.to_z(torch.as_tensor(np.repeat(obs, 32, axis=0)).double())
    assert threat.contains(normalizer.to_z(torch.as_tensor(seen).double()), z0, atol=0).all()


def test_attacked_observations_are_in_budget_and_counted():
    """What the agent sees during attacked-obs training, recorded: every attacked observation is in the ball
    (in float64 z-units, exactly); ratio 1 attacks every observation, ratio 0.5 about half."""
    normalizer = _cartpole_normalizer()
    for ratio, steps in ((1.0, 256), (0.5, 512)):
        base = make_vec_env("CartPole-v1", n_envs=4, seed=0)
        space = base.observation_space
        threat = observation_threat(normalizer, "linf", EPS, space.low, space.high)
        venv = ObservationAttackVecEnv(base, ratio, seed=1)
        venv.record = []
        model = PPO("MlpPolicy", venv, seed=0, device="cpu", n_steps=64, batch_size=64, n_epochs=1)
        venv.perturb = PolicyAttack(model, normalizer, threat, "mad", steps=3, seed=2)
        model.learn(steps)
        clean = np.concatenate([c for c, _ in venv.record])
        seen = np.concatenate([s for _, s in venv.record])
        zc, zs = (normalizer.to_z(torch.as_tensor(a).double()) for a in (clean, seen))
        assert threat.contains(zs, zc, atol=0).all()
        assert (zs - zc).abs().amax(1).mean() > 0.5 * EPS  # MAD goes to the edge of the ball, mostly
        assert venv.observations == steps + 4  # every step plus the first reset
        if ratio == 1.0:
            assert venv.attacked == venv.observations == len(clean)
        else:
            assert 0.4 * venv.observations < venv.attacked < 0.6 * venv.observations


def test_sa_ppo_inner_attack_in_budget_and_eps_ramp(monkeypatch):
    """SA-PPO's inner maximisation, recorded during training: inside the ball at the ramped eps, which rises
    from 0 and never exceeds the run's eps."""
    from armor.domains.agents import recipes

    normalizer = _cartpole_normalizer()
    calls = []
    real = recipes.mad_pgd

    def recording(adapter, z, threat, *args, **kwargs):
        z_adv = real(adapter, z, threat, *args, **kwargs)
        calls.append((threat.eps_scalar, bool(threat.contains(z_adv, z).all())))
        return z_adv

    monkeypatch.setattr(recipes, "mad_pgd", recording)
    venv = make_vec_env("CartPole-v1", n_envs=4, seed=0)
    space = venv.observation_space
    model = SAPPO("MlpPolicy", venv, seed=0, device="cpu", n_steps=64, batch_size=128, n_epochs=2, sa_kappa=1.0,
                  sa_eps=EPS, sa_ramp=0.5, sa_normalizer=normalizer.to_dict(), sa_low=space.low.tolist(),
                  sa_high=space.high.tolist())
    model.learn(2048)
    eps_seen = [e for e, _ in calls]
    assert calls and all(ok for _, ok in calls)
    assert eps_seen == sorted(eps_seen) and eps_seen[0] < EPS and eps_seen[-1] == pytest.approx(EPS)
    assert model.sa_forward > 0 and np.isfinite(model.sa_last_kl)


def test_add_gradient_adds_exactly_the_regulariser_gradient():
    torch.manual_seed(0)
    w = torch.randn(5, requires_grad=True)
    x = torch.randn(7, 5)

    def loss_terms():
        values = x @ w
        reg = (w ** 3).sum() * 0.3
        return values, reg

    values, reg = loss_terms()
    (torch.nn.functional.mse_loss(add_gradient(values, reg), torch.ones(7)) * 0.5).backward()
    injected = w.grad.clone()
    w.grad = None
    values, reg = loss_terms()
    (torch.nn.functional.mse_loss(values, torch.ones(7)) * 0.5 + reg).backward()
    assert torch.allclose(injected, w.grad, atol=1e-6)
    assert torch.equal(add_gradient(values, reg), values)  # the forward pass is untouched


# ---------------------------------------------------------------------------------------------- SA-PPO works
def test_sa_ppo_lowers_the_kl_under_a_mad_perturbation(tmp_path):
    """kappa > 0 makes the policy smoother in the ball than kappa = 0 (plain PPO) on the same seed and budget.

    Measured (mean KL under 20-step MAD at eps 0.2 on 512 random-policy states, 4096 steps, kappa 1 vs 0):
    seed 0: 0.011 vs 0.047; 1: 0.009 vs 0.029; 2: 0.011 vs 0.020; 3: 0.016 vs 0.044; 4: 0.016 vs 0.031;
    5: 0.008 vs 0.027, i.e. between 1.8x and 4.2x lower. The test asks for 1.6x on seed 0 (measured 4.2x)."""
    import gymnasium as gym

    kls = {}

    env = gym.make("CartPole-v1")
    env.action_space.seed(123)
    obs, _ = env.reset(seed=123)
    xs = [obs]
    for _ in range(511):
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            obs, _ = env.reset()
        xs.append(obs)
    x = torch.tensor(np.stack(xs), dtype=torch.float32)
    for kappa in (0.0, 1.0):
        run = train_agent("CartPole-v1", "sa-ppo", eps=EPS, total_steps=4096, seed=0, out_dir=tmp_path / str(kappa),
                          kappa=kappa)
        normalizer = run.normalizer  # the same for both: estimated from the same seeded random rollout
        z = normalizer.to_z(x)
        threat = observation_threat(normalizer, "linf", EPS)
        adapter = adapter_in_z(run.adapter, normalizer)
        with adapter.frozen():
            z_adv = mad_pgd(adapter, z, threat, steps=20, generator=torch.Generator().manual_seed(0))
        kls[kappa] = adapter.kl(z, z_adv).mean().item()
        if kappa == 0:
            assert run.metadata["cost"]["extra_forward"] == 0  # kappa 0: no regulariser computed at all
    assert kls[1.0] < kls[0.0] / 1.6, kls


# ---------------------------------------------------------------------------------------------- identities
def test_ratio_zero_and_kappa_zero_are_vanilla_and_ratio_one_attacks_everything(tmp_path, vanilla_run):
    reference = _weights(vanilla_run.model)
    for recipe, options in (("attacked-obs", {"ratio": 0.0}), ("sa-ppo", {"kappa": 0.0})):
        run = train_agent("CartPole-v1", recipe, eps=EPS, total_steps=SMALL, seed=0, out_dir=tmp_path / recipe,
                          **options)
        assert _same(_weights(run.model), reference), recipe
    cost = read_metadata(vanilla_run.run_dir)["cost"]
    run = train_agent("CartPole-v1", "attacked-obs", eps=EPS, total_steps=SMALL, seed=0, out_dir=tmp_path / "r1",
                      ratio=1.0)
    c = run.metadata["cost"]
    assert c["attacked_observations"] == c["observations"] == SMALL + 8  # every step and the first reset (8 envs)
    assert not _same(_weights(run.model), reference)
    assert c["env_steps"] == cost["env_steps"]


def test_same_seed_same_weights(tmp_path, vanilla_run):
    again = train_agent("CartPole-v1", "vanilla", eps=EPS, total_steps=SMALL, seed=0, out_dir=tmp_path / "again")
    assert _same(_weights(again.model), _weights(vanilla_run.model))
    other = train_agent("CartPole-v1", "vanilla", eps=EPS, total_steps=SMALL, seed=1, out_dir=tmp_path / "other")
    assert not _same(_weights(other.model), _weights(vanilla_run.model))


# ---------------------------------------------------------------------------------------------- kill and resume
_KILLED = """
import torch
torch.set_num_threads(1)
from armor.domains.agents.train import train_agent
train_agent("CartPole-v1", {recipe!r}, eps={eps}, total_steps={total}, seed=3, out_dir={out!r},
            checkpoint_every=512, **{options!r})
"""


@pytest.mark.parametrize("recipe,options", [("vanilla", {}), ("sa-ppo", {"kappa": 1.0, "steps": 2}),
                                            ("atla", {"rounds": 2})])
def test_killed_run_resumes_to_the_budget_bit_exactly(tmp_path, recipe, options):
    """SIGKILL after the first checkpoint; resume=True ends at the full budget, finished, with the weights of an
    uninterrupted run (the environments pickle, so episodes and RNG streams continue where they were)."""
    total, out = 2048, tmp_path / "killed"
    code = _KILLED.format(recipe=recipe, eps=EPS, total=total, out=str(out), options=options)
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    try:
        while not (out / CHECKPOINT).exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert (out / CHECKPOINT).exists()
    with pytest.raises(ValueError, match="not finished"):
        load_agent(out)
    with pytest.raises(ValueError, match="already holds"):
        train_agent("CartPole-v1", recipe, eps=EPS, total_steps=total, seed=3, out_dir=out, **options)
    with pytest.raises(ValueError, match="settings differ"):
        train_agent("CartPole-v1", recipe, eps=EPS, total_steps=total, seed=4, out_dir=out, resume=True, **options)
    resumed = train_agent("CartPole-v1", recipe, eps=EPS, total_steps=total, seed=3, out_dir=out, resume=True,
                          checkpoint_every=512, **options)
    meta = read_metadata(out)
    assert meta["status"] == "finished" and meta["cost"]["agent_env_steps"] == total
    assert meta["resume"] == {"resumes": 1, "exact": True}
    full = train_agent("CartPole-v1", recipe, eps=EPS, total_steps=total, seed=3, out_dir=tmp_path / "full",
                       checkpoint_every=512, **options)
    assert _same(_weights(resumed.model), _weights(full.model))
    assert meta["env_steps"] == full.metadata["env_steps"]
    # resuming a finished run returns it unchanged
    again = train_agent("CartPole-v1", recipe, eps=EPS, total_steps=total, seed=3, out_dir=out, resume=True, **options)
    assert _same(_weights(again.model), _weights(resumed.model)) and read_metadata(out) == meta


def test_resume_without_picklable_envs_restarts_episodes(tmp_path, monkeypatch):
    """When the environments do not pickle, a resume restarts their episodes: it still ends at the budget and
    says it was not exact."""

    class Killed(Exception):
        pass

    monkeypatch.setattr(agents_train, "_pickle_env", lambda venv: None)
    real = agents_train._Run.save_checkpoint

    def save_then_die(self):
        real(self)
        raise Killed

    monkeypatch.setattr(agents_train._Run, "save_checkpoint", save_then_die)
    out = tmp_path / "run"
    with pytest.raises(Killed):
        train_agent("CartPole-v1", "attacked-obs", eps=EPS, total_steps=2048, seed=0, out_dir=out,
                    checkpoint_every=512, ratio=0.5, steps=2)
    assert read_metadata(out)["status"] == "running"
    monkeypatch.setattr(agents_train._Run, "save_checkpoint", real)
    run = train_agent("CartPole-v1", "attacked-obs", eps=EPS, total_steps=2048, seed=0, out_dir=out,
                      checkpoint_every=512, ratio=0.5, steps=2, resume=True)
    meta = run.metadata
    assert meta["status"] == "finished" and meta["env_steps"] == 2048
    assert meta["resume"] == {"resumes": 1, "exact": False}
    assert meta["cost"]["observations"] >= 2048 + 8


# ---------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("kwargs,match", [
    ({"recipe": "nope"}, "unknown agents recipe 'nope'"),
    ({"recipe": "sa-ppo", "ratio": 0.5}, "no option 'ratio'"),
    ({"recipe": "attacked-obs", "ratio": 1.5}, "ratio must be"),
    ({"recipe": "attacked-obs", "attack": "fgsm"}, "attack must be one of"),
    ({"recipe": "atla", "rounds": 1}, "rounds must be"),
    ({"recipe": "sa-ppo", "eps": 0.0}, "eps must be > 0"),
    ({"eps": -0.1}, "eps must be a finite number"),
    ({"eps": float("nan")}, "eps must be a finite number"),
    ({"norm": "l3"}, "unknown norm"),
    ({"total_steps": 0}, "total_steps must be"),
    ({"env_id": "NoSuchEnv-v0"}, "unknown environment 'NoSuchEnv-v0'"),
    ({"env_id": "FrozenLake-v1"}, "Discrete observation space.*only Box"),
    ({"ppo": {"lr": 0.1}}, "unknown PPO setting"),
    ({"ppo": {"n_envs": 0}}, "n_envs must be"),
    ({"normalizer": {"mean": [0.0], "scale": [1.0]}}, "normaliser has 1 dimensions"),
])
def test_bad_inputs_are_clear_value_errors(tmp_path, kwargs, match):
    args = {"env_id": "CartPole-v1", "recipe": "vanilla", "eps": EPS, "total_steps": 512, "seed": 0,
            "out_dir": tmp_path / "run", **kwargs}
    with pytest.raises(ValueError, match=match):
        train_agent(args.pop("env_id"), args.pop("recipe"), **args)
    assert not (tmp_path / "run" / "metadata.json").exists()  # nothing written


def test_loading_what_is_not_a_finished_run(tmp_path):
    with pytest.raises(ValueError, match="not an agents run"):
        load_agent(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"domain": "vision"}))
    with pytest.raises(ValueError, match="not the metadata of an agents run"):
        load_agent(tmp_path)
    with pytest.raises(ValueError, match="not an agents run"):
        train_agent("CartPole-v1", "vanilla", eps=EPS, total_steps=512, out_dir=tmp_path / "none", resume=True)
