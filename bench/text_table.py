"""The text domain's measured table: standard vs adversarially trained word-CNNs on MR, over seeds.

    .venv/bin/python bench/text_table.py --seeds 0 1 --out /tmp/text/table   # each seed: the text demo

Each seed runs `armor demo --domain text` (standard, embed-pgd and a2t training, 4 epochs on the 9,605 MR
training sentences; PWWS, TextFooler, DeepWordBug and A2T on the first 100 test sentences under one threat:
at most 20% of the words, stop words kept, POS kept, MiniLM similarity >= 0.84, 2000 queries), or reads the
seed's results.json if it is already there; then prints a markdown table: clean and after-attack accuracy per
recipe, the worst case, success rate, queries and seconds per sentence, training time (mean and the per-seed
values), and the machine load from `uptime`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", type=Path, default=Path("/tmp/text/table"))
    ap.add_argument("--only-table", action="store_true", help="do not run missing seeds")
    args = ap.parse_args()
    results = {}
    for seed in args.seeds:
        path = args.out / f"seed{seed}" / "results.json"
        if not path.exists() and not args.only_table:
            from armor.domains.text.demo import run_demo

            print(f"seed {seed}: running the text demo ({subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()})", flush=True)
            run_demo("text", path.parent, seed=seed, quiet=True, say=lambda m: print(m, flush=True))
        if path.exists():
            results[seed] = json.loads(path.read_text())
    print(table(results))
    print(f"\nload at the end: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


def table(results: dict[int, dict]) -> str:
    if not results:
        return "(no seed has results yet)"
    seeds = sorted(results)
    first = results[seeds[0]]["models"]
    recipes = list(next(iter(first.values()))["per_attack"])

    def cell(values: list[float], pct: bool = True, digits: int = 1) -> str:
        f = (lambda v: f"{100 * v:.{digits}f}") if pct else (lambda v: f"{v:.{digits}f}")
        mean = statistics.fmean(values)
        return f"{f(mean)} ({', '.join(f(v) for v in values)})" if len(values) > 1 else f(mean)

    lines = [f"Seeds {', '.join(map(str, seeds))}: mean (per-seed values). Accuracy in %, n = "
             f"{next(iter(first.values()))['n']} test sentences per seed.", "",
             "| training | clean | worst case | " + " | ".join(f"{r} acc / success" for r in recipes)
             + " | train s |", "|---" * (4 + len(recipes)) + "|"]
    for model in first:
        rows = [results[s]["models"][model] for s in seeds]
        cols = [cell([m["clean_accuracy"] for m in rows]), cell([m["robust_accuracy"] for m in rows])]
        for r in recipes:
            cols.append(f"{cell([m['per_attack'][r]['accuracy'] for m in rows])} / "
                        f"{cell([m['per_attack'][r]['success_rate'] for m in rows], digits=0)}")
        cols.append(cell([m["train_seconds"] for m in rows], pct=False, digits=0))
        lines.append(f"| {model} | " + " | ".join(cols) + " |")
    lines += ["", "| training | recipe | queries / sentence | s / sentence | words changed % | similarity |",
              "|---|---|---|---|---|---|"]
    for model in first:
        for r in recipes:
            rs = [results[s]["models"][model]["per_attack"][r] for s in seeds]
            wc = [x["words_changed"] for x in rs if x["words_changed"] is not None]
            sim = [x["similarity"] for x in rs if x["similarity"] is not None]
            lines.append(f"| {model} | {r} | {cell([x['queries'] for x in rs], pct=False)} | "
                         f"{cell([x['seconds_per_example'] for x in rs], pct=False, digits=3)} | "
                         f"{cell(wc) if wc else '-'} | {cell(sim, pct=False, digits=3) if sim else '-'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
