// phaseconv CUDA forward engine (device code + host launcher).  CUDA headers only.
//
// Every 3-D phase is a dense stride-1 correlation of the input with a slice of the kernel.
// One launch covers all phases.  A block owns one tile of one phase:
//   (phase, batch n, group g, block of C_out/g channels, TD x TH x TW phase-local outputs)
// and walks the C_in/g channels in chunks.  Per chunk it stages into shared memory
//   * the input halo the tile reads (zero outside the input: no padded copy in memory),
//   * the chunk's packed weights for all taps of the phase and the block's channels,
// then every thread accumulates a register micro-tile of M output voxels x CO_T channels
// with FMAs (fp32 accumulation for fp16/bf16/fp32, fp64 for double).  Blocks are ordered
// phase-fastest, so the phases of one spatial tile run together: they share the input
// halo in L2 and their interleaved output writes merge in L2.
//
// A naive one-thread-per-output kernel covers configurations whose tiles do not fit in
// shared memory (huge dilated kernels).  No atomics: each output is written once by the
// block that owns it; results are deterministic.
#include "phase_conv_fwd.cuh"
#include "phase_conv_dtype.cuh"
#include "phase_conv_mma.cuh"
#include "phase_conv_plan.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <stdio.h>

namespace phaseconv {
namespace {

// ---------------------------------------------------------------- dtype helpers
using namespace phaseconv_dtype;  // AccOf, to_acc, from_acc, ldg, ldg_i64, axis_count
using phaseconv_exact::all_finite;
using phaseconv_exact::finite_value;
using namespace phaseconv_mma;    // ldmatrix, cp.async, mma.sync, 3xTF32 split, flush_acc

// Weight vector load from shared memory (offsets are multiples of CO_T: aligned).
template <typename A, int CO_T> struct WLoad {
  static __device__ __forceinline__ void run(A (&w)[CO_T], const A* p) {
#pragma unroll
    for (int c = 0; c < CO_T; ++c) w[c] = p[c];
  }
};
template <> struct WLoad<float, 8> {
  static __device__ __forceinline__ void run(float (&w)[8], const float* p) {
    const float4 a = reinterpret_cast<const float4*>(p)[0];
    const float4 b = reinterpret_cast<const float4*>(p)[1];
    w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w;
    w[4] = b.x; w[5] = b.y; w[6] = b.z; w[7] = b.w;
  }
};
template <> struct WLoad<float, 4> {
  static __device__ __forceinline__ void run(float (&w)[4], const float* p) {
    const float4 a = reinterpret_cast<const float4*>(p)[0];
    w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w;
  }
};
template <> struct WLoad<float, 2> {
  static __device__ __forceinline__ void run(float (&w)[2], const float* p) {
    const float2 a = reinterpret_cast<const float2*>(p)[0];
    w[0] = a.x; w[1] = a.y;
  }
};
template <> struct WLoad<double, 8> {
  static __device__ __forceinline__ void run(double (&w)[8], const double* p) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const double2 a = reinterpret_cast<const double2*>(p)[c];
      w[2 * c] = a.x; w[2 * c + 1] = a.y;
    }
  }
};


// ---------------------------------------------------------------- block index
// A block index of the tiled, per-phase and all-phase kernels, fastest first: phase, W tile,
// H tile, D tile, batch, C_out/g block, group.  32-bit division where the grid allows it
// (64-bit division is slow).
struct TileIndex {
  int ph, bw, bh, bd, cb, g;
  int64_t n;
};
__device__ __forceinline__ TileIndex decode_tile(int64_t blk, int64_t total, int phases,
                                                 int tiles_w, int tiles_h, int tiles_d,
                                                 int64_t nbatch, int co_blocks) {
  TileIndex t;
  if (total <= 0xffffffffLL) {
    uint32_t r = (uint32_t)blk;
    t.ph = (int)(r % (uint32_t)phases); r /= (uint32_t)phases;
    t.bw = (int)(r % (uint32_t)tiles_w); r /= (uint32_t)tiles_w;
    t.bh = (int)(r % (uint32_t)tiles_h); r /= (uint32_t)tiles_h;
    t.bd = (int)(r % (uint32_t)tiles_d); r /= (uint32_t)tiles_d;
    t.n = (int64_t)(r % (uint32_t)nbatch); r /= (uint32_t)nbatch;
    t.cb = (int)(r % (uint32_t)co_blocks);
    t.g = (int)(r / (uint32_t)co_blocks);
  } else {
    int64_t r = blk;
    t.ph = (int)(r % phases); r /= phases;
    t.bw = (int)(r % tiles_w); r /= tiles_w;
    t.bh = (int)(r % tiles_h); r /= tiles_h;
    t.bd = (int)(r % tiles_d); r /= tiles_d;
    t.n = r % nbatch; r /= nbatch;
    t.cb = (int)(r % co_blocks);
    t.g = (int)(r / co_blocks);
  }
  return t;
}

// ---------------------------------------------------------------- tiled kernel
struct TiledArgs {
  const void* x;
  const void* w;
  const void* bias;
  void* y;
  PhaseConvExact ex;  // non-finite elements recomputed exactly (phase_conv_exact.cuh)
  const int64_t* table;
  int64_t nbatch;
  int c_in, c_out, cin_g, cout_g;
  int in_d, in_h, in_w, out_d, out_h, out_w;
  int sd, sh, sw, pdd, pdh, pdw;
  int num_phases;
  int LW, NY, NZ, WC, MD, MH;
  int TW, TH, TD, co_blk;
  int tiles_w, tiles_h, tiles_d, co_blocks;
  int ci_chunk, pitch, hh_max, plane, s_w_elems;
  int64_t total_blocks;
};

template <typename T, int CO_T, int M>
__global__ void __launch_bounds__(256, 2) tiled_kernel(const TiledArgs a) {
  bool nonfinite = false;  // a stored element is Inf or NaN
  typedef typename AccOf<T>::type A;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* s_w = reinterpret_cast<A*>(smem_raw);
  A* s_x = s_w + a.s_w_elems;
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ wt = static_cast<const T*>(a.w);
  const T* __restrict__ bias = static_cast<const T*>(a.bias);
  T* __restrict__ y = static_cast<T*>(a.y);

  const int tid = threadIdx.x;
  const int nthr = blockDim.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int nwarps = nthr >> 5;
  const int tx = tid % a.LW;
  int q = tid / a.LW;
  const int ty = q % a.NY;
  q /= a.NY;
  const int tz = q % a.NZ;
  const int tc = q / a.NZ;

  int soff[M];
#pragma unroll
  for (int i = 0; i < M; ++i) {
    const int id = i / a.MH;
    const int ih = i - id * a.MH;
    soff[i] = ((tz + id * a.NZ) * a.hh_max + ty + ih * a.NY) * a.pitch + tx;
  }
  const int64_t in_plane = (int64_t)a.in_d * a.in_h * a.in_w;
  const int64_t out_plane = (int64_t)a.out_d * a.out_h * a.out_w;

  for (int64_t blk = blockIdx.x; blk < a.total_blocks; blk += gridDim.x) {
    const TileIndex ti = decode_tile(blk, a.total_blocks, a.num_phases, a.tiles_w, a.tiles_h,
                                     a.tiles_d, a.nbatch, a.co_blocks);
    const int ph = ti.ph, bw = ti.bw, bh = ti.bh, bd = ti.bd, cb = ti.cb, g = ti.g;
    const int64_t n = ti.n;

    const int64_t* e = a.table + (int64_t)ph * PHASECONV_TABLE_STRIDE;
    const int rd = (int)ldg_i64(e + PT_RES_D), rh = (int)ldg_i64(e + PT_RES_H),
              rw = (int)ldg_i64(e + PT_RES_W);
    const int Td = (int)ldg_i64(e + PT_TAPS_D), Th = (int)ldg_i64(e + PT_TAPS_H),
              Tw = (int)ldg_i64(e + PT_TAPS_W);
    const int cd = axis_count(a.out_d, rd, a.sd), ch = axis_count(a.out_h, rh, a.sh),
              cw = axis_count(a.out_w, rw, a.sw);
    const int d0 = bd * a.TD, h0 = bh * a.TH, w0 = bw * a.TW;
    if (d0 >= cd || h0 >= ch || w0 >= cw) continue;  // uniform over the block
    const int taps = Td * Th * Tw;

    A acc[M][CO_T];
#pragma unroll
    for (int i = 0; i < M; ++i)
#pragma unroll
      for (int c = 0; c < CO_T; ++c) acc[i][c] = A(0);

    if (taps > 0) {
      const int offd = (int)ldg_i64(e + PT_OFF_D), offh = (int)ldg_i64(e + PT_OFF_H),
                offw = (int)ldg_i64(e + PT_OFF_W);
      const int64_t wofs = ldg_i64(e + PT_WOFS);
      const int hd = a.TD + (Td - 1) * a.pdd;
      const int hh = a.TH + (Th - 1) * a.pdh;
      const int hw = a.TW + (Tw - 1) * a.pdw;
      const int id0 = d0 + offd, ih0 = h0 + offh, iw0 = w0 + offw;
      const int rows = hd * hh;
      const int64_t xg = ((int64_t)n * a.c_in + (int64_t)g * a.cin_g) * in_plane;
      const int64_t wg = wofs + (int64_t)g * a.cin_g * taps * a.cout_g;
      const int co_base = cb * a.co_blk;
      const int wstride = taps * a.co_blk;  // per input channel in shared memory

      for (int c0 = 0; c0 < a.cin_g; c0 += a.ci_chunk) {
        const int cc = min(a.ci_chunk, a.cin_g - c0);
        __syncthreads();  // the previous chunk's compute is done with shared memory
        // weights: [ci][tap][co_blk] for this chunk
        {
          const int wn = cc * wstride;
          const int64_t wsrc = wg + (int64_t)c0 * taps * a.cout_g + co_base;
          for (int k = tid; k < wn; k += nthr) {
            const int co = k % a.co_blk;
            const int qq = k / a.co_blk;
            A v = A(0);
            if (co_base + co < a.cout_g) v = to_acc<A>(ldg(wt + wsrc + (int64_t)qq * a.cout_g + co));
            s_w[k] = v;
          }
        }
        // input halo: [ci][hd][hh_max][pitch]; zero outside the input
        for (int rr = warp; rr < rows; rr += nwarps) {
          const int dd = rr / hh;
          const int hr = rr - dd * hh;
          const int gd = id0 + dd, gh = ih0 + hr;
          const bool rv = (unsigned)gd < (unsigned)a.in_d && (unsigned)gh < (unsigned)a.in_h;
          A* srow = s_x + (dd * a.hh_max + hr) * a.pitch;
          const int64_t grow = xg + (int64_t)c0 * in_plane + ((int64_t)gd * a.in_h + gh) * a.in_w;
          for (int wl = lane; wl < hw; wl += 32) {
            const int gw = iw0 + wl;
            const bool v = rv && (unsigned)gw < (unsigned)a.in_w;
            A* sp = srow + wl;
            if (v) {
              const T* gp = x + grow + gw;
              int ci = 0;
              for (; ci + 4 <= cc; ci += 4) {
                const T v0 = ldg(gp + (ci + 0) * in_plane);
                const T v1 = ldg(gp + (ci + 1) * in_plane);
                const T v2 = ldg(gp + (ci + 2) * in_plane);
                const T v3 = ldg(gp + (ci + 3) * in_plane);
                sp[(ci + 0) * a.plane] = to_acc<A>(v0);
                sp[(ci + 1) * a.plane] = to_acc<A>(v1);
                sp[(ci + 2) * a.plane] = to_acc<A>(v2);
                sp[(ci + 3) * a.plane] = to_acc<A>(v3);
              }
              for (; ci < cc; ++ci) sp[ci * a.plane] = to_acc<A>(ldg(gp + ci * in_plane));
            } else {
              for (int ci = 0; ci < cc; ++ci) sp[ci * a.plane] = A(0);
            }
          }
        }
        __syncthreads();
        // compute
        for (int ci = 0; ci < cc; ++ci) {
          const A* sx = s_x + ci * a.plane;
          const A* swp = s_w + ci * wstride + tc * CO_T;
          for (int td = 0; td < Td; ++td) {
            for (int th = 0; th < Th; ++th) {
              const A* sxr = sx + (td * a.pdd * a.hh_max + th * a.pdh) * a.pitch;
              for (int tw = 0; tw < Tw; ++tw) {
                A wv[CO_T];
                WLoad<A, CO_T>::run(wv, swp);
                swp += a.co_blk;
                const A* sxt = sxr + tw * a.pdw;
#pragma unroll
                for (int i = 0; i < M; ++i) {
                  const A xv = sxt[soff[i]];
#pragma unroll
                  for (int c = 0; c < CO_T; ++c) acc[i][c] = fma(xv, wv[c], acc[i][c]);
                }
              }
            }
          }
        }
      }
    }

    // store: every output of the tile that exists, bias fused
    const int jw = w0 + tx;
    const int ow = rw + a.sw * jw;
#pragma unroll
    for (int i = 0; i < M; ++i) {
      const int id = i / a.MH;
      const int ih = i - id * a.MH;
      const int jd = d0 + tz + id * a.NZ;
      const int jh = h0 + ty + ih * a.NY;
      if (jd < cd && jh < ch && jw < cw) {
        const int od = rd + a.sd * jd, oh = rh + a.sh * jh;
        const int64_t sp = ((int64_t)od * a.out_h + oh) * a.out_w + ow;
#pragma unroll
        for (int c = 0; c < CO_T; ++c) {
          const int co = cb * a.co_blk + tc * CO_T + c;
          if (co < a.cout_g) {
            const int oc = g * a.cout_g + co;
            A v = acc[i][c];
            if (bias != nullptr) v += to_acc<A>(ldg(bias + oc));
            const int64_t yo = (n * a.c_out + oc) * out_plane + sp;
            const T out = from_acc<T>(v);
            y[yo] = out;
            nonfinite |= !finite_value(out);
          }
        }
      }
    }
  }
  if (nonfinite) *a.ex.flag = 1;  // the fix-up recomputes those (phase_conv_exact.cuh)
}

// ---------------------------------------------------------------- naive kernel
struct NaiveArgs {
  const void* x;
  const void* w;
  const void* bias;
  void* y;
  PhaseConvExact ex;  // non-finite elements recomputed exactly (phase_conv_exact.cuh)
  const int64_t* table;
  int64_t nbatch;
  int c_in, c_out, cin_g, cout_g;
  int in_d, in_h, in_w, out_d, out_h, out_w;
  int sd, sh, sw, pdd, pdh, pdw;
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
// not apply: float64, narrow or depthwise layers): one thread per grad_x element sums every
// sub-problem's taps and channels, in table order (deterministic), reading grad_y where the
// sub-problem's phase has an output (phase_conv_fwd.cuh).  Here x is grad_y and y grad_x.
template <typename T>
__global__ void __launch_bounds__(256) naive_bwd_input_kernel(const NaiveArgs a) {
  typedef typename AccOf<T>::type A;
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ wt = static_cast<const T*>(a.w);
  T* __restrict__ y = static_cast<T*>(a.y);
  const int64_t in_plane = (int64_t)a.in_d * a.in_h * a.in_w;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < a.total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    int64_t r = idx;
    const int ow = (int)(r % a.out_w); r /= a.out_w;
    const int oh = (int)(r % a.out_h); r /= a.out_h;
    const int od = (int)(r % a.out_d); r /= a.out_d;
    const int oc = (int)(r % a.c_out);
    const int64_t n = r / a.c_out;
    const int g = oc / a.cout_g, co = oc - g * a.cout_g;
    A acc = A(0);
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
        const T* wc = wt + wofs + ((int64_t)g * a.cin_g + ci) * taps * a.cout_g + co;
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
              const A wv = to_acc<A>(ldg(wc + (int64_t)((td * Th + th) * Tw + tw) * a.cout_g));
              acc = fma(xv, wv, acc);
            }
          }
        }
      }
    }
    y[idx] = from_acc<T>(acc);
  }
}

