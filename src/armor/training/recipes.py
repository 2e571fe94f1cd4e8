"""Training recipes: each one is a batch loss plugged into the one training loop.

A recipe splits its work in two halves, so that wrappers such as AWP can reuse any recipe:

* ``perturb(model, x, y, ctx)`` builds the adversarial inputs (attack passes only: the model is in eval mode
  with frozen parameters inside :func:`armor.attacks.attack_mode`, so BatchNorm statistics and parameter
  gradients are untouched);
* ``objective(model, x, y, x_adv, ctx)`` is the training loss on those inputs (train-mode forward).

``step(model, x, y, ctx)`` runs one optimisation step from the two; recipes that need a different update
(Free-AT replays a minibatch, AWP perturbs the weights around the update) override it, so the loop itself has
no special cases. ``ctx`` is the trainer's :class:`~armor.training.trainer.StepContext`: the current threat
model (after the eps warm-up), the attack generator, the epoch progress, and ``backward`` / ``optimizer_step``.

A recipe declares its parameters once, as the fields of a dataclass made with :func:`param`: name, type,
default, help text, value check and (where it differs from the name) the key of ``armor train``'s options.
The constructor, :meth:`Recipe.params`, ``make_recipe``'s validation, the run configuration, the CLI options
and their help text all derive from that declaration (:meth:`Recipe.declared_params`)::

    @dataclass(eq=False, repr=False)
    class MyAT(Recipe):
        name = "my-at"
        steps: int = param(10, "attack steps", check=check_int)
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import attack_mode, loss_and_grad, pgd
from ..threat import ThreatModel

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import StepContext


@dataclass
class BatchStats:
    """What one batch reports: mean loss, batch size, and correct counts on clean / adversarial inputs
    (``None`` when the recipe did not run that forward pass, e.g. no clean pass at ``adv_ratio=1``)."""

    loss: float
    n: int
    clean_correct: Optional[float] = None
    adv_correct: Optional[float] = None


def _correct(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.detach().argmax(1) == y).sum())


# ---------------------------------------------------------------------------------------------- value checks
# A check takes the parameter's name and a given (not None) value and returns the value to keep, or raises.
def check_ratio(name: str, value: Any) -> float:
    try:
        r = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= r <= 1.0 or math.isnan(r):
        raise ValueError(f"{name} must be in [0, 1] (the share of each batch's loss that comes from "
                         f"adversarial examples; 1.0 is Madry et al.), got {value!r}")
    return r


def check_int(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def check_pos(name: str, value: Any, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


check_nonneg = partial(check_pos, allow_zero=True)
check_count = partial(check_int, low=0)


def check_bool(name: str, value: Any) -> bool:
    return bool(value)


# ---------------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Param:
    """One declared recipe parameter, as the run configuration, the CLI and the help text see it.

    ``name`` is the recipe's argument; ``config_key`` the ``armor train`` option / config.toml key (usually the
    same). ``type`` is the option's type (bool, int, float or str). ``default_text`` says what a ``None``
    default means (e.g. "2.5 / steps"); ``choices`` lists the allowed values of a str parameter.
    """

    name: str
    type: type
    default: Any
    help: str
    config_key: str
    default_text: Optional[str] = None
    choices: Optional[tuple[str, ...]] = None

    def describe(self) -> str:
        """The help text with the allowed values and the default, e.g. "attack steps (default 10)"."""
        choices = f", one of {', '.join(self.choices)}" if self.choices else ""
        if self.default is None and self.default_text is None:
            return f"{self.help}{choices}"
        if self.default_text is not None:
            default = self.default_text
        elif isinstance(self.default, bool):
            default = str(self.default).lower()
        else:
            default = str(self.default)
        return f"{self.help}{choices} (default {default})"


def param(default: Any, help: str, *, config_key: Optional[str] = None, default_text: Optional[str] = None,
          check: Optional[Callable[[str, Any], Any]] = None, choices: Optional[Sequence[str]] = None,
          as_type: Optional[type] = None) -> Any:
    """Declare a recipe parameter: a dataclass field whose metadata the configuration, the CLI and
    :meth:`Recipe.__post_init__` read.

    Arguments:
        default: the default value (``None``: computed by the recipe; say how in ``default_text``).
        help: one line for ``armor train --help`` (the default is appended).
        config_key: the ``armor train`` option / config key when it differs from the field name.
        default_text: what the default is when it is not ``default`` itself (e.g. "2.5 / steps"); a ``None``
            default without it shows no default (say in ``help`` that the parameter is required).
        check: ``check(name, value) -> value``, applied to a given value (raises ``ValueError``).
        choices: the allowed values.
        as_type: the option's type when the field's annotation is not bool, int, float or str.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "config_key": config_key, "default_text": default_text, "check": check,
        "choices": None if choices is None else tuple(choices), "type": as_type})


_OPTION_TYPES = (bool, int, float, str)


