// The freed-block cache behind the CPU output cache and the kernels' scratch pools: a request takes
// the smallest kept block of at least its size and under twice it; a miss frees the kept blocks
// too small for it (up to about its size) and keeps the rest; the limit bounds what is kept.
#include <cstdlib>

#include "check.h"
#include "fastconv/free_blocks.h"

using fastconv::FreeBlocks;

namespace {

void* block(size_t bytes) { return std::aligned_alloc(64, bytes); }

void test_take_fits() {
  FreeBlocks fb(1000 * 64);
  void* a = block(64 * 10);
  void* b = block(64 * 30);
  fb.give(a, 64 * 10);
  fb.give(b, 64 * 30);
  CHECK(fb.held() == 64 * 40);
  CHECK(fb.take(64 * 40) == nullptr);   // larger than every block: a miss
  CHECK(fb.held() == 64 * 30);          // ... that freed the block under half its size, kept the other
  CHECK(fb.take(64 * 14) == nullptr);   // 30 is more than twice 14: not handed out, and not freed
  CHECK(fb.held() == 64 * 30);
  CHECK(fb.take(64 * 16) == b);         // 16 <= 30 < 32
  CHECK(fb.held() == 0);
  std::free(b);
}

void test_twice_is_kept_for_its_size() {
  FreeBlocks fb(1000 * 64);
  void* a = block(64 * 20);
  fb.give(a, 64 * 20);
  CHECK(fb.take(64 * 10) == nullptr);  // exactly twice: kept for a request of its own size
  CHECK(fb.held() == 64 * 20);
  CHECK(fb.take(64 * 11) == a);
  std::free(a);
}

void test_miss_frees_about_the_request() {
  FreeBlocks fb(1000 * 64);
  for (int i = 0; i < 6; ++i) fb.give(block(64 * 4), 64 * 4);
  CHECK(fb.take(64 * 10) == nullptr);  // frees 12 (three blocks of 4), keeps three
  CHECK(fb.held() == 64 * 12);
}

void test_limit() {
  FreeBlocks fb(64 * 10);
  fb.give(block(64 * 6), 64 * 6);
  fb.give(block(64 * 6), 64 * 6);  // the older one goes
  CHECK(fb.held() == 64 * 6);
  fb.give(block(64 * 11), 64 * 11);  // over the limit on its own: freed at once
  CHECK(fb.held() == 64 * 6);
  fb.clear();
  CHECK(fb.held() == 0);
}

}  // namespace

int main() {
  test_take_fits();
  test_twice_is_kept_for_its_size();
  test_miss_frees_about_the_request();
  test_limit();
  return TEST_MAIN_RESULT();
}
