"""The pyds probe shipped in DeepStream bundles (``templates/probe_lcie.py``), against a small fake pyds.

The probe is loaded by file path, as a DeepStream application loads it from a bundle, with
``tests/fake_pyds.py`` standing in for NVIDIA's bindings. Checked: records of the one record schema in
primary and secondary mode with both parsers (the cpp parser's classifier meta of our gie-unique-id
only; the tensor meta's scores with thresholds, top-k and ``scores_all``), equality with
``tag_video``'s records on the same scores (thresholds, smoothing, non-finite frames), smoothing per
(source, object), error records for a wrong output width and non-finite scores, the pad probe and
``attach`` against a fake GStreamer, the refusals of ``load_bundle``, the missing-pyds message, and
that the file imports and prints its usage with neither pyds, GStreamer nor lcie_fast importable.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import fake_pyds
import numpy as np
import pytest

from lcie_fast import artifacts, video
from lcie_fast.outputs import records as record_schema

REPO_ROOT = Path(__file__).resolve().parents[1]
PROBE_PATH = REPO_ROOT / "lcie_fast" / "deploy" / "deepstream" / "templates" / "probe_lcie.py"
LABELS = ["car", "person", "bicycle", "truck", "road"]
THRESHOLDS = [0.5, 0.3, 0.6, 0.45, 0.2]
GIE = 3  # our nvinfer's gie-unique-id
OTHER_GIE = 7  # another nvinfer in the same pipeline
_DELETE = object()


def load_probe_module(name: str = "probe_lcie_under_test") -> types.ModuleType:
    """The bundle's probe, loaded by file path; no __pycache__ is left in the templates folder (it is copied into bundles)."""
    spec = importlib.util.spec_from_file_location(name, PROBE_PATH)
    module = importlib.util.module_from_spec(spec)
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes_bytecode
    return module


@pytest.fixture(scope="module")
def probe_lcie() -> types.ModuleType:
    return load_probe_module()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    monkeypatch.setitem(sys.modules, "pyds", fake_pyds)
    return fake_pyds


def write_bundle(folder: Path, **fields) -> Path:
    data = {"format": artifacts.DEEPSTREAM_FORMAT, "format_version": artifacts.DEEPSTREAM_FORMAT_VERSION,
            "labels": LABELS, "thresholds": THRESHOLDS, "top_k": None, "mode": "primary", "parser": "tensor-meta",
            "gie_unique_id": GIE, "output": artifacts.PROBS_NAME, "precision": "fp16", "input_size": 224,
            "onnx": "lcie_ds.onnx", "onnx_sha256": "ab" * 32, "metadata": {"preset": "edge"}}
    data.update(fields)
    data = {key: value for key, value in data.items() if value is not _DELETE}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / artifacts.DEEPSTREAM_BUNDLE_FILE).write_text(json.dumps(data), encoding="utf-8")
    return folder


def make_probe(probe_lcie, tmp_path: Path, *, sources=None, ema: float = 1.0, max_tracks: int = 4096, **fields):
    """A probe over a bundle written with ``fields``, and the list its records go to."""
    sink: list[dict] = []
    probe = probe_lcie.LcieProbe(write_bundle(tmp_path / "bundle", **fields), sources=sources, ema=ema,
                                 sink=sink.append, max_tracks=max_tracks)
    return probe, sink


def rounded(values) -> dict[str, float]:
    return {name: round(float(np.float32(value)), 5) for name, value in zip(LABELS, values)}


def label_scores(record: dict) -> dict[str, float]:
    return {tag["label"]: tag["score"] for tag in record["labels"]}


def whole_frame(fake, labels):
    """What nvinfer adds for a primary classifier: an object for the whole frame carrying our labels."""
    return fake.object_meta(class_id=-1, classifiers=[fake.classifier_meta(GIE, labels)])


# ---------------------------------------------------------------------------- the file itself
def test_copied_constants_agree_with_lcie_fast(probe_lcie):
    assert probe_lcie.DEEPSTREAM_FORMAT == artifacts.DEEPSTREAM_FORMAT
    assert probe_lcie.DEEPSTREAM_FORMAT_VERSION == artifacts.DEEPSTREAM_FORMAT_VERSION
    assert probe_lcie.DEEPSTREAM_BUNDLE_FILE == artifacts.DEEPSTREAM_BUNDLE_FILE
    assert probe_lcie.NON_FINITE == record_schema.NON_FINITE
    assert probe_lcie.DECIMALS == record_schema.DECIMALS


