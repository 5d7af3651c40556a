// Convolution kernels on CUDA cores, every dtype and any strides (NCHW or NHWC):
//   * a tiled implicit-GEMM core (64x64 block tile, 16-deep K slices in shared memory, 4x4 outputs
//     per thread) instantiated for three problems: forward (exact fp32 / fp64 / fallback for
//     channel counts the tensor-core path cannot vector-load), grad_input (gather over (k, r, s);
//     handles stride and dilation by skipping taps that do not land on the stride grid) and
//     grad_weight (split-K over N*P*Q into fp32/fp64 partials, then a deterministic reduction);
//   * a direct depthwise / single-input-channel kernel (C/groups == 1);
//   * grad_bias: per-channel reduction with split partials;
//   * conv2d_fwd: the path choice and dispatch (tensor cores live in conv2d_tc_kernels.cu).
#include <algorithm>

#include "common.cuh"

namespace fastconv {
namespace cuda {
namespace {

constexpr int kTile = 64, kKs = 16, kSimtThreads = 256;

struct Geo {  // the scalars every problem needs, as 32-bit where they are sizes of one axis
  int Cg, Kg, R, S, P, Q, H, W;
  int sh, sw, ph, pw, dh, dw;
  int groups;
  static Geo make(const Conv2dParams& p) {
    Geo g;
    g.groups = static_cast<int>(p.groups);
    g.Cg = static_cast<int>(p.x.c / p.groups); g.Kg = static_cast<int>(p.y.c / p.groups);
    g.R = static_cast<int>(p.w.h); g.S = static_cast<int>(p.w.w);
    g.P = static_cast<int>(p.y.h); g.Q = static_cast<int>(p.y.w);
    g.H = static_cast<int>(p.x.h); g.W = static_cast<int>(p.x.w);
    g.sh = static_cast<int>(p.stride_h); g.sw = static_cast<int>(p.stride_w);
    g.ph = static_cast<int>(p.pad_h0); g.pw = static_cast<int>(p.pad_w0);
    g.dh = static_cast<int>(p.dil_h); g.dw = static_cast<int>(p.dil_w);
    return g;
  }
};

__device__ __forceinline__ bool inside(int v, int n) { return static_cast<unsigned>(v) < static_cast<unsigned>(n); }

// ---- forward: Y[m = (n,p,q)][k] = sum_{kk = (r,s,c)} X[n, c, p*sh-ph+r*dh, q*sw-pw+s*dw] * W[k, c, r, s]
template <typename T> struct FwdProb {
  using A = Acc<T>;
  const T* x; const T* w; T* y;
  Tensor4 xt, wt, yt;
  Geo g;
  int64_t M, Ngemm, Kred;
  Epi<T> ep;
  struct Row { const T* base; int h, w; bool ok; };
  struct Col { const T* base; bool ok; };
  struct KC { int c, r, s; bool ok; };
  __device__ Row row(int64_t m, int gi) const {
    Row o{x, 0, 0, m < M};
    if (o.ok) {
      const int64_t n = m / (g.P * g.Q);
      const int pq = static_cast<int>(m - n * g.P * g.Q), p = pq / g.Q, q = pq % g.Q;
      o.base = x + n * xt.sn + static_cast<int64_t>(gi) * g.Cg * xt.sc;
      o.h = p * g.sh - g.ph; o.w = q * g.sw - g.pw;
    }
    return o;
  }
  __device__ Col col(int64_t k, int gi) const {
    return Col{w + (static_cast<int64_t>(gi) * g.Kg + (k < g.Kg ? k : 0)) * wt.sn, k < g.Kg};
  }
  __device__ KC kctx(int64_t kk, bool ok) const {
    const int i = static_cast<int>(kk), rs = i / g.Cg;
    return KC{i - rs * g.Cg, rs / g.S, rs % g.S, ok};
  }
  __device__ A a(const Row& r, const KC& k) const {
    const int h = r.h + k.r * g.dh, w_ = r.w + k.s * g.dw;
    return (r.ok && k.ok && inside(h, g.H) && inside(w_, g.W)) ? to_acc(ld(r.base + k.c * xt.sc + h * xt.sh + w_ * xt.sw)) : A(0);
  }
  __device__ A b(const Col& c, const KC& k) const {
    return (c.ok && k.ok) ? to_acc(ld(c.base + k.c * wt.sc + k.r * wt.sh + k.s * wt.sw)) : A(0);
  }
  __device__ void krange(int, int64_t& b, int64_t& e) const { b = 0; e = Kred; }
  __device__ void store(int64_t m, int64_t k, int gi, int, A v) const {
    if (m >= M || k >= g.Kg) return;
    const int64_t n = m / (g.P * g.Q);
    const int pq = static_cast<int>(m - n * g.P * g.Q), p = pq / g.Q, q = pq % g.Q;
    const int64_t kk = static_cast<int64_t>(gi) * g.Kg + k;
    const int64_t off = n * yt.sn + kk * yt.sc + p * yt.sh + q * yt.sw;
    y[off] = from_acc<T>(ep.apply(v, kk, off));
  }
};

// ---- grad_input: DX[m = (n,h,w)][c] = sum_{kk = (r,s,k)} DY[n, k, p, q] * W[k, c, r, s]
// where p*sh = h + ph - r*dh (taps off the stride grid or outside P contribute nothing).
template <typename T> struct BwdDataProb {
  using A = Acc<T>;
  const T* dy; const T* w; T* dx;
  Tensor4 dyt, wt, dxt;  // dyt: (N, K, P, Q), dxt: (N, C, H, W)
  Geo g;
  int64_t M, Ngemm, Kred;
  struct Row { const T* base; int hp, wp; bool ok; };
  struct Col { const T* base; bool ok; };
  struct KC { int k, r, s; bool ok; };
  __device__ Row row(int64_t m, int gi) const {
    Row o{dy, 0, 0, m < M};
    if (o.ok) {
      const int64_t n = m / (g.H * g.W);
      const int hw = static_cast<int>(m - n * g.H * g.W);
      o.base = dy + n * dyt.sn + static_cast<int64_t>(gi) * g.Kg * dyt.sc;
      o.hp = hw / g.W + g.ph; o.wp = hw % g.W + g.pw;
    }
    return o;
  }
  __device__ Col col(int64_t c, int gi) const {
    return Col{w + (c < g.Cg ? c : 0) * wt.sc + static_cast<int64_t>(gi) * g.Kg * wt.sn, c < g.Cg};
  }
  __device__ KC kctx(int64_t kk, bool ok) const {
    const int i = static_cast<int>(kk), rs = i / g.Kg;
    return KC{i - rs * g.Kg, rs / g.S, rs % g.S, ok};
  }
  __device__ A a(const Row& r, const KC& k) const {
    const int th = r.hp - k.r * g.dh, tw = r.wp - k.s * g.dw;
    if (!(r.ok && k.ok) || th < 0 || tw < 0 || th % g.sh || tw % g.sw) return A(0);
    const int p = th / g.sh, q = tw / g.sw;
    return (p < g.P && q < g.Q) ? to_acc(ld(r.base + k.k * dyt.sc + p * dyt.sh + q * dyt.sw)) : A(0);
  }
  __device__ A b(const Col& c, const KC& k) const {
    return (c.ok && k.ok) ? to_acc(ld(c.base + k.k * wt.sn + k.r * wt.sh + k.s * wt.sw)) : A(0);
  }
  __device__ void krange(int, int64_t& b, int64_t& e) const { b = 0; e = Kred; }
  __device__ void store(int64_t m, int64_t c, int gi, int, A v) const {
    if (m >= M || c >= g.Cg) return;
    const int64_t n = m / (g.H * g.W);
    const int hw = static_cast<int>(m - n * g.H * g.W);
    dx[n * dxt.sn + (static_cast<int64_t>(gi) * g.Cg + c) * dxt.sc + (hw / g.W) * dxt.sh + (hw % g.W) * dxt.sw] =
        from_acc<T>(v);
  }
};

// ---- grad_weight: DW[k][j = (r,s,c)] = sum_{mm = (n,p,q)} DY[n, k, p, q] * X[n, c, p*sh-ph+r*dh, q*sw-pw+s*dw],
// the N*P*Q reduction cut into `splits` ranges, each block writing its own fp32/fp64 partial.
template <typename T> struct BwdWeightProb {
  using A = Acc<T>;
  const T* dy; const T* x; A* ws;
  Tensor4 dyt, xt;
  Geo g;
  int64_t M, Ngemm, Kred, chunk;  // M = Kg, Ngemm = Cg*R*S, Kred = N*P*Q, chunk = reduction per split
  int64_t K;                      // all output channels (workspace row count per split)
  struct Row { const T* base; bool ok; };
  struct Col { const T* base; int roff, soff; bool ok; };
  struct KC { int64_t n; int ph, qw; int64_t dyoff; bool ok; };
  __device__ Row row(int64_t k, int gi) const {
    return Row{dy + (static_cast<int64_t>(gi) * g.Kg + (k < g.Kg ? k : 0)) * dyt.sc, k < g.Kg};
  }
  __device__ Col col(int64_t j, int gi) const {
    Col o{x, 0, 0, j < Ngemm};
    if (o.ok) {
      const int i = static_cast<int>(j), rs = i / g.Cg, c = i - rs * g.Cg;
      o.base = x + (static_cast<int64_t>(gi) * g.Cg + c) * xt.sc;
      o.roff = (rs / g.S) * g.dh - g.ph; o.soff = (rs % g.S) * g.dw - g.pw;
    }
    return o;
  }
  __device__ KC kctx(int64_t mm, bool ok) const {
    KC o{0, 0, 0, 0, ok};
    if (ok) {
      o.n = mm / (g.P * g.Q);
      const int pq = static_cast<int>(mm - o.n * g.P * g.Q), p = pq / g.Q, q = pq % g.Q;
      o.ph = p * g.sh; o.qw = q * g.sw;
      o.dyoff = o.n * dyt.sn + p * dyt.sh + q * dyt.sw;
    }
    return o;
  }
  __device__ A a(const Row& r, const KC& k) const { return (r.ok && k.ok) ? to_acc(ld(r.base + k.dyoff)) : A(0); }
  __device__ A b(const Col& c, const KC& k) const {
    const int h = k.ph + c.roff, w_ = k.qw + c.soff;
    return (c.ok && k.ok && inside(h, g.H) && inside(w_, g.W)) ? to_acc(ld(c.base + k.n * xt.sn + h * xt.sh + w_ * xt.sw))
                                                              : A(0);
  }
  __device__ void krange(int split, int64_t& b, int64_t& e) const {
    b = split * chunk;
    e = min(Kred, b + chunk);
  }
  __device__ void store(int64_t k, int64_t j, int gi, int split, A v) const {
    if (k >= g.Kg || j >= Ngemm) return;
    ws[(split * K + static_cast<int64_t>(gi) * g.Kg + k) * Ngemm + j] = v;
  }
};

// The shared GEMM core. z0 + blockIdx.z = split * groups + group (z0: launches of at most 65535
// z-blocks each cover more groups).
template <typename Prob>
__global__ void __launch_bounds__(kSimtThreads) simt_gemm_kernel(const Prob pb, int z0) {
  using A = typename Prob::A;
  __shared__ A sA[kKs][kTile], sB[kKs][kTile];
  const int tid = threadIdx.x, ml = tid % kTile, kl0 = tid / kTile;
  const int z = z0 + static_cast<int>(blockIdx.z);
  const int gi = z % pb.g.groups, split = z / pb.g.groups;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTile, n0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const auto ra = pb.row(m0 + ml, gi);
  const auto cb = pb.col(n0 + ml, gi);
  int64_t kb, ke;
  pb.krange(split, kb, ke);
  const int tx = tid % 16, ty = tid / 16;
  A acc[4][4] = {};
  for (int64_t k0 = kb; k0 < ke; k0 += kKs) {
#pragma unroll
    for (int i = 0; i < kKs / (kSimtThreads / kTile); ++i) {
      const int kl = kl0 + i * (kSimtThreads / kTile);
      const auto kc = pb.kctx(k0 + kl, k0 + kl < ke);
      sA[kl][ml] = pb.a(ra, kc);
      sB[kl][ml] = pb.b(cb, kc);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kKs; ++k) {
      A av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) { av[i] = sA[k][ty + 16 * i]; bv[i] = sB[k][tx + 16 * i]; }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) pb.store(m0 + ty + 16 * i, n0 + tx + 16 * j, gi, split, acc[i][j]);
}

template <typename Prob> void launch_simt(const Prob& pb, int splits, cudaStream_t s) {
  if (pb.M == 0 || pb.Ngemm == 0) return;
  const int zs = splits * pb.g.groups;
  for (int z0 = 0; z0 < zs; z0 += kMaxGridZ) {  // gridDim.z is limited to 65535
    const dim3 grid(static_cast<unsigned>((pb.M + kTile - 1) / kTile), static_cast<unsigned>((pb.Ngemm + kTile - 1) / kTile),
                    static_cast<unsigned>(std::min(kMaxGridZ, zs - z0)));
    simt_gemm_kernel<Prob><<<grid, kSimtThreads, 0, s>>>(pb, z0);
  }
}

// ---- depthwise (C/groups == 1): output channel k reads input channel k / Kg only.
template <typename T>
__global__ void __launch_bounds__(256) depthwise_kernel(const T* x, const T* w, T* y, Tensor4 xt, Tensor4 wt,
                                                        Tensor4 yt, Geo g, bool cl, Epi<T> ep) {
  const int64_t total = yt.n * yt.c * yt.h * yt.w;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, k, p, q, t = i;
    if (cl) { k = t % yt.c; t /= yt.c; q = t % yt.w; t /= yt.w; p = t % yt.h; n = t / yt.h; }
    else { q = t % yt.w; t /= yt.w; p = t % yt.h; t /= yt.h; k = t % yt.c; n = t / yt.c; }
    const T* xb = x + n * xt.sn + (k / g.Kg) * xt.sc;
    const T* wb = w + k * wt.sn;
    const int h0 = static_cast<int>(p) * g.sh - g.ph, w0 = static_cast<int>(q) * g.sw - g.pw;
    Acc<T> acc = 0;
    for (int r = 0; r < g.R; ++r) {
      const int h = h0 + r * g.dh;
      if (!inside(h, g.H)) continue;
      for (int s = 0; s < g.S; ++s) {
        const int ww = w0 + s * g.dw;
        if (inside(ww, g.W)) acc += to_acc(ld(xb + h * xt.sh + ww * xt.sw)) * to_acc(ld(wb + r * wt.sh + s * wt.sw));
      }
    }
    const int64_t off = n * yt.sn + k * yt.sc + p * yt.sh + q * yt.sw;
    y[off] = from_acc<T>(ep.apply(acc, k, off));
  }
}

// ---- grad_input, direct gather for few channels per group (depthwise, RGB first layers), where a
// 64-wide GEMM tile over Cg would be mostly padding: one thread per input element.
template <typename T>
__global__ void __launch_bounds__(256) bwd_input_direct_kernel(const T* dy, const T* w, T* dx, Tensor4 dyt, Tensor4 wt,
                                                               Tensor4 dxt, Geo g, bool cl) {
  const int64_t total = dxt.n * dxt.c * dxt.h * dxt.w;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, c, h, x, t = i;
    if (cl) { c = t % dxt.c; t /= dxt.c; x = t % dxt.w; t /= dxt.w; h = t % dxt.h; n = t / dxt.h; }
    else { x = t % dxt.w; t /= dxt.w; h = t % dxt.h; t /= dxt.h; c = t % dxt.c; n = t / dxt.c; }
    const int64_t gi = c / g.Cg, cc = c - gi * g.Cg;
    const T* dyb = dy + n * dyt.sn + gi * g.Kg * dyt.sc;
    const T* wb = w + gi * g.Kg * wt.sn + cc * wt.sc;
    Acc<T> acc = 0;
    for (int r = 0; r < g.R; ++r) {
      const int th = static_cast<int>(h) + g.ph - r * g.dh;
      if (th < 0 || th % g.sh) continue;
      const int p = th / g.sh;
      if (p >= g.P) continue;
      for (int s = 0; s < g.S; ++s) {
        const int tw = static_cast<int>(x) + g.pw - s * g.dw;
        if (tw < 0 || tw % g.sw) continue;
        const int q = tw / g.sw;
        if (q >= g.Q) continue;
        const T* dyp = dyb + p * dyt.sh + q * dyt.sw;
        const T* wp = wb + r * wt.sh + s * wt.sw;
        for (int k = 0; k < g.Kg; ++k) acc += to_acc(ld(dyp + k * dyt.sc)) * to_acc(ld(wp + k * wt.sn));
      }
    }
    dx[n * dxt.sn + c * dxt.sc + h * dxt.sh + x * dxt.sw] = from_acc<T>(acc);
  }
}

// ---- grad_weight for C/groups == 1 (depthwise): one block per (k, r, s) tap and split of N*P*Q,
// a block reduction into the same [split][K][R*S] partials the GEMM path writes (a 64x64 GEMM tile
// would be 1 x R*S useful cells).
template <typename T>
__global__ void __launch_bounds__(256) depthwise_wgrad_kernel(const T* dy, const T* x, Acc<T>* ws, Tensor4 dyt,
                                                              Tensor4 xt, Geo g, int64_t chunk) {
  using A = Acc<T>;
  __shared__ A red[256];
  const int RS = g.R * g.S;
  const int64_t k = blockIdx.x / RS;
  const int rs = static_cast<int>(blockIdx.x - k * RS), r = rs / g.S, s = rs % g.S;
  const int64_t PQ = static_cast<int64_t>(g.P) * g.Q, rows = dyt.n * PQ;
  const int64_t b = blockIdx.y * chunk, e = min(rows, b + chunk);
  const T* dyb = dy + k * dyt.sc;
  const T* xb = x + (k / g.Kg) * xt.sc;
  A acc = 0;
  for (int64_t i = b + threadIdx.x; i < e; i += 256) {
    const int64_t n = i / PQ;
    const int pq = static_cast<int>(i - n * PQ), p = pq / g.Q, q = pq % g.Q;
    const int h = p * g.sh - g.ph + r * g.dh, w = q * g.sw - g.pw + s * g.dw;
    if (inside(h, g.H) && inside(w, g.W))
      acc += to_acc(ld(dyb + n * dyt.sn + p * dyt.sh + q * dyt.sw)) * to_acc(ld(xb + n * xt.sn + h * xt.sh + w * xt.sw));
  }
  red[threadIdx.x] = acc;
  __syncthreads();
  for (int w = 128; w > 0; w >>= 1) {
    if (threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) ws[(blockIdx.y * dyt.c + k) * RS + rs] = red[0];
}

// ---- grad_weight: sum the split partials into dw (any strides), w index order j = (r, s, c).
template <typename T>
__global__ void __launch_bounds__(256) bwd_weight_reduce_kernel(const Acc<T>* ws, T* dw, Tensor4 wt, int splits,
                                                                int Cg, int S, int64_t Ngemm) {
  const int64_t total = wt.n * Ngemm;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Acc<T> s = 0;
    for (int sp = 0; sp < splits; ++sp) s += ws[sp * total + i];
    const int64_t k = i / Ngemm;
    const int j = static_cast<int>(i - k * Ngemm), rs = j / Cg, c = j - rs * Cg;
    dw[k * wt.sn + c * wt.sc + (rs / S) * wt.sh + (rs % S) * wt.sw] = from_acc<T>(s);
  }
}

// ---- grad_bias: partial sums over row ranges, ws[split][k]; channel-fastest (NHWC) walks k across
// threads, NCHW walks the contiguous P*Q plane across threads.
template <typename T>
__global__ void __launch_bounds__(256) bias_partial_kernel(const T* g, Tensor4 t, Acc<T>* ws, int splits, bool cl) {
  using A = Acc<T>;
  __shared__ A red[256];
  const int64_t PQ = t.h * t.w, rows = t.n * PQ;
  const int split = blockIdx.y;
  const int64_t chunk = (rows + splits - 1) / splits, r0 = split * chunk, r1 = min(rows, r0 + chunk);
  if (cl) {  // block: 32 channels x 8 row lanes
    const int64_t k = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x % 32;
    A s = 0;
    if (k < t.c)
      for (int64_t r = r0 + threadIdx.x / 32; r < r1; r += 8) {
        const int64_t n = r / PQ, pq = r - n * PQ;
        s += to_acc(ld(g + n * t.sn + k * t.sc + (pq / t.w) * t.sh + (pq % t.w) * t.sw));
      }
    red[threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
      for (int l = 1; l < 8; ++l) s += red[threadIdx.x + 32 * l];
      if (k < t.c) ws[split * t.c + k] = s;
    }
  } else {  // block: one channel, 256 lanes over rows
    const int64_t k = blockIdx.x;
    A s = 0;
    for (int64_t r = r0 + threadIdx.x; r < r1; r += 256) {
      const int64_t n = r / PQ, pq = r - n * PQ;
      s += to_acc(ld(g + n * t.sn + k * t.sc + (pq / t.w) * t.sh + (pq % t.w) * t.sw));
    }
    red[threadIdx.x] = s;
    __syncthreads();
    for (int w = 128; w > 0; w >>= 1) {
      if (threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
      __syncthreads();
    }
    if (threadIdx.x == 0) ws[split * t.c + k] = red[0];
  }
}

template <typename T>
__global__ void __launch_bounds__(256) bias_final_kernel(const Acc<T>* ws, T* out, int64_t K, int splits) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= K) return;
  Acc<T> s = 0;
  for (int sp = 0; sp < splits; ++sp) s += ws[sp * K + k];
  out[k] = from_acc<T>(s);
}

