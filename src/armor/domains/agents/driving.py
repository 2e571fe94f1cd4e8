"""``armor/highway-drive-v0``: highway-env's highway-fast-v0 with a reward under which an agent learns to *drive*.

Imported only through gymnasium's entry point (``envs.ARMOR_ENVS``), after :func:`envs.ensure_registered` has
checked that highway-env is installed; nothing else in armor imports this module.

**The reward.** Per step, with ``s`` the forward speed mapped from ``reward_speed_range`` ([20, 30] m/s) to
[0, 1] and clipped, and ``a`` = ``alive_reward``:

* alive (no crash): ``a + (1 - a) * s`` (times highway-env's on-road flag: 0 off the road);
* crash: ``crash_reward`` (<= 0), and the episode ends, so a crash also forfeits the rest of the horizon.

Why, by arithmetic over the horizon (``duration`` 30 s at one decision a second: T = 30 steps), with the
defaults ``a`` = 0.2 and ``crash_reward`` = -3:

* fast (30 m/s), no crash: 30 x 1 = **30**;
* slow (20 m/s, braking), no crash: 30 x 0.2 = **6**;
* fast and crashing at step k: (k - 1) x 1 - 3 = k - 4, below braking's 6 for every k <= 9, and below 30 always.
  Holding FASTER on this road crashes at steps 2-15 (median 7.5; 8 seeded episodes), holding IDLE (25 m/s) at
  steps 6-28 in 7 of 8.

So (fast, no crash) 30 > (slow, no crash) 6 > (fast, crashing within 9 steps) <= 5; a scripted overtaking rule
(FASTER while the lane ahead is free for 40 m, else move to a freer lane, else SLOWER) earns 19.8 (25.7 m/s, no
crash in 8 episodes). PPO optimises the *discounted* return, and there the order must hold too: with gamma 0.9
(``train.DEFAULT_PPO``), mean over the same 8 episodes, braking 1.97, flat out 2.99, IDLE 4.04, the
overtaking rule 7.49 (``bench/agents_driving.py --scripted``).

highway-fast-v0's own reward (normalised to [0, 1], crash at 0) pays every crash-free step at least 1/1.5 of the
maximum whatever the speed, so braking earns 22 of 30 and small PPO budgets stop there. Two corners trap PPO,
measured with seeded 8-episode probes (bench/RESULTS.md, Agents -> Driving): with ``a`` = 0.5, crash -5 and
gamma 0.8 it braked on every observation from 2k to 16k steps (a braking car falls behind the traffic and never
meets a car it could learn to overtake); with ``a`` = 0.2, crash -3 and gamma 0.8 it held FASTER and crashed in 8
of 8 episodes up to 12k steps (at gamma 0.8 a crash 8 steps ahead weighs 0.8^7 = 0.2). With gamma 0.9 the same
reward left braking after about 4k steps for 24-25 m/s with lane changes, but it still crashed in 2-7 of 8
episodes (also at 40960 steps).

**What the agent sees.** Those agents mostly held an edge lane at their initial speed, and 36 of their 38 crashes
(four 20480-step agents, 16 seeded episodes each) were the ego vehicle running into a slower car ahead in its own
lane. On highway-env's default ranges (x +-200 m, vx +-80 m/s mapped to [-1, 1]) a 40 m gap reads 0.2 and a
closing speed of 3 m/s 0.04. On half those ranges (:data:`DRIVE_CONFIG`'s ``observation``), and with rollouts of
1024 steps per PPO update (``train.DEFAULT_PPO``), seeded probes crashed in 0-3 of 16 episodes from 12k to 41k
steps, at 21-22 m/s; the narrower ranges alone gave 3-6 of 16, the old ranges and rollouts 3-4 of 8. Over four
training seeds at 20480 steps vanilla PPO crashed in 10-45% of 20 clean episodes (mean 22%). This agent keeps
out of the traffic by mostly braking behind it and changing lanes, a cautious driver well below the scripted
rule's return: what an attack can now take from it is its safety.

The road has 10 other vehicles instead of 20: the other vehicles' IDM models are most of the simulator's cost
(56 instead of 25 steps per CPU second with constant IDLE; bench/RESULTS.md, Agents -> Driving).
"""

from __future__ import annotations

import math
from typing import Any

from highway_env.envs.highway_env import HighwayEnvFast

#: What armor's driving environment changes in highway-fast-v0's configuration.
DRIVE_CONFIG: dict[str, Any] = {
    "vehicles_count": 10, "alive_reward": 0.2, "crash_reward": -3.0, "reward_speed_range": [20, 30],
    # the kinematics observation (5 vehicles x presence, x, y, vx, vy; the others relative to the ego vehicle) on
    # ranges half highway-env's default (x +-200 m, vx +-80 m/s): the gaps and closing speeds the agent must read
    # span twice as much of [-1, 1] (see the module's docstring)
    "observation": {"type": "Kinematics",
                    "features_range": {"x": [-100, 100], "y": [-12, 12], "vx": [-40, 40], "vy": [-40, 40]}},
}


def drive_reward(speed_term: float, crashed: bool, on_road: bool = True,
                 alive_reward: float = DRIVE_CONFIG["alive_reward"],
                 crash_reward: float = DRIVE_CONFIG["crash_reward"]) -> float:
    """The per-step reward of :class:`DrivingEnv` (see the module's docstring): ``crash_reward`` on a crash,
    else ``(alive_reward + (1 - alive_reward) * speed_term) * on_road``, with ``speed_term`` in [0, 1]."""
    if crashed:
        return float(crash_reward)
    return float((alive_reward + (1.0 - alive_reward) * speed_term) * float(on_road))


def check_drive_config(config: dict[str, Any]) -> None:
    """``ValueError`` naming the key and its allowed values when the reward's configuration is unusable."""
    a = config.get("alive_reward")
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not (0.0 <= a <= 1.0):
        raise ValueError(f"alive_reward must be a number in [0, 1] (the share of a step's pay that survival alone "
                         f"earns; 0.2 by default), got {a!r}")
    c = config.get("crash_reward")
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c > 0:
        raise ValueError(f"crash_reward must be a finite number <= 0 (a crash may not pay; -3 by default), "
                         f"got {c!r}")
    r = config.get("reward_speed_range")
    try:
        lo, hi = (float(x) for x in r)
        ok = math.isfinite(lo) and math.isfinite(hi) and lo < hi
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"reward_speed_range must be two finite speeds [low, high] in m/s with low < high "
                         f"([20, 30] by default), got {r!r}")


class DrivingEnv(HighwayEnvFast):
    """highway-fast-v0 with :func:`drive_reward` and 10 other vehicles (:data:`DRIVE_CONFIG`)."""

    @classmethod
    def default_config(cls) -> dict:
        config = super().default_config()
        config.update(DRIVE_CONFIG)
        return config

    def configure(self, config: dict) -> None:
        super().configure(config)
        check_drive_config(self.config)

    def _reward(self, action: Any) -> float:
        # highway-env's own terms: the forward speed mapped by reward_speed_range and clipped, the crash, the road
        r = self._rewards(action)
        return drive_reward(float(r["high_speed_reward"]), bool(r["collision_reward"]), bool(r["on_road_reward"]),
                            self.config["alive_reward"], self.config["crash_reward"])


__all__ = ["DRIVE_CONFIG", "DrivingEnv", "check_drive_config", "drive_reward"]
