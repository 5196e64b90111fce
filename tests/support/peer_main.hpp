// SPDX-License-Identifier: MIT
// The start and end of a peer process (B) of the two-process tests: it dies
// with its parent (A), and it shuts down cleanly on SIGTERM.
#pragma once

#include <sys/prctl.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>

namespace test {

/// Call first in main(), before any thread starts: argv[1] is A's pid. The
/// kernel kills this process if A dies (PR_SET_PDEATHSIG), and SIGTERM is
/// blocked in every thread, for wait_for_sigterm(). Exits if A is gone already.
inline void peer_init(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s <parent pid> ...\n", argv[0]);
    std::exit(2);
  }
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != static_cast<pid_t>(std::atol(argv[1]))) std::exit(3);  // A died before prctl
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  ::pthread_sigmask(SIG_BLOCK, &term, nullptr);
}

/// Blocks until SIGTERM arrives.
inline void wait_for_sigterm() {
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  int sig = 0;
  while (::sigwait(&term, &sig) != 0 || sig != SIGTERM) {
  }
}

}  // namespace test
