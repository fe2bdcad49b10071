// UpstreamConnection: one multiplexed HTTP/2 client connection (nghttp2 client
// session) from a worker to one upstream endpoint. Calls forwarded to the
// endpoint become streams on it. The session is created before the TCP connect
// finishes, so requests submitted meanwhile leave with the connection preface
// in the first write. nghttp2 holds back streams beyond the upstream's
// SETTINGS_MAX_CONCURRENT_STREAMS until others finish. After a GOAWAY from the
// upstream the connection takes no new streams (the worker opens another) and
// closes once its streams are done.
//
// Thread-safety: worker thread only.
#ifndef BULWARK_SIDECAR_NET_UPSTREAM_SESSION_H_
#define BULWARK_SIDECAR_NET_UPSTREAM_SESSION_H_

#include <string>
#include <string_view>

#include "absl/container/flat_hash_set.h"
#include "absl/time/time.h"
#include "sidecar/net/h2_connection.h"
#include "sidecar/net/stream_handler.h"

namespace bulwark::net {

// What an upstream stream reports to, and reads its request body from: the
// downstream stream it is paired with, or a detached UpstreamCall (singleflight
// flights, health probes).
class UpstreamPeer {
 public:
  virtual ~UpstreamPeer() = default;
  // The request's data provider (NGHTTP2_DATA_FLAG_NO_COPY): how many bytes
  // (<= length) the next DATA frame carries, EOF in `flags`, or
  // NGHTTP2_ERR_DEFERRED; CopyRequestBody then appends exactly those bytes to
  // the frame in `out`, or returns false (appending nothing) if it no longer
  // has them.
  virtual ssize_t ReadRequestBody(size_t length, uint32_t* flags) = 0;
  virtual bool CopyRequestBody(size_t length, OutputBuffer& out) = 0;
  virtual void AddResponseHeader(std::string_view name,
                                 std::string_view value) = 0;
  virtual void OnResponseHeadersDone(bool end_stream) = 0;
  virtual void OnResponseData(const uint8_t* data, size_t len) = 0;
  virtual void OnResponseEnd() = 0;
  // The upstream stream closed (after the response, or reset with
  // `error_code`).
  virtual void OnUpstreamClosed(uint32_t error_code) = 0;
  // The connection failed or broke before the stream closed.
  virtual void OnUpstreamFailed(std::string_view why) = 0;
  // The response broke a limit of the sidecar (a header or trailer list over
  // max_header_list_bytes): the connection already forgot this peer and
  // resets the upstream stream; the call ends with INTERNAL and `why`.
  virtual void OnResponseOverLimit(std::string_view why) = 0;
};

class UpstreamConnection final : public H2Connection {
 public:
  // Starts a non-blocking connect; nullptr with `error` set if it fails at
  // once.
  // Until the endpoint's SETTINGS arrive, it is taken to allow
  // `assumed_max_streams` concurrent streams (what an earlier connection to it
  // learned, else 100 as RFC 9113 recommends); nghttp2 holds back the rest.
  static UpstreamConnection* Connect(Worker& worker,
                                     const UpstreamAddress& address,
                                     UpstreamUse use, uint64_t id,
                                     uint32_t assumed_max_streams,
                                     std::string* error);
  static constexpr uint32_t kDefaultAssumedMaxStreams = 100;
  ~UpstreamConnection() override;

  const std::string& key() const { return key_; }
  UpstreamUse use() const { return use_; }
  // Unique on its worker (a timer's way to find it again).
  uint64_t id() const { return id_; }
  bool accepting_streams() const { return !goaway_received_ && !retired_; }
  // Streams submitted and not yet closed (those nghttp2 holds back included).
  size_t open_streams() const { return open_streams_; }
  // The endpoint's SETTINGS_MAX_CONCURRENT_STREAMS (the assumed value until
  // its SETTINGS arrive), and whether they have.
  uint32_t max_streams() const;
  bool settings_received() const { return settings_received_; }
  // Whether another stream would go out at once: fewer open than
  // max_streams().
  bool HasRoom() const { return open_streams_ < max_streams(); }
  // When its last stream ended (meaningful while open_streams() is 0).
  absl::Time idle_since() const { return idle_since_; }
  // The endpoint is gone: sends GOAWAY, takes no new streams, and closes once
  // the streams in progress are done.
  void Retire();

  // Opens a stream for `peer`'s request; returns the stream id or a negative
  // nghttp2 error.
  int32_t Submit(UpstreamPeer* peer, const nghttp2_nv* headers, size_t count);
  // Resets an upstream stream (client cancelled, deadline) and forgets its
  // downstream peer.
  void Reset(int32_t stream_id, uint32_t error_code);
  void Forget(UpstreamPeer* peer, int32_t stream_id);
  void ResumeRequest(int32_t stream_id);

 private:
  friend struct UpstreamCallbacks;
  UpstreamConnection(Worker& worker, int fd, const UpstreamAddress& address,
                     UpstreamUse use, uint64_t id);
  void OnWritableFirstTime() override;
  void OnClosed(std::string_view why) override;
  void ArmConnect();

  std::string key_;
  UpstreamUse use_;
  uint64_t id_;
  size_t open_streams_ = 0;
  uint32_t assumed_max_streams_ = kDefaultAssumedMaxStreams;
  bool settings_received_ = false;
  absl::Time idle_since_;
  // The worker's idle timer for a spare connection is pending.
  bool spare_timer_armed_ = false;
  // Opened beside another connection to the same endpoint (a spare, retired
  // once idle for long): an endpoint's first connection never looks its pool
  // up when it goes idle.
  bool spare_ = false;
  friend class Worker;
  bool goaway_received_ = false;
  bool retired_ = false;
  bool connected_ = false;
  // Bytes of the header block being received (name + value + 32 per field).
  size_t header_block_bytes_ = 0;
  absl::flat_hash_set<UpstreamPeer*> streams_;
};

}  // namespace bulwark::net

#endif  // BULWARK_SIDECAR_NET_UPSTREAM_SESSION_H_
