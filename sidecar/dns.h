// DNS for cluster endpoints. An endpoint given as a DNS name stands for every
// address the name resolves to; the addresses are looked up when the
// configuration loads and again every `dns_refresh_interval`, off the workers.
//
//   Resolver      one lookup: getaddrinfo (SystemResolver) or a fake in tests.
//   DnsCache      the last answer per name, shared by snapshot building (which
//                 resolves on a miss) and the refresher; IP literals bypass it.
//   DnsRefresher  which names are due, when; RefreshDue() resolves them and
//                 reports whether any answer changed. Its thread (Start/Stop)
//                 only calls RefreshDue on time; the decisions are pure and
//                 clock-injected so tests drive them without sleeping.
//
// A failed lookup never removes addresses: the previous answer stays in use
// (and is logged); only a successful answer with a different address set
// changes the endpoints.
//
// Thread-safety: DnsCache and DnsRefresher are safe to call from any thread
// (one mutex each; lookups run without holding them).
#ifndef BULWARK_SIDECAR_DNS_H_
#define BULWARK_SIDECAR_DNS_H_

#include <sys/socket.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "policies/clock.h"
#include "sidecar/host_port.h"

namespace bulwark {

// One socket address of an endpoint.
struct ResolvedAddress {
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  std::string text;  // "10.0.0.4:50051", "[::1]:50051": its identity

  friend bool operator==(const ResolvedAddress& a, const ResolvedAddress& b) {
    return a.text == b.text;
  }
};

// Whether `host` is an IPv4 or IPv6 literal (nothing to look up).
bool IsIpLiteral(const std::string& host);

// The address of an IP literal endpoint; InvalidArgument for a name.
absl::StatusOr<ResolvedAddress> LiteralAddress(const HostPort& address);

class Resolver {
 public:
  virtual ~Resolver() = default;
  // Every address of `address.host` (TCP), in any order. Blocking. Errors are
  // Unavailable and name the host.
  virtual absl::StatusOr<std::vector<ResolvedAddress>> Resolve(
      const HostPort& address) = 0;
};

// getaddrinfo(3): /etc/hosts, then DNS, as the system is configured. One
// address family per name: its IPv4 addresses if it has any, else its IPv6
// ones (localhost answers both, and a server on 0.0.0.0 alone would fail every
// call sent to ::1).
class SystemResolver final : public Resolver {
 public:
  absl::StatusOr<std::vector<ResolvedAddress>> Resolve(
      const HostPort& address) override;
};

class DnsCache {
 public:
  explicit DnsCache(Resolver& resolver) : resolver_(resolver) {}

  // The addresses of `address` (sorted by text, no duplicates): the literal
  // itself, the cached answer, or (on a miss) a lookup now whose answer is
  // cached. An empty answer is an error.
  absl::StatusOr<std::vector<ResolvedAddress>> Get(const HostPort& address)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Looks `address` up again. Returns true if the answer differs from the
  // cached one (and caches it), false if it is the same; on a failed lookup the
  // cached answer stays and the error is returned.
  absl::StatusOr<bool> Refresh(const HostPort& address)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Forgets every answer: the next Get of each name looks it up again.
  void Clear() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  Resolver& resolver_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::vector<ResolvedAddress>> answers_
      ABSL_GUARDED_BY(mu_);
};

class DnsRefresher {
 public:
  struct Name {
    HostPort address;
    absl::Duration interval;  // > 0
  };

  // `on_change` runs (on the refresher's thread) after a RefreshDue in which
  // some answer changed; it must be quick (the sidecar sets a flag).
  DnsRefresher(DnsCache& cache, Clock& clock,
               absl::AnyInvocable<void()> on_change);
  ~DnsRefresher();  // stops the thread

  // The names to keep fresh (a name listed twice keeps its shortest interval).
  // Names kept from the previous set keep their schedule; new ones are first
  // due one interval from now (they were just resolved by the snapshot build).
  void SetNames(const std::vector<Name>& names) ABSL_LOCKS_EXCLUDED(mu_);

  // Resolves every name due at the clock's now (lookups run without the lock)
  // and schedules each one interval later. Returns whether any answer changed
  // (and then has called on_change).
  bool RefreshDue() ABSL_LOCKS_EXCLUDED(mu_);

  // When the next name is due; InfiniteFuture with no names.
  absl::Time NextDue() const ABSL_LOCKS_EXCLUDED(mu_);

  // A thread calling RefreshDue whenever a name is due (real time).
  // RequestStop asks it to end without waiting; Stop also joins it (a lookup
  // in progress is waited for). Both are idempotent.
  void Start();
  void RequestStop() ABSL_LOCKS_EXCLUDED(mu_);
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Entry {
    absl::Duration interval;
    absl::Time due;
    bool failing = false;  // the last lookup failed (log changes only)
  };
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);
  absl::Time NextDueLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  DnsCache& cache_;
  Clock& clock_;
  absl::AnyInvocable<void()> on_change_;
  mutable absl::Mutex mu_;
  absl::CondVar wake_;
  absl::flat_hash_map<std::string, std::pair<HostPort, Entry>> names_
      ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_DNS_H_
