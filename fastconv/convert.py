"""Run existing models on fastconv.

  convert(model)      swap torch.nn layers for fastconv.nn ones (same parameters and state_dict keys);
                      in eval mode also fold BatchNorm and fuse conv->bn->(add)->relu runs
  fuse(model)         turn on the fused inference path of a converted / fastconv model, in place
  unconvert(model)    the torch / torchvision model it computes (for torch.onnx.export and such)
  with patch(): ...   route torch.nn.functional conv2d/pooling/relu calls to fastconv
"""
import collections
import copy
import dataclasses
import functools
import importlib

import torch
from torch.overrides import TorchFunctionMode

from fastconv import _args as A
from fastconv import functional as F
from fastconv import nn

# torch layer -> fastconv layer; the instance keeps its __dict__ (parameters, buffers, hooks) and only
# its class (hence its forward) changes.
_LEAVES = {torch.nn.Conv2d: nn.Conv2d, torch.nn.MaxPool2d: nn.MaxPool2d, torch.nn.AvgPool2d: nn.AvgPool2d,
           torch.nn.AdaptiveAvgPool2d: nn.AdaptiveAvgPool2d, torch.nn.ReLU: nn.ReLU, torch.nn.Linear: nn.Linear}


def _blocks():
    """torchvision modules with a fastconv twin of identical children (looked up lazily). One whose
    `relu` child is another activation stays torch's (its children are converted)."""
    out = {}
    try:  # by module path: torchvision.models.<name> is also the builder function
        googlenet = importlib.import_module("torchvision.models.googlenet")
        resnet = importlib.import_module("torchvision.models.resnet")
    except ImportError:
        return out
    from fastconv.models.resnet import ResNet
    out[resnet.BasicBlock] = (nn.BasicBlock, dict(combine="add", mode="sqrt", eps=0.01))
    out[resnet.Bottleneck] = (nn.Bottleneck, dict(combine="add", mode="sqrt", eps=0.01))
    out[resnet.ResNet] = (ResNet, {})
    out[googlenet.BasicConv2d] = (nn.ConvBNReLU, {})
    return out


@dataclasses.dataclass
class Summary:
    converted: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    fused: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    kept: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def __str__(self):
        def fmt(c):
            return ", ".join(f"{k} x{v}" for k, v in sorted(c.items())) or "-"
        lines = [f"converted: {fmt(self.converted)}", f"fused:     {fmt(self.fused)}",
                 f"kept (torch): {fmt(self.kept)}"]
        return "\n".join(lines)


def _adopt(module, cls, **attrs):
    module.__class__ = cls
    for k, v in attrs.items():
        setattr(module, k, v)
    return module


def _walk(module, blocks, fuse, summary):
    """Convert `module` in place (children first); returns True if it is a leaf left to torch."""
    t = type(module)
    if t in _LEAVES:
        _adopt(module, _LEAVES[t])
        summary.converted[t.__name__] += 1
        return False
    if t in blocks and nn.is_relu(getattr(module, "relu", nn.ReLU())):  # blocks fuse their ReLU
        cls, attrs = blocks[t]
        _adopt(module, cls, **attrs)
        summary.converted[t.__name__] += 1
    kept = {child_name: child for child_name, child in module.named_children()
            if _walk(child, blocks, fuse, summary)}
    if isinstance(module, torch.nn.Sequential) and t.forward is torch.nn.Sequential.forward \
            and not isinstance(module, nn.Sequential):
        _adopt(module, nn.Sequential)
    folded = set()
    fused = nn.fuse_module(module) if fuse else None
    if fused:
        what, count, folded = fused
        summary.fused[what] += count
    for child_name, child in kept.items():
        if child_name in folded:
            summary.fused["BatchNorm2d (folded)"] += 1
        else:
            summary.kept[type(child).__name__] += 1
    is_leaf = not kept and next(module.children(), None) is None
    return is_leaf and not isinstance(module, (nn.SORT, *_LEAVES.values()))


