#include "sidecar/net/h2_connection.h"

#include <errno.h>
#include <event2/event.h>
#include <unistd.h>

#include "sidecar/net/worker.h"

namespace bulwark::net {
namespace {
// Stop pulling frames from nghttp2 while this much is waiting for the socket: a peer that
// does not read makes nghttp2 hold the data (and flow control stops the rest).
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
  if (fd_ >= 0) close(fd_);
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
  for (int i = 0; i < kMaxReadsPerEvent && !closed_; ++i) {
    const ssize_t n = read(fd_, buf, cap);
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
    const ssize_t used = nghttp2_session_mem_recv(session_, buf, static_cast<size_t>(n));
    if (used < 0) {
      // nghttp2 queued a GOAWAY for protocol errors it detected; send it, then close.
      Flush();
      Close(nghttp2_strerror(static_cast<int>(used)));
      return;
    }
    if (static_cast<size_t>(n) < cap) break;
  }
  MarkDirty();
}

void H2Connection::Flush() {
  dirty_ = false;
  if (closed_) return;
  if (connecting_) return;  // frames stay queued in nghttp2 until connected
  while (out_.size() - out_offset_ < kMaxPendingOut) {
    const uint8_t* data = nullptr;
    const ssize_t n = nghttp2_session_mem_send(session_, &data);
    if (n < 0) {
      Close(nghttp2_strerror(static_cast<int>(n)));
      return;
    }
    if (n == 0) break;
    out_.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
  }
  WriteOut();
  if (closed_) return;
  if (out_offset_ == out_.size() && nghttp2_session_want_read(session_) == 0 &&
      nghttp2_session_want_write(session_) == 0) {
    Close("session finished");
  }
}

void H2Connection::WriteOut() {
  while (out_offset_ < out_.size()) {
    const ssize_t n = write(fd_, out_.data() + out_offset_, out_.size() - out_offset_);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      Close("write failed");
      return;
    }
    out_offset_ += static_cast<size_t>(n);
  }
  if (out_offset_ == out_.size()) {
    out_.clear();
    out_offset_ = 0;
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
    self->Flush();
    return;
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
