// phaseconv CUDA backward: the weight gradient of narrow layers on tensor cores (see
// phase_conv_bwd_narrow.cuh).  CUDA headers only.
//
// With 8 channels per group on one side (C_in/g or C_out/g = 8, or C_out/g below 8: its octet
// zero-padded) the per-tap GEMMs of gw_cl_kernel and gw_mma_kernel (phase_conv_bwd.cu) would
// leave most of a 64 x 32 tile empty.
// Here a block stages, per tile of a phase's outputs (tile_d x tile_h x tile_w), the input
// window that all its taps read and the tile's grad_y, both channels-last in channel octets
// ([octet][position][8], cp.async, two buffers: the next tile's copies overlap this one's
// mmas).  An m16n8 tile's 16 rows are two (tap, input octet) pairs: one tap's two octets, or
// two taps of one octet; its 8 columns one output octet; its k the tile's outputs.  A tap reads
// the window at its own shift, so every fragment row address is a table entry (an output's
// window position) plus the tap's offset: no copy per tap, no multiply on a zero the
// decomposition removed.  The warps split the tile's k steps and add their sums in warp order
// at the end; splits of the outputs go to workspace slices that the reduction of
// phase_conv_bwd.cu adds in split order (the same bits every run).
#include "phase_conv_bwd.cuh"
#include "phase_conv_bwd_narrow.cuh"
#include "phase_conv_dtype.cuh"
#include "phase_conv_launch.cuh"
#include "phase_conv_mma.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace phaseconv {
namespace {

using namespace phaseconv_dtype;  // axis_count
using namespace phaseconv_mma;    // ldmatrix, cp.async, mma.sync

constexpr int kThreads = kGwNarrowThreads, kWarps = kThreads / 32;

// The launch geometry (x and grad_y channels-last: (N, D, H, W, C)) and the planned tile.
struct NarrowArgs : BwdGeometry {
  GwNarrowCfg c;
};

// A linear index over a (d, h, w) box, w fastest: the staging loops split a thread's first
// index and its step once, then add with a carry per digit.
struct Digits {
  int d, h, w;
};
__device__ __forceinline__ Digits split_digits(int i, int H, int W) {
  const int dh = i / W;
  return Digits{dh / H, dh % H, i - dh * W};
}

// A block's staging geometry, in shared memory (held in registers across the tile loop, it
// spilled): its first channels in x and grad_y, its phase's tiles and output counts, the
// window's extent, and the phase's first input and output positions.
struct NarrowStage {
  int64_t x0, g0;
  int tiles_w, tiles_h, tiles_d;
  int cd, ch, cw;
  int wh, ww, npos;
  int offd, offh, offw, rd, rh, rw;
  int nci_ok, nco_ok;
  // element offsets, in x and in grad_y, of a thread's step through the window and the tile
  // (kThreads positions on) and of a carry out of its W and H digits
  int64_t x_by, x_cw, x_ch, g_by, g_cw, g_ch;
};

// A thread's next tile: (n, bd, bh, bw), bw fastest; tiles of a split are consecutive.
struct TileAt {
  int n, bd, bh, bw;
};

// Shared memory: the tile's output table (window position of each output at the first tap),
// the warps' sums ([warp][item][lane] float4: each lane its own), then two buffers of [NCI
// octets][win_max positions] input rows and [NCO octets][ksteps * 16 outputs] grad_y rows (an
// octet: 16 bytes, or 32 for float).  The warps form item groups (each its share of the
// block's m16n8 tiles, kItems at most) of k parts (each every k_parts-th k step of a tile).  A
// warp's accumulators go into its sums after every tile (at most gw_narrow_max_q terms: the
// tensor cores' fp32 sums truncate, so runs stay short).
//
// 16-bit: m16n8k16, both fragments by ldmatrix.trans.  float: 3xTF32 m16n8k8, two k halves
// of each 16-output step; ldmatrix moves 16-bit elements, so each fragment element is a 32-bit
// shared load (an octet's row is 8 words: the lanes' (row, k) pairs fall on distinct banks).
//
// FEW_CO: fewer than 8 output channels a group.  grad_y's rows are narrower than a 16-byte copy
// (and not aligned to one), so a thread loads a position's channels one element at a time and
// stores the octet's row with zeros past them: the mma's padding columns sum zeros, and the
// final store skips them.
template <typename T, int NCI, int NCO, bool FEW_CO>
__global__ void __launch_bounds__(kThreads, 2) gw_narrow_kernel(const NarrowArgs a) {
  constexpr bool F32 = sizeof(T) == 4;
  constexpr int kItems = gw_narrow_items((int)sizeof(T));
  constexpr int RB = 8 * (int)sizeof(T);  // an octet's row bytes
  constexpr int kCopies = RB / 16;        // 16-byte copies a row
  static_assert(sizeof(T) == 2 || sizeof(T) == 4, "16-bit or float operands");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const GwNarrowCfg& c = a.c;
  const int qp = c.ksteps * 16;  // outputs a tile stages, padding included
  int* s_q = reinterpret_cast<int*>(smem_raw);
  float* s_sum = reinterpret_cast<float*>(smem_raw + ((qp * 4 + 15) & ~15));
  unsigned char* s_buf = reinterpret_cast<unsigned char*>(s_sum + kWarps * kItems * 128);
  const int buf_bytes = (NCI * c.win_max + NCO * qp) * RB;
  const uint32_t s_buf0 = (uint32_t)__cvta_generic_to_shared(s_buf);
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ gy = static_cast<const T*>(a.gy);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  int64_t r = blockIdx.x;
  const int tch = (int)(r % c.n_tch); r /= c.n_tch;
  const int cob = (int)(r % c.n_cob); r /= c.n_cob;
  const int cib = (int)(r % c.n_cib); r /= c.n_cib;
  const int g = (int)(r % a.groups); r /= a.groups;
  const int p = (int)(r % a.num_phases);
  const int split = (int)(r / a.num_phases);

  const int64_t* e = a.table + (int64_t)p * PHASECONV_TABLE_STRIDE;
  const int Td = (int)e[PT_TAPS_D], Th = (int)e[PT_TAPS_H], Tw = (int)e[PT_TAPS_W];
  const int ntaps = Td * Th * Tw, t0 = tch * c.tc;
  if (t0 >= ntaps) return;  // uniform: no packed elements here
  const int tn = min(c.tc, ntaps - t0);
  const int rd = (int)e[PT_RES_D], rh = (int)e[PT_RES_H], rw = (int)e[PT_RES_W];
  const int cd = axis_count(a.out_d, rd, a.sd), ch = axis_count(a.out_h, rh, a.sh),
            cw = axis_count(a.out_w, rw, a.sw);
  const int ci0 = cib * NCI * 8, co0 = cob * NCO * 8;
  // octets with channels: whole ones, and (FEW_CO) the one partial output octet
  const int nci_ok = min(NCI, (a.cin_g - ci0) >> 3),
            nco_ok = min(NCO, (a.cout_g - co0 + 7) >> 3);
  // m16n8 tiles: (tap, input octet) pairs two at a time, by output octet; item groups of
  // `per` tiles (a multiple of NCO: an item's output octet is its index mod NCO)
  const int m_octets = tn * NCI, items = (m_octets + 1) / 2 * NCO;
  int item_groups = 1;
  while (item_groups < kWarps && (items + item_groups - 1) / item_groups > kItems)
    item_groups *= 2;
  const int k_parts = kWarps / item_groups;
  const int per = ((items + item_groups - 1) / item_groups + NCO - 1) / NCO * NCO;
  const int ig = warp / k_parts, kp = warp % k_parts;
  const int i0 = ig * per, my_items = max(0, min(per, items - i0));

  // the window: every tap's shift of the tile
  const int tile_d = c.tile_d, tile_h = c.tile_h, tile_w = c.tile_w;
  const int nq = tile_d * tile_h * tile_w;
  const int WD = tile_d + (Td - 1) * a.pdd, WH = tile_h + (Th - 1) * a.pdh,
            WW = tile_w + (Tw - 1) * a.pdw;
  for (int q = tid; q < qp; q += kThreads) {
    const Digits o = split_digits(q, tile_h, tile_w);
    s_q[q] = q < nq ? (o.d * WH + o.h) * WW + o.w : 0;  // padding: grad_y rows are zero
  }

  // this lane's rows.  16-bit: A by ldmatrix.x4.trans (matrices m 0-7 | m 8-15 x k 0-7 |
  // k 8-15), B by x2.trans (k 0-7 | k 8-15).  float: rows (m) lane / 4 and + 8, k lane % 4 and
  // + 4, B's column lane / 4.  An item's A offset: its octet's plane and its tap's shift (for
  // float both octets of the tile, the lane's channel folded in).
  const int a_k = ((lane >> 4) & 1) * 8 + (lane & 7), a_hi = (lane >> 3) & 1, b_k = lane & 15;
  const int f_row = lane >> 2, f_k = lane & 3;
  auto octet_ofs = [&](int m) {  // byte offset of (tap, input octet) pair m in a buffer
    if (m >= m_octets) m = m_octets - 1;  // an odd octet count: the last tile's upper half
    const int tl = NCI == 2 ? m >> 1 : m, o = NCI == 2 ? (m & 1) : 0;
    const int t = t0 + tl;
    const int tw = t % Tw, th = (t / Tw) % Th, td = t / (Tw * Th);
    return (uint32_t)(o * c.win_max + ((td * a.pdd) * WH + th * a.pdh) * WW + tw * a.pdw) *
           (uint32_t)RB;
  };
  uint32_t item_ofs[kItems][F32 ? 2 : 1];
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int m = 2 * ((i0 + i) / NCO);
    if constexpr (F32) {
      item_ofs[i][0] = octet_ofs(m) + f_row * 4;
      item_ofs[i][1] = octet_ofs(m + 1) + f_row * 4;
    } else {
      item_ofs[i][0] = octet_ofs(m + a_hi);
    }
  }

