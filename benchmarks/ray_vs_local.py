"""Local tagging vs distributed tagging on Ray Data, side by side, interleaved, on one machine.

What users ask about is the overhead of Ray on the machine they already have: this tags the same
images with :meth:`Tagger.tag` (what ``lcie-fast tag`` runs) and with :func:`tag_dataset` on 1 and
2 tagging actors, round after round (interleaved, so a busy neighbour hurts all alike), and prints
images/s of each: wall time of the whole call, model loading, input expansion, the pipeline and
the final checks included. Ray itself is started once, before the rounds (a cluster is up before
a job comes; its start is printed apart).

Each run tags the folder once and its file list ``--repeat`` times over (the same files again,
from the page cache): the two sizes split a run's time into a fixed cost per call (processes
starting, imports, model loading) and the rate at which images then go (the marginal images/s).

    .venv/bin/python benchmarks/ray_vs_local.py [--images DIR] [--model GRAPH] [--rounds 2] [--repeat 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu_name() -> str:
    """The CPU's name and its best vector extension for INT8 (AVX-512 VNNI, AVX-VNNI, AVX2)."""
    text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.lower().startswith("model name")),
                platform.processor() or "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.lower().startswith("flags")), []))
    best = next((label for flag, label in (("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"), ("avx2", "AVX2"))
                 if flag in flags), "no AVX2")
    return f"{name}, {best}, {os.cpu_count()} logical CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="default: traffic5's valid images ($LCIE_FAST_DATA or ../shared/data)")
    parser.add_argument("--model", default=str(REPO / "demo_out" / "graphs" / "model.int8-cpu.onnx"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=4, help="the larger size: the file list this many times")
    args = parser.parse_args()

    import ray

    from lcie_fast.distributed import tag_dataset
    from lcie_fast.tagger import Tagger

    if args.images is None:
        from lcie_fast.demo import find_traffic5

        traffic5 = find_traffic5()
        if traffic5 is None:
            parser.error("traffic5 not found (set LCIE_FAST_DATA): pass --images")
        args.images = str(traffic5 / "valid" / "images")
    files = [str(path) for path in sorted(Path(args.images).iterdir()) if path.is_file()]
    sizes = {"x1": files, f"x{args.repeat}": files * args.repeat}
    assert sum(1 for _ in Tagger.load(args.model).tag(files, batch_size=args.batch_size)) == len(files)  # warm the cache
    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    ray_start = time.perf_counter() - start

    def local(inputs: list[str]) -> str:
        tagger = Tagger.load(args.model)
        assert sum(1 for _ in tagger.tag(inputs, batch_size=args.batch_size)) == len(inputs)
        return tagger.backend.label

    def distributed(inputs: list[str], workers: int) -> str:
        with tempfile.TemporaryDirectory(prefix="ray-vs-local-") as folder:
            stats = tag_dataset(inputs, args.model, Path(folder) / "out", batch_size=args.batch_size, workers=workers,
                                progress=False)
        assert stats["this_run"] == len(inputs)
        return ", ".join(stats["backends"])

    runs = {"local Tagger.tag": local,
            "tag_dataset, 1 worker": lambda inputs: distributed(inputs, 1),
            "tag_dataset, 2 workers": lambda inputs: distributed(inputs, 2)}
    seconds: dict[tuple[str, str], list[float]] = {(name, size): [] for name in runs for size in sizes}
    labels: dict[str, str] = {}
    for number in range(args.rounds):
        for size, inputs in sizes.items():
            for name, run in runs.items():
                start = time.perf_counter()
                labels[name] = run(inputs)
                seconds[name, size].append(time.perf_counter() - start)
                print(f"round {number + 1}: {name}, {len(inputs)} inputs: {seconds[name, size][-1]:.2f} s", file=sys.stderr)
    ray.shutdown()

    small, large = sizes
    n_small, n_large = len(sizes[small]), len(sizes[large])
    print(f"\nCPU: {cpu_name()}\nmodel: {args.model}\ninputs: the {n_small} images of {args.images} ({small}) and their "
          f"list {args.repeat} times ({large}, {n_large} inputs); batch {args.batch_size}; medians of {args.rounds} rounds, "
          f"interleaved; Ray started once before them in {ray_start:.1f} s\n")
    median = {key: statistics.median(values) for key, values in seconds.items()}
    local_rate = {size: len(sizes[size]) / median["local Tagger.tag", size] for size in sizes}
    print(f"| run | backend | s ({small}) | images/s ({small}) | vs local | s ({large}) | images/s ({large}) | vs local "
          "| fixed s per call | marginal images/s |\n|---|---|---|---|---|---|---|---|---|---|")
    for name in runs:
        cells = []
        for size in sizes:
            rate = len(sizes[size]) / median[name, size]
            cells += [f"{median[name, size]:.2f}", f"{rate:.1f}", f"{rate / local_rate[size]:.2f}x"]
        marginal = (n_large - n_small) / max(median[name, large] - median[name, small], 1e-9)
        fixed = median[name, small] - n_small / marginal
        print(f"| {name} | {labels[name]} | {' | '.join(cells)} | {fixed:.1f} | {marginal:.1f} |")


if __name__ == "__main__":
    main()
