"""A differentiable view of an agent: observation tensor -> action distribution (and value), for any
stable-baselines3 policy (PPO, A2C: discrete or continuous actions) or a plain torch module.

Every attack and every robust-training regulariser of the agents domain talks to an agent only through
:class:`PolicyAdapter`, so it works the same on an SB3 agent, an agent trained by armor, or your own module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import distributions as D
from torch import nn


@dataclass
class PolicyAdapter:
    """What attacks need from an agent.

    Arguments:
        distribution: ``obs (N, d) float tensor -> torch.distributions.Distribution`` over actions, differentiable
            with respect to ``obs`` (Categorical for discrete actions, Normal / diagonal Gaussian for continuous).
        value: ``obs -> (N,)`` state values (the critic), if the agent has one; critic attacks need it.
        discrete: whether actions are discrete.
        module: the ``nn.Module`` holding the parameters (frozen during attacks, see :meth:`frozen`).
    """

    distribution: Callable[[torch.Tensor], D.Distribution]
    value: Optional[Callable[[torch.Tensor], torch.Tensor]]
    discrete: bool
    module: nn.Module

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Actions for a batch of observations (the mode when deterministic)."""
        with torch.no_grad():
            dist = self.distribution(obs)
            if not deterministic:
                return dist.sample()
            return dist.probs.argmax(-1) if self.discrete else dist.mean

    def kl(self, obs: torch.Tensor, obs_adv: torch.Tensor) -> torch.Tensor:
        """Per-sample KL(pi(.|obs) || pi(.|obs_adv)): what MAD maximises and SA-PPO penalises.

        The clean distribution is treated as a constant (detached), as in SA-PPO's regulariser."""
        clean = self.distribution(obs)
        adv = self.distribution(obs_adv)
        if self.discrete:
            clean = D.Categorical(logits=clean.logits.detach())
        else:
            clean = D.Normal(clean.mean.detach(), clean.stddev.detach())
        kl = D.kl_divergence(clean, adv)
        return kl if kl.dim() == 1 else kl.sum(-1)

    @classmethod
    def from_sb3(cls, model: Any) -> "PolicyAdapter":
        """Wrap a stable-baselines3 on-policy model (PPO, A2C) with a Box observation space."""
        policy = getattr(model, "policy", model)
        if not hasattr(policy, "get_distribution"):
            raise ValueError(f"{type(model).__name__} has no action distribution armor can read: use an SB3 "
                             "on-policy model (PPO, A2C) or build a PolicyAdapter from your own module")

        def distribution(obs: torch.Tensor) -> D.Distribution:
            return policy.get_distribution(obs).distribution

        def value(obs: torch.Tensor) -> torch.Tensor:
            return policy.predict_values(obs).squeeze(-1)

        from gymnasium import spaces

        return cls(distribution, value, isinstance(policy.action_space, spaces.Discrete), policy)

    def frozen(self):
        """Context: eval mode and frozen parameters while attacking (restored afterwards)."""
        from ...attacks import attack_mode

        return attack_mode(self.module)
