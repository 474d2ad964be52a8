"""Reading outputs back and merging shards (issue 13, item 7): 3 shards (indices i mod 3) written
in JSONL, CSV and Parquet merge into identical records in index order, in every output format;
a missing shard, an unfinished one, an index twice, a gap, other settings are refused by name.
"""

from __future__ import annotations

import json

import pytest

from lcie_fast.errors import InputNotFoundError, InvalidInputError
from lcie_fast.outputs import OutputMismatchError, RecordFields, RecordWriter, TagRecord, mark_complete, read_settings
from lcie_fast.outputs.merge import merge_outputs, read_output

pytest.importorskip("pyarrow", reason="the parquet extra (pyarrow) is not installed")
from records_data import LABELS, make_records  # noqa: E402

from lcie_fast.outputs.parquet import ParquetRecordWriter  # noqa: E402

FIELDS = RecordFields(LABELS, all_scores=True, hash_name="md5", dedup=True)
SETTINGS = {"model_sha256": "ab" * 32, "labels": list(LABELS), "thresholds": [0.5, 0.4, 0.3], "top_k": None,
            "all_scores": True, "hash": "md5", "dedup": True, "postprocess": {"exclude": []},
            "inputs": {"specs": ["/data/imgs"], "recursive": True}}
FORMATS = ("jsonl", "csv", "parquet")


def expected(records: list[TagRecord]) -> list[dict]:
    return [TagRecord.from_json(record.to_json(FIELDS)).to_json(FIELDS) for record in records]


def write_shard(path, records, shard, *, settings=None, complete=True, part_records=4):
    """One shard's output as ``lcie-fast tag --shard i/n`` leaves it (complete, or stopped part-way)."""
    fmt = str(path).rpartition(".")[2]
    settings = {**(settings or SETTINGS), "format": fmt, "shard": list(shard)}
    if fmt == "parquet":
        writer = ParquetRecordWriter(path, FIELDS, settings, part_records=part_records)
        writer.write(records)
        if complete:
            writer.close()
        else:
            writer.abort()  # the run stopped: its whole parts stay
    else:
        writer = RecordWriter(path, fmt, settings=settings, fields=FIELDS)
        writer.write(records)
        writer.close()
        if complete:
            mark_complete(path)
    return str(path)


def three_shards(folder, fmt, records, **kwargs):
    return [write_shard(folder / f"tags-{i:05d}-of-00003.{fmt}", [r for r in records if r.index % 3 == i], (i, 3), **kwargs)
            for i in range(3)]


@pytest.mark.parametrize("in_fmt", FORMATS)
def test_three_shards_merge_into_the_same_records_in_every_format(tmp_path, in_fmt):
    records = make_records(20)
    shards = three_shards(tmp_path, in_fmt, records)
    for path in shards:  # each shard reads back as written
        settings, got = read_output(path)
        shard = settings["shard"]
        assert [r.to_json(FIELDS) for r in got] == expected([r for r in records if r.index % 3 == shard[0]])
    for out_fmt in FORMATS:
        output = tmp_path / f"merged.{out_fmt}"
        summary = merge_outputs(list(reversed(shards)), str(output))
        assert summary["records"] == 20 and summary["shards"] == 3 and summary["gaps"] == 0 and summary["complete"]
        settings, got = read_output(output)
        got = list(got)
        assert [record.index for record in got] == list(range(20))
        assert [record.to_json(FIELDS) for record in got] == expected(records), (in_fmt, out_fmt)
        assert settings["shard"] is None and settings["complete"] is True and settings["format"] == out_fmt
        assert {field: settings[field] for field in SETTINGS} == SETTINGS


