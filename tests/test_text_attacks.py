"""Text attacks: every adversarial sentence satisfies every constraint of the threat model (random sentences,
every recipe), the constraint checker catches each kind of breach, the attacks lower a trained model's accuracy
by a measured margin, sentences nothing may change count as robust ("unattackable"), budgets hold, results
repeat under a seed, and attacking in lock step gives each sentence the result it gets alone."""

import random
from collections import Counter

import pytest
import torch

from armor.domains.text.attacks import (RECIPES, Similarity, TargetModel, Transformations, attack_batch,
                                        attack_example, char_edits, check_all, run_attacks)
from armor.domains.text.data import load_split, tokenize
from armor.domains.text.threat import STOP_WORDS, TextThreat, violations
from armor.domains.text.train import load_text, train_text
from armor.domains.text.wordnet import load_wordnet


def trigram_encoder(texts):
    """A cheap deterministic sentence encoder (hashed character trigrams) standing in for MiniLM, so that the
    similarity constraint is exercised on every candidate without loading a transformer."""
    out = torch.zeros(len(texts), 512)
    for k, t in enumerate(texts):
        t = f"  {t}  "
        for a in range(len(t) - 2):
            out[k, hash(t[a:a + 3]) % 512] += 1  # PYTHONHASHSEED does not matter: same process, same hash
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("text") / "std"
    train_text(run, recipe="standard", epochs=3, n_train=1500, seed=0)
    model, vocab, _ = load_text(run)
    split = load_split("mr", seed=0, n_test=1000)
    tokens = [tokenize(t) for t in split.test_texts[:60]]
    return model, vocab, tokens, split.test_labels[:60]


@pytest.fixture(scope="module")
def wordnet():
    return load_wordnet()


def random_sentences(vocab, n, seed):
    """Sentences of 3-25 tokens drawn from the model's vocabulary, stop words and punctuation included."""
    rng = random.Random(seed)
    words = vocab.itos[2:]
    return [[rng.choice(words) for _ in range(rng.randint(3, 25))] for _ in range(n)]


def test_every_adversarial_sentence_satisfies_every_constraint(trained, wordnet):
    model, vocab, _, _ = trained
    sentences = random_sentences(vocab, 40, seed=1)
    target = TargetModel(model, vocab)
    labels = target.probs(sentences).argmax(1).tolist()  # the model's own labels: every sentence is attacked
    threat = TextThreat(max_change=0.25, min_similarity=0.75, query_budget=300, max_candidates=6)
    similarity = Similarity(trigram_encoder)
    res = run_attacks(target, sentences, labels, list(RECIPES), threat, seed=0, wordnet=wordnet,
                      similarity=similarity)
    wins = sum(r["status"] == "success" for rows in res["examples"].values() for r in rows)
    # the check below is not vacuous: 158, 162, 160, 166 of 200 (40 sentences x 5 recipes) succeeded for
    # training seeds 0-3 (this test uses seed 0)
    assert wins >= 100
    assert check_all(res, sentences, threat, wordnet=wordnet, similarity=similarity) == []
    for rows in res["examples"].values():
        for r in rows:
            assert r["queries"] <= threat.query_budget


def test_the_checker_catches_each_breach(wordnet):
    t = TextThreat(max_change=0.2, min_similarity=0.8)
    orig = "the film is a slow and dull story about love".split()
    assert t.budget(orig) == 2
    ok = orig.copy()
    ok[4] = "deadening"
    edits = [(4, "word", "deadening")]
    assert violations(t, orig, ok, edits=edits, pos=wordnet.pos, similarity=0.9) == []
    cases = {
        "token count": (orig[:-1], edits, 0.9),
        "budget is 2": (["x" if i in (1, 4, 6) else w for i, w in enumerate(orig)],
                        [(1, "char", "x"), (4, "char", "x"), (6, "char", "x")], 0.9),
        "may not change": (["an" if w == "a" else w for w in orig], [(3, "word", "an")], 0.9),
        "changed twice": (ok, edits + edits, 0.9),
        "edit log": (ok, [], 0.9),
        "part of speech": ([*orig[:6], "quickly", *orig[7:]], [(6, "word", "quickly")], 0.9),
        "below the floor": (ok, edits, 0.5),
        "not measured": (ok, edits, None),
    }
    for words, (adv, log, sim) in cases.items():
        found = violations(t, orig, adv, edits=log, pos=wordnet.pos, similarity=sim)
        assert any(words in v for v in found), (words, found)


