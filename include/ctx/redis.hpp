// SPDX-License-Identifier: MIT
// ctx::redis: Redis commands (hiredis) that return promptly when a context is done.
//
// A connection wraps a non-blocking hiredis redisContext. A command is
// formatted by hiredis (redisFormatCommandArgv), written with send(2) and its
// reply parsed by the context's hiredis reader (redisReaderFeed/GetReply);
// every wait is <ctx/io.hpp>'s: poll() on the connection's fd plus the
// calling thread's wake-up eventfd, which a std::stop_callback on the
// context's stop token signals (a deadline reaches it the same way). The
// library does its own send/recv rather than redisBufferWrite/Read so that
// it knows exactly how much of a command went out (see reply::sent()) and
// never raises SIGPIPE (MSG_NOSIGNAL; hiredis's write(2) would).
//
// The connection after a cancel (connection_state):
// - cancelled before any byte of the command was sent: nothing was sent,
//   the connection stays `ready`;
// - cancelled with the command half-sent: the library closes the connection,
//   so the server drops the half it got and never runs it (`closed`);
// - cancelled after the whole command was sent, before its reply: the server
//   ran it or will (a BLPOP stays blocked there), and its reply belongs to
//   that command. The connection is `reply_pending`: new commands are
//   refused (errc::reply_pending, nothing sent) until get_reply() has read
//   the late reply, which is handed over, never dropped: an item a cancelled
//   BLPOP pops later is delivered by get_reply(), and a cancelled LPUSH's
//   reply says it ran. close() instead makes the server drop a still blocked
//   command (see connection::close()).
// - a reply that arrived with the cancel is returned as the result: a
//   complete command is never reported as cancelled.
// The library never sends a command twice.
//
// Thread safety: a connection is used by one thread at a time (as a
// redisContext is); different connections on different threads are
// independent. Cancellation may come from any thread: the stop request
// happens-before the blocked call returns the context's error.
#pragma once

#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "context.hpp"
#include "io.hpp"

namespace ctx::redis {

/// Errors of the client side, in category(): hiredis's error codes
/// (REDIS_ERR_*, same values and meaning), and the connection's refusals.
/// After any of the first five the connection is closed.
enum class errc {
  io = REDIS_ERR_IO,              ///< a read or write failed (the message has the system's text)
  other = REDIS_ERR_OTHER,        ///< e.g. the host name could not be resolved
  eof = REDIS_ERR_EOF,            ///< the server closed the connection
  protocol = REDIS_ERR_PROTOCOL,  ///< the server's bytes are not RESP
  oom = REDIS_ERR_OOM,            ///< out of memory
  closed = 100,  ///< refused: the connection is closed (connection::error() says why); nothing sent
  reply_pending =
      101,        ///< refused: a cancelled command's reply is still to be read (get_reply()); nothing sent
  aborted = 102,  ///< connection::error() only: a cancel interrupted sending a command, so the
                  ///< library closed the connection and the server never ran the half it got
};

/// The category of errc: name "hiredis"; messages as hiredis words them.
[[nodiscard]] const std::error_category& category() noexcept;
[[nodiscard]] std::error_code make_error_code(errc e) noexcept;

/// Error replies of the server, in server_category(), by the reply's first
/// word ("WRONGTYPE Operation against a key ..." is `wrongtype`). The full
/// text is in the reply (`r->str`, reply::message()). After an error reply
/// the connection is `ready`: the server answered, nothing broke.
enum class server_errc {
  err = 1,      ///< ERR: the generic error
  wrongtype,    ///< WRONGTYPE
  noscript,     ///< NOSCRIPT
  busy,         ///< BUSY: a script or function is running
  loading,      ///< LOADING: the dataset is being loaded
  readonly,     ///< READONLY: a replica
  noauth,       ///< NOAUTH
  wrongpass,    ///< WRONGPASS
  noperm,       ///< NOPERM
  execabort,    ///< EXECABORT
  oom,          ///< OOM: maxmemory reached
  busykey,      ///< BUSYKEY
  busygroup,    ///< BUSYGROUP
  nogroup,      ///< NOGROUP
  unblocked,    ///< UNBLOCKED: CLIENT UNBLOCK ... ERROR
  moved,        ///< MOVED (cluster)
  ask,          ///< ASK (cluster)
  tryagain,     ///< TRYAGAIN (cluster)
  crossslot,    ///< CROSSSLOT (cluster)
  clusterdown,  ///< CLUSTERDOWN (cluster)
  masterdown,   ///< MASTERDOWN
  misconf,      ///< MISCONF: the server cannot persist
  noreplicas,   ///< NOREPLICAS
  other,        ///< any other first word
};

/// The category of server_errc: name "redis".
[[nodiscard]] const std::error_category& server_category() noexcept;
[[nodiscard]] std::error_code make_error_code(server_errc e) noexcept;

}  // namespace ctx::redis

