"""Prepared-image cache (imbalens.data.prepared) and training from it with device augmentation.

The cache must hold exactly the pixels the PNG path gives, be refused and rebuilt when its
source changes, resume an interrupted build from its finished shards, and catch a corrupt
shard by checksum. (The batched augmentation is tested in tests/data/test_transforms.py.)
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from imbalens.data import prepared as prep
from imbalens.data.nih import load_nih, read_image
from imbalens.data.prepared import StaleCache, open_prepared, prepare, verify
from imbalens.data.transforms import resize_grey
from imbalens.training.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def phantom(tiny_phantom: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny phantom (tests here touch and corrupt files)."""
    root = tmp_path / "phantom"
    shutil.copytree(tiny_phantom, root)
    return root


def test_cache_holds_the_png_paths_pixels(phantom: Path, tmp_path: Path) -> None:
    r = prepare(phantom, tmp_path / "cache", 48, workers=2, shard_images=64)
    assert r.built and r.images == 400 and r.folder == tmp_path / "cache" / "48px"
    manifest = json.loads((r.folder / "manifest.json").read_text())
    assert [s["count"] for s in manifest["shards"]] == [64] * 6 + [16]
    assert r.bytes >= 400 * 48 * 48
    imgs = open_prepared(phantom, tmp_path / "cache", 48)
    for name in imgs.names[::37] + [imgs.names[-1]]:
        expected = resize_grey(read_image(phantom / "images" / name), 48)
        assert np.array_equal(imgs[name], expected), name
    assert verify(r.folder) == []
    # up to date: kept, not rebuilt
    again = prepare(phantom, tmp_path / "cache", 48)
    assert not again.built


def test_dataset_items_from_the_cache_equal_the_png_items(phantom: Path, tmp_path: Path) -> None:
    prepare(phantom, tmp_path / "cache", 32, workers=1)
    data = load_nih(phantom)
    imgs = open_prepared(phantom, tmp_path / "cache", 32)
    for split in ("test", "boxed"):
        png = data.dataset(split, 32)
        cached = data.dataset(split, 32, prepared=imgs)
        for i in (0, 5, len(png) - 1):
            a, b = png[i], cached[i]
            assert torch.equal(a["image"], b["image"])
            if split == "boxed":
                assert torch.equal(a["box_mask"], b["box_mask"])
    # raw items are the uint8 image itself, no augmentation
    raw = data.dataset("train", 32, augment=True, prepared=imgs, raw=True)
    item = raw[3]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (1, 32, 32)
    assert np.array_equal(item["image"][0].numpy(), imgs[raw.names[3]])
    # a pickled dataset (spawned DataLoader worker) carries no mapped array
    clone = pickle.loads(pickle.dumps(cached))
    assert clone._prepared._maps == {}
    assert torch.equal(clone[0]["image"], cached[0]["image"])


