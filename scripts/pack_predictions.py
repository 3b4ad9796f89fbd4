"""Compress the predictions of finished benchmarks, so that a study's small files can be committed.

    python scripts/pack_predictions.py results/smollm2-135m-cpu [--min-mb 1]

Every ``<benchmark>/predictions.jsonl`` beside a ``results.json`` (a finished benchmark: nothing appends to
it any more) and larger than ``--min-mb`` becomes ``predictions.jsonl.gz`` (written to a temp file, checked
to decompress to the same lines, then renamed; only then is the plain file removed). The report and the
diagnostics read either form (:func:`tinyslm.core.files.predictions_file`); ``zcat`` shows it. Unfinished
benchmarks are left alone: their evaluation resumes from the plain file.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
from pathlib import Path


def pack(root: Path, min_bytes: int) -> list[tuple[Path, int, int]]:
    """(file, bytes before, bytes after) for every predictions file compressed under ``root``."""
    done = []
    for plain in sorted(root.rglob("predictions.jsonl")):
        if not (plain.parent / "results.json").is_file() or plain.stat().st_size < min_bytes:
            continue
        packed = plain.with_name(plain.name + ".gz")
        tmp = plain.with_name(f".{plain.name}.gz.tmp")
        data = plain.read_bytes()
        with gzip.open(tmp, "wb", compresslevel=9) as f:
            f.write(data)
        with gzip.open(tmp, "rb") as f:
            if f.read() != data:
                tmp.unlink()
                raise SystemExit(f"{plain}: the compressed copy does not read back the same; left as it was")
        os.replace(tmp, packed)
        plain.unlink()
        done.append((plain, len(data), packed.stat().st_size))
    return done


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="a study, training or evaluation output directory")
    p.add_argument("--min-mb", type=float, default=1.0, help="only files at least this large (default 1)")
    args = p.parse_args()
    if not args.root.is_dir():
        print(f"pack_predictions: not a directory: {args.root}", file=sys.stderr)
        return 2
    for path, before, after in pack(args.root, int(args.min_mb * 1e6)):
        print(f"{path}: {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
