// phaseconv: the weight gather (see phase_conv_pack.cuh).  CUDA headers only.
#include "phase_conv_pack.cuh"

#include <stdint.h>

#include <algorithm>

namespace phaseconv_pack {
namespace {

// A layout of no elements: the launch only owes the call's flag its zero.
cudaError_t zero_flag(int* flag, cudaStream_t stream) {
  return flag != nullptr ? cudaMemsetAsync(flag, 0, sizeof(int), stream) : cudaSuccess;
}

// Moves raw elements (U of the element's size): no arithmetic on the values, so any dtype,
// NaN and Inf included, arrives bit for bit.
template <typename U>
__global__ void __launch_bounds__(256) gather_kernel(const U* __restrict__ w,
                                                     const PhaseConvWeightView view,
                                                     const int32_t* __restrict__ index,
                                                     U* __restrict__ out, int64_t n,
                                                     int* flag) {
  if (flag != nullptr && blockIdx.x == 0 && threadIdx.x == 0) *flag = 0;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int32_t k = index[i];
    out[i] = k < 0 ? U(0) : w[phaseconv_strided_offset(view, k)];
  }
}

template <typename U>
cudaError_t launch(const void* w, const PhaseConvWeightView& view, const int32_t* index,
                   void* out, int64_t n, int* flag, cudaStream_t stream) {
  int64_t blocks = (n + 255) / 256;
  if (blocks > 8192) blocks = 8192;  // grid-stride beyond: enough to fill any GPU
  gather_kernel<U><<<(unsigned)blocks, 256, 0, stream>>>(static_cast<const U*>(w), view, index,
                                                          static_cast<U*>(out), n, flag);
  return cudaGetLastError();
}

// A tensor-core layout by tiles (phase_conv_pack.cuh: PhaseConvMmaPack).  A block owns one
// (group, channel group) and a tile of (column, kernel tap) pairs, at most Tile: it reads the
// tile's CG weight rows (channels q * CG + c), whose (column, tap) pairs lie in runs along the
// taps, into shared memory, then each thread stores one (tap, column)'s CG channels as 16 or
// 32 bytes, consecutive threads consecutive columns of one tap (one contiguous run of out).
// Raw element copies, as the gather.
constexpr int kPackTileBytes = 16 * 1024;  // a tile's elements (Tile * CG of them)

template <typename U, int CG>
struct PackShape {
  static_assert(CG * sizeof(U) == 16 || CG * sizeof(U) == 32,
                "a channel group is one or two 16-byte stores");
  static constexpr int kVecs = CG * (int)sizeof(U) / 16;
  static constexpr int kTile = kPackTileBytes / (CG * (int)sizeof(U));  // pairs a tile
};

struct PackTiles {
  int co_tile, k_tile;  // a tile's columns and taps (co_tile * k_tile <= Tile)
  int64_t n_co, n_k, ngrp, blocks;
};

template <typename U, int CG>
__global__ void __launch_bounds__(256) pack_mma_kernel(const U* __restrict__ w,
                                                       const PhaseConvWeightView view,
                                                       const PhaseConvMmaPack pk,
                                                       const PackTiles tl, U* __restrict__ out,
                                                       int* flag) {
  using Shape = PackShape<U, CG>;
  // rows of co_tile runs of kp (odd: consecutive columns fall in different banks); 32 KB
  __shared__ U s[CG * 2 * Shape::kTile];
  if (flag != nullptr && blockIdx.x == 0 && threadIdx.x == 0) *flag = 0;
  // in-tile arithmetic in 32 bits: a tile holds at most CG * kTile elements, and the weight
  // (below 2^31 elements, checked by the binding) at most that many taps
  const int kp = tl.k_tile | 1, pairs = tl.co_tile * tl.k_tile, row = tl.co_tile * kp;
  const int kw_n = (int)view.size[4], kh_kw = (int)(view.size[3] * view.size[4]);
  const int64_t run = tl.ngrp * pk.cols * CG;  // one tap's block of one group (C-order taps)
  for (int64_t b = blockIdx.x; b < tl.blocks; b += gridDim.x) {
    int64_t r = b;
    const int64_t kt = r % tl.n_k; r /= tl.n_k;
    const int64_t ct = r % tl.n_co; r /= tl.n_co;
    const int64_t q = r % tl.ngrp;
    const int64_t g = r / tl.ngrp;
    const int64_t co0 = ct * tl.co_tile, k0 = kt * tl.k_tile;
    const U* wg = w + g * pk.group_stride;
    // kLoads elements a thread, their loads issued before any store: one load in flight a
    // thread left the loop latency-bound (measured slower than the element gather)
    constexpr int kLoads = 8;
    for (int i0 = threadIdx.x; i0 < CG * pairs; i0 += kLoads * blockDim.x) {
      U v[kLoads];
      int at[kLoads];
#pragma unroll
      for (int u = 0; u < kLoads; ++u) {
        const int i = i0 + u * blockDim.x;
        const int c = i / pairs, rem = i - c * pairs;
        const int col = rem / tl.k_tile, kk = rem - col * tl.k_tile;
        const int64_t ci = q * CG + c, co = co0 + col;
        const int k = (int)k0 + kk;
        v[u] = U(0);
        at[u] = i < CG * pairs ? c * row + col * kp + kk : -1;
        if (at[u] >= 0 && ci < pk.chans && co < pk.cols && k < pk.ksize) {
          const int kd = k / kh_kw, kr = k - kd * kh_kw;
          const int kh = kr / kw_n, kw = kr - kh * kw_n;
          v[u] = wg[ci * pk.chan_stride + co * pk.col_stride + kd * view.stride[2] +
                    kh * view.stride[3] + kw * view.stride[4]];
        }
      }
#pragma unroll
      for (int u = 0; u < kLoads; ++u)
        if (at[u] >= 0) s[at[u]] = v[u];
    }
    __syncthreads();
    for (int j = threadIdx.x; j < pairs; j += blockDim.x) {
      const int kk = j / tl.co_tile, col = j - kk * tl.co_tile;
      const int64_t co = co0 + col, k = k0 + kk;
      if (co >= pk.cols || k >= pk.ksize) continue;
      alignas(16) U v[CG];
#pragma unroll
      for (int c = 0; c < CG; ++c) v[c] = s[c * row + col * kp + kk];
      const int64_t base = pk.taps != nullptr ? pk.taps[2 * k] + g * pk.taps[2 * k + 1]
                                              : (g * pk.ksize + k) * run;
      uint4* dst = reinterpret_cast<uint4*>(out + base + (q * pk.cols + co) * CG);
#pragma unroll
      for (int h = 0; h < Shape::kVecs; ++h) dst[h] = reinterpret_cast<const uint4*>(v)[h];
    }
    __syncthreads();  // the next tile rewrites s
  }
}

template <typename U, int CG>
cudaError_t launch_pack(const void* w, const PhaseConvWeightView& view,
                        const PhaseConvMmaPack& pk, void* out, int* flag, cudaStream_t stream) {
  if (pk.groups * pk.chans * pk.cols * pk.ksize == 0) return zero_flag(flag, stream);
  constexpr int kTile = PackShape<U, CG>::kTile;
  PackTiles tl;
  tl.ngrp = (pk.chans + CG - 1) / CG;
  // tiles of fewer pairs where the layout is small, so that the blocks fill the GPU (a few
  // whole tiles left the pack latency-bound: the founding weight took 12.6 µs on an H200,
  // against the element gather's 1.5); then whole tap runs of as many columns as fit, or
  // one column's taps in pieces
  const int64_t tile = std::max<int64_t>(
      32, std::min<int64_t>(kTile, pk.groups * tl.ngrp * pk.cols * pk.ksize / 1024));
  tl.k_tile = (int)std::min<int64_t>(pk.ksize, tile);
  tl.co_tile = (int)std::min<int64_t>(pk.cols, tile / tl.k_tile);
  tl.n_k = (pk.ksize + tl.k_tile - 1) / tl.k_tile;
  tl.n_co = (pk.cols + tl.co_tile - 1) / tl.co_tile;
  tl.blocks = pk.groups * tl.ngrp * tl.n_co * tl.n_k;
  const int64_t grid = std::min<int64_t>(tl.blocks, 8192);  // then block-stride
  pack_mma_kernel<U, CG><<<(unsigned)grid, 256, 0, stream>>>(
      static_cast<const U*>(w), view, pk, tl, static_cast<U*>(out), flag);
  return cudaGetLastError();
}

}  // namespace
}  // namespace phaseconv_pack

