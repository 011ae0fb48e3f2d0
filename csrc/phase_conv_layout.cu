#include "phase_conv_fwd_common.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace phaseconv {

// ---------------------------------------------------------------- layout: to channels-last
// (N, C, P) -> (N, P, C) for P = D*H*W, through a 32-channel x 64-position shared-memory tile:
// reads coalesced along P, writes coalesced along C.  Feeds the channels-last kernels when the
// caller's input is contiguous (torch's generic permuted copy measured ~3x slower).
// 2-byte elements, C even: 64 channels x 32 positions, moved as 4-byte channel pairs (bank
// conflict free both ways, 128-byte coalesced writes).
__global__ void __launch_bounds__(256) to_channels_last_pairs_kernel(
    const uint16_t* __restrict__ x, uint32_t* __restrict__ y, int64_t nb, int64_t c,
    int64_t p) {
  __shared__ uint32_t tile[32][33];
  const int tx = threadIdx.x, ty = threadIdx.y;  // 32 x 8
  const int64_t p0 = (int64_t)blockIdx.x * 32, c0 = (int64_t)blockIdx.y * 64;
  const int64_t c2 = c >> 1;
  for (int64_t n = blockIdx.z; n < nb; n += gridDim.z) {
    const uint16_t* xn = x + n * c * p;
    uint32_t* yn = y + n * c2 * p;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int lc2 = ty + 8 * i;  // channel pair
      const int64_t ch = c0 + 2 * lc2, pos = p0 + tx;
      if (ch < c && pos < p) {
        const uint32_t lo = xn[ch * p + pos], hi = xn[(ch + 1) * p + pos];
        tile[tx][lc2] = lo | (hi << 16);
      }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int lp = ty + 8 * i;
      const int64_t pos = p0 + lp, ch2 = (c0 >> 1) + tx;
      if (pos < p && ch2 < c2) yn[pos * c2 + ch2] = tile[lp][tx];
    }
    __syncthreads();
  }
}

// 2-byte elements, C and P even: 64 channels x 64 positions; each thread reads two positions
// of two channels (two 4-byte loads) and regroups them into two channel pairs.
__global__ void __launch_bounds__(256) to_channels_last_quads_kernel(
    const uint32_t* __restrict__ x, uint32_t* __restrict__ y, int64_t nb, int64_t c,
    int64_t p) {
  __shared__ uint32_t tile[64][33];
  const int tx = threadIdx.x, ty = threadIdx.y;  // 32 x 8
  const int64_t p0 = (int64_t)blockIdx.x * 64, c0 = (int64_t)blockIdx.y * 64;
  const int64_t c2 = c >> 1, p2 = p >> 1;
  for (int64_t n = blockIdx.z; n < nb; n += gridDim.z) {
    const uint32_t* xn = x + n * c * p2;  // (c, p/2) words
    uint32_t* yn = y + n * c2 * p;        // (p, c/2) words
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int lc2 = ty + 8 * i;  // channel pair
      const int64_t ch = c0 + 2 * lc2, pp = (p0 >> 1) + tx;  // position pair
      if (ch < c && pp < p2) {
        const uint32_t a = xn[ch * p2 + pp], b = xn[(ch + 1) * p2 + pp];
        tile[2 * tx][lc2] = __byte_perm(a, b, 0x5410);      // position 2pp: (ch, ch + 1)
        tile[2 * tx + 1][lc2] = __byte_perm(a, b, 0x7632);  // position 2pp + 1
      }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int lp = ty + 8 * i;
      const int64_t pos = p0 + lp, ch2 = (c0 >> 1) + tx;
      if (pos < p && ch2 < c2) yn[pos * c2 + ch2] = tile[lp][tx];
    }
    __syncthreads();
  }
}

// 2-byte elements, C and P multiples of 8, both tensors 16-byte aligned: a thread moves an
// 8 x 8 block (8 channels x 8 positions) with eight 16-byte loads along P, a transpose in
// registers (one byte permute per channel pair and position) and eight 16-byte stores along C;
// no shared memory.  A warp covers 4 channel blocks x 8 position blocks (128-byte load runs,
// 64-byte store runs), a block kOctetChannels x kOctetPositions blocks.  On an H200 it moves
// ~4.0 TB/s (reads and writes) where the 4-byte tiles above moved ~2.4.
constexpr int kOctetChannels = 8, kOctetPositions = 32;  // blocks of 8 a thread block covers

