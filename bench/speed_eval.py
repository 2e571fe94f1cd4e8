"""armor's `standard` suite against the original AutoAttack (fra31/auto-attack, version='standard', 100
iterations) on the same models and the same Fashion-MNIST test points: wall time, process CPU time, robust
accuracy and the per-point robust sets, runs interleaved A B B A.

Run in a bench venv that has the original on its path (it is never a dependency of armor):

    PYTHONPATH=/path/to/auto-attack nice -n 10 bench-venv/bin/python bench/speed_eval.py --n 1000

Models (bench/common.py, cached): the small CNN of Wong et al. 2020 trained on 20k Fashion-MNIST images for 5
epochs with PGD-7 adversarial training (Madry et al.; written out in common.py, no armor code) and with FGSM
with random start (the fast recipe). linf eps 0.1, seed 0, one torch thread per run.

Sides: `armor` (the standard suite as registered), `armor-proposed` (the same with PROPOSED's attack_kwargs: a
change measured before it becomes the default; now APGD-T's give_up=8), `autoattack` (the original). Every run
is its own subprocess (`--worker armor|armor-proposed|autoattack`) so that each side's CPU time is its own
(`time.process_time()` of the worker; per attack too: armor's registered attack functions are wrapped with a
CPU timer inside the worker); `--armor-src DIR` runs an older armor (e.g. `git archive` of a
commit) as a third side, "armor-before", once per model after the A B B A block. `uptime` is recorded before
and after every run. Prints the tables (markdown) and writes every run to --out (JSON lines).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
EPS = 0.1
MODELS = {"pgd": ("small-cnn PGD-7 AT", dict(kind="pgd", epochs=5, n_train=20000)),
          "fgsm-rs": ("small-cnn FGSM-RS AT (fast)", dict(kind="fgsm-rs", epochs=5, n_train=20000))}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# ---------------------------------------------------------------------------------------------- workers
def _setup(model_key: str, n: int):
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(BENCH))
    from common import load_fashion_mnist, train

    spec = dict(MODELS[model_key][1])
    model = train(spec.pop("kind"), verbose=False, **spec).eval()
    x, y = load_fashion_mnist("test")
    return model, x[:n].contiguous(), y[:n].contiguous()


# The proposal measured beside the shipped suite: APGD-T gives up on points it cannot break (apgd_t's give_up),
# as Square does since 28f69bc.
PROPOSED = {"apgd-t": {"give_up": 8.0}}


def worker_armor(model, x, y, proposed: bool = False) -> dict:
    import dataclasses

    import armor
    from armor import attacks
    from armor.evaluate import evaluate

    cpu_parts: dict[str, float] = {}

    def timed(name, fn):
        def run(*a, **kw):
            c = time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                cpu_parts[name] = cpu_parts.get(name, 0.0) + time.process_time() - c
        return run

    # Per-attack process CPU time: each registered attack's function wrapped in this worker only.
    for name, spec in list(attacks.ATTACKS.items()):
        attacks.ATTACKS[name] = dataclasses.replace(spec, fn=timed(name, spec.fn))
    c0, t0 = time.process_time(), time.perf_counter()
    r = evaluate(model, (x, y), armor.ThreatModel("linf", EPS), suite="standard", seed=0, batch_size=500,
                 attack_kwargs=PROPOSED if proposed else None)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall": wall, "cpu": cpu, "robust": r.robust.int().tolist(), "robust_accuracy": r.robust_accuracy,
            "clean_accuracy": r.clean_accuracy,
            "parts": {k: [v["seconds"], v["n"], v["cumulative_accuracy"], cpu_parts.get(k)]
                      for k, v in r.per_attack.items()}}


def worker_autoattack(model, x, y) -> dict:
    import torch
    from autoattack import AutoAttack

    aa = AutoAttack(model, norm="Linf", eps=EPS, version="standard", seed=0, verbose=False, device="cpu")
    parts: dict[str, list] = {}
    for name, obj in (("apgd-ce", aa.apgd), ("apgd-t", aa.apgd_targeted), ("fab-t", aa.fab), ("square", aa.square)):
        orig = obj.perturb

        def timed(xb, yb, *a, _orig=orig, _name=name, **kw):
            c, t = time.process_time(), time.perf_counter()
            out = _orig(xb, yb, *a, **kw)
            rec = parts.setdefault(_name, [0.0, 0, 0.0])
            rec[0] += time.perf_counter() - t
            rec[1] += xb.shape[0]
            rec[2] += time.process_time() - c
            return out

        obj.perturb = timed
    c0, t0 = time.process_time(), time.perf_counter()
    x_adv = aa.run_standard_evaluation(x, y, bs=500)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    with torch.no_grad():
        correct = model(x_adv).argmax(1) == y
        clean = (model(x).argmax(1) == y).float().mean().item()
    inside = ((x_adv - x).abs().flatten(1).amax(1) <= EPS + 1e-6) & (x_adv >= 0).flatten(1).all(1) & \
        (x_adv <= 1).flatten(1).all(1)
    robust = correct | ~inside
    return {"wall": wall, "cpu": cpu, "robust": robust.int().tolist(), "robust_accuracy": robust.float().mean().item(),
            "clean_accuracy": clean, "outside": int((~inside).sum()), "parts": parts}


# ---------------------------------------------------------------------------------------------- driver
def run_worker(side: str, model_key: str, n: int, armor_src: str | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if side == "armor-before":
        env["PYTHONPATH"] = armor_src + os.pathsep + env.get("PYTHONPATH", "")
    before = uptime()
    worker = {"autoattack": "autoattack", "armor-proposed": "armor-proposed"}.get(side, "armor")
    out = subprocess.run([sys.executable, __file__, "--worker", worker, "--model", model_key, "--n", str(n)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{side} worker failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res.update(side=side, model=model_key, uptime_before=before, uptime_after=uptime())
    return res


def load1(u: str) -> str:
    return u.split("load average:")[1].split(",")[0].strip()


def _cpu(part: list, side: str) -> str:
    """A part's CPU seconds: the original's record is [wall, n, cpu], armor's [wall, n, accuracy, cpu]."""
    cpu = part[2] if side == "autoattack" else part[3] if len(part) > 3 else None
    return "-" if cpu is None else f"{cpu:.1f}"


