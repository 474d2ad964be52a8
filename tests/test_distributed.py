"""Distributed tagging on Ray Data (issue 14): the records of ``tag_dataset`` + ``read_ray_output`` are those
of ``Tagger.tag``; a run killed part-way resumes without losing or repeating a row; the GPU request path
runs with a logical GPU; reruns over other inputs are refused.

One Ray cluster (two logical CPUs, one logical GPU, loopback only) serves the whole file. The inputs
mix what real datasets hold: JPEG, PNG, WebP, an EXIF-rotated photo, a corrupt and a truncated file,
a file name that is not UTF-8, a list with a missing file, and a WebDataset shard with a sample
without an image.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lcie_fast._optional import MissingDependencyError, install_hint
from lcie_fast.distributed import DistributedTagError, read_ray_output, shared_storage_problem, tag_dataset
from lcie_fast.distributed.layout import Part, Store, check_row_ids, source_from_spec, source_spec
from lcie_fast.errors import InvalidInputError
from lcie_fast.inputs import ListedPath, expand_inputs
from lcie_fast.outputs import OutputMismatchError
from lcie_fast.outputs.records import error_kind
from lcie_fast.remote import RemotePath
from lcie_fast.tagger import Tagger
from lcie_fast.webdataset import FailedInput, TarMember

pytestmark = pytest.mark.ray

SCORE_TOLERANCE = 1e-5  # parts hold scores rounded to 5 decimals, as every output format does


@pytest.fixture(scope="session")
def ray_cluster():
    """One Ray for the whole test run: 2 CPUs, 1 logical GPU, the dashboard off, loopback only."""
    ray = pytest.importorskip("ray", reason="needs Ray Data: pip install 'lcie-fast[ray]'")
    ray.init(num_cpus=2, num_gpus=1, object_store_memory=150 * 2**20, include_dashboard=False,
             _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


def _encoded(seed: int, fmt: str, size: tuple[int, int] = (48, 36), **options) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> list[str]:
    """40 inputs: a folder (35 files, 2 of them bad), a list (one missing file), a shard (3 samples, one without an image)."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "images"
    folder.mkdir()
    for i in range(25):
        (folder / f"{i:03d}.jpg").write_bytes(_encoded(i, "JPEG", (40 + i, 36)))
    for i in range(25, 29):
        (folder / f"{i:03d}.png").write_bytes(_encoded(i, "PNG"))
    for i in range(29, 31):
        (folder / f"{i:03d}.webp").write_bytes(_encoded(i, "WEBP"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees on display
    (folder / "rotated.jpg").write_bytes(_encoded(31, "JPEG", (64, 24), exif=exif.tobytes()))
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (folder / "truncated.jpg").write_bytes(_encoded(32, "JPEG")[:200])
    (folder / os.fsdecode(b"caf\xe9.png")).write_bytes(_encoded(33, "PNG"))  # a name that is not UTF-8
    (root / "list.txt").write_text(f"{folder / '000.jpg'}\n{root / 'missing.jpg'}\n")
    with tarfile.open(root / "shard.tar", "w") as tar:
        for name, data in [("a.jpg", _encoded(40, "JPEG")), ("b.png", _encoded(41, "PNG")), ("c.txt", b"no image")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    inputs = [str(folder), f"@{root / 'list.txt'}", str(root / "shard.tar")]
    assert len(list(expand_inputs(inputs))) == 40
    return inputs


@pytest.fixture(scope="module")
def local_records(tiny5_checkpoint, dataset):
    return list(Tagger.load(tiny5_checkpoint, device="cpu").tag(dataset, batch_size=8, all_scores=True,
                                                                 hash_name="sha256"))


def _as_parquet_holds(text: str | None) -> str | None:
    """A string as every Parquet output holds it (the local writer too): lone surrogates of names that
    are not UTF-8 written as ``\\udcXX`` escapes."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _assert_same_records(ray_records, local, *, all_scores: bool, hashed: bool, parquet: bool) -> None:
    assert [r.index for r in ray_records] == list(range(len(local)))
    worst = 0.0
    for ours, theirs in zip(ray_records, local):
        expected = (theirs.path, theirs.error)
        if parquet:
            expected = tuple(map(_as_parquet_holds, expected))
        assert (ours.path, ours.error) == expected
        assert [name for name, _ in ours.labels] == [name for name, _ in theirs.labels], ours.path
        worst = max([worst] + [abs(a - b) for (_, a), (_, b) in zip(ours.labels, theirs.labels)])
        if all_scores:
            assert (ours.scores is None) == (theirs.error is not None)
            if ours.scores is not None:
                worst = max([worst] + [abs(ours.scores[k] - theirs.scores[k]) for k in theirs.scores])
        assert ours.digest == (theirs.digest if hashed else None)
    print(f"largest score difference: {worst:.2e}")
    assert worst <= SCORE_TOLERANCE


@pytest.mark.parametrize("fmt, decode, gpus", [("parquet", "tasks", 0), ("jsonl", "actor", 1)])
def test_records_equal_local_tagging(ray_cluster, tiny5_checkpoint, dataset, local_records, tmp_path, fmt, decode, gpus):
    """Both formats, both decode modes; the jsonl run asks for one (logical) GPU per actor, with a CPU backend."""
    out = tmp_path / "out"
    extras = {"all_scores": True, "hash_name": "sha256"} if fmt == "parquet" else {}
    stats = tag_dataset(dataset, tiny5_checkpoint, out, format=fmt, decode=decode, batch_size=8, rows_per_file=8,
                        gpus_per_worker=gpus, progress=False, **extras)
    errors = [error_kind(record.error) for record in local_records if record.error]
    assert len(errors) == 4  # corrupt, truncated, the listed file that is missing, the sample without an image
    assert stats["inputs"] == stats["this_run"] == 40 and stats["resumed"] == 0
    assert stats["tagged"] == 40 - len(errors) and stats["errors"] == len(errors)
    assert stats["errors_by_kind"] == {kind: errors.count(kind) for kind in set(errors)}
    assert stats["gpus_per_worker"] == gpus and stats["backends"] and "(cpu)" in stats["backends"][0]
    assert (out / "_SUCCESS").is_file() and not (out / "_checkpoint").exists()
    assert json.loads((out / "stats.json").read_text()) == stats

    settings, records = read_ray_output(out)
    assert settings["complete"] and settings["format"] == fmt and settings["labels"] == ["bus", "car", "motorbike",
                                                                                          "person", "truck"]
    _assert_same_records(list(records), local_records, all_scores=fmt == "parquet", hashed=fmt == "parquet",
                         parquet=fmt == "parquet")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        part = next((out / "parts").glob("*.parquet"))
        metadata = json.loads(pq.read_metadata(part).metadata[b"lcie_fast"])
        assert metadata["model_sha256"] == settings["model_sha256"] and metadata["preset"] == "lcie_tiny"
        assert pq.read_schema(part).names[:6] == ["row_id", "index", "path", "labels", "scores", "error"]

    # the same run again: complete, nothing to do; other inputs: refused, the output untouched
    assert tag_dataset(dataset, tiny5_checkpoint, out, format=fmt, decode=decode, batch_size=8, progress=False,
                       gpus_per_worker=gpus, **extras) == stats
    with pytest.raises(OutputMismatchError, match="other inputs"):
        tag_dataset(dataset[:1], tiny5_checkpoint, out, format=fmt, progress=False, **extras)
    with pytest.raises(OutputMismatchError, match="another top_k"):
        tag_dataset(dataset, tiny5_checkpoint, out, format=fmt, top_k=1, progress=False, **extras)
    assert (out / "_SUCCESS").is_file() and len(list(read_ray_output(out)[1])) == 40


@pytest.mark.slow
def test_a_killed_run_resumes_without_losing_or_repeating_a_row(ray_cluster, tiny5_checkpoint, dataset,
                                                                 local_records, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("LCIE_FAST_TEST_FAIL_AFTER", "16")
    with pytest.raises(DistributedTagError, match="LCIE_FAST_TEST_FAIL_AFTER=16") as failed:
        tag_dataset(dataset, tiny5_checkpoint, out, batch_size=8, rows_per_file=8, progress=False)
    assert "rerun" in str(failed.value) and not (out / "_SUCCESS").exists()
    with pytest.raises(InvalidInputError, match="_SUCCESS"):
        read_ray_output(out)
    _, partial = read_ray_output(out, partial=True)
    written = [record.index for record in partial]
    assert 0 < len(written) < 40 and written == sorted(set(written))

    stats = tag_dataset(dataset, tiny5_checkpoint, out, batch_size=8, rows_per_file=8, progress=False)  # marker: no failure
    assert stats["inputs"] == 40 and 0 < stats["this_run"] < 40 and stats["resumed"] == 40 - stats["this_run"]
    assert stats["resumed"] >= len(written) - 8  # what was committed before the failure was not tagged again
    _, records = read_ray_output(out)
    _assert_same_records(list(records), local_records, all_scores=False, hashed=False, parquet=True)
    assert not (out / "_test_failed_once").exists() and not (out / "_checkpoint").exists()


def test_refusals_before_anything_runs(ray_cluster, tiny5_checkpoint, dataset, tmp_path):
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputMismatchError, match="notes.txt"):
        tag_dataset(dataset, tiny5_checkpoint, tmp_path / "theirs", overwrite=True, progress=False)
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "keep me"
    with pytest.raises(InvalidInputError, match="in-memory"):
        tag_dataset([np.zeros((8, 8, 3), np.uint8)], tiny5_checkpoint, tmp_path / "out", progress=False)
    for bad in ({"workers": (3, 2)}, {"decode": "gpu"}, {"format": "csv"}, {"batch_size": 0}):
        with pytest.raises(InvalidInputError):
            tag_dataset(dataset, tiny5_checkpoint, tmp_path / "out2", progress=False, **bad)
    with pytest.raises(Exception, match="GPUs"):
        tag_dataset(dataset, tiny5_checkpoint, tmp_path / "out3", gpus_per_worker=1, workers=2, progress=False)


def test_a_missing_ray_names_the_extra(tiny5_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if not installed
    with pytest.raises(MissingDependencyError, match="Distributed tagging") as missing:
        tag_dataset([], tiny5_checkpoint, tmp_path / "out")
    assert install_hint("ray") in str(missing.value) and not (tmp_path / "out").exists()


def test_sources_survive_the_trip_through_parquet():
    """What workers rebuild from _inputs.parquet is what the driver expanded, attributes and odd names included."""
    odd = os.fsdecode(b"/data/caf\xe9#1.jpg")
    sources = [odd, ListedPath("/a.jpg", "list.txt line 3"), RemotePath("s3://b/x.jpg", None),
               TarMember(odd + ".tar", "k#2", "k#2.jpg", 1536, 99), FailedInput("/s.tar#c", "no image member")]
    for position, source in enumerate(sources):
        path, spec = source_spec(source, position)
        path.encode("utf-8")  # a Parquet string
        rebuilt = source_from_spec(path, spec)
        assert type(rebuilt) is type(source) and str(rebuilt) == str(source)
        assert getattr(rebuilt, "__dict__", None) == getattr(source, "__dict__", None)
    assert source_spec("/plain.jpg", 0) == ("/plain.jpg", None)


def test_row_ids_are_checked_exactly_once():
    parts = [Part("a", np.array([0, 2])), Part("b", np.array([1, 3]))]
    assert check_row_ids(parts, 4, "out") == 4
    with pytest.raises(OutputMismatchError, match=r"row_id 2 is in the parts 2 times \(a, c\)"):
        check_row_ids(parts + [Part("c", np.array([2]))], 4, "out")
    with pytest.raises(OutputMismatchError, match="row_id 4 first"):
        check_row_ids(parts, 5, "out")
    assert check_row_ids(parts, 5, "out", partial=True) == 4


def test_a_local_output_is_refused_on_a_cluster(tmp_path):
    local = shared_storage_problem(Store(tmp_path / "out"), nodes=3)
    assert "3 nodes" in local and "file://" in local
    assert shared_storage_problem(Store(tmp_path / "out"), nodes=1) is None
    assert shared_storage_problem(Store(Path(tmp_path / "out").as_uri()), nodes=3) is None


def test_cli_ray_then_tag_merge_gives_the_local_records(ray_cluster, tiny5_checkpoint, dataset, tmp_path, capsys):
    """`lcie-fast tag --ray` + `tag-merge OUT_DIR` = `lcie-fast tag` (labels, errors; scores within 1e-5)."""
    from lcie_fast.cli import main
    from lcie_fast.outputs.merge import read_output

    out, merged, local = tmp_path / "out", tmp_path / "merged.jsonl", tmp_path / "local.jsonl"
    assert main(["tag", str(tiny5_checkpoint), *dataset, "-o", str(out), "--ray", "--format", "jsonl",
                 "--batch-size", "8", "--no-progress"]) == 0
    assert main(["tag-merge", str(out), "-o", str(merged)]) == 0
    assert main(["tag", str(tiny5_checkpoint), *dataset, "-o", str(local), "--no-progress"]) == 0
    ours, theirs = list(read_output(str(merged))[1]), list(read_output(str(local))[1])
    assert [(r.index, r.path, r.error, [n for n, _ in r.labels]) for r in ours] == [
        (r.index, r.path, r.error, [n for n, _ in r.labels]) for r in theirs]
    assert all(abs(a[1] - b[1]) <= SCORE_TOLERANCE for x, y in zip(ours, theirs) for a, b in zip(x.labels, y.labels))
    assert json.loads((tmp_path / "merged.jsonl.meta.json").read_text())["complete"] is True
    assert main(["tag", str(tiny5_checkpoint), *dataset, "-o", str(tmp_path / "x"), "--ray", "--shard", "0/2"]) == 1
    assert "does not apply with --ray" in capsys.readouterr().err
