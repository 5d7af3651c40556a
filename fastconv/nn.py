"""Modules whose parameters, buffers and state_dict match their torch.nn namesakes."""
import torch

from fastconv import backends
from fastconv import functional as F


def _padded(conv, x):
    """(input, padding) for fastconv's convolution of `x` by the torch Conv2d `conv`: padding modes other
    than 'zeros' pad `x` first (torch.nn.functional.pad, as torch's Conv2d does) and convolve unpadded."""
    if conv.padding_mode == "zeros":
        return x, conv.padding
    return torch.nn.functional.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode), 0


class Named:
    """Mixin of fastconv's modules: print(model) names them fastconv.<class>, "(fused)" where the
    fused inference path is on (a converted model shows which layers are fastconv's)."""

    def _get_name(self):
        return f"fastconv.{type(self).__name__}" + (" (fused)" if getattr(self, "fused", False) else "")


class Conv2d(Named, torch.nn.Conv2d):
    """torch.nn.Conv2d running fastconv.conv2d (any padding_mode: 'reflect', 'replicate' and 'circular'
    pad the input first, as torch does)."""

    def forward(self, input):
        x, padding = _padded(self, input)
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


class Linear(Named, torch.nn.Linear):
    """torch.nn.Linear running fastconv.linear."""

    def forward(self, input):
        return F.linear(input, self.weight, self.bias)


class MaxPool2d(Named, torch.nn.MaxPool2d):
    """torch.nn.MaxPool2d running fastconv.max_pool2d."""

    def forward(self, input):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(Named, torch.nn.AvgPool2d):
    """torch.nn.AvgPool2d running fastconv.avg_pool2d."""

    def forward(self, input):
        return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(Named, torch.nn.AdaptiveAvgPool2d):
    """torch.nn.AdaptiveAvgPool2d running fastconv.adaptive_avg_pool2d."""

    def forward(self, input):
        return F.adaptive_avg_pool2d(input, self.output_size)


class ReLU(Named, torch.nn.ReLU):
    """torch.nn.ReLU running fastconv.relu."""

    def forward(self, input):
        return F.relu(input, inplace=self.inplace)


class SORT(Named, torch.nn.Module):
    """Second-order response transform of two branches: forward(a, b) = fastconv.sort(a, b, mode, eps)."""

    def __init__(self, mode="sqrt", eps=0.01):
        super().__init__()
        if mode not in F.SORT_MODES:
            raise ValueError(f"fastconv.nn.SORT: 'mode' must be 'sqrt' or 'product', got {mode!r}")
        self.mode, self.eps = mode, float(eps)

    def forward(self, a, b):
        return F.sort(a, b, self.mode, self.eps)

    def extra_repr(self):
        return f"mode={self.mode!r}, eps={self.eps}"


# ---------------------------------------------------------------- inference fusion
# A fused call replaces modules by what they are known to compute, so every fused path first checks
# the exact types of the modules it stands for (a subclass may override forward) and that they have no
# hooks (which only a module call runs), and otherwise runs them one by one. The checks are made on
# every call, so a plan follows the children and hooks a user adds.
def is_relu(act):
    """True if the activation `act` (a module or a function) computes exactly relu."""
    return type(act) in (torch.nn.ReLU, ReLU) or act in (F.relu, torch.relu, torch.nn.functional.relu)


_MODULE = torch.nn.modules.module


def _hooked(m):
    """True if the module m (None and functions aside) has forward or backward hooks of its own."""
    return isinstance(m, torch.nn.Module) and bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                                                   or m._backward_pre_hooks)


def _no_hooks(*modules):
    """True if calling each of these modules (None and functions aside) would run its forward alone:
    no forward or backward hooks of its own or global ones (pruning, spectral_norm, activation
    capture) that a fused call standing for it would skip."""
    if (_MODULE._global_forward_hooks or _MODULE._global_forward_pre_hooks or _MODULE._global_backward_hooks
            or _MODULE._global_backward_pre_hooks):
        return False
    for m in modules:
        if _hooked(m):
            return False
    return True


