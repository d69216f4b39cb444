"""Bad input to imbalens.data.nih: each a clear error or warning naming the file and row."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from nih_layout import BOX_HEADER, ENTRY_HEADER, image_names, write_nih
from PIL import Image

from imbalens.data.nih import (
    NIH_URL,
    DataError,
    DataWarning,
    load_boxes,
    load_nih,
    read_box_list,
    read_data_entry,
    read_image,
)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nih(tmp_path_factory.mktemp("template"), "2020")


@pytest.fixture
def root(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the fixture that a test may break."""
    return Path(shutil.copytree(template, tmp_path / "nih"))


def write_boxes(root: Path, *rows: str, tail: str = "") -> Path:
    path = root / "BBox_List_2017.csv"
    path.write_text("\n".join([BOX_HEADER + tail, *rows]) + "\n")
    return path


# --------------------------------------------------------------------------- missing files


@pytest.mark.parametrize("name", ["Data_Entry_2017.csv", "train_val_list.txt", "test_list.txt"])
def test_missing_file_names_it_and_the_source(root: Path, name: str) -> None:
    (root / name).unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_nih(root)
    message = str(err.value)
    assert str(root / name) in message
    assert NIH_URL in message
    assert "imbalens synth" in message


def test_missing_box_file_only_matters_for_boxes(root: Path) -> None:
    (root / "BBox_List_2017.csv").unlink()
    data = load_nih(root)
    assert len(data.images("test")) == 8
    with pytest.raises(FileNotFoundError, match="BBox_List_2017.csv"):
        data.images("boxed")
    with pytest.raises(FileNotFoundError, match=NIH_URL):
        data.boxes(224)
    with pytest.raises(FileNotFoundError, match="BBox_List_2017.csv"):
        load_boxes(root, 224)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="imbalens synth"):
        load_nih(tmp_path / "nowhere")


# --------------------------------------------------------------------------- missing images


MISSING = ["00000003_000.png", "00000021_001.png", "00000022_001.png"]


def test_missing_images_error_counts_and_names(root: Path) -> None:
    for name in MISSING:
        (root / "images" / name).unlink()
    with pytest.raises(DataError) as err:
        load_nih(root)
    message = str(err.value)
    assert "3 of 48 listed image(s) are missing" in message
    assert all(name in message for name in MISSING)
    assert "missing='skip'" in message


def test_missing_images_error_lists_only_the_first_few(root: Path) -> None:
    names = image_names()[:12]
    for name in names:
        (root / "images" / name).unlink()
    with pytest.raises(DataError, match=r"12 of 48 .*\(7 more\)") as err:
        load_nih(root)
    assert names[0] in str(err.value) and names[11] not in str(err.value)


def test_missing_images_skip(root: Path) -> None:
    for name in MISSING:
        (root / "images" / name).unlink()
    with pytest.warns(DataWarning, match="skipping 3 of 48") as record:
        data = load_nih(root, missing="skip", val_fraction=0.0)
    assert any("00000021_001.png" in str(w.message) for w in record)
    assert len(data.images("train")) == 39 and len(data.images("test")) == 6
    kept = set(data.images("train")) | set(data.images("test"))
    assert not kept & set(MISSING)
    assert data.images("boxed") == ["00000021_000.png"]  # its partner lost its image
    assert set(data.boxes(32)["image"]) == {"00000021_000.png", "00000001_000.png"}
    assert len(data.dataset("test", 32)) == 6


def test_bad_missing_policy(root: Path) -> None:
    with pytest.raises(ValueError, match="missing='ignore'"):
        load_nih(root, missing="ignore")


# --------------------------------------------------------------------------- Data_Entry rows


