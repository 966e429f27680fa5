// The fused cosine-EM of CREAM (method.md 3.2): z_fg for every pixel after `iterations`
// E-steps, with an M-step between consecutive ones. Shared by the CPU and CUDA kernels.
#pragma once
#include <cmath>

namespace cream {

constexpr float kEps = 1e-6f;

// Responsibility of the foreground component from the two cosines and log-priors:
// softmax over {fg, bg} of beta*cos + log(pi), computed as a stable sigmoid.
inline float responsibility(float cos_fg, float cos_bg, float beta, float log_pi_fg, float log_pi_bg) {
  const float d = beta * (cos_fg - cos_bg) + (log_pi_fg - log_pi_bg);
  return d >= 0.f ? 1.f / (1.f + std::exp(-d)) : std::exp(d) / (1.f + std::exp(d));
}

}  // namespace cream
