#include "sidecar/net/downstream_session.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "sidecar/log.h"
#include "sidecar/net/header_util.h"
#include "sidecar/net/local_answer.h"
#include "sidecar/net/tls.h"
#include "sidecar/net/upstream_request_headers.h"
#include "sidecar/net/upstream_session.h"
#include "sidecar/net/worker.h"

namespace bulwark::net {
namespace {

// Response headers and trailers fit inline: no allocation per call.
using NvList = absl::InlinedVector<nghttp2_nv, 16>;

// gRPC status codes: absl::StatusCode has gRPC's numbering (one enum for every
// layer; the wire carries the number).
constexpr int kCancelled = static_cast<int>(absl::StatusCode::kCancelled);
constexpr int kDeadlineExceeded =
    static_cast<int>(absl::StatusCode::kDeadlineExceeded);
constexpr int kResourceExhausted =
    static_cast<int>(absl::StatusCode::kResourceExhausted);
constexpr int kInternal = static_cast<int>(absl::StatusCode::kInternal);
constexpr int kUnavailable = static_cast<int>(absl::StatusCode::kUnavailable);
// How far before its grpc-timeout deadline (as the sidecar counts it from the
// headers' arrival) a client's reset still counts as its deadline firing.
constexpr absl::Duration kClientDeadlineSlack = absl::Milliseconds(5);
// A client's reset this soon after the headers, before any answer, is
// premature (Envoy's premature_reset_min_stream_lifetime): later ones are
// cancellations of calls that held their stream slot a while, which
// max_concurrent_streams already bounds.
constexpr absl::Duration kPrematureResetWindow = absl::Seconds(1);

DownstreamStream* StreamOf(void* session, int32_t id) {
  return static_cast<DownstreamStream*>(
      static_cast<DownstreamSession*>(session)->StreamData(id));
}

}  // namespace

// nghttp2 server callbacks; user_data is the DownstreamSession.
struct DownstreamCallbacks {
  static int OnBeginHeaders(nghttp2_session*, const nghttp2_frame* frame,
                            void* user_data) {
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
      if (DownstreamStream* stream = StreamOf(user_data, frame->hd.stream_id)) {
        stream->BeginRequestTrailers();
      }
      return 0;
    }
    auto* self = static_cast<DownstreamSession*>(user_data);
    Worker& worker = self->worker();
    auto stream = std::make_unique<DownstreamStream>(
        *self, frame->hd.stream_id, worker.NextCallId(),
        worker.options().max_message_bytes);
    self->SetStreamData(frame->hd.stream_id, stream.get());
    self->streams_.emplace(frame->hd.stream_id, std::move(stream));
    worker.StreamOpened();
    return 0;
  }

  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame,
                      const uint8_t* name, size_t namelen, const uint8_t* value,
                      size_t valuelen, uint8_t, void* user_data) {
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    DownstreamStream* stream = StreamOf(user_data, frame->hd.stream_id);
    if (stream == nullptr) return 0;
    auto* self = static_cast<DownstreamSession*>(user_data);
    const std::string_view n(reinterpret_cast<const char*>(name), namelen);
    const std::string_view v(reinterpret_cast<const char*>(value), valuelen);
    const uint32_t limit = self->worker().options().max_header_list_bytes;
    const bool within = frame->headers.cat == NGHTTP2_HCAT_REQUEST
                            ? stream->AddRequestHeader(n, v, limit)
                            : stream->AddRequestTrailer(n, v, limit);
    return within ? 0 : self->AbandonHeaderBlock(frame->hd.stream_id);
  }

  static int OnFrameRecv(nghttp2_session*, const nghttp2_frame* frame,
                         void* user_data) {
    const bool end_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    switch (frame->hd.type) {
      case NGHTTP2_HEADERS: {
        DownstreamStream* stream = StreamOf(user_data, frame->hd.stream_id);
        if (stream == nullptr) return 0;
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
          stream->OnRequestHeadersDone(end_stream);
        } else if (end_stream) {
          stream->OnRequestEnd();
        }
        break;
      }
      case NGHTTP2_DATA:
        if (end_stream) {
          if (DownstreamStream* stream =
                  StreamOf(user_data, frame->hd.stream_id)) {
            stream->OnRequestEnd();
          }
        }
        break;
      case NGHTTP2_RST_STREAM:  // the stream closes right after this
        if (DownstreamStream* stream =
                StreamOf(user_data, frame->hd.stream_id)) {
          stream->OnClientReset();
        }
        break;
      default:
        break;
    }
    return 0;
  }

  static int OnDataChunk(nghttp2_session* session, uint8_t, int32_t stream_id,
                         const uint8_t* data, size_t len, void* user_data) {
    // The connection window is given back at once; only the stream's window
    // waits for the upstream to take the bytes. So one stuck stream never
    // stalls the client's others, and what the sidecar holds is bounded by the
    // stream windows.
    nghttp2_session_consume_connection(session, len);
    static_cast<DownstreamSession*>(user_data)->MarkDirty();
    if (DownstreamStream* stream = StreamOf(user_data, stream_id)) {
      stream->OnRequestData(data, len);
    }
    return 0;
  }

  static int OnStreamClose(nghttp2_session*, int32_t stream_id,
                           uint32_t error_code, void* user_data) {
    auto* self = static_cast<DownstreamSession*>(user_data);
    if (DownstreamStream* stream = StreamOf(user_data, stream_id)) {
      const bool forwarded = stream->forwarded();
      const bool premature = stream->reset_prematurely();
      stream->OnDownstreamClosed(error_code);
      self->EraseStream(stream_id);
      self->CountClosedStream(forwarded, premature);
    }
    return 0;
  }

  // After the last frame of an answer, if the client is still sending (a
  // rejected or finished streaming call), end its side too with
  // RST_STREAM(NO_ERROR) (RFC 9113 8.1). Otherwise the client resets the stream
  // itself, and a burst of such resets (a rejection storm) trips nghttp2's
  // rapid-reset protection, which closes the whole connection.
  static int OnFrameSend(nghttp2_session* session, const nghttp2_frame* frame,
                         void* user_data) {
    if (frame->hd.type == NGHTTP2_SETTINGS &&
        (frame->hd.flags & NGHTTP2_FLAG_ACK) != 0) {
      // Acknowledges the client's SETTINGS, which nghttp2 takes only after
      // the connection preface.
      static_cast<DownstreamSession*>(user_data)->OnHandshakeDone();
      return 0;
    }
    if (frame->hd.type == NGHTTP2_HEADERS &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0 &&
        nghttp2_session_get_stream_remote_close(session, frame->hd.stream_id) ==
            0) {
      nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                NGHTTP2_NO_ERROR);
    }
    return 0;
  }

  // A response HEADERS (headers, trailers or a trailers-only answer) nghttp2
  // refused to send, e.g. a header block over its send limit: nghttp2 leaves
  // the stream open, so without a reset the client would wait for an answer
  // that never comes.
  static int OnFrameNotSend(nghttp2_session*, const nghttp2_frame* frame,
                            int lib_error_code, void* user_data) {
    if (frame->hd.type != NGHTTP2_HEADERS ||
        lib_error_code == NGHTTP2_ERR_STREAM_CLOSED ||
        lib_error_code == NGHTTP2_ERR_STREAM_CLOSING) {
      return 0;
    }
    if (DownstreamStream* stream = StreamOf(user_data, frame->hd.stream_id)) {
      stream->ResetUnanswerable();
    }
    return 0;
  }

  static ssize_t ReadResponse(nghttp2_session*, int32_t stream_id, uint8_t*,
                              size_t length, uint32_t* flags,
                              nghttp2_data_source*, void* user_data) {
    DownstreamStream* stream = StreamOf(user_data, stream_id);
    if (stream == nullptr) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    const ssize_t n = stream->ReadResponseBody(length, flags);
    if (n >= 0) *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    return n;
  }

  static int SendData(nghttp2_session*, nghttp2_frame* frame,
                      const uint8_t* framehd, size_t length,
                      nghttp2_data_source*, void* user_data) {
    DownstreamStream* stream = StreamOf(user_data, frame->hd.stream_id);
    return static_cast<DownstreamSession*>(user_data)->AppendDataFrame(
        frame, framehd, length, [stream](size_t n, OutputBuffer& out) {
          return stream != nullptr && stream->CopyResponseBody(n, out);
        });
  }

  static nghttp2_session_callbacks* Get() {
    static nghttp2_session_callbacks* callbacks = [] {
      nghttp2_session_callbacks* cb;
      nghttp2_session_callbacks_new(&cb);
      nghttp2_session_callbacks_set_on_begin_headers_callback(cb,
                                                              &OnBeginHeaders);
      nghttp2_session_callbacks_set_on_header_callback(cb, &OnHeader);
      nghttp2_session_callbacks_set_on_frame_recv_callback(cb, &OnFrameRecv);
      nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb,
                                                                &OnDataChunk);
      nghttp2_session_callbacks_set_on_stream_close_callback(cb,
                                                             &OnStreamClose);
      nghttp2_session_callbacks_set_on_frame_send_callback(cb, &OnFrameSend);
      nghttp2_session_callbacks_set_on_frame_not_send_callback(cb,
                                                               &OnFrameNotSend);
      nghttp2_session_callbacks_set_send_data_callback(cb, &SendData);
      return cb;
    }();
    return callbacks;
  }
};

