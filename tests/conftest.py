"""Shared fixtures: one small undefended digits model, trained once per test session (~2 s)."""

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

# The tests use tiny models, for which intra-op threads cost more than they save, and CI shares its cores.
torch.set_num_threads(1)


class DigitsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.net(x)


def _train(model, x, y, epochs=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def digits():
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(x.shape[0], generator=g)
    tr, te = perm[:1400], perm[1400:]
    return x[tr], y[tr], x[te], y[te]


@pytest.fixture(scope="session")
def digits_model(digits):
    torch.manual_seed(0)
    xtr, ytr, _, _ = digits
    return _train(DigitsNet(), xtr, ytr)


@pytest.fixture()
def model(digits_model):
    """A fresh copy per test, so mode and requires_grad checks start from a known state."""
    import copy

    return copy.deepcopy(digits_model)


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="session")
def digits_pgd_model(digits):
    """Madry-style adversarial training, kept minimal: every batch replaced by its PGD examples (~2 s)."""
    from armor import ThreatModel
    from armor.attacks import pgd

    xtr, ytr, _, _ = digits
    torch.manual_seed(0)
    model = DigitsNet()
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    threat = ThreatModel("linf", 0.1)
    for _ in range(10):
        perm = torch.randperm(xtr.shape[0], generator=g)
        for i in range(0, xtr.shape[0], 64):
            b = perm[i:i + 64]
            xa = pgd(model, xtr[b], ytr[b], threat, steps=7, generator=g)
            model.train()
            opt.zero_grad()
            nn.functional.cross_entropy(model(xa), ytr[b]).backward()
            opt.step()
    return model.eval()


def run_launcher(argv: list[str], env: dict[str, str], timeout: float) -> "subprocess.CompletedProcess[str]":
    """Run a launcher (torchrun) in a session of its own, so that a timeout ends its workers too, not only the
    launcher; a timeout fails the test with the end of its stderr."""
    import os
    import signal
    import subprocess

    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{argv[2] if len(argv) > 2 else argv[0]} timed out: {stderr[-3000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
