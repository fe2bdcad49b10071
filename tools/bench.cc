// bulwark-bench: a closed-loop gRPC load generator for bulwark.demo.v1.Demo
// (Echo, ServerStream, ClientStream, Bidi), aimed at the sidecar or straight at
// bulwark-demo-upstream. `--concurrency` callers each keep one call in flight
// and start the next as soon as it ends, spread over `--connections` channels
// (one TCP connection each). It reports QPS, latency percentiles from a
// log-linear histogram, counts per gRPC status and per `x-bulwark-reason`
// trailer, and the client's own CPU time per call, as text and optionally
// JSON.
//
// Open loop (--rate R, or --rate_schedule "0:1400,60:4200,80:1400" for rate
// steps over one run): Echo calls are started on schedule, R a second, evenly
// spaced, whether or not earlier ones have answered, as independent clients
// would; so an overloaded target faces a growing backlog instead of a
// generator that politely slows down. --max_outstanding (10000) caps the calls
// in flight: a call due beyond it is not started and counted not_sent.
// --timeline FILE writes one CSV line per 100 ms: calls started (and not
// sent) in it, calls ended in it by outcome (OK; x-bulwark-reason load_shed,
// concurrency_limit, queue_timeout; DEADLINE_EXCEEDED; other non-OK), p50 and
// p99 of the OK ones in ms, and the same split for the share of calls that
// --priority_share (critical=0.1, or steps critical=0:0,100:0.1,120:0) sends
// with --priority_header (x-priority). The JSON report then adds per rate step
// the same counts (by start) and OK latencies, and the run's start as a Unix
// time; --start_at_unix lets several runs share one clock.
//
// Calls run on gRPC's callback API, so a handful of gRPC threads drive any
// number of callers. Results are accumulated in per-thread shards (no lock or
// shared cache line per call) and merged once the run is over.
#include <signal.h>
#include <sys/resource.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bulwark/demo/v1/demo.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "sidecar/json_string.h"

ABSL_FLAG(std::string, target, "", "host:port to load (required)");
ABSL_FLAG(std::string, rpc, "echo",
          "echo, server_stream, client_stream or bidi");
ABSL_FLAG(int32_t, payload_bytes, 100, "request payload size in bytes");
ABSL_FLAG(int32_t, response_bytes, 0,
          "echo and bidi: response payload size; 0 echoes the request payload");
ABSL_FLAG(int32_t, concurrency, 1, "calls kept in flight");
ABSL_FLAG(int32_t, connections, 1,
          "channels (TCP connections) the calls are spread over");
ABSL_FLAG(absl::Duration, duration, absl::ZeroDuration(),
          "measured run time after the warm-up; 0 means 5s, or with --calls "
          "a 60s safety cap");
ABSL_FLAG(int64_t, calls, 0,
          "if > 0, stop after this many measured calls (or --duration, "
          "whichever comes first)");
ABSL_FLAG(absl::Duration, warmup, absl::ZeroDuration(),
          "load before the measured run; calls started in it are not recorded");
ABSL_FLAG(bool, unique_payloads, false,
          "make every call's payload differ (a counter in its first 8 bytes) "
          "so that singleflight never coalesces them");
ABSL_FLAG(int32_t, fault_code, 0,
          "ask the upstream to fail every call with this gRPC status code");
ABSL_FLAG(int32_t, fault_delay_ms, 0,
          "ask the upstream to wait this long before answering (per message "
          "for streams)");
ABSL_FLAG(std::vector<std::string>, metadata, {},
          "request metadata sent on every call, as k=v,k2=v2");
ABSL_FLAG(absl::Duration, deadline, absl::Seconds(10), "per-call deadline");
ABSL_FLAG(int32_t, stream_messages, 10,
          "messages per call: server_stream replies, client_stream requests, "
          "bidi ping-pongs");
ABSL_FLAG(std::string, json, "", "also write the report as JSON to this file");
ABSL_FLAG(bool, progress, true,
          "print elapsed time, calls, QPS and errors on stderr every second");
ABSL_FLAG(double, rate, 0,
          "open loop: start this many Echo calls a second on schedule, "
          "whether or not earlier ones answered (0: closed loop, "
          "--concurrency callers)");
ABSL_FLAG(std::string, rate_schedule, "",
          "open loop with rate steps, seconds:rate,...: \"0:1400,60:4200,"
          "80:1400\" offers 1400/s from 0 s, 4200/s from 60 s, ... (instead "
          "of --rate; the first step at 0)");
ABSL_FLAG(int64_t, max_outstanding, 10000,
          "open loop: at most this many calls in flight; a call due beyond it "
          "is not started and counts as not_sent");
ABSL_FLAG(std::string, timeline, "",
          "open loop: write one CSV line per 100 ms to this file (calls "
          "started, and calls ended by outcome with OK latency p50 / p99)");
ABSL_FLAG(std::string, priority_share, "",
          "open loop: VALUE=SHARE sends --priority_header: VALUE on that "
          "share of calls (evenly spread), e.g. critical=0.1; or "
          "VALUE=seconds:share,... for steps, e.g. critical=0:0,100:0.1,120:0");
ABSL_FLAG(std::string, priority_header, "x-priority",
          "the header --priority_share sets");
ABSL_FLAG(double, start_at_unix, 0,
          "once connected, wait until this Unix time (seconds) before the "
          "first call, so that several runs share one clock; 0: at once");

namespace bulwark::bench {
namespace {

using ::bulwark::demo::v1::Demo;
using ::bulwark::demo::v1::EchoRequest;
using ::bulwark::demo::v1::EchoResponse;
using ::bulwark::demo::v1::StreamRequest;
using Clock = std::chrono::steady_clock;

// --duration when not given, without and with --calls; how long to wait for
// the connections.
constexpr absl::Duration kDefaultDuration = absl::Seconds(5);
constexpr absl::Duration kCallsModeDurationCap = absl::Seconds(60);
constexpr absl::Duration kConnectTimeout = absl::Seconds(5);

enum class Rpc { kEcho, kServerStream, kClientStream, kBidi };

constexpr int kNumCodes = 17;          // OK .. UNAUTHENTICATED
constexpr int kOtherCode = kNumCodes;  // anything outside the known range
constexpr std::array<const char*, kNumCodes> kCodeNames = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED"};

int CodeIndex(grpc::StatusCode code) {
  const int c = static_cast<int>(code);
  return c >= 0 && c < kNumCodes ? c : kOtherCode;
}

std::string CodeName(int index) {
  return index < kNumCodes ? kCodeNames[index] : "OTHER";
}

struct Options {
  std::string target;
  Rpc rpc = Rpc::kEcho;
  std::string rpc_name;
  int payload_bytes = 0;
  int response_bytes = 0;
  int concurrency = 0;
  int connections = 0;
  absl::Duration duration;
  int64_t calls = 0;
  absl::Duration warmup;
  bool unique_payloads = false;
  int fault_code = 0;
  int fault_delay_ms = 0;
  std::vector<std::pair<std::string, std::string>> metadata;
  absl::Duration deadline;
  int stream_messages = 0;
  std::string json_path;
  bool progress = false;

  // Open loop (--rate / --rate_schedule): the offered rate in steps, from
  // `start` after the measured run began (the warm-up runs at the first one).
  struct Step {
    absl::Duration start;
    double value = 0;  // calls a second, or a share
  };
  bool open_loop = false;
  std::string rate_schedule_text;
  std::vector<Step> rate_schedule;
  int64_t max_outstanding = 0;
  std::string timeline_path;
  std::string priority_header;
  std::string priority_value;  // empty: no --priority_share
  std::string priority_share_text;
  std::vector<Step> priority_share;  // as rate_schedule, values 0..1
  double start_at_unix = 0;
};

// ---------------------------------------------------------------------------
// Latency histogram, HDR style: values in nanoseconds; below 128 ns one bucket
// per nanosecond, above that 64 linear sub-buckets per power of two, so a
// bucket is at most 1/64 of its value wide and the bucket midpoint that is
// reported is within 0.8 % of every sample in it. 2048 buckets cover 0..137 s;
// larger values (beyond any sane deadline) land in the last bucket.
//
// The open-loop timeline keeps one histogram per 100 ms interval, so it uses a
// coarser one (CoarseHistogram): 16 sub-buckets per power of two (within 3 %),
// 576 buckets up to ~550 s.
template <int kSubBitsT, int kBucketsT>
class BasicHistogram {
 public:
  static constexpr int kSubBits = kSubBitsT;
  static constexpr uint64_t kSub = uint64_t{1} << kSubBits;
  static constexpr int kBuckets = kBucketsT;

  void Record(uint64_t nanos) {
    ++buckets_[Index(nanos)];
    ++count_;
    sum_ += nanos;
    min_ = std::min(min_, nanos);
    max_ = std::max(max_, nanos);
  }

  void Merge(const BasicHistogram& other) {
    for (int i = 0; i < kBuckets; ++i) buckets_[i] += other.buckets_[i];
    count_ += other.count_;
    sum_ += other.sum_;
    min_ = std::min(min_, other.min_);
    max_ = std::max(max_, other.max_);
  }

