// SPDX-License-Identifier: MIT
// A consumer of ctx::grpc from the installed package: its config finds gRPC.
#include <ctx/grpc.hpp>

#include <cstdio>

int main() {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  ctx::grpc::client_context cc(c);
  cancel();
  const grpc::Status s(grpc::StatusCode::CANCELLED, "cancelled");
  if (cc.error(s) != ctx::errc::canceled) return 1;
  std::puts("consumer_grpc: ok");
  return 0;
}
