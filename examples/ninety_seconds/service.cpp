// SPDX-License-Identifier: MIT
#include "service.hpp"

#include <ctx/curl.hpp>
#include <ctx/detach.hpp>
#include <ctx/inspect.hpp>

#include <httplib.h>
#include <sys/socket.h>

#include <cstdlib>
#include <deque>
#include <functional>
#include <latch>
#include <stdexcept>
#include <utility>
#include <vector>

namespace demo {
namespace {

using clock = std::chrono::steady_clock;

/// When the connection that the calling handler thread serves was accepted.
thread_local clock::time_point accepted_at;

/// 200, 504 when the request's context ended the request, 502 when the
/// downstream failed, 500 when the database did.
int status_for(std::error_code ec) {
  if (!ec) return 200;
  if (ec == ctx::errc::deadline_exceeded || ec == ctx::errc::canceled) return 504;
  if (ec.category() == ctx::curl::category()) return 502;
  return 500;
}

std::size_t append(char* data, std::size_t size, std::size_t n, void* body) {
  static_cast<std::string*>(body)->append(data, size * n);
  return size * n;
}

std::size_t discard(char*, std::size_t size, std::size_t n, void*) { return size * n; }

}  // namespace

/// The service's handler threads: a fixed number, fed by cpp-httplib's
/// listener with accepted connections, first come first served. It counts
/// the threads that are serving a connection and the connections that wait
/// for one, and tells each handler when its connection was accepted.
class handler_pool {
 public:
  explicit handler_pool(int threads) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { work(); });
  }
  handler_pool(const handler_pool&) = delete;
  handler_pool& operator=(const handler_pool&) = delete;
  ~handler_pool() { shutdown(); }

  void enqueue(std::function<void()> serve) {
    {
      const std::lock_guard lock(m_);
      jobs_.push_back({std::move(serve), clock::now()});
      queued_.fetch_add(1, std::memory_order_relaxed);
    }
    cv_.notify_one();
  }

  /// Serves what is queued, then joins the threads.
  void shutdown() {
    {
      const std::lock_guard lock(m_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_)
      if (t.joinable()) t.join();
  }

  [[nodiscard]] int busy() const noexcept { return busy_.load(std::memory_order_relaxed); }
  [[nodiscard]] int queued() const noexcept { return queued_.load(std::memory_order_relaxed); }

  /// Waits until no thread is serving a connection and none is queued.
  void wait_idle() {
    std::unique_lock lock(m_);
    idle_.wait(lock, [&] { return busy_.load(std::memory_order_relaxed) == 0 && jobs_.empty(); });
  }

 private:
  struct job {
    std::function<void()> serve;
    clock::time_point accepted;
  };

  void work() {
    for (bool served = false;; served = true) {
      job j;
      {
        std::unique_lock lock(m_);
        if (served && busy_.fetch_sub(1, std::memory_order_relaxed) == 1) idle_.notify_all();
        cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        j = std::move(jobs_.front());
        jobs_.pop_front();
        queued_.fetch_sub(1, std::memory_order_relaxed);
        busy_.fetch_add(1, std::memory_order_relaxed);
      }
      accepted_at = j.accepted;
      j.serve();  // reads the request, runs the handler, writes the answer, closes
    }
  }

  std::mutex m_;
  std::condition_variable cv_;    // a job was queued, or stop
  std::condition_variable idle_;  // busy_ dropped to 0
  std::deque<job> jobs_;
  bool stopping_ = false;
  std::atomic<int> busy_{0}, queued_{0};  // changed under m_; read by the sampler without it
  std::vector<std::thread> threads_;
};

namespace {

/// What cpp-httplib owns (and deletes when its listener stops): a handle
/// on the service's handler_pool.
class task_queue final : public httplib::TaskQueue {
 public:
  explicit task_queue(handler_pool& p) : p_(p) {}
  void enqueue(std::function<void()> fn) override { p_.enqueue(std::move(fn)); }
  void shutdown() override { p_.shutdown(); }

 private:
  handler_pool& p_;
};

}  // namespace