// ---------------------------------------------------------------------------------------
// DownstreamStream

DownstreamStream::DownstreamStream(DownstreamSession& session,
                                   int32_t stream_id, uint64_t call_id,
                                   uint64_t max_message_bytes)
    : session_(session),
      stream_id_(stream_id),
      call_id_(call_id),
      start_(session.worker().clock().Now()),
      request_scanner_(max_message_bytes) {
  // Typical gRPC request headers fit: one allocation, not a growth series.
  request_headers_.reserve(HeaderList::kInlineFields, 256);
}

DownstreamStream::~DownstreamStream() = default;

Worker& DownstreamStream::worker() { return session_.worker(); }

Executor& DownstreamStream::executor() { return session_.worker(); }

nghttp2_session* DownstreamStream::down() const { return session_.session(); }

std::string_view DownstreamStream::header(std::string_view name) const {
  return FindHeader(request_headers_, name);
}

bool DownstreamStream::AddRequestHeader(std::string_view name,
                                        std::string_view value,
                                        uint32_t limit) {
  // Each field counts as RFC 9113 counts SETTINGS_MAX_HEADER_LIST_SIZE. One
  // field is at most 64 KiB (nghttp2's HPACK decoder), and the first past
  // the limit ends the block, so the sum cannot wrap.
  header_bytes_ += static_cast<uint32_t>(name.size() + value.size() + 32);
  if (header_bytes_ > limit) return false;
  if (!name.empty() && name[0] == ':') {
    if (name == ":path") {
      path_ = value;
    } else if (name == ":method") {
      post_ = value == "POST";
    } else if (name == ":authority") {
      request_headers_.emplace_back(name, value);  // kept for forwarding
    }
    return true;
  }
  if (name == "content-type") {
    grpc_content_type_ = value.starts_with("application/grpc");
  }
  request_headers_.emplace_back(name, value);
  return true;
}

