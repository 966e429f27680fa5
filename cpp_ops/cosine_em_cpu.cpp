// CPU kernel of cream::cosine_em (EM, calibration, fusion). One pass over the features per EM step: for a tile of
// pixels, all K channels are read once to get the norms and both dot products (so z), then
// the same tile (now in cache) feeds the M-step sums sum_i z_i x_i and sum_i x_i. Images run
// in parallel; a single image splits its tiles across threads with per-thread partial sums.
#include <torch/extension.h>
#include <torch/library.h>
#include "cosine_em_checks.h"
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cosine_em.h"

namespace {

constexpr int64_t kMaxTile = 256;  // pixels per tile at most; tiles are balanced over the image

// Channel rows of a tile are short (a few hundred floats), too short for the hardware
// prefetcher to ramp up: fetch the row kPrefetchRows ahead, one cache line at a time.
constexpr int64_t kPrefetchRows = 4;

inline void prefetch_row(const float* row, int64_t len) {
  for (int64_t i = 0; i < len; i += 16) __builtin_prefetch(row + i, 0, 3);
}

// Balanced tile width (a multiple of 16 floats) so that a 14x14 or 28x28 map splits evenly.
int64_t tile_width(int64_t n) {
  const int64_t tiles = (n + kMaxTile - 1) / kMaxTile;
  return std::min(kMaxTile, ((n + tiles - 1) / tiles + 15) / 16 * 16);
}

struct Centroid {
  std::vector<float> fg, bg;  // unit-normalised directions
  float log_pi_fg, log_pi_bg;
};

Centroid normalise(const float* mu_fg, const float* mu_bg, int64_t k, float pi_fg) {
  Centroid c{std::vector<float>(k), std::vector<float>(k), 0.f, 0.f};
  double nf = 0, nb = 0;
  for (int64_t j = 0; j < k; ++j) { nf += double(mu_fg[j]) * mu_fg[j]; nb += double(mu_bg[j]) * mu_bg[j]; }
  const float inv_f = 1.f / (float(std::sqrt(nf)) + cream::kEps), inv_b = 1.f / (float(std::sqrt(nb)) + cream::kEps);
  for (int64_t j = 0; j < k; ++j) { c.fg[j] = mu_fg[j] * inv_f; c.bg[j] = mu_bg[j] * inv_b; }
  c.log_pi_fg = std::log(std::max(pi_fg, cream::kEps));
  c.log_pi_bg = std::log(std::max(1.f - pi_fg, cream::kEps));
  return c;
}

// Dot products of the `len` pixels from t0 with both unit centroids over all K channel rows
// (one read of the tile), plus the squared norms when kNorms (first EM step only).
template <bool kNorms>
void accumulate_dots(const float* x, int64_t k, int64_t n, int64_t t0, int64_t len, const Centroid& c,
                     float* dot_f, float* dot_b, float* norm) {
  std::fill(dot_f, dot_f + len, 0.f);
  std::fill(dot_b, dot_b + len, 0.f);
  if (kNorms) std::fill(norm, norm + len, 0.f);
  for (int64_t j = 0; j < k; ++j) {
    const float* row = x + j * n + t0;
    if (j + kPrefetchRows < k) prefetch_row(row + kPrefetchRows * n, len);
    const float mf = c.fg[j], mb = c.bg[j];
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      const float v = row[i];
      dot_f[i] += v * mf;
      dot_b[i] += v * mb;
      if (kNorms) norm[i] += v * v;
    }
  }
}

// E-step over pixels [p0, p1) of one image (features x: K rows of n floats); writes z and,
// if sums != nullptr, adds sum_i z_i x_i to sums[0..K) and sum_i x_i to sums[K..2K), and
// sum_i z_i to *mass; with unit_mean the sums are of the L2-normalised x_i / (|x_i| + eps).
// inv_norm[i] = 1/(|x_i| + eps) is computed on the first step (have_norms false) and reused
// afterwards.
void e_step(const float* x, int64_t k, int64_t n, int64_t p0, int64_t p1, const Centroid& c, float beta,
            float* z, float* sums, double* mass, float* inv_norm, bool have_norms, bool unit_mean) {
  alignas(64) float dot_f[kMaxTile], dot_b[kMaxTile], norm[kMaxTile], w_z[kMaxTile], w_1[kMaxTile];
  const int64_t tile = tile_width(n);
  for (int64_t t0 = p0; t0 < p1; t0 += tile) {
    const int64_t len = std::min(tile, p1 - t0);
    if (have_norms) {
      accumulate_dots<false>(x, k, n, t0, len, c, dot_f, dot_b, norm);
    } else {
      accumulate_dots<true>(x, k, n, t0, len, c, dot_f, dot_b, norm);
      for (int64_t i = 0; i < len; ++i) inv_norm[t0 + i] = 1.f / (std::sqrt(norm[i]) + cream::kEps);
    }
    for (int64_t i = 0; i < len; ++i) {
      const float inv = inv_norm[t0 + i];
      z[t0 + i] = cream::responsibility(dot_f[i] * inv, dot_b[i] * inv, beta, c.log_pi_fg, c.log_pi_bg);
    }
    if (sums == nullptr) continue;
    double m = 0;
    for (int64_t i = 0; i < len; ++i) {
      m += z[t0 + i];
      w_1[i] = unit_mean ? inv_norm[t0 + i] : 1.f;  // per-pixel weight of the M-step sums
      w_z[i] = z[t0 + i] * w_1[i];
    }
    *mass += m;
    for (int64_t j = 0; j < k; ++j) {
      const float* row = x + j * n + t0;
      float sz = 0.f, s = 0.f;
#pragma omp simd reduction(+ : sz, s)
      for (int64_t i = 0; i < len; ++i) {
        sz += w_z[i] * row[i];
        s += w_1[i] * row[i];
      }
      sums[j] += sz;
      sums[k + j] += s;
    }
  }
}

