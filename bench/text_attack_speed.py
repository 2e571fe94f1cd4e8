"""Lock-step attacks vs one sentence at a time, side by side in one run (the text domain's speed claim).

    .venv/bin/python bench/text_attack_speed.py RUN_DIR [--n 100] [--recipes pwws,textfooler,deepwordbug,a2t]

RUN_DIR is a trained text run (e.g. the demo's standard model). For each recipe, the same sentences are
attacked by ``run_attacks`` (lock step, 32 sentences per batch) and by ``attack_example`` one sentence at a
time, alternating the order over two rounds; it prints the wall-time ratio, how many sentences got identical
results both ways (a sentence's trials are batched with other sentences' in lock step: float differences of the
order of 1e-7 in the probabilities can reorder near-tied candidates), the successes each way, and the load. The similarity floor is off (the encoder's cost is the
same either way and would hide the search's).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import time

import torch


def main() -> None:
    from armor.domains.text.attacks import RECIPES, TargetModel, Transformations, attack_example, run_attacks
    from armor.domains.text.data import load_split, tokenize
    from armor.domains.text.threat import TextThreat
    from armor.domains.text.train import load_text
    from armor.domains.text.wordnet import load_wordnet
    from armor.training.trainer import derive_seed

    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--recipes", default="pwws,textfooler,deepwordbug,a2t")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, vocab, meta = load_text(args.run)
    split = load_split(meta["corpus"], seed=0, n_test=meta["n_test"])
    tokens = [tokenize(t) for t in split.test_texts[:args.n]]
    labels = split.test_labels[:args.n]
    wn = load_wordnet()
    threat = TextThreat(min_similarity=0.0)
    print(f"load before: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print("| recipe | lock step s | one at a time s | ratio | identical sentences | successes lock / alone |\n"
          "|---|---|---|---|---|---|")
    for name in args.recipes.split(","):
        transform = Transformations(RECIPES[name].transformations, threat, wn, vocab)
        transform.prepare([t for s in tokens for t in s])  # neighbours cached for both sides alike
        times = {"lock": 0.0, "alone": 0.0}
        outs = {}
        for rnd in range(2):
            for side in (("lock", "alone") if rnd == 0 else ("alone", "lock")):
                t0 = time.perf_counter()
                if side == "lock":
                    ex = run_attacks(TargetModel(model, vocab), tokens, labels, [name], threat, seed=0,
                                     wordnet=wn)["examples"][name]
                else:
                    ex = [attack_example(TargetModel(model, vocab), t, y, name, threat, transform, None,
                                         random.Random(derive_seed(0, "text-attack", name, k))).to_dict()
                          for k, (t, y) in enumerate(zip(tokens, labels))]
                times[side] += time.perf_counter() - t0
                outs[side] = [{k: v for k, v in r.items() if k != "seconds"} for r in ex]
        differ = [k for k, (a, b) in enumerate(zip(outs["lock"], outs["alone"])) if a != b]
        status = lambda side: sum(outs[side][k]["status"] == "success" for k in range(len(tokens)))  # noqa: E731
        print(f"| {name} | {times['lock'] / 2:.2f} | {times['alone'] / 2:.2f} | "
              f"{times['alone'] / times['lock']:.2f}x | {len(tokens) - len(differ)}/{len(tokens)} | "
              f"{status('lock')} / {status('alone')} |", flush=True)
    print(f"load after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
