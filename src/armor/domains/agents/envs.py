"""Environments for the agents domain: made through gymnasium, checked for what armor can perturb.

:func:`make_env` turns an id (or an environment factory, or a ready environment) into a gymnasium environment
with a Box observation space, and every failure is one ``ValueError`` that says what to change: an unknown id
(with the closest registered ids), an observation space armor cannot perturb (Dict, Discrete, Tuple, ...).
:func:`collect_observations` runs the clean agent (seeded) to gather the observations that
:meth:`ObsNormalizer.from_observations` needs, and :func:`fit_normalizer` does both.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from .policy import PolicyAdapter
from .threat import ObsNormalizer, observation_threat

EnvLike = Union[str, Callable[[], Any], Any]

#: Environment ids that live in another package, which registers them with gymnasium when imported:
#: ``(id prefix, module to import, pip install command)``.
ENV_PACKAGES: tuple[tuple[str, str, str], ...] = (
    ("highway-", "highway_env", "pip install highway-env  (or: pip install 'armor[driving]')"),
    ("merge-", "highway_env", "pip install highway-env  (or: pip install 'armor[driving]')"),
    ("roundabout-", "highway_env", "pip install highway-env  (or: pip install 'armor[driving]')"),
    ("intersection-", "highway_env", "pip install highway-env  (or: pip install 'armor[driving]')"),
    ("armor/highway-", "highway_env", "pip install highway-env  (or: pip install 'armor[driving]')"),
)

#: Environments armor registers with gymnasium itself: highway-env tasks with another reward or configuration, as
#: ``id -> (entry point, kwargs)``. ``armor/highway-drive-v0`` is ``highway-fast-v0`` with a reward under which
#: driving fast pays 1 a step, braking 0.2, and a crash costs 3 and ends the episode, on a road with 10 other vehicles
#: instead of 20 (:mod:`armor.domains.agents.driving`: the reward, and the arithmetic over the horizon that orders
#: fast > slow > crashing). The entry point is imported only once highway-env is known to be installed.
ARMOR_ENVS: dict[str, tuple[str, dict[str, Any]]] = {
    "armor/highway-drive-v0": ("armor.domains.agents.driving:DrivingEnv", {}),
}


def _gym():
    try:
        import gymnasium
    except ImportError as e:  # pragma: no cover - the domain's dependency
        raise ImportError("the agents domain needs gymnasium: pip install gymnasium") from e
    return gymnasium


def ensure_registered(env_id: str) -> None:
    """Import the package that registers ``env_id`` (see :data:`ENV_PACKAGES`) if gymnasium does not know it yet;
    a ``ValueError`` naming the install command when that package is missing (the CLI prints it as an error)."""
    gym = _gym()
    if env_id in gym.envs.registry:
        return
    for prefix, module, install in ENV_PACKAGES:
        if env_id.startswith(prefix):
            try:
                __import__(module)
            except ImportError as e:
                raise ValueError(f"environment {env_id!r} comes with the {module} package, which is not installed: "
                                 f"{install}") from e
            if env_id in ARMOR_ENVS and env_id not in gym.envs.registry:
                entry_point, kwargs = ARMOR_ENVS[env_id]
                gym.register(id=env_id, entry_point=entry_point, kwargs=kwargs)
            return


def check_observation_space(space: Any, what: str = "the environment") -> None:
    """``ValueError`` unless ``space`` is a ``gymnasium.spaces.Box`` of numbers armor can perturb. A Box of any
    shape is fine (highway-env's kinematics observation is vehicles x features): attacks, normalisers and
    budgets see it flattened, row-major, and the agent gets it back in its own shape."""
    spaces = _gym().spaces
    if not isinstance(space, spaces.Box):
        kind = type(space).__name__
        raise ValueError(f"{what} has a {kind} observation space ({space}); armor perturbs only Box "
                         f"(continuous vector) observations: flatten it with gymnasium.wrappers.FlattenObservation "
                         f"(Dict/Tuple of Boxes) or encode it as a Box yourself")
    if not np.issubdtype(space.dtype, np.floating) and not np.issubdtype(space.dtype, np.integer):
        raise ValueError(f"{what} has a Box observation space of dtype {space.dtype}; armor needs numbers")


def make_env(env_id: EnvLike, seed: Optional[int] = None, **kwargs: Any):
    """A gymnasium environment with a Box observation space.

    Arguments:
        env_id: a registered id (``"CartPole-v1"``), a zero-argument factory returning an environment, or an
            environment (checked and returned as is).
        seed: seeds the environment's first reset and its action/observation spaces (episodes are seeded
            again by :func:`armor.domains.agents.attacks.run_episode`).
        kwargs: passed to ``gymnasium.make``.
    """
    gym = _gym()
    if isinstance(env_id, str):
        ensure_registered(env_id)
        registry = gym.envs.registry
        if env_id not in registry:
            close = difflib.get_close_matches(env_id, list(registry.keys()), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else \
                "; list them with gymnasium.pprint_registry() (third-party ids need their package imported)"
            raise ValueError(f"unknown environment id {env_id!r}{hint}")
        env = gym.make(env_id, **kwargs)
        name = repr(env_id)
    elif isinstance(env_id, gym.Env):
        env, name = env_id, type(env_id).__name__
    elif callable(env_id):
        env = env_id(**kwargs)
        if not isinstance(env, gym.Env):
            raise ValueError(f"the environment factory returned {type(env).__name__}, not a gymnasium.Env")
        name = getattr(env.spec, "id", None) or type(env.unwrapped).__name__
    else:
        raise ValueError(f"env_id must be a gymnasium id, an environment or a factory, got {type(env_id).__name__}")
    try:
        check_observation_space(env.observation_space, f"environment {name}")
    except ValueError:
        env.close()
        raise
    if seed is not None:
        env.reset(seed=int(seed))
        env.action_space.seed(int(seed))
        env.observation_space.seed(int(seed))
    return env


def env_id_of(env: Any) -> str:
    """The registered id of ``env`` (or its class name)."""
    spec = getattr(env, "spec", None)
    return getattr(spec, "id", None) or type(getattr(env, "unwrapped", env)).__name__


def obs_bounds(env: Any) -> tuple[np.ndarray, np.ndarray]:
    """The raw ``(low, high)`` of the environment's Box observation space, flattened (infinite sides kept)."""
    space = env.observation_space
    check_observation_space(space)
    return (np.asarray(space.low, dtype=np.float64).reshape(-1), np.asarray(space.high, dtype=np.float64).reshape(-1))


