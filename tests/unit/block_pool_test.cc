#include "sidecar/net/block_pool.h"

#include <gtest/gtest.h>
#include <nghttp2/nghttp2.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace bulwark::net {
namespace {

TEST(BlockPoolTest, AFreedBlockServesTheNextAllocationOfItsClass) {
  BlockPool pool;
  void* a = pool.Allocate(40);
  ASSERT_NE(a, nullptr);
  pool.Free(a);
  EXPECT_GT(pool.retained_bytes(), 0u);
  // 33..64 bytes share a class: the same block comes back.
  void* b = pool.Allocate(64);
  EXPECT_EQ(b, a);
  EXPECT_EQ(pool.retained_bytes(), 0u);
  // Another class does not take it.
  pool.Free(b);
  const size_t waiting = pool.retained_bytes();
  void* c = pool.Allocate(65);
  EXPECT_NE(c, a);
  EXPECT_EQ(pool.retained_bytes(), waiting);
  pool.Free(c);
  EXPECT_EQ(pool.live_blocks(), 0u);
}

TEST(BlockPoolTest, BlocksKeepMallocAlignmentAndTheirBytes) {
  BlockPool pool;
  std::vector<unsigned char*> blocks;
  for (size_t size = 1; size <= BlockPool::kMaxPooledBytes + 64; size += 7) {
    auto* p = static_cast<unsigned char*>(pool.Allocate(size));
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 16, 0u) << size;
    std::memset(p, static_cast<int>(size & 0xff), size);
    blocks.push_back(p);
  }
  // No block overlaps another: each still holds its own pattern.
  size_t size = 1;
  for (unsigned char* p : blocks) {
    for (size_t i = 0; i < size; ++i) {
      ASSERT_EQ(p[i], static_cast<unsigned char>(size & 0xff)) << size;
    }
    pool.Free(p);
    size += 7;
  }
  EXPECT_EQ(pool.live_blocks(), 0u);
}

TEST(BlockPoolTest, LargeBlocksAreNotKept) {
  BlockPool pool;
  void* big = pool.Allocate(BlockPool::kMaxPooledBytes + 1);
  ASSERT_NE(big, nullptr);
  EXPECT_EQ(pool.live_blocks(), 1u);
  pool.Free(big);
  EXPECT_EQ(pool.retained_bytes(), 0u);
  EXPECT_EQ(pool.live_blocks(), 0u);
}

TEST(BlockPoolTest, WhatWaitsIsBoundedAndReleasable) {
  BlockPool pool;
  std::vector<void*> blocks;
  const size_t count = 2 * BlockPool::kMaxRetainedBytes / 1024;
  for (size_t i = 0; i < count; ++i) blocks.push_back(pool.Allocate(1000));
  for (void* p : blocks) pool.Free(p);
  EXPECT_LE(pool.retained_bytes(), BlockPool::kMaxRetainedBytes);
  EXPECT_GT(pool.retained_bytes(), BlockPool::kMaxRetainedBytes / 2);
  pool.ReleaseFree();
  EXPECT_EQ(pool.retained_bytes(), 0u);
  EXPECT_EQ(pool.live_blocks(), 0u);
}

TEST(BlockPoolTest, ReallocateKeepsTheContentAcrossClassesAndTheCap) {
  BlockPool pool;
  nghttp2_mem* mem = pool.mem();
  auto* p = static_cast<char*>(mem->malloc(10, mem->mem_user_data));
  std::memcpy(p, "0123456789", 10);
  // Within its class: the same block.
  EXPECT_EQ(mem->realloc(p, 30, mem->mem_user_data), p);
  // Up a class, then past the pooled sizes, then back down.
  for (size_t size : {100, 5000, 300, 12}) {
    p = static_cast<char*>(mem->realloc(p, size, mem->mem_user_data));
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(std::string(p, 10), "0123456789") << size;
  }
  mem->free(p, mem->mem_user_data);
  // realloc of nothing allocates.
  void* fresh = mem->realloc(nullptr, 8, mem->mem_user_data);
  ASSERT_NE(fresh, nullptr);
  EXPECT_EQ(pool.live_blocks(), 1u);
  mem->free(fresh, mem->mem_user_data);
  EXPECT_EQ(pool.live_blocks(), 0u);
}

