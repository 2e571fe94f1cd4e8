"""WordNet synonyms read straight from Debian's database files (``/usr/share/wordnet/data.*``).

nltk refuses WordNet outside its own nltk_data folders, so the four ``data.{noun,verb,adj,adv}`` files are
parsed here: each line is a synset ``offset lex_filenum ss_type w_cnt word lex_id [word lex_id...] ...``
(w_cnt in hexadecimal). Two words are synonyms when they share a synset; multi-word lemmas (``ice_cream``) are
left out, because a word swap must keep the sentence's token count. ``(p)``/``(a)`` adjective markers are
stripped. A word's parts of speech are those of the synsets it appears in: the POS constraint uses them as
the tagger (a candidate must share a part of speech with the word it replaces).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Optional

WORDNET_INSTALL = "apt-get install -y wordnet-base wordnet-sense-index"
DEFAULT_DIR = "/usr/share/wordnet"
POS_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}


class WordNet:
    """``synonyms(word)`` -> {pos: sorted synonyms}; ``pos(word)`` -> set of parts of speech."""

    def __init__(self, synonyms: dict[str, dict[str, tuple[str, ...]]], path: str):
        self._syn = synonyms
        self.path = path

    def synonyms(self, word: str) -> dict[str, tuple[str, ...]]:
        return self._syn.get(word, {})

    def pos(self, word: str) -> frozenset[str]:
        return frozenset(self._syn.get(word, {}))

    def __len__(self) -> int:
        return len(self._syn)


def wordnet_dir(path: Optional[str] = None) -> Path:
    """The WordNet database folder: ``path``, else $WNSEARCHDIR, else Debian's; an error naming the install."""
    where = Path(path or os.environ.get("WNSEARCHDIR") or DEFAULT_DIR)
    missing = [f for f in POS_FILES.values() if not (where / f).is_file()]
    if missing:
        raise FileNotFoundError(f"WordNet is not installed at {where} (missing {', '.join(missing)}): "
                                f"{WORDNET_INSTALL} (Debian/Ubuntu), or set WNSEARCHDIR to a WordNet 3 dict folder")
    return where


@lru_cache(maxsize=4)
def load_wordnet(path: Optional[str] = None) -> WordNet:
    """Parse the WordNet database once per process (about 2 s)."""
    where = wordnet_dir(path)
    groups: dict[str, dict[str, set[str]]] = {}
    for pos, name in POS_FILES.items():
        with open(where / name, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  "):  # the licence header
                    continue
                fields = line.split(" ", 4 + 2 * 64)
                try:
                    count = int(fields[3], 16)
                except (IndexError, ValueError):
                    continue
                words = []
                for k in range(count):
                    w = fields[4 + 2 * k].lower()
                    w = w.split("(", 1)[0]
                    if "_" not in w and "-" not in w and w.isalpha():
                        words.append(w)
                if len(words) < 2:
                    continue
                for w in words:
                    bucket = groups.setdefault(w, {}).setdefault(pos, set())
                    bucket.update(x for x in words if x != w)
    synonyms = {w: {p: tuple(sorted(s)) for p, s in by_pos.items()} for w, by_pos in groups.items()}
    return WordNet(synonyms, str(where))
