// phaseconv: the launch parameters and the kernel plan.
//
// A plan is a pure function of the launch parameters (shapes, dtype, layout, arguments), a
// kernel forced by name (tests, benchmarks) and the device's properties (DevInfo): which
// kernel family runs, its tile and grid, and which input and weight layouts it reads.  It is
// computed once per layer and input shape (phase_conv.cpp: ForwardPlan, BackwardPlan); the
// launchers take it, and describe() prints it.  phase_conv_plan.cpp implements it in plain
// C++: this header includes no CUDA or torch header, so the plan also builds and runs on a
// machine without a GPU (tests/plan/test_plan.py, with recorded device properties).
#pragma once

#include <stddef.h>
#include <stdint.h>

enum PhaseConvExactMode {
  PHASECONV_EXACT_FORWARD = 0,      // y (N, C_out, out...) contiguous; a = x, b = weight
  PHASECONV_EXACT_GRAD_INPUT = 1,   // grad_x (N, C_in, in...) (out_channels_last: (N, in..., C_in));
                                    // a = grad_y, b = weight
  PHASECONV_EXACT_GRAD_WEIGHT = 2,  // grad_w, by logical (C-order) element; a = x, b = grad_y
};

// The operands of one launch as the definition reads them (sizes are the transposed
// convolution's: in = the input's spatial sizes, out = the output's).
struct PhaseConvExact {
  const void* a = nullptr;
  const void* b = nullptr;
  const void* bias = nullptr;  // forward only, or nullptr
  int64_t as[5] = {0, 0, 0, 0, 0};  // element strides of a (n, c, d, h, w)
  int64_t bs[5] = {0, 0, 0, 0, 0};  // of b: weight (ci, co, kd, kh, kw) or grad_y (n, c, ...)
  int64_t n = 0, c_in = 0, c_out = 0, groups = 1;
  int64_t in[3] = {0, 0, 0}, out[3] = {0, 0, 0}, k[3] = {0, 0, 0};
  int64_t s[3] = {1, 1, 1}, p[3] = {0, 0, 0}, d[3] = {1, 1, 1};
  int mode = PHASECONV_EXACT_FORWARD;
  int out_channels_last = 0;  // y (grad_x) is stored (N, D, H, W, C_out (C_in))
  int* flag = nullptr;  // set to 1 by a kernel that stored a non-finite element
};

// A 5-D tensor's sizes and element strides; contiguous: strides are the C-order ones, so a
// logical index is the storage offset; narrow: fewer than 2^32 elements, so a logical index
// splits into its five indices by 32-bit divisions.
struct PhaseConvWeightView {
  int64_t size[5];
  int64_t stride[5];
  int contiguous;
  int narrow;
};

// dtype codes
enum PhaseConvDtype {
  PHASECONV_FLOAT32 = 0,
  PHASECONV_FLOAT64 = 1,
  PHASECONV_FLOAT16 = 2,
  PHASECONV_BFLOAT16 = 3,
};

// One row of the device phase table (int64, PHASECONV_TABLE_STRIDE entries per phase;
// phases in row-major order over the residues (rd, rh, rw)).
enum PhaseTableField {
  PT_RES_D = 0, PT_RES_H = 1, PT_RES_W = 2,      // residues (first outputs) of the phase
  PT_TAPS_D = 3, PT_TAPS_H = 4, PT_TAPS_W = 5,   // taps per axis (0: bias-only phase)
  PT_OFF_D = 6, PT_OFF_H = 7, PT_OFF_W = 8,      // input offset of the first tap per axis
  PT_WOFS = 9,                                   // element offset of the phase in the packed weight
  PT_MOFS = 10,                                  // element offset of the phase in weight_mma
};
#define PHASECONV_TABLE_STRIDE 12

