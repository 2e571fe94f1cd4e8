"""How fast highway-env's highway-fast-v0 steps on this machine: what the driving demo's budget is chosen from.

    .venv/bin/python bench/agents_highway.py [--seconds 8]

Plays the environment for ``--seconds`` with uniformly random actions (episodes end early in crashes, so resets
are included) and then with a constant action (IDLE: full 30-step episodes), one process, one torch thread;
prints steps/s, ms/step, episodes and crash rates, and ``uptime`` before and after (the machine is shared).
"""

from __future__ import annotations

import argparse
import subprocess
import time


def play(env, policy, seconds: float) -> dict:
    n = episodes = crashed = 0
    env.reset(seed=0)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        _, _, term, trunc, info = env.step(policy())
        n += 1
        if term or trunc:
            episodes += 1
            crashed += bool(info.get("crashed"))
            env.reset(seed=episodes)
    dt = time.perf_counter() - t0
    return {"steps_per_s": n / dt, "ms_per_step": 1000 * dt / n, "episodes": episodes, "crashed": crashed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    from armor.domains.agents.envs import make_env

    print("uptime before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    env = make_env("highway-fast-v0", seed=0)
    for name, policy in (("random actions", env.action_space.sample), ("constant IDLE", lambda: 1)):
        r = play(env, policy, args.seconds)
        print(f"{name}: {r['steps_per_s']:.1f} steps/s ({r['ms_per_step']:.1f} ms/step), {r['episodes']} episodes, "
              f"{r['crashed']} crashed")
    env.close()
    print("uptime after:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
