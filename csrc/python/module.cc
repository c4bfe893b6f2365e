// slimrt._core: the pybind11 skin over the core. slimrt::Error becomes
// InvalidModelError / ProfileError / ValueError / OSError (see register_errors).
#include <pybind11/pybind11.h>

#include "python/bindings.h"
#include "slimrt.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "slimrt engine core (private: use the slimrt package)";
  slimrt::python::register_errors(m);
  slimrt::python::register_model(m);
  slimrt::python::register_session(m);
  m.def("version", &slimrt_version, "Version of the compiled engine.");
}
