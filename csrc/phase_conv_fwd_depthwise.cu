// phaseconv forward, depthwise kernel (C_in/groups = C_out/groups = 1): a streaming kernel.
// One warp per output row (n, c, od, oh), its lanes along W: the row's D and H phase (taps,
// first input row) is read once, each lane reads only its W phase's taps, and the 32 lanes
// store 32 consecutive outputs.  Only real (input, tap) pairs are summed, in a fixed order:
// exact as it is (no non-finite fix-up), one writer per output, deterministic.  Each output
// costs its phase's taps in FMAs: the tensor pipe has nothing to do here, the kernel moves the
// input once through L1/L2 and the output once to DRAM.
#include "phase_conv_fwd_common.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace phaseconv {

struct DepthwiseArgs : FwdGeometry {
  const void* w;
  int64_t rows;  // N * C_out * out_d * out_h
};

constexpr int kDwWarps = 8;  // warps (rows in flight) per block

template <typename T>
__global__ void __launch_bounds__(kDwWarps * 32) depthwise_kernel(const DepthwiseArgs a) {
  typedef typename AccOf<T>::type A;
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ wt = static_cast<const T*>(a.w);
  const T* __restrict__ bias = static_cast<const T*>(a.bias);
  T* __restrict__ y = static_cast<T*>(a.y);
  const int lane = threadIdx.x & 31;
  const int64_t step = (int64_t)gridDim.x * kDwWarps;
  for (int64_t row = (int64_t)blockIdx.x * kDwWarps + (threadIdx.x >> 5); row < a.rows;
       row += step) {
    int64_t r = row;
    const int oh = (int)(r % a.out_h); r /= a.out_h;
    const int od = (int)(r % a.out_d); r /= a.out_d;
    const int c = (int)(r % a.c_out);
    const int64_t n = r / a.c_out;
    const int rd = od % a.sd, rh = oh % a.sh;
    const int jd = od / a.sd, jh = oh / a.sh;
    // the D and H taps are the same for every W phase of this row (the table is separable)
    const int64_t* e_row = a.table + (int64_t)(rd * a.sh + rh) * a.sw * PHASECONV_TABLE_STRIDE;
    const int Td = (int)ldg_i64(e_row + PT_TAPS_D), Th = (int)ldg_i64(e_row + PT_TAPS_H);
    const int d0 = jd + (int)ldg_i64(e_row + PT_OFF_D);
    const int h0 = jh + (int)ldg_i64(e_row + PT_OFF_H);
    const T* xc = x + (n * a.c_in + c) * a.in_d * a.in_h * a.in_w;
    T* yrow = y + (((n * a.c_out + c) * a.out_d + od) * a.out_h + oh) * a.out_w;
    const A b = bias != nullptr ? to_acc<A>(ldg(bias + c)) : A(0);
    for (int ow = lane; ow < a.out_w; ow += 32) {
      const int rw = ow % a.sw, jw = ow / a.sw;
      const int64_t* e = e_row + (int64_t)rw * PHASECONV_TABLE_STRIDE;
      const int Tw = (int)ldg_i64(e + PT_TAPS_W);
      const int w0 = jw + (int)ldg_i64(e + PT_OFF_W);
      // packed block [groups][1][Td][Th][Tw][1]: the channel's taps are consecutive
      const T* wc = wt + ldg_i64(e + PT_WOFS) + (int64_t)c * Td * Th * Tw;
      A acc = b;
      for (int td = 0; td < Td; ++td) {
        const int id = d0 + td * a.pdd;
        if ((unsigned)id >= (unsigned)a.in_d) continue;
        for (int th = 0; th < Th; ++th) {
          const int ih = h0 + th * a.pdh;
          if ((unsigned)ih >= (unsigned)a.in_h) continue;
          const T* xr = xc + ((int64_t)id * a.in_h + ih) * a.in_w;
          const T* wr = wc + (td * Th + th) * Tw;
          for (int tw = 0; tw < Tw; ++tw) {
            const int iw = w0 + tw * a.pdw;
            if ((unsigned)iw >= (unsigned)a.in_w) continue;
            acc = fma(to_acc<A>(ldg(xr + iw)), to_acc<A>(ldg(wr + tw)), acc);
          }
        }
      }
      yrow[ow] = from_acc<T>(acc);
    }
  }
}

template <typename T>
cudaError_t run_depthwise(const PhaseConvFwdParams& p, int64_t grid, cudaStream_t stream) {
  if (p.c_in != p.groups || p.c_out != p.groups) return cudaErrorInvalidValue;
  if (grid < 1 || grid > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  DepthwiseArgs a;
  set_geometry(a, p);
  a.w = p.weight;
  a.rows = p.n * p.c_out * p.out_d * p.out_h;
  depthwise_kernel<T><<<(unsigned)grid, kDwWarps * 32, 0, stream>>>(a);
  return cudaGetLastError();
}

template cudaError_t run_depthwise<float>(const PhaseConvFwdParams&, int64_t, cudaStream_t);
template cudaError_t run_depthwise<double>(const PhaseConvFwdParams&, int64_t, cudaStream_t);
template cudaError_t run_depthwise<__half>(const PhaseConvFwdParams&, int64_t, cudaStream_t);
template cudaError_t run_depthwise<__nv_bfloat16>(const PhaseConvFwdParams&, int64_t, cudaStream_t);

}  // namespace phaseconv
