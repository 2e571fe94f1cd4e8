"""A filmstrip of one episode, clean and under the strongest attack: a few rendered frames for the report.

:func:`record_filmstrip` replays one evaluation episode (same seed, same attack object, so the same episode the
evaluation scored) in an environment made with ``render_mode="rgb_array"``, keeps ``frames`` frames evenly spaced
from the first state to the last one (a crash shows in the last frame), and shrinks each by block averaging
to at most ``width`` pixels wide. The arrays are stored with the run's evaluation (``artifacts.npz``) and drawn by
the report's agents section (:func:`filmstrip_figure`, a base64 PNG in the self-contained HTML).

Rendering needs the environment's renderer (pygame for classic control and highway-env, MuJoCo's for MuJoCo);
no display is needed (``rgb_array`` renders off screen; do not set ``SDL_VIDEODRIVER=dummy``: highway-env then
draws black frames). When rendering is missing, fails or draws only blank frames, :func:`record_filmstrip`
returns no frames and a note saying why; the evaluation and the report go on without the filmstrip.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from ...threat import ThreatModel
from .attacks import run_episode, run_episodes
from .envs import EnvLike, make_env
from .policy import PolicyAdapter
from .threat import ObsNormalizer

DEFAULT_FRAMES = 6
DEFAULT_WIDTH = 240


def frame_indices(length: int, frames: int) -> list[int]:
    """``frames`` state indices spread evenly over ``0 .. length`` (both ends included; fewer if the episode is
    shorter)."""
    if length < 0 or frames < 1:
        raise ValueError(f"need length >= 0 and frames >= 1, got {length} and {frames}")
    if frames == 1:
        return [length]
    return sorted({round(i * length / (frames - 1)) for i in range(frames)})


def downscale(frame: np.ndarray, width: int = DEFAULT_WIDTH) -> np.ndarray:
    """``frame`` (H, W, C) uint8 shrunk by an integer factor (block mean) so that it is at most ``width`` wide."""
    f = np.asarray(frame)
    if f.ndim != 3:
        raise ValueError(f"a frame must be an (H, W, C) array, got shape {f.shape}")
    k = max(1, math.ceil(f.shape[1] / width))
    h, w = (f.shape[0] // k) * k, (f.shape[1] // k) * k
    blocks = f[:h, :w].astype(np.float32).reshape(h // k, k, w // k, k, f.shape[2])
    return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)


def record_filmstrip(adapter: PolicyAdapter, env_id: EnvLike, normalizer: ObsNormalizer, threat: ThreatModel,
                     attacks: dict[str, Any], seed: int, frames: int = DEFAULT_FRAMES,
                     width: int = DEFAULT_WIDTH, failure_key: Optional[str] = None,
                     lengths: Optional[dict[str, int]] = None, batch: int = 1,
                     **env_kwargs: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Frames of episode ``seed`` under each of ``attacks`` (``{label: attack or None}``; None: clean).

    ``batch``: how many episodes (seeds ``seed, seed+1, ...``) the evaluation played in lock step. An attack's
    random draws depend on the batch (:func:`~.attacks.run_episodes`), so an attacked episode is replayed in the
    same batch (only episode ``seed`` is rendered) to film the very episode the evaluation scored.

    Returns ``(arrays, info)``: ``arrays["film_<label>"]`` is a ``(k, h, w, 3)`` uint8 stack per label and
    ``info`` has, per label, the state indices, the episode's return and length and whether it failed; if
    rendering is unavailable, ``arrays`` is empty and ``info["note"]`` says why. ``lengths`` (``{label: episode
    length}``, known from the evaluation) saves playing each episode once more to learn where to take frames."""
    if not isinstance(env_id, str):
        return {}, {"note": "not rendered: the environment was given as an object, not a gymnasium id"}
    arrays: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {"seed": int(seed), "episodes": {}}
    _runtime_dir()
    for label, attack in attacks.items():
        try:
            env = make_env(env_id, render_mode="rgb_array", **env_kwargs)
        except Exception as e:  # noqa: BLE001 - no renderer (pygame missing, no GL): the report says so
            return {}, {"note": f"not rendered: {env_id} cannot render rgb_array frames here ({type(e).__name__}: "
                                f"{e}); pip install pygame-ce for classic control and highway-env"}
        try:
            length = (lengths or {}).get(label)
            if length is None:
                length = run_episode(env, adapter, attack, normalizer, threat, seed=seed).length
            at = frame_indices(int(length), frames)
            others = [make_env(env_id, **env_kwargs) for _ in range(batch - 1)] if attack is not None else []
            try:
                res = run_episodes([env, *others], adapter, attack, normalizer, threat,
                                   [seed + i for i in range(len(others) + 1)], failure_key=failure_key,
                                   render_at=at)[0]
            finally:
                for e in others:
                    e.close()
        except Exception as e:  # noqa: BLE001 - a renderer failing mid-episode must not sink the evaluation
            return {}, {"note": f"not rendered: rendering {env_id} failed ({type(e).__name__}: {e})"}
        finally:
            env.close()
        shots = [res.frames.get(t) for t in at]
        if any(s is None or np.asarray(s).ndim != 3 for s in shots):
            return {}, {"note": f"not rendered: {env_id} returned no rgb_array frames"}
        if all(float(np.asarray(s).std()) < 1.0 for s in shots):
            # highway-env draws black frames when SDL_VIDEODRIVER=dummy is set (measured: pygame-ce 2.5.8)
            return {}, {"note": f"not rendered: {env_id} rendered blank frames (with SDL_VIDEODRIVER=dummy "
                                f"highway-env draws black: unset it)"}
        arrays[f"film_{label}"] = np.stack([downscale(np.asarray(s)[..., :3], width) for s in shots])
        info["episodes"][label] = {"steps": at, "return": res.ret, "length": res.length, "failed": res.failed}
    return arrays, info


