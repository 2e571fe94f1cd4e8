"""Train an agent with a robust recipe into a run directory; load it back.

    >>> from armor.domains.agents.train import train_agent, load_agent
    >>> run = train_agent("CartPole-v1", "sa-ppo", eps=0.2, total_steps=50_000, seed=0, out_dir="runs/cp-sappo")
    >>> model, adapter, normalizer, meta = load_agent("runs/cp-sappo")

A run directory holds::

    metadata.json     env, recipe and its parameters, the threat (norm, eps in normalised observation units),
                      the observation normaliser, seed, status ("running" | "finished"), cost, versions
    model.zip         the agent: a plain SB3 PPO zip (``PPO.load`` reads it, whatever the recipe)
    adversary.zip     atla only: the learned adversary (SB3 PPO; observation z, action in [-1, 1]^d)
    checkpoint.ckpt   while running: everything a resume needs (removed once the run is finished)

**The normaliser** is fixed before training and saved: mean and standard deviation (floored at 1e-3) of
``normalizer_steps`` observations of a uniformly random policy on the environment (seeded from the run's
seed), unless one is passed in. Environment bounds are not used to scale (CartPole's velocities are unbounded).

**Checkpoints and resume.** Every ``checkpoint_every`` environment steps (checked at the start of each SB3
rollout) and at the end of each ATLA phase, ``checkpoint.ckpt`` is written atomically with a checksum: each
model's SB3 zip (weights, Adam state, step counters, the observation it is about to act on), the base
environments pickled (cloudpickle), the torch / numpy / python RNG states and the recipe's own generators and
counters. ``resume=True`` continues a killed run from there to the same total step budget. How exact that is:

* when the environments pickle (gymnasium's classic-control ones do), the resumed run continues the very
  episodes and random streams the killed one was in, and ends with the **same weights as an uninterrupted
  run**, bit for bit, on one thread (checked on CartPole for all four recipes; the tests kill vanilla, sa-ppo
  and atla runs with SIGKILL and compare; and for SA-PPO on highway-env, whose pickled environments continue
  exactly too);
* when they do not pickle, the episodes in progress are dropped (the envs reset with a seed derived from the
  step count) and the run is not bit-exact; metadata ``resume.exact`` says which happened.
* Wall time (``train_seconds``) is summed over the pieces; work done after the last checkpoint is redone.

**Cost** (metadata ``cost``): environment steps per model, wall time of the training calls, and the extra
sample-passes (one observation through the network) the recipe's attacks spent (``extra_forward`` /
``extra_backward``), so a report can set robust training against vanilla.
"""

from __future__ import annotations

import inspect
import io
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ...threat import Norm
from ...training import checkpoint as ckpt
from ...training.trainer import derive_seed
from ...utils import atomic_write_bytes, atomic_write_json
from .policy import PolicyAdapter
from .recipes import SAPPO, AgentRecipe, RunContext, make_recipe
from .threat import ObsNormalizer, observation_threat, raw_eps

PathLike = Union[str, Path]

METADATA = "metadata.json"
MODEL = "model.zip"
ADVERSARY = "adversary.zip"
CHECKPOINT = "checkpoint.ckpt"
STATE_VERSION = 1
EPS_UNIT = "normalised observation units"

