"""A small fake of NVIDIA's ``pyds`` (DeepStream Python bindings): the API surface the bundle's probe uses.

Names and behaviour follow the real bindings (deepstream_python_apps ``bindings/src``): metadata lists
are GList nodes with ``.data`` and ``.next`` (None at the end); ``<Type>.cast(data)`` gives the typed
meta; ``get_nvds_LayerInfo(tensor_meta, j)`` returns layer ``j`` with its ``buffer`` pointed at the
tensor meta's host output (before that call ``buffer`` is not valid, None here); ``get_ptr(buffer)`` is
the buffer's address as an integer; ``gst_buffer_get_nvds_batch_meta(hash(gst_buffer))`` finds a
buffer's batch meta. Host outputs are NumPy arrays read through their real address, so a probe that
reads the wrong count or type reads wrong numbers here too.

Stricter than the real thing, to catch misuse: ``cast`` refuses data of another meta type.

Below the pyds names, builders (not in pyds) make batches for tests.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Iterable, Sequence

import numpy as np

UNTRACKED_OBJECT_ID = 0xFFFFFFFFFFFFFFFF


class NvDsMetaType(enum.Enum):
    """A plain Enum (not an int), so a probe comparing meta types with integers finds nothing."""

    NVDS_INVALID_META = -1
    NVDS_CLASSIFIER_META = 4
    NVDS_USER_META = 7
    NVDSINFER_TENSOR_OUTPUT_META = 12
    NVDSINFER_SEGMENTATION_META = 13


class NvDsInferDataType(enum.IntEnum):
    """As nvdsinfer.h numbers them (pybind11 enums convert with int())."""

    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3


class _Castable:
    @classmethod
    def cast(cls, data: Any) -> Any:
        if not isinstance(data, cls):
            raise TypeError(f"fake pyds: {type(data).__name__} cast to {cls.__name__}")
        return data


@dataclasses.dataclass
class GList:
    data: Any
    next: GList | None = None


@dataclasses.dataclass
class NvDsBaseMeta:
    meta_type: NvDsMetaType = NvDsMetaType.NVDS_INVALID_META


@dataclasses.dataclass
class NvOSD_RectParams:
    left: float = 0.0
    top: float = 0.0
    width: float = 0.0
    height: float = 0.0


@dataclasses.dataclass
class NvDsLabelInfo(_Castable):
    result_class_id: int = 0
    result_prob: float = 0.0
    result_label: str = ""
    label_id: int = 0
    num_classes: int = 0


@dataclasses.dataclass
class NvDsClassifierMeta(_Castable):
    unique_component_id: int = 0
    num_labels: int = 0
    label_info_list: GList | None = None
    base_meta: NvDsBaseMeta = dataclasses.field(default_factory=lambda: NvDsBaseMeta(NvDsMetaType.NVDS_CLASSIFIER_META))


@dataclasses.dataclass
class NvDsUserMeta(_Castable):
    base_meta: NvDsBaseMeta = dataclasses.field(default_factory=NvDsBaseMeta)
    user_meta_data: Any = None


@dataclasses.dataclass
class NvDsObjectMeta(_Castable):
    object_id: int = UNTRACKED_OBJECT_ID
    class_id: int = 0
    unique_component_id: int = 0
    confidence: float = 1.0
    rect_params: NvOSD_RectParams = dataclasses.field(default_factory=NvOSD_RectParams)
    classifier_meta_list: GList | None = None
    obj_user_meta_list: GList | None = None


@dataclasses.dataclass
class NvDsFrameMeta(_Castable):
    frame_num: int = 0
    buf_pts: int = 0
    source_id: int = 0
    batch_id: int = 0
    pad_index: int = 0
    bInferDone: bool = True
    obj_meta_list: GList | None = None
    frame_user_meta_list: GList | None = None


@dataclasses.dataclass
class NvDsBatchMeta(_Castable):
    frame_meta_list: GList | None = None
    num_frames_in_batch: int = 0


@dataclasses.dataclass
class NvDsInferDims:
    numDims: int = 0
    d: tuple[int, ...] = ()
    numElements: int = 0


class _HostBuffer:
    """Stands for a ``void *`` host output: it keeps the array alive and knows its address."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = np.ascontiguousarray(array)


@dataclasses.dataclass
class NvDsInferLayerInfo(_Castable):
    layerName: str = ""
    dataType: NvDsInferDataType = NvDsInferDataType.FLOAT
    inferDims: NvDsInferDims = dataclasses.field(default_factory=NvDsInferDims)
    bindingIndex: int = 0
    isInput: int = 0
    buffer: _HostBuffer | None = None

    @property
    def dims(self) -> NvDsInferDims:  # deprecated alias of inferDims in pyds
        return self.inferDims


@dataclasses.dataclass
class NvDsInferTensorMeta(_Castable):
    unique_id: int = 0
    num_output_layers: int = 0
    layers: list[NvDsInferLayerInfo] = dataclasses.field(default_factory=list)  # the C array output_layers_info
    out_buf_ptrs_host: list[_HostBuffer | None] = dataclasses.field(default_factory=list)
    gpu_id: int = 0

    def output_layers_info(self, j: int) -> NvDsInferLayerInfo:
        """As pyds: the layer's description; its buffer pointer is not valid here."""
        return self.layers[j]


