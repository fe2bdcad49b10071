#include "sidecar/net/h2_connection.h"

#include <errno.h>
#include <event2/event.h>
#include <openssl/ssl.h>
#include <unistd.h>

#include <algorithm>
#include <string>

#include "sidecar/net/tls.h"
#include "sidecar/net/worker.h"

namespace bulwark::net {
namespace {
// Stop pulling frames from nghttp2 while this much is waiting for the socket: a
// peer that does not read makes nghttp2 hold the data (and flow control stops
// the rest).
constexpr size_t kMaxPendingOut = 256 * 1024;
// Reads per readable event before yielding to other connections.
constexpr int kMaxReadsPerEvent = 4;
}  // namespace

H2Connection::H2Connection(Worker& worker, int fd) : worker_(worker), fd_(fd) {
  read_event_ = event_new(worker_.loop().base(), fd_, EV_READ | EV_PERSIST,
                          &H2Connection::OnReadEvent, this);
  write_event_ = event_new(worker_.loop().base(), fd_, EV_WRITE | EV_PERSIST,
                           &H2Connection::OnWriteEvent, this);
}

H2Connection::~H2Connection() {
  if (read_event_ != nullptr) event_free(read_event_);
  if (write_event_ != nullptr) event_free(write_event_);
  if (session_ != nullptr) nghttp2_session_del(session_);
  if (ssl_ != nullptr) SSL_free(ssl_);
  if (fd_ >= 0) close(fd_);
}

void H2Connection::ArmWrite() {
  if (!write_armed_) {
    event_add(write_event_, nullptr);
    write_armed_ = true;
  }
}

bool H2Connection::Handshake() {
  if (handshake_done_) return true;
  const int rc = SSL_do_handshake(ssl_);
  if (rc == 1) {
    handshake_done_ = true;
    const unsigned char* alpn = nullptr;
    unsigned int alpn_len = 0;
    SSL_get0_alpn_selected(ssl_, &alpn, &alpn_len);
    // A client that sent no ALPN speaks h2 by prior knowledge; anything else is
    // refused.
    if (alpn_len != 0 && std::string_view(reinterpret_cast<const char*>(alpn),
                                          alpn_len) != "h2") {
      Close("TLS peer did not negotiate h2");
      return false;
    }
    if (alpn_len == 0 && SSL_is_server(ssl_) == 0) {
      Close("TLS upstream did not negotiate h2 (ALPN)");
      return false;
    }
    return true;
  }
  switch (SSL_get_error(ssl_, rc)) {
    case SSL_ERROR_WANT_READ:
      if (write_armed_) {  // nothing to write until the peer answers
        event_del(write_event_);
        write_armed_ = false;
      }
      return false;
    case SSL_ERROR_WANT_WRITE:
      ArmWrite();
      return false;
    default:
      Close("TLS handshake failed: " + TlsErrorString());
      return false;
  }
}

void H2Connection::StartReading() { event_add(read_event_, nullptr); }

void H2Connection::WaitForConnect() {
  connecting_ = true;
  event_add(write_event_, nullptr);
  write_armed_ = true;
}

void H2Connection::MarkDirty() {
  if (dirty_ || closed_) return;
  dirty_ = true;
  worker_.AddDirty(this);
}

void H2Connection::OnReadEvent(int, short, void* arg) {
  static_cast<H2Connection*>(arg)->HandleReadable();
}

void H2Connection::HandleReadable() {
  uint8_t* buf = worker_.scratch();
  const size_t cap = worker_.scratch_size();
  if (ssl_ != nullptr && !Handshake()) return;
  for (int i = 0; (ssl_ != nullptr || i < kMaxReadsPerEvent) && !closed_; ++i) {
    ssize_t n;
    if (ssl_ != nullptr) {
      // Loop until OpenSSL wants more from the socket: bytes it already
      // decrypted and buffered would not wake the read event again.
      const int rc = SSL_read(ssl_, buf, static_cast<int>(cap));
      if (rc <= 0) {
        const int err = SSL_get_error(ssl_, rc);
        if (err == SSL_ERROR_WANT_READ) break;
        if (err == SSL_ERROR_WANT_WRITE) {
          ArmWrite();
          break;
        }
        Close(err == SSL_ERROR_ZERO_RETURN ? "peer closed TLS"
                                           : "TLS read failed");
        return;
      }
      n = rc;
    } else {
      n = read(fd_, buf, cap);
    }
    if (n == 0) {
      Close("peer closed the connection");
      return;
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno == EINTR) continue;
      Close("read failed");
      return;
    }
    const ssize_t used =
        nghttp2_session_mem_recv(session_, buf, static_cast<size_t>(n));
    if (used < 0) {
      // nghttp2 queued a GOAWAY for protocol errors it detected; send it, then
      // close.
      Flush();
      Close(nghttp2_strerror(static_cast<int>(used)));
      return;
    }
    if (ssl_ == nullptr && static_cast<size_t>(n) < cap) break;
  }
  MarkDirty();
}

