"""Agents domain, driving: 2-D (vehicles x features) observations are attacked and trained on in budget, the crash
rate is counted as an independent loop counts it (a scripted 2-D lanes environment, and highway-env itself when it
is installed), it reaches results, the summary table and the report, and bad inputs are named clearly."""

import json

import numpy as np
import pytest
import torch
from torch import distributions as D
from torch import nn

gym = pytest.importorskip("gymnasium")
pytest.importorskip("stable_baselines3")

from armor.domains.agents import envs as agents_envs  # noqa: E402
from armor.domains.agents import evaluate as agents_evaluate  # noqa: E402
from armor.domains.agents.attacks import (LearnedAdversary, RobustSarsa, make_attack, run_episode)  # noqa: E402
from armor.domains.agents.evaluate import TASKS, Task, evaluate_agent  # noqa: E402
from armor.domains.agents.policy import PolicyAdapter  # noqa: E402
from armor.domains.agents.recipes import PolicyAttack  # noqa: E402
from armor.domains.agents.threat import ObsNormalizer, observation_threat  # noqa: E402
from armor.domains.agents.train import load_agent, train_agent  # noqa: E402
from armor.domains.agents.workflow import failure_entry, summary  # noqa: E402

torch.set_num_threads(1)
LANES = "ArmorTestLanes-v0"
V, F = 5, 5  # vehicles x features, as highway-env's kinematics observation


class Lanes(gym.Env):
    """A scripted 2-D observation: each step shows V x F numbers drawn from the episode's seed, feature 0 a
    constant 1 (highway-env's "presence": its scale is floored, so one float32 ulp is 1e-4 normalised units); the
    hazard is the row whose feature 1 is largest (rows 0..4 = actions 0..4). Acting the hazard's index crashes
    (terminated, ``info["crashed"]``); otherwise reward 1, for at most 8 steps."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, render_mode=None):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (V, F), np.float32)
        self.action_space = gym.spaces.Discrete(V)
        self.render_mode = render_mode

    def _draw(self):
        obs = self.np_random.normal(size=(V, F)).astype(np.float32)
        obs[:, 0] = 1.0
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.obs = self._draw()
        return self.obs.copy(), {}

    def step(self, action):
        crashed = int(action) == int(np.argmax(self.obs[:, 1]))
        self.t += 1
        self.obs = self._draw()
        return self.obs.copy(), 0.0 if crashed else 1.0, crashed, self.t >= 8, {"crashed": crashed}


if LANES not in gym.envs.registry:
    gym.register(LANES, entry_point=Lanes)


class Policy(nn.Module):
    """A fixed linear policy on the flattened observation, with a value head."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.pi, self.v = nn.Linear(V * F, V), nn.Linear(V * F, 1)

    def adapter(self):
        return PolicyAdapter(lambda o: D.Categorical(logits=self.pi(o.reshape(len(o), -1))),
                             lambda o: self.v(o.reshape(len(o), -1)).squeeze(-1), True, self)


def independent_crashes(policy, seeds, attack=None):
    """Crash flags per episode by a plain loop (numpy policy, env's own info), no armor code in the episode."""
    W, b = policy.pi.weight.detach().numpy(), policy.pi.bias.detach().numpy()
    out = []
    for s in seeds:
        env = Lanes()
        obs, _ = env.reset(seed=s)
        crashed = False
        while True:
            seen = obs.reshape(-1) if attack is None else attack(obs.reshape(-1))
            obs, _, term, trunc, info = env.step(int(np.argmax(W @ seen + b)))
            crashed |= bool(info["crashed"])
            if term or trunc:
                break
        out.append(crashed)
    return out


IDENTITY = ObsNormalizer(torch.zeros(V * F), torch.ones(V * F))