def get_nvds_LayerInfo(data: NvDsInferTensorMeta, j: int) -> NvDsInferLayerInfo:
    """As pyds: points layer ``j``'s ``buffer`` at the tensor meta's host output ``j`` and returns it."""
    info = NvDsInferTensorMeta.cast(data).layers[j]
    info.buffer = data.out_buf_ptrs_host[j]
    return info


def get_ptr(ptr: _HostBuffer | None) -> int:
    """As pyds: the address a ``void *`` holds, as an integer (0 for NULL)."""
    return 0 if ptr is None else int(ptr.array.ctypes.data)


class FakeGstBuffer:
    """Stands for a GstBuffer; ``hash(buffer)`` is what pyds takes as its address."""


_BATCHES: dict[int, tuple[FakeGstBuffer, NvDsBatchMeta]] = {}


def gst_buffer_get_nvds_batch_meta(buffer: int) -> NvDsBatchMeta | None:
    found = _BATCHES.get(buffer)
    return None if found is None else found[1]


# ---------------------------------------------------------------------------- builders (not in pyds)
def glist(items: Iterable[Any]) -> GList | None:
    head = None
    for item in reversed(list(items)):
        head = GList(item, head)
    return head


def label_infos(labels: Sequence[tuple[int, float, str]]) -> GList | None:
    return glist(NvDsLabelInfo(class_id, prob, name) for class_id, prob, name in labels)


def classifier_meta(unique_id: int, labels: Sequence[tuple[int, float, str]]) -> NvDsClassifierMeta:
    """What nvinfer attaches for a classifier: (result_class_id, result_prob, result_label) per label."""
    return NvDsClassifierMeta(unique_component_id=unique_id, num_labels=len(labels), label_info_list=label_infos(labels))


def tensor_user_meta(scores: Sequence[float] | np.ndarray, unique_id: int, *, layer_name: str = "probs",
                     data_type: NvDsInferDataType = NvDsInferDataType.FLOAT, first_layers: Sequence[str] = ()) -> NvDsUserMeta:
    """An NVDSINFER_TENSOR_OUTPUT_META user meta with one output per frame/object; ``first_layers`` are
    other outputs (4 floats each) placed before it."""
    dtype = np.float16 if data_type == NvDsInferDataType.HALF else np.float32
    outputs = [(name, np.arange(4, dtype=np.float32), NvDsInferDataType.FLOAT) for name in first_layers]
    outputs.append((layer_name, np.asarray(scores, dtype=dtype), data_type))
    layers, buffers = [], []
    for index, (name, values, kind) in enumerate(outputs):
        layers.append(NvDsInferLayerInfo(layerName=name, dataType=kind, bindingIndex=index + 1,
                                         inferDims=NvDsInferDims(1, (values.size,), values.size)))
        buffers.append(_HostBuffer(values))
    meta = NvDsInferTensorMeta(unique_id=unique_id, num_output_layers=len(layers), layers=layers, out_buf_ptrs_host=buffers)
    return NvDsUserMeta(NvDsBaseMeta(NvDsMetaType.NVDSINFER_TENSOR_OUTPUT_META), meta)


def other_user_meta() -> NvDsUserMeta:
    """A user meta of another type (a segmentation mask), which a probe must skip."""
    return NvDsUserMeta(NvDsBaseMeta(NvDsMetaType.NVDSINFER_SEGMENTATION_META), object())


def object_meta(object_id: int = UNTRACKED_OBJECT_ID, class_id: int = 0, bbox: tuple[float, ...] = (0, 0, 0, 0), *,
                classifiers: Sequence[NvDsClassifierMeta] = (), user_metas: Sequence[NvDsUserMeta] = (),
                unique_component_id: int = 1) -> NvDsObjectMeta:
    return NvDsObjectMeta(object_id=object_id, class_id=class_id, unique_component_id=unique_component_id,
                          rect_params=NvOSD_RectParams(*bbox), classifier_meta_list=glist(classifiers),
                          obj_user_meta_list=glist(user_metas))


def frame_meta(frame_num: int, *, source_id: int = 0, buf_pts: int | None = None, objects: Sequence[NvDsObjectMeta] = (),
               user_metas: Sequence[NvDsUserMeta] = ()) -> NvDsFrameMeta:
    """A frame; ``buf_pts`` defaults to 25 frames per second (in nanoseconds, as GStreamer)."""
    pts = frame_num * 40_000_000 if buf_pts is None else buf_pts
    return NvDsFrameMeta(frame_num=frame_num, buf_pts=pts, source_id=source_id, obj_meta_list=glist(objects),
                         frame_user_meta_list=glist(user_metas))


def batch_meta(frames: Sequence[NvDsFrameMeta]) -> NvDsBatchMeta:
    for batch_id, frame in enumerate(frames):
        frame.batch_id = batch_id
    return NvDsBatchMeta(frame_meta_list=glist(frames), num_frames_in_batch=len(frames))


def gst_buffer(batch: NvDsBatchMeta) -> FakeGstBuffer:
    """A buffer carrying ``batch``, found by :func:`gst_buffer_get_nvds_batch_meta` (``hash(buffer)``)."""
    buffer = FakeGstBuffer()
    _BATCHES[hash(buffer)] = (buffer, batch)
    return buffer
