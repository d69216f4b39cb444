"""Known-answer tests for imbalens.explain.cam (CAM, Grad-CAM, agreement with pytorch-grad-cam)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imbalens.explain.cam import GradCAM, class_activation_maps, minmax


class ToyGAP(nn.Module):
    """features (hand-set: identity or 2x2 average pooling of the input) -> GAP -> linear."""

    cam_layer = "features"
    head = "fc"

    def __init__(self, weight: torch.Tensor, pool: bool = False):
        super().__init__()
        self.features = nn.AvgPool2d(2) if pool else nn.Identity()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.fill_(3.0)  # irrelevant for CAM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class ToyConv(nn.Module):
    """A random conv net ending in GAP+linear (for CAM == Grad-CAM)."""

    cam_layer = "features"
    head = "fc"

    def __init__(self, k: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1)
        )
        self.fc = nn.Linear(6, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _planted() -> torch.Tensor:
    x = torch.zeros(1, 2, 4, 4)
    x[0, 0, 1, 1] = 1.0
    x[0, 1, 2, 3] = 1.0
    return x


W = torch.tensor([[1.0, -1.0], [2.0, 0.5], [-1.0, -1.0]])


def test_cam_matches_hand_computed_maps():
    cams = class_activation_maps(ToyGAP(W), _planted())
    expected = torch.zeros(1, 3, 4, 4)
    expected[0, 0, 1, 1] = 1.0  # relu(ch0 - ch1)
    expected[0, 1, 1, 1] = 1.0  # (2 ch0 + 0.5 ch1) / 2
    expected[0, 1, 2, 3] = 0.25
    # class 2: relu(-ch0 - ch1) == 0 everywhere: constant map -> zeros, not NaN
    assert torch.equal(cams, expected)


def test_cam_classes_select_and_order():
    cams = class_activation_maps(ToyGAP(W), _planted(), classes=[1, 0])
    full = class_activation_maps(ToyGAP(W), _planted())
    assert torch.equal(cams, full[:, [1, 0]])
    with pytest.raises(ValueError, match="classes"):
        class_activation_maps(ToyGAP(W), _planted(), classes=[3])


def test_cam_upsampling_feature_vs_input():
    torch.manual_seed(0)
    x = torch.rand(2, 2, 8, 8)
    model = ToyGAP(W, pool=True)
    feats = F.avg_pool2d(x, 2)
    raw = torch.einsum("kc,bchw->bkhw", W, feats).relu()
    up = lambda m: F.interpolate(m, size=(8, 8), mode="bilinear", align_corners=False)  # noqa: E731
    torch.testing.assert_close(class_activation_maps(model, x), up(minmax(raw)))
    by_input = class_activation_maps(model, x, normalise="input")
    torch.testing.assert_close(by_input, minmax(up(raw)))
    assert by_input.amax(dim=(2, 3))[:, :2].eq(1).all()


def test_cam_equals_gradcam_at_last_layer():
    torch.manual_seed(0)
    model = ToyConv().eval()
    x = torch.randn(3, 3, 16, 16)
    for normalise in ("feature", "input"):
        cam = class_activation_maps(model, x, normalise=normalise)
        with GradCAM(model, "features", normalise=normalise) as gc:
            grad = gc(x)
        torch.testing.assert_close(cam, grad, atol=1e-5, rtol=0)
        assert cam.min() >= 0 and cam.max() <= 1


def test_gradcam_removes_hooks_and_needs_context():
    model = ToyConv().eval()
    gc = GradCAM(model, "features")
    with pytest.raises(RuntimeError, match="context manager"):
        gc(torch.randn(1, 3, 8, 8))
    with gc:
        assert len(model.features._forward_hooks) == 1
    assert len(model.features._forward_hooks) == 0


def _t_densenet(num_classes: int) -> nn.Module:
    from imbalens.training.models import build_model

    return build_model("t-densenet", num_classes)


def _resnet50(num_classes: int) -> nn.Module:
    from imbalens.training.models import build_model

    return build_model("resnet50", num_classes)


@pytest.mark.parametrize("builder,size", [(_resnet50, 96), (_t_densenet, 64)])
def test_agrees_with_pytorch_grad_cam(builder, size):
    """pytorch_grad_cam rescales after a cv2 resize: compare with normalise="input".

    Tolerance: max abs difference <= 1e-3 on [0, 1] maps (cv2 vs torch bilinear, the
    package's 1e-7 epsilon in its min-max).
    """
    from pytorch_grad_cam import GradCAM as PkgGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from imbalens.explain.cam import get_module

    torch.manual_seed(0)
    model = builder(4).eval()
    x = torch.randn(2, 3, size, size)
    ours = class_activation_maps(model, x, normalise="input").numpy()
    layer = get_module(model, model.cam_layer)
    with PkgGradCAM(model=model, target_layers=[layer]) as pkg:
        for k in range(4):
            theirs = pkg(input_tensor=x, targets=[ClassifierOutputTarget(k)] * 2)
            assert theirs.shape == (2, size, size)
            np.testing.assert_allclose(ours[:, k], theirs, atol=1e-3, rtol=0)
