"""List the identifier strings of the real TensorRT Python bindings, for the static API test.

TensorRT itself cannot be installed on the project's machines, but its bindings wheels can be
downloaded. pybind11 keeps every class, method, property and enum name of the module as a C
string; this script extracts the printable, space-free strings of ``tensorrt.so`` from each
wheel and writes one sorted list per version to ``tests/data/``. The linker merges a short
string into the tail of a longer one, so a name is *present* when some listed string ends
with it (``tests/test_tensorrt_api.py``).

Usage (needs network access to PyPI):

    python scripts/list_trt_identifiers.py                 # 10.16.1.11 and 11.4.0.106
    python scripts/list_trt_identifiers.py 10.16.1.11 11.4.0.106 --package tensorrt-cu13-bindings
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

IDENTIFIER_RUN = re.compile(rb"[A-Za-z0-9_]{2,}")
PRINTABLE_RUN = re.compile(rb"[\x20-\x7e]{2,}")


def identifiers(shared_object: bytes) -> list[str]:
    """Space-free printable strings made only of identifier characters, without C++ mangled
    symbols (``_Z...``) and numbers, which no Python name can be the tail of."""
    found = set()
    for run in PRINTABLE_RUN.findall(shared_object):
        if IDENTIFIER_RUN.fullmatch(run) and not run.startswith(b"_Z") and not run.isdigit() and len(run) <= 64:
            found.add(run.decode())
    return sorted(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("versions", nargs="*", default=["10.16.1.11", "11.4.0.106"])
    parser.add_argument("--package", default="tensorrt-cu13-bindings")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parents[1] / "tests" / "data"))
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for version in args.versions:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--python-version", "3.11", "-d", tmp, f"{args.package}=={version}"], check=True)
            (wheel,) = Path(tmp).glob("*.whl")
            with zipfile.ZipFile(wheel) as archive:
                (member,) = [n for n in archive.namelist() if n.endswith("/tensorrt.so")]
                data = archive.read(member)
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        names = identifiers(data)
        target = out / f"trt_identifiers_{version.rsplit('.', 2)[0]}.txt"
        header = f"# {wheel.name} sha256 {digest}: {member}, {len(names)} identifier strings\n"
        target.write_text(header + "\n".join(names) + "\n")
        print(f"{target}: {len(names)} identifier strings from {wheel.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
