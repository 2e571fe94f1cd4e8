"""recsys training and attacks on a small SYNTHETIC dataset (a planted low-rank preference, 150 users, 100 items,
15 interactions each): attacks stay in budget and lower HR by a measured margin, APR is more robust than BPR over
seeds, item promotion and profile injection raise their target, and a killed run resumes bit for bit."""

import json

import numpy as np
import pytest
import torch

from armor.domains.recsys.attacks import ATTACKS, Context, promote_item, run_attack
from armor.domains.recsys.data import leave_one_out, synthetic
from armor.domains.recsys.evaluate import measure
from armor.domains.recsys.injection import inject_profiles, injection_attack
from armor.domains.recsys.metrics import all_positions, hr_ndcg
from armor.domains.recsys.threat import EmbeddingThreat
from armor.domains.recsys.train import load_recommender, train_recommender

THREAT = EmbeddingThreat(0.4, "relative")
SETTINGS = {"epochs": 30, "batch_size": 256, "eps": 0.4, "eps_unit": "relative"}


@pytest.fixture(scope="module")
def data():
    return synthetic(150, 100, 15, seed=0)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """BPR and APR (the same settings), seeds 0, 1, 2."""
    root = tmp_path_factory.mktemp("recsys")
    return {(recipe, seed): train_recommender(data, recipe=recipe, seed=seed, out_dir=root / f"{recipe}{seed}",
                                              **SETTINGS)
            for seed in (0, 1, 2) for recipe in ("bpr", "apr")}


def test_attacks_stay_in_budget_leave_the_model_alone_and_repeat_under_a_seed(trained):
    run = trained[("bpr", 0)]
    ctx = Context.from_split(run.split)
    before = [p.detach().clone() for p in run.model.parameters()]
    for threat in (THREAT, EmbeddingThreat(0.5, "absolute"), EmbeddingThreat(0.3, "relative", "items")):
        radii = threat.radii(run.model)
        for name in ATTACKS:
            delta, _ = run_attack(name, run.model, threat, ctx, seed=4)  # checks containment itself
            assert threat.contains(delta, radii)
            norms = torch.cat([d.norm(dim=1) for d in delta])
            assert float(norms.max()) > 0.5 * float(torch.cat(radii).max())  # and uses the budget
            again, _ = run_attack(name, run.model, threat, ctx, seed=4)
            assert all(torch.equal(a, b) for a, b in zip(delta, again))
    for p, b in zip(run.model.parameters(), before):
        assert torch.equal(p, b) and p.grad is None and p.requires_grad


def test_gradient_attacks_lower_hr_by_a_measured_margin(trained):
    # Measured on seeds 0-5 of this setting (relative eps 0.4, 150 users: one user is 0.0067 of HR): clean HR@10
    # 0.32-0.38; the strongest of FGSM / PGD lowered it by 0.053-0.133 (seeds 0-2: 0.113, 0.100, 0.087), random
    # noise of the same size by 0.007-0.053 (seeds 0-2: 0.007, 0.033, 0.040), and the strongest gradient attack
    # stayed 0.047-0.106 below random on seeds 0-2. A broken attack (wrong sign, no step) does no better than noise.
    for seed in (0, 1, 2):
        run = trained[("bpr", seed)]
        m = measure(run.model, Context.from_split(run.split), THREAT, attacks=("random", "fgsm", "pgd"), seed=seed)
        strongest = min(m["per_attack"]["fgsm"]["hr@10"], m["per_attack"]["pgd"]["hr@10"])
        assert m["clean"]["hr@10"] - strongest >= 0.07, (seed, m["clean"]["hr@10"], strongest)
        assert strongest <= m["per_attack"]["random"]["hr@10"] - 0.02, (seed, m["per_attack"])
        assert m["worst"]["hr@10"] == min(v["hr@10"] for v in m["per_attack"].values())


def test_apr_is_more_robust_than_bpr_over_seeds(trained):
    # Measured on seeds 0-5 (30 epochs, adversarial from epoch 15, relative eps 0.4): APR's worst-case HR@10
    # (the strongest of random, FGSM, PGD) beat BPR's on every seed, by 0.120, 0.060, 0.067, 0.033, 0.047, 0.040
    # (median 0.053); BPR itself: 0.267, 0.240, 0.260, 0.280, 0.247, 0.267. Here seeds 0-2 must each gain and
    # their median gain must be >= 0.03 (measured 0.067). An APR whose perturbation is off (wrong sign, zero
    # radius) trains like BPR: gains about 0.
    gains = []
    for seed in (0, 1, 2):
        worst = {}
        for recipe in ("bpr", "apr"):
            run = trained[(recipe, seed)]
            worst[recipe] = measure(run.model, Context.from_split(run.split), THREAT, seed=seed)["worst"]["hr@10"]
        gains.append(worst["apr"] - worst["bpr"])
    assert min(gains) > 0 and float(np.median(gains)) >= 0.03, gains