def _option_type(annotation: Any, override: Optional[type], where: str) -> type:
    if override is not None:
        return override
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        annotation = args[0]  # Optional[T]
    if annotation in _OPTION_TYPES:
        return annotation
    raise TypeError(f"{where}: annotate it as bool, int, float or str (or Optional of one), or pass "
                    f"param(..., as_type=...)")


class Recipe:
    """Base class of the training recipes. Subclasses are dataclasses (``@dataclass(eq=False, repr=False)``)
    whose fields, declared with :func:`param`, are the recipe's parameters; they set ``name``/``description``
    and implement ``perturb`` and ``objective`` (or override ``step``).

    Class attributes read by the trainer: ``adversarial`` (select checkpoints on robust rather than clean
    validation accuracy), ``epoch_divisor`` (Free-AT: passes over the data per epoch budget),
    ``updates_per_batch`` (optimizer steps per minibatch) and ``default_schedule`` (learning-rate schedule).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    adversarial: ClassVar[bool] = True
    default_schedule: ClassVar[str] = "cosine"
    epoch_divisor: int = 1
    updates_per_batch: int = 1

    @classmethod
    def declared_params(cls) -> tuple[Param, ...]:
        """The recipe's parameters, from its dataclass fields (what make_recipe, the config and the CLI take)."""
        if not dataclasses.is_dataclass(cls):
            return ()
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            meta = f.metadata
            out.append(Param(
                name=f.name,
                type=_option_type(hints.get(f.name), meta.get("type"), f"parameter {f.name!r} of recipe {cls.name!r}"),
                default=None if f.default is dataclasses.MISSING else f.default,
                help=meta.get("help", ""), config_key=meta.get("config_key") or f.name,
                default_text=meta.get("default_text"), choices=meta.get("choices")))
        return tuple(out)

    def __post_init__(self) -> None:
        """Check the declared parameters: ``None`` means the default, ``choices`` and ``check`` apply."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                if f.default is not None and f.default is not dataclasses.MISSING:
                    setattr(self, f.name, f.default)
                continue
            choices, check = f.metadata.get("choices"), f.metadata.get("check")
            if choices is not None and value not in choices:
                raise ValueError(f"{self.name} {f.name} must be one of {', '.join(choices)}, got {value!r}")
            if check is not None:
                setattr(self, f.name, check(f.name, value))

    def params(self) -> dict[str, Any]:
        """The recipe's parameters as JSON-serialisable values (recorded in the run's metadata)."""
        if not dataclasses.is_dataclass(self):
            return {}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: "StepContext") -> Any:
        """Adversarial inputs for this batch (``None`` if the objective needs none)."""
        return None

    def objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: Any,
                  ctx: "StepContext") -> tuple[torch.Tensor, BatchStats]:
        raise NotImplementedError

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             ctx: "StepContext") -> tuple[torch.Tensor, BatchStats]:
        """The batch loss: ``objective`` on the inputs ``perturb`` made."""
        return self.objective(model, x, y, self.perturb(model, x, y, ctx), ctx)

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: "StepContext") -> BatchStats:
        """One optimisation step on a minibatch: loss, backward, optimizer step."""
        loss, stats = self.loss(model, x, y, ctx)
        ctx.zero_grad()
        ctx.backward(loss)
        ctx.optimizer_step()
        return stats

    def validation_threats(self, threat: ThreatModel) -> list[ThreatModel]:
        """Threat models the robust validation attacks (per-sample worst case over them)."""
        return [threat]

    def state_dict(self) -> dict[str, Any]:
        """State carried between batches (Free-AT's perturbation); saved with every checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


# ---------------------------------------------------------------------------------------------- standard
@dataclass(eq=False, repr=False)
class Standard(Recipe):
    name = "standard"
    description = "cross-entropy on clean inputs (the cost baseline: 1 forward + 1 backward per example)"
    adversarial = False

    def objective(self, model, x, y, x_adv, ctx):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        return loss, BatchStats(loss.item(), len(y), clean_correct=_correct(logits, y))


# ---------------------------------------------------------------------------------------------- shared parameters
PGD_STEP = 2.5  # the PGD-based recipes' default step size: PGD_STEP / steps, in units of eps


# One declaration per parameter that several recipes share (same help text, so `armor train --help` groups them).
def _adv_ratio(default: float = 0.5) -> Any:
    return param(default, "share of each batch's loss from adversarial examples, from 0 to 1; 1 is Madry et al.",
                 check=check_ratio)


def _steps() -> Any:
    return param(10, "attack steps", check=check_int)


def _pgd_step_size() -> Any:
    return param(None, "attack step size in units of eps", default_text=f"{PGD_STEP} / steps", check=check_pos)


def _random_start() -> Any:
    return param(True, "start the attack uniformly inside the ball", check=check_bool)


def _beta(what: str) -> Any:
    return param(6.0, f"weight of the {what}", check=check_nonneg)


# ---------------------------------------------------------------------------------------------- PGD-AT
class _PGDAttackMixin:
    steps: int
    step_size: Optional[float]
    random_start: bool

    def _pgd(self, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, ctx: "StepContext") -> torch.Tensor:
        rel = PGD_STEP / self.steps if self.step_size is None else self.step_size
        return pgd(ctx.attack_model, x, y, threat, steps=self.steps, step_size=rel * threat.eps_scalar,
                   random_start=self.random_start, generator=ctx.generator)


def _mixed_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor, advs: list[torch.Tensor],
              ratio: float) -> tuple[torch.Tensor, BatchStats]:
    """(1 - r) CE(clean) + r * mean_i CE(adv_i), in one forward pass over the concatenated inputs.

    The clean forward is skipped at r = 1 and the adversarial ones at r = 0, so no pass is wasted."""
    parts = ([x] if ratio < 1 else []) + (advs if ratio > 0 else [])
    logits = model(torch.cat(parts) if len(parts) > 1 else parts[0])
    chunks = logits.split(len(y))
    n = len(y)
    loss = logits.new_zeros(())
    clean_correct = adv_correct = None
    if ratio < 1:
        loss = loss + (1 - ratio) * F.cross_entropy(chunks[0], y)
        clean_correct = _correct(chunks[0], y)
        chunks = chunks[1:]
    if ratio > 0:
        adv_loss = sum(F.cross_entropy(c, y) for c in chunks) / len(chunks)
        loss = loss + ratio * adv_loss if ratio < 1 else adv_loss
        adv_correct = sum(_correct(c, y) for c in chunks) / len(chunks)
    return loss, BatchStats(loss.item(), n, clean_correct, adv_correct)


