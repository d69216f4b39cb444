"""The phantom: NIH layout and formats, label statistics, boxes on lesions, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imbalens.data.anatomy import render
from imbalens.data.findings import (
    BOXED_FINDINGS,
    FINDINGS,
    NIH_IMAGE_COUNTS,
    NIH_TOTAL_IMAGES,
    NO_FINDING,
)
from imbalens.data.synth import (
    MIN_POSITIVES_PER_SPLIT,
    _solve_z,
    code_digest,
    generate,
    label_probabilities,
    read_manifest,
    sample_labels,
)

FILES = ("Data_Entry_2017.csv", "BBox_List_2017.csv", "train_val_list.txt", "test_list.txt")


def _digest(root: Path) -> dict[str, str]:
    names = list(FILES) + ["phantom.json"]
    names += [f"images/{p.name}" for p in sorted((root / "images").iterdir())]
    return {n: hashlib.sha256((root / n).read_bytes()).hexdigest() for n in names}


def test_layout_and_csv_formats(tiny_phantom: Path) -> None:
    root = tiny_phantom
    header = (root / "Data_Entry_2017.csv").read_text().splitlines()[0]
    assert header == (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
    )
    entry = pd.read_csv(root / "Data_Entry_2017.csv")
    assert entry.shape == (400, 11)  # 9 header names, two of them name 2 columns each
    assert list(entry.columns[-4:]) == [
        "OriginalImage[Width",
        "Height]",
        "OriginalImagePixelSpacing[x",
        "y]",
    ]
    assert entry["Image Index"].str.fullmatch(r"\d{8}_\d{3}\.png").all()
    ids = entry["Image Index"].str.slice(0, 8).astype(int)
    fu = entry["Image Index"].str.slice(9, 12).astype(int)
    assert (ids == entry["Patient ID"]).all() and (fu == entry["Follow-up #"]).all()
    # follow-ups are 0, 1, ... per patient and some patients have several images
    for _, g in entry.groupby("Patient ID"):
        assert sorted(g["Follow-up #"]) == list(range(len(g)))
    assert entry.groupby("Patient ID").size().max() > 1
    labels = entry["Finding Labels"].str.split("|").explode()
    assert set(labels) <= set(FINDINGS) | {NO_FINDING}
    assert not entry["Finding Labels"].str.contains(NO_FINDING + "|", regex=False).any()
    # images: every listed file exists, 8-bit grey at 64 px, nothing else in images/
    files = sorted(p.name for p in (root / "images").iterdir())
    assert files == sorted(entry["Image Index"])
    im = Image.open(root / "images" / files[0])
    assert im.mode == "L" and im.size == (64, 64)
    boxes = pd.read_csv(root / "BBox_List_2017.csv")
    assert (root / "BBox_List_2017.csv").read_text().splitlines()[0] == (
        "Image Index,Finding Label,Bbox [x,y,w,h]"
    )
    assert boxes.shape[1] == 6
    assert set(boxes["Finding Label"]) <= (set(BOXED_FINDINGS) - {"Infiltration"}) | {"Infiltrate"}
    assert "Infiltrate" in set(boxes["Finding Label"])
    manifest = read_manifest(root)
    assert manifest is not None and manifest["counts"]["images"] == 400
    assert manifest["counts"]["boxes"] == len(boxes)


def test_boxes_match_labels_and_release_space(tiny_phantom: Path) -> None:
    entry = pd.read_csv(tiny_phantom / "Data_Entry_2017.csv").set_index("Image Index")
    boxes = pd.read_csv(tiny_phantom / "BBox_List_2017.csv")
    x, y, w, h = (boxes[c].to_numpy() for c in ("Bbox [x", "y", "w", "h]"))
    # 64-px pixel edges scaled to the 1,024 space: multiples of 16, inside [0, 1024]
    for v in (x, y, w, h):
        assert np.allclose(v / 16, np.round(v / 16))
    assert (x >= 0).all() and (y >= 0).all() and (x + w <= 1024).all() and (y + h <= 1024).all()
    assert (w >= 16).all() and (h >= 16).all()
    for name, label in zip(boxes["Image Index"], boxes["Finding Label"], strict=True):
        finding = "Infiltration" if label == "Infiltrate" else label
        assert finding in entry.loc[name, "Finding Labels"].split("|")
    # boxes="all": every boxed finding of every image has exactly one box
    expected = sum(f in labs.split("|") for labs in entry["Finding Labels"] for f in BOXED_FINDINGS)
    assert len(boxes) == expected


def test_patient_wise_split(tiny_phantom: Path) -> None:
    entry = pd.read_csv(tiny_phantom / "Data_Entry_2017.csv")
    train = (tiny_phantom / "train_val_list.txt").read_text().split()
    test = (tiny_phantom / "test_list.txt").read_text().split()
    assert sorted(train + test) == sorted(entry["Image Index"])
    assert not set(train) & set(test)
    pid = dict(zip(entry["Image Index"], entry["Patient ID"], strict=True))
    assert not {pid[n] for n in train} & {pid[n] for n in test}
    n_test_patients = len({pid[n] for n in test})
    assert n_test_patients == round(0.25 * entry["Patient ID"].nunique())
    # every finding has >= MIN_POSITIVES_PER_SPLIT positives in each split
    labels = entry.set_index("Image Index")["Finding Labels"]
    for names in (train, test):
        for f in FINDINGS:
            n = sum(f in labels[n].split("|") for n in names)
            assert n >= MIN_POSITIVES_PER_SPLIT, (f, n)


def test_label_sampler_matches_nih_prevalence() -> None:
    lab = sample_labels(3000, np.random.default_rng(0))
    healthy = (~lab.any(axis=1)).mean()
    assert abs(healthy - NIH_IMAGE_COUNTS[NO_FINDING] / NIH_TOTAL_IMAGES) < 0.03
    freq = dict(zip(FINDINGS, lab.mean(axis=0), strict=True))
    assert healthy > max(freq.values())  # No Finding first
    assert max(freq, key=freq.get) == "Infiltration"
    assert sorted(freq, key=freq.get)[:2].count("Hernia") == 1  # among the rarest
    # marginals on a large sample: within 3 standard errors of n_k / N
    big = sample_labels(100_000, np.random.default_rng(1)).mean(axis=0)
    p = np.array([NIH_IMAGE_COUNTS[f] / NIH_TOTAL_IMAGES for f in FINDINGS])
    assert np.all(np.abs(big - p) < 3 * np.sqrt(p * (1 - p) / 100_000) + 1e-4)


def test_label_options_and_z_equation() -> None:
    h, q = label_probabilities("balanced")
    assert h == 0.5 and np.allclose(q, 1.5 / 14)
    lab = sample_labels(20_000, np.random.default_rng(2), "balanced")
    assert abs((~lab.any(axis=1)).mean() - 0.5) < 0.02
    assert np.ptp(lab.mean(axis=0)) < 0.015
    h2, q2 = label_probabilities(2.0)
    h0, q0 = label_probabilities("nih")
    assert h2 == pytest.approx(1 - 2 * (1 - h0)) and np.allclose(q2, q0)
    assert label_probabilities("2") == (h2, pytest.approx(q2))
    with pytest.raises(ValueError, match="prevalence"):
        label_probabilities("often")
    with pytest.raises(ValueError, match="positive"):
        label_probabilities(-1.0)
    # two findings each with share 0.75: Z = 1 - (1 - 0.75 Z)^2  =>  Z = 8/9
    assert _solve_z(np.array([0.75, 0.75])) == pytest.approx(8 / 9, abs=1e-9)


def test_deterministic_whatever_the_workers(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    generate(a, n_images=40, size=32, seed=5, workers=1)
    generate(b, n_images=40, size=32, seed=5, workers=2)
    assert _digest(a) == _digest(b)
    c = tmp_path / "c"
    generate(c, n_images=40, size=32, seed=6, workers=1)
    assert _digest(a)["Data_Entry_2017.csv"] != _digest(c)["Data_Entry_2017.csv"]


def test_interrupted_run_is_regenerated(tmp_path: Path) -> None:
    out = tmp_path / "p"
    generate(out, n_images=20, size=32, seed=1, workers=1)
    before = _digest(out)
    # a complete phantom with the same parameters is kept
    (out / "images" / "00000001_000.png").write_bytes(b"junk")
    generate(out, n_images=20, size=32, seed=1, workers=1)
    assert (out / "images" / "00000001_000.png").read_bytes() == b"junk"
    # a phantom made by other code (digest differs) is rewritten
    manifest = (out / "phantom.json").read_text()
    (out / "phantom.json").write_text(manifest.replace(code_digest(), "0" * 16))
    generate(out, n_images=20, size=32, seed=1, workers=1)
    assert _digest(out) == before
    (out / "images" / "00000001_000.png").write_bytes(b"junk")
    # an interrupted generation leaves its stub manifest: the folder is still ours, rewritten
    (out / "phantom.json").write_text('{"complete": false}')
    (out / "images" / "99999999_000.png").write_bytes(b"stale")
    generate(out, n_images=20, size=32, seed=1, workers=1)
    assert _digest(out) == before


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="difficulty"):
        generate(tmp_path, n_images=10, size=32, difficulty=2.0)
    with pytest.raises(ValueError, match="boxes"):
        generate(tmp_path, n_images=10, size=32, boxes="some")
    with pytest.raises(ValueError, match="unknown findings"):
        render(32, 0, 0, 0, ["Tumour"])


def test_boxes_only_on_test_images_by_default(tmp_path: Path) -> None:
    generate(tmp_path, n_images=60, size=32, seed=2, workers=1)
    boxes = pd.read_csv(tmp_path / "BBox_List_2017.csv")
    test = set((tmp_path / "test_list.txt").read_text().split())
    assert len(boxes) > 0 and set(boxes["Image Index"]) <= test


def test_round_trip_through_the_nih_reader(tiny_phantom: Path) -> None:
    from imbalens.data.nih import load_nih

    data = load_nih(tiny_phantom)
    entry = pd.read_csv(tiny_phantom / "Data_Entry_2017.csv")
    assert len(data.images("train")) + len(data.images("val")) + len(data.images("test")) == 400
    raw = pd.read_csv(tiny_phantom / "BBox_List_2017.csv")
    got = data.boxes(224)
    assert len(got) == len(raw)  # boxes="all": every image of both splits has its boxes
    boxed = set(raw.loc[raw["Image Index"].isin(data.images("test")), "Image Index"])
    assert set(data.images("boxed")) == boxed
    first = raw[raw["Image Index"].isin(set(got["image"]))].iloc[0]
    row = got[(got["image"] == first["Image Index"])].iloc[0]
    k = 224 / 1024
    assert row["x0"] == pytest.approx(first["Bbox [x"] * k)
    assert row["y1"] == pytest.approx((first["y"] + first["h]"]) * k)
    # positives in the test targets agree with Data_Entry_2017.csv
    t = data.targets("test")
    names = data.images("test")
    labs = entry.set_index("Image Index").loc[names, "Finding Labels"]
    k_inf = data.class_names.index("Infiltration")
    assert t[:, k_inf].sum() == sum("Infiltration" in s.split("|") for s in labs)


def _content_digest(root: Path) -> str:
    """SHA-256 of the tables, the decoded pixels and the manifest without its code digest."""
    import json

    h = hashlib.sha256()
    for n in FILES:
        h.update((root / n).read_bytes())
    m = json.loads((root / "phantom.json").read_text())
    m.pop("code")
    h.update(json.dumps(m, sort_keys=True).encode())
    for p in sorted((root / "images").iterdir()):
        h.update(p.name.encode())
        h.update(np.asarray(Image.open(p)).tobytes())
    return h.hexdigest()


def _numpy_avx512() -> bool:
    """Whether NumPy dispatches its float loops (exp, sin, ...) to AVX512 here: their last
    bits differ from the AVX2 loops, which moves some rendered pixels by one grey level."""
    from numpy._core._multiarray_umath import __cpu_features__

    return bool(__cpu_features__.get("AVX512F"))


@pytest.mark.parametrize(
    ("kw", "digests"),
    [
        (
            {"n_images": 60, "size": 48, "seed": 3, "boxes": "all", "difficulty": 0.25},
            {
                True: "b21781201c5aa8baec14beb8c2541a017cd88c79ba50c63afa8d01a7532c8f90",
                False: "bfc376f05ffd6d1a7295fb6bb0ce536b1edb5c601de0006b965c8dc118b9353c",
            },
        ),
        (
            {"n_images": 40, "size": 32, "seed": 5},
            {
                True: "c90951c2aaa8fac2eb4c336ea47b08d6d814b1b38ded9bd427f1709e058c7058",
                False: "c90951c2aaa8fac2eb4c336ea47b08d6d814b1b38ded9bd427f1709e058c7058",
            },
        ),
    ],
)
def test_split_generate_writes_the_same_phantom(
    tmp_path: Path, kw: dict, digests: dict[bool, str]
) -> None:
    # digests of the single 169-line generate() before it was split up (commit 7047875):
    # True recorded on a CPU with AVX512 (2026-12-02), False on an AVX2-only AMD EPYC
    # (2026-12-03: 7047875 and the split generate() both give it there)
    generate(tmp_path, workers=1, **kw)
    assert _content_digest(tmp_path) == digests[_numpy_avx512()]


def test_phantom_lesion_masks_file(tiny_phantom: Path) -> None:
    from scipy.ndimage import binary_dilation

    from imbalens.data.nih import box_mask, load_nih
    from imbalens.data.synth import LesionMasks, lesion_mask

    masks = LesionMasks(tiny_phantom)
    boxes = pd.read_csv(tiny_phantom / "BBox_List_2017.csv")
    assert len(boxes) > 0
    data = load_nih(tiny_phantom)
    scaled = data.boxes(32)
    for row in boxes.itertuples(index=False):
        name, label = row[0], row[1]
        finding = "Infiltration" if label == "Infiltrate" else label
        full = masks(name, finding)
        x, y, w, h = (round(v / 16) for v in row[2:6])  # 64 px -> 1,024 space: x16
        inside = np.zeros((64, 64), dtype=bool)
        inside[y : y + h, x : x + w] = True
        assert full.any() and not (full & ~inside).any(), (name, finding)
        # at 32 px the mask stays non-empty and inside the scaled box mask up to the
        # half-covered pixels on the box's edge (box_mask counts pixel centres)
        small = masks(name, finding, 32)
        k = BOXED_FINDINGS.index(finding)
        b = scaled[(scaled["image"] == name) & (scaled["finding"] == finding)]
        bm = box_mask(np.c_[np.full(len(b), k), b[["x0", "y0", "x1", "y1"]].to_numpy()], 32)[k]
        assert small.shape == (32, 32) and small.any()
        assert not (small & ~binary_dilation(bm)).any(), (name, finding)
        assert (small & bm).sum() >= 0.5 * small.sum(), (name, finding)
    assert masks("00000001_000.png", "Hernia") is None
    first = boxes.iloc[0]
    f0 = "Infiltration" if first.iloc[1] == "Infiltrate" else first.iloc[1]
    assert np.array_equal(lesion_mask(tiny_phantom, first.iloc[0], f0), masks(first.iloc[0], f0))
    with pytest.raises(FileNotFoundError, match="imbalens synth"):
        LesionMasks(tiny_phantom / "images")
