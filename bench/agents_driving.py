"""Driving agents on highway-env: does PPO drive (speed, crash rate), and what do observation attacks do to it?

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/agents_driving.py --env armor/highway-drive-v0 \
        --steps 20480 --recipes vanilla,sa-ppo --seeds 0,1 --out /tmp/agents/drive

For each seed and recipe: ``train_agent`` (resumed when OUT/ENV-RECIPE-sSEED already holds the run, so a killed
bench continues), then ``evaluate_agent`` clean and under the suite (10 seeded episodes by default) and a clean
replay of the same episodes that records the ego vehicle's speed (``info["speed"]``, m/s), its actions and its
lane changes. Prints one table row per agent (and a markdown row for bench/RESULTS.md) and writes
OUT/results.json. One torch thread; ``uptime`` before and after every agent; process CPU time beside wall time.

``--suite optimal`` adds the learned adversary (ATLA's "optimal" attack, trained on the agent's negated return, so on
its crash penalty too): 2 learning rates x ``--adv-steps`` steps, the better one kept.

``armor/highway-drive-v0`` is highway-fast-v0 with a reward under which driving pays (see
:mod:`armor.domains.agents.driving`); ``--env highway-fast-v0`` measures the braking agent beside it.

Two more modes, for choosing the reward and PPO's settings:

* ``--scripted``: constant SLOWER / IDLE / FASTER and a scripted overtaking rule (FASTER while the lane ahead is
  free for 40 m, else the freer neighbouring lane, else SLOWER) on ``--episodes`` seeded episodes (seeds 1000,
  ...): crashes, crash steps, mean speed, and the mean return undiscounted and discounted at 0.8 / 0.9 / 0.95,
  for the reward weights ``--alive`` / ``--crash``.
* ``--probe``: plain SB3 PPO (the env id's ``train.DEFAULT_PPO`` settings, ``--gamma`` / ``--ent`` /
  ``--rollout N_ENVS,N_STEPS,BATCH`` over them) on the reward ``--alive`` / ``--crash`` and the observation ranges
  ``--obs-range X,VX`` (+-X m, +-VX m/s; default the environment's), and after every ``--chunk`` steps the
  deterministic agent on ``--episodes`` seeded episodes (seeds 1000, ...): mean return, crashes, mean speed,
  action shares.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import time
from pathlib import Path

import numpy as np
import torch


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


ACTIONS = ("LANE_LEFT", "IDLE", "LANE_RIGHT", "FASTER", "SLOWER")
ADV_CONFIGS = ({"learning_rate": 3e-4}, {"learning_rate": 1e-3})  # the learned adversary's search (--suite optimal)


def play(env, policy, seed: int) -> dict:
    """One episode of ``policy(obs) -> action`` from ``env.reset(seed=seed)``: each step's reward, ego speed (m/s)
    and action, the lane changes that happened (the target lane changed), and whether it crashed."""
    obs, _ = env.reset(seed=seed)
    ep = {"rewards": [], "speeds": [], "actions": [], "lane_changes": 0, "crashed": False}
    lane = env.unwrapped.vehicle.target_lane_index[2]
    while True:
        a = int(policy(obs))
        obs, r, term, trunc, info = env.step(a)
        ep["rewards"].append(r)
        ep["speeds"].append(float(info["speed"]))
        ep["actions"].append(a)
        ep["lane_changes"] += a in (0, 2) and lane != env.unwrapped.vehicle.target_lane_index[2]
        lane = env.unwrapped.vehicle.target_lane_index[2]
        if term or trunc:
            ep["crashed"] = bool(info.get("crashed"))
            return ep


def action_shares(episodes: list[dict]) -> np.ndarray:
    return np.bincount([a for ep in episodes for a in ep["actions"]], minlength=len(ACTIONS)) / sum(
        len(ep["actions"]) for ep in episodes)


def clean_driving(adapter, env_id: str, episodes: int, seed: int) -> dict:
    """Mean ego speed (m/s), action shares and crashes of the clean agent on episodes seed, seed+1, ..."""
    from armor.domains.agents.envs import make_env, to_action

    env = make_env(env_id)
    try:
        with adapter.frozen():
            eps = [play(env, lambda obs: to_action(adapter, env, torch.as_tensor(np.asarray(obs, np.float32)
                                                                                 .reshape(1, -1))), seed + i)
                   for i in range(episodes)]
    finally:
        env.close()
    return {"mean_speed": float(np.mean([v for ep in eps for v in ep["speeds"]])),
            "actions": {n: round(float(c), 3) for n, c in zip(ACTIONS, action_shares(eps))},
            "crashed": sum(ep["crashed"] for ep in eps), "episodes": episodes,
            "lane_changes_per_episode": sum(ep["lane_changes"] for ep in eps) / episodes}


def _drive_env(alive: float, crash: float):
    import gymnasium as gym

    from armor.domains.agents.envs import ensure_registered

    ensure_registered("armor/highway-drive-v0")
    return gym.make("armor/highway-drive-v0", config={"alive_reward": alive, "crash_reward": crash})


def overtaking_rule(env, free: float = 40.0) -> int:
    """FASTER while the own lane is free for ``free`` m ahead; else the neighbouring lane with the most room ahead
    (at least 10 m more than here, 10 m free behind, 0.7 x ``free`` ahead); else SLOWER."""
    u = env.unwrapped
    ego = u.vehicle

    def gaps(lane: int) -> tuple[float, float]:
        ahead = behind = float("inf")
        for v in u.road.vehicles:
            if v is not ego and v.lane_index[2] == lane:
                dx = float(v.position[0] - ego.position[0])
                ahead, behind = (min(ahead, dx), behind) if dx >= 0 else (ahead, min(behind, -dx))
        return ahead, behind

    lane = ego.lane_index[2]
    here = gaps(lane)[0]
    if here > free:
        return 3
    best, room = 4, here + 10
    for step, action in ((-1, 0), (1, 2)):
        if 0 <= lane + step < u.config["lanes_count"]:
            ahead, behind = gaps(lane + step)
            if ahead > room and behind > 10 and ahead > 0.7 * free:
                best, room = action, ahead
    return best


def scripted(args) -> None:
    env = _drive_env(args.alive, args.crash)
    policies = {"SLOWER": lambda obs: 4, "IDLE": lambda obs: 1, "FASTER": lambda obs: 3,
                "overtaking rule": lambda obs: overtaking_rule(env)}
    for name, policy in policies.items():
        eps = [play(env, policy, 1000 + i) for i in range(args.episodes)]
        rewards = [ep["rewards"] for ep in eps]
        crash_steps = [len(ep["rewards"]) for ep in eps if ep["crashed"]]
        speeds = [v for ep in eps for v in ep["speeds"]]
        disc = {g: np.mean([sum(g ** t * r for t, r in enumerate(rs)) for rs in rewards]) for g in (0.8, 0.9, 0.95)}
        print(f"{name}: return {np.mean([sum(rs) for rs in rewards]):.2f}, discounted "
              + ", ".join(f"{g}: {v:.2f}" for g, v in disc.items())
              + f"; crashes {len(crash_steps)}/{args.episodes} at steps {sorted(crash_steps)}, "
              f"mean speed {np.mean(speeds):.1f} m/s", flush=True)
    env.close()


def probe(args) -> None:
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from armor.domains.agents.envs import ensure_registered
    from armor.domains.agents.train import DEFAULT_PPO

    ensure_registered("armor/highway-drive-v0")
    probe_id = "ArmorDriveProbe-v0"
    config = {"alive_reward": args.alive, "crash_reward": args.crash}
    if args.obs_range:
        x, v = (float(t) for t in args.obs_range.split(","))
        config["observation"] = {"type": "Kinematics",
                                 "features_range": {"x": [-x, x], "y": [-12, 12], "vx": [-v, v], "vy": [-v, v]}}
    gym.register(id=probe_id, entry_point="armor.domains.agents.driving:DrivingEnv", kwargs={"config": config})
    settings = dict(DEFAULT_PPO["armor/highway-drive-v0"])
    settings.update({k: v for k, v in (("gamma", args.gamma), ("ent_coef", args.ent)) if v is not None})
    if args.rollout:
        settings["n_envs"], settings["n_steps"], settings["batch_size"] = (int(t) for t in args.rollout.split(","))
    n_envs = settings.pop("n_envs")
    seed = int(args.seeds.split(",")[0])
    model = PPO("MlpPolicy", make_vec_env(probe_id, n_envs=n_envs, seed=seed), seed=seed, device="cpu", **settings)
    env = gym.make(probe_id)
    observation = config.get("observation", "the environment's observation")
    print(f"probe a {args.alive} crash {args.crash} {observation} {settings}; {uptime()}", flush=True)
    c0, t0 = cpu(), time.perf_counter()
    while model.num_timesteps < args.steps:
        model.learn(args.chunk, reset_num_timesteps=False)
        eps = [play(env, lambda obs: model.predict(obs, deterministic=True)[0], 1000 + i)
               for i in range(args.episodes)]
        returns = [sum(ep["rewards"]) for ep in eps]
        crashes = sum(ep["crashed"] for ep in eps)
        speeds = [v for ep in eps for v in ep["speeds"]]
        shares = action_shares(eps)
        print(f"{model.num_timesteps} steps: return {np.mean(returns):.2f}, crashes {crashes}/{args.episodes}, "
              f"speed {np.mean(speeds):.1f} m/s, " + " ".join(f"{n} {100 * x:.0f}%" for n, x in zip(ACTIONS, shares))
              + f"; {cpu() - c0:.0f} s CPU, {time.perf_counter() - t0:.0f} s wall", flush=True)
    print("uptime after:", uptime(), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="armor/highway-drive-v0")
    ap.add_argument("--steps", type=int, default=20480)
    ap.add_argument("--recipes", default="vanilla,sa-ppo")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--eps", type=float, default=0.2)
    ap.add_argument("--episodes", type=int, default=None, help="default 10 (8 with --scripted / --probe)")
    ap.add_argument("--suite", default="random,critic,mad,rs", help="attack names; optimal: the learned adversary")
    ap.add_argument("--adv-steps", type=int, default=8192,
                    help="the learned adversary's steps per configuration (2 configurations; armor's default 20000 x 3)")
    ap.add_argument("--out", default="/tmp/agents/drive")
    ap.add_argument("--scripted", action="store_true", help="scripted policies' returns (see the docstring)")
    ap.add_argument("--probe", action="store_true", help="a PPO learning curve on a reward (see the docstring)")
    ap.add_argument("--alive", type=float, default=0.2, help="--scripted / --probe: the reward's alive_reward")
    ap.add_argument("--crash", type=float, default=-3.0, help="--scripted / --probe: the reward's crash_reward")
    ap.add_argument("--gamma", type=float, default=None, help="--probe: PPO's gamma (default: DEFAULT_PPO's)")
    ap.add_argument("--ent", type=float, default=None, help="--probe: PPO's ent_coef (default: DEFAULT_PPO's)")
    ap.add_argument("--chunk", type=int, default=2048, help="--probe: steps between evaluations")
    ap.add_argument("--obs-range", default=None, help="--probe: observation ranges X,VX (highway-env's: 200,80)")
    ap.add_argument("--rollout", default=None, help="--probe: N_ENVS,N_STEPS,BATCH (the earlier default: 4,64,64)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.scripted or args.probe:
        args.episodes = args.episodes or 8
        return scripted(args) if args.scripted else probe(args)
    args.episodes = args.episodes or 10
    from armor.domains.agents.attacks import LearnedAdversary, make_attack
    from armor.domains.agents.envs import env_threat
    from armor.domains.agents.threat import raw_eps
    from armor.domains.agents.evaluate import evaluate_agent
    from armor.domains.agents.train import default_normalizer, train_agent

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("uptime before:", uptime(), flush=True)
    rows = []
    suite = [a for a in args.suite.split(",") if a]
    for seed in (int(s) for s in args.seeds.split(",")):
        normalizer = default_normalizer(args.env, seed)
        for recipe in args.recipes.split(","):
            run_dir = out / f"{args.env.replace('/', '_')}-{recipe}-s{seed}"
            t0, c0 = time.perf_counter(), cpu()
            run = train_agent(args.env, recipe, eps=args.eps, total_steps=args.steps, seed=seed, out_dir=run_dir,
                              resume=(run_dir / "metadata.json").exists(), normalizer=normalizer, quiet=False)
            train_wall, train_cpu = time.perf_counter() - t0, cpu() - c0
            t0, c0 = time.perf_counter(), cpu()
            drive = clean_driving(run.adapter, args.env, args.episodes, 0)
            threat = env_threat(args.env, run.normalizer, "linf", args.eps)
            attacks = {a: LearnedAdversary(timesteps=args.adv_steps, configs=ADV_CONFIGS) if a == "optimal"
                       else make_attack(a) for a in suite}
            ev = evaluate_agent(run.adapter, args.env, run.normalizer, threat, attacks, episodes=args.episodes, seed=0)
            s = ev.summary()
            raw = raw_eps(run.normalizer, args.eps)
            row = {"seed": seed, "recipe": recipe, "env": args.env, "steps": run.metadata["env_steps"],
                   "raw_eps_range": [min(raw), max(raw)], "uptime": uptime(),
                   "train_seconds_recorded": run.metadata["train_seconds"],
                   "train_wall_this_call": round(train_wall, 1), "train_cpu_this_call": round(train_cpu, 1),
                   "eval_wall": round(time.perf_counter() - t0, 1), "eval_cpu": round(cpu() - c0, 1),
                   "driving": drive, "clean": s["clean"], "worst": s["worst"], "attacks": s["attacks"]}
            rows.append(row)
            crash = {n: st.get("failure_share") for n, st in s["attacks"].items()}
            print(f"{recipe} seed {seed}: speed {drive['mean_speed']:.1f} m/s, actions {drive['actions']}, "
                  f"return clean {s['clean']['median']:.1f} worst {s['worst']['median']:.1f}, crash rate clean "
                  f"{s['clean'].get('failure_share')} worst {s['worst'].get('failure_share')} per attack {crash}, "
                  f"train {row['train_seconds_recorded']:.0f}s, eval {row['eval_wall']:.0f}s wall "
                  f"{row['eval_cpu']:.0f}s CPU; {row['uptime']}", flush=True)
            pct = lambda x: "-" if x is None else f"{100 * x:.0f}%"  # noqa: E731
            print(f"| {recipe} | {seed} | {drive['mean_speed']:.1f} | {100 * drive['actions']['FASTER']:.0f}% | "
                  f"{drive['lane_changes_per_episode']:.1f} | {s['clean']['median']:.1f} | "
                  f"{s['worst']['median']:.1f} | "
                  f"{pct(s['clean'].get('failure_share'))} | "
                  + " | ".join(pct(crash.get(a)) for a in suite)
                  + f" | {pct(s['worst'].get('failure_share'))} | "
                  + " | ".join(f"{s['attacks'][a]['median']:.1f}" for a in suite)
                  + f" | {train_cpu:.0f} |", flush=True)
            (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print("uptime after:", uptime(), flush=True)


if __name__ == "__main__":
    main()
