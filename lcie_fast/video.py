"""Tagging video: sampled frames -> batches -> scores smoothed over time -> frame and segment tags.

Frames are decoded on the CPU with PyAV (or OpenCV when PyAV is absent), sampled every N
frames or at F frames per second, tagged in batches, and smoothed with an exponential moving
average (``ema``: weight of the newest frame). A label's segment runs while its smoothed score
stays at or above its threshold; segments shorter than ``min_segment`` seconds are dropped.

A file without a video stream is refused naming it. With PyAV, an undecodable packet is
skipped and counted (as OpenCV does), and the count is reported with the file's name: one
damaged packet costs its frames, not the whole video.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ._optional import require
from .errors import InputNotFoundError, InvalidInputError
from .outputs.records import NON_FINITE


@dataclasses.dataclass
class Segment:
    """A stretch of video where one label stays on."""

    label: str
    start: float
    end: float
    max_score: float
    frames: int

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "start": round(self.start, 3), "end": round(self.end, 3),
                "max_score": round(self.max_score, 5), "frames": self.frames}


def _report_to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def iter_frames(path: str | Path, *, every: int | None = None, fps: float | None = None,
                reader: str = "auto", report: Callable[[str], None] | None = None
                ) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame index, time in seconds, RGB uint8 (H, W, 3)) of the sampled frames.

    Args:
        every: Keep every N-th decoded frame.
        fps: Keep frames at this rate (by timestamp). Neither: every frame.
        reader: ``av`` (PyAV), ``opencv`` or ``auto`` (PyAV when installed).
        report: Called with one line naming the file when packets were skipped as
            undecodable, or reading stopped early on damaged data (default: stderr).

    Raises:
        InputNotFoundError: ``path`` does not exist.
        InvalidInputError: the file cannot be opened as video, has no video stream, or no
            frame of it can be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"video not found: {path}")
    if every is not None and every < 1:
        raise InvalidInputError("every must be >= 1")
    if fps is not None and fps <= 0:
        raise InvalidInputError("fps must be > 0")
    if reader == "auto":
        import importlib.util

        reader = "av" if importlib.util.find_spec("av") else "opencv"
    report = report or _report_to_stderr
    frames = _frames_av(path, report) if reader == "av" else _frames_opencv(path)
    next_time = 0.0
    decoded = 0
    for index, timestamp, image in frames:
        decoded += 1
        if every is not None and index % every:
            continue
        if fps is not None:
            if timestamp + 1e-6 < next_time:
                continue
            next_time = timestamp + 1.0 / fps
        yield index, timestamp, image
    if not decoded:
        raise InvalidInputError(f"{path}: no video frame could be decoded (is it a video file?)")


def _frames_av(path: Path, report: Callable[[str], None]) -> Iterator[tuple[int, float, np.ndarray]]:
    """Decode packet by packet, so a damaged packet is skipped and counted, not fatal."""
    av = require("av", "decoding video with PyAV")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as err:
        raise InvalidInputError(f"{path}: cannot open as video: {err}") from None
    with container:
        if not container.streams.video:
            kinds = sorted({stream.type for stream in container.streams}) or ["none"]
            raise InvalidInputError(f"{path}: no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        index, skipped, first_error, stopped = 0, 0, "", ""
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as err:  # the container itself is damaged: keep what was read
                stopped = str(err)
                break
            try:
                frames = packet.decode()
            except av.error.FFmpegError as err:
                skipped += 1
                first_error = first_error or str(err)
                continue
            for frame in frames:
                timestamp = float(frame.time) if frame.time is not None else index / rate
                yield index, timestamp, frame.to_ndarray(format="rgb24")
                index += 1
        if skipped:
            report(f"{path}: skipped {skipped} undecodable video packet(s) ({first_error}); "
                   f"{index} frames decoded")
        if stopped:
            report(f"{path}: stopped reading after {index} frames on damaged data ({stopped})")


def _frames_opencv(path: Path) -> Iterator[tuple[int, float, np.ndarray]]:
    cv2 = require("cv2", "decoding video with OpenCV")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise InvalidInputError(f"{path}: OpenCV cannot open it as video (no video stream, or a format "
                                f"it cannot read)")
    if not capture.get(cv2.CAP_PROP_FRAME_WIDTH):
        capture.release()
        raise InvalidInputError(f"{path}: no video stream")
    rate = capture.get(cv2.CAP_PROP_FPS) or 25.0
    index = 0
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                return
            yield index, index / rate, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()


def tag_video(tagger: Any, path: str | Path, *, every: int | None = None, fps: float | None = None,
              batch_size: int = 16, ema: float = 0.5, min_segment: float = 0.0,
              reader: str = "auto", report: Callable[[str], None] | None = None
              ) -> tuple[list[dict[str, Any]], list[Segment]]:
    """Per-frame records and per-label segments of a video file.

    Each frame record follows the one record schema (:mod:`lcie_fast.outputs.records`):
    ``index`` (the frame number), ``path`` (``<video>#frame=<n>``), ``labels`` (smoothed score at
    or above the label's threshold, best first), ``error`` (None, or non-finite scores) and
    ``scores_all`` (raw per-frame probabilities of every label), plus ``frame`` and ``time``.
    ``report`` receives the lines about skipped packets (see :func:`iter_frames`).
    """
    if not 0.0 < ema <= 1.0:
        raise InvalidInputError("ema must be in (0, 1]")
    labels = tagger.labels
    thresholds = tagger.thresholds
    smoothed: np.ndarray | None = None
    records: list[dict[str, Any]] = []
    open_segments: dict[int, Segment] = {}
    segments: list[Segment] = []
    times: list[float] = []

    def flush(batch):
        nonlocal smoothed
        results = tagger.tag_frames([image for _, _, image in batch], threshold=0.0, all_scores=True)
        for (index, timestamp, _), result in zip(batch, results):
            raw = np.array([result.scores[name] for name in labels], dtype=np.float64)
            finite = bool(np.isfinite(raw).all())
            if finite:  # a frame with non-finite scores is reported, and never enters the average
                smoothed = raw if smoothed is None else ema * raw + (1 - ema) * smoothed
            current = smoothed if smoothed is not None else np.zeros(len(labels))
            on = (current >= thresholds) if finite else np.zeros(len(labels), bool)
            order = np.argsort(-current, kind="stable")
            # the one record schema (index, path, labels, error, scores_all) plus the frame's time
            records.append({"index": index, "path": f"{path}#frame={index}", "frame": index, "time": round(timestamp, 3),
                            "labels": [{"label": labels[c], "score": round(float(current[c]), 5)} for c in order if on[c]],
                            "error": None if finite else NON_FINITE,
                            "scores_all": {name: round(float(p), 5) if np.isfinite(p) else None for name, p in zip(labels, raw)}})
            times.append(timestamp)
            for c, name in enumerate(labels):
                segment = open_segments.get(c)
                if on[c] and segment is None:
                    open_segments[c] = Segment(name, timestamp, timestamp, float(smoothed[c]), 1)
                elif on[c]:
                    segment.end, segment.frames = timestamp, segment.frames + 1
                    segment.max_score = max(segment.max_score, float(smoothed[c]))
                elif segment is not None:
                    _close(segment, timestamp, segments, min_segment)
                    del open_segments[c]

    batch = []
    for frame in iter_frames(path, every=every, fps=fps, reader=reader, report=report):
        batch.append(frame)
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    # segments still open end one sampling step after the last frame
    step = times[-1] - times[-2] if len(times) > 1 else 0.0
    for segment in open_segments.values():
        _close(segment, times[-1] + step, segments, min_segment)
    segments.sort(key=lambda s: (s.start, s.label))
    return records, segments


def _close(segment: Segment, end: float, segments: list[Segment], min_segment: float) -> None:
    """A segment ends where the first frame without the label begins."""
    segment.end = end
    if segment.end - segment.start >= min_segment:
        segments.append(segment)
