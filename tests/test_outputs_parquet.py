"""Parquet outputs (issue 13, item 2): schema and metadata, part files every N records, a crash
part-way then resume from the whole parts, refusals (other settings, files that are not ours),
``memory://`` and ``file://`` targets, and the round trip of every record field.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import uuid

import pytest

pa = pytest.importorskip("pyarrow", reason="the parquet extra (pyarrow) is not installed")
pq = pytest.importorskip("pyarrow.parquet", reason="the parquet extra (pyarrow) is not installed")

from records_data import LABELS, make_records  # noqa: E402

import lcie_fast  # noqa: E402
from lcie_fast._optional import MissingDependencyError  # noqa: E402
from lcie_fast.outputs import OutputMismatchError, RecordFields, TagRecord  # noqa: E402
from lcie_fast.outputs.parquet import (  # noqa: E402
    ParquetRecordWriter,
    inspect_parquet_output,
    read_parquet_records,
)

FIELDS = RecordFields(LABELS, all_scores=True, hash_name="md5", dedup=True)
SETTINGS = {"format": "parquet", "model_sha256": "ab" * 32, "labels": list(LABELS), "thresholds": [0.5, 0.4, 0.3],
            "top_k": None, "all_scores": True, "hash": "md5", "dedup": True, "shard": None,
            "inputs": {"specs": ["/data/imgs"], "recursive": True}}


def expected(records: list[TagRecord], fields: RecordFields = FIELDS) -> list[dict]:
    """What any format gives back: the JSON form read back, as JSON data (NaN compares as null)."""
    return [TagRecord.from_json(record.to_json(fields)).to_json(fields) for record in records]


def read_back(target, fields: RecordFields = FIELDS) -> tuple[dict, list[dict]]:
    settings, records = read_parquet_records(target)
    return settings, [record.to_json(fields) for record in records]


def keys(records: list[TagRecord]) -> list[str]:
    return [record.key for record in records]


def write(target, records, *, part_records=4, close=True, append=False, settings=SETTINGS, fields=FIELDS):
    writer = ParquetRecordWriter(target, fields, settings, append=append, part_records=part_records)
    writer.write(records)
    if close:
        writer.close()
    else:
        writer.abort()
    return writer


def snapshot(path) -> dict[str, bytes]:
    """Every file under ``path`` (or the file itself) with its bytes."""
    if os.path.isfile(path):
        return {"": open(path, "rb").read()}
    return {os.path.relpath(os.path.join(folder, name), path): open(os.path.join(folder, name), "rb").read()
            for folder, _, names in os.walk(path) for name in names}


# ------------------------------------------------------------------ schema, metadata, parts
def test_schema_and_key_value_metadata(tmp_path):
    target = tmp_path / "out.parquet"
    write(target, make_records(10))
    assert not (tmp_path / "out.parquet.d").exists(), "the parts folder is removed once merged"
    schema = pq.read_schema(target)
    assert schema.names == ["index", "path", "labels", "scores", "error", "scores_all", "md5", "duplicate_of"]
    types = {name: schema.field(name).type for name in schema.names}
    assert types["index"] == pa.int64() and not schema.field("index").nullable
    assert types["labels"] == pa.list_(pa.string())
    assert types["scores"] == pa.list_(pa.float32()) and types["scores_all"] == pa.list_(pa.float32())
    assert types["path"] == types["error"] == types["md5"] == types["duplicate_of"] == pa.string()
    meta = json.loads(pq.read_metadata(target).metadata[b"lcie_fast"])
    print(meta)
    for field, value in SETTINGS.items():
        assert meta[field] == value, field
    assert meta["version"] == lcie_fast.__version__
    assert meta["complete"] is True
    assert meta["fields"] == {"labels": list(LABELS), "all_scores": True, "hash_name": "md5", "dedup": True}


def test_only_the_optional_columns_asked_for(tmp_path):
    target = tmp_path / "out.parquet"
    fields = RecordFields(LABELS, hash_name="sha256")
    write(target, [TagRecord(0, "a.jpg", [("car", 0.9)], digest=("sha256", "f" * 64))], fields=fields)
    assert pq.read_schema(target).names == ["index", "path", "labels", "scores", "error", "sha256"]
    assert pq.read_table(target).to_pylist() == [{"index": 0, "path": "a.jpg", "labels": ["car"],
                                                  "scores": [pytest.approx(0.9)], "error": None, "sha256": "f" * 64}]


def test_parts_are_flushed_every_n_records(tmp_path):
    target, parts = tmp_path / "out.parquet", tmp_path / "out.parquet.d"
    records = make_records(11)
    writer = ParquetRecordWriter(target, FIELDS, SETTINGS, part_records=4)
    stored = json.loads((parts / "_settings.json").read_text())
    assert stored["kind"] == "lcie-fast tag output" and {field: stored[field] for field in SETTINGS} == SETTINGS
    written = 0
    for start in range(0, 11, 3):
        written += writer.write(records[start:start + 3])
        names = sorted(name for name in os.listdir(parts) if name.startswith("part-"))
        assert names == [f"part-{number:05d}.parquet" for number in range(written // 4)], written
        assert all(pq.read_metadata(parts / name).num_rows == 4 for name in names)
        assert not target.exists()
    writer.close()
    assert not parts.exists()
    merged = pq.ParquetFile(target)
    assert [merged.metadata.row_group(i).num_rows for i in range(merged.num_row_groups)] == [4, 4, 3]
    assert read_back(target)[1] == expected(records)


def test_empty_output_is_a_valid_file(tmp_path):
    target = tmp_path / "out.parquet"
    write(target, [])
    assert pq.read_table(target).num_rows == 0
    settings, records = read_parquet_records(target)
    assert list(records) == [] and settings["complete"] is True


# ------------------------------------------------------------------ crash and resume
def test_crash_part_way_resumes_from_the_whole_parts(tmp_path):
    target = tmp_path / "out.parquet"
    records = make_records(23)
    write(target, records[:14], part_records=4, close=False)  # 3 whole parts, 2 records lost in the buffer
    done = inspect_parquet_output(target, SETTINGS)
    assert done == keys(records[:12])
    write(target, records[len(done):], part_records=4, append=True)
    assert not (tmp_path / "out.parquet.d").exists()
    settings, got = read_back(target)
    assert got == expected(records), "every record exactly once, in order"
    assert settings["complete"] is True


KILLED = """
import os, signal, sys
from lcie_fast.outputs import RecordFields, TagRecord
from lcie_fast.outputs.parquet import ParquetRecordWriter
settings = {"format": "parquet", "model_sha256": "x", "labels": ["car"], "thresholds": [0.5]}
writer = ParquetRecordWriter(sys.argv[1], RecordFields(("car",)), settings, part_records=3)
for index in range(100):
    if index == 10:
        os.kill(os.getpid(), signal.SIGKILL)
    writer.write([TagRecord(index, f"img/{index}.jpg", [("car", index / 100)])])
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_killed_process_resumes(tmp_path):
    target, parts = tmp_path / "out.parquet", tmp_path / "out.parquet.d"
    run = subprocess.run([sys.executable, "-c", KILLED, str(target)], capture_output=True, text=True, timeout=300)
    assert run.returncode == -9, run.stderr
    # a kill inside the next part's write would have left its temporary file: it is not a part
    (parts / ".part-00003.parquet.0123456789ab.tmp").write_bytes(b"PAR1 half a part")
    settings = {"format": "parquet", "model_sha256": "x", "labels": ["car"], "thresholds": [0.5]}
    done = inspect_parquet_output(target, settings)
    assert done == [f"img/{index}.jpg" for index in range(9)]
    fields = RecordFields(("car",))
    records = [TagRecord(index, f"img/{index}.jpg", [("car", index / 100)]) for index in range(20)]
    write(target, records[len(done):], part_records=3, append=True, settings=settings, fields=fields)
    assert not parts.exists(), "the temporary file of the killed run is cleaned up with the parts"
    assert read_back(target, fields)[1] == expected(records, fields)


