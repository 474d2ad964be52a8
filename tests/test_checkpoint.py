"""Checkpoints: round trip with metadata, safe loading, clear refusals, atomic writes."""

from __future__ import annotations

import collections

import pytest
import torch

from lcie_fast import create_model
from lcie_fast.models.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint

LABELS = [f"label{i}" for i in range(10)]


def test_round_trip_restores_weights_and_metadata(tiny_model, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", tiny_model, label_names=LABELS, extra={"epoch": 3})
    model, meta = model_from_checkpoint(path, expected_preset="lcie_tiny")
    assert meta.preset == "lcie_tiny"
    assert meta.label_names == tuple(LABELS)
    assert meta.preprocess.input_size == 64
    assert meta.preprocess.mean == tiny_model.config.preprocess.mean
    assert meta.precision == "fp32"
    assert meta.extra == {"epoch": 3}
    assert meta.model_config == tiny_model.config
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(images), tiny_model.eval()(images), rtol=0, atol=0)


def test_checkpoint_is_plain_data_loadable_with_weights_only(tiny_model, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", tiny_model)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "lcie_fast.checkpoint"
    assert isinstance(payload["meta"]["model_config"], dict)


def test_a_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        load_checkpoint(path)


def test_a_plain_state_dict_is_named_as_such(tmp_path):
    path = tmp_path / "backbone.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="not an lcie_fast checkpoint.*pretrained"):
        load_checkpoint(path)


class Payload:
    """An arbitrary Python object: safe loading must refuse to rebuild it."""


def test_objects_that_could_run_code_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "lcie_fast.checkpoint", "obj": Payload()}, path)
    with pytest.raises(CheckpointError, match="safe loading refuses"):
        load_checkpoint(path)


def test_another_preset_is_refused(tiny_model, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", tiny_model)
    with pytest.raises(CheckpointError, match="preset 'lcie_tiny', not of 'lcie_r101_448'"):
        load_checkpoint(path, expected_preset="lcie_r101_448")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found.*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_label_count_must_match_the_model(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="label_names has 3 names"):
        save_checkpoint(tmp_path / "m.pt", tiny_model, label_names=["a", "b", "c"])


def test_failed_write_keeps_the_previous_checkpoint(tiny_model, tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", tiny_model, extra={"epoch": 1})
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny_model, extra={"epoch": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind


def test_weights_of_another_config_are_refused(tmp_path):
    model = create_model("lcie_tiny")
    path = save_checkpoint(tmp_path / "m.pt", model)
    payload = torch.load(path, weights_only=True)
    payload["model"] = collections.OrderedDict(list(payload["model"].items())[:-3])
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        model_from_checkpoint(path)


def test_old_layout_with_a_second_copy_of_the_shared_encoder_loads(tiny_model, tmp_path):
    # before the shared encoder was held once, its weights were saved under both paths
    path = save_checkpoint(tmp_path / "m.pt", tiny_model)
    payload = torch.load(path, weights_only=True)
    state = payload["model"]
    assert not any(k.startswith("partial.encoder.") for k in state)
    old = dict(state)
    old.update({"partial." + k: v.clone() for k, v in state.items() if k.startswith("encoder.")})
    payload["model"] = old
    torch.save(payload, path)
    model, _ = model_from_checkpoint(path)
    assert model.partial.encoder is model.encoder
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(images), tiny_model.eval()(images), rtol=0, atol=0)
    # a copy alone (no encoder.* keys) fills the encoder
    only_copy = {k: v for k, v in old.items() if not k.startswith("encoder.")}
    fresh = create_model("lcie_tiny")
    fresh.load_state_dict(only_copy)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(images), tiny_model(images), rtol=0, atol=0)
    # an unshared encoder keeps its own keys
    unshared = create_model("lcie_tiny", share_encoder=False)
    assert any(k.startswith("partial.encoder.") for k in unshared.state_dict())
    unshared.load_state_dict(unshared.state_dict())
