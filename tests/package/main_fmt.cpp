// SPDX-License-Identifier: MIT
#include <ctx/fmt.hpp>

int main() {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  return fmt::format("{}", c) == "background.with_cancel" ? 0 : 1;
}
