// ReLU and SORT kernels (every ISA path this CPU has, all four storage types) against naive double
// loops, odd lengths, NaN-poisoned outputs, zeros and eps = 0.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "check.h"
#include "fastconv/common.h"
#include "fastconv/eltwise_kernels.h"

using namespace fastconv;
using fastconv_test::all_close;

namespace {

double value(float v) { return v; }
double value(double v) { return v; }
double value(bf16 v) {
  uint32_t u = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
double value(fp16 v) {
  _Float16 h;
  std::memcpy(&h, &v.bits, 2);
  return double(h);
}
template <typename T> T make(double v);
template <> float make<float>(double v) { return float(v); }
template <> double make<double>(double v) { return v; }
template <> bf16 make<bf16>(double v) {  // truncation is fine for inputs
  float f = float(v);
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return bf16{uint16_t(u >> 16)};
}
template <> fp16 make<fp16>(double v) {
  _Float16 h = _Float16(float(v));
  fp16 r;
  std::memcpy(&r.bits, &h, 2);
  return r;
}

template <typename T> std::vector<double> values(const std::vector<T>& v) {
  std::vector<double> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = value(v[i]);
  return r;
}
template <typename T> std::vector<T> poison(size_t n) { return std::vector<T>(n, make<T>(NAN)); }

template <typename T>
void run(int64_t n, const char* isa, const char* tname, double tol, unsigned seed) {
  const size_t m = size_t(n);
  std::vector<double> ad = fastconv_test::random_vector<double>(m, seed), bd = fastconv_test::random_vector<double>(m, seed + 1),
                      gd = fastconv_test::random_vector<double>(m, seed + 2);
  for (size_t i = 0; i < m; i += 5) ad[i] = 0;   // zero operands (eps = 0 edge)
  for (size_t i = 2; i < m; i += 7) bd[i] = 0;
  std::vector<T> a(m), b(m), g(m);
  for (size_t i = 0; i < m; ++i) a[i] = make<T>(ad[i]), b[i] = make<T>(bd[i]), g[i] = make<T>(gd[i]);
  ad = values(a), bd = values(b), gd = values(g);
  std::vector<T> an(a);  // with NaNs for relu
  for (size_t i = 3; i < m; i += 11) an[i] = make<T>(NAN);
  const std::vector<double> and_ = values(an);
  char tag[128];
  std::snprintf(tag, sizeof tag, "%s %s n=%ld", isa, tname, long(n));
  std::string t(tag);

  std::vector<double> want(m), want2(m);
  std::vector<T> y = poison<T>(m), y2 = poison<T>(m);
  relu_fwd<T>(an.data(), y.data(), n);
  for (size_t i = 0; i < m; ++i) want[i] = std::isnan(and_[i]) ? NAN : and_[i] > 0 ? and_[i] : 0.0;
  all_close((t + " relu").c_str(), values(y), want, 0, 0);
  y = poison<T>(m);
  relu_bwd<T>(g.data(), an.data(), y.data(), n);
  for (size_t i = 0; i < m; ++i) want[i] = and_[i] <= 0 ? 0.0 : gd[i];
  all_close((t + " relu_bwd").c_str(), values(y), want, 0, 0);

  for (int mode = 0; mode < 2; ++mode) {
    for (double eps : {0.0, 0.01}) {
      const std::string tm = t + (mode ? " product" : " sqrt") + " eps=" + std::to_string(eps);
      y = poison<T>(m);
      sort_fwd<T>(a.data(), b.data(), y.data(), n, SortMode(mode), eps);
      for (size_t i = 0; i < m; ++i) {
        double ra = std::max(ad[i], 0.0), rb = std::max(bd[i], 0.0);
        want[i] = ad[i] + bd[i] + (mode ? ra * rb : std::sqrt(ra * rb + eps));
      }
      all_close((tm + " sort").c_str(), values(y), want, tol, tol);
      y = poison<T>(m), y2 = poison<T>(m);
      sort_bwd<T>(g.data(), a.data(), b.data(), y.data(), y2.data(), n, SortMode(mode), eps);
      for (size_t i = 0; i < m; ++i) {
        double ra = std::max(ad[i], 0.0), rb = std::max(bd[i], 0.0), s = std::sqrt(ra * rb + eps);
        // [a>0] rb / (2s), taken as 0 where rb = 0 (its true value) even when s = 0.
        double ta = ad[i] > 0 && rb > 0 ? (mode ? rb : rb / (2 * s)) : 0.0;
        double tb = bd[i] > 0 && ra > 0 ? (mode ? ra : ra / (2 * s)) : 0.0;
        want[i] = gd[i] * (1 + ta), want2[i] = gd[i] * (1 + tb);
      }
      all_close((tm + " sort_bwd a").c_str(), values(y), want, tol, tol);
      all_close((tm + " sort_bwd b").c_str(), values(y2), want2, tol, tol);
    }
  }
}

}  // namespace

int main() {
  for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512}) {
    if (!set_cpu_isa(isa)) {
      std::printf("skip %s (not supported here)\n", isa_name(isa));
      continue;
    }
    unsigned seed = 7;
    for (int64_t n : {0, 1, 7, 31, 1000, 100003, 300007}) {
      run<float>(n, isa_name(isa), "f32", 1e-5, seed);
      run<double>(n, isa_name(isa), "f64", 1e-12, seed);
      run<bf16>(n, isa_name(isa), "bf16", 1.6e-2, seed);
      run<fp16>(n, isa_name(isa), "fp16", 2e-3, seed);
      seed += 3;
    }
    // Past kStreamBytes (8 MB) the kernels write with non-temporal stores: odd length, so the
    // aligned middle, the unaligned head and the tail are all exercised.
    run<float>(2300007, isa_name(isa), "f32 streamed", 1e-5, seed);
  }
  return TEST_MAIN_RESULT();
}
