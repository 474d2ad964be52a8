"""``lcie-fast tag`` and ``lcie-fast tag-video``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from ..data.transforms import DEFAULT_MAX_BYTES, DEFAULT_MAX_DECODE_BYTES
from ._options import add_allow_host_code, unwind_on_sigterm


def _ranged(kind: type, low: float | None = None, high: float | None = None, *,
            exclusive_low: bool = False) -> Callable[[str], Any]:
    """An argparse ``type`` that parses ``kind`` and refuses non-finite values and values out of range.

    argparse names the flag and exits 2, before anything (a model) is loaded.
    """
    bounds = " and ".join(part for part in (
        None if low is None else f"{'>' if exclusive_low else '>='} {low}",
        None if high is None else f"<= {high}") if part)

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if (not math.isfinite(value) or (low is not None and (value <= low if exclusive_low else value < low))
                or (high is not None and value > high)):
            raise argparse.ArgumentTypeError(f"must be a finite number {bounds}, got {text}")
        return value

    return parse


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint (.pt), ONNX graph (.onnx), engine bundle (.engine), or the URL "
                                 "http[s]://HOST:PORT/MODEL[/VERSION] of a model on a Triton server (export-triton)")
    p.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "compiled", "eager", "onnxruntime", "triton"],
                   help="triton: the model is a Triton server URL (auto picks it for a URL)")
    p.add_argument("--device", help="cpu or cuda[:N] (default: a GPU when visible)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help="torch backends (default fp16 on a GPU)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=_ranged(float, 0, 1), help="one score threshold for every label (default 0.5)")
    group.add_argument("--thresholds", metavar="FILE", help="per-label thresholds: the JSON of lcie-fast eval "
                       "--fit-thresholds, a {label: threshold} JSON, or one number per line in label order")
    p.add_argument("--top-k", type=_ranged(int, 1), metavar="K", help="keep at most K labels per input")
    p.add_argument("--batch-size", type=_ranged(int, 1), default=32)
    p.add_argument("--max-pixels", type=_ranged(int, 1), default=80_000_000, help="refuse larger images (decompression bombs)")
    p.add_argument("--max-bytes", type=_ranged(int, 1), default=DEFAULT_MAX_BYTES,
                   help="refuse larger files before reading them (default %(default)s)")
    p.add_argument("--max-decode-bytes", type=_ranged(int, 1), default=DEFAULT_MAX_DECODE_BYTES,
                   help="refuse images whose decoding needs more memory, from their header; JPEGs are decoded "
                        "at a reduced scale instead where that fits (default %(default)s)")
    add_allow_host_code(p)


def _tagger(args: argparse.Namespace):
    from ..tagger import Tagger

    thresholds = args.thresholds if args.thresholds else args.threshold
    return Tagger.load(args.model, backend=args.backend, device=args.device, precision=args.precision,
                       thresholds=thresholds, max_pixels=args.max_pixels, max_bytes=args.max_bytes,
                       max_decode_bytes=args.max_decode_bytes, allow_host_code=args.allow_host_code)


def _workers(text: str) -> int | tuple[int, int]:
    """``--workers N`` or ``MIN-MAX`` (Ray's autoscaling actor pool), each >= 1."""
    low, dash, high = text.partition("-")
    try:
        value = (int(low), int(high)) if dash else int(low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX, got {text!r}") from None
    numbers = value if isinstance(value, tuple) else (value,)
    if min(numbers) < 1 or (dash and value[0] > value[1]):
        raise argparse.ArgumentTypeError(f"needs whole numbers >= 1 (MIN <= MAX), got {text!r}")
    return value


def _shard(text: str) -> tuple[int, int]:
    """``--shard i/n`` -> (i, n), 0 <= i < n."""
    index, _, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n (e.g. 3/8), got {text!r}") from None
    if not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"needs 0 <= i < n, got {text!r} (SLURM: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    return shard


def add_tag_parser(sub: argparse._SubParsersAction) -> None:
    from ..batch import FORMATS, ON_EXISTING

    p = sub.add_parser("tag", help="tag images: files, folders, globs, manifests, lists, stdin, WebDataset shards, URLs",
                       description="Tag images with a model, one record per input in input order: JSONL, CSV, Parquet or "
                                   "sidecar captions. An unreadable input becomes a record with its error. Rerunning onto "
                                   "the same output resumes after the records already there.")
    _add_model_args(p)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (recursive), globs ('imgs/*.jpg'), .csv/.jsonl manifests, @list.txt, - (stdin), "
                        "WebDataset shards (shard.tar, 'shard-{000..099}.tar'), fsspec URLs (s3://, gs://, https://)")
    output = p.add_argument_group("output")
    output.add_argument("-o", "--output", help="file or URL: .jsonl, .csv, .parquet (default: JSONL on stdout); with "
                                               "--format txt the JSONL file that receives the error records")
    output.add_argument("--format", choices=FORMATS, help="default: from the output's suffix, else jsonl; txt: a caption "
                                                          "file beside each image")
    output.add_argument("--all-scores", action="store_true", help="also write every label's score (scores_all)")
    output.add_argument("--hash", choices=["sha256", "md5", "none"], default="none",
                        help="content hash of each input, from the bytes read for decoding")
    output.add_argument("--dedup", action="store_true",
                        help="do not tag repeated content again: the record copies the first one's labels and names "
                             "it in duplicate_of (hash: sha256 unless --hash says)")
    output.add_argument("--stats", metavar="JSON", help="statistics of the run (default: <output stem>.stats.json)")
    output.add_argument("--part-records", type=_ranged(int, 1), default=10_000,
                        help="Parquet: records per part file (a crash loses at most one part)")
    output.add_argument("--overwrite", action="store_true", help="start the output afresh instead of resuming it")
    captions = p.add_argument_group("sidecar captions (--format txt)")
    captions.add_argument("--caption-ext", default=".txt", help="caption file extension (default %(default)s)")
    captions.add_argument("--caption-dir", help="write captions under this folder, mirroring the input tree")
    captions.add_argument("--separator", default=", ", help="between tags (default %(default)r)")
    captions.add_argument("--on-existing", choices=ON_EXISTING, default="skip",
                          help="an existing caption: skip it (resume), overwrite it, or append the new tags")
    tags = p.add_argument_group("tag post-processing (after the thresholds)")
    tags.add_argument("--max-tags", type=_ranged(int, 1), dest="top_k", metavar="K", help="the same as --top-k")
    tags.add_argument("--min-tags", type=_ranged(int, 0), default=0, metavar="N",
                      help="fill up to N tags with the best labels below their thresholds")
    tags.add_argument("--exclude-tags", metavar="A,B", help="never write these labels")
    tags.add_argument("--always-first", metavar="A,B", help="these labels, when kept, come first, in this order")
    tags.add_argument("--replace", metavar="A:B,...", help="write tag A as B")
    tags.add_argument("--label-map", metavar="FILE", help="display names: JSON {label: name} or a two-column CSV")
    scale = p.add_argument_group("dataset scale")
    scale.add_argument("--shard", type=_shard, metavar="I/N",
                       help="tag the inputs at positions I modulo N of the input order; output <stem>-IIIII-of-NNNNN")
    scale.add_argument("--per-shard", action="store_true",
                       help="one output (and statistics file) beside each WebDataset shard; with --shard I/N only the "
                            "shards at positions I modulo N")
    scale.add_argument("--wds-image-key", default="jpg,jpeg,png,webp",
                       help="WebDataset: the image member's extension, first found wins (default %(default)s)")
    p.add_argument("--workers", type=_workers, metavar="N",
                   help="decoder threads (default: CPU count); with --ray the tagging actors: N or MIN-MAX (autoscaling)")
    ray = p.add_argument_group("past one machine (Ray Data; pip install 'lcie-fast[ray]')")
    ray.add_argument("--ray", action="store_true",
                     help="tag on a Ray cluster: -o names an output folder of part files (tag-merge puts them in input "
                          "order); without --ray-address a one-machine cluster is started")
    ray.add_argument("--ray-address", metavar="ADDRESS", help="an existing cluster: auto, or ray://HOST:PORT")
    ray.add_argument("--gpus-per-worker", type=_ranged(float, 0), default=0.0, metavar="G",
                     help="GPUs each tagging actor asks for (default 0: CPU actors)")
    ray.add_argument("--ray-decode", choices=["tasks", "actor"], default="tasks",
                     help="decode and resize in separate Ray tasks (default) or inside the tagging actors")
    p.add_argument("--decoder", choices=["auto", "threads", "dali"], default="auto")
    p.add_argument("--ext", nargs="*", help="image extensions for folders (default: common image types)")
    p.add_argument("--no-recursive", action="store_true", help="do not descend into sub-folders")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_tag)


