"""The `armor` command line: a typer app whose commands are thin wrappers over the library."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
import inspect
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
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
err = Console(stderr=True, soft_wrap=True)  # long paths in errors stay on one line


@app.callback()
def _setup() -> None:
    """armor: Adversarial Robustness: Measure, Optimize, Report."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        err.print(f"[bold yellow]warning:[/] {escape(str(message))}")

    warnings.showwarning = show  # library warnings (vacuous eps, probability outputs) as one readable line


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error (no traceback) and exit."""
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


class What(str, Enum):
    attacks = "attacks"
    recipes = "recipes"
    datasets = "datasets"
    models = "models"
    suites = "suites"
    demos = "demos"


class NormOpt(str, Enum):
    linf = "linf"
    l2 = "l2"
    l1 = "l1"


@app.command("list")
def list_cmd(what: Annotated[What, typer.Argument(help="What to list.")]) -> None:
    """List the available attacks, training recipes, datasets, models, evaluation suites or demos."""
    rows: list[tuple[str, str]]
    if what is What.attacks:
        from ..attacks import all_attacks

        rows = [(n, f"{s.description} [norms: {', '.join(s.norms)}]") for n, s in all_attacks().items()]
    elif what is What.suites:
        from ..evaluate import all_suites

        rows = [(n, "; ".join(f"{norm}: {', '.join(a)}" for norm, a in s.items())) for n, s in all_suites().items()]
    elif what is What.datasets:
        from ..data import all_datasets

        rows = [(n, f"{s.description} [eps in {s.eps_unit}]") for n, s in all_datasets().items()]
    elif what is What.demos:
        from ..plugins import domains

        rows = [(n, f"{d.name} domain: {getattr(fn, 'description', '') or d.description}")
                for d in domains().values() for n, fn in d.demos.items()]
    elif what is What.models:
        from ..models import list_models

        rows = list(list_models())
    else:
        from ..training import list_recipes

        rows = list(list_recipes())
    table = Table(title=f"armor {what.value}", show_lines=False)
    table.add_column("name", style="bold cyan")
    table.add_column("description")
    for name, desc in rows:
        table.add_row(escape(name), escape(desc))
    console.print(table)


def _register_train() -> None:
    from .train_cli import build_typer_command

    build_typer_command(app)


_register_train()


def _run(run_dir: Path):
    from ..training import CheckpointError
    from .rundir import RunDir

    run = RunDir(run_dir)
    try:
        status = run.metadata.get("status")
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        fail(str(e))
    if status == "diverged":
        err.print(f"[bold yellow]warning:[/] {escape(str(run_dir))} diverged during training; its best checkpoint "
                  "is measured, which may not be the model you meant (see its metadata.json message)")
    elif status == "running":
        err.print(f"[bold yellow]warning:[/] {escape(str(run_dir))} is still training or was killed: its best "
                  f"checkpoint so far is measured (finish it with `armor train --resume {escape(str(run_dir))}`)")
    return run


def _check_n(n: Optional[int]) -> None:
    if n is not None and n < 1:
        fail(f"--n must be a positive number of points, got {n}")


def _out(check, path: Path, *args):
    try:
        return check(path, *args)
    except ValueError as e:
        fail(str(e))


# ---------------------------------------------------------------------------------------------- threads
from .train_cli import THREADS_HELP, check_threads, model_hint, workflow_gates  # noqa: E402

ThreadsOpt = Annotated[str, typer.Option("--threads", envvar="ARMOR_THREADS", callback=check_threads,
                                         help=THREADS_HELP)]


DeviceOpt = Annotated[str, typer.Option("--device", help="Where the model runs: cpu, cuda (under torchrun: each "
                                         "process's own GPU), cuda:N or mps. An unavailable device is an error.")]


def _device(spec: str):
    """``--device``, checked (:func:`armor.shard.resolve_device`)."""
    from ..shard import resolve_device

    try:
        return resolve_device(spec)
    except ValueError as e:
        fail(f"--device: {e}")


class _WorkerDone(Exception):
    """A torchrun process other than rank 0 has done its share of the worst case; rank 0 does the rest."""


def _sharded_evaluator(states: list[Path]):
    """The worst case sharded over torchrun's processes (:func:`armor.shard.evaluate_sharded`) for
    :func:`armor.app.measure.measure`: rank 0 goes on to the curve, calibration and masking checks and writes
    results.json; the other processes stop with :class:`_WorkerDone`. Every process's state file is added to
    ``states``, for rank 0 to remove once all is measured (until then a restart resumes every process)."""
    from ..shard import all_state_files, evaluate_sharded, world

    def evaluator(*args, **kwargs):
        result = evaluate_sharded(*args, **kwargs)
        if world()[0] != 0:
            raise _WorkerDone
        if result.state_file is not None:
            states.extend(all_state_files(result.state_file))
        return result

    return evaluator


def _threads(threads: str, model, display: "_Display", batch: Optional[int] = None) -> None:
    """Apply ``--threads`` for ``model`` on ``batch`` points per call (see :mod:`armor.threads`) and say what was
    chosen."""
    from ..threads import use_threads

    display.line(use_threads(threads, model, batch=batch).choice.describe())


# ---------------------------------------------------------------------------------------------- progress
def _hms(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _Display:
    """Progress on stderr: live rich bars on a terminal, a few plain lines otherwise (at most one per attack
    and per 30 s), nothing when quiet. Bars count points through an attack's batches, with the points left
    and an estimate of the time remaining (from the points per second so far in this attack)."""

    LOG_EVERY = 30.0

    def __init__(self, quiet: bool = False, console: Console = err) -> None:
        self.quiet, self.console = quiet, console
        self.live = not quiet and console.is_terminal
        self._p = None
        self._bars: dict[str, dict] = {}
        self._stage = None

    def __enter__(self) -> "_Display":
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24),
                               TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=self.console)
            self._p.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)
            self._p = None

    def line(self, text: str) -> None:
        """A dim line of information above the bars."""
        if not self.quiet:
            (self._p.console if self._p is not None else self.console).print(escape(text), style="dim",
                                                                              highlight=False)

    def stage(self, name: str, index: int, total: int) -> None:
        """A stage of ``total`` starts; the previous one is marked done with its time."""
        import time

        self._end_stage()
        label = f"[{index}/{total}] {name}"
        if self._p is not None:
            task = self._p.add_task(f"[bold]{escape(label)}[/]", total=None, detail="")
            self._stage = (task, time.perf_counter())
        elif not self.quiet:
            self.console.print(escape(f"{label}..."), style="dim", highlight=False)

    def _end_stage(self) -> None:
        import time

        if self._stage is not None and self._p is not None:
            task, t0 = self._stage
            self._p.update(task, total=1, completed=1, detail=f"done in {time.perf_counter() - t0:.1f} s")
        self._stage = None

    def start_points(self, key: str, label: str, n_points: int, n_batches: int, done: int, batch_size: int,
                     unit: str = "points") -> None:
        """A bar over ``n_points`` points in ``n_batches`` batches, ``done`` of which ran before (a resume);
        ``unit``: what is counted (points; anything else is counted in steps of one, without batches)."""
        import time

        now = time.perf_counter()
        first = min(done * batch_size, n_points)
        bar = {"label": label, "n": n_points, "batches": n_batches, "bs": batch_size, "t0": now, "first": first,
               "logged": now, "unit": unit}
        if self._p is not None:
            bar["task"] = self._p.add_task(f"  {escape(label)}", total=max(n_points, 1),
                                           completed=first if n_points else 1,
                                           detail=escape(self._detail(bar, done, now)))
        elif not self.quiet:
            what = (f"{n_points:,} points in {n_batches} batch{'es' if n_batches != 1 else ''}"
                    if unit == "points" else f"{n_points} {unit}")
            self.console.print(escape(f"  {label}: {what}" + (f" (resuming after batch {done})" if done else "")),
                               highlight=False)
        self._bars[key] = bar
        if n_batches == 0 or done >= n_batches:
            self.end_points(key)

    def _detail(self, bar: dict, batch: int, now: float) -> str:
        done = min(batch * bar["bs"], bar["n"])
        left = bar["n"] - done
        text = (f"batch {batch}/{bar['batches']}, " if bar["unit"] == "points" else "") + \
            f"{done:,}/{bar['n']:,} {bar['unit']}, {left:,} left"
        ran, spent = done - bar["first"], now - bar["t0"]
        if left and ran > 0 and spent > 0:
            text += f", ETA {_hms(left * spent / ran)}"
        return text

    def advance_points(self, key: str, batch: int) -> None:
        """Batch ``batch`` (from 1) of the bar ``key`` is done."""
        import time

        bar = self._bars.get(key)
        if bar is None:
            return
        now = time.perf_counter()
        detail = self._detail(bar, batch, now)
        if self._p is not None:
            self._p.update(bar["task"], completed=min(batch * bar["bs"], bar["n"]), detail=escape(detail))
        elif not self.quiet and now - bar["logged"] >= self.LOG_EVERY and batch < bar["batches"]:
            self.console.print(escape(f"  {bar['label']}: {detail}"), highlight=False)
            bar["logged"] = now
        if batch >= bar["batches"]:
            self.end_points(key)

    def end_points(self, key: str) -> None:
        import time

        bar = self._bars.pop(key, None)
        if bar is None:
            return
        took = time.perf_counter() - bar["t0"]
        if self._p is not None:
            self._p.update(bar["task"], completed=max(bar["n"], 1),
                           detail=escape(f"{bar['n']:,} {bar['unit']}, done in {took:.1f} s"))
        elif not self.quiet:
            self.console.print(escape(f"  {bar['label']}: done in {took:.1f} s"), highlight=False)

    def close(self) -> None:
        self._end_stage()


def _eval_progress(display: _Display, batch_size: int):
    """The :class:`~armor.app.measure.MeasureProgress` that drives ``display`` for `armor evaluate`."""
    from .measure import MeasureProgress

    class EvalProgress(MeasureProgress):
        def stage(self, name: str, index: int, total: int) -> None:
            display.stage(name, index, total)

        def attack_start(self, name: str, n_points: int, n_batches: int, done: int) -> None:
            display.start_points("attack", name, n_points, n_batches, done, batch_size)

        def attack_batch(self, name: str, batch: int, n_batches: int) -> None:
            display.advance_points("attack", batch)

        def curve_point(self, eps: float, index: int, total: int) -> None:
            if index == 1:
                display.start_points("curve", "curve", total, total, 0, 1, unit="eps budgets")
            display.advance_points("curve", index)

        def info(self, message: str) -> None:
            display.line(message)

    return EvalProgress()


@app.command()
def attack(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `armor train`.")],
    attack_name: Annotated[str, typer.Option("--attack", "-a", help="Attack name (see `armor list attacks`).")] = "apgd-ce",
    norm: Annotated[Optional[NormOpt], typer.Option(help="Threat norm; defaults to the run's training norm.")] = None,
    eps: Annotated[Optional[float], typer.Option(help="Radius in the dataset's eps unit (input units for images, standard deviations for tables); defaults to the run's training threat.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset; defaults to the run's.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Directory (or file) holding the dataset.")] = None,
    split: Annotated[str, typer.Option(help="Dataset split to attack.")] = "test",
    n: Annotated[Optional[int], typer.Option("--n", "-n", help="Attack only the first N points.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the attack's generator.")] = 0,
    out: Annotated[Path, typer.Option(help="Output .npz with x, y, x_adv, pred_clean, pred_adv.")] = Path("adv.npz"),
    batch_size: Annotated[int, typer.Option(help="Points per attack call.")] = 500,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress display.")] = False,
) -> None:
    """Generate adversarial examples for a trained model and save them as .npz for other tools."""
    import io

    import numpy as np

    from ..attacks import get_attack
    from ..engine import attack_dataset, predict_logits
    from ..utils import atomic_write_bytes

    from .rundir import writable_file

    _check_n(n)
    if batch_size < 1:
        fail(f"--batch-size must be a positive number of points, got {batch_size}")
    _out(writable_file, out, "adversarial examples", "adv.npz")
    dev = _device(device)
    run = _run(run_dir)
    with _Display(quiet) as display:
        try:
            model = run.model().to(dev)
            ds = run.dataset(split, dataset, str(data_dir) if data_dir else None)
            ds = ds if n is None else ds.subset(n)
            threat = run.threat(norm.value if norm else None, eps)
            attack_fn = get_attack(attack_name)
            _threads(threads, model, display, batch=min(len(ds), batch_size))
            n_batches = (len(ds) + batch_size - 1) // batch_size
            display.start_points("attack", attack_name, len(ds), n_batches, 0, batch_size)
            x_adv = attack_dataset(model, attack_fn, ds.x, ds.y, threat, batch_size=batch_size, seed=seed,
                                   name=attack_name,
                                   progress=lambda done, total: display.advance_points("attack", done))
        except (FileNotFoundError, ValueError) as e:
            fail(str(e))
    pred_clean = predict_logits(model, ds.x, batch_size).argmax(1).cpu()
    pred_adv = predict_logits(model, x_adv, batch_size).argmax(1).cpu()
    buf = io.BytesIO()
    np.savez_compressed(buf, x=ds.x.numpy(), y=ds.y.numpy(), x_adv=x_adv.numpy(), pred_clean=pred_clean.numpy(),
                        pred_adv=pred_adv.numpy())
    atomic_write_bytes(out, buf.getvalue())
    clean = (pred_clean == ds.y).float().mean().item()
    adv = (pred_adv == ds.y).float().mean().item()
    console.print(escape(f"{attack_name} on {len(ds)} points, {threat!r}: accuracy {clean:.1%} -> {adv:.1%}; "
                         f"wrote {out}"))


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `armor train`.")],
    suite: Annotated[Optional[str], typer.Option(help="A suite (see `armor list suites`) or comma-separated attack names (default: the one the dataset's domain asks for; standard for images, tabular for tables).")] = None,
    norm: Annotated[Optional[NormOpt], typer.Option(help="Threat norm; defaults to the run's training norm.")] = None,
    eps: Annotated[Optional[float], typer.Option(help="Radius in the dataset's eps unit (input units for images, standard deviations for tables); defaults to the run's training threat.")] = None,
    eps_grid: Annotated[Optional[str], typer.Option(help="Comma-separated eps values for the accuracy-vs-eps curve (default: 0 to 2x eps).")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset; defaults to the run's.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Directory (or file) holding the dataset.")] = None,
    n: Annotated[Optional[int], typer.Option("--n", "-n", help="Evaluate the first N test points (agents: N episodes, default 10). Under torchrun (Python < 3.12) write -n: torchrun takes --n for one of its own options.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Points per attack call.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed for the attacks.")] = 0,
    extras: Annotated[bool, typer.Option(help="Also measure the curve, calibration, shift, saliency and masking checks.")] = True,
    out: Annotated[Optional[Path], typer.Option(help="Directory for results.json (default RUN_DIR/eval).")] = None,
    resume: Annotated[bool, typer.Option(help="Checkpoint the worst-case evaluation in OUT (one state per model, data, threat and seed) and resume a killed run from it.")] = True,
    certify: Annotated[str, typer.Option(help="Certified lower bound next to the attacked upper bound: auto (crown-ibp for models bound propagation supports, mlp and small-cnn; none otherwise), none, ibp, crown-ibp, crown (tightest, about 1 s per uncertified 28x28 point) or smoothing (randomized smoothing: certifies the smoothed classifier, not the model).")] = "auto",
    sigma: Annotated[Optional[float], typer.Option(help="--certify smoothing: noise level (default: the sigma the run trained with).")] = None,
    smoothing_n: Annotated[int, typer.Option(help="--certify smoothing: noise samples per point (Cohen et al.: 100000; n0 = 100, alpha = 0.001).")] = 100_000,
    adaptive: Annotated[bool, typer.Option(help="When a masking flag fires, escalate with adaptive attacks (EOT for random outputs, BPDA through non-differentiable layers, transfer from a surrogate) and report the worst case over suite and escalation; --no-adaptive reports the suite's number.")] = True,
    bpda: Annotated[Optional[list[str]], typer.Option("--bpda", metavar="MODULE", help="A non-differentiable submodule (its name in model.named_modules()) to attack through with BPDA, besides those armor finds; repeatable. Naming one escalates even without a masking flag.")] = None,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress display.")] = False,
) -> None:
    """Worst-case robust accuracy over an attack ensemble, plus curve, calibration, shift and masking checks.

    Writes OUT/results.json (and OUT/artifacts.npz with the images the report draws). Under
    `torchrun --nproc_per_node N -m armor evaluate ...` the worst case is sharded over the N processes (gloo on
    the CPU, nccl with --device cuda) with exactly one process's result; rank 0 measures the rest and writes.
    """
    from ..utils import atomic_write_json
    from .measure import add_cost, measure_run
    from .results import stamp
    from .rundir import save_artifacts, writable_dir

    grid = None
    if eps_grid is not None:
        try:
            grid = [float(v) for v in eps_grid.split(",") if v.strip()]
        except ValueError:
            fail(f"--eps-grid must be comma-separated numbers, got {eps_grid!r}")
        if any(v < 0 for v in grid):
            fail(f"--eps-grid has negative values ({', '.join(str(v) for v in grid if v < 0)}): eps is a radius, use values >= 0")
        if not grid:
            fail("--eps-grid is empty")
    _check_n(n)
    if batch_size < 1:
        fail(f"--batch-size must be a positive number of points, got {batch_size}")
    from .measure import CERTIFY_METHODS

    if certify not in ("auto", "none") + CERTIFY_METHODS:
        fail(f"--certify must be one of auto, none, {', '.join(CERTIFY_METHODS)}, got {certify!r}")
    if smoothing_n < 1:
        fail(f"--smoothing-n must be a positive number of samples, got {smoothing_n}")
    if sigma is not None and not sigma > 0:
        fail(f"--sigma must be > 0 (the noise's standard deviation in input units), got {sigma}")
    if bpda and not adaptive:
        fail("--bpda asks for an adaptive escalation and --no-adaptive turns it off: pass one of them")
    dev = _device(device)
    out = _out(writable_dir, out or run_dir / "eval", "evaluation")
    run = _run(run_dir)
    from ..shard import close, init_from_env, launched_by_torchrun, world

    if run.metadata.get("domain") is not None:  # a workflow domain's run (agents: episodes and returns)
        if launched_by_torchrun():
            fail(f"torchrun shards the worst case of classifier runs; {run_dir} is a {run.metadata['domain']} run: "
                 "evaluate it with plain `armor evaluate`")
        if bpda or not adaptive:
            fail(f"--bpda and --no-adaptive apply to classifier runs; {run_dir} is a {run.metadata['domain']} run")
        _evaluate_workflow(run, out, {"eps": eps, "norm": norm.value if norm else None, "n": n if n != 1000 else None,
                                      "seed": seed, "suite": suite, "eps_grid": grid, "curve": extras}, quiet)
        return
    created = init_from_env(dev)
    try:
        if world()[0] != 0:
            quiet = True
        _evaluate_classifier(run_dir, run, out, dev, quiet, certify, dict(
            norm=norm.value if norm else None, eps=eps, dataset=dataset, data_dir=str(data_dir) if data_dir else None,
            n=n, suite=suite, eps_grid=grid, batch_size=batch_size, seed=seed, calibration=extras, shift=extras,
            interpret=extras, masking=extras, state_path=out if resume else None, threads=threads,
            smoothing={"sigma": sigma, "n": smoothing_n}, adaptive=adaptive, bpda_modules=tuple(bpda or ())))
    finally:
        if created:
            close()


def _evaluate_classifier(run_dir: Path, run, out: Path, dev, quiet: bool, certify: str, options: dict) -> None:
    """`armor evaluate` of a classifier run: measure it (sharded under torchrun), write results.json on rank 0."""
    from ..shard import launched_by_torchrun
    from ..utils import atomic_write_json
    from .measure import add_cost, measure_run
    from .results import stamp
    from .rundir import save_artifacts

    with _Display(quiet) as display:
        try:
            method = None if certify == "none" else certify
            if certify == "auto":
                from .measure import certify_default

                model = run.model()
                method, why = certify_default(model, getattr(model, "input_shape", None) or
                                              run.metadata["architecture"]["input_shape"])
                display.line(why)
            states: list[Path] = []
            if launched_by_torchrun():
                options["evaluator"] = _sharded_evaluator(states)
            entry, art = measure_run(run_dir, progress=_eval_progress(display, options["batch_size"]),
                                     certify=method, device=dev, **options)
        except _WorkerDone:  # another process's share is done; rank 0 writes
            return
        except (FileNotFoundError, ValueError) as e:
            fail(str(e))
        display.close()
    for path in states:
        path.unlink(missing_ok=True)
    add_cost({entry["name"]: entry})
    atomic_write_json(out / "results.json", stamp(entry))
    if art:
        save_artifacts(out / "artifacts.npz", {entry["name"]: art})
    _print_eval(entry)
    for f in entry.get("masking_flags", []):
        err.print(f"[bold yellow]masking flag[/] {escape(f['name'])}: {escape(f['message'])}")
    if entry.get("adaptive"):
        from ..adaptive import Escalation

        console.print(escape(Escalation(**entry["adaptive"]).summary()))
    console.print(escape(f"wrote {out / 'results.json'}"))


def _evaluate_workflow(run, out: Path, options: dict, quiet: bool) -> None:
    from ..plugins import workflow_of
    from ..utils import atomic_write_json
    from .results import stamp
    from .rundir import save_artifacts

    domain = run.metadata["domain"]
    workflow = workflow_of(domain)
    if workflow is None:
        fail(f"{run.path} was trained by the {domain!r} domain, which is not installed here (pip install "
             f"'armor[{domain}]')")
    say = None if quiet else (lambda msg: err.print(escape(f"{msg}..."), style="dim"))
    try:
        entry, art = workflow.evaluate(run.path, options, progress=say)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    atomic_write_json(out / "results.json", stamp(entry))
    if art:
        save_artifacts(out / "artifacts.npz", {entry["name"]: art})
    _print_workflow(workflow, {entry["name"]: entry})
    console.print(escape(f"wrote {out / 'results.json'}"))


def _print_workflow(workflow, models: dict) -> None:
    """The table of a workflow domain's entries: the domain's own summary, else its gated figures."""
    if workflow.summary is not None:
        title, columns, rows = workflow.summary(models)
    else:
        keys = list(workflow.gates.items())
        title = f"{next(iter(models.values())).get('domain')}: {', '.join(models)}"
        columns = ["model", *[g for g, _ in keys]]
        rows = [[name, *[_fmt_figure(m.get(k)) for _, k in keys]] for name, m in models.items()]
    table = Table(title=escape(title))
    for i, col in enumerate(columns):
        table.add_column(escape(col), justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[escape(str(c)) for c in row])
    console.print(table)


def _fmt_figure(value) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def _print_eval(result: dict) -> None:
    from .results import threat_label

    table = Table(title=escape(f"worst-case evaluation, n={result['n']}, {threat_label(result)}"))
    table.add_column("attack")
    table.add_column("accuracy", justify="right")
    table.add_column("cumulative", justify="right")
    table.add_column("points", justify="right")
    table.add_column("seconds", justify="right")
    table.add_row("clean", f"{result['clean_accuracy']:.2%}", "", str(result['n']), "")
    for name, rec in result["per_attack"].items():
        own = "" if rec.get("accuracy") is None else f"{rec['accuracy']:.2%}"
        table.add_row(escape(name), own, f"{rec['cumulative_accuracy']:.2%}", str(rec["n"]), f"{rec['seconds']:.1f}")
    table.add_row("[bold]worst case[/]", f"[bold]{result['robust_accuracy']:.2%}[/]", "", "", f"{result['seconds']:.1f}")
    cert = result.get("certificate") or {}
    if result.get("certified_accuracy") is not None:
        whose = "" if cert.get("classifier", "model") == "model" else f", {cert['classifier']} classifier"
        table.add_row(escape(f"certified ({cert.get('method')}{whose})"), f"{result['certified_accuracy']:.2%}", "",
                      str(cert.get("n", "")), f"{cert.get('seconds', 0):.1f}")
    console.print(table)
    if result.get("certified_accuracy") is not None and cert.get("classifier", "model") == "model":
        console.print(escape(f"robust accuracy is between {result['certified_accuracy']:.2%} (certified, "
                             f"{cert.get('method')}) and {result['robust_accuracy']:.2%} (the strongest attack found): "
                             f"a gap of {(result['robust_accuracy'] - result['certified_accuracy']) * 100:.1f} points"))



@app.command()
def check(
    results: Annotated[Path, typer.Argument(help="A results.json (or a directory holding one).")],
    min_robust_accuracy: Annotated[Optional[float], typer.Option(help="Fail below this worst-case robust accuracy (0..1).")] = None,
    max_clean_drop: Annotated[Optional[float], typer.Option(help="Fail if clean accuracy fell more than this below the baseline (0..1).")] = None,
    baseline: Annotated[Optional[Path], typer.Option(help="Baseline (standard model) results.json for --max-clean-drop.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Which model of a multi-model results file to gate (default: the hardened one).")] = None,
    norm: Annotated[Optional[NormOpt], typer.Option(help="Fail unless the results were measured under this norm.")] = None,
    eps: Annotated[Optional[float], typer.Option(help="Fail unless the results were measured at this eps (in the dataset's eps unit).")] = None,
    min_certified_accuracy: Annotated[Optional[float], typer.Option(help="Fail below this certified accuracy (0..1), the lower bound `armor evaluate --certify` records.")] = None,
    **gate_floors: Optional[float],
) -> None:
    """CI gate: exit 1, naming model, threat, figure and bound, when a figure misses its bound; exit 2 when the
    results cannot be trusted (damaged, NaN, out of range) or the gate is misconfigured."""
    import math

    from .results import check as run_check, load_results

    gates = workflow_gates()
    floors = {gates[name.replace("_", "-")][0]: v for name, v in gate_floors.items() if v is not None}
    if min_robust_accuracy is None and max_clean_drop is None and min_certified_accuracy is None and not floors:
        fail("nothing to check: pass --min-robust-accuracy, --min-certified-accuracy, --max-clean-drop or a domain's "
             "gate (" + ", ".join(f"--min-{g}" for g in gates) + ")")
    for name, v in gate_floors.items():
        if v is not None and not math.isfinite(v):
            fail(f"--min-{name.replace('_', '-')} must be a finite number, got {v}")
    for v, flag in ((min_robust_accuracy, "--min-robust-accuracy"), (max_clean_drop, "--max-clean-drop"),
                    (min_certified_accuracy, "--min-certified-accuracy")):
        if v is not None and not (math.isfinite(v) and 0 <= v <= 1):
            fail(f"{flag} must be a fraction in [0, 1], got {v}")
    if eps is not None and not (math.isfinite(eps) and eps >= 0):
        fail(f"--eps must be a number >= 0, got {eps}")
    passes: list[str] = []
    try:
        data = load_results(results)
        base = load_results(baseline) if baseline else None
        failures = run_check(data, min_robust_accuracy, max_clean_drop, base, model,
                             norm=norm.value if norm else None, eps=eps, passes=passes,
                             floors={**({} if min_certified_accuracy is None
                                        else {"certified_accuracy": min_certified_accuracy}), **floors})
    except ValueError as e:
        fail(str(e))
    for line in passes:
        console.print(f"[bold green]PASS[/] {escape(line)}", soft_wrap=True)
    if failures:
        for f in failures:
            err.print(f"[bold red]FAIL[/] {escape(f)}")
        raise typer.Exit(1)


def _check_signature() -> inspect.Signature:
    """`armor check`'s options: the core ones, then ``--min-GATE`` for every gate of an installed workflow domain."""
    params = [p for p in inspect.signature(check, eval_str=True).parameters.values()
              if p.kind != inspect.Parameter.VAR_KEYWORD]
    for gate, (key, owners) in workflow_gates().items():
        params.append(inspect.Parameter(gate.replace("-", "_"), inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[Optional[float], typer.Option(
                                            "--min-" + gate, help=escape(f"{', '.join(owners)}: fail below this "
                                                                         f"{key.replace('_', ' ')}."))]))
    return inspect.Signature(params)


