"""Packaging: environment.yml installs what pyproject.toml declares; `make help` lists targets."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def normalise(req: str) -> str:
    """PEP 503 name (lowercase, runs of -_. -> -) plus the version spec without spaces."""
    req = re.sub(r"\s+", "", req)
    m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(.*)", req)
    assert m, f"not a requirement: {req!r}"
    name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
    spec = ",".join(sorted(m.group(2).split(","))) if m.group(2) else ""
    return name + spec


def test_normalise_known_answers() -> None:
    assert normalise("Jupyter_Book >=1.0, <2") == "jupyter-book<2,>=1.0"
    assert normalise("scikit-image>=0.22") == "scikit-image>=0.22"
    assert normalise("PyYAML") == "pyyaml"


def test_environment_yml_matches_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = project["dependencies"] + extras["test"] + extras["dask"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = [p for p in pip if not p.startswith("-")]  # "-e ." installs the project itself
    assert "-e ." in pip
    assert sorted(map(normalise, listed)) == sorted(map(normalise, declared))
    assert len(listed) == len(set(map(normalise, listed)))
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python.split("=")[1] in project["requires-python"]


def test_make_help_lists_the_targets() -> None:
    if shutil.which("make") is None:
        pytest.fail("make is not installed")
    out = subprocess.run(
        ["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    listed = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"install", "test", "study", "book", "clean", "help"} <= listed


def test_license_file_is_mit_and_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text


def test_citation_cites_the_paper_and_this_project() -> None:
    import imbalens

    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["version"] == project["version"] == imbalens.__version__
    paper = cff["preferred-citation"]
    assert [a["family-names"] for a in paper["authors"]][:2] == ["Khakzar", "Li"]
    assert paper["year"] == 2022 and "Data Imbalance" in paper["title"]
    assert {"type": "other", "value": "arXiv:2204.01729"} in paper["identifiers"]


def test_dev_extra_has_jupyter_and_jupytext() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    dev = [normalise(r) for r in extras["dev"]]
    assert "imbalens[test]" in extras["dev"]
    assert any(r.startswith(("jupyterlab", "notebook")) for r in dev), dev
    assert any(r.startswith("jupytext") for r in dev), dev


def test_jupytext_config_pairs_the_book() -> None:
    cfg = tomllib.loads((REPO / "jupytext.toml").read_text())
    assert cfg["formats"] == "book///ipynb,book///py:percent"
    for nb in sorted((REPO / "book").glob("*.py")):
        head = nb.read_text().split("# ---\n")[1]
        assert "#     formats: ipynb,py:percent\n" in head, nb
    assert "*.ipynb" in (REPO / ".gitignore").read_text().split()