def test_the_probe_imports_only_the_standard_library_numpy_and_lazily_pyds_and_gi():
    tree = ast.parse(PROBE_PATH.read_text(encoding="utf-8"))
    top, inside = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
            (top if node in tree.body else inside).update(name.split(".")[0] for name in names)
    assert top <= {"__future__", "ctypes", "json", "math", "sys", "collections", "pathlib", "typing", "numpy"}, top
    assert inside == {"pyds", "gi"}


def run_probe_file(*args: str) -> subprocess.CompletedProcess:
    """The probe file run as a program in a fresh interpreter where pyds, gi and lcie_fast cannot be imported."""
    code = textwrap.dedent(f"""
        import importlib.util, sys
        for name in ("pyds", "gi", "lcie_fast"):
            sys.modules[name] = None  # importing it raises ImportError
        spec = importlib.util.spec_from_file_location("probe_lcie", {str(PROBE_PATH)!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.exit(module.main(sys.argv[1:]))
    """)
    return subprocess.run([sys.executable, "-B", "-c", code, *args], capture_output=True, text=True, timeout=60)


def test_probe_file_imports_and_runs_without_pyds_gstreamer_or_lcie_fast(tmp_path):
    usage = run_probe_file()
    assert usage.returncode == 0, usage.stderr
    assert "LcieProbe(" in usage.stdout and "probe.attach(nvinfer)" in usage.stdout and "config_infer_lcie.txt" in usage.stdout

    checked = run_probe_file(str(write_bundle(tmp_path / "bundle", mode="secondary", parser="cpp", top_k=3)))
    assert checked.returncode == 1  # pyds is missing here
    assert "bundle: 5 labels, mode secondary, parser cpp, gie-unique-id 3, output 'probs', top_k 3" in checked.stdout
    assert "NOT the PyPI package" in checked.stderr and "deepstream_python_apps" in checked.stderr

    broken = run_probe_file(str(write_bundle(tmp_path / "broken", thresholds=[0.5])))
    assert broken.returncode == 1
    assert "1 thresholds for 5 labels" in broken.stderr


def test_missing_or_wrong_pyds_says_where_nvidias_comes_from(probe_lcie, tmp_path, monkeypatch):
    bundle = write_bundle(tmp_path / "bundle")
    monkeypatch.setitem(sys.modules, "pyds", None)
    with pytest.raises(probe_lcie.PydsMissingError) as missing:
        probe_lcie.LcieProbe(bundle)
    assert isinstance(missing.value, ImportError)
    message = str(missing.value)
    assert "pyds is NOT the PyPI package" in message and "unrelated library" in message
    assert "https://github.com/NVIDIA-AI-IOT/deepstream_python_apps" in message and "DeepStream version" in message

    monkeypatch.setitem(sys.modules, "pyds", types.ModuleType("pyds"))  # what `pip install pyds` gives
    with pytest.raises(probe_lcie.PydsMissingError, match="is not NVIDIA's DeepStream bindings") as unrelated:
        probe_lcie.LcieProbe(bundle)
    assert "NOT the PyPI package" in str(unrelated.value)


# ---------------------------------------------------------------------------- load_bundle
def test_load_bundle_reads_a_folder_or_its_json(probe_lcie, tmp_path):
    folder = write_bundle(tmp_path / "bundle", top_k=2, mode="secondary")
    bundle = probe_lcie.load_bundle(folder)
    assert (bundle["labels"], bundle["thresholds"], bundle["top_k"], bundle["mode"]) == (LABELS, THRESHOLDS, 2, "secondary")
    assert probe_lcie.load_bundle(folder / artifacts.DEEPSTREAM_BUNDLE_FILE) == bundle


