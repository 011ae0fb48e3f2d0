// phaseconv backward, depthwise kernels (C_in/groups = C_out/groups = 1).
//
// Both gradients pair an input position i with grad_y at stride * i + delta_k, one delta per
// tap k (delta_k = k * dilation - padding, per axis): the input gradient sums
// w_k * grad_y[stride * i + delta_k] over the taps, the weight gradient sums
// x[i] * grad_y[stride * i + delta_k] over the positions.  A block owns a tile of input
// positions of one (n, c) plane and stages, as the accumulator type, the box of grad_y its
// taps read (zero outside grad_y), each box row split by W residue so that lanes on
// consecutive positions read consecutive words.  Every phase's taps (from the phase tables)
// become one list of box offsets, so a tap costs one shared load per position and no index
// arithmetic.  The box's zeros can meet a non-finite value: such results are recomputed from
// their real pairs (the fix-up after the input gradient, gw_reduce_kernel after the weight
// gradient).  One writer per element, sums in a fixed order: deterministic.
#include "phase_conv_bwd_depthwise.cuh"
#include "phase_conv_fwd_common.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace phaseconv {

struct DwBwdArgs {
  const void* x;         // weight gradient: the input
  const void* gy;        // grad_y
  const void* w;         // input gradient: the sub-problems' packed weight
  void* out;             // grad_x, or the weight gradient's workspace
  const int64_t* table;  // the sub-problem table, or the forward's phase table
  int rows;              // its rows
  int* flag;             // input gradient: set where a stored element is not finite
  int channels, nbatch;
  int x_d, x_h, x_w, y_d, y_h, y_w;
  int sd, sh, sw, pdd, pdh, pdw;
  int lo_d, lo_h, lo_w;  // -padding: the box's origin from stride * (first position)
  int64_t packed_elems;  // weight gradient: one workspace slice
  DwBwdCfg c;
};

// A tap of the input gradient: its weight and its box offset.
template <typename A> struct __align__(2 * sizeof(A)) DwTap {
  A w;
  int off;
};

// The box is stored column-major, [slice][column][row] with rows padded odd (hpitch) and the
// columns split by W residue (column j at word (j % stride_w) * box_cols + j / stride_w), so
// a thread's rows are words stride_h apart and lanes on consecutive positions hit distinct
// banks.  tap_offset: the word of grad_y at (rel_d, rel_h, rel_w) from the box origin of a
// tile's first position; a position (ld, lh, lw) of the tile adds pos_offset.
__device__ __forceinline__ int column_word(int j, int sw, int box_cols) {
  const int q = j / sw;
  return (j - q * sw) * box_cols + q;
}
__device__ __forceinline__ int tap_offset(const DwBwdArgs& a, int rel_d, int rel_h, int rel_w) {
  return (rel_d * a.c.ncols + column_word(rel_w, a.sw, a.c.box_cols)) * a.c.hpitch + rel_h;
}
__device__ __forceinline__ int pos_offset(const DwBwdArgs& a, int ld, int lh, int lw) {
  return (a.sd * ld * a.c.ncols + lw) * a.c.hpitch + a.sh * lh;
}

