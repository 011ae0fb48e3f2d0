// phaseconv: the exact value of one element, from its real (input, tap) pairs only.
//
// The fast kernels stage the zero padding (and zero-filled channel and tap blocks) and let it
// meet the other operand, and float32 splits every operand for 3xTF32.  A product 0 * finite
// adds nothing, so an element that comes out finite is exact.  One that comes out Inf or NaN
// met a non-finite value somewhere: maybe only through the padding (0 * Inf = NaN) or the
// split (Inf - tf32(Inf) = NaN).  Such an element is recomputed here, from the definition,
// reading every operand through its own strides, so that NaN and Inf reach exactly the
// elements whose real pairs hold them, as torch's forward does.
//
// The hot kernels only note that they stored a non-finite element (an exponent test per
// element, or-ed into a register, and at the end one store of 1 to a per-call flag that the
// weight gather zeroes), and a fix-up kernel launched after them recomputes the non-finite
// elements when the flag is set: a call inside the hot kernels would cost them registers
// even when never taken.  The weight gradient's reduction recomputes in place, in a second
// pass over a thread's elements that runs only when one of them is not finite.
//
// This header includes only CUDA's own headers, so it builds without torch.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "phase_conv_plan.h"

#ifdef __CUDACC__
#include "phase_conv_dtype.cuh"
#include "phase_conv_launch.cuh"

// A kernel that hands its PhaseConvExact parameter to exact_element (which takes it by
// reference) marks it PHASECONV_GRID_CONSTANT: the reference then points into parameter memory.
// Without it nvcc copies the ~300-byte struct to every thread's stack at kernel entry, taken or
// not: 78 MB of local stores for a reduction of 1024 blocks.
#if __CUDACC_VER_MAJOR__ > 11 || (__CUDACC_VER_MAJOR__ == 11 && __CUDACC_VER_MINOR__ >= 7)
#define PHASECONV_GRID_CONSTANT __grid_constant__
#else
#define PHASECONV_GRID_CONSTANT
#endif

