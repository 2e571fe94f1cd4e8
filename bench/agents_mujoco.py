"""MuJoCo benchmark of the agents domain in the SA-PPO protocol (not in CI: tens of minutes to hours).

    nice -n 19 .venv/bin/python bench/agents_mujoco.py [--env Hopper-v5] [--steps 100000] [--seeds 0,1,2]
        [--eps 0.075] [--episodes 5] [--out /tmp/agents/mujoco] [--recipes vanilla,sa-ppo]

Needs ``pip install mujoco "gymnasium[mujoco]"``. The protocol of Zhang et al. 2020 (SA-PPO), reduced to fit
one shared 2-core machine:

* eps 0.075 linf on *normalised* states. SA-PPO normalises states by running statistics of the states the agent
  visits; here the normaliser is fixed once per benchmark: the mean / std of the states a clean vanilla agent
  (the first seed) visits in 10 deterministic episodes. Every agent, vanilla and SA-PPO, is trained (SA-PPO's
  regulariser) and attacked with that one normaliser, so the budget is the same for all.
* Attacks: random noise, critic, MAD, Robust Sarsa and the learned (ATLA "optimal") adversary, with armor's
  defaults, except the learned adversary: its learning rate searched over 2 configs (3e-4, 1e-3) of
  ``--adv-steps`` steps each instead of 3 of 20000, to fit the machine. Per agent, the
  per-episode worst case over the suite; per recipe, the median over agents (training seeds) of each agent's
  median, as the paper reports (the paper: 21 agents of 2M steps each; here ``--seeds`` agents of ``--steps``).
* PPO: SB3's defaults (n_steps 2048, batch 64, 10 epochs, lr 3e-4), 64-64 tanh MLP, no VecNormalize.

Each finished agent's evaluation is written to OUT/<recipe>-s<seed>/eval.json at once (a killed benchmark
resumes: finished runs and evaluations are reused), and the summary to OUT/summary.json; the markdown table for
bench/RESULTS.md is printed at the end together with ``uptime``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import torch


ADV_CONFIGS = ({"learning_rate": 3e-4}, {"learning_rate": 1e-3})  # the learned adversary's search


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="Hopper-v5")
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--eps", type=float, default=0.075)
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--recipes", default="vanilla,sa-ppo")
    ap.add_argument("--attacks", default="random,critic,mad,rs,optimal")
    ap.add_argument("--adv-steps", type=int, default=10_000,
                    help="the learned adversary's steps per configuration (armor's default: 20000)")
    ap.add_argument("--out", default="/tmp/agents/mujoco")
    args = ap.parse_args()

    torch.set_num_threads(1)
    from armor.domains.agents.attacks import LearnedAdversary, make_attack
    from armor.domains.agents.envs import env_threat, fit_normalizer
    from armor.domains.agents.evaluate import aggregate_seeds, evaluate_agent
    from armor.domains.agents.threat import ObsNormalizer
    from armor.domains.agents.train import load_agent, train_agent
    from armor.utils import atomic_write_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    recipes = [r.strip() for r in args.recipes.split(",")]
    attacks = tuple(a.strip() for a in args.attacks.split(","))
    print(f"uptime at start: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}", flush=True)

    def train(recipe: str, seed: int, normalizer: ObsNormalizer | None) -> Path:
        run_dir = out / f"{recipe}-s{seed}"
        meta = run_dir / "metadata.json"
        if meta.exists() and json.loads(meta.read_text()).get("status") == "finished":
            return run_dir
        t0 = time.perf_counter()
        train_agent(args.env, recipe, eps=args.eps, total_steps=args.steps, seed=seed, out_dir=run_dir,
                    resume=meta.exists(), normalizer=normalizer, quiet=False)
        print(f"[{recipe} s{seed}] trained in {time.perf_counter() - t0:.0f} s", flush=True)
        return run_dir

    # the benchmark's normaliser: states a clean vanilla agent visits
    norm_path = out / "normalizer.json"
    first = train("vanilla", seeds[0], None)
    if norm_path.exists():
        normalizer = ObsNormalizer.from_dict(json.loads(norm_path.read_text()))
    else:
        _, adapter, _, _ = load_agent(first)
        normalizer = fit_normalizer(args.env, adapter, episodes=10, seed=50_000, max_steps=10_000)
        atomic_write_json(norm_path, normalizer.to_dict())
    threat = env_threat(args.env, normalizer, "linf", args.eps)

    per_recipe: dict[str, list[dict]] = {r: [] for r in recipes}
    rows = []
    for seed in seeds:
        for recipe in recipes:
            run_dir = train(recipe, seed, None if recipe == "vanilla" else normalizer)
            ev_path = run_dir / "eval.json"
            if ev_path.exists():
                ev = json.loads(ev_path.read_text())
            else:
                _, adapter, _, meta = load_agent(run_dir)
                t0 = time.perf_counter()
                suite = {a: LearnedAdversary(timesteps=args.adv_steps, configs=ADV_CONFIGS) if a == "optimal"
                         else make_attack(a) for a in attacks}
                ev = evaluate_agent(adapter, args.env, normalizer, threat, suite, episodes=args.episodes,
                                    seed=1000).to_dict()
                ev["eval_seconds"] = time.perf_counter() - t0
                ev["train_seconds"] = meta["train_seconds"]
                ev["env_steps"] = meta["env_steps"]
                atomic_write_json(ev_path, ev)
            s = ev["summary"]
            per_recipe[recipe].append(s)
            rows.append({"recipe": recipe, "seed": seed, "clean": s["clean"]["median"], "worst": s["worst"]["median"],
                         **{a: s["attacks"][a]["median"] for a in attacks}, "train_seconds": ev["train_seconds"],
                         "eval_seconds": ev["eval_seconds"]})
            print(f"[{recipe} s{seed}] clean {s['clean']['median']:.0f} worst {s['worst']['median']:.0f} "
                  + " ".join(f"{a} {s['attacks'][a]['median']:.0f}" for a in attacks)
                  + f" (train {ev['train_seconds']:.0f} s, eval {ev['eval_seconds']:.0f} s)", flush=True)
    agg = {r: aggregate_seeds(v) for r, v in per_recipe.items() if v}
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    atomic_write_json(out / "summary.json", {"args": vars(args), "rows": rows, "aggregate": agg, "uptime_end": load,
                                             "normalizer": normalizer.to_dict(), "cpu_count": os.cpu_count()})
    print(f"\n| recipe | agents | clean | worst case | {' | '.join(attacks)} | train s (median) |")
    print("|---|---|---|---|" + "---|" * len(attacks) + "---|")
    for r, a in agg.items():
        t = np.median([row["train_seconds"] for row in rows if row["recipe"] == r])
        cells = [f"{a['clean']['median_of_medians']:.0f}", f"**{a['worst']['median_of_medians']:.0f}**"]
        cells += [f"{a['attacks'][k]['median_of_medians']:.0f}" for k in attacks]
        print(f"| {r} | {a['clean']['seeds']} | " + " | ".join(cells) + f" | {t:.0f} |")
    print(f"\nuptime at end: {load}")


if __name__ == "__main__":
    main()
