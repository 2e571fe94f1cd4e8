"""Training benchmark: armor's recipes against ART's adversarial trainers on Fashion-MNIST.

Run from the repository root with the bench environment (ART lives there, never in armor's deps):

    .venv-bench/bin/python bench/train.py              # full run, writes the "## Training" section of RESULTS.md
    .venv-bench/bin/python bench/train.py --quick      # tiny sizes, prints only (a smoke test)

Setup: Fashion-MNIST, a seeded random subset of the training images (armor holds out 10% of it for its
per-epoch robust validation; ART trains on exactly the remaining 90%), the small CNN of Wong et al. 2020
(armor's ``small-cnn``: an nn.Module with its Normalize layer, the same architecture and the same initial
weights for every run), linf eps 0.1, batch 128, the same epoch budget for everything, 2 CPU threads.
Every model is evaluated on the first ``--n-test`` test images with ``armor.evaluate``: the "fast" suite
(PGD-10 + APGD-CE, per-sample worst case) for every row, and the full "standard" suite (APGD-CE, APGD-T,
Square-5000) for the rows the target compares (ART MadryPGD and armor's best recipe within ART FBF's training
time), or for every row with ``--standard-all``. On this shared 2-core machine one standard-suite evaluation of
a robust model takes ~7 minutes (Square-5000 alone ~4.5), so evaluating all 14 models with it would take the
benchmark far past its 40-minute budget.

Cost: "epoch cost" is the median wall time of a training epoch (validation excluded) divided by standard
training's, measured in this same run; "passes" is armor's exact count of per-example forward + backward
passes divided by standard training's 2.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # oversubscribed cores: spinning OpenMP threads stall

import argparse  # noqa: E402
import datetime as _dt  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH, machine_info, replace_section  # noqa: E402

import armor  # noqa: E402
from armor.data import load_dataset  # noqa: E402
from armor.models import build_model, model_spec  # noqa: E402
from armor.training import Trainer  # noqa: E402
from armor.app.config import normalization_stats  # noqa: E402

EPS = 0.1


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=10000, help="training subset (10% of it is armor's validation)")
    p.add_argument("--n-test", type=int, default=1000, help="test images for the worst-case evaluation")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps", type=int, default=7, help="PGD steps K for every PGD-based recipe (ART Madry too)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--standard-all", action="store_true", help="standard-suite evaluation for every row")
    p.add_argument("--cost-rounds", type=int, default=5, help="rounds of the interleaved epoch-cost measurement")
    p.add_argument("--cost-n", type=int, default=2560, help="images per epoch in the cost measurement")
    p.add_argument("--quick", action="store_true", help="tiny sizes; print only")
    p.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    return p.parse_args()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        full = load_dataset("fashion-mnist", "train")
        g = torch.Generator().manual_seed(0)
        self.data = full.subset(torch.randperm(len(full), generator=g)[:args.n_train].sort().values)
        self.test = load_dataset("fashion-mnist", "test").subset(args.n_test)
        self.mean, self.std = normalization_stats(self.data.x)
        self.threat = armor.ThreatModel("linf", EPS)
        self.rows: list[dict] = []

    def model(self) -> nn.Module:
        torch.manual_seed(0)
        return build_model(model_spec("small-cnn", self.data, mean=self.mean, std=self.std))

    def evaluate(self, model: nn.Module) -> dict:
        res = armor.evaluate(model.eval(), self.test.tensors(), self.threat, suite="fast", seed=0)
        out = {"clean": res.clean_accuracy, "robust": res.robust_accuracy, "eval_s": res.seconds,
               "robust_std": None, "model": model}
        if self.args.standard_all:
            self.evaluate_standard(out)
        return out

    def evaluate_standard(self, row: dict) -> None:
        if row["robust_std"] is None:
            res = armor.evaluate(row["model"].eval(), self.test.tensors(), self.threat, suite="standard", seed=0)
            row["robust_std"], row["eval_std_s"] = res.robust_accuracy, res.seconds
            print(f"  {row['name']:<28} standard suite: robust {res.robust_accuracy:.3f} "
                  f"(clean {res.clean_accuracy:.3f}, {res.seconds:.0f}s)", flush=True)

    # ------------------------------------------------------------------ armor
    def armor(self, label: str, recipe: str, params: dict, **kw) -> dict:
        trainer = Trainer(self.model(), self.data, recipe=recipe, recipe_params=params, threat=self.threat,
                          epochs=self.args.epochs, batch_size=128, seed=0, quiet=True, **kw)
        self.train_split = (trainer.x, trainer.y)
        t0 = time.perf_counter()
        result = trainer.fit()
        total = time.perf_counter() - t0
        model = self.model()
        model.load_state_dict(result.best_state or result.model.state_dict())
        h = result.history
        n = sum(r["n"] for r in h)
        row = {"name": label, "framework": "armor", "recipe": recipe, "params": params,
               "train_s": sum(r["seconds"] for r in h), "total_s": total,
               "epoch_s": statistics.median(r["seconds"] for r in h), "passes": len(h),
               "pass_ratio": sum(r["forward"] + r["backward"] for r in h) / (2 * n),
               "best_epoch": result.best_epoch, "last_model": result.model, **self.evaluate(model)}
        self._log(row)
        return row

    # ------------------------------------------------------------------ ART
    def art(self, label: str, kind: str) -> dict:
        from art.defences.trainer import AdversarialTrainerFBFPyTorch, AdversarialTrainerMadryPGD
        from art.estimators.classification import PyTorchClassifier

        x, y = self.train_split
        x_np, y_np = x.numpy(), np.eye(10, dtype=np.float32)[y.numpy()]
        model = self.model()
        if kind == "madry":
            # ART's Madry trainer keeps the optimizer's learning rate constant: Adam's default suits that.
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        else:
            # FBF sets the learning rate itself (cyclic, peak 0.21) on the optimizer's first group.
            opt = torch.optim.SGD(model.parameters(), lr=0.21, momentum=0.9, weight_decay=5e-4)
        clf = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), optimizer=opt, input_shape=(1, 28, 28),
                                nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
        steps = self.args.steps
        if kind == "madry":
            trainer = AdversarialTrainerMadryPGD(clf, nb_epochs=self.args.epochs, batch_size=128, eps=EPS,
                                                 eps_step=2.5 * EPS / steps, max_iter=steps, num_random_init=1)
            trainer.attack.set_params(batch_size=128)  # ART's default is 32: give it armor's batch size
        else:
            trainer = AdversarialTrainerFBFPyTorch(clf, eps=EPS)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(x_np, y_np, nb_epochs=self.args.epochs, batch_size=128)
        total = time.perf_counter() - t0
        row = {"name": label, "framework": "ART", "recipe": kind, "params": {}, "train_s": total, "total_s": total,
               "epoch_s": total / self.args.epochs, "passes": self.args.epochs, "pass_ratio": None,
               "best_epoch": None, **self.evaluate(model)}
        self._log(row)
        return row

    def _log(self, row: dict) -> None:
        self.rows.append(row)
        print(f"  {row['name']:<28} train {row['train_s']:7.1f}s  epoch {row['epoch_s']:6.2f}s  "
              f"clean {row['clean']:.3f}  robust {row['robust']:.3f}  (eval {row['eval_s']:.0f}s)", flush=True)


def interleaved_costs(b: "Bench", recipes: list[tuple[str, str, dict]], rounds: int, n: int) -> dict[str, float]:
    """Median over rounds of (one epoch of a recipe) / (one epoch of standard training in the same round).

    The recipes run one epoch each, in a rotated order per round, on the same ``n`` images without validation:
    the machine's load drifts over minutes, and this cancels most of it."""
    data = b.data.subset(n)
    ratios: dict[str, list[float]] = {label: [] for label, _, _ in recipes}
    for i in range(rounds):
        order = recipes[i % len(recipes):] + recipes[:i % len(recipes)]
        seconds = {}
        for label, recipe, params in order:
            r = Trainer(b.model(), data, recipe=recipe, recipe_params=params, threat=b.threat, epochs=1,
                        batch_size=128, val_fraction=0.0, quiet=True).fit()
            seconds[label] = r.history[0]["seconds"]
        for label in seconds:
            ratios[label].append(seconds[label] / seconds["standard"])
        print(f"  cost round {i + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.2f}x" for k, v in ratios.items()),
              flush=True)
    return {label: statistics.median(v) for label, v in ratios.items()}


