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

// Calibration rules (3.3), as passed to the kernels; the op takes their names ("omega", ...).
enum Calibration : int { kOmega = 0, kCamMean = 1, kNone = 2 };

// Per-image sums over the feature cells that the calibration needs (one pass after the EM).
// omega: fg_in / bg_in = sum over Omega = {minmax(CAM) >= tau} of z_fg / (1 - z_fg);
// cam-mean: fg_cam / bg_cam = sum of z_fg * minmax(CAM) / (1 - z_fg) * minmax(CAM), and
// fg / bg = sum of z_fg / (1 - z_fg).
struct CalibrationSums {
  float fg_in, bg_in, fg_cam, bg_cam, fg, bg;
};

// Adds one cell (responsibility z_fg, minmax(CAM) cam_n) to the sums.
CREAM_HOST_DEVICE inline void add_cell(CalibrationSums& s, float z_fg, float cam_n, float tau) {
  const float z_bg = 1.f - z_fg;
  if (cam_n >= tau) {
    s.fg_in += z_fg;
    s.bg_in += z_bg;
  }
  s.fg_cam += z_fg * cam_n;
  s.bg_cam += z_bg * cam_n;
  s.fg += z_fg;
  s.bg += z_bg;
}

// Whether the component started from the foreground embedding stays the foreground:
// omega (the paper): its mean responsibility over Omega is at least the other's;
// cam-mean: its responsibility-weighted mean of minmax(CAM) is at least the other's;
// none: always.
CREAM_HOST_DEVICE inline bool keep_foreground(const CalibrationSums& s, int calibration) {
  if (calibration == kNone) return true;
  if (calibration == kCamMean) return s.fg_cam / (s.fg + kEps) >= s.bg_cam / (s.bg + kEps);
  return s.fg_in >= s.bg_in;
}

// Final re-activation map (3.4) of one pixel: z~ + minmax(CAM).
CREAM_HOST_DEVICE inline float fused_map(float z_fg, bool keep_fg, float cam_n) {
  return (keep_fg ? z_fg : 1.f - z_fg) + cam_n;
}

}  // namespace cream
