"""Constraint repair and constrained attacks on random schemas (hypothesis): every returned point satisfies
every constraint and lies in the eps ball, for every attack.

Runtime: about 15 s.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from armor.attacks import apgd, fgsm, pgd
from armor.models import build_model
from armor.domains.tabular import (Schema, TabularConstraints, constrained_pgd, constrained_search, relaxed_threat,
                           threat_from_schema)
from armor.domains.tabular.constraints import project_halfspace



def random_problem(seed: int, n: int = 6):
    """A random consistent schema, feasible data for it, and an untrained MLP that standardises."""
    rng = np.random.default_rng(seed)
    feats, cols, kinds = [], [], []
    d_num = int(rng.integers(2, 7))
    for j in range(d_num):
        kind = "integer" if rng.random() < 0.35 else "continuous"
        lo = float(rng.choice([-math.inf, -5.0, 0.0]))
        hi = float(rng.choice([math.inf, 20.0, 50.0]))
        f = {"name": f"f{j}", "type": kind, "std": float(rng.choice([0.5, 2.0, 8.0]))}
        if math.isfinite(lo):
            f["lower"] = lo
        if math.isfinite(hi):
            f["upper"] = hi
        r = rng.random()
        if r < 0.2:
            f["mutable"] = False
        elif r < 0.45:
            f["monotone"] = "increase" if rng.random() < 0.5 else "decrease"
        if rng.random() < 0.3:
            f["eps_scale"] = float(rng.choice([0.0, 0.5, 2.0]))
        feats.append(f)
        kinds.append((kind, max(lo, -5.0), min(hi, 20.0)))
    n_groups = int(rng.integers(0, 3))
    for g in range(n_groups):
        k = int(rng.integers(2, 5))
        feats.append({"name": f"g{g}", "type": "categorical", "categories": [f"c{i}" for i in range(k)],
                      "mutable": bool(rng.random() < 0.8)})
    # data for the independent numeric features
    x_num = np.empty((n, d_num))
    for j, (kind, lo, hi) in enumerate(kinds):
        v = rng.uniform(lo, hi, n)
        x_num[:, j] = np.round(v) if kind == "integer" else np.round(v * 4) / 4  # float32-exact values
        x_num[:, j] = np.clip(x_num[:, j], lo, hi)
    relations = []
    dep_cols = []
    continuous = [j for j, (k, _, _) in enumerate(kinds) if k == "continuous"]
    if rng.random() < 0.7 and len(continuous) >= 1:
        terms = rng.choice(d_num, size=min(d_num, int(rng.integers(1, 4))), replace=False)
        coefs = rng.choice([-1.0, 0.5, 1.0, 2.0], size=len(terms))
        const = float(rng.choice([0.0, 3.0]))
        dep = x_num[:, terms] @ coefs + const
        lo_dep = float(np.floor(dep.min())) - float(rng.choice([0.0, 5.0]))
        dep_feat = {"name": "dep", "lower": lo_dep, "std": 3.0}
        if rng.random() < 0.3:
            dep_feat["monotone"] = "increase"
        feats.append(dep_feat)
        relations.append({"type": "equality", "target": "dep", "constant": const,
                          "terms": {f"f{t}": float(c) for t, c in zip(terms, coefs)}})
        dep_cols.append(dep)
    for _ in range(int(rng.integers(0, 3))):
        terms = rng.choice(d_num, size=min(d_num, int(rng.integers(1, 4))), replace=False)
        coefs = rng.choice([-1.0, 1.0, 3.0], size=len(terms))
        lhs = x_num[:, terms] @ coefs
        relations.append({"type": "inequality", "terms": {f"f{t}": float(c) for t, c in zip(terms, coefs)},
                          "bound": float(lhs.max() + rng.choice([0.0, 1.0]))})
    # column order: numeric features, then the groups, then the dependent (as declared)
    order = feats[:d_num] + [f for f in feats[d_num:] if f.get("type") == "categorical"] + \
        [f for f in feats if f["name"] == "dep"]
    schema = Schema.from_dict({"name": f"random-{seed}", "eps": float(rng.choice([0.3, 1.0, 3.0])),
                               "feature": order, "relation": relations})
    blocks = [x_num]
    for g in schema.groups:
        blocks.append(np.eye(len(g.categories))[rng.integers(0, len(g.categories), n)])
    blocks += [c[:, None] for c in dep_cols]
    x = torch.tensor(np.hstack(blocks), dtype=torch.float32)
    schema = schema.fit(x.double().numpy())
    schema.validate(x.numpy())
    threat = threat_from_schema(schema)
    torch.manual_seed(seed)
    model = build_model({"name": "mlp", "input_shape": [x.shape[1]], "num_classes": 2, "hidden": [16],
                         "mean": x.mean(0).tolist(), "std": (x.std(0) + 1).tolist()}).eval()
    y = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed))
    return schema, threat, model, x, y


def assert_feasible(threat, x_adv, x):
    bad = {k: v for k, v in threat.constraints.violations(x_adv, x).items() if v.any()}
    assert not bad, f"violated: {sorted(bad)}"
    assert bool(threat.contains(x_adv, x).all()), "outside the eps ball or bounds"


SEEDS = st.integers(0, 10_000)
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(SEEDS)
def test_projection_of_any_candidate_is_feasible_idempotent_and_fixes_the_clean_point(seed):
    schema, threat, model, x, y = random_problem(seed)
    g = torch.Generator().manual_seed(seed)
    # wild candidates: far outside the ball and bounds, fractional integers, broken one-hot rows
    scale = torch.as_tensor(threat.eps).clamp_min(0.5) * 3
    cand = x + torch.randn(x.shape, generator=g) * scale
    p = threat.project(cand, x)
    assert_feasible(threat, p, x)
    assert torch.equal(threat.project(p, x), p)  # a feasible point is left alone
    assert torch.equal(threat.constraints.repair(x.clone(), x), x)  # the clean point is feasible
    # every coordinate but the dependents moved no further than in the candidate (after the ball clamp)
    clamped = torch.minimum(torch.maximum(cand, x - threat.eps), x + threat.eps)
    dep = torch.from_numpy(threat.constraints.dependent)
    assert bool(((p - x).abs() <= (clamped - x).abs() + 1e-6)[:, ~dep].all())


@FAST
@given(SEEDS)
def test_every_attack_returns_feasible_points(seed):
    schema, threat, model, x, y = random_problem(seed)
    g = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
    attacks = {
        "cpgd": lambda: constrained_pgd(model, x, y, threat, steps=5, generator=g()),
        "cpgd-no-early-stop": lambda: constrained_pgd(model, x, y, threat, steps=3, early_stop=False,
                                                      restarts=2, generator=g()),
        "csearch": lambda: constrained_search(model, x, y, threat, population=6, generations=3, generator=g()),
        "pgd": lambda: pgd(model, x, y, threat, steps=3, generator=g()),
        "apgd": lambda: apgd(model, x, y, threat, steps=5, generator=g()),
        "fgsm": lambda: fgsm(model, x, y, threat),
    }
    for name, run in attacks.items():
        x_adv = run()
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype, name
        assert_feasible(threat, x_adv, x)
        # the relaxed threat (no constraints, immutables budgeted) contains every constrained point
        assert bool(relaxed_threat(threat).contains(x_adv, x).all()), name


def test_repair_is_exact_on_a_worked_example():
    schema = Schema.from_dict({
        "name": "worked", "feature": [
            {"name": "age", "type": "integer", "lower": 0, "mutable": False, "std": 1.0},
            {"name": "count", "type": "integer", "lower": 0, "monotone": "increase", "std": 1.0},
            {"name": "a", "lower": 0.0, "std": 1.0}, {"name": "b", "lower": 0.0, "std": 1.0},
            {"name": "total", "lower": 0.0},
            {"name": "m", "type": "categorical", "categories": ["x", "y"]}],
        "relation": [{"type": "equality", "target": "total", "terms": {"a": 1.0, "b": 1.0}},
                     {"type": "inequality", "terms": {"b": 1.0, "a": -1.0}, "bound": 0.0}]})
    cons = TabularConstraints(schema)
    x = torch.tensor([[40.0, 3.0, 5.0, 2.0, 7.0, 1.0, 0.0]])
    cand = torch.tensor([[41.0, 1.7, -1.0, 4.5, 0.0, 0.4, 0.6]])
    out = cons.repair(cand, x)
    # age reset; count may not fall (monotone) so it stays at 3; a clamped to its bound 0; b in [2, 4.5] but
    # must stay <= a = 0: the inequality moves b towards its clean value, whose box [2, 4.5] keeps it >= 2 and
    # a is free in [0, 5]: the exact projection of (a, b) = (0, 4.5) onto b <= a inside [0, 5] x [2, 4.5] is
    # (2.25, 2.25); one-hot half-set -> back to the clean category; total recomputed.
    assert out[0, :2].tolist() == [40.0, 3.0]
    # (projections aim 1e-6 relative inside the half-space, so that float32 storage cannot cross it)
    assert out[0, 2].item() == pytest.approx(2.25, abs=1e-5) and out[0, 3].item() == pytest.approx(2.25, abs=1e-5)
    assert out[0, 3].item() <= out[0, 2].item()
    assert out[0, 4].item() == pytest.approx(4.5, abs=1e-5)
    assert out[0, 5:].tolist() == [1.0, 0.0]
    assert bool(cons.satisfied(out, x).all())
    # an exact one-hot switch is kept; integers round towards the clean value
    out = cons.repair(torch.tensor([[40.0, 4.9, 5.0, 2.0, 7.0, 0.0, 1.0]]), x)
    assert out[0, 1].item() == 4.0 and out[0, 5:].tolist() == [0.0, 1.0]
    # a non-finite candidate (e.g. from a 0/0 step) would pass every comparison: it becomes the clean value
    assert torch.equal(cons.repair(torch.full_like(x, float("nan")), x), x)


@pytest.mark.parametrize("kind", ["continuous", "integer"])
def test_a_dependent_pushed_out_of_its_bounds_is_brought_back(kind):
    # total = a + b must stay <= 10 and b may only fall, so a move of a from 4 to 9 must be cut back to 6:
    # a continuous a by the exact projection, an integer a (which projections never move) by the bisection
    # fallback towards the clean point.
    schema = Schema.from_dict({"name": "fallback", "feature": [
        {"name": "a", "type": kind, "lower": 0, "std": 1.0},
        {"name": "b", "lower": 0.0, "monotone": "decrease", "std": 1.0},
        {"name": "total", "lower": 0.0, "upper": 10.0}],
        "relation": [{"type": "equality", "target": "total", "terms": {"a": 1.0, "b": 1.0}}]})
    cons = TabularConstraints(schema)
    x = torch.tensor([[4.0, 4.0, 8.0]])
    out = cons.repair(torch.tensor([[9.0, 4.0, 13.0]]), x)
    assert bool(cons.satisfied(out, x).all())
    assert out[0, 2].item() <= 10.0 and out[0, 1].item() == 4.0
    if kind == "integer":
        assert out[0].tolist() == [6.0, 4.0, 10.0]
    else:
        assert out[0, 0].item() == pytest.approx(6.0, abs=1e-4)


def test_halfspace_projection_matches_a_bisection_reference():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        n, d = 8, 6
        lo = -torch.rand(n, d, generator=g, dtype=torch.float64)
        hi = torch.rand(n, d, generator=g, dtype=torch.float64)
        v = lo + (hi - lo) * torch.rand(n, d, generator=g, dtype=torch.float64)
        a = torch.randn(d, generator=g, dtype=torch.float64)
        free = torch.rand(d, generator=g) < 0.7
        beta = v @ a - torch.rand(n, generator=g, dtype=torch.float64)
        out = project_halfspace(v, a, beta, lo, hi, free)
        m = free & (a != 0)

        def z(lam):
            zz = v.clone()
            zz[:, m] = torch.minimum(torch.maximum(v[:, m] - lam[:, None] * a[m], lo[:, m]), hi[:, m])
            return zz

        l0, l1 = torch.zeros(n, dtype=torch.float64), torch.full((n,), 1e6, dtype=torch.float64)
        for _ in range(200):
            mid = (l0 + l1) / 2
            ok = z(mid) @ a <= beta
            l1, l0 = torch.where(ok, mid, l1), torch.where(ok, l0, mid)
        ref = z(l1)
        feasible = ref @ a <= beta + 1e-9
        assert torch.allclose(out[feasible], ref[feasible], atol=1e-7)
        assert bool((out[feasible] @ a <= beta[feasible] + 1e-9).all())
        assert torch.equal(out[:, ~m], v[:, ~m])


def test_attacks_reject_threats_without_tabular_constraints():
    from armor import ThreatModel
    model = torch.nn.Linear(3, 2)
    x, y = torch.rand(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="threat_from_schema"):
        constrained_pgd(model, x, y, ThreatModel("linf", 0.1))
    with pytest.raises(ValueError, match="threat_from_schema"):
        constrained_search(model, x, y, ThreatModel("linf", 0.1))


def test_attacks_reject_clean_rows_that_break_the_schema():
    schema = Schema.from_dict({"name": "s", "feature": [
        {"name": "n", "type": "integer", "lower": 0, "std": 1.0}, {"name": "v", "lower": 0.0, "std": 1.0}]})
    threat = threat_from_schema(schema, 0.5)
    model = torch.nn.Linear(2, 2)
    x, y = torch.tensor([[1.0, 2.0], [1.5, 2.0]]), torch.tensor([0, 1])
    for attack in (constrained_pgd, constrained_search):
        with pytest.raises(ValueError, match="clean row 1 violates the schema's integer constraints"):
            attack(model, x, y, threat)


def test_attacks_are_deterministic_and_more_generations_never_weaker():
    schema, threat, model, x, y = random_problem(7, n=40)
    a = constrained_search(model, x, y, threat, population=8, generations=4, generator=torch.Generator().manual_seed(1))
    b = constrained_search(model, x, y, threat, population=8, generations=4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    from armor.attacks import margin_loss
    fooled, best = [], []
    for gens in (1, 4, 12):
        xa = constrained_search(model, x, y, threat, population=8, generations=gens, early_stop=False,
                                generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            best.append(margin_loss(model(xa), y))
    assert bool((best[1] >= best[0] - 1e-6).all()) and bool((best[2] >= best[1] - 1e-6).all())
    c = constrained_pgd(model, x, y, threat, generator=torch.Generator().manual_seed(1))
    assert torch.equal(c, constrained_pgd(model, x, y, threat, generator=torch.Generator().manual_seed(1)))


def test_generic_pgd_refuses_clean_rows_it_cannot_repair_around():
    # issue 15: a clean row that breaks a relation is every repair's fallback, so pgd used to return points
    # violating it; now the projection refuses and names the row
    schema = Schema.from_dict({"name": "sum", "feature": [
        {"name": "a", "lower": 0.0, "std": 1.0}, {"name": "b", "lower": 0.0, "std": 1.0},
        {"name": "total", "lower": 0.0}],
        "relation": [{"type": "equality", "name": "total=a+b", "target": "total", "terms": {"a": 1.0, "b": 1.0}}]})
    threat = threat_from_schema(schema, 0.5)
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "input_shape": [3], "num_classes": 2, "hidden": [8]})
    x, y = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 7.0]]), torch.tensor([0, 1])
    for attack in (lambda: pgd(model, x, y, threat, steps=3), lambda: fgsm(model, x, y, threat)):
        with pytest.raises(ValueError, match=r"clean row 1 violates relation 'total=a\+b'.*schema.validate"):
            attack()
    assert_feasible(threat, pgd(model, x[:1], y[:1], threat, steps=3), x[:1])  # feasible rows are attacked
