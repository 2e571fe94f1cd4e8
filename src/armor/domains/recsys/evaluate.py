"""Measure a trained recommender: clean ranking metrics, each attack's, the worst case, an eps curve and the
promotion of target items.

The **worst case** is the strongest single attack of the suite, per metric (:func:`.attacks.worst_case`): an
embedding attack perturbs the whole system at once, so unlike a classifier's per-point worst case, users cannot
each be given their own worst attack.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence

import torch

from .attacks import DEFAULT_SUITE, ORACLE, Context, promote_item, promotion_targets, run_attack, worst_case
from .metrics import KS, all_positions, hr_ndcg
from .threat import EmbeddingThreat, mean_row_norms


def measure(model: Any, ctx: Context, threat: EmbeddingThreat, *, attacks: Sequence[str] = DEFAULT_SUITE,
            ks: Sequence[int] = KS, seed: int = 0, eps_grid: Optional[Sequence[float]] = None,
            curve_attacks: Optional[Sequence[str]] = None, n_targets: int = 0, oracle: Sequence[str] = (),
            progress: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Clean and attacked HR@K / NDCG@K of ``model`` on the held-out items of ``ctx``.

    Returns ``{"clean": {...}, "per_attack": {name: {metrics, seconds}}, "worst": {...}, "curve": [...],
    "promotion": {...}, "oracle": {...}}`` with metrics keyed ``hr@K`` / ``ndcg@K``; the ``oracle`` attacks are
    measured like the others but left out of the worst case.
    """
    say = progress or (lambda msg: None)
    unknown = [a for a in (*attacks, *oracle) if a not in _attack_names()]
    if unknown:
        raise ValueError(f"unknown recsys attack(s) {', '.join(map(repr, unknown))}: choose from "
                         f"{', '.join(_attack_names())}")
    if not attacks:
        raise ValueError("the suite is empty: name at least one attack")
    clean_pos = all_positions(model, ctx.test_item, ctx.train_mask)
    out: dict[str, Any] = {"clean": hr_ndcg(clean_pos, ks), "per_attack": {}}
    if oracle:
        out["oracle"] = {}
    if threat.eps > 0:
        for name in (*attacks, *oracle):
            say(f"attack {name} at eps {threat.eps:g} ({threat.unit})")
            delta, seconds = run_attack(name, model, threat, ctx, seed=seed)
            p = all_positions(model, ctx.test_item, ctx.train_mask, delta)
            rec = {**hr_ndcg(p, ks), "seconds": round(seconds, 3),
                   "delta_norm": {"users": float(delta[0].norm(dim=1).mean()),
                                  "items": float(delta[1].norm(dim=1).mean())}}
            if name in attacks:
                out["per_attack"][name] = rec
            else:
                out["oracle"][name] = rec
        out["worst"] = worst_case(out["per_attack"])
    else:
        out["worst"] = dict(out["clean"])
    if eps_grid:
        cheap = tuple(curve_attacks or attacks)
        say(f"ranking vs eps ({', '.join(f'{e:g}' for e in eps_grid)}) under {', '.join(cheap)}")
        out["curve"] = []
        for e in sorted(set(float(v) for v in eps_grid)):
            t = threat.with_eps(e)
            if e == 0:
                point = hr_ndcg(clean_pos, ks)
                per = {}
            else:
                ms = {a: hr_ndcg(all_positions(model, ctx.test_item, ctx.train_mask,
                                               run_attack(a, model, t, ctx, seed=seed)[0]), ks) for a in cheap}
                point = {k: v for k, v in worst_case(ms).items() if k != "attack"}
                per = {a: m["hr@10"] for a, m in ms.items()}
            out["curve"].append({"eps": e, **point, "per_attack_hr@10": per})
    if n_targets:
        say(f"promoting {n_targets} target item(s)")
        results = [promote_item(model, threat, ctx, t) for t in promotion_targets(ctx, n_targets, seed)]
        out["promotion"] = {"targets": results, "n_targets": len(results),
                            "median_rank_shift": float(torch.tensor([r["median_rank_shift"] for r in results]).median()),
                            "top10_before": float(torch.tensor([r["top10_before"] for r in results]).mean()),
                            "top10_after": float(torch.tensor([r["top10_after"] for r in results]).mean())}
    out["embedding_norms"] = mean_row_norms(model)
    return out


def _attack_names() -> tuple[str, ...]:
    from .attacks import ATTACKS

    return tuple(ATTACKS)


def evaluate_run(run: Any, threat: EmbeddingThreat, *, attacks: Sequence[str] = DEFAULT_SUITE, seed: int = 0,
                 eps_grid: Optional[Sequence[float]] = None, n_targets: int = 3, oracle: Sequence[str] = ORACLE,
                 progress: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """One results.json entry (``"domain": "recsys"``) for a loaded run (:func:`.train.load_recommender`)."""
    t0 = time.perf_counter()
    ctx = Context.from_split(run.split)
    m = measure(run.model, ctx, threat, attacks=attacks, seed=seed, eps_grid=eps_grid, n_targets=n_targets,
                oracle=oracle, progress=progress)
    meta = run.metadata
    entry: dict[str, Any] = {
        "domain": "recsys", "name": run.run_dir.name, "run_dir": str(run.run_dir),
        "dataset": meta["config"]["data"].get("source"), "counts": meta.get("counts"),
        "model": meta["model"]["name"], "recipe": meta["recipe"]["name"], "recipe_params": meta["recipe"]["params"],
        "trained_threat": meta.get("threat"), "threat": threat.to_dict(), "n": int(run.split.n_users),
        "suite": list(attacks), "seed": seed,
        **m["clean"],
        **{f"robust_{k}": v for k, v in m["worst"].items() if k != "attack"},
        "clean": m["clean"], "worst": m["worst"], "per_attack": m["per_attack"],
        "embedding_norms": m["embedding_norms"],
        "train_seconds": meta.get("train_seconds"), "cost": meta.get("cost"),
    }
    for key in ("curve", "promotion", "oracle"):
        if key in m:
            entry[key] = m[key]
    entry["eval_seconds"] = {"total": round(time.perf_counter() - t0, 3)}
    return entry


__all__ = ["evaluate_run", "measure"]
