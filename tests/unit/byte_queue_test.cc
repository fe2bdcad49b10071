// ByteQueue (sidecar/net/h2_connection.h): the per-stream queue of bytes
// waiting for the other side's window, drained straight into DATA frames.
#include <cstdint>
#include <string>

#include "gtest/gtest.h"
#include "sidecar/net/h2_connection.h"

namespace bulwark::net {
namespace {

void Append(ByteQueue& q, const std::string& s) {
  q.Append(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

TEST(ByteQueueTest, MovesBytesOutInOrderAcrossChunks) {
  ByteQueue q;
  EXPECT_TRUE(q.empty());
  std::string expected;
  // Pieces larger than a chunk's minimum room force several chunks.
  for (int i = 0; i < 10; ++i) {
    const std::string piece(3000 + i, static_cast<char>('a' + i));
    Append(q, piece);
    expected += piece;
  }
  EXPECT_EQ(q.size(), expected.size());
  std::string out = "prefix:";
  q.MoveTo(5, out);       // inside the first chunk
  q.MoveTo(10'000, out);  // across chunk boundaries
  EXPECT_EQ(out, "prefix:" + expected.substr(0, 10'005));
  EXPECT_EQ(q.size(), expected.size() - 10'005);
  out.clear();
  q.MoveTo(1'000'000, out);  // more than queued: everything
  EXPECT_EQ(out, expected.substr(10'005));
  EXPECT_TRUE(q.empty());
}

TEST(ByteQueueTest, InterleavedAppendAndDrainKeepsOrder) {
  ByteQueue q;
  std::string in, out;
  for (int i = 0; i < 1000; ++i) {
    const std::string piece = std::to_string(i) + ",";
    Append(q, piece);
    in += piece;
    if (i % 7 == 0) q.MoveTo(11, out);
  }
  q.MoveTo(q.size(), out);
  EXPECT_EQ(out, in);
}

TEST(ByteQueueTest, TakeAndClear) {
  ByteQueue q;
  Append(q, "hello ");
  Append(q, std::string(5000, 'x'));
  std::string head;
  q.MoveTo(2, head);
  EXPECT_EQ(q.Take(), "llo " + std::string(5000, 'x'));
  EXPECT_TRUE(q.empty());
  Append(q, "again");
  EXPECT_EQ(q.Take(), "again");  // one untouched chunk: moved out whole
  Append(q, "gone");
  q.Clear();
  EXPECT_EQ(q.size(), 0u);
  EXPECT_EQ(q.Take(), "");
}

TEST(ByteQueueTest, AssignTakesTheBytesOverAndAppendsAfterThem) {
  ByteQueue q;
  Append(q, "stale");
  q.Assign(std::string(300, 'm'));
  EXPECT_EQ(q.size(), 300u);
  Append(q, "tail");
  std::string out;
  q.MoveTo(q.size(), out);
  EXPECT_EQ(out, std::string(300, 'm') + "tail");
  // Given back untouched, the same memory comes out again: no copy.
  std::string again(300, 'n');
  const char* memory = again.data();
  q.Assign(std::move(again));
  EXPECT_EQ(q.Take().data(), memory);
  q.Assign("");
  EXPECT_TRUE(q.empty());
}

}  // namespace
}  // namespace bulwark::net
