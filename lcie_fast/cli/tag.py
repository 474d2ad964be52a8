"""``lcie-fast tag`` and ``lcie-fast tag-video``."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from ..data.transforms import DEFAULT_MAX_BYTES, DEFAULT_MAX_DECODE_BYTES
from ._options import add_allow_host_code


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
    p.add_argument("model", help="checkpoint (.pt), ONNX graph (.onnx) or engine bundle (.engine)")
    p.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "compiled", "eager", "onnxruntime"])
    p.add_argument("--device", help="cpu or cuda[:N] (default: a GPU when visible)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help="torch backends (default fp16 on a GPU)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=_ranged(float, 0, 1), help="one score threshold for every label (default 0.5)")
    group.add_argument("--thresholds", metavar="JSON", help="per-label thresholds from lcie-fast eval --fit-thresholds")
    p.add_argument("--top-k", type=_ranged(int, 1), help="keep at most K labels per input")
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
    p.add_argument("--workers", type=_ranged(int, 1), help="decoder threads (default: CPU count)")
    p.add_argument("--decoder", choices=["auto", "threads", "dali"], default="auto")
    p.add_argument("--ext", nargs="*", help="image extensions for folders (default: common image types)")
    p.add_argument("--no-recursive", action="store_true", help="do not descend into sub-folders")
    p.add_argument("--overwrite", action="store_true", help="start the output afresh instead of resuming it")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_tag)


class _RereadableStdin:
    """Stands in for ``sys.stdin`` while a resumed output is checked: stdin can be read only once,
    so the lines the check reads are handed out again, in front of the rest, after :meth:`rewind`."""

    def __init__(self, handle: Any) -> None:
        self.handle, self.lines, self.replay = handle, [], False

    def rewind(self) -> None:
        self.replay = True

    def __iter__(self) -> Iterator[str]:
        if self.replay:
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


def _input_spec(inputs: list[str], extensions: list[str], recursive: bool) -> dict[str, Any]:
    """The inputs as a resumed run must give them again (paths made absolute: keys depend on the folder)."""
    specs = [text if text == "-" else "@" + os.path.abspath(text[1:]) if text.startswith("@") else os.path.abspath(text)
             for text in inputs]
    return {"specs": specs, "extensions": sorted({e.lower() for e in extensions}), "recursive": recursive}


def _check_resumed_inputs(output: str, done: list[str], inputs: list[str], extensions: list[str],
                          recursive: bool) -> None:
    """The records already in ``output`` must be those of the first inputs, in order."""
    from ..inputs import expand_inputs
    from ..outputs import OutputMismatchError

    matched = 0
    for number, (key, source) in enumerate(zip(done, expand_inputs(inputs, extensions=extensions,
                                                                     recursive=recursive)), start=1):
        if key != str(source):
            raise OutputMismatchError(
                f"{output} holds records for other inputs (record {number} is {key}, input {number} is "
                f"{source}); pass --overwrite or write to another output")
        matched = number
    if matched < len(done):
        raise OutputMismatchError(f"{output} holds {len(done)} records but the inputs give only {matched}: it holds "
                                  "records of other inputs; pass --overwrite or write to another output")


def run_tag(args: argparse.Namespace) -> int:
    from ..data.datasets import IMAGE_EXTENSIONS
    from ..outputs import OutputWriteError, RecordWriter, check_settings, inspect_output

    fmt = args.format or ("csv" if args.output and args.output.endswith(".csv") else "jsonl")
    extensions = [e if e.startswith(".") else f".{e}" for e in args.ext] if args.ext else IMAGE_EXTENSIONS
    recursive = not args.no_recursive
    settings, done = None, None
    if args.output:
        # everything about the output that can be checked is checked before the model loads
        settings = {"format": fmt, "model_sha256": _model_sha256(args.model), "top_k": args.top_k,
                    "all_scores": args.all_scores, "inputs": _input_spec(args.inputs, extensions, recursive)}
        done = inspect_output(args.output, fmt, settings, overwrite=args.overwrite)
    stdin = sys.stdin
    try:
        if done:
            if "-" in args.inputs:
                sys.stdin = _RereadableStdin(stdin)
            _check_resumed_inputs(args.output, done, args.inputs, extensions, recursive)
            if isinstance(sys.stdin, _RereadableStdin):
                sys.stdin.rewind()
        if done is not None:
            print(f"resuming {args.output}: {len(done)} records already there", file=sys.stderr)
        tagger = _tagger(args)
        if settings is not None:
            settings.update(labels=list(tagger.labels), thresholds=[float(t) for t in tagger.thresholds])
            if done is not None:
                check_settings(args.output, settings)
        writer = RecordWriter(args.output or sys.stdout, fmt, append=done is not None, settings=settings)
        start = time.perf_counter()
        written = errors = 0
        try:
            records = tagger.tag(args.inputs, batch_size=args.batch_size, top_k=args.top_k, workers=args.workers,
                                 all_scores=args.all_scores, skip=len(done or []), progress=not args.no_progress,
                                 decoder=args.decoder, extensions=extensions, recursive=recursive)
            while True:
                chunk = list(itertools.islice(records, args.batch_size))
                if not chunk:
                    break
                writer.write(chunk)
                written += len(chunk)
                errors += sum(record.error is not None for record in chunk)
        except BaseException:
            with contextlib.suppress(OutputWriteError):  # the first error is the one to show
                writer.close()
            raise
        writer.close()
    finally:
        sys.stdin = stdin
    seconds = time.perf_counter() - start
    model_rate = tagger.stats["images"] / tagger.stats["model_s"] if tagger.stats["model_s"] else 0.0
    skipped = tagger.stats.get("skipped", 0)
    print(f"tagged {written} inputs ({errors} unreadable"
          + (f"; {skipped} paths under folders/globs left out, see the log" if skipped else "")
          + f") with {tagger.backend.label} in {seconds:.1f} s: "
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
