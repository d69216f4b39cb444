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


# ----------------------------------------------------------------------- validate_config
@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.lr=abc", r"train\.lr must be a number.*'abc'"),
        ("train.batch_size=0", r"train\.batch_size must be >= 1, got 0"),
        ("data.root=null", r"data\.root must not be null"),
        ("model.name=vgg", r"model\.name must be one of resnet50, t-densenet; got 'vgg'"),
        ("loss.name=dice", r"loss\.name must be one of"),
        ("train.epochs=true", r"train\.epochs must be an integer, got True"),
        ("analysis.q=1.5", r"analysis\.q must be <= 1.0"),
        ("data.missing=drop", r"data\.missing must be one of error, skip"),
    ],
)
def test_validate_config_names_the_key_and_the_file(
    tmp_path: Path, override: str, needle: str
) -> None:
    from imbalens.config import validate_config

    cfg = merge_config({"data": {"root": str(tmp_path)}}, overrides=[override])
    with pytest.raises(ConfigError, match=needle) as err:
        validate_config(cfg, "params/x.yaml")
    assert str(err.value).startswith("params/x.yaml: ")
    validate_config(merge_config({"data": {"root": str(tmp_path)}}), "ok.yaml")  # defaults pass


def test_validate_config_paths_and_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import imbalens.config as config

    cfg = merge_config(overrides=[f"data.root={tmp_path / 'nope'}", "train.device=cuda"])
    monkeypatch.setattr(config, "_cuda_available", lambda: False)
    with pytest.raises(ConfigError) as err:
        config.validate_config(cfg, "c.yaml")
    lines = str(err.value).splitlines()
    assert any("data.root" in x and "is not a folder" in x for x in lines)
    assert any("train.device is cuda but no GPU is visible" in x for x in lines)
    config.validate_config(cfg | {"train": {**cfg["train"], "device": "cpu"}}, check_root=False)


def test_schema_enums_match_the_registries() -> None:
    from imbalens.config import LOSS_NAMES, MODEL_NAMES, PRECISIONS, SCHEMA
    from imbalens.training.losses import LOSSES
    from imbalens.training.models import MODELS
    from imbalens.training.precision import DTYPES

    assert set(MODEL_NAMES) == set(MODELS) and set(LOSS_NAMES) == set(LOSSES)
    assert set(PRECISIONS) == set(DTYPES) | {"auto"}
    leaves = {
        f"{section}.{key}" for section, keys in DEFAULTS.items() for key in keys
    }  # every default key has a check
    assert leaves == set(SCHEMA)


def test_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("train:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML: .* line \d+") as err:
        load_config(p)
    assert "<unicode string>" not in str(err.value)


def test_every_default_key_has_a_schema_entry() -> None:
    """A new config key cannot skip validation: each leaf of DEFAULTS is in SCHEMA."""
    from imbalens.config import SCHEMA, validate_config

    def leaves(d: dict, prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            key = f"{prefix}{k}"
            out += leaves(v, key + ".") if isinstance(v, dict) and key not in SCHEMA else [key]
        return out

    assert [k for k in leaves(DEFAULTS) if k not in SCHEMA] == []
    validate_config(merge_config(), check_root=False)  # the defaults themselves are valid


def test_progress_is_not_part_of_the_config_hash() -> None:
    a = merge_config(overrides=["train.progress=off"])
    b = merge_config(overrides=["train.progress=on"])
    assert config_hash(a) == config_hash(b)
    assert a["train"]["progress"] in ("off", False)  # the config itself is untouched


def test_the_shared_small_config_is_valid_and_overridable(small_config, tmp_path) -> None:
    from imbalens.config import validate_config

    cfg = small_config(tmp_path)
    validate_config(cfg)  # data.root exists
    assert cfg["data"]["root"] == str(tmp_path) and cfg["data"]["image_size"] == 32
    assert cfg["model"]["name"] == "t-densenet" and cfg["train"]["precision"] == "fp32"
    assert cfg["loss"] == DEFAULTS["loss"] and cfg["train"]["epochs"] == DEFAULTS["train"]["epochs"]
    big = small_config(tmp_path, data={"image_size": 64}, train={"epochs": 2, "workers": 0})
    assert big["data"]["image_size"] == 64 and big["data"]["root"] == str(tmp_path)
    assert big["train"]["epochs"] == 2 and big["train"]["precision"] == "fp32"
    assert small_config(tmp_path)["data"]["image_size"] == 32  # each call starts afresh
    with pytest.raises(ConfigError, match="imaeg_size"):
        small_config(tmp_path, data={"imaeg_size": 64})
