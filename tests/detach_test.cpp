// SPDX-License-Identifier: MIT
// <ctx/detach.hpp>: detached work keeps the request's values, not its cancellation, and has its own timeout.
#include <ctx/detach.hpp>
#include <ctx/testing.hpp>

#include <atomic>
#include <chrono>
#include <latch>
#include <memory>
#include <optional>
#include <string>
#include <system_error>

#include "support/catch.hpp"
#include "support/common.hpp"

using namespace std::chrono_literals;

namespace {

inline constexpr ctx::key<std::string> trace_id{"trace_id"};

/// Counts `finished` down when the last copy of the work's callable is gone,
/// which detach guarantees is after the work's context was released.
struct finish_signal {
  explicit finish_signal(std::latch& l) : finished(&l) {}
  finish_signal(const finish_signal&) = delete;
  finish_signal& operator=(const finish_signal&) = delete;
  ~finish_signal() { finished->count_down(); }
  std::latch* finished;
};

}  // namespace

TEST_CASE("detached work keeps the request's values and outlives its cancellation", "[detach]") {
  auto [request, end_request] =
      ctx::with_cancel(ctx::with_value(ctx::background(), trace_id, std::string("t-42")));
  std::latch request_ended(1);
  std::latch finished(1);
  std::optional<std::string> seen_trace;
  bool done_after_request = true;
  std::error_code err_after_request = ctx::errc::canceled;
  std::optional<ctx::context::time_point> deadline;
  ctx::detach(request, 1h, [&, signal = std::make_shared<finish_signal>(finished)](const ctx::context& c) {
    request_ended.wait();
    if (const std::string* t = c.value(trace_id)) seen_trace = *t;
    done_after_request = c.done();
    err_after_request = c.err();
    deadline = c.deadline();
  });
  end_request();  // the response went out
  request_ended.count_down();
  finished.wait();
  CHECK(seen_trace == "t-42");
  CHECK_FALSE(done_after_request);
  CHECK_FALSE(err_after_request);
  REQUIRE(deadline.has_value());
  CHECK(*deadline > std::chrono::steady_clock::now() + 30min);
}

TEST_CASE("detached work ends at its own timeout, counted from the call", "[detach]") {
  const auto start = manual::now();
  // The request's own deadline is earlier than the detached work's.
  auto [request, end_request] = ctx::with_timeout(ctx::background<manual>(), 1s);
  std::latch finished(1);
  std::error_code err;
  manual::time_point ended_at{};
  std::optional<manual::time_point> deadline;
  ctx::detach(request, 5s,
              [&, signal = std::make_shared<finish_signal>(finished)](const ctx::basic_context<manual>& c) {
                deadline = c.deadline();
                c.wait();
                err = c.err();
                ended_at = manual::now();
              });
  manual::advance(1s);  // the request times out; the detached work does not
  CHECK(request.done());
  manual::advance(4s);
  finished.wait();
  CHECK(deadline == start + 5s);
  CHECK(err == ctx::errc::deadline_exceeded);
  CHECK(ended_at == start + 5s);
}

TEST_CASE("detached_context drops cancellation and deadline but keeps values", "[detach]") {
  auto [request, end_request] =
      ctx::with_timeout(ctx::with_value(ctx::background<manual>(), trace_id, std::string("t-7")), 1s);
  end_request();
  auto [d, cancel] = ctx::detached_context(request, 10s);
  CHECK_FALSE(d.done());
  REQUIRE(d.value(trace_id) != nullptr);
  CHECK(*d.value(trace_id) == "t-7");
  CHECK(d.deadline() == manual::now() + 10s);
  cancel();
  CHECK(d.err() == ctx::errc::canceled);
}

TEST_CASE("detached work frees its timer when it returns", "[detach]") {
  auto& timers = ctx::detail::timer_service<manual>::instance();
  const std::size_t base = timers.pending();
  std::latch finished(1);
  ctx::detach(ctx::background<manual>(), 1h,
              [signal = std::make_shared<finish_signal>(finished)](const ctx::basic_context<manual>&) {});
  finished.wait();
  CHECK(timers.pending() == base);
}
