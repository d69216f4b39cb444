"""The two classifiers of the study, behind one registry: ResNet50 and T-DenseNet.

Both are "global average pooling + linear" networks: for the last feature maps
$A \\in \\mathbb{R}^{C \\times H \\times W}$ (the output of the module named by ``cam_layer``)

$$ \\mathrm{logits}_k = b_k + \\sum_c w_{kc} \\frac{1}{HW} \\sum_{h,w} A^c_{hw}, $$

so the class activation map of output $k$ is $\\sum_c w_{kc} A^c$ (Zhou et al., "Learning
Deep Features for Discriminative Localization", CVPR 2016) and Grad-CAM equals CAM up to
scale. Every model built here carries three attributes the analyses read, so they need no
per-architecture code:

- ``cam_layer``: dotted module name whose output is $A$ (post-ReLU feature maps);
- ``dissect_layers``: dotted module names for network dissection (first = default);
- ``head``: dotted name of the final ``nn.Linear``.

Models (Khakzar, Li et al. 2022, Sec. 3; official code CAMP-eXplain-AI/imba-explain):

- ``"resnet50"``: torchvision ResNet50 (He et al. 2016) with a new ``fc`` of
  ``num_classes`` outputs; last feature maps ``layer4`` (2048 x 7 x 7 at 224 px).
- ``"t-densenet"``: DenseNet121 (Huang et al. 2017) cut after ``denseblock2``, followed by
  a new BatchNorm+ReLU of 512 channels named ``features.norm5`` (as in the official code,
  whose ``norm5`` is timm's ``BatchNormAct2d``), global average pooling and a linear
  ``classifier``; last feature maps 512 x 28 x 28 at 224 px, about 1.3 M parameters.

Add a model in one place with :func:`register_model`::

    @register_model("my-net")
    def _my_net(num_classes: int, imagenet: bool) -> nn.Module:
        ...  # return a module with cam_layer, dissect_layers and head

``weights="imagenet"`` reads torchvision's checkpoint from the torch hub cache
(``torch.hub.get_dir()/checkpoints``) and downloads it only when it is missing and
``IMBALENS_OFFLINE`` is not set; offline without the file it raises an error that names
the file and the folder to put it in. ``weights=<path>`` loads a local checkpoint (a
state dict, or a dict with a ``"model"`` state dict as written by ``imbalens.training.train``).
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import DenseNet121_Weights, ResNet50_Weights

logger = logging.getLogger(__name__)

ModelFactory = Callable[[int, bool], nn.Module]
"""A factory ``(num_classes, imagenet) -> nn.Module`` registered in :data:`MODELS`."""

MODELS: dict[str, ModelFactory] = {}
"""Registry of model factories by name (see :func:`register_model`)."""

DEFAULT_Q: dict[str, float] = {"resnet50": 0.04, "t-densenet": 0.01}
"""Default network-dissection quantile per model (the paper's q)."""

OFFLINE_ENV = "IMBALENS_OFFLINE"
"""Environment variable: when set to a non-empty value other than 0, never download."""

DOWNLOAD_TIMEOUT_S = 30.0
"""Socket timeout for a weights download, so an unreachable network fails fast."""

REQUIRED_ATTRIBUTES = ("cam_layer", "dissect_layers", "head")


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator that adds a factory ``(num_classes, imagenet) -> nn.Module`` to :data:`MODELS`.

    The module it returns must have ``cam_layer``, ``dissect_layers`` and ``head`` (see the
    module docstring) and be a GAP + linear network. With ``imagenet=True`` the factory
    loads ImageNet weights for its backbone itself (e.g. with
    :func:`torchvision_state_dict`).

    Raises:
        ValueError: if ``name`` is already registered.
    """

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = factory
        return factory

    return decorator


# ----------------------------------------------------------------------------- weights


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0")


def hub_checkpoint_path(weights: torchvision.models.WeightsEnum) -> Path:
    """Where torchvision's hub cache keeps the file of ``weights``.

    $$ \\text{path} = \\texttt{torch.hub.get\\_dir()}/\\texttt{checkpoints}/\\text{basename(url)} $$
    """
    filename = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def torchvision_state_dict(weights: torchvision.models.WeightsEnum) -> dict[str, torch.Tensor]:
    """The state dict of a torchvision weights entry, from the torch hub cache.

    Looks in the cache first and touches the network only when the file is missing and
    ``IMBALENS_OFFLINE`` is unset (with a :data:`DOWNLOAD_TIMEOUT_S` socket timeout).

    Raises:
        FileNotFoundError: the file is not cached and cannot be downloaded; the message
            names the file, the folder to put it in and the URL to fetch it from.
    """
    path = hub_checkpoint_path(weights)
    if not path.is_file():
        how = (
            f"Download {weights.url} on a connected machine and copy it to {path.parent}/ "
            f"(the torch hub cache, torch.hub.get_dir()/checkpoints; set TORCH_HOME to move it), "
            "or use weights=None to start from random weights."
        )
        if _offline():
            raise FileNotFoundError(
                f"ImageNet weights file {path.name!r} is not in {path.parent} and "
                f"{OFFLINE_ENV} is set, so it is not downloaded. {how}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            logger.info("downloading %s to %s", weights.url, path)
            hash_prefix = re.search(r"-([a-f0-9]+)\.", path.name)
            torch.hub.download_url_to_file(
                weights.url,
                str(path),
                hash_prefix=hash_prefix.group(1) if hash_prefix else None,
                progress=False,
            )
        except Exception as error:  # network failures come as many exception types
            raise FileNotFoundError(
                f"ImageNet weights file {path.name!r} is not in {path.parent} and could not "
                f"be downloaded ({type(error).__name__}: {error}). {how}"
            ) from error
        finally:
            socket.setdefaulttimeout(previous)
    return torch.load(path, map_location="cpu", weights_only=True)


def _rename_legacy_densenet_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's DenseNet checkpoints spell ``norm1`` as ``norm.1`` (and conv, relu)."""
    legacy = re.compile(r"\.(norm|relu|conv)\.([12])\.")
    return {legacy.sub(r".\1\2.", key): value for key, value in state.items()}


def _load_backbone(
    model: nn.Module, state: Mapping[str, torch.Tensor], fresh_prefixes: tuple[str, ...]
) -> None:
    """Copy ``state`` into ``model`` for every key except those under ``fresh_prefixes``.

    Keys of ``state`` that the model lacks (dropped layers, the ImageNet head) are ignored;
    a kept model key missing from ``state`` or of another shape is an error.
    """
    own = model.state_dict()
    kept = {k: v for k, v in own.items() if not k.startswith(fresh_prefixes)}
    missing = sorted(k for k in kept if k not in state)
    wrong = sorted(k for k in kept if k in state and state[k].shape != own[k].shape)
    if missing or wrong:
        raise ValueError(
            f"ImageNet state dict does not fit the backbone: missing {missing[:5]} "
            f"({len(missing)}), shape mismatch {wrong[:5]} ({len(wrong)})"
        )
    model.load_state_dict({k: state[k] for k in kept}, strict=False)


def _unwrap_checkpoint(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{path}: expected a state dict (name -> tensor) or a dict with a 'model' state "
            "dict, as written by imbalens.training.train"
        )
    state = dict(obj)
    for prefix in ("module.", "_orig_mod."):  # DistributedDataParallel, torch.compile
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_checkpoint_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a local checkpoint into ``model`` (strict: every key, every shape).

    Accepts a plain state dict or a dict with a ``"model"`` entry (an ``imbalens.training.train``
    checkpoint); ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes are removed.
    Read with ``torch.load(..., weights_only=True)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a state dict, or its keys/shapes do not match.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {path} not found; model.weights must be null, 'imagenet' or the "
            "path of a checkpoint"
        )
    state = _unwrap_checkpoint(torch.load(path, map_location="cpu", weights_only=True), path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or wrong:
        name = getattr(model, "name", type(model).__name__)
        raise ValueError(
            f"{path} does not match model {name!r}: missing keys {missing[:5]} "
            f"({len(missing)} in all), unexpected keys {unexpected[:5]} ({len(unexpected)}), "
            f"shape mismatches {wrong[:5]} ({len(wrong)}). Was it saved from another model "
            "name or task (number of outputs)?"
        )
    model.load_state_dict(state)
    return model


# ----------------------------------------------------------------------------- models


class ResNet50Classifier(torchvision.models.ResNet):
    """torchvision's ResNet50 with ``num_classes`` outputs; CAM from ``layer4``.

    ``forward`` is torchvision's: ``fc(flatten(avgpool(layer4(...))))``. The outputs of
    ``layer3`` and ``layer4`` are block outputs, never modified in place later, so forward
    hooks on them see the values the network used.
    """

    cam_layer: str = "layer4"
    dissect_layers: tuple[str, ...] = ("layer4", "layer3")
    head: str = "fc"

    def __init__(self, num_classes: int) -> None:
        super().__init__(torchvision.models.resnet.Bottleneck, [3, 4, 6, 3], num_classes)


@register_model("resnet50")
def _resnet50(num_classes: int, imagenet: bool) -> nn.Module:
    model = ResNet50Classifier(num_classes)
    if imagenet:
        state = torchvision_state_dict(ResNet50_Weights.IMAGENET1K_V1)
        _load_backbone(model, state, fresh_prefixes=("fc.",))
    return model


class BatchNormReLU2d(nn.Sequential):
    """BatchNorm followed by a (not in-place) ReLU, one module as timm's ``BatchNormAct2d``.

    $$ y = \\max\\left(0, \\gamma \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}} + \\beta\\right) $$

    A single module makes its output (the post-ReLU feature maps) hookable under the
    official layer name ``norm5``. It is a container (children ``bn`` and ``relu``) rather
    than a ``BatchNorm2d`` subclass so that ``nn.SyncBatchNorm.convert_sync_batchnorm``
    replaces only the ``bn`` child and keeps the ReLU.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(OrderedDict(bn=nn.BatchNorm2d(num_features), relu=nn.ReLU(inplace=False)))


TDENSENET_KEPT = ("conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1", "denseblock2")
"""DenseNet121 ``features`` children kept by T-DenseNet (dense blocks 3, 4 removed)."""


class TDenseNet(nn.Module):
    """Truncated DenseNet121 (Khakzar, Li et al. 2022): 512 x 28 x 28 maps at 224 px.

    ``features`` = DenseNet121's conv0, norm0, relu0, pool0, denseblock1, transition1,
    denseblock2, then a new :class:`BatchNormReLU2d` ``norm5`` (512 channels); then global
    average pooling and ``classifier`` = Linear(512, num_classes). The in-place ReLUs
    inside the dense layers act on fresh BatchNorm outputs only, and ``norm5`` is not in
    place, so a hook on ``features.norm5`` sees the values the head used.
    """

    cam_layer: str = "features.norm5"
    dissect_layers: tuple[str, ...] = ("features.norm5",)
    head: str = "classifier"

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        # DenseNet121's growth rate and stem with only its first two dense blocks: the
        # same modules as densenet121() up to denseblock2, without building blocks 3-4.
        densenet = torchvision.models.DenseNet(32, (6, 12), 64)
        layers = OrderedDict((name, getattr(densenet.features, name)) for name in TDENSENET_KEPT)
        layers["norm5"] = BatchNormReLU2d(512)
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)
        nn.init.constant_(self.classifier.bias, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model("t-densenet")
def _t_densenet(num_classes: int, imagenet: bool) -> nn.Module:
    model = TDenseNet(num_classes)
    if imagenet:
        state = _rename_legacy_densenet_keys(
            torchvision_state_dict(DenseNet121_Weights.IMAGENET1K_V1)
        )
        _load_backbone(model, state, fresh_prefixes=("features.norm5.", "classifier."))
    return model


# ----------------------------------------------------------------------------- builder


def _check_contract(model: nn.Module, name: str, num_classes: int) -> None:
    for attribute in REQUIRED_ATTRIBUTES:
        if not hasattr(model, attribute):
            raise TypeError(f"model {name!r} lacks the attribute {attribute!r}")
    for layer in (model.cam_layer, *model.dissect_layers, model.head):
        try:
            model.get_submodule(layer)
        except AttributeError as error:
            raise TypeError(f"model {name!r}: no submodule named {layer!r}") from error
    head = model.get_submodule(model.head)
    if not isinstance(head, nn.Linear) or head.out_features != num_classes:
        raise TypeError(f"model {name!r}: head {model.head!r} must be Linear(*, {num_classes})")


def zero_init_residual(model: nn.Module) -> int:
    """Zero the scale $\\gamma$ of the last BatchNorm in every residual block.

    Each block $y = x + F(x)$ then starts as the identity, $F(x) = 0$, which makes a
    randomly initialised ResNet train markedly faster in short schedules (Goyal et al.,
    "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017, Sec. 5.1;
    torchvision's ``zero_init_residual``). Models without torchvision residual blocks
    (T-DenseNet) are left unchanged.

    Returns:
        The number of blocks changed.
    """
    last_bn = {
        torchvision.models.resnet.Bottleneck: "bn3",
        torchvision.models.resnet.BasicBlock: "bn2",
    }
    n = 0
    for module in model.modules():
        attr = last_bn.get(type(module))
        if attr is not None:
            nn.init.zeros_(getattr(module, attr).weight)
            n += 1
    return n


def build_model(
    name: str,
    num_classes: int,
    weights: str | os.PathLike[str] | None = None,
    zero_residual: bool = False,
) -> nn.Module:
    """Build a registered classifier with ``num_classes`` logits.

    Args:
        name: a key of :data:`MODELS` (``"resnet50"``, ``"t-densenet"``).
        num_classes: number of outputs (14 or 15 multi-label, 1 binary).
        weights: ``None`` (random initialisation), ``"imagenet"`` (torchvision's ImageNet
            weights for the backbone, new head) or the path of a local checkpoint.
        zero_residual: with random initialisation, start every residual block as the
            identity (:func:`zero_init_residual`); loaded weights replace it.

    Returns:
        The model in train mode, with ``name``, ``cam_layer``, ``dissect_layers``, ``head``.

    Raises:
        KeyError: unknown ``name`` (the message lists the registered ones).
        ValueError: ``num_classes`` < 1, or a checkpoint that does not match.
        FileNotFoundError: a missing checkpoint or uncached ImageNet file offline.
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered models: {sorted(MODELS)}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    imagenet = isinstance(weights, str) and weights.lower() == "imagenet"
    model = MODELS[name](int(num_classes), imagenet)
    if zero_residual and weights is None:
        zero_init_residual(model)
    model.name = name
    _check_contract(model, name, int(num_classes))
    if weights is not None and not imagenet:
        load_checkpoint_weights(model, weights)
    return model
