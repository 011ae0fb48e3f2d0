// phaseconv forward, SIMT tiles: a block owns one tile of one phase
//   (phase, batch n, group g, block of C_out/g channels, TD x TH x TW phase-local outputs)
// and walks the C_in/g channels in chunks.  Per chunk it stages into shared memory the input
// halo the tile reads (zero outside the input: no padded copy in memory) and the chunk's
// packed weights for all taps of the phase and the block's channels, then every thread
// accumulates a register micro-tile of M output voxels x CO_T channels with FMAs (fp32
// accumulation for fp16/bf16/fp32, fp64 for double).  Blocks are ordered phase-fastest, so
// the phases of one spatial tile share the input halo in L2.  Each output is written once.
#include "phase_conv_fwd_common.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace phaseconv {

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

// ---------------------------------------------------------------- tiled kernel
struct TiledArgs : FwdGeometry {
  const void* w;
  int num_phases;
  int LW, NY, NZ, WC, MD, MH;
  int TW, TH, TD, co_blk;
  int tiles_w, tiles_h, tiles_d, co_blocks;
  int ci_chunk, pitch, hh_max, plane, s_w_elems;
  int64_t total_blocks;
};

template <typename T, int CO_T, int M>
__global__ void __launch_bounds__(256, 2) tiled_kernel(const TiledArgs a) {
  phaseconv_exact::let_dependents_start();
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

template <typename T, int CO_T, int M>
cudaError_t launch_tiled_t(const TiledArgs& a, const TileCfg& c, int64_t grid,
                           cudaStream_t stream) {
  return launch_kernel(tiled_kernel<T, CO_T, M>, grid, c.threads, c.smem, stream, a);
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

template cudaError_t run_tiled<float>(const PhaseConvFwdParams&, const TileCfg&, cudaStream_t);
template cudaError_t run_tiled<double>(const PhaseConvFwdParams&, const TileCfg&, cudaStream_t);
template cudaError_t run_tiled<__half>(const PhaseConvFwdParams&, const TileCfg&, cudaStream_t);
template cudaError_t run_tiled<__nv_bfloat16>(const PhaseConvFwdParams&, const TileCfg&, cudaStream_t);

}  // namespace phaseconv
