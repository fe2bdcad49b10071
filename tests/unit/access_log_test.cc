// The access log's line format, traceparent parsing and its writer (SPEC
// section 10): one JSON object per line with every field, nulls where a field
// does not apply; the writer appends, drops (and counts) past its queue bound
// instead of blocking, and opens its path again on Reopen (log rotation).
#include "sidecar/access_log.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace bulwark {
namespace {

using ::testing::HasSubstr;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string TempPath(const std::string& name) {
  std::string dir = "/tmp/bulwark-access-log-XXXXXX";
  if (const char* tmp = std::getenv("TEST_TMPDIR")) {
    dir = absl::StrCat(tmp, "/bulwark-access-log-XXXXXX");
  }
  EXPECT_NE(mkdtemp(dir.data()), nullptr);
  return absl::StrCat(dir, "/", name);
}

TEST(AccessLogFormatTest, AForwardedCallHasEveryField) {
  const std::string line =
      FormatAccessLogLine({.time = absl::FromUnixMillis(1'764'676'800'123),
                           .route = "orders-get",
                           .method = "shop.v1.Orders/GetOrder",
                           .peer = "10.0.0.7:51234",
                           .endpoint = "10.0.0.4:50051",
                           .grpc_code = 0,
                           .duration = absl::Microseconds(2500),
                           .upstream = absl::Microseconds(2100),
                           .attempts = 1,
                           .singleflight = "leader",
                           .request_bytes = 25,
                           .response_bytes = 130,
                           .trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"});
  EXPECT_EQ(line,
            "{\"time\": \"2025-12-02T12:00:00.123Z\", \"route\": "
            "\"orders-get\", \"method\": \"shop.v1.Orders/GetOrder\", "
            "\"peer\": \"10.0.0.7:51234\", \"endpoint\": \"10.0.0.4:50051\", "
            "\"code\": \"OK\", \"reason\": null, \"duration_ms\": 2.500, "
            "\"upstream_ms\": 2.100, \"attempts\": 1, \"singleflight\": "
            "\"leader\", \"request_bytes\": 25, \"response_bytes\": 130, "
            "\"trace_id\": \"4bf92f3577b34da6a3ce929d0e0e4736\"}\n");
}

TEST(AccessLogFormatTest, ALocalAnswerHasNullsAndItsReason) {
  const std::string line =
      FormatAccessLogLine({.time = absl::FromUnixSeconds(0),
                           .route = "r",
                           .method = "a.B/C",
                           .grpc_code = 8,
                           .reason = "rate_limited",
                           .duration = absl::Microseconds(40)});
  EXPECT_THAT(line, HasSubstr("\"peer\": null, \"endpoint\": null, \"code\": "
                              "\"RESOURCE_EXHAUSTED\", \"reason\": "
                              "\"rate_limited\""));
  EXPECT_THAT(line, HasSubstr("\"upstream_ms\": null, \"attempts\": 0, "
                              "\"singleflight\": null"));
  EXPECT_THAT(line, ::testing::Not(HasSubstr("trace_id")));
}

TEST(AccessLogFormatTest, ValuesAreEscaped) {
  const std::string line = FormatAccessLogLine(
      {.time = absl::FromUnixSeconds(0), .method = "a.B/\"x\"\n"});
  EXPECT_THAT(line, HasSubstr("\"method\": \"a.B/\\\"x\\\"\\n\""));
  EXPECT_EQ(line.find('\n'), line.size() - 1);
}

TEST(AccessLogFormatTest, TraceIdComesOnlyFromAValidTraceparent) {
  EXPECT_EQ(
      TraceIdOf("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
      "4bf92f3577b34da6a3ce929d0e0e4736");
  // A later version may append fields.
  EXPECT_EQ(
      TraceIdOf("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz"),
      "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(TraceIdOf(""), "");
  EXPECT_EQ(
      TraceIdOf("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), "");
  EXPECT_EQ(
      TraceIdOf("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"), "");
  EXPECT_EQ(
      TraceIdOf("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), "");
  EXPECT_EQ(TraceIdOf("00-4bf92f3577b34da6a3ce929d0e0e4736"), "");
}

TEST(AccessLogWriterTest, AppendsLinesAndReopensAfterRotation) {
  const std::string path = TempPath("access.log");
  auto writer = AccessLogWriter::Open(path, nullptr);
  ASSERT_TRUE(writer.ok()) << writer.status();
  EXPECT_TRUE((*writer)->Write("one\n"));
  EXPECT_TRUE((*writer)->Write("two\n"));
  (*writer)->Flush();
  EXPECT_EQ(ReadAll(path), "one\ntwo\n");
  // Rotation: the file is renamed, the writer told to reopen.
  ASSERT_EQ(std::rename(path.c_str(), (path + ".1").c_str()), 0);
  EXPECT_TRUE((*writer)->Write("three\n"));  // may still go to the old file
  (*writer)->Flush();
  (*writer)->Reopen();
  EXPECT_TRUE((*writer)->Write("four\n"));
  (*writer)->Flush();
  EXPECT_EQ(ReadAll(path + ".1"), "one\ntwo\nthree\n");
  EXPECT_EQ(ReadAll(path), "four\n");
}

TEST(AccessLogWriterTest, PastItsQueueBoundLinesAreDroppedNotWaitedFor) {
  // The log's file is a pipe nobody reads (as /dev/stdout): the writer
  // thread blocks once the pipe is full, and Write must not.
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  const int saved_stdout = dup(STDOUT_FILENO);
  ASSERT_GE(dup2(pipe_fds[1], STDOUT_FILENO), 0);
  auto writer = AccessLogWriter::Open("/dev/stdout", nullptr);
  dup2(saved_stdout, STDOUT_FILENO);
  close(saved_stdout);
  close(pipe_fds[1]);
  ASSERT_TRUE(writer.ok()) << writer.status();
  const std::string line(1024, 'x');
  const size_t bound_lines = AccessLogWriter::kMaxQueuedBytes / line.size();
  int kept = 0;
  const int attempts = static_cast<int>(bound_lines) * 2 + 200;
  for (int i = 0; i < attempts; ++i) kept += (*writer)->Write(line) ? 1 : 0;
  // At most the bound is queued, plus what the pipe (64 KiB) and the writer's
  // batch in hand took before it blocked.
  EXPECT_GT((*writer)->dropped(), 0u);
  EXPECT_EQ(kept + static_cast<int>((*writer)->dropped()), attempts);
  EXPECT_LE(static_cast<size_t>(kept), 2 * bound_lines + 100);
  // A line larger than the bound is always dropped.
  EXPECT_FALSE(
      (*writer)->Write(std::string(AccessLogWriter::kMaxQueuedBytes + 1, 'y')));
  // Drain the pipe so that the writer can finish and be destroyed.
  std::thread reader([fd = pipe_fds[0]] {
    char buf[65536];
    while (read(fd, buf, sizeof buf) > 0) {
    }
  });
  writer->reset();
  reader.join();
  close(pipe_fds[0]);
}

TEST(AccessLogWriterTest, APathThatIsNotARegularFileIsAClearError) {
  const std::string dir = TempPath("sub");
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  auto writer = AccessLogWriter::Open(dir, nullptr);
  ASSERT_FALSE(writer.ok());
  EXPECT_THAT(std::string(writer.status().message()),
              HasSubstr(absl::StrCat("access_log.path ", dir)));
  const std::string fifo = TempPath("fifo");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  auto no_reader = AccessLogWriter::Open(fifo, nullptr);
  ASSERT_FALSE(no_reader.ok());  // not a hang
  auto missing = AccessLogWriter::Open("/nonexistent-dir/x.log", nullptr);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("No such file or directory"));
}

}  // namespace
}  // namespace bulwark
