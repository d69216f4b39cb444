"""End-to-end test of imbalens.explain.analyse on the tiny phantom with random-init models."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from imbalens.config import dump_config, merge_config
from imbalens.data.findings import BOXED_FINDINGS
from imbalens.data.nih import load_nih
from imbalens.explain.alignment import soft_iobb
from imbalens.explain.analyse import DONE, analyse_model, analyse_run
from imbalens.explain.cam import class_activation_maps

LIMIT = 12


def test_analyse_model_end_to_end(tiny_phantom, tmp_path, small_config):
    from imbalens.training.models import build_model

    cfg = small_config(tiny_phantom, data={"image_size": 64}, analysis={"batch_size": 5})
    data = load_nih(tiny_phantom)
    torch.manual_seed(0)
    model = build_model("t-densenet", len(data.class_names)).eval()
    res = analyse_model(model, data, cfg, tmp_path, device="cpu", limit=LIMIT)

    ds = data.dataset("boxed", 64)
    items = [ds[i] for i in range(LIMIT)]
    n_maps = int(sum(it["has_box"].sum() for it in items))
    table = pd.read_csv(tmp_path / "alignment.csv")
    assert len(table) == n_maps == res["n_maps"]
    # one row recomputed by hand: CAM of the finding's own output vs its box mask
    row = table.iloc[0]
    i = ds.names.index(row["image"])
    f = BOXED_FINDINGS.index(row["finding"])
    k = data.class_names.index(row["finding"])
    cam = class_activation_maps(model, ds[i]["image"][None], classes=[k])[0, 0]
    assert row["iobb"] == pytest.approx(soft_iobb(cam, ds[i]["box_mask"][f]).item(), abs=1e-6)
    summary = pd.read_csv(tmp_path / "alignment_summary.csv").set_index("finding")
    assert summary.loc["all", "iobb_mean"] == pytest.approx(table["iobb"].mean())

    concepts = json.loads((tmp_path / "concepts.json").read_text())
    assert concepts["layer"] == "features.norm5" and concepts["q"] == 0.01
    assert concepts["n_images"] == LIMIT
    assert concepts["n_boxes"] == len(data.boxes(64).query("image in @ds.names[:12]"))
    assert 0 < concepts["unique"] <= concepts["disjoint"]
    channels = pd.read_csv(tmp_path / "concepts_channels.csv")
    assert len(channels) == 512 and channels["n_images"].sum() == round(concepts["unique"] * LIMIT)
    terms = pd.read_csv(tmp_path / "concepts_images.csv")  # the bootstrap's per-image terms
    assert terms["image"].tolist() == list(ds.names[:LIMIT]) and terms["primary"].all()
    assert terms["disjoint"].mean() == pytest.approx(concepts["disjoint"])
    assert terms["unique"].sum() == channels["n_images"].sum()
    done = json.loads((tmp_path / DONE).read_text())
    assert done["iobb"] == pytest.approx(summary.loc["all", "iobb_mean"])
    # finished folder: skipped, files untouched
    mtime = (tmp_path / "alignment.csv").stat().st_mtime_ns
    assert analyse_model(model, data, cfg, tmp_path, device="cpu", limit=LIMIT) == done
    assert (tmp_path / "alignment.csv").stat().st_mtime_ns == mtime


def test_analyse_run_binary_resnet_cli(tiny_phantom, tmp_path, small_config):
    from imbalens.cli import main
    from imbalens.training.checkpoint import save_checkpoint
    from imbalens.training.models import build_model

    cfg = small_config(
        tiny_phantom,
        data={"task": "binary", "image_size": 64},
        model={"name": "resnet50"},
        analysis={"batch_size": 5},
    )
    cfg["analysis"]["layer"] = "layer3"
    cfg["analysis"]["threshold"] = "batch"
    torch.manual_seed(0)
    model = build_model("resnet50", 1)
    dump_config(cfg, tmp_path / "config.yaml")
    save_checkpoint(
        tmp_path / "checkpoints" / "best.pt", {"model": model.state_dict(), "config": cfg}
    )
    assert main(["analyse", str(tmp_path), "--limit", "6", "--device", "cpu"]) == 0
    table = pd.read_csv(tmp_path / "alignment.csv")
    assert set(table["output"]) == {"Unhealthy"}
    concepts = json.loads((tmp_path / "concepts.json").read_text())
    assert concepts["layer"] == "layer3" and list(concepts["layers"]) == ["layer3"]
    assert concepts["threshold"] == "batch" and concepts["q"] == 0.04
    res = analyse_run(tmp_path, device="cpu", limit=6)  # done: read back, not recomputed
    assert res["iobb"] == pytest.approx(np.nanmean(table["iobb"]))
    assert res["n_boxes"] == concepts["n_boxes"] and res["n_images"] == 6


def test_stages_run_alone_each_with_its_marker(tiny_phantom, tmp_path, small_config):
    """alignment computes CAMs + IoBB/IoR only; concepts the dissection only (official
    mode here); analyse_model then reuses both and writes analysis.done."""
    from imbalens.explain.analyse import align_model, concepts_model
    from imbalens.runfolder import RunFolder
    from imbalens.training.models import build_model

    cfg = small_config(tiny_phantom, data={"image_size": 64}, analysis={"batch_size": 5})
    cfg["analysis"]["dissection"] = "official"
    data = load_nih(tiny_phantom)
    torch.manual_seed(0)
    model = build_model("t-densenet", len(data.class_names)).eval()
    folder = RunFolder(tmp_path)
    align = align_model(model, data, cfg, tmp_path, device="cpu", limit=4)
    assert folder.alignment_done.is_file() and folder.alignment_summary.is_file()
    assert not folder.concepts.exists() and not folder.concepts_done.exists()
    table = pd.read_csv(folder.alignment)
    assert align["n_dead"] == int(table["dead"].sum()) and align["boxes"] == "per_finding"
    assert (table.loc[table["dead"], ["iobb", "ior"]] == 0).all().all()  # dead: both 0
    concepts = concepts_model(model, data, cfg, tmp_path, device="cpu", limit=4)
    assert folder.concepts_done.is_file() and folder.analysis_done.is_file()  # both done
    written = json.loads(folder.concepts.read_text())
    assert written["counting"] == "contours" and written["normalise"] == "entries"
    assert written["threshold"] == "batch" and written["floor_ties"] is False
    assert written["n_entries"] == written["n_boxes"] == concepts["n_boxes"]
    terms = pd.read_csv(folder.concepts_images)  # weighted by box entries (official)
    ratio = (terms["weight"] * terms["disjoint"]).sum() / terms["norm"].sum()
    assert ratio == pytest.approx(written["disjoint"]) and terms["norm"].sum() == written["n_boxes"]
    mtimes = [p.stat().st_mtime_ns for p in (folder.alignment, folder.concepts)]
    res = analyse_model(model, data, cfg, tmp_path, device="cpu", limit=4)
    assert [p.stat().st_mtime_ns for p in (folder.alignment, folder.concepts)] == mtimes
    assert res["iobb"] == align["iobb"] and folder.analysis_done.is_file()


def test_dissection_settings_modes_and_overrides():
    from imbalens.explain.analyse import dissection_settings

    a = dict(merge_config()["analysis"])
    paper = dissection_settings(a, 224)
    assert paper["threshold"] == "dataset" and paper["counting"] == "components"
    assert paper["upsample_to"] == "mask" and paper["floor_ties"] is True
    official = dissection_settings({**a, "dissection": "official", "floor_ties": True}, 80)
    assert official["counting"] == "contours" and official["normalise"] == "entries"
    assert official["floor_ties"] is True  # an explicit key wins over the mode
    with pytest.raises(ValueError, match="analysis.dissection"):
        dissection_settings({**a, "dissection": "mmcls"}, 80)


@pytest.mark.parametrize("stage", ["alignment", "concepts"])
def test_grid_redo_of_a_corrupt_stage_really_recomputes(
    tiny_phantom, tmp_path, small_config, stage
):
    """The grid invalidates a stage whose output changed; the stage's own done marker
    must go too, or the rerun would skip and keep the corrupt file."""
    from imbalens.explain.analyse import align_model, concepts_model
    from imbalens.study.grid import _invalidate
    from imbalens.training.models import build_model

    cfg = small_config(tiny_phantom, data={"image_size": 64}, analysis={"batch_size": 5})
    data = load_nih(tiny_phantom)
    torch.manual_seed(0)
    model = build_model("t-densenet", len(data.class_names)).eval()
    run = align_model if stage == "alignment" else concepts_model
    run(model, data, cfg, tmp_path, device="cpu", limit=4)
    out = tmp_path / ("alignment.csv" if stage == "alignment" else "concepts_images.csv")
    good = out.read_text()
    out.write_text("corrupt")
    _invalidate(tmp_path, stage, "output changed")
    run(model, data, cfg, tmp_path, device="cpu", limit=4)
    assert out.read_text() == good
