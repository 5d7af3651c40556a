// Hopper's warpgroup MMA under the host emulation (see emu_shim.h): the stand-ins for the kernel
// files' wgmma wrappers (csrc/cuda/wgmma_ops.cuh and the fences of conv2d_tc_kernels.cu).
// A wgmma.mma_async may read its operands at any moment between its issue and the wgmma.wait_group
// that retires its group. Here it reads them at both ends: its products are computed when issued
// (operands not yet landed give wrong sums) and again when retired, and a difference is a fault
// (shared memory changed under it); the accumulators change at the retirement. While it is in
// flight, the chunks it reads are marked for the whole block, and a cp.async issued into one of
// them is a fault too (the copy itself lands later, at its own wait). Each thread computes its own share of D in the m64nN fragment layout (warp w of the
// warpgroup: rows 16 w + lane / 4 (+ 8); columns 8 j + 2 (lane % 4) (+ 1)). Operands are decoded
// from the shared-memory descriptors as the hardware reads them, 128-byte swizzle (the byte address's
// bits 4-6 XOR bits 7-9): K-major (Wgmma: 128 bytes of K per row, 8-row groups SBO bytes apart) or
// MN-major (WgmmaMN, imm-trans 1: 64 16-bit MN elements per row, one row per k, 8-row groups along K
// SBO apart, 64-wide groups along MN LBO apart); other layouts, and a start address off its swizzle
// atom's first row (MN-major: off the atom), are reported as faults.
#pragma once
#include "emu_shim.h"

size_t emu_dynamic_shared_size();

// Shared-window addresses are offsets from the launch's dynamic shared memory.
inline size_t __cvta_generic_to_shared(const void* p) {
  const auto* c = static_cast<const unsigned char*>(p);
  if (c < emu_dynamic_shared() || c > emu_dynamic_shared() + emu_dynamic_shared_size())
    emu_fail("__cvta_generic_to_shared: not a shared-memory address");
  return static_cast<size_t>(c - emu_dynamic_shared());
}

inline void cp_async16_ca(void* smem, const void* gmem, bool valid) { cp_async16(smem, gmem, valid); }
inline void fence_proxy_async() {}
inline void wgmma_fence() {}
template <int N> inline void fence_regs(float (&)[N]) {}

inline float emu_operand(const __half& v) { return __half2float(v); }
inline float emu_operand(const __nv_bfloat16& v) { return __bfloat162float(v); }
inline float emu_operand(const float& v) {  // TF32: the low 13 mantissa bits are not used
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u &= 0xffffe000u;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

// Shared-window offset of element (mn, k) (mn: the row of A or column of B; k: the reduction index)
// of a 128-byte-swizzled operand. K-major: rows of 128 bytes of K per mn, 8-row groups SBO apart.
// MN-major (transposed): rows of 128 bytes of MN per k (64 16-bit elements), 8-row groups along K
// SBO apart, 64-wide groups along MN LBO apart. The swizzle XORs address bits 7-9 into bits 4-6.
template <class T, bool MN> inline uint32_t emu_desc_addr(uint64_t desc, int mn, int k) {
  const uint32_t start = static_cast<uint32_t>(desc & 0x3FFF) << 4;
  const uint32_t lbo = static_cast<uint32_t>((desc >> 16) & 0x3FFF) << 4;
  const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3FFF) << 4;
  constexpr int E = static_cast<int>(sizeof(T)), ROW = 128 / E;  // elements per 128-byte row
  const uint32_t logical = MN ? start + (mn % ROW) * E + (k % 8) * 128 + (mn / ROW) * lbo + (k / 8) * sbo
                              : start + (mn / 8) * sbo + (mn % 8) * 128 + k * E;
  return logical ^ (((logical >> 7) & 7u) << 4);
}

template <class T, bool MN> inline float emu_desc_load(uint64_t desc, int mn, int k) {
  const uint32_t phys = emu_desc_addr<T, MN>(desc, mn, k);
  if (phys + sizeof(T) > emu_dynamic_shared_size()) {
    emu_fail("wgmma: operand outside the dynamic shared memory");
    return 0.0f;
  }
  T v;
  std::memcpy(&v, emu_dynamic_shared() + phys, sizeof(T));
  return emu_operand(v);
}

inline bool emu_desc_ok(uint64_t desc, bool mn) {
  const uint32_t start = static_cast<uint32_t>(desc & 0x3FFF) << 4;
  if ((desc >> 62) != 1) return emu_fail("wgmma: only the 128-byte swizzle is emulated"), false;
  if ((desc >> 49) & 7) return emu_fail("wgmma: matrix base offset not emulated"), false;
  if (mn && (start & 1023)) return emu_fail("wgmma: MN-major operand not at a 1024-byte swizzle atom"), false;
  if (start & 0x380) return emu_fail("wgmma: start address outside the first row of its swizzle atom"), false;
  if ((start & 127) + 32 > 128) return emu_fail("wgmma: k-step crosses a 128-byte swizzled row"), false;
  return true;
}

