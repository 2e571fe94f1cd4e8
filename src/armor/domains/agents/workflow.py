"""How `armor train --domain agents` and `armor evaluate RUN` work for agents (the domain's :class:`Workflow`).

An agents run directory is written by :func:`armor.domains.agents.train.train_agent` (metadata.json with
``"domain": "agents"``); its results.json entry reports returns, not accuracies:

    clean_return, robust_return          medians over the evaluation episodes (robust: per-episode worst case)
    clean / worst / per_attack           {median, iqr, mean, std, min, max, failure share} per attack
    failure                              the environment's failure rule and label (highway-env: "crash rate")
                                         and the share of failed episodes clean, per attack and in the worst case
    filmstrip                            which episode and attack the report's frames show (the frames are in
                                         artifacts.npz), or a note saying why there are none
    curve, curve_area                    median worst-case return vs eps (normalised units) and its area
    threat                               {norm, eps, eps_unit: "normalised observation units"}, raw_eps beside it
    n                                    episodes; cost: environment steps and wall time
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional

from ...plugins import Option, Workflow

EPS_UNIT = "normalised observation units"

# `armor train --domain agents` options of its own (recipe options reuse the classifier names where they mean
# the same: --steps, --step-size, --adv-ratio).
OPTIONS = {
    "env": Option(str, None, "agents: Gymnasium environment id, e.g. CartPole-v1, Pendulum-v1, LunarLander-v3."),
    "total_steps": Option(int, None, "agents: environment steps of the agent's training budget (default 50000)."),
    "kappa": Option(float, None, "agents sa-ppo: weight of the KL regulariser (default 0.1, measured: 1.0 hurt clean return)."),
    "ramp": Option(float, None, "agents sa-ppo: share of the budget over which eps ramps up from 0 (default 0.5)."),
    "ratio": Option(float, None, "agents attacked-obs: share of observations attacked during training (default 0.5)."),
    "train_attack": Option(str, None, "agents attacked-obs: the training attack, mad or critic (default mad)."),
    "rounds": Option(int, None, "agents atla: rounds of alternating agent / adversary training (default 4)."),
}
_RECIPE_KEYS = {"kappa": "kappa", "ramp": "ramp", "ratio": "ratio", "train_attack": "attack", "rounds": "rounds",
                "steps": "steps", "step_size": "step_size", "adv_ratio": "adv_ratio"}
DEFAULT_EPISODES = 10
LEARNED = ("rs", "optimal")  # attacks that learn a model of the agent first
DEFAULT_TOTAL_STEPS = 50_000


def train(options: dict[str, Any], out: Path, *, quiet: bool = True) -> Any:
    """`armor train --domain agents --env ENV --recipe RECIPE --eps EPS ...`."""
    from .recipes import recipe_options
    from .train import train_agent

    env = options.get("env")
    if not env:
        raise ValueError("pass --env: the Gymnasium environment id to train on (e.g. --env CartPole-v1)")
    recipe = options.get("recipe") or "vanilla"
    allowed = set(recipe_options(recipe))
    recipe_opts = {}
    for key, name in _RECIPE_KEYS.items():
        if options.get(key) is None:
            continue
        if name not in allowed:
            raise ValueError(f"--{key.replace('_', '-')} does not apply to agents recipe {recipe!r} (its options: "
                             f"{', '.join(sorted(allowed)) or 'none'})")
        recipe_opts[name] = options[key]
    eps = options.get("eps")
    return train_agent(env, recipe, eps=0.1 if eps is None else eps, norm=options.get("norm") or "linf",
                       total_steps=options.get("total_steps") or DEFAULT_TOTAL_STEPS, seed=options.get("seed") or 0,
                       out_dir=out, resume=bool(options.get("resume")), quiet=quiet, **recipe_opts)


def evaluate(run_dir: Path, options: dict[str, Any], *,
             progress: Optional[Callable[[str], None]] = None) -> tuple[dict, dict]:
    """`armor evaluate RUN` for an agents run: returns under each attack of the suite, the per-episode worst
    case, a return-vs-eps curve; options: eps, norm, n (episodes), seed, suite (attack names), eps_grid."""
    import time

    from .attacks import make_attack
    from .envs import obs_bounds, make_env
    from .evaluate import DEFAULT_SUITE, evaluate_agent, return_curve
    from .filmstrip import record_filmstrip
    from .threat import observation_threat, raw_eps
    from .train import load_agent

    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    model, adapter, normalizer, meta = load_agent(run_dir)
    env_id = meta["env"]
    recorded = meta.get("threat") or {}
    norm = options.get("norm") or recorded.get("norm", "linf")
    eps = options.get("eps")
    eps = float(recorded.get("eps", 0.1) if eps is None else eps)
    episodes = options.get("n") or DEFAULT_EPISODES
    seed = options.get("seed") or 0
    suite = options.get("suite")
    attacks = tuple(a.strip() for a in suite.split(",") if a.strip()) if isinstance(suite, str) else DEFAULT_SUITE
    env = make_env(env_id)
    try:
        low, high = obs_bounds(env)
    finally:
        env.close()
    threat = observation_threat(normalizer, norm, eps, low, high)
    say(f"episodes under {', '.join(attacks)} at eps {eps:g}")
    suite = {a: make_attack(a) for a in attacks}  # kept: the filmstrip replays an episode with the fitted ones
    ev = evaluate_agent(adapter, env_id, normalizer, threat, suite, episodes=episodes, seed=seed)
    summary = ev.summary()
    entry: dict[str, Any] = {
        "domain": "agents", "name": Path(run_dir).name, "env": env_id, "run_dir": str(run_dir),
        "recipe": (meta.get("recipe") or {}).get("name"), "recipe_params": (meta.get("recipe") or {}).get("params"),
        "threat": {"norm": norm, "eps": eps, "eps_unit": EPS_UNIT}, "raw_eps": raw_eps(normalizer, eps),
        "n": episodes, "suite": list(attacks), "seed": seed,
        "clean_return": summary["clean"]["median"], "robust_return": summary["worst"]["median"],
        "clean": summary["clean"], "worst": summary["worst"], "per_attack": summary["attacks"],
        "episodes": ev.to_dict(), "train_seconds": meta.get("train_seconds"), "env_steps": meta.get("env_steps"),
    }
    failure = failure_entry(ev, summary)
    if failure:
        entry["failure"] = failure
    artifacts: dict[str, Any] = {}
    if options.get("filmstrip", True) and attacks:
        # the strongest attack: lowest median return, then most failures, then suite order
        def strength(a: str) -> tuple:
            st = summary["attacks"][a]
            return st["median"], -st.get("failure_share", 0.0), attacks.index(a)

        strongest = min(attacks, key=strength)
        say(f"filmstrip of episode {seed}, clean and under {strongest}")
        artifacts, film = record_filmstrip(adapter, env_id, normalizer, threat,
                                           {"clean": None, strongest: suite[strongest]}, seed=seed,
                                           failure_key=ev.failure_key,
                                           lengths={"clean": ev.lengths["clean"][0],
                                                    strongest: ev.lengths[strongest][0]}, batch=episodes)
        entry["filmstrip"] = {"attack": strongest, **film}
    grid = options.get("eps_grid") or ([0.0, eps / 2, eps, 2 * eps] if eps > 0 else None)
    if grid and options.get("curve", True):
        say("return vs eps")
        # The curve uses the attacks that need no fitting (learned ones refit at every eps: minutes each).
        cheap = tuple(a for a in attacks if a not in LEARNED) or ("mad",)
        curve = return_curve(adapter, env_id, normalizer, threat, sorted(set(grid)), attacks=cheap,
                             episodes=max(3, episodes // 2), seed=seed)
        entry["curve_suite"] = list(cheap)
        entry["curve"] = [{"eps": e, "robust_return": w} for e, w in zip(curve["eps"], curve["curves"]["worst"])]
        entry["curve_area"] = curve["area"]["worst"]
    entry["eval_seconds"] = {"total": round(time.perf_counter() - t0, 3)}
    return entry, artifacts


def failure_entry(ev: Any, summary: dict) -> Optional[dict]:
    """The share of failed episodes (the environment's :class:`~.evaluate.Task`: a crash in highway-env, a
    return below 195 on CartPole) clean, per attack and in the worst case, or None if the task defines none."""
    from .evaluate import Task

    if "failure_share" not in summary["clean"]:
        return None
    return {"label": ev.failure_label, "rule": Task(ev.threshold, ev.failure_key).rule(),
            "clean": summary["clean"]["failure_share"],
            "worst": (summary.get("worst") or {}).get("failure_share"),
            "per_attack": {a: st.get("failure_share") for a, st in summary["attacks"].items()}}


def validate(name: str, entry: dict, where: str) -> None:
    """A damaged agents entry is a ValueError naming the key."""
    at = f"{where}: model {name!r}"

    def number(key: str) -> None:
        v = entry.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ValueError(f"{at}: {key} must be a finite number, got {v!r}; re-run `armor evaluate`")

    number("clean_return")
    number("robust_return")
    if not isinstance(entry.get("n"), int) or isinstance(entry.get("n"), bool) or entry["n"] < 1:
        raise ValueError(f"{at}: n (episodes) must be a positive integer, got {entry.get('n')!r}")
    if not isinstance(entry.get("per_attack"), dict):
        raise ValueError(f"{at}: per_attack must map attack names to their return statistics")
    spec = entry.get("threat")
    if not isinstance(spec, dict) or spec.get("norm") not in ("linf", "l2", "l1") or not isinstance(
            spec.get("eps"), (int, float)):
        raise ValueError(f"{at}: threat must be an object with norm and eps, got {spec!r:.80}")


def summary(models: dict) -> tuple[str, list[str], list[list[str]]]:
    """The table `armor evaluate` and `armor demo` print: median returns per agent, clean, worst case and per
    attack, and the failure share (crash rate) clean and in the worst case."""
    from ...app.results import threat_label

    first = next(iter(models.values()))
    attacks: list[str] = []
    for m in models.values():
        attacks += [a for a in m.get("per_attack") or {} if a not in attacks]
    title = (f"agents on {first.get('env')}, {threat_label(first)}, {first.get('n')} episodes "
             f"(median return [interquartile range])")

    def cell(stats: Optional[dict], iqr: bool = True) -> str:
        if not stats or stats.get("median") is None:
            return "-"
        q = stats.get("iqr") if iqr else None
        return f"{stats['median']:.1f}" + (f" [{q[0]:.0f}, {q[1]:.0f}]" if q else "")

    # A terminal is narrow: the interquartile range for clean and worst case, medians per attack; the report
    # and results.json keep every figure (per-attack ranges and failure shares included).
    rows = [[name, cell(m.get("clean")), cell(m.get("worst")),
             *[cell((m.get("per_attack") or {}).get(a), iqr=False) for a in attacks]] for name, m in models.items()]
    head = ["agent", "clean", "worst case", *attacks]
    label = next((m["failure"]["label"] for m in models.values() if m.get("failure")), None)
    if label:  # the failure share (highway-env: crash rate) clean, in the worst case and per attack
        def share(v: Any) -> str:
            return "-" if v is None else f"{100 * v:.0f}%"

        head += [f"{label}: clean", "worst case"]
        for row, m in zip(rows, models.values()):
            f = m.get("failure") or {}
            row += [share(f.get("clean")), share(f.get("worst"))]
    head += ["env steps", "train s"]
    for row, m in zip(rows, models.values()):
        row += [str(m.get("env_steps") or "-"), f"{m.get('train_seconds') or 0:.1f}"]
    return title, head, rows


WORKFLOW = Workflow(train=train, evaluate=evaluate, options=OPTIONS, validate=validate,
                    gates={"robust-return": "robust_return", "clean-return": "clean_return"}, summary=summary)
