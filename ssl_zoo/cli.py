"""Command line: ``python -m ssl_zoo {fit,recipes} ...``."""

from __future__ import annotations

import sys

import yaml

from ssl_zoo.errors import SslZooError

USAGE = """\
ssl_zoo: SimCLR, BYOL and CLIP trained and compared side by side.

usage:
  python -m ssl_zoo recipes                      list the bundled recipes
  python -m ssl_zoo fit --recipe NAME [--KEY VALUE ...]
                                                 train a recipe; any key can be overridden
  python -m ssl_zoo fit --help                   every recipe key, its type and default

examples:
  python -m ssl_zoo fit --recipe quickstart      SimCLR on the embedded shapes data, CPU, minutes
  python -m ssl_zoo fit --recipe byol_shapes --trainer.max_epochs 5 --data.batch_size 128
  python -m ssl_zoo fit --recipe simclr_resnet18_cifar10 --data.root ../shared/data
  python -m ssl_zoo fit --recipe my_recipe.yaml  a recipe file of your own

A run writes runs/<recipe>/version_N/: checkpoints/last.ckpt, TensorBoard logs
(tensorboard --logdir runs) and recipe.yaml, the resolved recipe.
"""


def list_recipes() -> str:
    from ssl_zoo.recipe import available_recipes

    lines = []
    for name, path in available_recipes().items():
        values = yaml.safe_load(path.read_text()) or {}
        lines.append(f"  {name:<26} {values.get('method', '?'):<7} {values.get('description', '')}")
    return "recipes (python -m ssl_zoo fit --recipe NAME):\n" + "\n".join(lines)


def format_summary(summary) -> str:
    def percent(value: float | None) -> str:
        return f"{100 * value:5.1f} %" if value is not None else "  n/a"

    minutes, seconds = divmod(summary.wall_seconds, 60)
    lines = [
        f"Done: {summary.epochs} epochs, {summary.steps} steps in {int(minutes)}m{seconds:04.1f}s "
        f"on {summary.device} ({summary.images_per_second:,.0f} training images/s).",
        f"  final training loss      {summary.final_loss:.4f}" if summary.final_loss is not None else "",
    ]
    if summary.knn_top1_random_init is not None:
        trained = percent(summary.knn_top1) if summary.knn_top1 is not None else "not measured (no validation epoch ran)"
        lines.append(
            f"  kNN top-1 (val)          {trained}   "
            f"random-init backbone: {percent(summary.knn_top1_random_init)}"
        )
    if summary.probe_top1 is not None:
        lines.append(f"  online probe top-1 (val) {percent(summary.probe_top1)}")
    lines += [
        f"  checkpoint               {summary.checkpoint}",
        f"  resolved recipe          {summary.run_dir / 'recipe.yaml'}",
        f"  TensorBoard logs         {summary.run_dir}   (tensorboard --logdir {summary.run_dir.parent})",
    ]
    return "\n".join(line for line in lines if line)


def fit_command(argv: list[str]) -> int:
    from ssl_zoo.recipe import parse_recipe, recipe_parser

    if not argv or "-h" in argv or "--help" in argv:
        recipe_parser().print_help()
        return 0
    recipe = parse_recipe(argv)
    from ssl_zoo.train import fit

    print(f"Training recipe '{recipe.name}': {recipe.method} with {recipe.backbone} on {recipe.data.name}.")
    print(format_summary(fit(recipe)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command, rest = (argv[0], argv[1:]) if argv else ("--help", [])
    try:
        if command in ("-h", "--help", "help"):
            print(USAGE)
            return 0
        if command == "recipes":
            print(list_recipes())
            return 0
        if command == "fit":
            return fit_command(rest)
        print(f"ssl_zoo: unknown command '{command}'. Commands: fit, recipes.\n\n{USAGE}", file=sys.stderr)
        return 2
    except SslZooError as error:
        print(f"ssl_zoo: error: {error}", file=sys.stderr)
        return 2
