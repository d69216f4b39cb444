"""imbalens.paths: the repository root, the notebook folder, paths relative to the root."""

from __future__ import annotations

from pathlib import Path

import pytest

from imbalens import paths


def test_repo_is_the_checkout_root() -> None:
    assert (paths.REPO / "pyproject.toml").is_file()
    assert (paths.REPO / "src" / "imbalens" / "paths.py").is_file()
    assert Path(paths.__file__).resolve() == paths.REPO / "src" / "imbalens" / "paths.py"
    assert paths.NOTEBOOK_DIR == paths.REPO / "book" and paths.NOTEBOOK_DIR.is_dir()


def test_repo_root_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("IMBALENS_REPO", raising=False)
    assert paths.repo_root() == paths.REPO
    monkeypatch.setenv("IMBALENS_REPO", str(tmp_path))
    assert paths.repo_root() == tmp_path
    assert paths.repo_path("params/smoke.yaml") == tmp_path / "params" / "smoke.yaml"


def test_repo_root_without_a_pyproject_is_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("IMBALENS_REPO", raising=False)
    monkeypatch.setattr(paths, "REPO", tmp_path / "installed")
    monkeypatch.chdir(tmp_path)
    assert paths.repo_root() == tmp_path


def test_repo_path_keeps_absolute_paths_and_expands_the_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("IMBALENS_REPO", raising=False)
    assert paths.repo_path("/abs/x") == Path("/abs/x")
    assert paths.repo_path("pyproject.toml") == paths.REPO / "pyproject.toml"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.repo_path("~/data") == tmp_path / "data"
