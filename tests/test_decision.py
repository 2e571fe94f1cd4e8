"""RayS (armor.attacks.decision): label-only, inside the threat model exactly, batched with per-point results,
and its search finds the closed-form boundary of a linear model.

The reference comparison (the authors' code on the same points: identical verdicts and distances) is in
bench/decision_rays.py; these tests need neither the reference nor a trained network beyond the digits MLP.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from armor import ThreatModel
from armor.attacks import all_attacks, get_attack, rays, rays_search
from armor.evaluate import evaluate

EPS = 0.15


class OneHot(nn.Module):
    """The model's decision only: 3 x one-hot of its predicted label (no score survives)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return 3.0 * nn.functional.one_hot(self.model(x).argmax(1), 10).float()


@pytest.fixture(scope="module")
def points(digits, digits_model):
    _, _, x, y = digits
    x, y = x[:48], y[:48]
    with torch.no_grad():
        right = digits_model(x).argmax(1) == y
    return x[right], y[right]


@pytest.fixture(scope="module")
def attacked(points, digits_model):
    x, y = points
    return rays(digits_model, x, y, ThreatModel("linf", EPS), n_queries=600)


@pytest.fixture(scope="module")
def attacked_100(points, digits_model):
    x, y = points
    return rays(digits_model, x, y, ThreatModel("linf", EPS), n_queries=100)


def test_uses_only_the_predicted_labels(points, digits_model, attacked):
    x, y = points
    assert torch.equal(rays(OneHot(digits_model), x, y, ThreatModel("linf", EPS), n_queries=600), attacked)


def test_inside_the_ball_and_bounds_exactly_and_it_fools(points, digits_model, attacked, attacked_100):
    x, y = points
    threat = ThreatModel("linf", EPS)
    assert torch.equal(threat.project(attacked, x), attacked)  # the projection has nothing left to do
    assert (attacked - x).abs().max() <= EPS and attacked.min() >= 0 and attacked.max() <= 1
    with torch.no_grad():
        fooled = digits_model(attacked).argmax(1) != y
    # measured on these 46 points: 600 label queries fool 42 (100 queries: 26); uniform noise in the same ball
    # fools 3 (seed 0; 0-3 over seeds 0-4). RayS is deterministic: these counts do not vary between runs.
    noise = (x + EPS * (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) - 1)).clamp(0, 1)
    with torch.no_grad():
        noise_fooled = digits_model(noise).argmax(1) != y
    assert int(fooled.sum()) >= 0.8 * x.shape[0] and int(fooled.sum()) >= int(noise_fooled.sum()) + 20
    # more queries never make it weaker: the 600-query search passes through the 100-query one and stops a
    # point once it is inside the ball, so every point fooled with 100 queries is fooled with 600
    with torch.no_grad():
        fooled_100 = digits_model(attacked_100).argmax(1) != y
    assert 0 < int(fooled_100.sum()) < int(fooled.sum()) and not (fooled_100 & ~fooled).any()


def test_batched_equals_one_point_at_a_time(points, digits_model, attacked):
    """Each point's search depends on its own labels only: the batch changes nothing."""
    x, y = points
    threat = ThreatModel("linf", EPS)
    single = torch.cat([rays(digits_model, x[i:i + 1], y[i:i + 1], threat, n_queries=600) for i in range(0, 46, 9)])
    assert torch.equal(single, attacked[0:46:9])


def test_finds_the_closed_form_boundary_of_a_linear_model():
    """Two classes, logits (0, w.x + b): along sign rays the nearest linf boundary point is x - sign(w) * m /
    ||w||_1 (m the margin), which RayS's block refinement reaches exactly at single-coordinate blocks; the
    binary search then brackets the distance within its tolerance (tol / sqrt(dim) in linf units)."""
    torch.manual_seed(0)
    dim, n = 16, 12
    w, b = torch.randn(dim), torch.tensor(-0.3)
    model = nn.Sequential(nn.Linear(dim, 1))
    with torch.no_grad():
        model[0].weight.copy_(w[None]), model[0].bias.copy_(b)

    class TwoClass(nn.Module):
        def forward(self, x):
            s = model(x)
            return torch.cat([torch.zeros_like(s), s], 1)

    x = torch.rand(n, dim) * 0.2 + 0.4  # the boundary is < 0.4 away: the bounds [0, 1] never clip the ray
    y = (TwoClass()(x).argmax(1))
    margin = (x @ w + b).abs()
    truth = margin / w.abs().sum()
    assert truth.max() < 0.4
    found = rays_search(TwoClass(), x, y, ThreatModel("linf", 0.01), n_queries=1000, stop_inside=False)
    tol = 1e-3 / dim ** 0.5
    assert (found.distance >= truth - 1e-6).all() and (found.distance <= truth + tol).all(), (found.distance, truth)
    direction = torch.sign(found.x_best - x)
    assert torch.equal(direction, -torch.sign(w) * torch.sign(x @ w + b)[:, None])
    assert (found.queries <= 1000 + 20).all()


def test_registered_for_label_only_models_and_refuses_what_it_cannot_do(points, digits_model, attacked_100):
    spec = all_attacks()["rays"]
    assert spec.norms == ("linf",) and not spec.white_box
    x, y = points
    with pytest.raises(ValueError, match="linf attack"):
        get_attack("rays")(digits_model, x, y, ThreatModel("l2", 0.5))
    # as a suite of its own (`armor evaluate --suite rays`): the worst case of the label-only attack
    r = evaluate(OneHot(digits_model), points, ThreatModel("linf", EPS), ["rays"], attack_kwargs={
        "rays": {"n_queries": 100}})
    with torch.no_grad():
        fooled = digits_model(attacked_100).argmax(1) != y
    assert r.clean_accuracy == 1.0 and torch.equal(r.robust, ~fooled)
