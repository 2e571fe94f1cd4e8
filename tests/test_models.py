"""Models: built from specs, rebuilt exactly from model.armor_spec, normalise inside, return logits, train."""

import json

import pytest
import torch
from torch import nn

from armor.data import batches, load_dataset
from armor.data import dataset_spec
from armor.models import MODELS, Normalize, all_models, build_model, list_models, model_spec

SHAPES = [[1, 8, 8], [1, 28, 28], [3, 32, 32]]
SMALL = {"preact-resnet18": {"width": 8}}  # the paper's width 64 is slow on CPU; the structure is the same



def _spec(name, shape, **kw):
    return {"name": name, "input_shape": shape, "num_classes": 7, **SMALL.get(name, {}), **kw}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("shape", SHAPES)
def test_builds_returns_logits_and_rebuilds_exactly_from_its_spec(name, shape):
    torch.manual_seed(0)
    model = build_model(_spec(name, shape)).eval()
    x = torch.rand(5, *shape)
    out = model(x)
    assert out.shape == (5, 7)
    assert not torch.allclose(out.softmax(1).sum(1), out.sum(1)), "outputs look like probabilities, not logits"
    spec = json.loads(json.dumps(model.armor_spec))  # must survive being saved as JSON
    assert spec["name"] == name and spec["input_shape"] == shape and spec["mean"] == [0.0]
    twin = build_model(spec).eval()
    assert str(twin) == str(model)
    assert not torch.equal(twin(x), out)  # fresh weights differ ...
    twin.load_state_dict(model.state_dict())  # ... and the saved ones fit exactly
    assert torch.equal(twin(x), out)


@pytest.mark.parametrize("name", list(MODELS))
def test_initialisation_is_deterministic_under_manual_seed(name):
    def weights():
        torch.manual_seed(3)
        return build_model(_spec(name, [1, 8, 8])).state_dict()

    a, b = weights(), weights()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", list(MODELS))
def test_normalisation_is_the_first_layer_and_is_applied(name):
    shape = [3, 32, 32]
    torch.manual_seed(0)
    plain = build_model(_spec(name, shape)).eval()
    normed = build_model(_spec(name, shape, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])).eval()
    normed.load_state_dict(plain.state_dict() | {k: v for k, v in normed.state_dict().items() if "normalize" in k})
    x = torch.rand(4, *shape)
    assert not torch.allclose(plain(x), normed(x))
    # normalising the input by hand and feeding the identity-normalised model gives the same logits
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    assert torch.allclose(plain((x - mean) / std), normed(x), atol=1e-5)
    assert isinstance(next(normed.children()), Normalize)
    assert not any("normalize" in n for n, _ in normed.named_parameters()), "mean/std must not be trained"


def test_architectures_match_the_papers_parameter_counts():
    count = lambda spec: sum(p.numel() for p in build_model(spec).parameters())
    # Wong et al. 2020 MNIST net, and their PreAct ResNet-18 (final BatchNorm included) on CIFAR-10
    assert count({"name": "small-cnn", "input_shape": [1, 28, 28], "num_classes": 10}) == 166_406
    assert count({"name": "preact-resnet18", "input_shape": [3, 32, 32], "num_classes": 10}) == 11_172_170


def test_normalize_layer_broadcasts_per_channel_and_per_feature():
    n = Normalize([1.0, 2.0], [2.0, 4.0])
    assert torch.equal(n(torch.tensor([[3.0, 6.0]])), torch.tensor([[1.0, 1.0]]))
    img = torch.ones(1, 2, 2, 2)
    assert torch.equal(n(img)[0, 1], torch.full((2, 2), -0.25))
    assert torch.equal(Normalize()(img), img)
    with pytest.raises(ValueError, match="std > 0"):
        Normalize([0.0], [0.0])


def test_bad_specs_and_inputs_are_value_errors():
    with pytest.raises(ValueError, match="small-cnn"):
        build_model({"name": "resnet-9000", "input_shape": [1, 8, 8], "num_classes": 10})
    with pytest.raises(ValueError, match="missing.*num_classes"):
        build_model({"name": "mlp", "input_shape": [4]})
    with pytest.raises(ValueError, match="unknown option.*dropout"):
        build_model({"name": "mlp", "input_shape": [4], "num_classes": 2, "dropout": 0.5})
    with pytest.raises(ValueError, match="image input_shape"):
        build_model({"name": "small-cnn", "input_shape": [30], "num_classes": 2})
    with pytest.raises(ValueError, match="too small"):
        build_model({"name": "small-cnn", "input_shape": [1, 2, 2], "num_classes": 2})
    with pytest.raises(ValueError, match="1 or 3 entries"):
        build_model({"name": "cnn4", "input_shape": [3, 8, 8], "num_classes": 2, "mean": [0.1, 0.2]})
    with pytest.raises(ValueError, match="num_classes"):
        build_model({"name": "mlp", "input_shape": [4], "num_classes": 1})
    model = build_model({"name": "small-cnn", "input_shape": [1, 8, 8], "num_classes": 10})
    with pytest.raises(ValueError, match="expects N×1×8×8 input, got 2×1×28×28"):
        model(torch.rand(2, 1, 28, 28))


def test_registry_helpers():
    assert [n for n, _ in list_models()] == list(all_models()) and set(MODELS) <= set(all_models())
    assert dataset_spec("digits").default_model == "small-cnn"
    assert dataset_spec("cifar10").default_model == "preact-resnet18"
    assert dataset_spec("breast-cancer").default_model == "mlp"
    ds = load_dataset("breast-cancer", "test")
    model = build_model(model_spec("mlp", ds, hidden=[16]))
    assert model.armor_spec == {"name": "mlp", "input_shape": [30], "num_classes": 2, "mean": [0.0], "std": [1.0],
                                "hidden": [16]}
    assert model(ds.x).shape == (len(ds), 2)


def test_small_cnn_learns_digits():
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    torch.manual_seed(0)
    model = build_model(model_spec("small-cnn", tr))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(15):
        for xb, yb in batches(tr.x, tr.y, 64, shuffle=True, generator=g):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    with torch.no_grad():
        acc = (model.eval()(te.x).argmax(1) == te.y).float().mean().item()
    assert acc > 0.9, acc