def fmt(v, spec=".1%"):
    return "–" if v is None else format(v, spec)


def main() -> None:
    args = parse_args()
    if args.quick:
        args.n_train, args.n_test, args.epochs, args.steps, args.cost_rounds, args.cost_n = 1000, 100, 1, 3, 2, 256
        args.no_write = True
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    b = Bench(args)
    k = args.steps
    print(f"Fashion-MNIST: {len(b.data)} training images, {len(b.test)} test images, {args.epochs} epochs, "
          f"K={k}, {args.threads} threads", flush=True)
    # Warm up (lazy imports, first-call kernels) so that the standard baseline's epochs are not the slow ones.
    Trainer(b.model(), b.data.subset(512), recipe="fast-at", threat=b.threat, epochs=1, quiet=True).fit()
    print("interleaved epoch cost", flush=True)
    cost_recipes = [("standard", "standard", {}), (f"pgd-at K={k} r=1", "pgd-at", {"steps": k, "adv_ratio": 1.0}),
                    (f"pgd-at K={k} r=0.5", "pgd-at", {"steps": k, "adv_ratio": 0.5}),
                    ("fast-at fgsm-rs", "fast-at", {}), ("fast-at n-fgsm", "fast-at", {"variant": "n-fgsm"})]
    costs = interleaved_costs(b, cost_recipes, args.cost_rounds, args.cost_n)
    std = b.armor("standard", "standard", {})
    main_rows = [
        ("pgd-at r=0.5", "pgd-at", {"steps": k, "adv_ratio": 0.5}),
        ("pgd-at K=2 r=1", "pgd-at", {"steps": 2, "adv_ratio": 1.0}),
        ("pgd-at r=1 (Madry)", "pgd-at", {"steps": k, "adv_ratio": 1.0}),
        ("trades", "trades", {"steps": k}),
        ("mart", "mart", {"steps": k}),
        ("awp (pgd-at r=1)", "awp", {"steps": k}),
        ("fast-at fgsm-rs", "fast-at", {}),
        ("fast-at n-fgsm", "fast-at", {"variant": "n-fgsm"}),
        ("free-at m=4", "free-at", {"replays": 4}),
    ]
    by_name = {"standard": std}
    for label, recipe, params in main_rows:
        by_name[label] = b.armor(label, recipe, params)
    art_madry = b.art(f"MadryPGD (K={k})", "madry")
    art_fbf = b.art("FBF (FGSM-RS)", "fbf")
    main_table = b.rows[:]

    print("adv_ratio sweep", flush=True)
    sweep = []
    for r in (0.0, 0.25, 0.5, 0.75, 1.0):
        key = {0.5: "pgd-at r=0.5", 1.0: "pgd-at r=1 (Madry)"}.get(r)
        row = by_name[key] if key else b.armor(f"pgd-at r={r}", "pgd-at", {"steps": k, "adv_ratio": r})
        # The sweep isolates the effect of r: last weights, no checkpoint selection (which at r = 0 would pick
        # the epoch whose standard model happened to resist PGD best, not the trained one).
        last = armor.evaluate(row["last_model"].eval(), b.test.tensors(), b.threat, suite="fast", seed=0)
        sweep.append((r, {"clean": last.clean_accuracy, "robust": last.robust_accuracy, "epoch_s": row["epoch_s"]}))
        print(f"  sweep r={r:g}: last weights clean {last.clean_accuracy:.3f} robust {last.robust_accuracy:.3f}",
              flush=True)

    # ------------------------------------------------------------------ checks
    base = std["epoch_s"]
    madry_ratio = costs[f"pgd-at K={k} r=1"]
    mixed_ratio = costs[f"pgd-at K={k} r=0.5"]
    fast_ratio = max(costs["fast-at fgsm-rs"], costs["fast-at n-fgsm"])
    budget = art_fbf["train_s"]
    within = [r for r in main_table if r["framework"] == "armor" and r["recipe"] != "standard"
              and r["train_s"] <= budget]
    best = max(within, key=lambda r: r["robust"]) if within else None
    print("standard-suite evaluations for the target", flush=True)
    for row in [art_madry, art_fbf] + ([best] if best else []):
        b.evaluate_standard(row)
    target_ok = best is not None and best["robust_std"] >= art_madry["robust_std"]
    elapsed = time.perf_counter() - t_start

    lines = [
        f"Run {_dt.date.today().isoformat()}, {elapsed / 60:.0f} min in all; machine: "
        + ", ".join(f"{k_}={v}" for k_, v in machine_info().items() if k_ != "threads")
        + f"; torch threads={args.threads}. The machine was shared with other jobs (load average 5-10 on 2 cores "
          f"during development): absolute times are noisy, ratios come from the same run.",
        "",
        f"Fashion-MNIST, small-cnn (Wong et al. 2020), linf eps {EPS}, batch 128, {args.epochs} epochs on a seeded "
        f"subset of {len(b.data)} training images (armor holds out 10% for its per-epoch robust validation and "
        f"trains on {len(b.train_split[1])}; ART trains on the same {len(b.train_split[1])}). PGD-based recipes "
        f"use K={k} steps (step 2.5 eps/K) unless the row says otherwise. armor's rows use the best checkpoint "
        f"by robust validation accuracy (what `armor.load` returns); ART's use the last. Robust accuracy on the "
        f"first {len(b.test)} test images, per-sample worst case: \"fast\" = `armor.evaluate(suite=\"fast\")` "
        f"(PGD-10 + APGD-CE) for every row; \"standard\" = `suite=\"standard\"` (APGD-CE, APGD-T, Square-5000) "
        f"for the rows the target compares{' (all rows)' if args.standard_all else ''}. \"train s\" excludes "
        f"armor's per-epoch validation (PGD-10 on the held-out split).",
        "",
        "| method | train s | s / epoch | epoch cost vs standard | passes vs standard | clean | robust (fast) "
        "| robust (standard) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in main_table:
        note = " (1 pass, 4 replays)" if r["recipe"] == "free-at" else ""
        lines.append(f"| {r['framework']} {r['name']} | {r['train_s']:.1f} | {r['epoch_s']:.2f}{note} | "
                     f"{r['epoch_s'] / base:.2f}x | {fmt(r['pass_ratio'], '.2f') + 'x' if r['pass_ratio'] else '–'} | "
                     f"{fmt(r['clean'])} | {fmt(r['robust'])} | {fmt(r['robust_std'])} |")
    ok = lambda b_: "PASS" if b_ else "FAIL"  # noqa: E731
    lines += [
        "",
        f"Epoch cost, interleaved: each recipe trains one epoch on the same {args.cost_n} images (no validation) in "
        f"a rotated order, {args.cost_rounds} rounds; the ratio to the standard epoch of the same round, median over "
        f"rounds. (The \"epoch cost\" column above divides epochs measured minutes apart, under a load that drifted.)",
        "",
        "| recipe | epoch cost vs standard | per-example passes vs standard (exact) |",
        "|---|---:|---:|",
        *[f"| {label} | {costs[label]:.2f}x | {pass_ratio:.2f}x |" for label, pass_ratio in
          (("standard", 1.0), (f"pgd-at K={k} r=1", (2 * k + 3) / 2), (f"pgd-at K={k} r=0.5", (2 * k + 5) / 2),
           ("fast-at fgsm-rs", 2.0), ("fast-at n-fgsm", 2.0))],
        "",
        "Checks:",
        f"- PGD-AT K={k}, adv_ratio 1: {madry_ratio:.2f}x standard, target <= K+1.2 = {k + 1.2:.1f}x: "
        f"{ok(madry_ratio <= k + 1.2)}; adv_ratio 0.5 (adds the clean pass): {mixed_ratio:.2f}x: "
        f"{ok(mixed_ratio <= k + 1.2)}.",
        f"- Fast-AT (worse of fgsm-rs and n-fgsm): {fast_ratio:.2f}x standard, target <= 2.5x: {ok(fast_ratio <= 2.5)}.",
        f"- Target: armor's best recipe (by the fast suite) among those that trained within ART FBF's training time "
        f"({budget:.0f} s) is "
        + (f"{best['name']} ({best['train_s']:.0f} s): {best['robust_std']:.1%} robust under the standard suite, vs "
           f"ART MadryPGD's {art_madry['robust_std']:.1%} (trained in {art_madry['train_s']:.0f} s): {ok(target_ok)}."
           if best else "none: no armor recipe trained within that time: FAIL."),
        "",
        f"### adv_ratio sweep (pgd-at, K={k})",
        "",
        "loss = (1 - r) CE(clean) + r CE(adv). r = 0 skips the attack (it is standard training, bit for bit: "
        "tested), r = 1 skips the clean pass (Madry). Last weights of each run "
        "(no checkpoint selection, so that only r differs); robust accuracy under the fast suite, as above. "
        "Epoch cost from the runs' own epochs (noisy, see above).",
        "",
        "| adv_ratio | clean | robust (fast) | epoch cost vs standard |",
        "|---:|---:|---:|---:|",
    ]
    for r, row in sweep:
        lines.append(f"| {r:g} | {fmt(row['clean'])} | {fmt(row['robust'])} | {row['epoch_s'] / base:.2f}x |")
    body = "\n".join(lines)
    print("\n" + body)
    if not args.no_write:
        replace_section(BENCH / "RESULTS.md", "## Training", body)
        print(f"\nwrote the '## Training' section of {BENCH / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
