"""Evaluating an agent under observation attacks: per-episode returns, the per-episode worst case, summaries.

:func:`evaluate_agent` plays ``episodes`` seeded episodes (seeds ``seed, seed+1, ...``) clean and under each attack
of the suite; every attack sees the same episode seeds, so the worst case of episode ``i`` is the minimum over the
suite of the returns of episode ``i``. The episodes of one attack run in lock step (:func:`~.attacks.run_episodes`:
one attack call and one policy call per step for all of them), which made the CartPole demo's evaluation several
times cheaper than playing them one after the other. Summaries give the median and interquartile range (as SA-PPO
reports), the mean, and the share of *failed* episodes, as each environment's :class:`Task` defines a failure (a
return below a threshold, as CartPole's 195, or a flag in the step info, as highway-env's ``crashed``: the crash
rate). :func:`return_curve` repeats it over an eps grid (with the normalised area under each curve), and
:func:`aggregate_seeds` combines per-training-seed summaries (median of medians, IQR).
Everything returned is JSON-ready (``to_dict``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from ...threat import ThreatModel
from .attacks import AGENT_ATTACKS, make_attack, needs_fit, run_episode, run_episodes
from .envs import EnvLike, env_id_of, make_env
from .policy import PolicyAdapter
from .threat import ObsNormalizer, raw_eps

@dataclass(frozen=True)
class Task:
    """What a failed episode is in an environment, and what the share of failed episodes is called.

    An episode fails when its return is below ``threshold`` or when ``info[failure_key]`` is true at any step
    (either rule may be absent). ``label`` names the share in tables and reports ("crash rate")."""

    threshold: Optional[float] = None
    failure_key: Optional[str] = None
    label: str = "failed episodes"

    def rule(self) -> str:
        """The failure rule in words (for reports)."""
        parts = ([f"return < {self.threshold:g}"] if self.threshold is not None else []) + \
            ([f"info[{self.failure_key!r}] at any step"] if self.failure_key is not None else [])
        return " or ".join(parts) or "none"


_CRASH = Task(failure_key="crashed", label="crash rate")
#: Failure rules of known environments (CartPole: below the classic "solved" level 195; highway-env: a crash).
TASKS: dict[str, Task] = {
    "CartPole-v0": Task(threshold=195.0, label="episodes < 195"),
    "CartPole-v1": Task(threshold=195.0, label="episodes < 195"),
    **{k: _CRASH for k in ("highway-v0", "highway-fast-v0", "merge-v0", "roundabout-v0", "intersection-v0",
                                  "armor/highway-drive-v0")},
}

DEFAULT_SUITE = ("random", "critic", "mad")

AttackSet = Union[Sequence[Any], Mapping[str, Any]]


def _stats(values: Sequence[float], threshold: Optional[float] = None,
           failed: Optional[Sequence[bool]] = None) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"episodes": 0}
    q25, q50, q75 = (float(x) for x in np.percentile(v, [25, 50, 75]))
    out: dict[str, Any] = {"episodes": int(v.size), "median": q50, "iqr": [q25, q75], "mean": float(v.mean()),
                           "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "min": float(v.min()),
                           "max": float(v.max())}
    bad = np.zeros(v.size, dtype=bool)
    if threshold is not None:
        bad |= v < threshold
    if failed is not None and len(failed) == v.size:
        bad |= np.asarray(failed, dtype=bool)
    if threshold is not None or failed is not None:
        out["failure_share"] = float(bad.mean())
    return out


def _name_of(attack: Any) -> str:
    return getattr(attack, "name", None) or getattr(getattr(attack, "func", attack), "__name__", type(attack).__name__)


def _resolve(attacks: AttackSet) -> list[tuple[str, Any]]:
    """``[(name, attack)]`` from names, ``(name, attack)`` pairs, callables or a ``{name: attack}`` mapping."""
    items = list(attacks.items()) if isinstance(attacks, Mapping) else list(attacks)
    out: list[tuple[str, Any]] = []
    for item in items:
        if isinstance(item, str):
            out.append((item, make_attack(item)))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            name, a = item
            out.append((name, make_attack(a) if isinstance(a, str) else a))
        elif callable(item):
            out.append((_name_of(item), item))
        else:
            raise ValueError(f"an attack must be a name ({', '.join(AGENT_ATTACKS)}), a callable or a "
                             f"(name, callable) pair, got {item!r}")
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"attack names must be unique, got {names}")
    if "clean" in names or "worst" in names:
        raise ValueError("'clean' and 'worst' are reserved names")
    return out


@dataclass
class AgentEvaluation:
    """Per-episode results of one agent at one threat. ``returns[name][i]`` is episode ``i`` (seed
    ``seeds[i]``) under attack ``name``; ``worst[i]`` is the minimum over the suite for episode ``i``."""

    env_id: str
    seeds: list[int]
    threat: dict
    raw_eps: list[float]
    clean: list[float]
    returns: dict[str, list[float]]
    lengths: dict[str, list[int]]
    failed: dict[str, list[bool]]
    in_budget: dict[str, bool]
    seconds: dict[str, float]
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    fit: dict[str, dict] = field(default_factory=dict)
    threshold: Optional[float] = None
    failure_key: Optional[str] = None
    attack_share: float = 1.0
    failure_label: str = "failed episodes"

    @property
    def worst(self) -> list[float]:
        if not self.returns:
            return []
        return [min(r[i] for r in self.returns.values()) for i in range(len(self.seeds))]

    @property
    def worst_attack(self) -> list[str]:
        """Per episode, the attack that gave the worst return (the first in suite order on ties)."""
        names = list(self.returns)
        if not names:
            return []
        return [min(names, key=lambda n: (self.returns[n][i], names.index(n))) for i in range(len(self.seeds))]

    def summary(self) -> dict[str, Any]:
        """``{"clean": stats, "attacks": {name: stats}, "worst": stats}``; stats are median, IQR, mean, std,
        min, max and (with a threshold or failure flag) the share of failed episodes."""
        fk = self.failure_key is not None  # failure flags from the step info count (else only the threshold)
        out: dict[str, Any] = {"clean": _stats(self.clean, self.threshold, self.failed.get("clean") if fk else None)}
        out["attacks"] = {n: _stats(r, self.threshold, self.failed.get(n) if fk else None)
                          for n, r in self.returns.items()}
        if self.returns:
            worst_failed = ([any(self.failed[n][i] for n in self.returns) for i in range(len(self.seeds))]
                            if fk else None)  # failed under some attack of the suite
            out["worst"] = _stats(self.worst, self.threshold, worst_failed)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"env_id": self.env_id, "seeds": list(self.seeds), "threat": self.threat, "raw_eps": self.raw_eps,
                "threshold": self.threshold, "failure_key": self.failure_key, "failure_label": self.failure_label,
                "attack_share": self.attack_share,
                "clean": list(self.clean), "returns": {k: list(v) for k, v in self.returns.items()},
                "worst": self.worst, "worst_attack": self.worst_attack,
                "lengths": {k: list(v) for k, v in self.lengths.items()},
                "failed": {k: list(v) for k, v in self.failed.items()}, "in_budget": dict(self.in_budget),
                "seconds": dict(self.seconds),
                "cpu_seconds": dict(self.cpu_seconds), "fit": _jsonable(self.fit), "summary": self.summary()}


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return repr(x)


def evaluate_agent(adapter: PolicyAdapter, env_id: EnvLike, normalizer: ObsNormalizer, threat: ThreatModel,
                   attacks: AttackSet = DEFAULT_SUITE, episodes: int = 10, seed: int = 0, *,
                   attack_share: float = 1.0, threshold: Optional[float] = None, failure_key: Optional[str] = None,
                   max_steps: Optional[int] = None, fit_seed: Optional[int] = None, clean: bool = True,
                   strict: bool = True, env_kwargs: Optional[dict] = None) -> AgentEvaluation:
    """Returns of ``episodes`` seeded episodes, clean and under each attack.

    Arguments:
        attacks: names from :data:`~armor.domains.agents.attacks.AGENT_ATTACKS`, attack callables, ``(name,
            attack)`` pairs or a ``{name: attack}`` mapping. Learned attacks (``rs``, ``optimal``) that are not
            fitted yet are fitted here, on seeds ``fit_seed`` (default ``seed + 100_000``) apart from the
            evaluation's; their fitting time is part of the attack's wall time and of ``fit``.
        threshold: a return below it marks an episode as failed.
        failure_key: an ``info`` key whose truth in any step marks the episode failed (highway-env: ``crashed``).
            When neither is given, both come from the environment's :class:`Task` in :data:`TASKS`.
        strict: raise ``ValueError`` if an attack put any observation outside the budget (else it is reported
            in ``in_budget``).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    env_kwargs = dict(env_kwargs or {})
    env = make_env(env_id, **env_kwargs)
    name = env_id if isinstance(env_id, str) else env_id_of(env)
    task = TASKS.get(name, Task())
    if threshold is None and failure_key is None:
        threshold, failure_key, failure_label = task.threshold, task.failure_key, task.label
    else:
        failure_label = Task(threshold, failure_key).label if (threshold, failure_key) != (task.threshold, task.failure_key) \
            else task.label
    seeds = [int(seed) + i for i in range(episodes)]
    fit_seed = int(seed) + 100_000 if fit_seed is None else int(fit_seed)
    suite = _resolve(attacks)
    returns: dict[str, list[float]] = {}
    lengths: dict[str, list[int]] = {}
    failed: dict[str, list[bool]] = {}
    in_budget: dict[str, bool] = {}
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}
    fit: dict[str, dict] = {}
    clean_returns: list[float] = []
    import gymnasium as gym

    batch_envs = [] if isinstance(env_id, gym.Env) else [env] + [make_env(env_id, **env_kwargs)
                                                                 for _ in range(episodes - 1)]
    try:
        runs: list[tuple[str, Any]] = ([("clean", None)] if clean else []) + suite
        for label, attack in runs:
            t0, c0 = time.perf_counter(), time.process_time()
            if attack is not None and needs_fit(attack) and not getattr(attack, "is_fitted", False):
                attack.fit(adapter, env_id, normalizer, threat, seed=fit_seed, **env_kwargs)
            if attack is not None and getattr(attack, "info", None):
                fit[label] = dict(attack.info)
            if batch_envs:  # all episodes in lock step, one attack and policy call per step for all
                results = run_episodes(batch_envs, adapter, attack, normalizer, threat, seeds, attack_share,
                                       max_steps, failure_key)
            else:  # a ready environment instance cannot be copied: its episodes one after the other
                results = [run_episode(env, adapter, attack, normalizer, threat, seed=s, attack_share=attack_share,
                                       max_steps=max_steps, failure_key=failure_key) for s in seeds]
            seconds[label] = time.perf_counter() - t0
            cpu_seconds[label] = time.process_time() - c0
            rets = [r.ret for r in results]
            lengths[label] = [r.length for r in results]
            failed[label] = [r.failed for r in results]
            if label == "clean":
                clean_returns = rets
                continue
            returns[label] = rets
            in_budget[label] = all(r.in_budget for r in results)
            if strict and not in_budget[label]:
                worst = max(r.max_perturbation for r in results)
                raise ValueError(f"attack {label!r} showed the agent observations outside the budget (largest "
                                 f"{threat.norm.value} perturbation {worst:.6g} in normalised units, eps "
                                 f"{threat.eps_scalar:g})")
    finally:
        for e in batch_envs[1:]:
            e.close()
        env.close()
    return AgentEvaluation(name, seeds, threat.to_dict(), raw_eps(normalizer, threat.eps_scalar), clean_returns,
                           returns, lengths, failed, in_budget, seconds, cpu_seconds, fit, threshold, failure_key,
                           attack_share, failure_label)


