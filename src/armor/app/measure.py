"""One model, everything the report shows: worst case, curve, calibration, masking checks, and what the
dataset's domain adds (vision: corruption shift, saliency and gallery; tabular: constraint satisfaction, recall
under attack, constrained vs unconstrained).

:func:`measure` returns ``(entry, artifacts)``: ``entry`` is the JSON-ready results.json entry of one model,
``artifacts`` the small arrays (saliency maps, adversarial gallery) that the report draws and that are saved
next to results.json as ``artifacts.npz``.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from torch import nn

from .. import metrics
from ..adaptive import escalate, prepare_layers, triggers
from ..engine import as_xy
from ..evaluate import evaluate
from ..plugins import Measurement, domain_of_dataset
from ..threat import ThreatModel
from ..threads import ThreadsArg, use_threads
from .rundir import RunDir


class MeasureProgress:
    """What :func:`measure` reports while it runs; subclass and override what you want to show (every method
    here does nothing). A plain callable ``progress(message)`` is accepted too: it hears the stage names only.
    """

    def stage(self, name: str, index: int, total: int) -> None:
        """Stage ``index`` of ``total`` (from 1) starts: "worst-case evaluation", "curve", "calibration", a
        domain measurement's name, "masking"."""

    def attack_start(self, name: str, n_points: int, n_batches: int, done: int) -> None:
        """An attack of the worst case starts (or resumes after ``done`` batches) on ``n_points`` points."""

    def attack_batch(self, name: str, batch: int, n_batches: int) -> None:
        """Batch ``batch`` of ``n_batches`` (from 1) of the current attack is done."""

    def curve_point(self, eps: float, index: int, total: int) -> None:
        """Budget ``index`` of ``total`` (from 1) of the robustness curve is done."""

    def info(self, message: str) -> None:
        """A line of information (e.g. the thread count :func:`measure_run` chose)."""


class _Stages(MeasureProgress):
    """A plain ``progress(message)`` callable as a :class:`MeasureProgress` (stage names only)."""

    def __init__(self, say: Optional[Callable[[str], None]]) -> None:
        self.say = say

    def stage(self, name: str, index: int, total: int) -> None:
        if self.say is not None:
            self.say(name)


class _AttackHook:
    """The evaluator's ``progress(name, batch, n_batches)`` callback with its ``start`` hook, forwarding both."""

    def __init__(self, hooks: MeasureProgress) -> None:
        self.hooks = hooks

    def __call__(self, name: str, batch: int, n_batches: int) -> None:
        self.hooks.attack_batch(name, batch, n_batches)

    def start(self, name: str, n_points: int, n_batches: int, done: int) -> None:
        self.hooks.attack_start(name, n_points, n_batches, done)


Progress = Union[MeasureProgress, Callable[[str], None], None]


def measurements_for(dataset: Optional[str]) -> tuple[Measurement, ...]:
    """The extra measurements the domain of ``dataset`` contributes (none for armor's own file loaders)."""
    domain = domain_of_dataset(dataset) if dataset else None
    return tuple(domain.measurements) if domain is not None else ()


def default_suite_for(dataset: Optional[str]) -> str:
    """The evaluation suite the dataset's domain asks for ("standard" when it names none)."""
    if dataset:
        from ..data import dataset_spec

        suite = dataset_spec(dataset).default_suite
        if suite:
            return suite
    return "standard"


