"""LCIE tags out of a DeepStream pipeline: a pyds pad probe that turns nvinfer's output into records.

``lcie-fast export-deepstream`` copies this file into every bundle, beside ``lcie_deepstream.json``.
It runs on the DeepStream machine, where only ``pyds``, NumPy and the standard library can be relied
on: it imports nothing from lcie_fast (the few constants it shares with it are copied below), and
imports ``pyds`` and GStreamer only when a probe is built or called, so it imports anywhere.

Records follow lcie-fast's one record schema, as ``lcie-fast tag-video`` writes it: ``index`` (the
frame number), ``path`` (``<source>#frame=<n>``; the source is the URI the caller gave for that
``source_id``, else ``source<id>``), ``frame``, ``time`` (the buffer's timestamp in seconds),
``labels`` ([{label, score}], best first, scores rounded to 5 decimals) and ``error`` (None, or what
went wrong with that frame: the pipeline keeps running). The ``tensor-meta`` parser adds
``scores_all`` ({label: score} of every label, None where not finite). In secondary mode each record
is one object: ``object_id`` (None when no tracker gave it one), ``class_id`` (the detector's class),
``bbox`` ([left, top, width, height] in pixels) and ``&object=<id>`` (``untracked-<position>`` for an
untracked object) at the end of the path.

Where nvinfer puts its output (read in NVIDIA's gst-nvinfer sources, ``gstnvinfer_meta_utils.cpp``,
and the NvDsInferTensorMeta API reference):

- ``cpp`` parser: the bundle's parser library keeps the labels at or above their thresholds (top-k
  applied) and nvinfer attaches them as one NvDsClassifierMeta (``unique_component_id`` = the
  config's ``gie-unique-id``; one NvDsLabelInfo per label: ``result_class_id`` = the label's index,
  ``result_prob`` = its score) to the object's ``classifier_meta_list``. In primary mode
  (process-mode=1) nvinfer first adds an object covering the whole frame (``class_id`` -1, untracked)
  and attaches the classifier meta to it. Classifier metas of other components are ignored. When no
  label passes, nvinfer attaches nothing: a primary frame then gets a record with no labels (so does
  a frame nvinfer skipped, with ``interval`` > 0), and a secondary object gets no record (it cannot be
  told from an object the classifier did not run on).
- ``tensor-meta`` parser (``network-type=100``, ``output-tensor-meta=1``): an NvDsUserMeta of type
  NVDSINFER_TENSOR_OUTPUT_META holding an NvDsInferTensorMeta (``unique_id`` = gie-unique-id), on
  the frame's ``frame_user_meta_list`` in primary mode and on the object's ``obj_user_meta_list`` in
  secondary mode. Its host buffer is read as in NVIDIA's deepstream_python_apps samples
  (``pyds.get_nvds_LayerInfo`` then ``pyds.get_ptr`` and ``numpy.ctypeslib``) and copied at once;
  thresholds and top-k of ``lcie_deepstream.json`` are applied here. A frame (primary) or object
  (secondary) without that meta was not inferred (``interval``, or an object nvinfer's tracker cache
  skipped) and gets no record.

Smoothing (``ema``, weight of the newest frame, as ``tag-video``'s): only with the ``tensor-meta``
parser (the ``cpp`` parser passes only the labels above threshold, so there is nothing to average).
Default 1.0 = none, unlike ``tag-video``'s 0.5: a live pipeline's frames may be sampled (nvinfer's
``interval``) or come from several sources, so smoothing is asked for. Scores are averaged per
(source, tracked object) (per source in primary mode); untracked objects are never smoothed (their ids
are all the same); a frame with non-finite scores never enters the average; a source whose frame
numbers go back (a restarted stream) starts afresh; at most ``max_tracks`` averages are kept (the
least recently seen are dropped).
"""

from __future__ import annotations

import ctypes
import json
import math
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

