"""imbalens.io: atomic writes keep normal permissions and never leave half a file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from imbalens.config import dump_config, merge_config
from imbalens.io import atomic_path, atomic_write_text


def test_atomic_write_gives_normal_permissions_and_round_trips(tmp_path: Path) -> None:
    cfg = merge_config(overrides=["train.epochs=2"])
    path = tmp_path / "run" / "config.yaml"
    dump_config(cfg, path)
    assert yaml.safe_load(path.read_text()) == cfg
    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "x.txt", "hello")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "x.txt"]


def test_atomic_path_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
