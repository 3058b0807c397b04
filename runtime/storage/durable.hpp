#pragma once
/// Writes that a crash cannot tear: a file is written under a private temporary name in its
/// directory, flushed to the disk, then renamed over its final name (and the directory
/// flushed), so a reader sees the old file or the new one, never half of one.
#include "runtime/base/error.hpp"

#include <cstddef>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

namespace flotilla {

/// Writes `bytes` to `path` atomically and durably. Errc::io naming the path and the reason.
[[nodiscard]] Expected<void> write_file_durably(const std::filesystem::path& path,
                                                std::span<const std::byte> bytes);
[[nodiscard]] Expected<void> write_file_durably(const std::filesystem::path& path,
                                                std::string_view text);

/// Flushes a directory's entries (a rename or a new file in it) to the disk.
[[nodiscard]] Expected<void> sync_directory(const std::filesystem::path& dir);

/// A file's bytes, read whole; `max_bytes` bounds it before anything is allocated.
[[nodiscard]] Expected<std::string> read_file(const std::filesystem::path& path,
                                              std::uint64_t max_bytes);

/// A private memory map of a whole file (copy-on-write: changing its pages never changes the
/// file); empty files map to an empty span.
class MappedFile {
 public:
  [[nodiscard]] static Expected<MappedFile> open(const std::filesystem::path& path);
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  [[nodiscard]] std::span<const std::byte> bytes() const {
    return {static_cast<const std::byte*>(data_), size_};
  }
  [[nodiscard]] std::byte* data() { return static_cast<std::byte*>(data_); }

 private:
  MappedFile(void* data, std::size_t size) : data_(data), size_(size) {}
  void* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace flotilla
