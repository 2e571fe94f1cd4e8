"""The recsys domain: recommenders under embedding perturbations, and APR training.

A recommender (:mod:`.models`: matrix factorisation, LightGCN) learns user and item embeddings from implicit
feedback (:mod:`.data`: MovieLens-100k from the recbole wheel, or u.data / ratings.csv / ratings.dat files;
leave-one-out split). The threat (:mod:`.threat`) moves each embedding row within an L2 ball, its radius
absolute or a share of the row's norm; attacks (:mod:`.attacks`: random, FGSM, PGD, an oracle PGD on the
held-out items, and item promotion) lower HR@K / NDCG@K (:mod:`.metrics`) or raise a target item;
:mod:`.injection` poisons the data with fake user profiles instead. Training (:mod:`.train`) is BPR or APR
(adversarial personalised ranking, He et al. SIGIR 2018) with resumable checkpoints.

As a plug-in (:data:`DOMAIN`) it contributes a :class:`armor.plugins.Workflow` (`armor train --domain recsys
--recipe apr --eps 0.5`, `armor evaluate RUN`, gates on hr@10 / robust_hr@10), its report section and the
``recsys`` demo (BPR vs APR over seeds).
"""

from __future__ import annotations

from typing import Any, Optional

from ...plugins import Domain, ReportSection, lazy
from .threat import UNITS, EmbeddingThreat
from .workflow import WORKFLOW

_SECTION = """
  <h2>Recommenders: ranking quality under embedding perturbations</h2>
  <p class="lead">Each user's latest interaction is held out; the figures are HR@10 / NDCG@10 of those items
  ranked against every item the user has not interacted with ({{ n_text }} users). Attacks move every user and
  item embedding within an L2 ball ({{ unit_text }}); the <b>worst case</b> is the suite's strongest attack,
  per metric (one perturbation of the whole system, which every user sees). The oracle attack also knows the
  held-out items: it bounds the damage and is not part of the worst case.</p>
  <table>
    <tr><th>model</th><th>recommender</th><th>recipe</th><th>threat</th><th class="num">HR@10</th>
        <th class="num">NDCG@10</th>{% for a in attacks %}<th class="num">{{ a }} HR@10</th>{% endfor %}
        <th class="num">worst-case HR@10</th><th class="num">worst-case NDCG@10</th>
        {% for a in oracle %}<th class="num">{{ a }} (oracle) HR@10</th>{% endfor %}
        <th class="num">promotion: median rank gain</th><th class="num">train time</th></tr>
    {% for name, m in models.items() %}
    <tr><td>{{ name }}</td><td>{{ m.model }}</td><td>{{ m.recipe }}</td>
        <td>l2 eps={{ m.threat.eps }} ({{ m.threat.unit }})</td>
        <td class="num">{{ num(m["hr@10"], 3) }}</td><td class="num">{{ num(m["ndcg@10"], 3) }}</td>
        {% for a in attacks %}<td class="num">{% if m.per_attack[a] is defined %}{{ num(m.per_attack[a]["hr@10"], 3) }}{% else %}–{% endif %}</td>{% endfor %}
        <td class="num"><b>{{ num(m["robust_hr@10"], 3) }}</b></td><td class="num">{{ num(m["robust_ndcg@10"], 3) }}</td>
        {% for a in oracle %}<td class="num">{% if m.oracle is defined and m.oracle[a] is defined %}{{ num(m.oracle[a]["hr@10"], 3) }}{% else %}–{% endif %}</td>{% endfor %}
        <td class="num">{% if m.promotion is defined %}{{ num(m.promotion.median_rank_shift, 0) }}{% else %}–{% endif %}</td>
        <td class="num">{{ secs(m.train_seconds) }}</td></tr>
    {% endfor %}
  </table>
  {% if seeds %}
  <h3>Over training seeds (median [min, max])</h3>
  <p class="muted">The table above and the curve show each recipe's first seed; this one, every seed.</p>
  <table>
    <tr><th>recipe</th><th class="num">seeds</th><th class="num">HR@10</th><th class="num">NDCG@10</th>
        <th class="num">worst-case HR@10</th><th class="num">worst-case NDCG@10</th><th class="num">train time</th></tr>
    {% for r in seeds %}
    <tr><td>{{ r.recipe }}</td><td class="num">{{ r.n }}</td>
        {% for key in ["hr@10", "ndcg@10", "robust_hr@10", "robust_ndcg@10"] %}
        <td class="num">{{ num(r[key].median, 3) }} <span class="muted">[{{ num(r[key].min, 3) }}, {{ num(r[key].max, 3) }}]</span></td>
        {% endfor %}
        <td class="num">{{ secs(r.train_seconds.median) }}</td></tr>
    {% endfor %}
  </table>
  {% endif %}
  {% if injections %}
  <h3>Fake-profile injection (data poisoning, retrained)</h3>
  <table>
    <tr><th>model</th><th class="num">target</th><th>fillers</th><th class="num">fake users</th>
        <th class="num">ratings each</th><th class="num">target's mean position (real users)</th>
        <th class="num">target in top 10</th><th class="num">real users' HR@10</th></tr>
    {% for name, j in injections.items() %}
    <tr><td>{{ name }}</td><td class="num">{{ j.target }}</td><td>{{ j.strategy }}</td>
        <td class="num">{{ j.budget.fake_users }} ({{ pct(j.budget.share_of_users) }} of users)</td>
        <td class="num">{{ j.budget.ratings_per_fake_user }}</td>
        <td class="num">{{ num(j.position_before.mean, 0) }} &rarr; {{ num(j.position_after.mean, 0) }}</td>
        <td class="num">{{ pct(j.top10_before) }} &rarr; {{ pct(j.top10_after) }}</td>
        <td class="num">{{ num(j["real_hr@10_before"], 3) }} &rarr; {{ num(j["real_hr@10_after"], 3) }}</td></tr>
    {% endfor %}
  </table>
  {% endif %}
  {% if curve %}<img class="fig" alt="worst-case HR@10 against eps" src="{{ curve }}">{% endif %}
"""


