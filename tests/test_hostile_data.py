"""Hostile data specs and files: BOMs, oversize fields, non-UTF-8 bytes, empty sets, unreadable
images, and the permissions of atomically written files."""

from __future__ import annotations

import csv
import math
import os
import stat

import pytest
from PIL import Image

from lcie_fast.config import DataConfig, RunConfig, TrainConfig
from lcie_fast.data.datasets import ManifestError, load_csv_manifest, load_data_spec, load_jsonl_manifest
from lcie_fast.errors import UserError
from lcie_fast.io import atomic_write, write_json

BOM = b"\xef\xbb\xbf"


def _images(folder, names, size=(32, 32)):
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        Image.new("RGB", size, (40 * k % 256, 90, 160)).save(folder / name)


def _csv(folder, rows, *, labels=("cat", "dog"), prefix=b"", encoding="utf-8"):
    lines = [",".join(("filename", *labels))] + [",".join(row) for row in rows]
    path = folder / "labels.csv"
    path.write_bytes(prefix + ("\n".join(lines) + "\n").encode(encoding))
    return path


# ------------------------------------------------------------------------------ encodings
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_csv_manifest_with_a_utf8_bom_loads(tmp_path, on_error):
    _images(tmp_path / "images", ["a.jpg", "b.jpg"])
    path = _csv(tmp_path, [("a.jpg", "1", "0"), ("b.jpg", "0", "1")], prefix=BOM)
    data = load_csv_manifest(path, on_error=on_error)
    assert data.label_names == ["cat", "dog"]
    assert data.targets.tolist() == [[1, 0], [0, 1]] and not data.skipped


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_jsonl_manifest_with_a_utf8_bom_keeps_its_first_line(tmp_path, on_error):
    _images(tmp_path, ["a.jpg", "b.jpg"])
    path = tmp_path / "data.jsonl"
    path.write_bytes(BOM + b'{"path": "a.jpg", "labels": ["cat"]}\n{"path": "b.jpg", "labels": ["dog"]}\n')
    data = load_jsonl_manifest(path, on_error=on_error)
    assert len(data) == 2 and data.label_names == ["cat", "dog"] and not data.skipped


def test_latin1_csv_names_the_file_line_and_byte_offset(tmp_path):
    _images(tmp_path / "images", ["a.jpg", "caf\u00e9.jpg"])
    path = _csv(tmp_path, [("a.jpg", "1", "0"), ("caf\u00e9.jpg", "0", "1")], encoding="latin-1")
    with pytest.raises(ManifestError) as err:
        load_csv_manifest(path)
    message = str(err.value)
    print(message)
    offset = path.read_bytes().index(b"\xe9")
    assert str(path) in message and "line 3" in message and f"byte offset {offset}" in message and "UTF-8" in message


def test_latin1_rows_are_skipped_and_reported_with_on_error_skip(tmp_path):
    _images(tmp_path / "images", ["a.jpg", "caf\u00e9.jpg"])
    path = tmp_path / "labels.csv"
    path.write_bytes("filename,cat,dog\na.jpg,1,0\n".encode() + "caf\u00e9.jpg,0,1\n".encode("latin-1"))
    data = load_csv_manifest(path, on_error="skip")
    assert [p.rsplit(os.sep, 1)[-1] for p in data.paths] == ["a.jpg"]
    assert len(data.skipped) == 1 and "line 3" in data.skipped[0] and "UTF-8" in data.skipped[0]


