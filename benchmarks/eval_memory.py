"""Evaluation in bounded memory: `eval` of one checkpoint on shards of 20,000 and 200,000 images.

Writes labelled shards of random 32 px JPEGs (10 classes; a test split a tenth the size of
the training split) in a temporary folder, trains a checkpoint for one step (the ConvNet of
the shapes recipes: speed and memory do not depend on what it learnt), then runs

    python -m ssl_zoo eval --ckpt CKPT --data shards --root TRAIN ... --no-cache --num-workers 1

in a fresh process per row, with the full splits, and polls the process's memory from
/proc every 50 ms: its peak resident set, split into anonymous memory (what the process
allocated: it must not grow with the images) and file-backed pages (the memory-mapped
feature file the page cache keeps resident, and the libraries), and its workers' peak.

Two rows per size:

- ``--in-memory-features-mib 0``: linear fitted in mini-batches from the memory-mapped
  features, as ImageNet-1k's features (1.28 M x 2048) are on any machine;
- the default: L-BFGS in memory where the features fit (a quarter of the available host
  memory on the CPU), so its memory grows with the features, by design.

The ratio column is each row's peak against the same mode at 20,000 images, measured in
the same run (target for the bounded mode: within 10 %).

    python benchmarks/eval_memory.py                       # ~15 minutes on 2 cores
    python benchmarks/eval_memory.py --sizes 2000 20000    # a quicker look

Prints a table and writes benchmarks/results/<date>_eval_memory_cpu.json. Linux only.
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
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ssl_zoo.data.shards.convert import Sample, write_shards
from ssl_zoo.recipe import parse_recipe
from ssl_zoo.training.train import fit


def write_labelled_shards(out: Path, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)

    def samples():
        for i in range(count):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
            yield Sample(buffer.getvalue(), "jpg", label=i % 10)

    write_shards(samples(), out, 10_000)
    (out / "classes.txt").write_text("\n".join(f"class {c}" for c in range(10)) + "\n")


def checkpoint(folder: Path) -> Path:
    """A convnet4 SimCLR checkpoint after one step on 512 shapes."""
    recipe = parse_recipe([
        "--recipe", "simclr_shapes", "--data.num_images", "512", "--data.batch_size", "64", "--data.knn_bank_size", "256",
        "--data.val_size", "128", "--trainer.max_steps", "1", "--trainer.accelerator", "cpu",
        "--trainer.output_dir", str(folder / "runs"),
    ])
    return fit(recipe, enable_progress_bar=False).checkpoint


def _status(pid: int) -> dict[str, int]:
    """RssAnon, RssFile and VmRSS of a process, in KiB (empty once it has ended)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return {name: int(fields[name].split()[0]) for name in ("RssAnon", "RssFile", "VmRSS") if name in fields}


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def run_eval(ckpt: Path, root: Path, out: Path, in_memory_mib: int | None) -> dict:
    command = [sys.executable, "-m", "ssl_zoo", "eval", "--ckpt", str(ckpt), "--data", "shards",
               "--root", str(root / "train"), "--val-root", str(root / "val"), "--no-cache", "--num-workers", "1",
               "--out", str(out)]
    if in_memory_mib is not None:
        command += ["--in-memory-features-mib", str(in_memory_mib)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    workers = 0
    while process.poll() is None:
        for name, value in _status(process.pid).items():
            peak[name] = max(peak[name], value)
        workers = max(workers, sum(_status(child).get("VmRSS", 0) for child in _children(process.pid)))
        time.sleep(0.05)
    output = process.stdout.read()
    if process.returncode != 0:
        raise RuntimeError(f"eval failed ({process.returncode}):\n{output}")
    result = json.loads(out.read_text())
    seconds = result["seconds"]
    n_train, n_test = result["data"]["num_train"], result["data"]["num_test"]
    return {
        "train_images": n_train, "test_images": n_test, "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_mib": round(peak["VmRSS"] / 1024, 1), "peak_anon_mib": round(peak["RssAnon"] / 1024, 1),
        "peak_file_mib": round(peak["RssFile"] / 1024, 1), "workers_peak_rss_mib": round(workers / 1024, 1),
        "features_images_per_s": round((n_train + n_test) / seconds["features"], 1),
        "knn_queries_per_s": round(n_test / seconds["knn"], 1),
        "linear_train_images_per_s": round(n_train / seconds["linear"], 1),
        "linear_fit": result["linear"]["fit"],
        "linear_top1": result["metrics"]["linear_top1"], "knn_top1": result["metrics"]["knn_top1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[20_000, 200_000], help="training images (small, large)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = checkpoint(tmp)
        for size in args.sizes:
            root = tmp / f"shards_{size}"
            write_labelled_shards(root / "train", size, seed=0)
            write_labelled_shards(root / "val", size // 10, seed=1)
            for mode, mib in (("mini-batches (--in-memory-features-mib 0)", 0), ("default", None)):
                row = {"mode": mode, **run_eval(ckpt, root, tmp / f"result_{size}_{mib}.json", mib)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    for row in rows:
        base = next(r for r in rows if r["mode"] == row["mode"])
        row["peak_rss_ratio_vs_smallest"] = round(row["peak_rss_mib"] / base["peak_rss_mib"], 3)
        row["peak_anon_ratio_vs_smallest"] = round(row["peak_anon_mib"] / base["peak_anon_mib"], 3)

    header = ["train images", "mode", "linear fit", "peak RSS MiB", "ratio", "anon MiB", "ratio", "file MiB",
              "features img/s", "kNN queries/s", "linear img/s"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        print(f"| {r['train_images']:,} | {r['mode']} | {r['linear_fit']} | {r['peak_rss_mib']:.0f} | "
              f"{r['peak_rss_ratio_vs_smallest']:.2f} | {r['peak_anon_mib']:.0f} | {r['peak_anon_ratio_vs_smallest']:.2f} | "
              f"{r['peak_file_mib']:.0f} | {r['features_images_per_s']:.0f} | {r['knn_queries_per_s']:.0f} | "
              f"{r['linear_train_images_per_s']:.0f} |")
    out = Path(__file__).parent / "results" / f"{datetime.date.today()}_eval_memory_cpu.json"
    out.write_text(json.dumps({
        "command": "python benchmarks/eval_memory.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {out.relative_to(Path(__file__).parent.parent)}")


if __name__ == "__main__":
    main()
