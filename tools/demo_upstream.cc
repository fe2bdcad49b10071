// bulwark-demo-upstream: the gRPC server behind the sidecar in the demo and in
// the integration tests. It serves bulwark.demo.v1.Demo (all four RPC kinds,
// with the latency, hang and status faults carried in each request),
// bulwark.demo.v1.Control (call statistics and health switching) and
// grpc.health.v1.Health (Check and Watch).
//
// Every Demo call is a callback-API reactor that never blocks a gRPC thread:
// delays are timers on one timer thread, so a slow or hanging call costs no
// thread and cannot starve the others. Request metadata named "x-*" is echoed
// back in the response headers and, as "t-x-*", in the trailers, so tests can
// check that a proxy passes both unchanged.
//
// Capacity-bound mode (--capacity N --service_time D), for overload benchmarks
// (bench/overload.py): the server has N "workers" and a FIFO queue of its own.
// A Demo.Echo call that carries no fault waits in that queue until a worker is
// free, then holds the worker for D (a timer, never a blocked thread) and is
// answered, so it serves at most N / D calls a second and latency grows with
// its own queue as an overloaded server's does. A call whose deadline passes
// or that is cancelled while queued leaves the queue unserved; one cancelled
// while being served still holds its worker until D is over (the work was
// started). Echo calls that carry a fault (delay, hang, status), the streaming
// methods, Control and Health are served as without --capacity. SIGUSR1
// halves the worker count (at least 1; a worker busy beyond the new count
// finishes its call first) and logs it. Control.GetStats counts queued calls as
// in flight. --capacity 0 (the default) leaves everything, SIGUSR1 included, as
// it was.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/functional/any_invocable.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bulwark/demo/v1/demo.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "policies/clock.h"

ABSL_FLAG(int32_t, port, 0, "TCP port to listen on; 0 picks a free one");
ABSL_FLAG(std::string, address, "127.0.0.1", "IP address to listen on");
ABSL_FLAG(std::string, name, "",
          "served_by value in every response (default: address:port)");
ABSL_FLAG(
    std::string, tls_cert, "",
    "PEM certificate chain: serve TLS (with --tls_key) instead of plaintext");
ABSL_FLAG(std::string, tls_key, "", "PEM private key for --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: require client certificates signed by it (mTLS)");
ABSL_FLAG(int32_t, max_concurrent_streams, 0,
          "SETTINGS_MAX_CONCURRENT_STREAMS per connection (0: gRPC's default, "
          "no limit)");
ABSL_FLAG(std::string, port_file, "",
          "once listening, write the bound port to this file (atomically, via "
          "rename)");
ABSL_FLAG(
    int32_t, capacity, 0,
    "serve at most this many Demo.Echo calls at once (workers); more wait "
    "in a FIFO queue; SIGUSR1 halves it; 0 = unlimited");
ABSL_FLAG(absl::Duration, service_time, absl::Milliseconds(10),
          "with --capacity: how long each Echo call holds its worker");
ABSL_FLAG(int32_t, fail_code, 0,
          "non-zero: every Echo and Write call without a fault ends with this "
          "gRPC status (a trailers-only answer); health checks still pass, "
          "as for an endpoint that fails only live calls");
ABSL_FLAG(int32_t, fail_pushback_ms, -2,
          "with --fail_code: also send grpc-retry-pushback-ms with this value "
          "(-1: do not retry; >= 0: retry after that long); -2: not sent");
ABSL_FLAG(absl::Duration, delay, absl::ZeroDuration(),
          "every Echo and Write call without a fault is answered after this "
          "long (a slow endpoint)");

namespace bulwark::demo {
namespace {

using ::bulwark::demo::v1::Control;
using ::bulwark::demo::v1::Demo;
using ::bulwark::demo::v1::EchoRequest;
using ::bulwark::demo::v1::EchoResponse;
using ::bulwark::demo::v1::Empty;
using ::bulwark::demo::v1::Fault;
using ::bulwark::demo::v1::SetServingRequest;
using ::bulwark::demo::v1::StatsRequest;
using ::bulwark::demo::v1::StatsResponse;
using ::bulwark::demo::v1::StreamRequest;

// Larger than any sidecar max_message_bytes a test configures, so that a size
// rejection is always the sidecar's own and never this server's.
constexpr int kMaxMessageBytes = 64 << 20;
// ClientStream answers with the concatenated payloads; beyond this they are cut
// so the answer stays under the client's default 4 MiB receive limit
// (total_bytes still counts all).
constexpr size_t kMaxConcatenatedBytes = 1 << 20;
// In-flight calls get this long to finish on SIGTERM before they are cancelled.
constexpr absl::Duration kShutdownGrace = absl::Seconds(2);

// A TimerQueue with its own thread. Callbacks run on that thread, outside the
// queue's lock, so a callback may schedule or cancel timers. Pending callbacks
// are dropped at destruction.
class ThreadTimerQueue final : public TimerQueue {
 public:
  ThreadTimerQueue() : thread_([this] { Run(); }) {}
  ~ThreadTimerQueue() override {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    wake_.Signal();
    thread_.join();
  }

