"""Max, average and adaptive average pooling, forward and backward."""
from fastconv.numba.cpu._jit import _FAST, _JIT, _U, _inner_span, _valid_range, nb, np, prange


# ---------------------------------------------------------------- pooling (x3/y3: (N*C, H, W))
# Each output is reduced in registers over its window. Output columns whose window lies wholly inside
# the input form one span per output row; the common window shapes run that span with literal sizes
# (the loops unroll and vectorize across outputs), every other shape and the border outputs with
# runtime sizes. Indices are unsigned (_U).
_SHAPES = ((3, 3, 2), (2, 2, 2), (3, 3, 1))  # (kh, kw, stride_w) with literal-size spans, dilation 1


@nb.njit(inline="always", cache=True)
def _shape_id(kh, kw, sw, dh, dw):
    """1 + the index of (kh, kw, sw) in _SHAPES (undilated windows), else 0."""
    if dh != 1 or dw != 1:
        return 0
    if kh == 3 and kw == 3:
        return 1 if sw == 2 else (3 if sw == 1 else 0)
    return 2 if kh == 2 and kw == 2 and sw == 2 else 0


@nb.njit(inline="always", cache=True)
def _window_rows(oh, kh, sh, ph, dh, H):
    """First input row and number of rows of output row oh's window inside the input."""
    start = oh * sh - ph
    i0, i1 = _valid_range(kh, dh, start, H)
    return start + i0 * dh, i1 - i0


@nb.njit(inline="always", cache=True)
def _max_span(x3, y3, idx3, want_idx, p, oh, lo, hi, r0, nh, DH, J0, J1, SW, DW, off, W, neg_inf):
    """y3[p, oh, lo:hi]: the max over rows r0 + i*DH (i < nh) and columns ow*SW + off + j*DW
    (J0 <= j < J1), all inside the input. torch's order: the first maximum wins, a NaN wins over
    numbers (the last NaN), a window of -inf reports its first position."""
    for ow in range(lo, hi):
        c0 = ow * SW + off
        b = neg_inf
        bi = r0 * W + c0 + J0 * DW
        for i in range(nh):
            r = r0 + i * DH
            for j in range(J0, J1):
                c = c0 + j * DW
                v = x3[p, _U(r), _U(c)]
                take = (v > b) | (v != v)  # branch-free, so the span vectorizes
                b = v if take else b
                if want_idx:
                    bi = r * W + c if take else bi
        y3[p, oh, ow] = b
        if want_idx:
            idx3[p, oh, ow] = bi


@nb.njit(inline="always", cache=True)
def _max_pool(x3, y3, idx3, want_idx, kh, kw, sh, sw, ph, pw, dh, dw, neg_inf):
    H, W = x3.shape[1], x3.shape[2]
    OH, OW = y3.shape[1], y3.shape[2]
    lo, hi = _inner_span(OW, sw, pw, kw, dw, W)
    sid = _shape_id(kh, kw, sw, dh, dw)
    for p in prange(x3.shape[0]):
        for oh in range(OH):
            r0, nh = _window_rows(oh, kh, sh, ph, dh, H)
            for ow in range(OW):  # border columns: the taps inside the input
                if ow == lo:
                    break
                j0, j1 = _valid_range(kw, dw, ow * sw - pw, W)
                _max_span(x3, y3, idx3, want_idx, p, oh, ow, ow + 1, r0, nh, dh, j0, j1, sw, dw, -pw, W, neg_inf)
            for ow in range(hi, OW):
                j0, j1 = _valid_range(kw, dw, ow * sw - pw, W)
                _max_span(x3, y3, idx3, want_idx, p, oh, ow, ow + 1, r0, nh, dh, j0, j1, sw, dw, -pw, W, neg_inf)
            if sid == 1 and nh == 3:
                _max_span(x3, y3, idx3, want_idx, p, oh, lo, hi, r0, 3, 1, 0, 3, 2, 1, -pw, W, neg_inf)
            elif sid == 2 and nh == 2:
                _max_span(x3, y3, idx3, want_idx, p, oh, lo, hi, r0, 2, 1, 0, 2, 2, 1, -pw, W, neg_inf)
            elif sid == 3 and nh == 3:
                _max_span(x3, y3, idx3, want_idx, p, oh, lo, hi, r0, 3, 1, 0, 3, 1, 1, -pw, W, neg_inf)
            else:
                _max_span(x3, y3, idx3, want_idx, p, oh, lo, hi, r0, nh, dh, 0, kw, sw, dw, -pw, W, neg_inf)


