#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "core/error.h"
#include "core/session.h"
#include "python/bindings.h"

namespace py = pybind11;

namespace slimrt::python {

namespace {

ProfileRef make_ref(int32_t index, double multiplier) {
  return multiplier > 0.0 ? ProfileRef::uniform(multiplier) : ProfileRef::named(index);
}

}  // namespace

void register_session(py::module_& m) {
  py::class_<Session>(m, "Session")
      .def(py::init([](std::shared_ptr<Model> model, int threads) {
             return std::make_unique<Session>(std::move(model), threads);
           }),
           py::arg("model"), py::arg("threads") = 1)
      .def_property_readonly("threads", &Session::threads)
      .def(
          "run",
          [](Session& self, py::array_t<float, py::array::c_style> x, int32_t index, double multiplier) {
            std::vector<int64_t> shape(x.shape(), x.shape() + x.ndim());
            const ProfileRef ref = make_ref(index, multiplier);
            const Session::Shape os = self.output_shape(shape.data(), static_cast<int>(shape.size()), ref);
            py::array_t<float> out(std::vector<py::ssize_t>(os.dims, os.dims + os.rank));
            const float* in = x.data();
            float* dst = out.mutable_data();
            const size_t cap = static_cast<size_t>(out.size());
            {
              py::gil_scoped_release release;
              self.run(in, shape.data(), static_cast<int>(shape.size()), ref, dst, cap, nullptr);
            }
            return out;
          },
          py::arg("x"), py::arg("index") = 0, py::arg("multiplier") = 0.0,
          "Run on a float32 C-contiguous NCHW array; a named profile by index, or a uniform multiplier if > 0.")
      .def(
          "run_gated",
          [](Session& self, py::array_t<float, py::array::c_style> x, int32_t max_profile) {
            std::vector<int64_t> shape(x.shape(), x.shape() + x.ndim());
            if (shape.size() != 4) throw py::value_error("input must be NCHW (rank 4)");
            const int64_t n = shape[0];
            const Model& model = self.model();
            const size_t k = model.profiles().size();
            Session::Shape os;
            // The output's shape per image is the same at every profile of a gated model.
            if (model.gate_op() >= 0 && !model.profiles().empty()) {
              const int64_t one[4] = {1, shape[1], shape[2], shape[3]};
              os = self.output_shape(one, 4, ProfileRef::named(0));
            } else {
              os.rank = 2;
            }
            os.dims[0] = n;
            py::array_t<float> out(std::vector<py::ssize_t>(os.dims, os.dims + os.rank));
            py::array_t<int32_t> choices(std::vector<py::ssize_t>{static_cast<py::ssize_t>(n)});
            py::array_t<float> logits(std::vector<py::ssize_t>{static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(k)});
            const float* in = x.data();
            float* dst = out.mutable_data();
            int32_t* ch = choices.mutable_data();
            float* lg = logits.mutable_data();
            const size_t cap = static_cast<size_t>(out.size());
            {
              py::gil_scoped_release release;
              self.run_gated(in, shape.data(), 4, max_profile, dst, cap, nullptr, ch, lg);
            }
            return py::make_tuple(out, choices, logits);
          },
          py::arg("x"), py::arg("max_profile") = -1,
          "Gated run: (output, chosen profile index per image, gate logits [N, profiles]).")
      .def(
          "profile_ops",
          [](Session& self, py::array_t<float, py::array::c_style> x, int32_t index, double multiplier) {
            std::vector<int64_t> shape(x.shape(), x.shape() + x.ndim());
            const float* in = x.data();
            py::gil_scoped_release release;
            return self.profile_ops(in, shape.data(), static_cast<int>(shape.size()), make_ref(index, multiplier));
          },
          py::arg("x"), py::arg("index") = 0, py::arg("multiplier") = 0.0,
          "Run once and return [(op name, seconds)] in execution order.");
}

}  // namespace slimrt::python
