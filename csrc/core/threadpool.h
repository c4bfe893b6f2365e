// A small fork-join pool owned by one session: the calling thread takes part,
// workers spin briefly and then sleep between jobs.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
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

  // Calls fn(part, parts) for part in [0, parts), parts = size(), and returns
  // when all calls have returned. fn must not throw.
  void run(const std::function<void(int, int)>& fn);

 private:
  void worker(int index);

  int threads_;
  std::vector<std::thread> workers_;
  const std::function<void(int, int)>* job_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;  // guards sleeping: generation_ changes under it
  std::condition_variable wake_;
};

// Splits [0, total) into `parts` near-equal ranges; returns range `part`.
inline void split_range(int64_t total, int part, int parts, int64_t* begin, int64_t* end) {
  const int64_t base = total / parts, extra = total % parts;
  *begin = part * base + (part < extra ? part : extra);
  *end = *begin + base + (part < extra ? 1 : 0);
}

}  // namespace slimrt
