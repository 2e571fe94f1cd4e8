"""Attacks that respect domain constraints: constrained PGD and a constrained genetic search.

Both are pure functions ``attack(model, x, y, threat, *, ..., generator=None) -> x_adv`` like the rest of
:mod:`armor.attacks`, for threats built by :func:`armor.domains.tabular.threat_from_schema`. Every point they return
went through ``threat.project`` last, so it lies in the eps ball and satisfies every constraint.

Generic attacks (``pgd``, ``apgd``) also stay feasible under a tabular threat, since the projection repairs,
but they cannot switch a category or move an integer by a whole unit: the repair sends each partial move
back towards the clean value. These two attacks move a relaxed copy of the point and make it integral
themselves, knowing the budget.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import nn

from ...attacks import AttackSpec
from ...attacks import attack_mode, check_logits, default_generator, get_loss, is_fooled, prepare
from ...threat import Norm, ThreatModel
from .constraints import TabularConstraints


def _constraints(threat: ThreatModel, x: torch.Tensor) -> TabularConstraints:
    """The threat's tabular constraints, after checking that the clean rows satisfy them: the clean point is
    every repair's fallback, so an infeasible one would leak into the results."""
    if threat.norm is not Norm.LINF or not isinstance(threat.constraints, TabularConstraints):
        raise ValueError("constrained tabular attacks need a linf threat with tabular constraints: build it with "
                         "armor.domains.tabular.threat_from_schema(schema, eps, data=x_train)")
    cons = threat.constraints
    bad = {k: v for k, v in cons.violations(x, x).items() if v.any()}
    if bad:
        k, v = next(iter(bad.items()))
        raise ValueError(f"clean row {int(v.nonzero()[0])} violates the schema's {k} constraints "
                         f"({', '.join(sorted(bad))} in all); check the data with schema.validate(x)")
    return cons


def _better(fooled: torch.Tensor, loss: torch.Tensor, best_fooled: torch.Tensor, best_loss: torch.Tensor) -> torch.Tensor:
    """A misclassified point beats any other; otherwise the higher loss wins."""
    return (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))