#: PPO settings per environment (rl-baselines3-zoo's, with constant learning rate and clip range so that
#: nothing in the zip is a closure); other environments get SB3's defaults. ``n_envs`` is the number of
#: parallel environments (a DummyVecEnv), the rest go to ``PPO(...)``.
DEFAULT_PPO: dict[str, dict[str, Any]] = {
    "CartPole-v1": {"n_envs": 8, "n_steps": 64, "batch_size": 128, "n_epochs": 10, "gamma": 0.98,
                    "gae_lambda": 0.8, "learning_rate": 1e-3, "ent_coef": 0.0, "clip_range": 0.2},
    "Pendulum-v1": {"n_envs": 4, "n_steps": 1024, "batch_size": 64, "n_epochs": 10, "gamma": 0.9,
                    "gae_lambda": 0.95, "learning_rate": 1e-3, "ent_coef": 0.0, "clip_range": 0.2},
    # highway-env's own PPO example (batch 64, 10 epochs, lr 5e-4, gamma 0.8), with 64-64 networks: its 256-256
    # ones learn no faster at the few thousand steps a demo can afford (the simulator runs ~40 steps/s).
    "highway-fast-v0": {"n_envs": 4, "n_steps": 64, "batch_size": 64, "n_epochs": 10, "gamma": 0.8,
                        "learning_rate": 5e-4, "ent_coef": 0.0, "clip_range": 0.2,
                        "policy_kwargs": {"net_arch": [64, 64]}},
}
# armor's driving reward (driving.py): gamma 0.9 and an entropy bonus. At gamma 0.8 PPO stopped in a corner in
# 8-episode probes (braking on every observation, or flat out into the traffic, depending on the reward's weights);
# at 0.9 it left braking after ~4k steps for 24-25 m/s with lane changes, still crashing in 2-7 of 8 episodes.
# Rollouts of 8 envs x 128 steps and minibatches of 128 (1024 steps per update instead of 256): with them and the
# environment's narrower observation ranges PPO crashed in 0-3 of 16 episodes from 16k to 41k steps, against 3-6 of
# 16 with 4 x 64 (bench/RESULTS.md, Agents -> Driving).
DEFAULT_PPO["armor/highway-drive-v0"] = {**DEFAULT_PPO["highway-fast-v0"], "gamma": 0.9, "ent_coef": 0.01,
                                         "n_envs": 8, "n_steps": 128, "batch_size": 128}
_RESERVED = {"policy", "env", "seed", "device", "verbose", "tensorboard_log", "_init_setup_model"}


@dataclass
class AgentRun:
    """What :func:`train_agent` returns: the run directory and the trained agent, as :func:`load_agent` would."""

    run_dir: Path
    model: Any
    adapter: PolicyAdapter
    normalizer: ObsNormalizer
    metadata: dict[str, Any]


# ============================================================================================ helpers
def _seed32(seed: int, *tags: Any) -> int:
    return derive_seed(seed, *tags) % (2**31 - 1)


def _check_env(env_id: str) -> tuple[Any, Any]:
    import gymnasium as gym
    from gymnasium import spaces

    from .envs import check_observation_space, ensure_registered

    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env must be a gymnasium environment id (a string), got {env_id!r}")
    ensure_registered(env_id)
    try:
        env = gym.make(env_id)
    except gym.error.UnregisteredEnv as e:
        raise ValueError(f"unknown environment {env_id!r}: {e}") from None
    except gym.error.Error as e:  # registered but not makeable here (a missing dependency, bad arguments)
        raise ValueError(f"cannot make environment {env_id!r}: {e}") from None
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    check_observation_space(obs_space, f"environment {env_id!r}")
    if not isinstance(act_space, (spaces.Discrete, spaces.Box)):
        raise ValueError(f"{env_id}: actions must be Discrete or Box for SB3 PPO, got {act_space}")
    return obs_space, act_space


def estimate_normalizer(env_id: str, steps: int, seed: int) -> ObsNormalizer:
    """Mean / std of ``steps`` observations of a uniformly random policy (episodes restarted as they end)."""
    import gymnasium as gym

    from .envs import ensure_registered

    ensure_registered(env_id)
    env = gym.make(env_id)
    try:
        # The actions come from this one seeded space object: highway-env builds a new, unseeded action space at
        # every reset, so sampling env.action_space after a reset drew different actions in every run (and the
        # normaliser, hence the whole training, was not reproducible under a seed).
        space = env.action_space
        space.seed(seed)
        obs, _ = env.reset(seed=seed)
        xs = [np.asarray(obs, dtype=np.float64)]
        for _ in range(steps - 1):
            obs, _, terminated, truncated, _ = env.step(space.sample())
            if terminated or truncated:
                obs, _ = env.reset()
            xs.append(np.asarray(obs, dtype=np.float64))
    finally:
        env.close()
    return ObsNormalizer.from_observations(np.stack(xs))


def default_normalizer(env_id: str, seed: int, steps: int = 2000) -> ObsNormalizer:
    """The normaliser a run of seed ``seed`` estimates when none is given (:func:`estimate_normalizer` on a
    seed derived from the run's)."""
    return estimate_normalizer(env_id, steps, _seed32(seed, "agents", "normalizer"))


