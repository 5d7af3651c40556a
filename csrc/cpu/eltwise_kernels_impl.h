// Body of the elementwise kernels, included once per ISA inside namespace fastconv::<isa> after all
// standard headers (see eltwise_kernels.cpp, eltwise_kernels_avx2.cpp): plain loops that the
// compiler vectorizes for the target of the including file.
// Needs: <algorithm>, <cmath>, <cstring>, <cstdint>, <limits>, <emmintrin.h> (x86-64),
// fastconv/eltwise_kernels.h.

inline float to_f32(float v) { return v; }
inline double to_f32(double v) { return v; }
inline float to_f32(bf16 v) {
  uint32_t u = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float to_f32(fp16 v) {
  _Float16 h;
  std::memcpy(&h, &v.bits, 2);
  return static_cast<float>(h);
}

template <typename T> inline T from_f32(float v);
template <typename T> inline T from_f32(double v);
template <> inline float from_f32<float>(float v) { return v; }
template <> inline double from_f32<double>(double v) { return v; }
template <> inline bf16 from_f32<bf16>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  // Round to nearest even as torch does; NaN stays a (quiet) NaN instead of rounding to Inf.
  uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  uint32_t q = (u >> 16) | 0x40u;
  return bf16{static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? q : r)};
}
template <> inline fp16 from_f32<fp16>(float v) {
  _Float16 h = static_cast<_Float16>(v);
  fp16 r;
  std::memcpy(&r.bits, &h, 2);
  return r;
}

// Compute type: double for double, float otherwise.
template <typename T> using acc_t = decltype(to_f32(T{}));

#include "stream_store.inc"
constexpr int64_t kChunk = 1024;

template <typename T>
bool streams(int64_t n) {
  return n * int64_t(sizeof(T)) >= kStreamBytes;
}

// Elementwise drivers over [lo, hi): restrict-qualified parameters (a lambda's captures would lose
// them) let the loops vectorize without run-time alias checks; f computes in acc_t<T>.
template <typename T, typename F>
void map1(const T* __restrict x, T* __restrict y, int64_t lo, int64_t hi, bool stream, F f) {
  if (!stream) {
    for (int64_t i = lo; i < hi; ++i) y[i] = from_f32<T>(f(to_f32(x[i])));
    return;
  }
  alignas(64) T buf[kChunk];
  for (int64_t c = lo; c < hi; c += kChunk) {
    const int64_t m = std::min(kChunk, hi - c);
    for (int64_t i = 0; i < m; ++i) buf[i] = from_f32<T>(f(to_f32(x[c + i])));
    stream_store(y + c, buf, m * int64_t(sizeof(T)));
  }
  stream_fence();
}
template <typename T, typename F>
void map2(const T* __restrict x, const T* __restrict z, T* __restrict y, int64_t lo, int64_t hi, bool stream, F f) {
  if (!stream) {
    for (int64_t i = lo; i < hi; ++i) y[i] = from_f32<T>(f(to_f32(x[i]), to_f32(z[i])));
    return;
  }
  alignas(64) T buf[kChunk];
  for (int64_t c = lo; c < hi; c += kChunk) {
    const int64_t m = std::min(kChunk, hi - c);
    for (int64_t i = 0; i < m; ++i) buf[i] = from_f32<T>(f(to_f32(x[c + i]), to_f32(z[c + i])));
    stream_store(y + c, buf, m * int64_t(sizeof(T)));
  }
  stream_fence();
}
template <typename T, typename F>
void map3to2(const T* __restrict g, const T* __restrict a, const T* __restrict b, T* __restrict ya,
             T* __restrict yb, int64_t lo, int64_t hi, bool stream, F f) {
  if (!stream) {
    for (int64_t i = lo; i < hi; ++i) {
      acc_t<T> oa, ob;
      f(to_f32(g[i]), to_f32(a[i]), to_f32(b[i]), oa, ob);
      ya[i] = from_f32<T>(oa), yb[i] = from_f32<T>(ob);
    }
    return;
  }
  alignas(64) T bufa[kChunk], bufb[kChunk];
  for (int64_t c = lo; c < hi; c += kChunk) {
    const int64_t m = std::min(kChunk, hi - c);
    for (int64_t i = 0; i < m; ++i) {
      acc_t<T> oa, ob;
      f(to_f32(g[c + i]), to_f32(a[c + i]), to_f32(b[c + i]), oa, ob);
      bufa[i] = from_f32<T>(oa), bufb[i] = from_f32<T>(ob);
    }
    stream_store(ya + c, bufa, m * int64_t(sizeof(T)));
    stream_store(yb + c, bufb, m * int64_t(sizeof(T)));
  }
  stream_fence();
}

