"""Domains as plug-ins: how images, tables (and next agents, text, recommenders) extend armor.

The library (threat models, attacks, the evaluator, training, metrics) knows no domain. A domain is one
:class:`Domain` value that contributes named things to the library's registries: datasets, models, attacks,
suites, recipes, constraint decoders, measurements, report sections and demos. Domains are found through the
``armor.domains`` entry-point group (armor's own ``vision`` and ``tabular`` are declared in its
``pyproject.toml``; a third-party package declares its own), or registered at run time with :func:`register`.
Nothing is loaded or changed when ``import armor`` runs: the entry points are read on the first lookup.

A minimal domain (see ``tests/test_plugins.py`` for a working one)::

    from armor.plugins import DatasetSpec, Domain

    DOMAIN = Domain(
        name="toy",
        description="two Gaussian blobs",
        datasets={"blobs": DatasetSpec(load_blobs, "2-D blobs in [0, 1], 2 classes")},
    )

    # pyproject.toml of the package that ships it:
    # [project.entry-points."armor.domains"]
    # toy = "toy_package:DOMAIN"

Every field but ``name`` is optional. What each one plugs into:

=================  ==========================================================================================
``datasets``       ``armor.data.load_dataset`` and ``armor train --dataset`` (:class:`DatasetSpec`)
``models``         ``armor.models.build_model`` (name -> (``nn.Module`` class, description))
``attacks``        ``armor.attacks.get_attack`` and suites (name -> :class:`armor.attacks.AttackSpec`)
``suites``         ``armor.evaluate(suite=...)`` (name -> {norm: [attack names]})
``recipes``        ``armor.training.make_recipe`` and ``armor train --recipe`` (name -> Recipe class)
``constraints``    ``ThreatModel.from_dict`` (kind -> decoder of the ``constraints`` dict a threat saved)
``measurements``   ``armor evaluate`` extras (:class:`Measurement`), run when the dataset's domain is this one
``report``         HTML sections of ``armor report`` (:class:`ReportSection`)
``demos``          ``armor demo --dataset NAME`` (name -> ``run(out, seed=, quiet=, say=) -> results dict``)
``workflow``       `armor train --domain NAME` and `armor evaluate RUN` for models that are not classifiers of
                   a dataset (:class:`Workflow`: agents in environments, measured in returns)
=================  ==========================================================================================

A domain whose sample is not a tensor in a box (an RL episode, a token sequence) uses the same interface: a
:class:`Workflow` trains and measures its runs (the run directory, results.json, `armor report` and `armor check`
stay the application's), its ``report`` sections carry its own figures (returns instead of accuracy), and the
library parts it does not use (the image metrics) are simply not referenced.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

ENTRY_POINT_GROUP = "armor.domains"


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset a domain contributes.

    Arguments:
        loader: ``loader(split, data_dir=None, **options) -> armor.data.Dataset`` (split is "train" or "test").
        description: one line for ``armor list datasets``.
        default_model: the architecture ``armor train`` builds when ``--model`` is not given.
        threat: ``threat(norm, eps, data_dir) -> ThreatModel``: how ``--norm/--eps`` become a threat model for
            this dataset, at training and at evaluation time alike (tabular: per-feature budgets of ``eps``
            standard deviations with the schema's constraints). ``None``: ``ThreatModel(norm, eps)``, eps in
            input units.
        eps_unit: what ``--eps`` means for this dataset, shown in help texts and reports.
        model_options: ``model_options(train_dataset, data_dir) -> dict`` of extra model-spec entries (e.g. the
            normalisation statistics a schema fixes); ``None``: the training data's mean/std.
        default_suite: the evaluation suite for this dataset's threats (``None``: "standard").
    """

    loader: Callable[..., Any]
    description: str = ""
    default_model: str = "mlp"
    threat: Optional[Callable[..., Any]] = None
    eps_unit: str = "input units"
    model_options: Optional[Callable[..., dict]] = None
    default_suite: Optional[str] = None