namespace phaseconv_exact {

// Finite: the exponent bits are not all ones (integer tests: cheap in an epilogue).
template <typename T>
__device__ __forceinline__ bool finite_value(T v);
template <>
__device__ __forceinline__ bool finite_value<float>(float v) {
  return (__float_as_uint(v) & 0x7f800000u) != 0x7f800000u;
}
template <>
__device__ __forceinline__ bool finite_value<double>(double v) {
  return isfinite(v);
}
template <>
__device__ __forceinline__ bool finite_value<__half>(__half v) {
  return (__half_as_ushort(v) & 0x7c00u) != 0x7c00u;
}
template <>
__device__ __forceinline__ bool finite_value<__nv_bfloat16>(__nv_bfloat16 v) {
  return (*reinterpret_cast<const unsigned short*>(&v) & 0x7f80u) != 0x7f80u;
}

// A 16-bit type's exponent field, twice (both halves of a 32-bit word), and the lowest bit
// of that field twice: a field of all ones plus its lowest bit carries into the bit above it
// (the sign's, cleared by the mask), a smaller one does not.
template <typename T> struct ExponentPair;
template <> struct ExponentPair<__half> {
  static constexpr uint32_t mask = 0x7c007c00u, low = 0x04000400u;
};
template <> struct ExponentPair<__nv_bfloat16> {
  static constexpr uint32_t mask = 0x7f807f80u, low = 0x00800080u;
};

// Every element of a vector store (V: uint4 or uint32_t holding elements of T) is finite;
// 16-bit elements a word at a time (three integer operations a word, no per-element
// extraction).
template <typename T, typename V>
__device__ __forceinline__ bool all_finite(V v) {
  if constexpr (sizeof(T) == 2 && sizeof(V) % 4 == 0) {
    const uint32_t* w = reinterpret_cast<const uint32_t*>(&v);
    uint32_t carry = 0;
#pragma unroll
    for (int i = 0; i < (int)(sizeof(V) / 4); ++i)
      carry |= (w[i] & ExponentPair<T>::mask) + ExponentPair<T>::low;
    return (carry & 0x80008000u) == 0;
  } else {
    constexpr int N = sizeof(V) / sizeof(T);
    const T* t = reinterpret_cast<const T*>(&v);
    bool finite = true;
#pragma unroll
    for (int i = 0; i < N; ++i) finite = finite && finite_value(t[i]);
    return finite;
  }
}

// The input index that output o meets through tap k along one axis, or -1.
__device__ __forceinline__ int64_t input_of(int64_t o, int64_t k, const PhaseConvExact& e,
                                           int axis) {
  const int64_t t = o + e.p[axis] - k * e.d[axis];
  if (t < 0 || t % e.s[axis] != 0) return -1;
  const int64_t i = t / e.s[axis];
  return i < e.in[axis] ? i : -1;
}

// The output index that input i meets through tap k along one axis, or -1.
__device__ __forceinline__ int64_t output_of(int64_t i, int64_t k, const PhaseConvExact& e,
                                            int axis) {
  const int64_t o = i * e.s[axis] - e.p[axis] + k * e.d[axis];
  return o >= 0 && o < e.out[axis] ? o : -1;
}

__device__ __forceinline__ int64_t offset5(const int64_t* st, int64_t a0, int64_t a1,
                                           int64_t a2, int64_t a3, int64_t a4) {
  return a0 * st[0] + a1 * st[1] + a2 * st[2] + a3 * st[3] + a4 * st[4];
}

// Element `off` of the launch's result (see PhaseConvExactMode), summed in a fixed order.
template <typename T>
__device__ __noinline__ T exact_element(const PhaseConvExact& e, int64_t off) {
  typedef typename phaseconv_dtype::AccOf<T>::type A;
  using phaseconv_dtype::from_acc;
  using phaseconv_dtype::to_acc;
  const T* a = static_cast<const T*>(e.a);
  const T* b = static_cast<const T*>(e.b);
  const int64_t cin_g = e.c_in / e.groups, cout_g = e.c_out / e.groups;
  A acc = A(0);
  if (e.mode == PHASECONV_EXACT_FORWARD) {
    int64_t r = off;
    const int64_t ow = r % e.out[2]; r /= e.out[2];
    const int64_t oh = r % e.out[1]; r /= e.out[1];
    const int64_t od = r % e.out[0]; r /= e.out[0];
    const int64_t oc = r % e.c_out, n = r / e.c_out;
    const int64_t g = oc / cout_g, co = oc - g * cout_g;
    if (e.bias != nullptr) acc = to_acc<A>(static_cast<const T*>(e.bias)[oc]);
    for (int64_t kd = 0; kd < e.k[0]; ++kd) {
      const int64_t id = input_of(od, kd, e, 0);
      if (id < 0) continue;
      for (int64_t kh = 0; kh < e.k[1]; ++kh) {
        const int64_t ih = input_of(oh, kh, e, 1);
        if (ih < 0) continue;
        for (int64_t kw = 0; kw < e.k[2]; ++kw) {
          const int64_t iw = input_of(ow, kw, e, 2);
          if (iw < 0) continue;
          for (int64_t ci = 0; ci < cin_g; ++ci) {
            const int64_t c = g * cin_g + ci;
            acc = fma(to_acc<A>(a[offset5(e.as, n, c, id, ih, iw)]),
                      to_acc<A>(b[offset5(e.bs, c, co, kd, kh, kw)]), acc);
          }
        }
      }
    }
  } else if (e.mode == PHASECONV_EXACT_GRAD_INPUT) {
    int64_t r = off;
    const int64_t iw = r % e.in[2]; r /= e.in[2];
    const int64_t ih = r % e.in[1]; r /= e.in[1];
    const int64_t id = r % e.in[0]; r /= e.in[0];
    const int64_t c = r % e.c_in, n = r / e.c_in;
    const int64_t g = c / cin_g;
    for (int64_t kd = 0; kd < e.k[0]; ++kd) {
      const int64_t od = output_of(id, kd, e, 0);
      if (od < 0) continue;
      for (int64_t kh = 0; kh < e.k[1]; ++kh) {
        const int64_t oh = output_of(ih, kh, e, 1);
        if (oh < 0) continue;
        for (int64_t kw = 0; kw < e.k[2]; ++kw) {
          const int64_t ow = output_of(iw, kw, e, 2);
          if (ow < 0) continue;
          for (int64_t co = 0; co < cout_g; ++co)
            acc = fma(to_acc<A>(a[offset5(e.as, n, g * cout_g + co, od, oh, ow)]),
                      to_acc<A>(b[offset5(e.bs, c, co, kd, kh, kw)]), acc);
        }
      }
    }
  } else {  // PHASECONV_EXACT_GRAD_WEIGHT: off is the logical element (c, co, kd, kh, kw)
    int64_t r = off;
    const int64_t kw = r % e.k[2]; r /= e.k[2];
    const int64_t kh = r % e.k[1]; r /= e.k[1];
    const int64_t kd = r % e.k[0]; r /= e.k[0];
    const int64_t co = r % cout_g, c = r / cout_g;
    const int64_t oc = (c / cin_g) * cout_g + co;
    for (int64_t n = 0; n < e.n; ++n)
      for (int64_t id = 0; id < e.in[0]; ++id) {
        const int64_t od = output_of(id, kd, e, 0);
        if (od < 0) continue;
        for (int64_t ih = 0; ih < e.in[1]; ++ih) {
          const int64_t oh = output_of(ih, kh, e, 1);
          if (oh < 0) continue;
          for (int64_t iw = 0; iw < e.in[2]; ++iw) {
            const int64_t ow = output_of(iw, kw, e, 2);
            if (ow < 0) continue;
            acc = fma(to_acc<A>(a[offset5(e.as, n, c, id, ih, iw)]),
                      to_acc<A>(b[offset5(e.bs, n, oc, od, oh, ow)]), acc);
          }
        }
      }
  }
  return from_acc<T>(acc);
}

// The fix-up (and the weight gradient's channels-last reduction) is launched as a
// programmatic dependent of the hot kernel on sm_90 (see launch_dependent): its blocks may
// start once every block of the hot kernel has started, and wait in griddepcontrol.wait for
// the hot kernel to complete and its stores to be visible.  So its launch and its blocks'
// start overlap the hot kernel's last wave instead of following it.  A hot kernel calls
// let_dependents_start() first thing; both instructions are no-ops where the launch did not
// ask for it.
__device__ __forceinline__ void let_dependents_start() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void wait_for_hot_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// After a hot kernel: nothing when its flag is clear, else every non-finite element of out
// (numel elements, the layout of e.mode) recomputed from its real pairs.
template <typename T>
__global__ void __launch_bounds__(256)
    fixup_kernel(const PHASECONV_GRID_CONSTANT PhaseConvExact e, T* out, int64_t numel) {
  wait_for_hot_kernel();
  if (*reinterpret_cast<volatile const int*>(e.flag) == 0) return;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < numel;
       i += (int64_t)gridDim.x * blockDim.x) {
    if (finite_value(out[i])) continue;
    int64_t off = i;
    if (e.out_channels_last) {  // storage (n, d, h, w, c) -> logical (n, c, d, h, w)
      // (the input gradient's out is grad_x: C_in channels over the input's voxels)
      const bool gi = e.mode == PHASECONV_EXACT_GRAD_INPUT;
      const int64_t ch = gi ? e.c_in : e.c_out;
      const int64_t* sp = gi ? e.in : e.out;
      const int64_t c = i % ch, pix = i / ch;
      const int64_t spatial = sp[0] * sp[1] * sp[2];
      off = ((pix / spatial) * ch + c) * spatial + pix % spatial;
    }
    out[i] = exact_element<T>(e, off);
  }
}

