// CUDA binding of cream::cosine_em for the torch extension (kernels in cosine_em_kernels.cuh).
#include <torch/extension.h>
#include <torch/library.h>
#include "cosine_em_checks.h"
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "cosine_em_kernels.cuh"

// features (B,K,h,w), cam (B,h,w), centroids (B,2,K) -> z~ + minmax(CAM) (B,h,w); unit_mean: M-steps
// over L2-normalised features; calibration: "omega", "cam-mean" or "none"
torch::Tensor cosine_em_cuda(const torch::Tensor& features, const torch::Tensor& cam, const torch::Tensor& centroids,
                             int64_t iterations, double beta, double tau, bool unit_mean,
                             c10::string_view calibration_name) {
  TORCH_CHECK(features.is_cuda() && cam.is_cuda() && centroids.is_cuda(),
              "cosine_em (CUDA): tensors must be on a CUDA device");
  const at::cuda::OptionalCUDAGuard guard(device_of(features));  // the tensors' GPU, not the current one
  const int calibration = cream::calibration_code(calibration_name);
  const auto in = cream::prepare_cosine_em_inputs(features, cam, centroids, iterations);
  auto workspace = torch::empty({in.b * (4 * in.k + 3)}, in.x.options());  // one allocation (see cosine_em_launch)
  const cudaError_t err = cream_cuda::cosine_em_launch(
      in.x.data_ptr<float>(), in.cam.data_ptr<float>(), in.mu.data_ptr<float>(), int(in.b), int(in.k), int(in.n),
      int(iterations), float(beta), float(tau), unit_mean, calibration, in.out.data_ptr<float>(),
      workspace.data_ptr<float>(), at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "cosine_em (CUDA) failed: ", cudaGetErrorString(err));
  return in.out;
}

// The schema is defined in Python (cream_rt/model/fused.py); this library adds the CUDA kernel.
TORCH_LIBRARY_IMPL(cream, CUDA, m) { m.impl("cosine_em", &cosine_em_cuda); }
