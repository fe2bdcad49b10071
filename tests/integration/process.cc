// The integration-test fixture: child processes, port discovery, polling, a
// small HTTP client. See process.h.
#include "tests/integration/process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

extern char** environ;

namespace bulwark::test {
namespace {

// Debian's Abseil keeps its own string_view type
// (ABSL_OPTION_USE_STD_STRING_VIEW 0), so std::string_view arguments of the
// public API are converted before reaching Abseil.
absl::string_view ToAbsl(std::string_view s) { return {s.data(), s.size()}; }

absl::Status ErrnoStatus(absl::string_view what, int err) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(err)));
}

// Closes a file descriptor when it goes out of scope.
class ScopedFd {
 public:
  explicit ScopedFd(int fd = -1) : fd_(fd) {}
  ~ScopedFd() {
    if (fd_ >= 0) close(fd_);
  }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Backoff for polling loops: starts at 1ms so an idle machine answers fast, and
// caps at 25ms so a loaded one is not hammered.
class Backoff {
 public:
  absl::Duration Next() {
    const absl::Duration d = next_;
    next_ = std::min(next_ * 2, absl::Milliseconds(25));
    return d;
  }

 private:
  absl::Duration next_ = absl::Milliseconds(1);
};

// Sleeps for the next backoff step, but never past `deadline`.
void SleepUntilNextPoll(Backoff& backoff, absl::Time deadline) {
  absl::SleepFor(std::min(
      backoff.Next(), std::max(deadline - absl::Now(), absl::ZeroDuration())));
}

std::string Basename(std::string_view path) {
  const size_t slash = path.rfind('/');
  return std::string(slash == std::string_view::npos ? path
                                                     : path.substr(slash + 1));
}

std::string Dirname(std::string_view path) {
  const size_t slash = path.rfind('/');
  return std::string(slash == std::string_view::npos ? "."
                                                     : path.substr(0, slash));
}

// This process's environment with `overrides` ("KEY=VALUE") replacing
// same-named entries.
std::vector<std::string> ChildEnvironment(
    const std::vector<std::string>& overrides) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const absl::string_view entry(*e);
    const absl::string_view key = entry.substr(0, entry.find('='));
    const bool overridden =
        std::any_of(overrides.begin(), overrides.end(), [&](const auto& o) {
          return absl::StartsWith(o, absl::StrCat(key, "="));
        });
    if (!overridden) env.emplace_back(entry);
  }
  env.insert(env.end(), overrides.begin(), overrides.end());
  return env;
}

std::vector<char*> CStringArray(std::vector<std::string>& strings) {
  std::vector<char*> array;
  array.reserve(strings.size() + 1);
  for (std::string& s : strings) array.push_back(s.data());
  array.push_back(nullptr);
  return array;
}

// The child side of fork(): only async-signal-safe calls from here to exec,
// because the parent may have other threads (gRPC's) holding locks that will
// never be released here.
[[noreturn]] void ExecChild(pid_t parent, int stdin_fd, int log_fd,
                            int exec_error_fd, char* const* argv,
                            char* const* envp) {
  // Die with the test, even when it is killed; the parent may already be gone.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(127);
  // Signal state survives exec: give the binary the defaults it would get from
  // a shell.
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  for (int sig : {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGCHLD})
    signal(sig, SIG_DFL);
  if (dup2(stdin_fd, 0) < 0 || dup2(log_fd, 1) < 0 || dup2(log_fd, 2) < 0) {
    const int err = errno;
    (void)!write(exec_error_fd, &err, sizeof err);
    _exit(127);
  }
  // Descriptors the test inherited without O_CLOEXEC must not leak into the
  // child.
  close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
  execve(argv[0], argv, envp);
  const int err = errno;
  (void)!write(exec_error_fd, &err, sizeof err);
  _exit(127);
}

ExitStatus DecodeWaitStatus(int status) {
  ExitStatus exit;
  if (WIFEXITED(status)) {
    exit.exited = true;
    exit.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    exit.signal = WTERMSIG(status);
  }
  return exit;
}

// The first ThreadSanitizer report in `log` (from its "WARNING:
// ThreadSanitizer:" line through its SUMMARY line, at most 200 lines), or ""
// if there is none.
std::string ThreadSanitizerReport(absl::string_view log) {
  size_t start = log.find("WARNING: ThreadSanitizer:");
  if (start == absl::string_view::npos) return "";
  start = log.rfind('\n', start);
  start = start == absl::string_view::npos ? 0 : start + 1;
  absl::string_view rest = log.substr(start);
  size_t end = rest.find("SUMMARY: ThreadSanitizer");
  end = end == absl::string_view::npos ? rest.size() : rest.find('\n', end);
  if (end == absl::string_view::npos) end = rest.size();
  std::vector<absl::string_view> lines =
      absl::StrSplit(rest.substr(0, end), '\n');
  if (lines.size() > 200) lines.resize(200);
  return absl::StrCat(absl::StrJoin(lines, "\n"), "\n");
}

