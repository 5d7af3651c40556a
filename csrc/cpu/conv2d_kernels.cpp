// Convolution drivers shared by every ISA path. All three convolutions are one blocked GEMM shape run
// by an ISA-specific micro-kernel (see TileArgs in conv2d_kernels.h):
//   forward:       rows = output pixels of one output row, columns = output channels, reduction =
//                  (r, s) segments x input channels of a zero-padded channels-last copy of x;
//   bwd_input:     stride 1 is the forward conv of dy with the flipped, transposed weight; other
//                  strides compute dy x W^T per output row and scatter-add it into dx (col2im);
//   bwd_weight:    rows = input channels, columns = output channels, reduction = output pixels.
// Weights (and dy for bwd_weight) are packed into panels of `kv` columns, zero-padded, so the
// micro-kernel never branches. The epilogue runs on the finished [pixels x kv] tile while it is in L1.
#include <emmintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#include "fastconv/common.h"
#include "fastconv/conv2d_kernels.h"
#include "fastconv/free_blocks.h"

namespace fastconv {
namespace portable {
#include "conv2d_depthwise.inc"
#include "conv2d_winograd.inc"
}  // namespace portable

namespace {

#include "stream_store.inc"

// Large scratch blocks are kept per thread between calls: a fresh multi-megabyte allocation is a
// fresh mapping, and filling it pays a page fault per 4 KB (a few percent of a convolution). Blocks
// of 256 KB and more go back to the freeing thread's pool (at most 128 MB per thread, oldest out
// first) and are reused for requests of up to their size and at least half of it.
class BlockPool {
 public:
  static constexpr size_t kMin = size_t(256) << 10;
  void* take(size_t bytes) {
    void* p = bytes >= kMin ? blocks_.take(bytes) : nullptr;
    if (!p) p = std::aligned_alloc(64, bytes);
    if (!p) throw std::bad_alloc();
    return p;
  }
  void give(void* p, size_t bytes) {
    if (bytes < kMin) return std::free(p);
    blocks_.give(p, bytes);
  }
  static BlockPool& local() {
    thread_local BlockPool pool;
    return pool;
  }

 private:
  FreeBlocks blocks_{size_t(128) << 20};
};

// 64-byte aligned scratch buffer (vector loads of packed panels never split cache lines), from the
// calling thread's block pool.
template <typename T>
struct Buffer {
  T* mem = nullptr;
  size_t bytes = 0;
  Buffer() = default;
  explicit Buffer(int64_t n) { alloc(n); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { release(); }
  T* alloc(int64_t n) {
    release();
    bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T) + 63) / 64 * 64;
    mem = static_cast<T*>(BlockPool::local().take(bytes));
    return mem;
  }
  T* get() const { return mem; }

 private:
  void release() {
    if (mem) BlockPool::local().give(mem, bytes);
    mem = nullptr;
  }
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Splits a row of q pixels into ceil(q / mp) tiles of nearly equal size (e.g. 56 = 6*6 + 4*5 rather
// than 9*6 + 2): a narrow tail tile has too few independent accumulators to hide the FMA latency.
struct RowTiles {
  int64_t count, base, extra;
  RowTiles(int64_t q, int mp) : count(ceil_div(q, mp)), base(q / count), extra(q % count) {}
  int np(int64_t t) const { return static_cast<int>(base + (t < extra)); }
  int64_t start(int64_t t) const { return t * base + std::min(t, extra); }
};

// Portable micro-kernel: plain loops over a fixed column count, auto-vectorized by the compiler.
template <typename T>
void portable_tile(const TileArgs<T>& t) {
  constexpr int kKv = 16, kMp = 4;
  T acc[kMp][kKv];
  const int64_t ldc = t.c_ld ? t.c_ld : kKv;
  for (int i = 0; i < t.np; ++i)
    for (int v = 0; v < kKv; ++v) acc[i][v] = t.accumulate ? t.c[i * ldc + v] : T(0);
  const int64_t bt = t.b_t ? t.b_t : kKv;
  for (int64_t sg = 0; sg < t.nseg; ++sg) {
    const T* a = t.a + t.seg_off[sg];
    const T* b = t.b + sg * t.T_len * bt;
    for (int64_t u = 0; u < t.T_len; ++u, a += t.a_t, b += bt)
      for (int i = 0; i < t.np; ++i) {
        const T av = a[i * t.a_i];
        for (int v = 0; v < kKv; ++v) acc[i][v] += av * b[v];
      }
  }
  for (int i = 0; i < t.np; ++i)
    for (int v = 0; v < kKv; ++v) t.c[i * ldc + v] = acc[i][v];
}

template <typename T>
void portable_transpose(const T* src, int64_t rows, int64_t cols, int64_t lds, T* dst, int64_t ldd) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) dst[j * ldd + i] = src[i * lds + j];
}

template <typename T>
MicroKernel<T> micro_kernel() {
  return {16, 4, &portable_tile<T>, &portable_transpose<T>};
}

template <>
MicroKernel<float> micro_kernel<float>() {
  switch (cpu_isa()) {
    case Isa::kAvx512: return {avx512::kKv, avx512::kMp, &avx512::conv_tile_f32, &avx512::transpose_f32};
    case Isa::kAvx2: return {avx2::kKv, avx2::kMp, &avx2::conv_tile_f32, &avx2::transpose_f32};
    default: return {16, 4, &portable_tile<float>, &portable_transpose<float>};
  }
}

// Channels-last copy of x (allocated in `store`) with zero padding: out[n][hp][wp][c] = x[n][c][hp - ph0][wp - pw0] (0 outside).
// Also handles negative padding (cropping), which the stride-1 bwd_input needs.
struct Padded {
  int64_t hp, wp, c;  // sizes of the copy
  int64_t sn() const { return hp * wp * c; }
  int64_t sh() const { return wp * c; }
};

// Fills row hp of the padded copy of image n (pd.wp pixels of d.c channels).
template <typename T>
void pad_row(const Tensor4& d, const T* x, int64_t ph0, int64_t pw0, const Padded& pd, int64_t n, int64_t hp, T* row) {
  const int64_t w_lo = std::max<int64_t>(0, pw0), w_hi = std::min<int64_t>(pd.wp, d.w + pw0);
  const int64_t h = hp - ph0;
  if (h < 0 || h >= d.h || w_lo >= w_hi) {
    std::memset(row, 0, sizeof(T) * pd.sh());
    return;
  }
  std::memset(row, 0, sizeof(T) * w_lo * d.c);
  std::memset(row + w_hi * d.c, 0, sizeof(T) * (pd.wp - w_hi) * d.c);
  const T* src = x + n * d.sn + h * d.sh;
  if (d.sc == 1) {
    for (int64_t wq = w_lo; wq < w_hi; ++wq) std::memcpy(row + wq * d.c, src + (wq - pw0) * d.sw, sizeof(T) * d.c);
  } else {
    // Transpose in blocks of 16 channels: each pixel's block fills one cache line of the copy
    // while the 16 source rows being read stay in L1.
    for (int64_t c0 = 0; c0 < d.c; c0 += 16) {
      const int64_t c1 = std::min<int64_t>(d.c, c0 + 16);
      for (int64_t wq = w_lo; wq < w_hi; ++wq)
        for (int64_t c = c0; c < c1; ++c) row[wq * d.c + c] = src[c * d.sc + (wq - pw0) * d.sw];
    }
  }
}

// True when x already is its own padded copy (channels-last contiguous, nothing to pad or crop).
inline bool usable_in_place(const Tensor4& d, int64_t ph0, int64_t pw0, const Padded& pd) {
  return ph0 == 0 && pw0 == 0 && pd.wp == d.w && pd.hp == d.h && d.sc == 1 && d.sw == d.c && d.sh == d.w * d.c &&
         d.sn == d.h * d.w * d.c;
}

template <typename T>
const T* pad_channels_last(const Tensor4& d, const T* x, int64_t ph0, int64_t pw0, const Padded& pd,
                           Buffer<T>& store) {
  if (usable_in_place(d, ph0, pw0, pd)) return x;
  T* out = store.alloc(d.n * pd.sn());
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t hp = 0; hp < pd.hp; ++hp) pad_row(d, x, ph0, pw0, pd, n, hp, out + n * pd.sn() + hp * pd.sh());
  return out;
}

// The R input rows one output row reads (rows pr*stride_h + r*dil_h of the padded copy). A
// channels-last input that needs padding is padded row by row into a per-thread buffer as tasks need
// it (plain copies that stay in cache), which saves a round trip of the whole input through memory;
// other layouts are transposed into a full padded copy once (re-transposing per task costs more).
template <typename T>
struct TapRows {
  const Tensor4& d;
  const T* x;
  int64_t ph0, pw0, stride_h, dil_h, R;
  Padded pd;
  const T* base;  // the padded image batch, or nullptr when built per task
  // full_copy: build the whole padded copy even for channels-last input (when each output row is
  // visited once per weight panel, rebuilding its rows per task would repeat the copy per panel).
  TapRows(const Tensor4& d_, const T* x_, int64_t ph0_, int64_t pw0_, int64_t sh, int64_t dh, int64_t R_, Padded pd_,
          Buffer<T>& store, bool full_copy = false)
      : d(d_), x(x_), ph0(ph0_), pw0(pw0_), stride_h(sh), dil_h(dh), R(R_), pd(pd_),
        base(d_.sc == 1 && !full_copy && !usable_in_place(d_, ph0_, pw0_, pd_)
                 ? nullptr
                 : pad_channels_last(d_, x_, ph0_, pw0_, pd_, store)) {}
  int64_t pitch() const { return base ? dil_h * pd.sh() : pd.sh(); }  // distance between taps r, r+1
  int64_t buffer_size() const { return base ? 0 : R * pd.sh(); }
  // Row 0 of output row pr of image n; `last` caches the (n, pr) already in buf.
  const T* get(int64_t n, int64_t pr, T* buf, int64_t& last) const {
    if (base) return base + n * pd.sn() + pr * stride_h * pd.sh();
    const int64_t key = n * pd.hp + pr;
    if (key != last) {
      for (int64_t r = 0; r < R; ++r) pad_row(d, x, ph0, pw0, pd, n, pr * stride_h + r * dil_h, buf + r * pd.sh());
      last = key;
    }
    return buf;
  }
};

// ----------------------------------------------------------------------------------------- epilogue
// Per-channel affine part folded into alpha/beta (scale, shift + bias), then residual/relu at store.
template <typename T>
struct EpilogueTables {
  std::vector<T> alpha, beta;
  bool affine = false;
  EpilogueTables(const Epilogue<T>& ep, int64_t k) {
    affine = ep.scale || ep.shift || ep.bias;
    if (!affine) return;
    alpha.assign(k, T(1));
    beta.assign(k, T(0));
    for (int64_t i = 0; i < k; ++i) {
      if (ep.scale) alpha[i] = ep.scale[i];
      if (ep.shift) beta[i] += ep.shift[i];
      if (ep.bias) beta[i] += ep.bias[i];
    }
  }
};

template <typename T>
inline T relu_nan(T v) { return v < T(0) ? T(0) : v; }  // NaN stays NaN, as torch's relu

template <typename T, Combine CB, bool RELU, bool SQRT>
inline T finish(T z, T r, T eps) {
  if (CB == Combine::kAdd) z = r + z;
  if (CB == Combine::kSort) {
    const T prod = relu_nan(r) * relu_nan(z);
    z = r + z + (SQRT ? std::sqrt(prod + eps) : prod);
  }
  if (RELU) z = relu_nan(z);
  return z;
}

