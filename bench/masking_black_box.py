"""Calibration of the masking check ``black_box_beats_white_box``: how many points does Square alone fool?

For honest models (standard and PGD-AT training; digits MLP and small-cnn, the tests' DigitsNet, breast-cancer
MLP, Fashion-MNIST small-cnn; several training and attack seeds, budgets, sample sizes) and deliberately masked
ones (input quantisation, ``x.round()``-style preprocessing, a binarising step, saturated softmax), this runs the
check's own attacks with its own seed streams (PGD-10, PGD-S x R, Square-Q; :mod:`armor.metrics.masking`) on the
first n test points and records per run the counts (of the n points):

    clean   correct on clean inputs        m   correct after both PGD runs
    weak, strong, square                       correct after each attack
    k       fooled by Square among the m ("Square alone"); fooled by any attack = clean - (m - k)

and whether the old rule (Square's accuracy 5 points below PGD's) fires; ``--summary`` adds whether the current
rule (:func:`armor.metrics.masking.black_box_decision`) fires. Results append to
``bench/.cache/masking_black_box.jsonl`` (one line per run, resumable). bench/MASKING_BLACK_BOX.md holds the
tables of the run that set the defaults (the comment at ``BLACK_BOX_NOISE_RATE`` in masking.py quotes them).

    .venv/bin/python bench/masking_black_box.py            # measure what is missing, then summarise
    .venv/bin/python bench/masking_black_box.py --summary  # only summarise
    .venv/bin/python bench/masking_black_box.py --families fashion --budgets default  # what the Fashion rows ran
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from armor import ThreatModel
from armor.attacks import pgd, square
from armor.engine import correct_after, predict_logits

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / ".cache"
RUNS = CACHE / "masking_runs"
OUT = CACHE / "masking_black_box.jsonl"

BUDGETS = {  # name -> (weak steps, strong steps, strong restarts, Square queries)
    "default": (10, 100, 3, 1000),  # masking_checks' defaults
    "tests": (10, 50, 2, 300),  # tests/test_metrics_masking.py's BUDGET
}


# ------------------------------------------------------------------------------------------- masked models
class Pre(nn.Module):
    """``net(f(x))`` for a fixed, non-differentiable (or gradient-killing) preprocessing ``f``."""

    def __init__(self, net: nn.Module, f: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.net, self.f = net, f

    def forward(self, x):
        return self.net(self.f(x))


class Scaled(nn.Module):
    """Logits times ``c``: the softmax is one-hot in float32 for c = 1e4, so CE gradients vanish."""

    def __init__(self, net: nn.Module, c: float = 1e4):
        super().__init__()
        self.net, self.c = net, c

    def forward(self, x):
        return self.net(x) * self.c


class InNormSpace(nn.Module):
    """An ArmorNet with ``f`` applied after its Normalize (tables: rounding in standard deviations)."""

    def __init__(self, net: nn.Module, f: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.net, self.f = net, f

    def forward(self, x):
        return self.net.net(self.f(self.net.normalize(x)))


def quantize(levels: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.round(x * (levels - 1)) / (levels - 1)


def binarize(x: torch.Tensor) -> torch.Tensor:
    """A step at 0.5 through torch.sign: zero gradient, but still in the graph ((x > 0.5).float() is not,
    and armor's PGD raises on it)."""
    return torch.sign(x - 0.5) * 0.5 + 0.5


# ------------------------------------------------------------------------------------------- honest models
def _train(dataset: str, model: str, recipe: str, seed: int, **kw: Any) -> nn.Module:
    from armor.app.config import TrainConfig, train_or_reuse
    from armor.app.rundir import RunDir

    out = RUNS / f"{dataset}-{model}-{recipe}-s{seed}"
    train_or_reuse(TrainConfig(dataset=dataset, model=model, recipe=recipe, seed=seed, out=str(out), quiet=True, **kw))
    return RunDir(out).model().eval()


def _fixture_models() -> tuple[nn.Module, nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    """tests/conftest.py's models, trained the same way: its digits split, DigitsNet standard (Adam, 30 epochs),
    PGD-AT (PGD-7 at linf 0.1, 10 epochs) and retrained on 4-level inputs (test_metrics_masking's Quantized)."""
    sys.path.insert(0, str(BENCH.parent / "tests"))
    from conftest import DigitsNet, _train
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    xtr, ytr, xte, yte = x[perm[:1400]], y[perm[:1400]], x[perm[1400:]], y[perm[1400:]]
    torch.manual_seed(0)
    std = _train(DigitsNet(), xtr, ytr)
    torch.manual_seed(0)
    rob = DigitsNet()
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(rob.parameters(), 1e-3)
    threat = ThreatModel("linf", 0.1)
    for _ in range(10):
        p = torch.randperm(xtr.shape[0], generator=g)
        for i in range(0, xtr.shape[0], 64):
            b = p[i:i + 64]
            xa = pgd(rob, xtr[b], ytr[b], threat, steps=7, generator=g)
            rob.train()
            opt.zero_grad()
            nn.functional.cross_entropy(rob(xa), ytr[b]).backward()
            opt.step()
    torch.manual_seed(0)
    quant = Pre(_train(DigitsNet(), torch.round(xtr * 3) / 3, ytr), quantize(4))
    return std.eval(), rob.eval(), quant.eval(), xte, yte


def cases(families: set[str]) -> Iterator[tuple[str, str, nn.Module, torch.Tensor, torch.Tensor,
                                                  dict[str, ThreatModel], tuple[int, ...], tuple[int, ...]]]:
    """(name, kind, model, x, y, threats, ns, attack seeds); kind is "honest" or "masked"."""
    from armor.data import load_dataset

    if "fixtures" in families:
        std, rob, quant, x, y = _fixture_models()
        threats = {"linf0.03": ThreatModel("linf", 0.03), "linf0.1": ThreatModel("linf", 0.1),
                   "linf0.2": ThreatModel("linf", 0.2), "l2-0.3": ThreatModel("l2", 0.3),
                   "l2-1.0": ThreatModel("l2", 1.0)}
        for name, kind, m in (("standard", "honest", std), ("pgd-at", "honest", rob),
                              ("quantized-retrained", "masked", quant),
                              ("standard+round16", "masked", Pre(std, quantize(17))),
                              ("standard+saturate1e4", "masked", Scaled(std)),
                              ("pgd-at+round16", "masked", Pre(rob, quantize(17))),
                              ("pgd-at+saturate1e4", "masked", Scaled(rob)),
                              ("pgd-at+quantize4", "masked", Pre(rob, quantize(4)))):
            yield f"fixture/digitsnet/{name}", kind, m.eval(), x, y, threats, (50, 200, 397), (0, 1, 2)
    if "digits" in families:
        test = load_dataset("digits", "test")
        threats = {"linf0.05": ThreatModel("linf", 0.05), "linf0.1": ThreatModel("linf", 0.1),
                   "linf0.2": ThreatModel("linf", 0.2), "l2-1.0": ThreatModel("l2", 1.0)}
        for arch in ("mlp", "small-cnn"):
            for recipe in ("standard", "pgd-at"):
                for seed in (0, 1, 2):
                    m = _train("digits", arch, recipe, seed, eps=0.1, epochs=20, batch_size=64, lr=0.05,
                               **({"adv_ratio": 0.5} if recipe == "pgd-at" else {}))
                    name = f"digits/{arch}/{recipe}/s{seed}"
                    yield name, "honest", m, test.x, test.y, threats, (100, 250, 540), (0,)
                    if seed == 0:
                        mthreats = {k: threats[k] for k in ("linf0.1", "l2-1.0")}
                        for tag, masked in (("quantize4", Pre(m, quantize(4))), ("round16", Pre(m, quantize(17))),
                                            ("binarize", Pre(m, binarize)), ("saturate1e4", Scaled(m))):
                            yield (f"{name}+{tag}", "masked", masked.eval(), test.x, test.y, mthreats,
                                   (100, 250, 540), (0,))
    if "breast" in families:
        from armor.domains.tabular.datasets import load_tabular

        tab = load_tabular("breast-cancer")
        threats = {f"std{e}": tab.threat(e) for e in (0.25, 0.5, 1.0)}
        for recipe in ("standard", "pgd-at"):
            for seed in (0, 1, 2):
                m = _train("breast-cancer", "mlp", recipe, seed, eps=0.5, epochs=30, batch_size=64, optimizer="adam")
                name = f"breast-cancer/mlp/{recipe}/s{seed}"
                yield name, "honest", m, tab.test.x, tab.test.y, threats, (50, 171), (0,)
                if seed == 0:
                    for tag, masked in (("round-z", InNormSpace(m, torch.round)), ("saturate1e4", Scaled(m))):
                        yield (f"{name}+{tag}", "masked", masked.eval(), tab.test.x, tab.test.y,
                               {"std0.5": threats["std0.5"]}, (50, 171), (0,))
    if "fashion" in families:
        test = load_dataset("fashion-mnist", "test").subset(1000)
        threats = {"linf0.1": ThreatModel("linf", 0.1), "linf0.2": ThreatModel("linf", 0.2)}
        for recipe in ("standard", "pgd-at"):
            for seed in (0, 1):
                m = _train("fashion-mnist", "small-cnn", recipe, seed, eps=0.1, epochs=8, batch_size=128, lr=0.05,
                           n_train=20000, **({"adv_ratio": 0.5} if recipe == "pgd-at" else {}))
                name = f"fashion/small-cnn/{recipe}/s{seed}"
                yield name, "honest", m, test.x, test.y, threats, (300, 1000), (0,)
                if seed == 0:
                    for tag, masked in (("round255", Pre(m, quantize(256))), ("quantize4", Pre(m, quantize(4))),
                                        ("saturate1e4", Scaled(m))):
                        yield (f"{name}+{tag}", "masked", masked.eval(), test.x, test.y,
                               {"linf0.1": threats["linf0.1"]}, (300,), (0,))


# ------------------------------------------------------------------------------------------- one run
def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, n: int, budget: str,
            seed: int, batch_size: int = 500) -> dict[str, Any]:
    """The check's attacks on the first n points, as masking_checks runs them (same seed streams)."""
    weak_steps, strong_steps, restarts, queries = BUDGETS[budget]
    x, y = x[:n], y[:n]
    clean = predict_logits(model, x, batch_size).argmax(1).cpu() == y.cpu()

    def run(stream: int, fn: Callable, **kw: Any) -> torch.Tensor:
        return correct_after(model, functools.partial(fn, **kw), x, y, threat, batch_size=batch_size, seed=seed,
                             stream=stream, name=fn.__name__) & clean

    t0 = time.perf_counter()
    weak = run(1, pgd, steps=weak_steps)
    strong = run(2, pgd, steps=strong_steps, restarts=restarts)
    sq = run(3, square, n_queries=queries)
    white = weak & strong
    k = int((~sq & white).sum())
    acc = lambda t: float(t.double().mean())  # noqa: E731
    return {"n": int(x.shape[0]), "clean": int(clean.sum()), "weak": int(weak.sum()), "strong": int(strong.sum()),
            "square": int(sq.sum()), "m": int(white.sum()), "k": k,
            "old_rule_fires": acc(sq) < min(acc(weak), acc(strong)) - 0.05,
            "seconds": round(time.perf_counter() - t0, 1)}


def load_rows() -> list[dict[str, Any]]:
    if not OUT.exists():
        return []
    return [json.loads(line) for line in OUT.read_text().splitlines() if line.strip()]


def key(r: dict[str, Any]) -> tuple:
    return r["model"], r["threat"], r["n"], r["budget"], r["seed"]


def collect(families: set[str], budgets: list[str]) -> None:
    done = {key(r) for r in load_rows()}
    CACHE.mkdir(exist_ok=True)
    for name, kind, model, x, y, threats, ns, seeds in cases(families):
        for tname, threat in threats.items():
            for n in ns:
                for budget in budgets:
                    for seed in seeds:
                        k = (name, tname, min(n, x.shape[0]), budget, seed)
                        if k in done:
                            continue
                        r = {"model": name, "kind": kind, "threat": tname, "budget": budget, "seed": seed,
                             **measure(model, x, y, threat, n, budget, seed)}
                        with OUT.open("a") as f:
                            f.write(json.dumps(r) + "\n")
                        print(json.dumps(r), flush=True)


# ------------------------------------------------------------------------------------------- summary
def fooled(r: dict[str, Any]) -> int:
    """Points (correct on clean inputs) that at least one of the three attacks fooled."""
    return r["clean"] - (r["m"] - r["k"])


def _group(r: dict[str, Any]) -> tuple:
    model = r["model"].replace("/s0", "/s*").replace("/s1", "/s*").replace("/s2", "/s*")
    return r["kind"], model, r["threat"], r["budget"], r["n"]


def summary(full: bool = False) -> None:
    from armor.metrics import masking

    rows = load_rows()
    decide = masking.black_box_decision
    for r in rows:
        r["fooled"] = fooled(r)
        r["fires"] = decide(r["k"], r["fooled"])["fires"]
    families: dict[tuple, list] = {}
    for r in rows:
        families.setdefault((r["kind"], re.sub(r"/s\d", "", r["model"])), []).append(r)
    print(f"{len(rows)} runs. Per model (training seeds, threats, budgets, n and attack seeds pooled); k = points "
          "Square alone fooled, f = points any attack fooled; the k/f columns over runs with f >= 20:\n")
    print("| kind | model | runs | n | k | max k/f | min k/f | max k/n | old rule fires | rule fires |")
    print("|---|---|---:|---|---|---|---|---:|---:|---:|")
    for (kind, fam), rs in sorted(families.items()):
        ns = sorted({r["n"] for r in rs})
        big = [r for r in rs if r["fooled"] >= 20]
        hi = max(big, key=lambda r: r["k"] / r["fooled"], default=None)
        lo = min(big, key=lambda r: r["k"] / r["fooled"], default=None)
        ratio = lambda r: f"{r['k']}/{r['fooled']} ({100 * r['k'] / r['fooled']:.0f}%)" if r else "-"  # noqa: E731
        ks = [r["k"] for r in rs]
        print(f"| {kind} | {fam} | {len(rs)} | {ns[0]}..{ns[-1]} | {min(ks)}..{max(ks)} "
              f"| {ratio(hi)} | {ratio(lo)} | {100 * max(r['k'] / r['n'] for r in rs):.1f}% | "
              f"{sum(r['old_rule_fires'] for r in rs)} | {sum(r['fires'] for r in rs)} |")
    print()
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault(_group(r), []).append(r)
    print(f"Per group ({len(groups)} groups; training seeds s* and attack seeds pooled; honest groups where Square "
          "alone fooled nothing are left out unless --full):\n")
    print("| kind | model | threat | budget | n | runs | k (only Square) | fooled by any | max k/fooled | max k/n | "
          "old rule fires | rule fires |")
    print("|---|---|---|---|---:|---:|---|---|---:|---:|---:|---:|")
    for g in sorted(groups):
        rs = groups[g]
        if not full and g[0] == "honest" and max(r["k"] for r in rs) == 0:
            continue
        ks = sorted(r["k"] for r in rs)
        fs = sorted(r["fooled"] for r in rs)
        print(f"| {' | '.join(map(str, g))} | {len(rs)} | {ks[0]}..{ks[-1]} | {fs[0]}..{fs[-1]} | "
              f"{100 * max(r['k'] / max(r['fooled'], 1) for r in rs):.1f}% | "
              f"{100 * max(r['k'] / r['n'] for r in rs):.1f}% | {sum(r['old_rule_fires'] for r in rs)} | "
              f"{sum(r['fires'] for r in rs)} |")
    print(f"\nrule: noise rate {masking.BLACK_BOX_NOISE_RATE}, alpha {masking.BLACK_BOX_ALPHA}, "
          f"min points {masking.BLACK_BOX_MIN_POINTS}")
    for kind in ("honest", "masked"):
        sel = [r for r in rows if r["kind"] == kind]
        if not sel:
            continue
        big = [r for r in sel if r["fooled"] >= 20]
        hi = max(big, key=lambda r: r["k"] / r["fooled"], default=None)
        lo = min(big, key=lambda r: r["k"] / r["fooled"], default=None)
        hi_s = f"{hi['k']}/{hi['fooled']} {key(hi)}" if hi else "-"
        lo_s = f"{lo['k']}/{lo['fooled']} {key(lo)}" if lo else "-"
        print(f"{kind}: {len(sel)} runs; old rule fires on {sum(r['old_rule_fires'] for r in sel)}, this rule on "
              f"{sum(r['fires'] for r in sel)}; k/fooled (fooled >= 20) max {hi_s}, min {lo_s}; k/n max "
              f"{100 * max(r['k'] / r['n'] for r in sel):.1f}% min {100 * min(r['k'] / r['n'] for r in sel):.1f}%")
        odd = [r for r in sel if r["fires"] != (kind == "masked")]
        for r in odd:
            print(f"    {'FIRES' if r['fires'] else 'silent'} {key(r)} k={r['k']} fooled={r['fooled']} n={r['n']}")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--summary", action="store_true", help="only print the tables")
    ap.add_argument("--full", action="store_true", help="also list the honest groups where Square alone fooled nothing")
    ap.add_argument("--families", default="fixtures,digits,breast,fashion")
    ap.add_argument("--budgets", default="default,tests")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if not a.summary:
        collect(set(a.families.split(",")), a.budgets.split(","))
    summary(a.full)


if __name__ == "__main__":
    main(sys.argv[1:])