class _RereadableStdin:
    """Stands in for ``sys.stdin`` while a resumed output is checked: stdin can be read only once,
    so the lines a first pass reads are handed out again, in front of the rest, to the next pass."""

    def __init__(self, handle: Any) -> None:
        self.handle, self.lines = handle, []

    def __iter__(self) -> Iterator[str]:
        if self.lines:
            lines, self.lines = self.lines, []
            yield from lines
            yield from self.handle
        else:
            for line in self.handle:
                self.lines.append(line)
                yield line


def _model_sha256(model: str) -> str:
    from ..errors import ModelNotFoundError
    from ..io import sha256_file

    if not Path(model).is_file():
        raise ModelNotFoundError(f"model not found: {model}")
    return sha256_file(model)


def _postprocess(args: argparse.Namespace):
    from ..postprocess import TagPostprocess

    return TagPostprocess.from_options(exclude=args.exclude_tags, always_first=args.always_first, replace=args.replace,
                                       label_map=args.label_map, min_tags=args.min_tags, max_tags=args.top_k)


def _job(args: argparse.Namespace):
    from ..batch import CaptionOptions, TagJob
    from ..data.datasets import IMAGE_EXTENSIONS
    postprocess = _postprocess(args)
    extensions = [e if e.startswith(".") else f".{e}" for e in args.ext] if args.ext else IMAGE_EXTENSIONS
    keys = tuple(key.strip().lstrip(".").lower() for key in args.wds_image_key.split(",") if key.strip())
    return TagJob(args.inputs, args.output, args.format, batch_size=args.batch_size, all_scores=args.all_scores,
                  workers=args.workers, decoder=args.decoder, extensions=tuple(extensions),
                  recursive=not args.no_recursive, hash_name=None if args.hash == "none" else args.hash,
                  dedup=args.dedup, postprocess=postprocess, shard=args.shard, wds_image_keys=keys,
                  captions=CaptionOptions(args.caption_ext, args.caption_dir, args.separator, args.on_existing),
                  overwrite=args.overwrite, progress=not args.no_progress, stats=args.stats,
                  part_records=args.part_records)


