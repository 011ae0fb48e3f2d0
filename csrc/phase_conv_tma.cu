#include "phase_conv_launch.cuh"
#include "phase_conv_tma.cuh"

#if PHASECONV_TMA_HOST
#include <cudaTypedefs.h>
#endif

#include <stdint.h>

// ---------------------------------------------------------------- tensor maps (host)
#if PHASECONV_TMA_HOST
namespace {
// The driver's cuTensorMapEncodeTiled (through the runtime: no link to libcuda), looked up
// once; nullptr where the driver lacks it.
PFN_cuTensorMapEncodeTiled_v12000 encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found;
#if CUDART_VERSION >= 12050
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn,
                                                             12000, cudaEnableDefault, &found);
#else
    const cudaError_t err =
        cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &fn, cudaEnableDefault, &found);
#endif
    return err == cudaSuccess && found == cudaDriverEntryPointSuccess
               ? reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn)
               : nullptr;
  }();
  return encode;
}

// A tiled map of 16-bit words (bf16 and fp16 move as bits: the map never converts), zero fill
// outside the tensor; `step`: the element strides of the traversal.
cudaError_t encode_tiled(PhaseConvTensorMap* map, const void* base, cuuint32_t rank,
                         const cuuint64_t* dims, const cuuint64_t* strides,
                         const cuuint32_t* box, const cuuint32_t* step,
                         CUtensorMapSwizzle swizzle) {
  PFN_cuTensorMapEncodeTiled_v12000 encode = encoder();
  if (encode == nullptr) return cudaErrorNotSupported;
  const CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT16, rank, const_cast<void*>(base),
                            dims, strides, box, step, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}
}  // namespace
#endif

cudaError_t phase_conv_tma_encode_box(PhaseConvTensorMap* map, const void* base, int64_t n,
                                      int64_t d, int64_t h, int64_t w, int64_t c, int box_c,
                                      int box_w, int box_h, int box_d, int sw, int sh, int sd,
                                      int swizzle) {
#if PHASECONV_TMA_HOST
  if (sw < 1 || sh < 1 || sd < 1 || sw > 8 || sh > 8 || sd > 8 || box_w * sw > 256 ||
      box_h * sh > 256 || box_d * sd > 256 || (swizzle != 128 && swizzle != 64) ||
      box_c * 2 > swizzle)
    return cudaErrorInvalidValue;
  // innermost first: channels, W, H, D, N; the strides (bytes) of dims 1-4
  const cuuint64_t dims[5] = {(cuuint64_t)c, (cuuint64_t)w, (cuuint64_t)h, (cuuint64_t)d,
                              (cuuint64_t)n};
  const cuuint64_t row = (cuuint64_t)c * 2;
  const cuuint64_t strides[4] = {row, row * w, row * w * h, row * w * h * d};
  // a box traverses box_w * sw elements along W and keeps every sw-th (and so on)
  const cuuint32_t box[5] = {(cuuint32_t)box_c, (cuuint32_t)(box_w * sw),
                             (cuuint32_t)(box_h * sh), (cuuint32_t)(box_d * sd), 1};
  const cuuint32_t step[5] = {1, (cuuint32_t)sw, (cuuint32_t)sh, (cuuint32_t)sd, 1};
  return encode_tiled(map, base, 5, dims, strides, box, step,
                      swizzle == 64 ? CU_TENSOR_MAP_SWIZZLE_64B : CU_TENSOR_MAP_SWIZZLE_128B);
#else
  (void)map; (void)base; (void)n; (void)d; (void)h; (void)w; (void)c;
  (void)box_c; (void)box_w; (void)box_h; (void)box_d; (void)sw; (void)sh; (void)sd;
  (void)swizzle;
  return cudaErrorNotSupported;
#endif
}

cudaError_t phase_conv_tma_encode_rows(PhaseConvTensorMap* map, const void* base, int64_t rows,
                                       int64_t cols, int box_cols, int box_rows, int fold) {
#if PHASECONV_TMA_HOST
  if (fold < 1 || fold > 32 || cols % fold != 0 || box_cols % fold != 0)
    return cudaErrorInvalidValue;
  // a row's columns in lines of `fold` 16-byte vectors: (8 fold, cols / fold, rows)
  const cuuint64_t dims[3] = {(cuuint64_t)(8 * fold), (cuuint64_t)(cols / fold),
                              (cuuint64_t)rows};
  const cuuint64_t strides[2] = {(cuuint64_t)(16 * fold), (cuuint64_t)cols * 16};
  const cuuint32_t box[3] = {(cuuint32_t)(8 * fold), (cuuint32_t)(box_cols / fold),
                             (cuuint32_t)box_rows};
  const cuuint32_t step[3] = {1, 1, 1};
  return encode_tiled(map, base, 3, dims, strides, box, step, CU_TENSOR_MAP_SWIZZLE_NONE);
#else
  (void)map; (void)base; (void)rows; (void)cols; (void)box_cols; (void)box_rows; (void)fold;
  return cudaErrorNotSupported;
#endif
}

