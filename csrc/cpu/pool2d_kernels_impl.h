// Body of the pooling kernels, included once per ISA inside namespace fastconv::<isa> after all
// standard headers (pool2d_kernels.cpp, pool2d_kernels_avx2.cpp, ...). The channels_last loops run
// over contiguous channels with plain selects/adds so the compiler vectorizes them for the target.
// Needs: <algorithm>, <cmath>, <cstdint>, <limits>, <vector>, fastconv/eltwise_kernels.h.

// One output row/column's window along one dimension: input positions lo, lo+step, ... < hi;
// span = extent counted by count_include_pad (window clipped to input + padding, not to input).
struct Range {
  int64_t lo, hi, span;
};

enum class Kind { kMax, kAvg, kAdaptive };

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
// first maximum wins, and the last NaN if any).
template <typename T, typename S>
void max_fwd_cl(const Pool2dParams& p, const Windows& win, const T* __restrict x, T* __restrict y,
                int64_t* __restrict idx) {
  const int64_t C = p.x.c, W = p.x.w, P = p.y.h, Q = p.y.w;
  constexpr int64_t CB = 256;
  parallel_ranges(p.x.n * P, p.x.n * P * Q * C * p.kh * p.kw, [&](int64_t r0, int64_t r1) {
    T m[CB];
    S s[CB];
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / P, oh = r % P;
      const Range& rh = win.h[oh];
      for (int64_t ow = 0; ow < Q; ++ow) {
        const Range& rw = win.w[ow];
        const int64_t yo = n * p.y.sn + oh * p.y.sh + ow * p.y.sw;
        for (int64_t c0 = 0; c0 < C; c0 += CB) {
          const int64_t cn = std::min(CB, C - c0);
          const S first = static_cast<S>(rh.lo * W + rw.lo);
          for (int64_t c = 0; c < cn; ++c) m[c] = -std::numeric_limits<T>::infinity(), s[c] = first;
          for (int64_t ih = rh.lo; ih < rh.hi; ih += win.dh) {
            for (int64_t iw = rw.lo; iw < rw.hi; iw += win.dw) {
              const T* __restrict xp = x + n * p.x.sn + ih * p.x.sh + iw * p.x.sw + c0;
              const S at = static_cast<S>(ih * W + iw);
              for (int64_t c = 0; c < cn; ++c) {
                T v = xp[c];
                bool take = (v > m[c]) | (v != v);
                m[c] = take ? v : m[c];
                s[c] = take ? at : s[c];
              }
            }
          }
          for (int64_t c = 0; c < cn; ++c) y[yo + c0 + c] = m[c], idx[yo + c0 + c] = s[c];
        }
      }
    }
  });
}

template <typename T>
void max_fwd_nchw(const Pool2dParams& p, const Windows& win, const T* __restrict x, T* __restrict y,
                  int64_t* __restrict idx) {
  const int64_t C = p.x.c, W = p.x.w, P = p.y.h, Q = p.y.w;
  parallel_ranges(p.x.n * C * P, p.x.n * C * P * Q * p.kh * p.kw, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / (C * P), c = r / P % C, oh = r % P;
      const T* __restrict xp = x + n * p.x.sn + c * p.x.sc;
      const int64_t yo = n * p.y.sn + c * p.y.sc + oh * p.y.sh;
      const Range& rh = win.h[oh];
      for (int64_t ow = 0; ow < Q; ++ow) {
        const Range& rw = win.w[ow];
        T m = -std::numeric_limits<T>::infinity();
        int64_t s = rh.lo * W + rw.lo;
        for (int64_t ih = rh.lo; ih < rh.hi; ih += win.dh) {
          for (int64_t iw = rw.lo; iw < rw.hi; iw += win.dw) {
            T v = xp[ih * p.x.sh + iw * p.x.sw];
            if ((v > m) | (v != v)) m = v, s = ih * W + iw;
          }
        }
        y[yo + ow * p.y.sw] = m;
        idx[yo + ow * p.y.sw] = s;
      }
    }
  });
}

template <typename T>
void max_pool2d_fwd(const Pool2dParams& p, const T* x, T* y, int64_t* idx) {
  if (p.y.n * p.y.c * p.y.h * p.y.w == 0) return;
  Windows win(Kind::kMax, p);
  if (!channels_last(p)) return max_fwd_nchw(p, win, x, y, idx);
  // 32-bit window positions vectorize with float; planes past 2^31 elements take 64-bit ones.
  if (sizeof(T) == 4 && p.x.h * p.x.w <= std::numeric_limits<int32_t>::max())
    return max_fwd_cl<T, int32_t>(p, win, x, y, idx);
  return max_fwd_cl<T, int64_t>(p, win, x, y, idx);
}