def run_tag(args: argparse.Namespace) -> int:
    from ..batch import per_shard_jobs, plan_job, run_job
    from ..errors import InvalidInputError
    from ..runtime import is_server_url

    if args.ray:
        return _run_ray(args)
    if isinstance(args.workers, tuple):
        raise InvalidInputError(f"--workers {args.workers[0]}-{args.workers[1]}: a range is for Ray's tagging actors "
                                "(--ray); decoder threads take one number")
    if args.per_shard:
        if args.output or args.stats:
            raise InvalidInputError("--per-shard writes each shard's output and statistics beside the shard: drop "
                                    f"{'-o/--output' if args.output else '--stats'} (or tag the shards into one output "
                                    "without --per-shard)")
        shard, args.shard, args.output = args.shard, None, "-"
        jobs = per_shard_jobs(_job(args), shard)
    else:
        jobs = [_job(args)]
    # every output is checked before the model loads; a model on a Triton server is asked first for the
    # sha256 of the graph it serves (its lcie_metadata), which identifies the model of a resumed output
    served = _tagger(args) if is_server_url(args.model) else None
    model_sha256 = served.backend.sha256 if served else _model_sha256(args.model)
    plans = [plan_job(each, args.model, model_sha256) for each in jobs]
    unwind_on_sigterm()  # outputs are closed, Parquet parts kept, a remote output uploaded: a rerun resumes
    stdin = sys.stdin
    if "-" in args.inputs:
        sys.stdin = _RereadableStdin(stdin)  # a resumed output checks the first lines before tagging reads them
    try:
        tagger = served or _tagger(args)
        for each, plan in zip(jobs, plans):
            stats = run_job(each, tagger, plan, model=args.model)
            _summary(each, stats)
    finally:
        sys.stdin = stdin
    return 0


