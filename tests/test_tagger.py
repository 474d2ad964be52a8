"""Batch tagging: every input kind and output format, order, bad files, resume, frames, video,
per-class thresholds."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lcie_fast import create_model
from lcie_fast.data.synthetic import make_synthetic_set
from lcie_fast.metrics import fit_thresholds
from lcie_fast.models.checkpoint import save_checkpoint
from lcie_fast.tagger import Tagger

LABELS = ["bus", "car", "motorbike", "person", "truck"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("lcie_tiny", num_classes=5)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", model, label_names=LABELS)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """12 good JPEGs in a nested folder, plus a folder of bad and unusual files."""
    root = make_synthetic_set(tmp_path_factory.mktemp("images"), splits={"set": 12}, size=48)
    folder = root / "set" / "images"
    nested = folder / "nested"
    nested.mkdir()
    (folder / "set_0011.jpg").rename(nested / "set_0011.jpg")
    odd = root / "odd"
    odd.mkdir()
    rgb = np.asarray(Image.open(folder / "set_0000.jpg"))
    Image.fromarray(rgb).convert("CMYK").save(odd / "cmyk.jpg")
    Image.fromarray(rgb).convert("L").save(odd / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(odd / "alpha.png")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(odd / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(odd / "rotated.jpg", exif=exif.tobytes())
    (odd / "empty.jpg").write_bytes(b"")
    jpeg = (folder / "set_0001.jpg").read_bytes()
    (odd / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (odd / "notes.jpg").write_text("not an image")
    Image.new("L", (12000, 9000)).save(odd / "huge.png")  # 108 MP: over the 80 MP limit
    return root


def _good(images):
    return sorted(str(p) for p in (images / "set" / "images").rglob("*.jpg"))


def test_load_picks_a_backend_with_a_reason_when_none_fits(checkpoint, tmp_path):
    tagger = Tagger.load(checkpoint)
    assert tagger.backend.name.startswith("eager") and tagger.labels == LABELS
    with pytest.raises(FileNotFoundError, match="model not found"):
        Tagger.load(tmp_path / "nope.pt")
    from lcie_fast.runtime.base import BackendError

    with pytest.raises(BackendError, match="onnxruntime runs .onnx graphs"):
        Tagger.load(checkpoint, backend="onnxruntime")


def test_open_backend_is_the_one_way_to_a_backend(checkpoint):
    """Paths and in-memory models alike; a device that is not here names why."""
    from lcie_fast.metadata import metadata_for
    from lcie_fast.runtime import BackendError, open_backend

    model = create_model("lcie_tiny", num_classes=5)
    backend = open_backend(model, meta=metadata_for(model), fast_ops="ref")
    assert backend.name == "eager" and backend.device == "cpu"
    assert list(open_backend(checkpoint, "eager", "cpu", fast_ops="ref").meta.label_names) == LABELS
    with pytest.raises(BackendError, match="needs its metadata"):
        open_backend(model)
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="no CUDA GPU") as info:
            open_backend(checkpoint, device="cuda")
        assert not str(info.value).rstrip().endswith(":")  # a reason, never an empty one


def test_stats_count_every_input_once_with_many_decoder_threads(checkpoint, images):
    tagger = Tagger.load(checkpoint)
    inputs = _good(images) * 5 + [str(images / "odd" / "notes.jpg")] * 3
    records = list(tagger.tag(inputs, batch_size=7, workers=8))
    assert len(records) == len(inputs)
    assert tagger.stats["images"] == len(inputs) and tagger.stats["errors"] == 3
    assert tagger.stats["decode_s"] > 0 and tagger.stats["model_s"] > 0


def test_folder_glob_list_manifest_and_stdin_give_the_same_records(checkpoint, images, tmp_path):
    tagger = Tagger.load(checkpoint)
    files = _good(images)
    by_folder = list(tagger.tag(images / "set" / "images", batch_size=5, threshold=0.0))
    assert [r.path for r in by_folder] == files  # recursive, sorted, every file once
    by_glob = list(tagger.tag(str(images / "set" / "images" / "**" / "*.jpg"), threshold=0.0))
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(files) + "\n")
    by_list = list(tagger.tag(f"@{listing}", threshold=0.0))
    by_paths = list(tagger.tag(files, threshold=0.0))
    for other in (by_glob, by_list, by_paths):
        assert [r.path for r in other] == files
        for a, b in zip(by_folder, other):
            assert [n for n, _ in a.labels] == [n for n, _ in b.labels]
            assert [s for _, s in a.labels] == pytest.approx([s for _, s in b.labels], abs=1e-5)
    manifest = list(tagger.tag(images / "set" / "labels.csv"))
    assert len(manifest) == 11 + 1  # the CSV names 12 files; the moved one is reported, not dropped
    assert sum(r.error is not None for r in manifest) == 1


def test_in_memory_inputs(checkpoint, images):
    tagger = Tagger.load(checkpoint)
    path = _good(images)[0]
    pil = Image.open(path)
    array = np.asarray(pil.convert("RGB"))
    records = list(tagger.tag([pil, array, torch.from_numpy(array.copy()), torch.from_numpy(array.copy()).permute(2, 0, 1)],
                              all_scores=True))
    assert [r.index for r in records] == [0, 1, 2, 3] and all(r.path is None and r.error is None for r in records)
    reference = list(tagger.tag(path, all_scores=True))[0].scores
    for record in records:
        assert record.scores == pytest.approx(reference, abs=1e-5)
    bad = list(tagger.tag([np.zeros((4, 4), np.float32)]))
    assert "uint8" in bad[0].error


def test_bad_files_in_a_batch_are_each_reported_once_in_order(checkpoint, images):
    tagger = Tagger.load(checkpoint)
    odd = sorted(str(p) for p in (images / "odd").iterdir())
    mixed = [p for pair in zip(_good(images), odd) for p in pair] + [str(images / "missing.jpg")]
    records = list(tagger.tag(mixed, batch_size=4))
    assert [r.path for r in records] == mixed  # nothing lost, nothing duplicated, input order
    errors = {r.path.rsplit("/", 1)[-1]: r.error for r in records if r.error}
    assert set(errors) == {"empty.jpg", "truncated.jpg", "notes.jpg", "huge.png", "missing.jpg"}
    assert "empty file" in errors["empty.jpg"] and "truncated" in errors["truncated.jpg"]
    assert "not an image" in errors["notes.jpg"] and "over the limit" in errors["huge.png"]
    assert "file not found" in errors["missing.jpg"]
    unusual = {r.path.rsplit("/", 1)[-1] for r in records if r.error is None}
    assert {"cmyk.jpg", "gray.png", "alpha.png", "sixteen.png", "rotated.jpg"} <= unusual


def test_top_k_thresholds_and_fitted_thresholds(checkpoint, images, tmp_path):
    tagger = Tagger.load(checkpoint)
    files = _good(images)
    everything = list(tagger.tag(files, threshold=0.0))
    assert all(len(r.labels) == 5 for r in everything)
    assert all([s for _, s in r.labels] == sorted((s for _, s in r.labels), reverse=True) for r in everything)
    assert all(len(r.labels) == 2 for r in tagger.tag(files, threshold=0.0, top_k=2))
    assert all(not r.labels for r in tagger.tag(files, threshold=1.0))
    fitted = tmp_path / "thresholds.json"
    fitted.write_text(json.dumps({"thresholds": {"bus": 0.0, "car": 1.0}}))
    per_class = Tagger.load(checkpoint, thresholds=fitted)
    for record in per_class.tag(files):
        names = [n for n, _ in record.labels]
        assert "bus" in names and "car" not in names
    with pytest.raises(ValueError, match="labels the model does not have"):
        Tagger.load(checkpoint, thresholds={"zebra": 0.3})


def test_fit_thresholds_maximises_f1_per_class():
    scores = np.array([[0.9, 0.2], [0.8, 0.6], [0.4, 0.7], [0.3, 0.1], [0.35, 0.65]])
    targets = np.array([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0]])
    fitted = fit_thresholds(scores, targets, class_names=["a", "b"])
    # class a: best F1 = 1.0 keeping the top 2 (0.9, 0.8)? no: 0.35 is positive too -> top 5 gives
    # tp 3 of 5 predicted; top 2 gives F1 0.8; threshold between 0.35 and 0.3 gives tp 3, 4 predicted: F1 6/7
    assert fitted["f1"]["a"] == pytest.approx(100 * 6 / 7)
    assert 0.3 < fitted["thresholds"]["a"] <= 0.35
    # class b: positives 0.6, 0.7; threshold 0.6 predicts 0.7, 0.65, 0.6 -> F1 0.8; 0.7 -> F1 2/3
    assert fitted["f1"]["b"] == pytest.approx(80.0)
    assert 0.2 < fitted["thresholds"]["b"] <= 0.6
    none = fit_thresholds(scores[:, :1], np.zeros((5, 1)), class_names=["z"])
    assert none["thresholds"] == {"z": 0.5} and none["classes_without_positives"] == ["z"]


def test_tag_frames_numpy_list_and_tensor(checkpoint, images):
    tagger = Tagger.load(checkpoint)
    frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in _good(images)[:3]])
    from_array = tagger.tag_frames(frames, all_scores=True)
    from_list = tagger.tag_frames(list(frames), all_scores=True)
    from_tensor = tagger.tag_frames(torch.from_numpy(frames), all_scores=True)
    from_files = list(tagger.tag(_good(images)[:3], all_scores=True))
    for a, b, c, d in zip(from_array, from_list, from_tensor, from_files):
        assert a.scores == pytest.approx(d.scores, abs=1e-5)
        assert b.scores == pytest.approx(d.scores, abs=1e-5) and c.scores == pytest.approx(d.scores, abs=1e-5)


@pytest.mark.dali
def test_dali_decoder_gives_the_thread_decoder_records(checkpoint, images):
    tagger = Tagger.load(checkpoint)
    inputs = _good(images) + [str(images / "odd" / "empty.jpg"), str(images / "odd" / "truncated.jpg")]
    threads = list(tagger.tag(inputs, batch_size=4, decoder="threads", all_scores=True))
    dali = list(tagger.tag(inputs, batch_size=4, decoder="dali", all_scores=True))
    assert [r.path for r in threads] == [r.path for r in dali] == inputs
    assert [r.error is None for r in threads] == [r.error is None for r in dali]
    for a, b in zip(threads, dali):
        if a.error is None:
            assert b.scores == pytest.approx(a.scores, abs=0.02)  # JPEG decoders differ by a grey level


def _cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "lcie_fast", *args], capture_output=True, text=True, input=stdin)


def test_cli_jsonl_csv_and_stdin(checkpoint, images, tmp_path):
    files = _good(images)
    out = tmp_path / "tags.jsonl"
    result = _cli("tag", str(checkpoint), str(images / "set" / "images"), "-o", str(out), "--no-progress",
                  "--threshold", "0.3", "--all-scores")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["path"] for line in lines] == files
    assert all(set(line) == {"index", "path", "labels", "error", "scores_all"} for line in lines)
    csv_out = tmp_path / "tags.csv"
    assert _cli("tag", str(checkpoint), *files, "-o", str(csv_out), "--no-progress").returncode == 0
    rows = list(csv.DictReader(io.StringIO(csv_out.read_text())))
    assert [row["path"] for row in rows] == files and rows[0].keys() >= {"path", "labels", "error"}
    piped = _cli("tag", str(checkpoint), "-", "--no-progress", stdin="\n".join(files[:3]) + "\n")
    assert [json.loads(line)["path"] for line in piped.stdout.splitlines()] == files[:3]


def test_cli_resumes_an_interrupted_output(checkpoint, images, tmp_path):
    files = _good(images)
    out = tmp_path / "tags.jsonl"
    full = tmp_path / "full.jsonl"
    assert _cli("tag", str(checkpoint), *files, "-o", str(full), "--no-progress").returncode == 0
    # an interrupted run: 5 complete records and half a sixth line
    lines = full.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:5]) + lines[5][:20])
    shutil.copy(f"{full}.meta.json", f"{out}.meta.json")  # the run's settings, written when it started
    result = _cli("tag", str(checkpoint), *files, "-o", str(out), "--no-progress")
    assert result.returncode == 0 and "5 records already there" in result.stderr
    assert out.read_text() == full.read_text()
    again = _cli("tag", str(checkpoint), *reversed(files), "-o", str(out), "--no-progress")
    assert again.returncode == 1 and "holds records for other inputs" in again.stderr


def test_cli_refuses_a_missing_model(tmp_path):
    result = _cli("tag", str(tmp_path / "nope.pt"), "x.jpg")
    assert result.returncode == 1 and "model not found" in result.stderr


def _write_clip(path, colours, frames_each=5, fps=10):
    av = pytest.importorskip("av", reason="needs PyAV to write the test clip: pip install 'lcie-fast[video]'")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for colour in colours:
            for _ in range(frames_each):
                frame = np.full((64, 64, 3), colour, np.uint8)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def test_video_frames_and_segments(checkpoint, tmp_path):
    from lcie_fast.video import iter_frames, tag_video

    clip = tmp_path / "clip.mp4"
    _write_clip(clip, [(250, 10, 10), (10, 10, 250), (250, 10, 10)])  # 15 frames at 10 fps
    frames = list(iter_frames(clip))
    assert len(frames) == 15 and frames[-1][1] == pytest.approx(1.4, abs=0.01)
    assert [i for i, _, _ in iter_frames(clip, every=4)] == [0, 4, 8, 12]
    assert [round(t, 1) for _, t, _ in iter_frames(clip, fps=2.5)] == [0.0, 0.4, 0.8, 1.2]
    tagger = Tagger.load(checkpoint)
    probs = np.stack([list(r.scores.values()) for r in tagger.tag_frames([f for _, _, f in frames], all_scores=True)])
    # a threshold between the red and the blue frames' scores of some label makes segments
    label = int(np.argmax(np.abs(probs[:5].mean(0) - probs[5:10].mean(0))))
    tagger.thresholds[:] = np.inf  # every other label off (set_thresholds only takes thresholds in [0, 1])
    high = probs[:5, label].mean() > probs[5:10, label].mean()
    tagger.thresholds[label] = (probs[:5, label].mean() + probs[5:10, label].mean()) / 2
    records, segments = tag_video(tagger, clip, batch_size=4, ema=1.0)
    assert [r["frame"] for r in records] == list(range(15))
    on = [any(tag["label"] == LABELS[label] for tag in r["labels"]) for r in records]
    expected = [high] * 5 + [not high] * 5 + [high] * 5
    assert on == expected
    spans = [value for s in segments for value in (s.start, s.end)]
    assert spans == pytest.approx([0.0, 0.5, 1.0, 1.5] if high else [0.5, 1.0])
    smooth_records, _ = tag_video(tagger, clip, batch_size=4, ema=0.3)
    assert len(smooth_records) == 15


def test_video_cli(checkpoint, tmp_path):
    clip = tmp_path / "clip.mp4"
    _write_clip(clip, [(200, 200, 200)], frames_each=6)
    result = _cli("tag-video", str(checkpoint), str(clip), "--every", "2", "--threshold", "0.0")
    assert result.returncode == 0, result.stderr
    frames = [json.loads(line) for line in (tmp_path / "clip.mp4.frames.jsonl").read_text().splitlines()]
    segments = [json.loads(line) for line in (tmp_path / "clip.mp4.segments.jsonl").read_text().splitlines()]
    assert [f["frame"] for f in frames] == [0, 2, 4]
    assert {s["label"] for s in segments} == set(LABELS)  # threshold 0: every label on for the whole clip
