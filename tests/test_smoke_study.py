"""The study end to end on the smoke grid: grid -> nbval -> jupyter-book -> headless Chromium.

``imbalens grid params/smoke.yaml`` runs the real book notebooks (a 300-image 64 px
phantom, one short epoch per run), ``pytest --nbval-lax`` re-executes the executed
notebooks, ``imbalens book`` builds the HTML, and Debian's Chromium (driven by
Playwright, never a downloaded browser) loads the results page from a local HTTP server
and checks that its tables and figures render without errors.
"""

from __future__ import annotations

import json
import os
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
    assert {p: v["status"] for p, v in gj["pages"].items()} == {"data": "done", "results": "done"}
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


def test_nbval_lax_on_executed_notebooks(smoke: Smoke) -> None:
    g = smoke.grid_dir
    # the executed notebooks re-run as they are (injected parameters included); a copy
    # keeps the originals for the book
    check = smoke.root / "nbval"
    shutil.copytree(g, check, ignore=shutil.ignore_patterns("_book"))
    notebooks = [str(check / rid / f"{s}.ipynb") for rid in RUN_IDS[:1] for s in STAGES]
    notebooks += [str(check / "_pages" / "data.ipynb"), str(check / "_pages" / "results.ipynb")]
    env = dict(os.environ, MPLBACKEND="module://matplotlib_inline.backend_inline")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider",
         "--nbval-kernel-name", "python3", "-o", "addopts=", "--rootdir", str(check), *notebooks],
        cwd=check, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


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