# Copied from lcie_fast, which does not exist on a DeepStream machine (tests check they still agree):
DEEPSTREAM_FORMAT = "lcie_fast.deepstream"  # lcie_fast.artifacts.DEEPSTREAM_FORMAT
DEEPSTREAM_FORMAT_VERSION = 1  # lcie_fast.artifacts.DEEPSTREAM_FORMAT_VERSION
DEEPSTREAM_BUNDLE_FILE = "lcie_deepstream.json"  # lcie_fast.artifacts.DEEPSTREAM_BUNDLE_FILE
NON_FINITE = "non-finite scores from the model"  # lcie_fast.outputs.records.NON_FINITE
DECIMALS = 5  # lcie_fast.outputs.records.DECIMALS

MODES = ("primary", "secondary")
PARSERS = ("cpp", "tensor-meta")
UNTRACKED_OBJECT_ID = 0xFFFFFFFFFFFFFFFF  # nvdsmeta.h: the object_id of an object no tracker has seen
CLOCK_TIME_NONE = 0xFFFFFFFFFFFFFFFF  # GStreamer: a buffer without a timestamp
_FLOAT, _HALF = 0, 1  # NvDsInferDataType (nvdsinfer.h)

PYDS_HELP = ("pyds is NOT the PyPI package of that name (an unrelated library: pip uninstall it if it is installed); "
             "it is NVIDIA's DeepStream Python bindings: install the bindings wheel matching your DeepStream version "
             "(pyds-<version>-...-linux_<arch>.whl) from the releases of https://github.com/NVIDIA-AI-IOT/deepstream_python_apps")


class BundleError(ValueError):
    """``lcie_deepstream.json`` is missing, unreadable or not a bundle this probe reads; the message names the file and field."""


class PydsMissingError(ImportError):
    """NVIDIA's DeepStream Python bindings (``pyds``) cannot be imported."""


def _pyds() -> Any:
    """NVIDIA's ``pyds``, imported at first use.

    Raises:
        PydsMissingError: it cannot be imported, or the module named ``pyds`` is another library.
    """
    try:
        import pyds
    except ImportError as err:
        raise PydsMissingError(f"the LCIE DeepStream probe needs pyds, which cannot be imported here ({err}). "
                               f"{PYDS_HELP}") from err
    if not hasattr(pyds, "gst_buffer_get_nvds_batch_meta"):
        raise PydsMissingError(f"the module 'pyds' imported from {getattr(pyds, '__file__', None)} is not NVIDIA's "
                               f"DeepStream bindings (it has no gst_buffer_get_nvds_batch_meta). {PYDS_HELP}")
    return pyds