// Writes tile[i][v] (np pixels, kvalid channels) to y[y0 + i*qstride + v*kstride]. Restrict-qualified
// runs and the epilogue as template parameters keep the contiguous case a branch-free vector loop
// (a data-dependent branch per element costs more than the convolution on cheap layers).
// N > 0: a run of exactly N (the panel width), a fixed-trip loop the compiler vectorizes and
// inlines (a plain copy with a run-time length becomes a memmove call per 64-byte run; forcing a
// full unroll instead turns it into scalar code with a branch per ReLU).
// Streamed runs (ep.stream) are finished into an L1 buffer and written with stream_store.
template <typename T, Combine CB, bool RELU, bool SQRT, int N = 0>
void store_run(const T* __restrict t, int64_t ts, T* __restrict o, const T* __restrict r, int64_t os, int64_t n, T eps,
               bool stream = false) {
  if (N > 0) {
    if (stream) {
      alignas(64) T buf[N > 0 ? N : 1];
#pragma omp simd
      for (int v = 0; v < N; ++v) buf[v] = finish<T, CB, RELU, SQRT>(t[v], CB == Combine::kNone ? T(0) : r[v], eps);
      return stream_store(o, buf, int64_t(sizeof(T)) * N);
    }
#pragma omp simd
    for (int v = 0; v < N; ++v) o[v] = finish<T, CB, RELU, SQRT>(t[v], CB == Combine::kNone ? T(0) : r[v], eps);
    return;
  }
  if (os == 1 && ts == 1) {
#pragma omp simd
    for (int64_t v = 0; v < n; ++v) o[v] = finish<T, CB, RELU, SQRT>(t[v], CB == Combine::kNone ? T(0) : r[v], eps);
  } else {
#pragma omp simd
    for (int64_t v = 0; v < n; ++v)
      o[v * os] = finish<T, CB, RELU, SQRT>(t[v * ts], CB == Combine::kNone ? T(0) : r[v * os], eps);
  }
}

template <typename T, Combine CB, bool RELU, bool SQRT>
void store_tile_t(const T* tile, int kv, int np, int kvalid, T* y, int64_t y0, int64_t qstride,
                  int64_t kstride, const Epilogue<T>& ep) {
  const T* res = ep.residual;
  if (kstride == 1) {
    // Runs of 32 and 16 as fixed-length loops, any rest with a run-time length.
    for (int i = 0; i < np; ++i) {
      const int64_t o = y0 + i * qstride;
      const T* t = tile + i * kv;
      int v = 0;
      for (; v + 32 <= kvalid; v += 32)
        store_run<T, CB, RELU, SQRT, 32>(t + v, 1, y + o + v, res ? res + o + v : nullptr, 1, 32, ep.eps, ep.stream);
      for (; v + 16 <= kvalid; v += 16)
        store_run<T, CB, RELU, SQRT, 16>(t + v, 1, y + o + v, res ? res + o + v : nullptr, 1, 16, ep.eps, ep.stream);
      if (v < kvalid)
        store_run<T, CB, RELU, SQRT>(t + v, 1, y + o + v, res ? res + o + v : nullptr, 1, kvalid - v, ep.eps);
    }
  } else {
    for (int v = 0; v < kvalid; ++v) {
      const int64_t o = y0 + v * kstride;
      store_run<T, CB, RELU, SQRT>(tile + v, kv, y + o, res ? res + o : nullptr, qstride, np, ep.eps);
    }
  }
}

template <typename T>
using StoreFn = void (*)(const T*, int, int, int, T*, int64_t, int64_t, int64_t, const Epilogue<T>&);

template <typename T, Combine CB>
StoreFn<T> store_fn_of(bool relu, bool sqrt) {
  if (sqrt) return relu ? &store_tile_t<T, CB, true, true> : &store_tile_t<T, CB, false, true>;
  return relu ? &store_tile_t<T, CB, true, false> : &store_tile_t<T, CB, false, false>;
}

template <typename T>
StoreFn<T> store_fn(const Epilogue<T>& ep) {
  switch (ep.combine) {
    case Combine::kAdd: return store_fn_of<T, Combine::kAdd>(ep.relu, false);
    case Combine::kSort: return store_fn_of<T, Combine::kSort>(ep.relu, ep.sort_mode == SortMode::kSqrt);
    default: return store_fn_of<T, Combine::kNone>(ep.relu, false);
  }
}

// The epilogue with non-temporal output stores turned on when the output is much larger than the
// caches (the next layer reads it from memory either way; filling it through the cache would first
// read every line in).
constexpr int64_t kStreamOutBytes = int64_t(24) << 20;
template <typename T>
Epilogue<T> streamed(const Epilogue<T>& ep, const Tensor4& Y) {
  Epilogue<T> e = ep;
  e.stream = Y.n * Y.c * Y.h * Y.w * int64_t(sizeof(T)) >= kStreamOutBytes;
  return e;
}

// Finishes one output row of Q pixels held as [q][kv] in rb (kvalid channels from k0): the affine
// part of the epilogue in place, then the store at y0, through a transpose into rowt ([kv][Q]) for
// NCHW output so every channel is stored as one contiguous run.
template <typename T>
void finish_row(T* rb, T* rowt, int64_t Q, int kv, int kvalid, int64_t k0, const EpilogueTables<T>& tab,
                StoreFn<T> store, const Epilogue<T>& ep, const MicroKernel<T>& mk, T* y, const Tensor4& Y, int64_t y0) {
  if (tab.affine)
    for (int64_t q = 0; q < Q; ++q)
      for (int v = 0; v < kvalid; ++v) rb[q * kv + v] = rb[q * kv + v] * tab.alpha[k0 + v] + tab.beta[k0 + v];
  if (Y.sc != 1) {
    mk.transpose(rb, Q, kvalid, kv, rowt, Q);
    store(rowt, static_cast<int>(Q), kvalid, static_cast<int>(Q), y, y0, Y.sc, Y.sw, ep);
  } else {
    store(rb, kv, static_cast<int>(Q), kvalid, y, y0, Y.sw, Y.sc, ep);
  }
}

// ------------------------------------------------------------------------------------------ forward
// Input channels are split into blocks whose [r][s][c-block][kv] weight sub-panel fits in L1 beside
// the row being computed; the micro-kernel then accumulates block after block into the row buffer.
inline int64_t channel_block(int64_t Cg, int64_t R, int64_t S, int kv, int64_t elem) {
  const int64_t budget = 160 << 10;
  const int64_t blocks = ceil_div(R * S * Cg * kv * elem, budget);
  return ceil_div(Cg, blocks);
}

// Packed weights: [g][kb][c-block][r][s][c][kv] with wf(g, kk, c, r, s) giving the weight of group g,
// output channel kk within the group, input channel c within the group; zero beyond Kg. Filled in
// tiles of a few input channels x kv output channels x all taps (about 16 KB, in L1): each source
// row is read in runs over (c, r, s) and each destination line is finished while it is cached; a
// plain [r][s][c][kv] walk instead gathers every value from kv different source rows.
template <typename T, typename F>
void pack_weights(T* out, int64_t G, int64_t Kg, int64_t Cg, int64_t R, int64_t S, int kv, int64_t cblk, F wf) {
  const int64_t KB = ceil_div(Kg, kv), RS = R * S;
  const int64_t csub = std::max<int64_t>(1, (16 << 10) / (kv * RS * int64_t(sizeof(T))));
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t g = 0; g < G; ++g)
    for (int64_t kb = 0; kb < KB; ++kb) {
      T* panel = out + (g * KB + kb) * RS * Cg * kv;
      for (int64_t c0 = 0; c0 < Cg; c0 += cblk) {
        const int64_t clen = std::min(cblk, Cg - c0);
        T* o = panel + RS * c0 * kv;  // this block: [r][s][c - c0][kv]
        for (int64_t cs = c0; cs < c0 + clen; cs += csub) {
          const int64_t ce = std::min(c0 + clen, cs + csub);
          for (int v = 0; v < kv; ++v) {
            const int64_t kk = kb * kv + v;
            for (int64_t c = cs; c < ce; ++c)
              for (int64_t r = 0; r < R; ++r)
                for (int64_t s = 0; s < S; ++s)
                  o[((r * S + s) * clen + (c - c0)) * kv + v] = kk < Kg ? wf(g, kk, c, r, s) : T(0);
          }
        }
      }
    }
}

// pack_weights for weights stored with strides (sn, sc, sh, sw) (the forward's), through 8x8 register
// transposes: channels-last weights (sc == 1) are transposed straight into each [c][kv] run of a tap;
// NCHW weights ((c, r, s) contiguous) are transposed a few channels at a time into an L1 buffer of
// [(c, r, s)][kv] rows that are then dealt out to their taps. Other strides take pack_weights.
template <typename T>
void pack_weights_strided(T* out, int64_t G, int64_t Kg, int64_t Cg, int64_t R, int64_t S, const MicroKernel<T>& mk,
                          int64_t cblk, const T* w, const Tensor4& W) {
  const int kv = mk.kv;
  const int64_t KB = ceil_div(Kg, kv), RS = R * S;
  const bool cl = W.sc == 1, nchw = W.sw == 1 && W.sh == S && W.sc == RS;
  if (!cl && !nchw) {
    pack_weights(out, G, Kg, Cg, R, S, kv, cblk, [&](int64_t g, int64_t kk, int64_t c, int64_t r, int64_t s) {
      return w[(g * Kg + kk) * W.sn + c * W.sc + r * W.sh + s * W.sw];
    });
    return;
  }
  const int64_t csub = std::max<int64_t>(1, (16 << 10) / (kv * RS * int64_t(sizeof(T))));
#pragma omp parallel
  {
    Buffer<T> tmp(nchw ? csub * RS * kv : 0);
#pragma omp for collapse(2) schedule(static)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t kb = 0; kb < KB; ++kb) {
        T* panel = out + (g * KB + kb) * RS * Cg * kv;
        const int64_t kvalid = std::min<int64_t>(kv, Kg - kb * kv);
        if (kvalid < kv) std::memset(panel, 0, sizeof(T) * RS * Cg * kv);
        const T* wk = w + (g * Kg + kb * kv) * W.sn;
        for (int64_t c0 = 0; c0 < Cg; c0 += cblk) {
          const int64_t clen = std::min(cblk, Cg - c0);
          T* o = panel + RS * c0 * kv;  // [r][s][c - c0][kv]
          if (cl) {
            for (int64_t r = 0; r < R; ++r)
              for (int64_t s = 0; s < S; ++s)
                mk.transpose(wk + r * W.sh + s * W.sw + c0, kvalid, clen, W.sn, o + (r * S + s) * clen * kv, kv);
            continue;
          }
          for (int64_t cs = c0; cs < c0 + clen; cs += csub) {
            const int64_t n = std::min(csub, c0 + clen - cs);
            mk.transpose(wk + cs * RS, kvalid, n * RS, W.sn, tmp.get(), kv);  // tmp[(c - cs) * RS + rs][v]
            for (int64_t c = 0; c < n; ++c)
              for (int64_t rs = 0; rs < RS; ++rs)
                std::memcpy(o + (rs * clen + cs - c0 + c) * kv, tmp.get() + (c * RS + rs) * kv, sizeof(T) * kvalid);
          }
        }
      }
  }
}

