"""Models built from JSON-serialisable specs, so a run can be saved as weights + spec and rebuilt.

    >>> model = build_model({"name": "small-cnn", "input_shape": [1, 28, 28], "num_classes": 10})
    >>> model.armor_spec["name"]
    'small-cnn'

Every model takes inputs in [0, 1], normalises them itself (``mean``/``std`` in the spec) and returns logits.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from torch import nn

from ..plugins import contributions
from .nets import CNN4, MLP, ArmorNet, Normalize, PreActBlock, PreActResNet18, SmallCNN

MODELS: dict[str, tuple[type[ArmorNet], str]] = {
    "mlp": (MLP, "fully connected, ReLU; hidden=[256, 256]; any input shape (tables)"),
    "small-cnn": (SmallCNN, "2 conv + 2 fc, Wong et al. 2020 MNIST net; images >= 4×4"),
    "cnn4": (CNN4, "4 conv + 3 fc, Carlini & Wagner 2017 MNIST net; images >= 4×4"),
    "preact-resnet18": (PreActResNet18, "PreAct ResNet-18 for CIFAR-10 (Rice et al. 2020); width=64"),
}

def all_models() -> dict[str, tuple[type[nn.Module], str]]:
    """Every architecture: armor's own (:data:`MODELS`) and those the domains contribute (:mod:`armor.plugins`)."""
    return contributions("models", MODELS)


def list_models() -> list[tuple[str, str]]:
    return [(name, desc) for name, (_, desc) in all_models().items()]


def model_spec(name: str, dataset: Any, **kwargs: Any) -> dict:
    """A spec whose input_shape and num_classes come from a :class:`armor.data.Dataset`."""
    return {"name": name, "input_shape": list(dataset.input_shape), "num_classes": dataset.num_classes, **kwargs}


def build_model(spec: dict) -> nn.Module:
    """Build the model a spec describes; ``model.armor_spec`` is the spec with every default filled in, so it
    rebuilds the same architecture even if a default changes later."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"a model spec is a dict like {{'name': 'small-cnn', 'input_shape': [1, 28, 28], "
                         f"'num_classes': 10}}, got {spec!r}")
    spec = dict(spec)
    name = spec.pop("name")
    known = all_models()
    if name not in known:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(known)}")
    cls = known[name][0]
    params = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    missing = [k for k, d in params.items() if d is inspect.Parameter.empty and k not in spec]
    unknown = sorted(set(spec) - set(params))
    if missing or unknown:
        raise ValueError(f"model {name!r}: " + "; ".join(
            ([f"missing {missing}"] if missing else []) + ([f"unknown option(s) {unknown}"] if unknown else []))
            + f"; it takes {list(params)}")
    shape, k = spec["input_shape"], spec["num_classes"]
    if (not isinstance(shape, (list, tuple)) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise ValueError(f"model {name!r}: input_shape must be a list of positive ints such as [1, 28, 28], got {shape!r}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ValueError(f"model {name!r}: num_classes must be an int >= 2, got {k!r}")
    full = {"input_shape": shape, "num_classes": k,
            **{p: spec.get(p, d) for p, d in params.items() if d is not inspect.Parameter.empty}}
    try:
        full = json.loads(json.dumps(full))  # tuples become lists, and anything unsaveable fails now, not at save
    except (TypeError, ValueError) as e:
        raise ValueError(f"model {name!r}: the spec must be JSON-serialisable ({e})") from None
    model = cls(**full)
    model.armor_spec = {"name": name, **full}
    return model


__all__ = ["MODELS", "ArmorNet", "Normalize", "all_models", "build_model", "list_models", "model_spec",
           "PreActBlock", "CNN4", "MLP", "PreActResNet18", "SmallCNN"]
