"""Shared pieces of the benchmarks: Fashion-MNIST from IDX files, the small CNN of Wong et al. 2020, and
two cached trained copies of it (standard and FGSM-with-random-start adversarial training).

Weights are cached under bench/.cache (gitignored), keyed by the training settings, so repeated benchmark
runs measure attacks, not training.
"""

from __future__ import annotations

import gzip
import json
import platform
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / ".cache"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------------------------------------- data
def read_idx(path: Path) -> np.ndarray:
    """A minimal IDX reader (the MNIST file format), for plain or gzipped files."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} values, found {arr.size}")
    return arr.reshape(shape)


def _find(split_prefix: str, kind: str) -> Path:
    dims = "idx3" if kind == "images" else "idx1"
    for name in (f"{split_prefix}-{kind}-{dims}-ubyte.gz", f"{split_prefix}-{kind}-{dims}-ubyte",
                 f"{split_prefix}-{kind}.gz", f"{split_prefix}-{kind}"):
        p = FASHION_DIR / name
        if p.exists():
            return p
    raise FileNotFoundError(f"no {split_prefix} {kind} IDX file in {FASHION_DIR} (apt-get install dataset-fashion-mnist)")


def load_fashion_mnist(split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as (x float32 N x 1 x 28 x 28 in [0, 1], y int64)."""
    prefix = {"train": "train", "test": "t10k"}[split]
    x = read_idx(_find(prefix, "images"))
    y = read_idx(_find(prefix, "labels"))
    return torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


# ---------------------------------------------------------------------------------------------- model
class SmallCNN(nn.Module):
    """Wong et al. 2020 ("Fast is better than free") MNIST CNN: conv16-4x4/2, conv32-4x4/2, fc100, fc10.

    A plain Module (not a top-level Sequential), so that ART's PyTorchClassifier does not unroll it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 4, stride=2, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, 100)
        self.fc2 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


# ---------------------------------------------------------------------------------------------- training
def _fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float) -> torch.Tensor:
    """FGSM with a uniform random start (Wong et al. 2020), clipped to the eps ball and to [0, 1]."""
    delta = (torch.rand_like(x) * 2 - 1) * eps
    delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
    loss = F.cross_entropy(model(x + delta), y)
    (grad,) = torch.autograd.grad(loss, delta)
    delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1).detach()


def _pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 7) -> torch.Tensor:
    """Madry et al.'s PGD (random start, ``steps`` sign steps of 2.5 eps / steps), written out here so that the
    "pgd" model is trained by no armor code."""
    alpha = 2.5 * eps / steps
    x_adv = (x + (torch.rand_like(x) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def train(kind: str, *, epochs: int, n_train: int = 60000, eps: float = 0.1, seed: int = 0,
          batch_size: int = 128, lr: float = 1e-3, verbose: bool = True) -> nn.Module:
    """Train (or load from the cache) a SmallCNN. ``kind``: "standard", "fgsm-rs" (alpha = 1.25 eps) or "pgd"
    (PGD-7 adversarial training, Madry et al.)."""
    if kind not in ("standard", "fgsm-rs", "pgd"):
        raise ValueError(kind)
    cfg = {"kind": kind, "epochs": epochs, "n_train": n_train, "eps": eps if kind != "standard" else None,
           "seed": seed, "batch_size": batch_size, "lr": lr, "torch": torch.__version__.split("+")[0]}
    key = "-".join(f"{v}" for v in cfg.values() if v is not None)
    path = CACHE / f"smallcnn-{key}.pt"
    model = SmallCNN()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    torch.manual_seed(seed)
    model = SmallCNN()
    x, y = load_fashion_mnist("train")
    x, y = x[:n_train], y[:n_train]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    steps_total = epochs * ((x.shape[0] + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr * 3, total_steps=steps_total) if kind != "standard" else None
    t0 = time.perf_counter()
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], batch_size):
            b = perm[i:i + batch_size]
            xb, yb = x[b], y[b]
            if kind == "fgsm-rs":
                xb = _fgsm_rs(model, xb, yb, eps, 1.25 * eps)
            elif kind == "pgd":
                xb = _pgd(model, xb, yb, eps)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            if sched is not None:
                sched.step()
        if verbose:
            print(f"  [train {kind}] epoch {ep + 1}/{epochs} done, {time.perf_counter() - t0:.1f}s", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    (CACHE / f"smallcnn-{key}.json").write_text(json.dumps({**cfg, "seconds": round(time.perf_counter() - t0, 1)}))
    return model.eval()


# ---------------------------------------------------------------------------------------------- reporting
def machine_info() -> dict[str, str]:
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:  # pragma: no cover
        import os

        nproc = str(os.cpu_count())
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # pragma: no cover
        pass
    return {"nproc": nproc, "cpu": cpu, "torch": torch.__version__, "python": platform.python_version(),
            "threads": str(torch.get_num_threads())}


def replace_section(path: Path, heading: str, body: str) -> None:
    """Replace the markdown section that starts with ``heading`` or append it. The section ends at the next heading
    of the same or a higher level (``## X`` ends at the next ``## ``; ``### X`` at the next ``### `` or ``## ``),
    so a script that owns a subsection rewrites only that subsection."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    level = len(heading) - len(heading.lstrip("#"))
    start = next((i for i, l in enumerate(lines) if l.rstrip() == heading), None)
    new = heading + "\n\n" + body.strip() + "\n"
    if start is None:
        out = text.rstrip() + "\n\n" + new
    else:
        end, fenced = len(lines), False
        for j in range(start + 1, len(lines)):
            fenced ^= lines[j].startswith("```")
            k = len(lines[j]) - len(lines[j].lstrip("#"))
            if not fenced and 0 < k <= level and lines[j][k:k + 1] == " ":
                end = j
                break
        tail = "".join(lines[end:])
        out = "".join(lines[:start]) + new + ("\n" + tail if tail else "")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(out)
    tmp.replace(path)