template <>
struct std::is_error_code_enum<ctx::redis::errc> : std::true_type {};
template <>
struct std::is_error_code_enum<ctx::redis::server_errc> : std::true_type {};

namespace ctx::redis {

/// The code of an error reply's text, by its first word.
[[nodiscard]] server_errc classify_error_reply(std::string_view text) noexcept;

namespace detail {
struct connection_access;
}

/// What a connection can do next.
enum class connection_state {
  ready,          ///< a command may be sent
  reply_pending,  ///< a cancelled command's reply is still to be read: get_reply(), or close()
  closed,         ///< never opened, closed by close(), or closed after an error (error() says which)
};

/// A command's outcome: the server's reply (owned) and what happened.
///
/// How to tell outcomes apart, by `error()`:
/// - `{}`: `get()` is the reply;
/// - `server_category()`: the server answered with an error reply (`get()`
///   is it, type REDIS_REPLY_ERROR); the connection is ready;
/// - `c.err()` (`ctx::category()`): the context ended the call, no reply;
///   the connection is ready, reply_pending or closed as described above;
/// - `category()`: the client side failed (the connection is now closed), or
///   the connection refused the command (errc::closed, errc::reply_pending).
class reply {
 public:
  reply() noexcept = default;
  reply(reply&& o) noexcept
      : r_(std::exchange(o.r_, nullptr)), error_(o.error_), sent_(o.sent_), detail_(std::move(o.detail_)) {}
  reply& operator=(reply&& o) noexcept {
    if (this != &o) {
      reset();
      r_ = std::exchange(o.r_, nullptr);
      error_ = o.error_;
      sent_ = o.sent_;
      detail_ = std::move(o.detail_);
    }
    return *this;
  }
  reply(const reply&) = delete;
  reply& operator=(const reply&) = delete;
  ~reply() { reset(); }

  /// The server's reply, or null when there is none (see error()).
  [[nodiscard]] const redisReply* get() const noexcept { return r_; }
  [[nodiscard]] const redisReply* operator->() const noexcept { return r_; }
  /// Gives up ownership: free it with freeReplyObject().
  [[nodiscard]] redisReply* release() noexcept { return std::exchange(r_, nullptr); }

  /// `{}` for a reply that is not an error reply; else what happened (see the class).
  [[nodiscard]] std::error_code error() const noexcept { return error_; }

  /// Whether this call wrote the whole command to the connection. When false,
  /// the server did not get it and will not run it (nothing was sent, or the
  /// library closed the connection on the half that was). When true and
  /// there is no reply, the server may have run it: the late reply tells
  /// (connection::get_reply()), unless the connection is closed, and then it
  /// cannot be known. Always true with a reply; false for get_reply().
  [[nodiscard]] bool sent() const noexcept { return sent_; }

  /// A description of the outcome: the text of an error reply, the system's
  /// or hiredis's text for a client-side error, else error().message().
  [[nodiscard]] std::string message() const {
    if (r_ && r_->type == REDIS_REPLY_ERROR && r_->str) return std::string(r_->str, r_->len);
    if (!detail_.empty()) return detail_;
    return error_ ? error_.message() : std::string();
  }

 private:
  friend class connection;
  reply(redisReply* r, std::error_code e, bool sent, std::string detail = {}) noexcept
      : r_(r), error_(e), sent_(sent), detail_(std::move(detail)) {}
  void reset() noexcept {
    if (r_) freeReplyObject(r_);
    r_ = nullptr;
  }

  redisReply* r_ = nullptr;
  std::error_code error_;
  bool sent_ = false;
  std::string detail_;
};

/// A connection to a Redis server whose commands honour a context.
///
/// Made by connect() or connect_unix(), or by adopting a connected hiredis
/// context. Move-only; the destructor closes it. One command at a time, on
/// one thread at a time.
class connection {
 public:
  /// A closed connection.
  connection() noexcept = default;

