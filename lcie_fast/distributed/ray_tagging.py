"""Tagging past one machine on Ray Data: :func:`tag_dataset`, with the contract of local tagging.

Every input gets exactly one record -- its labels, or why it could not be read -- the same record
:meth:`~lcie_fast.tagger.Tagger.tag` gives, and a run that stops is resumed by running it again.

The pipeline::

    OUT/_inputs.parquet --read_parquet--> [decode + resize tasks] --> tagging actors --> OUT/parts/*
                          (checkpoint filter)                        (ActorPoolStrategy)   (two-phase commit)

1. The inputs are expanded once on the driver (:func:`~lcie_fast.inputs.expand_inputs`: files,
   folders, globs, lists, manifests, WebDataset shards, URLs) into ``OUT/_inputs.parquet``,
   numbered by ``row_id``. A rerun expands them again; another list (its SHA-256 differs) is
   refused unless ``overwrite``.
2. ``decode="tasks"``: a ``map_batches`` task step decodes and resizes to (3, S, S) uint8, so only
   small images cross the object store; ``decode="actor"``: the tagging actor decodes, in threads,
   with two batches in flight per actor so that one decodes while the other runs the model.
   Ray's ``read_images`` is not used: it fails the job on the first bad file, skips WebP and
   ignores EXIF rotation.
3. Tagging actors (``ActorPoolStrategy``) load the model once each and make records with
   :meth:`~lcie_fast.tagger.Tagger.tag_decoded`; the rows go to Parquet or JSONL part files.
4. Resume is Ray Data's job-level checkpointing on ``row_id`` (``OUT/_checkpoint``): a rerun
   reads only the inputs whose rows were not committed; a part file written by a task that
   died before its commit is deleted by Ray before the rerun (two-phase commit), so nothing is
   written twice. The checkpoint is removed only after ``_SUCCESS`` is written.
5. At the end the parts are checked -- every row_id exactly once -- and ``OUT/stats.json`` and
   ``OUT/_SUCCESS`` are written. :func:`~lcie_fast.distributed.read_ray_output` reads the records
   back in input order (``lcie-fast tag-merge OUT -o tags.jsonl``).

Logical CPUs: Ray Data gives its checkpoint filter actor one CPU and its file listing task one
CPU; the tagging actors get what is left (at most one each, possibly a fraction or none), so the
pipeline never waits on CPUs it cannot have. Actors are not pinned to cores: on a CPU cluster the
model's own threads share the cores with the decode tasks, as they do locally.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._optional import require
from ..data.datasets import IMAGE_EXTENSIONS
from ..errors import InvalidInputError, UserError
from ..outputs import RecordFields, error_kind
from ..outputs.lines import SIDECAR_KIND, OutputMismatchError
from ..postprocess import TagPostprocess
from ..runtime.base import Backend
from ..webdataset import DEFAULT_IMAGE_KEYS
from . import layout
from .layout import Store
from .workers import FAIL_AFTER_ENV

FORMATS = ("parquet", "jsonl")
DECODERS = ("tasks", "actor")
# settings a resumed run must match (the inputs by the SHA-256 of their expanded list)
RESUME_SETTINGS = ("format", "model_sha256", "labels", "thresholds", "top_k", "all_scores", "hash", "postprocess",
                   "inputs_count", "inputs_sha256")
IO_CPUS = 0.25  # logical CPUs of a read or write task (they wait on storage more than they compute)
_POLL_S = 0.5
_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): ")


class DistributedTagError(UserError, RuntimeError):
    """The Ray job failed; what was written and checkpointed stays, and a rerun resumes it."""


class _MetadataOnly(Backend):
    """A backend that holds a model's metadata and runs nothing: the driver resolves thresholds and
    preprocessing with the :class:`~lcie_fast.tagger.Tagger` code, without opening the model
    (an engine bundle built for a worker's GPU cannot be opened on the driver)."""

    name = "metadata"

    def __init__(self, meta: Any) -> None:
        self.meta = meta

    def infer(self, images: Any) -> Any:
        raise RuntimeError("the driver holds the model's metadata only; the tagging actors run it")


@dataclasses.dataclass
class _Model:
    """What the driver knows of the model: its file, SHA-256, metadata, thresholds and preprocessing."""

    path: str
    sha256: str
    preset: str
    labels: list[str]
    thresholds: list[float]
    preprocess: Any

    @classmethod
    def read(cls, model: str | os.PathLike, thresholds: Any) -> _Model:
        from ..artifacts import artifact_kind, read_artifact_metadata
        from ..errors import ModelNotFoundError
        from ..io import sha256_file
        from ..tagger import Tagger

        path = Path(model)
        if not path.is_file():
            raise ModelNotFoundError(f"model not found: {model} (the driver and every worker must see it at this path)")
        if artifact_kind(path) == "checkpoint":
            from ..models.checkpoint import load_checkpoint

            meta = load_checkpoint(path).meta
        else:
            meta = read_artifact_metadata(path)
        tagger = Tagger(_MetadataOnly(meta))
        if thresholds is not None:
            tagger.set_thresholds(thresholds)
        return cls(str(path.resolve()), sha256_file(path), meta.preset, list(tagger.labels),
                   [float(value) for value in tagger.thresholds], tagger.preprocess)


def _workers(workers: int | tuple[int, int]) -> tuple[int, int]:
    """``workers`` as (min, max) actors."""
    pair = (workers, workers) if isinstance(workers, int) and not isinstance(workers, bool) else workers
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) for n in pair) and 1 <= pair[0] <= pair[1]):
        raise InvalidInputError(f"workers must be a whole number >= 1 or (min, max) with 1 <= min <= max, got {workers!r}")
    return int(pair[0]), int(pair[1])


