"""`eval --protocol features` against `eval --protocol probe`: time and top-1 on one checkpoint.

The evaluation stage's default linear top-1 fits a logistic regression once, with L-BFGS,
on frozen features of un-augmented images (``--protocol features``). The SimCLR and BYOL
papers' ImageNet numbers come from a linear layer trained by SGD for tens of epochs on
random-resized crops and flips through the frozen backbone (``--protocol probe``, with the
method's own paper settings: ``SSLMethod.linear_probe``). This script scores one checkpoint
both ways on the whole shared CIFAR-10 (50,000 training and 10,000 test images), in the same
run, and prints the time of each and the difference in top-1:

    python benchmarks/linear_eval_vs_probe.py --train-steps 300 --probe-epochs 10   # ~15 min, 2 cores
    python benchmarks/linear_eval_vs_probe.py --ckpt runs/.../last.ckpt             # the paper's epochs

Without ``--ckpt`` it first trains ``simclr_convnet4_cifar10`` for ``--train-steps`` steps.
Writes benchmarks/results/<date>_probe_vs_features_<device>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

from ssl_zoo.eval.config import EvalConfig
from ssl_zoo.eval.stage import evaluate
from ssl_zoo.methods import load_method
from ssl_zoo.recipe import parse_recipe
from ssl_zoo.training.train import fit

RESULTS = Path(__file__).parent / "results"
# The repository's JPEG copy of CIFAR-10, beside the checkout: the committed result was
# measured on it, so training and both protocols read it (the recipe itself reads
# torchvision's CIFAR-10).
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ON_SHARED = {"data": "shared_cifar10", "root": str(SHARED)}


def train(steps: int, folder: Path) -> Path:
    recipe = parse_recipe(["--recipe", "simclr_convnet4_cifar10", "--trainer.max_steps", str(steps),
                           "--data.name", ON_SHARED["data"], "--data.root", ON_SHARED["root"],
                           "--trainer.output_dir", str(folder)])
    return fit(recipe, enable_progress_bar=False).checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="a fit checkpoint (default: train simclr_convnet4_cifar10 first)")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--probe-epochs", type=int, help="the probe's epochs (default: the method's paper's)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if not (SHARED / "cifar10.npz").is_file():
        sys.exit(f"{SHARED / 'cifar10.npz'} not found: this benchmark scores on the repository's shared CIFAR-10 copy.")

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.ckpt) if args.ckpt else train(args.train_steps, Path(tmp))
        model = load_method(ckpt)
        rows = {}
        for protocol in ("features", "probe"):
            config = EvalConfig(protocol=protocol, probe_epochs=args.probe_epochs, device=args.device, **ON_SHARED)
            started = time.perf_counter()
            result = evaluate(model, config, with_text=False)
            rows[protocol] = {
                "linear_top1": result["metrics"]["linear_top1"], "knn_top1": result["metrics"]["knn_top1"],
                "seconds_total": round(time.perf_counter() - started, 1),
                "seconds_linear": result["seconds"].get("linear", result["seconds"].get("probe")),
                "seconds_features": result["seconds"]["features"], "linear": result["linear"],
            }
        data, device = result["data"], result["device"]

    features, probe = rows["features"], rows["probe"]
    print(f"{model.recipe.name} ({model.trained_steps} steps) on {data['name']}: {data['num_train']:,} train / "
          f"{data['num_test']:,} test images; {device}")
    print("| protocol | linear top-1 | seconds (linear part) | settings |\n|---|---|---|---|")
    print(f"| features | {100 * features['linear_top1']:.2f} % | {features['seconds_linear']:.1f} | {features['linear']['fit']} |")
    p = probe["linear"]
    print(f"| probe | {100 * probe['linear_top1']:.2f} % | {probe['seconds_linear']:.1f} | {p['epochs']} of {p['full_epochs']} "
          f"epochs, batch {p['batch_size']}, lr {p['lr']:g} ({p['source']}) |")
    gap = 100 * (features["linear_top1"] - probe["linear_top1"])
    ratio = probe["seconds_linear"] / features["seconds_linear"]
    print(f"features - probe: {gap:+.2f} points; the probe took {ratio:.1f}x the features protocol's time")
    out = RESULTS / f"{datetime.date.today()}_probe_vs_features_{'cpu' if device.startswith('cpu') else 'gpu'}.json"
    out.write_text(json.dumps({
        "command": "python benchmarks/linear_eval_vs_probe.py " + " ".join(sys.argv[1:]),
        "checkpoint": {"recipe": model.recipe.name, "steps": model.trained_steps, "path": str(args.ckpt) if args.ckpt else None},
        "data": {k: data[k] for k in ("name", "num_train", "num_test", "full_train", "full_test")}, "device": device,
        "protocols": rows, "features_minus_probe_points": round(gap, 2), "probe_time_ratio": round(ratio, 2),
    }, indent=2) + "\n")
    print(f"wrote {out.relative_to(Path(__file__).parent.parent)}")


if __name__ == "__main__":
    main()