// Packed weight: for each phase p (table order), a block at element offset table[p].PT_WOFS,
// laid out [groups][C_in/groups][taps_d][taps_h][taps_w][C_out/groups] (C-contiguous), where
// the taps of each axis are in ascending input offset order.  Bias-only phases own no block.
//
// Tensor-core weight (weight_mma, optional; float32/float16/bfloat16 only): for each phase, a
// block at element offset table[p].PT_MOFS laid out [groups][taps][G][C_out/groups][CG]
// (CG = 16 bytes / element size = 4 or 8 channels; G = ceil((C_in/groups) / CG); channels
// past C_in/groups are zero), taps row-major over (taps_d, taps_h, taps_w) as above: every
// 16-byte row (tap, channel group, output channel) is one contiguous vector.
struct PhaseConvFwdParams {
  const void* x;          // (N, C_in, in_d, in_h, in_w), contiguous
  const void* weight;     // packed weight (see above), same dtype as x
  const void* bias;       // (C_out,) same dtype as x, or nullptr
  void* y;                // (N, C_out, out_d, out_h, out_w), contiguous; every element written
  const int64_t* table;   // device pointer, num_phases * PHASECONV_TABLE_STRIDE int64
  int64_t n, c_in, c_out, groups;
  int64_t in_d, in_h, in_w;
  int64_t out_d, out_h, out_w;
  int64_t stride_d, stride_h, stride_w;            // num_phases = product of strides
  int64_t pdil_d, pdil_h, pdil_w;                  // phase dilation d / gcd(s, d) per axis
  int64_t max_taps_d, max_taps_h, max_taps_w;      // max taps per axis over the phases
  int64_t total_taps;                              // sum over phases of taps_d*taps_h*taps_w
  const void* weight_mma;                          // see above, or nullptr
  int64_t union_lo_d, union_lo_h, union_lo_w;      // first input offset over all phases' taps
  int64_t union_ext_d, union_ext_h, union_ext_w;   // last minus first such offset, per axis
  int x_channels_last;  // 1: x is laid out (N, D, H, W, C_in) (see phase_conv_fwd_input_layout)
  // planning: the output is wanted channels-last; launching: y is laid out (N, D, H, W, C_out)
  // (only where the plan's y_channels_last says the kernel writes it so)
  int y_channels_last = 0;
  // grad-input mode only (phase_conv_bwd_input; the forward refuses nsub != 0)
  const int64_t* sub_table = nullptr;  // device, nsub rows of PHASECONV_TABLE_STRIDE int64
  int nsub = 0;
  int64_t in_stride_d = 1, in_stride_h = 1, in_stride_w = 1;
  // the operands as the definition reads them: where a stored element is not finite, the
  // kernels recompute it from its real pairs (phase_conv_exact.cuh)
  PhaseConvExact exact;
  // the TMA tiles: the weight itself (exact.b, its strides exact.bs) where
  // phase_conv_fwd_weight_in_place (phase_conv_bwd_input_weight_in_place) says they read it
  // in place, else nullptr (weight_mma then)
  const void* weight_cl = nullptr;
};

struct PhaseConvBwdWeightParams {
  const void* x;          // (N, C_in, D, H, W) contiguous (PHASECONV_GW_MMA_CL and
                          // PHASECONV_GW_MMA_NARROW: channels-last)
  const void* grad_y;     // (N, C_out, OD, OH, OW) contiguous (as x)
  void* grad_w;           // (C_in, C_out/groups, kD, kH, kW) as grad_w_view; every element written
  const int32_t* grad_w_index;       // packed element -> logical element of grad_w (device)
  PhaseConvWeightView grad_w_view;   // grad_w's sizes and strides
  void* workspace;        // the plan's ws_bytes, 16-byte aligned
  const int64_t* table;   // the forward's phase table (device)
  int64_t n, c_in, c_out, groups;
  int64_t in_d, in_h, in_w;
  int64_t out_d, out_h, out_w;
  int64_t stride_d, stride_h, stride_w;
  int64_t pdil_d, pdil_h, pdil_w;
  int64_t max_taps_d, max_taps_h, max_taps_w;
  int64_t packed_elems;   // elements of the packed weight
  // x and grad_y as the definition reads them: a non-finite gradient element is recomputed
  // from its real pairs (phase_conv_exact.cuh)
  PhaseConvExact exact;
};

enum PhaseConvFamily {
  PHASECONV_EMPTY = 0,      // nothing to compute (an empty output)
  PHASECONV_GEMM = 1,       // implicit GEMM (16-bit, wide layers)
  PHASECONV_ALLPHASE = 2,   // all-phase tensor-core kernel
  PHASECONV_MMA = 3,        // per-phase tensor-core kernel (grad-input mode too)
  PHASECONV_TILED = 4,      // SIMT tiles
  PHASECONV_NAIVE = 5,      // one thread per output (grad-input mode too)
  // the weight gradient's (phase_conv_bwd.cu)
  PHASECONV_GW_MMA = 6,     // per (phase, tap) GEMM on tensor cores
  PHASECONV_GW_SIMT = 7,    // SIMT register tiles over a staged input window
  PHASECONV_GW_NAIVE = 8,   // one thread per weight element (the window does not fit)
  // forcing only: the all-phase kernel where a tile fits, else the per-phase one
  PHASECONV_TENSOR_CORES = 9,
  PHASECONV_DEPTHWISE = 10, // a block per plane tile (C_in/groups = C_out/groups = 1);
                            // also the input gradient's depthwise kernel
  PHASECONV_GW_DEPTHWISE = 11,  // the weight gradient's depthwise kernel
  PHASECONV_GW_MMA_CL = 12, // per (phase, tap) GEMM on tensor cores, channels-last operands
  PHASECONV_GW_MMA_NARROW = 13,  // tensor cores over a staged input window, 8-channel layers
  PHASECONV_GI_NARROW = 14, // the input gradient's: tensor cores over a staged grad_y window
  PHASECONV_GW_WGMMA = 15,  // PHASECONV_GW_MMA_CL's GEMM on warpgroup MMA (sm_90a builds)
  PHASECONV_GW_WGMMA_TMA = 16,  // the same, its operands boxes copied by the TMA unit
};

