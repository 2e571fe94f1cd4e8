"""`armor train`: a typed function (:func:`train_command`) and its typer registration.

The CLI calls :func:`build_typer_command` on the main app. This module also runs on its own
(``python -m armor.app.train_cli --dataset digits ...``), which the resume and DDP tests use.
"""

import inspect
import os
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

from .config import (FIELD_TYPES, FIELDS, RUNTIME_KEYS, TrainConfig, read_config_file, recipe_options,
                     resolve_config)


def model_hint(dataset: Optional[str], model: Optional[str] = None, data_dir: Optional[str] = None) -> Any:
    """The architecture ``armor train`` would build for ``dataset`` (``model``, or the dataset's default), with
    untrained weights, built from the dataset's test split: what the ``auto`` thread policy sizes a command by
    before the real model exists. ``None`` if that fails (the command itself then reports why)."""
    if not dataset:
        return None
    try:
        from ..data import dataset_spec, load_dataset
        from ..models import build_model, model_spec

        ds = load_dataset(dataset, "test", data_dir=data_dir)
        return build_model(model_spec(model or dataset_spec(dataset).default_model, ds))
    except Exception:  # a missing file or a bad option: the training run reports it properly
        return None


def _use_threads(threads: Any, cfg: TrainConfig, report: Optional[Callable[[str], None]]) -> None:
    from ..threads import AUTO, parse_threads, use_threads

    value = parse_threads(threads)
    model = model_hint(cfg.dataset, cfg.model, cfg.data_dir) if value == AUTO else None
    world = max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    chosen = use_threads(value, model, batch=max(1, cfg.batch_size // world))  # this process's share of a batch
    if report is not None:
        report(chosen.choice.describe())


def train_command(*, config: Optional[Path] = None, resume: Optional[Path] = None, threads: Any = None,
                  report: Optional[Callable[[str], None]] = None, **options: Any) -> Path:
    """Train (or resume) a run and return its directory.

    Arguments:
        config: a TOML (or JSON) file of options; explicit ``options`` override it.
        resume: a run directory to continue. Its ``config.toml`` is the base configuration; options given
            here must agree with it (only ``quiet``, ``checkpoint_every`` and ``device`` may change).
        threads: torch's thread count for the run: a positive int or ``"auto"`` (:mod:`armor.threads`, sized by
            the architecture the configuration builds); ``None`` leaves it alone. ``report`` hears the choice.
        options: any :class:`armor.app.config.TrainConfig` field (``None`` = not given).
    Returns:
        The run directory.
    """
    from ..training.checkpoint import CONFIG
    from .config import train

    if threads is not None:
        from ..threads import parse_threads

        parse_threads(threads)  # a bad value fails before anything is read
    unknown = sorted(set(options) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; valid options: {', '.join(FIELDS)}")
    if resume is not None:
        resume = Path(resume)
        saved_path = resume / CONFIG
        if not saved_path.exists():
            raise ValueError(f"{resume} has no {CONFIG}: it is not a run directory written by `armor train`")
        saved = read_config_file(saved_path)
        given = {**(read_config_file(config) if config is not None else {}),
                 **{k: v for k, v in options.items() if v is not None}}
        requested = resolve_config({**saved, **given})
        base = TrainConfig(**saved).to_dict()
        diffs = [f"{k}: {base[k]!r} -> {v!r}" for k, v in requested.to_dict().items()
                 if k not in RUNTIME_KEYS and base[k] != v]
        if diffs:
            raise ValueError(f"cannot resume {resume} with a different configuration ({'; '.join(diffs)}); "
                             f"drop those options, or start a new run with another --out")
        requested.out = str(resume)
        if threads is not None:
            _use_threads(threads, requested, report)
        train(requested, resume=True)
        return resume
    cfg = resolve_config(options, config)
    if cfg.out is None:
        raise ValueError("pass --out DIR (or `out` in the config file): the run directory for weights, "
                         "metrics and checkpoints")
    if threads is not None:
        _use_threads(threads, cfg, report)
    train(cfg)
    return Path(cfg.out)


# Help of the options that are not recipe parameters (those come from the recipes' declarations); the defaults
# shown come from TrainConfig.
HELP = {
    "dataset": "Dataset (see `armor list datasets`).",
    "data_dir": "Directory (or file) holding the dataset.",
    "n_train": "Train on a seeded random subset of N training examples.",
    "model": "Architecture (see `armor list models`); default per dataset.",
    "normalize": "Put the training data's mean/std into the model's Normalize layer.",
    "norm": "Threat norm: linf, l2 or l1.",
    "eps": "Threat radius in the dataset's eps unit (`armor list datasets`): input units for images (data in [0, 1]), standard deviations per feature for tables; the same unit at evaluation time.",
    "recipe": "Training recipe (see `armor list recipes`); the recipe options below say which recipes take them.",
    "eps_warmup": "Ramp eps linearly from 0 over the first K epochs.",
    "epochs": "Epochs.",
    "batch_size": "Global batch size (split across processes under torchrun).",
    "optimizer": "sgd, adam or adamw.",
    "lr": "Peak learning rate (sgd 0.1, adam 1e-3).",
    "momentum": "SGD momentum.",
    "weight_decay": "Weight decay (sgd 5e-4, adam 0).",
    "lr_schedule": None,  # generated: the recipes' default schedules
    "seed": "Seed: weights, validation split, data order, attacks.",
    "val_fraction": "Share of the training data held out for robust validation.",
    "val_steps": "PGD steps of the per-epoch robust validation (0: clean only).",
    "patience": "Early stopping: epochs without a better validation score.",
    "ema_decay": "Keep an exponential moving average of the weights with this decay (e.g. 0.999; against robust "
                 "overfitting): the average is validated, saved and returned. Default: off.",
    "max_grad_norm": "Clip the gradient's l2 norm to this before every optimizer step (ART's FBF clips to 0.5). "
                     "Default: off.",
    "checkpoint_every": "Also save the resumable state every N batches.",
    "out": "Run directory.",
    "device": "cpu, cuda or auto.",
    "quiet": "No progress bar.",
}
ONLY_FLAG = ("quiet",)  # bool options without a --no-... form


def _schedule_help() -> str:
    from ..training.recipes import all_recipes
    from ..training.trainer import SCHEDULES

    by: dict[str, list[str]] = {}
    for name, cls in all_recipes().items():
        by.setdefault(cls.default_schedule, []).append(name)
    usual = max(by, key=lambda s: len(by[s]))
    defaults = [f"{', '.join(names)}: {s}" for s, names in by.items() if s != usual] + [f"otherwise {usual}"]
    return f"Learning-rate schedule: {', '.join(SCHEDULES)}. Default per recipe ({'; '.join(defaults)})."


def option_parameters() -> list[inspect.Parameter]:
    """The typer parameters of `armor train`: one per TrainConfig field (the recipe options with the help their
    recipes declare), then --config and --resume."""
    import typer
    from rich.markup import escape

    recipe_opts = recipe_options()
    defaults = TrainConfig()
    out = []
    for key in FIELDS:
        kind, flag = FIELD_TYPES[key], "--" + key.replace("_", "-")
        decls = (flag if key in ONLY_FLAG else f"{flag}/--no-{flag[2:]}",) if kind is bool else ()
        if key in recipe_opts:  # defaults differ per recipe: the help text names them
            info = typer.Option(*decls, help=escape(recipe_opts[key].help()), show_default=False)
        else:
            default = getattr(defaults, key)
            text = HELP[key] if HELP[key] is not None else _schedule_help()
            if default is not None and not (kind is bool and key in ONLY_FLAG):
                shown = (flag[2:] if default else f"no-{flag[2:]}") if kind is bool else default
                text += f" [default: {shown}]"  # escaped below: typer's show_default would need a real default
            info = typer.Option(*decls, help=escape(text), show_default=False)
        out.append(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=None,
                                     annotation=Annotated[Optional[kind], info]))
    out.append(inspect.Parameter("domain", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[str], typer.Option(help=escape("Train with a domain's own workflow instead of a classifier on "
                                                "--dataset, e.g. --domain agents --env CartPole-v1 (see `armor list "
                                                "demos`); its options follow."))]))
    for key, opt in workflow_options().items():
        out.append(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[opt.type], typer.Option("--" + key.replace("_", "-"), help=escape(opt.help),
                                             show_default=False)]))
    out.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[Path], typer.Option(help="TOML file with any of these options (explicit options win).")]))
    out.append(inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[Path], typer.Option(help="Resume the run in this directory (killed runs continue bit-exactly).")]))
    out.append(threads_parameter())
    return out


