"""One dataset tagged to every output format, sharded and merged: identical records, and what writing costs.

    python benchmarks/formats_report.py --model demo_out/graphs/model.int8.cpu.onnx \\
        [--data ../shared/data/traffic5/valid] [--out formats_out] [--repeats 3]

The images of ``--data`` are copied next to bad files (random bytes, an empty file, a truncated
JPEG, a text file named .jpg), byte-identical copies of three images and a path that does not
exist (through an ``@list``), so every format must carry error records. Then, with one loaded
model:

1. each format (JSONL, CSV, Parquet, sidecar captions) and a run that writes nothing, in turn,
   ``--repeats`` times, interleaved; images/s end to end and the share of time spent writing;
2. the same inputs sharded 3 ways (``shard=(i, 3)``) to JSONL and to Parquet, merged back;
3. every output read back and compared record by record with the JSONL output (captions: the
   caption text of each good record, ``errors.jsonl`` for the bad ones).

Writes ``OUT/formats.md`` and ``OUT/formats.json`` and prints the table. Exits 1 when any
output differs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from lcie_fast.batch import CaptionOptions, TagJob, plan_job, run_job
from lcie_fast.demo import find_traffic5
from lcie_fast.outputs.merge import merge_outputs, read_output, record_fields
from lcie_fast.tagger import Tagger


def build_dataset(source: Path, folder: Path) -> Path:
    """Copy ``source``'s images into ``folder`` with bad files and duplicates mixed in; returns an @list of all inputs."""
    images = folder / "images"
    if images.exists():
        shutil.rmtree(images)
    images.mkdir(parents=True)
    files = sorted(p for p in (source / "images").iterdir() if p.is_file())
    for path in files:
        shutil.copyfile(path, images / path.name)
    rng_bytes = bytes((i * 7919 + 13) % 256 for i in range(4096))
    (images / "bad_random.jpg").write_bytes(rng_bytes)
    (images / "bad_empty.jpg").write_bytes(b"")
    (images / "bad_truncated.jpg").write_bytes(files[0].read_bytes()[: files[0].stat().st_size // 3])
    (images / "bad_text.jpg").write_text("not an image\n")
    for path in files[:3]:
        shutil.copyfile(path, images / f"dup_{path.name}")
    listed = sorted(str(p) for p in images.iterdir())
    listed.insert(len(listed) // 2, str(images / "missing_file.jpg"))
    inputs = folder / "inputs.txt"
    inputs.write_text("\n".join(listed) + "\n")
    return inputs


def tag_to(tagger: Tagger, model: str, inputs: list[str], output: str | None, fmt: str | None, **options) -> dict:
    job = TagJob(inputs, output, fmt, progress=False, overwrite=True, **options)
    plan = plan_job(job, model)
    if output is None:  # the baseline: records made and dropped, nothing written
        start = time.perf_counter()
        count = sum(1 for _ in tagger.tag(inputs, batch_size=job.batch_size, hash_name=job.hash_name, dedup=job.dedup))
        seconds = time.perf_counter() - start
        return {"this_run": count, "seconds": seconds, "images_per_s": count / seconds, "write_s": 0.0,
                "write_share": 0.0, "errors": None}
    return run_job(job, tagger, plan, model=model)


def comparable(path: str) -> list[dict]:
    """An output's records as JSON data, with every optional field its settings ask for."""
    settings, records = read_output(path)
    fields = record_fields(settings)
    return [record.to_json(fields) for record in records]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, help="a split folder with images/ (default: traffic5 valid, from "
                        "$LCIE_FAST_DATA or ../shared/data)")
    parser.add_argument("--out", type=Path, default=Path("formats_out"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--thresholds", help="per-label thresholds JSON (default 0.5)")
    args = parser.parse_args(argv)
    if args.data is None:
        traffic5 = find_traffic5()
        args.data = traffic5 / "valid" if traffic5 else Path("traffic5-not-found")
    if not (args.data / "images").is_dir():
        parser.error(f"{args.data}/images not found: pass --data (a split folder with images/)")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    inputs = [f"@{build_dataset(args.data, out / 'data')}"]
    tagger = Tagger.load(args.model, thresholds=args.thresholds)
    common = {"batch_size": args.batch_size, "hash_name": "sha256", "dedup": True}
    targets = {"none": (None, None), "jsonl": (str(out / "tags.jsonl"), None), "csv": (str(out / "tags.csv"), None),
               "parquet": (str(out / "tags.parquet"), None), "txt": (str(out / "errors.jsonl"), "txt")}
    captions = CaptionOptions(folder=str(out / "captions"), on_existing="overwrite")
    tag_to(tagger, args.model, inputs, None, None, **common)  # warm-up (not timed)
    runs: dict[str, list[dict]] = {name: [] for name in targets}
    for _ in range(args.repeats):
        for name, (output, fmt) in targets.items():
            if name == "txt" and Path(output).exists():
                Path(output).unlink()  # errors.jsonl is appended to by design; one run's worth per comparison
            runs[name].append(tag_to(tagger, args.model, inputs, output, fmt, captions=captions, **common))

    shards = {}
    for fmt in ("jsonl", "parquet"):
        parts = []
        for index in range(3):
            stats = tag_to(tagger, args.model, inputs, str(out / f"shards/tags.{fmt}"), None, shard=(index, 3), **common)
            parts.append(stats["output"])
        merged = str(out / f"merged.{fmt}")
        merge_outputs(parts, merged)
        shards[fmt] = merged

    reference = comparable(str(out / "tags.jsonl"))
    checks = {}
    for name, path in [("csv", out / "tags.csv"), ("parquet", out / "tags.parquet"),
                       ("3 shards merged (jsonl)", shards["jsonl"]), ("3 shards merged (parquet)", shards["parquet"])]:
        records = comparable(str(path))
        checks[name] = records == reference
        if not checks[name]:
            differing = [a["path"] for a, b in zip(records, reference) if a != b]
            print(f"{name}: {len(differing)} records differ (of {len(records)} vs {len(reference)}), first: "
                  f"{differing[:3]}", file=sys.stderr)
    errors_file = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    good = [r for r in reference if r["error"] is None]
    caption_root = Path(captions.folder)
    image_root = out / "data" / "images"
    captions_ok = all(
        (caption_root / Path(r["path"]).relative_to(image_root).with_suffix(".txt")).read_text()
        .rstrip("\n") == ", ".join(tag["label"] for tag in r["labels"]) for r in good)
    checks["txt (captions + errors.jsonl)"] = captions_ok and [e["path"] for e in errors_file] == [
        r["path"] for r in reference if r["error"] is not None]

    rows = []
    for name, stats in runs.items():
        rates = [s["images_per_s"] for s in stats]
        shares = [s["write_share"] for s in stats]
        rows.append({"format": name, "images_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
                     "write_share_pct": 100 * statistics.median(shares), "records": stats[-1]["this_run"],
                     "errors": stats[-1]["errors"], "duplicates": stats[-1].get("duplicates")})
    lines = [f"model {args.model} ({tagger.backend.label}), {len(reference)} inputs "
             f"({sum(r['error'] is not None for r in reference)} bad, "
             f"{sum(r.get('duplicate_of') is not None for r in reference)} duplicates), "
             f"batch {args.batch_size}, median of {args.repeats} interleaved runs",
             "", "| output | images/s end to end (min-max) | time spent writing | records | errors |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['format']} | {row['images_per_s']:.1f} ({row['min']:.1f}-{row['max']:.1f}) | "
                     f"{row['write_share_pct']:.2f}% | {row['records']} | {row['errors'] if row['errors'] is not None else '-'} |")
    lines += ["", "| compared with the JSONL output | identical |", "|---|---|"]
    lines += [f"| {name} | {'yes' if ok else 'NO'} |" for name, ok in checks.items()]
    text = "\n".join(lines) + "\n"
    (out / "formats.md").write_text(text)
    (out / "formats.json").write_text(json.dumps({"rows": rows, "checks": checks}, indent=2) + "\n")
    print(text)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
