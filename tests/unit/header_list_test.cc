#include "sidecar/net/header_list.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace bulwark::net {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;

TEST(HeaderListTest, KeepsFieldsInOrderWithDuplicates) {
  HeaderList list = {{"content-type", "application/grpc"},
                     {"x-tag", "a"},
                     {"x-tag", "b"},
                     {"empty", ""}};
  list.emplace_back("", "value-without-name");
  EXPECT_THAT(list,
              ElementsAre(Pair("content-type", "application/grpc"),
                          Pair("x-tag", "a"), Pair("x-tag", "b"),
                          Pair("empty", ""), Pair("", "value-without-name")));
  EXPECT_EQ(list.size(), 5u);
  EXPECT_EQ(list.bytes(), std::string("content-typeapplication/grpc"
                                      "x-tagax-tagbempty"
                                      "value-without-name")
                              .size());
}

TEST(HeaderListTest, ManyAndLongFieldsSurviveGrowth) {
  HeaderList list;
  std::vector<std::pair<std::string, std::string>> expected;
  for (int i = 0; i < 40; ++i) {
    std::string name = "x-field-" + std::to_string(i);
    std::string value(static_cast<size_t>(i * 13),
                      static_cast<char>('a' + i % 26));
    list.emplace_back(name, value);
    expected.emplace_back(std::move(name), std::move(value));
  }
  ASSERT_EQ(list.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(list[i].first, expected[i].first);
    EXPECT_EQ(list[i].second, expected[i].second);
  }
  // Iterators agree with indexing, forwards and by distance.
  EXPECT_EQ(list.end() - list.begin(), 40);
  EXPECT_EQ((*(list.begin() + 9)).first, "x-field-9");
  EXPECT_EQ(HeaderList(list.begin() + 38, list.end()).size(), 2u);
  // A copy holds its own bytes and the fields past the inline ones.
  HeaderList copy = list;
  list.clear();
  list.emplace_back("x-field-0", "overwritten");
  ASSERT_EQ(copy.size(), expected.size());
  EXPECT_EQ(copy[39].first, "x-field-39");
  EXPECT_EQ(copy[39].second, expected[39].second);
  EXPECT_EQ(copy[0].second, "");
}

TEST(HeaderListTest, CopiesAreIndependentAndCompareByContent) {
  HeaderList a = {{"grpc-status", "0"}, {"grpc-message", "fine"}};
  HeaderList b = a;
  EXPECT_EQ(a, b);
  b.emplace_back("x-more", "1");
  EXPECT_NE(a, b);
  EXPECT_EQ(a.size(), 2u);
  HeaderList moved = std::move(b);
  EXPECT_EQ(moved.size(), 3u);
  EXPECT_EQ(moved[2].second, "1");
  moved.clear();
  EXPECT_TRUE(moved.empty());
  EXPECT_EQ(moved.bytes(), 0u);
  moved.emplace_back("after", "clear");
  EXPECT_THAT(moved, ElementsAre(Pair("after", "clear")));
  // Same fields in another order are another list.
  EXPECT_NE(HeaderList({{"a", "1"}, {"b", "2"}}),
            HeaderList({{"b", "2"}, {"a", "1"}}));
}

}  // namespace
}  // namespace bulwark::net
