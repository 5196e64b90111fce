// SPDX-License-Identifier: MIT
#include <ctx/error.hpp>

#include <string>
#include <system_error>

#include "support/catch.hpp"
#include "support/common.hpp"

TEST_CASE("errc converts to error codes of the ctx category", "[error]") {
  const std::error_code deadline = ctx::errc::deadline_exceeded;
  CHECK(canceled.category().name() == std::string("ctx"));
  CHECK(&canceled.category() == &ctx::category());
  CHECK(canceled.value() == 1);
  CHECK(deadline.value() == 2);
  CHECK(canceled.message() == "context canceled");
  CHECK(deadline.message() == "context deadline exceeded");
  CHECK(canceled != deadline);
  CHECK(canceled == ctx::errc::canceled);
}

TEST_CASE("errc is equivalent to the portable std::errc conditions", "[error]") {
  const std::error_code deadline = ctx::errc::deadline_exceeded;
  CHECK(canceled == std::errc::operation_canceled);
  CHECK(deadline == std::errc::timed_out);
  CHECK(canceled != std::errc::timed_out);
  CHECK(deadline != std::errc::operation_canceled);
  CHECK(ctx::category().message(42) == "unknown ctx error 42");
}

TEST_CASE("ctx::error is a std::system_error that carries the cause", "[error]") {
  const std::error_code cause = std::make_error_code(std::errc::connection_reset);
  try {
    throw ctx::error(ctx::errc::canceled, cause);
  } catch (const std::system_error& e) {
    CHECK(e.code() == ctx::errc::canceled);
    CHECK(std::string(e.what()).find("context canceled") != std::string::npos);
    const auto* ce = dynamic_cast<const ctx::error*>(&e);
    REQUIRE(ce != nullptr);
    CHECK(ce->cause() == cause);
  }
}

TEST_CASE("ctx::error without a cause reports the error as its cause", "[error]") {
  const ctx::error e(ctx::errc::deadline_exceeded, {});
  CHECK(e.cause() == ctx::errc::deadline_exceeded);
}