// The forward convolution with weights already packed (pack_weights / pack_weights_strided with
// channel_block's blocks); shared by conv2d_fwd and the stride-1 bwd_input.
template <typename T>
void conv_with(const Conv2dParams& p, const T* x, const T* wpack, T* y, const Epilogue<T>& ep,
               const MicroKernel<T>& mk) {
  const Tensor4 &X = p.x, &Y = p.y;
  const int64_t N = X.n, C = X.c, G = p.groups, Cg = C / G, K = Y.c, Kg = K / G;
  const int64_t R = p.w.h, S = p.w.w, P = Y.h, Q = Y.w;
  const int kv = mk.kv, mp = mk.mp;
  const int64_t KB = ceil_div(Kg, kv);
  const int64_t cblk = channel_block(Cg, R, S, kv, sizeof(T)), ncb = ceil_div(Cg, cblk);
  const int64_t panel = R * S * Cg * kv;
  // Task order: when all packed weights fit in L2 walk pixels outermost (input read once);
  // otherwise walk weight panels outermost so each panel stays in L2 across all pixel rows.
  const bool weights_outer = G * KB * panel * static_cast<int64_t>(sizeof(T)) > (256 << 10);
  const Padded pd{(P - 1) * p.stride_h + (R - 1) * p.dil_h + 1, (Q - 1) * p.stride_w + (S - 1) * p.dil_w + 1, C};
  Buffer<T> xstore;
  const TapRows<T> taprows(X, x, p.pad_h0, p.pad_w0, p.stride_h, p.dil_h, R, pd, xstore, weights_outer);
  // With one group and no horizontal dilation the S taps of a kernel row are S*C consecutive
  // values of the padded copy (matching the packed [r][s][c] order): one long reduction per row.
  const bool merge_s = p.dil_w == 1 && G == 1 && ncb == 1;
  const int64_t nseg = merge_s ? R : R * S;
  std::vector<int64_t> seg(nseg);
  for (int64_t i = 0; i < nseg; ++i)
    seg[i] = merge_s ? i * taprows.pitch() : (i / S) * taprows.pitch() + (i % S) * p.dil_w * C;
  EpilogueTables<T> tab(ep, K);
  const StoreFn<T> store = store_fn(ep);
  const Epilogue<T> ep_out = streamed(ep, Y);
  const int64_t rows = N * P, cols = G * KB;
  const RowTiles tiles(Q, mp);
  // Dynamic chunks of about one output row each: the cores are shared, and a static split makes the
  // whole call wait for whichever thread the OS parked.
  const int64_t chunk = weights_outer ? std::max<int64_t>(1, rows / 16) : cols;
  // Tiles of one output row land in a [Q][kv] row buffer; the epilogue then runs on the L1-hot row,
  // transposed first when the output is NCHW so every channel is stored as one contiguous run.
  const bool nchw_out = Y.sc != 1;
#pragma omp parallel
  {
    Buffer<T> rowbuf(Q * kv), rowt(nchw_out ? Q * kv : 0), xrows(taprows.buffer_size());
    int64_t last = -1;
#pragma omp for schedule(dynamic, chunk)
    for (int64_t task = 0; task < rows * cols; ++task) {
      const int64_t row = weights_outer ? task % rows : task / cols;
      const int64_t col = weights_outer ? task / rows : task % cols;
      const int64_t n = row / P, pr = row % P, g = col / KB, kb = col % KB;
      const int64_t k0 = g * Kg + kb * kv;
      const int kvalid = static_cast<int>(std::min<int64_t>(kv, Kg - kb * kv));
      const T* arow = taprows.get(n, pr, xrows.get(), last) + g * Cg;
      T* rb = rowbuf.get();
      for (int64_t c0 = 0; c0 < Cg; c0 += cblk) {
        const int64_t clen = std::min(cblk, Cg - c0);
        for (int64_t t = 0; t < tiles.count; ++t) {
          const int64_t q0 = tiles.start(t);
          TileArgs<T> ta{arow + q0 * p.stride_w * C + c0, p.stride_w * C, 1, seg.data(), nseg,
                         merge_s ? S * Cg : clen, wpack + col * panel + R * S * c0 * kv, rb + q0 * kv,
                         tiles.np(t), c0 > 0};
          mk.fn(ta);
        }
      }
      finish_row(rb, rowt.get(), Q, kv, kvalid, k0, tab, store, ep_out, mk, y, Y, n * Y.sn + k0 * Y.sc + pr * Y.sh);
    }
    if (ep_out.stream) stream_fence();
  }
}

// ---------------------------------------------------------------------------------------- pointwise
// 1x1 convolutions without padding or groups are GEMMs over pixels.
inline bool is_pointwise(const Conv2dParams& p) {
  return p.groups == 1 && p.w.h == 1 && p.w.w == 1 && p.pad_h0 == 0 && p.pad_w0 == 0;
}
inline int64_t Kg_of(const Conv2dParams& p) { return p.w.n / p.groups; }

// NCHW output: per image Y (K x PQ) = W (K x C) X (C x PQ). Rows of the micro-kernel are output
// channels (weights broadcast from W's rows), columns are kv pixels of X packed as [c][kv] panels
// (a gather that also applies the stride and any input layout), so no transposes are needed and
// each finished tile is stored as kv contiguous pixels of np output planes. Tasks take a block of
// output channels whose weights stay in L2 across the panels they visit.
template <typename T>
void pointwise_nchw(const Conv2dParams& p, const T* x, const T* w, T* y, const Epilogue<T>& ep,
                    const MicroKernel<T>& mk) {
  const Tensor4 &X = p.x, &Y = p.y, &W = p.w;
  const int64_t N = X.n, C = X.c, K = Y.c, Q = Y.w, PQ = Y.h * Y.w;
  const int kv = mk.kv, mp = mk.mp;
  const int64_t JB = ceil_div(PQ, kv), plen = C * kv;
  // Dense planes: full 16-pixel panels are read in place (b_t = the plane stride); only each image's
  // last, partial panel is packed (zero-padded). Other layouts, strides and plane sizes gather
  // every panel.
  const bool dense = p.stride_h == 1 && p.stride_w == 1 && X.sw == 1 && X.sh == X.w;  // pixel j at x[j]
  // In place only when every channel plane starts on a run boundary (each run then covers whole
  // cache lines); 14x14 planes, for one, would split every run across two lines.
  const bool direct_ok = dense && X.sc % kv == 0;
  const bool tail = PQ % kv != 0;
  const int64_t packed_per_image = direct_ok ? (tail ? 1 : 0) : JB, first_packed = JB - packed_per_image;
  Buffer<T> bstore(std::max<int64_t>(1, N * packed_per_image * plen));
  T* bp = bstore.get();
  // Each task reads whole input rows (one channel's pixels) once and deals them out to the packed
  // panels of its image: sequential reads instead of one pass per panel.
  const int64_t cgrp = std::max<int64_t>(1, std::min<int64_t>(C, 64));
  if (packed_per_image > 0) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c0 = 0; c0 < C; c0 += cgrp) {
        const T* xn = x + n * X.sn;
        for (int64_t c = c0; c < std::min(C, c0 + cgrp); ++c) {
          const T* __restrict xc = xn + c * X.sc;
          for (int64_t jb = first_packed; jb < JB; ++jb) {
            T* __restrict o = bp + (n * packed_per_image + jb - first_packed) * plen + c * kv;
            const int64_t j0 = jb * kv, cnt = std::min<int64_t>(kv, PQ - j0);
            if (dense) {
              for (int64_t v = 0; v < cnt; ++v) o[v] = xc[j0 + v];
            } else {
              for (int64_t v = 0; v < cnt; ++v) {
                const int64_t j = j0 + v;
                o[v] = xc[(j / Q) * p.stride_h * X.sh + (j % Q) * p.stride_w * X.sw];
              }
            }
            for (int64_t v = cnt; v < kv; ++v) o[v] = T(0);
          }
        }
      }
  }
  // Output-channel blocks of about 192 KB of weights (a multiple of the tile height) stay in L2;
  // the reduction runs in slices of kc channels so a panel's slice (16 KB) stays in L1 across the
  // block's tiles, partial sums accumulating in the block's tile buffer.
  const int64_t kblk = std::min(K, std::max<int64_t>(mp, (192 << 10) / (C * int64_t(sizeof(T))) / mp * mp));
  const int64_t nkb = ceil_div(K, kblk);
  const int64_t kc = std::max<int64_t>(16, (16 << 10) / (kv * int64_t(sizeof(T))));
  // A task computes a group of consecutive panels (about 128 pixels) into one [rows][group] buffer,
  // so each output channel is stored (and its residual read) as one run of the group's pixels
  // rather than as 16-pixel runs each on its own page.
  const int64_t gp = std::min<int64_t>(JB, std::max(1, 128 / kv)), ngrp = ceil_div(JB, gp), ldc = gp * kv;
  EpilogueTables<T> tab(ep, K);
  const StoreFn<T> store = store_fn(ep);
  const Epilogue<T> ep_out = streamed(ep, Y);
  const int64_t seg0 = 0;
#pragma omp parallel
  {
    Buffer<T> tbuf(kblk * ldc);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < nkb * N * ngrp; ++task) {
      const int64_t kb = task / (N * ngrp), n = task / ngrp % N, jg = task % ngrp;
      const int64_t jb0 = jg * gp, jb1 = std::min(JB, jb0 + gp), j0 = jb0 * kv;
      const int cnt = static_cast<int>(std::min<int64_t>(jb1 * kv, PQ) - j0);
      const int64_t kfirst = kb * kblk, k1 = std::min(K, kfirst + kblk);
      T* tb = tbuf.get();
      for (int64_t jb = jb0; jb < jb1; ++jb)
        for (int64_t c0 = 0; c0 < C; c0 += kc) {
          const int64_t clen = std::min(kc, C - c0);
          const bool direct = jb < first_packed;
          const T* b = direct ? x + n * X.sn + c0 * X.sc + jb * kv
                              : bp + (n * packed_per_image + jb - first_packed) * plen + c0 * kv;
          for (int64_t k0 = kfirst; k0 < k1; k0 += mp)
            mk.fn(TileArgs<T>{w + k0 * W.sn + c0 * W.sc, W.sn, W.sc, &seg0, 1, clen, b,
                              tb + (k0 - kfirst) * ldc + (jb - jb0) * kv, static_cast<int>(std::min<int64_t>(mp, k1 - k0)),
                              c0 > 0, direct ? X.sc : 0, ldc});
        }
      const int64_t rows = k1 - kfirst;
      if (tab.affine)
        for (int64_t i = 0; i < rows; ++i)
          for (int v = 0; v < cnt; ++v)
            tb[i * ldc + v] = tb[i * ldc + v] * tab.alpha[kfirst + i] + tab.beta[kfirst + i];
      store(tb, static_cast<int>(ldc), static_cast<int>(rows), cnt, y, n * Y.sn + kfirst * Y.sc + j0, Y.sc, 1, ep_out);
    }
    if (ep_out.stream) stream_fence();
  }
}

// A stride-1 pointwise convolution of dense channels_last tensors is one GEMM over all N*H*W pixels:
// the same conv on a (1, C, M / L, L) view with rows of L pixels (L a divisor of M near a few tiles'
// worth), so small images still give full register tiles and few, larger tasks. Returns p unchanged
// when the tensors are not dense channels_last or M has no such divisor.
inline Conv2dParams flat_pointwise_cl(const Conv2dParams& p) {
  const Tensor4 &X = p.x, &Y = p.y;
  const int64_t M = X.n * X.h * X.w;
  const bool dense = X.sc == 1 && X.sw == X.c && X.sh == X.w * X.c && X.sn == X.h * X.w * X.c && Y.sc == 1 &&
                     Y.sw == Y.c && Y.sh == Y.w * Y.c && Y.sn == Y.h * Y.w * Y.c;
  if (!dense || X.c == 1) return p;
  int64_t L = M <= 96 ? M : 0;
  for (int64_t l = 96; !L && l >= 24; --l)
    if (M % l == 0) L = l;
  if (!L || L == X.w) return p;
  Conv2dParams f = p;
  f.x = Tensor4{1, X.c, M / L, L, M * X.c, 1, L * X.c, X.c};
  f.y = Tensor4{1, Y.c, M / L, L, M * Y.c, 1, L * Y.c, Y.c};
  return f;
}

// ----------------------------------------------------------------------------------------- winograd
// Winograd F(4x4, 3x3) for 3x3 stride-1 float32 convolutions: each 4x4 output tile is A^T [U . V] A
// with V = B^T d B the transform of its 6x6 input tile and U = G g G^T of the weights, so the
// 36 * 16 multiplications of a direct tile become 36 per (input, output) channel pair: 4x fewer.
// For each of the 36 points xi, M[xi] (tiles x K) = V[xi] (tiles x C) U[xi] (C x K) is a GEMM the
// micro-kernel runs as it runs a 1x1 convolution. Tasks own a block of about 32 tiles (whole rows
// of tiles, across images for small images) and a group of output-channel panels: they transform
// the block's inputs once (shared when several groups use them), then per kv-wide panel run the 36
// GEMMs into an L2-sized M and transform it back into four output rows, which get the epilogue and
// are stored as the direct path stores its rows. Rounding: about 1e-5 of the output scale at C = 512,
// against 1e-6 for the direct sum (checked against the float64 reference in the tests).
constexpr int kWinoPoints = 36;

struct WinoFns {
  void (*input)(const float*, int64_t, int64_t, int64_t, float*, int64_t);
  void (*output)(const float*, int64_t, float*, int64_t, int64_t);
  void (*weight)(const float*, int64_t, int64_t, float*, int64_t);
  void (*dy)(const float*, int64_t, int64_t, int64_t, float*, int64_t);
  void (*wgrad_output)(const float*, int64_t, float*);
};

