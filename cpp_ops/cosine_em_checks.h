// Input checks and preparation of cream::cosine_em shared by the CPU and CUDA bindings (needs torch headers).
#pragma once
#include <torch/extension.h>

#include "cosine_em.h"

namespace cream {

// "[2, 3, 5]" without std::ostream: streaming a number from this library crashed one torch build
// (the extension's own instantiation of ostream::_M_insert<long> met libc10's locale facets;
// bench/results/gpu/crash_backtrace.txt), so messages carry numbers as ready-made strings.
inline std::string shape_text(c10::IntArrayRef sizes) {
  std::string text = "[";
  for (size_t i = 0; i < sizes.size(); ++i) text += (i ? ", " : "") + std::to_string(sizes[i]);
  return text + "]";
}

inline void check_cosine_em_inputs(const torch::Tensor& features, const torch::Tensor& cam,
                                   const torch::Tensor& centroids, int64_t iterations) {
  TORCH_CHECK(features.dim() == 4, "cosine_em: features must be (B,K,h,w), got ", shape_text(features.sizes()));
  TORCH_CHECK(centroids.dim() == 3 && centroids.size(0) == features.size(0) && centroids.size(1) == 2 &&
                  centroids.size(2) == features.size(1),
              "cosine_em: centroids must be (B,2,K) matching features, got ", shape_text(centroids.sizes()));
  TORCH_CHECK(cam.dim() == 3 && cam.size(0) == features.size(0) && cam.size(1) == features.size(2) &&
                  cam.size(2) == features.size(3),
              "cosine_em: cam must be (B,h,w) matching features, got ", shape_text(cam.sizes()));
  TORCH_CHECK(iterations >= 1, "cosine_em: iterations must be >= 1");
}

// The calibration rule's code from its name (the op's `calibration` argument).
inline int calibration_code(c10::string_view name) {
  if (name == c10::string_view("omega")) return kOmega;
  if (name == c10::string_view("cam-mean")) return kCamMean;
  if (name == c10::string_view("none")) return kNone;
  TORCH_CHECK(false, "cosine_em: calibration must be 'omega', 'cam-mean' or 'none', got '", std::string(name), "'");
  return kOmega;
}

// The inputs checked, contiguous float32, with their sizes, and the (B,h,w) output allocated.
struct CosineEmInputs {
  torch::Tensor x, cam, mu, out;
  int64_t b, k, h, w, n;
};

inline CosineEmInputs prepare_cosine_em_inputs(const torch::Tensor& features, const torch::Tensor& cam,
                                               const torch::Tensor& centroids, int64_t iterations) {
  check_cosine_em_inputs(features, cam, centroids, iterations);
  CosineEmInputs in;
  in.x = features.contiguous().to(torch::kFloat);
  in.cam = cam.contiguous().to(torch::kFloat);
  in.mu = centroids.contiguous().to(torch::kFloat);
  in.b = in.x.size(0), in.k = in.x.size(1), in.h = in.x.size(2), in.w = in.x.size(3), in.n = in.h * in.w;
  in.out = torch::empty({in.b, in.h, in.w}, in.x.options());
  return in;
}

}  // namespace cream