  TimerId Schedule(absl::Time when,
                   absl::AnyInvocable<void()> callback) override
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    const TimerId id = ++next_id_;
    due_.emplace(std::make_pair(when, id), std::move(callback));
    deadline_of_.emplace(id, when);
    // Only a new earliest deadline changes how long the thread must sleep.
    if (due_.begin()->first.second == id) wake_.Signal();
    return id;
  }

  bool Cancel(TimerId id) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto it = deadline_of_.find(id);
    if (it == deadline_of_.end()) return false;
    due_.erase(std::make_pair(it->second, id));
    deadline_of_.erase(it);
    return true;
  }

 private:
  void Run() ABSL_LOCKS_EXCLUDED(mu_) {
    mu_.Lock();
    while (!stopping_) {
      if (due_.empty()) {
        wake_.Wait(&mu_);
        continue;
      }
      auto first = due_.begin();
      if (first->first.first > absl::Now()) {
        wake_.WaitWithDeadline(&mu_, first->first.first);
        continue;
      }
      absl::AnyInvocable<void()> callback = std::move(first->second);
      deadline_of_.erase(first->first.second);
      due_.erase(first);
      mu_.Unlock();
      callback();
      mu_.Lock();
    }
    mu_.Unlock();
  }

  absl::Mutex mu_;
  absl::CondVar wake_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  TimerId next_id_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::pair<absl::Time, TimerId>, absl::AnyInvocable<void()>> due_
      ABSL_GUARDED_BY(mu_);
  std::map<TimerId, absl::Time> deadline_of_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;  // Last: starts once the members above exist.
};

// The capacity model: `capacity` workers and a FIFO of jobs waiting for one. A
// job holds its worker for `service_time` (a timer), then its callback runs on
// the timer thread and the worker takes the next job. Thread-safe; callbacks
// run outside the pool's lock, so they may call into the pool.
class WorkerPool {
 public:
  using JobId = uint64_t;

  WorkerPool(TimerQueue& timers, int capacity, absl::Duration service_time)
      : timers_(timers), service_time_(service_time), capacity_(capacity) {}

  // Queues `served`, to run once a worker has spent service_time on it. Its
  // id is for Withdraw.
  JobId Submit(absl::AnyInvocable<void()> served) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    const JobId id = ++next_id_;
    queue_.emplace(id, std::move(served));
    DispatchLocked();
    return id;
  }

  // Takes a job out of the queue before a worker has started it. Returns
  // false if a worker has it already (then its callback still runs).
  bool Withdraw(JobId id) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return queue_.erase(id) > 0;
  }

  // Halves the number of workers (at least 1); returns {before, after}.
  std::pair<int, int> Halve() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    const int before = capacity_;
    capacity_ = std::max(1, capacity_ / 2);
    return {before, capacity_};
  }

  absl::Duration service_time() const { return service_time_; }

 private:
  void DispatchLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    while (busy_ < capacity_ && !queue_.empty()) {
      ++busy_;
      absl::AnyInvocable<void()> served = std::move(queue_.begin()->second);
      queue_.erase(queue_.begin());
      timers_.Schedule(absl::Now() + service_time_,
                       [this, served = std::move(served)]() mutable {
                         served();
                         absl::MutexLock lock(&mu_);
                         --busy_;
                         DispatchLocked();
                       });
    }
  }

  TimerQueue& timers_;
  const absl::Duration service_time_;
  absl::Mutex mu_;
  int capacity_ ABSL_GUARDED_BY(mu_);
  int busy_ ABSL_GUARDED_BY(mu_) = 0;
  JobId next_id_ ABSL_GUARDED_BY(mu_) = 0;
  // Waiting jobs by id, which is their arrival order: FIFO, and a withdrawal
  // (a deadline or a cancellation, thousands a second in an overload) costs
  // O(log n).
  std::map<JobId, absl::AnyInvocable<void()>> queue_ ABSL_GUARDED_BY(mu_);
};

