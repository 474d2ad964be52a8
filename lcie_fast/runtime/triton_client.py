"""Triton Inference Server backend: a model served by Triton, reached over HTTP with ``tritonclient``.

``open_backend("http://HOST:PORT/MODEL[/VERSION]")`` (and so ``Tagger.load(url)`` and ``lcie-fast tag
URL ...``) gives a :class:`TritonBackend`. Everything the client needs comes from the server: every model
folder written by ``lcie-fast export-triton`` carries, in its ``config.pbtxt``, the parameter
:data:`~lcie_fast.artifacts.TRITON_METADATA_PARAMETER` holding the JSON of
:func:`~lcie_fast.artifacts.triton_model_metadata` (labels, preprocessing, thresholds, precision, input and
output names), which Triton returns with the model's configuration. So no file is needed here, and the
images are decoded, resized and normalised on this machine exactly as for a local model; only the
normalised float32 batch travels (as binary tensor data), and only the logits come back.

A batch goes out in as many requests as it takes to keep each within the model's ``max_batch_size`` and
within a request size (``max_request_bytes``: the binary tensor bytes plus the JSON header), whose default
stays just under tritonserver's default ``--http-max-input-size`` of 64 MiB: a full batch of 32 448-pixel
FP32 images (77 MB) would otherwise be refused with HTTP 413. ``tritonclient.http`` is
imported at first use (extra ``triton-client``). Its client runs on gevent, whose sockets belong to the
thread that made them (another thread gets "Cannot switch to a different thread"), so the backend keeps
one client per thread that calls it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import urllib.parse
from typing import Any

import numpy as np

from .._optional import require
from ..artifacts import TRITON_METADATA_PARAMETER, read_triton_model_metadata
from ..errors import InvalidInputError
from ..metadata import MetadataError
from .base import Backend, BackendError

_URL = re.compile(r"^https?://", re.IGNORECASE)
URL_FORM = "http[s]://HOST:PORT/MODEL[/VERSION]"
SERVER_DEFAULT_MAX_INPUT = 64 << 20  # tritonserver --http-max-input-size default (HTTP_DEFAULT_MAX_INPUT_SIZE, 1 << 26)
DEFAULT_MAX_REQUEST_BYTES = SERVER_DEFAULT_MAX_INPUT - (64 << 10)  # 64 KiB of slack under the server's default


def is_server_url(model: Any) -> bool:
    """Whether ``model`` is an ``http://`` or ``https://`` URL (a string), which names a model on a Triton server."""
    return isinstance(model, str) and bool(_URL.match(model))


@dataclasses.dataclass(frozen=True)
class TritonURL:
    """A model on a Triton server, parsed from ``http[s]://HOST:PORT/MODEL[/VERSION]``.

    Attributes:
        scheme: ``http`` or ``https``.
        host: Host name or address (an IPv6 address without brackets).
        port: TCP port of Triton's HTTP endpoint (8000 by default on the server).
        model: The model's name in the repository.
        version: The version asked for, or ``""``: the server's version policy chooses.
    """

    scheme: str
    host: str
    port: int
    model: str
    version: str = ""

    @property
    def server(self) -> str:
        """``HOST:PORT`` as ``tritonclient`` takes it (no scheme)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def server_url(self) -> str:
        """``http[s]://HOST:PORT``."""
        return f"{self.scheme}://{self.server}"

    def __str__(self) -> str:
        return f"{self.server_url}/{self.model}" + (f"/{self.version}" if self.version else "")


