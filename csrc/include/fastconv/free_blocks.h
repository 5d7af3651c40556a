// Freed memory blocks kept for reuse (blocks from std::aligned_alloc, released with std::free). Not
// thread-safe: an owner shared between threads locks around it. take(bytes) hands back the smallest
// kept block of at least `bytes` and under twice that, or nullptr after freeing about `bytes` of
// kept blocks; give() keeps a block while at
// most `limit` bytes are kept in all, freeing the oldest first (a block past the limit on its own
// is freed at once).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <utility>
#include <vector>

namespace fastconv {

// A size limit from the environment: `name` in MB (negative or unparsable: 0), else `dflt_mb`; in bytes.
inline int64_t env_megabytes(const char* name, int64_t dflt_mb) {
  const char* env = std::getenv(name);
  return std::max<int64_t>(0, env && *env ? std::atoll(env) : dflt_mb) << 20;
}

class FreeBlocks {
 public:
  explicit FreeBlocks(size_t limit) : limit_(limit) {}
  FreeBlocks(const FreeBlocks&) = delete;
  FreeBlocks& operator=(const FreeBlocks&) = delete;
  ~FreeBlocks() { clear(); }

  void* take(size_t bytes) {
    // Under twice, not up to: a network's activations halve from stage to stage (ResNet-50 at batch
    // 8: 25.7, 12.8, 6.4, 3.2 MB), and a request that took a block of exactly twice its size left
    // the next pass one block short of the larger size: a fresh 25.7 MB output, 6 300 page faults
    // (about 15 ms) every other forward.
    size_t best = free_.size();
    for (size_t i = 0; i < free_.size(); ++i)
      if (free_[i].first >= bytes && free_[i].first / 2 < bytes &&
          (best == free_.size() || free_[i].first < free_[best].first))
        best = i;
    if (best == free_.size()) {
      // A miss: free about `bytes` of the kept blocks too small for it (under half its size, oldest
      // first) before the caller allocates, so blocks that requests have outgrown (the small
      // gradients of a backward pass before the large ones) do not add to the process's peak.
      size_t freed = 0;
      for (size_t i = 0; i < free_.size() && freed < bytes;) {
        if (free_[i].first * 2 >= bytes) {
          ++i;
          continue;
        }
        freed += free_[i].first;
        std::free(remove(i));
      }
      return nullptr;
    }
    return remove(best);
  }

  void give(void* p, size_t bytes) {
    if (bytes > limit_) return std::free(p);
    while (!free_.empty() && held_ + bytes > limit_) std::free(remove(0));
    free_.emplace_back(bytes, p);
    held_ += bytes;
  }

  void clear() {
    for (auto& b : free_) std::free(b.second);
    free_.clear();
    held_ = 0;
  }

  size_t held() const { return held_; }
  size_t limit() const { return limit_; }

 private:
  // Takes kept block i out of the list; returns it.
  void* remove(size_t i) {
    void* p = free_[i].second;
    held_ -= free_[i].first;
    free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
    return p;
  }

  std::vector<std::pair<size_t, void*>> free_;  // (bytes, block), oldest first
  size_t held_ = 0, limit_;
};

}  // namespace fastconv
