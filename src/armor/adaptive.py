"""Adaptive escalation: when a masking flag fires, attack the model the way its masking asks for.

The masking checks (:mod:`armor.metrics.masking`) say *that* gradients mislead the attacks; this module goes on
to attack anyway, as Athalye et al. 2018 did ("Obfuscated gradients give a false sense of security"):

- **EOT** (expectation over transformation) for a model whose outputs are random: the attacks see
  :class:`Expectation`, whose output is the log of the model's softmax averaged over ``draws`` random draws, so
  every gradient attack follows the expected loss without being changed; the reported number is
  :class:`ExpectedCorrect`, each point's correctness averaged over draws at its adversarial input (not the
  minimum over a few single draws), re-measured with draws that took no part in choosing the input.
- **BPDA** (backward pass differentiable approximation) through the non-differentiable layers that
  :func:`find_nondifferentiable` finds (or the user names): the forward pass stays exact, the backward pass goes
  through the identity, or through a small smooth network fitted to the layer (:func:`fit_smooth`) when the layer
  changes the shape (a thermometer encoding).
- **Transfer** from a surrogate (:func:`train_surrogate`): a small model trained on the evaluation points and
  random points of their balls, labelled by the target's own predictions; attacks on it are judged on the
  target.

:func:`escalate` picks what the flags call for and runs it through :func:`armor.evaluate.evaluate`, starting from
the suite's per-point worst case, so the reported number is the worst case over the suite and the escalation, and
``per_attack`` says what each adaptive attack broke that the suite had missed. The random draws are seeded by the
content of the input and a salt, so an evaluation (and a resumed one) is identical from run to run. Nothing here
runs unless a flag fires.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import attack_mode, get_attack
from .engine import model_device, predict_logits
from .evaluate import EvalResult, _global_rng, evaluate
from .threat import ThreatModel

# The flags that call for each escalation (names of :mod:`armor.metrics.masking` checks).
RANDOM_FLAGS = ("randomized_outputs",)
GRADIENT_FLAGS = ("zero_gradients", "black_box_beats_white_box", "clean_start_beats_white_box",
                  "stronger_attack_weaker", "no_convergence_at_large_eps", "accuracy_not_decreasing_with_eps")
# more_iterations_help (the weak attack had not converged) and probability_outputs (remove the softmax) do not
# describe misleading gradients, and do not escalate.

ATTACKS = ("apgd-ce", "apgd-t")  # what each escalation runs: the suite's two gradient attacks
#: Escalations run on models a check flagged: there APGD-T spends its whole budget (its give-up rule reads a
#: point's progress from the gradients that such a model may hide). attack_kwargs override this.
FULL_BUDGET = {"apgd-t": {"give_up": None}}
SALT_ATTACK, SALT_SCORE, SALT_LABELS, SALT_PROBE = 1, 2, 3, 4  # keep the draws of each use apart


# --- seeded randomness ------------------------------------------------------------------------------------
@contextlib.contextmanager
def seeded(x: torch.Tensor, salt: int) -> Iterator[None]:
    """Run the block with torch's global random numbers seeded by the bytes of ``x`` and ``salt``, and restore
    the global generator afterwards. A randomized model then draws the same noise for the same input, in any
    order of calls (so a resumed evaluation repeats an uninterrupted one), and new noise for every new input."""
    digest = hashlib.blake2b(x.detach().cpu().contiguous().numpy().tobytes(), digest_size=8,
                             key=int(salt).to_bytes(8, "little", signed=True)).digest()
    with _global_rng(x.device, int.from_bytes(digest, "little") & ((1 << 63) - 1)):
        yield


class Expectation(nn.Module):
    """``log mean_k softmax(model(x))`` over ``draws`` random draws of a randomized ``model``: its argmax is the
    prediction averaged over draws, and the gradient of its cross-entropy is the EOT gradient of the expected
    probability of the label. Draws are :func:`seeded` by the input and ``seed``."""

    def __init__(self, model: nn.Module, draws: int, seed: int = 0):
        super().__init__()
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        self.model, self.draws, self.salt = model, int(draws), int(seed) * 16 + SALT_ATTACK

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with seeded(x, self.salt):
            logp = torch.stack([F.log_softmax(self.model(x), dim=1) for _ in range(self.draws)])
        return torch.logsumexp(logp, dim=0) - math.log(self.draws)


class ExpectedCorrect:
    """A score for :func:`armor.evaluate.evaluate`: per point, the share of ``draws`` random draws of ``model``
    that classify ``x`` correctly (the expected accuracy at that input, estimated with draws that the attacks
    never saw: another salt than :class:`Expectation`'s)."""

    def __init__(self, draws: int, seed: int = 0):
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        self.draws, self.salt = int(draws), int(seed) * 16 + SALT_SCORE

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        hits = torch.zeros(y.shape, dtype=torch.float64, device=y.device)
        with attack_mode(model), torch.no_grad(), seeded(x, self.salt):
            for _ in range(self.draws):
                hits += (model(x).argmax(1) == y).double()
        return hits / self.draws

    def __repr__(self) -> str:
        return f"ExpectedCorrect(draws={self.draws}, salt={self.salt})"


# --- BPDA -------------------------------------------------------------------------------------------------
@dataclass
class Layer:
    """A layer found (or named) for BPDA: its module name, why, and the backward it gets (``approx`` None: the
    identity)."""

    name: str
    reason: str
    approx: Optional[nn.Module] = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        backward = ("identity" if self.approx is None else "Gaussian smoothing, tabulated per pixel"
                    if isinstance(self.approx, _Tabulated) else "fitted smooth approximation")
        return {"module": self.name, "reason": self.reason, "backward": backward}


def _capture(model: nn.Module, x: torch.Tensor, salt: int) -> dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """The input and output of every submodule with one tensor in and one tensor out, on inputs ``x``."""
    seen: dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]] = {}
    handles = []
    for name, m in model.named_modules():
        if m is model:
            continue

        def hook(mod: nn.Module, inp: Any, out: Any, name: str = name) -> None:
            if (name not in seen and isinstance(inp, tuple) and len(inp) == 1 and isinstance(inp[0], torch.Tensor)
                    and isinstance(out, torch.Tensor) and inp[0].is_floating_point() and out.is_floating_point()):
                seen[name] = (mod, inp[0].detach(), out.detach())
        handles.append(m.register_forward_hook(hook))
    try:
        with attack_mode(model), torch.no_grad(), seeded(x, salt):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def find_nondifferentiable(model: nn.Module, x: torch.Tensor, threat: ThreatModel, *, n: int = 16, seed: int = 0,
                           rel_step: float = 1e-2, tol: float = 0.5, share: float = 0.5) -> list[Layer]:
    """The submodules of ``model`` whose autograd input-gradient is wrong: zero, absent, or in disagreement with a
    finite difference, on most of ``n`` random points of the threat's balls around ``x``.

    Per module and point: a random sign direction ``v`` and cotangent ``u``, autograd's ``<J^T u, v>`` against
    the central difference ``<(f(a + h v) - f(a - h v)) / 2h, u>`` with ``h = rel_step * max|a|`` (the three
    calls draw the same random numbers, so a randomized layer is differentiated, not its noise). A module
    disagrees on a point when the two differ by more than ``tol`` times the larger; it is found when it disagrees
    on at least ``share`` of the points. Rounding and thresholds give autograd 0 and a large difference; smooth
    and piecewise-linear layers agree. Of nested modules that are found, only the innermost are kept.
    """
    g = torch.Generator(device=x.device).manual_seed(int(seed) * 16 + SALT_PROBE)
    probe = threat.random_init(x[:n].to(model_device(model, x.device)), generator=g)
    found = []
    for name, (mod, a, out) in _capture(model, probe, seed * 16 + SALT_PROBE).items():
        v = torch.randint(0, 2, a.shape, generator=torch.Generator(device=a.device).manual_seed(1), device=a.device)
        v = (v * 2 - 1).to(a.dtype)
        u = torch.randn(out.shape, generator=torch.Generator(device=a.device).manual_seed(2), device=a.device,
                        dtype=out.dtype)
        h = rel_step * max(float(a.abs().max()), 1e-6)
        try:
            with attack_mode(mod):
                ai = a.clone().requires_grad_(True)
                with torch.enable_grad(), seeded(a, 0):
                    o = mod(ai)
                    grad = (torch.autograd.grad((o * u).sum(), ai, allow_unused=True)[0]
                            if o.requires_grad else None)
                auto = (grad * v).flatten(1).sum(1) if grad is not None else torch.zeros(a.shape[0], device=a.device)
                with torch.no_grad():
                    with seeded(a, 0):
                        hi = mod(a + h * v)
                    with seeded(a, 0):
                        lo = mod(a - h * v)
                fd = ((hi - lo) / (2 * h) * u).flatten(1).sum(1)
        except (RuntimeError, ValueError, TypeError):  # a module that cannot run alone on its captured input
            continue
        scale = torch.maximum(auto.abs(), fd.abs())
        disagree = (auto - fd).abs() > tol * scale + 1e-9
        if float(disagree.double().mean()) >= share:
            zero = grad is None or bool((auto.abs() <= 1e-6 * scale.clamp_min(1e-12)).all())
            found.append((name, mod, "autograd input-gradient is zero or absent where a finite difference is not"
                          if zero else "autograd input-gradient disagrees with a finite difference"))
    names = [f[0] for f in found]
    innermost = [f for f in found if not any(o != f[0] and o.startswith(f[0] + ".") for o in names)]
    return [Layer(name, why) for name, _, why in innermost]