std::string TestLabel() {
  const ::testing::TestInfo* info =
      ::testing::UnitTest::GetInstance()->current_test_info();
  std::string label = info == nullptr ? "bulwark"
                                      : absl::StrCat(info->test_suite_name(),
                                                     ".", info->name());
  for (char& c : label) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' &&
        c != '-')
      c = '_';
  }
  return label;
}

}  // namespace

std::string ExitStatus::ToString() const {
  if (exited) return absl::StrCat("exit ", exit_code);
  return absl::StrCat("signal ", signal, " (", strsignal(signal), ")");
}

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(
    std::string path, std::vector<std::string> args, ChildOptions options) {
  std::string log_path = options.log_path;
  if (log_path.empty())
    log_path = absl::StrCat(TempDir(), "/", Basename(path), ".log");
  ScopedFd log_fd(open(log_path.c_str(),
                       O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC,
                       0644));
  if (log_fd.get() < 0)
    return ErrnoStatus(absl::StrCat("open ", log_path), errno);
  ScopedFd null_fd(open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (null_fd.get() < 0) return ErrnoStatus("open /dev/null", errno);
  int exec_pipe[2];
  if (pipe2(exec_pipe, O_CLOEXEC) != 0) return ErrnoStatus("pipe2", errno);
  ScopedFd exec_read(exec_pipe[0]);
  auto exec_write = std::make_unique<ScopedFd>(exec_pipe[1]);

  // Everything the child needs is built before fork: it may not allocate
  // afterwards.
  std::vector<std::string> argv_strings = {path};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<std::string> env_strings = ChildEnvironment(options.env);
  std::vector<char*> argv = CStringArray(argv_strings);
  std::vector<char*> envp = CStringArray(env_strings);
  const pid_t parent = getpid();

  const pid_t pid = fork();
  if (pid < 0) return ErrnoStatus("fork", errno);
  if (pid == 0) {
    ExecChild(parent, null_fd.get(), log_fd.get(), exec_pipe[1], argv.data(),
              envp.data());
  }
  // The pipe reaches EOF when exec succeeds (O_CLOEXEC) and carries errno when
  // it fails.
  exec_write.reset();
  int exec_errno = 0;
  ssize_t n;
  do {
    n = read(exec_read.get(), &exec_errno, sizeof exec_errno);
  } while (n < 0 && errno == EINTR);
  if (n == sizeof exec_errno) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return ErrnoStatus(absl::StrCat("exec ", path), exec_errno);
  }
  return std::unique_ptr<ChildProcess>(new ChildProcess(
      pid, std::move(path), std::move(log_path), options.stop_grace));
}

ChildProcess::~ChildProcess() {
  if (!reaped_) Stop(stop_grace_);
  if (std::string report = ThreadSanitizerReport(Log()); !report.empty()) {
    ADD_FAILURE() << Basename(path_) << " (pid " << pid_ << ", "
                  << exit_status_.ToString() << ") reported:\n"
                  << report << "(its whole log: " << log_path_ << ")";
  }
  if (::testing::Test::HasFailure()) {
    std::string log = Log();
    constexpr size_t kMaxShown = 64 << 10;
    if (log.size() > kMaxShown)
      log = "[...]\n" + log.substr(log.size() - kMaxShown);
    std::cerr << "---- " << Basename(path_) << " (pid " << pid_ << ", "
              << exit_status_.ToString() << ") log " << log_path_ << " ----\n"
              << log << "---- end of " << Basename(path_) << " log ----"
              << std::endl;
  }
}

std::string ChildProcess::Log() const {
  absl::StatusOr<std::string> log = ReadFile(log_path_);
  return log.ok() ? *log : absl::StrCat("<", log.status().ToString(), ">");
}

absl::Status ChildProcess::Signal(int signal) {
  if (reaped_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "pid ", pid_, " already ended: ", exit_status_.ToString()));
  }
  // Not reaped yet, so the pid cannot have been reused by another process.
  if (kill(pid_, signal) != 0)
    return ErrnoStatus(absl::StrCat("kill ", pid_), errno);
  return absl::OkStatus();
}

bool ChildProcess::TryReap() {
  if (reaped_) return true;
  int status;
  pid_t r;
  do {
    r = waitpid(pid_, &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == 0) return false;
  reaped_ = true;
  if (r == pid_) exit_status_ = DecodeWaitStatus(status);
  return true;
}

absl::StatusOr<ExitStatus> ChildProcess::Wait(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  Backoff backoff;
  while (!TryReap()) {
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          Basename(path_), " (pid ", pid_, ") still running after ",
          absl::FormatDuration(timeout)));
    }
    SleepUntilNextPoll(backoff, deadline);
  }
  return exit_status_;
}

bool ChildProcess::Running() { return !TryReap(); }

