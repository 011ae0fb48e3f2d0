"""``phaseconv.explain``: the phase table of a layer for an input shape, as text."""
import numbers
from typing import Mapping, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn as nn

from . import engines, ops
from .checks import ConvArgs, _scalar_int, check_conv_transpose3d, check_output_size, triple
from .engines import phase_gemm
from .geometry import (
    Phase,
    PhasePlan,
    output_padding_for_size,
    phase_plan,
)


class Explanation(NamedTuple):
    """What one layer does on one input shape; ``str()`` renders the table."""
    plan: PhasePlan
    batch: int
    in_channels: int
    out_channels: int
    groups: int
    engine: engines.EngineChoice
    macs: int
    zero_insertion_macs: int
    # the CUDA engine's kernel configuration for this shape and dtype (None off the GPU), or
    # the reference engine's path
    kernel: Optional[str] = None
    # the CUDA engine's backward kernels for this shape and dtype (None off the GPU)
    grad_input_kernel: Optional[str] = None
    grad_weight_kernel: Optional[str] = None

    @property
    def macs_saved(self) -> float:
        """Fraction of the zero-insertion method's multiply-adds the phase method skips."""
        if self.zero_insertion_macs == 0:
            return 0.0
        return 1.0 - self.macs / self.zero_insertion_macs

    def __str__(self) -> str:
        plan = self.plan
        lines = [
            f"ConvTranspose3d {self.in_channels}->{self.out_channels} groups={self.groups} "
            f"kernel={plan.kernel} stride={plan.stride} "
            f"padding={tuple(a.padding for a in plan.axes)} "
            f"dilation={tuple(a.dilation for a in plan.axes)} "
            f"output_padding={tuple(a.output_padding for a in plan.axes)}",
            "input ({}, {}, {}) -> output ({}, {}, {})   engine: {} ({})".format(
                self.batch, self.in_channels, ", ".join(map(str, plan.in_shape)),
                self.batch, self.out_channels, ", ".join(map(str, plan.out_shape)),
                self.engine.name, self.engine.reason),
        ]
        if self.kernel is not None:
            lines.append(f"kernel: {self.kernel}")
        if self.grad_input_kernel is not None:
            lines.append(f"grad_input kernel: {self.grad_input_kernel}")
        if self.grad_weight_kernel is not None:
            lines.append(f"grad_weight kernel: {self.grad_weight_kernel}")
        lines += [
            "",
            "{:<9}  {:<24}  {:<20}  {:>8}  {:>4}  {:>14}  {:>6}".format(
                "phase", "taps (d | h | w)", "output slice", "outputs", "taps", "MACs",
                "saved"),
        ]
        per_output = (self.in_channels // self.groups) * self.out_channels * self.batch
        kernel_taps = plan.kernel[0] * plan.kernel[1] * plan.kernel[2]
        for phase in plan.phases:
            # saved: the share of the zero-insertion method's MACs for these outputs (every
            # kernel tap at every output) that the phase skips
            lines.append("{:<9}  {:<24}  {:<20}  {:>8}  {:>4}  {:>14,}  {:>6.1%}".format(
                "({},{},{})".format(*phase.index), _taps_text(phase), _slice_text(phase, plan),
                phase.num_outputs, phase.num_taps,
                per_output * phase.num_outputs * phase.num_taps,
                1 - phase.num_taps / kernel_taps if kernel_taps else 0.0))
        lines += [
            "",
            "MACs: phase method {:,} vs zero-insertion {:,}: {:.1%} saved ({:.2f}x fewer)"
            .format(self.macs, self.zero_insertion_macs, self.macs_saved,
                    self.zero_insertion_macs / self.macs if self.macs else float("inf")),
        ]
        bias_only = plan.bias_only_outputs
        if bias_only:
            lines.append(f"{bias_only:,} output voxel(s) per channel lie in residues without taps "
                         "(kernel < stride, or stride and dilation share a factor): only the "
                         "bias lands there")
        lines.append(_EXPORT_TEXT)
        return "\n".join(lines)


# what the exporters record (phaseconv.ops, "Export")
_EXPORT_TEXT = ("export: torch.jit.script, torch.jit.trace and torch.onnx.export record torch's "
                "conv_transpose3d, the same function (ONNX: ConvTranspose)"
                + ("; torch.export records phaseconv::conv_transpose3d" if ops.HAS_CUSTOM_OPS
                   else ""))


def _taps_text(phase: Phase) -> str:
    return " | ".join(",".join(map(str, a.taps)) or "-" for a in phase.axes)


def _slice_text(phase: Phase, plan: PhasePlan) -> str:
    return ", ".join(f"{a.first}::{s}" if a.count else "(none)"
                     for a, s in zip(phase.axes, plan.stride))


LayerSpec = Union[nn.ConvTranspose3d, Mapping]


def _int(value, name: str) -> int:
    value = _scalar_int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"explain(): {name} must be an int, not {type(value).__name__}")
    return int(value)


