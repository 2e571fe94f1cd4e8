"""The architectures. Each is an ArmorNet: Normalize first (data stays in [0, 1] outside the model), then a
plain nn.Sequential that returns logits."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std per channel (images) or per feature (tables); length-1 lists broadcast to all.
    Buffers, not parameters: they are saved with the weights but never trained."""

    def __init__(self, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)):
        super().__init__()
        mean, std = torch.as_tensor(mean, dtype=torch.float32).flatten(), torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.numel() == 0 or std.numel() == 0 or not (std > 0).all() or not torch.isfinite(mean).all():
            raise ValueError(f"Normalize needs finite mean and std > 0, got mean={mean.tolist()} std={std.tolist()}")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


class ArmorNet(nn.Module):
    """Shared front end: checks the input shape (a wrong one otherwise fails deep inside with a cryptic
    matmul error), normalises, then runs ``self.net``."""

    def __init__(self, input_shape: Sequence[int], mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.input_shape = tuple(int(d) for d in input_shape)
        channels = self.input_shape[0]
        for key, v in (("mean", mean), ("std", std)):
            if len(v) not in (1, channels):
                raise ValueError(f"{key} must have 1 or {channels} entries (one per channel/feature), got {len(v)}")
        self.normalize = Normalize(mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{type(self).__name__} expects N×{'×'.join(map(str, self.input_shape))} input, "
                             f"got {'×'.join(map(str, x.shape))}")
        return self.net(self.normalize(x))


def _image_shape(input_shape: Sequence[int], name: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"{name} needs an image input_shape [C, H, W], got {list(input_shape)}; use 'mlp' for tables")
    return tuple(input_shape)


def _flat_size(features: nn.Module, input_shape: Sequence[int], name: str) -> int:
    try:
        with torch.no_grad():
            return features(torch.zeros(1, *input_shape)).numel()
    except RuntimeError as e:
        raise ValueError(f"{name}: input_shape {list(input_shape)} is too small for this architecture ({e})") from None


class MLP(ArmorNet):
    def __init__(self, input_shape, num_classes, mean=(0.0,), std=(1.0,), hidden=(256, 256)):
        super().__init__(input_shape, mean, std)
        if not all(isinstance(h, int) and h > 0 for h in hidden):
            raise ValueError(f"mlp: hidden must be a list of positive layer sizes such as [256, 256], got {hidden!r}")
        sizes = [math.prod(self.input_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], num_classes))


class SmallCNN(ArmorNet):
    """The MNIST net of Wong et al. 2020, "Fast is better than free"."""

    def __init__(self, input_shape, num_classes, mean=(0.0,), std=(1.0,)):
        super().__init__(_image_shape(input_shape, "small-cnn"), mean, std)
        features = nn.Sequential(nn.Conv2d(self.input_shape[0], 16, 4, stride=2, padding=1), nn.ReLU(),
                                 nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten())
        n = _flat_size(features, self.input_shape, "small-cnn")
        self.net = nn.Sequential(*features, nn.Linear(n, 100), nn.ReLU(), nn.Linear(100, num_classes))


class CNN4(ArmorNet):
    """The MNIST net of Carlini & Wagner 2017, with padding so that 8×8 digits survive both pools."""

    def __init__(self, input_shape, num_classes, mean=(0.0,), std=(1.0,)):
        super().__init__(_image_shape(input_shape, "cnn4"), mean, std)
        c = self.input_shape[0]
        features = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten())
        n = _flat_size(features, self.input_shape, "cnn4")
        self.net = nn.Sequential(*features, nn.Linear(n, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
                                 nn.Linear(200, num_classes))


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        # pre-activation: a projection shortcut sees the normalised input, an identity one the raw input
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv2(torch.relu(self.bn2(self.conv1(out))))
        return out + skip


class PreActResNet18(ArmorNet):
    """PreAct ResNet-18 (He et al. 2016) as used by Wong et al. 2020 and Rice et al. 2020 on CIFAR-10.
    Global average pooling (rather than a fixed 4×4 pool) lets it take other image sizes."""

    def __init__(self, input_shape, num_classes, mean=(0.0,), std=(1.0,), width=64):
        super().__init__(_image_shape(input_shape, "preact-resnet18"), mean, std)
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"preact-resnet18: width must be a positive int (64 in the paper), got {width!r}")
        layers: list[nn.Module] = [nn.Conv2d(self.input_shape[0], width, 3, 1, 1, bias=False)]
        cin = width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2 ** i
            layers += [PreActBlock(cin, cout, stride), PreActBlock(cout, cout, 1)]
            cin = cout
        self.net = nn.Sequential(*layers, nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(cin, num_classes))