def _ppo_settings(env_id: str, ppo: Optional[dict[str, Any]], what: str = "ppo") -> dict[str, Any]:
    from stable_baselines3 import PPO

    if ppo is not None and not isinstance(ppo, dict):
        raise ValueError(f"{what} must be a dict of PPO settings, got {ppo!r}")
    settings = {**DEFAULT_PPO.get(env_id, {"n_envs": 1}), **(ppo or {})}
    accepted = set(inspect.signature(PPO.__init__).parameters) - {"self"} - _RESERVED
    unknown = sorted(set(settings) - accepted - {"n_envs"})
    if unknown:
        raise ValueError(f"{what}: unknown PPO setting(s) {', '.join(map(repr, unknown))} (armor sets policy, env, "
                         f"seed, device and verbose itself)")
    n = settings.get("n_envs")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{what}: n_envs must be an integer >= 1, got {n!r}")
    try:
        json.dumps(settings, allow_nan=False)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: settings must be plain JSON values (numbers, strings, lists, dicts) so the run "
                         f"can record them; got {settings!r}") from None
    return settings


def _rollout(settings: dict[str, Any]) -> int:
    from stable_baselines3 import PPO

    n_steps = settings.get("n_steps", inspect.signature(PPO.__init__).parameters["n_steps"].default)
    return int(n_steps) * int(settings["n_envs"])


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"bit_generator": np_state["bit_generator"], "key": np_state["state"]["key"].tolist(),
                      "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                      "gauss": float(np_state["gauss"])}}


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    n = s["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": np.asarray(n["key"], dtype=np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})


def _pickle_env(venv: Any) -> Optional[bytes]:
    import cloudpickle

    try:
        return cloudpickle.dumps(venv)
    except Exception:  # an environment holding a simulator handle, a socket, ...: resume restarts its episodes
        return None


def _model_bytes(model: Any) -> bytes:
    buf = io.BytesIO()
    model.save(buf)
    return buf.getvalue()


def read_metadata(run_dir: PathLike) -> dict[str, Any]:
    path = Path(run_dir) / METADATA
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{run_dir} is not an agents run directory (no {METADATA})") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    domain = meta.get("domain") if isinstance(meta, dict) else None
    if domain != "agents":
        raise ValueError(f"{path} is not the metadata of an agents run (domain {domain!r})")
    return meta