#define FASTCONV_WINO_FNS(ns)                                                                                   \
  WinoFns { &ns::wino_input_f32, &ns::wino_output_f32, &ns::wino_weight_f32, &ns::wino_dy_f32,                 \
            &ns::wino_wgrad_output_f32 }
WinoFns wino_fns() {
  switch (cpu_isa()) {
    case Isa::kAvx512: return FASTCONV_WINO_FNS(avx512);
    case Isa::kAvx2: return FASTCONV_WINO_FNS(avx2);
    default: return FASTCONV_WINO_FNS(portable);
  }
}
#undef FASTCONV_WINO_FNS

// Where Winograd pays. Per (input, output) channel pair it saves 9·N·P·Q - 36·tiles multiply-adds
// (tiles overhang the output when P or Q is not a multiple of 4) and costs one weight transform (36
// values written and read back, or read from the packed-weight cache). Measured on the r50/AlexNet
// 3x3 layers at batch 1 and 8 (AVX2): r50 l3 and AlexNet conv3-5 at batch 1 (about 950-1200 saved)
// gain with cached weights and break even without; r50 l4 at batch 1 (about 300, 38 MB of
// transformed weights per call) loses either way. The choice depends on the geometry alone, not on
// whether the weights are cached, so registering a model's weights never changes its numerics.
template <typename T>
bool winograd_path(const Conv2dParams&) {
  return false;
}

template <>
bool winograd_path<float>(const Conv2dParams& p) {
  if (!(cpu_winograd() && p.groups == 1 && p.w.h == 3 && p.w.w == 3 && p.stride_h == 1 && p.stride_w == 1 &&
        p.dil_h == 1 && p.dil_w == 1 && p.pad_h0 >= 0 && p.pad_w0 >= 0 && p.x.c >= 16 && p.y.c >= 16 &&
        p.y.h >= 4 && p.y.w >= 4))
    return false;
  const int64_t tiles = p.y.n * ceil_div(p.y.h, 4) * ceil_div(p.y.w, 4);
  return 9 * p.y.n * p.y.h * p.y.w - kWinoPoints * tiles >= 900;
}

// U as [xi][kb][c][kv] (zero beyond K), from weights with strides W (any sign).
inline int64_t wino_packed_size(const Conv2dParams& p, int kv) {
  return kWinoPoints * ceil_div(p.w.n, kv) * p.w.c * kv;
}

// The 6x6 input tiles of a Winograd layer (tile (n, th, tw) starts at input row 4 th - pad_h0 and
// column 4 tw - pad_w0): a channels-last input is read in place, tiles that reach into the padding
// through a zero-filled staging tile; other layouts are first copied into a zero-padded channels-last
// buffer covering every tile (4 TH + 2 rows of 4 TW + 2 pixels).
struct WinoTiles {
  const Tensor4& X;
  const float* x;
  int64_t ph0, pw0;
  bool in_place;
  Padded pd;
  Buffer<float> store;
  const float* xp;
  WinoTiles(const Conv2dParams& p, const float* x_, int64_t TH, int64_t TW)
      : X(p.x), x(x_), ph0(p.pad_h0), pw0(p.pad_w0), in_place(p.x.sc == 1 && p.x.sw == p.x.c),
        pd{4 * TH + 2, 4 * TW + 2, p.x.c}, xp(in_place ? nullptr : pad_channels_last(X, x_, ph0, pw0, pd, store)) {}
  int64_t stage_size() const { return in_place ? 36 * X.c : 0; }
  // v[xi * vs + c] = (B^T d B)[xi] of tile (n, th, tw) for every channel c; stage: stage_size() floats.
  void transform(const WinoFns& f, int64_t n, int64_t th, int64_t tw, float* v, int64_t vs, float* stage) const {
    const int64_t C = X.c;
    if (!in_place) return f.input(xp + n * pd.sn() + 4 * th * pd.sh() + 4 * tw * C, pd.sh(), C, C, v, vs);
    const int64_t h0 = 4 * th - ph0, w0 = 4 * tw - pw0;
    const float* xn = x + n * X.sn;
    if (h0 >= 0 && h0 + 6 <= X.h && w0 >= 0 && w0 + 6 <= X.w) return f.input(xn + h0 * X.sh + w0 * X.sw, X.sh, X.sw, C, v, vs);
    for (int64_t i = 0; i < 6; ++i)
      for (int64_t j = 0; j < 6; ++j) {
        float* o = stage + (i * 6 + j) * C;
        const int64_t h = h0 + i, w = w0 + j;
        if (h >= 0 && h < X.h && w >= 0 && w < X.w)
          std::memcpy(o, xn + h * X.sh + w * X.sw, sizeof(float) * C);
        else
          std::memset(o, 0, sizeof(float) * C);
      }
    f.input(stage, 6 * C, C, C, v, vs);
  }
};

// Each task transforms kv output channels x up to 16 input channels: their taps are first brought
// into an L1 panel g[c][r][s][kv] (zero beyond K) by 8x8 register transposes where the layout
// allows (taps contiguous, forward or flipped; or channels contiguous), read in place when the kv
// output channels are themselves contiguous (bwd_input of channels-last weights).
void wino_pack(const Conv2dParams& p, const float* w, float* u, const MicroKernel<float>& mk) {
  const Tensor4& W = p.w;
  const int kv = mk.kv;
  const int64_t K = W.n, C = W.c, KB = ceil_div(K, kv), us = KB * C * kv, cch = 16, CC = ceil_div(C, cch);
  const WinoFns f = wino_fns();
  const bool taps_rows = std::abs(W.sw) == 1 && std::abs(W.sh) == 3;  // the 9 taps contiguous in memory
  const int64_t tap_lo = (W.sh < 0 ? 2 * W.sh : 0) + (W.sw < 0 ? 2 * W.sw : 0);  // lowest tap's offset
#pragma omp parallel
  {
    Buffer<float> panel(cch * 9 * kv);
    float* g = panel.get();
#pragma omp for collapse(2) schedule(static)
    for (int64_t kb = 0; kb < KB; ++kb)
      for (int64_t cc = 0; cc < CC; ++cc) {
        const int64_t c0 = cc * cch, nc = std::min(cch, C - c0);
        const int kvalid = static_cast<int>(std::min<int64_t>(kv, K - kb * kv));
        const float* wk = w + kb * kv * W.sn + c0 * W.sc;
        float* uo = u + (kb * C + c0) * kv;
        if (W.sn == 1 && kvalid == kv) {  // kv output channels contiguous: vector loads as they are
          for (int64_t c = 0; c < nc; ++c) f.weight(wk + c * W.sc, W.sh, W.sw, uo + c * kv, us);
          continue;
        }
        if (kvalid < kv) std::memset(g, 0, sizeof(float) * nc * 9 * kv);
        if (taps_rows) {  // per channel: kv rows of 9 taps -> g[c][tap in memory order][kv]
          for (int64_t c = 0; c < nc; ++c) mk.transpose(wk + c * W.sc + tap_lo, kvalid, 9, W.sn, g + c * 9 * kv, kv);
          for (int64_t c = 0; c < nc; ++c)
            f.weight(g + (c * 9 - tap_lo) * kv, W.sh * kv, W.sw * kv, uo + c * kv, us);
          continue;
        }
        if (W.sc == 1) {  // per tap: kv rows of nc channels -> g[c][r][s][kv]
          for (int64_t rs = 0; rs < 9; ++rs)
            mk.transpose(wk + (rs / 3) * W.sh + (rs % 3) * W.sw, kvalid, nc, W.sn, g + rs * kv, 9 * kv);
        } else {
          for (int64_t c = 0; c < nc; ++c)
            for (int64_t rs = 0; rs < 9; ++rs)
              for (int v = 0; v < kvalid; ++v) g[(c * 9 + rs) * kv + v] = wk[v * W.sn + c * W.sc + (rs / 3) * W.sh + (rs % 3) * W.sw];
        }
        for (int64_t c = 0; c < nc; ++c) f.weight(g + c * 9 * kv, 3 * kv, kv, uo + c * kv, us);
      }
  }
}

// True if the n values at v are all finite.
template <typename T>
bool all_finite(const T* v, int64_t n) {
  int bad = 0;
#pragma omp simd reduction(| : bad)
  for (int64_t i = 0; i < n; ++i) bad |= !(std::abs(v[i]) <= std::numeric_limits<T>::max());
  return !bad;
}

// True if every weight is finite (the K x C x R x S tensor W at w, any strides).
template <typename T>
bool weights_finite(const Tensor4& W, const T* w) {
  const int64_t n = W.n * W.c * W.h * W.w;
  if (W.sn > 0 && W.sc > 0 && W.sh > 0 && W.sw > 0 &&
      (W.n - 1) * W.sn + (W.c - 1) * W.sc + (W.h - 1) * W.sh + (W.w - 1) * W.sw + 1 == n)
    return all_finite(w, n);  // dense in some order: one vector pass
  int bad = 0;
  for (int64_t k = 0; k < W.n; ++k)
    for (int64_t c = 0; c < W.c; ++c)
      for (int64_t r = 0; r < W.h; ++r)
        for (int64_t s = 0; s < W.w; ++s)
          bad |= !(std::abs(w[k * W.sn + c * W.sc + r * W.sh + s * W.sw]) <= std::numeric_limits<T>::max());
  return !bad;
}

// Special values. Winograd's transforms mix a tile's values before multiplying (a NaN or infinity in
// the input or the weights spreads over whole tiles and output channels, inf - inf turns into NaN)
// and grow intermediate sums by up to ~1e4 (finite results near FLT_MAX overflow). Every such case
// leaves a non-finite value in the raw (pre-epilogue) results, which the output transforms check
// while they are in L1: both Winograd drivers return false then, and the caller recomputes the layer
// on the direct path, whose results are torch's. Finite data never pays more than that check.
bool winograd_fwd(const Conv2dParams& p, const float* x, const float* u, float* y, const Epilogue<float>& ep,
                  const MicroKernel<float>& mk) {
  const Tensor4 &X = p.x, &Y = p.y;
  const int64_t C = X.c, K = Y.c, P = Y.h, Q = Y.w;
  const int kv = mk.kv;
  const WinoFns f = wino_fns();
  const int64_t KB = ceil_div(K, kv);
  const int64_t TH = ceil_div(P, 4), TW = ceil_div(Q, 4), trows = X.n * TH, Q4 = 4 * TW;
  const WinoTiles in(p, x, TH, TW);
  // Blocks of whole tile rows, about 32 tiles each, balanced.
  int64_t rpb = std::min(trows, std::max<int64_t>(1, ceil_div(32, TW)));
  const int64_t nblk = ceil_div(trows, rpb);
  rpb = ceil_div(trows, nblk);
  const int64_t tb = rpb * TW, vsize = kWinoPoints * tb * C;
  // Output-channel panels split into groups when there are too few blocks to keep every thread busy.
  const int64_t want = 3 * static_cast<int64_t>(omp_get_max_threads());
  const int64_t kper = ceil_div(KB, std::min(KB, ceil_div(want, nblk)));
  const int64_t kgroups = ceil_div(KB, kper);
  const bool shared = kgroups > 1;
  Buffer<float> vall(shared ? nblk * vsize : 0);
  const int64_t kc = 256;  // reduction slice: a [kc][kv] panel of U stays in L1 across the block's tiles
  EpilogueTables<float> tab(ep, K);
  const StoreFn<float> store = store_fn(ep);
  const Epilogue<float> ep_out = streamed(ep, Y);
  const int64_t seg0 = 0;
  auto transform_block = [&](int64_t blk, float* v, float* stage) {
    for (int64_t tr = blk * rpb; tr < std::min(trows, (blk + 1) * rpb); ++tr)
      for (int64_t tw = 0; tw < TW; ++tw)
        in.transform(f, tr / TH, tr % TH, tw, v + ((tr - blk * rpb) * TW + tw) * C, tb * C, stage);
  };
  int bad = 0;
#pragma omp parallel reduction(| : bad)
  {
    Buffer<float> vloc(shared ? 0 : vsize), mbuf(kWinoPoints * tb * kv), rows4(4 * Q4 * kv),
        rowt(Y.sc != 1 ? Q * kv : 0), stage(in.stage_size());
    if (shared) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t blk = 0; blk < nblk; ++blk) transform_block(blk, vall.get() + blk * vsize, stage.get());
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < nblk * kgroups; ++task) {
      const int64_t blk = task / kgroups, kg = task % kgroups;
      const int64_t tr0 = blk * rpb, ntr = std::min(trows, tr0 + rpb) - tr0, nt = ntr * TW;
      float* v = shared ? vall.get() + blk * vsize : vloc.get();
      if (!shared) transform_block(blk, v, stage.get());
      const RowTiles tiles(nt, mk.mp);
      float* m = mbuf.get();
      for (int64_t kb = kg * kper; kb < std::min(KB, (kg + 1) * kper); ++kb) {
        const int64_t k0 = kb * kv;
        const int kvalid = static_cast<int>(std::min<int64_t>(kv, K - k0));
        for (int xi = 0; xi < kWinoPoints; ++xi)
          for (int64_t c0 = 0; c0 < C; c0 += kc) {
            const float* b = u + ((xi * KB + kb) * C + c0) * kv;
            for (int64_t t = 0; t < tiles.count; ++t) {
              const int64_t t0 = tiles.start(t);
              mk.fn(TileArgs<float>{v + (xi * tb + t0) * C + c0, C, 1, &seg0, 1, std::min(kc, C - c0), b,
                                    m + (xi * tb + t0) * kv, tiles.np(t), c0 > 0});
            }
          }
        for (int64_t r = 0; r < ntr; ++r) {
          const int64_t n = (tr0 + r) / TH, th = (tr0 + r) % TH;
          for (int64_t tw = 0; tw < TW; ++tw)
            f.output(m + (r * TW + tw) * kv, tb * kv, rows4.get() + 4 * tw * kv, Q4 * kv, kv);
          for (int64_t i = 0; i < std::min<int64_t>(4, P - 4 * th); ++i) {
            bad |= !all_finite(rows4.get() + i * Q4 * kv, Q * kv);
            finish_row(rows4.get() + i * Q4 * kv, rowt.get(), Q, kv, kvalid, k0, tab, store, ep_out, mk, y, Y,
                       n * Y.sn + k0 * Y.sc + (4 * th + i) * Y.sh);
          }
        }
      }
    }
    if (ep_out.stream) stream_fence();
  }
  return !bad;
}