  const int tiles_w = (cw + tile_w - 1) / tile_w, tiles_h = (ch + tile_h - 1) / tile_h,
            tiles_d = (cd + tile_d - 1) / tile_d;
  const int64_t tiles = a.nbatch * tiles_d * tiles_h * tiles_w;
  const int64_t per_split = (tiles + c.splits - 1) / c.splits;
  const int64_t tb = min(tiles, (int64_t)split * per_split), te = min(tiles, tb + per_split);
  __shared__ NarrowStage s_st;
  static_assert(sizeof(NarrowStage) <= kStaticSmemReserve, "launch_kernel's static reserve");
  if (tid == 0) {
    NarrowStage& st = s_st;
    st.x0 = (int64_t)g * a.cin_g + ci0;
    st.g0 = (int64_t)g * a.cout_g + co0;
    st.tiles_w = tiles_w; st.tiles_h = tiles_h; st.tiles_d = tiles_d;
    st.cd = cd; st.ch = ch; st.cw = cw;
    st.wh = WH; st.ww = WW; st.npos = WD * WH * WW;
    st.offd = (int)e[PT_OFF_D]; st.offh = (int)e[PT_OFF_H]; st.offw = (int)e[PT_OFF_W];
    st.rd = rd; st.rh = rh; st.rw = rw;
    st.nci_ok = nci_ok; st.nco_ok = nco_ok;
    const Digits xs = split_digits(kThreads, WH, WW);
    const Digits gs = split_digits(kThreads, tile_h, tile_w);
    const int64_t xw = a.c_in, xh = (int64_t)a.in_w * xw, xd = (int64_t)a.in_h * xh;
    st.x_by = xs.d * xd + xs.h * xh + xs.w * xw;
    st.x_cw = xh - WW * xw;
    st.x_ch = xd - WH * xh;
    const int64_t gw = (int64_t)a.sw * a.c_out, gh = (int64_t)a.sh * a.out_w * a.c_out,
                  gd = (int64_t)a.sd * a.out_h * a.out_w * a.c_out;
    st.g_by = gs.d * gd + gs.h * gh + gs.w * gw;
    st.g_cw = gh - tile_w * gw;
    st.g_ch = gd - tile_h * gh;
  }
  TileAt nt;  // the next tile to stage
  {
    int64_t q64 = tb;
    nt.bw = (int)(q64 % tiles_w); q64 /= tiles_w;
    nt.bh = (int)(q64 % tiles_h); q64 /= tiles_h;
    nt.bd = (int)(q64 % tiles_d);
    nt.n = (int)(q64 / tiles_d);
  }
  __syncthreads();

