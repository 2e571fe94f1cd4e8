"""Distribution shift without an adversary: common corruptions, and "different equipment".

Corruptions (in the spirit of Hendrycks & Dietterich 2019, written from scratch in torch) act on image batches
(N, C, H, W) in [0, 1], return [0, 1], and draw all randomness from a ``torch.Generator``. Each has five
severities whose parameters grow monotonically (:data:`CORRUPTIONS` lists them). Noise and blur parameters
are in intensity and pixel units (blur sigma and pixelate block in pixels); geometric ones (elastic, rotation,
translation) are relative to the image size.

"Different equipment" models the claim "94% on our hospital's scanner, 78% on the others": a seeded family of
acquisition profiles (gamma, blur, noise, resolution, contrast, offset) images the same scenes; a model is
trained on device 0's images and tested on every device's.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._common import accuracy_of, check_images, check_xy

CorruptFn = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]


def _default_generator(generator: Optional[torch.Generator], device: torch.device) -> torch.Generator:
    if generator is not None:
        return generator
    g = torch.Generator(device=device)
    g.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    return g


# ----------------------------------------------------------------------------------------------- primitives
def _gaussian_kernel(sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with standard deviation ``sigma`` pixels; edges are replicated."""
    if sigma <= 0:
        return x
    k = _gaussian_kernel(sigma, x.dtype, x.device)
    r = (k.numel() - 1) // 2
    n, c, h, w = x.shape
    flat = x.reshape(n * c, 1, h, w)
    # Replicate padding works at any image size (reflect needs the pad to be smaller than the image).
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return flat.reshape(n, c, h, w)


def _resample(x: torch.Tensor, factor: float, up_mode: str) -> torch.Tensor:
    """Down-sample by area averaging to ``factor`` of the size, then back up (a coarser sensor)."""
    h, w = x.shape[-2:]
    hs, ws = max(1, int(round(h * factor))), max(1, int(round(w * factor)))
    if (hs, ws) == (h, w):
        return x
    small = F.interpolate(x, size=(hs, ws), mode="area")
    return F.interpolate(small, size=(h, w), mode=up_mode, align_corners=False)


def _warp(x: torch.Tensor, theta: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Resample ``x`` through the affine map ``theta`` (N, 2, 3) plus an optional displacement field."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    if offset is not None:
        grid = grid + offset
    # Reflection padding avoids the black wedges that zero padding leaves after a rotation or shift.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


# ----------------------------------------------------------------------------------------------- corruptions
def _c_gaussian_noise(x, sigma, g):
    return x + sigma * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


def _c_shot_noise(x, photons, g):
    # Photon counting: intensity 1 collects `photons` photons on average; fewer photons, more noise.
    return torch.poisson(x * photons, generator=g) / photons


def _c_impulse_noise(x, amount, g):
    u = torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype)
    # Salt and pepper come from the two ends of the same uniform draw, so a larger amount only adds pixels.
    out = torch.where(u < amount / 2, torch.zeros_like(x), x)
    return torch.where(u > 1 - amount / 2, torch.ones_like(x), out)


def _c_gaussian_blur(x, sigma, g):
    return gaussian_blur(x, sigma)


def _c_contrast(x, factor, g):
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * factor + mean


def _c_brightness(x, delta, g):
    return x + delta


def _block_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """Replace every k x k block (anchored top-left; partial blocks at the edges) by its mean."""
    if k <= 1:
        return x
    h, w = x.shape[-2:]
    means = F.avg_pool2d(x, k, stride=k, ceil_mode=True)
    return means.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)[..., :h, :w]


def _c_pixelate(x, block, g):
    # Blocks of 1, 2, 4, 8 .. pixels nest, so each coarser mosaic is a projection of the finer one; blending
    # the two dyadic mosaics around `block` makes the change grow strictly with the block size, at any
    # resolution (plain resizing to a non-divisor size aliases and is not monotone on small images).
    level = math.log2(block)
    lo = int(math.floor(level))
    t = level - lo
    fine = _block_mean(x, 2**lo)
    return fine if t == 0 else (1 - t) * fine + t * _block_mean(x, 2 ** (lo + 1))