// The weight gradient of a Winograd layer, F(3x3, 4x4) (the transposed algorithm): over 4x4 tiles of
// dy and the 6x6 input tiles under them, dW = G^T [sum over tiles of (A dy A^T) . (B^T d B)] G, so
// the sum over N·P·Q pixels becomes 36 GEMMs M[xi] (K x C) = D[xi]^T (K x tiles) V[xi] (tiles x C)
// (rows: output channels broadcast from D, columns: kv input channels of V, reduction over tiles),
// then one 6x6 -> 3x3 transform per (k, c). Tiles are processed in chunks whose transforms stay
// within about 16 MB, M accumulating across chunks; tasks own disjoint (xi, channel panel, output
// rows) blocks of M, so nothing is reduced across threads.
bool winograd_bwd_weight(const Conv2dParams& p, const float* dy, const float* x, float* dw,
                         const MicroKernel<float>& mk) {
  const Tensor4 &X = p.x, &W = p.w, &Y = p.y;
  const int64_t C = X.c, K = Y.c, P = Y.h, Q = Y.w;
  const int kv = mk.kv, mp = mk.mp;
  const WinoFns f = wino_fns();
  const int64_t TH = ceil_div(P, 4), TW = ceil_div(Q, 4), T = X.n * TH * TW;
  const int64_t CB = ceil_div(C, kv), Cp = CB * kv;  // V's channels padded to whole panels (zeros)
  const WinoTiles in(p, x, TH, TW);
  const Padded pdy{4 * TH, 4 * TW, K};  // dy tiles: a zero-padded channels-last copy
  Buffer<float> dystore;
  const float* dyp = pad_channels_last(Y, dy, 0, 0, pdy, dystore);
  const int64_t tc = std::max<int64_t>(mp, std::min(T, (int64_t(16) << 20) / (kWinoPoints * (Cp + K) * 4)));
  Buffer<float> vbuf(kWinoPoints * tc * Cp), dbuf(kWinoPoints * tc * K), mbuf(kWinoPoints * K * Cp);
  float *v = vbuf.get(), *d = dbuf.get(), *m = mbuf.get();
  const int64_t kblk = std::max<int64_t>(mp, ceil_div(K, 2) / mp * mp), nkb = ceil_div(K, kblk);
  const int64_t seg0 = 0;
  for (int64_t t0 = 0; t0 < T; t0 += tc) {
    const int64_t nt = std::min(tc, T - t0);
#pragma omp parallel
    {
      Buffer<float> stage(in.stage_size());
#pragma omp for schedule(static)
      for (int64_t t = 0; t < nt; ++t) {
        const int64_t tile = t0 + t, n = tile / (TH * TW), th = tile / TW % TH, tw = tile % TW;
        in.transform(f, n, th, tw, v + t * Cp, tc * Cp, stage.get());
        for (int xi = 0; xi < kWinoPoints && Cp > C; ++xi) std::memset(v + xi * tc * Cp + t * Cp + C, 0, sizeof(float) * (Cp - C));
        f.dy(dyp + n * pdy.sn() + 4 * th * pdy.sh() + 4 * tw * K, pdy.sh(), K, K, d + t * K, tc * K);
      }
    }
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t task = 0; task < kWinoPoints * CB * nkb; ++task) {
      const int64_t xi = task / (CB * nkb), cb = task / nkb % CB, k1 = std::min(K, (task % nkb + 1) * kblk);
      for (int64_t k0 = task % nkb * kblk; k0 < k1; k0 += mp)
        mk.fn(TileArgs<float>{d + xi * tc * K + k0, 1, K, &seg0, 1, nt, v + xi * tc * Cp + cb * kv,
                              m + (xi * K + k0) * Cp + cb * kv, static_cast<int>(std::min<int64_t>(mp, k1 - k0)), t0 > 0,
                              Cp, Cp});
    }
  }
  int bad = 0;
#pragma omp parallel reduction(| : bad)
  {
    alignas(64) float out[9 * 32];  // [r][s][kv], kv <= 32
#pragma omp for collapse(2) schedule(static)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t cb = 0; cb < CB; ++cb) {
        f.wgrad_output(m + k * Cp + cb * kv, K * Cp, out);
        bad |= !all_finite(out, 9 * kv);
        for (int64_t v0 = 0; v0 < std::min<int64_t>(kv, C - cb * kv); ++v0)
          for (int rs = 0; rs < 9; ++rs) dw[k * W.sn + (cb * kv + v0) * W.sc + (rs / 3) * W.sh + (rs % 3) * W.sw] = out[rs * kv + v0];
      }
  }
  return !bad;
}

// ---------------------------------------------------------------------------------------- depthwise
// groups == C: each output channel k reads only input channel k / m. The general path would pad every
// group to a full kv panel (16x the work for m = 1), so these drivers run the channel-vectorized loops
// of conv2d_depthwise.inc over channels-last copies instead.
inline bool is_depthwise(const Conv2dParams& p) {
  return p.groups > 1 && p.groups == p.x.c && p.pad_h0 >= 0 && p.pad_w0 >= 0;
}

template <typename T>
struct DwFns {
  void (*taps)(const DwTaps<T>&);
  void (*reduce)(const DwReduce<T>&);
  bool (*row)(const DwRow<T>&);
  bool (*plane)(const DwPlane<T>&);
  bool (*wgrad)(const DwWgrad<T>&);
};

template <typename T>
DwFns<T> dw_fns();
template <>
DwFns<float> dw_fns<float>() {
  switch (cpu_isa()) {
    case Isa::kAvx512: return {&avx512::dw_taps_f32, &avx512::dw_reduce_f32, &avx512::dw_row_f32, &avx512::dw_plane_f32, &avx512::dw_wgrad_f32};
    case Isa::kAvx2: return {&avx2::dw_taps_f32, &avx2::dw_reduce_f32, &avx2::dw_row_f32, &avx2::dw_plane_f32, &avx2::dw_wgrad_f32};
    default: return {&portable::dw_taps_f32, &portable::dw_reduce_f32, &portable::dw_row_f32, &portable::dw_plane_f32, &portable::dw_wgrad_f32};
  }
}
template <>
DwFns<double> dw_fns<double>() {
  switch (cpu_isa()) {
    case Isa::kAvx512: return {&avx512::dw_taps_f64, &avx512::dw_reduce_f64, &avx512::dw_row_f64, &avx512::dw_plane_f64, &avx512::dw_wgrad_f64};
    case Isa::kAvx2: return {&avx2::dw_taps_f64, &avx2::dw_reduce_f64, &avx2::dw_row_f64, &avx2::dw_plane_f64, &avx2::dw_wgrad_f64};
    default: return {&portable::dw_taps_f64, &portable::dw_reduce_f64, &portable::dw_row_f64, &portable::dw_plane_f64, &portable::dw_wgrad_f64};
  }
}

// Weights as [r][s][k] so a tap's K weights are contiguous.
template <typename T>
std::vector<T> dw_pack(const Tensor4& W, const T* w) {
  std::vector<T> out(W.h * W.w * W.n);
  for (int64_t r = 0; r < W.h; ++r)
    for (int64_t s = 0; s < W.w; ++s)
      for (int64_t k = 0; k < W.n; ++k) out[(r * W.w + s) * W.n + k] = w[k * W.sn + r * W.sh + s * W.sw];
  return out;
}

// Runs DwTaps for K = C*m outputs per pixel from C inputs: one vector pass for m = 1, else one strided
// pass per multiplier index j (output k = c*m + j).
template <typename T>
void dw_taps_mult(const DwFns<T>& f, DwTaps<T> d, int64_t C, int64_t m) {
  if (m == 1) return f.taps(d);
  d.K = C;
  d.b_ks = d.o_ks = m;
  const T* b = d.b;
  T* out = d.out;
  for (int64_t j = 0; j < m; ++j) {
    d.b = b + j;
    d.out = out + j;
    f.taps(d);
  }
}

// Finishes one output row computed into rb ([q][k]): the per-channel affine part, then the store with
// the residual combine and ReLU into y's layout.
template <typename T>
inline void dw_finish_row(T* rb, int64_t Q, int64_t K, const EpilogueTables<T>& tab, const StoreFn<T>& store, T* y,
                          int64_t yoff, const Tensor4& Y, const Epilogue<T>& ep) {
  if (tab.affine)
    for (int64_t q = 0; q < Q; ++q)
      for (int64_t k = 0; k < K; ++k) rb[q * K + k] = rb[q * K + k] * tab.alpha[k] + tab.beta[k];
  store(rb, static_cast<int>(K), static_cast<int>(Q), static_cast<int>(K), y, yoff, Y.sw, Y.sc, ep);
}