@pytest.mark.parametrize("fields, message", [
    ({"format": artifacts.TRITON_FORMAT}, "not an lcie-fast DeepStream bundle .*'lcie_fast.triton'"),
    ({"format": _DELETE}, "not an lcie-fast DeepStream bundle"),
    ({"format_version": 2}, "format_version 2 is newer than this probe reads"),
    ({"format_version": "1"}, "format_version must be a positive integer"),
    ({"thresholds": [0.5] * 4}, "4 thresholds for 5 labels"),
    ({"labels": [*LABELS, "bus"]}, "5 thresholds for 6 labels"),
    ({"thresholds": _DELETE}, "NoneType thresholds for 5 labels"),
    ({"thresholds": [0.5, 0.3, 1.5, 0.45, float("nan")]}, r"not so for \['bicycle', 'road'\]"),
    ({"thresholds": [0.5, True, 0.6, 0.45, 0.2]}, r"not so for \['person'\]"),
    ({"labels": ["car", "car", "bicycle", "truck", "road"]}, r"labels \['car'\] appear more than once"),
    ({"labels": []}, "labels must be a non-empty list"),
    ({"top_k": 0}, "top_k must be null or an integer >= 1"),
    ({"mode": "tertiary"}, "mode must be one of"),
    ({"parser": "python"}, "parser must be one of"),
    ({"gie_unique_id": 0}, "gie_unique_id must be an integer >= 1"),
    ({"output": ""}, "output must name the model's output layer"),
])
def test_load_bundle_refuses_naming_the_file_and_field(probe_lcie, tmp_path, fields, message):
    folder = write_bundle(tmp_path / "bundle", **fields)
    with pytest.raises(probe_lcie.BundleError, match=message) as info:
        probe_lcie.load_bundle(folder)
    assert str(info.value).startswith(str(folder / artifacts.DEEPSTREAM_BUNDLE_FILE) + ": ")


def test_load_bundle_refuses_a_missing_or_damaged_file(probe_lcie, tmp_path):
    with pytest.raises(probe_lcie.BundleError, match="lcie_deepstream.json: not found"):
        probe_lcie.load_bundle(tmp_path)
    (tmp_path / artifacts.DEEPSTREAM_BUNDLE_FILE).write_text('{"format": ', encoding="utf-8")
    with pytest.raises(probe_lcie.BundleError, match="not valid JSON"):
        probe_lcie.load_bundle(tmp_path)


def test_probe_refuses_smoothing_it_cannot_do(probe_lcie, fake, tmp_path):
    with pytest.raises(ValueError, match="--parser tensor-meta"):
        make_probe(probe_lcie, tmp_path, parser="cpp", ema=0.5)
    for ema in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"ema must be a number in \(0, 1\]"):
            make_probe(probe_lcie, tmp_path, ema=ema)


# ---------------------------------------------------------------------------- primary mode
def test_primary_cpp_records_hold_our_classifier_labels_best_first(probe_lcie, fake, tmp_path):
    probe, _ = make_probe(probe_lcie, tmp_path, parser="cpp", sources={0: "rtsp://cam0/stream"})
    ours = fake.classifier_meta(GIE, [(4, 0.25, "road"), (0, 0.91, "car"), (1, 0.625, "person")])
    theirs = fake.classifier_meta(OTHER_GIE, [(2, 0.99, "bicycle"), (3, 0.98, "truck")])
    # nvinfer hangs a primary classifier's labels on an object it adds for the whole frame
    full_frame = fake.object_meta(class_id=-1, bbox=(0, 0, 1920, 1080), classifiers=[theirs, ours])
    detected = fake.object_meta(object_id=4, class_id=0, bbox=(10, 20, 30, 40), classifiers=[theirs])
    batch = fake.batch_meta([
        fake.frame_meta(12, source_id=0, objects=[detected, full_frame]),
        fake.frame_meta(13, source_id=0, objects=[fake.object_meta(class_id=-1, classifiers=[theirs])]),
        fake.frame_meta(5, source_id=1, buf_pts=1_234_567_890, objects=[whole_frame(fake, [(3, 0.5, "truck")])]),
    ])
    assert probe.frame_records(batch) == [
        {"index": 12, "path": "rtsp://cam0/stream#frame=12", "frame": 12, "time": 0.48, "error": None,
         "labels": [{"label": "car", "score": 0.91}, {"label": "person", "score": 0.625}, {"label": "road", "score": 0.25}]},
        # nothing of ours passed its threshold on this frame: nvinfer attached nothing
        {"index": 13, "path": "rtsp://cam0/stream#frame=13", "frame": 13, "time": 0.52, "labels": [], "error": None},
        {"index": 5, "path": "source1#frame=5", "frame": 5, "time": 1.235, "labels": [{"label": "truck", "score": 0.5}],
         "error": None},
    ]


