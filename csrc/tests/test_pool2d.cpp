// Pooling kernels (every ISA path this CPU has) against naive loops written from torch's definitions,
// NCHW and channels_last, awkward shapes, NaN-poisoned outputs.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "fastconv/common.h"
#include "fastconv/pool2d_kernels.h"

using namespace fastconv;
using fastconv_test::all_close;

namespace {

struct Cfg {
  int64_t n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw;
  bool ceil, cip;
  int64_t div;
};

int64_t out_size(int64_t size, int64_t k, int64_t pad, int64_t s, int64_t d, bool ceil) {
  int64_t num = size + 2 * pad - d * (k - 1) - 1 + (ceil ? s - 1 : 0);
  int64_t out = num / s + 1;
  if (ceil && (out - 1) * s >= size + pad) --out;
  return out;
}

Tensor4 geom(int64_t n, int64_t c, int64_t h, int64_t w, bool cl) {
  Tensor4 t{n, c, h, w, c * h * w, h * w, w, 1};
  if (cl) t.sc = 1, t.sw = c, t.sh = w * c;
  return t;
}
int64_t at(const Tensor4& t, int64_t n, int64_t c, int64_t h, int64_t w) { return n * t.sn + c * t.sc + h * t.sh + w * t.sw; }

// Reference results in NCHW order.
template <typename T>
void ref_max(const Cfg& g, int64_t P, int64_t Q, const std::vector<T>& x, std::vector<double>& y, std::vector<int64_t>& idx) {
  for (int64_t nc = 0; nc < g.n * g.c; ++nc)
    for (int64_t oh = 0; oh < P; ++oh)
      for (int64_t ow = 0; ow < Q; ++ow) {
        double m = -INFINITY;
        int64_t best = -1;  // the first valid element, then torch's rule: v > max or v is NaN
        for (int64_t i = 0; i < g.kh; ++i)
          for (int64_t j = 0; j < g.kw; ++j) {
            int64_t ih = oh * g.sh - g.ph + i * g.dh, iw = ow * g.sw - g.pw + j * g.dw;
            if (ih < 0 || ih >= g.h || iw < 0 || iw >= g.w) continue;
            double v = x[(nc * g.h + ih) * g.w + iw];
            if (best < 0 || v > m || std::isnan(v)) m = v, best = ih * g.w + iw;
          }
        y[(nc * P + oh) * Q + ow] = m;
        idx[(nc * P + oh) * Q + ow] = best;
      }
}

// Window [h0, h1) x [w0, w1) and divisor of average output (oh, ow); adaptive bins when kh == 0.
void avg_window(const Cfg& g, int64_t P, int64_t Q, int64_t oh, int64_t ow, int64_t& h0, int64_t& h1, int64_t& w0,
                int64_t& w1, int64_t& div) {
  if (g.kh == 0) {
    h0 = oh * g.h / P, h1 = ((oh + 1) * g.h + P - 1) / P;
    w0 = ow * g.w / Q, w1 = ((ow + 1) * g.w + Q - 1) / Q;
    div = (h1 - h0) * (w1 - w0);
    return;
  }
  h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
  h1 = std::min(h0 + g.kh, g.h + g.ph), w1 = std::min(w0 + g.kw, g.w + g.pw);
  int64_t padded = (h1 - h0) * (w1 - w0);
  h0 = std::max<int64_t>(h0, 0), w0 = std::max<int64_t>(w0, 0);
  h1 = std::min(h1, g.h), w1 = std::min(w1, g.w);
  div = g.div ? g.div : g.cip ? padded : (h1 - h0) * (w1 - w0);
}

// Forward (y = window means) or backward (gx += gy / div over each window), NCHW order.
template <typename T>
void ref_avg(const Cfg& g, int64_t P, int64_t Q, const std::vector<T>& x, std::vector<double>& y) {
  for (int64_t nc = 0; nc < g.n * g.c; ++nc)
    for (int64_t oh = 0; oh < P; ++oh)
      for (int64_t ow = 0; ow < Q; ++ow) {
        int64_t h0, h1, w0, w1, div;
        avg_window(g, P, Q, oh, ow, h0, h1, w0, w1, div);
        double s = 0;
        for (int64_t ih = h0; ih < h1; ++ih)
          for (int64_t iw = w0; iw < w1; ++iw) s += x[(nc * g.h + ih) * g.w + iw];
        y[(nc * P + oh) * Q + ow] = s / div;
      }
}

template <typename T>
void ref_avg_bwd(const Cfg& g, int64_t P, int64_t Q, const std::vector<T>& gy, std::vector<double>& gx) {
  std::fill(gx.begin(), gx.end(), 0.0);
  for (int64_t nc = 0; nc < g.n * g.c; ++nc)
    for (int64_t oh = 0; oh < P; ++oh)
      for (int64_t ow = 0; ow < Q; ++ow) {
        int64_t h0, h1, w0, w1, div;
        avg_window(g, P, Q, oh, ow, h0, h1, w0, w1, div);
        for (int64_t ih = h0; ih < h1; ++ih)
          for (int64_t iw = w0; iw < w1; ++iw) gx[(nc * g.h + ih) * g.w + iw] += double(gy[(nc * P + oh) * Q + ow]) / div;
      }
}

template <typename T>
std::vector<T> layout(const std::vector<T>& nchw, const Tensor4& t) {
  std::vector<T> r(nchw.size());
  for (int64_t n = 0; n < t.n; ++n)
    for (int64_t c = 0; c < t.c; ++c)
      for (int64_t h = 0; h < t.h; ++h)
        for (int64_t w = 0; w < t.w; ++w) r[at(t, n, c, h, w)] = nchw[((n * t.c + c) * t.h + h) * t.w + w];
  return r;
}
template <typename T>
std::vector<T> to_nchw(const std::vector<T>& v, const Tensor4& t) {
  std::vector<T> r(v.size());
  for (int64_t n = 0; n < t.n; ++n)
    for (int64_t c = 0; c < t.c; ++c)
      for (int64_t h = 0; h < t.h; ++h)
        for (int64_t w = 0; w < t.w; ++w) r[((n * t.c + c) * t.h + h) * t.w + w] = v[at(t, n, c, h, w)];
  return r;
}


template <typename T>
void run(const Cfg& g, const char* isa, unsigned seed) {
  const double tol = sizeof(T) == 4 ? 2e-5 : 1e-12;
  char tag[256];
  std::snprintf(tag, sizeof tag, "%s %s n%ld c%ld %ldx%ld k%ldx%ld s%ldx%ld p%ldx%ld d%ldx%ld ceil%d cip%d div%ld", isa,
                sizeof(T) == 4 ? "f32" : "f64", long(g.n), long(g.c), long(g.h), long(g.w), long(g.kh), long(g.kw),
                long(g.sh), long(g.sw), long(g.ph), long(g.pw), long(g.dh), long(g.dw), int(g.ceil), int(g.cip),
                long(g.div));
  const size_t nx = size_t(g.n * g.c * g.h * g.w);
  std::vector<T> x = fastconv_test::random_vector<T>(nx, seed);
  std::mt19937 gen(seed);
  for (auto& v : x) {
    if (gen() % 7 == 0) v = std::round(v * 2);  // ties
    if (gen() % 41 == 0) v = T(NAN);
  }
  std::vector<T> xf(x);  // NaN-free input for averages
  for (auto& v : xf)
    if (std::isnan(v)) v = T(0.25);

  for (int kind = 0; kind < 3; ++kind) {  // max, avg, adaptive
    Cfg c = g;
    if (kind > 0) c.dh = c.dw = 1, c.ph = std::min(c.ph, c.kh / 2), c.pw = std::min(c.pw, c.kw / 2);
    int64_t P, Q;
    if (kind == 2) {
      c.kh = 0, P = 1 + int64_t(seed % 5) + g.h / 3, Q = 1 + int64_t(seed % 3) + g.w / 2;
      if (seed % 4 == 0) P = Q = 1;  // global pooling has its own paths
    } else {
      P = out_size(c.h, c.kh, c.ph, c.sh, c.dh, c.ceil), Q = out_size(c.w, c.kw, c.pw, c.sw, c.dw, c.ceil);
      if (P < 1 || Q < 1) continue;
    }
    const size_t ny = size_t(c.n * c.c * P * Q);
    const std::vector<T>& in = kind == 0 ? x : xf;
    std::vector<double> ry(ny), rgx(nx);
    std::vector<int64_t> ridx(ny);
    std::vector<T> gy = fastconv_test::random_vector<T>(ny, seed + 1);
    if (kind == 0) {
      ref_max(c, P, Q, in, ry, ridx);
      std::fill(rgx.begin(), rgx.end(), 0.0);
      for (int64_t nc = 0; nc < c.n * c.c; ++nc)
        for (int64_t o = 0; o < P * Q; ++o)
          if (ridx[nc * P * Q + o] >= 0) rgx[nc * c.h * c.w + ridx[nc * P * Q + o]] += gy[nc * P * Q + o];
    } else {
      ref_avg(c, P, Q, in, ry);
      ref_avg_bwd(c, P, Q, gy, rgx);
    }
    for (bool cl : {false, true}) {
      Pool2dParams p;
      p.x = geom(c.n, c.c, c.h, c.w, cl);
      p.y = geom(c.n, c.c, P, Q, cl);
      p.kh = std::max<int64_t>(c.kh, 1), p.kw = c.kw, p.stride_h = c.sh, p.stride_w = c.sw, p.pad_h = c.ph;
      p.pad_w = c.pw, p.dil_h = c.dh, p.dil_w = c.dw, p.count_include_pad = c.cip, p.divisor_override = c.div;
      const std::vector<T> xl = layout(in, p.x), gyl = layout(gy, p.y);
      std::vector<T> y = fastconv_test::poisoned<T>(ny), gx = fastconv_test::poisoned<T>(nx);
      std::vector<int64_t> idx(ny, -7);
      std::string t = std::string(tag) + (kind == 0 ? " max" : kind == 1 ? " avg" : " adaptive") + (cl ? " cl" : " nchw");
      if (kind == 0) {
        max_pool2d_fwd<T>(p, xl.data(), y.data(), idx.data());
        max_pool2d_bwd<T>(p, gyl.data(), idx.data(), gx.data());
        if (to_nchw(idx, p.y) != ridx) {
          std::printf("FAIL %s: indices differ\n", t.c_str());
          ++fastconv_test::failures();
        }
      } else if (kind == 1) {
        avg_pool2d_fwd<T>(p, xl.data(), y.data());
        avg_pool2d_bwd<T>(p, gyl.data(), gx.data());
      } else {
        adaptive_avg_pool2d_fwd<T>(p, xl.data(), y.data());
        adaptive_avg_pool2d_bwd<T>(p, gyl.data(), gx.data());
      }
      all_close((t + " fwd").c_str(), to_nchw(y, p.y), ry, tol, tol);
      all_close((t + " bwd").c_str(), to_nchw(gx, p.x), rgx, tol, tol);
    }
  }
}

}  // namespace

