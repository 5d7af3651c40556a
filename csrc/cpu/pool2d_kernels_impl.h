// Body of the pooling kernels, included once per ISA inside namespace fastconv::<isa> after all
// standard headers (pool2d_kernels.cpp, pool2d_kernels_avx2.cpp, ...). The channels_last loops run
// over contiguous channels with plain selects/adds so the compiler vectorizes them for the target.
// Needs: <immintrin.h>, <algorithm>, <cmath>, <cstdint>, <limits>, <type_traits>, <vector>,
// fastconv/eltwise_kernels.h; FASTCONV_IMPL_AVX2 = 1 where the target has AVX2 (intrinsic paths).

// One output row/column's window along one dimension: input positions lo, lo+step, ... < hi;
// span = extent counted by count_include_pad (window clipped to input + padding, not to input).
struct Range {
  int64_t lo, hi, span;
};

enum class Kind { kMax, kAvg, kAdaptive };

#include "stream_store.inc"
constexpr int64_t kStreamChunk = 1024;  // elements per buffered chunk of a streamed output

inline std::vector<Range> ranges(Kind kind, int64_t out, int64_t size, int64_t k, int64_t s, int64_t pad,
                                 int64_t d) {
  std::vector<Range> r(static_cast<size_t>(out));
  for (int64_t o = 0; o < out; ++o) {
    int64_t lo, hi, span;
    if (kind == Kind::kMax) {  // torch: skip leading padding in steps of the dilation
      lo = o * s - pad;
      hi = std::min(lo + (k - 1) * d + 1, size);
      if (lo < 0) lo += (-lo + d - 1) / d * d;
      span = 0;
    } else if (kind == Kind::kAvg) {
      lo = o * s - pad;
      hi = std::min(lo + k, size + pad);
      span = hi - lo;
      lo = std::max<int64_t>(lo, 0);
      hi = std::min(hi, size);
    } else {
      lo = o * size / out;
      hi = ((o + 1) * size + out - 1) / out;
      span = hi - lo;
    }
    r[static_cast<size_t>(o)] = {lo, hi, span};
  }
  return r;
}

struct Windows {
  std::vector<Range> h, w;
  int64_t dh = 1, dw = 1;
  Windows(Kind kind, const Pool2dParams& p)
      : h(ranges(kind, p.y.h, p.x.h, p.kh, p.stride_h, p.pad_h, p.dil_h)),
        w(ranges(kind, p.y.w, p.x.w, p.kw, p.stride_w, p.pad_w, p.dil_w)) {
    if (kind == Kind::kMax) dh = p.dil_h, dw = p.dil_w;
  }
};

// torch's avg divisor: override, else the window clipped to input+padding, else the valid count.
inline int64_t divisor(const Pool2dParams& p, const Range& rh, const Range& rw) {
  if (p.divisor_override) return p.divisor_override;
  if (p.count_include_pad) return rh.span * rw.span;
  return (rh.hi - rh.lo) * (rw.hi - rw.lo);
}

inline bool channels_last(const Pool2dParams& p) { return p.x.c > 1 && p.x.sc == 1 && p.y.sc == 1; }

// Channels per task of the channels_last backward (tasks own (n, channel block) so scatters never race).
inline int64_t channel_block(const Pool2dParams& p) {
  int64_t want = std::max<int64_t>(1, (2 * omp_get_max_threads() + p.x.n - 1) / p.x.n);
  return std::max<int64_t>(16, (p.x.c + want - 1) / want);
}

