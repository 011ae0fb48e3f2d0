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

// A tensor-core layout (phase_conv_pack.cuh: PhaseConvMmaPack), one thread a (group, run of KT
// consecutive taps, channel group, column) chunk: CG channels at each of its taps, all its
// loads issued together, then one 16- or 32-byte store a tap.  Consecutive threads take
// consecutive columns, so a warp's stores of one tap are one contiguous run of out.  A
// channel's taps lie next to each other in the weight: with KT = 8 the sectors a thread's loads
// touch serve it whole, where with one tap a thread each sector is fetched once per tap it holds
// (256->128 k4 bf16: 19.6 -> 11.1 us).  KT = 8 leaves an eighth of the threads, too few for
// small weights (512->256 k2: 7.7 -> 11.0 us), so it is taken where at least kPackMinThreads
// chunks remain (both measured on an H100).  Where a group's channels are adjacent and
// aligned in the weight, a tap's CG channels are one or two 16-byte loads.  No shared memory
// and no index map: a tiled transpose through shared memory (256 threads, 32 KB a block)
// measured 2-2.8x slower than the element gather on an H200, the weights being L2-resident.
// Raw element copies, as the gather.
constexpr int kPackTaps = 8;
constexpr int64_t kPackMinThreads = 32768;

template <typename U, int CG, int KT>
__global__ void __launch_bounds__(256) pack_mma_kernel(const U* __restrict__ w,
                                                       const PhaseConvWeightView view,
                                                       const PhaseConvMmaPack pk,
                                                       uint32_t chunks, U* __restrict__ out,
                                                       int* flag) {
  static_assert(CG * sizeof(U) == 16 || CG * sizeof(U) == 32,
                "a channel group is one or two 16-byte stores");
  if (flag != nullptr && blockIdx.x == 0 && threadIdx.x == 0) *flag = 0;
  // 32-bit chunk arithmetic: there are at most as many chunks as weight elements (each holds
  // one at least), below 2^31 (checked by the binding)
  const uint32_t cols = (uint32_t)pk.cols, ksize = (uint32_t)pk.ksize;
  const uint32_t ngrp = (uint32_t)((pk.chans + CG - 1) / CG);
  const uint32_t truns = (ksize + KT - 1) / KT;
  const int64_t run = (int64_t)ngrp * cols * CG;  // one tap's block of one group (C-order taps)
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < chunks;
       i += gridDim.x * blockDim.x) {
    uint32_t r = i;
    const uint32_t co = r % cols; r /= cols;
    const uint32_t q = r % ngrp; r /= ngrp;
    const uint32_t k0 = (r % truns) * KT;
    const uint32_t g = r / truns;
    const U* src = w + g * pk.group_stride + (int64_t)q * CG * pk.chan_stride +
                   co * pk.col_stride;
    const int64_t valid = pk.chans - (int64_t)q * CG;  // channels of this group (CG but last)
    int64_t tap_ofs[KT];  // the weight offset of tap k0 + t
    bool aligned = true;
#pragma unroll
    for (int t = 0; t < KT; ++t) {
      tap_ofs[t] = phaseconv_tap_offset(view, min(k0 + t, ksize - 1));
      aligned &= (reinterpret_cast<uintptr_t>(src + tap_ofs[t]) & 15) == 0;
    }
    // the group's channels adjacent in the weight (the input gradient's layout of a
    // channels_last_3d weight, whose output channels have stride 1): vector loads
    const bool adjacent = pk.chan_stride == 1 && valid >= CG && aligned;
    alignas(16) U v[KT][CG];
    if (adjacent) {  // a whole group's channels, 16 or 32 aligned bytes a tap
#pragma unroll
      for (int t = 0; t < KT; ++t)
#pragma unroll
        for (int h = 0; h < CG * (int)sizeof(U) / 16; ++h)
          reinterpret_cast<uint4*>(v[t])[h] = reinterpret_cast<const uint4*>(src + tap_ofs[t])[h];
    } else {
#pragma unroll
      for (int c = 0; c < CG; ++c)
#pragma unroll
        for (int t = 0; t < KT; ++t)
          v[t][c] = c < valid ? src[c * pk.chan_stride + tap_ofs[t]] : U(0);
    }
#pragma unroll
    for (int t = 0; t < KT; ++t) {
      const uint32_t k = k0 + t;
      if (k >= ksize) break;
      const int64_t base = pk.taps != nullptr ? pk.taps[2 * k] + g * pk.taps[2 * k + 1]
                                              : ((int64_t)g * ksize + k) * run;
      uint4* dst = reinterpret_cast<uint4*>(out + base + ((int64_t)q * cols + co) * CG);
#pragma unroll
      for (int h = 0; h < CG * (int)sizeof(U) / 16; ++h)
        dst[h] = reinterpret_cast<const uint4*>(v[t])[h];
    }
  }
}

template <typename U, int CG>
cudaError_t launch_pack(const void* w, const PhaseConvWeightView& view,
                        const PhaseConvMmaPack& pk, void* out, int* flag, cudaStream_t stream) {
  const int64_t per_tap = pk.groups * ((pk.chans + CG - 1) / CG) * pk.cols;  // chunks a tap
  if (per_tap * pk.ksize == 0) return zero_flag(flag, stream);
  const int64_t runs = per_tap * ((pk.ksize + kPackTaps - 1) / kPackTaps);
  const bool tap_runs = runs >= kPackMinThreads;
  const int64_t chunks = tap_runs ? runs : per_tap * pk.ksize;
  const int64_t grid = std::min<int64_t>((chunks + 255) / 256, 8192);  // then grid-stride
  if (tap_runs)
    pack_mma_kernel<U, CG, kPackTaps><<<(unsigned)grid, 256, 0, stream>>>(
        static_cast<const U*>(w), view, pk, (uint32_t)chunks, static_cast<U*>(out), flag);
  else
    pack_mma_kernel<U, CG, 1><<<(unsigned)grid, 256, 0, stream>>>(
        static_cast<const U*>(w), view, pk, (uint32_t)chunks, static_cast<U*>(out), flag);
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