bool DownstreamStream::AddRequestTrailer(std::string_view name,
                                         std::string_view value,
                                         uint32_t limit) {
  header_bytes_ += static_cast<uint32_t>(name.size() + value.size() + 32);
  return header_bytes_ <= limit;
}

void DownstreamStream::OnClientReset() {
  if (response_state_ != ResponseState::kNone) return;  // an answer began
  const absl::Time now = worker().clock().Now();
  const absl::Duration lived = now - start_;
  if (lived >= kPrematureResetWindow) return;
  // Its deadline firing (as OnDownstreamClosed tells it) is no flood, if the
  // stream lived at least the slack: a grpc-timeout of a few nanoseconds
  // does not excuse a reset right after the headers.
  if (client_deadline_ != absl::InfiniteFuture() &&
      lived >= kClientDeadlineSlack &&
      now >= client_deadline_ - kClientDeadlineSlack) {
    return;
  }
  reset_prematurely_ = true;
}

void DownstreamStream::OnRequestHeadersDone(bool end_stream) {
  request_ended_ = end_stream;
  worker().RegisterCall(call_id_, this);
  if (!post_ || !grpc_content_type_) {
    RespondLocal(
        {.grpc_code = kInternal,
         .message =
             "not a gRPC request (POST with content-type application/grpc "
             "expected)",
         .http_status = 415});
    return;
  }
  if (std::string_view timeout = header("grpc-timeout"); !timeout.empty()) {
    if (auto parsed = ParseGrpcTimeout(timeout)) {
      client_deadline_ = start_ + *parsed;
    } else {
      RespondLocal(
          {.grpc_code = kInternal,
           .message = "malformed grpc-timeout: " + std::string(timeout)});
      return;
    }
  }
  worker().handler()->OnCall(*this);
}

void DownstreamStream::SetDeadline(absl::Time deadline) {
  deadline_ = deadline;
  if (deadline_timer_ != 0) {
    worker().loop().CancelTimer(deadline_timer_);
    deadline_timer_ = 0;
  }
  if (deadline == absl::InfiniteFuture()) return;
  deadline_timer_ =
      worker().loop().AddTimer(deadline - worker().clock().Now(), [this] {
        deadline_timer_ = 0;
        OnDeadline();
      });
}

void DownstreamStream::OnDeadline() {
  if (response_state_ == ResponseState::kFinished) return;
  if (response_ended_) {
    // The whole answer is here but the client has not taken it (it keeps its
    // window shut): its deadline ends the call like any other, and what the
    // sidecar held for it (a shared singleflight answer, queued bytes) goes.
    if (shared_response_ == nullptr && response_body_.empty()) return;
    shared_response_.reset();
    response_body_.Clear();
    response_state_ = ResponseState::kFinished;
    result_.ending = CallResult::Ending::kDeadlineExceeded;
    result_.grpc_code = kDeadlineExceeded;
    nghttp2_submit_rst_stream(down(), NGHTTP2_FLAG_NONE, stream_id_,
                              NGHTTP2_CANCEL);
    session_.MarkDirty();
    return;
  }
  DetachUpstream(/*reset=*/true);
  response_body_.Clear();
  FinishWithStatus(kDeadlineExceeded, "deadline exceeded in the sidecar",
                   CallResult::Ending::kDeadlineExceeded);
}

void DownstreamStream::RespondLocal(const LocalAnswer& answer) {
  decided_ = true;
  // The request body will never be forwarded: give its window back to the
  // client.
  if (!request_body_.empty() && !request_held_) {
    nghttp2_session_consume_stream(down(), stream_id_, request_body_.size());
    request_body_.Clear();
  }
  result_.ending = CallResult::Ending::kLocalAnswer;
  result_.grpc_code = answer.grpc_code;
  if (response_state_ == ResponseState::kNone) {
    SubmitTrailersOnly(answer);
  } else if (response_state_ == ResponseState::kHeadersSent &&
             !response_ended_) {
    response_trailers_ = LocalAnswerTrailers(answer);
    response_ended_ = true;
    ResumeResponse();
  }
}

