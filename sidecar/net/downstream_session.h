// DownstreamSession: the server side of one client connection (nghttp2 server
// session), and DownstreamStream: one gRPC call on it, which is the `Call` the
// core decides about and, once forwarded, the pairing with one upstream stream.
// Request bytes wait in the stream until the upstream session takes them, and
// only then are they consumed (WINDOW_UPDATE to the client); response bytes
// likewise in the other direction: flow control is end to end and the sidecar
// buffers at most the windows it advertises.
//
// Thread-safety: worker thread only. Cost per call: one stream object, the
// header copies, and the bytes passing through the two ByteQueues.
#ifndef BULWARK_SIDECAR_NET_DOWNSTREAM_SESSION_H_
#define BULWARK_SIDECAR_NET_DOWNSTREAM_SESSION_H_

#include <sys/socket.h>

#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "sidecar/net/grpc_framing.h"
#include "sidecar/net/h2_connection.h"
#include "sidecar/net/stream_handler.h"
#include "sidecar/net/upstream_session.h"

namespace bulwark::net {

class DownstreamSession;
class UpstreamConnection;

class DownstreamStream final : public Call, public UpstreamPeer {
 public:
  DownstreamStream(DownstreamSession& session, int32_t stream_id,
                   uint64_t call_id, uint64_t max_message_bytes);
  ~DownstreamStream() override;

  // --- Call ---
  uint64_t id() const override { return call_id_; }
  Executor& executor() override;
  Worker& worker();
  std::string_view path() const override { return path_; }
  std::string peer() const override;
  std::string_view peer_identity() const override;
  std::string_view header(std::string_view name) const override;
  absl::Time start_time() const override { return start_; }
  absl::Time client_deadline() const override { return client_deadline_; }
  void SetDeadline(absl::Time deadline) override;
  absl::Time deadline() const override { return deadline_; }
  void SetObserver(std::unique_ptr<CallObserver> observer) override {
    observer_ = std::move(observer);
  }
  CallObserver* observer() const override { return observer_.get(); }
  void RespondLocal(const LocalAnswer& answer) override;
  void Forward(const UpstreamAddress& upstream) override;
  void ForwardHeld(const UpstreamAddress& upstream, std::string body) override;

  // --- downstream session events ---
  // Return false when the header list grew past the limit (the block is then
  // abandoned: DownstreamSession::AbandonHeaderBlock). Request trailers carry
  // nothing gRPC uses; they are only counted, as a header list of their own.
  bool AddRequestHeader(std::string_view name, std::string_view value,
                        uint32_t limit);
  bool AddRequestTrailer(std::string_view name, std::string_view value,
                         uint32_t limit);
  void BeginRequestTrailers() { header_bytes_ = 0; }
  // The client sent RST_STREAM. Premature (Envoy's term): before any answer
  // began, within kPrematureResetWindow of the headers, and not the client's
  // own deadline firing.
  void OnClientReset();
  bool reset_prematurely() const { return reset_prematurely_; }
  bool forwarded() const { return result_.forwarded; }
  void OnRequestHeadersDone(bool end_stream);
  void OnRequestData(const uint8_t* data, size_t len);
  void OnRequestEnd();
  void OnDownstreamClosed(uint32_t error_code);
  // The response's data provider (NGHTTP2_DATA_FLAG_NO_COPY): how many bytes
  // the next DATA frame carries (and EOF, trailers); CopyResponseBody then
  // writes them into the frame.
  ssize_t ReadResponseBody(size_t length, uint32_t* flags);
  bool CopyResponseBody(size_t length, OutputBuffer& out);

  // --- upstream connection events ---
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
  const HeaderList& request_headers() const override {
    return request_headers_;
  }
  void RespondWith(std::shared_ptr<const CapturedResponse> response) override;
  void CollectRequest(
      uint64_t limit,
      absl::AnyInvocable<void(std::optional<std::string> body)> done) override;
  int32_t stream_id() const { return stream_id_; }
  // Resets the stream (INTERNAL_ERROR): nghttp2 will not send its answer.
  void ResetUnanswerable();

 private:
  enum class ResponseState { kNone, kHeadersSent, kFinished };
  void SubmitResponseHeaders(const HeaderList& headers, bool with_body);
  void SubmitTrailersOnly(const LocalAnswer& answer);
  void SubmitTrailers(const HeaderList& trailers);
  void FinishWithStatus(int grpc_code, std::string_view message,
                        CallResult::Ending ending);
  void DetachUpstream(bool reset);
  void OnDeadline();
  void ResumeResponse();
  nghttp2_session* down() const;

  DownstreamSession& session_;
  const int32_t stream_id_;
  const uint64_t call_id_;
  std::string path_;
  bool post_ = false;               // :method POST
  bool grpc_content_type_ = false;  // content-type application/grpc...
  HeaderList request_headers_;      // regular headers only, in arrival order
  uint32_t header_bytes_ = 0;       // of the header list being received
  bool reset_prematurely_ = false;
  absl::Time start_;
  absl::Time client_deadline_ = absl::InfiniteFuture();
  absl::Time deadline_ = absl::InfiniteFuture();
  uint64_t deadline_timer_ = 0;
  std::unique_ptr<CallObserver> observer_;
  CallResult result_;
  bool decided_ = false;  // RespondLocal or Forward happened

