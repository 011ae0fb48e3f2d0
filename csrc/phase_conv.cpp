// phaseconv CUDA engine: the torch binding.
//
// A layer's launches are planned once per (input shape, input layout, dtype, device) by
// phaseconv/engines/cuda.py, which builds a ForwardPlan / BackwardPlan from the layer's
// device tables (made once per geometry).  A plan checks its arguments once, keeps the
// launch parameters and the kernel plan (phase_conv_plan.cuh), and each call only checks
// that the tensors still match, gathers the weight into the layout the kernel reads (one
// launch, phase_conv_pack.cuh), allocates the result and launches.  No call waits for the
// GPU.
// Light torch headers (the tensor, two operators, the pybind casters): the binding compiles
// in a fraction of <torch/extension.h>'s time.
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/csrc/utils/pybind.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "phase_conv_bwd.cuh"
#include "phase_conv_fwd.cuh"
#include "phase_conv_pack.cuh"
#include "phase_conv_plan.h"
#include "phase_conv_tma.cuh"

namespace py = pybind11;

namespace {

// Numbers and lists for error messages, formatted as strings: TORCH_CHECK messages that
// stream integers from this extension crashed the process (SIGSEGV) on the device's torch
// build instead of raising (strings, and torch's own types, stream fine).
std::string num(int64_t v) { return std::to_string(v); }
std::string nums(c10::IntArrayRef v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  return out + "]";
}

int dtype_code_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return PHASECONV_FLOAT32;
    case at::kDouble: return PHASECONV_FLOAT64;
    case at::kHalf: return PHASECONV_FLOAT16;
    case at::kBFloat16: return PHASECONV_BFLOAT16;
    default: break;
  }
  TORCH_CHECK(false, "phaseconv cuda engine: the dtype is ", t.scalar_type(),
              "; supported dtypes are float32, float64, float16 and bfloat16.");
  return -1;
}

void check_triple(const std::vector<int64_t>& v, const char* name, int64_t lo) {
  TORCH_CHECK(v.size() == 3, "phaseconv cuda engine: ", name, " must have 3 entries, got ",
              num((int64_t)v.size()), ".");
  for (int64_t e : v) {
    TORCH_CHECK(e >= lo, "phaseconv cuda engine: every entry of ", name, " must be at least ",
                num(lo), ", got ", num(e), ".");
  }
}

void check_table(const at::Tensor& table, const c10::Device& device, int64_t rows,
                 const char* what) {
  TORCH_CHECK(table.device() == device && table.scalar_type() == at::kLong &&
              table.is_contiguous() && table.numel() == rows * PHASECONV_TABLE_STRIDE,
              "phaseconv cuda engine: the ", what, " must be a contiguous int64 tensor of ",
              num(rows), " rows on ", device.str(), ".");
}

void check_index(const at::Tensor& index, const c10::Device& device, int64_t elems,
                 const char* what) {
  TORCH_CHECK(index.device() == device && index.scalar_type() == at::kInt &&
              index.dim() == 1 && index.is_contiguous() && index.numel() == elems,
              "phaseconv cuda engine: the ", what, " index must be a contiguous 1-D int32 tensor "
              "of ", num(elems), " elements on ", device.str(), ", got ",
              num(index.numel()), " elements.");
}

PhaseConvWeightView view_of(const at::Tensor& t) {
  PhaseConvWeightView v;
  for (int d = 0; d < 5; ++d) {
    v.size[d] = t.size(d);
    v.stride[d] = t.stride(d);
  }
  v.contiguous = t.is_contiguous() ? 1 : 0;
  v.narrow = t.numel() <= (int64_t)UINT32_MAX ? 1 : 0;
  return v;
}

cudaStream_t stream_of(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "phaseconv cuda engine: the ", what, " launch failed: ",
              cudaGetErrorString(err), ".");
}

void check_cuda(cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, "phaseconv cuda engine: ", cudaGetErrorString(err), ".");
}

// Built for sm_90a (PHASECONV_SM90A): the warpgroup kernels exist and run on sm_90.
#if defined(PHASECONV_SM90A)
constexpr bool kSm90aBuild = true;
#else
constexpr bool kSm90aBuild = false;
#endif

// The properties the plan reads, of the device a plan is made for.
phaseconv::DevInfo device_info(const c10::Device& device) {
  const int index = device.index();
  int sms = 0, optin = 0, per_sm = 0;
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, index));
  check_cuda(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, index));
  check_cuda(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor,
                                    index));
  phaseconv::DevInfo info;
  info.sms = sms;
  info.smem_optin = (size_t)optin;
  info.smem_sm = (size_t)per_sm;
  int major = 0, minor = 0;
  check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, index));
  check_cuda(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, index));
  info.wgmma = kSm90aBuild && major == 9 && minor == 0;  // sm_90a code runs on sm_90 only
  return info;
}

// A forward kernel forced by name (phaseconv/engines/cuda.py: ForwardKernel): family,
// input layout, implicit-GEMM tile, one phase per block, 32-channel k steps, direct stores,
// all-phase tile.
PhaseConvForce forward_force(const std::vector<int64_t>& f) {
  TORCH_CHECK(f.size() == 7, "phaseconv cuda engine: the forced kernel has 7 fields.");
  PhaseConvForce force;
  force.family = (int)f[0];
  force.input_layout = (int)f[1];
  force.gemm_tile = (int)f[2];
  force.gemm_one_phase = (int)f[3];
  force.gemm_k32 = (int)f[4];
  force.direct_stores = (int)f[5];
  force.allph_tile = (int)f[6];
  return force;
}

// Room for a weight layout of n elements and, with `flag`, the call's non-finite flag
// (phase_conv_exact.cuh) past it, 16-byte aligned: *flag points there, and the launch that
// fills the layout zeroes it.
at::Tensor layout_buffer(const at::Tensor& weight, int64_t n, int** flag) {
  const int64_t tail = flag != nullptr ? 32 / weight.element_size() : 0;
  at::Tensor out = at::empty({n + tail}, weight.options());
  if (flag != nullptr) {
    const uintptr_t end = reinterpret_cast<uintptr_t>(out.data_ptr()) + n * weight.element_size();
    *flag = reinterpret_cast<int*>((end + 15) & ~uintptr_t(15));
  }
  return out;
}

