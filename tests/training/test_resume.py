"""Resume after a kill: a run that dies mid-epoch and resumes ends exactly like one that didn't.

Run A trains uninterrupted (seeded, CPU, fp32, with augmentation). Run B is the same
config started as ``python -m imbalens.cli train`` in a subprocess that ends itself with
``os._exit`` right after optimiser step 7 (the test hook ``IMBALENS_TEST_CRASH_AFTER_STEP``)
while checkpoints are saved every 3 steps: its ``last.pt`` holds epoch 2, step 2 of 4 (global
step 6), so step 7 is lost and must be redone. B is then resumed (with a DataLoader worker,
which must not change anything) and must give A's metrics, history and weights. Both with
the per-image augmentation in the loader and with the batched one on the device (whose
crops are drawn from a generator seeded by (seed, rank, global step)).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from imbalens.data.prepared import prepare
from imbalens.training.checkpoint import load_checkpoint
from imbalens.training.train import CRASH_ENV, CRASH_EXIT_CODE, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


#: the run killed and resumed: augmentation on, cbfocal, 2 epochs of 4 steps, last.pt every 3
RESUME_RUN = {
    "loss": {"name": "cbfocal"},
    "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 64, "max_steps_per_epoch": 4}
    | {"lr": 1e-3, "progress": "off", "workers": 0, "checkpoint_every_steps": 3},
}


def _without_seconds(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "seconds"}


@pytest.mark.parametrize("augment_on", ["loader", "device"])
def test_killed_run_resumes_to_the_same_result(
    tiny_phantom: Path, tmp_path: Path, augment_on: str, small_config
) -> None:
    data: dict = {"augment_on": augment_on}
    if augment_on == "device":  # batches augmented in the loop, images from a prepared cache
        data["prepared"] = str(
            prepare(tiny_phantom, tmp_path / "cache", 32, workers=1).folder.parent
        )
    cfg = small_config(tiny_phantom, data={"augment": True, **data}, **RESUME_RUN)
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    train(cfg, run_a)

    # B: a separate process that dies after step 7 without any clean-up
    config_file = tmp_path / "b.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, CRASH_ENV: "7", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(
        [sys.executable, "-m", "imbalens.cli", "train", "--config", str(config_file)]
        + ["--out", str(run_b)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == CRASH_EXIT_CODE, killed.stderr[-2000:]
    assert not (run_b / "train.done").exists() and not (run_b / "metrics.json").exists()
    last = load_checkpoint(run_b / "checkpoints" / "last.pt")
    assert (last["epoch"], last["step"], last["global_step"]) == (1, 2, 6)  # mid-epoch 2
    assert len(last["history"]) == 1

    resumed = train({**cfg, "train": {**cfg["train"], "workers": 1}}, run_b)

    metrics_a = json.loads((run_a / "metrics.json").read_text())
    metrics_b = json.loads((run_b / "metrics.json").read_text())
    assert _without_seconds(metrics_b) == _without_seconds(metrics_a)
    assert resumed["auroc_mean"] == metrics_a["auroc_mean"]
    hist_a = pd.read_csv(run_a / "history.csv").drop(columns="seconds")
    hist_b = pd.read_csv(run_b / "history.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(hist_a, hist_b)
    assert hist_a["step"].tolist() == [4, 8]
    pd.testing.assert_frame_equal(
        pd.read_csv(run_a / "predictions_test.csv"), pd.read_csv(run_b / "predictions_test.csv")
    )
    for which in ("best", "last"):
        a = load_checkpoint(run_a / "checkpoints" / f"{which}.pt")
        b = load_checkpoint(run_b / "checkpoints" / f"{which}.pt")
        assert a["epoch"] == b["epoch"] and a["best_epoch"] == b["best_epoch"]
        for key, tensor in a["model"].items():
            diff = (tensor.double() - b["model"][key].double()).abs().max().item()
            assert diff <= 1e-6, (which, key, diff)
