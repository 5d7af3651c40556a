"""The output pool of the Python backends' CPU kernels (the numba backend's NumPy outputs): blocks
reused between calls instead of fresh, page-faulting memory. fastconv.empty_cache() clears it."""
import math
import os
import sys
import threading

import numpy as np


class OutputPool:
    """Memory for the NumPy output arrays of 1 MB and more, reused once every array made from a block is
    gone (torch tensors from torch.from_numpy keep their array, and so the block, alive). Fresh
    megabytes page-fault on every call -- about 2 us a 4 KB page on these VMs, 1.7 ms for a 3 MB output,
    longer than ReLU on it -- whenever the C library hands out newly mapped memory, which depends on
    the heap's history. The native kernels' output cache does the same; FASTCONV_OUTPUT_CACHE_MB
    bounds both (default 256, 0: off), fastconv.empty_cache() frees the idle blocks."""

    MIN_BYTES = 1 << 20

    def __init__(self):
        self.blocks = {}  # nbytes -> [uint8 arrays]
        self.bytes = 0
        self.lock = threading.Lock()
        try:
            self.limit = max(0, int(os.environ.get("FASTCONV_OUTPUT_CACHE_MB", "256"))) << 20
        except ValueError:
            self.limit = 256 << 20

    @staticmethod
    def _idle(blocks, i):
        return sys.getrefcount(blocks[i]) == 2  # the list's reference and the argument's: no array uses it

    def _evict(self, need):
        for size, blocks in self.blocks.items():
            for i in range(len(blocks) - 1, -1, -1):
                if self.bytes + need <= self.limit:
                    return
                if self._idle(blocks, i):
                    del blocks[i]
                    self.bytes -= size

    def empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < self.MIN_BYTES or nbytes > self.limit:
            return np.empty(shape, dtype)
        with self.lock:
            blocks = self.blocks.get(nbytes)
            if blocks is None:
                blocks = self.blocks[nbytes] = []
            for i in range(len(blocks)):
                if self._idle(blocks, i):
                    return blocks[i].view(dtype).reshape(shape)
            if self.bytes + nbytes > self.limit:
                self._evict(nbytes)
            if self.bytes + nbytes > self.limit:
                return np.empty(shape, dtype)
            block = np.empty(nbytes, np.uint8)
            blocks.append(block)
            self.bytes += nbytes
            return block.view(dtype).reshape(shape)

    def clear(self):
        with self.lock:
            self._evict(self.limit + 1)


OUTPUTS = OutputPool()


def empty(shape, dtype):
    """An uninitialised array from the pool (small or over-limit arrays: np.empty)."""
    return OUTPUTS.empty(tuple(shape), dtype)


def zeros(shape, dtype):
    a = OUTPUTS.empty(tuple(shape), dtype)
    a.fill(0)
    return a