def tables(runs: list[dict], n: int) -> str:
    lines = ["| model | side | runs: wall s | runs: CPU s | load (1 min) before..after | robust acc | "
             "per attack, first run (CPU s / wall s / points) |", "|---|---|---|---|---|---|---|"]
    summary = ["| model | armor side | armor / original, wall (mean; runs) | armor / original, CPU (mean) | robust armor | "
               "robust original | only armor broke | only original broke |", "|---|---|---|---|---|---|---|---|"]
    notes = []
    for key in MODELS:
        rs = [r for r in runs if r["model"] == key]
        if not rs:
            continue
        by = {}
        for r in rs:
            by.setdefault(r["side"], []).append(r)
        for side, group in by.items():
            parts = ", ".join(f"{k} {_cpu(v, side)}/{v[0]:.1f}/{v[1]}" for k, v in group[0]["parts"].items())
            loads = "; ".join(f"{load1(r['uptime_before'])}..{load1(r['uptime_after'])}" for r in group)
            walls = ", ".join(f"{r['wall']:.1f}" for r in group)
            cpus = ", ".join(f"{r['cpu']:.1f}" for r in group)
            lines.append(f"| {MODELS[key][0]} | {side} | {walls} | {cpus} | {loads} | "
                         f"{group[0]['robust_accuracy']:.4f} | {parts} |")
        for side in ("armor", "armor-proposed", "armor-before"):
            if side not in by or "autoattack" not in by:
                continue
            a, b = by[side], by["autoattack"]
            wall = sum(r["wall"] for r in a) / len(a) / (sum(r["wall"] for r in b) / len(b))
            cpu = sum(r["cpu"] for r in a) / len(a) / (sum(r["cpu"] for r in b) / len(b))
            ra, rb = a[0]["robust"], b[0]["robust"]
            only_a = sum(1 for u, v in zip(ra, rb) if not u and v)
            only_b = sum(1 for u, v in zip(ra, rb) if u and not v)
            summary.append(f"| {MODELS[key][0]} | {side} | {wall:.2f} ({len(a)} / {len(b)} runs) | {cpu:.2f} | "
                           f"{a[0]['robust_accuracy']:.4f} | {b[0]['robust_accuracy']:.4f} | {only_a} | {only_b} |")
        for side in ("armor-proposed", "armor-before"):
            if side in by and "armor" in by:
                ra, rb = by["armor"][0]["robust"], by[side][0]["robust"]
                notes.append(f"{MODELS[key][0]}: points only armor broke against {side}: "
                             f"{sum(1 for u, v in zip(ra, rb) if not u and v)}, only {side} broke: "
                             f"{sum(1 for u, v in zip(ra, rb) if u and not v)}")
    return "\n".join(summary + [""] + notes + [""] + lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--models", default="pgd,fgsm-rs")
    p.add_argument("--rounds", type=int, choices=(1, 2), default=2, help="2: A B B A; 1: A B")
    p.add_argument("--armor-src", default=None, help="src dir of an older armor, run once per model as armor-before")
    p.add_argument("--out", default=str(BENCH / ".cache" / "speed_eval.jsonl"))
    p.add_argument("--order", default=None,
                   help="explicit runs, e.g. pgd:armor-proposed,pgd:autoattack,... (sides: armor, armor-proposed, "
                        "autoattack, armor-before); overrides --models/--rounds")
    p.add_argument("--table", action="store_true", help="only print the tables of the runs in --out")
    p.add_argument("--worker", choices=("armor", "armor-proposed", "autoattack"), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        model, x, y = _setup(args.model, args.n)
        res = (worker_autoattack(model, x, y) if args.worker == "autoattack"
               else worker_armor(model, x, y, proposed=args.worker == "armor-proposed"))
        print(json.dumps(res))
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.table:
        print(tables([json.loads(line) for line in out.read_text().splitlines() if line.strip()], args.n))
        return 0
    runs = []
    if args.order:
        plan = [tuple(item.split(":")) for item in args.order.split(",")]
    else:
        plan = []
        for key in args.models.split(","):
            sides = ["armor", "autoattack"] + (["autoattack", "armor"] if args.rounds == 2 else [])
            plan += [(key, side) for side in sides + (["armor-before"] if args.armor_src else [])]
    for key in dict.fromkeys(k for k, _ in plan):
        _setup(key, args.n)  # train or load the cached models outside the timed runs
    for key, side in plan:
        r = run_worker(side, key, args.n, args.armor_src)
        runs.append(r)
        with out.open("a") as f:
            f.write(json.dumps(r) + "\n")
        print(f"{key} {side}: wall {r['wall']:.1f} s, CPU {r['cpu']:.1f} s, robust {r['robust_accuracy']:.4f}, "
              f"load {load1(r['uptime_before'])}..{load1(r['uptime_after'])}, "
              + ", ".join(f"{k} {v[0]:.1f}" for k, v in r["parts"].items()), flush=True)
    print()
    print(tables(runs, args.n))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
