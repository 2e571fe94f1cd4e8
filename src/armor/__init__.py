"""armor: Adversarial Robustness: Measure, Optimize, Report.

    >>> import armor
    >>> threat = armor.ThreatModel("linf", eps=0.1)
    >>> x_adv = armor.attacks.pgd(model, x, y, threat, steps=20)
    >>> result = armor.evaluate(model, (x, y), threat, suite="standard")

This package is the library: threat models, attacks, the evaluator, training, metrics, data and models. It
knows no domain and no command line: domains (images, tables, ...) plug in through :mod:`armor.plugins`, and
the application (CLI, run directories, results, report, demos) lives in :mod:`armor.app`. Importing armor
changes nothing: no registry is filled until something is looked up.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import attacks, plugins, training
from .evaluate import EvalResult, evaluate
from .threat import Norm, ThreatModel
from .training import Trainer, load, load_metadata

__all__ = ["EvalResult", "Norm", "ThreatModel", "Trainer", "attacks", "evaluate", "load", "load_metadata",
           "plugins", "training", "__version__"]
