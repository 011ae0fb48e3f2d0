// phaseconv CUDA backward: the weight gradient, phase by phase (see phase_conv_bwd.cuh).
// CUDA headers only.  The kernels, chosen by the rule in phase_conv_plan.h:
//
// * gw_narrow_kernel (phase_conv_bwd_narrow.cu; float32/float16/bfloat16 with 8 channels per
//   group on one side): tensor cores over a staged input window, every tap of a block at its
//   shift, operands channels-last.
// * gw_cl_kernel (float16/bfloat16, C_in/g and C_out/g multiples of 8 and >= 16): per
//   (phase, tap) a GEMM on mma.sync over the phase's outputs, its operands channels-last and
//   copied by cp.async, described where it is defined.
// * gw_wgmma_kernel (sm_90a builds, float16/bfloat16, C_in/g >= 64 and C_out/g >= 32, both
//   multiples of 8): gw_cl_kernel's GEMM on warpgroup MMA, larger channel tiles.
// * gw_mma_kernel (float32, and the 16-bit layers the channels-last kernel does not take):
//   the same GEMM from contiguous (N, C, D, H, W) operands, element-wise loads.
// * gw_partial_kernel (float64, and narrow layers without whole 8-channel octets): a block
//   stages, per tile of phase outputs (one D row of TH x TW), the input window the tile's taps
//   read (up to 32 channels, zero outside the input: no padded copy) and the tile's grad_y
//   values (a strided gather of the phase's outputs) in shared memory; each thread owns an
//   R x R tile of (input channel, output channel) for one tap (R = 4, or 1 for layers of one
//   or two channels per group) and walks a share of the tile's outputs.  FMAs in fp32 (fp64
//   for double).
//
// Both write per-split workspace slices that a reduction adds in split order and stores in the
// weight's layout (gw_reduce_cl_kernel straight to a weight with adjacent output channels,
// gw_reduce_rows_kernel coalesced through shared memory to another, or gw_reduce_kernel
// element-wise where a run does not fit); a naive kernel (one thread per weight element) takes
// layers whose window does not fit.  The plan (phase_conv_plan.cpp) picks one and its tile.
#include "phase_conv_bwd.cuh"
#include "phase_conv_bwd_depthwise.cuh"
#include "phase_conv_bwd_narrow.cuh"
#include "phase_conv_dtype.cuh"
#include "phase_conv_fastdiv.cuh"
#include "phase_conv_fwd.cuh"
#include "phase_conv_launch.cuh"
#include "phase_conv_mma.cuh"
#include "phase_conv_tma.cuh"
#include "phase_conv_wgmma.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace phaseconv_bwd {
namespace {

using phaseconv::kGmBK;
using phaseconv::kGmWM;
using phaseconv::kGmWN;
using phaseconv::GwCfg;
constexpr int kThreads = phaseconv::kGwThreads;

using namespace phaseconv_dtype;  // AccOf, to_acc, from_acc, ldg, axis_count
using namespace phaseconv_mma;    // ldmatrix, mma.sync, 3xTF32 split, flush_acc

using phaseconv::BwdGeometry;  // phase_conv_bwd.cuh
using phaseconv::set_geometry;
using phaseconv::launch_kernel;  // phase_conv_launch.cuh

struct GwArgs : BwdGeometry {
  int ci_b, co_b, tc;            // input channels, output channels and taps per block
  int n_cib, n_cob, n_tch, splits;
  int lg_tpos;                   // phase outputs per tile: 1 << lg_tpos (one D row)
  int win_max;                   // window positions staged at most (smem sizing)
};

// 4 consecutive accumulator-type values from shared memory (16-byte aligned for float)
__device__ __forceinline__ void lds4(const float* p, float (&v)[4]) {
  const float4 f = *reinterpret_cast<const float4*>(p);
  v[0] = f.x; v[1] = f.y; v[2] = f.z; v[3] = f.w;
}
__device__ __forceinline__ void lds4(const double* p, double (&v)[4]) {
  const double2 a = *reinterpret_cast<const double2*>(p);
  const double2 b = *reinterpret_cast<const double2*>(p + 2);
  v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
}

// R consecutive accumulator-type values from shared memory
template <int R, typename A>
__device__ __forceinline__ void lds(const A* p, A (&v)[R]) {
  if constexpr (R == 4) {
    lds4(p, v);
  } else {
#pragma unroll
    for (int i = 0; i < R; ++i) v[i] = p[i];
  }
}

// A thread owns an R x R register tile: R input channels of one tap x R output channels, and
// walks a share (`part`) of each tile's outputs: per output two shared loads feed R x R
// FMAs (an outer product, as in a SIMT GEMM with k = the phase's outputs).
template <typename T, int R>
__global__ void __launch_bounds__(kThreads) gw_partial_kernel(const GwArgs a) {
  typedef typename AccOf<T>::type A;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int tpos = 1 << a.lg_tpos;
  // row strides of the staged tiles (unpadded: padding by 4 measured slower on an H100)
  const int xs = a.ci_b, gs = a.co_b;
  A* s_x = reinterpret_cast<A*>(smem_raw);               // [window position][xs]
  A* s_g = s_x + (size_t)a.win_max * xs;                  // [tile output][gs]
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ gy = static_cast<const T*>(a.gy);
  A* __restrict__ ws = static_cast<A*>(a.ws);
  const int tid = threadIdx.x;

  int64_t r = blockIdx.x;
  const int tch = (int)(r % a.n_tch); r /= a.n_tch;
  const int cob = (int)(r % a.n_cob); r /= a.n_cob;
  const int cib = (int)(r % a.n_cib); r /= a.n_cib;
  const int g = (int)(r % a.groups); r /= a.groups;
  const int p = (int)(r % a.num_phases);
  const int split = (int)(r / a.num_phases);

  const int64_t* e = a.table + (int64_t)p * PHASECONV_TABLE_STRIDE;
  const int Td = (int)e[PT_TAPS_D], Th = (int)e[PT_TAPS_H], Tw = (int)e[PT_TAPS_W];
  const int ntaps = Td * Th * Tw;
  const int t0 = tch * a.tc;
  if (ntaps == 0 || t0 >= ntaps) return;  // no packed block / no taps left (uniform)
  const int tn = min(a.tc, ntaps - t0);
  const int rd = (int)e[PT_RES_D], rh = (int)e[PT_RES_H], rw = (int)e[PT_RES_W];
  const int offd = (int)e[PT_OFF_D], offh = (int)e[PT_OFF_H], offw = (int)e[PT_OFF_W];
  const int64_t wofs = e[PT_WOFS];
  const int cd = axis_count(a.out_d, rd, a.sd), ch = axis_count(a.out_h, rh, a.sh),
            cw = axis_count(a.out_w, rw, a.sw);
  const int co0 = cob * a.co_b, con = min(a.co_b, a.cout_g - co0);
  const int ci0 = cib * a.ci_b, cin_n = min(a.ci_b, a.cin_g - ci0);

  // tile: one D row, TH x TW phase outputs (TW: power of two covering cw, <= tpos and 32)
  int lg_tw = 0;
  while ((1 << lg_tw) < cw && lg_tw < 5 && lg_tw < a.lg_tpos) ++lg_tw;
  const int TW = 1 << lg_tw, TH = tpos >> lg_tw;
  const int WH = TH + (Th - 1) * a.pdh, WW = TW + (Tw - 1) * a.pdw;
  const int WD = 1 + (Td - 1) * a.pdd;

  // this thread: a (tap, R input channels, R output channels) tile and a part of the outputs
  const int n_ci_tiles = a.ci_b / R, n_co_tiles = a.co_b / R;
  const int ni = tn * n_ci_tiles * n_co_tiles;
  const int parts = ni >= kThreads ? 1 : kThreads / ni;
  const bool has_item = tid < ni * parts;
  const int item = tid % ni, part = tid / ni;
  const int co_tile = item % n_co_tiles, ci_tile = (item / n_co_tiles) % n_ci_tiles;
  const int t = t0 + item / (n_co_tiles * n_ci_tiles);
  const int tw = t % Tw, th = (t / Tw) % Th, td = t / (Tw * Th);
  const int tap_pos = (td * a.pdd * WH + th * a.pdh) * WW + tw * a.pdw;

  A acc[R][R];
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int j = 0; j < R; ++j) acc[i][j] = 0;

  const int tiles_w = (cw + TW - 1) / TW, tiles_h = (ch + TH - 1) / TH;
  const int64_t tiles = a.nbatch * cd * tiles_h * tiles_w;
  const int64_t per = (tiles + a.splits - 1) / a.splits;
  const int64_t tb = (int64_t)split * per;
  const int64_t te = min(tiles, tb + per);
  const int64_t in_plane = (int64_t)a.in_d * a.in_h * a.in_w;
  const int64_t out_plane = (int64_t)a.out_d * a.out_h * a.out_w;
  for (int64_t tile = tb; tile < te; ++tile) {
    int64_t q = tile;
    const int bw = (int)(q % tiles_w); q /= tiles_w;
    const int bh = (int)(q % tiles_h); q /= tiles_h;
    const int jd = (int)(q % cd);
    const int64_t n = q / cd;
    const int h0 = bh * TH, w0 = bw * TW;
    __syncthreads();  // the previous tile's readers are done
    // input window (ci_b channels; zero outside the input and past C_in/g), [pos][ci]
    const T* xg = x + (n * a.c_in + (int64_t)g * a.cin_g + ci0) * in_plane;
    const int npos = WD * WH * WW;
    for (int it = tid; it < a.ci_b * npos; it += kThreads) {
      const int c = it / npos, pos = it - c * npos;
      const int wd = pos / (WH * WW), rem = pos - wd * (WH * WW);
      const int wh = rem / WW, ww = rem - wh * WW;
      const int id = jd + offd + wd, ih = h0 + offh + wh, iw = w0 + offw + ww;
      A v = 0;
      if (c < cin_n && (unsigned)id < (unsigned)a.in_d && (unsigned)ih < (unsigned)a.in_h &&
          (unsigned)iw < (unsigned)a.in_w)
        v = to_acc<A>(ldg(xg + c * in_plane + ((int64_t)id * a.in_h + ih) * a.in_w + iw));
      s_x[pos * xs + c] = v;
    }
    // grad_y at the tile's phase outputs (zero past the phase's counts), [output][co]
    const T* gg = gy + (n * a.c_out + (int64_t)g * a.cout_g + co0) * out_plane;
    for (int it = tid; it < a.co_b * tpos; it += kThreads) {
      const int c = it >> a.lg_tpos, qq = it & (tpos - 1);
      const int jh = h0 + (qq >> lg_tw), jw = w0 + (qq & (TW - 1));
      A v = 0;
      if (c < con && jh < ch && jw < cw)
        v = to_acc<A>(ldg(gg + c * out_plane +
                       ((int64_t)(rd + a.sd * jd) * a.out_h + rh + a.sh * jh) * a.out_w + rw +
                       (int64_t)a.sw * jw));
      s_g[qq * gs + c] = v;
    }
    __syncthreads();
    if (has_item) {
      for (int qq = part; qq < tpos; qq += parts) {
        A xv[R], gv[R];
        const int pos = tap_pos + (qq >> lg_tw) * WW + (qq & (TW - 1));
        lds<R>(s_x + (size_t)pos * xs + ci_tile * R, xv);
        lds<R>(s_g + (size_t)qq * gs + co_tile * R, gv);
#pragma unroll
        for (int i = 0; i < R; ++i)
#pragma unroll
          for (int j = 0; j < R; ++j) acc[i][j] += xv[i] * gv[j];
      }
    }
  }
  // add the parts of each item in part order, then write this split's slice
  __syncthreads();
  A* s_red = s_x;  // kThreads x R x R
  if (has_item) {
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int j = 0; j < R; ++j) s_red[tid * R * R + i * R + j] = acc[i][j];
  }
  __syncthreads();
  if (has_item && part == 0) {
    for (int k = 1; k < parts; ++k) {
#pragma unroll
      for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < R; ++j) acc[i][j] += s_red[(k * ni + item) * R * R + i * R + j];
    }
    A* out = ws + (int64_t)split * a.packed_elems + wofs;
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int ci = ci_tile * R + i;
      if (ci >= cin_n) continue;
