"""The one training loop. Every recipe is a batch loss plugged into it (see :mod:`armor.training.recipes`).

Per epoch the loop shuffles with its own data generator, runs ``recipe.step`` on each minibatch (sharded across
processes under torchrun), counts per-example forward and backward passes exactly (forward hooks on the model,
attack passes included), validates clean and PGD robust accuracy on a held-out split, keeps the best and the
last weights, and checkpoints a resumable state every epoch and every ``checkpoint_every`` batches.

Resume is bit-exact: the state holds the weights, the optimizer, the schedule position, the epoch's data
order, every generator (data order, attacks, torch's CPU RNG) and the recipe's own state (Free-AT's carried
perturbation), and the loop restarts at the batch after the checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from ..attacks import pgd
from ..engine import as_xy, attack_batches, predict_logits
from ..threat import ThreatModel, check_inputs
from ..utils import atomic_write_text, dump_toml
from . import checkpoint as ckpt
from .recipes import BatchStats, Recipe, make_recipe

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "cyclic", "onecycle", "multistep")
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adam": 0.0, "adamw": 1e-2}
STATE_VERSION = 1


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss (or the weights) became NaN or infinite."""


# ---------------------------------------------------------------------------------------------- small pieces
def derive_seed(seed: int, *tags: Any) -> int:
    """An independent 63-bit seed for each (seed, tag...) stream, stable across runs and platforms."""
    digest = hashlib.sha256(repr((int(seed),) + tags).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def lr_factor(schedule: str, t: float) -> float:
    """Multiplier of the base learning rate at training progress ``t`` in [0, 1].

    ``cyclic`` is the triangle of Wong et al. 2020 (0 -> max at 2/5 -> 0); ``onecycle`` warms up along a
    cosine from max/25 over the first 30% and anneals to max/2.5e5 (torch's OneCycleLR defaults);
    ``multistep`` divides by 10 at 50% and 75% (Madry et al., Rice et al.).
    """
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "cyclic":
        return t / 0.4 if t < 0.4 else max(0.0, (1 - t) / 0.6)
    if schedule == "onecycle":
        lo, end = 1 / 25, 1 / 25 / 1e4
        if t < 0.3:
            return lo + (1 - lo) * 0.5 * (1 - math.cos(math.pi * t / 0.3))
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * (t - 0.3) / 0.7))
    if schedule == "multistep":
        return 1.0 if t < 0.5 else 0.1 if t < 0.75 else 0.01
    raise ValueError(f"unknown lr_schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")


class PassCounter:
    """Counts per-example forward and backward passes through a model, attacks included.

    A forward hook adds the batch size on every call; when the output is part of a graph, a tensor hook on it
    adds the batch size again each time a backward pass (``.backward()`` or ``autograd.grad``) flows through.
    """

    def __init__(self) -> None:
        self.forward = 0
        self.backward = 0
        self._handle = None

    def attach(self, model: nn.Module) -> "PassCounter":
        def hook(module, inputs, output):
            n = int(inputs[0].shape[0]) if inputs and torch.is_tensor(inputs[0]) else 0
            self.forward += n
            if torch.is_tensor(output) and output.requires_grad:
                output.register_hook(lambda grad: self._count_backward(n))

        self._handle = model.register_forward_hook(hook)
        return self

    def _count_backward(self, n: int) -> None:
        self.backward += n

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


@dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    created: bool = False

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def _setup_distributed(device: Optional[torch.device]) -> _Dist:
    """Join torchrun's process group (:func:`armor.shard.init_from_env`: nccl for cuda, gloo otherwise) for the
    trainer's ``device``; ``None`` picks cuda when there is one, as :meth:`Trainer._prepare` does."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _Dist()
    import torch.distributed as dist

    from ..shard import init_from_env

    created = init_from_env(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    return _Dist(dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), created)


class StepContext:
    """What a recipe sees besides the model and the batch.

    Attributes:
        threat: the threat model for this batch (eps scaled by the warm-up). eps_scale: that scale in [0, 1].
        generator: the attack generator (saved with every checkpoint). attack_model: the bare model to attack
            (never the DDP wrapper). epoch: training progress in epochs (fractional). counter: the pass counter.
    """

    def __init__(self, trainer: "Trainer") -> None:
        self._t = trainer
        self.threat: Optional[ThreatModel] = trainer.threat
        self.eps_scale = 1.0
        self.generator: torch.Generator = trainer._attack_gen
        self.attack_model: nn.Module = trainer.model
        self.epoch = 0.0
        self.counter: PassCounter = trainer._counter
        self.shard_weight = 1.0

    def zero_grad(self) -> None:
        self._t._optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate a batch-mean loss; stop the run first if it is not finite on any process."""
        bad = 0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0
        if self._t._dist.world > 1:
            bad = self._t._dist.all_reduce_sum([bad])[0]
        if bad:
            raise NonFiniteLossError(f"the loss became {loss.item()}")
        if self.shard_weight != 1.0:  # shards of unequal size: DDP's mean of means must equal the global mean
            loss = loss * self.shard_weight
        loss.backward()

    def optimizer_step(self) -> None:
        """Set the scheduled learning rate, step the optimizer, and advance the schedule."""
        self._t._apply_lr()
        if self._t.max_grad_norm is not None:  # after backward (and DDP's all-reduce): the same on every process
            torch.nn.utils.clip_grad_norm_([p for g in self._t._optimizer.param_groups for p in g["params"]],
                                           self._t.max_grad_norm)
        self._t._optimizer.step()
        self._t._opt_step += 1
        self._t._update_ema()

    def all_reduce_grads(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """Average gradients computed outside DDP (e.g. AWP's probe) over processes, weighted by shard size."""
        if self._t._dist.world == 1:
            return grads
        import torch.distributed as dist

        out = []
        for g in grads:
            g = g * self.shard_weight
            dist.all_reduce(g)
            out.append(g / self._t._dist.world)
        return out


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        run_dir: the run directory (``None`` when training in memory). history: one dict per epoch (as in
        metrics.jsonl). best_epoch / best_score: the selected checkpoint and its validation score.
        status: ``"finished"`` or ``"early_stopped"``. train_seconds: wall time of the training passes.
        model: the trained model (last weights, or their average with ``ema_decay``; eval mode). best_state: the best weights (a state dict).
    """

    run_dir: Optional[Path]
    history: list[dict[str, Any]]
    best_epoch: Optional[int]
    best_score: Optional[float]
    status: str
    train_seconds: float
    model: nn.Module = field(repr=False)
    best_state: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)


def _fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _normalise(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _fresh_acc() -> dict[str, float]:
    """An epoch's running sums, all zero (checkpointed with the state, so a resumed epoch keeps its own)."""
    return {"loss": 0.0, "n": 0.0, "clean_correct": 0.0, "clean_n": 0.0, "adv_correct": 0.0,
            "adv_n": 0.0, "forward": 0.0, "backward": 0.0, "seconds": 0.0}


# ---------------------------------------------------------------------------------------------- the trainer
class Trainer:
    """Adversarial training with one loop and pluggable recipes, exact resume, and DDP under torchrun.

    Arguments:
        model: the ``nn.Module`` to train (logits out, inputs in the threat's bounds). Models built with
            :func:`armor.models.build_model` keep their spec, so :func:`armor.training.load` can rebuild them.
        train_data: an :class:`armor.data.Dataset` or an ``(x, y)`` pair.
        val_data: held-out data for the per-epoch robust validation; by default ``val_fraction`` of
            ``train_data`` is held out (a seeded split).
        recipe: a recipe name (``armor list recipes``) or a :class:`Recipe`; recipe_params go to
            :func:`make_recipe` with a name.
        threat: the :class:`armor.ThreatModel` trained and validated against (optional for ``standard``).
        epochs: epoch budget (Free-AT makes ceil(epochs / replays) passes). batch_size: the global batch.
        optimizer: ``"sgd"`` (momentum), ``"adam"`` or ``"adamw"``. lr, momentum, weight_decay: its
            settings (lr and weight_decay default per optimizer). lr_schedule: one of :data:`SCHEDULES`,
            default the recipe's (``cyclic`` for fast-at, ``cosine`` otherwise).
        seed: seeds the validation split, the data order and the attacks.
        out_dir: run directory (weights, metadata, metrics, resumable state); ``None`` trains in memory.
        val_fraction: share of train_data held out when val_data is not given. val_steps: PGD steps of the
            robust validation (0: clean validation only). val_batch_size: points per validation attack.
        patience: stop after this many epochs without a better validation score (``None``: never).
        eps_warmup: ramp eps linearly from 0 over the first ``eps_warmup`` epochs.
        ema_decay: keep an exponential moving average of the weights (against robust overfitting; Gowal et
            al. 2020): after optimizer step ``t`` (from 1), ``avg = d * avg + (1 - d) * w`` with
            ``d = min(ema_decay, (1 + t) / (10 + t))``, starting from the initial weights; integer buffers are
            copied from the model. The average is what is validated, selected, saved and returned; the raw
            weights keep training (both are in the resumable state). ``None`` (default): no averaging.
        max_grad_norm: clip the gradient's global l2 norm to this before every optimizer step (ART's FBF
            trainer clips to 0.5 on every step; against the instability of single-step training). ``None``
            (default): no clipping.
        checkpoint_every: also save the resumable state every this many batches.
        resume: continue the run in ``out_dir`` from its saved state (the settings must match).
        quiet: no progress bar. info: extra JSON metadata (``dataset`` ...). config: the resolved
            configuration to store as config.toml. device: where to train (default: the model's device).

    Examples:
        >>> trainer = Trainer(model, load_dataset("digits"), recipe="pgd-at",
        ...                   threat=ThreatModel("linf", 0.1), epochs=5, out_dir="runs/digits-pgd")
        >>> result = trainer.fit()
    """

    def __init__(self, model: nn.Module, train_data: Any, val_data: Any = None, *,
                 recipe: Union[str, Recipe] = "pgd-at", recipe_params: Optional[dict[str, Any]] = None,
                 threat: Optional[ThreatModel] = None, epochs: int = 10, batch_size: int = 128,
                 optimizer: str = "sgd", lr: Optional[float] = None, momentum: float = 0.9,
                 weight_decay: Optional[float] = None, lr_schedule: Optional[str] = None, seed: int = 0,
                 out_dir: Union[str, Path, None] = None, val_fraction: float = 0.1, val_steps: int = 10,
                 val_batch_size: int = 500, patience: Optional[int] = None, eps_warmup: int = 0,
                 ema_decay: Optional[float] = None, max_grad_norm: Optional[float] = None,
                 checkpoint_every: Optional[int] = None, resume: bool = False, quiet: bool = True,
                 info: Optional[dict[str, Any]] = None, config: Optional[dict[str, Any]] = None,
                 device: Union[str, torch.device, None] = None) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        self.recipe = make_recipe(recipe, **(recipe_params or {}))
        if threat is not None and not isinstance(threat, ThreatModel):
            raise ValueError(f"threat must be an armor.ThreatModel, got {type(threat).__name__}")
        if threat is None and self.recipe.adversarial:
            raise ValueError(f"recipe {self.recipe.name!r} trains against a threat model: pass "
                             f"threat=armor.ThreatModel('linf', eps=...)")
        for name, value, low in (("epochs", epochs, 1), ("batch_size", batch_size, 1), ("val_steps", val_steps, 0),
                                 ("val_batch_size", val_batch_size, 1), ("eps_warmup", eps_warmup, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name, value in (("patience", patience), ("checkpoint_every", checkpoint_every)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 (or None to turn it off), got {value!r}")
        for name, value, fits, want in (
                ("ema_decay", ema_decay, lambda v: 0 < v < 1,
                 "a number in (0, 1), e.g. 0.999 (or None to turn the weight average off)"),
                ("max_grad_norm", max_grad_norm, lambda v: 0 < v < math.inf,
                 "a positive finite number, e.g. 0.5 (or None for no gradient clipping)")):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not fits(value)):
                raise ValueError(f"{name} must be {want}, got {value!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        lr = DEFAULT_LR[optimizer] if lr is None else lr
        weight_decay = DEFAULT_WEIGHT_DECAY[optimizer] if weight_decay is None else weight_decay
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if lr == 0:
            raise ValueError("lr must be > 0")
        lr_schedule = lr_schedule or self.recipe.default_schedule
        if lr_schedule not in SCHEDULES:
            raise ValueError(f"unknown lr_schedule {lr_schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        if resume and out_dir is None:
            raise ValueError("resume needs the run directory: pass out_dir")

        x, y = as_xy(train_data, "train_data")
        check_inputs(x, y, None, threat)
        if val_data is None and val_fraction > 0:
            split = torch.randperm(len(y), generator=torch.Generator().manual_seed(derive_seed(seed, "val-split")))
            n_val = max(1, round(len(y) * val_fraction))
            val_idx, train_idx = split[:n_val].sort().values, split[n_val:].sort().values
            self.val_x, self.val_y = x[val_idx], y[val_idx]
            x, y = x[train_idx], y[train_idx]
        elif val_data is not None:
            self.val_x, self.val_y = as_xy(val_data, "val_data")
            check_inputs(self.val_x, self.val_y, None, threat)
        else:
            self.val_x, self.val_y = x[:0], y[:0]
        if len(y) == 0:
            raise ValueError("no training data left after holding out the validation split")
        self.x, self.y = x, y

        self.model = model
        self.threat = threat
        self.epochs, self.batch_size = epochs, batch_size
        self.optimizer_name, self.lr, self.momentum, self.weight_decay = optimizer, float(lr), float(momentum), float(weight_decay)
        self.lr_schedule = lr_schedule
        self.seed = int(seed)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.val_fraction, self.val_steps, self.val_batch_size = float(val_fraction), val_steps, val_batch_size
        self.patience, self.eps_warmup, self.checkpoint_every = patience, eps_warmup, checkpoint_every
        self.ema_decay = None if ema_decay is None else float(ema_decay)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.resume, self.quiet = resume, quiet
        self.info = dict(info or {})
        self.config = config
        self.device = torch.device(device) if device is not None else None

    # ------------------------------------------------------------------ configuration identity
    def hparams(self, world: int = 1) -> dict[str, Any]:
        """Everything that determines the trained weights; a resume must match it exactly."""
        return _normalise({
            "recipe": {"name": self.recipe.name, "params": self.recipe.params()},
            "threat_model": None if self.threat is None else self.threat.to_dict(),
            "epochs": self.epochs, "batch_size": self.batch_size,
            "optimizer": {"name": self.optimizer_name, "lr": self.lr, "momentum": self.momentum,
                          "weight_decay": self.weight_decay},
            "lr_schedule": self.lr_schedule, "seed": self.seed, "val_fraction": self.val_fraction,
            "val_steps": self.val_steps, "patience": self.patience, "eps_warmup": self.eps_warmup,
            "world_size": world, "n_train": len(self.y), "n_val": len(self.val_y),
            "data": _fingerprint(self.x, self.y, self.val_x, self.val_y),
            "architecture": getattr(self.model, "armor_spec", None), "dataset": self.info.get("dataset"),
            # only when set: runs saved before the option existed resume unchanged
            **({"ema_decay": self.ema_decay} if self.ema_decay is not None else {}),
            **({"max_grad_norm": self.max_grad_norm} if self.max_grad_norm is not None else {}),
        })

    # ------------------------------------------------------------------ public entry
    def fit(self) -> TrainResult:
        """Train (or resume) to the end of the epoch budget or until early stopping.

        Returns:
            A :class:`TrainResult`. Raises :class:`NonFiniteLossError` (after keeping the last good
            checkpoint) if the loss diverges, and ``ValueError`` for a resume that does not match the run.
        """
        self._dist = _setup_distributed(self.device)
        self._counter = PassCounter()
        try:
            return self._fit()
        finally:
            self._counter.detach()
            if self._dist.created:
                import torch.distributed as dist

                dist.destroy_process_group()

    # ------------------------------------------------------------------ setup
    def _prepare(self) -> None:
        d = self._dist
        if self.device is None:
            if d.world > 1 and torch.cuda.is_available():
                self.device = torch.device("cuda", d.local_rank)
            else:
                p = next(self.model.parameters(), None)
                self.device = p.device if p is not None else torch.device("cpu")
        dev = self.device
        self.model.to(dev)
        self.x, self.y = self.x.to(dev), self.y.to(dev)
        self.val_x, self.val_y = self.val_x.to(dev), self.val_y.to(dev)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.optimizer_name == "sgd":
            self._optimizer = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                                              weight_decay=self.weight_decay)
        elif self.optimizer_name == "adam":
            self._optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        else:
            self._optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        self._data_gen = torch.Generator().manual_seed(derive_seed(self.seed, "data"))
        self._attack_gen = torch.Generator(device=dev).manual_seed(derive_seed(self.seed, "attack", d.rank))
        n = len(self.y)
        rem = n % self.batch_size
        # Under DDP every process needs at least one example per batch: a last batch smaller than the world
        # is dropped (by every process alike).
        self._n_batches = n // self.batch_size + (1 if rem and rem >= d.world else 0)
        if self._n_batches == 0:
            raise ValueError(f"batch_size {self.batch_size} leaves no batch for {d.world} processes")
        self._loop_epochs = math.ceil(self.epochs / self.recipe.epoch_divisor)
        self._total_steps = self._loop_epochs * self._n_batches * self.recipe.updates_per_batch
        self._opt_step = 0
        self._ema: Optional[dict[str, torch.Tensor]] = None if self.ema_decay is None else \
            {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._hparams = self.hparams(d.world)

    def _apply_lr(self) -> None:
        t = (self._opt_step + 0.5) / self._total_steps
        lr = self.lr * lr_factor(self.lr_schedule, min(t, 1.0))
        for group in self._optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = lr

    # ------------------------------------------------------------------ weight average
    @torch.no_grad()
    def _update_ema(self) -> None:
        """After optimizer step ``t``: ``avg = d * avg + (1 - d) * w``, ``d = min(ema_decay, (1+t)/(10+t))``
        for floating-point entries; other buffers (counters) are copied."""
        if self._ema is None:
            return
        t = self._opt_step
        d = min(self.ema_decay, (1 + t) / (10 + t))
        for k, v in self.model.state_dict().items():
            if v.is_floating_point():
                self._ema[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self._ema[k].copy_(v)

    @contextlib.contextmanager
    def _averaged(self):
        """Inside: the model holds the averaged weights (a no-op without ``ema_decay``); the raw ones after."""
        if self._ema is None:
            yield
            return
        raw = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self._ema)
        try:
            yield
        finally:
            self.model.load_state_dict(raw)

    # ------------------------------------------------------------------ checkpoints
    def _local_state(self, acc: dict[str, float]) -> dict[str, Any]:
        state = {"attack_rng": self._attack_gen.get_state(), "torch_rng": torch.get_rng_state(),
                 "recipe": self.recipe.state_dict(), "acc": dict(acc)}
        if torch.cuda.is_available() and self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def _save_state(self, epoch: int, batch: int, perm: Optional[torch.Tensor], acc: dict[str, float]) -> None:
        """Collect every process's RNG/recipe state on rank 0 and write one resumable state file."""
        self._check_weights()
        local = self._dist.gather(self._local_state(acc))
        if self._dist.rank != 0 or self.out_dir is None:
            return
        ckpt.save_state(self.out_dir / ckpt.STATE, {
            "version": STATE_VERSION, "hparams": self._hparams, "epoch": epoch, "batch": batch,
            "opt_step": self._opt_step, "perm": perm, "model": ckpt.state_tensors(self.model),
            "optimizer": self._optimizer.state_dict(), "data_rng": self._data_gen.get_state(),
            "local": local, "history": self._history, "best": dict(self._best),
            "best_state": None, "train_seconds": self._train_seconds,
            "ema": None if self._ema is None else {k: v.detach().clone() for k, v in self._ema.items()},
        })
        self._last_good = f"epoch {epoch + 1 if batch else epoch}" + (f", batch {batch}" if batch else " end")

    def _check_weights(self) -> None:
        # A finite loss can still take a step to inf: never let such weights overwrite a good checkpoint.
        for p in self.model.parameters():
            if not torch.isfinite(p).all():
                raise NonFiniteLossError("the weights became non-finite")

    def _restore(self) -> tuple[int, int, Optional[torch.Tensor], dict[str, float]]:
        state = ckpt.load_state(self.out_dir / ckpt.STATE)
        if state.get("version") != STATE_VERSION:
            raise ckpt.CheckpointError(f"{self.out_dir / ckpt.STATE} has state version {state.get('version')}, "
                                       f"this armor writes {STATE_VERSION}")
        saved = state["hparams"]
        if saved != self._hparams:
            diffs = [f"{k}: {saved.get(k)!r} -> {self._hparams.get(k)!r}" for k in sorted(set(saved) | set(self._hparams))
                     if saved.get(k) != self._hparams.get(k)]
            raise ValueError(f"cannot resume {self.out_dir}: the configuration differs from the saved run ("
                             + "; ".join(diffs) + "); resume with the run's own settings or start a new --out")
        try:
            self.model.load_state_dict({k: v.to(self.device) for k, v in state["model"].items()})
            self._optimizer.load_state_dict(state["optimizer"])
            if self._ema is not None:
                self.model.load_state_dict(state["ema"])  # checks that the average fits the model too
                self._ema = {k: v.to(self.device).clone() for k, v in state["ema"].items()}
                self.model.load_state_dict({k: v.to(self.device) for k, v in state["model"].items()})
        except (RuntimeError, ValueError, KeyError) as e:
            raise ckpt.CheckpointError(f"{self.out_dir / ckpt.STATE} does not fit this model: {e}") from None
        self._data_gen.set_state(state["data_rng"])
        local = state["local"][self._dist.rank]
        self._attack_gen.set_state(local["attack_rng"])
        torch.set_rng_state(local["torch_rng"])
        if "cuda_rng" in local and self.device.type == "cuda":
            torch.cuda.set_rng_state(local["cuda_rng"], self.device)
        self.recipe.load_state_dict(local["recipe"])
        self._opt_step = state["opt_step"]
        self._history = state["history"]
        self._best = state["best"]
        self._train_seconds = state["train_seconds"]
        self._last_good = "the saved state"
        return state["epoch"], state["batch"], state["perm"], dict(local["acc"])

    # ------------------------------------------------------------------ run directory files
    def _metadata(self, status: str, message: Optional[str] = None) -> dict[str, Any]:
        from .. import __version__

        last = self._history[-1] if self._history else None
        meta = {
            "armor_version": __version__, "status": status,
            "architecture": getattr(self.model, "armor_spec", None),
            "threat_model": None if self.threat is None else self.threat.to_dict(),
            "recipe": {"name": self.recipe.name, "params": self.recipe.params()},
            "dataset": self.info.get("dataset"), "seed": self.seed,
            "training": {k: v for k, v in self._hparams.items()
                         if k not in ("recipe", "threat_model", "architecture", "dataset", "seed")},
            "epochs_completed": len(self._history), "train_seconds": round(self._train_seconds, 3),
            "checkpoints": {"best": ckpt.WEIGHTS["best"], "last": ckpt.WEIGHTS["last"],
                            "best_epoch": self._best.get("epoch")},
            "metrics": {"best_epoch": self._best.get("epoch"), "best_score": self._best.get("score"),
                        "selection": self._selection(), "last": last,
                        "forward": sum(h["forward"] for h in self._history),
                        "backward": sum(h["backward"] for h in self._history)},
        }
        meta.update({k: v for k, v in self.info.items() if k not in meta})
        if message:
            meta["message"] = message
        return _normalise(meta)

    def _selection(self) -> str:
        if len(self.val_y) == 0:
            return "last"
        return "val_robust_acc" if self.recipe.adversarial and self.val_steps > 0 and self.threat is not None \
            else "val_clean_acc"

    def _write_epoch_files(self, improved: bool, status: str) -> None:
        if self._dist.rank != 0 or self.out_dir is None:
            return
        ckpt.save_weights(self.out_dir / ckpt.WEIGHTS["last"], self.model)
        if improved:
            ckpt.save_weights(self.out_dir / ckpt.WEIGHTS["best"], self.model)
        atomic_write_text(self.out_dir / ckpt.METRICS, "".join(json.dumps(h) + "\n" for h in self._history))
        ckpt.write_metadata(self.out_dir, self._metadata(status))

    # ------------------------------------------------------------------ validation
    def _validate(self) -> dict[str, Any]:
        if len(self.val_y) == 0:
            return {}
        d = self._dist
        shards = torch.tensor_split(torch.arange(len(self.val_y), device=self.device), d.world)
        idx_all = shards[d.rank]
        model = self.model
        threats = [] if self.threat is None or self.val_steps == 0 else self.recipe.validation_threats(self.threat)
        gen = torch.Generator(device=self.device).manual_seed(derive_seed(self.seed, "validation", d.rank))
        f0, b0, t0 = self._counter.forward, self._counter.backward, time.perf_counter()
        clean = robust = 0
        attack = functools.partial(pgd, steps=self.val_steps, early_stop=True)
        was_training = model.training
        try:
            for i in range(0, len(idx_all), self.val_batch_size):
                idx = idx_all[i:i + self.val_batch_size]
                xb, yb = self.val_x[idx], self.val_y[idx]
                ok = predict_logits(model, xb, self.val_batch_size).argmax(1) == yb
                clean += int(ok.sum())
                for threat in threats:
                    alive = ok.nonzero().squeeze(1)
                    if alive.numel() == 0:
                        break
                    # the validation stream carries one generator through every batch (saved runs replay it)
                    for _, _, sub, x_adv in attack_batches(model, attack, xb, yb, threat, index=alive,
                                                           batch_size=self.val_batch_size, generator=gen,
                                                           name=f"pgd-{self.val_steps}"):
                        ok[sub] = predict_logits(model, x_adv, self.val_batch_size).argmax(1) == yb[sub]
                robust += int(ok.sum())
        finally:
            model.train(was_training)
        n, clean, robust, fwd, bwd = d.all_reduce_sum([float(len(idx_all)), float(clean), float(robust),
                                                       float(self._counter.forward - f0),
                                                       float(self._counter.backward - b0)])
        # Validation passes are not training cost: take them back out of the counter.
        self._counter.forward, self._counter.backward = f0, b0
        out = {"val_clean_acc": clean / n, "val_robust_acc": robust / n if threats else None,
               "val_n": int(n), "val_forward": int(fwd), "val_backward": int(bwd),
               "val_seconds": round(time.perf_counter() - t0, 4)}
        return out

    # ------------------------------------------------------------------ the loop
    def _fit(self) -> TrainResult:
        """:meth:`fit` inside the process group: set up, start or resume, run the epochs, close the run."""
        self._prepare()
        start_epoch, start_batch, perm, acc = self._start_or_resume()
        raw = self.model
        train_model = self._training_model()
        self._counter.attach(raw)
        ctx = StepContext(self)
        ctx.attack_model = raw
        best_state: dict[str, torch.Tensor] = {}
        if self.resume and self._best.get("epoch") is not None:
            best_state = ckpt.load_weights(self.out_dir / ckpt.WEIGHTS["best"])
        status, best_state = self._run_epochs(train_model, ctx, start_epoch, start_batch, perm, acc, best_state)
        if self._dist.rank == 0 and self.out_dir is not None:
            ckpt.write_metadata(self.out_dir, self._metadata(status))
        if self._ema is not None:  # the trained model is the average
            raw.load_state_dict(self._ema)
        raw.eval()
        return TrainResult(self.out_dir, list(self._history), self._best.get("epoch"), self._best.get("score"),
                           status, self._train_seconds, raw, best_state)

    def _start_or_resume(self) -> tuple[int, int, Optional[torch.Tensor], dict[str, float]]:
        """Set up a fresh run, or restore the saved one with ``resume``, and open the run directory.

        Returns where the loop starts: ``(epoch, batch, the epoch's data order or None, the epoch's sums)``.
        """
        self._history: list[dict[str, Any]] = []
        self._best: dict[str, Any] = {"score": None, "epoch": None, "since": 0}
        self._train_seconds = 0.0
        self._last_good = "none (the run stopped before its first checkpoint)"
        # what a divergence before the first optimizer step reports
        self._last_lr = self.lr * lr_factor(self.lr_schedule, 0.5 / self._total_steps)
        start: tuple[int, int, Optional[torch.Tensor], dict[str, float]] = (0, 0, None, _fresh_acc())
        if self.out_dir is None:
            return start
        if self.resume:
            start = self._restore()
        elif (self.out_dir / ckpt.STATE).exists():
            raise ValueError(f"{self.out_dir} already holds a training run: resume it (--resume "
                             f"{self.out_dir}) or choose another output directory")
        if self._dist.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.config is not None:
                atomic_write_text(self.out_dir / ckpt.CONFIG, dump_toml(self.config))
            ckpt.write_metadata(self.out_dir, self._metadata("running"))
        return start

    def _training_model(self) -> nn.Module:
        """The module the recipe steps: the model itself, or its DDP wrapper under torchrun (attacks and
        checkpoints always use the bare model)."""
        if self._dist.world == 1:
            return self.model
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _run_epochs(self, train_model: nn.Module, ctx: StepContext, start_epoch: int, start_batch: int,
                    perm: Optional[torch.Tensor], acc: dict[str, float], best_state: dict[str, torch.Tensor]
                    ) -> tuple[str, dict[str, torch.Tensor]]:
        """The epoch loop, from ``(start_epoch, start_batch)`` to the budget or early stopping.

        Returns the status (``"finished"`` or ``"early_stopped"``) and the best weights; a non-finite loss or
        weight ends the run with :meth:`_diverged`.
        """
        progress = _Progress(enabled=not self.quiet and self._dist.rank == 0, recipe=self.recipe.name,
                             val_steps=(self.val_steps if self.threat is not None else 0) if len(self.val_y) else None)
        epoch, batch = start_epoch, start_batch  # where the run is, for the divergence message
        try:
            with progress:
                for epoch in range(start_epoch, self._loop_epochs):
                    if self._stop_requested():  # a resumed run that had already run out of patience
                        return "early_stopped", best_state
                    # A resumed mid-epoch run keeps the saved order and sums; a new epoch draws its order.
                    if start_batch == 0 or perm is None:
                        perm = torch.randperm(len(self.y), generator=self._data_gen)
                        acc = _fresh_acc()
                    first, start_batch = start_batch, 0
                    self.model.train()
                    task = progress.start_epoch(epoch, self._loop_epochs, self._n_batches, first)
                    for batch in range(first, self._n_batches):
                        self._train_batch(train_model, ctx, epoch, batch, perm, acc)
                        progress.update(task, acc, self._dist.world)
                        # mid-epoch checkpoints only: the epoch's end saves its own state below
                        if (self.checkpoint_every and (batch + 1) % self.checkpoint_every == 0
                                and batch + 1 < self._n_batches):
                            self._save_state(epoch, batch + 1, perm, acc)
                    with self._averaged():  # validated, selected and saved: the weight average if any
                        improved, stop = self._close_epoch(epoch, acc, ctx, progress)
                        if improved:
                            best_state = ckpt.state_tensors(self.model)
                    self._save_state(epoch + 1, 0, None, _fresh_acc())
                    if stop:
                        return "early_stopped", best_state
        except NonFiniteLossError as e:
            raise self._diverged(e, epoch, batch) from None
        return "finished", best_state

    def _train_batch(self, train_model: nn.Module, ctx: StepContext, epoch: int, batch: int, perm: torch.Tensor,
                     acc: dict[str, float]) -> None:
        """One minibatch: this process's shard of it, the warm-up's eps, one ``recipe.step``, and its sums
        (loss, accuracies, passes and time) added to ``acc``."""
        d = self._dist
        t0 = time.perf_counter()
        f0, b0 = self._counter.forward, self._counter.backward
        idx = perm[batch * self.batch_size:(batch + 1) * self.batch_size].to(self.device)
        shard = torch.tensor_split(idx, d.world)[d.rank]
        ctx.shard_weight = len(shard) * d.world / len(idx)
        ctx.epoch = (epoch + batch / self._n_batches) * self.recipe.epoch_divisor
        if self.eps_warmup and self.threat is not None:
            ctx.eps_scale = min(1.0, ((epoch * self._n_batches + batch + 1) / self._n_batches)
                                * self.recipe.epoch_divisor / self.eps_warmup)
            ctx.threat = self.threat.scaled(ctx.eps_scale)
        stats = self.recipe.step(train_model, self.x[shard], self.y[shard], ctx)
        self._accumulate(acc, stats)
        acc["forward"] += self._counter.forward - f0
        acc["backward"] += self._counter.backward - b0
        acc["seconds"] += time.perf_counter() - t0

    def _close_epoch(self, epoch: int, acc: dict[str, float], ctx: StepContext, progress: "_Progress"
                     ) -> tuple[bool, bool]:
        """End-of-epoch bookkeeping before the state is saved: check the weights, record and validate the epoch
        (:meth:`_record_epoch`), and write the weights and metrics. Returns ``(improved, stop)``."""
        self._check_weights()
        record = self._record_epoch(epoch, acc, ctx)
        progress.epoch_done(record)
        stop = self._stop_requested()
        self._write_epoch_files(record["best"], "early_stopped" if stop else "running")
        return record["best"], stop

    def _diverged(self, error: NonFiniteLossError, epoch: int, batch: int) -> NonFiniteLossError:
        """The error that ends a diverged run, saying where and what to do; marks the run ``diverged`` (the
        last good checkpoint stays as it was)."""
        where = f"epoch {epoch + 1}, batch {batch + 1}"
        message = (f"training stopped: {error} at {where} (lr {self._last_lr:.3g}); the last good checkpoint "
                   f"({self._last_good}) is kept" + (f" in {self.out_dir}" if self.out_dir else "")
                   + ": lower the learning rate or check the data, then start again or resume")
        if self._dist.rank == 0 and self.out_dir is not None:
            ckpt.write_metadata(self.out_dir, self._metadata("diverged", message))
        return NonFiniteLossError(message)

    def _stop_requested(self) -> bool:
        return bool(self.patience) and self._best.get("since", 0) >= self.patience

    @staticmethod
    def _accumulate(acc: dict[str, float], s: BatchStats) -> None:
        acc["loss"] += s.loss * s.n
        acc["n"] += s.n
        if s.clean_correct is not None:
            acc["clean_correct"] += s.clean_correct
            acc["clean_n"] += s.n
        if s.adv_correct is not None:
            acc["adv_correct"] += s.adv_correct
            acc["adv_n"] += s.n

    def _record_epoch(self, epoch: int, acc: dict[str, float], ctx: StepContext) -> dict[str, Any]:
        """The epoch's metrics record (summed over processes, validated), appended to the history; updates the
        best-epoch selection and the patience count, and sets ``record["best"]``."""
        keys = ["loss", "n", "clean_correct", "clean_n", "adv_correct", "adv_n", "forward", "backward"]
        tot = dict(zip(keys, self._dist.all_reduce_sum([acc[k] for k in keys])))
        seconds = acc["seconds"]
        if self._dist.world > 1:  # the slowest process sets the pace
            import torch.distributed as dist

            t = torch.tensor([seconds], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            seconds = float(t)
        self._train_seconds += seconds
        n = tot["n"]
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": tot["loss"] / n,
            "clean_acc": tot["clean_correct"] / tot["clean_n"] if tot["clean_n"] else None,
            "robust_acc": tot["adv_correct"] / tot["adv_n"] if tot["adv_n"] else None,
        }
        val = self._validate()
        record.update(val)
        record.update({
            "seconds": round(seconds, 4), "images_per_s": round(n / seconds, 1) if seconds > 0 else None,
            "forward": int(tot["forward"]), "backward": int(tot["backward"]),
            # per-example passes relative to standard training (1 forward + 1 backward per example)
            "pass_ratio": round((tot["forward"] + tot["backward"]) / (2 * n), 4),
            "lr": self._last_lr, "eps": None if ctx.threat is None else ctx.threat.eps_scalar,
            "n": int(n),
        })
        sel = self._selection()
        score = None if sel == "last" else record.get(sel)
        best = self._best
        improved = best["score"] is None or score is None or score > best["score"] or \
            (score == best["score"] and (record["val_clean_acc"] or 0) > (best.get("clean") or 0))
        if improved:
            best.update(score=score, epoch=epoch + 1, since=0, clean=record.get("val_clean_acc"))
        elif (epoch + 1) * self.recipe.epoch_divisor > self.eps_warmup:  # no patience used up during warm-up
            best["since"] = best.get("since", 0) + 1
        record["best"] = improved
        self._history.append(_normalise(record))
        return record


# ---------------------------------------------------------------------------------------------- progress bar
class _Progress:
    """The training display on stderr (a no-op when disabled): a legend saying what every column means, then per
    epoch a bar with labelled columns (batches done, the epoch's running training loss, clean and robust accuracy
    on the training batches, images per second, time elapsed and left in the epoch), and one line per finished
    epoch with its validation figures."""

    def __init__(self, enabled: bool, recipe: str = "", val_steps: Optional[int] = None) -> None:
        self.enabled = enabled
        self.recipe, self.val_steps = recipe, val_steps
        self._p = None
        self._console: Any = None

    def legend(self) -> str:
        from rich.markup import escape

        val = ("no validation split" if self.val_steps is None else
               "validation on the held-out split: clean accuracy" + (
                   f" and robust accuracy under PGD-{self.val_steps}" if self.val_steps else ""))
        return (f"[dim]training{' ' + escape(self.recipe) if self.recipe else ''}. Columns: batches done/total in "
                "the epoch; loss = mean training loss so far this epoch; clean acc / robust acc = accuracy on this "
                "epoch's training batches, on the clean inputs / on the recipe's adversarial inputs (- when the "
                "recipe does not compute it); img/s = training images per second; time elapsed and time left "
                f"in the epoch (estimated). After each epoch: {val}.[/]")

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from rich.console import Console

            self._console = Console(stderr=True)
            if self._console.is_terminal:  # elsewhere (a log file) only the per-epoch lines
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

                self._console.print(self.legend())
                self._p = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(bar_width=12),
                                   TextColumn("batch {task.completed}/{task.total}"),
                                   TextColumn("loss {task.fields[loss]}"),
                                   TextColumn("clean acc {task.fields[clean]}"),
                                   TextColumn("robust acc {task.fields[robust]}"),
                                   TextColumn("{task.fields[ips]} img/s"), TimeElapsedColumn(),
                                   TextColumn("elapsed"), TimeRemainingColumn(), TextColumn("left"),
                                   console=self._console,
                                   speed_estimate_period=3600)  # slow batches still get an estimate
                self._p.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)

    def start_epoch(self, epoch: int, total: int, n_batches: int, done: int) -> Any:
        if self._p is None:
            return None
        return self._p.add_task("", total=n_batches, completed=done, epoch=f"{epoch + 1}/{total}", loss="-",
                                clean="-", robust="-", ips="-")

    def update(self, task: Any, acc: dict[str, float], world: int) -> None:
        if self._p is None:
            return
        pct = lambda a, b: f"{a / b:.1%}" if b else "-"  # noqa: E731
        ips = acc["n"] * world / acc["seconds"] if acc["seconds"] > 0 else 0
        self._p.update(task, advance=1, loss=f"{acc['loss'] / max(acc['n'], 1):.4f}",
                       clean=pct(acc["clean_correct"], acc["clean_n"]), robust=pct(acc["adv_correct"], acc["adv_n"]),
                       ips=f"{ips:,.0f}")

    def epoch_done(self, r: dict[str, Any]) -> None:
        if self._console is None:
            return
        f = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
        val = "" if self.val_steps is None else f", val clean acc {f(r.get('val_clean_acc'))}" + (
            f", val robust acc (PGD-{self.val_steps}) {f(r.get('val_robust_acc'))}" if self.val_steps else "")
        self._console.print(f"epoch {r['epoch']} done: train loss {r['loss']:.4f}{val}, {r['seconds']:.1f} s, "
                              f"{r['pass_ratio']:.2f}x the forward+backward passes of standard training"
                              + (" [bold](best so far)[/]" if r["best"] else ""), highlight=False)
