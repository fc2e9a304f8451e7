"""Speed as a user feels it, against the peer: kNN top-1 against training wall time,
SimCLR fed by ssl_zoo and by lightly's usual pipeline, on the same CPU cores.

Protocol. One recipe, ``simclr_convnet4_cifar10`` on the CIFAR-10 stand-in
(``../shared/data/cifar10.npz``), gives both arms the same ConvNet, projection head,
NT-Xent loss, SGD with its warm-up and cosine schedule, batch size, seed and initial
weights. Only the path from stored images to views differs:

  ssl_zoo  ``ssl_zoo.training.train.fit`` as a user runs it: uint8 batches indexed from memory, views
           made by the method's ``ViewAugment`` in the training step. Everything ``fit``
           does counts against its clock: TensorBoard logging, the view grids, checkpoints.
  lightly  lightly's usual example: PIL images in a ``Dataset`` whose items are
           ``SimCLRTransform``'s two views, a ``DataLoader`` with one worker per core and
           persistent workers, the same method in a bare ``pl.Trainer`` (no logger, no
           checkpoints, no progress bar). Its views are handed over in the channels-last
           layout ssl_zoo's views have, so the convolutions run the same kernels.

Both arms run through Lightning, so the step itself (forward, loss, backward, optimiser,
scheduler, online probe) is the same code; what ``fit`` adds on top is charged to ssl_zoo.
``SimCLRTransform`` draws from the recipe's distribution: crop scale (min, 1), flip 0.5,
colour jitter with the recipe's strengths and probability, grayscale p, no blur at 32 px,
the recipe's mean and std.

Clock. Each arm trains for ``--minutes`` of training time. The clock starts when training
starts (the lightly arm's worker start-up is on it) and is paused while kNN top-1 is
measured, every ``--every`` seconds and at the end: k=200, T=0.1, the backbone's features of
a bank of training images against test images, as the kNN monitor of ``fit`` scores them,
with the same eval transform for both arms. NOTE: during a pause lightly's workers fill
their prefetch queue (2 batches a worker), which the next steps then get for free; this
favours lightly a little. The learning-rate schedule has the recipe's length (20 epochs)
in both arms, longer than either reaches in minutes: at step k both have the same rate,
and the faster pipeline gets further along the same trajectory.

Threads: ``torch.set_num_threads(cores)`` in the training process of both arms, where
``cores`` is this process's CPU affinity (run it under ``taskset -c 0,1`` to pin 2 cores).
lightly's workers run one thread each (PyTorch's default in DataLoader workers), so on 2
cores they and the training step share the cores, as they do for a lightly user.

    python benchmarks/vs_lightly.py                 # 3 minutes an arm + kNN pauses (~8 min)
    python benchmarks/vs_lightly.py --quick         # smoke run: 20 s an arm, small kNN sets

It prints kNN top-1 against training time for both arms, the ratio (time ssl_zoo takes to
reach lightly's final top-1) / (lightly's whole time), and each arm's training images per
second, and writes ``benchmarks/results/<date>_vs_lightly_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightly.transforms import SimCLRTransform
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ssl_zoo.augment import AugmentConfig
from ssl_zoo.data.datamodule import ImageDataModule
from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.environment import cpu_model, versions
from ssl_zoo.eval.features import image_features
from ssl_zoo.eval.knn import knn_top1
from ssl_zoo.methods import SSLMethod
from ssl_zoo.methods.simclr import SimCLR
from ssl_zoo.recipe import Recipe, parse_recipe
from ssl_zoo.training.train import fit

REPOSITORY = Path(__file__).resolve().parent.parent
RESULTS = REPOSITORY / "benchmarks" / "results"
SHARED_DATA = REPOSITORY.parent / "shared" / "data"
RECIPE = "simclr_convnet4_cifar10"


@dataclass
class Point:
    seconds: float  # training time so far, kNN pauses excluded
    steps: int
    top1: float


# ----------------------------------------------------------------------------------------
# The clock and the kNN checkpoints, the same callback in both arms


class KNNOnTheClock(pl.Callback):
    """Measures kNN top-1 at the start and every ``every`` training seconds, with the clock
    paused, and stops the run once ``budget`` training seconds have passed."""

    def __init__(self, bank: ImageSet, query: ImageSet, budget: float, every: float, label: str) -> None:
        self.bank, self.query = bank, query
        self.budget, self.every, self.label = budget, every, label
        self.points: list[Point] = []
        self.trained = 0.0  # training seconds before the current stretch
        self.resumed = 0.0  # perf_counter() when the current stretch began
        self.next_point = min(every, budget)

    def top1(self, model: SSLMethod) -> float:
        def features(images: ImageSet) -> Tensor:  # (N, D); image_features sets eval mode and restores it
            return image_features(model.backbone, model.eval_transform, images.images, model.device, 512)

        return knn_top1(features(self.bank), self.bank.labels, features(self.query), self.query.labels,
                        num_classes=self.bank.num_classes, k=200, temperature=0.1)

    def _record(self, trainer: pl.Trainer, model: SSLMethod) -> None:
        point = Point(self.trained, trainer.global_step, self.top1(model))
        self.points.append(point)
        print(f"[{self.label}] {point.seconds:6.1f} s  step {point.steps:5d}  kNN top-1 {100 * point.top1:5.2f} %",
              file=sys.stderr, flush=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: SSLMethod) -> None:
        self._record(trainer, pl_module)
        self.resumed = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        seconds = self.trained + time.perf_counter() - self.resumed
        if seconds < self.next_point:
            return
        self.trained = seconds
        self._record(trainer, pl_module)
        if seconds >= self.budget:
            trainer.should_stop = True
        # The next multiple of ``every`` ahead: a slow step that crossed several does not bunch the points.
        self.next_point = min((seconds // self.every + 1) * self.every, self.budget)
        self.resumed = time.perf_counter()


# ----------------------------------------------------------------------------------------
# The two arms


def run_ssl_zoo(recipe: Recipe, datamodule: ImageDataModule, clock: KNNOnTheClock) -> None:
    """``fit``, as a user calls it (progress bar off: it would interleave with the table)."""
    fit(recipe, enable_progress_bar=False, datamodule=datamodule, callbacks=[clock])


def lightly_transform(augment: AugmentConfig) -> SimCLRTransform:
    """lightly's SimCLR views, drawn from the recipe's augmentation distribution."""
    # NOTE: lightly fixes the crop's aspect ratio to (3/4, 4/3) and its largest scale to 1,
    # and blurs both views alike: the recipe must ask for the same.
    if augment.crop_scale[1] != 1.0 or tuple(augment.crop_ratio) != (3 / 4, 4 / 3) or any(augment.solarize_p):
        raise ValueError("SimCLRTransform cannot draw this recipe's views (crop scale up to 1, ratio 3/4-4/3, no solarize)")
    if augment.blur_p[0] != augment.blur_p[1]:
        raise ValueError("SimCLRTransform blurs both views alike; the recipe's blur_p differs between views")
    brightness, contrast, saturation, hue = augment.jitter
    return SimCLRTransform(
        input_size=augment.size, cj_prob=augment.jitter_p, cj_strength=1.0, cj_bright=brightness,
        cj_contrast=contrast, cj_sat=saturation, cj_hue=hue, min_scale=augment.crop_scale[0],
        random_gray_scale=augment.grayscale_p, gaussian_blur=augment.blur_p[0], sigmas=augment.blur_sigma,
        hf_prob=augment.flip_p, normalize={"mean": list(augment.mean), "std": list(augment.std)},
    )


class PILViews(Dataset):
    """Images held as PIL images, as a lightly user holds them; two views made per item."""

    def __init__(self, images: ImageSet, transform: SimCLRTransform) -> None:
        self.pictures = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images.images]
        self.labels = images.labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pictures)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"views": torch.stack(self.transform(self.pictures[index])), "label": self.labels[index]}  # (2, 3, S, S)


class LightlyFedSimCLR(SimCLR):
    """The same SimCLR, trained on views that arrive made (by lightly's transform)."""

    def on_after_batch_transfer(self, batch: dict[str, Tensor], dataloader_idx: int) -> dict[str, Tensor]:
        views = batch["views"]  # (B, V, 3, S, S)
        # (V, B, 3, S, S), laid out channels-last as ViewAugment's views are.
        batch["views"] = views.permute(1, 0, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        return batch


def run_lightly(recipe: Recipe, datamodule: ImageDataModule, clock: KNNOnTheClock, cores: int) -> None:
    pl.seed_everything(recipe.trainer.seed, workers=True, verbose=False)  # as fit seeds: the same initial weights
    model = LightlyFedSimCLR(recipe, num_classes=datamodule.num_classes)
    dataset = PILViews(datamodule.train_set, lightly_transform(recipe.augment))
    loader = DataLoader(dataset, batch_size=recipe.data.batch_size, shuffle=True, drop_last=True,
                        num_workers=cores, persistent_workers=True)
    trainer = pl.Trainer(
        max_epochs=recipe.trainer.max_epochs, accelerator="cpu", devices=1, precision=recipe.trainer.precision,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock],
    )
    trainer.fit(model, train_dataloaders=loader)


# ----------------------------------------------------------------------------------------
# Reading the curves


def time_to_reach(points: list[Point], target: float) -> float | None:
    """Training seconds at which the curve first reaches ``target``, linear between points."""
    if points[0].top1 >= target:
        return points[0].seconds
    for before, after in zip(points, points[1:]):
        if after.top1 >= target:
            return before.seconds + (target - before.top1) / (after.top1 - before.top1) * (after.seconds - before.seconds)
    return None


def images_per_second(points: list[Point], batch: int) -> float:
    return points[-1].steps * batch / points[-1].seconds


def print_table(arms: dict[str, list[Point]], summary: dict) -> None:
    print(f"\nkNN top-1 (k=200, T=0.1) against training time, {summary['cores']} CPU cores:")
    print(f"  {'arm':8} {'seconds':>8} {'steps':>6} {'top-1 %':>8}")
    for name, points in arms.items():
        for point in points:
            print(f"  {name:8} {point.seconds:8.1f} {point.steps:6d} {100 * point.top1:8.2f}")
    for name in arms:
        print(f"  {name}: {summary[name]['images_per_s']:.0f} training images / s, "
              f"{summary[name]['steps']} steps in {summary[name]['seconds']:.1f} s")
    print(f"  training images / s, ssl_zoo / lightly: {summary['images_per_s_ratio']:.2f}x")
    reached = summary["ssl_zoo_seconds_to_lightly_final"]
    target = 100 * summary["lightly_final_top1"]
    if reached is None:
        print(f"  ssl_zoo did not reach lightly's final {target:.2f} % in its {summary['ssl_zoo']['seconds']:.0f} s: not reached")
    else:
        print(f"  ssl_zoo reached lightly's final {target:.2f} % after {reached:.1f} s, lightly after its "
              f"{summary['lightly']['seconds']:.1f} s: ratio {summary['time_ratio']:.2f} ({1 / summary['time_ratio']:.2f}x sooner)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="training minutes for each arm (default 3)")
    parser.add_argument("--every", type=float, default=30.0, help="training seconds between kNN measurements (default 30)")
    parser.add_argument("--bank", type=int, default=5000, help="training images in the kNN bank (default 5000)")
    parser.add_argument("--queries", type=int, default=2000, help="test images the kNN scores (default 2000)")
    parser.add_argument("--data-root", type=Path, default=SHARED_DATA, help="folder of cifar10.npz (default ../shared/data)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 s an arm, every 5 s, 1000 bank / 500 test images")
    parser.add_argument("--out", type=Path, default=None, help="result file (default benchmarks/results/<date>_vs_lightly_cpu[_quick].json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.every, args.bank, args.queries = 20 / 60, 5.0, 1000, 500
    if not (args.data_root / "cifar10.npz").is_file():
        sys.exit(f"vs_lightly: {args.data_root / 'cifar10.npz'} is missing: the benchmark trains on the repository's "
                 "CIFAR-10 stand-in. Put the shared data folder beside the checkout, or pass --data-root DIR.")

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)  # the training process of both arms; lightly's workers: 1 thread each
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")  # ssl_zoo indexes in memory, by design
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*defined a `validation_step` but have no `val_dataloader`.*")  # lightly arm

    with tempfile.TemporaryDirectory() as output_dir:
        recipe = parse_recipe([
            "--recipe", RECIPE, "--data.name", "shared_cifar10", "--data.root", str(args.data_root),
            "--data.knn_bank_size", str(args.bank), "--data.val_size", str(args.queries),
            # No validation inside the budget: the clock's kNN checkpoints are the only evaluation.
            "--trainer.check_val_every_n_epoch", "1000", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.output_dir", output_dir,
        ])
        datamodule = ImageDataModule.for_recipe(recipe)
        datamodule.setup("fit")  # decoded once; both arms train on these images and score on these sets
        arms: dict[str, list[Point]] = {}
        for name in ("ssl_zoo", "lightly"):
            clock = KNNOnTheClock(datamodule.bank_set, datamodule.val_set, 60 * args.minutes, args.every, name)
            if name == "ssl_zoo":
                run_ssl_zoo(recipe, datamodule, clock)
            else:
                run_lightly(recipe, datamodule, clock, cores)
            arms[name] = clock.points

    batch = recipe.data.batch_size
    lightly_final = arms["lightly"][-1]
    reached = time_to_reach(arms["ssl_zoo"], lightly_final.top1)
    summary = {
        "cores": cores, "lightly_final_top1": lightly_final.top1, "ssl_zoo_seconds_to_lightly_final": reached,
        # (ssl_zoo's time to lightly's final top-1) / (lightly's whole time): below 1, ssl_zoo is sooner.
        "time_ratio": reached / lightly_final.seconds if reached is not None else None,
        "images_per_s_ratio": images_per_second(arms["ssl_zoo"], batch) / images_per_second(arms["lightly"], batch),
        **{name: {"images_per_s": images_per_second(points, batch), "steps": points[-1].steps, "seconds": points[-1].seconds}
           for name, points in arms.items()},
    }
    command = "python benchmarks/vs_lightly.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = {
        "date": date.today().isoformat(), "command": command.strip(), "quick": args.quick,
        "recipe": RECIPE, "data": "shared_cifar10 (cifar10.npz, the repository's CIFAR-10 stand-in)", "batch_size": batch,
        "minutes_per_arm": args.minutes, "knn": {"k": 200, "temperature": 0.1, "bank": args.bank, "queries": args.queries},
        "cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "lightly_workers": cores, "versions": versions(),
        "summary": summary,
        "points": {name: [vars(point) for point in points] for name, points in arms.items()},
    }
    out = args.out or RESULTS / f"{results['date']}_vs_lightly_cpu{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(arms, summary)
    print(f"\nwrote {out.relative_to(REPOSITORY) if out.resolve().is_relative_to(REPOSITORY) else out}")
    return results


if __name__ == "__main__":
    main()
