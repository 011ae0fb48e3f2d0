#include "phase_conv_fwd_common.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace phaseconv {

// ---------------------------------------------------------------- tensor-core kernel
// Implicit GEMM per phase on mma.sync: rows = the block's output voxels, columns = output
// channels, reduction = (tap, input channel).  The input halo is staged channels-last in
// shared memory (a "row" of 16 bytes holds CG consecutive channels of one position), so an
// ldmatrix row address is simply (voxel position + tap offset) * rowstride + group * 16:
// the im2col matrix is never formed.  A reduction step pairs two "half steps", each a
// (tap, 16-byte channel group), so narrow channel counts (C_in/g = 8) pair taps instead of
// padding channels.  bf16/fp16 use m16n8k16 (fp32 accumulate); fp32 uses m16n8k8 TF32 with
// the 3xTF32 split (big*big + big*small + small*big), accurate to about fp32.
struct MmaArgs : FwdGeometry {
  const void* w;
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
  phaseconv_exact::let_dependents_start();
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
            mma_3xtf32_tiles(acc, af, bf);
            step_flush<FL>(tot, acc, since, kFlushTerms / 8);
          } else {
            mma_tiles<T>(acc, af, bf);
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

// ---------------------------------------------------------------- tensor-core host side
template <typename T, int MT, int NT, int WM, int WN, bool FLUSH>
cudaError_t launch_mma_t(const MmaArgs& a, const MmaCfg& c, int64_t grid, cudaStream_t stream) {
  return launch_kernel(mma_kernel<T, MT, NT, WM, WN, FLUSH>, grid, WM * WN * 32, c.smem, stream,
                       a);
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
  const bool fl = phase_conv_needs_flush(p, F ? PHASECONV_FLOAT32 : PHASECONV_FLOAT16);
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

template <typename T>
cudaError_t run_mma_typed(const PhaseConvFwdParams& p, const MmaCfg& c, cudaStream_t stream) {
  return run_mma<T>(p, c, stream);
}
template <>
cudaError_t run_mma_typed<double>(const PhaseConvFwdParams&, const MmaCfg&, cudaStream_t) {
  return cudaErrorInvalidValue;
}
template cudaError_t run_mma_typed<float>(const PhaseConvFwdParams&, const MmaCfg&, cudaStream_t);
template cudaError_t run_mma_typed<__half>(const PhaseConvFwdParams&, const MmaCfg&, cudaStream_t);
template cudaError_t run_mma_typed<__nv_bfloat16>(const PhaseConvFwdParams&, const MmaCfg&, cudaStream_t);

}  // namespace phaseconv
