"""Sharded evaluation: `torchrun --nproc_per_node 2` (gloo on CPU) gives exactly one process's result.

Identity, not closeness: the shards run the same global batches with the same generators as one process
(see armor.shard), so the per-point flags, every attack's figures and the adversarial examples are compared
with torch.equal and ==. A resumed run (rank 1 killed right after an attack's merge, before it saved, so that
the two processes restart one attack apart) must give the same result too. Checked that it can fail: with
each process drawing from its own stream (stream + rank) the flags happened to agree but the examples did not.

Runtime: 26-40 s at load 3.6-4.3 on the 2 shared cores (it was 32 s at load 3-4 before the evaluator was one),
most of it starting processes that import torch (a bare torchrun of 2 processes that only joins the group takes
9-11 s wall here): one torchrun of 2 processes runs `armor evaluate` under torchrun, the uninterrupted library
runs and the killed one; a second one resumes. (Letting torchrun restart the processes itself, --max-restarts 1,
saved one launch but failed once in two runs here: the restarted group's gloo mesh timed out connecting.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from typer.testing import CliRunner

from armor import ThreatModel
from armor.app.cli import app
from armor.evaluate import evaluate
from armor.shard import evaluate_sharded

from conftest import DigitsNet, run_launcher


class Noisy(torch.nn.Module):
    """The digits net with noise on its logits, drawn from torch's global generator (a randomized model)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        out = self.net(x)
        return out + 2.0 * torch.randn_like(out)


def true_class_probability(model, x, y):
    """A score in [0, 1] (evaluate's ``score=``): the softmax probability of the true class where the prediction
    is right, else 0. A point's score goes down in several attacks; fooled points leave the later attacks, so the
    batches shift and a point is often lowered by one process and then by the other."""
    with torch.no_grad():
        out = model(x)
        return (out.softmax(1).gather(1, y[:, None]).squeeze(1) * (out.argmax(1) == y)).double()

# attacks that draw random numbers (PGD's start, Square's squares) and one that does not, at a small budget;
# 70 points in batches of 8: uneven global batches (the last one short), dealt round-robin to 2 processes
SUITE = ["fgsm", "pgd", "apgd-ce", "square"]
KWARGS = {"apgd-ce": {"steps": 8}, "square": {"n_queries": 60}}
N, BATCH, EPS, SEED = 70, 8, 0.12, 3
START = torch.linspace(0.2, 1.0, N, dtype=torch.float64)  # score= runs continue from an earlier worst case

DRIVER = r"""
import json, os, sys, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[2])
from conftest import DigitsNet
from test_shard import Noisy, true_class_probability
from armor import ThreatModel
import armor.shard as shard


blob = torch.load(sys.argv[1] + "/inputs.pt")
model = DigitsNet()
model.load_state_dict(blob["state"])
threat = ThreatModel("linf", blob["eps"])
shard.init_from_env()  # one group for everything below (the CLI joins it instead of making its own)
rank = shard.world()[0]
kw = dict(n=blob["n"], batch_size=blob["batch"], seed=blob["seed"], attack_kwargs=blob["kwargs"], keep_adv=True)
data, states = (blob["x"], blob["y"]), sys.argv[1] + "/state"

def save(tag, r):
    if rank == 0:
        torch.save({"robust": r.robust, "x_adv": r.x_adv, "per_attack": r.per_attack, "broken_by": r.broken_by,
                    "robust_accuracy": r.robust_accuracy, "score": r.score}, f"{sys.argv[1]}/{tag}.pt")

def attack_of(path):
    return json.loads(torch.load(path, weights_only=True)["meta"])["attack"]

if sys.argv[3] == "first":
    from armor.app.cli import app
    code = app(json.loads(sys.argv[4]), standalone_mode=False)  # `armor evaluate` under torchrun
    assert not code, code
    for individual in (False, True):
        save(f"plain-{individual}", shard.evaluate_sharded(model, data, threat, blob["suite"],
                                                           individual=individual, **kw))
    save("noisy", shard.evaluate_sharded(Noisy(model), data, threat, ["fgsm", "pgd"], n=blob["n"],
                                         batch_size=blob["batch"], seed=blob["seed"], keep_adv=True))
    save("score", shard.evaluate_sharded(model, data, threat, blob["suite"][:3], n=blob["n"],
                                         batch_size=blob["batch"], seed=blob["seed"], keep_adv=True,
                                         attack_kwargs={"apgd-ce": blob["kwargs"]["apgd-ce"]},
                                         score=true_class_probability, start=blob["start"]))
    from armor.evaluate import _StateFile
    real = _StateFile.save
    def dying(store, st):  # rank 1 dies right after the merge of attack 1 (pgd), before saving it
        if rank == 1 and st.attack == 2 and st.todo is None:
            mate = store.path.with_name(store.path.name.replace("r1of2", "r0of2"))
            for _ in range(600):  # until rank 0 has saved its merge: the restart finds them one attack apart
                if attack_of(mate) == 2:
                    os._exit(17)
                time.sleep(0.05)
            os._exit(18)
        real(store, st)
    _StateFile.save = dying
    shard.evaluate_sharded(model, data, threat, blob["suite"], state_path=states, **kw)
else:  # a second torchrun after rank 1 died: both resume from their states
    if rank == 0:
        found = sorted(os.listdir(states))
        with open(sys.argv[1] + "/at_restart.json", "w") as f:
            json.dump({name[-11:]: attack_of(os.path.join(states, name)) for name in found}, f)
    save("resumed", shard.evaluate_sharded(model, data, threat, blob["suite"], state_path=states, **kw))
shard.close()
"""