# ============================================================================================ the run
class _Run:
    """One training run: environments, models, recipe, checkpoints and metadata."""

    def __init__(self, env_id: str, recipe: AgentRecipe, eps: float, norm: str, total_steps: int, seed: int,
                 out_dir: Path, ppo: dict[str, Any], adv_ppo: Optional[dict[str, Any]], normalizer: ObsNormalizer,
                 normalizer_source: str, checkpoint_every: int, obs_space: Any, quiet: bool) -> None:
        self.env_id, self.recipe, self.eps, self.norm = env_id, recipe, eps, norm
        self.total_steps, self.seed, self.out_dir, self.quiet = total_steps, seed, out_dir, quiet
        self.ppo, self.adv_ppo = ppo, adv_ppo
        self.normalizer, self.normalizer_source = normalizer, normalizer_source
        self.checkpoint_every = checkpoint_every
        low = [float(v) for v in np.asarray(obs_space.low, dtype=np.float64).reshape(-1)]
        high = [float(v) for v in np.asarray(obs_space.high, dtype=np.float64).reshape(-1)]
        rollout = {"agent": _rollout(ppo)}
        if adv_ppo is not None:
            rollout["adversary"] = _rollout(adv_ppo)
        self.ctx = RunContext(normalizer, observation_threat(normalizer, norm, eps, low, high), norm, eps, low, high,
                              lambda tag: _seed32(seed, "agents", tag), total_steps, rollout)
        self.models: dict[str, Any] = {}
        self.bases: dict[str, Any] = {}
        self.train_seconds = 0.0
        self.resumes = 0
        self.exact: Optional[bool] = True
        self._segment_start: Optional[float] = None
        self._last_ckpt_steps = 0

    # ------------------------------------------------------------------ configuration
    def config(self) -> dict[str, Any]:
        """Everything that determines the trained weights; a resume must match it."""
        cfg = {"env": self.env_id, "recipe": {"name": self.recipe.name, "params": self.recipe.params()},
               "norm": self.norm, "eps": self.eps, "seed": self.seed, "total_steps": self.total_steps,
               "ppo": self.ppo, "adversary_ppo": self.adv_ppo}
        return json.loads(json.dumps(cfg))

    def settings(self, role: str) -> tuple[int, dict[str, Any]]:
        s = dict(self.ppo if role == "agent" else self.adv_ppo or self.ppo)
        n_envs = s.pop("n_envs")
        return n_envs, s

    def env_seed(self, role: str) -> int:
        # the agent's environments take the run's seed, as ``make_vec_env(env, n, seed=seed)`` would
        return self.seed if role == "agent" else _seed32(self.seed, "agents", "env", role)

    def model_seed(self, role: str) -> int:
        return self.seed if role == "agent" else _seed32(self.seed, "agents", "model", role)

    # ------------------------------------------------------------------ models
    def build(self) -> None:
        from stable_baselines3.common.env_util import make_vec_env

        envs = {}
        for role in self.recipe.roles:
            n_envs, kwargs = self.settings(role)
            self.bases[role] = make_vec_env(self.env_id, n_envs=n_envs, seed=self.env_seed(role))
            envs[role] = self.recipe.wrap(role, self.bases[role], self.ctx)
            cls = self.recipe.model_class(role)
            try:
                self.models[role] = cls("MlpPolicy", envs[role], seed=self.model_seed(role), device="cpu", verbose=0,
                                        **kwargs, **self.recipe.model_kwargs(role, self.ctx))
            except (TypeError, AssertionError) as e:
                raise ValueError(f"{role} PPO settings {kwargs} are not accepted by SB3: {e}") from None
        self.recipe.attach(self.models, envs, self.ctx)

    def restore(self, state: dict[str, Any]) -> None:
        import cloudpickle
        from stable_baselines3.common.env_util import make_vec_env

        envs = {}
        steps = sum(int(v) for v in state["steps"].values())
        for role in self.recipe.roles:
            n_envs, _ = self.settings(role)
            blob = state["envs"].get(role)
            exact = blob is not None
            if exact:
                self.bases[role] = cloudpickle.loads(blob)
            else:
                self.bases[role] = make_vec_env(self.env_id, n_envs=n_envs,
                                                seed=_seed32(self.seed, "agents", "resume", role, steps))
                self.exact = False
            envs[role] = self.recipe.wrap(role, self.bases[role], self.ctx)
            cls = self.recipe.model_class(role)
            model = cls.load(io.BytesIO(state["models"][role]), env=envs[role], device="cpu", force_reset=not exact)
            if not exact:  # SB3's load seeded the env with the run's seed: start new episodes, not the first ones
                model.env.seed(_seed32(self.seed, "agents", "resume", role, steps))
            self.models[role] = model
        self.recipe.attach(self.models, envs, self.ctx)
        self.recipe.load_state_dict(state["recipe"])
        self.train_seconds = float(state["train_seconds"])
        self.resumes = int(state["resumes"]) + 1
        if state.get("exact") is False:
            self.exact = False
        _set_rng_state(state["rng"])  # last: loading the models re-seeded the global generators

    # ------------------------------------------------------------------ progress and files
    def env_steps(self) -> int:
        return sum(int(m.num_timesteps) for m in self.models.values())

    def seconds(self) -> float:
        extra = 0.0 if self._segment_start is None else time.perf_counter() - self._segment_start
        return self.train_seconds + extra

    def save_checkpoint(self) -> None:
        envs = {role: _pickle_env(base) for role, base in self.bases.items()}
        state = {"version": STATE_VERSION, "config": json.dumps(self.config()),
                 "models": {r: _model_bytes(m) for r, m in self.models.items()},
                 "steps": {r: int(m.num_timesteps) for r, m in self.models.items()},
                 "envs": envs, "rng": _rng_state(), "recipe": self.recipe.state_dict(),
                 "train_seconds": self.seconds(), "resumes": self.resumes,
                 "exact": self.exact and all(b is not None for b in envs.values())}
        ckpt.save_state(self.out_dir / CHECKPOINT, state)
        self._last_ckpt_steps = self.env_steps()
        self.write_metadata("running")
        if not self.quiet:
            print(f"[armor agents] {self.out_dir.name}: checkpoint at {self.env_steps()} env steps, "
                  f"{self.seconds():.1f}s", flush=True)

    def cost(self) -> dict[str, Any]:
        out: dict[str, Any] = {"env_steps": self.env_steps(), "train_seconds": round(self.seconds(), 3),
                               "extra_forward": 0, "extra_backward": 0}
        out.update({f"{r}_env_steps": int(m.num_timesteps) for r, m in self.models.items()})
        out.update(self.recipe.cost(self.models))
        return out

    def metadata(self, status: str) -> dict[str, Any]:
        from ... import __version__

        import gymnasium
        import stable_baselines3

        files = {"model": MODEL}
        if "adversary" in self.models:
            files["adversary"] = ADVERSARY
        schedule = self.recipe.phases(self.ctx)
        return {
            "domain": "agents", "env": self.env_id,
            "recipe": {"name": self.recipe.name, "params": self.recipe.params(),
                       "description": self.recipe.description},
            "threat": {"norm": self.norm, "eps": self.eps, "eps_unit": EPS_UNIT,
                       "raw_eps": raw_eps(self.normalizer, self.eps) if self.norm == "linf" else None},
            "normalizer": {**self.normalizer.to_dict(), "source": self.normalizer_source},
            "seed": self.seed, "status": status, "train_seconds": round(self.seconds(), 3),
            "env_steps": self.env_steps(), "total_steps": self.total_steps,
            "ppo": self.ppo, "adversary_ppo": self.adv_ppo,
            "schedule": [{"role": r, "until_steps": s} for r, s in schedule],
            "checkpoint_every": self.checkpoint_every, "cost": self.cost(),
            "resume": {"resumes": self.resumes, "exact": self.exact},
            "files": files, "armor_version": __version__,
            "versions": {"stable_baselines3": stable_baselines3.__version__, "gymnasium": gymnasium.__version__,
                         "torch": torch.__version__},
        }

    def write_metadata(self, status: str) -> None:
        atomic_write_json(self.out_dir / METADATA, self.metadata(status))

    # ------------------------------------------------------------------ training
    def train(self) -> None:
        from stable_baselines3.common.callbacks import BaseCallback

        run = self

        class Checkpointer(BaseCallback):
            def _on_rollout_start(self) -> None:
                # Between two updates: the rollout buffer is empty, so the model zip, the envs and the RNG
                # states are the whole training state.
                if run.env_steps() - run._last_ckpt_steps >= run.checkpoint_every:
                    run.save_checkpoint()

            def _on_step(self) -> bool:
                return True

        self._last_ckpt_steps = self.env_steps()
        phases = self.recipe.phases(self.ctx)
        for i, (role, until) in enumerate(phases):
            model = self.models[role]
            remaining = until - int(model.num_timesteps)
            if remaining <= 0:
                continue
            if not self.quiet:
                print(f"[armor agents] {self.out_dir.name}: {role} phase {i + 1}/{len(phases)} to {until} steps",
                      flush=True)
            self._segment_start = time.perf_counter()
            try:
                model.learn(remaining, callback=Checkpointer(), reset_num_timesteps=False, progress_bar=False)
            finally:
                self.train_seconds = self.seconds()
                self._segment_start = None
            if len(phases) > 1 and i < len(phases) - 1:
                self.save_checkpoint()

    def finish(self) -> None:
        atomic_write_bytes(self.out_dir / MODEL, _model_bytes(self.models["agent"]))
        if "adversary" in self.models:
            atomic_write_bytes(self.out_dir / ADVERSARY, _model_bytes(self.models["adversary"]))
        self.write_metadata("finished")
        try:
            (self.out_dir / CHECKPOINT).unlink()
        except FileNotFoundError:
            pass