cudaError_t phase_conv_gather_weight(const void* w, const PhaseConvWeightView& view,
                                     const int32_t* index, void* out, int64_t n, int elem_size,
                                     int* flag, cudaStream_t stream) {
  using namespace phaseconv_pack;
  if (n == 0) return zero_flag(flag, stream);
  switch (elem_size) {
    case 2: return launch<uint16_t>(w, view, index, out, n, flag, stream);
    case 4: return launch<uint32_t>(w, view, index, out, n, flag, stream);
    case 8: return launch<uint64_t>(w, view, index, out, n, flag, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t phase_conv_pack_weight_mma(const void* w, const PhaseConvWeightView& view,
                                       const PhaseConvMmaPack& pack, void* out, int elem_size,
                                       int* flag, cudaStream_t stream) {
  using namespace phaseconv_pack;
  if (elem_size == 2 && pack.cg == 8)
    return launch_pack<uint16_t, 8>(w, view, pack, out, flag, stream);
  if (elem_size == 4 && pack.cg == 4)
    return launch_pack<uint32_t, 4>(w, view, pack, out, flag, stream);
  if (elem_size == 4 && pack.cg == 8)
    return launch_pack<uint32_t, 8>(w, view, pack, out, flag, stream);
  return cudaErrorInvalidValue;
}
