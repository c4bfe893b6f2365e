#include <pybind11/pybind11.h>

#include "core/error.h"
#include "python/bindings.h"

namespace py = pybind11;

namespace slimrt::python {

void register_errors(py::module_& m) {
  // The exception classes live in slimrt.errors (plain Python), so users catch
  // the same types whether an error comes from Python or from the core.
  py::module_ errors = py::module_::import("slimrt.errors");
  static py::object invalid_model = errors.attr("InvalidModelError");
  static py::object profile_error = errors.attr("ProfileError");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      switch (e.kind()) {
        case ErrorKind::InvalidModel: PyErr_SetString(invalid_model.ptr(), e.what()); return;
        case ErrorKind::UnknownProfile: PyErr_SetString(profile_error.ptr(), e.what()); return;
        case ErrorKind::Io: PyErr_SetString(PyExc_OSError, e.what()); return;
        case ErrorKind::InvalidArgument:
        case ErrorKind::BufferTooSmall: PyErr_SetString(PyExc_ValueError, e.what()); return;
      }
    }
  });
  (void)m;
}

}  // namespace slimrt::python
