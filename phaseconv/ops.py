"""The phaseconv operator: one forward and one backward, for every engine.

A call is described by its arguments' metadata (shapes, dtypes, devices, input layout,
stride, padding, ...).  Everything that metadata fixes - the argument checks, the phase plan,
the engine, the CUDA engine's tables and kernel plans - is computed once per description and
kept in a :class:`CallPlan`; a call then does only the launches.  Nothing is kept that depends
on the weight's values: every call reads the weight as it is, so no write to it (an optimizer
step, fused or not, ``.data``, numpy, DLPack, a freed and reused address) can leave a stale
result behind.

* forward: the chosen engine (the CUDA kernel, or the reference engine);
* backward: the phase-form gradients, on the same engine as the forward, in a fixed order
  (deterministic; no atomics).  On the CUDA engine the input gradient runs in one launch and
  the weight gradient is written straight into the weight's layout
  (``engines/cuda.py: backward``); the reference engine uses torch ops
  (``engines/reference.py``).  grad_bias is a sum over batch and space.

Under ``torch.autocast`` a call casts its inputs as torch's own ``conv_transpose3d`` does
there: on CUDA it is on torch's lower-precision list (every CUDA tensor that is floating point
and not float64 goes to the autocast dtype); on the CPU its policy depends on the torch
release (lower precision on torch 2.x, float32 on 1.13), so it is read off torch once, at
import, by two tiny CPU calls of torch's op (:func:`autocast_dtype`).  The casts are ordinary
differentiable ops, so a float32 weight gets a float32 gradient, as with torch.

On torch >= 2.4 the forward and backward are ``torch.library`` custom ops
(``phaseconv::conv_transpose3d``, ``phaseconv::conv_transpose3d_backward``) whose fake
implementations give exactly the real results' sizes and strides, so ``torch.compile`` keeps
phaseconv's layers in its graph, for inference and training.  Eager calls, and every call on
older torch (1.13), run the same two functions through a plain ``torch.autograd.Function``.
Double backward raises a clear error on both paths.
"""
import contextlib
import os
from typing import List, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from . import engines
from .checks import ConvArgs, check_conv_transpose3d, triple
from .engines import reference
from .geometry import phase_plan
from .packing import pack_conv3d_phases, unpack_conv3d_phases

HAS_CUSTOM_OPS = hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_fake")
_DOUBLE_BACKWARD = ("phaseconv: double backward (create_graph=True through the backward) is "
                    "not supported")
_NEW_AUTOCAST_API = hasattr(torch, "get_autocast_dtype")  # torch >= 2.4: per device type


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    return False


def weight_grad_format(weight: torch.Tensor) -> torch.memory_format:
    """The weight gradient's memory format: the weight's own where it is ``channels_last_3d``
    (so autograd accumulates it without a copy), else contiguous."""
    if not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def _layout(x: torch.Tensor) -> int:
    """0 contiguous, 1 channels_last_3d, 2 anything else (the CUDA kernels read the first two
    in place)."""
    if x.is_contiguous():
        return 0
    return 1 if x.is_contiguous(memory_format=torch.channels_last_3d) else 2


