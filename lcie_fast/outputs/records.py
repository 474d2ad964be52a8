"""The one record schema every output writes: local files, shards, Parquet, sidecar captions, Ray.

A record is the result for one input::

    {"index": 12, "path": "imgs/a.jpg", "labels": [{"label": "car", "score": 0.93125}], "error": null}

plus, when asked for, ``scores_all`` ({label: score} of every label), the content hash
(``sha256`` or ``md5``: hex digest of the input's bytes) and ``duplicate_of`` (the path of the
first input with the same content; its labels are copied, no inference was run). ``index`` is
the input's position in the whole input order (also in a shard of it), so shards merge back
into input order. Scores are rounded to 5 decimals in every format, so that the same input
gives the same record whatever format it was written to and read back from.

Columnar formats (Parquet, Ray) hold the same record flattened by :meth:`TagRecord.to_row`:
``labels list<string>`` + ``scores list<float32>`` (the chosen labels and their scores) and
``scores_all list<float32>`` in the model's label order (kept in the file's metadata).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Sequence

NON_FINITE = "non-finite scores from the model"
HASH_NAMES = ("sha256", "md5")
DECIMALS = 5

# (kind, fragments of the message): the first match names an error's kind in statistics
_ERROR_KINDS = (
    ("not_found", ("file not found", "not found")),
    ("too_large", ("over the limit", "decompression bomb", "needs more memory", "more pixels")),
    ("not_a_file", ("not a regular file", "is a folder")),
    ("empty", ("empty file",)),
    ("unsupported_format", ("not an image in an accepted format", "unsupported pixel layout", "cannot convert")),
    ("corrupt", ("corrupt", "truncated")),
    ("non_finite", (NON_FINITE,)),
    ("no_image_member", ("no image member",)),
)


def error_kind(message: str | None, path: str | None = None) -> str | None:
    """The kind of an error message, for statistics (``unreadable`` when none matches); None for None.

    Messages name their input first (``path: reason``); only the reason is read, so a folder
    named ``not found`` does not make every error in it ``not_found``.
    """
    if message is None:
        return None
    if path is not None and message.startswith(f"{path}: "):
        message = message[len(path) + 2:]
    lowered = message.lower()
    for kind, fragments in _ERROR_KINDS:
        if any(fragment in lowered for fragment in fragments):
            return kind
    return "unreadable"


def rounded(score: float) -> float | None:
    """A score as every format writes it: 5 decimals; None for NaN or infinity."""
    return round(float(score), DECIMALS) if math.isfinite(score) else None


@dataclasses.dataclass(frozen=True)
class RecordFields:
    """Which optional fields the records of one output carry (fixed for the whole output).

    Attributes:
        labels: The model's labels, in its order (the order of ``scores_all`` in flat rows).
        all_scores: Every label's score (``scores_all``).
        hash_name: ``sha256`` or ``md5``: the content hash, under its own name; None: no hash.
        dedup: ``duplicate_of`` (repeated content is not run through the model).
    """

    labels: tuple[str, ...] = ()
    all_scores: bool = False
    hash_name: str | None = None
    dedup: bool = False

    @property
    def columns(self) -> list[str]:
        """The keys of a record of this output, in order."""
        return (["index", "path", "labels", "error"] + (["scores_all"] if self.all_scores else [])
                + ([self.hash_name] if self.hash_name else []) + (["duplicate_of"] if self.dedup else []))


@dataclasses.dataclass
class TagRecord:
    """The result for one input: what every output format writes.

    Attributes:
        index: Position of the input in the whole input order.
        path: The input's path or URL (``shard.tar#key`` for a WebDataset member; None in memory).
        labels: (label name, score) of every label kept (thresholds, top-k, post-processing),
            in the order they are written.
        error: None, or why the input could not be tagged.
        scores: Every label's score (only when asked for; ``scores_all`` in outputs).
        digest: (hash name, hex digest) of the input's bytes (only when asked for).
        duplicate_of: The path of the first input with the same content (``--dedup``).
    """

    index: int
    path: str | None
    labels: list[tuple[str, float]]
    error: str | None = None
    scores: dict[str, float] | None = None
    digest: tuple[str, str] | None = None
    duplicate_of: str | None = None

    @property
    def key(self) -> str:
        """What identifies the input in an output: its path, or ``#index`` for an in-memory image."""
        return self.path if self.path is not None else f"#{self.index}"

    def finite_error(self) -> str | None:
        """``error``, or :data:`NON_FINITE` when a score is NaN or infinite (a broken model)."""
        if self.error is None and not all(math.isfinite(s) for s in self._all_scores()):
            return NON_FINITE
        return self.error

    def to_json(self, fields: RecordFields | None = None) -> dict[str, Any]:
        """The record as strict JSON data (the schema above); a non-finite score becomes None and sets ``error``.

        Args:
            fields: The optional fields to write (each one, null where this record has none);
                None: those this record has.
        """
        record: dict[str, Any] = {
            "index": self.index, "path": self.path,
            "labels": [{"label": name, "score": rounded(score)} for name, score in self.labels if math.isfinite(score)],
            "error": self.finite_error()}
        if fields.all_scores if fields else self.scores is not None:
            record["scores_all"] = None if self.scores is None else {k: rounded(v) for k, v in self.scores.items()}
        hash_name = fields.hash_name if fields else self.digest[0] if self.digest else None
        if hash_name:
            record[hash_name] = self.digest[1] if self.digest else None
        if fields.dedup if fields else self.duplicate_of is not None:
            record["duplicate_of"] = self.duplicate_of
        return record

    def to_row(self, fields: RecordFields) -> dict[str, Any]:
        """The record flattened for columnar formats: ``labels``/``scores`` lists, ``scores_all`` in label order."""
        kept = [(name, rounded(score)) for name, score in self.labels if math.isfinite(score)]
        row: dict[str, Any] = {"index": self.index, "path": self.path, "labels": [name for name, _ in kept],
                               "scores": [score for _, score in kept], "error": self.finite_error()}
        if fields.all_scores:
            row["scores_all"] = None if self.scores is None else [rounded(self.scores[name]) for name in fields.labels]
        if fields.hash_name:
            row[fields.hash_name] = self.digest[1] if self.digest else None
        if fields.dedup:
            row["duplicate_of"] = self.duplicate_of
        return row

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TagRecord:
        """A record read back from :meth:`to_json` data (scores as written: rounded, None for non-finite)."""
        digest = next(((name, data[name]) for name in HASH_NAMES if data.get(name) is not None), None)
        scores = data.get("scores_all")
        return cls(int(data["index"]), data.get("path"),
                   [(tag["label"], _score(tag["score"])) for tag in data.get("labels") or []],
                   data.get("error"), None if scores is None else {k: _score(v) for k, v in scores.items()},
                   digest, data.get("duplicate_of"))

    @classmethod
    def from_row(cls, row: dict[str, Any], labels: Sequence[str]) -> TagRecord:
        """A record read back from a :meth:`to_row` row; ``labels``: the model's labels (``scores_all`` order)."""
        digest = next(((name, row[name]) for name in HASH_NAMES if row.get(name) is not None), None)
        scores = row.get("scores_all")
        return cls(int(row["index"]), row.get("path"),
                   [(name, _score(score)) for name, score in zip(row.get("labels") or [], row.get("scores") or [])],
                   row.get("error"), None if scores is None else {k: _score(v) for k, v in zip(labels, scores)},
                   digest, row.get("duplicate_of"))

    def _all_scores(self) -> Iterator[float]:
        yield from (score for _, score in self.labels)
        yield from (self.scores or {}).values()


def _score(value: Any) -> float:
    """A score read back: rounded as written (a float32 column gives back the same 5 decimals); NaN for null."""
    return float("nan") if value is None else round(float(value), DECIMALS)
