"""Tests for imbalens.training.models: shapes, parameter counts, the GAP+linear identity, hooks, weights."""

from __future__ import annotations

import re
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from imbalens.training import models
from imbalens.training.models import DEFAULT_Q, MODELS, build_model, register_model

NAMES = ["resnet50", "t-densenet"]
# Parameters without the head (torchvision's ResNet50: 25,557,032 - fc 2,049,000;
# DenseNet121 up to denseblock2 plus the new 512-channel norm5) and per output (C + 1).
BACKBONE_PARAMS = {"resnet50": 23_508_032, "t-densenet": 1_298_560}
HEAD_IN = {"resnet50": 2048, "t-densenet": 512}


@pytest.fixture(scope="module")
def built() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: build_model(name, 3).eval() for name in NAMES}


def capture(model: nn.Module, layers: list[str], x: torch.Tensor):
    """Run ``model(x)``; return logits, the hooked outputs and clones taken inside the hooks."""
    seen, clones, handles = {}, {}, []
    for layer in layers:

        def hook(_module, _inputs, output, layer=layer):
            seen[layer] = output
            clones[layer] = output.detach().clone()

        handles.append(model.get_submodule(layer).register_forward_hook(hook))
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return logits, seen, clones


def test_registry_and_defaults() -> None:
    assert set(NAMES) <= set(MODELS)
    assert DEFAULT_Q == {"resnet50": 0.04, "t-densenet": 0.01}
    with pytest.raises(KeyError, match="registered models"):
        build_model("vgg16", 14)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("t-densenet", 0)


def test_contract_attributes(built: dict[str, nn.Module]) -> None:
    r50, td = built["resnet50"], built["t-densenet"]
    assert (r50.cam_layer, r50.dissect_layers, r50.head) == ("layer4", ("layer4", "layer3"), "fc")
    assert td.cam_layer == "features.norm5" and td.dissect_layers == ("features.norm5",)
    assert td.head == "classifier"
    assert [name for name, _ in td.features.named_children()] == [
        "conv0",
        "norm0",
        "relu0",
        "pool0",
        "denseblock1",
        "transition1",
        "denseblock2",
        "norm5",
    ]
    assert r50.name == "resnet50" and td.name == "t-densenet"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [1, 14])
def test_parameter_counts(name: str, k: int) -> None:
    model = build_model(name, k)
    n = sum(p.numel() for p in model.parameters())
    assert n == BACKBONE_PARAMS[name] + (HEAD_IN[name] + 1) * k
    head = model.get_submodule(model.head)
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (
        HEAD_IN[name],
        k,
    )
    if name == "t-densenet":
        assert 1.25e6 < n < 1.35e6  # "about 1.3 M parameters"


