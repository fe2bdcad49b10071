#include "tests/integration/paced_load.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "bulwark/demo/v1/demo.grpc.pb.h"

namespace bulwark::test {

using ::bulwark::demo::v1::Demo;
using ::bulwark::demo::v1::EchoRequest;
using ::bulwark::demo::v1::EchoResponse;

std::string ToString(const Counts& c) {
  return absl::StrCat("ok ", c.ok, ", rate_limited ", c.rate_limited,
                      ", other ", c.other, ", slowest ",
                      absl::FormatDuration(c.max_latency));
}

PacedLoad::PacedLoad(Options options) : options_(std::move(options)) {
  const absl::Time start = absl::Now();
  for (int t = 0; t < options_.threads; ++t) {
    threads_.emplace_back([this, t, start] { Run(t, start); });
  }
}

void PacedLoad::Stop() {
  stop_.store(true);
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

Counts PacedLoad::Between(absl::Time from, absl::Time to) {
  Counts c;
  absl::MutexLock lock(&mu_);
  for (const PacedCall& call : calls_) {
    if (call.start < from || call.start >= to) continue;
    if (call.code == grpc::StatusCode::OK) {
      ++c.ok;
    } else if (call.rate_limited) {
      ++c.rate_limited;
    } else {
      ++c.other;
    }
    c.max_latency = std::max(c.max_latency, call.took);
  }
  return c;
}

void PacedLoad::Run(int thread, absl::Time start) {
  grpc::ChannelArguments args;
  args.SetInt("grpc.use_local_subchannel_pool", 1);
  auto stub = Demo::NewStub(
      grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", options_.port),
                                grpc::InsecureChannelCredentials(), args));
  const absl::Duration gap = absl::Seconds(options_.threads / options_.rate);
  const absl::Time first =
      start + absl::Seconds(thread / options_.rate);  // spread the threads
  for (int64_t i = 0; !stop_.load(); ++i) {
    const absl::Time due = first + gap * i;
    if (const absl::Time now = absl::Now(); now < due) {
      absl::SleepFor(due - now);  // pacing the caller, not waiting for it
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    for (const auto& [k, v] : options_.metadata) ctx.AddMetadata(k, v);
    EchoRequest request;
    request.set_payload("x");
    EchoResponse response;
    const absl::Time begun = absl::Now();
    const grpc::Status status = options_.method == "Write"
                                    ? stub->Write(&ctx, request, &response)
                                    : stub->Echo(&ctx, request, &response);
    const absl::Duration took = absl::Now() - begun;
    const auto& trailers = ctx.GetServerTrailingMetadata();
    auto it = trailers.find("x-bulwark-reason");
    const bool limited = it != trailers.end() &&
                         absl::string_view(it->second.data(),
                                           it->second.size()) == "rate_limited";
    absl::MutexLock lock(&mu_);
    calls_.push_back({begun, took, status.error_code(), limited});
  }
}

}  // namespace bulwark::test
