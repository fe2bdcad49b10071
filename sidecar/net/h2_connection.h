// H2Connection: what a downstream (server) and an upstream (client) HTTP/2
// connection have in common: a non-blocking socket, an nghttp2 session fed with
// mem_recv, and an output buffer filled with mem_send and written once per loop
// iteration (Worker's flush), so every frame a loop iteration produced for this
// connection leaves in one write.
//
// With TLS (SetTls), the same path reads and writes through OpenSSL on the
// socket; frames wait in nghttp2 until the handshake is done.
//
// Thread-safety: owned by one Worker, used only on its thread. Cost per read:
// one read() into the worker's scratch buffer, one mem_recv; per flush: one
// write() in the common case.
#ifndef BULWARK_SIDECAR_NET_H2_CONNECTION_H_
#define BULWARK_SIDECAR_NET_H2_CONNECTION_H_

#include <nghttp2/nghttp2.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

struct event;
typedef struct ssl_st SSL;

namespace bulwark::net {

class Worker;

// A byte queue with cheap consumption from the front; bounded by the HTTP/2
// windows the sidecar advertises, never by itself.
class ByteQueue {
 public:
  size_t size() const { return data_.size() - offset_; }
  bool empty() const { return size() == 0; }
  const uint8_t* data() const {
    return reinterpret_cast<const uint8_t*>(data_.data()) + offset_;
  }
  void Append(const uint8_t* bytes, size_t len) {
    data_.append(reinterpret_cast<const char*>(bytes), len);
  }
  void Consume(size_t len) {
    offset_ += len;
    if (offset_ == data_.size()) {
      data_.clear();
      offset_ = 0;
    } else if (offset_ > 64 * 1024 && offset_ * 2 > data_.size()) {
      data_.erase(0, offset_);
      offset_ = 0;
    }
  }
  void Clear() {
    data_.clear();
    offset_ = 0;
  }
  // Moves everything out (for whole-message capture).
  std::string Take() {
    std::string out = offset_ == 0 ? std::move(data_) : data_.substr(offset_);
    Clear();
    return out;
  }

 private:
  std::string data_;
  size_t offset_ = 0;
};

class H2Connection {
 public:
  H2Connection(Worker& worker, int fd);
  virtual ~H2Connection();
  H2Connection(const H2Connection&) = delete;
  H2Connection& operator=(const H2Connection&) = delete;

  nghttp2_session* session() const { return session_; }
  bool closed() const { return closed_; }
  Worker& worker() { return worker_; }

  // Asks the worker to flush this connection at the end of the loop iteration.
  void MarkDirty();
  // Writes what nghttp2 has to send (called by the worker's flush). Closes the
  // connection when nghttp2 wants neither to read nor to write.
  void Flush();
  // Closes the socket and the session now; the object is deleted by the worker
  // later.
  void Close(std::string_view why);
  // Speaks TLS on the socket from now on (takes ownership); set before any I/O.
  void SetTls(SSL* ssl) { ssl_ = ssl; }

 protected:
  // Starts watching the socket for reads.
  void StartReading();
  // For a non-blocking connect in progress: OnWritableFirstTime runs when it
  // completes.
  void WaitForConnect();
  // Subclass cleanup when the connection closes (streams get their endings
  // here).
  virtual void OnClosed(std::string_view why) = 0;
  // Called once a non-blocking connect finished (upstream only).
  virtual void OnWritableFirstTime() {}

  Worker& worker_;
  int fd_;
  nghttp2_session* session_ = nullptr;
  bool connecting_ = false;

 private:
  static void OnReadEvent(int fd, short what, void* arg);
  static void OnWriteEvent(int fd, short what, void* arg);
  void HandleReadable();
  void WriteOut();
  void ArmWrite();
  // Drives the TLS handshake; true once it is done (false: waiting, or closed).
  bool Handshake();

  event* read_event_ = nullptr;
  event* write_event_ = nullptr;
  bool write_armed_ = false;
  bool dirty_ = false;
  bool closed_ = false;
  SSL* ssl_ = nullptr;
  bool handshake_done_ = false;
  std::string out_;
  size_t out_offset_ = 0;
};

}  // namespace bulwark::net

#endif  // BULWARK_SIDECAR_NET_H2_CONNECTION_H_