void DownstreamStream::Forward(const UpstreamAddress& upstream) {
  decided_ = true;
  // Already answered (a deadline that fired while the call waited for a slot).
  if (response_state_ != ResponseState::kNone) return;
  std::string error;
  UpstreamConnection* conn = worker().UpstreamFor(upstream, &error);
  if (conn == nullptr) {
    FinishWithStatus(kUnavailable, error, CallResult::Ending::kUpstreamFailed);
    return;
  }
  const UpstreamRequestHeaders headers(
      path_, request_headers_, upstream.authority,
      deadline_ == absl::InfiniteFuture() ? absl::InfiniteDuration()
                                          : deadline_ - worker().clock().Now(),
      upstream.tls != nullptr);
  const int32_t id = conn->Submit(this, headers.data(), headers.size());
  if (id < 0) {
    FinishWithStatus(
        kUnavailable,
        absl::StrCat("cannot open upstream stream: ", nghttp2_strerror(id)),
        CallResult::Ending::kUpstreamFailed);
    return;
  }
  upstream_ = conn;
  upstream_stream_id_ = id;
  upstream_start_ = worker().clock().Now();
  forwarded_to_ = &upstream;
  result_.forwarded = true;
  conn->MarkDirty();
}

void DownstreamStream::OnRequestData(const uint8_t* data, size_t len) {
  result_.request_bytes += len;
  if (decided_ && upstream_ == nullptr) {
    // Answered locally already: drop, and keep the connection window open.
    nghttp2_session_consume_stream(down(), stream_id_, len);
    session_.MarkDirty();
    return;
  }
  if (request_scanner_.Feed(data, len) == MessageScanner::Verdict::kTooLarge) {
    nghttp2_session_consume_stream(down(), stream_id_, len);
    DetachUpstream(/*reset=*/true);
    RespondLocal(
        {.grpc_code = kResourceExhausted,
         .message = absl::StrCat("request message of ",
                                 request_scanner_.last_message_length(),
                                 " bytes exceeds max_message_bytes (",
                                 worker().options().max_message_bytes, ")"),
         .reason = "message_too_large"});
    result_.reason = "message_too_large";
    session_.MarkDirty();
    return;
  }
  request_body_.Append(data, len);
  if (collecting_) {
    // Held whole for the key: consume now (bounded by the limit below).
    nghttp2_session_consume_stream(down(), stream_id_, len);
    session_.MarkDirty();
    request_preconsumed_ += len;
    if (request_body_.size() > collect_limit_) {
      // Too large to hold: the call goes on as a plain one, and what was
      // held so far is forwarded first (already consumed).
      collecting_ = false;
      request_held_ = false;
      auto done = std::move(collect_done_);
      collect_done_ = nullptr;
      done(std::nullopt);
    }
    return;
  }
  if (upstream_ != nullptr && request_deferred_) {
    request_deferred_ = false;
    upstream_->ResumeRequest(upstream_stream_id_);
  }
}

void DownstreamStream::OnRequestEnd() {
  request_ended_ = true;
  // Shaped like a unary call: one whole message, half-closed before the
  // answer began (an adaptive limit's latency sample, SPEC section 7).
  result_.unary_shaped = response_state_ == ResponseState::kNone &&
                         request_scanner_.messages_started() == 1 &&
                         request_scanner_.AtBoundary();
  if (collecting_) {
    collecting_ = false;
    auto done = std::move(collect_done_);
    collect_done_ = nullptr;
    request_preconsumed_ = 0;
    done(request_body_.Take());
    return;
  }
  if (upstream_ != nullptr && request_deferred_) {
    request_deferred_ = false;
    upstream_->ResumeRequest(upstream_stream_id_);
  }
}

ssize_t DownstreamStream::ReadRequestBody(size_t length, uint32_t* flags) {
  const size_t n = std::min(length, request_body_.size());
  if (n == request_body_.size()) {  // the queue is empty after this frame
    if (request_ended_) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
    } else if (n == 0) {
      request_deferred_ = true;
      return NGHTTP2_ERR_DEFERRED;
    }
  }
  return static_cast<ssize_t>(n);
}

bool DownstreamStream::CopyRequestBody(size_t length, OutputBuffer& out) {
  if (request_body_.size() < length) return false;
  if (length == 0) return true;
  request_body_.MoveTo(length, out);
  // Kept, while small and unanswered, to send again if the upstream refuses
  // the stream unseen. (Bytes this small were copied into the output's tail.)
  if (replayable_) {
    const std::string_view sent =
        replay_.size() + length <= kReplayBytes && !response_headers_done_
            ? out.Last(length)
            : std::string_view();
    if (sent.size() == length) {
      replay_.append(sent);
    } else {
      replayable_ = false;
      std::string().swap(replay_);
    }
  }
  // Only now the client may send more: end-to-end flow control.
  const size_t preconsumed = std::min(length, request_preconsumed_);
  request_preconsumed_ -= preconsumed;
  if (length > preconsumed) {
    nghttp2_session_consume_stream(down(), stream_id_, length - preconsumed);
    session_.MarkDirty();
  }
  return true;
}

void DownstreamStream::AddResponseHeader(std::string_view name,
                                         std::string_view value) {
  if (!response_headers_done_) {
    response_headers_.emplace_back(name, value);
  } else {
    response_trailers_.emplace_back(name, value);
  }
}