template <typename T>
void relu_fwd(const T* x, T* y, int64_t n) {
  using A = acc_t<T>;
  parallel_ranges(n, n, [&](int64_t lo, int64_t hi) {
    map1(x, y, lo, hi, streams<T>(n), [](A v) { return v < 0 ? A(0) : v; });  // NaN stays NaN, -0 stays -0 (torch)
  });
}

template <typename T>
void relu_bwd(const T* gy, const T* r, T* gx, int64_t n) {
  using A = acc_t<T>;
  parallel_ranges(n, n, [&](int64_t lo, int64_t hi) {
    map2(gy, r, gx, lo, hi, streams<T>(n), [](A g, A rv) { return rv <= 0 ? A(0) : g; });
  });
}

template <typename T>
void sort_fwd(const T* a, const T* b, T* y, int64_t n, SortMode mode, double eps_d) {
  using A = acc_t<T>;
  const A eps = static_cast<A>(eps_d), zero = 0;
  const bool sq = mode == SortMode::kSqrt;
  parallel_ranges(n, n, [&](int64_t lo, int64_t hi) {
    if (sq)
      map2(a, b, y, lo, hi, streams<T>(n), [=](A av, A bv) { return av + bv + std::sqrt(std::max(av, zero) * std::max(bv, zero) + eps); });
    else
      map2(a, b, y, lo, hi, streams<T>(n), [=](A av, A bv) { return av + bv + std::max(av, zero) * std::max(bv, zero); });
  });
}

template <typename T>
void sort_bwd(const T* gy, const T* a, const T* b, T* ga, T* gb, int64_t n, SortMode mode, double eps_d) {
  using A = acc_t<T>;
  const A zero = 0, half = 0.5;
  // eps is raised to the smallest normal number so 1/s stays finite when eps = 0 and an operand is
  // 0; the derivative term is then (finite) * 0 = 0, its true value. Raising eps by ~1e-38 changes
  // nothing else visible, and it keeps the loop free of branches, so it vectorizes.
  const A eps = std::max(static_cast<A>(eps_d), std::numeric_limits<A>::min());
  const bool sq = mode == SortMode::kSqrt;
  parallel_ranges(n, 2 * n, [&](int64_t lo, int64_t hi) {
    if (sq) {
      map3to2(gy, a, b, ga, gb, lo, hi, streams<T>(n), [=](A g, A av, A bv, A& oa, A& ob) {
        A ra = std::max(av, zero), rb = std::max(bv, zero);
        A h = half / std::sqrt(ra * rb + eps);  // d/da sqrt(ra*rb + eps) = [a>0] rb * h
        A ta = av > zero ? rb : zero, tb = bv > zero ? ra : zero;
        oa = g + g * (h * ta), ob = g + g * (h * tb);
      });
    } else {
      map3to2(gy, a, b, ga, gb, lo, hi, streams<T>(n), [=](A g, A av, A bv, A& oa, A& ob) {
        A ra = std::max(av, zero), rb = std::max(bv, zero);
        oa = g + g * (av > zero ? rb : zero), ob = g + g * (bv > zero ? ra : zero);
      });
    }
  });
}

