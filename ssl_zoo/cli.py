"""Command line: ``python -m ssl_zoo {recipes,fit,eval,bench,export,shards} ...``."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import NoReturn

import yaml

from ssl_zoo.atomic import atomic_write
from ssl_zoo.errors import SslZooError

USAGE = """\
ssl_zoo: SimCLR, BYOL, CLIP and DINO trained and compared side by side.

usage:
  python -m ssl_zoo recipes                      list the bundled recipes
  python -m ssl_zoo fit --recipe NAME [--KEY VALUE ...]
                                                 train a recipe; any key can be overridden
  python -m ssl_zoo fit --recipe NAME --resume   continue the latest run of NAME where it stopped
  python -m ssl_zoo fit --resume RUN_FOLDER      continue that run (runs/<recipe>/version_N)
  python -m ssl_zoo fit --help                   every recipe key, its type and default
  python -m ssl_zoo eval --ckpt PATH [--data NAME --root DIR] [--pairs NAME]
                                                 linear, kNN, zero-shot, retrieval, diagnostics
  python -m ssl_zoo eval --weights LIBRARY:NAME=FILE --data NAME [--root DIR]
                                                 the same for torchvision, timm or open_clip weights
  python -m ssl_zoo eval --ckpt PATH --few-shot 1,2,4,8,16 --shifts [--dense]
                                                 also few-shot probes, shifted test sets, dense zero-shot
  python -m ssl_zoo bench --recipes A B C [--budget 10m | --epochs N] [--out DIR]
                                                 train under one budget, evaluate, write a report
                                                 (--few-shot, --shifts and --dense add their sections)
  python -m ssl_zoo bench --resume DIR           go on with a bench that stopped, skipping what it finished
  python -m ssl_zoo export CKPT --out DIR        the backbone (and CLIP's text tower) as safetensors that
                                                 plain torchvision/timm/open_clip load, with config.json
  python -m ssl_zoo shards --from folder DIR|pairs FILE --out OUT --size S [--shard-size N] [--workers N]
                                                 write indexed WebDataset shards (data.name: shards)
  python -m ssl_zoo shards --index PATH          index existing shards (img2dataset's, say)

examples:
  python -m ssl_zoo fit --recipe quickstart      SimCLR on the embedded shapes data, CPU, minutes
  python -m ssl_zoo fit --recipe byol_shapes --trainer.max_epochs 5 --data.batch_size 128
  python -m ssl_zoo fit --recipe simclr_resnet18_cifar10   CIFAR-10 from torchvision, downloaded once into data/cifar10
  python -m ssl_zoo fit --recipe my_recipe.yaml  a recipe file of your own

A run writes runs/<recipe>/version_N/: checkpoints/last.ckpt, TensorBoard logs
(tensorboard --logdir runs) and recipe.yaml, the resolved recipe.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but bad input takes the command line's one error path (exit 2, one
    paragraph, no usage dump): every error, a missing required option too, raises."""

    def error(self, message: str) -> NoReturn:
        raise SslZooError(f"{self.prog}: {message}. See `python -m {self.prog} --help`.")


def list_recipes() -> str:
    from ssl_zoo.recipe import ReferenceConfig, available_recipes

    lines = []
    for name, path in available_recipes().items():
        values = yaml.safe_load(path.read_text()) or {}
        lines.append(f"  {name:<26} {values.get('method', '?'):<7} {values.get('description', '')}")
        reference = ReferenceConfig(**values["reference"]) if "reference" in values else None
        lines.append(f"  {'':<26} {'':<7} reference: {reference.describe() if reference else 'not given'}")
    from ssl_zoo.registry import DATASETS, METHODS

    return "\n".join([
        "recipes (python -m ssl_zoo fit --recipe NAME):", *lines, "",
        f"methods (method: NAME):    {', '.join(METHODS.names())}",
        f"datasets (data.name: NAME): {', '.join(DATASETS.names())}",
    ])


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
            + (f"at the start ({summary.init_weights}): " if summary.init_weights else "random-init backbone: ")
            + percent(summary.knn_top1_random_init)
        )
    if summary.probe_top1 is not None:
        lines.append(f"  online probe top-1 (val) {percent(summary.probe_top1)}")
    if summary.decoding is not None and summary.decoding.images:
        counts = summary.decoding
        lines.append(
            f"  decoding ({summary.decode_on:<7})        {counts.images:,} images; {counts.one_by_one:,} one at a time on the CPU "
            f"({100 * counts.one_by_one / counts.images:.1f} %), {counts.replaced:,} undecodable and replaced"
        )
    lines += [
        f"  checkpoint               {summary.checkpoint}",
        f"  resolved recipe          {summary.run_dir / 'recipe.yaml'}",
        f"  TensorBoard logs         {summary.run_dir}   (tensorboard --logdir {summary.run_dir.parent})",
    ]
    return "\n".join(line for line in lines if line)


def _pop_resume(argv: list[str]) -> tuple[list[str], bool, str | None]:
    """Take ``--resume [PATH]`` out of the fit arguments: (the rest, resume?, PATH)."""
    if "--resume" not in argv:
        return argv, False, None
    at = argv.index("--resume")
    path = argv[at + 1] if at + 1 < len(argv) and not argv[at + 1].startswith("--") else None
    return argv[:at] + argv[at + (2 if path else 1) :], True, path


def fit_command(argv: list[str]) -> int:
    from ssl_zoo.recipe import parse_recipe, recipe_parser

    if not argv or "-h" in argv or "--help" in argv:
        recipe_parser().print_help()
        print("\n  --resume [PATH]       continue a run exactly where it stopped: PATH is a run folder or its\n"
              "                        last.ckpt; without PATH, the latest run of --recipe under trainer.output_dir")
        return 0
    from ssl_zoo.training.checkpointing import checkpoint_in, latest_checkpoint

    argv, resume, resume_path = _pop_resume(argv)
    checkpoint = checkpoint_in(resume_path) if resume_path else None
    if resume and "--recipe" not in argv:
        if checkpoint is None:
            raise SslZooError("fit --resume needs a run folder (fit --resume runs/<recipe>/version_N) or --recipe NAME.")
        saved = checkpoint.parent.parent / "recipe.yaml"  # the run folder's resolved recipe
        if not saved.is_file():
            raise SslZooError(f"Cannot resume from '{resume_path}': its run folder has no recipe.yaml. Add --recipe NAME.")
        argv = ["--recipe", str(saved), *argv]
    recipe = parse_recipe(argv)
    if resume and checkpoint is None:
        checkpoint = latest_checkpoint(recipe.trainer.output_dir, recipe.name)
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    from ssl_zoo.training.train import fit

    # Under several processes, each runs this command (Lightning starts a node's others with
    # it); one speaks for the run. Before the trainer exists, the rank is the launcher's
    # environment's (LOCAL_RANK, RANK...); the summary knows the process's global rank.
    if rank_zero_only.rank == 0:
        action = f"Resuming from {checkpoint}" if checkpoint else "Training"
        print(f"{action}: recipe '{recipe.name}', {recipe.method} with {recipe.backbone} on {recipe.data.name}.", flush=True)
    summary = fit(recipe, resume=checkpoint)
    if summary.global_rank == 0:
        print(format_summary(summary))
    return 0


DEFAULT_CACHE = Path("~/.cache/ssl_zoo/features")


def positive_int(text: str) -> int:
    """An argparse type: an integer of 1 or more."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1 or str(value) != text.strip():
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of 1 or more")
    return value


def shots_list(text: str) -> tuple[int, ...]:
    """An argparse type: '1,2,4,8,16' -> (1, 2, 4, 8, 16), each a whole number of 1 or more, none twice."""
    try:
        shots = tuple(positive_int(part) for part in text.split(","))
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{error} (give k labelled images per class as a list such as 1,2,4,8,16)") from None
    if len(set(shots)) != len(shots):
        raise argparse.ArgumentTypeError(f"'{text}' names a k twice")
    return tuple(sorted(shots))


def eval_parser() -> _Parser:
    from ssl_zoo.eval.config import EvalConfig

    defaults = EvalConfig()
    parser = _Parser(
        prog="ssl_zoo eval",
        description="Score a checkpoint, or weights made elsewhere, with the common evaluation stage: linear "
        "eval and kNN on frozen features (cached), zero-shot and retrieval for models with text, "
        "representation diagnostics.",
    )
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--ckpt", help="a checkpoint written by fit (…/checkpoints/last.ckpt)")
    model.add_argument("--weights", metavar="LIBRARY:NAME=FILE",
                       help="weights fit did not make: torchvision:resnet50=FILE, timm:NAME=FILE or open_clip:RN50=FILE "
                            "(read locally, nothing downloads); needs --data")
    parser.add_argument("--input-size", type=int,
                        help="--weights only: the side images are resized to (default: the weights' own, often 224)")
    parser.add_argument("--data-recipe", metavar="RECIPE",
                        help="--weights only: take the evaluation data's settings (image size, shapes' count) from this "
                             "recipe's data section, as bench did (default: the dataset's defaults at the input size)")
    parser.add_argument("--data", help="labelled dataset for linear/kNN/zero-shot (default: the recipe's)")
    parser.add_argument("--root", help="its folder (default: the recipe's data.root)")
    parser.add_argument("--val-root", help="shards: the validation shards (default: the recipe's data.val_root, or else the "
                                           "part of --root held out from training)")
    parser.add_argument("--pairs", help="image-text dataset for retrieval, models with text only (default: the recipe's if captioned)")
    parser.add_argument("--pairs-root", help="its folder (default: the recipe's data.root)")
    parser.add_argument("--max-train", type=int, help="evaluate on a seeded subset of the training split")
    parser.add_argument("--max-test", type=int, help="evaluate on a seeded subset of the test split")
    parser.add_argument("--protocol", choices=("features", "probe"), default=defaults.protocol,
                        help="linear top-1 by 'features' (logistic regression on frozen features, fast; default) or "
                             "'probe' (SGD on augmented crops through the frozen backbone, the papers' protocol)")
    parser.add_argument("--probe-epochs", type=int, help="--protocol probe: epochs (default: its source's)")
    parser.add_argument("--templates", help="zero-shot prompt templates: a text file, one per line, with {}")
    parser.add_argument("--classnames", help="zero-shot class names: a text file, one a line, in label order "
                                             "(default: the dataset's; ImageNet WordNet ids get CLIP's names)")
    parser.add_argument("--dense", action="store_true",
                        help="models with text: dense zero-shot segmentation, each position of the backbone's last map "
                             "labelled by its nearest class prompt (background its own class), mean IoU and pixel accuracy "
                             "on the masks (shapes), beside chance and a per-position linear probe")
    parser.add_argument("--dense-probe-positions", type=int, default=defaults.dense_probe_positions,
                        help="--dense: training pixels the linear probe fits on (default: %(default)s)")
    parser.add_argument("--few-shot", metavar="K,K,...", type=shots_list, default=(),
                        help="few-shot linear probes: logistic regression on k labelled training images per class, "
                             "for each k (e.g. 1,2,4,8,16), scored on the whole test split")
    parser.add_argument("--few-shot-draws", type=positive_int, default=defaults.few_shot_draws,
                        help="seeded draws of k images per class, for the mean and its 95 %% interval (default: %(default)s)")
    parser.add_argument("--shifts", action="store_true",
                        help="score linear, kNN and zero-shot on shifted test sets: shapes' sketches, unseen textures and "
                             "scales; any dataset's test split under noise, blur, contrast and JPEG at 3 severities")
    parser.add_argument("--num-workers", type=int, help="loader processes decoding shard splits (default: every core)")
    parser.add_argument("--in-memory-features-mib", type=int,
                        help="shard features larger than this are fitted in mini-batches from their file, not by "
                             "L-BFGS in memory (default: 40 %% of free GPU memory, a quarter of available host memory)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="feature cache folder (default: %(default)s)")
    parser.add_argument("--no-cache", action="store_true", help="compute features without reading or writing the cache")
    parser.add_argument("--device", default=defaults.device, help="cpu, cuda or auto (default)")
    parser.add_argument("--out", help="results JSON (default: <run folder>/eval/<data>.json)")
    return parser


def format_eval(result: dict) -> str:
    lines = [f"{result['label']} ({result['method']}, {result['backbone']}) on {result['device']}:"]
    for name, value in result["metrics"].items():
        if name.startswith(("few_shot_", "shift_")):  # in their own tables below
            continue
        is_accuracy = name.endswith(("top1", "top5", "miou", "pixel_acc")) or re.search(r"_r\d+$", name)
        shown = f"{100 * value:6.2f} %" if is_accuracy else f"{value:.4g}"
        if name in result.get("intervals", {}):
            low, high = result["intervals"][name]
            shown += f"  (95 % CI {100 * low:.2f}-{100 * high:.2f})"
        lines.append(f"  {name:<22} {shown}")
    lines += [f"  skipped {what}: {why}" for what, why in result["skipped"].items()]
    if result.get("few_shot"):
        lines += few_shot_lines(result["few_shot"])
    if result.get("shift"):
        lines += shift_lines(result["shift"])
    linear = result.get("linear")
    if linear:
        how = linear.get("fit") or f"{linear['epochs']} of {linear['full_epochs']} epochs, batch {linear['batch_size']}, lr {linear['lr']:g}"
        lines.append(f"  linear protocol        {linear['protocol']} ({how}; {linear['source']})")
    if result.get("zero_shot", {}).get("warning"):
        lines.append(f"  zero-shot warning      {result['zero_shot']['warning']}")
    lines.append(f"  took {result['seconds']['total']:.1f} s (feature cache: {result['feature_cache']['hits']} hits)")
    return "\n".join(lines)


def few_shot_lines(few_shot: dict) -> list[str]:
    """Top-1 per k (mean of the draws, 95 % interval), and the k that matches zero-shot."""
    lines = [f"  few-shot linear probe   top-1, mean of {few_shot['draws']} draws (95 % CI over draws)"]
    for k, scored in few_shot["top1"].items():
        low, high = scored["interval"]
        lines.append(f"    k={k:<3} per class       {100 * scored['mean']:6.2f} %  ({100 * low:.2f}-{100 * high:.2f})")
    if "matches_zero_shot" in few_shot:
        matched, zero_shot = few_shot["matches_zero_shot"], 100 * few_shot["zero_shot_top1"]
        smallest, largest = few_shot["shots"][0], few_shot["shots"][-1]
        if matched["first_k"] is None:
            lines.append(f"    matches zero-shot     at no k up to {largest} (zero-shot {zero_shot:.2f} %)")
        elif matched["first_k"] == smallest:
            lines.append(f"    matches zero-shot     at k <= {smallest} (zero-shot {zero_shot:.2f} %)")
        else:
            lines.append(f"    matches zero-shot     at k = {matched['interpolated_k']:.1f} (interpolated in log k; "
                         f"first k at or above: {matched['first_k']}; zero-shot {zero_shot:.2f} %)")
    return lines


def shift_lines(shift: dict) -> list[str]:
    """Top-1 per protocol on the test split and on each shifted set."""
    protocols = [p for p in ("linear_top1", "knn_top1", "zero_shot_top1") if p in shift["in_distribution"]]
    header = "".join(f"{p.removesuffix('_top1'):>11}" for p in protocols)
    rows = [("test split", shift["in_distribution"]), *shift["sets"].items(), ("corruptions, mean", shift["corruption_mean"])]
    lines = [f"  distribution shift      top-1 %{header}"]
    lines += [f"    {name:<27}" + "".join(f"{100 * scores[p]:11.2f}" for p in protocols) for name, scores in rows]
    return lines


def _parse(parser: _Parser, argv: list[str]) -> tuple[argparse.Namespace, list[str]] | None:
    """Known options and the rest; None when help was asked for (and printed). Bad values
    raise SslZooError (``_Parser.error``)."""
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        return None
    return parser.parse_known_args(argv)


def _parse_all(parser: _Parser, argv: list[str]) -> argparse.Namespace | None:
    """Every argument as the parser's own (any other is an unknown option); None when help was printed."""
    parsed = _parse(parser, argv)
    if parsed is None:
        return None
    args, rest = parsed
    if rest:
        raise _unknown_option(parser, rest[0])
    return args


def _unknown_option(parser: _Parser, option: str) -> SslZooError:
    what = f"unknown option {option}" if option.startswith("-") else f"unexpected argument '{option}'"
    return SslZooError(f"{parser.prog}: {what}. See `python -m {parser.prog} --help`.")


def join_processes(config) -> bool:
    """Under torchrun (WORLD_SIZE > 1): join the process group, each process on its own GPU
    (LOCAL_RANK), so that every process extracts its slice of each streamed split into the
    one feature file. Every process then scores the same features; process 0 reports.
    Returns whether this process reports (writes and prints the results)."""
    import os

    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True
    on_gpu = torch.cuda.is_available() and config.device != "cpu"
    if on_gpu:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        config.device = f"cuda:{local_rank}"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if on_gpu else "gloo")
    return torch.distributed.get_rank() == 0


def eval_command(argv: list[str]) -> int:
    from ssl_zoo.eval.config import EvalConfig
    from ssl_zoo.eval.imported import WeightsSource
    from ssl_zoo.eval.stage import evaluate_checkpoint, evaluate_weights, write_tensorboard
    from ssl_zoo.eval.zero_shot import load_templates

    parser = eval_parser()
    args = _parse_all(parser, argv)
    if args is None:
        return 0
    if args.dense_probe_positions < 1:
        raise SslZooError(f"eval: --dense-probe-positions {args.dense_probe_positions} fits the probe on no pixel; give 1 or more.")
    config = EvalConfig(
        data=args.data, root=args.root, val_root=args.val_root, pairs=args.pairs, pairs_root=args.pairs_root,
        max_train=args.max_train, max_test=args.max_test, device=args.device, data_recipe=args.data_recipe,
        cache_dir=None if args.no_cache else args.cache_dir, protocol=args.protocol, probe_epochs=args.probe_epochs,
        classnames=args.classnames, num_workers=args.num_workers, in_memory_features_mib=args.in_memory_features_mib,
        few_shot=args.few_shot, few_shot_draws=args.few_shot_draws, shifts=args.shifts,
        dense=args.dense, dense_probe_positions=args.dense_probe_positions,
    )
    if args.templates:
        config.templates = load_templates(args.templates)
    is_reporter = join_processes(config)
    if args.weights:
        weights = WeightsSource.parse(args.weights)
        result = evaluate_weights(weights, config, input_size=args.input_size)
        in_run_folder, run_dir = False, Path("runs") / "imported" / f"{weights.library}_{weights.name}"
    else:
        if args.input_size or args.data_recipe:
            raise SslZooError("eval: --input-size and --data-recipe apply to --weights; a checkpoint is evaluated "
                              "at its recipe's size, on its recipe's data.")
        result = evaluate_checkpoint(args.ckpt, config)
        ckpt = Path(args.ckpt)
        in_run_folder = ckpt.parent.name == "checkpoints"  # runs/<recipe>/version_N/checkpoints/
        run_dir = ckpt.parent.parent if in_run_folder else ckpt.parent
    import torch.distributed

    if torch.distributed.is_initialized():  # every process has scored: leave the group
        torch.distributed.destroy_process_group()
    if not is_reporter:
        return 0
    data_name = result.get("data", result.get("pairs", {})).get("name", "eval")
    out = Path(args.out) if args.out else run_dir / "eval" / f"{data_name}.json"
    atomic_write(out, json.dumps(result, indent=2))
    if in_run_folder:  # beside the run's own logs; never into a folder that is not a run's
        write_tensorboard(result, run_dir)
    print(format_eval(result))
    print(f"  results                {out}")
    return 0


BENCH_DEFAULT_RECIPES = ["simclr_shapes", "byol_shapes", "clip_shapes"]
# Training steps per run of the default bench: the recipes above are tuned for it, and the
# whole job (four runs, five evaluations, the report) takes ~7 minutes on 2 CPU cores.
BENCH_DEFAULT_BUDGET = "90s"


def bench_parser() -> _Parser:
    parser = _Parser(
        prog="ssl_zoo bench",
        description="Train several recipes under one budget, evaluate them (and a supervised and a "
        "random-init baseline) with the same stage, and write report.md, report.html and results.json. "
        "Any other --section.key VALUE is a recipe override applied to every recipe.",
    )
    parser.add_argument("--recipes", nargs="+", default=BENCH_DEFAULT_RECIPES, help="recipe names or files (default: %(default)s)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget", help=f"equal wall clock of training per run: 90s, 10m, 1h (default: {BENCH_DEFAULT_BUDGET})")
    budget.add_argument("--epochs", type=int, help="equal epochs per run instead")
    parser.add_argument("--out", default="runs/bench", help="report folder (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="train every recipe and baseline N times (seeds trainer.seed, +1, ...) and report "
                        "mean ± std (default: %(default)s)")
    parser.add_argument("--eval-data", help="labelled dataset every run is scored on (default: the first recipe's labelled data)")
    parser.add_argument("--eval-root", help="its folder")
    parser.add_argument("--max-train", type=int, help="score on a seeded subset of its training split")
    parser.add_argument("--max-test", type=int, help="score on a seeded subset of its test split")
    parser.add_argument("--protocol", choices=("features", "probe"), default="features",
                        help="linear top-1 by 'features' (default) or 'probe' (the papers' protocol; see eval --help)")
    parser.add_argument("--dense", action="store_true",
                        help="also score the runs with a text tower on dense zero-shot segmentation (see eval --help; "
                             "about a minute per run on shapes on 2 CPU cores)")
    parser.add_argument("--few-shot", metavar="K,K,...", type=shots_list, default=(),
                        help="also score few-shot linear probes at these k per class (see eval --help)")
    parser.add_argument("--shifts", action="store_true", help="also score every run on shifted test sets (see eval --help)")
    parser.add_argument("--no-baselines", action="store_true", help="skip the supervised baseline (random init is always scored)")
    parser.add_argument("--weights", action="append", default=[], metavar="LIBRARY:NAME=FILE",
                        help="weights made elsewhere to score beside the runs (repeatable): torchvision:resnet50=FILE, "
                             "timm:NAME=FILE, open_clip:RN50=FILE")
    parser.add_argument("--input-size", type=int, help="the side --weights models see (default: each one's own)")
    parser.add_argument("--device", default="auto", help="evaluation device: cpu, cuda or auto (default)")
    parser.add_argument("--from-results", metavar="RESULTS_JSON",
                        help="evaluate the runs of an earlier bench again and rewrite its report, without retraining")
    parser.add_argument("--resume", metavar="OUT",
                        help="go on with a bench that stopped (killed, crashed) in its --out folder OUT, with the settings "
                             "it started with: finished runs and evaluations are kept, a run cut short continues from "
                             "its last checkpoint. Run it from the folder the bench was started in.")
    return parser


def bench_command(argv: list[str]) -> int:
    from ssl_zoo.bench import BenchConfig, run_bench
    from ssl_zoo.training.budget import parse_budget
    from ssl_zoo.eval.config import EvalConfig

    parser = bench_parser()
    parsed = _parse(parser, argv)
    if parsed is None:
        return 0
    args, overrides = parsed
    # Overrides are section keys (--data.batch_size 64) or the recipe's backbone.
    stray = [a for a in overrides if a.startswith("--") and "." not in a and a.split("=")[0] != "--backbone"]
    if stray:
        raise _unknown_option(parser, stray[0])
    if args.resume:
        from ssl_zoo.bench import resume_bench

        if len(argv) > 2:
            raise SslZooError("bench --resume OUT takes no other option: the bench goes on with the settings it "
                              "started with (saved in OUT/bench_state.json).")
        resume_bench(Path(args.resume))
        return 0
    if args.from_results:
        from ssl_zoo.bench import reevaluate

        reevaluate(Path(args.from_results))
        return 0
    if args.epochs is not None and args.epochs < 1:
        raise SslZooError(f"bench: --epochs {args.epochs} trains nothing; give 1 or more.")
    config = BenchConfig(
        recipes=args.recipes, out=Path(args.out), epochs=args.epochs,
        budget_seconds=None if args.epochs is not None else parse_budget(args.budget or BENCH_DEFAULT_BUDGET),
        overrides=overrides, baselines=not args.no_baselines, seeds=args.seeds,
        weights=args.weights, weights_input_size=args.input_size,
        eval=EvalConfig(data=args.eval_data, root=args.eval_root, max_train=args.max_train,
                        max_test=args.max_test, device=args.device, protocol=args.protocol,
                        few_shot=args.few_shot, shifts=args.shifts, dense=args.dense),
        command="python -m ssl_zoo bench " + " ".join(argv),
    )
    run_bench(config)
    return 0


def export_parser() -> _Parser:
    parser = _Parser(
        prog="ssl_zoo export",
        description="Write a fit checkpoint's weights as safetensors, loadable by torchvision, timm or "
        "open_clip without ssl_zoo, with a config.json that says how.",
    )
    parser.add_argument("checkpoint", metavar="CKPT", type=Path, help="a .ckpt file that `fit` wrote")
    parser.add_argument("--out", metavar="DIR", type=Path, required=True, help="folder to write (new, empty, or an earlier export)")
    return parser


def export_command(argv: list[str]) -> int:
    """``export CKPT --out DIR``; prints what was written."""
    from ssl_zoo.export import CONFIG, export_checkpoint

    parser = export_parser()
    args = _parse_all(parser, argv)
    if args is None:
        return 0
    started = time.perf_counter()
    config = export_checkpoint(args.checkpoint, args.out)
    sizes = ", ".join(f"{name} ({entry['bytes'] / 1e6:.1f} MB)" for name, entry in config["files"].items())
    print(
        f"exported {args.checkpoint} ({config['method']}, {config['backbone']}, step {config['checkpoint']['global_step']}, "
        f"{config['feature_dim']}-d features) to {args.out} in {time.perf_counter() - started:.1f} s: {sizes}, {CONFIG}.\n"
        f"load it with the snippet in {args.out / CONFIG} under \"how_to_load\" ({config['architecture']['constructor']})."
    )
    return 0


def shards_parser() -> _Parser:
    parser = _Parser(
        prog="ssl_zoo shards",
        description="Make indexed WebDataset shards for training on data larger than memory.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument(
        "--from", dest="source", nargs=2, metavar=("KIND", "SOURCE"),
        help="'folder DIR' (DIR/<class>/<image>, or DIR/<image>: unlabelled) or 'pairs FILE' (CSV path,caption or JSONL)",
    )
    action.add_argument(
        "--index", metavar="PATH",
        help="index existing shards: a .tar, a folder of .tar files or a brace pattern",
    )
    parser.add_argument("--out", type=Path, help="folder for the shards (with --from)")
    parser.add_argument(
        "--size", type=int, help="image side in pixels: shorter side resized, then centre crop (with --from)"
    )
    parser.add_argument("--shard-size", type=int, default=10_000, help="samples per shard (default 10000)")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes: decoding with --from, indexing with --index (default 1)"
    )
    parser.add_argument("--classes", help="only these class folders: imagenet100 (ships with ssl_zoo) or a text file, one a line")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def shards_command(argv: list[str]) -> int:
    """``shards --from KIND SOURCE ...``: convert to shards; ``shards --index PATH``: index existing ones."""
    from ssl_zoo.data.shards.convert import convert, index_shards, read_class_list

    parser = shards_parser()
    args = _parse_all(parser, argv)
    if args is None:
        return 0
    if args.index is not None:
        built = index_shards(args.index, workers=args.workers, progress=not args.quiet)
        print(f"Indexed {len(built)} shard(s); the others' indexes were current.")
        for path in built[:10]:  # not 40,000 lines
            print(f"  {path}")
        if len(built) > 10:
            print(f"  ... and {len(built) - 10} more")
        return 0
    if args.out is None or args.size is None:
        parser.error("--from needs --out and --size")
    kind, source = args.source
    summary = convert(
        kind, source, args.out, args.size, shard_size=args.shard_size, workers=args.workers, progress=not args.quiet,
        classes=read_class_list(args.classes) if args.classes else None,
    )
    print(summary)
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
        if command == "eval":
            return eval_command(rest)
        if command == "bench":
            return bench_command(rest)
        if command == "shards":
            return shards_command(rest)
        if command == "export":
            return export_command(rest)
        print(f"ssl_zoo: unknown command '{command}'. Commands: fit, eval, bench, export, shards, recipes.\n\n{USAGE}", file=sys.stderr)
        return 2
    except SslZooError as error:
        print(f"ssl_zoo: error: {error}", file=sys.stderr)
        return 2
