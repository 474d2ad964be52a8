"""Dataset parsers on small fixtures the tests write, bad rows included; the partial protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lcie_fast.data.datasets import (
    VOC_CLASSES,
    ManifestError,
    load_coco,
    load_csv_manifest,
    load_data_spec,
    load_jsonl_manifest,
    load_nuswide,
    load_voc2007,
)
from lcie_fast.data.partial import drop_labels
from lcie_fast.data.synthetic import make_synthetic_set


def _image(path, size=(8, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)
    return path


# ------------------------------------------------------------------------------------ CSV
def test_csv_manifest(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _image(tmp_path / "images" / name)
    (tmp_path / "labels.csv").write_text("filename,cat,dog\na.jpg,1,0\nb.jpg,0,1\nc.jpg,1,\n")
    data = load_csv_manifest(tmp_path / "labels.csv")
    assert data.label_names == ["cat", "dog"]
    assert data.targets.tolist() == [[1, 0], [0, 1], [1, -1]]  # empty cell = unknown
    assert data.paths[0] == str((tmp_path / "images" / "a.jpg").resolve())


def test_csv_bad_rows_are_all_listed(tmp_path):
    _image(tmp_path / "images" / "a.jpg")
    _image(tmp_path / "images" / "d.jpg")
    (tmp_path / "labels.csv").write_text(
        "filename,cat,dog\na.jpg,1,0\nmissing.jpg,0,1\na.jpg,0,0\nd.jpg,2,0\nd.jpg,1\n")
    with pytest.raises(ManifestError) as info:
        load_csv_manifest(tmp_path / "labels.csv")
    problems = "\n".join(info.value.problems)
    assert "missing file" in problems and "missing.jpg" in problems
    assert "duplicate image" in problems
    assert "holds '2'" in problems
    assert "2 fields, expected 3" in problems
    skipped = load_csv_manifest(tmp_path / "labels.csv", on_error="skip")
    assert len(skipped) == 1 and len(skipped.skipped) == 4


def test_csv_header_must_name_filename(tmp_path):
    (tmp_path / "labels.csv").write_text("image,cat\n")
    with pytest.raises(ManifestError, match="filename"):
        load_csv_manifest(tmp_path / "labels.csv")


# ---------------------------------------------------------------------------------- JSONL
def test_jsonl_manifest_with_unknown_labels_and_bad_lines(tmp_path):
    _image(tmp_path / "x.jpg")
    _image(tmp_path / "y.jpg")
    lines = [
        {"path": "x.jpg", "labels": ["cat"], "unknown": ["dog"]},
        {"path": "y.jpg", "labels": ["dog", "bird"]},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    data = load_jsonl_manifest(tmp_path / "m.jsonl")
    assert data.label_names == ["bird", "cat", "dog"]
    assert data.targets.tolist() == [[0, 1, -1], [1, 0, 1]]
    with pytest.raises(ManifestError, match="unknown label 'bird'"):
        load_jsonl_manifest(tmp_path / "m.jsonl", labels=["cat", "dog"])
    (tmp_path / "bad.jsonl").write_text('{"path": "x.jpg", "labels": ["cat"]}\nnot json\n{"labels": []}\n')
    with pytest.raises(ManifestError) as info:
        load_jsonl_manifest(tmp_path / "bad.jsonl")
    assert len(info.value.problems) == 2


# ----------------------------------------------------------------------------------- COCO
def _coco(root):
    _image(root / "val2014" / "COCO_val2014_000000000001.jpg")
    _image(root / "val2014" / "COCO_val2014_000000000002.jpg")
    _image(root / "val2014" / "COCO_val2014_000000000003.jpg")
    ann = {
        "images": [{"id": 3, "file_name": "COCO_val2014_000000000003.jpg"},
                   {"id": 1, "file_name": "COCO_val2014_000000000001.jpg"},
                   {"id": 2, "file_name": "COCO_val2014_000000000002.jpg"}],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 90, "name": "toothbrush"}],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 18}, {"id": 11, "image_id": 1, "category_id": 1},
                        {"id": 12, "image_id": 1, "category_id": 1}, {"id": 13, "image_id": 3, "category_id": 90}],
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(ann))


def test_coco_multi_hot_in_category_id_order(tmp_path):
    _coco(tmp_path)
    data = load_coco(tmp_path, split="val2014")
    assert data.label_names == ["person", "dog", "toothbrush"]  # ids 1, 18, 90
    assert [p.rsplit("_", 1)[-1] for p in data.paths] == ["000000000001.jpg", "000000000002.jpg", "000000000003.jpg"]
    assert data.targets.tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]
    annotated = load_coco(tmp_path, split="val2014", annotated_only=True)
    assert len(annotated) == 2
    assert len(load_data_spec(f"coco:{tmp_path}?split=val2014&annotated_only=1")) == 2


# ------------------------------------------------------------------------------------ VOC
def _voc_xml(objects):
    items = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>" for n, d in objects)
    return f"<annotation>{items}</annotation>"


def test_voc2007_xml_with_difficult_objects(tmp_path):
    root = tmp_path / "VOC2007"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n")
    (root / "Annotations" / "000001.xml").write_text(_voc_xml([("dog", 0), ("person", 0), ("dog", 1)]))
    (root / "Annotations" / "000002.xml").write_text(_voc_xml([("cat", 1)]))
    _image(root / "JPEGImages" / "000001.jpg")
    _image(root / "JPEGImages" / "000002.jpg")
    data = load_voc2007(root, split="test")
    assert data.label_names == list(VOC_CLASSES)
    row1 = dict(zip(VOC_CLASSES, data.targets[0]))
    assert row1["dog"] == 1 and row1["person"] == 1 and row1["cat"] == 0
    assert dict(zip(VOC_CLASSES, data.targets[1]))["cat"] == -1  # difficult only: ignored


def test_voc_bad_xml_and_unknown_class_are_listed(tmp_path):
    root = tmp_path / "VOC2007"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n")
    (root / "Annotations" / "000001.xml").write_text("<annotation><object>")
    (root / "Annotations" / "000002.xml").write_text(_voc_xml([("unicorn", 0)]))
    _image(root / "JPEGImages" / "000001.jpg")
    _image(root / "JPEGImages" / "000002.jpg")
    with pytest.raises(ManifestError) as info:
        load_voc2007(root, split="test")
    assert len(info.value.problems) == 2 and "unicorn" in str(info.value)


# ------------------------------------------------------------------------------- NUS-WIDE
def test_nuswide_list_files(tmp_path):
    (tmp_path / "ImageList").mkdir()
    (tmp_path / "TrainTestLabels").mkdir()
    (tmp_path / "Concepts81.txt").write_text("sky\nwater\n")
    (tmp_path / "ImageList" / "TestImagelist.txt").write_text("actor\\0001.jpg\nairport\\0002.jpg\n")
    (tmp_path / "TrainTestLabels" / "Labels_sky_Test.txt").write_text("1\n0\n")
    (tmp_path / "TrainTestLabels" / "Labels_water_Test.txt").write_text("1\n1\n")
    _image(tmp_path / "Flickr" / "actor" / "0001.jpg")
    _image(tmp_path / "Flickr" / "airport" / "0002.jpg")
    data = load_nuswide(tmp_path, split="test")
    assert data.label_names == ["sky", "water"]
    assert data.targets.tolist() == [[1, 1], [0, 1]]
    assert data.paths[1].endswith("Flickr/airport/0002.jpg")
    (tmp_path / "TrainTestLabels" / "Labels_water_Test.txt").write_text("1\n")
    with pytest.raises(ManifestError, match="1 lines for 2 images"):
        load_nuswide(tmp_path, split="test")


# ------------------------------------------------------------------------------ data spec
def test_data_spec_forms(tmp_path):
    _image(tmp_path / "images" / "a.jpg")
    (tmp_path / "labels.csv").write_text("filename,cat\na.jpg,1\n")
    assert len(load_data_spec(str(tmp_path))) == 1
    assert len(load_data_spec(f"csv:{tmp_path / 'labels.csv'}")) == 1
    with pytest.raises(ManifestError, match="unknown option"):
        load_data_spec(f"{tmp_path / 'labels.csv'}?colour=blue")
    with pytest.raises(ManifestError, match="cannot tell the format"):
        load_data_spec(str(tmp_path / "images"))


def test_label_alignment_reorders_and_refuses_other_names(tmp_path):
    _image(tmp_path / "images" / "a.jpg")
    (tmp_path / "labels.csv").write_text("filename,dog,cat\na.jpg,0,1\n")
    data = load_data_spec(str(tmp_path), label_names=["cat", "dog"])
    assert data.targets.tolist() == [[1, 0]]
    with pytest.raises(ManifestError, match="missing \\['bird'\\]"):
        load_data_spec(str(tmp_path), label_names=["cat", "dog", "bird"])


def test_traffic5_loads(traffic5):
    train = load_data_spec(str(traffic5 / "train"))
    assert len(train) == 1702 and train.label_names == ["bus", "car", "motorbike", "person", "truck"]
    assert train.label_counts() == {"bus": 364, "car": 461, "motorbike": 591, "person": 580, "truck": 353}


# ------------------------------------------------------------------------ partial labels
def test_partial_protocol_statistics_and_determinism():
    from lcie_fast.data.datasets import MultiLabelSet

    rng = np.random.default_rng(0)
    n, c = 4000, 20
    data = MultiLabelSet([f"/img/{i}.jpg" for i in range(n)], (rng.random((n, c)) < 0.1).astype(np.int8),
                         [f"l{k}" for k in range(c)])
    for ratio in (0.1, 0.5, 0.9):
        out, stats = drop_labels(data, ratio, seed=7)
        print(f"ratio {ratio}: realised {stats.realised_ratio:.4f}, excluded {stats.images_excluded}")
        assert stats.realised_ratio == pytest.approx(ratio, abs=0.01)  # 80,000 Bernoulli draws
        assert (out.targets >= 0).any(axis=1).all()  # no image without a known label
        # with all-known input, an image is excluded only if every label was dropped: ratio^C
        assert stats.images_excluded == pytest.approx(n * ratio**c, abs=5 * np.sqrt(n * ratio**c) + 2)
        again, _ = drop_labels(data, ratio, seed=7)
        assert np.array_equal(again.targets, out.targets) and again.paths == out.paths
        other, _ = drop_labels(data, ratio, seed=8)
        assert not np.array_equal(other.targets, out.targets)
        # known entries are untouched
        kept = np.array([int(p.split("/")[-1][:-4]) for p in out.paths])
        known = out.targets >= 0
        assert np.array_equal(out.targets[known], data.targets[kept][known])
    with pytest.raises(ValueError):
        drop_labels(data, 1.0, seed=0)


def test_holdout_subsets_partition_a_spec_and_are_seeded(tmp_path):
    from lcie_fast.data.datasets import ManifestError

    root = make_synthetic_set(tmp_path, splits={"train": 30}, size=32)
    spec = str(root / "train")
    whole = load_data_spec(spec)
    fit = load_data_spec(spec + "?holdout=0.2&subset=fit")
    held = load_data_spec(spec + "?holdout=0.2&subset=holdout")
    assert (len(fit), len(held)) == (24, 6)
    assert sorted(fit.paths + held.paths) == sorted(whole.paths) and not set(fit.paths) & set(held.paths)
    assert load_data_spec(spec + "?holdout=0.2&subset=holdout").paths == held.paths
    assert load_data_spec(spec + "?holdout=0.2&subset=holdout&holdout_seed=1").paths != held.paths
    for row, path in zip(held.targets, held.paths):  # targets travel with their images
        assert (row == whole.targets[whole.paths.index(path)]).all()
    with pytest.raises(ManifestError, match="holdout must be a fraction") as err:
        load_data_spec(spec + "?holdout=1.5&subset=fitt")
    assert "subset must be fit or holdout" in str(err.value)