// The call's non-finite flag alone, zeroed, where no layout is made (a weight read in place).
at::Tensor flag_buffer(const at::Tensor& weight, cudaStream_t stream, int** flag) {
  at::Tensor out = layout_buffer(weight, 0, flag);
  check_launch(cudaMemsetAsync(*flag, 0, sizeof(int), stream), "non-finite flag zero");
  return out;
}

// The weight in a kernel's layout: one gather through `index` (phase_conv_pack.cuh).
at::Tensor gather(const at::Tensor& weight, const at::Tensor& index,
                     cudaStream_t stream, int** flag = nullptr) {
  const int64_t n = index.numel();
  at::Tensor out = layout_buffer(weight, n, flag);
  check_launch(phase_conv_gather_weight(weight.data_ptr(), view_of(weight),
                                        index.data_ptr<int32_t>(), out.data_ptr(), n,
                                        (int)weight.element_size(),
                                        flag != nullptr ? *flag : nullptr, stream),
               "weight gather");
  return out.narrow(0, 0, n);
}

// A tensor-core layout of `weight` (phase_conv_pack.cuh: PhaseConvMmaPack) with channel
// groups of cg: the forward's (groups of 16 bytes over the input channels, its taps placed by
// `taps`, the layer's mma_taps table) or, with over_outputs, the input gradient's (groups of
// output channels, taps in C order: taps null; octets for the narrow kernel, 16 bytes for the
// implicit GEMM).
PhaseConvMmaPack mma_pack_of(const at::Tensor& weight, int64_t groups, const int64_t* taps,
                             bool over_outputs, int cg) {
  PhaseConvMmaPack pk;
  const int64_t cin_g = weight.size(0) / groups, cout_g = weight.size(1);
  pk.taps = taps;
  pk.ksize = weight.size(2) * weight.size(3) * weight.size(4);
  pk.groups = groups;
  pk.cg = cg;
  pk.chans = over_outputs ? cout_g : cin_g;
  pk.cols = over_outputs ? cin_g : cout_g;
  pk.chan_stride = weight.stride(over_outputs ? 1 : 0);
  pk.col_stride = weight.stride(over_outputs ? 0 : 1);
  pk.group_stride = cin_g * weight.stride(0);
  return pk;
}

int64_t mma_layout_elems(const PhaseConvMmaPack& pk) {
  return pk.groups * pk.ksize * ((pk.chans + pk.cg - 1) / pk.cg) * pk.cols * pk.cg;
}

at::Tensor pack_mma(const at::Tensor& weight, const PhaseConvMmaPack& pk, cudaStream_t stream,
                    int** flag = nullptr) {
  const int64_t n = mma_layout_elems(pk);
  at::Tensor out = layout_buffer(weight, n, flag);
  check_launch(phase_conv_pack_weight_mma(weight.data_ptr(), view_of(weight), pk,
                                          out.data_ptr(), (int)weight.element_size(),
                                          flag != nullptr ? *flag : nullptr, stream),
               "tensor-core weight pack");
  return out.narrow(0, 0, n);
}

// The forward's tap table (engines/cuda.py: mma_taps) for a weight of ksize taps.
void check_mma_taps(const at::Tensor& taps, const c10::Device& device, int64_t ksize) {
  TORCH_CHECK(taps.device() == device && taps.scalar_type() == at::kLong && taps.dim() == 2 &&
              taps.size(0) == ksize && taps.size(1) == 2 && taps.is_contiguous(),
              "phaseconv cuda engine: the tensor-core tap table must be a contiguous (",
              num(ksize), ", 2) int64 tensor on ", device.str(), ", got ", nums(taps.sizes()),
              ".");
}

// A tap table the caller hands the binding must tile the layout: each (tap, group) run of
// ceil(chans / cg) * cols * cg elements once, from 0 on, or the pack would write outside the
// layout or leave holes in it (a table made for another dtype's channel groups, or for
// other groups).  Read on the host, so it waits for the table: the binding serves tests and
// tools; the plans pass the tables their layer made.
void check_mma_taps_tile(const at::Tensor& taps, const PhaseConvMmaPack& pk) {
  const at::Tensor host = taps.cpu();
  const int64_t* t = host.data_ptr<int64_t>();
  const int64_t n = mma_layout_elems(pk), run = n / (pk.groups * pk.ksize);
  std::vector<int64_t> starts;
  starts.reserve(pk.ksize * pk.groups);
  bool ok = true;
  for (int64_t k = 0; k < pk.ksize && ok; ++k) {
    ok = t[2 * k] >= 0 && t[2 * k] < n && t[2 * k + 1] >= 0 && t[2 * k + 1] <= n;
    for (int64_t g = 0; g < pk.groups && ok; ++g) starts.push_back(t[2 * k] + g * t[2 * k + 1]);
  }
  std::sort(starts.begin(), starts.end());
  for (size_t i = 0; i < starts.size() && ok; ++i) ok = starts[i] == (int64_t)i * run;
  TORCH_CHECK(ok, "phaseconv cuda engine: the tensor-core tap table does not lay out this "
              "weight (", num(pk.groups), " groups, channel groups of ", num(pk.cg),
              "): it was made for another layer, groups or dtype.");
}

// The geometry part of PhaseConvExact (phase_conv_exact.cuh): the operands are set per call.
PhaseConvExact exact_geometry(int mode, const at::Tensor& x, const at::Tensor& weight,
                              int64_t c_out, int64_t groups, const std::vector<int64_t>& out,
                              const std::vector<int64_t>& stride,
                              const std::vector<int64_t>& padding,
                              const std::vector<int64_t>& dilation) {
  PhaseConvExact e;
  e.mode = mode;
  e.n = x.size(0); e.c_in = x.size(1); e.c_out = c_out; e.groups = groups;
  for (int i = 0; i < 3; ++i) {
    e.in[i] = x.size(2 + i); e.out[i] = out[i]; e.k[i] = weight.size(2 + i);
    e.s[i] = stride[i]; e.p[i] = padding[i]; e.d[i] = dilation[i];
  }
  return e;
}

void set_strides(int64_t* dst, const at::Tensor& t) {
  for (int i = 0; i < 5; ++i) dst[i] = t.stride(i);
}

