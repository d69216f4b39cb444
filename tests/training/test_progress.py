"""Progress: the ``progress`` setting, training step lines with img/s and ETA, grid ETA."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from imbalens.config import ConfigError
from imbalens.data.synth import generate
from imbalens.training.progress import (
    GridProgress,
    StepLines,
    eta,
    format_seconds,
    log_every,
    parse_progress,
    step_progress,
)


@pytest.mark.parametrize(
    ("value", "mode"),
    [("auto", "auto"), ("on", "on"), ("OFF", "off"), (" on ", "on"), (True, "on"), (False, "off")],
)
def test_parse_progress_accepts_yaml_booleans(value: object, mode: str) -> None:
    assert parse_progress(value) == mode


@pytest.mark.parametrize("value", ["yes", "bar", 1, None, ""])
def test_parse_progress_rejects_anything_else(value: object) -> None:
    with pytest.raises(ConfigError, match=r"train.progress must be auto, on or off"):
        parse_progress(value)


def test_yaml_on_is_true_and_means_on() -> None:
    from imbalens.config import merge_config

    cfg = merge_config(overrides=["train.progress=on"])
    assert cfg["train"]["progress"] is True  # YAML 1.1: on -> true
    assert parse_progress(cfg["train"]["progress"]) == "on"


def test_eta_and_format_known_answers() -> None:
    assert eta(10.0, 5, 20) == 30.0
    assert eta(10.0, 0, 20) == float("inf")
    assert [format_seconds(s) for s in (0, 59.4, 75, 3725, float("inf"))] == [
        "0s", "59s", "1m15s", "1h02m", "?"
    ]  # fmt: skip
    assert log_every(40) == 8 and log_every(3) == 1


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_step_lines_img_per_second_and_eta() -> None:
    clock, out = Clock(), io.StringIO()
    bar = StepLines(
        total=40, initial=0, desc="epoch 1", batch_size=32, every=10, stream=out, clock=clock
    )
    for _ in range(10):
        clock.t += 0.5  # 2 steps/s, 64 img/s
        bar.update(1)
        bar.set_postfix(loss="0.4123")
    assert out.getvalue() == "epoch 1: step 10/40 (25%), 64.0 img/s, loss 0.4123, ETA 15s\n"
    for _ in range(30):
        clock.t += 0.5
        bar.update(1)
    assert out.getvalue().splitlines()[-1].startswith("epoch 1: step 40/40 (100%), 64.0 img/s")
    assert len(out.getvalue().splitlines()) == 4


def test_step_lines_resumed_epoch_counts_from_the_resume_step() -> None:
    clock, out = Clock(), io.StringIO()
    bar = StepLines(
        total=10, initial=5, desc="epoch 2", batch_size=4, every=5, stream=out, clock=clock
    )
    for _ in range(5):
        clock.t += 1.0
        bar.update(1)
    assert out.getvalue() == "epoch 2: step 10/10 (100%), 4.0 img/s, ETA 0s\n"


def test_step_progress_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from tqdm import tqdm

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(step_progress("auto", 10, 0, "e", 4), StepLines)
    assert isinstance(step_progress(True, 10, 0, "e", 4), tqdm)
    assert not isinstance(step_progress("off", 10, 0, "e", 4), StepLines | tqdm)
    assert not isinstance(step_progress("on", 10, 0, "e", 4, is_main=False), StepLines | tqdm)
    with pytest.raises(ConfigError):
        step_progress("maybe", 10, 0, "e", 4)


def test_grid_progress_logs_eta(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    g = GridProgress(8, enabled=False, clock=clock)
    caplog.set_level(logging.INFO, logger="imbalens.training.progress")
    clock.t += 20
    g.update(2)
    g.close()
    assert caplog.messages == ["grid: 2/8 stages, 20s elapsed, ETA 1m00s"]


STAGE = """\
# %% tags=["parameters"]
run_dir = ""

# %%
print("ok")
"""


def test_grid_logs_stage_start_end_and_eta(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One line when each stage starts, one when it ends, one with the grid's ETA; and the
    run folder gets provenance.json with the run's config hash."""
    import json

    import yaml

    from imbalens import runfolder as rf
    from imbalens.study.grid import recorded_hash, run_grid

    nb = tmp_path / "nb"
    nb.mkdir()
    for stage in ("train", "performance"):
        (nb / f"{stage}.py").write_text(STAGE)
    # the stub stages read nothing, but the grid pre-flights data.root
    generate(tmp_path / "data", n_images=12, size=16, seed=0, workers=1)
    params = tmp_path / "p.yaml"
    raw = {
        "name": "tiny",
        "base": {"data": {"root": str(tmp_path / "data")}},
        "axes": {"loss.name": ["bce"]},
        "run_id": "{loss.name}",
        "stages": ["train", "performance"],
    }
    params.write_text(yaml.safe_dump(raw))
    caplog.set_level(logging.INFO)
    report = run_grid(params, tmp_path / "runs", notebook_dir=nb, pages=False, progress=False)
    assert report.ok
    msgs = [m for m in caplog.messages if m.startswith(("bce /", "grid: "))]
    assert [m.split(" in ")[0] for m in msgs] == [
        "bce / train started",
        "bce / train done",
        msgs[2],
        "bce / performance started",
        "bce / performance done",
        msgs[5],
    ]
    assert msgs[2].startswith("grid: 1/2 stages, ") and " ETA " in msgs[2]
    assert msgs[5].startswith("grid: 2/2 stages, ") and msgs[5].endswith("ETA 0s")
    run = tmp_path / "runs" / "tiny" / "bce"
    prov = json.loads((run / rf.PROVENANCE).read_text())
    assert prov["config_hash"] == recorded_hash(run)