def test_crash_rate_matches_an_independent_count_and_reaches_the_table(monkeypatch):
    monkeypatch.setitem(TASKS, LANES, Task(failure_key="crashed", label="crash rate"))
    policy = Policy(6)  # crash rates clean 70%, pushed 70%, pulled 80%, either 90% (deterministic)
    threat = observation_threat(IDENTITY, "linf", 0.5)

    def shift(c):  # a fixed shift inside the budget
        def attack(adapter, normalizer, threat, obs, *, generator=None):
            return obs + c * torch.sign(torch.arange(obs.shape[1]) % 2 - 0.5)
        return attack

    seeds = list(range(3, 23))
    ev = evaluate_agent(policy.adapter(), LANES, IDENTITY, threat, {"push": shift(0.5), "pull": shift(-0.5)},
                        episodes=20, seed=3)
    assert ev.failure_key == "crashed" and ev.failure_label == "crash rate"  # from the environment's Task
    clean = independent_crashes(policy, seeds)
    pushed = independent_crashes(policy, seeds, lambda o: o + 0.5 * np.sign(np.arange(o.size) % 2 - 0.5))
    pulled = independent_crashes(policy, seeds, lambda o: o - 0.5 * np.sign(np.arange(o.size) % 2 - 0.5))
    s = ev.summary()
    assert ev.failed["clean"] == clean and ev.failed["push"] == pushed and ev.failed["pull"] == pulled
    assert 0 < sum(clean) < 20 and clean != pushed  # the scripted case has both outcomes and the push matters
    assert s["clean"]["failure_share"] == pytest.approx(np.mean(clean))
    assert s["attacks"]["push"]["failure_share"] == pytest.approx(np.mean(pushed))
    # the worst case: an episode failed under some attack of the suite (the clean run is not an attack)
    either = np.logical_or(pushed, pulled)
    assert either.mean() > max(np.mean(pushed), np.mean(pulled))  # the two attacks crash different episodes
    assert s["worst"]["failure_share"] == pytest.approx(either.mean())
    f = failure_entry(ev, s)
    assert f["label"] == "crash rate" and "info['crashed']" in f["rule"]
    assert f["clean"] == s["clean"]["failure_share"] and f["per_attack"]["push"] == s["attacks"]["push"]["failure_share"]
    entry = {"env": LANES, "threat": {"norm": "linf", "eps": 0.5}, "n": 20, "clean": s["clean"], "worst": s["worst"],
             "per_attack": s["attacks"], "failure": f, "env_steps": 1, "train_seconds": 1.0}
    _, head, rows = summary({"lanes": entry})
    assert "crash rate: clean" in head
    i = head.index("crash rate: clean")
    assert rows[0][i] == f"{100 * np.mean(clean):.0f}%"
    assert rows[0][i + 1] == f"{100 * either.mean():.0f}%"


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 0.8)])
def test_every_attack_keeps_2d_observations_in_budget(norm, eps):
    policy = Policy(1)
    adapter = policy.adapter()
    obs = np.stack([Lanes().reset(seed=s)[0] for s in range(16)])  # (16, 5, 5)
    normalizer = ObsNormalizer.from_observations(obs)
    threat = observation_threat(normalizer, norm, eps)
    rs = RobustSarsa(transitions=200, train_steps=30, steps=5).fit(adapter, LANES, normalizer, threat, seed=1)
    adv = LearnedAdversary(timesteps=64, configs=({"learning_rate": 1e-3},), heldout_episodes=1, n_steps=32,
                           batch_size=32, n_epochs=1).fit(adapter, LANES, normalizer, threat, seed=2)
    z = normalizer.to_z(torch.as_tensor(obs).reshape(16, -1)).double()
    g = torch.Generator().manual_seed(0)
    for name in ("random", "critic", "mad", "rs", "optimal"):
        attack = {"rs": rs, "optimal": adv}.get(name) or make_attack(name)
        with adapter.frozen():
            out = attack(adapter, normalizer, threat, torch.as_tensor(obs), generator=g)
        assert out.shape == (16, V * F)
        size = threat.norm_of(normalizer.to_z(out.double()) - z)
        assert (size <= eps * (1 + 1e-5) + 1e-6).all(), (name, float(size.max()))
        assert float(size.max()) > 0.5 * eps or name == "optimal", name  # the attack did move
        res = run_episode(LANES, adapter, attack, normalizer, threat, seed=5)
        assert res.in_budget and res.attacked_steps == res.length


def test_training_on_2d_observations_keeps_the_shape_and_the_budget(tmp_path):
    run = train_agent(LANES, "sa-ppo", eps=0.3, total_steps=128, seed=0, out_dir=tmp_path / "sa",
                      ppo={"n_envs": 1, "n_steps": 64, "batch_size": 32, "n_epochs": 1}, normalizer_steps=64)
    meta = run.metadata
    assert meta["status"] == "finished" and len(meta["threat"]["raw_eps"]) == V * F
    assert meta["cost"]["extra_forward"] > 0  # SA-PPO's regulariser ran on the 2-D minibatches
    model, adapter, normalizer, _ = load_agent(tmp_path / "sa")
    assert model.observation_space.shape == (V, F)  # the agent keeps the environment's own shape
    obs = np.stack([Lanes().reset(seed=s)[0] for s in range(8)])
    threat = observation_threat(normalizer, "linf", 0.3)
    out = PolicyAttack(model, normalizer, threat, "mad", steps=3, seed=0)(obs)
    assert out.shape == obs.shape and out.dtype == obs.dtype
    z, z_out = (normalizer.to_z(torch.as_tensor(a).reshape(8, -1).double()) for a in (obs, out))
    assert bool(threat.contains(z_out, z, atol=0.0).all()) and float((z_out - z).abs().max()) > 0.15