ExitStatus ChildProcess::Stop(absl::Duration grace) {
  if (TryReap()) return exit_status_;
  kill(pid_, SIGTERM);
  if (Wait(grace).ok()) return exit_status_;
  kill(pid_, SIGKILL);
  int status;
  pid_t r;
  do {
    r = waitpid(pid_, &status, 0);
  } while (r < 0 && errno == EINTR);
  reaped_ = true;
  if (r == pid_) exit_status_ = DecodeWaitStatus(status);
  return exit_status_;
}

double MetricValue(std::string_view exposition_view, std::string_view name_view,
                   std::string_view label_view) {
  const absl::string_view exposition = ToAbsl(exposition_view);
  const absl::string_view name = ToAbsl(name_view);
  const absl::string_view label = ToAbsl(label_view);
  for (absl::string_view line : absl::StrSplit(exposition, '\n')) {
    if (!absl::StartsWith(line, absl::StrCat(name, "{"))) continue;
    const size_t close = line.rfind('}');
    if (close == absl::string_view::npos ||
        !absl::StrContains(line.substr(0, close), label)) {
      continue;
    }
    double value = 0;
    if (absl::SimpleAtod(absl::StripAsciiWhitespace(line.substr(close + 1)),
                         &value)) {
      return value;
    }
  }
  return -1;
}

std::string BinaryPath(std::string_view name_view) {
  const absl::string_view name = ToAbsl(name_view);
  if (const char* sidecar = std::getenv("BULWARK_SIDECAR_BINARY");
      name == "bulwark" && sidecar != nullptr && *sidecar != '\0') {
    return sidecar;
  }
  std::string dir;
  if (const char* env = std::getenv("BULWARK_BINARY_DIR");
      env != nullptr && *env != '\0') {
    dir = env;
  } else {
    // Tests live in <build>/tests/: the build directory is two levels up from
    // this binary.
    char self[4096];
    const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    dir = n > 0 ? Dirname(Dirname(std::string(self, n))) : ".";
  }
  std::vector<std::string> candidates = {absl::StrCat(dir, "/", name)};
  if (!absl::StrContains(name, '/')) {
    candidates.push_back(absl::StrCat(dir, "/tools/", name));
    candidates.push_back(absl::StrCat(dir, "/sidecar/", name));
  }
  for (const std::string& candidate : candidates) {
    struct stat st;
    if (stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return candidates
      .front();  // Missing: Start's exec error will name this path.
}

bool SidecarUnderThreadSanitizer() {
  // The TSan runtime's messages are in every binary that links it.
  static const bool tsan = [] {
    absl::StatusOr<std::string> binary = ReadFile(BinaryPath("bulwark"));
    return binary.ok() && absl::StrContains(*binary, "ThreadSanitizer: ");
  }();
  return tsan;
}

bool SidecarUnderAddressSanitizer() {
  static const bool asan = [] {
    absl::StatusOr<std::string> binary = ReadFile(BinaryPath("bulwark"));
    // GCC links the ASan runtime as a shared library: the binary names it
    // (and imports __asan_init) rather than holding its messages.
    return binary.ok() && (absl::StrContains(*binary, "__asan_init") ||
                           absl::StrContains(*binary, "AddressSanitizer: "));
  }();
  return asan;
}

namespace {

absl::Mutex temp_dirs_mu(absl::kConstInit);
std::vector<std::string>* temp_dirs ABSL_GUARDED_BY(temp_dirs_mu) = nullptr;

// At exit, the directories of a passing test go: ctest runs every test in its
// own process, and thousands of runs would otherwise fill /tmp. A failing test
// keeps them for the post-mortem (its child logs name their paths), as does
// BULWARK_KEEP_TEST_DIRS=1.
void RemoveTempDirsIfPassed() {
  if (!::testing::UnitTest::GetInstance()->Passed()) return;
  if (const char* keep = std::getenv("BULWARK_KEEP_TEST_DIRS");
      keep != nullptr && *keep != '\0' && *keep != '0') {
    return;
  }
  absl::MutexLock lock(&temp_dirs_mu);
  for (const std::string& dir : *temp_dirs) {
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
}

}  // namespace

std::string TempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string pattern =
      absl::StrCat(base != nullptr && *base != '\0' ? base : "/tmp",
                   "/bulwark-", TestLabel(), "-XXXXXX");
  if (mkdtemp(pattern.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp " << pattern << ": " << std::strerror(errno);
    return pattern;
  }
  absl::MutexLock lock(&temp_dirs_mu);
  if (temp_dirs == nullptr) {
    temp_dirs = new std::vector<std::string>();
    std::atexit(RemoveTempDirsIfPassed);
  }
  temp_dirs->push_back(pattern);
  return pattern;
}

absl::Status WriteFile(const std::string& path, std::string_view content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(content.data(), static_cast<std::streamsize>(content.size()));
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

bool PollUntil(absl::AnyInvocable<bool()> condition, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  Backoff backoff;
  while (absl::Now() < deadline) {
    if (condition()) return true;
    SleepUntilNextPoll(backoff, deadline);
  }
  return condition();
}

namespace {

// Polls `ready` until it yields a value, failing early if `child` ends first.
template <typename T>
absl::StatusOr<T> PollFor(absl::AnyInvocable<std::optional<T>()> ready,
                          absl::Duration timeout, ChildProcess* child,
                          absl::string_view waiting_for) {
  const absl::Time deadline = absl::Now() + timeout;
  Backoff backoff;
  while (true) {
    if (std::optional<T> value = ready(); value.has_value())
      return *std::move(value);
    if (child != nullptr && !child->Running()) {
      absl::StatusOr<ExitStatus> exit = child->Wait(absl::ZeroDuration());
      return absl::FailedPreconditionError(absl::StrCat(
          Basename(child->path()), " ended (",
          exit.ok() ? exit->ToString() : exit.status().ToString(),
          ") while waiting for ", waiting_for, "; its log:\n", child->Log()));
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "no ", waiting_for, " after ", absl::FormatDuration(timeout)));
    }
    SleepUntilNextPoll(backoff, deadline);
  }
}

bool CanConnect(int port) {
  ScopedFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return false;
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) ==
         0;
}

}  // namespace

absl::StatusOr<int> WaitForPortFile(const std::string& path,
                                    absl::Duration timeout,
                                    ChildProcess* child) {
  return PollFor<int>(
      [&]() -> std::optional<int> {
        absl::StatusOr<std::string> content = ReadFile(path);
        int port;
        if (content.ok() &&
            absl::SimpleAtoi(absl::StripAsciiWhitespace(*content), &port) &&
            port > 0 && port < 65536) {
          return port;
        }
        return std::nullopt;
      },
      timeout, child, absl::StrCat("port in ", path));
}

absl::Status WaitForTcpPort(int port, absl::Duration timeout,
                            ChildProcess* child) {
  return PollFor<bool>(
             [&]() -> std::optional<bool> {
               if (CanConnect(port)) return true;
               return std::nullopt;
             },
             timeout, child, absl::StrCat("listener on 127.0.0.1:", port))
      .status();
}

absl::StatusOr<int> ConnectTo(int port, int rcvbuf) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", errno));
  if (rcvbuf > 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    const int err = errno;
    close(fd);
    return absl::UnavailableError(
        absl::StrCat("connect 127.0.0.1:", port, ": ", std::strerror(err)));
  }
  return fd;
}

