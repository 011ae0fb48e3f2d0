// phaseconv: warpgroup tensor-core helpers (sm_90a): wgmma.mma_async reading both operands
// from shared memory, its fences, and the shared-memory matrix descriptors.  The instructions
// exist only in code compiled for sm_90a (nvcc 12+, -gencode arch=compute_90a,code=sm_90a):
// elsewhere PHASECONV_WGMMA is 0 and every wrapper traps, and the plan never picks a kernel
// that calls them (DevInfo::wgmma).  CUDA headers only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define PHASECONV_WGMMA 1
#else
#define PHASECONV_WGMMA 0
#endif

namespace phaseconv_wgmma {

// Matrix descriptor of an operand in shared memory: start address, leading and stride byte
// offsets (16-byte units, 14 bits each) and the swizzle mode (0: none, 1: 128-byte, 2:
// 64-byte).
//  - none, K-major: 8 x 16-byte core matrices, each 128 contiguous bytes; lbo steps to the
//    next core matrix along K, sbo to the next 8 rows.
//  - 128-byte swizzle, K-major: rows of 64 16-bit elements, 16-byte chunk c of row r stored
//    at chunk c ^ (r % 8) (the address bits the hardware XORs, so the 8-row atom must be
//    1024-byte aligned); sbo steps 8 rows, lbo is unused.  A k16 step adds 32 bytes to start.
//  - 128-byte swizzle, MN-major ("transposed", imm-trans 1, 16-bit types only): rows along K of
//    64 M (N) elements, chunk c of row k at c ^ (k % 8), 8-row atoms of 1024 bytes; lbo steps
//    to the next 64 M (N) elements, sbo to the next 8 rows along K.
//  - 64-byte swizzle, MN-major: the same with rows of 32 elements, chunk c of row k at
//    c ^ ((k / 2) % 4), 8-row atoms of 512 bytes.
//  - 64-byte swizzle, K-major: rows of 32 16-bit elements, chunk c of row r at c ^ ((r / 2)
//    % 4) (512-byte aligned atoms); sbo steps 8 rows (512 bytes), a k16 step adds 32 bytes.
constexpr int kSwizzleNone = 0, kSwizzle128 = 1, kSwizzle64 = 2;
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo,
                                              int swizzle) {
  return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo >> 4) & 0x3FFF) << 16) |
         ((uint64_t)((sbo >> 4) & 0x3FFF) << 32) | ((uint64_t)swizzle << 62);
}

// Before the first wgmma of a batch: orders the warpgroup's register writes (accumulators)
// before the asynchronous reads.
__device__ __forceinline__ void fence() {
#if PHASECONV_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void commit() {
#if PHASECONV_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}
// Waits until at most N committed batches of this warpgroup are in flight.
template <int N> __device__ __forceinline__ void wait() {
#if PHASECONV_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#else
  __trap();
#endif
}
// Shared-memory writes of this thread (cp.async lands through the generic proxy) made
// visible to wgmma's reads (the async proxy); a barrier then publishes them to the block.
__device__ __forceinline__ void fence_proxy_async() {
#if PHASECONV_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#else
  __trap();
#endif
}
// Keeps the compiler from moving accumulator reads or writes across a fence or a wait: the
// registers change asynchronously.
template <int R> __device__ __forceinline__ void fence_operand(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// D[64 x N] (+)= A[64 x 16] * B[16 x N] in shared memory, each K-major or (MN_A, MN_B 1)
// MN-major; f32 accumulators, thread t of warp w holding rows 16w + t/4 (+8), columns
// 8j + 2(t%4) (+1) at d[4j .. 4j+3] (the mma.sync m16n8 accumulator layout, repeated over
// N/8).  scale_d 0: D = A*B.
template <typename T, int N, int MN_A = 0, int MN_B = MN_A> struct Wgmma;

#if PHASECONV_WGMMA
// The m64n{32,64,128}k16 shapes for 16-bit type T (PTX type name TY): inline PTX needs its
// operand list spelled out.
#define PHASECONV_WGMMA_SHAPES(T, TY) \
template <int MN_A, int MN_B> struct Wgmma<T, 32, MN_A, MN_B> { \
  static __device__ __forceinline__ void run(float (&d)[16], uint64_t da, uint64_t db, \
                                             int scale_d) { \
    asm volatile( \
        "{\n.reg .pred p;\n" \
        "setp.ne.b32 p, %18, 0;\n" \
        "wgmma.mma_async.sync.aligned.m64n32k16.f32." TY "." TY " " \
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, " \
        "%16, %17, p, 1, 1, %19, %20;\n}\n" \
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), \
          "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), \
          "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]) \
        : "l"(da), "l"(db), "r"(scale_d), "n"(MN_A), "n"(MN_B)); \
  } \
}; \
template <int MN_A, int MN_B> struct Wgmma<T, 64, MN_A, MN_B> { \
  static __device__ __forceinline__ void run(float (&d)[32], uint64_t da, uint64_t db, \
                                             int scale_d) { \
    asm volatile( \
        "{\n.reg .pred p;\n" \
        "setp.ne.b32 p, %34, 0;\n" \
        "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " " \
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15," \
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, " \
        "%32, %33, p, 1, 1, %35, %36;\n}\n" \
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), \
          "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), \
          "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), \
          "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), \
          "+f"(d[30]), "+f"(d[31]) \
        : "l"(da), "l"(db), "r"(scale_d), "n"(MN_A), "n"(MN_B)); \
  } \
}; \
template <int MN_A, int MN_B> struct Wgmma<T, 128, MN_A, MN_B> { \
  static __device__ __forceinline__ void run(float (&d)[64], uint64_t da, uint64_t db, \
                                             int scale_d) { \
    asm volatile( \
        "{\n.reg .pred p;\n" \
        "setp.ne.b32 p, %66, 0;\n" \
        "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " " \
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15," \
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31," \
        "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47," \
        "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, " \
        "%64, %65, p, 1, 1, %67, %68;\n}\n" \
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), \
          "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), \
          "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), \
          "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), \
          "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), \
          "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), \
          "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), \
          "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), \
          "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]) \
        : "l"(da), "l"(db), "r"(scale_d), "n"(MN_A), "n"(MN_B)); \
  } \
};

PHASECONV_WGMMA_SHAPES(__nv_bfloat16, "bf16")
PHASECONV_WGMMA_SHAPES(__half, "f16")
#undef PHASECONV_WGMMA_SHAPES
#else
template <typename T, int N, int MN_A, int MN_B> struct Wgmma {
  static __device__ __forceinline__ void run(float (&)[N / 2], uint64_t, uint64_t, int) {
    __trap();
  }
};
#endif

}  // namespace phaseconv_wgmma
