// phaseconv CUDA forward engine: what the kernel families share.  CUDA headers only.
//
// Every 3-D phase is a dense stride-1 correlation of the input with a slice of the kernel.
// The forward's kernel families, one translation unit each (compiled in parallel):
//   phase_conv_fwd_tiled.cu     SIMT tiles (FFMA), any dtype
//   phase_conv_fwd_naive.cu     one thread per output (forward and grad-input mode)
//   phase_conv_fwd_mma.cu       per-phase implicit GEMM on mma.sync (also grad-input mode)
//   phase_conv_fwd_allphase.cu  every phase of a tile in one block, on mma.sync
//   phase_conv_fwd_gemm_*.cu    implicit GEMM of wide layers (float32 as 3xTF32, by name), a
//                               unit per dtype; its TMA tiles a unit per source of B
//   phase_conv_layout.cu        the channels-last copy of a contiguous input
// phase_conv_plan.cpp holds the rule that picks one and each family's tile search (the plan,
// plain C++); phase_conv_fwd.cu the dispatch by dtype.  Each family exposes `run_<family>`
// (its launch of a planned tile), declared below and instantiated in its own file for every
// dtype.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "phase_conv_dtype.cuh"
#include "phase_conv_exact.cuh"
#include "phase_conv_fastdiv.cuh"
#include "phase_conv_fwd.cuh"
#include "phase_conv_launch.cuh"
#include "phase_conv_mma.cuh"
#include "phase_conv_plan.h"

namespace phaseconv {

using namespace phaseconv_dtype;  // AccOf, to_acc, from_acc, ldg, ldg_i64, axis_count
using phaseconv_exact::all_finite;
using phaseconv_exact::finite_value;
using namespace phaseconv_mma;    // ldmatrix, cp.async, mma.sync, 3xTF32 split, flush_acc

// ---------------------------------------------------------------- block index
// A block index of the tiled, per-phase and all-phase kernels, fastest first: phase, W tile,
// H tile, D tile, batch, C_out/g block, group.  32-bit division where the grid allows it
// (64-bit division is slow).
struct TileIndex {
  int ph, bw, bh, bd, cb, g;
  int64_t n;
};
__device__ __forceinline__ TileIndex decode_tile(int64_t blk, int64_t total, int phases,
                                                 int tiles_w, int tiles_h, int tiles_d,
                                                 int64_t nbatch, int co_blocks) {
  TileIndex t;
  if (total <= 0xffffffffLL) {
    uint32_t r = (uint32_t)blk;
    t.ph = (int)(r % (uint32_t)phases); r /= (uint32_t)phases;
    t.bw = (int)(r % (uint32_t)tiles_w); r /= (uint32_t)tiles_w;
    t.bh = (int)(r % (uint32_t)tiles_h); r /= (uint32_t)tiles_h;
    t.bd = (int)(r % (uint32_t)tiles_d); r /= (uint32_t)tiles_d;
    t.n = (int64_t)(r % (uint32_t)nbatch); r /= (uint32_t)nbatch;
    t.cb = (int)(r % (uint32_t)co_blocks);
    t.g = (int)(r / (uint32_t)co_blocks);
  } else {
    int64_t r = blk;
    t.ph = (int)(r % phases); r /= phases;
    t.bw = (int)(r % tiles_w); r /= tiles_w;
    t.bh = (int)(r % tiles_h); r /= tiles_h;
    t.bd = (int)(r % tiles_d); r /= tiles_d;
    t.n = r % nbatch; r /= nbatch;
    t.cb = (int)(r % co_blocks);
    t.g = (int)(r / co_blocks);
  }
  return t;
}

// ---------------------------------------------------------------- tensor-core tiles
// shared by the per-phase and all-phase kernels
template <typename T> struct MmaT;
template <> struct MmaT<__nv_bfloat16> { enum { CG = 8 }; };
template <> struct MmaT<__half> { enum { CG = 8 }; };
template <> struct MmaT<float> { enum { CG = 4 }; };

template <typename T> __device__ __forceinline__ unsigned short bits16(T v);
template <> __device__ __forceinline__ unsigned short bits16<__half>(__half v) {
  return __half_as_ushort(v);
}
template <> __device__ __forceinline__ unsigned short bits16<__nv_bfloat16>(__nv_bfloat16 v) {
  return *reinterpret_cast<unsigned short*>(&v);
}

// Stores two neighbours (p[0], p[1]) = (a, b), rounded to T, as one 8- or 4-byte vector (p is
// aligned to two elements); returns whether both stored elements are finite.
__device__ __forceinline__ bool store_pair(float* p, float a, float b) {
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
  return finite_value(a) && finite_value(b);
}
__device__ __forceinline__ uint32_t pack_pair(__nv_bfloat16*, float a, float b) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&v);
}
__device__ __forceinline__ uint32_t pack_pair(__half*, float a, float b) {
  const __half2 v = __floats2half2_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&v);
}
template <typename T> __device__ __forceinline__ bool store_pair(T* p, float a, float b) {
  const uint32_t v = pack_pair(p, a, b);
  *reinterpret_cast<uint32_t*>(p) = v;
  return all_finite<T>(v);
}