def constrained_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *, steps: int = 50,
                    step_size: Optional[float] = None, restarts: int = 1, random_start: bool = True,
                    loss: str = "ce", target: Optional[torch.Tensor] = None, early_stop: bool = True,
                    polish: bool = True, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Constrained PGD: signed-gradient steps on a relaxed point, repaired into the feasible set every step.

    The iterate ``z`` moves in the per-feature box of the threat (ball, bounds, immutables, monotone rules)
    and is projected onto the linear inequalities; integers and categories stay relaxed in ``z``, so several
    small steps can add up to a whole unit or a category switch. The gradient is taken with every dependent
    feature recomputed from its terms (a step on a part sees its effect through the total). After every step
    the candidate ``project(discretize(z))`` (integers rounded inside the box, each switchable category set to
    its largest entry, then the threat's projection and exact repair) is scored, and each sample keeps its
    best candidate: a misclassified one first, otherwise the highest loss.

    Arguments:
        model: any ``nn.Module`` returning logits, taking raw features. x: clean rows (N×D), feasible.
        y: labels (N,). threat: from :func:`threat_from_schema`. steps: gradient steps per restart.
        step_size: per-step move in units of each feature's budget (default 2.5 / steps).
        restarts: independent starts. random_start: start at a uniform point of the box (else at ``x``).
        loss: ``"ce"``, ``"margin"`` or ``"dlr"``. target: optional target classes (a success is then
            predicting the target). early_stop: stop moving a sample once it is fooled.
        polish: finally try every category of each switchable group on the points not yet fooled (one
            forward pass per category), since the gradient ranks categories only to first order.
        generator: the random start's source of randomness.
    Returns:
        ``x_adv`` with the shape, dtype and device of ``x``; every row satisfies every constraint.
    """
    prepare(model, x, y, threat)
    cons = _constraints(threat, x)
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1, got steps={steps}, restarts={restarts}")
    loss_fn = get_loss(loss)
    alpha = 2.5 / steps if step_size is None else float(step_size)
    n, d = x.shape
    eps = threat.eps_tensor(x).expand(d)
    lo, hi = cons.box(x, threat)
    switch = cons.switchable(threat, x)
    best_x = x.clone()
    best_fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    best_loss = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
    with attack_mode(model):
        g = default_generator(generator, x.device)
        for r in range(restarts):
            idx = (~best_fooled).nonzero().squeeze(1) if early_stop else torch.arange(n, device=x.device)
            if idx.numel() == 0:
                break
            xi, loi, hii = x[idx], lo[idx], hi[idx]
            if random_start:
                u = torch.rand(xi.shape, generator=g, device=x.device, dtype=x.dtype)
                z = cons.project_relaxed(loi + u * (hii - loi), xi, loi, hii)
            else:
                z = xi.clone()
            for t in range(steps + 1):
                yi = y[idx]
                ti = None if target is None else target[idx]
                cand = threat.project(cons.discretize(z, xi, loi, hii, switch), xi)
                with torch.no_grad():
                    logits = model(cand)
                if t == 0 and r == 0:
                    check_logits(logits, yi)
                l_c = loss_fn(logits, yi, ti)
                fooled = is_fooled(logits, yi, ti)
                better = _better(fooled, l_c, best_fooled[idx], best_loss[idx])
                upd = idx[better]
                best_x[upd], best_loss[upd], best_fooled[upd] = cand[better], l_c[better], fooled[better]
                if t == steps:
                    break
                if early_stop and fooled.any():
                    keep = ~fooled
                    idx, xi, loi, hii, z = idx[keep], xi[keep], loi[keep], hii[keep], z[keep]
                    if idx.numel() == 0:
                        break
                    yi = y[idx]
                    ti = None if target is None else target[idx]
                zr = z.detach().requires_grad_(True)
                with torch.enable_grad():
                    l_r = loss_fn(model(cons.with_dependents(zr, xi)), yi, ti)
                    (grad,) = torch.autograd.grad(l_r.sum(), zr)
                z = cons.project_relaxed(z + alpha * _direction(grad, cons) * eps, xi, loi, hii)
        if polish:
            todo = (~best_fooled).nonzero().squeeze(1)
            if todo.numel():
                px, pl, pf = _polish_categories(model, best_x[todo], x[todo], y[todo],
                                                None if target is None else target[todo], threat, cons, switch,
                                                loss_fn, best_loss[todo])
                best_x[todo], best_loss[todo], best_fooled[todo] = px, pl, pf
    return best_x.detach()


def _polish_categories(model: nn.Module, xb: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                       target: Optional[torch.Tensor], threat: ThreatModel, cons: TabularConstraints,
                       switch: list[bool], loss_fn, loss_b: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Try every category of every switchable group on each point (one group at a time, greedily), keeping
    whichever scores best: a gradient ranks categories only to first order, and there are few of them."""
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for (idx, _), ok in zip(cons._t(x.device)["groups"], switch):
        if not ok:
            continue
        for k in range(len(idx)):
            cand = xb.clone()
            cand[:, idx] = 0
            cand[:, idx[k]] = 1
            cand = threat.project(cand, x)
            with torch.no_grad():
                logits = model(cand)
            l = loss_fn(logits, y, target)
            f = is_fooled(logits, y, target)
            better = _better(f, l, fooled, loss_b)
            xb = torch.where(better[:, None], cand, xb)
            loss_b = torch.where(better, l, loss_b)
            fooled = fooled | f
    return xb, loss_b, fooled


def _direction(grad: torch.Tensor, cons: TabularConstraints) -> torch.Tensor:
    """The signed gradient, except inside a one-hot group: there the gradient scaled by its largest entry, so
    that the most promising category rises fastest (with signs, every category that helps rises alike, and
    the tie goes to the first)."""
    out = grad.sign()
    for idx, _ in cons._t(grad.device)["groups"]:
        block = grad[:, idx]
        out[:, idx] = block / block.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
    return out


def _random_moves(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, cons: TabularConstraints,
                  switch: list[bool], p_move: float, g: torch.Generator) -> torch.Tensor:
    """Each coordinate moves with probability ``p_move``: continuous ones to a uniform point of their box or,
    half the time, to one of its ends (linf optima sit at corners); integers to a uniform integer of the box;
    switchable categories to a uniform category. Dependents are left to the repair."""
    shape, dev, dt = x.shape, x.device, x.dtype
    move = torch.rand(shape, generator=g, device=dev, dtype=dt) < p_move
    u = torch.rand(shape, generator=g, device=dev, dtype=dt)
    end = torch.rand(shape, generator=g, device=dev, dtype=dt)
    value = torch.where(end < 0.25, lo, torch.where(end < 0.5, hi, lo + u * (hi - lo)))
    t = cons._t(dev)
    ints = torch.minimum(torch.floor(lo + u * (hi - lo + 1)), hi)
    value = torch.where(t["integer"], ints, value)
    out = torch.where(move, value, x)
    for (idx, _), ok in zip(t["groups"], switch):
        if not ok:
            out[:, idx] = x[:, idx]
            continue
        k = len(idx)
        pick = torch.randint(0, k, (shape[0],), generator=g, device=dev)
        go = torch.rand(shape[0], generator=g, device=dev) < p_move
        choice = torch.where(go, pick, x[:, idx].argmax(dim=1))
        out[:, idx] = torch.nn.functional.one_hot(choice, k).to(dt)
    return out


def constrained_search(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                       population: int = 32, generations: int = 50, mutation: float = 0.15, loss: str = "margin",
                       target: Optional[torch.Tensor] = None, early_stop: bool = True,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Constrained genetic search in the manner of MOEVA (Simonetto et al. 2022): a score-based black box.

    Per sample, a population of feasible candidates evolves: binary-tournament selection, uniform crossover
    (a categorical group is inherited whole), random mutation inside each feature's box, then the threat's
    projection (exact repair), so that every individual is feasible at all times. Parents and children
    compete for the next generation ((mu + lambda) survival), so the best fitness never decreases. The
    fitness is the loss (margin by default: best other logit minus the true one); MOEVA's other objectives,
    distance and constraint violation, are handled by the repair instead, which makes every individual
    feasible by construction.

    Arguments:
        model, x, y, threat: as in :func:`constrained_pgd`. population: individuals per sample (the clean
            point is one of the first generation). generations: rounds of selection; the model sees
            ``population * (generations + 1)`` queries per sample at most. mutation: probability that a
            feature of a child is redrawn. loss: fitness to maximise. target: optional target classes.
        early_stop: stop evolving a sample once a candidate fools the model. generator: the randomness.
    Returns:
        ``x_adv``: each sample's fittest individual (a misclassified one if any was found).
    """
    prepare(model, x, y, threat)
    cons = _constraints(threat, x)
    if population < 2 or generations < 0:
        raise ValueError(f"need population >= 2 and generations >= 0, got {population} and {generations}")
    if not 0 < mutation <= 1:
        raise ValueError(f"mutation must be a probability in (0, 1], got {mutation}")
    fitness = functools.partial(_fitness, model, get_loss(loss), y, target)
    n, d = x.shape
    lo, hi = cons.box(x, threat)
    switch = cons.switchable(threat, x)
    coin_of = _crossover_coins(cons, d, x.device)
    best_x = x.clone()
    best_fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    best_loss = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)

    with attack_mode(model):
        g = default_generator(generator, x.device)
        idx = torch.arange(n, device=x.device)  # the samples still evolving
        pop = _first_generation(x, lo, hi, threat, cons, switch, population, g)
        fit, fool = fitness(pop, idx, first=True)
        for gen in range(generations + 1):
            _keep_champions(pop, fit, fool, idx, best_x, best_loss, best_fooled)
            if gen == generations:
                break
            if early_stop:  # a sample whose best fools the model leaves the search
                keep = ~best_fooled[idx]
                idx, pop, fit, fool = idx[keep], pop[keep], fit[keep], fool[keep]
                if idx.numel() == 0:
                    break
            child = _offspring(pop, fit, x[idx], lo[idx], hi[idx], threat, cons, switch, coin_of, mutation, g)
            c_fit, c_fool = fitness(child, idx)
            pop, fit, fool = _survivors(pop, fit, fool, child, c_fit, c_fool)
    return best_x.detach()


def _fitness(model: nn.Module, loss_fn, y: torch.Tensor, target: Optional[torch.Tensor], pop: torch.Tensor,
             rows: torch.Tensor, first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and fooled flag (each ``m×P``) of a population ``pop`` (``m×P×D``) of the samples ``rows``, in one
    batched forward pass; ``first`` also checks the logits (once per call of the attack)."""
    P, d = pop.shape[1], pop.shape[2]
    flat = pop.reshape(-1, d)
    yi = y[rows].repeat_interleave(P)
    ti = None if target is None else target[rows].repeat_interleave(P)
    with torch.no_grad():
        logits = model(flat)
    if first:
        check_logits(logits, yi)
    return loss_fn(logits, yi, ti).view(-1, P), is_fooled(logits, yi, ti).view(-1, P)


def _rank(fit: torch.Tensor, fool: torch.Tensor) -> torch.Tensor:
    """A sort key under which any fooled individual outranks every unfooled one, then the higher loss wins."""
    return fit + fool.to(fit.dtype) * (fit.abs().max() + 1) * 2


def _crossover_coins(cons: TabularConstraints, d: int, device: torch.device) -> torch.Tensor:
    """For each feature, the feature whose coin it follows in crossover: itself, except that every member of a
    categorical group follows the group's first member, so a child inherits the group whole (stays one-hot)."""
    coin_of = torch.arange(d, device=device)
    for idx, _ in cons._t(device)["groups"]:
        coin_of[idx] = idx[0]
    return coin_of


def _first_generation(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, threat: ThreatModel,
                      cons: TabularConstraints, switch: list[bool], P: int, g: torch.Generator) -> torch.Tensor:
    """``N×P×D``: per sample, the clean point and ``P - 1`` random moves of it (each coordinate with
    probability 1/2), repaired."""
    n, d = x.shape
    xr = x.repeat_interleave(P, dim=0)
    start = _random_moves(xr, lo.repeat_interleave(P, 0), hi.repeat_interleave(P, 0), cons, switch, 0.5, g)
    pop = threat.project(start, xr).view(n, P, d)
    pop[:, 0] = x  # the clean point competes too: the result is never worse than no attack
    return pop


def _keep_champions(pop: torch.Tensor, fit: torch.Tensor, fool: torch.Tensor, idx: torch.Tensor,
                    best_x: torch.Tensor, best_loss: torch.Tensor, best_fooled: torch.Tensor) -> None:
    """Each sample's champion of this generation (fooled first, then fitness) replaces its best so far
    (``best_*``, indexed by ``idx``, updated in place) if it beats it."""
    key = _rank(fit, fool) if fit.numel() else fit  # no samples: nothing to rank (and no max)
    champ = key.argmax(dim=1)
    c_loss = fit.gather(1, champ[:, None]).squeeze(1)
    c_fool = fool.gather(1, champ[:, None]).squeeze(1)
    better = _better(c_fool, c_loss, best_fooled[idx], best_loss[idx])
    upd = idx[better]
    best_x[upd] = pop[better, champ[better]]
    best_loss[upd], best_fooled[upd] = c_loss[better], c_fool[better]


def _offspring(pop: torch.Tensor, fit: torch.Tensor, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
               threat: ThreatModel, cons: TabularConstraints, switch: list[bool], coin_of: torch.Tensor,
               mutation: float, g: torch.Generator) -> torch.Tensor:
    """``P`` children per sample (``m×P×D``, for the clean rows ``x`` and boxes ``lo``/``hi`` of the ``m``
    samples still evolving): binary-tournament parents, uniform crossover, mutation, repair."""
    m, P, d = pop.shape
    xi = x.repeat_interleave(P, dim=0)
    loi, hii = lo.repeat_interleave(P, 0), hi.repeat_interleave(P, 0)
    # Binary tournaments pick two parents per child: the fitter of two random individuals, twice.
    a = torch.randint(0, P, (m, P, 2), generator=g, device=x.device)
    b = torch.randint(0, P, (m, P, 2), generator=g, device=x.device)
    fa, fb = fit.gather(1, a.view(m, -1)).view(m, P, 2), fit.gather(1, b.view(m, -1)).view(m, P, 2)
    parents = torch.where(fa >= fb, a, b)
    pa = pop.gather(1, parents[..., 0:1].expand(m, P, d))
    pb = pop.gather(1, parents[..., 1:2].expand(m, P, d))
    coins = torch.rand(m, P, d, generator=g, device=x.device)[..., coin_of] < 0.5
    child = torch.where(coins, pa, pb).reshape(-1, d)
    child = _random_moves(child, loi, hii, cons, switch, mutation, g)
    return threat.project(child, xi).view(m, P, d)


def _survivors(pop: torch.Tensor, fit: torch.Tensor, fool: torch.Tensor, child: torch.Tensor, c_fit: torch.Tensor,
               c_fool: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mu + lambda) survival: the best ``P`` of parents and children, fooled ones first, with their fitness."""
    m, P, d = pop.shape
    all_pop = torch.cat([pop, child], dim=1)
    all_fit, all_fool = torch.cat([fit, c_fit], dim=1), torch.cat([fool, c_fool], dim=1)
    keep_idx = _rank(all_fit, all_fool).topk(P, dim=1).indices
    return (all_pop.gather(1, keep_idx[..., None].expand(m, P, d)), all_fit.gather(1, keep_idx),
            all_fool.gather(1, keep_idx))


TABULAR_ATTACKS: dict[str, AttackSpec] = {
    "cpgd": AttackSpec(constrained_pgd, {"steps": 50}, ("linf",),
                       "constrained PGD-50 for tabular threats: relaxed steps, exact repair after each (white box)"),
    "cpgd-margin": AttackSpec(constrained_pgd, {"steps": 50, "loss": "margin"}, ("linf",),
                              "constrained PGD-50 on the C&W margin loss (tabular)"),
    "csearch": AttackSpec(constrained_search, {"population": 32, "generations": 50}, ("linf",),
                          "constrained genetic search, MOEVA-style, 32 x 51 queries (tabular, black box)", False),
}


__all__ = ["TABULAR_ATTACKS", "constrained_pgd", "constrained_search"]