def test_a_changed_source_makes_the_cache_stale(phantom: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    prepare(phantom, cache, 32, workers=1)
    with pytest.raises(StaleCache, match="64 px.*no manifest.json.*imbalens prepare"):
        open_prepared(phantom, cache, 64)  # another size: not prepared
    victim = sorted((phantom / "images").glob("*.png"))[7]
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(StaleCache, match="fingerprint.*imbalens prepare --root"):
        open_prepared(phantom, cache, 32)
    assert prepare(phantom, cache, 32, workers=1).built  # rebuilt
    open_prepared(phantom, cache, 32)
    victim.unlink()  # an image fewer
    with pytest.raises(StaleCache, match="count is 400, the source needs 399"):
        open_prepared(phantom, cache, 32)


def test_an_interrupted_build_resumes_from_its_finished_shards(
    phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    real = prep._write_shard
    written: list[str] = []

    def dies_on_the_third(path: Path, *args: object) -> str:
        if len(written) == 2:
            raise KeyboardInterrupt("killed")
        written.append(path.name)
        return real(path, *args)

    monkeypatch.setattr(prep, "_write_shard", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        prepare(phantom, cache, 32, workers=1, shard_images=100)
    assert not (cache / "32px").exists()  # nothing carries the final name
    assert sorted(p.name for p in (cache / "32px.partial").glob("shard-*.npy")) == written
    assert not list((cache / "32px.partial").glob("*.tmp"))

    written.clear()
    monkeypatch.setattr(
        prep, "_write_shard", lambda path, *a: written.append(path.name) or real(path, *a)
    )
    r = prepare(phantom, cache, 32, workers=1, shard_images=100)
    assert r.built and written == ["shard-00002.npy", "shard-00003.npy"]
    assert not (cache / "32px.partial").exists()
    fresh = prepare(phantom, tmp_path / "fresh", 32, workers=1, shard_images=100)
    for a, b in zip(
        sorted(r.folder.glob("*.npy")), sorted(fresh.folder.glob("*.npy")), strict=True
    ):
        assert a.read_bytes() == b.read_bytes()


def test_a_corrupt_shard_fails_its_checksum(phantom: Path, tmp_path: Path) -> None:
    r = prepare(phantom, tmp_path / "cache", 32, workers=1, shard_images=256)
    shard = r.folder / "shard-00001.npy"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert verify(r.folder) == [str(shard)]
    from imbalens.cli import main

    assert (
        main(
            ["prepare", "--root", str(phantom), "--cache", str(tmp_path / "cache")]
            + ["--size", "32", "--verify"]
        )
        == 1
    )
    assert (
        main(
            ["prepare", "--root", str(phantom), "--cache", str(tmp_path / "cache")]
            + ["--size", "32", "--verify", "--force"]
        )
        == 0
    )
    only = r.folder / "shard-00000.npy"  # the rebuild has the default shard size: one shard
    only.write_bytes(only.read_bytes()[:1000])  # truncated: stale without reading the bytes
    with pytest.raises(StaleCache, match="truncated"):
        open_prepared(phantom, tmp_path / "cache", 32)


def test_prepare_cli_reads_the_config_and_names_what_is_missing(
    phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from imbalens.cli import main

    cfg = tmp_path / "run.yaml"
    cache = tmp_path / "cache"
    cfg.write_text(f"data:\n  root: {phantom}\n  prepared: {cache}\n  image_size: 24\n")
    assert main(["prepare", str(cfg), "--workers", "1"]) == 0
    assert "24px (400 images" in capsys.readouterr().out
    assert main(["prepare", "--root", str(phantom)]) == 2
    assert "data.prepared" in capsys.readouterr().err


def test_a_run_on_the_cache_with_device_augmentation_trains(
    phantom: Path, tmp_path: Path, small_config
) -> None:
    cache = tmp_path / "cache"
    prepare(phantom, cache, 32, workers=1)
    cfg = small_config(
        phantom,
        data={"prepared": str(cache), "augment_on": "device"},
        loss={"name": "wbce"},
        train={"epochs": 1, "batch_size": 16, "max_steps_per_epoch": 3}
        | {"progress": "off", "workers": 1},
    )
    metrics = train(cfg, tmp_path / "run")
    assert np.isfinite(metrics["auroc_mean"])
    # stale cache: the run refuses to start and says how to rebuild
    victim = sorted((phantom / "images").glob("*.png"))[0]
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    with pytest.raises(StaleCache, match="imbalens prepare"):
        train(cfg, tmp_path / "run2")


def test_the_grid_builds_each_named_cache_once_before_the_runs(
    phantom: Path, tmp_path: Path
) -> None:
    from types import SimpleNamespace

    from imbalens.study.grid import _prepare_caches

    def run(size: int, prepared: str | None) -> SimpleNamespace:
        data = {"root": str(phantom), "image_size": size, "prepared": prepared}
        return SimpleNamespace(config={"data": data})

    cache = str(tmp_path / "cache")
    plan = SimpleNamespace(chosen=[run(24, cache), run(24, cache), run(16, cache), run(24, None)])
    _prepare_caches(plan)  # type: ignore[arg-type]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["16px", "24px"]
    stamp = (tmp_path / "cache" / "24px" / "manifest.json").stat().st_mtime_ns
    _prepare_caches(plan)  # type: ignore[arg-type]  # up to date: kept
    assert (tmp_path / "cache" / "24px" / "manifest.json").stat().st_mtime_ns == stamp
