// SPDX-License-Identifier: MIT
// A job queue on Redis: publishes under a deadline, and a consumer blocked in
// BLPOP that returns the moment the service shuts down.
#include <ctx/ctx.hpp>
#include <ctx/redis.hpp>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <latch>
#include <string>
#include <thread>

using namespace std::chrono_literals;
using ctx::redis::connection_state;

int main() {
  // A throwaway redis-server for the demo, on a Unix socket (yours runs elsewhere).
  char dir[] = "/tmp/ctx-example-XXXXXX";
  const std::string sock = std::string(::mkdtemp(dir) ? dir : "/tmp") + "/redis.sock";
  const char* argv[] = {"redis-server", "--port", "0",         "--unixsocket", sock.c_str(), "--save", "",
                        "--dir",        dir,      "--logfile", "/dev/null",    nullptr};
  pid_t server;
  if (::posix_spawnp(&server, "redis-server", nullptr, nullptr, const_cast<char**>(argv), environ) != 0)
    return std::puts("redis-server is not installed: skipped"), 77;
  ctx::redis::connection producer, consumer;
  for (int i = 0; i < 1000 && consumer.state() != connection_state::ready;
       ++i, std::this_thread::sleep_for(5ms))
    consumer = ctx::redis::connect_unix(ctx::background(), sock);
  producer = ctx::redis::connect_unix(ctx::background(), sock);
  if (producer.state() != connection_state::ready) return 1;

  auto [service, shutdown] = ctx::with_cancel(ctx::background());  // the service's lifetime
  std::latch handled(3);
  std::jthread worker([&, c = service] {
    for (;;) {
      const auto job = consumer.command(c, "BLPOP", "jobs", "0");  // waits as long as the queue is empty
      if (job.error())
        return (void)std::printf("consumer: %s\n", job.message().c_str());  // shutdown: at once
      std::printf("handled %s\n", job->element[1]->str);
      handled.count_down();
    }
  });
  for (int i = 0; i < 3; ++i) {
    auto [c, cancel] = ctx::with_timeout(service, 100ms);  // each publish has 100 ms
    const auto r = producer.command(c, "LPUSH", "jobs", "job-" + std::to_string(i));
    if (r.error())
      std::printf("publish: %s, %s\n", r.message().c_str(), r.sent() ? "may have run" : "not run");
  }
  handled.wait();

  const auto t0 = std::chrono::steady_clock::now();
  shutdown();
  worker.join();
  std::printf("stopped %lld us after the shutdown; the BLPOP is %s on the server\n",
              static_cast<long long>((std::chrono::steady_clock::now() - t0) / 1us),
              consumer.state() == connection_state::reply_pending ? "still pending" : "done");
  consumer.close();  // the server drops the pending BLPOP: later jobs stay in the queue
  ::kill(server, SIGTERM);
  ::waitpid(server, nullptr, 0);
  ::unlink(sock.c_str());
  return ::rmdir(dir) == 0 ? 0 : 1;
}
