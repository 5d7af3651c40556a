"""fastconv: hand-written C++/CUDA kernels for 2-D convolution, pooling, ReLU and SORT as torch ops."""
from fastconv import models, nn
from fastconv.backends import get_backend, set_backend, use_backend
from fastconv.functional import (adaptive_avg_pool2d, avg_pool2d, conv2d, conv2d_fused, linear, max_pool2d,
                                 relu, sort)
from fastconv.convert import clear_weight_cache, convert, empty_cache, fuse, patch, unconvert
from fastconv._version import __version__


def info():
    """Version, build flags, CPU features and code path, OpenMP threads, CUDA build, active backend."""
    from fastconv import _ext
    d = dict(_ext.require_native().info()) if _ext.native_available() else {
        "version": __version__, "native_error": str(_ext.NATIVE_ERROR)}
    try:
        d["backend"] = get_backend()
    except RuntimeError as exc:
        d["backend"] = f"none ({exc})"
    return d


__all__ = ["conv2d", "conv2d_fused", "linear", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "relu", "sort",
           "nn", "models", "convert", "unconvert", "fuse", "patch", "clear_weight_cache", "empty_cache", "info", "get_backend", "set_backend", "use_backend",
           "__version__"]