void DownstreamStream::OnResponseHeadersDone(bool end_stream) {
  if (response_headers_done_) {  // trailers
    if (auto code =
            ParseGrpcStatus(FindHeader(response_trailers_, "grpc-status"))) {
      result_.upstream_grpc_code = *code;
    }
    OnResponseEnd();
    return;
  }
  const ResponseHead head = ParseResponseHead(response_headers_);
  if (head.kind == ResponseHead::Kind::kInformational) {
    response_headers_.clear();  // wait for the real headers
    return;
  }
  response_headers_done_ = true;
  if (head.kind == ResponseHead::Kind::kHttpError) {
    DetachUpstream(/*reset=*/!end_stream);
    FinishWithStatus(head.grpc_code, head.message,
                     CallResult::Ending::kUpstreamFailed);
    return;
  }
  if (end_stream) {  // trailers-only: pass it as such
    if (auto code =
            ParseGrpcStatus(FindHeader(response_headers_, "grpc-status"))) {
      result_.upstream_grpc_code = *code;
    }
    result_.grpc_code =
        result_.upstream_grpc_code >= 0 ? result_.upstream_grpc_code : 2;
    response_ended_ = true;
    SubmitResponseHeaders(response_headers_, /*with_body=*/false);
    response_state_ = ResponseState::kFinished;
    return;
  }
  SubmitResponseHeaders(response_headers_, /*with_body=*/true);
  response_state_ = ResponseState::kHeadersSent;
}

void DownstreamStream::OnResponseData(const uint8_t* data, size_t len) {
  response_body_.Append(data, len);
  ResumeResponse();
}

void DownstreamStream::OnResponseEnd() {
  if (response_ended_) return;
  response_ended_ = true;
  if (response_trailers_.empty()) {
    response_trailers_ = {
        {"grpc-status", "2"},
        {"grpc-message", "upstream response ended without grpc-status"}};
  }
  if (result_.upstream_grpc_code >= 0) {
    result_.grpc_code = result_.upstream_grpc_code;
  } else {
    result_.grpc_code =
        ParseGrpcStatus(FindHeader(response_trailers_, "grpc-status"))
            .value_or(2);
  }
  ResumeResponse();
}

ssize_t DownstreamStream::ReadResponseBody(size_t length, uint32_t* flags) {
  // Reset at its deadline while the client kept its window shut: nothing
  // more to send (the RST_STREAM is queued).
  if (response_state_ == ResponseState::kFinished) return NGHTTP2_ERR_DEFERRED;
  if (shared_response_ != nullptr) {
    const std::string& body = shared_response_->body;
    const size_t n = std::min(length, body.size() - shared_offset_);
    if (shared_offset_ + n == body.size()) {
      *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
      SubmitTrailers(shared_response_->trailers);
    }
    return static_cast<ssize_t>(n);
  }
  const size_t n = std::min(length, response_body_.size());
  if (n == response_body_.size()) {  // the queue is empty after this frame
    if (response_ended_) {
      *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
      SubmitTrailers(response_trailers_);
    } else if (n == 0) {
      response_deferred_ = true;
      return NGHTTP2_ERR_DEFERRED;
    }
  }
  return static_cast<ssize_t>(n);
}

bool DownstreamStream::CopyResponseBody(size_t length, OutputBuffer& out) {
  if (shared_response_ != nullptr) {
    const std::string& body = shared_response_->body;
    if (body.size() - shared_offset_ < length) return false;
    out.Append(body.data() + shared_offset_, length);
    shared_offset_ += length;
    result_.response_bytes += length;
    return true;
  }
  if (response_body_.size() < length) return false;
  if (length == 0) return true;
  response_body_.MoveTo(length, out);
  result_.response_bytes += length;
  if (upstream_ != nullptr) {
    nghttp2_session_consume_stream(upstream_->session(), upstream_stream_id_,
                                   length);
    upstream_->MarkDirty();
  }
  return true;
}

void DownstreamStream::SubmitTrailers(const HeaderList& trailers) {
  NvList nv;
  nv.reserve(trailers.size());
  for (const auto& [name, value] : trailers) nv.push_back(MakeNv(name, value));
  const int rv =
      nghttp2_submit_trailer(down(), stream_id_, nv.data(), nv.size());
  response_state_ = ResponseState::kFinished;
  if (rv != 0) ResetUnanswerable();
}

void DownstreamStream::RespondWith(
    std::shared_ptr<const CapturedResponse> response) {
  decided_ = true;
  if (response_state_ != ResponseState::kNone) return;
  result_.ending = CallResult::Ending::kCompleted;
  result_.grpc_code = response->grpc_code;
  response_ended_ = true;
  if (response->trailers_only) {
    SubmitResponseHeaders(response->headers, /*with_body=*/false);
    response_state_ = ResponseState::kFinished;
    return;
  }
  shared_response_ = std::move(response);
  shared_offset_ = 0;
  SubmitResponseHeaders(shared_response_->headers, /*with_body=*/true);
  response_state_ = ResponseState::kHeadersSent;
}

