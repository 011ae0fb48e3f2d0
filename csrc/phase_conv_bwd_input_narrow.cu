// phaseconv CUDA backward: the input gradient of narrow layers on tensor cores (see
// phase_conv_bwd_input_narrow.cuh).  CUDA headers only.
//
// The input gradient of a transposed convolution is a plain strided correlation,
//
//   grad_x[n, ci, i] = sum_{k, co} w[ci, co, k] grad_y[n, co, s * i - p + k * d],
//
// in which every term reads a real grad_y element: in this direction the phases only say which
// taps meet which output, and no tap meets an inserted zero.  With 8 or 16 grad_y channels per
// group (or fewer than 8, zero-padded to an octet), the per-phase kernels would run k steps of
// 8 channels in 16-wide tensor-core steps.
// Here a block owns a tile of grad_x positions (gi_narrow_outputs) of one group and stages, by
// cp.async, the grad_y window every tap of the tile reads ([octet][position][8], channels-last)
// and the group's weight ([pair][grad_x channel][8]).  An m16n8k16 step's k is two (tap,
// grad_y octet) pairs; its 16 rows are grad_x positions, each read at the tap's shift: a row
// address is the row's window position plus the pair's offset, a table entry.  The window's W
// axis is stored by residue (position w at (w mod s_w) * win_ws + w / s_w), so the 8 rows of
// an ldmatrix, 8 neighbours along W, are 8 consecutive 16-byte rows for every stride: no bank
// conflict.  float32: 3xTF32 m16n8k8, one pair a k step, from 32-bit shared loads (a row is
// 8 words; its two 16-byte halves swap on rows whose bit 2 is set, so the 8 rows a load reads
// fall on 32 distinct banks), accumulators flushed every kFlushTerms terms.  Each grad_x
// element is written once, by the warp that owns it; no atomics.
#include "phase_conv_bwd_input_narrow.cuh"
#include "phase_conv_dtype.cuh"
#include "phase_conv_exact.cuh"
#include "phase_conv_launch.cuh"
#include "phase_conv_mma.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace phaseconv {
namespace {

using namespace phaseconv_dtype;  // from_acc
using namespace phaseconv_mma;    // ldmatrix, cp.async, mma.sync, 3xTF32, flush_acc
using phaseconv_exact::finite_value;

constexpr int kThreads = kGiNarrowThreads, kWarps = kThreads / 32;
static_assert(gi_narrow_outputs(2) % (16 * kWarps) == 0 &&
              gi_narrow_outputs(4) % (16 * kWarps) == 0, "whole m16 tiles a warp");

// Byte offset of 32-bit word k (0-7) of row r of a float32 window or weight: the row's 16-byte
// halves swap where bit 2 of r is set (8 consecutive rows then cover all 32 banks).
__device__ __forceinline__ uint32_t f32_word(uint32_t r, int k) {
  return r * 32 + ((((uint32_t)k >> 2) ^ ((r >> 2) & 1)) << 4) + (k & 3) * 4;
}

// The launch: grad_y channels-last (N, OD, OH, OW, C_out), the weight gathered
// [groups][taps][C_out/g / 8][C_in/g][8], grad_x (N, C_in, D, H, W).
struct GiNarrowArgs {
  const void* gy;
  const void* w;
  void* gx;
  int* flag;  // set where a stored element is not finite (the fix-up recomputes it)
  int64_t nbatch;
  int c_in, c_out, cin_g, cout_g, groups;
  int in_d, in_h, in_w, out_d, out_h, out_w;
  int kd, kh, kw, sd, sh, sw, pd, ph, pw, dd, dh, dw;
  GiNarrowCfg c;
};

// A position of a block's grad_x tile as digits.
struct TilePos {
  int d, h, w;
};

// A window position as digits (d, h, r, q), q fastest: W position q * s_w + r.
struct WinDigits {
  int q, r, h, d;
};
__device__ __forceinline__ WinDigits win_digits(int i, int ws, int sw, int wh) {
  WinDigits t;
  t.q = i % ws; i /= ws;
  t.r = i % sw; i /= sw;
  t.h = i % wh;
  t.d = i / wh;
  return t;
}

// FEW_CO: fewer than 8 grad_y channels a group.  Their rows are narrower than a 16-byte copy
// (and not aligned to one), so a thread loads a window position's channels one element at a
// time and stores the octet's row with zeros past them; the packed weight's octet is
// zero-padded alike (phase_conv_pack.cuh), so the padding terms add zeros.
template <typename T, int NCI, int NCO, bool FEW_CO>
__global__ void __launch_bounds__(kThreads, 2) gi_narrow_kernel(const GiNarrowArgs a) {
  phaseconv_exact::let_dependents_start();
  constexpr bool F32 = sizeof(T) == 4;
  constexpr int kTiles = gi_narrow_outputs((int)sizeof(T)) / (16 * kWarps);  // m16 tiles a warp
  constexpr int RB = 8 * (int)sizeof(T);  // an octet's row bytes
  constexpr int kCopies = RB / 16;        // 16-byte copies a row
  static_assert(sizeof(T) == 2 || sizeof(T) == 4, "16-bit or float operands");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const GiNarrowCfg& c = a.c;
  const int npos = c.win_d * c.win_h * c.win_w;
  const int wrows = c.pairs * NCI * 8;
  // shared memory: the window [NCO][npos] rows, the weight [pairs][NCI * 8] rows (RB bytes),
  // then each pair's row offset in the window
  const uint32_t s_win = (uint32_t)__cvta_generic_to_shared(smem_raw);
  const uint32_t s_wt = s_win + NCO * npos * RB;
  int* s_pair = reinterpret_cast<int*>(smem_raw + (NCO * npos + wrows) * RB);
  const T* __restrict__ gy = static_cast<const T*>(a.gy);
  const T* __restrict__ w = static_cast<const T*>(a.w);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  // block: (grad_x octet block, group, W tile, H tile, D tile, batch), fastest first
  int64_t r = blockIdx.x;
  const int cib = (int)(r % c.n_cib); r /= c.n_cib;
  const int g = (int)(r % a.groups); r /= a.groups;
  const int bw = (int)(r % c.tiles_w); r /= c.tiles_w;
  const int bh = (int)(r % c.tiles_h); r /= c.tiles_h;
  const int bd = (int)(r % c.tiles_d);
  const int64_t n = r / c.tiles_d;
  const int i0d = bd * c.tile_d, i0h = bh * c.tile_h, i0w = bw * c.tile_w;
  const int ci0 = cib * NCI * 8;
  const int taps = a.kd * a.kh * a.kw, real_pairs = taps * NCO;

  // each pair's offset: its octet's plane and its tap's shift (W by residue)
  for (int pr = tid; pr < c.pairs; pr += kThreads) {
    int off = 0;  // the padding pair: any row (its weight is zero)
    if (pr < real_pairs) {
      const int t = pr / NCO, o = pr - t * NCO;
      const int tw = t % a.kw, th = (t / a.kw) % a.kh, td = t / (a.kw * a.kh);
      const int cw = tw * a.dw;
      off = o * npos + ((td * a.dd) * c.win_h + th * a.dh) * c.win_w + (cw % a.sw) * c.win_ws +
            cw / a.sw;
    }
    s_pair[pr] = off;
  }
  // the weight rows of this block's grad_x channels: pair pr = tap * NCO + octet is row
  // (pr, ci) of the gathered group, zero past the pairs and the group's channels
  {
    const T* wg = w + (int64_t)g * taps * (NCO * 8) * a.cin_g;  // octets zero-padded
    for (int rr = tid; rr < wrows; rr += kThreads) {
      const int pr = rr / (NCI * 8), row = rr - pr * (NCI * 8);
      const bool ok = pr < real_pairs && ci0 + row < a.cin_g;
      const T* src = wg + ((int64_t)pr * a.cin_g + ci0 + row) * 8;
#pragma unroll
      for (int h = 0; h < kCopies; ++h)
        cp_async16_ca(F32 ? s_wt + f32_word(rr, 4 * h) : s_wt + rr * 16,
                      ok ? src + h * (16 / (int)sizeof(T)) : w, ok);
    }
  }
  // the grad_y window: positions (s * i0 - p) + (wd, wh, q * s_w + rw), walked as (wd, wh, rw,
  // q), q fastest, kThreads positions a step (digits added with carries: no division a
  // position); zero outside grad_y
  {
    const int o0d = a.sd * i0d - a.pd, o0h = a.sh * i0h - a.ph, o0w = a.sw * i0w - a.pw;
    const T* gb = gy + (int64_t)g * a.cout_g;
    const WinDigits by = win_digits(kThreads, c.win_ws, a.sw, c.win_h);
    WinDigits at = win_digits(tid, c.win_ws, a.sw, c.win_h);
    for (int pos = tid; pos < npos; pos += kThreads) {
      const int od = o0d + at.d, oh = o0h + at.h, ow = o0w + at.q * a.sw + at.r;
      const bool in = (unsigned)od < (unsigned)a.out_d && (unsigned)oh < (unsigned)a.out_h &&
                      (unsigned)ow < (unsigned)a.out_w;
      const int64_t v = (((n * a.out_d + od) * a.out_h + oh) * a.out_w + ow) * a.c_out;
      if constexpr (FEW_CO) {  // one partial octet: element loads, zeros past cout_g
        uint32_t row[kCopies * 4];
        load_partial_octet(gb + v, a.cout_g, in, row);
#pragma unroll
        for (int h = 0; h < kCopies; ++h)
          st_shared16(F32 ? s_win + f32_word(pos, 4 * h) : s_win + pos * 16, row + 4 * h);
      } else {
#pragma unroll
        for (int o = 0; o < NCO; ++o) {
          const uint32_t row = o * npos + pos;
#pragma unroll
          for (int h = 0; h < kCopies; ++h)
            cp_async16_cg(F32 ? s_win + f32_word(row, 4 * h) : s_win + row * 16,
                          in ? gb + v + o * 8 + h * (16 / (int)sizeof(T)) : gy, in);
        }
      }
      at.q += by.q; at.r += by.r; at.h += by.h; at.d += by.d;
      if (at.q >= c.win_ws) { at.q -= c.win_ws; at.r += 1; }
      if (at.r >= a.sw) { at.r -= a.sw; at.h += 1; }
      if (at.h >= c.win_h) { at.h -= c.win_h; at.d += 1; }
    }
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  // tile position m (tile_d x tile_h x tile_w, w fastest) as digits, and its window row at
  // the first tap (W by residue: residue 0, the row's W digit)
  const int tile_hw = c.tile_h * c.tile_w;
  auto tile_pos = [&](int m) {
    return TilePos{m / tile_hw, (m / c.tile_w) % c.tile_h, m % c.tile_w};
  };
  auto window_row = [&](int m) {
    const TilePos t = tile_pos(m);
    return (a.sd * t.d * c.win_h + a.sh * t.h) * c.win_w + t.w;
  };

  float acc[kTiles][NCI][4];
  zero_acc(acc);
  if constexpr (F32) {
    // A: rows (m) lane / 4 and + 8, k lane % 4 and + 4; B: column lane / 4, the same k
    const int f_row = lane >> 2, f_k = lane & 3;
    float tot[kTiles][NCI][4];
    zero_acc(tot);
    uint32_t a_row[kTiles][2];
#pragma unroll
    for (int mt = 0; mt < kTiles; ++mt)
#pragma unroll
      for (int half = 0; half < 2; ++half)
        a_row[mt][half] = window_row((warp + mt * kWarps) * 16 + f_row + half * 8);
    auto lds = [](uint32_t addr) {
      uint32_t v;
      asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(addr));
      return v;
    };
    int since = 0;
    // one pair (8 terms) a k step: the padding pair is skipped, kFlushTerms / 8 steps a run
    for (int pr = 0; pr < real_pairs; ++pr) {
      const uint32_t po = (uint32_t)s_pair[pr];
      uint32_t bb[NCI][2], bs[NCI][2];
#pragma unroll
      for (int o = 0; o < NCI; ++o) {
        const uint32_t br = pr * (NCI * 8) + o * 8 + f_row;
        const uint32_t b[2] = {lds(s_wt + f32_word(br, f_k)), lds(s_wt + f32_word(br, f_k + 4))};
        split_tf32(b, bb[o], bs[o]);
      }
#pragma unroll
      for (int mt = 0; mt < kTiles; ++mt) {
        const uint32_t r0 = a_row[mt][0] + po, r1 = a_row[mt][1] + po;
        const uint32_t av[4] = {lds(s_win + f32_word(r0, f_k)), lds(s_win + f32_word(r1, f_k)),
                                lds(s_win + f32_word(r0, f_k + 4)),
                                lds(s_win + f32_word(r1, f_k + 4))};
        uint32_t ab[4], as[4];
        split_tf32(av, ab, as);
#pragma unroll
        for (int o = 0; o < NCI; ++o) mma_3xtf32(acc[mt][o], ab, as, bb[o], bs[o]);
      }
      step_flush<true>(tot, acc, since, kFlushTerms / 8);
    }
    merge_acc(acc, tot);
  } else {
    // ldmatrix rows.  A (x4): matrices rows 0-7 | 8-15 x the step's first | second pair; a row
    // is a grad_x position of the warp's m16 tile.  B (x2, or x4 for two octets): the first |
    // second pair's rows of grad_x channels 0-7 (| 8-15).
    const int a_m = (lane & 7) + ((lane >> 3) & 1) * 8, a_pair = lane >> 4;
    uint32_t a_row[kTiles];
#pragma unroll
    for (int mt = 0; mt < kTiles; ++mt)
      a_row[mt] = s_win + window_row((warp + mt * kWarps) * 16 + a_m) * 16;
    const uint32_t b_row = s_wt + (((lane >> 3) & 1) * NCI * 8 + (lane & 7) +
                                   (NCI == 2 ? (lane >> 4) * 8 : 0)) * 16;
    const int ksteps = c.pairs / 2;
    for (int ks = 0; ks < ksteps; ++ks) {
      const uint32_t po = (uint32_t)s_pair[2 * ks + a_pair] * 16;
      uint32_t b[NCI][2];
      const uint32_t pb = b_row + ks * (2 * NCI * 8 * 16);
      if constexpr (NCI == 2) {
        uint32_t r4[4];
        ldsm_x4(r4, pb);
        b[0][0] = r4[0]; b[0][1] = r4[1]; b[1][0] = r4[2]; b[1][1] = r4[3];
      } else {
        ldsm_x2(b[0][0], b[0][1], pb);
      }
#pragma unroll
      for (int mt = 0; mt < kTiles; ++mt) {
        uint32_t af[4];
        ldsm_x4(af, a_row[mt] + po);
#pragma unroll
        for (int o = 0; o < NCI; ++o) MmaOp<T>::run(acc[mt][o], af, b[o][0], b[o][1]);
      }
    }
  }

  // grad_x: accumulator k of a lane is row (lane / 4) + 8 (k / 2), column 2 (lane % 4) + k % 2
  T* gx = static_cast<T*>(a.gx);
  const int64_t plane = (int64_t)a.in_d * a.in_h * a.in_w;
  const int nci_ok = min(NCI, (a.cin_g - ci0) >> 3);
  bool nonfinite = false;
#pragma unroll
  for (int mt = 0; mt < kTiles; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const TilePos t = tile_pos((warp + mt * kWarps) * 16 + (lane >> 2) + half * 8);
      const int id = i0d + t.d, ih = i0h + t.h, iw = i0w + t.w;
      if (id >= a.in_d || ih >= a.in_h || iw >= a.in_w) continue;
      const int64_t sp = ((int64_t)id * a.in_h + ih) * a.in_w + iw;
#pragma unroll
      for (int o = 0; o < NCI; ++o) {
        if (o >= nci_ok) break;
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          const int ci = g * a.cin_g + ci0 + o * 8 + (lane & 3) * 2 + k;
          const T v = from_acc<T>(acc[mt][o][half * 2 + k]);
          gx[(n * a.c_in + ci) * plane + sp] = v;
          nonfinite |= !finite_value(v);
        }
      }
    }
  }
  if (nonfinite) *a.flag = 1;  // the fix-up recomputes those (phase_conv_exact.cuh)
}