cudaError_t phase_conv_tma_encode_weight_cl(PhaseConvTensorMap* map, const void* base,
                                            int64_t c_in, int64_t cout_g, const int64_t* kernel,
                                            const int64_t* strides, int box_co, int box_ci) {
#if PHASECONV_TMA_HOST
  if ((box_co != 64 && box_co != 32) || box_ci < 1 || box_ci > 256) return cudaErrorInvalidValue;
  // innermost first: C_out/g, kW, kH, kD, C_in (a channels_last_3d weight's order); strides
  // in bytes of dims 1-4
  const cuuint64_t dims[5] = {(cuuint64_t)cout_g, (cuuint64_t)kernel[2], (cuuint64_t)kernel[1],
                              (cuuint64_t)kernel[0], (cuuint64_t)c_in};
  const cuuint64_t bytes[4] = {(cuuint64_t)strides[3] * 2, (cuuint64_t)strides[2] * 2,
                               (cuuint64_t)strides[1] * 2, (cuuint64_t)strides[0] * 2};
  const cuuint32_t box[5] = {(cuuint32_t)box_co, 1, 1, 1, (cuuint32_t)box_ci};
  const cuuint32_t step[5] = {1, 1, 1, 1, 1};
  return encode_tiled(map, base, 5, dims, bytes, box, step,
                      box_co == 64 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B);
#else
  (void)map; (void)base; (void)c_in; (void)cout_g; (void)kernel; (void)strides; (void)box_co;
  (void)box_ci;
  return cudaErrorNotSupported;
#endif
}

#if PHASECONV_TMA_HOST
namespace phaseconv {

// ---------------------------------------------------------------- box copy (tests)
// Block b loads the box at coords[5 b .. 5 b + 4] (c, w, h, d, n) into shared memory through
// one barrier and copies the shared-memory bytes as they landed (swizzled) to
// out[b * box_bytes ...]: what a TMA loader hands its wgmma descriptors, for tests to read.
__global__ void __launch_bounds__(128) tma_box_copy_kernel(const __grid_constant__
                                                           PhaseConvTensorMap map,
                                                           const int* __restrict__ coords,
                                                           int4* __restrict__ out,
                                                           int box_bytes) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ uint64_t bar;
  // the 128-byte swizzle's 8-row atoms: 1024-byte alignment (the launcher adds the slack)
  const uint32_t base = phaseconv_tma::smem_addr(smem_raw);
  unsigned char* box = smem_raw + (((base + 1023u) & ~1023u) - base);
  const int* at = coords + 5 * (int64_t)blockIdx.x;
  if (threadIdx.x == 0) phaseconv_tma::bar_init(&bar, 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    phaseconv_tma::bar_arrive_expect(&bar, (uint32_t)box_bytes);
    phaseconv_tma::load_box(box, map, &bar, at[0], at[1], at[2], at[3], at[4]);
  }
  phaseconv_tma::bar_wait(&bar, 0);
  const int4* src = reinterpret_cast<const int4*>(box);
  int4* dst = out + (int64_t)blockIdx.x * (box_bytes / 16);
  for (int i = threadIdx.x; i < box_bytes / 16; i += blockDim.x) dst[i] = src[i];
}

}  // namespace phaseconv

cudaError_t phase_conv_tma_box_copy(const void* x, int64_t n, int64_t d, int64_t h, int64_t w,
                                    int64_t c, int box_c, int box_w, int box_h, int box_d,
                                    const int* coords, int boxes, void* out,
                                    cudaStream_t stream) {
  PhaseConvTensorMap map;
  const cudaError_t err =
      phase_conv_tma_encode_box(&map, x, n, d, h, w, c, box_c, box_w, box_h, box_d);
  if (err != cudaSuccess || boxes == 0) return err;
  const int box_bytes = box_c * 2 * box_w * box_h * box_d;
  return phaseconv::launch_kernel(phaseconv::tma_box_copy_kernel, boxes, 128,
                                  (size_t)box_bytes + 1024, stream, map, coords,
                                  reinterpret_cast<int4*>(out), box_bytes);
}
#else
cudaError_t phase_conv_tma_box_copy(const void*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                    int, int, int, int, const int*, int, void*, cudaStream_t) {
  return cudaErrorNotSupported;
}
#endif