def _run_ray(args: argparse.Namespace) -> int:
    """``lcie-fast tag --ray``: the same records, tagged by Ray Data actors into part files under ``-o``."""
    from ..distributed import tag_dataset
    from ..errors import InvalidInputError
    from ..runtime import is_server_url

    if not args.output:
        raise InvalidInputError("--ray needs -o/--output: the output folder of the part files")
    if is_server_url(args.model):
        raise InvalidInputError(f"--ray runs a model file every worker reads, not a Triton server URL ({args.model}): "
                                "tag without --ray (the server batches and runs the model)")
    unsupported = [flag for flag, on in (("--shard", args.shard), ("--per-shard", args.per_shard),
                                         ("--dedup", args.dedup), ("--format txt", args.format == "txt"),
                                         ("--stats", args.stats)) if on]
    if unsupported:
        raise InvalidInputError(f"{unsupported[0]} does not apply with --ray (the cluster splits the work; statistics "
                                "go to OUT/stats.json)")
    fmt = args.format or "parquet"
    if fmt not in ("parquet", "jsonl"):
        raise InvalidInputError(f"--ray writes parquet or jsonl part files, not {fmt}")
    postprocess = _postprocess(args)
    stats = tag_dataset(args.inputs, args.model, args.output, format=fmt,
                        thresholds=args.thresholds if args.thresholds else args.threshold, top_k=args.top_k,
                        all_scores=args.all_scores, backend=args.backend, batch_size=args.batch_size,
                        workers=args.workers or 1, gpus_per_worker=args.gpus_per_worker, decode=args.ray_decode,
                        overwrite=args.overwrite, ray_address=args.ray_address, progress=not args.no_progress,
                        postprocess=postprocess, hash_name=None if args.hash == "none" else args.hash)
    print(f"tagged {stats.get('inputs')} inputs on Ray -> {args.output}: {json.dumps(stats)}", file=sys.stderr)
    return 0


def _summary(job: Any, stats: dict[str, Any]) -> None:
    kinds = ", ".join(f"{count} {kind}" for kind, count in stats["errors_by_kind"].items())
    skipped = stats["skipped_by_scans"]
    print(f"tagged {stats['this_run']} inputs ({stats['errors']} unreadable" + (f": {kinds}" if kinds else "")
          + (f"; {stats['duplicates']} duplicates" if stats["duplicates"] else "")
          + (f"; {skipped} paths under folders/globs left out, see the log" if skipped else "")
          + f") with {stats['backend']} in {stats['seconds']:.1f} s: {stats['images_per_s'] or 0:.1f} inputs/s end to end"
          + (f", model alone {stats['model_images_per_s']:.1f} img/s" if stats["model_images_per_s"] else "")
          + (f" -> {job.output}" if job.output else "") + (f" (stats: {job.stats})" if job.stats else ""),
          file=sys.stderr)


def add_tag_merge_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tag-merge", help="merge the shard outputs of one run into one output, in input order",
                       description="Merge the outputs of `lcie-fast tag --shard i/n` (JSONL, CSV or Parquet, mixed "
                                   "formats allowed) into one output in input order. Refuses shards of different runs "
                                   "(model, thresholds, inputs ...), a missing or unfinished shard, a record twice, or a "
                                   "gap in the input order, unless --partial.")
    p.add_argument("inputs", nargs="+", metavar="SHARD_OUTPUT",
                   help="the shard outputs (tags-00000-of-00008.jsonl ...), or one output folder of tag --ray")
    p.add_argument("-o", "--output", required=True, help="merged output: .jsonl, .csv or .parquet")
    p.add_argument("--format", choices=["jsonl", "csv", "parquet"], help="default: from the output's suffix")
    p.add_argument("--partial", action="store_true", help="merge what is there (unfinished shards, gaps)")
    p.set_defaults(func=run_tag_merge)


