// The fused cosine-EM of CREAM (method.md 3.2): pieces shared by the CPU and CUDA kernels.
#pragma once
#include <math.h>

#if defined(__CUDACC__)
#define CREAM_HOST_DEVICE __host__ __device__
#else
#define CREAM_HOST_DEVICE
#endif

namespace cream {

constexpr float kEps = 1e-6f;

// Responsibility of the foreground component from the two cosines and log-priors:
// softmax over {fg, bg} of beta*cos + log(pi), computed as a stable sigmoid.
CREAM_HOST_DEVICE inline float responsibility(float cos_fg, float cos_bg, float beta, float log_pi_fg,
                                              float log_pi_bg) {
  const float d = beta * (cos_fg - cos_bg) + (log_pi_fg - log_pi_bg);
  return d >= 0.f ? 1.f / (1.f + expf(-d)) : expf(d) / (1.f + expf(d));
}

}  // namespace cream
