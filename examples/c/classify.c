/* Run every profile of a .slim model from C, with no Python involved.
 *
 *   cc classify.c -I$(python -c "import slimrt; print(slimrt.c_include_dir())") \
 *      -L$(dirname $(python -c "import slimrt; print(slimrt.c_library_path())")) -lslimrt \
 *      -Wl,-rpath,$(dirname $(python -c "import slimrt; print(slimrt.c_library_path())")) -o classify
 *   ./classify model.slim
 */
#include <stdio.h>
#include <stdlib.h>

#include "slimrt.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s MODEL.slim\n", argv[0]);
    return 2;
  }
  slimrt_model* model = NULL;
  if (slimrt_model_load(argv[1], &model) != SLIMRT_OK) {
    fprintf(stderr, "load failed: %s\n", slimrt_last_error());
    return 1;
  }
  int64_t shape[4];
  slimrt_model_input_shape(model, shape);
  const size_t n_in = (size_t)(shape[0] * shape[1] * shape[2] * shape[3]);
  float* input = malloc(n_in * sizeof(float));
  for (size_t i = 0; i < n_in; ++i) input[i] = (float)((i * 7919) % 255) / 255.0f - 0.5f;

  slimrt_session* session = NULL;
  if (slimrt_session_create(model, 1, &session) != SLIMRT_OK) {
    fprintf(stderr, "session failed: %s\n", slimrt_last_error());
    return 1;
  }
  int32_t count = 0;
  slimrt_model_profile_count(model, &count);
  printf("slimrt %s: %d profiles\n", slimrt_version(), count);
  for (int32_t p = 0; p < count; ++p) {
    const char* name;
    int64_t macs;
    slimrt_model_profile_info(model, p, &name, &macs, NULL);
    float output[1000];
    int64_t out_shape[4];
    int32_t out_rank = 0;
    if (slimrt_session_run(session, input, shape, 4, p, 0.0f, output, 1000, out_shape, &out_rank) != SLIMRT_OK) {
      fprintf(stderr, "run failed: %s\n", slimrt_last_error());
      return 1;
    }
    int best = 0;
    for (int64_t i = 1; i < out_shape[1]; ++i)
      if (output[i] > output[best]) best = (int)i;
    printf("profile %-8s %10lld MACs  argmax %d  (output %lld values)\n", name, (long long)macs, best,
           (long long)out_shape[1]);
  }
  slimrt_session_free(session);
  slimrt_model_free(model);
  free(input);
  return 0;
}