// A kernel chosen by name instead of by the rule (tests, benchmarks).  The plan refuses a
// layer the named kernel cannot take: nothing is silently rerouted.
enum PhaseConvLayoutChoice {
  PHASECONV_LAYOUT_RULE = 0,
  PHASECONV_LAYOUT_CONTIGUOUS = 1,  // never the channels-last kernels
};
struct PhaseConvForce {
  int family = 0;        // 0: the rule; else a PhaseConvFamily
  int input_layout = PHASECONV_LAYOUT_RULE;
  int gemm_tile = -1;    // implicit GEMM tile kind (GemmCfg::kind), -1: the rule
  int gemm_one_phase = 0;  // implicit GEMM: one phase per block (no W-phase grouping)
  int gemm_k32 = 0;        // implicit GEMM: 32 channels a k step
  int direct_stores = 0;   // all-phase kernel: no staged output
  int allph_tile = -1;     // all-phase tile kind (AllCfg::kind), -1: the rule
};

namespace phaseconv {

// The device properties a plan reads.
struct DevInfo {
  int sms;
  size_t smem_optin;  // per block
  size_t smem_sm;     // per multiprocessor
  int wgmma = 0;      // sm_90 and the engine built for sm_90a: the warpgroup kernels run
};

// Constants the kernels and the plan share.
constexpr int kFlushTerms = 256;      // 3xTF32: accumulators flushed every this many terms
constexpr int kAllphMaxPhases = 32;   // the all-phase kernel's phase table (static smem)
constexpr int kGemmStages = 4;        // implicit GEMM pipeline depth, one phase per block
constexpr int kGemmGroupStages = 3;   // W phases grouped (shared memory also holds the output)
constexpr int kGemmMaxGroup = 4;      // W phases grouped at most (stride_w)
constexpr int kWgmmaStages = 5;       // implicit GEMM, warpgroup tile: pipeline depth
constexpr int kWgmmaGroupStages = 4;  // the same, W phases grouped
constexpr int kWgmmaWideStages = 4;   // the 4-warpgroup tile (256 rows, 48 KB a stage)
constexpr int kGemmSharedStages = 4;  // the shared-A tile (kind 6): its pipeline depth
constexpr int kGemmTmaStages = 4;     // the TMA tiles (kinds 8, 9) past 32 columns: their depth
constexpr int kGemmTmaThreads = 288;  // and their threads: two consumer warpgroups, a producer
// The TMA tiles' stages and blocks a multiprocessor by their columns: the 32-column tile
// keeps three stages, so that three blocks share a multiprocessor and one block's fill and
// write-out overlap the others' k steps (H100, bf16, 2 x 64->32 32^3 k3 s2: 83.4 -> 70.4 µs
// channels-last, 98.0 -> 83.9 (N, C, D, H, W)).  Wider tiles keep four stages and one block:
// three stages and two blocks lost there (512->256 16^3 input gradient 27.0 -> 32.6, 16 x
// 256->128 8^3 72.1 -> 78.2).  32-channel k steps (bkg 4: reductions over C/g an odd
// multiple of 32) halve a stage, so twice the stages keep as many bytes in flight.
constexpr int gemm_tma_stages(int bn, int bkg) {
  return (bn == 32 ? 3 : kGemmTmaStages) * (bkg == 4 ? 2 : 1);
}
constexpr int gemm_tma_min_blocks(int bn) { return bn == 32 ? 3 : 1; }
// The ping-pong TMA tile (kind 10): a producer warpgroup and two consumer warpgroups, each
// consumer a whole 128-row tile of its own (tiles alternate between them), so that one
// warpgroup's write-out overlaps the other's k steps.  Its ring of stages is shared by both,
// each consumer stages its output apart: four stages at 128 columns, six below, twice that
// for 32-channel k steps.
constexpr int kGemmPingpongThreads = 384;
constexpr int gemm_pingpong_stages(int bn, int bkg) {
  return (bn == 128 ? 4 : 6) * (bkg == 4 ? 2 : 1);
}
// The persistent 256-row TMA tile (kind 11, the same threads): three stages of 48 KB and its
// 64 KB output staged apart.
constexpr int kGemmTmaPersistentStages = 3;
// A TMA tile's rows: 256 for kind 9 and its persistent form (kind 11; BN 128 and 64-channel
// k steps only), else 128.
constexpr int gemm_tma_rows(int kind) { return kind == 9 || kind == 11 ? 256 : 128; }
// The implicit GEMM's pipeline depth, for its launcher and its plan: tile `kind` below 8
// (GemmCfg::kind: the shared-A, warpgroup and mma.sync tiles; the TMA tiles' goes by their
// columns, gemm_tma_stages), W phases grouped or one phase per block.
constexpr int gemm_pipeline_stages(int kind, bool wgroup) {
  return kind >= 6 ? kGemmSharedStages
         : kind == 5 ? kWgmmaWideStages
         : kind == 4 ? (wgroup ? kWgmmaGroupStages : kWgmmaStages)
                     : (wgroup ? kGemmGroupStages : kGemmStages);
}
constexpr int kGwThreads = 256;       // SIMT weight-gradient block
constexpr int kGmBK = 32;             // tensor-core weight gradient: reduction chunk
constexpr int kGmWM = 2, kGmWN = 2;   // its warps (a 64 x 64 channel tile)
constexpr int kGmBlocksPerSm = 8;     // its splits: about this many blocks per multiprocessor
constexpr int kGwClStages = 4;        // channels-last weight gradient: pipeline depth
constexpr int kGwWgBK = 64;           // warpgroup weight gradient: reduction chunk
constexpr int kGwWgStages = 4;        // its pipeline depth
constexpr int64_t kGwWgWsElems = 1 << 21;  // its workspace (splits x weight) at most, floats
constexpr int kGwClusterMax = 8;      // its TMA form: most splits a cluster adds (portable)
constexpr int kGwNarrowThreads = 256; // narrow weight gradient: threads per block
// the narrow weight gradient's m16n8 tiles a warp holds and phase outputs a tile holds at
// most, by element size: float32 (3xTF32) keeps its accumulator runs within kFlushTerms
constexpr int gw_narrow_items(int elem_size) { return elem_size == 4 ? 4 : 8; }
constexpr int gw_narrow_max_q(int elem_size) { return elem_size == 4 ? 256 : 512; }
constexpr int kGiNarrowThreads = 256; // narrow input gradient: threads per block
// its grad_x positions a block, by element size: two m16 tiles a warp, one for float32 (its
// window rows are twice as wide)
constexpr int gi_narrow_outputs(int elem_size) { return elem_size == 4 ? 128 : 256; }
constexpr int kDwThreads = 256;       // depthwise kernel: threads per block
constexpr int kDwRows = 4;            // its rows of one H phase per thread item
constexpr int kDwTileOutputs = 2048;  // its outputs per D position of a block, about
constexpr int kDwMaxRun = 8;          // its D positions per block (one D phase), at most
constexpr int kDwMaxSmem = 48 * 1024; // its shared memory at most (no opt-in)
constexpr int kDwBwdThreads = 256;    // depthwise backward kernels: threads per block
constexpr int kDwBwdRows = 4;         // their input rows per thread item
constexpr int kDwBwdWarpTaps = 8;     // weight gradient: taps a warp sums at once
constexpr int kDwBwdMaxTaps = 512;    // taps of all phases at most
constexpr int kDwBwdStageRows = 4;    // rows a thread stages per step (loads in flight)
constexpr int kDwBwdGwBlocks = 3;     // weight gradient: blocks per SM (launch bounds, splits)


// depthwise kernel (phase_conv_fwd_depthwise.cu: depthwise_kernel): a block owns one (n, c)
// plane, a run of d_run output D positions of one D phase (od = rd + stride_d * j for
// consecutive j) and a tile of output rows and columns that holds whole H and W phases; grid
// (planes, h_tiles * w_tiles, stride_d * d_chunks).  Its shared memory: the tile's phase
// decode, the channel's taps of its D phase, and the input slab the block reads,
// [slices][cols][pitch] (column major, so a thread's rows are consecutive words; pitch odd,
// so lanes on different columns hit different banks).
struct DepthwiseCfg {
  int64_t planes;        // N * C_out
  int h_tiles, w_tiles;  // tiles of tile_h x tile_w outputs
  int tile_h;            // stride_h * kDwRows * row_groups output rows
  int tile_w;            // a multiple of stride_w output columns
  int row_groups;        // row groups of kDwRows rows per H phase in a tile
  int d_run, d_chunks;   // D positions per block; runs per D phase (the longest phase's)
  int rows, cols, pitch; // the input rows and columns a tile reads, rows padded odd
  int fixed_taps;        // 2 or 4: taps per H and W axis at most, loops unrolled and H taps
                         // read from a register window (phase dilation 1 in H); 0: any
  int taps_stride;       // a phase's taps in shared memory: max taps_d * fixed_taps^2 (padded
                         // with zeros), or max taps_d * taps_h * taps_w
  size_t smem;
};

// depthwise backward kernels (phase_conv_bwd_depthwise.cu): a block owns a tile of
// tile_d x tile_h x tile_w input positions of one (n, c) plane and stages the box of grad_y
// their taps read, box_d x box_h x box_w from stride * (first position) - padding, column
// major ([slice][column][row], rows padded to hpitch, odd) with the columns split by W residue
// (ncols = stride_w * box_cols).  The input gradient: one block per (plane, tile), grid
// planes * tiles.  The weight gradient: one block per (channel, chunk of kDwBwdWarpTaps taps
// per warp, split of the channel's tiles over the batch), grid channels * tap_chunks * splits,
// each split writing a workspace slice; it stages the tile's inputs too ([d][w][h], rows
// padded to xpitch, odd).
struct DwBwdCfg {
  int tile_d, tile_h, tile_w;  // tile_h a multiple of kDwBwdRows, tile_w <= 32
  int d_tiles, h_tiles, w_tiles;
  int box_d, box_h, box_w;     // box_w <= kDwBwdThreads / 2
  int box_cols, ncols, hpitch, xpitch;
  int taps;                    // taps of all phases (or sub-problems)
  int tap_bytes;               // the tap list in shared memory, 16-byte multiple
  int tap_chunks, splits;      // weight gradient only (1, 1 for the input gradient)
  int64_t grid;
  size_t smem;
};

// SIMT tiled kernel (phase_conv_fwd_tiled.cu: tiled_kernel)
struct TileCfg {
  int LW, NY, NZ, WC, MD, MH, M, CO_T, threads;
  int ci_chunk, pitch, hh_max, hd_max, plane, s_w_elems;
  size_t smem;
  double cost;
};

// per-phase tensor-core kernel (phase_conv_fwd_mma.cu: mma_kernel)
struct MmaCfg {
  int kind;  // 0: MT4 NT1 4x1 warps (BN 8); 1: MT4 NT2 4x1 (BN 16); 2: MT4 NT4 2x2 (BN 64);
             // 3: MT4 NT4 2x4 (BN 128)
  int BM, BN, threads;
  int TD, TH, TW, ng;
  int x_bytes, w_bytes;
  size_t smem;
  double cost;
};

// all-phase tensor-core kernel (phase_conv_fwd_allphase.cu: mma_allph_kernel)
struct AllCfg {
  int kind;  // as MmaCfg::kind
  int BM, BN, threads;
  int TD, TH, TW, G;
  int hd, hh, hw;
  int x_bytes, w_bytes, x_buf;
  int stage_out, box_off, box_cs;  // see AllArgs
  int pair_w;                      // paired W stores (kind 4, sw == 2, even out_w; AllArgs)
  int x_single;                    // one halo copy where two do not fit (AllArgs)
  size_t smem;
  int64_t grid, per_cta, total_blocks;
  double cost;
};

// implicit-GEMM kernel (phase_conv_fwd_gemm_tiles.cuh: gemm_cl_kernel)
struct GemmCfg {
  int kind;  // 0: BN 32 (MT2 NT4, 4x1 warps); 1: BN 64 (MT4 NT4, 2x2); 2: BN 128 (MT4 NT4, 2x4);
             // 3: BN 64 (MT2 NT4, 4x2: twice the warps of 1); 4: sm_90a warpgroup tile,
             // BN 32, 64 or 128 (two warpgroups of 64 rows x BN, wgmma); 5: the same with
             // four warpgroups (256 rows: a quarter less operand traffic per multiply-add at
             // BN 128), one phase a block, its output staged in the drained stages; 6: the
             // phases share A (k == s, no padding: every phase reads the same input voxel with
             // one tap), a block holds its rows' A for the whole reduction and walks
             // (phase, BN 64 columns) chunks of the weight in 64-channel k steps (MT2 NT4,
             // 4x2 warps, mma.sync); 7: the same on wgmma (sm_90a), two warpgroups of 64 rows;
             // 8: the warpgroup tile fed by the TMA unit (sm_90a): 128 rows a box
             // of one phase's output voxels, a producer warp and mbarrier stages, k steps of
             // 64 channels (bkg 8) or, where C_in/g is an odd multiple of 32, of 32 (bkg 4);
             // 9: the same with 256 rows (128 a consumer warpgroup), BN 128, bkg 8;
             // 10: kind 8's tiles ping-ponged: persistent blocks of a producer warpgroup and
             // two consumer warpgroups, each consumer a whole tile, alternately; 11: kind 9's
             // tiles walked by such persistent blocks, both consumers on each tile
  int BM, BN, threads, m_tiles, co_blocks;
  int chunks, chunks_per_block;  // kinds 6, 7: (phase, column block) chunks, and per block
  bool wgroup;  // a block runs all W phases of a row tile and stores their outputs together
  bool a_ncdhw;  // A read from a contiguous (N, C, D, H, W) input (16-byte vectors along W)
  int bkg;       // 16-byte channel groups per k step (4 or 8)
  bool tf32;     // float32 by 3xTF32 (mma.sync tiles 0-3, channels-last A, one phase a block)
  bool flush;    // tf32: accumulators flushed every kFlushTerms terms (longer reductions)
  int box_d, box_h, box_w, box_nd, box_nh, box_nw;  // kind 8: the row tile's box of voxels
  size_t smem;
  int64_t total_blocks, grid;
};

// SIMT weight gradient (phase_conv_bwd.cu: gw_partial_kernel)
struct GwCfg {
  int reg;               // a thread's register tile: reg x reg (input, output) channels
  int ci_b, co_b, tc;    // input channels, output channels and taps per block
  int n_cib, n_cob, n_tch, splits;
  int lg_tpos;           // phase outputs per tile: 1 << lg_tpos (one D row)
  int win_max;           // window positions staged at most (smem sizing)
};

// narrow tensor-core weight gradient (phase_conv_bwd_narrow.cu: gw_narrow_kernel).  A block
// owns (split, phase, group, C_in octets, C_out octets, taps); its mma rows are (tap, input
// octet) pairs: nci octets of one tap, or two taps of one octet when nci is 1.
struct GwNarrowCfg {
  int nci, nco;          // 8-channel octets per block: input (1 or 2), output (1 or 2)
  int tc;                // taps per block
  int n_cib, n_cob, n_tch, splits;
  int tile_d, tile_h, tile_w;  // a tile of a phase's outputs
  int ksteps;            // its 16-output k steps (its outputs rounded up)
  int win_max;           // input window positions staged at most (per octet)
  size_t smem;
  int64_t grid;
};

// narrow tensor-core input gradient (phase_conv_bwd_input_narrow.cu: gi_narrow_kernel).  A
// block owns (batch, tile of gi_narrow_outputs grad_x positions, group, nci grad_x octets); its
// mma k steps are (tap, grad_y octet) pairs, two at a time, over a grad_y window whose W axis
// is stored by residue (win_w = stride_w x win_ws positions).
struct GiNarrowCfg {
  int nci, nco;                // octets: grad_x per block (1 or 2), grad_y (the group's: 1 or 2)
  int n_cib;                   // blocks over a group's grad_x octets
  int tile_d, tile_h, tile_w;  // the grad_x tile (tile_w 8, 16 or 32)
  int tiles_d, tiles_h, tiles_w;
  int win_d, win_h, win_w, win_ws;  // the window; win_ws positions per W residue
  int pairs;                   // (tap, grad_y octet) pairs, rounded up to even
  size_t smem;
  int64_t grid;
};

// tensor-core weight gradient (phase_conv_bwd.cu: gw_mma_kernel, gw_cl_kernel, gw_wgmma_kernel)
struct GmCfg {
  int max_taps, n_cib, n_cob, splits;
  int wn;       // gw_cl_kernel: warps along C_out/g (a 64 x 32 * wn channel tile);
                // gw_wgmma_kernel: its tile's C_out/g is 32 * wn
  int wgs = 0;  // gw_wgmma_kernel: warpgroups (a 64 * wgs x 32 * wn channel tile)
  int box_d = 1, box_h = 1, box_w = 1;  // gw_tma_kernel: a chunk's box of phase outputs
  int cluster = 0;  // gw_tma_kernel: a tile's splits are one cluster of this many blocks
                    // (1-8), which add them and store the gradient (no workspace, no
                    // reduction kernel); 0: each split writes the workspace
};

}  // namespace phaseconv

