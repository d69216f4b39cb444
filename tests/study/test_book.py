"""imbalens.study.book: the pure pieces of assembling a grid's book (no build)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from imbalens import provenance as pv
from imbalens.study.book import (
    BOOK_MARKER,
    FOOTER_CLASS,
    BookError,
    _copy_static_pages,
    _empty_book_dir,
    _retitle,
    book_toc,
    grid_dir_of,
    provenance_cell,
)

REPO = Path(__file__).resolve().parents[2]


def test_book_toc_puts_the_study_first_then_one_part_per_run() -> None:
    toc = book_toc(
        ["results", "data", "methods"],
        {"r1": ["runs/r1/train", "runs/r1/performance"], "r0": ["runs/r0/train"]},
    )
    assert toc == {
        "format": "jb-book",
        "root": "index",
        "parts": [
            {
                "caption": "The study",
                "chapters": [{"file": "results"}, {"file": "data"}, {"file": "methods"}],
            },
            {
                "caption": "Run r1",
                "chapters": [{"file": "runs/r1/train"}, {"file": "runs/r1/performance"}],
            },
            {"caption": "Run r0", "chapters": [{"file": "runs/r0/train"}]},  # grid order kept
        ],
    }
    assert book_toc([], {})["parts"] == [{"caption": "The study", "chapters": []}]


def test_retitle_appends_to_the_first_heading_only() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("# not a heading: code"),
        nbformat.v4.new_markdown_cell("# Training one run\n\ntext"),
        nbformat.v4.new_markdown_cell("# Another heading"),
    ]
    _retitle(nb, "t-densenet-bce-binary-s0")
    assert nb.cells[0].source == "# not a heading: code"
    assert nb.cells[1].source == "# Training one run: t-densenet-bce-binary-s0\n\ntext"
    assert nb.cells[2].source == "# Another heading"


def test_retitle_stops_at_the_first_markdown_cell() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("intro"), nbformat.v4.new_markdown_cell("# Title")]
    _retitle(nb, "x")
    assert [c.source for c in nb.cells] == ["intro", "# Title"]


def test_provenance_cell_of_a_grid_page() -> None:
    cell = provenance_cell(None)
    assert cell.cell_type == "markdown"
    assert cell.source == (
        f'<p class="{FOOTER_CLASS}">Provenance of the grid&#x27;s runs: see the table at the '
        "end of the results page.</p>"
    )


def test_grid_dir_of_a_folder_and_a_bad_target(tmp_path: Path) -> None:
    assert grid_dir_of(tmp_path) == tmp_path.resolve()
    with pytest.raises(BookError, match="neither a grid folder nor a params"):
        grid_dir_of(tmp_path / "notes.txt")


def test_static_pages_skip_notebook_sources(tmp_path: Path) -> None:
    static, root = tmp_path / "book", tmp_path / "out"
    (static / "_static").mkdir(parents=True)
    root.mkdir()
    for name in ("index.md", "methods.md", "train.py", "train.ipynb", ".hidden", "_static/a.css"):
        (static / name).write_text(name)
    _copy_static_pages(static, root)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "_static",
        "_static/a.css",
        "index.md",
        "methods.md",
    ]
    (static / "index.md").unlink()
    (tmp_path / "empty").mkdir()
    with pytest.raises(BookError, match="index.md is missing"):
        _copy_static_pages(static, tmp_path / "empty")


def test_empty_book_dir_keeps_only_the_marker(tmp_path: Path) -> None:
    (tmp_path / BOOK_MARKER).write_text("")
    (tmp_path / "runs" / "r0").mkdir(parents=True)
    (tmp_path / "_toc.yml").write_text("old")
    _empty_book_dir(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [BOOK_MARKER]


def test_book_config_adapts_the_root_config_to_a_grid_book() -> None:
    import yaml

    from imbalens.study.book import book_config

    root = yaml.safe_load((REPO / "_config.yml").read_text())
    assert root["html"]["favicon"] == "book/_static/favicon.svg"
    assert root["sphinx"]["config"]["html_static_path"] == ["book/_static"]
    assert root["repository"]["url"] == ""  # not the Jupyter Book default
    cfg = book_config(root, "smoke", REPO)
    assert cfg["title"].endswith("(smoke)")
    assert cfg["html"]["favicon"] == "_static/favicon.svg"
    sphinx = cfg["sphinx"]["config"]
    assert not {"html_static_path", "html_css_files", "html_js_files"} & set(sphinx)
    assert sphinx["nb_merge_streams"] is True
    assert not [p for p in cfg["exclude_patterns"] if p.startswith(("runs", "book"))]
    assert "_build/*" in cfg["exclude_patterns"]
    footer = cfg["html"]["extra_footer"]
    assert footer.startswith('<p class="imbalens-provenance">Book built with imbalens ')
    assert f"commit {pv.git_state(REPO)['commit'][:7]}" in footer
    assert root["html"]["favicon"] == "book/_static/favicon.svg"  # the input is not changed