def test_primary_cpp_error_records_for_a_foreign_class_or_a_non_finite_score(probe_lcie, fake, tmp_path):
    probe, _ = make_probe(probe_lcie, tmp_path, parser="cpp")
    frames = [fake.frame_meta(0, objects=[whole_frame(fake, [(0, 0.9, "car"), (7, 0.8, "x")])]),
              fake.frame_meta(1, objects=[whole_frame(fake, [(0, float("nan"), "car")])])]
    foreign, non_finite = probe.frame_records(fake.batch_meta(frames))
    assert foreign["labels"] == [] and "gave class 7; the bundle has 5 labels (lcie_deepstream.json)" in foreign["error"]
    assert non_finite["labels"] == [] and non_finite["error"] == record_schema.NON_FINITE


def test_primary_tensor_meta_applies_thresholds_and_top_k_and_keeps_every_score(probe_lcie, fake, tmp_path):
    probe, _ = make_probe(probe_lcie, tmp_path, top_k=3, sources=["file:///a.mp4", "file:///b.mp4"])
    scores = np.float32([0.7, 0.35, 0.59, 0.9, 0.2])  # road exactly at its threshold: kept, as the tagger keeps it
    frame = fake.frame_meta(3, source_id=1, user_metas=[
        fake.other_user_meta(),
        fake.tensor_user_meta([0.99] * 5, OTHER_GIE),  # another nvinfer's output
        fake.tensor_user_meta(scores, GIE, first_layers=["logits"]),  # ours is not its first layer
    ])
    not_inferred = fake.frame_meta(4, source_id=1, user_metas=[fake.tensor_user_meta([0.99] * 5, OTHER_GIE)])
    records = probe.frame_records(fake.batch_meta([frame, not_inferred]))
    assert records == [{"index": 3, "path": "file:///b.mp4#frame=3", "frame": 3, "time": 0.12, "error": None,
                        "labels": [{"label": "truck", "score": 0.9}, {"label": "car", "score": 0.7},
                                   {"label": "person", "score": 0.35}],
                        "scores_all": rounded(scores)}]

    unlimited, _ = make_probe(probe_lcie, tmp_path / "unlimited")
    (record,) = unlimited.frame_records(fake.batch_meta([fake.frame_meta(3, user_metas=[fake.tensor_user_meta(scores, GIE)])]))
    assert [tag["label"] for tag in record["labels"]] == ["truck", "car", "person", "road"]


def test_half_precision_outputs_are_read_as_half(probe_lcie, fake, tmp_path):
    probe, _ = make_probe(probe_lcie, tmp_path)
    scores = np.float16([0.1, 0.8, 0.25, 0.5, 0.125])
    (record,) = probe.frame_records(fake.batch_meta([fake.frame_meta(0, user_metas=[
        fake.tensor_user_meta(scores, GIE, data_type=fake.NvDsInferDataType.HALF)])]))
    assert record["scores_all"] == {name: round(float(value), 5) for name, value in zip(LABELS, scores)}
    assert [tag["label"] for tag in record["labels"]] == ["person", "truck"]


@pytest.mark.parametrize("ema", [1.0, 0.6])
def test_tensor_meta_records_equal_tag_video_records_on_the_same_scores(probe_lcie, fake, tmp_path, monkeypatch, ema):
    rng = np.random.default_rng(15)
    scores = rng.random((11, len(LABELS))).astype(np.float32)  # (frames, C)
    scores[4, 2] = np.nan  # reported, and kept out of the average
    scores[7] = np.float32(THRESHOLDS)  # every score exactly at its threshold
    times = [n / 25 for n in range(len(scores))]

    class Tagger:  # what tag_video reads of a tagger
        labels = LABELS
        thresholds = np.float32(THRESHOLDS)

        def tag_frames(self, frames, threshold, all_scores):
            return [types.SimpleNamespace(scores=dict(zip(LABELS, map(float, scores[int(image[0, 0, 0])])))) for image in frames]

    frames = [(n, times[n], np.full((2, 2, 3), n, np.uint8)) for n in range(len(scores))]
    monkeypatch.setattr(video, "iter_frames", lambda path, **options: iter(frames))
    expected, _ = video.tag_video(Tagger(), "cam0.mp4", batch_size=4, ema=ema)

    probe, _ = make_probe(probe_lcie, tmp_path, sources={0: "cam0.mp4"}, ema=ema)
    got = []
    for start in range(0, len(scores), 3):  # batched differently: batches do not matter
        batch = fake.batch_meta([fake.frame_meta(n, buf_pts=round(times[n] * 1e9),
                                                 user_metas=[fake.tensor_user_meta(scores[n], GIE)])
                                 for n in range(start, min(start + 3, len(scores)))])
        got.extend(probe.frame_records(batch))
    assert got == expected
    assert got[4]["error"] == record_schema.NON_FINITE and got[4]["scores_all"]["bicycle"] is None
    if ema == 1.0:  # scores equal to their thresholds are kept (held at float32, as the tagger holds them)
        assert [tag["label"] for tag in got[7]["labels"]] == ["bicycle", "car", "truck", "person", "road"]


