// A small persistent pool. One job runs at a time; a caller that finds the pool busy, or calls
// from inside a job, runs its work on its own thread instead.
//
// A job is published as one 64-bit word: its epoch (a job counter), its chunk count and the next
// unclaimed chunk. A thread claims a chunk by a compare-and-swap of that word, so a worker that
// read the word of an earlier job can never claim a chunk of a later one (the epoch differs and
// the swap fails). The caller claims chunks like any worker and returns as soon as every chunk
// has *completed* (a counter of finished chunks): it never waits for a worker that did not take
// part, so a caller that did all the work itself (its workers asleep, or descheduled by other
// processes on the same cores) returns at once. Workers spin briefly for the next job, since
// layers of a small model follow each other within microseconds, then sleep on a condition
// variable; the caller wakes sleepers with a notify and does not wait for them to come.
//
// A spinning worker yields its core between short bursts of pause instructions. The scheduler
// may put a woken worker on its caller's core: a virtual machine's scheduler that packs light
// threads onto few vCPUs does so after every idle spell (measured on a 2-vCPU EPYC: after a
// 100 ms pause, codl's 2-thread FashionCNN at batch 1 ran 70-80 us a call with the worker and
// the caller on one vCPU, its threads waiting 0.9 s for a CPU per second of work, against 44-48
// us with the threads pinned apart). A worker that spins without yielding then holds the core
// its caller needs for the whole spin; one that yields hands it back at once (42-53 us), and
// costs a lone worker one system call per burst. A worker that finds a job while it is on the
// caller's CPU moves to another CPU of its affinity mask (the mask itself is kept): the
// packing scheduler left codl's 2-thread FashionCNN at batch 64 at its 1-thread speed after
// each idle spell (2.5 ms a call against 1.3 ms in a loop); moved, it ran 1.5-1.6 ms. Pinning
// the workers would have done it too, but would fight the user's own affinity settings.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include <sched.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "codl/parallel.h"

namespace codl {
namespace {

thread_local bool inside_job = false;

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#elif defined(__aarch64__)
    asm volatile("yield" ::: "memory");
#endif
}

// The job word: epoch in the high 32 bits, chunk count in the next 16, next chunk in the low 16.
constexpr std::uint64_t kFieldMask = 0xFFFF;
constexpr std::size_t kMaxChunks = kFieldMask;

std::uint64_t make_word(std::uint64_t epoch, std::uint64_t chunks, std::uint64_t next) {
    return (epoch << 32) | (chunks << 16) | next;
}
std::uint64_t word_chunks(std::uint64_t word) { return (word >> 16) & kFieldMask; }
std::uint64_t word_next(std::uint64_t word) { return word & kFieldMask; }
bool claimable(std::uint64_t word) { return word_next(word) < word_chunks(word); }

// How long an idle worker watches for the next job before it sleeps: long enough to catch the
// next layer of a small model and the next call of a model called in a loop; the spin yields
// its core between bursts, so other work on that core is not held up by it.
constexpr auto kWorkerSpin = std::chrono::microseconds(200);
// Pause instructions in one burst of the spin (~0.2-0.5 us), before the worker yields.
constexpr int kPausesPerBurst = 16;

class Pool {
public:
    ~Pool() {
        if (forked()) return;  // the workers belong to the parent process
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_.store(true);
        }
        wake_.notify_all();
        for (std::thread& t : workers_) t.join();
    }

    // Runs chunk(c) for c in [0, chunks) on the caller and up to chunks - 1 workers; false if
    // another job holds the pool (or the job cannot be published), and then nothing ran.
    bool run(std::size_t chunks, const std::function<void(std::size_t)>& chunk) {
        // A forked child (a DataLoader worker, say) has none of the parent's threads and may
        // have inherited a held lock: it runs its work serially.
        if (forked() || chunks > kMaxChunks) return false;
        if (busy_.exchange(true, std::memory_order_acquire)) return false;
        grow(chunks - 1);
        job_ = &chunk;
        completed_.store(0, std::memory_order_relaxed);
        ++epoch_;
        caller_cpu_.store(current_cpu(), std::memory_order_relaxed);  // published with the job
        // Sequentially consistent store and load: either a worker about to sleep sees this job,
        // or this thread sees that worker counted in sleepers_ and wakes it.
        word_.store(make_word(epoch_, chunks, 0));
        if (sleepers_.load() > 0) {
            // Taking the mutex orders this notify after a sleeper's last check of word_.
            { std::lock_guard<std::mutex> lock(mutex_); }
            wake_.notify_all();
        }
        inside_job = true;
        while (take_one()) {
        }
        inside_job = false;
        // Every chunk is claimed; wait only for chunks that other threads are running.
        for (unsigned spins = 0; completed_.load(std::memory_order_acquire) != chunks; ++spins) {
            if (spins < 256) {
                cpu_relax();
            } else {
                std::this_thread::yield();  // the thread we wait for may need this core
            }
        }
        busy_.store(false, std::memory_order_release);
        return true;
    }

