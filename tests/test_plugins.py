"""The architecture contract: the library knows no domain and no application, `import armor` changes nothing,
and a domain is a plug-in. A minimal example domain (``toy``) goes through every part of the interface: a
dataset, a model, an attack, a suite, a recipe, saved constraints, a measurement, a report section and a demo.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

import armor
from armor import plugins
from armor.data import Dataset
from armor.plugins import DatasetSpec, Domain, Measurement, ReportSection

SRC = Path(armor.__file__).parent
LIBRARY = ("armor.attacks", "armor.data", "armor.engine", "armor.evaluate", "armor.metrics", "armor.models",
           "armor.plugins", "armor.threat", "armor.training", "armor.utils")


# ---------------------------------------------------------------------------------------------- import graph
def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every armor module ``path`` imports, at module level or inside functions."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("armor")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("armor"):
                out.add(target)
                out |= {f"{target}.{a.name}" for a in node.names}
    return out


def _layer(module: str) -> str:
    if module.startswith("armor.app") or module == "armor.__main__":  # __main__ is the CLI's entry point
        return "app"
    if module.startswith("armor.domains"):
        return "domains"
    return "library"


GRAPH = {_module_name(p): _imports(p) for p in SRC.rglob("*.py")}


def test_the_library_imports_neither_the_application_nor_any_domain():
    bad = {m: sorted(i for i in imps if _layer(i) != "library")
           for m, imps in GRAPH.items() if _layer(m) == "library"}
    assert not {m: v for m, v in bad.items() if v}


def test_the_application_finds_domains_only_through_the_plugin_registry():
    bad = {m: sorted(i for i in imps if _layer(i) == "domains") for m, imps in GRAPH.items() if _layer(m) == "app"}
    assert not {m: v for m, v in bad.items() if v}


def test_domains_do_not_import_each_other():
    def domain(m):
        return m.split(".")[2] if m.startswith("armor.domains.") and m.count(".") >= 2 else None

    bad = {m: sorted(i for i in imps if domain(i) and domain(m) and domain(i) != domain(m))
           for m, imps in GRAPH.items()}
    assert not {m: v for m, v in bad.items() if v}


def test_the_graph_check_sees_lazy_imports():
    # The check would be worthless if it missed imports inside functions: the demos import the app lazily.
    assert any(i.startswith("armor.app") for i in GRAPH["armor.domains.tabular.demo"])
    assert "armor.plugins" in GRAPH["armor.data"]


def test_core_code_never_names_a_domain():
    names = ("tabular", "vision", "digits", "fashion-mnist", "breast-cancer", "fraud", "cifar")
    hits = []
    for path in SRC.rglob("*.py"):
        if _layer(_module_name(path)) != "library":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and not _is_docstring(node, path):
                hits += [(path.name, node.value) for n in names if n in node.value.lower()]
    assert not hits


def _is_docstring(node: ast.Constant, path: Path) -> bool:
    return " " in node.value  # prose (docstrings, messages) may mention domains as examples; names may not


def test_import_armor_has_no_side_effects():
    code = (
        "import sys, armor, armor.attacks, armor.data, armor.models, armor.training.recipes, armor.evaluate\n"
        "from armor import plugins\n"
        "assert plugins._discovered is None and not plugins._registered, 'plugins loaded at import'\n"
        "assert not [m for m in sys.modules if m.startswith(('armor.domains', 'armor.app'))]\n"
        "assert set(armor.attacks.ATTACKS) == {'fgsm', 'fgsm-t', 'pgd', 'pgd-20', 'pgd-margin', 'apgd-ce', "
        "'apgd-ce-x5', 'apgd-dlr', 'apgd-dlr-x5', 'apgd-t', 'apgd-t-full', 'cw-l2', 'fab-t', 'fab-t-10', 'rays', 'rays-1k', "
        "'square', 'square-1k', 'square-x5'}\n"
        "assert set(armor.data.DATASETS) == {'npz', 'csv'}\n"
        "assert set(sys.modules['armor.evaluate'].SUITES) == {'standard', 'fast', 'plus'}\n"
        "assert 'cpgd' in armor.attacks.all_attacks() and 'cpgd' not in armor.attacks.ATTACKS\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_installed_domains_are_found_through_entry_points():
    assert {"vision", "tabular"} <= set(plugins.domains())
    assert plugins.domain_of_dataset("digits").name == "vision"
    assert plugins.domain_of_dataset("breast-cancer").name == "tabular"
    assert plugins.domain_of_dataset("npz") is None


# ---------------------------------------------------------------------------------------------- a toy domain
def load_blobs(split, data_dir=None):
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    y = torch.arange(200) % 2
    x = (0.3 + 0.4 * y[:, None] + 0.08 * torch.randn(200, 2, generator=g)).clamp(0, 1)
    return Dataset(x, y, 2, "blobs")


class TinyNet(nn.Module):
    def __init__(self, input_shape, num_classes, mean=(0.0,), std=(1.0,)):
        super().__init__()
        self.fc = nn.Linear(2, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def shove(model, x, y, threat, *, generator=None):
    """A toy attack: move every coordinate by the full budget away from its class centre."""
    direction = torch.where(y[:, None] == 1, -1.0, 1.0).expand_as(x)
    return threat.project(x + direction * threat.eps_scalar, x)


class Mirror:
    """Toy domain constraints: the second feature may not move."""

    kind = "toy-frozen"

    def repair(self, x_adv, x):
        return torch.cat([x_adv[:, :1], x[:, 1:]], dim=1)

    def to_dict(self):
        return {"kind": self.kind}


class Noisy(armor.training.recipes.Standard):
    name = "toy-noisy"
    description = "standard training on noisy copies (toy)"


def measure_margin(model, x, y, threat, *, result=None, **_):
    with torch.no_grad():
        logits = model(x)
    return {"toy": {"mean_margin": float((logits.gather(1, y[:, None]) - logits.mean(1, keepdim=True)).mean()),
                    "robust": result.robust_accuracy}}, {}


def toy_demo(out, *, seed=0, quiet=False, say=print):
    say("toy demo")
    return {"models": {}, "claims": None}


TOY = Domain(
    name="toy",
    description="two Gaussian blobs in [0, 1]^2",
    datasets={"blobs": DatasetSpec(load_blobs, "two blobs, 2 features", default_model="tiny",
                                   default_suite="toy-suite")},
    models={"tiny": (TinyNet, "one linear layer")},
    attacks={"shove": armor.attacks.AttackSpec(shove, {}, ("linf", "l2"), "move by the whole budget")},
    suites={"toy-suite": {"linf": ["shove", "pgd"]}},
    recipes={"toy-noisy": Noisy},
    constraints={"toy-frozen": lambda d: Mirror()},
    measurements=(Measurement("toy", measure_margin),),
    report=(ReportSection("toy", "Toy", "<h2>Toy margins</h2>{% for n, m in toy.items() %}<p>{{ n }}: "
                          "{{ num(m.mean_margin, 3) }}</p>{% endfor %}",
                          lambda models, art: {"toy": {n: m["toy"] for n, m in models.items() if "toy" in m}}
                          or None),),
    demos={"toy": toy_demo},
)


@pytest.fixture()
def toy():
    with plugins.registered(TOY):
        yield TOY
    assert "toy" not in plugins.domains()


def test_a_registered_domain_reaches_every_registry(toy):
    from armor.attacks import all_attacks
    from armor.data import all_datasets, load_dataset
    from armor.evaluate import all_suites, resolve_suite
    from armor.models import all_models, build_model
    from armor.training import all_recipes, make_recipe

    assert "blobs" in all_datasets() and len(load_dataset("blobs", "test")) == 200
    assert "shove" in all_attacks() and "tiny" in all_models() and "toy-noisy" in all_recipes()
    assert resolve_suite("toy-suite", armor.ThreatModel("linf", 0.1)) == ["shove", "pgd"] == all_suites()["toy-suite"]["linf"]
    assert isinstance(make_recipe("toy-noisy"), Noisy)
    assert build_model({"name": "tiny", "input_shape": [2], "num_classes": 2}).armor_spec["name"] == "tiny"


def test_saved_constraints_come_back_through_the_domain_decoder(toy):
    threat = armor.ThreatModel("linf", 0.2, constraints=Mirror())
    back = armor.ThreatModel.from_dict(json.loads(json.dumps(threat.to_dict())))
    assert isinstance(back.constraints, Mirror)
    x = torch.full((3, 2), 0.5)
    assert torch.equal(back.project(x + 0.3, x)[:, 1], x[:, 1])


def test_unknown_constraint_kinds_are_a_clear_error():
    with pytest.raises(ValueError, match="kind 'toy-frozen' cannot be decoded.*not installed"):
        armor.ThreatModel.from_dict({"norm": "linf", "eps": 0.1, "constraints": {"kind": "toy-frozen"}})


def test_registry_names_may_not_clash():
    clash = Domain(name="clash", attacks={"pgd": TOY.attacks["shove"]})
    with pytest.raises(ValueError, match="attack 'pgd' is defined by both 'armor' and domain 'clash'"):
        plugins.register(clash)
    assert "clash" not in plugins.domains()
    with pytest.raises(ValueError, match="already registered"):
        plugins.register(Domain(name="vision"))


def test_a_domain_runs_end_to_end_through_the_cli(toy, tmp_path):
    from armor.app.cli import app

    runner = CliRunner()
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "--dataset", "blobs", "--recipe", "toy-noisy", "--epochs", "2", "--quiet",
                            "--out", str(run)])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "metadata.json").read_text())["architecture"]["name"] == "tiny"
    r = runner.invoke(app, ["evaluate", str(run), "--eps", "0.1", "--no-extras", "--n", "50"])
    assert r.exit_code == 0, r.output
    res = json.loads((run / "eval" / "results.json").read_text())
    assert res["suite"] == ["shove", "pgd"] and "toy" in res  # the domain's suite and measurement
    r = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "r.html").read_text()
    assert 'id="toy"' in html and "Toy margins" in html and 'href="#toy"' in html
    r = runner.invoke(app, ["list", "demos"], terminal_width=200)
    assert "toy" in r.output
    # a demo named through plugins.lazy carries its own description; the others show the domain's
    assert "CartPole-v1: vanilla PPO vs SA-PPO" in r.output and "highway-fast-v0" in r.output
    assert plugins.lazy("armor.domains.agents.demo:run_demo", description="two lines").description == "two lines"
