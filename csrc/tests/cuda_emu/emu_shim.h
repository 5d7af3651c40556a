// Host emulation of the CUDA kernel files (csrc/cuda/*_kernels.cu): the kernel sources compile as C++
// for the CPU, each block runs as blockDim.x real threads with a real barrier for __syncthreads and
// per-block shared memory, blocks one after another. tests/cuda_emu.py rewrites every
// `k<<<grid, block, smem, s>>>(args)` launch into `k | EmuLaunch(grid, block, smem, s).call(args)` and
// `extern __shared__` arrays into the launch's dynamic shared memory, and builds the library; the tests
// compare it with torch in float64 on every CI run, with no GPU. WMMA (include/mma.h) computes each
// fragment whole in every thread of the warp; a cp.async copy lands at the latest moment the PTX
// allows. What it cannot see: timing, warp-level scheduling, and memory-model races between blocks
// (blocks never overlap here).
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct EmuIdx { unsigned x = 0, y = 0, z = 0; };
extern thread_local EmuIdx threadIdx, blockIdx;
extern EmuIdx blockDim, gridDim;
typedef struct CUstream_st* cudaStream_t;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define FASTCONV_EMULATION 1
// One block runs at a time, so a function-local static is the block's shared memory.
#define __shared__ static

// Faults the GPU would raise, recorded here (the access itself is served) and reported by
// emu_take_error(): a misaligned 16-byte vector access, a launch the GPU would refuse.
void emu_fail(const char* what);
#define FASTCONV_CHECK_VEC_ADDRESS(p) \
  do { if (reinterpret_cast<uintptr_t>(p) & 15) emu_fail("misaligned 16-byte vector access"); } while (0)

void emu_syncthreads();
inline void __syncthreads() { emu_syncthreads(); }
template <class T> inline T __ldg(const T* p) { return *p; }
inline unsigned __umulhi(unsigned a, unsigned b) { return static_cast<unsigned>((uint64_t{a} * b) >> 32); }
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline double atomicAdd(double* p, double v) { return std::atomic_ref<double>(*p).fetch_add(v); }
using std::isinf;
using std::isnan;
using std::max;
using std::min;
using std::sqrt;

// 16-bit types: storage and round-to-nearest-even conversions, as cuda_fp16.h / cuda_bf16.h.
struct __half { uint16_t bits; };
struct __nv_bfloat16 { uint16_t bits; };
inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.bits, 2);
  return static_cast<float>(f);
}
inline __half __float2half_rn(float v) {
  const _Float16 f = static_cast<_Float16>(v);
  __half h;
  std::memcpy(&h.bits, &f, 2);
  return h;
}
inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t u = uint32_t(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  const uint32_t r = (u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return __nv_bfloat16{static_cast<uint16_t>(r)};
}

// The runtime calls the launchers make: the device, and the opt-in above 48 KB of dynamic shared
// memory, which the emulator enforces per kernel as the GPU does.
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
cudaError_t emu_set_max_dynamic_shared(const void* kernel, int bytes);
template <class F> cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute, int bytes) {
  return emu_set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), bytes);
}
unsigned char* emu_dynamic_shared();  // the running launch's dynamic shared memory

// cp.async as the PTX defines it: a copy lands at some point between its issue and the
// cp.async.wait_group that retires its group. Here it lands as late as allowed, at the wait, so a
// read of shared memory before its wait (or before the __syncthreads after another thread's wait)
// sees stale bytes and fails the comparison. 16 bytes from global memory, or zeros when !valid
// (src-size 0). Copies not yet retired when the block ends are dropped.
struct EmuCopy {
  void* dst;
  const void* src;
  bool valid;
};
inline thread_local std::vector<EmuCopy> emu_open_group;                // issued, not yet committed
inline thread_local std::vector<std::vector<EmuCopy>> emu_pending;      // committed, oldest first
// Shared memory that an in-flight wgmma of the block reads, per 16-byte chunk (emu_wgmma.h).
std::atomic<int>* emu_inflight_chunk(const void* smem);
inline void cp_async16(void* smem, const void* gmem, bool valid) {
  FASTCONV_CHECK_VEC_ADDRESS(smem);
  if (valid) FASTCONV_CHECK_VEC_ADDRESS(gmem);
  if (std::atomic<int>* c = emu_inflight_chunk(smem); c && c->load() > 0)
    emu_fail("cp.async into shared memory that an in-flight wgmma reads");
  emu_open_group.push_back({smem, gmem, valid});
}
inline void cp_async_commit() {
  emu_pending.push_back(std::move(emu_open_group));
  emu_open_group.clear();
}
template <int N> inline void cp_async_wait() {
  while (emu_pending.size() > static_cast<size_t>(N)) {
    for (const EmuCopy& c : emu_pending.front()) {
      if (c.valid) std::memcpy(c.dst, c.src, 16);
      else std::memset(c.dst, 0, 16);
    }
    emu_pending.erase(emu_pending.begin());
  }
}
inline void emu_drop_copies() {
  emu_open_group.clear();
  emu_pending.clear();
}

// The device's compute capability as major * 10 + minor (emu_set_arch; 90 by default).
enum cudaDeviceAttr { cudaDevAttrComputeCapabilityMajor = 75, cudaDevAttrComputeCapabilityMinor = 76 };
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);

// Runs f on every thread of every block of the grid (blocks in order, threads concurrently), with
// smem bytes of dynamic shared memory; kernel: for the shared-memory limit.
void emu_run(const void* kernel, dim3 grid, dim3 block, size_t smem, const std::function<void()>& f);

struct EmuLaunch {
  dim3 grid, block;
  size_t smem;
  EmuLaunch(dim3 g, dim3 b, size_t s = 0, cudaStream_t = nullptr) : grid(g), block(b), smem(s) {}
  template <class... A> auto call(A... a) const { return std::make_pair(*this, std::make_tuple(a...)); }
};
template <class... P, class... A>
void operator|(void (*kernel)(P...), const std::pair<EmuLaunch, std::tuple<A...>>& launch) {
  emu_run(reinterpret_cast<const void*>(kernel), launch.first.grid, launch.first.block, launch.first.smem,
          [&] { std::apply([&](const auto&... a) { kernel(static_cast<P>(a)...); }, launch.second); });
}

#include "emu_wgmma.h"
