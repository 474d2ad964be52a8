"""Record outputs (JSONL or CSV), flushed batch by batch and resumable.

Rerunning ``lcie-fast tag`` onto the same output continues where the previous run stopped: the
records already written are counted (a line cut short by a crash is removed), their inputs are
checked against the current inputs, and tagging starts after them. Nothing is lost and nothing
is written twice.

An output file is never touched unless it is empty or provably a tag output: its records parse
as tag records, and to resume it, the sidecar ``OUT.meta.json`` written beside it (before its
first record) must name the same model (SHA-256), labels, thresholds, ``top_k``,
``all_scores``, format and input spec. The settings live in a sidecar rather than a header
line so that the output stays plain JSONL (every line a record) and plain CSV (one header row)
for every reader.

File names that are not valid UTF-8 (surrogate-escaped by Python) are kept exactly: JSONL
escapes them (``"\\udcff"``, ASCII JSON), CSV writes their original bytes. Scores that are
not finite (NaN from a broken model) are written as ``null`` and the record's error says so,
so every line is strict JSON.
"""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from ..errors import InvalidInputError, UserError
from .records import RecordFields, TagRecord

CSV_FIELDS = ["index", "path", "labels", "error"]  # then the optional fields of RecordFields.columns
SIDECAR_SUFFIX = ".meta.json"
SIDECAR_KIND = "lcie-fast tag output"
# the settings that decide an output's records; a resumed run must match every one
SETTINGS = ("format", "model_sha256", "labels", "thresholds", "top_k", "all_scores", "hash", "dedup", "postprocess",
            "shard", "inputs")


class OutputMismatchError(UserError, ValueError):
    """An existing output that is not a tag output, or holds records of other inputs or settings."""


class OutputWriteError(UserError, OSError):
    """An output that cannot be written (no space, no permission ...); the message names it and why."""


def sidecar_path(path: str | Path) -> Path:
    """Where the settings of the output ``path`` are kept: ``path`` + ``.meta.json``."""
    return Path(f"{path}{SIDECAR_SUFFIX}")