// What every call checks: the tensors are those the plan was made for (shapes, dtype,
// device), so the plan's launch parameters hold.
void check_matches(const at::Tensor& t, const char* name, c10::IntArrayRef sizes,
                   const c10::Device& device, c10::ScalarType dtype) {
  TORCH_CHECK(t.defined() && t.device() == device && t.scalar_type() == dtype &&
              t.sizes() == sizes, "phaseconv cuda engine: ", name, " (shape ",
              nums(t.sizes()), ", dtype ", c10::toString(t.scalar_type()), ", ",
              t.device().str(), ") does not match the plan (shape ", nums(sizes), ", dtype ",
              c10::toString(dtype), ", ", device.str(), ").");
}

void check_weight_size(const at::Tensor& w) {
  TORCH_CHECK(w.is_cuda() && w.dim() == 5, "phaseconv cuda engine: the weight must be a 5-D "
              "CUDA tensor.");
  TORCH_CHECK(w.numel() < std::numeric_limits<int32_t>::max(), "phaseconv cuda engine: the "
              "weight has ", num(w.numel()), " elements; at most 2^31 - 1 are supported.");
}

// A tensor laid out as a channels-last kernel reads it: (N, D, H, W, C), 16-byte aligned.
at::Tensor channels_last_input(const at::Tensor& x, cudaStream_t stream) {
  const auto cl = at::MemoryFormat::ChannelsLast3d;
  at::Tensor xl;
  if (x.is_contiguous(cl) && reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0) return x;
  if (x.is_contiguous() && x.element_size() != 8) {
    xl = at::empty_like(x, x.options().memory_format(cl));
    check_launch(phase_conv_to_channels_last(x.data_ptr(), xl.data_ptr(), x.size(0), x.size(1),
                                             x.size(2) * x.size(3) * x.size(4),
                                             (int)x.element_size(), stream),
                 "channels-last copy");
    return xl;
  }
  xl = x.contiguous(cl);
  if (!xl.is_contiguous(cl) || reinterpret_cast<uintptr_t>(xl.data_ptr()) % 16 != 0)
    xl = x.clone(cl);  // an unaligned view
  return xl;
}

// ---------------------------------------------------------------------------------------------
// The forward of one layer for one input shape, layout, dtype and device.
class ForwardPlan {
 public:
  // x, weight: tensors of the planned shapes, dtype and device (only their metadata is read);
  // x_channels_last: x will come channels-last; table, index, mma_taps: the layer's device
  // tables (phaseconv/engines/cuda.py: LayerTables); mma_taps undefined where the dtype has
  // no tensor-core layout; out_channels_last: return y channels_last_3d (written so by the
  // kernel where the plan's kernel writes that layout, else copied once).
  ForwardPlan(const at::Tensor& x, const at::Tensor& weight, bool has_bias,
              bool x_channels_last, const at::Tensor& table, const at::Tensor& index,
              const c10::optional<at::Tensor>& mma_taps, std::vector<int64_t> out_size,
              std::vector<int64_t> stride, std::vector<int64_t> phase_dilation,
              std::vector<int64_t> max_taps, int64_t total_taps, int64_t groups,
              std::vector<int64_t> union_box, std::vector<int64_t> padding,
              std::vector<int64_t> dilation, std::vector<int64_t> force, bool out_channels_last)
      : device_(x.device()), dtype_(x.scalar_type()), has_bias_(has_bias),
        out_channels_last_(out_channels_last),
        x_sizes_(x.sizes().vec()), w_sizes_(weight.sizes().vec()), table_(table),
        index_(index) {
    TORCH_CHECK(x.is_cuda() && x.dim() == 5, "phaseconv cuda engine: the input must be a 5-D "
                "(N, C_in, D, H, W) CUDA tensor.");
    dtype_code_ = dtype_code_of(x);
    check_weight_size(weight);
    TORCH_CHECK(weight.device() == device_ && weight.scalar_type() == dtype_,
                "phaseconv cuda engine: the weight must have the input's dtype and device.");
    check_triple(out_size, "out_size", 0);
    check_triple(stride, "stride", 1);
    check_triple(phase_dilation, "phase_dilation", 1);
    check_triple(max_taps, "max_taps", 0);
    check_triple(padding, "padding", 0);
    check_triple(dilation, "dilation", 1);
    TORCH_CHECK(union_box.size() == 6, "phaseconv cuda engine: union_box must have 6 entries.");
    const int64_t c_in = x.size(1), cout_g = weight.size(1);
    TORCH_CHECK(groups >= 1 && weight.size(0) == c_in && c_in % groups == 0,
                "phaseconv cuda engine: the weight ", nums(weight.sizes()), " does not fit ",
                num(c_in), " input channels in ", num(groups), " groups.");
    const int64_t out_channels = cout_g * groups;
    const int64_t int_max = std::numeric_limits<int32_t>::max();
    for (int d = 2; d < 5; ++d) {
      TORCH_CHECK(x.size(d) >= 1 && x.size(d) < int_max && out_size[d - 2] < int_max,
                  "phaseconv cuda engine: spatial sizes must be in [1, 2^31), got input ",
                  nums(x.sizes()), " and output ", nums(out_size), ".");
    }
    TORCH_CHECK(c_in < int_max && out_channels < int_max, "phaseconv cuda engine: channel "
                "counts must be below 2^31.");
    const int64_t num_phases = stride[0] * stride[1] * stride[2];
    check_table(table, device_, num_phases, "phase table");
    check_index(index, device_, weight.numel(), "packed-weight");
    TORCH_CHECK(total_taps * c_in * cout_g == weight.numel(), "phaseconv cuda engine: ",
                num(total_taps), " taps do not cover the weight ", nums(weight.sizes()), ".");
    const bool mma_layout = dtype_code_ != PHASECONV_FLOAT64 && mma_taps.has_value() &&
                            mma_taps->defined();
    if (mma_layout) {
      check_mma_taps(*mma_taps, device_, weight.size(2) * weight.size(3) * weight.size(4));
      mma_taps_ = *mma_taps;
    }

    PhaseConvFwdParams& p = params_;
    p.x = nullptr; p.weight = nullptr; p.bias = nullptr; p.y = nullptr;
    // planning: a non-null weight_mma says the tensor-core layout can be provided
    p.weight_mma = mma_layout ? reinterpret_cast<const void*>(16) : nullptr;
    p.table = table.data_ptr<int64_t>();
    p.n = x.size(0); p.c_in = c_in; p.c_out = out_channels; p.groups = groups;
    p.in_d = x.size(2); p.in_h = x.size(3); p.in_w = x.size(4);
    p.out_d = out_size[0]; p.out_h = out_size[1]; p.out_w = out_size[2];
    p.stride_d = stride[0]; p.stride_h = stride[1]; p.stride_w = stride[2];
    p.pdil_d = phase_dilation[0]; p.pdil_h = phase_dilation[1]; p.pdil_w = phase_dilation[2];
    p.max_taps_d = max_taps[0]; p.max_taps_h = max_taps[1]; p.max_taps_w = max_taps[2];
    p.total_taps = total_taps;
    p.union_lo_d = union_box[0]; p.union_lo_h = union_box[1]; p.union_lo_w = union_box[2];
    p.union_ext_d = union_box[3]; p.union_ext_h = union_box[4]; p.union_ext_w = union_box[5];
    p.x_channels_last = x_channels_last && x.element_size() != 8 ? 1 : 0;
    p.y_channels_last = out_channels_last ? 1 : 0;
    TORCH_CHECK(phase_conv_fwd_plan(p, dtype_code_, forward_force(force),
                                    device_info(device_), &plan_),
                "phaseconv cuda engine: no forward kernel takes this layer: ", plan_.text, ".");
    p.y_channels_last = plan_.y_channels_last;
    // where the kernel writes (N, C_out, D, H, W) but channels-last is asked: one copy after
    copy_out_ = out_channels_last && !plan_.y_channels_last;
    p.x_channels_last = plan_.x_channels_last;
    p.exact = exact_geometry(PHASECONV_EXACT_FORWARD, x, weight, out_channels, groups,
                             out_size, stride, padding, dilation);
    p.exact.out_channels_last = p.y_channels_last;
    out_sizes_ = {x.size(0), out_channels, out_size[0], out_size[1], out_size[2]};
  }