@dataclass(frozen=True)
class Measurement:
    """An extra measurement ``armor evaluate`` runs for a domain's datasets.

    ``fn(model, x, y, threat, *, x_adv, seed, batch_size) -> (fields, artifacts)``: ``fields`` are merged into the
    model's results.json entry, ``artifacts`` (arrays) into its ``artifacts.npz``. ``option`` names the
    ``measure()`` switch that turns it off (e.g. "shift", "interpret").
    """

    name: str
    fn: Callable[..., tuple[dict, dict]]
    option: Optional[str] = None


@dataclass(frozen=True)
class ReportSection:
    """An HTML section a domain adds to ``armor report``.

    ``context(models, artifacts) -> dict or None``: what the section needs from the results (``None``: the
    section is left out, e.g. no model carries the domain's figures). ``template``: Jinja2 source rendered with
    that context, autoescaped, with the report's helpers ``pct``, ``num``, ``secs`` and ``pp``; ``id`` and
    ``title`` name the section and its link in the report's navigation.
    """

    id: str
    title: str
    template: str
    context: Callable[[dict, dict], Optional[dict]]


@dataclass(frozen=True)
class Option:
    """A command-line option a workflow adds to `armor train` / `armor evaluate` (``--name-with-dashes``)."""

    type: type
    default: Any
    help: str


@dataclass(frozen=True)
class Workflow:
    """How a domain trains and measures when its models are not classifiers of a dataset: an agent acting in an
    environment, measured in episodes and returns.

    Arguments:
        train: ``train(options, out, *, quiet) -> None`` writes a run directory whose ``metadata.json`` holds
            ``"domain": <name>``; ``options`` are the given `armor train` options (recipe, eps, norm, seed and the
            workflow's own), ``None`` for those not given.
        evaluate: ``evaluate(run_dir, options, *, progress) -> (entry, artifacts)``: one results.json entry (with
            ``"domain": <name>``, ``threat`` and ``n``) and the report's arrays.
        options: the workflow's own options (`armor train --domain NAME --help` lists them).
        validate: ``validate(name, entry, where)`` raises ``ValueError`` for a damaged entry of this domain.
        gates: what `armor check --min-FIGURE` may gate on: gate name -> entry key of a figure where higher is
            better, e.g. ``{"robust-return": "robust_return"}``.
        shared: the classifier options of `armor train` this workflow also takes, beyond recipe, eps, norm, seed,
            out and quiet (e.g. ``("epochs", "batch_size", "lr", "dataset", "model")``); any other is refused.
        summary: ``summary(models) -> (title, columns, rows)``: the table `armor evaluate` and `armor demo` print
            for ``{name: entry}`` of this domain (rows of strings, one per model); ``None``: a generic table of
            the gated figures.
    """

    train: Callable[..., Any]
    evaluate: Callable[..., tuple[dict, dict]]
    options: Mapping[str, Option] = field(default_factory=dict)
    validate: Optional[Callable[[str, dict, str], None]] = None
    gates: Mapping[str, str] = field(default_factory=dict)
    shared: Sequence[str] = ()
    summary: Optional[Callable[[dict], tuple[str, list[str], list[list[str]]]]] = None


@dataclass(frozen=True)
class Domain:
    """What one domain contributes; see the module docstring for where each field plugs in."""

    name: str
    description: str = ""
    datasets: Mapping[str, DatasetSpec] = field(default_factory=dict)
    models: Mapping[str, tuple[type, str]] = field(default_factory=dict)
    attacks: Mapping[str, Any] = field(default_factory=dict)
    suites: Mapping[str, Mapping[str, Sequence[str]]] = field(default_factory=dict)
    recipes: Mapping[str, type] = field(default_factory=dict)
    constraints: Mapping[str, Callable[[dict], Any]] = field(default_factory=dict)
    measurements: Sequence[Measurement] = ()
    report: Sequence[ReportSection] = ()
    demos: Mapping[str, Callable[..., dict]] = field(default_factory=dict)
    workflow: Optional[Workflow] = None


_discovered: Optional[dict[str, Domain]] = None
_registered: dict[str, Domain] = {}


