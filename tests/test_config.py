"""Config dataclasses: YAML round trip, field checking, key=value overrides."""

from __future__ import annotations

import pytest

from lcie_fast.config import ConfigError, ModelConfig, PreprocessConfig, from_dict, load_yaml, merge_overrides, save_yaml, to_dict


def test_yaml_round_trip(tmp_path):
    config = ModelConfig(backbone="tf_efficientnet_lite0", num_classes=5, partial=False,
                         preprocess=PreprocessConfig(input_size=448, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    save_yaml(config, tmp_path / "c.yaml")
    assert from_dict(ModelConfig, load_yaml(tmp_path / "c.yaml")) == config


def test_unknown_field_is_named_with_the_known_ones():
    with pytest.raises(ConfigError, match="unknown field.*num_clases.*known:.*num_classes"):
        from_dict(ModelConfig, {"num_clases": 3})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="num_classes must be an integer"):
        from_dict(ModelConfig, {"num_classes": "many"})
    with pytest.raises(ConfigError, match="preprocess.input_size must be an integer"):
        from_dict(ModelConfig, {"preprocess": {"input_size": 4.5}})


def test_invalid_values_are_refused():
    with pytest.raises(ConfigError, match="mask_ratio"):
        ModelConfig(mask_ratio=1.5)
    with pytest.raises(ConfigError, match="activation"):
        ModelConfig(activation="swish")


def test_overrides_parse_yaml_values_into_nested_keys():
    merged = merge_overrides({"model": {"num_classes": 80}}, ["model.num_classes=5", "train.lr=0.001", "model.partial=false"])
    assert merged == {"model": {"num_classes": 5, "partial": False}, "train": {"lr": 0.001}}
    with pytest.raises(ConfigError, match="key=value"):
        merge_overrides({}, ["epochs"])


def test_bad_yaml_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_yaml(path)
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    assert to_dict(PreprocessConfig())["resize"] == "stretch"


def test_every_shipped_run_config_resolves():
    from pathlib import Path

    from lcie_fast.models import list_models
    from lcie_fast.train.commands import resolve_run_config

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        config = resolve_run_config([str(path)], {}, ["train.epochs=1"])
        assert config.model in list_models() and config.data.train and config.train.epochs == 1
