// UpstreamCall: a gRPC call to an upstream endpoint that belongs to no
// downstream stream: the shared upstream call of a singleflight flight (whose
// callers come and go) and the health-check probes. The request is complete up
// front (headers and framed body); the response is reported as it arrives:
// headers, each whole message, then the end with the status. With `capture`,
// the whole response is also kept as a CapturedResponse that can be handed to
// any number of callers.
//
// Response bytes are consumed as they arrive (the sidecar holds them anyway);
// the captured body is bounded by `max_response_bytes`, past which the call
// fails RESOURCE_EXHAUSTED.
//
// Thread-safety: worker thread only. Lifetime: owned by the caller; destroying
// it cancels the call (RST_STREAM) and no callback runs after that. OnFinish is
// the last callback and may destroy the call.
#ifndef BULWARK_SIDECAR_NET_UPSTREAM_CALL_H_
#define BULWARK_SIDECAR_NET_UPSTREAM_CALL_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/time/time.h"
#include "sidecar/net/stream_handler.h"
#include "sidecar/net/upstream_session.h"

namespace bulwark::net {

class UpstreamCall final : public UpstreamPeer, public UpstreamCallHandle {
 public:
  using Options = UpstreamCallOptions;

  // Starts the call. Failures (no connection) are reported through OnFinish on
  // a later loop iteration, never from inside Start.
  static std::unique_ptr<UpstreamCall> Start(Worker& worker,
                                             const UpstreamAddress& address,
                                             UpstreamRequest request,
                                             UpstreamCallListener* listener,
                                             const Options& options);
  ~UpstreamCall() override;

  // --- UpstreamPeer ---
  ssize_t ReadRequestBody(size_t length, uint32_t* flags) override;
  bool CopyRequestBody(size_t length, OutputBuffer& out) override;
  void AddResponseHeader(std::string_view name,
                         std::string_view value) override;
  void OnResponseHeadersDone(bool end_stream) override;
  void OnResponseData(const uint8_t* data, size_t len) override;
  void OnResponseEnd() override;
  void OnUpstreamClosed(uint32_t error_code) override;
  void OnUpstreamFailed(std::string_view why) override;
  void OnResponseOverLimit(std::string_view why) override;

 private:
  UpstreamCall(Worker& worker, UpstreamRequest request,
               UpstreamCallListener* listener, const Options& options);
  void Finish(int code, std::string message, bool transport_failure,
              bool deadline);
  void Detach(bool reset);

  Worker& worker_;
  UpstreamRequest request_;
  UpstreamCallListener* listener_;
  Options options_;
  size_t request_offset_ = 0;
  UpstreamConnection* conn_ = nullptr;
  int32_t stream_id_ = -1;
  absl::Time start_;
  uint64_t deadline_timer_ = 0;
  bool finished_ = false;
  bool headers_done_ = false;
  bool refused_ = false;
  bool too_large_ = false;
  HeaderList headers_;
  HeaderList trailers_;
  std::string body_;     // raw framed bytes (captured)
  std::string pending_;  // bytes of an incomplete message, for OnMessage
  uint64_t received_ = 0;
  std::shared_ptr<bool> alive_;  // for the posted failure report
};

}  // namespace bulwark::net

#endif  // BULWARK_SIDECAR_NET_UPSTREAM_CALL_H_