# ============================================================================================ public API
def train_agent(env_id: str, recipe: str = "vanilla", *, eps: float, norm: str = "linf", total_steps: int,
                seed: int = 0, out_dir: PathLike, ppo: Optional[dict[str, Any]] = None,
                checkpoint_every: Optional[int] = None, resume: bool = False,
                normalizer: Optional[Union[ObsNormalizer, dict[str, Any]]] = None, normalizer_steps: int = 2000,
                quiet: bool = True, **recipe_options: Any) -> AgentRun:
    """Train an SB3 PPO agent on ``env_id`` with a robust ``recipe`` and write the run directory ``out_dir``.

    Arguments:
        recipe: ``"vanilla"``, ``"sa-ppo"``, ``"attacked-obs"`` or ``"atla"``; its options as keyword arguments
            (sa-ppo: kappa, steps, step_size, ramp; attacked-obs: ratio, attack, steps, step_size; atla: rounds,
            adv_ratio, adv_ppo). See :mod:`armor.domains.agents.recipes`.
        eps, norm: the threat the recipe trains against, in normalised observation units (recorded for vanilla).
        total_steps: the agent's environment-step budget (rounded up to whole SB3 rollouts, as SB3 does).
        seed: seeds SB3 (weights, action sampling), the environments and every recipe generator.
        ppo: PPO settings over :data:`DEFAULT_PPO` (plus ``n_envs``).
        checkpoint_every: environment steps between checkpoints (default: a tenth of the budget).
        resume: continue the killed run in ``out_dir`` (its settings must match; a finished run is returned as is).
        normalizer: a fixed :class:`ObsNormalizer` (or its dict); default: estimated from ``normalizer_steps``
            observations of a random policy.
        quiet: no progress lines.
    Returns:
        :class:`AgentRun` (run directory, SB3 model, PolicyAdapter, normaliser, metadata).
    Raises:
        ValueError: unknown recipe / option / environment, bad eps, norm, budget or settings, an ``out_dir``
            that already holds a run (without ``resume``), or a resume whose settings differ.
    """
    rec = make_recipe(recipe, **recipe_options)
    try:
        norm = Norm.parse(norm).value
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"unknown norm {norm!r}: use one of 'linf', 'l2', 'l1'") from None
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)) or not math.isfinite(eps) \
            or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0 in {EPS_UNIT}, got {eps!r}")
    eps = float(eps)
    if rec.needs_eps and eps == 0:
        raise ValueError(f"recipe {rec.name!r} trains against an attacker: eps must be > 0 ({EPS_UNIT})")
    for name, v, lo in (("total_steps", total_steps, 1), ("seed", seed, 0), ("normalizer_steps", normalizer_steps, 2)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    total_steps, seed = int(total_steps), int(seed)
    if checkpoint_every is None:
        checkpoint_every = max(1, total_steps // 10)
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, np.integer)) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an integer >= 1 (environment steps), got {checkpoint_every!r}")
    obs_space, _ = _check_env(env_id)
    settings = _ppo_settings(env_id, ppo)
    adv_settings = None
    if "adversary" in rec.roles:
        adv_settings = _ppo_settings(env_id, {**(ppo or {}), **(getattr(rec, "adv_ppo", None) or {})}, "adv_ppo")
    out = Path(out_dir)
    d = int(np.prod(obs_space.shape))

    meta: Optional[dict[str, Any]] = None
    if resume:
        meta = read_metadata(out)
    elif (out / METADATA).exists() or (out / CHECKPOINT).exists():
        raise ValueError(f"{out} already holds an agents run: resume it (resume=True) or choose another out_dir")

    if normalizer is not None and not isinstance(normalizer, ObsNormalizer):
        try:
            normalizer = ObsNormalizer.from_dict(normalizer)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"normalizer must be an ObsNormalizer or its dict (mean, scale): {e}") from None
    if meta is not None:
        saved = ObsNormalizer.from_dict(meta["normalizer"])
        if normalizer is not None and normalizer.to_dict() != saved.to_dict():
            raise ValueError(f"cannot resume {out} with another normaliser: the run's is fixed")
        normalizer, source = saved, meta["normalizer"].get("source", "saved")
    elif normalizer is not None:
        source = "given"
    else:
        normalizer = default_normalizer(env_id, seed, normalizer_steps)
        source = f"random-policy rollout of {normalizer_steps} steps (mean, std floored at 1e-3)"
    if normalizer.mean.numel() != d:
        raise ValueError(f"the normaliser has {normalizer.mean.numel()} dimensions, {env_id} observes {d}")

    run = _Run(env_id, rec, eps, norm, total_steps, seed, out, settings, adv_settings, normalizer, source,
               int(checkpoint_every), obs_space, quiet)
    if meta is not None:
        saved_cfg = {"env": meta.get("env"), "recipe": {k: meta["recipe"].get(k) for k in ("name", "params")},
                     "norm": meta["threat"].get("norm"), "eps": meta["threat"].get("eps"), "seed": meta.get("seed"),
                     "total_steps": meta.get("total_steps"), "ppo": meta.get("ppo"),
                     "adversary_ppo": meta.get("adversary_ppo")}
        new_cfg = run.config()
        if saved_cfg != new_cfg:
            diffs = [f"{k}: {saved_cfg.get(k)!r} -> {new_cfg.get(k)!r}" for k in new_cfg if saved_cfg.get(k) != new_cfg.get(k)]
            raise ValueError(f"cannot resume {out}: the settings differ from the saved run (" + "; ".join(diffs)
                             + "); resume with the run's own settings or start a new out_dir")
        if meta.get("status") == "finished":
            model, adapter, normalizer, meta = load_agent(out)
            return AgentRun(out, model, adapter, normalizer, meta)
    out.mkdir(parents=True, exist_ok=True)
    if meta is not None and (out / CHECKPOINT).exists():
        state = ckpt.load_state(out / CHECKPOINT)
        if state.get("version") != STATE_VERSION:
            raise ckpt.CheckpointError(f"{out / CHECKPOINT} has state version {state.get('version')}, this armor "
                                       f"writes {STATE_VERSION}")
        run.restore(state)
    else:  # a fresh run, or one killed before its first checkpoint: start from the beginning
        run.build()
    run.write_metadata("running")
    run.train()
    run.finish()
    model, adapter, normalizer, meta = load_agent(out)
    return AgentRun(out, model, adapter, normalizer, meta)