check.__signature__ = _check_signature()  # type: ignore[attr-defined]


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (with eval/results.json) or results.json files.")],
    out: Annotated[Path, typer.Option(help="Output HTML file.")] = Path("report.html"),
    title: Annotated[str, typer.Option(help="Report title.")] = "armor robustness report",
) -> None:
    """Compare several evaluated models side by side in one self-contained HTML file."""
    from .report import write_report
    from .results import load_results, models_of, stamp, threat_key, threat_label
    from .rundir import ARTIFACTS, load_artifacts

    from .rundir import writable_file

    _out(writable_file, out, "report", "report.html")
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
            art = load_artifacts(res_dir / ARTIFACTS, name if "models" in data else entry.get("name", name))
            if art:
                artifacts[label] = art
    by_threat: dict[str, list[str]] = {}
    for label, entry in models.items():
        by_threat.setdefault(threat_key(entry), []).append(f"{label} ({threat_label(entry)})")
    if len(by_threat) > 1:
        groups = "; ".join(", ".join(names) for names in by_threat.values())
        fail(f"these runs were measured under different threat models and cannot be compared side by side: "
             f"{groups}. Report each group separately, or re-evaluate them at the same --norm/--eps")
    write_report(stamp({"models": models, "claims": claims}), out, artifacts, title)
    console.print(escape(f"wrote {out} ({len(models)} model{'s' if len(models) != 1 else ''})"))


