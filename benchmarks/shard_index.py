"""Shards at web scale: indexing in parallel, and what a ShardSet of thousands of shards holds.

Writes 4,000 small shards (4 labelled 16 px JPEGs each) in a temporary folder, then

1. builds every index with ``index_shards`` in one process and with ``workers=2`` (the
   ``shards --index PATH --workers 2`` command), and checks the two give the same bytes;
2. in a fresh process per row, opens a ShardSet over the first 400 and over all 4,000
   shards and reads 2,000 random samples (image bytes and labels), then reports the wall
   time of opening and of reading, the process's peak RSS (and its growth over the
   imports), and, at the end, the index files mapped (``/proc/self/maps`` lines ending
   ``.idx.npy``) and the descriptors open (``/proc/self/fd``). Each is measured against
   the previous ShardSet's holding, in the same run: every index mapped at open (what it
   did, with ``load_index``) and shard files opened on demand, at most 64 at a time.

    python benchmarks/shard_index.py                    # ~2 minutes on 2 busy cores
    python benchmarks/shard_index.py --shards 1000      # a quicker look

Prints a table and writes benchmarks/results/<date>_shard_index_cpu.json. Linux only (it
reads /proc).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ssl_zoo.data.shards import index_path
from ssl_zoo.data.shards.convert import Sample, index_shards, write_shard

PER_SHARD = 4

# One measurement, in a fresh process: argv = shard folder, shards, mode, samples to read.
CHILD = """
import os, resource, sys, time
from pathlib import Path
import numpy as np
from ssl_zoo.data.shards import ShardSet, load_index
from ssl_zoo.data.shards.paths import expand_shard_paths

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

root, count, mode, reads = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
paths = expand_shard_paths(root)[:count]
imported = peak_mib()
started = time.perf_counter()
if mode == "on_demand":
    shards = ShardSet(paths)
    starts = shards._starts
else:  # the previous ShardSet: every index mapped (and checked) at open, files opened on demand
    rows = [load_index(p)[0] for p in paths]
    starts = np.cumsum([0] + [len(r) for r in rows])
    files = {}

    def read(sample):
        shard = int(np.searchsorted(starts, sample, side="right") - 1)
        entry = rows[shard][sample - starts[shard]]
        if shard not in files:
            if len(files) >= 64:
                os.close(files.pop(next(iter(files))))
            files[shard] = os.open(paths[shard], os.O_RDONLY)
        return os.pread(files[shard], int(entry["image_size"]), int(entry["image_offset"])), int(entry["label"])
