"""The `armor` command line: a typer app whose commands are thin wrappers over the library."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="armor",
    help="armor: Adversarial Robustness: Measure, Optimize, Report.\n\n"
         "Attack models, harden them with adversarial training, measure worst-case robustness, and report it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error (no traceback) and exit."""
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


class What(str, Enum):
    attacks = "attacks"
    recipes = "recipes"
    datasets = "datasets"
    models = "models"
    suites = "suites"


class NormOpt(str, Enum):
    linf = "linf"
    l2 = "l2"
    l1 = "l1"


@app.command("list")
def list_cmd(what: Annotated[What, typer.Argument(help="What to list.")]) -> None:
    """List the available attacks, training recipes, datasets, models or evaluation suites."""
    rows: list[tuple[str, str]]
    if what is What.attacks:
        from .attacks import ATTACKS

        rows = [(n, f"{s.description} [norms: {', '.join(s.norms)}]") for n, s in ATTACKS.items()]
    elif what is What.suites:
        from .evaluate import SUITES

        rows = [(n, "; ".join(f"{norm}: {', '.join(a)}" for norm, a in s.items())) for n, s in SUITES.items()]
    elif what is What.datasets:
        from .data import list_datasets

        rows = list(list_datasets())
    elif what is What.models:
        from .models import list_models

        rows = list(list_models())
    else:
        from .training import list_recipes

        rows = list(list_recipes())
    table = Table(title=f"armor {what.value}", show_lines=False)
    table.add_column("name", style="bold cyan")
    table.add_column("description")
    for name, desc in rows:
        table.add_row(name, desc)
    console.print(table)


def _load_run(run_dir: Path):
    from .training import load, load_metadata

    try:
        model = load(run_dir)
        meta = load_metadata(run_dir)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    return model, meta


def _run_data(meta: dict, dataset: Optional[str], split: str, data_dir: Optional[Path], n: Optional[int]):
    from .data import load_dataset

    recorded = meta.get("dataset")
    if isinstance(recorded, dict):
        name, ddir = dataset or recorded.get("name"), data_dir or recorded.get("data_dir")
    else:
        name, ddir = dataset or recorded, data_dir
    if not name:
        fail("the run does not record its dataset: pass --dataset")
    try:
        ds = load_dataset(name, split, data_dir=ddir)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    if n is not None:
        ds = ds.subset(n)
    return ds


def _threat(meta: dict, norm: Optional[NormOpt], eps: Optional[float]):
    from .threat import ThreatModel

    base = meta.get("threat_model") or {}
    try:
        return ThreatModel(norm.value if norm else base.get("norm", "linf"),
                           eps if eps is not None else base.get("eps", 0.0),
                           tuple(base.get("bounds", (0.0, 1.0))))
    except ValueError as e:
        fail(str(e))


@app.command()
def attack(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `armor train`.")],
    attack_name: Annotated[str, typer.Option("--attack", "-a", help="Attack name (see `armor list attacks`).")] = "apgd-ce",
    norm: Annotated[Optional[NormOpt], typer.Option(help="Threat norm; defaults to the run's training norm.")] = None,
    eps: Annotated[Optional[float], typer.Option(help="Radius in input units; defaults to the run's training eps.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset; defaults to the run's.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Directory (or file) holding the dataset.")] = None,
    split: Annotated[str, typer.Option(help="Dataset split to attack.")] = "test",
    n: Annotated[Optional[int], typer.Option(help="Attack only the first N points.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the attack's generator.")] = 0,
    out: Annotated[Path, typer.Option(help="Output .npz with x, y, x_adv, pred_clean, pred_adv.")] = Path("adv.npz"),
) -> None:
    """Generate adversarial examples for a trained model and save them as .npz for other tools."""
    import io

    import numpy as np
    import torch

    from .attacks import get_attack
    from .utils import atomic_write_bytes

    model, meta = _load_run(run_dir)
    ds = _run_data(meta, dataset, split, data_dir, n)
    threat = _threat(meta, norm, eps)
    try:
        fn = get_attack(attack_name)
        x_adv = fn(model, ds.x, ds.y, threat, generator=torch.Generator().manual_seed(seed))
    except ValueError as e:
        fail(str(e))
    with torch.no_grad():
        pred_clean, pred_adv = model(ds.x).argmax(1), model(x_adv).argmax(1)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=ds.x.numpy(), y=ds.y.numpy(), x_adv=x_adv.numpy(), pred_clean=pred_clean.numpy(),
                        pred_adv=pred_adv.numpy())
    atomic_write_bytes(out, buf.getvalue())
    clean = (pred_clean == ds.y).float().mean().item()
    adv = (pred_adv == ds.y).float().mean().item()
    console.print(f"{attack_name} on {len(ds)} points, {threat!r}: accuracy {clean:.1%} -> {adv:.1%}; wrote {out}")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `armor train`.")],
    suite: Annotated[str, typer.Option(help="'standard', 'fast', or comma-separated attack names.")] = "standard",
    norm: Annotated[Optional[NormOpt], typer.Option(help="Threat norm; defaults to the run's training norm.")] = None,
    eps: Annotated[Optional[float], typer.Option(help="Radius in input units; defaults to the run's training eps.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset; defaults to the run's.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Directory (or file) holding the dataset.")] = None,
    n: Annotated[Optional[int], typer.Option(help="Evaluate the first N test points.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Points per attack call.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed for the attacks.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Directory for results.json (default RUN_DIR/eval).")] = None,
    resume: Annotated[bool, typer.Option(help="Checkpoint into OUT/eval.state and resume from it.")] = True,
) -> None:
    """Worst-case robust accuracy over an attack ensemble; writes OUT/results.json."""
    from .evaluate import evaluate as run_eval
    from .utils import atomic_write_json

    model, meta = _load_run(run_dir)
    ds = _run_data(meta, dataset, "test", data_dir, n)
    threat = _threat(meta, norm, eps)
    out = out or run_dir / "eval"
    try:
        result = run_eval(model, ds.tensors(), threat, suite=suite, batch_size=batch_size, seed=seed,
                          state_path=out / "eval.state" if resume else None)
    except ValueError as e:
        fail(str(e))
    atomic_write_json(out / "results.json", {"armor_version": _version(), **result.to_dict()})
    _print_eval(result)
    console.print(f"wrote {out / 'results.json'}")


