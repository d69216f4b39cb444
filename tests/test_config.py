"""imbalens.config: defaults, strict merging, overrides, hashing."""

from __future__ import annotations

from pathlib import Path

import pytest

from imbalens.config import (
    DEFAULTS,
    ConfigError,
    config_hash,
    load_config,
    merge_config,
)


def test_merge_keeps_defaults_and_applies_layers_then_overrides() -> None:
    cfg = merge_config(
        {"train": {"epochs": 3}, "loss": {"hyper": {"gamma": 1.0}}},
        overrides=["train.epochs=5", "model.weights=null", "data.image_size=96"],
    )
    assert cfg["train"]["epochs"] == 5
    assert cfg["train"]["lr"] == DEFAULTS["train"]["lr"]
    assert cfg["model"]["weights"] is None and cfg["data"]["image_size"] == 96
    assert cfg["loss"]["hyper"] == {"gamma": 1.0}  # free-form section accepts new keys
    assert DEFAULTS["train"]["epochs"] == 50  # the defaults are never mutated


@pytest.mark.parametrize(
    ("layer", "overrides", "key"),
    [
        ({"train": {"epoch": 3}}, [], "train.epoch"),
        ({"dataa": {}}, [], "dataa"),
        ({}, ["analysis.qq=0.1"], "analysis.qq"),
    ],
)
def test_unknown_keys_are_errors_naming_the_key(layer, overrides, key) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        merge_config(layer, overrides=overrides)


def test_malformed_override_and_section_type() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        merge_config(overrides=["train.epochs"])
    with pytest.raises(ConfigError, match="'train' must be a mapping"):
        merge_config({"train": 3})


def test_load_config_reads_yaml_and_names_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: t-densenet}\ntrain: {batch_size: 8}\n")
    cfg = load_config(path, ["train.sync_bn=true"])
    assert cfg["model"]["name"] == "t-densenet" and cfg["train"]["batch_size"] == 8
    assert cfg["train"]["sync_bn"] is True
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_config_hash_is_stable_and_sensitive() -> None:
    a = merge_config()
    b = merge_config()
    assert config_hash(a) == config_hash(b) and len(config_hash(a)) == 12
    assert config_hash(merge_config(overrides=["train.seed=1"])) != config_hash(a)