# ---------------------------------------------------------------------------- secondary mode
def test_secondary_records_one_per_object_our_nvinfer_ran_on(probe_lcie, fake, tmp_path):
    probe, _ = make_probe(probe_lcie, tmp_path, mode="secondary", sources={2: "cam2"})
    car = np.float32([0.8, 0.1, 0.0, 0.5, 0.3])
    walker = np.float32([0.1, 0.9, 0.7, 0.0, 0.25])
    objects = [
        fake.object_meta(17, class_id=2, bbox=(100.0, 50.5, 64.25, 48.0), user_metas=[fake.tensor_user_meta(car, GIE)]),
        fake.object_meta(18, class_id=0, bbox=(1, 2, 3, 4), user_metas=[fake.tensor_user_meta(car, OTHER_GIE)]),  # not ours
        fake.object_meta(class_id=1, bbox=(5, 6, 7, 8), user_metas=[fake.tensor_user_meta(walker, GIE)]),  # untracked
    ]
    assert probe.frame_records(fake.batch_meta([fake.frame_meta(9, source_id=2, objects=objects)])) == [
        {"index": 9, "path": "cam2#frame=9&object=17", "frame": 9, "time": 0.36, "object_id": 17, "class_id": 2,
         "bbox": [100.0, 50.5, 64.25, 48.0], "error": None, "scores_all": rounded(car),
         "labels": [{"label": "car", "score": 0.8}, {"label": "truck", "score": 0.5}, {"label": "road", "score": 0.3}]},
        {"index": 9, "path": "cam2#frame=9&object=untracked-2", "frame": 9, "time": 0.36, "object_id": None, "class_id": 1,
         "bbox": [5.0, 6.0, 7.0, 8.0], "error": None, "scores_all": rounded(walker),
         "labels": [{"label": "person", "score": 0.9}, {"label": "bicycle", "score": 0.7}, {"label": "road", "score": 0.25}]},
    ]


def test_secondary_cpp_records_objects_carrying_our_classifier_meta(probe_lcie, fake, tmp_path):
    probe, _ = make_probe(probe_lcie, tmp_path, mode="secondary", parser="cpp")
    objects = [
        fake.object_meta(3, class_id=0, bbox=(1, 1, 2, 2), classifiers=[fake.classifier_meta(OTHER_GIE, [(2, 0.9, "bicycle")])]),
        fake.object_meta(4, class_id=2, bbox=(3, 3, 4, 4),
                         classifiers=[fake.classifier_meta(GIE, [(3, 0.55, "truck"), (0, 0.75, "car")])]),
    ]
    assert probe.frame_records(fake.batch_meta([fake.frame_meta(0, objects=objects)])) == [
        {"index": 0, "path": "source0#frame=0&object=4", "frame": 0, "time": 0.0, "object_id": 4, "class_id": 2,
         "bbox": [3.0, 3.0, 4.0, 4.0], "error": None,
         "labels": [{"label": "car", "score": 0.75}, {"label": "truck", "score": 0.55}]},
    ]


