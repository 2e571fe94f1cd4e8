"""The worst-case evaluator: an ensemble of attacks per sample, with AutoAttack's bookkeeping.

Each attack runs only on points that are still robust, and a point that any attack fooled is never
overwritten, so the robust accuracy is the per-sample worst case over the suite. Long evaluations checkpoint
after every batch to a state file and resume exactly where they stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from torch import nn

from .attacks import all_attacks, attack_mode, get_attack
from .engine import as_xy, attack_batches, batch_seed, model_device, predict_logits
from .plugins import contributions
from .threat import ThreatModel, check_inputs, warn_if_probabilities
from .utils import atomic_write_bytes

SUITES: dict[str, dict[str, list[str]]] = {
    # AutoAttack-standard strength and more: APGD-CE, APGD-T (9 targets) and the black-box Square-5000 start
    # inside the ball at random, where a masked model's gradients may mislead them; FGSM, FGSM-T and FAB-T
    # start at the clean point, where the gradient is often still honest. FGSM (one pass) and FGSM-T (one
    # pass per target) go first; FAB-T gains its points in its first steps (10 steps broke as many as
    # AutoAttack's 100 on the models in bench/fab_suite.py) and runs after APGD-CE, on the points it left.
    "standard": {"linf": ["fgsm", "fgsm-t", "apgd-ce", "fab-t-10", "apgd-t", "square"],
                 "l2": ["fgsm", "fgsm-t", "apgd-ce", "fab-t-10", "apgd-t", "square"],
                 "l1": ["fgsm", "fgsm-t", "apgd-ce", "fab-t-10", "apgd-t", "apgd-dlr"]},
    # AutoAttack+ style: more restarts, APGD-DLR, the full FAB-T, Square with restarts, APGD-T's whole budget.
    "plus": {"linf": ["fgsm", "fgsm-t", "apgd-ce-x5", "apgd-dlr-x5", "fab-t", "square-x5", "apgd-t-full"],
             "l2": ["fgsm", "fgsm-t", "apgd-ce-x5", "apgd-dlr-x5", "fab-t", "square-x5", "apgd-t-full"],
             "l1": ["fgsm", "fgsm-t", "apgd-ce-x5", "apgd-dlr-x5", "fab-t", "apgd-t-full"]},
    "fast": {"linf": ["pgd", "apgd-ce"], "l2": ["pgd", "apgd-ce"], "l1": ["pgd", "apgd-ce"]},
}


def all_suites() -> dict[str, dict[str, list[str]]]:
    """Every suite: armor's own (:data:`SUITES`) and those the domains contribute (:mod:`armor.plugins`)."""
    return {name: {norm: list(a) for norm, a in s.items()} for name, s in contributions("suites", SUITES).items()}


def resolve_suite(suite: Union[str, Sequence[str]], threat: ThreatModel) -> list[str]:
    """Names of the attacks a suite runs under ``threat``; unknown names or norms raise ``ValueError``."""
    suites = all_suites()
    if isinstance(suite, str):
        if suite in suites:
            if threat.norm.value not in suites[suite]:
                raise ValueError(f"suite {suite!r} has no attacks for the {threat.norm.value} norm "
                                 f"(it covers {', '.join(suites[suite])})")
            return list(suites[suite][threat.norm.value])
        names = [s.strip() for s in suite.split(",") if s.strip()]
    else:
        names = list(suite)
    if not names:
        raise ValueError("the attack suite is empty: pass 'standard', 'fast' or a list of attack names")
    attacks = all_attacks()
    for name in names:
        if name not in attacks:
            raise ValueError(f"unknown attack {name!r} in suite: choose from {', '.join(sorted(attacks))} "
                             f"or a suite name ({', '.join(suites)})")
        if threat.norm.value not in attacks[name].norms:
            raise ValueError(f"attack {name!r} does not support the {threat.norm.value} norm "
                             f"(it supports {', '.join(attacks[name].norms)})")
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
    state_file: Optional[Path] = field(default=None, repr=False)  # where the resumable state was kept
    # per sample: the suite index of the attack that last lowered its score (-1: none did)
    broken_by: Optional[torch.Tensor] = field(default=None, repr=False)
    # per sample, with a ``score``: the expected correctness at its worst point (robust is score > 0)
    score: Optional[torch.Tensor] = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items()
                if k not in ("robust", "clean_correct", "x_adv", "state_file", "broken_by", "score")}

    def broken_points(self) -> dict[str, list[int]]:
        """Which attack broke which points: ``{attack name: [point indices]}`` (the attack that lowered each
        point last; with a ``score``, lowered its expected correctness)."""
        if self.broken_by is None:
            return {}
        return {name: (self.broken_by == i).nonzero().squeeze(1).tolist() for i, name in enumerate(self.suite)}

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)


