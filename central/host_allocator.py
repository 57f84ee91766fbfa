"""Keep freed host memory in the process for reuse: glibc ``malloc`` settings for CPU training.

By default glibc serves every block above a threshold with a fresh ``mmap`` (128 KiB at start; it rises
to the size of a freed mmapped block, but ``posix_memalign``, which torch allocates with, asks for a
little more than that, so same-size tensors keep missing it) and gives the top of the heap back to the
kernel once more than twice that threshold is free. A training step frees its activations at its end and
allocates them again in the next, so each step page-faults them in anew: tens of thousands of faults
per BERT-mini step, kernel time spent zeroing pages, and matmuls that write into fresh memory run well
below their usual rate. ``retain_freed_memory`` serves blocks up to 32 MiB (the most glibc's own
threshold can reach) from the heap and keeps up to 1 GiB of free heap: no faults per step once warm, and
about the same peak RSS, which stays flat over a run.

Bigger blocks stay mmapped: served from the heap, transformers' [32, 128, 30522] logits (500 MB) made
its step slower, because its large frees each step still trim the heap. The measured figures, with
their machine and date, are in docs/performance.md ("CPU kernels and runtime settings").

The setting is process-wide and lasts for the process: call it where a process is about to train on the
CPU, not from library code that may share the process with something else.
"""
from __future__ import annotations

import ctypes
import platform
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
HEAP_BLOCK_LIMIT = 32 << 20  # blocks up to this size come from the heap
KEPT_FREE_HEAP = 1 << 30  # free heap kept before the top is given back to the kernel


def retain_freed_memory(heap_block_limit: int = HEAP_BLOCK_LIMIT, kept_free_heap: int = KEPT_FREE_HEAP) -> bool:
    """Set glibc's mmap threshold to ``heap_block_limit`` and its trim threshold to ``kept_free_heap``;
    False (and nothing changed) where the C library is not glibc.

    mallopt takes a C int, so both must lie in [0, 2**31): a larger Python int would wrap around
    (2**34 becomes 0, which trims the heap on every free: the opposite of the intent).
    """
    for name, value in (("heap_block_limit", heap_block_limit), ("kept_free_heap", kept_free_heap)):
        if not 0 <= value < 2 ** 31:
            raise ValueError(f"{name} must lie in [0, 2**31), got {value}")
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return (bool(libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(heap_block_limit)))
            and bool(libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(kept_free_heap))))
