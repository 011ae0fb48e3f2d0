// phaseconv forward, naive kernel: one thread per output (or, in grad-input mode, per
// grad_x element), summing only the taps that meet a real input: exact, and it covers any
// layer whose tiles do not fit in shared memory (huge dilated kernels).
#include "phase_conv_fwd_common.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace phaseconv {

// ---------------------------------------------------------------- naive kernel
constexpr int kNaiveGiRun = 8;  // grad-input mode: grad_x channels a thread, at most

struct NaiveArgs : FwdGeometry {
  const void* w;
  int64_t total;
  // grad-input mode (naive_bwd_input_kernel), as in MmaArgs
  const int64_t* sub_table;
  int nsub;
  int isd, ish, isw;
};

template <typename T>
__global__ void __launch_bounds__(256) naive_kernel(const NaiveArgs a) {
  typedef typename AccOf<T>::type A;
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ wt = static_cast<const T*>(a.w);
  const T* __restrict__ bias = static_cast<const T*>(a.bias);
  T* __restrict__ y = static_cast<T*>(a.y);
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < a.total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    int64_t r = idx;
    const int ow = (int)(r % a.out_w); r /= a.out_w;
    const int oh = (int)(r % a.out_h); r /= a.out_h;
    const int od = (int)(r % a.out_d); r /= a.out_d;
    const int oc = (int)(r % a.c_out);
    const int64_t n = r / a.c_out;
    const int g = oc / a.cout_g, co = oc - g * a.cout_g;
    const int rd = od % a.sd, rh = oh % a.sh, rw = ow % a.sw;
    const int jd = od / a.sd, jh = oh / a.sh, jw = ow / a.sw;
    const int ph = (rd * a.sh + rh) * a.sw + rw;
    const int64_t* e = a.table + (int64_t)ph * PHASECONV_TABLE_STRIDE;
    const int Td = (int)e[PT_TAPS_D], Th = (int)e[PT_TAPS_H], Tw = (int)e[PT_TAPS_W];
    const int offd = (int)e[PT_OFF_D], offh = (int)e[PT_OFF_H], offw = (int)e[PT_OFF_W];
    const int64_t wofs = e[PT_WOFS];
    const int taps = Td * Th * Tw;
    A acc = bias != nullptr ? to_acc<A>(bias[oc]) : A(0);
    for (int ci = 0; ci < a.cin_g; ++ci) {
      const int64_t xc = (n * a.c_in + (int64_t)g * a.cin_g + ci) * a.in_d;
      const int64_t wc = wofs + ((int64_t)g * a.cin_g + ci) * taps * a.cout_g + co;
      for (int td = 0; td < Td; ++td) {
        const int gd = jd + offd + td * a.pdd;
        if ((unsigned)gd >= (unsigned)a.in_d) continue;
        for (int th = 0; th < Th; ++th) {
          const int gh = jh + offh + th * a.pdh;
          if ((unsigned)gh >= (unsigned)a.in_h) continue;
          for (int tw = 0; tw < Tw; ++tw) {
            const int gw = jw + offw + tw * a.pdw;
            if ((unsigned)gw >= (unsigned)a.in_w) continue;
            const A xv = to_acc<A>(x[((xc + gd) * a.in_h + gh) * a.in_w + gw]);
            const A wv = to_acc<A>(wt[wc + (int64_t)((td * Th + th) * Tw + tw) * a.cout_g]);
            acc = fma(xv, wv, acc);
          }
        }
      }
    }
    y[idx] = from_acc<T>(acc);
  }
}

