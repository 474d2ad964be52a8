"""Flags several commands share, defined once."""

from __future__ import annotations

import argparse
import signal
from typing import Any


def add_allow_host_code(p: argparse.ArgumentParser) -> None:
    """``--allow-host-code``: the caller trusts native code carried by a model file."""
    p.add_argument("--allow-host-code", action="store_true",
                   help="let AOTInductor packages (.pt2) and version-compatible TensorRT bundles run the native "
                        "code they carry (only for files from a source you trust)")


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def unwind_on_sigterm() -> None:
    """SIGTERM (preemption, SLURM, ``kill``, ``docker stop``) unwinds like an exception from here on:
    outputs are closed or uploaded, staging folders removed, so a rerun starts clean or resumes."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