// All EM steps of one image; `split` spreads the tiles over threads (single-image batches).
void em_image(const float* x, const float* mu, int64_t k, int64_t n, int64_t iterations, float beta, float* z,
              bool split, bool unit_mean) {
  Centroid c = normalise(mu, mu + k, k, 0.5f);
  std::vector<float> inv_norm(n);
  const int64_t tile = tile_width(n);
  split = split && n > tile;  // one tile: threads would only add overhead
  for (int64_t step = 0; step < iterations; ++step) {
    const bool last = step == iterations - 1;
    const bool have_norms = step > 0;
    if (last) {
      if (split) {
        at::parallel_for(0, n, tile, [&](int64_t a, int64_t b) {
          e_step(x, k, n, a, b, c, beta, z, nullptr, nullptr, inv_norm.data(), have_norms, unit_mean);
        });
      } else {
        e_step(x, k, n, 0, n, c, beta, z, nullptr, nullptr, inv_norm.data(), have_norms, unit_mean);
      }
      break;
    }
    std::vector<float> sums(2 * k, 0.f);
    double mass = 0;
    if (split) {
      const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (n + tile - 1) / tile));
      std::vector<std::vector<float>> partial(chunks, std::vector<float>(2 * k, 0.f));
      std::vector<double> partial_mass(chunks, 0.0);
      const int64_t per = ((n + chunks - 1) / chunks + tile - 1) / tile * tile;
      at::parallel_for(0, chunks, 1, [&](int64_t a, int64_t b) {
        for (int64_t q = a; q < b; ++q) {
          const int64_t lo = q * per, hi = std::min(n, lo + per);
          if (lo < hi) e_step(x, k, n, lo, hi, c, beta, z, partial[q].data(), &partial_mass[q], inv_norm.data(), have_norms,
                                unit_mean);
        }
      });
      for (int64_t q = 0; q < chunks; ++q) {
        mass += partial_mass[q];
        for (int64_t j = 0; j < 2 * k; ++j) sums[j] += partial[q][j];
      }
    } else {
      e_step(x, k, n, 0, n, c, beta, z, sums.data(), &mass, inv_norm.data(), have_norms, unit_mean);
    }
    // M-step: mu_fg = sum z x / (sum z + eps); mu_bg = (sum x - sum z x) / (sum (1-z) + eps)
    // (x L2-normalised under unit_mean)
    const float mass_fg = float(mass), mass_bg = float(double(n) - mass);
    std::vector<float> mu_fg(k), mu_bg(k);
    for (int64_t j = 0; j < k; ++j) {
      mu_fg[j] = sums[j] / (mass_fg + cream::kEps);
      mu_bg[j] = (sums[k + j] - sums[j]) / (mass_bg + cream::kEps);
    }
    c = normalise(mu_fg.data(), mu_bg.data(), k, mass_fg / float(n));
    c.log_pi_bg = std::log(std::max(mass_bg / float(n), cream::kEps));
  }
}

// Calibration against the CAM and fusion (docs/method.md 3.3-3.4), in place: z_fg -> z~ + minmax(CAM).
void calibrate_image(const float* cam, int64_t n, float tau, int calibration, float* z) {
  float lo = cam[0], hi = cam[0];
  for (int64_t i = 1; i < n; ++i) { lo = std::min(lo, cam[i]); hi = std::max(hi, cam[i]); }
  const float span = hi - lo;
  cream::CalibrationSums sums{0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (int64_t i = 0; i < n; ++i) cream::add_cell(sums, z[i], cream::cam_minmax(cam[i], lo, span), tau);
  const bool keep = cream::keep_foreground(sums, calibration);
  for (int64_t i = 0; i < n; ++i) z[i] = cream::fused_map(z[i], keep, cream::cam_minmax(cam[i], lo, span));
}

}  // namespace

// features (B,K,h,w), cam (B,h,w), centroids (B,2,K), float32 -> z~ + minmax(CAM) (B,h,w);
// unit_mean: the M-step averages L2-normalised features (feature_mean "unit"); calibration:
// "omega", "cam-mean" or "none" (docs/method.md 3.3)
torch::Tensor cosine_em_cpu(const torch::Tensor& features, const torch::Tensor& cam, const torch::Tensor& centroids,
                            int64_t iterations, double beta, double tau, bool unit_mean,
                            c10::string_view calibration_name) {
  const auto in = cream::prepare_cosine_em_inputs(features, cam, centroids, iterations);
  const int calibration = cream::calibration_code(calibration_name);
  const int64_t b = in.b, k = in.k, n = in.n;
  const float* xp = in.x.data_ptr<float>();
  const float* mp = in.mu.data_ptr<float>();
  const float* cp = in.cam.data_ptr<float>();
  float* zp = in.out.data_ptr<float>();
  const bool split = b < at::get_num_threads();
  if (split) {
    for (int64_t i = 0; i < b; ++i) {
      em_image(xp + i * k * n, mp + i * 2 * k, k, n, iterations, float(beta), zp + i * n, true, unit_mean);
      calibrate_image(cp + i * n, n, float(tau), calibration, zp + i * n);
    }
  } else {
    at::parallel_for(0, b, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        em_image(xp + i * k * n, mp + i * 2 * k, k, n, iterations, float(beta), zp + i * n, false, unit_mean);
        calibrate_image(cp + i * n, n, float(tau), calibration, zp + i * n);
      }
    });
  }
  return in.out;
}

// The schema is defined in Python (cream_rt/model/fused.py); this library adds the CPU kernel.
TORCH_LIBRARY_IMPL(cream, CPU, m) { m.impl("cosine_em", &cosine_em_cpu); }
