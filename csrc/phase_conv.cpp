// phaseconv CUDA engine: the torch binding.  Checks arguments, picks the device and stream,
// allocates the output and calls the launcher in phase_conv_fwd.cu.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "phase_conv_bwd.cuh"
#include "phase_conv_fwd.cuh"

namespace {

// Numbers and lists for error messages, formatted as strings: TORCH_CHECK messages that
// stream integers from this extension crashed the process (SIGSEGV) on the device's torch
// build instead of raising (2026-11-25; strings, and torch's own types, stream fine).
std::string num(int64_t v) { return std::to_string(v); }
std::string nums(c10::IntArrayRef v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  return out + "]";
}

int dtype_code_of(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32: return PHASECONV_FLOAT32;
    case torch::kFloat64: return PHASECONV_FLOAT64;
    case torch::kFloat16: return PHASECONV_FLOAT16;
    case torch::kBFloat16: return PHASECONV_BFLOAT16;
    default: break;
  }
  TORCH_CHECK(false, "phaseconv cuda engine: the input's dtype is ", t.scalar_type(),
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

// Validates everything and fills the launcher's parameters (output pointer left null).
PhaseConvFwdParams make_params(const torch::Tensor& x, const torch::Tensor& wpack,
                               const torch::Tensor& table,
                               const c10::optional<torch::Tensor>& bias,
                               const std::vector<int64_t>& out_size,
                               const std::vector<int64_t>& stride,
                               const std::vector<int64_t>& phase_dilation,
                               const std::vector<int64_t>& max_taps, int64_t total_taps,
                               int64_t groups, int64_t out_channels, int64_t force_path,
                               const c10::optional<torch::Tensor>& wmma,
                               const std::vector<int64_t>& union_box,
                               int64_t table_rows = -1) {  // -1: one row per phase
  TORCH_CHECK(x.is_cuda(), "phaseconv cuda engine: the input must be a CUDA tensor, got one on ",
              x.device(), ".");
  TORCH_CHECK(x.dim() == 5, "phaseconv cuda engine: the input must be 5-D (N, C_in, D, H, W), "
              "got ", num(x.dim()), " dimensions.");
  dtype_code_of(x);
  TORCH_CHECK(wpack.device() == x.device(), "phaseconv cuda engine: the packed weight is on ",
              wpack.device(), " but the input is on ", x.device(), ".");
  TORCH_CHECK(wpack.scalar_type() == x.scalar_type(), "phaseconv cuda engine: the packed "
              "weight's dtype ", wpack.scalar_type(), " differs from the input's ",
              x.scalar_type(), ".");
  TORCH_CHECK(wpack.dim() == 1 && wpack.is_contiguous(), "phaseconv cuda engine: the packed "
              "weight must be a contiguous 1-D tensor (use phaseconv.engines.cuda.pack).");
  TORCH_CHECK(table.device() == x.device(), "phaseconv cuda engine: the phase table is on ",
              table.device(), " but the input is on ", x.device(), ".");
  TORCH_CHECK(table.scalar_type() == torch::kInt64 && table.is_contiguous(),
              "phaseconv cuda engine: the phase table must be a contiguous int64 tensor.");
  check_triple(out_size, "out_size", 0);
  check_triple(stride, "stride", 1);
  check_triple(phase_dilation, "phase_dilation", 1);
  check_triple(max_taps, "max_taps", 0);
  TORCH_CHECK(groups >= 1, "phaseconv cuda engine: groups must be positive, got ", num(groups), ".");
  const int64_t n = x.size(0), c_in = x.size(1);
  TORCH_CHECK(c_in % groups == 0, "phaseconv cuda engine: the input's ", num(c_in),
              " channels are not divisible by groups=", num(groups), ".");
  TORCH_CHECK(out_channels >= 1 && out_channels % groups == 0, "phaseconv cuda engine: "
              "out_channels=", num(out_channels), " must be a positive multiple of groups=",
              num(groups), ".");
  const int64_t num_phases = stride[0] * stride[1] * stride[2];
  const int64_t rows = table_rows >= 0 ? table_rows : num_phases;
  TORCH_CHECK(table.numel() == rows * PHASECONV_TABLE_STRIDE, "phaseconv cuda engine: the "
              "phase table has ", num(table.numel()), " entries; stride ", nums(stride),
              " needs ", num(rows * PHASECONV_TABLE_STRIDE), " (was the weight packed for another "
              "stride?).");
  TORCH_CHECK(total_taps >= 0, "phaseconv cuda engine: total_taps must be non-negative.");
  const int64_t want_w = c_in * (out_channels / groups) * total_taps;
  TORCH_CHECK(wpack.numel() == want_w, "phaseconv cuda engine: the packed weight has ",
              num(wpack.numel()), " elements but ", num(want_w), " are expected for C_in=",
              num(c_in), ", C_out/groups=", num(out_channels / groups), " and ", num(total_taps),
              " taps (was it packed for another layer?).");
  if (bias.has_value() && bias->defined()) {
    const torch::Tensor& b = *bias;
    TORCH_CHECK(b.device() == x.device(), "phaseconv cuda engine: the bias is on ", b.device(),
                " but the input is on ", x.device(), ".");
    TORCH_CHECK(b.scalar_type() == x.scalar_type(), "phaseconv cuda engine: the bias dtype ",
                b.scalar_type(), " differs from the input's ", x.scalar_type(), ".");
    TORCH_CHECK(b.dim() == 1 && b.numel() == out_channels && b.is_contiguous(),
                "phaseconv cuda engine: the bias must be a contiguous 1-D tensor of ",
                num(out_channels), " elements.");
  }
  const int64_t int_max = std::numeric_limits<int32_t>::max();
  for (int d = 2; d < 5; ++d) {
    TORCH_CHECK(x.size(d) >= 1 && x.size(d) < int_max, "phaseconv cuda engine: input spatial "
                "sizes must be in [1, 2^31), got ", nums(x.sizes()), ".");
  }
  for (int d = 0; d < 3; ++d) {
    TORCH_CHECK(out_size[d] < int_max, "phaseconv cuda engine: output sizes must be below "
                "2^31, got ", nums(out_size), ".");
  }
  TORCH_CHECK(c_in < int_max && out_channels < int_max, "phaseconv cuda engine: channel counts "
              "must be below 2^31.");

  // optional tensor-core weight layout (see phase_conv_fwd.cuh) and the phases' union window
  const void* wmma_ptr = nullptr;
  if (wmma.has_value() && wmma->defined() && wmma->numel() > 0 &&
      x.scalar_type() != torch::kFloat64) {
    const torch::Tensor& wm = *wmma;
    TORCH_CHECK(wm.device() == x.device() && wm.scalar_type() == x.scalar_type() &&
                wm.dim() == 1 && wm.is_contiguous(), "phaseconv cuda engine: the tensor-core "
                "weight must be a contiguous 1-D tensor with the input's dtype and device.");
    const int64_t cg = x.element_size() == 4 ? 4 : 8;
    const int64_t gcount = (c_in / groups + cg - 1) / cg;
    const int64_t want_m = groups * (out_channels / groups) * total_taps * gcount * cg;
    TORCH_CHECK(wm.numel() == want_m, "phaseconv cuda engine: the tensor-core weight has ",
                num(wm.numel()), " elements but ", num(want_m), " are expected (was it packed for "
                "another layer or dtype?).");
    TORCH_CHECK(reinterpret_cast<uintptr_t>(wm.data_ptr()) % 16 == 0, "phaseconv cuda "
                "engine: the tensor-core weight must be 16-byte aligned.");
    wmma_ptr = wm.data_ptr();
  }
  TORCH_CHECK(union_box.size() == 6, "phaseconv cuda engine: union_box must have 6 entries.");
  for (int d = 3; d < 6; ++d) {
    TORCH_CHECK(union_box[d] >= 0 && union_box[d] < (int64_t)1 << 20, "phaseconv cuda engine: "
                "bad union_box ", nums(union_box), ".");
  }

  PhaseConvFwdParams p;
  p.weight_mma = wmma_ptr;
  p.union_lo_d = union_box[0]; p.union_lo_h = union_box[1]; p.union_lo_w = union_box[2];
  p.union_ext_d = union_box[3]; p.union_ext_h = union_box[4]; p.union_ext_w = union_box[5];
  p.x = x.data_ptr();
  p.weight = wpack.data_ptr();
  p.bias = (bias.has_value() && bias->defined()) ? bias->data_ptr() : nullptr;
  p.y = nullptr;
  p.table = table.data_ptr<int64_t>();
  p.n = n; p.c_in = c_in; p.c_out = out_channels; p.groups = groups;
  p.in_d = x.size(2); p.in_h = x.size(3); p.in_w = x.size(4);
  p.out_d = out_size[0]; p.out_h = out_size[1]; p.out_w = out_size[2];
  p.stride_d = stride[0]; p.stride_h = stride[1]; p.stride_w = stride[2];
  p.pdil_d = phase_dilation[0]; p.pdil_h = phase_dilation[1]; p.pdil_w = phase_dilation[2];
  p.max_taps_d = max_taps[0]; p.max_taps_h = max_taps[1]; p.max_taps_w = max_taps[2];
  p.total_taps = total_taps;
  p.force_path = (int)force_path;
  p.x_channels_last = 0;
  return p;
}

// Whether the chosen kernel reads x channels-last; sets p->x_channels_last (no copy).
bool wants_channels_last(const torch::Tensor& x, PhaseConvFwdParams* p, int dtype_code) {
  const auto cl = at::MemoryFormat::ChannelsLast3d;
  // offered: x is channels-last already (the all-phase kernel then reads it in place)
  p->x_channels_last = x.is_contiguous(cl) && !x.is_contiguous() &&
                       reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0;
  const bool want = phase_conv_fwd_input_layout(*p, dtype_code) == 1;
  p->x_channels_last = want ? 1 : 0;
  return want;
}

// Lays x out as the chosen kernel reads it (one copy unless it already is) and points p at it.
torch::Tensor lay_out_input(const torch::Tensor& x, PhaseConvFwdParams* p, int dtype_code) {
  torch::Tensor xl;
  const auto cl = at::MemoryFormat::ChannelsLast3d;
  if (wants_channels_last(x, p, dtype_code)) {
    if (x.is_contiguous() && !x.is_contiguous(cl) && x.element_size() != 8) {
      xl = torch::empty_like(x, x.options().memory_format(cl));
      const cudaError_t err = phase_conv_to_channels_last(
          x.data_ptr(), xl.data_ptr(), x.size(0), x.size(1), x.size(2) * x.size(3) * x.size(4),
          (int)x.element_size(), c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
      TORCH_CHECK(err == cudaSuccess, "phaseconv cuda engine: the channels-last copy failed: ",
                  cudaGetErrorString(err), ".");
    } else {
      xl = x.contiguous(cl);
    }
    if (!xl.is_contiguous(cl) || reinterpret_cast<uintptr_t>(xl.data_ptr()) % 16 != 0) {
      xl = x.clone(cl);  // an unaligned view
    }
  } else {
    xl = x.contiguous();
  }
  p->x = xl.data_ptr();
  return xl;
}

torch::Tensor phase_conv_fwd_binding(const torch::Tensor& x, const torch::Tensor& wpack,
                                     const torch::Tensor& table,
                                     const c10::optional<torch::Tensor>& bias,
                                     std::vector<int64_t> out_size, std::vector<int64_t> stride,
                                     std::vector<int64_t> phase_dilation,
                                     std::vector<int64_t> max_taps, int64_t total_taps,
                                     int64_t groups, int64_t out_channels, int64_t force_path,
                                     const c10::optional<torch::Tensor>& wmma,
                                     std::vector<int64_t> union_box) {
  PhaseConvFwdParams p = make_params(x, wpack, table, bias, out_size, stride, phase_dilation,
                                     max_taps, total_taps, groups, out_channels, force_path,
                                     wmma, union_box);
  const c10::cuda::CUDAGuard guard(x.device());
  const torch::Tensor xl = lay_out_input(x, &p, dtype_code_of(x));
  torch::Tensor y = torch::empty({x.size(0), out_channels, out_size[0], out_size[1], out_size[2]},
                                 x.options());
  if (y.numel() == 0) return y;
  p.y = y.data_ptr();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  const cudaError_t err = phase_conv_fwd(p, dtype_code_of(x), stream);
  TORCH_CHECK(err == cudaSuccess, "phaseconv cuda engine: the kernel launch failed: ",
              cudaGetErrorString(err), ".");
  return y;
}

std::string describe_binding(const torch::Tensor& x, const torch::Tensor& wpack,
                             const torch::Tensor& table,
                             const c10::optional<torch::Tensor>& bias,
                             std::vector<int64_t> out_size, std::vector<int64_t> stride,
                             std::vector<int64_t> phase_dilation, std::vector<int64_t> max_taps,
                             int64_t total_taps, int64_t groups, int64_t out_channels,
                             int64_t force_path, const c10::optional<torch::Tensor>& wmma,
                             std::vector<int64_t> union_box) {
  PhaseConvFwdParams p = make_params(x, wpack, table, bias, out_size, stride, phase_dilation,
                                     max_taps, total_taps, groups, out_channels, force_path,
                                     wmma, union_box);
  const c10::cuda::CUDAGuard guard(x.device());
  // the layout decision only: where the forward would copy x, the copy is a fresh (aligned)
  // allocation, which a null pointer stands for
  const bool cl = wants_channels_last(x, &p, dtype_code_of(x));
  const bool in_place = cl ? x.is_contiguous(at::MemoryFormat::ChannelsLast3d) &&
                                 reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0
                           : x.is_contiguous();
  p.x = in_place ? x.data_ptr() : nullptr;
  char buf[512];
  phase_conv_fwd_describe(p, dtype_code_of(x), buf, (int)sizeof(buf));
  return std::string(buf);
}

// Parameters of the one-launch input gradient (grad-input mode of the tensor-core kernel, see
// phase_conv_fwd.cuh), validated like the forward's; y left null.
PhaseConvFwdParams make_bwd_input_params(const torch::Tensor& grad_y, const torch::Tensor& wcat,
                                         const torch::Tensor& sub_table,
                                         const std::vector<int64_t>& in_size,
                                         const std::vector<int64_t>& stride,
                                         const std::vector<int64_t>& phase_dilation,
                                         const std::vector<int64_t>& max_taps,
                                         int64_t total_taps, int64_t groups,
                                         int64_t in_channels) {
  check_triple(stride, "stride", 1);
  TORCH_CHECK(sub_table.numel() > 0 && sub_table.numel() % PHASECONV_TABLE_STRIDE == 0,
              "phaseconv cuda engine: the grad-input table must hold whole rows of ",
              num(PHASECONV_TABLE_STRIDE), " entries.");
  const int64_t nsub = sub_table.numel() / PHASECONV_TABLE_STRIDE;
  PhaseConvFwdParams p = make_params(grad_y, wcat, sub_table, c10::nullopt, in_size, {1, 1, 1},
                                     phase_dilation, max_taps, total_taps, groups, in_channels,
                                     0, c10::nullopt, {0, 0, 0, 0, 0, 0}, nsub);
  p.table = nullptr;
  p.sub_table = sub_table.data_ptr<int64_t>();
  p.nsub = (int)nsub;
  p.in_stride_d = stride[0]; p.in_stride_h = stride[1]; p.in_stride_w = stride[2];
  return p;
}

// The input gradient in one launch, or None where the one-launch kernel does not take the
// layer (the caller then runs the per-phase path).
c10::optional<torch::Tensor> phase_conv_bwd_input_binding(const torch::Tensor& grad_y,
                                                          const torch::Tensor& wcat,
                                           const torch::Tensor& sub_table,
                                           std::vector<int64_t> in_size,
                                           std::vector<int64_t> stride,
                                           std::vector<int64_t> phase_dilation,
                                           std::vector<int64_t> max_taps, int64_t total_taps,
                                           int64_t groups, int64_t in_channels) {
  const torch::Tensor gc = grad_y.contiguous();
  PhaseConvFwdParams p = make_bwd_input_params(gc, wcat, sub_table, in_size, stride,
                                               phase_dilation, max_taps, total_taps, groups,
                                               in_channels);
  const int dtype_code = dtype_code_of(gc);
  const c10::cuda::CUDAGuard guard(gc.device());
  if (!phase_conv_bwd_input_plan(p, dtype_code, nullptr, 0)) return c10::nullopt;
  torch::Tensor gx = torch::empty({gc.size(0), in_channels, in_size[0], in_size[1], in_size[2]},
                                  gc.options());
  p.y = gx.data_ptr();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(gc.device().index()).stream();
  const cudaError_t err = phase_conv_bwd_input(p, dtype_code, stream);
  TORCH_CHECK(err == cudaSuccess, "phaseconv cuda engine: the input-gradient launch failed: ",
              cudaGetErrorString(err), ".");
  return gx;
}

// The one-launch input gradient's configuration, or "" where it does not take the layer.
std::string describe_bwd_input_binding(const torch::Tensor& grad_y, const torch::Tensor& wcat,
                                       const torch::Tensor& sub_table,
                                       std::vector<int64_t> in_size, std::vector<int64_t> stride,
                                       std::vector<int64_t> phase_dilation,
                                       std::vector<int64_t> max_taps, int64_t total_taps,
                                       int64_t groups, int64_t in_channels) {
  const PhaseConvFwdParams p = make_bwd_input_params(grad_y, wcat, sub_table, in_size, stride,
                                                     phase_dilation, max_taps, total_taps,
                                                     groups, in_channels);
  const c10::cuda::CUDAGuard guard(grad_y.device());
  char buf[256];
  if (!phase_conv_bwd_input_plan(p, dtype_code_of(grad_y), buf, (int)sizeof(buf))) return "";
  return std::string(buf);
}

// Validates the weight-gradient arguments and fills the launcher's parameters (grad_w and
// workspace left null; x and grad_y as given: the caller makes them contiguous).
PhaseConvBwdWeightParams make_bwd_weight_params(const torch::Tensor& x,
                                                const torch::Tensor& grad_y,
                                                const torch::Tensor& table,
                                                int64_t packed_elems,
                                                const std::vector<int64_t>& stride,
                                                const std::vector<int64_t>& phase_dilation,
                                                const std::vector<int64_t>& max_taps,
                                                int64_t groups, int64_t kernel) {
  TORCH_CHECK(x.is_cuda() && grad_y.device() == x.device() && table.device() == x.device(),
              "phaseconv cuda engine: x, grad_y and the phase table must be on one CUDA "
              "device.");
  TORCH_CHECK(x.dim() == 5 && grad_y.dim() == 5 && x.size(0) == grad_y.size(0),
              "phaseconv cuda engine: x and grad_y must be batched 5-D tensors of one batch.");
  TORCH_CHECK(grad_y.scalar_type() == x.scalar_type(), "phaseconv cuda engine: grad_y's dtype ",
              grad_y.scalar_type(), " differs from x's ", x.scalar_type(), ".");
  check_triple(stride, "stride", 1);
  check_triple(phase_dilation, "phase_dilation", 1);
  check_triple(max_taps, "max_taps", 0);
  const int64_t c_in = x.size(1), c_out = grad_y.size(1);
  TORCH_CHECK(groups >= 1 && c_in % groups == 0 && c_out % groups == 0,
              "phaseconv cuda engine: groups=", num(groups), " must divide C_in=", num(c_in),
              " and C_out=", num(c_out), ".");
  TORCH_CHECK(table.scalar_type() == torch::kInt64 && table.is_contiguous() &&
              table.numel() == stride[0] * stride[1] * stride[2] * PHASECONV_TABLE_STRIDE,
              "phaseconv cuda engine: the phase table does not match the stride.");
  TORCH_CHECK(packed_elems >= 0, "phaseconv cuda engine: packed_elems must be non-negative.");
  TORCH_CHECK(kernel >= 0 && kernel <= 2, "phaseconv cuda engine: kernel must be 0 (the rule), "
              "1 (SIMT) or 2 (tensor cores), got ", num(kernel), ".");
  PhaseConvBwdWeightParams p;
  p.x = nullptr; p.grad_y = nullptr; p.grad_w = nullptr; p.workspace = nullptr;
  p.table = table.data_ptr<int64_t>();
  p.n = x.size(0); p.c_in = c_in; p.c_out = c_out; p.groups = groups;
  p.in_d = x.size(2); p.in_h = x.size(3); p.in_w = x.size(4);
  p.out_d = grad_y.size(2); p.out_h = grad_y.size(3); p.out_w = grad_y.size(4);
  p.stride_d = stride[0]; p.stride_h = stride[1]; p.stride_w = stride[2];
  p.pdil_d = phase_dilation[0]; p.pdil_h = phase_dilation[1]; p.pdil_w = phase_dilation[2];
  p.max_taps_d = max_taps[0]; p.max_taps_h = max_taps[1]; p.max_taps_w = max_taps[2];
  p.packed_elems = packed_elems;
  p.kernel = kernel;
  return p;
}

// The weight gradient in the forward's packed layout (phase_conv_bwd.cuh).
torch::Tensor phase_conv_bwd_weight_binding(const torch::Tensor& x, const torch::Tensor& grad_y,
                                            const torch::Tensor& table, int64_t packed_elems,
                                            std::vector<int64_t> stride,
                                            std::vector<int64_t> phase_dilation,
                                            std::vector<int64_t> max_taps, int64_t groups,
                                            int64_t kernel) {
  PhaseConvBwdWeightParams p = make_bwd_weight_params(x, grad_y, table, packed_elems, stride,
                                                      phase_dilation, max_taps, groups, kernel);
  const int dtype_code = dtype_code_of(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const torch::Tensor xc = x.contiguous(), gc = grad_y.contiguous();
  torch::Tensor gw = torch::empty({packed_elems}, x.options());
  p.x = xc.data_ptr(); p.grad_y = gc.data_ptr(); p.grad_w = gw.data_ptr();
  if (packed_elems == 0) return gw;
  if (x.size(0) == 0) return gw.zero_();
  const size_t ws_bytes = phase_conv_bwd_weight_workspace(p, dtype_code);
  torch::Tensor ws = torch::empty({(int64_t)ws_bytes + 16}, x.options().dtype(torch::kUInt8));
  p.workspace = ws.data_ptr();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  const cudaError_t err = phase_conv_bwd_weight(p, dtype_code, stream);
  TORCH_CHECK(err == cudaSuccess, "phaseconv cuda engine: the weight-gradient launch failed: ",
              cudaGetErrorString(err), ".");
  return gw;
}

// The kernel the weight gradient would launch (no allocation, no launch).
std::string describe_bwd_weight_binding(const torch::Tensor& x, const torch::Tensor& grad_y,
                                        const torch::Tensor& table, int64_t packed_elems,
                                        std::vector<int64_t> stride,
                                        std::vector<int64_t> phase_dilation,
                                        std::vector<int64_t> max_taps, int64_t groups,
                                        int64_t kernel) {
  const PhaseConvBwdWeightParams p = make_bwd_weight_params(
      x, grad_y, table, packed_elems, stride, phase_dilation, max_taps, groups, kernel);
  char buf[256];
  phase_conv_bwd_weight_describe(p, dtype_code_of(x), buf, (int)sizeof(buf));
  return std::string(buf);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "phaseconv CUDA forward engine (conv_transpose3d by sub-pixel phases)";
  m.def("phase_conv_fwd", &phase_conv_fwd_binding,
        "Transposed 3-D convolution forward from a packed weight (see phaseconv.engines.cuda).",
        py::arg("x"), py::arg("wpack"), py::arg("table"), py::arg("bias"), py::arg("out_size"),
        py::arg("stride"), py::arg("phase_dilation"), py::arg("max_taps"),
        py::arg("total_taps"), py::arg("groups"), py::arg("out_channels"),
        py::arg("force_path") = 0, py::arg("wmma") = py::none(),
        py::arg("union_box") = std::vector<int64_t>{0, 0, 0, 0, 0, 0});
  m.def("phase_conv_bwd_weight", &phase_conv_bwd_weight_binding,
        "Weight gradient of the transposed 3-D convolution in the packed layout.", py::arg("x"),
        py::arg("grad_y"), py::arg("table"), py::arg("packed_elems"), py::arg("stride"),
        py::arg("phase_dilation"), py::arg("max_taps"), py::arg("groups"),
        py::arg("kernel") = 0);
  m.def("phase_conv_bwd_input", &phase_conv_bwd_input_binding,
        "Input gradient of the transposed 3-D convolution in one launch (None where the "
        "one-launch kernel does not take the layer).", py::arg("grad_y"),
        py::arg("wcat"), py::arg("sub_table"), py::arg("in_size"), py::arg("stride"),
        py::arg("phase_dilation"), py::arg("max_taps"), py::arg("total_taps"), py::arg("groups"),
        py::arg("in_channels"));
  m.def("describe_bwd_input", &describe_bwd_input_binding,
        "The configuration phase_conv_bwd_input would use, or '' where it does not apply.",
        py::arg("grad_y"), py::arg("wcat"), py::arg("sub_table"), py::arg("in_size"),
        py::arg("stride"), py::arg("phase_dilation"), py::arg("max_taps"),
        py::arg("total_taps"), py::arg("groups"), py::arg("in_channels"));
  m.def("describe_bwd_weight", &describe_bwd_weight_binding,
        "The kernel configuration phase_conv_bwd_weight would use.", py::arg("x"),
        py::arg("grad_y"), py::arg("table"), py::arg("packed_elems"), py::arg("stride"),
        py::arg("phase_dilation"), py::arg("max_taps"), py::arg("groups"),
        py::arg("kernel") = 0);
  m.def("describe", &describe_binding, "The kernel configuration phase_conv_fwd would use.",
        py::arg("x"), py::arg("wpack"), py::arg("table"), py::arg("bias"), py::arg("out_size"),
        py::arg("stride"), py::arg("phase_dilation"), py::arg("max_taps"),
        py::arg("total_taps"), py::arg("groups"), py::arg("out_channels"),
        py::arg("force_path") = 0, py::arg("wmma") = py::none(),
        py::arg("union_box") = std::vector<int64_t>{0, 0, 0, 0, 0, 0});
}
