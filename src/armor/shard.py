"""The worst-case evaluation sharded across processes (``torchrun``), with the result of one process, bit for bit.

:func:`evaluate_sharded` takes :func:`armor.evaluate`'s arguments. In one process it *is* :func:`armor.evaluate`.
Under a process group of N processes (``torchrun --nproc_per_node N``: gloo on the CPU, nccl on GPUs) each
process runs the suite on its share of the points, and every process ends with the same :class:`EvalResult`.

Why the result is identical, not just close: one process attacks the still-robust points of each attack in
consecutive global batches of ``batch_size``, and batch ``b`` of attack ``a`` draws from the generator the
engine derives from ``(seed, a, b)`` (:func:`armor.engine.batch_seed`). Here the global batches stay the same
and are dealt round-robin, batch ``b`` to process ``b mod N``, with the same generator, so every batch sees the
same points, shapes and random numbers as in one process. After each attack the processes merge their
per-point flags (a minimum: a flag only ever goes from robust to fooled) so that the next attack's batches are
the same as one process's. The adversarial examples stay with the process that found them and are summed
once at the end (each point has exactly one owner, so the sum is exact).

Resume: each process checkpoints after every batch to its own state file (``shard-<key>-r<rank>of<N>.state``
in a ``state_path`` directory, keyed like :func:`armor.evaluate`'s states). A restart with the same N
continues where every process stopped; the processes can be at most one attack apart (the merge is a
collective), and a process one attack ahead takes part again in that attack's merge with what it saved. States
that cannot belong to one run (missing on some process, further apart) are discarded and the evaluation
starts over, which gives the same result since it is deterministic.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from .attacks import attack_mode, get_attack
from .engine import as_xy, attack_batches, batch_seed, model_device, predict_logits
from .evaluate import EvalResult, EvalState, _StateFile, _fingerprint, _global_rng, evaluate, resolve_suite
from .threat import check_inputs, warn_if_probabilities


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


def evaluate_sharded(model: nn.Module, data: Any, threat, suite: Union[str, Sequence[str]] = "standard", *,
                     n: Optional[int] = None, batch_size: int = 500, seed: int = 0, individual: bool = False,
                     state_path: Union[str, Path, None] = None, attack_kwargs: Optional[dict[str, dict[str, Any]]] = None,
                     keep_adv: bool = False, progress: Optional[Callable[[str, int, int], None]] = None,
                     **more: Any) -> EvalResult:
    """:func:`armor.evaluate`, sharded over the current process group (see the module docstring).

    Every process must call it with the same arguments (model, data, threat, suite, seed, ...). Each returns
    the full result; ``progress`` is called on rank 0 only, for that process's own batches, with global batch
    numbers. ``result.seconds`` and each attack's ``seconds`` are this evaluation's wall time (the slowest
    process); ``result.state_file`` is this process's state file.
    """
    rank, size = world()
    if size == 1:
        return evaluate(model, data, threat, suite, n=n, batch_size=batch_size, seed=seed, individual=individual,
                        state_path=state_path, attack_kwargs=attack_kwargs, keep_adv=keep_adv, progress=progress,
                        **more)
    given = sorted(k for k, v in more.items() if v is not None)
    if given:
        raise ValueError(f"the sharded evaluation does not take {', '.join(given)} yet: run this evaluation in one "
                         "process (without torchrun)")
    x, y = as_xy(data)
    check_inputs(x, y, None, threat)
    if n is not None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        x, y = x[:n], y[:n]
    if x.shape[0] == 0 or batch_size < 1:
        raise ValueError("there are no points to evaluate" if x.shape[0] == 0 else
                         f"batch_size must be >= 1, got {batch_size}")
    names = resolve_suite(suite, threat)
    attack_kwargs = attack_kwargs or {}
    if set(attack_kwargs) - set(names):
        raise ValueError(f"attack_kwargs names {sorted(set(attack_kwargs) - set(names))}, not in the suite {names}")
    comm = _Comm(model_device(model, x.device))
    device = comm.device
    x, y = x.to(device), y.to(device)
    with _global_rng(device, batch_seed(seed, -1, 0)):  # torch's own generator seeded as evaluate seeds it
        logits = predict_logits(model, x, batch_size)
    check_inputs(x, y, logits.shape[1])
    warn_if_probabilities(logits)
    clean_correct = logits.argmax(1) == y
    total = x.shape[0]
    t_start = time.perf_counter()

    store = None
    if state_path is not None:
        key = _fingerprint(x, y, names, threat, seed, model, {**attack_kwargs, "_individual": individual,
                                                                 "_keep_adv": keep_adv})
        path = Path(state_path)
        if not path.is_dir():
            raise ValueError(f"state_path {path} must be a directory under torchrun: each process keeps its own "
                             "state file in it")
        store = _StateFile(path / f"shard-{key[:20]}-r{rank}of{size}.state", key)
    st, problem = None, None
    try:
        st = store.load(device) if store is not None and store.exists() else None
    except ValueError as e:
        problem = e
    if int(comm.reduce(torch.tensor([int(problem is not None)]), "max")):  # every process stops, not only one
        raise problem or ValueError(f"another process's evaluation state in {state_path} is unreadable or stale "
                                    "(its error names it): delete it to start over")
    # resume only states that belong to one interrupted run: present on every process, at most one attack apart
    at = st.attack if st is not None else 0
    have = int(comm.reduce(torch.tensor([int(st is not None)]), "min"))
    lo, hi = int(comm.reduce(torch.tensor([at]), "min")), int(comm.reduce(torch.tensor([at]), "max"))
    if not have or hi - lo > 1:
        st, lo = EvalState(robust=clean_correct.clone(), x_adv=x.clone() if keep_adv else None), 0
    if getattr(st, "broken_by", None) is None:  # which attack broke each point, kept in the state with it
        st.broken_by = torch.full((total,), -1, dtype=torch.long, device=device)
    prior = sum(r["seconds"] for r in st.records.values() if "cumulative_accuracy" in r)

    if st.attack == lo + 1:  # ahead by one: this process saved the merge of attack lo that the others missed
        _merge(comm, st, names[lo], clean_correct, total, individual)
        _save(store, st)
    start = getattr(progress, "start", None) if progress is not None and rank == 0 else None
    for a_idx in range(st.attack, len(names)):
        name = names[a_idx]
        fn = get_attack(name, **attack_kwargs.get(name, {}))
        if st.todo is None:
            st.todo = (clean_correct if individual else st.robust).nonzero().squeeze(1)
            st.batch, st.own_fooled = 0, 0
            st.records[name] = {"n": int(st.todo.numel()), "seconds": 0.0, "broke": 0}
        record, todo = st.records[name], st.todo
        n_batches = (todo.numel() + batch_size - 1) // batch_size
        mine = list(range(rank, n_batches, size))
        if start is not None:
            start(name, int(todo.numel()), n_batches, 0)
        for b in mine[st.batch:]:  # st.batch counts this process's batches done
            t0 = time.perf_counter()
            # a model that draws random numbers draws them from torch's global generator, which evaluate seeds
            # per (attack, batch): the same seeds here, for the attack and for the check after it
            with _global_rng(device, batch_seed(seed, a_idx, b)):
                _, _, idx, xb = next(attack_batches(model, fn, x, y, threat, batch_size=batch_size, seed=seed,
                                                    stream=a_idx, index=todo, start=b, name=name))
            with attack_mode(model), torch.no_grad(), _global_rng(device, batch_seed(seed, a_idx, b) + 1):
                fooled = model(xb).argmax(1) != y[idx]
            st.own_fooled += int(fooled.sum())
            newly = fooled & st.robust[idx]  # never overwrite an earlier success
            st.robust[idx[newly]] = False
            st.broken_by[idx[newly]] = a_idx
            record["broke"] += int(newly.sum())
            if st.x_adv is not None:  # only this process's examples differ from x: it owns them
                st.x_adv[idx[newly]] = xb[newly]
            record["seconds"] += time.perf_counter() - t0
            st.batch += 1
            _save(store, st)
            if progress is not None and rank == 0:
                progress(name, b + 1, n_batches)
        # this process's share of the attack, kept for a merge that has to be repeated after a restart
        record.update({"own_here": st.own_fooled, "seconds_here": record["seconds"], "broke_here": record["broke"]})
        st.attack, st.todo, st.batch, st.own_fooled = a_idx + 1, None, 0, 0
        _merge(comm, st, name, clean_correct, total, individual)
        _save(store, st)

    robust = st.robust
    x_adv = None
    if keep_adv:  # a fooled point differs from x only on the process that fooled it: the sum is exact
        shape = (-1,) + (1,) * (x.dim() - 1)
        owned = (st.x_adv != x).flatten(1).any(1).view(shape)
        summed = comm.reduce(torch.where(owned, st.x_adv, torch.zeros_like(x)), "sum")
        x_adv = torch.where((clean_correct & ~robust).view(shape), summed, x)
    seconds = float(comm.reduce(torch.tensor([time.perf_counter() - t_start], dtype=torch.float64), "max"))
    per_attack = {k: {"accuracy": v.get("accuracy"), "cumulative_accuracy": v["cumulative_accuracy"],
                      "broke": v["broke"], "seconds": v["seconds"], "n": v["n"]} for k, v in st.records.items()}
    result = EvalResult(
        clean_accuracy=int(clean_correct.sum()) / total, robust_accuracy=int(robust.sum()) / total,
        per_attack=per_attack, threat_model=threat.to_dict(), suite=names, n=total,
        seconds=round(seconds + prior, 4), seed=seed, robust=robust.cpu(), clean_correct=clean_correct.cpu(),
        x_adv=None if x_adv is None else x_adv.cpu(), state_file=None if store is None else store.path)
    result.broken_by = st.broken_by.cpu()
    return result


def _merge(comm: "_Comm", st: EvalState, name: str, clean_correct: torch.Tensor, total: int,
           individual: bool) -> None:
    """Merge one attack over the processes: the per-point flags (minimum: a flag only goes from robust to
    fooled) and which attack broke each point, the counts (sum) and the time (the slowest process); completes
    the attack's record."""
    record = st.records[name]
    st.robust = comm.reduce(st.robust.to(torch.uint8), "min").bool()
    st.broken_by = comm.reduce(st.broken_by, "max")  # a point is broken once, by one process
    own, broke = comm.reduce(torch.tensor([record["own_here"], record["broke_here"]]), "sum").tolist()
    seconds = float(comm.reduce(torch.tensor([record["seconds_here"]], dtype=torch.float64), "max"))
    record.update({"accuracy": (int(clean_correct.sum()) - own) / total if individual else None,
                   "cumulative_accuracy": int(st.robust.sum()) / total, "seconds": round(seconds, 4), "broke": broke})


class _Comm:
    """Collectives on the backend's device (gloo: CPU tensors; nccl: the GPU), results on ``device``."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.dist, self.device = dist, device
        self.on = device if dist.get_backend() == "nccl" else torch.device("cpu")

    def reduce(self, t: torch.Tensor, op: str) -> torch.Tensor:
        ops = {"sum": self.dist.ReduceOp.SUM, "min": self.dist.ReduceOp.MIN, "max": self.dist.ReduceOp.MAX}
        buf = t.to(self.on).clone()
        self.dist.all_reduce(buf, op=ops[op])
        return buf.to(self.device)


def _save(store: Optional[_StateFile], st: EvalState) -> None:
    if store is not None:
        store.save(st)


__all__ = ["all_state_files", "close", "evaluate_sharded", "init_from_env", "launched_by_torchrun", "resolve_device", "world"]