THREADS_HELP = ("CPU threads for torch: a positive number, or auto (one thread for small models, which lose "
                "time at every operation's barrier; for large ones, one per CPU that other processes leave idle; "
                "see armor.threads).")


def workflow_options() -> dict[str, Any]:
    """The options every installed workflow domain adds to `armor train` (those not already TrainConfig's)."""
    from ..plugins import domains

    out: dict[str, Any] = {}
    for domain in domains().values():
        if domain.workflow is not None:
            out.update({k: v for k, v in domain.workflow.options.items() if k not in FIELDS and k not in out})
    return out


def workflow_gates() -> dict[str, tuple[str, list[str]]]:
    """`armor check --min-GATE` options of the installed workflow domains: gate -> (results.json key, domains).
    ``robust-accuracy`` is the core gate already; a gate two domains name with different keys is an error."""
    from ..plugins import domains

    out: dict[str, tuple[str, list[str]]] = {}
    for domain in domains().values():
        for gate, key in (domain.workflow.gates.items() if domain.workflow is not None else ()):
            if gate == "robust-accuracy" and key == "robust_accuracy":
                continue
            if gate in out and out[gate][0] != key:
                raise ValueError(f"gate --min-{gate} means {out[gate][0]!r} for {', '.join(out[gate][1])} and "
                                 f"{key!r} for {domain.name}: rename one of them")
            out.setdefault(gate, (key, []))[1].append(domain.name)
    return out