class _Pointwise(nn.Module):
    """``net`` applied to the channel vector of every pixel (a 1x1 convolution, run as a matrix product)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.movedim(1, -1)).movedim(-1, 1)


class _Tabulated(nn.Module):
    """A per-pixel layer of one input channel as a table: its values on a fine grid, linearly interpolated."""

    def __init__(self, lo: float, step: float, table: torch.Tensor):
        super().__init__()
        self.lo, self.step = lo, step
        self.register_buffer("table", table)  # (grid points, channels out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = ((x[:, 0] - self.lo) / self.step).clamp(0, self.table.shape[0] - 1.001)
        i = pos.detach().floor().long()
        w = (pos - i)[..., None]
        return (self.table[i] * (1 - w) + self.table[i + 1] * w).movedim(-1, 1)


def _is_per_pixel(module: nn.Module, a: torch.Tensor, g: torch.Generator) -> bool:
    """Whether changing one pixel of ``a`` changes ``module``'s output at that pixel only (four probes)."""
    n, _, h, w = a.shape
    with attack_mode(module), torch.no_grad(), seeded(a, SALT_PROBE):
        base = module(a[:1])
    for _ in range(4):
        i, j = (int(torch.randint(0, h, (1,), generator=g, device=a.device)),
                int(torch.randint(0, w, (1,), generator=g, device=a.device)))
        b = a[:1].clone()
        b[..., i, j] += 0.25 * float(a.max() - a.min()) + 1e-3
        with attack_mode(module), torch.no_grad(), seeded(a, SALT_PROBE):
            changed = (module(b) != base).any(1)[0]
        changed[i, j] = False
        if bool(changed.any()):
            return False
    return True


