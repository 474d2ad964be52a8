"""``lcie-fast tag`` and ``lcie-fast tag-video``."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint (.pt), ONNX graph (.onnx) or engine bundle (.engine)")
    p.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "compiled", "eager", "onnxruntime"])
    p.add_argument("--device", help="cpu or cuda[:N] (default: a GPU when visible)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help="torch backends (default fp16 on a GPU)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float, help="one score threshold for every label (default 0.5)")
    group.add_argument("--thresholds", metavar="JSON", help="per-label thresholds from lcie-fast eval --fit-thresholds")
    p.add_argument("--top-k", type=int, help="keep at most K labels per input")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-pixels", type=int, default=80_000_000, help="refuse larger images (decompression bombs)")


def _tagger(args: argparse.Namespace):
    from ..tagger import Tagger

    thresholds = args.thresholds if args.thresholds else args.threshold
    return Tagger.load(args.model, backend=args.backend, device=args.device, precision=args.precision,
                       thresholds=thresholds, max_pixels=args.max_pixels)


def add_tag_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tag", help="tag images: files, folders, globs, manifests, lists, stdin",
                       description="Tag images with a model, one record per input in input order (JSONL or CSV). "
                                   "An unreadable input becomes a record with its error. Rerunning onto the same "
                                   "output resumes after the records already there.")
    _add_model_args(p)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (recursive), globs ('imgs/*.jpg'), .csv/.jsonl manifests, @list.txt, or - (stdin)")
    p.add_argument("-o", "--output", help="JSONL or CSV file (default: JSONL on stdout)")
    p.add_argument("--format", choices=["jsonl", "csv"], help="default: from the output's suffix, else jsonl")
    p.add_argument("--all-scores", action="store_true", help="also write every label's score")
    p.add_argument("--workers", type=int, help="decoder threads (default: CPU count)")
    p.add_argument("--decoder", choices=["auto", "threads", "dali"], default="auto")
    p.add_argument("--ext", nargs="*", help="image extensions for folders (default: common image types)")
    p.add_argument("--no-recursive", action="store_true", help="do not descend into sub-folders")
    p.add_argument("--overwrite", action="store_true", help="start the output afresh instead of resuming it")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_tag)


def run_tag(args: argparse.Namespace) -> int:
    from ..data.datasets import IMAGE_EXTENSIONS
    from ..inputs import expand_inputs
    from ..outputs import OutputMismatchError, RecordWriter, existing_keys

    fmt = args.format or ("csv" if args.output and args.output.endswith(".csv") else "jsonl")
    extensions = [e if e.startswith(".") else f".{e}" for e in args.ext] if args.ext else IMAGE_EXTENSIONS
    recursive = not args.no_recursive
    done = []
    if args.output and not args.overwrite:
        done = existing_keys(args.output, fmt)
    if done:
        # the records already written must be the first inputs, in order
        for number, (key, source) in enumerate(zip(done, expand_inputs(args.inputs, extensions=extensions,
                                                                         recursive=recursive)), start=1):
            if key != str(source):
                raise OutputMismatchError(
                    f"{args.output} holds records for other inputs (record {number} is {key}, input {number} is "
                    f"{source}); pass --overwrite or write to another output")
        print(f"resuming {args.output}: {len(done)} records already there", file=sys.stderr)
    tagger = _tagger(args)
    writer = RecordWriter(args.output or sys.stdout, fmt, append=bool(done))
    start = time.perf_counter()
    written = errors = 0
    try:
        records = tagger.tag(args.inputs, batch_size=args.batch_size, top_k=args.top_k, workers=args.workers,
                             all_scores=args.all_scores, skip=len(done), progress=not args.no_progress,
                             decoder=args.decoder, extensions=extensions, recursive=recursive)
        while True:
            chunk = list(itertools.islice(records, args.batch_size))
            if not chunk:
                break
            writer.write(chunk)
            written += len(chunk)
            errors += sum(record.error is not None for record in chunk)
    finally:
        writer.close()
    seconds = time.perf_counter() - start
    model_rate = tagger.stats["images"] / tagger.stats["model_s"] if tagger.stats["model_s"] else 0.0
    print(f"tagged {written} inputs ({errors} unreadable) with {tagger.backend.label} in {seconds:.1f} s: "
          f"{written / max(seconds, 1e-9):.1f} inputs/s end to end"
          + (f", model alone {model_rate:.1f} img/s" if model_rate else "")
          + (f" -> {args.output}" if args.output else ""), file=sys.stderr)
    return 0


def add_tag_video_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tag-video", help="tag sampled video frames; smoothed per-frame and per-segment tags",
                       description="Decode a video (PyAV or OpenCV), sample every N frames or at F fps, tag in "
                                   "batches, smooth scores over time (EMA) and write per-frame records and per-label "
                                   "segments (start and end times) as JSONL.")
    _add_model_args(p)
    p.add_argument("video")
    sampling = p.add_mutually_exclusive_group()
    sampling.add_argument("--every", type=int, help="tag every N-th frame")
    sampling.add_argument("--fps", type=float, help="tag frames at this rate")
    p.add_argument("--ema", type=float, default=0.5, help="weight of the newest frame in the smoothed score (1 = none)")
    p.add_argument("--min-segment", type=float, default=0.0, help="drop segments shorter than this (seconds)")
    p.add_argument("--reader", choices=["auto", "av", "opencv"], default="auto")
    p.add_argument("-o", "--output", help="per-frame JSONL (default: <video>.frames.jsonl)")
    p.add_argument("--segments", help="per-segment JSONL (default: <video>.segments.jsonl)")
    p.set_defaults(func=run_tag_video)


def run_tag_video(args: argparse.Namespace) -> int:
    from ..io import atomic_write
    from ..video import tag_video

    tagger = _tagger(args)
    start = time.perf_counter()
    frames, segments = tag_video(tagger, args.video, every=args.every, fps=args.fps, batch_size=args.batch_size,
                                 ema=args.ema, min_segment=args.min_segment, reader=args.reader)
    seconds = time.perf_counter() - start
    frames_out = Path(args.output or f"{args.video}.frames.jsonl")
    segments_out = Path(args.segments or f"{args.video}.segments.jsonl")
    with atomic_write(frames_out, "w") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in frames)
    with atomic_write(segments_out, "w") as handle:
        handle.writelines(json.dumps(segment.to_json()) + "\n" for segment in segments)
    print(f"{len(frames)} frames tagged in {seconds:.1f} s ({len(frames) / max(seconds, 1e-9):.1f} frames/s), "
          f"{len(segments)} segments -> {frames_out}, {segments_out}", file=sys.stderr)
    return 0