// ---------------------------------------------------------------- tensor-core kernel
// Implicit GEMM per phase on mma.sync: rows = the block's output voxels, columns = output
// channels, reduction = (tap, input channel).  The input halo is staged channels-last in
// shared memory (a "row" of 16 bytes holds CG consecutive channels of one position), so an
// ldmatrix row address is simply (voxel position + tap offset) * rowstride + group * 16:
// the im2col matrix is never formed.  A reduction step pairs two "half steps", each a
// (tap, 16-byte channel group), so narrow channel counts (C_in/g = 8) pair taps instead of
// padding channels.  bf16/fp16 use m16n8k16 (fp32 accumulate); fp32 uses m16n8k8 TF32 with
// the 3xTF32 split (big*big + big*small + small*big), accurate to about fp32.
struct MmaArgs {
  const void* x;
  const void* w;
  const void* bias;
  void* y;
  PhaseConvExact ex;  // non-finite elements recomputed exactly (phase_conv_exact.cuh)
  const int64_t* table;
  int64_t nbatch;
  int c_in, c_out, cin_g, cout_g;
  int in_d, in_h, in_w, out_d, out_h, out_w;
  int sd, sh, sw, pdd, pdh, pdw;
  int num_phases;
  int TD, TH, TW;           // spatial tile; TD*TH*TW == BM
  int tiles_w, tiles_h, tiles_d, co_blocks;
  int ng;                   // 16-byte channel groups per chunk (chunk = ng * CG channels)
  int x_bytes, w_bytes;     // shared-memory regions (halo, weights); hoff table follows
  int64_t total_blocks;
  // grad-input mode (nsub > 0, see phase_conv_bwd_input): one output "phase" (stride 1), and
  // each tile sums nsub sub-problems (sub_table rows); sub-problem q reads its input at
  // r_q + is * j per axis (one phase of grad_y).  Forward mode: nsub = 0, is = 1.
  const int64_t* sub_table;
  int nsub;
  int isd, ish, isw;
};

template <typename T> struct MmaT;
template <> struct MmaT<__nv_bfloat16> { enum { CG = 8 }; };
template <> struct MmaT<__half> { enum { CG = 8 }; };
template <> struct MmaT<float> { enum { CG = 4 }; };

template <typename T> __device__ __forceinline__ unsigned short bits16(T v);
template <> __device__ __forceinline__ unsigned short bits16<__half>(__half v) {
  return __half_as_ushort(v);
}
template <> __device__ __forceinline__ unsigned short bits16<__nv_bfloat16>(__nv_bfloat16 v) {
  return *reinterpret_cast<unsigned short*>(&v);
}

// Loads CG channels (stride `cstride` elements, `nvalid` of them real) as one 16-byte vector.
template <typename T> struct Gather16 {
  static __device__ __forceinline__ uint4 run(const T* p, int64_t cstride, int nvalid) {
    unsigned short h[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) h[j] = j < nvalid ? bits16<T>(ldg(p + j * cstride)) : 0;
    uint4 r;
    r.x = h[0] | ((uint32_t)h[1] << 16); r.y = h[2] | ((uint32_t)h[3] << 16);
    r.z = h[4] | ((uint32_t)h[5] << 16); r.w = h[6] | ((uint32_t)h[7] << 16);
    return r;
  }
};
template <> struct Gather16<float> {
  static __device__ __forceinline__ uint4 run(const float* p, int64_t cstride, int nvalid) {
    float f[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) f[j] = j < nvalid ? __ldg(p + j * cstride) : 0.f;
    return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]),
                      __float_as_uint(f[3]));
  }
};

// B fragments of half steps h and h + 1 for the warp's NT n tiles, from the shared weight
// rows [half step][BN output channels][16 bytes] (the per-phase and all-phase kernels).
// ldmatrix lanes 0-7: (n tile j, half 0), 8-15: (j, half 1), 16-23: (j+1, 0), 24-31: (j+1, 1)
template <int NT, int BN>
__device__ __forceinline__ void load_b_halfsteps(uint32_t (&bf)[NT][2], uint32_t sw_addr, int h,
                                                 int wn, int lane) {
  const int bro = lane & 7, bhalf = (lane >> 3) & 1, bj = lane >> 4;
#pragma unroll
  for (int j = 0; j < NT; j += 2) {
    if (j + 1 < NT) {
      uint32_t rr[4];
      const int row = (h + bhalf) * BN + (wn * NT + j + bj) * 8 + bro;
      ldsm_x4(rr, sw_addr + row * 16);
      bf[j][0] = rr[0]; bf[j][1] = rr[1]; bf[j + 1][0] = rr[2]; bf[j + 1][1] = rr[3];
    } else {
      const int row = (h + bhalf) * BN + (wn * NT + j) * 8 + bro;
      ldsm_x2(bf[j][0], bf[j][1], sw_addr + row * 16);
    }
  }
}

// Register cap from the occupancy wanted (small tiles: 6 blocks of 4 warps per SM).  FLUSH
// variants (3xTF32 past kFlushTerms reduction terms) hold a second accumulator set: fewer
// blocks, so that they do not spill.
template <int MT, int NT, int THREADS, bool FLUSH> struct MmaMinBlocks {
  enum { value = (MT * NT <= 4) ? (FLUSH ? 4 : 6) : (THREADS >= 256 ? 1 : (FLUSH ? 2 : 3)) };
};

template <typename T, int MT, int NT, int WARPS_M, int WARPS_N, bool FLUSH>
__global__ void __launch_bounds__(WARPS_M * WARPS_N * 32,
                                  (MmaMinBlocks<MT, NT, WARPS_M * WARPS_N * 32, FLUSH>::value))
mma_kernel(const MmaArgs a) {
  bool nonfinite = false;  // a stored element is Inf or NaN
  constexpr int CG = MmaT<T>::CG;
  constexpr int NTHR = WARPS_M * WARPS_N * 32;
  constexpr int BN = WARPS_N * NT * 8;
  constexpr bool TF32 = sizeof(T) == 4;
  constexpr bool FL = TF32 && FLUSH;  // accumulators flushed every kFlushTerms terms
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* s_x = smem_raw;
  unsigned char* s_w = smem_raw + a.x_bytes;
  int* s_hoff = reinterpret_cast<int*>(smem_raw + a.x_bytes + a.w_bytes);
  const uint32_t sx_addr = (uint32_t)__cvta_generic_to_shared(s_x);
  const uint32_t sw_addr = (uint32_t)__cvta_generic_to_shared(s_w);

  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ wt = static_cast<const T*>(a.w);
  const T* __restrict__ bias = static_cast<const T*>(a.bias);
  T* __restrict__ y = static_cast<T*>(a.y);
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int wm = warp % WARPS_M;
  const int wn = warp / WARPS_M;
  const int rowstride = a.ng * 16 + ((a.ng & 1) ? 0 : 16);  // odd multiple of 16 bytes
  const int64_t in_plane = (int64_t)a.in_d * a.in_h * a.in_w;
  const int64_t out_plane = (int64_t)a.out_d * a.out_h * a.out_w;
  const int thw = a.TH * a.TW;

  for (int64_t blk = blockIdx.x; blk < a.total_blocks; blk += gridDim.x) {
    const TileIndex ti = decode_tile(blk, a.total_blocks, a.num_phases, a.tiles_w, a.tiles_h,
                                     a.tiles_d, a.nbatch, a.co_blocks);
    const int ph = ti.ph, bw = ti.bw, bh = ti.bh, bd = ti.bd, cb = ti.cb, g = ti.g;
    const int64_t n = ti.n;

    const bool gi = a.nsub > 0;  // grad-input mode: one output phase, residues 0
    const int64_t* e = a.table + (int64_t)(gi ? 0 : ph) * PHASECONV_TABLE_STRIDE;
    const int rd = gi ? 0 : (int)ldg_i64(e + PT_RES_D), rh = gi ? 0 : (int)ldg_i64(e + PT_RES_H),
              rw = gi ? 0 : (int)ldg_i64(e + PT_RES_W);
    const int cd = axis_count(a.out_d, rd, a.sd), ch = axis_count(a.out_h, rh, a.sh),
              cw = axis_count(a.out_w, rw, a.sw);
    const int d0 = bd * a.TD, h0 = bh * a.TH, w0 = bw * a.TW;
    if (d0 >= cd || h0 >= ch || w0 >= cw) continue;  // uniform over the block

    float acc[MT][NT][4];
    zero_acc(acc);
    float tot[MT][NT][4];  // FL: flushed sums (see flush_acc)
    int since = 0;         // reduction steps (8 terms each) since the last flush
    if (FL) zero_acc(tot);

    for (int sub = 0; sub < (gi ? a.nsub : 1); ++sub) {
      const int64_t* es = gi ? a.sub_table + (int64_t)sub * PHASECONV_TABLE_STRIDE : e;
      const int Td = (int)ldg_i64(es + PT_TAPS_D), Th = (int)ldg_i64(es + PT_TAPS_H),
                Tw = (int)ldg_i64(es + PT_TAPS_W);
      const int taps = Td * Th * Tw;
      if (taps == 0) continue;  // uniform
      // the input this sub-problem reads: x[r + is * j] for j below the bounds
      const int ird = gi ? (int)ldg_i64(es + PT_RES_D) : 0,
                irh = gi ? (int)ldg_i64(es + PT_RES_H) : 0,
                irw = gi ? (int)ldg_i64(es + PT_RES_W) : 0;
      const int bnd_d = axis_count(a.in_d, ird, a.isd), bnd_h = axis_count(a.in_h, irh, a.ish),
                bnd_w = axis_count(a.in_w, irw, a.isw);
      const int offd = (int)ldg_i64(es + PT_OFF_D), offh = (int)ldg_i64(es + PT_OFF_H),
                offw = (int)ldg_i64(es + PT_OFF_W);
      const int64_t wofs = ldg_i64(es + PT_WOFS);
      const int hd = a.TD + (Td - 1) * a.pdd;
      const int hh = a.TH + (Th - 1) * a.pdh;
      const int hw = a.TW + (Tw - 1) * a.pdw;
      const int hhw = hh * hw;
      const int npos = hd * hhw;
      const int id0 = d0 + offd, ih0 = h0 + offh, iw0 = w0 + offw;
      const int64_t xg = ((int64_t)n * a.c_in + (int64_t)g * a.cin_g) * in_plane;
      const int64_t wg = wofs + (int64_t)g * a.cin_g * taps * a.cout_g;
      const int co_base = cb * BN;
      // ldmatrix row of this lane in each m tile (position in the halo, no tap offset)
      const int arow = (lane & 7) + ((lane >> 3) & 1) * 8;
      const int ahalf = lane >> 4;
      int apos[MT];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int m = (wm * MT + mt) * 16 + arow;
        const int ld = m / thw;
        const int rem = m - ld * thw;
        const int lh = rem / a.TW;
        const int lw = rem - lh * a.TW;
        apos[mt] = (ld * hh + lh) * hw + lw;
      }
      const int chunk = a.ng * CG;
      for (int c0 = 0; c0 < a.cin_g; c0 += chunk) {
        const int ng = min(a.ng, (a.cin_g - c0 + CG - 1) / CG);  // groups in this chunk
        const int nh = taps * ng;                                // half steps
        const int nh2 = (nh + 1) & ~1;
        __syncthreads();  // previous users of shared memory are done
        // half-step offsets (bytes, relative to a row's position): h = tap * ng + grp
        for (int h = tid; h < nh2; h += NTHR) {
          int off = 0;
          if (h < nh) {
            const int tap = h / ng, grp = h - tap * ng;
            const int tw_ = tap % Tw, q2 = tap / Tw;
            const int th_ = q2 % Th, td_ = q2 / Th;
            off = ((td_ * a.pdd * hh + th_ * a.pdh) * hw + tw_ * a.pdw) * rowstride + grp * 16;
          }
          s_hoff[h] = off;
        }
        // weights: s_w[h][co][CG] (16 bytes per row); zero beyond C_in/g, C_out/g, nh
        for (int it = tid; it < nh2 * BN; it += NTHR) {
          const int co = it % BN;
          const int h = it / BN;
          uint4 v = make_uint4(0, 0, 0, 0);
          if (h < nh && co_base + co < a.cout_g) {
            const int tap = h / ng, grp = h - tap * ng;
            const int ci = c0 + grp * CG;
            const int nvalid = min(CG, a.cin_g - ci);
            v = Gather16<T>::run(wt + wg + ((int64_t)ci * taps + tap) * a.cout_g + co_base + co,
                                 (int64_t)taps * a.cout_g, nvalid);
          }
          *reinterpret_cast<uint4*>(s_w + (size_t)it * 16) = v;
        }
        // input halo, channels-last: s_x[pos][grp][CG].  SU items per thread are gathered
        // before any is stored, so SU * CG global loads are in flight per thread.
        constexpr int SU = 4;
        const int nitems = ng * npos;
        for (int it0 = tid; it0 < nitems; it0 += NTHR * SU) {
          uint4 v[SU];
          int dst[SU];
#pragma unroll
          for (int u = 0; u < SU; ++u) {
            const int it = it0 + u * NTHR;
            v[u] = make_uint4(0, 0, 0, 0);
            dst[u] = -1;
            if (it < nitems) {
              const int grp = it / npos;
              const int pos = it - grp * npos;
              const int dd = pos / hhw;
              const int rem = pos - dd * hhw;
              const int hr = rem / hw;
              const int wl = rem - hr * hw;
              const int gd = id0 + dd, gh = ih0 + hr, gw = iw0 + wl;
              dst[u] = pos * rowstride + grp * 16;
              if ((unsigned)gd < (unsigned)bnd_d && (unsigned)gh < (unsigned)bnd_h &&
                  (unsigned)gw < (unsigned)bnd_w) {
                const int ci = c0 + grp * CG;
                v[u] = Gather16<T>::run(
                    x + xg + (int64_t)ci * in_plane +
                        ((int64_t)(ird + a.isd * gd) * a.in_h + irh + a.ish * gh) * a.in_w +
                        irw + a.isw * gw,
                    in_plane, min(CG, a.cin_g - ci));
              }
            }
          }
#pragma unroll
          for (int u = 0; u < SU; ++u)
            if (dst[u] >= 0) *reinterpret_cast<uint4*>(s_x + dst[u]) = v[u];
        }
        __syncthreads();
        // reduction
        for (int h = 0; h < nh2; h += 2) {
          const int off = s_hoff[h + ahalf];
          uint32_t af[MT][4];
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
            ldsm_x4(af[mt], sx_addr + apos[mt] * rowstride + off);
          uint32_t bf[NT][2];
          load_b_halfsteps<NT, BN>(bf, sw_addr, h, wn, lane);
          if (TF32) {
            uint32_t bb[NT][2], bs[NT][2];
#pragma unroll
            for (int j = 0; j < NT; ++j) split_tf32(bf[j], bb[j], bs[j]);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
              uint32_t ab[4], as[4];
              split_tf32(af[mt], ab, as);
#pragma unroll
              for (int j = 0; j < NT; ++j) mma_3xtf32(acc[mt][j], ab, as, bb[j], bs[j]);
            }
            step_flush<FL>(tot, acc, since, kFlushTerms / 8);
          } else {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
              for (int j = 0; j < NT; ++j) MmaOp<T>::run(acc[mt][j], af[mt], bf[j][0], bf[j][1]);
          }
        }
      }
    }

    if (FL) merge_acc(acc, tot);
    // store: C fragment rows lane/4 and lane/4 + 8, columns 2*(lane%4) + {0, 1}
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int m = (wm * MT + mt) * 16 + (lane >> 2) + half * 8;
        const int ld = m / thw;
        const int rem = m - ld * thw;
        const int lh = rem / a.TW;
        const int lw = rem - lh * a.TW;
        const int jd = d0 + ld, jh = h0 + lh, jw = w0 + lw;
        if (jd < cd && jh < ch && jw < cw) {
          const int64_t sp =
              ((int64_t)(rd + a.sd * jd) * a.out_h + (rh + a.sh * jh)) * a.out_w + rw + a.sw * jw;
#pragma unroll
          for (int j = 0; j < NT; ++j) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              const int co = cb * BN + (wn * NT + j) * 8 + (lane & 3) * 2 + c;
              if (co < a.cout_g) {
                const int oc = g * a.cout_g + co;
                float v = acc[mt][j][half * 2 + c];
                if (bias != nullptr) v += to_acc<float>(ldg(bias + oc));
                const int64_t yo = (n * a.c_out + oc) * out_plane + sp;
                const T out = from_acc<T>(v);
                y[yo] = out;
                nonfinite |= !finite_value(out);
              }
            }
          }
        }
      }
    }
  }
  if (nonfinite) *a.ex.flag = 1;  // the fix-up recomputes those (phase_conv_exact.cuh)
}

