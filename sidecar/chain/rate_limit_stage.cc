#include "sidecar/chain/rate_limit_stage.h"

#include <unistd.h>

#include <cstdint>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "sidecar/json_string.h"

namespace bulwark::chain {
namespace {

namespace cfg = ::bulwark::config::v1;

// This process's member of every global limit's heartbeat set: one id for
// the life of the process, so a limiter rebuilt by a reload takes over its
// predecessor's entry instead of counting as a second replica for the
// liveness window.
const std::string& ProcessReplicaId() {
  static const std::string* const id = [] {
    char host[256] = {};
    if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
    absl::BitGen rng;
    return new std::string(
        absl::StrCat(host[0] != '\0' ? host : "bulwark", "-", getpid(), "-",
                     absl::Hex(absl::Uniform<uint64_t>(rng))));
  }();
  return *id;
}

StoreErrorMode ToStoreErrorMode(cfg::GlobalRateLimit::OnRedisError mode) {
  switch (mode) {
    case cfg::GlobalRateLimit::ALLOW:
      return StoreErrorMode::kAllow;
    case cfg::GlobalRateLimit::DENY:
      return StoreErrorMode::kDeny;
    default:
      return StoreErrorMode::kLocal;
  }
}

void AppendHeadersKey(const cfg::RateLimit& config, const net::Call& call,
                      std::string& out) {
  bool any = false;
  for (const std::string& name : config.key_headers()) {
    const std::string_view value = call.header(name);
    any = any || !value.empty();
    absl::StrAppend(&out, value.size(), ":",
                    absl::string_view(value.data(), value.size()));
  }
  if (!any) out.clear();
}

}  // namespace

std::string RateLimitKey(const cfg::RateLimit& config, const net::Call& call) {
  if (!config.key_header().empty()) {
    return std::string(call.header(config.key_header()));
  }
  if (config.key_headers_size() > 0) {
    std::string out;
    AppendHeadersKey(config, call, out);
    return out;
  }
  if (config.key() == cfg::RateLimit::PEER_IDENTITY) {
    return std::string(call.peer_identity());
  }
  return "";
}

std::unique_ptr<RateLimitState> RateLimitStage::NewState(
    const cfg::RateLimit& config, std::string_view route, Clock& clock,
    std::shared_ptr<store::RedisStore> store) {
  auto state = std::make_unique<RateLimitState>();
  state->clock = &clock;
  const bool keyed = !config.key_header().empty() ||
                     config.key_headers_size() > 0 ||
                     config.key() == cfg::RateLimit::PEER_IDENTITY;
  if (config.has_global() && store != nullptr) {
    state->store = std::move(store);
    state->global = std::make_unique<store::GlobalLimiter>(
        store::GlobalLimiterOptions{
            .domain = config.global().domain(),
            .route = std::string(route),
            .rate_per_second = config.requests_per_second(),
            .burst = static_cast<int64_t>(config.burst()),
            .on_store_error =
                ToStoreErrorMode(config.global().on_redis_error()),
            .max_keys = config.max_keys(),
            .replica_id = ProcessReplicaId()},
        *state->store, clock);
  } else if (!keyed) {
    state->bucket = std::make_unique<TokenBucket>(
        TokenBucketOptions{.rate_per_second = config.requests_per_second(),
                           .burst = static_cast<int64_t>(config.burst())},
        clock);
  } else {
    state->keyed = std::make_unique<KeyedRateLimiter>(
        KeyedRateLimiterOptions{.rate_per_second = config.requests_per_second(),
                                .burst = static_cast<int64_t>(config.burst()),
                                .max_keys = config.max_keys()},
        clock);
  }
  return state;
}

RateLimitStage::RateLimitStage(const cfg::RateLimit& config, std::string route,
                               RateLimitState& state, RouteMetrics& metrics)
    : route_(std::move(route)),
      config_(config),
      key_kind_(!config.key_header().empty()    ? KeyKind::kHeader
                : config.key_headers_size() > 0 ? KeyKind::kHeaders
                : config.key() == cfg::RateLimit::PEER_IDENTITY
                    ? KeyKind::kPeerIdentity
                    : KeyKind::kNone),
      shadow_(config.shadow()),
      state_(state),
      metrics_(metrics) {}

Verdict RateLimitStage::Decide(const net::Call& call, absl::Time now) const {
  std::string tuple;  // key_headers only
  std::string_view key;
  switch (key_kind_) {
    case KeyKind::kNone:
      break;
    case KeyKind::kHeader:
      key = call.header(config_.key_header());
      break;
    case KeyKind::kHeaders:
      AppendHeadersKey(config_, call, tuple);
      key = tuple;
      break;
    case KeyKind::kPeerIdentity:
      key = call.peer_identity();
      break;
  }
  TakeResult taken;
  if (state_.global != nullptr) {
    taken = state_.global->TryTake(key, now);
  } else if (state_.bucket != nullptr) {
    taken = state_.bucket->TryTake(now);
  } else if (!key.empty()) {
    taken = state_.keyed->TryTake(key, now);
  } else {
    taken = state_.keyed->TryTakeShared(now);
  }
  if (taken.kind == TakeResult::kAdmitted) return Verdict::Continue();
  if (shadow_) {
    metrics_.ShadowRejections(RejectReason::kRateLimited).Increment();
    return Verdict::Continue();
  }
  return Verdict::Answer(
      {.code = absl::StatusCode::kResourceExhausted,
       .reason = RejectReason::kRateLimited,
       .message = absl::StrCat("rate limit of route ", route_, " exceeded"),
       .pushback = taken.retry_after});
}

double RateLimitStage::TokensApprox() const {
  if (state_.global != nullptr) {
    return static_cast<double>(
        state_.global->StatsApprox(state_.clock->Now()).keyless.tokens);
  }
  return state_.bucket != nullptr ? state_.bucket->TokensApprox()
                                  : state_.keyed->SharedTokensApprox();
}

int RateLimitStage::GlobalReplicasApprox() const {
  return state_.global != nullptr ? state_.global->ReplicasApprox() : 0;
}

std::string RateLimitStage::DescribeJson() const {
  std::string out = absl::StrCat("{\"tokens\": ", TokensApprox(),
                                 ", \"shadow\": ", shadow_ ? "true" : "false");
  if (state_.keyed != nullptr) {
    absl::StrAppend(&out, ", \"keyed_buckets\": ", state_.keyed->KeyCount());
  }
  if (state_.global != nullptr) {
    const store::GlobalLimiter::Stats s =
        state_.global->StatsApprox(state_.clock->Now());
    const StoreErrorMode fallback =
        ToStoreErrorMode(config_.global().on_redis_error());
    // shared: spending grants of the shared bucket; LOCAL / ALLOW / DENY: the
    // latest round trip failed, so keys that ask Redis now fall back;
    // starting: Redis has not answered yet.
    const std::string_view mode = s.store_failing ? StoreErrorModeName(fallback)
                                  : s.heartbeats == 0 && s.tokens_granted == 0
                                      ? "starting"
                                      : "shared";
    absl::StrAppend(
        &out,
        ", \"global\": {\"redis\": ", JsonString(config_.global().redis()),
        ", \"domain\": ", JsonString(config_.global().domain()),
        ", \"mode\": ", JsonString(absl::string_view(mode.data(), mode.size())),
        ", \"replicas\": ", s.replicas,
        ", \"local_allowance\": ", s.keyless.tokens, ", \"keys\": ", s.keys,
        ", \"refills\": ", s.refills,
        ", \"tokens_granted\": ", s.tokens_granted,
        ", \"redis_errors\": ", s.store_errors,
        ", \"last_error\": ", JsonString(s.last_error), "}");
  }
  out += "}";
  return out;
}

}  // namespace bulwark::chain