def convert(model, *, fuse=None, inplace=False, verbose=False, channels_last=False):
    """Swap the torch.nn Conv2d (any padding_mode), MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, ReLU
    and Linear layers of `model` for their fastconv.nn twins, keeping parameters, buffers and state_dict
    keys. With fuse=True (default: when `model` is in eval mode) the fused inference path is turned
    on: BatchNorm is folded into the preceding conv and conv->bn->(residual add)->relu runs of
    nn.Sequential, torchvision BasicBlock/Bottleneck/ResNet stem and googlenet BasicConv2d become
    single fastconv.conv2d_fused calls. Fusion is taken in eval mode only; in training mode the
    layers run one by one with BatchNorm unfolded. Anything else stays torch; the tally is in
    `model.fastconv_summary` (and printed with verbose=True). channels_last=True also moves the 4-D
    parameters and buffers to torch.channels_last (`model.to(memory_format=...)`), so activations
    flow channels_last from the first convolution on, the layout fastconv's CPU kernels read and
    write without transposes (outputs then carry that layout, as torch's would). Returns the
    converted model (a deep copy unless inplace=True)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"fastconv.convert: 'model' must be a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    fuse = (not model.training) if fuse is None else bool(fuse)
    summary = Summary()
    if _walk(model, _blocks(), fuse, summary):
        summary.kept[type(model).__name__] += 1
    model.fastconv_summary = summary
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if fuse:
        nn.cache_weights(model)
    if verbose:
        print(f"fastconv.convert({type(model).__name__}):\n{summary}")
    return model


def unconvert(model, *, inplace=False):
    """The torch model a converted (or fastconv) model computes, for tools that know only torch's
    operators (torch.onnx.export, other compilers): fastconv.nn layers become their torch.nn classes
    and fastconv blocks and ResNets their torchvision classes, with the same parameters, buffers,
    state_dict keys and hooks, and no fused path. SORT has no torch twin: a model holding SORT modules
    raises ValueError naming them. Returns a deep copy unless inplace=True."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"fastconv.unconvert: 'model' must be a torch.nn.Module, got {type(model).__name__}")
    twins = {v: k for k, v in _LEAVES.items()}
    twins[nn.Sequential] = torch.nn.Sequential
    blocks = {cls: tv for tv, (cls, _) in _blocks().items()}
    sort = [name or type(model).__name__ for name, m in model.named_modules()
            if isinstance(m, (nn.SORT, nn.SORTConv2d)) or getattr(m, "combine", "add") == "sort"
            or (type(m).__module__.startswith("fastconv.") and type(m) not in twins and type(m) not in blocks)]
    if sort:
        raise ValueError("fastconv.unconvert: these modules have no torch twin (SORT, or fastconv-only "
                         f"models): {', '.join(sort[:8])}{' ...' if len(sort) > 8 else ''}")
    if not inplace:
        model = copy.deepcopy(model)
    for m in model.modules():
        cls = twins.get(type(m)) or blocks.get(type(m))
        if cls is not None:
            m.__class__ = cls
        for attr in ("fused", "_plan", "_fastconv_folded", "_fastconv_plan", "fastconv_summary"):
            m.__dict__.pop(attr, None)
    return model


def clear_weight_cache():
    """Drop every cache fused models keep of their parameters and buffers: the packed weights of the
    native CPU convolution and the folded BatchNorm scale and shift. Needed only after changing such
    a model's weights or BatchNorm state by a write that bypasses the version counter (`.data`, a
    NumPy view); in-place torch ops, optimizer steps and load_state_dict are seen by themselves."""
    from fastconv import _ext
    nn.clear_folded_cache()
    if _ext.native_available():
        _ext._C.clear_weight_cache()


def empty_cache():
    """Free the blocks of released CPU outputs that fastconv keeps to serve later outputs without page
    faults (at most FASTCONV_OUTPUT_CACHE_MB, default 256 MB, for the native and for the numba
    backend; 0 turns the caches off)."""
    from fastconv import _ext, _outputs
    if _ext.native_available():
        _ext._C.clear_output_cache()
    _outputs.OUTPUTS.clear()