def test_finished_output_is_left_intact_by_a_rerun(tmp_path):
    target = tmp_path / "out.parquet"
    records = make_records(9)
    write(target, records)
    before = target.read_bytes()
    assert inspect_parquet_output(target, SETTINGS) == keys(records)
    writer = ParquetRecordWriter(target, FIELDS, SETTINGS, append=True, part_records=4)
    assert writer.write([]) == 0
    writer.close()
    assert target.read_bytes() == before
    writer = ParquetRecordWriter(target, FIELDS, SETTINGS, append=True)
    with pytest.raises(OutputMismatchError, match="is finished"):
        writer.write(make_records(10)[9:])
    writer.close()
    assert target.read_bytes() == before


def test_parts_left_beside_a_finished_file_are_cleaned_by_a_rerun(tmp_path):
    """A crash after the merge but before the parts were removed: the finished file wins."""
    target = tmp_path / "out.parquet"
    records = make_records(9)
    write(target, records[:8], part_records=4, close=False)
    stale = snapshot(tmp_path / "out.parquet.d")
    write(target, records, part_records=4)
    os.makedirs(tmp_path / "out.parquet.d")
    for name, data in stale.items():
        (tmp_path / "out.parquet.d" / name).write_bytes(data)
    before = target.read_bytes()
    assert inspect_parquet_output(target, SETTINGS) == keys(records)
    write(target, [], append=True)
    assert target.read_bytes() == before and not (tmp_path / "out.parquet.d").exists()


