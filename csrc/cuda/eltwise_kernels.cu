// ReLU and SORT forward/backward over contiguous buffers: 16-byte vectors when every pointer is
// 16-byte aligned, scalar otherwise; 64-bit grid-stride loops; math in fp32 (fp64 for double).
#include <algorithm>
#include <limits>

#include "common.cuh"

namespace fastconv {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// Applies op(i, lane values...) to every element; In/Out are arrays of pointers.
template <typename T, int NIN, int NOUT, typename Op>
__global__ void __launch_bounds__(kThreads) eltwise_kernel(int64_t n, Op op,
                                                           const T* in0, const T* in1, const T* in2, T* out0,
                                                           T* out1, bool vec) {
  constexpr int V = kVec16<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const T* ins[3] = {in0, in1, in2};
  T* outs[2] = {out0, out1};
  if (vec) {
    const int64_t nv = n / V;
    for (int64_t i = tid; i < nv; i += stride) {
      Vec<T, V> a[NIN], o[NOUT];
#pragma unroll
      for (int j = 0; j < NIN; ++j) a[j] = load_vec<T, V>(ins[j] + i * V);
#pragma unroll
      for (int l = 0; l < V; ++l) {
        Acc<T> x[NIN], y[NOUT];
#pragma unroll
        for (int j = 0; j < NIN; ++j) x[j] = to_acc(a[j].v[l]);
        op(x, y);
#pragma unroll
        for (int j = 0; j < NOUT; ++j) o[j].v[l] = from_acc<T>(y[j]);
      }
#pragma unroll
      for (int j = 0; j < NOUT; ++j) store_vec<T, V>(outs[j] + i * V, o[j]);
    }
  }
  for (int64_t i = (vec ? n / V * V : 0) + tid; i < n; i += stride) {  // tail (or everything)
    Acc<T> x[NIN], y[NOUT];
#pragma unroll
    for (int j = 0; j < NIN; ++j) x[j] = to_acc(ins[j][i]);
    op(x, y);
#pragma unroll
    for (int j = 0; j < NOUT; ++j) outs[j][i] = from_acc<T>(y[j]);
  }
}

template <typename T, int NIN, int NOUT, typename Op>
void launch(int64_t n, Op op, cudaStream_t s, const void* a, const void* b, const void* c, void* o0,
            void* o1 = nullptr) {
  if (n == 0) return;
  auto al = [](const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  const bool vec = al(a) && al(b) && al(c) && al(o0) && al(o1);
  const int64_t work = vec ? n / kVec16<T> + 1 : n;
  eltwise_kernel<T, NIN, NOUT, Op><<<blocks_for(work, kThreads, kMaxGridBlocks), kThreads, 0, s>>>(
      n, op, static_cast<const T*>(a), static_cast<const T*>(b), static_cast<const T*>(c),
      static_cast<T*>(o0), static_cast<T*>(o1), vec);
}

template <typename A> struct ReluFwd {
  __device__ void operator()(const A* x, A* y) const { y[0] = relu_nan(x[0]); }
};
// torch's threshold_backward: 0 where result <= 0, the gradient elsewhere (NaN result passes it).
template <typename A> struct ReluBwd {
  __device__ void operator()(const A* x, A* y) const { y[0] = x[1] <= A(0) ? A(0) : x[0]; }
};
template <typename A> struct SortFwd {
  int mode;
  A eps;
  __device__ void operator()(const A* x, A* y) const { y[0] = sort_val(x[0], x[1], mode, eps); }
};
// d/da [a + b + f(relu(a) relu(b))] = 1 + [a > 0] relu(b) f'(relu(a) relu(b)), f = sqrt(. + eps) or id.
template <typename A> struct SortBwd {
  int mode;
  A eps;
  __device__ void operator()(const A* x, A* y) const {
    const A g = x[0], a = x[1], b = x[2];
    const A ra = relu_nan(a), rb = relu_nan(b);
    const A d = mode == 0 ? A(0.5) / sqrt(ra * rb + eps) : A(1);
    y[0] = g * (A(1) + (a > A(0) ? rb * d : A(0)));
    y[1] = g * (A(1) + (b > A(0) ? ra * d : A(0)));
  }
};

}  // namespace

void relu_fwd(DType dt, const void* x, void* y, int64_t n, cudaStream_t s) {
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    launch<T, 1, 1>(n, ReluFwd<Acc<T>>{}, s, x, nullptr, nullptr, y);
  });
}

void relu_bwd(DType dt, const void* g, const void* result, void* gx, int64_t n, cudaStream_t s) {
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    launch<T, 2, 1>(n, ReluBwd<Acc<T>>{}, s, g, result, nullptr, gx);
  });
}

void sort_fwd(DType dt, const void* a, const void* b, void* y, int64_t n, int mode, double eps, cudaStream_t s) {
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    launch<T, 2, 1>(n, SortFwd<Acc<T>>{mode, static_cast<Acc<T>>(eps)}, s, a, b, nullptr, y);
  });
}

void sort_bwd(DType dt, const void* g, const void* a, const void* b, void* ga, void* gb, int64_t n, int mode,
              double eps, cudaStream_t s) {
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    // eps raised to the smallest normal number, as on the CPU: with eps = 0 and an operand at 0 the
    // derivative term is then (finite) * 0 = 0, its true value, instead of 0 * inf = NaN.
    const Acc<T> e = std::max(static_cast<Acc<T>>(eps), std::numeric_limits<Acc<T>>::min());
    launch<T, 3, 2>(n, SortBwd<Acc<T>>{mode, e}, s, g, a, b, ga, gb);
  });
}

}  // namespace cuda
}  // namespace fastconv
