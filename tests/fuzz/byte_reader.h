// ByteReader: turns a fuzz input into the small decisions a target makes (op
// codes, sizes, durations). Past the end it yields zeros, so every input is a
// complete program and libFuzzer's mutations of a byte change one decision.
// FUZZ_CHECK aborts with the broken invariant's text, which is what libFuzzer
// and the replay runner report. Header-only; a plain value, not thread-safe.
#ifndef BULWARK_TESTS_FUZZ_BYTE_READER_H_
#define BULWARK_TESTS_FUZZ_BYTE_READER_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#define FUZZ_CHECK(condition)                                         \
  do {                                                                \
    if (!(condition)) {                                               \
      std::fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, \
                   __LINE__, #condition);                             \
      std::abort();                                                   \
    }                                                                 \
  } while (false)

namespace bulwark::fuzz {

class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  bool empty() const { return pos_ >= size_; }
  size_t remaining() const { return empty() ? 0 : size_ - pos_; }

  uint8_t Byte() { return empty() ? 0 : data_[pos_++]; }
  bool Bool() { return (Byte() & 1) != 0; }

  // `bytes` (at most 8) bytes, big-endian.
  uint64_t Bits(int bytes) {
    uint64_t value = 0;
    for (int i = 0; i < bytes; ++i) value = (value << 8) | Byte();
    return value;
  }

  // A value in [0, bound) (bound >= 1) from as few bytes as it needs.
  uint64_t Below(uint64_t bound) {
    if (bound <= 1) return 0;
    int bytes = 0;
    for (uint64_t b = bound - 1; b != 0; b >>= 8) ++bytes;
    return Bits(bytes) % bound;
  }

  // Up to `n` bytes (fewer at the end of the input).
  std::string_view Take(size_t n) {
    if (n > remaining()) n = remaining();
    std::string_view out(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return out;
  }
  // Everything not read yet.
  std::string_view Rest() { return Take(remaining()); }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace bulwark::fuzz

#endif  // BULWARK_TESTS_FUZZ_BYTE_READER_H_
