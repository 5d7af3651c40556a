// The host emulation's runtime (block scheduler, barrier, fault record) and a C interface to the
// kernel layer of csrc/include/fastconv/cuda_kernels.h for tests/cuda_emu.py (ctypes). See emu_shim.h.
#include <barrier>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "emu_shim.h"
#include "common.cuh"
#include "fastconv/cuda_kernels.h"

thread_local EmuIdx threadIdx, blockIdx;
EmuIdx blockDim, gridDim;

namespace {

std::mutex g_error_mu;
std::string g_error;
long g_launches = 0;

// blockDim.x threads that run one block per round: start -> f() -> done.
class Block {
 public:
  explicit Block(unsigned n) : start_(n + 1), done_(n + 1), sync_(n) {
    for (unsigned t = 0; t < n; ++t) threads_.emplace_back([this, t] { work(t); });
  }
  ~Block() {
    quit_ = true;
    start_.arrive_and_wait();
    for (auto& t : threads_) t.join();
  }
  void run(EmuIdx block, const std::function<void()>& f) {
    block_ = block;
    job_ = &f;
    start_.arrive_and_wait();
    done_.arrive_and_wait();
  }
  void sync() { sync_.arrive_and_wait(); }

 private:
  void work(unsigned t) {
    for (;;) {
      start_.arrive_and_wait();
      if (quit_) return;
      threadIdx = {t, 0, 0};
      blockIdx = block_;
      (*job_)();
      emu_drop_copies();
      emu_drop_wgmma();
      done_.arrive_and_wait();
    }
  }
  std::vector<std::thread> threads_;
  std::barrier<> start_, done_, sync_;
  const std::function<void()>* job_ = nullptr;
  EmuIdx block_;
  bool quit_ = false;
};

std::map<unsigned, std::unique_ptr<Block>> g_blocks;  // by thread count
Block* g_current = nullptr;
std::vector<unsigned char> g_shared;                  // the running launch's dynamic shared memory (+ alignment)
std::map<const void*, int> g_max_shared;              // per kernel, raised by cudaFuncSetAttribute
constexpr size_t kDefaultShared = 48 << 10, kOptInShared = 227 << 10;  // H100
std::unique_ptr<std::atomic<int>[]> g_inflight;     // per 16-byte chunk: in-flight wgmma reads
size_t g_shared_size = 0;                             // bytes of the running launch's dynamic shared memory
int g_arch = 90;                                      // compute capability, major * 10 + minor

}  // namespace

void emu_fail(const char* what) {
  std::lock_guard<std::mutex> lock(g_error_mu);
  if (g_error.empty()) g_error = what;
}

void emu_syncthreads() { g_current->sync(); }

cudaError_t emu_set_max_dynamic_shared(const void* kernel, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > kOptInShared) return cudaErrorInvalidValue;
  g_max_shared[kernel] = bytes;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  *value = attr == cudaDevAttrComputeCapabilityMajor ? g_arch / 10 : g_arch % 10;
  return cudaSuccess;
}

size_t emu_dynamic_shared_size() { return g_shared_size; }

std::atomic<int>* emu_inflight_chunk(const void* smem) {
  const auto* c = static_cast<const unsigned char*>(smem);
  if (c < emu_dynamic_shared() || c >= emu_dynamic_shared() + g_shared_size) return nullptr;
  return &g_inflight[static_cast<size_t>(c - emu_dynamic_shared()) / 16];
}

// 128-byte aligned, as the GPU's shared memory window.
unsigned char* emu_dynamic_shared() {
  const uintptr_t p = reinterpret_cast<uintptr_t>(g_shared.data());
  return g_shared.data() + ((128 - p % 128) % 128);
}

