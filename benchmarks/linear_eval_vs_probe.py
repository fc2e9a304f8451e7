"""How far is the fast linear eval (L-BFGS on cached features) from a long, augmented probe?

The evaluation stage fits its linear classifier once on frozen features of un-augmented
images. Papers often report a linear probe trained for many epochs on augmented views
(random resized crop + flip) instead. This script measures both on the same checkpoint,
data and test split, and prints the gap:

    python benchmarks/linear_eval_vs_probe.py --ckpt runs/.../last.ckpt \
        --data shared_cifar10 --root ../shared/data --max-train 10000 --max-test 2000 --epochs 30
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from lightly.utils.scheduler import CosineWarmupScheduler

from ssl_zoo.augment import AugmentConfig, ViewAugment
from ssl_zoo.eval.linear import linear_eval, topk_accuracy
from ssl_zoo.environment import device_name
from ssl_zoo.eval.config import EvalConfig
from ssl_zoo.eval.data import load_labelled_splits
from ssl_zoo.eval.evaluator import Evaluator
from ssl_zoo.methods import load_method


def augmented_probe(evaluator: Evaluator, splits, epochs: int, batch_size: int, lr: float) -> float:
    """Top-1 of a linear layer trained by SGD on augmented views through the frozen backbone."""
    model, device = evaluator.model, evaluator.device
    recipe_augment = model.recipe.augment
    # The usual linear-probe views: random resized crop and flip, no colour changes.
    augment = ViewAugment(
        AugmentConfig(size=recipe_augment.size, jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0, 0.0),
                      mean=recipe_augment.mean, std=recipe_augment.std),
        num_views=1, seed=0,
    )
    train_images, train_labels = splits.train.images, splits.train.labels.to(device)
    # NOTE: as in MAE's linear probing, a BatchNorm without affine parameters standardises
    # the frozen features first (it folds into the linear layer at test time).
    probe = torch.nn.Sequential(
        torch.nn.BatchNorm1d(model.feature_dim, affine=False), torch.nn.Linear(model.feature_dim, splits.train.num_classes)
    ).to(device)
    optimizer = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    steps_per_epoch = max(len(train_images) // batch_size, 1)
    scheduler = CosineWarmupScheduler(optimizer, warmup_epochs=0, max_epochs=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(train_images), generator=generator)
        for step in range(steps_per_epoch):
            index = order[step * batch_size : (step + 1) * batch_size]
            with torch.no_grad():
                features = model.backbone(augment(train_images[index].to(device))[0])
            loss = F.cross_entropy(probe(features), train_labels[index.to(device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    probe.eval()
    with torch.no_grad():
        test_features = evaluator.features(splits.test, "test")
        return topk_accuracy(probe(test_features), splits.test.labels.to(device), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data")
    parser.add_argument("--root")
    parser.add_argument("--max-train", type=int)
    parser.add_argument("--max-test", type=int)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", help="write the row as JSON here too")
    args = parser.parse_args()

    config = EvalConfig(data=args.data, root=args.root, max_train=args.max_train, max_test=args.max_test, device=args.device)
    model = load_method(args.ckpt)
    splits = load_labelled_splits(model.recipe.data, config)
    if isinstance(splits, str):
        parser.error(splits)
    evaluator = Evaluator(model, config)

    started = time.perf_counter()
    train_x, test_x = evaluator.features(splits.train, "train"), evaluator.features(splits.test, "test")
    fast = linear_eval(train_x, splits.train.labels.to(evaluator.device), test_x, splits.test.labels.to(evaluator.device),
                       splits.train.num_classes)
    fast_seconds = time.perf_counter() - started

    started = time.perf_counter()
    probe_top1 = augmented_probe(evaluator, splits, args.epochs, args.batch_size, args.lr)
    probe_seconds = time.perf_counter() - started

    row = {
        "checkpoint": args.ckpt, "method": model.recipe.method, "backbone": model.recipe.backbone,
        "data": splits.info["name"], "num_train": len(splits.train), "num_test": len(splits.test),
        "device": device_name(evaluator.device),
        "linear_eval_top1": fast.top1, "linear_eval_seconds": round(fast_seconds, 1),
        "augmented_probe_top1": probe_top1, "augmented_probe_epochs": args.epochs,
        "augmented_probe_seconds": round(probe_seconds, 1),
        "gap_points": round(100 * (fast.top1 - probe_top1), 2),
    }
    print(f"device: {row['device']}; {row['data']}: {row['num_train']} train / {row['num_test']} test images")
    print("| evaluation | top-1 | seconds |")
    print("|---|---|---|")
    print(f"| linear eval on cached features (L-BFGS, stage default) | {100 * fast.top1:.2f} | {fast_seconds:.1f} |")
    print(f"| augmented linear probe, {args.epochs} epochs SGD | {100 * probe_top1:.2f} | {probe_seconds:.1f} |")
    print(f"gap (linear eval - probe): {row['gap_points']:+.2f} points")
    if args.out:
        with open(args.out, "w") as file:
            json.dump(row, file, indent=2)


if __name__ == "__main__":
    main()
