"""Known-answer tests for imbalens.explain.alignment (IoBB / IoR on hand-drawn maps)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from imbalens.data.findings import BOXED_FINDINGS, class_names
from imbalens.explain.alignment import alignment_table, soft_iobb, soft_ior, summarise_alignment


def _map_and_mask() -> tuple[torch.Tensor, torch.Tensor]:
    cam = torch.zeros(4, 4)
    cam[0, 0] = 1.0
    cam[1, 1] = 0.5
    cam[3, 3] = 0.5
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0:2, 0:2] = True  # covers (0,0)=1 and (1,1)=0.5
    return cam, mask


def test_soft_iobb_ior_exact_fractions():
    cam, mask = _map_and_mask()
    assert soft_iobb(cam, mask).item() == pytest.approx(1.5 / 4, abs=0)
    assert soft_ior(cam, mask).item() == pytest.approx(1.5 / 2.0, abs=0)


def test_hard_variants():
    cam, mask = _map_and_mask()
    assert soft_iobb(cam, mask, threshold=0.5).item() == 2 / 4
    assert soft_ior(cam, mask, threshold=0.5).item() == 2 / 3
    assert soft_iobb(cam, mask, threshold=0.75).item() == 1 / 4
    assert soft_ior(cam, mask, threshold=0.75).item() == 1.0


def test_leading_dims_dead_map_and_empty_mask():
    """A dead (all-zero) map: IoBB 0 and IoR 0 (official 0/0 -> 0; was NaN); empty mask: NaN."""
    cam, mask = _map_and_mask()
    cams = torch.stack([cam, torch.zeros(4, 4), cam])
    masks = torch.stack([mask, mask, torch.zeros(4, 4, dtype=torch.bool)])
    iobb, ior = soft_iobb(cams, masks), soft_ior(cams, masks)
    assert iobb.shape == (3,)
    assert iobb[0] == 0.375 and iobb[1] == 0.0 and math.isnan(iobb[2])
    assert ior[0] == 0.75 and ior[1] == 0.0 and ior[2] == 0.0
    with pytest.raises(ValueError, match="differ in H, W"):
        soft_iobb(cams, masks[..., :2])


class _Toy(nn.Module):
    """CAM of every class == channel 0 of the input (features = identity, GAP, linear)."""

    cam_layer, head = "features", "fc"

    def __init__(self, k: int):
        super().__init__()
        self.features = nn.Identity()
        self.fc = nn.Linear(2, k)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[:, 0] = 1.0

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class _Boxed(torch.utils.data.Dataset):
    def __init__(self):
        cam, mask = _map_and_mask()
        self.names = ["a.png", "b.png"]
        self.items = []
        for i in range(2):
            box = torch.zeros(8, 4, 4, dtype=torch.bool)
            has = torch.zeros(8, dtype=torch.bool)
            box[5] = mask  # Nodule
            has[5] = True
            if i == 1:
                box[1, 3, 3] = True  # Cardiomegaly on the (3,3)=0.5 pixel
                has[1] = True
            image = torch.stack([cam, torch.ones(4, 4)])
            self.items.append(dict(image=image, box_mask=box, has_box=has, index=i))

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return self.items[i]


@pytest.mark.parametrize("task,boxes", [("multilabel", "auto"), ("binary", "per_finding")])
def test_alignment_table_and_summary(task, boxes):
    names = class_names(task)
    df = alignment_table(_Toy(len(names)), _Boxed(), names, task, batch_size=2, boxes=boxes)
    assert list(df.columns)[:7] == ["image", "finding", "output", "iobb", "ior", "dead", "boxes"]
    assert {"pointing", "topk_iou", "topk_iobb", "otsu_iou"} <= set(df.columns)  # issue #9
    assert df[["image", "finding"]].values.tolist() == [
        ["a.png", "Nodule"],
        ["b.png", "Cardiomegaly"],
        ["b.png", "Nodule"],
    ]
    expect_out = ["Nodule", "Cardiomegaly", "Nodule"] if task == "multilabel" else ["Unhealthy"] * 3
    assert df["output"].tolist() == expect_out
    assert df["iobb"].tolist() == [0.375, 0.5, 0.375]
    assert df["ior"].tolist() == [0.75, 0.25, 0.75]
    assert set(df["boxes"]) == {"per_finding"}
    s = summarise_alignment(df).set_index("finding")
    assert s.loc["all", "iobb_mean"] == pytest.approx(1.25 / 3)
    assert s.loc["all", "iobb_n"] == 3 and s.loc["Nodule", "iobb_n"] == 2
    assert s.loc["Nodule", "ior_std"] == 0.0
    assert list(s.index) == ["Cardiomegaly", "Nodule", "all"]
    assert s.loc["all", "n_dead"] == 0 and s.loc["all", "boxes"] == "per_finding"


def test_binary_default_is_one_map_per_image_against_the_union():
    """Official: image b has Nodule (4 px, CAM 1.5) and Cardiomegaly (1 px, CAM 0.5) boxes:
    one map against their union, IoBB 2/5, IoR 2/2; per_finding gives 3 rows instead."""
    names = class_names("binary")
    df = alignment_table(_Toy(1), _Boxed(), names, "binary", batch_size=2)
    assert df[["image", "finding"]].values.tolist() == [
        ["a.png", "Nodule"],
        ["b.png", "Cardiomegaly|Nodule"],
    ]
    assert df["iobb"].tolist() == [0.375, 0.4]
    assert df["ior"].tolist() == [0.75, 1.0]
    s = summarise_alignment(df).set_index("finding")
    assert s.loc["all", "iobb_n"] == 2 and s.loc["Nodule", "iobb_n"] == 2
    assert s.loc["Cardiomegaly", "iobb_n"] == 1 and s.loc["all", "boxes"] == "union"
    with pytest.raises(ValueError, match="binary task"):
        alignment_table(_Toy(14), _Boxed(), class_names("multilabel"), "multilabel", boxes="union")


class _TenWithDead(torch.utils.data.Dataset):
    """10 images with a Nodule box; the CAM (= channel 0) of images 0, 4, 7 is all zero."""

    def __init__(self):
        cam = torch.zeros(4, 4)
        cam[0, 0], cam[3, 3] = 0.3, 0.7  # IoR = 0.3 on the live maps
        mask = torch.zeros(8, 4, 4, dtype=torch.bool)
        mask[5, 0:2, 0:2] = True
        has = torch.zeros(8, dtype=torch.bool)
        has[5] = True
        self.names = [f"{i}.png" for i in range(10)]
        self.items = [
            dict(
                image=torch.stack([torch.zeros(4, 4) if i in (0, 4, 7) else cam, torch.ones(4, 4)]),
                box_mask=mask,
                has_box=has,
                index=i,
            )
            for i in range(10)
        ]

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return self.items[i]


def test_dead_maps_count_as_zero_in_both_metrics_and_are_counted():
    names = class_names("multilabel")
    df = alignment_table(_Toy(len(names)), _TenWithDead(), names, "multilabel", batch_size=4)
    assert df["dead"].tolist() == [i in (0, 4, 7) for i in range(10)]
    s = summarise_alignment(df).set_index("finding")
    # official: (7 x 0.3 + 3 x 0) / 10 = 0.21; dropping the dead maps gave 0.30
    assert s.loc["all", "ior_mean"] == pytest.approx(0.21)
    assert s.loc["all", "ior_n"] == s.loc["all", "iobb_n"] == 10
    # min-max normalised CAM: 0.3/0.7 in the box of 4 cells
    assert s.loc["all", "iobb_mean"] == pytest.approx(7 * (0.3 / 0.7) / 4 / 10)
    assert s.loc["all", "n_dead"] == 3 and s.loc["Nodule", "n_dead"] == 3


def test_alignment_missing_output_is_an_error():
    names = [n for n in class_names("multilabel") if n != "Nodule"]
    assert "Nodule" in BOXED_FINDINGS
    with pytest.raises(ValueError, match="Nodule"):
        alignment_table(_Toy(len(names)), _Boxed(), names, "multilabel")
