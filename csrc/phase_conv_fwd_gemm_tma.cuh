// phaseconv CUDA forward engine: the implicit GEMM's TMA tiles (kinds 8-11, sm_90a builds),
// which phase_conv_fwd_gemm_tma_{packed,weight_mn,weight_k}.cu instantiate, one source of B
// (TmaB) a unit.  CUDA headers only.
#pragma once

#include "phase_conv_fwd_gemm.cuh"

namespace phaseconv {

// ---------------------------------------------------------------- TMA tiles (kinds 8-11, sm_90a)
#if defined(PHASECONV_SM90A)
// The TMA kernels' dynamic shared memory from its first 1024-byte boundary: the stages'
// alignment (the swizzle's atoms; the plan adds the slack).
__device__ __forceinline__ unsigned char* tma_stages_base(unsigned char* smem_raw) {
  const uint32_t s_base = phaseconv_tma::smem_addr(smem_raw);
  return smem_raw + (((s_base + 1023u) & ~1023u) - s_base);
}

// A tile of the TMA kernels: (phase, box, sample, C_out block, group) from its index, phase
// fastest, and its phase's taps; false where the box lies past its phase (a smaller
// residue's).  nk: its k steps of BKG 16-byte groups.  kd0, kh0, kw0 (B read in place): the
// kernel tap of the phase's first tap per axis, its later taps a.kt_* apart (kernel tap
// kd0 - td kt_d): the forward's phase reads input offset off = (r + pad - k0 dil) / s at its
// first tap and steps back by s / gcd(s, dil) along the kernel; the input gradient's one
// sub-problem takes the kernel's taps in order (k0 0, kt -1).
struct TmaTile {
  const int64_t* e;  // the phase's table row
  int n, g, co_base, rd, rh, rw, cd, ch, cw, jd0, jh0, jw0, Td, Th, Tw, offd, offh, offw, nk;
  int kd0, kh0, kw0;
};

template <int BN, int BKG, int BSRC = kBPacked>
__device__ __forceinline__ bool tma_tile(const GemmArgs& a, uint32_t r, TmaTile& t) {
  const int phase = (int)(r % (uint32_t)a.num_phases); r /= (uint32_t)a.num_phases;
  const int bw = (int)(r % (uint32_t)a.box_nw); r /= (uint32_t)a.box_nw;
  const int bh = (int)(r % (uint32_t)a.box_nh); r /= (uint32_t)a.box_nh;
  const int bd = (int)(r % (uint32_t)a.box_nd); r /= (uint32_t)a.box_nd;
  t.n = (int)(r % (uint32_t)a.nbatch); r /= (uint32_t)a.nbatch;
  t.co_base = (int)(r % (uint32_t)a.co_blocks) * BN;
  t.g = (int)(r / (uint32_t)a.co_blocks);
  t.e = a.table + (int64_t)phase * PHASECONV_TABLE_STRIDE;
  t.rd = (int)ldg_i64(t.e + PT_RES_D); t.rh = (int)ldg_i64(t.e + PT_RES_H);
  t.rw = (int)ldg_i64(t.e + PT_RES_W);
  t.cd = axis_count(a.out_d, t.rd, a.sd); t.ch = axis_count(a.out_h, t.rh, a.sh);
  t.cw = axis_count(a.out_w, t.rw, a.sw);
  t.jd0 = bd * a.box_d; t.jh0 = bh * a.box_h; t.jw0 = bw * a.box_w;
  if (t.jd0 >= t.cd || t.jh0 >= t.ch || t.jw0 >= t.cw) return false;
  t.Td = (int)ldg_i64(t.e + PT_TAPS_D); t.Th = (int)ldg_i64(t.e + PT_TAPS_H);
  t.Tw = (int)ldg_i64(t.e + PT_TAPS_W);
  t.offd = (int)ldg_i64(t.e + PT_OFF_D); t.offh = (int)ldg_i64(t.e + PT_OFF_H);
  t.offw = (int)ldg_i64(t.e + PT_OFF_W);
  t.nk = t.Td * t.Th * t.Tw * (a.G / BKG);
  if constexpr (BSRC == kBWeightMN) {
    t.kd0 = (int)((t.rd + a.ex.p[0] - (int64_t)t.offd * a.sd) / a.ex.d[0]);
    t.kh0 = (int)((t.rh + a.ex.p[1] - (int64_t)t.offh * a.sh) / a.ex.d[1]);
    t.kw0 = (int)((t.rw + a.ex.p[2] - (int64_t)t.offw * a.sw) / a.ex.d[2]);
  } else {
    t.kd0 = t.kh0 = t.kw0 = 0;
  }
  return true;
}

// The producer's copies of tile t's k steps (one thread issues them), ring step `it` on: stage
// it % STAGES, filled for the (it / STAGES)-th time once its previous use is released.  B
// from the packed layout's rows, or from the weight in place at the tap's kernel position
// (TmaB): the forward's BKG * 8 input channels of BN output channels, one box a 64-column
// slab; the input gradient's BN input channels (its columns) of BKG * 8 output channels.  The
// ring step after the tile.
template <int STAGES, int A_STAGE, int B_STAGE, int BKG, int BN = 0, int BSRC = kBPacked>
__device__ __forceinline__ uint32_t tma_copy_tile(const GemmArgs& a, const TmaTile& t,
                                                  const PhaseConvTensorMap& amap,
                                                  const PhaseConvTensorMap& bmap,
                                                  unsigned char* smem, uint64_t* full,
                                                  uint64_t* empty, uint32_t it) {
  namespace tma = phaseconv_tma;
  const int brow0 = (int)(ldg_i64(t.e + PT_MOFS) / ((int64_t)a.cout_g * 8)) +
                    t.g * t.Td * t.Th * t.Tw * a.G;
  const int nkc = a.G / BKG;
  int kc = 0, td = 0, th = 0, tw = 0, tap = 0;
  for (int k = 0; k < t.nk; ++k, ++it) {
    const uint32_t s = it % STAGES, use = it / STAGES;
    if (use > 0) tma::bar_wait(&empty[s], (use - 1) & 1u);
    tma::bar_arrive_expect(&full[s], A_STAGE + B_STAGE);
    tma::load_box(smem + s * A_STAGE, amap, &full[s], t.g * a.cin_g + kc * BKG * 8,
                  a.in_sw * t.jw0 + t.offw + tw * a.pdw, a.in_sh * t.jh0 + t.offh + th * a.pdh,
                  a.in_sd * t.jd0 + t.offd + td * a.pdd, t.n);
    unsigned char* sb = smem + STAGES * A_STAGE + s * B_STAGE;
    const int kd = t.kd0 - td * a.kt_d, kh = t.kh0 - th * a.kt_h, kw = t.kw0 - tw * a.kt_w;
    if constexpr (BSRC == kBWeightMN) {
      static_assert(BN == 32 || BN % 64 == 0, "B slabs of 64 columns, or one of 32");
      const int ci = t.g * a.cin_g + kc * BKG * 8;
#pragma unroll
      for (int j = 0; j < (BN >= 64 ? BN / 64 : 1); ++j)
        tma::load_box(sb + j * BKG * 8 * 128, bmap, &full[s], t.co_base + 64 * j, kw, kh, kd,
                      ci);
    } else if constexpr (BSRC == kBWeightK) {
      tma::load_box(sb, bmap, &full[s], kc * BKG * 8, kw, kh, kd, t.g * a.cout_g + t.co_base);
    } else {
      tma::load_rows(sb, bmap, &full[s], 0, t.co_base / a.b_fold, brow0 + tap * a.G + kc * BKG);
    }
    if (++kc == nkc) {
      kc = 0;
      ++tap;
      if (++tw == t.Tw) {
        tw = 0;
        if (++th == t.Th) {
          th = 0;
          ++td;
        }
      }
    }
  }
  return it;
}

// Row `row` of tile t's box: its W position and its output's offset (-1 past the phase).
__device__ __forceinline__ void tma_row(const GemmArgs& a, const TmaTile& t, int row,
                                        int4* s_rc, int64_t* s_yo) {
  const int hw = a.box_h * a.box_w;
  const int jd = t.jd0 + row / hw, jh = t.jh0 + (row % hw) / a.box_w, jw = t.jw0 + row % a.box_w;
  int64_t yo = -1;
  if (jd < t.cd && jh < t.ch && jw < t.cw)
    yo = gemm_y_offset(a, (int64_t)a.out_d * a.out_h * a.out_w, t.n, jd, jh, jw, t.rd, t.rh,
                       t.g, t.co_base);
  s_rc[row] = make_int4(0, 0, 0, jw);
  s_yo[row] = yo;
}

// A consumer warpgroup's k steps of one tile (nk of them, ring step `it` on) into its MR
// 64-row blocks (sa_rows: its first row in a stage), one wgmma batch in flight while the next
// stage is waited for; `leader` (one thread of the warpgroup) releases each stage once the
// batch reading it is complete, the last one too where `release_last` (a ring that outlives
// the tile).  The accumulators are zero where the tile has no k step.  The ring step after
// the tile.
template <typename T, int BN, int BKG, int MR, int STAGES, int A_STAGE, int B_STAGE,
          int BSRC = kBPacked>
__device__ __forceinline__ uint32_t tma_consume_tile(float (&d)[MR][BN / 2], int nk,
                                                     uint32_t sa_rows, uint32_t sb,
                                                     uint64_t* full, uint64_t* empty,
                                                     uint32_t it, bool leader,
                                                     bool release_last) {
  namespace wg = phaseconv_wgmma;
  namespace tma = phaseconv_tma;
  for (int k = 0; k < nk; ++k, ++it) {
    const uint32_t s = it % STAGES;
    tma::bar_wait(&full[s], (it / STAGES) & 1u);
    wgmma_k_step_rows<T, BN, BKG, MR, BN / 2, BSRC>(d, sa_rows + s * A_STAGE, sb + s * B_STAGE,
                                                   k == 0);
    wg::wait<1>();  // batch k stays in flight; batch k - 1 is complete
#pragma unroll
    for (int i = 0; i < MR; ++i) wg::fence_operand(d[i]);
    if (k > 0 && leader) tma::bar_arrive(&empty[(it - 1) % STAGES]);
  }
  wg::wait<0>();
#pragma unroll
  for (int i = 0; i < MR; ++i) {
    wg::fence_operand(d[i]);
    if (nk == 0) {
#pragma unroll
      for (int j = 0; j < BN / 2; ++j) d[i][j] = 0.f;
    }
  }
  if (release_last && nk > 0 && leader) tma::bar_arrive(&empty[(it - 1) % STAGES]);
  return it;
}

// A warpgroup's MR 64-row blocks of a tile (wm0: its first 16-row warp index) with bias:
// staged channels-last in s_c, or stored straight from the accumulators ((N, C, D, H, W)).
template <typename T, int BN, int MR>
__device__ __forceinline__ void tma_epilogue(const GemmArgs& a, const TmaTile& t,
                                             float (&d)[MR][BN / 2], T* s_c, const int4* s_rc,
                                             const int64_t* s_yo, int wm0, int warp, int lane,
                                             bool& nonfinite) {
  constexpr int NT = BN / 8;
  float bv[NT][2];
  gemm_bias<T, NT>(a, t.g, t.co_base, 0, lane, bv);
#pragma unroll
  for (int i = 0; i < MR; ++i) {
    // the warp's 16 rows of 64-row block i, as a 16-row "warp" index
    const int wm_ = wm0 + i * 4 + (warp & 3);
    float(&acc)[1][NT][4] = reinterpret_cast<float(&)[1][NT][4]>(d[i]);
    if (a.y_cl)
      gemm_stage_cl<T, 1, NT, BN>(acc, bv, s_c, 1, 0, wm_, 0, lane);
    else
      gemm_store_acc<T, 1, NT, 4 * MR, BN, false>(a, acc, bv, s_c, s_rc, s_yo, 1, t.rw, wm_, 0,
                                                  lane, t.co_base, nonfinite);
  }
}

// The warpgroup tile with its operands copied by the TMA unit (phase_conv_tma.cuh).  A block's
// BM = 128 MR rows (MR 64-row wgmma blocks a consumer warpgroup: kind 8 MR 1, kind 9 MR 2, B
// read by twice the rows) are a box of (box_d x box_h x box_w) output voxels of one phase and
// one sample, so at tap (td, th, tw) and channel chunk kc its A operand is one box of the
// channels-last input at the corner (in_sw jw0 + offw + tw pdw, in_sh jh0 + offh + th pdh,
// in_sd jd0 + offd + td pdd), every in_s-th voxel (the forward's 1; the input gradient reads
// grad_y at the layer's stride), zero-filled by the hardware outside the input (the
// padding), landing as 128-byte swizzled rows (the layout the A descriptor reads); its B
// operand is one box {8, BN, 8} of the weight layout, landing as [group][column][8] (zero
// past C_out/g).  One producer warp issues both
// copies of a stage on its `full` barrier (bytes expected) and waits for the stage's `empty`
// barrier, which each consumer warpgroup arrives on once its wgmma batch reading the stage
// is complete.  No per-element address arithmetic, no cp.async, no proxy fence.  One phase a
// block; the output is staged in the drained stages for 16-byte channels-last stores, or
// stored from the accumulators ((N, C, D, H, W) results).  k steps of BKG 16-byte groups:
// 64 channels (128-byte rows, C_in/g a multiple of 64) or 32 (BKG 4: 64-byte rows in the
// 64-byte swizzle, for C_in/g an odd multiple of 32).
// two consumer warpgroups and a producer warp (9 warps allocate registers as 12: at most 168
// a thread, which 256 rows at BN 128 pass by 56 bytes of spills, none in the k loop)
constexpr int kTmaThreads = kGemmTmaThreads;

template <typename T, int BN, int MR, int BKG, int BSRC>
__global__ void __launch_bounds__(kTmaThreads, gemm_tma_min_blocks(BN))
gemm_tma_kernel(const GemmArgs a, const __grid_constant__ PhaseConvTensorMap amap,
                const __grid_constant__ PhaseConvTensorMap bmap) {
  phaseconv_exact::let_dependents_start();
  namespace tma = phaseconv_tma;
  constexpr int BM = 128 * MR, STAGES = gemm_tma_stages(BN, BKG);
  constexpr int A_STAGE = BM * BKG * 16, B_STAGE = BKG * BN * 16;
  static_assert(BM * BN * (int)sizeof(T) <= STAGES * (A_STAGE + B_STAGE), "output tile");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* smem = tma_stages_base(smem_raw);
  const uint32_t sa = tma::smem_addr(smem), sb = sa + STAGES * A_STAGE;
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + STAGES * (A_STAGE + B_STAGE));
  uint64_t* empty = full + STAGES;
  int4* s_rc = reinterpret_cast<int4*>(empty + STAGES);  // .w: the row's jw
  int64_t* s_yo = reinterpret_cast<int64_t*>(s_rc + BM);  // gemm_row's y offset, -1: none
  T* s_c = reinterpret_cast<T*>(smem);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  TmaTile t;
  // past this phase: uniform, no barrier yet
  if (!tma_tile<BN, BKG, BSRC>(a, blockIdx.x, t)) return;
  for (int row = tid; row < BM && warp < 8; row += 256) tma_row(a, t, row, s_rc, s_yo);
  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      tma::bar_init(&full[s], 1);
      tma::bar_init(&empty[s], 2);  // one arrival a consumer warpgroup
    }
  }
  __syncthreads();

  float d[MR][BN / 2];
  if (warp == 8) {  // the producer warp: one thread issues every copy
    if (lane == 0)
      tma_copy_tile<STAGES, A_STAGE, B_STAGE, BKG, BN, BSRC>(a, t, amap, bmap, smem, full, empty,
                                                             0);
  } else {  // two consumer warpgroups, 64 MR rows each
    const uint32_t a_rows = (uint32_t)(warp >> 2) * MR * 64 * BKG * 16;
    tma_consume_tile<T, BN, BKG, MR, STAGES, A_STAGE, B_STAGE, BSRC>(
        d, t.nk, sa + a_rows, sb, full, empty, 0, (tid & 127) == 0, false);
  }
  __syncthreads();  // every copy landed and was read: the stages hold the output tile now

  bool nonfinite = false;
  if (warp < 8)
    tma_epilogue<T, BN, MR>(a, t, d, s_c, s_rc, s_yo, (warp >> 2) * MR * 4, warp, lane,
                            nonfinite);
  if (a.y_cl) {
    __syncthreads();
    if (warp < 8)
      gemm_write_tile<T, BM, BN, 256>(a, s_c, s_rc, s_yo, 1, t.rw, t.co_base, tid, nonfinite);
  }
  if (nonfinite) *a.ex.flag = 1;  // the fix-up recomputes those (phase_conv_exact.cuh)
}