// *allowed: the fix-up may be a programmatic dependent launch.  That needs sm_90 and a CUDA
// 12 runtime (torch's CUDA 11 builds ship an 11.7 runtime without cudaLaunchKernelEx, so a
// build with CUDA 11 headers never asks); a stream being captured into a graph takes the
// plain launch (capturing such launches needs a newer toolkit than the engine's oldest).
inline cudaError_t dependent_launch_allowed(cudaStream_t stream, bool* allowed) {
  *allowed = false;
#if CUDART_VERSION < 12000
  (void)stream;
  return cudaSuccess;
#else
  int device = 0, major = 0;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err == cudaSuccess) err = cudaStreamIsCapturing(stream, &capture);
  *allowed = err == cudaSuccess && major >= 9 && capture == cudaStreamCaptureStatusNone;
  return err;
#endif
}

// kernel<<<blocks, threads, smem, stream>>>(args...), as a programmatic dependent of the
// kernel before it where dependent_launch_allowed says so: the kernel then waits in
// wait_for_hot_kernel() before it reads what the one before wrote.  Dynamic shared memory
// past 48 KB is opted in first (phaseconv::launch_kernel).
template <typename... Params, typename... Args>
cudaError_t launch_dependent(void (*kernel)(Params...), int64_t blocks, int threads,
                             size_t smem, cudaStream_t stream, const Args&... args) {
  bool dependent = false;
  const cudaError_t err = dependent_launch_allowed(stream, &dependent);
  if (err != cudaSuccess) return err;
#if CUDART_VERSION >= 12000
  if (dependent) {
    cudaLaunchAttribute attribute = {};
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = 1;
    return phaseconv::launch_kernel_with(attribute, kernel, blocks, threads, smem, stream,
                                         args...);
  }
#endif
  return phaseconv::launch_kernel(kernel, blocks, threads, smem, stream, args...);
}

template <typename T>
cudaError_t launch_fixup(const PhaseConvExact& e, void* out, int64_t numel,
                         cudaStream_t stream) {
  if (numel == 0) return cudaSuccess;
  if (e.flag == nullptr) return cudaErrorInvalidValue;
  int64_t blocks = (numel + 255) / 256;
  if (blocks > 32) blocks = 32;  // few blocks: on finite data each only reads the flag
  return launch_dependent(fixup_kernel<T>, blocks, 256, 0, stream, e, static_cast<T*>(out),
                          numel);
}

}  // namespace phaseconv_exact
#endif
