"""Sanity baselines: cascading randomisation touches only the named layers; map baselines
have known answers; baselines.csv is written beside alignment.csv."""

from __future__ import annotations

import pytest
import torch

from imbalens.data.findings import class_names
from imbalens.explain.baselines import (
    CASCADE,
    baseline_table,
    cascade_layers,
    compare_with_trained,
    map_baseline_table,
    randomise_layers,
    untrained_model,
)
from imbalens.training.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", sorted(CASCADE))
def test_randomised_layers_differ_the_rest_identical(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 3)
    with torch.no_grad():  # "trained": move every parameter and BN statistic off its init
        for p in model.parameters():
            p.add_(0.1)
        for b in model.buffers():
            if b.is_floating_point():
                b.add_(0.1)
    layers = cascade_layers(name, 2)
    assert layers[0] == model.head
    state0 = {k: v.clone() for k, v in model.state_dict().items()}
    new = randomise_layers(model, layers, seed=1)
    state1 = new.state_dict()
    assert all(torch.equal(state0[k], v) for k, v in model.state_dict().items())  # a copy
    changed = {k for k in state0 if not torch.equal(state0[k], state1[k])}
    inside = {k for k in state0 if any(k.startswith(f"{n}.") for n in layers)}
    float_inside = {k for k in inside if state0[k].is_floating_point()}
    assert changed <= inside  # nothing outside the named layers moved
    assert float_inside <= changed  # every weight, bias, running stat inside was redrawn
    # same seed, same draw; another seed, another draw
    again = randomise_layers(model, layers, seed=1).state_dict()
    other = randomise_layers(model, layers, seed=2).state_dict()
    w = f"{layers[0]}.weight"
    assert torch.equal(again[w], state1[w]) and not torch.equal(other[w], state1[w])


def test_cascade_levels_named_and_checked() -> None:
    assert cascade_layers("resnet50", 1) == ["fc"]
    assert cascade_layers("resnet50", 2) == ["fc", "layer4"]
    assert cascade_layers("t-densenet", 2)[:2] == ["classifier", "features.norm5"]
    with pytest.raises(ValueError, match="outside"):
        cascade_layers("resnet50", 9)
    with pytest.raises(KeyError, match="CASCADE"):
        cascade_layers("vgg", 1)
    with pytest.raises(KeyError, match="no modules"):
        randomise_layers(torch.nn.Linear(2, 2), ["layer9"])


def test_untrained_model_is_seeded_like_training() -> None:
    cfg = {"model": {"name": "t-densenet", "zero_init_residual": True}, "train": {"seed": 7}}
    a, b = untrained_model(cfg, 2), untrained_model(cfg, 2)
    torch.manual_seed(7)
    c = build_model("t-densenet", 2, None, True)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]) and torch.equal(v, c.state_dict()[k])


