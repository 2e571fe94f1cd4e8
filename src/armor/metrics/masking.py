"""Gradient-masking checks: symptoms that a model only looks robust because its gradients mislead attacks.

Each check follows the warning signs of Athalye et al. 2018 ("Obfuscated gradients give a false sense of
security") and the checklist of Carlini et al. 2019 ("On evaluating adversarial robustness"). A check that
fires becomes a named flag with a human explanation and the numbers behind it:

``accuracy_not_decreasing_with_eps``
    Accuracy must not rise when eps grows: a larger ball contains every smaller one.
``no_convergence_at_large_eps``
    At a budget large enough to reach a mid-grey input from any input (linf 0.5 on [0, 1] data), a working
    attack drives accuracy to about 0.
``stronger_attack_weaker``
    PGD with more steps and restarts must not leave a higher accuracy than PGD-10 (beyond a tolerance).
``more_iterations_help``
    ...nor a much lower one: then the weak attack had not converged and numbers from it are optimistic.
``black_box_beats_white_box``
    The gradient-free Square attack must not beat the gradient attacks.
``zero_gradients``
    Many inputs with a (near-)zero loss gradient (quantisation, saturated softmax, non-differentiable layers).
``randomized_outputs``
    Two forward passes in eval mode on the same input disagree: gradients of one draw mislead; use EOT.
``probability_outputs``
    The model returns probabilities, not logits: the CE loss of the attacks then saturates.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from ..attacks import pgd, square
from ..threat import Norm, ThreatModel
from ..engine import correct_after, model_device, predict_logits
from .interpret import saliency

CHECKS = ("accuracy_not_decreasing_with_eps", "no_convergence_at_large_eps", "stronger_attack_weaker",
          "more_iterations_help", "black_box_beats_white_box", "zero_gradients", "randomized_outputs",
          "probability_outputs")


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def large_eps_for(threat: ThreatModel, x: torch.Tensor) -> float:
    """A budget that reaches the mid-point of the bounds from any input: half the range, in the threat's norm."""
    lo, hi = threat.bounds
    span = float((torch.as_tensor(hi) - torch.as_tensor(lo)).max())
    d = x[0].numel()
    half = 0.5 * span
    return {Norm.LINF: half, Norm.L2: half * math.sqrt(d), Norm.L1: half * d}[threat.norm]