// What Control.GetStats reports about Demo calls. One mutex keeps the four
// numbers consistent with each other, which tests compare exactly.
class CallStats {
 public:
  void OnStart() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    ++calls_total_;
    ++in_flight_;
    max_in_flight_ = std::max(max_in_flight_, in_flight_);
  }
  // Called just before a call's status is sent, so a client that has its answer
  // never sees its own call still in flight.
  void OnFinish() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    --in_flight_;
  }
  // Called when gRPC is done with the call: only then is cancellation known for
  // sure.
  void OnDone(bool cancelled) ABSL_LOCKS_EXCLUDED(mu_) {
    if (!cancelled) return;
    absl::MutexLock lock(&mu_);
    ++cancelled_total_;
  }
  StatsResponse Snapshot() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return SnapshotLocked();
  }
  // Returns the numbers before the reset. in_flight is live and stays;
  // max_in_flight restarts from it.
  StatsResponse SnapshotAndReset() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    StatsResponse before = SnapshotLocked();
    calls_total_ = 0;
    cancelled_total_ = 0;
    max_in_flight_ = in_flight_;
    return before;
  }

 private:
  StatsResponse SnapshotLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    StatsResponse stats;
    stats.set_calls_total(calls_total_);
    stats.set_in_flight(in_flight_);
    stats.set_max_in_flight(max_in_flight_);
    stats.set_cancelled_total(cancelled_total_);
    return stats;
  }

  absl::Mutex mu_;
  uint64_t calls_total_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t max_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t cancelled_total_ ABSL_GUARDED_BY(mu_) = 0;
};

// State shared by every call of one server.
class Upstream {
 public:
  // capacity 0: no capacity model (workers() is null).
  Upstream(int capacity, absl::Duration service_time, int fail_code,
           int fail_pushback_ms, absl::Duration delay)
      : fail_code_(fail_code),
        fail_pushback_ms_(fail_pushback_ms),
        delay_(delay) {
    if (capacity > 0) {
      workers_ = std::make_unique<WorkerPool>(timers_, capacity, service_time);
    }
  }

  // --fail_code and --delay: what every Echo/Write without a fault gets.
  int fail_code() const { return fail_code_; }
  int fail_pushback_ms() const { return fail_pushback_ms_; }
  absl::Duration delay() const { return delay_; }

  CallStats& stats() { return stats_; }
  TimerQueue& timers() { return timers_; }
  WorkerPool* workers() { return workers_.get(); }

  // The name is known only once the port is bound, which may be after the first
  // call arrives (a client can guess a fixed port), hence the lock.
  void set_name(std::string name) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    name_ = std::move(name);
  }
  std::string name() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return name_;
  }

 private:
  CallStats stats_;
  const int fail_code_;
  const int fail_pushback_ms_;
  const absl::Duration delay_;
  absl::Mutex mu_;
  std::string name_ ABSL_GUARDED_BY(mu_);
  // Before timers_, so destroyed after the timer thread that runs its jobs.
  std::unique_ptr<WorkerPool> workers_;
  // Last, so destroyed first: its thread is joined before anything a late timer
  // callback could reach goes away.
  ThreadTimerQueue timers_;
};

grpc::Status FaultStatus(const Fault& fault) {
  const int code = fault.status_code() != 0
                       ? fault.status_code()
                       : static_cast<int>(grpc::StatusCode::INTERNAL);
  return grpc::Status(static_cast<grpc::StatusCode>(code),
                      fault.status_message(), fault.status_details());
}

// A recognisable pattern, so a test can tell a truncated or shuffled payload
// from a good one.
std::string PatternPayload(size_t bytes) {
  std::string payload(bytes, '\0');
  for (size_t i = 0; i < bytes; ++i)
    payload[i] = static_cast<char>('a' + i % 26);
  return payload;
}

std::string ToString(grpc::string_ref s) {
  return std::string(s.data(), s.size());
}

