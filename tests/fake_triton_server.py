"""A small fake Triton Inference Server for tests: the KServe v2 HTTP protocol over a model repository,
each model's ONNX graph run by ONNX Runtime on the CPU.

It serves what :class:`lcie_fast.runtime.triton_client.TritonBackend` (through ``tritonclient.http``)
asks of a real server: health, model readiness, metadata and configuration, and inference in both
request forms, JSON tensors and Triton's binary tensor extension (a JSON header of
``Inference-Header-Content-Length`` bytes, then each input's raw bytes in order, sized by its
``binary_data_size`` parameter; outputs returned the same way when asked for). The model's
``config.pbtxt`` is parsed with Triton's own schema (:func:`lcie_fast.deploy.triton_proto.parse_model_config`)
and returned as the JSON view the server gives; ``max_batch_size`` is enforced with Triton's error.

Bounded for tests: it listens on 127.0.0.1 only (port 0: the system picks a free one), refuses a POST
without ``Content-Length`` or larger than ``max_request_bytes``, times out idle sockets, and stops by
itself after ``lifetime_s`` seconds. Use it as a context manager::

    with FakeTritonServer(repo) as server:
        Tagger.load(f"{server.url}/lcie_onnx_fp32")
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from lcie_fast.deploy.triton_proto import config_as_json, parse_model_config

# config.pbtxt data types <-> KServe v2 tensor data types (the ones an lcie-fast model uses)
_TO_V2 = {"TYPE_FP32": "FP32", "TYPE_FP16": "FP16", "TYPE_INT64": "INT64", "TYPE_UINT8": "UINT8"}
_NUMPY = {"FP32": np.float32, "FP16": np.float16, "INT64": np.int64, "UINT8": np.uint8}
_ROUTE = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/config|/infer)?$")


class RequestError(Exception):
    """A request the server answers with an error JSON (HTTP 400 unless ``status`` says)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class FakeModel:
    """One model folder of the repository: its parsed config and, once loaded, its ONNX Runtime session."""

    name: str
    config: dict[str, Any]
    versions: list[str]
    session: Any = None
    load_error: str | None = None

    @property
    def max_batch_size(self) -> int:
        return int(self.config.get("max_batch_size", 0))


def load_repository(repository: Path) -> dict[str, FakeModel]:
    """Every ``<repository>/<model>/config.pbtxt`` with its versions; a model that cannot load keeps the reason
    (it is then known but not ready, as in Triton)."""
    import onnxruntime

    models = {}
    for folder in sorted(path for path in Path(repository).iterdir() if (path / "config.pbtxt").is_file()):
        try:
            parsed = parse_model_config((folder / "config.pbtxt").read_text(), folder / "config.pbtxt")
        except Exception as err:  # noqa: BLE001 - any failure leaves the model unavailable, as in the server
            models[folder.name] = FakeModel(folder.name, {"name": folder.name}, [], load_error=str(err))
            continue
        config = config_as_json(parsed)
        config.setdefault("name", folder.name)
        versions = sorted((path.name for path in folder.iterdir() if path.is_dir() and path.name.isdigit()), key=int)
        model = FakeModel(folder.name, config, versions)
        graph = folder / versions[-1] / config.get("default_model_filename", "model.onnx") if versions else None
        if graph is None or not graph.is_file():
            model.load_error = f"failed to load '{folder.name}': no model file {graph}"
        else:
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3
            options.intra_op_num_threads = 1
            model.session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        models[folder.name] = model
    return models


