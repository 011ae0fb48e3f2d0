// phaseconv: the tensor memory accelerator (TMA, sm_90) and the shared-memory barriers that
// pace it, for loaders that copy whole boxes of a channels-last tensor with no per-element
// instructions.
//
// A box of a channels-last tensor (N, D, H, W, C) is the 5-D box {C0, W0, H0, D0, 1} at signed
// coordinates (c, w, h, d, n): the hardware zero-fills every element outside the tensor, which
// is a phase's zero padding.  With the 128-byte swizzle and 64 16-bit channels innermost, each
// voxel of the box is one 128-byte row, 16-byte chunk j of row r at chunk j ^ (r % 8): the
// K-major layout the wgmma descriptor reads (phase_conv_wgmma.cuh).  A load completes on an
// mbarrier, which counts the bytes it expects (expect_tx) and flips its phase when they land.
//
// Device code needs sm_90 and nvcc 12 (PHASECONV_TMA); elsewhere the wrappers trap and the plan never
// takes a kernel that calls them.  The tensor map is encoded on the host through the driver's
// cuTensorMapEncodeTiled (CUDA 12 and newer; phase_conv_tma_encode_box returns
// cudaErrorNotSupported before).  CUDA headers only.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>
#include <stdint.h>

// (the instructions need PTX ISA 8.0: nvcc 12 or newer)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDACC_VER_MAJOR__) && \
    __CUDACC_VER_MAJOR__ >= 12
#define PHASECONV_TMA 1
#else
#define PHASECONV_TMA 0
#endif

#if CUDA_VERSION >= 12000
#define PHASECONV_TMA_HOST 1
using PhaseConvTensorMap = CUtensorMap;
#else
#define PHASECONV_TMA_HOST 0
struct alignas(64) PhaseConvTensorMap {  // CUDA 11: never encoded, never read
  unsigned long long opaque[16];
};
#endif

// The 5-D map of a channels-last tensor `base` (16-bit elements, n x d x h x w x c, c a
// multiple of 8, base 16-byte aligned) for boxes of {box_c, box_w, box_h, box_d, 1} elements
// with the 128-byte swizzle (box_c * 2 <= 128; `swizzle` 64: the 64-byte one, box_c * 2 <=
// 64), taking every (sw, sh, sd)-th element along W, H, D (the box spans box_w * sw inputs
// along W, at most 256).  cudaErrorNotSupported without CUDA 12's driver entry point;
// cudaErrorInvalidValue where the driver refuses the geometry.
cudaError_t phase_conv_tma_encode_box(PhaseConvTensorMap* map, const void* base, int64_t n,
                                      int64_t d, int64_t h, int64_t w, int64_t c, int box_c,
                                      int box_w, int box_h, int box_d, int sw = 1, int sh = 1,
                                      int sd = 1, int swizzle = 128);

// Tests: each of `boxes` boxes of the channels-last tensor x at coords[5 b ..] (c, w, h, d, n)
// copied by the TMA unit into shared memory and from there, as it landed (swizzled), to
// out + b * (box bytes).  cudaErrorNotSupported before CUDA 12.
cudaError_t phase_conv_tma_box_copy(const void* x, int64_t n, int64_t d, int64_t h, int64_t w,
                                    int64_t c, int box_c, int box_w, int box_h, int box_d,
                                    const int* coords, int boxes, void* out,
                                    cudaStream_t stream);

// The 3-D map of a tensor-core weight layout `base` (16-bit, rows x cols x 8: a 16-byte
// vector of 8 channels per (row, column)) for boxes of box_cols x box_rows vectors, no
// swizzle: a box lands as [row][column][8], the layout the wgmma B descriptor reads.  The
// map's lines are `fold` consecutive vectors of a row (fold 1-32 dividing cols and box_cols),
// so a box at column coordinate c / fold starts at column c.
cudaError_t phase_conv_tma_encode_rows(PhaseConvTensorMap* map, const void* base, int64_t rows,
                                       int64_t cols, int box_cols, int box_rows, int fold);

// The 5-D map of a weight (C_in, C_out/g, kD, kH, kW) whose output channels are adjacent
// (stride 1: a channels_last_3d weight), read in place: dims innermost first (C_out/g, kW,
// kH, kD, C_in), `strides` the element strides of (C_in, kD, kH, kW), each a multiple of 8,
// base 16-byte aligned.  Boxes of {box_co, 1, 1, 1, box_ci} at (co, kw, kh, kd, ci): box_ci
// rows of box_co output channels at one kernel tap, in the 128-byte swizzle (box_co 64) or
// the 64-byte one (32): wgmma's MN-major B where the output channels are its columns (the
// forward), its K-major B where they are its reduction (the input gradient); zero past the
// tensor.
cudaError_t phase_conv_tma_encode_weight_cl(PhaseConvTensorMap* map, const void* base,
                                            int64_t c_in, int64_t cout_g, const int64_t* kernel,
                                            const int64_t* strides, int box_co, int box_ci);

