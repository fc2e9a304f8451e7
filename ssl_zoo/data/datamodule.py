"""Dataset -> uint8 batches on the device.

The data module asks the recipe's dataset (its registered ``DatasetSpec``) for its
training split as ``TrainingData``: decoded into memory and indexed a whole batch at a
time (what a dataset gets by default), or read from disk and decoded batch by batch.
Either way uint8 batches reach the device and become views there, in the
method's ``on_after_batch_transfer``; the same ``EpochBatchSampler`` orders them all.
The monitors' validation split and kNN bank are decoded ``ImageSet``s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from ssl_zoo.data.decode import DecodeCounts
from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.data.spec import dataset_spec
from ssl_zoo.data.training import InMemoryDataset, InMemoryTraining, TrainingData, already_batched
from ssl_zoo.errors import RecipeError
from ssl_zoo.recipe import DataConfig, Recipe
from ssl_zoo.registry import DATASETS, METHODS


def load_split(config: DataConfig, split: str, seed: int = 0) -> ImageSet:
    """Decode one split of the configured dataset."""
    return dataset_spec(config.name).load(config, split, seed)


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



class ImageDataModule(pl.LightningDataModule):
    """Training batches of uint8 images (+ labels, + tokens for CLIP) and labelled
    evaluation sets for the monitors (kNN memory bank and validation split)."""

    @classmethod
    def for_recipe(cls, recipe: Recipe) -> ImageDataModule:
        """The recipe's data, with captions tokenized by its method when it trains on text."""
        method = METHODS[recipe.method]
        tokenize = method.caption_tokenizer(recipe.method_config) if method.uses_text else None
        return cls(recipe.data, tokenize=tokenize, seed=recipe.trainer.seed)

    def __init__(self, config: DataConfig, tokenize: Callable[[list[str]], Tensor] | None = None, seed: int = 0) -> None:
        """``tokenize``: a text method's caption tokenizer (strings -> (n, L) token ids);
        with it, training batches carry ``tokens``, one caption of each image."""
        super().__init__()
        self.config = config
        self.tokenize = tokenize
        self.with_text = tokenize is not None
        self.seed = seed
        self.train_data: TrainingData | None = None
        self.val_set: ImageSet | None = None
        self.bank_set: ImageSet | None = None
        self.unmonitored: str | None = None  # why there is no kNN bank, when there is none
        self.train_sampler: EpochBatchSampler | None = None
        self._resume: tuple[int, int] | None = None  # (epoch, batches done) of a resumed run

    @property
    def train_set(self) -> Any:
        """The training split itself: an ``ImageSet``, or what the dataset reads batches from."""
        return self.train_data.split if self.train_data is not None else None

    @train_set.setter
    def train_set(self, images: ImageSet) -> None:
        # A training split decoded elsewhere (a benchmark swaps one in), trained on in memory.
        self.train_data = InMemoryTraining(images, self.config)

    @property
    def decode_on(self) -> str | None:
        """Where the training images were decoded ("device" or "workers"); None: before training."""
        return self.train_data.decode_on if self.train_data is not None else None

    @property
    def decode_counts(self) -> DecodeCounts:
        """What decoding the training batches took (nothing for data decoded before training)."""
        return self.train_data.decode_counts if self.train_data is not None else DecodeCounts()

    def setup(self, stage: str | None = None, monitor_sets: bool = True) -> None:
        """Decode the training data and, with ``monitor_sets``, the monitors' labelled sets
        (validation split, kNN bank). Under several processes, ``fit`` leaves those to the
        process that runs the monitors (global rank 0); Lightning's own call inside
        ``trainer.fit`` then hands every process rank 0's validation set, once the
        processes are connected (the online probe validates on a part of it each)."""
        trainer = self.trainer
        if self.train_data is not None:
            if stage == "fit" and trainer is not None and trainer.world_size > 1 and torch.distributed.is_initialized():
                # Sent, not decoded again: rank 0 decoded it (a whole split of JPEGs, for data read from disk).
                self.val_set = trainer.strategy.broadcast(self.val_set, src=0)
            return
        spec = dataset_spec(self.config.name)
        train_split = self.config.train_split or spec.splits[0]
        val_split = self.config.val_split or spec.splits[1]
        self.train_data = spec.training(self.config, train_split, self.seed)
        if self.with_text and not self.train_data.has_captions:
            # Those with captions first, then those that may be given some.
            captioned = [f"{name} {spec.captions_hint}".strip() for name, spec in
                         sorted(DATASETS.items(), key=lambda item: item[1].retrieval_split is None)
                         if spec.retrieval_split or spec.captions_hint]
            raise RecipeError(
                f"A method with text (CLIP) needs captions, and dataset '{self.config.name}' ({self.config.root}) has "
                f"none. Use {', '.join(captioned[:-1])} or {captioned[-1]}."
            )
        if self.config.batch_size > len(self.train_data):
            raise RecipeError(
                f"data.batch_size {self.config.batch_size} is larger than the training "
                f"split '{train_split}' of {self.config.name} ({len(self.train_data)} images). "
                "Lower --data.batch_size."
            )
        if not monitor_sets:
            return
        where = f"{self.config.name} ({self.config.root})"
        if not self.train_data.has_labels and spec.eval_splits is None:  # no labels anywhere: no validation split decoded
            self.unmonitored = f"the training images of {where} have no labels"
            return
        self.val_set = load_split(self.config, val_split, self.seed) if val_split else None
        if self.val_set is not None:
            self.val_set = self.val_set.subset(self.config.val_size, self.seed)
        # Labelled training images for the kNN monitor, when there is a labelled split to score.
        if self.val_set is not None and self.val_set.labels is not None:
            self.bank_set = self.train_data.labelled_bank(self.config.knn_bank_size, self.seed)
        if self.bank_set is None:
            missing = "no validation split" if self.val_set is None else "no labels on its validation images"
            self.unmonitored = f"{where} has {missing}"

    @property
    def num_classes(self) -> int:
        """Classes the monitors can score (0 when the data has no labels, or when this
        process left the monitors' sets to rank 0: ``fit`` hands their count over)."""
        self.setup()
        return self.bank_set.num_classes if self.bank_set is not None else 0

    def train_dataloader(self) -> Iterable[dict[str, Tensor]]:
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        batches = self.train_data.batches(device, self.tokenize, trainer)
        # Every batch has the same size (incomplete ones are dropped): no recompiles, fair negatives.
        self.train_sampler = EpochBatchSampler(
            len(batches.dataset), self.config.batch_size, self.seed, num_captions=batches.num_captions,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            current_epoch=(lambda: trainer.current_epoch) if trainer is not None else (lambda: 0),
        )
        self.train_sampler.resume = self._resume
        if len(self.train_sampler) == 0:
            raise RecipeError(
                f"data.batch_size {self.config.batch_size} x {self.train_sampler.world_size} processes is "
                f"larger than the training split of {self.config.name} ({len(batches.dataset)} images): no batch is "
                "left for an epoch. Lower --data.batch_size or use fewer devices."
            )
        loader = DataLoader(
            batches.dataset,
            batch_sampler=self.train_sampler,
            collate_fn=already_batched,
            num_workers=batches.workers,
            pin_memory=batches.on_host and torch.cuda.is_available(),
            persistent_workers=batches.workers > 0,
        )
        return batches.after_loader(loader)

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        return self.train_data.before_transfer(batch) if self.train_data is not None else batch

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
        if self.train_data is not None:
            self.train_data.finish()

    def eval_dataloader(self, images: ImageSet) -> DataLoader:
        """Batches of a labelled set in order, for validation and the monitors."""
        dataset = InMemoryDataset(images.images, images.labels)
        return DataLoader(dataset, batch_size=self.config.batch_size, shuffle=False, collate_fn=already_batched)

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