def _tabulate(module: nn.Module, a: torch.Tensor, s: float, points: int = 4097) -> _Tabulated:
    """The exact Gaussian smoothing (std ``s``) of a per-pixel, one-channel layer, on a grid over the inputs'
    range and 4 s beyond: the layer evaluated on the grid, then convolved with the Gaussian kernel."""
    lo, hi = float(a.min()) - 4 * s, float(a.max()) + 4 * s
    step = (hi - lo) / (points - 1)
    grid = torch.linspace(lo, hi, points, dtype=a.dtype, device=a.device)
    h, w = a.shape[2:]
    per = h * w
    padded = torch.cat([grid, grid[-1].expand((-per - points) % per)]).view(-1, 1, h, w)
    with attack_mode(module), torch.no_grad(), seeded(padded, SALT_PROBE):
        out = module(padded).movedim(1, -1).reshape(-1, module(padded[:1]).shape[1])[:points]  # (points, C)
    half = int(math.ceil(4 * s / step))
    k = torch.exp(-0.5 * (torch.arange(-half, half + 1, dtype=a.dtype, device=a.device) * step / s) ** 2)
    k = (k / k.sum()).view(1, 1, -1)
    col = F.pad(out.T[:, None], (half, half), mode="replicate")  # (C, 1, points + 2 half)
    return _Tabulated(lo, step, F.conv1d(col, k)[:, 0].T.contiguous())


