// Run-time choice of the CPU code path: one build runs on any x86-64 machine, using AVX-512 or AVX2
// only where CPUID and the OS (XSAVE state, checked by libgcc) allow it.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include <unistd.h>

#include "fastconv/common.h"

namespace fastconv {
namespace {

bool has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool has_avx512() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

bool supported(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return has_avx512();
    case Isa::kAvx2: return has_avx2();
    default: return true;
  }
}

Isa initial_isa() {
  Isa best = cpu_best_isa();
  const char* env = std::getenv("FASTCONV_ISA");
  if (env == nullptr || *env == '\0') return best;
  Isa want = best;
  if (std::strcmp(env, "avx512") == 0) want = Isa::kAvx512;
  else if (std::strcmp(env, "avx2") == 0) want = Isa::kAvx2;
  else if (std::strcmp(env, "portable") == 0) want = Isa::kPortable;
  // Never run instructions the CPU lacks: an unsupported request falls back to the best path.
  return supported(want) ? want : best;
}

std::atomic<int>& current() {
  static std::atomic<int> isa{static_cast<int>(initial_isa())};
  return isa;
}

}  // namespace

Isa cpu_best_isa() {
  if (has_avx512()) return Isa::kAvx512;
  if (has_avx2()) return Isa::kAvx2;
  return Isa::kPortable;
}

Isa cpu_isa() { return static_cast<Isa>(current().load(std::memory_order_relaxed)); }

bool set_cpu_isa(Isa isa) {
  if (!supported(isa)) return false;
  current().store(static_cast<int>(isa));
  return true;
}

namespace {
std::atomic<bool>& winograd_flag() {
  static std::atomic<bool> on{[] {
    const char* env = std::getenv("FASTCONV_WINOGRAD");
    return !(env && std::strcmp(env, "0") == 0);
  }()};
  return on;
}
}  // namespace

bool cpu_winograd() { return winograd_flag().load(std::memory_order_relaxed); }
void set_cpu_winograd(bool on) { winograd_flag().store(on); }

int64_t cpu_l2_bytes() {
  static const int64_t bytes = [] {
    long v = 0;
#ifdef _SC_LEVEL2_CACHE_SIZE
    v = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return v > 0 ? static_cast<int64_t>(v) : int64_t(512) << 10;
  }();
  return bytes;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "portable";
  }
}

const char* cpu_features() {
  static const std::string features = [] {
    std::string s;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    // __builtin_cpu_supports needs a string literal, hence the macro.
#define FASTCONV_FEATURE(name) \
  if (__builtin_cpu_supports(name)) s += (s.empty() ? "" : " ") + std::string(name);
    FASTCONV_FEATURE("sse4.2") FASTCONV_FEATURE("avx") FASTCONV_FEATURE("avx2") FASTCONV_FEATURE("fma")
    FASTCONV_FEATURE("avx512f") FASTCONV_FEATURE("avx512bw") FASTCONV_FEATURE("avx512vl")
    FASTCONV_FEATURE("avx512dq") FASTCONV_FEATURE("avx512vnni") FASTCONV_FEATURE("avx512bf16")
    FASTCONV_FEATURE("amx-tile") FASTCONV_FEATURE("amx-bf16")
#undef FASTCONV_FEATURE
#endif
    return s;
  }();
  return features.c_str();
}

}  // namespace fastconv