  at::Tensor operator()(const at::Tensor& x, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias) const {
    check_matches(x, "the input", x_sizes_, device_, dtype_);
    check_matches(weight, "the weight", w_sizes_, device_, dtype_);
    const bool with_bias = bias.has_value() && bias->defined();
    TORCH_CHECK(with_bias == has_bias_, "phaseconv cuda engine: the plan was made ",
                has_bias_ ? "with" : "without", " a bias.");
    const c10::cuda::CUDAGuard guard(device_);
    const cudaStream_t stream = stream_of(x);
    const auto fmt = out_channels_last_ ? at::MemoryFormat::ChannelsLast3d
                                        : at::MemoryFormat::Contiguous;
    at::Tensor y = at::empty(out_sizes_, x.options().memory_format(fmt));
    if (plan_.family == PHASECONV_EMPTY) return y;
    at::Tensor yk = copy_out_ ? at::empty(out_sizes_, x.options()) : y;
    PhaseConvFwdParams p = params_;
    int* flag = nullptr;
    // the weight read in place (no pack), or packed into the layout the kernel reads; the
    // pack zeroes the call's non-finite flag, a memset does where nothing packs
    const bool in_place = weight_in_place(weight);
    const at::Tensor wl =
        in_place ? flag_buffer(weight, stream, &flag)
        : plan_.weight_mma
            ? pack_mma(weight, mma_pack_of(weight, params_.groups, mma_taps_.data_ptr<int64_t>(),
                                           false, 16 / (int)weight.element_size()),
                       stream, &flag)
            : gather(weight, index_, stream, &flag);
    at::Tensor xl;
    if (plan_.x_channels_last) {
      xl = channels_last_input(x, stream);
    } else {
      xl = x.contiguous();
      // the implicit GEMM reads a contiguous input in place with 16-byte vectors
      if (plan_.family == PHASECONV_GEMM && reinterpret_cast<uintptr_t>(xl.data_ptr()) % 16)
        xl = xl.clone();
    }
    at::Tensor b;
    if (with_bias) {
      check_matches(*bias, "the bias", {params_.c_out}, device_, dtype_);
      b = bias->contiguous();
      p.bias = b.data_ptr();
    }
    p.x = xl.data_ptr();
    if (in_place) {
      p.weight_cl = weight.data_ptr();
      p.weight_mma = nullptr;
    } else if (plan_.weight_mma) {
      p.weight_mma = wl.data_ptr();
    } else {
      p.weight = wl.data_ptr();
      p.weight_mma = nullptr;
    }
    p.y = yk.data_ptr();
    p.exact.a = x.data_ptr();
    set_strides(p.exact.as, x);
    p.exact.b = weight.data_ptr();
    set_strides(p.exact.bs, weight);
    p.exact.bias = p.bias;
    p.exact.flag = flag;
    check_launch(phase_conv_fwd_run(p, plan_, dtype_code_, stream), "forward");
    if (copy_out_) {  // (N, C_out, spatial) -> (N, spatial, C_out)
      if (yk.element_size() == 8) {
        y.copy_(yk);
      } else {
        check_launch(phase_conv_to_channels_last(yk.data_ptr(), y.data_ptr(), yk.size(0),
                                                 yk.size(1),
                                                 yk.size(2) * yk.size(3) * yk.size(4),
                                                 (int)yk.element_size(), stream),
                     "channels-last output copy");
      }
    }
    return y;
  }

  std::string description() const {
    return std::string(plan_.text) + (copy_out_ ? ", channels-last output (one copy)" : "");
  }
  bool reads_channels_last() const { return plan_.x_channels_last != 0; }
  bool reads_tensor_core_weight() const { return plan_.weight_mma != 0; }
  // whether a call reads `weight` in place (phase_conv_fwd_weight_in_place), not packed
  bool weight_in_place(const at::Tensor& weight) const {
    return phase_conv_fwd_weight_in_place(plan_, weight.sizes().data(), weight.strides().data(),
                                          (int)weight.element_size(),
                                          reinterpret_cast<uintptr_t>(weight.data_ptr()));
  }
  // the same for a weight of the plan's sizes with these strides at an aligned address
  // (describe(): a module's weight layout, no tensor)
  bool weight_strides_in_place(const std::vector<int64_t>& strides) const {
    TORCH_CHECK(strides.size() == 5, "phaseconv cuda engine: a weight has 5 strides.");
    return phase_conv_fwd_weight_in_place(plan_, w_sizes_.data(), strides.data(),
                                          (int)c10::elementSize(dtype_), 0);
  }

