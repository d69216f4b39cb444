"""The NIH-layout fixture of the imbalens.data.nih tests (tests/data/test_nih.py and
test_nih_errors.py): write_nih() writes it, both Data_Entry_2017.csv revisions.

The fixture: 20 train_val patients (1..20) and 4 test patients (21..24), two images each
(48 images), 32 px PNGs except one RGBA 48 px and one 16-bit 64 px image. Labels are
"No Finding" except the ones in LABELS. Boxes (1,024-px release space) in BOXES.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32
TRAIN_VAL_PATIENTS = range(1, 21)
TEST_PATIENTS = range(21, 25)
LABELS = {
    "00000001_000.png": "Cardiomegaly|Effusion",
    "00000002_000.png": "Hernia",
    "00000003_001.png": "Nodule|Mass",
    "00000004_000.png": "Infiltration",
    "00000021_000.png": "Infiltration",
    "00000021_001.png": "Atelectasis|Effusion",
    "00000022_000.png": "Pneumothorax",
}
BOXES = [  # image, label as in the box file, x, y, w, h (release space)
    ("00000021_000.png", "Infiltrate", 128.0, 256.0, 512.0, 512.0),
    ("00000021_001.png", "Atelectasis", 100.0, 100.0, 200.0, 300.0),
    ("00000021_001.png", "Atelectasis", 600.0, 600.0, 100.0, 100.0),
    ("00000021_001.png", "Effusion", 0.0, 0.0, 1024.0, 512.0),
    ("00000001_000.png", "Cardiomegaly", 300.0, 400.0, 400.0, 300.0),  # a train_val box
]
RGBA_IMAGE = "00000001_001.png"
I16_IMAGE = "00000002_001.png"
ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h]"


def image_names() -> list[str]:
    return [f"{p:08d}_{f:03d}.png" for p in [*TRAIN_VAL_PATIENTS, *TEST_PATIENTS] for f in (0, 1)]


def grey_content(name: str, size: int = SIZE) -> np.ndarray:
    """Deterministic 8-bit content of a fixture image (a box-shaped bright patch for
    00000021_000.png, so that tests can follow the box through augmentation)."""
    if name == "00000021_000.png":
        img = np.full((size, size), 20, dtype=np.uint8)
        img[size // 4 : size * 3 // 4, size // 8 : size * 5 // 8] = 235  # the Infiltrate box
        return img
    seed = int(name[:8]) * 10 + int(name[9:12])
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def save_png(path: Path, name: str) -> np.ndarray:
    """Write fixture image ``name``; return the 8-bit grey values read_image must give."""
    if name == RGBA_IMAGE:
        grey = grey_content(name, 48)
        rgba = np.stack([grey, grey, grey, np.full_like(grey, 255)], axis=-1)
        Image.fromarray(rgba, mode="RGBA").save(path)
        return grey
    if name == I16_IMAGE:
        grey = grey_content(name, 64)
        wide = grey.astype(np.uint16) * 256 + 100  # full 16-bit range; high byte = grey
        Image.fromarray(wide).save(path)
        return grey
    grey = grey_content(name)
    Image.fromarray(grey, mode="L").save(path)
    return grey


def write_nih(root: Path, revision: str = "2020", images: bool = True) -> Path:
    """Write the fixture in NIH's layout; ``revision`` "2017" (trailing commas, ages such as
    058Y, trailing empty box columns) or "2020"."""
    root.mkdir(parents=True, exist_ok=True)
    tail = "," if revision == "2017" else ""
    lines = [ENTRY_HEADER + tail]
    for name in image_names():
        patient, follow = int(name[:8]), int(name[9:12])
        age = 30 + patient
        age_text = f"{age:03d}Y" if revision == "2017" else str(age)
        sex = "M" if patient % 2 else "F"
        label = LABELS.get(name, "No Finding")
        lines.append(
            f"{name},{label},{follow},{patient},{age_text},{sex},PA,2500,2048,0.143,0.143{tail}"
        )
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    box_tail = ",,," if revision == "2017" else ""
    box_lines = [BOX_HEADER + box_tail]
    box_lines += [f"{n},{lab},{x!r},{y!r},{w!r},{h!r}{box_tail}" for n, lab, x, y, w, h in BOXES]
    (root / "BBox_List_2017.csv").write_text("\n".join(box_lines) + "\n")
    names = image_names()
    train_val = [n for n in names if int(n[:8]) in TRAIN_VAL_PATIENTS]
    test = [n for n in names if int(n[:8]) in TEST_PATIENTS]
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    if images:
        (root / "images").mkdir(exist_ok=True)
        for name in names:
            save_png(root / "images" / name, name)
    return root