// ---------------------------------------------------------------- max pooling
// Scan order and update rule of torch: row-major window, take v if v > max or v is NaN (so the
// first maximum wins, and the last NaN if any). One window over channels [0, cn) of a block; CN > 0
// fixes the width at compile time so the running max and positions stay in registers.
// IDX = false: the values only (ip unused), for the max_pool2d_values op.
template <typename T, typename S, int CN, int CB, bool IDX>
inline void max_window_cl(const Pool2dParams& p, const Windows& win, const Range& rh, const Range& rw,
                          const T* __restrict xb, int64_t cn_run, T* __restrict yp, int64_t* __restrict ip) {
  const int64_t cn = CN ? CN : cn_run;
  T m[CB];
  S s[CB];
  const S first = static_cast<S>(rh.lo * p.x.w + rw.lo);
  for (int64_t c = 0; c < cn; ++c) m[c] = -std::numeric_limits<T>::infinity(), s[c] = first;
  for (int64_t ih = rh.lo; ih < rh.hi; ih += win.dh) {
    for (int64_t iw = rw.lo; iw < rw.hi; iw += win.dw) {
      const T* __restrict xp = xb + ih * p.x.sh + iw * p.x.sw;
      const S at = static_cast<S>(ih * p.x.w + iw);
      for (int64_t c = 0; c < cn; ++c) {
        T v = xp[c];
        bool take = (v > m[c]) | (v != v);
        m[c] = take ? v : m[c];
        if (IDX) s[c] = take ? at : s[c];
      }
    }
  }
  for (int64_t c = 0; c < cn; ++c) yp[c] = m[c];
  if (IDX)
    for (int64_t c = 0; c < cn; ++c) ip[c] = s[c];
}

template <typename T, typename S, bool IDX>
void max_fwd_cl(const Pool2dParams& p, const Windows& win, const T* __restrict x, T* __restrict y,
                int64_t* __restrict idx) {
  const int64_t C = p.x.c, P = p.y.h, Q = p.y.w;
  constexpr int CB = (IDX ? 128 : 256) / sizeof(T);  // the running max (and positions) in registers
  // Outputs and indices far larger than the caches (3x the input's bytes per output element with
  // int64 indices) go out through an L1 buffer with non-temporal stores: no read-for-ownership of
  // their lines. Needs each output row contiguous (dense channels_last), as the op makes it.
  const bool stream = p.y.sw == C && p.y.sh == Q * C &&
                      p.x.n * P * Q * C * int64_t(sizeof(T) + (IDX ? sizeof(int64_t) : 0)) >= kStreamBytes;
  const int64_t chunk = std::max<int64_t>(1, kStreamChunk / C);  // outputs per buffered chunk
  auto window = [&](const Range& rh, const Range& rw, const T* xb, T* yp, int64_t* ip) {
    int64_t c0 = 0;
    for (; c0 + CB <= C; c0 += CB)
      max_window_cl<T, S, CB, CB, IDX>(p, win, rh, rw, xb + c0, CB, yp + c0, IDX ? ip + c0 : nullptr);
    if (c0 < C) max_window_cl<T, S, 0, CB, IDX>(p, win, rh, rw, xb + c0, C - c0, yp + c0, IDX ? ip + c0 : nullptr);
  };
  parallel_ranges(p.x.n * P, p.x.n * P * Q * C * p.kh * p.kw, [&](int64_t r0, int64_t r1) {
    std::vector<T> ybuf(stream ? static_cast<size_t>(chunk * C) : 0);
    std::vector<int64_t> ibuf(IDX ? ybuf.size() : 0);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / P, oh = r % P;
      const T* xb = x + n * p.x.sn;
      const int64_t yrow = n * p.y.sn + oh * p.y.sh;
      if (!stream) {
        for (int64_t ow = 0; ow < Q; ++ow)
          window(win.h[oh], win.w[ow], xb, y + yrow + ow * p.y.sw, IDX ? idx + yrow + ow * p.y.sw : nullptr);
        continue;
      }
      for (int64_t q0 = 0; q0 < Q; q0 += chunk) {
        const int64_t qn = std::min(chunk, Q - q0);
        for (int64_t q = 0; q < qn; ++q)
          window(win.h[oh], win.w[q0 + q], xb, ybuf.data() + q * C, IDX ? ibuf.data() + q * C : nullptr);
        stream_store(y + yrow + q0 * C, ybuf.data(), qn * C * int64_t(sizeof(T)));
        if (IDX) stream_store(idx + yrow + q0 * C, ibuf.data(), qn * C * int64_t(sizeof(int64_t)));
      }
    }
    stream_fence();
  });
}