def fit_smooth(module: nn.Module, inputs: torch.Tensor, *, steps: int = 400, hidden: int = 128, seed: int = 0,
               lr: float = 1e-2, sigma: float = 0.03, noise_draws: int = 16, rows: int = 4096) -> nn.Module:
    """A small smooth network fitted (mean squared error) to the Gaussian smoothing of ``module`` around
    ``inputs``, ``E f(a + s z)`` with ``s = sigma`` times the inputs' range: a BPDA backward for a layer that
    changes the shape. The smoothing turns steps into ramps (a thermometer's thresholds into Gaussian CDFs), so
    the fitted backward points across a threshold before the input reaches it.

    A per-pixel layer of one input channel (a thermometer encoding; checked by changing single pixels) needs
    no fit: its smoothing is computed exactly on a fine grid and interpolated. Other images that keep their
    height and width get a per-pixel network fitted on
    ``rows`` pixels of ``inputs`` and as many drawn uniformly over their range and 3 s beyond (so every
    threshold is seen, and the edges of the range, where data piles up, get no spurious slopes);
    anything else a one-hidden-layer MLP on the flattened input, fitted on ``inputs``."""
    s = sigma * max(float(inputs.max() - inputs.min()), 1e-6)
    g = torch.Generator(device=inputs.device).manual_seed(int(seed) * 16 + SALT_PROBE + 2)

    def noise(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=g, device=t.device, dtype=t.dtype)

    with attack_mode(module), torch.no_grad():
        out_shape = module(inputs[:1]).shape
    pointwise = inputs.dim() == 4 and len(out_shape) == 4 and tuple(inputs.shape[2:]) == tuple(out_shape[2:])
    if pointwise and inputs.shape[1] == 1 and _is_per_pixel(module, inputs, g):
        return _tabulate(module, inputs, s).eval()  # exact smoothing: nothing to fit
    if pointwise:  # fit on pixels: (rows, channels) -> (rows, channels out), seen by the module as 1x1 images
        px = inputs.movedim(1, -1).reshape(-1, inputs.shape[1])
        px = px[torch.randperm(px.shape[0], generator=g, device=px.device)[:rows]]
        lo, hi = px.min(0).values - 3 * s, px.max(0).values + 3 * s  # the edges of the range inside, not at a border
        spread = lo + (hi - lo) * torch.rand((rows, px.shape[1]), generator=g, device=px.device, dtype=px.dtype)
        data = torch.cat([px, spread])[:, :, None, None]
    else:
        data = inputs
    with attack_mode(module), torch.no_grad(), seeded(data, SALT_PROBE):
        target = sum(module(data + s * noise(data)) for _ in range(noise_draws)) / noise_draws
    with _global_rng(data.device, seed):
        if pointwise:
            data, target = data.flatten(1), target.flatten(1)
            net: nn.Module = nn.Sequential(nn.Linear(data.shape[1], hidden), nn.Tanh(),
                                           nn.Linear(hidden, target.shape[1]))
        else:
            d_in, d_out = data[0].numel(), target[0].numel()
            if d_in * hidden + hidden * d_out > 50_000_000:
                raise ValueError(f"cannot fit a smooth approximation of a layer from {d_in} to {d_out} values; name "
                                 "a smaller non-differentiable layer, or use the identity where shapes match")
            net = nn.Sequential(nn.Flatten(), nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out),
                                nn.Unflatten(1, tuple(target.shape[1:])))
        net = net.to(data.device, data.dtype)
        with torch.no_grad():  # hidden units as ramps of width ~s centred on data points: steps are in reach
            first = net[1] if not pointwise else net[0]
            flat = data.flatten(1)
            first.weight.normal_(generator=g).div_(s * math.sqrt(flat.shape[1]))
            centres = flat[torch.randint(0, flat.shape[0], (hidden,), generator=g, device=flat.device)]
            first.bias.copy_(-(first.weight * centres).sum(1))
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            F.mse_loss(net(data), target).backward()
            opt.step()
            sched.step()
    net = _Pointwise(net) if pointwise else net
    return net.eval().requires_grad_(False)


