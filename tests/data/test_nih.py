"""imbalens.data.nih on tiny generated NIH-layout fixtures, both Data_Entry_2017.csv revisions.

The fixture: 20 train_val patients (1..20) and 4 test patients (21..24), two images each
(48 images), 32 px PNGs except one RGBA 48 px and one 16-bit 64 px image. Labels are
"No Finding" except the ones in LABELS. Boxes (1,024-px release space) in BOXES.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from nih_layout import (
    ENTRY_HEADER,
    I16_IMAGE,
    LABELS,
    RGBA_IMAGE,
    SIZE,
    TEST_PATIENTS,
    TRAIN_VAL_PATIENTS,
    grey_content,
    image_names,
    write_nih,
)
from PIL import Image

from imbalens.data.findings import BOXED_FINDINGS, FINDINGS
from imbalens.data.nih import (
    DataWarning,
    NIHDataset,
    box_mask,
    denormalize,
    index_images,
    load_boxes,
    load_nih,
    read_box_list,
    read_data_entry,
    read_image,
)


@pytest.fixture(scope="module")
def nih_2020(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nih(tmp_path_factory.mktemp("nih2020"), "2020")


@pytest.fixture(scope="module")
def nih_2017(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nih(tmp_path_factory.mktemp("nih2017"), "2017")


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("revision", ["2017", "2020"])
def test_data_entry_both_revisions(tmp_path: Path, revision: str) -> None:
    root = write_nih(tmp_path, revision, images=False)
    table = read_data_entry(root / "Data_Entry_2017.csv")
    assert len(table) == 48
    assert list(table.columns) == [
        "image",
        "labels",
        "follow_up",
        "patient",
        "age",
        "sex",
        "view",
    ]
    row = table.set_index("image").loc["00000003_001.png"]
    assert row["labels"] == ("Mass", "Nodule")  # sorted in class order
    assert row["follow_up"] == 1
    assert row["patient"] == "3"
    assert row["age"] == 33.0
    assert row["sex"] == "M"
    labels = dict(zip(table["image"], table["labels"], strict=True))
    assert labels["00000001_000.png"] == ("Cardiomegaly", "Effusion")
    assert labels["00000005_000.png"] == ()  # No Finding


def test_both_revisions_give_the_same_data(nih_2017: Path, nih_2020: Path) -> None:
    a = read_data_entry(nih_2017 / "Data_Entry_2017.csv")
    b = read_data_entry(nih_2020 / "Data_Entry_2017.csv")
    assert a.equals(b)
    assert read_box_list(nih_2017 / "BBox_List_2017.csv").equals(
        read_box_list(nih_2020 / "BBox_List_2017.csv")
    )


def test_age_units(tmp_path: Path) -> None:
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text(
        ENTRY_HEADER + ",\n"
        "a.png,No Finding,0,1,058Y,M,PA,1,1,1,1,\n"
        "b.png,No Finding,0,2,006M,F,PA,1,1,1,1,\n"
        "c.png,No Finding,0,3,073D,F,AP,1,1,1,1,\n"
        "d.png,No Finding,0,0004,,F,AP,1,1,1,1,\n"
    )
    table = read_data_entry(path)
    assert table["age"].iloc[0] == 58.0
    assert table["age"].iloc[1] == 0.5
    assert table["age"].iloc[2] == pytest.approx(73 / 365.25)
    assert math.isnan(table["age"].iloc[3])
    assert table["patient"].iloc[3] == "4"


def test_box_list_alias_and_scaling(nih_2017: Path) -> None:
    boxes = load_boxes(nih_2017, 32)
    assert list(boxes.columns) == ["image", "finding", "x0", "y0", "x1", "y1"]
    assert boxes["finding"].tolist() == [
        "Infiltration",
        "Atelectasis",
        "Atelectasis",
        "Effusion",
        "Cardiomegaly",
    ]
    # scale 32 / 1024 = 1 / 32
    np.testing.assert_array_equal(
        boxes[["x0", "y0", "x1", "y1"]].to_numpy(),
        [
            [4.0, 8.0, 20.0, 24.0],
            [3.125, 3.125, 9.375, 12.5],
            [18.75, 18.75, 21.875, 21.875],
            [0.0, 0.0, 32.0, 16.0],
            [9.375, 12.5, 21.875, 21.875],
        ],
    )
    at224 = load_boxes(nih_2017, 224)
    assert at224.loc[0, ["x0", "y0", "x1", "y1"]].tolist() == [28.0, 56.0, 140.0, 168.0]


# --------------------------------------------------------------------------- images


def test_read_image_modes(nih_2020: Path) -> None:
    rgba = nih_2020 / "images" / RGBA_IMAGE
    i16 = nih_2020 / "images" / I16_IMAGE
    plain = nih_2020 / "images" / "00000003_000.png"
    with Image.open(rgba) as im:
        assert im.mode == "RGBA"
    with Image.open(i16) as im:
        assert im.mode in ("I;16", "I")
    for path, name, size in ((rgba, RGBA_IMAGE, 48), (i16, I16_IMAGE, 64), (plain, None, 32)):
        out = read_image(path)
        assert out.dtype == np.uint8 and out.shape == (size, size)
        np.testing.assert_array_equal(out, grey_content(name or path.name, size))


def test_read_image_rgb_la_and_small_16bit(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[...] = (100, 50, 200)  # ITU-R 601: 0.299*100 + 0.587*50 + 0.114*200 = 82.05
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "rgb.png")
    assert (read_image(tmp_path / "rgb.png") == 82).all()
    la = np.stack([np.full((4, 4), 77, np.uint8), np.full((4, 4), 9, np.uint8)], axis=-1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    assert (read_image(tmp_path / "la.png") == 77).all()
    small = np.arange(16, dtype=np.uint16).reshape(4, 4) * 17  # max 255 in a 16-bit file
    Image.fromarray(small).save(tmp_path / "small16.png")
    np.testing.assert_array_equal(read_image(tmp_path / "small16.png"), small.astype(np.uint8))
    full = np.array([[0, 255, 256, 65535]], dtype=np.uint16)
    Image.fromarray(full).save(tmp_path / "full16.png")
    np.testing.assert_array_equal(read_image(tmp_path / "full16.png"), [[0, 0, 1, 255]])


def test_tarball_layout(tmp_path: Path) -> None:
    root = write_nih(tmp_path, "2020")
    names = sorted(p.name for p in (root / "images").iterdir())
    for i, name in enumerate(names):
        folder = root / f"images_{i % 3 + 1:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        (root / "images" / name).rename(folder / name)
    (root / "images").rmdir()
    index = index_images(root)
    assert sorted(index) == names
    assert index[names[1]].parent == root / "images_002" / "images"
    data = load_nih(root)
    assert len(data.images("train")) + len(data.images("val")) == 40


# --------------------------------------------------------------------------- splits, targets


def test_patient_wise_split(nih_2020: Path) -> None:
    data = load_nih(nih_2020, val_fraction=0.25, split_seed=3)
    table = data.table.set_index("image")
    patients = {s: set(table.loc[data.images(s), "patient"]) for s in ("train", "val", "test")}
    assert len(patients["val"]) == 5  # round(0.25 * 20)
    assert len(patients["train"]) == 15
    assert patients["test"] == {str(p) for p in TEST_PATIENTS}
    assert not patients["train"] & patients["val"]
    assert not (patients["train"] | patients["val"]) & patients["test"]
    assert len(data.images("val")) == 10 and len(data.images("train")) == 30
    # the documented draw: permutation of the sorted patient ids
    ids = sorted({str(p) for p in TRAIN_VAL_PATIENTS}, key=lambda p: (len(p), p))
    order = np.random.default_rng(3).permutation(len(ids))
    assert patients["val"] == {ids[i] for i in order[:5]}
    again = load_nih(nih_2020, val_fraction=0.25, split_seed=3)
    assert again.images("val") == data.images("val")
    others = {
        tuple(load_nih(nih_2020, val_fraction=0.25, split_seed=s).images("val")) for s in range(4)
    }
    assert len(others) > 1
    assert data.images("test") == [n for n in image_names() if int(n[:8]) in TEST_PATIENTS]
    assert data.images("boxed") == ["00000021_000.png", "00000021_001.png"]


def test_multilabel_targets(nih_2020: Path) -> None:
    data = load_nih(nih_2020, val_fraction=0.0)
    assert data.class_names == list(FINDINGS)
    names = data.images("train")
    t = data.targets("train")
    assert t.dtype == np.float32 and t.shape == (40, 14)
    row = t[names.index("00000001_000.png")]
    assert np.flatnonzero(row).tolist() == [1, 4]  # Cardiomegaly, Effusion
    assert np.flatnonzero(t[names.index("00000003_001.png")]).tolist() == [9, 10]  # Mass, Nodule
    assert t[names.index("00000005_000.png")].sum() == 0
    pos, neg = data.counts("train")
    expected = np.zeros(14, dtype=np.int64)
    for i in (1, 4, 7, 8, 9, 10):  # Cardiomegaly Effusion Hernia Infiltration Mass Nodule
        expected[i] = 1
    np.testing.assert_array_equal(pos, expected)
    np.testing.assert_array_equal(neg, 40 - expected)
    assert data.images("val") == []


def test_no_finding_as_15th_output(nih_2017: Path) -> None:
    data = load_nih(nih_2017, include_no_finding=True, val_fraction=0.0)
    assert len(data.class_names) == 15 and data.class_names[10] == "No Finding"
    names = data.images("test")
    t = data.targets("test")
    assert np.flatnonzero(t[names.index("00000023_000.png")]).tolist() == [10]
    assert np.flatnonzero(t[names.index("00000021_001.png")]).tolist() == [0, 4]
    assert np.flatnonzero(t[names.index("00000022_000.png")]).tolist() == [14]  # Pneumothorax
    pos, neg = data.counts("test")
    assert pos[10] == 5 and neg[10] == 3
    assert pos.sum() == 5 + 4  # No Finding x5, Infiltration, Atelectasis, Effusion, Pneumothorax


def test_binary_targets(nih_2020: Path) -> None:
    data = load_nih(nih_2020, task="binary", val_fraction=0.0)
    assert data.class_names == ["Unhealthy"]
    names = data.images("train")
    t = data.targets("train")
    assert t.shape == (40, 1)
    sick = {n for n in LABELS if n in names}
    assert {n for n, v in zip(names, t[:, 0], strict=True) if v == 1.0} == sick
    pos, neg = data.counts("train")
    assert pos.tolist() == [4] and neg.tolist() == [36]


def test_boxes_limited_to_usable_images(nih_2020: Path) -> None:
    data = load_nih(nih_2020)
    boxes = data.boxes(32)
    assert len(boxes) == 5  # the train_val Cardiomegaly box is usable, too
    assert boxes["image"].nunique() == 3


# --------------------------------------------------------------------------- datasets


def test_box_mask_pixels() -> None:
    code = BOXED_FINDINGS.index
    boxes = np.array(
        [
            [code("Atelectasis"), 3.125, 3.125, 9.375, 12.5],
            [code("Atelectasis"), 18.75, 18.75, 21.875, 21.875],
            [code("Nodule"), 10.2, 10.2, 10.4, 10.4],  # thinner than a pixel
        ]
    )
    mask = box_mask(boxes, 32)
    expected = np.zeros((8, 32, 32), dtype=bool)
    expected[0, 3:12, 3:9] = True  # pixel centres 3.5..11.5 and 3.5..8.5
    expected[0, 19:22, 19:22] = True
    expected[5, 10, 10] = True
    np.testing.assert_array_equal(mask, expected)


def test_eval_item(nih_2020: Path) -> None:
    data = load_nih(nih_2020, val_fraction=0.0)
    ds = data.dataset("train", SIZE)
    assert isinstance(ds, NIHDataset) and len(ds) == 40
    assert ds.names == data.images("train")
    i = ds.names.index("00000003_000.png")
    item = ds[i]
    assert set(item) == {"image", "target", "index"}
    assert item["index"] == i
    image = item["image"]
    assert image.dtype == torch.float32 and image.shape == (3, SIZE, SIZE)
    # 32 px image, 32 px input: no resize; ImageNet normalisation per channel
    grey = torch.from_numpy(grey_content("00000003_000.png")).float() / 255
    expected_r = (grey - 0.485) / 0.229
    torch.testing.assert_close(image[0], expected_r)
    torch.testing.assert_close(denormalize(image), grey.expand(3, SIZE, SIZE), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(item["target"].numpy(), ds.targets[i])
    big = ds.names.index(I16_IMAGE)  # 64 px file resized to 32
    assert ds[big]["image"].shape == (3, SIZE, SIZE)


def test_cache_decodes_once_and_matches(nih_2020: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = load_nih(nih_2020, val_fraction=0.0)
    plain = data.dataset("test", SIZE)
    expected = [plain[i]["image"] for i in range(len(plain))]
    cached = data.dataset("test", SIZE, cache=True)
    assert cached.cache is not None and cached.cache.shape == (8, SIZE, SIZE)
    assert cached.preload(threads=2) >= 0
    import imbalens.data.nih as mod

    def no_decoding(path: Path) -> np.ndarray:
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(mod, "read_image", no_decoding)
    for i in range(len(cached)):
        torch.testing.assert_close(cached[i]["image"], expected[i])
    with pytest.raises(AssertionError, match="decoded"):
        plain[0]  # the uncached dataset decodes every time


def test_boxed_items(nih_2017: Path) -> None:
    data = load_nih(nih_2017)
    ds = data.dataset("boxed", SIZE)
    assert ds.names == ["00000021_000.png", "00000021_001.png"]
    first, second = ds[0], ds[1]
    assert first["box_mask"].dtype == torch.bool and first["box_mask"].shape == (8, 32, 32)
    infiltration = BOXED_FINDINGS.index("Infiltration")
    assert first["has_box"].tolist() == [k == infiltration for k in range(8)]
    expected = np.zeros((8, 32, 32), dtype=bool)
    expected[infiltration, 8:24, 4:20] = True
    np.testing.assert_array_equal(first["box_mask"].numpy(), expected)
    expected = np.zeros((8, 32, 32), dtype=bool)
    expected[0, 3:12, 3:9] = True  # Atelectasis 1
    expected[0, 19:22, 19:22] = True  # Atelectasis 2
    expected[2, 0:16, :] = True  # Effusion: top half
    np.testing.assert_array_equal(second["box_mask"].numpy(), expected)
    assert second["has_box"].tolist() == [True, False, True, False, False, False, False, False]
    np.testing.assert_array_equal(second["target"].numpy(), data.targets("boxed")[1])


def test_train_augmentation(nih_2020: Path) -> None:
    data = load_nih(nih_2020, val_fraction=0.0)
    eval_ds = data.dataset("train", SIZE)
    aug_ds = data.dataset("train", SIZE, augment=True)
    torch.manual_seed(0)
    a = aug_ds[3]["image"]
    torch.manual_seed(0)
    b = aug_ds[3]["image"]
    torch.testing.assert_close(a, b)  # reproducible under a seed
    assert a.shape == (3, SIZE, SIZE) and a.dtype == torch.float32
    assert not torch.allclose(a, eval_ds[3]["image"])
    grey = denormalize(a)
    torch.testing.assert_close(grey[0], grey[1], atol=1e-5, rtol=0)  # still grey


def test_augmentation_moves_masks_with_the_image(nih_2020: Path) -> None:
    """The Infiltrate box of 00000021_000.png is a bright patch: after crop/flip/jitter the
    bright pixels and the transformed mask must still coincide."""
    data = load_nih(nih_2020)
    ds = data.dataset("boxed", SIZE, augment=True)
    infiltration = BOXED_FINDINGS.index("Infiltration")
    still = ds.__class__(ds.paths, ds.targets, SIZE, boxes=ds._boxes)[0]["box_mask"]
    moved = 0
    for seed in range(8):
        torch.manual_seed(seed)
        item = ds[0]
        mask = item["box_mask"][infiltration]
        bright = denormalize(item["image"])[0] > 0.5
        assert (bright == mask).float().mean() > 0.9
        moved += int(not torch.equal(mask, still[infiltration]))
    assert moved > 0


def test_dataloader_workers_share_cache(nih_2020: Path) -> None:
    data = load_nih(nih_2020, val_fraction=0.0)
    ds = data.dataset("test", SIZE, cache=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        batches = list(loader)
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(8))
    assert ds._filled is not None and bool(ds._filled.all())  # filled by the workers
    np.testing.assert_array_equal(ds.cache[0], grey_content(ds.names[0]))


def test_reads_the_phantom(tiny_phantom: Path) -> None:
    """The phantom of imbalens.data.synth (boxes on all images) reads without warnings; the
    boxed split is the test images that have boxes, each with a non-empty mask."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_nih(tiny_phantom)
    n = sum(len(data.images(s)) for s in ("train", "val", "test"))
    assert n == 400
    boxes = data.boxes(64)
    boxed = data.images("boxed")
    assert boxed and set(boxed) == set(boxes["image"]) & set(data.images("test"))
    pos, neg = data.counts("train")
    assert (pos + neg == len(data.images("train"))).all() and pos.sum() > 0
    ds = data.dataset("boxed", 64)
    item = ds[0]
    per_finding = item["box_mask"].flatten(1).any(dim=1)
    assert torch.equal(per_finding, item["has_box"]) and bool(item["has_box"].any())


def test_load_nih_from_config_fills_defaults(tiny_phantom: Path) -> None:
    from imbalens.data.nih import load_nih, load_nih_from_config

    data = load_nih_from_config({"root": str(tiny_phantom), "task": "binary"})
    assert data.class_names == ["Unhealthy"]
    direct = load_nih(tiny_phantom, task="binary")
    assert data.images("val") == direct.images("val")
    assert (data.targets("test") == direct.targets("test")).all()