#ifdef __CUDACC__
namespace phaseconv_tma {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}

// One thread initializes a barrier for `count` arrivals, before any thread uses it; the
// fence makes the initialization visible to the asynchronous proxy (the TMA unit), a block
// barrier then to the other threads.
__device__ __forceinline__ void bar_init(uint64_t* bar, uint32_t count) {
#if PHASECONV_TMA
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count)
               : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#else
  __trap();
#endif
}

// Arrives once and adds `bytes` to the transaction count the current phase waits for.
__device__ __forceinline__ void bar_arrive_expect(uint64_t* bar, uint32_t bytes) {
#if PHASECONV_TMA
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)),
               "r"(bytes)
               : "memory");
#else
  __trap();
#endif
}

// Arrives once (a consumer releasing a stage).
__device__ __forceinline__ void bar_arrive(uint64_t* bar) {
#if PHASECONV_TMA
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
#else
  __trap();
#endif
}

// Waits until the phase of parity `parity` has completed.
__device__ __forceinline__ void bar_wait(uint64_t* bar, uint32_t parity) {
#if PHASECONV_TMA
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
  } while (!done);
#else
  __trap();
#endif
}

// The box of `map` at (c, w, h, d, n) into shared memory at `dst` (1024-byte aligned for
// the 128-byte swizzle), completing on `bar`.  One thread issues it.
__device__ __forceinline__ void load_box(void* dst, const PhaseConvTensorMap& map, uint64_t* bar,
                                         int c, int w, int h, int d, int n) {
#if PHASECONV_TMA
  asm volatile(
      "cp.async.bulk.tensor.5d.shared::cluster.global.mbarrier::complete_tx::bytes "
      "[%0], [%1, {%2, %3, %4, %5, %6}], [%7];\n" ::"r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(c), "r"(w), "r"(h), "r"(d), "r"(n),
      "r"(smem_addr(bar))
      : "memory");
#else
  __trap();
#endif
}

// The box of the 3-D `map` at (e, col, row) into shared memory at `dst`, completing on `bar`.
__device__ __forceinline__ void load_rows(void* dst, const PhaseConvTensorMap& map, uint64_t* bar,
                                          int e, int col, int row) {
#if PHASECONV_TMA
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes "
      "[%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(e), "r"(col), "r"(row), "r"(smem_addr(bar))
      : "memory");
#else
  __trap();
#endif
}

// A warpgroup's registers a thread, set to `N` (setmaxnreg, sm_90a): every thread of the
// warpgroup executes it.  A producer warpgroup gives registers back (dec) so that its
// consumers may take them (inc) past what the launch bounds allot an equal share.
template <int N>
__device__ __forceinline__ void warpgroup_registers_dec() {
#if PHASECONV_TMA && defined(PHASECONV_SM90A)
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void warpgroup_registers_inc() {
#if PHASECONV_TMA && defined(PHASECONV_SM90A)
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// Thread block clusters (sm_90): a barrier over every thread of every block of the cluster
// (each thread arrives, release, then waits, acquire: shared-memory writes before it are
// visible to the cluster's blocks after it); and a float pair in the shared memory of block
// `rank` of the cluster (a 1-D cluster's rank is blockIdx.x % its size) at the address this
// block's `addr` has in its own.
__device__ __forceinline__ void cluster_sync() {
#if PHASECONV_TMA
  asm volatile("barrier.cluster.arrive.release.aligned;\n"
               "barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}

__device__ __forceinline__ float2 load_peer_float2(uint32_t addr, uint32_t rank) {
  float2 v = make_float2(0.f, 0.f);
#if PHASECONV_TMA
  uint32_t peer;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(peer) : "r"(addr), "r"(rank));
  asm volatile("ld.shared::cluster.v2.f32 {%0, %1}, [%2];\n"
               : "=f"(v.x), "=f"(v.y)
               : "r"(peer)
               : "memory");
#else
  __trap();
#endif
  return v;
}

// A barrier over the `threads` threads (whole warps) that name barrier `id` (1-15; 0 is
// __syncthreads').
__device__ __forceinline__ void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

}  // namespace phaseconv_tma
#endif  // __CUDACC__