def test_highway_crash_rate_matches_the_environment():
    pytest.importorskip("highway_env")
    env_id = "highway-fast-v0"
    torch.manual_seed(0)
    pi = nn.Linear(V * F, V)
    with torch.no_grad():
        pi.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 3.0, 0.0]))  # mostly FASTER: crashes on some seeds
    adapter = PolicyAdapter(lambda o: D.Categorical(logits=pi(o.reshape(len(o), -1))), None, True, pi)
    ev = evaluate_agent(adapter, env_id, IDENTITY, observation_threat(IDENTITY, "linf", 0.1), (),
                        episodes=3, seed=0)  # clean only: the crash bookkeeping under attack is tested above
    assert ev.failure_key == "crashed" and ev.failure_label == "crash rate"
    W, b = pi.weight.detach().numpy(), pi.bias.detach().numpy()
    expected = []
    env = agents_envs.make_env(env_id)
    for s in range(3):
        obs, _ = env.reset(seed=s)
        crashed = False
        while True:
            obs, _, term, trunc, info = env.step(int(np.argmax(W @ np.asarray(obs).reshape(-1) + b)))
            crashed |= bool(info["crashed"])
            if term or trunc:
                break
        expected.append(crashed)
    env.close()
    assert ev.failed["clean"] == expected
    assert ev.summary()["clean"]["failure_share"] == pytest.approx(np.mean(expected))


def test_highway_filmstrip_frames_and_blank_frames_are_a_note(monkeypatch):
    pytest.importorskip("highway_env")
    from armor.domains.agents import filmstrip

    pi = nn.Linear(V * F, V)
    adapter = PolicyAdapter(lambda o: D.Categorical(logits=pi(o.reshape(len(o), -1))), None, True, pi)
    threat = observation_threat(IDENTITY, "linf", 0.1)
    arrays, info = filmstrip.record_filmstrip(adapter, "highway-fast-v0", IDENTITY, threat, {"clean": None}, seed=0,
                                              frames=3, lengths={"clean": 4}, failure_key="crashed")
    stack = arrays["film_clean"]
    assert stack.shape == (3, 50, 200, 3) and stack.std() > 10 and info["episodes"]["clean"]["steps"] == [0, 2, 4]
    # a renderer that draws nothing: a note, not a black filmstrip
    monkeypatch.setitem(TASKS, LANES, Task())
    monkeypatch.setattr(Lanes, "render", lambda self: np.zeros((20, 40, 3), np.uint8), raising=False)
    arrays, info = filmstrip.record_filmstrip(Policy().adapter(), LANES, IDENTITY, threat, {"clean": None}, seed=0)
    assert arrays == {} and "blank frames" in info["note"]


def test_bad_inputs_name_the_space_and_the_package(tmp_path, monkeypatch):
    class DictObs(gym.Env):
        observation_space = gym.spaces.Dict({"a": gym.spaces.Box(-1, 1, (2,))})
        action_space = gym.spaces.Discrete(2)

    if "ArmorTestDict-v0" not in gym.envs.registry:
        gym.register("ArmorTestDict-v0", entry_point=DictObs)
    with pytest.raises(ValueError, match="Dict observation space.*only Box.*FlattenObservation"):
        train_agent("ArmorTestDict-v0", "vanilla", eps=0.1, total_steps=64, out_dir=tmp_path / "d")
    with pytest.raises(ValueError, match="Discrete observation space.*only Box"):
        train_agent("FrozenLake-v1", "vanilla", eps=0.1, total_steps=64, out_dir=tmp_path / "f")
    with pytest.raises(ValueError, match="unknown environment 'highway-fastest-v0'"):
        train_agent("highway-fastest-v0", "vanilla", eps=0.1, total_steps=64, out_dir=tmp_path / "h")
    monkeypatch.setattr(agents_envs, "ENV_PACKAGES", (("armortest-", "armor_no_such_module", "pip install nosuch"),))
    with pytest.raises(ValueError, match="'armortest-v0' comes with the armor_no_such_module package.*pip install "
                                         "nosuch"):
        agents_envs.make_env("armortest-v0")
    with pytest.raises(ValueError, match="pip install nosuch"):
        train_agent("armortest-v0", "vanilla", eps=0.1, total_steps=64, out_dir=tmp_path / "p")
    assert not any(tmp_path.iterdir())  # nothing written


