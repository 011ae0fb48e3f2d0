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

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <stdio.h>

namespace phaseconv {
namespace {

// ---------------------------------------------------------------- dtype helpers
template <typename T> struct AccOf { typedef float type; };
template <> struct AccOf<double> { typedef double type; };

template <typename A, typename T> __device__ __forceinline__ A to_acc(T v) { return (A)v; }
template <> __device__ __forceinline__ float to_acc<float, __half>(__half v) {
  return __half2float(v);
}
template <> __device__ __forceinline__ float to_acc<float, __nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <typename T, typename A> __device__ __forceinline__ T from_acc(A v) { return (T)v; }
template <> __device__ __forceinline__ __half from_acc<__half, float>(float v) {
  return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T> __device__ __forceinline__ T ldg(const T* p) { return __ldg(p); }
template <> __device__ __forceinline__ __half ldg<__half>(const __half* p) {
  unsigned short r = __ldg(reinterpret_cast<const unsigned short*>(p));
  return __ushort_as_half(r);
}
template <> __device__ __forceinline__ __nv_bfloat16 ldg<__nv_bfloat16>(const __nv_bfloat16* p) {
  unsigned short r = __ldg(reinterpret_cast<const unsigned short*>(p));
  __nv_bfloat16 out;
  *reinterpret_cast<unsigned short*>(&out) = r;
  return out;
}

__device__ __forceinline__ int64_t ldg_i64(const int64_t* p) {
  return (int64_t)__ldg(reinterpret_cast<const long long*>(p));
}

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

__device__ __forceinline__ int axis_count(int out, int r, int s) {
  return out > r ? (out - r + s - 1) / s : 0;
}

// ---------------------------------------------------------------- tiled kernel
struct TiledArgs {
  const void* x;
  const void* w;
  const void* bias;
  void* y;
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
    int ph, bw, bh, bd, cb, g;
    int64_t n;
    if (a.total_blocks <= 0xffffffffLL) {  // 32-bit decode: 64-bit division is slow
      uint32_t r = (uint32_t)blk;
      ph = (int)(r % (uint32_t)a.num_phases); r /= (uint32_t)a.num_phases;
      bw = (int)(r % (uint32_t)a.tiles_w); r /= (uint32_t)a.tiles_w;
      bh = (int)(r % (uint32_t)a.tiles_h); r /= (uint32_t)a.tiles_h;
      bd = (int)(r % (uint32_t)a.tiles_d); r /= (uint32_t)a.tiles_d;
      n = (int64_t)(r % (uint32_t)a.nbatch); r /= (uint32_t)a.nbatch;
      cb = (int)(r % (uint32_t)a.co_blocks); r /= (uint32_t)a.co_blocks;
      g = (int)r;
    } else {
      int64_t r = blk;
      ph = (int)(r % a.num_phases); r /= a.num_phases;
      bw = (int)(r % a.tiles_w); r /= a.tiles_w;
      bh = (int)(r % a.tiles_h); r /= a.tiles_h;
      bd = (int)(r % a.tiles_d); r /= a.tiles_d;
      n = r % a.nbatch; r /= a.nbatch;
      cb = (int)(r % a.co_blocks); r /= a.co_blocks;
      g = (int)r;
    }

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
            y[(n * a.c_out + oc) * out_plane + sp] = from_acc<T>(v);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------- naive kernel
struct NaiveArgs {
  const void* x;
  const void* w;
  const void* bias;
  void* y;
  const int64_t* table;
  int64_t nbatch;
  int c_in, c_out, cin_g, cout_g;
  int in_d, in_h, in_w, out_d, out_h, out_w;
  int sd, sh, sw, pdd, pdh, pdw;
  int64_t total;
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
};

template <typename T> struct MmaT;
template <> struct MmaT<__nv_bfloat16> { enum { CG = 8 }; };
template <> struct MmaT<__half> { enum { CG = 8 }; };
template <> struct MmaT<float> { enum { CG = 4 }; };

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x2(uint32_t& r0, uint32_t& r1, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r0), "=r"(r1) : "r"(addr));
}

template <typename T> struct MmaOp;
template <> struct MmaOp<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <> struct MmaOp<__half> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
// float goes through the 3xTF32 branch of mma_kernel; this keeps that branch compilable.
template <> struct MmaOp<float> {
  static __device__ __forceinline__ void run(float (&)[4], const uint32_t (&)[4], uint32_t,
                                             uint32_t) {}
};
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t to_tf32(float f) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(f));
  return r;
}
// x = big + small, both representable in tf32
__device__ __forceinline__ void split_tf32(uint32_t x, uint32_t& big, uint32_t& small) {
  const float f = __uint_as_float(x);
  big = to_tf32(f);
  small = to_tf32(f - __uint_as_float(big));
}

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

