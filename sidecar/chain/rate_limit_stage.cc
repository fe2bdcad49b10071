#include "sidecar/chain/rate_limit_stage.h"

#include "absl/strings/str_cat.h"

namespace bulwark::chain {

std::unique_ptr<RateLimitState> RateLimitStage::NewState(
    const config::v1::RateLimit& config, Clock& clock) {
  auto state = std::make_unique<RateLimitState>();
  if (config.key_header().empty()) {
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

RateLimitStage::RateLimitStage(const config::v1::RateLimit& config,
                               std::string route, RateLimitState& state,
                               RouteMetrics& metrics)
    : route_(std::move(route)),
      key_header_(config.key_header()),
      shadow_(config.shadow()),
      state_(state),
      metrics_(metrics) {}

Verdict RateLimitStage::Decide(const net::Call& call, absl::Time now) const {
  TakeResult taken;
  if (state_.bucket != nullptr) {
    taken = state_.bucket->TryTake(now);
  } else if (std::string_view key = call.header(key_header_); !key.empty()) {
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
  return state_.bucket != nullptr ? state_.bucket->TokensApprox()
                                  : state_.keyed->SharedTokensApprox();
}

std::string RateLimitStage::DescribeJson() const {
  std::string out = absl::StrCat("{\"tokens\": ", TokensApprox(),
                                 ", \"shadow\": ", shadow_ ? "true" : "false");
  if (state_.keyed != nullptr) {
    absl::StrAppend(&out, ", \"keyed_buckets\": ", state_.keyed->KeyCount());
  }
  out += "}";
  return out;
}

}  // namespace bulwark::chain