def test_csv_is_read_with_labels_holding_colons_and_empty_cells(tmp_path):
    path = tmp_path / "out.csv"
    records = [TagRecord(0, "a.jpg", [("b:c", 0.75), ("car", 0.5)], scores={"car": 0.5, "bus": 0.1, "b:c": 0.75}),
               TagRecord(1, None, [], error="empty file", scores=None, digest=None, duplicate_of=None)]
    write_shard(path, records, (0, 1))
    header = path.read_text(encoding="utf-8").splitlines()[0]
    assert header == "index,path,labels,error,scores_all,md5,duplicate_of"
    got = list(read_output(path)[1])
    assert got[0].labels == [("b:c", 0.75), ("car", 0.5)] and got[0].scores == {"car": 0.5, "bus": 0.1, "b:c": 0.75}
    assert got[1] == TagRecord(1, None, [], error="empty file")


def test_a_line_cut_short_by_a_crash_is_left_out(tmp_path):
    records = make_records(4)
    for fmt in ("jsonl", "csv"):
        path = tmp_path / f"out.{fmt}"
        write_shard(path, records, (0, 1), complete=False)
        with open(path, "ab") as handle:
            handle.write(b'{"index": 4, "pa' if fmt == "jsonl" else b"4,imgs/x.jpg,car:0.5")
        assert [r.to_json(FIELDS) for r in read_output(path)[1]] == expected(records)


def test_unknown_or_missing_outputs_are_named(tmp_path):
    (tmp_path / "tags.txt").write_text("car, bus\n")
    with pytest.raises(InvalidInputError, match="tags.txt: not a tag output by its suffix"):
        read_output(tmp_path / "tags.txt")
    with pytest.raises(InputNotFoundError, match="nope.jsonl"):
        read_output(tmp_path / "nope.jsonl")
    with pytest.raises(InputNotFoundError, match="nope.parquet"):
        read_output(tmp_path / "nope.parquet")
    (tmp_path / "bad.jsonl").write_text('{"index": 0, "path": "a", "labels": [], "error": null}\n[1, 2]\n')
    with pytest.raises(InvalidInputError, match="bad.jsonl: line 2 is not a tag record"):
        list(read_output(tmp_path / "bad.jsonl")[1])


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_missing_shard_is_refused(tmp_path, fmt):
    shards = three_shards(tmp_path, fmt, make_records(12))
    with pytest.raises(InvalidInputError, match=r"1 of 3 shards missing: shard 1 \(-00001-of-00003\)"):
        merge_outputs([shards[0], shards[2]], str(tmp_path / f"merged.{fmt}"))
    with pytest.raises(InvalidInputError, match="shard 2 of 3 is given twice"):
        merge_outputs([*shards, shards[2]], str(tmp_path / "merged.jsonl"))
    assert not (tmp_path / f"merged.{fmt}").exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_unfinished_shard_is_refused_unless_partial(tmp_path, fmt):
    records = make_records(24)
    shards = [write_shard(tmp_path / f"s{i}.{fmt}", [r for r in records if r.index % 3 == i][: 8 if i != 1 else 4], (i, 3),
                          complete=i != 1, part_records=2)
              for i in range(3)]
    output = tmp_path / f"merged.{fmt}"
    with pytest.raises(InvalidInputError, match=rf"s1.{fmt} is not complete .* pass --partial"):
        merge_outputs(shards, str(output))
    assert not output.exists()
    summary = merge_outputs(shards, str(output), partial=True)
    kept = [r for r in records if r.index % 3 != 1 or r.index < 12]
    assert summary["records"] == len(kept) and summary["incomplete"] == [shards[1]]
    assert summary["gaps"] == 4 and summary["first_gap"] == 13 and summary["complete"] is False
    settings, got = read_output(output)
    assert [r.to_json(FIELDS) for r in got] == expected(kept)
    assert settings.get("complete") is not True, "a partial merge with gaps is not marked complete"


