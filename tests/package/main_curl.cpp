// SPDX-License-Identifier: MIT
#include <ctx/curl.hpp>

int main() {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  cancel();
  const bool ok = ctx::curl::perform(c, nullptr) == ctx::errc::canceled &&
                  ctx::curl::make_error_code(CURLE_COULDNT_CONNECT).category() == ctx::curl::category();
  curl_global_cleanup();
  return ok ? 0 : 1;
}