@app.command()
def demo(
    dataset: Annotated[Optional[str], typer.Option(help="Which demo (see `armor list demos`): digits (the default, ~3 min on 2 cores), fashion-mnist (bigger), breast-cancer or fraud (tabular), or a domain's demo by name.")] = None,
    domain: Annotated[Optional[str], typer.Option(help="A domain's demo instead (see `armor list demos`): a domain name runs its first demo (agents, tabular, ...), and a demo a domain names (driving) runs that one.")] = None,
    out: Annotated[Path, typer.Option(help="Output directory for runs, results.json and report.html.")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="Seed for training and attacks.")] = 0,
    quiet: Annotated[bool, typer.Option(help="No training progress bars.")] = False,
    threads: ThreadsOpt = "auto",
) -> None:
    """Train a standard and adversarially trained models, measure them, and write report.html + results.json."""
    import time

    from ..plugins import contributions

    demos = contributions("demos")
    dataset = _demo_name(dataset, domain, demos)
    from .rundir import writable_dir

    _out(writable_dir, out, "demo output")
    t0 = time.perf_counter()
    from ..threads import AUTO

    _threads(threads, model_hint(dataset) if threads == AUTO else None, _Display(quiet))
    try:
        results = demos[dataset](out, seed=seed, quiet=quiet, say=lambda m: err.print(escape(m), style="cyan"))
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    _print_demo(results)
    console.print(escape(f"\nwrote {out / 'report.html'} and {out / 'results.json'} in {time.perf_counter() - t0:.0f} s"))


