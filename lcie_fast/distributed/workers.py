"""What runs inside Ray workers: the decode step, the tagging actor, the JSONL part writer, progress.

- :func:`decode_rows` (``decode="tasks"``): a ``map_batches`` task function; each input becomes
  a resized (3, S, S) uint8 image (never a full-size one: those would crowd the object store) or
  its error, with :func:`~lcie_fast.inputs.decode_input`, which never raises for bad input.
- :class:`TagActor`: loads the model once per actor (:meth:`~lcie_fast.tagger.Tagger.load`, the
  same backend choice as local tagging) and turns each batch into records with
  :meth:`~lcie_fast.tagger.Tagger.tag_decoded`, decoding first when ``decode="actor"``. Rows are
  :meth:`~lcie_fast.outputs.TagRecord.to_row` plus ``row_id`` (Parquet), or the JSON line local
  tagging writes plus ``row_id`` (JSONL).
- :func:`jsonl_datasink`: part files holding exactly the lines of a local JSONL output.
- :func:`progress_counter_class`: rows done, for the driver's progress bar.

Test hook: with ``LCIE_FAST_TEST_FAIL_AFTER=N`` in the driver's environment, a tagging actor
fails once, on the batch that takes it past N rows, after waiting (up to 30 s) for some rows of
the run to be checkpointed; the marker ``OUT/_test_failed_once`` makes the rerun pass. It exists
to test resuming; nothing else reads it.

Nothing here imports Ray at import time: the Ray-derived class is built by :func:`jsonl_datasink`.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
import time
from typing import Any

import numpy as np
import torch

from ..inputs import InputItem, decode_input
from ..outputs import RecordFields, TagRecord
from ..postprocess import TagPostprocess
from .layout import CHECKPOINT, TEST_MARKER, source_from_spec

FAIL_AFTER_ENV = "LCIE_FAST_TEST_FAIL_AFTER"


def _text(value: Any) -> str | None:
    """A string cell of a NumPy batch: None for null (a column of nulls reaches NumPy as NaN floats)."""
    return value if isinstance(value, str) else None


def _items(batch: dict[str, Any]) -> list[InputItem]:
    """The inputs of a batch of ``_inputs.parquet`` rows (columns row_id, path, source)."""
    items = []
    for row_id, path, spec in zip(batch["row_id"], batch["path"], batch["source"]):
        source = source_from_spec(path, _text(spec))
        items.append(InputItem(int(row_id), source, str(source)))
    return items


def decode_rows(batch: dict[str, Any], preprocess: Any, hash_name: str | None) -> dict[str, Any]:
    """Decode a batch of inputs to resized images (the ``decode="tasks"`` step).

    Args:
        batch: Columns ``row_id``, ``path``, ``source`` (NumPy).
        preprocess: The model's :class:`~lcie_fast.data.transforms.Preprocess` (limits and resize).
        hash_name: ``sha256`` or ``md5``: also the digest of each input's bytes; None: none.

    Returns:
        The input columns, plus ``image`` (B, 3, S, S) uint8 (zeros where not decoded),
        ``decoded`` (B,) bool, ``error`` (a JSON string literal, so that names which are not
        UTF-8 survive Arrow; None when decoded) and ``digest`` (hex or None).
    """
    items = _items(batch)
    size = preprocess.size
    images = np.zeros((len(items), 3, size, size), dtype=np.uint8)  # (B, 3, S, S)
    decoded = np.zeros(len(items), dtype=bool)
    errors: list[str | None] = []
    digests: list[str | None] = []
    for position, item in enumerate(items):
        image, error, digest = decode_input(item, preprocess, hash_name)
        if image is not None:
            images[position] = image.numpy()
            decoded[position] = True
        errors.append(None if error is None else json.dumps(error))
        digests.append(digest)
    return {"row_id": batch["row_id"], "path": batch["path"], "source": batch["source"], "image": images,
            "decoded": decoded, "error": np.array(errors, dtype=object), "digest": np.array(digests, dtype=object)}


def progress_counter_class() -> type:
    """The class of the progress actor: rows tagged so far, and the backends the actors opened.

    Defined in a function so that Ray ships it by value: the actor's process then imports nothing
    of lcie_fast (torch takes seconds to import, a cost at every start of a run)."""

    class ProgressCounter:
        def __init__(self) -> None:
            self.rows = 0
            self.backends: set[str] = set()

        def add(self, rows: int) -> None:
            self.rows += rows

        def opened(self, backend: str) -> None:
            self.backends.add(backend)

        def state(self) -> tuple[int, list[str]]:
            return self.rows, sorted(self.backends)

    return ProgressCounter


class TagActor:
    """A tagging actor of the pool: the model loaded once, each batch made records.

    Args:
        model: Checkpoint, ONNX graph or engine bundle (on storage this node sees).
        backend, device: As :meth:`~lcie_fast.tagger.Tagger.load`; a backend that cannot run here
            (an engine built for another GPU) fails the job at actor start with the reason.
        thresholds: {label: threshold}, resolved on the driver.
        postprocess: The tag post-processing (``max_tags`` included).
        fields: The record fields of the output.
        fmt: ``parquet`` (rows of :meth:`TagRecord.to_row`) or ``jsonl`` (the JSON line).
        schema: The Arrow schema of Parquet rows (``row_id`` then the record's columns).
        decode_here: Decode in this actor (``decode="actor"``); else batches come decoded.
        progress: A progress counter actor (:func:`progress_counter_class`), or None.
        fail_after: The test hook (see the module docstring), or None.
        store: The output's :class:`~lcie_fast.distributed.layout.Store` (the hook's marker).
    """

    def __init__(self, *, model: str, backend: str, device: str | None, thresholds: dict[str, float],
                 postprocess: TagPostprocess, fields: RecordFields, fmt: str, schema: Any, decode_here: bool,
                 progress: Any = None, fail_after: int | None = None, store: Any = None) -> None:
        from ..tagger import Tagger

        self.tagger = Tagger.load(model, backend=backend, device=device, thresholds=thresholds)
        self.postprocess, self.fields, self.fmt, self.schema = postprocess, fields, fmt, schema
        self.pool = (concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="decode")
                     if decode_here else None)
        self.progress, self.fail_after, self.store = progress, fail_after, store
        self.rows = 0
        self.model_lock = threading.Lock()  # calls may run two at a time: one decodes while the other runs the model
        if progress is not None:
            progress.opened.remote(self.tagger.backend.label)

    def __call__(self, batch: dict[str, Any]) -> Any:
        count = len(batch["row_id"])
        self._test_hook(count)
        decoded = self._decoded(batch)
        with self.model_lock:
            records = self.tagger.tag_decoded(decoded, postprocess=self.postprocess, all_scores=self.fields.all_scores,
                                              hash_name=self.fields.hash_name)
        if self.progress is not None:
            self.progress.add.remote(count)
        return self._table(records)

    def _decoded(self, batch: dict[str, Any]) -> Any:
        from ..tagger import DecodedBatch

        items = _items(batch)
        if self.pool is not None:
            hash_name, preprocess = self.fields.hash_name, self.tagger.preprocess
            results = list(self.pool.map(lambda item: decode_input(item, preprocess, hash_name), items))
            images = [image for image, _, _ in results if image is not None]
            decoded = [position for position, (image, _, _) in enumerate(results) if image is not None]
            errors = {position: error for position, (_, error, _) in enumerate(results) if error is not None}
            digests = {position: digest for position, (_, _, digest) in enumerate(results) if digest is not None}
            return DecodedBatch(items, torch.stack(images) if images else None, decoded, errors, digests=digests)
        decoded = [int(position) for position in np.flatnonzero(batch["decoded"])]
        images = torch.from_numpy(batch["image"][decoded]) if decoded else None  # (B', 3, S, S) uint8, a copy
        errors = {position: json.loads(error) for position, error in enumerate(map(_text, batch["error"])) if error}
        digests = {position: digest for position, digest in enumerate(map(_text, batch["digest"])) if digest}
        return DecodedBatch(items, images, decoded, errors, digests=digests)

    def _table(self, records: list[TagRecord]) -> Any:
        import pyarrow as pa

        row_ids = [record.index for record in records]
        if self.fmt == "jsonl":
            lines = [json.dumps(record.to_json(self.fields), allow_nan=False) for record in records]
            return pa.table({"row_id": pa.array(row_ids, pa.int64()), "line": pa.array(lines, pa.string())})
        rows = [record.to_row(self.fields) for record in records]
        columns = {name: [row[name] for row in rows] for name in self.schema.names if name != "row_id"}
        columns = {"row_id": row_ids, **columns}
        try:
            return pa.Table.from_pydict(columns, schema=self.schema)
        except UnicodeEncodeError:  # a file name that is not UTF-8: escaped as the local Parquet writer does
            from ..outputs.parquet import utf8_safe

            return pa.Table.from_pydict({name: [utf8_safe(value) for value in values] for name, values in columns.items()},
                                        schema=self.schema)

    def _test_hook(self, count: int) -> None:
        """Fail once past ``fail_after`` rows (see the module docstring)."""
        if self.fail_after is None:
            return
        with self.model_lock:
            self.rows += count
            if self.rows <= self.fail_after or self.store.kind(TEST_MARKER) is not None:
                return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(not name.endswith(".pending.parquet")
                                                      for name in self.store.names(CHECKPOINT)):
            time.sleep(0.2)
        self.store.write_bytes(b"", TEST_MARKER)
        raise RuntimeError(f"{FAIL_AFTER_ENV}={self.fail_after}: this tagging actor fails once past {self.fail_after} rows "
                           "(a test hook)")


def jsonl_datasink(path: str, filesystem: Any, min_rows_per_file: int) -> Any:
    """A Ray Data file sink of JSONL part files: each holds the ``line`` column of its rows, sorted by row_id."""
    from ray.data.datasource import BlockBasedFileDatasink

    class JsonlPartSink(BlockBasedFileDatasink):
        def __init__(self) -> None:
            super().__init__(path, filesystem=filesystem, min_rows_per_file=min_rows_per_file, file_format="jsonl")

        def write_block_to_file(self, block: Any, file: Any) -> None:
            table = block.to_arrow().sort_by("row_id")
            file.write("".join(line + "\n" for line in table.column("line").to_pylist()).encode("utf-8"))

    return JsonlPartSink()
