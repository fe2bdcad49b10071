// UpstreamConnection: one multiplexed HTTP/2 client connection (nghttp2 client session) from
// a worker to one upstream endpoint. Calls forwarded to the endpoint become streams on it.
// The session is created before the TCP connect finishes, so requests submitted meanwhile
// leave with the connection preface in the first write. nghttp2 holds back streams beyond
// the upstream's SETTINGS_MAX_CONCURRENT_STREAMS until others finish. After a GOAWAY from
// the upstream the connection takes no new streams (the worker opens another) and closes
// once its streams are done.
//
// Thread-safety: worker thread only.
#ifndef BULWARK_SIDECAR_NET_UPSTREAM_SESSION_H_
#define BULWARK_SIDECAR_NET_UPSTREAM_SESSION_H_

#include <string>
#include <string_view>

#include "absl/container/flat_hash_set.h"
#include "sidecar/net/h2_connection.h"
#include "sidecar/net/stream_handler.h"

namespace bulwark::net {

class DownstreamStream;

class UpstreamConnection final : public H2Connection {
 public:
  // Starts a non-blocking connect; nullptr with `error` set if it fails at once.
  static UpstreamConnection* Connect(Worker& worker, const UpstreamAddress& address,
                                     std::string* error);
  ~UpstreamConnection() override;

  const std::string& key() const { return key_; }
  bool accepting_streams() const { return !goaway_received_; }

  // Opens a stream for `stream`'s request; returns the stream id or a negative nghttp2
  // error.
  int32_t Submit(DownstreamStream* stream, const nghttp2_nv* headers, size_t count);
  // Resets an upstream stream (client cancelled, deadline) and forgets its downstream peer.
  void Reset(int32_t stream_id, uint32_t error_code);
  void Forget(DownstreamStream* stream, int32_t stream_id);
  void ResumeRequest(int32_t stream_id);

 private:
  friend struct UpstreamCallbacks;
  UpstreamConnection(Worker& worker, int fd, const UpstreamAddress& address);
  void OnWritableFirstTime() override;
  void OnClosed(std::string_view why) override;
  void ArmConnect();

  std::string key_;
  bool goaway_received_ = false;
  bool connected_ = false;
  absl::flat_hash_set<DownstreamStream*> streams_;
};

}  // namespace bulwark::net

#endif  // BULWARK_SIDECAR_NET_UPSTREAM_SESSION_H_
