"""How `armor train --domain recsys` and `armor evaluate RUN` work for recommenders (the domain's Workflow).

A recsys run directory is written by :func:`armor.domains.recsys.train.train_recommender` (metadata.json with
``"domain": "recsys"``); its results.json entry reports ranking metrics of the held-out items:

    hr@K, ndcg@K                      clean, K = 5, 10, 20 (full ranking, leave-one-out)
    robust_hr@K, robust_ndcg@K        the worst case: the suite's strongest attack at the threat's eps, per metric
    per_attack                        {attack: {hr@K, ndcg@K, seconds, delta_norm}}
    oracle                            pgd-rank (an attacker who knows the held-out items), outside the worst case
    curve                             [{eps, hr@K, ndcg@K (worst case)}] along an eps grid
    promotion                         target items' rank before/after moving their embedding within the budget
    threat                            {norm: l2, eps, eps_unit, unit, target}: one value, absolute or relative
    n                                 users; train_seconds, cost (epochs, passes), embedding_norms
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional

from ...plugins import Option, Workflow

OPTIONS = {
    "interactions": Option(str, None, "recsys: the interactions: ml-100k (MovieLens-100k, read from the recbole "
                                      "package) or a u.data / ratings.csv / ratings.dat / RecBole .inter file or "
                                      "directory (default ml-100k)."),
    "recommender": Option(str, None, "recsys: mf (matrix factorisation, default) or lightgcn."),
    "eps_unit": Option(str, None, "recsys: what --eps means: absolute (embedding units, APR's; default) or "
                                  "relative (a share of each embedding's L2 norm)."),
    "adv_weight": Option(float, None, "recsys apr: weight of the adversarial BPR loss (APR's lambda, default 1)."),
    "adv_start": Option(int, None, "recsys apr: the epoch the adversarial term starts at (default: half the "
                                   "epochs: BPR pre-training first, as APR)."),
    "embedding_dim": Option(int, None, "recsys: embedding size (default 64)."),
}
# The classifier options of `armor train` recsys also takes (Workflow.shared), meaning the same thing.
SHARED = ("epochs", "batch_size", "lr", "dataset", "model")
GATES = {"hr": "hr@10", "robust-hr": "robust_hr@10", "ndcg": "ndcg@10", "robust-ndcg": "robust_ndcg@10"}


def train(options: dict[str, Any], out: Path, *, quiet: bool = True) -> Any:
    """`armor train --domain recsys [--recipe bpr|apr] [--eps 0.5 --eps-unit absolute] ...`; with ``--resume RUN``
    the run's own settings are the defaults (options given again must agree with them)."""
    from .train import DEFAULTS, read_metadata, train_recommender

    norm = options.get("norm")
    if norm not in (None, "l2"):
        raise ValueError(f"recsys perturbs embeddings within L2 balls (APR's threat); --norm {norm} does not apply")
    for key in ("steps", "step_size", "adv_ratio"):
        if options.get(key) is not None:
            raise ValueError(f"--{key.replace('_', '-')} does not apply to --domain recsys (its recipes: bpr, apr "
                             f"with --adv-weight and --adv-start)")
    saved: dict[str, Any] = {}
    if options.get("resume") and (Path(out) / "metadata.json").exists():
        cfg = read_metadata(out)["config"]
        saved = {"interactions": cfg["data"]["source"], "recommender": cfg["model"], "recipe": cfg["recipe"],
                 "eps": cfg["threat"]["eps"], "eps_unit": cfg["threat"]["unit"], "seed": cfg["seed"],
                 "epochs": cfg["epochs"], "batch_size": cfg["batch_size"], "lr": cfg["lr"], "embedding_dim": cfg["dim"],
                 "adv_weight": cfg["adv_weight"], "adv_start": cfg["adv_start"], "reg": cfg["reg"],
                 "layers": cfg["layers"], "split_seed": cfg["split_seed"],
                 "data_options": {k: v for k, v in cfg["data"].items() if k != "source"} or None}
    opts = {**saved, **{k: v for k, v in options.items() if v is not None}}
    recipe = opts.get("recipe") or "bpr"
    kwargs: dict[str, Any] = {}
    for key, name in (("epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr"), ("embedding_dim", "dim"),
                      ("adv_weight", "adv_weight"), ("adv_start", "adv_start"), ("reg", "reg"), ("layers", "layers"),
                      ("split_seed", "split_seed"), ("data_options", "data_options")):
        if opts.get(key) is not None:
            kwargs[name] = opts[key]
    if recipe != "apr":
        for key in ("adv_weight", "adv_start"):
            if key in kwargs:
                raise ValueError(f"--{key.replace('_', '-')} applies to recipe apr only")
    return train_recommender(opts.get("interactions") or opts.get("dataset") or "ml-100k",
                             model=opts.get("recommender") or opts.get("model") or "mf", recipe=recipe, out_dir=out,
                             eps=opts.get("eps", DEFAULTS["eps"]), eps_unit=opts.get("eps_unit") or DEFAULTS["eps_unit"],
                             seed=opts.get("seed") or 0, resume=bool(options.get("resume")), quiet=quiet, **kwargs)