int bias_splits(const Tensor4& t, int sm_count) {
  const int64_t rows = t.n * t.h * t.w;
  const int64_t cols = t.sc == 1 ? (t.c + 31) / 32 : t.c;
  int64_t s = (4LL * sm_count + cols - 1) / cols;
  s = std::min<int64_t>(s, (rows + 1023) / 1024);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(s, 1024)));
}

int depthwise_wgrad_splits(const Conv2dParams& p, int sm_count) {
  const int64_t taps = p.w.n * p.w.h * p.w.w, rows = p.y.n * p.y.h * p.y.w;
  int64_t s = (4LL * sm_count + taps - 1) / taps;
  s = std::min<int64_t>(s, (rows + 2047) / 2048);  // >= 8 rows per thread
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(s, 65535)));
}

int bwd_weight_splits(const Conv2dParams& p, int sm_count) {
  const Geo g = Geo::make(p);
  if (g.Cg == 1) return depthwise_wgrad_splits(p, sm_count);
  const int64_t tiles = ((g.Kg + kTile - 1) / kTile) * ((static_cast<int64_t>(g.Cg) * g.R * g.S + kTile - 1) / kTile) * g.groups;
  const int64_t red = p.y.n * p.y.h * p.y.w;
  int64_t s = (2LL * sm_count + tiles - 1) / tiles;
  s = std::min<int64_t>(s, (red + 255) / 256);       // keep >= 256 reduction steps per split
  s = std::min<int64_t>(s, 65535 / g.groups);
  return static_cast<int>(std::max<int64_t>(1, s));
}

}  // namespace