opened = time.perf_counter() - started
reads = min(reads, int(starts[-1]))
samples = np.random.default_rng(0).choice(int(starts[-1]), reads, replace=False)
started = time.perf_counter()
total = 0
for batch in np.array_split(samples, max(1, reads // 250)):
    if mode == "on_demand":
        total += sum(len(shards.read_image_bytes(int(i))) for i in batch) + int(shards.labels_of(batch).sum())
    else:
        total += sum(len(image) + label for image, label in map(read, batch.tolist()))
read_s = time.perf_counter() - started
maps = sum(line.rstrip().endswith(".idx.npy") for line in Path("/proc/self/maps").read_text().splitlines())
print("RESULT", opened, read_s, peak_mib(), imported, maps, len(os.listdir("/proc/self/fd")), total)
"""


def make_shards(root: Path, count: int) -> None:
    """``count`` indexed shards of PER_SHARD labelled 16 px JPEGs (64 distinct images)."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(64):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
        images.append(buffer.getvalue())
    root.mkdir()
    for s in range(count):
        samples = [Sample(images[i % 64], label=i % 10) for i in range(s * PER_SHARD, (s + 1) * PER_SHARD)]
        write_shard(samples, root / f"shard-{s:06d}.tar", s * PER_SHARD)


def index_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for shard in sorted(root.glob("*.tar")):
        digest.update(index_path(shard).read_bytes())
    return digest.hexdigest()


def timed_indexing(root: Path, workers: int) -> float:
    """Seconds to index every shard of ``root`` (all indexes deleted first)."""
    for index in root.glob("*.idx.npy"):
        index.unlink()
    started = time.perf_counter()
    built = index_shards(root, workers=workers)
    seconds = time.perf_counter() - started
    assert len(built) == len(list(root.glob("*.tar")))
    return seconds


def measure(root: Path, shards: int, mode: str, reads: int) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(root), str(shards), mode, str(reads)],
                            capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"the {mode} measurement over {shards} shards failed:\n{result.stderr}")
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    opened, read_s, peak, imported, maps, fds, checksum = (float(v) for v in line.split()[1:])
    return {"checksum": int(checksum), "shards": shards, "holding": mode, "open_s": round(opened, 3), "read_s": round(read_s, 3),
            "peak_rss_mib": round(peak, 1), "rss_growth_mib": round(peak - imported, 1),
            "index_maps": int(maps), "open_fds": int(fds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=4000)
    parser.add_argument("--reads", type=int, default=2000, help="random samples read per row")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shards"
        started = time.perf_counter()
        make_shards(root, args.shards)
        written_s = time.perf_counter() - started
        print(f"wrote {args.shards} shards of {PER_SHARD} samples in {written_s:.1f} s", file=sys.stderr)
        serial_s = timed_indexing(root, 1)
        serial = index_digest(root)
        parallel_s = timed_indexing(root, 2)
        assert index_digest(root) == serial, "parallel indexing wrote other bytes than serial"
        started = time.perf_counter()
        assert index_shards(root, workers=2) == []
        current_s = time.perf_counter() - started
        rows = [measure(root, count, mode, args.reads)
                for count in (args.shards // 10, args.shards) for mode in ("on_demand", "all_mapped")]
        for on_demand, all_mapped in zip(rows[::2], rows[1::2]):  # the same samples read both ways
            assert on_demand.pop("checksum") == all_mapped.pop("checksum"), "the two holdings read other bytes"

    print(f"\nindex {args.shards} shards: serial {serial_s:.2f} s, --workers 2 {parallel_s:.2f} s "
          f"({serial_s / parallel_s:.2f}x), same bytes; check all current (--workers 2): {current_s:.2f} s")
    print(f"\nShardSet, {args.reads} random samples read (image bytes + labels):")
    header = f"{'shards':>7} {'holding':<11} {'open s':>7} {'read s':>7} {'peak RSS MiB':>13} {'growth MiB':>11} {'idx maps':>9} {'fds':>6}"
    print(header)
    for r in rows:
        print(f"{r['shards']:>7} {r['holding']:<11} {r['open_s']:>7.3f} {r['read_s']:>7.3f} {r['peak_rss_mib']:>13.1f} "
              f"{r['rss_growth_mib']:>11.1f} {r['index_maps']:>9} {r['open_fds']:>6}")
    out = Path(__file__).parent / "results" / f"{datetime.date.today()}_shard_index_cpu.json"
    out.write_text(json.dumps({
        "command": "python benchmarks/shard_index.py" + (f" --shards {args.shards}" if args.shards != 4000 else ""),
        "machine": platform.machine(), "cpus": os.cpu_count(), "load_average_1min_at_end": round(os.getloadavg()[0], 1),
        "note": "2 CPU cores shared with other jobs (see the load average); holding: on_demand = this ShardSet "
                "(at most 64 maps and 64 open shards; each map holds a descriptor too), all_mapped = the previous "
                "ShardSet (every index mapped at open); open_fds counts every descriptor of the process",
        "shards": args.shards, "samples_per_shard": PER_SHARD, "image_px": 16, "written_s": round(written_s, 2),
        "index_serial_s": round(serial_s, 3), "index_workers2_s": round(parallel_s, 3),
        "index_same_bytes": True, "index_check_current_workers2_s": round(current_s, 3),
        "reads": args.reads, "rows": rows,
    }, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(Path(__file__).parent.parent)}", file=sys.stderr)


if __name__ == "__main__":
    main()
