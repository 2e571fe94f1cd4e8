"""The worst-case evaluation sharded across processes (``torchrun``), with the result of one process, bit for bit.

:func:`evaluate_sharded` takes :func:`armor.evaluate`'s arguments. In one process it *is* :func:`armor.evaluate`.
Under a process group of N processes (``torchrun --nproc_per_node N``: gloo on the CPU, nccl on GPUs) each
process runs the suite on its share of the points, and every process ends with the same :class:`EvalResult`.
There is one evaluator: this module gives :func:`armor.evaluate` a :class:`Shard` (which batches are this
process's, its state file, the merges), and evaluate's own batch loop does the rest.

Why the result is identical, not just close: one process attacks the still-robust points of each attack in
consecutive global batches of ``batch_size``, and batch ``b`` of attack ``a`` draws from the generator the
engine derives from ``(seed, a, b)`` (:func:`armor.engine.batch_seed`). Here the global batches stay the same
and are dealt round-robin, batch ``b`` to process ``b mod N``, with the same generator, so every batch sees the
same points, shapes and random numbers as in one process. After each attack the processes merge their
per-point flags (a minimum: a flag only ever goes from robust to fooled; with ``score=``, the scores, which only
go down) so that the next attack's batches are the same as one process's. The adversarial examples stay with
the process that found them, and so does which attack lowered each point; at the end each point's example is
taken from the process that lowered it last (one process per point and attack, so the sum is exact).

Resume: each process checkpoints after every batch to its own state file (``shard-<key>-r<rank>of<N>.state``
in a ``state_path`` directory, keyed like :func:`armor.evaluate`'s states). A restart with the same N
continues where every process stopped; the processes can be at most one attack apart (the merge is a
collective), and a process one attack ahead takes part again in that attack's merge with what it saved. States
that cannot belong to one run (missing on some process, further apart) are discarded and the evaluation
starts over, which gives the same result since it is deterministic.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from .engine import model_device
from .evaluate import EvalResult, EvalState, evaluate


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the current process group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_by_torchrun() -> bool:
    """Whether this process is one of several a launcher (``torchrun``) started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: Union[str, torch.device] = "cpu") -> bool:
    """Join the process group ``torchrun`` describes in the environment (nccl for a cuda ``device``, gloo
    otherwise); returns whether this call created it (then :func:`close` it when done)."""
    import torch.distributed as dist

    if dist.is_initialized() or not launched_by_torchrun():
        return False
    dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
    return True


def resolve_device(spec: Union[str, torch.device]) -> torch.device:
    """The device ``spec`` names, checked: ``cpu``, ``cuda`` (under torchrun: this process's ``cuda:LOCAL_RANK``),
    ``cuda:N`` or ``mps``; ``ValueError`` names the problem when it is not available here."""
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ValueError(f"{spec!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} was asked for, but CUDA is not available here (no NVIDIA GPU or "
                             "driver, or a CPU-only torch build): use --device cpu")
        if device.index is None and launched_by_torchrun():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} was asked for, but this machine has "
                             f"{torch.cuda.device_count()} GPU(s): use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {spec!r} was asked for, but MPS (Apple GPUs) is not available here: "
                             "use --device cpu")
    elif device.type != "cpu":
        raise ValueError(f"device {spec!r} is not supported: use cpu, cuda, cuda:N or mps")
    return device


def all_state_files(state_file: Union[str, Path]) -> list[Path]:
    """Every process's state file of the sharded evaluation that ``state_file`` (one process's) belongs to."""
    path = Path(state_file)
    stem, _, tail = path.name.rpartition("-r")
    size = int(tail.split("of", 1)[1].split(".", 1)[0])
    return [path.with_name(f"{stem}-r{r}of{size}.state") for r in range(size)]


