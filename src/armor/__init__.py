"""armor: Adversarial Robustness: Measure, Optimize, Report.

    >>> import armor
    >>> threat = armor.ThreatModel("linf", eps=0.1)
    >>> x_adv = armor.attacks.pgd(model, x, y, threat, steps=20)
    >>> result = armor.evaluate(model, (x, y), threat, suite="standard")
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import attacks, training
from .evaluate import EvalResult, evaluate
from .threat import Norm, ThreatModel
from .training import Trainer, load, load_metadata

from . import tabular  # noqa: E402  registers the constrained attacks, tabular datasets and cpgd-at

tabular.register()

__all__ = ["EvalResult", "Norm", "ThreatModel", "Trainer", "attacks", "evaluate", "load", "load_metadata",
           "tabular", "training", "__version__"]
