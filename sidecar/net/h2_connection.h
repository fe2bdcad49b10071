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
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/functional/function_ref.h"

struct event;
typedef struct ssl_st SSL;

namespace bulwark::net {

class Worker;

// The bytes of one stream direction waiting for the other side's window: a
// short list of chunks, so appending never moves what is already queued (a
// growing contiguous buffer copied a 64 KiB message about twice over as it
// grew). A lone chunk's memory is reused once it is consumed. Bounded by the
// HTTP/2 windows the sidecar advertises, never by itself.
// A connection's bytes waiting for the socket: frames nghttp2 serialised and
// DATA payloads, in order. Small pieces are copied into an open tail segment;
// a whole queued chunk of a stream's body (ByteQueue) is handed over as a
// segment of its own, so a large message goes from the bytes read on one
// connection to writev on the other with no copy in between.
class OutputBuffer {
 public:
  // Chunks smaller than this are copied rather than handed over (a copy is
  // cheaper than the segment and the allocation the queue then needs anew).
  static constexpr size_t kAdoptMinBytes = 8 * 1024;
  // Written segments' slots are dropped once this many lead the list.
  static constexpr size_t kCompactAfter = 16;

  size_t size() const { return size_; }  // bytes not written yet
  bool empty() const { return size_ == 0; }
  void Append(const char* data, size_t len);
  // bytes[from..] become a segment of their own (their memory is taken over;
  // the first `from` bytes were sent before).
  void Adopt(std::string bytes, size_t from = 0);
  // The last `len` bytes, if they sit in the open tail segment (else empty).
  std::string_view Last(size_t len) const;
  // Drops the last `len` bytes, which must all sit in the open tail segment
  // (a frame header whose payload could not be supplied).
  void DropLast(size_t len);
  // Up to `max` iovecs over the unwritten bytes, in order; returns how many.
  int Gather(iovec* iov, int max) const;
  // `n` bytes were written: drops them from the front.
  void Consume(size_t n);
  // Segment slots held, written ones not yet dropped included (tests).
  size_t segment_slots() const { return segments_.size(); }

 private:
  // segments_[head_..] are unwritten, the first from head_offset_ on. Drained,
  // the first segment's memory stays for the next bytes.
  struct Segment {
    std::string bytes;
    size_t start = 0;  // bytes before it are not part of the output
  };
  std::vector<Segment> segments_;
  size_t head_ = 0;
  size_t head_offset_ = 0;
  size_t size_ = 0;
  bool tail_open_ = false;  // segments_.back() takes appended bytes
};

class ByteQueue {
 public:
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  void Append(const uint8_t* bytes, size_t len);
  // Appends the first `len` bytes (len <= size()) to `out` and drops them.
  void MoveTo(size_t len, std::string& out);
  // The same into a connection's output: a chunk consumed whole, from its
  // start, of at least OutputBuffer::kAdoptMinBytes is handed over uncopied.
  void MoveTo(size_t len, OutputBuffer& out);
  void Clear();
  // Moves everything out (for whole-message capture).
  std::string Take();
  // Replaces the contents with `bytes`, taking over their memory (no copy):
  // a message Take() moved out, given back.
  void Assign(std::string bytes);

 private:
  // A new chunk gets room for its bytes or twice the previous chunk's, up to
  // kMaxChunk: a small unary message takes one exact allocation (served from
  // malloc's per-thread cache), while a stream of small messages fills a few
  // growing chunks rather than one per DATA frame.
  static constexpr size_t kMaxChunk = 16 * 1024;
  absl::InlinedVector<std::string, 2> chunks_;
  size_t last_chunk_capacity_ = 0;
  size_t head_offset_ = 0;  // consumed bytes of chunks_.front()
  size_t size_ = 0;
};

class H2Connection {
 public:
  H2Connection(Worker& worker, int fd);
  virtual ~H2Connection();
  H2Connection(const H2Connection&) = delete;
  H2Connection& operator=(const H2Connection&) = delete;

  nghttp2_session* session() const { return session_; }
  // nghttp2's stream user data, through a one-entry cache: nghttp2 calls back
  // for one stream many times in a row (a header block is a callback per
  // field), and each lookup is a hash-map probe inside nghttp2. All stream
  // user data goes through SetStreamData (or nghttp2_submit_request with a
  // fresh id, followed by NoteStreamData), so the cache is never stale.
  void* StreamData(int32_t id) {
    if (id != cached_stream_id_) {
      cached_stream_data_ = nghttp2_session_get_stream_user_data(session_, id);
      cached_stream_id_ = id;
    }
    return cached_stream_data_;
  }
  void SetStreamData(int32_t id, void* data) {
    nghttp2_session_set_stream_user_data(session_, id, data);
    NoteStreamData(id, data);
  }
  // After nghttp2 set stream `id`'s user data itself (nghttp2_submit_request).
  void NoteStreamData(int32_t id, void* data) {
    if (id == cached_stream_id_) cached_stream_data_ = data;
  }
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
  // The connection's TLS state (null: plaintext).
  SSL* tls() const { return ssl_; }

  // nghttp2's send_data callback for NGHTTP2_DATA_FLAG_NO_COPY (set by the
  // data providers' read callbacks): the DATA frame goes straight into the
  // write buffer, `fill` appending the `length` payload bytes from the
  // stream's own queue. This saves the copy into nghttp2's frame buffer. With
  // the write buffer at its cap it returns NGHTTP2_ERR_WOULDBLOCK (nghttp2
  // keeps the frame until the next flush). `fill` returns false, appending
  // nothing, when the source no longer holds the bytes the frame promised (its
  // stream or peer went away, or a deadline discarded them while the frame
  // waited): the frame is then dropped and nghttp2 resets the stream
  // (NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE), rather than sending stand-in
  // bytes.
  int AppendDataFrame(const nghttp2_frame* frame, const uint8_t* framehd,
                      size_t length,
                      absl::FunctionRef<bool(size_t, OutputBuffer&)> fill);

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
  // StreamData's cache (stream 0, the connection, has no user data).
  int32_t cached_stream_id_ = 0;
  void* cached_stream_data_ = nullptr;
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
  OutputBuffer out_;
  bool send_blocked_ = false;  // AppendDataFrame refused a frame at the cap
};

}  // namespace bulwark::net

#endif  // BULWARK_SIDECAR_NET_H2_CONNECTION_H_