def check_agent_env(adapter: PolicyAdapter, env: Any) -> None:
    """``ValueError`` when the agent cannot read this environment's observations or act in it."""
    gym = _gym()
    low, _ = obs_bounds(env)
    obs = torch.zeros(1, low.size)
    try:
        with torch.no_grad():
            adapter.distribution(obs)
    except Exception as e:  # noqa: BLE001 - shape mismatches surface as many error types
        raise ValueError(f"the agent cannot read observations of {env_id_of(env)} (shape {low.size}): {e}") from e
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    if discrete != adapter.discrete:
        raise ValueError(f"the agent's actions are {'discrete' if adapter.discrete else 'continuous'} but "
                         f"{env_id_of(env)} has a {type(env.action_space).__name__} action space")


def to_action(adapter: PolicyAdapter, env: Any, obs: torch.Tensor, deterministic: bool = True) -> Any:
    """The action the agent takes in ``env`` on one observation (a batch of 1): an int for discrete action
    spaces, a float32 array clipped to the action space otherwise (as SB3's ``predict`` does)."""
    return to_actions(adapter, env, obs, deterministic)[0]


def to_actions(adapter: PolicyAdapter, env: Any, obs: torch.Tensor, deterministic: bool = True) -> list:
    """The actions the agent takes on a batch of observations (one policy call), each as :func:`to_action`
    returns it; ``env`` gives the action space (the same for every row)."""
    acts = adapter.act(obs, deterministic=deterministic)
    if adapter.discrete:
        return [int(a) for a in acts]
    space = env.action_space
    a = acts.detach().cpu().numpy().astype(space.dtype)
    return [np.clip(row.reshape(space.shape), space.low, space.high) for row in a]


def collect_observations(env_id: EnvLike, adapter: PolicyAdapter, episodes: int = 5, seed: int = 0,
                         max_steps: int = 5000, deterministic: bool = True, **env_kwargs: Any) -> np.ndarray:
    """Observations the clean agent visits in ``episodes`` episodes (seeds ``seed``, ``seed+1``, ...), at most
    ``max_steps`` in all: an ``(n, d)`` float32 array for :meth:`ObsNormalizer.from_observations`."""
    env = make_env(env_id, **env_kwargs)
    check_agent_env(adapter, env)
    out: list[np.ndarray] = []
    try:
        with adapter.frozen():
            for i in range(episodes):
                obs, _ = env.reset(seed=seed + i)
                done = False
                while not done and len(out) < max_steps:
                    o = np.asarray(obs, dtype=np.float32).reshape(-1)
                    out.append(o)
                    action = to_action(adapter, env, torch.as_tensor(o)[None], deterministic)
                    obs, _, term, trunc, _ = env.step(action)
                    done = term or trunc
                if len(out) >= max_steps:
                    break
    finally:
        env.close()
    return np.stack(out)


def fit_normalizer(env_id: EnvLike, adapter: PolicyAdapter, episodes: int = 5, seed: int = 0,
                   max_steps: int = 5000, floor: float = 1e-3, **env_kwargs: Any) -> ObsNormalizer:
    """:class:`ObsNormalizer` from the observations of the clean agent (see :func:`collect_observations`)."""
    return ObsNormalizer.from_observations(collect_observations(env_id, adapter, episodes, seed, max_steps,
                                                                **env_kwargs), floor=floor)


def env_threat(env_id: EnvLike, normalizer: ObsNormalizer, norm: str, eps: float, **env_kwargs: Any):
    """:func:`observation_threat` with the environment's own observation bounds."""
    env = make_env(env_id, **env_kwargs)
    try:
        low, high = obs_bounds(env)
    finally:
        env.close()
    if low.size != normalizer.mean.numel():
        raise ValueError(f"the normaliser has {normalizer.mean.numel()} dimensions but {env_id_of(env)} "
                         f"observes {low.size}")
    return observation_threat(normalizer, norm, eps, low, high)


def load_sb3(path: Any, algo: Optional[str] = None) -> Any:
    """Load a stable-baselines3 zip on CPU; ``algo`` ("PPO", "A2C", ...) or tried in turn (PPO, A2C)."""
    import stable_baselines3 as sb3

    names = [algo] if algo else ["PPO", "A2C"]
    errors = []
    for name in names:
        cls = getattr(sb3, str(name).upper(), None)
        if cls is None:
            raise ValueError(f"unknown stable-baselines3 algorithm {name!r}")
        try:
            return cls.load(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - SB3 raises several types for a mismatched class
            errors.append(f"{name}: {e}")
    raise ValueError(f"could not load {path} as {' or '.join(names)}: " + "; ".join(errors))


__all__ = ["ARMOR_ENVS", "ENV_PACKAGES", "check_agent_env", "check_observation_space", "ensure_registered", "collect_observations", "env_id_of", "env_threat",
           "fit_normalizer", "load_sb3", "make_env", "obs_bounds", "to_action", "to_actions"]