// Outputs [q0, q1) of one plane row whose window lies inside the row, each reduced in registers over
// its window (rows h0 + i*dh, i < kh; columns ow*sw - pw + j*dw, j < kw) in torch's row-major order.
// KH/KW/SW > 0 fix the sizes (undilated) so the taps unroll and the loop over outputs vectorizes; 0
// takes them at run time. IDX = false: values only.
template <typename T, typename S, int KH, int KW, int SW, bool IDX>
void max_span_nchw(const T* __restrict xp, int64_t rs, int64_t W, int64_t h0, int64_t kh_, int64_t kw_,
                   int64_t sw_, int64_t dh_, int64_t dw_, int64_t pw, int64_t q0, int64_t q1, T* __restrict yp,
                   int64_t* __restrict ip) {
  const int64_t kh = KH ? KH : kh_, kw = KW ? KW : kw_, sw = SW ? SW : sw_;
  const int64_t dh = KH ? 1 : dh_, dw = KW ? 1 : dw_;
  for (int64_t ow = q0; ow < q1; ++ow) {
    const int64_t c0 = ow * sw - pw;
    T best = -std::numeric_limits<T>::infinity();
    S at = static_cast<S>(h0 * W + c0);
    for (int64_t i = 0; i < kh; ++i) {
      const T* row = xp + (h0 + i * dh) * rs;
      for (int64_t j = 0; j < kw; ++j) {
        const T v = row[c0 + j * dw];
        const bool take = (v > best) | (v != v);  // the first maximum wins, a NaN wins (the last NaN)
        best = take ? v : best;
        if constexpr (IDX) at = take ? static_cast<S>((h0 + i * dh) * W + c0 + j * dw) : at;
      }
    }
    yp[ow] = best;
    if constexpr (IDX) ip[ow] = at;
  }
}

// One plane row of outputs: border outputs (window clipped by the padding) one by one, the rest as a
// span, with literal window sizes for 3x3 stride 2, 2x2 stride 2 and 3x3 stride 1 (the rows of the
// window all inside the input).
template <typename T, typename S, bool IDX>
void max_row_nchw(const Pool2dParams& p, const Windows& win, const T* __restrict xp, const Range& rh,
                  T* __restrict yp, int64_t* __restrict ip) {
  const int64_t W = p.x.w, Q = p.y.w, sw = p.stride_w, pw = p.pad_w, dw = p.dil_w, kw = p.kw, rs = p.x.sh;
  const int64_t q0 = std::min(Q, (pw + sw - 1) / sw);
  const int64_t last = W - 1 - (kw - 1) * dw + pw;  // interior: ow * sw <= last
  const int64_t q1 = last < 0 ? q0 : std::max(q0, std::min(Q, last / sw + 1));
  const int64_t nh = (rh.hi - rh.lo + win.dh - 1) / win.dh;  // window rows inside the input
  for (int64_t ow = 0; ow < Q; ++ow) {
    if (ow == q0) ow = std::max(q0, q1);
    if (ow >= Q) break;
    const Range& rw = win.w[ow];
    const int64_t first = rw.lo - (ow * sw - pw);  // taps skipped in the padding, times dw
    max_span_nchw<T, S, 0, 0, 0, IDX>(xp, rs, W, rh.lo, nh, (rw.hi - rw.lo + dw - 1) / dw, sw, win.dh, dw,
                                      pw - first, ow, ow + 1, yp, ip);
  }
  if (q0 >= q1) return;
  const bool undilated = win.dh == 1 && dw == 1;
  if (undilated && nh == 3 && kw == 3 && sw == 2)
    max_span_nchw<T, S, 3, 3, 2, IDX>(xp, rs, W, rh.lo, 3, 3, 2, 1, 1, pw, q0, q1, yp, ip);
  else if (undilated && nh == 2 && kw == 2 && sw == 2)
    max_span_nchw<T, S, 2, 2, 2, IDX>(xp, rs, W, rh.lo, 2, 2, 2, 1, 1, pw, q0, q1, yp, ip);
  else if (undilated && nh == 3 && kw == 3 && sw == 1)
    max_span_nchw<T, S, 3, 3, 1, IDX>(xp, rs, W, rh.lo, 3, 3, 1, 1, 1, pw, q0, q1, yp, ip);
  else
    max_span_nchw<T, S, 0, 0, 0, IDX>(xp, rs, W, rh.lo, nh, kw, sw, win.dh, dw, pw, q0, q1, yp, ip);
}

