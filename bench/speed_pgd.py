"""The PGD primitive on CPU: armor.attacks.pgd against the textbook loop, and what would make it faster.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/speed_pgd.py

PGD-10 (linf eps 0.1, step 0.01, random start) on Fashion-MNIST test images and the standard-trained small CNN
of Wong et al. 2020 (bench/common.py, cached), one torch thread. Each round runs every variant once in a
rotated order; the median over rounds of process CPU time and of wall time per call is reported, with `uptime`
before and after. Variants:

- armor: ``armor.attacks.pgd`` (parameters frozen, input gradient only, one clamp per step, per-sample worst
  iterate kept);
- bare loop: the textbook loop (parameters require grad, ``loss.backward()``, sign step, clamp);
- channels_last: armor's pgd on a channels_last copy of the model and input;
- compiled: armor's pgd on ``torch.compile(model)`` (compile time reported apart, after a warm-up);
- batch sizes: armor's pgd at 128, 256, 512 and 1024 images per call (time per image).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attacks import ALPHA, EPS, STEPS, bare_pgd  # noqa: E402  (bench/attacks.py: the same loop as there)
from common import load_fashion_mnist, train  # noqa: E402

import armor  # noqa: E402


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    threat = armor.ThreatModel("linf", EPS)
    model = train("standard", epochs=2, n_train=20000, verbose=False).eval()
    xt, yt = load_fashion_mnist("test")
    x, y = xt[:args.batch].contiguous(), yt[:args.batch].contiguous()
    gen = torch.Generator().manual_seed(0)
    m_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def armor_pgd(m, xx, yy):
        return lambda: armor.attacks.pgd(m, xx, yy, threat, steps=STEPS, step_size=ALPHA, generator=gen)

    variants = {"armor": armor_pgd(model, x, y), "bare loop": lambda: bare_pgd(model, x, y),
                "armor, channels_last": armor_pgd(m_cl, x_cl, y)}
    compile_s = None
    if not args.no_compile:
        compiled = torch.compile(model, dynamic=False)
        c0 = time.process_time()
        armor_pgd(compiled, x, y)()  # compiles the forward and the backward
        compile_s = time.process_time() - c0
        variants["armor, torch.compile"] = armor_pgd(compiled, x, y)
    per_image = {}
    for bs in (128, 256, 512, 1024):
        xb, yb = xt[:bs].contiguous(), yt[:bs].contiguous()
        per_image[bs] = armor_pgd(model, xb, yb)
    names = list(variants)
    for f in list(variants.values()) + list(per_image.values()):
        f()  # warm-up
    cpu: dict[str, list[float]] = {k: [] for k in names + [f"batch {b}" for b in per_image]}
    wall: dict[str, list[float]] = {k: [] for k in cpu}
    up = [uptime()]
    for r in range(args.rounds):
        jobs = [(k, variants[k]) for k in names] + [(f"batch {b}", per_image[b]) for b in per_image]
        jobs = jobs[r % len(jobs):] + jobs[:r % len(jobs)]
        for k, f in jobs:
            c0, t0 = time.process_time(), time.perf_counter()
            xa = f()
            cpu[k].append(time.process_time() - c0)
            wall[k].append(time.perf_counter() - t0)
            assert bool(threat.contains(xa, xt[:xa.shape[0]]).all()), k
    up.append(uptime())
    base = statistics.median(cpu["armor"])
    lines = [f"PGD-{STEPS}, linf eps {EPS}, step {ALPHA}, batch {args.batch} (rows 'batch N': N images), standard-"
             f"trained small CNN, 1 thread, median of {args.rounds} rotated rounds.", "",
             f"Load before: `{up[0]}`; after: `{up[1]}`."
             + (f" torch.compile: {compile_s:.1f} s CPU to compile forward and backward (not in the rows)."
                if compile_s is not None else ""), "",
             "| variant | CPU ms / call (median) | wall ms / call (median) | CPU us / image | armor's CPU / variant's |",
             "|---|---:|---:|---:|---:|"]
    for k in cpu:
        c, w = statistics.median(cpu[k]), statistics.median(wall[k])
        n_img = int(k.split()[1]) if k.startswith("batch ") else args.batch
        ratio = (base / args.batch) / (c / n_img)
        lines.append(f"| {k} | {1000 * c:.1f} | {1000 * w:.1f} | {1e6 * c / n_img:.1f} | {ratio:.2f}x |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
