// The integration-test fixture: runs the real binaries (the sidecar, the demo
// upstream, peers) as child processes on 127.0.0.1 with ephemeral ports, and
// offers the small blocking helpers the tests need around them (port discovery,
// polling, a minimal HTTP client).
//
// Free of gRPC on purpose, so every integration test can link it cheaply.
// Waiting is always polling against a deadline with a short backoff, never a
// fixed sleep, so tests stay fast on an idle machine and correct on a loaded
// one.
//
// Thread-safety: ChildProcess, DemoUpstream, RedisServer and RedisCluster are
// not thread-safe; use each
// from one thread. The free functions are thread-safe.
#ifndef BULWARK_TESTS_INTEGRATION_PROCESS_H_
#define BULWARK_TESTS_INTEGRATION_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace bulwark::test {

// How a child ended.
struct ExitStatus {
  // true: it returned exit_code; false: it was killed by `signal`.
  bool exited = false;
  int exit_code = 0;
  int signal = 0;

  bool ExitedWith(int code) const { return exited && exit_code == code; }
  std::string ToString() const;  // "exit 0", "signal 9 (Killed)"
};

struct ChildOptions {
  // Extra "KEY=VALUE" entries on top of this process's environment.
  std::vector<std::string> env;
  // stdout and stderr go here; default: a fresh file under TempDir().
  std::string log_path;
  // From SIGTERM to SIGKILL in the destructor.
  absl::Duration stop_grace = absl::Seconds(10);
};

// A child process started with fork/exec, its stdout and stderr captured in a
// log file. The destructor stops it (SIGTERM, then SIGKILL after stop_grace)
// and reaps it; only its own pid is ever signalled or waited for. If the log
// holds a ThreadSanitizer report (scripts/test.sh runs these tests against a
// TSan sidecar, see BinaryPath), the destructor fails the current test with
// it, whether or not the child went on running. If the current test has
// failed, the destructor prints the child's log, so a failing test shows what
// its processes said.
//
// The child gets PR_SET_PDEATHSIG(SIGKILL), so it dies with the test even if
// the test is killed. Linux ties that to the thread that forked: start children
// from the test's main thread (or a thread that outlives them).
class ChildProcess {
 public:
  // `path` is the executable; args exclude argv[0] (set to `path`). Fails if
  // the exec fails.
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(
      std::string path, std::vector<std::string> args,
      ChildOptions options = {});
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& path() const { return path_; }
  const std::string& log_path() const { return log_path_; }

  // Everything the child wrote to stdout and stderr so far.
  std::string Log() const;

  // Sends `signal` unless the child has been reaped already.
  absl::Status Signal(int signal);

  // Waits up to `timeout` for the child to end and reaps it. DeadlineExceeded
  // if it is still running. Once reaped, returns the same status again at once.
  absl::StatusOr<ExitStatus> Wait(absl::Duration timeout);

  // True while the child has not ended (reaps it if it just did).
  bool Running();

  // SIGTERM, wait up to `grace`, then SIGKILL; returns how it ended.
  ExitStatus Stop(absl::Duration grace);

 private:
  ChildProcess(pid_t pid, std::string path, std::string log_path,
               absl::Duration stop_grace)
      : pid_(pid),
        path_(std::move(path)),
        log_path_(std::move(log_path)),
        stop_grace_(stop_grace) {}
  bool TryReap();  // Non-blocking waitpid on our pid.

  const pid_t pid_;
  const std::string path_;
  const std::string log_path_;
  const absl::Duration stop_grace_;
  bool reaped_ = false;
  ExitStatus exit_status_;
};

// The path of a built binary: BULWARK_BINARY_DIR (set by ctest) joined with
// `name`, also tried under tools/ and sidecar/ for a bare name
// ("bulwark-demo-upstream", "bulwark"). Without BULWARK_BINARY_DIR, the build
// directory is guessed from this test's location. For "bulwark" only,
// BULWARK_SIDECAR_BINARY (a path) wins: scripts/test.sh runs a release
// build's integration tests against the ThreadSanitizer build's sidecar, since
// the TSan build cannot link gRPC and so has no tests of its own that need it.
std::string BinaryPath(std::string_view name);

// Whether BinaryPath("bulwark") is built with ThreadSanitizer (its runtime is
// linked in). Its RSS then counts TSan's shadow memory and allocator caches,
// so tests that measure the sidecar's memory skip those checks; the release
// run keeps them.
bool SidecarUnderThreadSanitizer();
// Whether it is built with AddressSanitizer: its allocator keeps freed memory
// in quarantine (256 MiB by default), so tests whose bytes pass through the
// sidecar skip their RSS bounds under it too.
bool SidecarUnderAddressSanitizer();

