// ByteQueue (sidecar/net/h2_connection.h): the per-stream queue of bytes
// waiting for the other side's window, drained straight into DATA frames.
#include <sys/uio.h>

#include <algorithm>
#include <cstdint>
#include <random>
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

// Drains `out` the way a connection does (gather, write some, consume) into
// `written`, `step` bytes at a time at most.
void Drain(OutputBuffer& out, std::string& written, size_t step) {
  while (!out.empty()) {
    iovec iov[4];
    const int count = out.Gather(iov, 4);
    ASSERT_GT(count, 0);
    size_t n = 0;
    for (int i = 0; i < count && n < step; ++i) {
      const size_t take = std::min(step - n, iov[i].iov_len);
      written.append(static_cast<const char*>(iov[i].iov_base), take);
      n += take;
    }
    out.Consume(n);
  }
}

TEST(OutputBufferTest, LargeChunksAreHandedOverAndOrderHolds) {
  ByteQueue body;
  const std::string big(3 * OutputBuffer::kAdoptMinBytes, 'b');
  Append(body, big);
  OutputBuffer out;
  out.Append("head1", 5);
  // A frame takes the first 100 bytes (copied: the chunk goes on), the next
  // the rest of the chunk (handed over from where it stands).
  body.MoveTo(100, out);
  out.Append("head2", 5);
  body.MoveTo(big.size() - 100, out);
  out.Append("tail", 4);
  EXPECT_TRUE(body.empty());
  EXPECT_EQ(out.size(), 5 + big.size() + 5 + 4);
  // The handed-over bytes are not in the tail: Last() sees only "tail".
  EXPECT_EQ(out.Last(4), "tail");
  EXPECT_EQ(out.Last(5), "");
  std::string written;
  Drain(out, written, 1000);
  EXPECT_EQ(written,
            "head1" + big.substr(0, 100) + "head2" + big.substr(100) + "tail");
  // Drained, it takes bytes again.
  out.Append("again", 5);
  written.clear();
  Drain(out, written, 2);
  EXPECT_EQ(written, "again");
}

TEST(OutputBufferTest, AnOutputThatNeverDrainsKeepsFewSegments) {
  OutputBuffer out;
  ByteQueue body;
  std::string expected, written;
  for (int i = 0; i < 1000; ++i) {
    // A frame header and a handed-over payload per round; the socket takes all
    // but the last byte each time, so the buffer is never empty.
    const std::string header = "h" + std::to_string(i);
    out.Append(header.data(), header.size());
    const std::string payload(OutputBuffer::kAdoptMinBytes, 'a' + i % 26);
    Append(body, payload);
    body.MoveTo(payload.size(), out);
    expected += header + payload;
    while (out.size() > 1) {
      iovec iov[4];
      const int count = out.Gather(iov, 4);
      ASSERT_GT(count, 0);
      const size_t n = std::min(iov[0].iov_len, out.size() - 1);
      written.append(static_cast<const char*>(iov[0].iov_base), n);
      out.Consume(n);
    }
    // Written segments' slots do not pile up.
    ASSERT_LE(out.segment_slots(), 2 * OutputBuffer::kCompactAfter + 2) << i;
  }
  Drain(out, written, 100);
  EXPECT_EQ(written, expected);
}

TEST(OutputBufferTest, RandomInterleavingKeepsEveryByteInOrder) {
  std::mt19937 rng(7);
  ByteQueue body;
  OutputBuffer out;
  std::string queued, expected, written;
  char next = 'a';
  for (int round = 0; round < 2000; ++round) {
    switch (rng() % 4) {
      case 0: {  // a stream's DATA arrives
        const std::string piece(rng() % (3 * OutputBuffer::kAdoptMinBytes),
                                next);
        next = next == 'z' ? 'a' : next + 1;
        Append(body, piece);
        queued += piece;
        break;
      }
      case 1: {  // a frame header
        const std::string header = "<" + std::to_string(round) + ">";
        out.Append(header.data(), header.size());
        expected += header;
        break;
      }
      case 2: {  // a DATA frame's payload
        const size_t n = std::min<size_t>(rng() % 20000, body.size());
        body.MoveTo(n, out);
        expected += queued.substr(0, n);
        queued.erase(0, n);
        break;
      }
      case 3:  // the socket takes some
        if (!out.empty()) {
          iovec iov[3];
          const int count = out.Gather(iov, 3);
          size_t n = std::min<size_t>(rng() % 30000, iov[0].iov_len);
          written.append(static_cast<const char*>(iov[0].iov_base), n);
          if (count > 1 && n == iov[0].iov_len) {
            const size_t more = std::min<size_t>(rng() % 100, iov[1].iov_len);
            written.append(static_cast<const char*>(iov[1].iov_base), more);
            n += more;
          }
          out.Consume(n);
        }
        break;
    }
    ASSERT_EQ(out.size(), expected.size() - written.size()) << round;
  }
  body.MoveTo(body.size(), out);
  expected += queued;
  Drain(out, written, 5000);
  EXPECT_EQ(written, expected);
}

}  // namespace
}  // namespace bulwark::net
