"""One model, everything the report shows: worst case, curve, calibration, shift, saliency, masking checks.

:func:`measure` returns ``(entry, artifacts)``: ``entry`` is the JSON-ready results.json entry of one model,
``artifacts`` the small image arrays (saliency maps, adversarial gallery) that the report draws and that are
saved next to results.json as ``artifacts.npz``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from . import metrics
from .evaluate import _as_xy, evaluate
from .threat import ThreatModel

Progress = Optional[Callable[[str], None]]


def measure(model: nn.Module, data: Any, threat: ThreatModel, *, suite: Union[str, Sequence[str], None] = None,
            n: Optional[int] = 1000, eps_grid: Optional[Sequence[float]] = None, curve_suite: str = "fast",
            calibration: bool = True, shift: bool = True, interpret: bool = True, masking: bool = True,
            masking_n: int = 300, attack_kwargs: Optional[dict[str, dict[str, Any]]] = None, seed: int = 0,
            batch_size: int = 500, state_path: Any = None, progress: Progress = None) -> tuple[dict, dict]:
    """Measure ``model`` under ``threat`` on ``data`` (``(x, y)`` or a Dataset).

    Arguments:
        suite: the worst-case suite (see :func:`armor.evaluate`; default "standard", or "tabular" for a
            threat with domain constraints); it runs with ``individual=True`` so that each
            attack's own accuracy is known (the report's train-A/test-B matrix and the masking checks use it).
        n: test points for the worst case, calibration, shift and alignment. eps_grid: budgets for the curve
            (default: 0 to twice eps). curve_suite: attacks per curve point.
        calibration, shift, interpret, masking: which extra sections to compute (shift and saliency need images).
        masking_n: points for the masking checks. state_path: resumable state for the worst-case evaluation.
    Returns:
        ``(entry, artifacts)``.
    """
    x, y = _as_xy(data)
    if n is not None:
        x, y = x[:n], y[:n]
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    grid = metrics.check_eps_grid(eps_grid) if eps_grid is not None else None

    if suite is None:  # constrained (tabular) threats get the constrained suite
        suite = "tabular" if threat.constraints is not None else "standard"
    say("worst-case evaluation")
    result = evaluate(model, (x, y), threat, suite=suite, batch_size=batch_size, seed=seed, individual=True,
                      attack_kwargs=attack_kwargs, keep_adv=True, state_path=state_path)
    entry: dict[str, Any] = result.to_dict()
    entry["eval_seconds"] = {"worst_case": result.seconds}
    artifacts: dict[str, Any] = {}
    images = x.dim() == 4
    if threat.constraints is not None and hasattr(threat.constraints, "satisfied"):
        ok = threat.constraints.satisfied(result.x_adv, x) & threat.contains(result.x_adv, x)
        entry["constraint_satisfaction"] = float(ok.float().mean())

    def timed(key: str, fn: Callable[[], Any]) -> Any:
        say(key)
        t = time.perf_counter()
        out = fn()
        entry["eval_seconds"][key] = round(time.perf_counter() - t, 3)
        return out

    if threat.eps_scalar > 0:
        entry["curve"] = timed("curve", lambda: metrics.robustness_curve(
            model, x, y, threat, grid if grid is not None else metrics.default_eps_grid(threat.eps_scalar),
            suite=curve_suite, batch_size=batch_size, seed=seed))
    if calibration:
        entry["calibration"] = timed("calibration", lambda: metrics.calibration_report(
            model, x, y, threat, batch_size=batch_size, seed=seed))  # its own PGD: robust points count at their worst iterate
    if shift and images:
        entry["shift"] = timed("shift", lambda: metrics.shift_accuracy(
            model, x, y, generator=torch.Generator().manual_seed(seed)))
    if interpret and images:
        art = timed("interpretability", lambda: metrics.interpretability_artifacts(
            model, x, y, threat, x_adv=result.x_adv, seed=seed, batch_size=batch_size))
        entry["interpretability"] = {"alignment": art["alignment"], "cosine_alignment": art["cosine_alignment"]}
        artifacts = {k: (v.numpy() if torch.is_tensor(v) else np.asarray(v)) for k, v in art.items()}
    if masking:
        checks = timed("masking", lambda: metrics.masking_checks(
            model, x, y, threat, curve=entry.get("curve"), n=masking_n, seed=seed, batch_size=batch_size))
        entry["masking_flags"] = checks["flags"]
        entry["masking_checks"] = checks["checks"]
    else:
        entry["masking_flags"] = []
    entry["eval_seconds"]["total"] = round(time.perf_counter() - t0, 3)
    return entry, artifacts


def save_artifacts(path: Any, artifacts_by_model: dict[str, dict[str, Any]]) -> None:
    """Write image artifacts as one .npz (keys ``model/field``), atomically."""
    import io

    from .utils import atomic_write_bytes

    flat = {f"{m}/{k}": np.asarray(v) for m, art in artifacts_by_model.items() for k, v in art.items()}
    buf = io.BytesIO()
    np.savez_compressed(buf, **flat)
    atomic_write_bytes(path, buf.getvalue())


def add_cost(models: dict[str, dict[str, Any]]) -> None:
    """Add ``cost`` to each entry: training time and forward+backward passes as ratios to standard training.

    The reference is the entry whose recipe is ``standard``; without one, only absolute figures are given.
    """
    ref = next((m for m in models.values() if m.get("recipe") == "standard"), None)

    def passes(m: dict[str, Any]) -> Optional[int]:
        p = m.get("passes") or {}
        return p["forward"] + p["backward"] if "forward" in p and "backward" in p else None

    for m in models.values():
        cost: dict[str, Any] = {"train_seconds": m.get("train_seconds"), "passes": passes(m)}
        if ref is not None:
            if m.get("train_seconds") and ref.get("train_seconds"):
                cost["time_ratio"] = round(m["train_seconds"] / ref["train_seconds"], 3)
            if passes(m) and passes(ref):
                cost["pass_ratio"] = round(passes(m) / passes(ref), 3)
        m["cost"] = cost


def measure_run(run_dir: Any, *, norm: Optional[str] = None, eps: Optional[float] = None,
                dataset: Optional[str] = None, data_dir: Optional[str] = None, n: Optional[int] = 1000,
                progress: Progress = None, **kwargs: Any) -> tuple[dict, dict]:
    """:func:`measure` for a run directory: its model, its dataset's test split, its threat model by default."""
    from .training import load, load_metadata

    run_dir = Path(run_dir)
    meta = load_metadata(run_dir)
    model = load(run_dir)
    test = dataset_for_run(meta, "test", dataset, data_dir)
    threat = threat_for_run(meta, norm, eps)
    entry, art = measure(model, test, threat, n=n, progress=progress, **kwargs)
    entry.update(run_info(run_dir, meta))
    return entry, art


