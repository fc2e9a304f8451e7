"""Throughput of the training step and of the view pipeline: ssl_zoo against lightly and Kornia.

For each method and backbone, the same model, loss and optimiser run three ways:

  model    the model-only step: views made once and kept on the device, a plain PyTorch
           loop (forward, loss, backward, optimiser step, EMA). The limit.
  full     ssl_zoo's step as ``fit`` runs it, Lightning, callbacks and progress bar included:
           uint8 batch -> views on the device -> loss -> backward -> optimiser (+ EMA for
           BYOL, text tower for CLIP).
  lightly  the model-only loop fed by lightly's CPU transforms (torchvision's crop for
           CLIP) through a DataLoader with all cores.

and the view pipeline alone, pairs of views per second from a uint8 batch: ssl_zoo's
``ViewAugment`` on the device, lightly's ``SimCLRTransform`` in a DataLoader with all cores,
and a plain Kornia ``AugmentationSequential`` on the device, all three drawing from the same
augmentation distribution (SimCLR's CIFAR-10 recipe).

    python benchmarks/throughput.py                        # on a GPU: every row (minutes)
    python benchmarks/throughput.py --device cpu --quick   # 2 CPU cores: < 2 minutes

On the CPU the rows use a small batch and the ImageNet-stem ResNet-18 (the CIFAR stem is
17x slower there): they show the machinery and the overheads, not GPU figures. The results
go to ``benchmarks/results/<date>_<device>.json`` and a table to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import kornia.augmentation as K
import pytorch_lightning as pl
import torch
import torchvision.transforms.v2 as T
from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform, SimCLRTransform
from lightly.transforms.multi_view_transform import MultiViewTransform
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ssl_zoo.augment import AugmentConfig, ViewAugment
from ssl_zoo.data.datamodule import ImageDataModule
from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.environment import versions
from ssl_zoo.methods import SSLMethod, build_method, method_class
from ssl_zoo.training.monitor import StepTimer
from ssl_zoo.recipe import Recipe, parse_recipe
from ssl_zoo.text import tokenize_captions
from ssl_zoo.training.train import fit

RESULTS = Path(__file__).parent / "results"
# Each method's recipe family: (recipe for the 32 px CIFAR-stem rows, recipe for 96 px ResNet-50 rows).
BASE_RECIPES = {
    "simclr": ("simclr_resnet18_cifar10", "simclr_resnet50"),
    "byol": ("byol_resnet18_cifar10", "byol_resnet50"),
    "clip": ("clip_resnet18_flickr8k", "clip_rn50"),
}
# The view-pipeline comparison uses SimCLR's CIFAR-10 augmentation.
VIEWS_CONFIG = AugmentConfig(
    size=32, crop_scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), blur_p=(0.0, 0.0),
    mean=(0.4913, 0.4821, 0.4465), std=(0.2470, 0.2435, 0.2616),
)


@dataclass
class Case:
    method: str
    backbone: str  # a name from ssl_zoo.backbones.IMAGE_BACKBONES
    size: int  # side of the views, pixels
    batch: int  # pairs (images, with their views) per step
    base_recipe: str


@dataclass
class Settings:
    device: torch.device
    warmup: int  # steps (or batches) before the clock starts
    steps: int  # timed steps
    view_batch: int
    view_rounds: int
    cores: int  # CPU cores: the loaders' workers (and torch's threads on the CPU)


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


# ----------------------------------------------------------------------------------------
# The same augmentation distribution, three implementations


def _lightly_normalize(config: AugmentConfig) -> dict[str, list[float]]:
    return {"mean": list(config.mean), "std": list(config.std)}


def lightly_transform(config: AugmentConfig, num_views: int) -> MultiViewTransform:
    """lightly's CPU transform drawing views from the same distribution as ``config``.

    SimCLR-style configs (same blur for both views, no solarize) give ``SimCLRTransform``,
    BYOL-style ones ``BYOLTransform``, crop-only ones (CLIP) torchvision's crop and flip.
    """
    if config.jitter_p == 0 and config.grayscale_p == 0 and not any(config.blur_p[:num_views]):
        view = T.Compose([
            T.RandomResizedCrop(config.size, scale=config.crop_scale, ratio=config.crop_ratio, antialias=True),
            T.RandomHorizontalFlip(config.flip_p),
            T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(config.mean, config.std),
        ])
        return MultiViewTransform([view] * num_views)
    if not all(math.isclose(a, b) for a, b in zip(config.crop_ratio, (3 / 4, 4 / 3))) or config.crop_scale[1] != 1.0:
        raise ValueError("lightly's transforms fix the crop ratio to (3/4, 4/3) and the largest crop scale to 1")
    brightness, contrast, saturation, hue = config.jitter
    common = dict(
        input_size=config.size, cj_prob=config.jitter_p, cj_strength=1.0, cj_bright=brightness,
        cj_contrast=contrast, cj_sat=saturation, cj_hue=hue, min_scale=config.crop_scale[0],
        random_gray_scale=config.grayscale_p, sigmas=config.blur_sigma, hf_prob=config.flip_p,
        normalize=_lightly_normalize(config),
    )
    symmetric = len(set(config.blur_p[:num_views])) == 1 and not any(config.solarize_p[:num_views])
    if symmetric:
        return SimCLRTransform(gaussian_blur=config.blur_p[0], **common)
    if num_views != 2:
        raise ValueError("per-view blur or solarize needs two views (BYOL)")
    return BYOLTransform(
        BYOLView1Transform(gaussian_blur=config.blur_p[0], solarization_prob=config.solarize_p[0], **common),
        BYOLView2Transform(gaussian_blur=config.blur_p[1], solarization_prob=config.solarize_p[1], **common),
    )


def kornia_pipeline(config: AugmentConfig) -> K.AugmentationSequential:
    """A plain Kornia ``AugmentationSequential`` for one view of a symmetric config."""
    if config.blur_p[0] != config.blur_p[1] or any(config.solarize_p):
        raise ValueError("the plain Kornia pipeline is for symmetric configs without solarize")
    ops: list[torch.nn.Module] = [
        K.RandomResizedCrop((config.size, config.size), scale=config.crop_scale, ratio=config.crop_ratio),
        K.RandomHorizontalFlip(p=config.flip_p),
        K.ColorJitter(*config.jitter, p=config.jitter_p),
        K.RandomGrayscale(p=config.grayscale_p),
    ]
    if config.blur_p[0] > 0:
        ops.append(K.RandomGaussianBlur(config.blur_kernel_size, config.blur_sigma, p=config.blur_p[0]))
    ops.append(K.Normalize(torch.tensor(config.mean), torch.tensor(config.std)))
    return K.AugmentationSequential(*ops)


class PILViews(Dataset):
    """Images decoded once to PIL (as a lightly user holds them); views made per item."""

    def __init__(self, images: ImageSet, transform: Callable, tokens: Tensor | None = None) -> None:
        self.pictures = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images.images]
        self.labels = images.labels
        self.tokens = tokens  # (N, C, L): the first caption of each image
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pictures)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = {"views": torch.stack(self.transform(self.pictures[index]))}  # (V, 3, S, S)
        if self.labels is not None:
            item["label"] = self.labels[index]
        if self.tokens is not None:
            item["tokens"] = self.tokens[index, 0]
        return item


PREFETCH = 4  # batches each loader worker prepares ahead


def lightly_loader(dataset: PILViews, batch: int, settings: Settings) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=settings.cores,
        persistent_workers=True, pin_memory=settings.device.type == "cuda", prefetch_factor=PREFETCH,
    )


def queued_batches(settings: Settings) -> int:
    """Batches a loader can hold ready before it is timed: skipped, so that the clock
    measures what the workers sustain, not a full queue."""
    return settings.cores * PREFETCH + 2


def to_device(item: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    batch = {key: value.to(device, non_blocking=True) for key, value in item.items()}
    batch["views"] = batch["views"].transpose(0, 1)  # (B, V, ...) -> (V, B, 3, S, S)
    return batch


# ----------------------------------------------------------------------------------------
# The view pipeline alone


def _median_rate(run: Callable[[], object], items_per_call: int, settings: Settings, calls_per_round: int = 3) -> float:
    """Items per second: the median over rounds of a few calls, after warm-up calls."""
    for _ in range(2):
        run()
    rates = []
    for _ in range(settings.view_rounds):
        synchronize(settings.device)
        started = time.perf_counter()
        for _ in range(calls_per_round):
            run()
        synchronize(settings.device)
        rates.append(calls_per_round * items_per_call / (time.perf_counter() - started))
    return statistics.median(rates)


def _loader_rate(loader: DataLoader, device: torch.device, skip: int, batches: int) -> float:
    """Pairs per second a loader sustains, handed to the device, after ``skip`` batches."""
    iterator = iter(loader)
    for _ in range(skip):
        to_device(next(iterator), device)
    synchronize(device)
    started, pairs = time.perf_counter(), 0
    for _ in range(batches):
        pairs += to_device(next(iterator), device)["views"].shape[1]
    synchronize(device)
    return pairs / (time.perf_counter() - started)


def measure_views(images: ImageSet, settings: Settings, config: AugmentConfig = VIEWS_CONFIG) -> dict[str, float]:
    """Pairs of views per second from a uint8 batch: ssl_zoo, lightly (all cores), Kornia."""
    device, batch = settings.device, settings.view_batch
    uint8 = images.images[:batch].to(device)

    augment = ViewAugment(config, num_views=2, seed=0).to(device)
    ssl_zoo_rate = _median_rate(lambda: augment(uint8), batch, settings)

    pipeline = kornia_pipeline(config).to(device)
    kornia_rate = _median_rate(lambda: [pipeline(uint8.float() / 255) for _ in range(2)], batch, settings)

    dataset = PILViews(images, lightly_transform(config, num_views=2))
    timed, skip = settings.view_rounds * 3, queued_batches(settings)
    if len(dataset) < batch * (timed + skip):
        raise ValueError(f"the view benchmark needs {batch * (timed + skip)} images, got {len(dataset)}")
    lightly_rate = _loader_rate(lightly_loader(dataset, batch, settings), device, skip=skip, batches=timed)
    return {
        "ssl_zoo": ssl_zoo_rate, "lightly": lightly_rate, "kornia": kornia_rate,
        "ratio_over_lightly": ssl_zoo_rate / lightly_rate, "ratio_over_kornia": ssl_zoo_rate / kornia_rate,
        "size": config.size, "batch": batch, "cpu_cores": settings.cores, "torch_threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------------------
# Training steps


def case_recipe(case: Case, settings: Settings, output_dir: str) -> Recipe:
    """The method's recipe at the case's backbone, size and batch, on shapes (no download)."""
    on_gpu = settings.device.type == "cuda"
    return parse_recipe([
        "--recipe", case.base_recipe, "--backbone", case.backbone, "--augment.size", str(case.size),
        "--data.name", "shapes", "--data.image_size", str(case.size), "--data.batch_size", str(case.batch),
        # One epoch holds every step (the lightly loop's longer warm-up included): the clock
        # never sees an epoch's end (validation, checkpoint).
        "--data.num_images", str(case.batch * (max(settings.warmup, queued_batches(settings)) + settings.steps + 2)),
        "--data.knn_bank_size", "256", "--data.val_size", "256", "--data.num_workers", "0",
        "--trainer.max_steps", str(settings.warmup + settings.steps), "--trainer.log_every_n_steps", "50",
        "--trainer.accelerator", "gpu" if on_gpu else "cpu", "--trainer.devices", "1",
        "--trainer.precision", "bf16-mixed" if on_gpu else "32-true", "--trainer.output_dir", output_dir,
    ])


def _fresh_model(recipe: Recipe, num_classes: int, device: torch.device) -> tuple[SSLMethod, torch.optim.Optimizer]:
    pl.seed_everything(recipe.trainer.seed, verbose=False)
    model = build_method(recipe, num_classes=num_classes).to(device)
    optimizer = model.configure_optimizers()[0][0]
    return model, optimizer


def _plain_steps(model: SSLMethod, optimizer, next_batch: Callable[[], dict], settings: Settings, bf16: bool) -> float:
    """Steps per second of a plain PyTorch loop: forward, loss, backward, optimiser step."""
    device = settings.device

    def step() -> None:
        batch = next_batch()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model.training_step(batch, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.on_train_batch_end(None, batch, 0)  # CLIP clamps its temperature here

    for _ in range(settings.warmup):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(settings.steps):
        step()
    synchronize(device)
    return settings.steps / (time.perf_counter() - started)


def model_only_rate(recipe: Recipe, datamodule: ImageDataModule, tokens: Tensor | None, settings: Settings) -> float:
    """Pairs per second of the plain loop on one batch of views, made once and reused."""
    device, batch = settings.device, recipe.data.batch_size
    model, optimizer = _fresh_model(recipe, datamodule.num_classes, device)
    train = datamodule.train_set
    fixed = {"label": train.labels[:batch].to(device)}
    with torch.no_grad():
        fixed["views"] = model.augment(train.images[:batch].to(device))  # (V, B, 3, S, S)
    if tokens is not None:
        fixed["tokens"] = tokens[:batch, 0].to(device)
    return batch * _plain_steps(model, optimizer, lambda: fixed, settings, bf16=device.type == "cuda")


def full_rate(recipe: Recipe, datamodule: ImageDataModule, settings: Settings) -> float:
    """Pairs per second of ssl_zoo's ``fit``, timed by a callback between steps."""
    timer = StepTimer(skip=settings.warmup)
    with contextlib.redirect_stdout(io.StringIO()):  # the progress bar runs, off the table
        fit(recipe, enable_progress_bar=True, datamodule=datamodule, callbacks=[timer])
    return recipe.data.batch_size * timer.steps_per_second