  uint64_t count() const { return count_; }
  uint64_t max() const { return count_ == 0 ? 0 : max_; }
  uint64_t min() const { return count_ == 0 ? 0 : min_; }
  double mean() const {
    return count_ == 0 ? 0 : static_cast<double>(sum_) / count_;
  }

  // The value at quantile q (0..1): the midpoint of the bucket holding the
  // ceil(q * count)-th smallest sample, clamped to the exact min and max.
  uint64_t Quantile(double q) const {
    if (count_ == 0) return 0;
    const uint64_t rank = std::clamp<uint64_t>(
        static_cast<uint64_t>(std::ceil(q * count_)), 1, count_);
    uint64_t seen = 0;
    for (int i = 0; i < kBuckets; ++i) {
      seen += buckets_[i];
      if (seen >= rank) {
        const uint64_t mid = Lower(i) + Width(i) / 2;
        return std::clamp(mid, min_, max_);
      }
    }
    return max_;
  }

  static int Index(uint64_t v) {
    if (v < 2 * kSub) return static_cast<int>(v);
    const int log2 = 63 - std::countl_zero(v);  // >= kSubBits + 1
    const uint64_t sub = (v >> (log2 - kSubBits)) - kSub;
    const int index =
        static_cast<int>(2 * kSub + (log2 - kSubBits - 1) * kSub + sub);
    return std::min(index, kBuckets - 1);
  }
  static uint64_t Lower(int i) {
    if (i < static_cast<int>(2 * kSub)) return i;
    const int j = i - static_cast<int>(2 * kSub);
    const int shift = j / static_cast<int>(kSub) + 1;
    return (kSub + j % kSub) << shift;
  }
  static uint64_t Width(int i) {
    if (i < static_cast<int>(2 * kSub)) return 1;
    return uint64_t{1} << ((i - 2 * kSub) / kSub + 1);
  }

 private:
  std::array<uint64_t, kBuckets> buckets_{};
  uint64_t count_ = 0;
  uint64_t sum_ = 0;
  uint64_t min_ = UINT64_MAX;
  uint64_t max_ = 0;
};

using Histogram = BasicHistogram<6, 2048>;
using CoarseHistogram = BasicHistogram<4, 576>;

// ---------------------------------------------------------------------------
// Per-thread results. Only the owning thread writes a shard. The progress
// line reads the counters meanwhile, hence relaxed atomics for those (a plain
// load + store, no locked instruction, since there is one writer); everything
// else is read only after the run, once every call has ended.
struct alignas(64) Shard {
  static void Bump(std::atomic<uint64_t>& counter, uint64_t n = 1) {
    counter.store(counter.load(std::memory_order_relaxed) + n,
                  std::memory_order_relaxed);
  }

  std::atomic<uint64_t> calls{0};  // measured calls
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> warmup_calls{0};
  uint64_t messages = 0;
  uint64_t bad_responses = 0;  // OK status but not the expected answer
  Histogram all;               // every measured call
  Histogram ok;                // OK calls only
  std::array<uint64_t, kNumCodes + 1> by_code{};
  std::array<std::string, kNumCodes + 1> sample_message;  // first seen
  std::map<std::pair<int, std::string>, uint64_t> by_reason;
};

class ShardRegistry {
 public:
  // Never destroyed: gRPC threads may outlive main's locals.
  static ShardRegistry& Get() {
    static ShardRegistry* const registry = new ShardRegistry;
    return *registry;
  }

  Shard& Local() {
    thread_local Shard* shard = nullptr;
    if (shard == nullptr) {
      absl::MutexLock lock(&mu_);
      shards_.push_back(std::make_unique<Shard>());
      shard = shards_.back().get();
    }
    return *shard;
  }

  template <typename F>
  void ForEach(F f) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    for (const auto& shard : shards_) f(*shard);
  }

 private:
  absl::Mutex mu_;
  std::vector<std::unique_ptr<Shard>> shards_ ABSL_GUARDED_BY(mu_);
};

// ---------------------------------------------------------------------------
// The run: when calls may start, and when the last caller has retired.
class Run {
 public:
  explicit Run(const Options& options) : options_(options) {}

  void Begin(Clock::time_point now) {
    begin_ = now;
    measure_start_ = now + absl::ToChronoNanoseconds(options_.warmup);
    stop_ = measure_start_ + absl::ToChronoNanoseconds(options_.duration);
    absl::MutexLock lock(&mu_);
    // Open loop: one participant, the pacer, which retires once its last
    // call ended.
    active_ = options_.open_loop ? 1 : options_.concurrency;
  }

  // Whether a caller may start another call now, and whether that call is a
  // warm-up one. Warm-up calls do not use up --calls.
  bool Admit(bool* warmup) {
    if (stop_requested_.load(std::memory_order_relaxed)) return false;
    const Clock::time_point now = Clock::now();
    if (now >= stop_) return false;
    *warmup = now < measure_start_;
    if (!*warmup && options_.calls > 0 &&
        issued_.fetch_add(1, std::memory_order_relaxed) >= options_.calls) {
      return false;
    }
    return true;
  }

  // Called by each caller once, as the last thing it does.
  void Retire() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (--active_ == 0) end_ = Clock::now();
  }

  // Stops new calls (SIGINT); calls in flight finish normally.
  void RequestStop() { stop_requested_.store(true, std::memory_order_relaxed); }

  // Waits until every caller retired or `timeout` passed; true if all retired.
  bool WaitAllRetired(absl::Duration timeout) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(
        absl::Condition(
            +[](int* active) { return *active == 0; }, &active_),
        timeout);
  }
  int active() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return active_;
  }
  Clock::time_point end() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return end_;
  }

  const Options& options() const { return options_; }
  Clock::time_point begin() const { return begin_; }
  Clock::time_point measure_start() const { return measure_start_; }
  Clock::time_point stop() const { return stop_; }
  bool stop_requested() const {
    return stop_requested_.load(std::memory_order_relaxed);
  }

 private:
  const Options& options_;
  Clock::time_point begin_;
  Clock::time_point measure_start_;
  Clock::time_point stop_;
  std::atomic<bool> stop_requested_{false};
  std::atomic<int64_t> issued_{0};
  absl::Mutex mu_;
  int active_ ABSL_GUARDED_BY(mu_) = 0;
  Clock::time_point end_ ABSL_GUARDED_BY(mu_);
};

// ---------------------------------------------------------------------------
// A caller: one closed loop of calls on one channel. Its request messages are
// built once and reused (only the unique counter changes between calls), so
// the loop costs what gRPC costs, not payload construction.
class Caller;

// What every call kind records about itself.
struct CallRecord {
  grpc::ClientContext ctx;
  Clock::time_point start;
  bool warmup = false;
  uint64_t messages = 0;
  bool bad = false;
};

// Whether a finished call has an x-bulwark-reason trailer, and its value.
// Trailers-only answers (every sidecar rejection) arrive as trailers.
bool ReasonOf(const grpc::ClientContext& ctx, absl::string_view* reason) {
  const auto& trailers = ctx.GetServerTrailingMetadata();
  auto it = trailers.find("x-bulwark-reason");
  if (it == trailers.end()) return false;
  *reason = absl::string_view(it->second.data(), it->second.size());
  return true;
}

// Records a call that finished at `end` in the calling thread's shard.
void RecordCall(CallRecord& call, const grpc::Status& status,
                Clock::time_point end) {
  const uint64_t nanos =
      std::chrono::duration_cast<std::chrono::nanoseconds>(end - call.start)
          .count();
  Shard& shard = ShardRegistry::Get().Local();
  if (call.warmup) {
    Shard::Bump(shard.warmup_calls);
    return;
  }
  const int code = CodeIndex(status.error_code());
  shard.all.Record(nanos);
  ++shard.by_code[code];
  shard.messages += call.messages;
  if (status.ok()) {
    shard.ok.Record(nanos);
    if (call.bad) ++shard.bad_responses;
  } else {
    Shard::Bump(shard.errors);
    if (shard.sample_message[code].empty()) {
      shard.sample_message[code] = status.error_message();
    }
    if (absl::string_view reason; ReasonOf(call.ctx, &reason)) {
      ++shard.by_reason[{code, std::string(reason)}];
    }
  }
  Shard::Bump(shard.calls);
}

class Caller {
 public:
  Caller(Run& run, Demo::Stub& stub, uint64_t index)
      : run_(run), stub_(stub), index_(index) {
    const Options& o = run.options();
    std::string payload(o.payload_bytes, '\0');
    for (size_t i = 0; i < payload.size(); ++i) payload[i] = 'a' + i % 26;
    echo_.set_payload(payload);
    stream_.set_payload(payload);
    stream_.set_count(o.stream_messages);
    if (o.response_bytes > 0) echo_.set_response_bytes(o.response_bytes);
    if (o.fault_code != 0 || o.fault_delay_ms > 0) {
      for (auto* fault : {echo_.mutable_fault(), stream_.mutable_fault()}) {
        fault->set_status_code(o.fault_code);
        fault->set_delay_ms(o.fault_delay_ms);
      }
    }
  }