// ---------------------------------------------------------------- all-phase tensor-core kernel
// One block computes EVERY phase of one tile of the phase grid (TD x TH x TW phase-local
// voxels, the same j range for all phases), for one (batch, group, block of C_out/g).  The
// input halo of the union of the phases' windows is staged once (channels-last, as above) and
// serves all phases; the per-phase half-step offsets are built once per block (they depend on
// no tile), and the weights (pre-laid out by pack() as 16-byte rows [g][tap][grp][co][CG]) are
// copied with 16-byte loads and re-staged only when (group, C_out block) changes.  Needs the
// whole C_in/g in one chunk.  The phases' outputs of a tile interleave in the same sectors
// and are written back to back, so L2 merges them.
#define PHASECONV_ALLPH_MAXPH 32
struct AllArgs {
  const void* x;
  const void* wm;           // pack()'s tensor-core weight layout
  const void* bias;
  void* y;
  PhaseConvExact ex;  // non-finite elements recomputed exactly (phase_conv_exact.cuh)
  const int64_t* table;
  int64_t nbatch;
  int c_in, c_out, cin_g, cout_g;
  int in_d, in_h, in_w, out_d, out_h, out_w;
  int sd, sh, sw, pdd, pdh, pdw;
  int num_phases;
  int TD, TH, TW, lg_tw, lg_thw;  // tile (powers of two), TD*TH*TW == BM
  int hd, hh, hw;                 // union halo
  int ulo_d, ulo_h, ulo_w;        // union's first input offset per axis
  int tiles_w, tiles_h, tiles_d, co_blocks;
  int G;                          // 16-byte channel groups covering C_in/g
  int x_bytes, w_bytes;           // shared-memory regions: halo buffers, weights
  int x_buf;                      // bytes of one halo buffer (x_bytes holds two when x_cl or fp32)
  int x_cl;                       // 1: x is channels-last (N, D, H, W, C_in), C_in/g % CG == 0
  // staged output (16-bit, BN <= 16): the phases sharing a D residue rd fill one slab of the
  // tile's output box (TD planes od = sd*d0 + rd + sd*l, all of TH*sh x TW*sw, BN channels at
  // a stride of box_cs elements) in shared memory at byte box_off; the slab is then written
  // back with 16-byte stores along W (box_vec: out_w % 8 == 0) instead of 2-byte scatters
  int stage_out, box_off, box_cs, box_vec;
  int64_t total_blocks, per_cta;
};

// fp32 (3xTF32) small tiles are shared-memory limited to ~3-4 blocks: give them registers
// (FLUSH variants, as for mma_kernel, more; choose_allph's reg_cap mirrors this).
template <typename T, int MT, int NT, int THREADS, bool FLUSH> struct AllMinBlocks {
  enum {
    value = (MT * NT <= 4) ? (sizeof(T) == 4 ? (FLUSH ? 3 : 4) : 5)
                           : (THREADS >= 256 ? 1 : (FLUSH ? 2 : 3))
  };
};

template <typename T, int MT, int NT, int WARPS_M, int WARPS_N, bool FLUSH>
__global__ void __launch_bounds__(WARPS_M * WARPS_N * 32,
                                  (AllMinBlocks<T, MT, NT, WARPS_M * WARPS_N * 32, FLUSH>::value))
mma_allph_kernel(const AllArgs a) {
  bool nonfinite = false;  // a stored element is Inf or NaN
  constexpr int CG = MmaT<T>::CG;
  constexpr int NTHR = WARPS_M * WARPS_N * 32;
  constexpr int BN = WARPS_N * NT * 8;
  constexpr bool TF32 = sizeof(T) == 4;
  constexpr bool FL = TF32 && FLUSH;  // accumulators flushed every kFlushTerms terms
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ int s_pi[PHASECONV_ALLPH_MAXPH][8];  // rd rh rw cd ch cw hbase nh2
  unsigned char* s_x = smem_raw;
  unsigned char* s_w = smem_raw + a.x_bytes;
  int* s_hoff = reinterpret_cast<int*>(smem_raw + a.x_bytes + a.w_bytes);
  const uint32_t sx_addr = (uint32_t)__cvta_generic_to_shared(s_x);
  const uint32_t sw_addr = (uint32_t)__cvta_generic_to_shared(s_w);
  const int x_small = TF32 ? a.x_buf : 0;  // byte offset of the tf32 small parts

  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ wm = static_cast<const T*>(a.wm);
  const T* __restrict__ bias = static_cast<const T*>(a.bias);
  T* __restrict__ y = static_cast<T*>(a.y);
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int wm_ = warp % WARPS_M;
  const int wn = warp / WARPS_M;
  const int G = a.G;
  const int rowstride = G * 16 + ((G & 1) ? 0 : 16);  // odd multiple of 16 bytes
  const int np = a.num_phases;
  const int64_t in_plane = (int64_t)a.in_d * a.in_h * a.in_w;
  const int64_t out_plane = (int64_t)a.out_d * a.out_h * a.out_w;
  const int hhw = a.hh * a.hw;
  const int npos = a.hd * hhw;
  const int thw_mask = (1 << a.lg_thw) - 1, tw_mask = a.TW - 1;

  // ---- prologue (once per CTA): phase table, half-step bases, half-step offsets
  if (warp == 0) {
    int nh2 = 0;
    int info[6] = {0, 0, 0, 0, 0, 0};
    if (lane < np) {
      const int64_t* e = a.table + (int64_t)lane * PHASECONV_TABLE_STRIDE;
      info[0] = (int)ldg_i64(e + PT_RES_D); info[1] = (int)ldg_i64(e + PT_RES_H);
      info[2] = (int)ldg_i64(e + PT_RES_W);
      info[3] = axis_count(a.out_d, info[0], a.sd);
      info[4] = axis_count(a.out_h, info[1], a.sh);
      info[5] = axis_count(a.out_w, info[2], a.sw);
      const int taps = (int)(ldg_i64(e + PT_TAPS_D) * ldg_i64(e + PT_TAPS_H) *
                             ldg_i64(e + PT_TAPS_W));
      nh2 = (taps * G + 1) & ~1;
    }
    int incl = nh2;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    if (lane < np) {
#pragma unroll
      for (int k = 0; k < 6; ++k) s_pi[lane][k] = info[k];
      s_pi[lane][6] = incl - nh2;
      s_pi[lane][7] = nh2;
    }
  }
  __syncthreads();
  for (int p = 0; p < np; ++p) {
    const int nh2 = s_pi[p][7];
    if (nh2 == 0) continue;
    const int64_t* e = a.table + (int64_t)p * PHASECONV_TABLE_STRIDE;
    const int Th = (int)ldg_i64(e + PT_TAPS_H), Tw = (int)ldg_i64(e + PT_TAPS_W);
    const int od = (int)ldg_i64(e + PT_OFF_D) - a.ulo_d;
    const int oh = (int)ldg_i64(e + PT_OFF_H) - a.ulo_h;
    const int ow = (int)ldg_i64(e + PT_OFF_W) - a.ulo_w;
    const int nh = (int)(ldg_i64(e + PT_TAPS_D) * Th * Tw) * G;
    const int hbase = s_pi[p][6];
    for (int h = tid; h < nh2; h += NTHR) {
      int off = 0;
      if (h < nh) {
        const int tap = h / G, grp = h - tap * G;
        const int tw_ = tap % Tw, q2 = tap / Tw;
        const int th_ = q2 % Th, td_ = q2 / Th;
        off = (((td_ * a.pdd + od) * a.hh + th_ * a.pdh + oh) * a.hw + tw_ * a.pdw + ow) *
                  rowstride + grp * 16;
      }
      s_hoff[hbase + h] = off;
    }
  }

  // ldmatrix row of this lane in each m tile (position in the union halo, no tap offset)
  const int arow = (lane & 7) + ((lane >> 3) & 1) * 8;
  const int ahalf = lane >> 4;
  int apos[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int m = (wm_ * MT + mt) * 16 + arow;
    const int ld = m >> a.lg_thw;
    const int rem = m & thw_mask;
    const int lh = rem >> a.lg_tw;
    const int lw = rem & tw_mask;
    apos[mt] = ((ld * a.hh + lh) * a.hw + lw) * rowstride;
  }

  auto decode = [&](int64_t blk, int& bw, int& bh, int& bd, int64_t& n, int& cb, int& g) {
    const TileIndex ti = decode_tile(blk, a.total_blocks, 1, a.tiles_w, a.tiles_h, a.tiles_d,
                                     a.nbatch, a.co_blocks);
    bw = ti.bw; bh = ti.bh; bd = ti.bd; n = ti.n; cb = ti.cb; g = ti.g;
  };
  // 16-bit dtypes with a channels-last input: the halo of tile `blk` goes into buffer `buf`
  // by cp.async (one 16-byte copy per position and channel group, zero-filled outside the
  // input), issued while the block computes the previous tile.
  auto issue_halo = [&](int64_t blk, int buf) {
    int bw, bh, bd, cb, g;
    int64_t n;
    decode(blk, bw, bh, bd, n, cb, g);
    const int id0 = bd * a.TD + a.ulo_d, ih0 = bh * a.TH + a.ulo_h, iw0 = bw * a.TW + a.ulo_w;
    const T* xn = x + n * in_plane * a.c_in + (int64_t)g * a.cin_g;
    const uint32_t base = sx_addr + buf * a.x_buf;
    const int nitems = G * npos;
    for (int it = tid; it < nitems; it += NTHR) {
      const int pos = G == 1 ? it : it / G;
      const int grp = it - pos * G;
      const int dd = pos / hhw;
      const int rem = pos - dd * hhw;
      const int hr = rem / a.hw;
      const int wl = rem - hr * a.hw;
      const int gd = id0 + dd, gh = ih0 + hr, gw = iw0 + wl;
      const bool ok = (unsigned)gd < (unsigned)a.in_d && (unsigned)gh < (unsigned)a.in_h &&
                      (unsigned)gw < (unsigned)a.in_w;
      const T* src = xn + (((int64_t)gd * a.in_h + gh) * a.in_w + gw) * a.c_in + grp * CG;
      cp_async16_ca(base + pos * rowstride + grp * 16, ok ? (const void*)src : (const void*)x,
                    ok);
    }
  };
  const bool async = !TF32 && a.x_cl != 0;
  int buf = 0;

  int last_gc = -1;  // (group, C_out block) whose weights are staged
  const int64_t b_lo = (int64_t)blockIdx.x * a.per_cta;
  int64_t b_hi = b_lo + a.per_cta;
  if (b_hi > a.total_blocks) b_hi = a.total_blocks;
  if (async && b_lo < b_hi) {
    issue_halo(b_lo, 0);
    cp_async_commit();
  }
  for (int64_t blk = b_lo; blk < b_hi; ++blk) {
    int bw, bh, bd, cb, g;
    int64_t n;
    decode(blk, bw, bh, bd, n, cb, g);
    const int d0 = bd * a.TD, h0 = bh * a.TH, w0 = bw * a.TW;
    const int co_base = cb * BN;
    const int gc = g * a.co_blocks + cb;
    __syncthreads();  // the previous tile is done with shared memory (and s_hoff is built)
    if (gc != last_gc) {  // uniform over the block
      last_gc = gc;
      for (int p = 0; p < np; ++p) {
        const int nh2 = s_pi[p][7];
        if (nh2 == 0) continue;
        const int64_t* e = a.table + (int64_t)p * PHASECONV_TABLE_STRIDE;
        const int nh = (int)(ldg_i64(e + PT_TAPS_D) * ldg_i64(e + PT_TAPS_H) *
                             ldg_i64(e + PT_TAPS_W)) * G;
        // rows (h, co) of 16 bytes: row (g * nh + h) * cout_g + co
        const uint4* src = reinterpret_cast<const uint4*>(wm + ldg_i64(e + PT_MOFS)) +
                           (int64_t)g * nh * a.cout_g + co_base;
        uint4* dst = reinterpret_cast<uint4*>(s_w) + (size_t)s_pi[p][6] * BN;
        for (int it = tid; it < nh2 * BN; it += NTHR) {
          const int co = it % BN;
          const int h = it / BN;
          uint4 v = make_uint4(0, 0, 0, 0);
          if (h < nh && co_base + co < a.cout_g) v = __ldg(src + (int64_t)h * a.cout_g + co);
          dst[it] = v;
        }
      }
    }
    // union input halo, channels-last: s_x[pos][grp][CG]
    if (async) {
      if (blk + 1 < b_hi) issue_halo(blk + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();  // this tile's halo has landed (the next one may be in flight)
    } else {
      const int id0 = d0 + a.ulo_d, ih0 = h0 + a.ulo_h, iw0 = w0 + a.ulo_w;
      const int64_t xg = ((int64_t)n * a.c_in + (int64_t)g * a.cin_g) * in_plane;
      constexpr int SU = 4;
      const int nitems = G * npos;
      for (int it0 = tid; it0 < nitems; it0 += NTHR * SU) {
        uint4 v[SU];
        int dst[SU];
#pragma unroll
        for (int u = 0; u < SU; ++u) {
          const int it = it0 + u * NTHR;
          v[u] = make_uint4(0, 0, 0, 0);
          dst[u] = -1;
          if (it < nitems) {
            const int grp = it / npos;
            const int pos = it - grp * npos;
            const int dd = pos / hhw;
            const int rem = pos - dd * hhw;
            const int hr = rem / a.hw;
            const int wl = rem - hr * a.hw;
            const int gd = id0 + dd, gh = ih0 + hr, gw = iw0 + wl;
            dst[u] = pos * rowstride + grp * 16;
            if ((unsigned)gd < (unsigned)a.in_d && (unsigned)gh < (unsigned)a.in_h &&
                (unsigned)gw < (unsigned)a.in_w) {
              const int ci = grp * CG;
              if (a.x_cl)
                v[u] = __ldg(reinterpret_cast<const uint4*>(
                    x + (((n * a.in_d + gd) * a.in_h + gh) * a.in_w + gw) * a.c_in +
                    (int64_t)g * a.cin_g + ci));
              else
                v[u] = Gather16<T>::run(x + xg + (int64_t)ci * in_plane +
                                            ((int64_t)gd * a.in_h + gh) * a.in_w + gw,
                                        in_plane, min(CG, a.cin_g - ci));
            }
          }
        }
#pragma unroll
        for (int u = 0; u < SU; ++u) {
          if (dst[u] < 0) continue;
          if (TF32) {
            uint4 big, small;
            split_tf32(v[u].x, big.x, small.x); split_tf32(v[u].y, big.y, small.y);
            split_tf32(v[u].z, big.z, small.z); split_tf32(v[u].w, big.w, small.w);
            *reinterpret_cast<uint4*>(s_x + dst[u]) = big;
            *reinterpret_cast<uint4*>(s_x + x_small + dst[u]) = small;
          } else {
            *reinterpret_cast<uint4*>(s_x + dst[u]) = v[u];
          }
        }
      }
    }
    __syncthreads();
    const uint32_t sxb = sx_addr + buf * a.x_buf;  // this tile's halo
    if (async) buf ^= 1;

    // bias of this thread's columns
    float bv[NT][2];
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int co = co_base + (wn * NT + j) * 8 + (lane & 3) * 2 + c;
        bv[j][c] = (bias != nullptr && co < a.cout_g)
                       ? to_acc<float>(ldg(bias + g * a.cout_g + co)) : 0.f;
      }
    const int64_t ybase = ((int64_t)n * a.c_out + (int64_t)g * a.cout_g) * out_plane;

    const bool stage = !TF32 && a.stage_out;
    const int nhw = a.sh * a.sw;  // phases per D residue (consecutive in table order)
    // writes back the slab of D residue rd (every phase with that residue has filled it)
    auto flush = [&](int rd) {
      __syncthreads();
      const T* box = reinterpret_cast<const T*>(smem_raw + a.box_off);
      const int BH = a.TH * a.sh, BW = a.TW * a.sw;
      const int nv = BW >> 3;
      const int oh0 = h0 * a.sh, ow0 = w0 * a.sw;
      const int nitems = BN * a.TD * BH * nv;
      for (int it = tid; it < nitems; it += NTHR) {
        const int v = it % nv;
        int q = it / nv;
        const int bh_ = q % BH;
        q /= BH;
        const int l = q % a.TD;
        const int col = q / a.TD;
        const int od = (d0 + l) * a.sd + rd, oh = oh0 + bh_, ow = ow0 + v * 8;
        if (co_base + col >= a.cout_g || od >= a.out_d || oh >= a.out_h || ow >= a.out_w)
          continue;
        const T* src = box + col * a.box_cs + (l * BH + bh_) * BW + v * 8;
        T* dst = y + ybase + (int64_t)(co_base + col) * out_plane +
                 ((int64_t)od * a.out_h + oh) * a.out_w + ow;
        if (a.box_vec && ow + 8 <= a.out_w) {
          const uint4 v8 = *reinterpret_cast<const uint4*>(src);
          *reinterpret_cast<uint4*>(dst) = v8;
          nonfinite |= !all_finite<T>(v8);
        } else {
          for (int e = 0; e < 8 && ow + e < a.out_w; ++e) {
            dst[e] = src[e];
            nonfinite |= !finite_value(src[e]);
          }
        }
      }
      __syncthreads();  // the slab is free for the next D residue
    };
    for (int p = 0; p < np; ++p) {
      if (stage && p > 0 && p % nhw == 0) flush(s_pi[p - 1][0]);
      const int cd = s_pi[p][3], ch = s_pi[p][4], cw = s_pi[p][5];
      if (d0 >= cd || h0 >= ch || w0 >= cw) continue;  // uniform over the block
      const int hbase = s_pi[p][6], hend = hbase + s_pi[p][7];
      float acc[MT][NT][4];
      zero_acc(acc);
      float tot[MT][NT][4];  // FL: flushed sums (see flush_acc)
      int since = 0;
      if (FL) zero_acc(tot);
      for (int h = hbase; h < hend; h += 2) {
        const int off = s_hoff[h + ahalf];
        uint32_t af[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) ldsm_x4(af[mt], sxb + apos[mt] + off);
        uint32_t bf[NT][2];
        load_b_halfsteps<NT, BN>(bf, sw_addr, h, wn, lane);
        if (TF32) {
          uint32_t bb[NT][2], bs[NT][2];
#pragma unroll
          for (int j = 0; j < NT; ++j) split_tf32(bf[j], bb[j], bs[j]);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            uint32_t as[4];  // af[mt] holds the big parts already (the halo is staged split)
            ldsm_x4(as, sxb + x_small + apos[mt] + off);
#pragma unroll
            for (int j = 0; j < NT; ++j) mma_3xtf32(acc[mt][j], af[mt], as, bb[j], bs[j]);
          }
          step_flush<FL>(tot, acc, since, kFlushTerms / 8);
        } else {
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int j = 0; j < NT; ++j) MmaOp<T>::run(acc[mt][j], af[mt], bf[j][0], bf[j][1]);
        }
      }
      if (FL) merge_acc(acc, tot);
      // store: C fragment rows lane/4 and lane/4 + 8, columns 2*(lane%4) + {0, 1}
      const int rd = s_pi[p][0], rh = s_pi[p][1], rw = s_pi[p][2];
      if (stage) {  // into the shared output slab (see AllArgs)
        T* box = reinterpret_cast<T*>(smem_raw + a.box_off);
        const int BH = a.TH * a.sh, BW = a.TW * a.sw;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const int m = (wm_ * MT + mt) * 16 + (lane >> 2) + half * 8;
            const int ld = m >> a.lg_thw;
            const int rem = m & thw_mask;
            const int lh = rem >> a.lg_tw, lw = rem & tw_mask;
            if (d0 + ld < cd && h0 + lh < ch && w0 + lw < cw) {
              T* bp = box + (ld * BH + lh * a.sh + rh) * BW + lw * a.sw + rw;
#pragma unroll
              for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                  const int col = (wn * NT + j) * 8 + (lane & 3) * 2 + c;
                  bp[col * a.box_cs] = from_acc<T>(acc[mt][j][half * 2 + c] + bv[j][c]);
                }
            }
          }
        }
        continue;
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int m = (wm_ * MT + mt) * 16 + (lane >> 2) + half * 8;
          const int ld = m >> a.lg_thw;
          const int rem = m & thw_mask;
          const int jd = d0 + ld, jh = h0 + (rem >> a.lg_tw), jw = w0 + (rem & tw_mask);
          if (jd < cd && jh < ch && jw < cw) {
            T* yp = y + ybase +
                    (((int64_t)(rd + a.sd * jd) * a.out_h + (rh + a.sh * jh)) * a.out_w + rw +
                     (int64_t)a.sw * jw);
#pragma unroll
            for (int j = 0; j < NT; ++j) {
#pragma unroll
              for (int c = 0; c < 2; ++c) {
                const int co = co_base + (wn * NT + j) * 8 + (lane & 3) * 2 + c;
                if (co < a.cout_g) {
                  const T out = from_acc<T>(acc[mt][j][half * 2 + c] + bv[j][c]);
                  yp[(int64_t)co * out_plane] = out;
                  nonfinite |= !finite_value(out);
                }
              }
            }
          }
        }
      }
    }
    if (stage) flush(s_pi[np - 1][0]);
  }
  if (nonfinite) *a.ex.flag = 1;  // the fix-up recomputes those (phase_conv_exact.cuh)
}