void DownstreamStream::CollectRequest(
    uint64_t limit,
    absl::AnyInvocable<void(std::optional<std::string> body)> done) {
  if (request_body_.size() > limit) {
    done(std::nullopt);
    return;
  }
  request_held_ = true;
  if (request_body_.size() > request_preconsumed_) {
    // Bytes that arrived before: they are held too, so consume them now.
    nghttp2_session_consume_stream(down(), stream_id_,
                                   request_body_.size() - request_preconsumed_);
    request_preconsumed_ = request_body_.size();
    session_.MarkDirty();
  }
  if (request_ended_) {
    request_preconsumed_ = 0;
    done(request_body_.Take());
    return;
  }
  collecting_ = true;
  collect_limit_ = limit;
  collect_done_ = std::move(done);
}

void DownstreamStream::ForwardHeld(const UpstreamAddress& upstream,
                                   std::string body) {
  // The held bytes were consumed as they arrived; the request has ended.
  request_held_ = false;
  request_preconsumed_ = body.size();
  request_body_.Assign(std::move(body));
  Forward(upstream);
}

void DownstreamStream::ResumeResponse() {
  if (response_state_ == ResponseState::kHeadersSent && response_deferred_) {
    response_deferred_ = false;
    nghttp2_session_resume_data(down(), stream_id_);
    session_.MarkDirty();
  }
}

void DownstreamStream::SubmitResponseHeaders(const HeaderList& headers,
                                             bool with_body) {
  NvList nv;
  nv.reserve(headers.size());
  for (const auto& [name, value] : headers) nv.push_back(MakeNv(name, value));
  nghttp2_data_provider provider{};
  provider.read_callback = &DownstreamCallbacks::ReadResponse;
  const int rv =
      nghttp2_submit_response(down(), stream_id_, nv.data(), nv.size(),
                              with_body ? &provider : nullptr);
  if (rv != 0) ResetUnanswerable();
  session_.MarkDirty();
}

void DownstreamStream::SubmitTrailersOnly(const LocalAnswer& answer) {
  const std::string status = std::to_string(answer.http_status);
  const HeaderList trailers = LocalAnswerTrailers(answer);
  NvList nv;
  nv.reserve(trailers.size() + 2);
  nv.push_back(MakeNv(":status", status));
  nv.push_back(MakeNv("content-type", "application/grpc"));
  for (const auto& [name, value] : trailers) nv.push_back(MakeNv(name, value));
  const int rv = nghttp2_submit_response(down(), stream_id_, nv.data(),
                                         nv.size(), nullptr);
  response_state_ = ResponseState::kFinished;
  response_ended_ = true;
  if (rv != 0) ResetUnanswerable();
  session_.MarkDirty();
}

void DownstreamStream::ResetUnanswerable() {
  // nghttp2 will not send this stream's answer (a header block too large, or
  // no room to queue it): reset the stream so the call still ends (SPEC
  // section 11) instead of waiting for a frame that never leaves.
  nghttp2_submit_rst_stream(down(), NGHTTP2_FLAG_NONE, stream_id_,
                            NGHTTP2_INTERNAL_ERROR);
  session_.MarkDirty();
}

void DownstreamStream::FinishWithStatus(int grpc_code, std::string_view message,
                                        CallResult::Ending ending) {
  if (response_state_ == ResponseState::kFinished || response_ended_) return;
  result_.ending = ending;
  result_.grpc_code = grpc_code;
  if (response_state_ == ResponseState::kNone) {
    SubmitTrailersOnly(
        {.grpc_code = grpc_code, .message = std::string(message)});
  } else {
    response_trailers_ = LocalAnswerTrailers(
        {.grpc_code = grpc_code, .message = std::string(message)});
    response_ended_ = true;
    ResumeResponse();
  }
}

void DownstreamStream::DetachUpstream(bool reset) {
  if (upstream_ == nullptr) return;
  result_.upstream_duration = worker().clock().Now() - upstream_start_;
  if (reset) upstream_->Reset(upstream_stream_id_, NGHTTP2_CANCEL);
  upstream_->Forget(this, upstream_stream_id_);
  upstream_ = nullptr;
  upstream_stream_id_ = -1;
}

void DownstreamStream::OnUpstreamClosed(uint32_t error_code) {
  // The upstream connection already forgot us; what's buffered is ours to
  // deliver.
  result_.upstream_duration = worker().clock().Now() - upstream_start_;
  upstream_ = nullptr;
  upstream_stream_id_ = -1;
  if (response_ended_ || response_state_ == ResponseState::kFinished) return;
  const bool refused =
      error_code == NGHTTP2_REFUSED_STREAM && !response_headers_done_;
  if (refused && replayable_ && !resent_ && forwarded_to_ != nullptr &&
      response_state_ == ResponseState::kNone) {
    // Refused unseen (REFUSED_STREAM, or above the last id of a GOAWAY): send
    // it once more, on a fresh connection if this one is going away. The
    // bytes sent before were consumed downstream already.
    resent_ = true;
    std::string rest = request_body_.Take();
    request_body_.Append(reinterpret_cast<const uint8_t*>(replay_.data()),
                         replay_.size());
    request_body_.Append(reinterpret_cast<const uint8_t*>(rest.data()),
                         rest.size());
    request_preconsumed_ += replay_.size();
    std::string().swap(replay_);
    request_deferred_ = false;
    Forward(*forwarded_to_);
    return;
  }
  // Reset by the upstream before the response ended: pass the reset on to the
  // client. Refused unseen (REFUSED_STREAM before any response): not the
  // endpoint's failure.
  result_.ending = refused ? CallResult::Ending::kUpstreamRefused
                           : CallResult::Ending::kUpstreamReset;
  result_.grpc_code = GrpcCodeFromHttp2Error(error_code);
  response_ended_ = true;
  response_state_ = ResponseState::kFinished;
  nghttp2_submit_rst_stream(down(), NGHTTP2_FLAG_NONE, stream_id_,
                            error_code == NGHTTP2_NO_ERROR
                                ? static_cast<uint32_t>(NGHTTP2_INTERNAL_ERROR)
                                : error_code);
  session_.MarkDirty();
}

