#include "runtime/storage/record_log.hpp"

#include "runtime/storage/durable.hpp"

#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace flotilla {
namespace {

constexpr char kMagic[4] = {'F', 'L', 'R', 'C'};
constexpr std::size_t kHeader = 16;

std::uint32_t crc_of(const char* data, std::size_t size) {
  uLong crc = crc32(0L, Z_NULL, 0);
  // zlib takes at most 4 GiB per call.
  while (size > 0) {
    const auto n = static_cast<uInt>(std::min<std::size_t>(size, 1u << 30));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(data), n);
    data += n;
    size -= n;
  }
  return static_cast<std::uint32_t>(crc);
}

Error io_error(const std::filesystem::path& path, const std::string& what) {
  return Error{Errc::io, path.string() + ": " + what + ": " + std::strerror(errno)};
}

}  // namespace

Expected<RecordLog> RecordLog::open(const std::filesystem::path& path, std::uint64_t keep_bytes,
                                    bool sync) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return io_error(path, "cannot open the journal");
  RecordLog log(path, fd, sync);
  log.end_ = keep_bytes;
  if (::ftruncate(fd, static_cast<off_t>(keep_bytes)) != 0) return io_error(path, "cannot cut its torn tail");
  if (::lseek(fd, static_cast<off_t>(keep_bytes), SEEK_SET) < 0) return io_error(path, "cannot seek");
  if (sync) {
    if (::fsync(fd) != 0) return io_error(path, "cannot flush");
    if (auto ok = sync_directory(path.parent_path()); !ok) return ok.error();
  }
  return log;
}

RecordLog::RecordLog(RecordLog&& other) noexcept
    : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)), sync_(other.sync_), end_(other.end_) {}

RecordLog& RecordLog::operator=(RecordLog&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    sync_ = other.sync_;
    end_ = other.end_;
  }
  return *this;
}

RecordLog::~RecordLog() {
  if (fd_ >= 0) ::close(fd_);
}

Expected<void> RecordLog::append(const std::string& payload) {
  char header[kHeader];
  const std::uint32_t crc = crc_of(payload.data(), payload.size());
  const std::uint64_t size = payload.size();
  std::memcpy(header, kMagic, 4);
  std::memcpy(header + 4, &crc, 4);
  std::memcpy(header + 8, &size, 8);
  // Header and payload in one call, without copying the payload behind the header.
  iovec parts[2] = {{header, kHeader}, {const_cast<char*>(payload.data()), payload.size()}};
  std::size_t skip = 0;  // bytes already written
  const std::size_t total = kHeader + payload.size();
  while (skip < total) {
    iovec left[2];
    int count = 0;
    std::size_t offset = skip;
    for (const auto& part : parts) {
      if (offset >= part.iov_len) {
        offset -= part.iov_len;
        continue;
      }
      left[count++] = {static_cast<char*>(part.iov_base) + offset, part.iov_len - offset};
      offset = 0;
    }
    const auto n = ::writev(fd_, left, count);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return undo(io_error(path_, "cannot append to the journal"));
    skip += static_cast<std::size_t>(n);
  }
  if (sync_ && ::fdatasync(fd_) != 0) return undo(io_error(path_, "cannot flush the journal"));
  end_ += total;
  return {};
}

Error RecordLog::undo(Error why) {
  // Half a record would end every later one for a reader: cut back to the last whole record.
  if (::ftruncate(fd_, static_cast<off_t>(end_)) != 0 || ::lseek(fd_, static_cast<off_t>(end_), SEEK_SET) < 0) {
    why.message += "; and it cannot be cut back to its last whole record";
  }
  return why;
}

Expected<RecordLog::Read> RecordLog::read(const std::filesystem::path& path, std::uint64_t max_record) {
  auto mapped = MappedFile::open(path);
  if (!mapped) return mapped.error();
  const auto bytes = mapped->bytes();
  Read out;
  std::uint64_t at = 0;
  while (at < bytes.size()) {
    const auto left = bytes.size() - at;
    const auto where = "record " + std::to_string(out.records.size() + 1) + " at byte " + std::to_string(at);
    if (left < kHeader) {
      out.torn = where + ": " + std::to_string(left) + " bytes, less than a record's header";
      break;
    }
    const auto* h = reinterpret_cast<const char*>(bytes.data() + at);
    std::uint32_t crc = 0;
    std::uint64_t size = 0;
    std::memcpy(&crc, h + 4, 4);
    std::memcpy(&size, h + 8, 8);
    if (std::memcmp(h, kMagic, 4) != 0) {
      out.torn = where + ": not a record";
      break;
    }
    if (size > max_record || size > left - kHeader) {
      out.torn = where + ": claims " + std::to_string(size) + " bytes, " +
                 std::to_string(left - kHeader) + " follow (at most " + std::to_string(max_record) + ")";
      break;
    }
    if (crc_of(h + kHeader, size) != crc) {
      out.torn = where + ": its checksum does not match";
      break;
    }
    out.records.emplace_back(h + kHeader, size);
    at += kHeader + size;
    out.good_bytes = at;
  }
  return out;
}

}  // namespace flotilla
