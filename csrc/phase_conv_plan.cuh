// phaseconv: kernel plans.  A plan is a value computed once from the launch parameters
// (shapes, dtype, layout, arguments) and the device's properties: which kernel family runs,
// its tile, and which input and weight layouts it reads.  The launchers take a plan, so a
// layer's repeated calls skip the tile search, and describe() reads the same value.
//
// This header includes only CUDA's own headers, so it builds without torch.
#pragma once

#include <stddef.h>
#include <stdint.h>

namespace phaseconv {

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
  size_t smem;
  int64_t grid, per_cta, total_blocks;
  double cost;
};

// implicit-GEMM kernel (phase_conv_fwd_gemm.cu: gemm_cl_kernel)
struct GemmCfg {
  int kind;  // 0: BN 32 (MT2 NT4, 4x1 warps); 1: BN 64 (MT4 NT4, 2x2); 2: BN 128 (MT4 NT4, 2x4);
             // 3: BN 64 (MT2 NT4, 4x2: twice the warps of 1)
  int BM, BN, threads, m_tiles, co_blocks;
  bool wgroup;  // a block runs all W phases of a row tile and stores their outputs together
  bool a_ncdhw;  // A read from a contiguous (N, C, D, H, W) input (16-byte vectors along W)
  int bkg;       // 16-byte channel groups per k step (4 or 8)
  size_t smem;
  int64_t total_blocks, grid;
};

}  // namespace phaseconv

enum PhaseConvFamily {
  PHASECONV_EMPTY = 0,      // nothing to compute (an empty output)
  PHASECONV_GEMM = 1,       // implicit GEMM (16-bit, wide layers)
  PHASECONV_ALLPHASE = 2,   // all-phase tensor-core kernel
  PHASECONV_MMA = 3,        // per-phase tensor-core kernel (grad-input mode too)
  PHASECONV_TILED = 4,      // SIMT tiles
  PHASECONV_NAIVE = 5,      // one thread per output (grad-input mode too)
};

// The forward's plan (phase_conv_fwd_plan).
struct PhaseConvFwdPlan {
  int family;            // PhaseConvFamily
  int x_channels_last;   // the kernel reads x as (N, D, H, W, C_in), 16-byte aligned
  int weight_mma;        // the kernel reads the tensor-core weight layout, else the packed one
  phaseconv::GemmCfg gemm;
  phaseconv::AllCfg allph;
  phaseconv::MmaCfg mma;
  phaseconv::TileCfg tiled;
  char text[384];        // what describe() prints
};

// The input gradient's plan (phase_conv_bwd_input_plan): the per-phase tensor-core kernel or
// the naive kernel, both in grad-input mode (one launch for all phases).
struct PhaseConvBwdInputPlan {
  int family;  // PHASECONV_EMPTY, PHASECONV_MMA or PHASECONV_NAIVE
  phaseconv::MmaCfg mma;
  char text[256];
};