def _runtime_dir() -> None:
    """SDL (pygame) prints "error: XDG_RUNTIME_DIR is invalid or not set" on stderr when it renders without one,
    which reads like an armor error: give it a private directory when the environment has none."""
    import os
    import tempfile

    current = os.environ.get("XDG_RUNTIME_DIR")
    if not current or not os.path.isdir(current):
        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="armor-xdg-")  # created 0700, as SDL expects


def filmstrip_figure(arrays: dict[str, Any], info: dict[str, Any]) -> Optional[str]:
    """The filmstrip as one PNG data URI: a row of frames per label, each titled with its step."""
    labels = [k[len("film_"):] for k in arrays if k.startswith("film_")]
    if not labels:
        return None
    from ...app.report.plots import _plt, to_data_uri

    plt = _plt()
    k = max(len(arrays[f"film_{lab}"]) for lab in labels)
    h, w = arrays[f"film_{labels[0]}"].shape[1:3]
    fig, axes = plt.subplots(len(labels), k, figsize=(1.9 * k, 1.9 * k * h / w * len(labels) / k + 0.5 * len(labels)),
                             squeeze=False)
    for r, lab in enumerate(labels):
        stack = np.asarray(arrays[f"film_{lab}"])
        ep = (info.get("episodes") or {}).get(lab, {})
        steps = ep.get("steps") or list(range(len(stack)))
        for c in range(k):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(stack):
                ax.imshow(stack[c])
                ax.set_title(f"step {steps[c]}", fontsize=7)
        end = f"return {ep['return']:.1f}" if "return" in ep else ""
        if ep.get("failed"):
            end += ", failed"
        axes[r][0].text(-0.05, 0.5, f"{lab}\n{end}", transform=axes[r][0].transAxes, ha="right", va="center",
                        fontsize=8)
    fig.tight_layout()
    return to_data_uri(fig)


__all__ = ["DEFAULT_FRAMES", "DEFAULT_WIDTH", "downscale", "filmstrip_figure", "frame_indices", "record_filmstrip"]
