"""The vision domain: image datasets in [0, 1], shift and interpretability measurements, the image demos.

Contributes, through :data:`DOMAIN`:

* datasets ``digits`` (sklearn, embedded), ``fashion-mnist`` (Debian's IDX files), ``mnist`` and ``cifar10``
  (your files), each with its usual architecture;
* measurements: accuracy under 10 corruptions x 5 severities (``shift``) and input-gradient saliency,
  gradient alignment and an adversarial gallery (``interpretability``);
* demos ``digits`` and ``fashion-mnist`` (standard vs PGD-AT vs Fast-AT, with the "different equipment"
  experiment).

eps is in input units (pixels in [0, 1]).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...plugins import DatasetSpec, Domain, Measurement, lazy
from .datasets import load_cifar10, load_digits, load_fashion_mnist, load_mnist, read_idx


def _shift(model, x, y, threat, *, seed: int = 0, batch_size: int = 500, **_: Any) -> tuple[dict, dict]:
    from ...metrics import shift_accuracy

    return {"shift": shift_accuracy(model, x, y, generator=torch.Generator().manual_seed(seed))}, {}


def _interpretability(model, x, y, threat, *, result=None, seed: int = 0, batch_size: int = 500,
                      **_: Any) -> tuple[dict, dict]:
    from ...metrics import interpretability_artifacts

    art = interpretability_artifacts(model, x, y, threat, x_adv=None if result is None else result.x_adv,
                                     seed=seed, batch_size=batch_size)
    fields = {"interpretability": {"alignment": art["alignment"], "cosine_alignment": art["cosine_alignment"]}}
    return fields, {k: (v.numpy() if torch.is_tensor(v) else np.asarray(v)) for k, v in art.items()}


DOMAIN = Domain(
    name="vision",
    description="images in [0, 1]: corruption and equipment shift, saliency, adversarial galleries",
    datasets={
        "digits": DatasetSpec(load_digits, "sklearn 8×8 handwritten digits, 1×8×8, 10 classes (1257 train / 540 test)",
                              default_model="small-cnn"),
        "fashion-mnist": DatasetSpec(load_fashion_mnist, "Fashion-MNIST IDX files, 1×28×28, 10 classes "
                                     "(apt: dataset-fashion-mnist)", default_model="small-cnn"),
        "mnist": DatasetSpec(load_mnist, "MNIST IDX files from --data-dir, 1×28×28, 10 classes",
                             default_model="small-cnn"),
        "cifar10": DatasetSpec(load_cifar10, "CIFAR-10 python batches from --data-dir, 3×32×32, 10 classes",
                               default_model="preact-resnet18"),
    },
    measurements=(Measurement("shift", _shift, option="shift"),
                  Measurement("interpretability", _interpretability, option="interpret")),
    demos={"digits": lazy("armor.domains.vision.demo:run_demo", "digits", description=(
               "sklearn digits (the default): standard vs PGD-AT vs Fast-AT, worst case, calibration, shift, "
               "saliency, claims (about 2 minutes)")),
           "fashion-mnist": lazy("armor.domains.vision.demo:run_demo", "fashion-mnist", description=(
               "Fashion-MNIST (Debian's dataset-fashion-mnist): the digits demo at scale (about 16 minutes)"))},
)

__all__ = ["DOMAIN", "load_cifar10", "load_digits", "load_fashion_mnist", "load_mnist", "read_idx"]