// The forward's plan (phase_conv_fwd_plan).
struct PhaseConvFwdPlan {
  int family;            // PhaseConvFamily
  int x_channels_last;   // the kernel reads x as (N, D, H, W, C_in), 16-byte aligned
  int y_channels_last;   // the kernel writes y as (N, D, H, W, C_out) (the implicit GEMM,
                         // where params.y_channels_last asked for it)
  int weight_mma;        // the kernel reads the tensor-core weight layout, else the packed one
  int64_t naive_grid;    // blocks of the naive kernel
  phaseconv::GemmCfg gemm;
  phaseconv::AllCfg allph;
  phaseconv::MmaCfg mma;
  phaseconv::TileCfg tiled;
  phaseconv::DepthwiseCfg depthwise;
  char text[384];        // what describe() prints
};

// The input gradient's plan (phase_conv_bwd_input_plan): one launch for all phases.
struct PhaseConvBwdInputPlan {
  int family;  // PHASECONV_EMPTY, PHASECONV_DEPTHWISE, PHASECONV_GEMM, PHASECONV_GI_NARROW,
               // PHASECONV_MMA or PHASECONV_NAIVE
  int grad_y_channels_last;  // the kernel reads grad_y as (N, D, H, W, C_out), 16-byte aligned,
                             // and the weight laid out [groups][kD][kH][kW][C_out/g / cg]
                             // [C_in/g][cg], cg 8, or 4 for float32's implicit GEMM
                             // (PHASECONV_GEMM, PHASECONV_GI_NARROW)
  int64_t naive_grid;
  phaseconv::GemmCfg gemm;  // reads grad_y channels-last (see phase_conv_bwd_input_plan)
  phaseconv::GiNarrowCfg narrow;
  phaseconv::MmaCfg mma;
  phaseconv::DwBwdCfg depthwise;
  char text[256];
};