def _c_elastic_transform(x, alpha, g):
    n, _, h, w = x.shape
    coarse = torch.rand((n, 2, 4, 4), generator=g, device=x.device, dtype=x.dtype) * 2 - 1
    # A smooth field: random displacements on a 4x4 lattice, interpolated; alpha is in units of half the image.
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False) * alpha
    theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], device=x.device).expand(n, 2, 3)
    return _warp(x, theta, field.permute(0, 2, 3, 1))


def _c_rotation(x, degrees, g):
    n, _, h, w = x.shape
    sign = torch.randint(0, 2, (n,), generator=g, device=x.device).to(x.dtype) * 2 - 1
    a = sign * math.radians(degrees)
    cos, sin = torch.cos(a), torch.sin(a)
    zero = torch.zeros_like(a)
    # affine_grid works in [-1, 1] coordinates per axis: correct for the aspect ratio to rotate rigidly.
    theta = torch.stack([torch.stack([cos, -sin * h / w, zero], 1), torch.stack([sin * w / h, cos, zero], 1)], 1)
    return _warp(x, theta)


def _c_translation(x, fraction, g):
    n = x.shape[0]
    phi = torch.rand((n,), generator=g, device=x.device, dtype=x.dtype) * (2 * math.pi)
    tx, ty = 2 * fraction * torch.cos(phi), 2 * fraction * torch.sin(phi)  # 2 = one image side
    one, zero = torch.ones_like(phi), torch.zeros_like(phi)
    theta = torch.stack([torch.stack([one, zero, tx], 1), torch.stack([zero, one, ty], 1)], 1)
    return _warp(x, theta)


@dataclass(frozen=True)
class Corruption:
    """One corruption: its function of (x, parameter, generator) and the parameter at severities 1..5."""

    fn: CorruptFn
    params: tuple[float, float, float, float, float]
    description: str


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": Corruption(_c_gaussian_noise, (0.04, 0.07, 0.10, 0.14, 0.18),
                                 "additive Gaussian noise, std in intensity units"),
    "shot_noise": Corruption(_c_shot_noise, (120.0, 60.0, 30.0, 15.0, 8.0),
                             "Poisson photon noise, photons collected at intensity 1"),
    "impulse_noise": Corruption(_c_impulse_noise, (0.02, 0.04, 0.07, 0.11, 0.16),
                                "salt-and-pepper noise, share of values set to 0 or 1"),
    "gaussian_blur": Corruption(_c_gaussian_blur, (0.5, 0.75, 1.0, 1.25, 1.5), "Gaussian blur, sigma in pixels"),
    "contrast": Corruption(_c_contrast, (0.75, 0.6, 0.45, 0.3, 0.2),
                           "contrast scaled by this factor around the image mean"),
    "brightness": Corruption(_c_brightness, (0.1, 0.2, 0.3, 0.4, 0.5), "intensity shifted up by this amount"),
    "pixelate": Corruption(_c_pixelate, (1.25, 1.5, 1.75, 2.0, 2.5),
                           "mosaic of block means, block side in pixels (blend of the two nearest dyadic sizes)"),
    "elastic_transform": Corruption(_c_elastic_transform, (0.04, 0.07, 0.10, 0.14, 0.18),
                                    "smooth random displacement field, peak in units of half the image side"),
    "rotation": Corruption(_c_rotation, (5.0, 10.0, 15.0, 20.0, 25.0), "rotation by this many degrees, random sign"),
    "translation": Corruption(_c_translation, (0.03, 0.06, 0.09, 0.12, 0.15),
                              "shift by this fraction of the image side, random direction"),
}
SEVERITIES = (1, 2, 3, 4, 5)