  // Request direction.
  MessageScanner request_scanner_;
  ByteQueue request_body_;
  bool request_ended_ = false;
  bool request_deferred_ =
      false;  // the upstream data provider is waiting for bytes
  size_t request_unconsumed_ =
      0;  // bytes received and not yet consumed downstream

  // Upstream pairing.
  // A refused stream is sent again once if its request bytes sent so far fit
  // in kReplayBytes (kept in replay_ until the response begins).
  static constexpr size_t kReplayBytes = 4096;
  const UpstreamAddress* forwarded_to_ =
      nullptr;  // the snapshot's, kept by the call
  std::string replay_;
  bool replayable_ = true;
  bool resent_ = false;
  UpstreamConnection* upstream_ = nullptr;
  int32_t upstream_stream_id_ = -1;
  absl::Time upstream_start_;

  // CollectRequest: the body is gathered (and consumed downstream) until
  // END_STREAM.
  absl::AnyInvocable<void(std::optional<std::string> body)> collect_done_;
  uint64_t collect_limit_ = 0;
  bool collecting_ = false;
  // Bytes at the head of request_body_ already consumed downstream (held
  // while collecting), so forwarding them consumes nothing again.
  size_t request_preconsumed_ = 0;
  bool request_held_ = false;  // request bytes are consumed as they arrive

  // Response direction.
  std::shared_ptr<const CapturedResponse>
      shared_response_;  // RespondWith's body source
  size_t shared_offset_ = 0;
  ResponseState response_state_ = ResponseState::kNone;
  HeaderList response_headers_;
  HeaderList response_trailers_;
  bool response_headers_done_ = false;
  ByteQueue response_body_;
  bool response_ended_ = false;
  bool response_deferred_ = false;
};

class DownstreamSession final : public H2Connection {
 public:
  DownstreamSession(Worker& worker, int fd);
  // The client's address ("ip:port", "[ip6]:port"), "" if unknown.
  void SetPeer(const sockaddr* addr, int len) {
    if (addr != nullptr && len > 0 &&
        static_cast<size_t>(len) <= sizeof(peer_)) {
      std::memcpy(&peer_, addr, static_cast<size_t>(len));
    }
  }
  // Formatted once per connection, on first use.
  const std::string& peer() const;
  // The client certificate's identity (PeerCertificateIdentity), read once
  // per connection on first use (streams exist only after the handshake).
  const std::string& peer_identity() const;
  static std::string FormatPeer(const sockaddr_storage& addr);
  ~DownstreamSession() override;

  // Starts reading, and the handshake and idle timeouts (WorkerOptions).
  void Start();
  // GOAWAY with the last stream id: no new streams, open ones finish.
  void Drain();
  DownstreamStream* FindStream(int32_t id);
  void EraseStream(int32_t id);
  // The client's connection preface and first SETTINGS have arrived (nghttp2
  // just sent their ACK, so TLS is up too): handshake_timeout no longer
  // applies.
  void OnHandshakeDone();

 private:
  friend struct DownstreamCallbacks;
  void OnClosed(std::string_view why) override;

  // Abuse that costs the sidecar more than it is worth (SPEC section 11)
  // ends the connection: GOAWAY(ENHANCE_YOUR_CALM), then close.
  void CloseForAbuse(const char* why);
  // A header block passed the header list limit on `stream_id`: the stream is
  // reset and the rest of the block skipped (returns what the header callback
  // returns for that); the kMaxOversizedHeaderBlocks-th closes the connection.
  int AbandonHeaderBlock(int32_t stream_id);
  static constexpr int kMaxOversizedHeaderBlocks = 8;
  int oversized_header_blocks_ = 0;
  // Rapid reset, paced or batched (Envoy's premature-reset check): once
  // kPrematureResetMinStreams streams count, more than half of them reset
  // prematurely closes the connection. A stream counts if it was forwarded
  // upstream or reset prematurely; those the sidecar answered itself cost the
  // upstream nothing and cannot dilute the ratio.
  void CountClosedStream(bool forwarded, bool premature);
  static constexpr uint64_t kPrematureResetMinStreams = 100;
  uint64_t counted_streams_ = 0;
  uint64_t premature_resets_ = 0;

  // handshake_timeout and idle_timeout (WorkerOptions).
  void CancelTimers();
  void ArmIdleTimer(absl::Duration after);
  // No open stream for idle_timeout: GOAWAY (nghttp2 then wants neither read
  // nor write, and the flush closes); a client that does not take it within
  // kIdleGoawayGrace is cut.
  void OnIdleTimer();
  static constexpr absl::Duration kIdleGoawayGrace = absl::Seconds(5);

  uint64_t handshake_timer_ = 0;  // EventLoop timer ids; 0: not armed
  uint64_t idle_timer_ = 0;
  absl::Time idle_since_;  // when the last open stream closed (or Start)
  bool idle_goaway_sent_ = false;

  absl::flat_hash_map<int32_t, std::unique_ptr<DownstreamStream>> streams_;
  sockaddr_storage peer_{};  // from accept; zero (AF_UNSPEC) if unknown
  mutable std::optional<std::string> peer_text_;
  mutable std::optional<std::string> peer_identity_;
};

}  // namespace bulwark::net

#endif  // BULWARK_SIDECAR_NET_DOWNSTREAM_SESSION_H_
