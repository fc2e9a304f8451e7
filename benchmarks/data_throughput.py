"""Data throughput: decoded uint8 batches per second from shards and from an image folder.

Training from data larger than memory needs each batch decoded as it is drawn, so the
loader's decode rate caps the training speed. This measures it, in images per second
into uint8 (256, 3, S, S) batches, with DataLoader workers on every core:

  shards   / torchcodec   ssl_zoo's path: ``ShardDataset`` reads the batch's JPEGs from
                          indexed shards (already S x S) and decodes them with TorchCodec
  shards   / pil          the same bytes, decoded one by one with PIL
  folder   / torchcodec   image files read whole, decoded by ``decode_images`` (TorchCodec),
                          shorter side resized to S and centre-cropped
  folder   / pil          lightly's path: per image PIL open + convert("RGB"), torchvision's
                          Resize(S) + CenterCrop(S), PILToTensor; batches by default collate
  shards   / nvjpeg       on a GPU only: ``decode_images(..., device="cuda")``, one batched
                          nvJPEG call per batch, bytes read beforehand (decode alone)

at S = 64 and 224 px. The data is made here, in a temporary folder: Flickr8k's 64 px test
images (``../shared/data``) upscaled to 400 x 300 with a little noise, saved as JPEG q90
(~31 KB each; ImageNet's photos are of that size but average ~110 KB, so they decode
slower), in 10 class folders; the shards are
made from that folder by ``ssl_zoo.data.shards.convert`` at each S (its own rate is reported
too). Files are in the page cache: this measures decoding, not the disk. Each loader runs
one warm-up epoch (worker start-up, first reads), then timed epochs, 3 s at least.

    python benchmarks/data_throughput.py --quick    # 2 CPU cores: about 70 s
    python benchmarks/data_throughput.py            # 10,240 images

Results: a table on stdout, and ``benchmarks/results/<date>_data_<device>.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2 as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ssl_zoo.data.shards.convert import convert
from ssl_zoo.data.datamodule import EpochBatchSampler
from ssl_zoo.data.training import already_batched as _already_batched
from ssl_zoo.data.decode import decode_images
from ssl_zoo.data.shards import ShardDataset, ShardSet, expand_shard_paths
from ssl_zoo.environment import versions

RESULTS = Path(__file__).parent / "results"
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
BATCH = 256
SIZES = (64, 224)
SOURCE_SIZE = (400, 300)  # (width, height) of the folder's images
MIN_SECONDS = 3.0  # timed per loader


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def make_folder(root: Path, count: int) -> float:
    """``count`` JPEGs in ``root/<class>/``: Flickr8k test images upscaled, with noise.
    Returns their mean file size in KB."""
    with np.load(SHARED / "flickr8k_64.npz", allow_pickle=False) as d:
        header, body, off = d["jpeg_header"].tobytes(), d["test_body"], d["test_offsets"]
        sources = [header + body[off[i] : off[i + 1]].tobytes() for i in range(len(off) - 1)]
    noise = np.random.default_rng(0)
    total = 0
    for i in range(count):
        small = Image.open(io.BytesIO(sources[i % len(sources)])).convert("RGB")
        large = np.asarray(small.resize(SOURCE_SIZE, Image.Resampling.BICUBIC), dtype=np.int16)
        large = np.clip(large + noise.normal(0, 6, large.shape), 0, 255).astype(np.uint8)
        path = root / f"class_{i % 10}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(large).save(path, quality=90)
        total += path.stat().st_size
    return total / count / 1024


class FolderBytes(Dataset):
    """Image files read whole and decoded a batch at a time by ``decode_images`` (TorchCodec)."""

    def __init__(self, files: list[Path], size: int):
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitems__(self, items: list[int]) -> dict[str, torch.Tensor]:
        images, _ = decode_images([self.files[i].read_bytes() for i in items], self.size)
        return {"image": images}


class ShardPIL(Dataset):
    """Shard bytes decoded one by one with PIL (the shards are already size x size)."""

    def __init__(self, shards: ShardSet):
        self.shards = shards
        self.to_tensor = T.PILToTensor()

    def __len__(self) -> int:
        return len(self.shards)

    def __getitems__(self, items: list[int]) -> dict[str, torch.Tensor]:
        images = [
            self.to_tensor(Image.open(io.BytesIO(self.shards.read_image_bytes(i))).convert("RGB")) for i in items
        ]
        return {"image": torch.stack(images)}


class FolderPIL(Dataset):
    """lightly's path: one image per ``__getitem__``, PIL decode and torchvision resize/crop."""

    def __init__(self, files: list[Path], size: int):
        self.files = files
        self.transform = T.Compose([T.Resize(size, antialias=True), T.CenterCrop(size), T.PILToTensor()])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.files[index]) as img:
            return self.transform(img.convert("RGB"))


def timed_epochs(
    dataset: Dataset, per_item: bool, workers: int, min_seconds: float = MIN_SECONDS
) -> tuple[float, tuple[int, ...]]:
    """Images/s through a DataLoader with ``workers`` workers: one warm-up epoch, then
    epochs until ``min_seconds`` have been timed (fast loaders finish an epoch in 0.1 s)."""
    if per_item:  # default collate stacks single images, as lightly's loaders do
        loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True, num_workers=workers,
                            persistent_workers=True, generator=torch.Generator().manual_seed(0))
    else:
        sampler = EpochBatchSampler(len(dataset), BATCH, seed=0)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=_already_batched,
                            num_workers=workers, persistent_workers=True)
    shape: tuple[int, ...] = ()
    for _ in loader:  # warm-up: worker start-up, first reads
        pass
    start, images = time.perf_counter(), 0
    while time.perf_counter() - start < min_seconds:
        for batch in loader:
            image = batch if per_item else batch["image"]
            images, shape = images + image.shape[0], tuple(image.shape)
    return images / (time.perf_counter() - start), shape


