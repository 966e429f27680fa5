// Compile check of the CUDA kernels without torch or a GPU (tests/test_fused_op.py runs nvcc on it).
#include "cosine_em_kernels.cuh"

cudaError_t cream_cosine_em_compile_check(const float* x, const float* cam, const float* init, int b, int k, int n,
                                          float* z, float* workspace) {
  return cream_cuda::cosine_em_launch(x, cam, init, b, k, n, 2, 8.f, 0.2f, true, cream::kCamMean, z, workspace,
                                      nullptr);
}
