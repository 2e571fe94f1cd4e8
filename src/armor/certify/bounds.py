"""Bound propagation: a certified lower bound on robust accuracy for Linear/Conv2d/ReLU/Flatten/Normalize models.

Three methods, each sound (every bound holds for every input of the threat set, up to the float rounding the
certificate's tolerance absorbs):

``ibp``
    Interval bound propagation (Gowal et al. 2018): an interval per neuron, pushed through each layer as
    centre ± radius (``W c + b ± |W| r``). The last linear layer is folded into the margin specification
    ``z_y - z_j`` ("elision"), which is tighter than subtracting two intervals.
``crown-ibp``
    CROWN's backward linear bound on the margins (Zhang et al. 2018) with the intermediate bounds of IBP (Zhang
    et al. 2020): what CROWN-IBP training optimises.
``crown``
    CROWN with its own intermediate bounds: every ReLU whose input interval still straddles 0 has that interval
    tightened by a backward pass from its layer (intersected with IBP's, so it is never looser).

For CROWN the lower relaxation of an unstable ReLU is ``a x`` with ``a = 1`` if ``u >= -l`` else ``0`` (the
"adaptive" choice of the paper), the upper one the chord ``u (x - l) / (u - l)``. The final margin bound of
``crown`` and ``crown-ibp`` is the larger of the CROWN and the IBP bound, so either is at least as tight as
``ibp`` at the same eps (both are sound, so their maximum is).

Threat sets: the ``linf`` ball intersected with the data bounds is a box, bounded exactly by a linear function.
For ``l2`` and ``l1`` a linear function ``a·x`` is bounded over the ball by the dual norm (``a·x0 - eps ||a||_2``,
``a·x0 - eps ||a||_inf``) and over the box ``[x0 - eps, x0 + eps] ∩ bounds`` that contains the ball's feasible
part; both hold on the intersection, and the larger lower bound is kept. Domain constraints (tabular) only shrink
the set, so a bound over the ball holds for them too (it may be looser).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..threat import Norm, ThreatModel, check_inputs
from .network import Conv, Flatten, Linear, Op, Scale, Skip, chain

METHODS = ("ibp", "crown-ibp", "crown")
# A CROWN backward pass holds (batch x specs x layer size) numbers; chunk the specs to stay below this many.
MAX_BACKWARD_NUMBERS = 2 ** 24


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown bound method {method!r}: choose one of {', '.join(METHODS)}")
    return method


@dataclass
class Region:
    """The threat set around a batch ``x``: the box ``[lo, hi]`` (the ball's bounding box within the data bounds)
    and, for l2 / l1, the ball itself (``eps``, its dual norm)."""

    x: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    norm: Norm
    eps: float

    @classmethod
    def of(cls, x: torch.Tensor, threat: ThreatModel) -> "Region":
        eps = threat.eps_tensor(x)
        lo, hi = threat.clamp_bounds(x - eps), threat.clamp_bounds(x + eps)
        if threat.norm is Norm.LINF:
            return cls(x, lo, hi, threat.norm, threat.eps_scalar)
        return cls(x, lo, hi, threat.norm, float(threat.eps_scalar))

    def dual(self, a: torch.Tensor) -> torch.Tensor:
        """||a||_q over the input dimensions of specs ``a`` (batch, specs, *input)."""
        flat = a.flatten(2)
        return flat.norm(dim=-1) if self.norm is Norm.L2 else flat.abs().amax(-1)

    def lower(self, a: torch.Tensor, bias) -> torch.Tensor:
        """min over the set of ``a·x + bias`` (batch, specs): the box bound, and for l2/l1 the ball bound too."""
        c, r = ((self.hi + self.lo) / 2).unsqueeze(1), ((self.hi - self.lo) / 2).unsqueeze(1)
        box = (a * c).flatten(2).sum(-1) - (a.abs() * r).flatten(2).sum(-1)
        if self.norm is not Norm.LINF:
            ball = (a * self.x.unsqueeze(1)).flatten(2).sum(-1) - self.eps * self.dual(a)
            box = torch.maximum(box, ball)
        return box + bias


def _relaxation(l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CROWN's linear relaxation of ReLU on [l, u]: (lower slope, upper slope, upper intercept)."""
    active, unstable = l >= 0, (l < 0) & (u > 0)
    width = (u - l).clamp_min(1e-12)
    up_slope = torch.where(unstable, u / width, active.to(l.dtype))
    up_icpt = torch.where(unstable, -l * u / width, torch.zeros_like(l))
    low_slope = torch.where(unstable, (u >= -l).to(l.dtype), active.to(l.dtype))
    return low_slope, up_slope, up_icpt


def backward(ops: Sequence[Op], end: int, a: torch.Tensor, relu_bounds: dict[int, tuple[torch.Tensor, torch.Tensor]],
             region: Region) -> torch.Tensor:
    """CROWN: the lower bound over the region of ``a · (output of ops[:end])``, ``a`` of shape (batch or 1,
    specs, *that output's shape), with the ReLUs relaxed on ``relu_bounds`` (their input intervals)."""
    bias = 0.0
    for idx in range(end - 1, -1, -1):
        op = ops[idx]
        if op.relu:
            l, u = relu_bounds[idx]
            low, up, icpt = (t.unsqueeze(1) for t in _relaxation(l, u))
            pos, neg = a.clamp(min=0), a.clamp(max=0)
            a = pos * low + neg * up
            bias = bias + (neg * icpt).flatten(2).sum(-1)
        else:
            a, b = op.back(a)
            bias = bias + b
    return region.lower(a, bias)


def _first_block_ball(ops: Sequence[Op], end: int, region: Region) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact bounds of the affine map ops[:end] over the l2 / l1 ball (no ReLU in it): value at x ± eps times the
    dual norm of each row of the composite matrix (the rows come from one backward pass of the identity)."""
    shape = ops[end - 1].out_shape
    x = region.x
    norms = _l2_row_norms(ops[:end]) if region.norm is Norm.L2 else None
    if norms is None:
        size = math.prod(shape)
        rows = torch.eye(size, dtype=x.dtype, device=x.device).reshape((1, size) + tuple(shape))
        for op in reversed(ops[:end]):
            rows, _ = op.back(rows)
        norms = region.dual(rows)
    radius = (region.eps * norms).reshape(shape)
    h = x
    for op in ops[:end]:
        h = op.forward(h)
    return h - radius, h + radius


def _l2_row_norms(block: Sequence[Op]) -> Optional[torch.Tensor]:
    """The l2 norm of every row of the composite matrix of [Normalize,] Conv2d or [Normalize,] [Flatten,] Linear in
    closed form (the squared weights convolved with / multiplied by 1/std^2), or ``None`` for other blocks.

    The same numbers as the identity backward pass of :func:`_first_block_ball`, without its (outputs x inputs)
    matrix: what makes l2 IBP training of a 28x28 small-cnn affordable."""
    block = [op for op in block if not isinstance(op, Skip)]
    scale = block.pop(0) if block and isinstance(block[0], Scale) else None
    if block and isinstance(block[0], Flatten) and len(block) == 2 and isinstance(block[1], Linear):
        block = block[1:]
    if len(block) != 1 or not isinstance(block[0], (Conv, Linear)):
        return None
    op = block[0]
    w2 = op.weight ** 2
    shape = scale.in_shape if scale is not None else op.in_shape
    inv = torch.ones(shape, dtype=w2.dtype, device=w2.device)
    if scale is not None:
        inv = inv / scale._view(scale.std, len(shape)) ** 2
    if isinstance(op, Conv):
        sq = torch.nn.functional.conv2d(inv.unsqueeze(0), w2, None, op.stride, op.padding, op.dilation)[0]
    else:
        sq = w2 @ inv.flatten()
    return sq.clamp_min(0).sqrt().flatten()


def _refine(ops: Sequence[Op], end: int, l: torch.Tensor, u: torch.Tensor,
            relu_bounds: dict[int, tuple[torch.Tensor, torch.Tensor]], region: Region
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Tighten the input interval of the ReLU at ``end`` with CROWN, on the neurons unstable in some sample."""
    b = l.shape[0]
    shape = tuple(l.shape[1:])
    lf, uf = l.flatten(1).clone(), u.flatten(1).clone()
    unstable = ((lf < 0) & (uf > 0)).any(0).nonzero().squeeze(1)
    if unstable.numel() == 0:
        return l, u
    widest = max(math.prod(op.in_shape) for op in ops[:end])
    chunk = max(1, MAX_BACKWARD_NUMBERS // (2 * b * widest))
    size = math.prod(shape)
    for i in range(0, unstable.numel(), chunk):
        idx = unstable[i:i + chunk]
        k = idx.numel()
        spec = torch.zeros((1, 2 * k, size), dtype=l.dtype, device=l.device)
        spec[0, torch.arange(k), idx] = 1.0
        spec[0, k + torch.arange(k), idx] = -1.0
        low = backward(ops, end, spec.reshape((1, 2 * k) + shape), relu_bounds, region)
        lf[:, idx] = torch.maximum(lf[:, idx], low[:, :k])
        uf[:, idx] = torch.minimum(uf[:, idx], -low[:, k:])
    return lf.reshape(b, *shape), uf.reshape(b, *shape)


def layer_bounds(ops: Sequence[Op], region: Region, method: str
                 ) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]:
    """The input interval of every ReLU (by op index) and the interval at the input of the last op.

    The first affine block is bounded exactly over the box (linf) and over ball ∩ box (l2, l1); later blocks by
    IBP, refined by CROWN where ``method`` is ``"crown"``."""
    l, u = region.lo, region.hi
    relu_bounds: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    first = True
    last = len(ops) - 1
    for idx, op in enumerate(ops):
        if op.relu or idx == last:
            if first and region.norm is not Norm.LINF and idx > 0:
                bl, bu = _first_block_ball(ops, idx, region)
                l, u = torch.maximum(l, bl), torch.minimum(u, bu)
            elif not first and op.relu and method == "crown":
                l, u = _refine(ops, idx, l, u, relu_bounds, region)
            if op.relu:
                first = False
        if idx == last:
            return relu_bounds, (l, u)
        if op.relu:
            relu_bounds[idx] = (l, u)
            l, u = torch.relu(l), torch.relu(u)
        else:
            c, r = (u + l) / 2, (u - l) / 2
            c, r = op.forward(c), op.forward_abs(r)
            l, u = c - r, c + r
    raise AssertionError("unreachable")


def margin_spec(y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """C of shape (batch, classes - 1, classes): rows e_y - e_j for every j != y, in class order."""
    b = y.shape[0]
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    c = eye[y].unsqueeze(1) - eye.unsqueeze(0)  # (b, K, K): row j is e_y - e_j
    keep = torch.ones(b, num_classes, dtype=torch.bool, device=y.device)
    keep[torch.arange(b, device=y.device), y] = False
    return c[keep].reshape(b, num_classes - 1, num_classes)


def _ibp_margins(ops: Sequence[Op], before_last: tuple[torch.Tensor, torch.Tensor], spec: torch.Tensor,
                 region: Region) -> torch.Tensor:
    """IBP margins with the last op folded into the specification (elision, Gowal et al. 2018)."""
    l, u = before_last
    c, r = ((u + l) / 2).unsqueeze(1), ((u - l) / 2).unsqueeze(1)
    a, bias = ops[-1].back(spec)
    return (a * c).flatten(2).sum(-1) - (a.abs() * r).flatten(2).sum(-1) + bias


def margin_lower_bounds(ops: Sequence[Op], x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                        method: str = "crown") -> torch.Tensor:
    """Lower bounds, over the threat set around each ``x``, of ``z_y - z_j`` for every ``j != y``:
    (batch, classes - 1), differentiable in the weights (what certified training minimises)."""
    check_method(method)
    region = Region.of(x, threat)
    relu_bounds, before_last = layer_bounds(ops, region, method)
    spec = margin_spec(y, ops[-1].out_shape[0], x.dtype)
    lower = _ibp_margins(ops, before_last, spec, region)
    if method != "ibp" or not relu_bounds:
        lower = torch.maximum(lower, backward(ops, len(ops), spec, relu_bounds, region))
    return lower


def output_bounds(ops: Sequence[Op], x: torch.Tensor, threat: ThreatModel, method: str = "crown"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds of every logit over the threat set: (batch, classes) each."""
    check_method(method)
    region = Region.of(x, threat)
    relu_bounds, (l, u) = layer_bounds(ops, region, method)
    c, r = (u + l) / 2, (u - l) / 2
    lo, hi = ops[-1].forward(c) - ops[-1].forward_abs(r), ops[-1].forward(c) + ops[-1].forward_abs(r)
    if method != "ibp" or not relu_bounds:
        k = ops[-1].out_shape[0]
        eye = torch.eye(k, dtype=x.dtype, device=x.device)
        low = backward(ops, len(ops), torch.cat([eye, -eye]).unsqueeze(0), relu_bounds, region)
        lo, hi = torch.maximum(lo, low[:, :k]), torch.minimum(hi, -low[:, k:])
    return lo, hi


# ---------------------------------------------------------------------------------------------- certificates
@dataclass
class Certificate:
    """What :func:`certify` found for each point.

    Attributes:
        certified: (n,) bool, the model classifies every input of the threat set around the point as its label.
        margin: (n,) the lower bound of ``min_j z_y - z_j`` over the set (float64).
        method, seconds: how, and how long it took.
    """

    certified: torch.Tensor
    margin: torch.Tensor
    method: str
    seconds: float

    @property
    def accuracy(self) -> float:
        return float(self.certified.double().mean()) if len(self.certified) else 0.0


# float64 bounds of a float32 model: a margin must clear this share of the logits' size to be certified, so that
# the model's own rounding cannot cross it.
REL_TOL = 1e-5


def certify(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, method: str = "crown",
            *, batch_size: int = 100, ops: Optional[list[Op]] = None, only: Optional[torch.Tensor] = None
            ) -> Certificate:
    """Certify each ``(x, y)`` against ``threat`` by bound propagation, in float64.

    A point is certified when the lower bound of every margin ``z_y - z_j`` exceeds ``REL_TOL * (1 + max |z|)``
    (``z`` the logits at the point). The methods run as a cascade, cheapest first: IBP on every point, then (for
    ``crown-ibp`` and ``crown``) CROWN-IBP on the correctly classified points IBP left uncertified, then (for
    ``crown``) CROWN on those still left. A point any sound bound certifies is certified, so the cascade gives
    the same answer as the last method alone, or better, at a fraction of its cost.

    Arguments:
        model: an armor ``mlp`` / ``small-cnn`` or an ``nn.Sequential`` of the supported layers (see
            :mod:`armor.certify.network`); anything else is refused with ``ValueError``.
        method: ``"ibp"``, ``"crown-ibp"`` or ``"crown"`` (tightest, slowest).
        batch_size: points per bound computation.
        only: (n,) bool: try to certify these points only (the others are reported uncertified, margin -inf).
    Returns:
        A :class:`Certificate`.
    """
    import time

    check_method(method)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not isinstance(threat, ThreatModel):
        raise ValueError(f"threat must be an armor.ThreatModel, got {type(threat).__name__}")
    check_inputs(x, y, None, threat)
    t0 = time.perf_counter()
    if ops is None:
        ops = chain(model, x.shape[1:])
    check_inputs(x, y, ops[-1].out_shape[0])
    ops64 = [op.to(torch.float64) for op in ops]
    device = next((p.device for p in model.parameters()), x.device)
    cascade = METHODS[:METHODS.index(method) + 1]
    certified, margins = [], []
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            xb = x[i:i + batch_size].to(device, torch.float64)
            yb = y[i:i + batch_size].to(device)
            z = xb
            for op in ops64:
                z = op.forward(z)
            tol = REL_TOL * (1 + z.abs().amax(1))
            todo = z.argmax(1) == yb
            if only is not None:
                todo &= only[i:i + batch_size].to(device)
            low = torch.full((len(yb),), -math.inf, dtype=torch.float64, device=device)
            for stage in cascade:
                idx = todo.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                found = margin_lower_bounds(ops64, xb[idx], yb[idx], threat, stage).amin(1)
                low[idx] = torch.maximum(low[idx], found)
                todo &= ~(low > tol)
            certified.append((low > tol).cpu())
            margins.append(low.cpu())
    cert = torch.cat(certified) if certified else torch.zeros(0, dtype=torch.bool)
    return Certificate(cert, torch.cat(margins) if margins else torch.zeros(0, dtype=torch.float64), method,
                       round(time.perf_counter() - t0, 4))
