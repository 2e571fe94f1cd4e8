"""armor's RayS against the authors' reference implementation (uclaml/RayS), on the same points.

Both run the hard-label linf search on the PGD-trained Fashion-MNIST small CNN of bench/common.py (eps 0.1),
on the clean-correct points among the first N test points, with the paper's budget of 10000 queries:

* ADBD mode (every point runs to its budget): the decision-boundary distance per point and the points inside
  eps, armor's ``rays_search(stop_inside=False)`` against the reference's ``attack_hard_label``;
* robust-accuracy mode: armor's ``rays`` search (early stop once inside the ball; tests/test_decision.py
  checks that ``rays`` returns its projection) against the reference's
  ``stop_queries`` (the queries at which it first came inside eps), and the time each took.

The reference is read from a ``fetch``ed snapshot (git show), run in place with two shims: ``.cuda()`` is the
identity (it hard-codes GPUs) and its terminal progress bar is silenced (it needs ``stty``). Nothing of it is
copied into armor.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/decision_rays.py --n 200 [--write]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_fashion_mnist, train  # noqa: E402
from shard_common import write_subsection  # noqa: E402

from armor import ThreatModel  # noqa: E402
from armor.attacks import rays_search  # noqa: E402

MIRROR = Path("/work/.mirror/uclaml+RayS/repo")


def reference_rays():
    """The authors' RayS class, imported from the snapshot (shims: no GPU, no terminal)."""
    src = subprocess.run(["git", "--git-dir", str(MIRROR), "show", "HEAD:RayS.py"], capture_output=True,
                         text=True, check=True).stdout
    sys.modules["pgbar"] = types.SimpleNamespace(progress_bar=lambda *a, **k: None)
    torch.Tensor.cuda = lambda self, *a, **k: self  # the reference calls .cuda() on every tensor it makes
    mod = types.ModuleType("rays_reference")
    exec(compile(src, "uclaml/RayS/RayS.py", "exec"), mod.__dict__)
    return mod.RayS


class LabelOnly:
    """The reference's model interface: predicted labels only."""

    def __init__(self, model):
        self.model = model

    def predict_label(self, x):
        with torch.no_grad():
            return self.model(x).argmax(1)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--queries", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    model = train("pgd", epochs=5, n_train=20000, eps=0.1)
    x, y = load_fashion_mnist("test")
    x, y = x[:args.n], y[:args.n]
    with torch.no_grad():
        right = model(x).argmax(1) == y
    x, y = x[right], y[right]
    threat = ThreatModel("linf", args.eps)
    RayS = reference_rays()

    rows = {"ref_dist": [], "ref_stop_q": [], "ref_succ": [], "arm_dist": [], "arm_q_full": [],
            "arm_stop_q": [], "arm_fooled": []}
    secs = {"ref": [0.0, 0.0], "armor_adbd": [0.0, 0.0], "armor_robust": [0.0, 0.0]}
    for i in range(0, x.shape[0], args.batch):
        xb, yb = x[i:i + args.batch], y[i:i + args.batch]
        t, c = time.perf_counter(), cpu()
        ref = RayS(LabelOnly(model), epsilon=args.eps)
        _, stop_q, dist, succ = ref.attack_hard_label(xb, yb, query_limit=args.queries)
        secs["ref"][0] += time.perf_counter() - t
        secs["ref"][1] += cpu() - c
        rows["ref_dist"].append(dist)
        rows["ref_stop_q"].append(stop_q)
        rows["ref_succ"].append(succ)
        t, c = time.perf_counter(), cpu()
        found = rays_search(model, xb, yb, threat, n_queries=args.queries, stop_inside=False)
        secs["armor_adbd"][0] += time.perf_counter() - t
        secs["armor_adbd"][1] += cpu() - c
        rows["arm_dist"].append(found.distance)
        rows["arm_q_full"].append(found.queries)
        t, c = time.perf_counter(), cpu()
        stopped = rays_search(model, xb, yb, threat, n_queries=args.queries)  # what `rays` runs, with its queries
        x_adv = threat.project(stopped.x_best, xb)  # and what `rays` returns
        secs["armor_robust"][0] += time.perf_counter() - t
        secs["armor_robust"][1] += cpu() - c
        with torch.no_grad():
            rows["arm_fooled"].append(model(x_adv).argmax(1) != yb)
        assert bool(threat.contains(x_adv, xb).all()) and bool(((x_adv >= 0) & (x_adv <= 1)).all())
        rows["arm_stop_q"].append(stopped.queries)
        print(f"batch {i // args.batch + 1}: done", flush=True)
    r = {k: torch.cat(v) for k, v in rows.items()}
    n = x.shape[0]
    ref_rob = 1 - r["ref_succ"].float().mean().item()
    arm_rob = 1 - r["arm_fooled"].float().mean().item()
    same_dist = (r["ref_dist"] == r["arm_dist"]).float().mean().item()
    rel = ((r["ref_dist"] - r["arm_dist"]).abs() / r["ref_dist"]).max().item()
    fooled = r["ref_succ"]
    q_ref = r["ref_stop_q"][fooled].float()
    q_arm = r["arm_stop_q"][fooled].float()
    load_after = os.getloadavg()
    table = f"""RayS (Chen & Gu 2020; hard-label, linf) against the authors' reference code (uclaml/RayS, run from a
`fetch`ed snapshot with `.cuda()` as the identity), on the PGD-trained Fashion-MNIST small CNN of bench/common.py,
eps {args.eps}, the {n} clean-correct points of the first {args.n} test points, {args.queries} queries, batches of
{args.batch}; 1 torch thread, load {load_before[0]:.1f} before and {load_after[0]:.1f} after (`os.getloadavg`).
Command: `OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/decision_rays.py --n {args.n} --write`.

| | reference | armor |
|---|---|---|
| robust accuracy on these points (eps {args.eps}) | {ref_rob:.4f} | {arm_rob:.4f} |
| points whose verdict differs | {int((r['ref_succ'] != r['arm_fooled']).sum())} of {n} | |
| median decision-boundary distance (ADBD mode, full budget) | {r['ref_dist'].median().item():.5f} | {r['arm_dist'].median().item():.5f} |
| mean decision-boundary distance (the paper's ADBD) | {r['ref_dist'].mean().item():.5f} | {r['arm_dist'].mean().item():.5f} |
| points with the identical distance | | {same_dist:.1%} (largest relative difference {rel:.2e}) |
| median queries to come inside eps (fooled points) | {q_ref.median().item():.0f} | {q_arm.median().item():.0f} |
| mean queries to come inside eps (fooled points) | {q_ref.mean().item():.1f} | {q_arm.mean().item():.1f} |
| full-budget run: wall s / CPU s | {secs['ref'][0]:.1f} / {secs['ref'][1]:.1f} | {secs['armor_adbd'][0]:.1f} / {secs['armor_adbd'][1]:.1f} |
| robust-accuracy run (`rays`'s search, early stop): wall s / CPU s | | {secs['armor_robust'][0]:.1f} / {secs['armor_robust'][1]:.1f} |
"""
    print(table)
    if args.write:
        write_subsection("RayS against its reference", table)


if __name__ == "__main__":
    main()
