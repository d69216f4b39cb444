"""imbalens.study.dataviz: the data page's prevalence table and figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from imbalens.data.findings import FINDINGS, NO_FINDING
from imbalens.data.synth import read_manifest

ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)


def test_data_page_prevalence_table(tiny_phantom: Path) -> None:
    from imbalens.paths import repo_path
    from imbalens.study.dataviz import prevalence

    table = prevalence({"phantom": tiny_phantom})
    counts = read_manifest(tiny_phantom)["counts"]
    for label in ("No Finding", "Infiltration", "Hernia"):
        n = counts["labels_train_val"][label] + counts["labels_test"][label]
        assert table.loc[label, "phantom"] == pytest.approx(n / 400)
    assert table.index[0] == NO_FINDING  # sorted by NIH's prevalence
    assert table.loc["Hernia", "NIH (full)"] == pytest.approx(227 / 112_120)
    assert repo_path("/abs/x") == Path("/abs/x")
    assert (repo_path("pyproject.toml")).is_file()


def test_prevalence_known_answer(tmp_path: Path) -> None:
    from imbalens.study.dataviz import LABELS, prevalence

    rows = ["No Finding", "Hernia|Mass", "Mass", "No Finding"]
    lines = [ENTRY_HEADER] + [
        f"{i:08d}_000.png,{labs},0,{i},40,M,PA,2500,2048,0.143,0.143"
        for i, labs in enumerate(rows, start=1)
    ]
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    table = prevalence({"four": tmp_path})
    assert list(table.columns) == ["NIH (full)", "four"]
    assert set(table.index) == set(LABELS) and len(table) == 15
    assert LABELS == (NO_FINDING, *FINDINGS)
    assert table.loc["No Finding", "four"] == 0.5
    assert table.loc["Mass", "four"] == 0.5
    assert table.loc["Hernia", "four"] == 0.25
    assert table.loc["Effusion", "four"] == 0.0
    assert table.loc["No Finding", "NIH (full)"] == pytest.approx(60_361 / 112_120)
    # rows in NIH's order: No Finding, Infiltration, Effusion, ..., Hernia
    assert list(table.index[:3]) == ["No Finding", "Infiltration", "Effusion"]
    assert table.index[-1] == "Hernia"


def test_prevalence_bars_one_bar_per_label_and_set() -> None:
    import matplotlib.pyplot as plt
    import pandas as pd

    from imbalens.study.dataviz import prevalence_bars

    table = pd.DataFrame({"a": [0.5, 0.1, 0.01], "b": [0.4, 0.2, 0.02]}, index=["x", "y", "z"])
    fig = prevalence_bars(table, title="T")
    ax = fig.axes[0]
    assert len(ax.patches) == 6 and ax.get_xscale() == "log" and ax.get_title() == "T"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["x", "y", "z"]
    plt.close(fig)