void DownstreamStream::OnUpstreamFailed(std::string_view why) {
  if (upstream_ != nullptr)
    result_.upstream_duration = worker().clock().Now() - upstream_start_;
  upstream_ = nullptr;
  upstream_stream_id_ = -1;
  if (response_ended_) return;
  FinishWithStatus(kUnavailable,
                   "upstream connection failed: " + std::string(why),
                   CallResult::Ending::kUpstreamFailed);
}

void DownstreamStream::OnResponseOverLimit(std::string_view why) {
  // The upstream connection forgot us and resets its stream. What the
  // response held of its headers is dropped; messages already queued still
  // reach the client, then the INTERNAL status.
  result_.upstream_duration = worker().clock().Now() - upstream_start_;
  upstream_ = nullptr;
  upstream_stream_id_ = -1;
  response_headers_.clear();
  response_trailers_.clear();
  FinishWithStatus(kInternal, why, CallResult::Ending::kUpstreamFailed);
}

void DownstreamStream::OnDownstreamClosed(uint32_t error_code) {
  if (deadline_timer_ != 0) {
    worker().loop().CancelTimer(deadline_timer_);
    deadline_timer_ = 0;
  }
  DetachUpstream(/*reset=*/true);
  request_body_.Clear();  // its connection window went back on receipt
  const bool completed =
      response_state_ == ResponseState::kFinished && response_ended_;
  if (!completed && result_.ending == CallResult::Ending::kCompleted) {
    (void)error_code;  // any reset or disconnect before the response ended
    // gRPC clients reset the stream as their own deadline fires: that is a
    // deadline expiry, not a cancellation. The client started its deadline
    // a little before the sidecar saw the headers, hence the slack.
    if (client_deadline_ != absl::InfiniteFuture() &&
        worker().clock().Now() >= client_deadline_ - kClientDeadlineSlack) {
      result_.ending = CallResult::Ending::kDeadlineExceeded;
      result_.grpc_code = kDeadlineExceeded;
    } else {
      result_.ending = CallResult::Ending::kClientCancelled;
      result_.grpc_code = kCancelled;
    }
  }
  worker().UnregisterCall(call_id_);
  if (observer_ != nullptr) {
    observer_->OnClose(result_);
    observer_.reset();
  }
  worker().StreamClosed();
}

// ---------------------------------------------------------------------------------------
// DownstreamSession

std::string DownstreamStream::peer() const { return session_.peer(); }

std::string_view DownstreamStream::peer_identity() const {
  return session_.peer_identity();
}

const std::string& DownstreamSession::peer_identity() const {
  if (!peer_identity_.has_value()) {
    peer_identity_ = PeerCertificateIdentity(tls());
  }
  return *peer_identity_;
}

const std::string& DownstreamSession::peer() const {
  if (!peer_text_.has_value()) peer_text_ = FormatPeer(peer_);
  return *peer_text_;
}

std::string DownstreamSession::FormatPeer(const sockaddr_storage& peer_) {
  char host[INET6_ADDRSTRLEN] = "";
  uint16_t port = 0;
  if (peer_.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&peer_);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    port = ntohs(in->sin_port);
    return absl::StrCat(host, ":", port);
  }
  if (peer_.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&peer_);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    port = ntohs(in6->sin6_port);
    return absl::StrCat("[", host, "]:", port);
  }
  return "";
}

DownstreamSession::DownstreamSession(Worker& worker, int fd)
    : H2Connection(worker, fd) {}

DownstreamSession::~DownstreamSession() { CancelTimers(); }

void DownstreamSession::Start() {
  nghttp2_option* option;
  nghttp2_option_new(&option);
  nghttp2_option_set_no_auto_window_update(option, 1);
  // gRPC accepts metadata values with leading or trailing spaces, so the
  // sidecar passes them (SPEC section 3); nghttp2's other checks stay.
  nghttp2_option_set_no_rfc9113_leading_and_trailing_ws_validation(option, 1);
  nghttp2_session_server_new3(&session_, DownstreamCallbacks::Get(), this,
                              option, worker_.h2_mem());
  nghttp2_option_del(option);
  const WorkerOptions& o = worker_.options();
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, o.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, o.stream_window_bytes},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, o.max_header_list_bytes},
  };
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings,
                          std::size(settings));
  nghttp2_session_set_local_window_size(
      session_, NGHTTP2_FLAG_NONE, 0,
      static_cast<int32_t>(o.connection_window_bytes));
  StartReading();
  MarkDirty();
  // Half-open and slowloris connections go: the preface and SETTINGS (and
  // TLS) must arrive in time, and a connection left without streams gets
  // GOAWAY.
  handshake_timer_ = worker_.loop().AddTimer(o.handshake_timeout, [this] {
    handshake_timer_ = 0;
    Close("no connection preface and SETTINGS within handshake_timeout");
  });
  idle_since_ = worker_.clock().Now();
  ArmIdleTimer(o.idle_timeout);
}

