// Max / average / adaptive-average pooling, forward and backward. One thread per output element
// (per V consecutive channels in channels_last: one 16-byte load per window tap), grid-stride loops.
// The flat index of a thread's element is split into (n, c, h, w) with 32-bit multiply-shift
// division by the (host-prepared) sizes when the tensor has fewer than 2^31 elements, with 64-bit
// division otherwise (a called subroutine of ~70 instructions per divide on the GPU);
// FASTCONV_POOL_INDEX64=1 forces the 64-bit path (tests). Backward of avg/adaptive gathers (deterministic, no zeroing); backward of max
// scatters by the saved indices with atomics (fp32 buffer for 16-bit types).
#include <cmath>
#include <cstdlib>

#include "common.cuh"

namespace fastconv {
namespace cuda {
namespace {

constexpr int kThreads = 256;

struct Pos { int64_t n, c, h, w; };

// The sizes a flat index is split by, in memory order (channels_last: C/V, W, H; else W, H, C), and
// whether every index fits the 32-bit path.
struct Decomp {
  FastDiv d0, d1, d2;
  bool small;
  static Decomp make(bool cl, const Tensor4& t, int V) {
    Decomp dc;
    const int64_t a = cl ? t.c / V : t.w, b = cl ? t.w : t.h, c = cl ? t.h : t.c;
    const char* e = std::getenv("FASTCONV_POOL_INDEX64");
    dc.small = t.n * t.c * t.h * t.w < (int64_t{1} << 31) && !(e && e[0] == '1');
    if (dc.small) dc.d0 = FastDiv::make(a), dc.d1 = FastDiv::make(b), dc.d2 = FastDiv::make(c);
    return dc;
  }
};

// Element i of a tensor of sizes (N, C, H, W) walked in memory order: channel fastest when
// channels_last (C counted in groups of V), else w fastest.
__device__ __forceinline__ Pos decompose(int64_t i, bool cl, int64_t C, int64_t H, int64_t W, int V,
                                         const Decomp& dc) {
  Pos o;
  if (dc.small) {
    uint32_t u = static_cast<uint32_t>(i);
    const uint32_t q0 = dc.d0.div(u), r0 = u - q0 * dc.d0.d;
    const uint32_t q1 = dc.d1.div(q0), r1 = q0 - q1 * dc.d1.d;
    const uint32_t q2 = dc.d2.div(q1), r2 = q1 - q2 * dc.d2.d;
    if (cl) {
      o.c = static_cast<int64_t>(r0) * V; o.w = r1; o.h = r2;
    } else {
      o.w = r0; o.h = r1; o.c = r2;
    }
    o.n = q2;
    return o;
  }
  if (cl) {
    const int64_t cv = C / V;
    o.c = (i % cv) * V; i /= cv;
    o.w = i % W; i /= W;
    o.h = i % H; o.n = i / H;
  } else {
    o.w = i % W; i /= W;
    o.h = i % H; i /= H;
    o.c = i % C; o.n = i / C;
  }
  return o;
}

__device__ __forceinline__ int64_t off(const Tensor4& t, const Pos& o) {
  return o.n * t.sn + o.c * t.sc + o.h * t.sh + o.w * t.sw;
}

template <typename T, int V> __device__ __forceinline__ void load_v(const T* p, Acc<T>* out) {
  if constexpr (V == 1) {
    out[0] = to_acc(p[0]);
  } else {
    const Vec<T, V> v = load_vec<T, V>(p);
#pragma unroll
    for (int l = 0; l < V; ++l) out[l] = to_acc(v.v[l]);
  }
}

template <typename T, int V> __device__ __forceinline__ void store_v(T* p, const Acc<T>* in) {
  if constexpr (V == 1) {
    p[0] = from_acc<T>(in[0]);
  } else {
    Vec<T, V> v;
#pragma unroll
    for (int l = 0; l < V; ++l) v.v[l] = from_acc<T>(in[l]);
    store_vec<T, V>(p, v);
  }
}

#define GRID_STRIDE(i, n)                                                                        \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);          \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// IDX: also the argmax of each window (flat within its H*W plane); without, the values alone (inference:
// no int64 indices to track or write, 8 bytes per output element fewer).
template <typename T, int V, bool IDX>
__global__ void __launch_bounds__(kThreads) max_pool_fwd_kernel(Pool2dParams p, bool cl, Decomp dc, const T* x, T* y,
                                                                 int64_t* idx) {
  const int64_t total = p.y.n * p.y.c * p.y.h * p.y.w / V;
  GRID_STRIDE(i, total) {
    const Pos o = decompose(i, cl, p.y.c, p.y.h, p.y.w, V, dc);
    int64_t hs = o.h * p.stride_h - p.pad_h, ws = o.w * p.stride_w - p.pad_w;
    const int64_t he = min(hs + (p.kh - 1) * p.dil_h + 1, p.x.h);
    const int64_t we = min(ws + (p.kw - 1) * p.dil_w + 1, p.x.w);
    while (hs < 0) hs += p.dil_h;
    while (ws < 0) ws += p.dil_w;
    Acc<T> best[V];
    int64_t bi[V];
#pragma unroll
    for (int l = 0; l < V; ++l) { best[l] = -INFINITY; bi[l] = hs * p.x.w + ws; }
    const T* xb = x + o.n * p.x.sn + o.c * p.x.sc;
    for (int64_t h = hs; h < he; h += p.dil_h) {
      for (int64_t w = ws; w < we; w += p.dil_w) {
        Acc<T> v[V];
        load_v<T, V>(xb + h * p.x.sh + w * p.x.sw, v);
#pragma unroll
        for (int l = 0; l < V; ++l) {
          if (v[l] > best[l] || isnan(v[l])) {  // NaN wins, as torch
            best[l] = v[l];
            if constexpr (IDX) bi[l] = h * p.x.w + w;
          }
        }
      }
    }
    const int64_t yo = off(p.y, o);
    store_v<T, V>(y + yo, best);
    if constexpr (IDX) {
#pragma unroll
      for (int l = 0; l < V; ++l) idx[yo + l * p.y.sc] = bi[l];
    }
  }
}

// torch's avg_pool2d window: divisor counts padding (up to H + pad) unless count_include_pad is off.
struct AvgWin { int64_t hs, he, ws, we, div; };
__device__ __forceinline__ AvgWin avg_window(const Pool2dParams& p, int64_t oh, int64_t ow) {
  AvgWin a;
  a.hs = oh * p.stride_h - p.pad_h; a.ws = ow * p.stride_w - p.pad_w;
  a.he = min(a.hs + p.kh, p.x.h + p.pad_h); a.we = min(a.ws + p.kw, p.x.w + p.pad_w);
  const int64_t pool = (a.he - a.hs) * (a.we - a.ws);
  a.hs = max(a.hs, int64_t(0)); a.ws = max(a.ws, int64_t(0));
  a.he = min(a.he, p.x.h); a.we = min(a.we, p.x.w);
  a.div = p.divisor_override ? p.divisor_override
                             : (p.count_include_pad ? pool : (a.he - a.hs) * (a.we - a.ws));
  return a;
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads) avg_pool_fwd_kernel(Pool2dParams p, bool cl, Decomp dc, const T* x, T* y) {
  const int64_t total = p.y.n * p.y.c * p.y.h * p.y.w / V;
  GRID_STRIDE(i, total) {
    const Pos o = decompose(i, cl, p.y.c, p.y.h, p.y.w, V, dc);
    const AvgWin a = avg_window(p, o.h, o.w);
    Acc<T> sum[V] = {};
    const T* xb = x + o.n * p.x.sn + o.c * p.x.sc;
    for (int64_t h = a.hs; h < a.he; ++h)
      for (int64_t w = a.ws; w < a.we; ++w) {
        Acc<T> v[V];
        load_v<T, V>(xb + h * p.x.sh + w * p.x.sw, v);
#pragma unroll
        for (int l = 0; l < V; ++l) sum[l] += v[l];
      }
    const bool empty = a.hs >= a.he || a.ws >= a.we;
#pragma unroll
    for (int l = 0; l < V; ++l) sum[l] = empty ? Acc<T>(0) : sum[l] / static_cast<Acc<T>>(a.div);
    store_v<T, V>(y + off(p.y, o), sum);
  }
}

// Gather: input (h, w) receives grad/div from every output window that covers it.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads) avg_pool_bwd_kernel(Pool2dParams p, bool cl, Decomp dc, const T* gy, T* gx) {
  const int64_t total = p.x.n * p.x.c * p.x.h * p.x.w / V;
  GRID_STRIDE(i, total) {
    const Pos o = decompose(i, cl, p.x.c, p.x.h, p.x.w, V, dc);
    const int64_t hp = o.h + p.pad_h, wp = o.w + p.pad_w;
    const int64_t ph0 = hp < p.kh ? 0 : (hp - p.kh) / p.stride_h + 1, ph1 = min(hp / p.stride_h + 1, p.y.h);
    const int64_t pw0 = wp < p.kw ? 0 : (wp - p.kw) / p.stride_w + 1, pw1 = min(wp / p.stride_w + 1, p.y.w);
    Acc<T> sum[V] = {};
    const T* gb = gy + o.n * p.y.sn + o.c * p.y.sc;
    for (int64_t ph = ph0; ph < ph1; ++ph)
      for (int64_t pw = pw0; pw < pw1; ++pw) {
        const AvgWin a = avg_window(p, ph, pw);
        Acc<T> v[V];
        load_v<T, V>(gb + ph * p.y.sh + pw * p.y.sw, v);
#pragma unroll
        for (int l = 0; l < V; ++l) sum[l] += v[l] / static_cast<Acc<T>>(a.div);
      }
    store_v<T, V>(gx + off(p.x, o), sum);
  }
}

__device__ __forceinline__ int64_t ad_start(int64_t o, int64_t in, int64_t out) { return o * in / out; }
__device__ __forceinline__ int64_t ad_end(int64_t o, int64_t in, int64_t out) { return ((o + 1) * in + out - 1) / out; }

template <typename T, int V>
__global__ void __launch_bounds__(kThreads) adaptive_fwd_kernel(Tensor4 xt, Tensor4 yt, bool cl, Decomp dc, const T* x,
                                                                 T* y) {
  const int64_t total = yt.n * yt.c * yt.h * yt.w / V;
  GRID_STRIDE(i, total) {
    const Pos o = decompose(i, cl, yt.c, yt.h, yt.w, V, dc);
    const int64_t hs = ad_start(o.h, xt.h, yt.h), he = ad_end(o.h, xt.h, yt.h);
    const int64_t ws = ad_start(o.w, xt.w, yt.w), we = ad_end(o.w, xt.w, yt.w);
    Acc<T> sum[V] = {};
    const T* xb = x + o.n * xt.sn + o.c * xt.sc;
    for (int64_t h = hs; h < he; ++h)
      for (int64_t w = ws; w < we; ++w) {
        Acc<T> v[V];
        load_v<T, V>(xb + h * xt.sh + w * xt.sw, v);
#pragma unroll
        for (int l = 0; l < V; ++l) sum[l] += v[l];
      }
    const Acc<T> cnt = static_cast<Acc<T>>((he - hs) * (we - ws));
#pragma unroll
    for (int l = 0; l < V; ++l) sum[l] /= cnt;
    store_v<T, V>(y + off(yt, o), sum);
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads) adaptive_bwd_kernel(Tensor4 gyt, Tensor4 gxt, bool cl, Decomp dc,
                                                                 const T* gy, T* gx) {
  const int64_t total = gxt.n * gxt.c * gxt.h * gxt.w / V;
  GRID_STRIDE(i, total) {
    const Pos o = decompose(i, cl, gxt.c, gxt.h, gxt.w, V, dc);
    // Candidate outputs from the inverse map, widened by one each side; membership decides.
    const int64_t ph0 = max(o.h * gyt.h / gxt.h - 1, int64_t(0)), ph1 = min(((o.h + 1) * gyt.h + gxt.h - 1) / gxt.h + 1, gyt.h);
    const int64_t pw0 = max(o.w * gyt.w / gxt.w - 1, int64_t(0)), pw1 = min(((o.w + 1) * gyt.w + gxt.w - 1) / gxt.w + 1, gyt.w);
    Acc<T> sum[V] = {};
    const T* gb = gy + o.n * gyt.sn + o.c * gyt.sc;
    for (int64_t ph = ph0; ph < ph1; ++ph) {
      const int64_t hs = ad_start(ph, gxt.h, gyt.h), he = ad_end(ph, gxt.h, gyt.h);
      if (o.h < hs || o.h >= he) continue;
      for (int64_t pw = pw0; pw < pw1; ++pw) {
        const int64_t ws = ad_start(pw, gxt.w, gyt.w), we = ad_end(pw, gxt.w, gyt.w);
        if (o.w < ws || o.w >= we) continue;
        const Acc<T> cnt = static_cast<Acc<T>>((he - hs) * (we - ws));
        Acc<T> v[V];
        load_v<T, V>(gb + ph * gyt.sh + pw * gyt.sw, v);
#pragma unroll
        for (int l = 0; l < V; ++l) sum[l] += v[l] / cnt;
      }
    }
    store_v<T, V>(gx + off(gxt, o), sum);
  }
}

__device__ __forceinline__ void atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(double* p, double v) { atomicAdd(p, v); }

// Scatter grad_out into the saved argmax positions; A is the accumulation type of the buffer.
template <typename T, typename A>
__global__ void __launch_bounds__(kThreads) max_pool_bwd_kernel(Tensor4 gyt, Tensor4 gxt, bool cl, Decomp dc,
                                                                const T* gy, const int64_t* idx, A* acc) {
  const int64_t total = gyt.n * gyt.c * gyt.h * gyt.w;
  const int64_t plane = gxt.h * gxt.w;
  GRID_STRIDE(i, total) {
    const Pos o = decompose(i, cl, gyt.c, gyt.h, gyt.w, 1, dc);
    const int64_t yo = off(gyt, o);
    const int64_t j = idx[yo];
    if (j < 0 || j >= plane) continue;  // a window with no tap inside the input (-inf): no gradient
    atomic_add(acc + o.n * gxt.sn + o.c * gxt.sc + (j / gxt.w) * gxt.sh + (j % gxt.w) * gxt.sw,
               static_cast<A>(to_acc(gy[yo])));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) convert_kernel(const float* in, T* out, int64_t n) {
  GRID_STRIDE(i, n) out[i] = from_acc<T>(in[i]);
}

bool is_cl(const Tensor4& t) { return t.sc == 1 && t.c > 1; }

// Vector width usable on these tensors: channels_last, C % V == 0, bases 16-byte aligned.
template <typename T>
bool can_vec(const Tensor4& a, const Tensor4& b, const void* pa, const void* pb) {
  constexpr int V = kVec16<T>;
  auto al = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  return V > 1 && a.sc == 1 && b.sc == 1 && a.c % V == 0 && a.c > 1 && al(pa) && al(pb);
}

// kv: the kernel instantiated for V = kVec16<T> (channels_last, aligned), k1: for V = 1 (any layout).
template <typename T, typename... P, typename... Args>
void launch_pool(bool vec, int64_t elems, cudaStream_t s, void (*kv)(P...), void (*k1)(P...), Args... args) {
  const int64_t items = vec ? elems / kVec16<T> : elems;
  (vec ? kv : k1)<<<blocks_for(items, kThreads, kMaxGridBlocks), kThreads, 0, s>>>(args...);
}

int64_t numel(const Tensor4& t) { return t.n * t.c * t.h * t.w; }

}  // namespace

void max_pool2d_fwd(const Pool2dParams& p, DType dt, const void* x, void* y, int64_t* idx, cudaStream_t s) {
  if (numel(p.y) == 0) return;
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = can_vec<T>(p.x, p.y, x, y);
    const bool cl = vec || is_cl(p.y);
    const Decomp dc = Decomp::make(cl, p.y, vec ? kVec16<T> : 1);
    if (idx)
      launch_pool<T>(vec, numel(p.y), s, max_pool_fwd_kernel<T, kVec16<T>, true>, max_pool_fwd_kernel<T, 1, true>, p, cl,
                     dc, static_cast<const T*>(x), static_cast<T*>(y), idx);
    else
      launch_pool<T>(vec, numel(p.y), s, max_pool_fwd_kernel<T, kVec16<T>, false>, max_pool_fwd_kernel<T, 1, false>, p,
                     cl, dc, static_cast<const T*>(x), static_cast<T*>(y), idx);
  });
}

void avg_pool2d_fwd(const Pool2dParams& p, DType dt, const void* x, void* y, cudaStream_t s) {
  if (numel(p.y) == 0) return;
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = can_vec<T>(p.x, p.y, x, y);
    const bool cl = vec || is_cl(p.y);
    launch_pool<T>(vec, numel(p.y), s, avg_pool_fwd_kernel<T, kVec16<T>>, avg_pool_fwd_kernel<T, 1>, p, cl,
                   Decomp::make(cl, p.y, vec ? kVec16<T> : 1), static_cast<const T*>(x), static_cast<T*>(y));
  });
}

