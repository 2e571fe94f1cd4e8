"""recsys metrics and threat: HR@K / NDCG@K against a brute-force reference, the per-row L2 budget (absolute and
relative), and the worst case over attacks."""

import math

import numpy as np
import pytest
import torch

from armor.domains.recsys.attacks import worst_case
from armor.domains.recsys.metrics import KS, all_positions, hr_ndcg, positions, summarize
from armor.domains.recsys.models import MF, LightGCN
from armor.domains.recsys.threat import EmbeddingThreat


def _brute_force(scores, test_item, train_mask, k):
    """The protocol written out per user with Python lists: rank the held-out item among the items not in
    training, ties against it; HR = hit in the top k, NDCG = 1 / log2(position + 2)."""
    hrs, ndcgs = [], []
    for u in range(len(scores)):
        t = int(test_item[u])
        candidates = [j for j in range(len(scores[u])) if not train_mask[u][j] and j != t]
        position = sum(1 for j in candidates if scores[u][j] >= scores[u][t])
        hrs.append(1.0 if position < k else 0.0)
        ndcgs.append(math.log(2) / math.log(position + 2) if position < k else 0.0)
    return sum(hrs) / len(hrs), sum(ndcgs) / len(ndcgs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hr_and_ndcg_match_a_brute_force_reference(seed):
    g = torch.Generator().manual_seed(seed)
    n_users, n_items = 40, 30
    # scores rounded to one decimal: many ties, which must count against the held-out item
    scores = (torch.randn(n_users, n_items, generator=g) * 3).round() / 10
    train_mask = torch.rand(n_users, n_items, generator=g) < 0.3
    test_item = torch.randint(0, n_items, (n_users,), generator=g)
    train_mask[torch.arange(n_users), test_item] = False
    got = hr_ndcg(positions(scores, test_item, train_mask), KS)
    for k in KS:
        hr, ndcg = _brute_force(scores.tolist(), test_item.tolist(), train_mask.tolist(), k)
        assert got[f"hr@{k}"] == pytest.approx(hr, abs=1e-12)
        assert got[f"ndcg@{k}"] == pytest.approx(ndcg, abs=1e-12)
    assert 0 < got["hr@5"] < got["hr@20"] < 1  # the case exercises hits and misses


def test_training_items_never_outrank_and_ties_count_against():
    scores = torch.tensor([[5.0, 1.0, 1.0, 0.0]])
    mask = torch.tensor([[True, False, False, False]])
    # item 0 scores highest but is a training item; item 2 ties with the held-out item 1: position 1
    assert positions(scores, torch.tensor([1]), mask).tolist() == [1]
    assert hr_ndcg(torch.tensor([1]), (1, 2)) == {"hr@1": 0.0, "ndcg@1": 0.0, "hr@2": 1.0,
                                                  "ndcg@2": pytest.approx(1 / math.log2(3))}


def test_all_positions_uses_the_models_scores_in_chunks():
    model = MF(7, 9, 4, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(7, 9, dtype=torch.bool)
    mask[:, 0] = True
    test = torch.arange(7) % 8 + 1
    full = positions(model.score_all(), test, mask)
    assert torch.equal(all_positions(model, test, mask, chunk=3), full)


def test_lightgcn_propagation_matches_a_dense_reference():
    users, items = np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 0, 2])
    model = LightGCN(3, 3, 4, train_user=users, train_item=items, layers=2, generator=torch.Generator().manual_seed(0))
    A = torch.zeros(6, 6)
    for u, i in zip(users, items):
        A[u, 3 + i] = A[3 + i, u] = 1
    d = A.sum(1)
    norm = A / torch.sqrt(d[:, None] * d[None, :]).clamp_min(1e-30)
    e0 = torch.cat([model.user_emb, model.item_emb]).detach()
    final = (e0 + norm @ e0 + norm @ norm @ e0) / 3
    U, I = model.final()
    assert torch.allclose(torch.cat([U, I]), final, atol=1e-6)


def test_threat_radii_projection_and_containment():
    model = MF(5, 6, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.user_emb.mul_(100)
    rel = EmbeddingThreat(0.2, "relative")
    ru, ri = rel.radii(model)
    assert torch.allclose(ru, 0.2 * model.user_emb.norm(dim=1)) and torch.allclose(ri, 0.2 * model.item_emb.norm(dim=1))
    ab = EmbeddingThreat(0.5, "absolute", target="items")
    ru, ri = ab.radii(model)
    assert torch.all(ru == 0) and torch.all(ri == 0.5)
    big = (torch.randn(5, 3) * 10, torch.randn(6, 3) * 10)
    proj = ab.project(big, (ru, ri))
    assert ab.contains(proj, (ru, ri)) and not ab.contains(big, (ru, ri))
    assert torch.all(proj[0] == 0)  # an untargeted table cannot move
    assert torch.allclose(proj[1].norm(dim=1), torch.full((6,), 0.5))
    for bad in (-1, float("nan"), True):
        with pytest.raises(ValueError, match="eps"):
            EmbeddingThreat(bad)
    with pytest.raises(ValueError, match="unit"):
        EmbeddingThreat(0.1, "percent")
    assert EmbeddingThreat.from_dict(rel.to_dict()) == rel


def test_worst_case_is_the_strongest_single_attack_per_metric():
    per = {"a": {"hr@10": 0.3, "ndcg@10": 0.10}, "b": {"hr@10": 0.2, "ndcg@10": 0.12}}
    w = worst_case(per)
    assert w["hr@10"] == 0.2 and w["ndcg@10"] == 0.10 and w["attack"] == {"hr@10": "b", "ndcg@10": "a"}


def test_summarize_over_seeds():
    s = summarize([0.3, 0.1, 0.2, 0.4])
    assert s["median"] == pytest.approx(0.25) and (s["min"], s["max"]) == (0.1, 0.4) and s["n"] == 4
    assert s["iqr"] == [pytest.approx(np.percentile([0.1, 0.2, 0.3, 0.4], 25)),
                        pytest.approx(np.percentile([0.1, 0.2, 0.3, 0.4], 75))]
