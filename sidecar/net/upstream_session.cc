#include "sidecar/net/upstream_session.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "sidecar/net/tls.h"
#include "sidecar/net/worker.h"

namespace bulwark::net {
namespace {

UpstreamPeer* PeerOf(void* conn, int32_t id) {
  return static_cast<UpstreamPeer*>(
      static_cast<UpstreamConnection*>(conn)->StreamData(id));
}

}  // namespace

// nghttp2 client callbacks; user_data is the UpstreamConnection.
struct UpstreamCallbacks {
  static int OnBeginHeaders(nghttp2_session*, const nghttp2_frame* frame,
                            void* user_data) {
    // HTTP/2 never interleaves header blocks on a connection (HEADERS and its
    // CONTINUATIONs are contiguous), so one count per connection suffices.
    if (frame->hd.type == NGHTTP2_HEADERS) {
      static_cast<UpstreamConnection*>(user_data)->header_block_bytes_ = 0;
    }
    return 0;
  }

  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame,
                      const uint8_t* name, size_t namelen, const uint8_t* value,
                      size_t valuelen, uint8_t, void* user_data) {
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    UpstreamPeer* peer = PeerOf(user_data, frame->hd.stream_id);
    if (peer == nullptr) return 0;
    auto* self = static_cast<UpstreamConnection*>(user_data);
    // RFC 9113 6.5.2's measure, as for requests: name, value and 32 bytes.
    self->header_block_bytes_ += namelen + valuelen + 32;
    const uint32_t limit = self->worker().options().max_header_list_bytes;
    if (self->header_block_bytes_ > limit) {
      // Past the limit the sidecar keeps nothing more of this response: the
      // upstream stream is reset (nghttp2 does so, INTERNAL_ERROR, on the
      // return value below, and skips the rest of the block) and the call
      // ends with INTERNAL (SPEC section 11).
      self->Forget(peer, frame->hd.stream_id);
      peer->OnResponseOverLimit(
          absl::StrCat("response header list exceeds ", limit, " bytes"));
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    peer->AddResponseHeader(
        std::string_view(reinterpret_cast<const char*>(name), namelen),
        std::string_view(reinterpret_cast<const char*>(value), valuelen));
    return 0;
  }

  static int OnFrameRecv(nghttp2_session*, const nghttp2_frame* frame,
                         void* user_data) {
    const bool end_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    switch (frame->hd.type) {
      case NGHTTP2_HEADERS:
        if (UpstreamPeer* peer = PeerOf(user_data, frame->hd.stream_id)) {
          peer->OnResponseHeadersDone(end_stream);
        }
        break;
      case NGHTTP2_DATA:
        if (end_stream) {
          if (UpstreamPeer* peer = PeerOf(user_data, frame->hd.stream_id)) {
            peer->OnResponseEnd();
          }
        }
        break;
      case NGHTTP2_SETTINGS:
        if ((frame->hd.flags & NGHTTP2_FLAG_ACK) == 0) {
          static_cast<UpstreamConnection*>(user_data)->settings_received_ =
              true;
        }
        break;
      case NGHTTP2_GOAWAY:
        // No new streams here; the worker opens a fresh connection for the next
        // call.
        static_cast<UpstreamConnection*>(user_data)->goaway_received_ = true;
        break;
      default:
        break;
    }
    return 0;
  }

  static int OnDataChunk(nghttp2_session* session, uint8_t, int32_t stream_id,
                         const uint8_t* data, size_t len, void* user_data) {
    // As downstream: the connection window is given back at once, the stream's
    // only when its client took the bytes, so a client that stops reading
    // stalls its own stream and not every call sharing this upstream
    // connection.
    nghttp2_session_consume_connection(session, len);
    static_cast<UpstreamConnection*>(user_data)->MarkDirty();
    if (UpstreamPeer* peer = PeerOf(user_data, stream_id))
      peer->OnResponseData(data, len);
    return 0;
  }

  static int OnStreamClose(nghttp2_session*, int32_t stream_id,
                           uint32_t error_code, void* user_data) {
    auto* self = static_cast<UpstreamConnection*>(user_data);
    if (UpstreamPeer* peer = PeerOf(user_data, stream_id)) {
      self->SetStreamData(stream_id, nullptr);
      self->streams_.erase(peer);
      peer->OnUpstreamClosed(error_code);
    }
    if (self->open_streams_ > 0 && --self->open_streams_ == 0) {
      self->idle_since_ = self->worker_.clock().Now();
      self->worker_.OnUpstreamIdle(self);
    }
    return 0;
  }

  static ssize_t ReadRequest(nghttp2_session*, int32_t stream_id, uint8_t*,
                             size_t length, uint32_t* flags,
                             nghttp2_data_source*, void* user_data) {
    UpstreamPeer* peer = PeerOf(user_data, stream_id);
    // Nobody will send the rest of this request (the caller left, or the
    // upstream already answered): reset the stream rather than defer it
    // forever, which would keep it, and its connection, open.
    if (peer == nullptr) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    const ssize_t n = peer->ReadRequestBody(length, flags);
    if (n >= 0) *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    return n;
  }

  static int SendData(nghttp2_session*, nghttp2_frame* frame,
                      const uint8_t* framehd, size_t length,
                      nghttp2_data_source*, void* user_data) {
    UpstreamPeer* peer = PeerOf(user_data, frame->hd.stream_id);
    return static_cast<UpstreamConnection*>(user_data)->AppendDataFrame(
        frame, framehd, length, [peer](size_t n, OutputBuffer& out) {
          return peer != nullptr && peer->CopyRequestBody(n, out);
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
      nghttp2_session_callbacks_set_send_data_callback(cb, &SendData);
      return cb;
    }();
    return callbacks;
  }
};

UpstreamConnection::UpstreamConnection(Worker& worker, int fd,
                                       const UpstreamAddress& address,
                                       UpstreamUse use, uint64_t id)
    : H2Connection(worker, fd), key_(address.key), use_(use), id_(id) {}

uint32_t UpstreamConnection::max_streams() const {
  return settings_received_
             ? nghttp2_session_get_remote_settings(
                   session_, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)
             : assumed_max_streams_;
}

UpstreamConnection::~UpstreamConnection() = default;

void UpstreamConnection::Retire() {
  if (closed() || retired_) return;
  retired_ = true;
  // With no stream left nghttp2 then wants neither to read nor to write once
  // the GOAWAY is out, and Flush closes the connection.
  nghttp2_submit_goaway(session(), NGHTTP2_FLAG_NONE,
                        nghttp2_session_get_last_proc_stream_id(session()),
                        NGHTTP2_NO_ERROR, nullptr, 0);
  MarkDirty();
}

UpstreamConnection* UpstreamConnection::Connect(Worker& worker,
                                                const UpstreamAddress& address,
                                                UpstreamUse use, uint64_t id,
                                                uint32_t assumed_max_streams,
                                                std::string* error) {
  const int fd = socket(address.addr.ss_family,
                        SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error =
        absl::StrCat("upstream ", address.key, ": socket: ", strerror(errno));
    return nullptr;
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  const int rc = connect(fd, reinterpret_cast<const sockaddr*>(&address.addr),
                         address.addr_len);
  if (rc != 0 && errno != EINPROGRESS) {
    *error =
        absl::StrCat("upstream ", address.key, ": connect: ", strerror(errno));
    close(fd);
    return nullptr;
  }
  auto* conn = new UpstreamConnection(worker, fd, address, use, id);
  conn->assumed_max_streams_ = std::max<uint32_t>(1, assumed_max_streams);
  if (address.tls != nullptr) {
    SSL* ssl = address.tls->NewConnection(fd, address.host);
    if (ssl == nullptr) {
      *error = "upstream " + address.key + ": " + TlsErrorString();
      delete conn;
      return nullptr;
    }
    conn->SetTls(ssl);
  }
  nghttp2_option* option;
  nghttp2_option_new(&option);
  nghttp2_option_set_no_auto_window_update(option, 1);
  // As downstream: what gRPC accepts passes (metadata values with leading or
  // trailing spaces).
  nghttp2_option_set_no_rfc9113_leading_and_trailing_ws_validation(option, 1);
  nghttp2_option_set_peer_max_concurrent_streams(option,
                                                 conn->assumed_max_streams_);
  nghttp2_session_client_new3(&conn->session_, UpstreamCallbacks::Get(), conn,
                              option, worker.h2_mem());
  nghttp2_option_del(option);
  const WorkerOptions& o = worker.options();
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, o.stream_window_bytes},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, o.max_header_list_bytes},
  };
  nghttp2_submit_settings(conn->session_, NGHTTP2_FLAG_NONE, settings,
                          std::size(settings));
  nghttp2_session_set_local_window_size(
      conn->session_, NGHTTP2_FLAG_NONE, 0,
      static_cast<int32_t>(o.connection_window_bytes));
  if (rc == 0) {
    conn->connected_ = true;
    conn->StartReading();
  } else {
    conn->WaitForConnect();
  }
  return conn;
}