def _demo_name(dataset: Optional[str], domain: Optional[str], demos: dict) -> str:
    """The demo `armor demo --dataset/--domain` asks for: a demo by name, or a domain's first demo."""
    if dataset is not None and domain is not None:
        fail("give --dataset or --domain, not both: --domain runs a domain's demo, --dataset a demo by name")
    if domain is not None:
        from ..plugins import domains

        found = domains().get(domain)
        if found is not None and found.demos:
            return next(iter(found.demos))
        if domain in demos:
            return domain
        named = sorted(n for n, d in domains().items() if d.demos)
        fail(f"no domain or demo called {domain!r}: choose a domain ({', '.join(named)}) or a demo "
             f"({', '.join(demos)}); see `armor list demos`")
    dataset = dataset or "digits"
    if dataset not in demos:
        fail(f"no demo called {dataset!r}: choose one of {', '.join(demos)} (see `armor list demos`)")
    return dataset


def _print_demo(results: dict) -> None:
    models = results["models"]
    domain = next((m["domain"] for m in models.values() if m.get("domain")), None)
    if domain is not None:  # a workflow domain's demo (agents, text, ...): its own table
        from ..plugins import workflow_of

        _print_workflow(workflow_of(domain), models)
        return
    from .results import threat_label

    table = Table(title=escape(f"armor demo on {results.get('dataset')}, threat model "
                               f"{threat_label(next(iter(models.values())))}"))
    for col in ("model", "clean", "robust (worst case)", "ECE", "shift acc.", "train s", "passes x std", "masking"):
        table.add_column(col, justify="left" if col in ("model", "masking") else "right")
    for name, m in models.items():
        cal = (m.get("calibration") or {}).get("clean") or {}
        shift = m.get("shift") or {}
        cost = m.get("cost") or {}
        table.add_row(escape(name), f"{m['clean_accuracy']:.1%}", f"{m['robust_accuracy']:.1%}",
                      f"{cal['ece']:.3f}" if "ece" in cal else "-",
                      f"{shift['mean_accuracy']:.1%}" if "mean_accuracy" in shift else "-",
                      f"{m.get('train_seconds') or 0:.1f}",
                      f"{cost['pass_ratio']:.2f}" if cost.get("pass_ratio") else "-",
                      ", ".join(f["name"] for f in m.get("masking_flags", [])) or "none")
    console.print(table)
    c = results.get("claims") or {}
    if c:
        claims = Table(title=f"claims: {c['hardened']} vs {c['baseline']}")
        claims.add_column("claim")
        claims.add_column("measured", justify="right")
        from .claims import CLAIMS

        for claim in CLAIMS:
            if c.get(claim.key) is not None:
                claims.add_row(claim.label, claim.format(c[claim.key]))
        console.print(claims)
        if any(m.get("tabular") for m in models.values()):
            t = Table(title="tabular: constraints hold, and what a one-directional attacker achieves")
            for col in ("model", "constraints satisfied", "recall clean", "recall under attack",
                        "constrained robust", "unconstrained robust"):
                t.add_column(col, justify="left" if col == "model" else "right")
            pct = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
            for name, m in models.items():
                tb = m.get("tabular") or {}
                t.add_row(escape(name), pct(tb.get("constraint_satisfaction")), pct(tb.get("recall_clean")),
                          pct(tb.get("recall_attacked")), pct(tb.get("constrained_robust_accuracy")),
                          pct(tb.get("unconstrained_robust_accuracy")))
            console.print(t)
        mat = c.get("attack_matrix")
        if mat:
            t = Table(title="trained with (rows) / tested with (columns): robust accuracy")
            t.add_column("model")
            for col in mat["columns"]:
                t.add_column(col, justify="right")
            for row, vals in mat["rows"].items():
                t.add_row(escape(row), *["-" if vals.get(col) is None else f"{vals[col]:.1%}" for col in mat["columns"]])
            console.print(t)
