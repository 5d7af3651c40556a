// Convolution kernels (forward with every epilogue, bwd_input, bwd_weight, bwd_bias) against naive
// double-precision loops, on every ISA path this CPU supports, float and double, NCHW and
// channels-last tensors, awkward shapes; outputs start NaN-poisoned so unwritten elements show.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "check.h"
#include "fastconv/common.h"
#include "fastconv/conv2d_kernels.h"

using namespace fastconv;
using fastconv_test::all_close;
using fastconv_test::poisoned;
using fastconv_test::random_vector;

namespace {

struct Case {
  int64_t n, c, h, w, k, r, s, sh, sw, ph0, ph1, pw0, pw1, dh, dw, groups;
};

Tensor4 desc(int64_t n, int64_t c, int64_t h, int64_t w, bool cl) {
  Tensor4 d{n, c, h, w, 0, 0, 0, 0};
  if (cl) { d.sw = c; d.sh = w * c; d.sc = 1; d.sn = h * w * c; }
  else { d.sw = 1; d.sh = w; d.sc = h * w; d.sn = c * h * w; }
  return d;
}
size_t numel(const Tensor4& d) { return static_cast<size_t>(d.n * d.c * d.h * d.w); }
int64_t at(const Tensor4& d, int64_t n, int64_t c, int64_t h, int64_t w) { return n * d.sn + c * d.sc + h * d.sh + w * d.sw; }

// Calls f(n, k, c, p, q, h, w, r, s) for every (output, input, weight) triple of the convolution.
template <typename F>
void each_tap(const Conv2dParams& p, F f) {
  const int64_t G = p.groups, Kg = p.w.n / G, Cg = p.w.c;
  for (int64_t n = 0; n < p.x.n; ++n)
    for (int64_t k = 0; k < p.w.n; ++k)
      for (int64_t pp = 0; pp < p.y.h; ++pp)
        for (int64_t q = 0; q < p.y.w; ++q)
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t r = 0; r < p.w.h; ++r)
              for (int64_t s = 0; s < p.w.w; ++s) {
                const int64_t h = pp * p.stride_h - p.pad_h0 + r * p.dil_h, w = q * p.stride_w - p.pad_w0 + s * p.dil_w;
                if (h >= 0 && h < p.x.h && w >= 0 && w < p.x.w) f(n, k, (k / Kg) * Cg + c, c, pp, q, h, w, r, s);
              }
}

double relu(double v) { return v < 0 ? 0 : v; }

