"""The phaseconv operator: one forward and one backward, for every engine.

* forward: the chosen engine (the CUDA kernel or the reference engine) on the weight's cached
  phase pack;
* backward: the phase-form gradients, on the same engine as the forward, in a fixed order
  (deterministic; no atomics).  On the CUDA engine grad_input runs each phase's stride-1
  transposed convolution through the forward kernels (``engines/cuda.py: grad_input``) and
  grad_weight is a kernel of its own (``csrc/phase_conv_bwd.cu``); the reference engine uses
  torch ops (``engines/reference.py``: ``grad_input``, ``grad_weight_phases`` +
  ``packing.unpack_conv3d_phases``).  grad_bias is a sum over batch and space.

On torch >= 2.4 both are ``torch.library`` custom ops (``phaseconv::conv_transpose3d`` and
``phaseconv::conv_transpose3d_backward``) with fake implementations, so ``torch.compile``
keeps phaseconv's layers in its graph.  Eager calls, and every call on older torch (1.13), run
the same two functions through a plain ``torch.autograd.Function``.  Double backward raises a
clear error on both paths.
"""
from typing import List, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from . import engines
from .checks import ConvArgs, check_conv_transpose3d
from .engines import reference
from .geometry import PhasePlan, phase_plan
from .packing import CACHE, pack_conv3d_phases, unpack_conv3d_phases

HAS_CUSTOM_OPS = hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_fake")
_DOUBLE_BACKWARD = ("phaseconv: double backward (create_graph=True through the backward) is "
                    "not supported")


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    return False


def _plan(args: ConvArgs) -> PhasePlan:
    return phase_plan(args.in_shape, args.kernel, args.stride, args.padding,
                      dilation=args.dilation, output_padding=args.output_padding)


def _packed(weight: torch.Tensor, layout: str, args: ConvArgs, pack, use_cache: bool):
    """``pack(weight)``, through the cache when the caller owns the weight's updates (a module;
    see ``packing.PackCache``), else fresh: a bare functional call may have been preceded by
    a write through ``weight.data``, which no version counter sees (gradcheck does that)."""
    if not use_cache:
        with torch.no_grad():
            return pack(weight.detach())
    return CACHE.get(weight, (layout, args.groups, args.stride, args.padding, args.dilation),
                     pack)


def _conv3d_phases(weight: torch.Tensor, args: ConvArgs, use_cache: bool):
    def pack(w):
        return pack_conv3d_phases(w, args.groups, args.stride, args.padding, args.dilation)

    return _packed(weight, "conv3d", args, pack, use_cache)


def forward_impl(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 stride: List[int], padding: List[int], output_padding: List[int], groups: int,
                 dilation: List[int], engine: str, use_cache: bool) -> torch.Tensor:
    """The forward on the engine ``engines.choose`` picks (``engine=""``: not forced)."""
    args = check_conv_transpose3d(x, weight, bias, stride, padding, output_padding, groups,
                                  dilation)
    choice = engines.choose(x.device, engine or None)
    xb = x if args.batched else x.unsqueeze(0)
    plan = _plan(args)
    with torch.no_grad():
        if choice.name == "cuda":
            from .engines import cuda

            def pack(w):
                return cuda.pack(w, args.groups, args.stride, args.padding, args.dilation)

            packed = _packed(weight, "cuda", args, pack, use_cache)
            out = cuda.forward(xb, packed, bias, plan, args.groups, args.out_channels)
        else:
            out = reference.forward(xb, _conv3d_phases(weight, args, use_cache), bias, plan,
                                    args.groups, args.out_channels)
    return out if args.batched else out.squeeze(0)


