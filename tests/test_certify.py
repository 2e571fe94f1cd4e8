"""armor.certify: the bounds are sound (random points, corners and a strong attack never leave them; nothing
certified is ever broken), they agree with an exact enumeration and an LP (scipy.optimize.linprog) on a small
network, CROWN is at least as tight as IBP (and much tighter on undefended networks), unknown layers are refused,
and randomized smoothing's radius matches an independent Clopper-Pearson computation on fixed counts and never
exceeds the true distance to a linear decision boundary."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats
from torch import nn

import armor
from armor.certify import (certified_radius, certify, chain, clopper_pearson_lower, margin_lower_bounds,
                           output_bounds, smoothed_certify, smoothed_predict)
from armor.models import build_model
from armor.models.nets import Normalize

METHODS = ("ibp", "crown-ibp", "crown")


def _random_net(seed: int, conv: bool) -> nn.Module:
    torch.manual_seed(seed)
    if conv:
        layers = [Normalize([0.4], [0.3]), nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
                  nn.Conv2d(4, 6, 3, stride=1, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 3 * 3, 12),
                  nn.ReLU(), nn.Linear(12, 4)]
    else:
        layers = [Normalize([0.5], [0.25]), nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 16),
                  nn.ReLU(), nn.Linear(16, 4)]
    return nn.Sequential(*layers).double().eval().requires_grad_(False)


def _ball_points(x: torch.Tensor, threat, k: int, gen: torch.Generator) -> torch.Tensor:
    """k points per input inside the threat set: linf corners (the box's extreme points) and uniform points, or
    for l2 / l1 points on the sphere's surface and inside, all projected into the data bounds."""
    xs = x.repeat_interleave(k, 0)
    eps = threat.eps_scalar
    if threat.norm.value == "linf":
        corners = torch.randint(0, 2, xs.shape, generator=gen, dtype=xs.dtype) * 2 - 1
        inside = torch.rand(xs.shape, generator=gen, dtype=xs.dtype) * 2 - 1
        d = torch.where(torch.rand(len(xs), 1, 1, 1, generator=gen, dtype=xs.dtype) < 0.5, corners, inside) * eps
    else:
        g = torch.randn(xs.shape, generator=gen, dtype=xs.dtype)
        if threat.norm.value == "l1":  # sparse directions reach the l1 ball's vertices
            g = g * (torch.rand(xs.shape, generator=gen, dtype=xs.dtype) < 0.1)
        size = g.flatten(1).norm(p=2 if threat.norm.value == "l2" else 1, dim=1).clamp_min(1e-12)
        radius = torch.where(torch.rand(len(xs), generator=gen, dtype=xs.dtype) < 0.5, 1.0,
                             torch.rand(len(xs), generator=gen, dtype=xs.dtype))
        d = g / size.view(-1, 1, 1, 1) * (eps * radius).view(-1, 1, 1, 1)
    return threat.project(xs + d, xs)


# ---------------------------------------------------------------------------------------------- soundness
@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.4), ("l1", 1.5)])
def test_output_bounds_contain_the_outputs_of_many_points_in_the_ball(conv, norm, eps):
    gen = torch.Generator().manual_seed(1)
    for seed in range(3):
        net = _random_net(seed, conv)
        ops = chain(net, (1, 6, 6))
        x = torch.rand(4, 1, 6, 6, generator=gen, dtype=torch.float64)
        threat = armor.ThreatModel(norm, eps)
        pts = _ball_points(x, threat, 400, gen)
        assert bool(threat.contains(pts, x.repeat_interleave(400, 0)).all())
        with torch.no_grad():
            out = net(pts).view(4, 400, -1)
        for method in METHODS:
            lo, hi = output_bounds(ops, x, threat, method)
            assert (out >= lo.unsqueeze(1) - 1e-9).all(), (method, seed)
            assert (out <= hi.unsqueeze(1) + 1e-9).all(), (method, seed)


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.3)])
def test_no_point_is_both_certified_and_broken_by_a_strong_attack(norm, eps):
    """Random networks, eps chosen so that some points are certified and the attack breaks others (so both
    sides are exercised): every point CROWN certifies survives APGD-CE and APGD-T."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    certified_total = broken_total = 0
    for seed in range(3):
        net = _random_net(seed, conv=seed % 2 == 1).float()
        x = torch.rand(30, 1, 6, 6, generator=gen)
        with torch.no_grad():
            y = net(x).argmax(1)  # the network's own labels: every point starts correct
        threat = armor.ThreatModel(norm, eps)
        cert = certify(net, x, y, threat, "crown")
        res = armor.evaluate(net, (x, y), threat, suite=["apgd-ce", "apgd-t"], seed=seed)
        assert not bool((cert.certified & ~res.robust).any()), f"seed {seed}: certified and broken"
        certified_total += int(cert.certified.sum())
        broken_total += int((~res.robust).sum())
    assert certified_total >= 15 and broken_total >= 15, (certified_total, broken_total)


# ---------------------------------------------------------------------------------------------- agreement
def _one_hidden(seed: int, n_in: int = 3, hidden: int = 5, out: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, out)).double().eval().requires_grad_(False)


def _exact_min(net: nn.Sequential, c: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """min of c · net(x) over the box [lo, hi], exactly: one LP per ReLU activation pattern (linprog)."""
    w1, b1 = net[0].weight.detach().numpy(), net[0].bias.detach().numpy()
    w2, b2 = net[2].weight.detach().numpy(), net[2].bias.detach().numpy()
    a = c @ w2
    best = math.inf
    for pattern in itertools.product((0, 1), repeat=len(b1)):
        s = np.array(pattern, dtype=float)
        # active: w1 x + b1 >= 0  ->  -w1 x <= b1; inactive: w1 x + b1 <= 0
        sign = np.where(s == 1, -1.0, 1.0)
        res = optimize.linprog((a * s) @ w1, A_ub=sign[:, None] * w1, b_ub=-sign * b1, bounds=list(zip(lo, hi)),
                               method="highs")
        if res.status == 0:
            best = min(best, res.fun + (a * s) @ b1 + c @ b2)
    return best


def _triangle_lp(net: nn.Sequential, c: np.ndarray, lo: np.ndarray, hi: np.ndarray, l: np.ndarray, u: np.ndarray
                 ) -> float:
    """The LP relaxation with the triangle (tightest convex) relaxation of every unstable ReLU on [l, u]."""
    w1, b1 = net[0].weight.detach().numpy(), net[0].bias.detach().numpy()
    w2, b2 = net[2].weight.detach().numpy(), net[2].bias.detach().numpy()
    n, h = len(lo), len(b1)
    # variables: x (n), z (h) = relu output
    cost = np.concatenate([np.zeros(n), c @ w2])
    rows, rhs = [], []
    bounds = list(zip(lo, hi))
    for i in range(h):
        if u[i] <= 0:
            bounds.append((0, 0))
        elif l[i] >= 0:  # z = w1 x + b1
            bounds.append((None, None))
            for sgn in (1, -1):
                rows.append(np.concatenate([-sgn * w1[i], sgn * np.eye(h)[i]]))
                rhs.append(sgn * b1[i])
        else:  # z >= 0, z >= w1 x + b1, z <= u (w1 x + b1 - l) / (u - l)
            bounds.append((0, None))
            rows.append(np.concatenate([w1[i], -np.eye(h)[i]]))
            rhs.append(-b1[i])
            k = u[i] / (u[i] - l[i])
            rows.append(np.concatenate([-k * w1[i], np.eye(h)[i]]))
            rhs.append(k * (b1[i] - l[i]))
    res = optimize.linprog(cost, A_ub=np.array(rows) if rows else None, b_ub=np.array(rhs) if rhs else None,
                           bounds=bounds, method="highs")
    assert res.status == 0
    return res.fun + c @ b2


@pytest.mark.parametrize("seed", range(4))
def test_bounds_agree_with_exact_enumeration_and_the_triangle_lp(seed):
    """ibp <= crown <= triangle LP <= exact minimum (soundness and tightness order), and CROWN is exact where
    every ReLU is stable (the network is affine on the box)."""
    net = _one_hidden(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, generator=gen, dtype=torch.float64) * 0.6 + 0.2
    y = net(x).argmax(1)
    ops = chain(net, (3,))
    c_all = torch.eye(3, dtype=torch.float64)[y] - torch.eye(3, dtype=torch.float64)
    others = [j for j in range(3) if j != int(y)]
    w1, b1 = net[0].weight.detach(), net[0].bias.detach()
    for eps in (0.15, 0.3):
        threat = armor.ThreatModel("linf", eps)
        lo, hi = (x - eps).clamp(0, 1)[0].numpy(), (x + eps).clamp(0, 1)[0].numpy()
        pre_c, pre_r = w1 @ torch.tensor((lo + hi) / 2) + b1, w1.abs() @ torch.tensor((hi - lo) / 2)
        bounds = {m: margin_lower_bounds(ops, x, y, threat, m)[0] for m in METHODS}
        for k, j in enumerate(others):
            c = c_all[j].numpy()
            exact = _exact_min(net, c, lo, hi)
            lp = _triangle_lp(net, c, lo, hi, (pre_c - pre_r).numpy(), (pre_c + pre_r).numpy())
            assert bounds["ibp"][k] <= bounds["crown"][k] + 1e-12
            assert bounds["crown"][k] <= lp + 1e-7, (eps, j)
            assert lp <= exact + 1e-7, (eps, j)
    # a small eps: every ReLU stable, the network is affine on the box, so CROWN is exact and IBP is not
    eps = 1e-3
    threat = armor.ThreatModel("linf", eps)
    lo, hi = (x - eps)[0].numpy(), (x + eps)[0].numpy()
    crown = margin_lower_bounds(ops, x, y, threat, "crown")[0]
    ibp = margin_lower_bounds(ops, x, y, threat, "ibp")[0]
    for k, j in enumerate(others):
        exact = _exact_min(net, c_all[j].numpy(), lo, hi)
        assert crown[k] == pytest.approx(exact, abs=1e-9)
    assert (ibp <= crown + 1e-12).all()


def test_l2_bound_is_exact_where_the_network_is_affine():
    """No ReLU unstable and bounds far away: min of c·f over the l2 ball is c·f(x) - eps ||c J||_2."""
    net = _one_hidden(7, n_in=5, hidden=8)
    x = torch.full((1, 5), 0.5, dtype=torch.float64)
    y = net(x).argmax(1)
    threat = armor.ThreatModel("l2", 1e-3, bounds=(-10.0, 10.0))
    lower = margin_lower_bounds(chain(net, (5,)), x, y, threat, "crown")[0]
    active = (net[0](x) > 0).double()[0]
    jac = net[2].weight.detach() @ (active[:, None] * net[0].weight.detach())
    z = net(x)[0]
    others = [j for j in range(3) if j != int(y)]
    for k, j in enumerate(others):
        g = jac[int(y)] - jac[j]
        assert lower[k] == pytest.approx(float(z[int(y)] - z[j] - 1e-3 * g.norm()), abs=1e-10)


# ---------------------------------------------------------------------------------------------- CROWN vs IBP
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.4)])
def test_crown_is_at_least_as_tight_as_ibp_and_much_tighter_on_undefended_networks(norm, eps):
    gen = torch.Generator().manual_seed(3)
    ratios = []
    for seed in range(3):
        net = _random_net(seed, conv=seed % 2 == 0)
        ops = chain(net, (1, 6, 6))
        x = torch.rand(8, 1, 6, 6, generator=gen, dtype=torch.float64)
        y = net(x).argmax(1)
        threat = armor.ThreatModel(norm, eps)
        m = {k: margin_lower_bounds(ops, x, y, threat, k) for k in METHODS}
        assert (m["crown-ibp"] >= m["ibp"] - 1e-12).all() and (m["crown"] >= m["ibp"] - 1e-12).all()
        lo = {k: output_bounds(ops, x, threat, k) for k in METHODS}
        width = {k: float((v[1] - v[0]).mean()) for k, v in lo.items()}
        assert width["crown"] <= width["crown-ibp"] <= width["ibp"]
        ratios.append(width["crown"] / width["ibp"])
    # measured on these seeds: 0.02..0.4; a CROWN that fell back to IBP would give 1.0
    assert max(ratios) < 0.6, ratios


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("name", ["cnn4", "preact-resnet18"])
def test_models_with_layers_it_cannot_bound_are_refused_by_name(name):
    model = build_model({"name": name, "input_shape": [1, 8, 8], "num_classes": 10}).eval()
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="cannot bound") as e:
        certify(model, x, y, armor.ThreatModel("linf", 0.1))
    assert ("MaxPool2d" if name == "cnn4" else "PreActBlock") in str(e.value)


def test_a_forward_that_is_not_the_chain_of_its_layers_is_refused():
    class Doubled(type(build_model({"name": "mlp", "input_shape": [4], "num_classes": 2}))):
        def forward(self, x):
            return 2 * super().forward(x)

    model = Doubled([4], 2, hidden=[3])
    with pytest.raises(ValueError, match="forward"):
        chain(model, (4,))

    class Sneaky(nn.Sequential):  # a subclass may compute anything: its chain is checked against its output
        def forward(self, x):
            return super().forward(x) + 1.0

    sneaky = Sneaky(nn.Linear(4, 2))
    with pytest.raises(ValueError, match="cannot bound"):
        chain(sneaky, (4,))


def test_armor_models_it_supports_are_bounded_and_unknown_methods_refused():
    for spec in ({"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10, "hidden": [16]},
                 {"name": "small-cnn", "input_shape": [1, 8, 8], "num_classes": 10}):
        model = build_model(spec).eval()
        x = torch.rand(3, 1, 8, 8)
        with torch.no_grad():
            y = model(x).argmax(1)
        cert = certify(model, x, y, armor.ThreatModel("linf", 1e-4))
        assert bool(cert.certified.all())  # a tiny ball: every correctly classified point is certified
        assert cert.accuracy == 1.0
    with pytest.raises(ValueError, match="crown-ibp"):
        certify(model, x, y, armor.ThreatModel("linf", 0.1), method="lirpa")
    with pytest.raises(ValueError, match="out of range"):
        certify(model, x, torch.tensor([0, 1, 10]), armor.ThreatModel("linf", 0.1))
    with pytest.raises(ValueError, match="expects N×1×8×8 input|do not chain"):
        certify(model, torch.rand(3, 1, 9, 9), y, armor.ThreatModel("linf", 0.1))
    with pytest.raises(ValueError, match="outside the threat model's bounds"):
        certify(model, x + 2, y, armor.ThreatModel("linf", 0.1))


# ---------------------------------------------------------------------------------------------- smoothing
def _reference_lower(k: int, n: int, alpha: float) -> float:
    """The Clopper-Pearson lower bound from its definition: the p with P(X >= k | n, p) = alpha (root-finding on
    the binomial tail, independent of the beta-quantile form)."""
    if k == 0:
        return 0.0
    return optimize.brentq(lambda p: stats.binom.sf(k - 1, n, p) - alpha, 1e-15, 1 - 1e-15, xtol=1e-15, rtol=1e-14)


@pytest.mark.parametrize("k,n", [(100000, 100000), (99000, 100000), (73000, 100000), (60, 100), (51, 100),
                                  (995, 1000), (7, 10)])
def test_the_certified_radius_matches_a_reference_on_fixed_counts(k, n):
    sigma, alpha = 0.25, 0.001
    p = _reference_lower(k, n, alpha)
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(p, rel=1e-9, abs=1e-12)
    expected = sigma * stats.norm.ppf(p) if p >= 0.5 else -1.0
    # the paper's form: sigma / 2 (Phi^-1(pA) - Phi^-1(pB)) with pB = 1 - pA
    paper = sigma / 2 * (stats.norm.ppf(p) - stats.norm.ppf(1 - p)) if p >= 0.5 else -1.0
    assert certified_radius(k, n, sigma, alpha) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert certified_radius(k, n, sigma, alpha) == pytest.approx(paper, rel=1e-9, abs=1e-12)


def test_smoothing_abstains_below_one_half_and_refuses_bad_settings():
    assert certified_radius(50, 100, 0.5, 0.001) == -1.0
    assert certified_radius(100, 100, 0.5, 0.001) == pytest.approx(0.5 * stats.norm.ppf(0.001 ** 0.01), rel=1e-9)
    for bad in ({"sigma": 0.0}, {"sigma": -1.0}, {"alpha": 1.5}, {"n": 0}):
        kw = {"sigma": 0.25, "alpha": 0.001, "n": 10, **bad}
        with pytest.raises(ValueError):
            smoothed_certify(nn.Linear(2, 2), torch.zeros(1, 2), kw.pop("sigma"), n0=5, **kw)


class _Halfplane(nn.Module):
    """f(x) = class 1 iff w·x + b > 0: the smoothed classifier's boundary is the same hyperplane."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(torch.tensor(b))

    def forward(self, x):
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], 1)


