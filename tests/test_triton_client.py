"""The Triton client backend (issue 15, item 4) against a fake KServe v2 server on 127.0.0.1
(tests/fake_triton_server.py) that runs the ONNX graph with ONNX Runtime.

Contract: ``Tagger.load(url).tag(images)`` yields the records of ``Tagger.load(model.onnx,
backend="onnxruntime")`` on the same inputs (same indices, paths, labels and error records; scores
within 1e-5, both at the thresholds the model was exported with), batches above ``max_batch_size``
go out as several requests, ``lcie-fast tag URL ...`` writes the JSONL of the ONNX Runtime run, and
every way of failing (malformed URL, closed port, unknown model, a config without lcie_metadata or
contradicting it, a model not ready, a request the server refuses) is a BackendError naming the URL.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import shutil
import socket
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tritonclient.http", reason="the Triton client needs the triton-client extra: "
                                                "pip install 'lcie-fast[triton-client]'")
pytest.importorskip("onnxruntime", reason="the fake Triton server runs graphs with ONNX Runtime (extra deploy)")

from fake_triton_server import FakeTritonServer  # noqa: E402 - after the skips: it imports onnxruntime

from lcie_fast.artifacts import TRITON_METADATA_PARAMETER, triton_model_metadata  # noqa: E402
from lcie_fast.cli import main  # noqa: E402
from lcie_fast.errors import InvalidInputError  # noqa: E402
from lcie_fast.runtime import BackendError, open_backend  # noqa: E402
from lcie_fast.runtime.triton_client import DEFAULT_MAX_REQUEST_BYTES, TritonBackend, parse_triton_url  # noqa: E402
from lcie_fast.tagger import Tagger  # noqa: E402

MODEL = "lcie_onnx_fp32"
MAX_BATCH = 3
THRESHOLDS = {"bus": 0.45, "car": 0.5, "motorbike": 0.4, "person": 0.47, "truck": 0.52}
SCORE_TOLERANCE = 1e-5 + 1e-9  # records keep 5 decimals: one rounding step apart at most


def _config_text(name, meta, *, max_batch=MAX_BATCH, document=None, size=None):
    """A config.pbtxt as export-triton writes it, built through Triton's schema (the JSON escaped by protobuf)."""
    from google.protobuf import text_format

    from lcie_fast.deploy.triton_proto import parse_model_config

    side = size or meta.preprocess.input_size
    config = parse_model_config(
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch}\n'
        f'input [ {{ name: "images" data_type: TYPE_FP32 dims: [ 3, {side}, {side} ] }} ]\n'
        f'output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ {meta.num_classes} ] }} ]\n')
    if document is not None:
        config.parameters[TRITON_METADATA_PARAMETER].string_value = json.dumps(document)
    return text_format.MessageToString(config)


@pytest.fixture(scope="module")
def graph(tiny5_onnx, tmp_path_factory):
    """The tiny 5-label model as an FP32 ONNX graph (a copy of the session's), and its metadata."""
    from lcie_fast.artifacts import read_onnx_metadata

    path = shutil.copyfile(tiny5_onnx, tmp_path_factory.mktemp("graph") / "model.onnx")
    return path, read_onnx_metadata(path)