def _gst() -> Any:
    """GStreamer's Python bindings (``Gst``), imported at first use.

    Raises:
        ImportError: PyGObject or GStreamer's introspection data is missing.
    """
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst
    except (ImportError, ValueError) as err:
        raise ImportError(f"the LCIE DeepStream pad probe needs GStreamer's Python bindings (PyGObject with Gst 1.0; on "
                          f"Ubuntu python3-gi and python3-gst-1.0, as NVIDIA's deepstream_python_apps install them) "
                          f"({err})") from err
    return Gst


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_bundle(folder: str | Path) -> dict[str, Any]:
    """What a DeepStream bundle holds: its ``lcie_deepstream.json``, checked.

    Args:
        folder: The bundle folder (or its ``lcie_deepstream.json``).

    Returns:
        The parsed JSON: ``labels`` (C names), ``thresholds`` (C numbers in [0, 1]), ``top_k`` (None or
        >= 1), ``mode`` (primary | secondary), ``parser`` (cpp | tensor-meta), ``gie_unique_id`` (>= 1),
        ``output`` (the output layer's name), and the rest as written.

    Raises:
        BundleError: the file is missing or unreadable, not JSON, not a DeepStream bundle, of a newer
            format version, or a field is missing or malformed (a label count other than the
            thresholds' count among them); the message names the file and the field.
    """
    path = Path(folder)
    if path.is_dir():
        path = path / DEEPSTREAM_BUNDLE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleError(f"{path}: not found (lcie-fast export-deepstream writes it into the bundle folder)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BundleError(f"{path}: cannot read it: {err}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise BundleError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(data, dict) or data.get("format") != DEEPSTREAM_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise BundleError(f"{path}: not an lcie-fast DeepStream bundle (format {found!r:.60}, expected "
                          f"{DEEPSTREAM_FORMAT!r}); write one with lcie-fast export-deepstream")
    version = data.get("format_version")
    if not _is_int(version) or version < 1:
        raise BundleError(f"{path}: format_version must be a positive integer, got {version!r:.40}")
    if version > DEEPSTREAM_FORMAT_VERSION:
        raise BundleError(f"{path}: format_version {version} is newer than this probe reads ({DEEPSTREAM_FORMAT_VERSION}); "
                          f"use the probe_lcie.py of the same bundle")
    labels = data.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(name, str) and name for name in labels):
        raise BundleError(f"{path}: labels must be a non-empty list of label names")
    twice = sorted({name for name in labels if labels.count(name) > 1})
    if twice:
        raise BundleError(f"{path}: labels {twice[:5]} appear more than once")
    thresholds = data.get("thresholds")
    if not isinstance(thresholds, list) or len(thresholds) != len(labels):
        count = len(thresholds) if isinstance(thresholds, list) else type(thresholds).__name__
        raise BundleError(f"{path}: thresholds must be a list of one number per label: {count} thresholds for "
                          f"{len(labels)} labels")
    bad = [name for name, value in zip(labels, thresholds) if not _is_finite_number(value) or not 0 <= value <= 1]
    if bad:
        raise BundleError(f"{path}: thresholds must be numbers in [0, 1]; not so for {bad[:5]}")
    top_k = data.get("top_k")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise BundleError(f"{path}: top_k must be null or an integer >= 1, got {top_k!r:.40}")
    if data.get("mode") not in MODES:
        raise BundleError(f"{path}: mode must be one of {list(MODES)}, got {data.get('mode')!r:.40}")
    if data.get("parser") not in PARSERS:
        raise BundleError(f"{path}: parser must be one of {list(PARSERS)}, got {data.get('parser')!r:.40}")
    gie = data.get("gie_unique_id")
    if not _is_int(gie) or gie < 1:
        raise BundleError(f"{path}: gie_unique_id must be an integer >= 1 (the config's gie-unique-id), got {gie!r:.40}")
    output = data.get("output")
    if not isinstance(output, str) or not output:
        raise BundleError(f"{path}: output must name the model's output layer, got {output!r:.40}")
    return data


def print_record(record: dict[str, Any]) -> None:
    """The default sink: one JSON line on stdout."""
    sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _walk(node: Any, cast: Callable[[Any], Any]) -> Iterator[Any]:
    """The items of a pyds GList (``.data`` / ``.next``), each cast to its pyds type."""
    while node is not None:
        try:
            item = cast(node.data)
        except StopIteration:  # how some pyds versions end a list (NVIDIA's samples catch it too)
            return
        yield item
        try:
            node = node.next
        except StopIteration:
            return


def _source_names(sources: Mapping[int, str] | Sequence[str] | None) -> dict[int, str]:
    if sources is None:
        return {}
    if isinstance(sources, (str, bytes)):
        raise TypeError("sources: a {source_id: uri} mapping or a list of URIs in source_id order, not one string")
    items = sources.items() if isinstance(sources, Mapping) else enumerate(sources)
    return {int(source_id): str(uri) for source_id, uri in items}


