"""Decoding on the device, ahead of the step: shards' encoded batches become uint8 images
on the GPU (one batched nvJPEG call) in a background thread, on their own CUDA stream,
while the previous step runs."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ssl_zoo.data.decode import decode_images


def pack_encoded(encoded: list[bytes]) -> tuple[Tensor, Tensor]:
    """B encoded images -> one uint8 buffer (total bytes,) and int64 offsets (B + 1,):
    image i is ``buffer[offsets[i]:offsets[i + 1]]``.

    NOTE: one tensor, not B. A tensor that leaves a loader worker costs the receiving
    process an open file under torch's ``file_descriptor`` sharing strategy; at B = 512 and
    two batches in flight per worker, B tensors a batch passed the common limit of 1,024
    open files and the run hung at step 0.
    """
    offsets = torch.from_numpy(np.cumsum([0, *map(len, encoded)], dtype=np.int64))
    buffer = torch.frombuffer(bytearray(b"".join(encoded)), dtype=torch.uint8) if offsets[-1] else torch.empty(0, dtype=torch.uint8)
    return buffer, offsets


def unpack_encoded(buffer: Tensor, offsets: Tensor) -> list[Tensor]:
    """The B images of ``pack_encoded``'s buffer, as views (no copy)."""
    bounds = offsets.tolist()
    return [buffer[start:end] for start, end in zip(bounds[:-1], bounds[1:])]


class DecodeAhead:
    """The training loader of encoded batches (``ShardDataset(decode="device")``), yielding
    each batch with ``"image"``: uint8 (B, 3, S, S) decoded on ``device`` and
    ``"decode_counts"`` (``DecodeCounts`` as int64 (3,)), ``ahead`` batches before it is used.

    NOTE: a thread, not the ``on_before_batch_transfer`` hook. Lightning calls that hook on
    the host thread that queues the step, right before the step, and nvJPEG's batched
    decode does part of its work on the host and waits for its stream: decoded there, every
    batch waited for its decode and the decode for the step before it. Here batch n + 1 is
    decoded (on a side stream, torch releasing the GIL) while step n runs.
    """

    def __init__(self, loader: DataLoader, image_size: int, device: torch.device, ahead: int = 1) -> None:
        self.loader = loader
        self.image_size = image_size
        self.device = device
        self.ahead = ahead

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ssl_zoo-decode") as pool:
            pending = deque()
            for batch in self.loader:
                pending.append(pool.submit(self._decode, batch, stream))
                if len(pending) > self.ahead:
                    yield self._hand_over(pending.popleft().result())
            while pending:
                yield self._hand_over(pending.popleft().result())

    def _decode(self, batch: dict[str, Tensor], stream: torch.cuda.Stream | None) -> dict[str, Tensor]:
        encoded = unpack_encoded(batch.pop("encoded"), batch.pop("offsets"))  # B views of one buffer
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            images, counts = decode_images(encoded, self.image_size, device=self.device)
        if stream is not None:
            stream.synchronize()  # this thread waits for its stream, never the training step
        batch["image"], batch["decode_counts"] = images, counts.as_tensor()
        return batch

    def _hand_over(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.device.type == "cuda":
            # The images were allocated on the decode stream and are read on the step's: the
            # allocator must not give their memory back to the decode stream before the step
            # that reads them has run.
            batch["image"].record_stream(torch.cuda.current_stream(self.device))
        return batch