def _discover() -> dict[str, Domain]:
    global _discovered
    if _discovered is None:
        from importlib.metadata import entry_points

        found: dict[str, Domain] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            domain = ep.load()
            if not isinstance(domain, Domain):
                raise TypeError(f"entry point {ep.name!r} ({ep.value}) of group {ENTRY_POINT_GROUP!r} must be an "
                                f"armor.plugins.Domain, got {type(domain).__name__}")
            found[domain.name] = domain
        _discovered = found
    return _discovered


def domains() -> dict[str, Domain]:
    """Every domain: those installed through entry points, then those registered at run time."""
    return {**_discover(), **_registered}


def register(domain: Domain) -> None:
    """Add a domain at run time (its names must not clash with what is already there)."""
    if not isinstance(domain, Domain):
        raise TypeError(f"register() takes an armor.plugins.Domain, got {type(domain).__name__}")
    if domain.name in domains():
        raise ValueError(f"a domain called {domain.name!r} is already registered")
    from .attacks import ATTACKS
    from .data import DATASETS
    from .evaluate import SUITES
    from .models import MODELS
    from .training.recipes import RECIPES

    core = {"attacks": ATTACKS, "datasets": DATASETS, "suites": SUITES, "models": MODELS, "recipes": RECIPES}
    _registered[domain.name] = domain
    try:
        for kind in ("datasets", "models", "attacks", "suites", "recipes", "constraints", "demos"):
            contributions(kind, core.get(kind))  # fail now, naming the clash, rather than at the first lookup
    except ValueError:
        del _registered[domain.name]
        raise


def unregister(name: str) -> None:
    """Remove a domain added with :func:`register`."""
    if name not in _registered:
        raise ValueError(f"no domain {name!r} was registered at run time")
    del _registered[name]


@contextmanager
def registered(domain: Domain) -> Iterator[Domain]:
    """``with registered(domain): ...``: the domain is known inside the block only (tests, notebooks)."""
    register(domain)
    try:
        yield domain
    finally:
        unregister(domain.name)


def contributions(kind: str, core: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """``core`` entries of ``kind`` ("attacks", "datasets", ...) plus every domain's; a name two places define
    is an error that names both."""
    merged: dict[str, Any] = dict(core or {})
    origin = {name: "armor" for name in merged}
    for domain in domains().values():
        for name, value in getattr(domain, kind).items():
            if name in merged:
                raise ValueError(f"{kind[:-1]} {name!r} is defined by both {origin[name]!r} and domain "
                                 f"{domain.name!r}: rename one of them")
            merged[name], origin[name] = value, domain.name
    return merged


def lazy(target: str, *args: Any, description: str = "") -> Callable[..., Any]:
    """A callable that imports ``"package.module:function"`` on its first call and calls it with ``args`` first:
    how a domain names its demo (or any heavy, application-level code) without importing it up front.
    ``description`` is what `armor list demos` shows for it (default: the domain's description)."""
    module, _, attr = target.partition(":")

    def call(*more: Any, **kwargs: Any) -> Any:
        from importlib import import_module

        return getattr(import_module(module), attr)(*args, *more, **kwargs)

    call.__name__ = attr
    call.__qualname__ = f"lazy({target!r})"
    call.description = description  # type: ignore[attr-defined]
    return call


def workflow_of(name: Optional[str]) -> Optional[Workflow]:
    """The workflow of domain ``name`` (``None`` if there is no such domain or it has none)."""
    domain = domains().get(name) if name else None
    return domain.workflow if domain is not None else None


def domain_of_dataset(dataset: str) -> Optional[Domain]:
    """The domain that contributes dataset ``dataset`` (``None`` if none does)."""
    for domain in domains().values():
        if dataset in domain.datasets:
            return domain
    return None


__all__ = ["DatasetSpec", "Domain", "ENTRY_POINT_GROUP", "Measurement", "Option", "ReportSection", "Workflow", "contributions", "domain_of_dataset",
           "domains", "lazy", "workflow_of", "register", "registered", "unregister"]