@contextlib.contextmanager
def straight_through(model: nn.Module, layers: Sequence[Layer]) -> Iterator[nn.Module]:
    """``model`` with each of ``layers`` exact forward and approximate backward: the output ``f(a)`` becomes
    ``s(a) + (f(a) - s(a)).detach()``, where ``s`` is the identity or the layer's fitted approximation."""
    handles = []
    for layer in layers:
        mod = model.get_submodule(layer.name)

        def hook(m: nn.Module, inp: Any, out: torch.Tensor, approx: Optional[nn.Module] = layer.approx) -> Any:
            s = inp[0] if approx is None else approx(inp[0])
            return s + (out - s).detach()
        handles.append(mod.register_forward_hook(hook))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def prepare_layers(model: nn.Module, x: torch.Tensor, threat: ThreatModel, names: Sequence[str], reason: str,
                   *, seed: int = 0) -> list[Layer]:
    """:class:`Layer` objects for the modules ``names`` (user-named or found): the identity where the layer keeps
    the shape, else a :func:`fit_smooth` approximation fitted on its inputs at ``x`` and random points of their
    balls."""
    known = dict(model.named_modules())
    missing = [nm for nm in names if nm not in known or known[nm] is model]
    if missing:
        raise ValueError(f"no submodule named {', '.join(map(repr, missing))} in the model: name one of "
                         f"{', '.join(repr(k) for k in list(known)[1:12])}{' ...' if len(known) > 12 else ''}")
    g = torch.Generator(device=x.device).manual_seed(int(seed) * 16 + SALT_PROBE + 1)
    points = torch.cat([x] + [threat.random_init(x, generator=g) for _ in range(3)])
    seen = _capture(model, points, seed * 16 + SALT_PROBE)
    out = []
    for nm in names:
        if nm not in seen:
            raise ValueError(f"module {nm!r} does not take one tensor and return one: BPDA cannot replace its "
                             "backward; name the layer inside it that does")
        _, a, o = seen[nm]
        out.append(Layer(nm, reason, None if a.shape == o.shape else fit_smooth(known[nm], a, seed=seed)))
    return out


