"""``phaseconv.conv_transpose3d``: torch's functional signature on the phase engines."""
from typing import Optional

import torch

from . import engines
from .checks import ConvArgs, check_conv_transpose3d
from .engines import reference
from .geometry import phase_plan
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
    ``engine`` forces an engine (see ``phaseconv.engines``); by default it is chosen from the
    device, and ``phaseconv.explain`` tells which.  The functional form packs the weight on
    every call; ``phaseconv.ConvTranspose3d`` packs once and caches.
    """
    args = check_conv_transpose3d(input, weight, bias, stride, padding, output_padding,
                                  groups, dilation)
    return run(input, weight, bias, args, cache=None, engine=engine)


def run(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
        args: ConvArgs, cache: Optional[PhaseCache], engine: Optional[str] = None):
    """Plan, pack (through ``cache`` when there is no weight gradient to track) and compute."""
    engines.choose(input.device, engine)  # validates a forced engine name
    x = input if args.batched else input.unsqueeze(0)
    plan = phase_plan(args.in_shape, args.kernel, args.stride, args.padding,
                      dilation=args.dilation, output_padding=args.output_padding)

    def pack(w: torch.Tensor):
        return pack_conv3d_phases(w, args.groups, args.stride, args.padding, args.dilation)

    # A cached pack carries no autograd history, so it serves only calls that need no weight
    # gradient (inference, frozen layers); training packs through differentiable ops.
    if cache is not None and not (torch.is_grad_enabled() and weight.requires_grad):
        phases = cache.get(weight, ("conv3d", args.groups, args.stride, args.padding,
                                    args.dilation), pack)
    else:
        phases = pack(weight)
    out = reference.forward(x, phases, bias, plan, args.groups, args.out_channels)
    if torch.is_grad_enabled():
        out = _keep_in_graph(out, (input, weight, bias))
    return out if args.batched else out.squeeze(0)


def _keep_in_graph(out: torch.Tensor, tensors) -> torch.Tensor:
    """Tie ``out`` to every tensor that needs a gradient, as torch's own op does, also when no
    tap ever meets it (its gradient is then zero rather than missing).  The sum of an empty
    slice is an exact 0: it cannot turn an inf or NaN input into a NaN output."""
    for t in tensors:
        if t is not None and t.requires_grad:
            out = out + t.reshape(-1)[:0].sum()
    return out