def cli_argv(tmp, out: str) -> list[str]:
    """`armor evaluate` of the digits run with a PGD (random start) in the suite, uneven batches of 8."""
    return ["evaluate", str(tmp / "run"), "--suite", "fgsm,pgd,apgd-ce", "-n", "60", "--batch-size", "8",
            "--eps", "0.1", "--seed", "3", "--no-extras", "--certify", "none", "--quiet", "--threads", "1",
            "--out", str(tmp / out)]


# a launch that failed to connect its processes (never one that ran: the first phase's exit code 17 is wanted)
NOT_CONNECTED = re.compile(r"Connection refused|DistNetworkError|RendezvousConnectionError|RendezvousTimeoutError|"
                           r"Connection reset by peer|Address already in use")


def torchrun(tmp, phase: str) -> subprocess.CompletedProcess:
    """A torchrun of 2 processes: the ``first`` phase (rank 1 dies in its last run) or the ``resume``.

    ``--standalone``: torchrun's own store binds a free port itself (a port picked here and closed before torchrun
    binds it can be taken meanwhile by another test's launch). A launch whose processes failed to connect (gloo's
    "Connection refused" was seen once at load 7) is retried once; nothing ran in it, the group never formed."""
    driver = tmp / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if os.path.exists("/sys/class/net/lo"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the processes talk over the loopback, whatever the hostname says
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--nnodes", "1",
            "--monitor-interval", "0.1", str(driver), str(tmp), os.path.dirname(__file__), phase,
            json.dumps(cli_argv(tmp, "cli-sharded"))]
    for attempt in (1, 2):
        done = run_launcher(argv, env, timeout=240)
        connected = (done.returncode == 0 or re.search(r"exitcode\s*:\s*17", done.stderr)
                     or not NOT_CONNECTED.search(done.stderr))
        if connected or attempt == 2:
            return done
        print(f"torchrun ({phase}) did not connect its processes; launching again:\n{done.stderr[-2000:]}")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, digits, digits_model):
    tmp = tmp_path_factory.mktemp("shard")
    _, _, x, y = digits
    (tmp / "state").mkdir()
    r = CliRunner().invoke(app, ["train", "--dataset", "digits", "--model", "mlp", "--recipe", "standard",
                                 "--epochs", "1", "--n-train", "400", "--quiet", "--threads", "1", "--out",
                                 str(tmp / "run")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    torch.save({"state": digits_model.state_dict(), "x": x, "y": y, "eps": EPS, "n": N, "batch": BATCH,
                "seed": SEED, "suite": SUITE, "kwargs": KWARGS, "start": START}, tmp / "inputs.pt")
    first = torchrun(tmp, "first")
    assert first.returncode != 0 and re.search(r"exitcode\s*:\s*17", first.stderr), first.stderr[-3000:]
    resumed = torchrun(tmp, "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # rank 1 was killed, and the restart found the states one attack apart: rank 0 had saved the merge of pgd
    # (next: attack 2), rank 1 had died before saving it
    assert json.loads((tmp / "at_restart.json").read_text()) == {"r0of2.state": 2, "r1of2.state": 1}
    return tmp


def reference(digits, digits_model, individual: bool):
    _, _, x, y = digits
    return evaluate(digits_model, (x, y), ThreatModel("linf", EPS), SUITE, n=N, batch_size=BATCH, seed=SEED,
                    attack_kwargs=KWARGS, keep_adv=True, individual=individual)


def assert_same(got: dict, ref, approx: frozenset = frozenset()) -> None:
    assert torch.equal(got["robust"], ref.robust)
    assert torch.equal(got["x_adv"], ref.x_adv)  # bit for bit, every adversarial example
    assert got["robust_accuracy"] == ref.robust_accuracy
    if getattr(ref, "broken_by", None) is not None:  # which attack broke each point
        assert torch.equal(got["broken_by"], ref.broken_by)
    for name, rec in ref.per_attack.items():
        for key in rec.keys() - {"seconds"}:  # accuracy, cumulative_accuracy, n, broke
            if key in approx and rec[key] is not None:
                assert got["per_attack"][name][key] == pytest.approx(rec[key], rel=1e-12, abs=1e-12), (name, key)
            else:
                assert got["per_attack"][name][key] == rec[key], (name, key)


@pytest.mark.parametrize("individual", [False, True])
def test_two_processes_give_one_process_result(sharded, digits, digits_model, individual):
    ref = reference(digits, digits_model, individual)
    # the comparison can fail: several attacks each break points, so the worst case is a merge of them
    cum = [r["cumulative_accuracy"] for r in ref.per_attack.values()]
    assert cum[0] > cum[1] > cum[-1] > 0 and ref.clean_accuracy > cum[0]
    assert_same(torch.load(sharded / f"plain-{individual}.pt", weights_only=False), ref)


def test_a_randomized_model_gets_the_same_draws(sharded, digits, digits_model):
    """A model that draws noise in its forward pass: evaluate seeds torch's generator per (attack, batch), and
    the shards draw the same (checked that it can fail: with the seeding removed from armor.shard, the per-point
    flags differ)."""
    _, _, x, y = digits
    ref = evaluate(Noisy(digits_model), (x, y), ThreatModel("linf", EPS), ["fgsm", "pgd"], n=N, batch_size=BATCH,
                   seed=SEED, keep_adv=True)
    assert_same(torch.load(sharded / "noisy.pt", weights_only=False), ref)


def test_a_score_gives_the_same_scores(sharded, digits, digits_model):
    """``score=`` (expected correctness; here the true class's probability where the prediction is right) and
    ``start=``: the scores merge by their minimum, the examples come from the process that lowered each point last
    (a point's score goes down in several attacks, on different processes). Checked that it can fail: with every
    process's examples of every point it ever lowered summed, the examples differ."""
    _, _, x, y = digits
    ref = evaluate(digits_model, (x, y), ThreatModel("linf", EPS), SUITE[:3], n=N, batch_size=BATCH, seed=SEED,
                   attack_kwargs={"apgd-ce": KWARGS["apgd-ce"]}, keep_adv=True,
                   score=true_class_probability, start=START)
    got = torch.load(sharded / "score.pt", weights_only=False)
    assert torch.equal(got["score"], ref.score)
    assert int((ref.broken_by >= 0).sum()) > 0 and len(set(ref.broken_by.tolist()) - {-1}) == 3  # every attack lowers some
    # the sums of scores are added in another order over two processes: equal up to float64 rounding
    assert_same(got, ref, approx={"broke", "accuracy"})


def test_resumed_sharded_run_gives_the_same_result(sharded, digits, digits_model):
    assert_same(torch.load(sharded / "resumed.pt", weights_only=False), reference(digits, digits_model, False))


def test_armor_evaluate_under_torchrun_writes_one_process_results(sharded):
    """`torchrun -m armor evaluate` (rank 0 writes, the other process's state file is gone) against plain
    `armor evaluate` in this process."""
    r = CliRunner().invoke(app, cli_argv(sharded, "cli-single"), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    one, two = (json.loads((sharded / d / "results.json").read_text()) for d in ("cli-single", "cli-sharded"))
    assert two["robust_accuracy"] == one["robust_accuracy"] and two["clean_accuracy"] == one["clean_accuracy"]
    for name, rec in one["per_attack"].items():
        assert {k: v for k, v in rec.items() if k != "seconds"} == \
            {k: v for k, v in two["per_attack"][name].items() if k != "seconds"}, name
    assert one["per_attack"]["fgsm"]["cumulative_accuracy"] > one["robust_accuracy"] > 0
    assert sorted(p.name for p in (sharded / "cli-sharded").iterdir()) == ["results.json"]


def test_one_process_is_evaluate(digits, digits_model):
    """Without a process group evaluate_sharded is armor.evaluate itself."""
    _, _, x, y = digits
    a = evaluate_sharded(digits_model, (x, y), ThreatModel("linf", EPS), ["fgsm", "pgd"], n=30, batch_size=BATCH,
                         seed=SEED, keep_adv=True)
    b = evaluate(digits_model, (x, y), ThreatModel("linf", EPS), ["fgsm", "pgd"], n=30, batch_size=BATCH,
                 seed=SEED, keep_adv=True)
    assert torch.equal(a.robust, b.robust) and torch.equal(a.x_adv, b.x_adv)