 private:
  c10::Device device_;
  c10::ScalarType dtype_;
  int dtype_code_ = -1;
  bool has_bias_;
  bool out_channels_last_;
  bool copy_out_ = false;  // the result is transposed to channels-last after the kernel
  std::vector<int64_t> x_sizes_, w_sizes_, out_sizes_;
  at::Tensor table_, index_, mma_taps_;
  PhaseConvFwdParams params_;
  PhaseConvFwdPlan plan_;
};

// ---------------------------------------------------------------------------------------------
// The backward of one layer for one input shape, dtype and device: the input gradient in one
// launch (grad-input mode, phase_conv_fwd.cuh) and the weight gradient (phase_conv_bwd.cuh),
// written straight into a tensor with the weight's own strides.
class BackwardPlan {
 public:
  // x, weight, grad_y: tensors of the planned shapes, dtype and device (metadata only);
  // gi_*: the input gradient's tables (sub-problem table, block index, taps);
  // table, index: the forward's phase table and packed-weight index (the weight gradient's
  // scatter); gi_kernel, gw_kernel: 0 the rule, else the PhaseConvFamily forced
  // (phase_conv_plan.h).
  BackwardPlan(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& grad_y,
               int64_t groups, std::vector<int64_t> stride, std::vector<int64_t> phase_dilation,
               const at::Tensor& table, const at::Tensor& index,
               std::vector<int64_t> max_taps, const at::Tensor& gi_table,
               const at::Tensor& gi_index, std::vector<int64_t> gi_max_taps,
               int64_t gi_total_taps, std::vector<int64_t> padding,
               std::vector<int64_t> dilation, int64_t gi_kernel, int64_t gw_kernel)
      : device_(x.device()), dtype_(x.scalar_type()), x_sizes_(x.sizes().vec()),
        w_sizes_(weight.sizes().vec()), gy_sizes_(grad_y.sizes().vec()), table_(table),
        index_(index), gi_table_(gi_table), gi_index_(gi_index) {
    TORCH_CHECK(x.is_cuda() && x.dim() == 5 && grad_y.dim() == 5 &&
                grad_y.size(0) == x.size(0), "phaseconv cuda engine: x and grad_y must be "
                "batched 5-D CUDA tensors of one batch.");
    dtype_code_ = dtype_code_of(x);
    check_weight_size(weight);
    check_triple(stride, "stride", 1);
    check_triple(phase_dilation, "phase_dilation", 1);
    check_triple(max_taps, "max_taps", 0);
    check_triple(gi_max_taps, "gi_max_taps", 0);
    check_triple(padding, "padding", 0);
    check_triple(dilation, "dilation", 1);
    const int64_t c_in = x.size(1), c_out = grad_y.size(1);
    TORCH_CHECK(groups >= 1 && c_in % groups == 0 && c_out % groups == 0 &&
                weight.size(0) == c_in && weight.size(1) * groups == c_out,
                "phaseconv cuda engine: groups=", num(groups), ", x ", nums(x.sizes()),
                ", weight ", nums(weight.sizes()), " and grad_y ", nums(grad_y.sizes()),
                " do not fit together.");
    const int64_t num_phases = stride[0] * stride[1] * stride[2];
    check_table(table, device_, num_phases, "phase table");
    check_index(index, device_, weight.numel(), "packed-weight");
    TORCH_CHECK(gi_table.numel() % PHASECONV_TABLE_STRIDE == 0 && gi_table.numel() > 0,
                "phaseconv cuda engine: the grad-input table must hold whole rows.");
    const int64_t nsub = gi_table.numel() / PHASECONV_TABLE_STRIDE;
    check_table(gi_table, device_, nsub, "grad-input table");
    check_index(gi_index, device_, weight.numel(), "grad-input weight");
    const phaseconv::DevInfo dev = device_info(device_);

    // input gradient (grad-input mode: grad_y read as the input, grad_x written)
    PhaseConvFwdParams& q = gi_params_;
    q.x = nullptr; q.weight = nullptr; q.bias = nullptr; q.y = nullptr; q.weight_mma = nullptr;
    q.table = nullptr;
    q.n = x.size(0); q.c_in = c_out; q.c_out = c_in; q.groups = groups;
    q.in_d = grad_y.size(2); q.in_h = grad_y.size(3); q.in_w = grad_y.size(4);
    q.out_d = x.size(2); q.out_h = x.size(3); q.out_w = x.size(4);
    q.stride_d = q.stride_h = q.stride_w = 1;
    q.pdil_d = phase_dilation[0]; q.pdil_h = phase_dilation[1]; q.pdil_w = phase_dilation[2];
    q.max_taps_d = gi_max_taps[0]; q.max_taps_h = gi_max_taps[1]; q.max_taps_w = gi_max_taps[2];
    q.total_taps = gi_total_taps;
    q.union_lo_d = q.union_lo_h = q.union_lo_w = 0;
    q.union_ext_d = q.union_ext_h = q.union_ext_w = 0;
    q.x_channels_last = 0;
    q.sub_table = gi_table.data_ptr<int64_t>();
    q.nsub = (int)nsub;
    q.in_stride_d = stride[0]; q.in_stride_h = stride[1]; q.in_stride_w = stride[2];
    const std::vector<int64_t> gy_spatial = {grad_y.size(2), grad_y.size(3), grad_y.size(4)};
    q.exact = exact_geometry(PHASECONV_EXACT_GRAD_INPUT, x, weight, c_out, groups, gy_spatial,
                             stride, padding, dilation);
    TORCH_CHECK(phase_conv_bwd_input_plan(q, dtype_code_, (int)gi_kernel, dev, &gi_plan_),
                "phaseconv cuda engine: the input gradient: ", gi_plan_.text, ".");
    if (gi_plan_.family == PHASECONV_GEMM) {
      // the implicit GEMM's one sub-problem: residue 0, every tap, first tap at -padding
      const int64_t row[PHASECONV_TABLE_STRIDE] = {
          0, 0, 0, weight.size(2), weight.size(3), weight.size(4),
          -padding[0], -padding[1], -padding[2], 0, 0, 0};
      // (both tables reach the device by asynchronous copies from pinned memory: planning
      // never waits for the GPU)
      at::Tensor host = at::empty({PHASECONV_TABLE_STRIDE},
                                  at::TensorOptions().dtype(at::kLong).pinned_memory(true));
      std::copy(row, row + PHASECONV_TABLE_STRIDE, host.data_ptr<int64_t>());
      gi_gemm_table_ = host.to(device_, /*non_blocking=*/true);
      q.table = gi_gemm_table_.data_ptr<int64_t>();
      q.pdil_d = dilation[0]; q.pdil_h = dilation[1]; q.pdil_w = dilation[2];  // in grad_y
    }
    // the implicit GEMM and the narrow kernel read grad_y channels-last and the weight as
    // [groups][kD][kH][kW][C_out/g / cg][C_in/g][cg] (no flip: grad_x is a plain correlation
    // of grad_y), the input gradient's tensor-core layout (mma_pack_of, over_outputs): cg 8,
    // or 4 for the float32 implicit GEMM (its 16-byte groups)
    if (gi_plan_.grad_y_channels_last) {
      gi_cg_ = gi_plan_.family == PHASECONV_GEMM && weight.element_size() == 4 ? 4 : 8;
      // the narrow kernel also takes one zero-padded group of fewer channels
      TORCH_CHECK(weight.size(1) % gi_cg_ == 0 ||
                      (gi_plan_.family == PHASECONV_GI_NARROW && weight.size(1) < gi_cg_),
                  "phaseconv cuda engine: the input gradient's tensor-core layout takes whole "
                  "groups of ", num(gi_cg_), " output channels.");
      q.x_channels_last = 1;
    }

    // weight gradient
    PhaseConvBwdWeightParams& w = gw_params_;
    w.x = nullptr; w.grad_y = nullptr; w.grad_w = nullptr; w.workspace = nullptr;
    w.grad_w_index = index.data_ptr<int32_t>();
    w.table = table.data_ptr<int64_t>();
    w.n = x.size(0); w.c_in = c_in; w.c_out = c_out; w.groups = groups;
    w.in_d = x.size(2); w.in_h = x.size(3); w.in_w = x.size(4);
    w.out_d = grad_y.size(2); w.out_h = grad_y.size(3); w.out_w = grad_y.size(4);
    w.stride_d = stride[0]; w.stride_h = stride[1]; w.stride_w = stride[2];
    w.pdil_d = phase_dilation[0]; w.pdil_h = phase_dilation[1]; w.pdil_w = phase_dilation[2];
    w.max_taps_d = max_taps[0]; w.max_taps_h = max_taps[1]; w.max_taps_w = max_taps[2];
    w.packed_elems = weight.numel();
    w.exact = exact_geometry(PHASECONV_EXACT_GRAD_WEIGHT, x, weight, c_out, groups, gy_spatial,
                             stride, padding, dilation);
    TORCH_CHECK(phase_conv_bwd_weight_plan(w, dtype_code_, (int)gw_kernel, dev, &gw_plan_),
                "phaseconv cuda engine: the weight gradient: ", gw_plan_.text, ".");
  }