def _is_regular_output(path: Path) -> bool:
    """A file that can hold a resumable output (not a device or FIFO such as /dev/null)."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except FileNotFoundError:
        return True
    except OSError as err:
        raise _write_error(path, err) from None


def _write_error(path: str | Path, err: OSError) -> OutputWriteError:
    return OutputWriteError(f"cannot write the output {path}: {err.strerror or err}")


def _complete_lines(path: Path) -> Iterator[bytes]:
    """The lines of ``path`` that end with a newline; a last line cut short by a crash is left out."""
    with open(path, "rb") as handle:
        pending = b""
        for line in handle:
            if line.endswith(b"\n"):
                yield pending + line
                pending = b""
            else:
                pending += line


def _read_keys(path: Path, fmt: str) -> list[str]:
    """The input key (path, or ``#index``) of every complete record; never modifies ``path``.

    Raises:
        OutputMismatchError: ``path`` holds something that is not a tag output of format ``fmt``.
    """
    keys = []
    if fmt == "jsonl":
        for number, line in enumerate(_complete_lines(path), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
            if not (isinstance(record, dict) and {"labels", "error"} <= record.keys()
                    and ("path" in record or "index" in record)):
                raise OutputMismatchError(f"{path}: line {number} is not a tag record: it is not an lcie-fast "
                                          "JSONL output")
            keys.append(record["path"] if record.get("path") is not None else f"#{record.get('index')}")
        return keys
    lines = (line.decode("utf-8", "surrogateescape") for line in _complete_lines(path))
    try:
        rows = csv.reader(lines)
        header = next(rows, None)
        if header is not None and header[: len(CSV_FIELDS)] != CSV_FIELDS:
            raise OutputMismatchError(f"{path}: columns {header[:8]} are not those of an lcie-fast CSV output "
                                      f"({RecordFields(all_scores=True, hash_name='sha256', dedup=True).columns})")
        keys = [row[1] if row[1] else f"#{row[0]}" for row in rows if row]
    except csv.Error as err:
        raise OutputMismatchError(f"{path}: not an lcie-fast CSV output ({err})") from None
    return keys


def existing_keys(path: str | Path, fmt: str) -> list[str]:
    """The input key (path, or ``#index``) of every complete record in an existing output; never modifies it."""
    path = Path(path)
    if not path.is_file():
        return []
    return _read_keys(path, fmt)


def read_settings(path: str | Path) -> dict[str, Any] | None:
    """The settings sidecar of the JSONL/CSV output ``path`` (None when it has none).

    Keys: :data:`SETTINGS`, ``kind``, and ``complete`` (True once a run finished every input).

    Raises:
        OutputMismatchError: the sidecar cannot be read or is not an lcie-fast tag output's.
    """
    path = Path(path)
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OutputMismatchError(f"{path}: its settings file {side} cannot be read ({err}); pass --overwrite "
                                  "to start the output afresh") from None
    if not isinstance(data, dict) or data.get("kind") != SIDECAR_KIND:
        raise OutputMismatchError(f"{path}: {side} is not the settings file of an lcie-fast tag output")
    return data


def mark_complete(path: str | Path) -> None:
    """Record in the sidecar of ``path`` that the run finished every input (``complete: true``)."""
    from ..io import atomic_write

    settings = read_settings(path)
    if settings is None:
        return
    with atomic_write(sidecar_path(path), "w") as side:
        json.dump({**settings, "complete": True}, side, indent=2)
        side.write("\n")


def _difference(field: str, stored: Any, current: Any, labels: list[str] | None) -> str:
    if field in ("labels", "thresholds") and isinstance(stored, list) and isinstance(current, list):
        if len(stored) != len(current):
            return f"{len(stored)} {field} there, {len(current)} now"
        for position, (old, new) in enumerate(zip(stored, current)):
            if old != new:
                name = labels[position] if labels and position < len(labels) else position
                return f"{field}[{name}] is {old!r} there, {new!r} now"
    return f"{_short(stored)} there, {_short(current)} now"


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_settings(path: str | Path, settings: dict[str, Any]) -> None:
    """Refuse to resume ``path`` unless its sidecar holds the same value of every key of ``settings``.

    Raises:
        OutputMismatchError: the sidecar is missing, unreadable, or one field differs (named).
    """
    path = Path(path)
    stored = read_settings(path)
    if stored is None:
        raise OutputMismatchError(
            f"{path} has no settings file {sidecar_path(path).name} (written by an older lcie-fast, or removed): it "
            "cannot be proven to hold results of this model and these thresholds; pass --overwrite to start it "
            "afresh, or write to another output")
    for field in SETTINGS:
        if field in settings and stored.get(field) != settings[field]:
            difference = _difference(field, stored.get(field), settings[field], stored.get("labels"))
            what = "holds records for other inputs" if field == "inputs" else f"was written with another {field}"
            raise OutputMismatchError(
                f"{path} {what} ({difference}); resuming would mix both in one file: pass --overwrite to start it "
                "afresh, or write to another output")


def inspect_output(path: str | Path, fmt: str, settings: dict[str, Any], *,
                   overwrite: bool = False) -> list[str] | None:
    """What an existing output allows, checked before anything is written; never modifies it.

    Args:
        path: The output file.
        fmt: ``jsonl`` or ``csv``.
        settings: The current run's settings (see :data:`SETTINGS`; those known so far).
        overwrite: The output is to be started afresh (allowed only over a tag output).

    Returns:
        None: start afresh (the output is missing, empty, a device or FIFO, or to be
        overwritten); else resume it: the input keys of its complete records, in order.

    Raises:
        OutputMismatchError: ``path`` holds something that is not a tag output (even with
            ``overwrite``), or (resuming) its sidecar is missing or names other settings.
    """
    path = Path(path)
    try:
        if not _is_regular_output(path) or not path.exists() or path.stat().st_size == 0:
            return None
        if overwrite:
            _ensure_tag_output(path)
            return None
        if read_settings(path) is None:
            _ensure_tag_output(path)  # a tag output of an older lcie-fast, or a file that is none
        check_settings(path, settings)
        try:
            return _read_keys(path, fmt)
        except OutputMismatchError as err:
            raise OutputMismatchError(f"{err}; refusing to write over it: remove it or choose another output") from None
    except UserError:
        raise
    except OSError as err:
        raise OutputMismatchError(f"cannot read the existing output {path}: {err.strerror or err}") from None


def ensure_replaceable(path: str | Path, required: Iterable[str]) -> None:
    """Raise unless ``path`` may be replaced by a JSONL output whose records hold the keys ``required``.

    Allowed: a missing or empty file, a device or FIFO, or a file whose every complete line is
    such a record (an earlier output of the same kind). Used for whole-file outputs
    (``tag-video``) before any work is done.

    Raises:
        OutputMismatchError: ``path`` holds something else (named, with the first bad line).
    """
    path, required = Path(path), set(required)
    try:
        if not _is_regular_output(path) or not path.exists() or path.stat().st_size == 0:
            return
        lines = 0
        for number, line in enumerate(_complete_lines(path), start=1):
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
            if not (isinstance(record, dict) and required <= record.keys()):
                raise OutputMismatchError(f"{path} exists and is not an lcie-fast output of this kind (line {number} is "
                                          "not one of its records); refusing to write over it: remove it or choose "
                                          "another output")
            lines += 1
    except UserError:
        raise
    except OSError as err:
        raise OutputMismatchError(f"cannot read the existing output {path}: {err.strerror or err}") from None
    if not lines:
        raise OutputMismatchError(f"{path} exists and is not an lcie-fast output (no complete record); refusing to "
                                  "write over it: remove it or choose another output")


def _ensure_tag_output(path: Path) -> None:
    """Raise unless the non-empty ``path`` is provably a tag output (either format).

    Proof: its complete lines parse as tag records (a CSV output: its header), or it has a tag
    output's sidecar and no complete line yet (a run stopped inside its first record).
    """
    problems = []
    for fmt in ("jsonl", "csv"):
        try:
            if _read_keys(path, fmt) or (fmt == "csv" and next(_complete_lines(path), None) is not None):
                return
            problems.append(f"{path}: no complete record")
        except OutputMismatchError as err:
            problems.append(str(err))
    try:
        if read_settings(path) is not None and next(_complete_lines(path), None) is None:
            return
    except OutputMismatchError:
        pass
    raise OutputMismatchError(f"{path} exists and is not an lcie-fast tag output ({problems[0]}); refusing to write "
                              "over it: remove it or choose another output")


def _cut_partial_line(handle: IO[str]) -> None:
    """Cut a last line left incomplete by a crash (no trailing newline); the handle is in append mode."""
    fd = handle.fileno()
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    position = size - 1
    while position > 0:
        step = min(65536, position)
        cut = os.pread(fd, step, position - step).rfind(b"\n")
        if cut >= 0:
            os.ftruncate(fd, position - step + cut + 1)
            return
        position -= step
    os.ftruncate(fd, 0)


class RecordWriter:
    """Appends records to a JSONL or CSV file (or writes to a stream), flushing every batch.

    Check an existing output with :func:`inspect_output` first. A file ``target`` is opened
    without truncation; only then is it emptied (never resuming), and the settings sidecar is
    written before any record, so a crash at any point leaves an output a rerun can judge.
    Every OS error (no space, no permission) becomes an :class:`OutputWriteError` naming the file.

    Args:
        target: A path, or an open text stream (e.g. stdout).
        fmt: ``jsonl`` or ``csv``.
        append: Continue an existing file (resume) instead of replacing it.
        fields: The optional fields of every record (default: none; ``scores_all`` of records
            that have scores, in JSONL).
        settings: What decides the records (see :data:`SETTINGS`), stored in the sidecar of a
            new output; None writes no sidecar (the output cannot be resumed).
    """

    def __init__(self, target: str | Path | IO[str], fmt: str = "jsonl", append: bool = False,
                 settings: dict[str, Any] | None = None, fields: RecordFields | None = None) -> None:
        if fmt not in ("jsonl", "csv"):
            raise InvalidInputError(f"output format must be jsonl or csv, got {fmt!r}")
        self.fmt, self.fields = fmt, fields
        self.name = str(target) if isinstance(target, (str, Path)) else getattr(target, "name", "<stream>")
        self.fsync = self.fresh = False
        if isinstance(target, (str, Path)):
            path = Path(target)
            try:
                self.handle: IO[str] = self._open(path, append, settings)
            except OSError as err:
                raise _write_error(path, err) from None
            self.owned = True
        else:
            self.handle, self.owned, self.fresh = target, False, True
        self.csv = csv.writer(self.handle) if fmt == "csv" else None
        if self.csv is not None and self.fresh:
            self._guard(lambda: self.csv.writerow((self.fields or RecordFields()).columns))

    def _open(self, path: Path, append: bool, settings: dict[str, Any] | None) -> IO[str]:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not _is_regular_output(path):  # a device or a FIFO: a stream, nothing to resume
            self.fresh = True
            return open(path, "w", encoding="utf-8", errors="surrogateescape", newline="")
        if not append:
            _ensure_empty_or_tag_output(path)
        # opened without truncating: nothing is lost before the sidecar can be written
        handle = open(path, "a+", encoding="utf-8", errors="surrogateescape", newline="")
        try:
            self.fsync = True
            if append:
                _cut_partial_line(handle)
            elif settings is not None:
                from ..io import atomic_write

                with atomic_write(sidecar_path(path), "w") as side:
                    json.dump({"kind": SIDECAR_KIND, **settings}, side, indent=2)
                    side.write("\n")
                    # emptied before the sidecar replaces the old one: a crash in between leaves an
                    # empty output (fresh), never old records under new settings
                    os.ftruncate(handle.fileno(), 0)
            else:
                os.ftruncate(handle.fileno(), 0)
            handle.seek(0, os.SEEK_END)
            self.fresh = handle.tell() == 0
        except BaseException:
            handle.close()
            raise
        return handle

    def _guard(self, action: Any) -> Any:
        try:
            return action()
        except OSError as err:
            if self.owned:
                raise _write_error(self.name, err) from None
            raise

    def write(self, records: Iterable[TagRecord]) -> int:
        """Write ``records`` and flush; returns how many."""
        count = 0
        for record in records:
            data = record.to_json(self.fields)
            if self.csv is not None:
                self._guard(lambda: self.csv.writerow(csv_row(data, self.fields or RecordFields())))
            else:
                line = json.dumps(data, allow_nan=False) + "\n"
                self._guard(lambda: self.handle.write(line))
            count += 1
        self._guard(self.handle.flush)
        return count

    def close(self) -> None:
        """Flush, fsync (a regular file) and close an owned file; raises OutputWriteError on failure."""
        if not self.owned or self.handle.closed:
            return
        try:
            self.handle.flush()
            if self.fsync:
                os.fsync(self.handle.fileno())
        except OSError as err:
            raise _write_error(self.name, err) from None
        finally:
            try:
                self.handle.close()
            except OSError:
                pass  # the error that matters was raised above (or the data was already flushed)


def csv_labels(tags: list[dict[str, Any]]) -> str:
    """The labels cell of a CSV record: ``name:score;name:score``, a ``;`` or ``\\`` in a name escaped
    with ``\\`` (a name may hold ``:``: the score follows the last one)."""
    return ";".join(f"{tag['label'].replace(chr(92), chr(92) * 2).replace(';', chr(92) + ';')}:{tag['score']:.5f}"
                    for tag in tags)


def parse_csv_labels(text: str) -> list[dict[str, Any]]:
    """The tags of a :func:`csv_labels` cell. Raises ValueError on a tag without ``:score``."""
    tags, name, escaped = [], [], False
    for char in text + ";":
        if escaped:
            name.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ";":
            label, colon, score = "".join(name).rpartition(":")
            if not colon:
                raise ValueError(f"tag {''.join(name)!r} has no ':score'")
            tags.append({"label": label, "score": float(score)})
            name = []
        else:
            name.append(char)
    return tags


def csv_row(data: dict[str, Any], fields: RecordFields) -> list[str]:
    """A record's :meth:`TagRecord.to_json` data as a CSV row: labels as ``name:score;...``, scores_all as JSON."""
    row = []
    for column in fields.columns:
        value = data.get(column)
        if column == "labels":
            value = csv_labels(value)
        elif column == "scores_all":
            value = "" if value is None else json.dumps(value, allow_nan=False)
        row.append("" if value is None else str(value))
    return row


def _ensure_empty_or_tag_output(path: Path) -> None:
    try:
        if not path.exists() or path.stat().st_size == 0:
            return
    except OSError as err:
        raise _write_error(path, err) from None
    _ensure_tag_output(path)