def curve_area(eps: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid area under ``values`` over ``eps``, divided by the eps range: the mean height of the curve
    (a single point: its value)."""
    e, v = np.asarray(eps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if e.size != v.size or e.size == 0:
        raise ValueError("eps and values must be non-empty and of one length")
    if e.size == 1:
        return float(v[0])
    if np.any(np.diff(e) <= 0):
        raise ValueError("eps must be strictly increasing")
    return float(np.sum((v[1:] + v[:-1]) / 2 * np.diff(e)) / (e[-1] - e[0]))


def _fresh(attack: Any) -> Any:
    """An unfitted copy of a learned attack (so that each eps trains its own), else the attack itself."""
    if needs_fit(attack) and dataclasses.is_dataclass(attack):
        return attack.fresh()
    return attack


def return_curve(adapter: PolicyAdapter, env_id: EnvLike, normalizer: ObsNormalizer, threat: ThreatModel,
                 eps_grid: Iterable[float], attacks: AttackSet = DEFAULT_SUITE, episodes: int = 10, seed: int = 0,
                 stat: str = "median", **kwargs: Any) -> dict[str, Any]:
    """Return vs eps, per attack and for the per-episode worst case, with each curve's normalised area.

    ``threat.with_eps(e)`` for each ``e`` of ``eps_grid`` (normalised units, increasing); the clean episodes are
    played once. ``stat`` is the summary plotted ("median" or "mean"); the IQR of each point is beside it.
    Learned attacks are fitted afresh at each eps. ``kwargs`` go to :func:`evaluate_agent`.
    """
    grid = [float(e) for e in eps_grid]
    if not grid:
        raise ValueError("eps_grid is empty")
    if any(b <= a for a, b in zip(grid, grid[1:])):
        raise ValueError(f"eps_grid must be strictly increasing, got {grid}")
    if stat not in ("median", "mean"):
        raise ValueError(f"stat must be 'median' or 'mean', got {stat!r}")
    suite = _resolve(attacks)
    names = [n for n, _ in suite]
    curves: dict[str, list[float]] = {n: [] for n in names + ["worst"]}
    iqrs: dict[str, list[list[float]]] = {n: [] for n in names + ["worst"]}
    evaluations = []
    clean_stats = None
    for k, e in enumerate(grid):
        ev = evaluate_agent(adapter, env_id, normalizer, threat.with_eps(e), [(n, _fresh(a)) for n, a in suite],
                            episodes, seed, clean=(k == 0), **kwargs)
        s = ev.summary()
        if k == 0:
            clean_stats = s["clean"]
        for n in names:
            curves[n].append(s["attacks"][n][stat])
            iqrs[n].append(s["attacks"][n]["iqr"])
        curves["worst"].append(s["worst"][stat])
        iqrs["worst"].append(s["worst"]["iqr"])
        evaluations.append(ev.to_dict())
    return {"eps": grid, "raw_eps": [raw_eps(normalizer, e) for e in grid], "stat": stat, "clean": clean_stats,
            "curves": curves, "iqr": iqrs, "area": {n: curve_area(grid, v) for n, v in curves.items()},
            "evaluations": evaluations}


def aggregate_seeds(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Combine the :meth:`AgentEvaluation.summary` of M agents (training seeds) of one method: for clean, each
    attack and the worst case, the median of the per-seed medians and their IQR (SA-PPO's report)."""
    if not summaries:
        raise ValueError("no summaries to aggregate")

    def combine(medians: list[float]) -> dict[str, Any]:
        m = np.asarray(medians, dtype=np.float64)
        q25, q50, q75 = (float(x) for x in np.percentile(m, [25, 50, 75]))
        return {"seeds": int(m.size), "median_of_medians": q50, "iqr": [q25, q75], "mean_of_medians": float(m.mean()),
                "per_seed_medians": [float(x) for x in m]}

    out: dict[str, Any] = {"clean": combine([s["clean"]["median"] for s in summaries])}
    names = list(summaries[0].get("attacks", {}))
    for s in summaries[1:]:
        if list(s.get("attacks", {})) != names:
            raise ValueError(f"the summaries were made with different attack suites: {names} vs {list(s['attacks'])}")
    out["attacks"] = {n: combine([s["attacks"][n]["median"] for s in summaries]) for n in names}
    if all("worst" in s for s in summaries):
        out["worst"] = combine([s["worst"]["median"] for s in summaries])
    return out


__all__ = ["AgentEvaluation", "DEFAULT_SUITE", "TASKS", "Task", "aggregate_seeds", "curve_area", "evaluate_agent",
           "return_curve"]