  /// Adopts `rc` (owned from now on): a connected redisContext, e.g. from
  /// redisConnect(). Its socket is made non-blocking; do no I/O through `rc`
  /// afterwards. A null `rc` or one with `rc->err` set makes a closed
  /// connection whose error() is hiredis's (errc::oom for null), and `rc` is freed.
  explicit connection(redisContext* rc) noexcept;

  connection(connection&& o) noexcept
      : rc_(std::exchange(o.rc_, nullptr)),
        state_(std::exchange(o.state_, connection_state::closed)),
        error_(std::exchange(o.error_, {})),
        error_message_(std::move(o.error_message_)) {}
  connection& operator=(connection&& o) noexcept {
    if (this != &o) {
      close();
      rc_ = std::exchange(o.rc_, nullptr);
      state_ = std::exchange(o.state_, connection_state::closed);
      error_ = std::exchange(o.error_, {});
      error_message_ = std::move(o.error_message_);
    }
    return *this;
  }
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;
  ~connection() { close(); }

  /// Sends a command made of `args` (each one argument, binary-safe, as
  /// redisCommandArgv) and waits for its reply, until it arrives or `c` is done.
  ///
  /// Returns the reply; on a server error reply, the reply with error() in
  /// server_category(); `c.err()` when `c` ended the call (the connection is
  /// then ready, reply_pending or closed: see the file comment and
  /// reply::sent()); a category() error when the connection failed (now
  /// closed: the server gone (eof), a reset (io), ...) or refused the command
  /// (errc::closed, errc::reply_pending: nothing sent).
  ///
  /// A done context returns at once: nothing is sent. Signals are retried.
  /// Example: `auto r = conn.command(c, "LPUSH", "jobs", payload);`
  template <class Clock, class... Args>
  requires(sizeof...(Args) > 0 && (std::is_convertible_v<const Args&, std::string_view> && ...))
      [[nodiscard]] reply command(const basic_context<Clock>& c, const Args&... args) {
    const std::string_view argv[] = {std::string_view(args)...};
    return command_argv(c, argv);
  }

  /// command() with the arguments in a span; an empty span is refused
  /// (errc::other, nothing sent).
  template <class Clock>
  [[nodiscard]] reply command_argv(const basic_context<Clock>& c, std::span<const std::string_view> args);

  /// Waits for the next reply without sending anything, until it arrives or
  /// `c` is done: hiredis's redisGetReply().
  ///
  /// After a cancel left the connection reply_pending, this reads the late
  /// reply of the cancelled command (an item a BLPOP popped, the count a
  /// LPUSH returned) and makes the connection ready again. Also reads the
  /// messages of SUBSCRIBE/MONITOR. In the ready state with nothing to come,
  /// it waits until `c` is done. When `c` ends it, the state is unchanged,
  /// unless part of a reply was read: then it is reply_pending, and the part
  /// stays in the reader for the next call. Errors as command(); sent() is false.
  template <class Clock>
  [[nodiscard]] reply get_reply(const basic_context<Clock>& c);

  [[nodiscard]] connection_state state() const noexcept { return state_; }

  /// Why the connection is closed: `{}` while open, after close() and for a
  /// default-constructed one; hiredis's error (category()), errc::aborted,
  /// or the context's error if connect() was cancelled.
  [[nodiscard]] std::error_code error() const noexcept { return error_; }
  /// The text that goes with error(): e.g. "Connection refused", "Server closed the connection".
  [[nodiscard]] const std::string& error_message() const noexcept { return error_message_; }

  /// Closes the socket now (idempotent). A command still blocked on the
  /// server for this connection (a BLPOP in reply_pending) is dropped by the
  /// server when it sees the close. An item the server popped for it in the
  /// moment before that, whose reply was on its way, is lost with the
  /// connection, as with any client that goes away; get_reply() after
  /// unblocking it (CLIENT UNBLOCK from another connection) keeps it. Use
  /// BLMOVE or XREADGROUP where no item may ever be lost.
  void close() noexcept {
    if (rc_) redisFree(rc_);
    rc_ = nullptr;
    state_ = connection_state::closed;
  }

  /// The hiredis context, or null when closed: for reading its fields; do no
  /// I/O through it.
  [[nodiscard]] redisContext* native_handle() const noexcept { return rc_; }

 private:
  friend struct detail::connection_access;
  /// A closed connection with `e` as error(): what a failed connect returns.
  static connection failed(std::error_code e, std::string message) {
    connection k;
    k.error_ = e;
    k.error_message_ = std::move(message);
    return k;
  }
  enum class got { reply, data, nothing };
  reply fail(std::error_code e, std::string detail, bool sent) {
    close();
    error_ = e;
    error_message_ = detail;
    return reply(nullptr, e, sent, std::move(detail));
  }
  got take(reply& out, bool sent);
  template <class Clock>
  reply read_reply(const basic_context<Clock>& c, io::detail::lazy_wake& wake, bool sent, bool wait_first);

