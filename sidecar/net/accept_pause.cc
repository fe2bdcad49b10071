#include "sidecar/net/accept_pause.h"

#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "sidecar/log.h"

namespace bulwark::net {
namespace {

absl::Mutex registry_mu(absl::kConstInit);
// Which AcceptPause watches which listener (OnAcceptError's way back).
absl::flat_hash_map<evconnlistener*, AcceptPause*>* registry ABSL_GUARDED_BY(
    registry_mu) = new absl::flat_hash_map<evconnlistener*, AcceptPause*>();

// When the process last logged a refusal (steady-clock ns; 0: never), for
// the once-a-second limit shared by every listener.
std::atomic<int64_t> last_report_ns{0};

// True if this caller may log now (and becomes the last to have logged).
bool TakeReportSlot() {
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  int64_t last = last_report_ns.load(std::memory_order_relaxed);
  if (last != 0 &&
      now - last < absl::ToInt64Nanoseconds(AcceptPause::kLogInterval)) {
    return false;
  }
  return last_report_ns.compare_exchange_strong(last, now,
                                                std::memory_order_relaxed);
}

}  // namespace

AcceptPause::AcceptPause(event_base* base, evconnlistener* listener,
                         std::string what)
    : listener_(listener), what_(std::move(what)) {
  resume_ = evtimer_new(base, &AcceptPause::OnResume, this);
  {
    absl::MutexLock lock(&registry_mu);
    (*registry)[listener_] = this;
  }
  evconnlistener_set_error_cb(listener_, &AcceptPause::OnAcceptError);
}

AcceptPause::~AcceptPause() {
  evconnlistener_set_error_cb(listener_, nullptr);
  {
    absl::MutexLock lock(&registry_mu);
    registry->erase(listener_);
  }
  if (resume_ != nullptr) event_free(resume_);
}

void AcceptPause::OnAcceptError(evconnlistener* listener, void*) {
  const int err = EVUTIL_SOCKET_ERROR();
  // libevent hands the error callback the accept callback's argument (the
  // owner: a Worker, an evhttp), so the pause is found by its listener.
  AcceptPause* self = nullptr;
  {
    absl::MutexLock lock(&registry_mu);
    auto it = registry->find(listener);
    if (it != registry->end()) self = it->second;
  }
  if (self == nullptr) return;
  ++self->failures_;
  if (!self->paused_) {
    self->paused_ = true;
    evconnlistener_disable(listener);
    const timeval pause = absl::ToTimeval(kPause);
    evtimer_add(self->resume_, &pause);
  }
  self->Report([&] {
    rlimit limit{};
    getrlimit(RLIMIT_NOFILE, &limit);
    return absl::StrCat("accept failed: ", std::strerror(err), " (fd limit ",
                        limit.rlim_cur, "); paused for ",
                        absl::FormatDuration(kPause), " at a time");
  });
}

void AcceptPause::OnResume(int, short, void* arg) {
  auto* self = static_cast<AcceptPause*>(arg);
  self->paused_ = false;
  evconnlistener_enable(self->listener_);
}

void AcceptPause::NoteRefused(absl::FunctionRef<std::string()> why) {
  Report(why);
}

void AcceptPause::Report(absl::FunctionRef<std::string()> why) {
  ++unreported_;
  if (!TakeReportSlot()) return;
  Log(LogLevel::kWarning, "%s: %s (%d refused since the last report)", what_,
      why(), unreported_);
  unreported_ = 0;
}

}  // namespace bulwark::net
