"""A run directory, in one place: what `armor train` writes and what every other command reads.

    runs/fm-pgd/                    RunDir("runs/fm-pgd")
      best.safetensors, last.safetensors, train_state.ckpt     (the trainer's checkpoints)
      metadata.json                 .metadata: architecture, threat model, recipe, dataset, seed, metrics
      config.toml, metrics.jsonl
      eval/results.json             .eval_dir: what `armor evaluate` writes (results + artifacts.npz)

:class:`RunDir` answers the questions the commands ask of a run: its model, its dataset's splits, the threat
model it trained against (or the same threat at another eps, in the dataset's own eps unit), and the fields
that describe it in results.json. :func:`save_artifacts` / :func:`load_artifacts` keep the report's arrays.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..threat import ThreatModel
from ..utils import atomic_write_bytes

EVAL_DIR = "eval"
RESULTS = "results.json"
ARTIFACTS = "artifacts.npz"


def build_threat(dataset: str, norm: str, eps: float, data_dir: Optional[str] = None) -> ThreatModel:
    """The threat model ``--norm/--eps`` mean for ``dataset``: its domain's rule (tabular: per-feature budgets
    of ``eps`` standard deviations with the schema's constraints), else ``ThreatModel(norm, eps)``."""
    from ..data import dataset_spec

    spec = dataset_spec(dataset)
    if spec.threat is not None:
        return spec.threat(norm, eps, data_dir)
    return ThreatModel(norm, eps)


@dataclass
class RunDir:
    """A directory written by `armor train` (see the module docstring)."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._meta: Optional[dict[str, Any]] = None

    # ------------------------------------------------------------------ what the run is
    @property
    def metadata(self) -> dict[str, Any]:
        """metadata.json, validated (``ValueError`` / ``FileNotFoundError`` say what is wrong)."""
        if self._meta is None:
            from ..training import load_metadata

            self._meta = load_metadata(self.path)
        return self._meta

    def model(self, checkpoint: str = "best"):
        """The trained model (eval mode)."""
        from ..training import load

        return load(self.path, checkpoint)

    @property
    def dataset_name(self) -> Optional[str]:
        recorded = self.metadata.get("dataset")
        return recorded.get("name") if isinstance(recorded, dict) else recorded

    @property
    def data_dir(self) -> Optional[str]:
        recorded = self.metadata.get("dataset")
        return recorded.get("data_dir") if isinstance(recorded, dict) else None

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL_DIR

    def dataset(self, split: str = "test", dataset: Optional[str] = None, data_dir: Optional[str] = None) -> Any:
        """A split of the dataset the run was trained on (or of ``dataset``), from the recorded or given data_dir."""
        from ..data import load_dataset

        name = dataset or self.dataset_name
        if not name:
            raise ValueError(f"{self.path} does not record its dataset: pass --dataset")
        return load_dataset(name, split, data_dir=data_dir or (self.data_dir if dataset is None else None))

    def threat(self, norm: Optional[str] = None, eps: Optional[float] = None) -> ThreatModel:
        """The exact threat model the run trained against; with ``norm`` or ``eps``, the dataset's threat at
        that norm and eps, in the dataset's own eps unit (what ``armor train --eps`` means for it)."""
        base = self.metadata.get("threat_model") or {}
        if not base:
            if norm is None or eps is None:
                raise ValueError("the run was trained without a threat model: pass --norm and --eps")
            return build_threat(self.dataset_name, norm, eps, self.data_dir) if self.dataset_name \
                else ThreatModel(norm, eps)
        threat = ThreatModel.from_dict({"norm": base.get("norm", "linf"), "eps": base.get("eps", 0.0),
                                        "bounds": base.get("bounds", [0.0, 1.0]),
                                        "constraints": base.get("constraints")})
        if norm is None and eps is None:
            return threat
        recorded = self.metadata.get("threat") or {}
        norm = norm or threat.norm.value
        if eps is None:
            if "eps" not in recorded:
                raise ValueError("this run does not record the eps it was trained with: pass --eps")
            eps = float(recorded["eps"])
        if self.dataset_name:
            from ..data import dataset_spec

            if dataset_spec(self.dataset_name).threat is not None:
                return build_threat(self.dataset_name, norm, eps, self.data_dir)
        return ThreatModel(norm, eps, threat.bounds, threat.constraints)

    def threat_spec(self, norm: Optional[str] = None, eps: Optional[float] = None) -> dict[str, Any]:
        """The threat as people state it, ``{"norm", "eps", "eps_unit"}`` (eps in the dataset's unit): what
        ``threat(norm, eps)`` builds, for results.json and the CI gate."""
        recorded = self.metadata.get("threat") or {}
        tm = self.metadata.get("threat_model") or {}
        return {"norm": norm or recorded.get("norm") or tm.get("norm"),
                "eps": eps if eps is not None else recorded.get("eps", tm.get("eps") if not isinstance(
                    tm.get("eps"), list) else None),
                "eps_unit": self.eps_unit()}

    def eps_unit(self) -> str:
        """What eps means for this run's dataset ("input units", "standard deviations", ...)."""
        recorded = self.metadata.get("threat") or {}
        return recorded.get("eps_unit", "input units")

    def info(self) -> dict[str, Any]:
        """The results.json fields that describe how the run was trained."""
        meta = self.metadata
        recipe, metrics = meta.get("recipe") or {}, meta.get("metrics") or {}
        return {"name": self.path.name, "recipe": recipe.get("name"), "recipe_params": recipe.get("params"),
                "dataset": self.dataset_name, "train_seconds": meta.get("train_seconds"),
                "run_dir": str(self.path),
                "passes": {"forward": metrics.get("forward"), "backward": metrics.get("backward")}}


def writable_dir(path: Any, what: str = "output") -> Path:
    """Make sure ``path`` is (or can become) a writable directory, before any compute is spent on it.

    Creates it; ``ValueError`` says what is in the way (a file of that name, no permission, a read-only or
    virtual file system) and to choose another ``--out``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} directory {path} is a file: pass a directory with --out (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".armor-write-check-"):
            pass
    except OSError as e:
        raise ValueError(f"cannot write the {what} to {path} ({e.strerror or e}): choose another --out") from None
    return path


def writable_file(path: Any, what: str = "output", example: str = "out") -> Path:
    """Make sure a file can be written at ``path`` (its directory is created), before any compute is spent."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory: pass a file name, e.g. --out {path / example}")
    writable_dir(path.parent, what)
    return path


def save_artifacts(path: Any, artifacts_by_model: dict[str, dict[str, Any]]) -> None:
    """Write the report's arrays as one .npz (keys ``model/field``), atomically."""
    flat = {f"{m}/{k}": np.asarray(v) for m, art in artifacts_by_model.items() for k, v in art.items()}
    buf = io.BytesIO()
    np.savez_compressed(buf, **flat)
    atomic_write_bytes(path, buf.getvalue())


def load_artifacts(path: Path, name: str) -> dict[str, Any]:
    """The arrays :func:`save_artifacts` stored for model ``name`` (empty if there is no file)."""
    if not Path(path).exists():
        return {}
    with np.load(path) as z:
        items = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(name + "/")}
    if "alignment" in items:
        items["alignment"] = float(items["alignment"])
    return items


__all__ = ["ARTIFACTS", "EVAL_DIR", "RESULTS", "RunDir", "build_threat", "load_artifacts", "save_artifacts",
           "writable_dir", "writable_file"]
