#include "core/threadpool.h"

#include <chrono>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif

namespace slimrt {

namespace {

constexpr int kSpins = 4000;  // the caller's wait for the last chunks, before yielding
// A worker keeps spinning this long after its last job before it sleeps: long
// enough to bridge the serial steps of a run, short enough to give the core
// back soon after it.
constexpr std::chrono::microseconds kWorkerSpin{500};
constexpr uint64_t kGenBits = 20, kCountBits = 22;
constexpr uint64_t kCountMask = (uint64_t{1} << kCountBits) - 1;
constexpr uint64_t kGenMask = (uint64_t{1} << kGenBits) - 1;

inline uint64_t pack(uint64_t gen, uint64_t total, uint64_t next) {
  return ((gen & kGenMask) << (2 * kCountBits)) | (total << kCountBits) | next;
}
inline uint64_t gen_of(uint64_t s) { return s >> (2 * kCountBits); }
inline uint64_t total_of(uint64_t s) { return (s >> kCountBits) & kCountMask; }
inline uint64_t next_of(uint64_t s) { return s & kCountMask; }

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace

ThreadPool::ThreadPool(int threads) : threads_(threads < 1 ? 1 : threads) {
  for (int i = 1; i < threads_; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true, std::memory_order_release);
    wake_.fetch_add(1, std::memory_order_acq_rel);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

// Claims and runs chunks of generation `gen` until none is left. A successful
// claim means the chunk is not done, so run() has not returned and task_ /
// ctx_ are that generation's.
void ThreadPool::claim(uint64_t gen, int index) {
  uint64_t s = state_.load(std::memory_order_acquire);
  for (;;) {
    if (gen_of(s) != (gen & kGenMask) || next_of(s) >= total_of(s)) return;
    if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
      task_(ctx_, static_cast<int64_t>(next_of(s)), index);
      done_.fetch_add(1, std::memory_order_acq_rel);
      s = state_.load(std::memory_order_acquire);
    }
  }
}

void ThreadPool::run(int64_t chunks, Task task, void* ctx) {
  if (chunks <= 0) return;
  if (threads_ == 1 || chunks == 1) {
    for (int64_t c = 0; c < chunks; ++c) task(ctx, c, 0);
    return;
  }
  const uint64_t gen = ++generation_;
  task_ = task;
  ctx_ = ctx;
  done_.store(0, std::memory_order_relaxed);
  state_.store(pack(gen, static_cast<uint64_t>(chunks), 0), std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(mu_);
    wake_.store(gen, std::memory_order_release);
  }
  cv_.notify_all();
  claim(gen, 0);
  for (int spin = 0; done_.load(std::memory_order_acquire) < chunks; ++spin) {
    if (spin < kSpins)
      cpu_relax();
    else
      std::this_thread::yield();
  }
}

void ThreadPool::warm() {
  if (threads_ == 1) return;
#if defined(__linux__)
  const int cpu = sched_getcpu();
  if (cpu >= 0 && cpu != caller_cpu_) {
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof(allowed), &allowed) == 0 && CPU_ISSET(cpu, &allowed) &&
        CPU_COUNT(&allowed) >= 2) {
      CPU_CLR(cpu, &allowed);
      for (auto& t : workers_) pthread_setaffinity_np(t.native_handle(), sizeof(allowed), &allowed);
    }
    caller_cpu_ = cpu;
  }
#endif
  const uint64_t gen = ++generation_;
  state_.store(pack(gen, 0, 0), std::memory_order_release);  // nothing to claim
  {
    std::lock_guard<std::mutex> lock(mu_);
    wake_.store(gen, std::memory_order_release);
  }
  cv_.notify_all();
}

void ThreadPool::worker(int index) {
  uint64_t seen = 0;  // generation 0 precedes every job
  for (;;) {
    uint64_t now = wake_.load(std::memory_order_acquire);
    if (now == seen) {
      const auto until = std::chrono::steady_clock::now() + kWorkerSpin;
      for (uint32_t spin = 1; now == seen; ++spin) {
        cpu_relax();
        now = wake_.load(std::memory_order_acquire);
        if (spin % 64 == 0 && std::chrono::steady_clock::now() > until) break;
      }
    }
    if (now == seen) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return wake_.load(std::memory_order_acquire) != seen; });
      continue;
    }
    seen = now;
    if (stop_.load(std::memory_order_acquire)) return;
    claim(now, index);
  }
}

}  // namespace slimrt