  // Starts the next call, or retires when the run is over. Called once to
  // start, then from each call's OnDone.
  void Next();

  // Records a finished call in the calling thread's shard.
  void Record(CallRecord& call, const grpc::Status& status) {
    RecordCall(call, status, Clock::now());
  }

  const Options& options() const { return run_.options(); }
  Demo::Stub& stub() { return stub_; }
  const EchoRequest& echo() const { return echo_; }
  const StreamRequest& stream() const { return stream_; }

 private:
  void Prepare(CallRecord& call) {
    const Options& o = options();
    call.start = Clock::now();
    call.ctx.set_deadline(std::chrono::system_clock::now() +
                          absl::ToChronoNanoseconds(o.deadline));
    for (const auto& [key, value] : o.metadata)
      call.ctx.AddMetadata(key, value);
  }

  // Distinct across callers and calls: caller index in the top 24 bits.
  void StampUniquePayload() {
    const uint64_t stamp = (index_ << 40) | (sequence_++ & ((1ull << 40) - 1));
    std::memcpy(echo_.mutable_payload()->data(), &stamp, sizeof(stamp));
    std::memcpy(stream_.mutable_payload()->data(), &stamp, sizeof(stamp));
  }

  Run& run_;
  Demo::Stub& stub_;
  const uint64_t index_;
  uint64_t sequence_ = 0;
  EchoRequest echo_;      // Echo, and each ClientStream / Bidi message
  StreamRequest stream_;  // ServerStream
};

size_t ExpectedReplyBytes(const Options& o) {
  return o.response_bytes > 0 ? o.response_bytes : o.payload_bytes;
}

// Each call object lives from its start to its OnDone, where it records
// itself, deletes itself and lets its caller start the next call.
class UnaryCall final : public grpc::ClientUnaryReactor {
 public:
  explicit UnaryCall(Caller& caller) : caller_(caller) {}
  CallRecord& record() { return record_; }

  void Start() {
    caller_.stub().async()->Echo(&record_.ctx, &caller_.echo(), &response_,
                                 this);
    StartCall();
  }

  void OnDone(const grpc::Status& status) override {
    if (status.ok()) {
      record_.messages = 1;
      record_.bad =
          response_.payload().size() != ExpectedReplyBytes(caller_.options());
    }
    Caller& caller = caller_;
    caller.Record(record_, status);
    delete this;
    caller.Next();
  }

 private:
  Caller& caller_;
  CallRecord record_;
  EchoResponse response_;
};

class ServerStreamCall final : public grpc::ClientReadReactor<EchoResponse> {
 public:
  explicit ServerStreamCall(Caller& caller) : caller_(caller) {}
  CallRecord& record() { return record_; }

  void Start() {
    caller_.stub().async()->ServerStream(&record_.ctx, &caller_.stream(), this);
    StartRead(&response_);
    StartCall();
  }

  // Reads are one at a time, so these reactions never overlap.
  void OnReadDone(bool ok) override {
    if (!ok) return;  // End of stream; OnDone follows.
    ++record_.messages;
    if (response_.payload().size() !=
        static_cast<size_t>(caller_.options().payload_bytes)) {
      record_.bad = true;
    }
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    if (status.ok() &&
        record_.messages !=
            static_cast<uint64_t>(caller_.options().stream_messages)) {
      record_.bad = true;
    }
    Caller& caller = caller_;
    caller.Record(record_, status);
    delete this;
    caller.Next();
  }

 private:
  Caller& caller_;
  CallRecord record_;
  EchoResponse response_;
};

class ClientStreamCall final : public grpc::ClientWriteReactor<EchoRequest> {
 public:
  explicit ClientStreamCall(Caller& caller) : caller_(caller) {}
  CallRecord& record() { return record_; }

  void Start() {
    caller_.stub().async()->ClientStream(&record_.ctx, &response_, this);
    WriteNext();
    StartCall();
  }

  // Writes are one at a time, so these reactions never overlap.
  void OnWriteDone(bool ok) override {
    if (!ok) return;  // The call is over; OnDone follows.
    ++record_.messages;
    WriteNext();
  }

  void OnDone(const grpc::Status& status) override {
    const Options& o = caller_.options();
    if (status.ok() &&
        response_.total_bytes() !=
            static_cast<uint64_t>(o.stream_messages) * o.payload_bytes) {
      record_.bad = true;
    }
    Caller& caller = caller_;
    caller.Record(record_, status);
    delete this;
    caller.Next();
  }

 private:
  void WriteNext() {
    if (record_.messages <
        static_cast<uint64_t>(caller_.options().stream_messages)) {
      StartWrite(&caller_.echo());
    } else {
      StartWritesDone();
    }
  }

  Caller& caller_;
  CallRecord record_;
  EchoResponse response_;
};

// Ping-pong: one request, wait for its answer, next request. A round ends
// when both its write and its read completed (in either order, possibly on
// two threads at once); only then may the next write start.
class BidiCall final
    : public grpc::ClientBidiReactor<EchoRequest, EchoResponse> {
 public:
  explicit BidiCall(Caller& caller) : caller_(caller) {}
  CallRecord& record() { return record_; }

  void Start() {
    caller_.stub().async()->Bidi(&record_.ctx, this);
    NextRound();
    StartCall();
  }

  void OnWriteDone(bool ok) override {
    if (ok) RoundStepDone();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // The call is over; OnDone follows.
    ++record_.messages;
    if (response_.payload().size() != ExpectedReplyBytes(caller_.options())) {
      record_.bad = true;
    }
    RoundStepDone();
  }

  void OnDone(const grpc::Status& status) override {
    if (status.ok() &&
        record_.messages !=
            static_cast<uint64_t>(caller_.options().stream_messages)) {
      record_.bad = true;
    }
    Caller& caller = caller_;
    caller.Record(record_, status);
    delete this;
    caller.Next();
  }

 private:
  void RoundStepDone() {
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) NextRound();
  }

  void NextRound() {
    if (record_.messages <
        static_cast<uint64_t>(caller_.options().stream_messages)) {
      pending_.store(2, std::memory_order_relaxed);
      StartRead(&response_);
      StartWrite(&caller_.echo());
    } else {
      StartWritesDone();
    }
  }

  Caller& caller_;
  CallRecord record_;
  EchoResponse response_;
  std::atomic<int> pending_{0};
};

void Caller::Next() {
  bool warmup = false;
  if (!run_.Admit(&warmup)) {
    run_.Retire();  // Last use of this caller by this call chain.
    return;
  }
  if (options().unique_payloads) StampUniquePayload();
  auto start = [&](auto* call) {
    call->record().warmup = warmup;
    Prepare(call->record());
    call->Start();
  };
  switch (options().rpc) {
    case Rpc::kEcho:
      start(new UnaryCall(*this));
      break;
    case Rpc::kServerStream:
      start(new ServerStreamCall(*this));
      break;
    case Rpc::kClientStream:
      start(new ClientStreamCall(*this));
      break;
    case Rpc::kBidi:
      start(new BidiCall(*this));
      break;
  }
}

// ---------------------------------------------------------------------------
// Open loop (--rate, --rate_schedule): a pacer thread starts Echo calls on
// schedule, each on the next channel in turn, whether or not earlier ones
// answered, the way independent clients load a server; --max_outstanding
// bounds the calls in flight. Calls are due evenly spaced (a fixed gap of
// 1/rate); the pacer wakes at most once a millisecond and starts the calls due
// by then, and one that fell further behind (descheduled) starts the calls it
// owes at once, so the offered count stays exact; its worst lag is reported.

constexpr absl::Duration kTimelineInterval = absl::Milliseconds(100);
constexpr absl::Duration kPacerTick = absl::Milliseconds(1);

// The value of a step function at `t` after the measured run began (before the
// first step, and during the warm-up: the first step's).
double StepValueAt(const std::vector<Options::Step>& steps, absl::Duration t) {
  double value = steps.empty() ? 0 : steps.front().value;
  for (const Options::Step& step : steps) {
    if (step.start > t) break;
    value = step.value;
  }
  return value;
}

// Which step `t` falls in (0 before the first).
size_t StepIndexAt(const std::vector<Options::Step>& steps, absl::Duration t) {
  size_t index = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    if (steps[i].start > t) break;
    index = i;
  }
  return index;
}

// Call counts by outcome. Offered (started), not sent and critical offered are
// counted where a call started; the outcomes where it ended (in a timeline
// interval) or where it started (in a schedule step).
struct Outcomes {
  uint64_t offered = 0;
  uint64_t not_sent = 0;
  uint64_t ok = 0;
  uint64_t load_shed = 0;
  uint64_t concurrency_limit = 0;
  uint64_t queue_timeout = 0;
  uint64_t deadline_exceeded = 0;  // DEADLINE_EXCEEDED without a reason
  uint64_t other = 0;              // every other non-OK answer
  uint64_t critical_offered = 0;
  uint64_t critical_ok = 0;
  uint64_t critical_rejected = 0;  // critical calls answered non-OK

