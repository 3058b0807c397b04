#include "runtime/storage/durable.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <utility>

namespace flotilla {
namespace {

Error io_error(const std::filesystem::path& path, const std::string& what, int err = errno) {
  return Error{Errc::io, path.string() + ": " + what + ": " + std::strerror(err)};
}

/// Closes a descriptor when it goes out of scope.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

Expected<void> write_all(int fd, const std::byte* data, std::size_t size,
                         const std::filesystem::path& path) {
  while (size > 0) {
    const auto n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return io_error(path, "write failed");
    }
    data += n;
    size -= static_cast<std::size_t>(n);
  }
  return {};
}

}  // namespace

Expected<void> sync_directory(const std::filesystem::path& dir) {
  Fd d{::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (d.fd < 0) return io_error(dir, "cannot open the directory");
  if (::fsync(d.fd) != 0) return io_error(dir, "cannot flush the directory");
  return {};
}

Expected<void> write_file_durably(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  const auto dir = path.parent_path();
  // A private name in the same directory (same file system: the rename is atomic); created
  // exclusively, so nothing another user placed there is written through.
  std::random_device entropy;
  const auto tmp = path.string() + ".tmp-" + std::to_string(entropy()) + std::to_string(::getpid());
  Fd f{::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)};
  if (f.fd < 0) return io_error(tmp, "cannot create");
  auto ok = write_all(f.fd, bytes.data(), bytes.size(), tmp);
  if (ok && ::fsync(f.fd) != 0) ok = io_error(tmp, "cannot flush to the disk");
  if (ok && ::close(std::exchange(f.fd, -1)) != 0) ok = io_error(tmp, "close failed");
  if (ok && ::rename(tmp.c_str(), path.c_str()) != 0) ok = io_error(path, "cannot rename " + tmp + " to it");
  if (!ok) {
    ::unlink(tmp.c_str());
    return ok;
  }
  return sync_directory(dir);
}

Expected<void> write_file_durably(const std::filesystem::path& path, std::string_view text) {
  return write_file_durably(path, std::as_bytes(std::span(text.data(), text.size())));
}

Expected<std::string> read_file(const std::filesystem::path& path, std::uint64_t max_bytes) {
  Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) return io_error(path, "cannot open");
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) return io_error(path, "cannot stat");
  if (static_cast<std::uint64_t>(st.st_size) > max_bytes) {
    return Error{Errc::io, path.string() + ": " + std::to_string(st.st_size) +
                               " bytes, more than the " + std::to_string(max_bytes) + " expected"};
  }
  std::string out(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t have = 0;
  while (have < out.size()) {
    const auto n = ::read(f.fd, out.data() + have, out.size() - have);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return io_error(path, "read failed");
    if (n == 0) break;
    have += static_cast<std::size_t>(n);
  }
  out.resize(have);
  return out;
}

Expected<MappedFile> MappedFile::open(const std::filesystem::path& path) {
  Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) return io_error(path, "cannot open");
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) return io_error(path, "cannot stat");
  if (!S_ISREG(st.st_mode)) return Error{Errc::io, path.string() + ": not a regular file"};
  const auto size = static_cast<std::size_t>(st.st_size);
  if (size == 0) return MappedFile(nullptr, 0);
  // Private and writable: copy-on-write pages, so a tensor viewing them may be changed in place
  // without touching the file.
  void* data = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, f.fd, 0);
  if (data == MAP_FAILED) return io_error(path, "cannot map");
  return MappedFile(data, size);
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(data_, size_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

}  // namespace flotilla
