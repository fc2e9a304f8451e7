"""`ssl_zoo export` round trip: fit two steps, export, load into the plain library, compare.

For each backbone: the largest difference between ssl_zoo's features and the plain
library's (torchvision, timm), in ssl_zoo's channels-last layout and in the default one,
the export time against the baseline of reading the checkpoint itself (torch.load) in the
same run, and the exported files' size against the checkpoint's.

    python benchmarks/export_roundtrip.py     # 2 CPU cores: ~1 minute

The results go to ``benchmarks/results/<date>_<device>_export_roundtrip.json`` and a table
to stdout.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import timm
import torch
import torchvision
from safetensors.torch import load_file

from ssl_zoo.environment import device_name, versions
from ssl_zoo.export import export_checkpoint
from ssl_zoo.methods import load_method
from ssl_zoo.recipe import parse_recipe
from ssl_zoo.training.train import fit

RESULTS = Path(__file__).parent / "results"


def _without_fc(model: torch.nn.Module) -> torch.nn.Module:
    model.fc = torch.nn.Identity()
    return model


# (method, backbone, the plain library's constructor of the same network)
CASES: list[tuple[str, str, Callable[[], torch.nn.Module]]] = [
    ("simclr", "resnet50", lambda: _without_fc(torchvision.models.resnet50())),
    ("byol", "timm:convnext_tiny", lambda: timm.create_model("convnext_tiny", pretrained=False, num_classes=0)),
    ("simclr", "timm:vit_small_patch16_224",
     lambda: timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, img_size=32)),
    ("clip", "torchvision:resnet18", lambda: _without_fc(torchvision.models.get_model("resnet18", weights=None))),
]


def measure(method: str, backbone: str, plain: Callable[[], torch.nn.Module], root: Path) -> dict:
    recipe = parse_recipe([
        "--recipe", f"{method}_shapes", "--backbone", backbone, "--name", f"{method}_{backbone.replace(':', '_')}",
        "--data.num_images", "64", "--data.batch_size", "16", "--data.knn_bank_size", "64", "--augment.size", "32",
        "--trainer.max_steps", "2", "--trainer.accelerator", "cpu", "--trainer.check_val_every_n_epoch", "100",
        "--trainer.output_dir", str(root / "runs"),
    ])
    checkpoint = fit(recipe, enable_progress_bar=False).checkpoint
    started = time.perf_counter()
    torch.load(checkpoint, map_location="cpu", weights_only=True)
    load_seconds = time.perf_counter() - started
    out = root / recipe.name
    started = time.perf_counter()
    config = export_checkpoint(checkpoint, out)
    export_seconds = time.perf_counter() - started

    model = load_method(checkpoint)
    network = plain()
    network.load_state_dict(load_file(out / "backbone.safetensors"), strict=True)
    network.eval()
    images = model.eval_transform(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        ours = model(images)
        default_layout = network(images)
        same_layout = network.to(memory_format=torch.channels_last)(images)
    exported_bytes = sum(entry["bytes"] for entry in config["files"].values())
    return {
        "method": method, "backbone": backbone,
        "max_abs_diff_channels_last": (same_layout - ours).abs().max().item(),
        "max_abs_diff_default_layout": (default_layout - ours).abs().max().item(),
        "max_abs_feature": ours.abs().max().item(),
        "export_seconds": export_seconds, "checkpoint_load_seconds": load_seconds,
        "export_over_load": export_seconds / load_seconds,
        "files_mb": {name: entry["bytes"] / 1e6 for name, entry in config["files"].items()},
        "checkpoint_mb": checkpoint.stat().st_size / 1e6,
        "exported_over_checkpoint_bytes": exported_bytes / checkpoint.stat().st_size,
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(method, backbone, plain, Path(folder)) for method, backbone, plain in CASES]
    results = {"device": device_name(torch.device("cpu")), "date": date.today().isoformat(), "versions": versions(), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{results['date']}_cpu_export_roundtrip.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nExport round trip on {results['device']} (features of 8 images; baseline: torch.load of the checkpoint):")
    print(f"  {'method':7} {'backbone':28} {'max|diff| NHWC':>14} {'max|diff| NCHW':>14} {'max|feat|':>9} "
          f"{'export s':>8} {'load s':>7} {'export/load':>11} {'files MB':>8} {'ckpt MB':>7} {'files/ckpt':>10}")
    for row in rows:
        print(f"  {row['method']:7} {row['backbone']:28} {row['max_abs_diff_channels_last']:14.1e} "
              f"{row['max_abs_diff_default_layout']:14.1e} {row['max_abs_feature']:9.2f} {row['export_seconds']:8.2f} "
              f"{row['checkpoint_load_seconds']:7.2f} {row['export_over_load']:11.1f}x {sum(row['files_mb'].values()):8.1f} "
              f"{row['checkpoint_mb']:7.1f} {row['exported_over_checkpoint_bytes']:10.2f}")
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