/// Counts one detached audit write while it lives; it is the last thing the
/// detached thread destroys (after the work's context), so that
/// wait_for_audits() returns when the audit threads are done with the service.
class service::audit_token {
 public:
  explicit audit_token(service& s) : s_(&s) {
    const std::lock_guard lock(s.audits_m_);
    s.audits_running_.fetch_add(1, std::memory_order_relaxed);
  }
  audit_token(audit_token&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  audit_token& operator=(audit_token&&) = delete;
  ~audit_token() {
    if (!s_) return;
    const std::lock_guard lock(s_->audits_m_);
    if (s_->audits_running_.fetch_sub(1, std::memory_order_relaxed) == 1) s_->audits_cv_.notify_all();
  }

 private:
  service* s_;
};

service::service(const service_options& o, connection_pool& pool, connection_pool& audit_pool)
    : o_(o), pool_(pool), audit_pool_(audit_pool), handlers_(std::make_unique<handler_pool>(o.threads)) {
  // Track every context from here on, for GET /debug/contexts (the zombie
  // report). Its cost per request is a few hundred nanoseconds (docs/inspect.md).
  ctx::inspect::enable();
  http_ = std::make_unique<httplib::Server>();
  http_->new_task_queue = [this] {
    listening_.count_down();  // called once, by the listener thread, when it starts accepting
    return new task_queue(*handlers_);
  };
  // One request per connection: a connection holds its handler thread only
  // while its request is served, not while it idles between requests.
  http_->set_keep_alive_max_count(1);
  http_->set_socket_options([this](int fd) {  // the listening socket, before bind()
    const int yes = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    listen_fd_ = fd;
  });
  http_->Get("/quote", [this](const httplib::Request& req, httplib::Response& res) {
    const int user = std::atoi(req.get_param_value("user").c_str());
    int status = 0;
    std::string body;
    handle_quote(req.get_header_value("X-Trace-Id"), user, status, body);
    res.status = status;
    res.set_content(body, "text/plain");
  });
  http_->Get("/ready",
             [](const httplib::Request&, httplib::Response& res) { res.set_content("ok", "text/plain"); });
  port_ = http_->bind_to_any_port("127.0.0.1");
  if (port_ <= 0) throw std::runtime_error("service: cannot listen on 127.0.0.1");
  // cpp-httplib 0.11 listens with a backlog of 5 (fixed when it was built):
  // a burst of connects would have SYNs dropped and retried a second later.
  // Listening again on Linux just raises the backlog (if it fails, 5 it is).
  (void)::listen(listen_fd_, SOMAXCONN);
  listener_ = std::thread([this] { http_->listen_after_bind(); });
  listening_.wait();
  try {
    wait_ready();
    start_admin();
  } catch (...) {
    stop();  // a joinable listener must not be destroyed
    throw;
  }
}

void service::start_admin() {
  // The debug endpoints get a listener and a thread of their own: they must
  // answer when every handler thread is stuck, which is when they matter.
  admin_ = std::make_unique<httplib::Server>();
  admin_->new_task_queue = [this] {
    admin_listening_.count_down();
    return new httplib::ThreadPool(1);
  };
  admin_->Get("/debug/contexts", [](const httplib::Request& req, httplib::Response& res) {
    const bool json = req.get_param_value("format") == "json";
    res.set_content(live_context_report(json), json ? "application/json" : "text/plain");
  });
  admin_port_ = admin_->bind_to_any_port("127.0.0.1");
  if (admin_port_ <= 0) throw std::runtime_error("service: cannot listen on 127.0.0.1 for /debug");
  admin_listener_ = std::thread([this] { admin_->listen_after_bind(); });
  admin_listening_.wait();  // stop() does nothing to a server that is not listening yet
}

void service::wait_ready() {
  // The service answers, and the handler thread that answered is back in the
  // pool. (Also for ThreadSanitizer: cpp-httplib initializes a function-local
  // static when it parses its first request, behind a guard that TSan cannot
  // see in the uninstrumented library; every later request is taken from the
  // pool's queue after that thread went back to it, an order that TSan sees.)
  const std::string url = "http://127.0.0.1:" + std::to_string(port_) + "/ready";
  CURL* h = curl_easy_init();
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  auto [c, cancel] = ctx::with_timeout(ctx::background(), std::chrono::seconds(10));
  const std::error_code ec = ctx::curl::perform(c, h);
  curl_easy_cleanup(h);
  if (ec) throw std::runtime_error("service: not ready: " + ec.message());
  handlers_->wait_idle();
}

service::~service() {
  stop();
  wait_for_audits();
}

void service::stop() {
  if (admin_listener_.joinable()) {
    admin_->stop();
    admin_listener_.join();
  }
  if (listener_.joinable()) {
    http_->stop();
    listener_.join();  // the listener shuts the handler pool down: what it accepted is served
  }
}

void service::handle_quote(const std::string& trace, int user, int& status, std::string& body) {
  // The request's context: the caller's trace ID, and a deadline that counts
  // from when the connection was accepted, so that time spent waiting for a
  // handler thread counts too.
  auto [request, cancel] =
      ctx::with_deadline(ctx::with_value(ctx::background(), trace_id, trace), accepted_at + o_.deadline);

  // The one line that differs between the two runs: what the leaves get.
  const ctx::context c = o_.ignore_context ? ctx::background() : request;

  const std::error_code ec = quote_for(c, *request.deadline(), trace, user, body);
  status = status_for(ec);
  if (ec) body = ec.message();
  (status == 200 ? ok_ : status == 504 ? deadline_ : failed_).fetch_add(1, std::memory_order_relaxed);

  // The audit line must be written even when the request failed or ran out
  // of time: detached work, with the request's values but not its deadline.
  start_audit(request, user, status);
}

std::error_code service::quote_for(const ctx::context& c, ctx::context::time_point deadline,
                                   const std::string& trace, int user, std::string& body) {
  std::error_code ec;
  connection_pool::lease db = pool_.acquire(c, ec, deadline);  // waits for a free connection, under c
  if (ec) return ec;
  std::string name;
  if ((ec = db->find_user(c, user, name))) return ec;
  std::string quote;
  if ((ec = call_downstream(c, trace, user, quote))) return ec;  // where a stalled call hangs
  if ((ec = db->record_visit(c, user))) return ec;
  body = name + ": " + quote;
  return {};
}  // the connection goes back to the pool here, when `db` is destroyed

std::error_code service::call_downstream(const ctx::context& c, const std::string& trace, int user,
                                         std::string& body) {
  const std::string url = o_.downstream_url + "?user=" + std::to_string(user);
  const std::string trace_header = "X-Trace-Id: " + trace;
  curl_slist* headers = curl_slist_append(nullptr, trace_header.c_str());
  CURL* h = curl_easy_init();
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, append);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(h, CURLOPT_FAILONERROR, 1L);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  downstream_.fetch_add(1, std::memory_order_relaxed);
  const std::error_code ec = ctx::curl::perform(c, h);  // returns c.err() when c ends first
  downstream_.fetch_sub(1, std::memory_order_relaxed);
  curl_easy_cleanup(h);
  curl_slist_free_all(headers);
  return ec;
}

