"""Square Attack (Andriushchenko et al. 2020): score-based black-box search with random square updates.

It never reads a gradient, which makes it the suite's check against gradient masking: if Square beats the
white-box attacks, the gradients were lying.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..threat import Norm, ThreatModel
from ._core import attack_mode, check_logits, default_generator, margin_loss, prepare


def _p_schedule(p_init: float, it: int, n_queries: int) -> float:
    """The paper's piecewise-constant schedule for the share of pixels a square covers (rescaled to 10k)."""
    it = int(it / n_queries * 10000)
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
                       (8000, 256)):
        if it <= bound:
            return p_init / div
    return p_init / 512


def _as_image(x: torch.Tensor) -> torch.Tensor:
    """View inputs as (N, C, H, W); tabular (N, D) becomes (N, 1, 1, D) so squares become strips."""
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        return x.unsqueeze(1)
    return x.reshape(x.shape[0], 1, 1, -1)


def _ring_profile(h: int, w: int, device, dtype) -> torch.Tensor:
    """The L2 attack's 'meta pseudo-gaussian' window profile: nested rings with weight 1/(r+1)^2, unit norm."""
    yy = torch.arange(h, device=device, dtype=dtype)[:, None]
    xx = torch.arange(w, device=device, dtype=dtype)[None, :]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    r = torch.maximum((yy - cy).abs(), (xx - cx).abs()).floor()
    prof = 1.0 / (r + 1) ** 2
    return prof / prof.norm()


