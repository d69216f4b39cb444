"""The NIH ChestX-ray14 reader: labels, patient-wise splits, boxes, images, datasets.

Reads the release exactly as NIH publishes it (https://nihcc.app.box.com/v/ChestXray-NIHCC,
Wang et al., "ChestX-ray8", CVPR 2017), or anything laid out the same way (the phantom of
:mod:`imbalens.data.synth`, pre-resized copies such as ``shared/data/nih-mini``):

- ``Data_Entry_2017.csv``: both the original 2017 file (header and rows end with a comma,
  ages such as ``058Y``) and the 2020 revision (plain ages). In both, the headers
  ``OriginalImage[Width,Height]`` and ``OriginalImagePixelSpacing[x,y]`` each name *two*
  columns, so a row has 11 fields under 9 header names: columns are assigned by position.
  ``Finding Labels`` is ``|``-separated; ``No Finding`` means no finding.
- ``BBox_List_2017.csv``: ``Image Index, Finding Label, x, y, w, h`` in the coordinates of the
  1,024x1,024 release (the original file has trailing empty columns); "Infiltrate" there is
  "Infiltration" in the labels. For a model input of S x S pixels (square resize of the
  image, whatever the size of the file on disk) a box maps to

  $$ (x_0, y_0, x_1, y_1) = \\tfrac{S}{1024}\\,(x,\\ y,\\ x + w,\\ y + h). $$

- ``train_val_list.txt`` / ``test_list.txt``: the official patient-wise split. A
  validation split is carved from train_val by patient: a fraction ``val_fraction`` of
  the train_val patients, drawn with ``numpy.random.default_rng(split_seed)``.
- images in ``root/images/`` or in the tarball layout ``root/images_001/images/`` ...

Tasks: ``multilabel`` (the 14 findings of :mod:`imbalens.data.findings` in alphabetical order,
optionally "No Finding" as a 15th output at index 10, as in the official code) and
``binary`` (one output "Unhealthy": No Finding = 0, any finding = 1).

Images are read as 8-bit grey whatever the PNG mode (see :func:`read_image`).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import tv_tensors

from imbalens.data.findings import (
    BOX_LABEL_ALIASES,
    BOXED_FINDINGS,
    FINDINGS,
    NO_FINDING,
    RELEASE_SIZE,
    TASKS,
    class_names,
)
from imbalens.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_augment,
    denormalize,
    normalize,
    resize_grey,
)

if TYPE_CHECKING:
    from imbalens.data.prepared import PreparedImages

__all__ = [
    "BBOX_LIST",
    "DATA_ENTRY",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NIH_URL",
    "SPLITS",
    "TEST_LIST",
    "TRAIN_VAL_LIST",
    "DataError",
    "DataWarning",
    "NIHData",
    "NIHDataset",
    "denormalize",
    "index_images",
    "load_boxes",
    "load_nih",
    "read_box_list",
    "read_data_entry",
    "read_image",
    "read_split_list",
]

log = logging.getLogger(__name__)

NIH_URL = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
DATA_ENTRY = "Data_Entry_2017.csv"
BBOX_LIST = "BBox_List_2017.csv"
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
SPLITS: tuple[str, ...] = ("train", "val", "test", "boxed")
MISSING_POLICIES: tuple[str, ...] = ("error", "skip")

ENTRY_COLUMNS: tuple[str, ...] = (
    "image",
    "labels",
    "follow_up",
    "patient",
    "age",
    "sex",
    "view",
    "orig_width",
    "orig_height",
    "spacing_x",
    "spacing_y",
)
"""Names given by position to the 11 fields of a Data_Entry_2017.csv row."""

_KNOWN_LABELS = frozenset(FINDINGS) | {NO_FINDING}
_SHOW = 5  # how many offending names an error message lists


class DataError(ValueError):
    """A data file that cannot be used; the message names the file, line and value."""


class DataWarning(UserWarning):
    """Something in the data was repaired or dropped (clipped boxes, skipped images)."""


# --------------------------------------------------------------------------- files


def _missing_file(path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{path} not found: expected NIH's {what} {path.name!r} in {path.parent}. "
        f"NIH publishes it with the images at {NIH_URL}; `imbalens synth --out DIR` "
        "writes a synthetic phantom in the same layout."
    )


def _csv_rows(path: Path, what: str) -> Iterable[tuple[int, list[str]]]:
    """Yield (line number, fields without trailing empty fields) after the header."""
    if not path.is_file():
        raise _missing_file(path, what)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header or header[0].strip() != "Image Index":
            raise DataError(
                f"{path} line 1: expected NIH's header starting with 'Image Index', "
                f"got {','.join(header or [])!r}"
            )
        for fields in reader:
            while fields and not fields[-1].strip():
                fields.pop()
            if fields:
                yield reader.line_num, [f.strip() for f in fields]


def _parse_age(text: str) -> float:
    """Age in years from '58', '058Y', '011M' or '020D' (the 2017 file's spelling)."""
    if not text:
        return math.nan
    unit = text[-1].upper()
    scale = {"Y": 1.0, "M": 1.0 / 12.0, "D": 1.0 / 365.25}.get(unit)
    number = text[:-1] if scale is not None else text
    return float(int(number)) * (scale or 1.0)


def read_data_entry(path: str | os.PathLike) -> pd.DataFrame:
    """Parse ``Data_Entry_2017.csv`` (2017 original or 2020 revision) into one row per image.

    Columns are assigned by position (:data:`ENTRY_COLUMNS`); trailing empty fields (the
    2017 file ends every line with a comma) are dropped. Returns a DataFrame with
    ``image`` (str), ``labels`` (tuple of findings, empty for "No Finding"), ``follow_up``
    (int), ``patient`` (str), ``age`` (years, float), ``sex``, ``view``, in file order.

    Raises:
        FileNotFoundError: the file is missing (the message says where NIH publishes it).
        DataError: a row with too few/many fields, an empty or unknown label, "No Finding"
            together with a finding, a bad follow-up number or age, or a repeated image;
            the message names the file, line and value.
    """
    path = Path(path)
    records: list[tuple[Any, ...]] = []
    seen: dict[str, int] = {}
    for line, fields in _csv_rows(path, "label file"):
        where = f"{path} line {line}"
        if not 7 <= len(fields) <= len(ENTRY_COLUMNS):
            raise DataError(
                f"{where}: expected {len(ENTRY_COLUMNS)} fields ({', '.join(ENTRY_COLUMNS)}), "
                f"found {len(fields)}: {','.join(fields)!r}"
            )
        image, label_text, follow_up, patient, age, sex, view = fields[:7]
        if not image:
            raise DataError(f"{where}: empty 'Image Index'")
        if image in seen:
            raise DataError(f"{where}: image {image} is listed again (first on line {seen[image]})")
        seen[image] = line
        parts = [p.strip() for p in label_text.split("|") if p.strip()]
        if not parts:
            raise DataError(f"{where}: image {image} has no 'Finding Labels' (use 'No Finding')")
        for label in parts:
            if label not in _KNOWN_LABELS:
                known = ", ".join([*FINDINGS, NO_FINDING])
                raise DataError(
                    f"{where}: unknown label {label!r} for image {image} (known: {known})"
                )
        if NO_FINDING in parts and len(parts) > 1:
            raise DataError(f"{where}: image {image} has 'No Finding' together with {parts}")
        labels = tuple(sorted(set(parts) - {NO_FINDING}, key=FINDINGS.index))
        try:
            follow = int(follow_up)
            years = _parse_age(age)
        except ValueError as err:
            raise DataError(
                f"{where}: image {image}: cannot read Follow-up # {follow_up!r} or "
                f"Patient Age {age!r} ({err})"
            ) from None
        if not patient:
            raise DataError(f"{where}: image {image} has an empty 'Patient ID'")
        if patient.isdigit():
            patient = patient.lstrip("0") or "0"
        records.append((image, labels, follow, patient, years, sex, view))
    if not records:
        raise DataError(f"{path}: no image rows below the header")
    return pd.DataFrame.from_records(records, columns=list(ENTRY_COLUMNS[:7]))


def read_split_list(path: str | os.PathLike) -> list[str]:
    """Image names of ``train_val_list.txt`` / ``test_list.txt``, one per line, in order.

    Raises:
        FileNotFoundError: the list is missing (the message says where NIH publishes it).
        DataError: a name appears twice.
    """
    path = Path(path)
    if not path.is_file():
        raise _missing_file(path, "split list")
    names: list[str] = []
    seen: set[str] = set()
    for number, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        name = raw.strip()
        if not name:
            continue
        if name in seen:
            raise DataError(f"{path} line {number}: image {name} is listed twice")
        seen.add(name)
        names.append(name)
    return names


def read_box_list(path: str | os.PathLike) -> pd.DataFrame:
    """Parse ``BBox_List_2017.csv`` into boxes in the 1,024-px release space.

    Each row is ``Image Index, Finding Label, x, y, w, h`` (trailing empty fields are
    ignored); "Infiltrate" becomes "Infiltration" (:data:`imbalens.data.findings.BOX_LABEL_ALIASES`).
    A box is turned into corners ``x0 = x, y0 = y, x1 = x + w, y1 = y + h``; a box partly
    outside ``[0, 1024]`` is clipped to it and reported in one :class:`DataWarning` that
    names the lines. Returns columns ``image, finding, x0, y0, x1, y1, line``.

    Raises:
        FileNotFoundError: the file is missing.
        DataError: wrong number of fields, a finding without boxes in NIH, a non-numeric
            or non-finite coordinate, ``w <= 0`` or ``h <= 0``, or a box entirely outside
            the image; the message names the file and line.
    """
    path = Path(path)
    records: list[tuple[Any, ...]] = []
    clipped: list[str] = []
    for line, fields in _csv_rows(path, "box file"):
        where = f"{path} line {line}"
        if len(fields) != 6:
            raise DataError(
                f"{where}: expected 6 fields (Image Index, Finding Label, x, y, w, h), "
                f"found {len(fields)}: {','.join(fields)!r}"
            )
        image, label = fields[0], BOX_LABEL_ALIASES.get(fields[1], fields[1])
        if label not in BOXED_FINDINGS:
            raise DataError(
                f"{where}: finding {fields[1]!r} of image {image} has no boxes in NIH "
                f"(known: {', '.join(BOXED_FINDINGS)}, or 'Infiltrate')"
            )
        try:
            x, y, w, h = (float(v) for v in fields[2:6])
        except ValueError:
            raise DataError(f"{where}: box {fields[2:6]} of {image} is not numeric") from None
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            raise DataError(f"{where}: box {fields[2:6]} of {image} is not finite")
        if w <= 0 or h <= 0:
            raise DataError(f"{where}: box of {image} has width {w} / height {h}; both must be > 0")
        corners = (x, y, x + w, y + h)
        inside = tuple(min(max(v, 0.0), float(RELEASE_SIZE)) for v in corners)
        if inside != corners:
            if inside[2] <= inside[0] or inside[3] <= inside[1]:
                raise DataError(
                    f"{where}: box (x, y, w, h) = {(x, y, w, h)} of {image} lies entirely "
                    f"outside the {RELEASE_SIZE}x{RELEASE_SIZE} release image"
                )
            clipped.append(f"line {line} ({image} {label})")
        records.append((image, label, *inside, line))
    if clipped:
        more = f" and {len(clipped) - 10} more" if len(clipped) > 10 else ""
        warnings.warn(
            f"{path}: {len(clipped)} box(es) extend outside the {RELEASE_SIZE}x{RELEASE_SIZE} "
            f"release image and were clipped to it: {', '.join(clipped[:10])}{more}",
            DataWarning,
            stacklevel=2,
        )
    return pd.DataFrame.from_records(
        records, columns=["image", "finding", "x0", "y0", "x1", "y1", "line"]
    )


def _scale_boxes(boxes: pd.DataFrame, image_size: int) -> pd.DataFrame:
    scale = image_size / RELEASE_SIZE
    out = boxes[["image", "finding"]].copy()
    for col in ("x0", "y0", "x1", "y1"):
        out[col] = boxes[col].to_numpy(dtype=np.float64) * scale
    return out.reset_index(drop=True)


def load_boxes(root: str | os.PathLike, image_size: int) -> pd.DataFrame:
    """All boxes of ``root/BBox_List_2017.csv`` in model-input pixels (square resize).

    $$ (x_0, y_0, x_1, y_1) = \\tfrac{S}{1024}\\,(x, y, x + w, y + h), \\quad S = \\text{image\\_size} $$

    Returns a DataFrame with columns ``image, finding, x0, y0, x1, y1`` (float64), file
    order, findings spelled as in the labels ("Infiltration"). See :func:`read_box_list`
    for the checks.
    """
    return _scale_boxes(read_box_list(Path(root) / BBOX_LIST), image_size)


def index_images(root: str | os.PathLike) -> dict[str, Path]:
    """Map image file name -> path for every PNG under ``root/images/`` and the tarball
    layout ``root/images_*/images/`` (also ``root/images_*/``), scanning each folder once.

    A name found in two folders keeps the first (``images/`` first, then sorted).
    """
    return {name: Path(path) for name, path in _scan_images(Path(root)).items()}


def _scan_images(root: Path) -> dict[str, str]:
    folders = [root / "images"]
    folders += sorted(p / "images" for p in root.glob("images_*") if (p / "images").is_dir())
    folders += sorted(p for p in root.glob("images_*") if p.is_dir())
    found: dict[str, str] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.lower().endswith(".png") and entry.is_file():
                    found.setdefault(entry.name, entry.path)
    return found


# --------------------------------------------------------------------------- images


def _to_uint8_grey(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "L":
        return np.array(im, dtype=np.uint8)
    if mode.startswith("I") or mode == "F":
        values = np.array(im)
        if values.dtype.kind == "f":
            values = np.nan_to_num(values)
        values = np.clip(values, 0, 65535).astype(np.uint16)
        if values.max(initial=0) <= 255:
            return values.astype(np.uint8)  # 8-bit values in a 16-bit container
        return (values >> 8).astype(np.uint8)
    return np.array(im.convert("L"), dtype=np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a radiograph as 8-bit grey, ``uint8`` array ``(H, W)``, whatever the PNG mode.

    - ``L``: as stored. ``LA``, ``RGB``, ``RGBA``, ``P``, ``1``: Pillow's ``convert("L")``
      (ITU-R 601 luma $$ Y = 0.299 R + 0.587 G + 0.114 B $$, alpha ignored; NIH's RGBA
      files are grey with an opaque alpha).
    - 16-bit (``I;16``, ``I;16B``, ``I``): PNG stores 16-bit samples scaled to the full
      range 0..65535 (PNG spec, "sample depth scaling"), so the 8-bit value is the high
      byte, $$ v_8 = \\lfloor v_{16} / 256 \\rfloor $$ (``v >> 8``). Exception: when every
      sample is <= 255 the file holds 8-bit values in a 16-bit container and they are
      kept as they are (otherwise the image would come out black).

    Raises:
        FileNotFoundError: no such file.
        DataError: the file is not a readable image (corrupt, truncated, not a PNG);
            the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found")
    try:
        with Image.open(path) as im:
            im.load()
            return _to_uint8_grey(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise DataError(
            f"cannot read image {path}: {type(err).__name__}: {err} "
            "(corrupt or truncated file? re-download or re-extract it, or delete it and "
            "load with missing='skip')"
        ) from err


# --------------------------------------------------------------------------- dataset


def box_mask(boxes: np.ndarray, image_size: int) -> np.ndarray:
    """Union masks ``(8, S, S)`` bool of boxes in model-input pixels.

    ``boxes`` is ``(n, 5)``: finding index into :data:`BOXED_FINDINGS`, x0, y0, x1, y1.
    A pixel (row r, column c) is inside a box when its centre is:
    $$ x_0 \\le c + \\tfrac12 < x_1 \\ \\text{and}\\ y_0 \\le r + \\tfrac12 < y_1, $$
    i.e. columns ``ceil(x0 - 1/2) .. ceil(x1 - 1/2) - 1``. A box too thin to contain any
    pixel centre still marks the one pixel that holds its centre, so every box is visible.
    """
    size = image_size
    mask = np.zeros((len(BOXED_FINDINGS), size, size), dtype=bool)
    for k, x0, y0, x1, y1 in boxes:
        c0, c1 = _pixel_span(x0, x1, size)
        r0, r1 = _pixel_span(y0, y1, size)
        mask[int(k), r0:r1, c0:c1] = True
    return mask


def _pixel_span(a: float, b: float, size: int) -> tuple[int, int]:
    lo = min(max(math.ceil(a - 0.5), 0), size)
    hi = min(max(math.ceil(b - 0.5), 0), size)
    if hi <= lo:
        lo = min(max(math.floor((a + b) / 2), 0), size - 1)
        hi = lo + 1
    return lo, hi


class NIHDataset(torch.utils.data.Dataset):
    """Images of one split as model inputs.

    Item ``i``: ``dict(image=float32 (3, S, S) ImageNet-normalised, target=float32 (K,),
    index=i)``, and with boxes also ``box_mask=bool (8, S, S)`` (union of each finding's
    boxes, order :data:`BOXED_FINDINGS`, see :func:`box_mask`) and ``has_box=bool (8,)``.

    Each image is decoded (:func:`read_image`), square-resized to S (bilinear, antialiased)
    as ``uint8``, then augmented (train) and normalised (:mod:`imbalens.data.transforms`).
    With ``cache=True`` the resized ``uint8`` images live in one ``(N, S, S)`` array in
    shared memory (a ``torch`` tensor with a numpy view, :attr:`cache`), filled on first
    use or by :meth:`preload`; DataLoader workers (fork or spawn) write and read the same
    memory, so every image is decoded once.
    With ``prepared`` (:class:`imbalens.data.prepared.PreparedImages`, made once by
    ``imbalens prepare``) images are read from memory-mapped uint8 shards instead of
    decoded. With ``raw=True`` item ``image`` is the ``uint8 (1, S, S)`` image itself, not
    augmented or normalised: the trainer augments whole batches on its device
    (:func:`imbalens.data.transforms.augment_batch`, ``data.augment_on: device``).

    Attributes:
        names: image file names, in item order.
        targets: float32 array ``(N, K)``.
        paths: image paths (str).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        targets: np.ndarray,
        image_size: int,
        augment: bool = False,
        cache: bool = False,
        boxes: Sequence[np.ndarray] | None = None,
        prepared: PreparedImages | None = None,
        raw: bool = False,
    ) -> None:
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        self.paths = [os.fspath(p) for p in paths]
        self.names = [os.path.basename(p) for p in self.paths]
        self.targets = np.asarray(targets, dtype=np.float32)
        self.image_size = int(image_size)
        self.augment = bool(augment)
        self.raw = bool(raw)
        if prepared is not None:
            if prepared.image_size != self.image_size:
                raise ValueError(
                    f"prepared cache {prepared.folder} holds {prepared.image_size} px images, "
                    f"the data set needs {self.image_size} px"
                )
            absent = [n for n in self.names if n not in prepared]
            if absent:
                raise DataError(
                    f"{len(absent)} image(s) not in the prepared cache {prepared.folder}, "
                    f"e.g. {_name_some(absent)}: re-run imbalens prepare"
                )
            cache = False  # the shards are the cache
        self._prepared = prepared
        self._boxes = None if boxes is None else [np.asarray(b, dtype=np.float64) for b in boxes]
        self._augment = build_augment(self.image_size) if augment and not raw else None
        self._cache: torch.Tensor | None = None
        self._filled: torch.Tensor | None = None
        if cache:
            n, s = len(self.paths), self.image_size
            self._cache = torch.zeros((n, s, s), dtype=torch.uint8)
            self._filled = torch.zeros(n, dtype=torch.bool)
            try:
                self._cache.share_memory_()
                self._filled.share_memory_()
            except RuntimeError as err:  # e.g. a too small /dev/shm
                warnings.warn(
                    f"cannot put the image cache ({n * s * s / 2**20:.0f} MiB) in shared "
                    f"memory ({err}); DataLoader workers will each keep their own copy",
                    DataWarning,
                    stacklevel=2,
                )

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def cache(self) -> np.ndarray | None:
        """The ``(N, S, S)`` uint8 image cache as a numpy view (None without cache)."""
        return None if self._cache is None else self._cache.numpy()

    def load_uint8(self, index: int) -> np.ndarray:
        """Image ``index`` decoded and square-resized: ``uint8 (S, S)`` (cached if enabled)."""
        if self._prepared is not None:
            return self._prepared[self.names[index]]
        if self._cache is not None and self._filled is not None and bool(self._filled[index]):
            return self._cache[index].numpy()
        image = resize_grey(read_image(self.paths[index]), self.image_size)
        if self._cache is not None and self._filled is not None:
            self._cache[index] = torch.from_numpy(image)
            self._filled[index] = True
        return image

    def preload(self, threads: int | None = None) -> float:
        """Decode every not yet cached image now (a thread pool; Pillow releases the GIL).

        Returns the seconds it took. Requires ``cache=True``.
        """
        if self._cache is None or self._filled is None:
            raise RuntimeError("preload() needs a dataset made with cache=True")
        todo = torch.nonzero(~self._filled).flatten().tolist()
        start = time.perf_counter()
        workers = threads or min(8, os.cpu_count() or 1)
        if workers <= 1:
            for i in todo:
                self.load_uint8(i)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(self.load_uint8, todo))
        seconds = time.perf_counter() - start
        log.info("decoded %d images in %.1f s", len(todo), seconds)
        return seconds

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        image = torch.from_numpy(np.array(self.load_uint8(index)))[None]
        item: dict[str, Any] = {"index": int(index)}
        mask = None
        if self._boxes is not None:
            boxes = self._boxes[index]
            mask = torch.from_numpy(box_mask(boxes, self.image_size))
            has_box = np.zeros(len(BOXED_FINDINGS), dtype=bool)
            has_box[boxes[:, 0].astype(int)] = True
            item["has_box"] = torch.from_numpy(has_box)
        if self._augment is not None:
            if mask is not None:
                image, mask = self._augment(tv_tensors.Image(image), tv_tensors.Mask(mask))
                mask = mask.as_subclass(torch.Tensor)
            else:
                image = self._augment(tv_tensors.Image(image))
            image = image.as_subclass(torch.Tensor)
        item["image"] = image if self.raw else normalize(image)
        item["target"] = torch.from_numpy(self.targets[index].copy())
        if mask is not None:
            item["box_mask"] = mask
        return item


# --------------------------------------------------------------------------- the data set


class NIHData:
    """A parsed NIH-layout data set: labels, splits, boxes; datasets per split.

    Made by :func:`load_nih`. Attributes: ``root``, ``task``, ``class_names``,
    ``include_no_finding``, ``table`` (one row per usable image: image, labels,
    follow_up, patient, age, sex, view, split, path).
    """

    def __init__(
        self,
        root: Path,
        task: str,
        include_no_finding: bool,
        table: pd.DataFrame,
        release_boxes: pd.DataFrame | None,
    ) -> None:
        self.root = root
        self.task = task
        self.include_no_finding = include_no_finding
        self.class_names = class_names(task, include_no_finding)
        self.table = table
        self._release_boxes = release_boxes
        self._targets = _targets(table["labels"], task, include_no_finding)
        self._row = {name: i for i, name in enumerate(table["image"])}
        boxed = set() if release_boxes is None else set(release_boxes["image"])
        split = table["split"].to_numpy()
        self._split_rows = {s: np.flatnonzero(split == s) for s in ("train", "val", "test")}
        has_box = table["image"].isin(boxed).to_numpy()
        self._split_rows["boxed"] = np.flatnonzero((split == "test") & has_box)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(self._split_rows[s])}" for s in SPLITS)
        return f"NIHData(root={str(self.root)!r}, task={self.task!r}, {sizes})"

    def _rows(self, split: str) -> np.ndarray:
        if split not in self._split_rows:
            raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
        if split == "boxed" and self._release_boxes is None:
            raise _missing_file(self.root / BBOX_LIST, "box file")
        return self._split_rows[split]

    def images(self, split: str) -> list[str]:
        """Image names of ``split`` ("train", "val", "test", "boxed"), Data_Entry order."""
        return self.table["image"].to_numpy()[self._rows(split)].tolist()

    def paths(self, split: str) -> list[Path]:
        """Image paths of ``split``."""
        return [Path(p) for p in self.table["path"].to_numpy()[self._rows(split)]]

    def targets(self, split: str) -> np.ndarray:
        """Targets ``(N, K)`` float32 of ``split``, columns in :attr:`class_names` order."""
        return self._targets[self._rows(split)]

    def counts(self, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """Per-output positives and negatives of ``split``: ``N+ = sum_i y_i``,
        ``N- = N - N+`` (int64 arrays of length K), the class counts of the losses."""
        t = self.targets(split)
        pos = t.sum(axis=0).astype(np.int64)
        return pos, len(t) - pos

    def boxes(self, image_size: int) -> pd.DataFrame:
        """Boxes of the usable images (in a split list and on disk) in model-input pixels,
        columns ``image, finding, x0, y0, x1, y1`` (see :func:`load_boxes`)."""
        if self._release_boxes is None:
            raise _missing_file(self.root / BBOX_LIST, "box file")
        keep = self._release_boxes["image"].isin(self._row)
        return _scale_boxes(self._release_boxes[keep], image_size)

    def dataset(
        self,
        split: str,
        image_size: int,
        augment: bool = False,
        cache: bool = False,
        prepared: PreparedImages | None = None,
        raw: bool = False,
    ) -> NIHDataset:
        """A :class:`NIHDataset` of ``split``; for "boxed" items carry ``box_mask`` and
        ``has_box`` (augmentation, if asked for, moves the masks with the image).
        ``prepared`` and ``raw``: see :class:`NIHDataset`."""
        rows = self._rows(split)
        paths = self.table["path"].to_numpy()[rows].tolist()
        boxes = None
        if split == "boxed":
            scaled = self.boxes(image_size)
            code = scaled["finding"].map({f: i for i, f in enumerate(BOXED_FINDINGS)})
            arr = np.column_stack([code.to_numpy(np.float64), scaled[["x0", "y0", "x1", "y1"]]])
            by_image: dict[str, list[np.ndarray]] = {}
            for name, row in zip(scaled["image"], arr, strict=True):
                by_image.setdefault(name, []).append(row)
            names = self.table["image"].to_numpy()[rows]
            boxes = [np.stack(by_image[n]) for n in names]
        return NIHDataset(
            paths, self._targets[rows], image_size, augment, cache, boxes, prepared, raw
        )


def _targets(labels: pd.Series, task: str, include_no_finding: bool) -> np.ndarray:
    names = class_names(task, include_no_finding)
    out = np.zeros((len(labels), len(names)), dtype=np.float32)
    if task == "binary":
        out[:, 0] = [1.0 if lab else 0.0 for lab in labels]
        return out
    column = {name: j for j, name in enumerate(names)}
    for i, lab in enumerate(labels):
        for finding in lab:
            out[i, column[finding]] = 1.0
        if not lab and NO_FINDING in column:
            out[i, column[NO_FINDING]] = 1.0
    return out


def _name_some(names: Sequence[str]) -> str:
    more = f", ... ({len(names) - _SHOW} more)" if len(names) > _SHOW else ""
    return ", ".join(names[:_SHOW]) + more


def _val_patients(patients: Sequence[str], val_fraction: float, seed: int) -> set[str]:
    unique = sorted(set(patients), key=lambda p: (len(p), p))
    if val_fraction <= 0 or not unique:
        return set()
    n_val = min(max(1, round(val_fraction * len(unique))), len(unique) - 1)
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[i] for i in order[:n_val]}


def _check_arguments(
    root: Path, task: str, include_no_finding: bool, val_fraction: float, missing: str
) -> bool:
    """Validate :func:`load_nih`'s arguments; returns the effective ``include_no_finding``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing={missing!r}: choose one of {', '.join(MISSING_POLICIES)}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if include_no_finding and task != "multilabel":
        log.info("include_no_finding is ignored for task=%r (one output 'Unhealthy')", task)
        include_no_finding = False
    if not root.is_dir():
        raise FileNotFoundError(
            f"data root {root} is not a folder: it should hold NIH's {DATA_ENTRY}, "
            f"{TRAIN_VAL_LIST}, {TEST_LIST}, {BBOX_LIST} and images/ (published at "
            f"{NIH_URL}), or make a phantom with `imbalens synth --out {root}`"
        )
    return include_no_finding


def _read_lists(root: Path) -> tuple[list[str], list[str]]:
    """The two split lists; an empty one or an image in both is an error naming the file."""
    train_val = read_split_list(root / TRAIN_VAL_LIST)
    test = read_split_list(root / TEST_LIST)
    for path, names in ((root / TRAIN_VAL_LIST, train_val), (root / TEST_LIST, test)):
        if not names:
            raise DataError(f"{path} lists no image: the split needs at least one")
    both = sorted(set(train_val) & set(test))
    if both:
        raise DataError(
            f"{len(both)} image(s) are in both {root / TRAIN_VAL_LIST} and "
            f"{root / TEST_LIST}: {_name_some(both)}"
        )
    return train_val, test


def _listed_table(root: Path, stacklevel: int = 3) -> pd.DataFrame:
    """Data_Entry rows of the images in a split list, with a ``split`` column."""
    table = read_data_entry(root / DATA_ENTRY)
    train_val, test = _read_lists(root)
    split_of = dict.fromkeys(train_val, "train_val") | dict.fromkeys(test, "test")
    known = set(table["image"])
    unlabelled = [n for n in [*train_val, *test] if n not in known]
    if unlabelled:
        warnings.warn(
            f"{len(unlabelled)} image(s) of the split lists have no row in "
            f"{root / DATA_ENTRY} and are ignored: {_name_some(unlabelled)}",
            DataWarning,
            stacklevel=stacklevel,
        )
    table["split"] = table["image"].map(split_of)
    unlisted = int(table["split"].isna().sum())
    if unlisted:
        log.info("%d labelled image(s) are in neither split list; ignored", unlisted)
    return table[table["split"].notna()].reset_index(drop=True)


def _attach_paths(
    root: Path, table: pd.DataFrame, missing: str, stacklevel: int = 3
) -> pd.DataFrame:
    """Add each image's ``path``; images absent on disk are an error or skipped."""
    on_disk = _scan_images(root)
    absent = [n for n in table["image"] if n not in on_disk]
    if absent:
        if missing == "error":
            raise DataError(
                f"{len(absent)} of {len(table)} listed image(s) are missing under "
                f"{root / 'images'} (or images_*/images): {_name_some(absent)}. Download "
                f"them from {NIH_URL}, or pass missing='skip' (data.missing: skip) to "
                "leave them out"
            )
        warnings.warn(
            f"skipping {len(absent)} of {len(table)} listed image(s) missing under "
            f"{root / 'images'}: {_name_some(absent)}",
            DataWarning,
            stacklevel=stacklevel,
        )
        table = table[table["image"].isin(on_disk)].reset_index(drop=True)
    table["path"] = [on_disk[n] for n in table["image"]]
    return table


def _split_val(table: pd.DataFrame, val_fraction: float, split_seed: int) -> None:
    """Turn ``train_val`` rows into ``train`` / ``val`` (patient-wise), in place."""
    is_tv = table["split"].to_numpy() == "train_val"
    val = _val_patients(table.loc[is_tv, "patient"].tolist(), val_fraction, split_seed)
    in_val = is_tv & table["patient"].isin(val).to_numpy()
    table.loc[is_tv & ~in_val, "split"] = "train"
    table.loc[in_val, "split"] = "val"
    shared = set(table.loc[is_tv, "patient"]) & set(table.loc[~is_tv, "patient"])
    if shared:
        warnings.warn(
            f"{len(shared)} patient(s) have images in both {TRAIN_VAL_LIST} and {TEST_LIST} "
            f"(the split is not patient-wise): {_name_some(sorted(shared))}",
            DataWarning,
            stacklevel=3,
        )


def load_nih(
    root: str | os.PathLike,
    task: str = "multilabel",
    include_no_finding: bool = False,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    missing: str = "error",
) -> NIHData:
    """Read an NIH-layout data set at ``root`` (see the module docstring for the files).

    Splits: ``test`` = images of ``test_list.txt``; ``val`` = the images of
    ``round(val_fraction * P)`` of the P train_val patients (at least 1 when
    ``val_fraction > 0``), chosen by ``numpy.random.default_rng(split_seed).permutation``
    over the patient ids sorted; ``train`` = the rest of ``train_val_list.txt``;
    ``boxed`` = test images with at least one box. No patient is in both train and val.

    Args:
        root: folder with Data_Entry_2017.csv, the lists, BBox_List_2017.csv, images.
        task: "multilabel" or "binary".
        include_no_finding: multilabel only: add "No Finding" as output 10 (of 15);
            ignored for the binary task, as in :func:`imbalens.data.findings.class_names`.
        val_fraction: share of train_val patients held out for validation, in [0, 1).
        split_seed: seed of the validation draw.
        missing: images listed but absent on disk: "error" or "skip" (drop, warn).

    Raises:
        FileNotFoundError: a required file is missing (names it and where NIH publishes it).
        DataError: bad rows (see :func:`read_data_entry`, :func:`read_box_list`), an image
            in both lists, an empty split list, or listed images missing on disk with
            ``missing="error"``.
        ValueError: an unknown task or missing policy, or val_fraction outside [0, 1).
    """
    root = Path(root)
    include_no_finding = _check_arguments(root, task, include_no_finding, val_fraction, missing)
    table = _attach_paths(root, _listed_table(root), missing)
    _split_val(table, val_fraction, split_seed)
    box_path = root / BBOX_LIST
    release_boxes = read_box_list(box_path) if box_path.is_file() else None
    if release_boxes is None:
        log.warning("%s not found: the 'boxed' split and boxes() are unavailable", box_path)
    data = NIHData(root, task, include_no_finding, table, release_boxes)
    log.info("%r", data)
    return data


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def png_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete PNG, from its header and tail only (no decoding).

    Checks the 8-byte signature, an ``IHDR`` chunk with non-zero width and height (PNG
    spec, sec. 11.2.2) and that the file ends with the 12-byte ``IEND`` chunk, so empty,
    non-PNG and truncated files are found in microseconds each. Returns None when fine.
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(33)
            size = os.fstat(fh.fileno()).st_size
            if size < 45:
                return f"{size} bytes: too short for a PNG (empty or truncated)"
            fh.seek(-12, os.SEEK_END)
            tail = fh.read(12)
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if head[:8] != _PNG_SIGNATURE:
        return "not a PNG (wrong signature)"
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[12:16] != b"IHDR" or width == 0 or height == 0:
        return "PNG without a valid IHDR header"
    if tail != _PNG_IEND:
        return "truncated PNG (no IEND chunk at the end)"
    return None


def preflight(root: str | os.PathLike, missing: str = "error") -> dict[str, Any]:
    """Check a data root before any training: files, lists, CSVs and every listed image.

    Reads ``Data_Entry_2017.csv``, both split lists (not empty, disjoint),
    ``BBox_List_2017.csv`` when present, finds every listed image on disk (``missing``
    as in :func:`load_nih`) and checks each one's PNG header and tail
    (:func:`png_problem`): seconds for the 112,120 NIH images, not minutes of decoding.

    Returns:
        ``{"images": n, "seconds": s}``.

    Raises:
        FileNotFoundError, DataError: naming the file (and line or image) and the fix.
    """
    t0 = time.perf_counter()
    r = Path(root)
    _check_arguments(r, "multilabel", False, 0.0, missing)
    table = _attach_paths(r, _listed_table(r, stacklevel=4), missing, stacklevel=4)
    if (r / BBOX_LIST).is_file():
        read_box_list(r / BBOX_LIST)
    bad = [(p, why) for p in table["path"] if (why := png_problem(p)) is not None]
    if bad:
        shown = "; ".join(f"{p}: {why}" for p, why in bad[:_SHOW])
        raise DataError(
            f"{len(bad)} of {len(table)} listed image(s) under {r} are not readable PNGs: "
            f"{shown}{' ...' if len(bad) > _SHOW else ''}. Re-download or re-extract them "
            "(or delete them and set data.missing: skip to leave them out)"
        )
    return {"images": len(table), "seconds": round(time.perf_counter() - t0, 2)}


def load_nih_from_config(data_cfg: Mapping[str, Any]) -> NIHData:
    """:func:`load_nih` with the arguments of a run config's ``data`` section.

    Missing keys take their defaults from :data:`imbalens.config.DEFAULTS`.
    """
    from imbalens.config import DEFAULTS

    d = {**DEFAULTS["data"], **data_cfg}
    return load_nih(
        d["root"],
        task=d["task"],
        include_no_finding=d["include_no_finding"],
        val_fraction=d["val_fraction"],
        split_seed=d["split_seed"],
        missing=d["missing"],
    )
