"""The run configuration behind `armor train`: one flat set of options, from the CLI or a TOML file.

Every CLI option is a key of :class:`TrainConfig` (dashes or underscores both work in TOML). The options that
set recipe parameters are not written here: :class:`TrainConfig`'s fields for them, which recipes take which
(:func:`recipe_options`), the CLI options and their help all come from the parameters the recipes declare
(:meth:`armor.training.recipes.Recipe.declared_params`), armor's and the installed domains' alike. (A domain
registered at run time after this module was imported can use the existing option keys, not add new ones.)

The resolved configuration is stored in the run directory as ``config.toml``, so ``armor train --config
RUN/config.toml`` repeats a run. :func:`train` turns a configuration into a trained run directory.
"""

from __future__ import annotations

import dataclasses
import json
import typing
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

# Keys that say how to run, not what to train: they may differ between a run and its resume.
RUNTIME_KEYS = ("out", "resume", "quiet", "config", "checkpoint_every", "device")


@dataclass
class RecipeOption:
    """One `armor train` option that sets a recipe parameter, as the recipes declare it
    (:meth:`armor.training.recipes.Recipe.declared_params`).

    ``key`` is the TrainConfig field, config.toml key and ``--key`` option; ``params`` maps each recipe that
    takes it to its declaration (whose ``name`` is the recipe's own argument, e.g. ``fast_variant`` -> ``variant``).
    """

    key: str
    type: type
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def recipes(self) -> tuple[str, ...]:
        return tuple(self.params)

    def help(self) -> str:
        """Per recipe (recipes that declare it alike share a sentence): what it does and its default."""
        groups: dict[str, list[str]] = {}
        for recipe, p in self.params.items():
            groups.setdefault(p.describe(), []).append(recipe)
        return " ".join(f"{', '.join(recipes)}: {text}." for text, recipes in groups.items())


def recipe_options() -> dict[str, RecipeOption]:
    """Every recipe option, from the declared parameters of :func:`armor.training.recipes.all_recipes` (armor's
    recipes and those the domains contribute)."""
    from ..training.recipes import all_recipes

    options: dict[str, RecipeOption] = {}
    for recipe, cls in all_recipes().items():
        for p in cls.declared_params():
            option = options.setdefault(p.config_key, RecipeOption(p.config_key, p.type))
            if option.type is not p.type:
                raise TypeError(f"recipe option {p.config_key!r} is a {option.type.__name__} for "
                                f"{', '.join(option.recipes)} but a {p.type.__name__} for {recipe}: give one of "
                                f"them another config_key")
            option.params[recipe] = p
    return options


@dataclass
class _Options:
    """The options that are not recipe parameters; :class:`TrainConfig` adds those after ``recipe``."""

    # data and model
    dataset: str = "digits"
    data_dir: Optional[str] = None
    n_train: Optional[int] = None
    model: Optional[str] = None
    normalize: bool = True
    # threat model
    norm: str = "linf"
    eps: float = 0.1
    # recipe (its parameters follow here in TrainConfig)
    recipe: str = "pgd-at"
    eps_warmup: int = 0
    # optimisation
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: Optional[float] = None
    momentum: float = 0.9
    weight_decay: Optional[float] = None
    lr_schedule: Optional[str] = None
    seed: int = 0
    # validation, early stopping, checkpoints
    val_fraction: float = 0.1
    val_steps: int = 10
    patience: Optional[int] = None
    ema_decay: Optional[float] = None
    max_grad_norm: Optional[float] = None
    checkpoint_every: Optional[int] = None
    # running
    out: Optional[str] = None
    device: str = "auto"
    quiet: bool = False