  void CountEnd(const grpc::Status& status, const grpc::ClientContext& ctx,
                bool critical) {
    if (status.ok()) {
      ++ok;
      if (critical) ++critical_ok;
      return;
    }
    if (critical) ++critical_rejected;
    absl::string_view reason;
    const bool has_reason = ReasonOf(ctx, &reason);
    if (has_reason && reason == "load_shed") {
      ++load_shed;
    } else if (has_reason && reason == "concurrency_limit") {
      ++concurrency_limit;
    } else if (has_reason && reason == "queue_timeout") {
      ++queue_timeout;
    } else if (!has_reason &&
               status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      ++deadline_exceeded;
    } else {
      ++other;
    }
  }
};

// Measured calls per 100 ms interval (--timeline) and per rate step (the JSON
// report's "steps"). One lock: a few thousand calls a second take it twice.
class OpenLoopStats {
 public:
  OpenLoopStats(size_t intervals, size_t steps)
      : intervals_(intervals), steps_(steps) {}

  void Started(size_t interval, size_t step, bool critical)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    for (Outcomes* o : {&intervals_[interval].counts, &steps_[step].counts}) {
      ++o->offered;
      if (critical) ++o->critical_offered;
    }
  }
  void NotSent(size_t interval, size_t step) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    ++intervals_[interval].counts.not_sent;
    ++steps_[step].counts.not_sent;
  }
  void Ended(size_t start_step, size_t end_interval, const grpc::Status& status,
             const grpc::ClientContext& ctx, bool critical, uint64_t nanos)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    Interval& interval = intervals_[end_interval];
    StepTotals& step = steps_[start_step];
    interval.counts.CountEnd(status, ctx, critical);
    step.counts.CountEnd(status, ctx, critical);
    if (status.ok()) {
      interval.ok_latency.Record(nanos);
      step.ok_latency.Record(nanos);
    }
  }

  // After the run. Rows up to the last interval with a call, and at least
  // `min_rows`.
  void WriteTimeline(std::ostream& out, size_t min_rows)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    size_t rows = std::min(min_rows, intervals_.size());
    for (size_t i = 0; i < intervals_.size(); ++i) {
      const Outcomes& c = intervals_[i].counts;
      if (c.offered + c.not_sent + c.ok + c.load_shed + c.concurrency_limit +
              c.queue_timeout + c.deadline_exceeded + c.other >
          0) {
        rows = std::max(rows, i + 1);
      }
    }
    out << "t_s,offered,not_sent,ok,load_shed,concurrency_limit,queue_timeout,"
           "deadline_exceeded,other,p50_ms,p99_ms,critical_offered,"
           "critical_ok,critical_rejected\n";
    for (size_t i = 0; i < rows; ++i) {
      const Outcomes& c = intervals_[i].counts;
      const CoarseHistogram& h = intervals_[i].ok_latency;
      const std::string p50 =
          h.count() > 0 ? absl::StrFormat("%.3f", h.Quantile(0.5) / 1e6) : "NA";
      const std::string p99 =
          h.count() > 0 ? absl::StrFormat("%.3f", h.Quantile(0.99) / 1e6)
                        : "NA";
      out << absl::StrFormat(
          "%.1f,%d,%d,%d,%d,%d,%d,%d,%d,%s,%s,%d,%d,%d\n",
          absl::ToDoubleSeconds(kTimelineInterval) * i, c.offered, c.not_sent,
          c.ok, c.load_shed, c.concurrency_limit, c.queue_timeout,
          c.deadline_exceeded, c.other, p50, p99, c.critical_offered,
          c.critical_ok, c.critical_rejected);
    }
  }

  // After the run: one JSON object per step of `schedule`.
  std::string StepsJson(const std::vector<Options::Step>& schedule,
                        std::string (*latency_json)(const Histogram&))
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    std::string out = "[";
    for (size_t i = 0; i < steps_.size() && i < schedule.size(); ++i) {
      const Outcomes& c = steps_[i].counts;
      absl::StrAppend(
          &out, i == 0 ? "\n" : ",\n",
          absl::StrFormat(
              "    {\"start_s\": %.3f, \"rate\": %.1f, \"offered\": %d, "
              "\"not_sent\": %d, \"ok\": %d, \"load_shed\": %d, "
              "\"concurrency_limit\": %d, \"queue_timeout\": %d, "
              "\"deadline_exceeded\": %d, \"other\": %d, "
              "\"critical_offered\": %d, \"critical_ok\": %d, "
              "\"critical_rejected\": %d, \"ok_latency_us\": %s}",
              absl::ToDoubleSeconds(schedule[i].start), schedule[i].value,
              c.offered, c.not_sent, c.ok, c.load_shed, c.concurrency_limit,
              c.queue_timeout, c.deadline_exceeded, c.other, c.critical_offered,
              c.critical_ok, c.critical_rejected,
              latency_json(steps_[i].ok_latency)));
    }
    absl::StrAppend(&out, "\n  ]");
    return out;
  }

 private:
  struct Interval {
    Outcomes counts;
    CoarseHistogram ok_latency;
  };
  struct StepTotals {
    Outcomes counts;
    Histogram ok_latency;
  };

  absl::Mutex mu_;
  std::vector<Interval> intervals_ ABSL_GUARDED_BY(mu_);
  std::vector<StepTotals> steps_ ABSL_GUARDED_BY(mu_);
};

class OpenLoop;

// One open-loop Echo call, from its start to its OnDone, where it records
// itself and deletes itself. It owns its request (calls overlap).
class OpenLoopCall final : public grpc::ClientUnaryReactor {
 public:
  OpenLoopCall(OpenLoop& loop, const EchoRequest& request, size_t step,
               bool critical)
      : loop_(loop), request_(request), step_(step), critical_(critical) {}
  CallRecord& record() { return record_; }
  EchoRequest& request() { return request_; }

  void Start(Demo::Stub& stub) {
    stub.async()->Echo(&record_.ctx, &request_, &response_, this);
    StartCall();
  }

  void OnDone(const grpc::Status& status) override;

 private:
  OpenLoop& loop_;
  CallRecord record_;
  EchoRequest request_;
  EchoResponse response_;
  const size_t step_;
  const bool critical_;
};

class OpenLoop {
 public:
  OpenLoop(Run& run, std::vector<Demo::Stub*> stubs)
      : run_(run),
        stubs_(std::move(stubs)),
        stats_(Intervals(run.options()), run.options().rate_schedule.size()) {
    const Options& o = run.options();
    std::string payload(o.payload_bytes, '\0');
    for (size_t i = 0; i < payload.size(); ++i) payload[i] = 'a' + i % 26;
    echo_.set_payload(payload);
    if (o.response_bytes > 0) echo_.set_response_bytes(o.response_bytes);
    if (o.fault_code != 0 || o.fault_delay_ms > 0) {
      echo_.mutable_fault()->set_status_code(o.fault_code);
      echo_.mutable_fault()->set_delay_ms(o.fault_delay_ms);
    }
  }
  ~OpenLoop() { Join(); }

  // Intervals the timeline can hold: the run, then the longest a call started
  // in it can last, then a second to spare; later ends land in the last one.
  static size_t Intervals(const Options& o) {
    return static_cast<size_t>(std::ceil(
        (o.duration + o.deadline + absl::Seconds(1)) / kTimelineInterval));
  }

  void Start() {
    thread_ = std::thread([this] { Pace(); });
  }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

  const Options& options() const { return run_.options(); }
  OpenLoopStats& stats() { return stats_; }
  uint64_t offered() const { return offered_.load(std::memory_order_relaxed); }
  uint64_t not_sent() const {
    return not_sent_.load(std::memory_order_relaxed);
  }
  int64_t outstanding() const {
    return outstanding_.load(std::memory_order_relaxed);
  }
  // After Join.
  double max_lag_ms() const { return max_lag_ms_; }
  Clock::time_point pacing_end() const { return pacing_end_; }

  // From a call's OnDone; the call's last use of the loop.
  void Ended(OpenLoopCall& call, size_t step, bool critical,
             const grpc::Status& status, Clock::time_point end) {
    const CallRecord& record = call.record();
    if (!record.warmup) {
      const uint64_t nanos =
          std::chrono::duration_cast<std::chrono::nanoseconds>(end -
                                                               record.start)
              .count();
      stats_.Ended(step, IntervalOf(end), status, record.ctx, critical, nanos);
    }
    outstanding_.fetch_sub(1, std::memory_order_acq_rel);
  }

 private:
  size_t IntervalOf(Clock::time_point t) const {
    const int64_t i = (t - run_.measure_start()) /
                      absl::ToChronoNanoseconds(kTimelineInterval);
    return static_cast<size_t>(std::clamp<int64_t>(
        i, 0, static_cast<int64_t>(Intervals(options())) - 1));
  }