void UpstreamConnection::OnWritableFirstTime() {
  int err = 0;
  socklen_t len = sizeof(err);
  getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) {
    Close(absl::StrCat("connect to ", key_, " failed: ", strerror(err)));
    return;
  }
  connected_ = true;
}

int32_t UpstreamConnection::Submit(UpstreamPeer* stream,
                                   const nghttp2_nv* headers, size_t count) {
  nghttp2_data_provider provider{};
  provider.read_callback = &UpstreamCallbacks::ReadRequest;
  const int32_t id = nghttp2_submit_request(session_, nullptr, headers, count,
                                            &provider, stream);
  if (id >= 0) {
    NoteStreamData(id, stream);
    streams_.insert(stream);
    ++open_streams_;
  }
  return id;
}

void UpstreamConnection::Reset(int32_t stream_id, uint32_t error_code) {
  nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, stream_id, error_code);
  MarkDirty();
}

void UpstreamConnection::Forget(UpstreamPeer* stream, int32_t stream_id) {
  SetStreamData(stream_id, nullptr);
  streams_.erase(stream);
}

void UpstreamConnection::ResumeRequest(int32_t stream_id) {
  nghttp2_session_resume_data(session_, stream_id);
  MarkDirty();
}

void UpstreamConnection::OnClosed(std::string_view why) {
  // Streams still open lose their upstream: each answers its client.
  auto streams = std::move(streams_);
  streams_.clear();
  for (UpstreamPeer* stream : streams) stream->OnUpstreamFailed(why);
  worker_.OnUpstreamClosed(this, !connected_);
}

}  // namespace bulwark::net
