"""A model as the chain of affine maps and ReLUs that bound propagation walks.

:func:`chain` reads an armor model (``Normalize`` then an ``nn.Sequential``), an ``nn.Sequential`` or one supported
layer into a list of ops, and refuses, naming the layer, anything it cannot bound (max-pooling, BatchNorm,
residual blocks, a ``forward`` that is not the chain of its layers). Before it answers it runs the chain and the
model on the same inputs and refuses if they differ: a bound is only ever computed for the function the model
really computes.

Every affine op knows three things: ``forward(x)``, ``forward_abs(r)`` (``|W| r``, the radius of an interval) and
``back(A)`` (``A W`` and ``A b`` for a batch of linear specifications ``A`` over its output, CROWN's backward step).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models.nets import ArmorNet, Normalize

SUPPORTED = "Linear, Conv2d (zero padding, groups=1), ReLU, Flatten, Identity, Dropout and armor's Normalize"


class Op:
    """One step of the chain; ``in_shape``/``out_shape`` are per-sample shapes (set by :func:`chain`)."""

    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()
    relu = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_abs(self, r: torch.Tensor) -> torch.Tensor:
        """``|W| r`` (no bias): how a non-negative radius grows through the map."""
        raise NotImplementedError

    def back(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """``(A W, A b)`` for ``A`` of shape (batch, specs, *out_shape)."""
        raise NotImplementedError

    def to(self, dtype: torch.dtype) -> "Op":
        return self


class ReLU(Op):
    relu = True

    def forward(self, x):
        return torch.relu(x)


class Scale(Op):
    """armor's ``Normalize``: ``(x - mean) / std`` per channel (dim 1)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.std = mean, std

    def _view(self, t: torch.Tensor, dims: int) -> torch.Tensor:
        return t.view((-1,) + (1,) * (dims - 1)) if t.numel() > 1 else t.reshape(())

    def forward(self, x):
        d = x.dim() - 1
        return (x - self._view(self.mean, d)) / self._view(self.std, d)

    def forward_abs(self, r):
        return r / self._view(self.std, r.dim() - 1)

    def back(self, a):
        d = len(self.in_shape)
        inv = 1.0 / self._view(self.std, d)
        full = torch.ones(self.in_shape, dtype=a.dtype, device=a.device)
        bias = -(a * (full * self._view(self.mean, d) * inv)).flatten(2).sum(-1)
        return a * inv, bias

    def to(self, dtype):
        return Scale(self.mean.to(dtype), self.std.to(dtype))._shaped(self)

    def _shaped(self, other: Op) -> "Op":
        self.in_shape, self.out_shape = other.in_shape, other.out_shape
        return self


class Flatten(Op):
    def forward(self, x):
        return x.flatten(1)

    def forward_abs(self, r):
        return r.flatten(1)

    def back(self, a):
        return a.reshape(a.shape[:2] + self.in_shape), 0.0


class Linear(Op):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.weight, self.bias = weight, bias

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def forward_abs(self, r):
        return F.linear(r, self.weight.abs())

    def back(self, a):
        return a @ self.weight, (a @ self.bias if self.bias is not None else 0.0)

    def to(self, dtype):
        return Linear(self.weight.to(dtype), None if self.bias is None else self.bias.to(dtype))._shaped(self)

    _shaped = Scale._shaped


class Conv(Op):
    def __init__(self, weight, bias, stride, padding, dilation):
        self.weight, self.bias = weight, bias
        self.stride, self.padding, self.dilation = stride, padding, dilation

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def forward_abs(self, r):
        return F.conv2d(r, self.weight.abs(), None, self.stride, self.padding, self.dilation)

    def back(self, a):
        b, s = a.shape[:2]
        c, h, w = self.in_shape
        _, ho, wo = self.out_shape
        k = self.weight.shape[-2:]
        # the rows/columns the strided convolution never reached get output padding
        extra = [size - ((o - 1) * st - 2 * p + d * (kk - 1) + 1)
                 for size, o, st, p, d, kk in zip((h, w), (ho, wo), self.stride, self.padding, self.dilation, k)]
        flat = a.reshape(b * s, *self.out_shape)
        back = F.conv_transpose2d(flat, self.weight, None, self.stride, self.padding, tuple(extra), 1, self.dilation)
        bias = (a.sum((-1, -2)) * self.bias).sum(-1) if self.bias is not None else 0.0
        return back.reshape(b, s, c, h, w), bias

    def to(self, dtype):
        return Conv(self.weight.to(dtype), None if self.bias is None else self.bias.to(dtype), self.stride,
                    self.padding, self.dilation)._shaped(self)

    _shaped = Scale._shaped


