"""Hostile outputs (issue 11): files that are not tag outputs, resumes under other settings, stdin
resumes, non-UTF-8 names, non-finite scores, unwritable outputs, file modes, out-of-range flags.

The CLI runs in this process (``lcie_fast.cli.main``): torch is imported once and each run loads
the tiny model in a fraction of a second.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from lcie_fast import create_model
from lcie_fast.cli import build_parser, main
from lcie_fast.data.synthetic import make_synthetic_set
from lcie_fast.models.checkpoint import save_checkpoint
from lcie_fast.outputs import RecordFields, RecordWriter, TagRecord

LABELS = ["bus", "car", "motorbike", "person", "truck"]


@pytest.fixture(scope="module")
def checkpoint(tiny5_checkpoint):
    return tiny5_checkpoint


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "other.pt", create_model("lcie_tiny", num_classes=5),
                           label_names=LABELS)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = make_synthetic_set(tmp_path_factory.mktemp("images"), splits={"set": 12}, size=32)
    return root / "set" / "images"


def _files(folder):
    return sorted(str(p) for p in folder.glob("*.jpg"))


def _tag(capsys, *args, stdin=None):
    """(exit status, stdout, stderr) of ``lcie-fast tag ...`` run in this process."""
    capsys.readouterr()
    saved = sys.stdin
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        status = main(["tag", *map(str, args), "--no-progress"])
    finally:
        sys.stdin = saved
    out, err = capsys.readouterr()
    return status, out, err


def _strict_json(line):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")
    return json.loads(line, parse_constant=refuse)


# ------------------------------------------------------------------ item 1: never touch other files
@pytest.mark.parametrize("content", [b"a\nb", b"a\n", b"no newline at all", b"PK\x03\x04\x00binary", "checkpoint"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_file_that_is_not_a_tag_output_is_never_touched(checkpoint, folder, tmp_path, capsys, content, overwrite):
    target = tmp_path / "n.txt"
    data = checkpoint.read_bytes() if content == "checkpoint" else content
    target.write_bytes(data)
    status, _, err = _tag(capsys, checkpoint, folder, "-o", target, *(["--overwrite"] if overwrite else []))
    assert status == 1 and "is not an lcie-fast" in err and str(target) in err, err
    assert target.read_bytes() == data
    assert not Path(f"{target}.meta.json").exists()


def test_tag_video_refuses_to_replace_a_file_that_is_not_its_output(checkpoint, tmp_path, capsys):
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"a": 1}\n')
    capsys.readouterr()
    status = main(["tag-video", str(checkpoint), str(tmp_path / "clip.mp4"), "-o", str(notes)])
    assert status == 1 and "not an lcie-fast output" in capsys.readouterr().err
    assert notes.read_text() == '{"a": 1}\n'


def test_empty_and_older_tag_outputs(checkpoint, folder, tmp_path, capsys):
    out = tmp_path / "tags.jsonl"
    out.write_bytes(b"")
    assert _tag(capsys, checkpoint, folder, "-o", out)[0] == 0
    assert len(out.read_text().splitlines()) == 12
    # a tag output without its sidecar cannot be proven compatible: refused, unless started afresh
    Path(f"{out}.meta.json").unlink()
    before = out.read_bytes()
    status, _, err = _tag(capsys, checkpoint, folder, "-o", out)
    assert status == 1 and "has no settings file" in err and out.read_bytes() == before
    assert _tag(capsys, checkpoint, folder, "-o", out, "--overwrite", "--top-k", "1")[0] == 0
    assert all(len(json.loads(line)["labels"]) <= 1 for line in out.read_text().splitlines())


# ------------------------------------------------------------------ item 2: settings sidecar, stdin
def test_resume_refuses_other_settings_and_names_the_field(checkpoint, other_checkpoint, folder, tmp_path, capsys):
    out = tmp_path / "tags.jsonl"
    assert _tag(capsys, checkpoint, folder, "-o", out, "--threshold", "0.3")[0] == 0
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    assert meta["labels"] == LABELS and meta["thresholds"] == pytest.approx([0.3] * 5) and meta["top_k"] is None
    assert len(meta["model_sha256"]) == 64 and meta["format"] == "jsonl" and meta["all_scores"] is False
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:4]) + lines[4][:15])  # an interrupted run
    interrupted = out.read_bytes()
    cases = [
        ((other_checkpoint, folder, "--threshold", "0.3"), "model_sha256"),
        ((checkpoint, folder, "--threshold", "0.4"), "thresholds"),
        ((checkpoint, folder), "thresholds"),  # the default 0.5
        ((checkpoint, folder, "--threshold", "0.3", "--top-k", "2"), "top_k"),
        ((checkpoint, folder, "--threshold", "0.3", "--all-scores"), "all_scores"),
        ((checkpoint, *_files(folder), "--threshold", "0.3"), "inputs"),  # the same files, given another way
        ((checkpoint, folder, "--threshold", "0.3", "--format", "csv"), "format"),
    ]
    for args, field in cases:
        status, _, err = _tag(capsys, *args, "-o", out)
        expected = "holds records for other inputs" if field == "inputs" else f"another {field}"
        assert status == 1 and expected in err and str(out) in err, (field, err)
        assert out.read_bytes() == interrupted
    status, _, err = _tag(capsys, checkpoint, folder, "-o", out, "--threshold", "0.3")
    assert status == 0 and "4 records already there" in err, err
    assert out.read_text() == "".join(lines)


def test_resume_from_stdin_with_more_inputs_loses_none(checkpoint, folder, tmp_path, capsys):
    files = _files(folder)
    out = tmp_path / "tags.jsonl"
    assert _tag(capsys, checkpoint, "-", "-o", out, stdin="\n".join(files[:5]) + "\n")[0] == 0
    status, _, err = _tag(capsys, checkpoint, "-", "-o", out, stdin="\n".join(files) + "\n")
    assert status == 0 and "5 records already there" in err
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == files
    # fewer inputs than records: the output holds records of other inputs
    status, _, err = _tag(capsys, checkpoint, "-", "-o", out, stdin="\n".join(files[:3]) + "\n")
    assert status == 1 and "the inputs give only 3" in err


# ------------------------------------------------------------------ item 3: names that are not UTF-8
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_non_utf8_file_names_are_written_and_resumed(checkpoint, folder, tmp_path, capsys, fmt):
    odd = tmp_path / "odd"
    odd.mkdir()
    names = [b"caf\xe9.jpg", b"plain.jpg", b"\xff\xfe.jpg"]
    for name in names:
        try:
            shutil.copy(_files(folder)[0], os.path.join(os.fsencode(odd), name))
        except OSError as err:
            pytest.skip(f"this file system refuses names that are not UTF-8: {err}")
    out, full = tmp_path / f"tags.{fmt}", tmp_path / f"full.{fmt}"
    status, _, err = _tag(capsys, checkpoint, odd, "-o", full)
    assert status == 0, err
    data = full.read_bytes()
    if fmt == "csv":  # the original bytes, exactly
        rows = list(csv.reader(io.StringIO(data.decode("utf-8", "surrogateescape"))))
        assert sorted(os.fsencode(row[1]) for row in rows[1:]) == sorted(os.fsencode(odd) + b"/" + n for n in names)
    else:  # escaped: every line is ASCII JSON
        assert all(_strict_json(line)["error"] is None for line in data.decode("ascii").splitlines())
    # an interrupted run resumes after its complete records
    cut = data.index(b"\n", data.index(b"\n") + 1) + 5
    out.write_bytes(data[:cut])
    shutil.copy(f"{full}.meta.json", f"{out}.meta.json")
    status, _, err = _tag(capsys, checkpoint, odd, "-o", out)
    assert status == 0 and "records already there" in err, err
    assert out.read_bytes() == data


# ------------------------------------------------------------------ item 4: non-finite scores
def test_non_finite_scores_are_written_as_strict_json(tmp_path):
    nan, inf = float("nan"), float("inf")
    records = [TagRecord(0, "a.jpg", [("car", inf)], scores={"bus": nan, "car": inf, "person": 0.25}),
               TagRecord(1, "b.jpg", [("car", 0.75)], scores={"bus": 0.5, "car": 0.75, "person": 0.25})]
    for fmt in ("jsonl", "csv"):
        writer = RecordWriter(tmp_path / f"out.{fmt}", fmt, fields=RecordFields(("bus", "car", "person"), all_scores=True))
        writer.write(records)
        writer.close()
    lines = [_strict_json(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert lines[0]["scores_all"] == {"bus": None, "car": None, "person": 0.25} and lines[0]["labels"] == []
    assert "non-finite" in lines[0]["error"] and lines[1]["error"] is None
    assert lines[1]["labels"] == [{"label": "car", "score": 0.75}]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text())))
    assert _strict_json(rows[0]["scores_all"])["bus"] is None and "non-finite" in rows[0]["error"]
    assert rows[0]["labels"] == "" and rows[1]["labels"] == "car:0.75000" and rows[1]["error"] == ""
    assert not any(math.isnan(v) for v in records[1].scores.values())


# ------------------------------------------------------------------ item 5: outputs that cannot be written
def test_an_output_on_a_full_device_names_it_and_the_reason(checkpoint, folder, capsys):
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux)")
    status, _, err = _tag(capsys, checkpoint, folder, "-o", "/dev/full")
    assert status == 1 and "/dev/full" in err and "No space left on device" in err, err
    assert "Traceback" not in err


def test_an_output_under_a_file_names_it_and_the_reason(checkpoint, folder, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "sub" / "tags.jsonl"
    status, _, err = _tag(capsys, checkpoint, folder, "-o", target)
    assert status == 1 and str(target) in err and ("Not a directory" in err or "File exists" in err), err


@pytest.mark.parametrize("mode", [0o555, 0o000])
def test_an_output_in_a_read_only_or_forbidden_folder(checkpoint, folder, tmp_path, capsys, mode):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod does not deny root")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(mode)
    try:
        status, _, err = _tag(capsys, checkpoint, folder, "-o", locked / "tags.jsonl")
    finally:
        locked.chmod(0o755)
    assert status == 1 and str(locked / "tags.jsonl") in err and "Permission denied" in err, err


def test_an_output_in_a_folder_even_root_cannot_write_names_the_reason(checkpoint, folder, capsys):
    """/sys refuses new files to root as well: the permission path runs wherever the tests run."""
    if not Path("/sys").is_dir():
        pytest.skip("no /sys on this system")
    target = Path("/sys") / "lcie_fast_tags.jsonl"
    status, _, err = _tag(capsys, checkpoint, folder, "-o", target)
    assert status == 1 and str(target) in err and "Permission denied" in err and "Traceback" not in err, err


# ------------------------------------------------------------------ item 6: file modes
def test_outputs_and_their_sidecar_get_the_umask_mode(checkpoint, folder, tmp_path, capsys):
    umask = os.umask(0o022)
    try:
        out = tmp_path / "tags.csv"
        assert _tag(capsys, checkpoint, folder, "-o", out)[0] == 0
    finally:
        os.umask(umask)
    assert (out.stat().st_mode & 0o777, Path(f"{out}.meta.json").stat().st_mode & 0o777) == (0o644, 0o644)


# ------------------------------------------------------------------ item 7: flags checked before loading
BAD_FLAGS = [
    ("tag", "--threshold", "2"), ("tag", "--threshold", "nan"), ("tag", "--threshold", "-0.1"),
    ("tag", "--threshold", "inf"), ("tag", "--top-k", "0"), ("tag", "--max-pixels", "-5"),
    ("tag", "--batch-size", "-1"), ("tag", "--batch-size", "0"), ("tag", "--workers", "0"),
    ("tag-video", "--every", "0"), ("tag-video", "--fps", "0"),
    ("tag-video", "--fps", "nan"), ("tag-video", "--ema", "0"), ("tag-video", "--ema", "1.5"),
    ("tag-video", "--min-segment", "-1"), ("tag-video", "--threshold", "nan"), ("tag-video", "--batch-size", "0"),
]


@pytest.mark.parametrize("command,flag,value", BAD_FLAGS)
def test_out_of_range_flags_are_refused_before_the_model_loads(tmp_path, capsys, command, flag, value):
    # the model does not exist: a flag checked only after loading would fail with "model not found"
    with pytest.raises(SystemExit) as exit_info:
        main([command, str(tmp_path / "missing.pt"), "in.jpg", flag, value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"argument {flag}" in err and "model not found" not in err, err


def test_in_range_flags_are_accepted():
    args = build_parser().parse_args(["tag", "m.pt", "x.jpg", "--threshold", "0", "--top-k", "1", "--batch-size", "1",
                                      "--workers", "1", "--max-pixels", "1"])
    assert (args.threshold, args.top_k, args.batch_size, args.workers, args.max_pixels) == (0.0, 1, 1, 1, 1)
    args = build_parser().parse_args(["tag-video", "m.pt", "v.mp4", "--fps", "0.5", "--ema", "1", "--min-segment", "0",
                                      "--threshold", "1"])
    assert (args.fps, args.ema, args.min_segment, args.threshold) == (0.5, 1.0, 0.0, 1.0)
