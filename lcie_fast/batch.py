"""Tagging a dataset to an output: formats, resume, shards of the input order, statistics.

What ``lcie-fast tag`` runs, usable from Python::

    job = TagJob(["imgs/", "shards/train-{000..009}.tar"], "tags.parquet", shard=(2, 8))
    plan = plan_job(job, "model.onnx")          # checks the output before the model loads
    stats = run_job(job, Tagger.load("model.onnx"), plan)

One record per input in every format (JSONL, CSV, Parquet, sidecar captions): a bad input is
an error record (captions: a line of ``errors.jsonl``), never a silent gap. A rerun resumes:
JSONL/CSV after their complete records, Parquet after its whole parts, captions by skipping
the images whose caption exists. ``shard=(i, n)`` tags the inputs whose position in the whole
input order is ``i`` modulo ``n`` and writes ``<stem>-{i:05d}-of-{n:05d}<suffix>``;
``lcie-fast tag-merge`` puts the shards back into input order.

Outputs on object storage (``s3://``, ``gs://``, ``memory://``, any fsspec URL): Parquet parts
are uploaded one by one as they are written; a JSONL or CSV output is written to a local
staging copy (the remote one downloaded first, to resume it) and uploaded when the run ends,
also when it fails.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import platform
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .data.datasets import IMAGE_EXTENSIONS
from .errors import InvalidInputError, UserError
from .inputs import InputItem, expand_inputs
from .outputs import RecordFields, TagRecord, error_kind
from .outputs.lines import SIDECAR_SUFFIX
from .postprocess import TagPostprocess
from .webdataset import DEFAULT_IMAGE_KEYS

FORMATS = ("jsonl", "csv", "parquet", "txt")
SUFFIXES = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet", "txt": ".jsonl"}
ON_EXISTING = ("skip", "overwrite", "append")


@dataclasses.dataclass(frozen=True)
class CaptionOptions:
    """Sidecar captions (``--format txt``): where they go and what happens to existing ones."""

    ext: str = ".txt"
    folder: str | None = None
    separator: str = ", "
    on_existing: str = "skip"


@dataclasses.dataclass
class TagJob:
    """One tagging run to one output.

    Attributes:
        inputs: Files, folders, globs, manifests, ``@lists``, ``-``, WebDataset shards, URLs.
        output: The output (local path or URL); None: JSONL/CSV on stdout. For ``txt`` the
            JSONL file that receives the error records (default ``errors.jsonl`` in the
            caption folder, else the current folder).
        fmt: ``jsonl``, ``csv``, ``parquet`` or ``txt`` (default: from the output's suffix).
        shard: ``(i, n)``: tag the inputs at positions ``i`` modulo ``n`` of the whole input order;
            the output name gets ``-{i:05d}-of-{n:05d}`` before its suffix.
        stats: Where the statistics go (default: beside a file output, ``<stem>.stats.json``).
        part_records: Records per Parquet part (a crash loses at most one part's worth).
        known_records: Read the records already in the output to seed ``dedup`` on resume.
    """

    inputs: Sequence[Any]
    output: str | None = None
    fmt: str | None = None
    batch_size: int = 32
    all_scores: bool = False
    workers: int | None = None
    decoder: str = "auto"
    extensions: Sequence[str] = tuple(IMAGE_EXTENSIONS)
    recursive: bool = True
    hash_name: str | None = None
    dedup: bool = False
    postprocess: TagPostprocess = TagPostprocess()
    shard: tuple[int, int] | None = None
    wds_image_keys: Sequence[str] = DEFAULT_IMAGE_KEYS
    captions: CaptionOptions = CaptionOptions()
    overwrite: bool = False
    progress: bool = True
    stats: str | None = None
    part_records: int = 10_000
    stats_beside_output: bool = dataclasses.field(default=False, init=False)  # the default statistics path

    def __post_init__(self) -> None:
        if self.output == "-":
            self.output = None  # stdout, as '-' is stdin for inputs
        self.fmt = output_format(self.output, self.fmt)
        if self.shard is not None:
            index, count = self.shard
            if not 0 <= index < count:
                raise InvalidInputError(f"--shard {index}/{count}: needs 0 <= i < n")
            if self.output is None and self.fmt != "txt":
                raise InvalidInputError("--shard needs -o/--output (each shard writes its own file)")
        if self.fmt == "txt":
            if self.output is None:
                self.output = str(Path(self.captions.folder or ".") / "errors.jsonl")
            if self.captions.on_existing not in ON_EXISTING:
                raise InvalidInputError(f"--on-existing must be one of {', '.join(ON_EXISTING)}, "
                                        f"got {self.captions.on_existing!r}")
        elif self.fmt == "parquet" and self.output is None:
            raise InvalidInputError("--format parquet needs -o/--output (a .parquet file)")
        if self.shard is not None:
            self.output = shard_output_name(self.output, self.shard)
        if self.stats is None and self.output is not None and _regular_or_absent(self.output):
            self.stats = _stem(self.output) + ".stats.json"  # not beside a device (-o /dev/null)
            self.stats_beside_output = True
        if self.dedup and self.hash_name is None:
            self.hash_name = "sha256"

    def fields(self, labels: Sequence[str]) -> RecordFields:
        return RecordFields(tuple(labels), self.all_scores, self.hash_name, self.dedup)

    def settings(self, model_sha256: str) -> dict[str, Any]:
        """What decides this output's records (checked before a run resumes it); labels and thresholds follow."""
        return {"format": self.fmt, "model_sha256": model_sha256, "top_k": self.postprocess.max_tags,
                "all_scores": self.all_scores, "hash": self.hash_name, "dedup": self.dedup,
                "postprocess": self.postprocess.to_settings(), "shard": list(self.shard) if self.shard else None,
                "inputs": input_spec(self.inputs, self.extensions, self.recursive, self.wds_image_keys)}

    def select(self, items: Iterator[InputItem]) -> Iterator[InputItem]:
        """The items of this job's shard."""
        if self.shard is None:
            return items
        index, count = self.shard
        return (item for item in items if item.index % count == index)


def _regular_or_absent(path: str) -> bool:
    """A URL, a regular file, or nothing yet (not a device, FIFO or folder)."""
    from .remote import is_url

    if is_url(path):
        return True
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return not os.path.lexists(path) if isinstance(path, str) else True


def output_format(output: str | None, fmt: str | None) -> str:
    """``fmt``, else from the output's suffix (``.csv``, ``.parquet``), else ``jsonl``."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise InvalidInputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    for name in ("csv", "parquet"):
        if output and output.lower().endswith(SUFFIXES[name]):
            return name
    return "jsonl"


def _stem(path: str) -> str:
    """``path`` without its suffix (a URL too: only the last path component is touched)."""
    head, _, tail = path.rpartition("/")
    stem = tail.rsplit(".", 1)[0] if "." in tail.lstrip(".") else tail
    return f"{head}/{stem}" if head else stem


def _suffix(path: str) -> str:
    tail = path.rpartition("/")[2]
    return "." + tail.rsplit(".", 1)[1] if "." in tail.lstrip(".") else ""


def shard_output_name(output: str, shard: tuple[int, int]) -> str:
    """``tags.jsonl`` -> ``tags-00002-of-00008.jsonl`` for shard (2, 8)."""
    index, count = shard
    return f"{_stem(output)}-{index:05d}-of-{count:05d}{_suffix(output)}"


def input_spec(inputs: Sequence[Any], extensions: Sequence[str], recursive: bool,
               wds_image_keys: Sequence[str] = DEFAULT_IMAGE_KEYS) -> dict[str, Any]:
    """The inputs as a resumed run must give them again (local paths made absolute: keys depend on the folder)."""
    from .remote import is_url

    def spec(text: str) -> str:
        if text == "-" or is_url(text.lstrip("@")):
            return text
        return "@" + os.path.abspath(text[1:]) if text.startswith("@") else os.path.abspath(text)

    return {"specs": [spec(os.fspath(text)) for text in inputs], "extensions": sorted({e.lower() for e in extensions}),
            "recursive": recursive, "wds_image_keys": list(wds_image_keys)}


# ------------------------------------------------------------------------ planning
@dataclasses.dataclass
class Plan:
    """What the output allows, found before the model loads.

    Attributes:
        settings: The run's settings (labels and thresholds are added once the model is loaded).
        done: Keys of the records already in the output (resume), None to start afresh.
        staging: The local copy a remote JSONL/CSV output is written to (None: written in place).
    """

    settings: dict[str, Any]
    done: list[str] | None
    staging: str | None = None
    model_sha256: str = ""


def plan_job(job: TagJob, model: str | Path, model_sha256: str | None = None) -> Plan:
    """Check ``job``'s output against the run before anything is loaded or written.

    Raises:
        OutputMismatchError: the output is not a tag output, or holds records of other
            settings or inputs (named).
        ModelNotFoundError: ``model`` does not exist.
    """
    from .io import sha256_file
    from .outputs import inspect_output
    from .remote import download, is_url

    if model_sha256 is None:
        from .errors import ModelNotFoundError

        if not Path(model).is_file():
            raise ModelNotFoundError(f"model not found: {model}")
        model_sha256 = sha256_file(model)
    settings = job.settings(model_sha256)
    _check_paths(job)
    if job.output is None or job.fmt == "txt":
        return Plan(settings, None, model_sha256=model_sha256)
    if job.fmt == "parquet":
        from .outputs.parquet import inspect_parquet_output

        return Plan(settings, inspect_parquet_output(job.output, settings, overwrite=job.overwrite),
                    model_sha256=model_sha256)
    staging = None
    target = job.output
    if is_url(job.output):
        staging = tempfile.mkdtemp(prefix="lcie-fast-staging-")
        target = str(Path(staging) / job.output.rpartition("/")[2])
        if not job.overwrite and download(job.output, target):
            from .outputs import sidecar_path

            download(job.output + SIDECAR_SUFFIX, str(sidecar_path(target)))
    return Plan(settings, inspect_output(target, job.fmt, settings, overwrite=job.overwrite), staging, model_sha256)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return os.path.realpath(a) == os.path.realpath(b)


def _check_paths(job: TagJob) -> None:
    """Refuse, before anything is written, an output or statistics file that is one of the inputs, statistics
    over the output (or its settings), and statistics that cannot be written or would replace another file.

    Raises:
        InvalidInputError: which path, and why.
    """
    import json

    from .outputs import sidecar_path
    from .remote import is_url

    inputs = [os.fspath(text).removeprefix("@") for text in job.inputs
              if isinstance(text, (str, os.PathLike)) and os.fspath(text) != "-"]
    inputs = [text for text in inputs if not is_url(text) and os.path.isfile(text)]
    for flag, path in (("-o/--output", job.output), ("--stats", job.stats)):
        if path is None or is_url(path):
            continue
        clash = next((text for text in inputs if _same_file(text, path)), None)
        if clash is not None:
            raise InvalidInputError(f"{flag} {path} is one of the inputs ({clash}): writing it would destroy the input "
                                    "before it is read; choose another output")
    if job.stats is None or is_url(job.stats):
        return
    if job.output is not None and not is_url(job.output) and any(
            _same_file(job.stats, str(path)) for path in (job.output, sidecar_path(job.output))):
        raise InvalidInputError(f"--stats {job.stats} is the output (or its settings file): choose another statistics file")
    if os.path.lexists(job.stats):
        try:
            data = json.loads(Path(job.stats).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            data = None
        if not (isinstance(data, dict) and {"inputs", "format", "seconds"} <= data.keys()):
            raise InvalidInputError(f"--stats {job.stats} exists and is not an lcie-fast statistics file; refusing to "
                                    "write over it: remove it or choose another path")
    if job.stats_beside_output:
        return  # its folder is the output's: the output's own checks name a folder that cannot be written
    folder = Path(job.stats).parent
    existing = next((parent for parent in (folder, *folder.parents) if parent.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidInputError(f"--stats {job.stats}: cannot be written ({existing} is "
                                f"{'not a folder' if not existing.is_dir() else 'not writable'})")


def check_resumed_inputs(job: TagJob, done: list[str], output: str) -> None:
    """The records already in ``output`` must be those of the job's first inputs, in order.

    Raises:
        OutputMismatchError: a record for another input, or more records than inputs.
    """
    from .outputs import OutputMismatchError

    items = job.select(InputItem.numbered(expand_inputs(job.inputs, extensions=job.extensions, recursive=job.recursive,
                                                        wds_image_keys=job.wds_image_keys)))
    matched = 0
    for number, (key, item) in enumerate(zip(done, items), start=1):
        expected = item.path if item.path is not None else f"#{item.index}"
        if key != expected:
            raise OutputMismatchError(
                f"{output} holds records for other inputs (record {number} is {key}, input {number} is "
                f"{expected}); pass --overwrite or write to another output")
        matched = number
    if matched < len(done):
        raise OutputMismatchError(f"{output} holds {len(done)} records but the inputs give only {matched}: it holds "
                                  "records of other inputs; pass --overwrite or write to another output")


# ------------------------------------------------------------------------ running
class _Writer:
    """The output of one job behind one interface: ``write(records)``, ``close()``, ``abort()``."""

    def __init__(self, job: TagJob, plan: Plan, fields: RecordFields, target: str | None) -> None:
        self.job, self.fmt = job, job.fmt
        if job.fmt == "parquet":
            from .outputs.parquet import ParquetRecordWriter

            self.inner = ParquetRecordWriter(job.output, fields, plan.settings, append=plan.done is not None,
                                             part_records=job.part_records)
        elif job.fmt == "txt":
            from .outputs.captions import CaptionWriter

            options = job.captions
            self.inner = CaptionWriter(caption_ext=options.ext, caption_dir=options.folder,
                                       input_root=_input_root(job) if options.folder else None,
                                       separator=options.separator,
                                       on_existing=options.on_existing, errors_path=job.output)
        else:
            from .outputs import RecordWriter

            self.inner = RecordWriter(target or sys.stdout, job.fmt, append=plan.done is not None,
                                      settings=plan.settings if target else None, fields=fields)

    def write(self, records: list[TagRecord]) -> None:
        self.inner.write(records)

    def close(self) -> None:
        self.inner.close()

    def abort(self) -> None:
        abort = getattr(self.inner, "abort", None) or self.inner.close
        with contextlib.suppress(UserError, OSError):  # the first error is the one to show
            abort()


def _input_root(job: TagJob) -> str | None:
    """The folder ``--caption-dir`` mirrors: the common folder of the local inputs as given (folders,
    files), or, when lists, manifests or globs name them, of the files they expand to."""
    from .remote import is_url

    texts = [os.fspath(text) for text in job.inputs if isinstance(text, (str, os.PathLike))]
    local = [text for text in texts if text != "-" and not is_url(text.lstrip("@"))]
    if not local:
        return None
    if all(not text.startswith("@") and (os.path.isdir(text) or os.path.isfile(text)) and
           not text.lower().endswith((".csv", ".jsonl", ".tar")) for text in local):
        paths = local
    else:
        paths = [item for item in expand_inputs(job.inputs, extensions=job.extensions, recursive=job.recursive,
                                                wds_image_keys=job.wds_image_keys, quiet_suffixes=(job.captions.ext,))
                 if isinstance(item, str) and "#" not in item and not is_url(item)]
    if not paths:
        return None
    folders = [os.path.abspath(path if os.path.isdir(path) else os.path.dirname(path) or ".") for path in paths]
    return os.path.commonpath(folders)


def run_job(job: TagJob, tagger: Any, plan: Plan, *, model: str | None = None,
            on_chunk: Callable[[list[TagRecord]], None] | None = None) -> dict[str, Any]:
    """Tag ``job``'s inputs with ``tagger`` into its output, resuming as ``plan`` found; returns the statistics.

    Statistics (also written to ``job.stats``): inputs (records in the output, those already
    there included), tagged, errors by kind, duplicates, seconds, images/s, seconds spent
    writing, model, backend, versions.

    Raises:
        OutputMismatchError: the output's settings differ now that the labels and thresholds are known.
        OutputWriteError: the output cannot be written (named).
    """
    from .outputs import check_settings, mark_complete, read_settings

    plan.settings.update(labels=list(tagger.labels), thresholds=[float(t) for t in tagger.thresholds])
    target = job.output if plan.staging is None else str(Path(plan.staging) / job.output.rpartition("/")[2])
    done = plan.done or []
    if plan.done is not None and job.fmt in ("jsonl", "csv"):
        check_settings(target, plan.settings)
    if plan.done:
        check_resumed_inputs(job, plan.done, job.output)
        print(f"resuming {job.output}: {len(plan.done)} records already there", file=sys.stderr)
    known = _known_records(target) if job.dedup and plan.done else ()
    writer = _Writer(job, plan, job.fields(tagger.labels), target)
    done_filter = None
    if job.fmt == "txt" and job.captions.on_existing == "skip":
        # captions resume by skipping the images whose caption is there, and those already in the errors file
        failed = _errored_paths(job.output)
        done_filter = (lambda path: path in failed or writer.inner.exists(path)) if failed else writer.inner.exists
    start = time.perf_counter()
    counts: collections.Counter = collections.Counter()
    write_s = 0.0
    try:
        records = tagger.tag(job.inputs, batch_size=job.batch_size, workers=job.workers, all_scores=job.all_scores,
                             skip=len(done), progress=job.progress, decoder=job.decoder, extensions=job.extensions,
                             recursive=job.recursive, hash_name=job.hash_name, dedup=job.dedup,
                             postprocess=job.postprocess, shard=job.shard, done=done_filter,
                             wds_image_keys=job.wds_image_keys, known=known,
                             quiet_suffixes=(job.captions.ext,) if job.fmt == "txt" else ())
        for chunk in _chunks(records, job.batch_size):
            step = time.perf_counter()
            writer.write(chunk)
            write_s += time.perf_counter() - step
            _count_records(counts, chunk)
            if on_chunk is not None:
                on_chunk(chunk)
    except BaseException:
        writer.abort()
        _upload_staged(job, plan, target)
        raise
    step = time.perf_counter()
    writer.close()
    if job.fmt in ("jsonl", "csv") and target is not None and read_settings(target) is not None:
        mark_complete(target)
    write_s += time.perf_counter() - step
    seconds = time.perf_counter() - start
    totals = None
    try:
        if plan.done and job.fmt != "txt":  # the statistics describe the whole output, not only this run's part
            from .outputs.merge import read_output

            totals = collections.Counter()
            _count_records(totals, read_output(target)[1])
    finally:
        _upload_staged(job, plan, target)
    if not counts["records"] and not plan.done:
        print(f"lcie-fast: warning: the inputs ({', '.join(map(str, list(job.inputs)[:3]))}"
              f"{' ...' if len(job.inputs) > 3 else ''}) gave nothing to tag", file=sys.stderr)
    stats = _statistics(job, tagger, counts, totals, len(done), seconds, write_s, model, plan.model_sha256)
    if job.stats and not (plan.done and not counts["records"] and _stats_exist(job.stats)):
        _write_stats(stats, job.stats)  # a rerun over a finished output keeps the statistics of the run that made it
    return stats


def _count_records(counts: collections.Counter, records: Iterable[TagRecord]) -> None:
    for record in records:
        kind = error_kind(record.finite_error(), record.path)
        counts["records"] += 1
        counts[f"error:{kind}" if kind else "tagged"] += 1
        counts["duplicates"] += record.duplicate_of is not None


def _stats_exist(path: str) -> bool:
    from .remote import exists, is_url

    return exists(path) if is_url(path) else os.path.isfile(path)


def _errored_paths(errors_path: str) -> set[str]:
    """The paths of the records in an errors JSONL file (a caption run's bad inputs, not retried on resume)."""
    import json

    path = Path(errors_path)
    if not path.is_file():
        return set()
    failed = set()
    with open(path, "rb") as handle:
        for line in handle:
            if line.endswith(b"\n"):
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict) and isinstance(record.get("path"), str):
                        failed.add(record["path"])
    return failed


def _chunks(records: Iterator[TagRecord], size: int) -> Iterator[list[TagRecord]]:
    chunk: list[TagRecord] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _known_records(target: str) -> Iterator[TagRecord]:
    """The records already in the output (dedup on resume: their content is not tagged twice)."""
    from .outputs.merge import read_output

    return read_output(target)[1]


def _upload_staged(job: TagJob, plan: Plan, target: str | None) -> None:
    """Upload the local copy of a remote JSONL/CSV output and its sidecar, then remove the copy."""
    if plan.staging is None or target is None:
        return
    from .outputs import sidecar_path
    from .remote import upload

    try:
        if Path(target).exists():
            upload(target, job.output)
        if sidecar_path(target).exists():
            upload(str(sidecar_path(target)), job.output + SIDECAR_SUFFIX)  # a URL: not a Path (it would fold the //)
    finally:
        shutil.rmtree(plan.staging, ignore_errors=True)


def _statistics(job: TagJob, tagger: Any, counts: collections.Counter, totals: collections.Counter | None, resumed: int,
                seconds: float, write_s: float, model: str | None, model_sha256: str) -> dict[str, Any]:
    """The run's statistics; ``totals``: counts over the whole output when it was resumed (else this run's)."""
    import torch

    from . import __version__

    whole = totals if totals is not None else counts
    errors = {key.split(":", 1)[1]: value for key, value in sorted(whole.items()) if key.startswith("error:")}
    records = counts["records"]
    versions = {"lcie_fast": __version__, "torch": torch.__version__, "python": platform.python_version()}
    with contextlib.suppress(ImportError):
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    return {
        "inputs": whole["records"] if totals is not None else resumed + records, "resumed": resumed,
        "this_run": records, "tagged": whole["tagged"], "errors": sum(errors.values()), "errors_by_kind": errors,
        "duplicates": whole["duplicates"], "skipped_by_scans": tagger.stats.get("skipped", 0), "seconds": round(seconds, 3),
        "images_per_s": round(records / seconds, 2) if seconds > 0 else None,
        "model_images_per_s": round(tagger.stats["images"] / tagger.stats["model_s"], 2) if tagger.stats["model_s"] else None,
        "write_s": round(write_s, 3), "write_share": round(write_s / seconds, 4) if seconds > 0 else None,
        "format": job.fmt, "output": job.output, "shard": list(job.shard) if job.shard else None,
        "model": model, "model_sha256": model_sha256, "backend": tagger.backend.label, "versions": versions,
    }


def _write_stats(stats: dict[str, Any], path: str) -> None:
    import json

    from .io import write_json
    from .remote import is_url

    if is_url(path):
        from .remote import upload

        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / "stats.json"
            local.write_text(json.dumps(stats, indent=2) + "\n")
            upload(str(local), path)
        return
    write_json(stats, path)


def per_shard_jobs(job: TagJob, shard: tuple[int, int] | None = None) -> list[TagJob]:
    """``--per-shard``: one job per WebDataset shard of ``job.inputs``, its output beside the shard
    (``shard-000.tar`` -> ``shard-000.jsonl``; captions: ``shard-000.errors.jsonl``).

    Args:
        job: The job (no output or statistics path of its own: each shard's go beside it).
        shard: ``(i, n)``: only the shards at positions ``i`` modulo ``n`` (a SLURM array over shards).

    Raises:
        InvalidInputError: inputs that are not shards, or an output or statistics path given.
    """
    from .webdataset import expand_shards

    others = [text for text in job.inputs if not os.fspath(text).endswith(".tar")]
    if others:
        raise InvalidInputError(f"--per-shard needs WebDataset shards (.tar files or brace patterns of them) as the only "
                                f"inputs, got {others[0]!r}")
    shards = expand_shards(job.inputs)
    if shard is not None:
        shards = shards[shard[0]::shard[1]]
    suffix = SUFFIXES[job.fmt] if job.fmt != "txt" else ".errors.jsonl"
    return [dataclasses.replace(job, inputs=[path], output=_stem(path) + suffix, stats=None, shard=None)
            for path in shards]
