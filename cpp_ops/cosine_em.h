// CREAM's re-activation (docs/method.md 3.2-3.4) fused into one op: the EM, the calibration against
// the CAM and the fusion z~ + minmax(CAM). Pieces shared by the CPU and CUDA kernels.
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

// minmax(CAM) of one pixel given the map's minimum and span; a constant map becomes zeros.
CREAM_HOST_DEVICE inline float cam_minmax(float v, float lo, float span) {
  return span > 0.f ? (v - lo) / span : 0.f;
}

// Calibration (3.3): the component started from the foreground embedding stays the foreground
// when its mean responsibility over Omega = {minmax(CAM) >= tau} is at least the other's.
// z_fg_sum = sum over Omega of z_fg, z_bg_sum = sum over Omega of (1 - z_fg).
CREAM_HOST_DEVICE inline bool keep_foreground(float z_fg_sum, float z_bg_sum) { return z_fg_sum >= z_bg_sum; }

// Final re-activation map (3.4) of one pixel: z~ + minmax(CAM).
CREAM_HOST_DEVICE inline float fused_map(float z_fg, bool keep_fg, float cam_n) {
  return (keep_fg ? z_fg : 1.f - z_fg) + cam_n;
}

}  // namespace cream
