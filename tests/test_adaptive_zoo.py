"""The hold-out zoo of masked models, each with its hand-written best known attack, and armor's escalation
against it (the cheap cases; bench/adaptive.py runs the whole zoo at full budgets).

Every model is built on the tests' digits data (8x8 grey levels k/16) at linf 0.1:

- ``dct``: a JPEG-style quantiser (8x8 DCT, coefficients rounded to a step, inverse DCT) before the digits MLP.
  Best known: APGD-CE and APGD-T with BPDA through exactly the quantiser (identity backward).
- ``random``: a random shift by up to a pixel and Gaussian noise on the input in every forward pass. Best known:
  EOT-PGD with many draws; each point's worst input is chosen with 256 draws and measured with 256 fresh ones.
- ``boosted``: tests/test_fab.py's boosted-logit MLP; decisions are the base MLP's, so the best known attack is
  the standard suite on the base MLP.
- ``thermometer``: a thermometer encoding (16 levels, hard thresholds: no gradient at all) before an MLP trained
  on it. Best known: BPDA with the smooth thermometer (sigmoids at the thresholds), as in Athalye et al. 2018.
- ``detector``: the digits MLP behind a detector that fires off the data's grid of grey levels and then returns a
  junk output (a saturated one-hot of the prediction, cut from the graph). Decisions are the MLP's, so the best
  known attack is the standard suite on the MLP.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import armor
from armor.evaluate import evaluate

EPS = 0.1
THREAT = armor.ThreatModel("linf", EPS)


# --- the zoo ----------------------------------------------------------------------------------------------
def dct_matrix(n: int = 8) -> torch.Tensor:
    """The orthonormal DCT-II basis (rows are frequencies)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d.float()


class DCTQuantise(nn.Module):
    """JPEG-style: 2-D DCT of each 8x8 block (edges padded by replication), coefficients rounded to multiples of
    ``step``, inverse DCT, clipped to [0, 1]. torch.round has a zero gradient."""

    def __init__(self, step: float = 0.5):
        super().__init__()
        self.step = step
        self.register_buffer("d", dct_matrix(8))

    def forward(self, x):
        n, c, h, w = x.shape
        xp = F.pad(x, (0, (-w) % 8, 0, (-h) % 8), mode="replicate")
        hh, ww = xp.shape[2:]
        blocks = xp.view(n, c, hh // 8, 8, ww // 8, 8).transpose(3, 4)
        q = torch.round(self.d @ blocks @ self.d.T / self.step) * self.step
        out = (self.d.T @ q @ self.d).transpose(3, 4).reshape(n, c, hh, ww)
        return out[:, :, :h, :w].clamp(0, 1)


class RandomShiftNoise(nn.Module):
    """A random shift by -1, 0 or +1 pixel in each direction (zero padding) and Gaussian noise of std ``std``,
    drawn anew in every forward pass, also in eval mode."""

    def __init__(self, std: float = 0.15):
        super().__init__()
        self.std = std

    def forward(self, x):
        n, _, h, w = x.shape
        padded = F.pad(x, (1, 1, 1, 1))
        crops = torch.stack([padded[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)])
        pick = torch.randint(0, 9, (n,), device=x.device)
        return crops[pick, torch.arange(n, device=x.device)] + self.std * torch.randn_like(x)


class Thermometer(nn.Module):
    """Thermometer encoding: channel j is 1 where the pixel exceeds (j + 0.5) / levels (hard threshold, cut from
    the graph)."""

    def __init__(self, levels: int = 16):
        super().__init__()
        self.register_buffer("t", (torch.arange(levels, dtype=torch.float32) + 0.5) / levels)

    def forward(self, x):
        return (x > self.t.view(1, -1, 1, 1)).float()


class SmoothThermometer(nn.Module):
    """The hand-written BPDA backward of :class:`Thermometer`: exact forward, sigmoid-relaxed backward."""

    def __init__(self, hard: Thermometer, temperature: float = 0.02):
        super().__init__()
        self.hard, self.temperature = hard, temperature

    def forward(self, x):
        soft = torch.sigmoid((x - self.hard.t.view(1, -1, 1, 1)) / self.temperature)
        return soft + (self.hard(x) - soft).detach()


class IdentityBackward(nn.Module):
    """The hand-written BPDA backward of a layer that keeps the shape: exact forward, identity backward."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return x + (self.layer(x) - x).detach()


class Detector(nn.Module):
    """``net`` behind a detector that fires when the input leaves the data's grid of ``levels`` grey levels (by
    more than 1e-3 on average) and then returns a junk output: a saturated one-hot of ``net``'s prediction, cut
    from the graph. Decisions are ``net``'s everywhere; the gradient is zero wherever the detector fires."""

    def __init__(self, net: nn.Module, levels: int = 17):
        super().__init__()
        self.net, self.steps = net, levels - 1

    def forward(self, x):
        z = self.net(x)
        with torch.no_grad():
            off = (x * self.steps - torch.round(x * self.steps)).abs().flatten(1).mean(1) > 1e-3
            junk = 1e4 * F.one_hot(z.argmax(1), z.shape[1]).to(z)
        return torch.where(off[:, None], junk, z)