def _ints(values, name: str) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, torch.Size)):
        raise TypeError(f"explain(): {name} must be a sequence of ints, not "
                        f"{type(values).__name__}")
    return tuple(_int(v, name) for v in values)


def explain(layer_or_args: LayerSpec, input_shape: Sequence[int],
            device: Optional[Union[str, torch.device]] = None,
            output_size: Optional[Sequence[int]] = None,
            dtype: Optional[torch.dtype] = None,
            memory_format: Optional[torch.memory_format] = None) -> Explanation:
    """Explain ``layer_or_args`` on an input of ``input_shape``.

    ``layer_or_args`` is an ``nn.ConvTranspose3d`` (torch's or phaseconv's) or a mapping of
    its constructor arguments (``in_channels``, ``out_channels``, ``kernel_size``, ``stride``,
    ``padding``, ``output_padding``, ``groups``, ``dilation``).  ``input_shape`` is
    (N, C, D, H, W) or (C, D, H, W).  ``print(explain(...))`` shows the table; the returned
    object also carries the plan, MAC counts and the engine that would run.  When that engine
    is the reference one, ``kernel`` names its path (``engines.phase_gemm``); where it
    is the CUDA one, ``kernel`` names the kernel and tile it launches for ``dtype`` (default:
    the layer's weight dtype, else float32) and an input in ``memory_format``
    (``torch.contiguous_format``, the default, or ``torch.channels_last_3d``; with a module, its
    weight's layout counts too, as in a call), ``grad_input_kernel`` and ``grad_weight_kernel``
    those of the backward (this builds the extension on first use).
    """
    if memory_format is None:
        memory_format = torch.contiguous_format
    if not isinstance(memory_format, torch.memory_format):
        raise TypeError("explain(): memory_format must be a torch.memory_format, not "
                        f"{type(memory_format).__name__}")
    if memory_format not in (torch.contiguous_format, torch.channels_last_3d):
        raise ValueError("explain(): memory_format must be torch.contiguous_format or "
                         f"torch.channels_last_3d, got {memory_format}")
    weight_strides = None  # a module's weight layout (a call reads it)
    if isinstance(layer_or_args, nn.ConvTranspose3d):
        layer = layer_or_args
        weight_strides = layer.weight.stride()
        spec = dict(in_channels=layer.in_channels, out_channels=layer.out_channels,
                    kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding,
                    output_padding=layer.output_padding, groups=layer.groups,
                    dilation=layer.dilation)
        device = device or layer.weight.device
        dtype = dtype or layer.weight.dtype
        requested = getattr(layer, "engine", None)
    elif isinstance(layer_or_args, Mapping):
        spec = dict(layer_or_args)
        requested = spec.pop("engine", None)
    else:
        raise TypeError("explain(): layer_or_args must be an nn.ConvTranspose3d or a mapping of "
                        f"its constructor arguments, not {type(layer_or_args).__name__}")
    shape = _ints(input_shape, "input_shape")
    if len(shape) not in (4, 5):
        raise ValueError(f"explain(): input_shape must be (N, C, D, H, W) or (C, D, H, W), got "
                         f"{shape}")
    if any(n < 0 for n in shape):
        raise ValueError(f"explain(): input_shape must not be negative, got {shape}")
    if memory_format == torch.channels_last_3d and len(shape) != 5:
        raise ValueError("explain(): memory_format torch.channels_last_3d needs a batched "
                         f"input_shape (N, C, D, H, W), got {shape}")
    batch, channels = (shape[0], shape[1]) if len(shape) == 5 else (1, shape[0])
    in_channels = _int(spec["in_channels"], "in_channels")
    out_channels = _int(spec["out_channels"], "out_channels")
    groups = _int(spec.get("groups", 1), "groups")
    # torch's module constructor refuses these before any call
    if groups <= 0:
        raise ValueError("groups must be a positive integer")
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must "
                         f"be divisible by groups ({groups})")
    if channels != in_channels:
        raise ValueError(f"explain(): input_shape has {channels} channels but the layer expects "
                         f"{in_channels}")
    kernel = triple(spec["kernel_size"], "kernel_size")
    if any(k <= 0 for k in kernel):
        raise ValueError(f"kernel_size must be positive, got {kernel}")
    stride = triple(spec.get("stride", 1), "stride")
    padding = triple(spec.get("padding", 0), "padding")
    dilation = triple(spec.get("dilation", 1), "dilation")
    output_padding = triple(spec.get("output_padding", 0), "output_padding")
    if output_size is not None:
        sizes = check_output_size(output_size, len(shape))
        output_padding = output_padding_for_size(shape[-3:], sizes, kernel, stride, padding,
                                                 dilation)
    # the operator's own checks, on tensors that hold no data
    x = torch.empty(shape, device="meta")
    w = torch.empty((in_channels, out_channels // groups) + kernel, device="meta")
    check_conv_transpose3d(x, w, None, stride, padding, output_padding, groups, dilation)
    plan = phase_plan(shape[-3:], kernel, stride, padding, dilation=dilation,
                      output_padding=output_padding)
    device = torch.device(device) if device is not None else torch.device("cpu")
    engine = engines.choose(device, requested, stride)
    kernel_text = grad_input_text = grad_weight_text = None
    if engine.name == "reference":
        kernel_text = _reference_path(plan, in_channels, out_channels, groups, device,
                                      dtype or torch.float32)
    if engine.name == "cuda" and device.type == "cuda" and torch.cuda.is_available():
        # the layouts a call of this input and weight would plan for (ops.call_plan)
        dtype = dtype or torch.float32
        xm = torch.empty(shape, device="meta", dtype=dtype, memory_format=memory_format)
        wm = (w if weight_strides is None else
              torch.empty_strided(w.shape, weight_strides, device="meta"))
        kernel_text, grad_input_text, grad_weight_text = _cuda_kernels(
            plan, batch, in_channels, out_channels, groups, kernel, stride, padding, dilation,
            device, dtype, engines.input_layout(xm) == 1,
            engines.output_channels_last(xm, wm, device), weight_strides)
    return Explanation(plan, batch, in_channels, out_channels, groups, engine,
                       batch * plan.macs_per_sample(in_channels, out_channels, groups),
                       batch * plan.zero_insertion_macs_per_sample(in_channels, out_channels,
                                                                   groups),
                       kernel_text, grad_input_text, grad_weight_text)


def _reference_path(plan, in_channels, out_channels, groups, device, dtype) -> str:
    """Which of the reference engine's two paths a call takes (``engines.phase_gemm``)."""
    if phase_gemm.applies(device, dtype, plan, in_channels, out_channels, groups):
        return ("reference, all phases in one GEMM and one index_add (a small CPU layer: at most "
                f"{phase_gemm.MAX_MACS_PER_SAMPLE:,} MACs per sample, float32/float64)")
    return "reference, one conv3d per phase"


def _cuda_kernels(plan, batch, in_channels, out_channels, groups, kernel, stride, padding,
                  dilation, device, dtype, channels_last, out_channels_last,
                  weight_strides=None):
    """(forward, input-gradient, weight-gradient) kernel descriptions from the CUDA engine's
    plans for these arguments (the plans a call would use; no tensor of the input's size);
    ``weight_strides``: a module's weight layout (whether the forward reads it in place)."""
    from .engines import cuda  # builds the extension on first use

    args = ConvArgs(True, tuple(stride), tuple(padding),
                    tuple(a.output_padding for a in plan.axes), tuple(dilation), groups,
                    tuple(kernel), in_channels, out_channels, plan.in_shape, plan.out_shape)
    batch = max(batch, 1)
    forward = cuda.describe(args, batch, dtype, device, channels_last,
                            out_channels_last=out_channels_last, weight_strides=weight_strides)
    grad_input, grad_weight = cuda.describe_backward(args, batch, dtype, device,
                                                     weight_strides)
    return forward, grad_input, grad_weight
