"""The standard suite before and after the clean-point starts (FGSM, FGSM-T, FAB-T-10), side by side in one run:
robust accuracy, per-point differences, time per attack, and where FAB-T-10 pays best in the order.

    .venv/bin/python bench/fab_suite.py --digits-run runs/demo/pgd-at --n-fashion 500

Models: the digits demo's PGD-AT small CNN (a run directory of `armor demo`), the bench's Fashion-MNIST small
CNNs (FGSM-RS and standard training, bench/common.py, cached), and the tests' digits MLP with and without the
boosted logits (tests/test_fab.py), whose true robust accuracy is the plain MLP's. Each model runs the suites
in the order A B B A (A = before, B = after) so that load drifts hit both alike; times are the mean of the two.
The tables go into the "## FAB-T and clean-point starts" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

from common import load_fashion_mnist, train  # noqa: E402

import armor  # noqa: E402
from armor.evaluate import evaluate  # noqa: E402

BEFORE = ["apgd-ce", "apgd-t", "square"]  # the standard suite before this change (linf, l2)
AFTER = "standard"
FAB_FIRST = ["fgsm", "fgsm-t", "fab-t-10", "apgd-ce", "apgd-t", "square"]  # the other order considered


def models(args):
    from armor.data import load_dataset
    from armor.training.checkpoint import load
    from fab_reference import digits_models

    out = []
    if args.digits_run:
        test = load_dataset("digits", "test")
        out.append(("digits small-cnn pgd-at (demo)", load(args.digits_run).eval(), test.x, test.y, 0.1))
    if not args.skip_fashion:
        xf, yf = load_fashion_mnist("test")
        xf, yf = xf[:args.n_fashion], yf[:args.n_fashion]
        out.append(("fashion small-cnn fgsm-rs", train("fgsm-rs", epochs=5, n_train=20000, verbose=False), xf, yf,
                    0.1))
        out.append(("fashion small-cnn standard", train("standard", epochs=2, n_train=20000, verbose=False), xf, yf,
                    0.03))
    dm, xd, yd = digits_models()
    out += [(f"tests' {name}", m, xd, yd, 0.1) for name, m in dm.items()]
    return out


def run(model, x, y, eps, suite):
    t = time.perf_counter()
    r = evaluate(model, (x, y), armor.ThreatModel("linf", eps), suite=suite, seed=0)
    return r, time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--digits-run", default=None, help="run directory of the digits demo's pgd-at model")
    p.add_argument("--n-fashion", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, choices=(1, 2), default=2, help="2: A B B A; 1: A B (a loaded machine)")
    p.add_argument("--order", action="store_true", help="also time FAB-T-10 right after FGSM-T")
    p.add_argument("--skip-fashion", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    loads = [subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()]
    rows, order_rows = [], []
    for name, model, x, y, eps in models(args):
        (a1, ta1), (b1, tb1) = run(model, x, y, eps, BEFORE), run(model, x, y, eps, AFTER)
        ta, tb, tb2 = ta1, tb1, float("nan")
        if args.rounds == 2:
            (b2, tb2), (a2, ta2) = run(model, x, y, eps, AFTER), run(model, x, y, eps, BEFORE)
            assert torch.equal(a1.robust, a2.robust) and torch.equal(b1.robust, b2.robust), "not deterministic"
            ta, tb = (ta1 + ta2) / 2, (tb1 + tb2) / 2
        parts = ", ".join(f"{k} {v['seconds']:.1f}" for k, v in b1.per_attack.items())
        rows.append(f"| {name} | {eps:g} | {x.shape[0]} | {a1.robust_accuracy:.4f} | {b1.robust_accuracy:.4f} | "
                    f"{int((a1.robust & ~b1.robust).sum())} | {int((~a1.robust & b1.robust).sum())} | {ta:.1f} | "
                    f"{tb:.1f} | {tb / ta:.2f} | {parts} |")
        if args.order:
            f, tf = run(model, x, y, eps, FAB_FIRST)
            order_rows.append(f"| {name} | {b1.robust_accuracy:.4f} | {tb1:.1f} / {tb2:.1f} | "
                              f"{f.robust_accuracy:.4f} | {tf:.1f} |")
            print(order_rows[-1], flush=True)
        print(rows[-1], flush=True)
    loads.append(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    body = "\n".join(([
        f"`.venv/bin/python bench/fab_suite.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
        f"(linf, seed 0, {args.threads} thread(s); A = before: APGD-CE, APGD-T, Square-5000; B = after: the "
        "standard suite FGSM, FGSM-T, APGD-CE, FAB-T-10, APGD-T, Square-5000; "
        + ("run A B B A per model, times the mean)." if args.rounds == 2 else "run A then B per model)."),
        "", f"Load at start: `{loads[0]}`; at end: `{loads[-1]}`.", "",
        "| model | eps | n | robust before | robust after | only after broke | only before broke | before s | "
        "after s | ratio | after, per attack (s) |", "|---|---|---|---|---|---|---|---|---|---|---|", *rows])
        + (["", "Where FAB-T-10 goes: after APGD-CE (the standard order) against right after FGSM-T (more points):",
            "", "| model | after APGD-CE: robust | s (two runs) | after FGSM-T: robust | s |", "|---|---|---|---|---|",
            *order_rows] if order_rows else []))
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