#pragma unroll
      for (int j = 0; j < R; ++j) {
        const int co = co_tile * R + j;
        if (co < con)
          out[(((int64_t)g * a.cin_g + ci0 + ci) * ntaps + t) * a.cout_g + co0 + co] =
              acc[i][j];
      }
    }
  }
}

// sum[u] = the workspace slices' values of packed element at[u] (skipped where at[u] < 0),
// added in split order.  The loads of kSplitBatch splits go out together, then are added in
// that order: the same sums, bit for bit, with one memory round trip a batch instead of one a
// split (19 splits of a 64->32 k3 layer left the reduction latency-bound).
constexpr int kSplitBatch = 4;

template <int U, typename A>
__device__ __forceinline__ void sum_splits(const A* __restrict__ ws, int64_t elems,
                                           const int64_t (&at)[U], int splits, A (&sum)[U]) {
  constexpr int B = sizeof(A) == 8 ? kSplitBatch / 2 : kSplitBatch;  // float64: registers
  int k = 0;
  for (; k + B <= splits; k += B) {
    A v[B][U];
#pragma unroll
    for (int b = 0; b < B; ++b)
#pragma unroll
      for (int u = 0; u < U; ++u)
        v[b][u] = at[u] >= 0 ? ws[(int64_t)(k + b) * elems + at[u]] : A(0);
#pragma unroll
    for (int b = 0; b < B; ++b)
#pragma unroll
      for (int u = 0; u < U; ++u) sum[u] += v[b][u];
  }
  for (; k < splits; ++k)
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (at[u] >= 0) sum[u] += ws[(int64_t)k * elems + at[u]];
}

// Packed element i of the gradient = sum over splits (in order) of the workspace slices,
// written to its place in the weight's layout (grad_w_index, phase_conv_pack.cuh).
template <typename T>
__global__ void __launch_bounds__(256)
    gw_reduce_kernel(const void* ws_, void* gw_, const int32_t* __restrict__ index,
                     const PhaseConvWeightView view, int splits, int64_t elems,
                     const PHASECONV_GRID_CONSTANT PhaseConvExact ex) {
  typedef typename AccOf<T>::type A;
  const A* ws = static_cast<const A*>(ws_);
  T* gw = static_cast<T*>(gw_);
  bool nonfinite = false;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < elems;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t at[1] = {i};
    A s[1] = {0};
    sum_splits(ws, elems, at, splits, s);
    const T v = from_acc<T>(s[0]);
    gw[phaseconv_strided_offset(view, index[i])] = v;
    nonfinite |= !phaseconv_exact::finite_value(v);
  }
  if (!nonfinite) return;
  // a non-finite sum may hold padding * Inf: this thread's such elements, recomputed from
  // the real pairs (a second pass keeps the call out of the loop above)
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < elems;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t k = index[i];
    T* out = gw + phaseconv_strided_offset(view, k);
    if (!phaseconv_exact::finite_value(*out)) *out = phaseconv_exact::exact_element<T>(ex, k);
  }
}

// The same sums stored in the weight's order.  A block owns input channel ci and a block of
// `co_block` output channels of its group (a multiple of 32): in the weight (C_in, C_out/g, kD,
// kH, kW) one contiguous run of co_block x taps elements.  A thread takes kReduceUnroll
// (tap, output channel) pairs of it at a time, their splits' loads issued together; a tap of a
// phase is a row of that phase's packed block ([g][ci][tap][co]), so consecutive threads read
// consecutive channels of a row.  The sums go to shared memory in the order of the weight's
// storage, which is then stored in that order: one element-wise store per packed element had
// every warp store touch 32 sectors (1x512->256 16^3 k2 s2: 77 us for a 2 MB gradient).  That
// order is the run's own (taps innermost) but in a weight whose output channels are adjacent
// (channels_last_3d: stride 1 along C_out/g), whose run is then co_block runs of channels, one
// a tap, each placed by a table of the taps' storage offsets.  Every element of the run is
// written: the packed layout holds each weight element once.
//
// The layer's tap rows (phases in table order, each phase's taps in turn) are tabulated once a
// block, before its runs: where row r's channel-0 pairs start in the packed layout and its
// phase's taps (the stride from one input channel to the next), and the weight tap it is
// (grad_w_index of its input channel 0, output channel 0): a pair then costs a division and a
// shared-memory read, not a scan of the phase table and a load of grad_w_index.  So are the
// taps' storage offsets (kd, kh, kw along the weight's strides): a stored element then costs a
// division, not the five of its logical index.
constexpr int kReduceUnroll = 4;
constexpr int kReduceRunElems = 1024;  // a run's elements at most, past one 32-channel block

struct TapRow {
  int64_t ofs;   // packed element of (input channel 0, this tap, output channel 0)
  int32_t taps;  // the phase's taps
  int32_t tap;   // the weight tap (kd * kH + kh) * kW + kw
};

// The layer's tap rows and the taps' storage offsets, in shared memory (the block's threads
// in turn; the caller synchronizes before reading them).
__device__ __forceinline__ void build_tap_rows(TapRow* rows, int64_t* tap_ofs,
                                               const PhaseConvWeightView& view,
                                               const int32_t* __restrict__ index,
                                               const int64_t* __restrict__ table,
                                               int num_phases, int cout_g, int taps) {
  for (int t = threadIdx.x; t < taps; t += blockDim.x) tap_ofs[t] = phaseconv_tap_offset(view, t);
  for (int r = threadIdx.x; r < taps; r += blockDim.x) {
    int p = 0, first = 0, seen = 0;  // row r is tap r - first of phase p
    for (int q = 0; q < num_phases; ++q) {
      const int64_t* e = table + (int64_t)q * PHASECONV_TABLE_STRIDE;
      const int tq = (int)(e[PT_TAPS_D] * e[PT_TAPS_H] * e[PT_TAPS_W]);
      if (tq > 0 && seen <= r) { p = q; first = seen; }
      seen += tq;
    }
    const int64_t* e = table + (int64_t)p * PHASECONV_TABLE_STRIDE;
    TapRow t;
    t.taps = (int32_t)(e[PT_TAPS_D] * e[PT_TAPS_H] * e[PT_TAPS_W]);
    t.ofs = e[PT_WOFS] + (int64_t)(r - first) * cout_g;
    t.tap = index[t.ofs];
    rows[r] = t;
  }
}

template <typename T>
__global__ void __launch_bounds__(256, 4) gw_reduce_rows_kernel(
    const void* ws_, void* gw_, const int32_t* __restrict__ index,
    const PhaseConvWeightView view, const int64_t* __restrict__ table, int num_phases,
    int64_t c_in, int cout_g, int taps, int co_block, int splits, int64_t elems,
    const PHASECONV_GRID_CONSTANT PhaseConvExact ex) {
  typedef typename AccOf<T>::type A;
  constexpr int U = kReduceUnroll;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  TapRow* rows = reinterpret_cast<TapRow*>(smem_raw);
  int64_t* tap_ofs = reinterpret_cast<int64_t*>(rows + taps);  // tap t's storage offset
  T* run = reinterpret_cast<T*>(tap_ofs + taps);
  const A* ws = static_cast<const A*>(ws_);
  T* gw = static_cast<T*>(gw_);
  const int co_blocks = (cout_g + co_block - 1) / co_block;
  const int64_t blocks = c_in * co_blocks;
  const bool co_inner = !view.contiguous && view.stride[1] == 1;  // the run's storage order
  build_tap_rows(rows, tap_ofs, view, index, table, num_phases, cout_g, taps);
  // run blk: input channel ci, output channels co0 .. co0 + ncols - 1, from weight element base
  struct Run {
    int64_t ci, base;
    int co0, ncols;
  };
  auto run_of = [&](int64_t blk) {
    Run r;
    r.ci = blk / co_blocks;
    r.co0 = (int)(blk % co_blocks) * co_block;
    r.ncols = min(co_block, cout_g - r.co0);
    r.base = (r.ci * cout_g + r.co0) * taps;
    return r;
  };
  // element j of run rn in its storage order: where it is stored, and its logical (C-order)
  // index in the weight
  auto place = [&](const Run& rn, int j, int64_t& at, int64_t& logical) {
    if (view.contiguous) {
      at = logical = rn.base + j;
      return;
    }
    const int major = co_inner ? j / rn.ncols : j / taps;  // tap or channel
    const int minor = j - major * (co_inner ? rn.ncols : taps);
    const int col = co_inner ? minor : major, tap = co_inner ? major : minor;
    at = rn.ci * view.stride[0] + (rn.co0 + col) * view.stride[1] + tap_ofs[tap];
    logical = rn.base + (int64_t)col * taps + tap;
  };
  bool nonfinite = false;
  for (int64_t blk = blockIdx.x; blk < blocks; blk += gridDim.x) {
    const Run rn = run_of(blk);
    const int64_t ci = rn.ci;
    const int co0 = rn.co0, ncols = rn.ncols, len = ncols * taps;
    __syncthreads();  // the tap tables are in; the previous run is stored
    for (int j0 = threadIdx.x; j0 < len; j0 += U * blockDim.x) {
      int64_t at[U];  // packed element of pair u, -1 past the run
      int slot[U];    // its place in the run
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int j = j0 + u * blockDim.x;
        at[u] = -1;
        slot[u] = 0;
        if (j >= len) continue;
        const int r = j / ncols, col = j - r * ncols;  // tap row r, output channel co0 + col
        const TapRow t = rows[r];
        at[u] = t.ofs + ci * t.taps * cout_g + co0 + col;
        slot[u] = co_inner ? t.tap * ncols + col : col * taps + t.tap;
      }
      A sum[U];
#pragma unroll
      for (int u = 0; u < U; ++u) sum[u] = 0;
      sum_splits(ws, elems, at, splits, sum);
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (at[u] >= 0) run[slot[u]] = from_acc<T>(sum[u]);
    }
    __syncthreads();
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
      const T v = run[j];
      int64_t at, logical;
      place(rn, j, at, logical);
      gw[at] = v;
      nonfinite |= !phaseconv_exact::finite_value(v);
    }
  }
  if (!nonfinite) return;
  // as gw_reduce_kernel: the non-finite elements this thread stored (the same j of the same
  // runs), recomputed from the real pairs
  for (int64_t blk = blockIdx.x; blk < blocks; blk += gridDim.x) {
    const Run rn = run_of(blk);
    for (int j = threadIdx.x; j < rn.ncols * taps; j += blockDim.x) {
      int64_t at, logical;
      place(rn, j, at, logical);
      if (!phaseconv_exact::finite_value(gw[at]))
        gw[at] = phaseconv_exact::exact_element<T>(ex, logical);
    }
  }
}

