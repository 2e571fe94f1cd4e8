"""How many threads torch uses on the CPU: one documented policy for every command and the heavy entry points.

Every operation that runs on several threads waits at a barrier for all of them. When a core is busy with
another process the scheduler parks one of those threads, and every operation waits for it: on 2 cores shared
with two other processes, APGD-CE on 50 points of a digits MLP took 39.4 s on torch's default 2 threads and
0.73 s on one. On idle cores the same threads pay off, as soon as each call does enough work: a batch of 500
digits points through the MLP runs 1.3x faster on 2 threads, a PreAct ResNet-18 batch 1.8x.

The ``auto`` policy (:func:`thread_policy`) therefore looks at

* the work per call: the model's forward FLOPs per sample (:func:`model_flops`, counted on one sample) times
  the points per call (the batch size);
* the CPUs actually available (:func:`available_cpus`): the process's affinity mask, a cgroup CPU quota, shared
  by the processes ``torchrun`` started on this machine (``LOCAL_WORLD_SIZE``);
* how busy they are (:func:`busy_cpus`): a 0.2 s ``/proc/stat`` sample of the CPUs other processes use now,
  and the kernel's CPU pressure over the last 10 s (tasks waiting for a CPU), whichever says more;

and uses one thread when a call does less than :data:`SMALL_WORK_FLOPS`, otherwise one thread per free CPU
(so one thread on a loaded machine). The threshold comes from ``bench/threads.py``, which also checks that the
choice is never more than 1.2x slower than the best setting, on an idle and on a loaded machine (the "Threads"
section of bench/RESULTS.md). An explicit ``OMP_NUM_THREADS`` is respected by ``auto``.

Every compute command takes ``--threads N|auto`` (default ``auto``, or the ``ARMOR_THREADS`` environment
variable) and prints its choice. Library functions never change torch's thread count on their own; ask for it
with :func:`use_threads`::

    >>> with armor.threads.use_threads("auto", model, batch=500):  # or use_threads(1): a fixed count
    ...     result = armor.evaluate(model, data, threat)            # the same for Trainer(...).fit(), measure()

``use_threads`` also works as a plain call (the setting then stays); the context manager restores the
previous count on exit. The choice is made once, at the call: a load that starts later is not seen.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

AUTO = "auto"
# Forward FLOPs per call (FLOPs per sample x points per call) below which one thread is the fastest even on idle
# cores: bench/threads.py measured the digits MLP (0.17 MFLOP per sample) on 100 points per call (17 MFLOP) at
# 0.9-1.0x on two threads, 500 points per call (85 MFLOP) at 1.3x, the Fashion-MNIST small CNN on 100 points
# (120 MFLOP) at 1.1-1.2x.
SMALL_WORK_FLOPS = 40e6
DEFAULT_BATCH = 128  # points per call when the caller does not say (a training batch)
# A CPU counts as free when other processes kept it busy less than this share of the time.
BUSY_TOLERANCE = 0.2
SAMPLE_SECONDS = 0.2

ThreadsArg = Union[int, str, None]


def parse_threads(value: ThreadsArg) -> Union[int, str]:
    """``"auto"`` or a positive number of threads; anything else raises ``ValueError`` saying what is allowed."""
    if value is None:
        return AUTO
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"threads must be a positive integer or 'auto', got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"threads must be a positive integer or 'auto', got {value!r}")
    if value < 1:
        raise ValueError(f"threads must be a positive integer or 'auto', got {value} (use 1 for a single thread)")
    return value


def thread_policy(flops: Optional[float], cpus: int, busy: float = 0.0, batch: int = DEFAULT_BATCH) -> int:
    """The ``auto`` thread count: deterministic in its arguments.

    Arguments:
        flops: forward FLOPs per sample of the model (``None``: unknown, treated as a large model).
        cpus: CPUs this process may use (:func:`available_cpus`).
        busy: how many of them other processes keep busy (:func:`busy_cpus`), 0..cpus.
        batch: points per call (an attack's or a training step's batch).
    Returns:
        1 when a call does less than :data:`SMALL_WORK_FLOPS` (``flops * batch``) or there is one CPU;
        otherwise the number of free CPUs (a CPU busy less than :data:`BUSY_TOLERANCE` of the time counts as
        free), at least 1.
    """
    cpus = max(1, int(cpus))
    if cpus == 1 or (flops is not None and flops * max(1, int(batch)) < SMALL_WORK_FLOPS):
        return 1
    free = cpus - min(max(float(busy), 0.0), float(cpus))
    return max(1, min(cpus, math.floor(free + BUSY_TOLERANCE + 1e-9)))


def _cgroup_cpus() -> Optional[int]:
    """The CPUs a cgroup (v2 ``cpu.max`` or v1 ``cfs_quota_us``) allows, or ``None`` without a quota."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int(open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read())
        period = int(open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read())
        return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota, divided among the processes
    ``torchrun`` started on this machine (``LOCAL_WORLD_SIZE``)."""
    n = len(_affinity())
    quota = _cgroup_cpus()
    if quota is not None:
        n = min(n, quota)
    try:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        local = 1
    return max(1, n // max(1, local))


def _cpu_times(cpus: set[int]) -> dict[int, tuple[int, int]]:
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3:4].isdigit():
                fields = line.split()
                cpu = int(fields[0][3:])
                if cpu in cpus:
                    v = [int(t) for t in fields[1:9]]
                    out[cpu] = (v[3] + v[4], sum(v))  # (idle + iowait, all) in clock ticks
    return out


def cpu_pressure() -> Optional[float]:
    """Share of the last 10 s in which some runnable task waited for a CPU (Linux PSI ``/proc/pressure/cpu``,
    "some avg10", 0..1), or ``None`` where the kernel does not report it."""
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some"):
                    fields = dict(kv.split("=") for kv in line.split()[1:])
                    return min(1.0, max(0.0, float(fields["avg10"]) / 100.0))
    except (OSError, ValueError, KeyError):
        pass
    return None


def busy_cpus(seconds: float = SAMPLE_SECONDS) -> float:
    """How many of this process's CPUs other processes keep busy, in CPUs (0..len(affinity)).

    The larger of two measurements: the CPUs busy now (``/proc/stat`` over ``seconds``, while this thread
    sleeps), and the CPUs' pressure over the last 10 s times their number (a load that comes and goes, or more
    runnable tasks than CPUs). Without ``/proc/stat`` (not Linux): the 1-minute load average, capped at the CPU
    count; 0 if nothing is available.
    """
    cpus = _affinity()
    pressure = cpu_pressure()
    from_pressure = 0.0 if pressure is None else pressure * len(cpus)
    try:
        a = _cpu_times(cpus)
        time.sleep(seconds)
        b = _cpu_times(cpus)
    except (OSError, ValueError):
        try:
            return min(float(len(cpus)), max(from_pressure, os.getloadavg()[0]))
        except (AttributeError, OSError):
            return from_pressure
    busy = 0.0
    for cpu, (idle1, total1) in b.items():
        idle0, total0 = a.get(cpu, (idle1, total1))
        if total1 > total0:
            busy += 1.0 - (idle1 - idle0) / (total1 - total0)
    return min(float(len(cpus)), max(0.0, busy, from_pressure))


def _input_shape(model: nn.Module, input_shape: Optional[Sequence[int]]) -> Optional[tuple[int, ...]]:
    if input_shape is not None:
        return tuple(int(d) for d in input_shape)
    spec = getattr(model, "armor_spec", None)
    if isinstance(spec, dict) and isinstance(spec.get("input_shape"), (list, tuple)):
        return tuple(int(d) for d in spec["input_shape"])
    return None


def model_flops(model: nn.Module, input_shape: Optional[Sequence[int]] = None) -> Optional[float]:
    """Forward FLOPs per sample of ``model``: counted on one zero input of ``input_shape`` (default: the shape
    in an armor model's spec), in eval mode without gradients, restoring the model's mode; without a shape,
    or if the count fails, 2 FLOPs per parameter (what a fully connected net costs); ``None`` without
    parameters either."""
    from .attacks import attack_mode
    from .engine import model_device

    shape = _input_shape(model, input_shape)
    if shape is not None:
        try:
            from torch.utils.flop_counter import FlopCounterMode

            x = torch.zeros(1, *shape, device=model_device(model, torch.device("cpu")))
            with attack_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(x)
            flops = float(counter.get_total_flops())
            if flops > 0:
                return flops
        except Exception:  # any model that cannot run on a zero sample: fall back to its parameters
            pass
    n = sum(p.numel() for p in model.parameters())
    return 2.0 * n if n else None


@dataclass(frozen=True)
class ThreadChoice:
    """A resolved thread count and why: ``threads``; ``requested`` ("auto" or the number asked for); for auto,
    the ``flops`` per sample, ``batch`` (points per call), ``cpus`` available and ``busy`` CPUs it was chosen
    from (``busy`` ``None``: not sampled, as the answer was 1 regardless), or the ``source`` that decided
    instead (``OMP_NUM_THREADS``)."""

    threads: int
    requested: Union[int, str]
    flops: Optional[float] = None
    cpus: Optional[int] = None
    busy: Optional[float] = None
    batch: int = DEFAULT_BATCH
    source: str = ""

    def describe(self) -> str:
        """One line for a log, e.g. ``threads: 1 (auto: 17 MFLOP per call, small: below 40; 2 CPUs)``."""
        if self.requested != AUTO:
            return f"threads: {self.threads} (--threads {self.requested})"
        if self.source:
            return f"threads: {self.threads} (auto: {self.source})"
        if self.flops is None:
            work = "model size unknown"
        else:
            work = f"{self.flops * self.batch / 1e6:.3g} MFLOP per call of {self.batch} points"
            if self.flops * self.batch < SMALL_WORK_FLOPS:
                work += f", small: below {SMALL_WORK_FLOPS / 1e6:.3g}"
        cpus = f"{self.cpus} CPU{'s' if self.cpus != 1 else ''}"
        if self.busy is None:
            return f"threads: {self.threads} (auto: {work}; {cpus})"
        return f"threads: {self.threads} (auto: {work}; {cpus}, {self.busy:.1f} busy with other processes)"


def choose_threads(threads: ThreadsArg = AUTO, model: Optional[nn.Module] = None, *,
                   batch: Optional[int] = None, input_shape: Optional[Sequence[int]] = None,
                   flops: Optional[float] = None) -> ThreadChoice:
    """Resolve ``threads`` (a positive int or ``"auto"``) for ``model`` run on ``batch`` points per call
    (default :data:`DEFAULT_BATCH`), without changing anything.

    ``auto``: ``OMP_NUM_THREADS`` if set, else :func:`thread_policy` of the model's FLOPs per sample (``flops``
    if given, else :func:`model_flops`), ``batch``, :func:`available_cpus` and :func:`busy_cpus` (a 0.2 s
    sample, skipped when the answer is 1 regardless: small work or one CPU).
    """
    value = parse_threads(threads)
    if value != AUTO:
        return ThreadChoice(int(value), value)
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env.split(",")[0])
            if n >= 1:
                return ThreadChoice(n, AUTO, source=f"OMP_NUM_THREADS={env}")
        except ValueError:
            pass
    batch = DEFAULT_BATCH if batch is None else max(1, int(batch))
    if flops is None and model is not None:
        flops = model_flops(model, input_shape)
    cpus = available_cpus()
    if thread_policy(flops, cpus, 0.0, batch) == 1:  # 1 on idle CPUs: 1 whatever the load, no sample needed
        return ThreadChoice(1, AUTO, flops, cpus, None, batch)
    busy = busy_cpus()
    return ThreadChoice(thread_policy(flops, cpus, busy, batch), AUTO, flops, cpus, busy, batch)


class use_threads:  # noqa: N801 - used like a function (and like torch.set_grad_enabled, as a context manager)
    """Set torch's intra-op thread count to ``threads`` (an int, or ``"auto"``: :func:`choose_threads` for
    ``model`` on ``batch`` points per call); ``.choice`` says what was chosen and why.

    As a call, the setting stays; as a context manager, the previous count comes back on exit::

        armor.threads.use_threads("auto", model, batch=128)  # for the rest of the process
        with armor.threads.use_threads(2): ...               # only inside the block
    """

    def __init__(self, threads: ThreadsArg = AUTO, model: Optional[nn.Module] = None, *,
                 batch: Optional[int] = None, input_shape: Optional[Sequence[int]] = None,
                 flops: Optional[float] = None) -> None:
        self.choice = choose_threads(threads, model, batch=batch, input_shape=input_shape, flops=flops)
        self.previous = torch.get_num_threads()
        if self.choice.threads != self.previous:
            torch.set_num_threads(self.choice.threads)

    @property
    def threads(self) -> int:
        return self.choice.threads

    def __enter__(self) -> "use_threads":
        return self

    def __exit__(self, *exc: Any) -> None:
        if torch.get_num_threads() != self.previous:
            torch.set_num_threads(self.previous)


__all__ = ["AUTO", "DEFAULT_BATCH", "SMALL_WORK_FLOPS", "ThreadChoice", "available_cpus", "busy_cpus",
           "choose_threads", "cpu_pressure", "model_flops", "parse_threads", "thread_policy", "use_threads"]
