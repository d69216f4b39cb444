"""Sensitivity of the loss rankings: Kendall's tau on hand-made tables; one real run."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from imbalens.study.sensitivity import kendall_table, measure_grid, measure_run, ranking_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LOSSES = ("bce", "wbce", "focal", "cbfocal")


def _table(settings: dict[str, list[float]], reference: str) -> pd.DataFrame:
    rows = []
    for setting, values in settings.items():
        for loss, v in zip(LOSSES, values, strict=True):
            rows.append(
                {
                    "model": "t-densenet",
                    "task": "binary",
                    "loss": loss,
                    "factor": "dissection",
                    "metric": "unique",
                    "setting": setting,
                    "value": v,
                    "is_reference": setting == reference,
                }
            )
    return pd.DataFrame(rows)


def test_kendall_tau_same_reversed_and_one_swap() -> None:
    df = _table(
        {
            "q=0.01": [4.0, 3.0, 2.0, 1.0],
            "q=0.04": [40.0, 30.0, 20.0, 10.0],  # same order, other scale: tau = 1
            "q=0.005": [1.0, 2.0, 3.0, 4.0],  # reversed: tau = -1
            "layer3": [4.0, 3.0, 1.0, 2.0],  # one adjacent swap of 6 pairs: (5 - 1) / 6
        },
        reference="q=0.01",
    )
    tau = kendall_table(df).set_index("setting")["tau"]
    assert tau["q=0.01"] == pytest.approx(1.0) and tau["q=0.04"] == pytest.approx(1.0)
    assert tau["q=0.005"] == pytest.approx(-1.0)
    assert tau["layer3"] == pytest.approx(4 / 6)
    assert (kendall_table(df)["reference"] == "q=0.01").all()
    rank = ranking_table(df).set_index("setting")["ranking"]
    assert rank["q=0.005"] == "cbfocal > focal > wbce > bce"
    assert rank["layer3"] == "bce > wbce > cbfocal > focal"


def test_kendall_needs_one_reference() -> None:
    df = _table({"a": [1.0, 2.0, 3.0, 4.0], "b": [1.0, 2.0, 3.0, 4.0]}, reference="none")
    with pytest.raises(ValueError, match="reference"):
        kendall_table(df)


def _checkpointed_run(root, folder, **overrides):
    """A binary T-DenseNet run folder with a random-init best checkpoint, 32 px."""
    from imbalens.config import dump_config, merge_config
    from imbalens.data.findings import class_names
    from imbalens.runfolder import RunFolder
    from imbalens.training.checkpoint import save_checkpoint
    from imbalens.training.models import build_model

    cfg = merge_config(
        {
            "data": {"root": str(root), "image_size": 32, "task": "binary"},
            "model": {"name": "t-densenet"},
            "analysis": {"batch_size": 4},
            **overrides,
        }
    )
    run = RunFolder(folder)
    torch.manual_seed(0)
    model = build_model("t-densenet", len(class_names("binary")))
    save_checkpoint(run.best, {"model": model.state_dict(), "config": cfg})
    dump_config(cfg, run.config)
    return run


def test_measure_run_from_a_checkpoint(tiny_phantom, tmp_path) -> None:
    run = _checkpointed_run(
        tiny_phantom, tmp_path / "grid" / "t-densenet-wbce", loss={"name": "wbce"}
    )
    df = measure_run(run.path, qs=(0.04,), max_images=4)
    cam = df[df["factor"] == "cam"]
    assert set(cam["setting"]) == {"feature", "input"}
    assert set(cam["metric"]) == {"iobb", "ior", "pointing", "topk_iou"}
    dis = df[df["factor"] == "dissection"]
    # the default q of t-densenet (0.01) is always measured: it is the reference
    assert set(dis["setting"]) == {"features.norm5 q=0.04", "features.norm5 q=0.01"}
    assert dis.loc[dis["is_reference"], "setting"].unique().tolist() == ["features.norm5 q=0.01"]
    # a smaller q switches fewer cells on: never more unique concepts
    u = dis[dis["metric"] == "unique"].set_index("q")["value"]
    assert u[0.01] <= u[0.04]
    assert (run.path / "sensitivity.csv").is_file()
    again = measure_grid(tmp_path / "grid", qs=(0.04,), max_images=4)  # from sensitivity.csv
    pd.testing.assert_frame_equal(again, df, check_dtype=False)
    other = measure_grid(tmp_path / "grid", qs=(0.04,), max_images=5)  # other settings: redone
    assert set(other["max_images"].astype(str)) == {"5"}


def _parameter(page: str, name: str) -> object:
    """The literal ``name = ...`` of a book page's parameters cell."""
    import ast

    from imbalens.paths import repo_path
    from imbalens.study.notebooks import PARAMETERS_TAG, read_source

    nb = read_source(repo_path(f"book/{page}.py"))
    cell = next(c for c in nb.cells if PARAMETERS_TAG in c.metadata.get("tags", []))
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.Assign) and node.targets[0].id == name:  # type: ignore[attr-defined]
            return ast.literal_eval(node.value)
    raise AssertionError(f"book/{page}.py has no parameter {name}")


def test_concepts_stage_measures_what_the_sensitivity_page_reads() -> None:
    # each run's concepts notebook writes sensitivity.csv in the run's own (parallel)
    # job; the grid-level page re-measures only where max_images differs
    assert _parameter("concepts", "sensitivity_images") == _parameter("sensitivity", "max_images")


def test_measure_run_runs_in_the_runs_precision(tiny_phantom, tmp_path, monkeypatch) -> None:
    """Every forward pass of the re-measurement runs in the run's train.precision, as the
    analysis stages do, so its reference setting is the stage's own computation."""
    import contextlib

    import imbalens.training.precision as P

    run = _checkpointed_run(tiny_phantom, tmp_path / "grid" / "r", train={"precision": "bf16"})
    seen = []

    def recording(device, precision):
        seen.append((torch.device(device).type, precision))
        return contextlib.nullcontext()

    monkeypatch.setattr(P, "autocast_context", recording)
    measure_run(run.path, qs=(0.04,), max_images=4, device="cpu")
    # two CAM normalisations + one activation pass of the layer, each batch in bf16
    assert len(seen) >= 3 and set(seen) == {("cpu", "bf16")}
