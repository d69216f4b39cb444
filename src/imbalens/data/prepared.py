"""A prepared-image cache: a data set decoded and resized once into uint8 ``.npy`` shards.

Decoding NIH's 1,024 px PNGs is the cost that starves a GPU (an H200 trains ResNet50 at
~3,500 img/s at 224 px; one core decodes a few dozen 1,024 px PNGs a second). ``imbalens
prepare`` (:func:`prepare`) decodes every PNG under a data root once
(:func:`imbalens.data.nih.read_image`), square-resizes it to the model input S
(:func:`imbalens.data.transforms.resize_grey`, bilinear, antialiased: the same pixels
the PNG path gives) and stores the images as ``uint8 (n, S, S)`` shards that the data
loader memory-maps (:class:`PreparedImages`).

Layout of ``<cache>/<S>px/``::

    manifest.json        format, image size, source fingerprint, names, shards + sha256
    shard-00000.npy      uint8 (n_0, S, S), images in manifest order
    shard-00001.npy      ...

The manifest's *source fingerprint* is the SHA-256 of every source PNG's name, byte size
and modification time (:func:`source_fingerprint`); each shard's SHA-256 is recorded
when it is written. The cache is **stale** when the fingerprint, the image size or the
resize code version differ, and :func:`prepare` rebuilds it; :func:`open_prepared`
refuses a stale or incomplete cache with a message that names the command to run.

Nothing is half-written: shards are built in ``<S>px.partial/`` (each renamed into place
once complete, progress recorded after each), and the folder is renamed to ``<S>px/`` only
when the manifest is written. An interrupted :func:`prepare` resumes from its finished
shards when the source has not changed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from imbalens.config import ConfigError, load_config, merge_config
from imbalens.data.nih import index_images, read_image
from imbalens.data.transforms import resize_grey
from imbalens.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

#: bump when the decode/resize code changes what pixels a cache holds
FORMAT = 1
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
SHARD_IMAGES = 4096  # 4,096 x 224 x 224 B = 196 MiB per shard


class StaleCache(ValueError):
    """A prepared cache that is missing, incomplete or does not match its source."""


def cache_folder(cache: str | os.PathLike[str], image_size: int) -> Path:
    """``<cache>/<S>px``: where the images prepared at side ``S`` live."""
    return Path(cache) / f"{int(image_size)}px"


def source_fingerprint(files: Mapping[str, str | os.PathLike[str]]) -> str:
    """SHA-256 over ``name \\t bytes \\t mtime_ns`` of every source PNG, sorted by name.

    Cheap (one ``stat`` per file, no reading) and changes when an image is added,
    removed, replaced or touched.
    """
    h = hashlib.sha256()
    for name in sorted(files):
        st = os.stat(files[name])
        h.update(f"{name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes (read in 4 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of a prepared folder, or None when absent or unreadable."""
    return _read_json(Path(folder) / MANIFEST)


def _expected(files: Mapping[str, Any], image_size: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "image_size": int(image_size),
        "count": len(files),
        "fingerprint": source_fingerprint(files),
    }


def staleness(
    manifest: Mapping[str, Any] | None, expected: Mapping[str, Any], folder: Path
) -> str | None:
    """Why a prepared folder cannot serve ``expected`` (None when it can).

    Checks the manifest's format, image size, image count and source fingerprint, and
    that every shard file exists with the byte size its shape implies (not the SHA-256:
    :func:`verify` reads the bytes).
    """
    if manifest is None:
        return f"no {MANIFEST} in {folder}"
    if manifest.get("count") == expected["count"] and (
        manifest.get("fingerprint") != expected["fingerprint"]
    ):
        return "fingerprint differs: a source image was replaced or touched since it was built"
    for key in ("format", "image_size", "count"):
        if manifest.get(key) != expected[key]:
            return f"{key} is {manifest.get(key)!r}, the source needs {expected[key]!r}"
    s = int(expected["image_size"])
    for shard in manifest.get("shards", []):
        path = folder / shard["file"]
        if not path.is_file():
            return f"shard {path} is missing"
        if path.stat().st_size < int(shard["count"]) * s * s:
            return f"shard {path} is truncated"
    return None