absl::StatusOr<StartedSidecar> StartSidecar(const std::string& config_path,
                                            const std::string& log_path,
                                            absl::Duration timeout) {
  absl::StatusOr<std::unique_ptr<ChildProcess>> child = ChildProcess::Start(
      BinaryPath("bulwark"), {"--config", config_path},
      {.log_path = log_path, .stop_grace = absl::Seconds(20)});
  if (!child.ok()) return child.status();
  StartedSidecar started;
  started.process = *std::move(child);
  const bool up = PollUntil(
      [&] {
        const std::string log = started.process->Log();
        const size_t at = log.find("listening on 127.0.0.1:");
        if (at == std::string::npos) return false;
        absl::string_view line = absl::string_view(log).substr(at + 23);
        line = line.substr(0, line.find('\n'));
        const size_t admin = line.find("admin on port ");
        return admin != absl::string_view::npos &&
               absl::SimpleAtoi(line.substr(0, line.find(' ')),
                                &started.port) &&
               absl::SimpleAtoi(line.substr(admin + 14), &started.admin_port);
      },
      timeout);
  if (!up) {
    return absl::DeadlineExceededError(
        absl::StrCat("the sidecar did not report its ports; its log:\n",
                     started.process->Log()));
  }
  return started;
}

int PickFreePort() {
  ScopedFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (fd.get() < 0 ||
      bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ADD_FAILURE() << "PickFreePort: " << std::strerror(errno);
    return 0;
  }
  return ntohs(addr.sin_port);
}

std::string HttpResponse::Header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (absl::EqualsIgnoreCase(key, ToAbsl(name))) return value;
  }
  return "";
}

namespace {

// Waits until `fd` is ready for `events` or `deadline` passes.
absl::Status PollFd(int fd, short events, absl::Time deadline) {
  while (true) {
    const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left_ms <= 0)
      return absl::DeadlineExceededError("HTTP request timed out");
    pollfd p = {fd, events, 0};
    const int r =
        poll(&p, 1, static_cast<int>(std::min<int64_t>(left_ms, 1000)));
    if (r > 0) return absl::OkStatus();
    if (r < 0 && errno != EINTR) return ErrnoStatus("poll", errno);
  }
}