// NCHW: both tensors have unit stride along W (NCHW-contiguous, or C == 1).
template <typename T, typename S, bool IDX>
void max_fwd_nchw(const Pool2dParams& p, const Windows& win, const T* __restrict x, T* __restrict y,
                  int64_t* __restrict idx) {
  const int64_t C = p.x.c, P = p.y.h, Q = p.y.w;
  parallel_ranges(p.x.n * C * P, p.x.n * C * P * Q * p.kh * p.kw, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / (C * P), c = r / P % C, oh = r % P;
      const int64_t yo = n * p.y.sn + c * p.y.sc + oh * p.y.sh;
      max_row_nchw<T, S, IDX>(p, win, x + n * p.x.sn + c * p.x.sc, win.h[oh], y + yo, IDX ? idx + yo : nullptr);
    }
  });
}

template <typename T>
void max_pool2d_fwd(const Pool2dParams& p, const T* x, T* y, int64_t* idx) {
  if (p.y.n * p.y.c * p.y.h * p.y.w == 0) return;
  Windows win(Kind::kMax, p);
  // 32-bit window positions vectorize with float; planes past 2^31 elements take 64-bit ones.
  const bool narrow = sizeof(T) == 4 && p.x.h * p.x.w <= std::numeric_limits<int32_t>::max();
  if (!channels_last(p)) {
    if (!idx) return max_fwd_nchw<T, int32_t, false>(p, win, x, y, idx);
    if (narrow) return max_fwd_nchw<T, int32_t, true>(p, win, x, y, idx);
    return max_fwd_nchw<T, int64_t, true>(p, win, x, y, idx);
  }
  if (!idx) return narrow ? max_fwd_cl<T, int32_t, false>(p, win, x, y, idx) : max_fwd_cl<T, int64_t, false>(p, win, x, y, idx);
  if (narrow) return max_fwd_cl<T, int32_t, true>(p, win, x, y, idx);
  return max_fwd_cl<T, int64_t, true>(p, win, x, y, idx);
}

// Scatter of one task (an NCHW plane: cn = 1, or a channels_last channel block) into g, whose rows
// are zeroed lazily: a row is cleared just before the first index that reaches it, so clearing and
// accumulating hit the same cache-resident rows instead of two passes over the whole gradient.
// Indices come in roughly increasing row order from the forward, but any order stays correct.
template <typename T>
void max_bwd_block(const Pool2dParams& p, const T* __restrict gy, const int64_t* __restrict idx, T* __restrict g,
                   int64_t cn, int64_t ysw, int64_t xsw) {
  const int64_t H = p.x.h, W = p.x.w, HW = H * W;
  int64_t zeroed = 0;  // rows [0, zeroed) are cleared
  auto zero_to = [&](int64_t rows) {
    for (; zeroed < rows; ++zeroed)
      for (int64_t iw = 0; iw < W; ++iw)
        for (int64_t c = 0; c < cn; ++c) g[zeroed * p.x.sh + iw * xsw + c] = T(0);
  };
  for (int64_t oh = 0; oh < p.y.h; ++oh) {
    for (int64_t ow = 0; ow < p.y.w; ++ow) {
      const int64_t o = oh * p.y.sh + ow * ysw;
      for (int64_t c = 0; c < cn; ++c) {
        const int64_t i = idx[o + c];
        if (static_cast<uint64_t>(i) >= static_cast<uint64_t>(HW)) continue;  // see the header
        if (i >= zeroed * W) zero_to(i / W + 1);
        g[i * xsw + c] += gy[o + c];
      }
    }
  }
  zero_to(H);
}

