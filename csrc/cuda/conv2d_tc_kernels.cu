// conv2d forward and weight gradient as implicit GEMMs on tensor cores (fp16 / bf16, fp32 inputs as
// TF32 or, exact, as split TF32), fp32 accumulation, on two engines: WMMA (any GPU from sm_80) and
// Hopper's wgmma (sm_90a builds on compute capability 9.0; see "---- Hopper" below).
// Forward GEMM view, per group g:  Y[m][k] = sum_kk X[m][kk] * W[k][kk] with
//   m  = (n, p, q) over N*P*Q output pixels,   k = output channel within the group (Kg),
//   kk = (r, s, c) over R*S*Cg, c fastest, so a 16-byte chunk of kk is 8 (4 for fp32) consecutive
//   channels of one input pixel in NHWC and of one filter row in KRSC: no im2col buffer, every
//   operand tile is gathered straight from x / w with cp.async (zero-fill for padding / tails).
// WMMA engine: block tile BM x BN x BK (BK = 64 bytes of K per row), STAGES-deep cp.async ring in shared memory,
// rows padded by 16 bytes (row pitch 80 bytes: the 8 rows an ldmatrix phase reads hit 8 distinct
// 16-byte bank groups). Warps compute WM x WN with WMMA fragments. The epilogue stages the fp32
// accumulators through shared memory (reusing the ring), applies the fused conv2d_fused epilogue and
// writes 16-byte vectors when the output is NHWC-contiguous (coalesced), scalars otherwise.
#include <mma.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>

#include "common.cuh"
#ifndef FASTCONV_EMULATION  // which brings its own Wgmma
#include "wgmma_ops.cuh"
#endif

namespace fastconv {
namespace cuda {
namespace {

using namespace nvcuda;

#ifndef FASTCONV_EMULATION  // the host emulation (csrc/tests/cuda_emu) defines its own, landing at the wait
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = valid ? 16 : 0;  // src-size 0: nothing is read, the 16 bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
#endif

// WMMA operand type and k-depth per element type: fp32 runs as TF32 (m16n16k8).
template <typename T> struct MmaT { using In = T; static constexpr int kK = 16; };
template <> struct MmaT<float> { using In = wmma::precision::tf32; static constexpr int kK = 8; };

template <typename T> struct TcArgs {
  const T* x;  // [N, H, W, C] contiguous
  const T* w;  // [K, R, S, Cg] contiguous
  T* y;        // strides in yt
  Tensor4 yt;
  int64_t M;        // N * P * Q
  int H, W, C, Cg, Kg, S, PQ, Q, Kdim;
  int sh, sw, ph, pw, dh, dw;
  bool y_vec;    // y (and residual) channel-contiguous, Kg and pixel strides % vector == 0, aligned: vector epilogue
  bool y_dense;  // ... and NHWC-dense: output row m at m * K
  Epi<T> ep;
};

// Output pixel m = (n * P + p) * Q + q of a GEMM row, given P*Q and Q.
struct Pixel {
  int64_t n;
  int p, q;
};
__device__ __forceinline__ Pixel pixel_of(int64_t m, int PQ, int Q) {
  const int64_t n = m / PQ;
  const int pq = static_cast<int>(m - n * PQ), p = pq / Q;
  return Pixel{n, p, pq - p * Q};
}

// The epilogue shared by the tensor-core forward kernels: the block's BM x BN fp32 tile, staged in
// shared memory (pitch ldc), through the fused epilogue to y.
template <typename T, int BM, int BN, int THREADS>
__device__ __forceinline__ void tc_store(const TcArgs<T>& a, const float* sC, int LDC, int64_t m0, int n0, int g,
                                         int tid) {
  constexpr int V = kVec16<T>;
  const int64_t kbase = static_cast<int64_t>(g) * a.Kg;
  if (a.y_vec) {
    // Channels contiguous: element (m, g*Kg + n) at pixel(m) + g*Kg + n, pixel(m) = m*K when NHWC-dense
    // (else decoded: a strided view, such as one stride phase of an input gradient); V channels per access.
    constexpr int CPRow = BN / V;
    const int64_t K = a.yt.c;
    for (int id = tid; id < BM * CPRow; id += THREADS) {
      const int row = id / CPRow, cn = (id - row * CPRow) * V;
      const int64_t m = m0 + row;
      const int n = n0 + cn;
      if (m >= a.M || n >= a.Kg) continue;
      int64_t pix = m * K;
      if (!a.y_dense) {
        const Pixel o = pixel_of(m, a.PQ, a.Q);
        pix = o.n * a.yt.sn + o.p * a.yt.sh + o.q * a.yt.sw;
      }
      const int64_t off = pix + kbase + n;
      float v[V];
#pragma unroll
      for (int l = 0; l < V; ++l) v[l] = sC[row * LDC + cn + l];
      if (!a.ep.trivial) {
        Vec<T, V> r;
        if (a.ep.combine) r = load_vec<T, V>(a.ep.residual + off);
#pragma unroll
        for (int l = 0; l < V; ++l) v[l] = a.ep.apply_r(v[l], kbase + n + l, a.ep.combine ? to_acc(r.v[l]) : 0.0f);
      }
      Vec<T, V> o;
#pragma unroll
      for (int l = 0; l < V; ++l) o.v[l] = from_acc<T>(v[l]);
      store_vec<T, V>(a.y + off, o);
    }
  } else {
    // Any output strides (NCHW): walk m fastest so consecutive threads write consecutive q.
    for (int id = tid; id < BM * BN; id += THREADS) {
      const int row = id % BM, col = id / BM;
      const int64_t m = m0 + row;
      const int n = n0 + col;
      if (m >= a.M || n >= a.Kg) continue;
      const Pixel o = pixel_of(m, a.PQ, a.Q);
      const int64_t k = kbase + n;
      const int64_t off = o.n * a.yt.sn + k * a.yt.sc + o.p * a.yt.sh + o.q * a.yt.sw;
      a.y[off] = from_acc<T>(a.ep.apply(sC[row * LDC + col], k, off));
    }
  }
}

// The operand gathers of the implicit GEMM, shared by the forward kernels. A thread copies the 16-byte
// chunks of one chunk column in rows row0 + i * STEP of the tile: AIT rows of A (output pixels, their
// input corner fixed for the whole K loop) and BIT rows of B (filters). For a stage, tap() decodes the
// chunk's K offset kk into its channel and filter tap; a_src / b_src give each row's source (or a
// valid dummy with ok false: zero-filled, for padding, tails and rows past M / Kg).
template <typename T, int AIT, int BIT, int STEP>
struct TcGather {
  int64_t a_base[AIT];
  int a_h[AIT], a_w[AIT];
  const T* b_ptr[BIT];
  bool b_ok[BIT];
  struct Tap { int c, dr, ds; bool ok; };