// The same sums for a weight whose output channels are adjacent (channels_last_3d: stride 1
// along C_out/g).  There a packed tap row's output channels (input channel ci, tap row r) are
// contiguous in the workspace and in the weight alike, so each sum goes straight to its place,
// coalesced both ways, with no staging.  Element i of the packed order is (ci, r, co), its
// digits over (C_in, taps, C_out/g): consecutive threads take consecutive output channels.
// A thread issues up to kClLoads loads together, B splits (the splits rounded up to a power
// of two, at most 16) of U = kClLoads / B elements (at most 4: more spill) a grid apart, and
// adds each element's splits in order; a short last batch neither loads nor adds its missing
// splits.  So the sums are the rows kernel's, bit for bit, in fewer round trips: 19 splits
// (64 -> 32 k3) take two where the rows kernel, four splits a batch and then one at a time,
// took seven; 2 splits (512 -> 256 k2) one where it took two.  The grid is one resident wave:
// a block builds the tap-row table once and walks the elements (the rows kernel's grid is a
// block a run, each building the table: 1,024 of them for 512 -> 256 k2).  Elements are
// numbered in 32 bits (fewer than 2^31), so their digits come from multiply-high divisions.
constexpr int kClLoads = 16;

template <typename T, int B>
__global__ void __launch_bounds__(256, 4) gw_reduce_cl_kernel(
    const void* ws_, void* gw_, const int32_t* __restrict__ index,
    const PhaseConvWeightView view, const int64_t* __restrict__ table, int num_phases,
    int cout_g, int taps, phaseconv::FastDiv by_cout_g, phaseconv::FastDiv by_taps, int splits,
    int64_t elems, const PHASECONV_GRID_CONSTANT PhaseConvExact ex) {
  typedef typename AccOf<T>::type A;
  constexpr int U = kClLoads / B < 4 ? kClLoads / B : 4;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  TapRow* rows = reinterpret_cast<TapRow*>(smem_raw);
  int64_t* tap_ofs = reinterpret_cast<int64_t*>(rows + taps);  // tap t's storage offset
  const A* ws = static_cast<const A*>(ws_);
  T* gw = static_cast<T*>(gw_);
  build_tap_rows(rows, tap_ofs, view, index, table, num_phases, cout_g, taps);
  __syncthreads();
  phaseconv_exact::wait_for_hot_kernel();  // the splits' sums are the kernel's before
  // element i: its packed element, where its sum is stored, its logical (C-order) index
  // (elems < 2^31: multiply-high divisions; 64-bit ones cost more than the loads)
  auto place = [&](int64_t i, int64_t& at, int64_t& stored, int64_t& logical) {
    const int q = phaseconv::fast_div((int)i, by_cout_g);  // ci * taps + r
    const int co = (int)i - q * cout_g;
    const int64_t ci = phaseconv::fast_div(q, by_taps);
    const TapRow t = rows[q - (int)ci * taps];
    at = t.ofs + ci * t.taps * cout_g + co;
    stored = ci * view.stride[0] + co * view.stride[1] + tap_ofs[t.tap];
    logical = (ci * cout_g + co) * taps + t.tap;
  };
  const int64_t apart = (int64_t)gridDim.x * blockDim.x;  // a thread's elements this far apart
  bool nonfinite = false;
  for (int64_t i0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i0 < elems;
       i0 += U * apart) {
    int64_t at[U];  // packed element of element u, -1 past the end
#pragma unroll
    for (int u = 0; u < U; ++u) {
      int64_t stored, logical;
      at[u] = -1;
      if (i0 + u * apart < elems) place(i0 + u * apart, at[u], stored, logical);
    }
    A sum[U];
#pragma unroll
    for (int u = 0; u < U; ++u) sum[u] = 0;
    for (int k = 0; k < splits; k += B) {
      A v[B][U];
#pragma unroll
      for (int b = 0; b < B; ++b)
#pragma unroll
        for (int u = 0; u < U; ++u)
          v[b][u] = at[u] >= 0 && k + b < splits ? ws[(int64_t)(k + b) * elems + at[u]] : A(0);
#pragma unroll
      for (int b = 0; b < B; ++b)
        if (k + b < splits)
#pragma unroll
          for (int u = 0; u < U; ++u) sum[u] += v[b][u];
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (at[u] < 0) continue;
      int64_t packed, stored, logical;  // (placed again: fewer registers live over the loads)
      place(i0 + u * apart, packed, stored, logical);
      const T v = from_acc<T>(sum[u]);
      gw[stored] = v;
      nonfinite |= !phaseconv_exact::finite_value(v);
    }
  }
  if (!nonfinite) return;
  // as gw_reduce_kernel: the non-finite elements this thread stored, recomputed from the
  // real pairs
  for (int64_t i0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i0 < elems; i0 += apart) {
    int64_t at, stored, logical;
    place(i0, at, stored, logical);
    if (!phaseconv_exact::finite_value(gw[stored]))
      gw[stored] = phaseconv_exact::exact_element<T>(ex, logical);
  }
}

template <typename T, int B>
cudaError_t launch_reduce_cl(const PhaseConvBwdWeightParams& p, int splits, int64_t blocks,
                             size_t smem, cudaStream_t stream) {
  const PhaseConvWeightView& v = p.grad_w_view;
  const int cout_g = (int)v.size[1], taps = (int)(v.size[2] * v.size[3] * v.size[4]);
  // (a dependent launch: its table is built while the weight-gradient kernel ends)
  return phaseconv_exact::launch_dependent(
      gw_reduce_cl_kernel<T, B>, blocks, 256, smem, stream, p.workspace, p.grad_w,
      p.grad_w_index, v, p.table, (int)(p.stride_d * p.stride_h * p.stride_w), cout_g, taps,
      phaseconv::make_fastdiv(cout_g), phaseconv::make_fastdiv(taps), splits, p.packed_elems,
      p.exact);
}

// Where the packed layout holds the weight's elements once (as pack() makes it): the
// channels-last kernel for a weight with adjacent output channels (under 2^31 elements),
// the rows kernel where a
// run of 32 channels fits its shared memory; else the element-wise kernel.  All add the
// splits in order: the same bits.
template <typename T>
cudaError_t launch_reduce(const PhaseConvBwdWeightParams& p, int splits, cudaStream_t stream) {
  const PhaseConvWeightView& v = p.grad_w_view;
  const int64_t cout_g = v.size[1], taps = v.size[2] * v.size[3] * v.size[4];
  const size_t per_tap = sizeof(TapRow) + sizeof(int64_t);  // its row and storage offset
  const bool once = p.c_in * cout_g * taps == p.packed_elems;
  if (once && !v.contiguous && v.stride[1] == 1 && (size_t)taps * per_tap <= 48 * 1024 &&
      p.packed_elems <= INT32_MAX) {
    int device = 0, sms = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess)
      err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (err != cudaSuccess) return err;
    const int64_t wave = (int64_t)sms * 4;  // __launch_bounds__(256, 4): resident blocks
    const size_t smem = (size_t)taps * per_tap;
    const int64_t per_load = (p.packed_elems + 255) / 256;  // blocks at one element a thread
    // B splits a batch, U = kClLoads / B elements a thread
    const int b = splits <= 2 ? 2 : splits <= 4 ? 4 : splits <= 8 ? 8 : 16;
    const int u = kClLoads / b < 4 ? kClLoads / b : 4;  // as the kernel's U
    int64_t blocks = (per_load + u - 1) / u;
    if (blocks > wave) blocks = wave;
    if (blocks < 1) blocks = 1;  // (no elements: the table alone)
    switch (b) {
      case 2: return launch_reduce_cl<T, 2>(p, splits, blocks, smem, stream);
      case 4: return launch_reduce_cl<T, 4>(p, splits, blocks, smem, stream);
      case 8: return launch_reduce_cl<T, 8>(p, splits, blocks, smem, stream);
      default: return launch_reduce_cl<T, 16>(p, splits, blocks, smem, stream);
    }
  }
  if ((size_t)taps * (32 * sizeof(T) + per_tap) <= 48 * 1024 && once) {
    // 32-channel blocks, as many as keep the run within kReduceRunElems
    int64_t per32 = kReduceRunElems / (32 * taps);  // 32-channel blocks a run
    if (per32 > (cout_g + 31) / 32) per32 = (cout_g + 31) / 32;
    if (per32 < 1) per32 = 1;
    const int co_block = (int)(32 * per32);
    const int64_t runs = p.c_in * ((cout_g + co_block - 1) / co_block);
    gw_reduce_rows_kernel<T><<<(unsigned)(runs < 65535 ? runs : 65535), 256,
                               (size_t)taps * (co_block * sizeof(T) + per_tap), stream>>>(
        p.workspace, p.grad_w, p.grad_w_index, v, p.table,
        (int)(p.stride_d * p.stride_h * p.stride_w), p.c_in, (int)cout_g, (int)taps, co_block,
        splits, p.packed_elems, p.exact);
    return cudaGetLastError();
  }
  int64_t blocks = (p.packed_elems + 255) / 256;
  if (blocks > 65535) blocks = 65535;
  gw_reduce_kernel<T><<<(unsigned)blocks, 256, 0, stream>>>(
      p.workspace, p.grad_w, p.grad_w_index, p.grad_w_view, splits, p.packed_elems, p.exact);
  return cudaGetLastError();
}

// Layers whose input window does not fit shared memory (huge dilations): one thread per
// weight element sums over the batch and the phase's outputs in a fixed order and writes its
// place in the weight's layout.  Slow, but every layer gets a gradient.
template <typename T>
__global__ void __launch_bounds__(256) gw_naive_kernel(const BwdGeometry a,
                                                       const int32_t* __restrict__ index,
                                                       const PhaseConvWeightView view,
                                                       void* gw_) {
  typedef typename AccOf<T>::type A;
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ gy = static_cast<const T*>(a.gy);
  T* gw = static_cast<T*>(gw_);
  const int64_t in_plane = (int64_t)a.in_d * a.in_h * a.in_w;
  const int64_t out_plane = (int64_t)a.out_d * a.out_h * a.out_w;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < a.packed_elems;
       i += (int64_t)gridDim.x * blockDim.x) {
    // the phase holding packed element i: the last whose block starts at or before it
    int p = 0;
    for (int q = 0; q < a.num_phases; ++q) {
      const int64_t* e = a.table + (int64_t)q * PHASECONV_TABLE_STRIDE;
      if (e[PT_TAPS_D] * e[PT_TAPS_H] * e[PT_TAPS_W] > 0 && e[PT_WOFS] <= i) p = q;
    }
    const int64_t* e = a.table + (int64_t)p * PHASECONV_TABLE_STRIDE;
    const int Td = (int)e[PT_TAPS_D], Th = (int)e[PT_TAPS_H], Tw = (int)e[PT_TAPS_W];
    const int ntaps = Td * Th * Tw;
    // [g][ci][tap][co] within the phase's block
    int64_t r = i - e[PT_WOFS];
    const int co = (int)(r % a.cout_g); r /= a.cout_g;
    const int t = (int)(r % ntaps); r /= ntaps;
    const int ci = (int)(r % a.cin_g);
    const int g = (int)(r / a.cin_g);
    const int tw = t % Tw, th = (t / Tw) % Th, td = t / (Tw * Th);
    const int rd = (int)e[PT_RES_D], rh = (int)e[PT_RES_H], rw = (int)e[PT_RES_W];
    const int xd = (int)e[PT_OFF_D] + td * a.pdd, xh = (int)e[PT_OFF_H] + th * a.pdh,
              xw = (int)e[PT_OFF_W] + tw * a.pdw;
    const int cd = axis_count(a.out_d, rd, a.sd), ch = axis_count(a.out_h, rh, a.sh),
              cw = axis_count(a.out_w, rw, a.sw);
    A acc = A(0);
    for (int64_t n = 0; n < a.nbatch; ++n) {
      const T* xc = x + (n * a.c_in + (int64_t)g * a.cin_g + ci) * in_plane;
      const T* gc = gy + (n * a.c_out + (int64_t)g * a.cout_g + co) * out_plane;
      for (int jd = 0; jd < cd; ++jd) {
        const int id = jd + xd;
        if ((unsigned)id >= (unsigned)a.in_d) continue;
        for (int jh = 0; jh < ch; ++jh) {
          const int ih = jh + xh;
          if ((unsigned)ih >= (unsigned)a.in_h) continue;
          for (int jw = 0; jw < cw; ++jw) {
            const int iw = jw + xw;
            if ((unsigned)iw >= (unsigned)a.in_w) continue;
            acc += to_acc<A>(ldg(xc + ((int64_t)id * a.in_h + ih) * a.in_w + iw)) *
                   to_acc<A>(ldg(gc + ((int64_t)(rd + a.sd * jd) * a.out_h + rh + a.sh * jh) *
                                          a.out_w + rw + (int64_t)a.sw * jw));
          }
        }
      }
    }
    gw[phaseconv_strided_offset(view, index[i])] = from_acc<T>(acc);
  }
}

