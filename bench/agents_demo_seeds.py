"""The agents demo over several training seeds: the tables issue 10's closing note needs.

    nice -n 10 .venv/bin/python bench/agents_demo_seeds.py --seeds 0,1,2 --out /tmp/agents/seeds

Runs ``armor demo --domain agents`` (``run_demo``, its final settings: CartPole-v1, vanilla / SA-PPO /
attacked-obs, eps 0.2, 10 episodes, attacks random / critic / mad / rs, return-vs-eps curve, report) once per
seed into OUT/sSEED (a seed whose results.json exists is read back, not rerun), and records each phase's wall and
CPU time (process CPU, one torch thread) from the demo's progress lines. Then, per recipe, the median over seeds
of the per-seed medians (``aggregate_seeds``, with their IQR) for the clean return, the per-episode worst case and
each attack; the share of failed episodes (return < 195); the training cost (environment steps, wall and CPU
time, and their ratio to vanilla's). Prints markdown tables and writes OUT/summary.json; ``uptime`` before and
after each seed (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import time
from pathlib import Path

import numpy as np


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_seed(preset: str, out: Path, seed: int) -> dict:
    """The demo at ``seed``, with per-phase wall / CPU seconds (from its progress lines)."""
    from armor.domains.agents.demo import run_demo

    marks: list[tuple[str, float, float]] = []

    def say(msg: str) -> None:
        marks.append((msg, time.perf_counter(), cpu()))
        print(f"  [{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    load_before = uptime()
    t0, c0 = time.perf_counter(), cpu()
    results = run_demo(preset, out, seed=seed, quiet=True, say=say)
    t1, c1 = time.perf_counter(), cpu()
    marks.append(("end", t1, c1))
    phases: dict[str, dict[str, float]] = {}
    current = None  # (label, "train" | "evaluate"): from a "training" / "measuring" line to the next such line
    for (msg, t, c), (_, tn, cn) in zip(marks, marks[1:]):
        if msg.startswith("[") and ("] training" in msg or "] measuring" in msg):
            current = (msg[1:].split("]")[0], "train" if "] training" in msg else "evaluate")
        if current is not None:
            label, kind = current
            phases.setdefault(label, {})
            phases[label][f"{kind}_wall"] = phases[label].get(f"{kind}_wall", 0.0) + tn - t
            phases[label][f"{kind}_cpu"] = phases[label].get(f"{kind}_cpu", 0.0) + cn - c
    timing = {"wall": t1 - t0, "cpu": c1 - c0, "phases": phases, "uptime_before": load_before,
              "uptime_after": uptime()}
    (out / "bench_timing.json").write_text(json.dumps(timing, indent=1))
    return results


def fmt(a: dict, digits: int = 0) -> str:
    q = a["iqr"]
    return f"{a['median_of_medians']:.{digits}f} [{q[0]:.{digits}f}, {q[1]:.{digits}f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default="agents")
    ap.add_argument("--out", default="/tmp/agents/seeds")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from armor.domains.agents.evaluate import aggregate_seeds

    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed: dict[int, dict] = {}
    timing: dict[int, dict] = {}
    for seed in seeds:
        d = out / f"s{seed}"
        if not (d / "results.json").exists():
            print(f"seed {seed}: {uptime()}", flush=True)
            run_seed(args.preset, d, seed)
        per_seed[seed] = json.loads((d / "results.json").read_text())
        timing[seed] = json.loads((d / "bench_timing.json").read_text())
        print(f"seed {seed}: demo {timing[seed]['wall']:.0f} s wall, {timing[seed]['cpu']:.0f} s CPU; "
              f"{timing[seed]['uptime_after']}", flush=True)
    recipes = list(per_seed[seeds[0]]["models"])
    summary: dict = {"seeds": seeds, "preset": per_seed[seeds[0]]["demo"]["preset"], "recipes": {}}
    for r in recipes:
        ms = [per_seed[s]["models"][r] for s in seeds]
        agg = aggregate_seeds([m["episodes"]["summary"] for m in ms])
        fail = {k: [m["failure"][k] for m in ms] for k in ("clean", "worst")} if ms[0].get("failure") else {}
        cost = {"env_steps": [m["env_steps"] for m in ms],
                "train_wall": [timing[s]["phases"][r]["train_wall"] for s in seeds],
                "train_cpu": [timing[s]["phases"][r]["train_cpu"] for s in seeds],
                # seeds whose timing recorded the evaluation phase (a first version of this script did not)
                "eval_cpu": [timing[s]["phases"][r]["evaluate_cpu"] for s in seeds
                             if "evaluate_cpu" in timing[s]["phases"][r]]}
        summary["recipes"][r] = {"aggregate": agg, "failure": fail, "cost": cost,
                                 "per_seed": {s: {"clean": m["clean_return"], "worst": m["robust_return"],
                                                  **{a: st["median"] for a, st in m["per_attack"].items()}}
                                              for s, m in zip(seeds, ms)}}
    attacks = list(summary["recipes"][recipes[0]]["aggregate"]["attacks"])
    print(f"\n{len(seeds)} seeds ({args.seeds}); median over seeds of the per-seed median return [IQR over seeds]\n")
    print("| agent | clean | worst case | " + " | ".join(attacks) + " | failed clean | failed worst |")
    print("|---|---:|---:|" + "---:|" * len(attacks) + "---:|---:|")
    for r in recipes:
        s = summary["recipes"][r]
        a = s["aggregate"]
        f = s["failure"]
        print(f"| {r} | {fmt(a['clean'])} | **{fmt(a['worst'])}** | "
              + " | ".join(f"{a['attacks'][k]['median_of_medians']:.0f}" for k in attacks)
              + (f" | {100 * np.mean(f['clean']):.0f}% | {100 * np.mean(f['worst']):.0f}% |" if f else " | - | - |"))
    print("\nper seed (median return: clean / worst):")
    for r in recipes:
        print(f"  {r}: " + ", ".join(f"s{s} {v['clean']:.0f}/{v['worst']:.0f}"
                                     for s, v in summary["recipes"][r]["per_seed"].items()))
    base = summary["recipes"]["vanilla"]["cost"]
    print("\n| agent | env steps | train wall s (median) | train CPU s (median) | CPU vs vanilla | evaluate CPU s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in recipes:
        c = summary["recipes"][r]["cost"]
        ratio = np.median(c["train_cpu"]) / np.median(base["train_cpu"])
        print(f"| {r} | {int(np.median(c['env_steps']))} | {np.median(c['train_wall']):.0f} | "
              f"{np.median(c['train_cpu']):.0f} | {ratio:.1f}x | "
              f"{np.median(c['eval_cpu']) if c['eval_cpu'] else float('nan'):.0f} |")
    print("\ndemo per seed: " + ", ".join(f"s{s} {timing[s]['wall']:.0f} s wall / {timing[s]['cpu']:.0f} s CPU"
                                          for s in seeds))
    summary["timing"] = timing
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
