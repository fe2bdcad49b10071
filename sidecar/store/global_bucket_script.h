// The Redis side of a global rate limit (SPEC section 8): the Lua scripts of
// the shared bucket and of the replica heartbeat, the names of their keys,
// and the parsing of their replies. It decides how the shared bucket refills
// and what it grants (atomically, inside Redis, on Redis's own clock: TIME is
// read inside the script, so the sidecars' clocks never matter) and which
// replicas count as live.
//
// Keys (one Redis key per script call, so each call is atomic and Redis
// Cluster routes it to one slot; the hash tag keeps one limit's keys in one
// slot):
//   bulwark:{<domain>:<route>:<key>}:bucket   a hash {tokens, ts}: one limit
//                                             key's shared bucket; expires
//                                             once it would have refilled
//                                             (burst / rate, plus a second)
//   bulwark:{<domain>:<route>}:replicas       a sorted set: replica id ->
//                                             last heartbeat (ms); expires
//                                             after the liveness window
// Each part is used as is when it is at most 64 bytes of [A-Za-z0-9._@/=+-],
// else replaced by '#' and the hex SHA-256 of its bytes ('#' is never in a
// part used as is, so the two forms never meet): a name is bounded (at most
// 3 x 65 bytes plus the fixed text), holds no ':', '{' or '}' of its own, and
// two values share a bucket only when they are equal.
//
// The refill and the heartbeat are two scripts, not one: they touch keys of
// different limits' granularity (a key vs. the route), which Redis Cluster
// cannot serve in one script call. The heartbeat's reply is the live replica
// count.
//
// Thread-safety: constants and pure functions. Cost: a key name is one
// SHA-256 at most per part.
#ifndef BULWARK_SIDECAR_STORE_GLOBAL_BUCKET_SCRIPT_H_
#define BULWARK_SIDECAR_STORE_GLOBAL_BUCKET_SCRIPT_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "sidecar/store/redis_client.h"

namespace bulwark::store {

// KEYS[1] the bucket; ARGV rate per second, burst, tokens requested, expiry
// in ms. Returns {granted, tokens left (floor)}: granted is at most the
// request and the whole tokens the bucket holds (0 when it is empty). A new
// (or expired) bucket starts full.
const RedisScript& GlobalBucketRefillScript();

// KEYS[1] the replica set; ARGV replica id, liveness window in ms, expiry in
// ms. Records the replica's heartbeat at Redis's now, drops members silent
// for the window or longer, returns how many remain (this one included).
const RedisScript& ReplicaHeartbeatScript();

// One part of a key name, as described above.
std::string KeyNamePart(std::string_view value);

// `key` as the caller holds it (any bytes; "" for calls without a key).
std::string GlobalBucketKey(std::string_view domain, std::string_view route,
                            std::string_view key);
std::string ReplicaSetKey(std::string_view domain, std::string_view route);

// The refill script's ARGV.
std::vector<std::string> RefillArgs(double rate_per_second, int64_t burst,
                                    int64_t requested);
// The heartbeat script's ARGV.
std::vector<std::string> HeartbeatArgs(std::string_view replica_id,
                                       absl::Duration window);

struct RefillReply {
  int64_t granted = 0;
  int64_t tokens_left = 0;
};
// InvalidArgument (naming what was wrong) for any reply of another shape.
absl::StatusOr<RefillReply> ParseRefillReply(const RedisReply& reply,
                                             int64_t requested);
absl::StatusOr<int64_t> ParseHeartbeatReply(const RedisReply& reply);

}  // namespace bulwark::store

#endif  // BULWARK_SIDECAR_STORE_GLOBAL_BUCKET_SCRIPT_H_
