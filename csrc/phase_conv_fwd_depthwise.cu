// phaseconv forward, depthwise kernel (C_in/groups = C_out/groups = 1): a streaming kernel.
// A block owns one (n, c) plane, a run of output D positions of one D phase and a tile of
// output rows and columns that holds whole H and W phases.  It stages in shared memory the
// input slab the block reads, as the accumulator type, column-major (a thread's rows are
// consecutive words), the channel's taps of its D phase and each (H, W) phase's decode; then
// each thread item is kDwRows rows of one H phase at one output column, computed for every D
// position of the run, so each weight read feeds kDwRows FMAs and each input read one, with
// no index arithmetic or bounds test inside the tap loops.  The slab's zero padding can meet
// a non-finite tap: such outputs are noted and recomputed by the fix-up
// (phase_conv_exact.cuh).  One writer per output, deterministic.
#include "phase_conv_fwd_common.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace phaseconv {

struct DepthwiseArgs : FwdGeometry {
  const void* w;
  DepthwiseCfg c;
  int lo_h, lo_w;  // first input offset over all phases' taps, per axis
};

// KT > 0: at most KT taps per H and W axis (loops unrolled, each tap's weight at a fixed
// place, the H taps of a column read once into a register window: phase dilation 1 in H)
template <typename T, int KT>
__global__ void __launch_bounds__(kDwThreads) depthwise_kernel(const DepthwiseArgs a) {
  phaseconv_exact::let_dependents_start();
  typedef typename AccOf<T>::type A;
  extern __shared__ __align__(16) unsigned char smem[];
  const int nph = a.sh * a.sw;
  int4* s_ph = reinterpret_cast<int4*>(smem);  // (taps_h, taps_w, slab row, slab column)
  A* s_w = reinterpret_cast<A*>(smem + nph * sizeof(int4));  // [nph][taps_stride]
  A* s_x = s_w + nph * a.c.taps_stride;                      // [slices][cols][pitch]
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ wt = static_cast<const T*>(a.w);
  const T* __restrict__ bias = static_cast<const T*>(a.bias);
  T* __restrict__ y = static_cast<T*>(a.y);
  const int tid = threadIdx.x;
  const int rd = blockIdx.z % a.sd, jd0 = (blockIdx.z / a.sd) * a.c.d_run;
  const int run = min(a.c.d_run, axis_count(a.out_d, rd, a.sd) - jd0);
  if (run <= 0) return;  // a shorter D phase
  const int64_t plane = blockIdx.x;  // n * C_out + c
  const int c = (int)(plane % a.c_out);
  const int64_t n = plane / a.c_out;
  const int tile_h = blockIdx.y / a.c.w_tiles, tile_w = blockIdx.y - tile_h * a.c.w_tiles;
  const int oh0 = tile_h * a.c.tile_h, ow0 = tile_w * a.c.tile_w;  // multiples of sh, sw
  const int jh0 = oh0 / a.sh, jw0 = ow0 / a.sw;

  // the block's D phase: its rows of the table are (rd, rh, rw) for every rh, rw
  const int64_t* e_d = a.table + (int64_t)rd * nph * PHASECONV_TABLE_STRIDE;
  const int Td = (int)ldg_i64(e_d + PT_TAPS_D);
  const int id0 = jd0 + (int)ldg_i64(e_d + PT_OFF_D);  // the slab's first input D slice
  for (int p = tid; p < nph; p += kDwThreads) {
    const int64_t* e = e_d + (int64_t)p * PHASECONV_TABLE_STRIDE;
    s_ph[p] = make_int4((int)ldg_i64(e + PT_TAPS_H), (int)ldg_i64(e + PT_TAPS_W),
                        (int)ldg_i64(e + PT_OFF_H) - a.lo_h, (int)ldg_i64(e + PT_OFF_W) - a.lo_w);
  }
  for (int i = tid; i < nph * a.c.taps_stride; i += kDwThreads) {
    const int p = i / a.c.taps_stride, t = i - p * a.c.taps_stride;
    const int64_t* e = e_d + (int64_t)p * PHASECONV_TABLE_STRIDE;
    const int Th = (int)ldg_i64(e + PT_TAPS_H), Tw = (int)ldg_i64(e + PT_TAPS_W);
    // packed block [groups][1][Td][Th][Tw][1]: the channel's taps are consecutive
    const T* wc = wt + ldg_i64(e + PT_WOFS) + (int64_t)c * Td * Th * Tw;
    A v = A(0);
    if constexpr (KT > 0) {  // [Td][KT][KT], zeros past the phase's taps
      const int td = t / (KT * KT), th = (t / KT) % KT, tw = t % KT;
      if (td < Td && th < Th && tw < Tw) v = to_acc<A>(ldg(wc + (td * Th + th) * Tw + tw));
    } else if (t < Td * Th * Tw) {
      v = to_acc<A>(ldg(wc + t));
    }
    s_w[i] = v;
  }
  // the slab: input slices id0.., rows jh0 + lo_h.., columns jw0 + lo_w.., zero outside
  const int in_hw = a.in_h * a.in_w;
  const T* xc = x + (n * a.c_in + c) * a.in_d * (int64_t)in_hw;
  const int ih_lo = jh0 + a.lo_h, iw_lo = jw0 + a.lo_w;
  const int slices = run + (Td - 1) * a.pdd;
  const int lane = tid & 31, warp = tid >> 5;
  for (int sl = 0; sl < slices; ++sl) {
    const int id = id0 + sl;
    const bool slice_in = (unsigned)id < (unsigned)a.in_d;
    for (int r = warp; r < a.c.rows; r += kDwThreads / 32) {
      const int ih = ih_lo + r;
      const bool row_in = slice_in && (unsigned)ih < (unsigned)a.in_h;
      const T* xr = xc + (int64_t)id * in_hw + (int64_t)ih * a.in_w;
      A* sr = s_x + sl * a.c.cols * a.c.pitch + r;
      for (int col = lane; col < a.c.cols; col += 32) {
        const int iw = iw_lo + col;
        A v = A(0);
        if (row_in && (unsigned)iw < (unsigned)a.in_w) v = to_acc<A>(ldg(xr + iw));
        sr[col * a.c.pitch] = v;
      }
    }
  }
  __syncthreads();

  const A b = bias != nullptr ? to_acc<A>(ldg(bias + c)) : A(0);
  const int bw = min(a.c.tile_w, a.out_w - ow0);  // this tile's output columns
  const int items = bw * a.sh * a.c.row_groups;
  const int col_step = a.pdw * a.c.pitch, slice_step = a.c.cols * a.c.pitch;
  const int64_t out_hw = (int64_t)a.out_h * a.out_w;
  T* yp = y + plane * a.out_d * out_hw;
  bool nonfinite = false;  // a stored element is Inf or NaN
  for (int q = tid; q < items; q += kDwThreads) {
    const int rg = q / bw, owl = q - rg * bw;
    const int g = rg / a.sh, rh = rg - g * a.sh;
    const int oh = oh0 + rh + a.sh * kDwRows * g;  // the item's first row
    if (oh >= a.out_h) continue;
    const int ow = ow0 + owl, wq = owl / a.sw, rw = owl - wq * a.sw;
    const int4 ph = s_ph[rh * a.sw + rw];
    const A* w_item = s_w + (rh * a.sw + rw) * a.c.taps_stride;
    const A* x_item = s_x + (wq + ph.w) * a.c.pitch + kDwRows * g + ph.z;
    T* y_item = yp + (int64_t)oh * a.out_w + ow;
    for (int m = 0; m < run; ++m) {
      A acc[kDwRows];
#pragma unroll
      for (int i = 0; i < kDwRows; ++i) acc[i] = b;
      if constexpr (KT > 0) {
        for (int td = 0; td < Td; ++td) {
          const int sl = m + td * a.pdd;
          if ((unsigned)(id0 + sl) >= (unsigned)a.in_d) continue;  // a slice of padding
          const A* xs = x_item + sl * slice_step;
          const A* wd = w_item + td * KT * KT;
#pragma unroll
          for (int tw = 0; tw < KT; ++tw) {
            if (tw < ph.y) {
              A xv[kDwRows + KT - 1];  // the column's rows for every H tap
#pragma unroll
              for (int k = 0; k < kDwRows + KT - 1; ++k) xv[k] = xs[tw * col_step + k];
#pragma unroll
              for (int th = 0; th < KT; ++th) {
                if (th < ph.x) {
                  const A wv = wd[th * KT + tw];
#pragma unroll
                  for (int i = 0; i < kDwRows; ++i) acc[i] = fma(xv[i + th], wv, acc[i]);
                }
              }
            }
          }
        }
      } else {
        const A* wp = w_item;
        for (int td = 0; td < Td; ++td) {
          const int sl = m + td * a.pdd;
          if ((unsigned)(id0 + sl) >= (unsigned)a.in_d) {  // a slice of padding
            wp += ph.x * ph.y;
            continue;
          }
          const A* xs = x_item + sl * slice_step;
          for (int th = 0; th < ph.x; ++th) {
            const A* xr = xs + th * a.pdh;
            for (int tw = 0; tw < ph.y; ++tw, xr += col_step) {
              const A wv = *wp++;
#pragma unroll
              for (int i = 0; i < kDwRows; ++i) acc[i] = fma(xr[i], wv, acc[i]);
            }
          }
        }
      }
      T* yo = y_item + (int64_t)(rd + a.sd * (jd0 + m)) * out_hw;
#pragma unroll
      for (int i = 0; i < kDwRows; ++i) {
        if (oh + a.sh * i < a.out_h) {
          const T out = from_acc<T>(acc[i]);
          nonfinite |= !phaseconv_exact::finite_value(out);
          yo[(int64_t)a.sh * i * a.out_w] = out;
        }
      }
    }
  }
  if (nonfinite) *a.ex.flag = 1;  // the fix-up recomputes those (phase_conv_exact.cuh)
}

