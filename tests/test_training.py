"""Adversarial training: every recipe hardens a digits model, passes are counted exactly, the run directory
round-trips, and bad input fails clearly. Runtime: ~60 s on 2 busy cores (one thread per test process)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from armor import ThreatModel
from armor.attacks import pgd
from armor.data import load_dataset
from armor.models import build_model, model_spec
from armor.training import (CheckpointError, NonFiniteLossError, RECIPES, Trainer, load, load_metadata,
                            make_recipe)
from armor.training.checkpoint import WEIGHTS, load_weights
from armor.app.train_cli import build_typer_command, train_command
from armor.app.config import (FIELDS, TrainConfig, normalization_stats, read_config_file, resolve_config)
from armor.training.trainer import lr_factor

THREAT = ThreatModel("linf", 0.1)

# Each recipe trains 5 epochs (PGD-based ones with 5 steps) on digits, seed 0, and is attacked with PGD-20 at
# linf eps 0.1 on the 540 test digits. Measured over seeds 0, 1, 2 (robust accuracy, standard training at
# 0.509 / 0.531 / 0.494): the smallest gain over standard of any recipe and seed was +0.126 (n-fgsm, seed 1);
# the gains at seed 0 were pgd-at +0.187, madry +0.180, trades +0.230, mart +0.197, fgsm-rs +0.187,
# n-fgsm +0.163, free-at +0.219, awp +0.163, multi +0.169, pgd-at with eps warm-up +0.176.
MARGIN = 0.08

CASES = {
    "pgd-at": ("pgd-at", {"steps": 5}, {}),
    "pgd-at-madry": ("pgd-at", {"steps": 5, "adv_ratio": 1.0}, {}),
    "trades": ("trades", {"steps": 5}, {}),
    "mart": ("mart", {"steps": 5}, {}),
    "fast-at-fgsm-rs": ("fast-at", {}, {}),
    "fast-at-n-fgsm": ("fast-at", {"variant": "n-fgsm"}, {}),
    "free-at": ("free-at", {}, {}),
    "awp": ("awp", {"steps": 5}, {}),
    "multi": ("multi", {"steps": 5, "threats": "linf:0.1,l2:0.5"}, {}),
    "pgd-at-eps-warmup": ("pgd-at", {"steps": 5}, {"eps_warmup": 2}),
}



@pytest.fixture(scope="module")
def digits():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    return train, test, normalization_stats(train.x)


def fresh_model(digits, seed=0, name="small-cnn"):
    train, _, (mean, std) = digits
    torch.manual_seed(seed)
    return build_model(model_spec(name, train, mean=mean, std=std))


def fit(digits, recipe="standard", params=None, seed=0, epochs=5, **kw):
    kw.setdefault("batch_size", 64)
    return Trainer(fresh_model(digits, seed), digits[0], recipe=recipe, recipe_params=params, threat=THREAT,
                   epochs=epochs, seed=seed, quiet=True, **kw).fit()


def robust_accuracy(model, test):
    x_adv = pgd(model, test.x, test.y, THREAT, steps=20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (model(x_adv).argmax(1) == test.y).float().mean().item()


@pytest.fixture(scope="module")
def standard_robust(digits):
    return robust_accuracy(fit(digits).model, digits[1])


# ---------------------------------------------------------------------------------------------- recipes work
@pytest.mark.parametrize("case", list(CASES))
def test_recipe_raises_robust_accuracy_over_standard(digits, standard_robust, case):
    recipe, params, kw = CASES[case]
    result = fit(digits, recipe, params, **kw)
    robust = robust_accuracy(result.model, digits[1])
    assert robust >= standard_robust + MARGIN, f"{case}: {robust:.3f} vs standard {standard_robust:.3f}"
    with torch.no_grad():
        clean = (result.model(digits[1].x).argmax(1) == digits[1].y).float().mean().item()
    assert clean > 0.85  # measured 0.90 - 0.97


# Recipes whose aim is not PGD robust accuracy, tested against their own aim elsewhere: IBP training against
# certified accuracy, the noise recipes against the smoothed classifier (tests/test_certify_cli.py).
TESTED_ELSEWHERE = {"ibp": "test_ibp_training_certifies_what_standard_training_does_not",
                    "gaussian": "test_gaussian_recipe_trains_on_exactly_the_noise_it_draws",
                    "smoothadv": "test_smoothadv_attack_raises_the_smoothed_loss_within_the_ball"}


def test_every_registered_recipe_is_tested():
    # RECIPES holds the library's own; cpgd-at comes from the tabular domain and is tested in test_tabular_robustness
    assert {c[0] for c in CASES.values()} | {"standard"} | set(TESTED_ELSEWHERE) == set(RECIPES)
    from pathlib import Path

    elsewhere = (Path(__file__).parent / "test_certify_cli.py").read_text()
    for recipe, test in TESTED_ELSEWHERE.items():
        assert f"def {test}(" in elsewhere, f"{recipe}: its test {test} is gone"


# ---------------------------------------------------------------------------------------------- exact cost
@pytest.mark.parametrize("recipe, params, forward, backward", [
    ("standard", {}, 1, 1),
    # K attack steps (forward + backward) plus the attack's final check of its last iterate, then the train pass
    ("pgd-at", {"steps": 3, "adv_ratio": 0.0}, 1, 1),  # r = 0: no attack at all
    ("pgd-at", {"steps": 3, "adv_ratio": 0.5}, 3 + 1 + 2, 3 + 2),
    ("pgd-at", {"steps": 3, "adv_ratio": 1.0}, 3 + 1 + 1, 3 + 1),  # r = 1: no clean forward
    ("trades", {"steps": 3}, 1 + 3 + 2, 3 + 2),
    ("fast-at", {}, 2, 2),
    ("fast-at", {"variant": "n-fgsm"}, 2, 2),
    ("free-at", {"replays": 3}, 3, 3),  # per pass over the data; the run makes epochs / 3 of them
])
def test_pass_counts_are_exact(digits, recipe, params, forward, backward):
    result = fit(digits, recipe, params, epochs=3 if recipe == "free-at" else 1)
    rec = result.history[0]
    n = rec["n"]
    assert rec["forward"] == forward * n
    assert rec["backward"] == backward * n
    assert rec["pass_ratio"] == pytest.approx((forward + backward) / 2)
    assert len(result.history) == 1  # free-at: 3 epochs / 3 replays = one pass


def test_adv_ratio_zero_is_standard_training_bit_for_bit(digits):
    a = fit(digits, "standard", epochs=2)
    b = fit(digits, "pgd-at", {"adv_ratio": 0.0}, epochs=2)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert b.history[-1]["robust_acc"] is None and b.history[-1]["clean_acc"] is not None


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("recipe, params, per_batch", [
    ("pgd-at", {"steps": 2}, 1), ("trades", {"steps": 2}, 1), ("mart", {"steps": 2}, 1), ("fast-at", {}, 1),
    ("awp", {"steps": 2, "warmup": 0}, 1), ("multi", {"steps": 2, "threats": "linf:0.1,l2:0.5"}, 1),
    ("free-at", {"replays": 2}, 2),
])
def test_attack_passes_leave_batchnorm_statistics_alone(digits, recipe, params, per_batch):
    # num_batches_tracked counts train-mode forwards: attacks (eval mode) and AWP's probe (restored) add none.
    model = BNNet()
    Trainer(model, digits[0], recipe=recipe, recipe_params=params, threat=THREAT, epochs=per_batch,
            batch_size=128, quiet=True).fit()
    n_batches = math.ceil(len(digits[0].y) * 0.9 / 128)
    assert int(model.net[2].num_batches_tracked) == n_batches * per_batch
    assert not model.training


def test_eps_warmup_ramps_linearly(digits):
    result = fit(digits, "fast-at", {}, epochs=4, eps_warmup=2)
    assert [h["eps"] for h in result.history] == pytest.approx([0.05, 0.1, 0.1, 0.1])


def test_lr_schedules():
    assert lr_factor("constant", 0.7) == 1
    assert lr_factor("cosine", 0) == 1 and lr_factor("cosine", 1) == pytest.approx(0)
    assert lr_factor("cyclic", 0.4) == pytest.approx(1) and lr_factor("cyclic", 0.2) == pytest.approx(0.5)
    assert lr_factor("cyclic", 1.0) == pytest.approx(0)
    assert lr_factor("onecycle", 0) == pytest.approx(1 / 25) and lr_factor("onecycle", 0.3) == pytest.approx(1)
    assert lr_factor("multistep", 0.6) == pytest.approx(0.1) and lr_factor("multistep", 0.8) == pytest.approx(0.01)
    ts = [i / 100 for i in range(101)]
    for kind in ("cosine", "multistep"):
        vals = [lr_factor(kind, t) for t in ts]
        assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_fast_at_defaults_to_cyclic_schedule(digits):
    assert Trainer(fresh_model(digits), digits[0], recipe="fast-at", threat=THREAT).lr_schedule == "cyclic"
    assert Trainer(fresh_model(digits), digits[0], recipe="pgd-at", threat=THREAT).lr_schedule == "cosine"
    result = fit(digits, "fast-at", {}, epochs=2)
    lrs = [h["lr"] for h in result.history]
    assert lrs[1] < 0.05 * 0.1  # the last step's rate: the triangle ends near 0


def test_n_fgsm_perturbation_is_not_projected_to_the_eps_ball(digits):
    train = digits[0]
    model = fresh_model(digits)
    recipe = make_recipe("fast-at", variant="n-fgsm")
    fgsm_rs = make_recipe("fast-at")

    class Ctx:
        threat, eps_scale, epoch = THREAT, 1.0, 0.0
        generator = torch.Generator().manual_seed(0)
        attack_model = model

    x, y = train.x[:256], train.y[:256]
    far = (recipe.perturb(model, x, y, Ctx) - x).abs().flatten(1).amax(1)
    near = (fgsm_rs.perturb(model, x, y, Ctx) - x).abs().flatten(1).amax(1)
    assert far.max() > 0.1 + 1e-3 and far.max() <= 0.3 + 1e-6  # noise 2 eps + step eps, bounds still hold
    assert near.max() <= 0.1 + 1e-6


# ---------------------------------------------------------------------------------------------- run directory
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "pgd"
    train_command(dataset="digits", recipe="pgd-at", steps=3, epochs=2, batch_size=64, out=str(out), quiet=True)
    return out


def test_run_directory_contents_and_load(run_dir, digits):
    names = {p.name for p in run_dir.iterdir()}
    assert {"metadata.json", "config.toml", "metrics.jsonl", "best.safetensors", "last.safetensors",
            "train_state.ckpt"} <= names
    meta = load_metadata(run_dir)
    assert meta["status"] == "finished" and meta["armor_version"]
    assert meta["architecture"]["name"] == "small-cnn"
    assert meta["threat_model"] == {"norm": "linf", "eps": 0.1, "bounds": [0.0, 1.0]}
    assert meta["recipe"] == {"name": "pgd-at", "params": {"adv_ratio": 0.5, "steps": 3, "step_size": None,
                                                         "random_start": True}}
    assert meta["dataset"]["name"] == "digits" and meta["seed"] == 0
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2]
    for key in ("loss", "clean_acc", "robust_acc", "val_clean_acc", "val_robust_acc", "seconds", "images_per_s",
                "forward", "backward", "lr"):
        assert key in lines[0]
    for which in ("best", "last"):
        model = load(run_dir, which)
        assert not model.training
        saved = load_weights(run_dir / WEIGHTS[which])
        for k, v in model.state_dict().items():
            assert torch.equal(v, saved[k])
    best = lines[meta["metrics"]["best_epoch"] - 1]
    assert best["val_robust_acc"] == max(l["val_robust_acc"] for l in lines)


def test_config_round_trip_reproduces_the_run(run_dir, tmp_path):
    saved = read_config_file(run_dir / "config.toml")
    expected = {k: v for k, v in resolve_config({"dataset": "digits", "recipe": "pgd-at", "steps": 3, "epochs": 2,
                                                 "batch_size": 64, "out": str(run_dir), "quiet": True}).to_dict().items()
                if v is not None}
    assert saved == expected
    again = train_command(config=run_dir / "config.toml", out=str(tmp_path / "again"))
    assert (again / "last.safetensors").read_bytes() == (run_dir / "last.safetensors").read_bytes()


def test_config_file_accepts_every_option(tmp_path):
    values = {"dataset": "digits", "data_dir": "/data", "n_train": 500, "model": "mlp", "normalize": False,
              "norm": "l2", "eps": 1, "recipe": "awp", "adv_ratio": 0.25, "beta": 3.0, "steps": 4, "step_size": 0.5,
              "random_start": False, "fast_variant": "n-fgsm", "noise": 1.5, "replays": 2, "awp_base": "trades",
              "awp_gamma": 0.01, "awp_warmup": 1, "multi_threats": "linf:0.1,l2:1", "multi_mode": "avg",
              "eps_warmup": 2, "certified_bound": "ibp", "kappa_end": 0.25, "crown_beta_end": 0.5, "sigma": 0.5,
              "smooth_samples": 2, "epochs": 3, "batch_size": 32, "optimizer": "adam", "lr": 0.002, "momentum": 0.8,
              "weight_decay": 0.0, "lr_schedule": "onecycle", "seed": 7, "val_fraction": 0.2, "val_steps": 5,
              "patience": 2, "ema_decay": 0.99, "max_grad_norm": 0.5, "checkpoint_every": 10, "out": "runs/x", "device": "cpu", "quiet": True}
    assert set(values) == set(FIELDS)
    lines = [f"{k.replace('_', '-') if i % 2 else k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}"
             for i, (k, v) in enumerate(values.items())]
    path = tmp_path / "exp.toml"
    path.write_text("\n".join(lines) + "\n")
    cfg = resolve_config({"epochs": 9}, path)
    assert cfg.epochs == 9  # an explicit option wins over the file
    assert {k: v for k, v in cfg.to_dict().items() if k != "epochs"} == {k: v for k, v in values.items() if k != "epochs"}
    assert isinstance(cfg.eps, float)
    # ... and the CLI has an option for each key
    import typer

    app = typer.Typer()
    build_typer_command(app)
    app.command("noop")(lambda: None)
    help_text = CliRunner().invoke(app, ["train", "--help"], terminal_width=200).output
    for key in FIELDS:
        assert f"--{key.replace('_', '-')}" in help_text, key


# ---------------------------------------------------------------------------------------------- early stopping
def test_early_stopping_keeps_the_best_checkpoint(digits, tmp_path):
    trainer = Trainer(fresh_model(digits), digits[0], recipe="fast-at", threat=THREAT, epochs=30, batch_size=64,
                      lr_schedule="constant", lr=0.05, patience=2, out_dir=tmp_path / "run", quiet=True)
    result = trainer.fit()
    h = result.history
    assert result.status == "early_stopped" and len(h) < 30
    assert not h[-1]["best"] and not h[-2]["best"] and h[-3]["best"]
    assert load_metadata(tmp_path / "run")["status"] == "early_stopped"
    best = load(tmp_path / "run")
    with torch.no_grad():
        clean = (best(trainer.val_x).argmax(1) == trainer.val_y).sum().item() / len(trainer.val_y)
    assert clean == h[result.best_epoch - 1]["val_clean_acc"]
    assert result.best_score == max(r["val_robust_acc"] for r in h)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("params, match", [
    ({"adv_ratio": 1.5}, r"adv_ratio must be in \[0, 1\]"),
    ({"adv_ratio": -0.1}, r"adv_ratio must be in \[0, 1\]"),
    ({"adv_ratio": "half"}, r"adv_ratio must be a number"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"beta": 1.0}, r"recipe 'pgd-at' has no parameter\(s\) beta"),
])
def test_bad_recipe_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        make_recipe("pgd-at", **params)


def test_bad_recipe_names_and_options():
    with pytest.raises(ValueError, match="unknown recipe 'pgd'.*pgd-at"):
        make_recipe("pgd")
    with pytest.raises(ValueError, match="multi needs threats"):
        make_recipe("multi")
    with pytest.raises(ValueError, match="'norm:eps' or 'norm:eps:attack'"):
        make_recipe("multi", threats="linf")
    with pytest.raises(ValueError, match="unknown norm"):
        make_recipe("multi", threats="l7:0.1")
    with pytest.raises(ValueError, match="awp base must be one of"):
        make_recipe("awp", base="free-at")
    with pytest.raises(ValueError, match="variant must be one of"):
        make_recipe("fast-at", variant="pgd")
    with pytest.raises(ValueError, match="option beta does not apply to recipe 'pgd-at'"):
        TrainConfig(recipe="pgd-at", beta=3.0).recipe_params()
    with pytest.raises(ValueError, match="unknown option 'epoch'"):
        resolve_config({"epoch": 3})


def test_bad_trainer_arguments(digits):
    model = fresh_model(digits)
    with pytest.raises(ValueError, match="trains against a threat model"):
        Trainer(model, digits[0], recipe="pgd-at")
    with pytest.raises(ValueError, match="unknown optimizer"):
        Trainer(model, digits[0], threat=THREAT, optimizer="lbfgs")
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        Trainer(model, digits[0], threat=THREAT, lr_schedule="step")
    with pytest.raises(ValueError, match="outside the threat model's bounds"):
        Trainer(model, (digits[0].x * 2, digits[0].y), threat=THREAT)


def test_cli_reports_bad_input_without_traceback(tmp_path):
    import typer

    app = typer.Typer()
    build_typer_command(app)
    app.command("noop")(lambda: None)
    res = CliRunner().invoke(app, ["train", "--adv-ratio", "1.5", "--out", str(tmp_path / "x"), "--quiet"])
    assert res.exit_code == 2
    assert "adv_ratio must be in [0, 1]" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["train", "--recipe", "madry", "--out", str(tmp_path / "y"), "--quiet"])
    assert res.exit_code == 2 and "unknown recipe 'madry'" in res.output


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(digits, tmp_path):
    out = tmp_path / "nan"
    trainer = Trainer(fresh_model(digits), digits[0], recipe="standard", threat=THREAT, epochs=3, batch_size=64,
                      lr=1e6, lr_schedule="constant", checkpoint_every=1, out_dir=out, quiet=True)
    with pytest.raises(NonFiniteLossError, match="non-finite|the loss became") as info:
        trainer.fit()
    assert "last good checkpoint" in str(info.value) and "lower the learning rate" in str(info.value)
    meta = load_metadata(out)
    assert meta["status"] == "diverged" and "last good checkpoint" in meta["message"]
    from armor.training.checkpoint import load_state

    state = load_state(out / "train_state.ckpt")
    assert all(torch.isfinite(v).all() for v in state["model"].values())
