"""Certified vs attacked robust accuracy: the two sides of the true robust accuracy, per model and threat.

For digits (small-cnn, 8x8) and Fashion-MNIST (small-cnn, a seeded 10k training subset) at linf 0.1 and l2 0.5:
a standard, a PGD-AT and a CROWN-IBP-trained model (armor's ``ibp`` recipe), each measured on the same test
points by

* attacked accuracy: ``armor.evaluate`` worst case over a suite (default "fast": PGD-10 + APGD-CE), an upper
  bound;
* certified accuracy: ``armor.certify.certify`` with IBP alone (on every point: a point IBP certifies and the
  attack broke would mean an unsound bound, and the script stops) and with CROWN (the cascade IBP -> CROWN-IBP ->
  CROWN) on the points the attack left: a point an attack broke cannot be certified by a sound bound, and CROWN
  costs about 3 s per uncertified 28x28 point on 2 loaded cores, so this gives the same figure for a fraction of
  the time (the soundness of CROWN on points it is run on is what tests/test_certify.py checks).

Weights are cached under bench/.cache/certify (keyed by the settings).

    .venv/bin/python bench/certify.py                 # the table, printed and written to bench/.cache/certify/
    .venv/bin/python bench/certify.py --quick         # tiny sizes, to check the script
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import time
from pathlib import Path

import torch

import armor
from armor.certify import certify
from armor.data import load_dataset
from armor.app.config import normalization_stats
from armor.models import build_model, model_spec
from armor.training import Trainer, load
from armor.training.checkpoint import STATE

CACHE = Path(__file__).resolve().parent / ".cache" / "certify"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="digits,fashion-mnist")
    p.add_argument("--n-test", type=int, default=500, help="digits test points")
    p.add_argument("--fashion-test", type=int, default=200, help="Fashion-MNIST test points")
    p.add_argument("--fashion-train", type=int, default=10000)
    p.add_argument("--suite", default="fast")
    p.add_argument("--threats", default="linf:0.1,l2:0.5", help="norm:eps pairs")
    p.add_argument("--models", default=",".join(RECIPES), help="which rows")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--smoothing", action="store_true", help="instead: randomized smoothing on digits (gaussian "
                   "training, CERTIFY at n0=100, alpha=0.001, --smoothing-n samples)")
    p.add_argument("--smoothing-n", type=int, default=10000)
    return p.parse_args()


SETTINGS = {
    "digits": {"epochs": 30, "eps_warmup": 15, "batch_size": 64, "lr": 0.05},
    "fashion-mnist": {"epochs": 10, "eps_warmup": 5, "batch_size": 128, "lr": 0.05},
}
RECIPES = {"standard": ("standard", {}), "pgd-at": ("pgd-at", {"adv_ratio": 0.5, "steps": 7}),
           "crown-ibp": ("ibp", {"bound": "crown-ibp"})}


def train(dataset: str, data, recipe: str, params: dict, threat, settings: dict, quick: bool):
    key = json.dumps([dataset, len(data), recipe, params, None if threat is None else threat.to_dict(), settings],
                     sort_keys=True)
    run = CACHE / f"{dataset}-{recipe}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    if (run / "metadata.json").exists() and json.loads((run / "metadata.json").read_text())["status"] != "running":
        meta = json.loads((run / "metadata.json").read_text())
        return load(run), meta["train_seconds"]
    mean, std = normalization_stats(data.x)
    torch.manual_seed(0)
    model = build_model(model_spec("small-cnn", data, mean=mean, std=std))
    s = dict(settings)
    if recipe == "standard":
        s.pop("eps_warmup")
    if quick:
        s["epochs"], s["eps_warmup"] = 2, 1
    trainer = Trainer(model, data, recipe=recipe, recipe_params=params, threat=threat, seed=0, out_dir=run,
                      resume=(run / STATE).exists(), info={"dataset": dataset}, **s)
    result = trainer.fit()
    return load(run), result.train_seconds


def smoothing(args: argparse.Namespace) -> None:
    """Randomized smoothing on digits: small-cnn trained with Gaussian noise (sigma 0.25), CERTIFY on the test
    points, certified accuracy of the smoothed classifier against the l2 radius (and at l2 0.5, the table's
    threat), beside the attacked accuracy of the base model at l2 0.5."""
    from armor.certify import smoothed_certify

    full = load_dataset("digits", "train")
    test = load_dataset("digits", "test").subset(50 if args.quick else args.n_test)
    x, y = test.tensors()
    rows = []
    for sigma in (0.25, 0.5):
        model, train_s = train("digits", full, "gaussian", {"sigma": sigma}, None,
                               {k: v for k, v in SETTINGS["digits"].items() if k != "eps_warmup"}, args.quick)
        model.eval()
        cert = smoothed_certify(model, x, sigma, n0=100, n=args.smoothing_n, alpha=0.001)
        res = armor.evaluate(model, (x, y), armor.ThreatModel("l2", 0.5), suite=args.suite, seed=0)
        curve = cert.accuracy_at(y, [0.0, 0.25, 0.5, 0.75, 1.0])
        row = {"sigma": sigma, "n": len(y), "n_samples": args.smoothing_n, "train_s": round(train_s, 1),
               "base_clean": res.clean_accuracy, "base_attacked_l2_0.5": res.robust_accuracy,
               "abstained": float((cert.prediction < 0).double().mean()), "certify_s": cert.seconds,
               "certified": {f"{p['radius']:g}": p["certified_accuracy"] for p in curve}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    load_avg = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "smoothing.json").write_text(json.dumps({"rows": rows, "uptime": load_avg}, indent=1))
    print(f"uptime at the end: {load_avg}")


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    if args.smoothing:
        return smoothing(args)
    rows = []
    for dataset in args.datasets.split(","):
        full = load_dataset(dataset, "train")
        if dataset == "fashion-mnist":
            g = torch.Generator().manual_seed(0)
            n = 1000 if args.quick else args.fashion_train
            full = full.subset(torch.randperm(len(full), generator=g)[:n].sort().values)
        n_test = args.fashion_test if dataset == "fashion-mnist" else args.n_test
        test = load_dataset(dataset, "test").subset(50 if args.quick else n_test)
        x, y = test.tensors()
        settings = SETTINGS[dataset]
        std_model, std_s = train(dataset, full, "standard", {}, None, settings, args.quick)
        for norm, eps in [(t.split(":")[0], float(t.split(":")[1])) for t in args.threats.split(",")]:
            threat = armor.ThreatModel(norm, eps)
            for label, (recipe, params) in RECIPES.items():
                if label not in args.models.split(","):
                    continue
                if recipe == "standard":
                    model, train_s = std_model, std_s
                else:
                    model, train_s = train(dataset, full, recipe, params, threat, settings, args.quick)
                model.eval()
                res = armor.evaluate(model, (x, y), threat, suite=args.suite, seed=0)
                ibp = certify(model, x, y, threat, "ibp")
                crown = certify(model, x, y, threat, "crown", only=res.robust.cpu())
                broken = int((ibp.certified & ~res.robust.cpu()).sum())
                row = {"dataset": dataset, "threat": f"{norm} {eps:g}", "model": label, "n": len(y),
                       "clean": res.clean_accuracy, "certified_ibp": ibp.accuracy, "certified_crown": crown.accuracy,
                       "attacked": res.robust_accuracy, "gap": res.robust_accuracy - crown.accuracy,
                       "train_s": round(train_s, 1), "ibp_s": ibp.seconds, "crown_s": crown.seconds,
                       "attack_s": round(res.seconds, 1), "certified_and_broken": broken}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if broken:
                    raise SystemExit(f"UNSOUND: {broken} points certified by IBP and broken by the attack: {row}")
    load_avg = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / ("quick.json" if args.quick else
                   f"results-{args.datasets}-{args.threats}-{args.models}.json".replace(":", "_"))
    out.write_text(json.dumps({"rows": rows, "uptime": load_avg, "suite": args.suite,
                               "torch": torch.__version__, "threads": args.threads,
                               "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, indent=1))
    print(table(rows))
    print(f"uptime at the end: {load_avg}")


def table(rows: list[dict]) -> str:
    pct = lambda v: f"{v:.1%}"  # noqa: E731
    lines = ["| dataset | threat | model | clean | certified IBP | certified CROWN | attacked | gap | train s | "
             "IBP s | CROWN s | attack s |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['threat']} | {r['model']} | {pct(r['clean'])} | {pct(r['certified_ibp'])} | "
                     f"{pct(r['certified_crown'])} | {pct(r['attacked'])} | {r['gap'] * 100:.1f} pt | {r['train_s']:.0f} | "
                     f"{r['ibp_s']:.1f} | {r['crown_s']:.1f} | {r['attack_s']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
