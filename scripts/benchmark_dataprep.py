#!/usr/bin/env python
"""Benchmark the dataset preparation tools on the generated tiny dataset (CPU).

    python scripts/benchmark_dataprep.py [--replicate 8] [--repeats 3]

Reports: seconds to generate the tiny dataset; BURST conversion throughput (sequences/s, frames/s) with 1 and 2
workers on the tiny BURST set as is (3 sequences: dominated by start-up) and replicated `--replicate` times (the
same sequences under new names, frames linked), median of `--repeats` fresh runs each.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

from cutie.dataprep import burst
from cutie.dataprep.tiny import generate


def _replicated(doc: dict, frames: Path, times: int) -> dict:
    out = copy.deepcopy(doc)
    out["sequences"] = []
    for k in range(times):
        for seq in doc["sequences"]:
            s = copy.deepcopy(seq)
            s["seq_name"] = f"{seq['seq_name']}-r{k}"
            link = frames / s["dataset"] / s["seq_name"]
            if not link.exists():
                link.symlink_to(frames / seq["dataset"] / seq["seq_name"])
            out["sequences"].append(s)
    return out


def _bench(doc: dict, frames: Path, work: Path, workers: int, repeats: int) -> tuple[float, int, int]:
    times = []
    for r in range(repeats):
        out = work / f"out-w{workers}-{len(doc['sequences'])}-{r}"
        start = time.perf_counter()
        summary = burst.convert(doc, frames, out, save_all_image=False, workers=workers)
        times.append(time.perf_counter() - start)
        assert not summary.failed, summary.lines()
    return statistics.median(times), summary.sequences, summary.frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicate", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        generate(work / "tiny", seed=0)
        print(f"make_tiny_dataset: {time.perf_counter() - start:.2f}s")
        frames = work / "tiny" / "BURST" / "frames" / "train"
        doc = json.loads((work / "tiny" / "BURST" / "train" / "train.json").read_text())
        for label, d in (("tiny", doc), (f"tiny x{args.replicate}", _replicated(doc, frames, args.replicate))):
            for workers in (1, 2):
                secs, seqs, n_frames = _bench(d, frames, work, workers, args.repeats)
                print(
                    f"BURST {label:9s} workers={workers}: {seqs} sequences, {n_frames} frames in {secs:.2f}s = "
                    f"{seqs / secs:.1f} sequences/s, {n_frames / secs:.0f} frames/s"
                )


if __name__ == "__main__":
    main()
