// SPDX-License-Identifier: MIT
#include "load.hpp"

#include <ctx/curl.hpp>
#include <ctx/sleep.hpp>

#include <string>

namespace demo {
namespace {

using clock = std::chrono::steady_clock;

std::size_t discard(char*, std::size_t size, std::size_t n, void*) { return size * n; }

}  // namespace

load_driver::load_driver(const load_options& o)
    : o_(o), start_(clock::now()), load_(ctx::with_deadline(ctx::background(), start_ + o.duration)) {
  calls_.resize(static_cast<std::size_t>(o_.callers));
  for (int i = 0; i < o_.callers; ++i)
    callers_.emplace_back([this, i] { caller(i, calls_[static_cast<std::size_t>(i)]); });
}

load_driver::~load_driver() { join(); }

void load_driver::join() {
  for (std::thread& t : callers_)
    if (t.joinable()) t.join();
}

std::vector<call> load_driver::calls() const {
  std::vector<call> all;
  for (const auto& mine : calls_) all.insert(all.end(), mine.begin(), mine.end());
  return all;
}

void load_driver::caller(int i, std::vector<call>& mine) {
  // Each caller sends one request every `interval`, the callers evenly
  // spread over it; a caller whose answer came late sends its next at once.
  const auto interval =
      std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(o_.callers / o_.rate));
  clock::time_point next = start_ + interval * i / o_.callers;
  CURL* h = curl_easy_init();
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  for (long k = 0;; ++k) {
    if (ctx::sleep_until(load_.context, next)) break;  // the load is over
    const int user = static_cast<int>((i * 7919L + k * 104729L) % o_.users) + 1;
    const std::string url = o_.url + "?user=" + std::to_string(user);
    const std::string trace = "X-Trace-Id: caller-" + std::to_string(i) + "-" + std::to_string(k);
    curl_slist* headers = curl_slist_append(nullptr, trace.c_str());
    curl_easy_setopt(h, CURLOPT_URL, url.c_str());
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);

    // The caller's own patience, independent of the load's end.
    auto [c, cancel] = ctx::with_timeout(ctx::background(), o_.caller_timeout);
    const clock::time_point sent = clock::now();
    sent_.fetch_add(1, std::memory_order_relaxed);
    const std::error_code ec = ctx::curl::perform(c, h);
    const clock::time_point done = clock::now();
    curl_slist_free_all(headers);

    call r{sent - start_, done - sent, 0, ec == ctx::errc::deadline_exceeded};
    if (!ec) {
      long status = 0;
      curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
      r.status = static_cast<int>(status);
    }
    (r.gave_up ? gave_up_ : r.status == 200 ? ok_ : errors_).fetch_add(1, std::memory_order_relaxed);
    mine.push_back(r);

    next += interval;
    if (next < done) next = done;
  }
  curl_easy_cleanup(h);
}

}  // namespace demo
