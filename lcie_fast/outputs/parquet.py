"""Parquet outputs (``--format parquet``): whole part files while the run goes, one file at its end.

Records are buffered and written as part files ``OUT.parquet.d/part-00000.parquet``,
``part-00001.parquet`` ... every ``part_records`` records. Each part is written under a temporary
name and renamed into place (on remote storage: written as a local file and uploaded in one
request), so a crash leaves only whole parts, and the parts are the resume state:
:func:`inspect_parquet_output` returns the keys of their records. The run's settings (see
:data:`~.lines.SETTINGS`) are written to ``OUT.parquet.d/_settings.json`` before the first part.
When the run finishes, the parts are merged in order into ``OUT.parquet`` (one row group per part,
written atomically, or uploaded once), whose key-value metadata ``lcie_fast`` holds the settings,
the package version, the record fields and ``complete``; then the parts folder is removed.

Rows are :meth:`TagRecord.to_row` flattened: ``labels list<string>`` + ``scores list<float32>``,
``scores_all list<float32>`` in the label order of the metadata's ``fields``. Parquet strings are
UTF-8, so a file name that is not (surrogate-escaped by Python) is written with its lone
surrogates as ``\\udcXX`` escapes rather than failing the run.

Nothing is ever removed unless it is provably an lcie-fast output: a Parquet file with this
metadata, or a parts folder holding our ``_settings.json`` and nothing but our files.

pyarrow is an optional extra (``pip install 'lcie-fast[parquet]'``), and so is fsspec, used only
for URLs (``s3://``, ``memory://`` ...); both are imported at first use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import posixpath
import re
import stat
import tempfile
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Callable, Iterable, Iterator

from .._optional import MissingDependencyError
from ..errors import InputNotFoundError, InvalidInputError, UserError
from ..remote import is_url, url_to_fs
from .lines import SETTINGS, SIDECAR_KIND, OutputMismatchError, OutputWriteError, _difference
from .records import RecordFields, TagRecord

PARTS_SUFFIX = ".d"
SETTINGS_NAME = "_settings.json"
META_KEY = "lcie_fast"
_PART = re.compile(r"part-(\d{5,})\.parquet")
# temporary files of io.atomic_write left by a crash inside a write
_TEMPORARY = re.compile(r"\.(part-\d{5,}\.parquet|_settings\.json)\.[0-9a-f]+\.tmp")
_REFUSE = "refusing to write over it: remove it or choose another output"


def _pyarrow() -> tuple[ModuleType, ModuleType]:
    """pyarrow and pyarrow.parquet, or an error that says how to install them."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as err:
        raise MissingDependencyError(f"Parquet outputs need pyarrow, which cannot be imported here ({err}). Install it "
                                     "with: pip install 'lcie-fast[parquet]'") from err
    return pyarrow, pyarrow.parquet


def parquet_schema(fields: RecordFields) -> Any:
    """The Arrow schema of the rows of an output with ``fields`` (:meth:`TagRecord.to_row`)."""
    pa, _ = _pyarrow()
    columns = [pa.field("index", pa.int64(), nullable=False), pa.field("path", pa.string()),
               pa.field("labels", pa.list_(pa.string())), pa.field("scores", pa.list_(pa.float32())),
               pa.field("error", pa.string())]
    if fields.all_scores:
        columns.append(pa.field("scores_all", pa.list_(pa.float32())))
    if fields.hash_name:
        columns.append(pa.field(fields.hash_name, pa.string()))
    if fields.dedup:
        columns.append(pa.field("duplicate_of", pa.string()))
    return pa.schema(columns)


def fields_to_json(fields: RecordFields) -> dict[str, Any]:
    """``fields`` as stored in the metadata (``fields``); :func:`fields_from_json` reads it back."""
    return {**dataclasses.asdict(fields), "labels": list(fields.labels)}


def fields_from_json(data: dict[str, Any]) -> RecordFields:
    """The :class:`RecordFields` stored by :func:`fields_to_json`."""
    return RecordFields(tuple(data.get("labels") or ()), bool(data.get("all_scores")), data.get("hash_name"),
                        bool(data.get("dedup")))


