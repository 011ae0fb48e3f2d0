#include "phase_conv_fwd_common.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

namespace phaseconv {

// ---------------------------------------------------------------- all-phase tensor-core kernel
// One block computes EVERY phase of one tile of the phase grid (TD x TH x TW phase-local
// voxels, the same j range for all phases), for one (batch, group, block of C_out/g).  The
// input halo of the union of the phases' windows is staged once (channels-last, as above) and
// serves all phases; the per-phase half-step offsets are built once per block (they depend on
// no tile), and the weights (pre-laid out by pack() as 16-byte rows [g][tap][grp][co][CG]) are
// copied with 16-byte loads and re-staged only when (group, C_out block) changes.  Needs the
// whole C_in/g in one chunk.  The phases' outputs of a tile interleave in the same sectors
// and are written back to back, so L2 merges them.
struct AllArgs : FwdGeometry {
  const void* wm;           // pack()'s tensor-core weight layout
  int num_phases;
  int TD, TH, TW, lg_tw, lg_thw, lg_td;  // tile (powers of two), TD*TH*TW == BM
  int hd, hh, hw;                 // union halo
  FastDiv div_g, div_npos, div_hhw, div_hw;  // halo positions (G, hd*hh*hw, hh*hw, hw)
  FastDiv div_nv, div_bh;                    // staged slab: 16-byte vectors a row, rows a plane
  int ulo_d, ulo_h, ulo_w;        // union's first input offset per axis
  int tiles_w, tiles_h, tiles_d, co_blocks;
  int G;                          // 16-byte channel groups covering C_in/g
  int x_bytes, w_bytes;           // shared-memory regions: halo buffers, weights
  int x_buf;                      // bytes of one halo buffer (x_bytes holds two: fp32, and
                                  // x_cl unless x_single)
  int x_cl;                       // 1: x is channels-last (N, D, H, W, C_in), C_in/g % CG == 0
  int x_single;                   // where two halo copies do not fit shared memory: 16-bit
                                  // x_cl, one buffer, copied at each tile and waited for;
                                  // float32, the halo staged once, unsplit, its tf32 big and
                                  // small parts taken at each fragment load
  // staged output (16-bit, BN <= 16): the phases sharing a D residue rd fill one slab of the
  // tile's output box (TD planes od = sd*d0 + rd + sd*l, all of TH*sh x TW*sw, BN channels at
  // a stride of box_cs elements) in shared memory at byte box_off; the slab is then written
  // back with 16-byte stores along W (box_vec: out_w % 8 == 0) instead of 2-byte scatters
  int stage_out, box_off, box_cs, box_vec;
  // paired W stores (the 8-warp BN 8 tile, MT * NT == 2; sw == 2, even out_w): the two W
  // phases of a (rd, rh) are computed back to back and, on a whole tile, stored together as
  // one 2-element vector per output pair (ow, ow + 1) instead of two scattered elements
  int pair_w;
  // y is (N, D, H, W, C_out) (the plan turns stage_out and pair_w off); y_pair: two adjacent
  // channels stored as one vector (C_out and C_out/g even, y aligned)
  int y_cl, y_pair;
  int64_t total_blocks, per_cta;
};

// fp32 (3xTF32) small tiles are shared-memory limited to ~2-4 blocks: give them registers
// (FLUSH variants, as for mma_kernel, more; choose_allph's reg_cap mirrors this).  The
// 8-warp small tile (MT * NT == 2) keeps 2 (fp32) or 3 blocks of 256 threads.
template <typename T, int MT, int NT, int THREADS, bool FLUSH> struct AllMinBlocks {
  enum {
    value = (THREADS == 256 && MT * NT <= 2) ? (sizeof(T) == 4 ? 2 : 3)
            : (MT * NT <= 4) ? (sizeof(T) == 4 ? (FLUSH ? 3 : 4) : 5)
                             : (THREADS >= 256 ? 1 : (FLUSH ? 2 : 3))
  };
};

template <typename T, int MT, int NT, int WARPS_M, int WARPS_N, bool FLUSH>
__global__ void __launch_bounds__(WARPS_M * WARPS_N * 32,
                                  (AllMinBlocks<T, MT, NT, WARPS_M * WARPS_N * 32, FLUSH>::value))
mma_allph_kernel(const AllArgs a) {
  phaseconv_exact::let_dependents_start();
  bool nonfinite = false;  // a stored element is Inf or NaN
  constexpr int CG = MmaT<T>::CG;
  constexpr int NTHR = WARPS_M * WARPS_N * 32;
  constexpr int BN = WARPS_N * NT * 8;
  constexpr bool TF32 = sizeof(T) == 4;
  constexpr bool FL = TF32 && FLUSH;  // accumulators flushed every kFlushTerms terms
  constexpr bool PAIR = MT * NT == 2;  // paired W stores instead of the staged output
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ int s_pi[kAllphMaxPhases][8];  // rd rh rw cd ch cw hbase nh2
  static_assert(sizeof(s_pi) <= kStaticSmemReserve, "launch_kernel's static reserve");
  unsigned char* s_x = smem_raw;
  unsigned char* s_w = smem_raw + a.x_bytes;
  int* s_hoff = reinterpret_cast<int*>(smem_raw + a.x_bytes + a.w_bytes);
  const uint32_t sx_addr = (uint32_t)__cvta_generic_to_shared(s_x);
  const uint32_t sw_addr = (uint32_t)__cvta_generic_to_shared(s_w);
  // one unsplit copy of the halo: the narrow tiles only (BN <= 16; the plan offers it to no
  // other, and a second form of the k loop would cost the wide ones registers)
  constexpr bool LATE_TILE = TF32 && BN <= 16;
  const bool split_late = LATE_TILE && a.x_single;
  const int x_small = TF32 && !split_late ? a.x_buf : 0;  // byte offset of the tf32 small parts

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
  // halo position pos (D-major over hd x hh x hw) -> its input coordinates, the halo starting
  // at (id0, ih0, iw0)
  auto halo_coords = [&](int pos, int id0, int ih0, int iw0, int& gd, int& gh, int& gw) {
    const int dd = fast_div(pos, a.div_hhw);
    const int rem = pos - dd * hhw;
    const int hr = fast_div(rem, a.div_hw);
    const int wl = rem - hr * a.hw;
    gd = id0 + dd;
    gh = ih0 + hr;
    gw = iw0 + wl;
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
      const int pos = G == 1 ? it : fast_div(it, a.div_g);
      const int grp = it - pos * G;
      int gd, gh, gw;
      halo_coords(pos, id0, ih0, iw0, gd, gh, gw);
      const bool ok = (unsigned)gd < (unsigned)a.in_d && (unsigned)gh < (unsigned)a.in_h &&
                      (unsigned)gw < (unsigned)a.in_w;
      const T* src = xn + (((int64_t)gd * a.in_h + gh) * a.in_w + gw) * a.c_in + grp * CG;
      cp_async16_ca(base + pos * rowstride + grp * 16, ok ? (const void*)src : (const void*)x,
                    ok);
    }
  };
  // PAIR: offset of each C fragment row's output from its tile's (0, 0, 0) output, the same
  // for every tile and phase (int: the plan bounds sd * TD * out_h * out_w)
  int tofs[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int m = (wm_ * MT + mt) * 16 + (lane >> 2) + half * 8;
      const int rem = m & thw_mask;
      // unsigned: where pair_w is off the product may not fit, and is never used
      tofs[mt][half] = (int)(((unsigned)(a.sd * (m >> a.lg_thw)) * (unsigned)a.out_h +
                              (unsigned)(a.sh * (rem >> a.lg_tw))) * (unsigned)a.out_w +
                             2u * (unsigned)(rem & tw_mask));
    }
  const bool async = !TF32 && a.x_cl != 0;
  const bool prefetch = async && !a.x_single;  // the next tile's halo copied during this one
  int buf = 0;