TEST(BlockPoolTest, CallocZeroesAReusedBlock) {
  BlockPool pool;
  nghttp2_mem* mem = pool.mem();
  void* dirty = mem->malloc(200, mem->mem_user_data);
  std::memset(dirty, 0xab, 200);
  mem->free(dirty, mem->mem_user_data);
  auto* clean =
      static_cast<unsigned char*>(mem->calloc(4, 50, mem->mem_user_data));
  ASSERT_EQ(static_cast<void*>(clean), dirty);
  for (int i = 0; i < 200; ++i) ASSERT_EQ(clean[i], 0) << i;
  mem->free(clean, mem->mem_user_data);
  // An overflowing count is refused, not wrapped.
  EXPECT_EQ(mem->calloc(SIZE_MAX / 2, 4, mem->mem_user_data), nullptr);
}

// nghttp2 on the pool: a client and a server session exchange a request and
// a response; every block comes back when the sessions go, and the second
// exchange reuses the first one's blocks.
ssize_t Capture(nghttp2_session*, const uint8_t* data, size_t len, int,
                void* user_data) {
  static_cast<std::string*>(user_data)->append(
      reinterpret_cast<const char*>(data), len);
  return static_cast<ssize_t>(len);
}

void Exchange(BlockPool& pool) {
  nghttp2_session_callbacks* cb;
  ASSERT_EQ(nghttp2_session_callbacks_new(&cb), 0);
  nghttp2_session_callbacks_set_send_callback(cb, &Capture);
  std::string to_server;
  std::string to_client;
  nghttp2_session* client;
  nghttp2_session* server;
  ASSERT_EQ(
      nghttp2_session_client_new3(&client, cb, &to_server, nullptr, pool.mem()),
      0);
  ASSERT_EQ(
      nghttp2_session_server_new3(&server, cb, &to_client, nullptr, pool.mem()),
      0);
  nghttp2_session_callbacks_del(cb);
  nghttp2_submit_settings(client, NGHTTP2_FLAG_NONE, nullptr, 0);
  nghttp2_submit_settings(server, NGHTTP2_FLAG_NONE, nullptr, 0);
  auto nv = [](const char* n, const char* v) {
    return nghttp2_nv{const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(n)),
                      const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(v)),
                      strlen(n), strlen(v), NGHTTP2_NV_FLAG_NONE};
  };
  const nghttp2_nv request[] = {
      nv(":method", "POST"),
      nv(":scheme", "http"),
      nv(":path", "/bulwark.demo.v1.Demo/Echo"),
      nv(":authority", "a.test"),
      nv("content-type", "application/grpc"),
      nv("x-long-metadata-name", "a value longer than a granule")};
  const int32_t id =
      nghttp2_submit_request(client, nullptr, request, 6, nullptr, nullptr);
  ASSERT_GT(id, 0);
  ASSERT_EQ(nghttp2_session_send(client), 0);
  ASSERT_EQ(nghttp2_session_mem_recv(
                server, reinterpret_cast<const uint8_t*>(to_server.data()),
                to_server.size()),
            static_cast<ssize_t>(to_server.size()));
  const nghttp2_nv response[] = {nv(":status", "200"),
                                 nv("content-type", "application/grpc")};
  ASSERT_EQ(nghttp2_submit_response(server, id, response, 2, nullptr), 0);
  ASSERT_EQ(nghttp2_session_send(server), 0);
  ASSERT_EQ(nghttp2_session_mem_recv(
                client, reinterpret_cast<const uint8_t*>(to_client.data()),
                to_client.size()),
            static_cast<ssize_t>(to_client.size()));
  EXPECT_GT(pool.live_blocks(), 0u);
  nghttp2_session_del(client);
  nghttp2_session_del(server);
}

TEST(BlockPoolTest, Nghttp2SessionsAllocateFromItAndGiveEverythingBack) {
  BlockPool pool;
  Exchange(pool);
  EXPECT_EQ(pool.live_blocks(), 0u);
  const size_t after_first = pool.retained_bytes();
  EXPECT_GT(after_first, 1000u);
  // The same exchange again takes the same blocks from the free lists: the
  // pool does not grow.
  Exchange(pool);
  EXPECT_EQ(pool.live_blocks(), 0u);
  EXPECT_EQ(pool.retained_bytes(), after_first);
}

}  // namespace
}  // namespace bulwark::net