def test_an_index_in_two_shards_is_refused_naming_both(tmp_path):
    records = make_records(12)
    shards = three_shards(tmp_path, "jsonl", records)
    write_shard(shards[0], sorted([r for r in records if r.index % 3 == 0] + [records[4]], key=lambda r: r.index), (0, 3))
    with pytest.raises(InvalidInputError, match=r"index 4 is in both .*tags-00000-of-00003.jsonl and .*tags-00001-of-00003.jsonl"):
        merge_outputs(shards, str(tmp_path / "merged.jsonl"))
    assert not (tmp_path / "merged.jsonl").exists()


def test_a_gap_is_refused_unless_partial(tmp_path):
    records = make_records(12)
    shards = three_shards(tmp_path, "csv", [r for r in records if r.index != 5])
    with pytest.raises(InvalidInputError, match=r"index 5 is in no shard \(1 indices missing"):
        merge_outputs(shards, str(tmp_path / "merged.csv"))
    assert merge_outputs(shards, str(tmp_path / "merged.csv"), partial=True)["gaps"] == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_shards_of_other_settings_are_refused_naming_field_and_file(tmp_path, fmt):
    records = make_records(12)
    shards = three_shards(tmp_path, fmt, records)
    write_shard(shards[2], [r for r in records if r.index % 3 == 2], (2, 3),
                settings={**SETTINGS, "thresholds": [0.5, 0.4, 0.35]})
    with pytest.raises(InvalidInputError, match=rf"tags-00002-of-00003.{fmt} was written with another thresholds than "
                                                rf".*tags-00000-of-00003.{fmt} \(thresholds\[b:c\] is 0.35"):
        merge_outputs(shards, str(tmp_path / "merged.parquet"))
    assert not (tmp_path / "merged.parquet").exists()


def test_the_output_must_not_be_an_input_nor_a_foreign_file(tmp_path):
    shards = three_shards(tmp_path, "jsonl", make_records(6))
    before = open(shards[1], "rb").read()
    with pytest.raises(InvalidInputError, match="is one of the inputs"):
        merge_outputs(shards, shards[1])
    assert open(shards[1], "rb").read() == before
    notes = tmp_path / "notes.jsonl"
    notes.write_text("my own notes\n")
    with pytest.raises(OutputMismatchError, match="not an lcie-fast tag output"):
        merge_outputs(shards, str(notes))
    assert notes.read_text() == "my own notes\n"
    with pytest.raises(InvalidInputError, match="format must be one of jsonl, csv, parquet"):
        merge_outputs(shards, str(tmp_path / "merged.txt"))


def test_a_jsonl_output_without_its_settings_cannot_be_merged(tmp_path):
    shards = three_shards(tmp_path, "jsonl", make_records(6))
    (tmp_path / "tags-00001-of-00003.jsonl.meta.json").unlink()
    with pytest.raises(InvalidInputError, match="tags-00001-of-00003.jsonl has no settings file"):
        merge_outputs(shards, str(tmp_path / "merged.jsonl"))


def test_merge_to_memory_parquet(tmp_path):
    fsspec = pytest.importorskip("fsspec", reason="the remote extra (fsspec) is not installed")
    records = make_records(9)
    shards = three_shards(tmp_path, "parquet", records)
    url = f"memory://lcie-merge-{tmp_path.name}/merged.parquet"
    try:
        assert merge_outputs(shards, url)["records"] == 9
        settings, got = read_output(url)
        assert [r.to_json(FIELDS) for r in got] == expected(records) and settings["complete"] is True
    finally:
        fsspec.filesystem("memory").rm(f"/lcie-merge-{tmp_path.name}", recursive=True)


def test_merged_jsonl_sidecar(tmp_path):
    shards = three_shards(tmp_path, "parquet", make_records(6))
    merge_outputs(shards, str(tmp_path / "merged.jsonl"))
    side = read_settings(tmp_path / "merged.jsonl")
    assert side["shard"] is None and side["complete"] is True and side["format"] == "jsonl"
    assert "fields" not in side and "version" not in side
    first = json.loads((tmp_path / "merged.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert list(first) == FIELDS.columns