  // (grad_input, grad_weight), None where not asked for; grad_input channels_last_3d where
  // grad_input_channels_last, else contiguous.
  std::tuple<c10::optional<at::Tensor>, c10::optional<at::Tensor>> operator()(
      const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
      bool need_input, bool need_weight, bool grad_input_channels_last) const {
    check_matches(grad_y, "grad_output", gy_sizes_, device_, dtype_);
    check_matches(x, "the input", x_sizes_, device_, dtype_);
    check_matches(weight, "the weight", w_sizes_, device_, dtype_);
    const c10::cuda::CUDAGuard guard(device_);
    const cudaStream_t stream = stream_of(x);
    // grad_y in the layouts the planned kernels read: channels-last for the implicit GEMM and
    // the weight gradients that read their operands so (one copy where it is not), else
    // contiguous
    const bool gi_cl = need_input && gi_plan_.grad_y_channels_last != 0;
    const bool gw_cl = need_weight && gw_plan_.operands_channels_last != 0;
    const at::Tensor gy_cl = gi_cl || gw_cl ? channels_last_input(grad_y, stream) : at::Tensor();
    const at::Tensor gy = (need_input && !gi_cl) || (need_weight && !gw_cl)
                              ? grad_y.contiguous() : at::Tensor();
    c10::optional<at::Tensor> gx, gw;
    if (need_input) {
      // grad_x channels_last_3d where asked (torch's layout for the call): written so by the
      // implicit GEMM, else written contiguous and copied
      const auto cl = at::MemoryFormat::ChannelsLast3d;
      const bool gx_direct = grad_input_channels_last && gi_plan_.family == PHASECONV_GEMM;
      at::Tensor out = at::empty(x_sizes_, x.options().memory_format(
                                               gx_direct ? cl : at::MemoryFormat::Contiguous));
      if (gi_plan_.family != PHASECONV_EMPTY) {
        int* flag = nullptr;
        const at::Tensor& gyi = gi_cl ? gy_cl : gy;
        // the weight read in place (no pack: a memset zeroes the flag), or packed
        const bool in_place = gi_cl && weight_in_place(weight);
        const at::Tensor wl =
            in_place ? flag_buffer(weight, stream, &flag)
            : gi_cl  ? pack_mma(weight, mma_pack_of(weight, gi_params_.groups, nullptr, true,
                                                    gi_cg_),
                                stream, &flag)
                     : gather(weight, gi_index_, stream, &flag);
        PhaseConvFwdParams q = gi_params_;
        q.x = gyi.data_ptr();
        q.weight = in_place ? nullptr : wl.data_ptr();
        q.weight_mma = gi_cl && !in_place ? wl.data_ptr() : nullptr;
        q.weight_cl = in_place ? weight.data_ptr() : nullptr;
        q.y = out.data_ptr();
        q.y_channels_last = gx_direct ? 1 : 0;
        q.exact.out_channels_last = q.y_channels_last;
        q.exact.a = gyi.data_ptr();
        set_strides(q.exact.as, gyi);
        q.exact.b = weight.data_ptr();
        set_strides(q.exact.bs, weight);
        q.exact.flag = flag;
        check_launch(phase_conv_bwd_input_run(q, gi_plan_, dtype_code_, stream),
                     "input-gradient");
      }
      gx = grad_input_channels_last && !gx_direct ? out.contiguous(cl) : out;
    }
    if (need_weight) {
      // the weight's own layout where it is dense, so that autograd accumulates in place
      const auto cl = at::MemoryFormat::ChannelsLast3d;
      const auto fmt = !weight.is_contiguous() && weight.is_contiguous(cl)
                           ? cl : at::MemoryFormat::Contiguous;
      at::Tensor out = at::empty(w_sizes_, weight.options().memory_format(fmt));
      if (x.size(0) == 0) {
        out.zero_();
      } else {
        const at::Tensor xc = gw_cl ? channels_last_input(x, stream) : x.contiguous();
        const at::Tensor& gyw = gw_cl ? gy_cl : gy;
        at::Tensor ws = at::empty({(int64_t)gw_plan_.ws_bytes + 16},
                                        x.options().dtype(at::kByte));
        PhaseConvBwdWeightParams w = gw_params_;
        w.x = xc.data_ptr();
        w.grad_y = gyw.data_ptr();
        w.grad_w = out.data_ptr();
        w.grad_w_view = view_of(out);
        w.workspace = ws.data_ptr();
        w.exact.a = xc.data_ptr();
        set_strides(w.exact.as, xc);
        w.exact.b = gyw.data_ptr();
        set_strides(w.exact.bs, gyw);
        check_launch(phase_conv_bwd_weight(w, gw_plan_, dtype_code_, stream),
                     "weight-gradient");
      }
      gw = out;
    }
    return std::make_tuple(gx, gw);
  }