def test_promotion_raises_the_target_within_its_budget(trained):
    run = trained[("bpr", 0)]
    ctx = Context.from_split(run.split)
    counts = np.bincount(run.split.train_item, minlength=run.split.n_items)
    target = int(np.flatnonzero(counts > 0)[np.argmin(counts[counts > 0])])  # the least popular item
    r = promote_item(run.model, THREAT, ctx, target)
    assert r["radius"] == pytest.approx(0.4 * float(run.model.item_emb[target].detach().norm()), rel=1e-6)
    # measured (seed 0, item 2, radius 0.91): mean position 44.1 -> 36.7 among 145 users, median shift 6
    assert r["position_after"]["mean"] < r["position_before"]["mean"] - 4
    assert r["median_rank_shift"] > 0


def test_injected_profiles_keep_the_real_split_and_promote_the_target(data, trained, tmp_path):
    counts = np.bincount(data.item, minlength=data.n_items)
    target = int(np.argsort(counts, kind="stable")[len(counts) // 4])  # an unpopular item
    poisoned = inject_profiles(data, target, n_fake=8, n_filler=10, seed=0)
    assert poisoned.n_users == data.n_users + 8 and len(poisoned) == len(data) + 8 * 11
    fake = poisoned.user >= data.n_users
    assert set(np.flatnonzero(np.bincount(poisoned.item[fake], minlength=data.n_items) == 8)) >= {target}
    s_clean, s_poison = leave_one_out(data, 0), leave_one_out(poisoned, 0)
    assert np.array_equal(s_poison.test_item[:data.n_users], s_clean.test_item)
    assert not np.any(s_poison.test_item[data.n_users:] == target)  # the target stays in the fake profiles
    with pytest.raises(ValueError, match="strategy"):
        inject_profiles(data, target, n_fake=1, n_filler=1, strategy="clever")
    with pytest.raises(ValueError, match="out of range"):
        inject_profiles(data, data.n_items, n_fake=1, n_filler=1)
    r = injection_attack(trained[("bpr", 0)], target, n_fake=8, n_filler=10, out_dir=tmp_path / "poisoned")
    # measured (item 37, 8 fake users of 11 ratings, popular fillers): the target's mean position among the 134
    # real users who had not met it went 40.1 -> 30.6, 45.8 -> 33.9, 44.6 -> 33.1 on seeds 0, 1, 2 and its top-10
    # share 11.9% -> 17.9%, 10.4% -> 20.1%, 9.0% -> 13.4%
    assert r["position_after"]["mean"] < r["position_before"]["mean"] - 5
    assert r["top10_after"] > r["top10_before"]
    assert r["budget"]["fake_users"] == 8 and r["budget"]["ratings_per_fake_user"] == 11


class Stop(Exception):
    pass


@pytest.mark.parametrize("stop_after", [2, 3])
def test_a_killed_run_resumes_bit_for_bit(tmp_path, stop_after):
    # APR with its adversarial phase from epoch 2: stopping after epoch 2 resumes exactly at the phase switch
    # (the Adagrad restart), after epoch 3 inside it. The checkpoint is written before the callback runs, so the
    # directory holds what a SIGKILL at that moment leaves (every write is atomic).
    d = synthetic(60, 40, 8, seed=2)
    opts = {"recipe": "apr", "epochs": 5, "adv_start": 2, "batch_size": 64, "eps": 0.3, "eps_unit": "relative",
            "seed": 7}
    whole = train_recommender(d, out_dir=tmp_path / "whole", **opts)

    def stop(epoch, record):
        if epoch == stop_after:
            raise Stop

    with pytest.raises(Stop):
        train_recommender(d, out_dir=tmp_path / "killed", callback=stop, **opts)
    assert (tmp_path / "killed" / "checkpoint.ckpt").exists()
    with pytest.raises(ValueError, match="already holds a recsys run"):
        train_recommender(d, out_dir=tmp_path / "killed", **opts)
    with pytest.raises(ValueError, match="settings differ"):
        train_recommender(d, out_dir=tmp_path / "killed", resume=True, **{**opts, "eps": 0.2})
    resumed = train_recommender(d, out_dir=tmp_path / "killed", resume=True, **opts)
    for (k, a), (_, b) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert (tmp_path / "whole" / "model.safetensors").read_bytes() == (tmp_path / "killed" / "model.safetensors").read_bytes()
    assert resumed.metadata["resume"]["resumes"] == 1 and not (tmp_path / "killed" / "checkpoint.ckpt").exists()
    losses = [[json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
              for name in ("whole", "killed")]
    assert len(losses[0]) == 5 and losses[0] == losses[1]


def test_training_refuses_bad_options(tmp_path, data):
    for kwargs, match in [({"recipe": "wgan"}, "unknown recsys recipe"), ({"model": "svd"}, "unknown recommender"),
                          ({"recipe": "apr", "eps": 0}, "eps and adv_weight must be > 0"),
                          ({"recipe": "apr", "epochs": 4, "adv_start": 4}, "adv_start"),
                          ({"adv_start": 1}, "recipe 'apr' only"), ({"lr": 0}, "lr must be"), ({"epochs": 0}, "epochs"),
                          ({"eps_unit": "pixels"}, "unit")]:
        with pytest.raises(ValueError, match=match):
            train_recommender(data, out_dir=tmp_path / "x", **kwargs)
    with pytest.raises(ValueError, match="in-memory"):
        train_recommender(data, out_dir=tmp_path / "mem", epochs=1)
        load_recommender(tmp_path / "mem")


def test_loading_checks_the_data_fingerprint(tmp_path, data):
    run = train_recommender(data, out_dir=tmp_path / "r", epochs=1)
    other = synthetic(150, 100, 15, seed=1)
    with pytest.raises(ValueError, match="fingerprint"):
        load_recommender(tmp_path / "r", interactions=other)
    again = load_recommender(tmp_path / "r", interactions=data)
    pos = all_positions(again.model, torch.from_numpy(again.split.test_item), again.train_mask)
    assert hr_ndcg(pos) == hr_ndcg(all_positions(run.model, torch.from_numpy(run.split.test_item), run.train_mask))


def test_lightgcn_learns_the_planted_preferences_and_attacks_lower_it(data, tmp_path):
    # Measured (seeds 0, 1, 2; 30 epochs): clean HR@10 0.387, 0.393, 0.393 (ranking at random: about 10/86 = 0.12;
    # MF-BPR: 0.380, 0.340, 0.347); the strongest of FGSM / PGD at relative eps 0.4 lowered it by 0.040, 0.086,
    # 0.046. APR on LightGCN did not raise the worst case (0.320, 0.273, 0.353 against BPR's 0.347, 0.307, 0.347).
    run = train_recommender(data, model="lightgcn", seed=0, out_dir=tmp_path / "lg", **SETTINGS)
    assert run.metadata["model"] == {"name": "lightgcn", "n_users": 150, "n_items": 100, "dim": 64, "layers": 2}
    m = measure(run.model, Context.from_split(run.split), THREAT, seed=0)
    assert m["clean"]["hr@10"] >= 0.3
    assert m["clean"]["hr@10"] - min(m["per_attack"]["fgsm"]["hr@10"], m["per_attack"]["pgd"]["hr@10"]) >= 0.02
    again = load_recommender(tmp_path / "lg", interactions=data)  # the graph is rebuilt from the split
    assert measure(again.model, Context.from_split(again.split), THREAT, attacks=("fgsm",), seed=0)["clean"] == m["clean"]


def test_a_sigkilled_run_resumes_bit_for_bit(tmp_path):
    # A real kill: the child trains, and after its epoch-3 checkpoint its callback announces itself and sleeps;
    # the parent SIGKILLs it there (no race: the checkpoint is on disk before the announcement).
    import os
    import signal
    import subprocess
    import sys
    import time

    opts = dict(recipe="apr", epochs=5, adv_start=1, batch_size=64, eps=0.3, eps_unit="relative", seed=11)
    code = f"""
import sys, time, torch
torch.set_num_threads(1)
from pathlib import Path
from armor.domains.recsys.data import synthetic
from armor.domains.recsys.train import train_recommender
def cb(epoch, record):
    if epoch == 3:
        Path(sys.argv[2]).write_text("3")
        time.sleep(120)
train_recommender(synthetic(60, 40, 8, seed=2), out_dir=sys.argv[1], callback=cb, **{opts!r})
"""
    marker = tmp_path / "at3"
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "killed"), str(marker)])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, "the child ended before its epoch-3 checkpoint"
            assert time.monotonic() < deadline, "the child did not reach epoch 3 in 120 s"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    d = synthetic(60, 40, 8, seed=2)
    resumed = train_recommender(d, out_dir=tmp_path / "killed", resume=True, **opts)
    whole = train_recommender(d, out_dir=tmp_path / "whole", **opts)
    assert (tmp_path / "whole" / "model.safetensors").read_bytes() == (tmp_path / "killed" / "model.safetensors").read_bytes()
    assert resumed.metadata["resume"]["resumes"] == 1
