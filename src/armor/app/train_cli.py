"""`armor train`: a typed function (:func:`train_command`) and its typer registration.

The CLI calls :func:`build_typer_command` on the main app. This module also runs on its own
(``python -m armor.app.train_cli --dataset digits ...``), which the resume and DDP tests use.
"""

# No `from __future__ import annotations`: typer evaluates the Annotated options at definition time.

from pathlib import Path
from typing import Annotated, Any, Optional

from .config import FIELDS, RUNTIME_KEYS, TrainConfig, read_config_file, resolve_config


def train_command(*, config: Optional[Path] = None, resume: Optional[Path] = None, **options: Any) -> Path:
    """Train (or resume) a run and return its directory.

    Arguments:
        config: a TOML (or JSON) file of options; explicit ``options`` override it.
        resume: a run directory to continue. Its ``config.toml`` is the base configuration; options given
            here must agree with it (only ``quiet``, ``checkpoint_every`` and ``device`` may change).
        options: any :class:`armor.training.config.TrainConfig` field (``None`` = not given).
    Returns:
        The run directory.
    """
    from ..training.checkpoint import CONFIG
    from .config import train

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
        train(requested, resume=True)
        return resume
    cfg = resolve_config(options, config)
    if cfg.out is None:
        raise ValueError("pass --out DIR (or `out` in the config file): the run directory for weights, "
                         "metrics and checkpoints")
    train(cfg)
    return Path(cfg.out)