def test_overwrite_starts_our_output_afresh(tmp_path):
    target = tmp_path / "out.parquet"
    write(target, make_records(9))
    write(target, make_records(6, seed=1), part_records=4, close=False)  # afresh: the old file is gone, parts written
    assert not target.exists()
    assert inspect_parquet_output(target, {**SETTINGS, "thresholds": [0.1, 0.1, 0.1]}, overwrite=True) is None
    assert (tmp_path / "out.parquet.d").exists(), "inspect never modifies the output"
    records = make_records(5, seed=2)
    write(target, records, settings={**SETTINGS, "thresholds": [0.1, 0.1, 0.1]})
    settings, got = read_back(target)
    assert got == expected(records) and settings["thresholds"] == [0.1, 0.1, 0.1]


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("finished", [False, True])
def test_resume_with_other_settings_is_refused_naming_the_field(tmp_path, finished):
    target = tmp_path / "out.parquet"
    write(target, make_records(9), close=finished)
    before = snapshot(target if finished else tmp_path / "out.parquet.d")
    with pytest.raises(OutputMismatchError, match=r"out.parquet was written with another thresholds \(thresholds\[bus\] is 0.4 "
                                                  r"there, 0.45 now\)"):
        inspect_parquet_output(target, {**SETTINGS, "thresholds": [0.5, 0.45, 0.3]})
    with pytest.raises(OutputMismatchError, match="was written with another model_sha256"):
        inspect_parquet_output(target, {**SETTINGS, "model_sha256": "cd" * 32})
    with pytest.raises(OutputMismatchError, match="holds records for other inputs"):
        inspect_parquet_output(target, {**SETTINGS, "inputs": {"specs": ["/elsewhere"], "recursive": True}})
    with pytest.raises(OutputMismatchError, match="was written with another labels"):  # known only once the model loaded
        ParquetRecordWriter(target, FIELDS, {**SETTINGS, "labels": ["car", "bus", "truck"]}, append=True)
    assert snapshot(target if finished else tmp_path / "out.parquet.d") == before


def _parquet_of_someone_else(path):
    pq.write_table(pa.table({"index": [1, 2], "path": ["a", "b"]}), path)