// Multiplier 1 and a window dw_row handles: each output row straight from the source, a channels-last
// input in place (taps in the padding skipped), any other layout from one zero-padded channels-last
// copy. Returns false when the case is not covered.
template <typename T>
bool dw_fwd_rows(const Conv2dParams& p, const T* x, const std::vector<T>& wpk, T* y, const Epilogue<T>& ep,
                 const DwFns<T>& f) {
  const Tensor4 &X = p.x, &Y = p.y;
  const int64_t N = X.n, C = X.c, R = p.w.h, S = p.w.w, P = Y.h, Q = Y.w;
  if (Y.c != C || !((R == 3 && S == 3) || (R == 5 && S == 5))) return false;
  const bool in_place = X.sc == 1;
  EpilogueTables<T> tab(ep, C);
  // NCHW planes (unit column strides) without a residual and with rows of at least 16 outputs (the
  // plane kernel's vectors run along a row; 7x7 planes are faster through the channels-last copy):
  // per (image, channel) plane, no transposes.
  if (!in_place && X.sw == 1 && Y.sw == 1 && ep.combine == Combine::kNone && p.stride_w <= 2 && Q >= 16) {
    bool ok = true;
#pragma omp parallel for schedule(dynamic, 1) reduction(&& : ok)
    for (int64_t nc = 0; nc < N * C; ++nc) {
      const int64_t n = nc / C, c = nc % C;
      T wc[25];  // the channel's taps (R, S <= 5 here)
      for (int64_t t = 0; t < R * S; ++t) wc[t] = wpk[t * C + c];
      ok = ok && f.plane(DwPlane<T>{x + n * X.sn + c * X.sc, X.h, X.w, X.sh, wc, R, S, -p.pad_h0, p.stride_h,
                                    p.dil_h, -p.pad_w0, p.stride_w, p.dil_w, P, Q, y + n * Y.sn + c * Y.sc, Y.sh,
                                    tab.affine ? tab.alpha[c] : T(1), tab.affine ? tab.beta[c] : T(0), ep.relu});
    }
    return ok;
  }
  Buffer<T> xstore;
  const Padded pd{(P - 1) * p.stride_h + (R - 1) * p.dil_h + 1, (Q - 1) * p.stride_w + (S - 1) * p.dil_w + 1, C};
  const T* src = in_place ? x : pad_channels_last(X, x, p.pad_h0, p.pad_w0, pd, xstore);
  const int64_t sn = in_place ? X.sn : pd.sn(), xsh = in_place ? X.sh : pd.sh(), xsw = in_place ? X.sw : C;
  const int64_t H = in_place ? X.h : pd.hp, W = in_place ? X.w : pd.wp;
  const int64_t ph = in_place ? p.pad_h0 : 0, pw = in_place ? p.pad_w0 : 0;
  const StoreFn<T> store = store_fn(ep);
  const bool direct = Y.sc == 1 && !tab.affine && ep.combine == Combine::kNone && !ep.relu;
#pragma omp parallel
  {
    Buffer<T> rowbuf(direct ? 0 : Q * C);
#pragma omp for schedule(dynamic, 1)
    for (int64_t row = 0; row < N * P; ++row) {
      const int64_t n = row / P, pr = row % P;
      T* out = direct ? y + n * Y.sn + pr * Y.sh : rowbuf.get();
      f.row(DwRow<T>{DwSrc<T>{src + n * sn, H, W, xsh, xsw, R, S, C, pr * p.stride_h - ph, p.dil_h, -pw,
                              p.stride_w, p.dil_w, Q},
                     wpk.data(), out, direct ? Y.sw : C});
      if (!direct) dw_finish_row(out, Q, C, tab, store, y, n * Y.sn + pr * Y.sh, Y, ep);
    }
  }
  return true;
}

template <typename T>
void dw_fwd(const Conv2dParams& p, const T* x, const T* w, T* y, const Epilogue<T>& ep) {
  const Tensor4 &X = p.x, &Y = p.y;
  const int64_t N = X.n, C = X.c, K = Y.c, m = K / C, R = p.w.h, S = p.w.w, P = Y.h, Q = Y.w;
  const DwFns<T> f = dw_fns<T>();
  const std::vector<T> wpk = dw_pack(p.w, w);
  if (dw_fwd_rows(p, x, wpk, y, ep, f)) return;
  const Padded pd{(P - 1) * p.stride_h + (R - 1) * p.dil_h + 1, (Q - 1) * p.stride_w + (S - 1) * p.dil_w + 1, C};
  Buffer<T> xstore;
  const TapRows<T> taprows(X, x, p.pad_h0, p.pad_w0, p.stride_h, p.dil_h, R, pd, xstore);
  std::vector<int64_t> aoff(R * S), boff(R * S);
  for (int64_t t = 0; t < R * S; ++t) {
    aoff[t] = (t / S) * taprows.pitch() + (t % S) * p.dil_w * C;
    boff[t] = t * K;
  }
  EpilogueTables<T> tab(ep, K);
  const StoreFn<T> store = store_fn(ep);
  const bool direct = Y.sc == 1 && !tab.affine && ep.combine == Combine::kNone && !ep.relu;
#pragma omp parallel
  {
    Buffer<T> rowbuf(Q * K), xrows(taprows.buffer_size());
    T* rb = rowbuf.get();
    int64_t last = -1;
#pragma omp for schedule(dynamic, 1)
    for (int64_t row = 0; row < N * P; ++row) {
      const int64_t n = row / P, pr = row % P;
      // Without an epilogue a channels-last output row is written in place.
      T* out = direct ? y + n * Y.sn + pr * Y.sh : rb;
      dw_taps_mult(f, DwTaps<T>{taprows.get(n, pr, xrows.get(), last), wpk.data(), aoff.data(), boff.data(),
                                R * S, Q, p.stride_w * C, direct ? Y.sw : K, K, 1, 1, 1, out}, C, m);
      if (!direct) dw_finish_row(rb, Q, K, tab, store, y, n * Y.sn + pr * Y.sh, Y, ep);
    }
  }
}

// dx[h][w][c] = sum over taps (r, s) and j < m of dy[p][q][c*m + j] * w[c*m + j][r][s] where
// h + pad_h = p*stride_h + r*dil_h (same for w). dy gets a zero margin so every tap inside it is
// valid; then the taps of a dx pixel depend only on (h, w mod stride_w) and each dx row is one task.
template <typename T>
void dw_bwd_input(const Conv2dParams& p, const T* dy, const T* w, T* dx) {
  const Tensor4 &X = p.x, &Y = p.y;
  const int64_t N = X.n, C = X.c, H = X.h, Wd = X.w, K = Y.c, m = K / C, R = p.w.h, S = p.w.w;
  const int64_t sh = p.stride_h, sw = p.stride_w;
  const DwFns<T> f = dw_fns<T>();
  const std::vector<T> wpk = dw_pack(p.w, w);
  // Stride 1, multiplier 1: dx is the depthwise convolution of dy with the window flipped and padding
  // (R-1)*dil - pad, which the forward's row and plane kernels run.
  if (sh == 1 && sw == 1 && m == 1 && (R - 1) * p.dil_h >= p.pad_h0 && (S - 1) * p.dil_w >= p.pad_w0) {
    Conv2dParams t = p;
    t.x = Y;
    t.y = X;
    t.pad_h0 = (R - 1) * p.dil_h - p.pad_h0;
    t.pad_w0 = (S - 1) * p.dil_w - p.pad_w0;
    std::vector<T> flipped(wpk.size());
    for (int64_t r = 0; r < R; ++r)
      for (int64_t s = 0; s < S; ++s)
        std::copy_n(wpk.data() + ((R - 1 - r) * S + (S - 1 - s)) * C, C, flipped.data() + (r * S + s) * C);
    if (dw_fwd_rows(t, dy, flipped, dx, Epilogue<T>{}, f)) return;
  }
  const int64_t Ht = ceil_div((R - 1) * p.dil_h, sh), Wt = ceil_div((S - 1) * p.dil_w, sw);
  const int64_t oh = p.pad_h0 + Ht * sh, ow = p.pad_w0 + Wt * sw;  // h + oh - r*dil_h >= 0
  const Padded pd{std::max(Y.h + Ht, (H - 1 + oh) / sh + 1), std::max(Y.w + Wt, (Wd - 1 + ow) / sw + 1), K};
  Buffer<T> dystore;
  const T* dyp = pad_channels_last(Y, dy, Ht, Wt, pd, dystore);
  const StoreFn<T> store = store_fn(Epilogue<T>{});
  const int64_t ntap_max = R * S * m;
#pragma omp parallel
  {
    Buffer<T> rowbuf(Wd * C);
    T* rb = rowbuf.get();
    std::vector<int64_t> aoff(ntap_max), boff(ntap_max);
#pragma omp for schedule(dynamic, 1)
    for (int64_t row = 0; row < N * H; ++row) {
      const int64_t n = row / H, h = row % H;
      for (int64_t w0 = 0; w0 < std::min(sw, Wd); ++w0) {
        int64_t nt = 0;
        for (int64_t r = 0; r < R; ++r) {
          const int64_t hh = h + oh - r * p.dil_h;
          if (hh % sh) continue;
          for (int64_t s = 0; s < S; ++s) {
            const int64_t ww = w0 + ow - s * p.dil_w;
            if (ww % sw) continue;
            for (int64_t j = 0; j < m; ++j, ++nt) {
              aoff[nt] = ((hh / sh) * pd.wp + ww / sw) * K + j;
              boff[nt] = (r * S + s) * K + j;
            }
          }
        }
        f.taps(DwTaps<T>{dyp + n * pd.sn(), wpk.data(), aoff.data(), boff.data(), nt, ceil_div(Wd - w0, sw), K,
                         sw * C, C, m, m, 1, rb + w0 * C});
      }
      store(rb, static_cast<int>(C), static_cast<int>(Wd), static_cast<int>(C), dx, n * X.sn + h * X.sh, X.sw, X.sc,
            Epilogue<T>{});
    }
  }
}

// dw[k][r][s] = sum over n, p, q of dy[n][p][q][k] * x[n][p*stride_h + r*dil_h][q*stride_w + s*dil_w][k/m]
// (padded copy). Each thread sums its output rows into a private [r][s][k] table; the tables are
// added in thread order so the result does not depend on scheduling.
template <typename T>
void dw_bwd_weight(const Conv2dParams& p, const T* dy, const T* x, T* dw) {
  const Tensor4 &X = p.x, &W = p.w, &Y = p.y;
  const int64_t N = X.n, C = X.c, K = Y.c, m = K / C, R = W.h, S = W.w, P = Y.h, Q = Y.w;
  const DwFns<T> f = dw_fns<T>();
  const Padded pd{(P - 1) * p.stride_h + (R - 1) * p.dil_h + 1, (Q - 1) * p.stride_w + (S - 1) * p.dil_w + 1, C};
  // Multiplier 1, 3x3 or 5x5: a channels-last input read in place (taps in the padding skipped).
  const bool rows_kernel = m == 1 && ((R == 3 && S == 3) || (R == 5 && S == 5));
  const bool in_place = rows_kernel && X.sc == 1;
  Buffer<T> xstore, dystore;
  const T* xp = in_place ? x : pad_channels_last(X, x, p.pad_h0, p.pad_w0, pd, xstore);
  const T* dyc = pad_channels_last(Y, dy, 0, 0, Padded{P, Q, K}, dystore);
  const int64_t nth = omp_get_max_threads(), RSK = R * S * K;
  std::vector<T> parts(nth * RSK, T(0));
#pragma omp parallel
  {
    T* part = parts.data() + omp_get_thread_num() * RSK;
#pragma omp for schedule(static)
    for (int64_t row = 0; row < N * P; ++row) {
      if (rows_kernel) {
        const int64_t n = row / P, pr = row % P;
        const DwSrc<T> src = in_place ? DwSrc<T>{x + n * X.sn, X.h, X.w, X.sh, X.sw, R, S, C, pr * p.stride_h - p.pad_h0,
                                                 p.dil_h, -p.pad_w0, p.stride_w, p.dil_w, Q}
                                      : DwSrc<T>{xp + n * pd.sn(), pd.hp, pd.wp, pd.sh(), C, R, S, C, pr * p.stride_h,
                                                 p.dil_h, 0, p.stride_w, p.dil_w, Q};
        f.wgrad(DwWgrad<T>{src, dyc + row * Q * K, K, part});
        continue;
      }
      const int64_t n = row / P, pr = row % P;
      const T* b = dyc + row * Q * K;
      for (int64_t t = 0; t < R * S; ++t) {
        const T* a = xp + n * pd.sn() + (pr * p.stride_h + (t / S) * p.dil_h) * pd.sh() + (t % S) * p.dil_w * C;
        if (m == 1) {
          f.reduce(DwReduce<T>{a, p.stride_w * C, 1, b, K, 1, Q, K, part + t * K, 1});
        } else {
          for (int64_t j = 0; j < m; ++j) f.reduce(DwReduce<T>{a, p.stride_w * C, 1, b + j, K, m, Q, C, part + t * K + j, m});
        }
      }
    }
  }
  for (int64_t t = 0; t < R * S; ++t)
    for (int64_t k = 0; k < K; ++k) {
      T s = T(0);
      for (int64_t i = 0; i < nth; ++i) s += parts[i * RSK + t * K + k];
      dw[k * W.sn + (t / S) * W.sh + (t % S) * W.sw] = s;
    }
}

}  // namespace

// The forward's path for p: 1x1 into NCHW planes reads the weights as they are; the others pack them.
inline bool pointwise_nchw_path(const Conv2dParams& p) {
  return is_pointwise(p) && p.y.sc != 1 && p.y.sw == 1 && p.y.sh == p.y.w;
}

