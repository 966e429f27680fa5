// CUDA kernels of cream::cosine_em, free of torch so that nvcc compiles them anywhere.
// Per EM step one kernel reads the features once for the E-step of a 32-pixel tile and, from
// the same (L2-resident) tile, accumulates the M-step sums with warp reductions + atomics.
// A last small kernel calibrates z_fg against the CAM and adds minmax(CAM), in place.
#pragma once
#include <cuda_runtime.h>

#include "cosine_em.h"

namespace cream_cuda {

using cream::kEps;
using cream::responsibility;
constexpr int kTilePixels = 32;  // threadIdx.x: one pixel per lane (coalesced channel rows)
constexpr int kChannelGroups = 8;  // threadIdx.y: channels split across 8 warps

__device__ inline float block_sum(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.f;
  if (threadIdx.x == 0) {
    for (int w = 0; w < (blockDim.x + 31) / 32; ++w) total += scratch[w];
    scratch[0] = total;
  }
  __syncthreads();
  total = scratch[0];
  __syncthreads();
  return total;
}

template <typename Op>
__device__ inline float block_reduce(float v, float* scratch, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = scratch[0];
    for (int w = 1; w < (blockDim.x + 31) / 32; ++w) total = op(total, scratch[w]);
    scratch[0] = total;
  }
  __syncthreads();
  const float total = scratch[0];
  __syncthreads();
  return total;
}

struct MinOp { __device__ float operator()(float a, float b) const { return fminf(a, b); } };
struct MaxOp { __device__ float operator()(float a, float b) const { return fmaxf(a, b); } };

// One block per image (blockDim a multiple of 32): z_fg (B,n) -> z~ + minmax(CAM), in place;
// calibration: cream::kOmega, kCamMean or kNone.
__global__ void calibrate_kernel(const float* __restrict__ cam, int n, float tau, int calibration,
                                 float* __restrict__ z) {
  __shared__ float scratch[32];
  const float* c = cam + size_t(blockIdx.x) * n;
  float* zb = z + size_t(blockIdx.x) * n;
  float lo = INFINITY, hi = -INFINITY;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    lo = fminf(lo, c[i]);
    hi = fmaxf(hi, c[i]);
  }
  lo = block_reduce(lo, scratch, MinOp());
  hi = block_reduce(hi, scratch, MaxOp());
  const float span = hi - lo;
  cream::CalibrationSums s{0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (int i = threadIdx.x; i < n; i += blockDim.x) cream::add_cell(s, zb[i], cream::cam_minmax(c[i], lo, span), tau);
  s.fg_in = block_sum(s.fg_in, scratch);
  s.bg_in = block_sum(s.bg_in, scratch);
  s.fg_cam = block_sum(s.fg_cam, scratch);
  s.bg_cam = block_sum(s.bg_cam, scratch);
  s.fg = block_sum(s.fg, scratch);
  s.bg = block_sum(s.bg, scratch);
  const bool keep = cream::keep_foreground(s, calibration);
  for (int i = threadIdx.x; i < n; i += blockDim.x) zb[i] = cream::fused_map(zb[i], keep, cream::cam_minmax(c[i], lo, span));
}

// One block per image: centroids from the M-step sums (or the initial centroids when `sums`
// is null), normalised, plus log-priors. cent: (B,2,K) in, unit (B,2,K) out; logpi: (B,2).
__global__ void centroids_kernel(const float* __restrict__ init, const float* __restrict__ sums,
                                 const float* __restrict__ mass, int k, int n, float* __restrict__ unit,
                                 float* __restrict__ logpi) {
  __shared__ float scratch[32];
  const int b = blockIdx.x;
  float mass_fg = 0.5f * n, mass_bg = 0.5f * n;
  if (sums != nullptr) {
    mass_fg = mass[b];
    mass_bg = float(n) - mass_fg;
  }
  float nf = 0.f, nb = 0.f;
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    float f, g;
    if (sums == nullptr) {
      f = init[(b * 2) * k + j];
      g = init[(b * 2 + 1) * k + j];
    } else {
      const float sz = sums[(b * 2) * k + j], s = sums[(b * 2 + 1) * k + j];
      f = sz / (mass_fg + kEps);
      g = (s - sz) / (mass_bg + kEps);
    }
    unit[(b * 2) * k + j] = f;
    unit[(b * 2 + 1) * k + j] = g;
    nf += f * f;
    nb += g * g;
  }
  const float inv_f = 1.f / (sqrtf(block_sum(nf, scratch)) + kEps);
  const float inv_b = 1.f / (sqrtf(block_sum(nb, scratch)) + kEps);
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    unit[(b * 2) * k + j] *= inv_f;
    unit[(b * 2 + 1) * k + j] *= inv_b;
  }
  if (threadIdx.x == 0) {
    logpi[b * 2] = logf(fmaxf(mass_fg / n, kEps));
    logpi[b * 2 + 1] = logf(fmaxf(mass_bg / n, kEps));
  }
}