def parse_triton_url(url: str) -> TritonURL:
    """``http[s]://HOST:PORT/MODEL[/VERSION]`` -> :class:`TritonURL`.

    Raises:
        BackendError: not of that form, naming the URL and what is wrong (scheme, host, port, model,
            version, a query or credentials).
    """
    def refuse(problem: str) -> BackendError:
        return BackendError(f"{url!r} is not a Triton model URL: {problem} (expected {URL_FORM}, e.g. "
                            "http://127.0.0.1:8000/lcie_onnx_fp32)")

    if not isinstance(url, str):
        raise refuse(f"expected a string, got {type(url).__name__}")
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise refuse(f"the scheme must be http or https, not {parts.scheme!r}")
    if parts.username is not None or parts.password is not None:
        raise refuse("credentials in the URL are not supported")
    if not parts.hostname:
        raise refuse("no host")
    try:
        port = parts.port
    except ValueError:
        raise refuse("the port must be a number from 1 to 65535") from None
    if not port:
        raise refuse("no port (Triton's HTTP endpoint listens on 8000 unless --http-port says otherwise)")
    if parts.query or parts.fragment:
        raise refuse("a query or fragment is not part of a model URL")
    path = parts.path[:-1] if parts.path.endswith("/") else parts.path
    segments = path.split("/")[1:] if path else []
    if not segments:
        raise refuse("it names no model")
    if len(segments) > 2 or any(s in ("", ".", "..") for s in segments):
        raise refuse(f"the path must be /MODEL or /MODEL/VERSION, got {parts.path!r}")
    version = segments[1] if len(segments) == 2 else ""
    if version and not (version.isdigit() and int(version) >= 1):
        raise refuse(f"the version must be a whole number >= 1, got {version!r}")
    return TritonURL(scheme, parts.hostname, port, urllib.parse.unquote(segments[0]), version)


def _dims(values: Any) -> list[int] | None:
    """Config dims as ints (Triton's JSON may give int64 fields as numbers or as strings), None if not numbers."""
    try:
        return [int(value) for value in values]
    except (TypeError, ValueError):
        return None


def config_problems(config: dict[str, Any], document: dict[str, Any], num_classes: int, size: int) -> list[str]:
    """What in a model's Triton configuration (its JSON view) contradicts its lcie-fast metadata.

    Args:
        config: The configuration as ``GET /v2/models/<m>/config`` returns it.
        document: The model's Triton metadata (:func:`~lcie_fast.artifacts.triton_model_metadata`).
        num_classes: Labels of the model (the logits' width).
        size: Input side S of the (N, 3, S, S) images.

    Returns:
        One line per problem, each naming the tensor and field; empty when the two agree.
    """
    problems = []
    max_batch = config.get("max_batch_size", 0)
    try:
        max_batch = int(max_batch)
    except (TypeError, ValueError):
        return [f"max_batch_size {max_batch!r} is not a number"]
    if max_batch < 0:
        problems.append(f"max_batch_size {max_batch} is negative")
    meta_input = document.get("input") or {}
    if meta_input.get("datatype") != "FP32" or meta_input.get("normalised") is not True:
        problems.append(f"lcie_metadata describes input {meta_input.get('name')!r} as {meta_input.get('datatype')!r}"
                        f"{'' if meta_input.get('normalised') else ', not normalised'}: this client sends normalised FP32")
    logits = [o.get("name") for o in document.get("outputs", []) if isinstance(o, dict) and o.get("activation") == "none"]
    if not logits:
        problems.append("lcie_metadata lists no logits output (activation 'none')")
    checks = [("input", meta_input.get("name"), [3, size, size])] + [("output", name, [num_classes]) for name in logits[:1]]
    for role, name, shape in checks:
        declared = {t.get("name"): t for t in config.get(role, []) if isinstance(t, dict)}
        tensor = declared.get(name)
        if tensor is None:
            problems.append(f"the config has no {role} {name!r} (its {role}s: {sorted(map(str, declared))})")
            continue
        if tensor.get("data_type") != "TYPE_FP32":
            problems.append(f"{role} {name!r} has data_type {tensor.get('data_type')!r}, expected 'TYPE_FP32'")
        want = shape if max_batch > 0 else [-1, *shape]
        if _dims(tensor.get("dims", [])) != want:
            rule = ("dims exclude the batch when max_batch_size > 0" if max_batch > 0
                    else "with max_batch_size 0 the dims include the batch, -1")
            problems.append(f"{role} {name!r} has dims {tensor.get('dims')}, expected {want} ({rule})")
    return problems