def load_agent(run_dir: PathLike) -> tuple[Any, PolicyAdapter, ObsNormalizer, dict[str, Any]]:
    """``(SB3 PPO model, PolicyAdapter, ObsNormalizer, metadata)`` of a finished agents run directory.

    The adapter takes *raw* observations; attack in z-space with ``adapter_in_z(adapter, normalizer)`` and
    ``observation_threat(normalizer, meta["threat"]["norm"], eps)``."""
    from stable_baselines3 import PPO

    run_dir = Path(run_dir)
    meta = read_metadata(run_dir)
    if meta.get("status") != "finished":
        raise ValueError(f"{run_dir} is not finished (status {meta.get('status')!r}): resume it with "
                         f"train_agent(..., resume=True) first")
    path = run_dir / meta.get("files", {}).get("model", MODEL)
    if not path.exists():
        raise ValueError(f"{run_dir} has no agent model ({path.name} is missing)")
    model = PPO.load(path, device="cpu")
    return model, PolicyAdapter.from_sb3(model), ObsNormalizer.from_dict(meta["normalizer"]), meta


def load_adversary(run_dir: PathLike) -> Any:
    """The learned adversary of a finished ``atla`` run (SB3 PPO: observation z, action in [-1, 1]^d; the
    perturbation is ``project(z + eps * action)``, see :func:`armor.domains.agents.recipes.action_perturbation`)."""
    from stable_baselines3 import PPO

    run_dir = Path(run_dir)
    meta = read_metadata(run_dir)
    name = meta.get("files", {}).get("adversary")
    if name is None:
        raise ValueError(f"{run_dir} is a {meta['recipe']['name']!r} run: only atla runs have a learned adversary")
    return PPO.load(run_dir / name, device="cpu")


__all__ = ["ADVERSARY", "AgentRun", "CHECKPOINT", "DEFAULT_PPO", "METADATA", "MODEL", "SAPPO", "default_normalizer",
           "estimate_normalizer",
           "load_adversary", "load_agent", "read_metadata", "train_agent"]