class _Place:
    """Where an output lives: ``final`` (the file) and ``parts`` (its folder), on the local disk or on
    an fsspec filesystem (``fs``; None for local paths and ``file://`` URLs, which need no fsspec)."""

    def __init__(self, target: str | Path) -> None:
        self.name = os.fspath(target)
        self.fs: Any = None
        path = self.name
        if is_url(target):
            fs, path = url_to_fs(target)
            protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
            if "file" not in protocols:
                self.fs = fs
        self.final = path
        self.parts = path + PARTS_SUFFIX
        self.parts_name = self.name + PARTS_SUFFIX

    def in_parts(self, name: str) -> str:
        return (posixpath if self.fs is not None else os.path).join(self.parts, name)

    def kind(self, path: str) -> str | None:
        """``file``, ``folder``, a special file's kind, or None when nothing is there."""
        if self.fs is not None:
            return "folder" if self.fs.isdir(path) else "file" if self.fs.isfile(path) else None
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(mode):
            return "folder"
        if stat.S_ISREG(mode):
            return "file"
        from ..io import special_file_kind

        return special_file_kind(mode)

    def size(self, path: str) -> int:
        return self.fs.size(path) if self.fs is not None else os.path.getsize(path)

    def names(self) -> list[str]:
        """The names in the parts folder."""
        if self.fs is not None:
            return [posixpath.basename(entry.rstrip("/")) for entry in self.fs.ls(self.parts, detail=False)]
        return os.listdir(self.parts)

    def open(self, path: str) -> IO[bytes]:
        return self.fs.open(path, "rb") if self.fs is not None else open(path, "rb")

    def write(self, path: str, produce: Callable[[IO[bytes]], None]) -> None:
        """Write ``path`` whole or not at all: ``produce`` writes into a local file that then replaces
        ``path`` (local: :func:`~lcie_fast.io.atomic_write`) or is uploaded in one request (remote)."""
        if self.fs is None:
            from ..io import atomic_write

            with atomic_write(path, "wb") as handle:
                produce(handle)
            return
        fd, local = tempfile.mkstemp(prefix="lcie-fast-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                produce(handle)
            self.fs.put_file(local, path)
        finally:
            os.unlink(local)

    def make_parts_folder(self) -> None:
        if self.fs is not None:
            self.fs.makedirs(self.parts, exist_ok=True)
        else:
            os.makedirs(self.parts, exist_ok=True)

    def remove(self, paths: list[str]) -> None:
        for path in paths:
            if self.fs is not None:
                self.fs.rm_file(path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def remove_parts_folder(self) -> None:
        """Remove the parts folder if it is empty (object stores have no folder once it is)."""
        with contextlib.suppress(OSError):
            if self.fs is not None:
                self.fs.rmdir(self.parts)
            else:
                os.rmdir(self.parts)


def _final_metadata(place: _Place) -> dict[str, Any] | None:
    """The ``lcie_fast`` metadata of an existing ``OUT.parquet``; None when there is none (or it is empty).

    Raises:
        OutputMismatchError: something there that is not an lcie-fast Parquet output.
    """
    kind = place.kind(place.final)
    if kind is None:
        return None
    if kind != "file":
        raise OutputMismatchError(f"{place.name} is a {kind}, not an lcie-fast Parquet output; {_REFUSE}")
    if place.size(place.final) == 0:
        return None
    pa, pq = _pyarrow()
    try:
        with place.open(place.final) as handle:
            metadata = pq.read_metadata(handle).metadata or {}
    except (pa.ArrowException, ValueError) as err:
        raise OutputMismatchError(f"{place.name} exists and is not a Parquet file ({err}); {_REFUSE}") from None
    try:
        data = json.loads(metadata.get(META_KEY.encode(), b"null"))
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("kind") != SIDECAR_KIND:
        raise OutputMismatchError(f"{place.name} is a Parquet file but not an lcie-fast tag output (no '{META_KEY}' "
                                  f"metadata of one); {_REFUSE}")
    return data


def _parts_state(place: _Place) -> tuple[dict[str, Any], list[str]] | None:
    """The settings and part files (in order) of an existing parts folder; None when there is none, or it is empty.

    Raises:
        OutputMismatchError: the folder is not provably ours (no ``_settings.json`` of a tag
            output, or a file lcie-fast does not write), or a part is missing.
    """
    kind = place.kind(place.parts)
    if kind is None:
        return None
    if kind != "folder":
        raise OutputMismatchError(f"{place.parts_name} is a {kind}, not the parts folder of an lcie-fast Parquet output; "
                                  f"{_REFUSE}")
    names = place.names()
    if not names:
        return None
    if SETTINGS_NAME not in names:
        raise OutputMismatchError(f"{place.parts_name} holds no {SETTINGS_NAME}: it is not the parts folder of an lcie-fast "
                                  f"Parquet output; {_REFUSE}")
    foreign = sorted(name for name in names if name != SETTINGS_NAME and not _PART.fullmatch(name)
                     and not _TEMPORARY.fullmatch(name))
    if foreign:
        raise OutputMismatchError(f"{place.parts_name} holds {foreign[0]}, which lcie-fast does not write; {_REFUSE}")
    try:
        with place.open(place.in_parts(SETTINGS_NAME)) as handle:
            settings = json.loads(handle.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise OutputMismatchError(f"{place.parts_name}/{SETTINGS_NAME} cannot be read ({err}); pass --overwrite to start "
                                  "the output afresh") from None
    if not isinstance(settings, dict) or settings.get("kind") != SIDECAR_KIND:
        raise OutputMismatchError(f"{place.parts_name}/{SETTINGS_NAME} is not the settings file of an lcie-fast tag "
                                  f"output; {_REFUSE}")
    numbers = sorted(int(match.group(1)) for match in map(_PART.fullmatch, names) if match)
    for expected, number in enumerate(numbers):
        if number != expected:
            raise OutputMismatchError(f"{place.parts_name}: part-{expected:05d}.parquet is missing (part-{number:05d}.parquet "
                                      "follows); the parts cannot be resumed: pass --overwrite to start afresh")
    return settings, [place.in_parts(f"part-{number:05d}.parquet") for number in numbers]


def _check_settings(name: str, stored: dict[str, Any], settings: dict[str, Any]) -> None:
    """Refuse to resume unless ``stored`` holds the same value of every :data:`SETTINGS` key of ``settings``."""
    current = json.loads(json.dumps(settings))  # as stored: tuples become lists
    for field in SETTINGS:
        if field in current and stored.get(field) != current[field]:
            difference = _difference(field, stored.get(field), current[field], stored.get("labels"))
            what = "holds records for other inputs" if field == "inputs" else f"was written with another {field}"
            raise OutputMismatchError(f"{name} {what} ({difference}); resuming would mix both in one output: pass "
                                      "--overwrite to start it afresh, or write to another output")


def _keys(place: _Place, paths: list[str]) -> list[str]:
    """The record keys (path, or ``#index``) of the Parquet files ``paths``, in order."""
    pa, pq = _pyarrow()
    keys = []
    for path in paths:
        try:
            with place.open(path) as handle:
                table = pq.read_table(handle, columns=["index", "path"])
        except (pa.ArrowException, ValueError, KeyError) as err:
            raise OutputMismatchError(f"{path} cannot be read as a part of an lcie-fast Parquet output ({err}); pass "
                                      "--overwrite to start the output afresh") from None
        keys.extend(key if key is not None else f"#{index}"
                    for index, key in zip(table.column("index").to_pylist(), table.column("path").to_pylist()))
    return keys


def inspect_parquet_output(target: str | Path, settings: dict[str, Any], *, overwrite: bool = False) -> list[str] | None:
    """What an existing Parquet output allows, checked before anything is written; never modifies it.

    Args:
        target: ``OUT.parquet``: a local path or an fsspec URL.
        settings: The current run's settings (see :data:`~.lines.SETTINGS`; those known so far).
        overwrite: The output is to be started afresh (allowed only over an lcie-fast output:
            :class:`ParquetRecordWriter` then removes it).

    Returns:
        None: start afresh (nothing there, or to be overwritten); else resume it: the record keys
        (path, or ``#index``) of the whole parts present, in order, or of the finished
        ``OUT.parquet`` (every input is done; a rerun leaves it as it is).

    Raises:
        OutputMismatchError: something there that is not an lcie-fast Parquet output (even with
            ``overwrite``), or (resuming) it was written with other settings (the field named).
    """
    place = _Place(target)
    try:
        final = _final_metadata(place)
        parts = _parts_state(place)
        if overwrite:
            return None
        if final is not None:
            _check_settings(place.name, final, settings)
            return _keys(place, [place.final])
        if parts is not None:
            _check_settings(place.name, parts[0], settings)
            return _keys(place, parts[1])
        return None
    except UserError:
        raise
    except OSError as err:
        raise OutputMismatchError(f"cannot read the existing output {place.name}: {err.strerror or err}") from None


def utf8_safe(value: Any) -> Any:
    """A string (or list of strings) Parquet can hold: lone surrogates written as ``\\udcXX`` escapes."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list):
        return [utf8_safe(item) for item in value]
    return value


class ParquetRecordWriter:
    """Writes records as Parquet part files, merged into one Parquet file by :meth:`close`.

    Check an existing output with :func:`inspect_parquet_output` first. Starting afresh
    (``append=False``) removes an earlier lcie-fast output there (its file and parts) and refuses
    anything else; resuming (``append=True``) checks the stored settings against ``settings``
    (now complete: labels and thresholds) and numbers new parts after the parts present. Over a
    finished ``OUT.parquet``, resuming adds nothing: :meth:`close` leaves the file as it is.
    Every OS error becomes an :class:`~.lines.OutputWriteError` naming the output.

    Args:
        target: ``OUT.parquet``: a local path or an fsspec URL (``s3://``, ``memory://`` ...).
        fields: The optional fields of every record (and the label order of ``scores_all``).
        settings: What decides the records (see :data:`~.lines.SETTINGS`), stored in
            ``_settings.json`` and in the final file's metadata.
        append: Continue the parts (or finished file) already there instead of starting afresh.
        part_records: Records per part file: a crash loses at most this many.

    Raises:
        OutputMismatchError: what is there is not an lcie-fast output, or (``append``) holds
            other settings.
        InvalidInputError: ``part_records`` below 1.
    """

    def __init__(self, target: str | Path, fields: RecordFields, settings: dict[str, Any], *, append: bool = False,
                 part_records: int = 10_000) -> None:
        if part_records < 1:
            raise InvalidInputError(f"part_records must be at least 1, got {part_records}")
        self.pa, self.pq = _pyarrow()
        self.place = _Place(target)
        self.name = self.place.name
        self.fields, self.part_records = fields, part_records
        self.schema = parquet_schema(fields)
        self.settings = {"kind": SIDECAR_KIND, **settings, "fields": fields_to_json(fields)}
        self.finished = self.closed = False
        self._columns: dict[str, list[Any]] = {name: [] for name in self.schema.names}
        self._buffered = 0
        self._next_part = self._guard(lambda: self._open(append, settings))

    def _guard(self, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except UserError:
            raise
        except OSError as err:
            raise OutputWriteError(f"cannot write the output {self.name}: {err.strerror or err}") from None

    def _open(self, append: bool, settings: dict[str, Any]) -> int:
        """Prepare the output; returns the number of the next part."""
        final = _final_metadata(self.place)
        parts = _parts_state(self.place)
        if append and final is not None:
            _check_settings(self.name, final, settings)
            self.finished = True
            return 0
        if append and parts is not None:
            _check_settings(self.name, parts[0], settings)
            self.settings = {**parts[0], **self.settings}
            return len(parts[1])
        # afresh: only what is provably ours was found (else the checks above raised)
        self._remove_parts()
        if self.place.kind(self.place.final) == "file":
            self.place.remove([self.place.final])
        self.place.make_parts_folder()
        text = json.dumps(self.settings, indent=2) + "\n"
        self.place.write(self.place.in_parts(SETTINGS_NAME), lambda handle: handle.write(text.encode("utf-8")))
        return 0

    def _remove_parts(self) -> None:
        """Remove the parts folder, last part first and the settings last: a crash in between leaves parts a rerun can judge."""
        if self.place.kind(self.place.parts) != "folder":  # proven ours (or absent) by _parts_state before
            return
        names = self.place.names()
        temporary = [name for name in names if _TEMPORARY.fullmatch(name)]
        parts = sorted((name for name in names if _PART.fullmatch(name)), key=lambda name: int(name[5:-8]), reverse=True)
        self.place.remove([self.place.in_parts(name) for name in temporary + parts])
        if SETTINGS_NAME in names:
            self.place.remove([self.place.in_parts(SETTINGS_NAME)])
        self.place.remove_parts_folder()

    def write(self, records: Iterable[TagRecord]) -> int:
        """Buffer ``records``, writing a part every ``part_records``; returns how many.

        Raises:
            OutputMismatchError: the output is already finished (every input has its record).
            OutputWriteError: a part cannot be written (named).
        """
        if self.closed:
            raise OutputWriteError(f"{self.name}: the writer is closed")
        count = 0
        for record in records:
            if self.finished:
                raise OutputMismatchError(f"{self.name} is finished (it holds a record of every input): no record can be "
                                          f"added to it (record {record.key}); pass --overwrite to start it afresh")
            row = record.to_row(self.fields)
            for name, values in self._columns.items():
                values.append(row[name])
            self._buffered += 1
            count += 1
            if self._buffered >= self.part_records:
                self._flush()
        return count

    def _table(self) -> Any:
        try:
            return self.pa.Table.from_pydict(self._columns, schema=self.schema)
        except UnicodeEncodeError:  # a file name that is not UTF-8 (surrogate-escaped)
            columns = {name: [utf8_safe(value) for value in values] for name, values in self._columns.items()}
            return self.pa.Table.from_pydict(columns, schema=self.schema)

    def _flush(self) -> None:
        if not self._buffered:
            return
        table = self._table()
        path = self.place.in_parts(f"part-{self._next_part:05d}.parquet")
        self._guard(lambda: self.place.write(path, lambda handle: self.pq.write_table(table, handle)))
        self._next_part += 1
        self._columns = {name: [] for name in self.schema.names}
        self._buffered = 0

    def close(self, *, complete: bool = True) -> None:
        """Write the buffered records as a last part, merge the parts into ``OUT.parquet``, remove the parts.

        Args:
            complete: Stored in the metadata: every input has its record (False for a merge of
                shards with gaps).

        Raises:
            OutputWriteError: the output cannot be written (named); the parts are kept.
        """
        if self.closed:
            return
        self.closed = True
        if self.finished:  # a rerun over a finished output: leave it, remove parts a crash left beside it
            self._guard(self._remove_parts)
            return
        self._flush()
        paths = [self.place.in_parts(f"part-{number:05d}.parquet") for number in range(self._next_part)]
        from .. import __version__

        metadata = {**self.settings, "version": __version__, "complete": complete}
        schema = self.schema.with_metadata({META_KEY: json.dumps(metadata)})

        def merge(handle: IO[bytes]) -> None:
            with self.pq.ParquetWriter(handle, schema) as out:
                for path in paths:
                    with self.place.open(path) as part:
                        table = self.pq.read_table(part)
                    if not table.schema.equals(self.schema, check_metadata=False):
                        raise OutputMismatchError(f"{path} has other columns than this output ({table.schema.names}, "
                                                  f"expected {self.schema.names}); pass --overwrite to start afresh")
                    out.write_table(table)

        self._guard(lambda: self.place.write(self.place.final, merge))
        self._guard(self._remove_parts)

    def abort(self) -> None:
        """Stop without merging: the whole parts written so far stay, to be resumed; buffered records are dropped."""
        self.closed = True
        self._columns = {name: [] for name in self.schema.names}
        self._buffered = 0

    def __enter__(self) -> ParquetRecordWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def read_parquet_records(target: str | Path) -> tuple[dict[str, Any], Iterator[TagRecord]]:
    """The settings and records of a Parquet output: the finished file, else the parts of an unfinished one.

    Returns:
        The metadata (settings, ``fields``; ``version`` and ``complete`` once finished) and the
        records in the order written, read part by part (row group by row group).

    Raises:
        InputNotFoundError: neither ``OUT.parquet`` nor its parts folder is there.
        OutputMismatchError: what is there is not an lcie-fast Parquet output.
    """
    place = _Place(target)
    try:
        settings = _final_metadata(place)
        if settings is not None:
            paths = [place.final]
        else:
            parts = _parts_state(place)
            if parts is None:
                raise InputNotFoundError(f"{place.name}: no Parquet output there (neither the file nor its parts folder "
                                         f"{place.parts_name})")
            settings, paths = parts
    except UserError:
        raise
    except OSError as err:
        raise OutputMismatchError(f"cannot read the output {place.name}: {err.strerror or err}") from None
    labels = (settings.get("fields") or {}).get("labels") or settings.get("labels") or []
    return settings, _records(place, paths, labels)


def _records(place: _Place, paths: list[str], labels: list[str]) -> Iterator[TagRecord]:
    _, pq = _pyarrow()
    for path in paths:
        with place.open(path) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=4096):
                for row in batch.to_pylist():
                    yield TagRecord.from_row(row, labels)