# --- transfer ---------------------------------------------------------------------------------------------
def train_surrogate(model: nn.Module, x: torch.Tensor, threat: ThreatModel, *, labels: Optional[torch.Tensor] = None,
                    copies: int = 4, epochs: int = 30, batch_size: int = 128, seed: int = 0,
                    label_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> nn.Module:
    """A small smooth model of ``model`` for transfer attacks: armor's small CNN for images, its MLP otherwise,
    trained (Adam, ``epochs``) on ``x`` and ``copies`` random points of each point's ball, labelled by the
    target's predictions there (``label_fn``, default the argmax of ``model``), so that it learns the target's
    decisions where the attacks look. Deterministic for a given seed."""
    from .models import MLP, SmallCNN

    g = torch.Generator(device=x.device).manual_seed(int(seed) * 16 + SALT_LABELS)
    pts = torch.cat([x] + [threat.random_init(x, generator=g) for _ in range(copies)])
    if label_fn is None:
        def label_fn(p: torch.Tensor) -> torch.Tensor:
            return predict_logits(model, p).argmax(1)
    with torch.no_grad():
        lab = torch.cat([label_fn(pts[i:i + 500]) for i in range(0, pts.shape[0], 500)]).to(pts.device)
    if labels is not None:  # the true labels of the clean points, where given
        lab[:x.shape[0]] = labels.to(lab.device)
    classes = int(predict_logits(model, x[:1]).shape[1])
    shape = tuple(x.shape[1:])
    with _global_rng(pts.device, seed):
        surrogate = (SmallCNN(shape, classes) if len(shape) == 3 and min(shape[1:]) >= 4 else MLP(shape, classes))
        surrogate = surrogate.to(pts.device)
        opt = torch.optim.Adam(surrogate.parameters(), lr=1e-3)
        order = torch.Generator().manual_seed(seed)
        surrogate.train()
        for _ in range(epochs):
            perm = torch.randperm(pts.shape[0], generator=order).to(pts.device)
            for i in range(0, pts.shape[0], batch_size):
                b = perm[i:i + batch_size]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(surrogate(pts[b]), lab[b]).backward()
                opt.step()
    return surrogate.eval()


# --- the adaptive attacks ---------------------------------------------------------------------------------
class AdaptiveAttack:
    """``attack`` (a registered name) run on a stand-in for the model, judged on the model by the evaluator:
    through BPDA ``layers``, over ``draws`` random draws (EOT), or on a ``surrogate`` (transfer)."""

    def __init__(self, attack: str, *, layers: Sequence[Layer] = (), draws: int = 0, seed: int = 0,
                 surrogate: Optional[nn.Module] = None, **kwargs: Any):
        self.name, self.fn = attack, get_attack(attack, **kwargs)
        self.layers, self.draws, self.seed, self.surrogate = list(layers), int(draws), int(seed), surrogate

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        target = self.surrogate if self.surrogate is not None else model
        with straight_through(target, self.layers) if self.layers else contextlib.nullcontext():
            seen = Expectation(target, self.draws, self.seed) if self.draws and self.surrogate is None else target
            return self.fn(seen, x, y, threat, generator=generator)


def _digest(*modules: Optional[nn.Module]) -> str:
    h = hashlib.sha256()
    for m in modules:
        if m is not None:
            for t in m.state_dict().values():
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# --- escalation -------------------------------------------------------------------------------------------
@dataclass
class Escalation:
    """What :func:`escalate` did and found. ``to_dict()`` is the JSON form (results.json's ``adaptive``)."""

    triggered_by: list[str]
    suite_robust_accuracy: float  # the suite's number before (single draws, for a randomized model)
    # the worst case over the suite and the escalation; for a randomized model the expected accuracy at each
    # point's worst input, re-measured with draws that took no part in choosing it (``result`` keeps the
    # selection's own estimate, ``per_attack`` its cumulative figures)
    robust_accuracy: float
    clean_accuracy: float  # expected over draws, for a randomized model
    escalations: list[str]  # "eot", "bpda", "transfer"
    layers: list[dict[str, Any]]
    draws: Optional[dict[str, int]]
    per_attack: dict[str, dict[str, Any]]
    broken_points: dict[str, list[int]]
    seconds: float
    result: Optional[EvalResult] = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "result"}

    def summary(self) -> str:
        """One line per adaptive attack: what it broke that the suite had missed."""
        lines = [f"adaptive escalation ({', '.join(self.escalations)}; flags: {', '.join(self.triggered_by)}): "
                 f"robust accuracy {self.suite_robust_accuracy:.4f} -> {self.robust_accuracy:.4f}"]
        for name, rec in self.per_attack.items():
            broke = rec.get("broke") or 0
            lines.append(f"  {name}: broke {broke:g} point(s) the suite missed, "
                         f"cumulative {rec['cumulative_accuracy']:.4f} ({rec['seconds']:.1f} s)")
        return "\n".join(lines)