absl::StatusOr<int> ConnectWithDeadline(absl::string_view host, int port,
                                        absl::Time deadline) {
  addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const std::string host_str(host);
  const std::string port_str = absl::StrCat(port);
  if (int err = getaddrinfo(host_str.c_str(), port_str.c_str(), &hints, &found);
      err != 0) {
    return absl::UnavailableError(
        absl::StrCat("resolve ", host, ": ", gai_strerror(err)));
  }
  absl::Status last =
      absl::UnavailableError(absl::StrCat("no address for ", host));
  for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
    const int fd = socket(ai->ai_family,
                          ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 ||
        (errno == EINPROGRESS && PollFd(fd, POLLOUT, deadline).ok())) {
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err == 0) {
        freeaddrinfo(found);
        return fd;
      }
      last = ErrnoStatus(absl::StrCat("connect ", host, ":", port), err);
    } else {
      last = ErrnoStatus(absl::StrCat("connect ", host, ":", port), errno);
    }
    close(fd);
  }
  freeaddrinfo(found);
  return last;
}

absl::StatusOr<std::string> Dechunk(absl::string_view body) {
  std::string out;
  while (true) {
    const size_t eol = body.find("\r\n");
    if (eol == absl::string_view::npos)
      return absl::DataLossError("bad chunk header");
    absl::string_view size_text = body.substr(0, eol);
    size_text = size_text.substr(0, size_text.find(';'));
    size_t size;
    if (!absl::SimpleHexAtoi(absl::StripAsciiWhitespace(size_text), &size)) {
      return absl::DataLossError(
          absl::StrCat("bad chunk size '", size_text, "'"));
    }
    body.remove_prefix(eol + 2);
    if (size == 0) return out;
    if (body.size() < size + 2) return absl::DataLossError("truncated chunk");
    out.append(body.data(), size);
    body.remove_prefix(size + 2);
  }
}

absl::StatusOr<HttpResponse> ParseHttpResponse(absl::string_view raw) {
  const size_t head_end = raw.find("\r\n\r\n");
  if (head_end == absl::string_view::npos) {
    return absl::DataLossError(
        absl::StrCat("no end of HTTP headers in: ", raw.substr(0, 200)));
  }
  std::vector<absl::string_view> lines =
      absl::StrSplit(raw.substr(0, head_end), "\r\n");
  HttpResponse response;
  // "HTTP/1.1 200 OK"
  std::vector<absl::string_view> status_line =
      absl::StrSplit(lines[0], absl::MaxSplits(' ', 2));
  if (status_line.size() < 2 || !absl::StartsWith(status_line[0], "HTTP/") ||
      !absl::SimpleAtoi(status_line[1], &response.status_code)) {
    return absl::DataLossError(
        absl::StrCat("bad HTTP status line: ", lines[0]));
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    const size_t colon = lines[i].find(':');
    if (colon == absl::string_view::npos) continue;
    response.headers.emplace_back(
        absl::AsciiStrToLower(
            absl::StripAsciiWhitespace(lines[i].substr(0, colon))),
        std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1))));
  }
  absl::string_view body = raw.substr(head_end + 4);
  if (absl::StrContains(
          absl::AsciiStrToLower(response.Header("transfer-encoding")),
          "chunked")) {
    absl::StatusOr<std::string> dechunked = Dechunk(body);
    if (!dechunked.ok()) return dechunked.status();
    response.body = *std::move(dechunked);
  } else if (size_t length;
             absl::SimpleAtoi(response.Header("content-length"), &length)) {
    if (body.size() < length) {
      return absl::DataLossError(absl::StrCat(
          "HTTP body truncated: ", body.size(), " of ", length, " bytes"));
    }
    response.body = std::string(body.substr(0, length));
  } else {
    response.body = std::string(body);
  }
  return response;
}

}  // namespace

absl::StatusOr<HttpResponse> HttpFetch(std::string_view host_view, int port,
                                       std::string_view path_view,
                                       absl::Duration timeout) {
  const absl::string_view host = ToAbsl(host_view);
  const absl::string_view path = ToAbsl(path_view);
  const absl::Time deadline = absl::Now() + timeout;
  absl::StatusOr<int> connected = ConnectWithDeadline(host, port, deadline);
  if (!connected.ok()) return connected.status();
  ScopedFd fd(*connected);

  const std::string host_header = absl::StrContains(host, ':')
                                      ? absl::StrCat("[", host, "]")
                                      : std::string(host);
  const std::string request =
      absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: ", host_header, ":", port,
                   "\r\nConnection: close\r\n\r\n");
  for (size_t sent = 0; sent < request.size();) {
    if (absl::Status st = PollFd(fd.get(), POLLOUT, deadline); !st.ok())
      return st;
    const ssize_t n = send(fd.get(), request.data() + sent,
                           request.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN && errno != EINTR)
      return ErrnoStatus("send", errno);
    if (n > 0) sent += static_cast<size_t>(n);
  }
  std::string raw;
  char buffer[16384];
  while (true) {
    if (absl::Status st = PollFd(fd.get(), POLLIN, deadline); !st.ok())
      return st;
    const ssize_t n = recv(fd.get(), buffer, sizeof buffer, 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return ErrnoStatus("recv", errno);
    }
    raw.append(buffer, static_cast<size_t>(n));
    // A server that keeps the connection open despite "Connection: close" still
    // delimits its body: stop as soon as the response is complete.
    if (absl::StrContains(raw, "\r\n\r\n")) {
      absl::StatusOr<HttpResponse> response = ParseHttpResponse(raw);
      if (response.ok() && (!response->Header("content-length").empty() ||
                            !response->Header("transfer-encoding").empty())) {
        return response;
      }
    }
  }
  return ParseHttpResponse(raw);
}

