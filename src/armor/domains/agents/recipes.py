"""Robust training recipes for agents, built on stable-baselines3 PPO.

=================  ===========================================================================================
``vanilla``        SB3 PPO as it is: the baseline.
``sa-ppo``         SA-PPO (Zhang et al., NeurIPS 2020): PPO's loss plus ``kappa * max_{delta in ball}
                   KL(pi(.|s) || pi(.|s + delta))``. The inner maximum is PGD on the KL in z-space (random start
                   in the ball, ``steps`` signed/normalised gradient steps, projected by the ThreatModel); the
                   paper's convex-relaxation bound is not used. eps ramps linearly from 0 over the first
                   ``ramp`` share of the step budget, then stays at the run's eps.
``attacked-obs``   Pattanaik et al. 2018 style: with probability ``ratio`` per observation, the agent sees (acts
                   on, and PPO trains on) an attacked observation instead of the clean one; the attack is MAD
                   (PGD maximising the KL from the clean action distribution) or the critic attack (PGD
                   minimising V) on the *current* policy.
``atla``           ATLA (Zhang et al., ICLR 2021), MLP version: an agent and a learned adversary trained in
                   alternation for ``rounds`` rounds. The adversary is an SB3 PPO that observes the clean
                   normalised observation and whose action ``a`` in [-1, 1]^d is the perturbation
                   ``project(z + eps * a)``; its reward is minus the agent's.
=================  ===========================================================================================

Where SB3 serves and where it does not:

* The PPO update is SB3's, unchanged. SA-PPO needs one more term in the loss; SB3 builds its loss inline in
  ``PPO.train()``, so instead of copying that method :class:`SAPPO` wraps ``policy.evaluate_actions`` (called
  once per minibatch, before the loss) for the duration of ``train()`` and attaches ``kappa * KL`` to the
  returned values with :func:`add_gradient`: an identity in the forward pass whose backward also sends a unit
  gradient into the regulariser. The gradient SB3 clips and steps is then exactly that of
  ``policy_loss + ent_coef * entropy_loss + vf_coef * value_loss + kappa * KL`` (tested), and everything else
  (advantage normalisation, clipping, target_kl, logging) stays SB3's.
* Attacked observations are a ``VecEnvWrapper`` (:class:`ObservationAttackVecEnv`), so SB3's rollout collection
  is untouched: what the wrapper returns is what the policy acts on and what the rollout buffer stores. The
  ``terminal_observation`` SB3 uses to bootstrap truncated episodes is left clean (no action is taken on it).
* The inner attacks are the evaluation attacks' z-space cores (:func:`~.attacks.mad_pgd`,
  :func:`~.attacks.critic_pgd`) keeping their last iterate, seeded by the run's generators and counted
  (:class:`~.attacks.AttackPasses`). Every perturbation is made by the run's ThreatModel (``random_init``,
  ``step``, ``project``); none has its own projection.

Randomness: each recipe draws from its own generators (seeded from the run's seed), never from the coin flips
or initialisations SB3 uses, so ``attacked-obs`` at ``ratio=0`` and ``sa-ppo`` at ``kappa=0`` train the very
same weights as ``vanilla`` (tested), and a resumed run can restore every generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Optional

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from ...threat import ThreatModel
from .attacks import AttackPasses, critic_pgd, mad_pgd
from .policy import PolicyAdapter
from .threat import ObsNormalizer, adapter_in_z, observation_threat, to_raw


# ============================================================================================ inner attacks
INNER_ATTACKS: dict[str, Callable[..., torch.Tensor]] = {"mad": mad_pgd, "critic": critic_pgd}


def to_observation(z_adv: torch.Tensor, obs: np.ndarray, normalizer: ObsNormalizer, threat: ThreatModel) -> np.ndarray:
    """Raw observations (in ``obs``'s dtype and shape) for ``z_adv``, still inside the threat after rounding
    (:func:`~.threat.to_raw`)."""
    return to_raw(normalizer, threat, z_adv, obs).numpy()


def flat_z(normalizer: ObsNormalizer, obs: Any) -> torch.Tensor:
    """``(n, d)`` float64 z-units of a batch of observations of any shape (flattened row-major)."""
    x = torch.as_tensor(np.asarray(obs) if not torch.is_tensor(obs) else obs).double()
    return normalizer.to_z(x.reshape(x.shape[0], -1))


def action_perturbation(z: torch.Tensor, action: Any, threat: ThreatModel) -> torch.Tensor:
    """ATLA's adversary action ``a`` in [-1, 1]^d as a point of the threat: ``project(z + eps * a, z)``."""
    a = torch.as_tensor(np.asarray(action), dtype=z.dtype).reshape(z.shape).clamp(-1, 1)
    return threat.project(z + threat.eps_scalar * a, z)


# ============================================================================================ SA-PPO
class _AddGradient(torch.autograd.Function):
    """``y = x`` in the forward pass; in the backward pass ``x`` gets ``y``'s gradient and ``extra`` gets 1."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.extra_shape = extra.shape
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return grad, torch.ones(ctx.extra_shape, dtype=grad.dtype, device=grad.device)


def add_gradient(x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged, but any loss built on it also gets the gradient of the scalar ``extra`` (once, however
    ``x`` is used): how SA-PPO adds ``kappa * KL`` to SB3's loss without rewriting ``PPO.train()``."""
    return _AddGradient.apply(x, extra)


class SAPPO(PPO):
    """SB3 PPO with SA-PPO's state-adversarial regulariser (see the module docstring for how it is added).

    Extra arguments (all saved in the model zip; the run's normaliser and observation bounds included):
        sa_kappa: weight of the regulariser (0: plain PPO, bit-identical).
        sa_eps, sa_norm: the threat in normalised observation units; sa_ramp: share of the step budget over
            which eps rises linearly from 0 (0: full eps from the start).
        sa_steps, sa_step_size: the inner PGD (step size None: 2.5 * eps_t / steps).
        sa_normalizer: :meth:`ObsNormalizer.to_dict`; sa_low, sa_high: raw observation bounds (lists or None).
        sa_seed: seed of the inner attack's random starts (its own generator, not SB3's).
    """

    def __init__(self, *args: Any, sa_kappa: float = 0.0, sa_eps: float = 0.0, sa_norm: str = "linf",
                 sa_steps: int = 5, sa_step_size: Optional[float] = None, sa_ramp: float = 0.0,
                 sa_normalizer: Optional[dict[str, Any]] = None, sa_low: Optional[list[float]] = None,
                 sa_high: Optional[list[float]] = None, sa_seed: int = 0, **kwargs: Any) -> None:
        # set before PPO.__init__, which calls _setup_model (and SB3's load sets them again from the zip)
        self.sa_kappa, self.sa_eps, self.sa_norm = float(sa_kappa), float(sa_eps), str(sa_norm)
        self.sa_steps, self.sa_step_size, self.sa_ramp = int(sa_steps), sa_step_size, float(sa_ramp)
        self.sa_normalizer, self.sa_low, self.sa_high, self.sa_seed = sa_normalizer, sa_low, sa_high, int(sa_seed)
        self.sa_forward = self.sa_backward = 0
        self.sa_last_kl = float("nan")
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        self.sa_generator = torch.Generator().manual_seed(self.sa_seed)

    def _excluded_save_params(self) -> list[str]:
        return super()._excluded_save_params() + ["sa_generator"]

    def sa_eps_at(self, steps: int) -> float:
        """eps after ``steps`` environment steps: the linear ramp over the first ``sa_ramp`` of the budget."""
        total = max(1, int(getattr(self, "_total_timesteps", 0) or 1))
        if self.sa_ramp <= 0:
            return self.sa_eps
        return self.sa_eps * min(1.0, steps / (self.sa_ramp * total))

    def sa_threat(self, eps: float) -> tuple[ObsNormalizer, ThreatModel]:
        if self.sa_normalizer is None:
            raise ValueError("SAPPO needs sa_normalizer (the run's ObsNormalizer.to_dict())")
        normalizer = ObsNormalizer.from_dict(self.sa_normalizer)
        return normalizer, observation_threat(normalizer, self.sa_norm, eps, self.sa_low, self.sa_high)

    def sa_regulariser(self, obs: torch.Tensor, eps: float) -> torch.Tensor:
        """``max_delta KL(pi(.|s) || pi(.|s + delta))`` over the minibatch (mean), differentiable in the
        parameters; the maximiser is found by PGD with the parameters frozen."""
        normalizer, threat = self.sa_threat(eps)
        adapter = adapter_in_z(PolicyAdapter.from_sb3(self), normalizer)
        z = normalizer.to_z(obs.float().reshape(len(obs), -1)).detach()
        counter = AttackPasses()
        with adapter.frozen():
            z_adv = mad_pgd(adapter, z, threat, self.sa_steps, self.sa_step_size, self.sa_generator, counter)
        kl = adapter.kl(z, z_adv).mean()
        self.sa_forward += counter.forward + 2 * len(z)
        self.sa_backward += counter.backward + len(z)
        return kl

    def train(self) -> None:
        eps = self.sa_eps_at(self.num_timesteps)
        self.logger.record("train/sa_eps", eps)
        if self.sa_kappa == 0 or eps == 0:
            super().train()
            return
        policy = self.policy
        evaluate = policy.evaluate_actions
        kls: list[float] = []

        def evaluate_actions(obs: torch.Tensor, actions: torch.Tensor):
            values, log_prob, entropy = evaluate(obs, actions)
            kl = self.sa_regulariser(obs, eps)
            kls.append(float(kl.detach()))
            return add_gradient(values, self.sa_kappa * kl), log_prob, entropy

        policy.evaluate_actions = evaluate_actions  # type: ignore[method-assign]
        try:
            super().train()
        finally:
            del policy.evaluate_actions
        self.sa_last_kl = float(np.mean(kls)) if kls else float("nan")
        self.logger.record("train/sa_kl", self.sa_last_kl)


# ============================================================================================ wrappers
class ObservationAttackVecEnv(VecEnvWrapper):
    """What the agent sees: each observation is replaced, with probability ``ratio`` (its own coin, seeded),
    by ``perturb(obs)``. ``perturb`` may be set after construction (it usually needs the model that is built
    around this env). Counts every observation delivered and every one attacked.

    ``record``: set to a list to collect ``(clean, attacked)`` arrays of every attacked batch (tests)."""

    def __init__(self, venv: VecEnv, ratio: float, seed: int,
                 perturb: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> None:
        super().__init__(venv)
        self.ratio = float(ratio)
        self.perturb = perturb
        self.rng = np.random.default_rng(seed)
        self.observations = 0
        self.attacked = 0
        self.record: Optional[list[tuple[np.ndarray, np.ndarray]]] = None

    def reset(self) -> np.ndarray:
        return self._see(self.venv.reset())

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        return self._see(obs), rewards, dones, infos

    def _see(self, obs: np.ndarray) -> np.ndarray:
        n = len(obs)
        self.observations += n
        if self.ratio <= 0:
            return obs
        mask = self.rng.random(n) < self.ratio
        if not mask.any():
            return obs
        if self.perturb is None:
            raise RuntimeError("ObservationAttackVecEnv has no perturbation attached")
        out = obs.copy()
        out[mask] = self.perturb(obs[mask])
        self.attacked += int(mask.sum())
        if self.record is not None:
            self.record.append((obs[mask].copy(), out[mask].copy()))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "observations": self.observations, "attacked": self.attacked}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.rng.bit_generator.state = d["rng"]
        self.observations, self.attacked = int(d["observations"]), int(d["attacked"])


class PolicyAttack:
    """``obs -> attacked obs``: an inner attack (``"mad"`` or ``"critic"``) on a model's *current* policy."""

    def __init__(self, model: PPO, normalizer: ObsNormalizer, threat: ThreatModel, attack: str = "mad",
                 steps: int = 5, step_size: Optional[float] = None, seed: int = 0) -> None:
        self.model, self.normalizer, self.threat = model, normalizer, threat
        self.attack = INNER_ATTACKS[attack]
        self.steps, self.step_size = steps, step_size
        self.generator = torch.Generator().manual_seed(seed)
        self.counter = AttackPasses()

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        z = flat_z(self.normalizer, obs)
        adapter = adapter_in_z(PolicyAdapter.from_sb3(self.model), self.normalizer)
        with adapter.frozen():
            z_adv = self.attack(adapter, z, self.threat, self.steps, self.step_size, self.generator, self.counter)
        return to_observation(z_adv, obs, self.normalizer, self.threat)


class AdversaryPerturbation:
    """``obs -> attacked obs`` chosen by ATLA's learned adversary (sampled from its policy, as in training)."""

    def __init__(self, adversary: PPO, normalizer: ObsNormalizer, threat: ThreatModel,
                 deterministic: bool = False) -> None:
        self.adversary, self.normalizer, self.threat, self.deterministic = adversary, normalizer, threat, deterministic

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        z = flat_z(self.normalizer, obs)
        action, _ = self.adversary.predict(z.float().numpy(), deterministic=self.deterministic)
        return to_observation(action_perturbation(z, action, self.threat), obs, self.normalizer, self.threat)


class AdversaryVecEnv(VecEnvWrapper):
    """ATLA's adversary environment around the agent's one: the adversary observes the clean normalised
    observation ``z``, acts ``a`` in [-1, 1]^d, the frozen agent acts (sampled) on ``from_z(project(z + eps*a))``,
    and the adversary is rewarded with minus the agent's reward. Terminal observations are given in z too."""

    def __init__(self, venv: VecEnv, agent: PPO, normalizer: ObsNormalizer, threat: ThreatModel) -> None:
        d = int(np.prod(venv.observation_space.shape))
        super().__init__(venv, observation_space=spaces.Box(-np.inf, np.inf, (d,), np.float32),
                         action_space=spaces.Box(-1.0, 1.0, (d,), np.float32))
        self.agent, self.normalizer, self.threat = agent, normalizer, threat
        self._obs: Optional[np.ndarray] = None

    def _z(self, obs: np.ndarray) -> np.ndarray:
        return flat_z(self.normalizer, obs).float().numpy()

    def reset(self) -> np.ndarray:
        self._obs = self.venv.reset()
        return self._z(self._obs)

    def step_async(self, actions: np.ndarray) -> None:
        assert self._obs is not None, "reset the adversary env first"
        z = flat_z(self.normalizer, self._obs)
        seen = to_observation(action_perturbation(z, actions, self.threat), self._obs, self.normalizer, self.threat)
        agent_actions, _ = self.agent.predict(seen, deterministic=False)
        self.venv.step_async(agent_actions)

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        self._obs = obs
        for info in infos:
            if "terminal_observation" in info:
                info["terminal_observation"] = self._z(np.asarray(info["terminal_observation"])[None])[0]
        return self._z(obs), -rewards, dones, infos

    def state_dict(self) -> dict[str, Any]:
        return {"obs": None if self._obs is None else self._obs.tolist()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self._obs = None if d["obs"] is None else np.asarray(d["obs"], dtype=self.venv.observation_space.dtype)


# ============================================================================================ recipes
@dataclass
class RunContext:
    """What a recipe needs from the run (built by :func:`armor.domains.agents.train.train_agent`)."""

    normalizer: ObsNormalizer
    threat: ThreatModel  # at the run's eps, in z-units
    norm: str
    eps: float
    low: Optional[list[float]]
    high: Optional[list[float]]
    seeds: Callable[[str], int]  # named seed streams derived from the run's seed
    total_steps: int
    rollout: dict[str, int]  # env steps per SB3 rollout, per role


@dataclass
class AgentRecipe:
    """A robust-training recipe: which models it trains (roles), around which env wrappers, in which order.

    The training loop (train.py) creates the base environments and the SB3 models, drives the phases, and
    checkpoints everything the recipe reports in :meth:`state_dict`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    roles: ClassVar[tuple[str, ...]] = ("agent",)
    needs_eps: ClassVar[bool] = True

    def params(self) -> dict[str, Any]:
        """The recipe's options and their values (what metadata.json records)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    def check(self) -> None:
        """Raise ValueError for bad parameter values."""

    def model_class(self, role: str) -> type:
        return PPO

    def model_kwargs(self, role: str, ctx: RunContext) -> dict[str, Any]:
        return {}

    def wrap(self, role: str, venv: VecEnv, ctx: RunContext) -> VecEnv:
        return venv

    def attach(self, models: dict[str, PPO], envs: dict[str, VecEnv], ctx: RunContext) -> None:
        """Connect wrappers to models once every model exists (and again after a resume loads them)."""

    def phases(self, ctx: RunContext) -> list[tuple[str, int]]:
        """``(role, cumulative env steps of that role's model at the phase's end)``, in training order."""
        return [("agent", _round_up(ctx.total_steps, ctx.rollout["agent"]))]

    def cost(self, models: dict[str, PPO]) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        pass


def _round_up(n: float, k: int) -> int:
    return int(math.ceil(n / k)) * k


def _check_int(name: str, v: Any, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")


def _check_float(name: str, v: Any, lo: float, hi: float = math.inf, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v) \
            or not lo <= v <= hi:
        raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {v!r}")


@dataclass
class Vanilla(AgentRecipe):
    name: ClassVar[str] = "vanilla"
    description: ClassVar[str] = "SB3 PPO, no defence (the baseline)"
    needs_eps: ClassVar[bool] = False


@dataclass
class SAPPORecipe(AgentRecipe):
    """SA-PPO. kappa: regulariser weight; steps / step_size: the inner PGD; ramp: share of the budget over
    which eps rises linearly from 0.

    kappa defaults to 0.1, from CartPole-v1 at 40k steps and eps 0.2 (10 deterministic episodes, worst case
    over random / critic / MAD): kappa 0.1 kept a clean return of 500 and a worst-case return of 500 on 6/6
    seeds (vanilla: 47-388); kappa 0.3 lost clean return on 2/6 seeds (285, 299) and kappa 1.0 on 2/4 (72, 309).
    """

    name: ClassVar[str] = "sa-ppo"
    description: ClassVar[str] = "SA-PPO: PPO + kappa * max KL(pi(s) || pi(s+delta)) over the ball (inner PGD)"
    kappa: float = 0.1
    steps: int = 5
    step_size: Optional[float] = None
    ramp: float = 0.5
    _model: Optional[SAPPO] = field(default=None, init=False, repr=False, compare=False)

    def check(self) -> None:
        _check_float("kappa", self.kappa, 0.0)
        _check_int("steps", self.steps, 1)
        _check_float("step_size", self.step_size, 0.0, allow_none=True)
        _check_float("ramp", self.ramp, 0.0, 1.0)

    def model_class(self, role: str) -> type:
        return SAPPO

    def model_kwargs(self, role: str, ctx: RunContext) -> dict[str, Any]:
        return {"sa_kappa": self.kappa, "sa_eps": ctx.eps, "sa_norm": ctx.norm, "sa_steps": self.steps,
                "sa_step_size": self.step_size, "sa_ramp": self.ramp, "sa_normalizer": ctx.normalizer.to_dict(),
                "sa_low": ctx.low, "sa_high": ctx.high, "sa_seed": ctx.seeds("sa-ppo")}

    def attach(self, models: dict[str, PPO], envs: dict[str, VecEnv], ctx: RunContext) -> None:
        self._model = models["agent"]  # type: ignore[assignment]

    def cost(self, models: dict[str, PPO]) -> dict[str, Any]:
        m = models["agent"]
        return {"extra_forward": int(m.sa_forward), "extra_backward": int(m.sa_backward)}

    def state_dict(self) -> dict[str, Any]:
        # the inner attack's generator is not in SB3's zip (a torch.Generator does not serialise there)
        assert self._model is not None
        return {"generator": self._model.sa_generator.get_state()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        assert self._model is not None
        self._model.sa_generator.set_state(d["generator"])


@dataclass
class AttackedObs(AgentRecipe):
    """Training on attacked observations. ratio: share of observations attacked (0: vanilla, 1: all);
    attack: ``"mad"`` or ``"critic"`` on the current policy; steps / step_size: its PGD."""

    name: ClassVar[str] = "attacked-obs"
    description: ClassVar[str] = "PPO on observations attacked (MAD or critic PGD on the current policy) with probability ratio"
    ratio: float = 0.5
    attack: str = "mad"
    steps: int = 5
    step_size: Optional[float] = None
    _wrapper: Optional[ObservationAttackVecEnv] = field(default=None, init=False, repr=False, compare=False)
    _attack: Optional[PolicyAttack] = field(default=None, init=False, repr=False, compare=False)

    def check(self) -> None:
        _check_float("ratio", self.ratio, 0.0, 1.0)
        if self.attack not in INNER_ATTACKS:
            raise ValueError(f"attack must be one of {sorted(INNER_ATTACKS)}, got {self.attack!r}")
        _check_int("steps", self.steps, 1)
        _check_float("step_size", self.step_size, 0.0, allow_none=True)

    def wrap(self, role: str, venv: VecEnv, ctx: RunContext) -> VecEnv:
        self._wrapper = ObservationAttackVecEnv(venv, self.ratio, ctx.seeds("attacked-obs/coin"))
        return self._wrapper

    def attach(self, models: dict[str, PPO], envs: dict[str, VecEnv], ctx: RunContext) -> None:
        old = self._attack
        self._attack = PolicyAttack(models["agent"], ctx.normalizer, ctx.threat, self.attack, self.steps,
                                    self.step_size, ctx.seeds("attacked-obs/attack"))
        if old is not None:  # re-attached after a load: keep the generator and counts
            self._attack.generator.set_state(old.generator.get_state())
            self._attack.counter = old.counter
        assert self._wrapper is not None
        self._wrapper.perturb = self._attack

    def cost(self, models: dict[str, PPO]) -> dict[str, Any]:
        w, a = self._wrapper, self._attack
        return {"observations": w.observations if w else 0, "attacked_observations": w.attacked if w else 0,
                "extra_forward": a.counter.forward if a else 0, "extra_backward": a.counter.backward if a else 0}

    def state_dict(self) -> dict[str, Any]:
        assert self._wrapper is not None and self._attack is not None
        return {"wrapper": self._wrapper.state_dict(), "generator": self._attack.generator.get_state(),
                "counter": self._attack.counter.state_dict()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        assert self._wrapper is not None and self._attack is not None
        self._wrapper.load_state_dict(d["wrapper"])
        self._attack.generator.set_state(d["generator"])
        self._attack.counter.load_state_dict(d["counter"])


@dataclass
class ATLA(AgentRecipe):
    """ATLA. rounds: agent phases (>= 2), with an adversary phase between each two (A, D, A, ..., A), the
    agent's budget split evenly over its phases; adv_ratio: adversary env steps per agent env step (over
    ``rounds - 1`` adversary phases); adv_ppo: PPO settings of the adversary over the agent's.

    The first agent phase meets the untrained adversary (a Gaussian policy: near-random perturbations in the
    ball). During agent phases every observation is perturbed by the adversary's sampled action; during
    adversary phases the agent acts stochastically (as in training) and is frozen."""

    name: ClassVar[str] = "atla"
    description: ClassVar[str] = "ATLA: agent and learned adversary (PPO, reward = -agent's) trained in alternation"
    roles: ClassVar[tuple[str, ...]] = ("agent", "adversary")
    rounds: int = 4
    adv_ratio: float = 1.0
    adv_ppo: Optional[dict[str, Any]] = None
    _agent_env: Optional[ObservationAttackVecEnv] = field(default=None, init=False, repr=False, compare=False)
    _adv_env: Optional[AdversaryVecEnv] = field(default=None, init=False, repr=False, compare=False)

    def check(self) -> None:
        _check_int("rounds", self.rounds, 2)
        _check_float("adv_ratio", self.adv_ratio, 0.0)
        if self.adv_ratio == 0:
            raise ValueError("adv_ratio must be > 0: an adversary that never trains is random noise")
        if self.adv_ppo is not None and not isinstance(self.adv_ppo, dict):
            raise ValueError(f"adv_ppo must be a dict of PPO settings, got {self.adv_ppo!r}")

    def wrap(self, role: str, venv: VecEnv, ctx: RunContext) -> VecEnv:
        if role == "agent":
            self._agent_env = ObservationAttackVecEnv(venv, 1.0, ctx.seeds("atla/coin"))
            return self._agent_env
        self._adv_env = AdversaryVecEnv(venv, None, ctx.normalizer, ctx.threat)  # type: ignore[arg-type]
        return self._adv_env

    def attach(self, models: dict[str, PPO], envs: dict[str, VecEnv], ctx: RunContext) -> None:
        assert self._agent_env is not None and self._adv_env is not None
        self._agent_env.perturb = AdversaryPerturbation(models["adversary"], ctx.normalizer, ctx.threat)
        self._adv_env.agent = models["agent"]

    def phases(self, ctx: RunContext) -> list[tuple[str, int]]:
        ra, rd = ctx.rollout["agent"], ctx.rollout["adversary"]
        per_adv = _round_up(self.adv_ratio * ctx.total_steps / self.rounds, rd)
        out: list[tuple[str, int]] = []
        for k in range(1, self.rounds + 1):
            out.append(("agent", _round_up(math.ceil(k * ctx.total_steps / self.rounds), ra)))
            if k < self.rounds:
                out.append(("adversary", k * per_adv))
        return out

    def cost(self, models: dict[str, PPO]) -> dict[str, Any]:
        return {"adversary_env_steps": int(models["adversary"].num_timesteps),
                "agent_env_steps": int(models["agent"].num_timesteps)}

    def state_dict(self) -> dict[str, Any]:
        assert self._agent_env is not None and self._adv_env is not None
        return {"agent_env": self._agent_env.state_dict(), "adv_env": self._adv_env.state_dict()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        assert self._agent_env is not None and self._adv_env is not None
        self._agent_env.load_state_dict(d["agent_env"])
        self._adv_env.load_state_dict(d["adv_env"])


RECIPES: dict[str, type[AgentRecipe]] = {r.name: r for r in (Vanilla, SAPPORecipe, AttackedObs, ATLA)}


def recipe_options(name: str) -> list[str]:
    """The options a recipe takes (its parameters)."""
    return [f.name for f in fields(get_recipe_class(name)) if not f.name.startswith("_")]


def get_recipe_class(name: str) -> type[AgentRecipe]:
    if name not in RECIPES:
        raise ValueError(f"unknown agents recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def make_recipe(name: str, **options: Any) -> AgentRecipe:
    """The recipe ``name`` with ``options``; unknown names, unknown options and bad values are ValueErrors."""
    cls = get_recipe_class(name)
    allowed = recipe_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"recipe {name!r} has no option {', '.join(map(repr, unknown))}; its options: "
                         f"{', '.join(allowed) or 'none'}")
    recipe = cls(**options)
    recipe.check()
    return recipe


__all__ = ["ATLA", "AdversaryPerturbation", "AdversaryVecEnv", "AgentRecipe", "AttackedObs", "INNER_ATTACKS",
           "ObservationAttackVecEnv", "PolicyAttack", "RECIPES", "RunContext", "SAPPO",
           "SAPPORecipe", "Vanilla", "action_perturbation", "add_gradient", "critic_pgd", "get_recipe_class",
           "mad_pgd", "make_recipe", "recipe_options", "to_observation"]
