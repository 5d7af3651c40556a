"""Backend registry: which implementation the public functions call.

  fastconv.set_backend("native" | "numba" | "reference")
  with fastconv.use_backend("numba"): ...
  FASTCONV_BACKEND=numba python ...

A backend is an object with the operator attributes of torch.ops.fastconv (conv2d_fwd,
max_pool2d_fwd, ...), each a torch custom op with fake and autograd registrations, so autograd and
torch.compile work on every backend. Backends register a loader here; it runs on first use and
raises a clear error when the backend cannot run on this machine.
"""
import contextlib
import os
import threading
import warnings

_LOADERS = {}
_LOADED = {}
_DEFAULT_ORDER = ("native", "numba", "reference")
_state = threading.local()
_global = {"name": None}


def register(name, loader):
    """Register `loader() -> ops object` under `name` (raises RuntimeError if unusable here)."""
    _LOADERS[name] = loader


def names():
    return tuple(_LOADERS)


def load(name):
    if name not in _LOADERS:
        raise ValueError(f"fastconv: unknown backend {name!r}; choose one of {', '.join(_LOADERS)}")
    if name not in _LOADED:
        _LOADED[name] = _LOADERS[name]()
    return _LOADED[name]


def available(name):
    try:
        load(name)
        return True
    except (RuntimeError, ImportError):
        return False


def _default():
    env = os.environ.get("FASTCONV_BACKEND", "").strip()
    if env:
        load(env)  # an explicit request that cannot run here is an error, not a silent fallback
        return env
    why = []
    for name in _DEFAULT_ORDER:
        if name not in _LOADERS:
            continue
        try:
            load(name)
        except (RuntimeError, ImportError) as exc:
            why.append(f"{name}: {exc}")
            continue
        if why:  # a slower backend than the best one: say so once, with the reason and the remedy
            warnings.warn(f"fastconv is running on its '{name}' backend, much slower than the native one, "
                          f"which is unavailable ({'; '.join(why)}). Rebuild it: `make build` in a clone, or "
                          "`pip install --no-build-isolation --force-reinstall .` (a torch upgrade needs a "
                          "rebuild); fastconv.info() shows the error. Set FASTCONV_BACKEND to choose a "
                          "backend without this warning.", RuntimeWarning, stacklevel=3)
        return name
    raise RuntimeError("fastconv: no backend can run here (" + "; ".join(why) + "); build the native "
                       "extension with `make build`")


def get_backend():
    """Name of the active backend."""
    name = getattr(_state, "name", None) or _global["name"]
    if name is None:
        _global["name"] = name = _default()
    return name


def set_backend(name):
    """Select the backend for all threads (a `use_backend` block still takes precedence)."""
    load(name)
    _global["name"] = name


@contextlib.contextmanager
def use_backend(name):
    """Select the backend inside a `with` block (this thread only)."""
    load(name)
    prev = getattr(_state, "name", None)
    _state.name = name
    try:
        yield
    finally:
        _state.name = prev


def current_ops():
    return load(get_backend())


def _load_native():
    import torch

    from fastconv import _ext
    _ext.require_native()
    from fastconv import ops  # noqa: F401  (fake + autograd registrations)
    return torch.ops.fastconv


register("native", _load_native)


def _load_numba():
    try:
        import numba  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"fastconv: backend 'numba' needs the numba package ({exc}); pip install numba") from exc
    from fastconv import pyops
    from fastconv.numba import kernels
    return pyops.define("fastconv_numba", kernels, pyops.numba_compute_dtype)


def _load_reference():
    import functools
    import types

    import torch

    from fastconv import _args, pyops, reference
    impl = {name: getattr(reference, name, None) for name in pyops.SCHEMAS}
    impl["conv2d_fused_fwd"] = impl["conv2d_fused_fwd"] or getattr(reference, "conv2d_fused", None)
    missing = [name for name, fn in impl.items() if fn is None]
    if missing:
        raise RuntimeError(f"fastconv: backend 'reference': fastconv/reference.py lacks {', '.join(missing)}")

    def checked(name, fn):  # the operators refuse what the reference functions assume away, as numba's do
        @functools.wraps(fn)
        def op(*args):
            _args.check_args(name, args, "fastconv.reference")
            return fn(*args)
        return op
    impl = {name: checked(name, fn) for name, fn in impl.items()}
    return pyops.define("fastconv_reference", types.SimpleNamespace(**impl), lambda dtype: torch.float64,
                            host=True)


register("numba", _load_numba)
register("reference", _load_reference)
