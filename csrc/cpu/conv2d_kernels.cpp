// Convolution drivers shared by every ISA path. All three convolutions are one blocked GEMM shape run
// by an ISA-specific micro-kernel (see TileArgs in conv2d_kernels.h):
//   forward:       rows = output pixels of one output row, columns = output channels, reduction =
//                  (r, s) segments x input channels of a zero-padded channels-last copy of x;
//   bwd_input:     stride 1 is the forward conv of dy with the flipped, transposed weight; other
//                  strides compute dy x W^T per output row and scatter-add it into dx (col2im);
//   bwd_weight:    rows = input channels, columns = output channels, reduction = output pixels.
// Weights (and dy for bwd_weight) are packed into panels of `kv` columns, zero-padded, so the
// micro-kernel never branches. The epilogue runs on the finished [pixels x kv] tile while it is in L1.
//
// One translation unit (the drivers share inline helpers and are instantiated here), one file per
// concern: conv2d_scratch.inc (scratch memory), conv2d_tiles.inc (micro-kernel choice, padded input
// rows), conv2d_epilogue.inc, conv2d_direct.inc (forward GEMM), conv2d_pointwise.inc (1x1),
// conv2d_finite.inc (special values), conv2d_winograd.inc, conv2d_depthwise.inc, and
// conv2d_backward.inc (input, weight and bias gradients); this file holds the forward's dispatch.
// The per-ISA loops are the *_simd.inc files, compiled once per ISA.
#include <emmintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#include "fastconv/common.h"
#include "fastconv/conv2d_kernels.h"
#include "fastconv/free_blocks.h"

