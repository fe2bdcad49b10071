// BlockPool: the memory nghttp2 asks for on one worker (nghttp2_mem). nghttp2
// allocates and frees a dozen small blocks per call (stream state, outbound
// items, copied header lists, received header buffers); from a general
// allocator each malloc and free costs some 30-50 instructions, most of it
// finding the block's size class again on free. Here a block carries its class
// in a 16-byte prefix, and freed blocks wait on a per-class free list for the
// next call, so both ends are a few instructions.
//
// Bounds: blocks up to kMaxPooledBytes are pooled, larger ones go straight to
// malloc. The free lists keep at most kMaxRetainedBytes together; a block freed
// past that goes back to malloc, and ReleaseFree() hands every waiting block
// back (the worker does so when connections close, with its memory trim). So
// what the pool holds beyond live nghttp2 state is bounded and short-lived.
//
// Thread-safety: none. One pool per worker, used only on its thread (nghttp2
// sessions live on their worker); the destructor frees what waits, and every
// session using the pool must be deleted before it. Under AddressSanitizer a
// waiting block is poisoned, so a use after nghttp2 freed it is still caught.
#ifndef BULWARK_SIDECAR_NET_BLOCK_POOL_H_
#define BULWARK_SIDECAR_NET_BLOCK_POOL_H_

#include <nghttp2/nghttp2.h>

#include <array>
#include <cstddef>
#include <cstdint>

namespace bulwark::net {

class BlockPool {
 public:
  static constexpr size_t kGranule = 32;
  static constexpr size_t kMaxPooledBytes = 2048;
  static constexpr size_t kMaxRetainedBytes = 1024 * 1024;

  BlockPool();
  ~BlockPool();
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  // What nghttp2_session_*_new3 takes (nghttp2 copies the struct; the pool
  // must outlive the session).
  nghttp2_mem* mem() { return &mem_; }

  void* Allocate(size_t size);
  void Free(void* ptr);
  void* Reallocate(void* ptr, size_t size);

  // Hands every waiting block back to malloc.
  void ReleaseFree();

  // What waits on the free lists (for tests).
  size_t retained_bytes() const { return retained_bytes_; }
  // Blocks handed out and not yet freed (pooled or not).
  uint64_t live_blocks() const { return live_blocks_; }

 private:
  static constexpr size_t kClasses = kMaxPooledBytes / kGranule;
  // The class kept in a block's prefix for one that bypassed the pool.
  static constexpr uint32_t kUnpooled = 0xffffffff;
  struct FreeBlock {
    FreeBlock* next;
  };
  nghttp2_mem mem_;
  std::array<FreeBlock*, kClasses> free_{};
  size_t retained_bytes_ = 0;
  uint64_t live_blocks_ = 0;
};

}  // namespace bulwark::net

#endif  // BULWARK_SIDECAR_NET_BLOCK_POOL_H_
