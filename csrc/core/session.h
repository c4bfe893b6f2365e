// A session runs a model: it owns the scratch arena, the thread pool and the
// execution plans. Everything that depends only on the input shape and the
// profile is prepared once; run() then only calls kernels.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "core/model.h"
#include "core/plan.h"
#include "core/threadpool.h"
#include "kernels/kernels.h"

namespace slimrt {

// Which widths a run uses: a named profile, or a uniform multiplier.
struct ProfileRef {
  int32_t index = 0;        // named profile, when multiplier <= 0
  double multiplier = 0.0;  // uniform multiplier in [min_multiplier, 1] when > 0

  static ProfileRef named(int32_t i) { return {i, 0.0}; }
  static ProfileRef uniform(double m) { return {-1, m}; }
};

class Session {
 public:
  Session(std::shared_ptr<const Model> model, int threads);
  ~Session();

  const Model& model() const { return *model_; }
  int threads() const { return pool_.size(); }

  // Output shape: NCHW (rank 4) or [N, F] (rank 2).
  struct Shape {
    int64_t dims[4] = {0, 0, 0, 0};
    int32_t rank = 0;
  };

  // Output shape for this input shape and profile (prepares both).
  Shape output_shape(const int64_t* shape, int rank, const ProfileRef& profile);

  // Runs on an NCHW float32 input. Throws Error(BufferTooSmall) if
  // `capacity` floats cannot hold the output (out_shape is set first).
  // Allocates nothing once this input shape and profile have run before.
  void run(const float* input, const int64_t* shape, int rank, const ProfileRef& profile, float* output,
           size_t capacity, Shape* out_shape);

  // A gated run (the model has a gate op, model.h): runs the ops up to the
  // gate at the shared width, then each image continues at the profile its
  // gate chooses, the first with the largest logit among profiles
  // 0..max_profile (-1: all). Fills choices[i] (room for N) and, unless null,
  // logits[i * K + k] (room for N * K, K = the number of profiles). Images run
  // one by one through plans of batch 1, prepared when first used; the output
  // keeps the batch order. Throws InvalidArgument if the model has no gate,
  // UnknownProfile for a max_profile out of range, BufferTooSmall as run().
  void run_gated(const float* input, const int64_t* shape, int rank, int32_t max_profile, float* output,
                 size_t capacity, Shape* out_shape, int32_t* choices, float* logits);

  // Per-op wall time of one run (for latency analysis): (op name, seconds),
  // in execution order; ops that need no work (a flatten of a 1x1 map) are absent.
  std::vector<std::pair<std::string, double>> profile_ops(const float* input, const int64_t* shape, int rank,
                                                          const ProfileRef& profile);

 private:
  struct Step;
  struct Plan;

  void check_shape(const int64_t* shape, int rank) const;
  void prepare_shape(const int64_t* shape, int rank);
  Plan& plan_for(const ProfileRef& profile);
  std::unique_ptr<Plan> build_plan(const std::vector<int32_t>& widths, int32_t profile_index);
  // The step of an int8 conv or linear (op `index`); marks a fused Add in `done`.
  void plan_int8(Step& s, size_t index, const ShapePlan& sp, const Epilogue* epi, int32_t profile_index,
                 std::vector<bool>& done);
  void execute(const Step& step);
  void feed_input(Plan& plan, const float* input);  // the caller's NCHW input into the plan

  std::shared_ptr<const Model> model_;
  std::mutex mu_;  // a session runs one request at a time, whoever calls it
  ThreadPool pool_;
  int64_t n_ = 0, h_ = 0, w_ = 0;  // prepared input shape (0: none)
  std::vector<int64_t> offsets_;   // arena offset (floats) per tensor
  float* arena_ = nullptr;
  std::vector<float> workspace_;    // kConvWorkspaceFloats per thread
  std::vector<uint8_t> workspace_i8_;  // i8_workspace_ bytes per thread (int8 convs)
  size_t i8_workspace_ = 0;
  int input_uses_ = 0;  // ops reading the model's input (tensor 0)
  std::vector<int32_t> fused_add_;  // per op: the Add its epilogue performs, or -1
  std::vector<float> gate_buf_;     // the gate head's rows per image: hidden, attention, logits
  std::vector<std::unique_ptr<Plan>> named_;                      // per named profile
  std::map<std::vector<int32_t>, std::unique_ptr<Plan>> uniform_;  // other widths
  std::map<double, Plan*> by_multiplier_;                          // multiplier -> plan
};

}  // namespace slimrt