__device__ __forceinline__ uint32_t word_of(const uint4& v, int k) {
  return k == 0 ? v.x : k == 1 ? v.y : k == 2 ? v.z : v.w;
}

__global__ void __launch_bounds__(256) to_channels_last_octets_kernel(
    const uint4* __restrict__ x, uint4* __restrict__ y, int64_t nb, int64_t c, int64_t p) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t c8 = c >> 3, p8 = p >> 3;  // 16-byte vectors a position / a channel row holds
  const int64_t cb = (int64_t)blockIdx.y * kOctetChannels + (warp & 1) * 4 + (lane & 3);
  const int64_t pb = (int64_t)blockIdx.x * kOctetPositions + (warp >> 1) * 8 + (lane >> 2);
  if (cb >= c8 || pb >= p8) return;
  for (int64_t n = blockIdx.z; n < nb; n += gridDim.z) {
    const uint4* xs = x + (n * c + cb * 8) * p8 + pb;  // channel cb * 8, positions pb * 8 ...
    uint4* ys = y + (n * p + pb * 8) * c8 + cb;        // position pb * 8, channels cb * 8 ...
    uint4 v[8];  // channel i: positions (2k, 2k + 1) in word k
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = xs[i * p8];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      uint32_t even[4], odd[4];  // positions 2k and 2k + 1: channels (2q, 2q + 1) in word q
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const uint32_t a = word_of(v[2 * q], k), b = word_of(v[2 * q + 1], k);
        even[q] = __byte_perm(a, b, 0x5410);
        odd[q] = __byte_perm(a, b, 0x7632);
      }
      ys[(2 * k) * c8] = make_uint4(even[0], even[1], even[2], even[3]);
      ys[(2 * k + 1) * c8] = make_uint4(odd[0], odd[1], odd[2], odd[3]);
    }
  }
}

// Few channels (C of 2, 4, 8 or 16): a thread per position gathers its C values (each load
// coalesced along P across the warp) and stores them as one run, in 16-byte vectors where the
// run is a multiple of 16 bytes (y 16-byte aligned); a tile would leave most threads idle.
template <typename U, int C>
__global__ void __launch_bounds__(256) to_channels_last_narrow_kernel(const U* __restrict__ x,
                                                                      U* __restrict__ y,
                                                                      int64_t nb, int64_t p) {
  constexpr int BYTES = C * (int)sizeof(U);
  union Run {
    U u[C];
    uint4 v[BYTES >= 16 ? BYTES / 16 : 1];
  };
  for (int64_t n = blockIdx.y; n < nb; n += gridDim.y) {
    const U* xn = x + n * C * p;
    U* yn = y + n * C * p;
    for (int64_t q = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; q < p;
         q += (int64_t)gridDim.x * blockDim.x) {
      Run r;
#pragma unroll
      for (int c = 0; c < C; ++c) r.u[c] = xn[c * p + q];
      if constexpr (BYTES % 16 == 0) {
        uint4* dst = reinterpret_cast<uint4*>(yn + q * C);
#pragma unroll
        for (int k = 0; k < BYTES / 16; ++k) dst[k] = r.v[k];
      } else {
#pragma unroll
        for (int c = 0; c < C; ++c) yn[q * C + c] = r.u[c];
      }
    }
  }
}

