"""The run directory on disk: weights in safetensors, JSON metadata, and one resumable training state.

Layout of a run directory::

    metadata.json        architecture spec, threat model, recipe, dataset, seed, metrics, armor version
    config.toml          the resolved configuration (when trained through `armor train` / ``train()``)
    metrics.jsonl        one JSON object per epoch
    best.safetensors     weights with the best validation score (what :func:`load` returns by default)
    last.safetensors     weights after the last completed epoch
    train_state.ckpt     everything a bit-exact resume needs (weights, optimizer, RNGs, loop position)

Every file is written atomically. The training state carries a SHA-256 of its payload, so a truncated or
corrupted file is reported as such instead of failing deep inside the unpickler.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from ..utils import atomic_write_bytes, atomic_write_json

PathLike = Union[str, Path]

METADATA = "metadata.json"
CONFIG = "config.toml"
METRICS = "metrics.jsonl"
STATE = "train_state.ckpt"
WEIGHTS = {"best": "best.safetensors", "last": "last.safetensors"}
_MAGIC = b"ARMORCK1"


class CheckpointError(ValueError):
    """A checkpoint or run file that is missing, unreadable, truncated or inconsistent."""


# ---------------------------------------------------------------------------------------------- training state
def save_state(path: PathLike, state: dict[str, Any]) -> None:
    """Write a resumable training state (tensors, numbers, strings, nested dicts and lists) atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    atomic_write_bytes(path, _MAGIC + hashlib.sha256(payload).digest() + payload)


def load_state(path: PathLike) -> dict[str, Any]:
    """Read a state written by :func:`save_state`; raise :class:`CheckpointError` if it is damaged."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no training state at {path}: the run never reached its first checkpoint; "
                              f"start it again without --resume") from None
    except OSError as e:
        raise CheckpointError(f"cannot read training state {path}: {e}") from None
    head = len(_MAGIC) + 32
    if len(data) < head or data[:len(_MAGIC)] != _MAGIC:
        raise CheckpointError(f"{path} is not an armor training state (wrong header or truncated to "
                              f"{len(data)} bytes); restore it from a backup or start the run again")
    digest, payload = data[len(_MAGIC):head], data[head:]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"training state {path} is truncated or corrupted (checksum mismatch, "
                              f"{len(payload)} payload bytes); restore it from a backup or start the run again")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # the checksum held, so this is a format problem (e.g. a newer torch wrote it)
        raise CheckpointError(f"training state {path} could not be decoded ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------------------------- weights
def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers as contiguous CPU tensors (what safetensors stores)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_weights(path: PathLike, model: nn.Module, info: dict[str, str] | None = None) -> None:
    """Write the model's state dict to ``path`` in safetensors format, atomically."""
    from safetensors.torch import save

    atomic_write_bytes(path, save(state_tensors(model), metadata=info or {}))


def load_weights(path: PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file into a dict of tensors; damaged files raise :class:`CheckpointError`."""
    from safetensors.torch import load

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no weights at {path}; is this a run directory written by `armor train`?") from None
    try:
        return load(data)
    except Exception as e:
        raise CheckpointError(f"weights file {path} is unreadable or truncated ({type(e).__name__}: {e}); "
                              f"use the other checkpoint (best/last) or resume the run") from None


# ---------------------------------------------------------------------------------------------- run directory
def write_metadata(run_dir: PathLike, metadata: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / METADATA, metadata)


def load_metadata(run_dir: PathLike) -> dict[str, Any]:
    """The run's ``metadata.json`` as a dict.

    Arguments:
        run_dir: a directory written by :class:`armor.training.Trainer` or `armor train`.
    Returns:
        The metadata: ``architecture``, ``threat_model``, ``recipe``, ``dataset``, ``seed``, ``metrics``,
        ``armor_version``, ``status`` and more.
    """
    path = Path(run_dir) / METADATA
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{run_dir} has no {METADATA}: it is not a run directory written by "
                                f"`armor train`") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the file is damaged") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    for key, kinds, what in (("threat_model", (dict, type(None)), "an object (norm, eps, bounds)"),
                             ("dataset", (dict, str, type(None)), "an object (name, data_dir) or a name"),
                             ("recipe", (dict, type(None)), "an object (name, params)"),
                             ("architecture", (dict, type(None)), "an object (the model spec)")):
        if not isinstance(meta.get(key), kinds):
            raise CheckpointError(f"{path}: {key} must be {what}, got {meta.get(key)!r:.80}; the file is damaged "
                                  "or was edited by hand")
    tm = meta.get("threat_model")
    if tm is not None:
        bounds = tm.get("bounds", [0.0, 1.0])
        if not isinstance(bounds, list) or len(bounds) != 2 or not isinstance(tm.get("norm"), str):
            raise CheckpointError(f"{path}: threat_model must have a norm and bounds [lower, upper], got "
                                  f"{tm!r:.120}; the file is damaged or was edited by hand")
    return meta


def load(run_dir: PathLike, checkpoint: str = "best", device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained model from its run directory, in eval mode.

    Arguments:
        run_dir: a directory written by :class:`armor.training.Trainer` or `armor train`.
        checkpoint: ``"best"`` (best validation score, the default) or ``"last"`` (last completed epoch).
        device: where to put the model.
    Returns:
        The ``nn.Module`` with its weights loaded, in eval mode; ``model.armor_spec`` holds its spec.
    """
    from ..models import build_model

    if checkpoint not in WEIGHTS:
        raise ValueError(f"checkpoint must be one of {sorted(WEIGHTS)}, got {checkpoint!r}")
    meta = load_metadata(run_dir)
    spec = meta.get("architecture")
    if not isinstance(spec, dict):
        raise CheckpointError(f"{run_dir} records no architecture spec (the model was not built from a spec); "
                              f"build it yourself and load {WEIGHTS[checkpoint]} with "
                              f"armor.training.load_weights")
    model = build_model(spec)
    tensors = load_weights(Path(run_dir) / WEIGHTS[checkpoint])
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"weights in {Path(run_dir) / WEIGHTS[checkpoint]} do not fit the recorded "
                              f"architecture {spec.get('name')!r}: {e}") from None
    return model.to(device).eval()