// Plumbing shared by the four Demo reactors: statistics, metadata echo,
// finishing exactly once, and one cancellable delay at a time.
//
// Lifetime: the reactor deletes itself when its last reference goes. gRPC holds
// one until OnDone; a pending delay holds one until its callback ran or was
// cancelled, because the timer may fire after OnDone.
//
// Thread-safety: gRPC reactions and the timer thread may run concurrently; all
// call state is under mu_. Reactor operations (StartWrite, Finish, ...) are
// started under mu_, which gRPC allows: it never runs a reaction inline inside
// them.
template <typename Reactor>
class DemoCall : public Reactor {
 public:
  void OnCancel() override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
  }

  void OnDone() override {
    upstream_.stats().OnDone(ctx_->IsCancelled());
    Unref();
  }

 protected:
  DemoCall(Upstream& upstream, grpc::CallbackServerContext* ctx)
      : upstream_(upstream), ctx_(ctx) {
    upstream_.stats().OnStart();
    EchoMetadata();
    InitResponse();
  }
  ~DemoCall() override = default;

  // Runs OnDelayElapsedLocked after `delay`, unless the call finishes first.
  void StartDelayLocked(absl::Duration delay)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    refs_.fetch_add(1, std::memory_order_relaxed);
    delay_pending_ = true;
    delay_id_ = upstream_.timers().Schedule(absl::Now() + delay,
                                            [this] { DelayElapsed(); });
  }
  virtual void OnDelayElapsedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) = 0;

  // Sends `status` unless the call already finished; later attempts are no-ops,
  // so racing paths (a timer against OnCancel) need no other coordination.
  void FinishLocked(const grpc::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    if (delay_pending_ && upstream_.timers().Cancel(delay_id_)) {
      // The callback will never run: drop its reference. gRPC's own is still
      // held (OnDone cannot come before Finish), so this is never the last one.
      delay_pending_ = false;
      refs_.fetch_sub(1, std::memory_order_relaxed);
    }
    upstream_.stats().OnFinish();
    this->Finish(status);
  }

  // References besides gRPC's (which lasts until OnDone) keep the reactor alive
  // for callbacks that may come after OnDone.
  void Ref() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  // The response fields that describe the call rather than a message.
  const EchoResponse& response_template() const { return response_template_; }

  Upstream& upstream_;
  grpc::CallbackServerContext* const ctx_;
  absl::Mutex mu_;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;

 private:
  void EchoMetadata() {
    for (const auto& [key_ref, value_ref] : ctx_->client_metadata()) {
      const std::string key = ToString(key_ref);
      if (!absl::StartsWith(key, "x-")) continue;
      const std::string value = ToString(value_ref);
      ctx_->AddInitialMetadata(key, value);
      ctx_->AddTrailingMetadata(absl::StrCat("t-", key), value);
    }
  }

  void InitResponse() {
    response_template_.set_served_by(upstream_.name());
    const auto& metadata = ctx_->client_metadata();
    if (auto it = metadata.find("user-agent"); it != metadata.end()) {
      response_template_.set_user_agent(ToString(it->second));
    }
    // The deadline as it arrived, before any injected delay eats into it.
    const auto deadline = ctx_->deadline();
    int64_t deadline_ms = -1;
    if (deadline != std::chrono::system_clock::time_point::max()) {
      deadline_ms = std::max<int64_t>(
          0, std::chrono::duration_cast<std::chrono::milliseconds>(
                 deadline - std::chrono::system_clock::now())
                 .count());
    }
    response_template_.set_deadline_ms(deadline_ms);
  }

  void DelayElapsed() ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      delay_pending_ = false;
      if (!finished_) OnDelayElapsedLocked();
    }
    Unref();
  }

  EchoResponse response_template_;
  std::atomic<int> refs_{1};  // gRPC's, released in OnDone.
  bool delay_pending_ ABSL_GUARDED_BY(mu_) = false;
  TimerQueue::TimerId delay_id_ ABSL_GUARDED_BY(mu_) = 0;
};

// Demo.Echo: one answer after the fault's delay, or the fault's status, or none
// (hang). With --capacity, a call without a fault is answered once a worker
// has served it.
class EchoCall final : public DemoCall<grpc::ServerUnaryReactor> {
 public:
  EchoCall(Upstream& upstream, grpc::CallbackServerContext* ctx,
           const EchoRequest* request, EchoResponse* response)
      : DemoCall(upstream, ctx), request_(request), response_(response) {
    absl::MutexLock lock(&mu_);
    if (WorkerPool* workers = upstream_.workers();
        workers != nullptr && !request_->has_fault()) {
      Ref();  // The pool's: dropped once served, or when withdrawn.
      in_pool_ = true;
      job_ = workers->Submit([this] { Served(); });
      return;
    }
    const Fault& fault = request_->fault();
    if (!request_->has_fault() && upstream_.fail_code() != 0) {
      if (upstream_.fail_pushback_ms() >= -1) {
        ctx_->AddTrailingMetadata("grpc-retry-pushback-ms",
                                  std::to_string(upstream_.fail_pushback_ms()));
      }
      FinishLocked(
          grpc::Status(static_cast<grpc::StatusCode>(upstream_.fail_code()),
                       "failing every call (--fail_code)"));
      return;
    }
    if (fault.hang()) return;  // Only OnCancel ends it.
    if (fault.delay_ms() > 0) {
      StartDelayLocked(absl::Milliseconds(fault.delay_ms()));
    } else if (!request_->has_fault() &&
               upstream_.delay() > absl::ZeroDuration()) {
      StartDelayLocked(upstream_.delay());
    } else {
      AnswerLocked();
    }
  }