  // The next step boundary after `t` (an absolute time), or the stop time.
  Clock::time_point NextBoundary(Clock::time_point t) const {
    const absl::Duration since = absl::FromChrono(t - run_.measure_start());
    for (const Options::Step& step : options().rate_schedule) {
      if (step.start > since) {
        return std::min(run_.stop(), run_.measure_start() +
                                         absl::ToChronoNanoseconds(step.start));
      }
    }
    return run_.stop();
  }

  void Pace() {
    const Options& o = options();
    const Clock::time_point t0 = run_.measure_start();
    Clock::time_point due = run_.begin();
    double share_credit = 0;
    uint64_t sequence = 0;
    Clock::duration max_lag{0};
    while (!run_.stop_requested() && due < run_.stop()) {
      const Clock::time_point now = Clock::now();
      if (due > now) {
        // At least a tick (the calls due meanwhile then start together: fewer
        // wake-ups of this thread and of gRPC's), at most 100 ms, so that a
        // Ctrl-C stops the pacer promptly.
        absl::SleepFor(std::clamp(absl::FromChrono(due - now), kPacerTick,
                                  absl::Milliseconds(100)));
        continue;
      }
      const absl::Duration since = absl::FromChrono(due - t0);
      const double rate = StepValueAt(o.rate_schedule, since);
      if (rate <= 0) {
        due = NextBoundary(due);
        continue;
      }
      max_lag = std::max(max_lag, now - due);
      const bool warmup = due < t0;
      const size_t step = warmup ? 0 : StepIndexAt(o.rate_schedule, since);
      const size_t interval = IntervalOf(due);
      bool critical = false;
      if (!o.priority_value.empty()) {
        share_credit += StepValueAt(o.priority_share, since);
        if (share_credit >= 1) {
          critical = true;
          share_credit -= 1;
        }
      }
      if (outstanding() >= o.max_outstanding) {
        if (!warmup) {
          not_sent_.fetch_add(1, std::memory_order_relaxed);
          stats_.NotSent(interval, step);
        }
      } else {
        outstanding_.fetch_add(1, std::memory_order_acq_rel);
        auto* call = new OpenLoopCall(*this, echo_, step, critical);
        if (o.unique_payloads) {
          const uint64_t stamp = sequence++;
          std::memcpy(call->request().mutable_payload()->data(), &stamp,
                      sizeof(stamp));
        }
        CallRecord& record = call->record();
        record.warmup = warmup;
        record.start = Clock::now();
        record.ctx.set_deadline(std::chrono::system_clock::now() +
                                absl::ToChronoNanoseconds(o.deadline));
        for (const auto& [key, value] : o.metadata) {
          record.ctx.AddMetadata(key, value);
        }
        if (critical)
          record.ctx.AddMetadata(o.priority_header, o.priority_value);
        if (!warmup) {
          offered_.fetch_add(1, std::memory_order_relaxed);
          stats_.Started(interval, step, critical);
        }
        call->Start(*stubs_[next_stub_++ % stubs_.size()]);
      }
      const Clock::time_point gap =
          due + std::chrono::nanoseconds(std::llround(1e9 / rate));
      due = std::min(gap, NextBoundary(due));
    }
    pacing_end_ = std::min(Clock::now(), run_.stop());
    max_lag_ms_ = std::chrono::duration<double, std::milli>(max_lag).count();
    // Every call ends by its deadline.
    while (outstanding() > 0) absl::SleepFor(absl::Milliseconds(5));
    run_.Retire();
  }

  Run& run_;
  const std::vector<Demo::Stub*> stubs_;
  OpenLoopStats stats_;
  EchoRequest echo_;
  std::atomic<uint64_t> offered_{0};
  std::atomic<uint64_t> not_sent_{0};
  std::atomic<int64_t> outstanding_{0};
  // The pacer's own (read by others after Join).
  size_t next_stub_ = 0;
  double max_lag_ms_ = 0;
  Clock::time_point pacing_end_;
  std::thread thread_;
};

void OpenLoopCall::OnDone(const grpc::Status& status) {
  const Clock::time_point end = Clock::now();
  if (status.ok()) {
    record_.messages = 1;
    record_.bad =
        response_.payload().size() != ExpectedReplyBytes(loop_.options());
  }
  RecordCall(record_, status, end);
  OpenLoop& loop = loop_;
  const size_t step = step_;
  const bool critical = critical_;
  loop.Ended(*this, step, critical, status, end);
  delete this;
}

// ---------------------------------------------------------------------------
// Flags.

bool ValidMetadataKey(absl::string_view key) {
  if (key.empty()) return false;
  for (char c : key) {
    if (!(absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '-' ||
          c == '_' || c == '.')) {
      return false;
    }
  }
  return !absl::StartsWith(key, "grpc-");
}

// "seconds:value,seconds:value,...": steps starting at 0, in increasing order,
// each value >= 0 (and <= 1 for shares).
bool ParseSteps(absl::string_view text, absl::string_view flag, bool share,
                std::vector<Options::Step>* steps, std::string* error) {
  steps->clear();
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    item = absl::StripAsciiWhitespace(item);
    const size_t colon = item.find(':');
    double seconds = 0, value = 0;
    if (colon == absl::string_view::npos ||
        !absl::SimpleAtod(item.substr(0, colon), &seconds) ||
        !absl::SimpleAtod(item.substr(colon + 1), &value) ||
        !std::isfinite(seconds) || !std::isfinite(value) || seconds < 0 ||
        value < 0 || (share && value > 1)) {
      *error = absl::StrCat(flag, " wants seconds:", share ? "share" : "rate",
                            " steps (", share ? "0 <= share <= 1" : "rate >= 0",
                            "), e.g. ",
                            share ? "0:0,100:0.1,120:0" : "0:1400,60:4200",
                            "; not \"", item, "\"");
      return false;
    }
    const absl::Duration start = absl::Seconds(seconds);
    if (steps->empty() ? start != absl::ZeroDuration()
                       : start <= steps->back().start) {
      *error = absl::StrCat(
          flag, ": steps start at 0 and in increasing order, not \"", text,
          "\"");
      return false;
    }
    steps->push_back({start, value});
  }
  return true;
}

bool ParseOpenLoopOptions(Options* o, std::string* error) {
  const double rate = absl::GetFlag(FLAGS_rate);
  o->rate_schedule_text = absl::GetFlag(FLAGS_rate_schedule);
  o->max_outstanding = absl::GetFlag(FLAGS_max_outstanding);
  o->timeline_path = absl::GetFlag(FLAGS_timeline);
  o->priority_header = absl::GetFlag(FLAGS_priority_header);
  o->start_at_unix = absl::GetFlag(FLAGS_start_at_unix);
  const std::string share = absl::GetFlag(FLAGS_priority_share);
  if (!std::isfinite(rate) || rate < 0) {
    *error = "--rate must be >= 0";
    return false;
  }
  if (rate > 0 && !o->rate_schedule_text.empty()) {
    *error = "give --rate or --rate_schedule, not both";
    return false;
  }
  if (rate > 0) {
    o->rate_schedule = {{absl::ZeroDuration(), rate}};
    o->rate_schedule_text = absl::StrCat(rate);
  } else if (!o->rate_schedule_text.empty() &&
             !ParseSteps(o->rate_schedule_text, "--rate_schedule",
                         /*share=*/false, &o->rate_schedule, error)) {
    return false;
  }
  o->open_loop = !o->rate_schedule.empty();
  if (!std::isfinite(o->start_at_unix) || o->start_at_unix < 0) {
    *error = "--start_at_unix must be a Unix time in seconds, or 0";
    return false;
  }
  if (!o->open_loop) {
    if (!o->timeline_path.empty() || !share.empty()) {
      *error = "--timeline and --priority_share need --rate or --rate_schedule";
      return false;
    }
    return true;
  }
  if (o->rpc != Rpc::kEcho) {
    *error = "--rate and --rate_schedule load --rpc echo only";
    return false;
  }
  if (o->calls > 0) {
    *error = "--calls is for the closed loop; the open loop runs --duration";
    return false;
  }
  if (o->max_outstanding < 1) {
    *error = "--max_outstanding must be >= 1";
    return false;
  }
  if (!share.empty()) {
    const size_t eq = share.find('=');
    const std::string value = share.substr(0, eq == std::string::npos ? 0 : eq);
    if (eq == std::string::npos || value.empty() ||
        !ValidMetadataKey(o->priority_header)) {
      *error = absl::StrCat(
          "--priority_share wants VALUE=SHARE or VALUE=seconds:share,... (and "
          "--priority_header a lowercase key), not \"",
          share, "\"");
      return false;
    }
    o->priority_value = value;
    o->priority_share_text = share.substr(eq + 1);
    if (o->priority_share_text.find(':') == std::string::npos) {
      double fixed = 0;
      if (!absl::SimpleAtod(o->priority_share_text, &fixed) ||
          !std::isfinite(fixed) || fixed < 0 || fixed > 1) {
        *error =
            absl::StrCat("--priority_share: the share must be 0..1, not \"",
                         o->priority_share_text, "\"");
        return false;
      }
      o->priority_share = {{absl::ZeroDuration(), fixed}};
    } else if (!ParseSteps(o->priority_share_text, "--priority_share",
                           /*share=*/true, &o->priority_share, error)) {
      return false;
    }
  }
  return true;
}