// Register cap from the occupancy wanted (small tiles: 6 blocks of 4 warps per SM).
template <int MT, int NT, int THREADS> struct MmaMinBlocks {
  enum { value = (MT * NT <= 4) ? 6 : (THREADS >= 256 ? 1 : 3) };
};

template <typename T, int MT, int NT, int WARPS_M, int WARPS_N>
__global__ void __launch_bounds__(WARPS_M * WARPS_N * 32,
                                  (MmaMinBlocks<MT, NT, WARPS_M * WARPS_N * 32>::value))
mma_kernel(const MmaArgs a) {
  constexpr int CG = MmaT<T>::CG;
  constexpr int NTHR = WARPS_M * WARPS_N * 32;
  constexpr int BN = WARPS_N * NT * 8;
  constexpr bool TF32 = sizeof(T) == 4;
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
    int ph, bw, bh, bd, cb, g;
    int64_t n;
    if (a.total_blocks <= 0xffffffffLL) {  // 32-bit decode: 64-bit division is slow
      uint32_t r = (uint32_t)blk;
      ph = (int)(r % (uint32_t)a.num_phases); r /= (uint32_t)a.num_phases;
      bw = (int)(r % (uint32_t)a.tiles_w); r /= (uint32_t)a.tiles_w;
      bh = (int)(r % (uint32_t)a.tiles_h); r /= (uint32_t)a.tiles_h;
      bd = (int)(r % (uint32_t)a.tiles_d); r /= (uint32_t)a.tiles_d;
      n = (int64_t)(r % (uint32_t)a.nbatch); r /= (uint32_t)a.nbatch;
      cb = (int)(r % (uint32_t)a.co_blocks); r /= (uint32_t)a.co_blocks;
      g = (int)r;
    } else {
      int64_t r = blk;
      ph = (int)(r % a.num_phases); r /= a.num_phases;
      bw = (int)(r % a.tiles_w); r /= a.tiles_w;
      bh = (int)(r % a.tiles_h); r /= a.tiles_h;
      bd = (int)(r % a.tiles_d); r /= a.tiles_d;
      n = r % a.nbatch; r /= a.nbatch;
      cb = (int)(r % a.co_blocks); r /= a.co_blocks;
      g = (int)r;
    }

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

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int k = 0; k < 4; ++k) acc[i][j][k] = 0.f;

    if (taps > 0) {
      const int offd = (int)ldg_i64(e + PT_OFF_D), offh = (int)ldg_i64(e + PT_OFF_H),
                offw = (int)ldg_i64(e + PT_OFF_W);
      const int64_t wofs = ldg_i64(e + PT_WOFS);
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
              if ((unsigned)gd < (unsigned)a.in_d && (unsigned)gh < (unsigned)a.in_h &&
                  (unsigned)gw < (unsigned)a.in_w) {
                const int ci = c0 + grp * CG;
                v[u] = Gather16<T>::run(x + xg + (int64_t)ci * in_plane +
                                            ((int64_t)gd * a.in_h + gh) * a.in_w + gw,
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
          {
            // lanes 0-7: (n tile j, half 0), 8-15: (j, half 1), 16-23: (j+1, 0), 24-31: (j+1, 1)
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
          if (TF32) {
            uint32_t bb[NT][2], bs[NT][2];
#pragma unroll
            for (int j = 0; j < NT; ++j) {
              split_tf32(bf[j][0], bb[j][0], bs[j][0]);
              split_tf32(bf[j][1], bb[j][1], bs[j][1]);
            }
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
              uint32_t ab[4], as[4];
#pragma unroll
              for (int k = 0; k < 4; ++k) split_tf32(af[mt][k], ab[k], as[k]);
#pragma unroll
              for (int j = 0; j < NT; ++j) {
                mma_tf32(acc[mt][j], as, bb[j][0], bb[j][1]);
                mma_tf32(acc[mt][j], ab, bs[j][0], bs[j][1]);
                mma_tf32(acc[mt][j], ab, bb[j][0], bb[j][1]);
              }
            }
          } else {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
              for (int j = 0; j < NT; ++j) MmaOp<T>::run(acc[mt][j], af[mt], bf[j][0], bf[j][1]);
          }
        }
      }
    }

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
                y[(n * a.c_out + oc) * out_plane + sp] = from_acc<T>(v);
              }
            }
          }
        }
      }
    }
  }
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
  int x_bytes, w_bytes;
  int64_t total_blocks, per_cta;
};

