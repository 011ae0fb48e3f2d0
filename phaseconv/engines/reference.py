"""The reference engine: every phase as a dense stride-1 ``F.conv3d``, in pure torch.

Runs on any device and dtype torch's conv3d supports, and is differentiable through torch's
own ops.  Nothing is zero-inserted and nothing is scattered: each phase's correlation writes
its own strided slice ``out[..., rd::sd, rh::sh, rw::sw]`` of the output.  The only copy of
the input is the small crop/pad of the window a phase reads.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..geometry import AxisPhase, PhasePlan


def _phase_window(x: torch.Tensor, axes: Sequence[AxisPhase]) -> Optional[torch.Tensor]:
    """The input window a phase reads, with its out-of-range part as zeros, or None when the
    window misses the input entirely."""
    pads = []
    for dim, axis in zip((2, 3, 4), axes):
        size = x.shape[dim]
        start, stop = axis.input_window
        lo, hi = max(start, 0), min(stop, size)
        if hi <= lo:
            return None
        x = x.narrow(dim, lo, hi - lo)
        pads.append((lo - start, stop - hi))
    # F.pad lists the last dimension first.
    flat = [p for pair in reversed(pads) for p in pair]
    return F.pad(x, flat) if any(flat) else x


def forward(x: torch.Tensor, phase_weights, bias: Optional[torch.Tensor], plan: PhasePlan,
            groups: int, out_channels: int) -> torch.Tensor:
    """Transposed convolution of a batched input ``x`` (N, C_in, D, H, W).

    ``phase_weights`` is ``packing.pack_conv3d_phases``'s output, one entry per phase of
    ``plan.phases``, in the same order.
    """
    n = x.shape[0]
    out = x.new_zeros((n, out_channels) + plan.out_shape)
    stride = plan.stride
    for phase, w in zip(plan.phases, phase_weights):
        if w is None or phase.num_outputs == 0:
            continue
        window = _phase_window(x, phase.axes)
        if window is None:
            continue
        y = F.conv3d(window, w, None, 1, 0, phase.phase_dilation, groups)
        rd, rh, rw = phase.index
        out[:, :, rd::stride[0], rh::stride[1], rw::stride[2]] = y
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1, 1)
    return out
