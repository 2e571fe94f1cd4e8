"""The agents domain: attack what an agent observes, harden it, and measure the return it keeps.

An agent's sensor readings are perturbed within an lp ball in normalised observation units
(:mod:`.threat`); attacks (:mod:`.attacks`: random noise, critic, MAD, Robust Sarsa, a learned adversary)
work on any stable-baselines3 on-policy agent or torch policy through :class:`.policy.PolicyAdapter`;
robust training (:mod:`.recipes`, :mod:`.train`: SA-PPO, attacked-observation training with a mix ratio,
ATLA) builds on SB3's PPO; evaluation (:mod:`.evaluate`) reports the per-episode worst case over the suite as
median and interquartile range, as SA-PPO does.

As a plug-in (:data:`DOMAIN`) it contributes a :class:`armor.plugins.Workflow` (`armor train --domain agents
--env CartPole-v1 --recipe sa-ppo`, `armor evaluate RUN`, `armor check --min-robust-return`), its report
section and the ``agents`` demo. gymnasium and stable-baselines3 are the optional extra ``armor[agents]``;
nothing here imports them until an agent is trained or measured.
"""

from __future__ import annotations

from typing import Any, Optional

from ...plugins import Domain, ReportSection, lazy
from .policy import PolicyAdapter
from .threat import ObsNormalizer, adapter_in_z, observation_threat, raw_eps
from .workflow import EPS_UNIT, WORKFLOW

_SECTION = """
  <h2>Agents: the return an agent keeps under attack</h2>
  <p class="lead">Each agent plays {{ n_text }} seeded episodes clean and under every attack of the suite; an
  episode's <b>worst case</b> is its lowest return over the suite (the same seed for every attack). Figures are
  the median over episodes with the interquartile range in brackets, as SA-PPO reports. eps is in {{ unit }}
  (each observation dimension divided by its scale); the raw budget per dimension is eps × scale.</p>
  <table>
    <tr><th>agent</th><th>environment</th><th>recipe</th><th>threat</th><th class="num">clean return</th>
        <th class="num">worst-case return</th>{% for a in attacks %}<th class="num">{{ a }}</th>{% endfor %}
        <th class="num">{{ failure_label }}: clean</th><th class="num">{{ failure_label }}: worst case</th>
        <th class="num">curve area</th>
        <th class="num">env steps</th><th class="num">train time</th></tr>
    {% for name, m in agents.items() %}
    <tr><td>{{ name }}</td><td>{{ m.env }}</td><td>{{ m.recipe }}</td><td>{{ m.threat.norm }} eps={{ m.threat.eps }}</td>
        <td class="num">{{ num(m.clean.median, 1) }} <span class="muted">[{{ num(m.clean.iqr[0], 1) }}, {{ num(m.clean.iqr[1], 1) }}]</span></td>
        <td class="num"><b>{{ num(m.worst.median, 1) }}</b> <span class="muted">[{{ num(m.worst.iqr[0], 1) }}, {{ num(m.worst.iqr[1], 1) }}]</span></td>
        {% for a in attacks %}<td class="num">{% if m.per_attack[a] is defined %}{{ num(m.per_attack[a].median, 1) }}{% else %}–{% endif %}</td>{% endfor %}
        <td class="num">{{ pct(m.failure.clean) if m.failure is defined and m.failure.clean is not none else "–" }}</td>
        <td class="num"><b>{{ pct(m.failure.worst) if m.failure is defined and m.failure.worst is not none else "–" }}</b></td>
        <td class="num">{{ num(m.curve_area, 3) if m.curve_area is defined else "–" }}</td>
        <td class="num">{{ m.env_steps if m.env_steps is not none else "–" }}</td>
        <td class="num">{{ secs(m.train_seconds) }}</td></tr>
    {% endfor %}
  </table>
  {% if failures %}
  <p>Failed episodes per attack ({{ failure_label }}; {% for r in rules %}{{ r }}{% if not loop.last %}; {% endif %}{% endfor %}):</p>
  <table>
    <tr><th>agent</th><th class="num">clean</th>{% for a in attacks %}<th class="num">{{ a }}</th>{% endfor %}<th class="num">worst case</th></tr>
    {% for name, f in failures.items() %}
    <tr><td>{{ name }}</td><td class="num">{{ pct(f.clean) }}</td>
        {% for a in attacks %}<td class="num">{{ pct(f.per_attack[a]) if f.per_attack[a] is defined and f.per_attack[a] is not none else "–" }}</td>{% endfor %}
        <td class="num"><b>{{ pct(f.worst) if f.worst is not none else "–" }}</b></td></tr>
    {% endfor %}
  </table>
  {% endif %}
  {% if curve %}<img class="fig" alt="worst-case return against eps" src="{{ curve }}">{% endif %}
  {% if films %}<h3>Filmstrips: one episode clean and under the strongest attack</h3>{% endif %}
  {% for name, f in films.items() %}
  <p><b>{{ name }}</b>: episode seed {{ f.seed }}, clean and under <b>{{ f.attack }}</b> (the attack with the lowest
  median return){% if f.note %}: <span class="muted">{{ f.note }}</span>{% endif %}</p>
  {% if f.figure %}<img class="fig" alt="filmstrip of {{ name }}: clean and under {{ f.attack }}" src="{{ f.figure }}">{% endif %}
  {% endfor %}
"""


