"""The bench/RESULTS.md section of the sharding and decision-attack benchmarks, one subsection per script."""

from __future__ import annotations

from common import BENCH, replace_section

HEADING = "## Sharding and decision-based attacks"
ORDER = ("Sharded against one process", "Cost per point of the standard suite", "RayS against its reference")


def write_subsection(title: str, text: str) -> None:
    """Replace (or add) the subsection ``### title`` of the section, keeping the others, in :data:`ORDER`."""
    path = BENCH / "RESULTS.md"
    content = path.read_text()
    body = content.split(HEADING, 1)[1].split("\n## ", 1)[0] if HEADING in content else ""
    parts = {p.split("\n", 1)[0].strip(): p.strip() for p in body.split("### ")[1:]}
    parts[title] = f"{title}\n\n{text.strip()}"
    ranked = sorted(parts, key=lambda t: ORDER.index(t) if t in ORDER else len(ORDER))
    replace_section(path, HEADING, "\n\n".join("### " + parts[t] for t in ranked))
