// phaseconv: warp-level tensor-core helpers shared by the forward and backward kernels
// (ldmatrix, cp.async, mma.sync for bf16/fp16 and the 3xTF32 split for fp32).  sm_80+ PTX,
// all available in CUDA 11.8.  CUDA headers only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

#include "phase_conv_plan.h"

namespace phaseconv_mma {

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x2(uint32_t& r0, uint32_t& r1, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r0), "=r"(r1) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x2_trans(uint32_t& r0, uint32_t& r1, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r0), "=r"(r1) : "r"(addr));
}

// ---------------------------------------------------------------- cp.async (sm_80+)
// 16-byte global -> shared copy; src_bytes 0 zero-fills the destination (borders, padding).
__device__ __forceinline__ void cp_async16_ca(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n"
               :: "r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async16_cg(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
               :: "r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" :: "n"(N));
}

// 16-byte shared store of four words: a row staged through registers where cp.async cannot
// copy it (load_partial_octet), at the address the copy would have written.
__device__ __forceinline__ void st_shared16(uint32_t dst, const uint32_t* w) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n"
               :: "r"(dst), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3]));
}

// A channel octet's row (16 bytes of 16-bit T, 32 of float) from the count < 8 channels at
// src, zeros past them and where !valid: rows narrower than a 16-byte copy (and not aligned
// to one), loaded by element.  The caller stores the words (st_shared16) as its shared layout
// wants.
template <typename T>
__device__ __forceinline__ void load_partial_octet(const T* src, int count, bool valid,
                                                   uint32_t (&row)[2 * sizeof(T)]) {
  static_assert(sizeof(T) == 2 || sizeof(T) == 4, "16-bit or float rows");
  using Bits = typename std::conditional<sizeof(T) == 2, uint16_t, uint32_t>::type;
  const Bits* bits = reinterpret_cast<const Bits*>(src);
#pragma unroll
  for (int j = 0; j < 2 * (int)sizeof(T); ++j) row[j] = 0;
#pragma unroll
  for (int j = 0; j < 7; ++j) {
    const uint32_t v = valid && j < count ? (uint32_t)bits[j] : 0u;
    if constexpr (sizeof(T) == 2) row[j >> 1] |= v << ((j & 1) * 16);
    else row[j] = v;
  }
}

template <typename T> struct MmaOp;
template <> struct MmaOp<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <> struct MmaOp<__half> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
// float goes through the 3xTF32 branch of mma_kernel; this keeps that branch compilable.
template <> struct MmaOp<float> {
  static __device__ __forceinline__ void run(float (&)[4], const uint32_t (&)[4], uint32_t,
                                             uint32_t) {}
};
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t to_tf32(float f) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(f));
  return r;
}
// x = big + small, both representable in tf32
__device__ __forceinline__ void split_tf32(uint32_t x, uint32_t& big, uint32_t& small) {
  const float f = __uint_as_float(x);
  big = to_tf32(f);
  small = to_tf32(f - __uint_as_float(big));
}
// the same for every register of a fragment
template <int K>
__device__ __forceinline__ void split_tf32(const uint32_t (&x)[K], uint32_t (&big)[K],
                                           uint32_t (&small)[K]) {
#pragma unroll
  for (int k = 0; k < K; ++k) split_tf32(x[k], big[k], small[k]);
}
// 3xTF32 on one m16n8k8 tile: d += a_small b_big + a_big b_small + a_big b_big (in this order)
__device__ __forceinline__ void mma_3xtf32(float (&d)[4], const uint32_t (&a_big)[4],
                                           const uint32_t (&a_small)[4],
                                           const uint32_t (&b_big)[2],
                                           const uint32_t (&b_small)[2]) {
  mma_tf32(d, a_small, b_big[0], b_big[1]);
  mma_tf32(d, a_big, b_small[0], b_small[1]);
  mma_tf32(d, a_big, b_big[0], b_big[1]);
}

// One k8 step of 3xTF32 over an MT x NT block of m16n8k8 tiles, each fragment split once
template <int MT, int NT>
__device__ __forceinline__ void mma_3xtf32_tiles(float (&acc)[MT][NT][4],
                                                 const uint32_t (&af)[MT][4],
                                                 const uint32_t (&bf)[NT][2]) {
  uint32_t b_big[NT][2], b_small[NT][2];
#pragma unroll
  for (int j = 0; j < NT; ++j) split_tf32(bf[j], b_big[j], b_small[j]);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    uint32_t a_big[4], a_small[4];
    split_tf32(af[mt], a_big, a_small);
#pragma unroll
    for (int j = 0; j < NT; ++j) mma_3xtf32(acc[mt][j], a_big, a_small, b_big[j], b_small[j]);
  }
}

// One k16 step of 16-bit mma.sync over an MT x NT block of m16n8k16 tiles
template <typename T, int MT, int NT>
__device__ __forceinline__ void mma_tiles(float (&acc)[MT][NT][4], const uint32_t (&af)[MT][4],
                                          const uint32_t (&bf)[NT][2]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < NT; ++j) MmaOp<T>::run(acc[mt][j], af[mt], bf[j][0], bf[j][1]);
}

// The tensor cores' fp32 accumulation truncates, an error that grows with the reduction
// length: 3xTF32 kernels add their accumulators into a second set every kFlushTerms
// reduction terms (fp32 adds, round to nearest), which bounds the error at that length's.
using phaseconv::kFlushTerms;
template <int MT, int NT> __device__ __forceinline__ void zero_acc(float (&acc)[MT][NT][4]) {
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int k = 0; k < 4; ++k) acc[i][j][k] = 0.f;
}
template <int MT, int NT>
__device__ __forceinline__ void flush_acc(float (&tot)[MT][NT][4], float (&acc)[MT][NT][4]) {
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        tot[i][j][k] += acc[i][j][k];
        acc[i][j][k] = 0.f;
      }
}

// One reduction step done (`steps` of them between flushes): flushes when FL and due.
template <bool FL, int MT, int NT>
__device__ __forceinline__ void step_flush(float (&tot)[MT][NT][4], float (&acc)[MT][NT][4],
                                           int& since, int steps) {
  if (FL && ++since == steps) {
    flush_acc(tot, acc);
    since = 0;
  }
}

// acc += tot: the reduction's total, once its last terms are in acc
template <int MT, int NT>
__device__ __forceinline__ void merge_acc(float (&acc)[MT][NT][4], const float (&tot)[MT][NT][4]) {
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int k = 0; k < 4; ++k) acc[i][j][k] += tot[i][j][k];
}

}  // namespace phaseconv_mma