def test_threat_round_trips_and_refuses_bad_values():
    t = TextThreat(max_change=0.1, min_similarity=0.0, query_budget=50)
    assert TextThreat.from_dict(t.to_dict()) == t
    for bad in ({"max_change": 0}, {"max_change": 1.5}, {"min_similarity": -0.1}, {"query_budget": 0}):
        with pytest.raises(ValueError):
            TextThreat(**bad)


def test_attacks_lower_the_accuracy_of_a_trained_model(trained, wordnet):
    model, vocab, tokens, labels = trained
    res = run_attacks(TargetModel(model, vocab), tokens, labels, ["pwws", "deepwordbug"],
                      TextThreat(min_similarity=0.0), seed=0, wordnet=wordnet)
    # Measured on these 60 sentences for training seeds 0-3 (this fixture trained with seeds 0..3):
    # clean 0.600, 0.567, 0.583, 0.450; worst case 0.183, 0.183, 0.167, 0.250 (drops 0.417, 0.383, 0.417,
    # 0.200). The fixture uses seed 0; the bounds hold for every seed measured.
    assert res["clean_accuracy"] >= 0.40
    assert res["clean_accuracy"] - res["robust_accuracy"] >= 0.15
    per = res["per_attack"]
    assert res["robust_accuracy"] <= min(r["accuracy"] for r in per.values())  # the worst case is per sentence
    assert all(0 < r["words_changed"] <= 0.2 + 1e-9 for r in per.values())


def test_a_sentence_nothing_may_change_is_robust_and_unattackable(trained, wordnet):
    model, vocab, _, _ = trained
    target = TargetModel(model, vocab)
    sentence = ["it", "is", "not", "what", "it", "was", "."]
    label = int(target.probs([sentence]).argmax())
    res = run_attacks(target, [sentence], [label], list(RECIPES), TextThreat(min_similarity=0.0), wordnet=wordnet)
    assert res["unattackable"] == 1 and res["robust_accuracy"] == 1.0 and res["clean_accuracy"] == 1.0
    assert all(r["unattackable"] == 1 and r["accuracy"] == 1.0 for r in res["per_attack"].values())
    wrong = run_attacks(target, [sentence], [1 - label], ["pwws"], TextThreat(min_similarity=0.0), wordnet=wordnet)
    assert wrong["examples"]["pwws"][0]["status"] == "skipped" and wrong["robust_accuracy"] == 0.0


def test_query_budget_holds_and_results_repeat_under_a_seed(trained, wordnet):
    model, vocab, tokens, labels = trained
    threat = TextThreat(min_similarity=0.0, query_budget=15)
    runs = [run_attacks(TargetModel(model, vocab), tokens[:30], labels[:30], ["deepwordbug", "pwws", "beam"],
                        threat, seed=3, wordnet=wordnet)["examples"] for _ in range(2)]
    for rows in runs[0].values():
        for r in rows:
            r.pop("seconds")
            assert r["queries"] <= 15
    for rows in runs[1].values():
        for r in rows:
            r.pop("seconds")
    assert runs[0] == runs[1]
    other = run_attacks(TargetModel(model, vocab), tokens[:30], labels[:30], ["deepwordbug"], threat, seed=4,
                        wordnet=wordnet)["examples"]["deepwordbug"]
    assert [r["adversarial"] for r in other] != [r["adversarial"] for r in runs[0]["deepwordbug"]]