def triggers(flags: Sequence[Union[str, dict[str, Any]]]) -> list[str]:
    """The flags (names, or masking_checks' flag dicts) that call for an escalation."""
    names = [f["name"] if isinstance(f, dict) else str(f) for f in flags]
    return [nm for nm in names if nm in RANDOM_FLAGS or nm in GRADIENT_FLAGS]


def escalate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             flags: Sequence[Union[str, dict[str, Any]]], *, base: Optional[EvalResult] = None,
             modules: Sequence[str] = (), attacks: Sequence[str] = ATTACKS, draws: int = 16, score_draws: int = 128,
             surrogate_epochs: int = 30, transfer: bool = True, seed: int = 0, batch_size: int = 500,
             state_path: Any = None, attack_kwargs: Optional[dict[str, dict[str, Any]]] = None,
             progress: Optional[Callable[[str, int, int], None]] = None) -> Optional[Escalation]:
    """Escalate an evaluation whose masking checks raised ``flags``; ``None`` (at no cost) when none calls for it.

    Arguments:
        x, y: the evaluated points (those of ``base``). flags: names of masking checks that failed (or the
            ``flags`` list of :func:`armor.metrics.masking_checks`).
        base: the suite's result on the same points (with ``keep_adv`` for a randomized model, so its
            adversarial inputs count at their expected accuracy); the escalation attacks only what it left.
        modules: names of non-differentiable submodules for BPDA, in addition to those
            :func:`find_nondifferentiable` finds.
        attacks: the registered attacks each escalation runs. draws: random draws per EOT forward pass;
            score_draws: draws per point for the expected accuracy, once to choose each point's worst input and
            once more, fresh, to measure it there (the reported number). surrogate_epochs: training of the transfer
            surrogate; transfer: whether to run it.
        seed, batch_size, state_path, progress: as for :func:`armor.evaluate.evaluate` (a resumed escalation is
            identical). attack_kwargs: overrides per attack name, e.g. ``{"apgd-t": {"steps": 50}}``.
    Returns:
        :class:`Escalation`: the worst case over the suite and the escalation, with ``per_attack`` records
        (``broke``: points, or expected correctness, that attack took beyond everything before it) and
        ``broken_points`` (which attack broke which points).
    """
    fired = triggers(flags)
    if not fired and not modules:
        return None
    t0 = time.perf_counter()
    device = model_device(model, x.device)
    x, y = x.to(device), y.to(device)
    kw = {a: {**FULL_BUDGET.get(a, {}), **(attack_kwargs or {}).get(a, {})} for a in attacks}
    randomized = any(f in RANDOM_FLAGS for f in fired)
    gradient = any(f in GRADIENT_FLAGS for f in fired)
    found = find_nondifferentiable(model, x, threat, seed=seed) if fired else []
    names = list(dict.fromkeys([*modules, *(f.name for f in found)]))
    reasons = {f.name: f.reason for f in found}
    layers = [lay for nm in names for lay in prepare_layers(model, x[:64], threat, [nm],
                                                          reasons.get(nm, "named by the user"), seed=seed)]
    score = ExpectedCorrect(score_draws, seed) if randomized else None
    plan: dict[str, AdaptiveAttack] = {}
    prefix = "-".join((["eot"] if randomized else []) + (["bpda"] if layers else []))
    if prefix:
        for a in attacks:
            plan[f"{prefix}-{a}"] = AdaptiveAttack(a, layers=layers, draws=draws if randomized else 0, seed=seed,
                                                   **kw.get(a, {}))
    surrogate = None
    if transfer and (gradient or randomized):
        label_fn = None
        if randomized:
            eot = Expectation(model, draws, seed)

            def label_fn(p: torch.Tensor) -> torch.Tensor:
                return predict_logits(eot, p).argmax(1)
        surrogate = train_surrogate(model, x, threat, labels=y, epochs=surrogate_epochs, seed=seed,
                                    label_fn=label_fn)
        for a in attacks:
            plan[f"transfer-{a}"] = AdaptiveAttack(a, surrogate=surrogate, seed=seed, **kw.get(a, {}))
    start = None
    if base is not None:
        if randomized:  # the suite's single-draw successes, at their expected accuracy
            if base.x_adv is not None:
                start = torch.cat([score(model, base.x_adv[i:i + batch_size].to(device), y[i:i + batch_size])
                                   for i in range(0, x.shape[0], batch_size)])
        else:
            start = base.robust.to(device)
    suite_acc = base.robust_accuracy if base is not None else float("nan")
    if not plan:
        return Escalation(fired, suite_acc, suite_acc, base.clean_accuracy if base is not None else float("nan"),
                          [], [lay.to_dict() for lay in layers], None, {}, {}, round(time.perf_counter() - t0, 3))
    key = repr([sorted(plan), draws if randomized else 0, repr(score), names, kw,
                _digest(surrogate, *(lay.approx for lay in layers))])
    result = evaluate(model, (x, y), threat, suite=list(plan), attacks=plan, score=score, start=start, key=key,
                      seed=seed, batch_size=batch_size, state_path=state_path, progress=progress, keep_adv=True)
    escalations = (["eot"] if randomized else []) + (["bpda"] if layers else []) + (["transfer"] if surrogate else [])
    robust = result.robust_accuracy
    if randomized:  # each point's worst input was picked with the score's draws: re-measure it with fresh ones
        robust = float(_fresh_expectation(model, x, y, result, base, start, score_draws, seed, batch_size).mean())
    return Escalation(
        triggered_by=fired, suite_robust_accuracy=suite_acc, robust_accuracy=robust,
        clean_accuracy=result.clean_accuracy, escalations=escalations, layers=[lay.to_dict() for lay in layers],
        draws={"eot": draws, "score": score_draws} if randomized else None, per_attack=result.per_attack,
        broken_points={k: v for k, v in result.broken_points().items() if v}, seconds=round(time.perf_counter() - t0, 3),
        result=result)