template <typename T, int NCI, int NCO, bool FEW_CO = false>
cudaError_t launch(const GiNarrowArgs& a, cudaStream_t stream) {
  return launch_kernel(gi_narrow_kernel<T, NCI, NCO, FEW_CO>, a.c.grid, kThreads, a.c.smem,
                       stream, a);
}

template <typename T>
cudaError_t run_typed(const PhaseConvFwdParams& p, const GiNarrowCfg& c, cudaStream_t stream) {
  // grad-input mode names grad_y the input (c_in, in_*) and grad_x the output (c_out, out_*)
  const PhaseConvExact& e = p.exact;
  GiNarrowArgs a;
  a.gy = p.x; a.w = p.weight_mma; a.gx = p.y; a.flag = e.flag;
  a.nbatch = p.n;
  a.c_in = (int)p.c_out; a.c_out = (int)p.c_in; a.groups = (int)p.groups;
  a.cin_g = a.c_in / a.groups; a.cout_g = a.c_out / a.groups;
  a.in_d = (int)p.out_d; a.in_h = (int)p.out_h; a.in_w = (int)p.out_w;
  a.out_d = (int)p.in_d; a.out_h = (int)p.in_h; a.out_w = (int)p.in_w;
  a.kd = (int)e.k[0]; a.kh = (int)e.k[1]; a.kw = (int)e.k[2];
  a.sd = (int)e.s[0]; a.sh = (int)e.s[1]; a.sw = (int)e.s[2];
  a.pd = (int)e.p[0]; a.ph = (int)e.p[1]; a.pw = (int)e.p[2];
  a.dd = (int)e.d[0]; a.dh = (int)e.d[1]; a.dw = (int)e.d[2];
  a.c = c;
  if (a.cout_g < 8) {  // one partial grad_y octet
    if (c.nco != 1) return cudaErrorInvalidValue;
    return c.nci == 1 ? launch<T, 1, 1, true>(a, stream) : launch<T, 2, 1, true>(a, stream);
  }
  if (c.nci == 1 && c.nco == 1) return launch<T, 1, 1>(a, stream);
  if (c.nci == 1 && c.nco == 2) return launch<T, 1, 2>(a, stream);
  if (c.nci == 2 && c.nco == 1) return launch<T, 2, 1>(a, stream);
  if (c.nci == 2 && c.nco == 2) return launch<T, 2, 2>(a, stream);
  return cudaErrorInvalidValue;
}

}  // namespace

template <typename T>
cudaError_t run_gi_narrow(const PhaseConvFwdParams& p, const GiNarrowCfg& c,
                          cudaStream_t stream) {
  if constexpr (sizeof(T) != 8) {
    return run_typed<T>(p, c, stream);
  } else {
    return cudaErrorInvalidValue;  // the plan never picks it for float64
  }
}

template cudaError_t run_gi_narrow<float>(const PhaseConvFwdParams&, const GiNarrowCfg&,
                                          cudaStream_t);
template cudaError_t run_gi_narrow<double>(const PhaseConvFwdParams&, const GiNarrowCfg&,
                                           cudaStream_t);
template cudaError_t run_gi_narrow<__half>(const PhaseConvFwdParams&, const GiNarrowCfg&,
                                           cudaStream_t);
template cudaError_t run_gi_narrow<__nv_bfloat16>(const PhaseConvFwdParams&,
                                                  const GiNarrowCfg&, cudaStream_t);

}  // namespace phaseconv
