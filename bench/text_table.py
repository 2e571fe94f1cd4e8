"""The text domain's closing table: standard vs adversarially trained classifiers on MR, over seeds.

    nice -n 10 .venv/bin/python bench/text_table.py --seeds 0 1 2 --out /tmp/text/closing

For each seed, and each model of MODELS (the word-CNN trained standard, A2T, embedding PGD and FreeLB; the frozen
MiniLM encoder with a linear head trained standard and A2T), trains it with the library's defaults (4 epochs on
the 9,605 MR training sentences) and runs `armor evaluate`'s suite (PWWS, TextFooler, DeepWordBug, A2T, the
per-sentence worst case) on the first 100 test sentences under one threat: at most 20% of the words, stop words
kept, POS kept, MiniLM similarity >= 0.84, 2000 queries per sentence. One process, one torch thread, the models
one after the other, so the training-time ratios are measured side by side. A model whose entry is already in
OUT/seed<S>/<model>.json is read, not rerun (a killed run resumes). Prints the markdown tables: accuracy per
recipe and worst case, success rate, words changed, queries and seconds per sentence, training time (wall and
process CPU) and its ratio to standard training of the same architecture, with the load from `uptime`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import torch

MODELS = (  # label, arch, training recipe, its options (beyond the library defaults)
    ("cnn standard", "cnn", "standard", {}),
    ("cnn a2t", "cnn", "a2t", {}),
    ("cnn embed-pgd", "cnn", "embed-pgd", {}),
    ("cnn freelb", "cnn", "freelb", {}),
    ("minilm standard", "minilm", "standard", {}),
    ("minilm a2t", "minilm", "a2t", {"adv_ratio": 0.05}),  # 5% of each batch: a MiniLM query is ~100x a CNN one
)
SUITE = "pwws,textfooler,deepwordbug,a2t"
N = 100


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run_one(out: Path, label: str, arch: str, recipe: str, options: dict, seed: int) -> dict:
    from armor.domains.text.train import train_text
    from armor.domains.text.workflow import evaluate
    from armor.utils import atomic_write_json

    path = out / f"seed{seed}" / f"{label.replace(' ', '-')}.json"
    if path.exists():
        return json.loads(path.read_text())
    run_dir = path.with_suffix("")
    print(f"seed {seed} {label}: training ({uptime()})", flush=True)
    c0, t0 = time.process_time(), time.perf_counter()
    meta = train_text(run_dir, arch=arch, recipe=recipe, seed=seed, resume=(run_dir / "metadata.json").exists(),
                      quiet=False, say=lambda m: print(f"  {m}", flush=True), **options)
    train_cpu, train_wall = time.process_time() - c0, time.perf_counter() - t0
    print(f"seed {seed} {label}: evaluating ({uptime()})", flush=True)
    c0, t0 = time.process_time(), time.perf_counter()
    entry, _ = evaluate(run_dir, {"n": N, "seed": seed, "suite": SUITE}, progress=lambda m: print(f"  {m}", flush=True))
    entry["bench"] = {"label": label, "train_cpu": round(train_cpu, 1), "train_wall": round(train_wall, 1),
                      "train_seconds": meta["train_seconds"], "eval_cpu": round(time.process_time() - c0, 1),
                      "eval_wall": round(time.perf_counter() - t0, 1), "load_after": uptime()}
    entry.pop("gallery", None)
    atomic_write_json(path, entry)
    print(f"seed {seed} {label}: clean {entry['clean_accuracy']:.2f} worst {entry['robust_accuracy']:.2f} "
          f"train {train_wall:.0f} s wall / {train_cpu:.0f} s CPU, evaluation {entry['bench']['eval_wall']:.0f} s",
          flush=True)
    return entry


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("/tmp/text/closing"))
    ap.add_argument("--models", default=",".join(m[0] for m in MODELS), help="comma-separated labels of MODELS")
    ap.add_argument("--only-table", action="store_true", help="do not run missing models")
    args = ap.parse_args()
    torch.set_num_threads(1)
    by_label = {m[0]: m for m in MODELS}
    unknown = [w for w in args.models.split(",") if w not in by_label]
    if unknown:
        raise SystemExit(f"unknown models {unknown}: choose from {', '.join(by_label)}")
    wanted = [by_label[w] for w in args.models.split(",")]  # in the order given
    results: dict[str, dict[int, dict]] = {}
    for seed in args.seeds:  # every model of a seed before the next seed: a partial run still compares
        for label, arch, recipe, options in wanted:
            path = args.out / f"seed{seed}" / f"{label.replace(' ', '-')}.json"
            if args.only_table and not path.exists():
                continue
            results.setdefault(label, {})[seed] = run_one(args.out, label, arch, recipe, options, seed)
    print(table(results))
    print(f"\nload at the end: {uptime()}")


def _cell(values: list[float], pct: bool = True, digits: int = 1) -> str:
    f = (lambda v: f"{100 * v:.{digits}f}") if pct else (lambda v: f"{v:.{digits}f}")
    mean = statistics.fmean(values)
    return f"{f(mean)} ({', '.join(f(v) for v in values)})" if len(values) > 1 else f(mean)


def table(results: dict[str, dict[int, dict]]) -> str:
    if not results:
        return "(no model has results yet)"
    recipes = SUITE.split(",")
    lines = ["Mean (per-seed values); accuracy and success rate in %; n = 100 test sentences per seed.", "",
             "| model | seeds | clean | worst case | " + " | ".join(f"{r} acc / success" for r in recipes)
             + " | train s (CPU) | train time / standard |", "|---" * (6 + len(recipes)) + "|"]
    for label, by_seed in results.items():
        seeds = sorted(by_seed)
        rows = [by_seed[s] for s in seeds]
        cols = [",".join(map(str, seeds)), _cell([m["clean_accuracy"] for m in rows]),
                _cell([m["robust_accuracy"] for m in rows])]
        for r in recipes:
            cols.append(f"{_cell([m['per_attack'][r]['accuracy'] for m in rows])} / "
                        f"{_cell([m['per_attack'][r]['success_rate'] for m in rows], digits=0)}")
        cols.append(_cell([m["bench"]["train_cpu"] for m in rows], pct=False, digits=0))
        base = results.get(f"{label.split()[0]} standard", {})
        ratios = [by_seed[s]["bench"]["train_cpu"] / base[s]["bench"]["train_cpu"] for s in seeds if s in base]
        cols.append(_cell(ratios, pct=False, digits=2) if ratios else "-")
        lines.append(f"| {label} | " + " | ".join(cols) + " |")
    lines += ["", "| model | recipe | success % | words changed % | queries / sentence | s / sentence | similarity |",
              "|---|---|---|---|---|---|---|"]
    for label, by_seed in results.items():
        for r in recipes:
            rs = [by_seed[s]["per_attack"][r] for s in sorted(by_seed)]
            wc = [x["words_changed"] for x in rs if x["words_changed"] is not None]
            sim = [x["similarity"] for x in rs if x["similarity"] is not None]
            lines.append(f"| {label} | {r} | {_cell([x['success_rate'] for x in rs], digits=0)} | "
                         f"{_cell(wc) if wc else '-'} | {_cell([x['queries'] for x in rs], pct=False)} | "
                         f"{_cell([x['seconds_per_example'] for x in rs], pct=False, digits=3)} | "
                         f"{_cell(sim, pct=False, digits=3) if sim else '-'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
