// SPDX-License-Identifier: MIT
// Background work that outlives the request: ctx::detach keeps the trace ID,
// drops the request's cancellation, and gives the work a timeout of its own.
#include <ctx/ctx.hpp>
#include <ctx/detach.hpp>
#include <ctx/sleep.hpp>

#include <chrono>
#include <cstdio>
#include <latch>
#include <string>
#include <system_error>

using namespace std::chrono_literals;

namespace {

inline constexpr ctx::key<std::string> trace_id{"trace_id"};

/// A slow audit store: the write takes 20 ms, longer than the request lives.
void write_audit_log(const ctx::context& c, const std::string& order) {
  const std::string* trace = c.value(trace_id);
  if (const std::error_code ec = ctx::sleep_for(c, 20ms)) {
    std::printf("[trace %s] audit write abandoned: %s\n", trace ? trace->c_str() : "-", ec.message().c_str());
    return;
  }
  std::printf("[trace %s] audit log: %s\n", trace ? trace->c_str() : "-", order.c_str());
}

std::string handle(const ctx::context& request, const std::string& order, std::latch& audit_done) {
  // Wrong: write_audit_log(request, order) on another thread would be cancelled
  // with the request; from ctx::background() it would lose the trace ID and
  // have no bound at all. detach() does it right:
  ctx::detach(request, 1s, [order, &audit_done](const ctx::context& c) {
    write_audit_log(c, order);
    audit_done.count_down();
  });
  return "accepted " + order;
}

}  // namespace

int main() {
  std::latch audit_done(1);
  {
    auto [request, end_request] =
        ctx::with_timeout(ctx::with_value(ctx::background(), trace_id, std::string("a1b2c3")), 10ms);
    std::printf("reply: %s\n", handle(request, "order-17", audit_done).c_str());
  }  // the request ends here: its cancel handle cancels it
  std::puts("request finished");
  audit_done.wait();  // a server drains detached work like this at shutdown
  return 0;
}