def _fingerprint(x: torch.Tensor, y: torch.Tensor, names: list[str], threat: ThreatModel, seed: int,
                 model: nn.Module, kwargs: dict[str, Any], extra: Optional[str] = None,
                 start: Optional[torch.Tensor] = None) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([names, threat.to_dict(), seed, kwargs], sort_keys=True, default=str).encode())
    if extra is not None:  # only then: a fingerprint of an evaluation without these stays what it was
        h.update(extra.encode())
    if start is not None:
        h.update(start.detach().cpu().double().numpy().tobytes())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    h.update(y.detach().cpu().numpy().tobytes())
    for t in model.state_dict().values():
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


ScoreFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def evaluate(model: nn.Module, data: Any, threat: ThreatModel,
             suite: Union[str, Sequence[str]] = "standard", *, n: Optional[int] = None, batch_size: int = 500,
             seed: int = 0, individual: bool = False, state_path: Union[str, Path, None] = None,
             attack_kwargs: Optional[dict[str, dict[str, Any]]] = None, keep_adv: bool = False,
             progress: Optional[Callable[[str, int, int], None]] = None,
             attacks: Optional[dict[str, Callable[..., torch.Tensor]]] = None, score: Optional[ScoreFn] = None,
             start: Optional[torch.Tensor] = None, key: Optional[str] = None, shard: Any = None) -> EvalResult:
    """Worst-case robust accuracy of ``model`` under ``threat`` over an ensemble of attacks.

    Arguments:
        data: ``(x, y)`` tensors or an armor ``Dataset``; x in the threat's bounds.
        suite: ``"standard"`` (FGSM, FGSM-T, APGD-CE, FAB-T-10, APGD-T and Square-5000 that give up on hopeless points), ``"plus"`` (AutoAttack+
            style: restarts, APGD-DLR, FAB-T-100), ``"fast"`` (PGD-10, APGD-CE) or attack names.
        n: evaluate the first ``n`` points. batch_size: points per attack call.
        seed: every (attack, batch) gets its own generator derived from it, so a resumed run is identical.
        individual: also run every attack on all clean-correct points, so that ``per_attack[name]["accuracy"]``
            is each attack's own accuracy (needed by the masking checks); costs more on robust models.
        state_path: checkpoint after each batch, and resume from an earlier checkpoint of the same evaluation.
            A directory: the state is ``eval-<key>.state`` inside it, keyed by a fingerprint of what is evaluated
            (model weights, data, threat, suite, seed, attack settings), so evaluations at other eps or seeds
            never collide and a stale state is never mistaken for this one (``result.state_file`` names it).
            A file path (not a directory): that file; a state in it for anything else raises ``ValueError``.
        attack_kwargs: per-attack keyword overrides, e.g. ``{"square": {"n_queries": 1000}}``.
        keep_adv: keep the adversarial inputs in ``result.x_adv``.
        progress: called as ``progress(name, batch, n_batches)`` after every batch of every attack (``batch``
            counts from 1 and ends at ``n_batches``); nothing is printed otherwise. If it also has a
            ``start(name, n_points, n_batches, done)`` method, that is called as each attack starts (or resumes
            after ``done`` batches) with the number of points it attacks, so a display can count points left.
        attacks: attacks by name that are not in the registry, ``attack(model, x, y, threat, generator=g)``
            (the adaptive attacks of :mod:`armor.adaptive`: BPDA, EOT, transfer); ``suite`` may name them. They
            are judged on ``model`` itself, whatever they attacked.
        score: per point, how correct ``model`` is at an input, in [0, 1]: ``score(model, x, y)``. Default:
            1 if the prediction is right, else 0. A randomized model's expected accuracy over its random draws
            (:class:`armor.adaptive.ExpectedCorrect`): each point keeps its lowest score over the attacks, and
            the robust accuracy is the mean of those.
        start: per point, the worst case found before (bool, or scores with ``score``); attacks run only where
            it is above 0, and the result continues from it (escalating an earlier evaluation).
        key: describes ``attacks`` and ``score`` in the state's fingerprint (whatever changes what they do).
        shard: this process's part of an evaluation sharded over a process group (an :class:`armor.shard.Shard`;
            use :func:`armor.shard.evaluate_sharded`): it runs the global batches ``b`` of each attack with
            ``b % shard.world == shard.rank``, ``shard.merge`` joins the processes' results after each attack, and
            every process returns the whole result, identical to one process's. ``state_path`` must then be a
            directory; each process keeps its own state file in it.
    Returns:
        :class:`EvalResult`; ``per_attack[name]`` holds ``accuracy`` (own accuracy on the same points, with
        ``individual``), ``cumulative_accuracy`` (worst case after this attack), ``broke`` (points it broke
        that no earlier attack had; with ``score``, the expected correctness it took away), ``seconds`` and
        ``n`` (points attacked). ``result.broken_points()`` says which attack broke which points.
    """
    x, y = as_xy(data)
    check_inputs(x, y, None, threat)
    if n is not None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        x, y = x[:n], y[:n]
    if x.shape[0] == 0:
        raise ValueError("there are no points to evaluate: the dataset (or its first n points) is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    attacks = attacks or {}
    names = resolve_suite(suite, threat) if not attacks else _with_custom(suite, threat, attacks)
    attack_kwargs = attack_kwargs or {}
    for name in attack_kwargs:
        if name not in names:
            raise ValueError(f"attack_kwargs names {name!r}, which is not in the suite {names}")
    device = model_device(model, x.device)
    x, y = x.to(device), y.to(device)
    total = x.shape[0]
    t_start = time.perf_counter()

    with _global_rng(device, batch_seed(seed, -1, 0)):
        logits = predict_logits(model, x, batch_size)
    check_inputs(x, y, logits.shape[1])
    warn_if_probabilities(logits)
    if score is None:
        clean_score = logits.argmax(1) == y
    else:
        clean_score = torch.cat([_checked_score(score, model, x[i:i + batch_size], y[i:i + batch_size])
                                 for i in range(0, total, batch_size)])
    clean_correct = clean_score > 0
    if start is not None:
        start = start.to(device)
        if start.shape != clean_score.shape or (score is None) != (start.dtype == torch.bool):
            raise ValueError(f"start must hold one {'bool' if score is None else 'score'} per point "
                             f"({total}), got {start.dtype} of shape {tuple(start.shape)}")
        begin = torch.minimum(start.to(clean_score.dtype), clean_score) if score is not None else start & clean_score
    else:
        begin = clean_score
    st = EvalState(robust=begin.clone(), x_adv=x.clone() if keep_adv else None,
                   broken_by=torch.full((total,), -1, dtype=torch.long, device=device))
    store = None
    if state_path is not None:
        extra = key if shard is None else f"{key or ''}|sharded individual={individual} keep_adv={keep_adv}"
        fingerprint = _fingerprint(x, y, names, threat, seed, model, attack_kwargs, extra,
                                   None if start is None else begin)
        path = Path(state_path)
        store = _StateFile(shard.state_file(path, fingerprint) if shard is not None else
                           path / f"eval-{fingerprint[:20]}.state" if path.is_dir() else path, fingerprint)
    saved, problem, behind = None, None, 0
    if store is not None and store.exists():
        try:
            saved = store.load(device)
        except ValueError as e:
            if shard is None:
                raise
            problem = e  # raised on every process by shard.agree, not on this one alone
    if shard is not None:  # the states resume only if they belong to one interrupted run
        saved, behind = shard.agree(saved, problem, state_path)
    if saved is not None:
        st = EvalState(saved.robust, saved.records, saved.attack, saved.batch, saved.todo, saved.own_fooled,
                       saved.x_adv if keep_adv and saved.x_adv is not None else st.x_adv,
                       saved.broken_by if saved.broken_by is not None else st.broken_by)
    prior_seconds = sum(r["seconds"] for r in st.records.values())
    on_start = getattr(progress, "start", None) if progress is not None else None
    clean_total = float(clean_score.double().sum())

    def finish(record: dict[str, Any]) -> None:
        """Complete an attack's record once its batches are done (merged over the processes when sharded)."""
        own = st.own_fooled if shard is None else shard.merge(st, record, score is not None)
        record.update({
            "accuracy": (clean_total - own) / total if individual else None,
            "cumulative_accuracy": float(st.robust.double().sum()) / total,
            "seconds": round(record["seconds"], 4),
        })

    if shard is not None and st.attack == behind + 1:
        # one attack ahead of another process: it saved the merge of that attack, which the others missed
        finish(st.records[names[behind]])
        store.save(st)
    rank, n_shards = (0, 1) if shard is None else (shard.rank, shard.world)
    for a_idx in range(st.attack, len(names)):
        name = names[a_idx]
        fn = attacks[name] if name in attacks else get_attack(name, **attack_kwargs.get(name, {}))
        if st.todo is None:  # a fresh attack (not one resumed in the middle)
            st.todo = (clean_correct if individual else st.robust > 0).nonzero().squeeze(1)
            st.batch, st.own_fooled = 0, 0
            st.records[name] = {"seconds": 0.0, "n": int(st.todo.numel()), "broke": 0}
        record = st.records[name]
        n_points = int(st.todo.numel())
        n_batches = (n_points + batch_size - 1) // batch_size
        if on_start is not None:
            on_start(name, n_points, n_batches, st.batch)
        for b in range(st.batch, n_batches):  # st.batch: the next global batch
            if b % n_shards != rank:  # another process's
                continue
            t0 = time.perf_counter()
            # A model that draws random numbers in its forward pass draws them from torch's global generator:
            # seeded per (attack, batch) like the attacks' own, so a resumed run draws what an uninterrupted one
            # did (and the caller's generator is left where it was).
            with _global_rng(device, batch_seed(seed, a_idx, b)):
                _, _, idx, xb = next(attack_batches(model, fn, x, y, threat, batch_size=batch_size, seed=seed,
                                                    stream=a_idx, index=st.todo, start=b, name=name))
                now = _checked_score(score, model, xb, y[idx]) if score is not None else None
            if score is None:
                with attack_mode(model), torch.no_grad(), _global_rng(device, batch_seed(seed, a_idx, b) + 1):
                    now = model(xb).argmax(1) == y[idx]
                st.own_fooled += int((~now).sum())
                lower = ~now & st.robust[idx]  # never overwrite an earlier success
                record["broke"] += int(lower.sum())
            else:
                st.own_fooled += float((clean_score[idx] - now).clamp(min=0).sum())
                lower = now < st.robust[idx]  # a point keeps its lowest score
                record["broke"] += float((st.robust[idx] - now).clamp(min=0).sum())
            st.robust[idx[lower]] = now[lower]
            st.broken_by[idx[lower]] = a_idx  # sharded: this process's own, merged at the end
            if st.x_adv is not None:
                st.x_adv[idx[lower]] = xb[lower]
            record["seconds"] += time.perf_counter() - t0
            st.batch = b + 1
            if store is not None:
                store.save(st)
            if progress is not None:
                progress(name, b + 1, n_batches)
        st.attack, st.batch, st.todo = a_idx + 1, 0, None
        finish(record)  # sharded: merges, and keeps what it needs to merge again after a restart
        st.own_fooled = 0
        if store is not None:
            store.save(st)

    seconds = time.perf_counter() - t_start + prior_seconds
    broken_by, x_adv = st.broken_by, st.x_adv
    if shard is not None:
        broken_by, x_adv, seconds = shard.gather(broken_by, x_adv, seconds)
    per_attack = {k: {"accuracy": v.get("accuracy"), "cumulative_accuracy": v["cumulative_accuracy"],
                      "broke": v.get("broke"), "seconds": v["seconds"], "n": v["n"]} for k, v in st.records.items()}
    return EvalResult(
        clean_accuracy=clean_total / total,
        robust_accuracy=float(st.robust.double().sum()) / total,
        per_attack=per_attack,
        threat_model=threat.to_dict(),
        suite=names,
        n=total,
        seconds=round(seconds, 4),
        seed=seed,
        robust=(st.robust > 0).cpu(),
        clean_correct=clean_correct.cpu(),
        x_adv=None if x_adv is None else x_adv.cpu(),
        state_file=None if store is None else store.path,
        broken_by=broken_by.cpu(),
        score=None if score is None else st.robust.cpu(),
    )


@contextlib.contextmanager
def _global_rng(device: torch.device, seed: int) -> Iterator[None]:
    """torch's global generator seeded with ``seed`` inside the block, and restored after it."""
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _with_custom(suite: Union[str, Sequence[str]], threat: ThreatModel,
                 attacks: dict[str, Callable[..., torch.Tensor]]) -> list[str]:
    """The suite's names when some of them are ``attacks`` outside the registry (the rest must resolve)."""
    names = [s.strip() for s in suite.split(",") if s.strip()] if isinstance(suite, str) else list(suite)
    if isinstance(suite, str) and suite in all_suites():
        return resolve_suite(suite, threat)
    registered = [nm for nm in names if nm not in attacks]
    if registered:
        resolve_suite(registered, threat)  # raises on unknown names and norms
    if not names:
        raise ValueError("the attack suite is empty: pass 'standard', 'fast' or a list of attack names")
    return names


def _checked_score(score: ScoreFn, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    s = score(model, x, y)
    if s.shape != y.shape or not s.is_floating_point():
        raise ValueError(f"score must return one float per point, got {s.dtype} of shape {tuple(s.shape)}")
    return s.to(torch.float64)


@dataclass
class EvalState:
    """Where an evaluation stands: the per-sample worst case so far and the position in the suite.

    ``robust`` is per point: bool, or the score (expected correctness) with a ``score`` function. ``attack``
    and ``batch`` are the next attack and batch to run; ``todo`` the points the current attack works through
    (``None`` between attacks); ``own_fooled`` how many of them it has fooled so far (with a score: the score it
    took away from them); ``broken_by`` the attack that last lowered each point (-1: none)."""

    robust: torch.Tensor
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    attack: int = 0
    batch: int = 0
    todo: Optional[torch.Tensor] = None
    own_fooled: Union[int, float] = 0
    x_adv: Optional[torch.Tensor] = None
    broken_by: Optional[torch.Tensor] = None


class _StateFile:
    """An :class:`EvalState` in one file (bookkeeping and tensors together), keyed by a fingerprint of what it
    evaluates and written atomically."""

    def __init__(self, path: Path, fingerprint: str):
        self.path, self.fingerprint = path, fingerprint

    def exists(self) -> bool:
        return self.path.exists()

    def load(self, device: torch.device) -> EvalState:
        try:
            blob = torch.load(self.path, map_location=device, weights_only=True)
            meta = json.loads(blob["meta"])
        except Exception as e:  # torch raises several types for damaged files
            raise ValueError(f"evaluation state {self.path} is unreadable ({type(e).__name__}: {e}); "
                             "delete it to start over") from None
        if meta.get("fingerprint") != self.fingerprint:
            raise ValueError(f"evaluation state {self.path} belongs to a different model, data or suite; "
                             "delete it, or pass a directory as state_path (states are then keyed by what they "
                             "evaluate)")
        records = meta["records"]
        own = meta.get("own_fooled")
        if own is None:  # a state written before armor 0.2 kept the count inside the attack's record
            current = next((r for r in records.values() if "cumulative_accuracy" not in r), {})
            own = current.get("_own_fooled", 0)
        return EvalState(blob["robust"], records, meta["attack"], meta["batch"], blob.get("todo"), own,
                         blob.get("x_adv"), blob.get("broken_by"))

    def save(self, st: EvalState) -> None:
        blob = {"meta": json.dumps({"fingerprint": self.fingerprint, "records": st.records, "attack": st.attack,
                                    "batch": st.batch, "own_fooled": st.own_fooled}), "robust": st.robust}
        for name in ("todo", "x_adv", "broken_by"):
            if getattr(st, name) is not None:
                blob[name] = getattr(st, name)
        buf = io.BytesIO()
        torch.save(blob, buf)
        atomic_write_bytes(self.path, buf.getvalue())
