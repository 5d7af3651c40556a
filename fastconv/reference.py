"""Plain NumPy float64 reference of every fastconv operator, written to be read, not to be fast.

It follows torch's definitions (padding (top, bottom, left, right) for convolutions, torch's pooling
output sizes and average-pool divisors, torch's choice of max index and NaN handling) but does not
use torch, so the test suite can check fastconv against two independent references. All arrays are
NCHW; results are float64.
"""
import numpy as np


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _pair(v):
    return (v, v) if np.isscalar(v) else tuple(v)


# ---------------------------------------------------------------- convolution
def conv_out_size(size, pad0, pad1, dilation, k, stride):
    return (size + pad0 + pad1 - dilation * (k - 1) - 1) // stride + 1


def _conv_geometry(x_shape, w_shape, stride, padding, dilation):
    n, c, h, w = x_shape
    k, cpg, r, s = w_shape
    pt, pb, pl, pr = padding
    p = conv_out_size(h, pt, pb, dilation[0], r, stride[0])
    q = conv_out_size(w, pl, pr, dilation[1], s, stride[1])
    return p, q


def _tap(xp, i, j, p, q, stride, dilation):
    """The (N, C, P, Q) view of padded input `xp` seen by kernel tap (i, j) at every output position."""
    r0, c0 = i * dilation[0], j * dilation[1]
    return xp[:, :, r0:r0 + stride[0] * (p - 1) + 1:stride[0], c0:c0 + stride[1] * (q - 1) + 1:stride[1]]


def _pad(x, padding):
    pt, pb, pl, pr = padding
    return np.pad(_f64(x), ((0, 0), (0, 0), (pt, pb), (pl, pr)))