// fp32 (3xTF32) small tiles are shared-memory limited to ~3-4 blocks: give them registers.
template <typename T, int MT, int NT, int THREADS> struct AllMinBlocks {
  enum { value = (MT * NT <= 4) ? (sizeof(T) == 4 ? 4 : 6) : (THREADS >= 256 ? 1 : 3) };
};

template <typename T, int MT, int NT, int WARPS_M, int WARPS_N>
__global__ void __launch_bounds__(WARPS_M * WARPS_N * 32,
                                  (AllMinBlocks<T, MT, NT, WARPS_M * WARPS_N * 32>::value))
mma_allph_kernel(const AllArgs a) {
  constexpr int CG = MmaT<T>::CG;
  constexpr int NTHR = WARPS_M * WARPS_N * 32;
  constexpr int BN = WARPS_N * NT * 8;
  constexpr bool TF32 = sizeof(T) == 4;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ int s_pi[PHASECONV_ALLPH_MAXPH][8];  // rd rh rw cd ch cw hbase nh2
  unsigned char* s_x = smem_raw;
  unsigned char* s_w = smem_raw + a.x_bytes;
  int* s_hoff = reinterpret_cast<int*>(smem_raw + a.x_bytes + a.w_bytes);
  const uint32_t sx_addr = (uint32_t)__cvta_generic_to_shared(s_x);
  const uint32_t sw_addr = (uint32_t)__cvta_generic_to_shared(s_w);
  const int x_small = TF32 ? a.x_bytes / 2 : 0;  // byte offset of the tf32 small parts

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

  int last_gc = -1;  // (group, C_out block) whose weights are staged
  const int64_t b_lo = (int64_t)blockIdx.x * a.per_cta;
  int64_t b_hi = b_lo + a.per_cta;
  if (b_hi > a.total_blocks) b_hi = a.total_blocks;
  for (int64_t blk = b_lo; blk < b_hi; ++blk) {
    int bw, bh, bd, cb, g;
    int64_t n;
    if (a.total_blocks <= 0xffffffffLL) {  // 32-bit decode: 64-bit division is slow
      uint32_t r = (uint32_t)blk;
      bw = (int)(r % (uint32_t)a.tiles_w); r /= (uint32_t)a.tiles_w;
      bh = (int)(r % (uint32_t)a.tiles_h); r /= (uint32_t)a.tiles_h;
      bd = (int)(r % (uint32_t)a.tiles_d); r /= (uint32_t)a.tiles_d;
      n = (int64_t)(r % (uint32_t)a.nbatch); r /= (uint32_t)a.nbatch;
      cb = (int)(r % (uint32_t)a.co_blocks); r /= (uint32_t)a.co_blocks;
      g = (int)r;
    } else {
      int64_t r = blk;
      bw = (int)(r % a.tiles_w); r /= a.tiles_w;
      bh = (int)(r % a.tiles_h); r /= a.tiles_h;
      bd = (int)(r % a.tiles_d); r /= a.tiles_d;
      n = r % a.nbatch; r /= a.nbatch;
      cb = (int)(r % a.co_blocks); r /= a.co_blocks;
      g = (int)r;
    }
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
    {
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

    for (int p = 0; p < np; ++p) {
      const int cd = s_pi[p][3], ch = s_pi[p][4], cw = s_pi[p][5];
      if (d0 >= cd || h0 >= ch || w0 >= cw) continue;  // uniform over the block
      const int hbase = s_pi[p][6], hend = hbase + s_pi[p][7];
      float acc[MT][NT][4];
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int k = 0; k < 4; ++k) acc[i][j][k] = 0.f;
      for (int h = hbase; h < hend; h += 2) {
        const int off = s_hoff[h + ahalf];
        uint32_t af[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) ldsm_x4(af[mt], sx_addr + apos[mt] + off);
        uint32_t bf[NT][2];
        {
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
        if (TF32) {
          uint32_t bb[NT][2], bs[NT][2];
#pragma unroll
          for (int j = 0; j < NT; ++j) {
            split_tf32(bf[j][0], bb[j][0], bs[j][0]);
            split_tf32(bf[j][1], bb[j][1], bs[j][1]);
          }
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            uint32_t as[4];  // af[mt] holds the big parts already (the halo is staged split)
            ldsm_x4(as, sx_addr + x_small + apos[mt] + off);
#pragma unroll
            for (int j = 0; j < NT; ++j) {
              mma_tf32(acc[mt][j], as, bb[j][0], bb[j][1]);
              mma_tf32(acc[mt][j], af[mt], bs[j][0], bs[j][1]);
              mma_tf32(acc[mt][j], af[mt], bb[j][0], bb[j][1]);
            }
          }
        } else {
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int j = 0; j < NT; ++j) MmaOp<T>::run(acc[mt][j], af[mt], bf[j][0], bf[j][1]);
        }
      }
      // store: C fragment rows lane/4 and lane/4 + 8, columns 2*(lane%4) + {0, 1}
      const int rd = s_pi[p][0], rh = s_pi[p][1], rw = s_pi[p][2];
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
                if (co < a.cout_g)
                  yp[(int64_t)co * out_plane] = from_acc<T>(acc[mt][j][half * 2 + c] + bv[j][c]);
              }
            }
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------- host side
struct TileCfg {
  int LW, NY, NZ, WC, MD, MH, M, CO_T, threads;
  int ci_chunk, pitch, hh_max, hd_max, plane, s_w_elems;
  size_t smem;
  double cost;
};

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

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
struct MmaCfg {
  int kind;  // 0: MT4 NT1 4x1 warps (BN 8); 1: MT4 NT2 4x1 (BN 16); 2: MT4 NT4 2x2 (BN 64);
             // 3: MT4 NT4 2x4 (BN 128)
  int BM, BN, threads;
  int TD, TH, TW, ng;
  int x_bytes, w_bytes;
  size_t smem;
  double cost;
};

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

