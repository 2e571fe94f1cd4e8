"""Recommenders: MF-BPR vs APR on MovieLens-100k over training seeds (the table of issue 12).

For each seed, trains MF with BPR and with APR (AMF.py's protocol: BPR first, then the adversarial term; eps 0.5
absolute, adversarial weight 1, embedding 64, Adagrad lr 0.05, batch 512) side by side in one process, and
measures HR@10 / NDCG@10 clean and under every embedding attack at several eps (absolute and relative), plus the
wall time of each training. Writes OUT/recsys_results.json and prints a Markdown table (median [min, max]
over seeds) for bench/RESULTS.md.

    python bench/recsys.py --epochs 100 --seeds 0,1,2 --out /tmp/recsys-bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import torch

from armor.domains.recsys.attacks import Context
from armor.domains.recsys.evaluate import measure
from armor.domains.recsys.metrics import summarize
from armor.domains.recsys.threat import EmbeddingThreat
from armor.domains.recsys.train import load_recommender, train_recommender

THREATS = (("absolute", 0.25), ("absolute", 0.5), ("absolute", 1.0), ("relative", 0.1), ("relative", 0.2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="ml-100k")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--adv-start", type=int, default=None, help="APR's first adversarial epoch (default: half)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--eps", type=float, default=0.5)
    ap.add_argument("--model", default="mf", help="mf or lightgcn")
    ap.add_argument("--recipes", default="bpr,apr")
    ap.add_argument("--out", default="/tmp/recsys-bench")
    ap.add_argument("--json", default=None, help="where the results JSON goes (default: OUT/recsys_results.json)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    rows: dict[str, dict[int, dict]] = {r: {} for r in recipes}
    load = {"start": _uptime()}
    for seed in seeds:
        for recipe in recipes:
            run_dir = out / f"{args.model}-{recipe}-{args.epochs}-seed{seed}"
            extra = {"adv_start": args.adv_start} if recipe == "apr" and args.adv_start is not None else {}
            t0 = time.perf_counter()
            if (run_dir / "model.safetensors").exists():
                run = load_recommender(run_dir)
            else:
                run = train_recommender(args.data, model=args.model, recipe=recipe, epochs=args.epochs,
                                        eps=args.eps, seed=seed, out_dir=run_dir,
                                        resume=(run_dir / "metadata.json").exists(), **extra)
            wall = time.perf_counter() - t0
            ctx = Context.from_split(run.split)
            rec = {"train_seconds": run.metadata["train_seconds"], "wall_seconds": wall,
                   "embedding_norms": run.metadata["embedding_norms"], "threats": {}}
            for unit, eps in THREATS:
                m = measure(run.model, ctx, EmbeddingThreat(eps, unit), seed=seed, oracle=("pgd-rank",))
                rec["clean"] = m["clean"]
                rec["threats"][f"{unit} {eps:g}"] = {"worst": {k: v for k, v in m["worst"].items() if k != "attack"},
                                                     "worst_attack": m["worst"]["attack"],
                                                     "per_attack": {a: {"hr@10": v["hr@10"], "ndcg@10": v["ndcg@10"]}
                                                                    for a, v in m["per_attack"].items()},
                                                     "oracle": {a: {"hr@10": v["hr@10"], "ndcg@10": v["ndcg@10"]}
                                                                for a, v in m["oracle"].items()}}
            rows[recipe][seed] = rec
            print(f"{recipe} seed {seed}: clean HR@10 {rec['clean']['hr@10']:.4f} NDCG@10 {rec['clean']['ndcg@10']:.4f} "
                  f"train {rec['train_seconds']:.0f}s; " + "; ".join(
                      f"{k}: {v['worst']['hr@10']:.4f}" for k, v in rec["threats"].items()), flush=True)
    load["end"] = _uptime()
    result = {"data": args.data, "model": args.model, "epochs": args.epochs, "adv_start": args.adv_start or args.epochs // 2,
              "eps": args.eps, "seeds": seeds, "runs": {r: {str(s): v for s, v in d.items()} for r, d in rows.items()},
              "load": load, "torch": torch.__version__, "cpus": os.cpu_count()}
    Path(args.json or out / "recsys_results.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "unknown"


def table(result: dict) -> str:
    """Markdown: per recipe, median [min, max] over seeds of HR@10 / NDCG@10 clean and per threat (worst case)."""
    def cell(values: list[float]) -> str:
        s = summarize(values)
        return f"{s['median']:.4f} [{s['min']:.4f}, {s['max']:.4f}]"

    threats = list(next(iter(next(iter(result["runs"].values())).values()))["threats"])
    lines = ["| recipe | figure | clean | " + " | ".join(f"worst case, eps {t}" for t in threats) + " | train s |",
             "|---|---|---|" + "---|" * len(threats) + "---|"]
    for recipe, runs in result["runs"].items():
        for fig in ("hr@10", "ndcg@10"):
            vals = [cell([r["threats"][t]["worst"][fig] for r in runs.values()]) for t in threats]
            train = cell([r["train_seconds"] for r in runs.values()]) if fig == "hr@10" else ""
            lines.append(f"| {recipe} | {fig.upper().replace('@', '@')} | {cell([r['clean'][fig] for r in runs.values()])} | "
                         + " | ".join(vals) + f" | {train} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