def measure(model: nn.Module, data: Any, threat: ThreatModel, *, suite: Union[str, Sequence[str]] = "standard",
            measurements: Sequence[Measurement] = (), n: Optional[int] = 1000,
            eps_grid: Optional[Sequence[float]] = None, curve_suite: str = "fast",
            calibration: bool = True, shift: bool = True, interpret: bool = True, masking: bool = True,
            masking_n: int = 300, attack_kwargs: Optional[dict[str, dict[str, Any]]] = None, seed: int = 0,
            batch_size: int = 500, state_path: Any = None, progress: Progress = None,
            certify: Optional[str] = None, smoothing: Optional[dict[str, Any]] = None, adaptive: bool = True,
            bpda_modules: Sequence[str] = (), evaluator: Callable[..., Any] = evaluate) -> tuple[dict, dict]:
    """Measure ``model`` under ``threat`` on ``data`` (``(x, y)`` or a Dataset).

    Arguments:
        suite: the worst-case suite (see :func:`armor.evaluate`); it runs with ``individual=True`` so that each
            attack's own accuracy is known (the report's train-A/test-B matrix and the masking checks use it).
        measurements: the domain's extra measurements (:func:`measurements_for`); each one sees the worst-case
            result and may be switched off by its ``option`` (``shift=False``, ``interpret=False``).
        n: test points for the worst case, calibration, shift and alignment. eps_grid: budgets for the curve
            (default: 0 to twice eps). curve_suite: attacks per curve point.
        calibration, shift, interpret, masking: which sections to compute (shift and interpret switch off the
            measurements of those names).
        masking_n: points for the masking checks. state_path: resumable state for the worst-case evaluation
            (see :func:`armor.evaluate`; a directory keys it by what is evaluated); the state is removed once
            every measurement is done, since nothing is left to resume.
        progress: a :class:`MeasureProgress` (stages, every attack batch of the worst case, every curve budget)
            or a callable ``progress(message)`` that hears the stage names; nothing is printed otherwise.
        certify: a certified lower bound next to the attacked upper bound (:func:`certify_entry`): ``"ibp"``,
            ``"crown-ibp"`` or ``"crown"`` (bound propagation: the model itself, also at every eps of the curve),
            ``"smoothing"`` (the smoothed classifier, with ``smoothing`` = ``{"sigma", "n0", "n", "alpha"}``),
            ``None`` (no certificate).
        adaptive: when a masking flag calls for it, escalate (:func:`armor.adaptive.escalate`: EOT for random
            outputs, BPDA through the non-differentiable layers it finds or ``bpda_modules`` names, transfer from a
            surrogate). ``robust_accuracy`` is then the worst case over the suite and the escalation (for a model
            with random outputs, the expected accuracy over draws, and so is ``clean_accuracy``),
            ``suite_robust_accuracy`` the suite's own, ``per_attack`` gains the adaptive attacks (``broke``: what
            each broke that everything before it missed) and ``adaptive`` says what ran and which points each
            attack broke. Costs nothing when no flag fires.
        bpda_modules: names of submodules (as in ``model.named_modules()``) to attack through with BPDA besides
            those found; naming one escalates even without a flag or the masking checks. A name the model does not
            have is a ``ValueError`` (naming the ones it has) before any attack runs.
        evaluator: the worst-case evaluator: :func:`armor.evaluate`, or one with its arguments and result, such as
            :func:`armor.shard.evaluate_sharded` under torchrun (the rest of the measurement runs where it
            returns).
    The thread count is torch's current one: pick it with :func:`armor.threads.use_threads` (what
    ``armor evaluate --threads`` does), e.g. ``with use_threads("auto", model): measure(...)``.
    Returns:
        ``(entry, artifacts)``.
    """
    x, y = as_xy(data)
    if n is not None:
        x, y = x[:n], y[:n]
    hooks = progress if isinstance(progress, MeasureProgress) else _Stages(progress)
    t0 = time.perf_counter()
    grid = metrics.check_eps_grid(eps_grid) if eps_grid is not None else None
    switches = {"shift": shift, "interpret": interpret, "calibration": calibration, "masking": masking}
    extra = [m for m in measurements if m.option is None or switches.get(m.option, True)]
    if certify is not None and certify not in CERTIFY_METHODS:
        raise ValueError(f"unknown certify method {certify!r}: choose one of {', '.join(CERTIFY_METHODS)}")
    if certify == "smoothing" and (smoothing or {}).get("sigma") is None:
        raise ValueError(SIGMA_NEEDED)
    stages = (["worst-case evaluation"] + (["curve"] if threat.eps_scalar > 0 else [])
              + (["certified bounds"] if certify else [])
              + (["calibration"] if calibration else []) + [m.name for m in extra] + (["masking"] if masking else []))
    # "adaptive escalation" follows masking only when a flag calls for it, and joins the stages then

    def announce(key: str) -> None:
        hooks.stage(key, stages.index(key) + 1 if key in stages else len(stages), len(stages))

    if bpda_modules:  # a wrong name is an error now, not after the worst case
        known = dict(model.named_modules())
        unknown = [nm for nm in bpda_modules if nm not in known or known[nm] is model]
        if unknown:
            prepare_layers(model, x[:1], threat, unknown, "named by the user")  # raises, naming the known ones
    announce("worst-case evaluation")
    result = evaluator(model, (x, y), threat, suite=suite, batch_size=batch_size, seed=seed, individual=True,
                       attack_kwargs=attack_kwargs, keep_adv=True, state_path=state_path,
                       progress=_AttackHook(hooks))
    entry: dict[str, Any] = result.to_dict()
    entry["eval_seconds"] = {"worst_case": result.seconds}
    artifacts: dict[str, Any] = {}

    def timed(key: str, fn: Callable[[], Any]) -> Any:
        announce(key)
        t = time.perf_counter()
        out = fn()
        entry["eval_seconds"][key] = round(time.perf_counter() - t, 3)
        return out

    if threat.eps_scalar > 0:
        entry["curve"] = timed("curve", lambda: metrics.robustness_curve(
            model, x, y, threat, grid if grid is not None else metrics.default_eps_grid(threat.eps_scalar),
            suite=curve_suite, batch_size=batch_size, seed=seed, progress=hooks.curve_point))
    if certify:
        timed("certified bounds", lambda: entry.update(certify_entry(
            model, x, y, threat, certify, result.robust, curve=entry.get("curve"), smoothing=smoothing,
            seed=seed)))
    if calibration:
        entry["calibration"] = timed("calibration", lambda: metrics.calibration_report(
            model, x, y, threat, batch_size=batch_size, seed=seed))  # its own PGD: robust points count at their worst iterate
    for m in extra:
        fields, art = timed(m.name, lambda m=m: m.fn(model, x, y, threat, result=result, seed=seed,
                                                    batch_size=batch_size, attack_kwargs=attack_kwargs))
        entry.update(fields)
        artifacts.update(art)
    flags: list[dict[str, Any]] = []
    if masking:
        checks = timed("masking", lambda: metrics.masking_checks(
            model, x, y, threat, curve=entry.get("curve"), n=masking_n, seed=seed, batch_size=batch_size))
        flags = checks["flags"]
        entry["masking_checks"] = checks["checks"]
    entry["masking_flags"] = flags
    if adaptive and (triggers(flags) or bpda_modules):
        stages.append("adaptive escalation")
        found = timed("adaptive escalation", lambda: escalate(
            model, x, y, threat, flags, base=result, modules=bpda_modules, seed=seed,
            batch_size=batch_size, state_path=state_path, attack_kwargs=_adaptive_kwargs(attack_kwargs),
            progress=_AttackHook(hooks)))
        if found is not None:
            entry["suite_robust_accuracy"] = entry["robust_accuracy"]
            entry["robust_accuracy"] = found.robust_accuracy
            if found.draws is not None:  # random outputs: both numbers are expectations over draws
                entry["suite_clean_accuracy"] = entry["clean_accuracy"]
                entry["clean_accuracy"] = found.clean_accuracy
            entry["per_attack"].update(found.per_attack)
            entry["adaptive"] = found.to_dict()
            if found.result is not None and found.result.state_file is not None and found.result.state_file.exists():
                found.result.state_file.unlink()
    entry["eval_seconds"]["total"] = round(time.perf_counter() - t0, 3)
    if result.state_file is not None and result.state_file.exists():
        result.state_file.unlink()
    return entry, artifacts


