"""FAB-T: the targeted Fast Adaptive Boundary attack (Croce & Hein 2020), for linf, l2 and l1.

FAB looks for the smallest perturbation that changes the decision. At each iterate it linearises the logit
difference ``f_t - f_y`` towards a target class, projects both the iterate and the clean point onto that
hyperplane (the exact minimal-norm step inside the bounds), and moves to a convex combination biased towards
the clean point; once an iterate is adversarial it steps back towards the clean point by ``beta`` and keeps
shrinking. It starts at the clean input, where a masked model's gradient is often still honest.

Cost: the targets run as one batch (one row per point and target class), so every iteration is one
forward-backward over the rows still in play; under :func:`fab_t` a point leaves (all its rows) as soon as
any target finds an adversarial example inside the threat's ball, the same per-point decision as running the
targets one after another (each target's trajectory does not depend on the others).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..threat import Norm, ThreatModel
from ._core import ROW_CHUNK, attack_mode, check_logits, default_generator, loss_and_grad_rows, margin_loss, prepare
from .gradient import top_targets


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def hyperplane_step(p: torch.Tensor, w: torch.Tensor, c: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                    norm: Norm) -> torch.Tensor:
    """The smallest step ``d`` (in ``norm``) with ``<w, d> = c`` and ``lo <= p + d <= hi``; rows are independent.

    If the box does not allow the full ``c``, the step that gets closest (every coordinate at its bound in
    the useful direction). All inputs are flat ``(rows, dim)`` except ``c`` ``(rows,)``.

    linf and l2 share one solution: with ``s`` the sign of ``c * w_i`` and ``room_i`` the distance to the
    bound in that direction, the optimum is ``d_i = s_i min(lambda k_i, room_i)`` (``k_i = 1`` for linf,
    ``|w_i|`` for l2, from the KKT conditions), and ``<w, d>`` is the piecewise-linear increasing function
    ``sum_i a_i min(lambda, room_i / k_i)`` with ``a_i = |w_i| k_i``, solved exactly for ``lambda`` by sorting
    its breakpoints. l1 is a fractional knapsack: fill the coordinates with the largest ``|w_i|`` first.
    """
    sgn = torch.sign(c)[:, None] * torch.sign(w)
    room = torch.where(sgn > 0, hi - p, p - lo).clamp_min(0)
    aw = w.abs()
    need = c.abs()
    if norm is Norm.L1:
        order = aw.argsort(dim=1, descending=True)
        aw_s, room_s = aw.gather(1, order), room.gather(1, order)
        gain = aw_s * room_s
        before = gain.cumsum(dim=1) - gain
        amount = ((need[:, None] - before) / aw_s.clamp_min(1e-30)).clamp_min(0)
        amount = torch.where(aw_s > 0, torch.minimum(amount, room_s), torch.zeros_like(amount))
        step = torch.zeros_like(p).scatter(1, order, amount)
        return sgn * step
    k = torch.ones_like(aw) if norm is Norm.LINF else aw
    a = aw * k
    bp = torch.where(k > 0, room / k.clamp_min(1e-30), torch.zeros_like(room))
    bp_s, order = bp.sort(dim=1)
    a_s = a.gather(1, order)
    sat = (a_s * bp_s).cumsum(dim=1)  # <w, d> from the coordinates saturated at lambda = bp_s[j]
    free = a_s.sum(dim=1, keepdim=True) - a_s.cumsum(dim=1)  # slope of the rest beyond bp_s[j]
    reach = sat + bp_s * free  # <w, d> at lambda = bp_s[j], increasing in j
    j = (reach < need[:, None]).sum(dim=1, keepdim=True)  # the first breakpoint that reaches c
    feasible = j.squeeze(1) < p.shape[1]
    jm = (j - 1).clamp_min(0)
    sat_before = torch.where(j > 0, sat.gather(1, jm), torch.zeros_like(j, dtype=p.dtype))
    free_before = torch.where(j > 0, free.gather(1, jm), a_s.sum(dim=1, keepdim=True))
    lam = (need[:, None] - sat_before) / free_before.clamp_min(1e-30)
    # Out of reach: every coordinate to its bound (lambda at the last breakpoint saturates them all).
    lam = torch.where(feasible[:, None], lam, bp_s[:, -1:])
    return sgn * torch.minimum(lam * k, room)


def _dual_norm(v: torch.Tensor, norm: Norm) -> torch.Tensor:
    return {Norm.LINF: lambda: v.abs().sum(1), Norm.L2: lambda: v.norm(dim=1),
            Norm.L1: lambda: v.abs().amax(1)}[norm]()


def _size(v: torch.Tensor, norm: Norm) -> torch.Tensor:
    return {Norm.LINF: lambda: v.abs().amax(1), Norm.L2: lambda: v.norm(dim=1), Norm.L1: lambda: v.abs().sum(1)}[norm]()


def _fab_rows(model: nn.Module, x0: torch.Tensor, y: torch.Tensor, target: torch.Tensor, owner: torch.Tensor,
              threat: ThreatModel, x_start: torch.Tensor, steps: int, alpha_max: float, eta: float, beta: float,
              stop_inside: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """FAB iterations on rows (a point and one target each). Returns per row the smallest adversarial iterate
    found and its size (inf where none was found).

    ``owner`` maps each row to its point. With ``stop_inside`` a point's rows stop as soon as one of them is
    adversarial inside the threat's ball (evaluation); otherwise every row runs all ``steps`` (minimal norm).
    """
    norm = threat.norm
    shape = x0.shape
    lo = torch.as_tensor(threat.bounds[0], dtype=x0.dtype, device=x0.device).expand(shape)
    hi = torch.as_tensor(threat.bounds[1], dtype=x0.dtype, device=x0.device).expand(shape)
    n_rows = shape[0]
    best = x0.clone()
    best_size = torch.full((n_rows,), float("inf"), dtype=x0.dtype, device=x0.device)
    x1 = x_start.clone()
    active = torch.ones(n_rows, dtype=torch.bool, device=x0.device)
    n_points = int(owner.max()) + 1 if n_rows else 0
    point_done = torch.zeros(n_points, dtype=torch.bool, device=x0.device)

    def record(idx: torch.Tensor, xi: torch.Tensor, adv: torch.Tensor) -> None:
        """Keep adversarial iterates that are smaller than each row's best; end points broken inside the ball."""
        ia = idx[adv]
        size = _size(_rows(xi[adv] - x0[ia]), norm)
        better = size < best_size[ia]
        best[ia[better]] = xi[adv][better]
        best_size[ia[better]] = size[better]
        if stop_inside:
            inside = threat.contains(xi[adv], x0[ia])
            point_done[owner[ia[inside]]] = True

    for it in range(steps + 1):
        if stop_inside:
            active &= ~point_done[owner]
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xi, yi, ti = x1[idx], y[idx], target[idx]
        df, logits, dg = loss_and_grad_rows(model, xi, yi, margin_loss, ti)
        if it == 0:
            check_logits(logits, yi)
        adv = logits.argmax(1) != yi
        if adv.any():
            record(idx, xi, adv)
            # Step back towards the clean point, then linearise there instead.
            xi = torch.where(adv.view(-1, *([1] * (xi.dim() - 1))), x0[idx] + beta * (xi - x0[idx]), xi)
            x1[idx] = xi
            if stop_inside:
                keep = ~point_done[owner[idx]]
                idx, xi, yi, ti, df, dg, adv = idx[keep], xi[keep], yi[keep], ti[keep], df[keep], dg[keep], adv[keep]
            if adv.any():
                df_b, _, dg_b = loss_and_grad_rows(model, xi[adv], yi[adv], margin_loss, ti[adv])
                df, dg = df.clone(), dg.clone()
                df[adv], dg[adv] = df_b, dg_b
        if it == steps or idx.numel() == 0:
            break
        # The hyperplane f_t - f_y = 0 of the linearisation at xi: <w, z> = <w, xi> - df.
        w = _rows(dg)
        xf, x0f = _rows(xi), _rows(x0[idx])
        lo_f, hi_f = _rows(lo[idx]), _rows(hi[idx])
        c_iter = -df  # <w, d> needed from xi
        c_clean = c_iter + (w * (xf - x0f)).sum(1)  # from the clean point to the same hyperplane
        # Both projections, in chunks of rows (row by row the same result; sorting rows that fit the caches
        # is about 1.5x faster per row).
        d1, d2 = (torch.cat([hyperplane_step(p[i:i + ROW_CHUNK], w[i:i + ROW_CHUNK], c[i:i + ROW_CHUNK],
                                             lo_f[i:i + ROW_CHUNK], hi_f[i:i + ROW_CHUNK], norm)
                             for i in range(0, p.shape[0], ROW_CHUNK)]) for p, c in ((xf, c_iter), (x0f, c_clean)))
        a1 = _size(d1, norm).clamp_min(1e-8)
        a2 = _size(d2, norm).clamp_min(1e-8)
        alpha = (a1 / (a1 + a2)).clamp(0, alpha_max)[:, None]
        x_new = ((xf + eta * d1) * (1 - alpha) + (x0f + eta * d2) * alpha).view_as(xi)
        x1[idx] = threat.clamp_bounds(x_new)
    return best, best_size