int main() {
  std::mt19937 gen(1234);
  auto pick = [&](std::initializer_list<int64_t> v) { return *(v.begin() + gen() % v.size()); };
  std::vector<Cfg> cfgs = {
      // n c h w kh kw sh sw ph pw dh dw ceil cip div
      {1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, false, true, 0},
      {2, 3, 13, 11, 3, 3, 2, 2, 1, 1, 1, 1, false, true, 0},
      {2, 3, 13, 11, 3, 3, 2, 2, 1, 1, 1, 1, true, false, 0},
      {1, 17, 7, 7, 11, 11, 1, 1, 5, 5, 1, 1, true, true, 0},   // kernel > input, padding at the limit
      {3, 5, 17, 19, 2, 3, 3, 4, 1, 1, 2, 3, true, true, 3},    // stride > kernel, dilation, divisor
      {1, 64, 9, 10, 3, 3, 1, 1, 1, 1, 1, 1, false, false, 0},
      {2, 300, 5, 6, 2, 2, 2, 2, 0, 0, 1, 1, true, true, 0},    // channels past one 256-block
      {0, 3, 8, 8, 3, 3, 2, 2, 1, 1, 1, 1, false, true, 0},     // N = 0
  };
  for (int i = 0; i < 40; ++i) {
    Cfg c{pick({1, 2, 3}), pick({1, 2, 3, 7, 16, 33}), 1 + int64_t(gen() % 23), 1 + int64_t(gen() % 23),
          pick({1, 2, 3, 4, 5, 11}), pick({1, 2, 3, 5, 7}), pick({1, 2, 3, 5}), pick({1, 2, 3, 4}), 0, 0,
          pick({1, 1, 2, 3}), pick({1, 1, 2}), gen() % 2 == 0, gen() % 2 == 0, pick({0, 0, 1, 5})};
    c.ph = int64_t(gen() % (((c.kh - 1) * c.dh + 1) / 2 + 1));
    c.pw = int64_t(gen() % (((c.kw - 1) * c.dw + 1) / 2 + 1));
    cfgs.push_back(c);
  }
  for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512}) {
    if (!set_cpu_isa(isa)) {
      std::printf("skip %s (not supported here)\n", isa_name(isa));
      continue;
    }
    unsigned seed = 1;
    for (const Cfg& c : cfgs) {
      run<float>(c, isa_name(isa), seed);
      run<double>(c, isa_name(isa), seed++);
    }
  }
  return TEST_MAIN_RESULT();
}
