"""A few numbers a training step computes on the device, brought to the host without stalling the device.

    result = HostCopy(loss_and_flags)  # queued behind the work that computes it; returns at once
    ...                                # queue the next step's work
    loss, *flags = result.values()     # waits for that copy alone, not for the work queued after it

Reading a CUDA tensor with ``.item()`` / ``.tolist()`` / ``.cpu()`` / ``bool()`` makes the host wait until
the device has finished *everything* queued so far: the GPU then idles while the host prepares the next
step (the optimizer's Python, the next batch). ``HostCopy`` copies the tensor into pinned host memory
with ``non_blocking=True`` and records a CUDA event right behind the copy; ``values()`` waits for that
event only. A loop that reads step N's copy after queueing step N+1 therefore never lets the GPU run dry.

On the CPU there is nothing to wait for; on HPU the tensor is read when asked (``.cpu()``), as Habana's
own scripts read their losses (not measured here: no Gaudi at hand).
"""
from __future__ import annotations

from typing import List, Optional

import torch


class HostCopy:
    def __init__(self, tensor: torch.Tensor):
        self._source = tensor.detach()
        self._event: Optional[torch.cuda.Event] = None
        self._values: Optional[List[float]] = None
        if self._source.device.type == "cuda":
            host = torch.empty(self._source.shape, dtype=self._source.dtype, pin_memory=True)
            host.copy_(self._source, non_blocking=True)  # queued on the current stream, after the producer
            self._event = torch.cuda.Event()
            self._event.record()  # marks the end of this copy on the same stream
            self._source = host

    def values(self) -> List[float]:
        """The tensor's values, flattened (read once; later calls return the same list)."""
        if self._values is None:
            if self._event is not None:
                self._event.synchronize()  # this copy only: work queued after it keeps running
            host = self._source if self._source.device.type == "cpu" else self._source.cpu()
            # numpy() only ever views host memory (it refuses device tensors), so this line cannot wait
            # for a device: the one wait is the event above.
            self._values = host.reshape(-1).to(torch.float64).numpy().tolist()
        return self._values