template <typename U>
cudaError_t launch_narrow(const void* x, void* y, int64_t n, int64_t c, int64_t p,
                          cudaStream_t stream) {
  const int64_t gx = cdiv(p, 256);
  const dim3 grid((unsigned)(gx < 65535 ? gx : 65535), (unsigned)(n < 65535 ? n : 65535));
  const U* xs = static_cast<const U*>(x);
  U* ys = static_cast<U*>(y);
  switch (c) {
    case 2: to_channels_last_narrow_kernel<U, 2><<<grid, 256, 0, stream>>>(xs, ys, n, p); break;
    case 4: to_channels_last_narrow_kernel<U, 4><<<grid, 256, 0, stream>>>(xs, ys, n, p); break;
    case 8: to_channels_last_narrow_kernel<U, 8><<<grid, 256, 0, stream>>>(xs, ys, n, p); break;
    case 16: to_channels_last_narrow_kernel<U, 16><<<grid, 256, 0, stream>>>(xs, ys, n, p); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <typename U>
__global__ void __launch_bounds__(256) to_channels_last_kernel(const U* __restrict__ x,
                                                               U* __restrict__ y, int64_t nb,
                                                               int64_t c, int64_t p) {
  __shared__ U tile[32][65];
  const int tx = threadIdx.x, ty = threadIdx.y;  // 32 x 8
  const int64_t p0 = (int64_t)blockIdx.x * 64, c0 = (int64_t)blockIdx.y * 32;
  for (int64_t n = blockIdx.z; n < nb; n += gridDim.z) {
    const U* xn = x + n * c * p;
    U* yn = y + n * c * p;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int lc = ty + 8 * i;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int lp = tx + 32 * h;
        if (c0 + lc < c && p0 + lp < p) tile[lc][lp] = xn[(c0 + lc) * p + p0 + lp];
      }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int lp = ty + 8 * i;
      if (c0 + tx < c && p0 + lp < p) yn[(p0 + lp) * c + c0 + tx] = tile[tx][lp];
    }
    __syncthreads();
  }
}

}  // namespace phaseconv

cudaError_t phase_conv_to_channels_last(const void* x, void* y, int64_t n, int64_t c, int64_t p,
                                        int elem_size, cudaStream_t stream) {
  using namespace phaseconv;
  if (n == 0 || c == 0 || p == 0) return cudaSuccess;
  const int64_t gx = cdiv(p, 64), gy = cdiv(c, 32);
  if (gx > 0x7fffffffLL || gy > 65535) return cudaErrorInvalidValue;
  const dim3 grid((unsigned)gx, (unsigned)gy, (unsigned)(n < 65535 ? n : 65535));
  const dim3 block(32, 8);
  if ((c == 2 || c == 4 || c == 8 || c == 16) && reinterpret_cast<uintptr_t>(y) % 16 == 0 &&
      (elem_size == 2 || elem_size == 4))
    return elem_size == 2 ? launch_narrow<uint16_t>(x, y, n, c, p, stream)
                          : launch_narrow<uint32_t>(x, y, n, c, p, stream);
  switch (elem_size) {
    case 2:
      // (the grid's bounds above cover the octets kernel's smaller one)
      if (c % 8 == 0 && p % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
          reinterpret_cast<uintptr_t>(y) % 16 == 0) {
        const dim3 grid8((unsigned)cdiv(p / 8, kOctetPositions),
                         (unsigned)cdiv(c / 8, kOctetChannels), grid.z);
        to_channels_last_octets_kernel<<<grid8, 256, 0, stream>>>(
            static_cast<const uint4*>(x), static_cast<uint4*>(y), n, c, p);
      } else if (c % 2 == 0 && p % 2 == 0 && cdiv(c, 64) <= 65535) {
        const dim3 grid4((unsigned)cdiv(p, 64), (unsigned)cdiv(c, 64), grid.z);
        to_channels_last_quads_kernel<<<grid4, block, 0, stream>>>(
            static_cast<const uint32_t*>(x), static_cast<uint32_t*>(y), n, c, p);
      } else if (c % 2 == 0 && cdiv(p, 32) <= 0x7fffffffLL && cdiv(c, 64) <= 65535) {
        const dim3 grid2((unsigned)cdiv(p, 32), (unsigned)cdiv(c, 64), grid.z);
        to_channels_last_pairs_kernel<<<grid2, block, 0, stream>>>(
            static_cast<const uint16_t*>(x), static_cast<uint32_t*>(y), n, c, p);
      } else {
        to_channels_last_kernel<uint16_t><<<grid, block, 0, stream>>>(
            static_cast<const uint16_t*>(x), static_cast<uint16_t*>(y), n, c, p);
      }
      break;
    case 4:
      to_channels_last_kernel<uint32_t><<<grid, block, 0, stream>>>(
          static_cast<const uint32_t*>(x), static_cast<uint32_t*>(y), n, c, p);
      break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}