class TritonBackend(Backend):
    """A model served by Triton Inference Server, exported by ``lcie-fast export-triton`` (module docstring).

    Attributes:
        url: The parsed model URL.
        kind: What the server runs: ``onnx`` or ``tensorrt`` (from the model's metadata).
        sha256: sha256 of the served graph (for an engine: of the graph it was built from).
        default_thresholds: The per-label thresholds the model was exported with ({label: t}), or None:
            :meth:`lcie_fast.tagger.Tagger.load` uses them when no thresholds are given.
        document: The whole lcie-fast Triton metadata of the model.
        config: The model's configuration as the server returned it.

    Args:
        url: ``http[s]://HOST:PORT/MODEL[/VERSION]``.
        connection_timeout: Seconds to wait for a connection to the server.
        network_timeout: Seconds to wait for any reply (an inference of one batch included).
        max_request_bytes: Largest inference request to send, in bytes: the binary FP32 images plus the
            request's JSON header. The default, :data:`DEFAULT_MAX_REQUEST_BYTES`, stays 64 KiB under
            tritonserver's default ``--http-max-input-size`` (64 MiB); raise both together for larger
            requests, or lower this one for a server started with a smaller limit.

    Raises:
        BackendError: a malformed URL; the server unreachable or not live; the model unknown or not
            ready; its config without lcie-fast metadata, or contradicting it; one image of the model
            larger than ``max_request_bytes``. Each names the URL.
        InvalidInputError: ``max_request_bytes`` is not a positive whole number.
        MissingDependencyError: ``tritonclient[http]`` is not installed (extra ``triton-client``).
    """

    name = "triton"

    def __init__(self, url: str, *, connection_timeout: float = 10.0, network_timeout: float = 120.0,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
        if isinstance(max_request_bytes, bool) or not isinstance(max_request_bytes, int) or max_request_bytes < 1:
            raise InvalidInputError(f"max_request_bytes must be a positive whole number of bytes, got "
                                    f"{max_request_bytes!r:.40}")
        self.max_request_bytes = max_request_bytes
        self.url = parse_triton_url(url)
        self.device = "cpu"  # images are normalised on this machine's CPU; the server picks its own devices
        self._http = require("tritonclient.http", "the Triton backend (a model URL, tag --backend triton)")
        self._errors = _network_errors()
        self._timeouts = connection_timeout, network_timeout
        self._local = threading.local()
        self._clients: list[Any] = []  # every thread's client, closed by close()
        self._lock = threading.Lock()
        try:
            self._connect(self.client)
        except BaseException:
            self.close()
            raise

    @property
    def client(self) -> Any:
        """This thread's ``tritonclient.http.InferenceServerClient`` (made at first use in each thread).

        Raises:
            BackendError: the backend is closed, or tritonclient cannot use the address.
        """
        if self._clients is None:
            raise BackendError(f"Triton model {self.url}: the backend is closed")
        client = getattr(self._local, "client", None)
        if client is None:
            try:
                client = self._http.InferenceServerClient(self.url.server, connection_timeout=self._timeouts[0],
                                                          network_timeout=self._timeouts[1],
                                                          ssl=self.url.scheme == "https")
            except Exception as err:  # noqa: BLE001 - tritonclient raises plain Exception for a URL it cannot use
                raise BackendError(f"{self.url}: tritonclient cannot use this address: {err}") from None
            with self._lock:
                self._clients.append(client)
            self._local.client = client
        return client

    def _connect(self, client: Any) -> None:
        url, model, version = self.url, self.url.model, self.url.version
        try:
            live = client.is_server_live()
        except self._errors as err:
            raise BackendError(f"Triton server {url.server_url} is unreachable ({_reason(err)}): is it running, "
                               f"and is {url.port} its HTTP port?") from None
        if not live:
            raise BackendError(f"{url.server_url} answers, but GET /v2/health/live does not say live: is it a Triton "
                               "server's HTTP port, and is the server up?")
        try:
            ready = client.is_model_ready(model, version)
            if not ready:
                try:
                    client.get_model_metadata(model, version)
                    why = "the server knows it but it is not ready (still loading, or failed to load: see the server's log)"
                except self._errors as err:
                    why = _reason(err)
                raise BackendError(f"Triton model {url}: not ready on the server: {why}")
            self.config = client.get_model_config(model, version)
        except self._errors as err:
            raise BackendError(f"Triton model {url}: {_reason(err)}") from None
        parameter = (self.config.get("parameters") or {}).get(TRITON_METADATA_PARAMETER) or {}
        text = parameter.get("string_value") if isinstance(parameter, dict) else None
        if not text:
            raise BackendError(f"Triton model {url}: its config has no parameter {TRITON_METADATA_PARAMETER!r}: not "
                               "exported by lcie-fast export-triton (the client reads labels and preprocessing from it)")
        try:
            self.meta, self.document = read_triton_model_metadata(text, f"Triton model {url}, config parameter "
                                                                        f"{TRITON_METADATA_PARAMETER!r}")
        except MetadataError as err:
            raise BackendError(str(err)) from None
        size = self.meta.preprocess.input_size
        problems = config_problems(self.config, self.document, self.meta.num_classes, size)
        if problems:
            raise BackendError(f"Triton model {url}: its config contradicts its lcie_metadata: " + "; ".join(problems))
        self.precision = str(self.document.get("precision") or self.meta.precision)
        self.kind = str(self.document.get("kind", ""))
        self.sha256 = str(self.document.get("sha256", ""))
        thresholds = self.document.get("thresholds")
        if thresholds is not None and not (isinstance(thresholds, dict) and set(thresholds) <= set(self.meta.label_names)
                                           and all(_probability(value) for value in thresholds.values())):
            raise BackendError(f"Triton model {url}: lcie_metadata field 'thresholds' must map the model's labels to "
                               f"numbers in [0, 1] (or be null), got {str(thresholds)[:200]}")
        self.default_thresholds = dict(thresholds) if thresholds else None
        self.input_name = self.document["input"]["name"]
        self.output_name = next(o["name"] for o in self.document["outputs"] if o.get("activation") == "none")
        self._max_batch = int(self.config.get("max_batch_size", 0)) or None
        self.images_per_request(1, (3, size, size))  # one image above max_request_bytes: refused now, not per batch

    @property
    def label(self) -> str:
        return f"{self.name} {self.precision} ({self.url})"

    @property
    def max_batch(self) -> int | None:
        """The model's ``max_batch_size`` (None when 0: the model takes any batch)."""
        return self._max_batch

    def images_per_request(self, count: int, image_shape: tuple[int, ...]) -> int:
        """How many of ``count`` images of ``image_shape`` one request carries.

        At most :attr:`max_batch`, and few enough that the request (FP32 tensor bytes plus the JSON
        header) stays within :attr:`max_request_bytes`.

        Args:
            count: Images to send (N).
            image_shape: Shape of one image, (3, S, S).

        Returns:
            The images per request, from 1 to ``max(count, 1)`` (or to :attr:`max_batch`).

        Raises:
            BackendError: a request of one image is larger than ``max_request_bytes``, naming the sizes
                and the server option to raise.
        """
        image_bytes = 4 * int(np.prod(image_shape))
        most = self._max_batch or max(count, 1)
        header = self._header_bytes(most, image_shape)  # grows with the digits of the batch: `most` bounds it
        fit = (self.max_request_bytes - header) // max(image_bytes, 1)
        if fit < 1:
            shape = "x".join(str(dim) for dim in image_shape)
            raise BackendError(f"Triton model {self.url}: a request of one {shape} FP32 image is {image_bytes + header} "
                               f"bytes ({image_bytes} of tensor, about {header} of JSON header), above the request limit "
                               f"max_request_bytes={self.max_request_bytes}: start tritonserver with a larger "
                               f"--http-max-input-size (its default is {SERVER_DEFAULT_MAX_INPUT} bytes) and pass "
                               f"TritonBackend(max_request_bytes=...) up to it")
        return min(most, fit)

    def _header_bytes(self, batch: int, image_shape: tuple[int, ...]) -> int:
        """Bytes of the JSON header of a request of ``batch`` images (KServe v2 with the binary tensor extension).

        tritonclient writes the same fields (input name, shape, datatype, ``binary_data_size``; each output
        with ``binary_data``); 256 bytes more cover spacing and fields another tritonclient version may add.
        """
        header = {"inputs": [{"name": self.input_name, "shape": [batch, *image_shape], "datatype": "FP32",
                              "parameters": {"binary_data_size": 4 * batch * int(np.prod(image_shape))}}],
                  "outputs": [{"name": self.output_name, "parameters": {"binary_data": True}}]}
        return len(json.dumps(header).encode()) + 256

    def infer(self, images: Any) -> np.ndarray:
        """Normalised float32 (N, 3, S, S) -> (N, C) logits, sent in requests of :meth:`images_per_request` images.

        Raises:
            BackendError: one image is larger than the request limit, the server refused a request or
                failed (its message, HTTP status and the model named), the connection broke, or the
                reply has the wrong shape.
        """
        if hasattr(images, "detach"):
            images = images.detach().float().cpu().numpy()
        array = np.ascontiguousarray(images, dtype=np.float32)  # (N, 3, S, S)
        step = self.images_per_request(len(array), array.shape[1:])
        return np.concatenate([self._request(array[start:start + step]) for start in range(0, len(array), step)]
                              or [np.zeros((0, self.meta.num_classes), np.float32)])

    def _request(self, batch: np.ndarray) -> np.ndarray:
        """One inference request: (n, 3, S, S) -> (n, C)."""
        tensor = self._http.InferInput(self.input_name, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=True)
        wanted = [self._http.InferRequestedOutput(self.output_name, binary_data=True)]
        try:
            result = self.client.infer(self.url.model, [tensor], model_version=self.url.version, outputs=wanted)
            logits = result.as_numpy(self.output_name)
        except self._errors as err:
            hint = ""
            if _status(err) == "413":  # Request Entity Too Large
                hint = (f"; the server refused {batch.nbytes} bytes of images, so its --http-max-input-size is below "
                        f"this client's max_request_bytes ({self.max_request_bytes}): lower max_request_bytes or "
                        f"raise the server's limit")
            raise BackendError(f"Triton model {self.url}: inference of a batch of {len(batch)} failed: "
                               f"{_reason(err)}{hint}") from None
        if logits is None or logits.shape != (len(batch), self.meta.num_classes):
            got = "no output" if logits is None else f"shape {list(logits.shape)}"
            raise BackendError(f"Triton model {self.url}: output {self.output_name!r} has {got}, expected "
                               f"[{len(batch)}, {self.meta.num_classes}]")
        return logits.astype(np.float32, copy=False)  # (n, C)

    def close(self) -> None:
        """Close every thread's client (its connections); a later :meth:`infer` raises BackendError."""
        with self._lock:
            clients, self._clients = self._clients or [], None
        for client in clients:
            client.close()


def _probability(value: Any) -> bool:
    """Whether ``value`` is a real number in [0, 1] (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _network_errors() -> tuple[type[BaseException], ...]:
    """What a tritonclient HTTP call raises for a server error or a broken connection."""
    import http.client

    from tritonclient.utils import InferenceServerException

    return InferenceServerException, OSError, http.client.HTTPException


def _status(err: BaseException) -> str | None:
    """The HTTP status of a tritonclient server error, as text (``"413"``); None for other errors."""
    status = err.status() if callable(getattr(err, "status", None)) else None
    return None if status is None else str(status)


def _reason(err: BaseException) -> str:
    """One line: the server's message and HTTP status for a server error, else the exception."""
    message = err.message() if callable(getattr(err, "message", None)) else str(err)
    status = _status(err)
    text = " ".join(str(message or type(err).__name__).split())[:500]
    return f"{text} (HTTP {status})" if status else text