def test_unknown_label_names_file_row_and_label(root: Path) -> None:
    path = root / "Data_Entry_2017.csv"
    lines = path.read_text().splitlines()
    lines[5] = lines[5].replace("No Finding", "Effusion|Pneumonitis")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_nih(root)
    message = str(err.value)
    assert f"{path} line 6" in message
    assert "'Pneumonitis'" in message
    assert image_names()[4] in message


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("x.png,,0,1,30,M,PA,1,1,1,1", "no 'Finding Labels'"),
        ("x.png,No Finding|Mass,0,1,30,M,PA,1,1,1,1", "'No Finding' together"),
        ("x.png,Mass,zero,1,30,M,PA,1,1,1,1", "Follow-up"),
        ("x.png,Mass,0,1,thirty,M,PA,1,1,1,1", "Patient Age"),
        ("x.png,Mass,0,1", "expected 11 fields"),
        ("x.png,Mass,0,1,30,M,PA,1,1,1,1,extra", "found 12"),
        ("x.png,Mass,0,,30,M,PA,1,1,1,1", "empty 'Patient ID'"),
    ],
)
def test_bad_entry_rows(tmp_path: Path, row: str, match: str) -> None:
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text(f"{ENTRY_HEADER}\nok.png,Mass,0,7,30,M,PA,1,1,1,1\n{row}\n")
    with pytest.raises(DataError, match=match) as err:
        read_data_entry(path)
    assert f"{path} line 3" in str(err.value)


def test_repeated_image_and_bad_header(tmp_path: Path) -> None:
    path = tmp_path / "Data_Entry_2017.csv"
    row = "a.png,Mass,0,7,30,M,PA,1,1,1,1"
    path.write_text(f"{ENTRY_HEADER}\n{row}\n{row}\n")
    with pytest.raises(DataError, match=r"line 3: image a.png is listed again \(first on line 2\)"):
        read_data_entry(path)
    path.write_text(f"{row}\n{row}\n")
    with pytest.raises(DataError, match="line 1: expected NIH's header"):
        read_data_entry(path)


def test_image_in_both_lists(root: Path) -> None:
    with open(root / "test_list.txt", "a") as fh:
        fh.write("00000001_000.png\n")
    with pytest.raises(DataError, match="1 image.* in both .*00000001_000.png"):
        load_nih(root)


def test_listed_image_without_label_row_warns(root: Path) -> None:
    with open(root / "test_list.txt", "a") as fh:
        fh.write("00000099_000.png\n")
    with pytest.warns(DataWarning, match="1 image.*no row.*00000099_000.png"):
        data = load_nih(root)
    assert "00000099_000.png" not in data.images("test")


# --------------------------------------------------------------------------- boxes


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("a.png,Mass,10,20,abc,40", r"box \['10', '20', 'abc', '40'\] of a.png is not numeric"),
        ("a.png,Mass,10,20,0,40", "width 0.0 / height 40.0; both must be > 0"),
        ("a.png,Mass,10,20,30,-5", "height -5.0"),
        ("a.png,Mass,10,20,nan,40", "not finite"),
        ("a.png,Mass,10,20,30", "expected 6 fields"),
        ("a.png,Fibrosis,10,20,30,40", "'Fibrosis' of image a.png has no boxes"),
        ("a.png,Mass,1100,20,30,40", "lies entirely outside"),
    ],
)
def test_malformed_box_names_row(tmp_path: Path, row: str, match: str) -> None:
    path = write_boxes(tmp_path, "ok.png,Nodule,1,2,3,4", row, tail=",,,")
    with pytest.raises(DataError, match=match) as err:
        read_box_list(path)
    assert f"{path} line 3" in str(err.value)


def test_box_outside_image_is_clipped_with_warning(tmp_path: Path) -> None:
    path = write_boxes(
        tmp_path,
        "a.png,Nodule,100,100,50,50",
        "b.png,Mass,1000,-20,100,60",
        "c.png,Infiltrate,10,10,20,20",
    )
    with pytest.warns(DataWarning, match=r"1 box\(es\) .* clipped.*line 3 \(b.png Mass\)") as rec:
        boxes = load_boxes(tmp_path, 1024)
    assert str(rec[0].message).startswith(f"{path}: ")
    assert boxes.loc[1, ["x0", "y0", "x1", "y1"]].tolist() == [1000.0, 0.0, 1024.0, 40.0]
    assert boxes.loc[0, ["x0", "y0", "x1", "y1"]].tolist() == [100.0, 100.0, 150.0, 150.0]