// Loads CG channels (stride `cstride` elements, `nvalid` of them real) as one 16-byte vector.
template <typename T> struct Gather16 {
  static __device__ __forceinline__ uint4 run(const T* p, int64_t cstride, int nvalid) {
    unsigned short h[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) h[j] = j < nvalid ? bits16<T>(ldg(p + j * cstride)) : 0;
    uint4 r;
    r.x = h[0] | ((uint32_t)h[1] << 16); r.y = h[2] | ((uint32_t)h[3] << 16);
    r.z = h[4] | ((uint32_t)h[5] << 16); r.w = h[6] | ((uint32_t)h[7] << 16);
    return r;
  }
};
template <> struct Gather16<float> {
  static __device__ __forceinline__ uint4 run(const float* p, int64_t cstride, int nvalid) {
    float f[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) f[j] = j < nvalid ? __ldg(p + j * cstride) : 0.f;
    return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]),
                      __float_as_uint(f[3]));
  }
};

// B fragments of half steps h and h + 1 for the warp's NT n tiles, from the shared weight
// rows [half step][BN output channels][16 bytes] (the per-phase and all-phase kernels).
// ldmatrix lanes 0-7: (n tile j, half 0), 8-15: (j, half 1), 16-23: (j+1, 0), 24-31: (j+1, 1)
template <int NT, int BN>
__device__ __forceinline__ void load_b_halfsteps(uint32_t (&bf)[NT][2], uint32_t sw_addr, int h,
                                                 int wn, int lane) {
  const int bro = lane & 7, bhalf = (lane >> 3) & 1, bj = lane >> 4;
#pragma unroll
  for (int j = 0; j < NT; j += 2) {
    if (j + 1 < NT) {
      uint32_t rr[4];
      const int row = (h + bhalf) * BN + (wn * NT + j + bj) * 8 + bro;
      ldsm_x4(rr, sw_addr + row * 16);
      bf[j][0] = rr[0]; bf[j][1] = rr[1]; bf[j + 1][0] = rr[2]; bf[j + 1][1] = rr[3];
    } else {
      const int row = (h + bhalf) * BN + (wn * NT + j) * 8 + bro;
      ldsm_x2(bf[j][0], bf[j][1], sw_addr + row * 16);
    }
  }
}

// ---------------------------------------------------------------- host side

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The fields every forward kernel's argument struct shares (each family's Args derives from
// it and adds its weight pointer and tile), filled from the launcher's parameters (sizes were
// checked to fit in int by the binding).
struct FwdGeometry {
  const void* x;
  const void* bias;
  void* y;
  PhaseConvExact ex;  // non-finite elements recomputed exactly (phase_conv_exact.cuh)
  const int64_t* table;
  int64_t nbatch;
  int c_in, c_out, cin_g, cout_g;
  int in_d, in_h, in_w, out_d, out_h, out_w;
  int sd, sh, sw, pdd, pdh, pdw;
};

inline void set_geometry(FwdGeometry& a, const PhaseConvFwdParams& p) {
  a.x = p.x; a.bias = p.bias; a.y = p.y; a.table = p.table;
  a.ex = p.exact;
  a.nbatch = p.n;
  a.c_in = (int)p.c_in; a.c_out = (int)p.c_out;
  a.cin_g = (int)(p.c_in / p.groups); a.cout_g = (int)(p.c_out / p.groups);
  a.in_d = (int)p.in_d; a.in_h = (int)p.in_h; a.in_w = (int)p.in_w;
  a.out_d = (int)p.out_d; a.out_h = (int)p.out_h; a.out_w = (int)p.out_w;
  a.sd = (int)p.stride_d; a.sh = (int)p.stride_h; a.sw = (int)p.stride_w;
  a.pdd = (int)p.pdil_d; a.pdh = (int)p.pdil_h; a.pdw = (int)p.pdil_w;
}

// ---------------------------------------------------------------- the families
template <typename T>
cudaError_t run_tiled(const PhaseConvFwdParams& p, const TileCfg& c, cudaStream_t stream);

// The naive kernel, forward or (nsub > 0) grad-input mode, on `grid` blocks of 256 threads.
template <typename T>
cudaError_t run_naive(const PhaseConvFwdParams& p, int64_t grid, cudaStream_t stream);

// The depthwise kernel (C_in/groups = C_out/groups = 1) on the plan's grid.
template <typename T>
cudaError_t run_depthwise(const PhaseConvFwdParams& p, const DepthwiseCfg& c,
                          cudaStream_t stream);

template <typename T>
cudaError_t run_mma_typed(const PhaseConvFwdParams& p, const MmaCfg& c, cudaStream_t stream);
template <>
cudaError_t run_mma_typed<double>(const PhaseConvFwdParams&, const MmaCfg&, cudaStream_t);

template <typename T>
cudaError_t run_allph_typed(const PhaseConvFwdParams& p, const AllCfg& c, cudaStream_t stream);
template <>
cudaError_t run_allph_typed<double>(const PhaseConvFwdParams&, const AllCfg&, cudaStream_t);

template <typename T>
cudaError_t run_gemm_typed(const PhaseConvFwdParams& p, const GemmCfg& c, cudaStream_t stream);
template <>
cudaError_t run_gemm_typed<double>(const PhaseConvFwdParams&, const GemmCfg&, cudaStream_t);

}  // namespace phaseconv