  int last_gc = -1;  // (group, C_out block) whose weights are staged
  const int64_t b_lo = (int64_t)blockIdx.x * a.per_cta;
  int64_t b_hi = b_lo + a.per_cta;
  if (b_hi > a.total_blocks) b_hi = a.total_blocks;
  if (prefetch && b_lo < b_hi) {
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
      // prefetch: the next tile's halo into the other buffer; else this tile's into the one
      // buffer (free since the barrier above).  One call site: a second one spills.
      if (!prefetch || blk + 1 < b_hi) issue_halo(prefetch ? blk + 1 : blk, prefetch ? buf ^ 1 : 0);
      cp_async_commit();
      if (prefetch)
        cp_async_wait<1>();  // this tile's halo has landed (the next one may be in flight)
      else
        cp_async_wait<0>();
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
            const int grp = fast_div(it, a.div_npos);
            const int pos = it - grp * npos;
            int gd, gh, gw;
            halo_coords(pos, id0, ih0, iw0, gd, gh, gw);
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
          if (TF32 && !split_late) {
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
    if (prefetch) buf ^= 1;

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
    // y at (n, g * cout_g, 0, 0, 0): channels-last, a position's C_out channels are contiguous
    const int64_t ybase = a.y_cl ? (int64_t)n * out_plane * a.c_out + (int64_t)g * a.cout_g
                                 : ((int64_t)n * a.c_out + (int64_t)g * a.cout_g) * out_plane;
    const int64_t y_cs = a.y_cl ? 1 : out_plane;  // one channel's step

    const bool stage = !PAIR && !TF32 && a.stage_out;
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
        int q = fast_div(it, a.div_nv);
        const int v = it - q * nv;
        const int q2 = fast_div(q, a.div_bh);
        const int bh_ = q - q2 * BH;
        const int l = q2 & (a.TD - 1);
        const int col = q2 >> a.lg_td;
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
    int next_flush = nhw;  // the first phase of the next D residue
    float held[MT][NT][4];  // PAIR: the sums of W residue 0, stored with its residue 1 partner
    bool holding = false;
    for (int p = 0; p < np; ++p) {
      if (stage && p == next_flush) {
        flush(s_pi[p - 1][0]);
        next_flush += nhw;
      }
      const int cd = s_pi[p][3], ch = s_pi[p][4], cw = s_pi[p][5];
      if (d0 >= cd || h0 >= ch || w0 >= cw) continue;  // uniform over the block
      const int hbase = s_pi[p][6], hend = hbase + s_pi[p][7];
      float acc[MT][NT][4];
      zero_acc(acc);
      float tot[MT][NT][4];  // FL: flushed sums (see flush_acc)
      int since = 0;
      if (FL) zero_acc(tot);
      // the k steps; LATE (float32, one unsplit halo copy): each A fragment split as loaded.
      // Its own instantiation, so that neither form's registers constrain the other's.
      auto k_steps = [&](auto late) {
        constexpr bool LATE = TF32 && decltype(late)::value;
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
              uint32_t as[4];  // af[mt] holds the big parts (staged split, or split here)
              if (LATE)
                split_tf32(af[mt], af[mt], as);
              else
                ldsm_x4(as, sxb + x_small + apos[mt] + off);
#pragma unroll
              for (int j = 0; j < NT; ++j) mma_3xtf32(acc[mt][j], af[mt], as, bb[j], bs[j]);
            }
            step_flush<FL>(tot, acc, since, kFlushTerms / 8);
          } else {
            mma_tiles<T>(acc, af, bf);
          }
        }
      };
      if (LATE_TILE && split_late)
        k_steps(std::true_type());
      else
        k_steps(std::false_type());
      if (FL) merge_acc(acc, tot);
      // store: C fragment rows lane/4 and lane/4 + 8, columns 2*(lane%4) + {0, 1}
      const int rd = s_pi[p][0], rh = s_pi[p][1], rw = s_pi[p][2];
      if (PAIR && a.pair_w) {  // uniform over the block
        if (holding) {  // p is the partner (W residue 1) of the phase held
          holding = false;
          // the pair's output (ow, ow + 1) at tile position (0, 0, 0); tofs adds the position
          T* yb = y + ybase +
                  (((int64_t)(rd + a.sd * d0) * a.out_h + (rh + a.sh * h0)) * a.out_w +
                   2 * (int64_t)w0);
#pragma unroll
          for (int j = 0; j < NT; ++j) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              const int co = co_base + (wn * NT + j) * 8 + (lane & 3) * 2 + c;
              if (co >= a.cout_g) continue;
              T* yc = yb + (int64_t)co * out_plane;
#pragma unroll
              for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int half = 0; half < 2; ++half)
                  nonfinite |= !store_pair(yc + tofs[mt][half],
                                           held[mt][j][half * 2 + c] + bv[j][c],
                                           acc[mt][j][half * 2 + c] + bv[j][c]);
            }
          }
          continue;
        }
        // hold W residue 0 when its partner follows and both cover the whole tile
        if (rw == 0 && p + 1 < np && s_pi[p + 1][0] == rd && s_pi[p + 1][1] == rh &&
            s_pi[p + 1][2] == 1 && d0 + a.TD <= min(cd, s_pi[p + 1][3]) &&
            h0 + a.TH <= min(ch, s_pi[p + 1][4]) && w0 + a.TW <= min(cw, s_pi[p + 1][5])) {
          holding = true;
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
              for (int e = 0; e < 4; ++e) held[mt][j][e] = acc[mt][j][e];
          continue;
        }
      }
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
            const int64_t pix = ((int64_t)(rd + a.sd * jd) * a.out_h + (rh + a.sh * jh)) *
                                    a.out_w + rw + (int64_t)a.sw * jw;
            T* yp = y + ybase + (a.y_cl ? pix * a.c_out : pix);