  std::string grad_input_description() const { return gi_plan_.text; }
  // whether the input gradient reads `weight` in place (phase_conv_bwd_input_weight_in_place)
  bool weight_in_place(const at::Tensor& weight) const {
    return phase_conv_bwd_input_weight_in_place(
        gi_plan_, weight.sizes().data(), weight.strides().data(), (int)weight.element_size(),
        reinterpret_cast<uintptr_t>(weight.data_ptr()));
  }
  bool weight_strides_in_place(const std::vector<int64_t>& strides) const {
    TORCH_CHECK(strides.size() == 5, "phaseconv cuda engine: a weight has 5 strides.");
    return phase_conv_bwd_input_weight_in_place(gi_plan_, w_sizes_.data(), strides.data(),
                                                (int)c10::elementSize(dtype_), 0);
  }
  std::string grad_weight_description() const { return gw_plan_.text; }

 private:
  c10::Device device_;
  c10::ScalarType dtype_;
  int dtype_code_ = -1;
  std::vector<int64_t> x_sizes_, w_sizes_, gy_sizes_;
  at::Tensor table_, index_, gi_table_, gi_index_, gi_gemm_table_;
  int gi_cg_ = 8;  // the input gradient's tensor-core layout: output channels a group
  PhaseConvFwdParams gi_params_;
  PhaseConvBwdInputPlan gi_plan_;
  PhaseConvBwdWeightParams gw_params_;
  PhaseConvBwdWeightPlan gw_plan_;
};

// A weight in the layout `index` describes (phase_conv_pack.cuh; tests read layouts so).
at::Tensor gather_binding(const at::Tensor& weight, const at::Tensor& index) {
  check_weight_size(weight);
  check_index(index, weight.device(), index.numel(), "gather");
  const c10::cuda::CUDAGuard guard(weight.device());
  return gather(weight, index, stream_of(weight));
}

// A tensor-core layout (phase_conv_pack.cuh: PhaseConvMmaPack; tests compare it with the
// gather through its index map): the forward's from the layer's tap table (engines/cuda.py:
// mma_taps), or with over_outputs (taps None) the input gradient's, in groups of cg output
// channels (8, or 4 for float32: the implicit GEMM's).
at::Tensor pack_mma_binding(const at::Tensor& weight, const c10::optional<at::Tensor>& taps,
                            int64_t groups, bool over_outputs, int64_t cg) {
  // cg 0: the layout's own (16 bytes for the forward's, octets for the input gradient's)
  check_weight_size(weight);
  const auto dtype = weight.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "phaseconv cuda engine: the tensor-core layouts hold float32, float16 or "
              "bfloat16 weights, got ", c10::toString(dtype), ".");
  TORCH_CHECK(groups >= 1 && weight.size(0) % groups == 0, "phaseconv cuda engine: groups (",
              num(groups), ") must divide the weight's ", num(weight.size(0)),
              " input channels.");
  const bool with_taps = taps.has_value() && taps->defined();
  TORCH_CHECK(with_taps != over_outputs, "phaseconv cuda engine: the forward's tensor-core "
              "layout takes a tap table, the input gradient's none.");
  if (with_taps)
    check_mma_taps(*taps, weight.device(), weight.size(2) * weight.size(3) * weight.size(4));
  const int64_t forward_cg = 16 / weight.element_size();
  if (cg == 0) cg = over_outputs ? 8 : forward_cg;
  TORCH_CHECK(over_outputs ? (cg == 8 || (cg == 4 && forward_cg == 4)) : cg == forward_cg,
              "phaseconv cuda engine: channel groups of ", num(cg), " do not make a tensor-core "
              "layout of ", c10::toString(dtype), " weights.");
  TORCH_CHECK(!over_outputs || weight.size(1) % cg == 0, "phaseconv cuda engine: the input "
              "gradient's tensor-core layout takes whole groups of ", num(cg), " output "
              "channels, got ", num(weight.size(1)), " per group.");
  const c10::cuda::CUDAGuard guard(weight.device());
  const PhaseConvMmaPack pk = mma_pack_of(
      weight, groups, with_taps ? taps->data_ptr<int64_t>() : nullptr, over_outputs, (int)cg);
  if (with_taps) check_mma_taps_tile(*taps, pk);
  return pack_mma(weight, pk, stream_of(weight));
}

