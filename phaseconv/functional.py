"""``phaseconv.conv_transpose3d``: torch's functional signature on the phase engines."""
from typing import Optional

import torch

from . import engines
from .checks import ConvArgs, check_conv_transpose3d
from .engines import reference
from .geometry import PhasePlan, phase_plan
from .packing import PhaseCache, pack_conv3d_phases


def conv_transpose3d(input: torch.Tensor, weight: torch.Tensor,
                     bias: Optional[torch.Tensor] = None, stride=1, padding=0,
                     output_padding=0, groups: int = 1, dilation=1,
                     engine: Optional[str] = None) -> torch.Tensor:
    """3-D transposed convolution, computed phase by phase; same contract as
    ``torch.nn.functional.conv_transpose3d``.

    ======== ==================================================================
    input    (N, C_in, D, H, W) or unbatched (C_in, D, H, W); N may be 0
    weight   (C_in, C_out / groups, kD, kH, kW)
    bias     (C_out,) or None
    returns  (N, C_out, D_out, H_out, W_out), with per axis
             D_out = (D - 1) * stride - 2 * padding + dilation * (kD - 1)
             + output_padding + 1
    ======== ==================================================================

    ``stride``, ``padding``, ``output_padding`` and ``dilation`` are ints or 3-tuples.
    ``engine`` forces an engine (see ``phaseconv.engines``); by default CUDA tensors run the
    CUDA kernel and others the reference engine, and ``phaseconv.explain`` tells which.  The
    functional form packs the weight on every call; ``phaseconv.ConvTranspose3d`` packs once
    and caches.
    """
    args = check_conv_transpose3d(input, weight, bias, stride, padding, output_padding,
                                  groups, dilation)
    return run(input, weight, bias, args, cache=None, engine=engine)


def run(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
        args: ConvArgs, cache: Optional[PhaseCache], engine: Optional[str] = None):
    """Plan, pack (through ``cache`` where it can serve) and compute on the chosen engine."""
    choice = engines.choose(input.device, engine)
    x = input if args.batched else input.unsqueeze(0)
    plan = phase_plan(args.in_shape, args.kernel, args.stride, args.padding,
                      dilation=args.dilation, output_padding=args.output_padding)
    if choice.name == "cuda":
        out = _cuda_forward(x, weight, bias, args, plan, cache)
    else:
        out = _reference_forward(x, weight, bias, args, plan, cache)
        if torch.is_grad_enabled():
            out = _keep_in_graph(out, (input, weight, bias))
    return out if args.batched else out.squeeze(0)


def _reference_forward(x, weight, bias, args: ConvArgs, plan: PhasePlan,
                       cache: Optional[PhaseCache]) -> torch.Tensor:
    def pack(w: torch.Tensor):
        return pack_conv3d_phases(w, args.groups, args.stride, args.padding, args.dilation)

    # A cached pack carries no autograd history, so it serves only calls that need no weight
    # gradient (inference, frozen layers); training packs through differentiable ops.
    if cache is not None and not (torch.is_grad_enabled() and weight.requires_grad):
        phases = cache.get(weight, ("conv3d", args.groups, args.stride, args.padding,
                                    args.dilation), pack)
    else:
        phases = pack(weight)
    return reference.forward(x, phases, bias, plan, args.groups, args.out_channels)


def _cuda_forward(x, weight, bias, args: ConvArgs, plan: PhasePlan,
                  cache: Optional[PhaseCache]) -> torch.Tensor:
    from .engines import cuda

    def pack(w: torch.Tensor):
        return cuda.pack(w, args.groups, args.stride, args.padding, args.dilation)

    key = ("cuda", args.groups, args.stride, args.padding, args.dilation)
    packed = cache.get(weight, key, pack) if cache is not None else pack(weight)
    return _CudaConvTranspose3d.apply(x, weight, bias, packed, plan, args)


class _CudaConvTranspose3d(torch.autograd.Function):
    """Forward on the CUDA kernel; backward by recomputing through the reference engine
    (correct, not yet fast: a phase-decomposed backward kernel is future work)."""

    @staticmethod
    def forward(ctx, x, weight, bias, packed, plan, args):
        from .engines import cuda

        ctx.save_for_backward(x, weight, bias)
        ctx.plan, ctx.args = plan, args
        return cuda.forward(x, packed, bias, plan, args.groups, args.out_channels)

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():
            raise RuntimeError("phaseconv: double backward through the CUDA engine is not "
                               "supported; use engine='reference' for higher-order gradients")
        x, weight, bias = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        leaves = [t.detach().requires_grad_(n) if t is not None else None
                  for t, n in zip((x, weight, bias), needs)]
        with torch.enable_grad():
            out = _reference_forward(leaves[0], leaves[1], leaves[2], ctx.args, ctx.plan, None)
            wanted = [t for t, n in zip(leaves, needs) if t is not None and n]
            grads = iter(torch.autograd.grad(out, wanted, grad_out, allow_unused=True)
                         if wanted else ())
        result = []
        for t, n in zip(leaves, needs):
            if t is None or not n:
                result.append(None)
                continue
            g = next(grads)
            result.append(torch.zeros_like(t) if g is None else g)
        return tuple(result) + (None, None, None)


def _keep_in_graph(out: torch.Tensor, tensors) -> torch.Tensor:
    """Tie ``out`` to every tensor that needs a gradient, as torch's own op does, also when no
    tap ever meets it (its gradient is then zero rather than missing).  The sum of an empty
    slice is an exact 0: it cannot turn an inf or NaN input into a NaN output."""
    for t in tensors:
        if t is not None and t.requires_grad:
            out = out + t.reshape(-1)[:0].sum()
    return out
