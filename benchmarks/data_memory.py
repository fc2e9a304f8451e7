"""Host memory of training from shards does not grow with the number of images.

Writes two sets of 64 px shards, N and 10 N samples (20k and 200k by default), trains the
same SimCLR recipe for the same number of steps on each in a fresh process, and compares
the processes' peak RSS (DataLoader workers included). The in-memory path's cost is given
beside it: the decoded uint8 images it would hold (N x 3 x 64 x 64 bytes, once per process).

    python benchmarks/data_memory.py              # 20k vs 200k, ~10 minutes on 2 cores
    python benchmarks/data_memory.py --small 2000 --steps 20   # a quick look

Prints a table and writes benchmarks/results/<date>_data_memory_<device>.json.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ssl_zoo.data.shards.convert import Sample, write_shards

CHILD = """
import resource, sys, torch
torch.set_num_threads(1)
from ssl_zoo.recipe import parse_recipe
from ssl_zoo.training.train import fit
root, steps, runs = sys.argv[1], sys.argv[2], sys.argv[3]
recipe = parse_recipe(["--recipe", "simclr_shapes", "--data.name", "shards", "--data.root", root,
    "--data.image_size", "64", "--augment.size", "64", "--data.batch_size", "128", "--data.num_workers", "1",
    "--data.knn_bank_size", "1000", "--data.val_size", "500", "--trainer.max_steps", steps,
    "--trainer.val_every_n_steps", steps, "--trainer.accelerator", "cpu", "--trainer.output_dir", runs])
fit(recipe, enable_progress_bar=False)
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"PEAK_RSS_KIB {own} {workers}")
"""


def make_shards(out: Path, count: int) -> None:
    """count labelled 64 px JPEGs (a few distinct images repeated: memory, not learning, is measured)."""
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(64):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
        encoded.append(buffer.getvalue())
    write_shards((Sample(encoded[i % 64], "jpg", label=i % 10) for i in range(count)), out, 10_000)


def peak_rss(root: Path, steps: int, runs: Path) -> tuple[float, float]:
    """(training process, largest worker) peak RSS in MiB."""
    result = subprocess.run([sys.executable, "-c", CHILD, str(root), str(steps), str(runs)],
                            capture_output=True, text=True, check=True)
    line = next(line for line in result.stdout.splitlines() if line.startswith("PEAK_RSS_KIB"))
    own, workers = (int(value) / 1024 for value in line.split()[1:])
    return own, workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=20_000, help="images in the small set (the large has 10x)")
    parser.add_argument("--steps", type=int, default=40, help="training steps on each")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in (args.small, 10 * args.small):
            make_shards(Path(tmp) / str(count), count)
            own, workers = peak_rss(Path(tmp) / str(count), args.steps, Path(tmp) / "runs")
            rows.append({"images": count, "peak_rss_mib": round(own, 1), "worker_peak_rss_mib": round(workers, 1),
                         "in_memory_uint8_mib": round(count * 3 * 64 * 64 / 2**20, 1)})
    ratio = rows[1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    print(f"Training from 64 px shards, SimCLR ResNet-18, batch 128, {args.steps} steps, 1 loader worker, CPU:")
    print("| images | peak RSS, training process (MiB) | peak RSS, loader worker (MiB) | in-memory path's decoded images alone (MiB) |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['images']:,} | {row['peak_rss_mib']:,.0f} | {row['worker_peak_rss_mib']:,.0f} | {row['in_memory_uint8_mib']:,.0f} |")
    print(f"peak RSS ratio, {rows[1]['images']:,} / {rows[0]['images']:,} images: {ratio:.3f} (target: within 10 %)")
    out = Path(__file__).parent / "results" / f"{datetime.date.today()}_data_memory_cpu.json"
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "steps": args.steps,
                               "rows": rows, "ratio": round(ratio, 3)}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