// The producer warpgroup of the persistent TMA tiles (kinds 10, 11): it gives registers back
// for the consumers (setmaxnreg), and one thread copies the k steps of the block's tiles,
// blockIdx.x, + gridDim.x, ..., through the ring in that order.
template <int BN, int BKG, int STAGES, int A_STAGE, int B_STAGE, int BSRC>
__device__ __forceinline__ void tma_produce_tiles(const GemmArgs& a,
                                                  const PhaseConvTensorMap& amap,
                                                  const PhaseConvTensorMap& bmap,
                                                  unsigned char* smem, uint64_t* full,
                                                  uint64_t* empty, int tid) {
  phaseconv_tma::warpgroup_registers_dec<40>();
  if (tid != 0) return;
  uint32_t it = 0;  // the ring's step, across tiles
  for (uint32_t i = blockIdx.x; i < (uint32_t)a.total_blocks; i += gridDim.x) {
    TmaTile t;
    if (tma_tile<BN, BKG, BSRC>(a, i, t))
      it = tma_copy_tile<STAGES, A_STAGE, B_STAGE, BKG, BN, BSRC>(a, t, amap, bmap, smem, full,
                                                                  empty, it);
  }
}

// The ping-pong TMA tile (kind 10): persistent blocks (one a multiprocessor) of a producer
// warpgroup and two consumer warpgroups.  A block walks tiles blockIdx.x, + gridDim.x, ...
// (kind 8's 128-row tiles); the producer copies their k steps in that order through one
// ring of stages, and the consumers take the tiles alternately, each a whole tile (two 64-row
// wgmma blocks) with its output staged in a buffer of its own.  Their k steps take turns
// (each consumer waits on its `turn` barrier, which the other arrives on once it has issued
// its tile's last k step), so one consumer's write-out overlaps the other's k steps, and a
// consumer never waits on a stage more than one use ahead of the copies (the ring's parity
// could not tell the uses apart).  The producer warpgroup hands registers to the consumers
// (setmaxnreg: 40 and 232 a thread), whose 128 x 128 accumulators need 128.
template <typename T, int BN, int BKG, int BSRC>
__global__ void __launch_bounds__(kGemmPingpongThreads, 1)
gemm_tma_pingpong_kernel(const GemmArgs a, const __grid_constant__ PhaseConvTensorMap amap,
                         const __grid_constant__ PhaseConvTensorMap bmap) {
  phaseconv_exact::let_dependents_start();
  namespace tma = phaseconv_tma;
  constexpr int BM = 128, MR = 2, STAGES = gemm_pingpong_stages(BN, BKG);
  constexpr int A_STAGE = BM * BKG * 16, B_STAGE = BKG * BN * 16;
  constexpr int RING = STAGES * (A_STAGE + B_STAGE), OUT = BM * BN * (int)sizeof(T);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* smem = tma_stages_base(smem_raw);
  const uint32_t sa = tma::smem_addr(smem), sb = sa + STAGES * A_STAGE;
  // the ring, each consumer's output, the barriers, each consumer's row tables
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + RING + 2 * OUT);
  uint64_t* empty = full + STAGES;
  uint64_t* turn = empty + STAGES;  // turn[c]: consumer c may run its next tile's k steps
  int4* rc_tables = reinterpret_cast<int4*>(turn + 2);
  int64_t* yo_tables = reinterpret_cast<int64_t*>(rc_tables + 2 * BM);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const uint32_t tiles = (uint32_t)a.total_blocks;
  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      tma::bar_init(&full[s], 1);
      tma::bar_init(&empty[s], 1);  // the one consumer of the stage's tile
    }
    tma::bar_init(&turn[0], 1);
    tma::bar_init(&turn[1], 1);
  }
  __syncthreads();

  if (warp < 4) {  // the producer warpgroup
    tma_produce_tiles<BN, BKG, STAGES, A_STAGE, B_STAGE, BSRC>(a, amap, bmap, smem, full, empty,
                                                               tid);
    return;  // (no barrier over the whole block follows)
  }
  tma::warpgroup_registers_inc<232>();
  const int c = (warp >> 2) - 1, ct = tid & 127;  // consumer c, its thread ct
  T* s_c = reinterpret_cast<T*>(smem + RING + c * OUT);
  int4* s_rc = rc_tables + c * BM;
  int64_t* s_yo = yo_tables + c * BM;
  bool nonfinite = false;  // a stored element is Inf or NaN
  uint32_t it = 0, turns = 0;  // the ring's step; this consumer's waits on its turn
  int valid = 0;               // the block's tiles inside their phase so far
  for (uint32_t i = blockIdx.x; i < tiles; i += gridDim.x) {
    TmaTile t;
    if (!tma_tile<BN, BKG>(a, i, t)) continue;  // (the kernel taps: the producer's)
    if ((valid++ & 1) != c) {  // the other consumer's tile: its k steps pass this one by
      it += t.nk;
      continue;
    }
    // (the previous tile's write-out is done with the tables: the barrier ending it)
    tma_row(a, t, ct, s_rc, s_yo);
    if (valid > 1) tma::bar_wait(&turn[c], turns++ & 1u);  // the other's k steps issued
    float d[MR][BN / 2];
    it = tma_consume_tile<T, BN, BKG, MR, STAGES, A_STAGE, B_STAGE, BSRC>(d, t.nk, sa, sb, full,
                                                                          empty, it, ct == 0,
                                                                          true);
    if (ct == 0) tma::bar_arrive(&turn[c ^ 1]);
    tma::named_sync(1 + c, 128);  // the row tables written
    tma_epilogue<T, BN, MR>(a, t, d, s_c, s_rc, s_yo, 0, warp, lane, nonfinite);
    if (a.y_cl) {
      tma::named_sync(1 + c, 128);
      gemm_write_tile<T, BM, BN, 128>(a, s_c, s_rc, s_yo, 1, t.rw, t.co_base, ct, nonfinite);
    }
    tma::named_sync(1 + c, 128);  // s_c and the row tables are free for the next tile
  }
  if (nonfinite) *a.ex.flag = 1;  // the fix-up recomputes those (phase_conv_exact.cuh)
}

