/* Counts heap allocations made inside slimrt_session_run after a warm-up run
 * of every profile (and, for a model with a gate, inside
 * slimrt_session_run_gated at batch 3 under every cap): the engine promises none. malloc and friends are
 * interposed here (the executable's definitions win over libc's for every
 * library), forwarding to glibc's own entry points. Prints "allocations N". */
#include <stdio.h>
#include <stdlib.h>

#include "slimrt.h"

extern void* __libc_malloc(size_t);
extern void* __libc_calloc(size_t, size_t);
extern void* __libc_realloc(void*, size_t);
extern void* __libc_memalign(size_t, size_t);

static volatile int counting = 0;
static volatile long count = 0;

void* malloc(size_t n) { if (counting) ++count; return __libc_malloc(n); }
void* calloc(size_t a, size_t b) { if (counting) ++count; return __libc_calloc(a, b); }
void* realloc(void* p, size_t n) { if (counting) ++count; return __libc_realloc(p, n); }
void* aligned_alloc(size_t a, size_t n) { if (counting) ++count; return __libc_memalign(a, n); }
int posix_memalign(void** p, size_t a, size_t n) {
  if (counting) ++count;
  *p = __libc_memalign(a, n);
  return *p ? 0 : 12;
}

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  slimrt_model* model = NULL;
  slimrt_session* session = NULL;
  if (slimrt_model_load(argv[1], &model) != SLIMRT_OK) return 1;
  if (slimrt_session_create(model, atoi(argv[2]), &session) != SLIMRT_OK) return 1;
  int64_t shape[4];
  slimrt_model_input_shape(model, shape);
  const size_t n = (size_t)(shape[0] * shape[1] * shape[2] * shape[3]);
  float* x = calloc(n, sizeof(float));
  float* y = calloc(1 << 20, sizeof(float));
  int64_t out_shape[4];
  int32_t out_rank, profiles = 0, gated = 0;
  slimrt_model_profile_count(model, &profiles);
  slimrt_model_has_gate(model, &gated);
  int64_t batch3[4] = {3, shape[1], shape[2], shape[3]};
  float* x3 = calloc(3 * n / (size_t)shape[0], sizeof(float));
  int32_t choices[3];
  for (int round = 0; round < 2; ++round) {
    counting = round == 1;
    for (int32_t cap = -1; gated && cap < profiles; ++cap)
      if (slimrt_session_run_gated(session, x3, batch3, 4, cap, y, 1 << 20, out_shape, &out_rank, choices) !=
          SLIMRT_OK)
        return 1;
    for (int32_t p = 0; p < profiles; ++p)
      if (slimrt_session_run(session, x, shape, 4, p, 0.0f, y, 1 << 20, out_shape, &out_rank) != SLIMRT_OK) return 1;
    /* (a multiplier would give the gate of the test's gated model other than its channels) */
    if (!gated && slimrt_session_run(session, x, shape, 4, SLIMRT_PROFILE_MULTIPLIER, 0.6f, y, 1 << 20, out_shape,
                                     &out_rank) != SLIMRT_OK)
      return 1;
  }
  counting = 0;
  printf("allocations %ld\n", count);
  slimrt_session_free(session);
  slimrt_model_free(model);
  return 0;
}
