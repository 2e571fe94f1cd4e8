"""Threat models: what an attacker may change, and the one projection and step rule per norm.

Every attack in armor moves through :meth:`ThreatModel.step` and lands back inside the allowed set through
:meth:`ThreatModel.project`; no attack carries its own projection. Tabular domain constraints (immutable,
integer, categorical, relations) plug in through the optional ``constraints`` object, which must provide
``repair(x_adv, x) -> x_adv`` and ``to_dict()``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional, Union

import torch

Number = Union[float, int]
BoundLike = Union[Number, torch.Tensor]


class Norm(str, Enum):
    """The lp norm that measures a perturbation. Accepts ``"linf"``, ``"l2"``, ``"l1"`` or the enum."""

    LINF = "linf"
    L2 = "l2"
    L1 = "l1"

    @classmethod
    def parse(cls, value: Union[str, "Norm"]) -> "Norm":
        if isinstance(value, Norm):
            return value
        key = str(value).lower().replace("_", "").replace("-", "")
        aliases = {"linf": cls.LINF, "inf": cls.LINF, "li": cls.LINF, "l2": cls.L2, "2": cls.L2, "l1": cls.L1, "1": cls.L1}
        if key not in aliases:
            raise ValueError(f"unknown norm {value!r}: use one of 'linf', 'l2', 'l1'")
        return aliases[key]


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector so it broadcasts over the sample's remaining dims."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def project_l1_ball(delta: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
    """Exact Euclidean projection of each sample of ``delta`` onto the L1 ball of radius ``eps``.

    Sort-based simplex projection (Duchi et al. 2008): O(d log d) per sample. Samples already inside the ball
    are returned unchanged, bit for bit.
    """
    flat = _flat(delta)
    n, d = flat.shape
    eps_t = torch.as_tensor(eps, dtype=flat.dtype, device=flat.device).expand(n) if not torch.is_tensor(eps) or eps.dim() == 0 else eps.to(flat)
    abs_flat = flat.abs()
    outside = abs_flat.sum(dim=1) > eps_t
    if not outside.any():
        return delta
    a = abs_flat[outside]
    e = eps_t[outside]
    mu, _ = torch.sort(a, dim=1, descending=True)
    cumsum = mu.cumsum(dim=1)
    ks = torch.arange(1, d + 1, device=flat.device, dtype=flat.dtype)
    cond = mu - (cumsum - e[:, None]) / ks > 0
    rho = cond.to(flat.dtype).mul(ks).argmax(dim=1)  # last index where cond holds
    theta = (cumsum.gather(1, rho[:, None]).squeeze(1) - e) / (rho + 1).to(flat.dtype)
    projected = torch.sign(flat[outside]) * (a - theta[:, None]).clamp_min(0)
    out = flat.clone()
    out[outside] = projected
    return out.view_as(delta)


def project_l2_ball(delta: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
    norms = _flat(delta).norm(p=2, dim=1)
    eps_t = torch.as_tensor(eps, dtype=delta.dtype, device=delta.device)
    factor = torch.where(norms > eps_t, eps_t / norms.clamp_min(1e-30), torch.ones_like(norms))
    return delta * _per_sample(factor, delta)


@dataclass(frozen=True, eq=False)
class ThreatModel:
    """What the attacker may do: an lp ball of radius ``eps`` around each input, inside ``bounds``.

    Arguments:
        norm: ``"linf"``, ``"l2"`` or ``"l1"`` (or :class:`Norm`).
        eps: radius in input units (data lives in [0, 1]). A scalar, or for linf a per-feature tensor
            broadcastable to one sample's shape (tabular: per-feature budgets).
        bounds: ``(lower, upper)``, each a scalar or a per-feature tensor broadcastable to one sample.
        constraints: optional domain constraints (tabular), applied after the norm projection.

    Examples:
        >>> threat = ThreatModel("linf", eps=8 / 255)
        >>> x_adv = threat.project(x + delta, x)
    """

    norm: Norm = Norm.LINF
    eps: Union[float, torch.Tensor] = 0.0
    bounds: tuple[BoundLike, BoundLike] = (0.0, 1.0)
    constraints: Any = field(default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", Norm.parse(self.norm))
        eps = self.eps
        if torch.is_tensor(eps):
            if not torch.isfinite(eps).all() or (eps < 0).any():
                raise ValueError("eps must be finite and >= 0 everywhere")
            if self.norm is not Norm.LINF and eps.numel() != 1:
                raise ValueError("a per-feature eps tensor is only defined for the linf norm")
            if eps.numel() == 1:
                object.__setattr__(self, "eps", float(eps))
        else:
            try:
                eps_f = float(eps)
            except (TypeError, ValueError):
                raise ValueError(f"eps must be a number, got {eps!r}") from None
            if not math.isfinite(eps_f) or eps_f < 0:
                raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
            object.__setattr__(self, "eps", eps_f)
        if len(self.bounds) != 2:
            raise ValueError(f"bounds must be a (lower, upper) pair, got {self.bounds!r}")
        lo, hi = self.bounds
        if not torch.is_tensor(lo) and not torch.is_tensor(hi) and float(lo) >= float(hi):
            raise ValueError(f"bounds lower {lo} must be below upper {hi}")
        if torch.is_tensor(lo) or torch.is_tensor(hi):
            if (torch.as_tensor(lo) > torch.as_tensor(hi)).any():
                raise ValueError("bounds: some lower bound is above its upper bound")

    # ------------------------------------------------------------------ helpers
    def _bound(self, b: BoundLike, like: torch.Tensor) -> torch.Tensor | float:
        return b.to(like) if torch.is_tensor(b) else float(b)

    def _eps(self, like: torch.Tensor) -> torch.Tensor | float:
        return self.eps.to(like) if torch.is_tensor(self.eps) else self.eps

    def eps_tensor(self, like: torch.Tensor) -> torch.Tensor:
        """eps as a tensor in ``like``'s dtype and device (a 0-d tensor, or the per-feature budgets)."""
        return torch.as_tensor(self._eps(like), dtype=like.dtype, device=like.device)

    @property
    def eps_scalar(self) -> float:
        """A scalar summary of eps (the maximum, for per-feature budgets), for step sizes and reports."""
        return float(self.eps.max()) if torch.is_tensor(self.eps) else float(self.eps)

    def clamp_bounds(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self._bound(self.bounds[0], x), self._bound(self.bounds[1], x)
        if torch.is_tensor(lo) or torch.is_tensor(hi):
            lo_t = torch.as_tensor(lo, dtype=x.dtype, device=x.device)
            hi_t = torch.as_tensor(hi, dtype=x.dtype, device=x.device)
            return torch.maximum(torch.minimum(x, hi_t), lo_t)
        return x.clamp(lo, hi)

    # ------------------------------------------------------------------ the two rules every attack shares
    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Map ``x_adv`` into the threat set around ``x``: the norm ball, then the bounds, then constraints.

        Clipping to a box only shrinks each coordinate of the perturbation, so the result stays in the ball.
        Points already inside are returned unchanged.
        """
        if self.norm is Norm.LINF:
            # Clamp against x +- eps directly, so that the bound holds exactly in the tensor's own dtype.
            eps = torch.as_tensor(self._eps(x), dtype=x.dtype, device=x.device)
            x_new = self.clamp_bounds(torch.minimum(torch.maximum(x_adv, x - eps), x + eps))
            # x + eps rounds: nudge the few coordinates whose float difference exceeds eps one ulp towards x.
            for _ in range(3):
                over = (x_new - x).abs() > eps
                if not over.any():
                    break
                x_new = torch.where(over, torch.nextafter(x_new, x), x_new)
            return x_new if self.constraints is None else self.constraints.repair(x_new, x)
        delta = x_adv - x
        if self.norm is Norm.L2:
            delta = project_l2_ball(delta, self.eps)
        else:
            delta = project_l1_ball(delta, self.eps)
        x_new = self.clamp_bounds(x + delta)
        # Rounding in x + delta can leave the norm a hair above eps: shrink those samples until it holds exactly.
        for k in range(6):
            norms = self.norm_of(x_new - x)
            over = norms > self.eps_scalar
            if not over.any():
                break
            shrink = (self.eps_scalar / norms.clamp_min(1e-30)) * (1 - 1e-6 * 4**k)
            fixed = self.clamp_bounds(x + (x_new - x) * _per_sample(shrink, x))
            x_new = torch.where(_per_sample(over, x), fixed, x_new)
        else:
            # eps below the float resolution of x: the only exactly feasible move left is none.
            x_new = torch.where(_per_sample(self.norm_of(x_new - x) > self.eps_scalar, x), x, x_new)
        if self.constraints is not None:
            x_new = self.constraints.repair(x_new, x)
        return x_new

    def linf_box(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For linf without constraints: per-coordinate ``(lo, hi)`` with ``project(x_adv, x)`` equal to
        ``x_adv.clamp(lo, hi)`` (up to the last ulp at the edge), else ``None``.

        Attacks compute the box once per call and then project each iterate with one clamp, instead of the
        maximum / minimum / bounds / ulp-check passes of :meth:`project`. Exact in the tensor's dtype: ``lo`` and
        ``hi`` are nudged so that ``|hi - x| <= eps`` and ``|x - lo| <= eps`` hold after rounding, and since
        rounding is monotonic every point of the box satisfies it too.
        """
        if self.norm is not Norm.LINF or self.constraints is not None:
            return None
        eps = torch.as_tensor(self._eps(x), dtype=x.dtype, device=x.device)
        lo, hi = x - eps, x + eps
        for _ in range(3):
            lo_over, hi_over = (x - lo) > eps, (hi - x) > eps
            if not (lo_over.any() or hi_over.any()):
                break
            lo = torch.where(lo_over, torch.nextafter(lo, x), lo)
            hi = torch.where(hi_over, torch.nextafter(hi, x), hi)
        return self.clamp_bounds(lo), self.clamp_bounds(hi)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, step_size: float | torch.Tensor,
             l1_sparsity: float = 0.05) -> torch.Tensor:
        """One steepest-ascent step of length ``step_size`` (in this norm) along ``grad``; not projected.

        ``step_size`` is a scalar or a per-sample vector. For L1 the step is sparse (SLIDE, Tramer & Boneh
        2019; APGD-L1): it moves only the top ``l1_sparsity`` share of coordinates by |grad|, skipping those
        already at a bound in the ascent direction, since moving them would be undone by clipping.
        """
        size = step_size if not torch.is_tensor(step_size) or step_size.dim() == 0 else _per_sample(step_size, x_adv)
        if self.norm is Norm.LINF:
            if torch.is_tensor(self.eps):
                if self.eps_scalar == 0:  # nothing may move (and eps / eps_scalar would be 0 / 0)
                    return x_adv
                # Per-feature budgets: scale each coordinate's step by its share of the budget.
                return x_adv + size * grad.sign() * (self._eps(x_adv) / self.eps_scalar)
            return x_adv + size * grad.sign()
        flat = _flat(grad)
        if self.norm is Norm.L2:
            direction = flat / flat.norm(p=2, dim=1, keepdim=True).clamp_min(1e-12)
            return x_adv + size * direction.view_as(grad)
        lo = torch.as_tensor(self._bound(self.bounds[0], x_adv), dtype=x_adv.dtype, device=x_adv.device)
        hi = torch.as_tensor(self._bound(self.bounds[1], x_adv), dtype=x_adv.dtype, device=x_adv.device)
        blocked = ((grad > 0) & (x_adv >= hi)) | ((grad < 0) & (x_adv <= lo))
        score = _flat(grad.abs().masked_fill(blocked, 0))
        d = score.shape[1]
        k = max(1, int(math.ceil(l1_sparsity * d)))
        kth = score.topk(k, dim=1).values[:, -1:]
        mask = (score >= kth) & (score > 0)
        sgn = _flat(grad.sign()) * mask
        direction = sgn / sgn.abs().sum(dim=1, keepdim=True).clamp_min(1)
        return x_adv + size * direction.view_as(grad)

    def random_init(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A uniformly random point of the ball around ``x`` (then projected into bounds/constraints)."""
        if self.norm is Norm.LINF:
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            delta = (2 * u - 1) * torch.as_tensor(self._eps(x), dtype=x.dtype, device=x.device)
        else:
            n = x.shape[0]
            d = x[0].numel()
            if self.norm is Norm.L2:
                direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                direction = direction / _per_sample(_flat(direction).norm(dim=1).clamp_min(1e-12), x)
            else:
                # Uniform on the L1 sphere: Laplace samples, normalised.
                e = -torch.log(torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype).clamp_min(1e-12))
                s = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
                direction = e * s
                direction = direction / _per_sample(_flat(direction).abs().sum(dim=1).clamp_min(1e-12), x)
            r = torch.rand(n, generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
            delta = direction * _per_sample(r * self.eps_scalar, x)
        return self.project(x + delta, x)

    def norm_of(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-sample size of ``delta`` in this norm (linf with per-feature eps: relative to eps)."""
        flat = _flat(delta)
        if self.norm is Norm.LINF:
            if torch.is_tensor(self.eps):
                return _flat(delta.abs() / self._eps(delta).clamp_min(1e-30).expand_as(delta)).amax(dim=1) * self.eps_scalar
            return flat.abs().amax(dim=1)
        if self.norm is Norm.L2:
            return flat.norm(p=2, dim=1)
        return flat.abs().sum(dim=1)

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, atol: float = 1e-6) -> torch.Tensor:
        """Per-sample bool: ``x_adv`` is inside the ball (up to ``atol``) and inside the bounds exactly."""
        in_ball = self.norm_of(x_adv - x) <= self.eps_scalar + atol
        in_bounds = _flat(self.clamp_bounds(x_adv) == x_adv).all(dim=1)
        return in_ball & in_bounds

    # ------------------------------------------------------------------ validation and serialisation
    def check_inputs(self, x: torch.Tensor, y: torch.Tensor | None = None, num_classes: int | None = None) -> None:
        """Raise ``ValueError`` naming the problem when inputs cannot be attacked meaningfully."""
        check_inputs(x, y, num_classes, self)

    def scaled(self, factor: float) -> "ThreatModel":
        """The same threat with its radius multiplied by ``factor`` (per-feature budgets keep their shape)."""
        if factor == 1.0:
            return self
        return ThreatModel(self.norm, self.eps * factor, self.bounds, self.constraints)

    def with_eps(self, eps: float) -> "ThreatModel":
        """The same threat at radius ``eps``; per-feature budgets are scaled so that their maximum is ``eps``."""
        if torch.is_tensor(self.eps):
            scaled = self.eps * (eps / self.eps_scalar) if self.eps_scalar > 0 else torch.full_like(self.eps, eps)
            return ThreatModel(self.norm, scaled, self.bounds, self.constraints)
        return ThreatModel(self.norm, eps, self.bounds, self.constraints)

    def to_dict(self) -> dict[str, Any]:
        def enc(v: Any) -> Any:
            return v.tolist() if torch.is_tensor(v) else v

        out: dict[str, Any] = {"norm": self.norm.value, "eps": enc(self.eps), "bounds": [enc(b) for b in self.bounds]}
        if self.constraints is not None:
            out["constraints"] = self.constraints.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ThreatModel":
        def dec(v: Any) -> Any:
            return torch.tensor(v, dtype=torch.float32) if isinstance(v, list) else v

        constraints = d.get("constraints")
        if constraints is not None:
            constraints = decode_constraints(constraints)
        return cls(d["norm"], dec(d["eps"]), tuple(dec(b) for b in d.get("bounds", (0.0, 1.0))), constraints)

    def __repr__(self) -> str:
        eps = f"{self.eps:g}" if not torch.is_tensor(self.eps) else f"tensor(max={self.eps_scalar:g})"
        lo, hi = (f"{b:g}" if not torch.is_tensor(b) else "tensor" for b in self.bounds)
        extra = ", constrained" if self.constraints is not None else ""
        return f"ThreatModel({self.norm.value}, eps={eps}, bounds=[{lo}, {hi}]{extra})"


