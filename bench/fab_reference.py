"""armor's FAB-T against the original's (fra31/auto-attack FABAttack_PT, targeted, 9 targets, 100 iterations)
on the same models and points: per-point robust flags at eps, and wall time.

Run in a bench venv that has the original on its path (never a dependency of armor):

    PYTHONPATH=/path/to/auto-attack bench-venv/bin/python bench/fab_reference.py --n 500

Models: the bench's Fashion-MNIST small CNNs (standard and FGSM-RS trained, bench/common.py, cached) and the
digits MLP of the tests with and without the boosted logits (tests/test_fab.py). Prints a markdown table.
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
from armor.attacks import fab_t  # noqa: E402


def digits_models():
    from sklearn.datasets import load_digits

    from conftest import DigitsNet, _train
    from test_fab import BoostedLogits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:]
    torch.manual_seed(0)
    base = _train(DigitsNet(), x[tr], y[tr])
    return {"digits-mlp": base, "digits-mlp-boosted": BoostedLogits(base).eval()}, x[te], y[te]


def original_fab_t(model, x, y, norm, eps, steps):
    from autoattack.fab_pt import FABAttack_PT

    attack = FABAttack_PT(model, norm={"linf": "Linf", "l2": "L2", "l1": "L1"}[norm], n_restarts=1, n_iter=steps,
                          eps=eps, seed=0, targeted=True, n_target_classes=9, device="cpu")
    return attack.perturb(x, y)


def robust_after(model, x_adv, x, y, threat):
    with torch.no_grad():
        correct = model(x_adv).argmax(1) == y
    return correct | ~threat.contains(x_adv, x)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    xf, yf = load_fashion_mnist("test")
    xf, yf = xf[:args.n], yf[:args.n]
    cases = [("fashion-cnn-fgsm-rs", train("fgsm-rs", epochs=5, n_train=20000, verbose=False), xf, yf, "linf", 0.1),
             ("fashion-cnn-fgsm-rs", train("fgsm-rs", epochs=5, n_train=20000, verbose=False), xf, yf, "l2", 1.0),
             ("fashion-cnn-standard", train("standard", epochs=2, n_train=20000, verbose=False), xf, yf, "linf",
              0.03)]
    dm, xd, yd = digits_models()
    cases += [(name, m, xd, yd, "linf", 0.1) for name, m in dm.items()]
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = []
    for name, model, x, y, norm, eps in cases:
        threat = armor.ThreatModel(norm, eps)
        with torch.no_grad():
            clean = model(x).argmax(1) == y
        xc, yc = x[clean], y[clean]
        t = time.perf_counter()
        ours = fab_t(model, xc, yc, threat, steps=args.steps)
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        theirs = original_fab_t(model, xc, yc, norm, eps, args.steps)
        t_theirs = time.perf_counter() - t
        r_ours, r_theirs = robust_after(model, ours, xc, yc, threat), robust_after(model, theirs, xc, yc, threat)
        n = x.shape[0]
        rows.append(f"| {name} | {norm} {eps:g} | {n} | {r_ours.sum().item() / n:.4f} | {r_theirs.sum().item() / n:.4f} | "
                    f"{int((~r_ours & r_theirs).sum())} | {int((r_ours & ~r_theirs).sum())} | {t_ours:.1f} | "
                    f"{t_theirs:.1f} | {t_ours / t_theirs:.2f} |")
        print(rows[-1], flush=True)
    uptime_end = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\nFAB-T {args.steps} iterations, 9 targets, 1 restart; robust accuracy over all n points (clean "
          f"mistakes count as broken); threads {args.threads}.\nload at start: {uptime}\nload at end: {uptime_end}")
    print("| model | threat | n | armor FAB-T | original FAB-T | only armor broke | only original broke | "
          "armor s | original s | time ratio |\n|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