  // stages tile nt into buffer buf, then steps nt to the next tile (the geometry read into
  // registers once a call: the copy loops would reload it after every copy)
  auto stage = [&](int buf) {
    const NarrowStage st = s_st;
    const int64_t n = nt.n;
    const int d0 = nt.bd * c.tile_d, h0 = nt.bh * c.tile_h, w0 = nt.bw * c.tile_w;
    const uint32_t sx = s_buf0 + buf * buf_bytes, sg = sx + NCI * c.win_max * RB;
    // the input window: positions (d0, h0, w0) + offset + (wd, wh, ww), zero outside
    {
      const int xd = d0 + st.offd, xh = h0 + st.offh, xw = w0 + st.offw;
      const Digits by = split_digits(kThreads, st.wh, st.ww);
      Digits at = split_digits(tid, st.wh, st.ww);
      const T* xb = x + st.x0;
      int64_t v = ((((n * a.in_d + xd + at.d) * a.in_h + xh + at.h) * a.in_w) + xw + at.w) *
                  a.c_in;
      for (int pos = tid; pos < st.npos; pos += kThreads) {
        const bool in = (unsigned)(xd + at.d) < (unsigned)a.in_d &&
                        (unsigned)(xh + at.h) < (unsigned)a.in_h &&
                        (unsigned)(xw + at.w) < (unsigned)a.in_w;
#pragma unroll
        for (int o = 0; o < NCI; ++o) {
          const bool ok = in && o < st.nci_ok;
#pragma unroll
          for (int h = 0; h < kCopies; ++h)
            cp_async16_cg(sx + (o * c.win_max + pos) * RB + h * 16,
                          ok ? xb + v + o * 8 + h * (16 / (int)sizeof(T)) : x, ok);
        }
        at.w += by.w; at.h += by.h; at.d += by.d; v += st.x_by;
        if (at.w >= st.ww) { at.w -= st.ww; at.h += 1; v += st.x_cw; }
        if (at.h >= st.wh) { at.h -= st.wh; at.d += 1; v += st.x_ch; }
      }
    }
    // grad_y at the tile's outputs, zero past the phase's counts and in the padding
    {
      const int tile_h = c.tile_h, tile_w = c.tile_w;
      const Digits by = split_digits(kThreads, tile_h, tile_w);
      Digits at = split_digits(tid, tile_h, tile_w);
      const T* gb = gy + st.g0;
      int64_t v = (((n * a.out_d + st.rd + (int64_t)a.sd * (d0 + at.d)) * a.out_h + st.rh +
                    (int64_t)a.sh * (h0 + at.h)) * a.out_w + st.rw + (int64_t)a.sw * (w0 + at.w)) *
                  a.c_out;
      for (int q = tid; q < qp; q += kThreads) {
        const bool in = q < nq && d0 + at.d < st.cd && h0 + at.h < st.ch && w0 + at.w < st.cw;
        if constexpr (FEW_CO) {  // one partial octet: element loads, zeros past cout_g
          uint32_t row[kCopies * 4];
          load_partial_octet(gb + v, a.cout_g, in, row);
#pragma unroll
          for (int h = 0; h < kCopies; ++h) st_shared16(sg + q * RB + h * 16, row + 4 * h);
        } else {
#pragma unroll
          for (int o = 0; o < NCO; ++o) {
            const bool ok = in && o < st.nco_ok;
#pragma unroll
            for (int h = 0; h < kCopies; ++h)
              cp_async16_cg(sg + (o * qp + q) * RB + h * 16,
                            ok ? gb + v + o * 8 + h * (16 / (int)sizeof(T)) : gy, ok);
          }
        }
        at.w += by.w; at.h += by.h; at.d += by.d; v += st.g_by;
        if (at.w >= tile_w) { at.w -= tile_w; at.h += 1; v += st.g_cw; }
        if (at.h >= tile_h) { at.h -= tile_h; at.d += 1; v += st.g_ch; }
      }
    }
    if (++nt.bw == st.tiles_w) {
      nt.bw = 0;
      if (++nt.bh == st.tiles_h) {
        nt.bh = 0;
        if (++nt.bd == st.tiles_d) { nt.bd = 0; ++nt.n; }
      }
    }
  };