// The weight gradient's plan (phase_conv_bwd_weight_plan).
struct PhaseConvBwdWeightPlan {
  int family;  // PHASECONV_EMPTY, PHASECONV_GW_DEPTHWISE, PHASECONV_GW_MMA_NARROW,
               // PHASECONV_GW_WGMMA, PHASECONV_GW_MMA_CL, PHASECONV_GW_MMA, PHASECONV_GW_SIMT
               // or PHASECONV_GW_NAIVE
  int operands_channels_last;  // the kernel reads x and grad_y as (N, D, H, W, C), 16-byte
                               // aligned (PHASECONV_GW_MMA_NARROW, PHASECONV_GW_MMA_CL,
                               // PHASECONV_GW_WGMMA)
  phaseconv::GwCfg gw;
  phaseconv::GwNarrowCfg narrow;
  phaseconv::GmCfg gm;
  phaseconv::DwBwdCfg depthwise;
  int64_t grid;
  size_t smem, ws_bytes;  // dynamic shared memory, workspace bytes (16-byte aligned base)
  char text[256];
};

// The forward (phase_conv_fwd.cu runs it).  Pointers in params are not read, except that
// weight_mma non-null says the tensor-core weight layout can be provided
// (float32/float16/bfloat16); x_channels_last says x is offered channels-last.  The plan
// says which input layout the kernel reads (plan->x_channels_last) and which weight layout
// (plan->weight_mma).  False: no kernel takes these parameters (or not the one forced);
// plan->text then says why.  dtype_code is a PhaseConvDtype.
bool phase_conv_fwd_plan(const PhaseConvFwdParams& params, int dtype_code,
                         const PhaseConvForce& force, const phaseconv::DevInfo& dev,
                         PhaseConvFwdPlan* plan);

