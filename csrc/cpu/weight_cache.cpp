// The CPU convolution's cache of packed weights (the forward's weight panels or Winograd transforms),
// used by csrc/cpu/conv2d.cpp; fastconv.clear_weight_cache() and info() reach it through csrc/ops.cpp.
#include <ATen/ATen.h>

#include <functional>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "fastconv/torch_utils.h"

namespace fastconv {
namespace {

// Inference calls the same convolutions with the same weights over and over; packing them costs a
// pass over the weights per call, as much as the convolution itself for batch-1 layers with large
// weights. Weights registered for it (fastconv.convert / fuse register the convolutions of the
// models they fuse for inference) keep their packed form while the tensor's storage is alive and
// unchanged (same data pointer, sizes, strides) and its version counter has not moved: every
// in-place torch op bumps it (under no_grad and inference_mode too), so optimizer steps,
// load_state_dict and copy_ are seen. Writes that bypass the counter (through `.data` or a NumPy
// view) are not: call fastconv.clear_weight_cache() after those, or convert again. Unregistered
// weights (plain calls, tests perturbing `.data`, training) are packed on every call. Only weights
// that take no gradient in the call use it. FASTCONV_WEIGHT_CACHE_MB bounds the packed bytes
// (default 512; 0 turns the cache off).
struct PackEntry {
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  std::vector<int64_t> sizes, strides;
  at::ScalarType dtype;
  int64_t version = -1, kind = -1;  // of the packed form; kind: groups, output layout, size, ISA path
  at::Tensor packed;
};

class WeightCache {
 public:
  static WeightCache& get() {
    static WeightCache c;
    return c;
  }
  void allow(const at::Tensor& w) {
    if (limit_ <= 0 || !w.has_storage() || w.is_inference() || !w.device().is_cpu()) return;
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = map_.begin(); it != map_.end();) {  // forget the freed weights
      if (it->second.storage.expired()) {
        bytes_ -= bytes_of(it->second.packed);
        it = map_.erase(it);
      } else {
        ++it;
      }
    }
    auto old = map_.find(w.data_ptr());
    if (old != map_.end()) bytes_ -= bytes_of(old->second.packed);
    if (old != map_.end()) map_.erase(old);
    map_.emplace(w.data_ptr(), PackEntry{w.storage().getWeakStorageImpl(), w.sizes().vec(), w.strides().vec(),
                                         w.scalar_type()});
  }
  // The packed form of registered weight w for `kind`, made by pack(out) when missing or stale;
  // an undefined tensor when w is not registered (or no longer the tensor that was).
  at::Tensor packed(const at::Tensor& w, int64_t kind, int64_t size, const at::TensorOptions& opts,
                    const std::function<void(at::Tensor&)>& pack) {
    if (w.is_inference() || !w.has_storage()) return at::Tensor();
    std::unique_lock<std::mutex> lock(mu_);
    auto it = map_.find(w.data_ptr());
    if (it == map_.end()) return at::Tensor();
    PackEntry& e = it->second;
    auto alive = e.storage.lock();  // the same storage, still alive (not a new one at a reused address)
    if (!alive || alive.get() != w.storage().unsafeGetStorageImpl() || e.dtype != w.scalar_type() ||
        w.sizes() != at::IntArrayRef(e.sizes) || w.strides() != at::IntArrayRef(e.strides)) {
      bytes_ -= bytes_of(e.packed);
      map_.erase(it);
      return at::Tensor();
    }
    const int64_t version = w._version();
    if (e.packed.defined() && e.version == version && e.kind == kind) return e.packed;
    lock.unlock();
    at::Tensor out = at::empty({size}, opts);
    pack(out);
    lock.lock();
    it = map_.find(w.data_ptr());
    if (it != map_.end() && bytes_ - bytes_of(it->second.packed) + bytes_of(out) <= limit_) {
      bytes_ += bytes_of(out) - bytes_of(it->second.packed);
      it->second.packed = out;
      it->second.version = version;
      it->second.kind = kind;
    }
    return out;
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    map_.clear();
    bytes_ = 0;
  }
  std::tuple<int64_t, int64_t, int64_t> stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {static_cast<int64_t>(map_.size()), bytes_, limit_};
  }

 private:
  WeightCache() : limit_(env_megabytes("FASTCONV_WEIGHT_CACHE_MB", 512)) {}
  static int64_t bytes_of(const at::Tensor& t) {
    return t.defined() ? t.numel() * static_cast<int64_t>(t.element_size()) : 0;
  }
  std::mutex mu_;
  std::unordered_map<const void*, PackEntry> map_;
  int64_t bytes_ = 0, limit_ = 0;
};

}  // namespace

void cache_weight(const at::Tensor& weight) { WeightCache::get().allow(weight); }
void clear_weight_cache() { WeightCache::get().clear(); }
std::tuple<int64_t, int64_t, int64_t> weight_cache_stats() { return WeightCache::get().stats(); }

at::Tensor cached_packed_weight(const at::Tensor& weight, int64_t kind, int64_t size, const at::TensorOptions& opts,
                                const std::function<void(at::Tensor&)>& pack) {
  return WeightCache::get().packed(weight, kind, size, opts, pack);
}

}  // namespace fastconv
