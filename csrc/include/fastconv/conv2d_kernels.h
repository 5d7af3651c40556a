// CPU convolution kernels (pure C++, no torch). Every tensor is described by a Tensor4 with arbitrary
// element strides (NCHW or channels_last in practice); kernels copy what they read into the packed
// layouts they need, so any strides are correct and only the common ones are fast.
#pragma once
#include <cstdint>

#include "fastconv/common.h"

namespace fastconv {

// y = epilogue(conv(x, w)); p.x/p.w/p.y describe x, w, y. ep.residual uses y's strides. `packed`:
// null, or the weights as conv2d_fwd_pack wrote them for these same parameters (skips packing).
template <typename T>
void conv2d_fwd_cpu(const Conv2dParams& p, const T* x, const T* w, T* y, const Epilogue<T>& ep,
                    const T* packed = nullptr);

// Elements of the packed weight form conv2d_fwd_cpu uses for p on the current ISA path (0: its path
// reads the weights directly), and the packing itself (out holds that many elements). The form
// depends on p's weight geometry, groups, output layout and the ISA path, not on the input values.
template <typename T>
int64_t conv2d_fwd_packed_size(const Conv2dParams& p);
template <typename T>
void conv2d_fwd_pack(const Conv2dParams& p, const T* w, T* out);

// dx = d(sum(dy * conv(x, w)))/dx; p.x describes dx (written), p.y describes dy.
template <typename T>
void conv2d_bwd_input_cpu(const Conv2dParams& p, const T* dy, const T* w, T* dx);

// dw = d(sum(dy * conv(x, w)))/dw; p.w describes dw (written).
template <typename T>
void conv2d_bwd_weight_cpu(const Conv2dParams& p, const T* dy, const T* x, T* dw);

// db[k] = sum over n, p, q of dy (db contiguous, dy.c elements).
template <typename T>
void conv2d_bwd_bias_cpu(const Tensor4& dy_desc, const T* dy, T* db);

// The register-blocked micro-kernel every path above is built on (one per ISA):
//   c[i][v] (+)= sum_{seg < nseg} sum_{u < T} a[seg_off[seg] + i*a_i + u*a_t] * b[(seg*T + u)*b_t + v]
// for i < np rows (np <= mp) and kv columns (b: a packed panel, zero-padded to kv columns, b_t = kv;
// or kv valid values at a stride b_t, such as 16 pixels of each channel plane of an NCHW input).
template <typename T>
struct TileArgs {
  const T* a;
  int64_t a_i, a_t;
  const int64_t* seg_off;
  int64_t nseg, T_len;
  const T* b;
  T* c;  // [np][kv], rows c_ld apart
  int np;
  bool accumulate;
  int64_t b_t = 0;   // distance between consecutive b rows (reduction steps); 0: kv (a packed panel)
  int64_t c_ld = 0;  // distance between consecutive c rows; 0: kv
  // An epilogue applied to the finished sums before the store (tiles written straight into the
  // output): c = relu(sum * alpha[v] + beta[v] + r[i * r_ld + v]), each part only where given
  // (alpha, beta, r non-null; relu keeps NaN and -0.0 as torch's). All kv columns must be valid.
  const T* alpha = nullptr;
  const T* beta = nullptr;
  const T* r = nullptr;
  int64_t r_ld = 0;
  bool relu = false;
  bool stream = false;  // non-temporal stores of the finished tile (every c row 64-byte aligned)
  bool has_epilogue() const { return alpha || beta || r || relu; }
};

template <typename T>
struct MicroKernel {
  int kv;  // columns (output channels) per tile
  int mp;  // max rows (output pixels) per tile
  void (*fn)(const TileArgs<T>&);
  // dst[j * ldd + i] = src[i * lds + j] for i < rows, j < cols (NCHW stores of finished tiles).
  void (*transpose)(const T* src, int64_t rows, int64_t cols, int64_t lds, T* dst, int64_t ldd);
};

// Depthwise convolution loops (groups == input channels), vectorized over channels of channels-last data:
//   DwTaps:   out[i*o_step + k*o_ks] = sum_{t < ntap} a[i*a_step + aoff[t] + k*a_ks] * b[boff[t] + k*b_ks]
//             for pixels i < npix, channels k < K (forward and bwd_input);
//   DwReduce: out[k*o_ks] += sum_{i < n} a[i*a_step + k*a_ks] * b[i*b_step + k*b_ks] (bwd_weight).
// All *_ks == 1 is the fast path (channel multiplier 1); others run scalar.
template <typename T>
struct DwTaps {
  const T* a;
  const T* b;
  const int64_t *aoff, *boff;
  int64_t ntap, npix, a_step, o_step, K, a_ks, b_ks, o_ks;
  T* out;
};

template <typename T>
struct DwReduce {
  const T* a;
  int64_t a_step, a_ks;
  const T* b;
  int64_t b_step, b_ks, n, K;
  T* out;
  int64_t o_ks;
};

// A channels-last source of a depthwise convolution with multiplier 1, read in place, and the
// window geometry of one output row: tap (r, s) of output q reads
// x[(h0 + r * dh) * xsh + (w0 + q * sw + s * dw) * xsw + c], for q < Q and channels c < C; taps
// outside [0, H) x [0, W) are the zero padding.
template <typename T>
struct DwSrc {
  const T* x;
  int64_t H, W, xsh, xsw;
  int64_t R, S, C;
  int64_t h0, dh, w0, sw, dw, Q;
};

// One output row: out[q * osw + c] = sum over taps of the source times w[(r * S + s) * C + c].
// dw_row_* return false for window sizes they do not handle.
template <typename T>
struct DwRow {
  DwSrc<T> src;
  const T* w;
  T* out;
  int64_t osw;
};

// One channel plane of a depthwise convolution with multiplier 1, unit column strides (NCHW):
// out[p * osh + q] = relu?(alpha * sum over taps inside the plane of
// x[(h0 + p * sh + r * dh) * xsh + w0 + q * sw + s * dw] * w[r * S + s] + beta), for p < P, q < Q.
// dw_plane_* return false for window sizes they do not handle.
template <typename T>
struct DwPlane {
  const T* x;
  int64_t H, W, xsh;
  const T* w;
  int64_t R, S;
  int64_t h0, sh, dh, w0, sw, dw, P, Q;
  T* out;
  int64_t osh;
  T alpha, beta;
  bool relu;
};

// The weight gradient's share of one output row: acc[(r * S + s) * C + c] += sum over q of
// g[q * gsw + c] times the source's tap (r, s) of output q.
template <typename T>
struct DwWgrad {
  DwSrc<T> src;
  const T* g;
  int64_t gsw;
  T* acc;
};

// Per-ISA loops besides the micro-kernel: the depthwise loops above (conv2d_depthwise_simd.inc) and the
// Winograd F(4x4, 3x3) transforms over channels (conv2d_winograd_simd.inc; kv = the path's kKv):
//   wino_input:  v[xi * vs + c] = (B^T d B)[xi], d[i][j] = src[i * sh + j * sw + c], for c < n;
//   wino_output: out[i * os + j * ps + v] = (A^T m A)[i][j], m[xi] = m[xi * ms + v], for v < kv;
//   wino_weight: u[xi * us + v] = (G g G^T)[xi], g[r][s] = g[r * sr + s * ss + v], for v < kv;
//   wino_dy:     v[xi * vs + c] = (A g A^T)[xi], g[i][j] = src[i * sh + j * sw + c] (4x4), for c < n;
//   wino_wgrad_output: out[(r * 3 + s) * kv + v] = (G^T m G)[r][s], m[xi] = m[xi * ms + v], for v < kv.
#define FASTCONV_ISA_DECLS                                                                            \
  void dw_taps_f32(const DwTaps<float>& d);                                                           \
  void dw_taps_f64(const DwTaps<double>& d);                                                          \
  void dw_reduce_f32(const DwReduce<float>& d);                                                       \
  void dw_reduce_f64(const DwReduce<double>& d);                                                      \
  bool dw_row_f32(const DwRow<float>& d);                                                             \
  bool dw_row_f64(const DwRow<double>& d);                                                            \
  bool dw_plane_f32(const DwPlane<float>& d);                                                         \
  bool dw_plane_f64(const DwPlane<double>& d);                                                        \
  bool dw_wgrad_f32(const DwWgrad<float>& d);                                                         \
  bool dw_wgrad_f64(const DwWgrad<double>& d);                                                        \
  void wino_input_f32(const float* src, int64_t sh, int64_t sw, int64_t n, float* v, int64_t vs);     \
  void wino_output_f32(const float* m, int64_t ms, float* out, int64_t os, int64_t ps);               \
  void wino_weight_f32(const float* g, int64_t sr, int64_t ss, float* u, int64_t us);                 \
  void wino_dy_f32(const float* src, int64_t sh, int64_t sw, int64_t n, float* v, int64_t vs);        \
  void wino_wgrad_output_f32(const float* m, int64_t ms, float* out);

namespace portable {
FASTCONV_ISA_DECLS
constexpr int kKv = 16;
}  // namespace portable
// Few-pixel 1x1 dot products (conv2d_kernels_simd.inc): out[m * ldo + r] = sum over c < n of
// w[r * ldw + c] * x[m][c], for r < nr <= kDotRows and m < nm <= kDotPixels.
#define FASTCONV_DOTS_DECL \
  void dots_f32(const float* w, int64_t ldw, int nr, const float* const* x, int nm, int64_t n, float* out, int64_t ldo);

namespace avx2 {
FASTCONV_ISA_DECLS
FASTCONV_DOTS_DECL
constexpr int kDotRows = 4, kDotPixels = 2;
constexpr int kKv = 16, kMp = 6;
void conv_tile_f32(const TileArgs<float>& t);
void transpose_f32(const float* src, int64_t rows, int64_t cols, int64_t lds, float* dst, int64_t ldd);
}  // namespace avx2
namespace avx512 {
FASTCONV_ISA_DECLS
FASTCONV_DOTS_DECL
constexpr int kDotRows = 4, kDotPixels = 4;
constexpr int kKv = 32, kMp = 12;
void conv_tile_f32(const TileArgs<float>& t);
void transpose_f32(const float* src, int64_t rows, int64_t cols, int64_t lds, float* dst, int64_t ldd);
}  // namespace avx512

}  // namespace fastconv
