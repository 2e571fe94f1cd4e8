"""Projections and step rules: property tests against the definitions."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from armor.threat import Norm, ThreatModel, project_l1_ball

NORMS = ["linf", "l2", "l1"]


def _pair(seed, n, d, scale):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g)
    x_adv = x + scale * torch.randn(n, d, generator=g)
    return x, x_adv


@settings(max_examples=60, deadline=None)
@given(norm=st.sampled_from(NORMS), eps=st.floats(0.0, 3.0), seed=st.integers(0, 10_000),
       n=st.integers(1, 6), d=st.integers(1, 40), scale=st.floats(0.0, 2.0))
def test_projection_lands_inside_ball_and_bounds(norm, eps, seed, n, d, scale):
    threat = ThreatModel(norm, eps)
    x, x_adv = _pair(seed, n, d, scale)
    p = threat.project(x_adv, x)
    assert ((p >= 0) & (p <= 1)).all()
    assert (threat.norm_of(p - x) <= eps).all(), threat.norm_of(p - x).max()
    if norm == "linf":
        assert ((p - x).abs() <= eps).all()


@settings(max_examples=60, deadline=None)
@given(norm=st.sampled_from(NORMS), eps=st.floats(0.01, 3.0), seed=st.integers(0, 10_000),
       d=st.integers(1, 40))
def test_points_inside_are_unchanged(norm, eps, seed, d):
    threat = ThreatModel(norm, eps)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, d, generator=g)
    inside = threat.random_init(x, g)
    # shrink strictly inside so that rounding cannot put a point on the boundary
    inside = x + 0.9 * (inside - x)
    assert torch.equal(threat.project(inside, x), inside)


@settings(max_examples=40, deadline=None)
@given(eps=st.floats(0.05, 5.0), seed=st.integers(0, 10_000), d=st.integers(2, 30))
def test_l1_projection_is_the_euclidean_projection(eps, seed, d):
    """Optimality (KKT): the projection is p = sign(v) * max(|v| - theta, 0) for one theta >= 0, and no
    feasible random point is closer to v."""
    g = torch.Generator().manual_seed(seed)
    v = 3 * torch.randn(3, d, generator=g, dtype=torch.float64)
    p = project_l1_ball(v, eps)
    for i in range(3):
        if v[i].abs().sum() <= eps:
            assert torch.equal(p[i], v[i])
            continue
        assert p[i].abs().sum() == pytest.approx(eps, rel=1e-9)
        moved = (p[i] != 0)
        theta = (v[i].abs() - p[i].abs())[moved]
        assert torch.allclose(theta, theta[0].expand_as(theta), atol=1e-9)
        assert (v[i].abs()[~moved] <= theta[0] + 1e-9).all()
        cands = torch.randn(200, d, generator=g, dtype=torch.float64)
        cands = cands / cands.abs().sum(1, keepdim=True) * eps * torch.rand(200, 1, generator=g, dtype=torch.float64)
        assert ((cands - v[i]).norm(dim=1) >= (p[i] - v[i]).norm() - 1e-9).all()


def test_per_feature_bounds_and_eps():
    lo = torch.tensor([0.0, 0.2, -1.0])
    hi = torch.tensor([1.0, 0.5, 1.0])
    eps = torch.tensor([0.1, 0.0, 0.5])
    threat = ThreatModel("linf", eps, bounds=(lo, hi))
    x = torch.tensor([[0.5, 0.3, 0.0]])
    p = threat.project(x + torch.tensor([[1.0, 1.0, -2.0]]), x)
    assert torch.allclose(p, torch.tensor([[0.6, 0.3, -0.5]]))
    assert ((p - x).abs() <= eps).all() and (p >= lo).all() and (p <= hi).all()


@pytest.mark.parametrize("norm", NORMS)
def test_step_has_the_requested_length(norm):
    threat = ThreatModel(norm, 1.0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 8, 8, generator=g) * 0.5 + 0.25
    grad = torch.randn(5, 1, 8, 8, generator=g)
    step = threat.step(x, grad, 0.1) - x
    lengths = threat.norm_of(step)
    assert torch.allclose(lengths, torch.full_like(lengths, 0.1), atol=1e-6)
    # ascent direction: first-order gain is positive
    assert ((step * grad).flatten(1).sum(1) > 0).all()


def test_l1_step_is_sparse_and_skips_blocked_coordinates():
    threat = ThreatModel("l1", 1.0)
    x = torch.tensor([[1.0, 0.5, 0.5, 0.0]])
    grad = torch.tensor([[10.0, 1.0, -2.0, -9.0]])  # the two largest push against the bounds
    step = threat.step(x, grad, 0.4, l1_sparsity=0.25) - x
    assert torch.equal(step, torch.tensor([[0.0, 0.0, -0.4, 0.0]]))


@pytest.mark.parametrize("norm", NORMS)
def test_random_init_is_inside_and_seeded(norm):
    threat = ThreatModel(norm, 0.5)
    x = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    a = threat.random_init(x, torch.Generator().manual_seed(3))
    b = threat.random_init(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert threat.contains(a, x, atol=0).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"norm": "linf", "eps": -0.1}, "eps"),
    ({"norm": "linf", "eps": float("nan")}, "eps"),
    ({"norm": "l3", "eps": 0.1}, "unknown norm"),
    ({"norm": "linf", "eps": 0.1, "bounds": (1.0, 0.0)}, "bounds"),
    ({"norm": "l2", "eps": torch.tensor([0.1, 0.2])}, "per-feature"),
])
def test_bad_threat_models_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ThreatModel(**kwargs)


def test_threat_model_is_frozen_and_round_trips():
    t = ThreatModel("L2", 0.5)
    assert t.norm is Norm.L2
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'eps'"):
        t.eps = 1.0  # type: ignore[misc]
    assert t.eps == 0.5
    t2 = ThreatModel.from_dict(t.to_dict())
    assert t2.to_dict() == t.to_dict()
