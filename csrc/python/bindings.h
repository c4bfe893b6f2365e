#pragma once

#include <pybind11/pybind11.h>

namespace slimrt::python {

void register_errors(pybind11::module_& m);
void register_model(pybind11::module_& m);
void register_session(pybind11::module_& m);

}  // namespace slimrt::python
