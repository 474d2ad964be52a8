"""Record outputs (JSONL or CSV), flushed batch by batch and resumable.

Rerunning ``lcie-fast tag`` onto the same output continues where the previous run stopped: the
records already written are counted (a line cut short by a crash is removed), their inputs are
checked against the current inputs, and tagging starts after them. Nothing is lost and nothing
is written twice.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import IO, Any, Iterable

from .errors import InvalidInputError, UserError

CSV_FIELDS = ["path", "labels", "error"]


@dataclasses.dataclass
class TagRecord:
    """The result for one input: what every output format writes.

    Attributes:
        index: Position of the input in the input order.
        path: The input's path (None for in-memory images).
        labels: (label name, score) of every label at or above its threshold, best first,
            at most ``top_k``.
        error: None, or why the input could not be tagged.
        scores: Every label's score (only when asked for).
    """

    index: int
    path: str | None
    labels: list[tuple[str, float]]
    error: str | None = None
    scores: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"path": self.path} if self.path is not None else {"index": self.index}
        record["labels"] = [{"label": name, "score": round(score, 5)} for name, score in self.labels]
        record["error"] = self.error
        if self.scores is not None:
            record["scores"] = {k: round(v, 5) for k, v in self.scores.items()}
        return record


class OutputMismatchError(UserError, ValueError):
    """An existing output that holds records for other inputs."""


def _repair_tail(path: Path) -> None:
    """Cut a last line left incomplete by a crash (no trailing newline)."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        position = size - 1
        while position > 0:
            step = min(65536, position)
            handle.seek(position - step)
            block = handle.read(step)
            cut = block.rfind(b"\n")
            if cut >= 0:
                handle.truncate(position - step + cut + 1)
                return
            position -= step
        handle.truncate(0)


def existing_keys(path: str | Path, fmt: str) -> list[str]:
    """The input key (path, or ``#index``) of every complete record in an existing output."""
    path = Path(path)
    if not path.is_file():
        return []
    _repair_tail(path)
    keys = []
    with open(path, newline="") as handle:
        if fmt == "jsonl":
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise OutputMismatchError(f"{path}: line {number} is not a JSON record; is it an lcie-fast output?") from None
                keys.append(record.get("path") or f"#{record.get('index')}")
        else:
            reader = csv.DictReader(handle)
            if reader.fieldnames and reader.fieldnames[: len(CSV_FIELDS)] != CSV_FIELDS:
                raise OutputMismatchError(f"{path}: columns {reader.fieldnames} are not an lcie-fast CSV output")
            keys = [row["path"] for row in reader]
    return keys


class RecordWriter:
    """Appends records to a JSONL or CSV file (or writes to a stream), flushing every batch.

    Args:
        target: A path, or an open text stream (e.g. stdout).
        fmt: ``jsonl`` or ``csv``.
        append: Continue an existing file (resume) instead of replacing it.
    """

    def __init__(self, target: str | Path | IO[str], fmt: str = "jsonl", append: bool = False) -> None:
        if fmt not in ("jsonl", "csv"):
            raise InvalidInputError(f"output format must be jsonl or csv, got {fmt!r}")
        self.fmt = fmt
        if isinstance(target, (str, Path)):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            fresh = not (append and Path(target).is_file() and Path(target).stat().st_size > 0)
            self.handle: IO[str] = open(target, "a" if append else "w", newline="")
            self.owned = True
        else:
            self.handle, self.owned, fresh = target, False, True
        self.csv = csv.writer(self.handle) if fmt == "csv" else None
        if self.csv is not None and fresh:
            self.csv.writerow(CSV_FIELDS + ["scores"])

    def write(self, records: Iterable[TagRecord]) -> int:
        count = 0
        for record in records:
            if self.csv is not None:
                labels = ";".join(f"{name}:{score:.5f}" for name, score in record.labels)
                scores = json.dumps(record.scores) if record.scores is not None else ""
                key = record.path if record.path is not None else f"#{record.index}"
                self.csv.writerow([key, labels, record.error or "", scores])
            else:
                self.handle.write(json.dumps(record.to_json()) + "\n")
            count += 1
        self.handle.flush()
        return count

    def close(self) -> None:
        if self.owned:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
