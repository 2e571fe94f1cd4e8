"""Embedding recommenders: matrix factorisation (the APR anchor) and LightGCN (a small graph model).

Both score a (user, item) pair by the inner product of a final user and a final item embedding, computed from
the **ego embeddings** (one trainable row per user and per item). The threat model perturbs the ego
embeddings (:mod:`.threat`), so every model takes ``delta = (delta_users, delta_items)`` added to them before
anything else: for MF the final embeddings are the ego ones; for LightGCN (He et al., SIGIR 2020) they are the
mean of the ego embeddings and their ``layers`` propagations over the symmetric-normalised user-item graph of
the *training* interactions (the held-out ones are never in the graph).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import nn

Delta = Optional[tuple[torch.Tensor, torch.Tensor]]


class EmbeddingRecommender(nn.Module):
    """Ego embeddings ``user_emb`` (n_users, dim) and ``item_emb`` (n_items, dim), initialised as APR's
    (normal, std 0.01, truncated at two standard deviations)."""

    name = "base"

    def __init__(self, n_users: int, n_items: int, dim: int = 64, *, generator: Optional[torch.Generator] = None):
        super().__init__()
        for what, v in (("n_users", n_users), ("n_items", n_items), ("dim", dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{what} must be a positive integer, got {v!r}")
        self.n_users, self.n_items, self.dim = n_users, n_items, dim
        self.user_emb = nn.Parameter(_trunc_normal((n_users, dim), 0.01, generator))
        self.item_emb = nn.Parameter(_trunc_normal((n_items, dim), 0.01, generator))

    def ego(self, delta: Delta = None) -> tuple[torch.Tensor, torch.Tensor]:
        if delta is None:
            return self.user_emb, self.item_emb
        return self.user_emb + delta[0], self.item_emb + delta[1]

    def propagate(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return users, items

    def final(self, delta: Delta = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Final (user, item) embedding tables, from the ego embeddings plus ``delta``."""
        return self.propagate(*self.ego(delta))

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor, delta: Delta = None) -> torch.Tensor:
        U, I = self.final(delta)
        return (U[users] * I[items]).sum(-1)

    def score_all(self, users: Optional[torch.Tensor] = None, delta: Delta = None) -> torch.Tensor:
        """Scores of ``users`` (default: all) against every item: (len(users), n_items)."""
        U, I = self.final(delta)
        if users is not None:
            U = U[users]
        return U @ I.T

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "n_users": self.n_users, "n_items": self.n_items, "dim": self.dim}


def _trunc_normal(shape: tuple[int, int], std: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    t = torch.randn(shape, generator=generator) * std
    return t.clamp_(-2 * std, 2 * std)


class MF(EmbeddingRecommender):
    """Matrix factorisation: score = <p_u, q_i> (BPR-MF / AMF of He et al. 2018)."""

    name = "mf"


class LightGCN(EmbeddingRecommender):
    """LightGCN: final embeddings are the mean over layers 0..L of ``A^k E`` with ``A = D^-1/2 R D^-1/2`` the
    normalised bipartite graph of the training interactions (no self loops, no feature transforms)."""

    name = "lightgcn"

    def __init__(self, n_users: int, n_items: int, dim: int = 64, *, train_user: Any, train_item: Any,
                 layers: int = 2, generator: Optional[torch.Generator] = None):
        super().__init__(n_users, n_items, dim, generator=generator)
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(f"layers must be a positive integer, got {layers!r}")
        self.layers = layers
        self.graph = normalized_graph(np.asarray(train_user), np.asarray(train_item), n_users, n_items)

    def propagate(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = torch.cat([users, items])
        total = e
        for _ in range(self.layers):
            e = torch.sparse.mm(self.graph, e)
            total = total + e
        total = total / (self.layers + 1)
        return total[: self.n_users], total[self.n_users:]

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "layers": self.layers}


def normalized_graph(train_user: np.ndarray, train_item: np.ndarray, n_users: int, n_items: int) -> torch.Tensor:
    """The symmetric-normalised (n_users + n_items)^2 adjacency of the bipartite training graph (sparse COO)."""
    u = torch.from_numpy(train_user.astype(np.int64))
    i = torch.from_numpy(train_item.astype(np.int64)) + n_users
    rows = torch.cat([u, i])
    cols = torch.cat([i, u])
    n = n_users + n_items
    deg = torch.bincount(rows, minlength=n).double()
    inv = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
    values = (inv[rows] * inv[cols]).float()
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n), check_invariants=True).coalesce()


MODELS = {"mf": (MF, "matrix factorisation trained with BPR (the APR anchor)"),
          "lightgcn": (LightGCN, "LightGCN: MF ego embeddings propagated over the training graph (2 layers)")}


def build_model(spec: dict[str, Any], split: Any = None, generator: Optional[torch.Generator] = None) -> EmbeddingRecommender:
    """A model from its spec (``name``, ``n_users``, ``n_items``, ``dim``, [``layers``]); LightGCN needs the
    training split for its graph."""
    name = spec.get("name")
    if name not in MODELS:
        raise ValueError(f"unknown recommender {name!r}: choose one of {', '.join(MODELS)}")
    args = (int(spec["n_users"]), int(spec["n_items"]), int(spec.get("dim", 64)))
    if name == "lightgcn":
        if split is None:
            raise ValueError("a LightGCN model needs the training split to build its graph")
        return LightGCN(*args, train_user=split.train_user, train_item=split.train_item,
                        layers=int(spec.get("layers", 2)), generator=generator)
    return MF(*args, generator=generator)


__all__ = ["EmbeddingRecommender", "LightGCN", "MF", "MODELS", "build_model", "normalized_graph"]