def verify(folder: str | os.PathLike[str]) -> list[str]:
    """Re-hash every shard of a prepared folder; the files whose SHA-256 differs."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return [str(folder / MANIFEST)]
    return [
        str(folder / s["file"])
        for s in manifest["shards"]
        if not (folder / s["file"]).is_file() or file_sha256(folder / s["file"]) != s["sha256"]
    ]


@dataclass(frozen=True)
class PrepareResult:
    """What :func:`prepare` did: the folder, whether it (re)built, images and seconds."""

    folder: Path
    built: bool
    images: int
    seconds: float
    bytes: int


def _decode(path: str, image_size: int) -> np.ndarray:
    return resize_grey(read_image(path), image_size)


def _chunks(names: Sequence[str], size: int) -> Iterator[tuple[int, Sequence[str]]]:
    for k, start in enumerate(range(0, len(names), size)):
        yield k, names[start : start + size]


def _write_shard(
    path: Path, paths: Sequence[str], image_size: int, pool: ThreadPoolExecutor | None
) -> str:
    """Decode ``paths`` into ``path`` (a ``.npy``, written atomically); its SHA-256."""
    with atomic_path(path) as tmp:
        arr = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(paths), image_size, image_size)
        )
        images = (
            pool.map(_decode, paths, [image_size] * len(paths))
            if pool is not None
            else (_decode(p, image_size) for p in paths)
        )
        for i, image in enumerate(images):
            arr[i] = image
        arr.flush()
        del arr
        digest = file_sha256(tmp)
    return digest


def prepare(
    root: str | os.PathLike[str],
    cache: str | os.PathLike[str],
    image_size: int,
    workers: int | None = None,
    shard_images: int = SHARD_IMAGES,
    force: bool = False,
) -> PrepareResult:
    """Decode every PNG under ``root`` once into ``<cache>/<S>px/`` (uint8 shards).

    Args:
        root: an NIH-layout data root (images found by :func:`imbalens.data.nih.index_images`).
        cache: the cache folder (``data.prepared`` of a run config).
        image_size: the model input side S.
        workers: decoding threads (Pillow and torch release the GIL); default all cores.
        shard_images: images per shard.
        force: rebuild even when an up-to-date cache exists.

    Returns:
        A :class:`PrepareResult`; ``built`` is False when an up-to-date cache was kept.

    Raises:
        imbalens.data.nih.DataError: an unreadable PNG (named).
        FileNotFoundError: no PNG under ``root``.
    """
    t0 = time.perf_counter()
    files = {name: os.fspath(p) for name, p in index_images(root).items()}
    if not files:
        raise FileNotFoundError(
            f"no PNG images under {root}/images/ or {root}/images_*/ (is data.root right?)"
        )
    expected = _expected(files, image_size)
    final = cache_folder(cache, image_size)
    if not force and staleness(read_manifest(final), expected, final) is None:
        return PrepareResult(final, False, len(files), time.perf_counter() - t0, _bytes(final))

    names = sorted(files)
    partial = final.with_name(final.name + ".partial")
    progress = _read_json(partial / PROGRESS)
    if force or progress is None or {k: progress.get(k) for k in expected} != expected:
        shutil.rmtree(partial, ignore_errors=True)
        progress = {**expected, "shards": []}
    partial.mkdir(parents=True, exist_ok=True)
    done = {s["file"]: s for s in progress["shards"] if (partial / s["file"]).is_file()}
    n_workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(n_workers) if n_workers > 1 else contextlib.nullcontext() as pool:
        for k, chunk in _chunks(names, shard_images):
            file = f"shard-{k:05d}.npy"
            if file in done:
                continue
            digest = _write_shard(partial / file, [files[n] for n in chunk], image_size, pool)
            done[file] = {"file": file, "count": len(chunk), "sha256": digest}
            progress["shards"] = sorted(done.values(), key=lambda s: s["file"])
            atomic_write_text(partial / PROGRESS, json.dumps(progress))
            log.info("prepared %s (%d images)", file, len(chunk))
    manifest = {
        **expected,
        "root": os.fspath(Path(root).resolve()),
        "names": names,
        "shards": sorted(done.values(), key=lambda s: s["file"]),
        "resize": "read_image -> resize_grey (torchvision bilinear, antialias)",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(partial / MANIFEST, json.dumps(manifest))
    (partial / PROGRESS).unlink(missing_ok=True)
    if final.exists():
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        final.rename(old)
        partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        partial.rename(final)
    return PrepareResult(final, True, len(names), time.perf_counter() - t0, _bytes(final))


def _bytes(folder: Path) -> int:
    """Bytes on disk of a prepared folder's shards."""
    return sum(p.stat().st_size for p in folder.glob("shard-*.npy"))