def conv2d_fwd(x, weight, bias=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """y[n, k, p, q] = bias[k] + sum_{c in group(k), i, j} x_pad[n, c, p*sh + i*dh, q*sw + j*dw] w[k, c, i, j]."""
    stride, dilation = _pair(stride), _pair(dilation)
    weight = _f64(weight)
    xp = _pad(x, padding)
    n = xp.shape[0]
    k, cpg, r, s = weight.shape
    kpg = k // groups
    p, q = _conv_geometry(np.shape(x), weight.shape, stride, padding, dilation)
    y = np.zeros((n, k, p, q))
    for g in range(groups):
        ks, cs = slice(g * kpg, (g + 1) * kpg), slice(g * cpg, (g + 1) * cpg)
        for i in range(r):
            for j in range(s):
                xt = _tap(xp[:, cs], i, j, p, q, stride, dilation)
                y[:, ks] += np.einsum("ncpq,kc->nkpq", xt, weight[ks, :, i, j])
    if bias is not None:
        y += _f64(bias).reshape(1, -1, 1, 1)
    return y


def conv2d_bwd_input(grad_out, weight, input_size, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
                     groups=1):
    """Gradient of conv2d_fwd with respect to its input: every tap scatters back where it read."""
    stride, dilation = _pair(stride), _pair(dilation)
    gy, weight = _f64(grad_out), _f64(weight)
    n, c, h, w = input_size
    pt, pb, pl, pr = padding
    k, cpg, r, s = weight.shape
    kpg = k // groups
    p, q = gy.shape[2:]
    gxp = np.zeros((n, c, h + pt + pb, w + pl + pr))
    for g in range(groups):
        ks, cs = slice(g * kpg, (g + 1) * kpg), slice(g * cpg, (g + 1) * cpg)
        for i in range(r):
            for j in range(s):
                _tap(gxp[:, cs], i, j, p, q, stride, dilation)[...] += np.einsum(
                    "nkpq,kc->ncpq", gy[:, ks], weight[ks, :, i, j])
    return gxp[:, :, pt:pt + h, pl:pl + w].copy()


def conv2d_bwd_weight(grad_out, x, weight_size, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """Gradient of conv2d_fwd with respect to its weight: correlate grad_out with each tap's input view."""
    stride, dilation = _pair(stride), _pair(dilation)
    gy = _f64(grad_out)
    xp = _pad(x, padding)
    k, cpg, r, s = weight_size
    kpg = k // groups
    p, q = gy.shape[2:]
    gw = np.zeros((k, cpg, r, s))
    for g in range(groups):
        ks, cs = slice(g * kpg, (g + 1) * kpg), slice(g * cpg, (g + 1) * cpg)
        for i in range(r):
            for j in range(s):
                xt = _tap(xp[:, cs], i, j, p, q, stride, dilation)
                gw[ks, :, i, j] = np.einsum("nkpq,ncpq->kc", gy[:, ks], xt)
    return gw


def conv2d_bwd_bias(grad_out):
    return _f64(grad_out).sum(axis=(0, 2, 3))


# ---------------------------------------------------------------- eltwise
def relu_fwd(x):
    x = _f64(x)
    return np.where(x < 0, 0.0, x)  # NaN and -0 stay, as in torch.relu


def relu_bwd(grad_out, result):
    # torch's threshold_backward: zero where result <= 0, so a NaN result passes the gradient on.
    return np.where(_f64(result) <= 0, 0.0, _f64(grad_out))


SORT_MODES = {"sqrt": 0, "product": 1, 0: 0, 1: 1}


def sort_fwd(a, b, mode="sqrt", eps=0.01):
    """SORT: a + b + sqrt(relu(a) relu(b) + eps) ('sqrt') or a + b + relu(a) relu(b) ('product')."""
    a, b = _f64(a), _f64(b)
    prod = relu_fwd(a) * relu_fwd(b)
    if SORT_MODES[mode] == 0:
        return a + b + np.sqrt(prod + eps)
    return a + b + prod


def sort_bwd(grad_out, a, b, mode="sqrt", eps=0.01):
    """(grad_a, grad_b): dy/da = 1 + [a > 0] relu(b) / (2 sqrt(relu(a) relu(b) + eps)) for 'sqrt',
    1 + [a > 0] relu(b) for 'product'; symmetric in b. With eps = 0 the term is 0 where relu(b) = 0
    (the function is constant in a there), not 0/0."""
    g, a, b = _f64(grad_out), _f64(a), _f64(b)
    ra, rb = relu_fwd(a), relu_fwd(b)
    if SORT_MODES[mode] == 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            root2 = 2.0 * np.sqrt(ra * rb + eps)
            da = 1.0 + np.where((a > 0) & (rb != 0), rb / root2, 0.0)
            db = 1.0 + np.where((b > 0) & (ra != 0), ra / root2, 0.0)
    else:
        da = 1.0 + np.where(a > 0, rb, 0.0)
        db = 1.0 + np.where(b > 0, ra, 0.0)
    return g * da, g * db


# ---------------------------------------------------------------- fused convolution
COMBINES = {None: 0, "none": 0, "add": 1, "sort": 2, 0: 0, 1: 1, 2: 2}


def _channel(v):
    return None if v is None else _f64(v).reshape(1, -1, 1, 1)


def _fused_parts(x, weight, bias, stride, padding, dilation, groups, scale, shift, residual, combine, mode, eps):
    c = conv2d_fwd(x, weight, None, stride, padding, dilation, groups)
    z = c.copy()
    if scale is not None:
        z = z * _channel(scale)
    for t in (shift, bias):
        if t is not None:
            z = z + _channel(t)
    code = COMBINES[combine]
    if code == 1:
        u = z + _f64(residual)
    elif code == 2:
        u = sort_fwd(residual, z, mode, eps)
    else:
        u = z
    return c, z, u


def conv2d_fused(x, weight, bias=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1,
                 scale=None, shift=None, residual=None, combine=None, relu=False, mode="sqrt", eps=0.01):
    """relu?(combine(conv(x) * scale + shift + bias, residual)) with combine none | add (z + residual)
    | sort (sort(residual, z))."""
    _, _, u = _fused_parts(x, weight, bias, stride, padding, dilation, groups, scale, shift, residual,
                           combine, mode, eps)
    return relu_fwd(u) if relu else u


def conv2d_fused_bwd(grad_out, x, weight, bias=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
                     groups=1, scale=None, shift=None, residual=None, combine=None, relu=False, mode="sqrt",
                     eps=0.01):
    """Dict of gradients {input, weight, bias, scale, shift, residual} (None for absent tensors)."""
    stride, dilation = _pair(stride), _pair(dilation)
    c, z, u = _fused_parts(x, weight, bias, stride, padding, dilation, groups, scale, shift, residual,
                           combine, mode, eps)
    g = relu_bwd(grad_out, relu_fwd(u)) if relu else _f64(grad_out)
    code = COMBINES[combine]
    g_res = None
    if code == 1:
        g_z, g_res = g, g
    elif code == 2:
        g_res, g_z = sort_bwd(g, residual, z, mode, eps)
    else:
        g_z = g
    g_c = g_z if scale is None else g_z * _channel(scale)
    return {
        "input": conv2d_bwd_input(g_c, weight, np.shape(x), stride, padding, dilation, groups),
        "weight": conv2d_bwd_weight(g_c, x, np.shape(weight), stride, padding, dilation, groups),
        "bias": None if bias is None else g_z.sum(axis=(0, 2, 3)),
        "shift": None if shift is None else g_z.sum(axis=(0, 2, 3)),
        "scale": None if scale is None else (g_z * c).sum(axis=(0, 2, 3)),
        "residual": g_res,
    }


# ---------------------------------------------------------------- pooling
def pool_out_size(size, k, pad, stride, dilation, ceil_mode):
    """torch's pooling output size: with ceil_mode the last window must start inside the input or
    its left padding."""
    num = size + 2 * pad - dilation * (k - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = num // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _pool_params(kernel_size, stride, padding, dilation):
    k = _pair(kernel_size)
    s = k if stride is None or (not np.isscalar(stride) and len(stride) == 0) else _pair(stride)
    return k, s, _pair(padding), _pair(dilation)


def max_pool2d_fwd(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """(values, indices); indices are flat (h * W + w) within each input plane. Like torch's CPU
    kernel: the first maximum in window scan order wins, a NaN wins over numbers (the last NaN in scan
    order), and a window of -inf only reports its first in-bounds position."""
    x = _f64(x)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pool_params(kernel_size, stride, padding, dilation)
    n, c, h, w = x.shape
    oh = pool_out_size(h, kh, ph, sh, dh, ceil_mode)
    ow = pool_out_size(w, kw, pw, sw, dw, ceil_mode)
    y = np.full((n, c, oh, ow), -np.inf)
    idx = np.zeros((n, c, oh, ow), dtype=np.int64)
    for a in range(oh):
        for b in range(ow):
            rows = [a * sh - ph + i * dh for i in range(kh)]
            cols = [b * sw - pw + j * dw for j in range(kw)]
            # A window with no row or column inside the input (padding and dilation can do that)
            # reports -inf at torch's position: the first tap, moved down / right by the dilation
            # until it is not negative (it may lie past the input's end).
            r0 = rows[0] + max(0, -(rows[0] // dh)) * dh
            c0 = cols[0] + max(0, -(cols[0] // dw)) * dw
            rows = [r for r in rows if 0 <= r < h]
            cols = [q for q in cols if 0 <= q < w]
            best = np.full((n, c), -np.inf)
            best_idx = np.full((n, c), r0 * w + c0, dtype=np.int64)
            for r in rows:
                for q in cols:
                    v = x[:, :, r, q]
                    take = (v > best) | np.isnan(v)
                    best = np.where(take, v, best)
                    best_idx = np.where(take, r * w + q, best_idx)
            y[:, :, a, b] = best
            idx[:, :, a, b] = best_idx
    return y, idx


def max_pool2d_values(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """The values of max_pool2d_fwd."""
    return max_pool2d_fwd(x, kernel_size, stride, padding, dilation, ceil_mode)[0]


def max_pool2d_bwd(grad_out, indices, input_size):
    """Each output's gradient goes to the input position its index names (repeats accumulate). An
    index outside the plane (the forward reports one, as torch does, for a window with no tap inside
    the input: its value is -inf and depends on no input) passes nothing on."""
    n, c, h, w = input_size
    gx = np.zeros((n, c, h * w))
    gy = _f64(grad_out).reshape(n, c, -1)
    ind = np.asarray(indices).reshape(n, c, -1)
    for i in range(n):
        for j in range(c):
            inside = (ind[i, j] >= 0) & (ind[i, j] < h * w)
            np.add.at(gx[i, j], ind[i, j][inside], gy[i, j][inside])
    return gx.reshape(n, c, h, w)


def _avg_windows(h, w, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """Yield (a, b, row slice, col slice, divisor) for every output position, with torch's divisor:
    divisor_override, else the window size clipped to the padded input (count_include_pad) or to the
    input itself."""
    (kh, kw), (sh, sw), (ph, pw), _ = _pool_params(kernel_size, stride, padding, 1)
    oh = pool_out_size(h, kh, ph, sh, 1, ceil_mode)
    ow = pool_out_size(w, kw, pw, sw, 1, ceil_mode)
    for a in range(oh):
        for b in range(ow):
            h0, w0 = a * sh - ph, b * sw - pw
            h1, w1 = min(h0 + kh, h + ph), min(w0 + kw, w + pw)
            padded_count = (h1 - h0) * (w1 - w0)
            h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, h), min(w1, w)
            if divisor_override:
                div = divisor_override
            elif count_include_pad:
                div = padded_count
            else:
                div = (h1 - h0) * (w1 - w0)
            yield a, b, slice(h0, h1), slice(w0, w1), div, (oh, ow)


def avg_pool2d_fwd(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                   divisor_override=None):
    x = _f64(x)
    n, c, h, w = x.shape
    y = None
    for a, b, rs, cs, div, (oh, ow) in _avg_windows(h, w, kernel_size, stride, padding, ceil_mode,
                                                    count_include_pad, divisor_override):
        if y is None:
            y = np.zeros((n, c, oh, ow))
        y[:, :, a, b] = x[:, :, rs, cs].sum(axis=(2, 3)) / div
    return y


def avg_pool2d_bwd(grad_out, input_size, kernel_size, stride=None, padding=0, ceil_mode=False,
                   count_include_pad=True, divisor_override=None):
    gy = _f64(grad_out)
    n, c, h, w = input_size
    gx = np.zeros((n, c, h, w))
    for a, b, rs, cs, div, _ in _avg_windows(h, w, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                             divisor_override):
        gx[:, :, rs, cs] += (gy[:, :, a, b] / div)[:, :, None, None]
    return gx


def _adaptive_range(o, in_size, out_size):
    return (o * in_size) // out_size, -(-((o + 1) * in_size) // out_size)  # floor, ceil


def adaptive_avg_pool2d_fwd(x, output_size):
    x = _f64(x)
    n, c, h, w = x.shape
    oh, ow = _pair(output_size)
    oh, ow = h if oh is None else oh, w if ow is None else ow
    y = np.zeros((n, c, oh, ow))
    for a in range(oh):
        h0, h1 = _adaptive_range(a, h, oh)
        for b in range(ow):
            w0, w1 = _adaptive_range(b, w, ow)
            y[:, :, a, b] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return y


def adaptive_avg_pool2d_bwd(grad_out, input_size):
    gy = _f64(grad_out)
    n, c, h, w = input_size
    oh, ow = gy.shape[2:]
    gx = np.zeros((n, c, h, w))
    for a in range(oh):
        h0, h1 = _adaptive_range(a, h, oh)
        for b in range(ow):
            w0, w1 = _adaptive_range(b, w, ow)
            gx[:, :, h0:h1, w0:w1] += (gy[:, :, a, b] / ((h1 - h0) * (w1 - w0)))[:, :, None, None]
    return gx
