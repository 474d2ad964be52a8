"""The output folder of a distributed tagging run, and reading it back in input order.

A run of :func:`~lcie_fast.distributed.tag_dataset` owns one folder ``OUT/``::

    OUT/_settings.json     what decides the records (model, labels, thresholds, inputs' SHA-256 ...)
    OUT/_inputs.parquet    the expanded inputs: row_id int64, path string, source string (see below)
    OUT/parts/             the records, Parquet or JSONL part files written by Ray Data, in no order
    OUT/_checkpoint/       Ray Data's checkpoint of the row_ids written (while the run is unfinished)
    OUT/stats.json         the statistics of the last run
    OUT/_SUCCESS           every input has exactly one record in the parts

Inputs are expanded once, on the driver, and written to ``_inputs.parquet`` so that Ray reads them
(and its checkpoint filters them) like any dataset. ``path`` is what records call the input
(escaped as ``\\udcXX`` where the name is not UTF-8); ``source`` is null for a plain file and
otherwise a JSON object that rebuilds what :func:`~lcie_fast.inputs.decode_input` needs in a
worker: a WebDataset member's offset and size, a URL, the list and line a path came from, the
error of an input known bad. JSON keeps every character of a name, so nothing is lost in transit.

Every part row carries ``row_id`` (the input's position); :func:`read_ray_output` checks that each
row_id is there exactly once and streams the records sorted by it, opening a part file only when
the merge reaches its first row_id, so memory holds the parts that overlap, not the output.

Storage is anything pyarrow and Ray write to: a local path, or a URL such as ``s3://bucket/out``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import os
import posixpath
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..errors import InputNotFoundError, InvalidInputError, UserError
from ..inputs import ListedPath
from ..outputs import TagRecord
from ..outputs.lines import SIDECAR_KIND, OutputMismatchError
from ..remote import RemotePath, is_url
from ..webdataset import FailedInput, TarMember

INPUTS = "_inputs.parquet"
SETTINGS_FILE = "_settings.json"
STATS = "stats.json"
SUCCESS = "_SUCCESS"
PARTS = "parts"
CHECKPOINT = "_checkpoint"
TEST_MARKER = "_test_failed_once"  # see workers.FAIL_AFTER_ENV
OWN_NAMES = (INPUTS, SETTINGS_FILE, STATS, SUCCESS, PARTS, CHECKPOINT, TEST_MARKER)
TEMPORARY_SUFFIX = ".writing"
PART_SUFFIXES = {"parquet": ".parquet", "jsonl": ".jsonl"}
_INPUT_ROWS_PER_GROUP = 65_536


class Store:
    """The folder ``OUT/`` on its filesystem: a pyarrow filesystem and the folder's path on it.

    Args:
        output: A local path or a URL pyarrow opens (``s3://``, ``gs://``, ``hdfs://``, ``file://``).

    Raises:
        InvalidInputError: a URL whose filesystem pyarrow cannot open (the reason named).
    """

    def __init__(self, output: str | os.PathLike) -> None:
        import pyarrow.fs

        self.name = os.fspath(output)
        self.url = is_url(self.name)
        if self.url:
            try:
                self.fs, self.root = pyarrow.fs.FileSystem.from_uri(self.name)
            except (ValueError, OSError, ImportError) as err:
                raise InvalidInputError(f"cannot open the output {self.name}: {err}") from None
        else:
            self.fs, self.root = pyarrow.fs.LocalFileSystem(), os.path.abspath(self.name)
        self.root = self.root.rstrip("/") or "/"

    @property
    def local(self) -> bool:
        """A folder on this machine's filesystem (given as a plain path or a ``file://`` URL)."""
        import pyarrow.fs

        return isinstance(self.fs, pyarrow.fs.LocalFileSystem)

    def path(self, *names: str) -> str:
        """The path of ``OUT/<names...>`` on :attr:`fs`."""
        return posixpath.join(self.root, *names)

    def kind(self, *names: str) -> str | None:
        """``file``, ``folder``, ``other`` or None (nothing there) for ``OUT/<names...>``."""
        import pyarrow.fs

        info = self.fs.get_file_info(self.path(*names))
        if info.type == pyarrow.fs.FileType.NotFound:
            return None
        return {pyarrow.fs.FileType.File: "file", pyarrow.fs.FileType.Directory: "folder"}.get(info.type, "other")

    def names(self, *names: str) -> list[str]:
        """The names in the folder ``OUT/<names...>`` (empty when it does not exist)."""
        import pyarrow.fs

        selector = pyarrow.fs.FileSelector(self.path(*names), allow_not_found=True)
        return sorted(posixpath.basename(info.path) for info in self.fs.get_file_info(selector))

    def read_bytes(self, *names: str) -> bytes:
        with self.fs.open_input_stream(self.path(*names)) as handle:
            return handle.read()

    def write_bytes(self, data: bytes, *names: str) -> None:
        """Write ``OUT/<names...>`` whole or not at all: a temporary file moved into place."""
        final = self.path(*names)
        self.fs.create_dir(posixpath.dirname(final), recursive=True)
        temporary = final + TEMPORARY_SUFFIX
        with self.fs.open_output_stream(temporary) as handle:
            handle.write(data)
        self.fs.move(temporary, final)

    def write_json(self, data: Any, *names: str) -> None:
        self.write_bytes((json.dumps(data, indent=2) + "\n").encode("utf-8"), *names)

    def remove(self, *names: str) -> None:
        """Remove ``OUT/<names...>`` (a file or a whole folder); nothing there is fine."""
        kind = self.kind(*names)
        if kind == "folder":
            self.fs.delete_dir(self.path(*names))
        elif kind is not None:
            self.fs.delete_file(self.path(*names))


# ----------------------------------------------------------------------------- inputs
def source_spec(source: Any, position: int) -> tuple[str, str | None]:
    """``(path, source)`` of one expanded input, as ``_inputs.parquet`` stores it (see the module docstring).

    Raises:
        InvalidInputError: an in-memory image (distributed tagging reads files, shard members and URLs).
    """
    if not isinstance(source, str):
        raise InvalidInputError(f"input {position} is an in-memory {type(source).__name__}: distributed tagging reads "
                                "files, WebDataset shards and URLs; tag in-memory images with Tagger.tag")
    text = str(source)
    spec: dict[str, Any] | None = None
    if isinstance(source, TarMember):
        spec = {"kind": "member", "shard": len(source.shard), "member": source.member, "offset": source.offset,
                "size": source.size}
    elif isinstance(source, FailedInput):
        spec = {"kind": "failed", "error": source.error}
    elif isinstance(source, RemotePath):
        spec = {"kind": "remote", "origin": source.origin}
    elif isinstance(source, ListedPath):
        spec = {"kind": "listed", "origin": source.origin}
    try:
        text.encode("utf-8")
        shown = text
    except UnicodeEncodeError:  # a file name that is not UTF-8 (surrogate-escaped): the exact name goes in source
        shown = text.encode("utf-8", "backslashreplace").decode("utf-8")
        spec = spec or {"kind": "file"}
    if spec is not None and shown != text:
        spec["path"] = text
    return shown, None if spec is None else json.dumps(spec)


def source_from_spec(path: str, spec: str | None) -> str:
    """The input :func:`source_spec` described, rebuilt in a worker: a path string, or the
    :class:`~lcie_fast.webdataset.TarMember`, :class:`~lcie_fast.remote.RemotePath`,
    :class:`~lcie_fast.inputs.ListedPath` or :class:`~lcie_fast.webdataset.FailedInput` it was."""
    if spec is None:
        return path
    data = json.loads(spec)
    text = data.get("path", path)
    kind = data["kind"]
    if kind == "member":
        cut = data["shard"]
        return TarMember(text[:cut], text[cut + 1:], data["member"], data["offset"], data["size"])
    if kind == "failed":
        return FailedInput(text, data["error"])
    if kind == "remote":
        return RemotePath(text, data["origin"])
    if kind == "listed":
        return ListedPath(text, data["origin"])
    return text


def input_schema() -> Any:
    import pyarrow as pa

    return pa.schema([pa.field("row_id", pa.int64(), nullable=False), pa.field("path", pa.string()),
                      pa.field("source", pa.string())])


def write_inputs(store: Store, sources: Iterable[Any], name: str) -> tuple[int, str]:
    """Number ``sources`` and write them to ``OUT/<name>`` (Parquet, :func:`input_schema`), streaming.

    Returns:
        (number of inputs, SHA-256 of the list: every path and source, in order).

    Raises:
        InvalidInputError: an in-memory image among the inputs (the file is removed).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = input_schema()
    digest = hashlib.sha256()
    count = 0
    store.fs.create_dir(store.root, recursive=True)
    target = store.path(name)
    try:
        with store.fs.open_output_stream(target) as handle, pq.ParquetWriter(handle, schema) as writer:
            columns: dict[str, list[Any]] = {"row_id": [], "path": [], "source": []}

            def flush() -> None:
                writer.write_table(pa.Table.from_pydict(columns, schema=schema))
                for values in columns.values():
                    values.clear()

            for source in sources:
                path, spec = source_spec(source, count)
                digest.update(f"{path}\t{spec or ''}\n".encode())
                columns["row_id"].append(count)
                columns["path"].append(path)
                columns["source"].append(spec)
                count += 1
                if len(columns["row_id"]) == _INPUT_ROWS_PER_GROUP:
                    flush()
            if columns["row_id"] or count == 0:
                flush()
    except BaseException:
        store.remove(name)
        raise
    return count, digest.hexdigest()


# ---------------------------------------------------------------------------- settings
def read_settings(store: Store) -> dict[str, Any] | None:
    """The settings of the run in ``OUT/`` (None when there is no ``_settings.json``).

    Raises:
        OutputMismatchError: a ``_settings.json`` that is not an lcie-fast distributed run's.
    """
    if store.kind(SETTINGS_FILE) is None:
        return None
    try:
        data = json.loads(store.read_bytes(SETTINGS_FILE).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise OutputMismatchError(f"{store.name}/{SETTINGS_FILE} cannot be read ({err}); pass overwrite to start the "
                                  "output afresh") from None
    if not isinstance(data, dict) or data.get("kind") != SIDECAR_KIND or data.get("engine") != "ray":
        raise OutputMismatchError(f"{store.name}/{SETTINGS_FILE} is not the settings file of an lcie-fast distributed "
                                  "tagging run")
    return data


def foreign_names(store: Store) -> list[str]:
    """What is in ``OUT/`` that a distributed run does not write (never removed, even with overwrite)."""
    return [name for name in store.names() if name not in OWN_NAMES and not name.endswith(TEMPORARY_SUFFIX)]


# ------------------------------------------------------------------------------- parts
@dataclasses.dataclass
class Part:
    """One part file: its name, and the row_id of each of its rows (in file order)."""

    name: str
    row_ids: np.ndarray
    errors: list[str | None] | None = None

    @property
    def first(self) -> int:
        return int(self.row_ids.min())


def _read_part(store: Store, fmt: str, name: str, errors: bool) -> Part:
    """The row_ids (and, with ``errors``, the error of each row) of one part file."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with store.fs.open_input_file(store.path(PARTS, name)) as handle:
            table = pq.read_table(handle, columns=["row_id", "error"] if errors else ["row_id"])
        return Part(name, table.column("row_id").to_numpy(), table.column("error").to_pylist() if errors else None)
    row_ids, messages = [], []
    for data in _jsonl_rows(store, name):
        row_ids.append(int(data["index"]))
        messages.append(data.get("error"))
    return Part(name, np.asarray(row_ids, dtype=np.int64), messages if errors else None)


def _jsonl_rows(store: Store, name: str) -> Iterator[dict[str, Any]]:
    """The records of a JSONL part as JSON data; a last line cut short by a crash is left out."""
    data = store.read_bytes(PARTS, name)
    for number, line in enumerate(data.split(b"\n")[:-1], start=1):
        if line.strip():
            try:
                yield json.loads(line)
            except ValueError as err:
                raise InvalidInputError(f"{store.name}/{PARTS}/{name}: line {number} is not a tag record ({err})") from None


def part_names(store: Store, fmt: str) -> list[str]:
    """The part files in ``OUT/parts`` (those of ``fmt``)."""
    return [name for name in store.names(PARTS) if name.endswith(PART_SUFFIXES[fmt])]


def scan_parts(store: Store, fmt: str, names: Iterable[str], *, errors: Iterable[str] = (),
               skip_unreadable: bool = False) -> list[Part]:
    """Read the row_ids of the part files ``names`` (and the errors of those in ``errors``).

    Args:
        skip_unreadable: Leave out a part that cannot be read (a file cut short by a crash:
            its rows were never checkpointed), saying so on stderr; else raise.

    Raises:
        InvalidInputError: a part that cannot be read (named).
    """
    import pyarrow as pa

    wanted = set(errors)
    parts = []
    for name in names:
        try:
            part = _read_part(store, fmt, name, name in wanted)
        except (OSError, pa.ArrowException, InvalidInputError, KeyError, TypeError, ValueError) as err:
            if not skip_unreadable:
                raise InvalidInputError(f"{store.name}/{PARTS}/{name} cannot be read as a part of this output ({err})") from None
            print(f"lcie-fast: left out {store.name}/{PARTS}/{name}: it cannot be read ({err})", file=sys.stderr)
            continue
        if len(part.row_ids):
            parts.append(part)
    return parts


def check_row_ids(parts: list[Part], total: int, where: str, *, partial: bool = False) -> int:
    """Every row_id 0..total-1 exactly once in ``parts`` (``partial``: at most once); returns the rows there.

    Raises:
        OutputMismatchError: a row_id twice (with the parts that hold it), one missing, or out of range.
    """
    if not parts:
        everything = np.zeros(0, dtype=np.int64)
    else:
        everything = np.concatenate([part.row_ids for part in parts])
    ordered = np.sort(everything, kind="stable")
    if len(ordered) and (ordered[0] < 0 or ordered[-1] >= total):
        bad = int(ordered[0] if ordered[0] < 0 else ordered[-1])
        raise OutputMismatchError(f"{where}: row_id {bad} is not one of the {total} inputs: the parts are not this run's; "
                                  "pass overwrite to start afresh")
    twice = ordered[1:][ordered[1:] == ordered[:-1]]
    if len(twice):
        row = int(twice[0])
        holders = [part.name for part in parts if np.any(part.row_ids == row)]
        raise OutputMismatchError(f"{where}: row_id {row} is in the parts {int(np.count_nonzero(ordered == row))} times "
                                  f"({', '.join(holders[:4])}); {len(twice)} rows too many in all: pass overwrite to start "
                                  "afresh")
    if not partial and len(ordered) != total:
        present = np.zeros(total, dtype=bool)
        present[ordered] = True
        missing = np.flatnonzero(~present)
        raise OutputMismatchError(f"{where}: {len(missing)} of {total} inputs have no record (row_id {int(missing[0])} "
                                  "first); rerun to resume")
    return len(ordered)


# ------------------------------------------------------------------------------ reading
def read_ray_output(out_dir: str | os.PathLike, *, partial: bool = False) -> tuple[dict[str, Any], Iterator[TagRecord]]:
    """The settings and the records of a distributed run, sorted by row_id (the input order).

    Everything is checked before the first record comes: ``OUT/_SUCCESS`` is there (unless
    ``partial``), and every row_id is in the parts exactly once (``partial``: at most once; a
    part cut short by a crash is left out, with a note on stderr).

    Args:
        out_dir: The run's folder (local path or URL).
        partial: Read an unfinished run: the records written so far.

    Returns:
        The run's settings (``_settings.json``, with ``complete``: whether ``_SUCCESS`` is
        there) and its records, streamed (:meth:`TagRecord.from_row` / :meth:`TagRecord.from_json`:
        the same records local tagging writes).

    Raises:
        InputNotFoundError: ``out_dir`` holds no distributed run.
        InvalidInputError: no ``_SUCCESS`` and not ``partial``; a part that cannot be read.
        OutputMismatchError: a row_id twice, missing, or not one of the inputs.
    """
    store = Store(out_dir)
    try:
        settings = read_settings(store)
        if settings is None:
            raise InputNotFoundError(f"{store.name}: no distributed tagging run there (no {SETTINGS_FILE})")
        complete = store.kind(SUCCESS) == "file"
        if not complete and not partial:
            raise InvalidInputError(f"{store.name} has no {SUCCESS}: its run did not finish every input; rerun it to resume, "
                                    "or read what is there with partial=True (--partial)")
        fmt = settings["format"]
        parts = scan_parts(store, fmt, part_names(store, fmt), skip_unreadable=partial)
        check_row_ids(parts, int(settings["inputs_count"]), store.name, partial=partial or not complete)
    except UserError:
        raise
    except OSError as err:
        raise OutputMismatchError(f"cannot read the output {store.name}: {err.strerror or err}") from None
    labels = list(settings.get("labels") or [])
    return {**settings, "complete": complete}, _merged(parts, lambda part: _sorted_records(store, fmt, part.name, labels))


def _sorted_records(store: Store, fmt: str, name: str, labels: list[str]) -> Iterator[TagRecord]:
    """The records of one part, sorted by row_id (a part is at most a few write blocks: read whole)."""
    if fmt == "jsonl":
        records = [TagRecord.from_json(data) for data in _jsonl_rows(store, name)]
        yield from sorted(records, key=lambda record: record.index)
        return
    import pyarrow.parquet as pq

    with store.fs.open_input_file(store.path(PARTS, name)) as handle:
        table = pq.read_table(handle)
    table = table.take(np.argsort(table.column("row_id").to_numpy(), kind="stable"))
    for batch in table.to_batches(max_chunksize=4096):
        for row in batch.to_pylist():
            yield TagRecord.from_row(row, labels)


def _merged(parts: list[Part], records_of: Any) -> Iterator[TagRecord]:
    """The records of all ``parts`` in row_id order; a part is opened when the merge reaches its first row_id."""
    waiting = sorted(range(len(parts)), key=lambda number: parts[number].first)
    heap: list[tuple[int, int, TagRecord, Iterator[TagRecord]]] = []
    position = 0
    while heap or position < len(waiting):
        while position < len(waiting) and (not heap or parts[waiting[position]].first <= heap[0][0]):
            number = waiting[position]
            stream = records_of(parts[number])
            record = next(stream, None)
            if record is not None:
                heapq.heappush(heap, (record.index, number, record, stream))
            position += 1
        if not heap:
            continue
        _, number, record, stream = heapq.heappop(heap)
        yield record
        following = next(stream, None)
        if following is not None:
            heapq.heappush(heap, (following.index, number, following, stream))
