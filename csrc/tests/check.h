// Minimal native test harness: CHECK / CHECK_CLOSE record failures, main returns their count.
#pragma once
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace fastconv_test {

inline int& failures() {
  static int n = 0;
  return n;
}

// Deterministic uniform data in [-1, 1): never test on zeros only.
template <typename T>
std::vector<T> random_vector(size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(dist(gen));
  return v;
}

// Poison: a value no kernel produces, so unwritten outputs show.
template <typename T>
std::vector<T> poisoned(size_t n) {
  return std::vector<T>(n, static_cast<T>(NAN));
}

// |got - want| <= atol + rtol * |want| for every element; prints the first few mismatches.
template <typename T, typename U>
bool all_close(const char* what, const std::vector<T>& got, const std::vector<U>& want, double atol,
               double rtol) {
  int bad = 0;
  if (got.size() != want.size()) {
    std::printf("FAIL %s: size %zu vs %zu\n", what, got.size(), want.size());
    ++failures();
    return false;
  }
  for (size_t i = 0; i < got.size(); ++i) {
    double g = static_cast<double>(got[i]), w = static_cast<double>(want[i]);
    bool ok = (std::isnan(g) && std::isnan(w)) || std::fabs(g - w) <= atol + rtol * std::fabs(w);
    if (!ok && bad++ < 5) std::printf("FAIL %s: [%zu] got %.9g want %.9g\n", what, i, g, w);
  }
  if (bad) {
    std::printf("FAIL %s: %d of %zu elements differ\n", what, bad, got.size());
    ++failures();
  }
  return bad == 0;
}

}  // namespace fastconv_test

#define CHECK(cond)                                                              \
  do {                                                                           \
    if (!(cond)) {                                                               \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                \
      ++fastconv_test::failures();                                               \
    }                                                                            \
  } while (0)

#define TEST_MAIN_RESULT()                                                       \
  (std::printf("%s\n", fastconv_test::failures() ? "FAILED" : "OK"), fastconv_test::failures() ? 1 : 0)