def test_ema_smooths_each_tracked_object_of_each_source_apart(probe_lcie, fake, tmp_path):
    probe, _ = make_probe(probe_lcie, tmp_path, mode="secondary", ema=0.5, thresholds=[0.0] * 5)
    a0, a1, b0, b1, u0, u1, c0 = (np.float32(np.random.default_rng(seed).random(5)) for seed in range(7))

    def frame(number, source_id=0, **objects):
        metas = [fake.object_meta(int(name[1:]) if name != "untracked" else fake.UNTRACKED_OBJECT_ID,
                                  user_metas=[fake.tensor_user_meta(values, GIE)]) for name, values in objects.items()]
        return fake.frame_meta(number, source_id=source_id, objects=metas)

    batches = [[frame(0, o7=a0, o8=b0, untracked=u0), frame(0, source_id=1, o7=c0)],
               [frame(1, o7=a1)],
               [frame(2, o8=b1, untracked=u1)]]
    got = [label_scores(record) for batch in batches for record in probe.frame_records(fake.batch_meta(batch))]
    mean = lambda new, old: 0.5 * np.float64(new) + 0.5 * np.float64(old)  # noqa: E731
    assert got == [rounded(a0), rounded(b0), rounded(u0), rounded(c0), rounded(mean(a1, a0)), rounded(mean(b1, b0)), rounded(u1)]

    # the stream of source 0 restarts: its averages start afresh; source 1's is kept
    restarted = fake.batch_meta([frame(0, o7=a1), frame(1, source_id=1, o7=a1)])
    got = [label_scores(record) for record in probe.frame_records(restarted)]
    assert got == [rounded(a1), rounded(mean(a1, c0))]


def test_ema_keeps_at_most_max_tracks_averages(probe_lcie, fake, tmp_path):
    probe, _ = make_probe(probe_lcie, tmp_path, mode="secondary", ema=0.5, thresholds=[0.0] * 5, max_tracks=2)
    first, second = np.float32([0.2] * 5), np.float32([0.6] * 5)
    obj = lambda object_id, values: fake.object_meta(object_id, user_metas=[fake.tensor_user_meta(values, GIE)])  # noqa: E731
    probe.frame_records(fake.batch_meta([fake.frame_meta(0, objects=[obj(1, first), obj(2, first), obj(3, first)])]))
    two, one = probe.frame_records(fake.batch_meta([fake.frame_meta(1, objects=[obj(2, second), obj(1, second)])]))
    assert label_scores(two) == rounded([0.4] * 5)  # kept
    assert label_scores(one) == rounded(second)  # the least recently seen average, dropped for object 3's


# ---------------------------------------------------------------------------- broken outputs
def test_a_wrong_output_width_or_layer_gives_error_records_and_leaves_the_average(probe_lcie, fake, tmp_path):
    probe, _ = make_probe(probe_lcie, tmp_path, ema=0.5, thresholds=[0.0] * 5)
    good0, good2 = np.float32([0.2, 0.4, 0.6, 0.8, 1.0]), np.float32([0.6, 0.6, 0.6, 0.6, 0.6])
    batch = fake.batch_meta([
        fake.frame_meta(0, user_metas=[fake.tensor_user_meta(good0, GIE)]),
        fake.frame_meta(1, user_metas=[fake.tensor_user_meta([0.5] * 80, GIE)]),  # an engine of another model
        fake.frame_meta(2, user_metas=[fake.tensor_user_meta(good0, GIE, layer_name="logits")]),
        fake.frame_meta(3, user_metas=[fake.tensor_user_meta(good2, GIE)]),
    ])
    first, wide, renamed, last = probe.frame_records(batch)
    assert wide["labels"] == [] and wide["scores_all"] is None
    assert "output 'probs' has 80 values, the bundle has 5 labels (lcie_deepstream.json)" in wide["error"]
    assert renamed["labels"] == [] and "has no layer 'probs' (it has ['logits'])" in renamed["error"]
    assert first["error"] is None and last["error"] is None
    assert label_scores(last) == rounded(0.5 * good2.astype(np.float64) + 0.5 * good0.astype(np.float64))


def test_non_finite_scores_give_an_error_record_and_stay_out_of_the_average(probe_lcie, fake, tmp_path):
    probe, _ = make_probe(probe_lcie, tmp_path, ema=0.5, thresholds=[0.0] * 5)
    good0, good2 = np.float32([0.2, 0.4, 0.6, 0.8, 1.0]), np.float32([0.6] * 5)
    broken = np.float32([0.5, np.inf, 0.5, np.nan, 0.5])
    records = probe.frame_records(fake.batch_meta([fake.frame_meta(n, user_metas=[fake.tensor_user_meta(values, GIE)])
                                                   for n, values in enumerate([good0, broken, good2])]))
    assert records[1]["error"] == record_schema.NON_FINITE and records[1]["labels"] == []
    assert records[1]["scores_all"] == {"car": 0.5, "person": None, "bicycle": 0.5, "truck": None, "road": 0.5}
    assert label_scores(records[2]) == rounded(0.5 * good2.astype(np.float64) + 0.5 * good0.astype(np.float64))
    json.dumps(records, allow_nan=False)  # every record is strict JSON


