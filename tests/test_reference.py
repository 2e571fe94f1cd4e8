"""Agreement with an independent implementation: armor's APGD-CE and standard suite vs torchattacks.

torchattacks (3.5.1, installed with --no-deps: it only needs torch and scipy to import) is a reference, never a
dependency of armor. `make test` (what CI runs) installs it and sets ARMOR_REQUIRE_REFERENCE=1: there a missing
torchattacks fails these tests; elsewhere (a bare `pytest`) they skip, naming the install command.

The model is a small MLP on sklearn's digits, briefly adversarially trained (FGSM with random start, eps 0.1)
so that its robust accuracy is neither ~0 nor ~clean accuracy and a weaker or broken attack shows up as a gap.
On this model repeated runs with other seeds move either library's robust accuracy by under 1 point, so
2 points is a margin for noise, not for bugs.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import armor

try:
    import torchattacks
except Exception as e:  # ImportError, or a torchattacks build that wants torchvision
    torchattacks = None
    _why = f"torchattacks is not importable ({type(e).__name__}: {e}); install it with " \
           "`pip install --no-deps torchattacks==3.5.1` (make install-dev does)"
else:
    _why = ""

# Set by the Makefile's test target: agreement with the reference must run there, so a missing one is a failure.
REQUIRED = os.environ.get("ARMOR_REQUIRE_REFERENCE", "") not in ("", "0")


@pytest.fixture(scope="module")
def ta():
    """The torchattacks module; without it, a failure where the reference is required, else a skip."""
    if torchattacks is None:
        if REQUIRED:
            pytest.fail(f"ARMOR_REQUIRE_REFERENCE is set but {_why}", pytrace=False)
        pytest.skip(_why)
    return torchattacks


TOLERANCE = 0.02  # 2 percentage points of robust accuracy
N_TEST = 397  # the whole held-out split
TA_NORM = {"linf": "Linf", "l2": "L2"}
CASES = [("linf", 0.1), ("l2", 0.5)]


class DigitsMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


@pytest.fixture(scope="module")
def reference_setup():
    """(model, x_test, y_test): digits 1x8x8 in [0, 1], 1400 train / 397 test, FGSM-RS training, ~1 s."""
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(x.shape[0], generator=g)
        tr, te = perm[:1400], perm[1400:1400 + N_TEST]
        xtr, ytr = x[tr], y[tr]
        model = DigitsMLP()
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        eps = 0.1
        for _ in range(30):
            p = torch.randperm(xtr.shape[0], generator=g)
            for i in range(0, xtr.shape[0], 64):
                xb, yb = xtr[p[i:i + 64]], ytr[p[i:i + 64]]
                delta = ((torch.rand(xb.shape, generator=g) * 2 - 1) * eps).requires_grad_(True)
                (grad,) = torch.autograd.grad(F.cross_entropy(model((xb + delta).clamp(0, 1)), yb), delta)
                xb = (xb + (delta.detach() + 1.25 * eps * grad.sign()).clamp(-eps, eps)).clamp(0, 1)
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
    model.eval()
    return model, x[te].contiguous(), y[te].contiguous()


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _run_torchattacks(attack, x, y):
    # torchattacks seeds torch's global RNG inside its attacks: keep that from leaking into other tests.
    with torch.random.fork_rng():
        return attack(x, y)


def test_reference_model_is_meaningful(reference_setup):
    """The comparisons below only mean something if the model is accurate and partly, not fully, robust."""
    model, x, y = reference_setup
    assert _accuracy(model, x, y) > 0.93
    xa = armor.attacks.pgd(model, x, y, armor.ThreatModel("linf", 0.1), steps=20,
                           generator=torch.Generator().manual_seed(0))
    assert 0.4 < _accuracy(model, xa, y) < 0.9


@pytest.mark.parametrize("norm,eps", CASES)
def test_apgd_ce_agrees_with_torchattacks(reference_setup, ta, norm, eps):
    model, x, y = reference_setup
    threat = armor.ThreatModel(norm, eps)
    x_armor = armor.attacks.apgd(model, x, y, threat, loss="ce", steps=100, restarts=1,
                                 generator=torch.Generator().manual_seed(0))
    assert bool(threat.contains(x_armor, x).all())
    ref = ta.APGD(model, norm=TA_NORM[norm], eps=eps, steps=100, n_restarts=1, loss="ce", seed=0)
    x_ref = _run_torchattacks(ref, x, y)
    acc_armor, acc_ref = _accuracy(model, x_armor, y), _accuracy(model, x_ref, y)
    assert abs(acc_armor - acc_ref) <= TOLERANCE, (
        f"APGD-CE {norm} eps {eps}: armor robust acc {acc_armor:.4f} vs torchattacks {acc_ref:.4f}")


@pytest.mark.slow
@pytest.mark.parametrize("norm,eps", CASES)
def test_standard_suite_agrees_with_autoattack(reference_setup, ta, norm, eps):
    """armor's standard suite (APGD-CE, APGD-T, Square) vs torchattacks.AutoAttack(version='standard').

    torchattacks' AutoAttack runs APGD/APGD-T/FAB-T with its default 10 iterations (the original uses 100),
    so it can only be weaker than armor's 100-step suite; a gap in either direction beyond noise is a bug.
    """
    model, x, y = reference_setup
    threat = armor.ThreatModel(norm, eps)
    result = armor.evaluate(model, (x, y), threat, suite="standard", seed=0)
    ref = ta.AutoAttack(model, norm=TA_NORM[norm], eps=eps, version="standard", n_classes=10, seed=0)
    x_ref = _run_torchattacks(ref, x, y)
    acc_ref = _accuracy(model, x_ref, y)
    assert result.clean_accuracy == pytest.approx(_accuracy(model, x, y))
    assert abs(result.robust_accuracy - acc_ref) <= TOLERANCE, (
        f"standard suite {norm} eps {eps}: armor robust acc {result.robust_accuracy:.4f} vs "
        f"torchattacks AutoAttack {acc_ref:.4f} ({result.per_attack})")