class _Boxes(torch.utils.data.Dataset):
    """Two 10 x 10 images: a Nodule box of 4 x 5 = 20 px, and one of 10 x 10 = 100 px."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> dict:
        box = torch.zeros(8, 10, 10, dtype=torch.bool)
        has = torch.zeros(8, dtype=torch.bool)
        if i == 0:
            box[5, 0:4, 0:5] = True
        else:
            box[5] = True
        has[5] = True
        return {"image": torch.zeros(3, 10, 10), "box_mask": box, "has_box": has, "index": i}


def test_uniform_map_gives_iobb_one_and_ior_box_fraction() -> None:
    t = map_baseline_table(_Boxes(), batch_size=2)
    u = t[t["baseline"] == "uniform"]
    assert u["iobb"].tolist() == [1.0, 1.0]
    assert u["ior"].tolist() == pytest.approx([0.2, 1.0])
    assert u["pointing"].tolist() == pytest.approx([0.2, 1.0])  # ties: box fraction
    assert u["topk_iobb"].tolist() == pytest.approx([0.05, 0.05])  # 5 % budget, shared
    c = t[t["baseline"] == "centre"]
    assert c["iobb"].iloc[0] < 1.0 and c["pointing"].iloc[1] == 1.0
    assert set(t["finding"]) == {"Nodule"}


class _Toy(torch.nn.Module):
    cam_layer = "features"
    head = "fc"

    def __init__(self, k: int) -> None:
        super().__init__()
        self.features = torch.nn.Conv2d(3, 4, 1)
        self.fc = torch.nn.Linear(4, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def test_baseline_table_and_trained_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CASCADE, "toy", (("fc",), ("features",)))
    names = class_names("binary")
    torch.manual_seed(0)
    model = _Toy(len(names))
    table, seconds = baseline_table(model, _Toy(len(names)), _Boxes(), names, "binary", "toy")
    assert set(table["baseline"]) == {
        "untrained",
        "randomised-1",
        "randomised-2",
        "uniform",
        "centre",
    }
    assert table.loc[table["baseline"] == "randomised-2", "layers"].iloc[0] == "fc+features"
    assert set(seconds) == {"untrained", "randomised-1", "randomised-2", "maps"}
    row = table[(table["baseline"] == "uniform") & (table["finding"] == "all")].set_index("metric")
    assert row.loc["iobb", "value"] == 1.0 and row.loc["ior", "value"] == pytest.approx(0.6)
    assert row.loc["iobb", "n"] == 2
    import pandas as pd

    trained = pd.DataFrame(
        {"finding": ["Nodule", "Nodule"], "iobb": [0.5, 0.7], "ior": [0.9, 0.9]}
        | {m: [1.0, 1.0] for m in ("pointing", "topk_iou", "topk_iobb", "area_iou")}
        | {m: [0.5, 0.5] for m in ("otsu_iou", "otsu_iobb")}
    )
    cmp = compare_with_trained(table, trained)
    u = cmp[(cmp["baseline"] == "uniform") & (cmp["finding"] == "all")].set_index("metric")
    assert u.loc["iobb", "trained"] == pytest.approx(0.6) and not u.loc["iobb", "beats"]
    assert u.loc["ior", "beats"]  # 0.9 > 0.6
    assert pd.isna(u.loc["otsu_iou", "beats"])  # Otsu is undefined on a uniform map


def test_analyse_writes_baselines_and_mask_columns(tiny_phantom, tmp_path) -> None:
    import pandas as pd

    from imbalens.config import merge_config
    from imbalens.data.nih import load_nih
    from imbalens.explain.analyse import analyse_model
    from imbalens.runfolder import RunFolder

    cfg = merge_config(
        {
            "data": {"root": str(tiny_phantom), "image_size": 32},
            "model": {"name": "t-densenet"},
            "train": {"precision": "fp32", "seed": 3},
            "analysis": {"batch_size": 8, "cascade_levels": [1], "baseline_images": 4},
        }
    )
    data = load_nih(tiny_phantom)
    torch.manual_seed(0)
    model = build_model("t-densenet", len(data.class_names)).eval()
    res = analyse_model(model, data, cfg, tmp_path, device="cpu", limit=8)
    run = RunFolder(tmp_path)
    table = pd.read_csv(run.alignment)
    for col in ("pointing", "topk_iou", "topk_iobb", "otsu_iou", "pointing_mask", "iobb_mask"):
        assert col in table.columns and table[col].notna().any(), col
    # every box of the phantom has its lesion's exact mask (never empty at 32 px)
    assert table["iobb_mask"].notna().all() and table["pointing_mask"].notna().all()
    summary = pd.read_csv(run.alignment_summary).set_index("finding")
    assert summary.loc["all", "pointing_n"] == len(table)
    assert summary.loc["all", "pointing_mean"] == pytest.approx(table["pointing"].mean())
    base = pd.read_csv(run.baselines)
    assert set(base["baseline"]) == {"untrained", "randomised-1", "uniform", "centre"}
    u = base[(base["baseline"] == "uniform") & (base["finding"] == "all")].set_index("metric")
    assert u.loc["iobb", "value"] == 1.0
    first4 = table[table["image"].isin(data.dataset("boxed", 32).names[:4])]
    assert u.loc["iobb", "n"] == len(first4) < len(table)  # baselines on the first 4 images
    assert u.loc["iobb", "trained"] == pytest.approx(first4["iobb"].mean())
    assert not u.loc["iobb", "beats"]  # nothing beats a uniform map at soft IoBB
    assert "baselines" in res["seconds"]
    # the concepts stage: untrained / randomised dissection on the same first 4 images
    conc = pd.read_csv(run.concepts_baselines)
    assert set(conc["baseline"]) == {"untrained", "randomised-1"}
    assert set(conc["metric"]) == {"disjoint", "unique"} and (conc["n"] == 4).all()
    from imbalens.explain.analyse import dissection_settings
    from imbalens.explain.dissect import dissect_model

    a = {**cfg["analysis"]}
    again = dissect_model(
        model, torch.utils.data.Subset(data.dataset("boxed", 32), range(4)),
        layer="features.norm5", q=0.01, batch_size=8, device="cpu",
        box_entries=None, n_boxes=None, **dissection_settings(a, 32),
    )  # fmt: skip
    trained = conc.set_index(["baseline", "metric"])["trained"]
    assert trained[("untrained", "disjoint")] == pytest.approx(again.disjoint)
    assert trained[("untrained", "unique")] == pytest.approx(again.unique)


def test_concept_baselines_rows_and_beats(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """write_concept_baselines: one dissection per model on the same images; beats = >."""
    import pandas as pd

    from imbalens.config import merge_config
    from imbalens.explain.baselines import write_concept_baselines
    from imbalens.runfolder import RunFolder

    cfg = merge_config({"model": {"name": "t-densenet"}, "train": {"seed": 1},
                        "analysis": {"cascade_levels": [1, 2], "baseline_images": 3}})  # fmt: skip
    model = build_model("t-densenet", 2).eval()
    calls = []

    class Counts:
        def __init__(self, d: float, n: int):
            self.disjoint, self.unique, self.n_images = d, d / 2, n

    def fake_dissect(m: torch.nn.Module, ds) -> Counts:  # the trained model: 5 concepts
        calls.append(len(ds))
        return Counts(5.0 if m is model else float(len(calls)), len(ds))

    data = type("D", (), {"class_names": ["a", "b"]})()
    seconds = write_concept_baselines(model, cfg, data, list(range(10)), fake_dissect, tmp_path)
    assert calls == [3, 3, 3, 3] and set(seconds) == {
        "trained",
        "untrained",
        "randomised-1",
        "randomised-2",
    }
    t = pd.read_csv(RunFolder(tmp_path).concepts_baselines).set_index(["baseline", "metric"])
    assert t.loc[("untrained", "disjoint"), "value"] == 2.0  # the second call
    assert t.loc[("randomised-2", "unique"), "value"] == 2.0  # the fourth call, halved
    assert (t["trained"].xs("disjoint", level="metric") == 5.0).all()
    assert t["beats"].all() and (t["n"] == 3).all()
    assert t.loc[("randomised-1", "disjoint"), "layers"] == "classifier"


def test_grid_runs_share_the_untrained_baseline(tiny_phantom, tmp_path) -> None:
    """Two runs of a grid that differ only in their loss: the second reads the untrained
    model's alignment and concept baselines from <grid>/.shared instead of computing them,
    with the same numbers; a run outside a grid (no grid-run.json) shares nothing."""
    import pandas as pd

    import imbalens.explain.baselines as B
    from imbalens.config import merge_config
    from imbalens.data.nih import load_nih
    from imbalens.explain.analyse import analyse_model
    from imbalens.runfolder import RECORD, SHARED_DIR, RunFolder

    data = load_nih(tiny_phantom)
    torch.manual_seed(0)
    model = build_model("t-densenet", len(data.class_names)).eval()
    tables = {}
    built = []
    real = B.untrained_model

    def counting(cfg, k):
        built.append(cfg["loss"]["name"])
        return real(cfg, k)

    B.untrained_model = counting
    try:
        for loss in ("bce", "wbce"):
            cfg = merge_config(
                {
                    "data": {"root": str(tiny_phantom), "image_size": 32},
                    "model": {"name": "t-densenet"},
                    "loss": {"name": loss},
                    "train": {"precision": "fp32", "seed": 3},
                    "analysis": {"batch_size": 8, "cascade_levels": [1], "baseline_images": 4},
                }
            )
            out = tmp_path / "grid" / loss
            out.mkdir(parents=True)
            (out / RECORD).write_text("{}")
            analyse_model(model, data, cfg, out, device="cpu", limit=8)
            run = RunFolder(out)
            tables[loss] = (pd.read_csv(run.baselines), pd.read_csv(run.concepts_baselines))
        # the untrained model was built twice for the first run (alignment, concepts),
        # never for the second
        assert built == ["bce", "bce"]
        shared = sorted(p.name for p in (tmp_path / "grid" / SHARED_DIR).iterdir())
        assert [n.split("-")[1] for n in shared] == ["alignment", "concepts"]
        for i in (0, 1):
            a, b = (tables[k][i] for k in ("bce", "wbce"))
            ua, ub = (t[t["baseline"] == "untrained"].reset_index(drop=True) for t in (a, b))
            pd.testing.assert_frame_equal(ua, ub)
        # outside a grid: computed again, nothing shared
        solo = tmp_path / "solo"
        analyse_model(model, data, cfg, solo, device="cpu", limit=8)
        assert built == ["bce", "bce", "wbce", "wbce"]
        assert not (tmp_path / SHARED_DIR).exists()
    finally:
        B.untrained_model = real


def test_shared_path_key_excludes_only_the_loss(tmp_path) -> None:
    from imbalens.config import merge_config
    from imbalens.explain.baselines import shared_path
    from imbalens.runfolder import RECORD

    run = tmp_path / "grid" / "r"
    run.mkdir(parents=True)
    assert shared_path(run, merge_config({}), "alignment", 4) is None  # not a grid run
    (run / RECORD).write_text("{}")
    base = merge_config({"loss": {"name": "bce"}})
    p = shared_path(run, base, "alignment", 4)
    assert p is not None and p.parent == tmp_path / "grid" / ".shared"
    assert shared_path(run, merge_config({"loss": {"name": "focal"}}), "alignment", 4) == p
    for other in (
        shared_path(run, merge_config({"train": {"seed": 1}}), "alignment", 4),
        shared_path(run, merge_config({"data": {"task": "binary"}}), "alignment", 4),
        shared_path(run, base, "alignment", 5),
        shared_path(run, base, "alignment", 4, "cuda"),
        shared_path(run, base, "concepts", 4),
    ):
        assert other != p


def test_a_corrupt_shared_baseline_is_recomputed(tmp_path, caplog) -> None:
    from imbalens.explain.baselines import _read_shared

    for name, text in (("a.csv", "garbage\n1\n"), ("b.json", "[1, 2]"), ("c.json", "{")):
        (tmp_path / name).write_text(text)
        with caplog.at_level("WARNING"):
            assert _read_shared(tmp_path / name) is None
        assert f"{name} unreadable" in caplog.text
    assert _read_shared(tmp_path / "absent.csv") is None and _read_shared(None) is None
    (tmp_path / "ok.json").write_text('{"disjoint": 1.5, "unique": 1.0, "n_images": 4}')
    assert _read_shared(tmp_path / "ok.json") == {"disjoint": 1.5, "unique": 1.0, "n_images": 4}