class _TrainConfigMethods:
    recipe: str

    def recipe_params(self) -> dict[str, Any]:
        """The recipe's parameters; an option given for a recipe that does not take it is an error."""
        params: dict[str, Any] = {}
        for key, option in recipe_options().items():
            value = getattr(self, key, None)
            if value is None:
                continue
            if self.recipe not in option.params:
                raise ValueError(f"option {key.replace('_', '-')} does not apply to recipe {self.recipe!r} "
                                 f"(it is for {', '.join(option.recipes)})")
            params[option.params[self.recipe].name] = value
        return params

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _make_train_config() -> type:
    hints = typing.get_type_hints(_Options)
    static = [(f.name, hints[f.name], field(default=f.default)) for f in dataclasses.fields(_Options)]
    options = recipe_options()
    clash = sorted(set(options) & {name for name, _, _ in static})
    if clash:
        raise TypeError(f"recipe parameter(s) {', '.join(clash)} clash with `armor train` options of the same "
                        f"name: declare them with another config_key")
    generated = [(key, Optional[option.type], field(default=None)) for key, option in options.items()]
    at = [name for name, _, _ in static].index("recipe") + 1
    return dataclasses.make_dataclass(
        "TrainConfig", static[:at] + generated + static[at:], bases=(_TrainConfigMethods,),
        namespace={"__module__": __name__, "__doc__": (
            "Everything `armor train` accepts. ``None`` means \"the default of the recipe / optimizer / dataset\".\n\n"
            "    The fields after ``recipe`` up to ``eps_warmup`` are the recipes' parameters, generated from their "
            "declarations (:func:`recipe_options`).\n    ")})


TrainConfig = _make_train_config()
FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# The type of each field without Optional: bool, int, float or str.
FIELD_TYPES: dict[str, type] = {
    name: next((a for a in typing.get_args(t) if a is not type(None)), t)
    for name, t in typing.get_type_hints(TrainConfig).items() if name in FIELDS}


def _coerce(key: str, value: Any) -> Any:
    """Check a config value against the field's type (TOML gives ints for floats like `eps = 1`)."""
    kind = FIELD_TYPES[key]
    if value is None:
        return None
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value) and key in recipe_options():
        value = ",".join(value)  # a list-valued recipe option (multi_threats) written as a TOML array
    if not isinstance(value, str):
        raise ValueError(f"config key {key!r} must be a string, got {value!r}")
    return value


def config_from_mapping(mapping: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """Normalise keys (dashes -> underscores), reject unknown ones, and type-check the values."""
    out: dict[str, Any] = {}
    for raw_key, value in mapping.items():
        key = raw_key.replace("-", "_")
        if key not in FIELDS:
            close = [k for k in FIELDS if key in k or k in key]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"{where}: unknown option {raw_key!r}{hint}; valid options: {', '.join(FIELDS)}")
        if isinstance(value, dict):
            raise ValueError(f"{where}: option {raw_key!r} must be a value, not a table")
        out[key] = _coerce(key, value)
    return out