def decode_constraints(d: Any) -> Any:
    """Rebuild domain constraints from the dict their ``to_dict()`` wrote, through the decoder that the domain
    registered for its ``kind`` (:attr:`armor.plugins.Domain.constraints`)."""
    from .plugins import contributions

    decoders = contributions("constraints")
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind not in decoders:
        known = ", ".join(decoders) or "none installed"
        raise ValueError(f"threat model constraints of kind {kind!r} cannot be decoded (known kinds: {known}); "
                         "the domain that wrote them is not installed or the file is damaged")
    return decoders[kind](d)


def check_inputs(x: Any, y: Any = None, num_classes: int | None = None, threat: ThreatModel | None = None) -> None:
    """Validate an attack's inputs; every failure is a ``ValueError`` that says how to fix it."""
    if not torch.is_tensor(x):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}; convert with torch.as_tensor(x)")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor in [0, 1], got dtype {x.dtype}; use x.float() / 255 for uint8 images")
    if x.dim() < 2:
        raise ValueError(f"x must be batched with shape (N, ...), got shape {tuple(x.shape)}; add a batch dim with x[None]")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf values; clean or impute them before attacking")
    if threat is not None:
        sample = tuple(x.shape[1:])
        for what, v in (("eps", threat.eps), ("lower bound", threat.bounds[0]), ("upper bound", threat.bounds[1])):
            if torch.is_tensor(v) and v.dim() > 0:
                try:
                    fits = torch.broadcast_shapes(tuple(v.shape), sample) == sample
                except RuntimeError:
                    fits = False
                if not fits:
                    raise ValueError(f"the threat model's per-feature {what} has shape {tuple(v.shape)}, which does "
                                     f"not fit one input of shape {sample}: give one value per feature "
                                     f"(shape {sample}) or a scalar")
        warn_if_vacuous(threat, x)
        if (threat.clamp_bounds(x) != x).any():
            lo, hi = threat.bounds
            raise ValueError(
                f"x lies outside the threat model's bounds (min {x.min().item():.4g}, max {x.max().item():.4g}); "
                f"armor expects data in input units within bounds {lo if not torch.is_tensor(lo) else 'tensor'}.."
                f"{hi if not torch.is_tensor(hi) else 'tensor'}: put normalisation inside the model")
    if y is not None:
        if not torch.is_tensor(y):
            raise ValueError(f"y must be a torch.Tensor of class indices, got {type(y).__name__}")
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(f"y must hold integer class indices (int64), got dtype {y.dtype}; use y.long()")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
        if y.numel() and y.min() < 0:
            raise ValueError(f"labels must be >= 0, got min label {int(y.min())}")
        if num_classes is not None and y.numel() and y.max() >= num_classes:
            raise ValueError(f"label {int(y.max())} is out of range for a model with {num_classes} outputs")