// Elements of the direct path's packed weights (pack_weights' [g][kb][c-block][r][s][c][kv]).
inline int64_t direct_packed_size(const Conv2dParams& p, int kv) {
  return p.groups * ceil_div(Kg_of(p), kv) * p.w.h * p.w.w * p.w.c * kv;
}

template <typename T>
int64_t conv2d_fwd_packed_size(const Conv2dParams& p) {
  if (p.x.n == 0 || p.y.c == 0 || p.y.h == 0 || p.y.w == 0 || is_depthwise(p) || pointwise_nchw_path(p)) return 0;
  const int kv = micro_kernel<T>().kv;
  return winograd_path<T>(p) ? wino_packed_size(p, kv) : direct_packed_size(p, kv);
}

// Packs w for the direct path, or transforms it for Winograd (`wino`, float32 only).
template <typename T>
void pack_for(const Conv2dParams& p, const T* w, T* out, const MicroKernel<T>& mk, bool wino) {
  if constexpr (std::is_same_v<T, float>) {
    if (wino) return wino_pack(p, w, out, mk);
  }
  const Tensor4& W = p.w;
  pack_weights_strided(out, p.groups, Kg_of(p), W.c, W.h, W.w, mk, channel_block(W.c, W.h, W.w, mk.kv, sizeof(T)), w, W);
}

template <typename T>
void conv2d_fwd_pack(const Conv2dParams& p, const T* w, T* out) {
  pack_for(p, w, out, micro_kernel<T>(), winograd_path<T>(p));
}

template <typename T>
void conv2d_fwd_cpu(const Conv2dParams& p, const T* x, const T* w, T* y, const Epilogue<T>& ep, const T* packed) {
  if (p.x.n == 0 || p.y.c == 0 || p.y.h == 0 || p.y.w == 0) return;
  // Non-finite weights: the depthwise loops skip taps on padding, where the general path (like the
  // zero-padded definition) multiplies them, giving NaN.
  if (is_depthwise(p) && weights_finite(p.w, w)) return dw_fwd(p, x, w, y, ep);
  const MicroKernel<T> mk = micro_kernel<T>();
  if (pointwise_nchw_path(p)) return pointwise_nchw(p, x, w, y, ep, mk);
  const bool wino = winograd_path<T>(p);
  Buffer<T> wstore;
  if (!packed) {
    wstore.alloc(wino ? wino_packed_size(p, mk.kv) : direct_packed_size(p, mk.kv));
    pack_for(p, w, wstore.get(), mk, wino);
    packed = wstore.get();
  }
  if constexpr (std::is_same_v<T, float>) {
    if (wino) {
      if (winograd_fwd(p, x, packed, y, ep, mk)) return;
      // A non-finite value (see winograd_fwd): the whole layer again on the direct path.
      wstore.alloc(direct_packed_size(p, mk.kv));
      pack_for(p, w, wstore.get(), mk, false);
      packed = wstore.get();
    }
  }
  if (is_pointwise(p) && (p.stride_h > 1 || p.stride_w > 1) && p.y.sc == 1 && p.x.sc == 1) {
    // Strided 1x1 into channels_last: gather the pixels it reads into a dense channels_last copy
    // (a quarter of the input for stride 2), then the stride-1 flat GEMM below.
    const Tensor4 &X = p.x, &Y = p.y;
    Buffer<T> sub(Y.n * Y.h * Y.w * X.c);
    T* sp = sub.get();
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < Y.n; ++n)
      for (int64_t h = 0; h < Y.h; ++h)
        for (int64_t q = 0; q < Y.w; ++q)
          std::memcpy(sp + ((n * Y.h + h) * Y.w + q) * X.c, x + n * X.sn + h * p.stride_h * X.sh + q * p.stride_w * X.sw,
                      sizeof(T) * X.c);
    Conv2dParams q = p;
    q.x = Tensor4{X.n, X.c, Y.h, Y.w, Y.h * Y.w * X.c, 1, Y.w * X.c, X.c};
    q.stride_h = q.stride_w = 1;
    return conv2d_fwd_cpu(q, static_cast<const T*>(sp), w, y, ep, packed);
  }
  if (is_pointwise(p) && p.stride_h == 1 && p.stride_w == 1) {
    const Conv2dParams f = flat_pointwise_cl(p);
    if (f.x.h != p.x.h || f.x.w != p.x.w) return conv_with(f, x, packed, y, ep, mk);
  }
  conv_with(p, x, packed, y, ep, mk);
}

template <typename T>
void conv2d_bwd_input_cpu(const Conv2dParams& p, const T* dy, const T* w, T* dx) {
  const Tensor4 &X = p.x, &W = p.w, &Y = p.y;
  if (X.n == 0 || X.c == 0 || X.h == 0 || X.w == 0) return;
  const bool finite_w = weights_finite(W, w);
  // Non-finite weights: the paths below that sum over dy's own pixels only (the depthwise loops read
  // dy zero-padded).
  if (is_depthwise(p) && finite_w) return dw_bwd_input(p, dy, w, dx);
  const MicroKernel<T> mk = micro_kernel<T>();
  const int64_t G = p.groups, K = W.n, Kg = K / G, Cg = W.c, C = X.c, R = W.h, S = W.w;
  const int kv = mk.kv, mp = mk.mp;
  if (is_pointwise(p) && p.stride_h == 1 && p.stride_w == 1) {
    // 1x1: dx = W^T dy, the forward's pointwise GEMM with the weights read transposed (K <-> C).
    Conv2dParams q = p;
    q.x = Y;
    q.y = X;
    q.w = Tensor4{C, K, 1, 1, W.sc, W.sn, 1, 1};
    return conv2d_fwd_cpu(q, dy, w, dx, Epilogue<T>{});
  }
  // Stride 1 as a convolution of dy padded with zeros; not with a non-finite weight, which would turn
  // those zeros into NaN where torch sums over dy's own pixels only (the scatter below does too).
  if (p.stride_h == 1 && p.stride_w == 1 && finite_w) {
    // dx = conv(dy, w flipped in r, s with k <-> c), leading padding dil*(R-1) - pad.
    Conv2dParams q = p;
    q.x = Y;
    q.y = X;
    q.w = Tensor4{C, Kg, R, S, W.sc, W.sn, -W.sh, -W.sw};  // w read flipped, k <-> c (strides right for one group)
    q.pad_h0 = p.dil_h * (R - 1) - p.pad_h0;
    q.pad_w0 = p.dil_w * (S - 1) - p.pad_w0;
    if (winograd_path<T>(q)) return conv2d_fwd_cpu(q, dy, w + (R - 1) * W.sh + (S - 1) * W.sw, dx, Epilogue<T>{});
    // Its weights: output channel c (of Cg per group) reads the original's input channel c, input
    // channel kk (of Kg) its output channel kk.
    Buffer<T> wpack(G * ceil_div(Cg, kv) * R * S * Kg * kv);
    pack_weights(wpack.get(), G, Cg, Kg, R, S, kv, channel_block(Kg, R, S, kv, sizeof(T)),
                 [&](int64_t g, int64_t c, int64_t kk, int64_t r, int64_t s) {
                   return w[(g * Kg + kk) * W.sn + c * W.sc + (R - 1 - r) * W.sh + (S - 1 - s) * W.sw];
                 });
    conv_with(q, dy, static_cast<const T*>(wpack.get()), dx, Epilogue<T>{}, mk);
    return;
  }
  // Strided (or non-finite weights): per output row, cols[q][(r, s, c)] = sum_k dy[q][k] * w[k][c][r][s], scatter-added into a
  // channels-last accumulator of dx. A task owns (image, group, block of input channels), so scatters
  // never race; the channels are split only when there are too few images and groups to fill the
  // threads (batch 1).
  const int64_t N = X.n, H = X.h, Wd = X.w, P = Y.h, Q = Y.w;
  const int64_t nth = omp_get_max_threads();
  const int64_t nblk0 = std::min(ceil_div(2 * nth, N * G), ceil_div(Cg, 16));
  const int64_t cbw = std::max<int64_t>(1, nblk0 > 1 ? ceil_div(ceil_div(Cg, nblk0), 16) * 16 : Cg);
  const int64_t nblk = ceil_div(Cg, cbw);
  const int64_t CBmax = ceil_div(R * S * cbw, kv);
  // Packed per (g, block): column j of a block of len channels is (rs = j / len, c0 + j % len).
  Buffer<T> wpack(G * nblk * CBmax * Kg * kv);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t g = 0; g < G; ++g)
    for (int64_t b = 0; b < nblk; ++b) {
      const int64_t c0 = b * cbw, len = std::min(cbw, Cg - c0), ncol = R * S * len;
      for (int64_t cb = 0; cb < ceil_div(ncol, kv); ++cb)
        for (int64_t kk = 0; kk < Kg; ++kk)
          for (int v = 0; v < kv; ++v) {
            const int64_t j = cb * kv + v, rs = j / len, c = c0 + j % len;
            wpack.get()[(((g * nblk + b) * CBmax + cb) * Kg + kk) * kv + v] =
                j < ncol ? w[(g * Kg + kk) * W.sn + c * W.sc + (rs / S) * W.sh + (rs % S) * W.sw] : T(0);
          }
    }
  const Padded pdy{P, Q, K};
  Buffer<T> dystore;
  const T* dyc = pad_channels_last(Y, dy, 0, 0, pdy, dystore);
  Buffer<T> acc(N * H * Wd * C);
  const int64_t zero_seg = 0;
  const RowTiles tiles(Q, mp);
#pragma omp parallel
  {
    Buffer<T> tile(static_cast<int64_t>(mp) * kv);
    std::vector<int64_t> col_h(R * S * cbw), col_w(R * S * cbw), col_c(R * S * cbw);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < N * G * nblk; ++task) {
      const int64_t n = task / (G * nblk), g = task / nblk % G, b = task % nblk;
      const int64_t c0 = b * cbw, len = std::min(cbw, Cg - c0), ncol = R * S * len, CB = ceil_div(ncol, kv);
      for (int64_t j = 0; j < ncol; ++j) {
        col_h[j] = (j / len / S) * p.dil_h - p.pad_h0;
        col_w[j] = (j / len % S) * p.dil_w - p.pad_w0;
        col_c[j] = g * Cg + c0 + j % len;
      }
      T* an = acc.get() + n * H * Wd * C;
      for (int64_t hw = 0; hw < H * Wd; ++hw) std::fill(an + hw * C + g * Cg + c0, an + hw * C + g * Cg + c0 + len, T(0));
      for (int64_t pr = 0; pr < P; ++pr)
        for (int64_t t = 0; t < tiles.count; ++t) {
          const int64_t q0 = tiles.start(t);
          const int np = tiles.np(t);
          for (int64_t cb = 0; cb < CB; ++cb) {
            TileArgs<T> ta{dyc + n * pdy.sn() + (pr * Q + q0) * K + g * Kg, K, 1, &zero_seg, 1, Kg,
                           wpack.get() + (((g * nblk + b) * CBmax + cb) * Kg) * kv, tile.get(), np, false};
            mk.fn(ta);
            const int kvalid = static_cast<int>(std::min<int64_t>(kv, ncol - cb * kv));
            for (int i = 0; i < np; ++i)
              for (int v = 0; v < kvalid; ++v) {
                const int64_t j = cb * kv + v;
                const int64_t h = pr * p.stride_h + col_h[j], wq = (q0 + i) * p.stride_w + col_w[j];
                if (h >= 0 && h < H && wq >= 0 && wq < Wd) an[(h * Wd + wq) * C + col_c[j]] += tile.get()[i * kv + v];
              }
          }
        }
      for (int64_t h = 0; h < H; ++h)
        for (int64_t wq = 0; wq < Wd; ++wq)
          for (int64_t c = g * Cg + c0; c < g * Cg + c0 + len; ++c)
            dx[n * X.sn + c * X.sc + h * X.sh + wq * X.sw] = an[(h * Wd + wq) * C + c];
    }
  }
}