// The persistent 256-row TMA tile (kind 11): kind 9's tiles (256 rows, BN 128, 64-channel k
// steps, each consumer warpgroup 128 of the rows) walked by persistent blocks, one a
// multiprocessor, with one ring of stages across tiles, so the producer copies the next
// tile's operands while the consumers write this one's output (staged apart).  The producer
// warpgroup hands registers to the consumers as in the ping-pong tile, so their 128 x 128
// accumulators do not spill.
template <typename T, int BSRC>
__global__ void __launch_bounds__(kGemmPingpongThreads, 1)
gemm_tma_persistent_kernel(const GemmArgs a, const __grid_constant__ PhaseConvTensorMap amap,
                           const __grid_constant__ PhaseConvTensorMap bmap) {
  phaseconv_exact::let_dependents_start();
  namespace tma = phaseconv_tma;
  constexpr int BM = 256, BN = 128, BKG = 8, MR = 2, STAGES = kGemmTmaPersistentStages;
  constexpr int A_STAGE = BM * BKG * 16, B_STAGE = BKG * BN * 16;
  constexpr int RING = STAGES * (A_STAGE + B_STAGE), OUT = BM * BN * (int)sizeof(T);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* smem = tma_stages_base(smem_raw);
  const uint32_t sa = tma::smem_addr(smem), sb = sa + STAGES * A_STAGE;
  // the ring, the output, the barriers, the row tables
  T* s_c = reinterpret_cast<T*>(smem + RING);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + RING + OUT);
  uint64_t* empty = full + STAGES;
  int4* s_rc = reinterpret_cast<int4*>(empty + STAGES);
  int64_t* s_yo = reinterpret_cast<int64_t*>(s_rc + BM);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const uint32_t tiles = (uint32_t)a.total_blocks;
  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      tma::bar_init(&full[s], 1);
      tma::bar_init(&empty[s], 2);  // one arrival a consumer warpgroup
    }
  }
  __syncthreads();

  if (warp < 4) {  // the producer warpgroup
    tma_produce_tiles<BN, BKG, STAGES, A_STAGE, B_STAGE, BSRC>(a, amap, bmap, smem, full, empty,
                                                               tid);
    return;  // (no barrier over the whole block follows)
  }
  tma::warpgroup_registers_inc<232>();
  const int c = (warp >> 2) - 1, ct = tid - 128;  // consumer warpgroup c, consumer thread ct
  bool nonfinite = false;  // a stored element is Inf or NaN
  uint32_t it = 0;
  for (uint32_t i = blockIdx.x; i < tiles; i += gridDim.x) {
    TmaTile t;
    if (!tma_tile<BN, BKG>(a, i, t)) continue;  // (the kernel taps: the producer's)
    // (the previous tile's write-out is done with the tables: the barrier ending it)
    tma_row(a, t, ct, s_rc, s_yo);
    float d[MR][BN / 2];
    it = tma_consume_tile<T, BN, BKG, MR, STAGES, A_STAGE, B_STAGE, BSRC>(
        d, t.nk, sa + (uint32_t)c * MR * 64 * BKG * 16, sb, full, empty, it, (ct & 127) == 0,
        true);
    tma::named_sync(1, 256);  // the row tables written
    tma_epilogue<T, BN, MR>(a, t, d, s_c, s_rc, s_yo, c * MR * 4, warp, lane, nonfinite);
    if (a.y_cl) {
      tma::named_sync(1, 256);
      gemm_write_tile<T, BM, BN, 256>(a, s_c, s_rc, s_yo, 1, t.rw, t.co_base, ct, nonfinite);
    }
    tma::named_sync(1, 256);  // s_c and the row tables are free for the next tile
  }
  if (nonfinite) *a.ex.flag = 1;  // the fix-up recomputes those (phase_conv_exact.cuh)
}

