"""Progress: the library reports through callbacks with sensible counts (and prints nothing); the CLI shows
stages, attacks, points left and time left on stderr, escapes what it prints, and is silent with --quiet."""

import io

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import armor
from armor.app.cli import _Display, app
from armor.app.measure import MeasureProgress, measure
from armor.engine import attack_dataset
from armor.attacks import get_attack
from armor.training.trainer import _Progress

runner = CliRunner()
THREAT = armor.ThreatModel("linf", 0.1)


class Recorder:
    """An evaluator progress callback with the optional ``start`` hook."""

    def __init__(self):
        self.starts, self.batches = [], []

    def __call__(self, name, batch, n_batches):
        self.batches.append((name, batch, n_batches))

    def start(self, name, n_points, n_batches, done):
        self.starts.append((name, n_points, n_batches, done))


def test_evaluate_reports_every_batch_and_ends_at_n_batches(model, digits, capsys):
    _, _, x, y = digits
    rec = Recorder()
    r = armor.evaluate(model, (x[:90], y[:90]), THREAT, suite=["pgd", "apgd-ce"], batch_size=20, individual=True,
                       progress=rec)
    assert [s[0] for s in rec.starts] == ["pgd", "apgd-ce"]
    for name, n_points, n_batches, done in rec.starts:
        assert done == 0 and n_points == r.per_attack[name]["n"]
        assert n_batches == -(-n_points // 20)
        seen = [b for b in rec.batches if b[0] == name]
        assert [b[1] for b in seen] == list(range(1, n_batches + 1))  # every batch, in order, ending at n_batches
        assert all(b[2] == n_batches for b in seen)
    assert capsys.readouterr() == ("", ""), "the library prints nothing"


def test_evaluate_plain_callable_still_works(model, digits):
    _, _, x, y = digits
    seen = []
    armor.evaluate(model, (x[:30], y[:30]), THREAT, suite=["pgd"], batch_size=10,
                   progress=lambda name, b, n: seen.append((name, b, n)))
    assert seen and seen[-1][1] == seen[-1][2]


def test_resumed_evaluation_starts_where_it_stopped(model, digits, tmp_path):
    _, _, x, y = digits

    class Stop(Exception):
        pass

    class Stopper(Recorder):
        def __call__(self, name, batch, n_batches):
            super().__call__(name, batch, n_batches)
            if batch == 2:
                raise Stop

    kw = dict(suite=["pgd"], batch_size=10, individual=True, state_path=tmp_path)
    with pytest.raises(Stop):
        armor.evaluate(model, (x[:60], y[:60]), THREAT, progress=Stopper(), **kw)
    rec = Recorder()
    armor.evaluate(model, (x[:60], y[:60]), THREAT, progress=rec, **kw)
    (name, n_points, n_batches, done), = rec.starts
    assert done == 2 and rec.batches[0][1] == 3 and rec.batches[-1][1] == n_batches


def test_attack_dataset_progress_reaches_the_total(model, digits):
    _, _, x, y = digits
    seen = []
    attack_dataset(model, get_attack("pgd"), x[:55], y[:55], THREAT, batch_size=20,
                   progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


class MeasureRecorder(MeasureProgress):
    def __init__(self):
        self.events = []

    def stage(self, name, index, total):
        self.events.append(("stage", name, index, total))

    def attack_start(self, name, n_points, n_batches, done):
        self.events.append(("start", name, n_points, n_batches, done))

    def attack_batch(self, name, batch, n_batches):
        self.events.append(("batch", name, batch, n_batches))

    def curve_point(self, eps, index, total):
        self.events.append(("curve", eps, index, total))


def test_measure_reports_stages_attacks_and_curve(model, digits):
    _, _, x, y = digits
    rec = MeasureRecorder()
    measure(model, (x, y), THREAT, suite=["pgd"], n=40, eps_grid=[0, 0.05, 0.1], batch_size=25,
            calibration=True, shift=False, interpret=False, masking=False, progress=rec)
    stages = [e for e in rec.events if e[0] == "stage"]
    assert [s[1] for s in stages] == ["worst-case evaluation", "curve", "calibration"]
    assert [s[2] for s in stages] == [1, 2, 3] and all(s[3] == 3 for s in stages)
    batches = [e for e in rec.events if e[0] == "batch"]
    start = next(e for e in rec.events if e[0] == "start")
    assert batches[-1][2] == batches[-1][3] == start[3]
    curve = [e for e in rec.events if e[0] == "curve"]
    assert [c[2] for c in curve] == [1, 2, 3] and curve[-1][3] == 3


def test_measure_plain_callable_hears_stage_names(model, digits):
    _, _, x, y = digits
    said = []
    measure(model, (x, y), THREAT, suite=["pgd"], n=30, eps_grid=[0, 0.1], calibration=False, shift=False,
            interpret=False, masking=False, progress=said.append)
    assert said == ["worst-case evaluation", "curve"]


# ---------------------------------------------------------------------------------------------- displays
def _display(quiet=False, terminal=False):
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=terminal, width=200, color_system=None)
    return _Display(quiet, console), buf


def test_display_counts_points_left_and_time_left():
    d, buf = _display()
    with d:
        d.stage("worst-case evaluation", 1, 2)
        d.start_points("a", "apgd-ce", 250, 3, 0, 100)
        bar = d._bars["a"]
        bar["t0"] -= 10.0  # as if the first batch took 10 s
        assert d._detail(bar, 1, bar["t0"] + 10.0) == "batch 1/3, 100/250 points, 150 left, ETA 0:00:15"
        d.advance_points("a", 1)
        d.advance_points("a", 3)
        assert "a" not in d._bars, "the last batch ends the bar"
    out = buf.getvalue()
    assert "[1/2] worst-case evaluation..." in out and "apgd-ce: 250 points in 3 batches" in out
    assert "apgd-ce: done in" in out


def test_display_escapes_what_it_prints():
    d, buf = _display()
    with d:
        d.line("model [bold]x[/bold] from [red]")
        d.stage("[i]odd[/i]", 1, 1)
        d.start_points("a", "[b]name", 1, 1, 0, 10)
    out = buf.getvalue()
    assert "model [bold]x[/bold] from [red]" in out and "[i]odd[/i]" in out and "[b]name" in out


def test_display_live_bars_on_a_terminal():
    d, buf = _display(terminal=True)
    with d:
        d.stage("worst-case evaluation", 1, 1)
        d.start_points("a", "apgd-ce", 50, 2, 1, 25)  # resumed after one batch
        d.advance_points("a", 2)
        d.close()
    out = buf.getvalue()
    assert "apgd-ce" in out and "50 points, done in" in out and "done in" in out


def test_display_quiet_prints_nothing():
    d, buf = _display(quiet=True)
    with d:
        d.line("threads: 1")
        d.stage("curve", 1, 1)
        d.start_points("a", "pgd", 10, 1, 0, 10)
        d.advance_points("a", 1)
    assert buf.getvalue() == ""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    before = torch.get_num_threads()
    r = runner.invoke(app, ["train", "--dataset", "digits", "--model", "mlp", "--recipe", "standard", "--epochs",
                            "1", "--val-steps", "0", "--quiet", "--threads", "1", "--out", str(out)])
    torch.set_num_threads(before)
    assert r.exit_code == 0, r.output
    return out


def test_cli_evaluate_and_attack_show_progress_unless_quiet(run_dir, tmp_path):
    r = runner.invoke(app, ["evaluate", str(run_dir), "--n", "30", "--suite", "pgd,apgd-ce", "--batch-size", "10",
                            "--no-extras", "--threads", "1", "--out", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    for text in ("[1/3] worst-case evaluation...", "pgd: ", "apgd-ce: ", "batches", "done in", "[2/3] curve",
                 "[3/3] certified bounds"):
        assert text in r.output, text
    r = runner.invoke(app, ["evaluate", str(run_dir), "--n", "30", "--suite", "pgd", "--no-extras", "--quiet",
                            "--threads", "1", "--out", str(tmp_path / "q")])
    assert r.exit_code == 0 and "worst-case evaluation..." not in r.output and "done in" not in r.output
    r = runner.invoke(app, ["attack", str(run_dir), "--n", "25", "--batch-size", "10", "--threads", "1",
                            "--out", str(tmp_path / "adv.npz")])
    assert r.exit_code == 0, r.output
    assert "apgd-ce: 25 points in 3 batches" in r.output and "apgd-ce: done in" in r.output


# ---------------------------------------------------------------------------------------------- training bar
def test_training_bar_says_what_its_columns_mean(capsys):
    p = _Progress(enabled=True, recipe="pgd-at", val_steps=10)
    legend = p.legend()
    for word in ("loss", "clean acc", "robust acc", "img/s", "left", "PGD-10", "batches done/total"):
        assert word in legend, word
    with p:  # not a terminal: no bar, only the per-epoch lines
        p.epoch_done({"epoch": 1, "loss": 0.5, "val_clean_acc": 0.9, "val_robust_acc": 0.4, "seconds": 1.0,
                      "pass_ratio": 8.5, "best": True})
    err = " ".join(capsys.readouterr().err.split())
    assert "epoch 1 done: train loss 0.5000, val clean acc 90.0%, val robust acc (PGD-10) 40.0%" in err
    assert "8.50x the forward+backward passes of standard training" in err and "best so far" in err


def test_training_bar_is_silent_when_disabled(capsys):
    with _Progress(enabled=False) as p:
        p.epoch_done({"epoch": 1, "loss": 0.5, "seconds": 1.0, "pass_ratio": 1.0, "best": False})
    assert capsys.readouterr().err == ""