// grad-input mode of the naive kernel (phase_conv_bwd_input where the tensor-core kernel does
// not apply: float64, narrow or depthwise layers): a thread takes R grad_x channels of one
// group at one position (the group's last R may be fewer) and sums every sub-problem's taps
// and channels, in table order (deterministic), reading grad_y where the sub-problem's phase
// has an output (phase_conv_fwd.cuh).  Each grad_y load serves its R channels; each
// element's sum runs in the order of a thread an element, so R changes no bits.  Here x is
// grad_y and y grad_x; a.total counts (n, group, R-channel block, position) items.
template <typename T, int R>
__global__ void __launch_bounds__(256) naive_bwd_input_kernel(const NaiveArgs a) {
  typedef typename AccOf<T>::type A;
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ wt = static_cast<const T*>(a.w);
  T* __restrict__ y = static_cast<T*>(a.y);
  const int64_t in_plane = (int64_t)a.in_d * a.in_h * a.in_w;
  const int64_t out_plane = (int64_t)a.out_d * a.out_h * a.out_w;
  const int groups = a.c_out / a.cout_g, blocks = (a.cout_g + R - 1) / R;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < a.total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    int64_t r = idx;
    const int ow = (int)(r % a.out_w); r /= a.out_w;
    const int oh = (int)(r % a.out_h); r /= a.out_h;
    const int od = (int)(r % a.out_d); r /= a.out_d;
    const int cb = (int)(r % blocks); r /= blocks;
    const int g = (int)(r % groups);
    const int64_t n = r / groups;
    const int co0 = cb * R, valid = min(R, a.cout_g - co0);
    A acc[R];
#pragma unroll
    for (int u = 0; u < R; ++u) acc[u] = A(0);
    for (int q = 0; q < a.nsub; ++q) {
      const int64_t* e = a.sub_table + (int64_t)q * PHASECONV_TABLE_STRIDE;
      const int Td = (int)ldg_i64(e + PT_TAPS_D), Th = (int)ldg_i64(e + PT_TAPS_H),
                Tw = (int)ldg_i64(e + PT_TAPS_W);
      const int rd = (int)ldg_i64(e + PT_RES_D), rh = (int)ldg_i64(e + PT_RES_H),
                rw = (int)ldg_i64(e + PT_RES_W);
      const int offd = (int)ldg_i64(e + PT_OFF_D), offh = (int)ldg_i64(e + PT_OFF_H),
                offw = (int)ldg_i64(e + PT_OFF_W);
      const int64_t wofs = ldg_i64(e + PT_WOFS);
      const int bnd_d = axis_count(a.in_d, rd, a.isd), bnd_h = axis_count(a.in_h, rh, a.ish),
                bnd_w = axis_count(a.in_w, rw, a.isw);
      const int taps = Td * Th * Tw;
      for (int ci = 0; ci < a.cin_g; ++ci) {
        const T* xc = x + (n * a.c_in + (int64_t)g * a.cin_g + ci) * in_plane;
        const T* wc = wt + wofs + ((int64_t)g * a.cin_g + ci) * taps * a.cout_g + co0;
        for (int td = 0; td < Td; ++td) {
          const int jd = od + offd + td * a.pdd;
          if ((unsigned)jd >= (unsigned)bnd_d) continue;
          const int64_t xd = (int64_t)(rd + a.isd * jd) * a.in_h;
          for (int th = 0; th < Th; ++th) {
            const int jh = oh + offh + th * a.pdh;
            if ((unsigned)jh >= (unsigned)bnd_h) continue;
            const int64_t xh = (xd + rh + (int64_t)a.ish * jh) * a.in_w;
            for (int tw = 0; tw < Tw; ++tw) {
              const int jw = ow + offw + tw * a.pdw;
              if ((unsigned)jw >= (unsigned)bnd_w) continue;
              const A xv = to_acc<A>(ldg(xc + xh + rw + (int64_t)a.isw * jw));
              const T* wk = wc + (int64_t)((td * Th + th) * Tw + tw) * a.cout_g;
#pragma unroll
              for (int u = 0; u < R; ++u)
                if (u < valid) acc[u] = fma(xv, to_acc<A>(ldg(wk + u)), acc[u]);
            }
          }
        }
      }
    }
    T* yp = y + (n * a.c_out + (int64_t)g * a.cout_g + co0) * out_plane +
            ((int64_t)od * a.out_h + oh) * a.out_w + ow;
#pragma unroll
    for (int u = 0; u < R; ++u)
      if (u < valid) yp[u * out_plane] = from_acc<T>(acc[u]);
  }
}

// The naive kernel, forward or (nsub > 0) grad-input mode (a grid-stride loop).
template <typename T>
cudaError_t run_naive(const PhaseConvFwdParams& p, int64_t grid, cudaStream_t stream) {
  NaiveArgs a;
  set_geometry(a, p);
  a.w = p.weight;
  a.total = p.n * p.c_out * p.out_d * p.out_h * p.out_w;
  a.sub_table = p.sub_table; a.nsub = p.nsub;
  a.isd = (int)p.in_stride_d; a.ish = (int)p.in_stride_h; a.isw = (int)p.in_stride_w;
  if (grid < 1 || grid > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  if (p.nsub == 0) {
    naive_kernel<T><<<(unsigned)grid, 256, 0, stream>>>(a);
    return cudaGetLastError();
  }
  // grad-input mode: up to kNaiveGiRun grad_x channels a thread (a power of two below the
  // group's channels, so few of a thread's accumulators go unused)
  const int cout_g = a.cout_g;
  const int run = cout_g >= kNaiveGiRun ? kNaiveGiRun : cout_g >= 4 ? 4 : 1;
  a.total = p.n * p.groups * ((cout_g + run - 1) / run) * p.out_d * p.out_h * p.out_w;
  if (a.total == 0) return cudaSuccess;
  const int64_t need = (a.total + 255) / 256;
  const unsigned blocks = (unsigned)(grid < need ? grid : need);
  if (run == kNaiveGiRun)
    naive_bwd_input_kernel<T, kNaiveGiRun><<<blocks, 256, 0, stream>>>(a);
  else if (run == 4)
    naive_bwd_input_kernel<T, 4><<<blocks, 256, 0, stream>>>(a);
  else
    naive_bwd_input_kernel<T, 1><<<blocks, 256, 0, stream>>>(a);
  return cudaGetLastError();
}

template cudaError_t run_naive<float>(const PhaseConvFwdParams&, int64_t, cudaStream_t);
template cudaError_t run_naive<double>(const PhaseConvFwdParams&, int64_t, cudaStream_t);
template cudaError_t run_naive<__half>(const PhaseConvFwdParams&, int64_t, cudaStream_t);
template cudaError_t run_naive<__nv_bfloat16>(const PhaseConvFwdParams&, int64_t, cudaStream_t);

}  // namespace phaseconv
