/*
 * slimrt.h: the C ABI of slimrt, an inference runtime for CNNs whose width
 * changes per request.
 *
 * A model (.slim file, see csrc/core/model.h for the format) holds one copy of
 * the weights with every layer's channels sorted by importance; a *profile*
 * chooses how many channels of each layer run. Any profile runs from the same
 * weights by prefix slicing, so switching profile between runs costs nothing.
 *
 * Objects and ownership
 *   slimrt_model    immutable once loaded; may be shared by any number of
 *                   sessions on any threads. Free it after its sessions.
 *   slimrt_session  owns a scratch arena and a thread pool; use one session
 *                   from one thread at a time.
 *   Handles are freed with their _free function, once. As with free(),
 *   freeing a handle twice or using it after it was freed is undefined
 *   behaviour: the library cannot detect it and does not try.
 *
 * Errors
 *   Every fallible call returns a slimrt_status. On failure,
 *   slimrt_last_error() returns a message for the calling thread, valid until
 *   that thread's next slimrt call. No C++ exception crosses this boundary,
 *   and a failed call changes nothing (out-parameters are left untouched).
 *
 * Typical use
 *   slimrt_model* m;  slimrt_session* s;
 *   if (slimrt_model_load("model.slim", &m) != SLIMRT_OK) puts(slimrt_last_error());
 *   slimrt_session_create(m, 2, &s);
 *   int64_t shape[4] = {1, 3, 224, 224};
 *   size_t n;  int64_t out_shape[4];  int out_rank;
 *   slimrt_session_run(s, x, shape, 4, SLIMRT_PROFILE_INDEX(0), 0.0f,
 *                      y, y_capacity, out_shape, &out_rank);
 *   slimrt_session_free(s);  slimrt_model_free(m);
 */
#ifndef SLIMRT_H
#define SLIMRT_H

#include <stddef.h>
#include <stdint.h>

#define SLIMRT_VERSION_MAJOR 0
#define SLIMRT_VERSION_MINOR 1
#define SLIMRT_VERSION_PATCH 0

#if defined(_WIN32)
#define SLIMRT_API __declspec(dllexport)
#else
#define SLIMRT_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum slimrt_status {
  SLIMRT_OK = 0,
  SLIMRT_INVALID_ARGUMENT = 1, /* a null pointer, a bad shape, an unknown profile */
  SLIMRT_INVALID_MODEL = 2,    /* the file is not a valid .slim model */
  SLIMRT_IO_ERROR = 3,         /* the file could not be opened or read */
  SLIMRT_BUFFER_TOO_SMALL = 4, /* the output buffer cannot hold the result */
  SLIMRT_INTERNAL_ERROR = 5    /* out of memory or a bug; the message says which */
} slimrt_status;

typedef struct slimrt_model slimrt_model;
typedef struct slimrt_session slimrt_session;

/* "0.1.0": the library version. Never fails; the string is static. */
SLIMRT_API const char* slimrt_version(void);

/* The last error message of the calling thread ("" if none). */
SLIMRT_API const char* slimrt_last_error(void);

/* Load a model from a .slim file (memory-mapped). Only a regular file is
 * read: a directory, FIFO or device gives SLIMRT_IO_ERROR at once (opening
 * never waits for a FIFO's writer). */
SLIMRT_API slimrt_status slimrt_model_load(const char* path, slimrt_model** out_model);

/* Load a model from a buffer holding a .slim file; the bytes are copied. */
SLIMRT_API slimrt_status slimrt_model_load_buffer(const void* data, size_t size,
                                                  slimrt_model** out_model);

/* Free a model. Accepts NULL. */
SLIMRT_API void slimrt_model_free(slimrt_model* model);

/* Number of named profiles, ordered cheapest first. */
SLIMRT_API slimrt_status slimrt_model_profile_count(const slimrt_model* model, int32_t* out_count);

/* Describe profile `index`: its name (owned by the model, valid while it lives),
 * its multiply-accumulates per sample at the default input shape, and its
 * parameter count. Any out-pointer may be NULL. */
SLIMRT_API slimrt_status slimrt_model_profile_info(const slimrt_model* model, int32_t index,
                                                   const char** out_name, int64_t* out_macs,
                                                   int64_t* out_params);

/* The default input shape (NCHW) of the model. */
SLIMRT_API slimrt_status slimrt_model_input_shape(const slimrt_model* model, int64_t out_shape[4]);

/* Whether the model has a gate op (csrc/core/model.h), which picks the
 * profile of each image itself (slimrt_session_run_gated): 1 or 0. */
SLIMRT_API slimrt_status slimrt_model_has_gate(const slimrt_model* model, int32_t* out_has_gate);

/* Create a session running on `threads` threads (>= 1): the caller's thread
 * and threads - 1 workers of the session's own. Between runs the workers spin
 * for half a millisecond, then sleep; a run wakes them first thing. On Linux
 * the workers are kept off the CPU the calling thread runs on (their affinity
 * is the caller's minus that CPU), so a woken worker never shares a core with
 * the caller for a whole run. */
SLIMRT_API slimrt_status slimrt_session_create(const slimrt_model* model, int32_t threads,
                                               slimrt_session** out_session);

/* Free a session. Accepts NULL. */
SLIMRT_API void slimrt_session_free(slimrt_session* session);

/* Which profile a run uses: a named profile by index (>= 0), or a uniform
 * width multiplier (profile_index = SLIMRT_PROFILE_MULTIPLIER, multiplier in
 * [min_multiplier, 1]). */
#define SLIMRT_PROFILE_MULTIPLIER (-1)

/* Run the model on float32 NCHW input `input` of shape input_shape[0..rank).
 * rank must be 4; for any other rank the call fails with
 * SLIMRT_INVALID_ARGUMENT without reading input_shape (no call reads more than
 * 4 of its values). The output (float32, NCHW or [N, F]) is written to
 * `output`, which holds `output_capacity` floats; its shape goes to out_shape
 * (room for 4) and its rank to out_rank. On SLIMRT_BUFFER_TOO_SMALL, out_shape
 * and out_rank are still set so the caller can size the buffer. */
SLIMRT_API slimrt_status slimrt_session_run(slimrt_session* session, const float* input,
                                            const int64_t* input_shape, int32_t rank,
                                            int32_t profile_index, float multiplier, float* output,
                                            size_t output_capacity, int64_t* out_shape,
                                            int32_t* out_rank);

/* A gated run of a model with a gate op: the layers up to the gate run once,
 * then each image continues at the profile its gate chooses: the first of the
 * largest logits among profiles 0..max_profile (max_profile = -1: all
 * profiles; other values outside 0..count-1 fail with
 * SLIMRT_INVALID_ARGUMENT). The chosen profile index of image i goes to
 * out_choices[i] (room for input_shape[0] values). Images run one by one
 * through plans of batch 1; the output keeps the batch order and has the
 * same shape at every profile. Other arguments as slimrt_session_run; a model
 * without a gate gives SLIMRT_INVALID_ARGUMENT. */
SLIMRT_API slimrt_status slimrt_session_run_gated(slimrt_session* session, const float* input,
                                                  const int64_t* input_shape, int32_t rank,
                                                  int32_t max_profile, float* output,
                                                  size_t output_capacity, int64_t* out_shape,
                                                  int32_t* out_rank, int32_t* out_choices);

#ifdef __cplusplus
}
#endif

#endif /* SLIMRT_H */