absl::StatusOr<std::string> HttpGet(std::string_view host, int port,
                                    std::string_view path, int* status_code) {
  absl::StatusOr<HttpResponse> response = HttpFetch(host, port, path);
  if (!response.ok()) return response.status();
  if (status_code != nullptr) *status_code = response->status_code;
  return std::move(response->body);
}

absl::StatusOr<std::unique_ptr<DemoUpstream>> DemoUpstream::Start(
    DemoUpstreamOptions options) {
  auto upstream = std::unique_ptr<DemoUpstream>(
      new DemoUpstream(std::move(options), TempDir()));
  if (absl::Status st = upstream->Launch(0); !st.ok()) return st;
  return upstream;
}

std::string DemoUpstream::address() const {
  return absl::StrCat("127.0.0.1:", port_);
}

std::string DemoUpstream::Log() const {
  return process_ != nullptr ? process_->Log() : last_log_;
}

absl::Status DemoUpstream::Launch(int port) {
  const std::string port_file = absl::StrCat(dir_, "/port");
  std::remove(port_file.c_str());
  std::vector<std::string> args = {absl::StrCat("--port=", port),
                                   absl::StrCat("--port_file=", port_file)};
  if (!options_.name.empty())
    args.push_back(absl::StrCat("--name=", options_.name));
  args.insert(args.end(), options_.extra_args.begin(),
              options_.extra_args.end());
  absl::StatusOr<std::unique_ptr<ChildProcess>> child = ChildProcess::Start(
      BinaryPath("bulwark-demo-upstream"), std::move(args),
      {.log_path = absl::StrCat(dir_, "/demo-upstream-", ++runs_, ".log")});
  if (!child.ok()) return child.status();
  process_ = *std::move(child);
  absl::StatusOr<int> bound =
      WaitForPortFile(port_file, options_.start_timeout, process_.get());
  if (!bound.ok()) {
    last_log_ = process_->Log();
    process_.reset();
    if (bound.status().code() == absl::StatusCode::kFailedPrecondition) {
      return bound.status();  // Already carries the log.
    }
    return absl::Status(bound.status().code(),
                        absl::StrCat(bound.status().message(),
                                     "; demo upstream log:\n", last_log_));
  }
  port_ = *bound;
  return absl::OkStatus();
}

absl::Status DemoUpstream::Stop(absl::Duration timeout) {
  if (process_ == nullptr) return absl::OkStatus();
  absl::Status result = process_->Signal(SIGTERM);
  absl::StatusOr<ExitStatus> exit = process_->Wait(timeout);
  if (!exit.ok()) {
    process_->Stop(absl::ZeroDuration());
    result.Update(exit.status());
  } else if (!exit->ExitedWith(0)) {
    result.Update(absl::InternalError(absl::StrCat(
        "demo upstream ended with ", exit->ToString(), " after SIGTERM")));
  }
  last_log_ = process_->Log();
  process_.reset();
  if (!result.ok()) {
    return absl::Status(result.code(),
                        absl::StrCat(result.message(), "; log:\n", last_log_));
  }
  return absl::OkStatus();
}

absl::Status DemoUpstream::Restart() {
  if (absl::Status st = Stop(); !st.ok()) return st;
  // The old listener is closed once the process is gone (gRPC binds with
  // SO_REUSEADDR), but a failed start is retried in case the port is briefly
  // held, e.g. by a late accept.
  const absl::Time deadline = absl::Now() + options_.start_timeout;
  Backoff backoff;
  absl::Status st;
  do {
    st = Launch(port_);
    if (st.ok()) return st;
    SleepUntilNextPoll(backoff, deadline);
  } while (absl::Now() < deadline);
  return st;
}

}  // namespace bulwark::test

