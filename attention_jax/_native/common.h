// Shared by the native kernels (each .cc includes it; all are compiled into one library).

#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define AJ_AVX2 1
#endif

// The AVX-512 variant of the library (x86-64-v4): 16-lane kernels where they were measured
// faster than the 8-lane ones.
#if defined(AJ_AVX2) && defined(__AVX512F__) && defined(__AVX512BW__) && \
    defined(__AVX512VL__) && defined(__AVX512DQ__)
#define AJ_AVX512 1
#endif

namespace ffi = xla::ffi;

namespace aj {

// Runs body(begin, end) over [0, n) in chunks on the caller and the pool's threads. Chunks are
// claimed from a shared counter, so a pool task that starts late (or never) cannot block the
// caller; the caller returns once every claimed chunk has finished. At most
// chunks_per_thread chunks per thread: more chunks balance threads slowed by other work (a
// shared machine) better, fewer cost less to claim.
inline void ParallelFor(ffi::ThreadPool& pool, int64_t n, int64_t min_chunk,
                        const std::function<void(int64_t, int64_t)>& body,
                        int64_t chunks_per_thread = 4) {
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  int64_t chunks = std::min<int64_t>(threads * chunks_per_thread,
                                     std::max<int64_t>(1, n / min_chunk));
  if (threads <= 1 || chunks <= 1) {
    body(0, n);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::function<void(int64_t, int64_t)> body;
  };
  auto st = std::make_shared<State>();
  st->body = body;
  auto work = [st, chunks, n]() {
    for (;;) {
      int64_t c = st->next.fetch_add(1, std::memory_order_relaxed);
      if (c >= chunks) return;
      st->body(c * n / chunks, (c + 1) * n / chunks);
      st->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t i = 1; i < threads; ++i) pool.Schedule(decltype(work)(work));
  work();
  while (st->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

}  // namespace aj