namespace fastconv {
namespace portable {
#include "conv2d_depthwise_simd.inc"
#include "conv2d_winograd_simd.inc"
}  // namespace portable

namespace {

#include "conv2d_scratch.inc"
#include "conv2d_tiles.inc"
#include "conv2d_epilogue.inc"
#include "conv2d_direct.inc"
#include "conv2d_pointwise.inc"
#include "conv2d_finite.inc"
#include "conv2d_winograd.inc"
#include "conv2d_depthwise.inc"

}  // namespace

// The forward's path for p: 1x1 into NCHW planes reads the weights as they are; the others pack them.
inline bool pointwise_nchw_path(const Conv2dParams& p) {
  return is_pointwise(p) && p.y.sc != 1 && p.y.sw == 1 && p.y.sh == p.y.w;
}

// Elements of the direct path's packed weights (pack_weights' [g][kb][c-block][r][s][c][kv]).
inline int64_t direct_packed_size(const Conv2dParams& p, int kv) {
  return p.groups * ceil_div(Kg_of(p), kv) * p.w.h * p.w.w * p.w.c * kv;
}

template <typename T>
int64_t conv2d_fwd_packed_size(const Conv2dParams& p) {
  if (p.x.n == 0 || p.y.c == 0 || p.y.h == 0 || p.y.w == 0 || is_depthwise(p) || pointwise_nchw_path(p) ||
      few_pixels_path(p))
    return 0;
  const int kv = micro_kernel<T>().kv;
  return winograd_path<T>(p) ? wino_packed_size(p, kv) : direct_packed_size(p, kv);
}

// Packs w for the direct path, or transforms it for Winograd (`wino`, float32 only).
template <typename T>
void pack_for(const Conv2dParams& p, const T* w, T* out, const MicroKernel<T>& mk, bool wino) {
  if constexpr (std::is_same_v<T, float>) {
    if (wino) return wino_pack(p, w, out, mk);
  }
  const Tensor4& W = p.w;
  pack_weights_strided(out, p.groups, Kg_of(p), W.c, W.h, W.w, mk, channel_block(W.c, W.h, W.w, mk.kv, sizeof(T)), w, W);
}

template <typename T>
void conv2d_fwd_pack(const Conv2dParams& p, const T* w, T* out) {
  pack_for(p, w, out, micro_kernel<T>(), winograd_path<T>(p));
}

template <typename T>
void conv2d_fwd_cpu(const Conv2dParams& p, const T* x, const T* w, T* y, const Epilogue<T>& ep, const T* packed) {
  if (p.x.n == 0 || p.y.c == 0 || p.y.h == 0 || p.y.w == 0) return;
  // Non-finite weights: the depthwise loops skip taps on padding, where the general path (like the
  // zero-padded definition) multiplies them, giving NaN.
  if (is_depthwise(p) && weights_finite(p.w, w)) return dw_fwd(p, x, w, y, ep);
  const MicroKernel<T> mk = micro_kernel<T>();
  if (pointwise_nchw_path(p)) return pointwise_nchw(p, x, w, y, ep, mk);
  if (few_pixels_path(p)) return few_pixels_fwd(p, x, w, y, ep);
  const bool wino = winograd_path<T>(p);
  Buffer<T> wstore;
  if (!packed && !wino) {
    wstore.alloc(direct_packed_size(p, mk.kv));
    pack_for(p, w, wstore.get(), mk, false);
    packed = wstore.get();
  }
  if constexpr (std::is_same_v<T, float>) {
    if (wino) {  // without the cached transform, winograd_fwd makes what it needs from w
      if (winograd_fwd(p, x, packed, w, y, ep, mk)) return;
      // A non-finite value (see winograd_fwd): the whole layer again on the direct path.
      wstore.alloc(direct_packed_size(p, mk.kv));
      pack_for(p, w, wstore.get(), mk, false);
      packed = wstore.get();
    }
  }
  if (is_pointwise(p) && (p.stride_h > 1 || p.stride_w > 1) && p.y.sc == 1 && p.x.sc == 1) {
    // Strided 1x1 into channels_last: gather the pixels it reads into a channels_last copy (a
    // quarter of the input for stride 2) with the pixel pitch the tiles read best, then the
    // stride-1 flat GEMM below.
    const Tensor4 &X = p.x, &Y = p.y;
    const int64_t px = pixel_pitch<T>(Tensor4{X.n, X.c, Y.h, Y.w, 0, 1, 0, X.c}, micro_kernel<T>().mp);
    Buffer<T> sub(Y.n * Y.h * Y.w * px);
    T* sp = sub.get();
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < Y.n; ++n)
      for (int64_t h = 0; h < Y.h; ++h)
        for (int64_t q = 0; q < Y.w; ++q)
          std::memcpy(sp + ((n * Y.h + h) * Y.w + q) * px, x + n * X.sn + h * p.stride_h * X.sh + q * p.stride_w * X.sw,
                      sizeof(T) * X.c);
    Conv2dParams q = p;
    q.x = Tensor4{X.n, X.c, Y.h, Y.w, Y.h * Y.w * px, 1, Y.w * px, px};
    q.stride_h = q.stride_w = 1;
    return conv2d_fwd_cpu(q, static_cast<const T*>(sp), w, y, ep, packed);
  }
  if (is_pointwise(p) && p.stride_h == 1 && p.stride_w == 1) {
    const Conv2dParams f = flat_pointwise_cl(p);
    if (f.x.h != p.x.h || f.x.w != p.x.w) return conv_with(f, x, packed, y, ep, mk);
  }
  conv_with(p, x, packed, y, ep, mk);
}

#include "conv2d_backward.inc"

#define FASTCONV_INSTANTIATE(T)                                                                       \
  template void conv2d_fwd_cpu<T>(const Conv2dParams&, const T*, const T*, T*, const Epilogue<T>&, const T*); \
  template int64_t conv2d_fwd_packed_size<T>(const Conv2dParams&);                                      \
  template void conv2d_fwd_pack<T>(const Conv2dParams&, const T*, T*);                                 \
  template void conv2d_bwd_input_cpu<T>(const Conv2dParams&, const T*, const T*, T*);               \
  template void conv2d_bwd_weight_cpu<T>(const Conv2dParams&, const T*, const T*, T*);              \
  template void conv2d_bwd_bias_cpu<T>(const Tensor4&, const T*, T*);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
