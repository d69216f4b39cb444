"""jupytext pairing (jupytext.toml): an edit crosses book/*.py <-> book/*.ipynb both ways,
and syncing never rewrites the committed sources."""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(p.name for p in (REPO / "book").glob("*.py"))


def jupytext(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "jupytext", *args], cwd=cwd, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """book/*.py and jupytext.toml in a scratch folder (no paired .ipynb yet)."""
    (tmp_path / "book").mkdir()
    for name in SOURCES:
        shutil.copy2(REPO / "book" / name, tmp_path / "book" / name)
    shutil.copy2(REPO / "jupytext.toml", tmp_path / "jupytext.toml")
    return tmp_path


def _touch_later(path: Path, than: Path) -> None:
    """Make ``path`` newer than ``than`` (jupytext --sync takes the newest as the source)."""
    t = max(than.stat().st_mtime, time.time()) + 2
    os.utime(path, (t, t))


def _added(before: str, after: str) -> list[str]:
    return [
        line[1:]
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="")
        if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
    ]


def test_sources_are_paired_and_sync_does_not_churn(checkout: Path) -> None:
    assert len(SOURCES) == 7
    before = {n: (checkout / "book" / n).read_bytes() for n in SOURCES}
    out = jupytext(checkout, "--sync", *[f"book/{n}" for n in SOURCES])
    assert "not a paired notebook" not in out
    for n in SOURCES:
        assert (checkout / "book" / n).read_bytes() == before[n], f"{n} rewritten by --sync"
        nb = nbformat.read(checkout / "book" / n.replace(".py", ".ipynb"), as_version=4)
        assert nb.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    # a second sync of everything (now from the .ipynb side too) changes nothing either
    jupytext(checkout, "--sync", *[f"book/{n.replace('.py', '.ipynb')}" for n in SOURCES])
    assert {n: (checkout / "book" / n).read_bytes() for n in SOURCES} == before


def test_edit_in_the_notebook_reaches_the_source(checkout: Path) -> None:
    book = checkout / "book"
    py, ipynb = book / "train.py", book / "train.ipynb"
    original = py.read_text()
    others = {n: (book / n).read_bytes() for n in SOURCES if n != "train.py"}
    jupytext(checkout, "--to", "ipynb", "book/train.py")  # the first step
    nb = nbformat.read(ipynb, as_version=4)
    md = next(c for c in nb.cells if c.cell_type == "markdown" and "## Overview" in c.source)
    md.source += "\n\nAn edit made in Jupyter."
    nbformat.write(nb, ipynb)
    _touch_later(ipynb, py)
    jupytext(checkout, "--sync", "book/train.ipynb")
    assert _added(original, py.read_text()) == ["#", "# An edit made in Jupyter."]
    assert {n: (book / n).read_bytes() for n in others} == others


def test_edit_in_the_source_reaches_the_notebook(checkout: Path) -> None:
    book = checkout / "book"
    py, ipynb = book / "performance.py", book / "performance.ipynb"
    jupytext(checkout, "--sync", "book/performance.py")
    cells_before = [c.source for c in nbformat.read(ipynb, as_version=4).cells]
    text = py.read_text().replace(
        "# ## Overview\n", "# ## Overview\n#\n# An edit made in an editor.\n", 1
    )
    py.write_text(text)
    _touch_later(py, ipynb)
    jupytext(checkout, "--sync", "book/performance.py")
    cells_after = [c.source for c in nbformat.read(ipynb, as_version=4).cells]
    changed = [(a, b) for a, b in zip(cells_before, cells_after, strict=True) if a != b]
    assert len(changed) == 1
    assert changed[0][1] == changed[0][0].replace(
        "## Overview\n", "## Overview\n\nAn edit made in an editor.\n", 1
    )
    assert py.read_text() == text  # the sync wrote nothing back into the source
