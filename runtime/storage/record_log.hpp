#pragma once
/// An append-only file of checksummed records (a journal): each record is flushed to the disk
/// before append() returns, when asked to. A crash can tear only the last record; a reader
/// stops at the first record whose length or checksum does not hold and says where.
///
/// Record: "FLRC" | u32 CRC-32 of the payload | u64 payload length | payload (little-endian).
#include "runtime/base/error.hpp"

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace flotilla {

class RecordLog {
 public:
  /// Opens `path` for appending (created owner-only if missing) after its first `keep_bytes`
  /// bytes (the end of its last good record: a torn tail is cut off); `sync`: flush every
  /// record to the disk before append() returns.
  [[nodiscard]] static Expected<RecordLog> open(const std::filesystem::path& path,
                                                std::uint64_t keep_bytes, bool sync);
  RecordLog(RecordLog&& other) noexcept;
  RecordLog& operator=(RecordLog&& other) noexcept;
  RecordLog(const RecordLog&) = delete;
  RecordLog& operator=(const RecordLog&) = delete;
  ~RecordLog();

  [[nodiscard]] Expected<void> append(const std::string& payload);
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

  struct Read {
    std::vector<std::string> records;
    std::uint64_t good_bytes = 0;  ///< where the last good record ends
    /// Empty if every byte belongs to a good record, else why reading stopped there.
    std::string torn;
  };
  /// The good records of `path` in order; `max_record` bounds a record's length before it is
  /// read. Errc::io only if the file cannot be read at all.
  [[nodiscard]] static Expected<Read> read(const std::filesystem::path& path, std::uint64_t max_record);

 private:
  RecordLog(std::filesystem::path path, int fd, bool sync) : path_(std::move(path)), fd_(fd), sync_(sync) {}
  /// A failed append cut back to end_ (the end of the last whole record).
  [[nodiscard]] Error undo(Error why);

  std::filesystem::path path_;
  int fd_ = -1;
  bool sync_ = true;
  std::uint64_t end_ = 0;
};

}  // namespace flotilla
