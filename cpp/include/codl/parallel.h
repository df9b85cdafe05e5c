// A persistent worker pool. Callers pass the thread count they may use (Python passes
// torch.get_num_threads()), so codl never runs more threads than torch would.
#pragma once

#include <cstddef>
#include <functional>

namespace codl {

// Splits [0, n) into contiguous chunks whose starts are multiples of `align`, at most
// `num_threads` of them and none smaller than `min_chunk` (small jobs stay on the calling
// thread), and runs fn(begin, end) on each. Nested or concurrent calls run serially. The caller
// runs chunks too and returns once every chunk has finished, without waiting for workers that
// took none (asleep or descheduled): a call is never much slower than running it serially.
void parallel_for(std::size_t n, std::size_t align, std::size_t min_chunk, int num_threads,
                  const std::function<void(std::size_t, std::size_t)>& fn);

// Runs fn(task) for every task in [0, count) on up to `num_threads` threads, each thread
// claiming the next unclaimed task when it finishes one (dynamic scheduling: list costly tasks
// first). Which thread runs a task varies from run to run; tasks must not depend on it.
void parallel_tasks(std::size_t count, int num_threads, const std::function<void(std::size_t)>& fn);

// Number of worker threads the pool has started so far (for reports and tests).
int pool_threads_started();

// The CPU the calling thread runs on (-1 where the system does not say).
int current_cpu();

// Moves the calling thread off `cpu` onto another CPU its affinity mask allows, keeping the
// mask; false (and nothing changed) where the mask holds no other CPU, `cpu` is not in it, or
// the system has no such call. A pool worker woken on its caller's CPU uses it.
bool move_off_cpu(int cpu);

// For tests: while held, the pool's workers claim no chunk of any job (they sleep), as when the
// operating system never schedules them; callers then run every chunk themselves. Holding
// returns once every worker sleeps (within the workers' spin, ~200 us, when nothing runs).
void pool_hold_workers(bool hold);

}  // namespace codl