# What every workflow domain's training takes from the classifier options; a workflow adds more with its
# ``shared`` (the rest does not apply to it).
WORKFLOW_SHARED = ("recipe", "eps", "norm", "seed", "out", "quiet", "steps", "step_size", "adv_ratio")


def train_workflow(domain: Optional[str], options: dict[str, Any], resume: Optional[Path]) -> Optional[Path]:
    """Dispatch `armor train` to a domain's workflow (``--domain``, or ``--resume`` of a run it wrote); ``None``
    when this is a classifier run. Options that do not apply either way are errors naming them."""
    import json

    from ..plugins import workflow_of
    from .rundir import writable_dir

    extra = {k: options.pop(k) for k in list(options) if k in workflow_options()}
    if domain is None and resume is not None and (Path(resume) / "metadata.json").exists():
        try:
            domain = json.loads((Path(resume) / "metadata.json").read_text()).get("domain")
        except (OSError, ValueError):
            domain = None
    if domain is None:
        given = sorted(k for k, v in extra.items() if v is not None)
        if given:
            raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in given)} belong to a domain workflow: "
                             "add --domain (e.g. --domain agents)")
        return None
    workflow = workflow_of(domain)
    if workflow is None:
        raise ValueError(f"domain {domain!r} has no training workflow of its own: train its datasets with "
                         "--dataset (see `armor list datasets`)")
    given = {k: v for k, v in options.items() if v is not None}
    takes = (*WORKFLOW_SHARED, *workflow.shared)
    foreign = sorted(set(given) - set(takes)) + sorted(k for k, v in extra.items()
                                                       if v is not None and k not in workflow.options)
    if foreign:
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in foreign)} do not apply to --domain "
                         f"{domain} (it takes {', '.join('--' + k.replace('_', '-') for k in takes)} "
                         f"and its own options)")
    out = Path(resume) if resume is not None else Path(given["out"]) if given.get("out") else None
    if out is None:
        raise ValueError("pass --out DIR: the run directory")
    writable_dir(out, "run")
    workflow.train({**given, **extra, "resume": resume is not None}, out, quiet=bool(given.get("quiet")))
    return out


def check_threads(value: Optional[str]) -> str:
    """typer callback of ``--threads``: ``auto`` or a positive integer, else a usage error naming both."""
    import typer

    from ..threads import parse_threads

    try:
        return str(parse_threads(value))
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def threads_parameter() -> inspect.Parameter:
    """``--threads N|auto`` (default auto, or $ARMOR_THREADS), the same on every compute command."""
    import typer

    return inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, default="auto", annotation=Annotated[
        str, typer.Option("--threads", envvar="ARMOR_THREADS", callback=check_threads, help=THREADS_HELP)])


def build_typer_command(app: Any) -> None:
    """Register `armor train` on a typer app; its options are generated from TrainConfig and the recipes'
    declared parameters (:func:`option_parameters`)."""
    import typer

    def train(**kwargs: Any) -> None:
        """Adversarially train a model; writes weights (safetensors), metadata, config and metrics to --out."""
        config, resume = kwargs.pop("config", None), kwargs.pop("resume", None)
        threads = kwargs.pop("threads", "auto")
        from rich.console import Console
        from rich.markup import escape

        from ..training import CheckpointError, NonFiniteLossError

        err = Console(stderr=True)
        quiet = bool(kwargs.get("quiet"))
        report = None if quiet or int(os.environ.get("RANK", "0")) != 0 else (
            lambda line: err.print(escape(line), style="dim", highlight=False))
        domain = kwargs.pop("domain", None)
        try:
            run_dir = train_workflow(domain, kwargs, resume)
            if run_dir is None:
                run_dir = train_command(config=config, resume=resume, threads=threads, report=report, **kwargs)
        except NonFiniteLossError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}")
            raise typer.Exit(1)
        except (ValueError, FileNotFoundError, CheckpointError) as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}")
            raise typer.Exit(2)
        if int(os.environ.get("RANK", "0")) == 0:
            Console().print(escape(f"wrote {run_dir}"))

    train.__signature__ = inspect.Signature(option_parameters())  # type: ignore[attr-defined]
    app.command("train")(train)


def _standalone() -> Any:
    import typer

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    build_typer_command(app)
    return app


if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses in the tests
    _standalone()()
