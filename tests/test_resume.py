"""Exact resume: a run killed with SIGKILL mid-epoch and resumed ends with the same bytes as an uninterrupted
run; every recipe's state (optimizer, RNGs, Free-AT's carried perturbation, ...) survives a crash; damaged
checkpoints and mismatched configurations fail clearly. Runtime: ~45 s on 2 busy cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from armor import ThreatModel
from armor.data import load_dataset
from armor.models import build_model, model_spec
from armor.training import CheckpointError, Trainer, load, load_metadata
from armor.training.checkpoint import STATE, load_state
from armor.app.train_cli import train_command
from armor.app.config import normalization_stats

THREAT = ThreatModel("linf", 0.1)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}



def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "armor.app.train_cli", *args]


# ---------------------------------------------------------------------------------------------- SIGKILL
def test_sigkill_mid_epoch_then_resume_is_bit_exact(tmp_path):
    args = ["--dataset", "digits", "--recipe", "pgd-at", "--steps", "5", "--epochs", "3", "--batch-size", "32",
            "--checkpoint-every", "4", "--quiet"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    ref = subprocess.Popen(cli(*args, "--out", str(full)), env=ENV, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    victim = subprocess.Popen(cli(*args, "--out", str(killed)), env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    state_path = killed / STATE
    deadline = time.monotonic() + 240
    position = None
    while time.monotonic() < deadline and victim.poll() is None:
        if state_path.exists():
            state = load_state(state_path)  # atomic writes: always a whole file
            if state["epoch"] >= 1 and state["batch"] > 0:
                position = (state["epoch"], state["batch"])
                os.kill(victim.pid, signal.SIGKILL)
                break
        time.sleep(0.005)
    victim.wait()
    assert position is not None, f"the run ended before a mid-epoch checkpoint was seen: {victim.stderr.read()}"
    assert victim.returncode == -signal.SIGKILL
    assert load_metadata(killed)["status"] == "running"

    resumed = subprocess.run(cli("--resume", str(killed), "--quiet"), env=ENV, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    for name in ("last.safetensors", "best.safetensors"):
        assert (killed / name).read_bytes() == (full / name).read_bytes(), name
    a = [json.loads(l) for l in (full / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(l) for l in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for key in ("loss", "clean_acc", "robust_acc", "val_clean_acc", "val_robust_acc", "forward", "backward"):
            assert ra[key] == rb[key], key
    assert load_metadata(killed)["status"] == "finished"


# ---------------------------------------------------------------------------------------------- every recipe
@pytest.fixture(scope="module")
def digits():
    train = load_dataset("digits", "train")
    return train, normalization_stats(train.x)


def make_trainer(digits, out, recipe, params, epochs, **kw):
    train, (mean, std) = digits
    torch.manual_seed(0)
    model = build_model(model_spec("small-cnn", train, mean=mean, std=std))
    return Trainer(model, train, recipe=recipe, recipe_params=params, threat=THREAT, epochs=epochs, batch_size=64,
                   checkpoint_every=3, out_dir=out, quiet=True, **kw)


class Crash(Exception):
    pass


@pytest.mark.parametrize("recipe, params, epochs, kw", [
    ("standard", {}, 2, {}),
    ("pgd-at", {"steps": 2}, 2, {"eps_warmup": 2}),
    ("trades", {"steps": 2}, 2, {}),
    ("mart", {"steps": 2}, 2, {}),
    ("fast-at", {"variant": "n-fgsm"}, 2, {"optimizer": "adam"}),
    ("free-at", {"replays": 2}, 4, {}),
    ("awp", {"steps": 2, "base": "trades"}, 2, {}),
    ("multi", {"steps": 2, "threats": "linf:0.1,l2:0.5", "mode": "random"}, 2, {}),
    ("fast-at", {"variant": "fgsm-rs"}, 2, {"ema_decay": 0.8}),  # the weight average is resumed too
])
def test_crash_and_resume_is_bit_exact_for_every_recipe(digits, tmp_path, recipe, params, epochs, kw):
    make_trainer(digits, tmp_path / "full", recipe, params, epochs, **kw).fit()
    crashing = make_trainer(digits, tmp_path / "crash", recipe, params, epochs, **kw)
    step, calls = crashing.recipe.step, [0]

    def flaky(*a, **k):
        calls[0] += 1
        if calls[0] == 26:  # epoch 2, batch 8; the last checkpoint is after batch 6
            raise Crash()
        return step(*a, **k)

    crashing.recipe.step = flaky
    with pytest.raises(Crash):
        crashing.fit()
    assert load_state(tmp_path / "crash" / STATE)["batch"] == 6
    make_trainer(digits, tmp_path / "crash", recipe, params, epochs, resume=True, **kw).fit()
    for name in ("last.safetensors", "best.safetensors"):
        assert (tmp_path / "crash" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    a, b = (load_state(tmp_path / d / STATE) for d in ("full", "crash"))
    for part in ("model", "ema"):  # the raw weights, and the average where there is one
        assert (a.get(part) is None) == (b.get(part) is None) == (part == "ema" and "ema_decay" not in kw)
        for k in a.get(part) or {}:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


# ---------------------------------------------------------------------------------------------- errors
@pytest.fixture()
def small_run(tmp_path):
    out = tmp_path / "run"
    train_command(dataset="digits", recipe="standard", epochs=1, batch_size=128, out=str(out), quiet=True)
    return out


def test_resume_with_a_different_config_fails(small_run, digits):
    with pytest.raises(ValueError, match=r"different configuration \(epochs: 1 -> 5\)"):
        train_command(resume=small_run, epochs=5)
    with pytest.raises(ValueError, match="recipe"):
        train_command(resume=small_run, recipe="pgd-at")
    trainer = make_trainer(digits, small_run, "standard", {}, 1, resume=True)
    with pytest.raises(ValueError, match="configuration differs from the saved run"):
        trainer.fit()


def test_resume_of_a_finished_run_changes_nothing(small_run):
    before = (small_run / "last.safetensors").read_bytes()
    train_command(resume=small_run, quiet=True)  # runtime options may differ
    assert (small_run / "last.safetensors").read_bytes() == before


def test_starting_over_an_existing_run_fails(small_run):
    with pytest.raises(ValueError, match="already holds a training run: resume it"):
        train_command(dataset="digits", recipe="standard", epochs=1, batch_size=128, out=str(small_run), quiet=True)


@pytest.mark.parametrize("damage, match", [
    (lambda b: b[: len(b) // 2], "truncated or corrupted"),
    (lambda b: b[:20], "not an armor training state"),
    (lambda b: b"garbage" * 10, "not an armor training state"),
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "checksum mismatch"),
])
def test_damaged_training_state_is_reported(small_run, damage, match):
    path = small_run / STATE
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=match):
        train_command(resume=small_run, quiet=True)


def test_missing_state_and_damaged_weights_are_reported(small_run, tmp_path):
    (small_run / STATE).unlink()
    with pytest.raises(CheckpointError, match="no training state"):
        train_command(resume=small_run, quiet=True)
    best = small_run / "best.safetensors"
    best.write_bytes(best.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        load(small_run)
    load(small_run, "last")  # the other checkpoint still loads
    (small_run / "metadata.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load(small_run)
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load(tmp_path)
    with pytest.raises(ValueError, match="not a run directory"):
        train_command(resume=tmp_path)
