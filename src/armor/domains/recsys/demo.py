"""`armor demo --domain recsys`: MF-BPR vs APR on MovieLens-100k over training seeds, each measured clean and
under every embedding attack, plus item promotion and a fake-profile injection, with the report's section.

The question asked of classifiers, asked of a recommender: does adversarial training (APR) keep the ranking
quality when the embeddings are perturbed within the budget, what does it do to clean quality, and what does it
cost (wall time vs BPR)? Figures are medians over the training seeds with their range.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from ...app.report import write_report
from ...app.results import stamp
from ...utils import atomic_write_json
from .metrics import summarize

PRESETS = {
    "recsys": {"data": "ml-100k", "model": "mf", "epochs": 40, "eps": 0.5, "eps_unit": "absolute",
               "seeds": (0, 1, 2), "eps_grid": (0.0, 0.25, 0.5, 1.0), "n_targets": 3,
               "recipes": (("bpr", "bpr", {}), ("apr", "apr", {"adv_weight": 1.0})),
               "injection": {"n_fake": 10, "n_filler": 30, "strategy": "popular"}},
}
FIGURES = ("hr@10", "ndcg@10", "robust_hr@10", "robust_ndcg@10", "train_seconds")


def run_demo(name: str = "recsys", out: Path | str = "runs/demo", *, seed: int = 0, quiet: bool = False,
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, measure and report the recsys demo; returns the results dict (also OUT/results.json).

    ``seed`` offsets the preset's training seeds (seed 0: seeds 0, 1, 2)."""
    from .evaluate import evaluate_run
    from .injection import injection_attack
    from .threat import EmbeddingThreat
    from .train import train_recommender

    if name not in PRESETS:
        raise ValueError(f"the recsys demo knows {', '.join(PRESETS)}; got {name!r}")
    p = PRESETS[name]
    torch.set_num_threads(1)  # embedding lookups of 512 rows: intra-op threads cost more than they save
    out = Path(out)
    t_start = time.perf_counter()
    threat = EmbeddingThreat(p["eps"], p["eps_unit"])
    per_seed: dict[str, dict[int, dict[str, Any]]] = {label: {} for label, _, _ in p["recipes"]}
    runs: dict[str, Any] = {}
    for s in (seed + k for k in p["seeds"]):
        for label, recipe, options in p["recipes"]:
            run_dir = out / f"{label}-seed{s}"
            say(f"[{label} seed {s}] training {p['model']} {recipe} on {p['data']} ({p['epochs']} epochs, eps "
                f"{p['eps']} {p['eps_unit']})")
            run = train_recommender(p["data"], model=p["model"], recipe=recipe, epochs=p["epochs"], eps=p["eps"],
                                    eps_unit=p["eps_unit"], seed=s, out_dir=run_dir,
                                    resume=(run_dir / "metadata.json").exists(), quiet=quiet, **options)
            say(f"[{label} seed {s}] measuring: clean, {', '.join(('random', 'fgsm', 'pgd', 'pgd-rank'))}, eps curve, "
                f"promotion")
            entry = evaluate_run(run, threat, seed=s, eps_grid=p["eps_grid"], n_targets=p["n_targets"],
                                 progress=lambda msg, label=label, s=s: say(f"[{label} seed {s}] {msg}"))
            per_seed[label][s] = entry
            runs[f"{label}-seed{s}"] = run
    models: dict[str, dict[str, Any]] = {}
    for label, entries in per_seed.items():
        first = dict(entries[min(entries)])
        first["seed_summary"] = {"recipe": label, "n": len(entries), "seeds": sorted(entries),
                                 **{k: summarize([e[k] for e in entries.values()]) for k in FIGURES}}
        models[label] = first
    inj = p.get("injection")
    if inj:
        first_seed = seed + p["seeds"][0]
        target = models["bpr"]["promotion"]["targets"][0]["target"] if models["bpr"].get("promotion") else 0
        for label in per_seed:
            say(f"[{label} seed {first_seed}] injection: {inj['n_fake']} fake users ({inj['strategy']}) for item "
                f"{target}, retraining")
            models[label]["injection"] = injection_attack(runs[f"{label}-seed{first_seed}"], target,
                                                          out_dir=out / f"{label}-seed{first_seed}-poisoned",
                                                          seed=first_seed, quiet=quiet, **inj)
    base, hard = models["bpr"]["seed_summary"], models["apr"]["seed_summary"]
    claims = {"baseline": "bpr", "hardened": "apr", "seeds": base["n"],
              "robust_hr@10_gain": {"median": hard["robust_hr@10"]["median"] - base["robust_hr@10"]["median"],
                                    "per_seed": [a - b for a, b in zip(hard["robust_hr@10"]["values"],
                                                                       base["robust_hr@10"]["values"])]},
              "hr@10_change": {"median": hard["hr@10"]["median"] - base["hr@10"]["median"],
                               "per_seed": [a - b for a, b in zip(hard["hr@10"]["values"], base["hr@10"]["values"])]},
              "time_ratio": hard["train_seconds"]["median"] / max(base["train_seconds"]["median"], 1e-9)}
    results = stamp({"dataset": p["data"], "domain": "recsys", "models": models, "recsys_claims": claims,
                     "demo": {"preset": {k: v for k, v in p.items() if k != "recipes"},
                              "recipes": [r[0] for r in p["recipes"]],
                              "per_seed": {label: {str(s): {k: e[k] for k in FIGURES} for s, e in entries.items()}
                                           for label, entries in per_seed.items()},
                              "seconds": round(time.perf_counter() - t_start, 1)}})
    atomic_write_json(out / "results.json", results)
    write_report(results, out / "report.html", {}, title=f"armor demo: recommenders on {p['data']}")
    return results


__all__ = ["FIGURES", "PRESETS", "run_demo"]
