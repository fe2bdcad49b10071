#include "sidecar/net/block_pool.h"

#include <sanitizer/asan_interface.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace bulwark::net {
namespace {

// Before each block: its class (or kUnpooled) and, for an unpooled one, its
// size. 16 bytes, so the caller's part keeps malloc's alignment.
struct Prefix {
  uint32_t size_class;
  uint32_t unused;
  uint64_t bytes;
};
static_assert(sizeof(Prefix) == 16);

Prefix* PrefixOf(void* ptr) {
  return reinterpret_cast<Prefix*>(static_cast<char*>(ptr) - sizeof(Prefix));
}

void* Payload(Prefix* prefix) {
  return reinterpret_cast<char*>(prefix) + sizeof(Prefix);
}

// A pooled class's block, prefix included.
size_t BlockBytes(size_t cls) {
  return sizeof(Prefix) + (cls + 1) * BlockPool::kGranule;
}

}  // namespace

BlockPool::BlockPool() {
  mem_.mem_user_data = this;
  mem_.malloc = [](size_t size, void* pool) {
    return static_cast<BlockPool*>(pool)->Allocate(size);
  };
  mem_.free = [](void* ptr, void* pool) {
    static_cast<BlockPool*>(pool)->Free(ptr);
  };
  mem_.calloc = [](size_t n, size_t size, void* pool) -> void* {
    if (size != 0 && n > SIZE_MAX / size) return nullptr;
    void* ptr = static_cast<BlockPool*>(pool)->Allocate(n * size);
    if (ptr != nullptr) std::memset(ptr, 0, n * size);
    return ptr;
  };
  mem_.realloc = [](void* ptr, size_t size, void* pool) {
    return static_cast<BlockPool*>(pool)->Reallocate(ptr, size);
  };
}

BlockPool::~BlockPool() { ReleaseFree(); }

void* BlockPool::Allocate(size_t size) {
  const size_t cls = (size - 1) / kGranule;  // size 0 wraps: unpooled
  if (cls < kClasses) {
    const size_t block_bytes = BlockBytes(cls);
    if (FreeBlock* block = free_[cls]; block != nullptr) {
      ASAN_UNPOISON_MEMORY_REGION(block, block_bytes);
      free_[cls] = block->next;
      retained_bytes_ -= block_bytes;
      ++live_blocks_;
      auto* prefix = reinterpret_cast<Prefix*>(block);
      prefix->size_class = static_cast<uint32_t>(cls);
      return Payload(prefix);
    }
    auto* prefix = static_cast<Prefix*>(std::malloc(block_bytes));
    if (prefix == nullptr) return nullptr;
    ++live_blocks_;
    prefix->size_class = static_cast<uint32_t>(cls);
    return Payload(prefix);
  }
  if (size == 0) size = 1;
  if (size > SIZE_MAX - sizeof(Prefix)) return nullptr;
  auto* prefix = static_cast<Prefix*>(std::malloc(sizeof(Prefix) + size));
  if (prefix == nullptr) return nullptr;
  prefix->size_class = kUnpooled;
  prefix->bytes = size;
  ++live_blocks_;
  return Payload(prefix);
}

void BlockPool::Free(void* ptr) {
  if (ptr == nullptr) return;
  Prefix* prefix = PrefixOf(ptr);
  const uint32_t cls = prefix->size_class;
  --live_blocks_;
  if (cls == kUnpooled) {
    std::free(prefix);
    return;
  }
  const size_t block_bytes = BlockBytes(cls);
  if (retained_bytes_ + block_bytes > kMaxRetainedBytes) {
    std::free(prefix);
    return;
  }
  // The block's first bytes (its prefix, no longer needed) link it.
  auto* block = reinterpret_cast<FreeBlock*>(prefix);
  block->next = free_[cls];
  free_[cls] = block;
  retained_bytes_ += block_bytes;
  ASAN_POISON_MEMORY_REGION(block, block_bytes);
}

void* BlockPool::Reallocate(void* ptr, size_t size) {
  if (ptr == nullptr) return Allocate(size);
  if (size == 0) size = 1;
  Prefix* prefix = PrefixOf(ptr);
  const bool unpooled = prefix->size_class == kUnpooled;
  const size_t usable = unpooled
                            ? prefix->bytes
                            : BlockBytes(prefix->size_class) - sizeof(Prefix);
  // Kept where it fits and would not be better in another class.
  if (unpooled ? size > kMaxPooledBytes && size <= usable
               : (size - 1) / kGranule == prefix->size_class) {
    if (unpooled) prefix->bytes = size;
    return ptr;
  }
  void* moved = Allocate(size);
  if (moved == nullptr) return nullptr;  // the old block stays the caller's
  std::memcpy(moved, ptr, std::min(usable, size));
  Free(ptr);
  return moved;
}

void BlockPool::ReleaseFree() {
  for (size_t cls = 0; cls < kClasses; ++cls) {
    const size_t block_bytes = BlockBytes(cls);
    while (FreeBlock* block = free_[cls]) {
      ASAN_UNPOISON_MEMORY_REGION(block, block_bytes);
      free_[cls] = block->next;
      std::free(block);
    }
  }
  retained_bytes_ = 0;
}

}  // namespace bulwark::net
