#include "sidecar/store/global_bucket_script.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace bulwark::store {
namespace {

// Lua 5.1 numbers are doubles: Redis TIME in microseconds (~1.7e15) is exact
// below 2^53. Numbers are written back with %.17g / %d so that no digit is
// lost to Lua's default 14-digit tostring. redis.replicate_commands is a no-op
// on Redis >= 7 (effects replication is the default) and needed on 3.2..6.x
// before TIME may be followed by writes.
constexpr char kRefillLua[] = R"lua(
if redis.replicate_commands then redis.replicate_commands() end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local requested = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
if not (rate and burst and requested and ttl) or rate ~= rate or
    burst ~= burst or requested ~= requested or rate < 0 or burst < 0 or
    requested < 0 or ttl < 1 then
  return redis.error_reply('ERR bulwark refill: bad arguments')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil or tokens ~= tokens then
  tokens = burst
elseif now > ts then
  tokens = tokens + (now - ts) * rate / 1000000
end
if tokens > burst then tokens = burst end
if tokens < 0 then tokens = 0 end
local granted = math.min(math.floor(requested), math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'ts', string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], math.floor(ttl))
return {granted, math.floor(tokens)}
)lua";

constexpr char kHeartbeatLua[] = R"lua(
if redis.replicate_commands then redis.replicate_commands() end
local window = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
if not (window and ttl) or window < 1 or ttl < 1 then
  return redis.error_reply('ERR bulwark heartbeat: bad arguments')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], string.format('%d', now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf',
           string.format('%d', now - window))
redis.call('PEXPIRE', KEYS[1], math.floor(ttl))
return redis.call('ZCARD', KEYS[1])
)lua";

constexpr size_t kMaxPlainPart = 64;

bool PlainByte(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-' ||
         c == '@' || c == '/' || c == '=' || c == '+';
}

std::string HexSha256(std::string_view value) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EVP_Digest(value.data(), value.size(), digest, &size, EVP_sha256(), nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * size);
  for (unsigned int i = 0; i < size; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 0xf]);
  }
  return out;
}

// How long until a bucket drained to 0 is full again, plus a second: past
// that an expired bucket (recreated full) is what the old one would be.
int64_t BucketExpiryMs(double rate_per_second, int64_t burst) {
  constexpr int64_t kDayMs = 86'400'000;
  if (!(rate_per_second > 0)) return kDayMs;
  const double ms = std::ceil(static_cast<double>(std::max<int64_t>(burst, 0)) /
                              rate_per_second * 1000.0) +
                    1000.0;
  return ms >= kDayMs ? kDayMs : static_cast<int64_t>(ms);
}

}  // namespace

const RedisScript& GlobalBucketRefillScript() {
  static const RedisScript* const script = new RedisScript(kRefillLua);
  return *script;
}

const RedisScript& ReplicaHeartbeatScript() {
  static const RedisScript* const script = new RedisScript(kHeartbeatLua);
  return *script;
}

std::string KeyNamePart(std::string_view value) {
  if (value.size() <= kMaxPlainPart &&
      std::all_of(value.begin(), value.end(),
                  [](char c) { return PlainByte(c); })) {
    return std::string(value);
  }
  return absl::StrCat("#", HexSha256(value));
}

std::string GlobalBucketKey(std::string_view domain, std::string_view route,
                            std::string_view key) {
  return absl::StrCat("bulwark:{", KeyNamePart(domain), ":", KeyNamePart(route),
                      ":", KeyNamePart(key), "}:bucket");
}

std::string ReplicaSetKey(std::string_view domain, std::string_view route) {
  return absl::StrCat("bulwark:{", KeyNamePart(domain), ":", KeyNamePart(route),
                      "}:replicas");
}

std::vector<std::string> RefillArgs(double rate_per_second, int64_t burst,
                                    int64_t requested) {
  return {absl::StrFormat("%.17g", std::max(rate_per_second, 0.0)),
          absl::StrCat(std::max<int64_t>(burst, 0)),
          absl::StrCat(std::max<int64_t>(requested, 0)),
          absl::StrCat(BucketExpiryMs(rate_per_second, burst))};
}

std::vector<std::string> HeartbeatArgs(std::string_view replica_id,
                                       absl::Duration window) {
  const int64_t window_ms =
      std::max<int64_t>(1, absl::ToInt64Milliseconds(window));
  return {std::string(replica_id), absl::StrCat(window_ms),
          absl::StrCat(2 * window_ms)};
}

absl::StatusOr<RefillReply> ParseRefillReply(const RedisReply& reply,
                                             int64_t requested) {
  if (reply.type != RedisReply::Type::kArray || reply.elements.size() != 2 ||
      reply.elements[0].type != RedisReply::Type::kInteger ||
      reply.elements[1].type != RedisReply::Type::kInteger) {
    return absl::InvalidArgumentError(
        "refill script: expected an array of two integers");
  }
  const RefillReply out{.granted = reply.elements[0].integer,
                        .tokens_left = reply.elements[1].integer};
  if (out.granted < 0 || out.granted > requested) {
    return absl::InvalidArgumentError(absl::StrCat("refill script: granted ",
                                                   out.granted, " of ",
                                                   requested, " requested"));
  }
  return out;
}

absl::StatusOr<int64_t> ParseHeartbeatReply(const RedisReply& reply) {
  if (reply.type != RedisReply::Type::kInteger || reply.integer < 0) {
    return absl::InvalidArgumentError(
        "heartbeat script: expected a non-negative integer");
  }
  return reply.integer;
}

}  // namespace bulwark::store
