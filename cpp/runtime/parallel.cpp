// A small persistent pool: workers sleep on a condition variable between jobs, so a call pays a
// wake-up (microseconds) rather than thread creation. One job runs at a time; a caller that finds
// the pool busy, or calls from inside a job, runs its work on its own thread instead.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include <unistd.h>
#include <vector>

#include "codl/parallel.h"

namespace codl {
namespace {

thread_local bool inside_job = false;

class Pool {
public:
    ~Pool() {
        if (forked()) return;  // the workers belong to the parent process
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        for (std::thread& t : workers_) t.join();
    }

    // Runs chunk(c) for c in [0, chunks) on the caller and up to chunks - 1 workers; false if
    // another job holds the pool.
    bool run(std::size_t chunks, const std::function<void(std::size_t)>& chunk) {
        // A forked child (a DataLoader worker, say) has none of the parent's threads and may
        // have inherited a held lock: it runs its work serially.
        if (forked()) return false;
        std::unique_lock<std::mutex> busy(job_mutex_, std::try_to_lock);
        if (!busy.owns_lock()) return false;
        grow(chunks - 1);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            job_.store(&chunk);
            chunks_.store(chunks);
            remaining_ = chunks;
            unacknowledged_ = workers_.size();
            next_.store(0);
            ++generation_;
        }
        wake_.notify_all();
        inside_job = true;
        const std::size_t ran = take_chunks();
        inside_job = false;
        std::unique_lock<std::mutex> lock(mutex_);
        remaining_ -= ran;
        // Every worker must have seen this job end before the next one may reuse the fields,
        // or a late worker could claim a chunk of the next job with this job's counter.
        done_.wait(lock, [this] { return remaining_ == 0 && unacknowledged_ == 0; });
        job_.store(nullptr);
        return true;
    }

    int started() {
        std::lock_guard<std::mutex> lock(mutex_);
        return static_cast<int>(workers_.size());
    }

private:
    bool forked() const { return getpid() != owner_; }

    void grow(std::size_t wanted) {
        std::lock_guard<std::mutex> lock(mutex_);
        // A new worker waits for the next job, not for one that ended before it started.
        while (workers_.size() < wanted) {
            workers_.emplace_back([this, current = generation_] { work(current); });
        }
    }

    // Claims chunks until none are left; returns how many this thread ran.
    std::size_t take_chunks() {
        std::size_t ran = 0;
        for (std::size_t c; (c = next_.fetch_add(1)) < chunks_.load(); ++ran) (*job_.load())(c);
        return ran;
    }

    void work(std::uint64_t seen) {
        inside_job = true;
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
            if (stopping_) return;
            seen = generation_;
            lock.unlock();
            const std::size_t ran = take_chunks();
            lock.lock();
            --unacknowledged_;
            remaining_ -= ran;
            if (remaining_ == 0 && unacknowledged_ == 0) done_.notify_one();
        }
    }

    std::mutex job_mutex_;  // held for the whole of one job
    std::mutex mutex_;      // guards the fields below
    std::condition_variable wake_, done_;
    std::vector<std::thread> workers_;
    const pid_t owner_ = getpid();
    std::atomic<const std::function<void(std::size_t)>*> job_{nullptr};
    std::atomic<std::size_t> chunks_{0}, next_{0};
    std::size_t remaining_ = 0, unacknowledged_ = 0;
    std::uint64_t generation_ = 0;
    bool stopping_ = false;
};

Pool& pool() {
    static Pool instance;
    return instance;
}

}  // namespace

void parallel_for(std::size_t n, std::size_t align, std::size_t min_chunk, int num_threads,
                  const std::function<void(std::size_t, std::size_t)>& fn) {
    if (n == 0) return;
    align = std::max<std::size_t>(align, 1);
    const std::size_t by_size = std::max<std::size_t>(n / std::max<std::size_t>(min_chunk, 1), 1);
    const std::size_t chunks = std::min<std::size_t>(std::max(num_threads, 1), by_size);
    // Round each chunk up to the alignment so every chunk but the last starts on a boundary.
    const std::size_t per_chunk = ((n + chunks - 1) / chunks + align - 1) / align * align;
    const std::size_t used = (n + per_chunk - 1) / per_chunk;
    auto run_chunk = [&](std::size_t c) {
        const std::size_t begin = c * per_chunk;
        fn(begin, std::min(n, begin + per_chunk));
    };
    if (used <= 1 || inside_job || !pool().run(used, run_chunk)) {
        for (std::size_t c = 0; c < used; ++c) run_chunk(c);
    }
}

void parallel_tasks(std::size_t count, int num_threads, const std::function<void(std::size_t)>& fn) {
    if (count == 0) return;
    const std::size_t workers = std::min<std::size_t>(count, static_cast<std::size_t>(std::max(num_threads, 1)));
    std::atomic<std::size_t> next{0};
    // One chunk per worker; each drains the shared counter. Run serially (pool busy, nested call),
    // the first chunk takes every task.
    parallel_for(workers, 1, 1, static_cast<int>(workers), [&](std::size_t begin, std::size_t end) {
        for (std::size_t w = begin; w < end; ++w) {
            for (std::size_t task; (task = next.fetch_add(1)) < count;) fn(task);
        }
    });
}

int pool_threads_started() { return pool().started(); }

}  // namespace codl