def foldable(bn):
    """True if `bn` is a BatchNorm2d normalizing with its running statistics, i.e. an affine map that
    can be folded."""
    return (type(bn) is torch.nn.BatchNorm2d and not bn.training and bn.track_running_stats
            and bn.running_mean is not None)


def bn_scale_shift(bn, conv_bias=None):
    """Per-channel (scale, shift) with bn(conv(x) + conv_bias) == conv(x) * scale + shift (eval BN)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    if conv_bias is not None:
        shift = shift + conv_bias * scale
    return scale, shift


_fold_generation = 0


def clear_folded_cache():
    """Invalidate every cached BatchNorm fold (after writes that bypass version counters, `.data`)."""
    global _fold_generation
    _fold_generation += 1


_fx = torch.fx._symbolic_trace
_is_fx_tracing = getattr(_fx, "is_fx_symbolic_tracing", None) or _fx.is_fx_tracing  # (the latter logs a warning)


def _folded(bn, conv_bias):
    """bn_scale_shift, cached on `bn` for inference. The cache holds the tensors it was computed from
    and is used while the same tensors hold the same storage, version counter and dtype (an optimizer
    step, load_state_dict, in-place ops, .to() and assigning a new buffer all recompute it) and until
    clear_folded_cache(). Not cached where autograd (reverse or forward mode) or torch.fx must see the
    computation, or under torch.compile (which folds it itself)."""
    if torch.compiler.is_compiling() or _is_fx_tracing() or torch.autograd.forward_ad._current_level >= 0:
        return bn_scale_shift(bn, conv_bias)
    # bn.running_mean etc. as the module's dicts hold them (Module.__getattr__ costs about 0.6 us each;
    # the tracers above need it, to see their proxies)
    buffers, params = bn._buffers, bn._parameters
    ts = (buffers["running_mean"], buffers["running_var"], params["weight"], params["bias"], conv_bias)
    grad = torch.is_grad_enabled()
    key = [_fold_generation, bn.eps]
    for t in ts:
        if t is None:
            key.append(None)
        elif not isinstance(t, torch.Tensor) or (grad and t.requires_grad):  # torch.fx proxies; autograd
            return bn_scale_shift(bn, conv_bias)
        else:  # the cache holds the tensors, so their ids stay theirs
            key.append((id(t), t.data_ptr(), t._version, t.dtype))
    cached = bn.__dict__.get("_fastconv_folded")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, ts) + bn_scale_shift(bn, conv_bias)
        bn.__dict__["_fastconv_folded"] = cached
    return cached[2], cached[3]


def conv_bn_act(conv, bn, x, *, act=None, residual=None, combine=None, mode="sqrt", eps=0.01, fuse=True):
    """act?(combine(residual, bn?(conv(x)))) - one fastconv.conv2d_fused call when `fuse`, `conv` is a
    fastconv Conv2d, the BN (if any) can be folded and `act` (a module or function, or None) is a relu;
    a BatchNorm2d in training mode followed by (an add and) a ReLU runs as one operator
    (functional.batch_norm_relu_train) after the convolution; else the modules one after the other
    (other activations or subclasses, modules with hooks). `conv` may be a SORTConv2d (whose second
    branch takes the fused path)."""
    fuse = fuse and _no_hooks(conv, bn, act)
    if type(conv) is SORTConv2d:
        if combine is not None:
            raise ValueError("fastconv: a SORTConv2d cannot take a residual")
        if fuse and bn is None:  # act(sort(a, b)): the epilogue of branch b (a BN would follow the sort)
            return conv_bn_act(conv.branch_b, None, x, act=act, residual=conv.branch_a(x), combine="sort",
                               mode=conv.mode, eps=conv.eps)
    elif fuse and type(conv) is Conv2d and (bn is None or foldable(bn)) and (act is None or is_relu(act)):
        scale = shift = None
        bias = conv.bias
        if bn is not None:
            scale, shift = _folded(bn, conv.bias)
            bias = None
        x, padding = _padded(conv, x)
        return F.conv2d_fused(x, conv.weight, bias, conv.stride, padding, conv.dilation, conv.groups,
                              scale=scale, shift=shift, residual=residual, combine=combine,
                              relu=act is not None, mode=mode, eps=eps)
    y = conv(x)
    # BN on batch statistics (training) -> add -> ReLU: one operator, whatever `fuse` (which is about
    # folding BN's running statistics for inference)
    if bn is not None and bn.training and combine in (None, "add") and act is not None and is_relu(act) \
            and _no_hooks(bn, act):
        out = F.batch_norm_relu_train(y, bn, residual if combine == "add" else None)
        if out is not None:
            return out
    if bn is not None:
        y = bn(y)
    if combine == "add":
        y = y + residual
    elif combine == "sort":
        y = F.sort(residual, y, mode, eps)
    return y if act is None else act(y)


class Fusable(Named):
    """Mixin of modules with a fused inference path: it is taken while `fused` is set and the module
    is in eval mode (BN folding uses running statistics, so training always runs unfused)."""
    fused = False

    def _use_fused(self):
        return self.fused and not self.training


def fuse_module(module):
    """Turn on the fused inference path of one module, if it has one: a fastconv Sequential with
    conv -> BN -> ReLU runs, or a Fusable block. Returns (what, count, folded): a label and how many
    groups were fused, and the names of the BatchNorm children folded into convolutions; None when
    nothing was fused. (convert and the models' fuse() both go through here.)"""
    if isinstance(module, Sequential):
        groups = module.fuse()
        if not groups:
            return None
        names = list(module._modules)
        return "Sequential conv groups", groups, {names[bn] for _, _, bn, _ in module._plan if bn is not None}
    if isinstance(module, Fusable):
        module.fused = True
        return type(module).__name__, 1, {k for k, v in module.named_children()
                                          if isinstance(v, torch.nn.BatchNorm2d)}
    return None


def cache_weights(model):
    """Register the CPU weights of the model's fastconv convolutions for the native packed-weight
    cache (csrc/cpu/weight_cache.cpp): their inference calls then skip repacking while the weight
    tensor and its version counter are unchanged."""
    from fastconv import _ext
    if not _ext.native_available():
        return
    for m in model.modules():
        if isinstance(m, Conv2d) and m.weight.device.type == "cpu" and not m.weight.is_inference():
            _ext._C.cache_weight(m.weight)


class SORTConv2d(Named, torch.nn.Module):
    """Two parallel convolutions of the same input fused by SORT: sort(branch_a(x), branch_b(x)).
    Drop-in for a Conv2d in chain-style nets (AlexNet-SORT); a following ReLU fuses into branch_b."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, mode="sqrt", eps=0.01):
        super().__init__()
        args = (in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.branch_a, self.branch_b = Conv2d(*args), Conv2d(*args)
        self.mode, self.eps = mode, float(eps)
        self.out_channels = out_channels

    def forward(self, x):
        return F.sort(self.branch_a(x), self.branch_b(x), self.mode, self.eps)


class Sequential(Fusable, torch.nn.Sequential):
    """nn.Sequential whose conv -> BatchNorm2d? -> ReLU? runs are computed by fastconv.conv2d_fused
    in eval mode. Children and state_dict are those of the Sequential it replaces. The groups are
    planned over the children present at each call, so assigning a child is always seen."""
    _plan = ()

    @staticmethod
    def plan(mods):
        """(first index, length, BN index or None, ends in relu) of each run over `mods` (conv_bn_act
        decides at each call whether a run's BN can be folded: eval mode, running statistics)."""
        plan, i = [], 0
        while i < len(mods):
            n, bn, relu = 1, None, False
            if type(mods[i]) in (Conv2d, SORTConv2d):
                if type(mods[i]) is Conv2d and i + n < len(mods) and type(mods[i + n]) is torch.nn.BatchNorm2d \
                        and mods[i + n].num_features == mods[i].out_channels:  # not after a sort
                    bn, n = i + n, n + 1
                if i + n < len(mods) and is_relu(mods[i + n]):
                    relu, n = True, n + 1
            plan.append((i, n, bn, relu))
            i += n
        return tuple(plan)

    def fuse(self):
        """Turn on the fused path if the current children have a run to fuse; returns the number of
        runs (`_plan` keeps the plan of these children, for reporting)."""
        self._plan = self.plan(list(self._modules.values()))
        groups = sum(1 for p in self._plan if p[1] > 1)
        self.fused = groups > 0
        return groups

    def forward(self, x):
        if not self._use_fused():
            return super().forward(x)
        mods = list(self._modules.values())
        for i, n, bn, relu in self.plan(mods):
            if n == 1:
                x = mods[i](x)
            else:
                x = conv_bn_act(mods[i], None if bn is None else mods[bn], x, act=mods[i + n - 1] if relu else None)
        return x


class ConvBNReLU(Fusable, torch.nn.Module):
    """relu(bn(conv(x))) with children `conv` and `bn` (the layout of torchvision's googlenet BasicConv2d)."""

    def __init__(self, in_channels, out_channels, bn_eps=1e-5, **conv_kwargs):
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = torch.nn.BatchNorm2d(out_channels, eps=bn_eps)

    def forward(self, x):
        return conv_bn_act(self.conv, self.bn, x, act=F.relu, fuse=self._use_fused())


def _conv3x3(cin, cout, stride=1, groups=1, dilation=1):
    return Conv2d(cin, cout, 3, stride=stride, padding=dilation, groups=groups, bias=False, dilation=dilation)


def _conv1x1(cin, cout, stride=1):
    return Conv2d(cin, cout, 1, stride=stride, bias=False)


def _replay_allowed(x):
    """True where a fused block may repeat its recorded kernel calls (_Block._replay): inference
    without gradients on a plain 4-D tensor, on the native backend, with nothing that has to see the
    calls (tracers, torch.compile, forward-mode AD, autocast, torch function modes, global hooks)."""
    return (type(x) is torch.Tensor and x.dim() == 4 and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling() and not _is_fx_tracing()
            and torch.autograd.forward_ad._current_level < 0 and not torch._C._is_torch_function_mode_enabled()
            and not torch.is_autocast_enabled(x.device.type) and backends.get_backend() == "native"
            and _no_hooks())


def _conv_state(conv):
    """What a recorded call of `conv` depends on besides its input: its weight and bias (the same
    tensors, compared by identity, of the same shape, dtype and device) and its geometry."""
    w, b = conv._parameters.get("weight"), conv._parameters.get("bias")  # (pruning moves the weight)
    if w is None:
        return None, b, None
    return w, b, (w.shape, w.dtype, w.device, conv.stride, conv.padding, conv.dilation, conv.groups,
                  conv.padding_mode)


def _same_state(conv, state):
    w, b, rest = _conv_state(conv)
    return w is not None and w is state[0] and b is state[1] and rest == state[2]


class _Block(Fusable, torch.nn.Module):
    combine, mode, eps = "add", "sqrt", 0.01

    def _set_combine(self, combine, mode, eps):
        if combine not in ("add", "sort"):
            raise ValueError(f"fastconv.nn: 'combine' must be 'add' or 'sort', got {combine!r}")
        if mode not in F.SORT_MODES:
            raise ValueError(f"fastconv.nn: 'mode' must be 'sqrt' or 'product', got {mode!r}")
        self.combine, self.mode, self.eps = combine, mode, float(eps)

    def forward(self, x):
        fuse = self._use_fused()
        replay = fuse and _replay_allowed(x)
        if replay:
            out = self._replay(x)
            if out is not None:
                return out
        identity = x if self.downsample is None else self.downsample(x)
        out = x
        last = len(self._stages) - 1
        for k, (conv, bn) in enumerate(self._stages):
            conv, bn = getattr(self, conv), getattr(self, bn)
            if k < last:
                out = conv_bn_act(conv, bn, out, act=self.relu, fuse=fuse)
            else:
                out = conv_bn_act(conv, bn, out, act=self.relu, residual=identity, combine=self.combine,
                                  mode=self.mode, eps=self.eps, fuse=fuse)
        if replay:
            self._record(x)
        return out

    # The checked fused path costs 15-30 us of Python a convolution. After a call that took it, the
    # block keeps what its kernel calls were made of; a later call with an input of the same shape,
    # dtype and device, the same children, parameters and geometry and no hooks repeats them directly
    # (the native operators check shapes again; BatchNorm folds come from _folded's cache as before).
    # ResNet-50 at batch 1: 1-2% of the forward.
    def _signature(self, x):
        return (x.shape, x.dtype, x.device, self.combine, self.mode, self.eps, self.downsample,
                self._modules.get("relu"))

    def _record(self, x):
        stages = []
        for conv_name, bn_name in self._stages:
            conv, bn = self._modules[conv_name], self._modules[bn_name]
            state = _conv_state(conv)
            if (type(conv) is not Conv2d or conv.padding_mode != "zeros" or not foldable(bn) or not is_relu(self.relu)
                    or state[0] is None or not _no_hooks(conv, bn, self.relu)):
                self.__dict__["_fastconv_plan"] = None
                return
            geometry = F._conv_geometry(tuple(state[0].shape[2:]), conv.stride, conv.padding, conv.dilation,
                                        conv.groups)
            stages.append((conv_name, bn_name, conv, bn, state, geometry))
        self.__dict__["_fastconv_plan"] = (self._signature(x), stages)

    def _replay(self, x):
        plan = self.__dict__.get("_fastconv_plan")
        if plan is None or plan[0] != self._signature(x) or _hooked(self.relu):
            return None
        children = self._modules
        for conv_name, bn_name, conv, bn, state, _ in plan[1]:
            if (children[conv_name] is not conv or children[bn_name] is not bn or not _same_state(conv, state)
                    or not foldable(bn) or _hooked(conv) or _hooked(bn)):
                return None
        identity = x if self.downsample is None else self.downsample(x)
        run = torch.ops.fastconv.conv2d_fused_fwd
        out, last = x, len(plan[1]) - 1
        for k, (_, _, conv, bn, state, (stride, pads, dilation, groups)) in enumerate(plan[1]):
            scale, shift = _folded(bn, state[1])
            if k < last:
                out = run(out, state[0], None, stride, pads, dilation, groups, scale, shift, None, 0, True, 0, 0.01)
            else:
                out = run(out, state[0], None, stride, pads, dilation, groups, scale, shift, identity,
                          F.COMBINES[self.combine], True, F.SORT_MODES[self.mode], self.eps)
        return out

    def extra_repr(self):
        return f"combine={self.combine!r}" + (f", mode={self.mode!r}, eps={self.eps}" if self.combine == "sort" else "")


class BasicBlock(_Block):
    """torchvision's ResNet BasicBlock (same children and state_dict): relu(combine(identity, F(x)))
    with F = conv3x3-bn-relu-conv3x3-bn and combine 'add' (ResNet) or 'sort' (SORT-ResNet)."""
    expansion = 1
    _stages = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None, combine="add", mode="sqrt", eps=0.01):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock")
        norm_layer = norm_layer or torch.nn.BatchNorm2d
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride
        self._set_combine(combine, mode, eps)


class Bottleneck(_Block):
    """torchvision's ResNet Bottleneck (v1.5: stride on the 3x3; same children and state_dict):
    relu(combine(identity, F(x))), F = conv1x1-bn-relu-conv3x3-bn-relu-conv1x1-bn."""
    expansion = 4
    _stages = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None, combine="add", mode="sqrt", eps=0.01):
        super().__init__()
        norm_layer = norm_layer or torch.nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = _conv3x3(width, width, stride, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = ReLU()
        self.downsample = downsample
        self.stride = stride
        self._set_combine(combine, mode, eps)


class SORTBasicBlock(BasicBlock):
    """BasicBlock whose residual fusion is SORT: relu(sort(identity, F(x)))."""

    def __init__(self, *args, mode="sqrt", eps=0.01, **kwargs):
        super().__init__(*args, combine="sort", mode=mode, eps=eps, **kwargs)


class SORTBottleneck(Bottleneck):
    """Bottleneck whose residual fusion is SORT: relu(sort(identity, F(x)))."""

    def __init__(self, *args, mode="sqrt", eps=0.01, **kwargs):
        super().__init__(*args, combine="sort", mode=mode, eps=eps, **kwargs)