class PreparedImages:
    """Read-only access to a prepared folder: ``images[name] -> uint8 (S, S)``.

    Shards are memory-mapped on first use in each process and not pickled (a DataLoader
    worker, fork or spawn, maps them itself), so the page cache is shared by all workers.

    Example:
        >>> imgs = open_prepared("data/phantom", "prepared/phantom", 224)  # doctest: +SKIP
        >>> imgs["00000001_000.png"].shape  # doctest: +SKIP
        (224, 224)
    """

    def __init__(self, folder: Path, manifest: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.image_size = int(manifest["image_size"])
        self.names: list[str] = list(manifest["names"])
        self._shards = [(s["file"], int(s["count"])) for s in manifest["shards"]]
        self._index = {name: i for i, name in enumerate(self.names)}
        self._starts = np.cumsum([0] + [c for _, c in self._shards])
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            i = self._index[name]
        except KeyError:
            raise KeyError(
                f"image {name} is not in the prepared cache {self.folder} (re-run imbalens prepare)"
            ) from None
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        row = i - int(self._starts[k])
        if k not in self._maps:
            self._maps[k] = np.load(self.folder / self._shards[k][0], mmap_mode="r")
        return self._maps[k][row]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}}


def open_prepared(
    root: str | os.PathLike[str], cache: str | os.PathLike[str], image_size: int
) -> PreparedImages:
    """Open ``<cache>/<S>px`` for the data at ``root``, refusing it when stale.

    Raises:
        StaleCache: missing, incomplete or made from other files / another size; the
            message names the ``imbalens prepare`` command that rebuilds it.
    """
    folder = cache_folder(cache, image_size)
    files = {name: os.fspath(p) for name, p in index_images(root).items()}
    manifest = read_manifest(folder)
    why = staleness(manifest, _expected(files, image_size), folder)
    if why is not None or manifest is None:
        raise StaleCache(
            f"prepared cache {folder} cannot be used for {root} at {image_size} px: {why}; "
            f"run: imbalens prepare --root {root} --cache {cache} --size {image_size}"
        )
    return PreparedImages(folder, manifest)


# --------------------------------------------------------------------------- CLI
def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Flags of ``imbalens prepare``."""
    parser.add_argument(
        "config",
        nargs="?",
        type=Path,
        help="a run config or a grid (its base:): data.root, data.prepared, data.image_size",
    )
    parser.add_argument("--root", type=Path, help="data root (NIH layout); overrides the config")
    parser.add_argument("--cache", type=Path, help="cache folder; overrides data.prepared")
    parser.add_argument("--size", type=int, nargs="+", help="image side(s) S in px")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (all cores)")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--verify", action="store_true", help="re-hash the shards afterwards")


def _from_config(args: argparse.Namespace) -> tuple[Path, Path, list[int]]:
    d: dict[str, Any] = {}
    if args.config is not None:
        doc = _yaml(args.config)  # a grid's base: or a run config
        d = (merge_config(doc["base"]) if "base" in doc else load_config(args.config))["data"]
    root = args.root or d.get("root")
    cache = args.cache or d.get("prepared")
    sizes = args.size or ([d["image_size"]] if "image_size" in d else None)
    if root is None or cache is None or not sizes:
        raise ConfigError(
            "imbalens prepare needs a data root, a cache folder and a size: give a config "
            "with data.root, data.prepared and data.image_size, or --root, --cache, --size"
        )
    return Path(root), Path(cache), [int(s) for s in sizes]


def _yaml(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return {}  # load_config names the problem
    return doc if isinstance(doc, dict) else {}


def cli(args: argparse.Namespace) -> int:
    """Run ``imbalens prepare``; prints each cache folder, its images, size on disk."""
    root, cache, sizes = _from_config(args)
    status = 0
    for size in sizes:
        r = prepare(root, cache, size, workers=args.workers, force=args.force)
        what = "built" if r.built else "up to date"
        print(
            f"prepared: {r.folder} ({r.images} images, {r.bytes / 2**20:.1f} MiB, {what}) "
            f"in {r.seconds:.1f} s"
        )
        if args.verify:
            bad = verify(r.folder)
            for path in bad:
                print(f"prepared: checksum mismatch: {path} (rebuild with --force)")
            status = status or (1 if bad else 0)
    return status


__all__ = [
    "PrepareResult",
    "PreparedImages",
    "StaleCache",
    "cache_folder",
    "open_prepared",
    "prepare",
    "source_fingerprint",
    "staleness",
    "verify",
]