def _fresh_expectation(model: nn.Module, x: torch.Tensor, y: torch.Tensor, result: EvalResult,
                       base: Optional[EvalResult], start: Optional[torch.Tensor], draws: int, seed: int,
                       batch_size: int) -> torch.Tensor:
    """Per point, the expected accuracy at its chosen worst input (the escalation's, else the suite's where that
    was lower than the clean input, else the clean input), over ``draws`` draws that chose nothing: the minimum
    over attacks of estimates made with the same draws would be biased low."""
    device = x.device

    def expected(score: ExpectedCorrect, inputs: torch.Tensor) -> torch.Tensor:
        return torch.cat([score(model, inputs[i:i + batch_size], y[i:i + batch_size])
                          for i in range(0, x.shape[0], batch_size)])

    chosen = result.x_adv.to(device).clone()
    if start is not None and base is not None and base.x_adv is not None:
        clean = expected(ExpectedCorrect(draws, seed), x)
        from_suite = (result.broken_by.to(device) < 0) & (start.to(clean.dtype) < clean)
        chosen[from_suite] = base.x_adv.to(device)[from_suite]
    # another salt: draws independent of the selection's
    return expected(ExpectedCorrect(draws, seed + 7919), chosen)


__all__ = ["ATTACKS", "AdaptiveAttack", "Escalation", "ExpectedCorrect", "Expectation", "GRADIENT_FLAGS", "Layer",
           "RANDOM_FLAGS", "escalate", "find_nondifferentiable", "fit_smooth", "prepare_layers", "seeded",
           "straight_through", "train_surrogate", "triggers"]
