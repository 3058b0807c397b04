#pragma once
/// A fresh directory per test (named after the test and this process), removed after it;
/// `create` = false leaves making it to the code under test.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

namespace flotilla {

struct TestDir {
  explicit TestDir(const std::string& prefix = "flotilla-test", bool create = true)
      : path(std::filesystem::temp_directory_path() /
             (prefix + "-" + std::to_string(::getpid()) + "-" +
              ::testing::UnitTest::GetInstance()->current_test_info()->name())) {
    std::filesystem::remove_all(path);
    if (create) std::filesystem::create_directories(path);
  }
  ~TestDir() { std::filesystem::remove_all(path); }
  TestDir(const TestDir&) = delete;
  TestDir& operator=(const TestDir&) = delete;
  operator const std::filesystem::path&() const { return path; }  // NOLINT: a path by design
  std::filesystem::path path;
};

}  // namespace flotilla
