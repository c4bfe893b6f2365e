// The C ABI (slimrt.h): thin shims over the core. Exceptions stop here and
// become a status code plus a per-thread message.
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>

#include "core/error.h"
#include "core/model.h"
#include "core/session.h"
#include "slimrt.h"

struct slimrt_model {
  std::shared_ptr<const slimrt::Model> model;
};

struct slimrt_session {
  std::unique_ptr<slimrt::Session> session;
};

namespace {

thread_local std::string g_last_error;

slimrt_status fail(slimrt_status status, const char* message) {
  g_last_error = message;
  return status;
}

template <typename F>
slimrt_status guarded(F&& body) {
  try {
    g_last_error.clear();
    body();
    return SLIMRT_OK;
  } catch (const slimrt::Error& e) {
    switch (e.kind()) {
      case slimrt::ErrorKind::InvalidModel: return fail(SLIMRT_INVALID_MODEL, e.what());
      case slimrt::ErrorKind::Io: return fail(SLIMRT_IO_ERROR, e.what());
      case slimrt::ErrorKind::BufferTooSmall: return fail(SLIMRT_BUFFER_TOO_SMALL, e.what());
      case slimrt::ErrorKind::InvalidArgument:
      case slimrt::ErrorKind::UnknownProfile: return fail(SLIMRT_INVALID_ARGUMENT, e.what());
    }
    return fail(SLIMRT_INTERNAL_ERROR, e.what());
  } catch (const std::bad_alloc&) {
    return fail(SLIMRT_INTERNAL_ERROR, "out of memory");
  } catch (const std::exception& e) {
    return fail(SLIMRT_INTERNAL_ERROR, e.what());
  } catch (...) {
    return fail(SLIMRT_INTERNAL_ERROR, "unknown error");
  }
}

#define SLIMRT_STR2(x) #x
#define SLIMRT_STR(x) SLIMRT_STR2(x)

}  // namespace