// Tests: boxes of a channels-last 16-bit tensor as the TMA unit lands them in shared memory
// (phase_conv_tma.cuh): coords (boxes, 5) int32 of (c, w, h, d, n), box (C, W, H, D); one row
// of box bytes a box, swizzled.
at::Tensor tma_box_copy_binding(const at::Tensor& x, const at::Tensor& coords,
                                std::vector<int64_t> box) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 5 && x.element_size() == 2 &&
                  x.is_contiguous(at::MemoryFormat::ChannelsLast3d),
              "phaseconv cuda engine: tma_box_copy takes a channels-last 5-D CUDA tensor of "
              "16-bit elements.");
  TORCH_CHECK(x.size(1) % 8 == 0 && reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0,
              "phaseconv cuda engine: tma_box_copy needs whole 16-byte channel rows.");
  TORCH_CHECK(coords.is_cuda() && coords.device() == x.device() &&
                  coords.scalar_type() == at::kInt && coords.dim() == 2 &&
                  coords.size(1) == 5 && coords.is_contiguous(),
              "phaseconv cuda engine: tma_box_copy's coords are a contiguous (boxes, 5) int32 "
              "tensor on x's device.");
  TORCH_CHECK(box.size() == 4 && box[0] == 64 && box[1] >= 1 && box[1] <= 256 &&
                  box[2] >= 1 && box[2] <= 256 && box[3] >= 1 && box[3] <= 256,
              "phaseconv cuda engine: tma_box_copy's box is (C, W, H, D): C 64 (a 128-byte "
              "row a voxel), the others 1-256.");
  int major = 0;
  check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor,
                                    x.get_device()));
  TORCH_CHECK(major >= 9, "phaseconv cuda engine: tma_box_copy needs an sm_90 GPU (the TMA "
              "unit).");
  const int64_t bytes = box[0] * 2 * box[1] * box[2] * box[3];
  TORCH_CHECK(bytes % 1024 == 0 && bytes <= 200 * 1024,
              "phaseconv cuda engine: tma_box_copy's box must be whole 1024-byte swizzle "
              "atoms, at most 200 KB.");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({coords.size(0), bytes}, x.options().dtype(at::kByte));
  check_cuda(phase_conv_tma_box_copy(x.data_ptr(), x.size(0), x.size(2), x.size(3), x.size(4),
                                     x.size(1), (int)box[0], (int)box[1], (int)box[2],
                                     (int)box[3], coords.data_ptr<int>(), (int)coords.size(0),
                                     out.data_ptr(), stream_of(x)));
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "phaseconv CUDA engine (conv_transpose3d by sub-pixel phases)";
  py::class_<ForwardPlan>(m, "ForwardPlan")
      .def(py::init<const at::Tensor&, const at::Tensor&, bool, bool, const at::Tensor&,
                    const at::Tensor&, const c10::optional<at::Tensor>&,
                    std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>,
                    std::vector<int64_t>, int64_t, int64_t, std::vector<int64_t>,
                    std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>, bool>(),
           py::arg("x"), py::arg("weight"), py::arg("has_bias"), py::arg("x_channels_last"),
           py::arg("table"), py::arg("index"), py::arg("mma_taps"), py::arg("out_size"),
           py::arg("stride"), py::arg("phase_dilation"), py::arg("max_taps"),
           py::arg("total_taps"), py::arg("groups"), py::arg("union_box"),
           py::arg("padding"), py::arg("dilation"), py::arg("force"),
           py::arg("out_channels_last") = false)
      .def("__call__", &ForwardPlan::operator(), py::arg("x"), py::arg("weight"),
           py::arg("bias"))
      .def_property_readonly("description", &ForwardPlan::description)
      .def_property_readonly("reads_channels_last", &ForwardPlan::reads_channels_last)
      .def_property_readonly("reads_tensor_core_weight",
                             &ForwardPlan::reads_tensor_core_weight)
      .def("weight_in_place", &ForwardPlan::weight_in_place, py::arg("weight"))
      .def("weight_strides_in_place", &ForwardPlan::weight_strides_in_place,
           py::arg("strides"));
  py::class_<BackwardPlan>(m, "BackwardPlan")
      .def(py::init<const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                    std::vector<int64_t>, std::vector<int64_t>, const at::Tensor&,
                    const at::Tensor&, std::vector<int64_t>, const at::Tensor&,
                    const at::Tensor&, std::vector<int64_t>, int64_t, std::vector<int64_t>,
                    std::vector<int64_t>, int64_t, int64_t>(),
           py::arg("x"), py::arg("weight"), py::arg("grad_y"), py::arg("groups"),
           py::arg("stride"), py::arg("phase_dilation"), py::arg("table"), py::arg("index"),
           py::arg("max_taps"), py::arg("gi_table"), py::arg("gi_index"),
           py::arg("gi_max_taps"), py::arg("gi_total_taps"), py::arg("padding"),
           py::arg("dilation"), py::arg("gi_kernel"), py::arg("gw_kernel"))
      .def("__call__", &BackwardPlan::operator(), py::arg("grad_y"), py::arg("x"),
           py::arg("weight"), py::arg("need_input"), py::arg("need_weight"),
           py::arg("grad_input_channels_last") = false)
      .def_property_readonly("grad_input_description",
                             &BackwardPlan::grad_input_description)
      .def_property_readonly("grad_weight_description",
                             &BackwardPlan::grad_weight_description)
      .def("weight_in_place", &BackwardPlan::weight_in_place, py::arg("weight"))
      .def("weight_strides_in_place", &BackwardPlan::weight_strides_in_place,
           py::arg("strides"));
  m.def("gather_weight", &gather_binding,
        "The weight gathered through an int32 index map (phase_conv_pack.cuh).",
        py::arg("weight"), py::arg("index"));
  m.def("pack_weight_mma", &pack_mma_binding,
        "A tensor-core weight layout: the forward's from the layer's tap table, or the input "
        "gradient's (phase_conv_pack.cuh).",
        py::arg("weight"), py::arg("taps"), py::arg("groups"), py::arg("over_outputs") = false,
        py::arg("cg") = 0);
  m.def("tma_box_copy", &tma_box_copy_binding,
        "Boxes of a channels-last 16-bit tensor as the TMA unit lands them in shared memory "
        "(phase_conv_tma.cuh; tests).",
        py::arg("x"), py::arg("coords"), py::arg("box"));
  m.attr("sm90a") = kSm90aBuild;
#ifdef PHASECONV_SOURCE_HASH
  // an ahead-of-time build (setup.py): which sources and architectures it holds (passed as
  // plain tokens, h<hash> and sm80_sm90, so that no quoting reaches the build's shell)
#define PHASECONV_STR2(x) #x
#define PHASECONV_STR(x) PHASECONV_STR2(x)
  m.attr("source_hash") = PHASECONV_STR(PHASECONV_SOURCE_HASH);
  m.attr("archs") = PHASECONV_STR(PHASECONV_ARCHS);
#endif
}