ConvPath conv2d_fwd_path(const Conv2dParams& p, DType dt, bool allow_tf32) {
  const int64_t cg = p.x.c / p.groups;
  if (cg == 1) return ConvPath::kDepthwise;
  if ((dt == DType::kF16 || dt == DType::kBF16) && cg % 8 == 0 && p.groups <= 65535) return ConvPath::kTensorCore;
  if (dt == DType::kF32 && (allow_tf32 || conv2d_wgmma_ok()) && cg % 4 == 0 && p.groups <= 65535)
    return ConvPath::kTensorCore;  // exact float32 as split TF32 on the wgmma engine
  return ConvPath::kSimt;
}

void conv2d_fwd(const Conv2dParams& p, DType dt, const void* x, const void* w, void* y, const EpilogueArgs& ep,
                bool allow_tf32, int sm_count, cudaStream_t s) {
  if (p.y.n * p.y.c * p.y.h * p.y.w == 0) return;
  const ConvPath path = conv2d_fwd_path(p, dt, allow_tf32);
  if (path == ConvPath::kTensorCore) return conv2d_fwd_tc(p, dt, x, w, y, ep, allow_tf32, sm_count, s);
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    const Geo g = Geo::make(p);
    if (path == ConvPath::kDepthwise) {
      const int64_t total = p.y.n * p.y.c * p.y.h * p.y.w;
      depthwise_kernel<T><<<blocks_for(total, 256, kMaxGridBlocks), 256, 0, s>>>(
          static_cast<const T*>(x), static_cast<const T*>(w), static_cast<T*>(y), p.x, p.w, p.y, g,
          p.y.sc == 1 && p.y.c > 1, Epi<T>::make(ep));
      return;
    }
    FwdProb<T> pb;
    pb.x = static_cast<const T*>(x); pb.w = static_cast<const T*>(w); pb.y = static_cast<T*>(y);
    pb.xt = p.x; pb.wt = p.w; pb.yt = p.y; pb.g = g;
    pb.M = p.y.n * p.y.h * p.y.w; pb.Ngemm = g.Kg; pb.Kred = static_cast<int64_t>(g.R) * g.S * g.Cg;
    pb.ep = Epi<T>::make(ep);
    launch_simt(pb, 1, s);
  });
}