bool ParseOptions(Options* o, std::string* error) {
  o->target = absl::GetFlag(FLAGS_target);
  o->rpc_name = absl::GetFlag(FLAGS_rpc);
  o->payload_bytes = absl::GetFlag(FLAGS_payload_bytes);
  o->response_bytes = absl::GetFlag(FLAGS_response_bytes);
  o->concurrency = absl::GetFlag(FLAGS_concurrency);
  o->connections = absl::GetFlag(FLAGS_connections);
  o->duration = absl::GetFlag(FLAGS_duration);
  o->calls = absl::GetFlag(FLAGS_calls);
  o->warmup = absl::GetFlag(FLAGS_warmup);
  o->unique_payloads = absl::GetFlag(FLAGS_unique_payloads);
  o->fault_code = absl::GetFlag(FLAGS_fault_code);
  o->fault_delay_ms = absl::GetFlag(FLAGS_fault_delay_ms);
  o->deadline = absl::GetFlag(FLAGS_deadline);
  o->stream_messages = absl::GetFlag(FLAGS_stream_messages);
  o->json_path = absl::GetFlag(FLAGS_json);
  o->progress = absl::GetFlag(FLAGS_progress);

  if (o->target.empty()) {
    *error = "--target is required";
    return false;
  }
  if (o->rpc_name == "echo") {
    o->rpc = Rpc::kEcho;
  } else if (o->rpc_name == "server_stream") {
    o->rpc = Rpc::kServerStream;
  } else if (o->rpc_name == "client_stream") {
    o->rpc = Rpc::kClientStream;
  } else if (o->rpc_name == "bidi") {
    o->rpc = Rpc::kBidi;
  } else {
    *error = absl::StrCat(
        "--rpc must be echo, server_stream, client_stream "
        "or bidi, not \"",
        o->rpc_name, "\"");
    return false;
  }
  if (o->payload_bytes < 0 || o->response_bytes < 0) {
    *error = "--payload_bytes and --response_bytes must be >= 0";
    return false;
  }
  if (o->response_bytes > 0 &&
      (o->rpc == Rpc::kServerStream || o->rpc == Rpc::kClientStream)) {
    *error = "--response_bytes applies to echo and bidi only";
    return false;
  }
  if (o->unique_payloads && o->payload_bytes < 8) {
    *error = "--unique_payloads needs --payload_bytes >= 8";
    return false;
  }
  if (!ParseOpenLoopOptions(o, error)) return false;
  if (o->concurrency < 1) {
    *error = "--concurrency must be >= 1";
    return false;
  }
  // The open loop has no callers: any number of connections.
  if (o->connections < 1 ||
      (!o->open_loop && o->connections > o->concurrency)) {
    *error = "--connections must be between 1 and --concurrency";
    return false;
  }
  if (o->calls < 0) {
    *error = "--calls must be >= 0";
    return false;
  }
  // Unset (0): 5 s, or with --calls only a safety cap. (This Abseil has no
  // public way to ask whether a flag was given, hence the 0 default.)
  if (o->duration == absl::ZeroDuration()) {
    o->duration = o->calls > 0 ? kCallsModeDurationCap : kDefaultDuration;
  }
  if (o->duration <= absl::ZeroDuration() ||
      o->duration == absl::InfiniteDuration()) {
    *error = "--duration must be positive and finite";
    return false;
  }
  if (o->warmup < absl::ZeroDuration() ||
      o->warmup == absl::InfiniteDuration()) {
    *error = "--warmup must be >= 0 and finite";
    return false;
  }
  if (o->deadline <= absl::ZeroDuration() ||
      o->deadline == absl::InfiniteDuration()) {
    *error = "--deadline must be positive and finite";
    return false;
  }
  if (o->fault_code < 0 || o->fault_code >= kNumCodes) {
    *error = "--fault_code must be a gRPC status code, 0..16";
    return false;
  }
  if (o->fault_delay_ms < 0) {
    *error = "--fault_delay_ms must be >= 0";
    return false;
  }
  if (o->stream_messages < 0) {
    *error = "--stream_messages must be >= 0";
    return false;
  }
  for (const std::string& item : absl::GetFlag(FLAGS_metadata)) {
    const size_t eq = item.find('=');
    if (eq == std::string::npos || !ValidMetadataKey(item.substr(0, eq))) {
      *error = absl::StrCat(
          "--metadata wants key=value with a lowercase key [a-z0-9-_.] not "
          "starting with grpc-, not \"",
          item, "\"");
      return false;
    }
    o->metadata.emplace_back(item.substr(0, eq), item.substr(eq + 1));
  }
  return true;
}

// ---------------------------------------------------------------------------
// Report.

struct Totals {
  uint64_t calls = 0;
  uint64_t errors = 0;
  uint64_t warmup_calls = 0;
  uint64_t messages = 0;
  uint64_t bad_responses = 0;
  Histogram all;
  Histogram ok;
  std::array<uint64_t, kNumCodes + 1> by_code{};
  std::array<std::string, kNumCodes + 1> sample_message;
  std::map<std::pair<int, std::string>, uint64_t> by_reason;
};

Totals Merge() {
  Totals t;
  ShardRegistry::Get().ForEach([&t](const Shard& s) {
    t.calls += s.calls.load(std::memory_order_relaxed);
    t.errors += s.errors.load(std::memory_order_relaxed);
    t.warmup_calls += s.warmup_calls.load(std::memory_order_relaxed);
    t.messages += s.messages;
    t.bad_responses += s.bad_responses;
    t.all.Merge(s.all);
    t.ok.Merge(s.ok);
    for (int i = 0; i <= kNumCodes; ++i) {
      t.by_code[i] += s.by_code[i];
      if (t.sample_message[i].empty())
        t.sample_message[i] = s.sample_message[i];
    }
    for (const auto& [key, n] : s.by_reason) t.by_reason[key] += n;
  });
  return t;
}

struct Report {
  const Options* options;
  double seconds = 0;  // measured time actually run
  bool interrupted = false;
  Totals totals;
  double cpu_seconds = 0;  // client user + system time over the measured run
  double cpu_user_seconds = 0;
  OpenLoop* open_loop = nullptr;  // open loop only
  double start_unix_s = 0;        // when the measured run began (open loop)
};

bool IsStreaming(Rpc rpc) { return rpc != Rpc::kEcho; }

double Micros(uint64_t nanos) { return nanos / 1000.0; }

std::string LatencyLine(const Histogram& h) {
  return absl::StrFormat(
      "p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  (mean %.1f, min "
      "%.1f)",
      Micros(h.Quantile(0.5)), Micros(h.Quantile(0.9)),
      Micros(h.Quantile(0.99)), Micros(h.Quantile(0.999)), Micros(h.max()),
      h.mean() / 1000.0, Micros(h.min()));
}

