"""What the standard suite costs per point on a CIFAR-10-size model, for the README's scale plan.

Three measurements, on PreAct ResNet-18 (armor's CIFAR-10 model, 3x32x32 inputs, random weights: the cost of a
pass does not depend on the weights) with 1 torch thread:

1. passes per point: the standard suite at its full budgets on a point that no attack breaks (labels = the
   model's own predictions, eps 1e-6), counted with armor's PassCounter on a tiny model of the same input shape
   (the counts depend on the budgets, not on the network, as long as nothing is broken);
2. seconds per forward and per backward pass per point of PreAct ResNet-18, in batches of ``--batch``;
3. a check of the cost model: the suite with every budget cut tenfold (APGD 10 steps, FAB-T 1 step, Square
   500 queries) timed on PreAct ResNet-18, against counts x seconds per pass.

Then 10k CIFAR-10 points: an upper bound (every clean-correct point survives the suite, so pays all of it) and
an estimate with a stated robust share; on a GPU with a stated speed-up over this CPU core.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/shard_cost.py [--write]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info  # noqa: E402
from shard_common import write_subsection  # noqa: E402

from armor import ThreatModel  # noqa: E402
from armor.attacks import attack_mode  # noqa: E402
from armor.evaluate import evaluate, resolve_suite  # noqa: E402
from armor.models import build_model  # noqa: E402
from armor.training import PassCounter  # noqa: E402

SHAPE = (3, 32, 32)
TENTH = {"apgd-ce": {"steps": 10}, "apgd-t": {"steps": 10}, "fab-t-10": {"steps": 1}, "square": {"n_queries": 500}}


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def unbroken(model: nn.Module, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return x, model(x).argmax(1)


def count_passes(attack_kwargs=None) -> dict[str, dict[str, float]]:
    """Forward and backward passes per point of each attack of the standard suite, nothing broken."""
    torch.manual_seed(0)
    tiny = build_model({"name": "mlp", "input_shape": list(SHAPE), "num_classes": 10, "hidden": [32]}).eval()
    x, y = unbroken(tiny, 20)
    threat = ThreatModel("linf", 1e-6)
    out = {}
    for name in resolve_suite("standard", threat):
        counter = PassCounter().attach(tiny)
        r = evaluate(tiny, (x, y), threat, [name], batch_size=20, seed=0,
                     attack_kwargs={name: (attack_kwargs or {}).get(name, {})} if (attack_kwargs or {}).get(name) else None)
        counter.detach()
        assert r.robust_accuracy == 1.0, (name, r.robust_accuracy)  # nothing broken: full budgets
        out[name] = {"forward": (counter.forward - 20) / 20, "backward": counter.backward / 20}  # minus the clean pass
    return out


def pass_seconds(model: nn.Module, batch: int, repeats: int) -> tuple[float, float]:
    """CPU seconds per point of one forward pass, and of one backward pass (input gradient, attack mode)."""
    x, y = unbroken(model, batch)
    with attack_mode(model):
        with torch.no_grad():
            model(x)
            c = cpu()
            for _ in range(repeats):
                model(x)
            fwd = (cpu() - c) / repeats / batch
        xr = x.clone().requires_grad_(True)
        torch.autograd.grad(nn.functional.cross_entropy(model(xr), y), xr)
        c = cpu()
        for _ in range(repeats):
            xr = x.clone().requires_grad_(True)
            torch.autograd.grad(nn.functional.cross_entropy(model(xr), y), xr)
        fwd_bwd = (cpu() - c) / repeats / batch
    return fwd, fwd_bwd - fwd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--check-n", type=int, default=20, help="points of the tenth-budget check on ResNet-18")
    ap.add_argument("--gpu-rate", type=float, default=10000.0,
                    help="assumed images/s of one forward+backward pass of PreAct ResNet-18 on one data-centre "
                         "GPU (A100 class, fp32, batches of 500); a forward alone is taken as 3x faster")
    ap.add_argument("--robust-share", type=float, default=0.5)
    ap.add_argument("--clean-share", type=float, default=0.85)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load = [os.getloadavg()[0]]
    counts, tenth = count_passes(), count_passes(TENTH)
    torch.manual_seed(0)
    model = build_model({"name": "preact-resnet18", "input_shape": list(SHAPE), "num_classes": 10}).eval()
    t_f, t_b = pass_seconds(model, args.batch, 3)
    load.append(os.getloadavg()[0])
    x, y = unbroken(model, args.check_n)
    t, c = time.perf_counter(), cpu()
    r = evaluate(model, (x, y), ThreatModel("linf", 1e-6), "standard", batch_size=args.check_n, attack_kwargs=TENTH)
    check_wall, check_cpu = time.perf_counter() - t, cpu() - c
    load.append(os.getloadavg()[0])
    assert r.robust_accuracy == 1.0
    # the check's batch is smaller than --batch: its per-pass cost is measured at its own batch size too
    t_f_check, t_b_check = pass_seconds(model, args.check_n, 3)

    def cost(c: dict, tf: float, tb: float) -> float:
        return sum(v["forward"] * tf + v["backward"] * tb for v in c.values())

    predicted = cost(tenth, t_f_check, t_b_check) * args.check_n
    per_point = cost(counts, t_f, t_b)
    g_f = 1 / args.gpu_rate / 3
    per_point_gpu = cost(counts, g_f, 1 / args.gpu_rate - g_f)
    speedup = per_point / per_point_gpu
    passes = {k: f"{v['forward']:.0f} / {v['backward']:.0f}" for k, v in counts.items()}
    n = 10000
    upper = n * args.clean_share * per_point
    typical = n * args.clean_share * args.robust_share * per_point
    hours = lambda s: f"{s / 3600:.1f} h"  # noqa: E731
    gpu = lambda s, k=1: f"{s / speedup / k / 60:.1f} min"  # noqa: E731
    info = machine_info()
    rows = "\n".join(f"| {k} | {passes[k]} | {counts[k]['forward'] * t_f + counts[k]['backward'] * t_b:.1f} |"
                     for k in counts)
    table = f"""Per-point cost of the `standard` suite on PreAct ResNet-18 (3x32x32, armor's CIFAR-10 model) on one core of
{info['cpu']} (torch {info['torch']}, 1 thread), load {', '.join(f'{v:.1f}' for v in load)} during the run.
Command: `OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/shard_cost.py {" ".join(sys.argv[1:])}`.

CPU seconds per point and pass, batches of {args.batch}: forward {t_f * 1e3:.2f} ms, backward (input gradient)
{t_b * 1e3:.2f} ms. Passes per point of a point no attack breaks (counted with PassCounter at full budgets):

| attack | forward / backward passes per point | CPU s per point |
|---|---|---|
{rows}
| **suite** | | **{per_point:.0f}** |

Check of the cost model: the suite with every budget cut tenfold on {args.check_n} unbroken points of ResNet-18 took
{check_cpu:.1f} CPU s ({check_wall:.1f} s wall); counts x seconds per pass (measured at that batch size) predict
{predicted:.1f} CPU s (ratio {check_cpu / predicted:.2f}).
"""
    plan = f"""**Scale plan: 10,000 CIFAR-10 test points under the `standard` suite** (PreAct ResNet-18). A point costs
only what it survives: a point some attack breaks leaves the suite there, so nearly all of the time goes to the
points that stay robust to the end, each of which pays the whole suite: {sum(v['forward'] for v in counts.values()):.0f}
forward and {sum(v['backward'] for v in counts.values()):.0f} backward passes (Square's 5000 queries and APGD-T's 9 x 100
steps are most of it). Measured on one core of this CPU: **{per_point:.0f} CPU s per robust point** (bench/RESULTS.md,
"Sharding and decision-based attacks"; the per-pass model was checked against a timed run to a ratio of
{check_cpu / predicted:.2f}).

| | upper bound: every clean-correct point robust ({args.clean_share:.0%} clean) | typical adversarially trained model ({args.robust_share:.0%} of clean-correct points robust) |
|---|---|---|
| one CPU core | {hours(upper)} | {hours(typical)} |
| one GPU (assumed, {speedup:.0f}x one core: see below) | {gpu(upper)} | {gpu(typical)} |
| 8 GPUs (`torchrun --nproc_per_node 8`) | {gpu(upper, 8)} | {gpu(typical, 8)} |

The GPU rows are an assumption, not a measurement (there is no GPU here): one A100-class GPU doing
{args.gpu_rate:,.0f} forward+backward passes of PreAct ResNet-18 per second in fp32 at batches of 500 (a forward alone
3x faster), which makes {per_point_gpu:.2f} s per robust point, {speedup:.0f}x one core of this CPU. Measure it with
`armor evaluate --device cuda` on a few hundred points before planning a budget on it. N processes divide the time by N as long as each has whole batches to work on: the worst case
deals the global batches of each attack round-robin, so with 10,000 points in batches of 500, at most 20
processes are busy in the first attacks and fewer in the later ones (only the still-robust points are left):
pick `--batch-size` so that the robust points fill N batches or more.
"""
    print(table)
    print(plan)
    if args.write:
        write_subsection("Cost per point of the standard suite", table)


if __name__ == "__main__":
    main()
