"""Train a recommender with BPR or APR into a run directory; load it back.

    >>> from armor.domains.recsys.train import train_recommender, load_recommender
    >>> train_recommender("ml-100k", recipe="apr", eps=0.5, epochs=40, out_dir="runs/ml-apr")
    >>> run = load_recommender("runs/ml-apr")          # model, split, train mask, metadata

**Recipes.** ``bpr``: Bayesian personalised ranking, the loss ``sum softplus(-(s_ui - s_uj))`` over a batch of
(user, positive, negative) triples, one negative per positive drawn uniformly from the items the user did not
interact with in training. ``apr``: APR / AMF (He et al., SIGIR 2018), as in the reference ``AMF.py``: BPR until
epoch ``adv_start``, then ``L(theta) + adv_weight * L(theta + delta)`` where ``delta`` is, per embedding row,
``radius * g / ||g||`` with ``g`` the gradient of the batch's clean BPR loss (rows the batch does not touch
get no perturbation) and ``radius`` the threat's (``eps``, or ``eps * ||row||`` for a relative eps). As in
``AMF.py``, whose adversarial phase restores only the embeddings, the Adagrad accumulators restart at
``adv_start``. Defaults
are APR's: embedding size 64, Adagrad with learning rate 0.05, batch 512, no L2 regularisation, eps 0.5, adversarial
weight 1.

**Run directory.** ``metadata.json`` (``"domain": "recsys"``; data source, loading options and fingerprint;
split seed; model spec; recipe and threat; optimiser; cost; status), ``model.safetensors`` (the ego
embeddings) and, while running, ``checkpoint.ckpt``; ``metrics.jsonl`` has one line per epoch.

**Checkpoints and resume.** After every ``checkpoint_every`` epochs, ``checkpoint.ckpt`` is written atomically
with a checksum (model, optimiser state, epoch, history, cost). Each epoch draws its shuffle and negatives from
its own generator, seeded from (seed, epoch), so the state at an epoch boundary is the whole state:
``resume=True`` continues a killed run and ends with the same weights as an uninterrupted one, bit for bit
(checked in the tests, on one thread).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from ...training import checkpoint as ckpt
from ...training.trainer import derive_seed
from ...utils import atomic_write_bytes, atomic_write_json, atomic_write_text
from .data import Interactions, Split, data_spec, leave_one_out, load_interactions
from .models import MODELS, EmbeddingRecommender, build_model
from .threat import EmbeddingThreat, mean_row_norms

PathLike = Union[str, Path]

METADATA = "metadata.json"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.ckpt"
METRICS = "metrics.jsonl"
STATE_VERSION = 1
RECIPES = {"bpr": "BPR: pairwise ranking loss with one sampled negative per positive",
           "apr": "APR/AMF: BPR, then BPR + adv_weight * BPR under the per-row gradient perturbation of eps"}
DEFAULTS = {"dim": 64, "epochs": 40, "batch_size": 512, "lr": 0.05, "eps": 0.5, "eps_unit": "absolute",
            "adv_weight": 1.0, "reg": 0.0, "layers": 2}


@dataclass
class RecRun:
    """A loaded run: the model (eval mode), its data split, the training mask and the metadata."""

    run_dir: Path
    model: EmbeddingRecommender
    data: Interactions
    split: Split
    train_mask: torch.Tensor
    metadata: dict[str, Any]


# ============================================================================================ losses
def sample_negatives(users: torch.Tensor, train_mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One item per user drawn uniformly from the items the user has not interacted with in training."""
    n_items = train_mask.shape[1]
    neg = torch.randint(0, n_items, users.shape, generator=generator)
    bad = train_mask[users, neg]
    while bad.any():  # rejection: redraw only the collisions (ends: a held-out item is never in training)
        idx = bad.nonzero().squeeze(1)
        neg[idx] = torch.randint(0, n_items, idx.shape, generator=generator)
        bad = train_mask[users, neg]
    return neg


def bpr_loss(model: EmbeddingRecommender, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
             delta: Any = None) -> torch.Tensor:
    """Summed BPR loss of the triples (APR's reduction: a sum over the batch)."""
    U, I = model.final(delta)
    u = U[users]
    return F.softplus(-((u * I[pos]).sum(-1) - (u * I[neg]).sum(-1))).sum()