def _autocast_off(device_type: str):
    """The reference engine computes in the dtype it is given: torch's own convolutions
    inside it must not be autocast again (their policy may differ from conv_transpose3d's)."""
    if device_type in ("cuda", "cpu"):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class CallPlan:
    """What one call description fixes: validated arguments, the engine and its plans."""

    __slots__ = ("args", "engine", "plan", "cuda_forward", "cuda_backward", "_batch", "_dtype",
                 "_device")

    def __init__(self, args: ConvArgs, engine: engines.EngineChoice, x: torch.Tensor,
                 has_bias: bool, layout: int) -> None:
        self.args = args
        self.engine = engine
        self.plan = phase_plan(args.in_shape, args.kernel, args.stride, args.padding,
                               dilation=args.dilation, output_padding=args.output_padding)
        self._batch = int(x.shape[0]) if args.batched else 1
        self._dtype, self._device = x.dtype, x.device
        self.cuda_forward = self.cuda_backward = None
        if engine.name == "cuda":
            from .engines import cuda

            self.cuda_forward = cuda.forward_plan(args, self._batch, x.dtype, x.device,
                                                  layout == 1, has_bias)

    def forward(self, x: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
        args = self.args
        xb = x if args.batched else x.unsqueeze(0)
        if self.cuda_forward is not None:
            tables, launch = self.cuda_forward
            if tables.ready:
                from .engines.cuda import wait_for_tables
                wait_for_tables(tables)
            out = launch(xb, weight, bias)
        else:
            with _autocast_off(x.device.type):
                phases = pack_conv3d_phases(weight, args.groups, args.stride, args.padding,
                                            args.dilation)
                out = reference.forward(xb, phases, bias, self.plan, args.groups,
                                        args.out_channels)
        return out if args.batched else out.squeeze(0)

    def backward(self, grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                 mask) -> Tuple[Optional[torch.Tensor], ...]:
        """Gradients for (input, weight, bias) where ``mask`` asks, None elsewhere."""
        args = self.args
        xb = x if args.batched else x.unsqueeze(0)
        gb = grad_out if args.batched else grad_out.unsqueeze(0)
        gx = gw = gbias = None
        if self.engine.name == "cuda":
            if mask[0] or mask[1]:
                if self.cuda_backward is None:
                    from .engines import cuda

                    self.cuda_backward = cuda.backward_plan(args, self._batch, self._dtype,
                                                            self._device)
                tables, launch = self.cuda_backward
                if tables.ready:
                    from .engines.cuda import wait_for_tables
                    wait_for_tables(tables)
                gx, gw = launch(gb, xb, weight, bool(mask[0]), bool(mask[1]))
        else:
            with _autocast_off(x.device.type):
                if mask[0]:
                    phases = pack_conv3d_phases(weight, args.groups, args.stride, args.padding,
                                                args.dilation)
                    gx = reference.grad_input(gb, phases, self.plan, args.groups,
                                              args.in_channels)
                if mask[1]:
                    phases = reference.grad_weight_phases(xb, gb, self.plan, args.groups,
                                                          args.out_channels, tuple(weight.shape))
                    unpacked = unpack_conv3d_phases(phases, tuple(weight.shape), args.groups,
                                                    args.stride, args.padding, args.dilation)
                    gw = torch.empty(weight.shape, dtype=unpacked.dtype, device=unpacked.device,
                                     memory_format=weight_grad_format(weight))
                    gw.copy_(unpacked)
        if gx is not None and not args.batched:
            gx = gx.squeeze(0)
        if mask[2]:
            gbias = reference.grad_bias(gb)
        return gx, gw, gbias


_CALLS = {}  # call description -> CallPlan


def call_plan(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride,
              padding, output_padding, groups: int, dilation, engine: str) -> CallPlan:
    """The :class:`CallPlan` of a call (made on its first occurrence; invalid calls raise
    torch's error, or a clearer one naming the argument, every time)."""
    try:
        layout = _layout(x)
        key = (x.shape, x.dtype, x.device, layout, weight.shape, weight.dtype, weight.device,
               None if bias is None else (bias.shape, bias.dtype, bias.device), stride, padding,
               output_padding, groups, dilation, engine, os.environ.get(engines.ENGINE_ENV))
        found = _CALLS.get(key)
    except (AttributeError, TypeError):  # not tensors, unhashable sizes: the checks say what
        key = found = None
    if found is not None:
        return found
    args = check_conv_transpose3d(x, weight, bias, stride, padding, output_padding, groups,
                                  dilation)
    plan = CallPlan(args, engines.choose(x.device, engine or None), x, bias is not None,
                    layout)
    if key is not None:
        if len(_CALLS) >= 4096:  # many distinct calls (shapes that never repeat): start over
            _CALLS.clear()
        _CALLS[key] = plan
    return plan


def forward_impl(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 stride: List[int], padding: List[int], output_padding: List[int], groups: int,
                 dilation: List[int], engine: str) -> torch.Tensor:
    """The forward on the engine ``engines.choose`` picks (``engine=""``: not forced)."""
    plan = call_plan(x, weight, bias, tuple(stride), tuple(padding), tuple(output_padding),
                     groups, tuple(dilation), engine)
    with torch.no_grad():
        return plan.forward(x, weight, bias)


def backward_impl(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                  stride: List[int], padding: List[int], output_padding: List[int], groups: int,
                  dilation: List[int], mask: List[bool], engine: str = ""
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for (input, weight, bias) where ``mask`` asks, empty tensors elsewhere, on
    the engine the forward used."""
    plan = call_plan(x, weight, None, tuple(stride), tuple(padding), tuple(output_padding),
                     groups, tuple(dilation), engine)
    with torch.no_grad():
        grads = plan.backward(grad_out, x, weight, mask)
    return tuple(grad_out.new_empty((0,)) if g is None else g  # type: ignore[return-value]
                 for g in grads)


def _fake_forward(x, weight, bias, stride, padding, output_padding, groups, dilation, engine):
    args = check_conv_transpose3d(x, weight, bias, stride, padding, output_padding, groups,
                                  dilation)
    batch = (x.shape[0],) if args.batched else ()
    return x.new_empty(batch + (args.out_channels,) + args.out_shape)


def _fake_backward(grad_out, x, weight, stride, padding, output_padding, groups, dilation,
                   mask, engine):
    return (x.new_empty(x.shape) if mask[0] else grad_out.new_empty((0,)),
            torch.empty(weight.shape, dtype=weight.dtype, device=weight.device,
                        memory_format=weight_grad_format(weight))
            if mask[1] else grad_out.new_empty((0,)),
            grad_out.new_empty((grad_out.shape[-4],)) if mask[2] else grad_out.new_empty((0,)))


class _ConvTranspose3dFunction(torch.autograd.Function):
    """The same forward and backward through a plain autograd.Function (torch < 2.4, and eager
    calls on any torch)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, output_padding, groups, dilation, engine):
        plan = call_plan(x, weight, bias, stride, padding, output_padding, groups, dilation,
                         engine)
        ctx.save_for_backward(x, weight)
        ctx.plan = plan
        ctx.has_bias = bias is not None
        return plan.forward(x, weight, bias)

    @staticmethod
    @once_differentiable  # a second backward through it raises torch's own clear error
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        gx, gw, gb = ctx.plan.backward(grad_out, x, weight,
                                       (needs[0], needs[1], ctx.has_bias and needs[2]))
        return gx, gw, gb, None, None, None, None, None, None


if HAS_CUSTOM_OPS:
    @torch.library.custom_op("phaseconv::conv_transpose3d", mutates_args=())
    def _forward_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    stride: List[int], padding: List[int], output_padding: List[int],
                    groups: int, dilation: List[int], engine: str) -> torch.Tensor:
        return forward_impl(x, weight, bias, stride, padding, output_padding, groups, dilation,
                            engine)

    @torch.library.custom_op("phaseconv::conv_transpose3d_backward", mutates_args=())
    def _backward_op(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                     stride: List[int], padding: List[int], output_padding: List[int],
                     groups: int, dilation: List[int], mask: List[bool],
                     engine: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return backward_impl(grad_out, x, weight, stride, padding, output_padding, groups,
                             dilation, mask, engine)

    _forward_op.register_fake(_fake_forward)
    _backward_op.register_fake(_fake_backward)

    def _setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, output_padding, groups, dilation, engine = inputs
        ctx.save_for_backward(x, weight)
        ctx.conf = (bias is not None, stride, padding, output_padding, groups, dilation, engine)

    def _op_backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        has_bias, stride, padding, output_padding, groups, dilation, engine = ctx.conf
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                has_bias and ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.phaseconv.conv_transpose3d_backward(
            grad_out, x, weight, stride, padding, output_padding, groups, dilation, mask,
            engine)
        return ((gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None)
                + (None,) * 6)

    def _no_double_backward(ctx, *grads):
        raise RuntimeError(_DOUBLE_BACKWARD)

    def _no_setup(ctx, inputs, output):
        pass

    _forward_op.register_autograd(_op_backward, setup_context=_setup_context)
    _backward_op.register_autograd(_no_double_backward, setup_context=_no_setup)


def _cpu_autocast_policy() -> Optional[str]:
    """How torch's ``conv_transpose3d`` behaves under CPU autocast in this torch release:
    "lower" (inputs cast to the autocast dtype), "float32" (inputs cast to float32) or None
    (left as they are)."""
    import torch.nn.functional as F

    one = torch.ones((1, 1, 1, 1, 1))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if F.conv_transpose3d(one, one).dtype == torch.bfloat16:
                return "lower"
            if F.conv_transpose3d(one.bfloat16(), one.bfloat16()).dtype == torch.float32:
                return "float32"
    except (RuntimeError, TypeError, AttributeError):  # a torch without CPU autocast
        pass
    return None


_CPU_AUTOCAST_POLICY = _cpu_autocast_policy()


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype torch's ``conv_transpose3d`` casts its inputs to under the autocast state in
    force for ``device_type`` now, or None when it casts nothing."""
    if device_type == "cuda":
        if _NEW_AUTOCAST_API:
            return torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
    if device_type == "cpu" and _CPU_AUTOCAST_POLICY is not None:
        if _NEW_AUTOCAST_API:
            if not torch.is_autocast_enabled("cpu"):
                return None
            lower = torch.get_autocast_dtype("cpu")
        else:
            if not torch.is_autocast_cpu_enabled():
                return None
            lower = torch.get_autocast_cpu_dtype()
        return lower if _CPU_AUTOCAST_POLICY == "lower" else torch.float32
    return None


def _autocast(t: Optional[torch.Tensor], device_type: str, dtype: torch.dtype):
    """torch's autocast rule for one argument of a lower-precision op."""
    if (t is None or t.device.type != device_type or not t.is_floating_point()
            or t.dtype in (torch.float64, dtype)):
        return t
    return t.to(dtype)


def conv_transpose3d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     stride, padding, output_padding, groups: int, dilation,
                     engine: Optional[str] = None) -> torch.Tensor:
    """Dispatch to the custom op (torch >= 2.4, inside a graph being compiled) or the
    autograd.Function, after autocast's casts.  ``stride``, ``padding``, ``output_padding`` and
    ``dilation`` are tuples of 3 ints; the checks run inside the op, so a compiled graph
    validates at trace time (fake) and at run time alike."""
    device_type = "cuda" if x.is_cuda else x.device.type
    cast_to = autocast_dtype(device_type)
    if cast_to is not None:
        x, weight, bias = (_autocast(t, device_type, cast_to) for t in (x, weight, bias))
    # Eager calls take the autograd.Function: the same two functions without the dispatcher's
    # round trip (tens of µs of Python per call); graphs being compiled need the custom op.
    if HAS_CUSTOM_OPS and _is_compiling():
        sizes = [list(triple(v, name)) for v, name in
                 ((stride, "stride"), (padding, "padding"), (output_padding, "output_padding"),
                  (dilation, "dilation"))]
        return torch.ops.phaseconv.conv_transpose3d(x, weight, bias, sizes[0], sizes[1],
                                                    sizes[2], groups, sizes[3], engine or "")
    if not torch.is_grad_enabled() or not (
            x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        # no graph to record: the same forward without autograd.Function's machinery
        plan = call_plan(x, weight, bias, stride, padding, output_padding, groups, dilation,
                         engine or "")
        return plan.forward(x, weight, bias)
    return _ConvTranspose3dFunction.apply(x, weight, bias, stride, padding, output_padding,
                                          groups, dilation, engine or "")