// A fresh, empty directory for the current test (under TEST_TMPDIR or /tmp).
// Removed at exit if the test passed, kept (for its logs) if it failed or if
// BULWARK_KEEP_TEST_DIRS=1.
std::string TempDir();

absl::Status WriteFile(const std::string& path, std::string_view content);
absl::StatusOr<std::string> ReadFile(const std::string& path);

// Polls `condition` with a short backoff until it holds or `timeout` passes;
// returns whether it held (checked once more at the deadline).
bool PollUntil(absl::AnyInvocable<bool()> condition, absl::Duration timeout);

// Waits for `path` to hold a port number (written atomically by the binary). If
// `child` is given and ends first, fails at once with its log.
absl::StatusOr<int> WaitForPortFile(const std::string& path,
                                    absl::Duration timeout,
                                    ChildProcess* child = nullptr);

// Waits until 127.0.0.1:`port` accepts TCP connections; same `child` check as
// above.
absl::Status WaitForTcpPort(int port, absl::Duration timeout,
                            ChildProcess* child = nullptr);

// A port that was free a moment ago (bind to port 0, read it, close). Only for
// binaries that cannot report their own port: another process may take it
// before the binary binds it.
int PickFreePort();

// A sidecar started by StartSidecar, with the ports it reported.
struct StartedSidecar {
  std::unique_ptr<ChildProcess> process;
  int port = 0;        // the listener
  int admin_port = 0;  // the admin server
};

// Starts BinaryPath("bulwark") with `--config config_path` (its listener and
// admin addresses on port 0, so it picks them) logging to `log_path`, and
// reads both ports back from its start-up line ("listening on 127.0.0.1:PORT
// with N workers; admin on port PORT"). Fails with the log if the line does
// not come within `timeout`.
absl::StatusOr<StartedSidecar> StartSidecar(
    const std::string& config_path, const std::string& log_path,
    absl::Duration timeout = absl::Seconds(30));

// A blocking TCP connection to 127.0.0.1:`port` (SO_RCVBUF set first when
// `rcvbuf` > 0), for tests that speak raw bytes or frames.
absl::StatusOr<int> ConnectTo(int port, int rcvbuf = 0);

struct HttpResponse {
  int status_code = 0;
  // Names lower-cased, in the order received.
  std::vector<std::pair<std::string, std::string>> headers;
  // De-chunked if the server used chunked encoding.
  std::string body;

  // The first value of header `name` (case-insensitive), or "".
  std::string Header(std::string_view name) const;
};

// A minimal blocking HTTP/1.1 client (Connection: close) for the admin
// endpoints.
absl::StatusOr<HttpResponse> HttpFetch(
    std::string_view host, int port, std::string_view path,
    absl::Duration timeout = absl::Seconds(10));

// The body of GET `path`; the HTTP status goes to *status_code when not null.
absl::StatusOr<std::string> HttpGet(std::string_view host, int port,
                                    std::string_view path, int* status_code);

// The value of the first series `name{...}` of a Prometheus exposition whose
// label text contains `label` (e.g. `route="demo"`), or -1 when there is none.
double MetricValue(std::string_view exposition, std::string_view name,
                   std::string_view label);

// redis-server and redis-cli as Debian installs them; tests that need them
// GTEST_SKIP when HaveRedisServer() is false.
inline constexpr char kRedisServerPath[] = "/usr/bin/redis-server";
inline constexpr char kRedisCliPath[] = "/usr/bin/redis-cli";
bool HaveRedisServer();

struct RedisServerOptions {
  // 0: a free port (PickFreePort).
  int port = 0;
  // Listen with TLS only: --port 0 --tls-port `port` (the TLS flags go in
  // extra_args).
  bool tls_only = false;
  // After "--bind 127.0.0.1 --save '' --appendonly no" and the port flags.
  std::vector<std::string> extra_args;
};

// A redis-server child on 127.0.0.1, no persistence, ready (accepting TCP)
// once Start returns; stopped by its pid when destroyed.
class RedisServer {
 public:
  static absl::StatusOr<std::unique_ptr<RedisServer>> Start(
      RedisServerOptions options = {});

  int port() const { return options_.port; }
  std::string address() const;  // "127.0.0.1:port"
  ChildProcess* process() { return process_.get(); }
  bool running() const { return process_ != nullptr; }

