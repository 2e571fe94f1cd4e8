"""The thread policy (armor.threads) and --threads on every compute command. No timing here: bench/threads.py."""

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from armor import threads as th
from armor.app.cli import app
from armor.models import build_model

runner = CliRunner()


@pytest.fixture(autouse=True)
def keep_thread_count():
    """Every test leaves torch's thread count as it found it (the CLI sets it for the whole process)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


# ---------------------------------------------------------------------------------------------- the policy
def test_policy_is_deterministic_in_its_inputs():
    cases = [(f, c, b, n) for f in (None, 1e5, 1.2e6, 1.1e9) for c in (1, 2, 4, 16)
             for b in (0.0, 0.1, 0.5, 1.0, 1.9, 3.5, 20.0) for n in (1, 32, 100, 500)]
    first = [th.thread_policy(*case) for case in cases]
    assert first == [th.thread_policy(*case) for case in cases]
    assert all(1 <= n <= max(1, c) for n, (_, c, _, _) in zip(first, cases))


def test_small_work_per_call_gets_one_thread_whatever_the_cpus():
    for cpus in (1, 2, 8, 64):
        for busy in (0.0, 1.0):
            assert th.thread_policy(0.17e6, cpus, busy, batch=100) == 1  # the digits MLP on 100 points
            assert th.thread_policy(1.2e6, cpus, busy, batch=16) == 1  # the small CNN on 16 images
            assert th.thread_policy(10e6, cpus, busy, batch=0) == 1  # batch 0 counts as 1 point


def test_enough_work_gets_one_thread_per_free_cpu():
    big = 1.1e9  # PreAct ResNet-18 on CIFAR, per image
    assert th.thread_policy(big, 1, 0.0) == 1
    assert th.thread_policy(big, 2, 0.0) == 2
    assert th.thread_policy(big, 2, 0.15) == 2  # background noise does not take a CPU away
    assert th.thread_policy(big, 2, 0.5) == 1
    assert th.thread_policy(big, 2, 2.0) == 1
    assert th.thread_policy(big, 8, 3.0) == 5
    assert th.thread_policy(big, 8, 50.0) == 1  # more load than CPUs: still one thread
    assert th.thread_policy(None, 4, 0.0) == 4  # unknown size: treated as enough work
    assert th.thread_policy(big, 4, -1.0) == 4
    assert th.thread_policy(0.17e6, 2, 0.0, batch=500) == 2  # the digits MLP on 500 points per call, idle
    assert th.thread_policy(0.17e6, 2, 1.0, batch=500) == 1  # ... on a busy machine
    assert th.thread_policy(th.SMALL_WORK_FLOPS, 2, 0.0, batch=1) == 2


def test_parse_threads_accepts_auto_and_positive_integers():
    assert th.parse_threads("auto") == "auto" and th.parse_threads(" AUTO ") == "auto"
    assert th.parse_threads(None) == "auto"
    assert th.parse_threads("3") == 3 and th.parse_threads(2) == 2


@pytest.mark.parametrize("bad", [0, -1, "0", "-2", "1.5", 1.5, "two", "", True])
def test_parse_threads_refuses_everything_else(bad):
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        th.parse_threads(bad)


def test_choose_threads_explicit_and_auto(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert th.choose_threads(3).threads == 3
    mlp = build_model({"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10})
    choice = th.choose_threads("auto", mlp, batch=50)
    assert choice.threads == 1 and choice.busy is None  # small work: no load sample needed
    assert "auto" in choice.describe() and "MFLOP per call of 50 points" in choice.describe()
    monkeypatch.setattr(th, "available_cpus", lambda: 4)
    monkeypatch.setattr(th, "busy_cpus", lambda seconds=0.2: 1.0)
    choice = th.choose_threads("auto", flops=1e9)
    assert choice.threads == 3 and choice.cpus == 4 and choice.busy == 1.0
    assert th.choose_threads("auto", mlp, batch=500).threads == 3  # more points per call: enough work
    assert "1.0 busy" in choice.describe()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert th.choose_threads("auto", flops=1e9).threads == 2  # an explicit OMP_NUM_THREADS wins over auto
    assert th.choose_threads(1).threads == 1  # ... but not over an explicit count


def test_model_flops_counts_the_forward_pass():
    mlp = build_model({"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10})
    macs = 64 * 256 + 256 * 256 + 256 * 10
    assert th.model_flops(mlp) == pytest.approx(2 * macs, rel=0.01)
    cnn = build_model({"name": "small-cnn", "input_shape": [1, 28, 28], "num_classes": 10})
    assert th.model_flops(cnn) > 5 * th.model_flops(mlp)
    cnn.train()
    th.model_flops(cnn)
    assert cnn.training, "the model's mode comes back"
    plain = nn.Sequential(nn.Flatten(), nn.Linear(10, 5))  # no spec, no shape: 2 FLOPs per parameter
    assert th.model_flops(plain) == 2 * 55
    assert th.model_flops(plain, (10,)) == pytest.approx(2 * 50)


def test_available_cpus_share_the_machine_under_torchrun(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    alone = th.available_cpus()
    assert alone >= 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(alone * 4))
    assert th.available_cpus() == 1


def test_busy_cpus_is_within_range():
    b = th.busy_cpus(0.05)
    assert 0.0 <= b <= len(th._affinity())
    p = th.cpu_pressure()
    assert p is None or 0.0 <= p <= 1.0


def test_busy_cpus_counts_recent_pressure(monkeypatch):
    """A load that waited for CPUs over the last 10 s counts even if the sample catches a quiet moment."""
    monkeypatch.setattr(th, "cpu_pressure", lambda: 0.5)
    assert th.busy_cpus(0.01) >= 0.5 * len(th._affinity()) - 1e-9


def test_use_threads_sets_and_the_context_restores():
    torch.set_num_threads(1)
    with th.use_threads(2) as t:
        assert t.threads == 2 and torch.get_num_threads() == 2
    assert torch.get_num_threads() == 1
    th.use_threads(2)  # as a call the setting stays
    assert torch.get_num_threads() == 2


def test_library_calls_leave_the_thread_count_alone(model, digits):
    """armor.evaluate does not touch torch's thread count unless the caller asks (use_threads)."""
    import armor

    _, _, x, y = digits
    torch.set_num_threads(2)
    armor.evaluate(model, (x[:20], y[:20]), armor.ThreatModel("linf", 0.1), suite=["pgd"])
    assert torch.get_num_threads() == 2