template <typename T>
void run_case(const Case& cs, int layout, unsigned seed, const char* isa) {
  const int64_t P = (cs.h + cs.ph0 + cs.ph1 - cs.dh * (cs.r - 1) - 1) / cs.sh + 1;
  const int64_t Q = (cs.w + cs.pw0 + cs.pw1 - cs.dw * (cs.s - 1) - 1) / cs.sw + 1;
  Conv2dParams p;
  p.x = desc(cs.n, cs.c, cs.h, cs.w, layout & 1);
  p.w = desc(cs.k, cs.c / cs.groups, cs.r, cs.s, layout & 2);
  p.y = desc(cs.n, cs.k, P, Q, layout != 0);
  p.groups = cs.groups;
  p.stride_h = cs.sh; p.stride_w = cs.sw; p.pad_h0 = cs.ph0; p.pad_w0 = cs.pw0; p.dil_h = cs.dh; p.dil_w = cs.dw;
  // Float rounding grows with the reduction length (about sqrt(n) for random-sign terms).
  const double red = std::max<double>({double(cs.c / cs.groups * cs.r * cs.s), double(cs.k / cs.groups * cs.r * cs.s),
                                       double(cs.n * P * Q)});
  // Winograd F(4x4, 3x3) (float 3x3 stride-1 layers) rounds its transformed tiles: about 8x the error.
  const bool wino = sizeof(T) == 4 && cs.r == 3 && cs.s == 3 && cs.sh == 1 && cs.sw == 1 && cs.dh == 1 && cs.dw == 1 &&
                    cs.groups == 1;
  const double tol = (sizeof(T) == 4 ? 2e-5 : 1e-12) * std::max(1.0, std::sqrt(red) / (wino ? 1 : 8));
  auto x = random_vector<T>(numel(p.x), seed), w = random_vector<T>(numel(p.w), seed + 1);
  auto dy = random_vector<T>(numel(p.y), seed + 2);
  auto bias = random_vector<T>(cs.k, seed + 3), scale = random_vector<T>(cs.k, seed + 4),
       shift = random_vector<T>(cs.k, seed + 5), res = random_vector<T>(numel(p.y), seed + 6);
  char name[256];
  std::snprintf(name, sizeof name, "%s %s n%ld c%ld %ldx%ld k%ld %ldx%ld s%ld,%ld p%ld,%ld,%ld,%ld d%ld,%ld g%ld layout%d",
                isa, sizeof(T) == 4 ? "f32" : "f64", (long)cs.n, (long)cs.c, (long)cs.h, (long)cs.w, (long)cs.k,
                (long)cs.r, (long)cs.s, (long)cs.sh, (long)cs.sw, (long)cs.ph0, (long)cs.ph1, (long)cs.pw0,
                (long)cs.pw1, (long)cs.dh, (long)cs.dw, (long)cs.groups, layout);

  std::vector<double> conv(numel(p.y), 0.0), dx_ref(numel(p.x), 0.0), dw_ref(numel(p.w), 0.0), db_ref(cs.k, 0.0);
  each_tap(p, [&](int64_t n, int64_t k, int64_t ci, int64_t c, int64_t pp, int64_t q, int64_t h, int64_t ww, int64_t r, int64_t s) {
    const double xv = x[at(p.x, n, ci, h, ww)], wv = w[at(p.w, k, c, r, s)], g = dy[at(p.y, n, k, pp, q)];
    conv[at(p.y, n, k, pp, q)] += xv * wv;
    dx_ref[at(p.x, n, ci, h, ww)] += g * wv;
    dw_ref[at(p.w, k, c, r, s)] += g * xv;
  });
  for (int64_t n = 0; n < cs.n; ++n)
    for (int64_t k = 0; k < cs.k; ++k)
      for (int64_t pp = 0; pp < P; ++pp)
        for (int64_t q = 0; q < Q; ++q) db_ref[k] += dy[at(p.y, n, k, pp, q)];

  // Forward: plain, then each epilogue combination.
  for (int variant = 0; variant < 6; ++variant) {
    Epilogue<T> ep;
    if (variant >= 1) { ep.bias = bias.data(); }
    if (variant >= 2) { ep.scale = scale.data(); ep.shift = shift.data(); ep.relu = variant % 2 == 1; }
    if (variant == 3) { ep.combine = Combine::kAdd; ep.residual = res.data(); }
    if (variant >= 4) { ep.combine = Combine::kSort; ep.residual = res.data(); ep.sort_mode = variant == 4 ? SortMode::kSqrt : SortMode::kProduct; }
    std::vector<double> want(numel(p.y));
    for (int64_t k = 0; k < cs.k; ++k)
      for (int64_t n = 0; n < cs.n; ++n)
        for (int64_t pp = 0; pp < P; ++pp)
          for (int64_t q = 0; q < Q; ++q) {
            const int64_t o = at(p.y, n, k, pp, q);
            double z = conv[o];
            if (ep.scale) z *= scale[k];
            if (ep.shift) z += shift[k];
            if (ep.bias) z += bias[k];
            const double rr = ep.residual ? double(res[o]) : 0.0;
            if (ep.combine == Combine::kAdd) z = rr + z;
            if (ep.combine == Combine::kSort) {
              const double prod = relu(rr) * relu(z);
              z = rr + z + (ep.sort_mode == SortMode::kSqrt ? std::sqrt(prod + double(ep.eps)) : prod);
            }
            if (ep.relu) z = relu(z);
            want[o] = z;
          }
    auto y = poisoned<T>(numel(p.y));
    conv2d_fwd_cpu<T>(p, x.data(), w.data(), y.data(), ep);
    char what[300];
    std::snprintf(what, sizeof what, "fwd[%d] %s", variant, name);
    all_close(what, y, want, tol, tol);
  }
  auto dx = poisoned<T>(numel(p.x));
  conv2d_bwd_input_cpu<T>(p, dy.data(), w.data(), dx.data());
  all_close((std::string("bwd_input ") + name).c_str(), dx, dx_ref, tol, tol);
  auto dw = poisoned<T>(numel(p.w));
  conv2d_bwd_weight_cpu<T>(p, dy.data(), x.data(), dw.data());
  all_close((std::string("bwd_weight ") + name).c_str(), dw, dw_ref, tol * 4, tol);
  auto db = poisoned<T>(cs.k);
  conv2d_bwd_bias_cpu<T>(p.y, dy.data(), db.data());
  all_close((std::string("bwd_bias ") + name).c_str(), db, db_ref, tol, tol);
}

}  // namespace