void service::start_audit(const ctx::context& request, int user, int status) {
  ctx::detach(
      request, o_.audit_timeout, [this, user, status, token = audit_token(*this)](const ctx::context& work) {
        const ctx::context c = o_.ignore_context ? ctx::background() : work;
        const std::string* trace = work.value(trace_id);  // detach keeps the request's values
        std::error_code ec;
        connection_pool::lease db = audit_pool_.acquire(c, ec, work.deadline().value_or(clock::now()));
        if (!ec) ec = db->write_audit(c, trace ? *trace : "", user, status);
        (ec ? audits_failed_ : audits_written_).fetch_add(1, std::memory_order_relaxed);
      });
}

void service::wait_for_audits() {
  std::unique_lock lock(audits_m_);
  audits_cv_.wait(lock, [&] { return audits_running_.load(std::memory_order_relaxed) == 0; });
}

service_gauges service::gauges() const noexcept {
  service_gauges g;
  g.threads_busy = handlers_->busy();
  g.queued = handlers_->queued();
  g.db_checked_out = pool_.checked_out();
  g.downstream = downstream_.load(std::memory_order_relaxed);
  g.audits = audits_running_.load(std::memory_order_relaxed);
  return g;
}

service_counts service::counts() const noexcept {
  service_counts n;
  n.ok = ok_.load(std::memory_order_relaxed);
  n.deadline = deadline_.load(std::memory_order_relaxed);
  n.failed = failed_.load(std::memory_order_relaxed);
  n.audits_written = audits_written_.load(std::memory_order_relaxed);
  n.audits_failed = audits_failed_.load(std::memory_order_relaxed);
  return n;
}

std::string live_context_report(bool json) {
  // A request context done for a second and still held: its handler did not stop.
  return ctx::inspect::report(std::chrono::seconds(1),
                              json ? ctx::inspect::format::json : ctx::inspect::format::text, 5);
}

}  // namespace demo