template <typename T>
void max_pool2d_bwd(const Pool2dParams& p, const T* gy, const int64_t* idx, T* gx) {
  const int64_t N = p.x.n, C = p.x.c, H = p.x.h, W = p.x.w, P = p.y.h, Q = p.y.w, HW = H * W;
  if (N * C * H * W == 0) return;
  // Both layouts have sh == W * sw, so a flat plane index i sits at i * sw.
  const int64_t sw = p.x.sw;
  if (!channels_last(p)) {
    parallel_ranges(N * C, N * C * (HW + P * Q), [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t / C, c = t % C;
        T* __restrict g = gx + n * p.x.sn + c * p.x.sc;
        for (int64_t ih = 0; ih < H; ++ih)
          for (int64_t iw = 0; iw < W; ++iw) g[ih * p.x.sh + iw * sw] = T(0);
        const int64_t* ip = idx + n * p.y.sn + c * p.y.sc;
        const T* gp = gy + n * p.y.sn + c * p.y.sc;
        for (int64_t oh = 0; oh < P; ++oh) {
          for (int64_t ow = 0; ow < Q; ++ow) {
            const int64_t o = oh * p.y.sh + ow * p.y.sw, i = ip[o];
            if (static_cast<uint64_t>(i) < static_cast<uint64_t>(HW)) g[i * sw] += gp[o];
          }
        }
      }
    });
    return;
  }
  const int64_t CB = channel_block(p), nb = (C + CB - 1) / CB;
  parallel_ranges(N * nb, N * C * (HW + P * Q), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nb, c0 = t % nb * CB, cn = std::min(CB, C - c0);
      T* __restrict g = gx + n * p.x.sn + c0;
      for (int64_t ih = 0; ih < H; ++ih)
        for (int64_t iw = 0; iw < W; ++iw)
          for (int64_t c = 0; c < cn; ++c) g[ih * p.x.sh + iw * sw + c] = T(0);
      for (int64_t oh = 0; oh < P; ++oh) {
        for (int64_t ow = 0; ow < Q; ++ow) {
          const int64_t o = n * p.y.sn + oh * p.y.sh + ow * p.y.sw + c0;
          for (int64_t c = 0; c < cn; ++c) {
            const int64_t i = idx[o + c];
            if (static_cast<uint64_t>(i) < static_cast<uint64_t>(HW)) g[i * sw + c] += gy[o + c];
          }
        }
      }
    }
  });
}

// ---------------------------------------------------------------- average pooling (plain and adaptive)
template <typename T>
void avg_fwd(Kind kind, const Pool2dParams& p, const T* __restrict x, T* __restrict y) {
  const int64_t N = p.x.n, C = p.x.c, P = p.y.h, Q = p.y.w;
  if (N * C * P * Q == 0) return;
  const Windows win(kind, p);
  const int64_t work = N * C * P * Q * std::max<int64_t>(1, (p.x.h / P + 1) * (p.x.w / Q + 1));
  if (!channels_last(p)) {
    parallel_ranges(N * C * P, work, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / (C * P), c = r / P % C, oh = r % P;
        const T* __restrict xp = x + n * p.x.sn + c * p.x.sc;
        const Range& rh = win.h[oh];
        for (int64_t ow = 0; ow < Q; ++ow) {
          const Range& rw = win.w[ow];
          T sum = 0;
          for (int64_t ih = rh.lo; ih < rh.hi; ++ih)
            for (int64_t iw = rw.lo; iw < rw.hi; ++iw) sum += xp[ih * p.x.sh + iw * p.x.sw];
          y[n * p.y.sn + c * p.y.sc + oh * p.y.sh + ow * p.y.sw] = sum / T(divisor(p, rh, rw));
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
  if (!channels_last(p)) {
    parallel_ranges(N * C, work, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t / C, c = t % C;
        T* __restrict g = gx + n * p.x.sn + c * p.x.sc;
        for (int64_t ih = 0; ih < H; ++ih)
          for (int64_t iw = 0; iw < W; ++iw) g[ih * p.x.sh + iw * p.x.sw] = T(0);
        for (int64_t oh = 0; oh < P; ++oh) {
          const Range& rh = win.h[oh];
          for (int64_t ow = 0; ow < Q; ++ow) {
            const Range& rw = win.w[ow];
            const T v = gy[n * p.y.sn + c * p.y.sc + oh * p.y.sh + ow * p.y.sw] / T(divisor(p, rh, rw));
            for (int64_t ih = rh.lo; ih < rh.hi; ++ih)
              for (int64_t iw = rw.lo; iw < rw.hi; ++iw) g[ih * p.x.sh + iw * p.x.sw] += v;
          }
        }
      }
    });
    return;
  }
  const int64_t CB = channel_block(p), nb = (C + CB - 1) / CB;
  parallel_ranges(N * nb, work, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nb, c0 = t % nb * CB, cn = std::min(CB, C - c0);
      T* __restrict g = gx + n * p.x.sn + c0;
      for (int64_t ih = 0; ih < H; ++ih)
        for (int64_t iw = 0; iw < W; ++iw)
          for (int64_t c = 0; c < cn; ++c) g[ih * p.x.sh + iw * p.x.sw + c] = T(0);
      for (int64_t oh = 0; oh < P; ++oh) {
        const Range& rh = win.h[oh];
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
