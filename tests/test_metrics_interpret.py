"""Saliency, Etmann alignment and the adversarial gallery. Runtime ~4 s on 2 busy cores (one quick PGD training)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import armor
from armor.attacks import pgd
from armor.metrics import (adversarial_gallery, alignment_scores, gradient_alignment, interpretability_artifacts,
                           saliency)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def robust_model(digits_pgd_model):
    return digits_pgd_model


def _linear(seed=0, k=10, d=64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, k)).eval()


def test_saliency_of_a_linear_model_is_exact(digits):
    _, _, x, y = digits
    x, y = x[:50], y[:50]
    lin = _linear()
    w = lin[1].weight.detach()
    logit_grad = saliency(lin, x, y, kind="logit", absolute=False)
    assert torch.allclose(logit_grad.flatten(1), w[y], atol=1e-6)
    # d CE / dx = W^T (softmax - onehot)
    p = torch.softmax(lin(x), dim=1).detach()
    expect = (p - nn.functional.one_hot(y, 10).float()) @ w
    assert torch.allclose(saliency(lin, x, y, absolute=False).flatten(1), expect, atol=1e-6)
    assert torch.equal(saliency(lin, x, y), saliency(lin, x, y, absolute=False).abs())
    # each sample's gradient is its own: batching does not mix them
    assert torch.allclose(saliency(lin, x, y, batch_size=7), saliency(lin, x, y), atol=1e-7)


@pytest.mark.parametrize("training", [True, False])
def test_saliency_leaves_the_model_untouched(model, digits, training):
    _, _, x, y = digits
    model.train(training)
    params = list(model.parameters())
    params[0].requires_grad_(False)
    before = [p.detach().clone() for p in params]
    saliency(model, x[:20], y[:20])
    alignment_scores(model, x[:20], y[:20])
    assert model.training is training
    assert [p.requires_grad for p in params] == [False] + [True] * (len(params) - 1)
    assert all(p.grad is None for p in params)
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_alignment_of_a_linear_model_matches_numpy(digits):
    _, _, x, y = digits
    x, y = x[:40], y[:40]
    lin = _linear(seed=1)
    w = lin[1].weight.detach().double().numpy()
    xf = x.flatten(1).double().numpy()
    g = w[y.numpy()]
    inner = (xf * g).sum(1)
    ref_align = np.abs(inner) / np.linalg.norm(g, axis=1)
    ref_cos = inner / (np.linalg.norm(g, axis=1) * np.linalg.norm(xf, axis=1))
    a, c = alignment_scores(lin, x, y)
    assert np.allclose(a.numpy(), ref_align, rtol=1e-5) and np.allclose(c.numpy(), ref_cos, rtol=1e-5, atol=1e-7)
    pred = lin(x).argmax(1)
    a_pred, _ = alignment_scores(lin, x, target="predicted")
    g_pred = w[pred.numpy()]
    assert np.allclose(a_pred.numpy(), np.abs((xf * g_pred).sum(1)) / np.linalg.norm(g_pred, axis=1), rtol=1e-5)
    summary = gradient_alignment(lin, x, y)
    json.dumps(summary)
    assert summary["alignment"] == pytest.approx(ref_align.mean(), rel=1e-5)
    assert summary["n"] == 40 and summary["n_zero_gradient"] == 0
    with pytest.raises(ValueError, match="needs the labels"):
        alignment_scores(lin, x)


def test_zero_gradients_are_left_out_of_the_alignment(digits):
    _, _, x, y = digits

    class Rounded(nn.Module):
        def forward(self, x):
            return torch.round(x.flatten(1)[:, :10] * 3)

    s = gradient_alignment(Rounded(), x[:10], y[:10])
    assert s["n_zero_gradient"] == 10 and s["alignment"] is None


def test_adversarially_trained_model_has_higher_alignment(model, robust_model, digits):
    _, _, x, y = digits
    std = gradient_alignment(model, x, y)
    rob = gradient_alignment(robust_model, x, y)
    # Etmann et al. 2019: robust models have gradients that look more like the input.
    # Measured on these test digits: alignment 0.84 vs 1.19, cosine 0.22 vs 0.31.
    assert rob["alignment"] > 1.2 * std["alignment"]
    assert rob["cosine"] > std["cosine"] + 0.05
    assert rob["alignment_median"] > std["alignment_median"]
    # and it is robust: PGD at its training eps leaves most points correct, unlike the standard model
    threat = armor.ThreatModel("linf", 0.1)
    acc = lambda m: (m(pgd(m, x, y, threat, steps=20, generator=_gen())).argmax(1) == y).float().mean().item()
    assert acc(robust_model) > acc(model) + 0.15


def test_gallery_shows_real_adversarial_examples(model, digits):
    _, _, x, y = digits
    x, y = x[:100], y[:100]
    x_adv = pgd(model, x, y, armor.ThreatModel("linf", 0.15), steps=10, generator=_gen())
    gal = adversarial_gallery(model, x, x_adv, y, k=6)
    json.dumps({k: v for k, v in gal.items() if not torch.is_tensor(v)})
    with torch.no_grad():
        pc, pa = model(x).argmax(1), model(x_adv).argmax(1)
        conf_a = torch.softmax(model(x_adv).double(), 1).amax(1)
    success = (pc == y) & (pa != y)
    assert gal["n_successful"] == int(success.sum()) and len(gal["index"]) == 6
    assert gal["index"] == success.nonzero().squeeze(1)[:6].tolist()
    for j, i in enumerate(gal["index"]):
        assert gal["pred_clean"][j] == gal["y"][j] == int(y[i]) != gal["pred_adv"][j] == int(pa[i])
        assert gal["conf_adv"][j] == pytest.approx(conf_a[i].item()) and 0 < gal["conf_clean"][j] <= 1
        assert gal["linf"][j] <= 0.15 + 1e-6
    assert torch.equal(gal["x_adv"], x_adv[gal["index"]]) and gal["x"].shape == (6, 1, 8, 8)
    everything = adversarial_gallery(model, x, x_adv, y, k=3, successful_only=False)
    assert everything["index"] == [0, 1, 2]
    none = adversarial_gallery(model, x, x, y)
    assert none["n_successful"] == 0 and none["index"] == [] and none["x"].shape[0] == 0
    with pytest.raises(ValueError, match="shaped like x"):
        adversarial_gallery(model, x, x_adv[:5], y)


def test_artifacts_have_the_keys_the_report_reads(model, digits):
    _, _, x, y = digits
    art = interpretability_artifacts(model, x[:80], y[:80], armor.ThreatModel("linf", 0.15), k=4)
    assert {"alignment", "x", "y", "saliency", "gallery_x", "gallery_x_adv", "gallery_pred_clean",
            "gallery_pred_adv", "gallery_conf_adv"} <= set(art)
    assert art["saliency"].shape == (4, 1, 8, 8) and (art["saliency"] >= 0).all()
    assert art["alignment"] == pytest.approx(gradient_alignment(model, x[:80], y[:80])["alignment"])
    assert len(art["gallery_pred_adv"]) == art["gallery_x_adv"].shape[0] == 4
