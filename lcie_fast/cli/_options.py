"""Flags several commands share, defined once."""

from __future__ import annotations

import argparse


def add_allow_host_code(p: argparse.ArgumentParser) -> None:
    """``--allow-host-code``: the caller trusts native code carried by a model file."""
    p.add_argument("--allow-host-code", action="store_true",
                   help="let AOTInductor packages (.pt2) and version-compatible TensorRT bundles run the native "
                        "code they carry (only for files from a source you trust)")