template <typename T>
void max_pool2d_bwd(const Pool2dParams& p, const T* gy, const int64_t* idx, T* gx) {
  const int64_t N = p.x.n, C = p.x.c, H = p.x.h, W = p.x.w, P = p.y.h, Q = p.y.w;
  if (N * C * H * W == 0) return;
  const int64_t work = N * C * (H * W + P * Q);
  if (!channels_last(p)) {
    parallel_ranges(N * C, work, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t / C, c = t % C, yo = n * p.y.sn + c * p.y.sc;
        max_bwd_block(p, gy + yo, idx + yo, gx + n * p.x.sn + c * p.x.sc, 1, 1, 1);
      }
    });
    return;
  }
  const int64_t CB = channel_block(p), nb = (C + CB - 1) / CB;
  parallel_ranges(N * nb, work, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nb, c0 = t % nb * CB, yo = n * p.y.sn + c0;
      max_bwd_block(p, gy + yo, idx + yo, gx + n * p.x.sn + c0, std::min(CB, C - c0), p.y.sw, p.x.sw);
    }
  });
}

// ---------------------------------------------------------------- average pooling (plain and adaptive)
// One output per NCHW plane whose window is the whole plane (global pooling): a plain contiguous
// reduction / broadcast, far cheaper than the row machinery on small planes like 7x7.
inline bool global_nchw(const Pool2dParams& p, const Windows& win) {
  return !channels_last(p) && p.y.h == 1 && p.y.w == 1 && win.h[0].lo == 0 && win.h[0].hi == p.x.h &&
         win.w[0].lo == 0 && win.w[0].hi == p.x.w && p.x.sh == p.x.w;
}

// out[ow] = sum over j < kw of bp[ow * sw + j] (SW: the stride as a constant, 0 = run time).
template <typename T, int SW>
void hsum_row(const T* __restrict bp, T* __restrict out, int64_t Q, int64_t kw, int64_t sw_run) {
  const int64_t sw = SW ? SW : sw_run;
  for (int64_t ow = 0; ow < Q; ++ow) out[ow] = bp[ow * sw];
  for (int64_t j = 1; j < kw; ++j)
    for (int64_t ow = 0; ow < Q; ++ow) out[ow] += bp[ow * sw + j];
}

#if FASTCONV_IMPL_AVX2
// Sums of 8 consecutive planes of hw floats: one vector accumulator per plane, then a transposing
// reduction, so the horizontal step is shared by 8 planes (global pooling of 7x7 is that bound).
inline void plane_sums8(const float* __restrict x, int64_t hw, float* __restrict out) {
  __m256 a[8];
  for (int k = 0; k < 8; ++k) a[k] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= hw; i += 8)
    for (int k = 0; k < 8; ++k) a[k] = _mm256_add_ps(a[k], _mm256_loadu_ps(x + k * hw + i));
  if (i < hw) {
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(hw - i)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int k = 0; k < 8; ++k) a[k] = _mm256_add_ps(a[k], _mm256_maskload_ps(x + k * hw + i, mask));
  }
  // hadd pairs within 128-bit lanes: low lanes hold planes 0-3 / 4-7 of the low halves, high lanes
  // of the high halves; adding the two halves finishes all eight sums.
  const __m256 s0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 s1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(s0, s1, 0x20), _mm256_permute2f128_ps(s0, s1, 0x31)));
}
#endif

// Global pooling of dense channels_last input: each image is HW rows of C contiguous channels.
inline bool global_cl(const Pool2dParams& p, const Windows& win) {
  return channels_last(p) && p.y.h == 1 && p.y.w == 1 && win.h[0].lo == 0 && win.h[0].hi == p.x.h &&
         win.w[0].lo == 0 && win.w[0].hi == p.x.w && p.x.sw == p.x.c && p.x.sh == p.x.w * p.x.c;
}