def build_typer_command(app: Any) -> None:
    """Register `armor train` on a typer app."""
    import typer

    d = TrainConfig()

    def opt(help: str, key: str) -> Any:
        default = getattr(d, key)
        suffix = "" if default is None else f" [default: {str(default).lower() if isinstance(default, bool) else default}]"
        return typer.Option(help=help + suffix, show_default=False)

    def train(
        dataset: Annotated[Optional[str], opt("Dataset (see `armor list datasets`).", "dataset")] = None,
        data_dir: Annotated[Optional[str], opt("Directory (or file) holding the dataset.", "data_dir")] = None,
        n_train: Annotated[Optional[int], opt("Train on a seeded random subset of N training images.", "n_train")] = None,
        model: Annotated[Optional[str], opt("Architecture (see `armor list models`); default per dataset.", "model")] = None,
        normalize: Annotated[Optional[bool], typer.Option("--normalize/--no-normalize", help="Put the training data's mean/std into the model's Normalize layer. [default: normalize]", show_default=False)] = None,
        norm: Annotated[Optional[str], opt("Threat norm: linf, l2 or l1.", "norm")] = None,
        eps: Annotated[Optional[float], opt("Threat radius in input units (data in [0, 1]).", "eps")] = None,
        recipe: Annotated[Optional[str], opt("Training recipe (see `armor list recipes`).", "recipe")] = None,
        adv_ratio: Annotated[Optional[float], opt("pgd-at/multi/awp: share of the loss from adversarial examples, in [0, 1] (pgd-at 0.5, awp 1.0).", "adv_ratio")] = None,
        beta: Annotated[Optional[float], opt("trades/mart: weight of the robustness term (6.0).", "beta")] = None,
        steps: Annotated[Optional[int], opt("Attack steps of PGD-based recipes (10).", "steps")] = None,
        step_size: Annotated[Optional[float], opt("Attack step size in units of eps (PGD 2.5/steps, fgsm-rs 1.25, n-fgsm 1, free-at 1).", "step_size")] = None,
        random_start: Annotated[Optional[bool], typer.Option("--random-start/--no-random-start", help="PGD attacks start uniformly inside the ball. [default: random-start]", show_default=False)] = None,
        fast_variant: Annotated[Optional[str], opt("fast-at: fgsm-rs (Wong et al. 2020) or n-fgsm (de Jorge et al. 2022).", "fast_variant")] = None,
        noise: Annotated[Optional[float], opt("fast-at n-fgsm: initial noise radius in units of eps (2).", "noise")] = None,
        replays: Annotated[Optional[int], opt("free-at: replays m per minibatch (4); epochs are divided by m.", "replays")] = None,
        awp_base: Annotated[Optional[str], opt("awp: base recipe, pgd-at, trades or mart (pgd-at).", "awp_base")] = None,
        awp_gamma: Annotated[Optional[float], opt("awp: relative weight perturbation gamma (5e-3).", "awp_gamma")] = None,
        awp_warmup: Annotated[Optional[int], opt("awp: epochs before the weight perturbation starts (1).", "awp_warmup")] = None,
        multi_threats: Annotated[Optional[str], opt("multi: threats as 'norm:eps[:attack]' separated by commas, e.g. 'linf:0.1,l2:1.0'.", "multi_threats")] = None,
        multi_mode: Annotated[Optional[str], opt("multi: max, avg or random (max).", "multi_mode")] = None,
        eps_warmup: Annotated[Optional[int], opt("Ramp eps linearly from 0 over the first K epochs.", "eps_warmup")] = None,
        epochs: Annotated[Optional[int], opt("Epochs.", "epochs")] = None,
        batch_size: Annotated[Optional[int], opt("Global batch size (split across processes under torchrun).", "batch_size")] = None,
        optimizer: Annotated[Optional[str], opt("sgd, adam or adamw.", "optimizer")] = None,
        lr: Annotated[Optional[float], opt("Peak learning rate (sgd 0.1, adam 1e-3).", "lr")] = None,
        momentum: Annotated[Optional[float], opt("SGD momentum.", "momentum")] = None,
        weight_decay: Annotated[Optional[float], opt("Weight decay (sgd 5e-4, adam 0).", "weight_decay")] = None,
        lr_schedule: Annotated[Optional[str], opt("constant, cosine, cyclic, onecycle or multistep (fast-at: cyclic, else cosine).", "lr_schedule")] = None,
        seed: Annotated[Optional[int], opt("Seed: weights, validation split, data order, attacks.", "seed")] = None,
        val_fraction: Annotated[Optional[float], opt("Share of the training data held out for robust validation.", "val_fraction")] = None,
        val_steps: Annotated[Optional[int], opt("PGD steps of the per-epoch robust validation (0: clean only).", "val_steps")] = None,
        patience: Annotated[Optional[int], opt("Early stopping: epochs without a better validation score.", "patience")] = None,
        checkpoint_every: Annotated[Optional[int], opt("Also save the resumable state every N batches.", "checkpoint_every")] = None,
        out: Annotated[Optional[str], opt("Run directory.", "out")] = None,
        device: Annotated[Optional[str], opt("cpu, cuda or auto.", "device")] = None,
        quiet: Annotated[Optional[bool], typer.Option("--quiet", help="No progress bar.", show_default=False)] = None,
        config: Annotated[Optional[Path], typer.Option(help="TOML file with any of these options (explicit options win).")] = None,
        resume: Annotated[Optional[Path], typer.Option(help="Resume the run in this directory (killed runs continue bit-exactly).")] = None,
    ) -> None:
        """Adversarially train a model; writes weights (safetensors), metadata, config and metrics to --out."""
        options = {k: v for k, v in locals().items() if k in FIELDS}
        from rich.console import Console

        from ..training import CheckpointError, NonFiniteLossError

        err = Console(stderr=True)
        try:
            run_dir = train_command(config=config, resume=resume, **options)
        except NonFiniteLossError as e:
            err.print(f"[bold red]error:[/] {e}")
            raise typer.Exit(1)
        except (ValueError, FileNotFoundError, CheckpointError) as e:
            err.print(f"[bold red]error:[/] {e}")
            raise typer.Exit(2)
        import os

        if int(os.environ.get("RANK", "0")) == 0:
            Console().print(f"wrote {run_dir}")

    app.command("train")(train)


def _standalone() -> Any:
    import typer

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    build_typer_command(app)
    return app


if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses in the tests
    _standalone()()