  // A deadline expiry or a cancellation: a call still queued leaves the queue.
  void OnCancel() override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (in_pool_ && upstream_.workers()->Withdraw(job_)) {
      in_pool_ = false;
      Unref();  // Never the last: gRPC's reference lasts until OnDone.
    }
    FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
  }

 private:
  // On the timer thread, once a worker spent service_time on the call (which
  // may have been cancelled meanwhile).
  void Served() ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      in_pool_ = false;
      if (!finished_) AnswerLocked();
    }
    Unref();
  }

  void OnDelayElapsedLocked() override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    AnswerLocked();
  }

  void AnswerLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (request_->fault().status_code() != 0) {
      FinishLocked(FaultStatus(request_->fault()));
      return;
    }
    *response_ = response_template();
    if (request_->response_bytes() > 0) {
      response_->set_payload(PatternPayload(request_->response_bytes()));
    } else {
      response_->set_payload(request_->payload());
    }
    FinishLocked(grpc::Status::OK);
  }

  const EchoRequest* const request_;
  EchoResponse* const response_;
  bool in_pool_ ABSL_GUARDED_BY(mu_) = false;  // The pool holds a reference.
  WorkerPool::JobId job_ ABSL_GUARDED_BY(mu_) = 0;
};

// Demo.ServerStream: `count` messages, `interval_ms` apart, each after the
// fault's delay; an injected status ends the stream after fail_after_messages
// messages (at once if 0).
class ServerStreamCall final
    : public DemoCall<grpc::ServerWriteReactor<EchoResponse>> {
 public:
  ServerStreamCall(Upstream& upstream, grpc::CallbackServerContext* ctx,
                   const StreamRequest* request)
      : DemoCall(upstream, ctx), request_(request) {
    const Fault& fault = request_->fault();
    if (fault.fail_after_messages() > 0) {
      fail_at_ = fault.fail_after_messages();
    } else if (fault.status_code() != 0) {
      fail_at_ = 0;
    }
    absl::MutexLock lock(&mu_);
    if (fault.hang()) return;  // Only OnCancel ends it.
    NextLocked();
  }

  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (!ok) {  // The stream is gone (cancelled or reset).
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      return;
    }
    ++sent_;
    waited_ = false;
    NextLocked();
  }

 private:
  void OnDelayElapsedLocked() override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    NextLocked();
  }

  // One step: wait if this step needs it, then send a message, fail, or end the
  // stream.
  void NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    const bool fail_now = sent_ == fail_at_;
    const bool complete = !fail_now && sent_ >= request_->count();
    if (complete) {
      FinishLocked(grpc::Status::OK);
      return;
    }
    if (!waited_) {
      absl::Duration wait = absl::Milliseconds(request_->fault().delay_ms());
      if (sent_ > 0 && !fail_now)
        wait += absl::Milliseconds(request_->interval_ms());
      if (wait > absl::ZeroDuration()) {
        waited_ = true;
        StartDelayLocked(wait);
        return;
      }
    }
    if (fail_now) {
      FinishLocked(FaultStatus(request_->fault()));
      return;
    }
    message_ = response_template();
    message_.set_payload(request_->payload());
    message_.set_sequence(sent_);
    this->StartWrite(&message_);
  }

  const StreamRequest* const request_;
  uint64_t fail_at_ =
      std::numeric_limits<uint64_t>::max();  // Set before mu_ is shared.
  uint64_t sent_ ABSL_GUARDED_BY(mu_) = 0;
  bool waited_ ABSL_GUARDED_BY(mu_) =
      false;  // This step's delay already elapsed.
  EchoResponse message_
      ABSL_GUARDED_BY(mu_);  // Read by gRPC until OnWriteDone.
};

