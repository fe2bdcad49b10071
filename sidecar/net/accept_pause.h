// AcceptPause: what a listening socket does when accept(2) fails, typically
// for want of file descriptors (EMFILE, ENFILE) or memory (ENOBUFS, ENOMEM).
// Left alone, libevent retries at once and forever: the pending connection
// stays in the kernel's backlog, the socket stays readable, and the loop spins
// a core while logging each failure. Instead the listener is disabled for
// kPause and re-enabled by a timer, so the connections it already has go on
// being served and those in the backlog get their turn once descriptors are
// free again.
//
// Refusals (failed accepts here, connections closed at a cap by the owner
// through NoteRefused) are logged at most once a second for the whole process,
// each line with how many were refused since the previous one.
//
// Thread-safety: an AcceptPause lives on its listener's loop thread; the log
// rate limit is process-wide (atomics). Cost: nothing until accept fails.
#ifndef BULWARK_SIDECAR_NET_ACCEPT_PAUSE_H_
#define BULWARK_SIDECAR_NET_ACCEPT_PAUSE_H_

#include <cstdint>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/time/time.h"

struct event;
struct event_base;
struct evconnlistener;

namespace bulwark::net {

class AcceptPause {
 public:
  static constexpr absl::Duration kPause = absl::Milliseconds(100);
  static constexpr absl::Duration kLogInterval = absl::Seconds(1);

  // Installs itself as `listener`'s error callback. `what` names the listener
  // in the log ("listener", "admin"). The listener must outlive this object.
  AcceptPause(event_base* base, evconnlistener* listener, std::string what);
  ~AcceptPause();
  AcceptPause(const AcceptPause&) = delete;
  AcceptPause& operator=(const AcceptPause&) = delete;

  // A connection the owner closed right after accepting it; logged like a
  // failed accept, `why` called only when a line is written.
  void NoteRefused(absl::FunctionRef<std::string()> why);
  // Failed accepts since this object was made (for tests and metrics).
  int64_t failures() const { return failures_; }

 private:
  static void OnAcceptError(evconnlistener* listener, void* self);
  static void OnResume(int fd, short events, void* self);
  void Report(absl::FunctionRef<std::string()> why);

  evconnlistener* const listener_;
  const std::string what_;
  event* resume_ = nullptr;
  bool paused_ = false;
  int64_t failures_ = 0;
  // Refusals not logged yet (the process-wide rate limit held them back).
  int64_t unreported_ = 0;
};

}  // namespace bulwark::net

#endif  // BULWARK_SIDECAR_NET_ACCEPT_PAUSE_H_