void ByteQueue::Append(const uint8_t* bytes, size_t len) {
  if (len == 0) return;
  if (chunks_.empty() ||
      chunks_.back().capacity() - chunks_.back().size() < len) {
    last_chunk_capacity_ =
        std::max(len, std::min(kMaxChunk, 2 * last_chunk_capacity_));
    chunks_.emplace_back();
    chunks_.back().reserve(last_chunk_capacity_);
  }
  chunks_.back().append(reinterpret_cast<const char*>(bytes), len);
  size_ += len;
}

void ByteQueue::MoveTo(size_t len, std::string& out) {
  len = std::min(len, size_);
  size_ -= len;
  while (len > 0) {
    std::string& head = chunks_.front();
    const size_t n = std::min(len, head.size() - head_offset_);
    out.append(head, head_offset_, n);
    head_offset_ += n;
    len -= n;
    if (head_offset_ == head.size()) {
      head_offset_ = 0;
      if (chunks_.size() == 1) {
        head.clear();  // keep its memory for the next bytes
      } else {
        chunks_.erase(chunks_.begin());
      }
    }
  }
}

void ByteQueue::MoveTo(size_t len, OutputBuffer& out) {
  len = std::min(len, size_);
  size_ -= len;
  while (len > 0) {
    std::string& head = chunks_.front();
    const size_t n = std::min(len, head.size() - head_offset_);
    len -= n;
    if (head_offset_ + n < head.size()) {  // the chunk goes on
      out.Append(head.data() + head_offset_, n);
      head_offset_ += n;
      continue;
    }
    // The rest of the chunk: large, it is handed over from where the frame
    // starts in it; small, copied (and a lone chunk's memory kept).
    if (n >= OutputBuffer::kAdoptMinBytes) {
      out.Adopt(std::move(head), head_offset_);
    } else {
      out.Append(head.data() + head_offset_, n);
    }
    head_offset_ = 0;
    if (chunks_.size() == 1) {
      head.clear();
    } else {
      chunks_.erase(chunks_.begin());
    }
  }
}

void OutputBuffer::Append(const char* data, size_t len) {
  if (len == 0) return;
  if (!tail_open_) {
    segments_.emplace_back();
    tail_open_ = true;
  }
  segments_.back().bytes.append(data, len);
  size_ += len;
}

void OutputBuffer::Adopt(std::string bytes, size_t from) {
  if (bytes.size() <= from) return;
  size_ += bytes.size() - from;
  segments_.push_back({.bytes = std::move(bytes), .start = from});
  tail_open_ = false;
}

std::string_view OutputBuffer::Last(size_t len) const {
  if (!tail_open_) return {};
  const Segment& tail = segments_.back();
  const size_t written = head_ + 1 == segments_.size() ? head_offset_ : 0;
  if (tail.bytes.size() - tail.start - written < len) return {};
  return std::string_view(tail.bytes).substr(tail.bytes.size() - len);
}

void OutputBuffer::DropLast(size_t len) {
  std::string& tail = segments_.back().bytes;
  tail.resize(tail.size() - len);
  size_ -= len;
}

int OutputBuffer::Gather(iovec* iov, int max) const {
  int count = 0;
  size_t offset = head_offset_;
  for (size_t i = head_; i < segments_.size() && count < max; ++i) {
    const Segment& segment = segments_[i];
    const size_t begin = segment.start + offset;
    if (segment.bytes.size() > begin) {
      iov[count].iov_base = const_cast<char*>(segment.bytes.data() + begin);
      iov[count].iov_len = segment.bytes.size() - begin;
      ++count;
    }
    offset = 0;
  }
  return count;
}

void OutputBuffer::Consume(size_t n) {
  size_ -= n;
  while (n > 0) {
    Segment& segment = segments_[head_];
    const size_t left = segment.bytes.size() - segment.start - head_offset_;
    if (n < left) {
      head_offset_ += n;
      return;
    }
    n -= left;
    head_offset_ = 0;
    // Written: a handed-over chunk's memory goes now. (The first segment's is
    // kept for the next bytes.)
    if (head_ > 0) std::string().swap(segment.bytes);
    ++head_;
  }
  if (size_ != 0 && head_ >= kCompactAfter && 2 * head_ >= segments_.size()) {
    // A connection whose output never drains entirely (a steady stream to a
    // slow reader) would keep every written segment's slot: drop them.
    segments_.erase(segments_.begin(), segments_.begin() + head_);
    head_ = 0;
  }
  if (size_ == 0) {
    segments_.resize(1);
    segments_[0].bytes.clear();
    segments_[0].start = 0;
    head_ = 0;
    head_offset_ = 0;
    tail_open_ = true;
  }
}

void ByteQueue::Clear() {
  chunks_.clear();
  head_offset_ = 0;
  size_ = 0;
}

std::string ByteQueue::Take() {
  std::string out;
  if (chunks_.size() == 1 && head_offset_ == 0) {
    out = std::move(chunks_.front());
  } else {
    out.reserve(size_);
    MoveTo(size_, out);
  }
  Clear();
  return out;
}

