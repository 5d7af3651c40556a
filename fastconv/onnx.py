"""ONNX export of models running fastconv's native operators, by torch.onnx.export(..., dynamo=False)
(symbolics registered on import) or by the dynamo exporter with `export()` / `translations()`:
each operator maps to the standard ONNX operators computing it (Conv, MaxPool, AveragePool,
GlobalAveragePool, Relu, and SORT as Relu / Mul / Add / Sqrt), so a converted or fused model, SORT
included, exports as it is. `register()` runs on `import fastconv`; the cases ONNX has no operator
for (divisor_override, adaptive pooling to a size that does not divide the input) raise an error
naming the argument. `fastconv.unconvert` is the other route (no SORT)."""
import torch

OPSET = 17
COMBINE_ADD, COMBINE_SORT = 1, 2


def _helpers():
    from torch.onnx import symbolic_helper
    return symbolic_helper


def _onnx_pads(padding):
    top, bottom, left, right = padding
    return [top, left, bottom, right]


def _channel(g, t):
    """A per-channel vector as (1, K, 1, 1) for broadcasting."""
    return g.op("Unsqueeze", t, g.op("Constant", value_t=torch.tensor([0, 2, 3], dtype=torch.int64)))


def _sort(g, a, b, mode, eps):
    """a + b + sqrt(relu(a) relu(b) + eps) (mode 0) or a + b + relu(a) relu(b) (mode 1)."""
    p = g.op("Mul", g.op("Relu", a), g.op("Relu", b))
    if mode == 0:
        p = g.op("Sqrt", g.op("Add", p, g.op("CastLike", g.op("Constant", value_t=torch.tensor(eps)), p)))
    return g.op("Add", g.op("Add", a, b), p)


def _conv(g, input, weight, bias, stride, padding, dilation, groups):
    args = [input, weight] + ([] if _helpers()._is_none(bias) else [bias])
    return g.op("Conv", *args, strides_i=stride, pads_i=_onnx_pads(padding), dilations_i=dilation, group_i=groups)


def conv2d_fwd(g, input, weight, bias, stride, padding, dilation, groups):
    h = _helpers()
    return _conv(g, input, weight, bias, h._get_const(stride, "is", "stride"), h._get_const(padding, "is", "padding"),
                 h._get_const(dilation, "is", "dilation"), h._get_const(groups, "i", "groups"))


def conv2d_fused_fwd(g, input, weight, bias, stride, padding, dilation, groups, scale, shift, residual, combine,
                     relu, mode, eps):
    h = _helpers()
    z = _conv(g, input, weight, None, h._get_const(stride, "is", "stride"), h._get_const(padding, "is", "padding"),
              h._get_const(dilation, "is", "dilation"), h._get_const(groups, "i", "groups"))
    if not h._is_none(scale):  # z * scale + shift + bias, as the fused epilogue
        z = g.op("Mul", z, _channel(g, scale))
    for t in (shift, bias):
        if not h._is_none(t):
            z = g.op("Add", z, _channel(g, t))
    combine = h._get_const(combine, "i", "combine")
    if combine == COMBINE_ADD:
        z = g.op("Add", z, residual)
    elif combine == COMBINE_SORT:
        z = _sort(g, residual, z, h._get_const(mode, "i", "mode"), h._get_const(eps, "f", "eps"))
    return g.op("Relu", z) if h._get_const(relu, "b", "relu") else z


def _pool_attrs(h, kernel_size, stride, padding, ceil_mode):
    k, s = h._get_const(kernel_size, "is", "kernel_size"), h._get_const(stride, "is", "stride")
    p = h._get_const(padding, "is", "padding")
    return dict(kernel_shape_i=k, strides_i=s, pads_i=[p[0], p[1], p[0], p[1]],
                ceil_mode_i=int(h._get_const(ceil_mode, "b", "ceil_mode")))


def max_pool2d_values(g, input, kernel_size, stride, padding, dilation, ceil_mode):
    h = _helpers()
    return g.op("MaxPool", input, dilations_i=h._get_const(dilation, "is", "dilation"),
                **_pool_attrs(h, kernel_size, stride, padding, ceil_mode))