// ---- training-mode BatchNorm + ReLU (float and double). The tensor is [outer][C][inner], dense:
// channels-last is outer = N*H*W, inner = 1; NCHW is outer = N, inner = H*W. Per-channel sums run
// in the element type over blocks of kBnBlock rows (vector arithmetic at full width) and are added
// into double sums after each block; the forward sums are of x - k[c] with k the channel's first
// value, so that a mean large against the spread costs no precision in float. Channels-last keeps
// one partial row per thread, combined in thread order (the result does not depend on timing).
constexpr int64_t kBnBlock = 16;

template <typename T>
void bn_channel_sums(const T* x, const T* y, const T* g, const T* mean, T* gres, int64_t outer, int64_t C,
                     int64_t inner, double* s1, double* s2) {
  // x only (y == nullptr): s1 = sum x, s2 = sum x^2. Backward (y, g given): g' = (y <= 0 ? 0 : g),
  // written to gres when not null; s1 = sum g', s2 = sum g' * (x - mean).
  const bool bwd = y != nullptr;
  const int64_t n = outer * C * inner;
  // the per-channel shift of the forward sums: the first value of the channel
  std::vector<T> shift(C, T(0));
  if (!bwd)
    for (int64_t c = 0; c < C; ++c) shift[c] = x[c * inner];
  const T* k = bwd ? mean : shift.data();
  if (inner == 1) {
    const bool nested = omp_in_parallel();  // then parallel_ranges runs on this thread alone
    const int nt = nested ? 1 : omp_get_max_threads();
    std::vector<double> part(size_t(nt) * 2 * C, 0.0);
    parallel_ranges(outer, n, [&](int64_t lo, int64_t hi) {
      double* p1 = part.data() + size_t(nested ? 0 : omp_get_thread_num()) * 2 * C;
      double* p2 = p1 + C;
      std::vector<T> b1(C), b2(C), rowbuf(bwd && !gres ? C : 0);
      for (int64_t o0 = lo; o0 < hi; o0 += kBnBlock) {
        std::fill(b1.begin(), b1.end(), T(0));
        std::fill(b2.begin(), b2.end(), T(0));
        T *__restrict a1 = b1.data(), *__restrict a2 = b2.data();
        for (int64_t o = o0; o < std::min(hi, o0 + kBnBlock); ++o) {
          const T* __restrict xr = x + o * C;
          if (!bwd) {
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              const T d = xr[c] - k[c];
              a1[c] += d;
              a2[c] += d * d;
            }
            continue;
          }
          // g' into its row of gres (or a row buffer) first: a select the compiler vectorizes,
          // where a select feeding the sums directly stays scalar
          const T *yr = y + o * C, *gr = g + o * C;
          T* __restrict gw = gres ? gres + o * C : rowbuf.data();
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const T gval = gr[c];
            gw[c] = yr[c] <= 0 ? T(0) : gval;
          }
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            a1[c] += gw[c];
            a2[c] += gw[c] * (xr[c] - k[c]);
          }
        }
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          p1[c] += a1[c];
          p2[c] += a2[c];
        }
      }
    });
    for (int64_t c = 0; c < C; ++c) {
      double a = 0, b = 0;
      for (int t = 0; t < nt; ++t) {
        a += part[size_t(t) * 2 * C + c];
        b += part[size_t(t) * 2 * C + C + c];
      }
      s1[c] = a;
      s2[c] = b;
    }
  } else {
    parallel_ranges(C, n, [&](int64_t lo, int64_t hi) {
      std::vector<T> rowbuf(bwd && !gres ? inner : 0);
      for (int64_t c = lo; c < hi; ++c) {
        double a1 = 0, a2 = 0;
        const T kc = k[c];
        for (int64_t o = 0; o < outer; ++o) {
          const int64_t base = (o * C + c) * inner;
          const T* __restrict xr = x + base;
          const T* __restrict gv = nullptr;
          if (bwd) {
            const T *yr = y + base, *gr = g + base;
            T* __restrict gw = gres ? gres + base : rowbuf.data();
#pragma omp simd
            for (int64_t i = 0; i < inner; ++i) {
              const T gval = gr[i];
              gw[i] = yr[i] <= 0 ? T(0) : gval;
            }
            gv = gw;
          }
          for (int64_t i0 = 0; i0 < inner; i0 += 16 * kBnBlock) {
            const int64_t i1 = std::min(inner, i0 + 16 * kBnBlock);
            T b1 = 0, b2 = 0;
            if (!bwd) {
#pragma omp simd reduction(+ : b1, b2)
              for (int64_t i = i0; i < i1; ++i) {
                const T d = xr[i] - kc;
                b1 += d;
                b2 += d * d;
              }
            } else {
#pragma omp simd reduction(+ : b1, b2)
              for (int64_t i = i0; i < i1; ++i) {
                b1 += gv[i];
                b2 += gv[i] * (xr[i] - kc);
              }
            }
            a1 += b1;
            a2 += b2;
          }
        }
        s1[c] = a1;
        s2[c] = a2;
      }
    });
  }
  if (!bwd) {  // back from the shifted sums: sum x = S1 + m k, sum x^2 = S2 + 2 k S1 + m k^2
    const double m = double(outer) * double(inner);
    for (int64_t c = 0; c < C; ++c) {
      const double kc = double(k[c]), a = s1[c];
      s1[c] = a + m * kc;
      s2[c] = s2[c] + 2 * kc * a + m * kc * kc;
    }
  }
}