// ---------------------------------------------------------------- tensor-core weight gradient
// Per (phase, tap) the gradient is the GEMM  grad_w[c, o] = sum_k A[c, k] B[o, k]  with
// k = (n, jd, jh, jw) over the phase's outputs, A = the input shifted by the tap (zero outside
// it) and B = grad_y at the phase's outputs.  Both operands are k-contiguous in shared memory
// ([row][k], rows padded by 16 bytes so that ldmatrix's eight row addresses fall on distinct
// banks), which is the row.col form mma.sync wants.  A block owns (split of k, group, phase,
// tap, BM x BN channel tile); k advances in chunks of BK = 32, the next chunk's global loads in
// registers while the current one's mmas run (two shared-memory stages, one barrier per
// chunk).  fp32 uses 3xTF32 with the accumulators flushed every kFlushTerms terms; fp16/bf16
// use m16n8k16.  Splits write workspace slices that gw_reduce_kernel adds in order.
struct GmArgs : BwdGeometry {
  int max_taps;
  int n_cib, n_cob, splits;
  int box_d, box_h, box_w;  // gw_tma_kernel: a chunk is a box of phase outputs (64 of them)
  // gw_tma_kernel with a tile's splits in one cluster (gw_cluster_sum): the gradient, its
  // layout and the packed index (a tap's kernel position)
  void* gw;
  PhaseConvWeightView view;
  const int32_t* index;
};


// A tensor-core weight-gradient block's share (gw_mma_kernel, gw_cl_kernel, gw_wgmma_kernel):
// blockIdx.x as (split, group, phase, tap, C_in block, C_out block) (SPLIT_FIRST: (group,
// phase, tap, C_in block, C_out block, split), a tile's splits in consecutive blocks, which
// a cluster holds), the tap's input offset,
// the phase's output counts and reduction length, and the split's chunks of BK reduction
// terms.
struct GmBlock {
  int g, split, t, ntaps;
  int rd, rh, rw;               // the phase's residues
  int xd, xh, xw;               // input offset of the tap
  uint32_t cd, ch, cw;          // the phase's outputs per axis
  int64_t wofs;                 // the phase's packed block
  int c_beg, c_end;             // the split's chunks
  int ci0, co0, cin_n, con;     // the channel tile: first channels and counts
};

// False where the tap is past the phase's taps (a whole block: the grid covers the most taps).
template <int BM, int BN, int BK = kGmBK, bool BOXES = false, bool SPLIT_FIRST = false>
__device__ __forceinline__ bool decode_block(const GmArgs& a, GmBlock& b) {
  uint32_t r = blockIdx.x;
  if (SPLIT_FIRST) {
    b.split = (int)(r % (uint32_t)a.splits);
    r /= (uint32_t)a.splits;
  }
  const int cob = (int)(r % (uint32_t)a.n_cob); r /= (uint32_t)a.n_cob;
  const int cib = (int)(r % (uint32_t)a.n_cib); r /= (uint32_t)a.n_cib;
  b.t = (int)(r % (uint32_t)a.max_taps); r /= (uint32_t)a.max_taps;
  const int p = (int)(r % (uint32_t)a.num_phases); r /= (uint32_t)a.num_phases;
  b.g = (int)(r % (uint32_t)a.groups);
  if (!SPLIT_FIRST) b.split = (int)(r / (uint32_t)a.groups);

  const int64_t* e = a.table + (int64_t)p * PHASECONV_TABLE_STRIDE;
  const int Td = (int)e[PT_TAPS_D], Th = (int)e[PT_TAPS_H], Tw = (int)e[PT_TAPS_W];
  b.ntaps = Td * Th * Tw;
  if (b.t >= b.ntaps) return false;
  b.rd = (int)e[PT_RES_D]; b.rh = (int)e[PT_RES_H]; b.rw = (int)e[PT_RES_W];
  const int tw = b.t % Tw, th = (b.t / Tw) % Th, td = b.t / (Tw * Th);
  b.xd = (int)e[PT_OFF_D] + td * a.pdd;
  b.xh = (int)e[PT_OFF_H] + th * a.pdh;
  b.xw = (int)e[PT_OFF_W] + tw * a.pdw;
  b.wofs = e[PT_WOFS];
  b.cd = axis_count(a.out_d, b.rd, a.sd);
  b.ch = axis_count(a.out_h, b.rh, a.sh);
  b.cw = axis_count(a.out_w, b.rw, a.sw);
  const int64_t kp = a.nbatch * b.cd * b.ch * b.cw;  // reduction length (< 2^31, plan_gm)
  // (BOXES: chunks are boxes of phase outputs, whole boxes over the phase's extents)
  const int chunks = BOXES ? (int)(a.nbatch * (int64_t)((b.cd + a.box_d - 1) / a.box_d) *
                                   ((b.ch + a.box_h - 1) / a.box_h) *
                                   ((b.cw + a.box_w - 1) / a.box_w))
                           : (int)((kp + BK - 1) / BK);
  const int per = (chunks + a.splits - 1) / a.splits;
  b.c_beg = b.split * per;
  b.c_end = min(chunks, b.c_beg + per);
  b.ci0 = cib * BM; b.co0 = cob * BN;
  b.cin_n = min(BM, a.cin_g - b.ci0); b.con = min(BN, a.cout_g - b.co0);
  return true;
}

// Element offsets, in one operand, of one step of each digit of a k row (below).
struct KStrides {
  int64_t n, d, h, w;
};

// A k row of a phase's GEMM: its output (n, jd, jh, jw), jw fastest, and that output's element
// offsets in x (the untapped input position: the tap's shift is the block's) and in grad_y
// (past the phase's residues: also the block's).  Past the reduction exactly where n reaches
// the batch.
struct KRow {
  uint32_t w, h, d, n;
  int64_t xo, go;
};

// The step from a thread's k row in one chunk to its row in the next (BK rows on): that many
// rows split into the same mixed radix (with what its digits add to the offsets), and what a
// carry out of each digit adds.  Every digit stays below its radix (one conditional
// subtraction each): the main loops add, never divide or multiply.
struct KStep {
  KRow by;
  int64_t xc[3], gc[3];  // a carry out of w, h, d
};

__device__ __forceinline__ int64_t krow_offset(const KRow& r, const KStrides& s) {
  return (int64_t)r.n * s.n + (int64_t)r.d * s.d + (int64_t)r.h * s.h + (int64_t)r.w * s.w;
}

__device__ __forceinline__ KRow krow_at(uint32_t k, const GmBlock& b, const KStrides& xs,
                                        const KStrides& gs) {
  KRow r;
  r.w = k % b.cw; k /= b.cw;
  r.h = k % b.ch; k /= b.ch;
  r.d = k % b.cd;
  r.n = k / b.cd;
  r.xo = krow_offset(r, xs);
  r.go = krow_offset(r, gs);
  return r;
}

__device__ __forceinline__ KStep kstep_of(uint32_t rows, const GmBlock& b, const KStrides& xs,
                                          const KStrides& gs) {
  KStep s;
  s.by = krow_at(rows, b, xs, gs);
  s.xc[0] = xs.h - (int64_t)b.cw * xs.w; s.gc[0] = gs.h - (int64_t)b.cw * gs.w;
  s.xc[1] = xs.d - (int64_t)b.ch * xs.h; s.gc[1] = gs.d - (int64_t)b.ch * gs.h;
  s.xc[2] = xs.n - (int64_t)b.cd * xs.d; s.gc[2] = gs.n - (int64_t)b.cd * gs.d;
  return s;
}

__device__ __forceinline__ void krow_add(KRow& r, const KStep& s, const GmBlock& b) {
  r.w += s.by.w; r.xo += s.by.xo; r.go += s.by.go;
  if (r.w >= b.cw) { r.w -= b.cw; r.h += 1; r.xo += s.xc[0]; r.go += s.gc[0]; }
  r.h += s.by.h;
  if (r.h >= b.ch) { r.h -= b.ch; r.d += 1; r.xo += s.xc[1]; r.go += s.gc[1]; }
  r.d += s.by.d;
  if (r.d >= b.cd) { r.d -= b.cd; r.n += 1; r.xo += s.xc[2]; r.go += s.gc[2]; }
  r.n += s.by.n;
}

// What a block's k rows walk over in its two operands: the element strides of each digit, the
// tap's offset in x and the phase's residues' offset in grad_y.  A position (voxel) step is
// 1 element in (N, C, D, H, W) operands and C elements channels-last; a sample step is
// C x D x H x W either way.
struct GmWalk {
  KStrides xs, gs;
  int64_t x_tap, gy_res;
};

template <bool CHANNELS_LAST>
__device__ __forceinline__ GmWalk gm_walk(const BwdGeometry& a, const GmBlock& b) {
  const int64_t xp = CHANNELS_LAST ? a.c_in : 1, gp = CHANNELS_LAST ? a.c_out : 1;
  const int64_t in_plane = (int64_t)a.in_d * a.in_h * a.in_w;
  const int64_t out_plane = (int64_t)a.out_d * a.out_h * a.out_w;
  GmWalk w;
  w.xs = KStrides{(int64_t)a.c_in * in_plane, (int64_t)a.in_h * a.in_w * xp,
                  (int64_t)a.in_w * xp, xp};
  w.gs = KStrides{(int64_t)a.c_out * out_plane, (int64_t)a.sd * a.out_h * a.out_w * gp,
                  (int64_t)a.sh * a.out_w * gp, (int64_t)a.sw * gp};
  w.x_tap = (((int64_t)b.xd * a.in_h + b.xh) * a.in_w + b.xw) * xp;
  w.gy_res = (((int64_t)b.rd * a.out_h + b.rh) * a.out_w + b.rw) * gp;
  return w;
}

// The tap's input position of a k row inside the input (n checked apart).
__device__ __forceinline__ bool krow_in_input(const KRow& r, const GmBlock& b,
                                              const BwdGeometry& a) {
  return (unsigned)((int)r.d + b.xd) < (unsigned)a.in_d &&
         (unsigned)((int)r.h + b.xh) < (unsigned)a.in_h &&
         (unsigned)((int)r.w + b.xw) < (unsigned)a.in_w;
}