// ---------------------------------------------------------------- implicit-GEMM kernel
// For wide layers (16-bit dtypes, C_in/g a multiple of 8, channels-last input): every phase
// is an implicit GEMM, rows = the phase's output voxels over the batch (n, jd, jh, jw),
// columns = C_out/g, reduction = taps x C_in/g.  A block owns BM rows x BN columns of one
// phase and walks the reduction in k steps of (one tap, 32 channels): per step it copies
// the BM input rows (16-byte cp.async straight from the channels-last input, zero-filled
// outside it) and the 32 x BN weights into one of STAGES shared-memory buffers, so the copies
// of the next STAGES-1 steps overlap the mma.sync of this one.  Blocks are ordered
// phase-fastest: the phases of one row tile run together and their interleaved output
// writes merge in L2.  Each output is written once (no atomics, deterministic).
struct GemmArgs {
  const void* x;   // channels-last input (N, D, H, W, C_in)
  const void* wm;  // pack()'s tensor-core weight layout
  const void* bias;
  void* y;
  PhaseConvExact ex;  // non-finite elements recomputed exactly (phase_conv_exact.cuh)
  const int64_t* table;
  int64_t nbatch;
  int c_in, c_out, cin_g, cout_g;
  int in_d, in_h, in_w, out_d, out_h, out_w;
  int sd, sh, sw, pdd, pdh, pdw;
  int num_phases, G, m_tiles, co_blocks;
  int y_even;  // out_w and the output's base are even: pairs of W phases store 4-byte words
  int64_t total_blocks;
};

// XOR swizzle of the 16-byte chunks of row `row` of a channels-last A stage (rows of BKG
// chunks), so that ldmatrix's 8 rows x 16 bytes hit distinct banks.
template <int BKG> __device__ __forceinline__ int a_swz(int row) {
  return BKG == 4 ? ((row >> 1) & 3) : (row & 7);
}

// Row m of a phase's implicit GEMM -> (n, jd, jh, jw); 32-bit division when it fits.
__device__ __forceinline__ int64_t decode_row(int64_t m, int cw, int ch, int cd, int& jd,
                                              int& jh, int& jw) {
  if (m <= 0x7fffffffLL) {
    uint32_t q = (uint32_t)m;
    jw = (int)(q % (uint32_t)cw); q /= (uint32_t)cw;
    jh = (int)(q % (uint32_t)ch); q /= (uint32_t)ch;
    jd = (int)(q % (uint32_t)cd);
    return (int64_t)(q / (uint32_t)cd);
  }
  int64_t q = m;
  jw = (int)(q % cw); q /= cw;
  jh = (int)(q % ch); q /= ch;
  jd = (int)(q % cd);
  return q / cd;
}

template <typename T, int MT, int NT, int WARPS_M, int WARPS_N, int STAGES, bool WGROUP,
          bool A_NCDHW, int BKG>
__global__ void __launch_bounds__(WARPS_M * WARPS_N * 32,
                                  (WARPS_M * WARPS_N >= 8 ? (MT * NT >= 16 ? 1 : 2)
                                                          : (MT * NT >= 16 ? 3 : 4)))