def test_boxes_inside_do_not_warn(tmp_path: Path) -> None:
    write_boxes(tmp_path, "a.png,Nodule,0,0,1024,1024")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_boxes(tmp_path, 64)


# --------------------------------------------------------------------------- broken PNGs


def _valid_png(path: Path) -> bytes:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
    return path.read_bytes()


def test_not_a_png(tmp_path: Path) -> None:
    path = tmp_path / "junk.png"
    path.write_bytes(b"this is not an image at all")
    with pytest.raises(DataError, match=f"cannot read image {path}"):
        read_image(path)


def test_corrupt_png_data(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.png"
    data = bytearray(_valid_png(path))
    start = data.index(b"IDAT") + 8
    data[start : start + 200] = bytes(200)  # wipe compressed pixel data
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"cannot read image {path}"):
        read_image(path)


def test_truncated_png(tmp_path: Path) -> None:
    path = tmp_path / "truncated.png"
    data = _valid_png(path)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"cannot read image {path}.*truncated"):
        read_image(path)


def test_missing_image_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="gone.png"):
        read_image(tmp_path / "gone.png")


def test_truncated_png_in_a_dataset_names_the_file(root: Path) -> None:
    name = "00000022_000.png"
    path = root / "images" / name
    path.write_bytes(path.read_bytes()[:200])
    ds = load_nih(root).dataset("test", 32)
    with pytest.raises(DataError, match=name):
        ds[ds.names.index(name)]


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "multiclass"}, "unknown task 'multiclass'"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
    ],
)
def test_bad_arguments(root: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_nih(root, **kwargs)


def test_no_finding_option_is_ignored_for_binary(root: Path) -> None:
    data = load_nih(root, task="binary", include_no_finding=True)
    assert data.class_names == ["Unhealthy"] and data.targets("test").shape == (8, 1)


def test_unknown_split(root: Path) -> None:
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        load_nih(root).images("validation")


# --------------------------------------------------------------------------- pre-flight


def test_preflight_passes_a_good_root(root: Path) -> None:
    from imbalens.data.nih import preflight

    report = preflight(root)
    assert report["images"] == len(load_nih(root).table)


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-40]), "truncated PNG"),
        (lambda p: p.write_bytes(b""), "0 bytes: too short"),
        (lambda p: p.write_bytes(b"GIF89a" + b"\0" * 100), "not a PNG"),
    ],
    ids=["truncated", "empty", "not-png"],
)
def test_preflight_names_every_bad_image_without_decoding(root: Path, damage, needle) -> None:
    from imbalens.data.nih import preflight

    victim = sorted((root / "images").glob("*.png"))[3]
    damage(victim)
    with pytest.raises(DataError, match=rf"1 of \d+ listed image\(s\).*{victim.name}: {needle}"):
        preflight(root)


@pytest.mark.parametrize("name", ["test_list.txt", "train_val_list.txt"])
def test_an_empty_split_list_is_an_error_naming_it(root: Path, name: str) -> None:
    from imbalens.data.nih import preflight

    (root / name).write_text("\n")
    with pytest.raises(DataError, match=rf"{name} lists no image"):
        load_nih(root)
    with pytest.raises(DataError, match=rf"{name} lists no image"):
        preflight(root)


def test_preflight_of_nih_mini_takes_seconds(nih_mini_root: Path) -> None:
    from imbalens.data.nih import preflight

    report = preflight(nih_mini_root)
    assert report["images"] > 2000 and report["seconds"] < 10
