"""DDP: `torchrun --nproc_per_node 2` (gloo on CPU) trains the same model as one process with the same global
batch. Runtime: ~25 s on 2 busy cores.

The configuration is deterministic apart from floating-point reduction order (PGD without random start,
so the attack draws no per-process noise), and it exercises the sharded concatenated clean+adversarial
forward, unequal shards in the last batch (1131 examples, batch 64: 43 = 22 + 21), and AWP's manually
all-reduced weight gradient. Measured largest weight difference: 6e-8; tolerance 1e-5.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from armor.training import load_metadata, load_weights
from armor.app.train_cli import train_command

ARGS = {"dataset": "digits", "recipe": "awp", "steps": 3, "adv_ratio": 0.5, "random_start": False, "epochs": 2,
        "batch_size": 64}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "armor.app.train_cli",
            "--dataset", "digits", "--recipe", "awp", "--steps", "3", "--adv-ratio", "0.5", "--no-random-start",
            "--epochs", "2", "--batch-size", "64", "--quiet", "--out", str(root / "ddp")]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_command(**ARGS, out=str(root / "single"), quiet=True)
    finally:
        torch.set_num_threads(old)
    return root / "ddp", root / "single", proc.stdout


def test_two_processes_match_one_process(runs):
    ddp, single, stdout = runs
    a, b = load_weights(ddp / "last.safetensors"), load_weights(single / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-5), (k, (a[k] - b[k]).abs().max().item())
    ma = [json.loads(l) for l in (ddp / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(l) for l in (single / "metrics.jsonl").read_text().splitlines()]
    assert len(ma) == len(mb) == 2
    for ra, rb in zip(ma, mb):
        assert ra["n"] == rb["n"] == 1131
        assert ra["forward"] == rb["forward"] and ra["backward"] == rb["backward"]  # summed over processes
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-6)
        assert ra["clean_acc"] == rb["clean_acc"] and ra["robust_acc"] == rb["robust_acc"]
        assert ra["val_n"] == rb["val_n"] == 126  # the validation split is sharded, then summed
    assert stdout.count("wrote") == 1  # rank 0 alone reports (and writes)
    meta = load_metadata(ddp)
    assert meta["training"]["world_size"] == 2 and meta["status"] == "finished"


def test_resuming_a_ddp_run_with_another_world_size_fails(runs):
    ddp, _, _ = runs
    with pytest.raises(ValueError, match="world_size: 2 -> 1"):
        train_command(resume=ddp, quiet=True)