gemm_cl_kernel(const GemmArgs a) {
  bool nonfinite = false;  // a stored element is Inf or NaN
  constexpr int NTHR = WARPS_M * WARPS_N * 32;
  constexpr int BM = WARPS_M * MT * 16, BN = WARPS_N * NT * 8;
  // BKG: 16-byte channel groups per k step (4: 32 channels, 8: 64)
  static_assert(BKG == 4 || BKG == 8, "k step of 32 or 64 channels");
  constexpr int A_STAGE = BM * BKG * 16, B_STAGE = BKG * BN * 16;
  constexpr int A_IT = BM * BKG / NTHR, B_IT = BKG * BN / NTHR;
  constexpr int MG = BM / 8;  // A_NCDHW: 8-row groups (16-byte vectors along W) per k row
  static_assert(A_IT * NTHR == BM * BKG && B_IT * NTHR == BKG * BN, "loader split");
  static_assert(NT % 2 == 0, "B fragments are loaded two n tiles at a time");
  static_assert(NTHR >= BM && NTHR % BM == 0, "write-out: whole rows per thread");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t sa = (uint32_t)__cvta_generic_to_shared(smem_raw);
  const uint32_t sb = sa + STAGES * A_STAGE;
  // per row of the tile: input coordinates (d, h of its first tap; its own w; d far negative
  // past the last row), the element offset of (n, d, h, w, group's first channel) in x and
  // the element offset in y of its output at W residue 0, channel co_base (-1: past the end)
  int4* s_rc = reinterpret_cast<int4*>(smem_raw + STAGES * (A_STAGE + B_STAGE));
  int64_t* s_ro = reinterpret_cast<int64_t*>(s_rc + BM);
  int64_t* s_yo = s_ro + BM;
  // A_NCDHW: s_rc and s_ro of each 8-row group (row 8 * i), packed: conflict-free reads
  int4* s_grc = reinterpret_cast<int4*>(s_yo + BM);
  int64_t* s_gro = reinterpret_cast<int64_t*>(s_grc + MG);
  // WGROUP: the output tile of all W phases, [BN][BM * sw + 8] (see GemmArgs)
  T* s_c = reinterpret_cast<T*>(s_gro + MG);

  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ wm = static_cast<const T*>(a.wm);
  const T* __restrict__ bias = static_cast<const T*>(a.bias);
  T* __restrict__ y = static_cast<T*>(a.y);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm_ = warp % WARPS_M, wn = warp / WARPS_M;
  const int64_t out_plane = (int64_t)a.out_d * a.out_h * a.out_w;
  const int G = a.G;
  const int nw = WGROUP ? a.sw : 1;                 // W phases per block
  const int units = a.num_phases / nw;              // (rd, rh) pairs, or phases
  const int c_cs = BM * nw + 8;                     // s_c channel stride (elements)

  for (int64_t blk = blockIdx.x; blk < a.total_blocks; blk += gridDim.x) {
    int unit, mtile, cb, g;
    if (a.total_blocks <= 0xffffffffLL) {  // 32-bit decode: 64-bit division is slow
      uint32_t r = (uint32_t)blk;
      unit = (int)(r % (uint32_t)units); r /= (uint32_t)units;
      mtile = (int)(r % (uint32_t)a.m_tiles); r /= (uint32_t)a.m_tiles;
      cb = (int)(r % (uint32_t)a.co_blocks);
      g = (int)(r / (uint32_t)a.co_blocks);
    } else {
      int64_t r = blk;
      unit = (int)(r % units); r /= units;
      mtile = (int)(r % a.m_tiles); r /= a.m_tiles;
      cb = (int)(r % a.co_blocks);
      g = (int)(r / a.co_blocks);
    }
    // the unit's first phase (table order is row-major over (rd, rh, rw): the W phases of
    // one (rd, rh) are consecutive, residue 0 first, which has the most outputs)
    const int64_t* e0 = a.table + (int64_t)unit * nw * PHASECONV_TABLE_STRIDE;
    const int rd = (int)ldg_i64(e0 + PT_RES_D), rh = (int)ldg_i64(e0 + PT_RES_H);
    const int cd = axis_count(a.out_d, rd, a.sd), ch = axis_count(a.out_h, rh, a.sh),
              cw = axis_count(a.out_w, (int)ldg_i64(e0 + PT_RES_W), a.sw);
    const int64_t Mp = a.nbatch * cd * ch * cw;
    const int64_t m0 = (int64_t)mtile * BM;
    if (m0 >= Mp) continue;  // uniform over the block
    const int offd = (int)ldg_i64(e0 + PT_OFF_D), offh = (int)ldg_i64(e0 + PT_OFF_H);
    const int co_base = cb * BN;

    for (int row = tid; row < BM; row += NTHR) {
      const int64_t m = m0 + row;
      int4 rc = make_int4(-(1 << 30), 0, 0, 0);
      int64_t ro = 0, yo = -1;
      if (m < Mp) {
        int jd, jh, jw;
        const int64_t n = decode_row(m, cw, ch, cd, jd, jh, jw);
        rc = make_int4(jd + offd, jh + offh, jw, 0);
        if (A_NCDHW)  // (n, group's first channel, d, h, w)
          ro = (((n * a.c_in + (int64_t)g * a.cin_g) * a.in_d + rc.x) * a.in_h + rc.y) *
                   a.in_w + jw;
        else          // (n, d, h, w, group's first channel)
          ro = (((n * a.in_d + rc.x) * a.in_h + rc.y) * a.in_w + jw) * a.c_in +
               (int64_t)g * a.cin_g;
        yo = (n * a.c_out + (int64_t)g * a.cout_g + co_base) * out_plane +
             ((int64_t)(rd + a.sd * jd) * a.out_h + (rh + a.sh * jh)) * a.out_w +
             (int64_t)a.sw * jw;
      }
      s_rc[row] = rc;
      s_ro[row] = ro;
      s_yo[row] = yo;
      if (A_NCDHW && row % 8 == 0) {
        s_grc[row / 8] = rc;
        s_gro[row / 8] = ro;
      }
    }
    __syncthreads();
    float bv[NT][2];
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int co = co_base + (wn * NT + j) * 8 + (lane & 3) * 2 + c;
        bv[j][c] = (bias != nullptr && co < a.cout_g)
                       ? to_acc<float>(ldg(bias + g * a.cout_g + co)) : 0.f;
      }
    const bool full_cols = co_base + BN <= a.cout_g;
    const int col0 = wn * NT * 8 + (lane & 3) * 2;

    for (int q = 0; q < nw; ++q) {  // the W phases of the unit, one after the other
      const int64_t* e = e0 + (int64_t)q * PHASECONV_TABLE_STRIDE;
      const int rw = (int)ldg_i64(e + PT_RES_W);
      const int Td = (int)ldg_i64(e + PT_TAPS_D), Th = (int)ldg_i64(e + PT_TAPS_H),
                Tw = (int)ldg_i64(e + PT_TAPS_W);
      const int taps = Td * Th * Tw;
      const int offw = (int)ldg_i64(e + PT_OFF_W);
      const int nkc = (G + BKG - 1) / BKG;
      const int nk = taps * nkc;
      // Loader state of the next k step (tap (td, th, tw), channel chunk kc), advanced by
      // one step per call: no divisions in the main loop.
      const int ac = tid % BKG;  // A: channel group ac of rows tid / BKG + i * (NTHR / BKG)
      int kc = 0, tw = 0, th = 0, dd = 0, dh = 0, dw = offw;
      int64_t dofs = A_NCDHW ? (int64_t)offw : (int64_t)offw * a.c_in;  // x offset of the tap
      const int64_t in_plane = (int64_t)a.in_d * a.in_h * a.in_w;
      const T* wtap = wm + ldg_i64(e + PT_MOFS) + (int64_t)g * taps * G * a.cout_g * 8;
      auto load_stage = [&](int stage) {
        const bool cvalid = kc * BKG + ac < G;
        const T* xk = x + dofs + kc * (BKG * 8) + ac * 8;
        const uint32_t sA = sa + stage * A_STAGE, sB = sb + stage * B_STAGE;
        if (A_NCDHW) {  // A^T tile [32 k][BM m], 16-byte chunks swizzled by k & 7
#pragma unroll
          for (int i = 0; i < A_IT; ++i) {
            const int v = tid + i * NTHR;
            const int kk = v / MG, mg = v % MG;
            const int4 rc = s_grc[mg];
            const bool ok = (kc * BKG * 8 + kk < a.cin_g) &
                            ((unsigned)(rc.x + dd) < (unsigned)a.in_d) &
                            ((unsigned)(rc.y + dh) < (unsigned)a.in_h) &
                            ((unsigned)(rc.z + dw) < (unsigned)a.in_w);
            const T* src = x + s_gro[mg] + dofs + (int64_t)(kc * BKG * 8 + kk) * in_plane;
            cp_async16_ca(sA + kk * (BM * 2) + ((mg ^ (kk & 7)) << 4),
                          ok ? (const void*)src : (const void*)x, ok);
          }
        } else {
#pragma unroll
        for (int i = 0; i < A_IT; ++i) {
          const int row = tid / BKG + i * (NTHR / BKG);
          const int4 rc = s_rc[row];
          // bitwise, not short-circuit: no branches around the copies
          const bool ok = cvalid & ((unsigned)(rc.x + dd) < (unsigned)a.in_d) &
                          ((unsigned)(rc.y + dh) < (unsigned)a.in_h) &
                          ((unsigned)(rc.z + dw) < (unsigned)a.in_w);
          const T* src = xk + s_ro[row];
          cp_async16_ca(sA + row * (BKG * 16) + ((ac ^ a_swz<BKG>(row)) << 4),
                        ok ? (const void*)src : (const void*)x, ok);
        }
        }  // A layout
#pragma unroll
        for (int j = 0; j < B_IT; ++j) {
          const int v = tid + j * NTHR;
          const int bgrp = v / BN, bco = v % BN;
          const int grp = kc * BKG + bgrp;
          const bool ok = (grp < G) & (co_base + bco < a.cout_g);
          const T* src = wtap + ((int64_t)grp * a.cout_g + co_base + bco) * 8;
          cp_async16_cg(sB + v * 16, ok ? (const void*)src : (const void*)wm, ok);
        }
        if (++kc == nkc) {  // next tap
          kc = 0;
          wtap += (int64_t)G * a.cout_g * 8;
          if (++tw == Tw) {
            tw = 0;
            if (++th == Th) {
              th = 0;
              dd += a.pdd;
            }
          }
          dh = th * a.pdh;
          dw = offw + tw * a.pdw;
          dofs = ((int64_t)dd * a.in_h + dh) * a.in_w + dw;
          if (!A_NCDHW) dofs *= a.c_in;
        }
      };

      float acc[MT][NT][4];
      zero_acc(acc);

#pragma unroll
      for (int s = 0; s < STAGES - 1; ++s) {
        if (s < nk) load_stage(s);
        cp_async_commit();
      }
      for (int k = 0; k < nk; ++k) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // step k has landed for every thread; step k-1's buffer is free
        const int kn = k + STAGES - 1;
        if (kn < nk) load_stage(kn % STAGES);
        cp_async_commit();
        const int stage = k % STAGES;
        const uint32_t sA = sa + stage * A_STAGE, sB = sb + stage * B_STAGE;
#pragma unroll
        for (int ks = 0; ks < BKG / 2; ++ks) {
          uint32_t af[MT][4];
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            if (A_NCDHW) {  // matrices (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), ...
              const int mi = lane >> 3;
              const int kk = ks * 16 + (mi >> 1) * 8 + (lane & 7);
              const int mg = (wm_ * MT + mt) * 2 + (mi & 1);
              ldsm_x4_trans(af[mt], sA + kk * (BM * 2) + ((mg ^ (kk & 7)) << 4));
            } else {
              const int row = (wm_ * MT + mt) * 16 + (lane & 15);
              const int kg = ks * 2 + (lane >> 4);
              ldsm_x4(af[mt], sA + row * (BKG * 16) + ((kg ^ a_swz<BKG>(row)) << 4));
            }
          }
          uint32_t bf[NT][2];
          const int bro = lane & 7, bhalf = (lane >> 3) & 1, bj = lane >> 4;
#pragma unroll
          for (int j = 0; j < NT; j += 2) {
            uint32_t rr[4];
            const int row = (ks * 2 + bhalf) * BN + (wn * NT + j + bj) * 8 + bro;
            ldsm_x4(rr, sB + row * 16);
            bf[j][0] = rr[0]; bf[j][1] = rr[1]; bf[j + 1][0] = rr[2]; bf[j + 1][1] = rr[3];
          }
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int j = 0; j < NT; ++j) MmaOp<T>::run(acc[mt][j], af[mt], bf[j][0], bf[j][1]);
        }
      }
      cp_async_wait<0>();
      __syncthreads();  // every warp is past the last stage (the next W phase refills them)

      // C fragment rows lane/4 and lane/4 + 8, columns 2*(lane%4) + {0, 1}
      if (WGROUP) {  // into s_c[col][row * sw + rw]
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            T* cp = s_c + ((wm_ * MT + mt) * 16 + (lane >> 2) + half * 8) * nw + rw;
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
              for (int c = 0; c < 2; ++c)
                cp[(col0 + j * 8 + c) * c_cs] = from_acc<T>(acc[mt][j][half * 2 + c] + bv[j][c]);
          }
      } else {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = (wm_ * MT + mt) * 16 + (lane >> 2) + half * 8;
          const int64_t yo = s_yo[row];
          if (yo < 0 || a.sw * s_rc[row].z + rw >= a.out_w) continue;
          T* yp = y + yo + rw + (int64_t)col0 * out_plane;
          if (full_cols) {
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
              for (int c = 0; c < 2; ++c) {
                const T out = from_acc<T>(acc[mt][j][half * 2 + c] + bv[j][c]);
                yp[(int64_t)(j * 8 + c) * out_plane] = out;
                nonfinite |= !finite_value(out);
              }
          } else {
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
              for (int c = 0; c < 2; ++c)
                if (co_base + col0 + j * 8 + c < a.cout_g) {
                  const T out = from_acc<T>(acc[mt][j][half * 2 + c] + bv[j][c]);
                  yp[(int64_t)(j * 8 + c) * out_plane] = out;
                  nonfinite |= !finite_value(out);
                }
          }
        }
      }
      }  // !WGROUP
    }
    if (WGROUP) {  // write the W phases' outputs: a warp stores 32 rows x sw contiguous values
      __syncthreads();
      const int row = tid % BM;
      const int64_t yo = s_yo[row];
      if (yo >= 0) {
        const int ow = a.sw * s_rc[row].z;
        const bool pair = nw == 2 && ow + 2 <= a.out_w && a.y_even;
        constexpr int CSTEP = NTHR / BM;
        int col = tid / BM;
        const T* src = s_c + col * c_cs + row * nw;
        T* dst = y + yo + (int64_t)col * out_plane;
        const int cols = min(BN, a.cout_g - co_base);
        for (; col < cols; col += CSTEP, src += CSTEP * c_cs, dst += CSTEP * out_plane) {
          if (pair) {
            const uint32_t v2 = *reinterpret_cast<const uint32_t*>(src);
            *reinterpret_cast<uint32_t*>(dst) = v2;
            nonfinite |= !all_finite<T>(v2);
          } else {
            for (int q = 0; q < nw && ow + q < a.out_w; ++q) {
              dst[q] = src[q];
              nonfinite |= !finite_value(src[q]);
            }
          }
        }
      }
    }
    __syncthreads();  // the next tile rewrites the row tables (and s_c)
  }
  if (nonfinite) *a.ex.flag = 1;  // the fix-up recomputes those (phase_conv_exact.cuh)
}
// ---------------------------------------------------------------- layout: to channels-last
// (N, C, P) -> (N, P, C) for P = D*H*W, through a 32-channel x 64-position shared-memory tile:
// reads coalesced along P, writes coalesced along C.  Feeds the channels-last kernels when the
// caller's input is contiguous (torch's generic permuted copy measured ~3x slower).
// 2-byte elements, C even: 64 channels x 32 positions, moved as 4-byte channel pairs (bank
// conflict free both ways, 128-byte coalesced writes).
__global__ void __launch_bounds__(256) to_channels_last_pairs_kernel(
    const uint16_t* __restrict__ x, uint32_t* __restrict__ y, int64_t nb, int64_t c,
    int64_t p) {
  __shared__ uint32_t tile[32][33];
  const int tx = threadIdx.x, ty = threadIdx.y;  // 32 x 8
  const int64_t p0 = (int64_t)blockIdx.x * 32, c0 = (int64_t)blockIdx.y * 64;
  const int64_t c2 = c >> 1;
  for (int64_t n = blockIdx.z; n < nb; n += gridDim.z) {
    const uint16_t* xn = x + n * c * p;
    uint32_t* yn = y + n * c2 * p;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int lc2 = ty + 8 * i;  // channel pair
      const int64_t ch = c0 + 2 * lc2, pos = p0 + tx;
      if (ch < c && pos < p) {
        const uint32_t lo = xn[ch * p + pos], hi = xn[(ch + 1) * p + pos];
        tile[tx][lc2] = lo | (hi << 16);
      }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int lp = ty + 8 * i;
      const int64_t pos = p0 + lp, ch2 = (c0 >> 1) + tx;
      if (pos < p && ch2 < c2) yn[pos * c2 + ch2] = tile[lp][tx];
    }
    __syncthreads();
  }
}

// 2-byte elements, C and P even: 64 channels x 64 positions; each thread reads two positions
// of two channels (two 4-byte loads) and regroups them into two channel pairs.
__global__ void __launch_bounds__(256) to_channels_last_quads_kernel(
    const uint32_t* __restrict__ x, uint32_t* __restrict__ y, int64_t nb, int64_t c,
    int64_t p) {
  __shared__ uint32_t tile[64][33];
  const int tx = threadIdx.x, ty = threadIdx.y;  // 32 x 8
  const int64_t p0 = (int64_t)blockIdx.x * 64, c0 = (int64_t)blockIdx.y * 64;
  const int64_t c2 = c >> 1, p2 = p >> 1;
  for (int64_t n = blockIdx.z; n < nb; n += gridDim.z) {
    const uint32_t* xn = x + n * c * p2;  // (c, p/2) words
    uint32_t* yn = y + n * c2 * p;        // (p, c/2) words
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int lc2 = ty + 8 * i;  // channel pair
      const int64_t ch = c0 + 2 * lc2, pp = (p0 >> 1) + tx;  // position pair
      if (ch < c && pp < p2) {
        const uint32_t a = xn[ch * p2 + pp], b = xn[(ch + 1) * p2 + pp];
        tile[2 * tx][lc2] = __byte_perm(a, b, 0x5410);      // position 2pp: (ch, ch + 1)
        tile[2 * tx + 1][lc2] = __byte_perm(a, b, 0x7632);  // position 2pp + 1
      }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int lp = ty + 8 * i;
      const int64_t pos = p0 + lp, ch2 = (c0 >> 1) + tx;
      if (pos < p && ch2 < c2) yn[pos * c2 + ch2] = tile[lp][tx];
    }
    __syncthreads();
  }
}

