"""Does ssl_zoo keep its promises on the GPU path? One command, one table, < 9 minutes.

    python benchmarks/gpu_check.py                           # one GPU: every section, < 9 min
    python benchmarks/gpu_check.py --only recipes            # rerun one section
    python benchmarks/gpu_check.py --device cpu --quick      # the same checks at toy sizes (CPU)

Nothing is downloaded: every image is generated (ssl_zoo's shapes, written to shards with
``write_shards`` as ``ssl_zoo shards`` writes them: JPEG q95, a label and a caption each).
The table goes to stdout (progress and the runs' own output to stderr), the results to
``benchmarks/results/<date>_<gpu>_gpu_check.json`` (``<date>_cpu_gpu_check.json`` on the
CPU; ``..._gpu_check_<section>.json`` with ``--only``), without machine paths. Each row
has a name, what was measured, the target where ssl_zoo has promised one, and a status:

  PASS / FAIL  measured against the target;
  INFO         no target, or a GPU target measured on the CPU (which proves nothing about it);
  SKIP         not run: its section's time budget was spent (or, for a recipe, the run
               was stopped by it before its timed steps ended).

A check that raises (out of memory, a crash) is a FAIL row with the error, and the other
checks still run. No GPU has run this script yet: the GPU code paths are the ones the CPU
form runs with ``device="cpu"``, and the GPU estimates below are estimates.

Sections, with their time budgets on a GPU (seconds) and what each row means:

  throughput      100  ``benchmarks/throughput.py``'s rows for SimCLR, BYOL and CLIP
                       (ResNet-18, CIFAR stem, 32 px, batch 512; its functions, imported):
                       full step / model-only step (README's targets: >= 0.90 SimCLR,
                       >= 0.85 BYOL and CLIP) and full step / lightly-fed step (>= 3.4x
                       SimCLR). Estimate: 30-40 s a method.
  decode           60  decoding 224 px shards: ``decode_images`` on the device (nvJPEG)
                       against TorchCodec in loader workers on every CPU core (target > 1x:
                       ``data.decode: auto`` picks the device on a GPU), with
                       ``benchmarks/data_throughput.py``'s functions; then SimCLR ResNet-50
                       steps (224 px views of 256 px shards, batch 256) decoding on the
                       device, against the same steps on pre-decoded batches held on the
                       device (target >= 0.90: decoding may cost a tenth of a step, as
                       full/model allows). Estimate: 10 s + 2 x 15 s.
  recipes         140  each ImageNet recipe for 20 steps at its per-GPU batch and image size
                       on generated shards, the lr warm-up shortened to the 5 untimed first
                       steps (so that 20 steps move the loss), the loss read every step:
                       s/step and images/s over steps 6-20, peak
                       GPU memory (INFO); the loss finite and falling, mean of the first 5
                       against the last 5 (PASS/FAIL). Estimate: 10-25 s a recipe, ResNet-50
                       at batch 512 the longest (if it runs out of memory: FAIL, with it).
  hold_on_device   30  the in-memory dataset copied to the GPU when it fits, and streamed
                       from host memory when it does not, forced by faking the free-memory
                       reading at twice the dataset's size (the rule is a quarter of it);
                       where it went, the one line said, steps/s both ways. On the CPU, the
                       streaming decision alone, for a CUDA device (INFO). Estimate: 15 s.
  host_syncs       70  ops that make the host wait for the device in steps 3-10 of ``fit``
                       (``ssl_zoo.host_sync.count_host_syncs``) for SimCLR, BYOL and CLIP
                       with each optimiser, sgd, lars and adamw: target 0, on any device
                       (on a GPU, reads of host tensors are no wait: ``HostSyncCounter``).
                       Estimate: 5-8 s each.
  eval             80  ssl_zoo's evaluator (features, kNN, linear, one epoch of the probe)
                       on 50,000 generated 96 px images streamed from shards (nvJPEG into the
                       memory-mapped feature cache), 40,000 train and 10,000 test, with a
                       random ResNet-50: images/s of each. 96 px, not 224: kNN and the linear fit cost the
                       same at any image size (50,000 x 2048 features), while 50,000 images
                       at 224 px would take 7.5 GB and most of the budget to generate and
                       embed; the recipes' steps give the ResNet-50's speed at 224 px.
                       Estimate: 10-15 s to generate, 40 s to evaluate.

The budgets add up to 480 s. A section starts no new check once its budget is spent (those
rows are SKIP), and each recipe's run gets what is left as ``trainer.max_time``; a check
already running when its section's time runs out finishes, and the 60 s left of the 9
minutes are for that overrun, start-up and the table.

``--quick`` shrinks every size: batch 8, 32 px for every recipe (as
``tests/test_every_recipe.py``), 4 recipe steps, 16-token captions, a 4-layer ConvNet where the backbone is not
what is checked, 2,000 images for the evaluation, one torch thread on the CPU. There every
GPU target is INFO, and so is the "falling" half of the loss check (4 toy steps need not
move it); nothing in that table is a GPU figure. ``tests/test_gpu_check.py`` runs that form.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import io
import json
import math
import os
import re
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image

from ssl_zoo import host_sync
from ssl_zoo.data.datamodule import ImageDataModule
from ssl_zoo.data.decode import decode_images
from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.data.shapes import make_shapes
from ssl_zoo.data.shards import ShardDataset, ShardSet, expand_shard_paths
from ssl_zoo.data.shards.convert import JPEG_QUALITY, Sample, write_shards
from ssl_zoo.data.shards.split import ShardSplit
from ssl_zoo.environment import versions
from ssl_zoo.eval.config import EvalConfig
from ssl_zoo.eval.evaluator import Evaluator
from ssl_zoo.methods import build_method, method_class
from ssl_zoo.training.monitor import StepTimer
from ssl_zoo.recipe import Recipe, parse_recipe
from ssl_zoo.training.train import fit

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"

PASS, FAIL, INFO, SKIP = "PASS", "FAIL", "INFO", "SKIP"
IMAGENET_RECIPES = (
    "simclr_resnet50", "byol_resnet50", "clip_rn50", "simclr_vit_small", "byol_vit_small", "clip_vit_small",
)
# The README's GPU targets for benchmarks/throughput.py: (full / model, full / lightly).
THROUGHPUT_TARGETS = {"simclr": (0.90, 3.4), "byol": (0.85, None), "clip": (0.85, None)}
# Each method's small recipe (ResNet-18 family) for the host-sync counts.
SYNC_RECIPES = {"simclr": "simclr_resnet18_cifar10", "byol": "byol_resnet18_cifar10", "clip": "clip_resnet18_flickr8k"}
OPTIMIZERS = ("sgd", "lars", "adamw")
OVERLAP_TARGET = 0.90
DECODE_SIZE = 224  # px, the decode rates' image size
VAL_IMAGES = 64  # validation shards beside the training shards, for the monitors


@dataclass(frozen=True)
class Sizes:
    """How big each check is: ``FULL`` on a GPU, ``QUICK`` for ``--quick``."""

    distinct_images: int  # generated images in a shard set; repeated to fill it
    throughput_backbone: str | None  # None: throughput.py's GPU case (ResNet-18, CIFAR stem)
    throughput_batch: int | None  # None: throughput.py's GPU case (batch 512)
    throughput_warmup: int
    throughput_steps: int
    decode_images: int  # 224 px shards for the decode rates
    decode_seconds: float  # timed per loader (after a warm-up epoch)
    overlap_backbone: str | None  # None: simclr_resnet50's own ResNet-50
    overlap_batch: int
    overlap_warmup: int
    overlap_steps: int  # timed
    recipe_images: int  # training shards for the recipes (one epoch holds every step)
    recipe_batch: int | None  # None: the recipe's own per-GPU batch
    resnet_size: int | None  # data.image_size = augment.size; None: the recipe's own
    vit_size: int | None
    recipe_steps: int
    recipe_warmup: int  # steps of learning-rate warm-up, before the step timer starts
    context_length: int | None  # tokens per caption for text methods; None: the recipe's own
    hold_batch: int
    hold_steps: int
    sync_backbone: str | None  # None: the recipe's own ResNet-18
    sync_size: int
    sync_batch: int
    sync_first: int  # counted: steps first + 1 .. last
    sync_last: int
    eval_images: int
    eval_size: int
    eval_backbone: str | None  # None: simclr_resnet50's ResNet-50

    @property
    def shard_size(self) -> int:
        """Side of the recipes' shards: the ImageNet recipes' 256, or the quick ResNet size."""
        return self.resnet_size or 256


FULL = Sizes(
    distinct_images=1024, throughput_backbone=None, throughput_batch=None, throughput_warmup=10, throughput_steps=30,
    decode_images=4096, decode_seconds=3.0,
    overlap_backbone=None, overlap_batch=256, overlap_warmup=5, overlap_steps=15,
    recipe_images=512 * 22, recipe_batch=None, resnet_size=None, vit_size=None,
    recipe_steps=20, recipe_warmup=5, context_length=None,
    hold_batch=512, hold_steps=30,
    sync_backbone=None, sync_size=32, sync_batch=256, sync_first=2, sync_last=10,
    eval_images=50_000, eval_size=96, eval_backbone=None,
)
QUICK = Sizes(
    distinct_images=64, throughput_backbone="convnet4", throughput_batch=8, throughput_warmup=1, throughput_steps=2,
    decode_images=512, decode_seconds=0.5,
    overlap_backbone="convnet4", overlap_batch=8, overlap_warmup=1, overlap_steps=4,
    recipe_images=256, recipe_batch=8, resnet_size=32, vit_size=32, recipe_steps=4, recipe_warmup=1, context_length=16,
    hold_batch=8, hold_steps=3,
    sync_backbone="convnet4", sync_size=16, sync_batch=8, sync_first=1, sync_last=3,
    eval_images=2000, eval_size=32, eval_backbone="convnet4",
)
# Seconds per section. FULL's sum (480 s) leaves 60 s of the 9 minutes for start-up, the
# table, and a section's last check running past its budget (see the docstring).
FULL_BUDGETS = {"throughput": 100, "decode": 60, "recipes": 140, "hold_on_device": 30, "host_syncs": 70, "eval": 80}
# Quick: a safety net, not a promise (each section takes 1-40 s on 2 idle cores; a loaded
# machine must not turn the CPU form's rows into SKIPs).
QUICK_BUDGETS = {name: 240 for name in FULL_BUDGETS}


# ----------------------------------------------------------------------------------------
# Rows, sections, the run's shared state


@dataclass
class Row:
    name: str
    measured: str  # the figures, as the table shows them
    target: str  # "" where ssl_zoo promises none
    status: str  # PASS, FAIL, INFO or SKIP
    values: dict[str, float | int | str | bool | None] = field(default_factory=dict)  # the figures, for the JSON
    section: str = ""


@dataclass
class GeneratedShards:
    train: Path
    val: Path


class Check:
    """What the sections share: the device, the sizes, and the generated data (made once)."""

    def __init__(self, device: torch.device, quick: bool, tmp: Path) -> None:
        self.device = device
        self.on_gpu = device.type == "cuda"
        self.quick = quick
        self.sizes = QUICK if quick else FULL
        self.tmp = tmp
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self._shards: dict[tuple[int, int], GeneratedShards] = {}

    def judge(self, ok: bool, gpu_target: bool = True) -> str:
        """PASS/FAIL, or INFO for a GPU target measured elsewhere."""
        if gpu_target and not self.on_gpu:
            return INFO
        return PASS if ok else FAIL

    def shards(self, size: int, count: int) -> GeneratedShards:
        """``count`` training samples of ``size`` px (and VAL_IMAGES validation samples),
        each with a label and a caption, made once per (size, count)."""
        key = (size, count)
        if key not in self._shards:
            out = self.tmp / f"shards_{size}_{count}"
            pool = make_shapes(self.sizes.distinct_images, size, seed=0)
            encoded = []
            for image in pool.images:
                buffer = io.BytesIO()
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=JPEG_QUALITY)
                encoded.append(buffer.getvalue())

            def samples(n: int, offset: int) -> Iterator[Sample]:
                for i in range(n):
                    j = (i + offset) % len(encoded)
                    yield Sample(encoded[j], "jpg", label=int(pool.labels[j]), captions=pool.captions[j])

            write_shards(samples(count, 0), out / "train", shard_size=1000)
            write_shards(samples(VAL_IMAGES, count), out / "val", shard_size=1000)
            self._shards[key] = GeneratedShards(out / "train", out / "val")
        return self._shards[key]

    def recipe(self, name: str, overrides: dict[str, object]) -> Recipe:
        """Recipe ``name`` on this device, one process, run folders in the temporary folder."""
        args: dict[str, object] = {
            "trainer.devices": 1, "trainer.accelerator": "gpu" if self.on_gpu else "cpu",
            "trainer.output_dir": self.tmp / "runs",
        }
        if not self.on_gpu:
            args["trainer.precision"] = "32-true"  # bf16 on a CPU is slow and not what is checked
        args.update(overrides)
        return parse_recipe(["--recipe", name] + [item for key, value in args.items() for item in (f"--{key}", str(value))])

    def recipe_on_shards(self, name: str, data: GeneratedShards, overrides: dict[str, object]) -> Recipe:
        return self.recipe(name, {
            "data.name": "shards", "data.root": data.train, "data.val_root": data.val,
            "data.knn_bank_size": 256, "data.val_size": VAL_IMAGES,
            # On a GPU every core reads (the recipe's default); a quick run reads in-process.
            **({} if self.on_gpu else {"data.num_workers": 0}),
            **overrides,
        })

    def scrub(self, text: str) -> str:
        """No machine paths in the results: the temporary folder and the checkout go."""
        return text.replace(str(self.tmp), "<tmp>").replace(str(REPO) + os.sep, "").replace(str(Path.home()), "~")


class Section:
    """One section's rows and time budget; runs each check, catching what it raises."""

    def __init__(self, name: str, budget_s: float, check: Check) -> None:
        self.name, self.budget_s, self.check = name, budget_s, check
        self.started = time.perf_counter()
        self.seconds = 0.0  # the whole section's, once it has run
        self.rows: list[Row] = []

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def attempt(self, item: str, measure: Callable[[], list[Row]]) -> None:
        if self.left() <= 0:
            self.rows.append(Row(item, f"not run: the section's {self.budget_s:.0f} s budget was spent", "", SKIP,
                                 section=self.name))
            return
        print(f"[gpu_check] {self.name}: {item}", file=sys.stderr, flush=True)
        try:
            rows = measure()
        except Exception as error:  # one broken check must not hide the others' results
            traceback.print_exc(file=sys.stderr)
            lines = str(error).strip().splitlines() or [""]
            message = self.check.scrub(f"{type(error).__name__}: {lines[0]}")
            rows = [Row(item, f"error: {message}", "", FAIL, {"error": message})]
        finally:
            gc.collect()  # the run's model and optimiser state, before the next check
            if self.check.on_gpu:
                torch.cuda.empty_cache()
        for row in rows:
            row.section = self.name
        self.rows.extend(rows)