  float acc[kItems][4];
  float* my_sum = s_sum + (warp * kItems * 32 + lane) * 4;  // item i: + i * 128
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
#pragma unroll
    for (int k = 0; k < 4; ++k) acc[i][k] = 0.f;
    *reinterpret_cast<float4*>(my_sum + i * 128) = make_float4(0.f, 0.f, 0.f, 0.f);
  }

  if (tb < te) stage(0);
  cp_async_commit();
  for (int64_t tile = tb; tile < te; ++tile) {
    const int buf = (int)((tile - tb) & 1);
    if (tile + 1 < te) stage(buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();  // this tile has landed for every thread (and the table is in)
    if constexpr (F32) {
      const unsigned char* bx = s_buf + buf * buf_bytes;
      const unsigned char* bg = bx + (NCI * c.win_max * RB + f_row * 4);
      auto lds = [](const unsigned char* p) { return *reinterpret_cast<const uint32_t*>(p); };
      for (int ks = kp; ks < c.ksteps && my_items > 0; ks += k_parts) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int q0 = ks * 16 + half * 8 + f_k;
          const uint32_t r0 = (uint32_t)s_q[q0] * RB, r1 = (uint32_t)s_q[q0 + 4] * RB;
          uint32_t bb[NCO][2], bs[NCO][2];
#pragma unroll
          for (int o = 0; o < NCO; ++o) {
            const uint32_t b[2] = {lds(bg + (o * qp + q0) * RB),
                                   lds(bg + (o * qp + q0 + 4) * RB)};
            split_tf32(b, bb[o], bs[o]);
          }
#pragma unroll
          for (int i = 0; i < kItems; ++i) {
            if (i == my_items) break;  // uniform: no mma issued for an absent item
            const uint32_t av[4] = {lds(bx + r0 + item_ofs[i][0]),
                                    lds(bx + r0 + item_ofs[i][1]),
                                    lds(bx + r1 + item_ofs[i][0]),
                                    lds(bx + r1 + item_ofs[i][1])};
            uint32_t ab[4], as[4];
            split_tf32(av, ab, as);
            mma_3xtf32(acc[i], ab, as, bb[i % NCO], bs[i % NCO]);
          }
        }
      }
    } else {
      const uint32_t sx = s_buf0 + buf * buf_bytes, sg = sx + NCI * c.win_max * RB;
      for (int ks = kp; ks < c.ksteps && my_items > 0; ks += k_parts) {
        const uint32_t pa = sx + (uint32_t)s_q[ks * 16 + a_k] * RB;
        uint32_t bf[NCO][2], af[2][4];
#pragma unroll
        for (int o = 0; o < NCO; ++o)
          ldsm_x2_trans(bf[o][0], bf[o][1], sg + (o * qp + ks * 16 + b_k) * RB);
        ldsm_x4_trans(af[0], pa + item_ofs[0][0]);
        // item i's mma while item i + 1's fragment loads; uniform branches, no mma issued for
        // an absent item
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          if (i + 1 < kItems && i + 1 < my_items)
            ldsm_x4_trans(af[(i + 1) & 1], pa + item_ofs[i + 1 < kItems ? i + 1 : i][0]);
          MmaOp<T>::run(acc[i], af[i & 1], bf[i % NCO][0], bf[i % NCO][1]);
          if (i + 1 == my_items) break;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (i == my_items) break;
      float4* sum = reinterpret_cast<float4*>(my_sum + i * 128);
      const float4 v = *sum;
      *sum = make_float4(v.x + acc[i][0], v.y + acc[i][1], v.z + acc[i][2], v.w + acc[i][3]);
#pragma unroll
      for (int k = 0; k < 4; ++k) acc[i][k] = 0.f;
    }
    __syncthreads();  // every warp is done with this buffer before it is staged again
  }
  cp_async_wait<0>();
  __syncthreads();

  // each item's k parts, added in order, into this split's slice
  const float* red = s_sum;
  float* out = static_cast<float*>(a.ws) + (int64_t)split * a.packed_elems + e[PT_WOFS];
  for (int it = tid; it < items * 128; it += kThreads) {
    const int i = it >> 7, ln = (it >> 2) & 31, k = it & 3;
    const int w0 = (i / per) * k_parts, li = i % per;
    float s = 0.f;
    for (int w = w0; w < w0 + k_parts; ++w) s += red[((w * kItems + li) * 32 + ln) * 4 + k];
    const int row = (ln >> 2) + (k >> 1) * 8, col = (ln & 3) * 2 + (k & 1);
    const int m = 2 * (i / NCO) + (row >> 3), oc = i % NCO;
    if (m >= m_octets) continue;  // the repeated half
    const int tl = NCI == 2 ? m >> 1 : m, o = NCI == 2 ? (m & 1) : 0;
    if (o >= nci_ok || oc >= nco_ok) continue;
    const int ci = ci0 + o * 8 + (row & 7), co = co0 + oc * 8 + col;
    if (FEW_CO && co >= a.cout_g) continue;  // a padding column
    out[(((int64_t)g * a.cin_g + ci) * ntaps + t0 + tl) * a.cout_g + co] = s;
  }
}

