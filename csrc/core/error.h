// Errors raised inside the core. The C ABI turns them into status codes and the
// Python bindings into exceptions; kernels never throw.
#pragma once

#include <stdexcept>
#include <string>

namespace slimrt {

enum class ErrorKind { InvalidArgument, InvalidModel, Io, BufferTooSmall, UnknownProfile };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

[[noreturn]] inline void fail_model(const std::string& message) {
  throw Error(ErrorKind::InvalidModel, message);
}
[[noreturn]] inline void fail_argument(const std::string& message) {
  throw Error(ErrorKind::InvalidArgument, message);
}

}  // namespace slimrt
