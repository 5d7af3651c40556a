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
