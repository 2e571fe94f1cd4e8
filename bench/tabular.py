"""Tabular robustness under domain constraints: standard vs adversarially trained MLPs.

Run from the repository root:

    .venv/bin/python bench/tabular.py              # 3 datasets x 3 recipes x 3 seeds, prints a markdown table
    .venv/bin/python bench/tabular.py --write      # ... and writes the "## Tabular" section of RESULTS.md
    .venv/bin/python bench/tabular.py --quick      # 1 seed, smaller search: a smoke run

For each dataset (breast cancer, German credit, SYNTHETIC fraud), an MLP that standardises its raw inputs is
trained with ``standard``, ``pgd-at`` (armor's PGD-AT, whose attack the projection repairs but which cannot
switch categories) and ``cpgd-at`` (PGD-AT against constrained PGD). Each model is evaluated on the test split:
clean accuracy; constrained robust accuracy (per-sample worst case over cpgd, apgd-ce and the genetic
csearch, every example satisfying the schema); unconstrained robust accuracy (apgd-ce and pgd-margin under the
relaxed threat: same ball, no constraints, immutables budgeted like mutable features); recall of the positive
class (malignant, bad credit, fraud) clean and under a one-directional attack. Numbers are means over seeds.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH, machine_info, replace_section  # noqa: E402

from armor.models import build_model  # noqa: E402
from armor.domains.tabular import (constrained_robust_accuracy, load_tabular, recall_under_attack,  # noqa: E402
                           unconstrained_robust_accuracy)
from armor.training import Trainer  # noqa: E402
from armor.utils import atomic_write_json  # noqa: E402

# dataset -> (eps in standard deviations, epochs, batch size)
SETTINGS = {"breast-cancer": (0.5, 30, 64), "german-credit": (0.5, 30, 64), "fraud": (0.25, 20, 128)}
RECIPES = {"standard": {}, "pgd-at": {"steps": 10, "adv_ratio": 1.0}, "cpgd-at": {"steps": 10, "adv_ratio": 1.0}}


def run_one(name: str, recipe: str, seed: int, search: dict) -> dict:
    eps, epochs, batch = SETTINGS[name]
    data = load_tabular(name)
    threat = data.threat(eps)
    torch.manual_seed(seed)
    model = build_model(data.model_spec((64, 64)))
    t0 = time.perf_counter()
    Trainer(model, data.train, recipe=recipe, recipe_params=RECIPES[recipe], threat=threat, epochs=epochs,
            batch_size=batch, optimizer="adam", lr=1e-3, seed=seed, val_steps=0, quiet=True).fit()
    train_s = time.perf_counter() - t0
    model.eval()
    x, y = data.test.x, data.test.y
    kw = {"csearch": search}
    con = constrained_robust_accuracy(model, x, y, threat, seed=seed, attack_kwargs=kw)
    unc = unconstrained_robust_accuracy(model, x, y, threat, seed=seed)
    rec = recall_under_attack(model, x, y, threat, positive=data.schema.positive_class, seed=seed, attack_kwargs=kw)
    return {"dataset": data.name, "recipe": recipe, "seed": seed, "eps_std": eps, "train_seconds": train_s,
            "clean_accuracy": con.clean_accuracy, "constrained_robust_accuracy": con.robust_accuracy,
            "unconstrained_robust_accuracy": unc.robust_accuracy, "clean_recall": rec["clean_recall"],
            "recall_under_attack": rec["recall_under_attack"],
            "per_attack": {k: v["cumulative_accuracy"] for k, v in con.per_attack.items()}}


def table(rows: list[dict]) -> str:
    keys = ("clean_accuracy", "constrained_robust_accuracy", "unconstrained_robust_accuracy", "clean_recall",
            "recall_under_attack", "train_seconds")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["eps_std"], r["recipe"]), []).append(r)
    out = ["| dataset | eps (std) | recipe | clean acc | constrained robust acc | unconstrained robust acc | "
           "clean recall (positive) | recall under attack | train s |",
           "|---|---|---|---|---|---|---|---|---|"]
    for (ds, eps, recipe), rs in groups.items():
        vals = []
        for k in keys:
            xs = [r[k] for r in rs]
            m = statistics.mean(xs)
            vals.append(f"{m:.1f}" if k == "train_seconds" else
                        f"{m:.3f}" + (f" ±{(max(xs) - min(xs)) / 2:.3f}" if len(xs) > 1 else ""))
        out.append(f"| {ds} | {eps} | {recipe} | " + " | ".join(vals) + " |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 seed and a smaller search; prints only")
    p.add_argument("--write", action="store_true", help="write the '## Tabular' section of bench/RESULTS.md")
    p.add_argument("--datasets", default=",".join(SETTINGS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (tiny tables: 1 is fastest)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [0] if args.quick else [0, 1, 2]
    search = {"population": 16, "generations": 20} if args.quick else {"population": 32, "generations": 50}
    rows = []
    for name in args.datasets.split(","):
        for recipe in RECIPES:
            for seed in seeds:
                r = run_one(name, recipe, seed, search)
                rows.append(r)
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    text = table(rows)
    info = machine_info()
    text += (f"\n\nMeans over seeds {seeds} (± half the range). Test splits: breast cancer 171 rows (positive = "
             f"malignant), German credit 300 (positive = bad risk), fraud 1800 (SYNTHETIC, positive = fraud). "
             f"Constrained suite: cpgd (50 steps), apgd-ce, csearch ({search['population']} x "
             f"{search['generations'] + 1} queries); recall under attack attacks the positive rows only. "
             f"PGD-AT and cPGD-AT: 10 steps, adv_ratio 1.0; Adam lr 1e-3; MLP 64-64. "
             f"Run {_dt.date.today()} on {info.get('cpu', '?')} ({args.threads} torch thread).")
    print("\n" + text)
    atomic_write_json(BENCH / ".cache" / "tabular.json", rows)
    if args.write and not args.quick:
        replace_section(BENCH / "RESULTS.md", "## Tabular", text)
        print(f"\nwrote {BENCH / 'RESULTS.md'} (## Tabular)")


if __name__ == "__main__":
    main()