def _adaptive_kwargs(attack_kwargs: Optional[dict[str, dict[str, Any]]]) -> Optional[dict[str, dict[str, Any]]]:
    """The suite's overrides of the attacks the escalation runs too (APGD-CE, APGD-T), so both use one budget."""
    from ..adaptive import ATTACKS

    picked = {k: v for k, v in (attack_kwargs or {}).items() if k in ATTACKS}
    return picked or None


CERTIFY_METHODS = ("ibp", "crown-ibp", "crown", "smoothing")
SIGMA_NEEDED = ("smoothing needs the noise level sigma: pass --sigma (a run trained with the gaussian or smoothadv "
                "recipe uses its own by default)")


def certify_entry(model: nn.Module, x: Any, y: Any, threat: ThreatModel, method: str, robust: Any, *,
                  curve: Optional[list[dict[str, Any]]] = None, smoothing: Optional[dict[str, Any]] = None,
                  seed: int = 0) -> dict[str, Any]:
    """``certified_accuracy`` and ``certificate`` for a results.json entry (and ``certified_accuracy`` in every
    point of ``curve``, which it changes in place, for bound propagation).

    Bound propagation certifies the model itself, so its certified points must all have survived the attacks
    (``robust``: the worst case's per-point flags): a point certified and broken means an unsound bound, and
    this raises ``RuntimeError`` rather than report it. Smoothing certifies the smoothed classifier, a different
    classifier from the attacked one: its figure is not a lower bound on the attacked model's robust accuracy,
    and ``certificate.classifier`` says so.
    """
    from .. import certify as cert

    if method == "smoothing":
        opts = {"n0": 100, "n": 100_000, "alpha": 0.001, **(smoothing or {})}
        if opts.get("sigma") is None:
            raise ValueError(SIGMA_NEEDED)
        found = cert.smoothed_certify(model, x, float(opts["sigma"]), n0=int(opts["n0"]), n=int(opts["n"]),
                                      alpha=float(opts["alpha"]), seed=seed)
        need = cert.smoothing_radius(threat, int(x[0].numel()))
        top = max(2 * need, float(found.radius.max()) if len(found.radius) else 0.0, 1e-12)
        radii = [top * i / 10 for i in range(11)]
        accuracy = float(found.certified(y, need).double().mean())
        return {"certified_accuracy": accuracy, "certificate": {
            "method": "smoothing", "classifier": f"smoothed (sigma={found.sigma:g})", "n": len(y),
            "seconds": found.seconds, "sigma": found.sigma, "n0": found.n0, "n_samples": found.n,
            "alpha": found.alpha, "l2_radius_needed": need, "abstained": float((found.prediction < 0).double().mean()),
            "smoothed_clean_accuracy": float((found.prediction == y.cpu()).double().mean()),
            "radius_curve": found.accuracy_at(y, radii)}}
    found = cert.certify(model, x, y, threat, method)
    broken = int((found.certified & ~robust.cpu()).sum()) if robust is not None else 0
    if broken:
        raise RuntimeError(f"{broken} point(s) certified by {method} were broken by an attack: the bound is unsound "
                           "(a bug in armor.certify: please report it with the model)")
    out: dict[str, Any] = {"certified_accuracy": found.accuracy, "certificate": {
        "method": method, "classifier": "model", "n": len(y), "seconds": found.seconds,
        "certified_and_broken": broken}}
    if curve:
        grid = [p["eps"] for p in curve]
        for point, c in zip(curve, cert.bound_curve(model, x, y, threat, grid, method)):
            if c["certified_accuracy"] > point["robust_accuracy"] + 1e-12:
                raise RuntimeError(f"at eps {point['eps']:g} {method} certified {c['certified_accuracy']:.4f} of the "
                                   f"points but the attacks left only {point['robust_accuracy']:.4f}: the bound is "
                                   "unsound (a bug in armor.certify: please report it with the model)")
            point["certified_accuracy"] = c["certified_accuracy"]
    if robust is not None:
        out["certificate"]["gap"] = float(robust.double().mean()) - found.accuracy
    return out