def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *, n_queries: int = 5000,
           p_init: float = 0.8, restarts: int = 1, give_up: Optional[float] = None,
           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Square Attack for linf and l2, untargeted, margin loss, at most ``n_queries`` model queries per sample.

    Arguments:
        n_queries: query budget per sample (5000 in AutoAttack standard). p_init: initial share of the input a
            square covers. restarts: independent runs on the samples not yet fooled.
        give_up: ``None`` (default) spends the whole budget on every point still correct. A number ``k`` stops
            a point at the checkpoints 5%, 10%, 20%, 40% and 80% of ``n_queries`` when its margin is more than
            ``k`` times what it would still lose if it kept losing margin at its rate since the previous
            checkpoint for the rest of the budget. Square's steps only shrink as the budget runs (the square
            size follows a decreasing schedule), so the linear extrapolation already overestimates what is
            left; ``k`` is a further safety factor (bench/RESULTS.md, "Attacks", measures k = 4).
    Returns:
        ``x_adv``: fooled samples stop at their first success; the others return their lowest-margin point.
    """
    prepare(model, x, y, threat)
    if threat.norm is Norm.L1:
        raise ValueError("square supports the linf and l2 norms; use apgd or pgd for l1")
    if n_queries < 1:
        raise ValueError(f"n_queries must be >= 1, got {n_queries}")
    if give_up is not None and not give_up > 0:
        raise ValueError(f"give_up must be a positive number (or None to spend the whole budget), got {give_up}")
    out = x.clone()
    with attack_mode(model), torch.no_grad():
        g = default_generator(generator, x.device)
        logits = model(x)
        check_logits(logits, y)
        fooled = logits.argmax(1) != y
        for _ in range(restarts):
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            run = _square_linf if threat.norm is Norm.LINF else _square_l2
            xr, fr = run(model, x[idx], y[idx], threat, n_queries, p_init, g, give_up)
            out[idx] = xr
            fooled[idx[fr]] = True
    return out.detach()


class _GiveUp:
    """The ``give_up`` rule of :func:`square` on one run: ``check(it, margin)`` says which points to stop now."""

    def __init__(self, factor: Optional[float], n_queries: int, margin: torch.Tensor):
        self.factor, self.n = factor, n_queries
        self.ref_at = max(int(round(0.025 * n_queries)), 1)
        self.checks = [max(int(round(f * n_queries)), 1) for f in (0.05, 0.1, 0.2, 0.4, 0.8)]
        self.ref, self.ref_it = margin.clone(), 0

    def check(self, it: int, margin: torch.Tensor) -> Optional[torch.Tensor]:
        if self.factor is None:
            return None
        if it == self.ref_at:
            self.ref, self.ref_it = margin.clone(), it
        if it not in self.checks or it <= self.ref_it:
            return None
        rate = (self.ref - margin).clamp_min(0) / (it - self.ref_it)
        stop = margin > self.factor * rate * (self.n - it)
        self.ref, self.ref_it = margin.clone(), it
        return stop

    def keep(self, k: torch.Tensor) -> None:
        self.ref = self.ref[k]


def _square_linf(model, x, y, threat, n_queries, p_init, g, give_up=None):
    """linf Square on the points of ``x``; returns (x_best, fooled).

    The state of the points still in play (their best point, clean point, box and margin) is kept compacted and
    is re-gathered only when some point is fooled, so an iteration costs one forward pass plus work on the
    squares themselves: a candidate is the current best with one window replaced by ``x +- eps`` (clamped).
    """
    shape = x.shape
    xi = _as_image(x)
    n, c, h, w = xi.shape
    dev = x.device
    eps = threat.eps_scalar
    box = threat.linf_box(x)  # None with constraints: then every candidate goes through threat.project
    # Init: vertical stripes of +-eps (one sign per column and channel).
    signs = torch.randint(0, 2, (n, c, 1, w), generator=g, device=dev).to(x.dtype) * 2 - 1
    out = _as_image(threat.project((xi + eps * signs).reshape(shape), x)).clone()
    margin = -margin_loss(model(out.reshape(shape)), y)  # > 0 while correctly classified
    fooled = margin <= 0
    # The points in play, in their original order (so every draw below matches one point, as without compaction).
    pos = (~fooled).nonzero().squeeze(1)
    cur, base, yy, mg = out[pos], xi[pos], y[pos], margin[pos]
    lo, hi = (None, None) if box is None else (_as_image(box[0])[pos], _as_image(box[1])[pos])
    ar_sh, ar_sw = torch.arange(h, device=dev), torch.arange(w, device=dev)
    rule = _GiveUp(give_up, n_queries, mg)
    for it in range(1, n_queries):
        m = pos.numel()
        if m == 0:
            break
        p = _p_schedule(p_init, it, n_queries)
        s = max(int(round(math.sqrt(p * h * w))), 1)
        sh, sw = min(s, h), min(s, w)
        top = torch.randint(0, h - sh + 1, (m,), generator=g, device=dev)
        left = torch.randint(0, w - sw + 1, (m,), generator=g, device=dev)
        new_sign = (torch.randint(0, 2, (m, c, 1, 1), generator=g, device=dev).to(x.dtype) * 2 - 1) * eps
        rows = (top[:, None] + ar_sh[:sh])[:, :, None]  # (m, sh, 1)
        cols = (left[:, None] + ar_sw[:sw])[:, None, :]  # (m, 1, sw)
        ar = torch.arange(m, device=dev)[:, None, None]
        cand = cur.clone()
        if lo is None:
            win = torch.zeros(m, 1, h, w, dtype=torch.bool, device=dev)
            win[ar, 0, rows, cols] = True
            cand = _as_image(threat.project(torch.where(win, base + new_sign, cur).reshape(m, *shape[1:]),
                                            base.reshape(m, *shape[1:])))
        else:
            # Advanced indices around the channel slice: the patches come out as (m, sh, sw, c).
            sign = new_sign.view(m, 1, 1, c)
            cand[ar, :, rows, cols] = torch.minimum(torch.maximum(base[ar, :, rows, cols] + sign, lo[ar, :, rows, cols]),
                                                    hi[ar, :, rows, cols])
        new_margin = -margin_loss(model(cand.reshape(m, *shape[1:])), yy)
        better = new_margin < mg
        cur = torch.where(better.view(-1, 1, 1, 1), cand, cur)
        mg = torch.where(better, new_margin, mg)
        done = mg <= 0
        fooled[pos[done]] = True
        stop = rule.check(it, mg)
        if stop is not None:
            done = done | stop
        if done.any():  # write the fooled (and given-up) points out and drop them from the state
            out[pos[done]] = cur[done]
            keep = ~done
            pos, cur, base, yy, mg = pos[keep], cur[keep], base[keep], yy[keep], mg[keep]
            rule.keep(keep)
            if lo is not None:
                lo, hi = lo[keep], hi[keep]
    out[pos] = cur
    return out.reshape(shape), fooled


def _square_l2(model, x, y, threat, n_queries, p_init, g, give_up=None):
    """L2 variant: moves the perturbation mass of one square into another with a ring-shaped profile."""
    xi = _as_image(x)
    n, c, h, w = xi.shape
    eps = threat.eps_scalar
    dev, dt = x.device, x.dtype
    # Init: a grid of ring-profile squares with random signs, scaled to norm eps.
    s0 = max(h // 5, 1)
    delta = torch.zeros_like(xi)
    prof0 = _ring_profile(s0, s0, dev, dt)
    for r0 in range(0, h - s0 + 1, s0):
        for c0 in range(0, w - s0 + 1, s0):
            sign = torch.randint(0, 2, (n, c, 1, 1), generator=g, device=dev).to(dt) * 2 - 1
            delta[:, :, r0:r0 + s0, c0:c0 + s0] += sign * prof0
    delta = delta * (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, 1, 1, 1)
    x_best = threat.project((xi + delta).reshape_as(x), x)
    margin = -margin_loss(model(x_best), y)
    rule = _GiveUp(give_up, n_queries, margin)
    stopped = torch.zeros(n, dtype=torch.bool, device=dev)
    for it in range(1, n_queries):
        todo = ((margin > 0) & ~stopped).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        m = todo.numel()
        p = _p_schedule(p_init, it, n_queries)
        s = max(int(round(math.sqrt(p * h * w))), 3 if min(h, w) >= 3 else 1)
        sh, sw = min(s, h), min(s, w)
        base = _as_image(x[todo])
        d = _as_image(x_best[todo]) - base
        ar = torch.arange(m, device=dev)[:, None, None]

        def window():
            top = torch.randint(0, h - sh + 1, (m,), generator=g, device=dev)
            left = torch.randint(0, w - sw + 1, (m,), generator=g, device=dev)
            win = torch.zeros(m, 1, h, w, dtype=torch.bool, device=dev)
            rows = top[:, None] + torch.arange(sh, device=dev)[None]
            cols = left[:, None] + torch.arange(sw, device=dev)[None]
            win[ar, 0, rows[:, :, None], cols[:, None, :]] = True
            return win

        w1, w2 = window(), window()
        union = w1 | w2
        # Mass freed by clearing both windows, plus whatever budget is unused, goes into window 1.
        free = (d * union).flatten(1).pow(2).sum(1) + (eps ** 2 - d.flatten(1).pow(2).sum(1)).clamp_min(0)
        prof = torch.zeros(m, 1, h, w, dtype=dt, device=dev)
        prof[w1.expand(m, 1, h, w)] = _ring_profile(sh, sw, dev, dt).flatten().repeat(m)
        sign = torch.randint(0, 2, (m, c, 1, 1), generator=g, device=dev).to(dt) * 2 - 1
        old_w1 = d * w1
        new_w1 = old_w1 + sign * prof * (old_w1.flatten(1).norm(dim=1).clamp_min(eps / (h * w))).view(-1, 1, 1, 1)
        new_w1 = new_w1 * (free.sqrt() / new_w1.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, 1, 1, 1)
        d_new = torch.where(union, torch.zeros_like(d), d) + torch.where(w1, new_w1, torch.zeros_like(d))
        cand = threat.project((base + d_new).reshape(m, *x.shape[1:]), x[todo])
        new_margin = -margin_loss(model(cand), y[todo])
        better = new_margin < margin[todo]
        x_best[todo[better]] = cand[better]
        margin[todo[better]] = new_margin[better]
        stop = rule.check(it, margin)
        if stop is not None:
            stopped |= stop
    return x_best, margin <= 0