  void Freeze();  // SIGSTOP
  void Thaw();    // SIGCONT
  // SIGKILL, as a crash would (a frozen server dies too).
  void Kill();
  // A fresh server (empty, unless its flags name files) on the same port.
  absl::Status Restart();

  // Runs redis-cli against this server (`args` after -h/-p) and returns
  // what it printed (stdout and stderr), without a trailing newline.
  absl::StatusOr<std::string> Cli(std::vector<std::string> args,
                                  absl::Duration timeout = absl::Seconds(10));

 private:
  explicit RedisServer(RedisServerOptions options)
      : options_(std::move(options)) {}
  absl::Status Launch();

  RedisServerOptions options_;
  std::unique_ptr<ChildProcess> process_;
};

// Runs redis-cli with `args` and returns its output (stdout and stderr),
// without a trailing newline; fails if it does not end within `timeout` or
// exits non-zero.
absl::StatusOr<std::string> RunRedisCli(
    std::vector<std::string> args, absl::Duration timeout = absl::Seconds(10));

// A Redis Cluster of `nodes` masters (no replicas) on 127.0.0.1, each
// `redis-server --cluster-enabled yes --cluster-require-full-coverage no
// --cluster-node-timeout 2000` with its own free --port and --cluster-port and
// a config file under TempDir(), formed with `redis-cli --cluster create`
// (the slots split evenly, in node order); Start returns once every node
// reports cluster_state:ok and knows every other one. Nodes stop by pid when
// it is destroyed.
class RedisCluster {
 public:
  static absl::StatusOr<std::unique_ptr<RedisCluster>> Start(
      int nodes = 3, std::vector<std::string> extra_args = {});

  int size() const { return static_cast<int>(nodes_.size()); }
  RedisServer& node(int i) { return *nodes_[i]; }

  // Node i's cluster id (CLUSTER MYID).
  const std::string& id(int i) const { return ids_[i]; }

  // The slot of `key` (CLUSTER KEYSLOT on a live node).
  absl::StatusOr<int> KeySlot(const std::string& key);

  // Which node serves `slot` now, as a live node's CLUSTER NODES says.
  absl::StatusOr<int> NodeServing(int slot);

  // Moves `slot` from node `from` to node `to` the way redis-cli --cluster
  // reshard does, in steps the test can observe between: BeginMigration
  // (IMPORTING on `to`, MIGRATING on `from`), MigrateKeys (MIGRATE every key
  // of the slot: `from` then answers ASK), EndMigration (SETSLOT NODE on
  // every live node: MOVED from then on).
  absl::Status BeginMigration(int slot, int from, int to);
  absl::Status MigrateKeys(int slot, int from, int to);
  absl::Status EndMigration(int slot, int to);

 private:
  RedisCluster() = default;
  // A node still running, to ask.
  RedisServer* AnyLive();

  std::vector<std::unique_ptr<RedisServer>> nodes_;
  std::vector<std::string> ids_;
};

struct DemoUpstreamOptions {
  // --name; default: the binary's own "127.0.0.1:port".
  std::string name;
  // Further flags for the binary.
  std::vector<std::string> extra_args;
  absl::Duration start_timeout = absl::Seconds(30);
};

// A running bulwark-demo-upstream on 127.0.0.1 and an ephemeral port, ready to
// serve once Start returns.
class DemoUpstream {
 public:
  static absl::StatusOr<std::unique_ptr<DemoUpstream>> Start(
      DemoUpstreamOptions options = {});

  int port() const { return port_; }
  std::string address() const;  // "127.0.0.1:port"
  bool running() const { return process_ != nullptr; }
  ChildProcess* process() { return process_.get(); }
  std::string Log() const;  // The current (or last) run's output.

  // SIGTERM; OK if it exited 0 within `timeout` (then killed otherwise).
  absl::Status Stop(absl::Duration timeout = absl::Seconds(30));

  // Stops it if running, then starts it again on the same port.
  absl::Status Restart();

 private:
  explicit DemoUpstream(DemoUpstreamOptions options, std::string dir)
      : options_(std::move(options)), dir_(std::move(dir)) {}
  absl::Status Launch(int port);

  const DemoUpstreamOptions options_;
  const std::string dir_;
  int port_ = 0;
  int runs_ = 0;
  std::string last_log_;
  std::unique_ptr<ChildProcess> process_;
};

}  // namespace bulwark::test

#endif  // BULWARK_TESTS_INTEGRATION_PROCESS_H_