def fuse(model, *, inplace=True):
    """Turn on the fused inference path (BN folding, conv2d_fused epilogues) of every fastconv block
    in `model`, converting torch layers first; in place by default. Taken in eval mode only."""
    return convert(model, fuse=True, inplace=inplace)


# ---------------------------------------------------------------- patch()
def _floating(*ts):
    return all(t is None or (isinstance(t, torch.Tensor) and t.dtype in A._FLOAT_DTYPES
                             and type(t) in (torch.Tensor, torch.nn.Parameter)) for t in ts)


@functools.lru_cache(maxsize=None)
def _cuda_built():
    from fastconv import _ext
    return bool(_ext.native_available() and _ext.require_native().info().get("cuda_built"))


def _device_ok(t):
    return t.device.type == "cpu" or (t.device.type == "cuda" and _cuda_built())


def _bind(torch_fn, names, defaults, args, kwargs):
    bound = dict(zip(names, args))
    bound.update(kwargs)
    for k, v in defaults.items():
        bound.setdefault(k, v)
    if len(args) > len(names) or set(bound) - set(names):
        raise TypeError(f"unexpected arguments to {torch_fn.__name__}")
    return bound


_ROUTES = {}


def _route(torch_fn, names, defaults, tensors=("input",)):
    def deco(f):
        _ROUTES[torch_fn] = (f, names, defaults, tensors)
        return f
    return deco


@_route(torch.nn.functional.conv2d, ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
        dict(bias=None, stride=1, padding=0, dilation=1, groups=1), ("input", "weight", "bias"))
def _conv2d(a):
    return F.conv2d(**a)


@_route(torch.nn.functional.max_pool2d, ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                                         "return_indices"),
        dict(stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False))
def _max_pool2d(a):
    return F.max_pool2d(**a)


@_route(torch.nn.functional.max_pool2d_with_indices, ("input", "kernel_size", "stride", "padding", "dilation",
                                                      "ceil_mode", "return_indices"),
        dict(stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=True))
def _max_pool2d_with_indices(a):
    return F.max_pool2d(**{**a, "return_indices": True})


@_route(torch.nn.functional.avg_pool2d, ("input", "kernel_size", "stride", "padding", "ceil_mode",
                                         "count_include_pad", "divisor_override"),
        dict(stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None))
def _avg_pool2d(a):
    return F.avg_pool2d(**a)


@_route(torch.nn.functional.adaptive_avg_pool2d, ("input", "output_size"), {})
def _adaptive_avg_pool2d(a):
    return F.adaptive_avg_pool2d(**a)


@_route(torch.nn.functional.relu, ("input", "inplace"), dict(inplace=False))
def _relu(a):
    return F.relu(**a)


class patch(TorchFunctionMode):
    """Context manager routing torch.nn.functional.conv2d, max_pool2d, avg_pool2d,
    adaptive_avg_pool2d and relu (and the torch.nn layers that call them) to fastconv while active.
    Calls fastconv does not support (non-float or tensor-subclass inputs, devices it was not built
    for, 5-D input, arguments it rejects) run on torch. `counts` tallies routed / fallback calls:

        with fastconv.patch() as p:
            y = torchvision_model(x)
        print(p.counts)
    """

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        route = _ROUTES.get(func)
        if route is not None:
            handler, names, defaults, tensors = route
            try:
                a = _bind(func, names, defaults, args, kwargs)
            except TypeError:
                a = None
            if a is not None and _floating(*(a.get(t) for t in tensors)) and _device_ok(a["input"]) \
                    and a["input"].dim() in (3, 4):
                try:
                    out = handler(a)
                except (ValueError, TypeError):  # argument combinations fastconv rejects
                    pass
                else:
                    self.counts[func.__name__] += 1
                    return out
            self.counts["fallback:" + func.__name__] += 1
        return func(*args, **kwargs)
