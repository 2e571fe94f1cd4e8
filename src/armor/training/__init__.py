"""Adversarial training: one loop (:class:`Trainer`), recipes as batch losses, exact resume, DDP.

    >>> from armor.training import Trainer, load
    >>> result = Trainer(model, train_data, recipe="pgd-at", threat=threat, epochs=5, out_dir="runs/x").fit()
    >>> model = load("runs/x")          # best checkpoint, eval mode
"""

from __future__ import annotations

from .checkpoint import CheckpointError, load, load_metadata, load_weights
from .recipes import (AWP, MART, RECIPES, TRADES, BatchStats, all_recipes, FastAT, FreeAT, Multi, PGDAT, Recipe, Standard,
                      list_recipes, make_recipe)
from .trainer import SCHEDULES, NonFiniteLossError, PassCounter, StepContext, Trainer, TrainResult

__all__ = ["AWP", "BatchStats", "CheckpointError", "FastAT", "FreeAT", "MART", "Multi", "NonFiniteLossError",
           "PGDAT", "PassCounter", "RECIPES", "Recipe", "SCHEDULES", "Standard", "StepContext", "TRADES",
           "TrainResult", "Trainer", "all_recipes", "list_recipes", "load", "load_metadata", "load_weights",
           "make_recipe"]