void emu_run(const void* kernel, dim3 grid, dim3 block, size_t smem, const std::function<void()>& f) {
  ++g_launches;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return emu_fail("launch with an empty grid");
  if (grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) return emu_fail("grid dimension over the limit");
  if (block.y != 1 || block.z != 1 || block.x == 0 || block.x > 1024) return emu_fail("unsupported block shape");
  const auto opt = g_max_shared.find(kernel);
  if (smem > kDefaultShared && (opt == g_max_shared.end() || smem > static_cast<size_t>(opt->second)))
    return emu_fail("dynamic shared memory over the kernel's limit (no cudaFuncSetAttribute opt-in)");
  auto& b = g_blocks[block.x];
  if (!b) b = std::make_unique<Block>(block.x);
  g_current = b.get();
  g_shared.assign(smem + 128, 0xff);  // garbage, as on the GPU
  g_shared_size = smem;
  g_inflight.reset(new std::atomic<int>[smem / 16 + 1]());
  gridDim = {grid.x, grid.y, grid.z};
  blockDim = {block.x, 1, 1};
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) b->run({x, y, z}, f);
}

using namespace fastconv;
using namespace fastconv::cuda;

namespace {
// Tensors cross as 8 int64: sizes (N, C, H, W) then strides.
Tensor4 t4(const int64_t* a) {
  Tensor4 t;
  t.n = a[0], t.c = a[1], t.h = a[2], t.w = a[3], t.sn = a[4], t.sc = a[5], t.sh = a[6], t.sw = a[7];
  return t;
}
// geo: groups, stride h/w, leading pad h/w, dilation h/w
Conv2dParams conv(const int64_t* x, const int64_t* w, const int64_t* y, const int64_t* geo) {
  Conv2dParams p;
  p.x = t4(x), p.w = t4(w), p.y = t4(y);
  p.groups = geo[0], p.stride_h = geo[1], p.stride_w = geo[2], p.pad_h0 = geo[3], p.pad_w0 = geo[4];
  p.dil_h = geo[5], p.dil_w = geo[6];
  return p;
}
// k: kernel h/w, stride h/w, pad h/w, dilation h/w, count_include_pad, divisor_override
Pool2dParams pool(const int64_t* x, const int64_t* y, const int64_t* k) {
  Pool2dParams p;
  p.x = t4(x), p.y = t4(y);
  p.kh = k[0], p.kw = k[1], p.stride_h = k[2], p.stride_w = k[3], p.pad_h = k[4], p.pad_w = k[5];
  p.dil_h = k[6], p.dil_w = k[7], p.count_include_pad = k[8] != 0, p.divisor_override = k[9];
  return p;
}
DType dtype(int d) { return static_cast<DType>(d); }
}  // namespace

