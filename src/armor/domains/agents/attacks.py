"""Observation attacks on agents, and the episode runner that applies them.

Every attack has one signature::

    attack(adapter, normalizer, threat, obs, *, generator=None) -> obs_adv

``adapter`` is the agent (:class:`PolicyAdapter`, raw observations in), ``threat`` the budget in normalised
units (:func:`observation_threat`), ``obs`` a raw ``(N, d)`` batch; the result is a raw ``(N, d)`` batch that the
agent sees instead. Attacks work in z-space and move only through ``threat.step`` / ``threat.project`` /
``threat.random_init``; each checks ``threat.contains`` on its result and raises ``ValueError`` if any row left
the budget (as SA-PPO checks every step).

* :func:`random_noise`: a uniformly random point of the ball.
* :func:`critic_attack`: PGD lowering the agent's own critic ``V(s + delta)``.
* :func:`mad_attack`: maximal action difference, PGD (optionally SGLD) on ``KL(pi(.|s) || pi(.|s + delta))`` from
  a random start (Zhang et al. 2020, SA-PPO).

Their z-space cores, :func:`mad_pgd` and :func:`critic_pgd`, are also the inner maximisation of the training
recipes (SA-PPO's regulariser, attacked-observation training): one implementation, counted by
:class:`AttackPasses`.
* :class:`RobustSarsa`: learns ``Q`` of the fixed policy (SARSA TD targets, the action-smoothness regulariser of
  Zhang et al. 2020), then PGD lowering ``Q(s, pi(s + delta))``. Call :meth:`RobustSarsa.fit` first.
* :class:`LearnedAdversary`: the "optimal attack" of ATLA (Zhang et al. 2021): an SB3 PPO adversary whose action
  is the perturbation, trained against the frozen victim with reward minus the victim's; its learning rate is
  chosen automatically among a few on held-out episodes. Call :meth:`LearnedAdversary.fit` first.

:func:`run_episode` plays one seeded episode with an attack on the observations the agent sees.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import distributions as D
from torch import nn

from ...threat import ThreatModel
from .envs import EnvLike, check_agent_env, env_id_of, make_env, obs_bounds, to_action, to_actions
from .policy import PolicyAdapter
from .threat import ObsNormalizer, adapter_in_z, to_raw

ObsAttack = Callable[..., torch.Tensor]


# ----------------------------------------------------------------------------------------------- helpers
def _as_batch(obs: Any, normalizer: ObsNormalizer) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(obs) if not torch.is_tensor(obs) else obs, dtype=torch.float32)
    d = normalizer.mean.numel()
    # one observation of any shape (a vector, highway-env's vehicles x features) or a batch of them
    x = x.reshape(1, d) if x.numel() == d else x.reshape(x.shape[0], -1)
    if x.shape[1] != normalizer.mean.numel():
        raise ValueError(f"observations have {x.shape[1]} dimensions but the normaliser has {normalizer.mean.numel()}")
    if not torch.isfinite(x).all():
        raise ValueError("observations contain NaN or inf")
    return x


def _z(normalizer: ObsNormalizer, threat: ThreatModel, obs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x = _as_batch(obs, normalizer)
    return x, normalizer.to_z(x).detach()


def _finish(name: str, normalizer: ObsNormalizer, threat: ThreatModel, z_adv: torch.Tensor,
            x: torch.Tensor) -> torch.Tensor:
    """The raw observations of ``z_adv`` around the raw batch ``x``, after checking that every row is inside the
    threat: the attack's own point in z-units, then the raw observation the agent will see (:func:`to_raw`
    rounds it back inside where float32 rounding pushed it out), in float64. ``ValueError`` if any is not."""
    z_adv = z_adv.detach()
    z = normalizer.to_z(x)
    raw = to_raw(normalizer, threat, z_adv, x)
    z_raw = normalizer.to_z(raw.double())
    inside = threat.contains(z_adv, z) & threat.contains(z_raw, normalizer.to_z(x.double()))
    if not bool(inside.all()):
        worst = float(threat.norm_of(z_adv - z).max())
        raise ValueError(f"attack {name!r} left the budget on {int((~inside).sum())} of {len(inside)} observations "
                         f"(largest {threat.norm.value} size {worst:.6g} > eps {threat.eps_scalar:g}, or out of the "
                         f"observation bounds)")
    return raw


def default_step_size(threat: ThreatModel, steps: int, step_size: Optional[float] = None) -> float:
    """``step_size`` if given, else 2.5 * eps / steps (Madry et al.): enough to cross the ball and come back."""
    return float(step_size) if step_size is not None else 2.5 * threat.eps_scalar / max(1, steps)


class AttackPasses:
    """Forward / backward passes an attack spent, in sample-passes (one observation through the network);
    counted by the PGD loops themselves (the training recipes report them as the cost of robust training)."""

    def __init__(self) -> None:
        self.forward = 0
        self.backward = 0

    def add(self, n: int, forward: int, backward: int) -> None:
        self.forward += n * forward
        self.backward += n * backward

    def state_dict(self) -> dict[str, int]:
        return {"forward": self.forward, "backward": self.backward}

    def load_state_dict(self, d: dict[str, int]) -> None:
        self.forward, self.backward = int(d["forward"]), int(d["backward"])


def _pgd(z: torch.Tensor, threat: ThreatModel, objective: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
         steps: int, step_size: float, generator: Optional[torch.Generator] = None,
         sgld_noise: float = 0.0, keep_best: bool = True) -> torch.Tensor:
    """Projected ascent on a per-sample ``objective(z_adv)`` (to maximise). One forward and backward pass per
    step. ``keep_best``: return the best iterate per sample (the start included; each iterate is scored by the
    pass that computes its gradient, the last one by one more forward pass), else the last iterate (training's
    inner maximisation, where the extra pass is not worth its cost)."""
    z_adv = start.detach()
    best, best_val = z_adv.clone(), None
    for k in range(steps + 1 if keep_best else steps):
        z_adv = z_adv.detach().requires_grad_(k < steps)
        with torch.set_grad_enabled(k < steps):
            val = objective(z_adv)
        if keep_best:
            with torch.no_grad():
                v = val.detach()
                if best_val is None:
                    best_val = v.clone()
                else:
                    better = v > best_val
                    best = torch.where(better[:, None], z_adv.detach(), best)
                    best_val = torch.where(better, v, best_val)
        if k == steps:
            break
        (grad,) = torch.autograd.grad(val.sum(), z_adv)
        with torch.no_grad():
            if sgld_noise > 0:  # SGLD: a normalised gradient step plus Gaussian noise of relative scale sgld_noise
                grad = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12) + sgld_noise * torch.randn(
                    grad.shape, generator=generator, dtype=grad.dtype)
            z_adv = threat.project(threat.step(z_adv.detach(), grad, step_size), z)
    return best if keep_best else z_adv.detach()


# ----------------------------------------------------------------------------------------------- z-space PGD
def mad_pgd(adapter_z: PolicyAdapter, z: torch.Tensor, threat: ThreatModel, steps: int = 5,
            step_size: Optional[float] = None, generator: Optional[torch.Generator] = None,
            counter: Optional[AttackPasses] = None, sgld_noise: float = 0.0, keep_best: bool = False) -> torch.Tensor:
    """MAD in z-space: maximise ``KL(pi(.|z) || pi(.|z_adv))`` over the threat ball around ``z`` by PGD from a
    random point of the ball (the KL's gradient vanishes at ``z`` itself); ``sgld_noise > 0`` adds Langevin
    noise to each step (SGLD).

    ``adapter_z`` sees z-space inputs (:func:`adapter_in_z`); call it under ``adapter.frozen()`` when the
    parameters must not collect gradients. The evaluation attack (:func:`mad_attack`) keeps the best iterate,
    the training recipes (SA-PPO's regulariser, attacked observations) the last one. Returns ``z_adv``
    (detached), inside the ball by construction."""
    z = z.detach()
    if threat.eps_scalar == 0:
        return z.clone()
    with torch.no_grad():  # the clean distribution once
        clean = adapter_z.distribution(z)
        clean = D.Categorical(logits=clean.logits) if adapter_z.discrete else D.Normal(clean.mean, clean.stddev)

    def kl(v: torch.Tensor) -> torch.Tensor:
        out = D.kl_divergence(clean, adapter_z.distribution(v))
        return out if out.dim() == 1 else out.sum(-1)

    z_adv = _pgd(z, threat, kl, threat.random_init(z, generator=generator), steps,
                 default_step_size(threat, steps, step_size), generator, sgld_noise, keep_best)
    if counter is not None:
        counter.add(len(z), steps + 1 + int(keep_best), steps)
    return z_adv


def critic_pgd(adapter_z: PolicyAdapter, z: torch.Tensor, threat: ThreatModel, steps: int = 5,
               step_size: Optional[float] = None, generator: Optional[torch.Generator] = None,
               counter: Optional[AttackPasses] = None, random_start: bool = True,
               keep_best: bool = False) -> torch.Tensor:
    """Critic attack in z-space: PGD lowering the agent's own value estimate ``V(z_adv)`` (the state looks worse
    than it is, as in Pattanaik et al.'s value-based attack, with V standing in for Q). See :func:`mad_pgd`."""
    if adapter_z.value is None:
        raise ValueError("the critic attack needs the agent's value function (PolicyAdapter.value is None; SB3 "
                         "PPO/A2C have one)")
    z = z.detach()
    if threat.eps_scalar == 0:
        return z.clone()
    start = threat.random_init(z, generator=generator) if random_start else z
    z_adv = _pgd(z, threat, lambda v: -adapter_z.value(v).reshape(-1), start, steps,
                 default_step_size(threat, steps, step_size), generator, keep_best=keep_best)
    if counter is not None:
        counter.add(len(z), steps + int(keep_best), steps)
    return z_adv


# ----------------------------------------------------------------------------------------------- attacks
def random_noise(adapter: PolicyAdapter, normalizer: ObsNormalizer, threat: ThreatModel, obs: Any, *,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A uniformly random point of the ball around each observation (``threat.random_init``)."""
    x, z = _z(normalizer, threat, obs)
    return _finish("random", normalizer, threat, threat.random_init(z, generator=generator), x)


def critic_attack(adapter: PolicyAdapter, normalizer: ObsNormalizer, threat: ThreatModel, obs: Any, *,
                  steps: int = 10, step_size: Optional[float] = None, random_start: bool = False,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """PGD lowering the agent's critic ``V(s + delta)`` (:func:`critic_pgd`, best iterate; step ``2.5 eps /
    steps`` by default)."""
    if adapter.value is None:
        raise ValueError("the critic attack needs the agent's value function (PolicyAdapter.value is None)")
    x, z = _z(normalizer, threat, obs)
    z_adv = critic_pgd(adapter_in_z(adapter, normalizer), z, threat, steps, step_size, generator,
                       random_start=random_start, keep_best=True)
    return _finish("critic", normalizer, threat, z_adv, x)


def mad_attack(adapter: PolicyAdapter, normalizer: ObsNormalizer, threat: ThreatModel, obs: Any, *,
               steps: int = 10, step_size: Optional[float] = None, sgld_noise: float = 0.0,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Maximal action difference (:func:`mad_pgd`, best iterate): maximise ``KL(pi(.|s) || pi(.|s + delta))``
    from a random start; ``sgld_noise > 0`` adds Langevin noise to each step (SGLD)."""
    x, z = _z(normalizer, threat, obs)
    z_adv = mad_pgd(adapter_in_z(adapter, normalizer), z, threat, steps, step_size, generator,
                    sgld_noise=sgld_noise, keep_best=True)
    return _finish("mad", normalizer, threat, z_adv, x)


# ----------------------------------------------------------------------------------------------- Robust Sarsa
class _QNet(nn.Module):
    def __init__(self, d: int, n_actions: int, discrete: bool, hidden: int):
        super().__init__()
        self.discrete = discrete
        inp = d if discrete else d + n_actions
        out = n_actions if discrete else 1
        self.net = nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, out))

    def forward(self, z: torch.Tensor, a: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Discrete: all actions' values ``(N, A)``; continuous: ``Q(z, a)`` ``(N,)``."""
        if self.discrete:
            return self.net(z)
        return self.net(torch.cat([z, a], dim=1)).squeeze(1)


def _sample_action(adapter: PolicyAdapter, env: Any, obs: torch.Tensor, generator: torch.Generator) -> Any:
    """A stochastic action of the agent drawn from ``generator`` (not torch's global RNG): reproducible."""
    with torch.no_grad():
        dist = adapter.distribution(obs)
        if adapter.discrete:
            return int(torch.multinomial(dist.probs[0], 1, generator=generator))
        a = dist.mean + dist.stddev * torch.randn(dist.mean.shape, generator=generator)
    space = env.action_space
    return np.clip(a[0].numpy().astype(space.dtype).reshape(space.shape), space.low, space.high)


def _policy_value(q: _QNet, dist: Any, z: torch.Tensor, discrete: bool) -> torch.Tensor:
    """``E_{a ~ pi} Q(z, a)`` (discrete) or ``Q(z, mean action)`` (continuous)."""
    if discrete:
        return (dist.probs * q(z)).sum(1)
    return q(z, dist.mean)


@dataclass
class RobustSarsa:
    """Robust Sarsa (Zhang et al. 2020): a Q function of the fixed policy, then PGD against it.

    :meth:`fit` collects ``transitions`` steps of the agent in the environment (a share ``explore`` of steps
    act at random and the agent sees observations with random noise of up to ``explore_eps`` x eps, so that
    failures are visited), then trains a small MLP ``Q`` for ``train_steps`` Adam steps on SARSA targets
    ``r + gamma * E_{a' ~ pi(.|s')} Q_target(s', a')`` (the policy's own next action: Q of the fixed policy)
    with a Polyak target network. For continuous actions the regulariser of Zhang et al. 2020 keeps ``Q``
    smooth in the action, ``reg * max_{|a' - a| <= action_eps} (Q(s, a') - Q(s, a))^2`` (the max by
    ``reg_steps`` of PGD instead of their convex relaxation); a discrete ``Q`` is linear in the action
    distribution and needs none.

    The attack is PGD (``steps``) lowering ``Q(s, pi(s + delta))``: the value, at the true state, of the action
    the agent takes on the perturbed one (``q_at="clean"``, as in SA-PPO's code; ``"perturbed"`` evaluates Q at
    ``s + delta`` instead). For discrete actions the objective is ``log pi(a_worst | s + delta)`` with ``a_worst =
    argmin_a Q(s, a)``, the log-space version of lowering ``E_pi Q(s, a)`` that does not saturate.
    """

    transitions: int = 4000
    train_steps: int = 2000
    hidden: int = 64
    lr: float = 1e-3
    gamma: float = 0.95
    batch_size: int = 256
    tau: float = 0.01
    reg: float = 0.1
    action_eps: float = 0.05
    reg_steps: int = 3
    explore: float = 0.1
    explore_eps: float = 3.0
    steps: int = 10
    step_size: Optional[float] = None
    q_at: str = "clean"
    q: Optional[_QNet] = field(default=None, repr=False)
    info: dict = field(default_factory=dict, repr=False)

    name = "rs"

    @property
    def is_fitted(self) -> bool:
        return self.q is not None

    def fresh(self) -> "RobustSarsa":
        """The same settings, unfitted."""
        return dataclasses.replace(self, q=None, info={})

    def fit(self, adapter: PolicyAdapter, env_id: EnvLike, normalizer: ObsNormalizer, threat: ThreatModel,
            seed: int = 0, **env_kwargs: Any) -> "RobustSarsa":
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(seed)
        rng = np.random.default_rng(seed)
        env = make_env(env_id, seed=seed, **env_kwargs)  # seeds the random exploratory actions too
        space = env.action_space  # kept: highway-env replaces env.action_space (unseeded) at every reset
        check_agent_env(adapter, env)
        discrete = adapter.discrete
        za = adapter_in_z(adapter, normalizer)
        n_act = int(env.action_space.n) if discrete else int(np.prod(env.action_space.shape))
        noise = threat.scaled(self.explore_eps) if threat.eps_scalar > 0 else threat
        zs, acts, rews, nzs, dones = [], [], [], [], []
        episodes = 0
        with adapter.frozen():
            obs, _ = env.reset(seed=seed)
            while len(zs) < self.transitions:
                x = _as_batch(obs, normalizer)
                z = normalizer.to_z(x)
                seen = normalizer.from_z(noise.random_init(z, generator=g)) if rng.random() < 0.5 else x
                if rng.random() < self.explore:
                    action = space.sample()
                else:
                    action = _sample_action(adapter, env, seen, g)
                nobs, r, term, trunc, _ = env.step(action)
                zs.append(z[0])
                acts.append(torch.as_tensor(np.asarray(action, dtype=np.float32)).reshape(-1))
                rews.append(float(r))
                nzs.append(normalizer.to_z(_as_batch(nobs, normalizer))[0])
                dones.append(float(term))  # truncation is not an end of the task: bootstrap through it
                obs = nobs
                if term or trunc:
                    episodes += 1
                    obs, _ = env.reset(seed=seed + episodes)
        env.close()
        Z, Zn = torch.stack(zs), torch.stack(nzs)
        A = torch.stack(acts)
        A = A.long().squeeze(1) if discrete else A
        R, Dn = torch.tensor(rews), torch.tensor(dones)
        with torch.no_grad(), adapter.frozen():
            next_dist = za.distribution(Zn)
            next_probs = next_dist.probs if discrete else None
            next_act = None if discrete else next_dist.mean
        torch.manual_seed(seed)  # the Q network's initialisation
        q = _QNet(Z.shape[1], n_act, discrete, self.hidden)
        target = copy.deepcopy(q).requires_grad_(False)
        opt = torch.optim.Adam(q.parameters(), lr=self.lr)
        scale = max(1.0, float(R.abs().max()) / (1 - self.gamma))  # learn Q / scale: targets of order 1
        n = Z.shape[0]
        for _ in range(self.train_steps):
            idx = torch.randint(0, n, (min(self.batch_size, n),), generator=g)
            z, a, r, zn, dn = Z[idx], A[idx], R[idx] / scale, Zn[idx], Dn[idx]
            with torch.no_grad():
                if discrete:
                    vn = (next_probs[idx] * target(zn)).sum(1)
                else:
                    vn = target(zn, next_act[idx])
                y = r + self.gamma * (1 - dn) * vn
            if discrete:
                qa = q(z).gather(1, a[:, None]).squeeze(1)
            else:
                qa = q(z, a)
            loss = nn.functional.smooth_l1_loss(qa, y)
            if not discrete and self.reg > 0 and self.reg_steps > 0:
                loss = loss + self.reg * self._action_penalty(q, z, a, g)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for p, pt in zip(q.parameters(), target.parameters()):
                    pt.mul_(1 - self.tau).add_(self.tau * p)
        self.q = q.eval().requires_grad_(False)
        self.info = {"transitions": n, "episodes": episodes, "train_steps": self.train_steps,
                     "final_td_loss": float(loss.detach()), "q_scale": scale, "fit_seconds": time.perf_counter() - t0}
        return self

    def _action_penalty(self, q: _QNet, z: torch.Tensor, a: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """``max_{|a' - a|_inf <= action_eps} (Q(z, a') - Q(z, a))^2`` by a few signed-gradient steps."""
        q0 = q(z, a)
        d = (torch.rand(a.shape, generator=g) * 2 - 1) * self.action_eps
        for _ in range(self.reg_steps):
            d = d.detach().requires_grad_(True)
            gap = (q(z, a + d) - q0.detach()).pow(2).sum()
            (gd,) = torch.autograd.grad(gap, d)
            d = (d + self.action_eps / 2 * gd.sign()).clamp(-self.action_eps, self.action_eps)
        return (q(z, a + d.detach()) - q0).pow(2).mean()

    def __call__(self, adapter: PolicyAdapter, normalizer: ObsNormalizer, threat: ThreatModel, obs: Any, *,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if self.q is None:
            raise ValueError("RobustSarsa must be fitted first: RobustSarsa().fit(adapter, env_id, normalizer, threat)")
        if self.q_at not in ("clean", "perturbed"):
            raise ValueError(f"q_at must be 'clean' or 'perturbed', got {self.q_at!r}")
        x, z = _z(normalizer, threat, obs)
        za = adapter_in_z(adapter, normalizer)
        q = self.q
        if adapter.discrete:
            with torch.no_grad():
                worst = q(z).argmin(1)

            def objective(v: torch.Tensor) -> torch.Tensor:
                logits = za.distribution(v).logits
                lp = torch.log_softmax(logits, -1).gather(1, worst[:, None]).squeeze(1)
                return lp
        else:
            def objective(v: torch.Tensor) -> torch.Tensor:
                return -q(z if self.q_at == "clean" else v, za.distribution(v).mean)
        if adapter.discrete and self.q_at == "perturbed":
            def objective(v: torch.Tensor) -> torch.Tensor:  # noqa: F811 - E_pi(.|v) Q(v, a), to lower
                return -_policy_value(q, za.distribution(v), v, True)
        z_adv = _pgd(z, threat, objective, z, self.steps, default_step_size(threat, self.steps, self.step_size), generator)
        return _finish("rs", normalizer, threat, z_adv, x)


# ----------------------------------------------------------------------------------------------- learned adversary
def _adversary_env_class():
    import gymnasium as gym

    class AdversaryEnv(gym.Env):
        """The victim's environment seen by an adversary: observation = the clean observation in z-units
        (clipped to +-10), action = the perturbation, ``threat.project(z + eps * tanh(action), z)``, reward =
        minus the victim's reward. The victim acts deterministically on the perturbed observation."""

        metadata: dict = {}

        def __init__(self, env_id: EnvLike, victim: PolicyAdapter, normalizer: ObsNormalizer, threat: ThreatModel,
                     env_kwargs: Optional[dict] = None):
            self.env = make_env(env_id, **(env_kwargs or {}))
            check_agent_env(victim, self.env)
            self.victim, self.normalizer, self.threat = victim, normalizer, threat
            d = normalizer.mean.numel()
            self.observation_space = gym.spaces.Box(-10.0, 10.0, (d,), np.float32)
            # PPO clips its Gaussian actions to the box; tanh(3) = 0.995 reaches the ball's edge.
            self.action_space = gym.spaces.Box(-3.0, 3.0, (d,), np.float32)
            self._obs: Any = None
            self.in_budget = True

        def _zobs(self, obs: Any) -> np.ndarray:
            z = self.normalizer.to_z(_as_batch(obs, self.normalizer))[0]
            return z.clamp(-10, 10).numpy().astype(np.float32)

        def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
            super().reset(seed=seed)
            self._obs, info = self.env.reset(seed=seed, options=options)
            return self._zobs(self._obs), info

        def perturb(self, obs: Any, action: Any) -> torch.Tensor:
            x = _as_batch(obs, self.normalizer)
            z = self.normalizer.to_z(x)
            a = torch.as_tensor(np.asarray(action, dtype=np.float32)).reshape(z.shape)
            z_adv = self.threat.project(z + self.threat.eps_scalar * torch.tanh(a), z)
            return _finish("optimal", self.normalizer, self.threat, z_adv, x)

        def step(self, action: Any):
            seen = self.perturb(self._obs, action)
            victim_action = to_action(self.victim, self.env, seen)
            self._obs, r, term, trunc, info = self.env.step(victim_action)
            return self._zobs(self._obs), -float(r), term, trunc, info

        def close(self) -> None:
            self.env.close()

    return AdversaryEnv


@dataclass
class LearnedAdversary:
    """The "optimal attack" of ATLA (Zhang et al. 2021): a PPO adversary trained against the frozen victim.

    :meth:`fit` trains one SB3 PPO adversary per configuration in ``configs`` (default: learning rates 3e-4, 1e-3
    and 3e-3) for ``timesteps`` environment steps each, scores each by the victim's mean return on
    ``heldout_episodes`` held-out episodes (seeds ``seed + 10_000 + i``, never the evaluation's) and keeps the one
    with the lowest: no hand scans. The search, its scores and times are in :attr:`info`. Budget:
    ``len(configs) * timesteps`` adversary steps plus ``len(configs) * heldout_episodes`` episodes.
    """

    timesteps: int = 20_000
    configs: Sequence[dict] = ({"learning_rate": 3e-4}, {"learning_rate": 1e-3}, {"learning_rate": 3e-3})
    heldout_episodes: int = 3
    n_steps: int = 256
    batch_size: int = 64
    n_epochs: int = 10
    gamma: float = 0.99
    net_arch: Sequence[int] = (32, 32)
    model: Any = field(default=None, repr=False)
    info: dict = field(default_factory=dict, repr=False)

    name = "optimal"

    @property
    def is_fitted(self) -> bool:
        return self.model is not None

    def fresh(self) -> "LearnedAdversary":
        """The same settings, unfitted."""
        return dataclasses.replace(self, model=None, info={})

    def fit(self, adapter: PolicyAdapter, env_id: EnvLike, normalizer: ObsNormalizer, threat: ThreatModel,
            seed: int = 0, **env_kwargs: Any) -> "LearnedAdversary":
        from stable_baselines3 import PPO

        Env = _adversary_env_class()
        search = []
        best = None
        t_all = time.perf_counter()
        with adapter.frozen():
            for k, cfg in enumerate(self.configs):
                t0 = time.perf_counter()
                env = Env(env_id, adapter, normalizer, threat, env_kwargs)
                env.reset(seed=seed + 1000 * k)
                env.action_space.seed(seed + 1000 * k)
                kw = {"n_steps": self.n_steps, "batch_size": self.batch_size, "n_epochs": self.n_epochs,
                      "gamma": self.gamma, "policy_kwargs": {"net_arch": list(self.net_arch)}, **cfg}
                model = PPO("MlpPolicy", env, seed=seed + k, device="cpu", verbose=0, **kw)
                model.learn(self.timesteps)
                self.model = model
                heldout = make_env(env_id, **env_kwargs)
                victim_returns = [run_episode(heldout, adapter, self, normalizer, threat, seed=seed + 10_000 + i).ret
                                  for i in range(self.heldout_episodes)]
                heldout.close()
                env.close()
                score = float(np.mean(victim_returns))
                search.append({"config": dict(cfg), "heldout_victim_returns": victim_returns, "score": score,
                               "seconds": time.perf_counter() - t0})
                if best is None or score < best[0]:
                    best = (score, k, model)
        self.model = best[2]
        self.info = {"search": search, "chosen": dict(self.configs[best[1]]), "timesteps": self.timesteps,
                     "heldout_episodes": self.heldout_episodes, "fit_seconds": time.perf_counter() - t_all}
        return self

    def __call__(self, adapter: PolicyAdapter, normalizer: ObsNormalizer, threat: ThreatModel, obs: Any, *,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if self.model is None:
            raise ValueError("LearnedAdversary must be fitted first: LearnedAdversary().fit(adapter, env_id, "
                             "normalizer, threat)")
        x, z = _z(normalizer, threat, obs)
        action, _ = self.model.predict(z.clamp(-10, 10).numpy(), deterministic=True)
        a = torch.as_tensor(np.asarray(action, dtype=np.float32)).reshape(z.shape)
        z_adv = threat.project(z + threat.eps_scalar * torch.tanh(a), z)
        return _finish("optimal", normalizer, threat, z_adv, x)


# ----------------------------------------------------------------------------------------------- registry
AGENT_ATTACKS: dict[str, tuple[Any, str]] = {
    "random": (random_noise, "uniform random noise in the ball"),
    "critic": (critic_attack, "PGD-10 lowering the agent's critic V(s+delta)"),
    "mad": (mad_attack, "maximal action difference: PGD-10 on KL(pi(s)||pi(s+delta)) from a random start"),
    "rs": (RobustSarsa, "Robust Sarsa: learned Q of the policy (4000 transitions, 2000 steps), PGD-10 on it"),
    "optimal": (LearnedAdversary, "learned PPO adversary (ATLA), lr searched over 3 configs x 20k steps"),
}


def make_attack(name: str, **kwargs: Any) -> Any:
    """The attack called ``name`` (see :data:`AGENT_ATTACKS`) with ``kwargs`` bound; learned attacks come back
    unfitted (call their ``fit``; :func:`armor.domains.agents.evaluate.evaluate_agent` does)."""
    if name not in AGENT_ATTACKS:
        raise ValueError(f"unknown agent attack {name!r}: choose one of {', '.join(AGENT_ATTACKS)}")
    fn = AGENT_ATTACKS[name][0]
    if isinstance(fn, type):
        return fn(**kwargs)
    return functools.partial(fn, **kwargs) if kwargs else fn


def needs_fit(attack: Any) -> bool:
    return hasattr(attack, "fit") and callable(attack.fit)


# ----------------------------------------------------------------------------------------------- episodes
@dataclass
class EpisodeResult:
    """One episode: its return and length, how many steps were attacked, whether every observation the agent
    saw was inside the budget (and the largest perturbation, in threat units), and whether ``failure_key`` was
    set in any step's info (e.g. highway-env's ``crashed``)."""

    ret: float
    length: int
    in_budget: bool
    attacked_steps: int = 0
    max_perturbation: float = 0.0
    failed: bool = False
    frames: dict = field(default_factory=dict, repr=False)  # state index -> rendered frame (render_at)

    def to_dict(self) -> dict:
        return {"return": self.ret, "length": self.length, "in_budget": self.in_budget,
                "attacked_steps": self.attacked_steps, "max_perturbation": self.max_perturbation,
                "failed": self.failed}


def _inside_rows(threat: ThreatModel, normalizer: ObsNormalizer, seen: torch.Tensor, obs: torch.Tensor,
                 low: np.ndarray, high: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of the raw batch ``seen``: whether it is inside the budget around the raw batch ``obs`` (the
    z-ball up to float round-off of the z <-> raw maps, and the raw observation bounds), and its size."""
    z, z_seen = normalizer.to_z(obs.double()), normalizer.to_z(seen.double())
    size = threat.norm_of(z_seen - z)
    tol = 1e-5 * torch.maximum(z.abs().amax(1), z_seen.abs().amax(1)).clamp_min(1.0)
    lo, hi = torch.as_tensor(low), torch.as_tensor(high)
    span = torch.where(torch.isfinite(lo) & torch.isfinite(hi), (hi - lo).abs(), torch.ones_like(lo))
    slack = 1e-6 * span.clamp_min(1.0)
    in_bounds = ((seen.double() >= lo - slack) & (seen.double() <= hi + slack)).all(1)
    return (size <= threat.eps_scalar + tol) & in_bounds, size


def _inside(threat: ThreatModel, normalizer: ObsNormalizer, seen: torch.Tensor, obs: torch.Tensor,
            low: np.ndarray, high: np.ndarray) -> tuple[bool, float]:
    """Whether every row of ``seen`` is inside the budget around ``obs`` (:func:`_inside_rows`), and the
    largest size."""
    ok, size = _inside_rows(threat, normalizer, seen, obs, low, high)
    return bool(ok.all()), float(size.max())


def run_episode(env: EnvLike, adapter: PolicyAdapter, attack: Optional[ObsAttack] = None,
                normalizer: Optional[ObsNormalizer] = None, threat: Optional[ThreatModel] = None, seed: int = 0,
                attack_share: float = 1.0, max_steps: Optional[int] = None, failure_key: Optional[str] = None,
                deterministic: bool = True, render_at: Sequence[int] = ()) -> EpisodeResult:
    """Play one episode (``env.reset(seed=seed)``), the agent acting (deterministically by default) on what
    ``attack`` makes of each observation.

    ``attack_share`` < 1 attacks each step with that probability (draws from ``numpy.random.default_rng(seed)``,
    one per step whether attacked or not); the attack's generator is ``torch.Generator().manual_seed(seed)``:
    the same seed gives the same episode. Every perturbed observation is checked against the budget (z-ball and
    raw observation bounds); ``in_budget`` is False if any was outside.

    ``render_at``: state indices (0: after the reset, ``length``: the final state) at which ``env.render()`` is
    kept in ``frames`` (the environment must have been made with ``render_mode="rgb_array"``).
    """
    import gymnasium as gym

    owned = not isinstance(env, gym.Env)
    env = make_env(env) if owned else env
    try:
        return run_episodes([env], adapter, attack, normalizer, threat, [seed], attack_share, max_steps, failure_key,
                            deterministic, render_at)[0]
    finally:
        if owned:
            env.close()


def run_episodes(envs: Sequence[Any], adapter: PolicyAdapter, attack: Optional[ObsAttack] = None,
                 normalizer: Optional[ObsNormalizer] = None, threat: Optional[ThreatModel] = None,
                 seeds: Sequence[int] = (0,), attack_share: float = 1.0, max_steps: Optional[int] = None,
                 failure_key: Optional[str] = None, deterministic: bool = True,
                 render_at: Sequence[int] = ()) -> list[EpisodeResult]:
    """Play ``len(seeds)`` episodes in lock step, episode ``i`` in ``envs[i]`` (``reset(seed=seeds[i])``): at
    every step the observations of the episodes still running go through the attack and the agent as **one
    batch** (one attack call, one policy call), which is what makes evaluation fast (PGD on a batch of 10 costs
    little more than on one observation). Episodes that end drop out of the batch.

    Same rules as :func:`run_episode`: the share gate draws from ``numpy.random.default_rng(seeds[i])`` once
    per step of episode ``i``; every perturbed observation is checked against the budget. The attack's random
    draws (random noise, PGD's random start) come from one ``torch.Generator().manual_seed(seeds[0])`` for
    the batch, so the same seeds give the same episodes, but an episode's draws depend on the batch it is played
    in (a batch of one is :func:`run_episode`). ``render_at``: as in :func:`run_episode`, for the first episode
    (``envs[0]``) only: replaying a batch to film one of its episodes."""
    if not 0.0 <= attack_share <= 1.0:
        raise ValueError(f"attack_share must be in [0, 1], got {attack_share}")
    if attack is not None and (normalizer is None or threat is None):
        raise ValueError("an attack needs the normalizer and the threat")
    if len(envs) != len(seeds) or not seeds:
        raise ValueError(f"run_episodes needs one environment per seed, got {len(envs)} and {len(seeds)}")
    for env in envs:
        check_agent_env(adapter, env)
    low, high = obs_bounds(envs[0])
    n = len(seeds)
    gen = torch.Generator().manual_seed(int(seeds[0]))
    rngs = [np.random.default_rng(int(s)) for s in seeds]
    obs = [env.reset(seed=int(s))[0] for env, s in zip(envs, seeds)]
    ret, length, attacked = [0.0] * n, [0] * n, [0] * n
    inside, worst, failed = [True] * n, [0.0] * n, [False] * n
    alive = list(range(n))
    render_at, frames = set(int(t) for t in render_at), [{} for _ in range(n)]
    with adapter.frozen():
        while alive:
            if alive[0] == 0 and length[0] in render_at:
                frames[0][length[0]] = envs[0].render()
            x = torch.as_tensor(np.stack([np.asarray(obs[i], dtype=np.float32).reshape(-1) for i in alive]))
            seen = x
            if attack is not None:
                hit = [k for k, i in enumerate(alive) if rngs[i].random() < attack_share]
                if hit:
                    rows = torch.as_tensor(hit)
                    adv = torch.as_tensor(attack(adapter, normalizer, threat, x[rows], generator=gen),
                                          dtype=torch.float32).reshape(len(hit), -1).detach()
                    ok, size = _inside_rows(threat, normalizer, adv, x[rows], low, high)
                    seen = x.clone()
                    seen[rows] = adv
                    for j, k in enumerate(hit):
                        i = alive[k]
                        inside[i] = inside[i] and bool(ok[j])
                        worst[i] = max(worst[i], float(size[j]))
                        attacked[i] += 1
            actions = to_actions(adapter, envs[alive[0]], seen, deterministic)
            still = []
            for k, i in enumerate(alive):
                obs[i], r, term, trunc, info = envs[i].step(actions[k])
                ret[i] += float(r)
                length[i] += 1
                if failure_key is not None and info.get(failure_key):
                    failed[i] = True
                if not (term or trunc or (max_steps is not None and length[i] >= max_steps)):
                    still.append(i)
                elif i == 0 and length[i] in render_at:
                    frames[i][length[i]] = envs[i].render()
            alive = still
    return [EpisodeResult(ret[i], length[i], inside[i], attacked[i], worst[i], failed[i], frames[i])
            for i in range(n)]


__all__ = ["AGENT_ATTACKS", "AttackPasses", "EpisodeResult", "critic_pgd", "default_step_size", "mad_pgd", "LearnedAdversary", "RobustSarsa", "critic_attack", "mad_attack",
           "make_attack", "needs_fit", "random_noise", "run_episode", "run_episodes"]