// Whether the planned forward reads a weight (C_in, C_out/g, kD, kH, kW) of these sizes and
// element strides at address `base` in place, with no pack: the TMA tiles (kinds 8-11) do
// where the output channels are adjacent (stride 1, as in a channels_last_3d weight), every
// other stride of a dimension longer than 1 is a multiple of 16 bytes, and base is 16-byte
// aligned.  Then the launch takes params.weight_cl, not weight_mma.
bool phase_conv_fwd_weight_in_place(const PhaseConvFwdPlan& plan, const int64_t* sizes,
                                    const int64_t* strides, int elem_size, uintptr_t base);

// The input gradient in grad-input mode (phase_conv_fwd.cuh).  The rule: depthwise layers
// (C_in/groups = C_out/groups = 1, any dtype) the depthwise kernel where a tile's grad_y box
// fits 48 KB of shared memory and the taps of all phases number at most kDwBwdMaxTaps;
// float16/bfloat16 wide layers (C_out/g a multiple of 8 and >= 16, C_in/g >= 32) the implicit
// GEMM, which reads grad_y channels-last (16-byte aligned), taps stepping by the dilation from
// -padding (launch parameters: table one row, residue 0, every tap; pdil_* the dilation;
// weight_mma the weight laid out [groups][kD][kH][kW][C_out/g / cg][C_in/g][cg], cg 8 or 4
// for float32);
// float32/float16/bfloat16 layers with C_out/g 8 or 16 and C_in/g a multiple of 8 the narrow
// tensor-core kernel (PHASECONV_GI_NARROW: grad_y channels-last and the weight laid out as for
// the implicit GEMM) where a tile's grad_y window fits; the tensor-core kernel for
// float32/float16/bfloat16 with C_out/g and C_in/g >= 4 when a tile fits shared memory; else
// the naive kernel (any dtype).  plan->grad_y_channels_last says which kernels read grad_y
// channels-last.  force: 0 the rule, PHASECONV_DEPTHWISE, PHASECONV_GEMM,
// PHASECONV_GI_NARROW, PHASECONV_MMA or PHASECONV_NAIVE (false where the forced kernel does
// not apply); PHASECONV_GEMM may name the implicit GEMM's tile too, as its kind + 1 in the
// bits from PHASECONV_GI_TILE_SHIFT (tests, benchmarks).
constexpr int PHASECONV_GI_TILE_SHIFT = 8;
bool phase_conv_bwd_input_plan(const PhaseConvFwdParams& params, int dtype_code, int force,
                               const phaseconv::DevInfo& dev, PhaseConvBwdInputPlan* plan);