class _QuietServer(ThreadingHTTPServer):
    """A client that drops its connection mid-reply (a timeout, a closed client) is no test failure: not printed."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class FakeTritonServer:
    """The fake server, started in a daemon thread by ``with`` (or :meth:`start`), stopped by :meth:`stop`,
    at the end of the ``with`` block, or by itself after ``lifetime_s`` seconds.

    Attributes:
        url: ``http://127.0.0.1:PORT`` once started.
        infer_batches: The batch size of every inference request served, in order (all models).
        requests: ``(method, path)`` of every request received, in order.

    Args:
        repository: The model repository folder (``<repo>/<model>/config.pbtxt``, ``<repo>/<model>/1/model.onnx``).
        lifetime_s: Seconds after :meth:`start` when the server stops by itself.
        max_request_bytes: Largest request body accepted (413 above it).
        socket_timeout_s: A connection idle this long is closed.
    """

    def __init__(self, repository: str | Path, *, lifetime_s: float = 60.0, max_request_bytes: int = 64 << 20,
                 socket_timeout_s: float = 10.0) -> None:
        self.models = load_repository(Path(repository))
        self.lifetime_s = lifetime_s
        self.max_request_bytes = max_request_bytes
        self.socket_timeout_s = socket_timeout_s
        self.infer_batches: list[int] = []
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._httpd: _QuietServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self.url = ""

    def __enter__(self) -> FakeTritonServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> FakeTritonServer:
        handler = type("Handler", (_Handler,), {"fake": self, "timeout": self.socket_timeout_s})
        self._httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-triton", daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket (idempotent)."""
        httpd, self._httpd = self._httpd, None
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    # ---------------------------------------------------------------- protocol
    def model(self, name: str, version: str | None, ready: bool = True) -> FakeModel:
        model = self.models.get(name)
        if model is None:
            raise RequestError(f"Request for unknown model: '{name}' is not found")
        if ready and model.session is None:
            raise RequestError(f"Request for unknown model: '{name}' has no available versions ({model.load_error})")
        if version is not None and version not in model.versions:
            raise RequestError(f"Request for unknown model: '{name}' version {version} is not found")
        return model

    def metadata(self, model: FakeModel) -> dict[str, Any]:
        batch = [-1] if model.max_batch_size > 0 else []

        def tensors(key: str) -> list[dict[str, Any]]:
            return [{"name": t["name"], "datatype": _TO_V2.get(t.get("data_type", ""), "FP32"),
                     "shape": batch + [int(d) for d in t.get("dims", [])]} for t in model.config.get(key, [])]

        return {"name": model.name, "versions": model.versions, "platform": "onnxruntime_onnx",
                "inputs": tensors("input"), "outputs": tensors("output")}

    def infer(self, model: FakeModel, version: str | None, header: dict[str, Any],
              binary: bytes) -> tuple[dict[str, Any], bytes]:
        """One inference request -> (response JSON, binary output bytes)."""
        declared = {t["name"]: t for t in model.config.get("input", [])}
        feeds, offset = {}, 0
        for tensor in header.get("inputs", []):
            name, shape, datatype = tensor.get("name"), [int(d) for d in tensor.get("shape", [])], tensor.get("datatype")
            if name not in declared:
                raise RequestError(f"unexpected inference input '{name}' for model '{model.name}'")
            expected = [int(d) for d in declared[name].get("dims", [])]
            if datatype != _TO_V2.get(declared[name].get("data_type")):
                raise RequestError(f"inference input '{name}' data-type is '{datatype}', but model '{model.name}' "
                                   f"expects '{_TO_V2.get(declared[name].get('data_type'))}'")
            if model.max_batch_size > 0:
                if not shape or shape[0] > model.max_batch_size:
                    raise RequestError(f"inference request batch-size must be <= {model.max_batch_size} for "
                                       f"'{model.name}'")
                dims = shape[1:]
            else:
                dims = shape
            if len(dims) != len(expected) or any(e != -1 and e != d for e, d in zip(expected, dims)):
                raise RequestError(f"unexpected shape for input '{name}' for model '{model.name}'. Expected "
                                   f"{expected}, got {dims}")
            dtype = _NUMPY[datatype]
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            parameters = tensor.get("parameters", {})
            if "binary_data_size" in parameters:
                if int(parameters["binary_data_size"]) != size or offset + size > len(binary):
                    raise RequestError(f"unexpected total byte size {parameters['binary_data_size']} for input '{name}', "
                                       f"expecting {size}")
                array = np.frombuffer(binary, dtype=dtype, count=size // np.dtype(dtype).itemsize, offset=offset)
                offset += size
            elif "data" in tensor:
                array = np.asarray(tensor["data"], dtype=dtype)
                if array.size * np.dtype(dtype).itemsize != size:
                    raise RequestError(f"unexpected number of values for input '{name}'")
            else:
                raise RequestError(f"input '{name}' has neither data nor binary_data_size")
            feeds[name] = array.reshape(shape)
        if set(feeds) != set(declared):
            raise RequestError(f"expected {len(declared)} inputs but got {len(feeds)} inputs for model '{model.name}'")
        if offset != len(binary):
            raise RequestError(f"unexpected additional input data for model '{model.name}'")
        known = [t["name"] for t in model.config.get("output", [])]
        wanted = header.get("outputs") or [{"name": name, "parameters": {
            "binary_data": bool(header.get("parameters", {}).get("binary_data_output", False))}} for name in known]
        for output in wanted:
            if output.get("name") not in known:
                raise RequestError(f"unexpected inference output '{output.get('name')}' for model '{model.name}'")
        values = model.session.run([output["name"] for output in wanted], feeds)
        with self.lock:
            self.infer_batches.append(next(iter(feeds.values())).shape[0])
        outputs, chunks = [], []
        for output, value in zip(wanted, values):
            value = np.ascontiguousarray(value, dtype=np.float32)
            entry = {"name": output["name"], "datatype": "FP32", "shape": list(value.shape)}
            if output.get("parameters", {}).get("binary_data", False):
                chunks.append(value.tobytes())
                entry["parameters"] = {"binary_data_size": len(chunks[-1])}
            else:
                entry["data"] = value.ravel().tolist()
            outputs.append(entry)
        response = {"model_name": model.name, "model_version": version or model.versions[-1], "outputs": outputs}
        if "id" in header:
            response["id"] = header["id"]
        return response, b"".join(chunks)


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive (what tritonclient's connection pool uses); every reply has a Content-Length."""

    fake: FakeTritonServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        """Quiet: tests read :attr:`FakeTritonServer.requests` instead."""

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: dict[str, Any]) -> None:
        self._send(status, json.dumps(data).encode())

    def _route(self) -> tuple[str, str | None, str] | None:
        match = _ROUTE.match(self.path.split("?", 1)[0])
        return (match["model"], match["version"], match["action"] or "") if match else None

    def do_GET(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's naming
        with self.fake.lock:
            self.fake.requests.append(("GET", self.path))
        path = self.path.split("?", 1)[0]
        if path in ("/v2/health/live", "/v2/health/ready"):
            return self._send(200, b"")
        route = self._route()
        if route is None or route[2] == "/infer":
            return self._json(404, {"error": "Not Found"})
        name, version, action = route
        try:
            model = self.fake.model(name, version, ready=action != "/config")
        except RequestError as err:
            return self._json(err.status, {"error": str(err)})
        if action == "/ready":
            return self._send(200, b"")
        return self._json(200, model.config if action == "/config" else self.fake.metadata(model))

    def do_POST(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's naming
        with self.fake.lock:
            self.fake.requests.append(("POST", self.path))
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            return self._json(411, {"error": "Content-Length required"})
        if int(length) > self.fake.max_request_bytes:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            return self._json(413, {"error": f"request of {length} bytes exceeds {self.fake.max_request_bytes}"})
        body = self.rfile.read(int(length))
        route = self._route()
        if route is None or route[2] != "/infer":
            return self._json(404, {"error": "Not Found"})
        try:
            if self.headers.get("Content-Encoding"):
                raise RequestError("compressed requests are not supported by this fake server")
            split = self.headers.get("Inference-Header-Content-Length")
            split = int(split) if split is not None else len(body)
            if not 0 <= split <= len(body):
                raise RequestError(f"Inference-Header-Content-Length {split} is outside the body of {len(body)} bytes")
            try:
                header = json.loads(body[:split])
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise RequestError(f"failed to parse the request JSON: {err}") from None
            model = self.fake.model(route[0], route[1])
            response, binary = self.fake.infer(model, route[1], header, body[split:])
        except RequestError as err:
            return self._json(err.status, {"error": str(err)})
        except Exception as err:  # noqa: BLE001 - a model failure is a 500 with its message, as in Triton
            return self._json(500, {"error": f"{type(err).__name__}: {err}"})
        text = json.dumps(response).encode()
        if binary:
            return self._send(200, text + binary, "application/octet-stream",
                              {"Inference-Header-Content-Length": str(len(text))})
        return self._send(200, text)