// 1x1, stride 1, NCHW planes: dW (K x C) = sum over images of dY_n (K x PQ) X_n^T (PQ x C). Rows of
// the micro-kernel are output channels (broadcast from dY's rows), columns kv input channels whose
// pixels are transposed slice by slice into an L1 panel [j][kv]; each task owns a block of kv input
// channels and a range of output channels, so its accumulators are its own (no reduction).
template <typename T>
void pointwise_bwd_weight_nchw(const Conv2dParams& p, const T* dy, const T* x, T* dw, const MicroKernel<T>& mk) {
  const Tensor4 &X = p.x, &W = p.w, &Y = p.y;
  const int64_t N = X.n, C = X.c, K = Y.c, PQ = Y.h * Y.w;
  const int kv = mk.kv, mp = mk.mp;
  const int64_t CB = ceil_div(C, kv), js = std::max<int64_t>(64, (16 << 10) / (kv * int64_t(sizeof(T))));
  const int64_t want = 2 * omp_get_max_threads();
  const int64_t nkr = CB >= want ? 1 : std::min(ceil_div(K, mp), ceil_div(want, CB));
  const int64_t krange = ceil_div(ceil_div(K, nkr), mp) * mp;
  const int64_t tasks = CB * ceil_div(K, krange);
  const int64_t seg0 = 0;
#pragma omp parallel
  {
    Buffer<T> panel(js * kv), acc(krange * kv);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t cb = t % CB, k0 = t / CB * krange, k1 = std::min(K, k0 + krange);
      const int64_t c0 = cb * kv, cvalid = std::min<int64_t>(kv, C - c0);
      if (cvalid < kv) std::memset(panel.get(), 0, sizeof(T) * js * kv);  // columns past C stay zero
      bool first = true;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t j0 = 0; j0 < PQ; j0 += js) {
          const int64_t jn = std::min(js, PQ - j0);
          mk.transpose(x + n * X.sn + c0 * X.sc + j0, cvalid, jn, X.sc, panel.get(), kv);  // panel[j][c]
          for (int64_t k = k0; k < k1; k += mp)
            mk.fn(TileArgs<T>{dy + n * Y.sn + k * Y.sc + j0, Y.sc, 1, &seg0, 1, jn, panel.get(),
                              acc.get() + (k - k0) * kv, static_cast<int>(std::min<int64_t>(mp, k1 - k)), !first});
          first = false;
        }
      for (int64_t k = k0; k < k1; ++k)
        for (int64_t v = 0; v < cvalid; ++v) dw[k * W.sn + (c0 + v) * W.sc] = acc.get()[(k - k0) * kv + v];
    }
  }
}

template <typename T>
void conv2d_bwd_weight_cpu(const Conv2dParams& p, const T* dy, const T* x, T* dw) {
  const Tensor4 &X = p.x, &W = p.w, &Y = p.y;
  const int64_t G = p.groups, K = W.n, Kg = K / G, Cg = W.c, C = X.c, R = W.h, S = W.w;
  const int64_t N = X.n, P = Y.h, Q = Y.w;
  if (N == 0 || P == 0 || Q == 0) {
    for (int64_t k = 0; k < K; ++k)
      for (int64_t c = 0; c < Cg; ++c)
        for (int64_t r = 0; r < R; ++r)
          for (int64_t s = 0; s < S; ++s) dw[k * W.sn + c * W.sc + r * W.sh + s * W.sw] = T(0);
    return;
  }
  if (is_depthwise(p)) {
    dw_bwd_weight(p, dy, x, dw);
    // A NaN or infinity in dy: the depthwise loops skip the input's padding, where the general path
    // below (like the zero-padded definition) multiplies it; it recomputes dw then.
    if (weights_finite(W, dw)) return;
  }
  const MicroKernel<T> mk = micro_kernel<T>();
  if constexpr (std::is_same_v<T, float>) {
    // A non-finite value (see winograd_fwd): the direct path below recomputes dw.
    if (winograd_path<T>(p) && winograd_bwd_weight(p, dy, x, dw, mk)) return;
  }
  if (is_pointwise(p) && p.stride_h == 1 && p.stride_w == 1 && X.sw == 1 && X.sh == X.w && Y.sw == 1 &&
      Y.sh == Y.w && X.c >= 16)
    return pointwise_bwd_weight_nchw(p, dy, x, dw, mk);
  const int kv = mk.kv, mp = mk.mp;
  // Few channels: broadcast straight from the padded copy (stride C per pixel) instead of gathering
  // them pixel-contiguous; then with one group and no horizontal dilation the (s, c) pairs of a
  // kernel row are contiguous there and serve as the tile rows (first layers: 3 channels x 7 taps).
  const bool gather = Cg >= 16, merge = !gather && G == 1 && p.dil_w == 1;
  const int64_t St = merge ? 1 : S, Ct = merge ? S * Cg : Cg;  // taps per task, rows to tile
  const int64_t KB = ceil_div(Kg, kv), CT = ceil_div(Ct, mp);
  const Padded pd{(P - 1) * p.stride_h + (R - 1) * p.dil_h + 1, (Q - 1) * p.stride_w + (S - 1) * p.dil_w + 1, C};
  Buffer<T> xstore;
  const T* xp = pad_channels_last(X, x, p.pad_h0, p.pad_w0, pd, xstore);
  // dy packed per image as [g][kb][p][q][kv], zero beyond Kg.
  const int64_t img = G * KB * P * Q * kv;
  Buffer<T> dyp(N * img);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t gk = 0; gk < G * KB; ++gk) {
      const int64_t g = gk / KB, kb = gk % KB;
      const int64_t kvalid = std::min<int64_t>(kv, Kg - kb * kv);
      const T* src = dy + n * Y.sn + (g * Kg + kb * kv) * Y.sc;
      for (int64_t pr = 0; pr < P; ++pr) {
        T* o = dyp.get() + n * img + (gk * P + pr) * Q * kv;
        const T* sr = src + pr * Y.sh;
        if (kvalid < kv)
          for (int64_t q = 0; q < Q; ++q) std::fill(o + q * kv + kvalid, o + (q + 1) * kv, T(0));
        if (Y.sc == 1) {
          for (int64_t q = 0; q < Q; ++q) std::memcpy(o + q * kv, sr + q * Y.sw, sizeof(T) * kvalid);
        } else {
          for (int64_t v = 0; v < kvalid; ++v)
            for (int64_t q = 0; q < Q; ++q) o[q * kv + v] = sr[v * Y.sc + q * Y.sw];
        }
      }
    }
  // Tasks own disjoint dw blocks (g, r, s, channel tile range) for every kb: no reduction across
  // threads. Per output-row chunk a task gathers its input channels pixel-contiguous (xt), so the
  // micro-kernel's broadcasts run along memory and one gather serves every kb panel.
  const int64_t base = G * R * St;
  const int64_t nth = omp_get_max_threads();
  // Few splits: every split streams all of dy again.
  const int64_t csplit = std::min<int64_t>(CT, ceil_div(2 * nth, base));
  const int64_t cper = ceil_div(CT, csplit);
  // Output rows per chunk: one kb panel of the chunk's dy rows stays in L1 while every tile reads it.
  const int64_t pch = std::max<int64_t>(1, (16 << 10) / (Q * kv * static_cast<int64_t>(sizeof(T))));
  std::vector<int64_t> seg(P);
  for (int64_t pr = 0; pr < P; ++pr) seg[pr] = pr * p.stride_h * pd.sh();
  const int64_t zero_seg = 0;
#pragma omp parallel
  {
    Buffer<T> part(KB * cper * mp * kv), xt(gather ? cper * mp * pch * Q : 0);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < base * csplit; ++task) {
      const int64_t cs = task % csplit, t2 = task / csplit;
      const int64_t rs = t2 % (R * St), g = t2 / (R * St), r = rs / St, s = rs % St;
      const int64_t ct0 = cs * cper, ct1 = std::min(CT, ct0 + cper);
      if (ct0 >= ct1) continue;
      const int64_t c_lo = ct0 * mp, nc = std::min(Ct, ct1 * mp) - c_lo;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t p0 = 0; p0 < P; p0 += pch) {
          const int64_t rows = std::min(pch, P - p0), L = rows * Q;
          for (int64_t pr = p0; pr < p0 + rows && gather; ++pr)
            for (int64_t q = 0; q < Q; ++q) {
              const T* src = xp + n * pd.sn() + ((pr * p.stride_h + r * p.dil_h) * pd.wp + q * p.stride_w + s * p.dil_w) * C +
                             g * Cg + c_lo;
              T* dst = xt.get() + (pr - p0) * Q + q;
              for (int64_t c = 0; c < nc; ++c) dst[c * L] = src[c];
            }
          for (int64_t kb = 0; kb < KB; ++kb)
            for (int64_t ct = ct0; ct < ct1; ++ct) {
              const int np = static_cast<int>(std::min<int64_t>(mp, Ct - ct * mp));
              const T* direct = xp + n * pd.sn() + (r * p.dil_h * pd.wp + s * p.dil_w) * C + g * Cg + ct * mp;
              TileArgs<T> ta{gather ? xt.get() + (ct * mp - c_lo) * L : direct, gather ? L : 1,
                             gather ? 1 : p.stride_w * C, gather ? &zero_seg : seg.data() + p0, gather ? 1 : rows,
                             gather ? L : Q, dyp.get() + n * img + ((g * KB + kb) * P + p0) * Q * kv,
                             part.get() + (kb * cper + ct - ct0) * mp * kv, np, n > 0 || p0 > 0};
              mk.fn(ta);
            }
        }
      for (int64_t kb = 0; kb < KB; ++kb) {
        const int kvalid = static_cast<int>(std::min<int64_t>(kv, Kg - kb * kv));
        for (int64_t ct = ct0; ct < ct1; ++ct)
          for (int64_t i = 0; i < std::min<int64_t>(mp, Ct - ct * mp); ++i) {
            const int64_t j = ct * mp + i, c = merge ? j % Cg : j, sj = merge ? j / Cg : s;
            for (int v = 0; v < kvalid; ++v)
              dw[(g * Kg + kb * kv + v) * W.sn + c * W.sc + r * W.sh + sj * W.sw] =
                  part.get()[((kb * cper + ct - ct0) * mp + i) * kv + v];
          }
      }
    }
  }
}

template <typename T>
void conv2d_bwd_bias_cpu(const Tensor4& d, const T* dy, T* db) {
  const int64_t K = d.c;
  // Double accumulation: a float sum over N*P*Q elements would lose digits at batch scale.
  if (d.sc == 1 && K > 1) {
    // Channels innermost: per-thread partial sums over pixel rows, vectorized over channels.
    std::vector<double> total(K, 0.0);
#pragma omp parallel
    {
      std::vector<double> part(K, 0.0);
#pragma omp for collapse(2) schedule(static)
      for (int64_t n = 0; n < d.n; ++n)
        for (int64_t h = 0; h < d.h; ++h)
          for (int64_t w = 0; w < d.w; ++w) {
            const T* px = dy + n * d.sn + h * d.sh + w * d.sw;
            for (int64_t k = 0; k < K; ++k) part[k] += static_cast<double>(px[k]);
          }
#pragma omp critical
      for (int64_t k = 0; k < K; ++k) total[k] += part[k];
    }
    for (int64_t k = 0; k < K; ++k) db[k] = static_cast<T>(total[k]);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < K; ++k) {
    double s = 0;
    for (int64_t n = 0; n < d.n; ++n)
      for (int64_t h = 0; h < d.h; ++h) {
        const T* row = dy + n * d.sn + k * d.sc + h * d.sh;
        for (int64_t w = 0; w < d.w; ++w) s += static_cast<double>(row[w * d.sw]);
      }
    db[k] = static_cast<T>(s);
  }
}

#define FASTCONV_INSTANTIATE(T)                                                                       \
  template void conv2d_fwd_cpu<T>(const Conv2dParams&, const T*, const T*, T*, const Epilogue<T>&, const T*); \
  template int64_t conv2d_fwd_packed_size<T>(const Conv2dParams&);                                      \
  template void conv2d_fwd_pack<T>(const Conv2dParams&, const T*, T*);                                 \
  template void conv2d_bwd_input_cpu<T>(const Conv2dParams&, const T*, const T*, T*);               \
  template void conv2d_bwd_weight_cpu<T>(const Conv2dParams&, const T*, const T*, T*);              \
  template void conv2d_bwd_bias_cpu<T>(const Tensor4&, const T*, T*);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