struct EmuWgmma {
  void (*retire)(const EmuWgmma&);
  float* d;
  uint64_t a, b;
  std::vector<float> at_issue;  // the products computed when issued
};
inline thread_local std::vector<EmuWgmma> emu_wgmma_open;                  // issued, not yet committed
inline thread_local std::vector<std::vector<EmuWgmma>> emu_wgmma_pending;  // committed, oldest first

// The 16-byte chunks this thread's share of the product reads, marked (+1) or released (-1).
template <class T, int N, bool MN> void emu_wgmma_mark(uint64_t a, uint64_t b, int delta) {
  const int lane = threadIdx.x % 32, wl = (threadIdx.x % 128) / 32;
  auto mark = [&](uint64_t desc, int row) {
    for (int k = 0; k < 32 / static_cast<int>(sizeof(T)); ++k) {  // every element: chunks marked once per element
      const uint32_t phys = emu_desc_addr<T, MN>(desc, row, k);
      if (phys < emu_dynamic_shared_size()) emu_inflight_chunk(emu_dynamic_shared() + phys)->fetch_add(delta);
    }
  };
  for (int h = 0; h < 2; ++h) mark(a, wl * 16 + lane / 4 + 8 * h);
  for (int j = 0; j < N / 8; ++j)
    for (int e = 0; e < 2; ++e) mark(b, 8 * j + 2 * (lane % 4) + e);
}

// This thread's share of A * B (the m64nN fragment layout), read from shared memory now.
template <class T, int N, bool MN> void emu_wgmma_products(uint64_t a, uint64_t b, float* out) {
  constexpr int K = 32 / sizeof(T);
  const int lane = threadIdx.x % 32, wl = (threadIdx.x % 128) / 32;
  for (int j = 0; j < N / 2; ++j) {
    const int row = wl * 16 + lane / 4 + 8 * ((j / 2) % 2), col = 8 * (j / 4) + 2 * (lane % 4) + j % 2;
    float s = 0.0f;
    for (int k = 0; k < K; ++k) s += emu_desc_load<T, MN>(a, row, k) * emu_desc_load<T, MN>(b, col, k);
    out[j] = s;
  }
}

template <class T, int N, bool MN> void emu_wgmma_retire(const EmuWgmma& w) {
  emu_wgmma_mark<T, N, MN>(w.a, w.b, -1);
  float now[N / 2];
  emu_wgmma_products<T, N, MN>(w.a, w.b, now);
  if (std::memcmp(now, w.at_issue.data(), sizeof(now)) != 0)
    emu_fail("wgmma: shared memory it reads changed while it was in flight");
  for (int j = 0; j < N / 2; ++j) w.d[j] += w.at_issue[j];
}

template <class T, int N, bool MN> void emu_wgmma_issue(float* d, uint64_t a, uint64_t b) {
  if (!emu_desc_ok(a, MN) || !emu_desc_ok(b, MN)) return;
  EmuWgmma w{&emu_wgmma_retire<T, N, MN>, d, a, b, std::vector<float>(N / 2)};
  emu_wgmma_products<T, N, MN>(a, b, w.at_issue.data());
  emu_wgmma_mark<T, N, MN>(a, b, +1);
  emu_wgmma_open.push_back(std::move(w));
}

inline void wgmma_commit() {
  emu_wgmma_pending.push_back(std::move(emu_wgmma_open));
  emu_wgmma_open.clear();
}
template <int N> inline void wgmma_wait() {
  while (emu_wgmma_pending.size() > static_cast<size_t>(N)) {
    for (const EmuWgmma& w : emu_wgmma_pending.front()) w.retire(w);
    emu_wgmma_pending.erase(emu_wgmma_pending.begin());
  }
}
inline void emu_drop_wgmma() {
  if (!emu_wgmma_open.empty() || !emu_wgmma_pending.empty()) emu_fail("wgmma still in flight at the block's end");
  emu_wgmma_open.clear();
  emu_wgmma_pending.clear();
}

namespace fastconv {
namespace cuda {
template <typename T, int N> struct Wgmma {
  static void run(float (&d)[N / 2], uint64_t a, uint64_t b) { emu_wgmma_issue<T, N, false>(d, a, b); }
};
template <typename T, int N> struct WgmmaMN {  // both operands MN-major (imm-trans-a = imm-trans-b = 1)
  static_assert(sizeof(T) == 2, "transposed wgmma operands are 16-bit");
  static void run(float (&d)[N / 2], uint64_t a, uint64_t b) { emu_wgmma_issue<T, N, true>(d, a, b); }
};
}  // namespace cuda
}  // namespace fastconv