// Demo.ClientStream: reads everything, then answers with the concatenated
// payloads, the message count (sequence) and the byte count (total_bytes). The
// first message's fault applies to the call.
class ClientStreamCall final
    : public DemoCall<grpc::ServerReadReactor<EchoRequest>> {
 public:
  ClientStreamCall(Upstream& upstream, grpc::CallbackServerContext* ctx,
                   EchoResponse* response)
      : DemoCall(upstream, ctx), response_(response) {
    absl::MutexLock lock(&mu_);
    *response_ = response_template();
    this->StartRead(&request_);
  }

  void OnReadDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    if (!ok) {  // Half-close (or cancellation, which OnCancel finishes).
      if (fault_.hang()) return;
      if (fault_.delay_ms() > 0) {
        StartDelayLocked(absl::Milliseconds(fault_.delay_ms()));
      } else {
        AnswerLocked();
      }
      return;
    }
    if (received_ == 0) fault_ = request_.fault();
    ++received_;
    total_bytes_ += request_.payload().size();
    const size_t room = kMaxConcatenatedBytes - response_->payload().size();
    response_->mutable_payload()->append(request_.payload(), 0, room);
    if (fault_.fail_after_messages() > 0 &&
        received_ >= fault_.fail_after_messages()) {
      FinishLocked(FaultStatus(fault_));
      return;
    }
    this->StartRead(&request_);
  }

 private:
  void OnDelayElapsedLocked() override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    AnswerLocked();
  }

  void AnswerLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // With fail_after_messages set, fewer messages than that is a normal
    // answer.
    if (fault_.status_code() != 0 && fault_.fail_after_messages() == 0) {
      FinishLocked(FaultStatus(fault_));
      return;
    }
    response_->set_sequence(received_);
    response_->set_total_bytes(total_bytes_);
    FinishLocked(grpc::Status::OK);
  }

  EchoResponse* const response_;
  EchoRequest request_
      ABSL_GUARDED_BY(mu_);  // Written by gRPC until OnReadDone.
  Fault fault_ ABSL_GUARDED_BY(mu_);
  uint64_t received_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t total_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

// Demo.Bidi: ping-pong, one answer per message in order. Each message's fault
// applies to its own answer (delay, hang, immediate status); the first
// message's fail_after_messages ends the call after that many answers.
class BidiCall final
    : public DemoCall<grpc::ServerBidiReactor<EchoRequest, EchoResponse>> {
 public:
  BidiCall(Upstream& upstream, grpc::CallbackServerContext* ctx)
      : DemoCall(upstream, ctx) {
    absl::MutexLock lock(&mu_);
    this->StartRead(&request_);
  }

  void OnReadDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    if (!ok) {  // Half-close: every message has been answered (one at a time).
      FinishLocked(grpc::Status::OK);
      return;
    }
    if (received_ == 0) call_fault_ = request_.fault();
    ++received_;
    const Fault& fault = request_.fault();
    if (fault.hang()) return;  // Only OnCancel ends it.
    if (fault.status_code() != 0 && call_fault_.fail_after_messages() == 0) {
      FinishLocked(FaultStatus(fault));
      return;
    }
    if (fault.delay_ms() > 0) {
      StartDelayLocked(absl::Milliseconds(fault.delay_ms()));
    } else {
      AnswerLocked();
    }
  }

  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      return;
    }
    ++sent_;
    if (call_fault_.fail_after_messages() > 0 &&
        sent_ >= call_fault_.fail_after_messages()) {
      FinishLocked(FaultStatus(call_fault_));
      return;
    }
    if (!finished_) this->StartRead(&request_);
  }

 private:
  void OnDelayElapsedLocked() override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    AnswerLocked();
  }

  void AnswerLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    message_ = response_template();
    if (request_.response_bytes() > 0) {
      message_.set_payload(PatternPayload(request_.response_bytes()));
    } else {
      message_.set_payload(request_.payload());
    }
    message_.set_sequence(sent_);
    this->StartWrite(&message_);
  }

  EchoRequest request_ ABSL_GUARDED_BY(mu_);
  EchoResponse message_ ABSL_GUARDED_BY(mu_);
  Fault call_fault_ ABSL_GUARDED_BY(mu_);
  uint64_t received_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t sent_ ABSL_GUARDED_BY(mu_) = 0;
};

class DemoService final : public Demo::CallbackService {
 public:
  explicit DemoService(Upstream& upstream) : upstream_(upstream) {}