// The same as phase_conv_fwd_weight_in_place for the input gradient's plan, its 128-row TMA
// tiles (kinds 8, 10: they read the weight's output channels as their reduction); then the
// launch takes weight_cl.
bool phase_conv_bwd_input_weight_in_place(const PhaseConvBwdInputPlan& plan,
                                          const int64_t* sizes, const int64_t* strides,
                                          int elem_size, uintptr_t base);

// The weight gradient (phase_conv_bwd.cuh).  The rule: depthwise layers (any dtype) the
// depthwise kernel under the input gradient's conditions; float32/float16/bfloat16 with
// C_in/groups and C_out/groups multiples of 8, one of them 8, the narrow tensor-core kernel
// (PHASECONV_GW_MMA_NARROW: x and grad_y channels-last, 16-byte aligned) where a tile's window
// fits; float32/float16/bfloat16 with C_in/groups and C_out/groups both >= 16 (and a phase's
// outputs over the batch below 2^31) a tensor-core GEMM: float16/bfloat16 with both multiples
// of 8 the one that reads x and grad_y channels-last (PHASECONV_GW_MMA_CL; on sm_90a builds
// with C_in/groups >= 64 and C_out/groups >= 32 its warpgroup form, PHASECONV_GW_WGMMA), the
// others the one that reads them contiguous (PHASECONV_GW_MMA); float64 and the other narrow
// layers the SIMT one, and layers whose input window does not fit shared memory (huge
// dilations) a naive kernel, one thread per weight element.  force: 0 the rule,
// PHASECONV_GW_DEPTHWISE, PHASECONV_GW_MMA_NARROW, PHASECONV_GW_WGMMA, PHASECONV_GW_MMA_CL,
// PHASECONV_GW_MMA, PHASECONV_GW_SIMT or PHASECONV_GW_NAIVE; false where the forced kernel
// cannot take the layer.
bool phase_conv_bwd_weight_plan(const PhaseConvBwdWeightParams& params, int dtype_code,
                                int force, const phaseconv::DevInfo& dev,
                                PhaseConvBwdWeightPlan* plan);

// Whether a 3xTF32 launch needs the FLUSH kernel variant: a reduction (per output voxel)
// longer than kFlushTerms.  Forward: C_in/g x the most taps of a phase; grad-input mode:
// C_in/g (grad_y's channels) x the taps of all sub-problems.
inline bool phase_conv_needs_flush(const PhaseConvFwdParams& p, int dtype_code) {
  if (dtype_code != PHASECONV_FLOAT32) return false;
  const int64_t taps = p.nsub > 0 ? p.total_taps
                                  : p.max_taps_d * p.max_taps_h * p.max_taps_w;
  return (p.c_in / p.groups) * taps > phaseconv::kFlushTerms;
}