def read_config_file(path: Union[str, Path]) -> dict[str, Any]:
    """Read a TOML (or JSON) config file into a dict of validated options."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a table of options")
    return config_from_mapping(data, str(path))


def resolve_config(options: dict[str, Any], config_file: Union[str, Path, None] = None) -> TrainConfig:
    """Defaults < config file < explicit options (those not ``None``)."""
    merged: dict[str, Any] = {}
    if config_file is not None:
        merged.update(read_config_file(config_file))
    merged.update(config_from_mapping({k: v for k, v in options.items() if v is not None}, "options"))
    return TrainConfig(**merged)


def normalization_stats(x) -> tuple[list[float], list[float]]:
    """Mean and std of the training inputs, per channel for images and per feature for tables."""
    if x.dim() == 4:
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3))
    else:
        flat = x.reshape(x.shape[0], -1)
        mean, std = flat.mean(dim=0), flat.std(dim=0)
    # A constant feature would divide by zero, and a nearly constant one would turn a tiny eps into a huge
    # step in the model's units: floor the std.
    return mean.tolist(), std.clamp_min(0.05).tolist()


def train(config: Union[TrainConfig, dict[str, Any]], *, resume: bool = False):
    """Train a model as `armor train` does: load the dataset, build the model, run the :class:`Trainer`.

    The dataset's domain decides what ``eps`` means (:attr:`armor.plugins.DatasetSpec.threat`): input units
    for images, standard deviations per feature for tables. The run records the exact threat it built in
    its metadata, so that ``armor evaluate RUN`` evaluates that threat.

    Arguments:
        config: a :class:`TrainConfig` (or a dict of its fields). ``config.out`` is the run directory.
        resume: continue the run in ``config.out`` (its saved state must match this configuration).
    Returns:
        The :class:`~armor.training.trainer.TrainResult`.
    """
    import os

    import torch

    from ..data import dataset_spec, load_dataset
    from ..models import build_model, model_spec
    from ..training import Trainer
    from .rundir import build_threat, writable_dir

    if isinstance(config, dict):
        config = TrainConfig(**config_from_mapping(config))
    recipe_params = config.recipe_params()
    if config.out is None:
        raise ValueError("pass --out DIR: the run directory for weights, metrics and checkpoints")
    device = resolve_device(config.device)
    writable_dir(config.out, "run")  # before any data is loaded or any epoch is spent
    spec = dataset_spec(config.dataset)
    ds = load_dataset(config.dataset, "train", data_dir=config.data_dir, seed=config.seed)
    if config.n_train is not None:
        if config.n_train < 1:
            raise ValueError(f"n_train must be >= 1, got {config.n_train}")
        # A seeded random subset: the first n could follow the file's class order.
        g = torch.Generator().manual_seed(config.seed)
        ds = ds.subset(torch.randperm(len(ds), generator=g)[:config.n_train].sort().values)
    threat = build_threat(config.dataset, config.norm, config.eps, config.data_dir)
    name = config.model or spec.default_model
    if spec.model_options is not None:
        extra = spec.model_options(ds, config.data_dir)
    elif config.normalize:
        mean, std = normalization_stats(ds.x)
        extra = {"mean": mean, "std": std}
    else:
        extra = {}
    torch.manual_seed(config.seed)  # the weight initialisation
    model = build_model(model_spec(name, ds, **extra))
    info = {"dataset": {"name": config.dataset, "data_dir": config.data_dir, "n_train": config.n_train,
                        "split": "train"},
            "threat": {"norm": config.norm, "eps": config.eps, "eps_unit": spec.eps_unit}}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and device == "cuda":
        device = None  # the trainer picks cuda:LOCAL_RANK
    trainer = Trainer(model, ds, recipe=config.recipe, recipe_params=recipe_params, threat=threat,
                      epochs=config.epochs, batch_size=config.batch_size, optimizer=config.optimizer, lr=config.lr,
                      momentum=config.momentum, weight_decay=config.weight_decay, lr_schedule=config.lr_schedule,
                      seed=config.seed, out_dir=config.out, val_fraction=config.val_fraction,
                      val_steps=config.val_steps, patience=config.patience, ema_decay=config.ema_decay,
                      max_grad_norm=config.max_grad_norm, eps_warmup=config.eps_warmup,
                      checkpoint_every=config.checkpoint_every, resume=resume, quiet=config.quiet, info=info,
                      config=config.to_dict(), device=device)
    return trainer.fit()


def resolve_device(name: str) -> str:
    """``auto`` -> cuda if available else cpu; anything torch does not know, or a GPU that is not there, is a
    ``ValueError`` naming the choices."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(name).type
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported for training: use cpu, cuda, cuda:N or auto")
    return name


def train_or_reuse(config: TrainConfig, before: Optional[Callable[[str], None]] = None) -> str:
    """Train into ``config.out``, unless it already holds this very run: a finished one is reused, a killed one
    resumed (what a demo run twice needs). A run there with another configuration is an error, never replaced.

    Arguments:
        before: called with ``"training"`` or ``"resuming"`` just before that work starts (not when reused),
            e.g. to announce it.

    Returns:
        ``"trained"``, ``"reused"`` or ``"resumed"``.
    """
    from ..training.checkpoint import CONFIG, STATE, WEIGHTS, load_metadata

    def announce(what: str) -> None:
        if before is not None:
            before(what)

    out = Path(config.out)
    if not (out / CONFIG).exists():
        announce("training")
        train(config)
        return "trained"
    saved = TrainConfig(**read_config_file(out / CONFIG)).to_dict()
    diffs = [f"{k}: {saved[k]!r} -> {v!r}" for k, v in config.to_dict().items()
             if k not in RUNTIME_KEYS and saved.get(k) != v]
    if diffs:
        raise ValueError(f"{out} already holds a run with another configuration ({'; '.join(diffs)}): choose "
                         "another --out, or delete that directory")
    status = load_metadata(out).get("status") if (out / "metadata.json").exists() else None
    if status in ("finished", "early_stopped") and (out / WEIGHTS["best"]).exists():
        return "reused"
    if (out / STATE).exists():
        announce("resuming")
        train(config, resume=True)
        return "resumed"
    announce("training")
    train(config)
    return "trained"
