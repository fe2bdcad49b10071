// HeaderList: a call's header fields (or trailers) in arrival order, names and
// values back to back in one buffer. A call's request headers, response
// headers and trailers are about a dozen short strings; as separate
// std::strings, each one past 15 bytes was an allocation and a free per call.
// Here a list of up to kInlineFields fields costs at most one allocation (its
// byte buffer, none while it is empty).
//
// Elements are pairs of string_views into the list: they stay valid until the
// list is next changed (a field appended, clear, assignment) or destroyed.
// Duplicate names are kept, in order. Thread-compatible.
#ifndef BULWARK_SIDECAR_NET_HEADER_LIST_H_
#define BULWARK_SIDECAR_NET_HEADER_LIST_H_

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bulwark::net {

class HeaderList {
 public:
  using value_type = std::pair<std::string_view, std::string_view>;
  static constexpr size_t kInlineFields = 8;
  // The byte buffer's first allocation.
  static constexpr size_t kFirstBytes = 128;

  class const_iterator {
   public:
    using iterator_category = std::random_access_iterator_tag;
    using value_type = HeaderList::value_type;
    using difference_type = std::ptrdiff_t;
    using pointer = void;
    using reference = value_type;

    const_iterator() = default;
    value_type operator*() const { return (*list_)[index_]; }
    value_type operator[](difference_type n) const {
      return (*list_)[index_ + n];
    }
    const_iterator& operator++() {
      ++index_;
      return *this;
    }
    const_iterator operator++(int) {
      const_iterator old = *this;
      ++index_;
      return old;
    }
    const_iterator& operator--() {
      --index_;
      return *this;
    }
    const_iterator operator--(int) {
      const_iterator old = *this;
      --index_;
      return old;
    }
    const_iterator& operator+=(difference_type n) {
      index_ += n;
      return *this;
    }
    const_iterator& operator-=(difference_type n) {
      index_ -= n;
      return *this;
    }
    friend const_iterator operator+(const_iterator it, difference_type n) {
      return it += n;
    }
    friend const_iterator operator+(difference_type n, const_iterator it) {
      return it += n;
    }
    friend const_iterator operator-(const_iterator it, difference_type n) {
      return it -= n;
    }
    friend difference_type operator-(const_iterator a, const_iterator b) {
      return static_cast<difference_type>(a.index_) -
             static_cast<difference_type>(b.index_);
    }
    friend bool operator==(const_iterator a, const_iterator b) {
      return a.index_ == b.index_;
    }
    friend bool operator!=(const_iterator a, const_iterator b) {
      return a.index_ != b.index_;
    }
    friend bool operator<(const_iterator a, const_iterator b) {
      return a.index_ < b.index_;
    }
    friend bool operator>(const_iterator a, const_iterator b) {
      return a.index_ > b.index_;
    }
    friend bool operator<=(const_iterator a, const_iterator b) {
      return a.index_ <= b.index_;
    }
    friend bool operator>=(const_iterator a, const_iterator b) {
      return a.index_ >= b.index_;
    }

   private:
    friend class HeaderList;
    const_iterator(const HeaderList* list, size_t index)
        : list_(list), index_(index) {}
    const HeaderList* list_ = nullptr;
    size_t index_ = 0;
  };
  using iterator = const_iterator;

  HeaderList() = default;
  HeaderList(std::initializer_list<value_type> fields) {
    for (const auto& [name, value] : fields) emplace_back(name, value);
  }
  template <typename It>
  HeaderList(It first, It last) {
    for (; first != last; ++first) {
      const auto& [name, value] = *first;
      emplace_back(name, value);
    }
  }

  HeaderList(const HeaderList& other) { *this = other; }
  HeaderList& operator=(const HeaderList& other) {
    if (this == &other) return *this;
    CopyInlineFields(other);
    more_ = other.more_;
    size_ = other.size_;
    bytes_size_ = 0;
    Reserve(other.bytes_size_);
    if (other.bytes_size_ != 0) {
      std::memcpy(bytes_.get(), other.bytes_.get(), other.bytes_size_);
    }
    bytes_size_ = other.bytes_size_;
    return *this;
  }
  HeaderList(HeaderList&& other) noexcept { *this = std::move(other); }
  HeaderList& operator=(HeaderList&& other) noexcept {
    if (this == &other) return *this;
    CopyInlineFields(other);
    more_ = std::move(other.more_);
    size_ = std::exchange(other.size_, 0);
    bytes_ = std::move(other.bytes_);
    bytes_size_ = std::exchange(other.bytes_size_, 0);
    bytes_capacity_ = std::exchange(other.bytes_capacity_, 0);
    other.more_.clear();
    return *this;
  }

  void emplace_back(std::string_view name, std::string_view value) {
    const size_t need = bytes_size_ + name.size() + value.size();
    if (need > bytes_capacity_) {
      // Straight to a size that holds a typical list, then doubling.
      Reserve(std::max({need, 2 * size_t{bytes_capacity_}, kFirstBytes}));
    }
    const Field field{bytes_size_, static_cast<uint32_t>(name.size()),
                      static_cast<uint32_t>(value.size())};
    if (size_ < kInlineFields) {
      inline_[size_] = field;
    } else {
      more_.push_back(field);
    }
    ++size_;
    char* at = bytes_.get() + bytes_size_;
    if (!name.empty()) std::memcpy(at, name.data(), name.size());
    if (!value.empty()) {
      std::memcpy(at + name.size(), value.data(), value.size());
    }
    bytes_size_ = static_cast<uint32_t>(need);
  }

  // Room for `fields` fields of `bytes` name and value bytes together.
  void reserve(size_t fields, size_t bytes) {
    if (fields > kInlineFields) more_.reserve(fields - kInlineFields);
    Reserve(bytes);
  }
  void clear() {
    size_ = 0;
    more_.clear();
    bytes_size_ = 0;
  }
  bool empty() const { return size_ == 0; }
  size_t size() const { return size_; }
  // Name and value bytes together (no per-field overhead).
  size_t bytes() const { return bytes_size_; }

  value_type operator[](size_t i) const {
    const Field& f = i < kInlineFields ? inline_[i] : more_[i - kInlineFields];
    const char* base = bytes_.get() + f.offset;
    return {std::string_view(base, f.name_size),
            std::string_view(base + f.name_size, f.value_size)};
  }
  const_iterator begin() const { return const_iterator(this, 0); }
  const_iterator end() const { return const_iterator(this, size_); }

  friend bool operator==(const HeaderList& a, const HeaderList& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
      if (a[i] != b[i]) return false;
    }
    return true;
  }
  friend bool operator!=(const HeaderList& a, const HeaderList& b) {
    return !(a == b);
  }
  // For test failure messages: {name: value, ...}.
  friend std::ostream& operator<<(std::ostream& os, const HeaderList& list) {
    os << "{";
    for (size_t i = 0; i < list.size(); ++i) {
      os << (i == 0 ? "" : ", ") << list[i].first << ": " << list[i].second;
    }
    return os << "}";
  }

 private:
  void CopyInlineFields(const HeaderList& other) {
    std::copy_n(other.inline_.begin(),
                std::min<size_t>(other.size_, kInlineFields), inline_.begin());
  }
  // Makes room for `bytes` bytes in all, keeping those held.
  void Reserve(size_t bytes) {
    if (bytes <= bytes_capacity_) return;
    std::unique_ptr<char[]> grown(new char[bytes]);
    if (bytes_size_ != 0) std::memcpy(grown.get(), bytes_.get(), bytes_size_);
    bytes_ = std::move(grown);
    bytes_capacity_ = static_cast<uint32_t>(bytes);
  }

  // Left uninitialized where unused: a list is made per call.
  struct Field {
    uint32_t offset;  // of the name in bytes_; the value follows it
    uint32_t name_size;
    uint32_t value_size;
  };
  // The first kInlineFields fields, then the rest.
  std::array<Field, kInlineFields> inline_;
  std::vector<Field> more_;
  uint32_t size_ = 0;
  // Names and values back to back: bytes_size_ used of bytes_capacity_.
  std::unique_ptr<char[]> bytes_;
  uint32_t bytes_size_ = 0;
  uint32_t bytes_capacity_ = 0;
};

}  // namespace bulwark::net

#endif  // BULWARK_SIDECAR_NET_HEADER_LIST_H_
