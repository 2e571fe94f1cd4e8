"""Carlini & Wagner L2 (2017): a minimum-norm attack, optimised with Adam in tanh space."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..threat import ThreatModel
from ._core import attack_mode, check_logits, prepare


def cw_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *, c: float = 1.0,
          kappa: float = 0.0, steps: int = 100, binary_steps: int = 9, lr: float = 0.02,
          generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """C&W-L2: minimise ||delta||_2^2 + c * max(z_y - max_{j!=y} z_j, -kappa), binary search over c.

    Each sample keeps the smallest-L2 adversarial point found; the result is then projected into the threat
    set (any norm), so a success that needs more than eps is clipped and usually stops being adversarial.

    Arguments:
        c: initial trade-off constant (searched per sample). kappa: confidence margin. steps: Adam steps per
            binary-search step. binary_steps: search steps over c. lr: Adam learning rate.
    """
    prepare(model, x, y, threat)
    lo = torch.as_tensor(threat.bounds[0], dtype=x.dtype, device=x.device)
    hi = torch.as_tensor(threat.bounds[1], dtype=x.dtype, device=x.device)
    n = x.shape[0]
    dims = tuple(range(1, x.dim()))
    span = (hi - lo).clamp_min(1e-12)
    # tanh space keeps x_adv in bounds. Inputs at a bound (most pixels of a digit are 0) would sit where tanh
    # is flat and never move, so w0 is capped at |w0| <= 3 and the cap's offset is added back exactly.
    w0 = torch.atanh(((x - lo) / span * 2 - 1).clamp(-0.995, 0.995))
    offset = x - (lo + span * (torch.tanh(w0) + 1) / 2)
    c_now = torch.full((n,), float(c), dtype=x.dtype, device=x.device)
    c_lo = torch.zeros(n, dtype=x.dtype, device=x.device)
    c_hi = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
    best_l2 = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
    best_x = x.clone()
    with attack_mode(model):
        for _ in range(binary_steps):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=lr)
            success = torch.zeros(n, dtype=torch.bool, device=x.device)
            for step in range(steps):
                with torch.enable_grad():
                    x_adv = threat.clamp_bounds(lo + span * (torch.tanh(w) + 1) / 2 + offset)
                    logits = model(x_adv)
                    if step == 0:
                        check_logits(logits, y)
                    true = logits.gather(1, y[:, None]).squeeze(1)
                    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
                    l2 = (x_adv - x).pow(2).sum(dim=dims)
                    loss = (l2 + c_now * (true - other + kappa).clamp_min(0)).sum()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                opt.step()
                with torch.no_grad():
                    adv = (other - true) > kappa if kappa > 0 else logits.argmax(1) != y
                    norm = l2.detach().sqrt()
                    improve = adv & (norm < best_l2)
                    best_l2[improve] = norm[improve]
                    best_x[improve] = x_adv.detach()[improve]
                    success |= adv
            # Found: try a smaller c; not found: a larger one (x10 until bracketed).
            c_hi = torch.where(success, torch.minimum(c_hi, c_now), c_hi)
            c_lo = torch.where(success, c_lo, torch.maximum(c_lo, c_now))
            c_now = torch.where(torch.isinf(c_hi), c_now * 10, (c_lo + c_hi) / 2)
    return threat.project(best_x, x).detach()