  redisContext* rc_ = nullptr;
  connection_state state_ = connection_state::closed;
  std::error_code error_;
  std::string error_message_;
};

/// Connects to the server at `host`:`port` over TCP, waiting for the
/// connection until it completes or `c` is done.
///
/// Returns the connection, ready; or a closed one whose error() says why:
/// `c.err()` when `c` ended it (the attempt is abandoned, its socket closed),
/// else hiredis's (errc::io with error_message() "Connection refused", ...).
/// A done context returns at once: nothing is started. A host name is
/// resolved by hiredis with getaddrinfo(), which no context can interrupt:
/// pass an IP address to make the whole call cancellable.
template <class Clock>
[[nodiscard]] connection connect(const basic_context<Clock>& c, const std::string& host, int port);

/// Connects to the server's Unix-domain socket at `path`. Otherwise as connect().
template <class Clock>
[[nodiscard]] connection connect_unix(const basic_context<Clock>& c, const std::string& path);

// ---------------------------------------------------------------------------
// Implementation.

namespace detail {

class hiredis_category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "hiredis"; }
  std::string message(int v) const override {
    switch (static_cast<errc>(v)) {
      case errc::io:
        return "I/O error";
      case errc::other:
        return "other error";
      case errc::eof:
        return "Server closed the connection";
      case errc::protocol:
        return "protocol error";
      case errc::oom:
        return "Out of memory";
      case errc::closed:
        return "connection is closed";
      case errc::reply_pending:
        return "connection has the unread reply of a cancelled command";
      case errc::aborted:
        return "a cancel interrupted sending a command: connection closed";
    }
    return "unknown hiredis error";
  }
  std::error_condition default_error_condition(int v) const noexcept override {
    if (v == REDIS_ERR_OOM) return std::errc::not_enough_memory;
    return {v, *this};
  }
};

struct server_error_name {
  std::string_view word;
  server_errc code;
};
inline constexpr server_error_name server_error_names[] = {
    {"ERR", server_errc::err},
    {"WRONGTYPE", server_errc::wrongtype},
    {"NOSCRIPT", server_errc::noscript},
    {"BUSY", server_errc::busy},
    {"LOADING", server_errc::loading},
    {"READONLY", server_errc::readonly},
    {"NOAUTH", server_errc::noauth},
    {"WRONGPASS", server_errc::wrongpass},
    {"NOPERM", server_errc::noperm},
    {"EXECABORT", server_errc::execabort},
    {"OOM", server_errc::oom},
    {"BUSYKEY", server_errc::busykey},
    {"BUSYGROUP", server_errc::busygroup},
    {"NOGROUP", server_errc::nogroup},
    {"UNBLOCKED", server_errc::unblocked},
    {"MOVED", server_errc::moved},
    {"ASK", server_errc::ask},
    {"TRYAGAIN", server_errc::tryagain},
    {"CROSSSLOT", server_errc::crossslot},
    {"CLUSTERDOWN", server_errc::clusterdown},
    {"MASTERDOWN", server_errc::masterdown},
    {"MISCONF", server_errc::misconf},
    {"NOREPLICAS", server_errc::noreplicas},
};

class server_error_category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "redis"; }
  std::string message(int v) const override {
    for (const server_error_name& n : server_error_names)
      if (static_cast<int>(n.code) == v) return std::string(n.word) + " error reply";
    return "error reply";
  }
};

/// Formats a command with hiredis; owns the buffer.
class formatted_command {
 public:
  explicit formatted_command(std::span<const std::string_view> args) {
    constexpr std::size_t small = 8;
    const char* argv_small[small];
    std::size_t len_small[small];
    std::vector<const char*> argv_big;
    std::vector<std::size_t> len_big;
    const char** argv = argv_small;
    std::size_t* lens = len_small;
    if (args.size() > small) {
      argv_big.resize(args.size());
      len_big.resize(args.size());
      argv = argv_big.data();
      lens = len_big.data();
    }
    for (std::size_t i = 0; i < args.size(); ++i) {
      argv[i] = args[i].data();
      lens[i] = args[i].size();
    }
    const auto n = redisFormatCommandArgv(&buf_, static_cast<int>(args.size()), argv, lens);
    len_ = n > 0 ? static_cast<std::size_t>(n) : 0;
  }
  formatted_command(const formatted_command&) = delete;
  formatted_command& operator=(const formatted_command&) = delete;
  ~formatted_command() {
    if (buf_) redisFreeCommand(buf_);
  }
  [[nodiscard]] const char* data() const noexcept { return buf_; }
  [[nodiscard]] std::size_t size() const noexcept { return len_; }