  grpc::ServerUnaryReactor* Echo(grpc::CallbackServerContext* ctx,
                                 const EchoRequest* request,
                                 EchoResponse* response) override {
    return new EchoCall(upstream_, ctx, request, response);
  }
  grpc::ServerUnaryReactor* Write(grpc::CallbackServerContext* ctx,
                                  const EchoRequest* request,
                                  EchoResponse* response) override {
    return new EchoCall(upstream_, ctx, request, response);
  }
  grpc::ServerWriteReactor<EchoResponse>* ServerStream(
      grpc::CallbackServerContext* ctx, const StreamRequest* request) override {
    return new ServerStreamCall(upstream_, ctx, request);
  }
  grpc::ServerReadReactor<EchoRequest>* ClientStream(
      grpc::CallbackServerContext* ctx, EchoResponse* response) override {
    return new ClientStreamCall(upstream_, ctx, response);
  }
  grpc::ServerBidiReactor<EchoRequest, EchoResponse>* Bidi(
      grpc::CallbackServerContext* ctx) override {
    return new BidiCall(upstream_, ctx);
  }

 private:
  Upstream& upstream_;
};

class ControlService final : public Control::CallbackService {
 public:
  explicit ControlService(Upstream& upstream) : upstream_(upstream) {}

  // Set once the server is built: the health service exists only then.
  void set_health(grpc::HealthCheckServiceInterface* health) {
    health_ = health;
  }

  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* ctx,
                                     const StatsRequest*,
                                     StatsResponse* response) override {
    *response = upstream_.stats().Snapshot();
    return Done(ctx, grpc::Status::OK);
  }
  grpc::ServerUnaryReactor* ResetStats(grpc::CallbackServerContext* ctx,
                                       const StatsRequest*,
                                       StatsResponse* response) override {
    *response = upstream_.stats().SnapshotAndReset();
    return Done(ctx, grpc::Status::OK);
  }
  grpc::ServerUnaryReactor* SetServing(grpc::CallbackServerContext* ctx,
                                       const SetServingRequest* request,
                                       Empty*) override {
    grpc::HealthCheckServiceInterface* health = health_.load();
    if (health == nullptr) {
      return Done(ctx, grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                    "health service not ready"));
    }
    // Per service name, "" included: the overload without a name would flip
    // every service.
    health->SetServingStatus(request->service(), request->serving());
    return Done(ctx, grpc::Status::OK);
  }

 private:
  static grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx,
                                        const grpc::Status& status) {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(status);
    return reactor;
  }

  Upstream& upstream_;
  std::atomic<grpc::HealthCheckServiceInterface*> health_{nullptr};
};

// The signal handler only writes to this pipe (which signal, as one byte);
// main() reads it and acts, since nothing in gRPC is async-signal-safe.
int g_signal_pipe[2] = {-1, -1};
constexpr char kTerminateByte = 1;
constexpr char kHalveCapacityByte = 2;

extern "C" void OnSignal(int signum) {
  const int saved_errno = errno;
  const char byte = signum == SIGUSR1 ? kHalveCapacityByte : kTerminateByte;
  if (write(g_signal_pipe[1], &byte, 1) < 0) {
    // Nothing to do: the pipe is full, so a shutdown is already pending.
  }
  errno = saved_errno;
}

// SIGUSR1 only with the capacity model: otherwise it keeps its default action.
bool InstallSignalHandlers(bool halve_on_usr1) {
  if (pipe2(g_signal_pipe, O_CLOEXEC) != 0) return false;
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  if (sigaction(SIGTERM, &action, nullptr) != 0) return false;
  if (sigaction(SIGINT, &action, nullptr) != 0) return false;
  if (halve_on_usr1 && sigaction(SIGUSR1, &action, nullptr) != 0) return false;
  signal(SIGPIPE, SIG_IGN);
  return true;
}

// The next signal's byte.
char WaitForSignal() {
  char byte = kTerminateByte;
  while (read(g_signal_pipe[0], &byte, 1) < 0 && errno == EINTR) {
  }
  return byte;
}

std::string CapacityLine(int workers, absl::Duration service_time) {
  const double per_second = service_time > absl::ZeroDuration()
                                ? workers / absl::ToDoubleSeconds(service_time)
                                : std::numeric_limits<double>::infinity();
  return absl::StrCat(workers, " workers x ",
                      absl::FormatDuration(service_time), " (",
                      static_cast<int64_t>(per_second), " calls/s)");
}

std::string JoinHostPort(const std::string& host, int port) {
  if (host.find(':') != std::string::npos && !absl::StartsWith(host, "[")) {
    return absl::StrCat("[", host, "]:", port);  // IPv6 literal
  }
  return absl::StrCat(host, ":", port);
}

