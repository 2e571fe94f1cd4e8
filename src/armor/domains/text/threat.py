"""The text threat model: what an attacker may change in a sentence, held fixed across every recipe.

A :class:`TextThreat` is one frozen value, saved in the run's metadata and in every results.json entry:

``max_change``      the share of a sentence's words (alphanumeric tokens) that may change, at least one word:
                    ``max(1, floor(max_change * words))`` (the ``eps`` of `armor train/evaluate --eps`)
``stop_words``      stop words and punctuation are never changed
``pos_match``       a word swap keeps a part of speech of the word it replaces (WordNet is the tagger: both
                    words must share a WordNet part of speech); character edits are exempt (a misspelling has no
                    part of speech)
``min_similarity``  the sentence encoder's cosine similarity between the original and the adversarial sentence
                    (MiniLM-L6 through sentence-transformers) must be at least this; 0 switches it off and says so
``query_budget``    model queries (sentences classified) an attack may spend on one example
``max_candidates``  candidates per word per transformation (the nearest ones first)

Every recipe uses the same constraints, and no position is changed twice (the searches never revisit a
position; :func:`violations` checks the final text). Edits are substitutions of one token by one token, so an
adversarial sentence has the same number of tokens as the original.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

EPS_UNIT = "share of words changed"

# A short stop-word list (the one TextFooler and TextAttack's recipes use is longer; this keeps the function
# words, negations and pronouns, whose swaps change meaning or grammar).
STOP_WORDS = frozenset("""
a about above after again against all am an and any are aren't as at be because been before being below between
both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each few for from
further had hadn't has hasn't have haven't having he he'd he'll he's her here here's hers herself him himself his
how how's i i'd i'll i'm i've if in into is isn't it it's its itself let's me more most mustn't my myself no nor
not of off on once only or other ought our ours ourselves out over own same shan't she she'd she'll she's should
shouldn't so some such than that that's the their theirs them themselves then there there's these they they'd
they'll they're they've this those through to too under until up very was wasn't we we'd we'll we're we've were
weren't what what's when when's where where's which while who who's whom why why's with won't would wouldn't you
you'd you'll you're you've your yours yourself yourselves never nothing nobody none n't 's 're 've 'd 'll 'm
""".split())


def is_word(token: str) -> bool:
    return any(c.isalnum() for c in token)


def changeable(token: str, threat: "TextThreat") -> bool:
    """May an attack touch this token at all (a word, not a stop word when stop words are protected)?"""
    return is_word(token) and not (threat.stop_words and token in STOP_WORDS)


@dataclass(frozen=True)
class TextThreat:
    max_change: float = 0.2
    stop_words: bool = True
    pos_match: bool = True
    min_similarity: float = 0.84
    query_budget: int = 2000
    max_candidates: int = 8

    def __post_init__(self) -> None:
        if not (isinstance(self.max_change, (int, float)) and 0 < self.max_change <= 1):
            raise ValueError(f"max_change (--eps for text) is a share of words in (0, 1], got {self.max_change!r}")
        if not (isinstance(self.min_similarity, (int, float)) and 0 <= self.min_similarity <= 1):
            raise ValueError(f"min_similarity must be in [0, 1] (0: no similarity constraint), got "
                             f"{self.min_similarity!r}")
        if not (isinstance(self.query_budget, int) and self.query_budget >= 1):
            raise ValueError(f"query_budget must be a positive number of queries, got {self.query_budget!r}")
        if not (isinstance(self.max_candidates, int) and self.max_candidates >= 1):
            raise ValueError(f"max_candidates must be a positive integer, got {self.max_candidates!r}")

    def budget(self, tokens: Sequence[str]) -> int:
        """How many words of this sentence may change."""
        return max(1, math.floor(self.max_change * sum(map(is_word, tokens)) + 1e-9))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "text", "eps": self.max_change, "eps_unit": EPS_UNIT, "norm": "words", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TextThreat":
        if not isinstance(d, dict) or d.get("kind") != "text":
            raise ValueError(f"not a text threat model: {d!r:.120}")
        return cls(**{k: d[k] for k in ("max_change", "stop_words", "pos_match", "min_similarity", "query_budget",
                                         "max_candidates") if k in d})


def violations(threat: TextThreat, original: Sequence[str], adversarial: Sequence[str], *,
               edits: Sequence[tuple[int, str, str]] = (), pos: Optional[Callable[[str], frozenset]] = None,
               similarity: Optional[float] = None) -> list[str]:
    """Every constraint ``adversarial`` breaks, as sentences (empty: it satisfies the threat model).

    ``edits`` are the attack's log ``(position, kind, new token)`` with kind "word" or "char"; ``pos`` the
    tagger (WordNet's parts of speech of a word); ``similarity`` the encoder's cosine (None: not measured, which
    is a violation when the threat asks for a floor).
    """
    out: list[str] = []
    if len(original) != len(adversarial):
        return [f"token count changed ({len(original)} -> {len(adversarial)}): edits substitute one token"]
    changed = [i for i, (a, b) in enumerate(zip(original, adversarial)) if a != b]
    if len(changed) > threat.budget(original):
        out.append(f"{len(changed)} words changed, the budget is {threat.budget(original)}")
    for i in changed:
        if not changeable(original[i], threat):
            out.append(f"position {i}: {original[i]!r} may not change (stop word or punctuation)")
    positions = [e[0] for e in edits]
    if len(set(positions)) != len(positions):
        out.append("a position was changed twice")
    kinds = {e[0]: e[1] for e in edits}
    if sorted(kinds) != changed or any(adversarial[p] != t for p, _, t in edits):
        out.append(f"the edit log {sorted(kinds)} does not match the changed positions {changed}")
    if threat.pos_match and pos is not None:
        for i in changed:
            if kinds.get(i) == "word" and not (pos(original[i]) & pos(adversarial[i])):
                out.append(f"position {i}: {original[i]!r} -> {adversarial[i]!r} share no part of speech")
    if threat.min_similarity > 0 and changed:
        if similarity is None:
            out.append("similarity was not measured")
        elif similarity < threat.min_similarity - 1e-6:
            out.append(f"similarity {similarity:.4f} is below the floor {threat.min_similarity}")
    return out