 private:
  char* buf_ = nullptr;
  std::size_t len_ = 0;
};

inline std::string system_text(int e) { return std::system_category().message(e); }

struct connection_access {
  static connection failed(std::error_code e, std::string message) {
    return connection::failed(e, std::move(message));
  }
};

template <class Clock>
connection finish_connect(const basic_context<Clock>& c, redisContext* rc) {
  if (!rc) return connection_access::failed(make_error_code(errc::oom), "Out of memory");
  if (rc->err) {
    const std::error_code e(rc->err, category());
    std::string text = rc->errstr;
    redisFree(rc);
    return connection_access::failed(e, std::move(text));
  }
  // The handshake (TCP) may still be under way: wait for it under the context.
  if (const std::error_code e = io::wait_writable(c, rc->fd)) {
    redisFree(rc);
    return connection_access::failed(e, e.message());
  }
  int so_error = 0;
  socklen_t len = sizeof so_error;
  if (::getsockopt(rc->fd, SOL_SOCKET, SO_ERROR, &so_error, &len) != 0) so_error = errno;
  if (so_error) {
    redisFree(rc);
    return connection_access::failed(make_error_code(errc::io), system_text(so_error));
  }
  return connection(rc);
}

}  // namespace detail

inline const std::error_category& category() noexcept {
  static const detail::hiredis_category cat;
  return cat;
}

inline std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), category()}; }

inline const std::error_category& server_category() noexcept {
  static const detail::server_error_category cat;
  return cat;
}

inline std::error_code make_error_code(server_errc e) noexcept {
  return {static_cast<int>(e), server_category()};
}

inline server_errc classify_error_reply(std::string_view text) noexcept {
  const std::string_view word = text.substr(0, text.find(' '));
  for (const detail::server_error_name& n : detail::server_error_names)
    if (n.word == word) return n.code;
  return server_errc::other;
}

inline connection::connection(redisContext* rc) noexcept {
  if (!rc) {
    error_ = make_error_code(errc::oom);
    error_message_ = "Out of memory";
    return;
  }
  if (rc->err) {
    error_ = std::error_code(rc->err, category());
    error_message_ = rc->errstr;
    redisFree(rc);
    return;
  }
  const int fl = ::fcntl(rc->fd, F_GETFL);
  if (fl < 0 || (!(fl & O_NONBLOCK) && ::fcntl(rc->fd, F_SETFL, fl | O_NONBLOCK) < 0)) {
    error_ = make_error_code(errc::io);
    error_message_ = detail::system_text(errno);
    redisFree(rc);
    return;
  }
  rc_ = rc;
  state_ = connection_state::ready;
}

/// Moves what the socket holds now into the reader and takes a complete
/// reply if there is one: `reply` (in `out`: the reply, or the error that
/// closed the connection), `data` (bytes read, no reply yet), `nothing`.
inline connection::got connection::take(reply& out, bool sent) {
  for (int reads = 0;; ++reads) {
    void* r = nullptr;
    if (redisReaderGetReply(rc_->reader, &r) != REDIS_OK) {
      const int code = rc_->reader->err ? rc_->reader->err : REDIS_ERR_PROTOCOL;
      out = fail(std::error_code(code, category()), rc_->reader->errstr, sent);
      return got::reply;
    }
    if (r) {
      auto* rep = static_cast<redisReply*>(r);
      state_ = connection_state::ready;
      std::error_code e;
      if (rep->type == REDIS_REPLY_ERROR)
        e = make_error_code(classify_error_reply(std::string_view(rep->str ? rep->str : "", rep->len)));
      out = reply(rep, e, sent);
      return got::reply;
    }
    if (reads > 0) return got::data;  // one read per call: the caller looks at the context in between
    char buf[16 * 1024];
    ssize_t n;
    while ((n = ::recv(rc_->fd, buf, sizeof buf, MSG_DONTWAIT)) < 0 && errno == EINTR) {
    }
    if (n > 0) {
      if (redisReaderFeed(rc_->reader, buf, static_cast<std::size_t>(n)) != REDIS_OK) {
        out = fail(make_error_code(errc::oom), "Out of memory", sent);
        return got::reply;
      }
      continue;
    }
    if (n == 0) {
      out = fail(make_error_code(errc::eof), "Server closed the connection", sent);
      return got::reply;
    }
    if (io::detail::would_block(errno)) return got::nothing;
    const int err = errno;
    out = fail(make_error_code(errc::io), detail::system_text(err), sent);
    return got::reply;
  }
}

