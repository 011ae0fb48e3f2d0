// phaseconv forward, depthwise kernel (C_in/groups = C_out/groups = 1): a streaming kernel.
// A block owns one (n, c) plane, a group of up to 128 W outputs and a share of the plane's
// row groups; a row group is kDwRows rows of one D and H phase (oh = rh + sh * j for
// consecutive j), which share their taps and weights.  Each warp takes one row group at a
// time, its lanes along W: what depends on W alone (phase residue, taps, first input column)
// is decoded once per block into registers, what depends on the row group once per group,
// and each weight load feeds kDwRows FMAs.  Only real (input, tap) pairs are summed, in tap
// order: exact as it is (no non-finite fix-up), one writer per output, deterministic.
#include "phase_conv_fwd_common.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace phaseconv {

struct DepthwiseArgs : FwdGeometry {
  const void* w;
  int groups_per_d;  // row groups per output D position: sum over rh of ceil(count / kDwRows)
};

template <typename T>
__global__ void __launch_bounds__(kDwWarps * 32) depthwise_kernel(const DepthwiseArgs a) {
  typedef typename AccOf<T>::type A;
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ wt = static_cast<const T*>(a.w);
  const T* __restrict__ bias = static_cast<const T*>(a.bias);
  T* __restrict__ y = static_cast<T*>(a.y);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t plane = blockIdx.x;  // n * C_out + c
  const int c = (int)(plane % a.c_out);
  const int64_t n = plane / a.c_out;
  const int in_hw = a.in_h * a.in_w;
  const T* xc = x + (n * a.c_in + c) * a.in_d * (int64_t)in_hw;
  T* yc = y + plane * a.out_d * (int64_t)a.out_h * a.out_w;
  const A b = bias != nullptr ? to_acc<A>(ldg(bias + c)) : A(0);

  // this lane's W outputs: residue, taps and first input column of each
  int ow[kDwChunks], rw[kDwChunks], tw_n[kDwChunks], w0[kDwChunks];
#pragma unroll
  for (int k = 0; k < kDwChunks; ++k) {
    ow[k] = blockIdx.y * (32 * kDwChunks) + k * 32 + lane;
    rw[k] = ow[k] % a.sw;
    const int64_t* e = a.table + (int64_t)rw[k] * PHASECONV_TABLE_STRIDE;  // (0, 0, rw)
    tw_n[k] = ow[k] < a.out_w ? (int)ldg_i64(e + PT_TAPS_W) : 0;
    w0[k] = ow[k] / a.sw + (int)ldg_i64(e + PT_OFF_W);
  }

  const int64_t groups = (int64_t)a.out_d * a.groups_per_d;
  for (int64_t grp = (int64_t)blockIdx.z * kDwWarps + warp; grp < groups;
       grp += (int64_t)gridDim.z * kDwWarps) {
    const int od = (int)(grp / a.groups_per_d);
    int q = (int)(grp - (int64_t)od * a.groups_per_d), rh = 0, cnt_h = 0;
    for (;; ++rh) {  // which H residue, and which group of its rows
      cnt_h = axis_count(a.out_h, rh, a.sh);
      const int ng = (cnt_h + kDwRows - 1) / kDwRows;
      if (q < ng) break;
      q -= ng;
    }
    const int j0 = q * kDwRows;  // the group's first H index within the phase
    const int rd = od % a.sd;
    const int64_t* e_row = a.table + (int64_t)(rd * a.sh + rh) * a.sw * PHASECONV_TABLE_STRIDE;
    const int Td = (int)ldg_i64(e_row + PT_TAPS_D), Th = (int)ldg_i64(e_row + PT_TAPS_H);
    const int d0 = od / a.sd + (int)ldg_i64(e_row + PT_OFF_D);
    const int h0 = j0 + (int)ldg_i64(e_row + PT_OFF_H);
    const int nrows = min(kDwRows, cnt_h - j0);
#pragma unroll
    for (int k = 0; k < kDwChunks; ++k) {
      if (ow[k] >= a.out_w) continue;
      const int Tw = tw_n[k];
      // packed block [groups][1][Td][Th][Tw][1]: the channel's taps are consecutive
      const T* wc = wt + ldg_i64(e_row + rw[k] * PHASECONV_TABLE_STRIDE + PT_WOFS) +
                    (int64_t)c * Td * Th * Tw;
      A acc[kDwRows];
#pragma unroll
      for (int i = 0; i < kDwRows; ++i) acc[i] = b;
      for (int td = 0; td < Td; ++td) {
        const int id = d0 + td * a.pdd;
        if ((unsigned)id >= (unsigned)a.in_d) continue;
        const T* xd = xc + (int64_t)id * in_hw;
        for (int th = 0; th < Th; ++th) {
          const T* wr = wc + (td * Th + th) * Tw;
          const int ih = h0 + th * a.pdh;  // row i reads input row ih + i
          for (int tw = 0; tw < Tw; ++tw) {
            const int iw = w0[k] + tw * a.pdw;
            if ((unsigned)iw >= (unsigned)a.in_w) continue;
            const A wv = to_acc<A>(ldg(wr + tw));
            const T* xw = xd + iw;
#pragma unroll
            for (int i = 0; i < kDwRows; ++i) {
              if ((unsigned)(ih + i) < (unsigned)a.in_h)
                acc[i] = fma(to_acc<A>(ldg(xw + (int64_t)(ih + i) * a.in_w)), wv, acc[i]);
            }
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kDwRows; ++i) {
        if (i < nrows)
          yc[((int64_t)od * a.out_h + rh + (int64_t)a.sh * (j0 + i)) * a.out_w + ow[k]] =
              from_acc<T>(acc[i]);
      }
    }
  }
}

// grid: (N * C_out planes, W groups of 32 * kDwChunks outputs, shares of the row groups)
template <typename T>
cudaError_t run_depthwise(const PhaseConvFwdParams& p, const DepthwiseCfg& c,
                          cudaStream_t stream) {
  if (p.c_in != p.groups || p.c_out != p.groups || c.planes != p.n * p.c_out)
    return cudaErrorInvalidValue;
  if (c.planes < 1 || c.w_groups < 1 || c.groups_per_d < 1 || c.row_splits < 1)
    return cudaErrorInvalidConfiguration;
  DepthwiseArgs a;
  set_geometry(a, p);
  a.w = p.weight;
  a.groups_per_d = c.groups_per_d;
  const dim3 grid((unsigned)c.planes, (unsigned)c.w_groups, (unsigned)c.row_splits);
  depthwise_kernel<T><<<grid, kDwWarps * 32, 0, stream>>>(a);
  return cudaGetLastError();
}

template cudaError_t run_depthwise<float>(const PhaseConvFwdParams&, const DepthwiseCfg&,
                                          cudaStream_t);
template cudaError_t run_depthwise<double>(const PhaseConvFwdParams&, const DepthwiseCfg&,
                                          cudaStream_t);
template cudaError_t run_depthwise<__half>(const PhaseConvFwdParams&, const DepthwiseCfg&,
                                          cudaStream_t);
template cudaError_t run_depthwise<__nv_bfloat16>(const PhaseConvFwdParams&, const DepthwiseCfg&,
                                          cudaStream_t);

}  // namespace phaseconv