def backward_impl(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                  stride: List[int], padding: List[int], output_padding: List[int], groups: int,
                  dilation: List[int], mask: List[bool], use_cache: bool, engine: str = ""
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for (input, weight, bias) where ``mask`` asks; empty tensors elsewhere, on the
    engine the forward used (``engines.choose`` on the gradient's device)."""
    args = check_conv_transpose3d(x, weight, None, stride, padding, output_padding, groups,
                                  dilation)
    choice = engines.choose(grad_out.device, engine or None)
    xb = x if args.batched else x.unsqueeze(0)
    gb = grad_out if args.batched else grad_out.unsqueeze(0)
    plan = _plan(args)
    empty = grad_out.new_empty((0,))
    with torch.no_grad():
        gx = gw = gbias = empty
        if choice.name == "cuda" and (mask[0] or mask[1]):
            from .engines import cuda

            def pack(w):
                return cuda.pack(w, args.groups, args.stride, args.padding, args.dilation)

            if mask[0]:
                phases = _conv3d_phases(weight, args, use_cache)

                def pack_gi(w):  # the phase sub-kernels of this same weight
                    return cuda.pack_grad_input(phases, args.groups, args.kernel, args.stride,
                                                args.padding, args.dilation)

                gi_packs = _packed(weight, "cuda-grad-input", args, pack_gi, use_cache)
                gx = cuda.grad_input(gb, phases, gi_packs, plan, args.groups,
                                     args.in_channels)
            if mask[1]:
                gw = cuda.grad_weight(xb, gb, _packed(weight, "cuda", args, pack, use_cache),
                                      tuple(weight.shape))
        else:
            if mask[0]:
                gx = reference.grad_input(gb, _conv3d_phases(weight, args, use_cache), plan,
                                          args.groups, args.in_channels)
            if mask[1]:
                phases = reference.grad_weight_phases(xb, gb, plan, args.groups,
                                                      args.out_channels, tuple(weight.shape))
                gw = unpack_conv3d_phases(phases, tuple(weight.shape), args.groups,
                                          args.stride, args.padding, args.dilation)
        if mask[0] and not args.batched:
            gx = gx.squeeze(0)
        if mask[2]:
            gbias = reference.grad_bias(gb)
    return gx, gw, gbias


def _fake_forward(x, weight, bias, stride, padding, output_padding, groups, dilation, engine,
                  use_cache):
    args = check_conv_transpose3d(x, weight, bias, stride, padding, output_padding, groups,
                                  dilation)
    batch = (x.shape[0],) if args.batched else ()
    return x.new_empty(batch + (args.out_channels,) + args.out_shape)


def _fake_backward(grad_out, x, weight, stride, padding, output_padding, groups, dilation,
                   mask, use_cache, engine):
    empty = grad_out.new_empty((0,))
    return (x.new_empty(x.shape) if mask[0] else empty,
            weight.new_empty(weight.shape) if mask[1] else empty,
            grad_out.new_empty((grad_out.shape[-4],)) if mask[2] else empty)


class _ConvTranspose3dFunction(torch.autograd.Function):
    """The same forward and backward through a plain autograd.Function (torch < 2.4, and eager
    calls on any torch)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, output_padding, groups, dilation, engine,
                use_cache):
        ctx.save_for_backward(x, weight)
        ctx.conf = (bias is not None, stride, padding, output_padding, groups, dilation,
                    use_cache, engine)
        return forward_impl(x, weight, bias, stride, padding, output_padding, groups, dilation,
                            engine, use_cache)

    @staticmethod
    @once_differentiable  # a second backward through it raises torch's own clear error
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        has_bias, stride, padding, output_padding, groups, dilation, use_cache, engine = ctx.conf
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                has_bias and ctx.needs_input_grad[2]]
        gx, gw, gb = backward_impl(grad_out.contiguous(), x, weight, stride, padding,
                                   output_padding, groups, dilation, mask, use_cache, engine)
        return ((gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None)
                + (None,) * 7)


if HAS_CUSTOM_OPS:
    @torch.library.custom_op("phaseconv::conv_transpose3d", mutates_args=())
    def _forward_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    stride: List[int], padding: List[int], output_padding: List[int],
                    groups: int, dilation: List[int], engine: str,
                    use_cache: bool) -> torch.Tensor:
        return forward_impl(x, weight, bias, stride, padding, output_padding, groups, dilation,
                            engine, use_cache)

    @torch.library.custom_op("phaseconv::conv_transpose3d_backward", mutates_args=())
    def _backward_op(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                     stride: List[int], padding: List[int], output_padding: List[int],
                     groups: int, dilation: List[int], mask: List[bool], use_cache: bool,
                     engine: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return backward_impl(grad_out, x, weight, stride, padding, output_padding, groups,
                             dilation, mask, use_cache, engine)

    _forward_op.register_fake(_fake_forward)
    _backward_op.register_fake(_fake_backward)

    def _setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, output_padding, groups, dilation, engine, use_cache = \
            inputs
        ctx.save_for_backward(x, weight)
        ctx.conf = (bias is not None, stride, padding, output_padding, groups, dilation,
                    use_cache, engine)

    def _op_backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        has_bias, stride, padding, output_padding, groups, dilation, use_cache, engine = ctx.conf
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                has_bias and ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.phaseconv.conv_transpose3d_backward(
            grad_out.contiguous(), x, weight, stride, padding, output_padding, groups,
            dilation, mask, use_cache, engine)
        return ((gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None)
                + (None,) * 7)

    def _no_double_backward(ctx, *grads):
        raise RuntimeError(_DOUBLE_BACKWARD)

    def _no_setup(ctx, inputs, output):
        pass

    _forward_op.register_autograd(_op_backward, setup_context=_setup_context)
    _backward_op.register_autograd(_no_double_backward, setup_context=_no_setup)


def conv_transpose3d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     stride, padding, output_padding, groups: int, dilation,
                     engine: Optional[str] = None, use_cache: bool = False) -> torch.Tensor:
    """Dispatch to the custom op (torch >= 2.4) or the autograd.Function (older torch).

    The sizes are passed as lists of ints (the op schema's ``int[]``); the checks run inside
    the op, so a compiled graph validates at trace time (fake) and at run time alike."""
    stride, padding, output_padding, dilation = (list(v) for v in
                                                 (stride, padding, output_padding, dilation))
    # Eager calls take the autograd.Function: the same two functions without the dispatcher's
    # round trip (tens of µs of Python per call); graphs being compiled need the custom op.
    if HAS_CUSTOM_OPS and _is_compiling():
        return torch.ops.phaseconv.conv_transpose3d(x, weight, bias, stride, padding,
                                                    output_padding, groups, dilation,
                                                    engine or "", use_cache)
    return _ConvTranspose3dFunction.apply(x, weight, bias, stride, padding, output_padding,
                                          groups, dilation, engine or "", use_cache)