// out[c] = inv * sum over i < HW of x[i * C + c], for c < cn. Each pass reads kGlobalCB channels
// of every row: long contiguous runs the hardware prefetcher follows, into accumulators in L1.
constexpr int64_t kGlobalCB = 1024;
template <typename T>
inline void global_sum_cl(const T* __restrict x, int64_t HW, int64_t C, int64_t cn, T inv, T* __restrict out) {
  int64_t c0 = 0;
#if FASTCONV_IMPL_AVX2
  if constexpr (std::is_same_v<T, float>) {
    for (; c0 + 64 <= cn; c0 += 64) {  // eight accumulators stay in registers across the plane
      __m256 a[8];
      for (int k = 0; k < 8; ++k) a[k] = _mm256_loadu_ps(x + c0 + 8 * k);
      for (int64_t i = 1; i < HW; ++i)
        for (int k = 0; k < 8; ++k) a[k] = _mm256_add_ps(a[k], _mm256_loadu_ps(x + i * C + c0 + 8 * k));
      for (int k = 0; k < 8; ++k) _mm256_storeu_ps(out + c0 + 8 * k, _mm256_mul_ps(a[k], _mm256_set1_ps(inv)));
    }
  }
#endif
  T acc[kGlobalCB];
  for (; c0 < cn; c0 += kGlobalCB) {
    const int64_t m = std::min(kGlobalCB, cn - c0);
    const T* __restrict xp = x + c0;
    for (int64_t c = 0; c < m; ++c) acc[c] = xp[c];
    for (int64_t i = 1; i < HW; ++i)
      for (int64_t c = 0; c < m; ++c) acc[c] += xp[i * C + c];
    for (int64_t c = 0; c < m; ++c) out[c0 + c] = acc[c] * inv;
  }
}

template <typename T>
void avg_fwd(Kind kind, const Pool2dParams& p, const T* __restrict x, T* __restrict y) {
  const int64_t N = p.x.n, C = p.x.c, P = p.y.h, Q = p.y.w;
  if (N * C * P * Q == 0) return;
  const Windows win(kind, p);
  const int64_t work = N * C * P * Q * std::max<int64_t>(1, (p.x.h / P + 1) * (p.x.w / Q + 1));
  if (global_nchw(p, win)) {
    const int64_t HW = p.x.h * p.x.w;
    const T div = T(divisor(p, win.h[0], win.w[0]));
    parallel_ranges(N * C, N * C * HW, [&](int64_t t0, int64_t t1) {
      int64_t t = t0;
#if FASTCONV_IMPL_AVX2
      // Planes back to back (NCHW-contiguous): eight at a time with one horizontal reduction.
      if constexpr (std::is_same_v<T, float>) {
        if (p.x.sc == HW && p.x.sn == C * HW && p.y.sc == 1 && p.y.sn == C) {
          float s8[8];
          for (; t + 8 <= t1; t += 8) {
            plane_sums8(x + t * HW, HW, s8);
            for (int k = 0; k < 8; ++k) y[t + k] = s8[k] / div;
          }
        }
      }
#endif
      for (int64_t n = t / C, c = t % C; t < t1; ++t, c = c + 1 == C ? (++n, 0) : c + 1) {
        const T* __restrict xp = x + n * p.x.sn + c * p.x.sc;
        T sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < HW; ++i) sum += xp[i];
        y[n * p.y.sn + c * p.y.sc] = sum / div;
      }
    });
    return;
  }
  if (global_cl(p, win)) {
    // Tasks own (image, channel block): whole images when there are enough, else channel splits.
    const int64_t HW = p.x.h * p.x.w, cb = (channel_block(p) + 15) / 16 * 16, nb = (C + cb - 1) / cb;
    const T inv = T(1) / T(divisor(p, win.h[0], win.w[0]));
    parallel_ranges(N * nb, N * C * HW, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t / nb, c0 = t % nb * cb;
        global_sum_cl(x + n * p.x.sn + c0, HW, C, std::min(cb, C - c0), inv, y + n * p.y.sn + c0);
      }
    });
    return;
  }
  if (!channels_last(p)) {
    // Per output row: sum the window's input rows into a row buffer (vectorized along W), then
    // the window sums along the buffer. For plain average pooling the buffer carries pad_w zeros
    // on the left and enough on the right for ceil_mode, so every window is a full kw wide and
    // the sums vectorize across outputs; adaptive bins are summed one by one.
    const bool plain = kind == Kind::kAvg;
    const int64_t pw = plain ? p.pad_w : 0;
    const int64_t len = plain ? std::max(pw + p.x.w, (Q - 1) * p.stride_w + p.kw) : p.x.w;
    auto hsum = p.stride_w == 1 ? hsum_row<T, 1> : p.stride_w == 2 ? hsum_row<T, 2> : hsum_row<T, 0>;
    parallel_ranges(N * C * P, work, [&](int64_t r0, int64_t r1) {
      std::vector<T> buf(static_cast<size_t>(len), T(0)), sums(static_cast<size_t>(Q));
      T* __restrict b = buf.data() + pw;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / (C * P), c = r / P % C, oh = r % P;
        const T* __restrict xp = x + n * p.x.sn + c * p.x.sc;
        const Range& rh = win.h[oh];
        for (int64_t iw = 0; iw < p.x.w; ++iw) b[iw] = 0;
        for (int64_t ih = rh.lo; ih < rh.hi; ++ih)
          for (int64_t iw = 0; iw < p.x.w; ++iw) b[iw] += xp[ih * p.x.sh + iw];
        T* __restrict yp = y + n * p.y.sn + c * p.y.sc + oh * p.y.sh;
        if (plain) {
          hsum(buf.data(), sums.data(), Q, p.kw, p.stride_w);
          for (int64_t ow = 0; ow < Q; ++ow) yp[ow] = sums[ow] / T(divisor(p, rh, win.w[ow]));
          continue;
        }
        for (int64_t ow = 0; ow < Q; ++ow) {
          const Range& rw = win.w[ow];
          T sum = 0;
          for (int64_t iw = rw.lo; iw < rw.hi; ++iw) sum += b[iw];
          yp[ow] = sum / T(divisor(p, rh, rw));
        }
      }
    });
    return;
  }
  constexpr int64_t CB = 256;
  parallel_ranges(N * P, work, [&](int64_t r0, int64_t r1) {
    T acc[CB];
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / P, oh = r % P;
      const Range& rh = win.h[oh];
      for (int64_t ow = 0; ow < Q; ++ow) {
        const Range& rw = win.w[ow];
        const T inv = T(1) / T(divisor(p, rh, rw));
        T* __restrict yp = y + n * p.y.sn + oh * p.y.sh + ow * p.y.sw;
        for (int64_t c0 = 0; c0 < C; c0 += CB) {
          const int64_t cn = std::min(CB, C - c0);
          for (int64_t c = 0; c < cn; ++c) acc[c] = 0;
          for (int64_t ih = rh.lo; ih < rh.hi; ++ih) {
            for (int64_t iw = rw.lo; iw < rw.hi; ++iw) {
              const T* __restrict xp = x + n * p.x.sn + ih * p.x.sh + iw * p.x.sw + c0;
              for (int64_t c = 0; c < cn; ++c) acc[c] += xp[c];
            }
          }
          for (int64_t c = 0; c < cn; ++c) yp[c0 + c] = acc[c] * inv;
        }
      }
    }
  });
}

