"""The numba options and index helpers every CPU kernel module shares."""
import numba as nb
import numpy as np
from numba import prange  # noqa: F401  (re-exported to the kernel modules)

_JIT = dict(parallel=True, cache=True, nogil=True)
_FAST = dict(_JIT, fastmath={"contract", "reassoc", "arcp", "nsz"})
_SERIAL = dict(cache=True, nogil=True, fastmath={"contract", "reassoc", "arcp", "nsz"})
# Inner-loop indices are cast to unsigned: numba guards a signed index it cannot prove non-negative
# with a wraparound select, which turns strided loads into gathers (3-7x slower pooling, im2col).
_U = np.uintp


@nb.njit(inline="always", cache=True)
def _valid_range(count, step, offset, size):
    """[lo, hi) of i in [0, count) with 0 <= i * step + offset < size."""
    lo = 0 if offset >= 0 else (-offset + step - 1) // step
    hi = 0 if size - 1 - offset < 0 else (size - 1 - offset) // step + 1
    hi = min(hi, count)
    return lo, max(lo, hi)


@nb.njit(inline="always", cache=True)
def _inner_span(OW, sw, pw, kw, dw, W):
    """[lo, hi): the output columns whose whole window lies inside the input."""
    lo, hi = _valid_range(OW, sw, -pw, W - (kw - 1) * dw)
    lo = min(lo, OW)
    return lo, max(lo, min(hi, OW))
