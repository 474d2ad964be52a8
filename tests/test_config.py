"""Config dataclasses: YAML round trip, field checking, run resolution (files < flags < key=value)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lcie_fast.config import (
    ConfigError,
    ModelConfig,
    PreprocessConfig,
    RunConfig,
    TrainConfig,
    from_dict,
    load_yaml,
    resolve_run_config,
    save_yaml,
    to_dict,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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
    config = resolve_run_config([], {}, ["model_overrides.num_classes=5", "train.lr=0.001",
                                         "model_overrides.partial=false"])
    assert config.model_overrides == {"num_classes": 5, "partial": False}
    assert config.train.lr == 0.001
    with pytest.raises(ConfigError, match="key=value"):
        resolve_run_config([], {}, ["epochs"])


def test_bad_yaml_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_yaml(path)
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    assert to_dict(PreprocessConfig())["resize"] == "stretch"


def test_every_shipped_run_config_resolves():
    from lcie_fast.cli.train import resolve_run_config as command_resolve
    from lcie_fast.models import list_models

    assert command_resolve is resolve_run_config  # the command calls the library function
    configs = sorted(CONFIGS.glob("*.yaml"))
    assert configs
    for path in configs:
        config = resolve_run_config([str(path)], {}, ["train.epochs=1"])
        assert config.model in list_models() and config.data.train and config.train.epochs == 1
        assert from_dict(RunConfig, load_yaml(path)).model == config.model  # loads as written, too


def test_paper_config_uses_the_papers_loss_and_lr():
    train = resolve_run_config([str(CONFIGS / "paper_coco_r101_448.yaml")], {}, []).train
    assert (train.optimizer, train.loss_normalization, train.lr) == ("sgd", "sum", 0.01)
    assert "eq. 12" in TrainConfig.__doc__ and "C times" in TrainConfig.__doc__


def test_typed_flags_are_set_as_given_never_reparsed():
    config = resolve_run_config([], {"output": "2024", "data.train": "yes", "data.val": "runs/a: b/val",
                                     "model": None}, [])
    assert config.output == "2024"
    assert config.data.train == "yes"
    assert config.data.val == "runs/a: b/val"
    assert config.model == RunConfig().model  # None: flag not given
    with pytest.raises(ConfigError, match="output must be a string, got 2024"):
        resolve_run_config([], {"output": 2024}, [])  # typed means typed: no guessing either way


def test_files_then_flags_then_dotlist(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("output: from_a\ntrain: {epochs: 3, lr: 0.5}\nmodel_overrides: {img_size: 224, dropout: 0}\n")
    second.write_text("train: {epochs: 4}\nmodel_overrides: {partial: false}\n")
    config = resolve_run_config([first, second], {"output": "from_flag"}, ["output=from_dotlist"])
    assert config.output == "from_dotlist"
    assert (config.train.epochs, config.train.lr) == (4, 0.5)  # sections merge key by key
    assert config.model_overrides == {"partial": False}  # model_overrides is replaced whole
    assert resolve_run_config([first], {"output": "from_flag"}, []).output == "from_flag"


def test_dotlist_values_are_read_as_the_fields_type():
    config = resolve_run_config([], {}, ["train.epochs=5", "output=2024", "data.train=a: b", "train.amp=off",
                                         "train.lr=1", "pretrained=false", "model_overrides.feature_reductions=[8, 16]"])
    assert config.train.epochs == 5 and type(config.train.epochs) is int
    assert config.output == "2024"
    assert config.data.train == "a: b"
    assert config.train.amp == "off"
    assert config.train.lr == 1.0 and type(config.train.lr) is float
    assert config.pretrained is False
    assert config.model_overrides == {"feature_reductions": (8, 16)}
    assert resolve_run_config([], {}, ["pretrained=weights/r101.safetensors"]).pretrained == "weights/r101.safetensors"
    with pytest.raises(ConfigError, match="train.epochs must be an integer, got 'five'"):
        resolve_run_config([], {}, ["train.epochs=five"])
    with pytest.raises(ConfigError, match="train.ema must be true or false, got 'yes'"):
        resolve_run_config([], {}, ["train.ema=yes"])  # only true/false are booleans
    with pytest.raises(ConfigError, match=r"unknown field\(s\) train.epoch;.*known:.*epochs"):
        resolve_run_config([], {}, ["train.epoch=5"])
    with pytest.raises(ConfigError, match="output.x: output is not a section"):
        resolve_run_config([], {}, ["output.x=5"])


def test_literal_fields_name_their_allowed_values():
    with pytest.raises(ConfigError, match="train.optimizer must be one of 'sgd', 'adamw', got 'adam'"):
        resolve_run_config([], {}, ["train.optimizer=adam"])
    with pytest.raises(ConfigError, match="data.loader must be one of 'auto', 'torch', 'dali', got 'pil'"):
        resolve_run_config([], {"data.loader": "pil"}, [])
    with pytest.raises(ConfigError, match="model.spatial_norm must be one of 'none', 'layernorm'"):
        ModelConfig(spatial_norm="batchnorm")  # built directly: __post_init__ reads the same Literal
    with pytest.raises(ConfigError, match="train.loss_normalization must be one of 'sum', 'mean'"):
        TrainConfig(loss_normalization="avg")


def test_model_overrides_are_checked_when_loaded():
    with pytest.raises(ConfigError, match=r"unknown field\(s\) model_overrides.imgsize;.*known:.*img_size"):
        resolve_run_config([], {}, ["model_overrides={imgsize: 224}"])
    with pytest.raises(ConfigError, match=r"unknown field\(s\) model_overrides.imgsize"):
        RunConfig(model_overrides={"imgsize": 224})  # built directly, as demo and benchmarks do
    with pytest.raises(ConfigError, match="model_overrides.img_size must be an integer, got 'big'"):
        resolve_run_config([], {}, ["model_overrides.img_size=big"])
    with pytest.raises(ConfigError, match="model_overrides.branch_init must be one of 'zero', 'paper'"):
        from_dict(RunConfig, {"model_overrides": {"branch_init": "random"}})
    with pytest.raises(ConfigError, match=r"unknown field\(s\) model_overrides.preprocess.size"):
        resolve_run_config([], {}, ["model_overrides.preprocess={size: 224}"])
    config = resolve_run_config([], {}, ["model_overrides={img_size: 224, preprocess: {input_size: 224}}"])
    assert config.model_overrides == {"img_size": 224, "preprocess": PreprocessConfig(input_size=224)}


def test_saved_run_config_resolves_back_to_itself(tmp_path):
    config = resolve_run_config([str(CONFIGS / "effl0_traffic5_finetune.yaml")], {"output": "2024"},
                                ["model_overrides={img_size: 224, preprocess: {input_size: 224}, dropout: 0}"])
    save_yaml(config, tmp_path / "config.yaml")
    assert resolve_run_config([tmp_path / "config.yaml"], {}, []) == config
    assert from_dict(RunConfig, load_yaml(tmp_path / "config.yaml")) == config


def test_cli_train_resolves_typed_flags(monkeypatch, tmp_path):
    """``lcie-fast train --output 2024 --data yes``: through argparse into the config, up to the trainer."""
    from lcie_fast import cli
    from lcie_fast.train import trainer

    seen = {}

    class Resolved(Exception):
        pass

    def stop(config, **kwargs):
        seen["config"] = config
        raise Resolved

    monkeypatch.setattr(trainer, "Trainer", stop)
    with pytest.raises(Resolved):
        cli.main(["train", "--output", "2024", "--data", "yes", "--val-data", "a: b", "--loader", "torch",
                  "-c", str(CONFIGS / "effl0_traffic5_heads.yaml"), "train.epochs=5"])
    config = seen["config"]
    assert (config.output, config.data.train, config.data.val, config.data.loader) == ("2024", "yes", "a: b", "torch")
    assert config.train.epochs == 5 and config.train.freeze_backbone  # the file still applies
    assert cli.main(["train", "--data", "x", "train.epochs=five"]) == 1  # a ConfigError is a user error
