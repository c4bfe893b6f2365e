#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "core/model.h"
#include "core/plan.h"
#include "kernels/int8.h"
#include "kernels/kernels.h"
#include "python/bindings.h"

namespace py = pybind11;

namespace slimrt::python {

void register_model(py::module_& m) {
  py::class_<Model, std::shared_ptr<Model>>(m, "Model")
      .def_static(
          "load",
          [](const std::string& path) {
            py::gil_scoped_release release;
            return std::const_pointer_cast<Model>(Model::load_file(path));
          },
          py::arg("path"))
      .def_static(
          "from_bytes",
          [](py::bytes data) {
            std::string_view view = data;
            py::gil_scoped_release release;
            return std::const_pointer_cast<Model>(Model::load_buffer(view.data(), view.size()));
          },
          py::arg("data"))
      .def_property_readonly("name", &Model::name)
      .def_property_readonly("json", &Model::json)
      .def_property_readonly("min_multiplier", &Model::min_multiplier)
      .def_property_readonly("weight_bytes", &Model::weight_bytes)
      .def_property_readonly("gate_op", &Model::gate_op)
      .def_property_readonly("input_shape",
                             [](const Model& self) {
                               const int64_t* s = self.input_shape();
                               return py::make_tuple(s[0], s[1], s[2], s[3]);
                             })
      .def_property_readonly("groups",
                             [](const Model& self) {
                               py::list out;
                               for (const Group& g : self.groups()) out.append(py::make_tuple(g.name, g.size, g.fixed, g.why));
                               return out;
                             })
      .def_property_readonly("profiles",
                             [](const Model& self) {
                               py::list out;
                               for (const Profile& p : self.profiles())
                                 out.append(py::make_tuple(p.name, p.widths, p.macs, p.params));
                               return out;
                             })
      .def("uniform_widths", &Model::uniform_widths, py::arg("multiplier"))
      .def("profile_index", &Model::profile_index, py::arg("name"))
      .def(
          "cost",
          [](const Model& self, const std::vector<int32_t>& widths, int64_t h, int64_t w) {
            if (widths.size() != self.groups().size())
              throw py::value_error("cost: expected " + std::to_string(self.groups().size()) + " widths");
            if (h < 0 || w < 0 || h > (int64_t{1} << 20) || w > (int64_t{1} << 20))
              throw py::value_error("cost: input size " + std::to_string(h) + "x" + std::to_string(w) +
                                    " is not valid");
            const int64_t* s = self.input_shape();
            const ShapePlan plan = plan_shapes(self, widths, 1, h ? h : s[2], w ? w : s[3]);
            return py::make_tuple(plan.macs, plan.params);
          },
          py::arg("widths"), py::arg("h") = 0, py::arg("w") = 0,
          "(MACs, params) per sample for these group widths at input size h x w (0: the default "
          "input shape). Raises ValueError when the model cannot run that size.");

  m.def("isa", &kernels::isa, "Instruction set of the vector kernels in use.");
  m.def("set_isa", &kernels::set_isa, py::arg("isa"),
        "Select the vector kernels ('generic', 'avx2', 'avx512f'); False if unavailable.");
  m.def("i8_isa", &kernels::i8_isa, "Instruction set of the int8 kernels in use.");
  m.def("set_i8_isa", &kernels::set_i8_isa, py::arg("isa"),
        "Select the int8 kernels ('generic', 'avx512vnni'); False if unavailable.");
}

}  // namespace slimrt::python