// grid (ceil(n/32), B), block (32, 8). Writes z_fg; with `sums` also adds sum_i z_i x_i to
// sums[b,0,:], sum_i x_i to sums[b,1,:] and sum_i z_i to mass[b]; with unit_mean the sums are
// of the L2-normalised x_i / (|x_i| + eps).
__global__ void e_step_kernel(const float* __restrict__ x, const float* __restrict__ unit,
                              const float* __restrict__ logpi, int k, int n, float beta, float* __restrict__ z,
                              float* __restrict__ sums, float* __restrict__ mass, bool unit_mean) {
  __shared__ float part[3][kChannelGroups][kTilePixels];
  __shared__ float tile_z[kTilePixels];
  __shared__ float tile_w[kTilePixels];  // weight of pixel tx in the M-step sums: 1, or 1/(|x|+eps)
  const int b = blockIdx.y, tx = threadIdx.x, ty = threadIdx.y;
  const int i = blockIdx.x * kTilePixels + tx;
  const bool valid = i < n;
  const float* xb = x + size_t(b) * k * n;
  const float* uf = unit + size_t(b) * 2 * k;
  const float* ub = uf + k;
  float df = 0.f, db = 0.f, nn = 0.f;
  if (valid) {
    for (int j = ty; j < k; j += kChannelGroups) {
      const float v = xb[size_t(j) * n + i];
      df += v * uf[j];
      db += v * ub[j];
      nn += v * v;
    }
  }
  part[0][ty][tx] = df;
  part[1][ty][tx] = db;
  part[2][ty][tx] = nn;
  __syncthreads();
  if (ty == 0) {
    float sf = 0.f, sb = 0.f, sn = 0.f;
    for (int g = 0; g < kChannelGroups; ++g) {
      sf += part[0][g][tx];
      sb += part[1][g][tx];
      sn += part[2][g][tx];
    }
    const float inv = 1.f / (sqrtf(sn) + kEps);
    const float zi = valid ? responsibility(sf * inv, sb * inv, beta, logpi[b * 2], logpi[b * 2 + 1]) : 0.f;
    tile_z[tx] = zi;
    tile_w[tx] = unit_mean ? inv : 1.f;
    if (valid) z[size_t(b) * n + i] = zi;
  }
  __syncthreads();
  if (sums == nullptr) return;
  const float zi = tile_z[tx], wi = tile_w[tx];
  if (ty == 0) {
    float m = zi;
    for (int o = 16; o > 0; o >>= 1) m += __shfl_down_sync(0xffffffffu, m, o);
    if (tx == 0) atomicAdd(mass + b, m);
  }
  float* sz_out = sums + size_t(b) * 2 * k;
  float* s_out = sz_out + k;
  for (int j = ty; j < k; j += kChannelGroups) {
    const float v = valid ? xb[size_t(j) * n + i] * wi : 0.f;  // second read: the tile is in L2
    float sz = zi * v, s = v;
    for (int o = 16; o > 0; o >>= 1) {
      sz += __shfl_down_sync(0xffffffffu, sz, o);
      s += __shfl_down_sync(0xffffffffu, s, o);
    }
    if (tx == 0) {
      atomicAdd(sz_out + j, sz);
      atomicAdd(s_out + j, s);
    }
  }
}

// Host side: all EM steps, then calibration and fusion. x (B,K,n), cam (B,n), init (B,2,K),
// out (B,n); unit_mean: M-steps over L2-normalised features; calibration: cream::kOmega,
// kCamMean or kNone; workspace: one buffer of B*(4K+3) floats (unit centroids (B,2,K),
// log-priors (B,2), M-step sums (B,2,K), masses (B)). Returns the first CUDA error, if any.
inline cudaError_t cosine_em_launch(const float* x, const float* cam, const float* init, int b, int k, int n,
                                    int iterations, float beta, float tau, bool unit_mean, int calibration, float* z,
                                    float* workspace, cudaStream_t stream) {
  float* unit = workspace;
  float* logpi = unit + size_t(b) * 2 * k;
  float* sums = logpi + size_t(b) * 2;
  float* mass = sums + size_t(b) * 2 * k;  // right after sums: one memset clears both
  centroids_kernel<<<b, 256, 0, stream>>>(init, nullptr, nullptr, k, n, unit, logpi);
  const dim3 grid((n + kTilePixels - 1) / kTilePixels, b), block(kTilePixels, kChannelGroups);
  for (int step = 0; step < iterations; ++step) {
    const bool last = step == iterations - 1;
    if (!last) {
      cudaMemsetAsync(sums, 0, sizeof(float) * (size_t(b) * 2 * k + b), stream);
    }
    e_step_kernel<<<grid, block, 0, stream>>>(x, unit, logpi, k, n, beta, z, last ? nullptr : sums,
                                              last ? nullptr : mass, unit_mean);
    if (!last) centroids_kernel<<<b, 256, 0, stream>>>(nullptr, sums, mass, k, n, unit, logpi);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  calibrate_kernel<<<b, 256, 0, stream>>>(cam, n, tau, calibration, z);
  return cudaGetLastError();
}

}  // namespace cream_cuda