template <typename U>
__global__ void __launch_bounds__(256) to_channels_last_kernel(const U* __restrict__ x,
                                                               U* __restrict__ y, int64_t nb,
                                                               int64_t c, int64_t p) {
  __shared__ U tile[32][65];
  const int tx = threadIdx.x, ty = threadIdx.y;  // 32 x 8
  const int64_t p0 = (int64_t)blockIdx.x * 64, c0 = (int64_t)blockIdx.y * 32;
  for (int64_t n = blockIdx.z; n < nb; n += gridDim.z) {
    const U* xn = x + n * c * p;
    U* yn = y + n * c * p;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int lc = ty + 8 * i;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int lp = tx + 32 * h;
        if (c0 + lc < c && p0 + lp < p) tile[lc][lp] = xn[(c0 + lc) * p + p0 + lp];
      }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int lp = ty + 8 * i;
      if (c0 + tx < c && p0 + lp < p) yn[(p0 + lp) * c + c0 + tx] = tile[tx][lp];
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------- host side

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The fields every kernel's argument struct shares, from the launcher's parameters (sizes
// were checked to fit in int by the binding).
template <typename Args> void set_geometry(Args& a, const PhaseConvFwdParams& p) {
  a.x = p.x; a.bias = p.bias; a.y = p.y; a.table = p.table;
  a.ex = p.exact;
  a.nbatch = p.n;
  a.c_in = (int)p.c_in; a.c_out = (int)p.c_out;
  a.cin_g = (int)(p.c_in / p.groups); a.cout_g = (int)(p.c_out / p.groups);
  a.in_d = (int)p.in_d; a.in_h = (int)p.in_h; a.in_w = (int)p.in_w;
  a.out_d = (int)p.out_d; a.out_h = (int)p.out_h; a.out_w = (int)p.out_w;
  a.sd = (int)p.stride_d; a.sh = (int)p.stride_h; a.sw = (int)p.stride_w;
  a.pdd = (int)p.pdil_d; a.pdh = (int)p.pdil_h; a.pdw = (int)p.pdil_w;
}

// Whether a 3xTF32 launch needs the FLUSH kernel variant: a reduction (per output voxel)
// longer than kFlushTerms.  Forward: C_in/g x the most taps of a phase; grad-input mode:
// C_in/g (grad_y's channels) x the taps of all sub-problems.
bool needs_flush(const PhaseConvFwdParams& p, int dtype_code) {
  if (dtype_code != PHASECONV_FLOAT32) return false;
  const int64_t taps = p.nsub > 0 ? p.total_taps
                                  : p.max_taps_d * p.max_taps_h * p.max_taps_w;
  return (p.c_in / p.groups) * taps > kFlushTerms;
}

struct DevInfo {
  int sms;
  size_t smem_optin;  // per block
  size_t smem_sm;     // per multiprocessor
};

cudaError_t dev_info(DevInfo* info) {
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  int sms = 0, optin = 0, per_sm = 0;
  if ((err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess)
    return err;
  if ((err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) !=
      cudaSuccess)
    return err;
  if ((err = cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev)) !=
      cudaSuccess)
    return err;
  info->sms = sms;
  info->smem_optin = (size_t)optin;
  info->smem_sm = (size_t)per_sm;
  return cudaSuccess;
}

int co_tile_for(int cout_g, int dtype_code) {
  if (dtype_code == PHASECONV_FLOAT64) return cout_g == 1 ? 1 : 8;
  if (cout_g == 1) return 1;
  if (cout_g == 2) return 2;
  if (cout_g <= 4) return 4;
  return 8;
}

// Picks the tile configuration with the lowest modelled cost; false when none fits.
bool choose_tiled(const PhaseConvFwdParams& p, int dtype_code, const DevInfo& dev,
                  TileCfg* best) {
  const int esize = dtype_code == PHASECONV_FLOAT64 ? 8 : 4;
  const int64_t cin_g = p.c_in / p.groups, cout_g = p.c_out / p.groups;
  const int co_t = co_tile_for((int)cout_g, dtype_code);
  const int64_t num_phases = p.stride_d * p.stride_h * p.stride_w;
  const int64_t cd = cdiv(p.out_d, p.stride_d), ch = cdiv(p.out_h, p.stride_h),
                cw = cdiv(p.out_w, p.stride_w);
  const int64_t mtd = p.max_taps_d > 0 ? p.max_taps_d : 1;
  const int64_t mth = p.max_taps_h > 0 ? p.max_taps_h : 1;
  const int64_t mtw = p.max_taps_w > 0 ? p.max_taps_w : 1;
  const int64_t taps_max = mtd * mth * mtw;
  const double avg_taps =
      num_phases > 0 ? (double)p.total_taps / (double)num_phases : 0.0;
  const int Ms_full[2] = {4, 8};
  const int Ms_dbl[1] = {4};
  const int* Ms = dtype_code == PHASECONV_FLOAT64 ? Ms_dbl : Ms_full;
  const int nM = dtype_code == PHASECONV_FLOAT64 ? 1 : 2;
  const size_t budget = dev.smem_optin < (size_t)100 * 1024 ? dev.smem_optin : (size_t)100 * 1024;
  bool found = false;
  const int64_t max_wc = cdiv(cout_g, co_t);
  for (int LW = 8; LW <= 32; LW *= 2) {
    for (int mi = 0; mi < nM; ++mi) {
      const int M = Ms[mi];
      for (int MD = 1; MD <= M; MD *= 2) {
        const int MH = M / MD;
        for (int threads = 128; threads <= 256; threads *= 2) {
          for (int WC = 1; WC <= 32 && WC <= max_wc; WC *= 2) {
            for (int NY = 1; NY <= 32; NY *= 2) {
              if (LW * NY < 32) continue;  // a warp stays in one D plane
              const int denom = LW * NY * WC;
              if (threads % denom != 0) continue;
              const int NZ = threads / denom;
              TileCfg c;
              c.LW = LW; c.NY = NY; c.NZ = NZ; c.WC = WC; c.MD = MD; c.MH = MH; c.M = M;
              c.CO_T = co_t; c.threads = threads;
              const int64_t TW = LW, TH = (int64_t)NY * MH, TD = (int64_t)NZ * MD;
              const int64_t co_blk = (int64_t)WC * co_t;
              // avoid tiles far larger than the phase along an axis
              if (TH > 2 * ch + 8 || TD > 2 * cd + 8) continue;
              const int64_t hw = TW + (mtw - 1) * p.pdil_w;
              const int64_t hh = TH + (mth - 1) * p.pdil_h;
              const int64_t hd = TD + (mtd - 1) * p.pdil_d;
              int64_t pitch = hw;
              if (LW < 32) {
                while (pitch % (2 * LW) != LW) ++pitch;
              }
              const int64_t plane = hd * hh * pitch;
              const int64_t per_ci = plane + taps_max * co_blk;
              if (per_ci * esize > (int64_t)budget) continue;
              int64_t ci_chunk = (int64_t)budget / (per_ci * esize);
              // prefer about 48 KB so that several blocks share a multiprocessor
              const int64_t soft = (int64_t)(48 * 1024) / (per_ci * esize);
              if (soft >= 1 && soft < ci_chunk) ci_chunk = soft;
              if (ci_chunk > cin_g) ci_chunk = cin_g;
              if (ci_chunk > 64) ci_chunk = 64;
              if (ci_chunk < 1) ci_chunk = 1;
              const int64_t s_w_elems = cdiv(ci_chunk * taps_max * co_blk, 4) * 4;
              const size_t smem = (size_t)(s_w_elems + ci_chunk * plane) * esize;
              if (smem > dev.smem_optin) continue;
              if (plane * ci_chunk >= ((int64_t)1 << 30)) continue;
              // cost model (thread instructions)
              const int64_t tiles = cdiv(cw, TW) * cdiv(ch, TH) * cdiv(cd, TD);
              const int64_t co_blocks = cdiv(cout_g, co_blk);
              const double blocks =
                  (double)num_phases * tiles * p.n * co_blocks * p.groups;
              const double per_tap = (double)M * co_t + 2.0 * M + (co_t >= 4 ? co_t / 4 : 1) + 2.0;
              const double compute = blocks * threads * (double)cin_g * avg_taps * per_tap;
              const double stage =
                  blocks * (double)cin_g *
                      ((double)hd * hh * cdiv(hw, 32) * 32 * 5.0 + avg_taps * co_blk * 6.0) +
                  blocks * (double)cdiv(cin_g, ci_chunk) * threads * 30.0;
              const double store = blocks * threads * (double)M * co_t * 4.0 + blocks * 2000.0;
              double cost = compute + stage + store;
              const int regs = 128;  // __launch_bounds__(256, 2): ptxas uses up to 128
              int64_t res = 2048 / threads;
              const int64_t by_smem = (int64_t)(dev.smem_sm / (smem + 1024));
              const int64_t by_regs = 65536 / ((int64_t)threads * (regs > 255 ? 255 : regs));
              if (by_smem < res) res = by_smem;
              if (by_regs < res) res = by_regs;
              if (res < 1) continue;
              const double occ = (double)res * threads / 1024.0;
              cost /= (occ >= 1.0 ? 1.0 : 0.4 + 0.6 * occ);
              const double slots = (double)dev.sms * res;
              const double waves = blocks / slots;
              const double full = waves < 1.0 ? 1.0 : (double)(int64_t)(waves + 0.999999);
              if (waves > 0) cost *= full / waves > 1.5 ? 1.5 : full / waves;
              c.ci_chunk = (int)ci_chunk; c.pitch = (int)pitch; c.hh_max = (int)hh;
              c.hd_max = (int)hd; c.plane = (int)plane; c.s_w_elems = (int)s_w_elems;
              c.smem = smem; c.cost = cost;
              if (!found || cost < best->cost) {
                *best = c;
                found = true;
              }
            }
          }
        }
      }
    }
  }
  return found;
}

template <typename T, int CO_T, int M>
cudaError_t launch_tiled_t(const TiledArgs& a, const TileCfg& c, int64_t grid,
                           cudaStream_t stream) {
  if (c.smem > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(tiled_kernel<T, CO_T, M>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)c.smem);
    if (err != cudaSuccess) return err;
  }
  tiled_kernel<T, CO_T, M><<<(unsigned)grid, c.threads, c.smem, stream>>>(a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_tiled_co(const TiledArgs& a, const TileCfg& c, int64_t grid,
                            cudaStream_t stream) {
  if (c.M == 8) {
    switch (c.CO_T) {
      case 1: return launch_tiled_t<T, 1, 8>(a, c, grid, stream);
      case 2: return launch_tiled_t<T, 2, 8>(a, c, grid, stream);
      case 4: return launch_tiled_t<T, 4, 8>(a, c, grid, stream);
      case 8: return launch_tiled_t<T, 8, 8>(a, c, grid, stream);
    }
  } else if (c.M == 4) {
    switch (c.CO_T) {
      case 1: return launch_tiled_t<T, 1, 4>(a, c, grid, stream);
      case 2: return launch_tiled_t<T, 2, 4>(a, c, grid, stream);
      case 4: return launch_tiled_t<T, 4, 4>(a, c, grid, stream);
      case 8: return launch_tiled_t<T, 8, 4>(a, c, grid, stream);
    }
  }
  return cudaErrorInvalidConfiguration;
}

template <>
cudaError_t launch_tiled_co<double>(const TiledArgs& a, const TileCfg& c, int64_t grid,
                                    cudaStream_t stream) {
  if (c.M == 4 && c.CO_T == 1) return launch_tiled_t<double, 1, 4>(a, c, grid, stream);
  if (c.M == 4 && c.CO_T == 8) return launch_tiled_t<double, 8, 4>(a, c, grid, stream);
  return cudaErrorInvalidConfiguration;
}

// ---------------------------------------------------------------- tensor-core host side

bool choose_mma(const PhaseConvFwdParams& p, int dtype_code, const DevInfo& dev, MmaCfg* best) {
  const int CG = dtype_code == PHASECONV_FLOAT32 ? 4 : 8;
  const int64_t cin_g = p.c_in / p.groups, cout_g = p.c_out / p.groups;
  const int64_t num_phases = p.stride_d * p.stride_h * p.stride_w;
  const int64_t cd = cdiv(p.out_d, p.stride_d), ch = cdiv(p.out_h, p.stride_h),
                cw = cdiv(p.out_w, p.stride_w);
  const int64_t mtd = p.max_taps_d > 0 ? p.max_taps_d : 1;
  const int64_t mth = p.max_taps_h > 0 ? p.max_taps_h : 1;
  const int64_t mtw = p.max_taps_w > 0 ? p.max_taps_w : 1;
  const int64_t taps_max = mtd * mth * mtw;
  const double avg_taps = num_phases > 0 ? (double)p.total_taps / (double)num_phases : 0.0;
  const int kinds_bm[4] = {256, 256, 128, 128};
  const int kinds_bn[4] = {8, 16, 64, 128};
  const int kinds_thr[4] = {128, 128, 128, 256};
  const size_t soft = 48 * 1024;
  bool found = false;
  for (int kind = 0; kind < 4; ++kind) {
    const int BM = kinds_bm[kind], BN = kinds_bn[kind];
    if (kind > 0 && kinds_bn[kind - 1] >= cout_g) continue;  // a narrower tile covers it
    const int64_t co_blocks = cdiv(cout_g, BN);
    for (int TW = 8; TW <= 32; TW *= 2) {
      for (int TH = 1; TW * TH <= BM; TH *= 2) {
        const int TD = BM / (TW * TH);
        if (TD * TH * TW != BM) continue;
        if (TH > 2 * ch + 8 || TD > 2 * cd + 8 || TW > 2 * cw + 8) continue;
        const int64_t hd = TD + (mtd - 1) * p.pdil_d, hh = TH + (mth - 1) * p.pdil_h,
                      hw = TW + (mtw - 1) * p.pdil_w;
        const int64_t npos = hd * hh * hw;
        int64_t ng = cdiv(cin_g, CG);
        size_t smem = 0;
        int64_t xb = 0, wb = 0;
        for (;;) {
          const int64_t rowstride = ng * 16 + ((ng & 1) ? 0 : 16);
          xb = npos * rowstride;
          wb = (taps_max * ng + 1) * BN * 16;
          const int64_t hb = (taps_max * ng + 2) * 4;
          smem = (size_t)(xb + wb + hb);
          if (smem <= soft || ng == 1) break;
          ng = (ng + 1) / 2;
        }
        if (smem > dev.smem_optin || xb >= ((int64_t)1 << 30)) continue;
        const int64_t tiles = cdiv(cw, TW) * cdiv(ch, TH) * cdiv(cd, TD);
        const double blocks = (double)num_phases * tiles * p.n * co_blocks * p.groups;
        const double kpad = (double)cdiv(cin_g, CG) * CG;
        const double compute = blocks * BM * (double)BN * avg_taps * kpad / 64.0;
        const double stage = blocks * ((double)npos * kpad * 2.0 + taps_max * kpad * BN * 0.5);
        const double store = blocks * BM * (double)BN * 1.0;
        double cost = compute + stage + store;
        int64_t res = 2048 / kinds_thr[kind];
        const int64_t by_smem = (int64_t)(dev.smem_sm / (smem + 1024));
        if (by_smem < res) res = by_smem;
        if (res < 1) continue;
        const double occ = (double)res * kinds_thr[kind] / 1024.0;
        cost /= (occ >= 1.0 ? 1.0 : 0.4 + 0.6 * occ);
        const double slots = (double)dev.sms * res;
        const double waves = blocks / slots;
        const double full = waves < 1.0 ? 1.0 : (double)(int64_t)(waves + 0.999999);
        if (waves > 0) cost *= full / waves > 1.5 ? 1.5 : full / waves;
        if (!found || cost < best->cost) {
          MmaCfg c;
          c.kind = kind; c.BM = BM; c.BN = BN; c.threads = kinds_thr[kind];
          c.TD = TD; c.TH = TH; c.TW = TW; c.ng = (int)ng;
          c.x_bytes = (int)xb; c.w_bytes = (int)wb; c.smem = smem; c.cost = cost;
          *best = c;
          found = true;
        }
      }
    }
  }
  return found;
}

template <typename T, int MT, int NT, int WM, int WN, bool FLUSH>
cudaError_t launch_mma_t(const MmaArgs& a, const MmaCfg& c, int64_t grid, cudaStream_t stream) {
  if (c.smem > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(mma_kernel<T, MT, NT, WM, WN, FLUSH>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)c.smem);
    if (err != cudaSuccess) return err;
  }
  mma_kernel<T, MT, NT, WM, WN, FLUSH><<<(unsigned)grid, WM * WN * 32, c.smem, stream>>>(a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t run_mma(const PhaseConvFwdParams& p, const MmaCfg& c, cudaStream_t stream) {
  MmaArgs a;
  set_geometry(a, p);
  a.w = p.weight;
  a.num_phases = (int)(p.stride_d * p.stride_h * p.stride_w);
  a.TD = c.TD; a.TH = c.TH; a.TW = c.TW;
  a.tiles_w = (int)cdiv(cdiv(p.out_w, p.stride_w), c.TW);
  a.tiles_h = (int)cdiv(cdiv(p.out_h, p.stride_h), c.TH);
  a.tiles_d = (int)cdiv(cdiv(p.out_d, p.stride_d), c.TD);
  a.co_blocks = (int)cdiv(a.cout_g, c.BN);
  a.ng = c.ng; a.x_bytes = c.x_bytes; a.w_bytes = c.w_bytes;
  a.total_blocks = (int64_t)a.num_phases * a.tiles_w * a.tiles_h * a.tiles_d * p.n *
                   a.co_blocks * p.groups;
  a.sub_table = p.sub_table; a.nsub = p.nsub;
  a.isd = (int)p.in_stride_d; a.ish = (int)p.in_stride_h; a.isw = (int)p.in_stride_w;
  int64_t grid = a.total_blocks;
  if (grid > 0x7fffffffLL) grid = 0x7fffffffLL;
  constexpr bool F = sizeof(T) == 4;  // the FLUSH variant exists for float only
  const bool fl = needs_flush(p, F ? PHASECONV_FLOAT32 : PHASECONV_FLOAT16);
  switch (c.kind * 2 + (fl ? 1 : 0)) {
    case 0: return launch_mma_t<T, 4, 1, 4, 1, false>(a, c, grid, stream);
    case 1: return launch_mma_t<T, 4, 1, 4, 1, F>(a, c, grid, stream);
    case 2: return launch_mma_t<T, 4, 2, 4, 1, false>(a, c, grid, stream);
    case 3: return launch_mma_t<T, 4, 2, 4, 1, F>(a, c, grid, stream);
    case 4: return launch_mma_t<T, 4, 4, 2, 2, false>(a, c, grid, stream);
    case 5: return launch_mma_t<T, 4, 4, 2, 2, F>(a, c, grid, stream);
    case 6: return launch_mma_t<T, 4, 4, 2, 4, false>(a, c, grid, stream);
    case 7: return launch_mma_t<T, 4, 4, 2, 4, F>(a, c, grid, stream);
  }
  return cudaErrorInvalidConfiguration;
}

// ---------------------------------------------------------------- all-phase host side

inline int ilog2(int v) {
  int r = 0;
  while ((1 << (r + 1)) <= v) ++r;
  return r;
}

// cl: the input is channels-last; 16-bit dtypes then double-buffer the halo (cp.async).
bool choose_allph(const PhaseConvFwdParams& p, int dtype_code, const DevInfo& dev, bool cl,
                  AllCfg* best) {
  if (p.weight_mma == nullptr || dtype_code == PHASECONV_FLOAT64) return false;
  const int64_t num_phases = p.stride_d * p.stride_h * p.stride_w;
  if (num_phases < 1 || num_phases > PHASECONV_ALLPH_MAXPH) return false;
  const int CG = dtype_code == PHASECONV_FLOAT32 ? 4 : 8;
  const int64_t cin_g = p.c_in / p.groups, cout_g = p.c_out / p.groups;
  const int64_t G = cdiv(cin_g, CG);
  const int64_t rowstride = G * 16 + ((G & 1) ? 0 : 16);
  const int64_t hbound = p.total_taps * G + num_phases;  // >= sum over phases of even(taps*G)
  const int64_t cd = cdiv(p.out_d, p.stride_d), ch = cdiv(p.out_h, p.stride_h),
                cw = cdiv(p.out_w, p.stride_w);
  const double avg_taps = (double)p.total_taps / (double)num_phases;
  const int kinds_bm[4] = {256, 256, 128, 128};
  const int kinds_bn[4] = {8, 16, 64, 128};
  const int kinds_thr[4] = {128, 128, 128, 256};
  // static s_pi takes 1 KB; past ~120 KB a block runs alone on its SM and the per-phase
  // kernel (which chunks C_in/g) measured faster (k2-128, H100)
  size_t cap = dev.smem_optin > 2048 ? dev.smem_optin - 2048 : 0;
  if (cap > 120 * 1024) cap = 120 * 1024;
  bool found = false;
  for (int kind = 0; kind < 4; ++kind) {
    const int BM = kinds_bm[kind], BN = kinds_bn[kind];
    if (kind > 0 && kinds_bn[kind - 1] >= cout_g) continue;
    const int64_t co_blocks = cdiv(cout_g, BN);
    const int64_t wb = hbound * BN * 16;
    const int64_t hb = (hbound * 4 + 15) / 16 * 16;
    for (int TW = 8; TW <= 32; TW *= 2) {
      for (int TH = 1; TW * TH <= BM; TH *= 2) {
        const int TD = BM / (TW * TH);
        if (TD * TH * TW != BM) continue;
        if (TH > 2 * ch + 8 || TD > 2 * cd + 8 || TW > 2 * cw + 8) continue;
        const int64_t hd = TD + p.union_ext_d, hh = TH + p.union_ext_h, hw = TW + p.union_ext_w;
        const int64_t npos = hd * hh * hw;
        // fp32 stages the halo twice, already split into its tf32 big and small parts, so the
        // inner loop does no conversions (each A fragment meets only NT n-tiles); 16-bit
        // dtypes with a channels-last input keep two halo buffers (the next tile's in flight)
        const int64_t xbuf = npos * rowstride;
        const int64_t xb = xbuf * ((CG == 4 || cl) ? 2 : 1);
        if (xb >= ((int64_t)1 << 30) || wb >= ((int64_t)1 << 30)) continue;
        size_t smem = (size_t)(xb + wb + hb);
        if (smem > cap) continue;
        // staged output slab (16-bit, BN <= 16) when it fits
        const int64_t box_cs = (int64_t)TD * TH * p.stride_h * TW * p.stride_w + 8;
        const int64_t box_bytes = (BN * box_cs * 2 + 15) / 16 * 16;
        const bool stage_out = CG == 8 && BN <= 16 && !(p.force_path & PHASECONV_DIRECT_STORES) &&
                               smem + box_bytes <= cap && box_cs < ((int64_t)1 << 24);
        if (stage_out) smem += (size_t)box_bytes;
        const int64_t tiles = cdiv(cw, TW) * cdiv(ch, TH) * cdiv(cd, TD);
        const double blocks = (double)tiles * p.n * co_blocks * p.groups;
        const double kpad = (double)G * CG;
        const double compute = blocks * num_phases * BM * (double)BN * avg_taps * kpad / 64.0;
        const double stage = blocks * ((double)npos * kpad * 2.0);
        const double store = blocks * num_phases * BM * (double)BN * (stage_out ? 0.3 : 1.0);
        double cost = compute + stage + store;
        int64_t res = 2048 / kinds_thr[kind];
        const int64_t by_smem = (int64_t)(dev.smem_sm / (smem + 1024 + 1024));
        if (by_smem < res) res = by_smem;
        const bool fl = needs_flush(p, dtype_code);
        const int64_t reg_cap =
            kind == 0 ? (CG == 4 ? (fl ? 3 : 4) : 5) : (kind == 3 ? 1 : (fl ? 2 : 3));
        if (res > reg_cap) res = reg_cap;  // __launch_bounds__ of the kernel (AllMinBlocks)
        if (res < 1) continue;
        const double occ = (double)res * kinds_thr[kind] / 1024.0;
        cost /= (occ >= 1.0 ? 1.0 : 0.4 + 0.6 * occ);
        const double slots = (double)dev.sms * res;
        const double waves = blocks / slots;
        const double full = waves < 1.0 ? 1.0 : (double)(int64_t)(waves + 0.999999);
        if (waves > 0) cost *= full / waves > 1.5 ? 1.5 : full / waves;
        if (!found || cost < best->cost) {
          AllCfg c;
          c.kind = kind; c.BM = BM; c.BN = BN; c.threads = kinds_thr[kind];
          c.TD = TD; c.TH = TH; c.TW = TW; c.G = (int)G;
          c.hd = (int)hd; c.hh = (int)hh; c.hw = (int)hw;
          c.x_bytes = (int)xb; c.w_bytes = (int)wb; c.x_buf = (int)xbuf;
          c.stage_out = stage_out ? 1 : 0;
          c.box_off = (int)(xb + wb + hb); c.box_cs = (int)box_cs;
          c.smem = smem; c.cost = cost;
          c.total_blocks = (int64_t)tiles * p.n * co_blocks * p.groups;
          // each CTA takes per_cta consecutive tiles (same group: the weights stay staged).
          // Rounds of tiles per slot = per * waves(ceil(total / per) CTAs): take the fewest.
          // On a tie, with >= 4 CTAs per SM the smallest per (the others overlap each CTA's
          // prologue; founding bf16: 112 us at per 1), else the largest (fewer weight
          // restagings; founding fp32, 2 CTAs/SM: 246 us at per 7, 275 at per 1).
          const int64_t islots = (int64_t)slots;
          int64_t per = 1, best_rounds = -1;
          for (int64_t q = 1; q <= cdiv(c.total_blocks, islots); ++q) {
            const int64_t rounds = q * cdiv(cdiv(c.total_blocks, q), islots);
            if (best_rounds < 0 || rounds < best_rounds || (rounds == best_rounds && res < 4)) {
              best_rounds = rounds;
              per = q;
            }
          }
          c.per_cta = per;
          c.grid = cdiv(c.total_blocks, per);
          if (c.grid > 0x7fffffffLL) {
            c.per_cta = cdiv(c.total_blocks, 0x7fffffffLL);
            c.grid = cdiv(c.total_blocks, c.per_cta);
          }
          *best = c;
          found = true;
        }
      }
    }
  }
  return found;
}

template <typename T, int MT, int NT, int WM, int WN, bool FLUSH>
cudaError_t launch_allph_t(const AllArgs& a, const AllCfg& c, cudaStream_t stream) {
  if (c.smem + 1024 > 48 * 1024) {  // static + dynamic past 48 KB needs the opt-in
    cudaError_t err = cudaFuncSetAttribute(mma_allph_kernel<T, MT, NT, WM, WN, FLUSH>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)c.smem);
    if (err != cudaSuccess) return err;
  }
  if (c.total_blocks == 0) return cudaSuccess;
  mma_allph_kernel<T, MT, NT, WM, WN, FLUSH><<<(unsigned)c.grid, WM * WN * 32, c.smem,
                                               stream>>>(a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t run_allph(const PhaseConvFwdParams& p, const AllCfg& c, cudaStream_t stream) {
  AllArgs a;
  set_geometry(a, p);
  a.wm = p.weight_mma;
  a.num_phases = (int)(p.stride_d * p.stride_h * p.stride_w);
  a.TD = c.TD; a.TH = c.TH; a.TW = c.TW;
  a.lg_tw = ilog2(c.TW); a.lg_thw = ilog2(c.TH * c.TW);
  a.hd = c.hd; a.hh = c.hh; a.hw = c.hw;
  a.ulo_d = (int)p.union_lo_d; a.ulo_h = (int)p.union_lo_h; a.ulo_w = (int)p.union_lo_w;
  a.tiles_w = (int)cdiv(cdiv(p.out_w, p.stride_w), c.TW);
  a.tiles_h = (int)cdiv(cdiv(p.out_h, p.stride_h), c.TH);
  a.tiles_d = (int)cdiv(cdiv(p.out_d, p.stride_d), c.TD);
  a.co_blocks = (int)cdiv(a.cout_g, c.BN);
  a.G = c.G; a.x_bytes = c.x_bytes; a.w_bytes = c.w_bytes; a.x_buf = c.x_buf;
  a.x_cl = p.x_channels_last;
  a.stage_out = c.stage_out; a.box_off = c.box_off; a.box_cs = c.box_cs;
  a.box_vec = p.out_w % 8 == 0 ? 1 : 0;
  a.total_blocks = c.total_blocks; a.per_cta = c.per_cta;
  constexpr bool F = sizeof(T) == 4;  // the FLUSH variant exists for float only
  const bool fl = needs_flush(p, F ? PHASECONV_FLOAT32 : PHASECONV_FLOAT16);
  switch (c.kind * 2 + (fl ? 1 : 0)) {
    case 0: return launch_allph_t<T, 4, 1, 4, 1, false>(a, c, stream);
    case 1: return launch_allph_t<T, 4, 1, 4, 1, F>(a, c, stream);
    case 2: return launch_allph_t<T, 4, 2, 4, 1, false>(a, c, stream);
    case 3: return launch_allph_t<T, 4, 2, 4, 1, F>(a, c, stream);
    case 4: return launch_allph_t<T, 4, 4, 2, 2, false>(a, c, stream);
    case 5: return launch_allph_t<T, 4, 4, 2, 2, F>(a, c, stream);
    case 6: return launch_allph_t<T, 4, 4, 2, 4, false>(a, c, stream);
    case 7: return launch_allph_t<T, 4, 4, 2, 4, F>(a, c, stream);
  }
  return cudaErrorInvalidConfiguration;
}

// ---------------------------------------------------------------- implicit-GEMM host side
constexpr int kGemmStages = 4;        // one phase per block
constexpr int kGemmGroupStages = 3;   // W phases grouped (shared memory also holds the output)
constexpr int kGemmMaxGroup = 4;      // W phases grouped at most (stride_w)

// Whether a channels-last copy of x can feed the 16-byte staging (CG channels per vector).
bool cl_possible(const PhaseConvFwdParams& p, int dtype_code) {
  if (dtype_code == PHASECONV_FLOAT64 || p.weight_mma == nullptr) return false;
  if (p.force_path & PHASECONV_FORCE_NCDHW) return false;
  const int64_t cg = dtype_code == PHASECONV_FLOAT32 ? 4 : 8;
  return (p.c_in / p.groups) % cg == 0;
}

// cl: the input is channels-last.  A contiguous input serves only when every phase reads W
// at one offset, a multiple of 8, and the phases' rows come in whole 16-byte vectors along W
// (k == s, no padding: the "pure GEMM" layers), so no layout copy is needed.
bool choose_gemm(const PhaseConvFwdParams& p, int dtype_code, const DevInfo& dev, bool cl,
                 GemmCfg* c) {
  if (dtype_code != PHASECONV_FLOAT16 && dtype_code != PHASECONV_BFLOAT16) return false;
  if (p.weight_mma == nullptr || (p.c_in / p.groups) % 8 != 0) return false;
  if (cl && !cl_possible(p, dtype_code)) return false;
  if (!cl && !(p.in_w % 8 == 0 && p.out_w % p.stride_w == 0 && (p.out_w / p.stride_w) % 8 == 0 &&
               p.max_taps_w <= 1 && p.union_ext_w == 0 && p.union_lo_w % 8 == 0 &&
               reinterpret_cast<uintptr_t>(p.x) % 16 == 0))
    return false;
  c->a_ncdhw = !cl;
  const int force = p.force_path & 15;
  const int64_t cin_g = p.c_in / p.groups, cout_g = p.c_out / p.groups;
  // wide layers only: narrow ones (C_out/g < 32) waste most of a BN >= 32 tile, and the
  // all-phase kernel's shared halo serves them better
  if (force != 5 && !(force == 0 && cin_g >= 16 && cout_g >= 32)) return false;
  // tile: the narrowest BN that covers C_out/g; for BN 64 with a long reduction (>= 512 per
  // phase) the 8-warp tile with 64-channel k steps (measured on an H100: 8x32x32
  // k(3,4,4) 128->64 bf16 67.9 vs 78.6 us; 32^3 k2 128->64, K = 128: 83.7 vs 80.0 us)
  const double k_per_phase = (double)cin_g * (double)p.total_taps /
                             (double)(p.stride_d * p.stride_h * p.stride_w);
  int kind = cout_g <= 32 ? 0 : (cout_g <= 64 ? (k_per_phase >= 512 && cin_g >= 64 ? 3 : 1) : 2);
  if ((p.force_path >> 8) & 7) kind = ((p.force_path >> 8) & 7) - 1;  // benchmarks: a tile
  if (kind > 3) return false;
  const int bn[4] = {32, 64, 128, 64}, thr[4] = {128, 128, 256, 256};
  c->kind = kind; c->BM = 128; c->BN = bn[kind]; c->threads = thr[kind];
  // group the W phases (stores of whole output rows) unless told not to (benchmarks)
  c->wgroup = p.stride_w >= 2 && p.stride_w <= kGemmMaxGroup &&
              !(p.force_path & PHASECONV_GEMM_NO_WGROUP);
  // the 8-warp tiles take 64 channels a k step (half the barriers) when C_in/g allows
  c->bkg = (kind >= 2 && cin_g >= 64 && !(p.force_path & PHASECONV_GEMM_BK32)) ? 8 : 4;
  const size_t tables = (size_t)c->BM * 32 + (size_t)(c->BM / 8) * 24;
  const size_t stage = (size_t)c->bkg * 16 * (c->BM + c->BN);
  if (c->wgroup) {
    c->smem = (size_t)kGemmGroupStages * stage + tables +
              (size_t)c->BN * (c->BM * p.stride_w + 8) * 2;
    if (c->smem > dev.smem_optin) c->wgroup = false;
  }
  if (!c->wgroup) c->smem = (size_t)kGemmStages * stage + tables;
  if (c->smem > dev.smem_optin) return false;
  const int64_t rows = p.n * cdiv(p.out_d, p.stride_d) * cdiv(p.out_h, p.stride_h) *
                       cdiv(p.out_w, p.stride_w);  // the largest phase (residue 0)
  const int64_t m_tiles = cdiv(rows, c->BM);
  if (m_tiles >= ((int64_t)1 << 31)) return false;
  c->m_tiles = (int)m_tiles;
  c->co_blocks = (int)cdiv(cout_g, c->BN);
  c->total_blocks = p.stride_d * p.stride_h * (c->wgroup ? 1 : p.stride_w) * m_tiles *
                    c->co_blocks * p.groups;
  c->grid = c->total_blocks > 0x7fffffffLL ? 0x7fffffffLL : c->total_blocks;
  return true;
}

template <typename T, int MT, int NT, int WM, int WN, int BKG>
cudaError_t launch_gemm_t(const GemmArgs& a, const GemmCfg& c, cudaStream_t stream) {
  constexpr int GS = kGemmGroupStages, S1 = kGemmStages;
  auto kern = c.wgroup ? (c.a_ncdhw ? gemm_cl_kernel<T, MT, NT, WM, WN, GS, true, true, BKG>
                                    : gemm_cl_kernel<T, MT, NT, WM, WN, GS, true, false, BKG>)
                       : (c.a_ncdhw ? gemm_cl_kernel<T, MT, NT, WM, WN, S1, false, true, BKG>
                                    : gemm_cl_kernel<T, MT, NT, WM, WN, S1, false, false, BKG>);
  if (c.smem > 48 * 1024) {
    cudaError_t err =
        cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)c.smem);
    if (err != cudaSuccess) return err;
  }
  if (c.total_blocks == 0) return cudaSuccess;
  kern<<<(unsigned)c.grid, WM * WN * 32, c.smem, stream>>>(a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t run_gemm(const PhaseConvFwdParams& p, const GemmCfg& c, cudaStream_t stream) {
  if ((p.x_channels_last != 0) == c.a_ncdhw) return cudaErrorInvalidValue;
  GemmArgs a;
  set_geometry(a, p);
  a.wm = p.weight_mma;
  a.num_phases = (int)(p.stride_d * p.stride_h * p.stride_w);
  a.G = a.cin_g / 8; a.m_tiles = c.m_tiles; a.co_blocks = c.co_blocks;
  a.y_even = (p.out_w % 2 == 0 && reinterpret_cast<uintptr_t>(p.y) % 4 == 0) ? 1 : 0;
  a.total_blocks = c.total_blocks;
  switch (c.kind * 2 + (c.bkg == 8 ? 1 : 0)) {
    case 0: return launch_gemm_t<T, 2, 4, 4, 1, 4>(a, c, stream);
    case 2: return launch_gemm_t<T, 4, 4, 2, 2, 4>(a, c, stream);
    case 4: return launch_gemm_t<T, 4, 4, 2, 4, 4>(a, c, stream);
    case 5: return launch_gemm_t<T, 4, 4, 2, 4, 8>(a, c, stream);
    case 6: return launch_gemm_t<T, 2, 4, 4, 2, 4>(a, c, stream);
    case 7: return launch_gemm_t<T, 2, 4, 4, 2, 8>(a, c, stream);
  }
  return cudaErrorInvalidConfiguration;
}

// Whether the tensor-core path runs (force_path & 15: 0 auto, 1 SIMT tiled, 2 naive,
// 3 tensor cores, 4 per-phase tensor cores, 5 implicit GEMM).
bool want_mma(const PhaseConvFwdParams& p, int dtype_code) {
  if (dtype_code == PHASECONV_FLOAT64) return false;
  const int force = p.force_path & 15;
  if (force == 3 || force == 4 || force == 5) return true;
  if (force != 0) return false;
  const int64_t cin_g = p.c_in / p.groups, cout_g = p.c_out / p.groups;
  // float32 runs 3xTF32; past kFlushTerms reduction terms its accumulators are flushed
  // (flush_acc: as accurate as FFMA at any length; unflushed, 1.4e-5 relative at 2048 terms).
  // Those FLUSH variants beat the SIMT kernel only on wide tiles (H100: C_out 32,
  // K 512: 666 vs 452 us; C_out 64-256, K 512-2048: 0.70-0.95x the SIMT time): narrower layers
  // stay on FFMA.
  if (needs_flush(p, dtype_code) && cout_g < 64) return false;
  return cin_g >= 4 && cout_g >= 4;
}

template <typename T>
cudaError_t run_mma_typed(const PhaseConvFwdParams& p, const MmaCfg& c, cudaStream_t stream) {
  return run_mma<T>(p, c, stream);
}
template <>
cudaError_t run_mma_typed<double>(const PhaseConvFwdParams&, const MmaCfg&, cudaStream_t) {
  return cudaErrorInvalidValue;
}
template <typename T>
cudaError_t run_gemm_typed(const PhaseConvFwdParams& p, const GemmCfg& c, cudaStream_t stream) {
  return run_gemm<T>(p, c, stream);
}
template <>
cudaError_t run_gemm_typed<float>(const PhaseConvFwdParams&, const GemmCfg&, cudaStream_t) {
  return cudaErrorInvalidValue;
}
template <>
cudaError_t run_gemm_typed<double>(const PhaseConvFwdParams&, const GemmCfg&, cudaStream_t) {
  return cudaErrorInvalidValue;
}
template <typename T>
cudaError_t run_allph_typed(const PhaseConvFwdParams& p, const AllCfg& c, cudaStream_t stream) {
  return run_allph<T>(p, c, stream);
}
template <>
cudaError_t run_allph_typed<double>(const PhaseConvFwdParams&, const AllCfg&, cudaStream_t) {
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t run_tiled(const PhaseConvFwdParams& p, const TileCfg& c, cudaStream_t stream) {
  TiledArgs a;
  set_geometry(a, p);
  a.w = p.weight;
  a.num_phases = (int)(p.stride_d * p.stride_h * p.stride_w);
  a.LW = c.LW; a.NY = c.NY; a.NZ = c.NZ; a.WC = c.WC; a.MD = c.MD; a.MH = c.MH;
  a.TW = c.LW; a.TH = c.NY * c.MH; a.TD = c.NZ * c.MD; a.co_blk = c.WC * c.CO_T;
  a.tiles_w = (int)cdiv(cdiv(p.out_w, p.stride_w), a.TW);
  a.tiles_h = (int)cdiv(cdiv(p.out_h, p.stride_h), a.TH);
  a.tiles_d = (int)cdiv(cdiv(p.out_d, p.stride_d), a.TD);
  a.co_blocks = (int)cdiv(a.cout_g, a.co_blk);
  a.ci_chunk = c.ci_chunk; a.pitch = c.pitch; a.hh_max = c.hh_max; a.plane = c.plane;
  a.s_w_elems = c.s_w_elems;
  a.total_blocks = (int64_t)a.num_phases * a.tiles_w * a.tiles_h * a.tiles_d * p.n *
                   a.co_blocks * p.groups;
  int64_t grid = a.total_blocks;
  if (grid > 0x7fffffffLL) grid = 0x7fffffffLL;
  return launch_tiled_co<T>(a, c, grid, stream);
}

// The naive kernel, forward or (nsub > 0) grad-input mode.
template <typename T>
cudaError_t run_naive(const PhaseConvFwdParams& p, const DevInfo& dev, cudaStream_t stream) {
  NaiveArgs a;
  set_geometry(a, p);
  a.w = p.weight;
  a.total = p.n * p.c_out * p.out_d * p.out_h * p.out_w;
  a.sub_table = p.sub_table; a.nsub = p.nsub;
  a.isd = (int)p.in_stride_d; a.ish = (int)p.in_stride_h; a.isw = (int)p.in_stride_w;
  int64_t blocks = cdiv(a.total, 256);
  const int64_t cap = (int64_t)dev.sms * 32;
  if (blocks > cap) blocks = cap;
  if (p.nsub > 0)
    naive_bwd_input_kernel<T><<<(unsigned)blocks, 256, 0, stream>>>(a);
  else
    naive_kernel<T><<<(unsigned)blocks, 256, 0, stream>>>(a);
  return cudaGetLastError();
}

// After a kernel that notes non-finite stores: the fix-up (phase_conv_exact.cuh) over its
// output, (N, C_out, out...) contiguous.
template <typename T>
cudaError_t with_fixup(const PhaseConvFwdParams& p, cudaError_t launched, cudaStream_t stream) {
  if (launched != cudaSuccess) return launched;
  return phaseconv_exact::launch_fixup<T>(p.exact, p.y,
                                          p.n * p.c_out * p.out_d * p.out_h * p.out_w, stream);
}

template <typename T>
cudaError_t run_plan(const PhaseConvFwdParams& p, const PhaseConvFwdPlan& plan,
                     cudaStream_t stream) {
  if ((p.x_channels_last != 0) != (plan.x_channels_last != 0)) return cudaErrorInvalidValue;
  switch (plan.family) {
    case PHASECONV_EMPTY: return cudaSuccess;
    case PHASECONV_GEMM: return with_fixup<T>(p, run_gemm_typed<T>(p, plan.gemm, stream), stream);
    case PHASECONV_ALLPHASE:
      return with_fixup<T>(p, run_allph_typed<T>(p, plan.allph, stream), stream);
    case PHASECONV_MMA: return with_fixup<T>(p, run_mma_typed<T>(p, plan.mma, stream), stream);
    case PHASECONV_TILED: return with_fixup<T>(p, run_tiled<T>(p, plan.tiled, stream), stream);
    case PHASECONV_NAIVE: {  // sums only real pairs: exact as it is
      DevInfo dev;
      const cudaError_t err = dev_info(&dev);
      if (err != cudaSuccess) return err;
      return run_naive<T>(p, dev, stream);
    }
  }
  return cudaErrorInvalidValue;
}

template <typename F>
cudaError_t by_dtype(int dtype_code, F&& f) {
  switch (dtype_code) {
    case PHASECONV_FLOAT32: return f(float());
    case PHASECONV_FLOAT64: return f(double());
    case PHASECONV_FLOAT16: return f(__half());
    case PHASECONV_BFLOAT16: return f(__nv_bfloat16());
  }
  return cudaErrorInvalidValue;
}

// The input layout the plan reads (see phase_conv_fwd_plan): channels-last where only the
// channels-last kernels take the layer, or where x already is channels-last and the
// all-phase kernel takes it so.
bool plan_reads_channels_last(const PhaseConvFwdParams& p, int dtype_code, const DevInfo& dev) {
  if (!want_mma(p, dtype_code)) return false;
  GemmCfg gc;
  AllCfg ac;
  const bool offered = p.x_channels_last != 0;
  if (!offered && choose_gemm(p, dtype_code, dev, false, &gc)) return false;  // reads NCDHW
  if (!cl_possible(p, dtype_code)) return false;
  if (choose_gemm(p, dtype_code, dev, true, &gc)) return true;  // needs channels-last
  // the all-phase kernel reads either layout: channels-last only when x already is (a copy
  // measured as costly as the 16-byte staging saves, on the founding example)
  return offered && (p.force_path & 15) != 4 && choose_allph(p, dtype_code, dev, true, &ac);
}

bool plan_fwd(const PhaseConvFwdParams& params, int dtype_code, PhaseConvFwdPlan* out) {
  DevInfo dev;
  if (dev_info(&dev) != cudaSuccess) return false;
  PhaseConvFwdParams p = params;
  p.x_channels_last = plan_reads_channels_last(params, dtype_code, dev) ? 1 : 0;
  const bool cl = p.x_channels_last != 0;
  out->x_channels_last = p.x_channels_last;
  out->weight_mma = 0;
  const char* layout = cl ? "channels-last input" : "contiguous input";
  char* buf = out->text;
  const int len = (int)sizeof(out->text);
  if (p.n * p.c_out * p.out_d * p.out_h * p.out_w == 0) {
    out->family = PHASECONV_EMPTY;
    snprintf(buf, len, "none (empty output)");
    return true;
  }
  if (want_mma(p, dtype_code)) {
    GemmCfg& gc = out->gemm;
    if (choose_gemm(p, dtype_code, dev, cl, &gc)) {
      out->family = PHASECONV_GEMM;
      out->weight_mma = 1;
      snprintf(buf, len,
               "implicit-gemm kind=%d BM=%d BN=%d BK=%d threads=%d stages=%d m_tiles=%d "
               "smem=%zu grid=%lld %s (%s)", gc.kind, gc.BM, gc.BN, gc.bkg * 8, gc.threads,
               gc.wgroup ? kGemmGroupStages : kGemmStages, gc.m_tiles, gc.smem,
               (long long)gc.grid, gc.wgroup ? "w-phases-grouped" : "one-phase", layout);
      return true;
    }
    AllCfg& ac = out->allph;
    if ((p.force_path & 15) != 4 && choose_allph(p, dtype_code, dev, cl, &ac)) {
      out->family = PHASECONV_ALLPHASE;
      out->weight_mma = 1;
      snprintf(buf, len,
               "mma-allphase kind=%d BM=%d BN=%d threads=%d tile(d,h,w)=(%d,%d,%d) "
               "halo=(%d,%d,%d) G=%d smem=%zu grid=%lld per_cta=%lld %s (%s)",
               ac.kind, ac.BM, ac.BN, ac.threads, ac.TD, ac.TH, ac.TW, ac.hd, ac.hh, ac.hw, ac.G,
               ac.smem, (long long)ac.grid, (long long)ac.per_cta,
               ac.stage_out ? "staged-output" : "direct-stores", layout);
      return true;
    }
    MmaCfg& mc = out->mma;
    if (!cl && choose_mma(p, dtype_code, dev, &mc)) {
      out->family = PHASECONV_MMA;
      snprintf(buf, len,
               "mma kind=%d BM=%d BN=%d threads=%d tile(d,h,w)=(%d,%d,%d) ng=%d smem=%zu",
               mc.kind, mc.BM, mc.BN, mc.threads, mc.TD, mc.TH, mc.TW, mc.ng, mc.smem);
      return true;
    }
  }
  if (cl) return false;  // plan_reads_channels_last said so only where a kernel takes it
  TileCfg& c = out->tiled;
  if ((p.force_path & 15) != 2 && choose_tiled(p, dtype_code, dev, &c)) {
    out->family = PHASECONV_TILED;
    snprintf(buf, len,
             "tiled LW=%d NY=%d NZ=%d WC=%d MD=%d MH=%d M=%d CO_T=%d threads=%d "
             "tile(d,h,w)=(%d,%d,%d) co_blk=%d ci_chunk=%d smem=%zu",
             c.LW, c.NY, c.NZ, c.WC, c.MD, c.MH, c.M, c.CO_T, c.threads, c.NZ * c.MD,
             c.NY * c.MH, c.LW, c.WC * c.CO_T, c.ci_chunk, c.smem);
    return true;
  }
  out->family = PHASECONV_NAIVE;
  snprintf(buf, len, "naive");
  return true;
}

}  // namespace
}  // namespace phaseconv

bool phase_conv_fwd_plan(const PhaseConvFwdParams& params, int dtype_code,
                         PhaseConvFwdPlan* plan) {
  using namespace phaseconv;
  if (params.nsub != 0) return false;  // grad-input mode: phase_conv_bwd_input_plan
  if (dtype_code < PHASECONV_FLOAT32 || dtype_code > PHASECONV_BFLOAT16) return false;
  return plan_fwd(params, dtype_code, plan);
}

cudaError_t phase_conv_fwd_run(const PhaseConvFwdParams& params, const PhaseConvFwdPlan& plan,
                               int dtype_code, cudaStream_t stream) {
  using namespace phaseconv;
  if (params.nsub != 0) return cudaErrorInvalidValue;
  return by_dtype(dtype_code, [&](auto t) {
    return run_plan<decltype(t)>(params, plan, stream);
  });
}

cudaError_t phase_conv_to_channels_last(const void* x, void* y, int64_t n, int64_t c, int64_t p,
                                        int elem_size, cudaStream_t stream) {
  using namespace phaseconv;
  if (n == 0 || c == 0 || p == 0) return cudaSuccess;
  const int64_t gx = cdiv(p, 64), gy = cdiv(c, 32);
  if (gx > 0x7fffffffLL || gy > 65535) return cudaErrorInvalidValue;
  const dim3 grid((unsigned)gx, (unsigned)gy, (unsigned)(n < 65535 ? n : 65535));
  const dim3 block(32, 8);
  switch (elem_size) {
    case 2:
      if (c % 2 == 0 && p % 2 == 0 && cdiv(c, 64) <= 65535) {
        const dim3 grid4((unsigned)cdiv(p, 64), (unsigned)cdiv(c, 64), grid.z);
        to_channels_last_quads_kernel<<<grid4, block, 0, stream>>>(
            static_cast<const uint32_t*>(x), static_cast<uint32_t*>(y), n, c, p);
      } else if (c % 2 == 0 && cdiv(p, 32) <= 0x7fffffffLL && cdiv(c, 64) <= 65535) {
        const dim3 grid2((unsigned)cdiv(p, 32), (unsigned)cdiv(c, 64), grid.z);
        to_channels_last_pairs_kernel<<<grid2, block, 0, stream>>>(
            static_cast<const uint16_t*>(x), static_cast<uint32_t*>(y), n, c, p);
      } else {
        to_channels_last_kernel<uint16_t><<<grid, block, 0, stream>>>(
            static_cast<const uint16_t*>(x), static_cast<uint16_t*>(y), n, c, p);
      }
      break;
    case 4:
      to_channels_last_kernel<uint32_t><<<grid, block, 0, stream>>>(
          static_cast<const uint32_t*>(x), static_cast<uint32_t*>(y), n, c, p);
      break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

namespace phaseconv {
namespace {
// The grad-input rule (phase_conv_fwd.cuh): the tensor-core kernel where it applies
// (float32/float16/bfloat16, C_in/g and C_out/g >= 4, a tile that fits), else the naive
// kernel.  force: 0 the rule, 1 the tensor-core kernel (false where it does not apply),
// 2 the naive kernel.
bool plan_bwd_input(const PhaseConvFwdParams& params, int dtype_code, int force,
                    PhaseConvBwdInputPlan* out) {
  if (params.nsub <= 0 || params.stride_d != 1 || params.stride_h != 1 || params.stride_w != 1)
    return false;
  if (dtype_code < PHASECONV_FLOAT32 || dtype_code > PHASECONV_BFLOAT16) return false;
  DevInfo dev;
  if (dev_info(&dev) != cudaSuccess) return false;
  if (params.n * params.c_out * params.out_d * params.out_h * params.out_w == 0) {
    out->family = PHASECONV_EMPTY;
    snprintf(out->text, sizeof(out->text), "none (empty input gradient)");
    return true;
  }
  const bool mma_ok = dtype_code != PHASECONV_FLOAT64 && params.c_in / params.groups >= 4 &&
                      params.c_out / params.groups >= 4 && force != 2;
  MmaCfg& mc = out->mma;
  if (mma_ok && choose_mma(params, dtype_code, dev, &mc)) {
    out->family = PHASECONV_MMA;
    snprintf(out->text, sizeof(out->text),
             "mma grad-input kind=%d BM=%d BN=%d threads=%d tile(d,h,w)=(%d,%d,%d) ng=%d "
             "smem=%zu phases=%d", mc.kind, mc.BM, mc.BN, mc.threads, mc.TD, mc.TH, mc.TW,
             mc.ng, mc.smem, params.nsub);
    return true;
  }
  if (force == 1) return false;
  out->family = PHASECONV_NAIVE;
  snprintf(out->text, sizeof(out->text), "naive grad-input (one thread per input voxel, "
           "phases=%d)", params.nsub);
  return true;
}

template <typename T>
cudaError_t run_bwd_input(const PhaseConvFwdParams& p, const PhaseConvBwdInputPlan& plan,
                          cudaStream_t stream) {
  switch (plan.family) {
    case PHASECONV_EMPTY: return cudaSuccess;
    case PHASECONV_MMA: return with_fixup<T>(p, run_mma_typed<T>(p, plan.mma, stream), stream);
    case PHASECONV_NAIVE: {  // sums only real pairs: exact as it is
      DevInfo dev;
      const cudaError_t err = dev_info(&dev);
      if (err != cudaSuccess) return err;
      return run_naive<T>(p, dev, stream);
    }
  }
  return cudaErrorInvalidValue;
}
}  // namespace
}  // namespace phaseconv

bool phase_conv_bwd_input_plan(const PhaseConvFwdParams& params, int dtype_code, int force,
                               PhaseConvBwdInputPlan* plan) {
  return phaseconv::plan_bwd_input(params, dtype_code, force, plan);
}

cudaError_t phase_conv_bwd_input_run(const PhaseConvFwdParams& params,
                                     const PhaseConvBwdInputPlan& plan, int dtype_code,
                                     cudaStream_t stream) {
  using namespace phaseconv;
  if (params.nsub <= 0) return cudaErrorInvalidValue;
  return by_dtype(dtype_code, [&](auto t) {
    return run_bwd_input<decltype(t)>(params, plan, stream);
  });
}