@pytest.fixture(scope="module")
def server(graph, tmp_path_factory):
    """A repository of four models on the fake server: the exported one (max batch 3, fitted thresholds), one
    without lcie_metadata, one whose config contradicts its metadata, and one without its model file."""
    from lcie_fast.io import sha256_file

    path, meta = graph
    repo = tmp_path_factory.mktemp("repo")
    document = triton_model_metadata(meta, kind="onnx", precision="fp32", artifact_sha256=sha256_file(path),
                                     thresholds=THRESHOLDS)
    size = meta.preprocess.input_size
    models = {MODEL: _config_text(MODEL, meta, document=document),
              "plain_onnx": _config_text("plain_onnx", meta),
              "mismatch": _config_text("mismatch", meta, document=document, size=size + 1),
              "not_loaded": _config_text("not_loaded", meta, document=document)}
    for name, text in models.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(text)
        if name != "not_loaded":
            shutil.copyfile(path, repo / name / "1" / "model.onnx")
    with FakeTritonServer(repo, lifetime_s=120) as fake:
        yield fake


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Eight inputs: seven images of odd sizes (JPEG and PNG) and one undecodable file, in a folder."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(15)
    for index in range(7):
        pixels = rng.integers(0, 255, (31 + 7 * index, 45 + 3 * index, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{index}.{'png' if index % 3 == 0 else 'jpg'}")
    (root / "img7_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not an image at all")
    return root


def _same_records(ours, reference):
    assert [(r.index, r.path, r.error) for r in ours] == [(r.index, r.path, r.error) for r in reference]
    for mine, theirs in zip(ours, reference):
        assert [name for name, _ in mine.labels] == [name for name, _ in theirs.labels], mine.path
        assert np.allclose([s for _, s in mine.labels], [s for _, s in theirs.labels], rtol=0, atol=SCORE_TOLERANCE)
        if mine.error is not None:
            assert mine.scores is None and theirs.scores is None and not mine.labels
            continue
        assert mine.scores.keys() == theirs.scores.keys()
        gap = max(abs(mine.scores[k] - theirs.scores[k]) for k in mine.scores)
        assert gap <= SCORE_TOLERANCE, (mine.path, gap)


def test_records_equal_onnxruntime_and_batches_are_split(server, graph, images):
    path, meta = graph
    url = f"{server.url}/{MODEL}"
    tagger = Tagger.load(url)
    try:
        assert tagger.backend.name == "triton" and tagger.backend.label == f"triton fp32 ({url})"
        assert tagger.backend.max_batch == MAX_BATCH and tagger.backend.device == "cpu"
        assert tagger.meta.label_names == meta.label_names
        assert dict(zip(tagger.labels, tagger.thresholds.tolist())) == pytest.approx(THRESHOLDS)  # from lcie_metadata
        before = len(server.infer_batches)
        ours = list(tagger.tag([str(images)], batch_size=8, all_scores=True))
        sent = server.infer_batches[before:]
    finally:
        tagger.backend.close()
    reference = list(Tagger.load(path, backend="onnxruntime", thresholds=THRESHOLDS)
                     .tag([str(images)], batch_size=8, all_scores=True))
    assert len(ours) == 8 and sum(r.error is not None for r in ours) == 1
    assert any(r.labels for r in ours), "thresholds near 0.5 on a random model should keep some labels"
    _same_records(ours, reference)
    print(f"requests the server saw: {sent}")
    assert sum(sent) == 7 and max(sent) <= MAX_BATCH and len(sent) >= 3, sent


def test_a_repository_written_by_export_triton(graph, tmp_path):
    """The exporter's own output (with the probs output and a thresholds file) is what the client reads."""
    export = pytest.importorskip("lcie_fast.deploy.triton", reason="lcie-fast export-triton is not in this tree")
    path, meta = graph
    (tmp_path / "thresholds.json").write_text(json.dumps({"car": 0.3}))
    written = export.export_triton([path], tmp_path / "repo", max_batch=4, kind="cpu", with_probs=True,
                                   thresholds=tmp_path / "thresholds.json")
    name = written["models"][0]["name"]
    size = meta.preprocess.input_size
    batch = np.random.default_rng(4).standard_normal((6, 3, size, size)).astype(np.float32)  # (6, 3, S, S)
    with FakeTritonServer(tmp_path / "repo", lifetime_s=60) as fake:
        tagger = Tagger.load(f"{fake.url}/{name}")
        try:
            assert tagger.backend.max_batch == 4 and tagger.backend.precision == "fp32"
            assert tagger.thresholds.tolist() == pytest.approx([0.5, 0.3, 0.5, 0.5, 0.5])
            logits = tagger.backend.infer_numpy(batch)  # (6, C)
        finally:
            tagger.backend.close()
        assert fake.infer_batches == [4, 2]
    assert np.abs(logits - open_backend(path, "onnxruntime").infer_numpy(batch)).max() <= 1e-5


def test_backend_splits_one_large_batch_and_matches_onnxruntime(server, graph):
    path, meta = graph
    size = meta.preprocess.input_size
    batch = np.random.default_rng(1).standard_normal((7, 3, size, size)).astype(np.float32)  # (7, 3, S, S)
    backend = open_backend(f"{server.url}/{MODEL}/1")  # a version asked for
    try:
        before = len(server.infer_batches)
        logits = backend.infer_numpy(batch)  # (7, C)
        assert server.infer_batches[before:] == [3, 3, 1]
        assert backend.infer_numpy(batch[:0]).shape == (0, meta.num_classes)
    finally:
        backend.close()
    expected = open_backend(path, "onnxruntime").infer_numpy(batch)
    error = np.abs(logits - expected)
    print(f"logits vs ONNX Runtime: max {error.max():.2e}, mean {error.mean():.2e}")
    assert logits.shape == (7, meta.num_classes) and error.max() <= 1e-5


def test_requests_stay_within_the_request_size_limit(server, graph, monkeypatch):
    """Requests are split to fit max_request_bytes (tensor bytes + JSON header) as well as max_batch_size: with
    the server holding the same limit, room for two images gives requests of 2 and no HTTP 413."""
    path, meta = graph
    size = meta.preprocess.input_size
    image_bytes = 4 * 3 * size * size
    limit = 2 * image_bytes + 1024  # two images and a header; a third image would not fit
    monkeypatch.setattr(server, "max_request_bytes", limit)
    batch = np.random.default_rng(6).standard_normal((7, 3, size, size)).astype(np.float32)  # (7, 3, S, S)
    backend = TritonBackend(f"{server.url}/{MODEL}", max_request_bytes=limit)
    try:
        assert backend.images_per_request(7, (3, size, size)) == 2
        before = len(server.infer_batches)
        logits = backend.infer_numpy(batch)  # (7, C)
        assert server.infer_batches[before:] == [2, 2, 2, 1]
    finally:
        backend.close()
    assert np.abs(logits - open_backend(path, "onnxruntime").infer_numpy(batch)).max() <= 1e-5


def test_the_default_request_limit_is_under_tritonservers_default():
    assert 0 < (64 << 20) - DEFAULT_MAX_REQUEST_BYTES <= 64 << 10


def test_a_server_limit_below_the_clients_is_named_with_the_fix(server, graph, monkeypatch):
    _, meta = graph
    size = meta.preprocess.input_size
    monkeypatch.setattr(server, "max_request_bytes", 4 * 3 * size * size + 1024)  # one image fits, two do not
    backend = TritonBackend(f"{server.url}/{MODEL}")
    try:
        with pytest.raises(BackendError, match=r"inference of a batch of 2 failed: .*\(HTTP 413\); the server refused "
                                               r".*lower max_request_bytes or raise the server's limit"):
            backend.infer(np.zeros((2, 3, size, size), np.float32))
    finally:
        backend.close()


def test_one_image_above_the_request_limit_is_refused_at_load(server, graph):
    _, meta = graph
    size = meta.preprocess.input_size
    limit = 4 * 3 * size * size  # the tensor alone: no room for the header
    with pytest.raises(BackendError, match=rf"Triton model {server.url}/{MODEL}: a request of one 3x{size}x{size} FP32 "
                                           rf"image is \d+ bytes .* above the request limit max_request_bytes={limit}: "
                                           r"start tritonserver with a larger --http-max-input-size"):
        TritonBackend(f"{server.url}/{MODEL}", max_request_bytes=limit)


@pytest.mark.parametrize("limit", [0, -1, True, 1.5, "64M"])
def test_max_request_bytes_must_be_a_positive_whole_number(limit):
    with pytest.raises(InvalidInputError, match="max_request_bytes must be a positive whole number"):
        TritonBackend("http://127.0.0.1:1/lcie", max_request_bytes=limit)


def test_cli_tag_with_a_url_writes_the_onnxruntime_jsonl(server, graph, images, tmp_path):
    path, _ = graph
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps(THRESHOLDS))
    by_url, by_file = tmp_path / "url.jsonl", tmp_path / "file.jsonl"
    assert main(["tag", f"{server.url}/{MODEL}", str(images), "-o", str(by_url), "--batch-size", "5",
                 "--all-scores", "--no-progress"]) == 0
    assert main(["tag", str(path), str(images), "-o", str(by_file), "--backend", "onnxruntime",
                 "--thresholds", str(thresholds), "--batch-size", "5", "--all-scores", "--no-progress"]) == 0
    ours = [json.loads(line) for line in by_url.read_text().splitlines()]
    theirs = [json.loads(line) for line in by_file.read_text().splitlines()]
    assert len(ours) == len(theirs) == 8
    for mine, reference in zip(ours, theirs):
        scores, expected = mine.pop("scores_all") or {}, reference.pop("scores_all") or {}
        assert scores.keys() == expected.keys()
        assert all(abs(scores[k] - expected[k]) <= SCORE_TOLERANCE for k in scores), mine["path"]
        labels, expected = mine.pop("labels"), reference.pop("labels")
        assert [t["label"] for t in labels] == [t["label"] for t in expected]
        assert all(abs(a["score"] - b["score"]) <= SCORE_TOLERANCE for a, b in zip(labels, expected))
        assert mine == reference  # index, path, error
    stats = json.loads((tmp_path / "url.stats.json").read_text())
    assert stats["backend"].startswith("triton fp32") and stats["model"] == f"{server.url}/{MODEL}"
    assert stats["model_sha256"] == json.loads((tmp_path / "file.stats.json").read_text())["model_sha256"]
    # --backend triton names the same thing; the CLI refuses a URL for another backend before tagging
    assert main(["tag", f"{server.url}/{MODEL}", str(images), "-o", str(tmp_path / "again.jsonl"),
                 "--backend", "triton", "--no-progress"]) == 0
    assert main(["tag", f"{server.url}/{MODEL}", str(images), "--backend", "onnxruntime", "--no-progress"]) == 1


@pytest.mark.parametrize(("url", "problem"), [
    ("http://127.0.0.1/lcie", "no port"),
    ("http://127.0.0.1:8000", "names no model"),
    ("http://127.0.0.1:8000/", "names no model"),
    ("http://127.0.0.1:8000/lcie/v1", "version must be a whole number"),
    ("http://127.0.0.1:8000/lcie/0", "version must be a whole number"),
    ("http://127.0.0.1:8000/repo/lcie/1", "/MODEL or /MODEL/VERSION"),
    ("http://127.0.0.1:99999/lcie", "port must be a number"),
    ("http://user:secret@127.0.0.1:8000/lcie", "credentials"),
    ("http://127.0.0.1:8000/lcie?version=1", "query"),
    ("http://:8000/lcie", "no host"),
])
def test_malformed_urls_are_refused_naming_the_problem(url, problem):
    with pytest.raises(BackendError, match="not a Triton model URL") as caught:
        Tagger.load(url)
    assert problem in str(caught.value) and url in str(caught.value)


def test_url_parts():
    url = parse_triton_url("HTTPS://[::1]:8443/lcie_trt_fp16/2/")
    assert (url.scheme, url.host, url.port, url.model, url.version) == ("https", "::1", 8443, "lcie_trt_fp16", "2")
    assert url.server == "[::1]:8443" and str(url) == "https://[::1]:8443/lcie_trt_fp16/2"


def test_unreachable_server_names_the_url():
    with socket.socket() as probe:  # a port nothing listens on: bound, then closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(BackendError, match=rf"Triton server http://127\.0\.0\.1:{port} is unreachable"):
        TritonBackend(f"http://127.0.0.1:{port}/{MODEL}", connection_timeout=2.0, network_timeout=2.0)


def test_a_server_that_never_answers_times_out():
    with socket.socket() as silent:  # accepts connections (the backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        with pytest.raises(BackendError, match=rf"http://127\.0\.0\.1:{port} is unreachable \(timed out\)"):
            TritonBackend(f"http://127.0.0.1:{port}/{MODEL}", connection_timeout=0.5, network_timeout=0.5)


def test_backend_serves_other_threads_and_refuses_after_close(server, graph):
    """tritonclient's gevent sockets belong to one thread: each thread gets its own client."""
    _, meta = graph
    size = meta.preprocess.input_size
    batch = np.random.default_rng(3).standard_normal((2, 3, size, size)).astype(np.float32)  # (2, 3, S, S)
    backend = TritonBackend(f"{server.url}/{MODEL}")
    here = backend.infer(batch)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        there = [future.result(timeout=30) for future in [pool.submit(backend.infer, batch) for _ in range(4)]]
    assert all(np.array_equal(logits, here) for logits in there)
    backend.close()
    with pytest.raises(BackendError, match="the backend is closed"):
        backend.infer(batch)


@pytest.mark.parametrize(("model", "message"), [
    ("nope", r"nope: not ready on the server: Request for unknown model: 'nope' is not found \(HTTP 400\)"),
    ("not_loaded", r"not_loaded: not ready on the server: Request for unknown model: 'not_loaded' has no available"),
    ("plain_onnx", r"plain_onnx: its config has no parameter 'lcie_metadata': not exported by lcie-fast export-triton"),
    ("mismatch", r"mismatch: its config contradicts its lcie_metadata: input 'images' has dims \['3', '\d+', '\d+'\], "
                 r"expected \[3, \d+, \d+\]"),
    (f"{MODEL}/7", rf"{MODEL}/7: not ready on the server: Request for unknown model: '{MODEL}' version 7 is not found"),
])
def test_models_the_client_cannot_use_are_refused_naming_them(server, model, message):
    with pytest.raises(BackendError, match=rf"Triton model {server.url}/{message}"):
        Tagger.load(f"{server.url}/{model}")


def test_backend_and_model_kind_must_agree(server, graph):
    with pytest.raises(BackendError, match="URL of a model on a Triton server: backend 'onnxruntime' runs local files"):
        Tagger.load(f"{server.url}/{MODEL}", backend="onnxruntime")
    with pytest.raises(BackendError, match=r"backend 'triton' runs a model on a Triton Inference Server: pass its URL"):
        Tagger.load(graph[0], backend="triton")


def test_server_errors_become_backend_errors_with_the_servers_message(server, graph):
    _, meta = graph
    size = meta.preprocess.input_size
    backend = TritonBackend(f"{server.url}/{MODEL}")
    try:
        with pytest.raises(BackendError, match=rf"Triton model {server.url}/{MODEL}: inference of a batch of 2 failed: "
                                               r"unexpected shape for input 'images'.*\(HTTP 400\)"):
            backend.infer(np.zeros((2, 3, size + 2, size + 2), np.float32))
    finally:
        backend.close()


def test_fake_server_enforces_max_batch_and_speaks_json_tensors(server, graph):
    """What the split test relies on: the fake refuses a batch above max_batch_size as Triton does; and its
    JSON tensor form gives the binary form's logits."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    _, meta = graph
    size = meta.preprocess.input_size
    batch = np.random.default_rng(2).standard_normal((MAX_BATCH + 1, 3, size, size)).astype(np.float32)
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=10.0)
    try:
        def run(images, binary):
            tensor = httpclient.InferInput("images", list(images.shape), "FP32")
            tensor.set_data_from_numpy(images, binary_data=binary)
            outputs = [httpclient.InferRequestedOutput("logits", binary_data=binary)]
            return client.infer(MODEL, [tensor], outputs=outputs).as_numpy("logits")

        with pytest.raises(InferenceServerException, match=f"batch-size must be <= {MAX_BATCH} for '{MODEL}'"):
            run(batch, True)
        assert np.allclose(run(batch[:2], False), run(batch[:2], True), rtol=0, atol=1e-6)
    finally:
        client.close()


def test_fake_server_bounds_requests_and_stops_by_itself(tmp_path):
    """The fake server's own limits: a POST needs a Content-Length within the cap, and the server stops after its
    lifetime even when nobody stops it."""
    with FakeTritonServer(tmp_path, lifetime_s=1.0, max_request_bytes=1000) as fake:
        port = int(fake.url.rsplit(":", 1)[1])

        def post(body, headers):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                connection.putrequest("POST", f"/v2/models/{MODEL}/infer", skip_accept_encoding=True)
                for key, value in headers.items():
                    connection.putheader(key, value)
                connection.endheaders(body)
                response = connection.getresponse()
                return response.status, json.loads(response.read())
            finally:
                connection.close()

        assert post(b"{}", {}) == (411, {"error": "Content-Length required"})
        status, reply = post(b"", {"Content-Length": "5000"})
        assert status == 413 and "exceeds 1000" in reply["error"]
        assert post(b"{}", {"Content-Length": "2"}) == (400, {"error": f"Request for unknown model: '{MODEL}' is not found"})
        time.sleep(1.5)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