void avg_pool2d_bwd(const Pool2dParams& p, DType dt, const void* gy, void* gx, cudaStream_t s) {
  if (numel(p.x) == 0) return;
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = can_vec<T>(p.x, p.y, gx, gy);
    const bool cl = vec || is_cl(p.x);
    launch_pool<T>(vec, numel(p.x), s, avg_pool_bwd_kernel<T, kVec16<T>>, avg_pool_bwd_kernel<T, 1>, p, cl,
                   Decomp::make(cl, p.x, vec ? kVec16<T> : 1), static_cast<const T*>(gy), static_cast<T*>(gx));
  });
}

void adaptive_avg_pool2d_fwd(const Tensor4& xt, const Tensor4& yt, DType dt, const void* x, void* y, cudaStream_t s) {
  if (numel(yt) == 0) return;
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = can_vec<T>(xt, yt, x, y);
    const bool cl = vec || is_cl(yt);
    launch_pool<T>(vec, numel(yt), s, adaptive_fwd_kernel<T, kVec16<T>>, adaptive_fwd_kernel<T, 1>, xt, yt, cl,
                   Decomp::make(cl, yt, vec ? kVec16<T> : 1), static_cast<const T*>(x), static_cast<T*>(y));
  });
}

void adaptive_avg_pool2d_bwd(const Tensor4& gyt, const Tensor4& gxt, DType dt, const void* gy, void* gx,
                             cudaStream_t s) {
  if (numel(gxt) == 0) return;
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = can_vec<T>(gxt, gyt, gx, gy);
    const bool cl = vec || is_cl(gxt);
    launch_pool<T>(vec, numel(gxt), s, adaptive_bwd_kernel<T, kVec16<T>>, adaptive_bwd_kernel<T, 1>, gyt, gxt, cl,
                   Decomp::make(cl, gxt, vec ? kVec16<T> : 1), static_cast<const T*>(gy), static_cast<T*>(gx));
  });
}

void max_pool2d_bwd(const Tensor4& gyt, const Tensor4& gxt, DType dt, const void* gy, const int64_t* idx, void* gx,
                    float* acc, cudaStream_t s) {
  if (numel(gyt) == 0) return;
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    const bool cl = is_cl(gyt);
    const Decomp dc = Decomp::make(cl, gyt, 1);
    const int blocks = blocks_for(numel(gyt), kThreads, kMaxGridBlocks);
    if constexpr (sizeof(T) == 2) {
      max_pool_bwd_kernel<T, float><<<blocks, kThreads, 0, s>>>(gyt, gxt, cl, dc, static_cast<const T*>(gy), idx, acc);
      convert_kernel<T><<<blocks_for(numel(gxt), kThreads, kMaxGridBlocks), kThreads, 0, s>>>(acc, static_cast<T*>(gx),
                                                                                              numel(gxt));
    } else {
      max_pool_bwd_kernel<T, T><<<blocks, kThreads, 0, s>>>(gyt, gxt, cl, dc, static_cast<const T*>(gy), idx,
                                                            static_cast<T*>(gx));
    }
  });
}

}  // namespace cuda
}  // namespace fastconv
