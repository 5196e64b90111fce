// SPDX-License-Identifier: MIT
// One cancel stops a whole tree of workers; the cause says why; after_func
// and std::jthread plug in through the context's stop token.
#include <ctx/ctx.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <system_error>
#include <thread>
#include <vector>

int main() {
  auto [request, cancel] = ctx::with_cancel(ctx::background());
  std::atomic<int> stopped{0};

  std::vector<std::jthread> workers;
  std::vector<ctx::cancel_handle> handles;
  for (int i = 0; i < 4; ++i) {
    auto [worker_ctx, worker_cancel] = ctx::with_cancel(request);  // one child per worker
    handles.push_back(std::move(worker_cancel));
    workers.emplace_back([&stopped, c = worker_ctx, i] {
      c.wait();  // real code would block in an adapter here
      std::printf("worker %d stopped: %s (cause: %s)\n", i, c.err().message().c_str(),
                  c.cause().message().c_str());
      stopped.fetch_add(1);
    });
  }

  auto log = ctx::after_func(request, [] { std::puts("request cancelled: waking everyone"); });

  // The client went away: cancel with a cause that says so.
  cancel(std::make_error_code(std::errc::connection_aborted));
  for (auto& w : workers) w.join();

  std::printf("%d of 4 workers stopped; request err: %s\n", stopped.load(), request.err().message().c_str());
  return stopped == 4 && request.cause() == std::errc::connection_aborted ? 0 : 1;
}