def evaluate(run_dir: Path, options: dict[str, Any], *,
             progress: Optional[Callable[[str], None]] = None) -> tuple[dict, dict]:
    """`armor evaluate RUN` for a recsys run: HR/NDCG@5,10,20 clean, under each attack of the suite and in the
    worst case (the strongest attack), the oracle attack, a curve over eps and the promotion of 3 target items; options:
    eps (in the run's unit), seed, suite (attack names), eps_grid, curve."""
    from .attacks import ATTACKS, DEFAULT_SUITE, ORACLE
    from .evaluate import evaluate_run
    from .threat import EmbeddingThreat
    from .train import load_recommender

    if options.get("norm") not in (None, "l2"):
        raise ValueError(f"recsys threats are L2 balls around each embedding; --norm {options['norm']} does not apply")
    if options.get("n") is not None:
        raise ValueError("recsys evaluates every user's held-out item: --n does not apply")
    run = load_recommender(run_dir)
    recorded = EmbeddingThreat.from_dict(run.metadata["threat"])
    eps = options.get("eps")
    threat = recorded if eps is None else recorded.with_eps(float(eps))
    suite = options.get("suite")
    attacks = tuple(a.strip() for a in suite.split(",") if a.strip()) if isinstance(suite, str) else DEFAULT_SUITE
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown recsys attack(s) {', '.join(unknown)}: choose from {', '.join(ATTACKS)}")
    oracle = tuple(a for a in ORACLE if a not in attacks)
    grid = options.get("eps_grid")
    if grid is None and options.get("curve", True) and threat.eps > 0:
        grid = [0.0, threat.eps / 2, threat.eps, 2 * threat.eps]
    entry = evaluate_run(run, threat, attacks=attacks, seed=options.get("seed") or 0,
                         eps_grid=grid if options.get("curve", True) else None, oracle=oracle, progress=progress)
    return entry, {}


def validate(name: str, entry: dict, where: str) -> None:
    """A damaged recsys entry is a ValueError naming the key."""
    at = f"{where}: model {name!r}"
    for key in ("hr@10", "ndcg@10", "robust_hr@10", "robust_ndcg@10"):
        v = entry.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not 0 <= v <= 1:
            raise ValueError(f"{at}: {key} must be a number in [0, 1], got {v!r}; re-run `armor evaluate`")
    if not isinstance(entry.get("n"), int) or isinstance(entry.get("n"), bool) or entry["n"] < 1:
        raise ValueError(f"{at}: n (users) must be a positive integer, got {entry.get('n')!r}")
    if not isinstance(entry.get("per_attack"), dict):
        raise ValueError(f"{at}: per_attack must map attack names to their metrics")
    spec = entry.get("threat")
    if not isinstance(spec, dict) or spec.get("norm") != "l2" or not isinstance(spec.get("eps"), (int, float)) \
            or isinstance(spec.get("eps"), bool) or spec.get("unit") not in ("absolute", "relative"):
        raise ValueError(f"{at}: threat must be an object with norm l2, eps and unit absolute|relative, got "
                         f"{spec!r:.80}")


def summary(models: dict) -> tuple[str, list[str], list[list[str]]]:
    """The table `armor evaluate` and `armor demo` print: HR@10 / NDCG@10 clean, per attack, worst case; a demo's
    entries (with ``seed_summary``) as medians over the training seeds with their range."""
    from ...app.results import threat_label

    first = next(iter(models.values()))
    head = f"recsys on {first.get('dataset')}, {threat_label(first)}, {first.get('n')} users"
    if all(isinstance(m.get("seed_summary"), dict) for m in models.values()):
        def spread(s: dict) -> str:
            return f"{s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}]"

        rows = [[name, f"{m.get('model')} {m.get('recipe')}", str(m["seed_summary"]["n"]),
                 *[spread(m["seed_summary"][k]) for k in ("hr@10", "ndcg@10", "robust_hr@10", "robust_ndcg@10")],
                 f"{m['seed_summary']['train_seconds']['median']:.1f}"] for name, m in models.items()]
        return (f"{head}: median [min, max] over training seeds", ["model", "recipe", "seeds", "HR@10", "NDCG@10",
                "worst HR@10", "worst NDCG@10", "train s"], rows)
    attacks: list[str] = []
    oracle: list[str] = []
    for m in models.values():
        attacks += [a for a in m.get("per_attack") or {} if a not in attacks]
        oracle += [a for a in m.get("oracle") or {} if a not in oracle]

    def cell(d: Optional[dict]) -> str:
        return "-" if not d else f"{d['hr@10']:.3f} / {d['ndcg@10']:.3f}"

    rows = [[name, f"{m.get('model')} {m.get('recipe')}", cell(m), *[cell((m.get("per_attack") or {}).get(a)) for a in attacks],
             cell({"hr@10": m["robust_hr@10"], "ndcg@10": m["robust_ndcg@10"]}),
             *[cell((m.get("oracle") or {}).get(a)) for a in oracle], f"{m.get('train_seconds') or 0:.1f}"]
            for name, m in models.items()]
    return (f"{head} (HR@10 / NDCG@10 of the held-out items, full ranking)",
            ["model", "recipe", "clean", *attacks, "worst case", *[f"{a} (oracle)" for a in oracle], "train s"], rows)


WORKFLOW = Workflow(train=train, evaluate=evaluate, options=OPTIONS, validate=validate, gates=GATES, shared=SHARED,
                    summary=summary)