def load_benchmark(name: str):
    """Another script of benchmarks/ as a module (they are scripts, not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def max_time(seconds: float) -> str:
    """Lightning's "DD:HH:MM:SS" for a budget's remaining seconds (at least one)."""
    s = max(int(seconds), 1)
    return f"00:{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def gib(value: float | None) -> str:
    return f"{value:.1f} GiB" if value is not None else "- (CPU)"


# ----------------------------------------------------------------------------------------
# 1. The training step: benchmarks/throughput.py's rows


def check_throughput(check: Check, section: Section) -> None:
    throughput = load_benchmark("throughput")
    s = check.sizes
    settings = throughput.Settings(
        device=check.device, warmup=s.throughput_warmup, steps=s.throughput_steps, view_batch=0, view_rounds=0,
        cores=check.cores,
    )
    for method, (model_target, lightly_target) in THROUGHPUT_TARGETS.items():
        # quick=True: throughput.py's first case (the 32 px ResNet-18 rows), without its 96 px ResNet-50 rows.
        case = throughput.cases_for(check.device, quick=True, methods=[method])[0]
        if s.throughput_batch is not None:
            case = replace(case, batch=s.throughput_batch)
        if s.throughput_backbone is not None:
            case = replace(case, backbone=s.throughput_backbone)

        def measure(method=method, case=case, model_target=model_target, lightly_target=lightly_target) -> list[Row]:
            row = throughput.measure_case(case, settings)
            where = f"{case.backbone}, {case.size} px, batch {case.batch}"
            over_model, over_lightly = row["ratio_full_over_model"], row["ratio_full_over_lightly"]
            return [
                Row(f"{method} full/model step", f"{over_model:.2f} (full {row['pairs_per_s_full']:,.0f}, model "
                    f"{row['pairs_per_s_model']:,.0f} pairs/s; {where})", f">= {model_target:.2f}",
                    check.judge(over_model >= model_target), {**row, "target": model_target}),
                Row(f"{method} full/lightly step", f"{over_lightly:.2f}x (lightly {row['pairs_per_s_lightly']:,.0f} "
                    f"pairs/s, {check.cores} CPU workers)", f">= {lightly_target}x" if lightly_target else "",
                    check.judge(over_lightly >= lightly_target) if lightly_target else INFO,
                    {"ratio_full_over_lightly": over_lightly, "target": lightly_target}),
            ]

        section.attempt(f"{method} step", measure)


# ----------------------------------------------------------------------------------------
# 2. Decoding: rate on the device against CPU workers, and its cost inside a step


def check_decode(check: Check, section: Section) -> None:
    data_throughput = load_benchmark("data_throughput")
    s = check.sizes

    def rates() -> list[Row]:
        shards = ShardSet(expand_shard_paths(check.shards(DECODE_SIZE, s.decode_images).train))
        on_device = data_throughput.nvjpeg_rate(shards, DECODE_SIZE, device=str(check.device))
        workers, shape = data_throughput.timed_epochs(
            ShardDataset(shards, DECODE_SIZE), per_item=False, workers=check.cores, min_seconds=s.decode_seconds
        )
        ratio = on_device / workers
        decoder = "nvJPEG" if check.on_gpu else "TorchCodec in-process (CPU)"
        return [Row(f"decode {DECODE_SIZE} px: device / CPU workers",
                    f"{ratio:.2f}x ({decoder} {on_device:,.0f} images/s; TorchCodec on {check.cores} loader workers "
                    f"{workers:,.0f} images/s, batch {shape[0]})", "> 1x", check.judge(ratio > 1),
                    {"device_images_per_s": on_device, "workers_images_per_s": workers, "ratio": ratio,
                     "workers": check.cores, "images": s.decode_images})]

    def overlap() -> list[Row]:
        data = check.shards(s.shard_size, s.recipe_images)
        steps = s.overlap_warmup + s.overlap_steps
        overrides: dict[str, object] = {
            "data.batch_size": s.overlap_batch, "trainer.max_steps": steps, "data.decode": "device",
            "data.image_size": s.shard_size,
        }
        if s.overlap_backbone:
            overrides.update({"backbone": s.overlap_backbone, "augment.size": s.shard_size})
        recipe = check.recipe_on_shards("simclr_resnet50", data, overrides)

        decoding = StepTimer(skip=s.overlap_warmup)
        fit(recipe, enable_progress_bar=False, callbacks=[decoding])

        # The same steps on the same images, decoded beforehand and held as an in-memory
        # dataset (on the GPU when it fits): no decode in the step.
        datamodule = ImageDataModule.for_recipe(recipe)
        datamodule.setup("fit")
        datamodule.train_set = predecoded(datamodule.train_set, s.overlap_batch * (steps + 1), s.shard_size, check.device)
        decoded = StepTimer(skip=s.overlap_warmup)
        fit(recipe, enable_progress_bar=False, datamodule=datamodule, callbacks=[decoded])

        ratio = decoding.steps_per_second / decoded.steps_per_second
        backbone = s.overlap_backbone or recipe.backbone
        return [Row("decode in the step: with / without",
                    f"{ratio:.2f} ({1 / decoding.steps_per_second:.3f} s/step decoding on the device, "
                    f"{1 / decoded.steps_per_second:.3f} pre-decoded; SimCLR {backbone}, batch {s.overlap_batch}, "
                    f"{recipe.augment.size} px views)", f">= {OVERLAP_TARGET:.2f}", check.judge(ratio >= OVERLAP_TARGET),
                    {"steps_per_s_decoding": decoding.steps_per_second, "steps_per_s_predecoded": decoded.steps_per_second,
                     "ratio": ratio, "target": OVERLAP_TARGET, "batch": s.overlap_batch})]

    section.attempt(f"decode {DECODE_SIZE} px", rates)
    section.attempt("decode in the step", overlap)


def predecoded(shards: ShardSet, count: int, size: int, device: torch.device) -> ImageSet:
    """The first ``count`` samples decoded (on ``device``, in batches) into host memory."""
    chunks = [
        decode_images([shards.read_image_bytes(i) for i in range(start, min(start + 256, count))], size, device=device)[0].cpu()
        for start in range(0, count, 256)
    ]
    labels = torch.from_numpy(shards.labels_of(np.arange(count)))
    return ImageSet(torch.cat(chunks), labels, classes=shards.classes, name="pre-decoded shards")


# ----------------------------------------------------------------------------------------
# 3. The ImageNet recipes, a few steps each


class LossPerStep(pl.Callback):
    """The training loss of every step (a host read per step: fine in a check, not in training)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            self.losses.append(float(loss))