void conv2d_bwd_input_simt(const Conv2dParams& p, DType dt, const void* dy, const void* w, void* dx, int,
                           cudaStream_t s) {
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    const Geo g = Geo::make(p);
    if (g.Cg < 16) {
      const int64_t total = p.x.n * p.x.c * p.x.h * p.x.w;
      bwd_input_direct_kernel<T><<<blocks_for(total, 256, kMaxGridBlocks), 256, 0, s>>>(
          static_cast<const T*>(dy), static_cast<const T*>(w), static_cast<T*>(dx), p.y, p.w, p.x, g,
          p.x.sc == 1 && p.x.c > 1);
      return;
    }
    BwdDataProb<T> pb;
    pb.dy = static_cast<const T*>(dy); pb.w = static_cast<const T*>(w); pb.dx = static_cast<T*>(dx);
    pb.dyt = p.y; pb.wt = p.w; pb.dxt = p.x; pb.g = Geo::make(p);
    pb.M = p.x.n * p.x.h * p.x.w; pb.Ngemm = pb.g.Cg; pb.Kred = static_cast<int64_t>(pb.g.R) * pb.g.S * pb.g.Kg;
    launch_simt(pb, 1, s);
  });
}

namespace {
bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
}  // namespace

bool conv2d_bwd_weight_tc_eligible(const Conv2dParams& p, DType dt, bool allow_tf32) {
  const int64_t v = dt == DType::kF32 ? 4 : 8;
  const bool type_ok = dt == DType::kF16 || dt == DType::kBF16 || (dt == DType::kF32 && allow_tf32);
  return type_ok && (p.x.c / p.groups) % v == 0 && (p.y.c / p.groups) % v == 0 && p.groups <= 65535;
}