int main() {
  // n, c, h, w, k, r, s, sh, sw, ph0, ph1, pw0, pw1, dh, dw, groups
  const std::vector<Case> cases = {
      {2, 3, 11, 13, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},       // small everything
      {1, 16, 9, 9, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},       // full kv blocks
      {2, 19, 7, 10, 37, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1},      // 1x1, odd channels
      {2, 24, 8, 8, 20, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1},       // 1x1, whole 16-pixel panels read in place
      {2, 24, 9, 11, 20, 1, 1, 2, 2, 0, 0, 0, 0, 1, 1, 1},      // 1x1 stride 2 (gathered copy)
      {1, 3, 23, 19, 17, 7, 7, 2, 2, 3, 3, 3, 3, 1, 1, 1},      // first-layer style
      {2, 3, 27, 25, 9, 11, 11, 4, 4, 2, 2, 2, 2, 1, 1, 1},     // 11x11 stride 4
      {1, 6, 12, 11, 9, 3, 2, 2, 3, 0, 1, 2, 0, 2, 1, 3},       // groups, asym pad, dilation, strides
      {2, 8, 10, 9, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 8},        // depthwise
      {1, 67, 11, 13, 67, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 67},    // depthwise stride 2, block + tail
      {2, 5, 13, 10, 15, 3, 5, 2, 3, 2, 0, 1, 3, 2, 1, 5},      // depthwise multiplier 3, dilation
      {1, 70, 7, 9, 70, 5, 3, 1, 1, 3, 1, 0, 2, 1, 2, 70},      // depthwise asym pad, dilation
      {1, 3, 6, 5, 6, 1, 1, 3, 2, 0, 0, 0, 0, 1, 1, 3},         // depthwise 1x1, stride > kernel
      {1, 5, 8, 8, 7, 2, 2, 3, 3, 0, 0, 0, 0, 1, 1, 1},         // stride > kernel
      {1, 4, 9, 14, 6, 3, 5, 1, 1, 0, 1, 2, 2, 2, 3, 2},        // dilation 2x3, even kernel
      {3, 1, 5, 5, 1, 5, 5, 1, 1, 0, 0, 0, 0, 1, 1, 1},         // single channel, output 1x1
      {1, 20, 6, 17, 40, 3, 3, 1, 1, 4, 2, 0, 5, 1, 1, 4},      // padding larger than the kernel
      {1, 300, 4, 5, 17, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},     // input channels split into blocks
      {1, 2600, 2, 3, 5, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1},     // 1x1 with channel blocks
      {1, 600, 4, 4, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 2},      // blocks within groups
      {1, 40, 9, 8, 12, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1},       // strided bwd_input, batch 1: channel split
      {1, 66, 7, 9, 10, 3, 2, 2, 3, 1, 0, 0, 1, 2, 1, 2},       // same with groups and a 1-channel block
      {1, 19, 17, 18, 21, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},     // Winograd (float): tiles overhang P, Q
      {8, 16, 6, 7, 24, 3, 3, 1, 1, 2, 0, 0, 2, 1, 1, 1},       // Winograd tile blocks across images, asym pad
      {0, 4, 6, 6, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},         // N = 0
  };
  const Isa isas[] = {Isa::kPortable, Isa::kAvx2, Isa::kAvx512};
  int ran = 0;
  for (Isa isa : isas) {
    if (!set_cpu_isa(isa)) {
      std::printf("skip %s (not supported by this CPU)\n", isa_name(isa));
      continue;
    }
    unsigned seed = 1;
    for (const Case& cs : cases)
      for (int layout = 0; layout < 4; ++layout, seed += 10) {
        run_case<float>(cs, layout, seed, isa_name(isa));
        run_case<double>(cs, layout, seed, isa_name(isa));
        ++ran;
      }
  }
  std::printf("%d cases\n", ran);
  return TEST_MAIN_RESULT();
}
