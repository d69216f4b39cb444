"""Assemble a grid's executed notebooks into a Jupyter Book (1.x) and build its HTML.

``imbalens book`` copies into ``runs/<grid>/_book/``: the repo's ``_config.yml`` (title
with the grid's name, execution off: the notebooks were executed by ``imbalens grid``),
the static pages of ``book/`` (``index.md``, ``methods.md``, ...), the grid's executed
``results`` and ``data`` pages, and every run's executed stage notebooks. It writes a
``_toc.yml`` in the ``jb-book`` format: a first part with Results, Data and Methods,
then one part per run with its stage pages in order. Cells papermill tagged
``injected-parameters`` and the notebooks' own ``parameters`` cells get the MyST-NB tag
``remove-cell``, so the book hides them by tag, not by position. Every page ends with a
small provenance line (the run's ``provenance.json``), and the footer of every page
gives the build's. ``jupyter-book build`` then writes ``_book/_build/html/``; a build
whose output reports an error fails. ``jupyter-book build .`` at the repository root
builds the same pages from every assembled ``runs/<grid>/_book/`` (the root
``_toc.yml`` finds them by glob).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from html import escape as html_escape
from pathlib import Path
from typing import Any

import nbformat
import yaml

from imbalens import runfolder as rf
from imbalens.io import atomic_write_text
from imbalens.paths import REPO
from imbalens.provenance import collect, footer_line, read_provenance
from imbalens.study.grid import STAGES, load_params
from imbalens.study.notebooks import INJECTED_TAG, PARAMETERS_TAG, error_outputs, tag_cells

log = logging.getLogger(__name__)

#: Hidden cells: papermill's injected parameters and the notebook's own defaults.
HIDE_RULES: dict[str, tuple[str, ...]] = {
    INJECTED_TAG: ("remove-cell",),
    PARAMETERS_TAG: ("remove-cell",),
}
#: The grid's pages, in the order of the book's first part; methods is a static page.
FRONT = ("results", "sensitivity", "data", "methods")
STAGE_TITLES = {
    "train": "Training",
    "performance": "Performance",
    "alignment": "Alignment",
    "concepts": "Concepts",
}


#: Sphinx warnings that mean a page of the book is missing or unreachable.
SERIOUS = ("nonexisting document", "toctree contains reference", "not readable")


class BookError(RuntimeError):
    """The book cannot be assembled or built; the message says what is missing."""


@dataclass
class Assembled:
    """An assembled (not yet built) book: its folder and what it holds."""

    root: Path
    runs: list[str]
    pages: list[str]
    errors: list[str]


def grid_dir_of(target: str | os.PathLike[str], runs: str | os.PathLike[str] = "runs") -> Path:
    """The grid folder of ``target``: a params YAML (``runs/<name>``) or a grid folder."""
    t = Path(target)
    if t.is_dir():
        return t.resolve()
    if t.suffix in (".yaml", ".yml"):
        return (Path(runs) / load_params(t).name).resolve()
    raise BookError(f"{t} is neither a grid folder nor a params .yaml file")


def _run_ids(grid_dir: Path) -> list[str]:
    """Run ids in the grid's order (grid.json), else the run folders alphabetically."""
    gj = grid_dir / rf.GRID_JSON
    if gj.is_file():
        ids = [r["id"] for r in json.loads(gj.read_text()).get("runs", [])]
        return [i for i in ids if (grid_dir / i).is_dir()]
    return sorted(p.name for p in grid_dir.iterdir() if p.is_dir() and (p / rf.CONFIG).is_file())


def _retitle(nb: nbformat.NotebookNode, suffix: str) -> None:
    """Append ``suffix`` to the notebook's first ``# `` heading (run pages share titles)."""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        lines = cell.source.splitlines()
        for i, line in enumerate(lines):
            if re.match(r"#\s", line):
                lines[i] = f"{line.rstrip()}: {suffix}"
                cell.source = "\n".join(lines)
                return
        return


#: keys of the repo's ``_config.yml`` that only the root build needs (there ``book/``
#: is a sub-folder; in ``_book/`` its content is the root and Jupyter Book finds
#: ``_static/`` and includes its .css/.js files itself)
ROOT_ONLY_SPHINX = ("html_static_path", "html_css_files", "html_js_files")
#: the class of the provenance footer (styled small in ``book/_static/imbalens.css``)
FOOTER_CLASS = "imbalens-provenance"