template <typename T>
cudaError_t run_depthwise(const PhaseConvFwdParams& p, const DepthwiseCfg& c,
                          cudaStream_t stream) {
  if (p.c_in != p.groups || p.c_out != p.groups || c.planes != p.n * p.c_out)
    return cudaErrorInvalidValue;
  if (c.planes < 1 || c.h_tiles < 1 || c.w_tiles < 1 || c.d_run < 1 || c.d_chunks < 1 ||
      c.smem > kDwMaxSmem)
    return cudaErrorInvalidConfiguration;
  if (c.fixed_taps > 0 && (p.pdil_h != 1 || p.max_taps_h > c.fixed_taps ||
                           p.max_taps_w > c.fixed_taps))
    return cudaErrorInvalidConfiguration;
  DepthwiseArgs a;
  set_geometry(a, p);
  a.w = p.weight;
  a.c = c;
  a.lo_h = (int)p.union_lo_h;
  a.lo_w = (int)p.union_lo_w;
  const dim3 grid((unsigned)c.planes, (unsigned)(c.h_tiles * c.w_tiles),
                  (unsigned)(p.stride_d * c.d_chunks));
  switch (c.fixed_taps) {
    case 2: depthwise_kernel<T, 2><<<grid, kDwThreads, c.smem, stream>>>(a); break;
    case 4: depthwise_kernel<T, 4><<<grid, kDwThreads, c.smem, stream>>>(a); break;
    case 0: depthwise_kernel<T, 0><<<grid, kDwThreads, c.smem, stream>>>(a); break;
    default: return cudaErrorInvalidConfiguration;
  }
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