template <typename T, int NCI, int NCO, bool FEW_CO = false>
cudaError_t launch(const NarrowArgs& a, cudaStream_t stream) {
  return launch_kernel(gw_narrow_kernel<T, NCI, NCO, FEW_CO>, a.c.grid, kThreads, a.c.smem,
                       stream, a);
}

template <typename T>
cudaError_t run_typed(const PhaseConvBwdWeightParams& p, const GwNarrowCfg& c,
                      cudaStream_t stream) {
  NarrowArgs a;
  set_geometry(a, p);
  a.c = c;
  if (a.cout_g < 8) {  // the plan pairs a partial output octet with one or two input octets
    if (c.nco != 1) return cudaErrorInvalidValue;
    return c.nci == 1 ? launch<T, 1, 1, true>(a, stream) : launch<T, 2, 1, true>(a, stream);
  }
  if (c.nci == 1 && c.nco == 1) return launch<T, 1, 1>(a, stream);
  if (c.nci == 1 && c.nco == 2) return launch<T, 1, 2>(a, stream);
  if (c.nci == 2 && c.nco == 1) return launch<T, 2, 1>(a, stream);
  return cudaErrorInvalidValue;  // the plan never pairs two input and two output octets
}

}  // namespace

template <typename T>
cudaError_t run_gw_narrow(const PhaseConvBwdWeightParams& p, const GwNarrowCfg& c,
                          cudaStream_t stream) {
  if constexpr (sizeof(T) != 8) {
    return run_typed<T>(p, c, stream);
  } else {
    return cudaErrorInvalidValue;  // the plan never picks it for float64
  }
}

template cudaError_t run_gw_narrow<float>(const PhaseConvBwdWeightParams&, const GwNarrowCfg&,
                                          cudaStream_t);
template cudaError_t run_gw_narrow<double>(const PhaseConvBwdWeightParams&, const GwNarrowCfg&,
                                           cudaStream_t);
template cudaError_t run_gw_narrow<__half>(const PhaseConvBwdWeightParams&, const GwNarrowCfg&,
                                           cudaStream_t);
template cudaError_t run_gw_narrow<__nv_bfloat16>(const PhaseConvBwdWeightParams&,
                                                  const GwNarrowCfg&, cudaStream_t);

}  // namespace phaseconv