// Stages dn x hn x wn elements of `src` (a plane of pd x ph x pw) from (d0, h0, w0), zero
// outside it, as the accumulator type at dst[(d * ncols + column_word(w)) * hp + h]: a thread
// owns one column (wn <= kDwBwdThreads / 2) and every kDwBwdThreads / wn-th row, kDwBwdStageRows
// rows' loads in flight before their stores.
template <typename T, typename A>
__device__ __forceinline__ void stage_slab(A* dst, const T* __restrict__ src, int pd, int ph,
                                           int pw, int d0, int h0, int w0, int dn, int hn,
                                           int wn, int hp, int ncols, int sw, int box_cols) {
  constexpr int U = kDwBwdStageRows;
  const int rp = kDwBwdThreads / wn, j = threadIdx.x % wn, r0 = threadIdx.x / wn;
  if (r0 >= rp) return;
  const int rows = dn * hn, col = column_word(j, sw, box_cols) * hp;
  const bool col_in = (unsigned)(w0 + j) < (unsigned)pw;
  const int step_d = rp / hn, step_h = rp - step_d * hn;
  int bd = r0 / hn, bh = r0 - bd * hn;
  for (int r = r0; r < rows; r += U * rp) {
    A v[U];
    int word[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int gd = d0 + bd, gh = h0 + bh;
      const bool in = r + u * rp < rows && col_in && (unsigned)gd < (unsigned)pd &&
                      (unsigned)gh < (unsigned)ph;
      v[u] = in ? to_acc<A>(ldg(src + (int64_t)(gd * ph + gh) * pw + w0 + j)) : A(0);
      word[u] = bd * ncols * hp + col + bh;
      bh += step_h;
      bd += step_d;
      if (bh >= hn) {
        bh -= hn;
        ++bd;
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (r + u * rp < rows) dst[word[u]] = v[u];
  }
}

// The box of grad_y plane `gyc` for a tile whose first position is (d0, h0, w0).
template <typename T, typename A>
__device__ __forceinline__ void stage_box(A* s_box, const T* __restrict__ gyc,
                                          const DwBwdArgs& a, int d0, int h0, int w0) {
  stage_slab(s_box, gyc, a.y_d, a.y_h, a.y_w, a.sd * d0 + a.lo_d, a.sh * h0 + a.lo_h,
             a.sw * w0 + a.lo_w, a.c.box_d, a.c.box_h, a.c.box_w, a.c.hpitch, a.c.ncols, a.sw,
             a.c.box_cols);
}

// A tile's first position per axis, from its index within the plane.
struct DwTile {
  int d0, h0, w0;
};
__device__ __forceinline__ DwTile tile_origin(const DwBwdArgs& a, int tile) {
  const int tw = tile % a.c.w_tiles, r = tile / a.c.w_tiles;
  const int th = r % a.c.h_tiles, td = r / a.c.h_tiles;
  return DwTile{td * a.c.tile_d, th * a.c.tile_h, tw * a.c.tile_w};
}

// ---------------------------------------------------------------- the input gradient
// A thread item is kDwBwdRows rows of one column of the tile: each tap's (weight, offset)
// read feeds kDwBwdRows FMAs.  SH > 0: stride_h known at compile time (the rows' box words at
// fixed offsets).
template <typename T, int SH>
__global__ void __launch_bounds__(kDwBwdThreads) dw_grad_input_kernel(const DwBwdArgs a) {
  phaseconv_exact::let_dependents_start();
  typedef typename AccOf<T>::type A;
  extern __shared__ __align__(16) unsigned char smem[];
  DwTap<A>* s_tap = reinterpret_cast<DwTap<A>*>(smem);
  A* s_box = reinterpret_cast<A*>(smem + a.c.tap_bytes);
  const T* __restrict__ gy = static_cast<const T*>(a.gy);
  const T* __restrict__ wt = static_cast<const T*>(a.w);
  T* __restrict__ gx = static_cast<T*>(a.out);
  const int tid = threadIdx.x;
  const int sh = SH > 0 ? SH : a.sh;
  const int tiles = a.c.d_tiles * a.c.h_tiles * a.c.w_tiles;
  const int64_t plane = blockIdx.x / tiles;  // n * C + c
  const DwTile t0 = tile_origin(a, (int)(blockIdx.x - plane * tiles));
  const int c = (int)(plane % a.channels);

  // the tap list: sub-problem q's taps read grad_y at r_q + s * (i + off_q + t * pdil)
  int base = 0;
  for (int q = 0; q < a.rows; ++q) {
    const int64_t* e = a.table + (int64_t)q * PHASECONV_TABLE_STRIDE;
    const int Td = (int)ldg_i64(e + PT_TAPS_D), Th = (int)ldg_i64(e + PT_TAPS_H),
              Tw = (int)ldg_i64(e + PT_TAPS_W);
    const int nt = Td * Th * Tw;
    if (nt == 0) continue;
    const int rd = (int)ldg_i64(e + PT_RES_D) + a.sd * (int)ldg_i64(e + PT_OFF_D) - a.lo_d;
    const int rh = (int)ldg_i64(e + PT_RES_H) + a.sh * (int)ldg_i64(e + PT_OFF_H) - a.lo_h;
    const int rw = (int)ldg_i64(e + PT_RES_W) + a.sw * (int)ldg_i64(e + PT_OFF_W) - a.lo_w;
    // packed block [groups][1][taps][1]: the channel's taps are consecutive
    const T* wc = wt + ldg_i64(e + PT_WOFS) + (int64_t)c * nt;
    for (int t = tid; t < nt; t += kDwBwdThreads) {
      const int tw = t % Tw, th = (t / Tw) % Th, td = t / (Tw * Th);
      DwTap<A> tap;
      tap.w = to_acc<A>(ldg(wc + t));
      tap.off = tap_offset(a, rd + a.sd * a.pdd * td, rh + a.sh * a.pdh * th,
                           rw + a.sw * a.pdw * tw);
      s_tap[base + t] = tap;
    }
    base += nt;
  }
  const int taps = base;
  const int64_t y_plane = (int64_t)a.y_d * a.y_h * a.y_w;
  stage_box(s_box, gy + plane * y_plane, a, t0.d0, t0.h0, t0.w0);
  __syncthreads();

  const int groups = a.c.tile_h / kDwBwdRows;
  const int items = a.c.tile_d * groups * a.c.tile_w;
  T* gxp = gx + plane * ((int64_t)a.x_d * a.x_h * a.x_w);
  bool nonfinite = false;
  for (int q = tid; q < items; q += kDwBwdThreads) {
    const int lw = q % a.c.tile_w, r = q / a.c.tile_w;
    const int g = r % groups, ld = r / groups;
    const int id = t0.d0 + ld, ih = t0.h0 + kDwBwdRows * g, iw = t0.w0 + lw;
    if (id >= a.x_d || ih >= a.x_h || iw >= a.x_w) continue;
    const A* bp = s_box + pos_offset(a, ld, kDwBwdRows * g, lw);
    A acc[kDwBwdRows];
#pragma unroll
    for (int i = 0; i < kDwBwdRows; ++i) acc[i] = A(0);
#pragma unroll 4
    for (int j = 0; j < taps; ++j) {
      const DwTap<A> tap = s_tap[j];
      const A* b = bp + tap.off;
#pragma unroll
      for (int i = 0; i < kDwBwdRows; ++i) acc[i] = fma(b[i * sh], tap.w, acc[i]);
    }
    T* o = gxp + ((int64_t)id * a.x_h + ih) * a.x_w + iw;
#pragma unroll
    for (int i = 0; i < kDwBwdRows; ++i) {
      if (ih + i < a.x_h) {
        const T v = from_acc<T>(acc[i]);
        nonfinite |= !phaseconv_exact::finite_value(v);
        o[(int64_t)i * a.x_w] = v;
      }
    }
  }
  if (nonfinite) *a.flag = 1;  // the fix-up recomputes those (phase_conv_exact.cuh)
}

// ---------------------------------------------------------------- the weight gradient
// Warp w of a block sums taps chunk * kDwBwdWarpTaps * warps + w * kDwBwdWarpTaps + (0..7)
// over its split of the channel's tiles: a lane walks the tile's items (kDwBwdRows rows of a
// column), reads their inputs once and, per tap, kDwBwdRows box words.  The lanes' sums are
// added by a butterfly (every lane gets the same value) and lane 0 writes this split's slice
// of the packed gradient.
template <typename T, int SH>
__global__ void __launch_bounds__(kDwBwdThreads, kDwBwdGwBlocks) dw_grad_weight_kernel(const DwBwdArgs a) {
  typedef typename AccOf<T>::type A;
  constexpr int TJ = kDwBwdWarpTaps;
  extern __shared__ __align__(16) unsigned char smem[];
  int2* s_tap = reinterpret_cast<int2*>(smem);  // (box offset, packed element)
  A* s_box = reinterpret_cast<A*>(smem + a.c.tap_bytes);
  A* s_x = s_box + a.c.box_d * a.c.ncols * a.c.hpitch;  // [d][w][h], rows padded odd
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ gy = static_cast<const T*>(a.gy);
  A* __restrict__ ws = static_cast<A*>(a.out);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int sh = SH > 0 ? SH : a.sh;
  const int c = (int)(blockIdx.x % a.channels);
  const int rest = (int)(blockIdx.x / a.channels);
  const int chunk = rest % a.c.tap_chunks, split = rest / a.c.tap_chunks;

  // the tap list: phase p's tap t pairs input j + off + t * pdil with grad_y r + s * j
  int base = 0;
  for (int p = 0; p < a.rows; ++p) {
    const int64_t* e = a.table + (int64_t)p * PHASECONV_TABLE_STRIDE;
    const int Td = (int)ldg_i64(e + PT_TAPS_D), Th = (int)ldg_i64(e + PT_TAPS_H),
              Tw = (int)ldg_i64(e + PT_TAPS_W);
    const int nt = Td * Th * Tw;
    if (nt == 0) continue;
    const int rd = (int)ldg_i64(e + PT_RES_D) - a.sd * (int)ldg_i64(e + PT_OFF_D) - a.lo_d;
    const int rh = (int)ldg_i64(e + PT_RES_H) - a.sh * (int)ldg_i64(e + PT_OFF_H) - a.lo_h;
    const int rw = (int)ldg_i64(e + PT_RES_W) - a.sw * (int)ldg_i64(e + PT_OFF_W) - a.lo_w;
    const int wofs = (int)ldg_i64(e + PT_WOFS) + c * nt;  // [groups][1][taps][1]
    for (int t = tid; t < nt; t += kDwBwdThreads) {
      const int tw = t % Tw, th = (t / Tw) % Th, td = t / (Tw * Th);
      s_tap[base + t] = make_int2(tap_offset(a, rd - a.sd * a.pdd * td, rh - a.sh * a.pdh * th,
                                             rw - a.sw * a.pdw * tw),
                                  wofs + t);
    }
    base += nt;
  }
  const int j0 = (chunk * (kDwBwdThreads / 32) + warp) * TJ;
  const int njt = min(TJ, base - j0);  // this warp's taps (none: <= 0)

  const int tiles = a.c.d_tiles * a.c.h_tiles * a.c.w_tiles;
  const int64_t total = (int64_t)a.nbatch * tiles;
  const int64_t per = (total + a.c.splits - 1) / a.c.splits;
  const int64_t k_beg = (int64_t)split * per, k_end = min(total, k_beg + per);
  const int64_t x_plane = (int64_t)a.x_d * a.x_h * a.x_w;
  const int64_t y_plane = (int64_t)a.y_d * a.y_h * a.y_w;
  const int groups = a.c.tile_h / kDwBwdRows;
  const int items = a.c.tile_d * groups * a.c.tile_w;
  A acc[TJ];
#pragma unroll
  for (int j = 0; j < TJ; ++j) acc[j] = A(0);
  __syncthreads();  // the tap list

  for (int64_t k = k_beg; k < k_end; ++k) {
    const int64_t n = k / tiles;
    const DwTile t0 = tile_origin(a, (int)(k - n * tiles));
    const int64_t plane = n * a.channels + c;
    __syncthreads();  // the previous tile's readers are done
    stage_box(s_box, gy + plane * y_plane, a, t0.d0, t0.h0, t0.w0);
    stage_slab(s_x, x + plane * x_plane, a.x_d, a.x_h, a.x_w, t0.d0, t0.h0, t0.w0,
               a.c.tile_d, a.c.tile_h, a.c.tile_w, a.c.xpitch, a.c.tile_w, 1, a.c.tile_w);
    __syncthreads();
    if (njt <= 0) continue;  // warp-uniform; the barriers above are the block's
    for (int q = lane; q < items; q += 32) {
      const int lw = q % a.c.tile_w, r = q / a.c.tile_w;
      const int g = r % groups, ld = r / groups;
      if (t0.d0 + ld >= a.x_d || t0.w0 + lw >= a.x_w) continue;
      const int nrows = min(kDwBwdRows, a.x_h - (t0.h0 + kDwBwdRows * g));
      if (nrows <= 0) continue;
      const A* xs = s_x + (ld * a.c.tile_w + lw) * a.c.xpitch + kDwBwdRows * g;
      A xv[kDwBwdRows];
#pragma unroll
      for (int i = 0; i < kDwBwdRows; ++i) xv[i] = i < nrows ? xs[i] : A(0);
      const A* bp = s_box + pos_offset(a, ld, kDwBwdRows * g, lw);
#pragma unroll
      for (int j = 0; j < TJ; ++j) {
        if (j < njt) {
          const A* b = bp + s_tap[j0 + j].x;
#pragma unroll
          for (int i = 0; i < kDwBwdRows; ++i)
            if (i < nrows) acc[j] = fma(xv[i], b[i * sh], acc[j]);
        }
      }
    }
  }
  if (njt <= 0) return;
  A* slice = ws + (int64_t)split * a.packed_elems;
#pragma unroll
  for (int j = 0; j < TJ; ++j) {
    A v = acc[j];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0 && j < njt) slice[s_tap[j0 + j].y] = v;
  }
}

// ---------------------------------------------------------------- launchers
namespace {
cudaError_t check_cfg(const DwBwdCfg& c) {
  if (c.tile_d < 1 || c.tile_h < kDwBwdRows || c.tile_h % kDwBwdRows != 0 || c.tile_w < 1 ||
      c.tile_w > 32 || c.box_w > kDwBwdThreads / 2 || c.taps < 1 || c.taps > kDwBwdMaxTaps ||
      c.smem > (size_t)kDwMaxSmem || c.grid < 1 ||
      c.grid >= ((int64_t)1 << 31) || c.splits < 1 || c.tap_chunks < 1)
    return cudaErrorInvalidConfiguration;
  return cudaSuccess;
}

void set_sizes(DwBwdArgs& a, const PhaseConvExact& ex) {
  a.sd = (int)ex.s[0]; a.sh = (int)ex.s[1]; a.sw = (int)ex.s[2];
  a.lo_d = (int)-ex.p[0]; a.lo_h = (int)-ex.p[1]; a.lo_w = (int)-ex.p[2];
}
}  // namespace

template <typename T>
cudaError_t run_dw_grad_input(const PhaseConvFwdParams& p, const DwBwdCfg& c,
                              cudaStream_t stream) {
  // grad-input mode: x = grad_y, y = grad_x, c_in = C_out, c_out = C_in
  if (p.c_in != p.groups || p.c_out != p.groups || p.nsub < 1 || p.total_taps != c.taps ||
      c.grid != p.n * p.c_out * c.d_tiles * c.h_tiles * c.w_tiles)
    return cudaErrorInvalidValue;
  cudaError_t err = check_cfg(c);
  if (err != cudaSuccess) return err;
  DwBwdArgs a;
  a.x = nullptr; a.gy = p.x; a.w = p.weight; a.out = p.y;
  a.table = p.sub_table; a.rows = p.nsub; a.flag = p.exact.flag;
  a.channels = (int)p.c_out; a.nbatch = (int)p.n;
  a.x_d = (int)p.out_d; a.x_h = (int)p.out_h; a.x_w = (int)p.out_w;
  a.y_d = (int)p.in_d; a.y_h = (int)p.in_h; a.y_w = (int)p.in_w;
  a.pdd = (int)p.pdil_d; a.pdh = (int)p.pdil_h; a.pdw = (int)p.pdil_w;
  set_sizes(a, p.exact);
  a.packed_elems = 0;
  a.c = c;
  auto kernel = a.sh == 1   ? dw_grad_input_kernel<T, 1>
                : a.sh == 2 ? dw_grad_input_kernel<T, 2> : dw_grad_input_kernel<T, 0>;
  kernel<<<(unsigned)c.grid, kDwBwdThreads, c.smem, stream>>>(a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t run_dw_grad_weight(const PhaseConvBwdWeightParams& p, const DwBwdCfg& c,
                               cudaStream_t stream) {
  if (p.c_in != p.groups || p.c_out != p.groups || p.packed_elems != p.c_in * c.taps ||
      c.grid != p.c_in * c.tap_chunks * c.splits)
    return cudaErrorInvalidValue;
  cudaError_t err = check_cfg(c);
  if (err != cudaSuccess) return err;
  DwBwdArgs a;
  a.x = p.x; a.gy = p.grad_y; a.w = nullptr; a.out = p.workspace;
  a.table = p.table; a.rows = (int)(p.stride_d * p.stride_h * p.stride_w); a.flag = nullptr;
  a.channels = (int)p.c_in; a.nbatch = (int)p.n;
  a.x_d = (int)p.in_d; a.x_h = (int)p.in_h; a.x_w = (int)p.in_w;
  a.y_d = (int)p.out_d; a.y_h = (int)p.out_h; a.y_w = (int)p.out_w;
  a.pdd = (int)p.pdil_d; a.pdh = (int)p.pdil_h; a.pdw = (int)p.pdil_w;
  set_sizes(a, p.exact);
  a.packed_elems = p.packed_elems;
  a.c = c;
  auto kernel = a.sh == 1   ? dw_grad_weight_kernel<T, 1>
                : a.sh == 2 ? dw_grad_weight_kernel<T, 2> : dw_grad_weight_kernel<T, 0>;
  kernel<<<(unsigned)c.grid, kDwBwdThreads, c.smem, stream>>>(a);
  return cudaGetLastError();
}

#define PHASECONV_DW_BWD(T)                                                                   \
  template cudaError_t run_dw_grad_input<T>(const PhaseConvFwdParams&, const DwBwdCfg&,       \
                                            cudaStream_t);                                    \
  template cudaError_t run_dw_grad_weight<T>(const PhaseConvBwdWeightParams&, const DwBwdCfg&, \
                                             cudaStream_t);
PHASECONV_DW_BWD(float)
PHASECONV_DW_BWD(double)
PHASECONV_DW_BWD(__half)
PHASECONV_DW_BWD(__nv_bfloat16)
#undef PHASECONV_DW_BWD

}  // namespace phaseconv
