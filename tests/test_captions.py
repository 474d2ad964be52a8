"""Sidecar captions (issue 13): where they go (beside the image, mirrored under --caption-dir, tar
members and URLs), skip/overwrite/append, atomic writes, error records to errors.jsonl, refusals.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from lcie_fast.errors import InvalidInputError
from lcie_fast.outputs import NON_FINITE, OutputWriteError, TagRecord
from lcie_fast.outputs.captions import CaptionWriter


def image(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (200, 30, 10)).save(path)
    return str(path)


def record(path: str | None, *tags: str, index: int = 0, error: str | None = None) -> TagRecord:
    return TagRecord(index, path, [(tag, 0.9 - 0.1 * i) for i, tag in enumerate(tags)], error)


def files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------- paths
def test_caption_beside_the_image(tmp_path):
    first, second = image(tmp_path / "a" / "b.jpg"), image(tmp_path / "a" / "c.d.png")
    writer = CaptionWriter(errors_path=tmp_path / "errors.jsonl")
    assert writer.caption_path(first) == tmp_path / "a" / "b.txt"
    assert writer.write([record(first, "car", "bus"), record(second, "truck", index=1)]) == 2
    assert (tmp_path / "a" / "b.txt").read_text(encoding="utf-8") == "car, bus\n"
    assert (tmp_path / "a" / "c.d.txt").read_text(encoding="utf-8") == "truck\n"
    assert (writer.written, writer.skipped, writer.appended, writer.errors) == (2, 0, 0, 0)
    assert not (tmp_path / "errors.jsonl").exists()
    assert CaptionWriter(caption_ext="caption", errors_path="e").caption_path("x/y.jpg") == Path("x/y.caption")


def test_caption_dir_mirrors_the_tree_under_the_input_root(tmp_path):
    root = tmp_path / "data"
    paths = [image(root / "b.jpg"), image(root / "sub" / "deep" / "c.jpg")]
    writer = CaptionWriter(caption_dir=tmp_path / "captions", input_root=root, separator=" | ",
                           errors_path=tmp_path / "errors.jsonl")
    writer.write([record(paths[0], "car"), record(paths[1], "bus", "person", index=1)])
    assert files(tmp_path / "captions") == ["b.txt", "sub/deep/c.txt"]
    assert (tmp_path / "captions" / "sub" / "deep" / "c.txt").read_text(encoding="utf-8") == "bus | person\n"
    assert files(root) == ["b.jpg", "sub/deep/c.jpg"]  # nothing written beside the images
    outside = image(tmp_path / "elsewhere" / "d.jpg")
    with pytest.raises(InvalidInputError, match="not under the input folder"):
        writer.caption_path(outside)


def test_caption_dir_relative_paths_use_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image(tmp_path / "imgs" / "a.jpg")
    writer = CaptionWriter(caption_dir="caps", errors_path="errors.jsonl")
    assert writer.caption_path("imgs/a.jpg") == tmp_path / "caps" / "imgs" / "a.txt"
    assert writer.caption_path("imgs/../imgs/a.jpg") == tmp_path / "caps" / "imgs" / "a.txt"


def test_tar_members_and_urls_go_under_caption_dir(tmp_path):
    writer = CaptionWriter(caption_dir=tmp_path / "caps", errors_path=tmp_path / "errors.jsonl")
    caps = tmp_path / "caps"
    assert writer.caption_path("shards/shard-000.tar#000123") == caps / "shard-000" / "000123.txt"
    assert writer.caption_path("s3://bucket/shards/shard-001.tar#dir/k") == caps / "shard-001" / "dir" / "k.txt"
    assert writer.caption_path("memory://b/x.jpg") == caps / "b" / "x.txt"
    assert writer.caption_path("s3://bucket/a/b.c.jpg") == caps / "bucket" / "a" / "b.c.txt"
    assert writer.caption_path("https://host:8080/p/img.png?sig=1") == caps / "host:8080" / "p" / "img.txt"
    writer.write([record("memory://b/x.jpg", "car"), record("shards/shard-000.tar#000123", "bus", index=1)])
    assert files(caps) == ["b/x.txt", "shard-000/000123.txt"]
    assert (caps / "shard-000" / "000123.txt").read_text(encoding="utf-8") == "bus\n"


def test_file_urls_are_local_paths(tmp_path):
    path = image(tmp_path / "a.jpg")
    writer = CaptionWriter(errors_path=tmp_path / "errors.jsonl")
    assert writer.caption_path(Path(path).as_uri()) == tmp_path / "a.txt"


@pytest.mark.parametrize("path, kind", [("shard.tar#key", "a WebDataset member"), ("memory://b/x.jpg", "a URL"),
                                        ("s3://bucket/a.jpg", "a URL")])
def test_members_and_urls_need_caption_dir(tmp_path, path, kind):
    writer = CaptionWriter(errors_path=tmp_path / "errors.jsonl")
    with pytest.raises(InvalidInputError, match=f"{kind} has no folder .* pass --caption-dir"):
        writer.caption_path(path)
    assert not writer.exists(str(tmp_path / "x.jpg"))


@pytest.mark.parametrize("path", ["memory://b/../../x.jpg", "shard.tar#../../etc/passwd", "s3://../x.jpg",
                                  "memory://b/a/../../../x.jpg"])
def test_paths_leaving_caption_dir_are_refused(tmp_path, path):
    writer = CaptionWriter(caption_dir=tmp_path / "caps", errors_path=tmp_path / "errors.jsonl")
    with pytest.raises(InvalidInputError, match="would leave --caption-dir"):
        writer.caption_path(path)
    assert not writer.exists(path)
    writer.write([record(path, "car")])  # one refused path is an error record, not the end of the run
    writer.close()
    assert files(tmp_path) == ["errors.jsonl"]
    assert "would leave --caption-dir" in json.loads((tmp_path / "errors.jsonl").read_text())["error"]


def test_absolute_member_keys_stay_inside_caption_dir(tmp_path):
    writer = CaptionWriter(caption_dir=tmp_path / "caps", errors_path=tmp_path / "errors.jsonl")
    assert writer.caption_path("shard.tar#/etc/x") == tmp_path / "caps" / "shard" / "etc" / "x.txt"


def test_refusals(tmp_path):
    path = image(tmp_path / "a.jpg")
    with pytest.raises(InvalidInputError, match="would replace the image itself"):
        CaptionWriter(caption_ext=".jpg", errors_path=tmp_path / "e").caption_path(path)
    with pytest.raises(InvalidInputError, match="in-memory image has no path"):
        CaptionWriter(errors_path=tmp_path / "e").caption_path(None)
    with pytest.raises(InvalidInputError, match="--on-existing must be one of skip, overwrite, append"):
        CaptionWriter(on_existing="merge", errors_path=tmp_path / "e")
    with pytest.raises(InvalidInputError, match="--caption-ext"):
        CaptionWriter(caption_ext="a/b", errors_path=tmp_path / "e")
    with pytest.raises(InvalidInputError, match="--separator"):
        CaptionWriter(separator="", errors_path=tmp_path / "e")
    assert Image.open(path).size == (8, 6)


# ------------------------------------------------------------------------ existing files
def test_skip_leaves_existing_captions_alone(tmp_path):
    path = image(tmp_path / "a.jpg")
    (tmp_path / "a.txt").write_text("hand written", encoding="utf-8")
    writer = CaptionWriter(errors_path=tmp_path / "errors.jsonl")
    assert writer.exists(path) and not writer.exists(str(tmp_path / "b.jpg"))
    writer.write([record(path, "car")])
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "hand written"
    assert (writer.written, writer.skipped) == (0, 1)


def test_overwrite_replaces_existing_captions(tmp_path):
    path = image(tmp_path / "a.jpg")
    (tmp_path / "a.txt").write_text("old, tags", encoding="utf-8")
    writer = CaptionWriter(on_existing="overwrite", errors_path=tmp_path / "errors.jsonl")
    writer.write([record(path, "car", "bus")])
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "car, bus\n"
    assert (writer.written, writer.skipped, writer.appended) == (1, 0, 0)


def test_append_keeps_existing_tags_first_without_duplicates(tmp_path):
    path = image(tmp_path / "a.jpg")
    (tmp_path / "a.txt").write_text("my_trigger ,car,  dog, my_trigger\n", encoding="utf-8")
    writer = CaptionWriter(on_existing="append", errors_path=tmp_path / "errors.jsonl")
    writer.write([record(path, "bus", "car", "person")])
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "my_trigger, car, dog, bus, person\n"
    assert writer.appended == 1
    # nothing new: the file is left exactly as it is
    before = (tmp_path / "a.txt").stat().st_mtime_ns
    (tmp_path / "a.txt").write_text("car,bus", encoding="utf-8")
    os.utime(tmp_path / "a.txt", ns=(before, before))
    writer.write([record(path, "bus", "car")])
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "car,bus"
    assert (tmp_path / "a.txt").stat().st_mtime_ns == before
    # no caption yet: written as new
    other = image(tmp_path / "b.jpg")
    writer.write([record(other, "car", "car")])
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "car\n"
    assert (writer.written, writer.appended) == (1, 2)


def test_append_splits_on_a_newline_separator(tmp_path):
    path = image(tmp_path / "a.jpg")
    (tmp_path / "a.txt").write_text("long hair\nsmile\n", encoding="utf-8")
    CaptionWriter(on_existing="append", separator="\n", errors_path=tmp_path / "e").write([record(path, "smile", "car")])
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "long hair\nsmile\ncar\n"


def test_no_tag_kept_gives_an_empty_caption_marking_the_image_done(tmp_path):
    path = image(tmp_path / "a.jpg")
    writer = CaptionWriter(errors_path=tmp_path / "errors.jsonl")
    writer.write([record(path)])
    assert (tmp_path / "a.txt").read_bytes() == b""
    assert writer.exists(path)


# --------------------------------------------------------------------- atomic, errors
def test_writes_are_atomic_and_leave_no_temporary_file(tmp_path, monkeypatch):
    paths = [image(tmp_path / f"{i}.jpg") for i in range(5)]
    writer = CaptionWriter(on_existing="overwrite", errors_path=tmp_path / "errors.jsonl")
    writer.write([record(path, "car", index=i) for i, path in enumerate(paths)])
    assert files(tmp_path) == sorted([f"{i}.jpg" for i in range(5)] + [f"{i}.txt" for i in range(5)])

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OutputWriteError, match="cannot write the caption .*0.txt: No space left on device"):
        writer.write([record(paths[0], "bus")])
    assert (tmp_path / "0.txt").read_text(encoding="utf-8") == "car\n"  # the old caption, whole
    assert not [name for name in files(tmp_path) if name.endswith(".tmp")]


def test_durable_writes_give_the_same_captions(tmp_path):
    path = image(tmp_path / "a.jpg")
    CaptionWriter(durable=True, errors_path=tmp_path / "e").write([record(path, "car", "bus")])
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "car, bus\n"
    assert files(tmp_path) == ["a.jpg", "a.txt"]


def test_error_records_go_to_errors_jsonl_and_reruns_append(tmp_path):
    good = image(tmp_path / "good.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    errors = tmp_path / "out" / "errors.jsonl"
    nan = TagRecord(2, str(tmp_path / "nan.jpg"), [("car", float("nan"))])
    with CaptionWriter(errors_path=errors) as writer:
        assert writer.write([record(good, "car"), record(str(bad), index=1, error="corrupt image: cannot identify"),
                             nan]) == 3
        assert writer.errors == 2 and writer.written == 1
        lines = errors.read_text(encoding="utf-8").splitlines()  # flushed: readable before close
    assert [json.loads(line) for line in lines] == [
        {"index": 1, "path": str(bad), "labels": [], "error": "corrupt image: cannot identify"},
        {"index": 2, "path": str(tmp_path / "nan.jpg"), "labels": [], "error": NON_FINITE}]
    assert not bad.with_suffix(".txt").exists() and not (tmp_path / "nan.txt").exists()
    # a rerun appends (and cuts a last line left incomplete by a crash)
    with errors.open("a", encoding="utf-8") as handle:
        handle.write('{"index": 9, "pa')
    with CaptionWriter(errors_path=errors) as writer:
        writer.write([record(str(bad), index=1, error="corrupt image: cannot identify")])
    again = [json.loads(line) for line in errors.read_text(encoding="utf-8").splitlines()]
    assert [entry["index"] for entry in again] == [1, 2, 1]
