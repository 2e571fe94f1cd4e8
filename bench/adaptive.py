"""Adaptive escalation on the hold-out zoo of masked models: armor's number before (the standard suite) and
after (the escalation its masking flags call for) against each model's best known attack.

    nice -n 10 .venv/bin/python bench/adaptive.py [--fashion 200] [--write]

Models: the zoo of tests/test_adaptive_zoo.py on the tests' digits data (all 397 test points, linf 0.1): a
JPEG-style DCT quantiser, a random shift-and-noise input transformation, the boosted-logit MLP, a thermometer
encoding and a detector that returns a junk output; with ``--fashion N``, also the issue's example, the DCT
quantiser before the bench's PGD-trained Fashion-MNIST small CNN (bench/common.py, cached) on N test points.
armor's side is the app's whole pipeline, :func:`armor.app.measure.measure` (standard suite, curve, masking
checks, escalation), at its defaults. The best known attack is hand-written per model (tests/test_adaptive_zoo.py
``best_known``, full budgets): APGD-CE, APGD-T and APGD-CE x 5 restarts through a hand-written BPDA for the
quantiser and the thermometer (identity; sigmoids at the thresholds), EOT-PGD (200 steps, 64 draws, 3 restarts,
the expected accuracy over 256 fresh draws) for the random model, and the standard suite on the base MLP for the
boosted and detector models (their decisions are the base MLP's). ``--write`` puts the table into the
"## Adaptive escalation" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

import armor  # noqa: E402
from armor.app.measure import measure  # noqa: E402
from test_adaptive_zoo import THREAT, DCTQuantise, IdentityBackward, best_known, build_zoo  # noqa: E402


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def digits_data():
    """The tests' digits split and MLP (tests/conftest.py's fixtures, called as functions)."""
    import conftest

    digits = conftest.digits.__wrapped__()
    return digits, conftest.digits_model.__wrapped__(digits)


def cases(args):
    digits, base = digits_data()
    _, _, xt, yt = digits
    for name, entry in build_zoo(digits, base).items():
        yield f"digits {name}", name, entry, xt, yt, THREAT
    if args.fashion:
        from common import load_fashion_mnist, train

        net = train("pgd", epochs=5, n_train=20000, verbose=False)
        model = nn.Sequential(DCTQuantise(), net).eval()
        xf, yf = load_fashion_mnist("test")
        yield (f"fashion small-cnn pgd-at + dct", "dct", {
            "model": model, "bpda": lambda m: nn.Sequential(IdentityBackward(m[0]), m[1]).eval()},
            xf[:args.fashion], yf[:args.fashion], armor.ThreatModel("linf", 0.1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fashion", type=int, default=0, help="also the DCT quantiser on N Fashion-MNIST points")
    p.add_argument("--only", default=None, help="comma-separated zoo names (dct, random, boosted, ...)")
    p.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    loads = [uptime()]
    rows = []
    for label, name, entry, x, y, threat in cases(args):
        if args.only and name not in args.only.split(","):
            continue
        c0, t0 = cpu(), time.perf_counter()
        best = best_known(name, entry, x, y, threat)
        c_best, t_best = cpu() - c0, time.perf_counter() - t0
        c0, t0 = cpu(), time.perf_counter()
        res, _ = measure(entry["model"], (x, y), threat, n=None, calibration=False, shift=False, interpret=False,
                         seed=0)
        c_armor, t_armor = cpu() - c0, time.perf_counter() - t0
        ad = res.get("adaptive") or {}
        before = res.get("suite_robust_accuracy", res["robust_accuracy"])
        after = res["robust_accuracy"]
        broke = ", ".join(f"{k} {v['broke']:.4g}" for k, v in res["per_attack"].items()
                          if k in ad.get("per_attack", {}) and v.get("broke"))
        flags = ", ".join(f["name"] for f in res["masking_flags"])
        secs = res["eval_seconds"]
        rows.append(f"| {label} | {x.shape[0]} | {best:.4f} | {before:.4f} | {after:.4f} | {100 * (after - best):+.1f} | "
                    f"{flags or '-'} | {broke or '-'} | {t_best:.0f} ({c_best:.0f}) | {secs['worst_case']:.0f} | "
                    f"{secs.get('adaptive escalation', 0):.0f} | {t_armor:.0f} ({c_armor:.0f}) |")
        print(rows[-1], flush=True)
    loads.append(uptime())
    body = "\n".join([
        f"`nice -n 10 .venv/bin/python bench/adaptive.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
        "(linf 0.1, seed 0, 1 thread; armor = `armor.app.measure.measure` at its defaults: standard suite, curve, "
        "masking checks on 300 points, and the escalation the flags call for; best known = the hand-written "
        "adaptive attack of tests/test_adaptive_zoo.py at full budgets). For the random model every number is "
        "the expected accuracy over the model's random draws, except the suite's, which is one draw per point.",
        "", f"Load at start: `{loads[0]}`; at end: `{loads[-1]}`.", "",
        "| model | n | best known | armor before (suite) | armor after (escalated) | after - best (pt) | flags | "
        "what the escalation broke (points) | best known s wall (cpu) | suite s | escalation s | armor total s wall (cpu) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|", *rows])
    print(body)
    if args.write:
        from common import replace_section

        replace_section(BENCH / "RESULTS.md", "## Adaptive escalation", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
