// SPDX-License-Identifier: MIT
// Replay driver for the libFuzzer targets, for compilers without libFuzzer:
// runs LLVMFuzzerTestOneInput once on every file named on the command line,
// or in a directory named there. Exits non-zero (abort) on the first mismatch.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

int main(int argc, char** argv) {
  std::vector<std::filesystem::path> files;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path p = argv[i];
    if (std::filesystem::is_directory(p)) {
      for (const auto& e : std::filesystem::directory_iterator(p))
        if (e.is_regular_file()) files.push_back(e.path());
    } else {
      files.push_back(p);
    }
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) {
    std::fprintf(stderr, "fuzz_replay: no inputs (usage: fuzz_replay FILE|DIR...)\n");
    return 2;
  }
  std::size_t bytes = 0;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::vector<std::uint8_t> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    bytes += data.size();
    LLVMFuzzerTestOneInput(data.data(), data.size());
  }
  std::printf("fuzz_replay: %zu inputs, %zu bytes, all agree with the model\n", files.size(), bytes);
  return 0;
}
