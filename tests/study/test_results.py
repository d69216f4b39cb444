"""imbalens.study.results: reading fake run folders into tidy tables, the paper's numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from imbalens.study.results import (
    AVERAGE,
    load_grid,
    loss_table,
    paper_loss_table,
    paper_numbers,
    performance_rows,
    side_by_side,
    summary_class,
)


def write_run(
    grid: Path,
    model: str,
    loss: str,
    task: str = "multilabel",
    seed: int = 0,
    auroc: dict[str, float] | None = None,
    iobb: float | None = 0.3,
    ior: float = 0.2,
    disjoint: float | None = 2.0,
    unique: float = 1.0,
) -> Path:
    """A fake run folder with config.yaml, metrics.json, alignment summary and concepts."""
    run = grid / f"{model}-{loss}-{task}-s{seed}"
    run.mkdir(parents=True)
    cfg = {
        "data": {"root": "/data/phantom", "task": task},
        "model": {"name": model},
        "loss": {"name": loss},
        "train": {"seed": seed},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    auroc = auroc or ({"A": 0.8, "B": 0.6} if task == "multilabel" else {"Unhealthy": 0.7})
    metrics = {
        "auroc": auroc,
        "ap": {k: v / 2 for k, v in auroc.items()},
        "mean_prob": {k: 0.1 for k in auroc},
        "auroc_mean": sum(auroc.values()) / len(auroc),
        "ap_mean": sum(auroc.values()) / len(auroc) / 2,
        "mean_prob_mean": 0.1,
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "train.done").write_text("")
    if iobb is not None:
        # the column names imbalens.explain.alignment.summarise_alignment writes
        pd.DataFrame(
            {
                "finding": ["Mass", "all"],
                "iobb_mean": [iobb + 0.1, iobb],
                "ior_mean": [ior, ior],
                "iobb_n": [3, 5],
            }
        ).to_csv(run / "alignment_summary.csv", index=False)
    if disjoint is not None:
        (run / "concepts.json").write_text(json.dumps({"disjoint": disjoint, "unique": unique}))
        (run / "analysis.done").write_text("")
    return run


def test_load_grid_reads_runs_and_tables(tmp_path: Path) -> None:
    write_run(tmp_path, "resnet50", "bce", iobb=0.25, disjoint=3.0, unique=2.0)
    write_run(tmp_path, "resnet50", "wbce", iobb=0.35)
    write_run(tmp_path, "resnet50", "bce", task="binary", iobb=None, disjoint=None)
    (tmp_path / "_pages").mkdir()  # not a run: no config.yaml
    res = load_grid(tmp_path)
    assert len(res.runs) == 3
    assert res.losses == ["bce", "wbce"]
    assert res.tasks == ["multilabel", "binary"]
    status = dict(zip(res.runs["run_id"], res.runs["status"], strict=True))
    assert status["resnet50-bce-binary-s0"] == "trained"
    assert status["resnet50-bce-multilabel-s0"] == "analysed"
    # two classes + Average for each multi-label run, one "Unhealthy" row for binary
    assert len(res.performance) == 2 * 3 + 1
    avg = res.performance[res.performance["class"] == AVERAGE]
    assert avg["auroc"].tolist() == pytest.approx([0.7, 0.7])
    all_rows = res.alignment[res.alignment["finding"] == "all"].set_index("loss")
    assert all_rows.loc["wbce", "iobb"] == pytest.approx(0.35)
    assert res.concepts.set_index("loss").loc["bce", "disjoint"] == 3.0
    assert any("binary" in p and "concepts.json" in p for p in res.problems)


def test_loss_table_averages_seeds_and_uses_summary_row(tmp_path: Path) -> None:
    write_run(tmp_path, "t-densenet", "bce", seed=0, auroc={"A": 0.9, "B": 0.7}, iobb=0.2)
    write_run(tmp_path, "t-densenet", "bce", seed=1, auroc={"A": 0.7, "B": 0.5}, iobb=0.4)
    table = loss_table(load_grid(tmp_path))
    assert len(table) == 1
    row = table.iloc[0]
    assert row["n_seeds"] == 2
    assert row["auroc"] == pytest.approx((0.8 + 0.6) / 2)  # mean of the two Average rows
    assert row["iobb"] == pytest.approx(0.3)  # the "all" row, not Mass
    assert row["iobb_sd"] == pytest.approx(0.1 * 2**0.5)  # sd of 0.2 and 0.4 (ddof 1)
    assert row["disjoint_sd"] == 0.0  # both seeds wrote 2.0
    assert row["disjoint"] == 2.0


def test_failed_run_from_grid_json(tmp_path: Path) -> None:
    write_run(tmp_path, "resnet50", "bce")
    (tmp_path / "grid.json").write_text(
        json.dumps({"runs": [{"dir": "resnet50-bce-multilabel-s0", "status": "failed"}]})
    )
    res = load_grid(tmp_path)
    assert res.runs["status"].tolist() == ["failed"]


def test_unreadable_metrics_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    run = write_run(tmp_path, "resnet50", "bce")
    (run / "metrics.json").write_text("{not json")
    res = load_grid(tmp_path)
    assert res.performance.empty
    assert any("metrics.json" in p and "not valid JSON" in p for p in res.problems)


def test_missing_grid_dir_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_grid(tmp_path / "nowhere")


def test_performance_rows_binary_has_no_average() -> None:
    rows = performance_rows(
        {"auroc": {"Unhealthy": 0.7}, "ap": {"Unhealthy": 0.6}, "mean_prob": {"Unhealthy": 0.5}},
        "binary",
    )
    assert rows == [{"class": "Unhealthy", "auroc": 0.7, "ap": 0.6, "mean_prob": 0.5}]
    assert summary_class("binary") == "Unhealthy"
    assert summary_class("multilabel") == AVERAGE
    with pytest.raises(ValueError, match="ap"):
        performance_rows({"auroc": {"A": 0.5}}, "multilabel")


def test_paper_numbers_match_study_tables() -> None:
    data = paper_numbers()
    assert "Khakzar" in data["source"]
    table = paper_loss_table().set_index(["task", "model", "loss"])
    assert len(table) == 2 * 2 * 4
    # spot checks against docs/study.md Tables 1 and 2
    assert table.loc[("multilabel", "t-densenet", "wbce"), "iobb"] == 0.2836
    assert table.loc[("binary", "resnet50", "cbfocal"), "ior"] == 0.1955
    assert table.loc[("multilabel", "resnet50", "focal"), "unique"] == 570
    assert table.loc[("binary", "t-densenet", "bce"), "disjoint"] == 280
    assert math.isnan(table.loc[("binary", "t-densenet", "bce"), "auroc"])


def test_side_by_side_keeps_present_settings_and_marks_missing_losses(tmp_path: Path) -> None:
    write_run(tmp_path, "resnet50", "bce", iobb=0.25)
    write_run(tmp_path, "resnet50", "focal", iobb=0.45)
    ours = loss_table(load_grid(tmp_path))
    wide = side_by_side(ours, ("iobb", "ior"), "ours")
    assert list(wide.index) == [
        ("multi-label", "ResNet50", "IoBB"),
        ("multi-label", "ResNet50", "IoR"),
    ]
    assert wide.loc[("multi-label", "ResNet50", "IoBB"), ("paper", "BCE")] == 0.27
    assert wide.loc[("multi-label", "ResNet50", "IoBB"), ("ours", "Focal")] == 0.45
    assert math.isnan(wide.loc[("multi-label", "ResNet50", "IoBB"), ("ours", "WBCE")])
    assert wide.shape[1] == 8


def test_empty_and_partial_grids_do_not_crash(tmp_path: Path) -> None:
    from imbalens.study.claims import evaluate_claims
    from imbalens.study.results import design_gaps

    empty = load_grid(tmp_path)
    assert loss_table(empty).empty
    assert side_by_side(loss_table(empty), ("iobb", "ior"), "ours").empty
    assert evaluate_claims(empty).empty
    assert design_gaps(empty) == [
        f"no runs in {tmp_path} yet: run `imbalens grid` with its params file"
    ]
    write_run(tmp_path / "g", "resnet50", "bce", iobb=None, disjoint=None)
    partial = load_grid(tmp_path / "g")
    gaps = design_gaps(partial)
    assert "losses not in this grid: WBCE, Focal, CB-Focal" in gaps
    assert "runs without analysis results: resnet50-bce-multilabel-s0" in gaps
    claims = evaluate_claims(partial)
    assert claims["sign_holds"].isna().all()  # BCE alone: nothing to compare
    assert (claims["verdict"] == "no data").all()


def test_side_by_side_ci_marks_the_paper_as_without_ci() -> None:
    from imbalens.study.results import PAPER_NO_CI, side_by_side_ci

    nan = float("nan")
    unc = pd.DataFrame(
        {
            "model": "resnet50",
            "task": "multilabel",
            "label": ["all", "all", "Mass", "all"],
            "metric": ["iobb", "iobb", "iobb", "disjoint"],
            "loss": ["bce", "focal", "bce", "bce"],
            "value": [0.25, 0.45, 0.9, 3.0],
            "lo": [0.2, 0.4, 0.8, nan],
            "hi": [0.3, 0.5, 1.0, nan],
            "t_lo": nan,
            "t_hi": nan,
        }  # fmt: skip
    )
    wide = side_by_side_ci(unc, ("iobb", "disjoint"), "ours")
    assert list(wide.index) == [
        ("multi-label", "ResNet50", "IoBB"),
        ("multi-label", "ResNet50", "Disjoint"),
    ]
    row = wide.loc[("multi-label", "ResNet50", "IoBB")]
    assert row[("ours", "BCE")] == "0.250 [0.200, 0.300]"  # the "all" row, not Mass
    assert row[("ours", "WBCE")] == "—"
    assert row[(PAPER_NO_CI, "BCE")] == "0.27"
    assert wide.loc[("multi-label", "ResNet50", "Disjoint"), ("ours", "BCE")] == "3.000 (no CI)"
    assert wide.loc[("multi-label", "ResNet50", "Disjoint"), (PAPER_NO_CI, "Focal")] == "585"


def test_trained_run_dirs_keeps_runs_with_the_checkpoint(tmp_path: Path) -> None:
    bce = write_run(tmp_path, "resnet50", "bce", task="binary")
    focal = write_run(tmp_path, "resnet50", "focal", task="binary")
    write_run(tmp_path, "resnet50", "wbce", task="binary")  # no checkpoint at all
    for run, names in ((bce, ("best.pt", "last.pt")), (focal, ("last.pt",))):
        (run / "checkpoints").mkdir()
        for name in names:
            (run / "checkpoints" / name).write_bytes(b"")
    results = load_grid(tmp_path)
    assert results.trained_run_dirs("resnet50", "binary") == {"bce": bce}
    assert results.trained_run_dirs("resnet50", "binary", which="last") == {
        "bce": bce,
        "focal": focal,
    }
    assert results.trained_run_dirs("resnet50", "multilabel") == {}


def test_baselines_loaded_flagged_and_counted(tmp_path: Path) -> None:
    """baselines.csv + concepts_baselines.csv of each run: the 'all' rows, the flags
    (baselines the trained value does not beat) and the k/n summary."""
    from imbalens.study.results import baselines_summary, baselines_view, load_baselines

    for loss, trained in (("bce", 0.6), ("wbce", 0.2)):
        run = write_run(tmp_path, "resnet50", loss, task="binary")
        pd.DataFrame({
            "baseline": ["untrained", "uniform", "untrained", "uniform", "untrained"],
            "layers": ["all", "-", "all", "-", "all"],
            "finding": ["all", "all", "all", "all", "Mass"],
            "metric": ["iobb", "iobb", "otsu_iou", "otsu_iou", "iobb"],
            "value": [0.3, 1.0, 0.1, None, 0.9], "n": 5,
            "trained": [trained, trained, 0.2, 0.2, 0.1],
            "beats": [trained > 0.3, False, True, None, False],
        }).to_csv(run / "baselines.csv", index=False)  # fmt: skip
        pd.DataFrame({"baseline": "untrained", "layers": "all", "finding": "all",
                      "metric": ["disjoint", "unique"], "value": [10.0, 5.0], "n": 4,
                      "trained": [12.0, 4.0], "beats": [True, False]}).to_csv(
            run / "concepts_baselines.csv", index=False)  # fmt: skip
    long = load_baselines(load_grid(tmp_path))
    assert set(long["metric"]) == {"iobb", "disjoint", "unique"}  # 'all' rows, listed metrics
    assert len(long) == 2 * 4
    view = baselines_view(long)
    assert view.loc[("binary", "ResNet50", "BCE", "IoBB"), "not beaten"] == "uniform"
    assert view.loc[("binary", "ResNet50", "WBCE", "IoBB"), "not beaten"] == "untrained, uniform"
    assert view.loc[("binary", "ResNet50", "BCE", "Unique"), "not beaten"] == "untrained"
    assert view.loc[("binary", "ResNet50", "WBCE", "IoBB"), "trained"] == 0.2
    summary = baselines_summary(long)
    assert summary.loc["IoBB", "untrained"] == "1/2" and summary.loc["IoBB", "uniform"] == "0/2"
    assert summary.loc["Disjoint", "untrained"] == "2/2"
    assert baselines_view(long.iloc[0:0]).empty and baselines_summary(long.iloc[0:0]).empty
