"""Loads the native extension fastconv._C, which registers torch.ops.fastconv.*."""
import torch  # noqa: F401  (the extension links against torch's libraries)

try:
    from fastconv import _C  # noqa: F401
    NATIVE_ERROR = None
except ImportError as exc:  # the package still imports; the native backend reports why it is off
    _C = None
    NATIVE_ERROR = exc


def native_available():
    return _C is not None


def require_native():
    if _C is None:
        raise RuntimeError(
            "fastconv: the native extension fastconv._C is not built or failed to load "
            f"({NATIVE_ERROR}); build it with `make build` (or `python setup.py build_ext --inplace`)")
    return _C
