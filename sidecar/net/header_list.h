// HeaderList: a call's header fields (or trailers) in arrival order, names and
// values back to back in one buffer. A call's request headers, response
// headers and trailers are about a dozen short strings; as separate
// std::strings, each one past 15 bytes was an allocation and a free per call.
// Here a list of up to kInlineFields fields costs at most one allocation (its
// byte buffer, none at all while the bytes fit std::string's inline storage).
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
#include <initializer_list>
#include <iterator>
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
  // The byte buffer's first allocation (bytes past the inline 15).
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

  void emplace_back(std::string_view name, std::string_view value) {
    const Field field{static_cast<uint32_t>(bytes_.size()),
                      static_cast<uint32_t>(name.size()),
                      static_cast<uint32_t>(value.size())};
    if (size_ < kInlineFields) {
      inline_[size_] = field;
    } else {
      more_.push_back(field);
    }
    ++size_;
    const size_t need = bytes_.size() + name.size() + value.size();
    if (need > bytes_.capacity()) {
      // Past the inline bytes, straight to a size that holds a typical list.
      bytes_.reserve(std::max({need, 2 * bytes_.capacity(), kFirstBytes}));
    }
    bytes_.append(name);
    bytes_.append(value);
  }

  // Room for `fields` fields of `bytes` name and value bytes together.
  void reserve(size_t fields, size_t bytes) {
    if (fields > kInlineFields) more_.reserve(fields - kInlineFields);
    bytes_.reserve(bytes);
  }
  void clear() {
    size_ = 0;
    more_.clear();
    bytes_.clear();
  }
  bool empty() const { return size_ == 0; }
  size_t size() const { return size_; }
  // Name and value bytes together (no per-field overhead).
  size_t bytes() const { return bytes_.size(); }

  value_type operator[](size_t i) const {
    const Field& f = i < kInlineFields ? inline_[i] : more_[i - kInlineFields];
    const char* base = bytes_.data() + f.offset;
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
  struct Field {
    uint32_t offset = 0;  // of the name in bytes_; the value follows it
    uint32_t name_size = 0;
    uint32_t value_size = 0;
  };
  // The first kInlineFields fields, then the rest.
  std::array<Field, kInlineFields> inline_;
  std::vector<Field> more_;
  uint32_t size_ = 0;
  std::string bytes_;
};

}  // namespace bulwark::net

#endif  // BULWARK_SIDECAR_NET_HEADER_LIST_H_
