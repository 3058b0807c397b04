#pragma once
/// Errors a user can cause, carried as values (`Expected<T>`) through the runtime.
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>

namespace flotilla {

enum class Errc {
  invalid_config,    ///< a config key is missing, unknown or has a bad value
  io,                ///< a file could not be read or written
  protocol_version,  ///< a peer speaks another protocol major version
  malformed,         ///< bytes that do not decode as a Flotilla message
  rejected,          ///< a well-formed message that is refused (shapes, late, unknown sender)
  unreachable,       ///< a peer did not answer in time
  address_in_use,    ///< a listen endpoint could not be bound
  invalid_argument,  ///< a bad value passed on the command line or to an API
  internal,
};

[[nodiscard]] const char* to_string(Errc code) noexcept;

struct Error {
  Errc code = Errc::internal;
  std::string message;
};

/// Thrown only where a value-based error cannot flow (constructors, CLI setup); caught at
/// actor and process boundaries and turned into a one-line message.
class Failure : public std::runtime_error {
 public:
  explicit Failure(Error e) : std::runtime_error(e.message), error_(std::move(e)) {}
  Failure(Errc code, std::string message) : Failure(Error{code, std::move(message)}) {}
  [[nodiscard]] const Error& error() const noexcept { return error_; }

 private:
  Error error_;
};

/// A value or an Error; the small subset of C++23's std::expected the runtime needs.
template <class T>
class [[nodiscard]] Expected {
 public:
  Expected(T value) : v_(std::move(value)) {}  // NOLINT: implicit like std::expected
  Expected(Error error) : v_(std::move(error)) {}  // NOLINT
  [[nodiscard]] bool has_value() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }
  T& value() & { check(); return std::get<0>(v_); }
  const T& value() const& { check(); return std::get<0>(v_); }
  T&& value() && { check(); return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  [[nodiscard]] const Error& error() const { return std::get<1>(v_); }

 private:
  void check() const {
    if (!has_value()) throw Failure(std::get<1>(v_));
  }
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Expected<void> {
 public:
  Expected() = default;
  Expected(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT
  [[nodiscard]] bool has_value() const noexcept { return ok_; }
  explicit operator bool() const noexcept { return ok_; }
  void value() const {
    if (!ok_) throw Failure(error_);
  }
  [[nodiscard]] const Error& error() const { return error_; }

 private:
  Error error_;
  bool ok_ = true;
};

}  // namespace flotilla
