"""imbalens.data.nih on the real nih-mini subset (2,467 NIH images, 256 px); skipped without it.

Known answers from shared/data/nih-mini/README.md and NIH's BBox_List_2017.csv.
Only the 880 boxed images are decoded, once (into a cached dataset shared by the tests).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from imbalens.data.findings import BOXED_FINDINGS, RELEASE_SIZE
from imbalens.data.nih import NIHData, NIHDataset, box_mask, load_boxes, load_nih

pytestmark = pytest.mark.nihmini

README_TRAIN = {  # "Label counts (train / test)" of nih-mini's README, train_val side
    "No Finding": 682,
    "Infiltration": 86,
    "Effusion": 59,
    "Atelectasis": 63,
    "Cardiomegaly": 32,
    "Nodule": 63,
    "Pneumothorax": 29,
    "Mass": 40,
    "Pneumonia": 22,
    "Consolidation": 55,
    "Pleural_Thickening": 56,
    "Emphysema": 28,
    "Edema": 14,
    "Fibrosis": 42,
    "Hernia": 16,
}
README_TEST = {
    "No Finding": 396,
    "Infiltration": 347,
    "Effusion": 331,
    "Atelectasis": 329,
    "Cardiomegaly": 206,
    "Nodule": 183,
    "Pneumothorax": 178,
    "Mass": 167,
    "Pneumonia": 138,
    "Consolidation": 98,
    "Pleural_Thickening": 51,
    "Emphysema": 47,
    "Edema": 45,
    "Fibrosis": 31,
    "Hernia": 6,
}


@pytest.fixture(scope="module")
def data(nih_mini_root: Path) -> NIHData:
    return load_nih(nih_mini_root, include_no_finding=True, val_fraction=0.1, split_seed=0)


@pytest.fixture(scope="module")
def boxed(data: NIHData) -> tuple[NIHDataset, float]:
    """The boxed split at 224 px, every image decoded once into the cache (timed)."""
    ds = data.dataset("boxed", 224, cache=True)
    return ds, ds.preload()


def test_counts_and_splits(data: NIHData) -> None:
    train, val, test = (data.images(s) for s in ("train", "val", "test"))
    assert len(train) + len(val) + len(test) == 2467
    assert len(train) + len(val) == 1047 and len(test) == 1420
    table = data.table.set_index("image")
    patients = [set(table.loc[names, "patient"]) for names in (train, val, test)]
    assert not patients[0] & patients[1]
    assert not (patients[0] | patients[1]) & patients[2]
    n_tv = len(patients[0] | patients[1])
    assert len(patients[1]) == round(0.1 * n_tv)


def test_label_counts_match_readme(data: NIHData) -> None:
    assert data.class_names[10] == "No Finding"
    pos_train, neg_train = data.counts("train")
    pos_val, _ = data.counts("val")
    pos_test, neg_test = data.counts("test")
    assert dict(zip(data.class_names, (pos_train + pos_val).tolist(), strict=True)) == README_TRAIN
    assert dict(zip(data.class_names, pos_test.tolist(), strict=True)) == README_TEST
    np.testing.assert_array_equal(neg_test, 1420 - pos_test)
    assert (pos_train + neg_train == len(data.images("train"))).all()


def test_boxes_scale_exactly(nih_mini_root: Path, data: NIHData) -> None:
    raw = pd.read_csv(nih_mini_root / "BBox_List_2017.csv", header=None, skiprows=1)
    raw = raw.iloc[:, :6].set_axis(["image", "label", "x", "y", "w", "h"], axis=1)
    boxes = load_boxes(nih_mini_root, 224)
    assert len(boxes) == 984 and boxes["image"].nunique() == 880
    assert set(boxes["finding"]) == set(BOXED_FINDINGS)
    assert (boxes["finding"] == raw["label"].replace({"Infiltrate": "Infiltration"})).all()
    s = 224 / RELEASE_SIZE
    np.testing.assert_array_equal(boxes["x0"], raw["x"] * s)
    np.testing.assert_array_equal(boxes["y0"], raw["y"] * s)
    np.testing.assert_allclose(boxes["x1"], (raw["x"] + raw["w"]) * s, rtol=0, atol=1e-10)
    np.testing.assert_allclose(boxes["y1"], (raw["y"] + raw["h"]) * s, rtol=0, atol=1e-10)
    assert data.boxes(224).equals(boxes)  # every boxed image is usable


def test_boxed_split(data: NIHData) -> None:
    boxed = data.images("boxed")
    assert len(boxed) == 880
    assert set(boxed) <= set(data.images("test"))


def test_boxed_item(data: NIHData, boxed: tuple[NIHDataset, float]) -> None:
    ds, _ = boxed
    assert len(ds) == 880
    boxes = data.boxes(224)
    counts = boxes["image"].value_counts()
    i = ds.names.index(counts.index[0])  # an image with several boxes
    item = ds[i]
    assert item["image"].shape == (3, 224, 224) and item["image"].dtype == torch.float32
    assert item["target"].shape == (15,)
    assert item["box_mask"].shape == (8, 224, 224) and item["box_mask"].dtype == torch.bool
    mine = boxes[boxes["image"] == ds.names[i]]
    code = [BOXED_FINDINGS.index(f) for f in mine["finding"]]
    assert item["has_box"].nonzero().flatten().tolist() == sorted(set(code))
    expected = box_mask(np.column_stack([code, mine[["x0", "y0", "x1", "y1"]]]), 224)
    np.testing.assert_array_equal(item["box_mask"].numpy(), expected)
    # each box's finding is among the image's labels
    for finding in mine["finding"]:
        assert item["target"][data.class_names.index(finding)] == 1.0
    # the pixel count of a single box: centres inside [x0, x1) x [y0, y1)
    one = boxes[boxes["image"].map(counts) == 1].iloc[0]
    j = ds.names.index(one["image"])
    cols = np.arange(224) + 0.5
    inside_x = ((cols >= one["x0"]) & (cols < one["x1"])).sum()
    inside_y = ((cols >= one["y0"]) & (cols < one["y1"])).sum()
    assert int(ds[j]["box_mask"].sum()) == inside_x * inside_y


def test_reading_speed(boxed: tuple[NIHDataset, float], capsys: pytest.CaptureFixture) -> None:
    ds, decode_seconds = boxed
    start = time.perf_counter()
    for i in range(200):
        ds[i]
    item_ms = (time.perf_counter() - start) / 200 * 1e3
    with capsys.disabled():
        print(
            f"\nnih-mini: decoded {len(ds)} PNGs (256 px -> 224) in {decode_seconds:.2f} s "
            f"({decode_seconds / len(ds) * 1e3:.2f} ms/image, thread pool); cached boxed "
            f"item {item_ms:.2f} ms"
        )
    assert ds.cache is not None and ds.cache[:880].any(axis=(1, 2)).all()
