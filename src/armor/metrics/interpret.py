"""Interpretability: input-gradient saliency, gradient-image alignment, and a gallery of adversarial examples.

Alignment follows Etmann et al. 2019 ("On the connection between adversarial robustness and saliency map
interpretability", ICML): for the logit ``z_c`` of a class ``c`` and its input gradient ``g = dz_c/dx``,

    alignment(x) = |<x, g>| / ||g||_2          (the paper's alpha(x), in input units)
    cosine(x)    = <x, g> / (||x||_2 ||g||_2)  (the normalised variant, in [-1, 1])

The paper takes ``c`` to be the predicted class; armor's default is the true class (``target="true"``), which
is the same on every correctly classified point; ``target="predicted"`` gives the paper's choice. For a linear
binary classifier the alignment is the distance to the decision boundary (up to the bias), which is why robust
models, whose boundaries lie farther from the data, tend to have gradients that look like the input.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import attack_mode, get_attack
from ..threat import ThreatModel
from ..engine import attack_dataset
from ._common import check_xy, model_device, predict_logits


def _input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str,
                    batch_size: int) -> torch.Tensor:
    """Per-sample input gradient of the CE loss (``"loss"``) or of the class-``y`` logit (``"logit"``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(model, x.device)
    grads = []
    # attack_mode: eval mode and frozen parameters, so only the input gradient is computed and no .grad changes.
    with attack_mode(model):
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size].to(device).detach().requires_grad_(True)
            yb = y[i:i + batch_size].to(device)
            with torch.enable_grad():
                logits = model(xb)
                if logits.dim() != 2:
                    raise ValueError(f"the model must return logits of shape (N, classes), got {tuple(logits.shape)}")
                if int(yb.max()) >= logits.shape[1]:
                    raise ValueError(f"label {int(yb.max())} is out of range for a model with "
                                     f"{logits.shape[1]} outputs")
                if kind == "loss":
                    out = F.cross_entropy(logits, yb, reduction="sum")  # sum: each sample keeps its own gradient
                else:
                    out = logits.gather(1, yb[:, None]).sum()
                g = torch.autograd.grad(out, xb, allow_unused=True)[0] if out.requires_grad else None
            if g is None:  # the model cut the graph (hard threshold, rounding): the input gradient is zero
                g = torch.zeros_like(xb)
            grads.append(g.detach().to(x.device))
    return torch.cat(grads)


def saliency(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, kind: str = "loss", absolute: bool = True,
             batch_size: int = 500) -> torch.Tensor:
    """Input-gradient saliency maps, computed with parameter gradients frozen.

    Arguments:
        model: returns logits. x: inputs (N, ...). y: (N,) classes to explain (usually the labels).
        kind: ``"loss"`` for d CE(model(x), y) / dx, or ``"logit"`` for d logit_y / dx.
        absolute: return the magnitude |gradient| (the usual saliency map); False keeps the sign.
        batch_size: points per backward pass.
    Returns:
        A tensor shaped like ``x``. The model's mode, ``requires_grad`` flags and ``.grad`` are unchanged.
    """
    check_xy(x, y)
    if kind not in ("loss", "logit"):
        raise ValueError(f"kind must be 'loss' or 'logit', got {kind!r}")
    g = _input_gradient(model, x, y, kind, batch_size)
    return g.abs() if absolute else g


