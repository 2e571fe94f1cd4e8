"""The worst-case evaluator: an ensemble of attacks per sample, with AutoAttack's bookkeeping.

Each attack runs only on points that are still robust, and a point that any attack fooled is never
overwritten, so the robust accuracy is the per-sample worst case over the suite. Long evaluations checkpoint
after every batch to a state file and resume exactly where they stopped.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from .attacks import ATTACKS, get_attack
from .attacks._core import attack_mode
from .threat import ThreatModel, check_inputs, warn_if_probabilities
from .utils import atomic_write_bytes

SUITES: dict[str, dict[str, list[str]]] = {
    # AutoAttack-standard strength: APGD-CE, APGD-T (9 targets), and the black-box Square with 5000 queries.
    # FAB-T is not included: APGD-T covers the targeted minimum-margin search it adds (see README).
    "standard": {"linf": ["apgd-ce", "apgd-t", "square"], "l2": ["apgd-ce", "apgd-t", "square"],
                 "l1": ["apgd-ce", "apgd-t", "apgd-dlr"]},
    "fast": {"linf": ["pgd", "apgd-ce"], "l2": ["pgd", "apgd-ce"], "l1": ["pgd", "apgd-ce"]},
    # Tabular threats with domain constraints: constrained PGD, APGD through the repair, and a black-box
    # constrained genetic search (MOEVA-style).
    "tabular": {"linf": ["cpgd", "apgd-ce", "csearch"]},
}


def resolve_suite(suite: Union[str, Sequence[str]], threat: ThreatModel) -> list[str]:
    """Names of the attacks a suite runs under ``threat``; unknown names or norms raise ``ValueError``."""
    if isinstance(suite, str):
        if suite in SUITES:
            if threat.norm.value not in SUITES[suite]:
                raise ValueError(f"suite {suite!r} has no attacks for the {threat.norm.value} norm "
                                 f"(it covers {', '.join(SUITES[suite])})")
            return list(SUITES[suite][threat.norm.value])
        names = [s.strip() for s in suite.split(",") if s.strip()]
    else:
        names = list(suite)
    if not names:
        raise ValueError("the attack suite is empty: pass 'standard', 'fast' or a list of attack names")
    for name in names:
        if name not in ATTACKS:
            raise ValueError(f"unknown attack {name!r} in suite: choose from {', '.join(sorted(ATTACKS))} "
                             f"or a suite name ({', '.join(SUITES)})")
        if threat.norm.value not in ATTACKS[name].norms:
            raise ValueError(f"attack {name!r} does not support the {threat.norm.value} norm "
                             f"(it supports {', '.join(ATTACKS[name].norms)})")
    return names


@dataclass
class EvalResult:
    """What :func:`evaluate` measured. ``to_dict()`` is the JSON form used in results.json."""

    clean_accuracy: float
    robust_accuracy: float
    per_attack: dict[str, dict[str, Any]]
    threat_model: dict[str, Any]
    suite: list[str]
    n: int
    seconds: float
    seed: int
    robust: Optional[torch.Tensor] = field(default=None, repr=False)  # per-sample worst-case robustness
    clean_correct: Optional[torch.Tensor] = field(default=None, repr=False)
    x_adv: Optional[torch.Tensor] = field(default=None, repr=False)  # the successful example, else the input

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("robust", "clean_correct", "x_adv")}
        return d

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)


def _as_xy(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    if hasattr(data, "x") and hasattr(data, "y"):
        return data.x, data.y
    raise ValueError("data must be an (x, y) pair of tensors or an armor Dataset")


def _fingerprint(x: torch.Tensor, y: torch.Tensor, names: list[str], threat: ThreatModel, seed: int,
                 model: nn.Module, kwargs: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([names, threat.to_dict(), seed, kwargs], sort_keys=True, default=str).encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    h.update(y.detach().cpu().numpy().tobytes())
    for t in model.state_dict().values():
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    outs = []
    with attack_mode(model), torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            outs.append(model(x[i:i + batch_size]))
    return torch.cat(outs) if outs else torch.empty(0)


def evaluate(model: nn.Module, data: Any, threat: ThreatModel,
             suite: Union[str, Sequence[str]] = "standard", *, n: Optional[int] = None, batch_size: int = 500,
             seed: int = 0, individual: bool = False, state_path: Union[str, Path, None] = None,
             attack_kwargs: Optional[dict[str, dict[str, Any]]] = None, keep_adv: bool = False,
             progress: Any = None) -> EvalResult:
    """Worst-case robust accuracy of ``model`` under ``threat`` over an ensemble of attacks.

    Arguments:
        data: ``(x, y)`` tensors or an armor ``Dataset``; x in the threat's bounds.
        suite: ``"standard"`` (APGD-CE, APGD-T, Square-5000), ``"fast"`` (PGD-10, APGD-CE) or attack names.
        n: evaluate the first ``n`` points. batch_size: points per attack call.
        seed: every (attack, batch) gets its own generator derived from it, so a resumed run is identical.
        individual: also run every attack on all clean-correct points, so that ``per_attack[name]["accuracy"]``
            is each attack's own accuracy (needed by the masking checks); costs more on robust models.
        state_path: a file to checkpoint into after each batch; an existing state for the same model, data
            and settings is resumed, a state for anything else raises ``ValueError``.
        attack_kwargs: per-attack keyword overrides, e.g. ``{"square": {"n_queries": 1000}}``.
        keep_adv: keep the adversarial inputs in ``result.x_adv``.
    Returns:
        :class:`EvalResult`; ``per_attack[name]`` holds ``accuracy`` (own accuracy on the same points, with
        ``individual``), ``cumulative_accuracy`` (worst case after this attack), ``seconds`` and ``n`` (points
        attacked).
    """
    x, y = _as_xy(data)
    check_inputs(x, y, None, threat)
    if n is not None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        x, y = x[:n], y[:n]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    names = resolve_suite(suite, threat)
    attack_kwargs = attack_kwargs or {}
    for key in attack_kwargs:
        if key not in names:
            raise ValueError(f"attack_kwargs names {key!r}, which is not in the suite {names}")
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = x.device
    x, y = x.to(device), y.to(device)
    total = x.shape[0]
    t_start = time.perf_counter()

    logits = _predict(model, x, batch_size)
    if logits.dim() != 2:
        raise ValueError(f"the model must return logits of shape (N, classes), got {tuple(logits.shape)}")
    check_inputs(x, y, logits.shape[1])
    warn_if_probabilities(logits)
    clean_correct = logits.argmax(1) == y
    robust = clean_correct.clone()
    x_adv = x.clone() if keep_adv else None
    records: dict[str, dict[str, Any]] = {}
    state = _State(Path(state_path), _fingerprint(x, y, names, threat, seed, model, attack_kwargs)) if state_path else None
    pos = (0, 0, None)
    if state is not None and state.exists():
        robust, records, pos, saved_adv = state.load(device)
        if keep_adv and saved_adv is not None:
            x_adv = saved_adv
    prior_seconds = sum(r["seconds"] for r in records.values())

    for a_idx, name in enumerate(names):
        if a_idx < pos[0]:
            continue
        fn = get_attack(name, **attack_kwargs.get(name, {}))
        resuming = a_idx == pos[0] and pos[2] is not None
        if resuming:
            todo, b_start, own_fooled, seconds = pos[2], pos[1], records[name]["_own_fooled"], records[name]["seconds"]
        else:
            todo = (clean_correct if individual else robust).nonzero().squeeze(1)
            b_start, own_fooled, seconds = 0, 0, 0.0
        batches = [todo[i:i + batch_size] for i in range(0, todo.numel(), batch_size)]
        for b_idx in range(b_start, len(batches)):
            idx = batches[b_idx]
            t0 = time.perf_counter()
            g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + a_idx * 10_007 + b_idx)
            xb = fn(model, x[idx], y[idx], threat, generator=g)
            if not bool(threat.contains(xb, x[idx]).all()):
                raise RuntimeError(f"attack {name!r} returned points outside the threat model: this is a bug")
            with attack_mode(model), torch.no_grad():
                fooled = model(xb).argmax(1) != y[idx]
            own_fooled += int(fooled.sum())
            newly = fooled & robust[idx]  # never overwrite an earlier success
            robust[idx[newly]] = False
            if x_adv is not None:
                x_adv[idx[newly]] = xb[newly]
            seconds += time.perf_counter() - t0
            records[name] = {"_own_fooled": own_fooled, "seconds": seconds, "n": int(todo.numel())}
            if state is not None:
                state.save(robust, records, (a_idx, b_idx + 1, todo), x_adv)
            if progress is not None:
                progress(name, b_idx + 1, len(batches))
        own = own_fooled
        records[name] = {
            "accuracy": (int(clean_correct.sum()) - own) / total if individual else None,
            "cumulative_accuracy": int(robust.sum()) / total,
            "seconds": round(seconds, 4),
            "n": int(todo.numel()),
            "_own_fooled": own,
        }
        if state is not None:
            state.save(robust, records, (a_idx + 1, 0, None), x_adv)

    per_attack = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in records.items()}
    return EvalResult(
        clean_accuracy=int(clean_correct.sum()) / total,
        robust_accuracy=int(robust.sum()) / total,
        per_attack=per_attack,
        threat_model=threat.to_dict(),
        suite=names,
        n=total,
        seconds=round(time.perf_counter() - t_start + prior_seconds, 4),
        seed=seed,
        robust=robust.cpu(),
        clean_correct=clean_correct.cpu(),
        x_adv=None if x_adv is None else x_adv.cpu(),
    )


class _State:
    """Resumable evaluation state in one file (bookkeeping and tensors together), written atomically."""

    def __init__(self, path: Path, fingerprint: str):
        self.path, self.fingerprint = path, fingerprint

    def exists(self) -> bool:
        return self.path.exists()

    def load(self, device: torch.device):
        try:
            blob = torch.load(self.path, map_location=device, weights_only=True)
            meta = json.loads(blob["meta"])
        except Exception as e:  # torch raises several types for damaged files
            raise ValueError(f"evaluation state {self.path} is unreadable ({type(e).__name__}: {e}); "
                             "delete it to start over") from None
        if meta.get("fingerprint") != self.fingerprint:
            raise ValueError(f"evaluation state {self.path} belongs to a different model, data or suite; "
                             "delete it or pass another state path")
        return blob["robust"], meta["records"], (meta["attack"], meta["batch"], blob.get("todo")), blob.get("x_adv")

    def save(self, robust, records, pos, x_adv) -> None:
        blob = {"meta": json.dumps({"fingerprint": self.fingerprint, "records": records, "attack": pos[0],
                                    "batch": pos[1]}), "robust": robust}
        if pos[2] is not None:
            blob["todo"] = pos[2]
        if x_adv is not None:
            blob["x_adv"] = x_adv
        buf = io.BytesIO()
        torch.save(blob, buf)
        atomic_write_bytes(self.path, buf.getvalue())
