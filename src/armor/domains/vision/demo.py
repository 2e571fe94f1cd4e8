"""`armor demo`: train a standard, a PGD-AT (50/50) and a Fast-AT model, measure all three, and report.

The claims section answers what an organisation asks of adversarial training, on the same test points:
robustness gain, gain under distribution shift and across acquisition equipment, calibration change, cost,
clean-accuracy change, and a "trained against attack A, tested against attack B" matrix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ...app.claims import claims
from ...app.config import TrainConfig, normalization_stats, train_or_reuse
from ...app.measure import add_cost, measure, measurements_for
from ...app.report import write_report
from ...app.results import stamp
from ...app.rundir import RunDir, save_artifacts
from ...data import load_dataset
from ...evaluate import evaluate
from ...metrics import default_eps_grid, equipment_shift
from ...models import build_model, model_spec
from ...threat import ThreatModel
from ...training import Trainer
from ...utils import atomic_write_json


@dataclass(frozen=True)
class DemoPreset:
    dataset: str
    model: str
    eps: float
    l2_eps: float
    epochs: int
    batch_size: int
    lr: float
    n_train: Optional[int]
    n_test: int
    equipment_epochs: int
    square_queries: int = 5000
    curve_points: int = 9
    threads: Optional[int] = None  # tiny models run faster on one thread: intra-op parallelism costs more than it saves


PRESETS = {
    "digits": DemoPreset("digits", "small-cnn", eps=0.1, l2_eps=0.5, epochs=20, batch_size=64, lr=0.05,
                         n_train=None, n_test=540, equipment_epochs=10, square_queries=1000,
                         curve_points=5, threads=1),
    "fashion-mnist": DemoPreset("fashion-mnist", "small-cnn", eps=0.1, l2_eps=1.0, epochs=8, batch_size=128,
                                lr=0.05, n_train=20000, n_test=1000, equipment_epochs=4, square_queries=1000,
                                curve_points=5),
}

RECIPES = (("standard", "standard", {}), ("pgd-at", "pgd-at", {"adv_ratio": 0.5}), ("fast-at", "fast-at", {}))


def run_demo(dataset: str = "digits", out: Path | str = "runs/demo", *, seed: int = 0, quiet: bool = False,
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo end to end; returns the results dict (also written to OUT/results.json)."""
    if dataset not in PRESETS:
        raise ValueError(f"the demo knows {', '.join(PRESETS)}; got {dataset!r}")
    p = PRESETS[dataset]
    out = Path(out)
    if p.threads:
        torch.set_num_threads(p.threads)
    t_start = time.perf_counter()
    threat = ThreatModel("linf", p.eps)
    test = load_dataset(p.dataset, "test").subset(p.n_test)
    models: dict[str, dict[str, Any]] = {}
    artifacts: dict[str, dict[str, Any]] = {}
    loaded: dict[str, torch.nn.Module] = {}
    for name, recipe, params in RECIPES:
        cfg = TrainConfig(dataset=p.dataset, model=p.model, recipe=recipe, eps=p.eps, epochs=p.epochs,
                          batch_size=p.batch_size, lr=p.lr, n_train=p.n_train, seed=seed, out=str(out / name),
                          quiet=quiet, **{k: v for k, v in params.items()})
        how = train_or_reuse(cfg, before=lambda what: say(f"[{name}] {what} ({recipe}, {p.epochs} epochs on "
                                                            f"{p.dataset})"))
        if how == "reused":
            say(f"[{name}] reused the finished run already in {out / name} (same configuration)")
        run = RunDir(out / name)
        model = run.model()
        loaded[name] = model
        say(f"[{name}] measuring: worst case (standard suite), curve, calibration, shift, saliency, masking")
        entry, art = measure(model, test, threat, suite="standard", measurements=measurements_for(p.dataset),
                             n=None, seed=seed,
                             eps_grid=default_eps_grid(p.eps, p.curve_points),
                             attack_kwargs={"square": {"n_queries": p.square_queries}})
        entry.update(run.info())
        entry["threat"] = {"norm": "linf", "eps": p.eps, "eps_unit": "input units"}
        models[name], artifacts[name] = entry, art

    # Attack B at test time that no model trained against: L2.
    l2 = ThreatModel("l2", p.l2_eps)
    for name, model in loaded.items():
        say(f"[{name}] l2 attack (eps {p.l2_eps}), never seen in training")
        r = evaluate(model, test, l2, suite=["apgd-ce"], seed=seed)
        models[name]["l2_robust_accuracy"] = r.robust_accuracy

    # Different equipment: train on device 0 of a seeded family, test on every device.
    train_ds = load_dataset(p.dataset, "train")
    if p.n_train is not None:
        train_ds = train_ds.subset(torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(seed))[:p.n_train])
    for name, recipe, params in RECIPES[:2]:
        say(f"[{name}] equipment shift: training on device 0, testing on 4 devices")

        def train_fn(x, y, recipe=recipe, params=params):
            torch.manual_seed(seed)
            mean, std = normalization_stats(x)
            m = build_model(model_spec(p.model, train_ds, mean=mean, std=std))
            return Trainer(m, (x, y), recipe=recipe, recipe_params=params, threat=threat,
                           epochs=p.equipment_epochs, batch_size=p.batch_size, lr=p.lr, seed=seed,
                           val_steps=0, quiet=True).fit().model

        models[name]["equipment"] = equipment_shift(train_fn, test.x, test.y, x_train=train_ds.x,
                                                    y_train=train_ds.y, n_devices=4, seed=seed)

    add_cost(models)
    results = stamp({"dataset": p.dataset, "models": models, "claims": claims(models, "standard", "pgd-at"),
                     "demo": {"preset": dict(p.__dict__), "seconds": None}})
    results["demo"]["seconds"] = round(time.perf_counter() - t_start, 1)
    atomic_write_json(out / "results.json", results)
    save_artifacts(out / "artifacts.npz", artifacts)
    write_report(results, out / "report.html", artifacts, title=f"armor demo: {p.dataset}")
    return results