def lightly_rate(recipe: Recipe, datamodule: ImageDataModule, tokens: Tensor | None, settings: Settings) -> float:
    """Pairs per second of the plain loop fed by lightly's CPU transforms (all cores)."""
    device = settings.device
    model, optimizer = _fresh_model(recipe, datamodule.num_classes, device)
    dataset = PILViews(datamodule.train_set, lightly_transform(recipe.augment, model.num_views), tokens)
    batches = iter(lightly_loader(dataset, recipe.data.batch_size, settings))
    next_batch = lambda: to_device(next(batches), device)  # noqa: E731
    # Warm up past the loader's full queue, so that the timed steps wait on the workers.
    warm = replace(settings, warmup=max(settings.warmup, queued_batches(settings)))
    return recipe.data.batch_size * _plain_steps(model, optimizer, next_batch, warm, bf16=device.type == "cuda")


def measure_case(case: Case, settings: Settings) -> dict:
    """One row: pairs per second of the model-only, full and lightly-fed steps, and memory."""
    device = settings.device
    with tempfile.TemporaryDirectory() as output_dir:
        recipe = case_recipe(case, settings, output_dir)
        datamodule = ImageDataModule.for_recipe(recipe)
        datamodule.setup("fit")
        tokens = None
        if method_class(recipe).uses_text:
            tokens = tokenize_captions(datamodule.train_set.captions, datamodule.tokenize)
        rates, memory = {}, {}
        for mode, measure in [
            ("model", lambda: model_only_rate(recipe, datamodule, tokens, settings)),
            ("full", lambda: full_rate(recipe, datamodule, settings)),
            ("lightly", lambda: lightly_rate(recipe, datamodule, tokens, settings)),
        ]:
            reset_peak_memory(device)
            rates[mode] = measure()
            memory[mode] = peak_memory_gib(device)
    return {
        "method": case.method, "backbone": case.backbone, "size": case.size, "batch": case.batch,
        "pairs_per_s_model": rates["model"], "pairs_per_s_full": rates["full"], "pairs_per_s_lightly": rates["lightly"],
        "ratio_full_over_model": rates["full"] / rates["model"], "ratio_full_over_lightly": rates["full"] / rates["lightly"],
        "peak_mem_gib": memory["full"], "peak_mem_gib_model": memory["model"], "peak_mem_gib_lightly": memory["lightly"],
    }