void ByteQueue::Assign(std::string bytes) {
  Clear();
  if (bytes.empty()) return;
  size_ = bytes.size();
  last_chunk_capacity_ = bytes.capacity();
  chunks_.push_back(std::move(bytes));
}

int H2Connection::AppendDataFrame(
    const nghttp2_frame* frame, const uint8_t* framehd, size_t length,
    absl::FunctionRef<bool(size_t, OutputBuffer&)> fill) {
  if (out_.size() >= kMaxPendingOut) {
    // nghttp2 keeps the frame and asks again on the next mem_send (which then
    // returns 0 for now); Flush writes first, as it does at the cap below.
    send_blocked_ = true;
    return NGHTTP2_ERR_WOULDBLOCK;
  }
  const size_t padlen = frame->data.padlen;
  const size_t header_bytes = padlen > 0 ? 10 : 9;
  out_.Append(reinterpret_cast<const char*>(framehd), 9);
  if (padlen > 0) {
    const char pad_length = static_cast<char>(padlen - 1);
    out_.Append(&pad_length, 1);
  }
  const size_t before = out_.size();
  // The sources check that they hold `length` bytes before moving any, so a
  // refusal leaves only the header to take back.
  if (!fill(length, out_)) {
    out_.DropLast(header_bytes);
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  if (out_.size() - before != length) {
    // Cannot be taken back: the connection fails (mem_send returns the error
    // and Flush closes it).
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  }
  if (padlen > 1) {
    static constexpr char kZeros[256] = {};
    out_.Append(kZeros, padlen - 1);
  }
  return 0;
}

void H2Connection::Flush() {
  dirty_ = false;
  if (closed_) return;
  if (connecting_) return;  // frames stay queued in nghttp2 until connected
  if (ssl_ != nullptr && !handshake_done_) return;  // ... and until TLS is up
  while (true) {
    bool capped = false;
    while (true) {
      if (out_.size() >= kMaxPendingOut) {
        capped = true;
        break;
      }
      const uint8_t* data = nullptr;
      const ssize_t n = nghttp2_session_mem_send(session_, &data);
      if (n < 0) {
        Close(nghttp2_strerror(static_cast<int>(n)));
        return;
      }
      if (n == 0) {
        // A DATA frame refused at the cap (AppendDataFrame) waits in nghttp2.
        capped = send_blocked_;
        send_blocked_ = false;
        break;
      }
      out_.Append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
    }
    WriteOut();
    if (closed_) return;
    // Stopped at the cap and the socket took everything: nghttp2 may hold more
    // frames. (If the socket is full, the write event resumes the flush.)
    if (!capped || !out_.empty()) break;
  }
  if (out_.empty() && nghttp2_session_want_read(session_) == 0 &&
      nghttp2_session_want_write(session_) == 0) {
    Close("session finished");
  }
}

void H2Connection::WriteOut() {
  // One writev takes up to this many segments (a frame header and its
  // handed-over payload alternate).
  constexpr int kMaxIov = 32;
  while (!out_.empty()) {
    iovec iov[kMaxIov];
    const int count = out_.Gather(iov, ssl_ != nullptr ? 1 : kMaxIov);
    if (ssl_ != nullptr) {
      const int rc =
          SSL_write(ssl_, iov[0].iov_base, static_cast<int>(iov[0].iov_len));
      if (rc <= 0) {
        const int err = SSL_get_error(ssl_, rc);
        if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) break;
        Close("TLS write failed");
        return;
      }
      out_.Consume(static_cast<size_t>(rc));
      continue;
    }
    const ssize_t n = count == 1 ? write(fd_, iov[0].iov_base, iov[0].iov_len)
                                 : writev(fd_, iov, count);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      Close("write failed");
      return;
    }
    out_.Consume(static_cast<size_t>(n));
  }
  if (out_.empty()) {
    if (write_armed_) {
      event_del(write_event_);
      write_armed_ = false;
    }
  } else if (!write_armed_) {
    event_add(write_event_, nullptr);
    write_armed_ = true;
  }
}

void H2Connection::OnWriteEvent(int, short, void* arg) {
  auto* self = static_cast<H2Connection*>(arg);
  if (self->connecting_) {
    self->connecting_ = false;
    event_del(self->write_event_);
    self->write_armed_ = false;
    self->OnWritableFirstTime();
    if (self->closed_) return;
    self->StartReading();
    if (self->ssl_ != nullptr) {
      self->ArmWrite();  // the client hello goes out on the next writable event
      return;
    }
    self->Flush();
    return;
  }
  if (self->ssl_ != nullptr && !self->handshake_done_) {
    if (!self->Handshake()) return;
    self->HandleReadable();  // application bytes that came with the last
                             // handshake flight
    if (self->closed_) return;
  }
  self->WriteOut();
  if (!self->closed_) self->Flush();
}

void H2Connection::Close(std::string_view why) {
  if (closed_) return;
  closed_ = true;
  event_del(read_event_);
  event_del(write_event_);
  close(fd_);
  fd_ = -1;
  OnClosed(why);
  worker_.DeleteLater(this);
}

}  // namespace bulwark::net
