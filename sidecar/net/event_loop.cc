#include "sidecar/net/event_loop.h"

#include <event2/event.h>
#include <event2/thread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdlib>
#include <utility>

namespace bulwark::net {
namespace {

// libevent must know about threads before the first base exists (Post's
// event_active from other threads relies on it).
void UseThreadsOnce() {
  static const bool done = [] {
    if (evthread_use_pthreads() != 0) std::abort();
    return true;
  }();
  (void)done;
}

timeval ToLibeventTimeval(absl::Duration d) {
  if (d < absl::ZeroDuration()) d = absl::ZeroDuration();
  return absl::ToTimeval(d);
}

}  // namespace

struct EventLoop::Timer {
  EventLoop* loop;
  uint64_t id;
  event* ev;
  absl::AnyInvocable<void()> callback;
};

EventLoop::EventLoop() {
  UseThreadsOnce();
  event_config* config = event_config_new();
  // One thread per base: no locking inside libevent for its own structures.
  event_config_set_flag(config, EVENT_BASE_FLAG_NOLOCK);
  base_ = event_base_new_with_config(config);
  event_config_free(config);
  if (base_ == nullptr) std::abort();
  // Priority 0: I/O, timers, posted tasks. Priority 1: the flush, which
  // libevent runs only when no priority-0 callback is active, i.e. after the
  // iteration's I/O.
  event_base_priority_init(base_, 2);
  // Cross-thread wake-ups go through an eventfd, so the base itself needs no
  // lock.
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) std::abort();
  post_event_ = event_new(base_, wake_fd_, EV_READ | EV_PERSIST,
                          &EventLoop::OnPosted, this);
  event_add(post_event_, nullptr);
  flush_event_ = event_new(base_, -1, 0, &EventLoop::OnFlush, this);
  local_event_ = event_new(base_, -1, 0, &EventLoop::OnLocalPosted, this);
  event_priority_set(post_event_, 0);
  event_priority_set(local_event_, 0);
  event_priority_set(flush_event_, 1);
}

EventLoop::~EventLoop() {
  for (auto& [id, timer] : timers_) event_free(timer->ev);
  timers_.clear();
  event_free(post_event_);
  event_free(flush_event_);
  event_free(local_event_);
  event_base_free(base_);
  close(wake_fd_);
}

void EventLoop::Run() {
  loop_thread_.store(std::this_thread::get_id(), std::memory_order_relaxed);
  // The wake-up event is always pending, so dispatch runs until loopbreak.
  event_base_dispatch(base_);
  loop_thread_.store(std::thread::id(), std::memory_order_relaxed);
}

void EventLoop::Stop() {
  Post([this] { event_base_loopbreak(base_); });
}

void EventLoop::Post(absl::AnyInvocable<void()> task) {
  // Only the loop thread itself can find its own id here (it stored it), so a
  // relaxed load suffices.
  if (loop_thread_.load(std::memory_order_relaxed) ==
      std::this_thread::get_id()) {
    local_posted_.push_back(std::move(task));
    if (!local_active_) {
      local_active_ = true;
      event_active(local_event_, 0, 0);
    }
    return;
  }
  bool wake = false;
  {
    absl::MutexLock lock(&mu_);
    wake = posted_.empty();
    posted_.push_back(std::move(task));
  }
  if (wake) {
    const uint64_t one = 1;
    // A full counter (impossible in practice) still leaves the fd readable:
    // nothing lost.
    [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof(one));
  }
}

void EventLoop::OnLocalPosted(int, short, void* arg) {
  auto* self = static_cast<EventLoop*>(arg);
  self->local_active_ = false;
  std::vector<absl::AnyInvocable<void()>> tasks;
  tasks.swap(self->local_posted_);
  // Tasks these post go to the next activation.
  for (auto& task : tasks) task();
}

void EventLoop::OnPosted(int, short, void* arg) {
  auto* self = static_cast<EventLoop*>(arg);
  uint64_t count;
  [[maybe_unused]] ssize_t n = read(self->wake_fd_, &count, sizeof(count));
  std::vector<absl::AnyInvocable<void()>> tasks;
  {
    absl::MutexLock lock(&self->mu_);
    tasks.swap(self->posted_);
  }
  for (auto& task : tasks) task();
}

void EventLoop::RequestFlush() {
  if (flush_requested_) return;
  flush_requested_ = true;
  event_active(flush_event_, EV_READ, 0);
}

void EventLoop::OnFlush(int, short, void* arg) {
  auto* self = static_cast<EventLoop*>(arg);
  self->flush_requested_ = false;
  if (self->flush_hook_) self->flush_hook_();
}

uint64_t EventLoop::AddTimer(absl::Duration after,
                             absl::AnyInvocable<void()> callback) {
  const uint64_t id = ++next_timer_id_;
  auto timer = std::make_unique<Timer>();
  timer->loop = this;
  timer->id = id;
  timer->callback = std::move(callback);
  timer->ev = evtimer_new(base_, &EventLoop::OnTimer, timer.get());
  event_priority_set(timer->ev, 0);
  const timeval tv = ToLibeventTimeval(after);
  evtimer_add(timer->ev, &tv);
  timers_.emplace(id, std::move(timer));
  return id;
}

void EventLoop::CancelTimer(uint64_t id) {
  auto it = timers_.find(id);
  if (it == timers_.end()) return;
  event_free(it->second->ev);
  timers_.erase(it);
}

void EventLoop::OnTimer(int, short, void* arg) {
  auto* timer = static_cast<Timer*>(arg);
  EventLoop* self = timer->loop;
  auto it = self->timers_.find(timer->id);
  if (it == self->timers_.end()) return;
  std::unique_ptr<Timer> owned = std::move(it->second);
  self->timers_.erase(it);
  event_free(owned->ev);
  owned->callback();
}

TimerQueue::TimerId LoopTimerQueue::Schedule(
    absl::Time when, absl::AnyInvocable<void()> callback) {
  TimerId id;
  {
    absl::MutexLock lock(&mu_);
    id = ++next_id_;
  }
  const uint64_t loop_id = loop_.AddTimer(
      when - clock_.Now(), [this, id, cb = std::move(callback)]() mutable {
        {
          absl::MutexLock lock(&mu_);
          if (pending_.erase(id) == 0) return;  // cancelled meanwhile
        }
        cb();
      });
  absl::MutexLock lock(&mu_);
  pending_.emplace(id, loop_id);
  return id;
}

bool LoopTimerQueue::Cancel(TimerId id) {
  uint64_t loop_id;
  {
    absl::MutexLock lock(&mu_);
    auto it = pending_.find(id);
    if (it == pending_.end()) return false;
    loop_id = it->second;
    pending_.erase(it);
  }
  // The loop timer itself is freed on its own thread; if it fires first it
  // finds no entry.
  loop_.Post([this, loop_id] { loop_.CancelTimer(loop_id); });
  return true;
}

}  // namespace bulwark::net
