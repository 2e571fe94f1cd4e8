"""The README's first-session example runs as written, in order, on a fresh directory: every `armor ...` line
of its first ```sh block of the Use section, then its Python block."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    text = README.read_text()
    use = text[text.index("## Use"):text.index("## What is inside")]
    sh = re.search(r"```sh\n(.*?)```", use, re.S).group(1)
    py = re.search(r"```python\n(.*?)```", use, re.S).group(1)
    joined = sh.replace("\\\n", " ")  # continuation lines
    commands = [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip().startswith("armor ")]
    return commands, py


def test_the_readme_names_the_commands_it_runs():
    commands, py = _blocks()
    assert [c.split()[1] for c in commands] == ["train", "train", "evaluate", "evaluate", "report", "check", "attack"]
    assert "armor.load(" in py and "load_dataset(" in py


@pytest.mark.slow
def test_the_readme_example_runs_as_written(tmp_path):
    commands, py = _blocks()
    armor = Path(sys.executable).parent / "armor"
    for command in commands:
        args = shlex.split(command)
        r = subprocess.run([str(armor), *args[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                           env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, f"{command}\n{r.stdout}\n{r.stderr}"
    assert (tmp_path / "report.html").stat().st_size > 10_000 and (tmp_path / "adv.npz").exists()
    r = subprocess.run([sys.executable, "-c", py], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