def run_tag_merge(args: argparse.Namespace) -> int:
    from ..outputs.merge import merge_outputs

    if any(os.path.isdir(path) for path in args.inputs):
        return _merge_ray_output(args)
    summary = merge_outputs(args.inputs, args.output, args.format, partial=args.partial)
    print(f"merged {len(args.inputs)} outputs -> {args.output}: {json.dumps(summary)}", file=sys.stderr)
    return 0


def _merge_ray_output(args: argparse.Namespace) -> int:
    """``tag-merge OUT_DIR``: the records of a ``tag --ray`` output folder, in input order."""
    from ..batch import output_format
    from ..distributed import read_ray_output
    from ..errors import InvalidInputError
    from ..outputs.merge import record_fields, write_output

    if len(args.inputs) != 1:
        raise InvalidInputError(f"tag-merge takes one Ray output folder at a time, got {len(args.inputs)} inputs")
    settings, records = read_ray_output(args.inputs[0], partial=args.partial)
    fmt = args.format or output_format(args.output, None)
    fields, complete = record_fields(settings), settings.get("complete") is True
    settings = {key: value for key, value in settings.items()
                if key not in ("kind", "complete", "version", "fields", "engine")}
    settings.update(shard=None, format=fmt)
    write_output(records, args.output, fmt, settings, fields, complete=complete)
    print(f"merged the Ray output {args.inputs[0]} -> {args.output}", file=sys.stderr)
    return 0


def add_tag_video_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tag-video", help="tag sampled video frames; smoothed per-frame and per-segment tags",
                       description="Decode a video (PyAV or OpenCV), sample every N frames or at F fps, tag in "
                                   "batches, smooth scores over time (EMA) and write per-frame records and per-label "
                                   "segments (start and end times) as JSONL.")
    _add_model_args(p)
    p.add_argument("video")
    sampling = p.add_mutually_exclusive_group()
    sampling.add_argument("--every", type=_ranged(int, 1), help="tag every N-th frame")
    sampling.add_argument("--fps", type=_ranged(float, 0, exclusive_low=True), help="tag frames at this rate")
    p.add_argument("--ema", type=_ranged(float, 0, 1, exclusive_low=True), default=0.5,
                   help="weight of the newest frame in the smoothed score (1 = none)")
    p.add_argument("--min-segment", type=_ranged(float, 0), default=0.0, help="drop segments shorter than this (seconds)")
    p.add_argument("--reader", choices=["auto", "av", "opencv"], default="auto")
    p.add_argument("-o", "--output", help="per-frame JSONL (default: <video>.frames.jsonl)")
    p.add_argument("--segments", help="per-segment JSONL (default: <video>.segments.jsonl)")
    p.set_defaults(func=run_tag_video)


def run_tag_video(args: argparse.Namespace) -> int:
    from ..io import atomic_write
    from ..outputs import OutputWriteError, ensure_replaceable
    from ..video import tag_video

    frames_out = Path(args.output or f"{args.video}.frames.jsonl")
    segments_out = Path(args.segments or f"{args.video}.segments.jsonl")
    ensure_replaceable(frames_out, ("frame", "time", "labels"))
    ensure_replaceable(segments_out, ("label", "start", "end"))
    tagger = _tagger(args)
    start = time.perf_counter()
    frames, segments = tag_video(tagger, args.video, every=args.every, fps=args.fps, batch_size=args.batch_size,
                                 ema=args.ema, min_segment=args.min_segment, reader=args.reader)
    seconds = time.perf_counter() - start
    for path, lines in ((frames_out, (json.dumps(record, allow_nan=False) for record in frames)),
                        (segments_out, (json.dumps(segment.to_json(), allow_nan=False) for segment in segments))):
        try:
            with atomic_write(path, "w") as handle:
                handle.writelines(line + "\n" for line in lines)
        except OSError as err:
            raise OutputWriteError(f"cannot write the output {path}: {err.strerror or err}") from None
    print(f"{len(frames)} frames tagged in {seconds:.1f} s ({len(frames) / max(seconds, 1e-9):.1f} frames/s), "
          f"{len(segments)} segments -> {frames_out}, {segments_out}", file=sys.stderr)
    return 0