def corrupt(x: torch.Tensor, name: str, severity: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Apply the corruption ``name`` at ``severity`` (1 = mild .. 5 = severe) to an image batch.

    Arguments:
        x: images (N, C, H, W) in [0, 1]. name: a key of :data:`CORRUPTIONS`. severity: 1..5.
        generator: the only source of randomness; the same generator state gives the same output. None draws
            a seed from torch's global RNG.
    Returns:
        The corrupted batch: same shape, dtype and device, values in [0, 1].
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}: choose from {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer from 1 (mild) to 5 (severe), got {severity!r}")
    check_images(x)
    spec = CORRUPTIONS[name]
    g = _default_generator(generator, x.device)
    return spec.fn(x, spec.params[severity - 1], g).clamp(0.0, 1.0)


def _stream_seed(base: int, *parts: Union[str, int]) -> int:
    """A stable seed per (base, name, ...) so that results do not depend on which others were run."""
    key = "/".join(str(p) for p in parts).encode()
    return (base * 1_000_003 + zlib.crc32(key)) % (2**62)


def _base_seed(generator: Optional[torch.Generator]) -> int:
    return 0 if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator).item())


def shift_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, severities: Sequence[int] = SEVERITIES,
                   corruptions: Optional[Sequence[str]] = None, generator: Optional[torch.Generator] = None, *,
                   batch_size: int = 500) -> dict[str, Any]:
    """Accuracy of ``model`` on corrupted copies of ``x`` (the results.json ``shift`` entry).

    Every severity of a corruption reuses the same random draws (common random numbers), so the accuracy per
    severity differs only by the severity, and each corruption's draws do not depend on which others run.

    Arguments:
        model: returns logits. x: images (N, C, H, W) in [0, 1]. y: (N,) labels.
        severities: which of 1..5 to run. corruptions: names from :data:`CORRUPTIONS` (default: all).
        generator: one draw from it seeds everything; None means seed 0, so reports are reproducible.
        batch_size: images per corruption call and forward pass.
    Returns:
        ``{"clean_accuracy", "mean_accuracy" (over corruptions and severities), "relative_accuracy"
        (mean / clean, None if clean is 0), "per_corruption": {name: {"1": acc, ...}}, "per_severity":
        {"1": mean acc, ...}, "corruptions", "severities", "n"}``.
    """
    check_images(x)
    check_xy(x, y)
    names = list(CORRUPTIONS) if corruptions is None else list(corruptions)
    if not names:
        raise ValueError("corruptions is empty: pass None for all, or names from CORRUPTIONS")
    for name in names:
        if name not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {name!r}: choose from {', '.join(CORRUPTIONS)}")
    sevs = list(severities)
    if not sevs or any(isinstance(s, bool) or not isinstance(s, int) or s not in SEVERITIES for s in sevs):
        raise ValueError(f"severities must be a non-empty list of integers from 1 to 5, got {severities!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    base = _base_seed(generator)
    clean = accuracy_of(model, x, y, batch_size)
    per: dict[str, dict[str, float]] = {}
    for name in names:
        per[name] = {}
        for s in sevs:
            g = torch.Generator(device=x.device).manual_seed(_stream_seed(base, name))
            parts = [corrupt(x[i:i + batch_size], name, s, g) for i in range(0, x.shape[0], batch_size)]
            per[name][str(s)] = accuracy_of(model, torch.cat(parts), y, batch_size)
    mean = sum(a for d in per.values() for a in d.values()) / (len(names) * len(sevs))
    return {
        "clean_accuracy": clean,
        "mean_accuracy": mean,
        "relative_accuracy": mean / clean if clean > 0 else None,
        "per_corruption": per,
        "per_severity": {str(s): sum(per[n][str(s)] for n in names) / len(names) for s in sevs},
        "corruptions": names,
        "severities": sevs,
        "n": int(x.shape[0]),
    }


# ----------------------------------------------------------------------------------------------- equipment
@dataclass(frozen=True)
class DeviceProfile:
    """How one acquisition device renders a scene in [0, 1].

    Applied in physical order: optics blur (``blur_sigma`` pixels), sensor resolution (area down-sampling to
    ``resolution`` of the size, bilinear up-sampling back), response curve (``x ** gamma``, then contrast
    around 0.5 and an ``offset``), read noise (Gaussian, ``noise_std``), and clipping to [0, 1].
    """

    gamma: float = 1.0
    blur_sigma: float = 0.0
    noise_std: float = 0.0
    resolution: float = 1.0
    contrast: float = 1.0
    offset: float = 0.0
    name: str = "device"

    def __post_init__(self) -> None:
        checks = [("gamma", self.gamma > 0, "> 0"), ("blur_sigma", self.blur_sigma >= 0, ">= 0"),
                  ("noise_std", self.noise_std >= 0, ">= 0"), ("resolution", 0 < self.resolution <= 1, "in (0, 1]"),
                  ("contrast", self.contrast > 0, "> 0"), ("offset", abs(self.offset) < 1, "in (-1, 1)")]
        for field_name, ok, rule in checks:
            value = getattr(self, field_name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not ok:
                raise ValueError(f"DeviceProfile.{field_name} must be a finite number {rule}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DeviceProfile":
        return cls(**d)


# Ranges the seeded family draws from: (low, high); gamma is drawn log-uniformly.
DEVICE_RANGES: dict[str, tuple[float, float]] = {
    "gamma": (0.6, 1.6),
    "blur_sigma": (0.0, 1.0),
    "noise_std": (0.0, 0.08),
    "resolution": (0.5, 1.0),
    "contrast": (0.7, 1.2),
    "offset": (-0.08, 0.08),
}


def device_profiles(n_devices: int, seed: int = 0,
                    ranges: Optional[dict[str, tuple[float, float]]] = None) -> list[DeviceProfile]:
    """A seeded family of ``n_devices`` acquisition profiles, each drawn independently from ``ranges``.

    Arguments:
        n_devices: how many devices, >= 2 (one to train on, at least one other). seed: the family's seed.
        ranges: overrides for :data:`DEVICE_RANGES`, ``{field: (low, high)}``.
    Returns:
        A list of :class:`DeviceProfile` named ``"device 0"``, ``"device 1"``, ...; the same seed gives the
        same family.
    """
    if not isinstance(n_devices, int) or n_devices < 2:
        raise ValueError(f"n_devices must be an integer >= 2 (one to train on, others to test on), got {n_devices!r}")
    r = dict(DEVICE_RANGES)
    for key, value in (ranges or {}).items():
        if key not in DEVICE_RANGES:
            raise ValueError(f"unknown device parameter {key!r}: choose from {', '.join(DEVICE_RANGES)}")
        if len(value) != 2 or value[0] > value[1]:
            raise ValueError(f"range for {key!r} must be (low, high) with low <= high, got {value!r}")
        r[key] = (float(value[0]), float(value[1]))
    g = torch.Generator().manual_seed(int(seed))
    out = []
    for i in range(n_devices):
        u = torch.rand(len(DEVICE_RANGES), generator=g, dtype=torch.float64).tolist()
        vals = {}
        for (key, (lo, hi)), ui in zip(r.items(), u):
            if key == "gamma":
                vals[key] = math.exp(math.log(lo) + ui * (math.log(hi) - math.log(lo)))
            else:
                vals[key] = lo + ui * (hi - lo)
        out.append(DeviceProfile(name=f"device {i}", **{k: round(v, 6) for k, v in vals.items()}))
    return out


def apply_device(x: torch.Tensor, profile: DeviceProfile, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Render images ``x`` (N, C, H, W) in [0, 1] as the device ``profile`` would; returns [0, 1].

    Arguments:
        x: image batch in [0, 1]. profile: a :class:`DeviceProfile`.
        generator: source of the read noise; None draws a seed from torch's global RNG.
    Returns:
        The rendered batch, same shape, dtype and device.
    """
    check_images(x)
    if not isinstance(profile, DeviceProfile):
        raise ValueError(f"profile must be a DeviceProfile, got {type(profile).__name__}")
    out = gaussian_blur(x, profile.blur_sigma)
    out = _resample(out, profile.resolution, "bilinear").clamp(0, 1)
    out = out ** profile.gamma
    out = (out - 0.5) * profile.contrast + 0.5 + profile.offset
    if profile.noise_std > 0:
        g = _default_generator(generator, x.device)
        out = out + profile.noise_std * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
    return out.clamp(0.0, 1.0)


def device_views(x: torch.Tensor, profiles: Sequence[DeviceProfile], seed: int = 0,
                 split: str = "test") -> list[torch.Tensor]:
    """The same images as each device acquires them: one tensor per profile, deterministic in (seed, split).

    Arguments:
        x: images (N, C, H, W) in [0, 1]. profiles: the device family. seed: seeds every device's noise.
        split: a name mixed into the seed, so train and test images get independent noise.
    Returns:
        ``[apply_device(x, p) for p in profiles]`` with one seeded generator per device.
    """
    return [_view(x, p, seed, i, split) for i, p in enumerate(profiles)]


def _view(x: torch.Tensor, profile: DeviceProfile, seed: int, index: int, split: str) -> torch.Tensor:
    g = torch.Generator(device=x.device).manual_seed(_stream_seed(int(seed), "device", index, split))
    return apply_device(x, profile, g)


def equipment_shift(model_or_train_fn: Union[nn.Module, Callable[[torch.Tensor, torch.Tensor], nn.Module]],
                    x_test: torch.Tensor, y_test: torch.Tensor, *, x_train: Optional[torch.Tensor] = None,
                    y_train: Optional[torch.Tensor] = None, profiles: Optional[Sequence[DeviceProfile]] = None,
                    n_devices: int = 4, seed: int = 0, train_device: int = 0,
                    batch_size: int = 500) -> dict[str, Any]:
    """Train on one device, test on all: accuracy per device, in-device and mean out-of-device.

    Arguments:
        model_or_train_fn: a callable ``train_fn(x, y) -> model`` that is given ``x_train`` as imaged by
            ``train_device``; or an ``nn.Module`` already trained on such images (then no training data).
        x_test, y_test: test images (N, C, H, W) in [0, 1] and labels; every device images the same scenes.
        x_train, y_train: training images and labels (required with a ``train_fn``).
        profiles: the device family; default ``device_profiles(n_devices, seed)``.
        seed: seeds the family (when drawn here) and every device's noise. train_device: index trained on.
        batch_size: images per forward pass.
    Returns:
        ``{"train_device", "per_device": {"0": acc, ...}, "in_device_accuracy", "out_of_device_accuracy"
        (mean over the other devices), "gap" (in minus out), "profiles": [profile dicts], "n_test"}``.
    """
    check_images(x_test, "x_test")
    check_xy(x_test, y_test, "x_test")
    profiles = list(device_profiles(n_devices, seed) if profiles is None else profiles)
    if len(profiles) < 2:
        raise ValueError("equipment_shift needs at least two device profiles: one to train on, one to test on")
    if not 0 <= train_device < len(profiles):
        raise ValueError(f"train_device must index the {len(profiles)} profiles, got {train_device}")
    if isinstance(model_or_train_fn, nn.Module):
        model = model_or_train_fn
    elif callable(model_or_train_fn):
        if x_train is None or y_train is None:
            raise ValueError("with a train_fn, pass x_train and y_train: they are imaged by the training device "
                             "and handed to train_fn")
        check_images(x_train, "x_train")
        check_xy(x_train, y_train, "x_train")
        x_dev = _view(x_train, profiles[train_device], seed, train_device, "train")
        model = model_or_train_fn(x_dev, y_train)
        if not isinstance(model, nn.Module):
            raise ValueError(f"train_fn must return an nn.Module, got {type(model).__name__}")
    else:
        raise ValueError("model_or_train_fn must be an nn.Module or a callable train_fn(x, y) -> nn.Module")
    views = device_views(x_test, profiles, seed, split="test")
    per = {str(i): accuracy_of(model, v, y_test, batch_size) for i, v in enumerate(views)}
    inside = per[str(train_device)]
    others = [a for k, a in per.items() if k != str(train_device)]
    outside = sum(others) / len(others)
    return {
        "train_device": train_device,
        "per_device": per,
        "in_device_accuracy": inside,
        "out_of_device_accuracy": outside,
        "gap": inside - outside,
        "profiles": [p.to_dict() for p in profiles],
        "n_test": int(x_test.shape[0]),
    }