// One run of n elements of bn_channel_apply, at offset `off` of every tensor: the channel
// parameters mu, a, b, d indexed per element (a channels-last pixel row, kPerElem) or one value for
// the whole run (an NCHW plane row).
template <typename T, bool kPerElem>
inline void bn_apply_run(const T* x, const T* res, const T* g, const T* y, const T* mu, const T* a, const T* b,
                         const T* d, T* out, int64_t off, int64_t n) {
  const T* __restrict xr = x + off;
  T* __restrict orow = out + off;
  if (!g) {
    const T* rr = res ? res + off : nullptr;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const int64_t j = kPerElem ? i : 0;
      T v = (xr[i] - mu[j]) * a[j] + b[j];
      if (rr) v += rr[i];
      orow[i] = v < 0 ? T(0) : v;
    }
    return;
  }
  const T *gr = g + off, *yr = y + off;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = kPerElem ? i : 0;
    const T gval = gr[i], gv = yr[i] <= 0 ? T(0) : gval;  // both loaded: a select
    orow[i] = a[j] * gv + b[j] * (xr[i] - mu[j]) + d[j];
  }
}

// Forward apply: y = relu((x - mu[c]) a[c] + b[c] (+ res)). Backward apply (g, y given): dx =
// a[c] g' + b[c] (x - mu[c]) + d[c] with g' = (y <= 0 ? 0 : g). Centred on mu, so that no large
// terms cancel where the mean is large against the spread.
template <typename T>
void bn_channel_apply(const T* x, const T* res, const T* g, const T* y, const T* mu, const T* a, const T* b,
                      const T* d, T* out, int64_t outer, int64_t C, int64_t inner) {
  parallel_ranges(outer * C, outer * C * inner, [&](int64_t lo, int64_t hi) {
    // rows of `inner` elements: row r is (o, c) = (r / C, r % C); channels-last rows are single
    // elements, so walk runs of whole pixel rows there.
    if (inner == 1) {
      for (int64_t r = lo; r < hi;) {
        const int64_t c0 = r % C, cnt = std::min(C - c0, hi - r);
        bn_apply_run<T, true>(x, res, g, y, mu + c0, a + c0, b + c0, d ? d + c0 : nullptr, out, r, cnt);
        r += cnt;
      }
      return;
    }
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t c = r % C;
      bn_apply_run<T, false>(x, res, g, y, mu + c, a + c, b + c, d ? d + c : nullptr, out, r * inner, inner);
    }
  });
}