@nb.njit(**_JIT)
def max_pool2d_fwd(x3, y3, idx3, kh, kw, sh, sw, ph, pw, dh, dw, neg_inf):
    _max_pool(x3, y3, idx3, True, kh, kw, sh, sw, ph, pw, dh, dw, neg_inf)


@nb.njit(**_JIT)
def max_pool2d_values(x3, y3, kh, kw, sh, sw, ph, pw, dh, dw, neg_inf):
    """max_pool2d_fwd without indices (no gradient can reach the call)."""
    _max_pool(x3, y3, y3, False, kh, kw, sh, sw, ph, pw, dh, dw, neg_inf)


@nb.njit(**_JIT)
def max_pool2d_bwd(dy2, idx2, dx2):
    """dy2/idx2 (N*C, OH*OW), dx2 (N*C, H*W) zeroed. An index outside the plane (a window with no tap
    inside the input) passes nothing on."""
    hw = dx2.shape[1]
    for pln in prange(dy2.shape[0]):
        for i in range(dy2.shape[1]):
            j = idx2[pln, i]
            if 0 <= j < hw:
                dx2[pln, _U(j)] += dy2[pln, i]


@nb.njit(inline="always", cache=True)
def _avg_window(o, stride, pad, k, size):
    """torch's avg_pool2d window: clipped [start, end) and the padded extent."""
    start = o * stride - pad
    end = min(start + k, size + pad)
    ext = end - start
    return max(start, 0), min(end, size), ext


@nb.njit(inline="always", cache=True)
def _avg_count(o, stride, pad, k, size, count_include_pad):
    """First index and size of output o's window inside the input, and its factor of the divisor."""
    a, b, ext = _avg_window(o, stride, pad, k, size)
    return a, max(b - a, 0), (ext if count_include_pad else max(b - a, 0))


@nb.njit(inline="always", cache=True)
def _sum_span(x3, y3, p, oh, lo, hi, r0, nh, J, SW, off, div):
    """y3[p, oh, lo:hi] = the sum over rows r0 .. r0+nh-1 and columns ow*SW + off + j (j < J),
    all inside the input, divided by div."""
    for ow in range(lo, hi):
        c0 = ow * SW + off
        acc = x3.dtype.type(0)
        for i in range(nh):
            for j in range(J):
                acc += x3[p, _U(r0 + i), _U(c0 + j)]
        y3[p, oh, ow] = acc / div


@nb.njit(**_FAST)
def avg_pool2d_fwd(x3, y3, kh, kw, sh, sw, ph, pw, count_include_pad, divisor, zero):
    """divisor != 0 is divisor_override; windows and divisors as torch's avg_pool2d (an empty
    window gives 0)."""
    H, W = x3.shape[1], x3.shape[2]
    OH, OW = y3.shape[1], y3.shape[2]
    lo, hi = _inner_span(OW, sw, pw, kw, 1, W)
    sid = _shape_id(kh, kw, sw, 1, 1)
    fixed = x3.dtype.type(divisor)
    for p in prange(x3.shape[0]):
        for oh in range(OH):
            r0, nh, fh = _avg_count(oh, sh, ph, kh, H, count_include_pad)
            for ow in range(OW):
                if lo <= ow < hi:
                    continue
                c0, nw, fw = _avg_count(ow, sw, pw, kw, W, count_include_pad)
                if nh == 0 or nw == 0:
                    y3[p, oh, ow] = zero
                    continue
                div = fixed if divisor != 0 else x3.dtype.type(fh * fw)
                _sum_span(x3, y3, p, oh, ow, ow + 1, r0, nh, nw, 0, c0, div)
            if nh == 0:
                for ow in range(lo, hi):
                    y3[p, oh, ow] = zero
                continue
            div = fixed if divisor != 0 else x3.dtype.type(fh * kw)
            if sid == 1 and nh == 3:
                _sum_span(x3, y3, p, oh, lo, hi, r0, 3, 3, 2, -pw, div)
            elif sid == 2 and nh == 2:
                _sum_span(x3, y3, p, oh, lo, hi, r0, 2, 2, 2, -pw, div)
            elif sid == 3 and nh == 3:
                _sum_span(x3, y3, p, oh, lo, hi, r0, 3, 3, 1, -pw, div)
            else:
                _sum_span(x3, y3, p, oh, lo, hi, r0, nh, kw, sw, -pw, div)


@nb.njit(inline="always", cache=True)
def _spread_span(dy3, dx3, p, oh, lo, hi, r0, nh, J, SW, off, div):
    """The gradients of outputs y3[p, oh, lo:hi] spread over their windows (as in _sum_span). (Literal
    window sizes, which speed up the forward spans, gained nothing here: the scatter stays scalar.)"""
    for i in range(nh):
        for ow in range(lo, hi):
            g = dy3[p, oh, ow] / div
            for j in range(J):
                dx3[p, _U(r0 + i), _U(ow * SW + off + j)] += g