def _run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, steps: int,
         n_target_classes: int, restarts: int, alpha_max: float, eta: float, beta: float,
         generator: Optional[torch.Generator], stop_inside: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per point, the smallest adversarial example FAB-T found over targets and restarts, and its size."""
    if steps < 1 or restarts < 1 or n_target_classes < 1:
        raise ValueError(f"steps, restarts and n_target_classes must be >= 1, got steps={steps}, "
                         f"restarts={restarts}, n_target_classes={n_target_classes}")
    if not (0 <= alpha_max <= 1 and eta >= 1 and 0 < beta < 1):
        raise ValueError(f"FAB needs 0 <= alpha_max <= 1, eta >= 1 and 0 < beta < 1, got alpha_max={alpha_max}, "
                         f"eta={eta}, beta={beta}")
    n = x.shape[0]
    best = x.clone()
    best_size = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
    with attack_mode(model):
        targets = top_targets(model, x, y, n_target_classes)
        g = default_generator(generator, x.device) if restarts > 1 else None
        k = targets.shape[1]
        for r in range(restarts):
            todo = torch.ones(n, dtype=torch.bool, device=x.device)
            if stop_inside:  # later restarts only for points without an adversarial example inside the ball
                todo = ~(best_size.isfinite() & threat.contains(best, x))
            pts = todo.nonzero().squeeze(1)
            if pts.numel() == 0:
                break
            owner = torch.arange(pts.numel(), device=x.device).repeat_interleave(k)
            rows = pts.repeat_interleave(k)
            x0 = x[rows]
            # The first run starts at the clean point; restarts start at random inside half the ball (or half
            # the best size found so far, as in the paper).
            start = x0 if r == 0 else x0 + 0.5 * (threat.random_init(x0, g) - x0)
            start = threat.clamp_bounds(start)
            adv, size = _fab_rows(model, x0, y[rows], targets[pts].reshape(-1), owner, threat, start, steps,
                                  alpha_max, eta, beta, stop_inside)
            size = size.view(-1, k)
            smallest, which = size.min(dim=1)
            better = smallest < best_size[pts]
            pick = torch.arange(pts.numel(), device=x.device) * k + which
            best[pts[better]] = adv[pick[better]]
            best_size[pts[better]] = smallest[better]
    return best, best_size


def fab_t(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *, steps: int = 100,
          n_target_classes: int = 9, restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05,
          beta: float = 0.9, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Targeted FAB (FAB-T, Croce & Hein 2020) as in AutoAttack: the top ``n_target_classes`` other classes.

    The first run starts at the clean input; a point stops as soon as it has an adversarial example inside
    the threat's ball.

    Arguments:
        steps: iterations per target and restart (100 in AutoAttack). n_target_classes: 9 in AutoAttack
            (capped at classes - 1). restarts: the first from the clean point, later ones from random points
            in half the ball. alpha_max, eta, beta: the paper's bias towards the clean point (0.1),
            overshoot (1.05) and backward step after a success (0.9).
    Returns:
        ``x_adv``: an adversarial example inside the threat set where one was found, else ``x``.
    """
    prepare(model, x, y, threat)
    best, _ = _run(model, x, y, threat, steps, n_target_classes, restarts, alpha_max, eta, beta, generator, True)
    inside = threat.contains(best, x)
    out = torch.where(inside.view(-1, *([1] * (x.dim() - 1))), best, x)
    # The threat's own projection (constraints, the last ulp); a point it changes is kept only if still fooled.
    projected = threat.project(out, x)
    changed = _rows(projected != out).any(1)
    if changed.any():
        with attack_mode(model), torch.no_grad():
            still = model(projected[changed]).argmax(1) != y[changed]
        lost = changed.clone()
        lost[changed] = ~still
        projected = torch.where(lost.view(-1, *([1] * (x.dim() - 1))), x, projected)
    return projected.detach()


def fab_t_minimal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *, steps: int = 100,
                  n_target_classes: int = 9, restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05,
                  beta: float = 0.9,
                  generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """FAB-T as a minimum-norm attack: the smallest adversarial example per point, whatever its size.

    Uses ``threat``'s norm and bounds (not its eps); every target runs all ``steps``.
    Returns:
        ``(x_adv, size)``: ``size`` in the threat's norm, ``inf`` (and ``x_adv = x``) where nothing was found.
        ``x_adv`` may lie outside the threat's ball: this is a measurement, not a bounded attack.
    """
    prepare(model, x, y, threat)
    best, size = _run(model, x, y, threat, steps, n_target_classes, restarts, alpha_max, eta, beta, generator,
                      False)
    return best.detach(), size