def _section_context(models: dict, artifacts: dict) -> Optional[dict]:
    recs = {n: m for n, m in models.items() if m.get("domain") == "recsys"}
    if not recs:
        return None
    attacks: list[str] = []
    oracle: list[str] = []
    for m in recs.values():
        attacks += [a for a in m.get("per_attack", {}) if a not in attacks]
        oracle += [a for a in m.get("oracle", {}) or {} if a not in oracle]
    units = sorted({(m.get("threat") or {}).get("unit", "absolute") for m in recs.values()})
    seeds = [m["seed_summary"] for m in recs.values() if isinstance(m.get("seed_summary"), dict)]
    injections = {n: m["injection"] for n, m in recs.items() if isinstance(m.get("injection"), dict)}
    return {"models": recs, "attacks": attacks, "oracle": oracle, "curve": _curve_figure(recs), "seeds": seeds,
            "injections": injections,
            "unit_text": "; ".join(UNITS.get(u, u) for u in units),
            "n_text": "/".join(str(n) for n in sorted({m.get("n") for m in recs.values()}))}


def _curve_figure(recs: dict[str, Any]) -> Optional[str]:
    from ...app.report.plots import curve_figure

    unit = next(iter(recs.values())).get("threat", {}).get("unit", "absolute")
    return curve_figure({n: m.get("curve") for n, m in recs.items()}, "hr@10", f"eps ({UNITS.get(unit, unit)})",
                        "worst-case HR@10")


DOMAIN = Domain(
    name="recsys",
    description="recommenders (MF, LightGCN on MovieLens): embedding attacks, item promotion, APR training",
    report=(ReportSection("recsys", "Recommenders", _SECTION, _section_context),),
    demos={"recsys": lazy("armor.domains.recsys.demo:run_demo", "recsys", description=(
        "MovieLens-100k: MF with BPR vs APR over 3 seeds, HR/NDCG under embedding attacks, fake-profile "
        "injection (about 3 minutes)"))},
    workflow=WORKFLOW,
)

__all__ = ["DOMAIN", "EmbeddingThreat", "UNITS"]