@nb.njit(**_FAST)
def avg_pool2d_bwd(dy3, dx3, kh, kw, sh, sw, ph, pw, count_include_pad, divisor):
    """dx3 zeroed; each output's gradient spread evenly over its window."""
    H, W = dx3.shape[1], dx3.shape[2]
    OH, OW = dy3.shape[1], dy3.shape[2]
    lo, hi = _inner_span(OW, sw, pw, kw, 1, W)
    fixed = dy3.dtype.type(divisor)
    for p in prange(dy3.shape[0]):
        for oh in range(OH):
            r0, nh, fh = _avg_count(oh, sh, ph, kh, H, count_include_pad)
            if nh == 0:
                continue
            for ow in range(OW):
                if lo <= ow < hi:
                    continue
                c0, nw, fw = _avg_count(ow, sw, pw, kw, W, count_include_pad)
                if nw > 0:
                    div = fixed if divisor != 0 else dy3.dtype.type(fh * fw)
                    _spread_span(dy3, dx3, p, oh, ow, ow + 1, r0, nh, nw, 0, c0, div)
            div = fixed if divisor != 0 else dy3.dtype.type(fh * kw)
            _spread_span(dy3, dx3, p, oh, lo, hi, r0, nh, kw, sw, -pw, div)


@nb.njit(inline="always", cache=True)
def _adaptive_window(o, size, out):
    """[start, end) of adaptive pooling's window o: [floor(o*size/out), ceil((o+1)*size/out))."""
    return o * size // out, -((-(o + 1) * size) // out)


@nb.njit(**_FAST)
def adaptive_avg_pool2d_fwd(x3, y3, zero):
    H, W = x3.shape[1], x3.shape[2]
    OH, OW = y3.shape[1], y3.shape[2]
    x2 = x3.reshape(x3.shape[0], H * W)
    for p in prange(x3.shape[0]):
        for oh in range(OH):
            h0, h1 = _adaptive_window(oh, H, OH)
            if OW == 1:  # whole rows (global pooling): one contiguous run
                acc = zero
                for i in range(h0 * W, h1 * W):
                    acc += x2[p, _U(i)]
                y3[p, oh, 0] = acc / x3.dtype.type((h1 - h0) * W)
                continue
            for ow in range(OW):
                w0, w1 = _adaptive_window(ow, W, OW)
                acc = zero
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        acc += x3[p, _U(ih), _U(iw)]
                y3[p, oh, ow] = acc / x3.dtype.type((h1 - h0) * (w1 - w0))


@nb.njit(inline="always", cache=True)
def _adaptive_sources(size, out):
    """Per input index i: [first, last) of the adaptive windows that contain i (windows are sorted
    and overlap by at most one, so the containing ones are consecutive); and each window's size."""
    first, last = np.full(size, out, np.intp), np.zeros(size, np.intp)
    count = np.empty(out, np.intp)
    for o in range(out):
        a, b = _adaptive_window(o, size, out)
        count[o] = b - a
        for i in range(a, b):
            first[i] = min(first[i], o)
            last[i] = o + 1
    return first, last, count


@nb.njit(**_FAST)
def adaptive_avg_pool2d_bwd(dy3, dx3):
    """Each input's gradient gathered from the windows that contain it: one write per element, no
    zero fill and no read-modify-write."""
    H, W = dx3.shape[1], dx3.shape[2]
    OH, OW = dy3.shape[1], dy3.shape[2]
    if OH == 1 and OW == 1:  # global pooling: a constant plane
        dx2 = dx3.reshape(dx3.shape[0], H * W)
        for p in prange(dy3.shape[0]):
            v = dy3[p, 0, 0] / dy3.dtype.type(H * W)
            for i in range(H * W):
                dx2[p, _U(i)] = v
        return
    h_first, h_last, h_count = _adaptive_sources(H, OH)
    w_first, w_last, w_count = _adaptive_sources(W, OW)
    zero = dy3.dtype.type(0)
    for p in prange(dy3.shape[0]):
        row = np.empty(OW, dy3.dtype)  # input row ih's gradient per output column
        for ih in range(H):
            for ow in range(OW):
                acc = zero
                for oh in range(h_first[ih], h_last[ih]):
                    acc += dy3[p, oh, ow] / dy3.dtype.type(h_count[oh] * w_count[ow])
                row[ow] = acc
            for iw in range(W):
                acc = zero
                for ow in range(w_first[iw], w_last[iw]):
                    acc += row[ow]
                dx3[p, ih, iw] = acc