def _version() -> str:
    from . import __version__

    return __version__


def _print_eval(result) -> None:
    table = Table(title=f"worst-case evaluation, n={result.n}, {result.threat_model['norm']} eps={result.threat_model['eps']}")
    table.add_column("attack")
    table.add_column("accuracy", justify="right")
    table.add_column("cumulative", justify="right")
    table.add_column("points", justify="right")
    table.add_column("seconds", justify="right")
    table.add_row("clean", f"{result.clean_accuracy:.2%}", "", str(result.n), "")
    for name, rec in result.per_attack.items():
        own = "" if rec.get("accuracy") is None else f"{rec['accuracy']:.2%}"
        table.add_row(name, own, f"{rec['cumulative_accuracy']:.2%}", str(rec["n"]), f"{rec['seconds']:.1f}")
    table.add_row("[bold]worst case[/]", f"[bold]{result.robust_accuracy:.2%}[/]", "", "", f"{result.seconds:.1f}")
    console.print(table)



@app.command()
def check(
    results: Annotated[Path, typer.Argument(help="A results.json (or a directory holding one).")],
    min_robust_accuracy: Annotated[Optional[float], typer.Option(help="Fail below this worst-case robust accuracy (0..1).")] = None,
    max_clean_drop: Annotated[Optional[float], typer.Option(help="Fail if clean accuracy fell more than this below the baseline (0..1).")] = None,
    baseline: Annotated[Optional[Path], typer.Option(help="Baseline (standard model) results.json for --max-clean-drop.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Which model of a multi-model results file to gate (default: the hardened one).")] = None,
) -> None:
    """CI gate: exit 1, naming the figure, when robust accuracy or the clean-accuracy drop misses its bound."""
    from .results import check as run_check, load_results

    if min_robust_accuracy is None and max_clean_drop is None:
        fail("nothing to check: pass --min-robust-accuracy and/or --max-clean-drop")
    for v, flag in ((min_robust_accuracy, "--min-robust-accuracy"), (max_clean_drop, "--max-clean-drop")):
        if v is not None and not 0 <= v <= 1:
            fail(f"{flag} must be a fraction in [0, 1], got {v}")
    try:
        data = load_results(results)
        base = load_results(baseline) if baseline else None
        failures = run_check(data, min_robust_accuracy, max_clean_drop, base, model)
    except ValueError as e:
        fail(str(e))
    if failures:
        for f in failures:
            err.print(f"[bold red]FAIL[/] {f}")
        raise typer.Exit(1)
    console.print("[bold green]PASS[/] all robustness gates hold")


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (with eval/results.json) or results.json files.")],
    out: Annotated[Path, typer.Option(help="Output HTML file.")] = Path("report.html"),
    title: Annotated[str, typer.Option(help="Report title.")] = "armor robustness report",
) -> None:
    """Compare several evaluated models side by side in one self-contained HTML file."""
    from .report import write_report
    from .results import load_results, models_of, stamp

    models: dict = {}
    artifacts: dict = {}
    claims = None
    for run in runs:
        path = run / "eval" / "results.json" if (run / "eval" / "results.json").exists() else run
        try:
            data = load_results(path)
        except ValueError as e:
            fail(str(e))
        claims = claims or data.get("claims")
        res_dir = path if path.is_dir() else path.parent
        for name, entry in models_of(data).items():
            label = name if "models" in data else (entry.get("name") or run.name)
            if label in models:
                label = f"{label} ({run})"
            models[label] = entry
            art = _load_artifacts(res_dir / "artifacts.npz", name if "models" in data else None)
            if art:
                artifacts[label] = art
    write_report(stamp({"models": models, "claims": claims}), out, artifacts, title)
    console.print(f"wrote {out} ({len(models)} model{'s' if len(models) != 1 else ''})")


def _load_artifacts(path: Path, prefix: Optional[str]) -> dict:
    """Image artifacts saved next to results.json (saliency, gallery); keys are 'model/field' in multi-model files."""
    import numpy as np

    if not path.exists():
        return {}
    with np.load(path) as z:
        items = {k: z[k] for k in z.files}
    if prefix is not None:
        items = {k.split("/", 1)[1]: v for k, v in items.items() if k.startswith(prefix + "/")}
    if "alignment" in items:
        items["alignment"] = float(items["alignment"])
    return items


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
