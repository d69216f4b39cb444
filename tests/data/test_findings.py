"""imbalens.data.findings: the label vocabulary, its order and the release's statistics."""

from __future__ import annotations

import pytest

from imbalens.data.findings import (
    BOX_LABEL_ALIASES,
    BOXED_FINDINGS,
    FINDINGS,
    NIH_IMAGE_COUNTS,
    NIH_MEDIAN_BOX_FRACTION,
    NIH_TOTAL_IMAGES,
    NO_FINDING,
    RELEASE_SIZE,
    TASKS,
    UNHEALTHY,
    class_names,
)


def test_the_14_findings_in_the_official_order() -> None:
    assert FINDINGS == (
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Effusion",
        "Emphysema",
        "Fibrosis",
        "Hernia",
        "Infiltration",
        "Mass",
        "Nodule",
        "Pleural_Thickening",
        "Pneumonia",
        "Pneumothorax",
    )
    assert list(FINDINGS) == sorted(FINDINGS)


def test_no_finding_is_the_15th_output_at_index_10() -> None:
    names = class_names("multilabel", include_no_finding=True)
    assert len(names) == 15 and names.index(NO_FINDING) == 10 == names.index("No Finding")
    assert names[9] == "Mass" and names[11] == "Nodule"
    assert [n for n in names if n != NO_FINDING] == list(FINDINGS)
    assert class_names("multilabel") == list(FINDINGS)
    assert class_names("multilabel") is not class_names("multilabel")  # a fresh list


def test_binary_task_and_unknown_task() -> None:
    assert class_names("binary") == [UNHEALTHY] == ["Unhealthy"]
    assert class_names("binary", include_no_finding=True) == ["Unhealthy"]
    assert TASKS == ("multilabel", "binary")
    with pytest.raises(ValueError, match="unknown task 'multiclass'"):
        class_names("multiclass")


def test_boxed_findings_and_the_infiltrate_alias() -> None:
    assert BOXED_FINDINGS == (
        "Atelectasis",
        "Cardiomegaly",
        "Effusion",
        "Infiltration",
        "Mass",
        "Nodule",
        "Pneumonia",
        "Pneumothorax",
    )
    assert set(BOXED_FINDINGS) <= set(FINDINGS)
    assert BOX_LABEL_ALIASES == {"Infiltrate": "Infiltration"}
    assert set(NIH_MEDIAN_BOX_FRACTION) == set(BOXED_FINDINGS)


def test_release_statistics() -> None:
    assert RELEASE_SIZE == 1024
    assert NIH_TOTAL_IMAGES == 112_120
    assert set(NIH_IMAGE_COUNTS) == {*FINDINGS, NO_FINDING}
    assert NIH_IMAGE_COUNTS[NO_FINDING] == 60_361 and NIH_IMAGE_COUNTS["Hernia"] == 227
    # a multi-label image counts once per finding: the counts add up to more than the images
    assert sum(NIH_IMAGE_COUNTS.values()) > NIH_TOTAL_IMAGES
    counts = list(NIH_IMAGE_COUNTS.values())
    assert counts == sorted(counts, reverse=True)  # listed by prevalence
