"""The threat model on what an agent observes: an lp ball in *normalised* observation units.

Observation dimensions have wildly different scales (CartPole: a cart position in metres, a pole angle in
radians), so a budget means something only per normalised dimension, as in SA-PPO (eps 0.075 on normalised
states). :class:`ObsNormalizer` maps a raw observation ``o`` to ``z = (o - mean) / scale``; attacks work in
z-space with a plain :class:`armor.ThreatModel` (one projection per norm, the library's), and the raw budget
per dimension, ``eps * scale``, is reported beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import distributions as D

from ...threat import ThreatModel
from .policy import PolicyAdapter

_BIG = float(np.finfo(np.float32).max) / 4  # "unbounded" that survives JSON and float32 arithmetic


@dataclass(frozen=True)
class ObsNormalizer:
    """``z = (obs - mean) / scale`` per observation dimension (``scale`` > 0)."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __post_init__(self) -> None:
        if self.mean.shape != self.scale.shape or self.mean.dim() != 1:
            raise ValueError(f"mean and scale must be vectors of one length, got {tuple(self.mean.shape)} and "
                             f"{tuple(self.scale.shape)}")
        if not torch.isfinite(self.scale).all() or (self.scale <= 0).any():
            raise ValueError("every observation scale must be finite and > 0")

    def to_z(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean.to(obs)) / self.scale.to(obs)

    def from_z(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale.to(z) + self.mean.to(z)

    @classmethod
    def from_observations(cls, obs: Any, floor: float = 1e-3) -> "ObsNormalizer":
        """Mean and standard deviation of observations the clean agent visited (std floored at ``floor``)."""
        x = torch.as_tensor(np.asarray(obs), dtype=torch.float32).reshape(len(obs), -1)
        if x.shape[0] < 2:
            raise ValueError("need at least 2 observations to estimate the per-dimension scale")
        return cls(x.mean(0), x.std(0).clamp_min(floor))

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ObsNormalizer":
        return cls(torch.tensor(d["mean"], dtype=torch.float32), torch.tensor(d["scale"], dtype=torch.float32))


def observation_threat(normalizer: ObsNormalizer, norm: str, eps: float, low: Any = None,
                       high: Any = None) -> ThreatModel:
    """The threat in z-units: an lp ball of radius ``eps`` whose bounds are the observation space's
    (``low``/``high`` in raw units, infinite sides left open)."""
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0 (in normalised observation units), got {eps}")
    d = normalizer.mean.numel()

    def side(v: Any, default: float) -> torch.Tensor:
        if v is None:
            return torch.full((d,), default)
        t = torch.as_tensor(np.asarray(v, dtype=np.float64), dtype=torch.float64).reshape(-1)
        z = (t - normalizer.mean.double()) / normalizer.scale.double()
        return torch.where(torch.isfinite(z), z, torch.full_like(z, default)).clamp(-_BIG, _BIG).float()

    return ThreatModel(norm, eps, (side(low, -_BIG), side(high, _BIG)))


def to_raw(normalizer: ObsNormalizer, threat: ThreatModel, z_adv: torch.Tensor, clean: Any) -> torch.Tensor:
    """Raw observations for ``z_adv`` (a ``(n, d)`` batch in z-units around the raw batch ``clean``, of any
    shape), in ``clean``'s dtype and shape, still inside the threat after rounding.

    Rounding ``from_z(z_adv)`` to float32 can move a coordinate a hair past the ball's edge, by as much as one
    ulp of the raw value over its scale (highway-env's "presence" feature: a constant 1 with the scale floored at
    1e-3 turns one float32 ulp into 1e-4 z-units). Such rows are nudged one ulp at a time towards the clean
    observation (which only shrinks the perturbation) and a row that still does not fit (never seen) falls back
    to the clean one. The guarantee: ``threat.contains(to_z(result), to_z(clean), atol=0)`` in float64."""
    clean = torch.as_tensor(np.asarray(clean) if not torch.is_tensor(clean) else clean)
    flat = clean.reshape(clean.shape[0], -1)
    z = normalizer.to_z(flat.double())
    raw = normalizer.from_z(z_adv.detach().double()).to(flat.dtype)
    for _ in range(8):
        bad = ~threat.contains(normalizer.to_z(raw.double()), z, atol=0.0)
        if not bad.any():
            return raw.reshape(clean.shape)
        raw = torch.where(bad[:, None], torch.nextafter(raw, flat), raw)
    bad = ~threat.contains(normalizer.to_z(raw.double()), z, atol=0.0)
    return torch.where(bad[:, None], flat, raw).reshape(clean.shape)


def raw_eps(normalizer: ObsNormalizer, eps: float) -> list[float]:
    """The budget per raw observation dimension (linf): ``eps * scale``."""
    return [float(v) for v in eps * normalizer.scale]


def adapter_in_z(adapter: PolicyAdapter, normalizer: ObsNormalizer) -> PolicyAdapter:
    """The same agent seen from z-space: its input is a normalised observation."""

    def distribution(z: torch.Tensor) -> D.Distribution:
        return adapter.distribution(normalizer.from_z(z))

    value = None if adapter.value is None else (lambda z: adapter.value(normalizer.from_z(z)))
    return PolicyAdapter(distribution, value, adapter.discrete, adapter.module)


__all__ = ["ObsNormalizer", "adapter_in_z", "observation_threat", "raw_eps", "to_raw"]
