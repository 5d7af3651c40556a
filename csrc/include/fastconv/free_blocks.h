// Freed memory blocks kept for reuse (blocks from std::aligned_alloc, released with std::free). Not
// thread-safe: an owner shared between threads locks around it. take(bytes) hands back the smallest
// kept block of at least `bytes` and at most twice that, or nullptr; give() keeps a block while at
// most `limit` bytes are kept in all, freeing the oldest first (a block past the limit on its own
// is freed at once).
#pragma once
#include <cstddef>
#include <cstdlib>
#include <utility>
#include <vector>

namespace fastconv {

class FreeBlocks {
 public:
  explicit FreeBlocks(size_t limit) : limit_(limit) {}
  FreeBlocks(const FreeBlocks&) = delete;
  FreeBlocks& operator=(const FreeBlocks&) = delete;
  ~FreeBlocks() { clear(); }

  void* take(size_t bytes) {
    size_t best = free_.size();
    for (size_t i = 0; i < free_.size(); ++i)
      if (free_[i].first >= bytes && free_[i].first / 2 <= bytes &&
          (best == free_.size() || free_[i].first < free_[best].first))
        best = i;
    if (best == free_.size()) return nullptr;
    void* p = free_[best].second;
    held_ -= free_[best].first;
    free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(best));
    return p;
  }

  void give(void* p, size_t bytes) {
    if (bytes > limit_) return std::free(p);
    while (!free_.empty() && held_ + bytes > limit_) {
      std::free(free_.front().second);
      held_ -= free_.front().first;
      free_.erase(free_.begin());
    }
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
  std::vector<std::pair<size_t, void*>> free_;  // (bytes, block), oldest first
  size_t held_ = 0, limit_;
};

}  // namespace fastconv
