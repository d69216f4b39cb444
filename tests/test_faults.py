"""Nothing lost, ever (issue #15): data-loss refusals, locks, fault injection."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from imbalens.config import ConfigError
from imbalens.data.synth import ForeignFolder, generate
from imbalens.study.grid import run_grid


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (a folder's exact content)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture()
def real_copy(tmp_path: Path) -> Path:
    """A folder of 'real' data whose label file has another name (no phantom.json)."""
    d = tmp_path / "COPY"
    (d / "images").mkdir(parents=True)
    (d / "images" / "00000001_000.png").write_bytes(b"\x89PNG real bytes")
    (d / "Data_Entry_2020_v2.csv").write_text("Image Index,Finding Labels\n")
    (d / "train_val_list.txt").write_text("00000001_000.png\n")
    (d / "test_list.txt").write_text("")
    return d


def test_generate_refuses_a_folder_it_did_not_write(real_copy: Path) -> None:
    before = tree_digest(real_copy)
    with pytest.raises(ForeignFolder, match=r"refusing to write a phantom into .*COPY"):
        generate(real_copy, n_images=20, size=16, workers=1)
    assert tree_digest(real_copy) == before


def test_grid_with_phantom_block_never_overwrites_real_data(
    tmp_path: Path, real_copy: Path
) -> None:
    params = tmp_path / "g.yaml"
    raw = {
        "name": "g",
        "phantom": {"n_images": 20, "size": 16, "workers": 1},
        "base": {"data": {"root": "nowhere"}},
        "axes": {"loss.name": ["bce"]},
        "stages": ["train"],
    }
    params.write_text(yaml.safe_dump(raw))
    before = tree_digest(real_copy)
    # no phantom is written there; the pre-flight then names the missing label file
    with pytest.raises(ConfigError, match=r"data\.root .*COPY.*Data_Entry_2017\.csv not found"):
        run_grid(
            params, tmp_path / "runs", overrides=[f"data.root={real_copy}"], prepare_only=True,
            progress=False,
        )  # fmt: skip
    assert tree_digest(real_copy) == before
    assert not (real_copy / "phantom.json").exists()


def test_generate_writes_into_an_empty_folder_and_its_own(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    out.mkdir()
    m = generate(out, n_images=12, size=16, workers=1)
    assert m["counts"]["images"] == 12
    m2 = generate(out, n_images=14, size=16, workers=1)  # its own folder: rewritten
    assert m2["counts"]["images"] == 14


def test_book_out_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    from imbalens.cli import main
    from imbalens.study.book import BOOK_MARKER, BookError, assemble

    grid = tmp_path / "runs" / "g"
    grid.mkdir(parents=True)
    mine = tmp_path / "DIR"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.txt").write_text("three years of work")
    (mine / "sub" / "notes.md").write_text("more")
    before = tree_digest(mine)
    with pytest.raises(BookError, match=r"refusing to use --out .*DIR.*thesis\.txt"):
        assemble(grid, mine)
    assert tree_digest(mine) == before
    assert main(["book", str(grid), "--out", str(mine), "--no-build"]) == 1
    assert tree_digest(mine) == before
    # a new folder is claimed (marker) and may be rebuilt, its old pages removed
    fresh = tmp_path / "BOOK"
    try:
        assemble(grid, fresh)
    except BookError:
        pass  # an empty grid has no notebook to show; the folder is still claimed
    assert (fresh / BOOK_MARKER).is_file()
    (fresh / "old-page.md").write_text("stale")
    try:
        assemble(grid, fresh)
    except BookError:
        pass
    assert not (fresh / "old-page.md").exists()