def test_smoothing_never_certifies_beyond_the_distance_to_a_linear_boundary():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, generator=gen)
    model = _Halfplane(w, 0.1).eval()
    x = torch.rand(30, 5, generator=gen) * 2 - 1
    with torch.no_grad():
        side = (x @ w + 0.1 > 0).long()
    distance = (x @ w + 0.1).abs() / w.norm()
    cert = smoothed_certify(model, x, 0.5, n0=50, n=2000, alpha=0.001, seed=0)
    certified = cert.radius >= 0
    assert bool((cert.radius[certified] <= distance[certified].double()).all())
    assert bool((cert.prediction[certified] == side[certified]).all())
    assert int(certified.sum()) >= 15  # most points are certified with some radius
    # on the boundary the smoothed prediction is a coin flip: PREDICT abstains
    on = torch.zeros(3, 5)
    on[:, 0] = -0.1 / w[0]
    assert (smoothed_predict(model, on, 0.5, n=200, alpha=0.001, seed=1) == -1).all()
    # far from it, PREDICT answers the side
    far = (3 * w / w.norm()).unsqueeze(0)
    assert smoothed_predict(model, far, 0.5, n=200, alpha=0.001).tolist() == [1]


def test_smoothing_is_reproducible_under_a_seed_and_independent_of_batching():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    x = torch.rand(4, 4)
    a = smoothed_certify(model, x, 0.3, n0=20, n=500, seed=5, batch_size=64)
    b = smoothed_certify(model, x, 0.3, n0=20, n=500, seed=5, batch_size=500)
    assert torch.equal(a.counts, b.counts) and torch.equal(a.radius, b.radius)
    other = smoothed_certify(model, x, 0.3, n0=20, n=500, seed=6)
    assert not torch.equal(a.counts, other.counts)  # another seed draws other noise


@pytest.mark.parametrize("spec,end", [
    ({"name": "small-cnn", "input_shape": [1, 8, 8], "num_classes": 10, "mean": [0.3], "std": [0.4]}, 2),
    ({"name": "mlp", "input_shape": [5], "num_classes": 3, "mean": [0.1, 0.2, 0.3, 0.4, 0.5],
      "std": [1.0, 2.0, 3.0, 4.0, 5.0], "hidden": [7]}, 3)])
def test_closed_form_l2_row_norms_equal_the_rows_of_the_composite_matrix(spec, end):
    """The first block's l2 radius in closed form (what l2 IBP training uses) against the explicit matrix rows."""
    from armor.certify.bounds import _l2_row_norms

    torch.manual_seed(0)
    ops = chain(build_model(spec).double(), spec["input_shape"])
    shape = ops[end - 1].out_shape
    size = math.prod(shape)
    rows = torch.eye(size, dtype=torch.float64).reshape((1, size) + tuple(shape))
    for op in reversed(ops[:end]):
        rows, _ = op.back(rows)
    assert torch.allclose(_l2_row_norms(ops[:end]), rows.flatten(2).norm(dim=-1).flatten(), rtol=1e-12, atol=0)