@pytest.mark.parametrize("what", ["text", "empty-parquet-magic", "other-parquet", "folder"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_what_is_not_ours_is_refused_and_left_intact(tmp_path, what, overwrite):
    target = tmp_path / "out.parquet"
    if what == "text":
        target.write_text("index,path\n1,a\n")
    elif what == "empty-parquet-magic":
        target.write_bytes(b"PAR1PAR1")
    elif what == "other-parquet":
        _parquet_of_someone_else(target)
    else:
        target.mkdir()
        (target / "data.bin").write_bytes(b"x")
    before = snapshot(target)
    message = "is a folder" if what == "folder" else "not an lcie-fast tag output" if what == "other-parquet" else "not a Parquet file"
    with pytest.raises(OutputMismatchError, match=message):
        inspect_parquet_output(target, SETTINGS, overwrite=overwrite)
    with pytest.raises(OutputMismatchError, match=message):
        ParquetRecordWriter(target, FIELDS, SETTINGS, append=not overwrite)
    with pytest.raises(OutputMismatchError, match=message):
        read_parquet_records(target)
    assert snapshot(target) == before
    assert not (tmp_path / "out.parquet.d").exists()


@pytest.mark.parametrize("extra", ["notes.txt", None])
def test_a_parts_folder_that_is_not_ours_is_refused_and_left_intact(tmp_path, extra):
    target, parts = tmp_path / "out.parquet", tmp_path / "out.parquet.d"
    if extra is None:  # our parts, but no settings: cannot be proven ours
        write(target, make_records(9), close=False)
        (parts / "_settings.json").unlink()
        message = "holds no _settings.json"
    else:  # our settings, and a file we do not write
        write(target, make_records(9), close=False)
        (parts / extra).write_text("mine")
        message = "holds notes.txt, which lcie-fast does not write"
    before = snapshot(parts)
    for overwrite in (False, True):
        with pytest.raises(OutputMismatchError, match=message):
            inspect_parquet_output(target, SETTINGS, overwrite=overwrite)
    with pytest.raises(OutputMismatchError, match=message):
        ParquetRecordWriter(target, FIELDS, SETTINGS)
    assert snapshot(parts) == before and not target.exists()


def test_a_missing_part_is_refused(tmp_path):
    target, parts = tmp_path / "out.parquet", tmp_path / "out.parquet.d"
    write(target, make_records(12), part_records=3, close=False)
    (parts / "part-00001.parquet").unlink()
    with pytest.raises(OutputMismatchError, match="part-00001.parquet is missing"):
        inspect_parquet_output(target, SETTINGS)


def test_missing_pyarrow_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'lcie-fast\[parquet\]'"):
        ParquetRecordWriter(tmp_path / "out.parquet", FIELDS, SETTINGS)
    assert not (tmp_path / "out.parquet.d").exists()


def test_part_records_below_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="part_records must be at least 1"):
        ParquetRecordWriter(tmp_path / "out.parquet", FIELDS, SETTINGS, part_records=0)


# ------------------------------------------------------------------ remote storage
@pytest.fixture
def memory_url():
    fsspec = pytest.importorskip("fsspec", reason="the remote extra (fsspec) is not installed")
    bucket = f"lcie-test-{uuid.uuid4().hex}"
    yield f"memory://{bucket}/tags/out.parquet"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{bucket}"):
        fs.rm(f"/{bucket}", recursive=True)


def test_memory_target_uploads_each_part_and_the_merged_file(memory_url, monkeypatch):
    from fsspec.implementations.memory import MemoryFileSystem

    fs = MemoryFileSystem()
    uploads = []
    original = MemoryFileSystem.put_file

    def put_file(self, local, remote, *args, **kwargs):
        assert os.path.isfile(local), "parts are written locally, then uploaded"
        uploads.append(remote.rpartition("/")[2])
        return original(self, local, remote, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "put_file", put_file)
    path = memory_url.removeprefix("memory:/")
    records = make_records(8)
    writer = ParquetRecordWriter(memory_url, FIELDS, SETTINGS, part_records=3)
    writer.write(records[:4])
    assert fs.exists(f"{path}.d/part-00000.parquet") and not fs.exists(f"{path}.d/part-00001.parquet")
    writer.write(records[4:7])
    writer.abort()  # a preempted machine: the parts uploaded so far are the resume state
    assert uploads == ["_settings.json", "part-00000.parquet", "part-00001.parquet"]
    done = inspect_parquet_output(memory_url, SETTINGS)
    assert done == keys(records[:6])
    write(memory_url, records[len(done):], part_records=3, append=True)
    assert uploads[3:] == ["part-00002.parquet", "out.parquet"], "the merged file is one upload"
    assert fs.exists(path) and not fs.exists(f"{path}.d")
    settings, got = read_back(memory_url)
    assert got == expected(records) and settings["complete"] is True
    with fs.open(path, "rb") as handle:
        assert json.loads(pq.read_metadata(handle).metadata[b"lcie_fast"])["model_sha256"] == SETTINGS["model_sha256"]


def test_memory_target_refuses_what_is_not_ours(memory_url):
    from fsspec.implementations.memory import MemoryFileSystem

    fs = MemoryFileSystem()
    path = memory_url.removeprefix("memory:/")
    fs.pipe_file(path, b"not parquet at all")
    with pytest.raises(OutputMismatchError, match="not a Parquet file"):
        ParquetRecordWriter(memory_url, FIELDS, SETTINGS)
    assert fs.cat_file(path) == b"not parquet at all"


def test_file_url_target_is_written_in_place(tmp_path):
    pytest.importorskip("fsspec", reason="the remote extra (fsspec) is not installed")
    records = make_records(5)
    write(f"file://{tmp_path}/out.parquet", records, part_records=2)
    assert read_back(tmp_path / "out.parquet")[1] == expected(records)


# ------------------------------------------------------------------ round trip
def test_round_trip_keeps_every_field(tmp_path):
    target = tmp_path / "out.parquet"
    records = make_records(40)
    write(target, records, part_records=7)
    settings, got = read_parquet_records(target)
    got = list(got)
    assert [record.to_json(FIELDS) for record in got] == expected(records)
    by_index = {record.index: record for record in got}
    assert by_index[1].error == "non-finite scores from the model" and math.isnan(by_index[1].scores["bus"])
    assert by_index[2].error == "non-finite scores from the model" and all(math.isfinite(s) for _, s in by_index[2].labels)
    assert by_index[4].scores is None and by_index[4].labels == [] and by_index[4].error == "corrupt image: truncated"
    assert by_index[3].path is None and by_index[3].key == "#3"
    assert by_index[2].duplicate_of == "imgs/ü,0000.jpg" and by_index[5].duplicate_of is None
    assert by_index[5].digest == ("md5", hashlib.md5(bytes([5])).hexdigest())
    # records without NaN (which equals nothing) come back equal as records, not only as JSON
    clean = [record for record in got if not any(math.isnan(score) for score in (record.scores or {}).values())]
    assert len(clean) > 30
    assert all(record == TagRecord.from_json(records[record.index].to_json(FIELDS)) for record in clean)


def test_file_names_that_are_not_utf8_do_not_stop_the_run(tmp_path):
    target = tmp_path / "out.parquet"
    name = os.fsdecode(b"imgs/caf\xe9.jpg")  # latin-1 bytes: a lone surrogate in Python
    records = [TagRecord(0, "imgs/ok.jpg", [("car", 0.5)]), TagRecord(1, name, [], error=f"{name}: corrupt image")]
    write(target, records)
    got = list(read_parquet_records(target)[1])
    assert [record.path for record in got] == ["imgs/ok.jpg", "imgs/caf\\udce9.jpg"]
    assert got[1].error == "imgs/caf\\udce9.jpg: corrupt image"
