"""Tagging at dataset scale (issue 13): every format carries the same records, each input exactly once;
shards are disjoint and merge back into input order; Parquet and captions resume after a crash;
statistics; dedup; WebDataset shards and object storage through the CLI."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from lcie_fast.batch import CaptionOptions, TagJob, plan_job, run_job, shard_output_name
from lcie_fast.cli import main
from lcie_fast.outputs.merge import merge_outputs, read_output, record_fields

pytest.importorskip("pyarrow", reason="Parquet outputs need the parquet extra (pyarrow)")
LABELS = ["bus", "car", "motorbike", "person", "truck"]


@pytest.fixture
def dataset(tmp_path):
    """18 generated images in two folders, bad files mixed in, and two byte-identical copies."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for index in range(18):
        folder = root / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40 + index, 48, 3), dtype=np.uint8)).save(folder / f"img{index:02d}.jpg")
    (root / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "b" / "empty.png").write_bytes(b"")
    jpeg = (root / "a" / "img01.jpg").read_bytes()
    (root / "b" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    shutil.copyfile(root / "a" / "img03.jpg", root / "b" / "copy_of_img03.jpg")
    shutil.copyfile(root / "a" / "img03.jpg", root / "b" / "zz_copy_again.jpg")
    return root


def _run(tiny5_tagger, tiny5_checkpoint, inputs, output, fmt=None, **options):
    job = TagJob(inputs, str(output) if output else None, fmt, batch_size=4, progress=False, **options)
    return job, run_job(job, tiny5_tagger, plan_job(job, tiny5_checkpoint), model=str(tiny5_checkpoint))


def _records(path):
    """The records of an output as JSON data, with every optional field its settings ask for."""
    settings, records = read_output(str(path))
    fields = record_fields(settings)
    return [record.to_json(fields) for record in records]


def test_every_format_writes_the_same_records_once_each(tiny5_tagger, tiny5_checkpoint, dataset, tmp_path):
    inputs = [str(dataset)]
    outputs = {fmt: tmp_path / f"tags.{fmt}" for fmt in ("jsonl", "csv", "parquet")}
    for fmt, path in outputs.items():
        _, stats = _run(tiny5_tagger, tiny5_checkpoint, inputs, path, all_scores=True, hash_name="md5")
        assert stats["inputs"] == 23 and stats["errors"] == 3 and stats["tagged"] == 20
        assert stats["errors_by_kind"] == {"corrupt": 2, "empty": 1}, stats["errors_by_kind"]
        assert json.loads((tmp_path / "tags.stats.json").read_text())["format"] == fmt
    reference = _records(outputs["jsonl"])
    assert [r["index"] for r in reference] == list(range(23))
    assert len({r["path"] for r in reference}) == 23
    assert all(set(r) == {"index", "path", "labels", "error", "scores_all", "md5"} for r in reference)
    assert any(r["labels"] for r in reference), "thresholds 0.45 on a random model should keep some labels"
    for fmt in ("csv", "parquet"):
        assert _records(outputs[fmt]) == reference, fmt
    import pyarrow.parquet as pq

    schema = pq.read_schema(outputs["parquet"])
    assert str(schema.field("labels").type) == "list<element: string>"
    assert str(schema.field("scores").type) == "list<element: float>"
    meta = json.loads(pq.read_metadata(outputs["parquet"]).metadata[b"lcie_fast"])
    assert meta["labels"] == LABELS and meta["model_sha256"] and meta["version"]


def test_captions_match_records_and_errors_go_to_errors_jsonl(tiny5_tagger, tiny5_checkpoint, dataset, tmp_path):
    inputs = [str(dataset)]
    _run(tiny5_tagger, tiny5_checkpoint, inputs, tmp_path / "tags.jsonl")
    reference = _records(tmp_path / "tags.jsonl")
    captions = tmp_path / "captions"
    _run(tiny5_tagger, tiny5_checkpoint, inputs, None, "txt", captions=CaptionOptions(folder=str(captions), separator=", "))
    for record in reference:
        caption = captions / (record["path"][len(str(dataset)) + 1:].rsplit(".", 1)[0] + ".txt")
        if record["error"] is None:
            assert caption.read_text() == ", ".join(tag["label"] for tag in record["labels"]) + ("\n" if record["labels"] else "")
        else:
            assert not caption.exists()
    errors = [json.loads(line) for line in (captions / "errors.jsonl").read_text().splitlines()]
    assert [e["path"] for e in errors] == [r["path"] for r in reference if r["error"]]


def test_shards_are_disjoint_cover_the_inputs_and_merge_in_input_order(tiny5_tagger, tiny5_checkpoint, dataset, tmp_path):
    inputs = [str(dataset)]
    _run(tiny5_tagger, tiny5_checkpoint, inputs, tmp_path / "all.jsonl")
    reference = _records(tmp_path / "all.jsonl")
    parts = []
    for index, fmt in zip(range(3), ("jsonl", "csv", "parquet")):
        job, stats = _run(tiny5_tagger, tiny5_checkpoint, inputs, tmp_path / f"shards/tags.{fmt}", shard=(index, 3))
        assert job.output == shard_output_name(str(tmp_path / f"shards/tags.{fmt}"), (index, 3))
        assert job.output.endswith(f"tags-{index:05d}-of-00003.{fmt}")
        records = _records(job.output)
        assert all(r["index"] % 3 == index for r in records)
        parts.append(job.output)
    union = sorted((r for part in parts for r in _records(part)), key=lambda r: r["index"])
    assert union == reference
    merge_outputs(parts, str(tmp_path / "merged.jsonl"))
    assert _records(tmp_path / "merged.jsonl") == reference
    assert main(["tag-merge", *parts, "-o", str(tmp_path / "merged.parquet")]) == 0
    assert _records(tmp_path / "merged.parquet") == reference
    assert main(["tag-merge", *parts[:2], "-o", str(tmp_path / "missing.jsonl")]) == 1  # shard 2 of 3 missing


class _Crash(RuntimeError):
    pass


def _crash_after(chunks):
    seen = []

    def hook(chunk):
        seen.append(chunk)
        if len(seen) == chunks:
            raise _Crash("killed part-way")

    return hook


@pytest.mark.parametrize("fmt", ["parquet", "txt", "jsonl"])
def test_a_crash_part_way_then_a_rerun_gives_every_input_exactly_once(tiny5_tagger, tiny5_checkpoint, dataset, tmp_path, fmt):
    inputs = [str(dataset)]
    _run(tiny5_tagger, tiny5_checkpoint, inputs, tmp_path / "reference.jsonl")
    reference = _records(tmp_path / "reference.jsonl")
    output = None if fmt == "txt" else tmp_path / f"tags.{fmt}"
    options = {"part_records": 4} if fmt == "parquet" else {}
    if fmt == "txt":
        options["captions"] = CaptionOptions(folder=str(tmp_path / "captions"))
    job = TagJob(inputs, str(output) if output else None, fmt, batch_size=4, progress=False, **options)
    with pytest.raises(_Crash):
        run_job(job, tiny5_tagger, plan_job(job, tiny5_checkpoint), on_chunk=_crash_after(3))
    _, stats = _run(tiny5_tagger, tiny5_checkpoint, inputs, output, fmt, **options)
    assert 0 < stats["this_run"] < len(reference), "the rerun must resume, not start afresh"
    if fmt == "txt":
        written = sorted((tmp_path / "captions").rglob("*.txt"))
        assert len(written) == sum(r["error"] is None for r in reference)
        errors = [json.loads(line)["path"] for line in (tmp_path / "captions" / "errors.jsonl").read_text().splitlines()]
        assert sorted(errors) == sorted(r["path"] for r in reference if r["error"])  # once each
    else:
        assert _records(output) == reference
        assert not (tmp_path / "tags.parquet.d").exists()


def test_dedup_tags_repeated_content_once(tiny5_tagger, tiny5_checkpoint, dataset, tmp_path):
    _, stats = _run(tiny5_tagger, tiny5_checkpoint, [str(dataset)], tmp_path / "tags.jsonl", dedup=True)
    records = {r["path"].rsplit("/", 1)[1]: r for r in _records(tmp_path / "tags.jsonl")}
    original = records["img03.jpg"]
    for copy in ("copy_of_img03.jpg", "zz_copy_again.jpg"):
        assert records[copy]["duplicate_of"] == original["path"]
        assert records[copy]["labels"] == original["labels"] and records[copy]["sha256"] == original["sha256"]
    assert original["duplicate_of"] is None and stats["duplicates"] == 2
    assert sum(r["duplicate_of"] is not None for r in records.values()) == 2


def _shard_tar(path, dataset, names):
    with tarfile.open(path, "w") as tar:
        for name in names:
            data = (dataset / name).read_bytes()
            info = tarfile.TarInfo(f"{name.replace('/', '_').rsplit('.', 1)[0]}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_per_shard_outputs_and_remote_output(tiny5_checkpoint, dataset, tmp_path, capsys):
    fsspec = pytest.importorskip("fsspec", reason="object storage needs the remote extra (fsspec)")
    _shard_tar(tmp_path / "shard-000.tar", dataset, ["a/img01.jpg", "a/img03.jpg"])
    _shard_tar(tmp_path / "shard-001.tar", dataset, ["a/corrupt.jpg", "b/img00.jpg"])
    pattern = str(tmp_path / "shard-{000..001}.tar")
    assert main(["tag", str(tiny5_checkpoint), pattern, "-o", str(tmp_path / "wds.jsonl"), "--no-progress"]) == 0
    records = _records(tmp_path / "wds.jsonl")
    assert [r["path"].rsplit("/", 1)[1] for r in records] == [
        "shard-000.tar#a_img01", "shard-000.tar#a_img03", "shard-001.tar#a_corrupt", "shard-001.tar#b_img00"]
    assert [r["error"] is not None for r in records] == [False, False, True, False]
    assert main(["tag", str(tiny5_checkpoint), pattern, "--per-shard", "--no-progress"]) == 0
    per_shard = [_records(tmp_path / f"shard-00{i}.jsonl") for i in range(2)]
    assert [r["path"] for part in per_shard for r in part] == [r["path"] for r in records]
    assert main(["tag", str(tiny5_checkpoint), str(dataset / "a"), "-o", "memory://bucket/out/tags.parquet", "--no-progress",
                 "--stats", "memory://bucket/out/stats.json"]) == 0
    fs = fsspec.filesystem("memory")
    assert fs.exists("/bucket/out/tags.parquet") and not fs.exists("/bucket/out/tags.parquet.d")
    assert json.loads(fs.cat("/bucket/out/stats.json"))["inputs"] == 10
    assert main(["tag", str(tiny5_checkpoint), str(dataset / "a"), "-o", "memory://bucket/out/tags.jsonl", "--no-progress"]) == 0
    assert len(fs.cat("/bucket/out/tags.jsonl").splitlines()) == 10
    assert json.loads(fs.cat("/bucket/out/tags.jsonl.meta.json"))["complete"] is True
    assert main(["tag", str(tiny5_checkpoint), str(dataset / "a"), "-o", "memory://bucket/out/tags.jsonl", "--no-progress"]) == 0
    assert "10 records already there" in capsys.readouterr().err  # resumed from the remote copy
    assert not list(tmp_path.glob("memory*")) and not os.path.exists("memory:")
    capsys.readouterr()


def test_threshold_files_and_post_processing_through_the_cli(tiny5_checkpoint, dataset, tmp_path, capsys):
    (tmp_path / "t.txt").write_text("0.4\n0.4\n# a comment\n0.4\n0.4\n")
    assert main(["tag", str(tiny5_checkpoint), str(dataset / "a"), "--thresholds", str(tmp_path / "t.txt"),
                 "-o", str(tmp_path / "bad.jsonl"), "--no-progress"]) == 1
    assert "4 thresholds" in capsys.readouterr().err and not (tmp_path / "bad.jsonl").exists()
    (tmp_path / "t.txt").write_text("0.4\n0.4\n0.4\n0.4\n0.4\n")
    assert main(["tag", str(tiny5_checkpoint), str(dataset / "a"), "--thresholds", str(tmp_path / "t.txt"), "--min-tags", "2",
                 "--max-tags", "3", "--exclude-tags", "truck", "--replace", "car:automobile",
                 "-o", str(tmp_path / "tags.jsonl"), "--no-progress"]) == 0
    good = [r for r in _records(tmp_path / "tags.jsonl") if r["error"] is None]
    assert good and all(2 <= len(r["labels"]) <= 3 for r in good)
    names = {tag["label"] for r in good for tag in r["labels"]}
    assert "truck" not in names and "car" not in names
