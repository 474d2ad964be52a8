"""Reading any tag output back, and merging the shards of one run (``lcie-fast tag-merge``).

A run split with ``--shard i/n`` writes n outputs, each holding, in index order, the records of
its part of the input order, with ``shard: [i, n]`` in its settings (the JSONL/CSV sidecar
``OUT.meta.json``, or the Parquet metadata) and ``complete: true`` once its run finished.
:func:`merge_outputs` proves that they are the shards of one run -- the same settings, every
shard once, every shard finished, no index twice, no index missing -- before it writes anything,
then streams the records in index order (``heapq.merge``: one record per shard in memory) into
one output of any format, marked complete like the output of an unsharded run.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import heapq
import json
import os
import reprlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import IO, Any, Callable, Iterator

from ..errors import InputNotFoundError, InvalidInputError, UserError
from ..remote import is_url
from .lines import CSV_FIELDS, RecordWriter, inspect_output, mark_complete, parse_csv_labels, read_settings, sidecar_path
from .parquet import ParquetRecordWriter, fields_from_json, inspect_parquet_output, read_parquet_records
from .records import HASH_NAMES, RecordFields, TagRecord

FORMATS = ("jsonl", "csv", "parquet")
# settings that differ between the shards of one run (or say what a file is rather than how its records were made)
NOT_COMPARED = ("shard", "complete", "format", "kind", "version", "fields")
_OPTIONAL_COLUMNS = ("scores_all", *HASH_NAMES, "duplicate_of")
_CHUNK = 4096


def output_format(path: str | Path) -> str | None:
    """``jsonl``, ``csv`` or ``parquet`` from the suffix of ``path`` (a path or URL); None for another suffix."""
    suffix = PurePosixPath(os.fspath(path)).suffix.lower().lstrip(".")
    return suffix if suffix in FORMATS else None


@dataclasses.dataclass
class _Output:
    """An output opened for reading: its settings (None: no sidecar), record fields, and a way to stream its records."""

    name: str
    settings: dict[str, Any] | None
    fields: RecordFields
    records: Callable[[], Iterator[TagRecord]]


def _whole_lines(handle: IO[bytes]) -> Iterator[bytes]:
    """The lines of ``handle`` that end with a newline; a last line cut short by a crash is left out."""
    for line in handle:
        if not line.endswith(b"\n"):
            return
        yield line


def _jsonl_records(path: Path) -> Iterator[TagRecord]:
    with open(path, "rb") as handle:
        for number, line in enumerate(_whole_lines(handle), start=1):
            if not line.strip():
                continue
            try:
                record = TagRecord.from_json(json.loads(line.decode("utf-8")))
            except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
                raise InvalidInputError(f"{path}: line {number} is not a tag record ({err})") from None
            yield record


def _csv_rows(handle: IO[bytes]) -> Iterator[list[str]]:
    return csv.reader(line.decode("utf-8", "surrogateescape") for line in _whole_lines(handle))


def _csv_columns(path: Path) -> list[str]:
    """The header of a CSV output, checked against :attr:`RecordFields.columns`."""
    try:
        with open(path, "rb") as handle:
            header = next(_csv_rows(handle), None)
    except csv.Error as err:
        raise InvalidInputError(f"{path}: not an lcie-fast CSV output ({err})") from None
    if header is None:
        raise InvalidInputError(f"{path}: empty: no header row of an lcie-fast CSV output")
    unknown = [column for column in header[len(CSV_FIELDS):] if column not in _OPTIONAL_COLUMNS]
    if header[: len(CSV_FIELDS)] != CSV_FIELDS or unknown:
        raise InvalidInputError(f"{path}: columns {header[:8]} are not those of an lcie-fast CSV output "
                                f"({CSV_FIELDS} then any of {list(_OPTIONAL_COLUMNS)})")
    return header


def _csv_data(cells: dict[str, str]) -> dict[str, Any]:
    """A CSV row (column -> cell) as :meth:`TagRecord.to_json` data: an empty cell is null."""
    data: dict[str, Any] = {"index": int(cells["index"]), "path": cells["path"] or None, "error": cells["error"] or None,
                            "labels": parse_csv_labels(cells["labels"]) if cells["labels"] else []}
    if "scores_all" in cells:
        data["scores_all"] = json.loads(cells["scores_all"]) if cells["scores_all"] else None
    for name in (*HASH_NAMES, "duplicate_of"):
        if name in cells:
            data[name] = cells[name] or None
    return data


def _csv_records(path: Path, columns: list[str]) -> Iterator[TagRecord]:
    with open(path, "rb") as handle:
        rows = _csv_rows(handle)
        try:
            next(rows, None)  # the header
            for row in rows:
                if not row:
                    continue
                if len(row) != len(columns):
                    raise ValueError(f"{len(row)} cells, {len(columns)} columns")
                try:
                    record = TagRecord.from_json(_csv_data(dict(zip(columns, row))))
                except (ValueError, KeyError, TypeError, AttributeError) as err:
                    raise ValueError(err) from None
                yield record
        except (csv.Error, ValueError) as err:
            raise InvalidInputError(f"{path}: line {rows.line_num} is not a tag record ({err})") from None


def record_fields(settings: dict[str, Any] | None, columns: list[str] | None = None) -> RecordFields:
    """The record fields of an output: its CSV ``columns`` when given, else its settings (labels from the settings)."""
    settings = settings or {}
    if isinstance(settings.get("fields"), dict):
        return fields_from_json(settings["fields"])
    labels = tuple(settings.get("labels") or ())
    if columns is not None:
        return RecordFields(labels, "scores_all" in columns, next((h for h in HASH_NAMES if h in columns), None),
                            "duplicate_of" in columns)
    hash_name = settings.get("hash")
    return RecordFields(labels, bool(settings.get("all_scores")), hash_name if hash_name in HASH_NAMES else None,
                        bool(settings.get("dedup")))


def _is_url(path: str | Path) -> bool:
    """A URL of remote storage (a ``file://`` URL is a local path here)."""
    return is_url(path) and not path.startswith("file://")


def _open_output(path: str | Path) -> _Output:
    name = os.fspath(path)
    fmt = output_format(name)
    if fmt is None:
        raise InvalidInputError(f"{name}: not a tag output by its suffix: expected .jsonl, .csv or .parquet")
    if fmt == "parquet":
        settings, _ = read_parquet_records(path)
        return _Output(name, settings, record_fields(settings), lambda: read_parquet_records(path)[1])
    if _is_url(path):
        raise InvalidInputError(f"{name}: JSONL and CSV outputs are read from local files only; download it (and its "
                                f"{sidecar_path(name).name}) first")
    local = Path(name.removeprefix("file://"))
    if not local.is_file():
        raise InputNotFoundError(f"output not found: {name}")
    settings = read_settings(local)
    if fmt == "jsonl":
        return _Output(name, settings, record_fields(settings), lambda: _jsonl_records(local))
    columns = _csv_columns(local)
    return _Output(name, settings, record_fields(settings, columns), lambda: _csv_records(local, columns))


def read_output(path: str | Path) -> tuple[dict[str, Any] | None, Iterator[TagRecord]]:
    """The settings and records of any tag output, in the order written.

    Args:
        path: A ``.jsonl`` or ``.csv`` file (settings from its sidecar ``OUT.meta.json``) or a
            ``.parquet`` output (local or URL; the finished file, else the parts of an
            unfinished one, settings from its metadata). A last line cut short by a crash is left out.

    Returns:
        The settings (None: a JSONL/CSV output without sidecar) and the records, streamed.

    Raises:
        InvalidInputError: an unknown suffix, or content that is not a tag output's (file and line named).
        InputNotFoundError: the output does not exist.
    """
    output = _open_output(path)
    return output.settings, output.records()


def _differences(first: _Output, other: _Output) -> str | None:
    """The first setting in which ``other`` differs from ``first``, described; None when none does."""
    a, b = first.settings or {}, other.settings or {}
    ordered = [field for field in a if field not in NOT_COMPARED]
    ordered += sorted(field for field in b if field not in a and field not in NOT_COMPARED)
    for field in ordered:
        if a.get(field) == b.get(field):
            continue
        where = f"{field}"
        old, new = a.get(field), b.get(field)
        if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
            position = next(i for i, (x, y) in enumerate(zip(old, new)) if x != y)
            labels = a.get("labels") or []
            where = f"{field}[{labels[position] if field == 'thresholds' and position < len(labels) else position}]"
            old, new = old[position], new[position]
        return (f"{other.name} was written with another {field} than {first.name} ({where} is {reprlib.repr(new)} in "
                f"{other.name}, {reprlib.repr(old)} in {first.name}): they are not shards of one run")
    return None


def _shard_of(output: _Output) -> tuple[int, int]:
    shard = (output.settings or {}).get("shard")
    if shard is None:
        return 0, 1
    if not (isinstance(shard, list) and len(shard) == 2 and all(isinstance(v, int) for v in shard)
            and 0 <= shard[0] < shard[1]):
        raise InvalidInputError(f"{output.name}: its settings hold shard {shard!r}, expected [i, n] with 0 <= i < n")
    return shard[0], shard[1]


def _check_shards(outputs: list[_Output], partial: bool = False) -> int:
    """Every shard i of n exactly once (``partial``: at most once); returns n."""
    first_index, count = _shard_of(outputs[0])
    seen: dict[int, str] = {}
    for output in outputs:
        index, total = _shard_of(output)
        if total != count:
            raise InvalidInputError(f"{output.name} is shard {index} of {total}, but {outputs[0].name} is shard {first_index} "
                                    f"of {count}: they are not shards of one run")
        if index in seen:
            raise InvalidInputError(f"shard {index} of {count} is given twice: {seen[index]} and {output.name}")
        seen[index] = output.name
    missing = [index for index in range(count) if index not in seen]
    if missing and not partial:
        names = ", ".join(f"{index} (-{index:05d}-of-{count:05d})" for index in missing[:10])
        raise InvalidInputError(f"{len(missing)} of {count} shards missing: shard {names}"
                                f"{' ...' if len(missing) > 10 else ''}; merge every shard of the run, or pass --partial")
    return count


def _merged(outputs: list[_Output]) -> Iterator[tuple[int, int, TagRecord]]:
    """(index, number of its output, record) of every record, in index order (each output is in index order)."""
    def numbered(number: int, records: Iterator[TagRecord]) -> Iterator[tuple[int, int, TagRecord]]:
        for record in records:
            yield record.index, number, record

    return heapq.merge(*(numbered(number, output.records()) for number, output in enumerate(outputs)),
                       key=lambda item: item[0])


def _check_indices(outputs: list[_Output], partial: bool) -> tuple[int, int, int | None]:
    """No index twice, each output in index order, no gap in 0..max (unless ``partial``); returns
    (records, missing indices, first missing index)."""
    records = gaps = 0
    first_gap: int | None = None
    previous, previous_output = -1, 0
    for index, number, _ in _merged(outputs):
        name = outputs[number].name
        if index == previous:
            where = f"twice in {name}" if number == previous_output else f"in both {outputs[previous_output].name} and {name}"
            raise InvalidInputError(f"index {index} is {where}: the outputs overlap, they are not shards of one run")
        if index < previous:
            raise InvalidInputError(f"{name} is not in index order (index {index} follows a larger one)" if index >= 0
                                    else f"{name}: negative index {index}")
        if index > previous + 1:
            gaps += index - previous - 1
            first_gap = previous + 1 if first_gap is None else first_gap
        previous, previous_output = index, number
        records += 1
    if gaps and not partial:
        raise InvalidInputError(f"index {first_gap} is in no shard ({gaps} indices missing in all): the merged output "
                                "would lack inputs; pass --partial to merge what is there")
    return records, gaps, first_gap


def _deduplicated(record: TagRecord, originals: dict[str, TagRecord]) -> TagRecord:
    """``--dedup`` across shards: each shard knew only its own inputs, so the first record of each content
    in input order is the original and every later one becomes its duplicate (labels copied), as in
    one unsharded run."""
    if record.digest is None or record.error is not None:
        return record
    original = originals.setdefault(record.digest[1], record)
    if original is record:
        return record
    return dataclasses.replace(record, labels=list(original.labels), duplicate_of=original.key,
                               scores=None if original.scores is None else dict(original.scores))


def _same_place(a: str | Path, b: str | Path) -> bool:
    def place(path: str | Path) -> str:
        text = os.fspath(path)
        return text if _is_url(text) else os.path.realpath(text.removeprefix("file://"))

    return place(a) == place(b)


def write_output(records: Iterable[TagRecord], output: str, fmt: str, settings: dict[str, Any], fields: RecordFields,
                 *, complete: bool = True) -> None:
    """Write ``records`` (in input order) to a fresh ``output`` with the format's writer; with ``settings["dedup"]``
    duplicates are resolved in input order (see :func:`_deduplicated`). Marked complete when ``complete``.

    Raises:
        OutputMismatchError: ``output`` holds something that is not an lcie-fast output.
        OutputWriteError: it cannot be written.
    """
    target = output if fmt == "parquet" else output.removeprefix("file://")
    writer = ParquetRecordWriter(target, fields, settings) if fmt == "parquet" else RecordWriter(
        target, fmt, settings=settings, fields=fields)
    try:
        chunk: list[TagRecord] = []
        originals: dict[str, TagRecord] | None = {} if settings.get("dedup") else None
        for record in records:
            if originals is not None:
                record = _deduplicated(record, originals)
            chunk.append(record)
            if len(chunk) == _CHUNK:
                writer.write(chunk)
                chunk = []
        writer.write(chunk)
    except BaseException:
        with contextlib.suppress(UserError, OSError):  # the first error is the one to show
            (writer.abort if isinstance(writer, ParquetRecordWriter) else writer.close)()
        raise
    if isinstance(writer, ParquetRecordWriter):
        writer.close(complete=complete)
    else:
        writer.close()
        if complete:
            mark_complete(target)


def merge_outputs(inputs: list[str], output: str, fmt: str | None = None, *, partial: bool = False) -> dict[str, Any]:
    """Merge the shard outputs of one run into ``output``, in index order (the input order).

    Everything is checked before anything is written: the inputs' settings are equal but for
    ``shard``, ``complete`` and ``format``; each shard ``i`` of ``n`` is there exactly once (an
    output without ``shard`` is shard 0 of 1); every shard is complete; no index is in two
    inputs; the indices run 0..max without a gap. With ``dedup``, duplicates across shards are
    resolved here (the first record of each content in input order is the original), so the merge
    equals one unsharded run. The merged output has the common settings with
    ``shard: None`` and is marked complete (when it is: not so for a ``partial`` merge with gaps
    or unfinished shards).

    Args:
        inputs: The shard outputs (``.jsonl``, ``.csv``, ``.parquet``; formats may be mixed).
        output: The merged output; an earlier lcie-fast output there is replaced, anything else refused.
        fmt: ``jsonl``, ``csv`` or ``parquet``; default: from ``output``'s suffix.
        partial: Merge what is there: shards missing or not complete, gaps in the indices (the
            merged output is then not marked complete).

    Returns:
        A summary: ``output``, ``format``, ``records``, ``shards``, ``gaps`` (indices missing),
        ``first_gap``, ``incomplete`` (inputs whose run did not finish) and ``complete``.

    Raises:
        InvalidInputError: the inputs are not the complete shards of one run (what is wrong is
            named: the field and file, the missing shard, the duplicated index and its files),
            the output is one of the inputs, or a format is unknown.
        InputNotFoundError: an input does not exist.
        OutputMismatchError: ``output`` exists and is not an lcie-fast output.
    """
    if not inputs:
        raise InvalidInputError("nothing to merge: no shard outputs given")
    fmt = fmt or output_format(output)
    if fmt not in FORMATS:
        raise InvalidInputError(f"{output}: the merged output's format must be one of {', '.join(FORMATS)} (from --format "
                                f"or its suffix), got {fmt!r}")
    if fmt != "parquet" and _is_url(output):
        raise InvalidInputError(f"{output}: a merged JSONL or CSV output is written to a local file; use .parquet for a URL")
    for name in inputs:
        if _same_place(name, output):
            raise InvalidInputError(f"the output {output} is one of the inputs ({name}): write the merge to another file")
    # refuse an output that is not ours before reading the shards (never modifies it)
    if fmt == "parquet":
        inspect_parquet_output(output, {}, overwrite=True)
    else:
        inspect_output(output.removeprefix("file://"), fmt, {}, overwrite=True)

    outputs = [_open_output(name) for name in inputs]
    for source in outputs:
        if source.settings is None:
            raise InvalidInputError(f"{source.name} has no settings file {sidecar_path(source.name).name}: it cannot be "
                                    "proven a shard of this run")
    for source in outputs[1:]:
        difference = _differences(outputs[0], source)
        if difference:
            raise InvalidInputError(difference)
    shards = _check_shards(outputs, partial)
    incomplete = [source.name for source in outputs if source.settings.get("complete") is not True]
    if incomplete and not partial:
        raise InvalidInputError(f"{incomplete[0]} is not complete (its run did not finish every input)"
                                f"{f' and {len(incomplete) - 1} more' if len(incomplete) > 1 else ''}: resume it to the "
                                "end, or pass --partial to merge what is there")
    records, gaps, first_gap = _check_indices(outputs, partial)

    fields = outputs[0].fields
    if fmt == "parquet" and fields.all_scores and not fields.labels:
        raise InvalidInputError(f"{outputs[0].name}: its settings name no labels, needed for the scores_all column of a "
                                "Parquet output")
    settings = {key: value for key, value in outputs[0].settings.items() if key not in ("kind", "complete", "version", "fields")}
    settings.update(shard=None, format=fmt)
    missing_shards = shards - len(outputs)
    complete = not incomplete and not gaps and not missing_shards
    write_output((record for _, _, record in _merged(outputs)), output, fmt, settings, fields, complete=complete)
    return {"output": output, "format": fmt, "records": records, "shards": shards, "gaps": gaps, "first_gap": first_gap,
            "missing_shards": missing_shards, "incomplete": incomplete, "complete": complete}
