"""Dataset -> uint8 batches on the device.

Two sources, one batch format. Datasets that fit are decoded once into an ``ImageSet``
(uint8 in memory) and indexed a whole batch at a time (``__getitems__``). Shards
(``data.name: shards``) stay encoded on disk: each batch is read through the shards'
index and decoded in the DataLoader workers, or on the GPU with nvJPEG, so memory does not
grow with the dataset. Either way uint8 batches reach the device and become views there,
in the method's ``on_after_batch_transfer``; the same ``EpochBatchSampler`` orders both.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.environments import SLURMEnvironment
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.data.decode import DecodeCounts
from ssl_zoo.data.decode_ahead import DecodeAhead
from ssl_zoo.data.shards import ShardDataset, ShardSet, held_out_samples, load_shard_images
from ssl_zoo.data.spec import dataset_spec
from ssl_zoo.errors import RecipeError
from ssl_zoo.recipe import DataConfig, Recipe
from ssl_zoo.registry import DATASETS, METHODS


def load_split(config: DataConfig, split: str, seed: int = 0) -> ImageSet:
    """Decode one split of the configured dataset."""
    return dataset_spec(config.name).load(config, split, seed)


# Decoding on the device: past this share of a run's images decoded one at a time on the
# CPU (not JPEG, or refused by nvJPEG), the run ends with a warning.
MAX_ONE_BY_ONE = 0.01


def loader_workers(trainer: pl.Trainer | None) -> int:
    """Loader worker processes for one training process: every core of its share.

    Under SLURM each task already has its own CPU set (--cpus-per-task), so it is used as
    is; elsewhere (torchrun, Lightning's launcher) the processes of a node share its cores.
    """
    cores = len(os.sched_getaffinity(0))
    if trainer is None:
        return cores
    if isinstance(getattr(trainer.strategy, "cluster_environment", None), SLURMEnvironment):
        per_task = os.environ.get("SLURM_CPUS_PER_TASK")
        return max(min(cores, int(per_task)) if per_task else cores, 1)
    processes_per_node = trainer.world_size // max(trainer.num_nodes, 1)
    return max(cores // max(processes_per_node, 1), 1)


class InMemoryDataset(Dataset):
    """Indexes uint8 images (and labels, tokens) a whole batch at a time.

    Everything is held on one device: the CPU, or the GPU when the dataset fits there.
    Items are image indices, or (image, caption) index pairs when there are tokens.
    """

    def __init__(self, images: Tensor, labels: Tensor | None = None, tokens: Tensor | None = None):
        self.device = images.device
        self.images = images  # uint8 (N, 3, H, W)
        self.labels = labels.to(self.device) if labels is not None else None  # int64 (N,)
        self.tokens = tokens.to(self.device) if tokens is not None else None  # int64 (N, C, L): C captions per image

    def __len__(self) -> int:
        return self.images.shape[0]

    def _to_device(self, index: Tensor) -> Tensor:
        # The sampler's indices live on the host. Copied from pinned memory, they reach the
        # GPU asynchronously: the host queues the step without waiting for the GPU.
        return index.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else index

    def __getitems__(self, items: list[int] | list[tuple[int, int]]) -> dict[str, Tensor]:
        index = self._to_device(torch.as_tensor(items))  # (B,) images or (B, 2) image, caption
        image = index[:, 0] if index.ndim == 2 else index
        batch = {"image": self.images[image]}  # (B, 3, H, W) uint8
        if self.labels is not None:
            batch["label"] = self.labels[image]
        if self.tokens is not None:
            batch["tokens"] = self.tokens[image, index[:, 1]]  # (B, L)
        return batch


class EpochBatchSampler(Sampler[list]):
    """Training batches: a seeded permutation per epoch, split between processes, resumable.

    Epoch e visits the images in the order of a permutation drawn from (seed, e), so the
    order does not depend on what ran before; with captions, each image's caption for the
    epoch is drawn alike. Global batch b of the epoch is images [b * B * W, (b + 1) * B * W)
    of the permutation, and process r takes its r-th B (B per process, W processes), so
    W processes see the same global batches as one process with batch B * W. A run resumed
    mid-epoch starts at the batch after the last one trained (``resume``).
    """

    def __init__(
        self, size: int, batch_size: int, seed: int, num_captions: int = 0, rank: int = 0, world_size: int = 1,
        current_epoch: Callable[[], int] = lambda: 0,
    ):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.num_captions = num_captions
        self.rank, self.world_size = rank, world_size
        # Asked at the start of every pass (Lightning calls set_epoch on samplers, not on
        # batch samplers).
        self.current_epoch = current_epoch
        self.resume: tuple[int, int] | None = None  # (epoch, batches already trained in it)

    def __len__(self) -> int:
        return self.size // (self.batch_size * self.world_size)  # incomplete batches dropped

    def __iter__(self):
        # NOTE: a resumed run takes its epoch from the checkpoint, not from the trainer: with
        # loader workers, the first batches are drawn when the loader's iterator is built,
        # before Lightning has restored its epoch counter. A checkpoint that closed its
        # epoch resumes at the start of the next one.
        epoch, start = self.current_epoch(), 0
        if self.resume is not None:
            (epoch, start), self.resume = self.resume, None
            if start >= len(self):
                epoch, start = epoch + 1, 0
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.size, generator=generator)
        items = order
        if self.num_captions:
            captions = torch.randint(self.num_captions, (self.size,), generator=generator)
            items = torch.stack([order, captions[order]], dim=1)  # (N, 2)
        global_batch = self.batch_size * self.world_size
        for b in range(start, len(self)):
            first = b * global_batch + self.rank * self.batch_size
            yield items[first : first + self.batch_size].tolist()


def _already_batched(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return batch


class ImageDataModule(pl.LightningDataModule):
    """Training batches of uint8 images (+ labels, + tokens for CLIP) and labelled
    evaluation sets for the monitors (kNN memory bank and validation split)."""

    @classmethod
    def for_recipe(cls, recipe: Recipe) -> ImageDataModule:
        """The recipe's data, with captions tokenized by its method when it trains on text."""
        method = METHODS[recipe.method]
        tokenize = method.caption_tokenizer(recipe.data) if method.uses_text else None
        return cls(recipe.data, tokenize=tokenize, seed=recipe.trainer.seed)

    def __init__(self, config: DataConfig, tokenize: Callable[[list[str]], Tensor] | None = None, seed: int = 0) -> None:
        """``tokenize``: a text method's caption tokenizer (strings -> (n, L) token ids);
        with it, training batches carry ``tokens``, one caption of each image."""
        super().__init__()
        self.config = config
        self.tokenize = tokenize
        self.with_text = tokenize is not None
        self.seed = seed
        self.train_set: ImageSet | ShardSet | None = None
        self.train_samples: np.ndarray | None = None  # shards: the samples trained on (None: all)
        self.decode_counts = DecodeCounts()  # shards: what decoding the training batches took
        self.decode_on: str | None = None  # shards: where they are decoded ("device" or "workers")
        self.val_set: ImageSet | None = None
        self.bank_set: ImageSet | None = None
        self.unmonitored: str | None = None  # why there is no kNN bank, when there is none
        self.train_sampler: EpochBatchSampler | None = None
        self._resume: tuple[int, int] | None = None  # (epoch, batches done) of a resumed run

    def setup(self, stage: str | None = None, monitor_sets: bool = True) -> None:
        """Decode the training data and, with ``monitor_sets``, the monitors' labelled sets
        (validation split, kNN bank). Under several processes, ``fit`` leaves those to the
        process that runs the monitors (global rank 0); Lightning's own call inside
        ``trainer.fit`` then hands every process rank 0's validation set, once the
        processes are connected (the online probe validates on a part of it each)."""
        trainer = self.trainer
        if self.train_set is not None:
            if stage == "fit" and trainer is not None and trainer.world_size > 1 and torch.distributed.is_initialized():
                # Sent, not decoded again: rank 0 decoded it (a whole split of JPEGs, for shards).
                self.val_set = trainer.strategy.broadcast(self.val_set, src=0)
            return
        spec = dataset_spec(self.config.name)
        train_split = self.config.train_split or spec.splits[0]
        val_split = self.config.val_split or spec.splits[1]
        if spec.streamed:  # stays on disk; only the monitors' sets are decoded
            self.train_set = spec.open(self.config, "train")
            # The held-out part stands in for validation; unlabelled, nothing could score on it.
            if self.config.val_root is None and self.train_set.has_labels:
                held_out = held_out_samples(self.config, len(self.train_set), self.seed)
                self.train_samples = np.setdiff1d(np.arange(len(self.train_set)), held_out)
        else:
            self.train_set = load_split(self.config, train_split, self.seed)
        has_captions = self.train_set.has_captions if isinstance(self.train_set, ShardSet) else self.train_set.captions is not None
        if self.with_text and not has_captions:
            captioned = [name for name, spec in DATASETS.items() if spec.retrieval_split]
            raise RecipeError(
                f"A method with text (CLIP) needs captions, and dataset '{self.config.name}' ({self.config.root}) has "
                f"none. Use {', '.join(captioned)} (pairs: a CSV/JSONL of path,caption) or shards made from pairs "
                "(`python -m ssl_zoo shards --from pairs FILE ...`)."
            )
        if self.config.batch_size > len(self.train_set):
            raise RecipeError(
                f"data.batch_size {self.config.batch_size} is larger than the training "
                f"split '{train_split}' of {self.config.name} ({len(self.train_set)} images). "
                "Lower --data.batch_size."
            )
        if not monitor_sets:
            return
        has_labels = self.train_set.has_labels if isinstance(self.train_set, ShardSet) else self.train_set.labels is not None
        where = f"{self.config.name} ({self.config.root})"
        if not has_labels and spec.eval_splits is None:  # no labels anywhere: no validation split decoded
            self.unmonitored = f"the training images of {where} have no labels"
            return
        self.val_set = load_split(self.config, val_split, self.seed) if val_split else None
        if self.val_set is not None:
            self.val_set = self.val_set.subset(self.config.val_size, self.seed)
        self.bank_set = self._labelled_bank()
        if self.bank_set is None:
            missing = "no validation split" if self.val_set is None else "no labels on its validation images"
            self.unmonitored = f"{where} has {missing}"

    def _labelled_bank(self) -> ImageSet | None:
        """Labelled training images for the kNN monitor (None if there are no labels).
        Images labelled -1 (STL-10's unlabelled part) train the method but never enter it."""
        train = self.train_set
        if isinstance(train, ShardSet):  # decode a seeded part of the labelled samples only
            if not train.has_labels or self.val_set is None or self.val_set.labels is None:
                return None
            samples = self.train_samples if self.train_samples is not None else np.arange(len(train))
            order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(self.seed)).numpy()
            keep = np.sort(samples[order[: self.config.knn_bank_size]])
            return load_shard_images(train, keep, self.config.image_size, "bank")
        spec = dataset_spec(self.config.name)
        if train.labels is None and spec.eval_splits is not None:  # trained unlabelled: STL-10's labelled part
            train = load_split(self.config, spec.labelled_splits[0])
        if train.labels is None or self.val_set is None or self.val_set.labels is None:
            return None
        train = train.labelled()
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed))
        keep = order[: self.config.knn_bank_size]
        return ImageSet(train.images[keep], train.labels[keep], classes=train.classes, name=f"{train.name} bank")

    @property
    def num_classes(self) -> int:
        """Classes the monitors can score (0 when the data has no labels, or when this
        process left the monitors' sets to rank 0: ``fit`` hands their count over)."""
        self.setup()
        return self.bank_set.num_classes if self.bank_set is not None else 0

    def train_dataloader(self) -> DataLoader | DecodeAhead:
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        if isinstance(self.train_set, ShardSet):
            dataset, num_captions, workers = self._shard_dataset(device)
        else:
            dataset, num_captions, workers = self._in_memory_dataset(device), 0, self.config.num_workers or 0
            if self.with_text:
                num_captions = dataset.tokens.shape[1]
        # Every batch has the same size (incomplete ones are dropped): no recompiles, fair negatives.
        self.train_sampler = EpochBatchSampler(
            len(dataset), self.config.batch_size, self.seed, num_captions=num_captions,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            current_epoch=(lambda: trainer.current_epoch) if trainer is not None else (lambda: 0),
        )
        self.train_sampler.resume = self._resume
        if len(self.train_sampler) == 0:
            raise RecipeError(
                f"data.batch_size {self.config.batch_size} x {self.train_sampler.world_size} processes is "
                f"larger than the training split of {self.config.name} ({len(dataset)} images): no batch is "
                "left for an epoch. Lower --data.batch_size or use fewer devices."
            )
        decode_on_device = isinstance(dataset, ShardDataset) and dataset.decode == "device"
        on_host = not isinstance(dataset, InMemoryDataset) or dataset.device.type == "cpu"
        loader = DataLoader(
            dataset,
            batch_sampler=self.train_sampler,
            collate_fn=_already_batched,
            num_workers=workers,
            # Encoded batches too: nvJPEG copies their one buffer from pinned memory faster.
            pin_memory=on_host and torch.cuda.is_available(),
            persistent_workers=workers > 0,
        )
        self.decode_on = "device" if decode_on_device else ("workers" if isinstance(dataset, ShardDataset) else None)
        self.decode_counts = DecodeCounts()  # counted afresh for each run that uses this data
        return DecodeAhead(loader, self.config.image_size, device) if decode_on_device else loader

    def _in_memory_dataset(self, device: torch.device) -> InMemoryDataset:
        train = self.train_set
        images = train.images
        if self.config.hold_on_device and device.type == "cuda":
            # NOTE: a dataset is copied to the GPU only when it leaves most of the memory
            # free; otherwise its batches stream from pinned host memory, one line says so.
            free, _ = torch.cuda.mem_get_info(device)
            if images.numel() < 0.25 * free:
                images = images.to(device)
            else:
                print(f"ssl_zoo: {self.config.name} is {images.numel() / 2**30:.1f} GiB as uint8, more than a quarter "
                      f"of the {free / 2**30:.1f} GiB free on {device}: streaming its batches from host memory.", flush=True)
        tokens = None
        if self.with_text:
            from ssl_zoo.text import tokenize_captions

            tokens = tokenize_captions(train.captions, self.tokenize)
        return InMemoryDataset(images, train.labels, tokens)

    def _shard_dataset(self, device: torch.device) -> tuple[ShardDataset, int, int]:
        """Batches read from shards; decoded on the GPU with nvJPEG (after the loader hands
        over the encoded bytes) or in the loader's worker processes."""
        decode = self.config.decode
        if decode == "auto":
            decode = "device" if device.type == "cuda" else "worker"
        dataset = ShardDataset(self.train_set, self.config.image_size, decode, self.tokenize, samples=self.train_samples)
        workers = self.config.num_workers
        if workers is None:
            workers = loader_workers(self.trainer)
        return dataset, self.train_set.num_captions if self.with_text else 0, workers

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        # Shards: what decoding each batch took travels with it, on the host.
        if "decode_counts" in batch:
            self.decode_counts += DecodeCounts.from_tensor(batch.pop("decode_counts"))
        return batch

    # Where the data order stands travels in checkpoints: a run resumed mid-epoch goes on
    # with the next batch of the same permutation, as an unbroken run would. The global
    # batch (per process x processes) travels too: the optimiser's and the schedules' state
    # is counted in its steps, so ``fit`` refuses to resume with another (a checkpoint
    # written before it was recorded has none, and resumes unchecked).
    def state_dict(self) -> dict[str, int]:
        if self.trainer is None:
            return {}
        global_batch = self.config.batch_size * self.trainer.world_size
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "images_done": progress.processed * global_batch, "global_batch": global_batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not state:
            return
        # Counted in images, so a run resumed with another batch size or number of processes
        # goes on at the first image of the epoch's permutation it has not trained on.
        world = self.trainer.world_size if self.trainer is not None else 1
        self._resume = (state["epoch"], state["images_done"] // (self.config.batch_size * world))
        if self.train_sampler is not None:
            self.train_sampler.resume = self._resume

    def teardown(self, stage: str) -> None:
        self._resume = None  # a later fit with this data module starts from its beginning
        counts = self.decode_counts
        # One warning each for the whole run, never a crash mid-epoch.
        if counts.replaced:
            warnings.warn(
                f"{counts.replaced} training image(s) in {self.config.root} could not be decoded; each was replaced "
                "by another image of its batch. Rebuild those shards with `python -m ssl_zoo shards` to drop them.",
                stacklevel=2,
            )
        if self.decode_on == "device" and counts.one_by_one > MAX_ONE_BY_ONE * counts.images:
            warnings.warn(
                f"{counts.one_by_one} of {counts.images} training images ({100 * counts.one_by_one / counts.images:.1f} %) "
                f"in {self.config.root} were decoded one at a time on the CPU, not by the batched decoder on the device: "
                "they are not JPEG, or JPEGs nvJPEG refuses (CMYK, say). Remake the shards as JPEG with `python -m "
                "ssl_zoo shards --from folder ...`, or decode in the loader workers (--data.decode worker).",
                stacklevel=2,
            )

    def eval_dataloader(self, images: ImageSet) -> DataLoader:
        """Batches of a labelled set in order, for validation and the monitors."""
        dataset = InMemoryDataset(images.images, images.labels)
        return DataLoader(dataset, batch_size=self.config.batch_size, shuffle=False, collate_fn=_already_batched)

    def val_dataloader(self) -> list[DataLoader]:
        """The validation set; under W processes, process r takes its r-th contiguous part.

        Each image is scored once: the probe's accuracy is logged with ``sync_dist``, and
        Lightning's epoch mean weighs each batch by its size and sums the weights over the
        processes too, so the parts give the top-1 of the whole set. Every process must
        validate at least one batch (the first validation forward of DDP is collective).
        """
        val = self.val_set
        if val is None or val.labels is None:
            return []
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        if world > 1:
            if len(val) < world:
                raise RecipeError(
                    f"data.val_size {len(val)} is smaller than the {world} processes: each validates a part of "
                    "the validation set. Raise --data.val_size or use fewer devices."
                )
            part = torch.arange(len(val)).tensor_split(world)[trainer.global_rank]  # sizes differ by 1 at most
            val = ImageSet(val.images[part], val.labels[part], classes=val.classes, name=f"{val.name} part {trainer.global_rank + 1}/{world}")
        return [self.eval_dataloader(val)]