// gx = 0, then every output's gradient / divisor added over its window (windows may overlap).
template <typename T>
void avg_bwd(Kind kind, const Pool2dParams& p, const T* __restrict gy, T* __restrict gx) {
  const int64_t N = p.x.n, C = p.x.c, H = p.x.h, W = p.x.w, P = p.y.h, Q = p.y.w;
  if (N * C * H * W == 0) return;
  const Windows win(kind, p);
  const int64_t work = N * C * (H * W + P * Q * std::max<int64_t>(1, (H / P + 1) * (W / Q + 1)));
  if (global_nchw(p, win)) {
    const T div = T(divisor(p, win.h[0], win.w[0]));
    parallel_ranges(N * C, N * C * H * W, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0, n = t0 / C, c = t0 % C; t < t1; ++t, c = c + 1 == C ? (++n, 0) : c + 1) {
        const T v = gy[n * p.y.sn + c * p.y.sc] / div;
        T* __restrict g = gx + n * p.x.sn + c * p.x.sc;
        for (int64_t i = 0; i < H * W; ++i) g[i] = v;
      }
    });
    return;
  }
  if (!channels_last(p)) {
    // Per output row: scatter its scaled gradients along W into one row buffer, then add that
    // buffer (vectorized) to every input row of the row's window.
    parallel_ranges(N * C, work, [&](int64_t t0, int64_t t1) {
      std::vector<T> buf(static_cast<size_t>(W));
      T* __restrict b = buf.data();
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t / C, c = t % C;
        T* __restrict g = gx + n * p.x.sn + c * p.x.sc;
        int64_t zeroed = 0;  // rows cleared just before first use (windows move down with oh)
        auto zero_to = [&](int64_t rows) {
          for (; zeroed < rows; ++zeroed)
            for (int64_t iw = 0; iw < W; ++iw) g[zeroed * p.x.sh + iw] = T(0);
        };
        for (int64_t oh = 0; oh < P; ++oh) {
          const Range& rh = win.h[oh];
          zero_to(rh.hi);
          const T* __restrict gp = gy + n * p.y.sn + c * p.y.sc + oh * p.y.sh;
          for (int64_t iw = 0; iw < W; ++iw) b[iw] = T(0);
          for (int64_t ow = 0; ow < Q; ++ow) {
            const Range& rw = win.w[ow];
            const T v = gp[ow] / T(divisor(p, rh, rw));
            for (int64_t iw = rw.lo; iw < rw.hi; ++iw) b[iw] += v;
          }
          for (int64_t ih = rh.lo; ih < rh.hi; ++ih)
            for (int64_t iw = 0; iw < W; ++iw) g[ih * p.x.sh + iw] += b[iw];
        }
        zero_to(H);
      }
    });
    return;
  }
  const int64_t CB = channel_block(p), nb = (C + CB - 1) / CB;
  parallel_ranges(N * nb, work, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nb, c0 = t % nb * CB, cn = std::min(CB, C - c0);
      T* __restrict g = gx + n * p.x.sn + c0;
      int64_t zeroed = 0;
      auto zero_to = [&](int64_t rows) {
        for (; zeroed < rows; ++zeroed)
          for (int64_t iw = 0; iw < W; ++iw)
            for (int64_t c = 0; c < cn; ++c) g[zeroed * p.x.sh + iw * p.x.sw + c] = T(0);
      };
      for (int64_t oh = 0; oh < P; ++oh) {
        const Range& rh = win.h[oh];
        zero_to(rh.hi);
        for (int64_t ow = 0; ow < Q; ++ow) {
          const Range& rw = win.w[ow];
          const T inv = T(1) / T(divisor(p, rh, rw));
          const T* __restrict gp = gy + n * p.y.sn + oh * p.y.sh + ow * p.y.sw + c0;
          for (int64_t ih = rh.lo; ih < rh.hi; ++ih)
            for (int64_t iw = rw.lo; iw < rw.hi; ++iw) {
              T* __restrict gq = g + ih * p.x.sh + iw * p.x.sw;
              for (int64_t c = 0; c < cn; ++c) gq[c] += gp[c] * inv;
            }
        }
      }
      zero_to(H);
    }
  });
}