def book_config(
    cfg: dict[str, Any], grid: str, repo: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """The repo's root ``_config.yml`` adapted to a grid's ``_book/`` folder.

    Title with the grid's name, execution off, the root build's ``book/_static`` paths
    made ``_static``, and the footer of every page: the provenance of the build
    (:func:`imbalens.provenance.footer_line`; each run page adds its run's own).
    """
    cfg = dict(cfg)
    cfg["title"] = f"{cfg.get('title', 'imbalens')} ({grid})"
    cfg.setdefault("execute", {})["execute_notebooks"] = "off"
    cfg["only_build_toc_files"] = True
    # the repo excludes book/ build output and runs/*/_book/_build; here runs/ holds pages
    keep = [p for p in cfg.get("exclude_patterns", []) if not str(p).startswith(("runs", "book"))]
    cfg["exclude_patterns"] = sorted({*keep, "_build/*"})
    sphinx_cfg = dict((cfg.get("sphinx") or {}).get("config") or {})
    for key in ROOT_ONLY_SPHINX:
        sphinx_cfg.pop(key, None)
    cfg["sphinx"] = {**(cfg.get("sphinx") or {}), "config": sphinx_cfg}
    html = dict(cfg.get("html") or {})
    if "favicon" in html:
        html["favicon"] = str(html["favicon"]).removeprefix("book/")
    line = html_escape(footer_line(collect(repo=repo)).replace(" · config -", ""))
    html["extra_footer"] = f'<p class="{FOOTER_CLASS}">Book built with {line}</p>'
    cfg["html"] = html
    return cfg


def provenance_cell(run_dir: Path | None) -> nbformat.NotebookNode:
    """A last markdown cell: the run's provenance line (or the grid's, for grid pages)."""
    if run_dir is not None:
        text = f"Provenance of this run: {footer_line(read_provenance(run_dir))}"
    else:
        text = "Provenance of the grid's runs: see the table at the end of the results page."
    return nbformat.v4.new_markdown_cell(f'<p class="{FOOTER_CLASS}">{html_escape(text)}</p>')


def _copy_notebook(
    src: Path, dest: Path, title_suffix: str | None, errors: list[str], run_dir: Path | None = None
) -> None:
    nb = nbformat.read(src, as_version=4)
    tag_cells(nb, HIDE_RULES)
    if title_suffix:
        _retitle(nb, title_suffix)
    nb.cells.append(provenance_cell(run_dir))
    for err in error_outputs(nb):
        errors.append(f"{src}: {err}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest, nbformat.writes(nb))


#: Written into every book folder ``assemble`` creates: only such a folder is emptied.
BOOK_MARKER = ".imbalens-book"


def _claim_book_dir(root: Path, default: bool) -> None:
    """Create ``root`` or check that it is a book folder this command made before.

    A non-empty folder without :data:`BOOK_MARKER` was not written by ``imbalens book``
    and is never emptied (the default ``<grid>/_book`` lies in the grid's own folder).

    Raises:
        BookError: naming the folder and some of its entries.
    """
    if root.exists() and not root.is_dir():
        raise BookError(f"--out {root} is a file, not a folder; choose a new folder")
    entries = sorted(c.name for c in root.iterdir()) if root.is_dir() else []
    if entries and BOOK_MARKER not in entries and not default:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise BookError(
            f"refusing to use --out {root}: it is not empty ({shown}) and was not made by "
            f"`imbalens book` (no {BOOK_MARKER}); nothing was deleted. Choose a new or "
            f"empty folder"
        )
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / BOOK_MARKER, "made by `imbalens book`; emptied on every build\n")


def assemble(
    grid_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    repo: str | os.PathLike[str] = REPO,
) -> Assembled:
    """Copy config, static pages and executed notebooks into ``out``; write ``_toc.yml``.

    Args:
        grid_dir: ``runs/<grid>`` as written by :func:`imbalens.study.grid.run_grid`.
        out: the book folder (default ``<grid_dir>/_book``); emptied first when
            ``imbalens book`` made it, refused when it is another non-empty folder.
        repo: where ``_config.yml`` and ``book/`` are read from.

    Raises:
        BookError: when the grid has no executed notebook at all.
    """
    g = Path(grid_dir).resolve()
    repo = Path(repo)
    if not g.is_dir():
        raise BookError(f"grid folder {g} does not exist; run `imbalens grid PARAMS.yaml` first")
    root = Path(out).resolve() if out is not None else g / "_book"
    _claim_book_dir(root, default=out is None)
    _empty_book_dir(root)
    cfg = book_config(yaml.safe_load((repo / "_config.yml").read_text()) or {}, g.name, repo)
    atomic_write_text(root / "_config.yml", yaml.safe_dump(cfg, sort_keys=False))
    _copy_static_pages(repo / "book", root)

    errors: list[str] = []
    front = _copy_front_pages(g, root, errors)
    runs = _copy_run_pages(g, root, errors)
    if not runs and not [p for p in front if p != "methods"]:
        raise BookError(f"{g} holds no executed notebook; run `imbalens grid` first")
    atomic_write_text(root / "_toc.yml", yaml.safe_dump(book_toc(front, runs), sort_keys=False))
    for e in errors:
        log.warning("book: error output in %s", e)
    return Assembled(root, list(runs), front, errors)


def _empty_book_dir(root: Path) -> None:
    """Remove everything but :data:`BOOK_MARKER`: no page of an older grid state lingers."""
    for child in root.iterdir():
        if child.name == BOOK_MARKER:
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def _copy_static_pages(static: Path, root: Path) -> None:
    """Copy ``book/``'s static pages and assets (not the notebook sources) into ``root``.

    Raises:
        BookError: when ``book/index.md``, the book's root page, is missing.
    """
    for item in static.iterdir():
        # .py: the notebook sources; .ipynb: their jupytext pairs (not executed pages)
        if item.suffix in (".py", ".ipynb") or item.name.startswith((".", "_build", "__")):
            continue
        dest = root / item.name
        shutil.copytree(item, dest) if item.is_dir() else shutil.copy2(item, dest)
    if not (root / "index.md").is_file():
        raise BookError(f"{static / 'index.md'} is missing: the book needs a root page")


def _copy_front_pages(g: Path, root: Path, errors: list[str]) -> list[str]:
    """The grid's executed :data:`FRONT` pages (or their static ``.md``) that exist, in order."""
    front: list[str] = []
    for page in FRONT:
        executed = g / rf.PAGES_DIR / rf.NOTEBOOK.format(stage=page)
        if executed.is_file():
            _copy_notebook(executed, root / rf.NOTEBOOK.format(stage=page), None, errors)
            front.append(page)
        elif (root / f"{page}.md").is_file():
            front.append(page)
        else:
            log.warning("book: no %s page (%s absent)", page, executed)
    return front


def _copy_run_pages(g: Path, root: Path, errors: list[str]) -> dict[str, list[str]]:
    """Each run's executed stage notebooks: ``{run id: ["runs/<id>/<stage>", ...]}``."""
    runs: dict[str, list[str]] = {}
    for rid in _run_ids(g):
        pages = []
        for stage in STAGES:
            executed = g / rid / rf.NOTEBOOK.format(stage=stage)
            if executed.is_file():
                dest = root / "runs" / rid / rf.NOTEBOOK.format(stage=stage)
                _copy_notebook(executed, dest, rid, errors, g / rid)
                pages.append(f"runs/{rid}/{stage}")
        if pages:
            runs[rid] = pages
    return runs


def book_toc(front: list[str], runs: dict[str, list[str]]) -> dict[str, Any]:
    """The ``_toc.yml`` (``jb-book``): the study's pages, then one part per run.

    Example:
        >>> book_toc(["results"], {"r1": ["runs/r1/train"]})["parts"][1]
        {'caption': 'Run r1', 'chapters': [{'file': 'runs/r1/train'}]}
    """
    return {
        "format": "jb-book",
        "root": "index",
        "parts": [{"caption": "The study", "chapters": [{"file": p} for p in front]}]
        + [
            {"caption": f"Run {rid}", "chapters": [{"file": p} for p in pages]}
            for rid, pages in runs.items()
        ],
    }


def _jupyter_book() -> list[str]:
    exe = Path(sys.executable).with_name("jupyter-book")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("jupyter-book")
    if found:
        return [found]
    raise BookError("jupyter-book not found: install the project (`make install`)")


def build(book_dir: str | os.PathLike[str], strict: bool = False) -> Path:
    """Run ``jupyter-book build`` (HTML, no execution) and return the path of index.html.

    Raises:
        BookError: when the build exits non-zero or its output reports an error (or, with
            ``strict``, any warning); the message quotes those lines.
    """
    root = Path(book_dir).resolve()
    # --all: a fresh Sphinx environment, so every page's warnings are seen on every build
    cmd = [*_jupyter_book(), "build", str(root), "--builder", "html", "--all"]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    env = dict(os.environ, MPLBACKEND="Agg", NO_COLOR="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    text = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    bad = [
        line
        for line in text.splitlines()
        if re.search(r"\b(ERROR|CRITICAL)\b", line)
        or ("WARNING" in line and (strict or any(s in line for s in SERIOUS)))
    ]
    warnings = [line for line in text.splitlines() if "WARNING" in line]
    for line in warnings:
        log.warning("jupyter-book: %s", line.strip())
    index = root / "_build" / "html" / "index.html"
    if proc.returncode != 0 or bad or not index.is_file():
        tail = "\n".join(bad or text.splitlines()[-30:])
        raise BookError(f"jupyter-book build of {root} failed (exit {proc.returncode}):\n{tail}")
    log.info("book built with %d warning line(s): %s", len(warnings), index)
    return index


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Flags of ``imbalens book``."""
    parser.add_argument(
        "target",
        nargs="?",
        default="params/quick.yaml",
        help="params YAML (its grid under --runs) or a grid folder (default: params/quick.yaml)",
    )
    parser.add_argument("--runs", default="runs", help="runs folder of a params YAML")
    parser.add_argument("--out", default=None, help="book folder (default: <grid>/_book)")
    parser.add_argument("--strict", action="store_true", help="fail on any Sphinx warning")
    parser.add_argument(
        "--no-build", action="store_true", help="assemble the sources only, do not build"
    )


def cli(args: argparse.Namespace) -> int:
    """Run ``imbalens book``; prints the path of the built index.html."""
    try:
        grid_dir = grid_dir_of(args.target, args.runs)
        book = assemble(grid_dir, args.out)
        if args.no_build:
            sys.stdout.write(f"{book.root}\n")
            return 0
        index = build(book.root, strict=args.strict)
    except BookError as exc:
        log.error("%s", exc)
        return 1
    sys.stdout.write(f"book: {index}\nopen file://{index}\n")
    return 0