// Written to a temporary name and renamed, so a reader never sees a partial
// number.
bool WritePortFile(const std::string& path, int port) {
  const std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << port << "\n";
    out.close();
    if (!out) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

int Main() {
  const int32_t capacity = absl::GetFlag(FLAGS_capacity);
  const absl::Duration service_time = absl::GetFlag(FLAGS_service_time);
  if (capacity < 0) {
    std::cerr << "--capacity must be >= 0" << std::endl;
    return 1;
  }
  if (service_time < absl::ZeroDuration() ||
      service_time == absl::InfiniteDuration()) {
    std::cerr << "--service_time must be >= 0 and finite" << std::endl;
    return 1;
  }
  if (!InstallSignalHandlers(/*halve_on_usr1=*/capacity > 0)) {
    std::cerr << "cannot install signal handlers: " << std::strerror(errno)
              << std::endl;
    return 1;
  }
  grpc::EnableDefaultHealthCheckService(true);

  Upstream upstream(capacity, service_time, absl::GetFlag(FLAGS_fail_code),
                    absl::GetFlag(FLAGS_fail_pushback_ms),
                    absl::GetFlag(FLAGS_delay));
  DemoService demo(upstream);
  ControlService control(upstream);
  const std::string address = absl::GetFlag(FLAGS_address);
  int bound_port = 0;
  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> credentials =
      grpc::InsecureServerCredentials();
  if (const std::string cert_file = absl::GetFlag(FLAGS_tls_cert);
      !cert_file.empty()) {
    auto read = [](const std::string& path) {
      std::ifstream in(path);
      std::stringstream text;
      text << in.rdbuf();
      return text.str();
    };
    grpc::SslServerCredentialsOptions options(
        absl::GetFlag(FLAGS_tls_client_ca).empty()
            ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
            : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    options.pem_key_cert_pairs.push_back(
        {read(absl::GetFlag(FLAGS_tls_key)), read(cert_file)});
    if (!absl::GetFlag(FLAGS_tls_client_ca).empty()) {
      options.pem_root_certs = read(absl::GetFlag(FLAGS_tls_client_ca));
    }
    credentials = grpc::SslServerCredentials(options);
  }
  builder.AddListeningPort(JoinHostPort(address, absl::GetFlag(FLAGS_port)),
                           credentials, &bound_port);
  builder.RegisterService(&demo);
  builder.RegisterService(&control);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  if (const int32_t limit = absl::GetFlag(FLAGS_max_concurrent_streams);
      limit > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, limit);
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound_port == 0) {
    std::cerr << "cannot listen on "
              << JoinHostPort(address, absl::GetFlag(FLAGS_port)) << std::endl;
    return 1;
  }
  const std::string listening = JoinHostPort(address, bound_port);
  const std::string name = absl::GetFlag(FLAGS_name);
  upstream.set_name(name.empty() ? listening : name);

  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus("", true);
  health->SetServingStatus(Demo::service_full_name(), true);
  health->SetServingStatus(Control::service_full_name(), true);
  control.set_health(health);

  if (const std::string port_file = absl::GetFlag(FLAGS_port_file);
      !port_file.empty() && !WritePortFile(port_file, bound_port)) {
    std::cerr << "cannot write port file " << port_file << ": "
              << std::strerror(errno) << std::endl;
    server->Shutdown();
    return 1;
  }
  std::cout << "listening on " << listening << std::endl;
  if (capacity > 0) {
    std::cout << "capacity " << CapacityLine(capacity, service_time)
              << "; SIGUSR1 halves it" << std::endl;
  }

  while (WaitForSignal() == kHalveCapacityByte) {
    const auto [before, after] = upstream.workers()->Halve();
    std::cout << "SIGUSR1: capacity " << before << " -> "
              << CapacityLine(after, service_time) << std::endl;
  }
  std::cout << "shutting down" << std::endl;
  server->Shutdown(std::chrono::system_clock::now() +
                   absl::ToChronoMilliseconds(kShutdownGrace));
  server->Wait();
  std::cout << "stopped" << std::endl;
  return 0;
}

}  // namespace
}  // namespace bulwark::demo

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "gRPC demo/test upstream: bulwark.demo.v1.Demo, bulwark.demo.v1.Control "
      "and "
      "grpc.health.v1.Health.\nUsage: bulwark-demo-upstream [--port N] "
      "[--address IP] "
      "[--name NAME] [--port_file PATH] [--capacity N --service_time D]");
  // --help lists the flags of files named like the binary, which this one is
  // not (bulwark-demo-upstream vs demo_upstream.cc).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view path) {
    return absl::StrContains(path, "demo_upstream");
  };
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);
  return bulwark::demo::Main();
}