template <typename T> void avg_pool2d_fwd(const Pool2dParams& p, const T* x, T* y) { avg_fwd(Kind::kAvg, p, x, y); }
template <typename T> void avg_pool2d_bwd(const Pool2dParams& p, const T* gy, T* gx) { avg_bwd(Kind::kAvg, p, gy, gx); }
// Adaptive bins divide by their own size: span = hi - lo, so count_include_pad gives it.
inline Pool2dParams adaptive(Pool2dParams p) {
  p.count_include_pad = true, p.divisor_override = 0;
  return p;
}
template <typename T> void adaptive_avg_pool2d_fwd(const Pool2dParams& p, const T* x, T* y) {
  avg_fwd(Kind::kAdaptive, adaptive(p), x, y);
}
template <typename T> void adaptive_avg_pool2d_bwd(const Pool2dParams& p, const T* gy, T* gx) {
  avg_bwd(Kind::kAdaptive, adaptive(p), gy, gx);
}

#define FASTCONV_POOL_INSTANTIATE(T)                                                        \
  template void max_pool2d_fwd<T>(const Pool2dParams&, const T*, T*, int64_t*);             \
  template void max_pool2d_bwd<T>(const Pool2dParams&, const T*, const int64_t*, T*);       \
  template void avg_pool2d_fwd<T>(const Pool2dParams&, const T*, T*);                       \
  template void avg_pool2d_bwd<T>(const Pool2dParams&, const T*, T*);                       \
  template void adaptive_avg_pool2d_fwd<T>(const Pool2dParams&, const T*, T*);              \
  template void adaptive_avg_pool2d_bwd<T>(const Pool2dParams&, const T*, T*);