extern "C" {
// The first fault since the last call ("" if none), cleared.
const char* emu_take_error() {
  static std::string last;
  std::lock_guard<std::mutex> lock(g_error_mu);
  last.swap(g_error);
  g_error.clear();
  return last.c_str();
}
long emu_launches() { return g_launches; }
// FastDiv (common.cuh) against / and % for count dividends spread over [0, 2^31) plus the edges
// around multiples of d; returns the number of mismatches.
long emu_fastdiv_check(int64_t d, long count) {
  const FastDiv f = FastDiv::make(d);
  long bad = 0;
  uint64_t x = 88172645463325252ull;
  auto check = [&](uint32_t n) { bad += f.div(n) != n / static_cast<uint32_t>(d); };
  for (long i = 0; i < count; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    const uint32_t n = static_cast<uint32_t>(x % (uint64_t{1} << 31));
    check(n);
    const uint64_t k = n / static_cast<uint64_t>(d) * d;
    for (uint64_t e : {k, k + d - 1, k + d}) if (e < (uint64_t{1} << 31)) check(static_cast<uint32_t>(e));
  }
  check(0), check((1u << 31) - 1);
  return bad;
}

// Compute capability of the emulated device (90: the wgmma kernels where built in; 80: WMMA only).
void emu_set_arch(int arch) { g_arch = arch; }

int emu_conv_path(int dt, const int64_t* x, const int64_t* w, const int64_t* y, const int64_t* geo, int tf32) {
  return static_cast<int>(conv2d_fwd_path(conv(x, w, y, geo), dtype(dt), tf32 != 0));
}
void emu_conv_fwd(int dt, const void* x, const int64_t* xs, const void* w, const int64_t* ws, void* y,
                  const int64_t* ys, const int64_t* geo, const void* bias, const void* scale, const void* shift,
                  const void* residual, int combine, int mode, double eps, int relu, int tf32, int sms) {
  EpilogueArgs e;
  e.bias = bias, e.scale = scale, e.shift = shift, e.residual = residual;
  e.combine = combine, e.mode = mode, e.eps = eps, e.relu = relu != 0;
  conv2d_fwd(conv(xs, ws, ys, geo), dtype(dt), x, w, y, e, tf32 != 0, sms, nullptr);
}
void emu_conv_bwd_input(int dt, const void* dy, const int64_t* ys, const void* w, const int64_t* ws, void* dx,
                        const int64_t* xs, const int64_t* geo) {
  conv2d_bwd_input_simt(conv(xs, ws, ys, geo), dtype(dt), dy, w, dx, 132, nullptr);
}
int64_t emu_conv_bwd_weight_workspace(int dt, const int64_t* xs, const int64_t* ws, const int64_t* ys,
                                      const int64_t* geo, int tf32, int sms) {
  return conv2d_bwd_weight_workspace(conv(xs, ws, ys, geo), dtype(dt), tf32 != 0, sms);
}
void emu_conv_bwd_weight(int dt, const void* dy, const int64_t* ys, const void* x, const int64_t* xs, void* dw,
                         const int64_t* ws, const int64_t* geo, void* workspace, int tf32, int sms) {
  conv2d_bwd_weight(conv(xs, ws, ys, geo), dtype(dt), dy, x, dw, workspace, tf32 != 0, sms, nullptr);
}
int64_t emu_conv_bwd_bias_workspace(int dt, const int64_t* ys, int sms) {
  return conv2d_bwd_bias_workspace(t4(ys), dtype(dt), sms);
}
void emu_conv_bwd_bias(int dt, const void* dy, const int64_t* ys, void* db, void* workspace, int sms) {
  conv2d_bwd_bias(t4(ys), dtype(dt), dy, db, workspace, sms, nullptr);
}
void emu_max_pool_fwd(int dt, const void* x, const int64_t* xs, void* y, const int64_t* ys, int64_t* idx,
                      const int64_t* k) {
  max_pool2d_fwd(pool(xs, ys, k), dtype(dt), x, y, idx, nullptr);
}
void emu_max_pool_bwd(int dt, const void* gy, const int64_t* ys, const int64_t* idx, void* gx, const int64_t* xs,
                      float* acc) {
  max_pool2d_bwd(t4(ys), t4(xs), dtype(dt), gy, idx, gx, acc, nullptr);
}
void emu_avg_pool_fwd(int dt, const void* x, const int64_t* xs, void* y, const int64_t* ys, const int64_t* k) {
  avg_pool2d_fwd(pool(xs, ys, k), dtype(dt), x, y, nullptr);
}
void emu_avg_pool_bwd(int dt, const void* gy, const int64_t* ys, void* gx, const int64_t* xs, const int64_t* k) {
  avg_pool2d_bwd(pool(xs, ys, k), dtype(dt), gy, gx, nullptr);
}
void emu_adaptive_fwd(int dt, const void* x, const int64_t* xs, void* y, const int64_t* ys) {
  adaptive_avg_pool2d_fwd(t4(xs), t4(ys), dtype(dt), x, y, nullptr);
}
void emu_adaptive_bwd(int dt, const void* gy, const int64_t* ys, void* gx, const int64_t* xs) {
  adaptive_avg_pool2d_bwd(t4(ys), t4(xs), dtype(dt), gy, gx, nullptr);
}
void emu_relu_fwd(int dt, const void* x, void* y, int64_t n) { relu_fwd(dtype(dt), x, y, n, nullptr); }
void emu_relu_bwd(int dt, const void* g, const void* r, void* gx, int64_t n) {
  relu_bwd(dtype(dt), g, r, gx, n, nullptr);
}
void emu_sort_fwd(int dt, const void* a, const void* b, void* y, int64_t n, int mode, double eps) {
  sort_fwd(dtype(dt), a, b, y, n, mode, eps, nullptr);
}
void emu_sort_bwd(int dt, const void* g, const void* a, const void* b, void* ga, void* gb, int64_t n, int mode,
                  double eps) {
  sort_bwd(dtype(dt), g, a, b, ga, gb, n, mode, eps, nullptr);
}
}