def alignment_scores(model: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor] = None, *,
                     target: str = "true", batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample Etmann alignment ``|<x, g>| / ||g||`` and cosine ``<x, g> / (||x|| ||g||)``.

    Arguments:
        model: returns logits. x: inputs (N, ...) in input units. y: labels (needed for ``target="true"``).
        target: ``"true"`` (logit of the label) or ``"predicted"`` (logit of the argmax, the paper's choice).
        batch_size: points per backward pass.
    Returns:
        ``(alignment, cosine)``, two float64 tensors of shape (N,); NaN where the gradient is exactly zero.
    """
    if target not in ("true", "predicted"):
        raise ValueError(f"target must be 'true' or 'predicted', got {target!r}")
    if target == "true" and y is None:
        raise ValueError("target='true' needs the labels y; pass y or use target='predicted'")
    check_xy(x, y)
    cls = y if target == "true" else predict_logits(model, x, batch_size).argmax(1).to(x.device)
    g = _input_gradient(model, x, cls, "logit", batch_size).flatten(1).double()
    xf = x.detach().flatten(1).double()
    inner = (g * xf).sum(dim=1)
    g_norm = g.norm(dim=1)
    nan = torch.full_like(inner, float("nan"))
    alignment = torch.where(g_norm > 0, inner.abs() / g_norm.clamp_min(1e-300), nan)
    cosine = torch.where((g_norm > 0) & (xf.norm(dim=1) > 0),
                         inner / (g_norm * xf.norm(dim=1)).clamp_min(1e-300), nan)
    return alignment, cosine


def gradient_alignment(model: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor] = None, *,
                       target: str = "true", batch_size: int = 500) -> dict[str, Any]:
    """Summary of the Etmann et al. (2019) gradient-image alignment over a set of inputs.

    Arguments:
        As :func:`alignment_scores`.
    Returns:
        ``{"alignment" (mean |<x, g>| / ||g||), "alignment_median", "cosine" (mean <x, g> / (||x|| ||g||)),
        "cosine_median", "target", "n", "n_zero_gradient"}``; points with a zero gradient are left out of the
        statistics and counted in ``n_zero_gradient``.
    """
    a, c = alignment_scores(model, x, y, target=target, batch_size=batch_size)
    ok = ~torch.isnan(a)
    okc = ~torch.isnan(c)

    def stat(t: torch.Tensor, fn) -> Optional[float]:
        return float(fn(t)) if t.numel() else None

    return {
        "alignment": stat(a[ok], torch.mean),
        "alignment_median": stat(a[ok], torch.median),
        "cosine": stat(c[okc], torch.mean),
        "cosine_median": stat(c[okc], torch.median),
        "target": target,
        "n": int(x.shape[0]),
        "n_zero_gradient": int((~ok).sum()),
    }


def adversarial_gallery(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, *, k: int = 8,
                        successful_only: bool = True, batch_size: int = 500) -> dict[str, Any]:
    """Up to ``k`` adversarial examples with the model's clean and adversarial predictions and confidences.

    Arguments:
        model: returns logits. x, x_adv: clean and adversarial inputs of the same shape. y: labels.
        k: how many examples to keep (the first ones, in input order).
        successful_only: keep only points that were correct on x and are wrong on x_adv; False keeps the
            first ``k`` points whatever happened.
        batch_size: points per forward pass.
    Returns:
        ``{"index", "y", "pred_clean", "conf_clean", "pred_adv", "conf_adv", "linf", "l2"}`` as lists (JSON-ready),
        ``"x"``, ``"x_adv"`` as tensors for plotting (shape (m, ...), m <= k), and ``"n"``, ``"n_successful"``
        (successful points among all of ``x``). Confidences are softmax probabilities of the predicted class.
    """
    check_xy(x, y)
    if not torch.is_tensor(x_adv) or x_adv.shape != x.shape:
        raise ValueError(f"x_adv must be a tensor shaped like x {tuple(x.shape)}, got "
                         f"{tuple(x_adv.shape) if torch.is_tensor(x_adv) else type(x_adv).__name__}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    p_clean = torch.softmax(predict_logits(model, x, batch_size).double(), dim=1).cpu()
    p_adv = torch.softmax(predict_logits(model, x_adv, batch_size).double(), dim=1).cpu()
    conf_c, pred_c = p_clean.max(dim=1)
    conf_a, pred_a = p_adv.max(dim=1)
    yc = y.cpu()
    success = (pred_c == yc) & (pred_a != yc)
    pool = success.nonzero().squeeze(1) if successful_only else torch.arange(x.shape[0])
    idx = pool[:k]
    delta = (x_adv.detach().cpu() - x.detach().cpu())[idx].flatten(1)
    return {
        "index": idx.tolist(),
        "y": yc[idx].tolist(),
        "pred_clean": pred_c[idx].tolist(),
        "conf_clean": conf_c[idx].tolist(),
        "pred_adv": pred_a[idx].tolist(),
        "conf_adv": conf_a[idx].tolist(),
        "linf": delta.abs().amax(dim=1).tolist() if idx.numel() else [],
        "l2": delta.norm(dim=1).tolist() if idx.numel() else [],
        "x": x.detach().cpu()[idx],
        "x_adv": x_adv.detach().cpu()[idx],
        "n": int(x.shape[0]),
        "n_successful": int(success.sum()),
    }


def interpretability_artifacts(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                               threat: Optional[ThreatModel] = None, *, x_adv: Optional[torch.Tensor] = None,
                               attack: str = "pgd", k: int = 8, seed: int = 0,
                               batch_size: int = 500) -> dict[str, Any]:
    """Everything the report's interpretability section draws, in the keys ``armor.app.report`` reads.

    Arguments:
        model: returns logits. x, y: inputs and labels (alignment uses all of them; maps and gallery the first).
        threat: attack budget for the gallery when ``x_adv`` is not given (no gallery when both are None);
            the attack then runs on the first max(64, 8k) points only.
        x_adv: precomputed adversarial inputs for the gallery. attack: registry name used with ``threat``.
        k: saliency maps and gallery examples to keep. seed: the attack's generator seed.
    Returns:
        ``{"alignment", "cosine_alignment", "x", "y", "saliency", "gallery_x", "gallery_x_adv",
        "gallery_pred_clean", "gallery_pred_adv", "gallery_conf_adv", "gallery_y"}``; the scalars are floats,
        images are CPU tensors.
    """
    check_xy(x, y)
    summary = gradient_alignment(model, x, y, batch_size=batch_size)
    out: dict[str, Any] = {
        "alignment": summary["alignment"],
        "cosine_alignment": summary["cosine"],
        "x": x[:k].detach().cpu(),
        "y": y[:k].cpu(),
        "saliency": saliency(model, x[:k], y[:k], batch_size=batch_size).cpu(),
    }
    xg, yg = x, y
    if x_adv is None and threat is not None:
        # The gallery shows the first k successes: attacking a pool of 8k points (at least 64) is plenty.
        pool = min(x.shape[0], max(64, 8 * k))
        xg, yg = x[:pool], y[:pool]
        x_adv = attack_dataset(model, get_attack(attack), xg, yg, threat, batch_size=batch_size, seed=seed,
                               name=attack).cpu()
    if x_adv is not None:
        gal = adversarial_gallery(model, xg, x_adv, yg, k=k, batch_size=batch_size)
        out.update({"gallery_x": gal["x"], "gallery_x_adv": gal["x_adv"], "gallery_pred_clean": gal["pred_clean"],
                    "gallery_pred_adv": gal["pred_adv"], "gallery_conf_adv": gal["conf_adv"],
                    "gallery_y": gal["y"]})
    return out