# ---------------------------------------------------------------------------- GStreamer
@pytest.fixture
def fake_gst(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Just the names of PyGObject's Gst the probe uses."""
    gst = types.SimpleNamespace(PadProbeReturn=types.SimpleNamespace(OK="pad-probe-ok"),
                                PadProbeType=types.SimpleNamespace(BUFFER="pad-probe-buffer"), versions=[])
    repository = types.ModuleType("gi.repository")
    repository.Gst = gst
    gi = types.ModuleType("gi")
    gi.require_version = lambda namespace, version: gst.versions.append((namespace, version))
    gi.repository = repository
    monkeypatch.setitem(sys.modules, "gi", gi)
    monkeypatch.setitem(sys.modules, "gi.repository", repository)
    return gst


class FakePad:
    def __init__(self) -> None:
        self.probes = []

    def add_probe(self, kind, callback, user_data):
        self.probes.append((kind, callback, user_data))
        return 41 + len(self.probes)


class FakeElement:
    def __init__(self) -> None:
        self.pad = FakePad()

    def get_name(self) -> str:
        return "lcie-nvinfer"

    def get_static_pad(self, name):
        return self.pad if name == "src" else None


def test_pad_probe_sends_the_batch_records_to_the_sink_and_passes_the_buffer(probe_lcie, fake, fake_gst, tmp_path):
    probe, sink = make_probe(probe_lcie, tmp_path, parser="cpp")
    batch = fake.batch_meta([fake.frame_meta(0, objects=[whole_frame(fake, [(1, 0.75, "person")])]), fake.frame_meta(1)])
    buffer = fake.gst_buffer(batch)
    assert probe(FakePad(), types.SimpleNamespace(get_buffer=lambda: buffer), None) == fake_gst.PadProbeReturn.OK
    assert [(record["frame"], record["labels"]) for record in sink] == [(0, [{"label": "person", "score": 0.75}]), (1, [])]
    assert fake_gst.versions == [("Gst", "1.0")]
    assert probe(FakePad(), types.SimpleNamespace(get_buffer=lambda: None), None) == fake_gst.PadProbeReturn.OK
    assert len(sink) == 2


def test_default_sink_prints_json_lines(probe_lcie, fake, fake_gst, tmp_path, capsys):
    probe = probe_lcie.LcieProbe(write_bundle(tmp_path / "bundle"), sources={0: "cam0"})
    scores = [0.9, 0.1, 0.1, 0.1, 0.1]
    batch = fake.batch_meta([fake.frame_meta(n, user_metas=[fake.tensor_user_meta(scores, GIE)]) for n in range(2)])
    probe(None, types.SimpleNamespace(get_buffer=lambda: fake.gst_buffer(batch)))
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["path"] for line in lines] == ["cam0#frame=0", "cam0#frame=1"]
    assert json.loads(lines[0])["labels"] == [{"label": "car", "score": 0.9}]


def test_attach_adds_a_buffer_probe_to_the_element_src_pad_or_a_pad(probe_lcie, fake, fake_gst, tmp_path):
    probe, _ = make_probe(probe_lcie, tmp_path)
    element = FakeElement()
    assert probe.attach(element) == 42
    assert element.pad.probes == [(fake_gst.PadProbeType.BUFFER, probe, None)]
    pad = FakePad()
    assert probe.attach(pad) == 42 and pad.probes[0][1] is probe
    with pytest.raises(ValueError, match="lcie-nvinfer has no static pad 'sink'"):
        probe.attach(element, "sink")


def test_attach_without_gstreamer_bindings_says_what_is_missing(probe_lcie, fake, tmp_path, monkeypatch):
    probe, _ = make_probe(probe_lcie, tmp_path)
    monkeypatch.setitem(sys.modules, "gi", None)
    with pytest.raises(ImportError, match="GStreamer's Python bindings"):
        probe.attach(FakeElement())