def threat_for_run(meta: dict[str, Any], norm: Optional[str] = None, eps: Optional[float] = None) -> ThreatModel:
    """The run's training threat model (constraints included), optionally with another norm or eps.

    For a per-feature (tabular) budget, ``eps`` rescales the budgets so that the largest is ``eps``.
    """
    base = meta.get("threat_model") or {}
    if not base:
        if norm is None or eps is None:
            raise ValueError("the run was trained without a threat model: pass --norm and --eps")
        return ThreatModel(norm, eps)
    threat = ThreatModel.from_dict({"norm": base.get("norm", "linf"), "eps": base.get("eps", 0.0),
                                    "bounds": base.get("bounds", [0.0, 1.0]), "constraints": base.get("constraints")})
    if norm is not None and norm != threat.norm.value:
        if threat.constraints is not None:
            raise ValueError("a tabular (constrained) threat is linf with per-feature budgets: --norm cannot change it")
        threat = ThreatModel(norm, threat.eps_scalar, threat.bounds)
    return threat if eps is None else threat.with_eps(eps)


def dataset_for_run(meta: dict[str, Any], split: str, dataset: Optional[str] = None,
                    data_dir: Optional[str] = None) -> Any:
    """A split of the dataset a run was trained on (or of ``dataset``), from the recorded or given data_dir."""
    from .data import load_dataset

    recorded = meta.get("dataset")
    if isinstance(recorded, dict):
        name, ddir = dataset or recorded.get("name"), data_dir or recorded.get("data_dir")
    else:
        name, ddir = dataset or recorded, data_dir
    if not name:
        raise ValueError("the run does not record its dataset: pass --dataset")
    return load_dataset(name, split, data_dir=ddir)


def run_info(run_dir: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """The results.json fields that describe how a run was trained (from its metadata.json)."""
    recipe, metrics = meta.get("recipe") or {}, meta.get("metrics") or {}
    recorded = meta.get("dataset")
    return {"name": Path(run_dir).name, "recipe": recipe.get("name"), "recipe_params": recipe.get("params"),
            "dataset": recorded.get("name") if isinstance(recorded, dict) else recorded,
            "train_seconds": meta.get("train_seconds"), "run_dir": str(run_dir),
            "passes": {"forward": metrics.get("forward"), "backward": metrics.get("backward")}}
