// SPDX-License-Identifier: MIT
// The zombie report: a handler ignores its context, the request's deadline
// passes, and ctx::inspect names the line where the forgotten work got its context.
#include <ctx/ctx.hpp>
#include <ctx/inspect.hpp>

#include <chrono>
#include <iostream>
#include <latch>
#include <thread>

using namespace std::chrono_literals;

// A handler that takes a context and then ignores it: the call it blocks in
// (here a latch; in real life a driver call without a timeout) never sees `db`.
void handle(const ctx::context& request, std::latch& unstuck) {
  auto [db, cancel] = ctx::with_timeout(request, 2s);  // the line the report names
  unstuck.wait();
}

int main() {
  ctx::inspect::enable();  // or run the program with CTX_INSPECT=1
  std::latch unstuck{1};
  std::thread worker;
  {
    auto [request, cancel] = ctx::with_timeout(ctx::background(), 50ms);
    worker = std::thread(handle, request, std::ref(unstuck));
    request.wait();  // the caller gives up at the deadline...
  }                  // ...and forgets the request; the handler still holds it
  std::this_thread::sleep_for(100ms);
  // Contexts done for at least 50 ms that something outside their tree still holds.
  std::cout << ctx::inspect::report(50ms);
  unstuck.count_down();
  worker.join();
  std::cout << "\nafter the handler returned:\n" << ctx::inspect::report(50ms);
}
