#include "sidecar/dns.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "sidecar/log.h"

namespace bulwark {
namespace {

// "10.0.0.4:50051" or "[::1]:50051" for a socket address.
std::string AddressText(const sockaddr* sa) {
  char host[INET6_ADDRSTRLEN] = {};
  if (sa->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    return absl::StrCat(host, ":", ntohs(in->sin_port));
  }
  const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
  inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
  return absl::StrCat("[", host, "]:", ntohs(in6->sin6_port));
}

// Sorted by text, without duplicates: DNS servers rotate the order of their
// records from one answer to the next, which must not look like a change.
void Normalize(std::vector<ResolvedAddress>& addresses) {
  std::sort(addresses.begin(), addresses.end(),
            [](const ResolvedAddress& a, const ResolvedAddress& b) {
              return a.text < b.text;
            });
  addresses.erase(std::unique(addresses.begin(), addresses.end()),
                  addresses.end());
}

absl::Status NoAddress(const HostPort& address) {
  return absl::UnavailableError(absl::StrCat(
      "cannot resolve ", address.ToString(), ": no IPv4 or IPv6 address"));
}

// getaddrinfo with `flags`; every distinct TCP address, sorted by text.
absl::StatusOr<std::vector<ResolvedAddress>> Lookup(const HostPort& address,
                                                    int flags) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | flags;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(address.port);
  if (int rc = getaddrinfo(address.host.c_str(), port.c_str(), &hints, &res);
      rc != 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot resolve ", address.ToString(), ": ", gai_strerror(rc)));
  }
  std::vector<ResolvedAddress> out;
  for (const addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
        ai->ai_addrlen > sizeof(sockaddr_storage)) {
      continue;
    }
    ResolvedAddress r;
    std::memcpy(&r.addr, ai->ai_addr, ai->ai_addrlen);
    r.addr_len = ai->ai_addrlen;
    r.text = AddressText(ai->ai_addr);
    out.push_back(std::move(r));
  }
  freeaddrinfo(res);
  // One family, as most resolvers of proxies do by default (IPv4 preferred): a
  // name such as localhost answers ::1 and 127.0.0.1, and a server listening on
  // 0.0.0.0 only would fail every call sent to ::1.
  const bool any_v4 = std::any_of(
      out.begin(), out.end(),
      [](const ResolvedAddress& a) { return a.addr.ss_family == AF_INET; });
  if (any_v4) {
    out.erase(std::remove_if(out.begin(), out.end(),
                             [](const ResolvedAddress& a) {
                               return a.addr.ss_family != AF_INET;
                             }),
              out.end());
  }
  // Sorting and duplicates are DnsCache's business (it normalizes every
  // resolver's answer).
  if (out.empty()) return NoAddress(address);
  return out;
}

std::string JoinTexts(const std::vector<ResolvedAddress>& addresses) {
  return absl::StrJoin(
      addresses, ", ",
      [](std::string* out, const ResolvedAddress& a) { out->append(a.text); });
}

}  // namespace

bool IsIpLiteral(const std::string& host) {
  in6_addr buf;
  return inet_pton(AF_INET, host.c_str(), &buf) == 1 ||
         inet_pton(AF_INET6, host.c_str(), &buf) == 1;
}

absl::StatusOr<ResolvedAddress> LiteralAddress(const HostPort& address) {
  if (!IsIpLiteral(address.host)) {
    return absl::InvalidArgumentError(
        absl::StrCat(address.host, " is not an IP address"));
  }
  auto found = Lookup(address, AI_NUMERICHOST);
  if (!found.ok()) return found.status();
  return found->front();
}

absl::StatusOr<std::vector<ResolvedAddress>> SystemResolver::Resolve(
    const HostPort& address) {
  return Lookup(address, 0);
}

absl::StatusOr<std::vector<ResolvedAddress>> DnsCache::Get(
    const HostPort& address) {
  if (IsIpLiteral(address.host)) {
    auto literal = LiteralAddress(address);
    if (!literal.ok()) return literal.status();
    return std::vector<ResolvedAddress>{*std::move(literal)};
  }
  const std::string key = address.ToString();
  {
    absl::MutexLock lock(&mu_);
    if (auto it = answers_.find(key); it != answers_.end()) return it->second;
  }
  auto found = resolver_.Resolve(address);  // blocking: not under the lock
  if (!found.ok()) return found.status();
  if (found->empty()) return NoAddress(address);
  Normalize(*found);
  absl::MutexLock lock(&mu_);
  answers_[key] = *found;
  return found;
}