class LcieProbe:
    """A GStreamer pad probe turning the LCIE nvinfer's metadata into records (see the module docstring).

    Attach it to the src pad of the nvinfer running the bundle's ``config_infer_lcie.txt`` (or any
    pad downstream of it): ``probe.attach(nvinfer)``. Each record goes to ``sink``.

    Attributes:
        bundle: The checked ``lcie_deepstream.json`` (:func:`load_bundle`).
        labels: The C label names, in the model's order.
        thresholds: (C,) float64 per-label thresholds at float32 precision (as lcie-fast's tagger and a
            C ``float`` hold them), so a score equal to its threshold is kept everywhere alike.
        top_k: At most this many labels per record (``tensor-meta`` parser), or None.
        mode: ``primary`` (records per frame) or ``secondary`` (records per object).
        parser: ``cpp`` or ``tensor-meta``.
        gie_unique_id: The nvinfer whose metadata is read.
    """

    def __init__(self, bundle_dir: str | Path, sources: Mapping[int, str] | Sequence[str] | None = None,
                 ema: float = 1.0, sink: Callable[[dict[str, Any]], None] | None = None, *,
                 gie_unique_id: int | None = None, max_tracks: int = 4096) -> None:
        """Read the bundle and import pyds.

        Args:
            bundle_dir: The bundle folder (or its ``lcie_deepstream.json``).
            sources: The URI of each source: {source_id: uri}, or a list in source_id order.
                Sources not named are called ``source<id>`` in paths.
            ema: Weight of the newest frame in the per-(source, object) moving average of scores, in
                (0, 1]; 1.0 = no smoothing. Only with the ``tensor-meta`` parser.
            sink: Called with each record (default: :func:`print_record`, JSON lines on stdout).
            gie_unique_id: Read the metadata of this nvinfer (default: the bundle's; give it when
                the config's ``gie-unique-id`` was changed).
            max_tracks: Most moving averages kept at once (least recently seen dropped first).

        Raises:
            BundleError: see :func:`load_bundle`.
            ValueError: ``ema`` outside (0, 1], smoothing asked of the ``cpp`` parser, or a bad
                ``gie_unique_id`` / ``max_tracks``.
            PydsMissingError: pyds cannot be imported (the message says where NVIDIA's comes from).
        """
        self.bundle = load_bundle(bundle_dir)
        if not _is_finite_number(ema) or not 0.0 < ema <= 1.0:
            raise ValueError(f"ema must be a number in (0, 1] (1.0: no smoothing), got {ema!r}")
        self.mode: str = self.bundle["mode"]
        self.parser: str = self.bundle["parser"]
        if self.parser == "cpp" and ema != 1.0:
            raise ValueError("ema smoothing needs every label's score on every frame; the cpp parser passes only the "
                             "labels above threshold: export the bundle with --parser tensor-meta to smooth")
        gie = self.bundle["gie_unique_id"] if gie_unique_id is None else gie_unique_id
        if not _is_int(gie) or gie < 1:
            raise ValueError(f"gie_unique_id must be an integer >= 1, got {gie!r}")
        if not _is_int(max_tracks) or max_tracks < 1:
            raise ValueError(f"max_tracks must be an integer >= 1, got {max_tracks!r}")
        self.labels: tuple[str, ...] = tuple(self.bundle["labels"])
        self.thresholds = np.asarray(self.bundle["thresholds"], dtype=np.float32).astype(np.float64)  # (C,)
        self.top_k: int | None = self.bundle["top_k"]
        self.gie_unique_id = gie
        self.output: str = self.bundle["output"]
        self.sources = _source_names(sources)
        self.ema = float(ema)
        self.sink = sink or print_record
        self.max_tracks = max_tracks
        self._smoothed: OrderedDict[tuple[int, int | None], np.ndarray] = OrderedDict()  # key -> (C,) float64
        self._last_frame: dict[int, int] = {}  # source_id -> last frame number seen
        self._gst: Any = None
        self._pyds = _pyds()

    # ------------------------------------------------------------------ GStreamer
    def __call__(self, pad: Any, info: Any, user_data: Any = None) -> Any:
        """The pad probe: send the records of the buffer's batch to the sink; the buffer passes unchanged.

        Returns:
            ``Gst.PadProbeReturn.OK``.
        """
        if self._gst is None:
            self._gst = _gst()
        buffer = info.get_buffer()
        if buffer:
            # pyds wants the GstBuffer's C address, which PyGObject gives as hash(buffer)
            batch_meta = self._pyds.gst_buffer_get_nvds_batch_meta(hash(buffer))
            if batch_meta is not None:
                for record in self.frame_records(batch_meta):
                    self.sink(record)
        return self._gst.PadProbeReturn.OK

    def attach(self, element_or_pad: Any, pad_name: str = "src") -> int:
        """Add this probe to a pad (or to an element's static pad ``pad_name``) for every buffer.

        Returns:
            The probe id (for ``pad.remove_probe``).

        Raises:
            ValueError: the element has no static pad ``pad_name``.
        """
        if self._gst is None:
            self._gst = _gst()
        pad = element_or_pad
        if not hasattr(pad, "add_probe"):
            pad = element_or_pad.get_static_pad(pad_name)
            if pad is None:
                name = element_or_pad.get_name() if hasattr(element_or_pad, "get_name") else element_or_pad
                raise ValueError(f"{name} has no static pad {pad_name!r} to probe")
        return pad.add_probe(self._gst.PadProbeType.BUFFER, self, None)

    # ------------------------------------------------------------------ metadata -> records
    def frame_records(self, batch_meta: Any) -> list[dict[str, Any]]:
        """The records of one batch (pyds ``NvDsBatchMeta``), frame by frame, objects in list order."""
        pyds = self._pyds
        records: list[dict[str, Any]] = []
        for frame_meta in _walk(batch_meta.frame_meta_list, pyds.NvDsFrameMeta.cast):
            self._note_frame(int(frame_meta.source_id), int(frame_meta.frame_num))
            if self.mode == "primary":
                record = self._frame_record(frame_meta)
                if record is not None:
                    records.append(record)
            else:
                records.extend(self._object_records(frame_meta))
        return records

    def _frame_fields(self, frame_meta: Any) -> dict[str, Any]:
        source_id, number, pts = int(frame_meta.source_id), int(frame_meta.frame_num), int(frame_meta.buf_pts)
        source = self.sources.get(source_id, f"source{source_id}")
        return {"index": number, "path": f"{source}#frame={number}", "frame": number,
                "time": None if pts == CLOCK_TIME_NONE else round(pts / 1e9, 3)}

    def _frame_record(self, frame_meta: Any) -> dict[str, Any] | None:
        pyds = self._pyds
        record = self._frame_fields(frame_meta)
        if self.parser == "cpp":
            # nvinfer puts a primary classifier's result on an object it adds for the whole frame
            metas = [meta for obj in _walk(frame_meta.obj_meta_list, pyds.NvDsObjectMeta.cast)
                     for meta in self._classifier_metas(obj)]
            record.update(self._classified(metas))
            return record
        tensor_meta = self._tensor_meta(frame_meta.frame_user_meta_list)
        if tensor_meta is None:
            return None
        record.update(self._scored(tensor_meta, (int(frame_meta.source_id), None)))
        return record

    def _object_records(self, frame_meta: Any) -> list[dict[str, Any]]:
        pyds = self._pyds
        frame = self._frame_fields(frame_meta)
        records = []
        for position, obj in enumerate(_walk(frame_meta.obj_meta_list, pyds.NvDsObjectMeta.cast)):
            object_id = int(obj.object_id)
            tracked = object_id != UNTRACKED_OBJECT_ID
            if self.parser == "cpp":
                metas = self._classifier_metas(obj)
                if not metas:
                    continue
                result = self._classified(metas)
            else:
                tensor_meta = self._tensor_meta(obj.obj_user_meta_list)
                if tensor_meta is None:
                    continue
                result = self._scored(tensor_meta, (int(frame_meta.source_id), object_id) if tracked else None)
            rect = obj.rect_params
            name = object_id if tracked else f"untracked-{position}"
            records.append({**frame, "path": f"{frame['path']}&object={name}", "object_id": object_id if tracked else None,
                            "class_id": int(obj.class_id),
                            "bbox": [round(float(value), 2) for value in (rect.left, rect.top, rect.width, rect.height)],
                            **result})
        return records

    def _classifier_metas(self, obj: Any) -> list[Any]:
        """The classifier metas our nvinfer attached to an object (other components' are ignored)."""
        return [meta for meta in _walk(obj.classifier_meta_list, self._pyds.NvDsClassifierMeta.cast)
                if int(meta.unique_component_id) == self.gie_unique_id]

    def _classified(self, metas: list[Any]) -> dict[str, Any]:
        """``labels`` and ``error`` from the label infos the cpp parser produced (best first)."""
        best: dict[int, float] = {}
        for meta in metas:
            for info in _walk(meta.label_info_list, self._pyds.NvDsLabelInfo.cast):
                class_id, score = int(info.result_class_id), float(info.result_prob)
                if not 0 <= class_id < len(self.labels):
                    return {"labels": [], "error": f"nvinfer (gie-unique-id {self.gie_unique_id}) gave class {class_id}; the "
                                                   f"bundle has {len(self.labels)} labels ({DEEPSTREAM_BUNDLE_FILE}): was "
                                                   f"the parser library built for another model?"}
                if not math.isfinite(score):
                    return {"labels": [], "error": NON_FINITE}
                best[class_id] = max(score, best.get(class_id, score))
        order = sorted(best, key=lambda c: (-best[c], c))  # best first, ties in label order
        return {"labels": [{"label": self.labels[c], "score": round(best[c], DECIMALS)} for c in order], "error": None}

    def _tensor_meta(self, user_meta_list: Any) -> Any:
        """Our nvinfer's NvDsInferTensorMeta in a frame's or object's user meta list, or None."""
        pyds = self._pyds
        for user_meta in _walk(user_meta_list, pyds.NvDsUserMeta.cast):
            if user_meta.base_meta.meta_type != pyds.NvDsMetaType.NVDSINFER_TENSOR_OUTPUT_META:
                continue
            tensor_meta = pyds.NvDsInferTensorMeta.cast(user_meta.user_meta_data)
            if int(tensor_meta.unique_id) == self.gie_unique_id:
                return tensor_meta
        return None

    def _read_scores(self, tensor_meta: Any) -> tuple[np.ndarray | None, str | None]:
        """(C,) float64 copy of the output layer's host buffer, or (None, why it cannot be read)."""
        pyds = self._pyds
        # get_nvds_LayerInfo points each layer's `buffer` at this frame's (or object's) host output
        layers = [pyds.get_nvds_LayerInfo(tensor_meta, i) for i in range(int(tensor_meta.num_output_layers))]
        layer = next((layer for layer in layers if layer.layerName == self.output), None)
        if layer is None:
            return None, (f"nvinfer's output has no layer {self.output!r} (it has {[layer.layerName for layer in layers]}): "
                          f"is it running the bundle's lcie_ds.onnx?")
        count = int(layer.inferDims.numElements)
        if count != len(self.labels):
            return None, (f"output {self.output!r} has {count} values, the bundle has {len(self.labels)} labels "
                          f"({DEEPSTREAM_BUNDLE_FILE}): was the engine built from another model?")
        data_type = int(layer.dataType)
        if data_type not in (_FLOAT, _HALF):
            return None, f"output {self.output!r} has NvDsInferDataType {data_type}, expected FLOAT (0) or HALF (1)"
        address = pyds.get_ptr(layer.buffer)
        if not address:
            return None, f"output {self.output!r} has no host buffer in nvinfer's tensor meta"
        pointer = ctypes.cast(address, ctypes.POINTER(ctypes.c_float if data_type == _FLOAT else ctypes.c_uint16))
        values = np.ctypeslib.as_array(pointer, shape=(count,))  # (C,) a view of nvinfer's buffer
        if data_type == _HALF:
            values = values.view(np.float16)
        return values.astype(np.float64), None  # a copy: nvinfer reuses its buffers

    def _scored(self, tensor_meta: Any, key: tuple[int, int | None] | None) -> dict[str, Any]:
        """``labels``, ``error`` and ``scores_all`` from the raw scores, as tag-video makes them."""
        raw, error = self._read_scores(tensor_meta)
        if raw is None:
            return {"labels": [], "error": error, "scores_all": None}
        finite = bool(np.isfinite(raw).all())
        labels = []
        if finite:  # a frame with non-finite scores is reported, and never enters the average
            current = self._smooth(key, raw)  # (C,)
            on = current >= self.thresholds
            order = np.argsort(-current, kind="stable")
            kept = [c for c in order if on[c]][: self.top_k]
            labels = [{"label": self.labels[c], "score": round(float(current[c]), DECIMALS)} for c in kept]
        scores_all = {name: round(float(p), DECIMALS) if math.isfinite(p) else None for name, p in zip(self.labels, raw)}
        return {"labels": labels, "error": None if finite else NON_FINITE, "scores_all": scores_all}

    def _smooth(self, key: tuple[int, int | None] | None, raw: np.ndarray) -> np.ndarray:
        """The moving average of ``key``'s scores, updated with ``raw`` (C,); ``raw`` itself without smoothing."""
        if key is None or self.ema == 1.0:
            return raw
        previous = self._smoothed.pop(key, None)
        current = raw if previous is None else self.ema * raw + (1 - self.ema) * previous
        self._smoothed[key] = current  # the most recently seen last
        while len(self._smoothed) > self.max_tracks:
            self._smoothed.popitem(last=False)
        return current

    def _note_frame(self, source_id: int, frame_num: int) -> None:
        """A source whose frame numbers go back was restarted: its averages start afresh."""
        last = self._last_frame.get(source_id)
        if last is not None and frame_num < last:
            for key in [key for key in self._smoothed if key[0] == source_id]:
                del self._smoothed[key]
        self._last_frame[source_id] = frame_num


