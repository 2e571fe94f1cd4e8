"""The threat model on a recommender's embeddings: an L2 ball around every ego embedding row.

APR (He et al., SIGIR 2018) perturbs each user and item embedding by ``eps * g / ||g||`` (a per-row L2 step).
How large ``eps`` is depends on the embeddings: trained MF-BPR rows on MovieLens-100k have norms of about 4, so
eps 0.5 is an eighth of a row. The threat is therefore **one value with its unit**:

* ``unit="absolute"``: every targeted row may move by at most ``eps`` (embedding units, APR's);
* ``unit="relative"``: row ``r`` may move by at most ``eps * ||e_r||``, its clean norm (a share of the row).

``target`` says which tables move: ``"both"`` (APR), ``"users"`` or ``"items"``. The projection is the
library's L2-ball projection (:func:`armor.threat.project_l2_ball`) with one radius per row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ...threat import project_l2_ball

UNITS = {"absolute": "absolute (embedding units)", "relative": "relative (share of each embedding's L2 norm)"}
TARGETS = ("both", "users", "items")


@dataclass(frozen=True)
class EmbeddingThreat:
    """Per-row L2 budget ``eps`` on the ego embeddings (``unit`` absolute or relative, ``target`` tables)."""

    eps: float
    unit: str = "absolute"
    target: str = "both"

    def __post_init__(self) -> None:
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not math.isfinite(self.eps) \
                or self.eps < 0:
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps!r}")
        object.__setattr__(self, "eps", float(self.eps))
        if self.unit not in UNITS:
            raise ValueError(f"eps unit must be one of {', '.join(UNITS)}, got {self.unit!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")

    @property
    def norm(self) -> str:
        return "l2"

    def with_eps(self, eps: float) -> "EmbeddingThreat":
        return EmbeddingThreat(eps, self.unit, self.target)

    def radii(self, model: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The budget of each user row and each item row (0 for a table the threat does not target)."""
        with torch.no_grad():
            out = []
            for table, kind in ((model.user_emb, "users"), (model.item_emb, "items")):
                if self.target not in ("both", kind):
                    out.append(torch.zeros(table.shape[0], dtype=table.dtype))
                elif self.unit == "relative":
                    out.append(self.eps * table.detach().norm(dim=1))
                else:
                    out.append(torch.full((table.shape[0],), self.eps, dtype=table.dtype))
        return out[0], out[1]

    @staticmethod
    def project(delta: tuple[torch.Tensor, torch.Tensor],
                radii: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row of ``delta`` onto the L2 ball of its radius."""
        return project_l2_ball(delta[0], radii[0]), project_l2_ball(delta[1], radii[1])

    @staticmethod
    def contains(delta: tuple[torch.Tensor, torch.Tensor], radii: tuple[torch.Tensor, torch.Tensor],
                 rtol: float = 1e-5) -> bool:
        """Every row within its radius (relative tolerance ``rtol`` for float rounding)."""
        return all(bool((d.norm(dim=1) <= r * (1 + rtol) + 1e-7).all()) for d, r in zip(delta, radii))

    def to_dict(self) -> dict[str, Any]:
        return {"norm": "l2", "eps": self.eps, "eps_unit": UNITS[self.unit], "unit": self.unit,
                "target": self.target}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EmbeddingThreat":
        try:
            return cls(d["eps"], d.get("unit", "absolute"), d.get("target", "both"))
        except (KeyError, TypeError) as e:
            raise ValueError(f"a recsys threat needs eps (and unit, target), got {d!r:.120}: {e}") from None


def mean_row_norms(model: Any) -> dict[str, float]:
    """Mean L2 norm of the user rows and of the item rows (what a relative eps is a share of)."""
    with torch.no_grad():
        return {"users": float(model.user_emb.norm(dim=1).mean()), "items": float(model.item_emb.norm(dim=1).mean())}


__all__ = ["EmbeddingThreat", "TARGETS", "UNITS", "mean_row_norms"]