@dataclass(eq=False, repr=False)
class PGDAT(_PGDAttackMixin, Recipe):
    """PGD adversarial training: (1 - adv_ratio) * CE(clean) + adv_ratio * CE(PGD adversarial examples)."""

    name = "pgd-at"
    description = ("PGD adversarial training (Madry et al. 2018); adv_ratio r mixes the loss: "
                   "(1-r)*CE(clean) + r*CE(adv), r = 1 is Madry")

    adv_ratio: float = _adv_ratio()
    steps: int = _steps()
    step_size: Optional[float] = _pgd_step_size()
    random_start: bool = _random_start()

    def perturb(self, model, x, y, ctx):
        return None if self.adv_ratio == 0 else self._pgd(x, y, ctx.threat, ctx)

    def objective(self, model, x, y, x_adv, ctx):
        return _mixed_ce(model, x, y, [] if x_adv is None else [x_adv], self.adv_ratio)


# ---------------------------------------------------------------------------------------------- TRADES
def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(p || q) from log-probabilities."""
    return (p_log.exp() * (p_log - q_log)).sum(dim=1)


@dataclass(eq=False, repr=False)
class TRADES(Recipe):
    """TRADES: CE(clean) + beta * KL(f(x) || f(x_adv)); the attack maximises the KL."""

    name = "trades"
    description = "TRADES (Zhang et al. 2019): CE(clean) + beta * KL(f(x) || f(x_adv)), attack maximises the KL"

    beta: float = _beta("robustness (KL) term")
    steps: int = _steps()
    step_size: Optional[float] = _pgd_step_size()

    def perturb(self, model, x, y, ctx):
        threat = ctx.threat
        alpha = (PGD_STEP / self.steps if self.step_size is None else self.step_size) * threat.eps_scalar
        attack_model = ctx.attack_model
        with attack_mode(attack_model):
            with torch.no_grad():
                clean_log = F.log_softmax(attack_model(x), dim=1)

            def kl_loss(logits, _y, _target):
                return _kl(clean_log, F.log_softmax(logits, dim=1))

            # TRADES starts next to x: at x itself the KL has a zero gradient.
            noise = torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype)
            x_adv = threat.project(x + 0.001 * noise, x)
            for _ in range(self.steps):
                _, _, grad = loss_and_grad(attack_model, x_adv, y, kl_loss)
                x_adv = threat.project(threat.step(x_adv, grad, alpha), x)
        return x_adv.detach()

    def objective(self, model, x, y, x_adv, ctx):
        logits = model(torch.cat([x, x_adv]))
        clean, adv = logits.split(len(y))
        natural = F.cross_entropy(clean, y)
        robust = _kl(F.log_softmax(clean, dim=1), F.log_softmax(adv, dim=1)).mean()
        loss = natural + self.beta * robust
        return loss, BatchStats(loss.item(), len(y), _correct(clean, y), _correct(adv, y))


# ---------------------------------------------------------------------------------------------- MART
@dataclass(eq=False, repr=False)
class MART(_PGDAttackMixin, Recipe):
    """MART: boosted CE on PGD adversarial examples + beta * KL weighted by 1 - p_y(x)."""

    name = "mart"
    description = ("MART (Wang et al. 2020): boosted CE on adversarial examples + beta * KL weighted by "
                   "1 - p_y(x), emphasising misclassified examples")

    beta: float = _beta("misclassification-aware KL term")
    steps: int = _steps()
    step_size: Optional[float] = _pgd_step_size()
    random_start: bool = _random_start()

    def perturb(self, model, x, y, ctx):
        return self._pgd(x, y, ctx.threat, ctx)

    def objective(self, model, x, y, x_adv, ctx):
        logits = model(torch.cat([x, x_adv]))
        clean, adv = logits.split(len(y))
        adv_p = F.softmax(adv, dim=1)
        # The most likely wrong class on the adversarial input: its probability is pushed down (the "boost").
        wrong = adv.detach().scatter(1, y[:, None], float("-inf")).argmax(dim=1)
        bce = F.cross_entropy(adv, y) + F.nll_loss(torch.log(1.0001 - adv_p + 1e-12), wrong)
        clean_log = F.log_softmax(clean, dim=1)
        true_p = clean_log.exp().gather(1, y[:, None]).squeeze(1)
        kl = _kl(clean_log, torch.log(adv_p + 1e-12))
        loss = bce + self.beta * (kl * (1.0000001 - true_p)).mean()
        return loss, BatchStats(loss.item(), len(y), _correct(clean, y), _correct(adv, y))


# ---------------------------------------------------------------------------------------------- Fast-AT
@dataclass(eq=False, repr=False)
class FastAT(Recipe):
    """Fast adversarial training.

    ``variant`` ``"fgsm-rs"``: start uniformly in the eps ball, one signed step, project back to the ball.
    ``"n-fgsm"``: start uniformly in a ball of ``noise`` * eps, one step, and keep the result unprojected (only
    the data bounds apply): the paper's rule, whose perturbations may reach (noise + step_size) * eps.
    """

    name = "fast-at"
    description = ("single-step AT: FGSM with random start (Wong et al. 2020, step 1.25 eps) or N-FGSM "
                   "(de Jorge et al. 2022, noise 2 eps, step eps, no projection); cyclic learning rate")
    default_schedule = "cyclic"
    STEP_SIZES = {"fgsm-rs": 1.25, "n-fgsm": 1.0}  # default step per variant, in units of eps
    NOISE = 2.0  # n-fgsm's default noise radius, in units of eps

    variant: str = param("fgsm-rs", "single-step attack: FGSM with random start (Wong et al. 2020) or N-FGSM "
                         "(de Jorge et al. 2022)", config_key="fast_variant", choices=tuple(STEP_SIZES))
    step_size: Optional[float] = param(
        None, "attack step size in units of eps",
        default_text=", ".join(f"{s:g} for {v}" for v, s in STEP_SIZES.items()), check=check_pos)
    noise: Optional[float] = param(None, "n-fgsm only: radius of the initial noise in units of eps",
                                   default_text=f"{NOISE:g}", check=check_nonneg)

    def __post_init__(self):
        super().__post_init__()
        if self.step_size is None:
            self.step_size = self.STEP_SIZES[self.variant]
        if self.variant != "n-fgsm":
            if self.noise is not None:
                raise ValueError("fast-at noise applies to the n-fgsm variant only (fgsm-rs starts uniformly in "
                                 "the eps ball)")
        elif self.noise is None:
            self.noise = self.NOISE

    def params(self):
        p = {"variant": self.variant, "step_size": self.step_size}
        if self.noise is not None:
            p["noise"] = self.noise
        return p

    def perturb(self, model, x, y, ctx):
        threat = ctx.threat
        if self.variant == "fgsm-rs":
            start_threat, land_threat = threat, threat
        else:
            start_threat = threat.scaled(self.noise)
            # No projection to the eps ball: the widest ball the step can reach binds only the data bounds.
            land_threat = threat.scaled(self.noise + self.step_size)
        x0 = start_threat.random_init(x, ctx.generator) if start_threat.eps_scalar > 0 else x
        with attack_mode(ctx.attack_model):
            _, _, grad = loss_and_grad(ctx.attack_model, x0, y, _ce)
        return land_threat.project(threat.step(x0, grad, self.step_size * threat.eps_scalar), x).detach()

    def objective(self, model, x, y, x_adv, ctx):
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        return loss, BatchStats(loss.item(), len(y), adv_correct=_correct(logits, y))


def _ce(logits, y, target=None):
    return F.cross_entropy(logits, y, reduction="none")


# ---------------------------------------------------------------------------------------------- Free-AT
@dataclass(eq=False, repr=False)
class FreeAT(Recipe):
    """Free adversarial training: each minibatch is replayed ``replays`` times; the run makes
    ceil(epochs / replays) passes over the data, so its gradient steps match ``epochs`` epochs of standard
    training."""

    name = "free-at"
    description = ("Free-AT (Shafahi et al. 2019): each minibatch replayed m times, one forward-backward gives "
                   "both the weight and the input gradient, perturbation carried over; epochs divided by m")

    replays: int = param(4, "replays m of each minibatch; the epochs are divided by m", check=check_int)
    step_size: float = param(1.0, "signed-gradient step on the carried perturbation, in units of eps",
                             check=check_pos)

    def __post_init__(self):
        super().__post_init__()
        self.epoch_divisor = self.replays
        self.updates_per_batch = self.replays
        self.delta: Optional[torch.Tensor] = None

    def _carried(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.delta is None:
            return torch.zeros_like(x)
        d = self.delta.to(x)
        if d.shape[0] >= n:
            return d[:n]
        return torch.cat([d, torch.zeros((n - d.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)])

    def step(self, model, x, y, ctx):
        threat = ctx.threat
        delta = self._carried(x)
        loss_sum = correct = 0.0
        for _ in range(self.replays):
            x_adv = threat.project(x + delta, x).requires_grad_(True)
            logits = model(x_adv)
            loss = F.cross_entropy(logits, y)
            ctx.zero_grad()
            ctx.backward(loss)  # one backward: parameter gradients and x_adv.grad together
            ctx.optimizer_step()
            loss_sum += loss.item()
            correct += _correct(logits, y)
            delta = (threat.project(threat.step(x_adv.detach(), x_adv.grad, self.step_size * threat.eps_scalar), x)
                     - x).detach()
        if self.delta is None or self.delta.shape[0] <= delta.shape[0]:
            self.delta = delta
        else:  # a short last batch: keep the rows it did not touch for the next epoch's first batch
            self.delta = torch.cat([delta, self.delta[delta.shape[0]:].to(delta)])
        return BatchStats(loss_sum / self.replays, len(y), adv_correct=correct / self.replays)

    def state_dict(self):
        return {} if self.delta is None else {"delta": self.delta.detach().cpu().clone()}

    def load_state_dict(self, state):
        self.delta = state.get("delta")


# ---------------------------------------------------------------------------------------------- AWP
@dataclass(init=False, eq=False, repr=False)
class AWP(Recipe):
    """Adversarial weight perturbation around the update of a base recipe.

    ``AWP(base=..., gamma=..., warmup=..., **base_params)``: the parameters the base recipe declares pass
    through to it (:meth:`declared_params` lists them), with the defaults of :data:`BASE_DEFAULTS` (pgd-at:
    adv_ratio 1.0, as in the paper). ``warmup`` defaults to 1: perturbing freshly initialised weights against
    the adversarial loss made small CNNs without BatchNorm collapse to a constant prediction in some runs
    (Fashion-MNIST, lr 0.1); one epoch of plain training avoided it.
    """

    name = "awp"
    description = ("adversarial weight perturbation (Wu et al. 2020) on top of pgd-at (adv_ratio 1 by "
                   "default), trades or mart: each layer's weights move gamma*||w|| up the loss for the update")
    BASES = ("pgd-at", "trades", "mart", "standard")
    BASE_DEFAULTS = {"pgd-at": {"adv_ratio": 1.0}}

    base: str = param("pgd-at", "base recipe, whose loss the weights are perturbed against and which takes "
                      "its own options", config_key="awp_base", choices=BASES)
    gamma: float = param(5e-3, "relative size of the weight perturbation per layer", config_key="awp_gamma",
                         check=check_nonneg)
    warmup: int = param(1, "epochs of plain base training before the weight perturbation starts",
                        config_key="awp_warmup", check=check_count)

    def __init__(self, **params: Any):
        own = {f.name for f in dataclasses.fields(self)}
        for key in own & params.keys():
            setattr(self, key, params.pop(key))
        self.__post_init__()
        base_params = {**self.BASE_DEFAULTS.get(self.base, {}),
                       **{k: v for k, v in params.items() if v is not None}}
        self.base_recipe = make_recipe(self.base, **base_params)
        self.adversarial = self.base_recipe.adversarial

    @classmethod
    def declared_params(cls) -> tuple[Param, ...]:
        """AWP's own parameters, then those of its base recipes (with AWP's defaults where they differ)."""
        own = super().declared_params()
        seen = {p.name for p in own}
        extra = []
        for base in cls.BASES:
            for p in RECIPES[base].declared_params():
                if p.name not in seen:
                    seen.add(p.name)
                    default = cls.BASE_DEFAULTS.get(base, {}).get(p.name)
                    extra.append(p if default is None else dataclasses.replace(
                        p, default=default, default_text=f"{default} with base {base}"))
        return own + tuple(extra)

    def params(self):
        return {"base": self.base, "gamma": self.gamma, "warmup": self.warmup, **self.base_recipe.params()}

    def validation_threats(self, threat):
        return self.base_recipe.validation_threats(threat)

    @staticmethod
    def _perturbed(model: nn.Module) -> list[nn.Parameter]:
        # As in the paper: every multi-dimensional weight (conv kernels, linear matrices), not biases or norms.
        return [p for name, p in model.named_parameters() if p.requires_grad and p.dim() > 1 and "weight" in name]

    def step(self, model, x, y, ctx):
        x_adv = self.base_recipe.perturb(model, x, y, ctx)
        if ctx.epoch < self.warmup or self.gamma == 0:
            return self._update(model, x, y, x_adv, ctx)
        raw = ctx.attack_model
        weights = self._perturbed(raw)
        # The ascent pass is a probe: it must not move BatchNorm running statistics.
        buffers = [b.detach().clone() for b in raw.buffers()]
        probe, _ = self.base_recipe.objective(raw, x, y, x_adv, ctx)
        grads = ctx.all_reduce_grads(list(torch.autograd.grad(probe, weights)))
        with torch.no_grad():
            for b, saved in zip(raw.buffers(), buffers):
                b.copy_(saved)
            shifts = [self.gamma * w.norm() * g / (g.norm() + 1e-20) for w, g in zip(weights, grads)]
            for w, v in zip(weights, shifts):
                w.add_(v)
        try:
            return self._update(model, x, y, x_adv, ctx)
        finally:
            with torch.no_grad():
                for w, v in zip(weights, shifts):
                    w.sub_(v)

    def _update(self, model, x, y, x_adv, ctx):
        loss, stats = self.base_recipe.objective(model, x, y, x_adv, ctx)
        ctx.zero_grad()
        ctx.backward(loss)
        ctx.optimizer_step()
        return stats


@dataclass(frozen=True)
class Component:
    """One threat model of a ``multi`` recipe: a norm, a radius and the attack that trains against it."""

    norm: str
    eps: float
    attack: str = "pgd"

    @classmethod
    def parse(cls, spec: Any) -> "Component":
        if isinstance(spec, Component):
            return spec
        if isinstance(spec, dict):
            unknown = set(spec) - {"norm", "eps", "attack"}
            if unknown or "norm" not in spec or "eps" not in spec:
                raise ValueError(f"a multi threat is {{'norm': 'l2', 'eps': 1.0, 'attack': 'pgd'}}, got {spec!r}")
            norm, eps, attack = spec["norm"], spec["eps"], spec.get("attack", "pgd")
        elif isinstance(spec, str):
            parts = [p.strip() for p in spec.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError(f"a multi threat is written 'norm:eps' or 'norm:eps:attack' (e.g. 'l2:1.0' or "
                                 f"'linf:0.1:fgsm-rs'), got {spec!r}")
            norm, eps = parts[0], parts[1]
            attack = parts[2] if len(parts) == 3 else "pgd"
        else:
            raise ValueError(f"a multi threat is a 'norm:eps[:attack]' string or a dict, got {spec!r}")
        from ..threat import Norm

        norm = Norm.parse(norm).value
        try:
            eps_f = float(eps)
        except (TypeError, ValueError):
            raise ValueError(f"multi threat {spec!r}: eps must be a number") from None
        if not math.isfinite(eps_f) or eps_f < 0:
            raise ValueError(f"multi threat {spec!r}: eps must be finite and >= 0")
        if attack not in ("pgd", "fgsm-rs"):
            raise ValueError(f"multi threat {spec!r}: attack must be 'pgd' or 'fgsm-rs', got {attack!r}")
        return cls(norm, eps_f, attack)

    def threat(self, like: ThreatModel) -> ThreatModel:
        return ThreatModel(self.norm, self.eps, like.bounds, like.constraints)

    def __str__(self) -> str:
        return f"{self.norm}:{self.eps:g}" + ("" if self.attack == "pgd" else f":{self.attack}")


@dataclass(eq=False, repr=False)
class Multi(_PGDAttackMixin, Recipe):
    """Multi-perturbation adversarial training.

    ``threats``: the threat models, as 'norm:eps[:attack]' strings (a comma-separated string works too) or
    dicts; attack is 'pgd' (default) or 'fgsm-rs'. Their bounds come from the trainer's threat. ``mode``:
    ``"max"`` (per-example worst case by loss), ``"avg"`` (mean loss over all), ``"random"`` (one threat per
    batch). ``steps``, ``step_size`` (units of each threat's eps), ``random_start``: the PGD attacks.
    """

    name = "multi"
    description = ("several threat models / attacks per batch (Tramer & Boneh 2019): train on the worst one "
                   "per example (max), on all of them (avg), or on one drawn per batch (random)")
    MODES = ("max", "avg", "random")

    threats: Any = param(None, "required: threats as 'norm:eps:attack' separated by commas (attack pgd or "
                         "fgsm-rs, optional), e.g. 'linf:0.1,l2:1.0'", config_key="multi_threats", as_type=str)
    mode: str = param("max", "train on the worst threat per example, the mean over all, or one per batch",
                      config_key="multi_mode", choices=MODES)
    adv_ratio: float = _adv_ratio()
    steps: int = _steps()
    step_size: Optional[float] = _pgd_step_size()
    random_start: bool = _random_start()

    def __post_init__(self):
        super().__post_init__()
        threats = self.threats
        if threats is None or (not isinstance(threats, (str, list, tuple)) or len(threats) == 0):
            raise ValueError("multi needs threats, e.g. --multi-threats 'linf:0.1,l2:1.0' "
                             "(or threats=['linf:0.1', 'l2:1.0'])")
        if isinstance(threats, str):
            threats = [t for t in threats.split(",") if t.strip()]
        self.components = [Component.parse(t) for t in threats]
        self.threats = [str(c) for c in self.components]

    def validation_threats(self, threat):
        return [c.threat(threat) for c in self.components]

    def _attack(self, comp: Component, x, y, ctx) -> torch.Tensor:
        threat = comp.threat(ctx.threat).scaled(ctx.eps_scale)
        if comp.attack == "pgd":
            return self._pgd(x, y, threat, ctx)
        x0 = threat.random_init(x, ctx.generator) if threat.eps_scalar > 0 else x
        with attack_mode(ctx.attack_model):
            _, _, grad = loss_and_grad(ctx.attack_model, x0, y, _ce)
        return threat.project(threat.step(x0, grad, 1.25 * threat.eps_scalar), x).detach()

    def perturb(self, model, x, y, ctx):
        if self.adv_ratio == 0:
            return []
        if self.mode == "random":
            k = int(torch.randint(len(self.components), (1,), generator=ctx.generator, device=ctx.generator.device))
            return [self._attack(self.components[k], x, y, ctx)]
        advs = [self._attack(c, x, y, ctx) for c in self.components]
        if self.mode == "avg" or len(advs) == 1:
            return advs
        raw = ctx.attack_model
        with attack_mode(raw), torch.no_grad():
            losses = torch.stack([F.cross_entropy(raw(a), y, reduction="none") for a in advs])
        worst = losses.argmax(dim=0)
        stacked = torch.stack(advs)
        return [stacked[worst, torch.arange(len(y), device=x.device)]]

    def objective(self, model, x, y, x_adv, ctx):
        return _mixed_ce(model, x, y, list(x_adv), self.adv_ratio)


# ---------------------------------------------------------------------------------------------- certified training
def _ramp(start: float, end: float, scale: float) -> float:
    """A weight that moves from ``start`` to ``end`` while eps ramps up (``scale``: the trainer's eps_scale)."""
    return start + (end - start) * scale


@dataclass(eq=False, repr=False)
class CertifiedTraining(Recipe):
    """IBP (Gowal et al. 2018) or CROWN-IBP (Zhang et al. 2020) training.

    loss = kappa * CE(f(x), y) + (1 - kappa) * CE(-m, y), where ``m`` are lower bounds of the margins
    ``z_y - z_j`` over the threat set (``m_y = 0``): IBP's, or for CROWN-IBP ``beta * CROWN-IBP + (1 - beta) *
    IBP``. While the trainer ramps eps up (``--eps-warmup K``: linearly over the first K epochs, which these
    methods need), kappa moves from 1 to ``kappa`` and beta from 1 to ``beta`` in step with it, as in both papers.
    The models it can train are those :mod:`armor.certify` can bound (armor's mlp and small-cnn).
    """

    name = "ibp"
    description = ("certified training: IBP (Gowal et al. 2018) or CROWN-IBP (Zhang et al. 2020) margin bounds in "
                   "the loss, kappa and beta ramped with eps (use --eps-warmup); mlp and small-cnn")
    BOUNDS = ("crown-ibp", "ibp")

    bound: str = param("crown-ibp", "the margin bound trained against", config_key="certified_bound",
                       choices=BOUNDS)
    kappa: float = param(0.5, "weight of the clean loss once eps is ramped up (it starts at 1; Gowal et al. 0.5)",
                         config_key="kappa_end", check=check_ratio)
    beta: float = param(0.0, "crown-ibp: weight of the CROWN-IBP bound against IBP once eps is ramped up (it "
                        "starts at 1; Zhang et al. 0)", config_key="crown_beta_end", check=check_ratio)

    def __post_init__(self):
        super().__post_init__()
        self._ops: Optional[tuple[int, list]] = None

    def _chain(self, raw: nn.Module, shape: Sequence[int]) -> list:
        from ..certify import chain

        if self._ops is None or self._ops[0] != id(raw):
            self._ops = (id(raw), chain(raw, shape))
        return self._ops[1]

    def objective(self, model, x, y, x_adv, ctx):
        from ..certify import margin_lower_bounds

        scale = ctx.eps_scale
        logits = model(x)
        clean = F.cross_entropy(logits, y)
        if ctx.threat.eps_scalar == 0:
            return clean, BatchStats(clean.item(), len(y), clean_correct=_correct(logits, y))
        ops = self._chain(ctx.attack_model, x.shape[1:])
        kappa = _ramp(1.0, self.kappa, scale)
        lower = margin_lower_bounds(ops, x, y, ctx.threat, "ibp")
        if self.bound == "crown-ibp":
            beta = _ramp(1.0, self.beta, scale)
            if beta > 0:
                lower = beta * margin_lower_bounds(ops, x, y, ctx.threat, "crown-ibp") + (1 - beta) * lower
        worst = torch.cat([torch.zeros_like(lower[:, :1]), -lower], 1)  # class y first, then the others
        robust = F.cross_entropy(worst, torch.zeros_like(y))
        loss = kappa * clean + (1 - kappa) * robust
        return loss, BatchStats(loss.item(), len(y), clean_correct=_correct(logits, y),
                                adv_correct=float((lower.detach().amin(1) > 0).sum()))


def _sigma() -> Any:
    return param(0.25, "standard deviation of the Gaussian noise, in input units (the sigma the smoothed "
                 "classifier is certified with)", check=check_pos)


@dataclass(eq=False, repr=False)
class GaussianAugment(Recipe):
    """Gaussian data augmentation, the base classifier of randomized smoothing (Cohen et al. 2019): CE on
    ``x + N(0, sigma^2 I)``, noise unclipped as in the paper."""

    name = "gaussian"
    description = "Gaussian noise augmentation for randomized smoothing (Cohen et al. 2019): CE on x + N(0, sigma^2)"
    adversarial = False

    sigma: float = _sigma()

    def perturb(self, model, x, y, ctx):
        return x + self.sigma * torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype)

    def objective(self, model, x, y, x_adv, ctx):
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        return loss, BatchStats(loss.item(), len(y), clean_correct=_correct(logits, y))


class _SmoothedLogProb(nn.Module):
    """log of the mean softmax of ``model`` over fixed noise samples: the soft smoothed classifier SmoothAdv
    attacks."""

    def __init__(self, model: nn.Module, noise: torch.Tensor):
        super().__init__()
        self.model, self.noise = model, noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.noise.shape[0]
        logits = self.model((x.unsqueeze(0) + self.noise).flatten(0, 1))
        probs = F.softmax(logits, dim=1).view(m, x.shape[0], -1).mean(0)
        return torch.log(probs.clamp_min(1e-20))


def _nll(log_probs, y, target=None):
    return F.nll_loss(log_probs, y, reduction="none")


@dataclass(eq=False, repr=False)
class SmoothAdv(Recipe):
    """SmoothAdv (Salman et al. 2019): PGD on the soft smoothed classifier, ``max -log E_delta softmax(f(x' +
    delta))_y`` over the threat's ball (l2 in the paper) with ``samples`` noise draws held fixed during the attack,
    then CE of ``f`` on the same noisy copies of ``x'``."""

    name = "smoothadv"
    description = ("SmoothAdv (Salman et al. 2019): PGD against the smoothed classifier's soft prediction over "
                   "m noise samples, then Gaussian augmentation on the adversarial points; use an l2 threat")

    sigma: float = _sigma()
    samples: int = param(1, "noise samples m per point in the attack and the loss", config_key="smooth_samples",
                         check=check_int)
    steps: int = param(2, "attack steps", check=check_int)
    step_size: Optional[float] = _pgd_step_size()

    def perturb(self, model, x, y, ctx):
        threat = ctx.threat
        noise = self.sigma * torch.randn((self.samples,) + tuple(x.shape), generator=ctx.generator,
                                         device=x.device, dtype=x.dtype)
        if threat.eps_scalar == 0:
            return x, noise
        alpha = (PGD_STEP / self.steps if self.step_size is None else self.step_size) * threat.eps_scalar
        raw = ctx.attack_model
        x_adv = x
        with attack_mode(raw):
            smoothed = _SmoothedLogProb(raw, noise)
            for _ in range(self.steps):
                _, _, grad = loss_and_grad(smoothed, x_adv, y, _nll)
                x_adv = threat.project(threat.step(x_adv, grad, alpha), x)
        return x_adv.detach(), noise

    def objective(self, model, x, y, x_adv, ctx):
        points, noise = x_adv
        logits = model((points.unsqueeze(0) + noise).flatten(0, 1))
        loss = F.cross_entropy(logits, y.repeat(self.samples))
        return loss, BatchStats(loss.item(), len(y), adv_correct=_correct(logits, y.repeat(self.samples)) / self.samples)


# ---------------------------------------------------------------------------------------------- registry
RECIPES: dict[str, type[Recipe]] = {cls.name: cls for cls in (Standard, PGDAT, TRADES, MART, FastAT, FreeAT, AWP,
                                                               Multi, CertifiedTraining, GaussianAugment, SmoothAdv)}


def make_recipe(name: str, **params: Any) -> Recipe:
    """Build the recipe called ``name`` with ``params``; unknown names or parameters raise ``ValueError``.

    Arguments:
        name: one of :func:`all_recipes` (``armor list recipes``).
        params: the recipe's parameters (its :meth:`Recipe.declared_params`); ``None`` values mean "use the
            default".
    Returns:
        The :class:`Recipe`.
    """
    if isinstance(name, Recipe):
        if params:
            raise ValueError("pass parameters to the recipe's constructor, not alongside a built recipe")
        return name
    known = all_recipes()
    if name not in known:
        raise ValueError(f"unknown recipe {name!r}: choose one of {', '.join(known)} (see `armor list recipes`)")
    cls = known[name]
    params = {k: v for k, v in params.items() if v is not None}
    allowed = [p.name for p in cls.declared_params()]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"recipe {name!r} has no parameter(s) {', '.join(unknown)}; it takes "
                         f"{', '.join(allowed) or 'none'}")
    return cls(**params)


def all_recipes() -> dict[str, type[Recipe]]:
    """Every recipe: armor's own (:data:`RECIPES`) and those the domains contribute (:mod:`armor.plugins`)."""
    from ..plugins import contributions

    return contributions("recipes", RECIPES)


def list_recipes() -> list[tuple[str, str]]:
    return [(name, cls.description) for name, cls in all_recipes().items()]
