"""Data poisoning by fake-user profile injection: the start of the threat line on the interaction data.

An attacker who can register accounts adds ``n_fake`` fake users, each interacting with the target item and
``n_filler`` filler items, so that a model trained on the poisoned data ranks the target higher for the real
users (the "shilling" attacks of recommender-security work, e.g. Lam & Riedl 2004; Mobasher et al. 2007):

* ``random``: fillers drawn uniformly from every item;
* ``popular`` (bandwagon): fillers drawn from the most popular tenth of the items, so that fake profiles look
  like many real ones and the target is pulled towards the popular region of the embedding space.

The budget is the number of fake users and of ratings per fake user (reported with their share of the real
users and interactions). The effect is measured by retraining with the same recipe and seed on the poisoned
data and comparing the target's position among the real users' candidates with the clean model's. This is a
first, simple injection attack; optimised profiles (gradient-based poisoning) are the next step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import Interactions, leave_one_out
from .metrics import positions

STRATEGIES = ("random", "popular")


def inject_profiles(data: Interactions, target: int, *, n_fake: int, n_filler: int, strategy: str = "popular",
                    seed: int = 0) -> Interactions:
    """``data`` plus ``n_fake`` fake users, each with the target and ``n_filler`` distinct filler items.

    Fake users get the indices after the real ones and timestamps after every real interaction, the target
    first (so the leave-one-out split holds out a filler, never the target, and the real users' split is
    unchanged)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown injection strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    for name, v, lo in (("n_fake", n_fake, 1), ("n_filler", n_filler, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not 0 <= int(target) < data.n_items:
        raise ValueError(f"target item {target} is out of range [0, {data.n_items})")
    counts = np.bincount(data.item, minlength=data.n_items)
    if strategy == "popular":
        pool = np.argsort(-counts, kind="stable")[: max(n_filler + 1, data.n_items // 10)]
    else:
        pool = np.arange(data.n_items)
    pool = pool[pool != int(target)]
    if n_filler > pool.size:
        raise ValueError(f"n_filler ({n_filler}) exceeds the {pool.size} items the {strategy!r} strategy draws from")
    rng = np.random.default_rng(seed)
    t0 = float(data.timestamp.max()) + 1.0
    users, items, times = [data.user], [data.item], [data.timestamp]
    for k in range(n_fake):
        fillers = rng.choice(pool, size=n_filler, replace=False)
        u = data.n_users + k
        users.append(np.full(n_filler + 1, u, dtype=np.int64))
        items.append(np.concatenate([[int(target)], fillers]).astype(np.int64))
        times.append(t0 + np.arange(n_filler + 1, dtype=np.float64))
    out = Interactions.from_arrays(np.concatenate(users), np.concatenate(items), data.n_users + n_fake, data.n_items,
                                   np.concatenate(times), source=f"{data.source} + {n_fake} fake users ({strategy})",
                                   min_user_interactions=data.info.get("min_user_interactions", 2))
    out.info.update({"injection": {"target": int(target), "n_fake": int(n_fake), "n_filler": int(n_filler),
                                   "strategy": strategy, "seed": int(seed), "real_users": data.n_users}})
    return out


def target_positions(model: Any, split: Any, target: int, n_real: int) -> torch.Tensor:
    """The target's position (candidates scoring at least as high) for each real user who has not interacted
    with it in training."""
    mask = split.train_matrix()[:n_real]
    users = (~mask[:, target]).nonzero().squeeze(1)
    with torch.no_grad():
        scores = model.score_all(users)
    return positions(scores, torch.full((users.numel(),), int(target), dtype=torch.long), mask[users])


def injection_attack(clean_run: Any, target: int, *, n_fake: int, n_filler: int, strategy: str = "popular",
                     seed: int = 0, out_dir: Any, k: int = 10, quiet: bool = True) -> dict[str, Any]:
    """Retrain ``clean_run``'s recipe on data poisoned for ``target`` and compare the target's rank.

    Arguments:
        clean_run: a loaded run (:func:`.train.load_recommender`); its recipe, threat and seed are reused.
        out_dir: where the poisoned run is written (resumable like any run).
    Returns:
        budget, the target's mean / median position and top-``k`` share among real users before and after, and
        the real users' HR@10 on their held-out items before and after (the poison's cost to utility).
    """
    from .metrics import all_positions, hr_ndcg
    from .train import train_recommender

    meta = clean_run.metadata
    cfg = meta["config"]
    poisoned = inject_profiles(clean_run.data, target, n_fake=n_fake, n_filler=n_filler, strategy=strategy, seed=seed)
    split = leave_one_out(poisoned, cfg["split_seed"])
    n_real = clean_run.data.n_users
    if not np.array_equal(split.test_item[:n_real], clean_run.split.test_item):
        raise AssertionError("the real users' held-out items changed under injection (a bug)")
    kwargs = {"epochs": cfg["epochs"], "eps": cfg["threat"]["eps"], "eps_unit": cfg["threat"]["unit"],
              "dim": cfg["dim"], "batch_size": cfg["batch_size"], "lr": cfg["lr"], "reg": cfg["reg"],
              "seed": cfg["seed"], "split_seed": cfg["split_seed"]}
    if cfg["recipe"] == "apr":
        kwargs.update(adv_start=cfg["adv_start"], adv_weight=cfg["adv_weight"])
    if cfg["model"] == "lightgcn":
        kwargs["layers"] = cfg["layers"]
    out = Path(out_dir)
    run = train_recommender(poisoned, model=cfg["model"], recipe=cfg["recipe"], out_dir=out,
                            resume=(out / "metadata.json").exists(), quiet=quiet, **kwargs)
    before = target_positions(clean_run.model, clean_run.split, target, n_real)
    after = target_positions(run.model, split, target, n_real)
    test = torch.from_numpy(clean_run.split.test_item)
    util_before = hr_ndcg(all_positions(clean_run.model, test, clean_run.train_mask), (10,))
    util_after = hr_ndcg(all_positions(run.model, test, split.train_matrix()[:n_real],
                                       users=torch.arange(n_real)), (10,))
    return {"target": int(target), "strategy": strategy,
            "budget": {"fake_users": int(n_fake), "ratings_per_fake_user": int(n_filler) + 1,
                       "share_of_users": n_fake / n_real,
                       "share_of_interactions": n_fake * (n_filler + 1) / len(clean_run.data)},
            "position_before": {"mean": float(before.double().mean()), "median": float(before.double().median())},
            "position_after": {"mean": float(after.double().mean()), "median": float(after.double().median())},
            f"top{k}_before": float((before < k).double().mean()), f"top{k}_after": float((after < k).double().mean()),
            "real_hr@10_before": util_before["hr@10"], "real_hr@10_after": util_after["hr@10"],
            "poisoned_run": str(out), "train_seconds": run.metadata.get("train_seconds")}


__all__ = ["STRATEGIES", "inject_profiles", "injection_attack", "target_positions"]
