"""The reference engine's path for small layers: all phases in a fixed number of ops.

The rule (:func:`applies`, shown by ``phaseconv.explain``): a CPU call in float32 or float64
of at most ``MAX_MACS_PER_SAMPLE`` multiply-adds per sample, with taps in every residue and
more than one phase; every other reference call runs one ``conv3d`` per phase.

On a small layer the cost of a call is the number of torch ops it runs, not its arithmetic:
one ``conv3d`` per phase (eight for a 3x3x3 kernel at stride 2) costs several times torch's
whole ``conv_transpose3d``.  Here the phases run together, whatever their count, from the
input's side: input ``i`` meets tap ``k`` at output ``i * stride - padding + k * dilation``
on each axis, which is one real pair of that output's phase, or lands in the border that
padding crops.  So

* the forward forms every (tap, input) product in one matrix product (the real pairs of all
  phases, and the cropped ones) and one ``index_add_`` sums each into the output it lands on,
  in a fixed order (by tap), those past the output into a spare element: no padding is read,
  exact for any weight and input;
* the backward gathers, for every (tap, input), the upstream gradient where it landed (a
  zero past the output) and runs one matrix product per gradient.  A cropped pair meets that
  zero: the caller checks that the weight (input gradient) and the input (weight gradient)
  are finite where a layer has cropped pairs, and otherwise runs the phase-by-phase path,
  which multiplies real pairs only.
"""
import functools
import math
from typing import NamedTuple, Optional

import torch

from ..geometry import PhasePlan

# Layers up to this many multiply-adds per sample run here (above it one conv3d per phase
# wins: the products of every tap with every input grow with the taps, and oneDNN's
# convolutions with the work).
MAX_MACS_PER_SAMPLE = 1 << 18
_DTYPES = (torch.float32, torch.float64)


class GemmPlan(NamedTuple):
    """The landing table and shapes of one plan, batch and grouping (a CPU tensor, made once
    and never written)."""
    weight: tuple  # (G, C_in/g, C_out/g, kernel taps)
    landing: torch.Tensor  # (G * taps * C_out/g * N * D*H*W,) flat output index of a product
    out_numel: int  # N * C_out * out...; landing == out_numel: past the output (cropped)
    out: tuple  # (N, C_out, out...)
    inp: tuple  # (N, C_in, in...)
    cropped: bool  # some (tap, input) pair lands past the output


def applies(device: torch.device, dtype: torch.dtype, plan: PhasePlan, in_channels: int,
            out_channels: int, groups: int) -> bool:
    """Whether a call runs here: a small layer on the CPU, in float32 or float64, whose every
    residue has taps (an output without taps holds only the bias: one conv3d per phase
    leaves it alone)."""
    if device.type != "cpu" or dtype not in _DTYPES:
        return False
    if any(len(a.phases) != a.stride or a.bias_only for a in plan.axes):
        return False
    macs = plan.macs_per_sample(in_channels, out_channels, groups)
    return macs <= MAX_MACS_PER_SAMPLE and len(plan.phases) > 1