// A warp's 32 x 32 tile of (input channel, output channel) sums of one tap into its split's
// workspace slice (out: the slice's phase block), packed [g][C_in/g][taps][C_out/g].  C
// fragments: rows (input channels) lane/4 (+8), columns (output channels) 2*(lane%4) + c.
__device__ __forceinline__ void write_warp_tile(const float (&acc)[2][4][4], float* out,
                                                const GmArgs& a, const GmBlock& b, int wm,
                                                int wn, int lane) {
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int ci = wm * 32 + mt * 16 + (lane >> 2) + half * 8;
      if (ci >= b.cin_n) continue;
      float* orow = out + (((int64_t)b.g * a.cin_g + b.ci0 + ci) * b.ntaps + b.t) * a.cout_g +
                    b.co0;
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int cc = 0; cc < 2; ++cc) {
          const int co = wn * 32 + j * 8 + (lane & 3) * 2 + cc;
          if (co < b.con) orow[co] = acc[mt][j][half * 2 + cc];
        }
    }
}

// Three blocks a multiprocessor (the k-row walk's registers would leave room for two).
template <typename T, int WM, int WN>
__global__ void __launch_bounds__(WM * WN * 32, 3) gw_mma_kernel(const GmArgs a) {
  constexpr int NTHR = WM * WN * 32;
  constexpr int BM = WM * 32, BN = WN * 32, BK = kGmBK;
  constexpr int RS = BK * (int)sizeof(T) + 16;  // row stride in bytes: an odd multiple of 16
  constexpr int RSTEP = NTHR / BK;              // rows one load pass covers
  constexpr int LA = BM / RSTEP, LB = BN / RSTEP;
  constexpr int STAGE = (BM + BN) * RS;
  constexpr int KSTEPS = BK * (int)sizeof(T) / 32;  // mma k steps per chunk (32 bytes each)
  constexpr bool TF32 = sizeof(T) == 4;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t s_base = (uint32_t)__cvta_generic_to_shared(smem_raw);
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ gy = static_cast<const T*>(a.gy);
  float* __restrict__ ws = static_cast<float*>(a.ws);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp % WM, wn = warp / WM;

  GmBlock b;
  if (!decode_block<BM, BN>(a, b)) return;  // uniform: this phase has fewer taps

  // loads: this thread's k column and rows row0 + i * RSTEP
  const int kq = tid % BK, row0 = tid / BK;
  const int64_t in_plane = (int64_t)a.in_d * a.in_h * a.in_w;
  const int64_t out_plane = (int64_t)a.out_d * a.out_h * a.out_w;
  const GmWalk wk = gm_walk<false>(a, b);
  const T* xrow = x + ((int64_t)b.g * a.cin_g + b.ci0 + row0) * in_plane;
  const T* grow = gy + ((int64_t)b.g * a.cout_g + b.co0 + row0) * out_plane + wk.gy_res;
  T va[LA], vb[LB];
  KRow kr{};   // this thread's k row of the next chunk to load
  KStep ks{};  // one chunk on
  if (b.c_beg < b.c_end) {  // a phase without outputs has no chunks (and zero counts)
    kr = krow_at((uint32_t)b.c_beg * BK + kq, b, wk.xs, wk.gs);
    ks = kstep_of(BK, b, wk.xs, wk.gs);
  }
  auto load_next = [&]() {  // the chunk after the previous call's (c_beg first)
    const bool valid = kr.n < (uint32_t)a.nbatch;
    const bool xin = valid && krow_in_input(kr, b, a);
    const int64_t xo = kr.xo + wk.x_tap, go = kr.go;
    krow_add(kr, ks, b);
#pragma unroll
    for (int i = 0; i < LA; ++i)
      va[i] = (xin && row0 + i * RSTEP < b.cin_n)
                  ? ldg(xrow + xo + (int64_t)i * RSTEP * in_plane) : from_acc<T>(0.f);
#pragma unroll
    for (int i = 0; i < LB; ++i)
      vb[i] = (valid && row0 + i * RSTEP < b.con)
                  ? ldg(grow + go + (int64_t)i * RSTEP * out_plane) : from_acc<T>(0.f);
  };
  auto store = [&](int stage) {
    unsigned char* sa = smem_raw + stage * STAGE + row0 * RS + kq * (int)sizeof(T);
#pragma unroll
    for (int i = 0; i < LA; ++i) *reinterpret_cast<T*>(sa + i * RSTEP * RS) = va[i];
    unsigned char* sb = sa + BM * RS;
#pragma unroll
    for (int i = 0; i < LB; ++i) *reinterpret_cast<T*>(sb + i * RSTEP * RS) = vb[i];
  };

  float acc[2][4][4], tot[2][4][4];
  zero_acc(acc);
  zero_acc(tot);
  // ldmatrix lane addresses (bytes within a stage): A rows of the warp's two m16 tiles, B rows
  // of its two n16 pairs; the 16-byte half of the 32-byte k step follows from the lane
  const int a_lane = (wm * 32 + (lane & 7) + ((lane >> 3) & 1) * 8) * RS + (lane >> 4) * 16;
  const int mi = lane >> 3;
  const int b_lane = BM * RS + (wn * 32 + (mi >> 1) * 8 + (lane & 7)) * RS + (mi & 1) * 16;

  if (b.c_beg < b.c_end) {  // uniform; a split without chunks writes its zeros
    load_next();
    store(0);
    __syncthreads();
  }
  int since = 0;
  for (int c = b.c_beg; c < b.c_end; ++c) {
    const int stage = (c - b.c_beg) & 1;
    if (c + 1 < b.c_end) load_next();  // in flight during this chunk's mmas
    const uint32_t sbase = s_base + stage * STAGE;
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
      uint32_t af[2][4], bf[4][2];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) ldsm_x4(af[mt], sbase + a_lane + mt * 16 * RS + ks * 32);
#pragma unroll
      for (int jp = 0; jp < 2; ++jp) {
        uint32_t rr[4];
        ldsm_x4(rr, sbase + b_lane + jp * 16 * RS + ks * 32);
        bf[2 * jp][0] = rr[0]; bf[2 * jp][1] = rr[1];
        bf[2 * jp + 1][0] = rr[2]; bf[2 * jp + 1][1] = rr[3];
      }
      if (TF32) {
        mma_3xtf32_tiles(acc, af, bf);
      } else {
        mma_tiles<T>(acc, af, bf);
      }
    }
    step_flush<true>(tot, acc, since, kFlushTerms / BK);
    if (c + 1 < b.c_end) store(stage ^ 1);
    __syncthreads();  // the next stage is written, this one's readers are done
  }
  merge_acc(acc, tot);
  write_warp_tile(acc, ws + (int64_t)b.split * a.packed_elems + b.wofs, a, b, wm, wn, lane);
}

// ---------------------------------------------------------------- channels-last weight gradient
// The same per-(phase, tap) GEMM with both operands channels-last: x (N, D, H, W, C_in) and
// grad_y (N, OD, OH, OW, C_out), 16-byte aligned, C_in/g and C_out/g multiples of 8.  A k chunk
// of 32 phase outputs is then 32 rows of 16-byte channel vectors per operand, copied by
// cp.async (zero-filled outside the input and past the reduction) into one of kGwClStages
// buffers laid out [k][channel], 16-byte chunks XOR-swizzled by k so that ldmatrix.trans (which
// turns them into k-contiguous fragments) reads distinct banks: no element-wise loads, and the
// copies of the next stages overlap this one's mmas.  A block owns a 64 x BN channel tile
// (BN = 32 * WN) of one (phase, tap) and a split of the reduction, as gw_mma_kernel, and its
// accumulators are added into a second set every kFlushTerms terms as there.
template <int CH> __device__ __forceinline__ int k_swz(int k) {
  return CH >= 8 ? (k & 7) : ((k >> 1) & 3);  // 8 chunks a row: 128 bytes; 4: two rows share
}

// gw_cl_kernel's stage rows: k row k holds C channels (C * 2 bytes), 16-byte chunk ch at
// ch ^ k_swz(k).
template <int C>
struct GwClRows {
  static __device__ __forceinline__ uint32_t offset(int k, int ch) {
    return (uint32_t)(k * (C * 2) + ((ch ^ k_swz<C / 8>(k)) << 4));
  }
};

// A thread's copies in both channels-last weight-gradient kernels (gw_cl_kernel,
// gw_wgmma_kernel): x's channel vector a_ch of k rows a_pos + i * ROWS, and grad_y's vector
// b_ch of those with i % RB == b_sel (a k row's CHB vectors come from CHB of the threads that
// copy its x vectors), so one walk of a thread's rows serves both operands.  The walk's rows
// and step (kr, ks) stay the kernel's locals and x, grad_y its __restrict__ pointers: as
// members they cost the kernels' loops instructions (sm_80 and sm_90a SASS compared).
template <typename T, int NTHR, int BM, int BN, int BK>
struct GwClCopies {
  static constexpr int CHA = BM / 8, CHB = BN / 8;  // 16-byte chunks per k row
  static constexpr int PA = BK * CHA / NTHR;        // x vectors a thread copies (its k rows)
  static constexpr int RB = CHA / CHB;     // its grad_y vectors: one of every RB of its rows
  static constexpr int ROWS = NTHR / CHA;  // k rows between a thread's successive rows
  static_assert(PA * NTHR == BK * CHA && RB * CHB == CHA && PA % RB == 0, "loader split");
  int a_ch, a_pos, b_ch, b_sel;
  bool a_ok, b_ok;  // whole vectors: C/g % 8 == 0
  GmWalk wk;
  const T* xb;
  const T* gb;

  // thread tid's share, in kr the k rows of the block's first chunk and in ks the step from
  // one chunk's rows to the next's
  static __device__ __forceinline__ GwClCopies of(KRow (&kr)[PA], KStep& ks, const T* x,
                                                  const T* gy, const GmArgs& a,
                                                  const GmBlock& b, int tid) {
    GwClCopies t;
    t.a_ch = tid % CHA;
    t.a_pos = tid / CHA;
    t.b_ch = t.a_ch % CHB;
    t.b_sel = t.a_ch / CHB;
    t.a_ok = t.a_ch * 8 < b.cin_n;
    t.b_ok = t.b_ch * 8 < b.con;
    t.wk = gm_walk<true>(a, b);
    t.xb = x + (int64_t)b.g * a.cin_g + b.ci0 + t.a_ch * 8;
    t.gb = gy + (int64_t)b.g * a.cout_g + b.co0 + t.b_ch * 8 + t.wk.gy_res;
    ks = KStep{};
    if (b.c_beg < b.c_end) {  // a phase without outputs has no chunks (and zero counts)
      const uint32_t k0 = (uint32_t)b.c_beg * BK;
#pragma unroll
      for (int i = 0; i < PA; ++i)
        kr[i] = krow_at(k0 + t.a_pos + i * ROWS, b, t.wk.xs, t.wk.gs);
      ks = kstep_of(BK, b, t.wk.xs, t.wk.gs);
    }
    return t;
  }

