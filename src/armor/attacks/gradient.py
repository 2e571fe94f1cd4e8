"""White-box gradient attacks: FGSM, targeted FGSM-T, PGD, APGD (CE / DLR) and targeted APGD-T.

All are pure functions ``attack(model, x, y, threat, *, ..., generator=None) -> x_adv``. They move with
``threat.step`` and land with ``threat.project``; the result is always inside the threat set.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..threat import ThreatModel
from ._core import (LossFn, attack_mode, check_logits, default_generator, get_loss, is_fooled, loss_and_grad,
                    loss_and_grad_rows, margin_loss, prepare)


def _projector(threat: ThreatModel, x: torch.Tensor):
    """``proj(x_adv, idx)``: project rows ``idx`` of an attack's batch ``x``; one clamp per call for linf."""
    box = threat.linf_box(x)
    if box is None:
        return lambda x_adv, idx=None: threat.project(x_adv, x if idx is None else x[idx])
    lo, hi = box
    return lambda x_adv, idx=None: torch.clamp(x_adv, lo, hi) if idx is None else torch.clamp(x_adv, lo[idx], hi[idx])


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *, loss: str = "ce",
         step_size: Optional[float] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Fast Gradient (Sign) Method (Goodfellow et al. 2015): one steepest-ascent step of size eps.

    Arguments:
        model: any ``nn.Module`` returning logits. x: inputs (N, ...) in the threat's bounds. y: labels (N,).
        threat: the :class:`armor.ThreatModel`. loss: ``"ce"``, ``"margin"`` or ``"dlr"``.
        step_size: defaults to eps (in the threat's norm).
    Returns:
        ``x_adv`` with the shape, dtype and device of ``x``.
    """
    prepare(model, x, y, threat)
    with attack_mode(model):
        _, logits, grad = loss_and_grad(model, x, y, get_loss(loss))
        check_logits(logits, y)
        step = threat.eps_scalar if step_size is None else step_size
        return threat.project(threat.step(x, grad, step), x).detach()


def fgsm_t(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *, n_target_classes: int = 9,
           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Targeted FGSM on the logit margin from the clean point, towards each of the top ``n_target_classes``.

    For each target ``t`` one steepest-ascent step of size eps on ``f_t - f_y``: the best step inside the ball
    if the model were linear around ``x``. All targets run as one batch (one row per point and target), and
    the gradients are taken at the clean input only, where a model whose gradients mislead attacks a step
    away (boosted logits between the data's grey levels) is still honest.

    Returns:
        ``x_adv``: per point a fooling step if any target's is, else the step with the highest margin.
    """
    prepare(model, x, y, threat)
    if n_target_classes < 1:
        raise ValueError(f"n_target_classes must be >= 1, got {n_target_classes}")
    n = x.shape[0]
    with attack_mode(model):
        targets = top_targets(model, x, y, n_target_classes)
        k = targets.shape[1]
        rows = torch.arange(n, device=x.device).repeat_interleave(k)
        xr, yr, tr = x[rows], y[rows], targets.reshape(-1)
        _, _, grad = loss_and_grad_rows(model, xr, yr, margin_loss, tr)
        x_adv = threat.project(threat.step(xr, grad, threat.eps_scalar), xr)
        with torch.no_grad():
            logits = model(x_adv)
        # Fooled rows first, then the untargeted margin: the best row per point.
        score = margin_loss(logits, yr) + torch.where(is_fooled(logits, yr), float("inf"), 0.0)
        pick = torch.arange(n, device=x.device) * k + score.view(n, k).argmax(1)
    return x_adv[pick].detach()


def top_targets(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_target_classes: int) -> torch.Tensor:
    """(N, k): the 2nd, 3rd, ... most likely classes on the clean input (the top one where the point is wrong),
    k = ``n_target_classes`` capped at classes - 1."""
    with torch.no_grad():
        logits = model(x)
    check_logits(logits, y)
    order = logits.argsort(dim=1, descending=True)
    k = max(1, min(n_target_classes, logits.shape[1] - 1))
    ranked = order[:, 1:k + 1]
    # If the clean prediction is wrong, a ranked class may be the label itself: aim at the top one instead.
    return torch.where(ranked == y[:, None], order[:, :1], ranked)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *, steps: int = 10,
        step_size: Optional[float] = None, restarts: int = 1, random_start: bool = True, loss: str = "ce",
        target: Optional[torch.Tensor] = None, early_stop: bool = False, l1_sparsity: float = 0.05,
        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Projected Gradient Descent (Madry et al. 2018) with random start and restarts, for linf, l2 and l1.

    Every iterate of every restart is a candidate; each sample keeps its worst one: a misclassified point
    first, otherwise the highest loss. The losses at the iterates come from the forward passes that the
    gradients need anyway, so keeping the worst costs one extra forward per restart.

    Arguments:
        steps: gradient steps per restart. step_size: defaults to 2.5 * eps / steps.
        restarts: independent random starts. random_start: start uniformly inside the ball.
        loss: ``"ce"``, ``"margin"`` (C&W) or ``"dlr"``. target: optional target classes (N,), making the
            attack targeted (success means predicting the target).
        early_stop: stop moving a sample once it is fooled (evaluation); keep False to maximise the loss
            (training). l1_sparsity: share of coordinates an L1 step moves.
    Returns:
        ``x_adv`` with the shape, dtype and device of ``x``.
    """
    prepare(model, x, y, threat)
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1, got steps={steps}, restarts={restarts}")
    loss_fn = get_loss(loss)
    alpha = 2.5 * threat.eps_scalar / steps if step_size is None else float(step_size)
    n = x.shape[0]
    best_x = x.clone()
    best_fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    best_loss = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
    proj = _projector(threat, x)
    with attack_mode(model):
        g = default_generator(generator, x.device)
        for _ in range(restarts):
            todo = ~best_fooled if early_stop else torch.ones(n, dtype=torch.bool, device=x.device)
            idx = todo.nonzero().squeeze(1)
            full = idx.numel() == n  # every row: update the bookkeeping with torch.where, no gathers
            x_adv = threat.random_init(x[idx], g) if random_start else x[idx].clone()
            for t in range(steps + 1):
                if idx.numel() == 0:
                    break
                yi = y if full else y[idx]
                ti = None if target is None else (target if full else target[idx])
                if t < steps:
                    l, logits, grad = loss_and_grad(model, x_adv, yi, loss_fn, ti)
                else:
                    with torch.no_grad():
                        logits = model(x_adv)
                        l = loss_fn(logits, yi, ti)
                if t == 0:
                    check_logits(logits, yi)
                fooled = is_fooled(logits, yi, ti)
                if full:
                    better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (l > best_loss))
                    best_x = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x_adv, best_x)
                    best_loss = torch.where(better, l, best_loss)
                    best_fooled = best_fooled | fooled
                else:
                    better = (fooled & ~best_fooled[idx]) | ((fooled == best_fooled[idx]) & (l > best_loss[idx]))
                    upd = idx[better]
                    best_x[upd] = x_adv[better]
                    best_loss[upd] = l[better]
                    best_fooled[upd] = fooled[better]
                if t == steps:
                    break
                x_adv = proj(threat.step(x_adv, grad, alpha, l1_sparsity), None if full else idx)
                if early_stop and fooled.any():
                    keep = ~fooled
                    idx, x_adv, full = idx[keep], x_adv[keep], False
    return best_x.detach()


def _apgd_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, loss_fn: LossFn,
              steps: int, rho: float, target: Optional[torch.Tensor], early_stop: bool,
              generator: torch.Generator, l1_sparsity: float,
              give_up: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run (Croce & Hein 2020, Alg. 1). Returns (x_adv, fooled, best_loss).

    Success is misclassification (as in AutoAttack, also for targeted losses). Fooled points are frozen at
    their first adversarial iterate when ``early_stop`` is set; the others return their highest-loss iterate.
    The state of the points still moving is kept compacted (gathered again only when points leave), so a step
    costs one forward-backward pass plus elementwise work on those points. ``give_up``: see :func:`apgd`.
    """
    n = x.shape[0]
    dev, dt = x.device, x.dtype
    # Checkpoints: p0 = 0, p1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), in iterations.
    period = max(int(0.22 * steps), 1)
    period_min, period_decr = max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    box = threat.linf_box(x)

    x_adv = threat.random_init(x, generator)
    loss, logits, grad = loss_and_grad(model, x_adv, y, loss_fn, target)
    check_logits(logits, y)
    fooled_all = is_fooled(logits, y)
    out_x = x_adv.clone()  # per point: its first adversarial iterate if fooled, else its best-loss iterate
    loss_out = loss.clone()
    # The points still moving, in order, and their state.
    pos = (~fooled_all).nonzero().squeeze(1) if early_stop else torch.arange(n, device=dev)
    xc, yc = x[pos], y[pos]
    tc = None if target is None else target[pos]
    lo, hi = (None, None) if box is None else (box[0][pos], box[1][pos])
    xa, grad, fooled = x_adv[pos], grad[pos], fooled_all[pos]
    first_adv = xa.clone()
    x_best, grad_best, loss_best = xa.clone(), grad.clone(), loss[pos].clone()
    loss_prev = loss_best.clone()
    eta = torch.full((pos.numel(),), 2.0 * threat.eps_scalar, dtype=dt, device=dev)
    n_increase = torch.zeros(pos.numel(), dtype=torch.long, device=dev)
    loss_best_at_check = loss_best.clone()
    reduced_at_check = torch.ones(pos.numel(), dtype=torch.bool, device=dev)  # no "no-improvement" cut at first
    x_old = xa.clone()
    # give_up: each point's smallest margin (true logit minus the best other) so far, its value at the
    # reference iteration (2% of the budget) or the last checkpoint, and at the random start.
    ref_at = max(int(round(0.02 * steps)), 1)
    margin_min = -margin_loss(logits[pos], yc) if give_up is not None else None
    margin_ref, margin_start, ref_it = margin_min, margin_min, 0

    def proj(v: torch.Tensor) -> torch.Tensor:
        return threat.project(v, xc) if lo is None else torch.clamp(v, lo, hi)

    def rows(mask: torch.Tensor) -> torch.Tensor:
        return mask.view(-1, *([1] * (x.dim() - 1)))

    since_check = 0
    for i in range(steps):
        if pos.numel() == 0:
            break
        momentum = 0.75 if i > 0 else 1.0
        z = proj(threat.step(xa, grad, eta, l1_sparsity))
        x_new = proj(xa + momentum * (z - xa) + (1 - momentum) * (xa - x_old))
        x_old, xa = xa, x_new
        l, logits, grad = loss_and_grad(model, x_new, yc, loss_fn, tc)
        newly = is_fooled(logits, yc) & ~fooled
        if newly.any():
            first_adv = torch.where(rows(newly), x_new, first_adv)
            fooled = fooled | newly
        n_increase += (l > loss_prev).long()
        loss_prev = l
        improved = l > loss_best
        x_best = torch.where(rows(improved), x_new, x_best)
        grad_best = torch.where(rows(improved), grad, grad_best)
        loss_best = torch.where(improved, l, loss_best)
        since_check += 1
        stop = None
        if give_up is not None:
            margin_min = torch.minimum(margin_min, -margin_loss(logits, yc))
            if i + 1 == ref_at:
                margin_ref, ref_it = margin_min, i + 1
        if since_check == period:
            if give_up is not None and i + 1 > ref_it:
                # Give up where the margin left is more than give_up times what the point would still lose at
                # its rate since the reference for the rest of the budget, unless the point is already close
                # (less than a tenth of its margin at the random start left).
                rate = (margin_ref - margin_min).clamp_min(0) / (i + 1 - ref_it)
                stop = ~fooled & (margin_min > give_up * rate * (steps - i - 1)) & (margin_min > 0.1 * margin_start)
                margin_ref, ref_it = margin_min, i + 1
            # Halve the step where progress stalled: too few increases, or no cut and no new best since.
            cut = (n_increase <= rho * period) | (~reduced_at_check & (loss_best_at_check >= loss_best))
            reduced_at_check = cut
            loss_best_at_check = loss_best.clone()
            eta = torch.where(cut, eta / 2.0, eta)
            xa = torch.where(rows(cut), x_best, xa)
            grad = torch.where(rows(cut), grad_best, grad)
            n_increase.zero_()
            since_check = 0
            period = max(period - period_decr, period_min)
        leave = newly if early_stop else torch.zeros_like(newly)
        if stop is not None:
            leave = leave | stop
        if leave.any():  # fooled (and given-up) points leave: write them out, compact the rest
            out_x[pos[leave]] = torch.where(rows(fooled[leave]), first_adv[leave], x_best[leave])
            loss_out[pos[leave]] = loss_best[leave]
            fooled_all[pos[leave]] = fooled[leave]
            k = ~leave
            pos, xc, yc, xa, grad, fooled, first_adv = pos[k], xc[k], yc[k], xa[k], grad[k], fooled[k], first_adv[k]
            x_best, grad_best, loss_best, loss_prev, eta = x_best[k], grad_best[k], loss_best[k], loss_prev[k], eta[k]
            n_increase, loss_best_at_check, reduced_at_check, x_old = (n_increase[k], loss_best_at_check[k],
                                                                        reduced_at_check[k], x_old[k])
            tc = None if tc is None else tc[k]
            lo, hi = (None, None) if lo is None else (lo[k], hi[k])
            if give_up is not None:
                margin_min, margin_ref, margin_start = margin_min[k], margin_ref[k], margin_start[k]
    out_x[pos] = torch.where(rows(fooled), first_adv, x_best)
    loss_out[pos] = loss_best
    fooled_all[pos] = fooled
    return out_x, fooled_all, loss_out


def _check_give_up(give_up: Optional[float]) -> None:
    if give_up is not None and not give_up > 0:
        raise ValueError(f"give_up must be a positive number (or None to run every point for all steps), got {give_up}")


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *, loss: str = "ce",
         steps: int = 100, restarts: int = 1, rho: float = 0.75, target: Optional[torch.Tensor] = None,
         early_stop: bool = True, l1_sparsity: float = 0.05, give_up: Optional[float] = None,
         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Auto-PGD (Croce & Hein 2020): step-size schedule with checkpoints, momentum 0.75, no tuning.

    Arguments:
        loss: ``"ce"`` (APGD-CE) or ``"dlr"`` (APGD-DLR), or ``"margin"``. steps: iterations per restart
            (100 in AutoAttack). restarts: random restarts, run only on points not yet fooled.
        rho: checkpoint threshold for the share of loss increases. target: target classes for a
            targeted loss. early_stop: freeze a sample at its first misclassification.
        give_up: ``None`` (default) runs every point still correct for all ``steps``. A number ``k`` stops a
            point at APGD's step-size checkpoints (22%, 41%, 57%, ... of ``steps``) when its smallest margin
            so far (true logit minus the best other) is more than ``k`` times what it would still lose if it
            kept losing margin at its rate since the previous checkpoint (the first: 2% of ``steps``) for the
            rest of the run, and more than a tenth of its margin at the random start (a point that has come
            that close keeps going). APGD's steps only shrink as the run goes on, so the linear extrapolation
            already overestimates what is left; ``k`` is a further safety factor (bench/RESULTS.md, "Issue 13,
            target 1", measures k = 8). A stopped point returns its highest-loss iterate, as at the end.
    Returns:
        ``x_adv``: for each sample its first adversarial iterate, or else its highest-loss iterate.
    """
    prepare(model, x, y, threat)
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1, got steps={steps}, restarts={restarts}")
    _check_give_up(give_up)
    loss_fn = get_loss(loss)
    out = x.clone()
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    best_loss = torch.full((x.shape[0],), float("-inf"), dtype=x.dtype, device=x.device)
    with attack_mode(model):
        g = default_generator(generator, x.device)
        for _ in range(restarts):
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xr, fr, lr = _apgd_run(model, x[idx], y[idx], threat, loss_fn, steps, rho,
                                   None if target is None else target[idx], early_stop, g, l1_sparsity, give_up)
            take = fr | (lr > best_loss[idx])
            out[idx[take]] = xr[take]
            best_loss[idx[take]] = lr[take]
            fooled[idx[fr]] = True
    return out.detach()


def apgd_t(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *, steps: int = 100,
           n_target_classes: int = 9, restarts: int = 1, rho: float = 0.75, loss: str = "dlr",
           early_stop: bool = True, l1_sparsity: float = 0.05, give_up: Optional[float] = None,
           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Targeted APGD (Croce & Hein 2020): APGD with the targeted DLR loss towards each of the top-k classes.

    Each target class (the 2nd, 3rd, ... most likely on the clean input) runs only on points that no earlier
    target fooled. Success is any misclassification.

    Arguments:
        n_target_classes: how many of the top classes to target (9 in AutoAttack standard; capped at
            classes - 1). give_up: applies to each target's run on its own (a point given up on for one
            target still runs the next). Other arguments as :func:`apgd`.
    """
    prepare(model, x, y, threat)
    _check_give_up(give_up)
    loss_fn = get_loss(loss)
    out = x.clone()
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    best_loss = torch.full((x.shape[0],), float("-inf"), dtype=x.dtype, device=x.device)
    with attack_mode(model):
        targets = top_targets(model, x, y, n_target_classes)
        g = default_generator(generator, x.device)
        for rank in range(targets.shape[1]):
            for _ in range(restarts):
                idx = (~fooled).nonzero().squeeze(1)
                if idx.numel() == 0:
                    return out.detach()
                target = targets[idx, rank]
                xr, fr, lr = _apgd_run(model, x[idx], y[idx], threat, loss_fn, steps, rho, target, early_stop, g,
                                       l1_sparsity, give_up)
                take = fr | (lr > best_loss[idx])
                out[idx[take]] = xr[take]
                best_loss[idx[take]] = lr[take]
                fooled[idx[fr]] = True
    return out.detach()