def max_pool2d_fwd(g, input, kernel_size, stride, padding, dilation, ceil_mode):
    """Values and torch's indices (flat within each H*W plane): ONNX numbers them over the whole
    tensor, so the index of each plane's first element is subtracted (as torch's own exporter does)."""
    h = _helpers()
    values, indices = g.op("MaxPool", input, outputs=2, dilations_i=h._get_const(dilation, "is", "dilation"),
                           **_pool_attrs(h, kernel_size, stride, padding, ceil_mode))
    _, flat = g.op("MaxPool", input, outputs=2, kernel_shape_i=[1, 1], strides_i=[1, 1])

    def const(v):
        return g.op("Constant", value_t=torch.tensor(v, dtype=torch.int64))

    first = g.op("Slice", flat, const([0, 0]), const([1, 1]), const([2, 3]))
    return values, g.op("Sub", indices, first)


def avg_pool2d_fwd(g, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    h = _helpers()
    if not h._is_none(divisor_override):
        raise RuntimeError("fastconv.onnx: avg_pool2d with divisor_override has no ONNX AveragePool equivalent")
    include = int(h._get_const(count_include_pad, "b", "count_include_pad"))
    return g.op("AveragePool", input, count_include_pad_i=include, **_pool_attrs(h, kernel_size, stride, padding,
                                                                                ceil_mode))


def adaptive_avg_pool2d_fwd(g, input, output_size):
    """GlobalAveragePool for 1x1; else per dimension an average over in/out elements where out divides
    the (static) input size, or a repetition of each element out/in times where in divides out."""
    h = _helpers()
    out = h._get_const(output_size, "is", "output_size")
    if list(out) == [1, 1]:
        return g.op("GlobalAveragePool", input)
    sizes = h._get_tensor_sizes(input)
    if not sizes or any(s is None for s in sizes[2:]) or any(i % o and o % i for i, o in zip(sizes[2:], out)):
        raise RuntimeError(f"fastconv.onnx: adaptive_avg_pool2d to {out} from {sizes} has no ONNX equivalent "
                           "(output sizes must divide the static input sizes, or be multiples of them)")
    kernel = [i // o if i % o == 0 else 1 for i, o in zip(sizes[2:], out)]
    y = g.op("AveragePool", input, kernel_shape_i=kernel, strides_i=kernel) if kernel != [1, 1] else input
    scales = [float(o // i) if i % o else 1.0 for i, o in zip(sizes[2:], out)]
    if scales != [1.0, 1.0]:
        y = g.op("Resize", y, g.op("Constant", value_t=torch.tensor([], dtype=torch.float32)),
                 g.op("Constant", value_t=torch.tensor([1.0, 1.0] + scales)), mode_s="nearest",
                 coordinate_transformation_mode_s="asymmetric", nearest_mode_s="floor")
    return y


def relu_fwd(g, input):
    return g.op("Relu", input)


def sort_fwd(g, a, b, mode, eps):
    h = _helpers()
    return _sort(g, a, b, h._get_const(mode, "i", "mode"), h._get_const(eps, "f", "eps"))


SYMBOLICS = dict(conv2d_fwd=conv2d_fwd, conv2d_fused_fwd=conv2d_fused_fwd, max_pool2d_values=max_pool2d_values,
                 max_pool2d_fwd=max_pool2d_fwd, avg_pool2d_fwd=avg_pool2d_fwd,
                 adaptive_avg_pool2d_fwd=adaptive_avg_pool2d_fwd, relu_fwd=relu_fwd, sort_fwd=sort_fwd)


def register(opset=OPSET):
    """Register the symbolic functions of the fastconv operators with torch.onnx's exporter."""
    for name, fn in SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(f"fastconv::{name}", fn, opset)


# ---------------------------------------------------------------- the dynamo exporter
# torch.onnx.export(..., dynamo=True) translates the exported graph with onnxscript functions; the
# fastconv operators' are below (the same ONNX operators as the symbolics above), passed as
#     torch.onnx.export(model, args, dynamo=True, custom_translation_table=fastconv.onnx.translations())
# (or fastconv.onnx.export(model, args, ...), which adds them).

def translations():
    """{fastconv operator overload: onnxscript function} for torch.onnx.export(dynamo=True)'s
    custom_translation_table. Needs the onnxscript package (which the dynamo exporter needs anyway)."""
    from onnxscript import opset17 as op

    def conv(input, weight, bias, stride, padding, dilation, groups):
        args = (input, weight) if bias is None else (input, weight, bias)
        return op.Conv(*args, strides=list(stride), pads=_onnx_pads(padding), dilations=list(dilation), group=groups)

    def channel(t):
        return op.Unsqueeze(t, op.Constant(value_ints=[0, 2, 3]))

    def sort(a, b, mode, eps):
        p = op.Mul(op.Relu(a), op.Relu(b))
        if mode == 0:
            p = op.Sqrt(op.Add(p, op.CastLike(op.Constant(value_float=eps), p)))
        return op.Add(op.Add(a, b), p)

    def conv2d_fused_fwd(input, weight, bias, stride, padding, dilation, groups, scale, shift, residual, combine,
                         relu, mode, eps):
        z = conv(input, weight, None, stride, padding, dilation, groups)
        if scale is not None:
            z = op.Mul(z, channel(scale))
        for t in (shift, bias):
            if t is not None:
                z = op.Add(z, channel(t))
        if combine == COMBINE_ADD:
            z = op.Add(z, residual)
        elif combine == COMBINE_SORT:
            z = sort(residual, z, mode, eps)
        return op.Relu(z) if relu else z

    def pool_attrs(kernel_size, stride, padding, ceil_mode):
        return dict(kernel_shape=list(kernel_size), strides=list(stride),
                    pads=[padding[0], padding[1], padding[0], padding[1]], ceil_mode=int(ceil_mode))

    def max_pool2d_values(input, kernel_size, stride, padding, dilation, ceil_mode):
        values, _ = op.MaxPool(input, dilations=list(dilation), **pool_attrs(kernel_size, stride, padding, ceil_mode))
        return values

    def max_pool2d_fwd(input, kernel_size, stride, padding, dilation, ceil_mode):
        values, indices = op.MaxPool(input, dilations=list(dilation),
                                     **pool_attrs(kernel_size, stride, padding, ceil_mode))
        _, flat = op.MaxPool(input, kernel_shape=[1, 1], strides=[1, 1])  # torch's indices: within each plane
        first = op.Slice(flat, op.Constant(value_ints=[0, 0]), op.Constant(value_ints=[1, 1]),
                         op.Constant(value_ints=[2, 3]))
        return values, op.Sub(indices, first)

    def avg_pool2d_fwd(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
        if divisor_override is not None:
            raise RuntimeError("fastconv.onnx: avg_pool2d with divisor_override has no ONNX AveragePool equivalent")
        return op.AveragePool(input, count_include_pad=int(count_include_pad),
                              **pool_attrs(kernel_size, stride, padding, ceil_mode))

    def adaptive_avg_pool2d_fwd(input, output_size):
        out = list(output_size)
        if out == [1, 1]:
            return op.GlobalAveragePool(input)
        sizes = list(input.shape)[2:] if input.shape is not None else [None, None]
        if any(not isinstance(s, int) for s in sizes) or any(i % o and o % i for i, o in zip(sizes, out)):
            raise RuntimeError(f"fastconv.onnx: adaptive_avg_pool2d to {out} from {sizes} has no ONNX equivalent "
                               "(output sizes must divide the static input sizes, or be multiples of them)")
        kernel = [i // o if i % o == 0 else 1 for i, o in zip(sizes, out)]
        y = op.AveragePool(input, kernel_shape=kernel, strides=kernel) if kernel != [1, 1] else input
        scales = [float(o // i) if i % o else 1.0 for i, o in zip(sizes, out)]
        if scales != [1.0, 1.0]:
            y = op.Resize(y, None, op.Constant(value_floats=[1.0, 1.0] + scales), mode="nearest",
                          coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        return y

    fns = dict(conv2d_fwd=conv, conv2d_fused_fwd=conv2d_fused_fwd, max_pool2d_values=max_pool2d_values,
               max_pool2d_fwd=max_pool2d_fwd, avg_pool2d_fwd=avg_pool2d_fwd,
               adaptive_avg_pool2d_fwd=adaptive_avg_pool2d_fwd, relu_fwd=lambda input: op.Relu(input),
               sort_fwd=sort)
    assert set(fns) == set(SYMBOLICS)  # one list of exportable operators for both exporters
    return {getattr(torch.ops.fastconv, name).default: fn for name, fn in fns.items()}


def export(model, args, f=None, **kwargs):
    """torch.onnx.export(model, args, f, dynamo=True, ...) with the fastconv operators' translations
    added to any custom_translation_table given; returns the ONNXProgram."""
    table = dict(translations())
    table.update(kwargs.pop("custom_translation_table", None) or {})
    return torch.onnx.export(model, args, f, dynamo=True, custom_translation_table=table, **kwargs)