  // the chunk at kr (kr then steps to the next) into a stage's A at sA and B at sB, placed by
  // PlaceA / PlaceB::offset(k row, 16-byte chunk)
  template <typename PlaceA, typename PlaceB>
  __device__ __forceinline__ void copy(KRow (&kr)[PA], const KStep& ks, uint32_t sA,
                                       uint32_t sB, const T* __restrict__ x,
                                       const T* __restrict__ gy, const GmArgs& a,
                                       const GmBlock& b) const {
#pragma unroll
    for (int i = 0; i < PA; ++i) {
      const int k = a_pos + i * ROWS;
      const bool valid = kr[i].n < (uint32_t)a.nbatch;
      const bool ok = a_ok && valid && krow_in_input(kr[i], b, a);
      cp_async16_ca(sA + PlaceA::offset(k, a_ch),
                    ok ? (const void*)(xb + (kr[i].xo + wk.x_tap)) : (const void*)x, ok);
      if (i % RB == b_sel) {
        const bool okb = b_ok && valid;
        cp_async16_ca(sB + PlaceB::offset(k, b_ch),
                      okb ? (const void*)(gb + kr[i].go) : (const void*)gy, okb);
      }
      krow_add(kr[i], ks, b);
    }
  }
};

// Four 128-thread blocks a multiprocessor, six of 64 threads (the k-row walk's registers
// would leave room for three and five).
template <typename T, int WN>
__global__ void __launch_bounds__(2 * WN * 32, WN == 1 ? 6 : 4) gw_cl_kernel(const GmArgs a) {
  phaseconv_exact::let_dependents_start();  // the reduction may start (launch_reduce)
  constexpr int WM = 2, NTHR = WM * WN * 32;
  constexpr int BM = WM * 32, BN = WN * 32, BK = kGmBK, STAGES = phaseconv::kGwClStages;
  constexpr int A_STAGE = BK * BM * 2, STAGE = BK * (BM + BN) * 2;
  using Copies = GwClCopies<T, NTHR, BM, BN, BK>;
  static_assert(sizeof(T) == 2, "16-bit operands");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t s_base = (uint32_t)__cvta_generic_to_shared(smem_raw);
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ gy = static_cast<const T*>(a.gy);
  float* __restrict__ ws = static_cast<float*>(a.ws);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp % WM, wn = warp / WM;

  GmBlock b;
  if (!decode_block<BM, BN>(a, b)) return;  // uniform: this phase has fewer taps

  KRow kr[Copies::PA];  // the k rows of the next chunk this thread copies
  KStep ks;
  const Copies cp = Copies::of(kr, ks, x, gy, a, b, tid);
  auto load_next = [&](int stage) {  // the chunk after the previous call's (c_beg first)
    const uint32_t sA = s_base + stage * STAGE;
    cp.template copy<GwClRows<BM>, GwClRows<BN>>(kr, ks, sA, sA + A_STAGE, x, gy, a, b);
  };

  float acc[2][4][4], tot[2][4][4];
  zero_acc(acc);
  zero_acc(tot);
  const int mi = lane >> 3;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (b.c_beg + s < b.c_end) load_next(s);
    cp_async_commit();
  }
  int since = 0;
  for (int c = b.c_beg; c < b.c_end; ++c) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // chunk c has landed for every thread; chunk c-1's buffer is free
    const int cn = c + STAGES - 1;
    if (cn < b.c_end) load_next((cn - b.c_beg) % STAGES);
    cp_async_commit();
    const uint32_t sA = s_base + ((c - b.c_beg) % STAGES) * STAGE, sB = sA + A_STAGE;
#pragma unroll
    for (int ks = 0; ks < BK / 16; ++ks) {
      uint32_t af[2][4], bf[4][2];
      // A: matrices (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15)
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const int kk = ks * 16 + (mi >> 1) * 8 + (lane & 7);
        const int mg = (wm * 2 + mt) * 2 + (mi & 1);
        ldsm_x4_trans(af[mt], sA + GwClRows<BM>::offset(kk, mg));
      }
      // B: matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15)
#pragma unroll
      for (int jp = 0; jp < 2; ++jp) {
        uint32_t rr[4];
        const int kk = ks * 16 + (mi & 1) * 8 + (lane & 7);
        const int ng = wn * 4 + jp * 2 + (mi >> 1);
        ldsm_x4_trans(rr, sB + GwClRows<BN>::offset(kk, ng));
        bf[2 * jp][0] = rr[0]; bf[2 * jp][1] = rr[1];
        bf[2 * jp + 1][0] = rr[2]; bf[2 * jp + 1][1] = rr[3];
      }
      mma_tiles<T>(acc, af, bf);
    }
    step_flush<true>(tot, acc, since, kFlushTerms / BK);
  }
  cp_async_wait<0>();
  merge_acc(acc, tot);
  write_warp_tile(acc, ws + (int64_t)b.split * a.packed_elems + b.wofs, a, b, wm, wn, lane);
}

// ---------------------------------------------------------------- warpgroup weight gradient
// gw_cl_kernel's GEMM on wgmma (sm_90a builds; the plan offers it only where DevInfo::wgmma).
// A block owns a BM x BN channel tile (64 input channels a warpgroup: 128 x 128, 64 x 64 or
// 64 x 32) of one (phase, tap) and a split of the reduction, in chunks of BK = 64 k rows.
// Each operand lands as gw_cl_kernel's [k][channel] rows, which is wgmma's MN-major layout:
// rows of 64 channels (128 bytes; a 32-channel operand: 64 bytes), their 16-byte chunks
// XOR-swizzled by the k row as the hardware's 128-byte (64-byte) swizzle reads them, every 64
// channels a slab of BK rows of its own (GwWgOperand).  Both operands are then read by the
// descriptors straight from the stages: no ldmatrix, no fragments in registers.  One batch of
// wgmma stays in flight while the next chunk is waited for, so a stage is refilled two chunks
// after it was read.  The accumulators are added into a second set every kFlushTerms terms
// (the batch after a flush starts from zero: scale_d 0), as the mma.sync kernels do.
template <int C, int BK> struct GwWgOperand {  // C channels a k row
  static_assert(C == 32 || C % 64 == 0, "rows of 32 or 64-channel slabs");
  static constexpr int ROW = C >= 64 ? 128 : 64;  // bytes of a k row in one slab
  static constexpr int SLAB = BK * ROW;           // bytes of one 64-channel slab
  static constexpr int BYTES = C >= 64 ? (C / 64) * SLAB : SLAB;
  static constexpr int SWIZZLE = C >= 64 ? phaseconv_wgmma::kSwizzle128
                                         : phaseconv_wgmma::kSwizzle64;
  // byte offset of 16-byte chunk `ch` (channels 8 ch .. 8 ch + 7) of k row k: gw_cl_kernel's
  // rows within each 64-channel slab
  static __device__ __forceinline__ uint32_t offset(int k, int ch) {
    if (C >= 64) return (uint32_t)((ch >> 3) * SLAB) + GwClRows<64>::offset(k, ch & 7);
    return GwClRows<C>::offset(k, ch);
  }
  // descriptor of k rows 16 ks .. 16 ks + 15 from `base` (a slab): lbo to the next 64
  // channels, sbo to the next 8 k rows
  static __device__ __forceinline__ uint64_t desc(uint32_t base, int ks) {
    return phaseconv_wgmma::smem_desc(base + ks * 16 * ROW, SLAB, 8 * ROW, SWIZZLE);
  }
};

// One chunk of a warpgroup weight-gradient block (BK k rows) on wgmma, committed as one
// batch; `first` (the first chunk since a flush) overwrites d instead of adding.
template <typename T, int BN, int BK, typename OpA, typename OpB>
__device__ __forceinline__ void gw_wg_batch(float (&d)[BN / 2], uint32_t sA, uint32_t sB,
                                            bool first) {
  namespace wg = phaseconv_wgmma;
  wg::fence_operand(d);
  wg::fence();
#pragma unroll
  for (int k16 = 0; k16 < BK / 16; ++k16)
    wg::Wgmma<T, BN, 1>::run(d, OpA::desc(sA, k16), OpB::desc(sB, k16), !first || k16 != 0);
  wg::commit();
}

// Every kFlushTerms: wait for the batches in d and add them into tot (fp32 partial sums stay
// short; the next batch starts from zero).
template <int BN>
__device__ __forceinline__ void gw_wg_flush(float (&d)[BN / 2], float (&tot)[BN / 2]) {
  namespace wg = phaseconv_wgmma;
  wg::wait<0>();
  wg::fence_operand(d);
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) tot[i] += d[i];
}

// A warpgroup weight-gradient block's sums into its split's workspace slice (gw_wgmma_kernel,
// gw_tma_kernel): tot's rows (input channels) 64 wg + 16 (warp % 4) + lane / 4 (+ 8), columns
// (output channels) 8 j + 2 (lane % 4) (+ 1) at tot[4 j .. 4 j + 3].
template <int BN>
__device__ __forceinline__ void gw_wg_store(const GmArgs& a, const GmBlock& b,
                                            const float (&tot)[BN / 2], float* __restrict__ ws,
                                            int warp, int lane) {
  float* out = ws + (int64_t)b.split * a.packed_elems + b.wofs;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int ci = (warp >> 2) * 64 + (warp & 3) * 16 + (lane >> 2) + half * 8;
    if (ci >= b.cin_n) continue;
    float* orow = out + (((int64_t)b.g * a.cin_g + b.ci0 + ci) * b.ntaps + b.t) * a.cout_g +
                  b.co0;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
      const int co = j * 8 + (lane & 3) * 2;  // C_out/g % 8 == 0: both columns or neither
      if (co < b.con)
        *reinterpret_cast<float2*>(orow + co) = make_float2(tot[4 * j + 2 * half],
                                                            tot[4 * j + 2 * half + 1]);
    }
  }
}

template <typename T, int WGS, int BN>
__global__ void __launch_bounds__(WGS * 128) gw_wgmma_kernel(const GmArgs a) {
  phaseconv_exact::let_dependents_start();  // the reduction may start (launch_reduce)
  namespace wg = phaseconv_wgmma;
  constexpr int NTHR = WGS * 128, BM = WGS * 64, BK = phaseconv::kGwWgBK;
  constexpr int STAGES = phaseconv::kGwWgStages, AHEAD = STAGES - 2;
  using OpA = GwWgOperand<BM, BK>;
  using OpB = GwWgOperand<BN, BK>;
  constexpr int STAGE = OpA::BYTES + OpB::BYTES;
  using Copies = GwClCopies<T, NTHR, BM, BN, BK>;  // gw_cl_kernel's copies
  constexpr int FLUSH = phaseconv::kFlushTerms / BK;  // chunks between flushes
  static_assert(sizeof(T) == 2, "16-bit operands (MN-major wgmma)");
  static_assert(STAGE % 1024 == 0 && FLUSH >= 1, "1024-byte stages (the swizzle atom)");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // stages 1024-byte aligned (the plan adds the slack)
  const uint32_t s_base = ((uint32_t)__cvta_generic_to_shared(smem_raw) + 1023u) & ~1023u;
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ gy = static_cast<const T*>(a.gy);
  float* __restrict__ ws = static_cast<float*>(a.ws);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  GmBlock b;
  if (!decode_block<BM, BN, BK>(a, b)) return;  // uniform: this phase has fewer taps

  KRow kr[Copies::PA];  // the k rows of the next chunk this thread copies
  KStep ks;
  const Copies cp = Copies::of(kr, ks, x, gy, a, b, tid);
  auto load_next = [&](int stage) {  // the chunk after the previous call's (c_beg first)
    const uint32_t sA = s_base + stage * STAGE;
    cp.template copy<OpA, OpB>(kr, ks, sA, sA + OpA::BYTES, x, gy, a, b);
  };

  float d[BN / 2], tot[BN / 2];
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) d[i] = tot[i] = 0.f;
#pragma unroll
  for (int s = 0; s < AHEAD; ++s) {
    if (b.c_beg + s < b.c_end) load_next(s);
    cp_async_commit();
  }
  const uint32_t a_slab = (uint32_t)(warp >> 2) * OpA::SLAB;  // the warpgroup's 64 channels
  int since = 0;  // chunks in d since the last flush
  for (int c = b.c_beg; c < b.c_end; ++c) {
    cp_async_wait<AHEAD - 1>();
    wg::fence_proxy_async();  // this thread's copies, visible to wgmma (async proxy)
    // chunk c has landed for every thread; every warpgroup's batch c-2 is complete, so its
    // stage takes chunk c + AHEAD
    __syncthreads();
    const int cn = c + AHEAD;
    if (cn < b.c_end) load_next((cn - b.c_beg) % STAGES);
    cp_async_commit();
    const uint32_t sA = s_base + ((c - b.c_beg) % STAGES) * STAGE, sB = sA + OpA::BYTES;
    gw_wg_batch<T, BN, BK, OpA, OpB>(d, sA + a_slab, sB, since == 0);
    if (++since == FLUSH) {
      gw_wg_flush<BN>(d, tot);
      since = 0;  // the next batch starts from zero
    } else {
      wg::wait<1>();  // batch c stays in flight while chunk c + 1 is waited for
      wg::fence_operand(d);
    }
  }
  wg::wait<0>();
  wg::fence_operand(d);
  cp_async_wait<0>();
  if (since != 0) {
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) tot[i] += d[i];
  }
  gw_wg_store<BN>(a, b, tot, ws, warp, lane);
}