def check_recipes(check: Check, section: Section) -> None:
    s = check.sizes
    for name in IMAGENET_RECIPES:

        def measure(name: str = name) -> list[Row]:
            data = check.shards(s.shard_size, s.recipe_images)
            base = parse_recipe(["--recipe", name])
            size = s.vit_size if "vit" in base.backbone else s.resnet_size
            batch = s.recipe_batch or base.data.batch_size
            overrides: dict[str, object] = {
                "data.batch_size": batch, "trainer.max_steps": s.recipe_steps, "trainer.log_every_n_steps": 1,
                # The learning rate warms up over the untimed first steps, not the recipe's
                # epochs (hundreds of steps): the loss of 20 steps is to move.
                "optim.warmup_epochs": s.recipe_warmup / (s.recipe_images // batch),
                "trainer.max_time": max_time(section.left()),
            }
            if size is not None:
                overrides.update({"data.image_size": size, "augment.size": size})
            if s.context_length is not None and method_class(base).uses_text:  # the text method's own section
                overrides[f"{base.method}.context_length"] = s.context_length
            recipe = check.recipe_on_shards(name, data, overrides)
            losses, timer = LossPerStep(), StepTimer(skip=s.recipe_warmup)
            summary = fit(recipe, enable_progress_bar=False, callbacks=[losses, timer])
            return recipe_rows(check, recipe, summary.steps, summary.peak_memory_gib, timer, losses.losses)

        section.attempt(name, measure)


def recipe_rows(
    check: Check, recipe: Recipe, steps: int, peak_gib: float | None, timer: StepTimer, losses: list[float]
) -> list[Row]:
    name, batch, wanted = recipe.name, recipe.data.batch_size, recipe.trainer.max_steps
    where = f"batch {batch}, {recipe.augment.size} px"
    if timer.steps == 0:  # the budget's max_time stopped the run before the timed steps ended
        return [Row(f"{name}: step", f"stopped by the section's budget after {steps} of {wanted} steps ({where})", "",
                    SKIP, {"steps": steps})]
    step_s = 1 / timer.steps_per_second
    rows = [Row(f"{name}: step", f"{step_s:.3f} s/step, {batch / step_s:,.0f} images/s, peak {gib(peak_gib)} ({where})",
                "", INFO, {"seconds_per_step": step_s, "images_per_s": batch / step_s, "peak_memory_gib": peak_gib,
                           "batch": batch, "size": recipe.augment.size, "steps": steps})]
    n = min(5, len(losses) // 2)
    first, last = float(np.mean(losses[:n])), float(np.mean(losses[-n:]))
    finite = all(math.isfinite(loss) for loss in losses)
    falling = last < first
    if not finite:
        status = FAIL
    elif check.quick:  # a handful of toy steps need not move the loss
        status = INFO
    else:
        status = PASS if falling else FAIL
    rows.append(Row(f"{name}: loss", f"{first:.3f} -> {last:.3f} (mean of the first / last {n} of {len(losses)} steps)",
                    "finite, falling", status, {"first": first, "last": last, "finite": finite, "falling": falling,
                                                "losses": losses}))
    return rows


# ----------------------------------------------------------------------------------------
# 4. hold_on_device: copied to the GPU when the dataset fits, streamed when it does not


@contextlib.contextmanager
def free_memory_reads(free_bytes: int) -> Iterator[None]:
    """``torch.cuda.mem_get_info`` reports ``free_bytes`` free (and as much in all).

    NOTE: ``InMemoryTraining.batches`` (ssl_zoo/data/training.py) decides with a quarter of that reading and
    has no setting to force streaming, so this fakes the reading.
    """
    real = torch.cuda.mem_get_info
    torch.cuda.mem_get_info = lambda device=None: (free_bytes, free_bytes)
    try:
        yield
    finally:
        torch.cuda.mem_get_info = real


def check_hold_on_device(check: Check, section: Section) -> None:
    s = check.sizes
    recipe = check.recipe("simclr_resnet18_cifar10", {
        "data.name": "shapes", "data.num_images": s.hold_batch * (s.hold_steps + 2), "data.batch_size": s.hold_batch,
        "data.knn_bank_size": 64, "data.val_size": 32, "trainer.max_steps": s.hold_steps,
        **({} if check.on_gpu else {"backbone": "convnet4"}),
    })

    def one_way(fake_free: bool) -> tuple[str, bool, float, int]:
        """(where the dataset went, whether the streaming line was printed, steps/s, dataset bytes)."""
        datamodule = ImageDataModule.for_recipe(recipe)
        datamodule.setup("fit")
        size = datamodule.train_set.images.numel()
        printed = io.StringIO()
        faked = free_memory_reads(2 * size) if fake_free else contextlib.nullcontext()
        with faked, contextlib.redirect_stdout(printed):
            if not check.on_gpu:  # the decision alone, for a CUDA device; the CPU cannot copy there
                dataset = datamodule.train_data.batches(torch.device("cuda"), None, None).dataset
                return dataset.images.device.type, "streaming" in printed.getvalue(), 0.0, size
            dataset = datamodule.train_data.batches(check.device, None, None).dataset
            timer = StepTimer(skip=1)
            fit(recipe, enable_progress_bar=False, datamodule=datamodule, callbacks=[timer])
        return dataset.images.device.type, "streaming" in printed.getvalue(), timer.steps_per_second, size

    if check.on_gpu:
        rates: dict[str, float] = {}

        def fits() -> list[Row]:
            where, _, rate, size = one_way(fake_free=False)
            rates["device"] = rate
            return [Row("copied to the GPU when it fits", f"held on {where}, {rate:.1f} steps/s ({size / 2**20:.0f} MiB)",
                        "on cuda", check.judge(where == "cuda"), {"device": where, "steps_per_s": rate, "dataset_bytes": size})]

        def streams() -> list[Row]:
            where, said, rate, size = one_way(fake_free=True)
            ratio = rate / rates["device"] if rates.get("device") else float("nan")
            return [Row("streamed from host when it does not",
                        f"held on {where}, line printed: {said}, {rate:.1f} steps/s ({ratio:.2f} of on-device)",
                        "on cpu, said so", check.judge(where == "cpu" and said and rate > 0),
                        {"device": where, "printed": said, "steps_per_s": rate, "ratio_to_device": ratio,
                         "faked_free_bytes": 2 * size, "dataset_bytes": size})]

        section.attempt("copied when it fits", fits)
        section.attempt("streamed when it does not", streams)
        return

    def decision() -> list[Row]:
        where, said, _, size = one_way(fake_free=True)
        return [
            Row("copied to the GPU when it fits", "cuda only: the copy needs a GPU", "on cuda", INFO,
                {"dataset_bytes": size}),
            Row("streamed from host when it does not",
                f"decision for a CUDA device with free memory faked at 2x the dataset: held on {where}, line printed: {said}",
                "on cpu, said so", INFO, {"device": where, "printed": said, "dataset_bytes": size, "faked_free_bytes": 2 * size}),
        ]

    section.attempt("the streaming decision", decision)


# ----------------------------------------------------------------------------------------
# 5. Host syncs per step, per method and optimiser


def where_synced(call: str) -> str:
    """A counter's call, "aten.OP.default why: file:line fn <- ...", as "OP at file:line fn"."""
    return f"{call.split()[0].removeprefix('aten.')} at {call.split(': ', 1)[1].split(' <- ')[0]}"


def check_host_syncs(check: Check, section: Section) -> None:
    s = check.sizes
    for method, base in SYNC_RECIPES.items():
        for optimizer in OPTIMIZERS:

            def measure(method: str = method, base: str = base, optimizer: str = optimizer) -> list[Row]:
                overrides: dict[str, object] = {
                    "data.name": "shapes", "data.num_images": s.sync_batch * (s.sync_last + 4),
                    "data.image_size": s.sync_size, "augment.size": s.sync_size, "data.batch_size": s.sync_batch,
                    "data.knn_bank_size": 64, "data.val_size": 32, "optim.optimizer": optimizer,
                    # Logging and the progress bar's metrics happen at their interval: outside the counted steps.
                    "trainer.max_steps": s.sync_last + 2, "trainer.log_every_n_steps": 50,
                }
                if s.sync_backbone:
                    overrides["backbone"] = s.sync_backbone
                base_recipe = parse_recipe(["--recipe", base])
                if s.context_length is not None and method_class(base_recipe).uses_text:  # the text method's own section
                    overrides[f"{base_recipe.method}.context_length"] = s.context_length
                recipe = check.recipe(base, overrides)
                counter = host_sync.count_host_syncs(
                    recipe, s.sync_first, s.sync_last, device=check.device, enable_progress_bar=False
                )
                steps = s.sync_last - s.sync_first
                calls = [check.scrub(call) for call in counter.calls]
                first = f"; first: {where_synced(calls[0])}" if calls else ""
                return [Row(f"{method} {optimizer}", f"{len(calls)} in {steps} steps ({counter.ops_seen:,} ops seen){first}",
                            "0", check.judge(not calls and counter.ops_seen > 0, gpu_target=False),
                            {"host_syncs": len(calls), "steps": steps, "ops_seen": counter.ops_seen, "calls": calls[:5]})]

            section.attempt(f"{method} {optimizer}", measure)


# ----------------------------------------------------------------------------------------
# 6. Evaluation at 50,000 images


def check_eval(check: Check, section: Section) -> None:
    s = check.sizes

    def measure() -> list[Row]:
        # Streamed as `eval` streams shards: decoded by nvJPEG (workers on the CPU) a batch at
        # a time into the memory-mapped float16 feature cache; kNN and linear on the device.
        shards = ShardSet(expand_shard_paths(check.shards(s.eval_size, s.eval_images).train))
        split = s.eval_images * 4 // 5
        train = ShardSplit(shards, np.arange(split), s.eval_size, "generated train")
        test = ShardSplit(shards, np.arange(split, s.eval_images), s.eval_size, "generated test")
        overrides: dict[str, object] = {"data.name": "shapes", "augment.size": s.eval_size}
        if s.eval_backbone:
            overrides["backbone"] = s.eval_backbone
        recipe = check.recipe("simclr_resnet50", overrides)
        model = build_method(recipe, num_classes=train.num_classes)  # random init: the cost, not the accuracy
        config = EvalConfig(device=str(check.device), batch_size=512, cache_dir=str(check.tmp / "feature_cache"),
                            num_workers=check.cores, probe_epochs=1)
        evaluator = Evaluator(model, config)
        metrics, _ = evaluator.classification(train, test, with_text=False)
        linear_fit = evaluator.linear_protocol["fit"]
        started = time.perf_counter()
        evaluator.probe(train, test)
        probe_seconds = time.perf_counter() - started
        seconds = evaluator.seconds
        where = f"{recipe.backbone} at {s.eval_size} px"
        return [
            Row("features", f"{s.eval_images / seconds['features']:,.0f} images/s ({s.eval_images:,} images streamed from "
                f"shards, {where})", "", INFO,
                {"images_per_s": s.eval_images / seconds["features"], "images": s.eval_images, "size": s.eval_size}),
            Row("kNN", f"{len(test) / seconds['knn']:,.0f} test images/s against {len(train):,} (top-1 "
                f"{100 * metrics['knn_top1']:.1f} %, random init)", "", INFO,
                {"images_per_s": len(test) / seconds["knn"], "train": len(train), "test": len(test),
                 "top1": metrics["knn_top1"]}),
            Row("linear", f"{s.eval_images / seconds['linear']:,.0f} images/s, {seconds['linear']:.1f} s (L2 penalty "
                f"search and refit, {linear_fit}; top-1 {100 * metrics['linear_top1']:.1f} %)", "",
                INFO, {"images_per_s": s.eval_images / seconds["linear"], "seconds": seconds["linear"],
                       "top1": metrics["linear_top1"]}),
            Row("probe", f"{len(train) / probe_seconds:,.0f} training images/s for one epoch of --protocol probe "
                f"({probe_seconds:.1f} s, with scoring {len(test):,} test images)", "", INFO,
                {"images_per_s": len(train) / probe_seconds, "seconds": probe_seconds}),
        ]

    section.attempt("50,000 images" if not check.quick else f"{s.eval_images:,} images", measure)


SECTIONS: dict[str, Callable[[Check, Section], None]] = {
    "throughput": check_throughput,
    "decode": check_decode,
    "recipes": check_recipes,
    "hold_on_device": check_hold_on_device,
    "host_syncs": check_host_syncs,
    "eval": check_eval,
}


# ----------------------------------------------------------------------------------------
# The run


def device_slug(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def print_table(results: dict) -> None:
    print(f"\nssl_zoo GPU check on {results['device']} ({'quick' if results['quick'] else 'full'} sizes), "
          f"{sum(results['section_seconds'].values()):.0f} s:")
    print("| section | check | measured | target | status |")
    print("|---|---|---|---|---|")
    for row in results["rows"]:
        print(f"| {row['section']} | {row['name']} | {row['measured']} | {row['target']} | {row['status']} |")
    counts = {status: sum(row["status"] == status for row in results["rows"]) for status in (PASS, FAIL, INFO, SKIP)}
    print(", ".join(f"{count} {status}" for status, count in counts.items()))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="toy sizes (the CPU form: about 90 s on 2 cores)")
    parser.add_argument("--only", choices=list(SECTIONS), help="run one section")
    parser.add_argument("--out", type=Path, help="result file (default: benchmarks/results/<date>_<gpu>_gpu_check.json)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: --device cuda, but torch sees no GPU here. Use --device cpu --quick.")
    budgets = QUICK_BUDGETS if args.quick else FULL_BUDGETS
    warnings.filterwarnings("ignore", message=".*self.log.*")  # throughput's plain loops call training_step bare
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")

    sections: list[Section] = []
    started, threads = time.perf_counter(), torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="ssl_zoo_gpu_check_") as tmp:
        check = Check(device, args.quick, Path(tmp))
        if device.type == "cpu":
            # NOTE: one torch thread. On a 2-core machine shared with other jobs, two OpenMP
            # threads spinning against each other made a ResNet-18 step 5x slower (1.69 s
            # against 0.31 s); the CPU form checks the machinery, not the CPU's speed.
            torch.set_num_threads(1)
        else:
            torch.backends.cudnn.benchmark = True
        try:
            with contextlib.redirect_stdout(sys.stderr):  # the runs' own lines stay off the table
                for name, run in SECTIONS.items():
                    if args.only in (None, name):
                        section = Section(name, budgets[name], check)
                        run(check, section)
                        section.seconds = time.perf_counter() - section.started
                        sections.append(section)
        finally:
            torch.set_num_threads(threads)  # a caller's setting (the tests') is left as it was

    command = ["python benchmarks/gpu_check.py", f"--device {args.device}"]  # --out left out: a machine path
    command += (["--quick"] if args.quick else []) + ([f"--only {args.only}"] if args.only else [])
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "date": date.today().isoformat(),
        "quick": args.quick,
        "command": " ".join(command),
        "versions": versions(),
        "cpu_cores": check.cores,
        "sizes": asdict(check.sizes),
        "budgets_s": {section.name: section.budget_s for section in sections},
        "section_seconds": {section.name: round(section.seconds, 1) for section in sections},
        "total_seconds": round(time.perf_counter() - started, 1),
        "rows": [asdict(row) for section in sections for row in section.rows],
    }
    if device.type == "cpu":
        results["note"] = "CPU run: the machinery at toy sizes; no row is a GPU figure, GPU targets are INFO."
    suffix = f"_{args.only}" if args.only else ""
    out = args.out or RESULTS / f"{results['date']}_{device_slug(device)}_gpu_check{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print_table(results)
    print(f"\nwrote {out.relative_to(REPO) if out.resolve().is_relative_to(REPO) else out}")
    return results


if __name__ == "__main__":
    main()
