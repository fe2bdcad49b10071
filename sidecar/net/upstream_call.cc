#include "sidecar/net/upstream_call.h"

#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "sidecar/net/grpc_framing.h"
#include "sidecar/net/header_util.h"
#include "sidecar/net/upstream_request_headers.h"
#include "sidecar/net/worker.h"

namespace bulwark::net {
namespace {

// gRPC status codes, by absl::StatusCode (gRPC's numbering).
constexpr int Code(absl::StatusCode code) { return static_cast<int>(code); }

}  // namespace

UpstreamCall::UpstreamCall(Worker& worker, UpstreamRequest request,
                           UpstreamCallListener* listener,
                           const Options& options)
    : worker_(worker),
      request_(std::move(request)),
      listener_(listener),
      options_(options),
      start_(worker.clock().Now()),
      alive_(std::make_shared<bool>(true)) {}

std::unique_ptr<UpstreamCall> UpstreamCall::Start(
    Worker& worker, const UpstreamAddress& address, UpstreamRequest request,
    UpstreamCallListener* listener, const Options& options) {
  std::unique_ptr<UpstreamCall> call(
      new UpstreamCall(worker, std::move(request), listener, options));
  UpstreamCall* self = call.get();
  auto fail_later = [self, &worker](std::string why) {
    std::weak_ptr<bool> alive = self->alive_;
    worker.Post([self, alive, why = std::move(why)]() mutable {
      if (alive.lock() == nullptr) return;
      self->Finish(Code(absl::StatusCode::kUnavailable), std::move(why),
                   /*transport_failure=*/true, false);
    });
  };
  std::string error;
  UpstreamConnection* conn = worker.UpstreamFor(address, &error, options.use);
  if (conn == nullptr) {
    fail_later(std::move(error));
    return call;
  }
  const UpstreamRequestHeaders headers(
      self->request_.path, self->request_.headers, address.authority,
      self->request_.deadline == absl::InfiniteFuture()
          ? absl::InfiniteDuration()
          : self->request_.deadline - worker.clock().Now(),
      address.tls != nullptr);
  if (self->request_.deadline != absl::InfiniteFuture()) {
    self->deadline_timer_ = worker.loop().AddTimer(
        self->request_.deadline - worker.clock().Now(), [self] {
          self->deadline_timer_ = 0;
          self->Detach(/*reset=*/true);
          self->Finish(Code(absl::StatusCode::kDeadlineExceeded),
                       "deadline exceeded in the sidecar", false,
                       /*deadline=*/true);
        });
  }
  const int32_t id = conn->Submit(self, headers.data(), headers.size());
  if (id < 0) {
    fail_later(std::string("cannot open upstream stream: ") +
               nghttp2_strerror(id));
    return call;
  }
  self->conn_ = conn;
  self->stream_id_ = id;
  conn->MarkDirty();
  return call;
}

UpstreamCall::~UpstreamCall() {
  *alive_ = false;
  if (deadline_timer_ != 0) worker_.loop().CancelTimer(deadline_timer_);
  Detach(/*reset=*/true);
}

void UpstreamCall::Detach(bool reset) {
  if (conn_ == nullptr) return;
  if (reset) conn_->Reset(stream_id_, NGHTTP2_CANCEL);
  conn_->Forget(this, stream_id_);
  conn_ = nullptr;
  stream_id_ = -1;
}

ssize_t UpstreamCall::ReadRequestBody(size_t length, uint32_t* flags) {
  const size_t n = std::min(length, request_.body.size() - request_offset_);
  if (request_offset_ + n == request_.body.size()) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
  }
  return static_cast<ssize_t>(n);
}

bool UpstreamCall::CopyRequestBody(size_t length, OutputBuffer& out) {
  if (request_.body.size() - request_offset_ < length) return false;
  out.Append(request_.body.data() + request_offset_, length);
  request_offset_ += length;
  return true;
}

void UpstreamCall::AddResponseHeader(std::string_view name,
                                     std::string_view value) {
  (headers_done_ ? trailers_ : headers_).emplace_back(name, value);
}

void UpstreamCall::OnResponseHeadersDone(bool end_stream) {
  if (headers_done_) {
    OnResponseEnd();
    return;
  }
  const ResponseHead head = ParseResponseHead(headers_);
  if (head.kind == ResponseHead::Kind::kInformational) {
    headers_.clear();
    return;
  }
  headers_done_ = true;
  if (head.kind == ResponseHead::Kind::kHttpError) {
    Detach(/*reset=*/!end_stream);
    Finish(head.grpc_code, head.message, true, false);
    return;
  }
  if (end_stream) OnResponseEnd();
}