def test_latin1_jsonl_names_the_file(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes('{"path": "caf\u00e9.jpg", "labels": ["cat"]}\n'.encode("latin-1"))
    with pytest.raises(ManifestError) as err:
        load_jsonl_manifest(path, check_files=False)
    assert str(path) in str(err.value) and "line 1" in str(err.value)


def test_oversize_csv_field_is_a_manifest_error_naming_file_and_line(tmp_path):
    _images(tmp_path / "images", ["a.jpg"])
    path = _csv(tmp_path, [("a.jpg", "1", "0"), ("b.jpg", "0", "x" * 200_000)])
    for on_error in ("raise", "skip"):
        with pytest.raises(ManifestError) as err:
            load_csv_manifest(path, on_error=on_error)
        message = str(err.value)
        assert str(path) in message and "line 3" in message and "field" in message
    assert csv.field_size_limit() == 131072  # the process-wide limit is left alone


def test_unclosed_quote_is_a_manifest_error_naming_the_line(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text('filename,cat\n"a.jpg,1\n' + "b.jpg,0\n" * 20_000, encoding="utf-8")
    with pytest.raises(ManifestError) as err:
        load_csv_manifest(path, check_files=False)
    assert str(path) in str(err.value) and "line 2" in str(err.value)


def test_non_utf8_coco_annotations_name_the_file(tmp_path):
    ann = tmp_path / "annotations" / "instances_val2014.json"
    ann.parent.mkdir()
    ann.write_bytes(b'{"images": [], "categories": [{"id": 1, "name": "caf\xe9"}]}')
    with pytest.raises(ManifestError) as err:
        load_data_spec(f"coco:{tmp_path}?split=val2014")
    assert str(ann) in str(err.value)
    ann.write_bytes(b'{"images": [')
    with pytest.raises(ManifestError) as err:
        load_data_spec(f"coco:{tmp_path}?split=val2014")
    assert str(ann) in str(err.value)


# ------------------------------------------------------------------------------ training
def _config(tmp_path, train, val="", **train_options):
    return RunConfig(model="lcie_tiny", pretrained=False,
                     data=DataConfig(train=str(train), val=str(val), workers=0, loader="torch"),
                     train=TrainConfig(epochs=1, batch_size=4, amp="off", log_every=1, **train_options),
                     output=str(tmp_path / "run"))


@pytest.fixture
def good_set(tmp_path):
    folder = tmp_path / "good"
    names = [f"g{k}.png" for k in range(8)]
    _images(folder / "images", names)
    _csv(folder, [(n, str(k % 2), str(1 - k % 2)) for k, n in enumerate(names)])
    return folder


@pytest.mark.parametrize("which", ["train", "val"])
@pytest.mark.parametrize("content", [b"filename,cat,dog\n", b""], ids=["header-only", "zero-bytes"])
def test_empty_data_spec_is_refused_before_any_step(tmp_path, good_set, which, content):
    from lcie_fast.train.trainer import Trainer

    empty = tmp_path / ("empty.csv" if content else "empty.jsonl")
    empty.write_bytes(content)
    train, val = (empty, good_set) if which == "train" else (good_set, empty)
    with pytest.raises(UserError) as err:
        Trainer(_config(tmp_path, train, val), device="cpu", progress=False)
    message = str(err.value)
    print(message)
    assert str(empty) in message and ("--val-data" if which == "val" else "--data") in message
    assert not (tmp_path / "run" / "last.pt").exists()


def test_training_on_undecodable_images_stops_without_best_checkpoint(tmp_path, good_set):
    from lcie_fast.train.trainer import Trainer

    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    names = [f"b{k}.jpg" for k in range(8)]
    for name in names:
        (bad / "images" / name).write_bytes(b"this is not a JPEG")
    _csv(bad, [(n, "1", "0") for n in names])
    trainer = Trainer(_config(tmp_path, bad, good_set), device="cpu", progress=False)
    with pytest.raises(UserError) as err:
        trainer.fit()
    message = str(err.value)
    print(message)
    assert "no training step" in message and "bad_images.txt" in message
    assert not (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "metrics.json").exists()


def test_nan_metrics_never_select_a_best_checkpoint(tmp_path, good_set):
    from lcie_fast.train.trainer import Trainer

    trainer = Trainer(_config(tmp_path, good_set, good_set, ema=True), device="cpu", progress=False)
    nan = float("nan")
    trainer._keep_best({"mAP": nan, "ema": {"mAP": nan}})
    assert not (tmp_path / "run" / "best.pt").exists() and trainer.best_map == float("-inf")
    trainer._keep_best({"mAP": nan, "ema": {"mAP": 40.0}})  # a NaN first candidate must not win max()
    assert (tmp_path / "run" / "best.pt").exists() and trainer.best_map == 40.0
    assert not math.isnan(trainer.best_map)


# ---------------------------------------------------------------------------- atomic writes
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_take_the_umask_mode(tmp_path, umask):
    from lcie_fast import create_model
    from lcie_fast.models.checkpoint import save_checkpoint

    old = os.umask(umask)
    try:
        write_json({"a": 1}, tmp_path / "metrics.json")
        with atomic_write(tmp_path / "out.txt", "w") as handle:
            handle.write("caf\u00e9\n")
        save_checkpoint(tmp_path / "model.pt", create_model("lcie_tiny", num_classes=5),
                        label_names=[f"l{k}" for k in range(5)])
    finally:
        os.umask(old)
    for name in ("metrics.json", "out.txt", "model.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    assert (tmp_path / "out.txt").read_bytes() == "caf\u00e9\n".encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "model.pt", "out.txt"]  # no temp left


def test_atomic_write_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as handle:
            handle.write("new")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_write_beside_a_255_byte_file_name(tmp_path):
    target = tmp_path / ("m" * 252 + ".pt")  # the longest name the folder takes
    with atomic_write(target, "wb") as handle:
        handle.write(b"x")
    assert target.read_bytes() == b"x" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_scoring_nothing_names_the_failed_images():
    import numpy as np

    from lcie_fast.errors import InvalidInputError
    from lcie_fast.train.evaluate import Prediction, score

    prediction = Prediction(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), [(0, "/data/x.jpg", "truncated")], 1.0)
    with pytest.raises(InvalidInputError, match=r"1 failed; the first: /data/x.jpg: truncated"):
        score(prediction, np.zeros((1, 2), np.int8), ["a", "b"])