def _mlp(inputs: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, 128), nn.ReLU(), nn.Linear(128, 10))


def build_zoo(digits, digits_model) -> dict[str, dict]:
    """name -> {"model", and what its best known attack needs}; trains the thermometer and random MLPs (~4 s)."""
    from conftest import _train
    from test_fab import BoostedLogits

    xtr, ytr, _, _ = digits
    thermo = Thermometer(16)
    torch.manual_seed(0)
    thermo_net = _train(nn.Sequential(thermo, _mlp(16 * 64)), xtr, ytr)
    torch.manual_seed(0)
    random_net = _train(nn.Sequential(RandomShiftNoise(), _mlp(64)), xtr, ytr)  # trained under its randomness
    return {
        "dct": {"model": nn.Sequential(DCTQuantise(), digits_model).eval(),
                "bpda": lambda m: nn.Sequential(IdentityBackward(m[0]), m[1]).eval()},
        "random": {"model": random_net},
        "boosted": {"model": BoostedLogits(digits_model).eval(), "base": digits_model},
        "thermometer": {"model": thermo_net,
                        "bpda": lambda m: nn.Sequential(SmoothThermometer(m[0]), m[1]).eval()},
        "detector": {"model": Detector(digits_model).eval(), "base": digits_model},
    }


# --- the best known attacks -------------------------------------------------------------------------------
def eot_pgd(model, x, y, threat, *, steps=100, draws=32, step_size=None, seed=0):
    """EOT-PGD (linf): each step follows the sign of the cross-entropy gradient averaged over ``draws`` random
    draws of the model; random start; returns the last iterate."""
    g = torch.Generator().manual_seed(seed)
    alpha = step_size or 2.5 * threat.eps_scalar / steps * 4
    xa = threat.random_init(x, generator=g)
    with torch.random.fork_rng(devices=[]):  # the model's draws, seeded
        torch.manual_seed(seed)
        for _ in range(steps):
            xa.requires_grad_(True)
            with torch.enable_grad():
                loss = sum(F.cross_entropy(model(xa), y, reduction="sum") for _ in range(draws))
                (grad,) = torch.autograd.grad(loss, xa)
            xa = threat.project(xa.detach() + alpha * grad.sign(), x)
    return xa.detach()