void UpstreamCall::OnResponseData(const uint8_t* data, size_t len) {
  if (conn_ != nullptr) {
    nghttp2_session_consume_stream(conn_->session(), stream_id_, len);
    conn_->MarkDirty();
  }
  received_ += len;
  if (received_ > options_.max_response_bytes + 5) {
    Detach(/*reset=*/true);
    too_large_ = true;
    body_.clear();
    body_.shrink_to_fit();
    Finish(Code(absl::StatusCode::kResourceExhausted),
           "upstream response larger than the sidecar keeps for sharing", false,
           false);
    return;
  }
  if (options_.capture) body_.append(reinterpret_cast<const char*>(data), len);
  if (!options_.deliver_messages) return;
  pending_.append(reinterpret_cast<const char*>(data), len);
  size_t offset = 0;
  while (pending_.size() - offset >= 5) {
    const auto* p = reinterpret_cast<const uint8_t*>(pending_.data() + offset);
    const uint64_t length = (uint64_t{p[1]} << 24) | (uint64_t{p[2]} << 16) |
                            (uint64_t{p[3]} << 8) | uint64_t{p[4]};
    if (pending_.size() - offset - 5 < length) break;
    listener_->OnMessage(std::string_view(pending_).substr(offset + 5, length));
    if (finished_) return;
    offset += 5 + length;
  }
  pending_.erase(0, offset);
}

void UpstreamCall::OnResponseEnd() {
  if (finished_) return;
  const HeaderList& status_source = trailers_.empty() ? headers_ : trailers_;
  const int code =
      ParseGrpcStatus(FindHeader(status_source, "grpc-status")).value_or(2);
  std::string message(FindHeader(status_source, "grpc-message"));
  Finish(code, std::move(message), false, false);
}

void UpstreamCall::OnUpstreamClosed(uint32_t error_code) {
  conn_ = nullptr;
  stream_id_ = -1;
  if (finished_) return;
  // Refused unseen (REFUSED_STREAM, or above the last id of a GOAWAY): the
  // upstream never processed it, so it is not the endpoint's failure.
  refused_ = error_code == NGHTTP2_REFUSED_STREAM && !headers_done_;
  Finish(GrpcCodeFromHttp2Error(error_code), "upstream reset the stream", true,
         false);
}

void UpstreamCall::OnUpstreamFailed(std::string_view why) {
  conn_ = nullptr;
  stream_id_ = -1;
  if (finished_) return;
  Finish(Code(absl::StatusCode::kUnavailable),
         "upstream connection failed: " + std::string(why), true, false);
}

void UpstreamCall::OnResponseOverLimit(std::string_view why) {
  conn_ = nullptr;
  stream_id_ = -1;
  // Nothing of the refused response is kept or shared: callers get the
  // sidecar's own INTERNAL answer.
  headers_.clear();
  trailers_.clear();
  headers_done_ = false;
  Finish(Code(absl::StatusCode::kInternal), std::string(why), false, false);
}

void UpstreamCall::Finish(int code, std::string message, bool transport_failure,
                          bool deadline) {
  if (finished_) return;
  finished_ = true;
  if (deadline_timer_ != 0) {
    worker_.loop().CancelTimer(deadline_timer_);
    deadline_timer_ = 0;
  }
  UpstreamCallResult result;
  result.grpc_code = code;
  result.grpc_message = message;
  result.transport_failure = transport_failure;
  result.deadline_exceeded = deadline;
  result.refused = refused_;
  result.too_large = too_large_;
  result.duration = worker_.clock().Now() - start_;
  if (options_.capture) {
    auto response = std::make_shared<CapturedResponse>();
    response->grpc_code = code;
    const bool from_upstream =
        !transport_failure && !deadline && headers_done_ &&
        (!trailers_.empty() || !FindHeader(headers_, "grpc-status").empty());
    // Finished: nothing reads the headers again, so they move.
    if (from_upstream && trailers_.empty()) {
      response->headers = std::move(headers_);  // upstream trailers-only
      response->trailers_only = true;
    } else if (from_upstream) {
      response->headers = std::move(headers_);
      response->body = std::move(body_);
      response->trailers = std::move(trailers_);
    } else {
      response->headers = {{":status", "200"},
                           {"content-type", "application/grpc"},
                           {"grpc-status", std::to_string(code)},
                           {"grpc-message", PercentEncode(message)}};
      response->trailers_only = true;
    }
    result.response = std::move(response);
  }
  listener_->OnFinish(result);  // may destroy this
}

}  // namespace bulwark::net
