"""The NIH ChestX-ray14 label vocabulary and the release's published statistics.

One place for the class order every other module uses. The 14 findings are kept in
alphabetical order, the order of the authors' official code (imba-explain), where the
optional 15th output "No Finding" sits at index 10, its alphabetical place.

Reference: Wang et al., "ChestX-ray8", CVPR 2017; counts from Data_Entry_2017.csv.
"""

from __future__ import annotations

FINDINGS: tuple[str, ...] = (
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
"""The 14 findings of the multi-label task, alphabetical (the official code's order)."""

NO_FINDING = "No Finding"
UNHEALTHY = "Unhealthy"
"""Name of the single output of the binary task (positive class: any finding)."""

BOXED_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
)
"""The 8 findings that have expert boxes in BBox_List_2017.csv (alphabetical)."""

BOX_LABEL_ALIASES: dict[str, str] = {"Infiltrate": "Infiltration"}
"""BBox_List_2017.csv spells "Infiltration" as "Infiltrate"."""

RELEASE_SIZE = 1024
"""Side in pixels of the released images; box coordinates are in this space."""

NIH_TOTAL_IMAGES = 112_120
NIH_IMAGE_COUNTS: dict[str, int] = {
    "No Finding": 60_361,
    "Infiltration": 19_894,
    "Effusion": 13_317,
    "Atelectasis": 11_559,
    "Nodule": 6_331,
    "Mass": 5_782,
    "Pneumothorax": 5_302,
    "Consolidation": 4_667,
    "Pleural_Thickening": 3_385,
    "Cardiomegaly": 2_776,
    "Emphysema": 2_516,
    "Edema": 2_303,
    "Fibrosis": 1_686,
    "Pneumonia": 1_431,
    "Hernia": 227,
}
"""Images per label in the full release (a multi-label image counts once per finding)."""

NIH_MEDIAN_BOX_FRACTION: dict[str, tuple[float, float]] = {
    "Atelectasis": (0.17, 0.12),
    "Effusion": (0.20, 0.27),
    "Cardiomegaly": (0.47, 0.37),
    "Infiltration": (0.22, 0.26),
    "Pneumonia": (0.22, 0.27),
    "Pneumothorax": (0.20, 0.20),
    "Mass": (0.12, 0.14),
    "Nodule": (0.07, 0.07),
}
"""Median expert box (width, height) as a fraction of the image side."""

TASKS: tuple[str, ...] = ("multilabel", "binary")


def class_names(task: str, include_no_finding: bool = False) -> list[str]:
    """Output names of a task, in output order.

    ``multilabel``: the 14 :data:`FINDINGS` (with ``include_no_finding`` "No Finding"
    is inserted at index 10, as in the official code); ``binary``: ``["Unhealthy"]``.

    Raises:
        ValueError: for an unknown task.
    """
    if task == "multilabel":
        names = list(FINDINGS)
        if include_no_finding:
            names.insert(10, NO_FINDING)
        return names
    if task == "binary":
        return [UNHEALTHY]
    raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