// The splits of a tile added where a cluster holds them all (gw_tma_kernel, CLUSTER): each
// block stages its partial sums (float, rows of BN + 8: a half warp's float2 stores fall on
// distinct banks) in its drained stages; after a cluster barrier, block `split` adds rows
// split, split + splits, ... of every block's tile, in split order from zero, as the
// reduction kernels add the workspace's slices (the same bits), and stores them in the
// weight's layout, a non-finite sum recomputed from its real pairs; a last barrier keeps
// every block's tile until the others have read it.  No workspace, no second kernel.
template <typename T, int WGS, int BN>
__device__ __forceinline__ void gw_cluster_sum(const GmArgs& a, const GmBlock& b,
                                               const float (&tot)[BN / 2], float* part,
                                               const PhaseConvExact& ex, int warp, int lane,
                                               int tid) {
  namespace tma = phaseconv_tma;
  constexpr int PITCH = BN + 8, PAIRS = BN / 2, NTHR = WGS * 128 + 32;
  __syncthreads();  // every warpgroup's last batch is complete: the stages are free
  if (warp < WGS * 4) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = (warp >> 2) * 64 + (warp & 3) * 16 + (lane >> 2) + half * 8;
#pragma unroll
      for (int j = 0; j < BN / 8; ++j)
        *reinterpret_cast<float2*>(part + row * PITCH + j * 8 + (lane & 3) * 2) =
            make_float2(tot[4 * j + 2 * half], tot[4 * j + 2 * half + 1]);
    }
  }
  __syncwarp();
  tma::cluster_sync();  // every split's tile is staged (every warp converged: .aligned)
  const int splits = a.splits;
  const int rows = b.cin_n > b.split ? (b.cin_n - b.split + splits - 1) / splits : 0;
  const int taps = (int)(a.view.size[2] * a.view.size[3] * a.view.size[4]);
  const int tap = a.index[b.wofs + (int64_t)b.t * a.cout_g];  // (ci 0, co 0: the tap itself)
  const int64_t tap_ofs = phaseconv_tap_offset(a.view, (uint32_t)tap);
  const uint32_t base = tma::smem_addr(part);
  T* gw = static_cast<T*>(a.gw);
  for (int i = tid; i < rows * PAIRS; i += NTHR) {
    const int row = b.split + (i / PAIRS) * splits, col = (i % PAIRS) * 2;
    if (col >= b.con) continue;  // (C_out/g % 8 == 0: both columns or neither)
    float s0 = 0.f, s1 = 0.f;
    for (int k = 0; k < splits; ++k) {
      const float2 v = tma::load_peer_float2(base + 4u * (uint32_t)(row * PITCH + col),
                                             (uint32_t)k);
      s0 += v.x;
      s1 += v.y;
    }
    const int64_t ci = (int64_t)b.g * a.cin_g + b.ci0 + row;
    const int co = b.co0 + col;
    const float sum[2] = {s0, s1};
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      T v = from_acc<T>(sum[e]);
      if (!phaseconv_exact::finite_value(v))
        v = phaseconv_exact::exact_element<T>(ex, (ci * a.cout_g + co + e) * taps + tap);
      gw[ci * a.view.stride[0] + (int64_t)(co + e) * a.view.stride[1] + tap_ofs] = v;
    }
  }
  __syncwarp();
  tma::cluster_sync();  // the other blocks have read this block's tile
}

// gw_wgmma_kernel's GEMM with its operands copied by the TMA unit (sm_90a, CUDA 12+): a chunk
// of the reduction is a box of box_d x box_h x box_w = BK outputs j of the phase, (n, jd0,
// jh0, jw0) its corner, so its A is one box of the channels-last input at j0 + the tap's
// offset (x[j + x_tap]: zero-filled outside x) per 64 input channels, and its B one box of
// channels-last grad_y at the phase's outputs r + s j0, every s-th voxel (the map's element
// strides; zero past grad_y, which is where j passes the phase's extent) per 64 output
// channels (32: the 64-byte swizzle).  Both land as the [k][channel] slabs of GwWgOperand,
// whose swizzle is the TMA unit's.  A producer warp issues a chunk's boxes on its stage's
// `full` barrier; each consumer warpgroup releases the stage on its `empty` barrier once its
// wgmma batch reading it is complete.  The summation order (box by box, each box's voxels in
// W-fastest order) is fixed: results repeat bitwise.  Channels past the tile's (the next
// group's, or past C) ride along in rows and columns that are never stored.  CLUSTER: a
// tile's splits are one cluster's blocks, which add them (gw_cluster_sum); else each split
// writes its workspace slice for the reduction kernels.
template <typename T, int WGS, int BN, bool CLUSTER>
__global__ void __launch_bounds__(WGS * 128 + 32, 1)
gw_tma_kernel(const GmArgs a, const __grid_constant__ PhaseConvTensorMap xmap,
              const __grid_constant__ PhaseConvTensorMap gmap,
              const PHASECONV_GRID_CONSTANT PhaseConvExact ex) {
  phaseconv_exact::let_dependents_start();  // the reduction may start (launch_reduce)
  namespace wg = phaseconv_wgmma;
  namespace tma = phaseconv_tma;
  constexpr int BM = WGS * 64, BK = phaseconv::kGwWgBK;
  constexpr int STAGES = phaseconv::kGwWgStages;
  using OpA = GwWgOperand<BM, BK>;
  using OpB = GwWgOperand<BN, BK>;
  constexpr int STAGE = OpA::BYTES + OpB::BYTES;
  constexpr int FLUSH = phaseconv::kFlushTerms / BK;  // chunks between flushes
  constexpr int B_BOX = BN >= 64 ? 64 : BN;           // channels of one grad_y box
  static_assert(sizeof(T) == 2, "16-bit operands (MN-major wgmma)");
  static_assert(STAGE % 1024 == 0 && FLUSH >= 1, "1024-byte stages (the swizzle atom)");
  static_assert(!CLUSTER || BM * (BN + 8) * 4 <= STAGES * STAGE, "the staged partial tile");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // stages 1024-byte aligned (the plan adds the slack), then the barriers
  const uint32_t raw = tma::smem_addr(smem_raw);
  unsigned char* smem = smem_raw + (((raw + 1023u) & ~1023u) - raw);
  const uint32_t s_base = tma::smem_addr(smem);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + STAGES * STAGE);
  uint64_t* empty = full + STAGES;
  float* __restrict__ ws = static_cast<float*>(a.ws);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  GmBlock b;
  // uniform (over the cluster too): this phase has fewer taps
  if (!decode_block<BM, BN, BK, true, CLUSTER>(a, b)) return;
  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      tma::bar_init(&full[s], 1);
      tma::bar_init(&empty[s], WGS);  // one arrival a consumer warpgroup
    }
  }
  __syncthreads();
  const int nbw = (int)((b.cw + a.box_w - 1) / a.box_w),
            nbh = (int)((b.ch + a.box_h - 1) / a.box_h),
            nbd = (int)((b.cd + a.box_d - 1) / a.box_d);

  if (warp == WGS * 4) {  // the producer warp: one thread issues every copy
    if (lane == 0) {
      const int xc = b.g * a.cin_g + b.ci0, gc = b.g * a.cout_g + b.co0;
      for (int c = b.c_beg; c < b.c_end; ++c) {
        const int i = c - b.c_beg, s = i % STAGES, use = i / STAGES;
        if (use > 0) tma::bar_wait(&empty[s], (uint32_t)(use - 1) & 1u);
        tma::bar_arrive_expect(&full[s], STAGE);
        int r = c;
        const int bw = r % nbw; r /= nbw;
        const int bh = r % nbh; r /= nbh;
        const int bd = r % nbd;
        const int n = r / nbd;
        const int jd0 = bd * a.box_d, jh0 = bh * a.box_h, jw0 = bw * a.box_w;
        unsigned char* st = smem + s * STAGE;
#pragma unroll
        for (int slab = 0; slab < WGS; ++slab)
          tma::load_box(st + slab * OpA::SLAB, xmap, &full[s], xc + slab * 64, jw0 + b.xw,
                        jh0 + b.xh, jd0 + b.xd, n);
#pragma unroll
        for (int slab = 0; slab < BN / B_BOX; ++slab)
          tma::load_box(st + OpA::BYTES + slab * OpB::SLAB, gmap, &full[s], gc + slab * 64,
                        b.rw + a.sw * jw0, b.rh + a.sh * jh0, b.rd + a.sd * jd0, n);
      }
    }
    if constexpr (CLUSTER) {  // (every thread of the cluster takes its barriers)
      float none[BN / 2];
      gw_cluster_sum<T, WGS, BN>(a, b, none, reinterpret_cast<float*>(smem), ex, warp, lane,
                                 tid);
    }
    return;
  }

  float d[BN / 2], tot[BN / 2];
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) d[i] = tot[i] = 0.f;
  const uint32_t a_slab = (uint32_t)(warp >> 2) * OpA::SLAB;  // the warpgroup's 64 channels
  int since = 0;  // chunks in d since the last flush
  int freed = 0;  // chunks whose stage this warpgroup has released
  for (int c = b.c_beg; c < b.c_end; ++c) {
    const int i = c - b.c_beg, s = i % STAGES;
    tma::bar_wait(&full[s], (uint32_t)(i / STAGES) & 1u);
    const uint32_t sA = s_base + s * STAGE, sB = sA + OpA::BYTES;
    gw_wg_batch<T, BN, BK, OpA, OpB>(d, sA + a_slab, sB, since == 0);
    int done;  // the last chunk whose batch is complete
    if (++since == FLUSH) {
      gw_wg_flush<BN>(d, tot);
      since = 0;  // the next batch starts from zero
      done = i;
    } else {
      wg::wait<1>();  // batch i stays in flight while chunk i + 1 is waited for
      wg::fence_operand(d);
      done = i - 1;
    }
    for (; freed <= done; ++freed)  // each stage released once a use
      if ((tid & 127) == 0) tma::bar_arrive(&empty[freed % STAGES]);
  }
  wg::wait<0>();
  wg::fence_operand(d);
  if (since != 0) {
#pragma unroll
    for (int j = 0; j < BN / 2; ++j) tot[j] += d[j];
  }
  if constexpr (CLUSTER)
    gw_cluster_sum<T, WGS, BN>(a, b, tot, reinterpret_cast<float*>(smem), ex, warp, lane, tid);
  else
    gw_wg_store<BN>(a, b, tot, ws, warp, lane);
}