class _Runner:
    """Runs attacks over the points with the engine's seed rule (one stream per check) and scores them."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
        self.model, self.x, self.y, self.batch_size, self.seed = model, x, y, batch_size, seed
        self.device = model_device(model, x.device)
        self.clean_correct = predict_logits(model, x, batch_size).argmax(1).cpu() == y.cpu()

    def correct_after(self, key: int, fn: Callable[..., torch.Tensor], threat: ThreatModel,
                      **kwargs: Any) -> torch.Tensor:
        """Per-sample: still correct after the attack (points wrong on clean inputs count as wrong)."""
        attack = functools.partial(fn, **kwargs) if kwargs else fn
        return correct_after(self.model, attack, self.x, self.y, threat, batch_size=self.batch_size,
                             seed=self.seed, stream=key, name=getattr(fn, "__name__", "")) & self.clean_correct


def _result(passed: Optional[bool], evidence: dict[str, Any]) -> dict[str, Any]:
    return {"passed": passed, "evidence": evidence}


def masking_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                   checks: Optional[Sequence[str]] = None, curve: Optional[Sequence[dict[str, Any]]] = None,
                   eps_factors: Sequence[float] = (0.25, 0.5, 1.0, 1.5, 2.0), curve_steps: int = 20,
                   large_eps: Optional[float] = None, large_eps_steps: int = 100,
                   weak_steps: int = 10, strong_steps: int = 100, strong_restarts: int = 3,
                   square_queries: int = 1000, tol: float = 0.03, more_iterations_tol: float = 0.1,
                   black_box_tol: float = 0.05, large_eps_max_accuracy: float = 0.05,
                   zero_grad_tol: float = 1e-12, zero_grad_max_fraction: float = 0.1,
                   random_tol: float = 1e-5, n: Optional[int] = 500, batch_size: int = 500,
                   seed: int = 0) -> dict[str, Any]:
    """Run the gradient-masking checks on ``model`` under ``threat``; each failing check becomes a flag.

    Cost (defaults, ``n`` points): PGD-20 at each of ``eps_factors``, PGD-100 at the large eps, PGD-10,
    PGD-100 x 3 restarts, Square with 1000 queries, one backward pass and two forward passes.

    Arguments:
        model: returns logits. x, y: inputs in the threat's bounds and labels; the first ``n`` are used
            (None: all). threat: norm, eps, bounds (and constraints).
        checks: names from :data:`CHECKS` to run (default: all); the others are left out of the result.
        curve: a :func:`armor.metrics.robustness_curve` result to check for monotonicity instead of running
            PGD-``curve_steps`` at ``eps_factors`` x eps (0 is always included as the clean accuracy).
        large_eps: budget for the convergence check; default :func:`large_eps_for` (linf 0.5 on [0, 1]).
            Skipped for constrained threats, where immutable features can keep points correct at any eps.
        weak_steps / strong_steps, strong_restarts: the PGD pair compared by the iteration checks.
        square_queries: Square's query budget (linf and l2 only; skipped for l1).
        tol: allowed rise of accuracy with eps, and of the strong attack over the weak one.
        more_iterations_tol: flag when the strong attack is lower than the weak one by more than this.
        black_box_tol: flag when Square's accuracy is below the best white-box accuracy by more than this.
        large_eps_max_accuracy: flag when accuracy at the large eps stays above this.
        zero_grad_tol: loss-gradient L2 norms at or below this count as zero (armor's L2 step divides by
            max(||g||, 1e-12), so smaller gradients do not move it). zero_grad_max_fraction: flag above this share.
        random_tol: flag when two forward passes differ by more than this (relative to the largest logit).
        batch_size: points per attack call. seed: seeds every attack (one generator per attack and batch).
    Returns:
        ``{"flags": [{"name", "message", "evidence"}], "checks": {name: {"passed", "evidence"}}, "n",
        "threat_model"}``; ``passed`` is None for a skipped check (its evidence says why). JSON-ready.
    """
    if not isinstance(threat, ThreatModel):
        raise ValueError(f"threat must be an armor.ThreatModel, got {type(threat).__name__}")
    threat.check_inputs(x, y)
    selected = list(CHECKS) if checks is None else list(checks)
    for name in selected:
        if name not in CHECKS:
            raise ValueError(f"unknown masking check {name!r}: choose from {', '.join(CHECKS)}")
    for label, v in (("tol", tol), ("more_iterations_tol", more_iterations_tol), ("black_box_tol", black_box_tol),
                     ("large_eps_max_accuracy", large_eps_max_accuracy), ("zero_grad_tol", zero_grad_tol),
                     ("zero_grad_max_fraction", zero_grad_max_fraction), ("random_tol", random_tol)):
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{label} must be a finite number >= 0, got {v!r}")
    if min(weak_steps, strong_steps, strong_restarts, curve_steps, large_eps_steps, square_queries) < 1:
        raise ValueError("attack budgets (steps, restarts, queries) must be >= 1")
    if n is not None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        x, y = x[:n], y[:n]
    run = _Runner(model, x, y, batch_size, seed)
    clean_acc = float(run.clean_correct.double().mean())
    eps = threat.eps_scalar
    results: dict[str, dict[str, Any]] = {}
    messages: dict[str, str] = {}

    def want(*names: str) -> bool:
        return any(nm in selected for nm in names)

    # --- randomness and output type first: they explain most other symptoms
    if want("randomized_outputs", "probability_outputs"):
        xb = x[:batch_size].to(run.device)
        with torch.no_grad():
            a = predict_logits(model, xb, batch_size)
            b = predict_logits(model, xb, batch_size)
        diff = float((a - b).abs().max())
        scale = max(1.0, float(a.abs().max()))
        flipped = float((a.argmax(1) != b.argmax(1)).double().mean())
        if "randomized_outputs" in selected:
            passed = diff <= random_tol * scale
            results["randomized_outputs"] = _result(passed, {"max_abs_logit_difference": diff,
                                                             "share_predictions_changed": flipped,
                                                             "threshold": random_tol * scale})
            if not passed:
                messages["randomized_outputs"] = (
                    f"Two forward passes in eval mode on the same inputs differ by up to {diff:.3g} in the logits "
                    f"and change {_pct(flipped)} of the predictions. A randomized model's gradients describe one "
                    "random draw, which hides the way to adversarial examples; evaluate with Expectation over "
                    "Transformation (average gradients over draws) before trusting its robust accuracy.")
        if "probability_outputs" in selected:
            sums = a.sum(dim=1)
            probs = bool((a >= 0).all()) and bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-4))
            results["probability_outputs"] = _result(not probs, {"min_output": float(a.min()),
                                                                  "mean_row_sum": float(sums.mean())})
            if probs:
                messages["probability_outputs"] = (
                    "The model's outputs are non-negative and sum to 1: they look like probabilities, not logits. "
                    "Attacks apply softmax again, which flattens the loss and weakens them; remove the final "
                    "softmax so that the model returns logits.")

    # --- zero gradients
    if "zero_gradients" in selected:
        g = saliency(model, x, y, kind="loss", absolute=False, batch_size=batch_size).flatten(1).double().norm(dim=1)
        zero = g <= zero_grad_tol
        share = float(zero.double().mean())
        passed = share <= zero_grad_max_fraction
        results["zero_gradients"] = _result(passed, {
            "share_zero": share, "threshold": zero_grad_max_fraction, "zero_grad_tol": zero_grad_tol,
            "median_grad_norm": float(g.median()), "min_grad_norm": float(g.min())})
        if not passed:
            messages["zero_gradients"] = (
                f"{_pct(share)} of the inputs have a loss gradient of (near) zero norm (<= {zero_grad_tol:g}). "
                "Gradient attacks cannot move from such points, so their robust accuracy is an artefact: typical "
                "causes are input quantisation or rounding, saturated softmax outputs (very large logits) and "
                "non-differentiable preprocessing. Use BPDA, a margin loss on rescaled logits, or Square.")

    # --- the weak / strong PGD pair and Square
    weak = strong = sq = None
    if want("stronger_attack_weaker", "more_iterations_help", "black_box_beats_white_box"):
        weak = run.correct_after(1, pgd, threat, steps=weak_steps)
        strong = run.correct_after(2, pgd, threat, steps=strong_steps, restarts=strong_restarts)
        acc_w, acc_s = float(weak.double().mean()), float(strong.double().mean())
        pair = {"weak_attack": f"pgd-{weak_steps}", "weak_accuracy": acc_w,
                "strong_attack": f"pgd-{strong_steps} x {strong_restarts} restarts", "strong_accuracy": acc_s,
                "clean_accuracy": clean_acc}
        if "stronger_attack_weaker" in selected:
            passed = acc_s <= acc_w + tol
            results["stronger_attack_weaker"] = _result(passed, {**pair, "tolerance": tol})
            if not passed:
                messages["stronger_attack_weaker"] = (
                    f"PGD with {strong_steps} steps and {strong_restarts} restarts left {_pct(acc_s)} accuracy, more "
                    f"than PGD-{weak_steps} ({_pct(acc_w)}). A stronger attack can only do better on a deterministic, "
                    "differentiable model: the loss surface is misleading the attack (randomness, shattered or "
                    "exploding gradients).")
        if "more_iterations_help" in selected:
            passed = acc_w - acc_s <= more_iterations_tol
            results["more_iterations_help"] = _result(passed, {**pair, "tolerance": more_iterations_tol})
            if not passed:
                messages["more_iterations_help"] = (
                    f"PGD with {strong_steps} steps and {strong_restarts} restarts lowered accuracy from {_pct(acc_w)} "
                    f"(PGD-{weak_steps}) to {_pct(acc_s)}. The weak attack had not converged, so robust accuracy "
                    "measured with few iterations is optimistic: evaluate with the standard suite (APGD, Square).")
    if "black_box_beats_white_box" in selected:
        if threat.norm is Norm.L1:
            results["black_box_beats_white_box"] = _result(None, {"skipped": "Square supports linf and l2 only"})
        else:
            sq = run.correct_after(3, square, threat, n_queries=square_queries)
            white = weak & strong
            acc_sq = float(sq.double().mean())
            acc_white = min(float(weak.double().mean()), float(strong.double().mean()))
            only_sq = float((~sq & white).double().mean())
            passed = acc_sq >= acc_white - black_box_tol
            results["black_box_beats_white_box"] = _result(passed, {
                "square_queries": square_queries, "square_accuracy": acc_sq, "white_box_accuracy": acc_white,
                "share_fooled_only_by_square": only_sq, "tolerance": black_box_tol})
            if not passed:
                messages["black_box_beats_white_box"] = (
                    f"The gradient-free Square attack ({square_queries} queries) left {_pct(acc_sq)} accuracy, below "
                    f"the best gradient attack ({_pct(acc_white)}); it fooled {_pct(only_sq)} of the points that every "
                    "gradient attack missed. Gradients are obfuscated: the model's robustness against white-box "
                    "attacks is not real.")

    # --- accuracy against eps
    if "accuracy_not_decreasing_with_eps" in selected:
        if curve is not None:
            pts = sorted(((float(p["eps"]), float(p["robust_accuracy"])) for p in curve), key=lambda t: t[0])
            source = "given curve"
        else:
            pts = [(0.0, clean_acc)]
            for j, f in enumerate(sorted(set(float(v) for v in eps_factors))):
                if f <= 0:
                    continue
                te = threat.scaled(f)
                acc = float(run.correct_after(10 + j, pgd, te, steps=curve_steps).double().mean())
                pts.append((f * eps, acc))
            source = f"pgd-{curve_steps}"
        rise, at = 0.0, None
        for i in range(len(pts)):
            for j in range(i + 1, len(pts)):
                if pts[j][1] - pts[i][1] > rise:
                    rise, at = pts[j][1] - pts[i][1], (pts[i], pts[j])
        passed = rise <= tol
        results["accuracy_not_decreasing_with_eps"] = _result(passed, {
            "eps": [p[0] for p in pts], "accuracy": [p[1] for p in pts], "attack": source,
            "largest_rise": rise, "tolerance": tol})
        if not passed and at is not None:
            (e0, a0), (e1, a1) = at
            messages["accuracy_not_decreasing_with_eps"] = (
                f"Accuracy rose from {_pct(a0)} at eps={e0:g} to {_pct(a1)} at eps={e1:g}. A larger budget contains "
                "every smaller one, so a sound attack can only do better as eps grows: the attack is failing, not "
                "the model succeeding.")

    # --- large eps
    if "no_convergence_at_large_eps" in selected:
        if threat.constraints is not None:
            results["no_convergence_at_large_eps"] = _result(None, {
                "skipped": "domain constraints (immutable features) can keep points correct at any eps"})
        else:
            big = large_eps_for(threat, x) if large_eps is None else float(large_eps)
            if not math.isfinite(big) or big <= 0:
                raise ValueError(f"large_eps must be a finite number > 0, got {large_eps!r}")
            acc = float(run.correct_after(4, pgd, ThreatModel(threat.norm, big, threat.bounds),
                                          steps=large_eps_steps).double().mean())
            passed = acc <= large_eps_max_accuracy
            results["no_convergence_at_large_eps"] = _result(passed, {
                "eps": big, "accuracy": acc, "steps": large_eps_steps, "threshold": large_eps_max_accuracy})
            if not passed:
                messages["no_convergence_at_large_eps"] = (
                    f"At eps={big:g} ({threat.norm.value}), large enough to turn any input into a uniform grey one, "
                    f"PGD-{large_eps_steps} still leaves {_pct(acc)} accuracy. An unbounded attack should reach about "
                    "0%: the gradients do not lead the attack anywhere.")

    ordered = {name: results[name] for name in CHECKS if name in results}
    flags = [{"name": name, "message": messages[name], "evidence": ordered[name]["evidence"]}
             for name in ordered if ordered[name]["passed"] is False]
    return {"flags": flags, "checks": ordered, "n": int(x.shape[0]), "threat_model": threat.to_dict()}
