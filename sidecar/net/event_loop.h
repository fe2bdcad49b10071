// EventLoop: RAII owner of one libevent event_base, run by one thread, plus the
// two services every worker needs: a thread-safe Post (wake the loop from any
// thread and run a closure on it) and an end-of-iteration hook (run after all
// I/O callbacks of a loop iteration, used to write every frame produced in that
// iteration with one syscall per connection). LoopTimerQueue implements the
// policies' TimerQueue on the loop.
//
// Thread-safety: Post, Stop and LoopTimerQueue::Cancel may be called from any
// thread; everything else only on the loop thread. Cost: Post is a mutex push
// plus, when the queue was empty, one eventfd write.
#ifndef BULWARK_SIDECAR_NET_EVENT_LOOP_H_
#define BULWARK_SIDECAR_NET_EVENT_LOOP_H_

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "policies/clock.h"

struct event_base;
struct event;

namespace bulwark::net {

class EventLoop {
 public:
  EventLoop();
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  event_base* base() const { return base_; }

  // Runs until Stop(). Call on the loop's own thread.
  void Run();
  // Makes Run() return after the current iteration. Thread-safe.
  void Stop();

  // Runs `task` on the loop thread soon. Thread-safe; the tasks one thread
  // posts run in that thread's post order. From the loop thread itself the
  // task waits in a local queue that runs later in the same iteration (before
  // the flush), with no lock and no eventfd wake-up; from other threads it
  // goes through a mutex-guarded queue and the eventfd.
  void Post(absl::AnyInvocable<void()> task) ABSL_LOCKS_EXCLUDED(mu_);

  // Asks for `hook` to run once all I/O callbacks of the current iteration are
  // done.
  void RequestFlush();
  void SetFlushHook(absl::AnyInvocable<void()> hook) {
    flush_hook_ = std::move(hook);
  }

  // One-shot timer on this loop; returns an id for CancelTimer. Loop thread
  // only.
  uint64_t AddTimer(absl::Duration after, absl::AnyInvocable<void()> callback);
  void CancelTimer(uint64_t id);

 private:
  static void OnPosted(int, short, void* arg);
  static void OnLocalPosted(int, short, void* arg);
  static void OnFlush(int, short, void* arg);
  static void OnTimer(int, short, void* arg);

  event_base* base_ = nullptr;
  int wake_fd_ = -1;
  event* post_event_ = nullptr;
  event* flush_event_ = nullptr;
  event* local_event_ = nullptr;  // activated by Post on the loop thread
  bool flush_requested_ = false;
  // Set while Run runs: whose Post calls may use the local queue.
  std::atomic<std::thread::id> loop_thread_{};
  std::vector<absl::AnyInvocable<void()>> local_posted_;  // loop thread only
  bool local_active_ = false;                             // loop thread only
  absl::AnyInvocable<void()> flush_hook_;

  absl::Mutex mu_;
  std::vector<absl::AnyInvocable<void()>> posted_ ABSL_GUARDED_BY(mu_);

  struct Timer;
  uint64_t next_timer_id_ = 0;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Timer>> timers_;
};

// The policies' TimerQueue on an EventLoop. Schedule must be called on the loop
// thread; Cancel from any thread (a permit released on another worker cancels a
// waiter's timer).
class LoopTimerQueue final : public TimerQueue {
 public:
  // `clock` is the one `when` is read on (the worker's).
  LoopTimerQueue(EventLoop& loop, Clock& clock) : loop_(loop), clock_(clock) {}
  TimerId Schedule(absl::Time when,
                   absl::AnyInvocable<void()> callback) override
      ABSL_LOCKS_EXCLUDED(mu_);
  bool Cancel(TimerId id) override ABSL_LOCKS_EXCLUDED(mu_);

 private:
  EventLoop& loop_;
  Clock& clock_;
  absl::Mutex mu_;
  TimerId next_id_ ABSL_GUARDED_BY(mu_) = 0;
  // Pending timers: id -> the loop timer carrying it. Erased when fired or
  // cancelled.
  absl::flat_hash_map<TimerId, uint64_t> pending_ ABSL_GUARDED_BY(mu_);
};

}  // namespace bulwark::net

#endif  // BULWARK_SIDECAR_NET_EVENT_LOOP_H_
