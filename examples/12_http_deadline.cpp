// SPDX-License-Identifier: MIT
// An outgoing HTTP call under the request's deadline: a stuck upstream costs
// the request its budget for the call and no more, and curl's own failures
// keep curl's code and message.
#include <ctx/ctx.hpp>
#include <ctx/curl.hpp>

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

using namespace std::chrono_literals;

namespace {

std::size_t collect(char* data, std::size_t size, std::size_t n, void* body) {
  static_cast<std::string*>(body)->append(data, size * n);
  return size * n;
}

/// GETs `url` with what is left of the request's time, but at most `budget`.
std::error_code call_upstream(const ctx::context& request, const std::string& url, std::string& body,
                              std::chrono::milliseconds budget) {
  auto [c, cancel] = ctx::with_timeout(request, budget);
  CURL* h = curl_easy_init();
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
  const std::error_code ec = ctx::curl::perform(c, h);
  curl_easy_cleanup(h);
  return ec;
}

}  // namespace

int main() {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  // A stuck upstream on 127.0.0.1: the kernel accepts the connection, nobody answers.
  const int stuck = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  auto* sa = reinterpret_cast<sockaddr*>(&addr);
  if (::bind(stuck, sa, len) != 0 || ::getsockname(stuck, sa, &len) != 0 || ::listen(stuck, 8) != 0) return 1;

  auto [request, cancel] = ctx::with_timeout(ctx::background(), 10s);  // the incoming request's deadline
  std::string body;
  const auto t0 = std::chrono::steady_clock::now();
  const std::error_code slow =
      call_upstream(request, "http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port)) + "/", body, 300ms);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  std::printf("stuck upstream: \"%s\" (%s) after %lld ms\n", slow.message().c_str(), slow.category().name(),
              static_cast<long long>(ms.count()));

  const std::error_code unknown = call_upstream(request, "http://no-such-host.invalid/", body, 5s);
  std::printf("unknown host:   \"%s\" (%s %d)\n", unknown.message().c_str(), unknown.category().name(),
              unknown.value());

  ::close(stuck);
  ctx::curl::thread_cleanup();  // this thread's cached connections, before curl_global_cleanup
  curl_global_cleanup();
  return slow == ctx::errc::deadline_exceeded && unknown.category() == ctx::curl::category() ? 0 : 1;
}