std::string TextReport(const Report& r) {
  const Options& o = *r.options;
  const Totals& t = r.totals;
  std::string out;
  absl::StrAppend(&out, "target        ", o.target, "\n");
  absl::StrAppend(&out, "rpc           ", o.rpc_name);
  if (IsStreaming(o.rpc)) {
    absl::StrAppend(&out, " (", o.stream_messages, " messages per call)");
  }
  absl::StrAppend(&out, "\n");
  absl::StrAppend(&out, "payload       ", o.payload_bytes, " B",
                  o.response_bytes > 0
                      ? absl::StrCat(", response ", o.response_bytes, " B")
                      : "",
                  o.unique_payloads ? ", unique" : ", identical", "\n");
  if (o.fault_code != 0 || o.fault_delay_ms > 0) {
    absl::StrAppend(&out, "fault         code ", o.fault_code, ", delay ",
                    o.fault_delay_ms, " ms\n");
  }
  if (r.open_loop == nullptr) {
    absl::StrAppend(&out, "concurrency   ", o.concurrency, " over ",
                    o.connections, " connection", o.connections > 1 ? "s" : "",
                    "\n");
  } else {
    absl::StrAppend(
        &out, "open loop     ", o.rate_schedule_text,
        o.rate_schedule.size() > 1 ? " (seconds:calls/s)" : " calls/s",
        " over ", o.connections, " connection", o.connections > 1 ? "s" : "",
        ", at most ", o.max_outstanding, " outstanding\n");
    absl::StrAppend(
        &out, "offered       ", r.open_loop->offered(), " started, ",
        r.open_loop->not_sent(), " not sent (over --max_outstanding); pacer ",
        absl::StrFormat("lag max %.1f ms", r.open_loop->max_lag_ms()), "\n");
    if (!o.priority_value.empty()) {
      absl::StrAppend(&out, "priority      ", o.priority_header, ": ",
                      o.priority_value, " on a share ", o.priority_share_text,
                      "\n");
    }
  }
  absl::StrAppend(&out, "duration      ", absl::StrFormat("%.3f s", r.seconds),
                  o.warmup > absl::ZeroDuration()
                      ? absl::StrCat(" after ", absl::FormatDuration(o.warmup),
                                     " warm-up (", t.warmup_calls, " calls)")
                      : "",
                  r.interrupted ? " (interrupted)" : "", "\n");
  const double seconds = r.seconds > 0 ? r.seconds : 1;
  absl::StrAppend(&out, "calls         ", t.calls, "  (",
                  absl::StrFormat("%.1f", t.calls / seconds), " QPS, ",
                  t.errors, " errors)\n");
  if (IsStreaming(o.rpc)) {
    absl::StrAppend(&out, "messages      ", t.messages, "  (",
                    absl::StrFormat("%.1f", t.messages / seconds),
                    " messages/s)\n");
  }
  absl::StrAppend(&out, "latency (us)  ", LatencyLine(t.all), "\n");
  if (t.errors > 0 && t.ok.count() > 0) {
    absl::StrAppend(&out, "  OK only     ", LatencyLine(t.ok), "\n");
  }
  absl::StrAppend(&out, "status\n");
  for (int i = 0; i <= kNumCodes; ++i) {
    if (t.by_code[i] == 0) continue;
    absl::StrAppend(&out, "  ", CodeName(i), ": ", t.by_code[i]);
    if (i != 0 && !t.sample_message[i].empty()) {
      absl::StrAppend(&out, "  (e.g. \"", t.sample_message[i], "\")");
    }
    absl::StrAppend(&out, "\n");
  }
  if (!t.by_reason.empty()) {
    absl::StrAppend(&out, "x-bulwark-reason\n");
    for (const auto& [key, n] : t.by_reason) {
      absl::StrAppend(&out, "  ", CodeName(key.first), " ", key.second, ": ", n,
                      "\n");
    }
  }
  if (t.bad_responses > 0) {
    absl::StrAppend(&out, "bad responses ", t.bad_responses,
                    " (OK status but wrong payload size or message count)\n");
  }
  if (t.calls > 0) {
    absl::StrAppend(
        &out, "client CPU    ",
        absl::StrFormat("%.1f us/call (user %.1f, sys %.1f); %.0f%% of a core",
                        r.cpu_seconds * 1e6 / t.calls,
                        r.cpu_user_seconds * 1e6 / t.calls,
                        (r.cpu_seconds - r.cpu_user_seconds) * 1e6 / t.calls,
                        100 * r.cpu_seconds / seconds),
        "\n");
  }
  return out;
}

std::string JsonLatency(const Histogram& h) {
  return absl::StrFormat(
      "{\"count\": %d, \"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, "
      "\"p999\": %.1f, \"max\": %.1f, \"min\": %.1f, \"mean\": %.1f}",
      h.count(), Micros(h.Quantile(0.5)), Micros(h.Quantile(0.9)),
      Micros(h.Quantile(0.99)), Micros(h.Quantile(0.999)), Micros(h.max()),
      Micros(h.min()), h.mean() / 1000.0);
}

std::string JsonReport(const Report& r) {
  const Options& o = *r.options;
  const Totals& t = r.totals;
  const double seconds = r.seconds > 0 ? r.seconds : 1;
  std::string out = "{\n";
  absl::StrAppend(&out, "  \"target\": ", JsonString(o.target), ",\n");
  absl::StrAppend(&out, "  \"rpc\": ", JsonString(o.rpc_name), ",\n");
  absl::StrAppend(&out, "  \"payload_bytes\": ", o.payload_bytes, ",\n");
  absl::StrAppend(&out, "  \"response_bytes\": ", o.response_bytes, ",\n");
  absl::StrAppend(&out, "  \"unique_payloads\": ",
                  o.unique_payloads ? "true" : "false", ",\n");
  absl::StrAppend(&out, "  \"stream_messages\": ", o.stream_messages, ",\n");
  absl::StrAppend(&out, "  \"fault_code\": ", o.fault_code, ",\n");
  absl::StrAppend(&out, "  \"fault_delay_ms\": ", o.fault_delay_ms, ",\n");
  absl::StrAppend(&out, "  \"concurrency\": ", o.concurrency, ",\n");
  absl::StrAppend(&out, "  \"connections\": ", o.connections, ",\n");
  if (r.open_loop != nullptr) {
    const OpenLoop& loop = *r.open_loop;
    absl::StrAppend(&out, "  \"open_loop\": true,\n");
    absl::StrAppend(
        &out, "  \"rate_schedule\": ", JsonString(o.rate_schedule_text), ",\n");
    absl::StrAppend(&out, "  \"max_outstanding\": ", o.max_outstanding, ",\n");
    absl::StrAppend(&out, "  \"start_unix_s\": ",
                    absl::StrFormat("%.6f", r.start_unix_s), ",\n");
    absl::StrAppend(&out, "  \"offered\": ", loop.offered(), ",\n");
    absl::StrAppend(&out, "  \"not_sent\": ", loop.not_sent(), ",\n");
    absl::StrAppend(&out, "  \"pacer_max_lag_ms\": ",
                    absl::StrFormat("%.3f", loop.max_lag_ms()), ",\n");
    absl::StrAppend(
        &out, "  \"priority_header\": ",
        JsonString(o.priority_value.empty() ? "" : o.priority_header), ",\n");
    absl::StrAppend(
        &out, "  \"priority_value\": ", JsonString(o.priority_value), ",\n");
    absl::StrAppend(&out,
                    "  \"priority_share\": ", JsonString(o.priority_share_text),
                    ",\n");
    absl::StrAppend(
        &out, "  \"steps\": ",
        r.open_loop->stats().StepsJson(o.rate_schedule, &JsonLatency), ",\n");
  }
  absl::StrAppend(&out, "  \"warmup_s\": ",
                  absl::StrFormat("%.3f", absl::ToDoubleSeconds(o.warmup)),
                  ",\n");
  absl::StrAppend(&out, "  \"warmup_calls\": ", t.warmup_calls, ",\n");
  absl::StrAppend(
      &out, "  \"duration_s\": ", absl::StrFormat("%.6f", r.seconds), ",\n");
  absl::StrAppend(&out, "  \"interrupted\": ", r.interrupted ? "true" : "false",
                  ",\n");
  absl::StrAppend(&out, "  \"calls\": ", t.calls, ",\n");
  absl::StrAppend(&out, "  \"errors\": ", t.errors, ",\n");
  absl::StrAppend(
      &out, "  \"qps\": ", absl::StrFormat("%.1f", t.calls / seconds), ",\n");
  absl::StrAppend(&out, "  \"messages\": ", t.messages, ",\n");
  absl::StrAppend(&out, "  \"messages_per_s\": ",
                  absl::StrFormat("%.1f", t.messages / seconds), ",\n");
  absl::StrAppend(&out, "  \"latency_us\": ", JsonLatency(t.all), ",\n");
  absl::StrAppend(&out, "  \"ok_latency_us\": ", JsonLatency(t.ok), ",\n");
  absl::StrAppend(&out, "  \"status\": {");
  const char* sep = "";
  for (int i = 0; i <= kNumCodes; ++i) {
    if (t.by_code[i] == 0) continue;
    absl::StrAppend(&out, sep, JsonString(CodeName(i)), ": ", t.by_code[i]);
    sep = ", ";
  }
  absl::StrAppend(&out, "},\n  \"status_messages\": {");
  sep = "";
  for (int i = 1; i <= kNumCodes; ++i) {
    if (t.sample_message[i].empty()) continue;
    absl::StrAppend(&out, sep, JsonString(CodeName(i)), ": ",
                    JsonString(t.sample_message[i]));
    sep = ", ";
  }
  // {"RESOURCE_EXHAUSTED": {"rate_limited": 123}, ...}
  absl::StrAppend(&out, "},\n  \"reasons\": {");
  int current = -1;
  for (const auto& [key, n] : t.by_reason) {
    if (key.first != current) {
      absl::StrAppend(&out, current == -1 ? "" : "}, ",
                      JsonString(CodeName(key.first)), ": {");
      current = key.first;
    } else {
      absl::StrAppend(&out, ", ");
    }
    absl::StrAppend(&out, JsonString(key.second), ": ", n);
  }
  if (current != -1) absl::StrAppend(&out, "}");
  absl::StrAppend(&out, "},\n  \"bad_responses\": ", t.bad_responses, ",\n");
  absl::StrAppend(&out, "  \"client_cpu_s\": ",
                  absl::StrFormat("%.6f", r.cpu_seconds), ",\n");
  absl::StrAppend(
      &out, "  \"client_cpu_us_per_call\": ",
      absl::StrFormat("%.2f",
                      t.calls > 0 ? r.cpu_seconds * 1e6 / t.calls : 0.0),
      "\n}\n");
  return out;
}