def nvjpeg_rate(shards: ShardSet, size: int, device: str = "cuda") -> float:
    """Images/s of ``decode_images(..., device=device)`` on batches read beforehand.

    On "cuda" that is one batched nvJPEG call per batch. Never run on a GPU yet (the
    machine this benchmark was developed on has none); ``benchmarks/gpu_check.py`` runs the
    same code with ``device="cpu"`` (TorchCodec in this process) so that the path is tested.
    """
    encoded = [shards.read_image_bytes(i) for i in range(len(shards))]
    batches = [encoded[i : i + BATCH] for i in range(0, len(encoded) - BATCH + 1, BATCH)]
    on_gpu = torch.device(device).type == "cuda"
    decode_images(batches[0], size, device=device)  # warm-up: nvJPEG handles, kernels
    if on_gpu:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        decode_images(batch, size, device=device)
    if on_gpu:
        torch.cuda.synchronize()
    return len(batches) * BATCH / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,048 images (about 70 s on 2 cores)")
    parser.add_argument("--images", type=int, default=None, help="images to make (default 10,240; 2,048 with --quick)")
    parser.add_argument("--out", type=Path, default=None, help="result file (default: results/<date>_data_<device>.json)")
    args = parser.parse_args(argv)
    if not (SHARED / "flickr8k_64.npz").is_file():
        sys.exit(f"{SHARED / 'flickr8k_64.npz'} not found: the benchmark makes its images from the shared data folder.")
    count = args.images or (2048 if args.quick else 10_240)
    if count < 2 * BATCH:
        sys.exit(f"--images {count}: give at least {2 * BATCH} (two batches of {BATCH}).")
    cores = cpu_cores()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    conversions = {}
    with tempfile.TemporaryDirectory(prefix="ssl_zoo_data_bench_") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        file_kb = make_folder(tmp / "folder", count)
        print(f"made {count} JPEGs of {SOURCE_SIZE[0]}x{SOURCE_SIZE[1]} ({file_kb:.1f} KB each) in "
              f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
        files = sorted((tmp / "folder").rglob("*.jpg"))
        for size in SIZES:
            summary = convert("folder", tmp / "folder", tmp / f"shards_{size}", size, shard_size=1000,
                              workers=cores, progress=False)
            shard_kb = sum(p.stat().st_size for p in (tmp / f"shards_{size}").glob("*.tar")) / count / 1024
            conversions[size] = {"images_per_s": count / summary.seconds, "shard_kb_per_image": shard_kb}
            print(f"converted at {size} px: {count / summary.seconds:.0f} images/s, "
                  f"{shard_kb:.1f} KB per image in the shards", file=sys.stderr)
            shards = ShardSet(expand_shard_paths(tmp / f"shards_{size}"))
            cases = [
                ("shards", "torchcodec", ShardDataset(shards, size), False),
                ("shards", "pil", ShardPIL(shards), False),
                ("folder", "torchcodec", FolderBytes(files, size), False),
                ("folder", "pil (lightly)", FolderPIL(files, size), True),
            ]
            for source, decoder, dataset, per_item in cases:
                rate, shape = timed_epochs(dataset, per_item, cores)
                assert shape == (BATCH, 3, size, size), shape
                rows.append({"source": source, "decoder": decoder, "size": size, "images_per_s": rate,
                             "images_per_s_per_core": rate / cores, "workers": cores})
                print(f"  {source:<7} {decoder:<14} {size:>4} px  {rate:8.0f} images/s", file=sys.stderr)
            if device == "cuda":
                rate = nvjpeg_rate(shards, size)
                rows.append({"source": "shards", "decoder": "nvjpeg (cuda)", "size": size, "images_per_s": rate,
                             "images_per_s_per_core": None, "workers": 0})
    results = {
        "device": device,
        "date": date.today().isoformat(),
        "command": " ".join(["python benchmarks/data_throughput.py", *(argv if argv is not None else sys.argv[1:])]),
        "versions": versions(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_cores": cores,
        "images": count,
        "batch": BATCH,
        "source_image": {"width": SOURCE_SIZE[0], "height": SOURCE_SIZE[1], "jpeg_quality": 90, "mean_kb": file_kb},
        "conversion": conversions,
        "rows": rows,
    }
    out = args.out or RESULTS / f"{results['date']}_data_{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nwritten to {out}")
    return results


def print_table(results: dict) -> None:
    print(f"\nDecoded uint8 batches of {results['batch']} on {results['device']}, {results['cpu_cores']} DataLoader "
          f"workers ({results['images']} images; folder: {results['source_image']['width']}x"
          f"{results['source_image']['height']} JPEGs, {results['source_image']['mean_kb']:.0f} KB):")
    print("| source | decoder | size | images/s | images/s per core |")
    print("|---|---|---|---|---|")
    for row in results["rows"]:
        per_core = f"{row['images_per_s_per_core']:,.0f}" if row["images_per_s_per_core"] is not None else "(GPU)"
        print(f"| {row['source']} | {row['decoder']} | {row['size']} px | {row['images_per_s']:,.0f} | {per_core} |")
    for size, conversion in results["conversion"].items():
        print(f"conversion to {size} px shards: {conversion['images_per_s']:,.0f} images/s on "
              f"{results['cpu_cores']} workers, {conversion['shard_kb_per_image']:.1f} KB per image")


if __name__ == "__main__":
    main()