@pytest.mark.parametrize("name", ["textfooler", "a2t", "deepwordbug"])
def test_lock_step_gives_each_sentence_its_own_result(trained, wordnet, name):
    model, vocab, tokens, labels = trained
    threat = TextThreat(min_similarity=0.7, query_budget=100)
    transform = Transformations(RECIPES[name].transformations, threat, wordnet, vocab)
    sim = Similarity(trigram_encoder)
    together = attack_batch(TargetModel(model, vocab), tokens[:20], labels[:20], name, threat, transform, sim,
                            [random.Random(k) for k in range(20)])
    alone = [attack_example(TargetModel(model, vocab), t, y, name, threat, transform, sim, random.Random(k))
             for k, (t, y) in enumerate(zip(tokens[:20], labels[:20]))]
    strip = lambda r: {k: v for k, v in r.to_dict().items() if k != "seconds"}  # noqa: E731
    assert [strip(r) for r in together] == [strip(r) for r in alone]
    assert Counter(r.status for r in together)["success"] >= 3


def test_character_edits_are_one_edit_away():
    rng = random.Random(0)
    for word in ["film", "boring", "terrible", "ok"]:
        for cand in char_edits(word, rng):
            assert cand != word and abs(len(cand) - len(word)) <= 1
            assert len(tokenize(cand)) == 1  # still one token, so a character edit never changes the length
    assert all(w.isalpha() for w in STOP_WORDS if "'" not in w)


def test_a2t_training_raises_after_attack_accuracy_over_standard(trained, wordnet, tmp_path):
    """A2T (adversarial sentences from the cheap a2t attack added to half of each batch after one clean epoch)
    against standard training, same data, epochs and seed, under PWWS and A2T on 100 test sentences.

    Measured for training seeds 0, 1, 2, 3 (1500 sentences, 3 epochs): worst-case accuracy standard 0.19, 0.20,
    0.19, 0.23; a2t 0.25, 0.27, 0.21, 0.26 (gains 0.06, 0.07, 0.02, 0.03); clean accuracy moved by 0.00,
    +0.01, 0.00, +0.08 (the same to the last digit before and after the embedding-neighbour order fix; A2T
    training took 4-7x standard's time). This test uses seed 0 (gain 0.06, clean unchanged) and asks for a gain of at
    least 0.03 and a clean change within 0.05."""
    model, vocab, _, _ = trained
    split = load_split("mr", seed=0, n_test=1000)
    tokens, labels = [tokenize(t) for t in split.test_texts[:100]], split.test_labels[:100]
    train_text(tmp_path / "a2t", recipe="a2t", epochs=3, n_train=1500, seed=0)
    hardened, hvocab, meta = load_text(tmp_path / "a2t")
    threat = TextThreat(min_similarity=0.0)
    std = run_attacks(TargetModel(model, vocab), tokens, labels, ["pwws", "a2t"], threat, wordnet=wordnet)
    a2t = run_attacks(TargetModel(hardened, hvocab), tokens, labels, ["pwws", "a2t"], threat, wordnet=wordnet)
    assert a2t["robust_accuracy"] - std["robust_accuracy"] >= 0.03
    assert abs(a2t["clean_accuracy"] - std["clean_accuracy"]) <= 0.05
    assert meta["cost"]["attack_queries"] > 0 and meta["cost"]["forward"] > 3 * 1500  # the attacks were paid for


def test_embedding_neighbours_do_not_depend_on_the_batch(trained):
    from armor.domains.text import attacks

    words = trained[1].itos[2:400]
    attacks._NEIGHBOURS.clear()
    together = attacks.neighbours(words, 32)
    attacks._NEIGHBOURS.clear()
    alone = {w: attacks.neighbours([w], 32)[w] for w in words}
    assert together == alone
    assert sum(map(bool, alone.values())) >= 300  # measured: 329 of these 398 words have neighbours above the floor
