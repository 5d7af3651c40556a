// Body of the elementwise kernels, included once per ISA inside namespace fastconv::<isa> after all
// standard headers (see eltwise_kernels.cpp, eltwise_kernels_avx2.cpp): plain loops that the
// compiler vectorizes for the target of the including file.
// Needs: <algorithm>, <cmath>, <cstring>, <cstdint>, <limits>, fastconv/eltwise_kernels.h.

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

template <typename T>
void relu_fwd(const T* __restrict x, T* __restrict y, int64_t n) {
  parallel_ranges(n, n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      auto v = to_f32(x[i]);
      y[i] = from_f32<T>(v <= 0 ? decltype(v)(0) : v);  // NaN <= 0 is false: NaN stays NaN
    }
  });
}

template <typename T>
void relu_bwd(const T* __restrict gy, const T* __restrict r, T* __restrict gx, int64_t n) {
  parallel_ranges(n, n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      auto g = to_f32(gy[i]);
      gx[i] = from_f32<T>(to_f32(r[i]) <= 0 ? decltype(g)(0) : g);
    }
  });
}

template <typename T>
void sort_fwd(const T* __restrict a, const T* __restrict b, T* __restrict y, int64_t n, SortMode mode,
              double eps_d) {
  using A = acc_t<T>;
  const A eps = static_cast<A>(eps_d), zero = 0;
  const bool sq = mode == SortMode::kSqrt;
  parallel_ranges(n, n, [&](int64_t lo, int64_t hi) {
    if (sq) {
      for (int64_t i = lo; i < hi; ++i) {
        A av = to_f32(a[i]), bv = to_f32(b[i]);
        y[i] = from_f32<T>(av + bv + std::sqrt(std::max(av, zero) * std::max(bv, zero) + eps));
      }
    } else {
      for (int64_t i = lo; i < hi; ++i) {
        A av = to_f32(a[i]), bv = to_f32(b[i]);
        y[i] = from_f32<T>(av + bv + std::max(av, zero) * std::max(bv, zero));
      }
    }
  });
}

template <typename T>
void sort_bwd(const T* __restrict gy, const T* __restrict a, const T* __restrict b, T* __restrict ga,
              T* __restrict gb, int64_t n, SortMode mode, double eps_d) {
  using A = acc_t<T>;
  const A zero = 0, half = 0.5;
  // eps is raised to the smallest normal number so 1/s stays finite when eps = 0 and an operand is
  // 0; the derivative term is then (finite) * 0 = 0, its true value. Raising eps by ~1e-38 changes
  // nothing else visible, and it keeps the loop free of branches, so it vectorizes.
  const A eps = std::max(static_cast<A>(eps_d), std::numeric_limits<A>::min());
  const bool sq = mode == SortMode::kSqrt;
  parallel_ranges(n, 2 * n, [&](int64_t lo, int64_t hi) {
    if (sq) {
      for (int64_t i = lo; i < hi; ++i) {
        A g = to_f32(gy[i]), av = to_f32(a[i]), bv = to_f32(b[i]);
        A ra = std::max(av, zero), rb = std::max(bv, zero);
        A h = half / std::sqrt(ra * rb + eps);  // d/da sqrt(ra*rb + eps) = [a>0] rb * h
        A ta = av > zero ? rb : zero, tb = bv > zero ? ra : zero;
        ga[i] = from_f32<T>(g + g * (h * ta));
        gb[i] = from_f32<T>(g + g * (h * tb));
      }
    } else {
      for (int64_t i = lo; i < hi; ++i) {
        A g = to_f32(gy[i]), av = to_f32(a[i]), bv = to_f32(b[i]);
        A ra = std::max(av, zero), rb = std::max(bv, zero);
        ga[i] = from_f32<T>(g + g * (av > zero ? rb : zero));
        gb[i] = from_f32<T>(g + g * (bv > zero ? ra : zero));
      }
    }
  });
}
