"""Provenance: git commit and dirty flag, versions, config hash, footer (CLI: tests/test_cli.py)."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from imbalens import provenance as pv
from imbalens import runfolder as rf
from imbalens.config import config_hash, merge_config


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "checkout"
    r.mkdir()
    _git(r, "init", "-q")
    (r / "a.txt").write_text("one\n")
    _git(r, "add", "a.txt")
    _git(r, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    return r


def test_git_state_commit_and_dirty_flag(repo: Path) -> None:
    head = _git(repo, "rev-parse", "HEAD")
    assert pv.git_state(repo) == {"commit": head, "dirty": False}
    (repo / "untracked.txt").write_text("runs and data do not count\n")
    assert pv.git_state(repo)["dirty"] is False
    (repo / "a.txt").write_text("two\n")
    assert pv.git_state(repo) == {"commit": head, "dirty": True}


def test_git_state_outside_a_checkout(tmp_path: Path) -> None:
    assert pv.git_state(tmp_path) == {"commit": None, "dirty": None}


def test_write_provenance_records_hash_versions_machine(tmp_path: Path, repo: Path) -> None:
    cfg = merge_config({"train": {"epochs": 3}})
    path = pv.write_provenance(tmp_path / "run", cfg, repo=repo)
    assert path == tmp_path / "run" / rf.PROVENANCE == rf.RunFolder(tmp_path / "run").provenance
    prov = json.loads(path.read_text())
    assert prov["config_hash"] == config_hash(cfg)
    assert prov["git"]["commit"] == _git(repo, "rev-parse", "HEAD")
    assert prov["packages"]["torch"] == metadata.version("torch")
    assert prov["packages"]["numpy"] == metadata.version("numpy")
    import torch

    assert prov["machine"]["torch_threads"] == torch.get_num_threads()
    assert prov["machine"]["gpus"] == (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    assert pv.read_provenance(tmp_path / "run") == prov
    # the grid's hash wins over the config's
    pv.write_provenance(tmp_path / "run", cfg, repo=repo, chash="abc123")
    assert pv.read_provenance(tmp_path / "run")["config_hash"] == "abc123"


def test_footer_line_known_answer() -> None:
    prov = {
        "created": "2026-01-02T03:04:05+00:00",
        "git": {"commit": "0123456789abcdef", "dirty": True},
        "packages": {"imbalens": "0.1.0", "torch": "2.9.0"},
        "machine": {"cpu": "Xeon", "cpu_count": 2, "torch_threads": 1, "gpus": []},
        "config_hash": "a1b2c3d4e5f6",
    }
    assert pv.footer_line(prov) == (
        "imbalens 0.1.0 · commit 0123456 (dirty) · torch 2.9.0 · config a1b2c3d4e5f6 · "
        "Xeon (2 cores, 1 torch threads), no GPU · recorded 2026-01-02T03:04:05+00:00"
    )
    assert pv.footer_line(None) == "provenance: not recorded"


def test_grid_table_lists_runs_with_provenance(tmp_path: Path) -> None:
    for rid in ("b-run", "a-run"):
        pv.write_provenance(tmp_path / rid, chash=f"h-{rid}")
    (tmp_path / "no-record").mkdir()
    rows = pv.grid_table(tmp_path)
    assert [r["run"] for r in rows] == ["a-run", "b-run"]
    assert [r["config_hash"] for r in rows] == ["h-a-run", "h-b-run"]