void DownstreamSession::OnHandshakeDone() {
  if (handshake_timer_ == 0) return;
  worker_.loop().CancelTimer(handshake_timer_);
  handshake_timer_ = 0;
}

void DownstreamSession::CancelTimers() {
  if (handshake_timer_ != 0) worker_.loop().CancelTimer(handshake_timer_);
  if (idle_timer_ != 0) worker_.loop().CancelTimer(idle_timer_);
  handshake_timer_ = 0;
  idle_timer_ = 0;
}

void DownstreamSession::ArmIdleTimer(absl::Duration after) {
  if (idle_timer_ != 0) worker_.loop().CancelTimer(idle_timer_);
  idle_timer_ = worker_.loop().AddTimer(after, [this] {
    idle_timer_ = 0;
    OnIdleTimer();
  });
}

void DownstreamSession::OnIdleTimer() {
  if (closed()) return;
  if (idle_goaway_sent_) {
    Close("idle connection did not take its GOAWAY");
    return;
  }
  const absl::Duration limit = worker_.options().idle_timeout;
  // One timer per connection, not one per stream: it looks at the streams
  // when it fires and sleeps again for what is left.
  if (!streams_.empty()) {
    ArmIdleTimer(limit);
    return;
  }
  const absl::Duration idle = worker_.clock().Now() - idle_since_;
  if (idle < limit) {
    ArmIdleTimer(limit - idle);
    return;
  }
  idle_goaway_sent_ = true;
  Drain();
  ArmIdleTimer(kIdleGoawayGrace);
}

void DownstreamSession::Drain() {
  if (closed()) return;
  nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE,
                        nghttp2_session_get_last_proc_stream_id(session_),
                        NGHTTP2_NO_ERROR, nullptr, 0);
  MarkDirty();
}

void DownstreamSession::CloseForAbuse(const char* why) {
  // GOAWAY with the last stream id processed; nghttp2 ignores what else the
  // client sends, and the flush closes the connection once the GOAWAY is out.
  // Open streams end as cancelled (OnClosed).
  nghttp2_session_terminate_session2(
      session_, nghttp2_session_get_last_proc_stream_id(session_),
      NGHTTP2_ENHANCE_YOUR_CALM);
  // Debug only: a client reconnecting to do it again must not flood the log.
  Log(LogLevel::kDebug, "client connection closed: %s", why);
  MarkDirty();
}

int DownstreamSession::AbandonHeaderBlock(int32_t stream_id) {
  // Past the limit, each further field would still be decoded, checked and
  // counted: with HPACK references to a large table entry, a 1 KB block costs
  // megabytes of that. Returning TEMPORAL_CALLBACK_FAILURE makes nghttp2 skip
  // the callbacks and the field checks for the rest of the block (it still
  // decodes it, cheaply, to keep the HPACK table in step) and reset the
  // stream, which from then on can carry no answer. The reset says
  // ENHANCE_YOUR_CALM, which gRPC clients report as RESOURCE_EXHAUSTED (a gRPC
  // client never sends such a block: it checks the advertised limit itself).
  nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, stream_id,
                            NGHTTP2_ENHANCE_YOUR_CALM);
  if (++oversized_header_blocks_ >= kMaxOversizedHeaderBlocks) {
    CloseForAbuse("header blocks over the header list limit");
  }
  MarkDirty();
  return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

void DownstreamSession::CountClosedStream(bool forwarded, bool premature) {
  if (!forwarded && !premature) return;
  ++counted_streams_;
  if (!premature) return;
  ++premature_resets_;
  if (counted_streams_ >= kPrematureResetMinStreams &&
      premature_resets_ * 2 > counted_streams_) {
    CloseForAbuse("most streams reset before their answer (rapid reset)");
  }
}

DownstreamStream* DownstreamSession::FindStream(int32_t id) {
  auto it = streams_.find(id);
  return it == streams_.end() ? nullptr : it->second.get();
}

void DownstreamSession::EraseStream(int32_t id) {
  SetStreamData(id, nullptr);
  streams_.erase(id);
  if (streams_.empty()) idle_since_ = worker_.clock().Now();
}

void DownstreamSession::OnClosed(std::string_view) {
  CancelTimers();
  // The client is gone: every open call ends as cancelled by the client.
  auto streams = std::move(streams_);
  streams_.clear();
  for (auto& [id, stream] : streams) {
    SetStreamData(id, nullptr);
    stream->OnDownstreamClosed(NGHTTP2_CANCEL);
  }
  worker_.OnDownstreamClosed(this);
}

}  // namespace bulwark::net
