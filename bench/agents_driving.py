"""Driving agents on highway-env: does PPO drive (speed, crash rate), and what do observation attacks do to it?

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/agents_driving.py --env armor/highway-drive-v0 \
        --steps 20480 --recipes vanilla,sa-ppo --seeds 0,1 --out /tmp/agents/drive

For each seed and recipe: ``train_agent`` (resumed when OUT/ENV-RECIPE-sSEED already holds the run, so a killed
bench continues), then ``evaluate_agent`` clean and under the suite (10 seeded episodes by default) and a clean
replay of the same episodes that records the ego vehicle's speed (``info["speed"]``, m/s), its actions and its
lane changes. Prints one table row per agent (and a markdown row for bench/RESULTS.md) and writes
OUT/results.json. One torch thread; ``uptime`` before and after every agent; process CPU time beside wall time.

``armor/highway-drive-v0`` is highway-fast-v0 with a reward under which driving pays (see
:data:`armor.domains.agents.envs.ARMOR_ENVS`); ``--env highway-fast-v0`` measures the braking agent beside it.
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


def clean_driving(adapter, env_id: str, episodes: int, seed: int) -> dict:
    """Mean ego speed (m/s), action shares and crashes of the clean agent on episodes seed, seed+1, ..."""
    from armor.domains.agents.envs import make_env, to_action

    env = make_env(env_id)
    speeds, actions, crashed, lane_changes = [], [], 0, 0
    try:
        with adapter.frozen():
            for i in range(episodes):
                obs, _ = env.reset(seed=seed + i)
                lane = env.unwrapped.vehicle.target_lane_index[2]
                while True:
                    a = to_action(adapter, env, torch.as_tensor(np.asarray(obs, np.float32).reshape(1, -1)))
                    obs, _, term, trunc, info = env.step(a)
                    speeds.append(float(info["speed"]))
                    actions.append(int(a))
                    lane_changes += int(a) in (0, 2) and lane != env.unwrapped.vehicle.target_lane_index[2]
                    lane = env.unwrapped.vehicle.target_lane_index[2]
                    if term or trunc:
                        crashed += bool(info.get("crashed"))
                        break
    finally:
        env.close()
    counts = np.bincount(actions, minlength=5) / len(actions)
    names = ("LANE_LEFT", "IDLE", "LANE_RIGHT", "FASTER", "SLOWER")
    return {"mean_speed": float(np.mean(speeds)), "actions": {n: round(float(c), 3) for n, c in zip(names, counts)},
            "crashed": crashed, "episodes": episodes, "lane_changes_per_episode": lane_changes / episodes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="armor/highway-drive-v0")
    ap.add_argument("--steps", type=int, default=20480)
    ap.add_argument("--recipes", default="vanilla,sa-ppo")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--eps", type=float, default=0.2)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--suite", default="random,critic,mad,rs")
    ap.add_argument("--out", default="/tmp/agents/drive")
    args = ap.parse_args()
    torch.set_num_threads(1)
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
            ev = evaluate_agent(run.adapter, args.env, run.normalizer, threat, suite, episodes=args.episodes, seed=0)
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
                  f"{drive['lane_changes_per_episode']:.1f} | {s['clean']['median']:.1f} | {s['worst']['median']:.1f} | "
                  f"{pct(s['clean'].get('failure_share'))} | "
                  + " | ".join(pct(crash.get(a)) for a in suite)
                  + f" | {pct(s['worst'].get('failure_share'))} | "
                  + " | ".join(f"{s['attacks'][a]['median']:.1f}" for a in suite)
                  + f" | {train_cpu:.0f} |", flush=True)
            (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print("uptime after:", uptime(), flush=True)


if __name__ == "__main__":
    main()
