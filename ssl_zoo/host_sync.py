"""Counting the calls that make the host wait for the device during training steps.

On a GPU the host queues a step's kernels while the previous ones run. Three kinds of call
stop that, because the host must wait until the GPU has drained its queue: reading a
value on the host (``.item()``, ``float(t)``, ``if t:``), making a tensor from Python
numbers on the device (a blocking host-to-device copy), and ops whose output size depends
on the data (``nonzero``, boolean masks). ``HostSyncCounter`` sees them as ATen ops, on the
CPU as on a GPU, so ``count_host_syncs`` counts them in the steps of ``fit`` as it runs
(augmentation, loss, backward, optimiser, EMA, callbacks and logging included), away from
the logging interval. ``tests/test_host_sync.py`` holds every method and optimiser to zero;
``benchmarks/gpu_check.py`` reports the count on a GPU.

What the CPU cannot show: ``.tolist()``, ``.cpu()`` and ``.numpy()`` read memory without
dispatching an op, and where a tensor lives (host or device) is the same there, so copies
the code makes on purpose from host tensors look alike. Those need a GPU run with
``torch.cuda.set_sync_debug_mode("warn")``.
"""

from __future__ import annotations

import traceback

import pytorch_lightning as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ssl_zoo.recipe import Recipe

aten = torch.ops.aten
HOST_SYNCS = {
    aten._local_scalar_dense.default: "reads a tensor's value on the host",
    aten.lift_fresh.default: "makes a tensor from Python data (a blocking copy to the GPU)",
    aten.nonzero.default: "has a data-dependent output size",
    aten.masked_select.default: "has a data-dependent output size",
    aten.is_nonzero.default: "reads a tensor's truth value on the host",
    aten.repeat_interleave.Tensor: "has a data-dependent output size",
    aten.repeat_interleave.self_Tensor: "has a data-dependent output size",
}


def syncs(func, args) -> str | None:
    """Why ``func`` would make the host wait for a GPU, or None."""
    if func in HOST_SYNCS:
        return HOST_SYNCS[func]
    if func is aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1]):
        return "indexes with a boolean mask (a data-dependent output size)"
    return None
# Host-side work that is meant to be there: (file, function) of the innermost caller.
BY_DESIGN = {
    # The sampler's indices are a Python list; made into a tensor on the host, they go to
    # the GPU from pinned memory without waiting.
    ("ssl_zoo/data/training.py", "__getitems__"),
    # Kornia checks blur sigmas > 0 on the host copy of sigma; ssl_zoo draws the sigmas on
    # the host for that reason, so on a GPU the check reads no device memory.
    ("kornia/filters/gaussian.py", "_gaussian_blur2d"),
}
# Host-side work that torch does on purpose: (file, function) of a torch frame anywhere in
# the stack, since the innermost caller outside torch (the one BY_DESIGN names) is too wide.
TORCH_BY_DESIGN = {
    # Adam and AdamW keep their step count in host memory (unless capturable or fused) and
    # read it with .item(): on a GPU that reads no device memory.
    ("torch/optim/optimizer.py", "_get_value"),
}


class HostSyncCounter(TorchDispatchMode):
    """Records every host-syncing op while ``counting`` is set, with where it was called."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        """``device``: where training runs. On a GPU, an op whose tensors all live in host
        memory (a CPU step counter's ``.item()``, a host tensor made from Python numbers)
        waits for nothing and is not counted; on the CPU every tensor is a host tensor, so
        everything is counted as if it were on a GPU."""
        super().__init__()
        self.on_gpu = torch.device(device).type == "cuda"
        self.counting = False
        self.calls: list[str] = []
        self.ops_seen = 0  # every op while counting: proves the window was open

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops_seen += self.counting
        reason = syncs(func, args) if self.counting else None
        if reason and self.on_gpu and _all_on_host(args):
            reason = None
        if reason:
            stack = traceback.extract_stack()[:-1]
            frames = [f for f in stack if "torch/" not in f.filename][-3:]
            caller = frames[-1]
            if any(caller.filename.endswith(path) and caller.name == name for path, name in BY_DESIGN) or any(
                f.filename.endswith(path) and f.name == name for f in stack for path, name in TORCH_BY_DESIGN
            ):
                return func(*args, **(kwargs or {}))
            where = " <- ".join(f"{f.filename.split('site-packages/')[-1]}:{f.lineno} {f.name}" for f in reversed(frames))
            self.calls.append(f"{func} {reason}: {where}")
        return func(*args, **(kwargs or {}))


def _all_on_host(args) -> bool:
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return bool(tensors) and all(t.device.type == "cpu" for t in tensors)


class CountBetweenSteps(pl.Callback):
    """Counts from the end of step ``first`` to the end of step ``last``: whole steps."""

    def __init__(self, counter: HostSyncCounter, first: int, last: int) -> None:
        self.counter, self.first, self.last = counter, first, last

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.first:
            self.counter.counting = True
        elif trainer.global_step == self.last:
            self.counter.counting = False


def count_host_syncs(
    recipe: Recipe, first: int = 2, last: int = 10, device: torch.device | str = "cpu", **fit_kwargs
) -> HostSyncCounter:
    """Train ``recipe`` (``trainer.max_steps`` > ``last``) on ``device`` and count the host
    syncs of steps ``first + 1 .. last``; the counter's ``calls`` say what synced, and where."""
    from ssl_zoo.training.train import fit

    counter = HostSyncCounter(device)
    with counter:
        fit(recipe, callbacks=[CountBetweenSteps(counter, first, last)], **fit_kwargs)
    return counter