// The tensor-core GEMM kernels' arguments: the geometry and the plan's grid decomposition.
GmArgs gm_args(const PhaseConvBwdWeightParams& p, const PhaseConvBwdWeightPlan& plan) {
  GmArgs a;
  set_geometry(a, p);
  a.max_taps = plan.gm.max_taps;
  a.n_cib = plan.gm.n_cib; a.n_cob = plan.gm.n_cob; a.splits = plan.gm.splits;
  a.box_d = plan.gm.box_d; a.box_h = plan.gm.box_h; a.box_w = plan.gm.box_w;
  return a;
}

template <typename T, int WM, int WN>
cudaError_t launch_gm_t(const PhaseConvBwdWeightParams& p, const PhaseConvBwdWeightPlan& plan,
                        cudaStream_t stream) {
  return launch_kernel(gw_mma_kernel<T, WM, WN>, plan.grid, WM * WN * 32, plan.smem, stream,
                       gm_args(p, plan));
}

template <typename T>
cudaError_t launch_gm(const PhaseConvBwdWeightParams& p, const PhaseConvBwdWeightPlan& plan,
                      cudaStream_t stream) {
  cudaError_t err = launch_gm_t<T, kGmWM, kGmWN>(p, plan, stream);
  if (err != cudaSuccess) return err;
  return launch_reduce<T>(p, plan.gm.splits, stream);
}
template <>
cudaError_t launch_gm<double>(const PhaseConvBwdWeightParams&, const PhaseConvBwdWeightPlan&,
                              cudaStream_t) {
  return cudaErrorInvalidValue;  // the plan never picks tensor cores for float64
}

template <typename T, int WN>
cudaError_t launch_gw_cl_t(const GmArgs& a, const PhaseConvBwdWeightPlan& plan,
                           cudaStream_t stream) {
  gw_cl_kernel<T, WN><<<(unsigned)plan.grid, 2 * WN * 32, plan.smem, stream>>>(a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_gw_cl(const PhaseConvBwdWeightParams& p, const PhaseConvBwdWeightPlan& plan,
                         cudaStream_t stream) {
  const GmArgs a = gm_args(p, plan);
  const cudaError_t err = plan.gm.wn == 1 ? launch_gw_cl_t<T, 1>(a, plan, stream)
                                          : launch_gw_cl_t<T, 2>(a, plan, stream);
  if (err != cudaSuccess) return err;
  return launch_reduce<T>(p, plan.gm.splits, stream);
}
template <>
cudaError_t launch_gw_cl<float>(const PhaseConvBwdWeightParams&,
                                const PhaseConvBwdWeightPlan&, cudaStream_t) {
  return cudaErrorInvalidValue;  // the plan picks it for float16/bfloat16 only
}
template <>
cudaError_t launch_gw_cl<double>(const PhaseConvBwdWeightParams&,
                                 const PhaseConvBwdWeightPlan&, cudaStream_t) {
  return cudaErrorInvalidValue;
}

// The TMA tile with a tile's splits in one cluster of plan.gm.cluster blocks (CUDA 12+).
template <typename T, int WGS, int BN>
cudaError_t launch_gw_tma_cluster(const GmArgs& a, const PhaseConvBwdWeightPlan& plan,
                                  cudaStream_t stream, const PhaseConvTensorMap* maps,
                                  const PhaseConvExact& ex) {
#if CUDART_VERSION >= 12000
  cudaLaunchAttribute attribute = {};
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = (unsigned)plan.gm.cluster;
  attribute.val.clusterDim.y = 1;
  attribute.val.clusterDim.z = 1;
  return phaseconv::launch_kernel_with(attribute, gw_tma_kernel<T, WGS, BN, true>, plan.grid,
                                       WGS * 128 + 32, plan.smem, stream, a, maps[0], maps[1],
                                       ex);
#else
  (void)a; (void)plan; (void)stream; (void)maps; (void)ex;
  return cudaErrorNotSupported;
#endif
}

// One warpgroup tile's kernel: its TMA form where `maps` holds x's and grad_y's (one
// producer warp more; its splits in a cluster where the plan says), else the cp.async one.
template <typename T, int WGS, int BN>
cudaError_t launch_gw_wg_tile(const GmArgs& a, const PhaseConvBwdWeightPlan& plan,
                              cudaStream_t stream, const PhaseConvTensorMap* maps,
                              const PhaseConvExact& ex) {
  if (maps != nullptr && plan.gm.cluster > 0)
    return launch_gw_tma_cluster<T, WGS, BN>(a, plan, stream, maps, ex);
  if (maps != nullptr)
    return launch_kernel(gw_tma_kernel<T, WGS, BN, false>, plan.grid, WGS * 128 + 32,
                         plan.smem, stream, a, maps[0], maps[1], ex);
  return launch_kernel(gw_wgmma_kernel<T, WGS, BN>, plan.grid, WGS * 128, plan.smem, stream,
                       a);
}

// The warpgroup tile (GmCfg: wgs warpgroups of 64 input channels, wn * 32 output channels);
// tma: its TMA form, after x's and grad_y's maps (channels-last, 16-byte aligned: the
// engine's copies).  Then the reduction, unless a cluster added the splits.
template <typename T>
cudaError_t launch_gw_wgmma(const PhaseConvBwdWeightParams& p, const PhaseConvBwdWeightPlan& plan,
                            cudaStream_t stream, bool tma) {
  GmArgs a = gm_args(p, plan);
  a.gw = p.grad_w;
  a.view = p.grad_w_view;
  a.index = p.grad_w_index;
  const int tile = plan.gm.wgs * 10 + plan.gm.wn;
  PhaseConvTensorMap maps[2];  // x's, grad_y's
  cudaError_t err;
  if (tma) {
    const int bn = 32 * plan.gm.wn;
    err = phase_conv_tma_encode_box(&maps[0], p.x, p.n, p.in_d, p.in_h, p.in_w, p.c_in, 64,
                                    a.box_w, a.box_h, a.box_d);
    if (err != cudaSuccess) return err;
    err = phase_conv_tma_encode_box(&maps[1], p.grad_y, p.n, p.out_d, p.out_h, p.out_w,
                                    p.c_out, bn >= 64 ? 64 : bn, a.box_w, a.box_h, a.box_d,
                                    a.sw, a.sh, a.sd, bn >= 64 ? 128 : 64);
    if (err != cudaSuccess) return err;
  }
  const PhaseConvTensorMap* m = tma ? maps : nullptr;
  err = tile == 24   ? launch_gw_wg_tile<T, 2, 128>(a, plan, stream, m, p.exact)
        : tile == 12 ? launch_gw_wg_tile<T, 1, 64>(a, plan, stream, m, p.exact)
        : tile == 11 ? launch_gw_wg_tile<T, 1, 32>(a, plan, stream, m, p.exact)
                     : cudaErrorInvalidValue;
  if (err != cudaSuccess) return err;
  if (tma && plan.gm.cluster > 0) return cudaSuccess;
  return launch_reduce<T>(p, plan.gm.splits, stream);
}
template <>
cudaError_t launch_gw_wgmma<float>(const PhaseConvBwdWeightParams&,
                                   const PhaseConvBwdWeightPlan&, cudaStream_t, bool) {
  return cudaErrorInvalidValue;  // the plan picks it for float16/bfloat16 only
}
template <>
cudaError_t launch_gw_wgmma<double>(const PhaseConvBwdWeightParams&,
                                    const PhaseConvBwdWeightPlan&, cudaStream_t, bool) {
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t launch_gw(const PhaseConvBwdWeightParams& p, const PhaseConvBwdWeightPlan& plan,
                      cudaStream_t stream) {
  GwArgs a;
  set_geometry(a, p);
  const GwCfg& c = plan.gw;
  a.ci_b = c.ci_b; a.co_b = c.co_b; a.tc = c.tc;
  a.n_cib = c.n_cib; a.n_cob = c.n_cob; a.n_tch = c.n_tch; a.splits = c.splits;
  a.lg_tpos = c.lg_tpos; a.win_max = c.win_max;
  auto kernel = c.reg == 1 ? gw_partial_kernel<T, 1> : gw_partial_kernel<T, 4>;
  // slices of blocks that find no taps stay unwritten: start from zeros
  cudaError_t err = cudaMemsetAsync(p.workspace, 0, plan.ws_bytes, stream);
  if (err != cudaSuccess) return err;
  if ((err = launch_kernel(kernel, plan.grid, kThreads, plan.smem, stream, a)) != cudaSuccess)
    return err;
  return launch_reduce<T>(p, c.splits, stream);
}

template <typename T>
cudaError_t launch_gw_naive(const PhaseConvBwdWeightParams& p, const PhaseConvBwdWeightPlan& plan,
                            cudaStream_t stream) {
  BwdGeometry a;
  set_geometry(a, p);
  gw_naive_kernel<T><<<(unsigned)plan.grid, 256, 0, stream>>>(a, p.grad_w_index,
                                                               p.grad_w_view, p.grad_w);
  return cudaGetLastError();
}

template <typename T>
cudaError_t run_plan(const PhaseConvBwdWeightParams& p, const PhaseConvBwdWeightPlan& plan,
                     cudaStream_t stream) {
  switch (plan.family) {
    case PHASECONV_EMPTY: return cudaSuccess;  // no phase has taps: nothing to write
    case PHASECONV_GW_MMA: return launch_gm<T>(p, plan, stream);
    case PHASECONV_GW_MMA_CL: return launch_gw_cl<T>(p, plan, stream);
    case PHASECONV_GW_WGMMA: return launch_gw_wgmma<T>(p, plan, stream, false);
    case PHASECONV_GW_WGMMA_TMA: return launch_gw_wgmma<T>(p, plan, stream, true);
    case PHASECONV_GW_SIMT: return launch_gw<T>(p, plan, stream);
    case PHASECONV_GW_NAIVE: return launch_gw_naive<T>(p, plan, stream);
    case PHASECONV_GW_MMA_NARROW: {
      const cudaError_t err = phaseconv::run_gw_narrow<T>(p, plan.narrow, stream);
      if (err != cudaSuccess) return err;
      return launch_reduce<T>(p, plan.narrow.splits, stream);
    }
    case PHASECONV_GW_DEPTHWISE: {
      const cudaError_t err = phaseconv::run_dw_grad_weight<T>(p, plan.depthwise, stream);
      if (err != cudaSuccess) return err;
      return launch_reduce<T>(p, plan.depthwise.splits, stream);
    }
  }
  return cudaErrorInvalidValue;
}

}  // namespace
}  // namespace phaseconv_bwd

cudaError_t phase_conv_bwd_weight(const PhaseConvBwdWeightParams& params,
                                  const PhaseConvBwdWeightPlan& plan, int dtype_code,
                                  cudaStream_t stream) {
  using namespace phaseconv_bwd;
  switch (dtype_code) {
    case PHASECONV_FLOAT32: return run_plan<float>(params, plan, stream);
    case PHASECONV_FLOAT64: return run_plan<double>(params, plan, stream);
    case PHASECONV_FLOAT16: return run_plan<__half>(params, plan, stream);
    case PHASECONV_BFLOAT16: return run_plan<__nv_bfloat16>(params, plan, stream);
  }
  return cudaErrorInvalidValue;
}