// ---------------------------------------------------------------------------
// Main.

// (user, user + system) CPU seconds of the whole process, gRPC threads
// included.
std::pair<double, double> ProcessCpuSeconds() {
  rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  auto secs = [](const timeval& tv) { return tv.tv_sec + tv.tv_usec / 1e6; };
  const double user = secs(usage.ru_utime);
  return {user, user + secs(usage.ru_stime)};
}

std::atomic<bool> g_interrupted{false};

extern "C" void OnInterrupt(int) {
  g_interrupted.store(true, std::memory_order_relaxed);
}

void InstallInterruptHandler() {
  struct sigaction action = {};
  action.sa_handler = OnInterrupt;
  sigemptyset(&action.sa_mask);
  // A second Ctrl-C kills the process the default way.
  action.sa_flags = SA_RESTART | SA_RESETHAND;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

double SecondsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

int Main() {
  Options options;
  std::string error;
  if (!ParseOptions(&options, &error)) {
    std::cerr << "bulwark-bench: " << error << std::endl;
    return 1;
  }
  // Opened now so a bad path fails before the load, not after it.
  std::ofstream json;
  if (!options.json_path.empty()) {
    json.open(options.json_path, std::ios::trunc);
    if (!json) {
      std::cerr << "bulwark-bench: cannot write " << options.json_path
                << std::endl;
      return 1;
    }
  }
  std::ofstream timeline;
  if (!options.timeline_path.empty()) {
    timeline.open(options.timeline_path, std::ios::trunc);
    if (!timeline) {
      std::cerr << "bulwark-bench: cannot write " << options.timeline_path
                << std::endl;
      return 1;
    }
  }

  // Each channel gets its own subchannel pool, hence its own TCP connection;
  // with the global pool, channels with equal arguments share one.
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<Demo::Stub>> stubs;
  const auto connect_deadline =
      absl::ToChronoTime(absl::Now() + kConnectTimeout);
  for (int i = 0; i < options.connections; ++i) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt("bulwark.bench.channel", i);
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    channels.push_back(grpc::CreateCustomChannel(
        options.target, grpc::InsecureChannelCredentials(), args));
  }
  // Connected before the clock starts, so set-up is not in the latencies.
  for (auto& channel : channels) {
    if (!channel->WaitForConnected(connect_deadline)) {
      std::cerr << "bulwark-bench: cannot connect to " << options.target
                << " within " << absl::FormatDuration(kConnectTimeout)
                << std::endl;
      return 1;
    }
    stubs.push_back(Demo::NewStub(channel));
  }

  InstallInterruptHandler();
  if (options.start_at_unix > 0) {
    const absl::Time start_at = absl::FromUnixNanos(
        static_cast<int64_t>(std::llround(options.start_at_unix * 1e9)));
    while (absl::Now() < start_at &&
           !g_interrupted.load(std::memory_order_relaxed)) {
      absl::SleepFor(std::min(start_at - absl::Now(), absl::Milliseconds(100)));
    }
  }
  Run run(options);
  std::vector<std::unique_ptr<Caller>> callers;
  std::unique_ptr<OpenLoop> open_loop;
  if (options.open_loop) {
    std::vector<Demo::Stub*> stub_ptrs;
    for (auto& stub : stubs) stub_ptrs.push_back(stub.get());
    open_loop = std::make_unique<OpenLoop>(run, std::move(stub_ptrs));
  } else {
    for (int i = 0; i < options.concurrency; ++i) {
      callers.push_back(std::make_unique<Caller>(
          run, *stubs[i % options.connections], static_cast<uint64_t>(i)));
    }
  }

  run.Begin(Clock::now());
  const double start_unix_s =
      absl::ToUnixMicros(absl::Now() + options.warmup) / 1e6;
  const bool has_warmup = options.warmup > absl::ZeroDuration();
  std::pair<double, double> cpu_start;
  if (!has_warmup) cpu_start = ProcessCpuSeconds();
  if (open_loop != nullptr) open_loop->Start();
  for (auto& caller : callers) caller->Next();

  // Wake every second for the progress line, and at the end of the warm-up
  // to start the CPU clock.
  bool measuring = !has_warmup;
  Clock::time_point next_tick = run.begin() + std::chrono::seconds(1);
  uint64_t last_calls = 0;
  uint64_t last_ok = 0;
  Clock::time_point last_tick = run.begin();
  while (true) {
    Clock::time_point wake = next_tick;
    if (!measuring) wake = std::min(wake, run.measure_start());
    const absl::Duration wait =
        absl::FromChrono(std::max(wake - Clock::now(), Clock::duration(0)));
    // At most 100 ms, so that a Ctrl-C stops new calls promptly.
    if (run.WaitAllRetired(std::min(wait, absl::Milliseconds(100)))) break;
    if (g_interrupted.load(std::memory_order_relaxed)) run.RequestStop();
    const Clock::time_point now = Clock::now();
    if (!measuring && now >= run.measure_start()) {
      cpu_start = ProcessCpuSeconds();
      measuring = true;
    }
    if (now < next_tick) continue;
    next_tick += std::chrono::seconds(1);
    if (!options.progress) continue;
    uint64_t calls = 0, errors = 0, warmup_calls = 0;
    ShardRegistry::Get().ForEach([&](const Shard& s) {
      calls += s.calls.load(std::memory_order_relaxed);
      errors += s.errors.load(std::memory_order_relaxed);
      warmup_calls += s.warmup_calls.load(std::memory_order_relaxed);
    });
    const double qps = (calls - last_calls) / SecondsBetween(last_tick, now);
    if (open_loop != nullptr) {
      const uint64_t ok = calls - errors;
      std::cerr << absl::StrFormat(
                       "[%6.1fs]%s offered %d  ended %d  OK/s %.0f  errors %d  "
                       "outstanding %d  not sent %d",
                       SecondsBetween(run.begin(), now),
                       now < run.measure_start()
                           ? absl::StrCat(" warm-up (", warmup_calls, " calls)")
                           : "",
                       open_loop->offered(), calls,
                       (ok - last_ok) / SecondsBetween(last_tick, now), errors,
                       open_loop->outstanding(), open_loop->not_sent())
                << std::endl;
      last_ok = ok;
    } else {
      std::cerr << absl::StrFormat(
                       "[%6.1fs]%s calls %d  QPS %.0f  errors %d  in flight %d",
                       SecondsBetween(run.begin(), now),
                       now < run.measure_start()
                           ? absl::StrCat(" warm-up (", warmup_calls, " calls)")
                           : "",
                       calls, qps, errors, run.active())
                << std::endl;
    }
    last_calls = calls;
    last_tick = now;
  }
  const std::pair<double, double> cpu_end = ProcessCpuSeconds();
  if (open_loop != nullptr) open_loop->Join();

  Report report;
  report.options = &options;
  report.interrupted = g_interrupted.load(std::memory_order_relaxed);
  // Open loop: the time calls were offered (its calls' tails are not part of
  // it); closed loop: until the last caller retired.
  report.seconds = std::max(
      0.0, SecondsBetween(run.measure_start(), open_loop != nullptr
                                                   ? open_loop->pacing_end()
                                                   : run.end()));
  report.open_loop = open_loop.get();
  report.start_unix_s = start_unix_s;
  if (measuring) {
    report.cpu_user_seconds = cpu_end.first - cpu_start.first;
    report.cpu_seconds = cpu_end.second - cpu_start.second;
  }
  report.totals = Merge();
  std::cout << TextReport(report) << std::flush;
  if (timeline.is_open()) {
    open_loop->stats().WriteTimeline(
        timeline,
        static_cast<size_t>(std::ceil(
            report.seconds / absl::ToDoubleSeconds(kTimelineInterval))));
    timeline.close();
    if (!timeline) {
      std::cerr << "bulwark-bench: cannot write " << options.timeline_path
                << std::endl;
      return 1;
    }
  }
  if (json.is_open()) {
    json << JsonReport(report);
    json.close();
    if (!json) {
      std::cerr << "bulwark-bench: cannot write " << options.json_path
                << std::endl;
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace bulwark::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "closed-loop (or, with --rate / --rate_schedule, open-loop) gRPC load "
      "generator for bulwark.demo.v1.Demo.\n"
      "Usage: bulwark-bench --target host:port [--rpc echo|server_stream|"
      "client_stream|bidi] [--concurrency N] [--connections N] "
      "[--duration 5s | --calls N] ...\n"
      "       bulwark-bench --target host:port --rate R | --rate_schedule "
      "S:R,... [--duration D] [--timeline FILE] [--priority_share V=SHARE] "
      "...");
  // --help lists the flags of files named like the binary, which this one is
  // not (bulwark-bench vs bench.cc).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view path) {
    return absl::StrContains(path, "tools/bench");
  };
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);
  // Debian's Abseil checks every absl::Mutex acquisition for deadlock cycles
  // by default, a measurable cost in a load generator.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return bulwark::bench::Main();
}
