// CUDA binding of cream::cosine_em for the torch extension (kernels in cosine_em_kernels.cuh).
#include <torch/extension.h>
#include <torch/library.h>
#include "cosine_em_checks.h"
#include <ATen/cuda/CUDAContext.h>

#include "cosine_em_kernels.cuh"

// features (B,K,h,w), cam (B,h,w), centroids (B,2,K) -> z~ + minmax(CAM) (B,h,w)
torch::Tensor cosine_em_cuda(const torch::Tensor& features, const torch::Tensor& cam, const torch::Tensor& centroids,
                             int64_t iterations, double beta, double tau) {
  TORCH_CHECK(features.is_cuda() && cam.is_cuda() && centroids.is_cuda(),
              "cosine_em (CUDA): tensors must be on a CUDA device");
  cream::check_cosine_em_inputs(features, cam, centroids, iterations);
  auto x = features.contiguous().to(torch::kFloat);
  auto c = cam.contiguous().to(torch::kFloat);
  auto mu = centroids.contiguous().to(torch::kFloat);
  const int64_t b = x.size(0), k = x.size(1), h = x.size(2), w = x.size(3), n = h * w;
  auto z = torch::empty({b, h, w}, x.options());
  auto unit = torch::empty({b, 2, k}, x.options());
  auto logpi = torch::empty({b, 2}, x.options());
  auto sums = torch::empty({b, 2, k}, x.options());
  auto mass = torch::empty({b}, x.options());
  const cudaError_t err = cream_cuda::cosine_em_launch(
      x.data_ptr<float>(), c.data_ptr<float>(), mu.data_ptr<float>(), int(b), int(k), int(n), int(iterations),
      float(beta), float(tau), z.data_ptr<float>(), unit.data_ptr<float>(), logpi.data_ptr<float>(), sums.data_ptr<float>(),
      mass.data_ptr<float>(), at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "cosine_em (CUDA) failed: ", cudaGetErrorString(err));
  return z;
}

// The schema is defined in Python (cream_rt/model/fused.py); this library adds the CUDA kernel.
TORCH_LIBRARY_IMPL(cream, CUDA, m) { m.impl("cosine_em", &cosine_em_cuda); }
