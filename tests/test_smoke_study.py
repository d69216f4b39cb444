"""The study end to end on the smoke grid: grid -> nbval -> jupyter-book -> headless Chromium.

``imbalens grid params/smoke.yaml`` runs the real book notebooks (a 300-image 64 px
phantom, one short epoch per run), strict ``pytest --nbval`` re-executes the executed
notebooks and compares every output (volatile parts sanitized by
``tests/nbval_sanitize.cfg``), each notebook runs again on its own defaults (they name
this grid's first run) and one through the papermill CLI, ``imbalens book`` builds the
HTML and ``jupyter-book build`` at a repo-like root builds the same pages, and Debian's
Chromium (driven by Playwright, never a downloaded browser) loads the results page from
a local HTTP server and checks that its tables and figures render without errors.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from imbalens.study.grid import STAGES, marker_path, recorded_hash

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("IMBALENS_CHROMIUM", "/usr/bin/chromium"))
RUN_IDS = ["t-densenet-bce-binary-s0", "t-densenet-cbfocal-binary-s0"]
# Console messages of the Jupyter Book 1.x theme itself, not of our pages: sphinx-thebe's
# inline config is emitted twice per page (no launch buttons are used), the pydata theme
# logs an empty stored colour mode on a fresh profile, and Chromium asks for a favicon
# the book does not have (checked against the server's log below).
THEME_NOISE = ("Identifier 'THEBE_JS_URL' has already been declared",)


@dataclass
class Smoke:
    root: Path
    grid_dir: Path
    seconds: float
    output: str


def imbalens(*args: str, cwd: Path = REPO, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "imbalens.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Smoke:
    root = tmp_path_factory.mktemp("smoke")
    t0 = time.perf_counter()
    proc = imbalens(
        "grid",
        "params/smoke.yaml",
        "--out",
        str(root / "runs"),
        "--set",
        f"data.root={root / 'data'}",
    )
    seconds = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    (root / "grid.log").write_text(text)
    assert proc.returncode == 0, text[-6000:]
    return Smoke(root, root / "runs" / "smoke", seconds, proc.stdout)


def test_smoke_grid_ran_every_stage(smoke: Smoke) -> None:
    g = smoke.grid_dir
    gj = json.loads((g / "grid.json").read_text())
    assert [r["id"] for r in gj["runs"]] == RUN_IDS
    assert {r["status"] for r in gj["runs"]} == {"done"}
    assert {p: v["status"] for p, v in gj["pages"].items()} == {
        "data": "done",
        "results": "done",
        "sensitivity": "done",
    }
    # the phantom was generated at the overridden root, which the configs name absolutely
    assert (smoke.root / "data" / "phantom.json").is_file()
    for rid in RUN_IDS:
        run = g / rid
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["data"]["root"] == str(smoke.root / "data")
        assert cfg["loss"]["name"] == rid.split("-")[2]
        for stage in STAGES:
            assert (run / f"{stage}.ipynb").is_file(), (rid, stage)
            marker = json.loads(marker_path(run, stage).read_text())
            assert marker["config_hash"] == recorded_hash(run)
        for made in (
            "train.done",
            "metrics.json",
            "analysis.done",
            "alignment.csv",
            "concepts.json",
        ):
            assert (run / made).is_file(), (rid, made)
        assert not list(run.glob("*.failed.ipynb")) and not list(run.glob(".*.partial.ipynb"))
        for stage in STAGES:  # no library noise (e.g. tqdm's IProgress warning) on the pages
            nb = json.loads((run / f"{stage}.ipynb").read_text())
            streams = [
                "".join(o.get("text", ""))
                for c in nb["cells"]
                for o in c.get("outputs", [])
                if o.get("name") == "stderr"
            ]
            assert not [t for t in streams if "TqdmWarning" in t], (rid, stage, streams)
    assert (g / "_pages" / "data.ipynb").is_file() and (g / "_pages" / "results.ipynb").is_file()
    sys.stderr.write(f"\nsmoke grid: {smoke.seconds:.0f} s\n")


def test_smoke_grid_rerun_skips_everything(smoke: Smoke) -> None:
    g = smoke.grid_dir
    before = {p: p.stat().st_mtime_ns for p in g.rglob("*.ipynb")}
    args = ["grid", "params/smoke.yaml", "--out", str(smoke.root / "runs")]
    args += ["--set", f"data.root={smoke.root / 'data'}"]
    if os.environ.get("IMBALENS_NOTEBOOKS"):
        args += ["--notebooks", os.environ["IMBALENS_NOTEBOOKS"]]
    proc = imbalens(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gj = json.loads((g / "grid.json").read_text())
    stages = {s["status"] for r in gj["runs"] for s in r["stages"].values()}
    assert stages == {"skipped"}
    assert {v["status"] for v in gj["pages"].values()} == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in g.rglob("*.ipynb")} == before


SANITIZE = REPO / "tests" / "nbval_sanitize.cfg"
INLINE = "module://matplotlib_inline.backend_inline"


def test_nbval_strict_on_executed_notebooks(smoke: Smoke) -> None:
    g = smoke.grid_dir
    # the executed notebooks re-run as they are (injected parameters included) and every
    # output but images must match (tests/nbval_sanitize.cfg: Styler ids, addresses,
    # timings, temporary paths); a copy keeps the originals for the book
    check = smoke.root / "nbval"
    shutil.copytree(g, check, ignore=shutil.ignore_patterns("_book"))
    notebooks = [str(check / rid / f"{s}.ipynb") for rid in RUN_IDS[:1] for s in STAGES]
    notebooks += [str(check / "_pages" / "data.ipynb"), str(check / "_pages" / "results.ipynb")]
    env = dict(os.environ, MPLBACKEND=INLINE)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "-v", "-p", "no:cacheprovider",
         "--nbval-sanitize-with", str(SANITIZE), "--nbval-kernel-name", "python3",
         "-o", "addopts=", "--rootdir", str(check), *notebooks],
        cwd=check, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    compared = [line for line in proc.stdout.splitlines() if "::ipynb::Cell" in line]
    assert compared and all("PASSED" in line for line in compared), compared
    assert len(compared) >= 40, len(compared)
    sys.stderr.write(f"\nstrict nbval: {len(compared)} cells compared\n")


def test_sanitizer_masks_only_volatile_parts() -> None:
    from nbval.plugin import get_sanitize_patterns

    patterns = get_sanitize_patterns(SANITIZE.read_text())
    assert len(patterns) == 5

    def clean(text: str) -> str:
        for regex, replace in patterns:
            text = re.sub(regex, replace, text)
        return text

    a = '<style>#T_58293 td {}</style><table id="T_58293"> <Styler at 0x7f16335a1290>'
    b = '<style>#T_47005 td {}</style><table id="T_47005"> <Styler at 0x7f1664182f90>'
    assert clean(a) == clean(b)
    assert clean("done in 3.2 s, 85 ms") == clean("done in 12.0 s, 7 ms")
    assert clean("/tmp/pytest-of-root/pytest-7/smoke0/runs") == "/TMP/smoke0/runs"
    # numbers of the results stay compared
    assert clean("AUROC 0.433, IoBB 0.003") != clean("AUROC 0.434, IoBB 0.003")
    assert clean("T-DenseNet, BCE, binary: best epoch 1") == "T-DenseNet, BCE, binary: best epoch 1"


def test_runs_record_provenance_and_papermill_paths(smoke: Smoke) -> None:
    from imbalens.provenance import read_provenance

    for rid in RUN_IDS:
        run = smoke.grid_dir / rid
        prov = read_provenance(run)
        assert prov is not None, rid
        assert prov["config_hash"] == recorded_hash(run)
        assert prov["packages"]["torch"] and "cpu_count" in prov["machine"]
        for stage in STAGES:
            meta = json.loads((run / f"{stage}.ipynb").read_text())["metadata"]["papermill"]
            assert meta["input_path"] == str(REPO / "book" / f"{stage}.py")
            assert meta["output_path"] == str(run / f"{stage}.ipynb")


@pytest.fixture(scope="module")
def repo_like(smoke: Smoke) -> Path:
    """The smoke folder as a repository root: runs/smoke, data/ (its phantom), params/."""
    root = smoke.root
    if not (root / "params").exists():
        (root / "params").symlink_to(REPO / "params")
    return root


def test_notebooks_run_on_their_defaults(repo_like: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imbalens.study.notebooks import error_outputs, execute

    # relative defaults are resolved under $IMBALENS_REPO (here: this grid's folder)
    monkeypatch.setenv("IMBALENS_REPO", str(repo_like))
    monkeypatch.setenv("MPLBACKEND", INLINE)
    out = repo_like / "defaults"
    for page in (*STAGES, "data", "results", "sensitivity"):
        ex = execute(REPO / "book" / f"{page}.py", out / f"{page}.ipynb", {}, cwd=out)
        nb = json.loads(ex.output.read_text())
        assert nb["metadata"]["papermill"]["parameters"] == {}
        assert not [
            c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])
        ]
        import nbformat

        assert not error_outputs(nbformat.reads(ex.output.read_text(), as_version=4)), page
    train = (out / "train.ipynb").read_text()
    assert "T-DenseNet, BCE, binary: best epoch" in train  # the smoke grid's first run


def test_one_stage_through_the_papermill_cli(smoke: Smoke, tmp_path: Path) -> None:
    shutil.copytree(REPO / "book", tmp_path / "book", ignore=shutil.ignore_patterns("*.ipynb"))
    shutil.copy2(REPO / "jupytext.toml", tmp_path / "jupytext.toml")
    subprocess.run(
        [sys.executable, "-m", "jupytext", "--sync", "book/performance.py"],
        cwd=tmp_path, check=True, capture_output=True,
    )  # fmt: skip
    helped = subprocess.run(
        [sys.executable, "-m", "papermill", "--help-notebook", "book/performance.ipynb"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "run_dir" in helped and "runs/smoke/t-densenet-bce-binary-s0" in helped
    run = smoke.grid_dir / RUN_IDS[1]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", "book/performance.ipynb", "out.ipynb",
         "-p", "run_dir", str(run), "--kernel", "python3"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
        env=dict(os.environ, MPLBACKEND=INLINE),
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "out.ipynb").read_text())
    assert out["metadata"]["papermill"]["parameters"] == {"run_dir": str(run)}
    assert not [
        o for c in out["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"
    ]
    sys.stderr.write(f"\npapermill CLI, performance stage: {seconds:.1f} s\n")


@pytest.fixture(scope="module")
def built(smoke: Smoke) -> Path:
    proc = imbalens("book", str(smoke.grid_dir))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    index = smoke.grid_dir / "_book" / "_build" / "html" / "index.html"
    assert str(index) in proc.stdout
    return index.parent


def test_book_has_every_page(built: Path) -> None:
    assert (built / "results.html").is_file()
    assert (built / "data.html").is_file()
    assert (built / "methods.html").is_file()
    for rid in RUN_IDS:
        for stage in STAGES:
            assert (built / "runs" / rid / f"{stage}.html").is_file(), (rid, stage)
    # papermill's injected cell is hidden by its tag
    html = (built / "runs" / RUN_IDS[0] / "performance.html").read_text()
    assert "injected-parameters" not in html and 'run_dir = "' not in html


def test_root_build_holds_every_page_of_the_grid_book(built: Path, repo_like: Path) -> None:
    """`jupyter-book build .` at a repository root with runs/smoke assembled."""
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(REPO / name, repo_like / name)
    if not (repo_like / "book").exists():
        shutil.copytree(REPO / "book", repo_like / "book", ignore=shutil.ignore_patterns("*.ipynb"))
    exe = Path(sys.executable).with_name("jupyter-book")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(exe), "build", str(repo_like), "--builder", "html", "--all"],
        capture_output=True, text=True, timeout=900, check=False,
        env=dict(os.environ, NO_COLOR="1"),
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    text = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    assert proc.returncode == 0, text[-4000:]
    warnings = [line for line in text.splitlines() if "WARNING" in line]
    assert not [w for w in warnings if "favicon" in w or "_static" in w], warnings
    html = repo_like / "_build" / "html"
    toc = yaml.safe_load((smoke_book := built.parent.parent / "_toc.yml").read_text())
    pages = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    prefix = built.parent.parent.relative_to(repo_like)  # runs/smoke/_book

    def page_html(p: str) -> Path:  # methods is book/methods at the root, a grid page else
        return html / "book" / "methods.html" if p == "methods" else html / prefix / f"{p}.html"

    missing = [p for p in pages if not page_html(p).is_file()]
    assert not missing, (missing, smoke_book)
    assert (html / "_static" / "favicon.svg").is_file() and (
        html / "_static" / "imbalens.css"
    ).is_file()
    run_page = (html / prefix / "runs" / RUN_IDS[0] / "train.html").read_text()
    assert "imbalens-provenance" in run_page and "Provenance of this run: imbalens" in run_page
    conf = (repo_like / "_build" / "html" / "index.html").read_text()
    assert "executablebooks/jupyter-book" not in conf
    n_pages = len(list(html.rglob("*.html"))) - len(list(html.glob("_*/**/*.html")))
    sys.stderr.write(
        f"\nroot build: {seconds:.0f} s, {len(warnings)} warning line(s), {n_pages} pages\n"
    )


def test_grid_book_pages_have_provenance_footers(built: Path) -> None:
    run_page = (built / "runs" / RUN_IDS[0] / "alignment.html").read_text()
    assert "Provenance of this run: imbalens" in run_page
    index = (built / "index.html").read_text()
    assert 'class="imbalens-provenance"' in index and "Book built with imbalens" in index
    results = (built / "results.html").read_text()
    assert "Provenance of the grid" in results and "config_hash" in results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    log: Path


@pytest.fixture(scope="module")
def server(built: Path, smoke: Smoke) -> Iterator[Server]:
    port = _free_port()
    log = smoke.root / "http.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(built)],
        stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )  # fmt: skip
    try:
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "http.server did not start"
                time.sleep(0.2)
        yield Server(f"http://127.0.0.1:{port}", log)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_results_page_renders_in_headless_chromium(server: Server, smoke: Smoke) -> None:
    if not CHROMIUM.is_file():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{CHROMIUM} missing in CI (.ci/run installs Debian's chromium)")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    console_errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})

            def on_console(m: object) -> None:
                if m.type == "error":  # type: ignore[attr-defined]
                    console_errors.append(m.text)  # type: ignore[attr-defined]

            def on_error(e: object) -> None:
                console_errors.append(str(e))

            page.on("console", on_console)
            page.on("pageerror", on_error)
            response = page.goto(f"{server.url}/results.html", wait_until="load", timeout=60_000)
            assert response is not None and response.status == 200
            page.wait_for_load_state("networkidle", timeout=30_000)
            shot = smoke.root / "results.png"
            page.screenshot(path=str(shot), full_page=True)
            headings = page.locator("h1, h2").all_inner_texts()
            tables = page.locator("table").count()
            text = page.locator("main").inner_text()
            images = page.evaluate(
                "Array.from(document.querySelectorAll('main img'))"
                ".map(i => [i.complete, i.naturalWidth, i.src.slice(0, 60)])"
            )
            errors_shown = page.locator(".output.error, .output.traceback, .traceback").count()
            # a table wider than the text column must sit in a horizontally scrollable box
            clipped = page.evaluate(
                """() => {
                  const box = document.querySelector('article') || document.querySelector('main');
                  const right = box.getBoundingClientRect().right;
                  const bad = [];
                  for (const t of document.querySelectorAll('main table')) {
                    let el = t.parentElement, scrolls = false;
                    while (el && el.tagName !== 'MAIN') {
                      const ox = getComputedStyle(el).overflowX;
                      if (ox === 'auto' || ox === 'scroll') { scrolls = true; break; }
                      el = el.parentElement;
                    }
                    const r = t.getBoundingClientRect().right;
                    if (!scrolls && r > right + 1) bad.push([t.id || t.className, r, right]);
                  }
                  return bad;
                }"""
            )
            # one run page too, for people looking at the screenshots; its console is not
            # checked (MathJax comes from a CDN, which an offline machine cannot reach)
            page.remove_listener("console", on_console)
            page.remove_listener("pageerror", on_error)
            run_page = f"{server.url}/runs/{RUN_IDS[-1]}/alignment.html"
            assert page.goto(run_page, wait_until="load", timeout=60_000).status == 200
            page.wait_for_load_state("networkidle", timeout=30_000)
            run_shot = smoke.root / "run-alignment.png"
            page.screenshot(path=str(run_shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    assert any(h.startswith("Table 1") for h in headings), headings
    assert any(h.startswith("Table 2") for h in headings), headings
    assert any("claims" in h for h in headings), headings
    assert tables >= 3, f"only {tables} tables on the results page"
    assert "paper" in text.lower()
    assert images, "no figure on the results page"
    assert all(done and width > 0 for done, width, _ in images), images
    assert errors_shown == 0
    assert not clipped, f"tables run past the text column, unscrollable: {clipped}"
    assert "Traceback" not in text and "Error:" not in text
    ours = [e for e in console_errors if not e.startswith(THEME_NOISE)]
    assert not ours, console_errors
    missing = [line for line in server.log.read_text().splitlines() if '" 404 ' in line]
    assert not missing, missing  # the favicon too (book/_static/favicon.svg)
    keep = os.environ.get("IMBALENS_SCREENSHOT_DIR")  # pytest prunes old tmp folders
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for png in (shot, run_shot):
            shutil.copy2(png, Path(keep) / png.name)
    sys.stderr.write(f"\nscreenshots: {shot}, {run_shot}\n")