absl::StatusOr<bool> DnsCache::Refresh(const HostPort& address) {
  auto found = resolver_.Resolve(address);
  if (!found.ok()) return found.status();
  if (found->empty()) return NoAddress(address);
  Normalize(*found);
  absl::MutexLock lock(&mu_);
  std::vector<ResolvedAddress>& cached = answers_[address.ToString()];
  if (cached == *found) return false;
  cached = *std::move(found);
  return true;
}

void DnsCache::Clear() {
  absl::MutexLock lock(&mu_);
  answers_.clear();
}

DnsRefresher::DnsRefresher(DnsCache& cache, Clock& clock,
                           absl::AnyInvocable<void()> on_change)
    : cache_(cache), clock_(clock), on_change_(std::move(on_change)) {}

DnsRefresher::~DnsRefresher() { Stop(); }

void DnsRefresher::SetNames(const std::vector<Name>& names) {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_.Now();
  absl::flat_hash_map<std::string, std::pair<HostPort, Entry>> next;
  for (const Name& name : names) {
    const std::string key = name.address.ToString();
    auto [it, inserted] = next.try_emplace(key);
    if (!inserted) {
      Entry& e = it->second.second;
      if (name.interval < e.interval) {
        e.interval = name.interval;
        e.due = std::min(e.due, now + name.interval);
      }
      continue;
    }
    it->second.first = name.address;
    Entry& e = it->second.second;
    e.interval = name.interval;
    if (auto old = names_.find(key); old != names_.end()) {
      e.due = std::min(old->second.second.due, now + name.interval);
      e.failing = old->second.second.failing;
    } else {
      e.due = now + name.interval;
    }
  }
  names_ = std::move(next);
  wake_.Signal();
}

bool DnsRefresher::RefreshDue() {
  std::vector<HostPort> due;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_.Now();
    for (auto& [key, entry] : names_) {
      Entry& e = entry.second;
      if (e.due > now) continue;
      due.push_back(entry.first);
      e.due = now + e.interval;
    }
  }
  bool changed = false;
  for (const HostPort& name : due) {
    absl::StatusOr<bool> result = cache_.Refresh(name);  // blocking lookup
    bool was_failing = false;
    {
      absl::MutexLock lock(&mu_);
      auto it = names_.find(name.ToString());
      if (it == names_.end()) continue;  // no longer configured
      was_failing = it->second.second.failing;
      it->second.second.failing = !result.ok();
    }
    if (!result.ok()) {
      if (!was_failing) {
        Log(LogLevel::kWarning, "dns: %s (its endpoints stay as they were)",
            std::string(result.status().message()));
      }
      continue;
    }
    if (was_failing) {
      Log(LogLevel::kInfo, "dns: %s resolves again", name.ToString());
    }
    if (*result) {
      changed = true;
      auto now = cache_.Get(name);
      Log(LogLevel::kInfo, "dns: %s now resolves to %s", name.ToString(),
          now.ok() ? JoinTexts(*now) : std::string("?"));
    }
  }
  if (changed) on_change_();
  return changed;
}

absl::Time DnsRefresher::NextDue() const {
  absl::MutexLock lock(&mu_);
  return NextDueLocked();
}

absl::Time DnsRefresher::NextDueLocked() const {
  absl::Time next = absl::InfiniteFuture();
  for (const auto& [key, entry] : names_)
    next = std::min(next, entry.second.due);
  return next;
}

void DnsRefresher::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void DnsRefresher::RequestStop() {
  absl::MutexLock lock(&mu_);
  stopping_ = true;
  wake_.Signal();
}

void DnsRefresher::Stop() {
  RequestStop();
  if (thread_.joinable()) thread_.join();
}

void DnsRefresher::Loop() {
  mu_.Lock();
  while (!stopping_) {
    const absl::Time next = NextDueLocked();
    if (clock_.Now() < next) {
      // Woken by Stop, by SetNames (the next due time may be earlier), or by
      // the deadline.
      wake_.WaitWithDeadline(&mu_, next);
      continue;
    }
    mu_.Unlock();
    RefreshDue();
    mu_.Lock();
  }
  mu_.Unlock();
}

}  // namespace bulwark
