// phaseconv: dtype helpers shared by the CUDA kernels (forward and backward).  CUDA headers
// only.  Accumulation is fp32 for float16/bfloat16/float32 and fp64 for double.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace phaseconv_dtype {

template <typename T> struct AccOf { typedef float type; };
template <> struct AccOf<double> { typedef double type; };

template <typename A, typename T> __device__ __forceinline__ A to_acc(T v) { return (A)v; }
template <> __device__ __forceinline__ float to_acc<float, __half>(__half v) {
  return __half2float(v);
}
template <> __device__ __forceinline__ float to_acc<float, __nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <typename T, typename A> __device__ __forceinline__ T from_acc(A v) { return (T)v; }
template <> __device__ __forceinline__ __half from_acc<__half, float>(float v) {
  return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T> __device__ __forceinline__ T ldg(const T* p) { return __ldg(p); }
template <> __device__ __forceinline__ __half ldg<__half>(const __half* p) {
  unsigned short r = __ldg(reinterpret_cast<const unsigned short*>(p));
  return __ushort_as_half(r);
}
template <> __device__ __forceinline__ __nv_bfloat16 ldg<__nv_bfloat16>(const __nv_bfloat16* p) {
  unsigned short r = __ldg(reinterpret_cast<const unsigned short*>(p));
  __nv_bfloat16 out;
  *reinterpret_cast<unsigned short*>(&out) = r;
  return out;
}

__device__ __forceinline__ int64_t ldg_i64(const int64_t* p) {
  return (int64_t)__ldg(reinterpret_cast<const long long*>(p));
}

// Outputs of the phase with first output r along an axis of `out` outputs and stride s.
__device__ __forceinline__ int axis_count(int out, int r, int s) {
  return out > r ? (out - r + s - 1) / s : 0;
}

}  // namespace phaseconv_dtype