# ----------------------------------------------------------------------------------------
# The run


def cases_for(device: torch.device, quick: bool, methods: list[str]) -> list[Case]:
    if device.type == "cuda":
        sizes = [("resnet18_cifar", 32, 512, 0)] + ([] if quick else [("resnet50", 96, 256, 1)])
    else:  # toy sizes: the CPU shows the machinery and its overheads, not GPU speed
        sizes = [("resnet18", 32, 32 if quick else 64, 0)]
    return [Case(m, b, s, n, BASE_RECIPES[m][i]) for b, s, n, i in sizes for m in methods]


def device_label(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def print_table(results: dict) -> None:
    views = results["views"]
    print(f"\nView pipeline on {results['device']} ({views['size']} px, batch {views['batch']}, "
          f"{views['cpu_cores']} CPU cores for lightly's workers), pairs of views / s:")
    print(f"  ssl_zoo {views['ssl_zoo']:9.0f}   lightly {views['lightly']:9.0f}   kornia {views['kornia']:9.0f}   "
          f"ssl_zoo / lightly {views['ratio_over_lightly']:.2f}x   ssl_zoo / kornia {views['ratio_over_kornia']:.2f}x")
    if not results["rows"]:
        return
    print(f"\nTraining step on {results['device']}, pairs / s (CLIP: image-text pairs):")
    header = f"  {'method':7} {'backbone':15} {'size':>4} {'batch':>5} {'model':>8} {'full':>8} {'lightly':>8} {'full/model':>10} {'full/lightly':>12} {'peak GiB':>8} {'lightly GiB':>11}"
    print(header)
    for row in results["rows"]:
        memory = lambda value: f"{value:8.2f}" if value is not None else f"{'-':>8}"  # noqa: E731
        print(
            f"  {row['method']:7} {row['backbone']:15} {row['size']:4d} {row['batch']:5d} "
            f"{row['pairs_per_s_model']:8.0f} {row['pairs_per_s_full']:8.0f} {row['pairs_per_s_lightly']:8.0f} "
            f"{row['ratio_full_over_model']:10.2f} {row['ratio_full_over_lightly']:12.2f} "
            f"{memory(row['peak_mem_gib'])} {memory(row['peak_mem_gib_lightly']):>11}"
        )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds (CPU: < 2 minutes on 2 cores)")
    parser.add_argument("--methods", nargs="+", default=list(BASE_RECIPES), choices=list(BASE_RECIPES))
    parser.add_argument("--views-only", action="store_true", help="measure the view pipeline only")
    parser.add_argument("--out", type=Path, default=None, help="result file (default: benchmarks/results/<date>_<device>.json)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("throughput: --device cuda, but torch sees no GPU here. Use --device cpu.")
    cores = cpu_cores()
    if device.type == "cpu":
        torch.set_num_threads(cores)  # the same cores as lightly's loader workers
    else:
        torch.backends.cudnn.benchmark = True
    quick = args.quick
    settings = Settings(
        device=device, warmup=3 if quick and device.type == "cpu" else 10, steps=8 if quick and device.type == "cpu" else 30,
        view_batch=512, view_rounds=5 if quick else 10, cores=cores,
    )
    warnings.filterwarnings("ignore", message=".*self.log.*")  # the plain loops call training_step without a trainer
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")

    from ssl_zoo.data.shapes import make_shapes

    view_images = make_shapes(
        settings.view_batch * (settings.view_rounds * 3 + queued_batches(settings)), VIEWS_CONFIG.size, seed=0
    )
    results = {
        "device": device_label(device), "date": date.today().isoformat(), "versions": versions(),
        "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "views": measure_views(view_images, settings),
        "rows": [],
    }
    if device.type == "cpu":
        results["note"] = "CPU rows: toy batch and the ImageNet-stem ResNet-18; they show overheads, not GPU speed."
    if not args.views_only:
        for case in cases_for(device, quick, args.methods):
            print(f"[throughput] {case.method} {case.backbone} {case.size}px batch {case.batch}", file=sys.stderr, flush=True)
            results["rows"].append(measure_case(case, settings))

    slug = "cpu" if device.type == "cpu" else device_label(device).lower().replace(" ", "_")
    out = args.out or RESULTS / f"{results['date']}_{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