# ---------------------------------------------------------------------------------------------- --threads
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    before = torch.get_num_threads()
    r = invoke("train", "--dataset", "digits", "--model", "mlp", "--recipe", "standard", "--epochs", "1",
               "--val-steps", "0", "--quiet", "--threads", "1", "--out", out)
    torch.set_num_threads(before)
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.parametrize("bad", ["0", "-1", "1.5", "many"])
@pytest.mark.parametrize("command", ["train", "attack", "evaluate", "demo"])
def test_every_compute_command_validates_threads(command, bad, tmp_path):
    args = {"train": ["--dataset", "digits", "--out", tmp_path / "r"], "attack": [tmp_path],
            "evaluate": [tmp_path], "demo": ["--out", tmp_path / "d"]}[command]
    r = invoke(command, *args, "--threads", bad)
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "--threads" in text and "positive integer or 'auto'" in text and "Traceback" not in r.output
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists(), "nothing ran"


def test_threads_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ARMOR_THREADS", "0")
    r = invoke("demo", "--out", tmp_path / "d")
    assert r.exit_code == 2 and "positive integer or 'auto'" in " ".join(r.output.split())


def test_train_attack_evaluate_run_with_threads(run_dir, tmp_path):
    torch.set_num_threads(1)
    r = invoke("attack", run_dir, "--n", "20", "--threads", "2", "--out", tmp_path / "adv.npz")
    assert r.exit_code == 0, r.output
    assert "threads: 2 (--threads 2)" in r.output
    assert torch.get_num_threads() == 2
    r = invoke("evaluate", run_dir, "--n", "20", "--suite", "pgd", "--no-extras", "--threads", "auto",
               "--out", tmp_path / "eval")
    assert r.exit_code == 0, r.output
    assert "threads: 1 (auto:" in r.output  # a digits MLP is small: one thread
    r = invoke("attack", run_dir, "--n", "20", "--threads", "1", "--quiet", "--out", tmp_path / "adv2.npz")
    assert r.exit_code == 0 and "threads:" not in r.output


def test_demo_takes_threads_before_it_runs(tmp_path):
    """A valid --threads passes validation and is applied before the demo is looked up and run."""
    r = invoke("demo", "--dataset", "nope", "--threads", "1", "--out", tmp_path / "d")
    assert r.exit_code == 2 and "no demo called 'nope'" in r.output


def test_train_command_applies_threads_and_reports(tmp_path):
    from armor.app.train_cli import train_command

    torch.set_num_threads(2)
    said = []
    train_command(dataset="digits", model="mlp", recipe="standard", epochs=1, val_steps=0, quiet=True,
                  out=str(tmp_path / "r"), threads="auto", report=said.append)
    assert torch.get_num_threads() == 1 and said and said[0].startswith("threads: 1 (auto:")
    with pytest.raises(ValueError, match="positive integer"):
        train_command(dataset="digits", out=str(tmp_path / "r2"), threads=0)
    assert not (tmp_path / "r2").exists()