template <class Clock>
reply connection::read_reply(const basic_context<Clock>& c, io::detail::lazy_wake& wake, bool sent,
                             bool wait_first) {
  // A cancelled call leaves the connection reply_pending when a reply is owed
  // (the command was sent) or partly read (its start is in the reader).
  bool partial = false;
  bool wait = wait_first;
  for (;;) {
    if (wait) {
      if (const std::error_code e = wake.wait(c, rc_->fd, POLLIN)) {
        if (!c.done()) return fail(make_error_code(errc::io), e.message(), sent);  // poll() failed
        // A reply that arrived with the cancel is the result: a complete
        // command is never reported as cancelled. Looked for once, briefly.
        reply late;
        for (int i = 0; i < 4; ++i) {
          const got g = take(late, sent);
          if (g == got::reply) return late;
          if (g == got::nothing) break;
          partial = true;
        }
        if (sent || partial) state_ = connection_state::reply_pending;
        return reply(nullptr, e, sent);
      }
    }
    reply r;
    const got g = take(r, sent);
    if (g == got::reply) return r;
    if (g == got::data) {
      partial = true;
      if (c.done()) {  // a long reply: stop between reads, keeping what was read
        state_ = connection_state::reply_pending;
        return reply(nullptr, c.err(), sent);
      }
    }
    wait = g == got::nothing;
  }
}

template <class Clock>
reply connection::command_argv(const basic_context<Clock>& c, std::span<const std::string_view> args) {
  if (state_ == connection_state::closed) return reply(nullptr, make_error_code(errc::closed), false);
  if (state_ == connection_state::reply_pending)
    return reply(nullptr, make_error_code(errc::reply_pending), false);
  if (c.done()) return reply(nullptr, c.err(), false);
  if (args.empty())  // "*0\r\n": the server would answer nothing, and the call wait for its deadline
    return reply(nullptr, make_error_code(errc::other), false, "a command needs at least one argument");
  const detail::formatted_command cmd(args);
  if (!cmd.data()) return reply(nullptr, make_error_code(errc::oom), false, "Out of memory");

  io::detail::lazy_wake wake;
  std::size_t off = 0;
  while (off < cmd.size()) {
    const ssize_t n = ::send(rc_->fd, cmd.data() + off, cmd.size() - off, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n >= 0) {
      off += static_cast<std::size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (!io::detail::would_block(errno)) {
      const int err = errno;
      return fail(make_error_code(errc::io), detail::system_text(err),
                  false);  // the server runs no half command
    }
    if (const std::error_code e = wake.wait(c, rc_->fd, POLLOUT)) {
      if (off == 0)
        return reply(nullptr, c.done() ? e : make_error_code(errc::io), false,
                     c.done() ? std::string() : e.message());  // nothing sent: still ready
      if (!c.done()) return fail(make_error_code(errc::io), e.message(), false);
      // Half sent: close, so that the server drops the half it has and never runs it.
      (void)fail(make_error_code(errc::aborted), "a cancel interrupted sending a command", false);
      return reply(nullptr, e, false);
    }
  }
  return read_reply(c, wake, true, true);
}

template <class Clock>
reply connection::get_reply(const basic_context<Clock>& c) {
  if (state_ == connection_state::closed) return reply(nullptr, make_error_code(errc::closed), false);
  if (c.done()) return reply(nullptr, c.err(), false);
  io::detail::lazy_wake wake;
  return read_reply(c, wake, false, false);
}

template <class Clock>
connection connect(const basic_context<Clock>& c, const std::string& host, int port) {
  if (c.done()) return detail::connection_access::failed(c.err(), c.err().message());
  return detail::finish_connect(c, redisConnectNonBlock(host.c_str(), port));
}

template <class Clock>
connection connect_unix(const basic_context<Clock>& c, const std::string& path) {
  if (c.done()) return detail::connection_access::failed(c.err(), c.err().message());
  return detail::finish_connect(c, redisConnectUnixNonBlock(path.c_str()));
}

}  // namespace ctx::redis