def gradient_delta(grads: tuple[torch.Tensor, torch.Tensor],
                   radii: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """APR's perturbation: each row's gradient, L2-normalised, times the row's radius (zero rows stay zero)."""
    return tuple(F.normalize(g, dim=1) * r[:, None] for g, r in zip(grads, radii))  # type: ignore[return-value]


def _reg(model: EmbeddingRecommender, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    return (model.user_emb[users].square().sum(-1) + model.item_emb[pos].square().sum(-1)
            + model.item_emb[neg].square().sum(-1)).mean()


# ============================================================================================ helpers
def _check_int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _check_float(name: str, v: Any, lo: float = 0.0, strict: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v) \
            or v < lo or (strict and v == lo):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {lo}, got {v!r}")
    return float(v)


def read_metadata(run_dir: PathLike) -> dict[str, Any]:
    """The run's metadata.json (armor's reader: missing, damaged or mistyped files are clear errors), checked to
    be a recsys run's."""
    meta = ckpt.load_metadata(run_dir)
    if meta.get("domain") != "recsys":
        raise ValueError(f"{Path(run_dir) / METADATA} is not the metadata of a recsys run (domain "
                         f"{meta.get('domain')!r})")
    return meta


def _load_data(spec: dict[str, Any]) -> Interactions:
    opts = {k: v for k, v in spec.items() if k != "source"}
    return load_interactions(spec["source"], **opts)


# ============================================================================================ training
def train_recommender(data: Union[str, PathLike, Interactions] = "ml-100k", *, model: str = "mf",
                      recipe: str = "bpr", out_dir: PathLike, epochs: int = DEFAULTS["epochs"],
                      adv_start: Optional[int] = None, eps: float = DEFAULTS["eps"],
                      eps_unit: str = DEFAULTS["eps_unit"], adv_weight: float = DEFAULTS["adv_weight"],
                      dim: int = DEFAULTS["dim"], batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"],
                      reg: float = DEFAULTS["reg"], layers: int = DEFAULTS["layers"], seed: int = 0,
                      split_seed: Optional[int] = None, checkpoint_every: int = 1, resume: bool = False,
                      quiet: bool = True, data_options: Optional[dict[str, Any]] = None,
                      callback: Optional[Callable[[int, dict], None]] = None) -> RecRun:
    """Train ``model`` ("mf" | "lightgcn") with ``recipe`` ("bpr" | "apr") on leave-one-out ``data``.

    Arguments:
        data: a built-in name ("ml-100k"), an interactions file or directory, or :class:`Interactions` (then
            evaluation needs the same object passed again; the run records its fingerprint).
        epochs: passes over the training interactions in all (APR: ``adv_start`` of them plain BPR first).
        adv_start: the epoch APR's adversarial term starts at (default: half of ``epochs``, as APR's recipe of
            pre-training BPR first; 0 trains adversarially from the start).
        eps, eps_unit: the threat the recipe trains against (recorded for bpr too): a per-row L2 radius,
            "absolute" or "relative" to each row's norm (:class:`EmbeddingThreat`).
        adv_weight: APR's lambda, the weight of the adversarial loss.
        seed: seeds the initial embeddings and every epoch's shuffle and negatives; ``split_seed`` (default
            ``seed``) breaks ties of the leave-one-out split.
        checkpoint_every: epochs between checkpoints. ``resume``: continue the killed run in ``out_dir``.
        callback: ``callback(epoch, record)`` after each epoch (its checkpoint already written).
    Raises:
        ValueError: bad options, an ``out_dir`` already holding a run (without ``resume``), a resume with other
            settings, or data that differ from the run's.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recsys recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
    if model not in MODELS:
        raise ValueError(f"unknown recommender {model!r}: choose one of {', '.join(MODELS)}")
    epochs = _check_int("epochs", epochs, 1)
    seed = _check_int("seed", seed, 0)
    split_seed = seed if split_seed is None else _check_int("split_seed", split_seed, 0)
    dim = _check_int("dim", dim, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    layers = _check_int("layers", layers, 1)
    checkpoint_every = _check_int("checkpoint_every", checkpoint_every, 1)
    lr = _check_float("lr", lr, strict=True)
    reg = _check_float("reg", reg)
    adv_weight = _check_float("adv_weight", adv_weight)
    threat = EmbeddingThreat(_check_float("eps", eps), eps_unit)
    if recipe == "apr":
        if threat.eps == 0 or adv_weight == 0:
            raise ValueError("recipe 'apr' trains against a perturbation: eps and adv_weight must be > 0")
        adv_start = epochs // 2 if adv_start is None else _check_int("adv_start", adv_start, 0)
        if adv_start >= epochs:
            raise ValueError(f"adv_start ({adv_start}) must be below epochs ({epochs}), or nothing is adversarial")
    elif adv_start is not None:
        raise ValueError("adv_start applies to recipe 'apr' only")

    if isinstance(data, Interactions):
        inter, spec = data, {"source": data.source, "in_memory": True}
    else:
        spec = data_spec(data, **(data_options or {}))
        inter = _load_data(spec)
    split = leave_one_out(inter, split_seed)
    config = {"data": spec, "fingerprint": inter.fingerprint(), "split_seed": split_seed, "model": model,
              "dim": dim, "layers": layers if model == "lightgcn" else None, "recipe": recipe,
              "adv_start": adv_start, "threat": threat.to_dict(), "adv_weight": adv_weight if recipe == "apr" else None,
              "epochs": epochs, "batch_size": batch_size, "optimizer": "adagrad", "lr": lr, "reg": reg, "seed": seed}
    config = json.loads(json.dumps(config))
    out = Path(out_dir)
    saved: Optional[dict[str, Any]] = None
    if resume:
        saved = read_metadata(out)
        if saved.get("config") != config:
            diffs = [f"{k}: {saved.get('config', {}).get(k)!r} -> {v!r}" for k, v in config.items()
                     if saved.get("config", {}).get(k) != v]
            raise ValueError(f"cannot resume {out}: the settings differ from the saved run ({'; '.join(diffs)}); "
                             "resume with the run's own settings or start a new out_dir")
        if saved.get("status") == "finished":
            return load_recommender(out, interactions=inter)
    elif (out / METADATA).exists() or (out / CHECKPOINT).exists():
        raise ValueError(f"{out} already holds a recsys run: resume it (resume=True) or choose another out_dir")
    out.mkdir(parents=True, exist_ok=True)

    gen = torch.Generator().manual_seed(derive_seed(seed, "recsys", "init"))
    spec_model = {"name": model, "n_users": inter.n_users, "n_items": inter.n_items, "dim": dim}
    if model == "lightgcn":
        spec_model["layers"] = layers
    net = build_model(spec_model, split, generator=gen)
    opt = torch.optim.Adagrad(net.parameters(), lr=lr, initial_accumulator_value=0.0, eps=1e-10)
    state = {"epoch": 0, "history": [], "train_seconds": 0.0, "passes": {"forward": 0, "backward": 0},
             "resumes": 0}
    if saved is not None and (out / CHECKPOINT).exists():
        blob = ckpt.load_state(out / CHECKPOINT)
        if blob.get("version") != STATE_VERSION or blob.get("config") != json.dumps(config, sort_keys=True):
            raise ckpt.CheckpointError(f"{out / CHECKPOINT} belongs to another configuration or armor version")
        net.load_state_dict(blob["model"])
        opt.load_state_dict(blob["optimizer"])
        state = {k: blob[k] for k in ("epoch", "history", "train_seconds", "passes", "resumes")}
        state["resumes"] = int(state["resumes"]) + 1
    train_mask = split.train_matrix()
    tu, ti = torch.from_numpy(split.train_user), torch.from_numpy(split.train_item)
    n = tu.numel()

    def metadata(status: str) -> dict[str, Any]:
        from ... import __version__

        return {"domain": "recsys", "status": status, "config": config, "data": spec,
                "counts": inter.counts(), "data_info": inter.info, "model": spec_model,
                "recipe": {"name": recipe, "description": RECIPES[recipe],
                           "params": {"adv_weight": config["adv_weight"], "adv_start": adv_start} if recipe == "apr"
                           else {}},
                "threat": threat.to_dict(), "seed": seed, "split_seed": split_seed, "epochs_done": state["epoch"],
                "train_seconds": round(state["train_seconds"], 3),
                "cost": {"epochs": state["epoch"], "forward_passes": state["passes"]["forward"],
                         "backward_passes": state["passes"]["backward"], "train_seconds": round(state["train_seconds"], 3),
                         "adversarial_epochs": max(0, state["epoch"] - adv_start) if recipe == "apr" else 0},
                "embedding_norms": mean_row_norms(net), "resume": {"resumes": state["resumes"]},
                "files": {"weights": WEIGHTS}, "armor_version": __version__, "torch": torch.__version__}

    atomic_write_json(out / METADATA, metadata("running"))
    while state["epoch"] < epochs:
        epoch = state["epoch"]
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(derive_seed(seed, "recsys", "epoch", epoch))
        perm = torch.randperm(n, generator=g)
        adversarial = recipe == "apr" and epoch >= adv_start
        if recipe == "apr" and epoch == adv_start:
            # AMF.py builds a new graph for its adversarial phase and restores only the embeddings, so Adagrad's
            # accumulators start again from zero there: so do they here.
            opt = torch.optim.Adagrad(net.parameters(), lr=lr, initial_accumulator_value=0.0, eps=1e-10)
        total, batches = 0.0, 0
        net.train()
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            users, pos = tu[idx], ti[idx]
            neg = sample_negatives(users, train_mask, g)
            loss = bpr_loss(net, users, pos, neg)
            state["passes"]["forward"] += 1
            if adversarial:
                grads = torch.autograd.grad(loss, [net.user_emb, net.item_emb], retain_graph=True)
                state["passes"]["backward"] += 1
                delta = gradient_delta(grads, threat.radii(net))
                loss = loss + adv_weight * bpr_loss(net, users, pos, neg, delta)
                state["passes"]["forward"] += 1
            if reg:
                loss = loss + reg * _reg(net, users, pos, neg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            state["passes"]["backward"] += 1 + int(adversarial)
            opt.step()
            total += float(loss.detach())
            batches += 1
        if not math.isfinite(total):
            raise ValueError(f"the loss became {total} at epoch {epoch}: lower the learning rate (--lr)")
        state["train_seconds"] += time.perf_counter() - t0
        state["epoch"] = epoch + 1
        record = {"epoch": epoch + 1, "loss": total / max(batches, 1), "adversarial": adversarial,
                  "seconds": round(time.perf_counter() - t0, 4)}
        state["history"].append(record)
        if state["epoch"] % checkpoint_every == 0 or state["epoch"] == epochs:
            ckpt.save_state(out / CHECKPOINT, {"version": STATE_VERSION, "config": json.dumps(config, sort_keys=True),
                                               "model": net.state_dict(), "optimizer": opt.state_dict(), **state})
            atomic_write_text(out / METRICS, "".join(json.dumps(r) + "\n" for r in state["history"]))
            atomic_write_json(out / METADATA, metadata("running"))
        if not quiet:
            print(f"[armor recsys] {out.name}: epoch {epoch + 1}/{epochs} loss {record['loss']:.4f}"
                  f"{' (adversarial)' if adversarial else ''} {record['seconds']:.2f}s", file=sys.stderr, flush=True)
        if callback is not None:
            callback(epoch + 1, record)
    net.eval()
    net.zero_grad(set_to_none=True)  # the returned model carries no leftover gradients of the last batch
    from safetensors.torch import save

    atomic_write_bytes(out / WEIGHTS, save({k: v.detach().contiguous() for k, v in net.state_dict().items()}))
    atomic_write_json(out / METADATA, metadata("finished"))
    try:
        (out / CHECKPOINT).unlink()
    except FileNotFoundError:
        pass
    return RecRun(out, net, inter, split, train_mask, read_metadata(out))


def load_recommender(run_dir: PathLike, interactions: Optional[Interactions] = None) -> RecRun:
    """A finished run: its model (eval mode) with the data and split it was trained on.

    The data are loaded again from the recorded source (or ``interactions``, required for runs trained on an
    in-memory :class:`Interactions`) and must have the recorded fingerprint."""
    from safetensors.torch import load

    run_dir = Path(run_dir)
    meta = read_metadata(run_dir)
    if meta.get("status") != "finished":
        raise ValueError(f"{run_dir} is not finished (status {meta.get('status')!r}): resume it first "
                         f"(armor train --resume {run_dir})")
    cfg = meta["config"]
    if interactions is None:
        if cfg["data"].get("in_memory"):
            raise ValueError(f"{run_dir} was trained on in-memory interactions: pass them as interactions=")
        interactions = _load_data(cfg["data"])
    if interactions.fingerprint() != cfg["fingerprint"]:
        raise ValueError(f"the interactions of {cfg['data'].get('source')} differ from those {run_dir} was trained "
                         f"on (fingerprint mismatch): the file changed, or other loading options were used")
    split = leave_one_out(interactions, cfg["split_seed"])
    path = run_dir / meta.get("files", {}).get("weights", WEIGHTS)
    try:
        tensors = load(path.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"{run_dir} has no weights ({path.name} is missing)") from None
    except Exception as e:
        raise ckpt.CheckpointError(f"weights file {path} is unreadable or truncated ({type(e).__name__}: {e})") from None
    net = build_model(meta["model"], split)
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ckpt.CheckpointError(f"weights in {path} do not fit the recorded model {meta['model']}: {e}") from None
    net.eval()
    return RecRun(run_dir, net, interactions, split, split.train_matrix(), meta)


__all__ = ["CHECKPOINT", "DEFAULTS", "METADATA", "RECIPES", "RecRun", "WEIGHTS", "bpr_loss", "gradient_delta",
           "load_recommender", "read_metadata", "sample_negatives", "train_recommender"]
