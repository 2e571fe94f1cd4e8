"""Domain constraints behind a :class:`armor.ThreatModel`: the exact, order-aware repair of tabular points.

The ThreatModel first clamps a candidate into the per-feature eps ball and the bounds, then calls
:meth:`TabularConstraints.repair`, which applies, in this order:

1. bounds (again: ``repair`` is also usable on its own);
2. immutable features reset to the clean value;
3. monotone features: only-up features never go below the clean value, only-down ones never above;
4. integer features rounded *towards the clean value* (never away, so the move cannot outgrow the ball);
5. one-hot groups: kept if the candidate is already an exact one-hot row, otherwise reset to the clean
   category (again: never a larger move than the candidate's; attacks that switch categories build the exact
   one-hot row themselves, knowing the threat's budget);
6. linear equalities: each dependent feature is recomputed from its terms, ``t = t_clean + sum(c * dx)``;
7. linear inequalities (and the dependent features' bounds and monotone rules, which are linear in the
   independent features too): a violated one is projected onto exactly, moving only the continuous mutable
   independent features, each inside the interval between its clean and candidate value, for a few cycles
   over all inequalities; then step 6 again.

Rows that already satisfy everything are returned untouched (so the repair is idempotent). Every step
except 6 moves each coordinate towards the clean value, so the result stays in any eps ball the candidate
was in; a dependent feature moves by at most ``sum(|c| * |dx|)``, which is why its budget is the
sum of its terms' budgets (:func:`feature_eps`). If the result still violates something (inequalities that
fight each other, a dependent pushed out of its bounds), the repair backtracks: 12 bisection steps over the
fraction ``t`` of the move ``x + t * (x_adv - x)``, keeping the largest ``t`` met whose repair satisfies
everything (rounded integers can make feasibility along the segment non-monotone, so "largest met", not
"largest"). ``t = 0`` is the clean
point, which is always feasible (clean data are validated against the schema; a clean row that is not makes
``repair`` raise ``ValueError`` naming it, never return an infeasible point), so every returned point
satisfies every constraint. Bounds, immutables, monotone rules, integers and one-hot groups hold exactly;
linear relations hold to a relative tolerance of 1e-5 (float32 rounding of sums).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ...threat import Norm, ThreatModel
from .schema import RELATION_TOL, Schema, as_schema

DEP_SLACK = 1e-3  # a dependent feature's budget exceeds its terms' sum by 0.1%, so rounding never breaks the ball
_CYCLES = 3  # passes of projections over all inequalities before falling back to bisection
_BISECT = 12  # bisection steps of the fallback: the kept move is within 1/4096 of the largest feasible one


def _linear_rows(schema: Schema, relations: list, rhs: str) -> tuple[np.ndarray, np.ndarray]:
    """The relations' linear terms as a matrix over the schema's features, and their right-hand sides."""
    M = np.zeros((len(relations), schema.n_features))
    v = np.zeros(len(relations))
    for i, r in enumerate(relations):
        for name, c in r.terms:
            M[i, schema.index(name)] += c
        v[i] = getattr(r, rhs)
    return M, v


class TabularConstraints:
    """The constraints of a fitted :class:`~armor.domains.tabular.Schema`, in the form a ThreatModel applies.

    Arguments:
        schema: a fitted schema (numeric bounds), a TOML path or a dict.

    Examples:
        >>> threat = threat_from_schema("fraud.toml", eps=0.25, data=x_train)
        >>> threat.constraints.satisfied(threat.project(x_adv, x), x).all()
        tensor(True)
    """

    kind = "tabular"

    def __init__(self, schema: Union[Schema, str, Path, dict]):
        schema = as_schema(schema)
        schema._require_fitted("constraints")
        self.schema = schema
        d = schema.n_features
        lo, hi = schema.bounds()
        # The model works in float32: bounds are rounded to float32 once, here and in the ThreatModel alike,
        # so that both check exactly the same numbers.
        lo, hi = lo.astype(np.float32).astype(np.float64), hi.astype(np.float32).astype(np.float64)
        feats = schema.features
        self.dependent = np.zeros(d, bool)
        eqs = [r for r in schema.relations if r.kind == "equality"]
        dep_idx = [schema.index(r.target) for r in eqs]
        self.dependent[dep_idx] = True
        C, const = _linear_rows(schema, eqs, "constant")
        ineqs = [r for r in schema.relations if r.kind == "inequality"]
        A, b = _linear_rows(schema, ineqs, "bound")
        # Inequalities in the independent features: substitute t = t_clean + C (v - x_clean) for each dependent,
        # giving rows a . v <= b0 + w . x_clean. The dependents' bounds and monotone rules become rows too.
        E = np.zeros((len(eqs), d))
        E[np.arange(len(eqs)), dep_idx] = 1.0
        rows_a, rows_b, rows_w = [], [], []
        for i in range(len(ineqs)):
            a_dep = A[i] @ E.T  # coefficient of each dependent in this inequality
            rows_a.append(A[i] * ~self.dependent + a_dep @ C)
            rows_b.append(b[i])
            rows_w.append(a_dep @ C - a_dep @ E)
        for e, j in enumerate(dep_idx):
            # t(v) = t_clean + C_e (v - x) = C_e v + (t_clean - C_e x); each rule below is a . v <= b0 + w . x.
            f, ce, ee = feats[j], C[e], E[e]
            rules = []
            if math.isfinite(hi[j]):
                rules.append((ce, hi[j], ce - ee))      # t <= upper
            if math.isfinite(lo[j]):
                rules.append((-ce, -lo[j], ee - ce))    # t >= lower
            if f.monotone < 0:
                rules.append((ce, 0.0, ce))             # t <= t_clean
            if f.monotone > 0:
                rules.append((-ce, 0.0, -ce))           # t >= t_clean
            for a_row, b0, w_row in rules:
                rows_a.append(a_row)
                rows_b.append(b0)
                rows_w.append(w_row)
        self.free = np.array([f.kind == "continuous" and f.mutable for f in feats]) & ~self.dependent
        group_idx = [[schema.index(m) for m in g.members] for g in schema.groups]
        self._np = {
            "lo": lo, "hi": hi,
            "immutable": np.array([not f.mutable for f in feats]),
            "inc": np.array([f.monotone > 0 for f in feats]) & ~self.dependent,
            "dec": np.array([f.monotone < 0 for f in feats]) & ~self.dependent,
            "integer": np.array([f.kind == "integer" for f in feats]) & ~self.dependent,
            "dep_integer": np.array([f.kind == "integer" for f in feats]) & self.dependent,
            "dep_idx": np.array(dep_idx, dtype=np.int64), "C": C, "const": const,
            "A": A, "b": b,
            "rows_a": np.array(rows_a).reshape(-1, d), "rows_b": np.array(rows_b), "rows_w": np.array(rows_w).reshape(-1, d),
            "free": self.free, "dependent": self.dependent,
        }
        self._groups = [(np.array(idx, dtype=np.int64), g.mutable) for idx, g in zip(group_idx, schema.groups)]
        self._cache: dict[Any, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ tensors on the right device
    def _t(self, device: torch.device) -> dict[str, torch.Tensor]:
        key = str(device)
        if key not in self._cache:
            out = {}
            for k, v in self._np.items():
                t = torch.from_numpy(np.ascontiguousarray(v))
                out[k] = t.to(device=device, dtype=torch.float64 if t.is_floating_point() else t.dtype)
            out["groups"] = [(torch.from_numpy(i).to(device), m) for i, m in self._groups]
            self._cache[key] = out
        return self._cache[key]

    def _check_shape(self, v: torch.Tensor, x: torch.Tensor) -> None:
        d = self.schema.n_features
        if v.dim() != 2 or v.shape[1] != d or v.shape != x.shape:
            raise ValueError(f"tabular constraints of {self.schema.name!r} need N×{d} inputs, got x_adv "
                             f"{tuple(v.shape)} and x {tuple(x.shape)}")

    # ------------------------------------------------------------------ the repair
    def repair(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Map ``x_adv`` (already inside the threat's ball) onto the feasible set around ``x``.

        Arguments:
            x_adv: candidates (N×D, raw units). x: the clean points they were derived from (feasible).
        Returns:
            Points with the dtype of ``x_adv`` that satisfy every constraint (see the module docstring);
            each coordinate moved no further from ``x`` than in ``x_adv``, except dependent features.
        """
        self._check_shape(x_adv, x)
        if x_adv.shape[0] == 0:
            return x_adv
        # Feasible rows are returned untouched, which makes the repair idempotent by construction.
        todo = (~self.satisfied(x_adv, x)).nonzero().squeeze(1)
        out = x_adv.detach().clone()
        if todo.numel() == 0:
            return out
        t = self._t(x.device)
        xs = x[todo]
        x64 = xs.detach().double()
        v0 = x_adv[todo].detach().double()
        fixed = self._finish(self._repair64(v0, x64, t, x_adv.dtype), xs, t, x_adv.dtype)
        bad = ~self.satisfied(fixed, xs)
        if bad.any():
            fixed[bad] = self._backtrack(v0[bad], x64[bad], xs[bad], t, x_adv.dtype)
            still = ~self.satisfied(fixed[bad], xs[bad])
            if still.any():  # the fallback is the clean point: it must be infeasible itself
                raise self._infeasible_clean(xs[bad][still][0], int(todo[bad][still][0]))
        out[todo] = fixed
        return out

    def _infeasible_clean(self, x_row: torch.Tensor, row: int) -> ValueError:
        """The error for a clean row no repair can fall back to: returning its points would break the schema."""
        try:
            self.schema.validate(x_row[None].detach().cpu().double().numpy(), where=f"clean row {row}")
        except ValueError as e:
            detail = str(e).replace(f"clean row {row}: row 0", f"clean row {row}")
        else:
            kinds = [k for k, v in self.violations(x_row[None], x_row[None]).items() if bool(v.any())]
            detail = f"clean row {row} violates the schema's {', '.join(kinds) or 'float32-rounded'} constraints"
        return ValueError(f"{detail}; no feasible point exists around it, so the threat cannot repair attacks "
                          "there: check the data with schema.validate(x) before attacking")

    def _repair64(self, v: torch.Tensor, x: torch.Tensor, t: dict[str, Any], dtype: torch.dtype) -> torch.Tensor:
        v = torch.where(torch.isfinite(v), v, x)  # a NaN would slip through every comparison below
        v = torch.maximum(torch.minimum(v, t["hi"]), t["lo"])
        v = torch.where(t["immutable"], x, v)
        v = torch.where(t["inc"], torch.maximum(v, x), v)
        v = torch.where(t["dec"], torch.minimum(v, x), v)
        toward = torch.where(v > x, torch.floor(v), torch.where(v < x, torch.ceil(v), x))
        v = torch.where(t["integer"], toward, v)
        for idx, mutable in t["groups"]:
            block = v[:, idx]
            exact = ((block == 0) | (block == 1)).all(dim=1) & (block.sum(dim=1) == 1) if mutable else \
                torch.zeros(v.shape[0], dtype=torch.bool, device=v.device)
            v[:, idx] = torch.where(exact[:, None], block, x[:, idx])
        v = self._apply_equalities(v, x, t)
        if t["rows_a"].shape[0]:
            beta = t["rows_b"] + x @ t["rows_w"].T
            lhs = v @ t["rows_a"].T
            if (lhs > beta + self._row_tol(v, t, beta)).any():
                lo_box, hi_box = torch.minimum(x, v), torch.maximum(x, v)
                v = _cycle_projections(v, beta, lo_box, hi_box, t)
        # Dependents are computed from the independent values as they will be stored, so that repairing the
        # result again recomputes exactly the same dependents (idempotence).
        return self._apply_equalities(v.to(dtype).double(), x, t)

    @staticmethod
    def _row_tol(v: torch.Tensor, t: dict[str, Any], beta: torch.Tensor) -> torch.Tensor:
        return RELATION_TOL * 0.5 * (1 + v.abs() @ t["rows_a"].abs().T + beta.abs())

    @staticmethod
    def _apply_equalities(v: torch.Tensor, x: torch.Tensor, t: dict[str, Any]) -> torch.Tensor:
        dep = t["dep_idx"]
        if dep.numel() == 0:
            return v
        v = v.clone()
        v[:, dep] = x[:, dep] + (v - x) @ t["C"].T
        return v

    def _finish(self, v64: torch.Tensor, x: torch.Tensor, t: dict[str, Any], dtype: torch.dtype) -> torch.Tensor:
        """Cast back; nudge dependents whose rounding left them a hair further out than their terms allow."""
        out = v64.to(dtype)
        dep = t["dep_idx"]
        if dep.numel() and dtype != torch.float64:
            xd = x[:, dep]
            allowed = ((out.double() - x.double()).abs() @ t["C"].abs().T) * (1 + DEP_SLACK / 2)
            for _ in range(3):
                od = out[:, dep]
                over = (od.double() - xd.double()).abs() > allowed
                if not over.any():
                    break
                out[:, dep] = torch.where(over, torch.nextafter(od, xd), od)
        return out

    def _backtrack(self, v0: torch.Tensor, x64: torch.Tensor, x: torch.Tensor, t: dict[str, Any],
                   dtype: torch.dtype) -> torch.Tensor:
        """The repair of ``x + s * (v0 - x)`` for the largest ``s`` found by bisection that is feasible."""
        n = v0.shape[0]
        lo = torch.zeros(n, 1, dtype=torch.float64, device=x.device)
        hi = torch.ones(n, 1, dtype=torch.float64, device=x.device)
        best = x.detach().to(dtype).clone()
        for _ in range(_BISECT):
            mid = (lo + hi) / 2
            cand = self._finish(self._repair64(x64 + mid * (v0 - x64), x64, t, dtype), x, t, dtype)
            ok = self.satisfied(cand, x)
            best[ok] = cand[ok]
            lo = torch.where(ok[:, None], mid, lo)
            hi = torch.where(ok[:, None], hi, mid)
        return best

    # ------------------------------------------------------------------ checks
    def violations(self, x_adv: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per constraint kind, a per-sample bool: does ``x_adv`` violate it (relative to clean ``x``)?

        Keys: bounds, immutable, monotone, integer, categorical, equality, inequality. The eps ball is the
        ThreatModel's to check (``threat.contains``).
        """
        self._check_shape(x_adv, x)
        t = self._t(x.device)
        v, x0 = x_adv.detach().double(), x.detach().double()
        n = v.shape[0]
        none = torch.zeros(n, dtype=torch.bool, device=v.device)
        out = {
            "bounds": ((v < t["lo"]) | (v > t["hi"]) | ~torch.isfinite(v)).any(dim=1),
            "immutable": ((v != x0) & t["immutable"]).any(dim=1),
            "monotone": (((v < x0) & t["inc"]) | ((v > x0) & t["dec"])).any(dim=1),
            "integer": ((v != torch.round(v)) & (t["integer"] | t["dep_integer"])).any(dim=1),
        }
        cat = none.clone()
        for idx, _ in t["groups"]:
            block = v[:, idx]
            cat |= ~(((block == 0) | (block == 1)).all(dim=1) & (block.sum(dim=1) == 1))
        out["categorical"] = cat
        # Monotone dependents: compare with the clean value like any other monotone feature.
        for j in t["dep_idx"].tolist():
            f = self.schema.features[j]
            if f.monotone:
                out["monotone"] |= (v[:, j] < x0[:, j]) if f.monotone > 0 else (v[:, j] > x0[:, j])
        eq = none.clone()
        if t["dep_idx"].numel():
            rhs = v @ t["C"].T + t["const"]
            dep = v[:, t["dep_idx"]]
            scale = 1 + dep.abs() + v.abs() @ t["C"].abs().T + t["const"].abs()
            eq = ((dep - rhs).abs() > RELATION_TOL * scale).any(dim=1)
        out["equality"] = eq
        ineq = none.clone()
        if t["A"].shape[0]:
            lhs = v @ t["A"].T
            scale = 1 + v.abs() @ t["A"].abs().T + t["b"].abs()
            ineq = (lhs - t["b"] > RELATION_TOL * scale).any(dim=1)
        out["inequality"] = ineq
        return out

    def satisfied(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample bool: ``x_adv`` satisfies every domain constraint."""
        bad = None
        for v in self.violations(x_adv, x).values():
            bad = v if bad is None else bad | v
        return ~bad

    # ------------------------------------------------------------------ helpers for attacks (they know eps)
    def box(self, x: torch.Tensor, threat: ThreatModel) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample, per-feature interval each coordinate may take under ``threat`` (ignoring relations):
        the eps ball, the bounds, immutables and monotone rules. Dependent features are pinned (recomputed)."""
        t = self._t(x.device)
        eps = threat.eps_tensor(x)
        lo = torch.maximum(x - eps, t["lo"].to(x.dtype))
        hi = torch.minimum(x + eps, t["hi"].to(x.dtype))
        pinned = t["immutable"] | t["dependent"]
        lo = torch.where(pinned, x, torch.where(t["inc"], torch.maximum(lo, x), lo))
        hi = torch.where(pinned, x, torch.where(t["dec"], torch.minimum(hi, x), hi))
        lo = torch.where(t["integer"], torch.ceil(lo), lo)
        hi = torch.where(t["integer"], torch.floor(hi), hi)
        return torch.minimum(lo, x), torch.maximum(hi, x)

    def switchable(self, threat: ThreatModel, like: torch.Tensor) -> list[bool]:
        """Per categorical group: may the attacker switch its category under ``threat``? A switch moves two
        one-hot columns by 1, so it needs the group mutable and a budget >= 1 on every member."""
        t = self._t(like.device)
        eps = threat.eps_tensor(like).expand(like.shape[1])
        return [bool(m) and bool((eps[idx] >= 1).all()) for idx, m in t["groups"]]

    def discretize(self, z: torch.Tensor, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                   switchable: list[bool]) -> torch.Tensor:
        """A relaxed point made integral: integers rounded to the nearest value inside ``[lo, hi]``, and each
        switchable group set to the one-hot row of its largest entry (ties keep the clean category)."""
        t = self._t(x.device)
        out = torch.where(t["integer"], torch.minimum(torch.maximum(torch.round(z), lo), hi), z)
        for (idx, _), ok in zip(t["groups"], switchable):
            if not ok:
                out[:, idx] = x[:, idx]
                continue
            block = z[:, idx]
            clean = x[:, idx].argmax(dim=1)
            best = block.argmax(dim=1)
            keep = block.gather(1, clean[:, None]).squeeze(1) >= block.gather(1, best[:, None]).squeeze(1)
            choice = torch.where(keep, clean, best)
            out[:, idx] = torch.nn.functional.one_hot(choice, len(idx)).to(z.dtype)
        return out

    def with_dependents(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``z`` with every dependent feature recomputed from its terms; differentiable in ``z``, so that a
        gradient step on a part sees its effect through the total."""
        t = self._t(x.device)
        dep = t["dep_idx"]
        if dep.numel() == 0:
            return z
        C = t["C"].to(z.dtype)
        target = x[:, dep] + (z - x) @ C.T
        sel = torch.zeros(dep.numel(), z.shape[1], dtype=z.dtype, device=z.device)
        sel[torch.arange(dep.numel(), device=z.device), dep] = 1.0
        return z + (target - z[:, dep]) @ sel

    def project_relaxed(self, z: torch.Tensor, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Clamp a relaxed iterate to ``[lo, hi]`` and project it onto the inequalities (continuous features
        only); integers and categories stay relaxed."""
        z = torch.minimum(torch.maximum(z, lo), hi)
        t = self._t(x.device)
        if t["rows_a"].shape[0] == 0:
            return z
        z64, x64 = z.double(), x.double()
        beta = t["rows_b"] + x64 @ t["rows_w"].T
        return _cycle_projections(z64, beta, lo.double(), hi.double(), t).to(z.dtype)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "schema": self.schema.to_dict()}

    def __repr__(self) -> str:
        s = self.schema
        return (f"TabularConstraints({s.name!r}: {s.n_features} features, {len(s.groups)} categorical, "
                f"{len(s.relations)} relations)")


def _cycle_projections(v: torch.Tensor, beta: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                       t: dict[str, Any]) -> torch.Tensor:
    """Project onto each violated inequality in turn, for up to ``_CYCLES`` passes (stopping when none is)."""
    rows_a = t["rows_a"]
    # Aim a hair inside each half-space: storing the result in float32 moves a sum of terms by ~1e-7 of its
    # size, which must not push a dependent feature across one of its (exact) bounds.
    beta = beta - 1e-6 * (1 + v.abs() @ rows_a.abs().T + beta.abs())
    for _ in range(_CYCLES):
        viol = (v @ rows_a.T > beta).any(dim=0)
        if not viol.any():
            break
        for k in viol.nonzero().squeeze(1).tolist():
            v = project_halfspace(v, rows_a[k], beta[:, k], lo, hi, t["free"])
    return v


def project_halfspace(v: torch.Tensor, a: torch.Tensor, beta: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                      free: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean projection of each row of ``v`` onto ``{a . z <= beta} ∩ [lo, hi]``, moving only the
    ``free`` coordinates (the others stay fixed). Rows already inside are returned unchanged.

    The projection is ``z(lam) = clamp(v - lam * a, lo, hi)`` on the free coordinates for the smallest
    ``lam >= 0`` that satisfies the half-space. Coordinate ``j`` moves with slope ``-a_j`` until it reaches
    its box side at ``lam = b_j``, so ``a . z(lam) = a . v - sum_j a_j^2 min(lam, b_j)``: piecewise linear and
    falling. Sorting the breakpoints ``b_j`` gives the segment where it crosses ``beta`` and ``lam`` in closed
    form (float64). Where even the most favourable corner of the box violates the half-space, that corner is
    returned (the caller's final check catches it).

    Arguments:
        v: N×D points (float64). a: D coefficients. beta: N right-hand sides. lo, hi: N×D boxes containing
            ``v``. free: D bools.
    Returns:
        The projected N×D points.
    """
    viol = v @ a > beta
    m = free & (a != 0)
    if not bool(viol.any()) or not bool(m.any()):
        return v
    vi = v[viol]
    am = a[m]
    li, ui, zm = lo[viol][:, m], hi[viol][:, m], vi[:, m]
    target = beta[viol] - vi[:, ~m] @ a[~m]
    g0 = zm @ am
    b = torch.where(am > 0, (zm - li) / am, (ui - zm) / -am).clamp_min(0)
    a2 = am * am
    pts = torch.cat([torch.zeros_like(b[:, :1]), b.sort(dim=1).values], dim=1)  # N×(k+1), from lam = 0
    g = g0[:, None] - (torch.minimum(pts[:, :, None], b[:, None, :]) * a2).sum(dim=2)
    below = g <= target[:, None]
    infeasible = ~below.any(dim=1)
    i = torch.where(infeasible, torch.full_like(g0, pts.shape[1] - 1, dtype=torch.long), below.to(torch.long).argmax(dim=1))
    i = i.clamp_min(1)
    start = pts.gather(1, (i - 1)[:, None]).squeeze(1)
    g_start = g.gather(1, (i - 1)[:, None]).squeeze(1)
    slope = (a2 * (b > start[:, None])).sum(dim=1)
    lam = start + (g_start - target) / slope.clamp_min(1e-300)
    lam = lam * (1 + 1e-12) + 1e-300  # land on the feasible side of the rounding
    z = torch.minimum(torch.maximum(zm - lam[:, None] * am, li), ui)
    corner = torch.where(am > 0, li, ui)
    z = torch.where(infeasible[:, None], corner, z)
    out = v.clone()
    rows = viol.nonzero().squeeze(1)
    cols = m.nonzero().squeeze(1)
    out[rows[:, None], cols[None, :]] = z
    return out


# ---------------------------------------------------------------------------------------------- threat models
_BIG = float(torch.finfo(torch.float32).max)


def feature_eps(schema: Schema, eps: float, constrained: bool = True) -> torch.Tensor:
    """Per-feature linf budget in raw units for a budget of ``eps`` standard deviations.

    Mutable continuous and integer features get ``eps * std * eps_scale``; immutable ones 0 (``constrained``)
    or the same as if mutable (``constrained=False``, the relaxed threat); one-hot columns of a mutable group 1
    (one switch moves two columns by 1); a dependent feature the sum of ``|coef| * budget`` of its terms plus
    0.1%, the most its recomputation can move it (it is not attacked directly).
    """
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be finite and >= 0 (in standard deviations), got {eps}")
    feats = schema.features
    deps = set(schema.dependents)
    out = np.zeros(len(feats))
    for j, f in enumerate(feats):
        if f.name in deps:
            continue
        if f.kind == "onehot":
            out[j] = 1.0 if (f.mutable or not constrained) else 0.0
            continue
        if not f.mutable and constrained:
            continue
        if f.std is None:
            raise ValueError(f"schema {schema.source}: feature {f.name!r} has no std; declare std = ... or pass "
                             "data= (the training split) so that it can be fitted")
        out[j] = eps * f.std * f.eps_scale
    for r in schema.relations:
        if r.kind == "equality":
            j = schema.index(r.target)
            out[j] = sum(abs(c) * out[schema.index(n)] for n, c in r.terms) * (1 + DEP_SLACK)
            if not constrained:
                f = feats[j]
                if f.std is not None:
                    out[j] = max(out[j], eps * f.std)
    return torch.tensor(out, dtype=torch.float32)


def threat_from_schema(schema: Union[Schema, str, Path, dict], eps: Optional[float] = None, *, data: Any = None,
                       data_all: Any = None, constrained: bool = True) -> ThreatModel:
    """A linf :class:`armor.ThreatModel` in raw feature units whose constraints are the schema's.

    Arguments:
        schema: a :class:`Schema`, a TOML path or a dict.
        eps: the budget in standard deviations of each feature (default: the schema's ``eps``).
        data: training rows (N×D raw); fits ``"observed"`` bounds and missing ``std`` (see ``Schema.fit``).
            Every row must satisfy the schema (``Schema.validate``): a ``ValueError`` names the first that does
            not.
        data_all: rows defining ``"observed"`` bounds (default ``data``); validated too.
        constrained: ``False`` gives the relaxed threat: the same ball and bounds, immutables as budgeted as
            mutable features, no domain constraints. It contains the constrained threat's every point.
    Returns:
        ``ThreatModel("linf", eps=<per-feature tensor>, bounds=(<lower>, <upper>), constraints=...)``;
        unbounded sides are +-float32 max.
    """
    schema = as_schema(schema)
    if data is not None:
        schema = schema.fit(data, data_all)
        # the clean rows are every repair's fallback: an infeasible one would leak into attack results
        schema.validate(data, where="threat_from_schema: data")
        if data_all is not None:
            schema.validate(data_all, where="threat_from_schema: data_all")
    if eps is None:
        if schema.eps is None:
            raise ValueError(f"schema {schema.source}: pass eps= (in standard deviations) or declare eps = ... "
                             "in the schema")
        eps = schema.eps
    cons = TabularConstraints(schema)
    lo = torch.tensor(np.clip(cons._np["lo"], -_BIG, _BIG), dtype=torch.float32)
    hi = torch.tensor(np.clip(cons._np["hi"], -_BIG, _BIG), dtype=torch.float32)
    return ThreatModel(Norm.LINF, feature_eps(schema, eps, constrained), (lo, hi), cons if constrained else None)


def relaxed_threat(threat: ThreatModel) -> ThreatModel:
    """The unconstrained counterpart of a tabular threat: per feature the larger of its budget and the
    nominal ``eps * std`` (recovered from the threat's own budget), same bounds, no domain constraints.

    Every point of the constrained threat lies in it, so a model's robust accuracy under it can only be
    lower, which is what the tests check.
    """
    cons = threat.constraints
    if not isinstance(cons, TabularConstraints):
        raise ValueError("relaxed_threat needs a threat built by threat_from_schema (tabular constraints)")
    eps = torch.as_tensor(threat.eps, dtype=torch.float32).expand(cons.schema.n_features)
    ref = feature_eps(cons.schema, 1.0, constrained=True)
    usable = (ref > 0) & torch.from_numpy(~cons.dependent & ~np.array([f.kind == "onehot" for f in cons.schema.features]))
    scale = float((eps[usable].double() / ref[usable].double()).max()) if usable.any() else 0.0
    relaxed = torch.maximum(eps, feature_eps(cons.schema, scale, constrained=False))
    return ThreatModel(threat.norm, relaxed, threat.bounds, None)


def constraints_from_dict(d: dict[str, Any]) -> TabularConstraints:
    """Inverse of :meth:`TabularConstraints.to_dict` (for ``ThreatModel.from_dict``)."""
    if not isinstance(d, dict) or d.get("kind") != "tabular" or "schema" not in d:
        raise ValueError(f"not a tabular constraints dict: {d!r:.200}")
    return TabularConstraints(Schema.from_dict(d["schema"], source="<threat model>"))


__all__ = ["TabularConstraints", "constraints_from_dict", "feature_eps", "project_halfspace", "relaxed_threat",
           "threat_from_schema"]