def vacuous_eps(threat: ThreatModel, x: torch.Tensor) -> Optional[str]:
    """A message when ``threat``'s eps allows any input to become any other (so robust accuracy is meaningless),
    else ``None``: linf eps >= the bounds' width, l2 eps >= its diagonal, l1 eps >= width x features."""
    lo, hi = threat.bounds
    if torch.is_tensor(lo) or torch.is_tensor(hi) or torch.is_tensor(threat.eps):
        return None
    width, d = float(hi) - float(lo), x[0].numel() if x.dim() > 1 and x.shape[0] else 1
    whole = {Norm.LINF: width, Norm.L2: width * math.sqrt(d), Norm.L1: width * d}[threat.norm]
    if threat.eps < whole:
        return None
    hint = f"; did you mean {threat.eps:g}/255 = {threat.eps / 255:.4g}?" if threat.eps > 1 and width <= 1 else ""
    return (f"eps={threat.eps:g} ({threat.norm.value}) covers the whole input range [{float(lo):g}, {float(hi):g}]: "
            f"every input can be turned into any other, so no model can be robust at this eps{hint}")


def warn_if_vacuous(threat: ThreatModel, x: torch.Tensor) -> None:
    message = vacuous_eps(threat, x)
    if message:
        warnings.warn(message, stacklevel=3)


def warn_if_probabilities(logits: torch.Tensor) -> None:
    """Attacks need logits: softmax outputs saturate gradients and make losses like DLR meaningless."""
    if logits.dim() == 2 and logits.shape[1] > 1 and logits.shape[0] > 0:
        sums = logits.detach().sum(dim=1)
        if (logits.detach() >= 0).all() and torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
            warnings.warn("the model's outputs look like probabilities (non-negative rows summing to 1); "
                          "attacks and checks expect logits: remove the final softmax", stacklevel=3)
