import dataclasses
import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from ssl_zoo.recipe import Recipe, parse_recipe
from ssl_zoo.registry import METHODS

# The suite's cores are shared between pytest-xdist's workers (README: `pytest -n auto`):
# each takes its share, and the CLI runs it starts inherit it (OMP_NUM_THREADS), so two
# workers on 2 cores do not run four busy-waiting threads.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, len(os.sched_getaffinity(0)) // _WORKERS))
torch.set_num_threads(_THREADS)
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))


def tiny_recipe(method: str, tmp_path, **sections) -> Recipe:
    """A recipe small enough to train a few steps in seconds on a CPU."""
    argv = [
        "--method", method, "--name", f"tiny_{method}", "--backbone", "resnet18",
        "--data.num_images", "128", "--data.image_size", "32", "--data.batch_size", "32",
        "--data.knn_bank_size", "128",
        "--augment.size", "32", "--augment.blur_p", "[0.0, 0.0]",
        "--optim.warmup_epochs", "0", "--optim.lr", "0.1",
        "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.log_every_n_steps", "1", "--trainer.output_dir", str(tmp_path / "runs"),
    ]
    # Small heads and towers for any method whose section has these keys.
    section = {f.name for f in dataclasses.fields(METHODS[method].Config)}
    tiny = {"hidden_dim": 128, "output_dim": 64, "text_backbone": "text_transformer_tiny", "embed_dim": 64, "context_length": 16}
    argv += [arg for key, value in tiny.items() if key in section for arg in (f"--{method}.{key}", str(value))]
    for key, value in sections.items():
        argv += [f"--{key}", str(value)]
    return parse_recipe(argv)


class Crash(Exception):
    """A crash the tests provoke."""


class CrashAt(pl.Callback):
    """Raises Crash before training step ``step``: a crash between two steps, after the
    checkpoints written so far."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Crash


@pytest.fixture
def make_recipe(tmp_path):
    return lambda method, **overrides: tiny_recipe(method, tmp_path, **overrides)


def write_random_shards(out, count: int, shard_size: int, size: int = 32, seed: int = 0) -> None:
    """Indexed shards of ``count`` random JPEGs, each with a label (of 4) and two captions."""
    import io

    import numpy as np
    from PIL import Image

    from ssl_zoo.data.shards.convert import Sample, write_shards

    rng = np.random.default_rng(seed)

    def sample(i: int) -> Sample:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "JPEG")
        return Sample(buffer.getvalue(), "jpg", label=i % 4, captions=[f"shape {i % 4}", f"a picture of shape {i % 4}"])

    write_shards([sample(i) for i in range(count)], out, shard_size)


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (the benchmarks are scripts, not a package)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parent.parent / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
