// A persistent worker pool. Callers pass the thread count they may use (Python passes
// torch.get_num_threads()), so codl never runs more threads than torch would.
#pragma once

#include <cstddef>
#include <functional>

namespace codl {

// Splits [0, n) into contiguous chunks whose starts are multiples of `align`, at most
// `num_threads` of them and none smaller than `min_chunk` (small jobs stay on the calling
// thread), and runs fn(begin, end) on each. Nested or concurrent calls run serially.
void parallel_for(std::size_t n, std::size_t align, std::size_t min_chunk, int num_threads,
                  const std::function<void(std::size_t, std::size_t)>& fn);

// Number of worker threads the pool has started so far (for reports and tests).
int pool_threads_started();

}  // namespace codl
