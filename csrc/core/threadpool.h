// A small fork-join pool owned by one session. The calling thread takes part.
// Work is split into chunks that threads claim one at a time, so a thread the
// OS does not schedule (another program holds its core) leaves its share to
// the others instead of stalling the run. Idle workers spin for half a
// millisecond, then sleep; warm() wakes them ahead of a run. On Linux, workers
// may run on every CPU the process may use except the one the caller runs on
// at warm() (the scheduler would otherwise often wake a sleeping worker on
// the caller's CPU, and the two would share one core for a whole run).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace slimrt {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return threads_; }

  // Calls fn(chunk, thread) once for every chunk in [0, chunks) (chunks <
  // 2^22), thread in [0, size()) naming the caller's per-thread scratch, and
  // returns when every call has returned. fn must not throw. No allocation.
  template <typename F>
  void run(int64_t chunks, F& fn) {
    run(chunks, [](void* ctx, int64_t chunk, int thread) { (*static_cast<F*>(ctx))(chunk, thread); }, &fn);
  }

  using Task = void (*)(void* ctx, int64_t chunk, int thread);
  void run(int64_t chunks, Task task, void* ctx);

  // Wakes sleeping workers without giving them work, so that they are spinning
  // by the time the next run() starts (a run's serial first steps hide the
  // wake-up). Called by the thread that calls run().
  void warm();

 private:
  void worker(int index);
  void claim(uint64_t gen, int index);

  int threads_;
  std::vector<std::thread> workers_;
  Task task_ = nullptr;
  void* ctx_ = nullptr;
  // Claims: generation (20 bits) | chunk count (22) | next chunk (22).
  std::atomic<uint64_t> state_{0};
  std::atomic<int64_t> done_{0};
  uint64_t generation_ = 0;   // written by the caller of run() only
  std::atomic<uint64_t> wake_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;  // guards sleeping: wake_ changes under it
  std::condition_variable cv_;
  int caller_cpu_ = -1;  // the CPU workers were last kept off (warm())
};

// Splits [0, total) into `parts` near-equal ranges; returns range `part`.
inline void split_range(int64_t total, int64_t part, int64_t parts, int64_t* begin, int64_t* end) {
  const int64_t base = total / parts, extra = total % parts;
  *begin = part * base + (part < extra ? part : extra);
  *end = *begin + base + (part < extra ? 1 : 0);
}

}  // namespace slimrt