def close() -> None:
    """Leave the process group (after :func:`init_from_env` created it)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def evaluate_sharded(model: nn.Module, data: Any, threat, suite: Union[str, Sequence[str]] = "standard",
                     **kwargs: Any) -> EvalResult:
    """:func:`armor.evaluate`, sharded over the current process group (see the module docstring).

    Takes :func:`armor.evaluate`'s arguments; every process must call it with the same ones (model, data,
    threat, suite, seed, ...). Each returns the full result; ``progress`` is called on rank 0 only, for that
    process's own batches, with global batch numbers. ``result.seconds`` and each attack's ``seconds`` are this
    evaluation's wall time (the slowest process); ``result.state_file`` is this process's state file. In one
    process it is :func:`armor.evaluate` itself.
    """
    rank, size = world()
    if size == 1:
        return evaluate(model, data, threat, suite, **kwargs)
    if rank != 0:
        kwargs["progress"] = None
    return evaluate(model, data, threat, suite, shard=Shard(model_device(model, torch.device("cpu"))), **kwargs)


class Shard:
    """This process's part of a sharded :func:`armor.evaluate`: its ``rank`` of ``world`` processes, the name of
    its state file, and the collectives evaluate calls (when resuming, after each attack, at the end)."""

    def __init__(self, device: Union[str, torch.device] = "cpu") -> None:
        """``device``: the model's (nccl reduces there)."""
        self.rank, self.world = world()
        self._comm = _Comm(torch.device(device))

    def state_file(self, directory: Path, fingerprint: str) -> Path:
        """This process's state file in ``directory`` (``shard-<key>-r<rank>of<world>.state``)."""
        if not directory.is_dir():
            raise ValueError(f"state_path {directory} must be a directory under torchrun: each process keeps its "
                             "own state file in it")
        return directory / f"shard-{fingerprint[:20]}-r{self.rank}of{self.world}.state"

    def agree(self, st: Optional[EvalState], problem: Optional[Exception], where: Any) -> tuple[Optional[EvalState], int]:
        """The saved states the processes resume from: ``(st, behind)``, ``st`` ``None`` unless every process
        has one and they are at most one attack apart (``behind``: the lowest attack); an unreadable state on
        any process raises on every process."""
        reduce = self._comm.reduce
        if int(reduce(torch.tensor([int(problem is not None)]), "max")):  # every process stops, not only one
            raise problem or ValueError(f"another process's evaluation state in {where} is unreadable or stale "
                                        "(its error names it): delete it to start over")
        at = st.attack if st is not None else 0
        have = int(reduce(torch.tensor([int(st is not None)]), "min"))
        lo, hi = int(reduce(torch.tensor([at]), "min")), int(reduce(torch.tensor([at]), "max"))
        if not have or hi - lo > 1:
            return None, 0
        return st, lo

    def merge(self, st: EvalState, record: dict[str, Any], scores: bool) -> Union[int, float]:
        """Merge one attack over the processes: the per-point flags or scores (minimum: a point only goes down),
        the counts (sum) and the time (the slowest process). Returns the points (or score) the attack took away
        in all. This process's share stays in ``record`` (a merge repeated after a restart uses it)."""
        if "cumulative_accuracy" not in record:  # not merged before: this process's share of the attack
            record.update({"own_here": st.own_fooled, "broke_here": record["broke"], "seconds_here": record["seconds"]})
        reduce = self._comm.reduce
        st.robust = reduce(st.robust, "min") if scores else reduce(st.robust.to(torch.uint8), "min").bool()
        dtype = torch.float64 if scores else torch.long
        own, broke = reduce(torch.tensor([record["own_here"], record["broke_here"]], dtype=dtype), "sum").tolist()
        record["broke"] = broke
        record["seconds"] = float(reduce(torch.tensor([record["seconds_here"]], dtype=torch.float64), "max"))
        return own

    def gather(self, broken_by: torch.Tensor, x_adv: Optional[torch.Tensor],
               seconds: float) -> tuple[torch.Tensor, Optional[torch.Tensor], float]:
        """At the end: which attack last lowered each point (each process knows its own), the adversarial
        examples (each from the process that lowered the point last: one per point, so the sum is exact) and
        the time (the slowest process)."""
        reduce = self._comm.reduce
        merged = reduce(broken_by, "max")
        if x_adv is not None:
            shape = (-1,) + (1,) * (x_adv.dim() - 1)
            owned = ((broken_by == merged) & (merged >= 0)).view(shape)
            summed = reduce(torch.where(owned, x_adv, torch.zeros_like(x_adv)), "sum")
            x_adv = torch.where((merged >= 0).view(shape), summed, x_adv)  # never lowered: x on every process
        seconds = float(reduce(torch.tensor([seconds], dtype=torch.float64), "max"))
        return merged, x_adv, seconds


class _Comm:
    """All-reduce on the backend's device (gloo: CPU tensors; nccl: the GPU), the result on the input's device."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.dist = dist
        self.on = device if dist.get_backend() == "nccl" else torch.device("cpu")

    def reduce(self, t: torch.Tensor, op: str) -> torch.Tensor:
        ops = {"sum": self.dist.ReduceOp.SUM, "min": self.dist.ReduceOp.MIN, "max": self.dist.ReduceOp.MAX}
        buf = t.to(self.on).clone()
        self.dist.all_reduce(buf, op=ops[op])
        return buf.to(t.device)


__all__ = ["Shard", "all_state_files", "close", "evaluate_sharded", "init_from_env", "launched_by_torchrun", "resolve_device", "world"]