template <typename T, int MT, int NT, int WM, int WN>
cudaError_t launch_mma_t(const MmaArgs& a, const MmaCfg& c, int64_t grid, cudaStream_t stream) {
  if (c.smem > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(mma_kernel<T, MT, NT, WM, WN>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)c.smem);
    if (err != cudaSuccess) return err;
  }
  mma_kernel<T, MT, NT, WM, WN><<<(unsigned)grid, WM * WN * 32, c.smem, stream>>>(a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t run_mma(const PhaseConvFwdParams& p, const MmaCfg& c, cudaStream_t stream) {
  MmaArgs a;
  a.x = p.x; a.w = p.weight; a.bias = p.bias; a.y = p.y; a.table = p.table;
  a.nbatch = p.n;
  a.c_in = (int)p.c_in; a.c_out = (int)p.c_out;
  a.cin_g = (int)(p.c_in / p.groups); a.cout_g = (int)(p.c_out / p.groups);
  a.in_d = (int)p.in_d; a.in_h = (int)p.in_h; a.in_w = (int)p.in_w;
  a.out_d = (int)p.out_d; a.out_h = (int)p.out_h; a.out_w = (int)p.out_w;
  a.sd = (int)p.stride_d; a.sh = (int)p.stride_h; a.sw = (int)p.stride_w;
  a.pdd = (int)p.pdil_d; a.pdh = (int)p.pdil_h; a.pdw = (int)p.pdil_w;
  a.num_phases = (int)(p.stride_d * p.stride_h * p.stride_w);
  a.TD = c.TD; a.TH = c.TH; a.TW = c.TW;
  a.tiles_w = (int)cdiv(cdiv(p.out_w, p.stride_w), c.TW);
  a.tiles_h = (int)cdiv(cdiv(p.out_h, p.stride_h), c.TH);
  a.tiles_d = (int)cdiv(cdiv(p.out_d, p.stride_d), c.TD);
  a.co_blocks = (int)cdiv(a.cout_g, c.BN);
  a.ng = c.ng; a.x_bytes = c.x_bytes; a.w_bytes = c.w_bytes;
  a.total_blocks = (int64_t)a.num_phases * a.tiles_w * a.tiles_h * a.tiles_d * p.n *
                   a.co_blocks * p.groups;
  int64_t grid = a.total_blocks;
  if (grid > 0x7fffffffLL) grid = 0x7fffffffLL;
  switch (c.kind) {
    case 0: return launch_mma_t<T, 4, 1, 4, 1>(a, c, grid, stream);
    case 1: return launch_mma_t<T, 4, 2, 4, 1>(a, c, grid, stream);
    case 2: return launch_mma_t<T, 4, 4, 2, 2>(a, c, grid, stream);
    case 3: return launch_mma_t<T, 4, 4, 2, 4>(a, c, grid, stream);
  }
  return cudaErrorInvalidConfiguration;
}

// ---------------------------------------------------------------- all-phase host side
struct AllCfg {
  int kind;  // as MmaCfg::kind
  int BM, BN, threads;
  int TD, TH, TW, G;
  int hd, hh, hw;
  int x_bytes, w_bytes;
  size_t smem;
  int64_t grid, per_cta, total_blocks;
  double cost;
};

inline int ilog2(int v) {
  int r = 0;
  while ((1 << (r + 1)) <= v) ++r;
  return r;
}

bool choose_allph(const PhaseConvFwdParams& p, int dtype_code, const DevInfo& dev,
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
  // kernel (which chunks C_in/g) measured faster (k2-128, 2026-11-25)
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
        // inner loop does no conversions (each A fragment meets only NT n-tiles)
        const int64_t xb = npos * rowstride * (CG == 4 ? 2 : 1);
        if (xb >= ((int64_t)1 << 30) || wb >= ((int64_t)1 << 30)) continue;
        const size_t smem = (size_t)(xb + wb + hb);
        if (smem > cap) continue;
        const int64_t tiles = cdiv(cw, TW) * cdiv(ch, TH) * cdiv(cd, TD);
        const double blocks = (double)tiles * p.n * co_blocks * p.groups;
        const double kpad = (double)G * CG;
        const double compute = blocks * num_phases * BM * (double)BN * avg_taps * kpad / 64.0;
        const double stage = blocks * ((double)npos * kpad * 2.0);
        const double store = blocks * num_phases * BM * (double)BN * 1.0;
        double cost = compute + stage + store;
        int64_t res = 2048 / kinds_thr[kind];
        const int64_t by_smem = (int64_t)(dev.smem_sm / (smem + 1024 + 2048));
        if (by_smem < res) res = by_smem;
        const int64_t reg_cap = kind == 0 ? (CG == 4 ? 4 : 6) : (kind == 3 ? 1 : 3);
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
          c.x_bytes = (int)xb; c.w_bytes = (int)wb; c.smem = smem; c.cost = cost;
          c.total_blocks = (int64_t)tiles * p.n * co_blocks * p.groups;
          // each CTA takes per_cta consecutive tiles (same group: the weights stay staged),
          // and all CTAs fit in one wave: with floor(total / slots) tiles a CTA, the few CTAs
          // past the first wave ran a whole second round alone (ncu, founding: 1.09 waves)
          int64_t per = cdiv(c.total_blocks, (int64_t)slots);
          if (per < 1) per = 1;
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

template <typename T, int MT, int NT, int WM, int WN>
cudaError_t launch_allph_t(const AllArgs& a, const AllCfg& c, cudaStream_t stream) {
  if (c.smem + 1024 > 48 * 1024) {  // static + dynamic past 48 KB needs the opt-in
    cudaError_t err = cudaFuncSetAttribute(mma_allph_kernel<T, MT, NT, WM, WN>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)c.smem);
    if (err != cudaSuccess) return err;
  }
  if (c.total_blocks == 0) return cudaSuccess;
  mma_allph_kernel<T, MT, NT, WM, WN><<<(unsigned)c.grid, WM * WN * 32, c.smem, stream>>>(a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t run_allph(const PhaseConvFwdParams& p, const AllCfg& c, cudaStream_t stream) {
  AllArgs a;
  a.x = p.x; a.wm = p.weight_mma; a.bias = p.bias; a.y = p.y; a.table = p.table;
  a.nbatch = p.n;
  a.c_in = (int)p.c_in; a.c_out = (int)p.c_out;
  a.cin_g = (int)(p.c_in / p.groups); a.cout_g = (int)(p.c_out / p.groups);
  a.in_d = (int)p.in_d; a.in_h = (int)p.in_h; a.in_w = (int)p.in_w;
  a.out_d = (int)p.out_d; a.out_h = (int)p.out_h; a.out_w = (int)p.out_w;
  a.sd = (int)p.stride_d; a.sh = (int)p.stride_h; a.sw = (int)p.stride_w;
  a.pdd = (int)p.pdil_d; a.pdh = (int)p.pdil_h; a.pdw = (int)p.pdil_w;
  a.num_phases = (int)(p.stride_d * p.stride_h * p.stride_w);
  a.TD = c.TD; a.TH = c.TH; a.TW = c.TW;
  a.lg_tw = ilog2(c.TW); a.lg_thw = ilog2(c.TH * c.TW);
  a.hd = c.hd; a.hh = c.hh; a.hw = c.hw;
  a.ulo_d = (int)p.union_lo_d; a.ulo_h = (int)p.union_lo_h; a.ulo_w = (int)p.union_lo_w;
  a.tiles_w = (int)cdiv(cdiv(p.out_w, p.stride_w), c.TW);
  a.tiles_h = (int)cdiv(cdiv(p.out_h, p.stride_h), c.TH);
  a.tiles_d = (int)cdiv(cdiv(p.out_d, p.stride_d), c.TD);
  a.co_blocks = (int)cdiv(a.cout_g, c.BN);
  a.G = c.G; a.x_bytes = c.x_bytes; a.w_bytes = c.w_bytes;
  a.total_blocks = c.total_blocks; a.per_cta = c.per_cta;
  switch (c.kind) {
    case 0: return launch_allph_t<T, 4, 1, 4, 1>(a, c, stream);
    case 1: return launch_allph_t<T, 4, 2, 4, 1>(a, c, stream);
    case 2: return launch_allph_t<T, 4, 4, 2, 2>(a, c, stream);
    case 3: return launch_allph_t<T, 4, 4, 2, 4>(a, c, stream);
  }
  return cudaErrorInvalidConfiguration;
}

// Whether the tensor-core path runs (force_path: 0 auto, 1 SIMT tiled, 2 naive, 3 tensor cores).
bool want_mma(const PhaseConvFwdParams& p, int dtype_code) {
  if (dtype_code == PHASECONV_FLOAT64) return false;
  if (p.force_path == 3 || p.force_path == 4) return true;
  if (p.force_path != 0) return false;
  const int64_t cin_g = p.c_in / p.groups, cout_g = p.c_out / p.groups;
  if (dtype_code == PHASECONV_FLOAT32) {
    // 3xTF32: the tensor cores' fp32 accumulation truncates, an error that grows with the
    // reduction length; past 256 terms (measured 1.4e-5 relative at 2048) FFMA runs instead.
    const int64_t red = cin_g * p.max_taps_d * p.max_taps_h * p.max_taps_w;
    if (red > 256) return false;
  }
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
cudaError_t run_allph_typed(const PhaseConvFwdParams& p, const AllCfg& c, cudaStream_t stream) {
  return run_allph<T>(p, c, stream);
}
template <>
cudaError_t run_allph_typed<double>(const PhaseConvFwdParams&, const AllCfg&, cudaStream_t) {
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t run_typed(const PhaseConvFwdParams& p, int dtype_code, cudaStream_t stream) {
  const int64_t total = p.n * p.c_out * p.out_d * p.out_h * p.out_w;
  if (total == 0) return cudaSuccess;
  DevInfo dev;
  cudaError_t err = dev_info(&dev);
  if (err != cudaSuccess) return err;
  if (want_mma(p, dtype_code)) {
    AllCfg ac;
    if (p.force_path != 4 && choose_allph(p, dtype_code, dev, &ac))
      return run_allph_typed<T>(p, ac, stream);
    MmaCfg mc;
    if (choose_mma(p, dtype_code, dev, &mc)) return run_mma_typed<T>(p, mc, stream);
  }
  TileCfg c;
  const bool tiled = p.force_path != 2 && choose_tiled(p, dtype_code, dev, &c);
  if (tiled) {
    TiledArgs a;
    a.x = p.x; a.w = p.weight; a.bias = p.bias; a.y = p.y; a.table = p.table;
    a.nbatch = p.n;
    a.c_in = (int)p.c_in; a.c_out = (int)p.c_out;
    a.cin_g = (int)(p.c_in / p.groups); a.cout_g = (int)(p.c_out / p.groups);
    a.in_d = (int)p.in_d; a.in_h = (int)p.in_h; a.in_w = (int)p.in_w;
    a.out_d = (int)p.out_d; a.out_h = (int)p.out_h; a.out_w = (int)p.out_w;
    a.sd = (int)p.stride_d; a.sh = (int)p.stride_h; a.sw = (int)p.stride_w;
    a.pdd = (int)p.pdil_d; a.pdh = (int)p.pdil_h; a.pdw = (int)p.pdil_w;
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
  NaiveArgs a;
  a.x = p.x; a.w = p.weight; a.bias = p.bias; a.y = p.y; a.table = p.table;
  a.nbatch = p.n;
  a.c_in = (int)p.c_in; a.c_out = (int)p.c_out;
  a.cin_g = (int)(p.c_in / p.groups); a.cout_g = (int)(p.c_out / p.groups);
  a.in_d = (int)p.in_d; a.in_h = (int)p.in_h; a.in_w = (int)p.in_w;
  a.out_d = (int)p.out_d; a.out_h = (int)p.out_h; a.out_w = (int)p.out_w;
  a.sd = (int)p.stride_d; a.sh = (int)p.stride_h; a.sw = (int)p.stride_w;
  a.pdd = (int)p.pdil_d; a.pdh = (int)p.pdil_h; a.pdw = (int)p.pdil_w;
  a.total = total;
  int64_t blocks = cdiv(total, 256);
  const int64_t cap = (int64_t)dev.sms * 32;
  if (blocks > cap) blocks = cap;
  naive_kernel<T><<<(unsigned)blocks, 256, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace
}  // namespace phaseconv

cudaError_t phase_conv_fwd(const PhaseConvFwdParams& params, int dtype_code,
                           cudaStream_t stream) {
  using namespace phaseconv;
  switch (dtype_code) {
    case PHASECONV_FLOAT32: return run_typed<float>(params, dtype_code, stream);
    case PHASECONV_FLOAT64: return run_typed<double>(params, dtype_code, stream);
    case PHASECONV_FLOAT16: return run_typed<__half>(params, dtype_code, stream);
    case PHASECONV_BFLOAT16: return run_typed<__nv_bfloat16>(params, dtype_code, stream);
  }
  return cudaErrorInvalidValue;
}

void phase_conv_fwd_describe(const PhaseConvFwdParams& params, int dtype_code, char* buf,
                             int len) {
  using namespace phaseconv;
  if (len <= 0) return;
  DevInfo dev;
  if (dev_info(&dev) != cudaSuccess) {
    snprintf(buf, len, "no device");
    return;
  }
  AllCfg ac;
  if (want_mma(params, dtype_code) && params.force_path != 4 &&
      choose_allph(params, dtype_code, dev, &ac)) {
    snprintf(buf, len,
             "mma-allphase kind=%d BM=%d BN=%d threads=%d tile(d,h,w)=(%d,%d,%d) halo=(%d,%d,%d) "
             "G=%d smem=%zu grid=%lld per_cta=%lld",
             ac.kind, ac.BM, ac.BN, ac.threads, ac.TD, ac.TH, ac.TW, ac.hd, ac.hh, ac.hw, ac.G,
             ac.smem, (long long)ac.grid, (long long)ac.per_cta);
    return;
  }
  MmaCfg mc;
  if (want_mma(params, dtype_code) && choose_mma(params, dtype_code, dev, &mc)) {
    snprintf(buf, len, "mma kind=%d BM=%d BN=%d threads=%d tile(d,h,w)=(%d,%d,%d) ng=%d smem=%zu",
             mc.kind, mc.BM, mc.BN, mc.threads, mc.TD, mc.TH, mc.TW, mc.ng, mc.smem);
    return;
  }
  TileCfg c;
  if (params.force_path != 2 && choose_tiled(params, dtype_code, dev, &c)) {
    snprintf(buf, len,
             "tiled LW=%d NY=%d NZ=%d WC=%d MD=%d MH=%d M=%d CO_T=%d threads=%d "
             "tile(d,h,w)=(%d,%d,%d) co_blk=%d ci_chunk=%d smem=%zu",
             c.LW, c.NY, c.NZ, c.WC, c.MD, c.MH, c.M, c.CO_T, c.threads, c.NZ * c.MD,
             c.NY * c.MH, c.LW, c.WC * c.CO_T, c.ci_chunk, c.smem);
  } else {
    snprintf(buf, len, "naive");
  }
}