  __device__ __forceinline__ TcGather(const TcArgs<T>& a, int64_t m0, int n0, int g, int row0) {
#pragma unroll
    for (int i = 0; i < AIT; ++i) {
      const int64_t m = m0 + row0 + i * STEP;
      if (m < a.M) {
        const Pixel o = pixel_of(m, a.PQ, a.Q);
        a_base[i] = o.n * a.H * a.W * a.C + static_cast<int64_t>(g) * a.Cg;
        a_h[i] = o.p * a.sh - a.ph;
        a_w[i] = o.q * a.sw - a.pw;
      } else {
        a_base[i] = 0;
        a_h[i] = -(1 << 29);  // fails the bounds test for every tap: zero rows past M
        a_w[i] = 0;
      }
    }
#pragma unroll
    for (int i = 0; i < BIT; ++i) {
      const int nn = n0 + row0 + i * STEP;
      b_ok[i] = nn < a.Kg;
      b_ptr[i] = a.w + (static_cast<int64_t>(g) * a.Kg + (b_ok[i] ? nn : 0)) * a.Kdim;
    }
  }
  __device__ __forceinline__ static Tap tap(const TcArgs<T>& a, int kk) {
    const int rs = kk / a.Cg, r = rs / a.S;
    return Tap{kk - rs * a.Cg, r * a.dh, (rs - r * a.S) * a.dw, kk < a.Kdim};
  }
  __device__ __forceinline__ const T* a_src(const TcArgs<T>& a, int i, const Tap& t, bool& ok) const {
    const int h = a_h[i] + t.dr, w = a_w[i] + t.ds;
    ok = t.ok && static_cast<unsigned>(h) < static_cast<unsigned>(a.H) && static_cast<unsigned>(w) < static_cast<unsigned>(a.W);
    return ok ? a.x + a_base[i] + (static_cast<int64_t>(h) * a.W + w) * a.C + t.c : a.x;
  }
  __device__ __forceinline__ const T* b_src(const TcArgs<T>& a, int i, const Tap& t, int kk, bool& ok) const {
    ok = t.ok && b_ok[i];
    return ok ? b_ptr[i] + kk : a.w;
  }
};

template <typename T, int BM, int BN, int WM, int WN, int STAGES>
struct TcCfg {
  static constexpr int kV = 16 / sizeof(T);            // elements per 16-byte chunk
  static constexpr int kBK = 64 / sizeof(T);           // K-depth per stage: 64 bytes per row
  static constexpr int kBKP = kBK + kV;                // padded row pitch (80 bytes)
  static constexpr int kWarps = (BM / WM) * (BN / WN);
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kCPR = kBK / kV;                // chunks per row (4)
  static constexpr int kRowStep = kThreads / kCPR;     // rows covered by one pass of the block
  static constexpr int kAIt = BM / kRowStep, kBIt = BN / kRowStep;
  static constexpr int kLdc = BN + 4;                  // fp32 epilogue pitch
  static constexpr int kPipeBytes = STAGES * (BM + BN) * kBKP * static_cast<int>(sizeof(T));
  static constexpr int kEpiBytes = BM * kLdc * 4;
  static constexpr int kSmem = kPipeBytes > kEpiBytes ? kPipeBytes : kEpiBytes;
  static_assert(BM % kRowStep == 0 && BN % kRowStep == 0, "tile rows must split evenly over the threads");
  static_assert(WM % 16 == 0 && WN % 16 == 0 && kBK % MmaT<T>::kK == 0, "fragment tiling");
};

template <typename T, int BM, int BN, int WM, int WN, int STAGES>
__global__ void __launch_bounds__(TcCfg<T, BM, BN, WM, WN, STAGES>::kThreads)
conv_tc_kernel(const TcArgs<T> a) {
  using Cfg = TcCfg<T, BM, BN, WM, WN, STAGES>;
  using In = typename MmaT<T>::In;
  constexpr int V = Cfg::kV, BK = Cfg::kBK, BKP = Cfg::kBKP, MK = MmaT<T>::kK;
  constexpr int FM = WM / 16, FN = WN / 16;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sA = reinterpret_cast<T*>(smem_raw);  // [STAGES][BM][BKP]
  T* sB = sA + STAGES * BM * BKP;          // [STAGES][BN][BKP]

  const int tid = threadIdx.x, warp = tid / 32;
  const int wm = warp / (BN / WN), wn = warp % (BN / WN);
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int n0 = blockIdx.y * BN, g = blockIdx.z;
  const int kc = tid % Cfg::kCPR, row0 = tid / Cfg::kCPR;  // this thread's chunk column, first row

  const TcGather<T, Cfg::kAIt, Cfg::kBIt, Cfg::kRowStep> gather(a, m0, n0, g, row0);
  auto load_stage = [&](int stage, int kt) {
    const int kk = kt * BK + kc * V;
    const auto tap = gather.tap(a, kk);
    T* dA = sA + (stage * BM + row0) * BKP + kc * V;
#pragma unroll
    for (int i = 0; i < Cfg::kAIt; ++i) {
      bool ok;
      const T* src = gather.a_src(a, i, tap, ok);
      cp_async16(dA + i * Cfg::kRowStep * BKP, src, ok);
    }
    T* dB = sB + (stage * BN + row0) * BKP + kc * V;
#pragma unroll
    for (int i = 0; i < Cfg::kBIt; ++i) {
      bool ok;
      const T* src = gather.b_src(a, i, tap, kk, ok);
      cp_async16(dB + i * Cfg::kRowStep * BKP, src, ok);
    }
  };

  wmma::fragment<wmma::accumulator, 16, 16, MK, float> acc[FM][FN];
#pragma unroll
  for (int i = 0; i < FM; ++i)
#pragma unroll
    for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  const int KT = (a.Kdim + BK - 1) / BK;
#pragma unroll
  for (int st = 0; st < STAGES - 1; ++st) {
    if (st < KT) load_stage(st, st);
    cp_async_commit();  // empty groups keep the group count uniform
  }
  for (int kt = 0; kt < KT; ++kt) {
    cp_async_wait<STAGES - 2>();  // stage kt has landed (for this thread) ...
    __syncthreads();              // ... for all threads; and stage kt-1 is no longer being read
    const int nk = kt + STAGES - 1;
    if (nk < KT) load_stage(nk % STAGES, nk);
    cp_async_commit();
    const T* tA = sA + ((kt % STAGES) * BM + wm * WM) * BKP;
    const T* tB = sB + ((kt % STAGES) * BN + wn * WN) * BKP;
#pragma unroll
    for (int ks = 0; ks < BK; ks += MK) {
      wmma::fragment<wmma::matrix_a, 16, 16, MK, In, wmma::row_major> fa[FM];
      wmma::fragment<wmma::matrix_b, 16, 16, MK, In, wmma::col_major> fb[FN];
#pragma unroll
      for (int i = 0; i < FM; ++i) {
        wmma::load_matrix_sync(fa[i], tA + i * 16 * BKP + ks, BKP);
        if constexpr (sizeof(T) == 4) {
#pragma unroll
          for (int t = 0; t < fa[i].num_elements; ++t) fa[i].x[t] = wmma::__float_to_tf32(fa[i].x[t]);
        }
      }
#pragma unroll
      for (int j = 0; j < FN; ++j) {
        wmma::load_matrix_sync(fb[j], tB + j * 16 * BKP + ks, BKP);
        if constexpr (sizeof(T) == 4) {
#pragma unroll
          for (int t = 0; t < fb[j].num_elements; ++t) fb[j].x[t] = wmma::__float_to_tf32(fb[j].x[t]);
        }
      }
#pragma unroll
      for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the ring is reused for the accumulators below

  float* sC = reinterpret_cast<float*>(smem_raw);
  constexpr int LDC = Cfg::kLdc;
#pragma unroll
  for (int i = 0; i < FM; ++i)
#pragma unroll
    for (int j = 0; j < FN; ++j)
      wmma::store_matrix_sync(sC + (wm * WM + i * 16) * LDC + wn * WN + j * 16, acc[i][j], LDC, wmma::mem_row_major);
  __syncthreads();

  tc_store<T, BM, BN, Cfg::kThreads>(a, sC, LDC, m0, n0, g, tid);
}

// ---- Hopper (sm_90a): the same implicit GEMM on wgmma. Two warpgroups of 128 threads, each owning 64
// rows of a 128 x BN tile, its accumulators in registers (BN/2 fp32 per thread). Operands are K-major
// in shared memory with the 128-byte swizzle that wgmma's descriptors describe: one stage holds 128
// bytes of K per row (64 fp16/bf16, 32 fp32 as TF32), rows 128 bytes apart, 8-row groups 1024 bytes
// apart (SBO), and the 16-byte chunk c of row r stored at chunk c ^ (r % 8). Each k-step of the
// instruction (32 bytes of K) moves the descriptor's start address by 32 bytes inside the swizzled
// rows; the hardware applies the XOR to the address bits, so tile bases are 1024-byte aligned.
// Every thread gathers its 16-byte chunks with cp.async as the WMMA kernel does (the input with .ca:
// the R*S taps of a block re-read the same pixels) into a STAGES-deep ring; a stage is refilled two
// iterations after its wgmma batch was issued, after every warpgroup's wgmma.wait_group 1 has retired
// that batch. Compiled only for sm_90a (FASTCONV_SM90A); the host picks it on compute capability 9.0.
// float: once its copies of a stage have landed, each thread rounds its own chunks to TF32 in place
// (wgmma would truncate them). SPLIT (exact float32 as split TF32): also lo = tf32(x - hi) in a second
// half of the stage; every k-step then issues lo*hi, hi*lo and hi*hi (the lo*lo term, ~2^-22 of the
// product, and the rounding of lo, ~2^-23, are the only errors: float32-level accuracy at a third of
// the TF32 rate).
template <typename T, int BN, int STAGES, bool SPLIT>
struct WgmmaCfg {
  static constexpr int kBM = 128, kThreads = 256;
  static constexpr int kV = 16 / sizeof(T);          // elements per 16-byte chunk
  static constexpr int kBK = 128 / sizeof(T);        // K per stage: one 128-byte swizzled row
  static constexpr int kSteps = 4;                   // wgmma k-steps per stage (32 bytes each)
  static constexpr int kAIt = kBM / 32, kBIt = BN / 32;  // 8 chunks per row: 32 rows per pass of 256 threads
  static constexpr int kLoOffset = (kBM + BN) * 128;                 // the lo half of a split stage
  static constexpr int kStageBytes = kLoOffset * (SPLIT ? 2 : 1);
  static constexpr int kLdc = BN + 4;
  static constexpr int kPipeBytes = STAGES * kStageBytes, kEpiBytes = kBM * kLdc * 4;
  static constexpr int kSmem = (kPipeBytes > kEpiBytes ? kPipeBytes : kEpiBytes) + 1024;  // + alignment slack
  static_assert(STAGES >= 3, "a stage is refilled two iterations after its batch was issued");
  static_assert(BN % 32 == 0 && BN <= 256, "wgmma N");
  static_assert(!SPLIT || sizeof(T) == 4, "split TF32 is for float32");
};

#ifndef FASTCONV_EMULATION  // the emulation runs each thread's share of a wgmma at its wait_group
__device__ __forceinline__ void cp_async16_ca(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accumulator reads or writes across a wgmma fence or wait.
template <int N> __device__ __forceinline__ void fence_regs(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
#endif

// Shared-memory matrix descriptor: start address, leading byte offset (unused by swizzled K-major
// operands: 16), stride byte offset 1024 (between 8-row groups), 128-byte swizzle.
// (MN-major operands: SBO between 8-row groups along K, LBO between 64-wide groups along M / N.)
__device__ __forceinline__ uint64_t sw128_desc(uint32_t saddr, uint32_t lbo = 16, uint32_t sbo = 1024) {
  return static_cast<uint64_t>((saddr & 0x3FFFF) >> 4) | (static_cast<uint64_t>((lbo & 0x3FFFF) >> 4) << 16) |
         (static_cast<uint64_t>((sbo & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

// The 4 floats of the 16-byte chunk at p rounded to TF32 in place (wgmma itself truncates the low 13
// bits; rounded first, TF32 results match the WMMA engine's round-to-nearest); SPLIT: also
// lo = tf32(x - hi) at p + lo_offset (0 where hi is infinite, so that inf * w stays inf, not NaN).
template <typename T, bool SPLIT> __device__ __forceinline__ void round_tf32(unsigned char* p, int lo_offset) {
  if constexpr (sizeof(T) == 4) {
    Vec<float, 4> v = load_vec<float, 4>(reinterpret_cast<const float*>(p)), lo;
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const float hi = wmma::__float_to_tf32(v.v[l]);
      lo.v[l] = isinf(hi) ? 0.0f : wmma::__float_to_tf32(v.v[l] - hi);
      v.v[l] = hi;
    }
    store_vec<float, 4>(reinterpret_cast<float*>(p), v);
    if constexpr (SPLIT) store_vec<float, 4>(reinterpret_cast<float*>(p + lo_offset), lo);
  }
}

// Dynamic shared memory rounded up to the next 1024 bytes (swizzle atoms are 1024-byte aligned: the
// hardware swizzles address bits); kernels using it ask for 1024 bytes of slack. Returns the aligned
// generic pointer and sets base to its shared-window address.
__device__ __forceinline__ unsigned char* aligned_tiles(unsigned char* smem_raw, uint32_t& base) {
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  base = (raw + 1023u) & ~1023u;
  return smem_raw + (base - raw);
}

// The main loop of both wgmma kernels over KT stages in a STAGES-deep ring: load(slot, kt) issues
// stage kt's cp.async copies, ready(slot) runs on this thread's own landed copies (TF32 rounding),
// issue(slot) issues the stage's wgmma batch. A stage is waited for, fenced for the async proxy
// (tensor cores) and published by the barrier; after that barrier every batch up to kt-2 has retired
// in every warpgroup (wait_group 1 below), so its slot takes stage kt + STAGES - 2.
template <int STAGES, int N, class Load, class Ready, class Issue>
__device__ __forceinline__ void wgmma_mainloop(int KT, float (&acc)[N], Load load, Ready ready, Issue issue) {
  constexpr int PREF = STAGES - 2;
#pragma unroll
  for (int st = 0; st < PREF; ++st) {
    if (st < KT) load(st, st);
    cp_async_commit();  // empty groups keep the group count uniform
  }
  for (int kt = 0; kt < KT; ++kt) {
    cp_async_wait<PREF - 1>();  // stage kt has landed (this thread's copies) ...
    ready(kt % STAGES);
    fence_proxy_async();        // ... is visible to the tensor cores' (async) proxy ...
    __syncthreads();            // ... for every thread; and every batch up to kt-2 has retired
    const int nk = kt + PREF;
    if (nk < KT) load(nk % STAGES, nk);  // the ring slot of batch kt-2
    cp_async_commit();
    fence_regs(acc);
    wgmma_fence();
    issue(kt % STAGES);
    wgmma_commit();
    wgmma_wait<1>();  // batch kt-1 has retired: its slot is refilled next iteration, after the barrier
    fence_regs(acc);
  }
}

// The end of a wgmma main loop: every batch and copy retired, then the accumulators of the block's
// 128 x N tile staged in shared memory as fp32 rows of pitch ldc (reusing the ring). Accumulator
// layout of m64nN: warp w of warpgroup wg holds rows 64 wg + 16 w .. + 15; in each 8-column group j,
// lane l holds (l / 4, 2 (l % 4) + {0, 1}) in acc[4 j + {0, 1}] and 8 rows lower in acc[4 j + {2, 3}].
template <int N>
__device__ __forceinline__ void wgmma_stage_acc(float (&acc)[N / 2], float* sC, int ldc, int tid) {
  wgmma_wait<0>();
  fence_regs(acc);
  cp_async_wait<0>();
  __syncthreads();  // the ring is free
  const int lane = tid % 32, row = (tid / 128) * 64 + ((tid % 128) / 32) * 16 + lane / 4;
#pragma unroll
  for (int j = 0; j < N / 8; ++j) {
    const int col = j * 8 + 2 * (lane % 4);
    sC[row * ldc + col] = acc[4 * j];
    sC[row * ldc + col + 1] = acc[4 * j + 1];
    sC[(row + 8) * ldc + col] = acc[4 * j + 2];
    sC[(row + 8) * ldc + col + 1] = acc[4 * j + 3];
  }
  __syncthreads();
}

template <typename T, int BN, int STAGES, bool SPLIT>
__global__ void __launch_bounds__(256, 1) conv_wgmma_kernel(const TcArgs<T> a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || defined(FASTCONV_EMULATION)
  using Cfg = WgmmaCfg<T, BN, STAGES, SPLIT>;
  constexpr int V = Cfg::kV, BK = Cfg::kBK, BM = Cfg::kBM;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  uint32_t base;
  unsigned char* tiles = aligned_tiles(smem_raw, base);  // per stage: A [BM][128 B], then B [BN][128 B]

  const int tid = threadIdx.x, wg = tid / 128;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int n0 = blockIdx.y * BN, g = blockIdx.z;
  const int kc = tid % 8, row0 = tid / 8;                 // chunk column, first row (rows row0 + 32 i)
  const int dst = row0 * 128 + ((kc ^ (row0 & 7)) << 4);  // swizzled byte offset; (row0 + 32 i) & 7 == row0 & 7

  const TcGather<T, Cfg::kAIt, Cfg::kBIt, 32> gather(a, m0, n0, g, row0);
  auto load_stage = [&](int stage, int kt) {
    const int kk = kt * BK + kc * V;
    const auto tap = gather.tap(a, kk);
    unsigned char* sA = tiles + stage * Cfg::kStageBytes + dst;
#pragma unroll
    for (int i = 0; i < Cfg::kAIt; ++i) {
      bool ok;
      const T* src = gather.a_src(a, i, tap, ok);
      cp_async16_ca(sA + i * 32 * 128, src, ok);
    }
    unsigned char* sB = tiles + stage * Cfg::kStageBytes + BM * 128 + dst;
#pragma unroll
    for (int i = 0; i < Cfg::kBIt; ++i) {
      bool ok;
      const T* src = gather.b_src(a, i, tap, kk, ok);
      cp_async16(sB + i * 32 * 128, src, ok);
    }
  };

  float acc[BN / 2];
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) acc[i] = 0.0f;

  auto ready = [&](int slot) {
    if constexpr (sizeof(T) == 4) {  // TF32: round this thread's chunks (and split them, exact float32)
      unsigned char* st = tiles + slot * Cfg::kStageBytes + dst;
#pragma unroll
      for (int i = 0; i < Cfg::kAIt; ++i) round_tf32<T, SPLIT>(st + i * 32 * 128, Cfg::kLoOffset);
#pragma unroll
      for (int i = 0; i < Cfg::kBIt; ++i) round_tf32<T, SPLIT>(st + BM * 128 + i * 32 * 128, Cfg::kLoOffset);
    }
  };
  auto issue = [&](int slot) {
    const uint32_t sa = base + slot * Cfg::kStageBytes + wg * 64 * 128, sb = base + slot * Cfg::kStageBytes + BM * 128;
#pragma unroll
    for (int ks = 0; ks < Cfg::kSteps; ++ks) {
      const uint64_t ahi = sw128_desc(sa + ks * 32), bhi = sw128_desc(sb + ks * 32);
      if constexpr (SPLIT) {
        Wgmma<T, BN>::run(acc, sw128_desc(sa + Cfg::kLoOffset + ks * 32), bhi);
        Wgmma<T, BN>::run(acc, ahi, sw128_desc(sb + Cfg::kLoOffset + ks * 32));
      }
      Wgmma<T, BN>::run(acc, ahi, bhi);
    }
  };
  wgmma_mainloop<STAGES>((a.Kdim + BK - 1) / BK, acc, load_stage, ready, issue);
  float* sC = reinterpret_cast<float*>(tiles);
  wgmma_stage_acc<BN>(acc, sC, Cfg::kLdc, tid);
  tc_store<T, BM, BN, Cfg::kThreads>(a, sC, Cfg::kLdc, m0, n0, g, tid);
#else
  __trap();  // built without sm_90a: the host never launches this (conv2d_wgmma_ok)
#endif
}

// Raise the dynamic shared-memory limit once per device for each kernel. The flag is keyed on the
// kernel itself (a template argument), not on its type: every tile configuration of one element
// type has the same function type, and a flag shared between them would leave all but the first
// configuration launched at the 48 KB default.
template <auto Kernel> void ensure_smem(int bytes) {
  static std::atomic<unsigned long long> done{0};
  int dev = 0;
  cudaGetDevice(&dev);
  const unsigned long long bit = dev < 64 ? (1ull << dev) : 0ull;
  if (bit && (done.load(std::memory_order_relaxed) & bit)) return;
  if (cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) == cudaSuccess && bit)
    done.fetch_or(bit);
}

template <typename T, int BM, int BN, int WM, int WN, int STAGES>
void launch_tc(const TcArgs<T>& a, int groups, cudaStream_t stream) {
  using Cfg = TcCfg<T, BM, BN, WM, WN, STAGES>;
  constexpr auto kernel = conv_tc_kernel<T, BM, BN, WM, WN, STAGES>;
  ensure_smem<kernel>(Cfg::kSmem);
  const dim3 grid(static_cast<unsigned>((a.M + BM - 1) / BM), static_cast<unsigned>((a.Kg + BN - 1) / BN),
                  static_cast<unsigned>(groups));
  kernel<<<grid, Cfg::kThreads, Cfg::kSmem, stream>>>(a);
}

template <typename T, int BN, int STAGES, bool SPLIT>
void launch_wgmma(const TcArgs<T>& a, int groups, cudaStream_t stream) {
  using Cfg = WgmmaCfg<T, BN, STAGES, SPLIT>;
  constexpr auto kernel = conv_wgmma_kernel<T, BN, STAGES, SPLIT>;
  ensure_smem<kernel>(Cfg::kSmem);
  const dim3 grid(static_cast<unsigned>((a.M + Cfg::kBM - 1) / Cfg::kBM), static_cast<unsigned>((a.Kg + BN - 1) / BN),
                  static_cast<unsigned>(groups));
  kernel<<<grid, Cfg::kThreads, Cfg::kSmem, stream>>>(a);
}

// The wgmma kernels run where they were built for (sm_90a: FASTCONV_SM90A) and the device is compute
// capability 9.0; FASTCONV_WGMMA=0 in the environment selects the WMMA kernels instead (read at every
// call, so that a benchmark can compare the two in one process).
}  // namespace

bool conv2d_wgmma_ok() {
#ifdef FASTCONV_SM90A
  const char* e = std::getenv("FASTCONV_WGMMA");
  int dev = 0, major = 0, minor = 0;
  if ((e && e[0] == '0') || cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
    return false;
  return major == 9 && minor == 0;
#else
  return false;
#endif
}

namespace {

// 128 x BN tiles, one block per SM (about 192 KB of shared memory each): the N width whose waves of
// blocks cost least, a wider tile counted cheaper per column: operand bytes per FLOP fall from 1/43
// (BN 64) to 1/64 (128) and 1/85 (256), and operand reads from L2 are the likely limit, so a column
// costs 1/0.6, 1/0.85 and 1 (padding columns count in full: AlexNet conv2's 192 channels run as one
// 256-wide tile, not three 64-wide ones). To be fitted on the GPU.
// Split TF32 doubles a stage (A and B twice): 256-wide tiles would leave two stages, so at most 128.
template <typename T, bool SPLIT>
void conv_wgmma(const TcArgs<T>& a, int groups, int sm_count, cudaStream_t stream) {
  const int64_t mt = (a.M + 127) / 128;
  auto cost = [&](int bn, double eff) {
    const int64_t blocks = mt * ((a.Kg + bn - 1) / bn) * groups;
    return static_cast<double>((blocks + sm_count - 1) / sm_count) * bn / eff;
  };
  const double c256 = a.Kg > 128 && !SPLIT ? cost(256, 1.0) : 1e300, c128 = a.Kg > 64 ? cost(128, 0.85) : 1e300;
  const double c64 = cost(64, 0.6);
  if constexpr (SPLIT) {
    if (c128 <= c64)
      launch_wgmma<T, 128, 3, true>(a, groups, stream);
    else
      launch_wgmma<T, 64, 4, true>(a, groups, stream);
  } else if (c256 <= c128 && c256 <= c64) {
    launch_wgmma<T, 256, 4, false>(a, groups, stream);
  } else if (c128 <= c64) {
    launch_wgmma<T, 128, 6, false>(a, groups, stream);
  } else {
    launch_wgmma<T, 64, 8, false>(a, groups, stream);
  }
}

template <typename T>
void conv_tc(const Conv2dParams& p, const void* x, const void* w, void* y, const EpilogueArgs& ep, bool allow_tf32,
             int sm_count, cudaStream_t stream) {
  TcArgs<T> a;
  a.x = static_cast<const T*>(x);
  a.w = static_cast<const T*>(w);
  a.y = static_cast<T*>(y);
  a.yt = p.y;
  a.M = p.y.n * p.y.h * p.y.w;
  a.H = static_cast<int>(p.x.h); a.W = static_cast<int>(p.x.w); a.C = static_cast<int>(p.x.c);
  a.Cg = static_cast<int>(p.x.c / p.groups);
  a.Kg = static_cast<int>(p.y.c / p.groups);
  a.S = static_cast<int>(p.w.w);
  a.PQ = static_cast<int>(p.y.h * p.y.w);
  a.Q = static_cast<int>(p.y.w);
  a.Kdim = static_cast<int>(p.w.h * p.w.w) * a.Cg;
  a.sh = static_cast<int>(p.stride_h); a.sw = static_cast<int>(p.stride_w);
  a.ph = static_cast<int>(p.pad_h0); a.pw = static_cast<int>(p.pad_w0);
  a.dh = static_cast<int>(p.dil_h); a.dw = static_cast<int>(p.dil_w);
  a.ep = Epi<T>::make(ep);
  constexpr int V = kVec16<T>;
  const bool nhwc = nhwc_dense(p.y);
  auto al = [](const void* q) { return (reinterpret_cast<uintptr_t>(q) & 15) == 0; };
  a.y_dense = nhwc;
  a.y_vec = (nhwc || (p.y.sc == 1 && p.y.sn % V == 0 && p.y.sh % V == 0 && p.y.sw % V == 0)) && a.Kg % V == 0 &&
            al(y) && (!ep.residual || al(ep.residual));
  if (a.M == 0) return;
  const int G = static_cast<int>(p.groups);
  // float32 without TF32: split TF32, which only the wgmma engine has (conv2d_fwd_path routes exact
  // float32 here only when conv2d_wgmma_ok()).
  if constexpr (sizeof(T) == 4) {
    if (!allow_tf32) return conv_wgmma<T, true>(a, G, sm_count, stream);
  }
  if (conv2d_wgmma_ok()) return conv_wgmma<T, false>(a, G, sm_count, stream);
  auto blocks = [&](int bm, int bn) { return ((a.M + bm - 1) / bm) * ((a.Kg + bn - 1) / bn) * G; };
  // Largest tile that still gives every SM a block; 64-wide N tiles when Kg is small.
  if (a.Kg > 64 && blocks(128, 128) >= sm_count)
    launch_tc<T, 128, 128, 64, 32, 4>(a, G, stream);
  else if (a.Kg > 32 && blocks(128, 64) >= sm_count)
    launch_tc<T, 128, 64, 64, 32, 4>(a, G, stream);
  else
    launch_tc<T, 64, 64, 32, 32, 4>(a, G, stream);
}

// ---- grad_weight on tensor cores: per group, DW[k][j] = sum_m DY[m][k] * Xcol[m][j] with
// m = (n, p, q) the reduction, k the output channel (Kg), j = (r, s, c), c fastest (Cg*R*S).
// Both operands are stored m-major in shared memory (rows of m, channels contiguous): DY rows are
// plain NHWC rows of grad_out, Xcol rows are gathered like the forward A operand, 16 bytes at a time.
// A is then column-major (k x m) and B row-major (m x j) for WMMA. The m range is split over
// blockIdx.z / groups; each split writes fp32 partials [split][K][Cg*R*S], summed afterwards.
template <typename T> struct WgArgs {
  const T* dy;  // [N, P, Q, K] contiguous
  const T* x;   // [N, H, W, C] contiguous
  float* ws;    // [splits][K][Ngemm]
  int64_t M;    // N * P * Q
  int64_t chunk;  // m per split, a multiple of the tile depth
  int K, Kg, C, Cg, H, W, S, PQ, Q, Ngemm, groups;
  int sh, sw, ph, pw, dh, dw;
};

// Source of the 16-byte Xcol chunk of reduction row m (output pixel) whose filter tap sits at
// (roff, soff) from the pixel's window corner and whose channels start at base; ok in: the row and
// column exist; out: and the tap is inside the image (else a valid dummy, zero-filled).
template <typename T>
__device__ __forceinline__ const T* xcol_src(const WgArgs<T>& a, const T* base, int roff, int soff, int64_t m,
                                             bool& ok) {
  if (!ok) return a.x;
  const Pixel o = pixel_of(m, a.PQ, a.Q);
  const int h = o.p * a.sh + roff, w = o.q * a.sw + soff;
  ok = static_cast<unsigned>(h) < static_cast<unsigned>(a.H) && static_cast<unsigned>(w) < static_cast<unsigned>(a.W);
  return ok ? base + ((o.n * a.H + h) * a.W + w) * a.C : a.x;
}

template <typename T, int BM, int BN, int STAGES>
struct WgCfg {
  static constexpr int kBM = BM, kBN = BN;
  static constexpr int kV = 16 / sizeof(T);
  static constexpr int kBK = 64 / sizeof(T);             // m rows per stage (32 fp16/bf16, 16 fp32)
  static constexpr int kLdA = BM + kV, kLdB = BN + kV;  // +16 bytes: ldmatrix rows on distinct banks
  static constexpr int kThreads = 256;                 // 8 warps: 2 (k) x 4 (j), warp tile 64 x 32
  static constexpr int kWM = BM / 2, kWN = BN / 4;
  static constexpr int kAChunks = kBK * BM / kV, kBChunks = kBK * BN / kV;
  static constexpr int kPipeBytes = STAGES * kBK * (kLdA + kLdB) * static_cast<int>(sizeof(T));
  static constexpr int kLdc = BN + 4;
  static constexpr int kEpiBytes = BM * kLdc * 4;
  static constexpr int kSmem = kPipeBytes > kEpiBytes ? kPipeBytes : kEpiBytes;
  static_assert(kAChunks % kThreads == 0 && kBChunks % kThreads == 0, "chunks split evenly over the threads");
  static_assert(kBK % MmaT<T>::kK == 0, "fragment depth");
};

template <typename T, int BM, int BN, int STAGES>
__global__ void __launch_bounds__(256) wgrad_tc_kernel(const WgArgs<T> a) {
  using Cfg = WgCfg<T, BM, BN, STAGES>;
  using In = typename MmaT<T>::In;
  constexpr int V = Cfg::kV, BK = Cfg::kBK, LDA = Cfg::kLdA, LDB = Cfg::kLdB, MK = MmaT<T>::kK;
  constexpr int WM = Cfg::kWM, WN = Cfg::kWN, FM = WM / 16, FN = WN / 16;
  constexpr int ACPR = BM / V, BCPR = BN / V;  // chunks per smem row
  constexpr int AIT = Cfg::kAChunks / Cfg::kThreads, BIT = Cfg::kBChunks / Cfg::kThreads;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sA = reinterpret_cast<T*>(smem_raw);   // [STAGES][BK][LDA]  (m rows, k contiguous)
  T* sB = sA + STAGES * BK * LDA;           // [STAGES][BK][LDB]  (m rows, j contiguous)

  const int tid = threadIdx.x, warp = tid / 32, wm = warp / 4, wn = warp % 4;
  const int g = blockIdx.z % a.groups, split = blockIdx.z / a.groups;
  const int k0 = blockIdx.x * BM, j0 = blockIdx.y * BN;
  const int64_t mb = split * a.chunk, me = min(a.M, mb + a.chunk);

  // A chunks: fixed k column per thread (the same for every i since kThreads % ACPR == 0).
  const int a_col = (tid % ACPR) * V;
  const bool a_ok = k0 + a_col < a.Kg;
  const T* a_src = a.dy + static_cast<int64_t>(g) * a.Kg + k0 + (a_ok ? a_col : 0);
  // B chunks: fixed j column per thread; decode (r, s, c) once.
  const int b_col = (tid % BCPR) * V;
  const int jj = j0 + b_col;
  const bool b_ok = jj < a.Ngemm;
  const int b_rs = jj / a.Cg, b_c = jj - b_rs * a.Cg;
  const int b_roff = (b_rs / a.S) * a.dh - a.ph, b_soff = (b_rs % a.S) * a.dw - a.pw;
  const T* b_src = a.x + static_cast<int64_t>(g) * a.Cg + (b_ok ? b_c : 0);

  auto load_stage = [&](int stage, int64_t m_base) {
#pragma unroll
    for (int i = 0; i < AIT; ++i) {
      const int row = tid / ACPR + i * (Cfg::kThreads / ACPR);
      const int64_t m = m_base + row;
      const bool ok = a_ok && m < me;
      cp_async16(sA + (stage * BK + row) * LDA + a_col, ok ? a_src + m * a.K : a.dy, ok);
    }
#pragma unroll
    for (int i = 0; i < BIT; ++i) {
      const int row = tid / BCPR + i * (Cfg::kThreads / BCPR);
      const int64_t m = m_base + row;
      bool ok = b_ok && m < me;
      const T* src = xcol_src(a, b_src, b_roff, b_soff, m, ok);
      cp_async16(sB + (stage * BK + row) * LDB + b_col, src, ok);
    }
  };

  wmma::fragment<wmma::accumulator, 16, 16, MK, float> acc[FM][FN];
#pragma unroll
  for (int i = 0; i < FM; ++i)
#pragma unroll
    for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  const int KT = mb < me ? static_cast<int>((me - mb + BK - 1) / BK) : 0;
#pragma unroll
  for (int st = 0; st < STAGES - 1; ++st) {
    if (st < KT) load_stage(st, mb + static_cast<int64_t>(st) * BK);
    cp_async_commit();
  }
  for (int kt = 0; kt < KT; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    const int nk = kt + STAGES - 1;
    if (nk < KT) load_stage(nk % STAGES, mb + static_cast<int64_t>(nk) * BK);
    cp_async_commit();
    const T* tA = sA + (kt % STAGES) * BK * LDA + wm * WM;
    const T* tB = sB + (kt % STAGES) * BK * LDB + wn * WN;
#pragma unroll
    for (int ks = 0; ks < BK; ks += MK) {
      wmma::fragment<wmma::matrix_a, 16, 16, MK, In, wmma::col_major> fa[FM];
      wmma::fragment<wmma::matrix_b, 16, 16, MK, In, wmma::row_major> fb[FN];
#pragma unroll
      for (int i = 0; i < FM; ++i) {
        wmma::load_matrix_sync(fa[i], tA + ks * LDA + i * 16, LDA);
        if constexpr (sizeof(T) == 4) {
#pragma unroll
          for (int t = 0; t < fa[i].num_elements; ++t) fa[i].x[t] = wmma::__float_to_tf32(fa[i].x[t]);
        }
      }
#pragma unroll
      for (int j = 0; j < FN; ++j) {
        wmma::load_matrix_sync(fb[j], tB + ks * LDB + j * 16, LDB);
        if constexpr (sizeof(T) == 4) {
#pragma unroll
          for (int t = 0; t < fb[j].num_elements; ++t) fb[j].x[t] = wmma::__float_to_tf32(fb[j].x[t]);
        }
      }
#pragma unroll
      for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();
  float* sC = reinterpret_cast<float*>(smem_raw);
  constexpr int LDC = Cfg::kLdc;
#pragma unroll
  for (int i = 0; i < FM; ++i)
#pragma unroll
    for (int j = 0; j < FN; ++j)
      wmma::store_matrix_sync(sC + (wm * WM + i * 16) * LDC + wn * WN + j * 16, acc[i][j], LDC, wmma::mem_row_major);
  __syncthreads();
  // Every in-range cell is written, also by splits whose m range is empty (zeros).
  float* out = a.ws + (static_cast<int64_t>(split) * a.K + static_cast<int64_t>(g) * a.Kg) * a.Ngemm;
  for (int id = tid; id < BM * BN; id += Cfg::kThreads) {
    const int row = id / BN, col = id - (id / BN) * BN;
    if (k0 + row < a.Kg && j0 + col < a.Ngemm)
      out[static_cast<int64_t>(k0 + row) * a.Ngemm + j0 + col] = sC[row * LDC + col];
  }
}

// ---- grad_weight on wgmma (sm_90a, fp16 / bf16): the same GEMM as wgrad_tc_kernel, DW[k][j] =
// sum_m DY[m][k] * Xcol[m][j], with both operands MN-major (transposed: imm-trans 1). A stage holds
// 64 reduction rows m; each operand is stored as 64-column panels (k or j), one 128-byte swizzled row
// per m (16-byte chunk c of row r at chunk c ^ (r % 8), as TMA's 128-byte swizzle writes it), the
// panels one after another. Descriptor: SBO = 1024 (between 8-row groups along the reduction),
// LBO = one panel (between 64-wide groups along M or N); a k-step (16 rows) moves the start by 2048
// bytes. Warpgroup w owns output channels 64 w .. 64 w + 63 (A panel w) against all 128 columns.
// The pipeline is the forward's (two batches in flight at most, a slot refilled two iterations
// after its batch was issued); partial sums go to the same fp32 workspace as wgrad_tc_kernel's.
template <typename T, int STAGES>
struct WgradWgmmaCfg {
  static constexpr int kBM = 128, kBN = 128, kBK = 64, kThreads = 256;
  static constexpr int kV = 16 / sizeof(T);
  static constexpr int kPanel = kBK * 128;        // 64 rows of 128 bytes
  static constexpr int kStageBytes = 4 * kPanel;  // A: 2 panels (k), B: 2 panels (j)
  static constexpr int kLdc = kBN + 4;
  static constexpr int kPipeBytes = STAGES * kStageBytes, kEpiBytes = kBM * kLdc * 4;
  static constexpr int kSmem = (kPipeBytes > kEpiBytes ? kPipeBytes : kEpiBytes) + 1024;
  static_assert(sizeof(T) == 2, "MN-major wgmma operands are 16-bit");
  static_assert(STAGES >= 3, "a stage is refilled two iterations after its batch was issued");
};

template <typename T, int STAGES>
__global__ void __launch_bounds__(256, 1) wgrad_wgmma_kernel(const WgArgs<T> a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || defined(FASTCONV_EMULATION)
  using Cfg = WgradWgmmaCfg<T, STAGES>;
  constexpr int V = Cfg::kV, BK = Cfg::kBK, PANEL = Cfg::kPanel;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  uint32_t base;
  unsigned char* tiles = aligned_tiles(smem_raw, base);  // per stage: A panels 0, 1, then B panels 0, 1

  const int tid = threadIdx.x, wg = tid / 128;
  const int g = blockIdx.z % a.groups, split = blockIdx.z / a.groups;
  const int k0 = blockIdx.x * Cfg::kBM, j0 = blockIdx.y * Cfg::kBN;
  const int64_t mb = split * a.chunk, me = min(a.M, mb + a.chunk);
  // This thread's 16-byte chunk: column c (of 16 per row: two panels of 8), rows row0 + 16 i.
  const int c = tid % 16, row0 = tid / 16;
  const int dst = (c / 8) * PANEL + row0 * 128 + (((c % 8) ^ (row0 & 7)) << 4);  // (row0 + 16 i) & 7 == row0 & 7
  const bool a_ok = k0 + c * V < a.Kg;
  const T* a_src = a.dy + static_cast<int64_t>(g) * a.Kg + k0 + (a_ok ? c * V : 0);
  const int jj = j0 + c * V;
  const bool b_ok = jj < a.Ngemm;
  const int b_rs = jj / a.Cg, b_c = jj - b_rs * a.Cg;
  const int b_roff = (b_rs / a.S) * a.dh - a.ph, b_soff = (b_rs % a.S) * a.dw - a.pw;
  const T* b_src = a.x + static_cast<int64_t>(g) * a.Cg + (b_ok ? b_c : 0);

  auto load_stage = [&](int stage, int kt) {
    const int64_t m_base = mb + static_cast<int64_t>(kt) * BK;
    unsigned char* sA = tiles + stage * Cfg::kStageBytes + dst;
    unsigned char* sB = sA + 2 * PANEL;
#pragma unroll
    for (int i = 0; i < BK / 16; ++i) {
      const int64_t m = m_base + row0 + 16 * i;
      const bool in = m < me;
      cp_async16(sA + i * 16 * 128, in && a_ok ? a_src + m * a.K : a.dy, in && a_ok);
      bool ok = in && b_ok;
      const T* src = xcol_src(a, b_src, b_roff, b_soff, m, ok);
      cp_async16(sB + i * 16 * 128, src, ok);
    }
  };

  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
  auto issue = [&](int slot) {
    const uint32_t sa = base + slot * Cfg::kStageBytes + wg * PANEL, sb = base + slot * Cfg::kStageBytes + 2 * PANEL;
#pragma unroll
    for (int ks = 0; ks < BK / 16; ++ks)
      WgmmaMN<T, 128>::run(acc, sw128_desc(sa + ks * 2048, PANEL, 1024), sw128_desc(sb + ks * 2048, PANEL, 1024));
  };
  const int KT = mb < me ? static_cast<int>((me - mb + BK - 1) / BK) : 0;
  wgmma_mainloop<STAGES>(KT, acc, load_stage, [](int) {}, issue);
  float* sC = reinterpret_cast<float*>(tiles);
  constexpr int LDC = Cfg::kLdc;
  wgmma_stage_acc<Cfg::kBN>(acc, sC, LDC, tid);
  // Every in-range cell is written, also by splits whose m range is empty (zeros).
  float* out = a.ws + (static_cast<int64_t>(split) * a.K + static_cast<int64_t>(g) * a.Kg) * a.Ngemm;
  for (int id = tid; id < Cfg::kBM * Cfg::kBN; id += Cfg::kThreads) {
    const int r = id / Cfg::kBN, col = id - r * Cfg::kBN;
    if (k0 + r < a.Kg && j0 + col < a.Ngemm) out[static_cast<int64_t>(k0 + r) * a.Ngemm + j0 + col] = sC[r * LDC + col];
  }
#else
  __trap();  // built without sm_90a: the host never launches this (conv2d_wgmma_ok)
#endif
}

constexpr int kWgBM = 128, kWgBN = 128, kWgStages = 4;

template <typename T>
int wgrad_splits(const Conv2dParams& p, int sm_count) {
  const int64_t G = p.groups, Kg = p.y.c / G, Ng = p.w.h * p.w.w * (p.x.c / G);
  const int64_t tiles = ((Kg + kWgBM - 1) / kWgBM) * ((Ng + kWgBN - 1) / kWgBN) * G;
  const int64_t M = p.y.n * p.y.h * p.y.w;
  int64_t s = (2LL * sm_count + tiles - 1) / tiles;
  s = std::min<int64_t>(s, (M + 511) / 512);  // at least ~512 reduction rows per split
  s = std::min<int64_t>(s, 65535 / G);
  return static_cast<int>(std::max<int64_t>(1, s));
}

// One weight-gradient kernel over splits x groups of the reduction: each split's m range is a multiple
// of the kernel's rows per stage; both kernels tile Kg x Ngemm by 128 x 128 (wgrad_splits' count).
template <class Cfg, auto Kernel, typename T>
void launch_wgrad(WgArgs<T>& a, int splits, cudaStream_t stream) {
  static_assert(Cfg::kBM == kWgBM && Cfg::kBN == kWgBN, "wgrad_splits counts 128 x 128 tiles");
  a.chunk = ((a.M + splits - 1) / splits + Cfg::kBK - 1) / Cfg::kBK * Cfg::kBK;
  ensure_smem<Kernel>(Cfg::kSmem);
  const dim3 grid(static_cast<unsigned>((a.Kg + Cfg::kBM - 1) / Cfg::kBM),
                  static_cast<unsigned>((a.Ngemm + Cfg::kBN - 1) / Cfg::kBN), static_cast<unsigned>(splits * a.groups));
  Kernel<<<grid, Cfg::kThreads, Cfg::kSmem, stream>>>(a);
}

template <typename T>
void wgrad_tc(const Conv2dParams& p, const void* dy, const void* x, float* ws, int splits, cudaStream_t stream) {
  using Cfg = WgCfg<T, kWgBM, kWgBN, kWgStages>;
  WgArgs<T> a;
  a.dy = static_cast<const T*>(dy);
  a.x = static_cast<const T*>(x);
  a.ws = ws;
  a.M = p.y.n * p.y.h * p.y.w;
  a.groups = static_cast<int>(p.groups);
  a.K = static_cast<int>(p.y.c); a.Kg = a.K / a.groups;
  a.C = static_cast<int>(p.x.c); a.Cg = a.C / a.groups;
  a.H = static_cast<int>(p.x.h); a.W = static_cast<int>(p.x.w);
  a.S = static_cast<int>(p.w.w);
  a.PQ = static_cast<int>(p.y.h * p.y.w); a.Q = static_cast<int>(p.y.w);
  a.Ngemm = static_cast<int>(p.w.h * p.w.w) * a.Cg;
  a.sh = static_cast<int>(p.stride_h); a.sw = static_cast<int>(p.stride_w);
  a.ph = static_cast<int>(p.pad_h0); a.pw = static_cast<int>(p.pad_w0);
  a.dh = static_cast<int>(p.dil_h); a.dw = static_cast<int>(p.dil_w);
  if constexpr (sizeof(T) == 2) {
    if (conv2d_wgmma_ok()) return launch_wgrad<WgradWgmmaCfg<T, 6>, wgrad_wgmma_kernel<T, 6>>(a, splits, stream);
  }
  launch_wgrad<Cfg, wgrad_tc_kernel<T, kWgBM, kWgBN, kWgStages>>(a, splits, stream);
}

}  // namespace

void conv2d_fwd_tc(const Conv2dParams& p, DType dt, const void* x, const void* w, void* y, const EpilogueArgs& ep,
                   bool allow_tf32, int sm_count, cudaStream_t stream) {
  switch (dt) {
    case DType::kF16: conv_tc<__half>(p, x, w, y, ep, true, sm_count, stream); break;
    case DType::kBF16: conv_tc<__nv_bfloat16>(p, x, w, y, ep, true, sm_count, stream); break;
    case DType::kF32: conv_tc<float>(p, x, w, y, ep, allow_tf32, sm_count, stream); break;
    default: break;  // no tensor-core path for fp64; conv2d_fwd_path never routes it here
  }
}

}  // namespace cuda
}  // namespace fastconv

namespace fastconv {
namespace cuda {

int conv2d_bwd_weight_tc_splits(const Conv2dParams& p, DType dt, int sm_count) {
  return dt == DType::kF32 ? wgrad_splits<float>(p, sm_count) : wgrad_splits<__half>(p, sm_count);
}

void conv2d_bwd_weight_tc(const Conv2dParams& p, DType dt, const void* dy, const void* x, float* ws, int splits,
                          cudaStream_t stream) {
  switch (dt) {
    case DType::kF16: wgrad_tc<__half>(p, dy, x, ws, splits, stream); break;
    case DType::kBF16: wgrad_tc<__nv_bfloat16>(p, dy, x, ws, splits, stream); break;
    case DType::kF32: wgrad_tc<float>(p, dy, x, ws, splits, stream); break;
    default: break;
  }
}

}  // namespace cuda
}  // namespace fastconv