def certify_default(model: nn.Module, input_shape: Sequence[int]) -> tuple[Optional[str], str]:
    """What ``armor evaluate --certify auto`` does: ``("crown-ibp", why)`` for a model bound propagation can
    bound, ``(None, why not)`` otherwise.

    CROWN-IBP as the default: the cascade IBP -> CROWN-IBP takes about a second per hundred points on armor's
    small models and is tight for certifiably trained ones; full CROWN is tighter on undefended models but costs
    about a second per uncertified point on a 28x28 small-cnn (ask for it with --certify crown); smoothing
    certifies another classifier and needs 100000 forward passes per point.
    """
    from ..certify import chain

    try:
        chain(model, input_shape)
    except ValueError as e:
        return None, f"no certified bound: {e}"
    return "crown-ibp", "certified lower bound: crown-ibp (IBP, then CROWN-IBP on the points IBP left)"


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
                suite: Union[str, Sequence[str], None] = None, progress: Progress = None,
                threads: ThreadsArg = None, device: Any = None, **kwargs: Any) -> tuple[dict, dict]:
    """:func:`measure` for a run directory: its model, its dataset's test split, its threat model by default,
    the suite and measurements its dataset's domain asks for.

    ``threads``: a thread count or ``"auto"`` (:func:`armor.threads.use_threads` for the run's model and the
    points per attack call) for the duration of the call; ``None`` leaves torch's thread count alone. The choice
    goes to ``progress.info``. ``device``: where the model runs (default: where it loads, the CPU).
    """
    run = RunDir(run_dir)
    model = run.model() if device is None else run.model().to(device)
    test = run.dataset("test", dataset, data_dir)
    threat = run.threat(norm, eps)
    if kwargs.get("certify") == "smoothing":
        smoothing = dict(kwargs.get("smoothing") or {})
        if smoothing.get("sigma") is None:  # the sigma a gaussian / smoothadv run trained with
            smoothing["sigma"] = ((run.metadata.get("recipe") or {}).get("params") or {}).get("sigma")
        kwargs["smoothing"] = smoothing
    name = dataset or run.dataset_name
    per_call = min(len(test) if n is None else min(n, len(test)), kwargs.get("batch_size", 500))
    setting = use_threads(threads, model, batch=per_call) if threads is not None else contextlib.nullcontext()
    with setting:
        if isinstance(setting, use_threads) and isinstance(progress, MeasureProgress):
            progress.info(setting.choice.describe())
        entry, art = measure(model, test, threat, suite=suite or default_suite_for(name),
                             measurements=measurements_for(name), n=n, progress=progress, **kwargs)
    entry.update(run.info())
    entry["threat"] = run.threat_spec(norm, eps)
    entry["test_split"] = getattr(test, "split_source", None) or f"the test split of {name}"
    return entry, art
