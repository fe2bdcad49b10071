#include "sidecar/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <new>
#include <string>
#include <system_error>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace bulwark {
namespace {

absl::Status ErrnoStatus(int error) {
  const std::string message =
      std::error_code(error, std::generic_category()).message();
  switch (error) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    default:
      return absl::FailedPreconditionError(message);
  }
}

// What a non-regular file is, for the message.
const char* KindOf(mode_t mode) {
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a plain file";
}

std::string DescribeLimit(size_t max_bytes) {
  constexpr size_t kMiB = size_t{1} << 20;
  if (max_bytes >= kMiB && max_bytes % kMiB == 0) {
    return absl::StrCat(max_bytes / kMiB, " MiB");
  }
  return absl::StrCat(max_bytes, " bytes");
}

absl::Status TooLarge(size_t max_bytes, absl::string_view size) {
  return absl::FailedPreconditionError(
      absl::StrCat("larger than ", DescribeLimit(max_bytes), " (", size, ")"));
}

// Closes the descriptor on every return path.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

absl::StatusOr<std::string> ReadOpenFile(int fd, size_t max_bytes) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoStatus(errno);
  // The existing messages (and operators) know a directory by its errno text.
  if (S_ISDIR(st.st_mode)) return ErrnoStatus(EISDIR);
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("not a regular file (", KindOf(st.st_mode), ")"));
  }
  if (st.st_size < 0 || static_cast<uint64_t>(st.st_size) > max_bytes) {
    return TooLarge(max_bytes, absl::StrCat(st.st_size, " bytes"));
  }
  std::string content;
  // st_size is a hint (/proc files say 0; a file may grow): read until EOF,
  // but never more than one byte past the limit.
  content.resize(static_cast<size_t>(st.st_size) + 1);
  size_t filled = 0;
  while (true) {
    if (filled == content.size()) {
      if (content.size() > max_bytes) {
        return TooLarge(max_bytes, "it grew while being read");
      }
      content.resize(std::min(max_bytes + 1, content.size() * 2));
    }
    const ssize_t n =
        ::read(fd, content.data() + filled, content.size() - filled);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno);
    }
    if (n == 0) break;
    filled += static_cast<size_t>(n);
  }
  if (filled > max_bytes) {
    return TooLarge(max_bytes, "it grew while being read");
  }
  content.resize(filled);
  return content;
}

}  // namespace

absl::StatusOr<std::string> ReadConfigFile(const std::string& path,
                                           size_t max_bytes) {
  // O_NONBLOCK: opening a FIFO without a writer would otherwise block here,
  // before fstat could refuse it. It changes nothing for a regular file.
  const int fd =
      ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return ErrnoStatus(errno);
  Fd closer(fd);
  try {
    return ReadOpenFile(fd, max_bytes);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("out of memory reading the file");
  }
}

}  // namespace bulwark