int64_t conv2d_bwd_weight_workspace(const Conv2dParams& p, DType dt, bool allow_tf32, int sm_count) {
  const int64_t elems = p.w.n * p.w.c * p.w.h * p.w.w;
  int64_t splits = bwd_weight_splits(p, sm_count);
  if (conv2d_bwd_weight_tc_eligible(p, dt, allow_tf32))
    splits = std::max<int64_t>(splits, conv2d_bwd_weight_tc_splits(p, dt, sm_count));
  return splits * elems * (dt == DType::kF64 ? 8 : 4);
}

void conv2d_bwd_weight(const Conv2dParams& p, DType dt, const void* dy, const void* x, void* dw, void* workspace,
                       bool allow_tf32, int sm_count, cudaStream_t s) {
  const int64_t welems = p.w.n * p.w.c * p.w.h * p.w.w;
  if (welems == 0) return;
  const bool tc = conv2d_bwd_weight_tc_eligible(p, dt, allow_tf32) && nhwc_dense(p.y) && nhwc_dense(p.x) &&
                  aligned16(dy) && aligned16(x);
  const int splits = tc ? conv2d_bwd_weight_tc_splits(p, dt, sm_count) : bwd_weight_splits(p, sm_count);
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    using A = Acc<T>;
    const Geo g = Geo::make(p);
    const int64_t ngemm = static_cast<int64_t>(g.Cg) * g.R * g.S;
    if (tc) {
      conv2d_bwd_weight_tc(p, dt, dy, x, static_cast<float*>(workspace), splits, s);
    } else if (g.Cg == 1) {
      const int64_t rows = p.y.n * p.y.h * p.y.w;
      const dim3 grid(static_cast<unsigned>(p.w.n * g.R * g.S), static_cast<unsigned>(splits));
      depthwise_wgrad_kernel<T><<<grid, 256, 0, s>>>(static_cast<const T*>(dy), static_cast<const T*>(x),
                                                     static_cast<A*>(workspace), p.y, p.x, g,
                                                     (rows + splits - 1) / splits);
    } else {
      BwdWeightProb<T> pb;
      pb.dy = static_cast<const T*>(dy); pb.x = static_cast<const T*>(x); pb.ws = static_cast<A*>(workspace);
      pb.dyt = p.y; pb.xt = p.x; pb.g = g;
      pb.M = g.Kg; pb.Ngemm = ngemm;
      pb.Kred = p.y.n * p.y.h * p.y.w;
      pb.chunk = ((pb.Kred + splits - 1) / splits + kKs - 1) / kKs * kKs;
      pb.K = p.w.n;
      launch_simt(pb, splits, s);  // every (split, k, j) cell is written, empty ranges write 0
    }
    bwd_weight_reduce_kernel<T><<<blocks_for(welems, 256, kMaxGridBlocks), 256, 0, s>>>(
        static_cast<const A*>(workspace), static_cast<T*>(dw), p.w, splits, g.Cg, g.S, ngemm);
  });
}

int64_t conv2d_bwd_bias_workspace(const Tensor4& t, DType dt, int sm_count) {
  return static_cast<int64_t>(bias_splits(t, sm_count)) * t.c * (dt == DType::kF64 ? 8 : 4);
}

void conv2d_bwd_bias(const Tensor4& t, DType dt, const void* g, void* db, void* workspace, int sm_count,
                     cudaStream_t s) {
  if (t.c == 0) return;
  const int splits = bias_splits(t, sm_count);
  const bool cl = t.sc == 1 && t.c > 1;
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    using A = Acc<T>;
    const dim3 grid(static_cast<unsigned>(cl ? (t.c + 31) / 32 : t.c), static_cast<unsigned>(splits));
    bias_partial_kernel<T><<<grid, 256, 0, s>>>(static_cast<const T*>(g), t, static_cast<A*>(workspace), splits, cl);
    bias_final_kernel<T><<<blocks_for(t.c, 256, kMaxGridBlocks), 256, 0, s>>>(static_cast<const A*>(workspace),
                                                                               static_cast<T*>(db), t.c, splits);
  });
}

}  // namespace cuda
}  // namespace fastconv