extern "C" {

const char* slimrt_version(void) {
  return SLIMRT_STR(SLIMRT_VERSION_MAJOR) "." SLIMRT_STR(SLIMRT_VERSION_MINOR) "." SLIMRT_STR(SLIMRT_VERSION_PATCH);
}

const char* slimrt_last_error(void) { return g_last_error.c_str(); }

slimrt_status slimrt_model_load(const char* path, slimrt_model** out_model) {
  if (!path || !out_model) return fail(SLIMRT_INVALID_ARGUMENT, "slimrt_model_load: path and out_model must not be NULL");
  return guarded([&] {
    auto m = std::make_unique<slimrt_model>();
    m->model = slimrt::Model::load_file(path);
    *out_model = m.release();
  });
}

slimrt_status slimrt_model_load_buffer(const void* data, size_t size, slimrt_model** out_model) {
  if (!data || !out_model)
    return fail(SLIMRT_INVALID_ARGUMENT, "slimrt_model_load_buffer: data and out_model must not be NULL");
  return guarded([&] {
    auto m = std::make_unique<slimrt_model>();
    m->model = slimrt::Model::load_buffer(data, size);
    *out_model = m.release();
  });
}

void slimrt_model_free(slimrt_model* model) { delete model; }

slimrt_status slimrt_model_profile_count(const slimrt_model* model, int32_t* out_count) {
  if (!model || !out_count) return fail(SLIMRT_INVALID_ARGUMENT, "slimrt_model_profile_count: NULL argument");
  *out_count = static_cast<int32_t>(model->model->profiles().size());
  return SLIMRT_OK;
}

slimrt_status slimrt_model_profile_info(const slimrt_model* model, int32_t index, const char** out_name,
                                        int64_t* out_macs, int64_t* out_params) {
  if (!model) return fail(SLIMRT_INVALID_ARGUMENT, "slimrt_model_profile_info: model is NULL");
  const auto& profiles = model->model->profiles();
  if (index < 0 || static_cast<size_t>(index) >= profiles.size())
    return fail(SLIMRT_INVALID_ARGUMENT, ("profile index " + std::to_string(index) + " is out of range (model has " +
                                          std::to_string(profiles.size()) + " profiles)")
                                             .c_str());
  const auto& p = profiles[index];
  if (out_name) *out_name = p.name.c_str();
  if (out_macs) *out_macs = p.macs;
  if (out_params) *out_params = p.params;
  return SLIMRT_OK;
}

slimrt_status slimrt_model_input_shape(const slimrt_model* model, int64_t out_shape[4]) {
  if (!model || !out_shape) return fail(SLIMRT_INVALID_ARGUMENT, "slimrt_model_input_shape: NULL argument");
  std::memcpy(out_shape, model->model->input_shape(), 4 * sizeof(int64_t));
  return SLIMRT_OK;
}

slimrt_status slimrt_model_has_gate(const slimrt_model* model, int32_t* out_has_gate) {
  if (!model || !out_has_gate) return fail(SLIMRT_INVALID_ARGUMENT, "slimrt_model_has_gate: NULL argument");
  *out_has_gate = model->model->gate_op() >= 0 ? 1 : 0;
  return SLIMRT_OK;
}

slimrt_status slimrt_session_create(const slimrt_model* model, int32_t threads, slimrt_session** out_session) {
  if (!model || !out_session) return fail(SLIMRT_INVALID_ARGUMENT, "slimrt_session_create: NULL argument");
  return guarded([&] {
    auto s = std::make_unique<slimrt_session>();
    s->session = std::make_unique<slimrt::Session>(model->model, threads);
    *out_session = s.release();
  });
}

void slimrt_session_free(slimrt_session* session) { delete session; }

slimrt_status slimrt_session_run(slimrt_session* session, const float* input, const int64_t* input_shape,
                                 int32_t rank, int32_t profile_index, float multiplier, float* output,
                                 size_t output_capacity, int64_t* out_shape, int32_t* out_rank) {
  if (!session || !input || !input_shape)
    return fail(SLIMRT_INVALID_ARGUMENT, "slimrt_session_run: session, input and input_shape must not be NULL");
  if (profile_index < SLIMRT_PROFILE_MULTIPLIER)
    return fail(SLIMRT_INVALID_ARGUMENT, "slimrt_session_run: profile_index must be >= 0 or SLIMRT_PROFILE_MULTIPLIER");
  const slimrt::ProfileRef ref = profile_index == SLIMRT_PROFILE_MULTIPLIER
                                     ? slimrt::ProfileRef::uniform(multiplier > 0.0f ? multiplier : -1.0)
                                     : slimrt::ProfileRef::named(profile_index);
  if (profile_index == SLIMRT_PROFILE_MULTIPLIER && !(multiplier > 0.0f))
    return fail(SLIMRT_INVALID_ARGUMENT, "slimrt_session_run: multiplier must be > 0");
  slimrt::Session::Shape shape;
  const slimrt_status st = guarded([&] {
    session->session->run(input, input_shape, rank, ref, output, output_capacity, &shape);
  });
  if ((st == SLIMRT_OK || st == SLIMRT_BUFFER_TOO_SMALL) && shape.rank > 0) {
    if (out_shape) std::memcpy(out_shape, shape.dims, static_cast<size_t>(shape.rank) * sizeof(int64_t));
    if (out_rank) *out_rank = shape.rank;
  }
  return st;
}

slimrt_status slimrt_session_run_gated(slimrt_session* session, const float* input, const int64_t* input_shape,
                                       int32_t rank, int32_t max_profile, float* output, size_t output_capacity,
                                       int64_t* out_shape, int32_t* out_rank, int32_t* out_choices) {
  if (!session || !input || !input_shape || !out_choices)
    return fail(SLIMRT_INVALID_ARGUMENT,
                "slimrt_session_run_gated: session, input, input_shape and out_choices must not be NULL");
  slimrt::Session::Shape shape;
  const slimrt_status st = guarded([&] {
    session->session->run_gated(input, input_shape, rank, max_profile, output, output_capacity, &shape, out_choices,
                                nullptr);
  });
  if ((st == SLIMRT_OK || st == SLIMRT_BUFFER_TOO_SMALL) && shape.rank > 0) {
    if (out_shape) std::memcpy(out_shape, shape.dims, static_cast<size_t>(shape.rank) * sizeof(int64_t));
    if (out_rank) *out_rank = shape.rank;
  }
  return st;
}

}  // extern "C"