def _section_context(models: dict, artifacts: dict) -> Optional[dict]:
    agents = {n: m for n, m in models.items() if m.get("domain") == "agents"}
    if not agents:
        return None
    attacks: list[str] = []
    for m in agents.values():
        attacks += [a for a in m.get("per_attack", {}) if a not in attacks]
    ns = sorted({m.get("n") for m in agents.values()})
    failures = {n: m["failure"] for n, m in agents.items() if m.get("failure")}
    labels = sorted({f.get("label", "failed episodes") for f in failures.values()})
    return {"agents": agents, "attacks": attacks, "unit": EPS_UNIT, "curve": _curve_figure(agents),
            "n_text": "/".join(str(n) for n in ns), "failures": failures,
            "failure_label": " / ".join(labels) or "failed episodes",
            "rules": sorted({f.get("rule", "") for f in failures.values()}),
            "films": _films(agents, artifacts)}


def _films(agents: dict[str, Any], artifacts: dict) -> dict[str, dict]:
    """Per agent with a filmstrip entry: its figure (from the frames in artifacts.npz) or the note why none."""
    from .filmstrip import filmstrip_figure

    out = {}
    for name, m in agents.items():
        film = m.get("filmstrip")
        if not film:
            continue
        arrays = artifacts.get(name) or {}
        figure = filmstrip_figure(arrays, film) if arrays else None
        note = film.get("note") or (None if figure else "the frames are not in this results directory "
                                    "(artifacts.npz); re-run armor evaluate")
        out[name] = {"seed": film.get("seed"), "attack": film.get("attack"), "figure": figure, "note": note}
    return out


def _curve_figure(agents: dict[str, Any]) -> Optional[str]:
    from ...app.report.plots import curve_figure

    return curve_figure({n: m.get("curve") for n, m in agents.items()}, "robust_return", f"eps ({EPS_UNIT})",
                        "median worst-case return")


DOMAIN = Domain(
    name="agents",
    description="RL agents (gymnasium, stable-baselines3): observation attacks, SA-PPO / attacked-obs / ATLA",
    report=(ReportSection("agents", "Agents", _SECTION, _section_context),),
    demos={"agents": lazy("armor.domains.agents.demo:run_demo", "agents", description=(
               "CartPole-v1: vanilla PPO vs SA-PPO vs attacked-observation training, returns under random, "
               "critic, MAD and Robust Sarsa attacks (about 4 CPU-minutes)")),
           "driving": lazy("armor.domains.agents.demo:run_demo", "driving", description=(
               "armor/highway-drive-v0 (highway-fast-v0 with a reward under which driving pays; pip install "
               "'armor[driving]'): vanilla PPO vs SA-PPO, crash rate clean and under attack (about 8 CPU-minutes)"))},
    workflow=WORKFLOW,
)

__all__ = ["DOMAIN", "EPS_UNIT", "ObsNormalizer", "PolicyAdapter", "adapter_in_z", "observation_threat", "raw_eps"]
