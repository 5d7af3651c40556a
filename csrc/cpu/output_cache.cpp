// Memory for large CPU outputs. A freshly mapped multi-megabyte output costs a page fault and a page
// clear per 4 KB on its first write: on the 2-core VMs about 2 µs per page, 10% of a ResNet-50
// forward at batch 8 (24 000 faults per pass, most of them in activations freed one layer later).
// Outputs of 1 MB and more therefore come from a process-wide cache of freed blocks, the way the CUDA
// caching allocator serves GPU tensors: a block is reused for requests of up to its size and more
// than half of it; at most FASTCONV_OUTPUT_CACHE_MB (default 256, 0: off) is kept free, oldest
// returned first. Tensors are ordinary CPU tensors (resizable, any op can free them on any thread).
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <utility>

#include "fastconv/free_blocks.h"
#include "fastconv/torch_utils.h"

namespace fastconv {
namespace {

constexpr size_t kMinBytes = size_t(1) << 20;
constexpr size_t kAlign = 64;

class OutputCache final : public c10::Allocator {
 public:
  static OutputCache& get() {
    static OutputCache* cache = new OutputCache();  // never destroyed: tensors may outlive static teardown
    return *cache;
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes || blocks_.limit() == 0) return c10::GetCPUAllocator()->allocate(n);
    const size_t bytes = (n + kAlign - 1) / kAlign * kAlign;
    void* p;
    {
      std::lock_guard<std::mutex> lock(mu_);
      p = blocks_.take(bytes);
    }
    if (!p) {
      p = std::aligned_alloc(kAlign, bytes);
      if (!p) throw std::bad_alloc();
    }
    // The context records the block's size for the deleter.
    auto* ctx = new Block{p, bytes};
    return {p, ctx, &OutputCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }

  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }

  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    blocks_.clear();
  }

  std::pair<int64_t, int64_t> stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {static_cast<int64_t>(blocks_.held()), static_cast<int64_t>(blocks_.limit())};
  }

 private:
  struct Block {
    void* ptr;
    size_t bytes;
  };

  static void release(void* ctx) {
    auto* b = static_cast<Block*>(ctx);
    {
      OutputCache& c = get();
      std::lock_guard<std::mutex> lock(c.mu_);
      c.blocks_.give(b->ptr, b->bytes);
    }
    delete b;
  }

  std::mutex mu_;
  FreeBlocks blocks_{static_cast<size_t>(env_megabytes("FASTCONV_OUTPUT_CACHE_MB", 256))};
};

}  // namespace

at::Tensor empty4(at::IntArrayRef sizes, const at::TensorOptions& opts, at::MemoryFormat fmt) {
  if (opts.device().type() != c10::DeviceType::CPU) return at::empty(sizes, opts.memory_format(fmt));
  return at::detail::empty_generic(sizes, &OutputCache::get(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(opts.dtype()), fmt);
}

void clear_output_cache() { OutputCache::get().clear(); }

std::pair<int64_t, int64_t> output_cache_stats() { return OutputCache::get().stats(); }

}  // namespace fastconv
