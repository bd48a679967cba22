"""The README's commands hold: the extras it installs exist, the files it points to are
there, and the figures it shows come from a benchmark that exists."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).parent.parent
README = (REPO / "README.md").read_text()
BASH = "\n".join(re.findall(r"```bash\n(.*?)```", README, re.S))


def test_every_extra_the_readme_installs_is_defined() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = set(re.findall(r"""pip install (?:-e )?["']?\.\[(\w+)\]""", BASH))
    assert "notebook" in named, named  # the set-up for the tutorial notebooks
    assert named <= set(extras), named - set(extras)
    assert {"jupyterlab", "ipykernel"} <= {re.split(r"[<>=\[ ]", d)[0] for d in extras["notebook"]}


def test_the_files_and_commands_it_names_exist() -> None:
    for path in set(
        re.findall(r"\b((?:notebooks|benchmarks|tests|docs|scripts)/[\w./-]+\.(?:ipynb|py|png|json))", README)
    ):
        assert (REPO / path).exists(), path
    assert ". .venv/bin/activate" in README  # how the `nbtasks` command comes on PATH
    assert "jupyter lab notebooks/quickstart.ipynb" in BASH
