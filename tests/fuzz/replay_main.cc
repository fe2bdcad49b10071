// Replays a fuzz target over its corpus without libFuzzer: every file named on
// the command line, and every regular file inside the directories named there
// (in name order, so runs are reproducible), is passed once to
// LLVMFuzzerTestOneInput. A target that finds a broken invariant aborts, so
// ctest fails; an empty corpus fails too (a corpus that silently vanished would
// otherwise pass).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

namespace fs = std::filesystem;

bool ReadWholeFile(const fs::path& path, std::string* content) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  content->assign(std::istreambuf_iterator<char>(in),
                  std::istreambuf_iterator<char>());
  return !in.bad();
}

// The inputs named by `arg`: the file itself, or a directory's regular files.
bool CollectInputs(const fs::path& arg, std::vector<fs::path>* inputs) {
  std::error_code error;
  if (fs::is_regular_file(arg, error)) {
    inputs->push_back(arg);
    return true;
  }
  if (!fs::is_directory(arg, error)) {
    std::fprintf(stderr, "replay: %s: not a file or directory\n", arg.c_str());
    return false;
  }
  std::vector<fs::path> found;
  for (const auto& entry : fs::recursive_directory_iterator(arg, error)) {
    if (entry.is_regular_file()) found.push_back(entry.path());
  }
  if (error) {
    std::fprintf(stderr, "replay: %s: %s\n", arg.c_str(),
                 error.message().c_str());
    return false;
  }
  std::sort(found.begin(), found.end());
  inputs->insert(inputs->end(), found.begin(), found.end());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
    return 2;
  }
  std::vector<fs::path> inputs;
  for (int i = 1; i < argc; ++i) {
    if (!CollectInputs(argv[i], &inputs)) return 2;
  }
  if (inputs.empty()) {
    std::fprintf(stderr, "replay: no inputs found\n");
    return 1;
  }
  std::string content;
  for (const fs::path& input : inputs) {
    if (!ReadWholeFile(input, &content)) {
      std::fprintf(stderr, "replay: cannot read %s\n", input.c_str());
      return 2;
    }
    // A fresh heap copy of exactly the input's size, as libFuzzer passes it, so
    // an over-read is caught by ASan in sanitizer builds.
    std::vector<uint8_t> bytes(content.begin(), content.end());
    LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
  }
  std::printf("replay: ran %zu inputs\n", inputs.size());
  return 0;
}