@torch.no_grad()
def test_feature_shapes_at_224(built: dict[str, nn.Module]) -> None:
    x = torch.randn(1, 3, 224, 224)
    logits, seen, _ = capture(built["resnet50"], ["layer4", "layer3"], x)
    assert logits.shape == (1, 3)
    assert seen["layer4"].shape == (1, 2048, 7, 7)
    assert seen["layer3"].shape == (1, 1024, 14, 14)
    logits, seen, _ = capture(built["t-densenet"], ["features.norm5"], x)
    assert logits.shape == (1, 3)
    assert seen["features.norm5"].shape == (1, 512, 28, 28)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_logits_are_head_of_gap_of_cam_layer(
    built: dict[str, nn.Module], name: str, mode: str
) -> None:
    """logits = head(mean_hw A): the identity the analytic CAM relies on."""
    model = built[name]
    model.train(mode == "train")
    try:
        torch.manual_seed(1)
        with torch.no_grad():
            logits, seen, _ = capture(model, [model.cam_layer], torch.randn(2, 3, 64, 64))
            head = model.get_submodule(model.head)
            recomputed = head(seen[model.cam_layer].mean(dim=(2, 3)))
    finally:
        model.eval()
    torch.testing.assert_close(logits, recomputed, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_hooked_outputs_not_modified_in_place(built: dict[str, nn.Module], name: str) -> None:
    """A tensor a hook keeps equals the clone taken in the hook, after the whole forward."""
    model = built[name]
    layers = sorted({model.cam_layer, *model.dissect_layers})
    torch.manual_seed(2)
    _, seen, clones = capture(model, layers, torch.randn(2, 3, 64, 64))
    for layer in layers:
        assert torch.equal(seen[layer].detach(), clones[layer]), layer
    assert float(clones[model.cam_layer].min()) >= 0.0  # post-ReLU feature maps
    assert float(clones[model.cam_layer].max()) > 0.0


def test_sync_batchnorm_conversion_keeps_the_relu() -> None:
    """DDP's convert_sync_batchnorm swaps BatchNorm modules; norm5 must stay BN + ReLU."""
    torch.manual_seed(8)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(build_model("t-densenet", 2)).eval()
    norm5 = model.get_submodule(model.cam_layer)
    assert isinstance(norm5.bn, nn.SyncBatchNorm) and isinstance(norm5.relu, nn.ReLU)
    with torch.no_grad():
        norm5.bn.bias.fill_(-0.5)  # make the ReLU visible
        _, _, clones = capture(model, [model.cam_layer], torch.randn(1, 3, 32, 32))
    assert float(clones[model.cam_layer].min()) == 0.0


def test_in_place_detector_can_fail(built: dict[str, nn.Module]) -> None:
    """The check above catches a layer whose output a later in-place ReLU overwrites."""
    layer = "features.denseblock2.denselayer1.norm1"  # followed by ReLU(inplace=True)
    torch.manual_seed(2)
    _, seen, clones = capture(built["t-densenet"], [layer], torch.randn(2, 3, 64, 64))
    assert not torch.equal(seen[layer].detach(), clones[layer])


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_and_bf16(built: dict[str, nn.Module], name: str) -> None:
    model = built[name]
    torch.manual_seed(3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        fast = model.to(memory_format=torch.channels_last)
        try:
            got = fast(x.contiguous(memory_format=torch.channels_last))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = fast(x.contiguous(memory_format=torch.channels_last))
        finally:
            model.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-4)
    assert low.shape == reference.shape and bool(torch.isfinite(low).all())


def test_backward_reaches_every_parameter() -> None:
    torch.manual_seed(4)
    model = build_model("t-densenet", 2)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# ----------------------------------------------------------------------------- weights


def _legacy_densenet_state() -> dict[str, torch.Tensor]:
    """A DenseNet121 state dict spelled as torchvision's release file (``norm.1`` ...)."""
    state = torchvision.models.densenet121(weights=None).state_dict()
    return {re.sub(r"\.(norm|relu|conv)([12])\.", r".\1.\2.", k): v for k, v in state.items()}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv(models.OFFLINE_ENV, "1")
    return tmp_path / "hub" / "checkpoints"


def test_imagenet_offline_names_file_and_folder(hub: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        build_model("t-densenet", 14, weights="imagenet")
    message = str(error.value)
    assert "densenet121-a639ec97.pth" in message and str(hub) in message
    with pytest.raises(FileNotFoundError, match="resnet50-0676ba61.pth"):
        build_model("resnet50", 14, weights="imagenet")


def test_imagenet_download_failure_is_clear(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(models.OFFLINE_ENV)
    calls = []

    def no_network(url, dst, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(FileNotFoundError, match="could not be downloaded.*URLError"):
        build_model("t-densenet", 1, weights="imagenet")
    assert calls == ["https://download.pytorch.org/models/densenet121-a639ec97.pth"]


def test_imagenet_from_cache_t_densenet(hub: Path) -> None:
    torch.manual_seed(5)
    state = _legacy_densenet_state()
    hub.mkdir(parents=True)
    torch.save(state, hub / "densenet121-a639ec97.pth")
    model = build_model("t-densenet", 2, weights="imagenet")
    own = model.state_dict()
    assert torch.equal(own["features.conv0.weight"], state["features.conv0.weight"])
    key = "features.denseblock2.denselayer12.norm2.running_var"
    assert torch.equal(own[key], state["features.denseblock2.denselayer12.norm.2.running_var"])
    assert torch.equal(own["features.norm5.bn.weight"], torch.ones(512))  # new, not ImageNet's
    assert own["classifier.weight"].shape == (2, 512)


def test_imagenet_from_cache_resnet50(hub: Path) -> None:
    torch.manual_seed(6)
    state = torchvision.models.resnet50(weights=None).state_dict()  # fc: 1000 outputs
    hub.mkdir(parents=True)
    torch.save(state, hub / "resnet50-0676ba61.pth")
    model = build_model("resnet50", 2, weights="imagenet")
    own = model.state_dict()
    assert torch.equal(own["layer4.2.conv3.weight"], state["layer4.2.conv3.weight"])
    assert own["fc.weight"].shape == (2, 2048)


def test_local_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(7)
    source = build_model("t-densenet", 3)
    plain = tmp_path / "plain.pt"
    torch.save(source.state_dict(), plain)
    wrapped = tmp_path / "run.pt"  # an imbalens.training.train checkpoint, saved from DDP
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"model": state, "epoch": 3}, wrapped)
    for path in (plain, str(wrapped)):
        loaded = build_model("t-densenet", 3, weights=path)
        for key, value in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key


def test_local_checkpoint_errors(tmp_path: Path) -> None:
    path = tmp_path / "three.pt"
    torch.save(build_model("t-densenet", 3).state_dict(), path)
    with pytest.raises(
        ValueError, match=r"classifier\.weight: file \(3, 512\) vs model \(14, 512\)"
    ):
        build_model("t-densenet", 14, weights=path)
    with pytest.raises(ValueError, match="missing keys"):
        build_model("resnet50", 3, weights=path)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        build_model("t-densenet", 3, weights=tmp_path / "nowhere.pt")
    torch.save({"lr": torch.tensor(1.0), "note": "x"}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="state dict"):
        build_model("t-densenet", 3, weights=tmp_path / "odd.pt")


def test_register_a_model_in_one_place() -> None:
    class Toy(nn.Module):
        cam_layer, dissect_layers, head = "conv", ("conv",), "fc"

        def __init__(self, k: int) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
            self.fc = nn.Linear(4, k)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).mean(dim=(2, 3)))

    class Broken(Toy):
        head = "nothing"

    try:
        register_model("toy")(lambda k, imagenet: Toy(k))
        register_model("broken")(lambda k, imagenet: Broken(k))
        assert build_model("toy", 5)(torch.randn(1, 3, 8, 8)).shape == (1, 5)
        with pytest.raises(ValueError, match="already registered"):
            register_model("toy")(lambda k, imagenet: Toy(k))
        with pytest.raises(TypeError, match="'nothing'"):
            build_model("broken", 5)
    finally:
        MODELS.pop("toy", None)
        MODELS.pop("broken", None)


def test_zero_init_residual_starts_blocks_as_identity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = build_model("resnet50", 2)
    assert all(b.bn3.weight.abs().sum() > 0 for b in plain.modules() if hasattr(b, "bn3"))
    torch.manual_seed(0)
    zeroed = build_model("resnet50", 2, zero_residual=True)
    blocks = [m for m in zeroed.modules() if isinstance(m, torchvision.models.resnet.Bottleneck)]
    assert len(blocks) == 16 and all(torch.all(b.bn3.weight == 0) for b in blocks)
    # a block then computes relu(x + shortcut(x)): its residual branch adds nothing
    block = zeroed.layer2[1].eval()
    x = torch.rand(1, 512, 8, 8)
    assert torch.equal(block(x), torch.relu(x))
    # T-DenseNet has no residual blocks: unchanged
    assert models.zero_init_residual(build_model("t-densenet", 2)) == 0
    # loaded weights replace the initialisation
    path = tmp_path / "w.pt"
    torch.save(plain.state_dict(), path)
    loaded = build_model("resnet50", 2, weights=path, zero_residual=True)
    assert torch.equal(loaded.layer1[0].bn3.weight, plain.layer1[0].bn3.weight)