    int started() {
        std::lock_guard<std::mutex> lock(mutex_);
        return static_cast<int>(workers_.size());
    }

    void hold_workers(bool hold) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            held_.store(hold);
        }
        if (!hold) {
            wake_.notify_all();
            return;
        }
        // Returns once every worker sleeps: one that read held_ just before the store could
        // otherwise still claim a chunk of the next job (seen under qemu, whose threads stall
        // for long stretches). A sleeper wakes only to find may_take() false while held.
        for (;;) {
            {
                std::lock_guard<std::mutex> lock(mutex_);
                if (static_cast<std::size_t>(sleepers_.load()) == workers_.size()) return;
            }
            std::this_thread::yield();
        }
    }

private:
    bool forked() const { return getpid() != owner_; }

    void grow(std::size_t wanted) {
        if (workers_count_.load(std::memory_order_relaxed) >= wanted) return;
        std::lock_guard<std::mutex> lock(mutex_);
        while (workers_.size() < wanted) workers_.emplace_back([this] { work(); });
        workers_count_.store(workers_.size(), std::memory_order_relaxed);
    }

    // Claims one chunk of the published job and runs it; false when none is left to claim.
    bool take_one() {
        std::uint64_t word = word_.load(std::memory_order_acquire);
        while (claimable(word)) {
            if (word_.compare_exchange_weak(word, word + 1, std::memory_order_acq_rel,
                                            std::memory_order_acquire)) {
                // The claim is of this job: job_ cannot change before its chunks complete.
                (*job_)(static_cast<std::size_t>(word_next(word)));
                completed_.fetch_add(1, std::memory_order_release);
                return true;
            }
        }
        return false;
    }

    bool may_take() const { return !held_.load(std::memory_order_relaxed) && claimable(word_.load()); }

    void work() {
        inside_job = true;
        for (;;) {
            if (stopping_.load()) return;
            if (!held_.load(std::memory_order_relaxed) && claimable(word_.load())) {
                // A worker woken onto its caller's CPU could only run after the caller: move.
                const int caller = caller_cpu_.load(std::memory_order_relaxed);
                if (caller >= 0 && current_cpu() == caller) move_off_cpu(caller);
                if (take_one()) continue;
            }
            // Spin a while for the next job before sleeping.
            const auto until = std::chrono::steady_clock::now() + kWorkerSpin;
            bool found = false;
            for (unsigned spins = 0; !found; ++spins) {
                for (int i = 0; i < kPausesPerBurst; ++i) cpu_relax();
                found = may_take() || stopping_.load();
                if (found) break;
                std::this_thread::yield();  // the caller may be waiting for this core
                if ((spins & 15) == 15 && std::chrono::steady_clock::now() >= until) break;
            }
            if (found) continue;
            std::unique_lock<std::mutex> lock(mutex_);
            sleepers_.fetch_add(1);
            wake_.wait(lock, [this] { return stopping_.load() || may_take(); });
            sleepers_.fetch_sub(1);
        }
    }

    std::atomic<int> caller_cpu_{-1};  // where the caller of the current job published it
    std::atomic<bool> busy_{false};  // held by the caller for the whole of one job
    std::atomic<std::uint64_t> word_{0};
    std::atomic<std::size_t> completed_{0};
    std::atomic<int> sleepers_{0};
    std::atomic<bool> stopping_{false}, held_{false};
    std::atomic<std::size_t> workers_count_{0};
    // Written only by the caller that holds busy_, before it publishes word_.
    const std::function<void(std::size_t)>* job_ = nullptr;
    std::uint64_t epoch_ = 0;
    std::mutex mutex_;  // guards workers_ and orders sleeping against waking
    std::condition_variable wake_;
    std::vector<std::thread> workers_;
    const pid_t owner_ = getpid();
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

int current_cpu() {
#if defined(__linux__)
    return sched_getcpu();
#else
    return -1;
#endif
}

bool move_off_cpu(int cpu) {
#if defined(__linux__)
    cpu_set_t allowed;
    if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(0, sizeof allowed, &allowed) != 0) return false;
    if (!CPU_ISSET(cpu, &allowed) || CPU_COUNT(&allowed) < 2) return false;
    cpu_set_t others = allowed;
    CPU_CLR(cpu, &others);
    // The kernel migrates a thread at once when its mask excludes the CPU it is on; giving the
    // mask back afterwards leaves it where it went.
    if (sched_setaffinity(0, sizeof others, &others) != 0) return false;
    sched_setaffinity(0, sizeof allowed, &allowed);
    return true;
#else
    (void)cpu;
    return false;
#endif
}

void pool_hold_workers(bool hold) { pool().hold_workers(hold); }

}  // namespace codl