// The 128-row TMA tiles by their columns, k steps of BKG 16-byte groups: kind 8, or its
// ping-pong form (kind 10); B from where BSRC says (TmaB).
template <typename T, int BKG, bool PINGPONG, int BSRC>
cudaError_t launch_gemm_tma(const GemmArgs& a, const GemmCfg& c,
                            const PhaseConvTensorMap& amap, const PhaseConvTensorMap& bmap,
                            cudaStream_t stream) {
  const int threads = PINGPONG ? kGemmPingpongThreads : kTmaThreads;
  switch (c.BN) {
    case 32: return launch_kernel(PINGPONG ? gemm_tma_pingpong_kernel<T, 32, BKG, BSRC>
                                           : gemm_tma_kernel<T, 32, 1, BKG, BSRC>,
                                  c.grid, threads, c.smem, stream, a, amap, bmap);
    case 64: return launch_kernel(PINGPONG ? gemm_tma_pingpong_kernel<T, 64, BKG, BSRC>
                                           : gemm_tma_kernel<T, 64, 1, BKG, BSRC>,
                                  c.grid, threads, c.smem, stream, a, amap, bmap);
    case 128: return launch_kernel(PINGPONG ? gemm_tma_pingpong_kernel<T, 128, BKG, BSRC>
                                            : gemm_tma_kernel<T, 128, 1, BKG, BSRC>,
                                   c.grid, threads, c.smem, stream, a, amap, bmap);
  }
  return cudaErrorInvalidConfiguration;
}

