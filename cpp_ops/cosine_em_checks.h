// Input checks of cream::cosine_em shared by the CPU and CUDA bindings (needs torch headers).
#pragma once
#include <torch/extension.h>

namespace cream {

inline void check_cosine_em_inputs(const torch::Tensor& features, const torch::Tensor& cam,
                                   const torch::Tensor& centroids, int64_t iterations) {
  TORCH_CHECK(features.dim() == 4, "cosine_em: features must be (B,K,h,w), got ", features.sizes());
  TORCH_CHECK(centroids.dim() == 3 && centroids.size(0) == features.size(0) && centroids.size(1) == 2 &&
                  centroids.size(2) == features.size(1),
              "cosine_em: centroids must be (B,2,K) matching features, got ", centroids.sizes());
  TORCH_CHECK(cam.dim() == 3 && cam.size(0) == features.size(0) && cam.size(1) == features.size(2) &&
                  cam.size(2) == features.size(3),
              "cosine_em: cam must be (B,h,w) matching features, got ", cam.sizes());
  TORCH_CHECK(iterations >= 1, "cosine_em: iterations must be >= 1");
}

}  // namespace cream