def expected_accuracy(model, x, y, draws=256, seed=12345):
    """Per point: the share of ``draws`` fresh random draws that classify x correctly."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        return torch.stack([(model(x).argmax(1) == y).double() for _ in range(draws)]).mean(0)


def best_known(name, entry, x, y, threat, *, budget="full"):
    """The best known attack's robust accuracy on zoo model ``name`` (expected accuracy for ``random``)."""
    small = budget != "full"
    kw = {"apgd-ce": {"steps": 50}, "apgd-t": {"steps": 30}, "square": {"n_queries": 500}} if small else None
    if "base" in entry:  # identical decisions: the base model's worst case under the standard suite
        return evaluate(entry["base"], (x, y), threat, suite="standard", attack_kwargs=kw).robust_accuracy
    if "bpda" in entry:
        suite = ["apgd-ce", "apgd-t"] + ([] if small else ["apgd-ce-x5"])
        stand_in = entry["bpda"](entry["model"])
        return evaluate(stand_in, (x, y), threat, suite=suite,
                        attack_kwargs={k: v for k, v in (kw or {}).items() if k in suite} or None).robust_accuracy
    model = entry["model"]
    steps, draws, restarts = (50, 16, 1) if small else (200, 64, 3)
    chosen, per_point = x.clone(), expected_accuracy(model, x, y)
    for r in range(restarts):  # each point's worst input over the restarts (and the clean one) ...
        xa = eot_pgd(model, x, y, threat, steps=steps, draws=draws, seed=r)
        now = expected_accuracy(model, xa, y)
        chosen[now < per_point], per_point = xa[now < per_point], torch.minimum(per_point, now)
    # ... measured there with fresh draws: the minimum of estimates over the same draws would be biased low
    return float(expected_accuracy(model, chosen, y, seed=54321).mean())


# --- the tests: armor's escalation against the best known attack ------------------------------------------
N = 120  # test points (of 397); bench/adaptive.py runs them all, at full budgets and with the whole pipeline
ESCALATION = {"apgd-ce": {"steps": 50}, "apgd-t": {"steps": 30}}  # the budgets of best_known(budget="small")


@pytest.fixture(scope="module")
def zoo(digits, digits_model):
    return build_zoo(digits, digits_model)


def armor_escalated(entry, x, y, attacks=("apgd-ce", "apgd-t")):
    """armor's path at test budgets: a short suite, the cheap masking checks that fire on these models, and the
    escalation they call for (transfer is tested in test_adaptive.py)."""
    from armor.adaptive import escalate
    from armor.metrics import masking_checks

    model = entry["model"]
    suite = evaluate(model, (x, y), THREAT, suite=["fgsm", "fgsm-t", "apgd-ce"], keep_adv=True,
                     attack_kwargs={"apgd-ce": {"steps": 30}})
    flags = masking_checks(model, x, y, THREAT, checks=["zero_gradients", "randomized_outputs"], n=N)["flags"]
    found = escalate(model, x, y, THREAT, flags, base=suite, attack_kwargs=ESCALATION, draws=16, score_draws=128,
                     transfer=False, attacks=attacks)
    return suite, flags, found


# Measured at these budgets (120 points, seed 0; every draw is seeded, so nothing varies between runs), best
# known / short suite / escalated: dct 0.3583 / 0.9000 / 0.3500 (BPDA-APGD-CE broke 53 points, BPDA-APGD-T 13);
# thermometer 0.0750 / 0.9583 / 0.0833 (101 and 4); random, expected accuracy, 0.3620 / 0.2167 (one draw) /
# 0.3732 (both re-measured with fresh draws at the chosen inputs; with 32 draws armor's selection's own estimate,
# 0.3651, was 2.4 pt below its fresh one). The boosted and detector models are caught by the standard suite itself (bench/adaptive.py).
@pytest.mark.parametrize("name,broke", [("dct", "bpda-apgd-ce"), ("thermometer", "bpda-apgd-ce"),
                                        ("random", "eot-apgd-ce")])
def test_escalation_reaches_the_best_known_attack(zoo, digits, name, broke):
    _, _, x, y = digits
    x, y = x[:N], y[:N]
    entry = zoo[name]
    best = best_known(name, entry, x, y, THREAT, budget="small")
    suite, flags, found = armor_escalated(entry, x, y, ("apgd-ce",) if name == "random" else ("apgd-ce", "apgd-t"))
    assert found is not None, f"no escalation on {name}: flags {[f['name'] for f in flags]}"
    assert found.robust_accuracy <= best + 0.02
    if name != "random":  # a random model's suite number is a single draw, not an expectation
        assert found.robust_accuracy < found.suite_robust_accuracy - 0.05
    assert found.per_attack[broke]["broke"] > 0 and found.broken_points[broke]