def test_failure_rules_of_known_tasks():
    assert TASKS["highway-fast-v0"].failure_key == "crashed" and TASKS["highway-fast-v0"].label == "crash rate"
    assert TASKS["CartPole-v1"].threshold == 195.0
    assert Task(threshold=195.0).rule() == "return < 195" and Task().rule() == "none"
    # an explicit rule overrides the environment's, and is labelled generically
    ev = evaluate_agent(Policy().adapter(), LANES, IDENTITY, observation_threat(IDENTITY, "linf", 0.1), (),
                        episodes=4, seed=0, threshold=8.0)
    assert ev.failure_key is None and ev.failure_label == "failed episodes"
    assert ev.summary()["clean"]["failure_share"] == pytest.approx(np.mean([r < 8 for r in ev.clean]))
    assert json.loads(json.dumps(ev.to_dict()))["failure_label"] == "failed episodes"
    assert agents_evaluate.Task(failure_key="crashed").label == "failed episodes"


def test_highway_training_reproduces_and_resumes_exactly(tmp_path, monkeypatch):
    """A run on highway-env killed after its first checkpoint and resumed ends with the weights of an uninterrupted
    run of the same seed (which estimates its normaliser again). Both failed before: highway-env makes a new, unseeded action space at every reset, so
    the random-policy rollout that estimates the normaliser drew other actions in every run (a killed and resumed
    run kept its saved normaliser, the rerun estimated another: it looked like an inexact resume)."""
    pytest.importorskip("highway_env")
    from armor.domains.agents import train as agents_train

    env_id = "armor/highway-drive-v0"  # registered by armor: highway-fast-v0 with a reward that pays for speed
    a, b = (agents_train.estimate_normalizer(env_id, 60, 5) for _ in range(2))
    assert torch.equal(a.mean, b.mean) and torch.equal(a.scale, b.scale)

    class Killed(Exception):
        pass

    real = agents_train._Run.save_checkpoint

    def save_then_die(self):
        real(self)
        raise Killed

    kw = dict(eps=0.2, total_steps=128, seed=3, checkpoint_every=64, normalizer_steps=60,
              ppo={"n_steps": 8, "batch_size": 32, "n_epochs": 2}, kappa=1.0, steps=2)  # 8 envs x 8: 2 rollouts
    monkeypatch.setattr(agents_train._Run, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train_agent(env_id, "sa-ppo", out_dir=tmp_path / "killed", **kw)
    monkeypatch.setattr(agents_train._Run, "save_checkpoint", real)
    resumed = train_agent(env_id, "sa-ppo", out_dir=tmp_path / "killed", resume=True, **kw)
    assert resumed.metadata["resume"] == {"resumes": 1, "exact": True}
    full = train_agent(env_id, "sa-ppo", out_dir=tmp_path / "full", **kw)  # estimates its own normaliser again
    a, b = resumed.model.policy.state_dict(), full.model.policy.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _speed_term(forward_speed):  # the reward's speed term, written out: 0 at 20 m/s, 1 at 30 m/s, clipped
    return min(max((forward_speed - 20.0) / 10.0, 0.0), 1.0)


def test_drive_reward_equals_the_formula_on_constructed_states():
    """armor/highway-drive-v0 pays a + (1 - a) * speed_term per step alive (a = 0.2), -3 on a crash, 0 off the
    road: checked on states set by hand (slow, between, fast, above the range, at an angle, crashed, off road)."""
    pytest.importorskip("highway_env")
    env = agents_envs.make_env("armor/highway-drive-v0")
    env.reset(seed=0)
    u = env.unwrapped
    assert u.config["vehicles_count"] == 10 and u.config["alive_reward"] == 0.2 and u.config["crash_reward"] == -3.0
    for speed, heading, expected_term in ((20.0, 0.0, 0.0), (25.0, 0.0, 0.5), (30.0, 0.0, 1.0), (36.0, 0.0, 1.0),
                                          (15.0, 0.0, 0.0), (30.0, np.pi / 3, 0.0), (40.0, np.pi / 3, 0.0),
                                          (50.0, np.pi / 3, 0.5)):
        u.vehicle.speed, u.vehicle.heading = speed, heading
        assert _speed_term(speed * np.cos(heading)) == pytest.approx(expected_term)
        assert u._reward(1) == pytest.approx(0.2 + 0.8 * expected_term, abs=1e-12), (speed, heading)
    u.vehicle.speed, u.vehicle.heading = 30.0, 0.0
    u.vehicle.crashed = True
    assert u._reward(1) == -3.0  # a crash pays the penalty, whatever the speed
    u.vehicle.crashed = False
    u.vehicle.position = np.array([u.vehicle.position[0], 100.0])  # far off the three lanes
    assert not u.vehicle.on_road and u._reward(1) == 0.0
    env.close()


def test_drive_reward_orders_fast_slow_and_crashing_over_real_episodes():
    """Over whole episodes of the real simulator, every step's reward is the formula of the step's speed, and the
    horizon arithmetic of driving.py holds: braking (SLOWER) earns 6 of 30 without a crash, driving flat out
    (FASTER) crashes early and earns less than braking."""
    pytest.importorskip("highway_env")
    env = agents_envs.make_env("armor/highway-drive-v0")
    totals = {}
    for action in (3, 4):  # FASTER, SLOWER
        env.reset(seed=2)
        total, steps = 0.0, 0
        while True:
            _, r, term, trunc, info = env.step(action)
            steps += 1
            heading = env.unwrapped.vehicle.heading
            expected = -3.0 if info["crashed"] else 0.2 + 0.8 * _speed_term(info["speed"] * np.cos(heading))
            assert r == pytest.approx(expected, abs=1e-12)
            total += r
            if term or trunc:
                break
        totals[action] = (total, steps, bool(info["crashed"]))
    assert totals[4] == (pytest.approx(6.0, abs=0.3), 30, False)  # braking: 20-ish m/s for 30 steps
    assert totals[3][2] and totals[3][1] < 21 and totals[3][0] < totals[4][0]  # flat out: crashes at step 6
    env.close()


def test_drive_observation_reads_gaps_and_closing_speeds_on_the_narrow_ranges():
    """The driving agent's observation maps x +-100 m and vx +-40 m/s to [-1, 1] (highway-env's default: +-200 m,
    +-80 m/s): a car 50 m ahead in the ego's lane closing at 4 m/s reads x 0.5 and vx -0.1, the ego's own 25 m/s
    reads 0.625, and the empty rows are zeros."""
    pytest.importorskip("highway_env")
    env = agents_envs.make_env("armor/highway-drive-v0")
    env.reset(seed=0)
    u = env.unwrapped
    ego = u.vehicle
    other = next(v for v in u.road.vehicles if v is not ego)
    u.road.vehicles = [ego, other]
    ego.speed, ego.heading = 25.0, 0.0
    other.position = ego.position + np.array([50.0, 0.0])
    other.speed, other.heading, other.lane_index = 21.0, 0.0, ego.lane_index
    obs = u.observation_type.observe()
    assert obs.shape == (5, 5)
    np.testing.assert_allclose(obs[1], [1.0, 0.5, 0.0, -0.1, 0.0], atol=1e-9)
    assert obs[0][0] == 1.0 and obs[0][3] == pytest.approx(0.625)
    assert not obs[2:].any()
    env.close()


@pytest.mark.parametrize("config,match", [({"alive_reward": 1.5}, "alive_reward must be a number in \\[0, 1\\]"),
                                          ({"alive_reward": "high"}, "alive_reward must be a number"),
                                          ({"crash_reward": 1.0}, "crash_reward must be a finite number <= 0"),
                                          ({"crash_reward": float("nan")}, "crash_reward must be a finite"),
                                          ({"reward_speed_range": [30, 20]}, "reward_speed_range must be two finite"),
                                          ({"reward_speed_range": 25}, "reward_speed_range must be two finite")])
def test_drive_config_bad_values_are_named(config, match):
    pytest.importorskip("highway_env")
    with pytest.raises(ValueError, match=match):
        agents_envs.make_env("armor/highway-drive-v0", config=config)
    env = agents_envs.make_env("armor/highway-drive-v0")
    with pytest.raises(ValueError, match=match):  # reconfiguring a made environment is checked too
        env.unwrapped.configure(config)
    env.close()