USAGE = """\
probe_lcie.py: LCIE tags out of a DeepStream pipeline (one JSON record per frame, or per object).

    python3 probe_lcie.py BUNDLE_DIR     check the bundle's lcie_deepstream.json and that pyds imports

In a DeepStream Python application (pyds from NVIDIA's deepstream_python_apps releases, not PyPI):

    import sys
    sys.path.insert(0, "/path/to/bundle")
    from probe_lcie import LcieProbe

    nvinfer = Gst.ElementFactory.make("nvinfer", "lcie")
    nvinfer.set_property("config-file-path", "/path/to/bundle/config_infer_lcie.txt")
    ...                                            # streammux -> [detector -> tracker ->] nvinfer -> ...
    probe = LcieProbe("/path/to/bundle", sources={0: "file:///videos/cam0.mp4"})
    probe.attach(nvinfer)                          # its src pad; records print as JSON lines

    LcieProbe(..., sink=callback)                  # send each record elsewhere (a dict)
    LcieProbe(..., ema=0.5)                        # smooth scores over frames (tensor-meta parser)
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Print the usage; with a bundle folder, check it and the pyds import. Returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if len(args) != 1:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        bundle = load_bundle(args[0])
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"bundle: {len(bundle['labels'])} labels, mode {bundle['mode']}, parser {bundle['parser']}, "
          f"gie-unique-id {bundle['gie_unique_id']}, output {bundle['output']!r}, top_k {bundle['top_k']}, "
          f"precision {bundle.get('precision')}")
    try:
        _pyds()
    except PydsMissingError as err:
        print(f"pyds: {err}", file=sys.stderr)
        return 1
    print("pyds: NVIDIA's DeepStream bindings import")
    return 0


if __name__ == "__main__":
    sys.exit(main())
