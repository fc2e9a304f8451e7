"""Did a change slow the view pipeline? ``throughput.py --views-only`` on a base commit and on
the working tree, alternately, each run in a fresh process, and the ratio of their rows.

    python benchmarks/views_before_after.py --base cff1297 --pairs 10   # view groups' check

One process is not a measurement on a small virtual machine: on the 2 cores this was
written on, the same view code ran at about 8,300 or about 11,000 pairs/s depending on the
process (bimodal, for old and new code alike), a swing that would hide or fake any 5 %
drop. So the script runs many processes, the base and the working tree in alternating
order (ABBA: base first in even pairs, last in odd ones). The position in a pair matters
too: there, the second process of a pair ran a median 5 % and up to 25 % slower than the
first, whichever tree it was. So a pair's ratio is not the estimate. Each block of two
pairs, one with the base first and one with the working tree first, gives the geometric
mean of its two ratios, in which the position's effect cancels, as does a steady drift of
the machine's speed. For each row of the view table the script reports the median over
blocks of that ratio (working tree / base) with a bootstrap 95 % interval; the verdict on
a drop beyond ``--tolerance`` (5 %) needs the whole interval on one side of it.

The base is exported with ``git archive`` into a temporary folder and put first on
``PYTHONPATH``, so its own ``ssl_zoo`` and its own ``throughput.py`` run. The result goes to
``benchmarks/results/<date>_views_before_after_<device>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
from datetime import date
from pathlib import Path

from ssl_zoo.environment import source_revision

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ROWS = ("ssl_zoo", "kornia", "lightly")  # the view table's rows, pairs of views per second


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def export_commit(ref: str, into: Path) -> None:
    """The files of commit ``ref`` (not of the working tree), written under ``into``."""
    archive = into / "base.tar"
    subprocess.run(["git", "archive", "--output", str(archive), ref], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")


def view_rates(tree: Path, device: str, scratch: Path) -> dict[str, float]:
    """One fresh process of ``tree``'s ``throughput.py --views-only``: its view rows."""
    out = scratch / "views.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    command = [sys.executable, "benchmarks/throughput.py", "--views-only", "--device", device, "--out", str(out)]
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"views_before_after: throughput.py failed in {tree} (exit {done.returncode}):\n{done.stderr[-3000:]}")
    views = json.loads(out.read_text())["views"]
    return {row: views[row] for row in ROWS}


def check_imports_from(tree: Path) -> None:
    """The editable install must not win over ``PYTHONPATH``: the base's ssl_zoo has to run."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    found = subprocess.run([sys.executable, "-c", "import ssl_zoo; print(ssl_zoo.__file__)"], cwd=tree, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"views_before_after: with PYTHONPATH={tree}, Python imports ssl_zoo from {found}, not the base.")


def median_interval(ratios: list[float], draws: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95 % interval of the median of ``ratios`` (pairs resampled with replacement)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(draws))
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def verdict(low: float, high: float, tolerance: float) -> str:
    if low >= 1 - tolerance:
        return f"no drop beyond {tolerance:.0%}"
    if high < 1 - tolerance:
        return f"drop beyond {tolerance:.0%}"
    return "undecided: the interval straddles the tolerance; run more pairs"


def block_ratios(runs: list[dict], row: str) -> list[float]:
    """Working tree / base for ``row``, one per block of two pairs (base first, then head
    first): the geometric mean of the two pairs' ratios, free of the position's effect."""
    pair_ratios = [run["head"][row] / run["base"][row] for run in runs]
    return [(a * b) ** 0.5 for a, b in zip(pair_ratios[0::2], pair_ratios[1::2])]


def summarise(runs: list[dict], tolerance: float) -> dict[str, dict]:
    """Each row's medians, its median block ratio with a bootstrap interval, and the verdict."""
    rows = {}
    for row in ROWS:
        ratios = block_ratios(runs, row)
        low, high = median_interval(ratios)
        rows[row] = {
            "base_median": statistics.median(run["base"][row] for run in runs),
            "head_median": statistics.median(run["head"][row] for run in runs),
            "block_ratios": ratios, "median_ratio": statistics.median(ratios), "interval_95": [low, high],
            "verdict": verdict(low, high, tolerance),
        }
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare against (any git ref)")
    parser.add_argument("--pairs", type=int, default=12, help="processes per side, an even number (default 12)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tolerance", type=float, default=0.05, help="the drop that counts (default 0.05)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.pairs < 2 or args.pairs % 2:
        parser.error(f"--pairs must be an even number of at least 2 (blocks of two pairs), got {args.pairs}")

    base_commit = git("rev-parse", args.base)
    head = source_revision()  # the working tree's commit and whether its tracked files differ
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="views_before_after_") as scratch_name:
        scratch = Path(scratch_name)
        export_commit(base_commit, scratch)
        base_tree = scratch / "tree"
        check_imports_from(base_tree)
        for pair in range(args.pairs):
            order = [("base", base_tree), ("head", ROOT)]
            if pair % 2:
                order.reverse()
            rates = {}
            for side, tree in order:
                rates[side] = view_rates(tree, args.device, scratch)
            runs.append({"pair": pair, "first": order[0][0], **rates})
            print(f"pair {pair + 1:2d}/{args.pairs} ({order[0][0]} first): ssl_zoo base {rates['base']['ssl_zoo']:8.0f}"
                  f"  head {rates['head']['ssl_zoo']:8.0f}  ratio {rates['head']['ssl_zoo'] / rates['base']['ssl_zoo']:.3f}",
                  file=sys.stderr, flush=True)

    rows = summarise(runs, args.tolerance)
    results = {
        "what": "benchmarks/throughput.py --views-only, base commit and working tree alternately, one fresh process each",
        "command": "python benchmarks/views_before_after.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": date.today().isoformat(), "device": args.device, "base": base_commit, "head": head,
        "tolerance": args.tolerance, "rows": rows, "runs": runs,
    }
    out = args.out or RESULTS / f"{results['date']}_views_before_after_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")

    print(f"\nView rows, pairs of views / s, {args.pairs} pairs of processes ({args.pairs // 2} blocks) on {args.device} "
          f"(base {base_commit[:7]}, head {head['commit'][:7]}{' dirty' if head['dirty'] else ''}):")
    print("  (base, head: medians over processes; head/base: the median over blocks, with its interval)")
    print(f"  {'row':8} {'base':>9} {'head':>9} {'head/base':>9}  {'95 % interval':>15}  verdict")
    for row, r in rows.items():
        low, high = r["interval_95"]
        print(f"  {row:8} {r['base_median']:9.0f} {r['head_median']:9.0f} {r['median_ratio']:9.3f}  "
              f"[{low:.3f}, {high:.3f}]  {r['verdict']}")
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