namespace bulwark::test {

bool HaveRedisServer() {
  return access(kRedisServerPath, X_OK) == 0 &&
         access(kRedisCliPath, X_OK) == 0;
}

absl::StatusOr<std::unique_ptr<RedisServer>> RedisServer::Start(
    RedisServerOptions options) {
  if (options.port == 0) options.port = PickFreePort();
  auto server =
      std::unique_ptr<RedisServer>(new RedisServer(std::move(options)));
  if (absl::Status s = server->Launch(); !s.ok()) return s;
  return server;
}

std::string RedisServer::address() const {
  return absl::StrCat("127.0.0.1:", options_.port);
}

absl::Status RedisServer::Launch() {
  std::vector<std::string> args;
  if (options_.tls_only) {
    args = {"--port", "0", "--tls-port", absl::StrCat(options_.port)};
  } else {
    args = {"--port", absl::StrCat(options_.port)};
  }
  for (const char* a :
       {"--bind", "127.0.0.1", "--save", "", "--appendonly", "no"}) {
    args.emplace_back(a);
  }
  args.insert(args.end(), options_.extra_args.begin(),
              options_.extra_args.end());
  auto process = ChildProcess::Start(kRedisServerPath, std::move(args),
                                     {.stop_grace = absl::Seconds(2)});
  if (!process.ok()) return process.status();
  process_ = *std::move(process);
  return WaitForTcpPort(options_.port, absl::Seconds(10), process_.get());
}

void RedisServer::Freeze() {
  if (process_ != nullptr) (void)process_->Signal(SIGSTOP);
}

void RedisServer::Thaw() {
  if (process_ != nullptr) (void)process_->Signal(SIGCONT);
}

void RedisServer::Kill() {
  if (process_ == nullptr) return;
  (void)process_->Signal(SIGKILL);
  (void)process_->Wait(absl::Seconds(10));
  process_.reset();
}

absl::Status RedisServer::Restart() {
  Kill();
  return Launch();
}

absl::StatusOr<std::string> RedisServer::Cli(std::vector<std::string> args,
                                             absl::Duration timeout) {
  std::vector<std::string> full = {"-h", "127.0.0.1", "-p",
                                   absl::StrCat(options_.port)};
  full.insert(full.end(), std::make_move_iterator(args.begin()),
              std::make_move_iterator(args.end()));
  return RunRedisCli(std::move(full), timeout);
}

absl::StatusOr<std::string> RunRedisCli(std::vector<std::string> args,
                                        absl::Duration timeout) {
  const std::string joined = absl::StrJoin(args, " ");
  auto cli = ChildProcess::Start(kRedisCliPath, std::move(args),
                                 {.stop_grace = absl::Seconds(1)});
  if (!cli.ok()) return cli.status();
  auto exit = (*cli)->Wait(timeout);
  if (!exit.ok()) {
    (void)(*cli)->Stop(absl::Seconds(1));
    return absl::DeadlineExceededError(
        absl::StrCat("redis-cli ", joined, ": no end within ",
                     absl::FormatDuration(timeout), ": ", (*cli)->Log()));
  }
  std::string out = (*cli)->Log();
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) {
    out.pop_back();
  }
  if (!exit->ExitedWith(0)) {
    return absl::InternalError(
        absl::StrCat("redis-cli ", joined, ": ", exit->ToString(), ": ", out));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<RedisCluster>> RedisCluster::Start(
    int nodes, std::vector<std::string> extra_args) {
  auto cluster = std::unique_ptr<RedisCluster>(new RedisCluster());
  const std::string dir = TempDir();
  std::vector<int> taken;
  auto fresh_port = [&taken] {
    for (;;) {
      const int port = PickFreePort();
      // A node listens on port and port's cluster bus: never hand out one
      // twice.
      if (std::find(taken.begin(), taken.end(), port) == taken.end()) {
        taken.push_back(port);
        return port;
      }
    }
  };
  std::vector<std::string> create = {"--cluster", "create"};
  for (int i = 0; i < nodes; ++i) {
    const int port = fresh_port();
    const int bus = fresh_port();
    std::vector<std::string> args = {
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        absl::StrCat(dir, "/nodes-", port, ".conf"),
        "--cluster-require-full-coverage",
        "no",
        "--cluster-node-timeout",
        "2000",
        "--cluster-port",
        absl::StrCat(bus),
        "--dir",
        dir};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    auto node =
        RedisServer::Start({.port = port, .extra_args = std::move(args)});
    if (!node.ok()) return node.status();
    create.push_back((*node)->address());
    cluster->nodes_.push_back(*std::move(node));
  }
  for (const char* a : {"--cluster-replicas", "0", "--cluster-yes"}) {
    create.emplace_back(a);
  }
  if (auto out = RunRedisCli(std::move(create), absl::Seconds(60)); !out.ok()) {
    return out.status();
  }
  for (int i = 0; i < nodes; ++i) {
    std::string last;
    RedisServer& node = *cluster->nodes_[i];
    const bool ok = PollUntil(
        [&] {
          auto info = node.Cli({"CLUSTER", "INFO"});
          last = info.ok() ? *info : std::string(info.status().message());
          return info.ok() && absl::StrContains(*info, "cluster_state:ok") &&
                 absl::StrContains(*info, "cluster_slots_assigned:16384") &&
                 absl::StrContains(*info,
                                   absl::StrCat("cluster_known_nodes:", nodes));
        },
        absl::Seconds(30));
    if (!ok) {
      return absl::DeadlineExceededError(absl::StrCat(
          "node ", node.address(), ": cluster not ok within 30s: ", last));
    }
    auto id = node.Cli({"CLUSTER", "MYID"});
    if (!id.ok()) return id.status();
    cluster->ids_.push_back(*id);
  }
  return cluster;
}

RedisServer* RedisCluster::AnyLive() {
  for (auto& node : nodes_) {
    if (node->running()) return node.get();
  }
  return nullptr;
}

absl::StatusOr<int> RedisCluster::KeySlot(const std::string& key) {
  RedisServer* node = AnyLive();
  if (node == nullptr) return absl::FailedPreconditionError("no live node");
  auto out = node->Cli({"CLUSTER", "KEYSLOT", key});
  if (!out.ok()) return out.status();
  int slot = 0;
  if (!absl::SimpleAtoi(*out, &slot)) {
    return absl::InternalError(absl::StrCat("CLUSTER KEYSLOT: ", *out));
  }
  return slot;
}

absl::StatusOr<int> RedisCluster::NodeServing(int slot) {
  RedisServer* live = AnyLive();
  if (live == nullptr) return absl::FailedPreconditionError("no live node");
  auto out = live->Cli({"CLUSTER", "NODES"});
  if (!out.ok()) return out.status();
  // <id> <ip:port@bus[,host]> <flags> <master> <ping> <pong> <epoch> <link>
  // <slot or range>... ([slot->-id] entries are migrations: skipped).
  for (absl::string_view line : absl::StrSplit(*out, '\n')) {
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (fields.size() < 9) continue;
    absl::string_view address = fields[1];
    address = address.substr(0, address.find('@'));
    int port = 0;
    if (!absl::SimpleAtoi(address.substr(address.rfind(':') + 1), &port)) {
      continue;
    }
    for (size_t f = 8; f < fields.size(); ++f) {
      if (absl::StartsWith(fields[f], "[")) continue;
      std::vector<absl::string_view> range = absl::StrSplit(fields[f], '-');
      int first = 0;
      int last = 0;
      if (!absl::SimpleAtoi(range[0], &first)) continue;
      last = first;
      if (range.size() > 1 && !absl::SimpleAtoi(range[1], &last)) continue;
      if (slot < first || slot > last) continue;
      for (int i = 0; i < size(); ++i) {
        if (nodes_[i]->port() == port) return i;
      }
    }
  }
  return absl::NotFoundError(
      absl::StrCat("no node serves slot ", slot, ": ", *out));
}

namespace {

absl::Status ExpectOk(absl::StatusOr<std::string> out, absl::string_view what) {
  if (!out.ok()) return out.status();
  if (*out != "OK") {
    return absl::InternalError(absl::StrCat(what, ": ", *out));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RedisCluster::BeginMigration(int slot, int from, int to) {
  const std::string s = absl::StrCat(slot);
  if (absl::Status st = ExpectOk(
          nodes_[to]->Cli({"CLUSTER", "SETSLOT", s, "IMPORTING", ids_[from]}),
          "SETSLOT IMPORTING");
      !st.ok()) {
    return st;
  }
  return ExpectOk(
      nodes_[from]->Cli({"CLUSTER", "SETSLOT", s, "MIGRATING", ids_[to]}),
      "SETSLOT MIGRATING");
}

absl::Status RedisCluster::MigrateKeys(int slot, int from, int to) {
  for (int round = 0; round < 100; ++round) {
    auto keys = nodes_[from]->Cli(
        {"CLUSTER", "GETKEYSINSLOT", absl::StrCat(slot), "100"});
    if (!keys.ok()) return keys.status();
    if (keys->empty()) return absl::OkStatus();
    for (absl::string_view key :
         absl::StrSplit(*keys, '\n', absl::SkipEmpty())) {
      auto out = nodes_[from]->Cli({"MIGRATE", "127.0.0.1",
                                    absl::StrCat(nodes_[to]->port()),
                                    std::string(key), "0", "5000"});
      if (!out.ok()) return out.status();
      if (*out != "OK" && *out != "NOKEY") {
        return absl::InternalError(absl::StrCat("MIGRATE ", key, ": ", *out));
      }
    }
  }
  return absl::DeadlineExceededError("slot never emptied");
}

absl::Status RedisCluster::EndMigration(int slot, int to) {
  const std::string s = absl::StrCat(slot);
  // The importing node first, as redis-cli --cluster reshard does.
  if (absl::Status st =
          ExpectOk(nodes_[to]->Cli({"CLUSTER", "SETSLOT", s, "NODE", ids_[to]}),
                   "SETSLOT NODE");
      !st.ok()) {
    return st;
  }
  for (int i = 0; i < size(); ++i) {
    if (i == to || !nodes_[i]->running()) continue;
    if (absl::Status st = ExpectOk(
            nodes_[i]->Cli({"CLUSTER", "SETSLOT", s, "NODE", ids_[to]}),
            "SETSLOT NODE");
        !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

}  // namespace bulwark::test