class Skip(Op):
    """Identity, and Dropout (which is the identity in eval mode, where certificates are computed)."""

    def forward(self, x):
        return x

    def forward_abs(self, r):
        return r

    def back(self, a):
        return a, 0.0


def _leaves(module: nn.Module, where: str) -> list[tuple[str, nn.Module]]:
    if isinstance(module, ArmorNet):
        if type(module).forward is not ArmorNet.forward:
            raise ValueError(f"armor.certify cannot bound {where} ({type(module).__name__}): its forward is not "
                             f"Normalize then its layers; bound propagation supports {SUPPORTED}")
        return [(f"{where}.normalize", module.normalize)] + _leaves(module.net, f"{where}.net")
    if type(module) is nn.Sequential:
        out = []
        for name, child in module.named_children():
            out += _leaves(child, f"{where}.{name}")
        return out
    return [(where, module)]


def _op(name: str, m: nn.Module) -> Op:
    if isinstance(m, Normalize):
        return Scale(m.mean.detach(), m.std.detach())
    if type(m) is nn.Linear:
        return Linear(m.weight, m.bias)
    if type(m) is nn.Conv2d:
        if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise ValueError(f"armor.certify cannot bound {name} ({m}): only Conv2d with groups=1 and numeric zero "
                             "padding is supported")
        return Conv(m.weight, m.bias, m.stride, m.padding, m.dilation)
    if type(m) is nn.ReLU:
        return ReLU()
    if type(m) is nn.Flatten:
        if m.start_dim != 1 or m.end_dim != -1:
            raise ValueError(f"armor.certify cannot bound {name} ({m}): only Flatten(1, -1) is supported")
        return Flatten()
    if type(m) in (nn.Identity, nn.Dropout):
        return Skip()
    raise ValueError(f"armor.certify cannot bound layer {name} ({type(m).__name__}): bound propagation supports "
                     f"{SUPPORTED} (armor's mlp and small-cnn); use --certify smoothing for other models")


def chain(model: nn.Module, input_shape: Sequence[int], *, check: bool = True) -> list[Op]:
    """The model as a list of :class:`Op` (the weights are the model's own tensors, so gradients flow to them).

    Raises ``ValueError`` naming the first layer it cannot bound, or if the chain does not compute what the model
    computes (checked on random inputs in [0, 1] unless ``check=False``).
    """
    ops = [_op(name, m) for name, m in _leaves(model, type(model).__name__)]
    if not ops:
        raise ValueError(f"armor.certify found no layer in {type(model).__name__}")
    shape = tuple(int(d) for d in input_shape)
    p = next(model.parameters(), None)
    probe = torch.rand((4,) + shape, generator=torch.Generator().manual_seed(0),
                       dtype=p.dtype if p is not None else torch.float32)
    if p is not None:
        probe = probe.to(p.device)
    h = probe
    with torch.no_grad():
        for op in ops:
            op.in_shape = tuple(h.shape[1:])
            try:
                h = op.forward(h)
            except RuntimeError as e:
                raise ValueError(f"armor.certify: the layers of {type(model).__name__} do not chain on inputs of "
                                 f"shape {list(shape)} ({e})") from None
            op.out_shape = tuple(h.shape[1:])
        if ops[-1].relu or isinstance(ops[-1], (Flatten, Skip)) and len(ops) == 1:
            raise ValueError(f"armor.certify: the last layer of {type(model).__name__} must be affine (Linear), "
                             "since its outputs are the logits whose margins are bounded")
        if h.dim() != 2:
            raise ValueError(f"armor.certify: {type(model).__name__} must return logits of shape (N, classes), "
                             f"its chain returns shape {tuple(h.shape)}")
        if check:
            was = model.training
            model.eval()
            try:
                ref = model(probe)
            finally:
                model.train(was)
            if ref.shape != h.shape or not torch.allclose(ref, h, rtol=1e-4, atol=1e-5):
                raise ValueError(f"armor.certify cannot bound {type(model).__name__}: its forward does not compute "
                                 f"the chain of its layers ({SUPPORTED}), so a bound on the chain would not be a "
                                 "bound on the model")
    return ops
