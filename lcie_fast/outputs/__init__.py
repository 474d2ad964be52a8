"""Outputs of ``lcie-fast tag``: one record schema (:mod:`.records`), one writer per format.

- :mod:`.records`: :class:`TagRecord` and :class:`RecordFields`, the schema every format writes.
- :mod:`.lines`: JSONL and CSV files, resumable, with their settings sidecar.
- :mod:`.parquet`: Parquet, written as whole part files and merged at the end (``parquet`` extra).
- :mod:`.captions`: sidecar caption files beside the images, errors to ``errors.jsonl``.
- :mod:`.merge`: any output read back; shard outputs merged into input order (``tag-merge``).

pyarrow and fsspec load at first use, not when this package is imported.
"""

from .lines import (
    SETTINGS,
    OutputMismatchError,
    OutputWriteError,
    RecordWriter,
    check_settings,
    ensure_replaceable,
    existing_keys,
    inspect_output,
    mark_complete,
    read_settings,
    sidecar_path,
)
from .records import NON_FINITE, RecordFields, TagRecord, error_kind

__all__ = ["NON_FINITE", "SETTINGS", "OutputMismatchError", "OutputWriteError", "RecordFields", "RecordWriter",
           "TagRecord", "check_settings", "ensure_replaceable", "error_kind", "existing_keys", "inspect_output", "mark_complete",
           "read_settings",            "sidecar_path"]