def _named(inputs: Any) -> list[Any]:
    """The inputs given by name (paths, globs, lists, URLs), for the settings; in-memory or streamed ones are not named."""
    if isinstance(inputs, (str, os.PathLike)):
        return [inputs]
    if isinstance(inputs, (list, tuple)):
        return [item for item in inputs if isinstance(item, (str, os.PathLike))]
    return []


def _check_arguments(fmt: str, decode: str, batch_size: int, gpus_per_worker: float, rows_per_file: int,
                     cpus_per_worker: float | None) -> None:
    if fmt not in FORMATS:
        raise InvalidInputError(f"format must be one of {', '.join(FORMATS)} for a distributed run, got {fmt!r}")
    if decode not in DECODERS:
        raise InvalidInputError(f"decode must be one of {', '.join(DECODERS)}, got {decode!r}")
    for name, value in (("batch_size", batch_size), ("rows_per_file", rows_per_file)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{name} must be a whole number >= 1, got {value!r}")
    for name, value in (("gpus_per_worker", gpus_per_worker), ("cpus_per_worker", cpus_per_worker)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0):
            raise InvalidInputError(f"{name} must be a number >= 0, got {value!r}")


def _parquet_schema(fields: RecordFields, settings: dict[str, Any]) -> Any:
    """The Arrow schema of Parquet part rows: ``row_id``, then :meth:`TagRecord.to_row`'s columns; the
    settings as key-value metadata ``lcie_fast``."""
    import pyarrow as pa

    from ..outputs.parquet import META_KEY, parquet_schema

    schema = pa.schema([pa.field("row_id", pa.int64(), nullable=False), *parquet_schema(fields)])
    return schema.with_metadata({META_KEY: json.dumps(settings)})


def _difference(stored: dict[str, Any], settings: dict[str, Any]) -> str | None:
    """The first setting a resumed run must match that differs, described; None when all match."""
    current = json.loads(json.dumps(settings))  # as stored: tuples become lists
    for field in RESUME_SETTINGS:
        if stored.get(field) != current.get(field):
            if field in ("inputs_sha256", "inputs_count"):
                return (f"holds records of other inputs ({stored.get('inputs_count')} inputs, SHA-256 "
                        f"{str(stored.get('inputs_sha256'))[:12]}... there; {current['inputs_count']} inputs, "
                        f"{current['inputs_sha256'][:12]}... now)")
            return f"was written with another {field} ({stored.get(field)!r} there, {current.get(field)!r} now)"
    return None


def _check_folder(store: Store) -> None:
    """``OUT`` is absent, or a folder holding only what a distributed run writes (checked before anything is written).

    Raises:
        OutputMismatchError: a file there, or a folder holding something else (named; never removed).
    """
    kind = store.kind()
    if kind not in (None, "folder"):
        raise OutputMismatchError(f"{store.name} is a {kind}, not the folder of a distributed tagging run; remove it or "
                                  "choose another output")
    foreign = layout.foreign_names(store) if kind else []
    if foreign:
        raise OutputMismatchError(f"{store.name} holds {foreign[0]}, which a distributed tagging run does not write; "
                                  "refusing to write there: remove it or choose another output")
    layout.read_settings(store)  # a _settings.json that is not ours is refused here too


def _decide(store: Store, settings: dict[str, Any], *, resume: bool, overwrite: bool) -> str:
    """What the run does with ``OUT/`` (checked by :func:`_check_folder`): ``fresh``, ``resume`` or ``done``.

    Raises:
        OutputMismatchError: another run's output (the setting named) without ``overwrite``, or an
            output that exists when ``resume`` is off.
    """
    stored = layout.read_settings(store)
    names = [name for name in store.names() if not name.endswith(layout.TEMPORARY_SUFFIX)]
    if overwrite or not names:
        return "fresh"
    if stored is None:
        raise OutputMismatchError(f"{store.name} holds files of a run that wrote no {layout.SETTINGS_FILE}: pass overwrite "
                                  "to start afresh")
    if not resume:
        raise OutputMismatchError(f"{store.name} exists and resume is off: pass overwrite to start it afresh")
    difference = _difference(stored, settings)
    if difference:
        raise OutputMismatchError(f"{store.name} {difference}; resuming would mix both in one output: pass overwrite to "
                                  "start it afresh, or write to another output")
    if not stored.get("resume", True) and store.kind(layout.SUCCESS) is None:
        raise OutputMismatchError(f"{store.name} was written without checkpointing (resume off) and did not finish: it "
                                  "cannot be resumed; pass overwrite to start it afresh")
    return "done" if store.kind(layout.SUCCESS) == "file" else "resume"


def _open_output(store: Store, sources: Any, settings: dict[str, Any], *, resume: bool, overwrite: bool) -> str:
    """Write the numbered inputs, complete ``settings`` with their count and SHA-256, and make ``OUT/`` ready.

    Returns:
        ``fresh`` (``OUT/`` emptied of an earlier run, settings and inputs written), ``resume``
        (the same run: its inputs kept) or ``done`` (that run finished).

    Raises:
        OutputMismatchError, InvalidInputError: see :func:`_check_folder`, :func:`_decide` and
            :func:`~lcie_fast.distributed.layout.write_inputs`; nothing of an earlier run is changed.
    """
    _check_folder(store)
    pending = layout.INPUTS + layout.TEMPORARY_SUFFIX
    settings["inputs_count"], settings["inputs_sha256"] = layout.write_inputs(store, sources, pending)
    try:
        decision = _decide(store, settings, resume=resume, overwrite=overwrite)
    except BaseException:
        store.remove(pending)
        raise
    if decision == "fresh":
        _clear(store, keep=pending)
        store.write_json(settings, layout.SETTINGS_FILE)
        store.fs.move(store.path(pending), store.path(layout.INPUTS))
    else:
        store.remove(pending)
    return decision


def _clear(store: Store, keep: str) -> None:
    """Remove what a distributed run wrote in ``OUT/`` (only those names: see :func:`_check_folder`) but ``keep``."""
    for name in (layout.SUCCESS, layout.STATS, layout.CHECKPOINT, layout.PARTS, layout.TEST_MARKER, layout.INPUTS,
                 layout.SETTINGS_FILE):
        store.remove(name)
    for name in store.names():
        if name.endswith(layout.TEMPORARY_SUFFIX) and name != keep:
            store.remove(name)


def _connect(ray: Any, address: str | None) -> bool:
    """Join the running Ray (this process's, or the cluster at ``address``), else start a local one; True when started here."""
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(include_dashboard=False)
    else:
        try:
            ray.init(address=address)
        except ConnectionError as err:
            raise UserError(f"cannot connect to the Ray cluster at {address}: {err}") from None
    return True


def _alive_nodes(ray: Any) -> int:
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def shared_storage_problem(store: Store, nodes: int) -> str | None:
    """Why ``store`` cannot hold a run on a cluster of ``nodes`` nodes (None when it can).

    Workers on every node write parts and the checkpoint, and read ``_inputs.parquet``: on more than
    one node, ``OUT`` must be storage they all see. A plain local path is refused; a ``file://`` URL
    states that the path is a shared mount (NFS, Lustre ...) mounted at the same place everywhere.
    """
    if nodes > 1 and store.local and not store.url:
        return (f"the output {store.name} is a local path, but the Ray cluster has {nodes} nodes: parts, the checkpoint "
                f"and {layout.INPUTS} must be on storage every node sees. Use a URL (s3://, gs://), or file://{store.root} "
                "if that path is a shared mount every node sees at the same place")
    return None


def _plan_cpus(ray: Any, workers: tuple[int, int], gpus_per_worker: float, cpus_per_worker: float | None,
               resume: bool) -> float:
    """Logical CPUs of one tagging actor (see the module docstring); checks that the cluster can hold the actors.

    Raises:
        UserError: too few CPUs or GPUs for ``workers`` actors (they would wait forever).
    """
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    low, high = workers
    if gpus_per_worker and gpus < gpus_per_worker * low:
        raise UserError(f"{low} workers with {gpus_per_worker:g} GPUs each need {gpus_per_worker * low:g} GPUs; the Ray "
                        f"cluster has {gpus:g}")
    fixed = 1.0 + (1.0 if resume else 0.0)  # the file listing task, and the checkpoint filter actor
    if cpus < fixed:
        raise UserError(f"the Ray cluster has {cpus:g} CPUs; a distributed run needs at least {fixed:g}")
    if cpus_per_worker is None:
        return min(1.0, (cpus - fixed) / high)
    if cpus_per_worker * low > cpus - fixed:
        raise UserError(f"{low} workers with {cpus_per_worker:g} CPUs each do not fit in the Ray cluster's {cpus:g} CPUs "
                        f"with {fixed:g} left for reading, listing and the checkpoint filter")
    return float(cpus_per_worker)


def _checkpointed_rows(store: Store) -> int:
    """Rows committed to the checkpoint (what a resumed run will not tag again)."""
    import pyarrow.parquet as pq

    rows = 0
    for name in store.names(layout.CHECKPOINT):
        if name.endswith(".parquet") and not name.endswith(".pending.parquet"):
            with contextlib.suppress(OSError, ValueError):
                with store.fs.open_input_file(store.path(layout.CHECKPOINT, name)) as handle:
                    rows += pq.read_metadata(handle).num_rows
    return rows


class _Progress:
    """A progress bar over all inputs (the checkpointed ones counted as done), fed by the actors' counter."""

    def __init__(self, ray: Any, counter: Any, total: int, done: int, show: bool) -> None:
        from tqdm.auto import tqdm

        self.ray, self.counter = ray, counter
        self.bar = tqdm(desc="tag (ray)", unit="img", total=total, initial=done, disable=not show, dynamic_ncols=True)
        self.shown = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, name="lcie-fast-progress", daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stop.wait(_POLL_S):
            self.update()

    def update(self) -> list[str]:
        """Bring the bar up to date; returns the backends the actors opened."""
        try:
            rows, backends = self.ray.get(self.counter.state.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - a progress bar must never fail the run
            return []
        self.bar.update(rows - self.shown)
        self.shown = rows
        return backends

    def close(self) -> list[str]:
        self.stop.set()
        self.thread.join()
        backends = self.update()
        self.bar.close()
        return backends


def _failure(err: BaseException) -> str:
    """What failed a Ray job, in a line: the user code's error in the remote traceback Ray's error carries
    (the first ``Name: message`` line that is not Ray's own), else the error's first line."""
    lines = str(err).splitlines()
    for line in lines:
        match = _ERROR_LINE.match(line.strip())
        if match and not match.group(1).startswith("ray."):
            return line.strip()
    return f"{type(err).__name__}: {lines[0] if lines else ''}".strip()


def _versions() -> dict[str, str]:
    import ray
    import torch

    from .. import __version__

    versions = {"lcie_fast": __version__, "ray": ray.__version__, "torch": torch.__version__,
                "python": platform.python_version()}
    with contextlib.suppress(ImportError):
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    return versions


def tag_dataset(inputs: Any, model: str | os.PathLike, output: str | os.PathLike, *, format: str = "parquet",  # noqa: A002
                thresholds: float | str | Path | dict[str, float] | None = None, top_k: int | None = None,
                all_scores: bool = False, backend: str = "auto", batch_size: int = 32,
                workers: int | tuple[int, int] = 1, gpus_per_worker: float = 0, decode: str = "tasks",
                resume: bool = True, overwrite: bool = False, ray_address: str | None = None, progress: bool = True,
                postprocess: TagPostprocess | None = None, hash_name: str | None = None,
                cpus_per_worker: float | None = None, rows_per_file: int = 10_000,
                extensions: Sequence[str] = IMAGE_EXTENSIONS, recursive: bool = True,
                wds_image_keys: Sequence[str] = DEFAULT_IMAGE_KEYS) -> dict[str, Any]:
    """Tag ``inputs`` on a Ray cluster into the folder ``output``; one record per input, resumable.

    Args:
        inputs: What :func:`~lcie_fast.inputs.expand_inputs` accepts, but for in-memory images:
            files, folders, globs, ``@lists``, manifests, WebDataset shards, URLs.
        model: Checkpoint, ONNX graph or engine bundle, at a path every worker sees.
        output: The run's folder (local path, or a URL such as ``s3://bucket/out``; on a cluster of
            more than one node, storage every node sees, see :func:`shared_storage_problem`).
        format: ``parquet`` or ``jsonl`` part files.
        thresholds, top_k, all_scores, hash_name, postprocess: As :meth:`~lcie_fast.tagger.Tagger.tag`.
        backend: As :meth:`~lcie_fast.tagger.Tagger.load`, chosen in each actor.
        batch_size: Images per model call (and rows per Ray block).
        workers: Tagging actors: a number, or (min, max) for an autoscaling pool.
        gpus_per_worker: GPUs each actor asks Ray for (0: a CPU actor, the model on the CPU).
        decode: ``tasks`` (decode + resize in Ray tasks) or ``actor`` (in the tagging actor).
        resume: Use Ray's checkpointing: a rerun tags only what is not written yet.
        overwrite: Start afresh over an earlier run in ``output`` (another one is refused otherwise).
        ray_address: The cluster to join (``auto``, ``ray://host:10001``); None: the Ray this
            process runs, else a new local one (dashboard off), shut down at the end.
        progress: Show a progress bar over all inputs.
        cpus_per_worker: Logical CPUs each actor asks for (default: see the module docstring).
        rows_per_file: At least this many rows per part file (the last ones may hold fewer); a
            crash loses the rows of the files being written.
        extensions, recursive, wds_image_keys: As :func:`~lcie_fast.inputs.expand_inputs`.

    Returns:
        The statistics, also in ``OUT/stats.json``: inputs, resumed (written by earlier runs),
        this_run, tagged and errors (of this run), errors_by_kind, seconds, images_per_s,
        workers, backends, model, versions.

    Raises:
        MissingDependencyError: Ray is not installed (``pip install 'lcie-fast[ray]'``).
        InvalidInputError: an argument out of range, or an in-memory image among the inputs.
        OutputMismatchError: ``output`` holds something else, or a run with other settings or
            inputs (named), without ``overwrite``.
        DistributedTagError: the Ray job failed (the reason named); rerun to resume.
        UserError: the cluster cannot hold the actors, or ``output`` is not shared storage.
    """
    from .. import __version__
    from ..batch import input_spec
    from ..inputs import expand_inputs
    from ..outputs.parquet import fields_to_json

    ray = require("ray", "Distributed tagging (tag_dataset, lcie-fast tag --ray)")
    require("ray.data", "Distributed tagging (tag_dataset, lcie-fast tag --ray)")
    _check_arguments(format, decode, batch_size, gpus_per_worker, rows_per_file, cpus_per_worker)
    low, high = _workers(workers)
    if hash_name not in (None, "sha256", "md5"):
        raise InvalidInputError(f"hash_name must be sha256, md5 or None, got {hash_name!r}")
    summary = _Model.read(model, thresholds)
    postprocess = postprocess or TagPostprocess()
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InvalidInputError(f"top_k must be a whole number >= 1, got {top_k!r}")
        postprocess = dataclasses.replace(postprocess, max_tags=top_k)
    postprocess.check(summary.labels)
    fields = RecordFields(tuple(summary.labels), all_scores, hash_name, False)
    settings = {"kind": SIDECAR_KIND, "engine": "ray", "format": format, "model": summary.path,
                "model_sha256": summary.sha256, "preset": summary.preset, "labels": summary.labels,
                "thresholds": summary.thresholds, "top_k": postprocess.max_tags, "all_scores": all_scores,
                "hash": hash_name, "dedup": False, "postprocess": postprocess.to_settings(), "shard": None,
                "inputs": input_spec(_named(inputs), extensions, recursive, wds_image_keys), "resume": resume,
                "fields": fields_to_json(fields), "version": __version__}
    store = Store(output)
    sources = expand_inputs(inputs, extensions=extensions, recursive=recursive, wds_image_keys=wds_image_keys)
    if _open_output(store, sources, settings, resume=resume, overwrite=overwrite) == "done":
        print(f"{store.name} is complete ({settings['inputs_count']} inputs): nothing to do", file=sys.stderr)
        if store.kind(layout.STATS) == "file":
            return json.loads(store.read_bytes(layout.STATS))
        return {"inputs": settings["inputs_count"], "resumed": settings["inputs_count"], "this_run": 0,
                "output": store.name}
    count = settings["inputs_count"]
    if count == 0:
        stats = {"inputs": 0, "resumed": 0, "this_run": 0, "tagged": 0, "errors": 0, "errors_by_kind": {}, "seconds": 0.0,
                 "images_per_s": None, "output": store.name, "versions": _versions()}
        store.write_json(stats, layout.STATS)
        store.write_bytes(b"", layout.SUCCESS)
        return stats
    started = _connect(ray, ray_address)
    try:
        problem = shared_storage_problem(store, _alive_nodes(ray))
        if problem:
            raise UserError(problem)
        actor_cpus = _plan_cpus(ray, (low, high), gpus_per_worker, cpus_per_worker, resume)
        return _run(ray, store, summary, settings, fields, postprocess, count, format=format, backend=backend,
                    batch_size=batch_size, workers=(low, high), gpus_per_worker=gpus_per_worker, actor_cpus=actor_cpus,
                    decode=decode, resume=resume, progress=progress, rows_per_file=rows_per_file)
    finally:
        if started:
            ray.shutdown()


def _run(ray: Any, store: Store, summary: _Model, settings: dict[str, Any], fields: RecordFields,
         postprocess: TagPostprocess, count: int, *, format: str, backend: str, batch_size: int,  # noqa: A002
         workers: tuple[int, int], gpus_per_worker: float, actor_cpus: float, decode: str, resume: bool, progress: bool,
         rows_per_file: int) -> dict[str, Any]:
    """Build and run the pipeline on ``store``, check the parts, write the statistics and ``_SUCCESS``."""
    from ray.data import ActorPoolStrategy, DataContext
    from ray.data.checkpoint import CheckpointConfig

    from .workers import TagActor, decode_rows, jsonl_datasink, progress_counter_class

    fail_after = os.environ.get(FAIL_AFTER_ENV)
    before = set(layout.part_names(store, format))
    done = _checkpointed_rows(store) if resume else 0
    context = DataContext.get_current()
    saved = (context.checkpoint_config, context.enable_progress_bars)
    counter = ray.remote(num_cpus=0)(progress_counter_class()).remote()
    start = time.perf_counter()
    bar = None
    try:
        context.checkpoint_config = CheckpointConfig(
            id_column="row_id", checkpoint_path=store.path(layout.CHECKPOINT), override_filesystem=store.fs,
            delete_checkpoint_on_success=False) if resume else None
        context.enable_progress_bars = False  # ours knows the total
        data = ray.data.read_parquet(store.path(layout.INPUTS), filesystem=store.fs, num_cpus=IO_CPUS)
        data = data.repartition(target_num_rows_per_block=batch_size)
        if decode == "tasks":
            data = data.map_batches(decode_rows, fn_kwargs={"preprocess": summary.preprocess,
                                                            "hash_name": fields.hash_name},
                                    batch_size=batch_size, batch_format="numpy", num_cpus=1)
        schema = _parquet_schema(fields, settings)
        low, high = workers
        # decoding in the actor: two calls at a time, one decoding while the other runs the model (TagActor's lock)
        calls = {"max_concurrent_calls_per_actor": 2, "enable_true_multi_threading": True} if decode == "actor" else {}
        data = data.map_batches(
            TagActor, batch_size=batch_size, batch_format="numpy", num_cpus=actor_cpus, num_gpus=gpus_per_worker,
            compute=ActorPoolStrategy(min_size=low, max_size=high, **calls),
            fn_constructor_kwargs={"model": summary.path, "backend": backend,
                                   "device": None if gpus_per_worker else "cpu",
                                   "thresholds": dict(zip(summary.labels, summary.thresholds)),
                                   "postprocess": postprocess, "fields": fields, "fmt": format,
                                   "schema": schema.remove_metadata(), "decode_here": decode == "actor",
                                   "progress": counter, "fail_after": int(fail_after) if fail_after else None,
                                   "store": store})
        bar = _Progress(ray, counter, count, done, progress)
        parts = store.path(layout.PARTS)
        if format == "parquet":
            data.write_parquet(parts, filesystem=store.fs, min_rows_per_file=rows_per_file, schema=schema,
                               ray_remote_args={"num_cpus": IO_CPUS})
        else:
            data.write_datasink(jsonl_datasink(parts, store.fs, rows_per_file), ray_remote_args={"num_cpus": IO_CPUS})
    except UserError:
        raise
    except Exception as err:
        if not isinstance(err, ray.exceptions.RayError) and "ray" not in type(err).__module__:
            raise
        raise DistributedTagError(f"{store.name}: the Ray job failed: {_failure(err)}. What was written stays"
                                  f"{' (checkpointed): rerun the same call to resume' if resume else ''}") from err
    finally:
        backends = bar.close() if bar is not None else []
        context.checkpoint_config, context.enable_progress_bars = saved
        with contextlib.suppress(Exception):
            ray.kill(counter)
    seconds = time.perf_counter() - start

    names = layout.part_names(store, format)
    new = [name for name in names if name not in before]
    scanned = layout.scan_parts(store, format, names, errors=new)
    layout.check_row_ids(scanned, count, store.name)
    kinds: Counter = Counter()
    this_run = 0
    for part in scanned:
        if part.errors is not None:
            this_run += len(part.row_ids)
            kinds.update(kind for kind in map(error_kind, part.errors) if kind is not None)
    errors = sum(kinds.values())
    stats = {"inputs": count, "resumed": count - this_run, "this_run": this_run, "tagged": this_run - errors,
             "errors": errors, "errors_by_kind": dict(sorted(kinds.items())), "seconds": round(seconds, 3),
             "images_per_s": round(this_run / seconds, 2) if seconds > 0 else None,
             "workers": list(workers), "gpus_per_worker": gpus_per_worker, "cpus_per_worker": actor_cpus,
             "decode": decode, "format": format, "output": store.name, "parts": len(names),
             "model": summary.path, "model_sha256": summary.sha256, "backends": backends, "versions": _versions()}
    store.write_json(stats, layout.STATS)
    store.write_bytes(b"", layout.SUCCESS)
    store.remove(layout.CHECKPOINT)
    store.remove(layout.TEST_MARKER)
    return stats