// The TMA tiles of kind c.kind (8-11), B from where BSRC says (TmaB; the input gradient's
// weight in place: the 128-row kinds, which its rule takes).
template <typename T, int BSRC>
cudaError_t launch_gemm_tma_kind(const GemmArgs& a, const GemmCfg& c,
                                 const PhaseConvTensorMap& amap, const PhaseConvTensorMap& bmap,
                                 cudaStream_t stream) {
  if (gemm_tma_rows(c.kind) == 256) {  // BN 128, 64-channel k steps only (where B is widest)
    if constexpr (BSRC == kBWeightK) {
      return cudaErrorInvalidConfiguration;
    } else {
      if (c.BN != 128 || c.bkg != 8) return cudaErrorInvalidConfiguration;
      return c.kind == 9 ? launch_kernel(gemm_tma_kernel<T, 128, 2, 8, BSRC>, c.grid,
                                         kTmaThreads, c.smem, stream, a, amap, bmap)
                         : launch_kernel(gemm_tma_persistent_kernel<T, BSRC>, c.grid,
                                         kGemmPingpongThreads, c.smem, stream, a, amap, bmap);
    }
  }
  if (c.kind == 10)
    return c.bkg == 4 ? launch_gemm_tma<T, 4, true, BSRC>(a, c, amap, bmap, stream)
                      : launch_gemm_tma<T, 8, true, BSRC>(a, c, amap, bmap, stream);
  return c.bkg == 4 ? launch_gemm_tma<T, 4, false, BSRC>(a, c, amap, bmap, stream)
                    : launch_gemm_tma<T, 8, false, BSRC>(a, c, amap, bmap, stream);
}
#endif  // PHASECONV_SM90A

}  // namespace phaseconv