@functools.lru_cache(maxsize=256)
def gemm_plan(plan: PhasePlan, batch: int, in_channels: int, out_channels: int,
              groups: int) -> GemmPlan:
    """Where each product lands: input ``i`` meets tap ``k`` at output
    ``i * stride - padding + k * dilation`` on every axis; products in (group, tap, output
    channel, sample, input voxel) order."""
    out_shape, c_out_g = plan.out_shape, out_channels // groups
    out_numel = batch * out_channels * math.prod(out_shape)
    per_axis = []
    for a, n_out in zip(plan.axes, out_shape):
        o = (torch.arange(a.in_size)[None, :] * a.stride - a.padding
             + torch.arange(a.kernel)[:, None] * a.dilation)  # (kernel, in)
        per_axis.append((o, (o >= 0) & (o < n_out)))
    (od, vd), (oh, vh), (ow, vw) = per_axis
    # (kd, kh, kw, d, h, w): the spatial output index, and whether it is inside
    spatial = ((od[:, None, None, :, None, None] * out_shape[1]
                + oh[None, :, None, None, :, None]) * out_shape[2]
               + ow[None, None, :, None, None, :])
    inside = (vd[:, None, None, :, None, None] & vh[None, :, None, None, :, None]
              & vw[None, None, :, None, None, :])
    taps, volume = math.prod(plan.kernel), math.prod(plan.in_shape)
    spatial, inside = spatial.reshape(taps, volume), inside.reshape(taps, volume)
    # products in (group, sample, input voxel, output channel, tap) order
    plane = (torch.arange(batch)[None, :, None] * out_channels
             + torch.arange(groups)[:, None, None] * c_out_g
             + torch.arange(c_out_g)[None, None, :])  # (G, N, C_out/g): output plane
    index = (plane[:, :, None, :, None] * math.prod(out_shape)
             + spatial.t()[None, None, :, None, :])  # (G, N, volume, C_out/g, taps)
    index = torch.where(inside.t()[None, None, :, None, :], index,
                        torch.full_like(index, out_numel))
    return GemmPlan((groups, in_channels // groups, c_out_g, taps), index.flatten(), out_numel,
                    (batch, out_channels) + tuple(out_shape),
                    (batch, in_channels) + tuple(plan.in_shape), not bool(inside.all()))


def _tap_weights(weight: torch.Tensor, gp: GemmPlan) -> torch.Tensor:
    """(G, C_in/g, C_out/g * taps): the weight as it is laid out (a view when contiguous)."""
    groups, c_in_g, c_out_g, taps = gp.weight
    return weight.reshape(groups, c_in_g, c_out_g * taps)


def _columns(x: torch.Tensor, gp: GemmPlan) -> torch.Tensor:
    """(G, C_in/g, N * D*H*W): the input, a view for one sample."""
    n, groups, c_in_g, volume = x.shape[0], gp.weight[0], gp.weight[1], math.prod(gp.inp[2:])
    if n == 1:
        return x.reshape(groups, c_in_g, volume)
    cols = x.reshape(n, groups, c_in_g, volume)
    return cols.permute(1, 2, 0, 3).reshape(groups, c_in_g, n * volume)


def forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
            gp: GemmPlan) -> torch.Tensor:
    """The transposed convolution of a batched ``x`` (N, C_in, D, H, W) by the table ``gp``
    of its layer (one that :func:`applies`): every input times every tap, each product summed
    into the output it lands on.  Reads no padding: exact for any weight and input."""
    # (G, N * voxels, C_in/g) @ (G, C_in/g, C_out/g * taps)
    products = torch.bmm(_columns(x, gp).transpose(1, 2), _tap_weights(weight, gp))
    if not gp.cropped:  # every product lands inside: sum straight into the output
        out = x.new_zeros(gp.out)
        out.view(-1).index_add_(0, gp.landing, products.view(-1))
        return out if bias is None else out.add_(bias.view(1, -1, 1, 1, 1))
    flat = x.new_zeros(gp.out_numel + 1)  # the last element takes what lands past the output
    flat.index_add_(0, gp.landing, products.view(-1))
    out = flat[:-1].view(gp.out)  # a view: the result is a new tensor (autograd tells them apart)
    return out.clone() if bias is None else out + bias.view(1, -1, 1, 1, 1)


def backward(x: torch.Tensor, grad_out: torch.Tensor, weight: torch.Tensor, gp: GemmPlan,
             need_input: bool, need_weight: bool):
    """(grad_input or None, grad_weight in the weight's layout or None) of :func:`forward`.
    Where ``gp.cropped``, a cropped pair meets a zero gradient: the weight must be finite for
    the input gradient and the input for the weight gradient (the caller checks)."""
    groups, c_in_g, c_out_g, taps = gp.weight
    flat = grad_out.reshape(-1)
    if gp.cropped:  # what landed past the output meets a zero
        flat = torch.cat((flat, flat.new_zeros(1)))
    # (G, N * voxels, C_out/g * taps): the gradient where each product landed
    landed = flat.index_select(0, gp.landing).view(groups, -1, c_out_g * taps)
    grad_x = grad_w = None
    # results are new tensors, not views of temporaries (autograd tells them apart)
    if need_input:
        n, volume = gp.inp[0], math.prod(gp.inp[2:])
        grad_x = grad_out.new_empty(gp.inp)
        w = _tap_weights(weight, gp)
        if n == 1:
            torch.bmm(w, landed.transpose(1, 2), out=grad_x.view(groups, c_in_g, volume))
        else:  # (G, C_in/g, N, voxels) -> (N, G, C_in/g, voxels)
            grad_x.view(n, groups, c_in_g, volume).copy_(
                torch.bmm(w, landed.transpose(1, 2)).view(groups, c_in_g, n, volume)
                .permute(2, 0, 1, 3))
    if need_weight:  # (G, C_in/g, C_out/g * taps): the weight's layout
        grad_w = weight.new_empty(weight.shape)
        torch.bmm(_columns(x, gp), landed, out=grad_w.view(groups, c_in_g, c_out_g * taps))
    return grad_x, grad_w