#pragma unroll
            for (int j = 0; j < NT; ++j) {
              const int co0 = co_base + (wn * NT + j) * 8 + (lane & 3) * 2;
              if (a.y_pair && co0 + 1 < a.cout_g) {  // both channels, one vector
                nonfinite |= !store_pair(yp + co0, acc[mt][j][half * 2] + bv[j][0],
                                         acc[mt][j][half * 2 + 1] + bv[j][1]);
                continue;
              }
#pragma unroll
              for (int c = 0; c < 2; ++c) {
                const int co = co0 + c;
                if (co < a.cout_g) {
                  const T out = from_acc<T>(acc[mt][j][half * 2 + c] + bv[j][c]);
                  yp[(int64_t)co * y_cs] = out;
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

// ---------------------------------------------------------------- all-phase host side

inline int ilog2(int v) {
  int r = 0;
  while ((1 << (r + 1)) <= v) ++r;
  return r;
}

template <typename T, int MT, int NT, int WM, int WN, bool FLUSH>
cudaError_t launch_allph_t(const AllArgs& a, const AllCfg& c, cudaStream_t stream) {
  if (c.total_blocks == 0) return cudaSuccess;
  return launch_kernel(mma_allph_kernel<T, MT, NT, WM, WN, FLUSH>, c.grid, WM * WN * 32, c.smem,
                       stream, a);
}

template <typename T>
cudaError_t run_allph(const PhaseConvFwdParams& p, const AllCfg& c, cudaStream_t stream) {
  AllArgs a;
  set_geometry(a, p);
  a.wm = p.weight_mma;
  a.num_phases = (int)(p.stride_d * p.stride_h * p.stride_w);
  a.TD = c.TD; a.TH = c.TH; a.TW = c.TW;
  a.lg_tw = ilog2(c.TW); a.lg_thw = ilog2(c.TH * c.TW); a.lg_td = ilog2(c.TD);
  a.hd = c.hd; a.hh = c.hh; a.hw = c.hw;
  a.div_g = make_fastdiv(c.G);
  a.div_npos = make_fastdiv((int64_t)c.hd * c.hh * c.hw);
  a.div_hhw = make_fastdiv((int64_t)c.hh * c.hw);
  a.div_hw = make_fastdiv(c.hw);
  a.div_nv = make_fastdiv(c.TW * p.stride_w / 8);  // TW >= 8
  a.div_bh = make_fastdiv(c.TH * p.stride_h);
  a.ulo_d = (int)p.union_lo_d; a.ulo_h = (int)p.union_lo_h; a.ulo_w = (int)p.union_lo_w;
  a.tiles_w = (int)cdiv(cdiv(p.out_w, p.stride_w), c.TW);
  a.tiles_h = (int)cdiv(cdiv(p.out_h, p.stride_h), c.TH);
  a.tiles_d = (int)cdiv(cdiv(p.out_d, p.stride_d), c.TD);
  a.co_blocks = (int)cdiv(a.cout_g, c.BN);
  a.G = c.G; a.x_bytes = c.x_bytes; a.w_bytes = c.w_bytes; a.x_buf = c.x_buf;
  a.x_cl = p.x_channels_last;
  a.x_single = c.x_single;
  a.stage_out = c.stage_out; a.box_off = c.box_off; a.box_cs = c.box_cs;
  a.box_vec = p.out_w % 8 == 0 ? 1 : 0;
  // the engine's output is a fresh allocation (aligned); the test keeps a pointer that is not
  // from making misaligned vector stores
  a.pair_w = c.pair_w && reinterpret_cast<uintptr_t>(p.y) % (2 * sizeof(T)) == 0 ? 1 : 0;
  a.y_cl = p.y_channels_last;
  a.y_pair = a.y_cl && p.c_out % 2 == 0 && a.cout_g % 2 == 0 &&
             reinterpret_cast<uintptr_t>(p.y) % (2 * sizeof(T)) == 0 ? 1 : 0;
  a.total_blocks = c.total_blocks; a.per_cta = c.per_cta;
  constexpr bool F = sizeof(T) == 4;  // the FLUSH variant exists for float only
  const bool fl = phase_conv_needs_flush(p, F ? PHASECONV_FLOAT32 : PHASECONV_FLOAT16);
  switch (c.kind * 2 + (fl ? 1 : 0)) {
    case 0: return launch_allph_t<T, 4, 1, 4, 1, false>(a, c, stream);
    case 1: return launch_allph_t<T, 4, 1, 4, 1, F>(a, c, stream);
    case 2: return launch_allph_t<T, 4, 2, 4, 1, false>(a, c, stream);
    case 3: return launch_allph_t<T, 4, 2, 4, 1, F>(a, c, stream);
    case 4: return launch_allph_t<T, 4, 4, 2, 2, false>(a, c, stream);
    case 5: return launch_allph_t<T, 4, 4, 2, 2, F>(a, c, stream);
    case 6: return launch_allph_t<T, 4, 4, 2, 4, false>(a, c, stream);
    case 7: return launch_allph_t<T, 4, 4, 2, 4, F>(a, c, stream);
    case 8: return launch_allph_t<T, 2, 1, 8, 1, false>(a, c, stream);
    case 9: return launch_allph_t<T, 2, 1, 8, 1, F>(a, c, stream);
  }
  return cudaErrorInvalidConfiguration;
}

template <typename T>
cudaError_t run_allph_typed(const PhaseConvFwdParams& p, const AllCfg& c, cudaStream_t stream) {
  return run_allph<T>(p, c, stream);
}
template <>
cudaError_t run_allph_typed<double>(const PhaseConvFwdParams&, const AllCfg&, cudaStream_t) {
  return cudaErrorInvalidValue;
}
template cudaError_t run_allph_typed<float>(const PhaseConvFwdParams&, const AllCfg&, cudaStream_t);
template cudaError_t run_allph_typed<__half>(const PhaseConvFwdParams&, const AllCfg&, cudaStream_t);
template cudaError_t run_allph_typed<__nv_bfloat16>(const PhaseConvFwdParams&, const AllCfg&, cudaStream_t);

}  // namespace phaseconv
